//! The message store: one embedded redb file (the project's default store, as the KMS's
//! `mediasec_kms_store::RedbStore`), table `messages`: message id (`u64`) → [`Record`] bytes.
//! Every write is one committed (fsynced) transaction, so messages survive a restart. redb
//! blocks, so every call runs on tokio's blocking pool.

use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::api::Summary;
use crate::error::VoicemailError;
use crate::record::Record;

const MESSAGES: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("messages");

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
        tx.commit().map_err(backend)?;
        Ok(Self { db: Arc::new(db) })
    }

    async fn blocking<T: Send + 'static>(&self, f: impl FnOnce(&Database) -> Result<T, VoicemailError> + Send + 'static) -> Result<T, VoicemailError> {
        let db = Arc::clone(&self.db);
        tokio::task::spawn_blocking(move || f(&db)).await.map_err(|e| VoicemailError::Store(format!("store task failed: {e}")))?
    }

    /// Stores a new message: its id is the highest one plus one (taken inside the write
    /// transaction; redb admits one writer at a time). Returns the id.
    pub async fn insert(&self, mut record: Record) -> Result<u64, VoicemailError> {
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(backend)?;
            let id = {
                let mut t = tx.open_table(MESSAGES).map_err(backend)?;
                let id = t.last().map_err(backend)?.map_or(1, |(k, _)| k.value().saturating_add(1));
                record.id = id;
                t.insert(id, record.encode()?.as_slice()).map_err(backend)?;
                id
            };
            tx.commit().map_err(backend)?;
            Ok(id)
        })
        .await
    }

    /// Replaces message `record.id` (the recording grew).
    pub async fn update(&self, record: Record) -> Result<(), VoicemailError> {
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(backend)?;
            tx.open_table(MESSAGES).map_err(backend)?.insert(record.id, record.encode()?.as_slice()).map_err(backend)?;
            tx.commit().map_err(backend)
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
}
