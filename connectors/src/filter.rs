//! Trigger filters: which events of a source reach the function.

use serde::{Deserialize, Serialize};

use crate::event::Event;

/// All set conditions must hold. `types` entries match exactly, or by prefix
/// when they end in `*` (`com.github.*`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub types: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_suffix: Option<String>,
}

impl Filter {
    pub fn matches(&self, e: &Event) -> bool {
        let type_ok = self.types.is_empty()
            || self.types.iter().any(|t| match t.strip_suffix('*') {
                Some(prefix) => e.ty.starts_with(prefix),
                None => e.ty == *t,
            });
        let subject = e.subject.as_deref().unwrap_or("");
        type_ok
            && self.subject_prefix.as_deref().is_none_or(|p| subject.starts_with(p))
            && self.subject_suffix.as_deref().is_none_or(|s| subject.ends_with(s))
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
}
