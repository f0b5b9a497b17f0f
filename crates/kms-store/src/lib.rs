//! The KMS store (TS 33.328 §4.2.4: the KMS keeps users, policies and its ticket keys; it keeps
//! no per-call state). One trait, [`Store`], with two backends: an embedded single-file ACID
//! database (the default, no setup) and PostgreSQL, which several KMS replicas share. The GBA
//! BSF (crate `mediasec-bsf`) keeps its subscribers and bootstrapping sessions in the same
//! store, in its own tables ([`Table::BsfSubscribers`] ...), and so does the voicemail server
//! ([`Table::VoicemailMessages`], [`Table::VoicemailMeta`]).
//!
//! The store holds opaque bytes per (table, key). Encryption at rest is done above this trait,
//! with the one implementation of [`sealed`] (the KMS's key ring, the BSF's K, OPc/OP and Ks),
//! so a backend never sees those secrets in clear.
//!
//! Contract every backend meets:
//! - a call returns only after its change is durable (committed); a crash (kill -9) after the
//!   return loses nothing;
//! - `put` replaces any previous value of the key; `delete` reports whether the key existed;
//! - `list` returns the rows of a table sorted by key;
//! - audit entries get strictly increasing sequence numbers, never reused;
//! - `compare_and_swap` is atomic with respect to every other writer of the store, replicas
//!   sharing a PostgreSQL database included (the BSF's AKA SQN allocation rests on it);
//! - `range` returns the rows with `from <= key < to`, sorted by key; `range_from` those
//!   with `from <= key` (no upper bound), sorted by key: the batched walk of a whole table
//!   ([`rekey`]).
//!
//! Read-modify-write of a row goes through [`update()`] (compare-and-swap, bounded retries).

use std::future::Future;
use std::pin::Pin;

pub mod pg;
pub mod pg_lab;
mod pg_pass;
pub mod pg_tls;
pub mod redb_store;
pub mod rekey;
pub mod sealed;
pub mod servers;
pub mod update;

pub use pg::PgStore;
pub use redb_store::RedbStore;
pub use update::{Step, UPDATE_ATTEMPTS, update};

/// Entry point of the `pg_conninfo` fuzz target and its corpus replay: the first line of
/// `data` as a PostgreSQL connection string (URL or key=value, TLS parameters split off), the
/// rest as a password file for it. Must never panic.
#[doc(hidden)]
pub fn fuzz_conninfo(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (conn, pgpass) = text.split_once('\n').unwrap_or((&text, ""));
    pg_tls::fuzz_conninfo(conn, pgpass.as_bytes());
}

/// The future every [`Store`] method returns (boxed so that `dyn Store` works).
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// The tables of the KMS store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Table {
    /// Users known to the KMS, keyed by KMS UID (`user@domain`).
    Users,
    /// Per-user and per-domain policies, keyed by the identity or domain they apply to.
    Policies,
    /// The ticket-protection key ring, keyed by key id (values encrypted by the KMS).
    KeyRing,
    /// KMS-wide settings.
    Settings,
    /// Lawful-interception warrants, keyed by warrant id (readable only through the LI API).
    LiWarrants,
    /// The lawful-interception audit trail, kept apart from the admin audit log; keyed by
    /// zero-padded time and a random suffix, so rows sort by time.
    LiAudit,
    /// BSF: subscribers (JSON), keyed by IMPI.
    BsfSubscribers,
    /// BSF: bootstrapping sessions (JSON), keyed by B-TID.
    BsfSessions,
    /// BSF: the expiry index of the sessions, keyed by zero-padded expiry time `/` B-TID
    /// (empty values), so expired sessions are found with a [`Store::range`] scan.
    BsfSessionExpiry,
    /// BSF: Digest challenges in flight (sealed), keyed by the nonce sent, so the answer may
    /// reach any replica and is taken once.
    BsfPending,
    /// BSF: the expiry index of [`Table::BsfPending`], keyed by zero-padded expiry time `/`
    /// nonce (empty values).
    BsfPendingExpiry,
    /// Voicemail: messages, keyed by the message id in 20 decimal digits (so keys sort as ids).
    VoicemailMessages,
    /// Voicemail: settings (`next_id`, the id the next message gets).
    VoicemailMeta,
    /// Voicemail: the messages of each mailbox, keyed by the mailbox's length in 5 digits, the
    /// mailbox, `/` and the message id in 20 digits (empty values), so one mailbox's messages
    /// are found with a [`Store::range`] scan of its prefix.
    VoicemailMailboxes,
    /// A master-key rotation in progress ([`rekey`]), keyed by the service whose rows it
    /// re-seals (`kms`, `bsf`); the row exists from the start of the rotation to its end.
    Rekey,
    /// The servers using the store and the master keys they seal and open with (by
    /// fingerprint), keyed `<scope>/<instance id>`, each refreshed while the server runs
    /// ([`servers`]): what the online master-key rotation checks.
    Servers,
}

impl Table {
    /// Every table, in a fixed order.
    pub const ALL: [Self; 16] = [
        Self::Users,
        Self::Policies,
        Self::KeyRing,
        Self::Settings,
        Self::LiWarrants,
        Self::LiAudit,
        Self::BsfSubscribers,
        Self::BsfSessions,
        Self::BsfSessionExpiry,
        Self::BsfPending,
        Self::BsfPendingExpiry,
        Self::VoicemailMessages,
        Self::VoicemailMeta,
        Self::VoicemailMailboxes,
        Self::Rekey,
        Self::Servers,
    ];

    /// The table's name in the backend. The BSF's names are those of its redb file before it
    /// moved onto this store, so existing BSF databases keep opening.
    pub fn name(self) -> &'static str {
        match self {
            Self::Users => "users",
            Self::Policies => "policies",
            Self::KeyRing => "key_ring",
            Self::Settings => "settings",
            Self::LiWarrants => "li_warrants",
            Self::LiAudit => "li_audit",
            Self::BsfSubscribers => "subscribers",
            Self::BsfSessions => "sessions",
            Self::BsfSessionExpiry => "session_expiry",
            Self::BsfPending => "bsf_pending",
            Self::BsfPendingExpiry => "bsf_pending_expiry",
            Self::VoicemailMessages => "vm_messages",
            Self::VoicemailMeta => "vm_meta",
            Self::VoicemailMailboxes => "vm_mailboxes",
            Self::Rekey => "rekey",
            Self::Servers => "servers",
        }
    }
}

/// One audit-log record (who did what, when). Never contains key material.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AuditEntry {
    /// Milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
    /// The authenticated actor (admin token name, KMS UID, peer KMS domain).
    pub actor: String,
    /// What was done (`policy.put`, `key.rotate`, `ticket.issue`, ...).
    pub action: String,
    /// Free text (no secrets).
    pub detail: String,
}

/// A store failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The backend could not be opened or reached.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The backend failed an operation.
    #[error("store operation failed: {0}")]
    Backend(String),
    /// Stored data is not what this version wrote.
    #[error("store data corrupt: {0}")]
    Corrupt(String),
    /// The caller passed a value no backend can store (a NUL character in a key or in an
    /// audit field: PostgreSQL `text` cannot hold one, so every backend refuses it).
    #[error("invalid input: {0}")]
    Invalid(String),
    /// A read-modify-write ([`update()`]) lost its compare-and-swap to other writers on every
    /// attempt.
    #[error("row {key:?} of table {table} changed concurrently on {attempts} attempts in a row")]
    Contention {
        /// The table's name.
        table: &'static str,
        /// The row.
        key: String,
        /// Attempts made.
        attempts: usize,
    },
}

/// Refuses what not every backend can store, so that all backends accept the same inputs:
/// a key or audit text containing NUL.
pub(crate) fn check_text(what: &str, s: &str) -> Result<(), StoreError> {
    match s.find('\0') {
        None => Ok(()),
        Some(at) => Err(StoreError::Invalid(format!("{what} contains NUL at byte {at}"))),
    }
}

/// [`check_text`] for every field of an audit entry.
pub(crate) fn check_audit(entry: &AuditEntry) -> Result<(), StoreError> {
    check_text("audit actor", &entry.actor)?;
    check_text("audit action", &entry.action)?;
    check_text("audit detail", &entry.detail)
}

/// The KMS store. Implementations are cheap to share (`Arc<dyn Store>`).
pub trait Store: Send + Sync + 'static {
    /// The value of `key` in `table`, if any.
    fn get<'a>(&'a self, table: Table, key: &'a str) -> StoreFuture<'a, Option<Vec<u8>>>;
    /// Sets `key` to `value`, durably.
    fn put<'a>(&'a self, table: Table, key: &'a str, value: &'a [u8]) -> StoreFuture<'a, ()>;
    /// Sets `key` to `value` only if `key` is absent, atomically with respect to every other
    /// writer of the store (replicas included), durably; returns the value `key` holds
    /// afterwards: `value` if it was inserted, else the one some writer put first. Used for
    /// create-once secrets (the KMS's KSAK) that every replica must end up sharing.
    fn put_if_absent<'a>(&'a self, table: Table, key: &'a str, value: &'a [u8]) -> StoreFuture<'a, Vec<u8>>;
    /// Compare-and-swap, atomic with respect to every other writer of the store (replicas
    /// included), durable: if `key` holds exactly `expected` (`None`: is absent), sets it to
    /// `new` (`None`: deletes it) and returns `true`; otherwise changes nothing and returns
    /// `false`. Read-modify-write loops (the BSF's SQN allocation) retry on `false`.
    fn compare_and_swap<'a>(
        &'a self,
        table: Table,
        key: &'a str,
        expected: Option<&'a [u8]>,
        new: Option<&'a [u8]>,
    ) -> StoreFuture<'a, bool>;
    /// Up to `limit` rows of `table` with `from <= key < to`, sorted by key.
    fn range<'a>(&'a self, table: Table, from: &'a str, to: &'a str, limit: usize) -> StoreFuture<'a, Vec<(String, Vec<u8>)>>;
    /// Up to `limit` rows of `table` with `from <= key`, sorted by key: [`Store::range`]
    /// without an upper bound, so a walk in batches sees every row whatever its key.
    fn range_from<'a>(&'a self, table: Table, from: &'a str, limit: usize) -> StoreFuture<'a, Vec<(String, Vec<u8>)>>;
    /// Removes `key`; `true` when it existed.
    fn delete<'a>(&'a self, table: Table, key: &'a str) -> StoreFuture<'a, bool>;
    /// Every row of `table`, sorted by key.
    fn list<'a>(&'a self, table: Table) -> StoreFuture<'a, Vec<(String, Vec<u8>)>>;
    /// Appends an audit entry, durably; returns its sequence number.
    fn append_audit<'a>(&'a self, entry: &'a AuditEntry) -> StoreFuture<'a, u64>;
    /// Up to `limit` audit entries with a sequence number greater than `after`, in order.
    fn audit<'a>(&'a self, after: u64, limit: usize) -> StoreFuture<'a, Vec<(u64, AuditEntry)>>;
    /// Whether one process at a time uses the store (redb locks its file): then every row of
    /// [`Table::Servers`] written by another process is of a process gone ([`servers`]).
    fn one_process(&self) -> bool {
        false
    }
}
