//! Snapshot metadata in a redb database (`<root>/metadata.redb`).
//!
//! Owns the snapshot records and their rules, which follow containerd's
//! `snapshots/storage` (bolt) package: keys are unique, parents must be committed, only active
//! snapshots commit (keeping their id), snapshots with children cannot be removed, Update only
//! touches labels. Directories are not touched here: callers do their filesystem step between
//! a mutation and [`WriteTxn::commit`], so a failed rename aborts the transaction.
//!
//! Everything here blocks; async callers go through `spawn_blocking`.

mod record;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

pub use record::{Info, Kind, Record};

use crate::error::{Error, Result};

/// key -> JSON-encoded [`Record`].
const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");
/// Counters; `next_id` is the next snapshot id to hand out.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const NEXT_ID: &str = "next_id";

/// The metadata database.
///
/// After a failed write (e.g. ENOSPC while committing) redb refuses every later transaction
/// with `PreviousIo` until the database is opened again; the store then reopens it (redb
/// repairs on open), so freeing disk space is enough to recover, without a daemon restart.
pub struct MetaStore {
    path: PathBuf,
    db: RwLock<Option<Arc<Database>>>,
}

impl MetaStore {
    /// Opens (or creates) the database at `path` and makes sure its tables exist.
    pub fn open(path: &Path) -> Result<Self> {
        let db = Self::open_db(path)?;
        Ok(Self {
            path: path.to_owned(),
            db: RwLock::new(Some(Arc::new(db))),
        })
    }

    fn open_db(path: &Path) -> Result<Database> {
        let db = Database::create(path)?;
        let tx = db.begin_write()?;
        tx.open_table(SNAPSHOTS)?;
        tx.open_table(META)?;
        tx.commit()?;
        Ok(db)
    }

    /// The open database, reopening it if an earlier failure closed it.
    fn db(&self) -> Result<Arc<Database>> {
        if let Some(db) = self.db.read().unwrap_or_else(|e| e.into_inner()).as_ref() {
            return Ok(db.clone());
        }
        let mut slot = self.db.write().unwrap_or_else(|e| e.into_inner());
        if let Some(db) = slot.as_ref() {
            return Ok(db.clone());
        }
        let db = Arc::new(Self::open_db(&self.path)?);
        tracing::warn!(path = %self.path.display(), "metadata database reopened after an I/O error");
        *slot = Some(db.clone());
        Ok(db)
    }

    /// Runs `f` on the database; on redb's `PreviousIo` drops it, reopens it and runs `f` once
    /// more. (Reopening fails while another call still holds the old handle; a later call
    /// then retries.)
    fn with_db<T>(&self, f: impl Fn(&Database) -> Result<T>) -> Result<T> {
        let db = self.db()?;
        match f(&db) {
            Err(Error::Db(redb::Error::PreviousIo)) => {
                {
                    let mut slot = self.db.write().unwrap_or_else(|e| e.into_inner());
                    if slot.as_ref().is_some_and(|cur| Arc::ptr_eq(cur, &db)) {
                        *slot = None;
                    }
                }
                drop(db);
                f(&*self.db()?)
            }
            other => other,
        }
    }

    /// Starts a write transaction; dropping it without [`WriteTxn::commit`] aborts it.
    pub fn begin(&self) -> Result<WriteTxn> {
        self.with_db(|db| {
            Ok(WriteTxn {
                tx: db.begin_write()?,
            })
        })
    }

    /// The snapshot named `key`.
    pub fn get(&self, key: &str) -> Result<Info> {
        self.with_db(|db| Self::get_in(db, key))
    }

    fn get_in(db: &Database, key: &str) -> Result<Info> {
        let tx = db.begin_read()?;
        let table = tx.open_table(SNAPSHOTS)?;
        let guard = table
            .get(key)?
            .ok_or_else(|| Error::NotFound(format!("snapshot {key:?}")))?;
        let record = decode(key, guard.value())?;
        Ok(Info {
            name: key.to_owned(),
            record,
        })
    }

    /// Ids of the parent chain of `key`, nearest parent first (the overlay lowerdir order).
    pub fn parent_ids(&self, key: &str) -> Result<Vec<u64>> {
        self.with_db(|db| {
            let tx = db.begin_read()?;
            let table = tx.open_table(SNAPSHOTS)?;
            let record = read(&table, key)?.ok_or_else(|| not_found(key))?;
            chain(&table, &record.parent)
        })
    }

    /// Every snapshot, ordered by key.
    pub fn list(&self) -> Result<Vec<Info>> {
        self.with_db(Self::list_in)
    }

    fn list_in(db: &Database) -> Result<Vec<Info>> {
        let tx = db.begin_read()?;
        let table = tx.open_table(SNAPSHOTS)?;
        let mut out = Vec::new();
        for item in table.iter()? {
            let (k, v) = item?;
            let name = k.value().to_owned();
            let record = decode(&name, v.value())?;
            out.push(Info { name, record });
        }
        Ok(out)
    }
}

/// A write transaction over the metadata.
pub struct WriteTxn {
    tx: redb::WriteTransaction,
}

impl WriteTxn {
    /// Makes the changes durable.
    pub fn commit(self) -> Result<()> {
        self.tx.commit()?;
        Ok(())
    }

    /// Creates a View or Active snapshot. Returns the new record and the parent chain ids
    /// (nearest first).
    pub fn create(
        &mut self,
        key: &str,
        parent: &str,
        kind: Kind,
        labels: BTreeMap<String, String>,
    ) -> Result<(Record, Vec<u64>)> {
        if kind == Kind::Committed {
            return Err(Error::InvalidArgument(
                "snapshot kind must be view or active".into(),
            ));
        }
        if key.is_empty() {
            return Err(Error::InvalidArgument("snapshot key is empty".into()));
        }
        let id = self.allocate_id()?;
        let mut table = self.tx.open_table(SNAPSHOTS)?;
        if table.get(key)?.is_some() {
            return Err(Error::AlreadyExists(key.to_owned()));
        }
        let parents = if parent.is_empty() {
            Vec::new()
        } else {
            let p = read(&table, parent)?
                .ok_or_else(|| Error::NotFound(format!("parent snapshot {parent:?}")))?;
            if p.kind != Kind::Committed {
                return Err(Error::InvalidArgument(format!(
                    "parent {parent:?} is not a committed snapshot"
                )));
            }
            chain(&table, parent)?
        };
        let now = SystemTime::now();
        let record = Record {
            id,
            kind,
            parent: parent.to_owned(),
            labels,
            created: now,
            updated: now,
            size: 0,
            inodes: 0,
        };
        write(&mut table, key, &record)?;
        Ok((record, parents))
    }

    /// Commits the active snapshot `key` as `name`, keeping its id and parent; the new
    /// snapshot's labels are `labels` (like containerd, the active's labels are not carried).
    pub fn commit_active(
        &mut self,
        key: &str,
        name: &str,
        labels: BTreeMap<String, String>,
        usage: (i64, i64),
    ) -> Result<Record> {
        let mut table = self.tx.open_table(SNAPSHOTS)?;
        if name.is_empty() {
            return Err(Error::InvalidArgument("commit name is empty".into()));
        }
        if table.get(name)?.is_some() {
            return Err(Error::AlreadyExists(name.to_owned()));
        }
        let active = read(&table, key)?.ok_or_else(|| not_found(key))?;
        if active.kind != Kind::Active {
            return Err(Error::FailedPrecondition(format!(
                "snapshot {key:?} is not active"
            )));
        }
        let now = SystemTime::now();
        let record = Record {
            kind: Kind::Committed,
            labels,
            created: now,
            updated: now,
            size: usage.0,
            inodes: usage.1,
            ..active
        };
        table.remove(key)?;
        write(&mut table, name, &record)?;
        Ok(record)
    }

    /// Removes `key`, which must have no children. Returns the removed record.
    pub fn remove(&mut self, key: &str) -> Result<Record> {
        let mut table = self.tx.open_table(SNAPSHOTS)?;
        let record = read(&table, key)?.ok_or_else(|| not_found(key))?;
        for item in table.iter()? {
            let (k, v) = item?;
            let child = decode(k.value(), v.value())?;
            if child.parent == key {
                return Err(Error::FailedPrecondition(format!(
                    "cannot remove snapshot {key:?} with child {:?}",
                    k.value()
                )));
            }
        }
        table.remove(key)?;
        Ok(record)
    }

    /// Updates labels of `key` as containerd's `UpdateInfo` does: with no paths the labels
    /// are replaced; `labels` replaces them; `labels.<k>` sets one (or deletes it when absent
    /// from `labels`); any other path is an error.
    pub fn update_labels(
        &mut self,
        key: &str,
        labels: BTreeMap<String, String>,
        paths: &[String],
    ) -> Result<Info> {
        let mut table = self.tx.open_table(SNAPSHOTS)?;
        let mut record = read(&table, key)?.ok_or_else(|| not_found(key))?;
        if paths.is_empty() {
            record.labels = labels;
        } else {
            for path in paths {
                if let Some(label) = path.strip_prefix("labels.") {
                    match labels.get(label) {
                        Some(v) => record.labels.insert(label.to_owned(), v.clone()),
                        None => record.labels.remove(label),
                    };
                } else if path == "labels" {
                    record.labels = labels.clone();
                } else {
                    return Err(Error::InvalidArgument(format!(
                        "cannot update {path:?} field on snapshot {key:?}"
                    )));
                }
            }
        }
        record.updated = SystemTime::now();
        write(&mut table, key, &record)?;
        Ok(Info {
            name: key.to_owned(),
            record,
        })
    }

    fn allocate_id(&mut self) -> Result<u64> {
        let mut meta = self.tx.open_table(META)?;
        // Ids start at 1 and are never reused, so a stale directory never aliases a new one.
        let id = meta.get(NEXT_ID)?.map(|g| g.value()).unwrap_or(1);
        meta.insert(NEXT_ID, id + 1)?;
        Ok(id)
    }
}

fn not_found(key: &str) -> Error {
    Error::NotFound(format!("snapshot {key:?}"))
}

fn decode(key: &str, bytes: &[u8]) -> Result<Record> {
    serde_json::from_slice(bytes).map_err(|source| Error::Record {
        key: key.to_owned(),
        source,
    })
}

fn read(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<Record>> {
    match table.get(key)? {
        Some(g) => Ok(Some(decode(key, g.value())?)),
        None => Ok(None),
    }
}

fn write(
    table: &mut redb::Table<&'static str, &'static [u8]>,
    key: &str,
    r: &Record,
) -> Result<()> {
    let bytes = serde_json::to_vec(r).map_err(|source| Error::Record {
        key: key.to_owned(),
        source,
    })?;
    table.insert(key, bytes.as_slice())?;
    Ok(())
}

/// Ids of `parent` and its ancestors, nearest first.
fn chain(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    parent: &str,
) -> Result<Vec<u64>> {
    let mut ids = Vec::new();
    let mut next = parent.to_owned();
    while !next.is_empty() {
        let r = read(table, &next)?
            .ok_or_else(|| Error::NotFound(format!("parent snapshot {next:?}")))?;
        ids.push(r.id);
        // A cycle can only come from a corrupt DB; stop rather than loop forever.
        if ids.len() > 10_000 {
            return Err(Error::FailedPrecondition(format!(
                "parent chain of {parent:?} is too long or cyclic"
            )));
        }
        next = r.parent;
    }
    Ok(ids)
}
