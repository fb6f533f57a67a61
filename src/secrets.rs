//! Secrets by environment variable name (webhook secrets, store
//! credentials): this process's environment, unless overridden (tests,
//! embedding). Specs only ever name the variables; values stay on the node.

use std::collections::HashMap;

#[derive(Debug, Clone, Default)]
pub struct Secrets {
    pub overrides: HashMap<String, String>,
}

impl Secrets {
    /// The value of variable `name`; `None` when unset or empty.
    pub fn get(&self, name: &str) -> Option<String> {
        self.overrides
            .get(name)
            .cloned()
            .or_else(|| std::env::var(name).ok())
            .filter(|s| !s.is_empty())
    }
}
