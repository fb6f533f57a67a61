//! Trigger filters: which events of a source reach the function.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::event::Event;

/// All set conditions must hold. `types` entries match exactly, or by prefix
/// when they end in `*` (`com.github.*`); so do the values listed under an
/// extension's name in `extensions` (`{ evokesyslogseverity = ["0", "1",
/// "2", "3", "4"] }`: severity warning or worse; an event without the
/// extension does not match).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub types: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_suffix: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extensions: BTreeMap<String, Vec<String>>,
}

/// `value` is `pattern`, or starts with it when it ends in `*`.
fn like(pattern: &str, value: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => value.starts_with(prefix),
        None => value == pattern,
    }
}

impl Filter {
    pub fn matches(&self, e: &Event) -> bool {
        let type_ok = self.types.is_empty() || self.types.iter().any(|t| like(t, &e.ty));
        let subject = e.subject.as_deref().unwrap_or("");
        type_ok
            && self.subject_prefix.as_deref().is_none_or(|p| subject.starts_with(p))
            && self.subject_suffix.as_deref().is_none_or(|s| subject.ends_with(s))
            && self.extensions.iter().all(|(name, allowed)| {
                e.extensions
                    .get(name)
                    .is_some_and(|v| allowed.iter().any(|a| like(a, v)))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_match_types_and_subjects() {
        let mut e = Event::new("1", "/s", "com.github.push");
        e.subject = Some("uploads/cat.png".into());
        assert!(Filter::default().matches(&e));
        assert!(
            Filter {
                types: vec!["com.github.*".into()],
                ..Default::default()
            }
            .matches(&e)
        );
        assert!(
            !Filter {
                types: vec!["com.github.issues".into()],
                ..Default::default()
            }
            .matches(&e)
        );
        let f = Filter {
            subject_prefix: Some("uploads/".into()),
            subject_suffix: Some(".png".into()),
            ..Default::default()
        };
        assert!(f.matches(&e));
        e.subject = Some("uploads/cat.jpg".into());
        assert!(!f.matches(&e));
    }

    #[test]
    fn filters_match_extension_values() {
        let mut e = Event::new("1", "/s", "evoke.syslog.message");
        let f = Filter {
            extensions: [
                (
                    "evokesyslogseverity".to_string(),
                    vec!["0".into(), "1".into(), "2".into(), "3".into(), "4".into()],
                ),
                ("evokesyslogapp".to_string(), vec!["nginx*".into()]),
            ]
            .into(),
            ..Default::default()
        };
        assert!(!f.matches(&e), "no such extension: no match");
        e.extensions.insert("evokesyslogseverity".into(), "3".into());
        e.extensions.insert("evokesyslogapp".into(), "nginx-access".into());
        assert!(f.matches(&e));
        e.extensions.insert("evokesyslogseverity".into(), "6".into());
        assert!(!f.matches(&e));
    }
}
