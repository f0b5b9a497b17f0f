//! The embedded backend: one redb file (ACID, copy-on-write B-trees, fsync on every commit).
//!
//! redb's calls block (file I/O and fsync), so every operation runs on tokio's blocking pool
//! ([`tokio::task::spawn_blocking`]) and never stalls the async executor; the futures must
//! therefore be polled inside a tokio runtime. Each call is one write (or read) transaction
//! committed with redb's default durability (`Immediate`: the commit fsyncs before it
//! returns), which is what the [`Store`] contract asks.
//!
//! Layout: one table per [`Table`] (`&str` → `&[u8]`, iterated in key byte order, which is the
//! order of Rust's `str`), and an `audit` table (`u64` → JSON of an [`AuditEntry`]) whose next
//! sequence number is the last key plus one, taken inside the write transaction (redb admits
//! one writer at a time, so numbers are strictly increasing; entries are never deleted).

use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::{AuditEntry, Store, StoreError, StoreFuture, Table, check_audit, check_text};

const AUDIT: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("audit");

fn table_def(t: Table) -> TableDefinition<'static, &'static str, &'static [u8]> {
    TableDefinition::new(t.name())
}

fn backend(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Backend(e.into().to_string())
}

/// The embedded store: a single redb file. Cheap to clone (shares the open database).
#[derive(Clone)]
pub struct RedbStore {
    db: Arc<Database>,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore").finish_non_exhaustive()
    }
}

impl RedbStore {
    /// Opens (or creates) the database file at `path` and creates any missing table. A file
    /// left by a crash is recovered by redb here (the last committed transaction survives).
    /// Blocking: call it before serving, or from a blocking context.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(|e| StoreError::Unavailable(format!("{}: {e}", path.display())))?;
        let tx = db.begin_write().map_err(backend)?;
        for t in Table::ALL {
            tx.open_table(table_def(t)).map_err(backend)?;
        }
        tx.open_table(AUDIT).map_err(backend)?;
        tx.commit().map_err(backend)?;
        Ok(Self { db: Arc::new(db) })
    }

    /// Runs `f` with the database on the blocking pool.
    fn blocking<'a, T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    ) -> StoreFuture<'a, T> {
        let db = Arc::clone(&self.db);
        Box::pin(async move {
            tokio::task::spawn_blocking(move || f(&db))
                .await
                .map_err(|e| StoreError::Backend(format!("store task failed: {e}")))?
        })
    }
}

impl Store for RedbStore {
    fn one_process(&self) -> bool {
        true
    }

    fn get<'a>(&'a self, table: Table, key: &'a str) -> StoreFuture<'a, Option<Vec<u8>>> {
        if let Err(e) = check_text("key", key) {
            return Box::pin(async move { Err(e) });
        }
        let key = key.to_owned();
        self.blocking(move |db| {
            let rx = db.begin_read().map_err(backend)?;
            let t = rx.open_table(table_def(table)).map_err(backend)?;
            Ok(t.get(key.as_str()).map_err(backend)?.map(|v| v.value().to_vec()))
        })
    }

    fn put<'a>(&'a self, table: Table, key: &'a str, value: &'a [u8]) -> StoreFuture<'a, ()> {
        if let Err(e) = check_text("key", key) {
            return Box::pin(async move { Err(e) });
        }
        let (key, value) = (key.to_owned(), value.to_vec());
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(backend)?;
            tx.open_table(table_def(table)).map_err(backend)?.insert(key.as_str(), value.as_slice()).map_err(backend)?;
            tx.commit().map_err(backend)
        })
    }

    fn put_if_absent<'a>(&'a self, table: Table, key: &'a str, value: &'a [u8]) -> StoreFuture<'a, Vec<u8>> {
        if let Err(e) = check_text("key", key) {
            return Box::pin(async move { Err(e) });
        }
        let (key, value) = (key.to_owned(), value.to_vec());
        // One write transaction (redb has a single writer): the read and the insert are atomic.
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(backend)?;
            let held = {
                let mut t = tx.open_table(table_def(table)).map_err(backend)?;
                let existing = t.get(key.as_str()).map_err(backend)?.map(|v| v.value().to_vec());
                match existing {
                    Some(v) => v,
                    None => {
                        t.insert(key.as_str(), value.as_slice()).map_err(backend)?;
                        value
                    }
                }
            };
            tx.commit().map_err(backend)?;
            Ok(held)
        })
    }

    fn compare_and_swap<'a>(
        &'a self,
        table: Table,
        key: &'a str,
        expected: Option<&'a [u8]>,
        new: Option<&'a [u8]>,
    ) -> StoreFuture<'a, bool> {
        if let Err(e) = check_text("key", key) {
            return Box::pin(async move { Err(e) });
        }
        let (key, expected, new) = (key.to_owned(), expected.map(<[u8]>::to_vec), new.map(<[u8]>::to_vec));
        // One write transaction (redb has a single writer): the compare and the swap are atomic.
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(backend)?;
            let swapped = {
                let mut t = tx.open_table(table_def(table)).map_err(backend)?;
                let held = t.get(key.as_str()).map_err(backend)?.map(|v| v.value().to_vec());
                if held != expected {
                    false
                } else {
                    if let Some(v) = &new {
                        t.insert(key.as_str(), v.as_slice()).map_err(backend)?;
                    } else {
                        t.remove(key.as_str()).map_err(backend)?;
                    }
                    true
                }
            };
            if swapped {
                tx.commit().map_err(backend)?;
            } else {
                tx.abort().map_err(backend)?;
            }
            Ok(swapped)
        })
    }

    fn range<'a>(&'a self, table: Table, from: &'a str, to: &'a str, limit: usize) -> StoreFuture<'a, Vec<(String, Vec<u8>)>> {
        if let Err(e) = check_text("range start", from).and_then(|()| check_text("range end", to)) {
            return Box::pin(async move { Err(e) });
        }
        let (from, to) = (from.to_owned(), to.to_owned());
        self.blocking(move |db| {
            let mut out = Vec::new();
            if from >= to {
                return Ok(out);
            }
            let rx = db.begin_read().map_err(backend)?;
            let t = rx.open_table(table_def(table)).map_err(backend)?;
            for row in t.range(from.as_str()..to.as_str()).map_err(backend)?.take(limit) {
                let (k, v) = row.map_err(backend)?;
                out.push((k.value().to_owned(), v.value().to_vec()));
            }
            Ok(out)
        })
    }

    fn range_from<'a>(&'a self, table: Table, from: &'a str, limit: usize) -> StoreFuture<'a, Vec<(String, Vec<u8>)>> {
        if let Err(e) = check_text("range start", from) {
            return Box::pin(async move { Err(e) });
        }
        let from = from.to_owned();
        self.blocking(move |db| {
            let rx = db.begin_read().map_err(backend)?;
            let t = rx.open_table(table_def(table)).map_err(backend)?;
            let mut out = Vec::new();
            for row in t.range(from.as_str()..).map_err(backend)?.take(limit) {
                let (k, v) = row.map_err(backend)?;
                out.push((k.value().to_owned(), v.value().to_vec()));
            }
            Ok(out)
        })
    }

    fn delete<'a>(&'a self, table: Table, key: &'a str) -> StoreFuture<'a, bool> {
        if let Err(e) = check_text("key", key) {
            return Box::pin(async move { Err(e) });
        }
        let key = key.to_owned();
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(backend)?;
            let existed = tx.open_table(table_def(table)).map_err(backend)?.remove(key.as_str()).map_err(backend)?.is_some();
            tx.commit().map_err(backend)?;
            Ok(existed)
        })
    }

    fn list<'a>(&'a self, table: Table) -> StoreFuture<'a, Vec<(String, Vec<u8>)>> {
        self.blocking(move |db| {
            let rx = db.begin_read().map_err(backend)?;
            let t = rx.open_table(table_def(table)).map_err(backend)?;
            let mut out = Vec::new();
            for row in t.iter().map_err(backend)? {
                let (k, v) = row.map_err(backend)?;
                out.push((k.value().to_owned(), v.value().to_vec()));
            }
            Ok(out)
        })
    }

    fn append_audit<'a>(&'a self, entry: &'a AuditEntry) -> StoreFuture<'a, u64> {
        if let Err(e) = check_audit(entry) {
            return Box::pin(async move { Err(e) });
        }
        let bytes = match serde_json::to_vec(entry) {
            Ok(b) => b,
            Err(e) => return Box::pin(async move { Err(StoreError::Backend(format!("audit entry: {e}"))) }),
        };
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(backend)?;
            let seq = {
                let mut t = tx.open_table(AUDIT).map_err(backend)?;
                let last = t.last().map_err(backend)?.map_or(0, |(k, _)| k.value());
                let seq = last.checked_add(1).ok_or_else(|| StoreError::Corrupt("audit sequence exhausted".into()))?;
                t.insert(seq, bytes.as_slice()).map_err(backend)?;
                seq
            };
            tx.commit().map_err(backend)?;
            Ok(seq)
        })
    }

    fn audit<'a>(&'a self, after: u64, limit: usize) -> StoreFuture<'a, Vec<(u64, AuditEntry)>> {
        self.blocking(move |db| {
            let mut out = Vec::new();
            let Some(first) = after.checked_add(1) else { return Ok(out) };
            let rx = db.begin_read().map_err(backend)?;
            let t = rx.open_table(AUDIT).map_err(backend)?;
            for row in t.range(first..).map_err(backend)?.take(limit) {
                let (k, v) = row.map_err(backend)?;
                let entry = serde_json::from_slice(v.value())
                    .map_err(|e| StoreError::Corrupt(format!("audit entry {}: {e}", k.value())))?;
                out.push((k.value(), entry));
            }
            Ok(out)
        })
    }
}
