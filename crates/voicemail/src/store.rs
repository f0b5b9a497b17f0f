//! The message store, on the store of `mediasec-kms-store` (as the KMS and the BSF): an
//! embedded redb file (the default) or PostgreSQL (`postgres://…`), which several voicemail
//! servers may share. Tables: `vm_messages`: the message id in 20 decimal digits (keys sort as
//! ids) → [`Record`] bytes; `vm_meta`: `next_id` → the id the next message gets (8 octets, big
//! endian), so ids are never reused, even after a delete, and `mailbox_index` once the index
//! below was built; `vm_mailboxes`: one empty row per message, keyed by mailbox then id
//! ([`mailbox_key`]), so a listing or a quota check reads one mailbox's rows, not the store.
//! The index row is written before its message and deleted after it: a crash in between
//! leaves an index row without a message (skipped and removed when met), never a message its
//! owner cannot list.
//!
//! Every write is committed durably before the call returns. Ids are allocated with the
//! store's atomic compare-and-swap on `next_id` ([`mediasec_kms_store::update()`]: re-read and
//! retry when another writer moved it), so servers sharing one PostgreSQL never give one id twice; the message row is written
//! after its id is taken (a crash between the two only skips an id).
//!
//! Files written before this layout (tables `messages`: `u64` → record, `meta`: `next_id` →
//! `u64`) are moved into it, in one transaction, when [`Store::open`] first opens them.

use std::path::Path;
use std::sync::Arc;

use mediasec_kms_store::{RedbStore, Step, Store as Kv, Table, update};
use zeroize::Zeroizing;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableHandle};

use crate::api::Summary;
use crate::error::VoicemailError;
use crate::record::Record;

/// The tables of files written before this layout.
const OLD_MESSAGES: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("messages");
const OLD_META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");
const NEXT_ID: &str = "next_id";
/// Set in `vm_meta` once every message has its `vm_mailboxes` row ([`Store::index_mailboxes`]).
const MAILBOX_INDEX: &str = "mailbox_index";
/// Records decoded per [`Kv::range`] call of a scan (a listing never holds them all).
const SCAN_BATCH: usize = 16;

fn backend(e: impl Into<redb::Error>) -> VoicemailError {
    VoicemailError::Store(e.into().to_string())
}

fn key(id: u64) -> String {
    format!("{id:020}")
}

/// The `vm_mailboxes` row of message `id` in `mailbox`: the mailbox's length first, so that
/// no mailbox's rows fall within another's prefix.
fn mailbox_key(mailbox: &str, id: u64) -> String {
    format!("{}{}", mailbox_prefix(mailbox), key(id))
}

fn mailbox_prefix(mailbox: &str) -> String {
    format!("{:05}{mailbox}/", mailbox.len())
}

/// The open store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    kv: Arc<dyn Kv>,
}

impl Store {
    /// The message store on a backend (redb, or PostgreSQL shared by servers).
    pub fn new(kv: Arc<dyn Kv>) -> Self {
        Self { kv }
    }

    /// Opens (or creates) the embedded store at `path`, moving a file of the former layout
    /// into the current one first. Blocking: call before serving.
    pub fn open(path: &Path) -> Result<Self, VoicemailError> {
        if path.exists() {
            migrate(path)?;
        }
        Ok(Self::new(Arc::new(RedbStore::open(path)?)))
    }

    /// `next_id` and the swap that moves it past `id` ([`update()`]: retried on a lost swap).
    async fn take_id(&self) -> Result<u64, VoicemailError> {
        update(&*self.kv, Table::VoicemailMeta, NEXT_ID, |held| {
            let id = match held {
                None => 1,
                Some(v) => <[u8; 8]>::try_from(v).map(u64::from_be_bytes).map_err(|_| VoicemailError::Store(format!("{NEXT_ID}: {} octets, not 8", v.len())))?,
            };
            let next = id.checked_add(1).ok_or_else(|| VoicemailError::Store("message ids exhausted".into()))?;
            Ok(Step::Write(Some(Zeroizing::new(next.to_be_bytes().to_vec())), id))
        })
        .await
    }

    /// Stores a new message under the next id never given; returns the id.
    pub async fn insert(&self, mut record: Record) -> Result<u64, VoicemailError> {
        record.id = self.take_id().await?;
        let bytes = record.encode()?;
        self.kv.put(Table::VoicemailMailboxes, &mailbox_key(&record.mailbox, record.id), b"").await?;
        self.kv.put(Table::VoicemailMessages, &key(record.id), &bytes).await?;
        Ok(record.id)
    }

    /// The ids in `mailbox`'s index, by id, at most `limit` (index rows whose message is gone
    /// included: [`Self::summaries_of`] removes those it meets).
    async fn index_ids(&self, mailbox: &str, limit: usize) -> Result<Vec<u64>, VoicemailError> {
        let prefix = mailbox_prefix(mailbox);
        let (mut from, end) = (mailbox_key(mailbox, 0), mailbox_key(mailbox, u64::MAX));
        let mut ids = Vec::new();
        loop {
            let rows = self.kv.range(Table::VoicemailMailboxes, &from, &end, SCAN_BATCH.min(limit - ids.len())).await?;
            let batch = rows.len();
            for (k, _) in &rows {
                let id = k.strip_prefix(&prefix).and_then(|id| id.parse::<u64>().ok());
                ids.push(id.ok_or_else(|| VoicemailError::Store(format!("{}: row {k:?} is no mailbox index row", Table::VoicemailMailboxes.name())))?);
            }
            match ids.last().and_then(|id| id.checked_add(1)) {
                Some(next) if batch == SCAN_BATCH && ids.len() < limit => from = mailbox_key(mailbox, next),
                _ => return Ok(ids),
            }
        }
    }

    /// Stores a new message, as [`Store::insert`], unless its mailbox then holds more than
    /// `max` messages: then it is deleted again and `None` returned (the quota,
    /// [`crate::deposit::Caps::max_messages`]). The message and its index row are written
    /// *before* the mailbox is counted, so whichever of two concurrent admissions counts last
    /// sees the other's row — servers sharing one PostgreSQL store never take a mailbox past
    /// `max` together. Two exactly simultaneous admissions for the last place may both be
    /// refused (each sees the other's row before it is deleted); never both admitted.
    pub async fn insert_within(&self, record: Record, max: usize) -> Result<Option<u64>, VoicemailError> {
        let mailbox = record.mailbox.clone();
        let id = self.insert(record).await?;
        if self.count(&mailbox, max.saturating_add(1)).await? <= max {
            return Ok(Some(id));
        }
        self.delete(id, &mailbox).await?;
        Ok(None)
    }

    /// How many messages `mailbox` holds, counting up to `limit` (a quota check reads no
    /// more rows than the quota).
    pub async fn count(&self, mailbox: &str, limit: usize) -> Result<usize, VoicemailError> {
        Ok(self.index_ids(mailbox, limit).await?.len())
    }

    /// Replaces message `record.id` (the recording grew) if it is still stored; whether it
    /// was (the owner may have deleted it meanwhile: it is not brought back).
    pub async fn update(&self, record: Record) -> Result<bool, VoicemailError> {
        let bytes = record.encode()?;
        update(&*self.kv, Table::VoicemailMessages, &key(record.id), |held| {
            Ok::<_, VoicemailError>(match held {
                None => Step::Keep(false),
                Some(_) => Step::Write(Some(Zeroizing::new(bytes.clone())), true),
            })
        })
        .await
    }

    /// Message `id`.
    pub async fn get(&self, id: u64) -> Result<Option<Record>, VoicemailError> {
        self.kv.get(Table::VoicemailMessages, &key(id)).await?.map(|v| Record::decode(&v)).transpose()
    }

    /// Every record, by id, through `f`, [`SCAN_BATCH`] decoded at a time (what `f` drops is
    /// not held).
    async fn scan<T>(&self, f: impl Fn(Record) -> Option<T>) -> Result<Vec<T>, VoicemailError> {
        self.scan_rows(|_, v| Record::decode(v).map(&f)).await
    }

    /// Every stored row (row key, encoded record), by id, through `f`, [`SCAN_BATCH`] rows
    /// at a time; the first error of `f` ends the scan.
    async fn scan_rows<T>(&self, f: impl Fn(&str, &[u8]) -> Result<Option<T>, VoicemailError>) -> Result<Vec<T>, VoicemailError> {
        let (mut from, end) = (String::new(), key(u64::MAX));
        let mut out = Vec::new();
        loop {
            let rows = self.kv.range(Table::VoicemailMessages, &from, &end, SCAN_BATCH).await?;
            for (k, v) in &rows {
                out.extend(f(k, v)?);
            }
            match rows.last().and_then(|(k, _)| k.parse::<u64>().ok()).and_then(|id| id.checked_add(1)) {
                Some(next) if rows.len() == SCAN_BATCH => from = key(next),
                _ => return Ok(out),
            }
        }
    }

    /// Every message, by id.
    pub async fn all(&self) -> Result<Vec<Record>, VoicemailError> {
        self.scan(Some).await
    }

    /// The summaries of the messages in `mailboxes`, by id, read through the mailbox index (a
    /// listing reads those mailboxes' messages only, one at a time). An index row whose message
    /// is gone (a crash between the two writes or deletes) is removed here.
    pub async fn summaries_of(&self, mailboxes: &[String]) -> Result<Vec<Summary>, VoicemailError> {
        let mut out = Vec::new();
        for mailbox in mailboxes {
            for id in self.index_ids(mailbox, usize::MAX).await? {
                match self.get(id).await? {
                    Some(r) if &r.mailbox == mailbox => out.push(Summary::of(&r)),
                    _ => {
                        tracing::info!(%mailbox, id, "voicemail index row without its message removed");
                        self.kv.delete(Table::VoicemailMailboxes, &mailbox_key(mailbox, id)).await?;
                    }
                }
            }
        }
        out.sort_by_key(|s| s.id);
        out.dedup_by_key(|s| s.id);
        Ok(out)
    }

    /// Builds the mailbox index of a store written before it existed (every message gets its
    /// `vm_mailboxes` row), once: `mailbox_index` in `vm_meta` says it was done. Servers
    /// sharing one store may run it at once (the rows written are the same). Call before
    /// serving ([`crate::service::Server::start`] does).
    pub async fn index_mailboxes(&self) -> Result<usize, VoicemailError> {
        if self.kv.get(Table::VoicemailMeta, MAILBOX_INDEX).await?.is_some() {
            return Ok(0);
        }
        let rows = self.scan_rows(|k, v| Ok(crate::record::head(v).ok().map(|h| (k.to_owned(), h)))).await?;
        for (_, head) in &rows {
            self.kv.put(Table::VoicemailMailboxes, &mailbox_key(&head.mailbox, head.id), b"").await?;
        }
        self.kv.put(Table::VoicemailMeta, MAILBOX_INDEX, b"1").await?;
        Ok(rows.len())
    }

    /// Deletes every message received before `cutoff_ms` (Unix milliseconds): the retention
    /// limit ([`crate::deposit::Caps::retention`]). Reads each record's start only
    /// ([`crate::record::head`]), a batch at a time; returns how many it deleted. A record
    /// that does not decode is left (and logged): deleting what cannot be read is not a
    /// retention decision.
    pub async fn purge_received_before(&self, cutoff_ms: u64) -> Result<usize, VoicemailError> {
        let old = self
            .scan_rows(|k, v| {
                Ok(match crate::record::head(v) {
                    Ok(head) => (head.received_ms < cutoff_ms).then_some(head),
                    Err(e) => {
                        tracing::warn!(key = %k, error = %e, "voicemail record unreadable: kept by the retention purge");
                        None
                    }
                })
            })
            .await?;
        let mut purged = 0;
        for head in old {
            purged += usize::from(self.delete(head.id, &head.mailbox).await?);
        }
        Ok(purged)
    }

    /// Deletes message `id` of `mailbox`, then its index row; whether it existed.
    pub async fn delete(&self, id: u64, mailbox: &str) -> Result<bool, VoicemailError> {
        let existed = self.kv.delete(Table::VoicemailMessages, &key(id)).await?;
        self.kv.delete(Table::VoicemailMailboxes, &mailbox_key(mailbox, id)).await?;
        Ok(existed)
    }
}

/// Moves a file of the former layout (`messages`, `meta`) into the current tables, in one
/// write transaction, and drops the former tables; a file without them is left as it is.
fn migrate(path: &Path) -> Result<(), VoicemailError> {
    let db = Database::create(path).map_err(|e| VoicemailError::Store(format!("{}: {e}", path.display())))?;
    let old = db.begin_read().map_err(backend)?.list_tables().map_err(backend)?.any(|t| t.name() == OLD_MESSAGES.name());
    if !old {
        return Ok(());
    }
    let messages: TableDefinition<'_, &str, &[u8]> = TableDefinition::new(Table::VoicemailMessages.name());
    let meta: TableDefinition<'_, &str, &[u8]> = TableDefinition::new(Table::VoicemailMeta.name());
    let tx = db.begin_write().map_err(backend)?;
    {
        let from = tx.open_table(OLD_MESSAGES).map_err(backend)?;
        let mut to = tx.open_table(messages).map_err(backend)?;
        let mut next = 1u64;
        for row in from.iter().map_err(backend)? {
            let (id, v) = row.map_err(backend)?;
            to.insert(key(id.value()).as_str(), v.value()).map_err(backend)?;
            next = next.max(id.value().saturating_add(1));
        }
        let old_meta = tx.open_table(OLD_META).map_err(backend)?;
        if let Some(v) = old_meta.get(NEXT_ID).map_err(backend)? {
            next = next.max(v.value());
        }
        tx.open_table(meta).map_err(backend)?.insert(NEXT_ID, next.to_be_bytes().as_slice()).map_err(backend)?;
    }
    tx.delete_table(OLD_MESSAGES).map_err(backend)?;
    tx.delete_table(OLD_META).map_err(backend)?;
    tx.commit().map_err(backend)?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::record::Packet;
    use mediasec_kms_store::PgStore;
    use mediasec_kms_store::pg_lab::{PgLab, TempDir};

    /// A fresh backend: a redb file in a temporary directory, or a database on a lab
    /// PostgreSQL (`None` after a skip line when it is not installed, unless
    /// `MEDIASEC_REQUIRE_PEERS=1`).
    enum Backend {
        Redb(TempDir),
        Pg { _lab: PgLab, url: String },
    }

    impl Backend {
        fn redb(tag: &str) -> Self {
            Self::Redb(TempDir::new(tag).unwrap())
        }

        fn pg() -> Option<Self> {
            let lab = PgLab::start().expect("PostgreSQL lab")?;
            let url = lab.create_database("voicemail_test").expect("createdb");
            Some(Self::Pg { _lab: lab, url })
        }

        /// Opens the store (again: a restart of the server).
        async fn open(&self) -> Store {
            match self {
                Self::Redb(dir) => Store::open(&dir.path().join("vm.redb")).unwrap(),
                Self::Pg { url, .. } => Store::new(Arc::new(PgStore::connect(url).await.unwrap())),
            }
        }
    }

    fn record(mailbox: &str) -> Record {
        Record { id: 0, mailbox: mailbox.into(), caller: "sip:alice@a.example".into(), received_ms: 7, offer: "v=0".into(), transfer_init: vec![1; 8], packets: vec![Packet { at_ms: 1, bytes: vec![0x80; 100] }; 3], dropped: 2 }
    }

    /// The store contract, one body for both backends. A listing goes through `summaries`:
    /// records decoded a batch at a time and only the summaries of the mailboxes asked kept,
    /// so `GET /voicemail/v1/messages` never holds every stored message in memory at once. A
    /// message deleted while its call is still recording: the call's final update must not
    /// bring it back, nor overwrite a newer message that took its id. Ids keep growing after a
    /// restart, and two servers inserting at once never get the same id.
    async fn conformance(b: &Backend) {
        let store = b.open().await;
        let mut carol = Vec::new();
        for i in 0..2 * SCAN_BATCH + 3 {
            let mailbox = if i % 2 == 0 { "sip:carol@a.example" } else { "sip:dan@a.example" };
            let id = store.insert(record(mailbox)).await.unwrap();
            if i % 2 == 0 {
                carol.push(Summary::of(&Record { id, ..record(mailbox) }));
            }
        }
        assert_eq!(store.summaries_of(&["sip:carol@a.example".into()]).await.unwrap(), carol, "every batch of the index, in id order");
        assert_eq!(store.count("sip:carol@a.example", usize::MAX).await.unwrap(), carol.len());
        assert_eq!(store.count("sip:carol@a.example", 5).await.unwrap(), 5, "counting stops at the limit");
        assert_eq!(store.count("sip:carol@a.example.org", usize::MAX).await.unwrap(), 0, "no mailbox's rows are within another's prefix");
        let both = store.summaries_of(&["sip:dan@a.example".into(), "sip:carol@a.example".into()]).await.unwrap();
        assert_eq!(both.len(), 2 * SCAN_BATCH + 3);
        assert!(both.windows(2).all(|w| matches!(w, [a, b] if a.id < b.id)), "two mailboxes merged by id");
        let all = store.all().await.unwrap();
        assert_eq!(all.len(), 2 * SCAN_BATCH + 3);
        assert!(all.windows(2).all(|w| matches!(w, [a, b] if a.id < b.id)));

        let first = store.insert(record("sip:carol@a.example")).await.unwrap();
        assert!(store.delete(first, "sip:carol@a.example").await.unwrap());
        assert!(!store.delete(first, "sip:carol@a.example").await.unwrap());
        assert!(!store.summaries_of(&["sip:carol@a.example".into()]).await.unwrap().iter().any(|s| s.id == first), "deleted: not listed");
        let second = store.insert(record("sip:dan@a.example")).await.unwrap();
        assert!(second > first, "a deleted message's id is not given again");
        assert!(!store.update(Record { id: first, packets: vec![Packet { at_ms: 1, bytes: vec![1] }], ..record("sip:carol@a.example") }).await.unwrap());
        assert!(store.get(first).await.unwrap().is_none(), "the deleted message stays deleted");
        let grown = Record { id: second, packets: vec![Packet { at_ms: 9, bytes: vec![2; 30] }; 5], ..record("sip:dan@a.example") };
        assert!(store.update(grown.clone()).await.unwrap());
        assert_eq!(store.get(second).await.unwrap().expect("second"), grown);
        drop(store);
        let store = b.open().await;
        assert!(store.insert(record("sip:carol@a.example")).await.unwrap() > second, "ids keep growing after a restart");

        // Two servers (PostgreSQL: two connections; redb: one file, one process) at once.
        let other = match b {
            Backend::Redb(_) => store.clone(),
            Backend::Pg { .. } => b.open().await,
        };
        let run = |s: Store| tokio::spawn(async move { insert_many(&s).await });
        let (x, y) = (run(store), run(other));
        let mut ids = x.await.unwrap();
        ids.extend(y.await.unwrap());
        let n = ids.len();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), n, "an id was given twice");

        // Retention: messages received before the cutoff go, the rest stay (across batches).
        let store = b.open().await;
        quota(b, &store).await;
        let before = store.all().await.unwrap();
        let fresh: Vec<u64> = {
            let mut ids = Vec::new();
            for _ in 0..SCAN_BATCH + 2 {
                ids.push(store.insert(Record { received_ms: 1_000, ..record("sip:carol@a.example") }).await.unwrap());
            }
            ids
        };
        assert_eq!(store.purge_received_before(7).await.unwrap(), 0, "received at 7: not before 7");
        assert_eq!(store.purge_received_before(8).await.unwrap(), before.len(), "every message received at 7");
        assert_eq!(store.all().await.unwrap().iter().map(|r| r.id).collect::<Vec<_>>(), fresh, "the newer ones stay");
        assert_eq!(store.purge_received_before(8).await.unwrap(), 0, "idempotent");
        assert_eq!(store.count("sip:carol@a.example", usize::MAX).await.unwrap(), fresh.len(), "purged messages leave the index");
        assert_eq!(store.count("sip:dan@a.example", usize::MAX).await.unwrap(), 0);

        // An index row without its message (a crash between the two writes) is skipped and
        // removed by the next listing.
        store.kv.put(Table::VoicemailMailboxes, &mailbox_key("sip:carol@a.example", 999_999), b"").await.unwrap();
        assert_eq!(store.count("sip:carol@a.example", usize::MAX).await.unwrap(), fresh.len() + 1);
        assert_eq!(store.summaries_of(&["sip:carol@a.example".into()]).await.unwrap().len(), fresh.len());
        assert_eq!(store.count("sip:carol@a.example", usize::MAX).await.unwrap(), fresh.len(), "the stray row is gone");

        // A store written before the index: its messages get their rows once, at start.
        assert_eq!(store.index_mailboxes().await.unwrap(), fresh.len(), "a first run writes every message's row (again: the same rows)");
        assert_eq!(store.index_mailboxes().await.unwrap(), 0, "then it is done");
        store.kv.delete(Table::VoicemailMeta, MAILBOX_INDEX).await.unwrap();
        for id in &fresh {
            store.kv.delete(Table::VoicemailMailboxes, &mailbox_key("sip:carol@a.example", *id)).await.unwrap();
        }
        assert!(store.summaries_of(&["sip:carol@a.example".into()]).await.unwrap().is_empty());
        assert_eq!(store.index_mailboxes().await.unwrap(), fresh.len());
        assert_eq!(store.summaries_of(&["sip:carol@a.example".into()]).await.unwrap().iter().map(|s| s.id).collect::<Vec<_>>(), fresh);
    }

    /// The mailbox quota ([`Store::insert_within`]): a message is kept only while its mailbox
    /// then holds at most `max`; a refused one leaves nothing; a row another server wrote
    /// after our check (its message being admitted) counts; two servers admitting at once
    /// never take a mailbox past `max` together.
    async fn quota(b: &Backend, store: &Store) {
        let frank = "sip:frank@a.example";
        assert!(store.insert_within(record(frank), 2).await.unwrap().is_some());
        assert!(store.insert_within(record(frank), 2).await.unwrap().is_some());
        assert_eq!(store.insert_within(record(frank), 2).await.unwrap(), None, "full");
        assert_eq!(store.count(frank, usize::MAX).await.unwrap(), 2, "the refused message left no row");
        let gina = "sip:gina@a.example";
        store.insert(record(gina)).await.unwrap();
        store.kv.put(Table::VoicemailMailboxes, &mailbox_key(gina, u64::MAX - 1), b"").await.unwrap();
        assert_eq!(store.insert_within(record(gina), 2).await.unwrap(), None, "another server's row written meanwhile takes the last place");
        store.kv.delete(Table::VoicemailMailboxes, &mailbox_key(gina, u64::MAX - 1)).await.unwrap();
        assert!(store.insert_within(record(gina), 2).await.unwrap().is_some(), "its place again once that one is gone");

        let other = match b {
            Backend::Redb(_) => store.clone(),
            Backend::Pg { .. } => b.open().await,
        };
        let hal = "sip:hal@a.example";
        let admit = |s: Store| {
            tokio::spawn(async move {
                let mut admitted = 0;
                for _ in 0..8 {
                    admitted += usize::from(s.insert_within(record(hal), 5).await.unwrap().is_some());
                }
                admitted
            })
        };
        let (x, y) = (admit(store.clone()), admit(other));
        let admitted = x.await.unwrap() + y.await.unwrap();
        assert!((1..=5).contains(&admitted), "{admitted} admitted for 5 places");
        assert_eq!(store.count(hal, usize::MAX).await.unwrap(), admitted, "the refused ones left nothing");
        while store.insert_within(record(hal), 5).await.unwrap().is_some() {}
        assert_eq!(store.count(hal, usize::MAX).await.unwrap(), 5, "one at a time: filled to the quota, not past it");
    }

    async fn insert_many(s: &Store) -> Vec<u64> {
        let mut ids = Vec::new();
        for _ in 0..15 {
            ids.push(s.insert(record("sip:erin@a.example")).await.unwrap());
        }
        ids
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conformance_redb() {
        conformance(&Backend::redb("vm-store")).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conformance_postgres() {
        let Some(b) = Backend::pg() else { return };
        conformance(&b).await;
    }

    /// A file of the former layout (`messages`: `u64` → record, `meta`: `next_id`) is moved
    /// into the current tables on open: its messages serve and ids continue above both.
    #[tokio::test]
    async fn a_file_of_the_former_layout_is_migrated() {
        let dir = TempDir::new("vm-legacy").unwrap();
        let path = dir.path().join("vm.redb");
        {
            let db = Database::create(&path).unwrap();
            let tx = db.begin_write().unwrap();
            {
                let mut t = tx.open_table(OLD_MESSAGES).unwrap();
                for id in [3u64, 12] {
                    t.insert(id, Record { id, ..record("sip:carol@a.example") }.encode().unwrap().as_slice()).unwrap();
                }
                tx.open_table(OLD_META).unwrap().insert(NEXT_ID, 20).unwrap();
            }
            tx.commit().unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.all().await.unwrap().iter().map(|r| r.id).collect::<Vec<_>>(), [3, 12]);
        assert_eq!(store.get(12).await.unwrap().expect("migrated").mailbox, "sip:carol@a.example");
        assert_eq!(store.index_mailboxes().await.unwrap(), 2, "the migrated messages get their index rows");
        assert_eq!(store.summaries_of(&["sip:carol@a.example".into()]).await.unwrap().iter().map(|s| s.id).collect::<Vec<_>>(), [3, 12]);
        assert_eq!(store.insert(record("sip:dan@a.example")).await.unwrap(), 20, "next_id kept");
        drop(store);
        let store = Store::open(&path).unwrap();
        assert_eq!(store.all().await.unwrap().len(), 3, "a second open does not migrate again");
    }
}
