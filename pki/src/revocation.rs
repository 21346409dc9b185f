//! The set of revoked certificate serials.

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// Revoked serials, as lower-case hex without separators (the form of [`crate::serial_hex`]).
/// Input is normalized: `AB:CD` and `abcd` are the same serial.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "BTreeSet<String>", into = "BTreeSet<String>")]
pub struct RevocationSet {
    serials: BTreeSet<String>,
}

fn normalize(serial: &str) -> String {
    serial
        .chars()
        .filter(|&c| c != ':')
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

impl RevocationSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a serial; returns false if it was already revoked.
    pub fn insert(&mut self, serial: &str) -> bool {
        self.serials.insert(normalize(serial))
    }

    pub fn contains(&self, serial: &str) -> bool {
        self.serials.contains(&normalize(serial))
    }

    pub fn is_empty(&self) -> bool {
        self.serials.is_empty()
    }

    pub fn len(&self) -> usize {
        self.serials.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.serials.iter().map(String::as_str)
    }
}

impl From<BTreeSet<String>> for RevocationSet {
    fn from(set: BTreeSet<String>) -> Self {
        RevocationSet {
            serials: set.iter().map(|s| normalize(s)).collect(),
        }
    }
}

impl From<RevocationSet> for BTreeSet<String> {
    fn from(set: RevocationSet) -> Self {
        set.serials
    }
}
