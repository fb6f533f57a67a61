//! Stored triggers (KV bucket EVOKE_TRIGGERS).

use chrono::{DateTime, Utc};
use evoke_connectors::trigger::TriggerSpec;
use serde::{Deserialize, Serialize};

use super::{Catalog, Entry, View};

/// A trigger as stored: its flat table (validated when written).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredTrigger {
    pub name: String,
    pub spec: serde_json::Value,
    pub updated_at: DateTime<Utc>,
    #[serde(default, skip_serializing)]
    pub revision: u64,
}

impl Entry for StoredTrigger {
    fn revision(&self) -> u64 {
        self.revision
    }
    fn set_revision(&mut self, revision: u64) {
        self.revision = revision;
    }
}

impl StoredTrigger {
    /// The parsed spec. Stored specs were validated on write; a spec that no
    /// longer parses (after an upgrade) is reported, not run.
    pub fn parsed(&self) -> Result<TriggerSpec, String> {
        TriggerSpec::parse(&self.spec).map_err(|problems| {
            problems
                .iter()
                .map(|(f, m)| format!("{f}: {m}"))
                .collect::<Vec<_>>()
                .join("; ")
        })
    }
}

pub type Triggers = View<StoredTrigger>;
pub type TriggerRegistry = Catalog<StoredTrigger>;
