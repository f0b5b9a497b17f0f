//! The subscriber store and the bootstrapping sessions, on the store of `mediasec-kms-store`:
//! an embedded redb file (the default; the file layout of earlier versions, so existing
//! databases keep opening) or PostgreSQL, shared by several BSF replicas. See docs/gba.md
//! § Storage.
//!
//! Rows (tables of [`Table`], JSON values):
//! - `subscribers`: IMPI → the [`Subscriber`] without K and OPc/OP, plus `secrets` (K and
//!   OPc/OP sealed) and `rev`, a write counter;
//! - `sessions`: B-TID → the session (`ks_sealed`: Ks sealed; RAND, IMPI, times, GBA_U flag);
//! - `session_expiry`: `<expiry, 20 digits>/<B-TID>` → empty, the index [`Store::purge_expired`]
//!   scans;
//! - `bsf_pending`: Digest nonce → the challenge in flight (XRES, CK, IK, RAND, SQN, IMPI,
//!   opaque, time), the whole value sealed, so the answer may reach any replica;
//!   [`Store::take_pending`] deletes it by compare-and-swap, so of all replicas exactly one
//!   gets it and a nonce is answered once;
//! - `bsf_pending_expiry`: `<expiry, 20 digits>/<nonce>` → empty, the index the purge of
//!   unanswered challenges scans.
//!
//! SQN allocation (TS 33.102 §6.3.2 and Annex C: SQN_HE only grows, a reused SQN is a
//! replayed challenge) is a compare-and-swap read-modify-write ([`mediasec_kms_store::update()`]):
//! read the record, set the new SQN and `rev + 1`, swap only if the stored bytes are still
//! those read, else re-read and retry (at most [`mediasec_kms_store::UPDATE_ATTEMPTS`] times,
//! then [`mediasec_kms_store::StoreError::Contention`]). The
//! store's swap is atomic across every process sharing it (redb: one write transaction;
//! PostgreSQL: one `UPDATE … WHERE value = expected`), so two replicas never both succeed
//! from the same record, and `rev` makes every written record distinct, so a resync that
//! moves SQN_HE back to an earlier value cannot make a stale swap succeed (no ABA). The swap
//! is committed durably *before* the challenge that uses the SQN is built and sent, so a
//! kill -9 at any point can only skip SQNs, never reuse or lower one.
//!
//! Secrets (K, OPc/OP, Ks) are sealed at rest under the BSF master key, as the KMS seals its
//! key ring ([`mediasec_kms_store::sealed`]: AES-256-GCM, random nonce, AAD `<table>:<row
//! key>`, so a sealed value copied into another row does not open), hex in the JSON. The other
//! fields stay readable (the purge reads the expiry, an operator the SQN) and are not secret:
//! RAND travels in the clear on Ub. Rows written in the clear by earlier versions (`k`,
//! `opc`/`op`, `ks` in hex) are read as they are; a subscriber row is sealed on its next write
//! (the next challenge's SQN update), a session is never rewritten and stays as it is until it
//! expires and is purged; `mediasec bsf rekey` ([`crate::rekey`]) seals both kinds under a
//! new master key. A wrong master key is [`BsfError::Sealed`] naming the row, never
//! garbage keys: the tag does not verify.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use mediasec_gba::bsf::{BootstrapSession, PendingChallenge, SubscriberAuth};
use mediasec_gba::milenage::{Milenage, SQN_MAX, Sqn};
use mediasec_gba::uicc::UiccType;
use mediasec_kms_store::sealed::MasterKeys;
use mediasec_kms_store::{RedbStore, Step, Store as Kv, Table, update};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use crate::BsfError;

/// Environment variable holding the BSF master key (64 hex digits) when `--master-key` is not
/// given.
pub const MASTER_KEY_ENV: &str = "MEDIASEC_BSF_MASTER_KEY";

/// A subscriber record (what an HSS would hold for GBA: TS 33.220 §4.4.2, Zh).
#[derive(Clone, Serialize, Deserialize)]
pub struct Subscriber {
    /// IMPI.
    pub impi: String,
    /// K, 32 hex digits.
    pub k: String,
    /// OPc, 32 hex digits (exactly one of `opc`/`op`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opc: Option<String>,
    /// OP, 32 hex digits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op: Option<String>,
    /// AMF, 4 hex digits (default 8000: separation bit 0 for non-EPS use).
    #[serde(default = "default_amf")]
    pub amf: String,
    /// Highest SQN used by the HE (SQN_HE).
    #[serde(default)]
    pub sqn: Sqn,
    /// The user's IMPUs, returned on Zn.
    #[serde(default)]
    pub impus: Vec<String>,
    /// GBA User Security Settings (JSON, returned to NAFs as is). The BSF itself reads only
    /// `bsfInfo.uiccType` (`"GBA"` default, or `"GBA_U"`): see [`Subscriber::uicc_type`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guss: Option<serde_json::Value>,
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.k.zeroize();
        self.opc.zeroize();
        self.op.zeroize();
    }
}

fn default_amf() -> String {
    "8000".into()
}

fn hex16(what: &str, s: &str) -> Result<Zeroizing<[u8; 16]>, BsfError> {
    let v = Zeroizing::new(hex::decode(s).map_err(|_| BsfError::InvalidSubscriber(format!("{what} is not hex")))?);
    let mut out = Zeroizing::new([0u8; 16]);
    if v.len() != 16 {
        return Err(BsfError::InvalidSubscriber(format!("{what} must be 16 octets")));
    }
    out.copy_from_slice(&v);
    Ok(out)
}

impl Subscriber {
    /// A MILENAGE subscriber with this K and OPc, the default AMF (8000), SQN_HE 0 and no
    /// GUSS (GBA_ME).
    pub fn with_opc(impi: impl Into<String>, k: &[u8; 16], opc: &[u8; 16], impus: Vec<String>) -> Self {
        Self { impi: impi.into(), k: hex::encode(k), opc: Some(hex::encode(opc)), op: None, amf: default_amf(), sqn: 0, impus, guss: None }
    }

    /// Check the record and build its MILENAGE instance.
    pub fn auth(&self) -> Result<SubscriberAuth, BsfError> {
        if self.impi.is_empty() || self.impi.len() > 255 {
            return Err(BsfError::InvalidSubscriber("IMPI must be 1..255 octets".into()));
        }
        let k = hex16("K", &self.k)?;
        let milenage = match (&self.opc, &self.op) {
            (Some(opc), None) => Milenage::with_opc(&k, &*hex16("OPc", opc)?),
            (None, Some(op)) => Milenage::with_op(&k, &*hex16("OP", op)?),
            _ => return Err(BsfError::InvalidSubscriber("give exactly one of OPc and OP".into())),
        };
        let amf = hex::decode(&self.amf)
            .ok()
            .and_then(|v| <[u8; 2]>::try_from(v).ok())
            .ok_or_else(|| BsfError::InvalidSubscriber("AMF must be 4 hex digits".into()))?;
        if self.sqn > SQN_MAX {
            return Err(BsfError::InvalidSubscriber("SQN exceeds 48 bits".into()));
        }
        self.uicc_type()?;
        Ok(SubscriberAuth { milenage, amf })
    }

    /// The UICC type from the GUSS (TS 33.220 §5.1: the BSF takes the UICC capabilities from
    /// the GBA user security settings and runs GBA_U or GBA_ME accordingly): `bsfInfo.uiccType`,
    /// as in the GUSS BsfInfo; absent means GBA (GBA_ME).
    pub fn uicc_type(&self) -> Result<UiccType, BsfError> {
        match self.guss.as_ref().and_then(|g| g.get("bsfInfo")).and_then(|b| b.get("uiccType")) {
            None => Ok(UiccType::Gba),
            Some(v) => v
                .as_str()
                .and_then(UiccType::parse)
                .ok_or_else(|| BsfError::InvalidSubscriber("guss.bsfInfo.uiccType must be \"GBA\" or \"GBA_U\"".into())),
        }
    }

    /// The record without secrets (for listing).
    pub fn public_view(&self) -> serde_json::Value {
        serde_json::json!({ "impi": self.impi, "amf": self.amf, "sqn": self.sqn, "impus": self.impus, "guss": self.guss })
    }
}

/// A stored bootstrap session.
#[derive(Serialize, Deserialize)]
pub(crate) struct SessionRecord {
    /// Ks sealed ([`MasterKeys::seal`], row `sessions:<B-TID>`), hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) ks_sealed: Option<String>,
    /// Ks in the clear, hex: sessions written by earlier versions (read, never written).
    #[serde(default, skip_serializing)]
    pub(crate) ks: Option<String>,
    rand: String,
    impi: String,
    bootstrap_time: u64,
    expiry: u64,
    /// A GBA_U session (absent in records of GBA_ME sessions).
    #[serde(default, skip_serializing_if = "core::ops::Not::not")]
    gba_u: bool,
}

impl Drop for SessionRecord {
    fn drop(&mut self) {
        self.ks.zeroize();
    }
}

/// A stored subscriber row: the record without K and OPc/OP, its sealed secrets and its
/// write counter.
#[derive(Serialize, Deserialize)]
pub(crate) struct SubscriberRow {
    impi: String,
    #[serde(default = "default_amf")]
    amf: String,
    #[serde(default)]
    sqn: Sqn,
    #[serde(default)]
    impus: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    guss: Option<serde_json::Value>,
    /// Write counter (0 in rows written before it existed).
    #[serde(default)]
    pub(crate) rev: u64,
    /// [`Secrets`] sealed ([`MasterKeys::seal`], row `subscribers:<IMPI>`), hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) secrets: Option<String>,
    /// K in the clear, hex: rows written by earlier versions (read, never written).
    #[serde(default, skip_serializing)]
    pub(crate) k: Option<String>,
    /// OPc in the clear (earlier versions).
    #[serde(default, skip_serializing)]
    pub(crate) opc: Option<String>,
    /// OP in the clear (earlier versions).
    #[serde(default, skip_serializing)]
    pub(crate) op: Option<String>,
}

impl Drop for SubscriberRow {
    fn drop(&mut self) {
        self.k.zeroize();
        self.opc.zeroize();
        self.op.zeroize();
    }
}

/// What a subscriber row seals: K and OPc/OP (hex, as in [`Subscriber`]).
#[derive(Serialize, Deserialize, zeroize::ZeroizeOnDrop)]
pub(crate) struct Secrets {
    pub(crate) k: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) opc: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) op: Option<String>,
}

/// A challenge in flight as stored (sealed as a whole): [`PendingChallenge`] in hex and its
/// expiry.
#[derive(Serialize, Deserialize, zeroize::ZeroizeOnDrop)]
struct PendingRow {
    impi: String,
    opaque: String,
    rand: String,
    xres: String,
    ck: String,
    ik: String,
    sqn: Sqn,
    issued_at: u64,
    /// The first second at which the nonce is stale (purged from then on).
    expiry: u64,
    gba_u: bool,
}

/// Longest nonce looked up in the store: ours are base64 of RAND ‖ AUTN (44 characters); a
/// longer one from a client is unknown without a store call.
const MAX_NONCE_LEN: usize = 128;

/// Subscriber rows [`Store::check_master_key`] looks at for a sealed one.
const KEY_CHECK_ROWS: usize = 16;

/// Expired sessions deleted per scan of the expiry index.
const PURGE_BATCH: usize = 256;

/// What an expiry index points at ([`Store::purge_index`]).
#[derive(Clone, Copy)]
enum Expiring {
    /// Bootstrap sessions (`session_expiry` → `sessions`).
    Sessions,
    /// Challenges in flight (`bsf_pending_expiry` → `bsf_pending`).
    Challenges,
}

impl Expiring {
    fn index(self) -> Table {
        match self {
            Self::Sessions => Table::BsfSessionExpiry,
            Self::Challenges => Table::BsfPendingExpiry,
        }
    }
}

/// Challenges in flight kept in memory: nonce → (challenge, expiry).
type LocalChallenges = HashMap<String, (PendingChallenge, u64)>;

/// The store (cheap to clone: it shares the backend, the master key and the challenges kept
/// in memory).
#[derive(Clone)]
pub struct Store {
    kv: Arc<dyn Kv>,
    master: Arc<MasterKeys>,
    /// Challenges in flight kept in this process instead of the store
    /// ([`Store::challenges_in_memory`]): nonce → (challenge, expiry). Each use is one
    /// insert, remove or retain, so the map is whole even after a panic elsewhere poisoned
    /// the lock, and a poisoned lock is used as it is.
    local_pending: Option<Arc<Mutex<LocalChallenges>>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

fn decode<T: for<'de> Deserialize<'de>>(key: &str, v: &[u8]) -> Result<T, BsfError> {
    serde_json::from_slice(v).map_err(|e| BsfError::Corrupt { key: key.to_owned(), reason: e.to_string() })
}

fn encode<T: Serialize>(key: &str, v: &T) -> Result<Zeroizing<Vec<u8>>, BsfError> {
    serde_json::to_vec(v).map(Zeroizing::new).map_err(|e| BsfError::Corrupt { key: key.to_owned(), reason: e.to_string() })
}

/// `N` octets from hex, if it is exactly that.
fn octets<const N: usize>(h: &str) -> Option<[u8; N]> {
    hex::decode(h).ok().and_then(|v| <[u8; N]>::try_from(v).ok())
}

fn expiry_key(expiry: u64, btid: &str) -> String {
    format!("{expiry:020}/{btid}")
}

impl Store {
    /// The BSF store on a backend (redb, or PostgreSQL shared by replicas); secrets sealed
    /// under `master`.
    pub fn new(kv: Arc<dyn Kv>, master: impl Into<MasterKeys>) -> Self {
        Self { kv, master: Arc::new(master.into()), local_pending: None }
    }

    /// The backend.
    pub fn kv(&self) -> &Arc<dyn Kv> {
        &self.kv
    }

    /// The master keys (the sealing one, and those values are also opened with).
    pub fn keys(&self) -> &MasterKeys {
        &self.master
    }

    /// The same store, with the challenges in flight kept in this process's memory instead
    /// of the store: for an embedded store, which one process holds (redb locks its file), so
    /// no other replica could take them. It saves each bootstrap the three durable writes of
    /// a stored challenge (put, index, take); a challenge outstanding across a restart is then
    /// lost (the UE's answer gets a fresh challenge with `stale=TRUE`). Replicas sharing
    /// PostgreSQL keep them in the store, so either request of a Ub run may reach any replica.
    #[must_use]
    pub fn challenges_in_memory(self) -> Self {
        Self { local_pending: Some(Arc::default()), ..self }
    }

    /// Opens or creates the embedded database file (blocking: call it before serving), with
    /// the challenges in flight in memory ([`Store::challenges_in_memory`]).
    pub fn open(path: &std::path::Path, master: impl Into<MasterKeys>) -> Result<Self, BsfError> {
        Ok(Self::new(Arc::new(RedbStore::open(path)?), master).challenges_in_memory())
    }

    /// Connects to PostgreSQL (`postgres://…`) and creates the schema if missing.
    pub async fn connect(url: &str, master: impl Into<MasterKeys>) -> Result<Self, BsfError> {
        Ok(Self::new(Arc::new(mediasec_kms_store::PgStore::connect(url).await?), master))
    }

    /// Seals `plain` for row `key` of `table`, hex.
    fn seal(&self, table: Table, key: &str, plain: &[u8]) -> Result<String, BsfError> {
        Ok(hex::encode(self.master.seal(table, key, plain)?))
    }

    /// Opens what [`Store::seal`] stored in row `key` of `table`.
    fn open_sealed(&self, table: Table, key: &str, sealed: &str) -> Result<Zeroizing<Vec<u8>>, BsfError> {
        let sealed = hex::decode(sealed).map_err(|_| BsfError::Corrupt { key: key.to_owned(), reason: "sealed value is not hex".into() })?;
        self.open_raw(table, key, &sealed)
    }

    /// Opens a value sealed for row `key` of `table` under any of the master keys
    /// ([`MasterKeys::open`]: the sealing key, then the previous ones).
    fn open_raw(&self, table: Table, key: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, BsfError> {
        self.master.open(table, key, sealed).map_err(|e| BsfError::Sealed { key: key.to_owned(), reason: e.to_string() })
    }

    /// The stored row of `s` with `secrets` (sealed) and write counter `rev`.
    fn row_of(s: &Subscriber, secrets: String, rev: u64) -> SubscriberRow {
        SubscriberRow {
            impi: s.impi.clone(),
            amf: s.amf.clone(),
            sqn: s.sqn,
            impus: s.impus.clone(),
            guss: s.guss.clone(),
            rev,
            secrets: Some(secrets),
            k: None,
            opc: None,
            op: None,
        }
    }

    /// Seals the K and OPc/OP of `s` for its row `key`.
    fn seal_secrets(&self, key: &str, s: &Subscriber) -> Result<String, BsfError> {
        let plain = encode(key, &Secrets { k: s.k.clone(), opc: s.opc.clone(), op: s.op.clone() })?;
        self.seal(Table::BsfSubscribers, key, &plain)
    }

    /// The subscriber of row `key` (its secrets opened, or read in the clear from a row of an
    /// earlier version).
    fn subscriber_of(&self, key: &str, row: &SubscriberRow) -> Result<Subscriber, BsfError> {
        let secrets = match &row.secrets {
            Some(sealed) => decode::<Secrets>(key, &self.open_sealed(Table::BsfSubscribers, key, sealed)?)?,
            None => Secrets {
                k: row.k.clone().ok_or_else(|| BsfError::Corrupt { key: key.to_owned(), reason: "neither secrets nor k".into() })?,
                opc: row.opc.clone(),
                op: row.op.clone(),
            },
        };
        Ok(Subscriber {
            impi: row.impi.clone(),
            k: secrets.k.clone(),
            opc: secrets.opc.clone(),
            op: secrets.op.clone(),
            amf: row.amf.clone(),
            sqn: row.sqn,
            impus: row.impus.clone(),
            guss: row.guss.clone(),
        })
    }

    /// Checks that the store is not in the middle of a master-key rotation
    /// ([`crate::rekey`]: its rows would be sealed under two keys) and that the master key
    /// opens it: opens the secrets of the first sealed
    /// subscriber row among the first [`KEY_CHECK_ROWS`] (rows of earlier versions are in the
    /// clear and skipped). `Ok` also when there is none to try (a new or unsealed store). A
    /// server runs it before serving, so a wrong `--master-key` stops it at start, as it stops
    /// the KMS, rather than failing every request.
    pub async fn check_master_key(&self) -> Result<(), BsfError> {
        crate::rekey::check_not_rotating(&*self.kv, &self.master).await?;
        let end = char::MAX.to_string();
        for (key, v) in self.kv.range(Table::BsfSubscribers, "", &end, KEY_CHECK_ROWS).await? {
            let row: SubscriberRow = decode(&key, &Zeroizing::new(v))?;
            if row.secrets.is_some() {
                return self.subscriber_of(&key, &row).map(drop);
            }
        }
        Ok(())
    }

    /// Add a subscriber (error if present), atomically.
    pub async fn add_subscriber(&self, s: &Subscriber) -> Result<(), BsfError> {
        s.auth()?;
        let row = encode(&s.impi, &Self::row_of(s, self.seal_secrets(&s.impi, s)?, 0))?;
        if !self.kv.compare_and_swap(Table::BsfSubscribers, &s.impi, None, Some(&row)).await? {
            return Err(BsfError::Subscriber(s.impi.clone(), "already exists"));
        }
        Ok(())
    }

    /// Remove a subscriber; `false` if absent.
    pub async fn remove_subscriber(&self, impi: &str) -> Result<bool, BsfError> {
        Ok(self.kv.delete(Table::BsfSubscribers, impi).await?)
    }

    /// One subscriber.
    pub async fn subscriber(&self, impi: &str) -> Result<Option<Subscriber>, BsfError> {
        let raw = self.kv.get(Table::BsfSubscribers, impi).await?.map(Zeroizing::new);
        raw.map(|v| self.subscriber_of(impi, &decode(impi, &v)?)).transpose()
    }

    /// All subscribers (every row's secrets opened: a wrong master key fails here).
    pub async fn subscribers(&self) -> Result<Vec<Subscriber>, BsfError> {
        let rows = self.kv.list(Table::BsfSubscribers).await?;
        rows.into_iter().map(|(k, v)| self.subscriber_of(&k, &decode(&k, &Zeroizing::new(v))?)).collect()
    }

    /// Allocate the next SQN for `impi` and commit it durably; returns the record (with the
    /// new SQN) or `None` for an unknown IMPI. Atomic across replicas.
    pub async fn next_sqn(&self, impi: &str) -> Result<Option<Subscriber>, BsfError> {
        self.update_sqn(impi, |old| old.checked_add(1).filter(|s| *s <= SQN_MAX)).await
    }

    /// After a verified AUTS: SQN_HE := SQN_MS (TS 33.102 §6.3.5), so the next challenge uses
    /// SQN_MS + 1. This is the one case where the spec lets SQN_HE move down.
    pub async fn resync_sqn(&self, impi: &str, sqn_ms: Sqn) -> Result<Option<Subscriber>, BsfError> {
        self.update_sqn(impi, |_| Some(sqn_ms)).await
    }

    /// The compare-and-swap read-modify-write of the module documentation
    /// ([`mediasec_kms_store::update()`]).
    async fn update_sqn(&self, impi: &str, f: impl Fn(Sqn) -> Option<Sqn> + Send) -> Result<Option<Subscriber>, BsfError> {
        update(&*self.kv, Table::BsfSubscribers, impi, |held| {
            let Some(raw) = held else { return Ok(Step::Keep(None)) };
            let row: SubscriberRow = decode(impi, raw)?;
            let mut s = self.subscriber_of(impi, &row)?;
            s.sqn = f(s.sqn).ok_or(BsfError::Subscriber(impi.to_owned(), "SQN space exhausted"))?;
            let rev = row.rev.checked_add(1).ok_or(BsfError::Subscriber(impi.to_owned(), "write counter exhausted"))?;
            // The sealed secrets are carried over as they are (no seal per challenge); a row of
            // an earlier version, in the clear, is sealed now.
            let secrets = match &row.secrets {
                Some(sealed) => sealed.clone(),
                None => self.seal_secrets(impi, &s)?,
            };
            let new = encode(impi, &Self::row_of(&s, secrets, rev))?;
            Ok(Step::Write(Some(new), Some(s)))
        })
        .await
    }

    /// Store a new bootstrap session under its B-TID (a newer run replaces an older one with
    /// the same B-TID, TS 33.220 §4.5.2). The expiry index row is written first, so every
    /// stored session has one and [`Store::purge_expired`] finds it.
    pub async fn put_session(&self, s: &BootstrapSession) -> Result<(), BsfError> {
        let rec = SessionRecord {
            ks_sealed: Some(self.seal(Table::BsfSessions, &s.btid, &s.ks)?),
            ks: None,
            rand: hex::encode(s.rand),
            impi: s.impi.clone(),
            bootstrap_time: s.bootstrap_time,
            expiry: s.expiry,
            gba_u: s.uicc == UiccType::GbaU,
        };
        let bytes = encode(&s.btid, &rec)?;
        self.kv.put(Table::BsfSessionExpiry, &expiry_key(s.expiry, &s.btid), b"").await?;
        self.kv.put(Table::BsfSessions, &s.btid, &bytes).await?;
        Ok(())
    }

    /// Look up a session valid at `now` (by any replica); an expired one is deleted
    /// (TS 24.109 §4.2) and not returned.
    pub async fn session(&self, btid: &str, now: u64) -> Result<Option<BootstrapSession>, BsfError> {
        let Some(raw) = self.kv.get(Table::BsfSessions, btid).await?.map(Zeroizing::new) else { return Ok(None) };
        let rec: SessionRecord = decode(btid, &raw)?;
        if now >= rec.expiry {
            self.delete_session(btid, &raw, rec.expiry).await?;
            return Ok(None);
        }
        let corrupt = |r: &str| BsfError::Corrupt { key: btid.to_owned(), reason: r.to_owned() };
        let ks = match (&rec.ks_sealed, &rec.ks) {
            (Some(sealed), _) => self.open_sealed(Table::BsfSessions, btid, sealed)?,
            (None, Some(clear)) => Zeroizing::new(hex::decode(clear).map_err(|_| corrupt("ks"))?),
            (None, None) => return Err(corrupt("neither ks_sealed nor ks")),
        };
        let ks = <[u8; 32]>::try_from(ks.as_slice()).map_err(|_| corrupt("ks"))?;
        let rand = hex::decode(&rec.rand).ok().and_then(|v| <[u8; 16]>::try_from(v).ok()).ok_or_else(|| corrupt("rand"))?;
        Ok(Some(BootstrapSession {
            btid: btid.to_owned(),
            ks,
            rand,
            impi: rec.impi.clone(),
            bootstrap_time: rec.bootstrap_time,
            expiry: rec.expiry,
            uicc: if rec.gba_u { UiccType::GbaU } else { UiccType::Gba },
        }))
    }

    /// Deletes the session row if it still holds `raw` (a concurrent re-bootstrap under the
    /// same B-TID is kept), then its expiry index row.
    async fn delete_session(&self, btid: &str, raw: &[u8], expiry: u64) -> Result<(), BsfError> {
        self.kv.compare_and_swap(Table::BsfSessions, btid, Some(raw), None).await?;
        self.kv.delete(Table::BsfSessionExpiry, &expiry_key(expiry, btid)).await?;
        Ok(())
    }

    /// Stores a challenge in flight under its nonce until `expiry` (the first second at which
    /// the nonce is stale), sealed; the expiry index row first, so the purge finds every row.
    pub async fn put_pending(&self, p: &PendingChallenge, expiry: u64) -> Result<(), BsfError> {
        if let Some(local) = &self.local_pending {
            local.lock().unwrap_or_else(PoisonError::into_inner).insert(p.nonce.clone(), (p.clone(), expiry));
            return Ok(());
        }
        let row = PendingRow {
            impi: p.impi.clone(),
            opaque: p.opaque.clone(),
            rand: hex::encode(p.rand),
            xres: hex::encode(p.xres),
            ck: hex::encode(p.ck),
            ik: hex::encode(p.ik),
            sqn: p.sqn,
            issued_at: p.issued_at,
            expiry,
            gba_u: p.uicc == UiccType::GbaU,
        };
        let sealed = self.master.seal(Table::BsfPending, &p.nonce, &encode(&p.nonce, &row)?)?;
        self.kv.put(Table::BsfPendingExpiry, &expiry_key(expiry, &p.nonce), b"").await?;
        self.kv.put(Table::BsfPending, &p.nonce, &sealed).await?;
        Ok(())
    }

    /// Takes the challenge in flight under `nonce`: deletes it by compare-and-swap, so of
    /// every replica asking at once exactly one gets it; `None` for an unknown, already
    /// answered or purged nonce.
    pub async fn take_pending(&self, nonce: &str) -> Result<Option<PendingChallenge>, BsfError> {
        if nonce.is_empty() || nonce.len() > MAX_NONCE_LEN || nonce.contains('\0') {
            return Ok(None);
        }
        if let Some(local) = &self.local_pending {
            return Ok(local.lock().unwrap_or_else(PoisonError::into_inner).remove(nonce).map(|(p, _)| p));
        }
        let taken = update(&*self.kv, Table::BsfPending, nonce, |held| {
            Ok::<_, BsfError>(match held {
                None => Step::Keep(None),
                Some(raw) => Step::Write(None, Some(Zeroizing::new(raw.to_vec()))),
            })
        })
        .await?;
        let Some(sealed) = taken else { return Ok(None) };
        let plain = self.open_raw(Table::BsfPending, nonce, &sealed)?;
        let row: PendingRow = decode(nonce, &plain)?;
        self.kv.delete(Table::BsfPendingExpiry, &expiry_key(row.expiry, nonce)).await?;
        let corrupt = |r: &str| BsfError::Corrupt { key: nonce.to_owned(), reason: r.to_owned() };
        Ok(Some(PendingChallenge {
            impi: row.impi.clone(),
            nonce: nonce.to_owned(),
            opaque: row.opaque.clone(),
            rand: octets(&row.rand).ok_or_else(|| corrupt("rand"))?,
            xres: octets(&row.xres).ok_or_else(|| corrupt("xres"))?,
            ck: octets(&row.ck).ok_or_else(|| corrupt("ck"))?,
            ik: octets(&row.ik).ok_or_else(|| corrupt("ik"))?,
            sqn: row.sqn,
            issued_at: row.issued_at,
            uicc: if row.gba_u { UiccType::GbaU } else { UiccType::Gba },
        }))
    }

    /// Deletes every challenge in flight whose nonce is stale at `now` (expiry ≤ `now`),
    /// through its expiry index; returns how many it deleted. Idempotent, as
    /// [`Store::purge_expired`].
    pub async fn purge_stale_challenges(&self, now: u64) -> Result<usize, BsfError> {
        if let Some(local) = &self.local_pending {
            let mut held = local.lock().unwrap_or_else(PoisonError::into_inner);
            let before = held.len();
            held.retain(|_, (_, expiry)| *expiry > now);
            return Ok(before - held.len());
        }
        self.purge_index(Expiring::Challenges, now).await
    }

    /// Walks the expiry index of `what` (`<expiry, 20 digits>/<row key>`) up to `now`, in
    /// batches of [`PURGE_BATCH`]: deletes each row when due ([`Store::expire_row`]), then its
    /// index entry. Returns how many rows were deleted.
    async fn purge_index(&self, what: Expiring, now: u64) -> Result<usize, BsfError> {
        let index = what.index();
        let end = format!("{:020}", now.saturating_add(1));
        let mut purged = 0;
        loop {
            let rows = self.kv.range(index, "", &end, PURGE_BATCH).await?;
            for (key, _) in &rows {
                let row = key.split_once('/').map_or(key.as_str(), |(_, r)| r);
                purged += usize::from(self.expire_row(what, row, now).await?);
                self.kv.delete(index, key).await?;
            }
            if rows.len() < PURGE_BATCH {
                return Ok(purged);
            }
        }
    }

    /// Deletes row `key` of `what` found under an index entry due at `now`; whether it did.
    async fn expire_row(&self, what: Expiring, key: &str, now: u64) -> Result<bool, BsfError> {
        match what {
            // Nonces are fresh per challenge (random RAND), so the row under an expired index
            // entry is that stale challenge: delete it as it is.
            Expiring::Challenges => Ok(self.kv.delete(Table::BsfPending, key).await?),
            Expiring::Sessions => {
                let Some(raw) = self.kv.get(Table::BsfSessions, key).await?.map(Zeroizing::new) else { return Ok(false) };
                // A record that does not decode is left for the look-up to report (a purge
                // that stopped at it would never get past it); a session re-bootstrapped under
                // the same B-TID since its entry was written is not expired yet.
                let expired = decode::<SessionRecord>(key, &raw).is_ok_and(|rec| rec.expiry <= now);
                Ok(expired && self.kv.compare_and_swap(Table::BsfSessions, key, Some(&raw), None).await?)
            }
        }
    }

    /// Deletes every session expired at `now` (expiry ≤ `now`) found through the expiry
    /// index; returns how many sessions it deleted. Idempotent, so every replica may run it.
    /// Sessions stored by versions before the index existed have no index row: they are
    /// deleted when looked up after their expiry, as those versions did.
    pub async fn purge_expired(&self, now: u64) -> Result<usize, BsfError> {
        self.purge_index(Expiring::Sessions, now).await
    }
}
