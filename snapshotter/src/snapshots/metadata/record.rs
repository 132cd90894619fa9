//! The snapshot record as stored in the metadata database.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// A snapshot's kind, as containerd defines it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// Read-only, made by `View`.
    View,
    /// Writable, made by `Prepare`.
    Active,
    /// Immutable, made by `Commit`; the only kind that may be a parent.
    Committed,
}

impl Kind {
    /// The name containerd's snapshot filters use (`kind==committed`).
    pub fn filter_name(self) -> &'static str {
        match self {
            Kind::View => "view",
            Kind::Active => "active",
            Kind::Committed => "committed",
        }
    }
}

/// One snapshot. The key (name) is the table key, not part of the record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Internal id; names the directory `snapshots/<id>`. Kept across Commit.
    pub id: u64,
    pub kind: Kind,
    /// Key of the parent snapshot, `""` for none.
    pub parent: String,
    pub labels: BTreeMap<String, String>,
    pub created: SystemTime,
    pub updated: SystemTime,
    /// Disk usage in bytes, recorded at Commit (zero for active and view snapshots).
    pub size: i64,
    /// Inode count, recorded at Commit.
    pub inodes: i64,
}

/// A record together with its key, as Stat and List return it.
#[derive(Debug, Clone, PartialEq)]
pub struct Info {
    pub name: String,
    pub record: Record,
}
