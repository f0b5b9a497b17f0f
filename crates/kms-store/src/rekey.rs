//! Master-key rotation: every value sealed at rest under the old master key ([`crate::sealed`])
//! is opened and sealed again under the new one, with the same AAD, in place. One
//! implementation for the KMS and the BSF; each says which tables hold sealed values and how a
//! row holds its value ([`RowCodec`]: the whole value, or a field of a JSON record).
//!
//! Why: a retiring or compromised master key must be replaceable, and one AES-GCM key with
//! random 96-bit nonces seals at most 2^32 values (NIST SP 800-38D §8.3; [`crate::sealed`]).
//!
//! A rotation ([`Rotation`]) is offline ([`Rotation::begin`]: every server using the store is
//! stopped first; redb refuses a second opener of its file; on PostgreSQL `mediasec … rekey`
//! refuses to start while other sessions use the database: [`crate::PgStore::other_sessions`])
//! or online ([`Rotation::begin_online`], PostgreSQL: the servers keep serving; they seal with
//! the new key and open with both, which the store checks: [`crate::servers`] and
//! docs/kms-store.md § Online rotation). It runs in three steps:
//! 1. [`Rotation::begin`] / [`Rotation::begin_online`] writes the rotation marker, row
//!    `<scope>` of [`Table::Rekey`] (sealed under the *new* key, so a re-run with another new
//!    key is refused), and an audit entry `master_key.rekey.begin`. From then on until step 3
//!    a server refuses to start on the store ([`check_no_rotation`]): its rows are a mix of
//!    both keys. The online marker names the old key (by fingerprint): a server sealing with
//!    the new key and opening with the old one starts; the online begin refuses while a live
//!    server does otherwise.
//! 2. [`Rotation::run`] walks every row of the given tables in key order, [`BATCH`] rows per
//!    [`Store::range_from`] call (never a whole table in memory). Per row: a value that opens
//!    under the new key is left (already done: a re-run after a crash or Ctrl-C skips it); one
//!    that opens under the old key is sealed under the new one (fresh random nonce, same
//!    AAD); a value a codec finds in the clear (rows of older BSF versions) is sealed under
//!    the new key; one that opens under neither stops the run with an error naming the row,
//!    which is not written. The write is a compare-and-swap against the bytes read, so a
//!    concurrent writer is never overwritten: on a lost swap the row is read again and
//!    decided again ([`crate::update()`]).
//! 3. [`Rotation::finish`] appends the audit entry `master_key.rekey` with the counts and
//!    deletes the marker. The caller records anything of its own (the KMS: its LI audit
//!    trail) between 2 and 3.
//!
//! The run is idempotent and resumable: interrupted anywhere, it is finished by running it
//! again with the same keys. Audit entries of the store ([`Store::append_audit`]) are not
//! sealed (they hold no secrets) and are never rewritten; an append-only trail that *is*
//! sealed (the KMS's LI audit) is re-sealed byte for byte: the plaintext is the one the old
//! key authenticated, only its encryption changes, and the KMS records the rotation in that
//! trail itself.

use std::ops::ControlFlow;

use zeroize::Zeroizing;

use crate::sealed::{MasterKey, MasterKeys, SealError, open_row, row_aad};
use crate::servers::{Liveness, forget_all, live_servers, now_ms};
use crate::update::{Step, update};
use crate::{AuditEntry, Store, StoreError, Table};

/// Rows read per [`Store::range_from`] call.
pub const BATCH: usize = 256;

/// What the marker of an offline rotation seals (under the new key, AAD `rekey:<scope>`).
const MARKER: &[u8] = b"mediasec master-key rotation in progress";

/// What the marker of an online rotation seals (under the new key, AAD `rekey:<scope>`),
/// followed by the fingerprint of the old key: servers that seal with the new key and open
/// with the old one may run meanwhile.
const ONLINE_MARKER: &[u8] = b"mediasec online master-key rotation in progress from ";

/// Why a rotation stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RekeyError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Sealing under the new key failed (the AEAD or the random generator).
    #[error("sealing under the new master key: {0}")]
    Seal(#[from] SealError),
    /// The old and the new key are the same key.
    #[error("the new master key is the old master key: nothing to rotate")]
    SameKey,
    /// A row opens under neither key; it was not written, and the run stopped there.
    #[error(
        "row {key:?} of table {table} opens under neither the old nor the new master key (sealed under another key, or a tampered or moved row): the rotation stopped there and did not write it; rows before it are sealed under the new key, rows after it not yet"
    )]
    Unopenable {
        /// The table's name.
        table: &'static str,
        /// The row.
        key: String,
    },
    /// A row is not what its codec expects.
    #[error("row {key:?} of table {table}: {reason}")]
    Corrupt {
        /// The table's name.
        table: &'static str,
        /// The row.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// An unfinished rotation to another new key is recorded.
    #[error(
        "an unfinished master-key rotation of the {scope} store to another new master key is recorded (row {scope:?} of table rekey): finish it first with `mediasec {scope} rekey` and that --new-master-key"
    )]
    OtherRotation {
        /// `kms` or `bsf`.
        scope: String,
    },
    /// A rotation was started and not finished: rows are sealed under both keys.
    #[error(
        "a master-key rotation of the {scope} store was started and not finished (row {scope:?} of table rekey): some rows are sealed under the old key, some under the new one; run `mediasec {scope} rekey --master-key OLD --new-master-key NEW` again to finish it, then start with the new key (during an online rotation a server may start with --master-key NEW --previous-master-key OLD)"
    )]
    Unfinished {
        /// `kms` or `bsf`.
        scope: String,
    },
    /// A server and a live server of the same store could not open each other's rows
    /// ([`crate::servers`]).
    #[error("refusing to serve the {scope} store: {reason}; roll the replicas through the phases of docs/kms-store.md § Online rotation (first every replica opens the new key, then every replica seals with it)")]
    Incompatible {
        /// `kms` or `bsf`.
        scope: String,
        /// Which server cannot open what.
        reason: String,
    },
    /// An online walk found live servers that would keep sealing under the old key (or could
    /// not open it) ([`Rotation::begin_online`]).
    #[error(
        "online master-key rotation of the {scope} store refused: every live server must seal with the new key ({new}) and open with the old one ({old}) first; not yet: {servers} (a server gone stops counting after the liveness timeout)"
    )]
    LiveServers {
        /// `kms` or `bsf`.
        scope: String,
        /// Fingerprint of the old key.
        old: String,
        /// Fingerprint of the new key.
        new: String,
        /// The servers in the way.
        servers: String,
    },
    /// The caller's progress function asked to stop.
    #[error("stopped on request after {rows} rows; run the rotation again to finish it")]
    Stopped {
        /// Rows decided before the stop.
        rows: u64,
    },
}

/// How a rotation checks the servers using the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Every server stopped ([`Rotation::begin`]).
    Offline,
    /// Servers running, sealing with the new key and opening with the old one
    /// ([`Rotation::begin_online`]); their rows judged live with these settings.
    Online(Liveness),
}

/// The old and the new master key.
pub struct Keys {
    old: MasterKey,
    new: MasterKey,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(..)")
    }
}

impl Keys {
    /// The pair, refused when both are the same key (a value sealed under `new` opens under
    /// `old`).
    pub fn new(old: MasterKey, new: MasterKey) -> Result<Self, RekeyError> {
        let probe = new.seal(Table::Rekey, "probe", b"probe")?;
        if old.open(Table::Rekey, "probe", &probe).is_ok() {
            return Err(RekeyError::SameKey);
        }
        Ok(Self { old, new })
    }

    /// The new key.
    pub fn new_key(&self) -> &MasterKey {
        &self.new
    }

    /// The old key.
    pub fn old_key(&self) -> &MasterKey {
        &self.old
    }

    /// Re-seals `sealed`, stored with AAD `aad` in row `key` of `table`: `None` if it already
    /// opens under the new key, else the value sealed under the new key (a fresh random nonce,
    /// the same AAD) if it opens under the old one, else [`RekeyError::Unopenable`].
    pub fn reseal(&self, table: Table, key: &str, aad: &str, sealed: &[u8]) -> Result<Option<Vec<u8>>, RekeyError> {
        if open_row(&self.new, aad, sealed).is_ok() {
            return Ok(None);
        }
        let plain = open_row(&self.old, aad, sealed).map_err(|_| RekeyError::Unopenable { table: table.name(), key: key.to_owned() })?;
        Ok(Some(self.seal_new(aad, &plain)?))
    }

    /// Seals `plain` under the new key with AAD `aad` (a value found in the clear).
    pub fn seal_new(&self, aad: &str, plain: &[u8]) -> Result<Vec<u8>, RekeyError> {
        let mut nonce = [0u8; aws_lc_rs::aead::NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| SealError::Seal)?;
        Ok(crate::sealed::seal_row(&self.new, aad, plain, nonce)?)
    }
}

/// What a codec decides for one row.
#[derive(Debug)]
pub enum RowStep {
    /// Every sealed value of the row already opens under the new key: leave it.
    AlreadyNew,
    /// Write this value, which re-seals (or seals) what the row held as [`Change`] says.
    Write(Zeroizing<Vec<u8>>, Change),
}

/// What a written row was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Sealed under the old key, now under the new.
    Resealed,
    /// In the clear, now sealed under the new key.
    Sealed,
}

/// How the rows of a table hold their sealed value.
pub trait RowCodec: Send + Sync {
    /// Decides for row `key` of `table` holding `value`, re-sealing with `keys`
    /// ([`Keys::reseal`], [`Keys::seal_new`]). Must not change anything but the sealing.
    fn step(&self, keys: &Keys, table: Table, key: &str, value: &[u8]) -> Result<RowStep, RekeyError>;
}

/// The AAD a table's values are sealed with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Aad {
    /// `<table>:<row key>` ([`MasterKey::seal`]): every table but the KMS's key ring.
    TableRow,
    /// The row key alone: the KMS's ticket-key ring, sealed so since its first version.
    Row,
}

/// Rows whose whole value is one sealed value (`nonce ‖ ciphertext ‖ tag`).
#[derive(Clone, Copy, Debug)]
pub struct WholeValue(pub Aad);

impl RowCodec for WholeValue {
    fn step(&self, keys: &Keys, table: Table, key: &str, value: &[u8]) -> Result<RowStep, RekeyError> {
        let aad = match self.0 {
            Aad::TableRow => row_aad(table, key),
            Aad::Row => key.to_owned(),
        };
        Ok(match keys.reseal(table, key, &aad, value)? {
            None => RowStep::AlreadyNew,
            Some(v) => RowStep::Write(Zeroizing::new(v), Change::Resealed),
        })
    }
}

/// A table to re-seal and how its rows hold their sealed values.
#[derive(Clone, Copy)]
pub struct SealedTable<'a> {
    /// The table.
    pub table: Table,
    /// Its rows' layout.
    pub codec: &'a dyn RowCodec,
}

/// Counts of one table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Sealed under the old key, now under the new.
    pub resealed: u64,
    /// Already under the new key (an earlier, interrupted run did them).
    pub already_new: u64,
    /// In the clear (older versions), now sealed under the new key.
    pub sealed_from_clear: u64,
    /// Deleted by another writer between the read and the write.
    pub gone: u64,
}

impl Counts {
    /// Rows seen.
    pub fn rows(&self) -> u64 {
        self.resealed + self.already_new + self.sealed_from_clear + self.gone
    }

    fn add(&mut self, o: Outcome) {
        match o {
            Outcome::Changed(Change::Resealed) => self.resealed += 1,
            Outcome::Changed(Change::Sealed) => self.sealed_from_clear += 1,
            Outcome::AlreadyNew => self.already_new += 1,
            Outcome::Gone => self.gone += 1,
        }
    }
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} re-sealed, {} already under the new key, {} sealed from clear", self.resealed, self.already_new, self.sealed_from_clear)?;
        if self.gone > 0 {
            write!(f, ", {} deleted meanwhile", self.gone)?;
        }
        Ok(())
    }
}

/// Counts per table, in the order walked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// (table name, its counts).
    pub tables: Vec<(&'static str, Counts)>,
}

impl Report {
    /// The sum over every table.
    pub fn total(&self) -> Counts {
        self.tables.iter().fold(Counts::default(), |mut t, (_, c)| {
            t.resealed += c.resealed;
            t.already_new += c.already_new;
            t.sealed_from_clear += c.sealed_from_clear;
            t.gone += c.gone;
            t
        })
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = self.total();
        write!(f, "{} rows in {} tables: {t}", t.rows(), self.tables.len())
    }
}

/// Where a run is, for progress output: after each row, and once more at the end of each
/// table (`table_done`).
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    /// The table being walked.
    pub table: Table,
    /// Its counts so far.
    pub counts: Counts,
    /// The table is finished.
    pub table_done: bool,
}

/// One row's result.
#[derive(Clone, Copy, Debug)]
enum Outcome {
    Changed(Change),
    AlreadyNew,
    Gone,
}

/// A rotation of the sealed rows of one service (`scope`: `kms` or `bsf`) of a store.
pub struct Rotation<'s> {
    store: &'s dyn Store,
    scope: String,
    keys: Keys,
    actor: String,
}

impl std::fmt::Debug for Rotation<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rotation").field("scope", &self.scope).finish_non_exhaustive()
    }
}

/// Refuses a store whose rotation of `scope` is unfinished ([`RekeyError::Unfinished`]): what
/// a server holding `keys` checks before serving, since its rows are then sealed under two
/// keys. The one exception is an online rotation ([`Rotation::begin_online`]) to the key this
/// server seals with, from a key it also opens with: such a server reads every row of the
/// walk, before and after, and seals nothing the walk would miss.
pub async fn check_no_rotation(store: &dyn Store, scope: &str, keys: &MasterKeys) -> Result<(), RekeyError> {
    let Some(marker) = store.get(Table::Rekey, scope).await? else { return Ok(()) };
    let online_from = keys.sealing().open(Table::Rekey, scope, &marker).ok().and_then(|m| m.strip_prefix(ONLINE_MARKER).map(<[u8]>::to_vec));
    match online_from {
        Some(old) if std::str::from_utf8(&old).is_ok_and(|fp| keys.opens(fp)) => {
            tracing::info!(scope, "an online master-key rotation to this server's sealing key is in progress: serving through it");
            Ok(())
        }
        _ => Err(RekeyError::Unfinished { scope: scope.to_owned() }),
    }
}

impl<'s> Rotation<'s> {
    /// Starts (or resumes) the offline rotation of `scope` on `store`: records the marker
    /// (sealed under the new key), deletes the rows of the servers of `scope` (all stopped:
    /// rows left by crashes, [`crate::servers::forget_all`]) and appends the audit entry
    /// `master_key.rekey.begin` by `actor`. A marker
    /// left by an unfinished run with the same new key is resumed; one with another new key
    /// is refused ([`RekeyError::OtherRotation`]).
    pub async fn begin(store: &'s dyn Store, scope: &str, keys: Keys, actor: &str) -> Result<Self, RekeyError> {
        let (_, resumed) = Self::mark(store, scope, &keys, MARKER).await?;
        // Every server is stopped: their rows are left by crashes ([`crate::servers`]).
        let forgotten = forget_all(store, scope).await?;
        if forgotten > 0 {
            tracing::info!(scope, forgotten, "removed the rows of servers gone (the rotation is offline)");
        }
        Self::begun(store, scope, keys, actor, if resumed { "resuming an unfinished rotation" } else { "started" }).await
    }

    /// [`Rotation::begin`] or [`Rotation::begin_online`], as `mode` says.
    pub async fn start(store: &'s dyn Store, scope: &str, keys: Keys, actor: &str, mode: Mode) -> Result<Self, RekeyError> {
        match mode {
            Mode::Offline => Self::begin(store, scope, keys, actor).await,
            Mode::Online(liveness) => Self::begin_online(store, scope, keys, actor, &liveness).await,
        }
    }

    /// Starts (or resumes) an online rotation of `scope` while servers run (docs/kms-store.md
    /// § Online rotation; [`crate::servers`]): writes the online marker first (servers that
    /// seal with the new key and open with the old one may start meanwhile, no other), then
    /// reads the servers' rows, and refuses ([`RekeyError::LiveServers`]) while a live server
    /// seals with anything but the new key or cannot open the old one; a marker this call
    /// wrote is then deleted again. Rows of servers gone (not refreshed within
    /// `liveness.stale_after`) are deleted and do not count. Then as [`Rotation::begin`]; the
    /// walk ([`Rotation::run`]) re-reads and re-decides a row a server changed meanwhile.
    pub async fn begin_online(store: &'s dyn Store, scope: &str, keys: Keys, actor: &str, liveness: &Liveness) -> Result<Self, RekeyError> {
        let (old, new) = (keys.old.fingerprint(), keys.new.fingerprint());
        let mut text = ONLINE_MARKER.to_vec();
        text.extend_from_slice(old.as_bytes());
        let (marker, resumed) = Self::mark(store, scope, &keys, &text).await?;
        let blocking: Vec<String> = live_servers(store, scope, liveness)
            .await?
            .into_iter()
            .filter(|(_, r)| r.seals != new || !r.opens.contains(&old))
            .map(|(_, r)| r.to_string())
            .collect();
        if !blocking.is_empty() {
            if !resumed {
                store.compare_and_swap(Table::Rekey, scope, Some(&marker), None).await?;
            }
            return Err(RekeyError::LiveServers { scope: scope.to_owned(), old, new, servers: blocking.join("; ") });
        }
        Self::begun(store, scope, keys, actor, if resumed { "online, resuming an unfinished rotation" } else { "online, started" }).await
    }

    /// Writes the marker sealing `text` under the new key unless one is there: returns the
    /// marker held and whether it was there already (a rotation resumed), refusing one that
    /// does not open under the new key ([`RekeyError::OtherRotation`]).
    async fn mark(store: &dyn Store, scope: &str, keys: &Keys, text: &[u8]) -> Result<(Vec<u8>, bool), RekeyError> {
        let marker = keys.new.seal(Table::Rekey, scope, text)?;
        let held = store.put_if_absent(Table::Rekey, scope, &marker).await?;
        let resumed = held != marker;
        if resumed && keys.new.open(Table::Rekey, scope, &held).is_err() {
            return Err(RekeyError::OtherRotation { scope: scope.to_owned() });
        }
        Ok((held, resumed))
    }

    /// The audit entry `master_key.rekey.begin` and the rotation.
    async fn begun(store: &'s dyn Store, scope: &str, keys: Keys, actor: &str, detail: &str) -> Result<Self, RekeyError> {
        store.append_audit(&AuditEntry { at_unix_ms: now_ms(), actor: actor.into(), action: "master_key.rekey.begin".into(), detail: format!("{scope}: {detail}") }).await?;
        tracing::info!(scope, detail, "master-key rotation begun");
        Ok(Self { store, scope: scope.to_owned(), keys, actor: actor.to_owned() })
    }

    /// The keys.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Re-seals every row of `tables` (see the module documentation), calling `progress`
    /// after each row and at the end of each table; [`ControlFlow::Break`] stops the run
    /// ([`RekeyError::Stopped`]), which a later run finishes.
    pub async fn run(&self, tables: &[SealedTable<'_>], progress: &mut (dyn FnMut(&Progress) -> ControlFlow<()> + Send)) -> Result<Report, RekeyError> {
        let mut report = Report::default();
        let mut rows = 0u64;
        for t in tables {
            let mut counts = Counts::default();
            let mut from = String::new();
            loop {
                let batch = self.store.range_from(t.table, &from, BATCH).await?;
                let full = batch.len() == BATCH;
                let mut last = None;
                for (key, value) in batch {
                    let value = Zeroizing::new(value);
                    counts.add(self.row(t, &key, &value).await?);
                    rows += 1;
                    if progress(&Progress { table: t.table, counts, table_done: false }).is_break() {
                        tracing::warn!(scope = %self.scope, table = t.table.name(), rows, "master-key rotation stopped on request");
                        return Err(RekeyError::Stopped { rows });
                    }
                    last = Some(key);
                }
                // Keys hold no NUL (every backend refuses it), so the smallest key after `k`
                // is `k` followed by U+0001.
                match last {
                    Some(k) if full => from = format!("{k}\u{1}"),
                    _ => break,
                }
            }
            // The end of a table is reported, not a stopping point: stopping is checked per row.
            let _ = progress(&Progress { table: t.table, counts, table_done: true });
            report.tables.push((t.table.name(), counts));
        }
        Ok(report)
    }

    /// One row: decided from the bytes read, written by compare-and-swap against them; on a
    /// lost swap (a concurrent writer) read again and decided again.
    async fn row(&self, t: &SealedTable<'_>, key: &str, value: &[u8]) -> Result<Outcome, RekeyError> {
        match t.codec.step(&self.keys, t.table, key, value)? {
            RowStep::AlreadyNew => return Ok(Outcome::AlreadyNew),
            RowStep::Write(new, change) => {
                if self.store.compare_and_swap(t.table, key, Some(value), Some(&new)).await? {
                    return Ok(Outcome::Changed(change));
                }
            }
        }
        update(self.store, t.table, key, |held| {
            let Some(v) = held else { return Ok::<_, RekeyError>(Step::Keep(Outcome::Gone)) };
            Ok(match t.codec.step(&self.keys, t.table, key, v)? {
                RowStep::AlreadyNew => Step::Keep(Outcome::AlreadyNew),
                RowStep::Write(new, change) => Step::Write(Some(new), Outcome::Changed(change)),
            })
        })
        .await
    }

    /// Ends the rotation: the audit entry `master_key.rekey` with the counts of `report`,
    /// then the marker deleted (servers start again, on the new key).
    pub async fn finish(self, report: &Report) -> Result<(), RekeyError> {
        let detail = format!("{}: {report}", self.scope);
        self.store.append_audit(&AuditEntry { at_unix_ms: now_ms(), actor: self.actor.clone(), action: "master_key.rekey".into(), detail }).await?;
        self.store.delete(Table::Rekey, &self.scope).await?;
        tracing::info!(scope = %self.scope, %report, "master-key rotation finished");
        Ok(())
    }
}
