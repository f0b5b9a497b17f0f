//! The subscriber store and bootstrap sessions in one redb file (ACID, single file).
//!
//! SQN durability: [`Store::next_sqn`] increments and commits (redb's default durability
//! fsyncs on commit) *before* the challenge that uses the SQN is built and sent, so a
//! kill -9 at any point can only skip SQNs, never reuse or lower one (TS 33.102 §6.3.2/C).

use mediasec_gba::bsf::{BootstrapSession, SubscriberAuth};
use mediasec_gba::milenage::{Milenage, SQN_MAX, Sqn};
use mediasec_gba::uicc::UiccType;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use crate::BsfError;

const SUBSCRIBERS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("subscribers");
const SESSIONS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("sessions");

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
struct SessionRecord {
    ks: String,
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

/// The store.
pub struct Store {
    db: Database,
}

fn decode<T: for<'de> Deserialize<'de>>(key: &str, v: &[u8]) -> Result<T, BsfError> {
    serde_json::from_slice(v).map_err(|e| BsfError::Corrupt { key: key.to_owned(), reason: e.to_string() })
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

impl Store {
    /// Open or create the database file.
    pub fn open(path: &std::path::Path) -> Result<Self, BsfError> {
        let db = Database::create(path).map_err(redb::Error::from)?;
        let tx = db.begin_write().map_err(redb::Error::from)?;
        tx.open_table(SUBSCRIBERS).map_err(redb::Error::from)?;
        tx.open_table(SESSIONS).map_err(redb::Error::from)?;
        tx.commit().map_err(redb::Error::from)?;
        Ok(Self { db })
    }

    /// Add a subscriber (error if present).
    pub fn add_subscriber(&self, s: &Subscriber) -> Result<(), BsfError> {
        s.auth()?;
        let tx = self.db.begin_write().map_err(redb::Error::from)?;
        {
            let mut t = tx.open_table(SUBSCRIBERS).map_err(redb::Error::from)?;
            if t.get(s.impi.as_str()).map_err(redb::Error::from)?.is_some() {
                return Err(BsfError::Subscriber(s.impi.clone(), "already exists"));
            }
            t.insert(s.impi.as_str(), encode(s).as_slice()).map_err(redb::Error::from)?;
        }
        tx.commit().map_err(redb::Error::from)?;
        Ok(())
    }

    /// Remove a subscriber; `false` if absent.
    pub fn remove_subscriber(&self, impi: &str) -> Result<bool, BsfError> {
        let tx = self.db.begin_write().map_err(redb::Error::from)?;
        let existed = {
            let mut t = tx.open_table(SUBSCRIBERS).map_err(redb::Error::from)?;
            t.remove(impi).map_err(redb::Error::from)?.is_some()
        };
        tx.commit().map_err(redb::Error::from)?;
        Ok(existed)
    }

    /// One subscriber.
    pub fn subscriber(&self, impi: &str) -> Result<Option<Subscriber>, BsfError> {
        let rx = self.db.begin_read().map_err(redb::Error::from)?;
        let t = rx.open_table(SUBSCRIBERS).map_err(redb::Error::from)?;
        let v = t.get(impi).map_err(redb::Error::from)?;
        v.map(|g| decode(impi, g.value())).transpose()
    }

    /// All subscribers.
    pub fn subscribers(&self) -> Result<Vec<Subscriber>, BsfError> {
        let rx = self.db.begin_read().map_err(redb::Error::from)?;
        let t = rx.open_table(SUBSCRIBERS).map_err(redb::Error::from)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(redb::Error::from)? {
            let (k, v) = row.map_err(redb::Error::from)?;
            out.push(decode(k.value(), v.value())?);
        }
        Ok(out)
    }

    /// Allocate the next SQN for `impi` and commit it durably; returns the record (with the
    /// new SQN) or `None` for an unknown IMPI.
    pub fn next_sqn(&self, impi: &str) -> Result<Option<Subscriber>, BsfError> {
        self.update_sqn(impi, |old| old.checked_add(1).filter(|s| *s <= SQN_MAX))
    }

    /// After a verified AUTS: SQN_HE := SQN_MS (TS 33.102 §6.3.5), so the next challenge uses
    /// SQN_MS + 1. This is the one case where the spec lets SQN_HE move down.
    pub fn resync_sqn(&self, impi: &str, sqn_ms: Sqn) -> Result<Option<Subscriber>, BsfError> {
        self.update_sqn(impi, |_| Some(sqn_ms))
    }

    fn update_sqn(&self, impi: &str, f: impl FnOnce(Sqn) -> Option<Sqn>) -> Result<Option<Subscriber>, BsfError> {
        let tx = self.db.begin_write().map_err(redb::Error::from)?;
        let sub = {
            let mut t = tx.open_table(SUBSCRIBERS).map_err(redb::Error::from)?;
            let cur: Option<Subscriber> = t.get(impi).map_err(redb::Error::from)?.map(|g| decode(impi, g.value())).transpose()?;
            match cur {
                None => None,
                Some(mut s) => {
                    s.sqn = f(s.sqn).ok_or(BsfError::Subscriber(impi.to_owned(), "SQN space exhausted"))?;
                    t.insert(impi, encode(&s).as_slice()).map_err(redb::Error::from)?;
                    Some(s)
                }
            }
        };
        tx.commit().map_err(redb::Error::from)?;
        Ok(sub)
    }

    /// Store a new bootstrap session under its B-TID (a newer run replaces an older one with
    /// the same B-TID, TS 33.220 §4.5.2).
    pub fn put_session(&self, s: &BootstrapSession) -> Result<(), BsfError> {
        let rec = SessionRecord {
            ks: hex::encode(s.ks),
            rand: hex::encode(s.rand),
            impi: s.impi.clone(),
            bootstrap_time: s.bootstrap_time,
            expiry: s.expiry,
            gba_u: s.uicc == UiccType::GbaU,
        };
        let bytes = Zeroizing::new(encode(&rec));
        let tx = self.db.begin_write().map_err(redb::Error::from)?;
        {
            let mut t = tx.open_table(SESSIONS).map_err(redb::Error::from)?;
            t.insert(s.btid.as_str(), bytes.as_slice()).map_err(redb::Error::from)?;
        }
        tx.commit().map_err(redb::Error::from)?;
        Ok(())
    }

    /// Look up a session valid at `now`; expired sessions are deleted (TS 24.109 §4.2).
    pub fn session(&self, btid: &str, now: u64) -> Result<Option<BootstrapSession>, BsfError> {
        let rec: Option<SessionRecord> = {
            let rx = self.db.begin_read().map_err(redb::Error::from)?;
            let t = rx.open_table(SESSIONS).map_err(redb::Error::from)?;
            let v = t.get(btid).map_err(redb::Error::from)?;
            v.map(|g| decode(btid, g.value())).transpose()?
        };
        let Some(rec) = rec else { return Ok(None) };
        if now >= rec.expiry {
            let tx = self.db.begin_write().map_err(redb::Error::from)?;
            tx.open_table(SESSIONS).map_err(redb::Error::from)?.remove(btid).map_err(redb::Error::from)?;
            tx.commit().map_err(redb::Error::from)?;
            return Ok(None);
        }
        let corrupt = |r: &str| BsfError::Corrupt { key: btid.to_owned(), reason: r.to_owned() };
        let ks = hex::decode(&rec.ks).ok().and_then(|v| <[u8; 32]>::try_from(v).ok()).ok_or_else(|| corrupt("ks"))?;
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
}
