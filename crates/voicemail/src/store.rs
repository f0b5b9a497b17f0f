//! The message store: one embedded redb file (the project's default store, as the KMS's
//! `mediasec_kms_store::RedbStore`), table `messages`: message id (`u64`) → [`Record`] bytes;
//! table `meta`: the next id (ids are never reused).
//! Every write is one committed (fsynced) transaction, so messages survive a restart. redb
//! blocks, so every call runs on tokio's blocking pool.

use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::api::Summary;
use crate::error::VoicemailError;
use crate::record::Record;

const MESSAGES: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("messages");
/// `next_id` → the id the next message gets: ids are never given twice, even after a delete.
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");
const NEXT_ID: &str = "next_id";

fn backend(e: impl Into<redb::Error>) -> VoicemailError {
    VoicemailError::Store(e.into().to_string())
}

/// The open store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
}

impl Store {
    /// Opens (or creates) the store at `path`. Blocking: call before serving.
    pub fn open(path: &Path) -> Result<Self, VoicemailError> {
        let db = Database::create(path).map_err(|e| VoicemailError::Store(format!("{}: {e}", path.display())))?;
        let tx = db.begin_write().map_err(backend)?;
        tx.open_table(MESSAGES).map_err(backend)?;
        tx.open_table(META).map_err(backend)?;
        tx.commit().map_err(backend)?;
        Ok(Self { db: Arc::new(db) })
    }

    async fn blocking<T: Send + 'static>(&self, f: impl FnOnce(&Database) -> Result<T, VoicemailError> + Send + 'static) -> Result<T, VoicemailError> {
        let db = Arc::clone(&self.db);
        tokio::task::spawn_blocking(move || f(&db)).await.map_err(|e| VoicemailError::Store(format!("store task failed: {e}")))?
    }

    /// Stores a new message: its id is the next one never given (above the highest stored and
    /// every deleted one; taken inside the write transaction, redb admits one writer at a
    /// time). Returns the id.
    pub async fn insert(&self, mut record: Record) -> Result<u64, VoicemailError> {
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(backend)?;
            let id = {
                let mut t = tx.open_table(MESSAGES).map_err(backend)?;
                let mut meta = tx.open_table(META).map_err(backend)?;
                let after_last = t.last().map_err(backend)?.map_or(1, |(k, _)| k.value().saturating_add(1));
                let id = meta.get(NEXT_ID).map_err(backend)?.map_or(1, |v| v.value()).max(after_last);
                record.id = id;
                t.insert(id, record.encode()?.as_slice()).map_err(backend)?;
                meta.insert(NEXT_ID, id.saturating_add(1)).map_err(backend)?;
                id
            };
            tx.commit().map_err(backend)?;
            Ok(id)
        })
        .await
    }

    /// Replaces message `record.id` (the recording grew) if it is still stored; whether it
    /// was (the owner may have deleted it meanwhile: it is not brought back).
    pub async fn update(&self, record: Record) -> Result<bool, VoicemailError> {
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(backend)?;
            let stored = {
                let mut t = tx.open_table(MESSAGES).map_err(backend)?;
                let stored = t.get(record.id).map_err(backend)?.is_some();
                if stored {
                    t.insert(record.id, record.encode()?.as_slice()).map_err(backend)?;
                }
                stored
            };
            tx.commit().map_err(backend)?;
            Ok(stored)
        })
        .await
    }

    /// Message `id`.
    pub async fn get(&self, id: u64) -> Result<Option<Record>, VoicemailError> {
        self.blocking(move |db| {
            let rx = db.begin_read().map_err(backend)?;
            let t = rx.open_table(MESSAGES).map_err(backend)?;
            t.get(id).map_err(backend)?.map(|v| Record::decode(v.value())).transpose()
        })
        .await
    }

    /// Every record, by id, through `f`, one decoded at a time (what `f` drops is not held).
    async fn scan<T: Send + 'static>(&self, f: impl Fn(Record) -> Option<T> + Send + 'static) -> Result<Vec<T>, VoicemailError> {
        self.blocking(move |db| {
            let rx = db.begin_read().map_err(backend)?;
            let t = rx.open_table(MESSAGES).map_err(backend)?;
            let mut out = Vec::new();
            for row in t.iter().map_err(backend)? {
                let (_, v) = row.map_err(backend)?;
                out.extend(f(Record::decode(v.value())?));
            }
            Ok(out)
        })
        .await
    }

    /// Every message, by id.
    pub async fn all(&self) -> Result<Vec<Record>, VoicemailError> {
        self.scan(Some).await
    }

    /// The summaries of the messages whose mailbox `keep` accepts, by id: a listing holds
    /// summaries, never the whole store (packets included).
    pub async fn summaries(&self, keep: impl Fn(&str) -> bool + Send + 'static) -> Result<Vec<Summary>, VoicemailError> {
        self.scan(move |r| keep(&r.mailbox).then(|| Summary::of(&r))).await
    }

    /// Deletes message `id`; whether it existed.
    pub async fn delete(&self, id: u64) -> Result<bool, VoicemailError> {
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(backend)?;
            let existed = tx.open_table(MESSAGES).map_err(backend)?.remove(id).map_err(backend)?.is_some();
            tx.commit().map_err(backend)?;
            Ok(existed)
        })
        .await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::record::Packet;

    /// A listing goes through `summaries`: one record decoded at a time and only the
    /// summaries of the mailboxes asked kept, so `GET /voicemail/v1/messages` never holds
    /// every stored message (packets included) in memory at once.
    #[tokio::test]
    async fn summaries_keep_only_the_mailboxes_asked() {
        let dir = std::env::temp_dir().join(format!("mediasec-vm-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let store = Store::open(&dir.join("vm.redb")).unwrap();
        let record = |mailbox: &str| Record {
            id: 0,
            mailbox: mailbox.into(),
            caller: "sip:alice@a.example".into(),
            received_ms: 7,
            offer: "v=0".into(),
            transfer_init: vec![1; 8],
            packets: vec![Packet { at_ms: 1, bytes: vec![0x80; 100] }; 3],
            dropped: 2,
        };
        let carol = store.insert(record("sip:carol@a.example")).await.unwrap();
        store.insert(record("sip:dan@a.example")).await.unwrap();
        let listed = store.summaries(|m| m == "sip:carol@a.example").await.unwrap();
        assert_eq!(listed, [Summary::of(&Record { id: carol, ..record("sip:carol@a.example") })]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A message deleted while its call is still recording: the call's final update must not
    /// bring it back, nor overwrite a newer message that took its id.
    #[tokio::test]
    async fn ids_are_never_reused_and_updates_do_not_resurrect_deleted_messages() {
        let dir = std::env::temp_dir().join(format!("mediasec-vm-store-ids-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let store = Store::open(&dir.join("vm.redb")).unwrap();
        let record = |mailbox: &str| Record { id: 0, mailbox: mailbox.into(), caller: String::new(), received_ms: 1, offer: String::new(), transfer_init: Vec::new(), packets: Vec::new(), dropped: 0 };
        let first = store.insert(record("sip:carol@a.example")).await.unwrap();
        assert!(store.delete(first).await.unwrap());
        let second = store.insert(record("sip:dan@a.example")).await.unwrap();
        assert_ne!(second, first, "a deleted message's id is not given again");
        store.update(Record { id: first, packets: vec![Packet { at_ms: 1, bytes: vec![1] }], ..record("sip:carol@a.example") }).await.unwrap();
        assert!(store.get(first).await.unwrap().is_none(), "the deleted message stays deleted");
        assert_eq!(store.get(second).await.unwrap().expect("second").mailbox, "sip:dan@a.example");
        drop(store);
        let store = Store::open(&dir.join("vm.redb")).unwrap();
        assert!(store.insert(record("sip:carol@a.example")).await.unwrap() > second, "ids keep growing after a restart");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
