//! The KMS's ECCSI signing-key issuance for the high-security mode (RFC 6507 §4.2, §5.1.1;
//! docs/kms.md "Key provisioning"): one KSAK per KMS, made on first start and kept in the
//! store's `settings` table sealed under the master key exactly like the ring keys
//! (AES-256-GCM, AAD = `settings:eccsi_ksak`); its KPAK is public. Users allowed by policy
//! (`high_security`) fetch the SSK and PVT of their identity over Ua `keyprovision`
//! ([`crate::keyprov`]), authenticated with GBA like a Ticket Request.
//!
//! The KSAK lets the KMS issue a signing key for any identity, hence impersonate anyone in a
//! call it can also intercept (an active attack, as with any certificate authority); it gives
//! no passive access to call keys, which come from an ephemeral Diffie-Hellman exchange.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use mediasec_kms_store::{AuditEntry, Table};
use mediasec_mikey::eccsi::{self, KmsSecret, Kpak};
use zeroize::Zeroizing;

use crate::error::KmsError;
use crate::identity::KmsUid;
use crate::keyprov::{Issued, NONCE_LEN, Period, ProvKeys, Request, Response};
use crate::kms::Kms;
use crate::persist::Persist;
use crate::zn::Zn;

/// The `settings` row holding the sealed KSAK.
pub const KSAK_ROW: &str = "eccsi_ksak";

/// Draws of a fresh scalar before giving up (a draw fails with probability about 2⁻³²).
const DRAWS: usize = 8;

impl Persist {
    /// The stored KSAK, if one was made.
    pub async fn ksak(&self) -> Result<Option<KmsSecret>, KmsError> {
        let Some(sealed) = self.store().get(Table::Settings, KSAK_ROW).await? else { return Ok(None) };
        let plain = self.open(Table::Settings, KSAK_ROW, &sealed)?;
        let bytes: &[u8; eccsi::N] = plain.as_slice().try_into().map_err(|_| KmsError::KeyRing(format!("settings row {KSAK_ROW}: not {} octets", eccsi::N)))?;
        KmsSecret::from_bytes(bytes).map(Some).map_err(|e| KmsError::KeyRing(format!("settings row {KSAK_ROW}: {e}")))
    }

    /// The stored KSAK, or a new one made from `random`, sealed and committed before return
    /// (audited as `ksak.create` with its KPAK). Creation is create-if-absent at the store
    /// ([`mediasec_kms_store::Store::put_if_absent`]): replicas starting together on an empty
    /// shared store each draw a KSAK, exactly one is stored, and every replica returns that
    /// one (only the winner audits the creation).
    pub async fn ksak_or_init(&self, now_ms: u64, random: &(dyn Fn(&mut [u8]) + Sync)) -> Result<KmsSecret, KmsError> {
        if let Some(k) = self.ksak().await? {
            return Ok(k);
        }
        let ksak = draw(random, |b| KmsSecret::from_bytes(b).ok()).ok_or_else(|| KmsError::KeyRing("no usable random KSAK".into()))?;
        let sealed = self.seal(Table::Settings, KSAK_ROW, &*ksak.to_bytes())?;
        let held = self.store().put_if_absent(Table::Settings, KSAK_ROW, &sealed).await?;
        if held != sealed {
            return self.ksak().await?.ok_or_else(|| KmsError::KeyRing(format!("settings row {KSAK_ROW} vanished after creation")));
        }
        let detail = format!("KPAK {}", hex::encode(ksak.kpak().to_uncompressed()));
        self.store().append_audit(&AuditEntry { at_unix_ms: now_ms, actor: "kms".into(), action: "ksak.create".into(), detail }).await?;
        Ok(ksak)
    }
}

/// Calls `f` on fresh 32-octet random values until it accepts one (at most [`DRAWS`] times).
fn draw<T>(random: &(dyn Fn(&mut [u8]) + Sync), f: impl Fn(&[u8; eccsi::N]) -> Option<T>) -> Option<T> {
    (0..DRAWS).find_map(|_| {
        let mut b = Zeroizing::new([0u8; eccsi::N]);
        random(&mut *b);
        f(&b)
    })
}

/// Why a `keyprovision` request was refused (HTTP status in docs/kms.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProvRefusal {
    /// 400: not a well-formed request.
    Malformed(String),
    /// 401: unknown or expired B-TID, MAC failure, or time outside the skew window.
    Unauthenticated(String),
    /// 401: the same (B-TID, nonce) was seen within the skew window.
    Replayed,
    /// 403: the identity may not have a key (not the user's IMPU, not an enabled user, policy
    /// without `high_security`, period not issuable).
    Forbidden(String),
    /// 503: the KMS failed (Zn, randomness).
    Failed(String),
}

impl ProvRefusal {
    /// Metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::Unauthenticated(_) => "unauthenticated",
            Self::Replayed => "replayed",
            Self::Forbidden(_) => "forbidden",
            Self::Failed(_) => "kms_error",
        }
    }

    /// The reason sent to the client.
    pub fn reason(&self) -> &str {
        match self {
            Self::Malformed(r) | Self::Unauthenticated(r) | Self::Forbidden(r) | Self::Failed(r) => r,
            Self::Replayed => "replayed request",
        }
    }
}

/// Issues signing keys: holds the KSAK and the replay cache of `keyprovision`.
pub struct Provisioner {
    ksak: RwLock<Arc<KmsSecret>>,
    /// (B-TID, nonce) → request time, kept for the skew window.
    seen: Mutex<HashMap<(String, [u8; NONCE_LEN]), u64>>,
}

impl Provisioner {
    /// With the KMS's KSAK.
    pub fn new(ksak: KmsSecret) -> Self {
        Self { ksak: RwLock::new(Arc::new(ksak)), seen: Mutex::default() }
    }

    fn ksak(&self) -> Option<Arc<KmsSecret>> {
        self.ksak.read().ok().map(|k| Arc::clone(&k))
    }

    /// The KPAK.
    pub fn kpak(&self) -> Option<Kpak> {
        self.ksak().map(|k| k.kpak())
    }

    /// Replaces the KSAK (store reload).
    pub fn set_ksak(&self, ksak: KmsSecret) {
        if let Ok(mut w) = self.ksak.write() {
            *w = Arc::new(ksak);
        }
    }

    /// Whether (B-TID, nonce) is new; remembers it. Entries older than the skew window are
    /// dropped first (a request that old is refused by its time anyway).
    fn first_use(&self, btid: &str, nonce: [u8; NONCE_LEN], time: u64, now: u64, skew: u64) -> bool {
        let Ok(mut seen) = self.seen.lock() else { return false };
        let oldest = now.saturating_sub(skew);
        seen.retain(|_, t| *t >= oldest);
        seen.insert((btid.to_owned(), nonce), time).is_none()
    }

    /// Serves a `keyprovision` request (docs/kms.md): B-TID → Ks_NAF and IMPUs over Zn →
    /// MAC → freshness and replay → identity (an IMPU of the B-TID, an enabled user whose
    /// policy has `high_security`) → period (the current month or the next, UTC) → issue a
    /// fresh SSK/PVT (RFC 6507 §5.1.1) → the response, SSK wrapped.
    pub async fn provision(&self, kms: &Kms, body: &[u8], now: Duration, zn: &dyn Zn) -> Result<Vec<u8>, ProvRefusal> {
        let req = Request::parse(body).map_err(|e| ProvRefusal::Malformed(e.to_string()))?;
        let (period, nonce) = (req.period().map_err(|e| ProvRefusal::Malformed(e.to_string()))?, req.nonce().map_err(|e| ProvRefusal::Malformed(e.to_string()))?);
        let now_s = now.as_secs();
        let naf = zn
            .naf_key(&req.btid, now_s)
            .await
            .map_err(|e| ProvRefusal::Failed(e.to_string()))?
            .ok_or_else(|| ProvRefusal::Unauthenticated("unknown or expired B-TID: bootstrap again".into()))?;
        let keys = ProvKeys::derive(&naf.ks_naf);
        if !req.verify(&keys) {
            return Err(ProvRefusal::Unauthenticated("request MAC does not verify".into()));
        }
        let cfg = kms.config();
        if req.time.abs_diff(now_s) > cfg.skew {
            return Err(ProvRefusal::Unauthenticated(format!("request time outside the KMS's ±{} s window", cfg.skew)));
        }
        if !self.first_use(&req.btid, nonce, req.time, now_s, cfg.skew) {
            return Err(ProvRefusal::Replayed);
        }
        if !naf.impus.contains(&req.uri) {
            return Err(ProvRefusal::Forbidden(format!("{} is not one of the user's IMPUs", req.uri)));
        }
        let uid = KmsUid::from_uri(&req.uri, &cfg.domain).map_err(|e| ProvRefusal::Forbidden(e.to_string()))?;
        if !kms.users().allows(&uid) {
            return Err(ProvRefusal::Forbidden(format!("{uid} is not an enabled user of this KMS")));
        }
        if !kms.policies().effective(&uid).high_security {
            return Err(ProvRefusal::Forbidden(format!("policy does not allow {uid} the high-security mode")));
        }
        let current = Period::of_unix(now_s).map_err(|e| ProvRefusal::Failed(e.to_string()))?;
        if period != current && period != current.next() {
            return Err(ProvRefusal::Forbidden(format!("period {period} is neither {current} nor {}", current.next())));
        }
        let ksak = self.ksak().ok_or_else(|| ProvRefusal::Failed("KSAK unavailable".into()))?;
        let id = eccsi::identity(&req.uri, period.year, period.month);
        let (ssk, pvt) = draw(&|b| kms.fill_random(b), |v| ksak.issue(&id, v).ok()).ok_or_else(|| ProvRefusal::Failed("no usable random v".into()))?;
        let issued = Issued { id: &id, kpak: &ksak.kpak().to_uncompressed(), pvt: &pvt.to_uncompressed(), ssk: &ssk.to_bytes() };
        Response::build(&keys, &cfg.fqdn, &req, &issued).map_err(|e| ProvRefusal::Failed(e.to_string()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::keyring::KeyRing;
    use crate::kms::KmsConfig;
    use crate::policy::Policies;
    use crate::users::{User, Users};
    use crate::zn::{NafKey, StaticZn};

    const NOW: u64 = 1_798_761_590; // 2026-12-31T23:59:50Z

    fn kms() -> Kms {
        let users = Users::new(["a@a.example", "b@a.example"].map(|u| User { uid: KmsUid::parse(u).unwrap(), enabled: true }));
        let policies = Policies::from_toml("[user.\"a@a.example\"]\nhigh_security = true").unwrap();
        let cfg = KmsConfig { fqdn: "kms.a.example".into(), domain: "a.example".into(), skew: 30 };
        Kms::new(cfg, policies, users, KeyRing::default(), crate::kms::os_random())
    }

    fn zn() -> StaticZn {
        let mut zn = StaticZn::default();
        zn.insert("ba", NafKey::new(&[1; 32], vec!["sip:a@a.example".into()], u64::MAX));
        zn.insert("bb", NafKey::new(&[2; 32], vec!["sip:b@a.example".into()], u64::MAX));
        zn
    }

    async fn ask(p: &Provisioner, btid: &str, key: u8, uri: &str, period: &str, time: u64, nonce: u8) -> Result<Vec<u8>, ProvRefusal> {
        let (body, pending) = crate::keyprov::request(btid, &[key; 32], "kms.a.example", uri, Period::parse(period).unwrap(), time, [nonce; 16]).unwrap();
        let out = p.provision(&kms(), &body, Duration::from_secs(NOW), &zn()).await;
        if let Ok(resp) = &out {
            assert_eq!(pending.open(resp).unwrap().kpak, p.kpak().unwrap());
        }
        out
    }

    /// The issuing rules of docs/kms.md: this month and the next (here across a year end),
    /// time within the skew, policy `high_security`, the user's own IMPU, one use per nonce.
    #[tokio::test]
    async fn issuing_rules() {
        let p = Provisioner::new(KmsSecret::from_bytes(&[0x42; 32]).unwrap());
        assert!(ask(&p, "ba", 1, "sip:a@a.example", "2026-12", NOW, 1).await.is_ok());
        assert!(ask(&p, "ba", 1, "sip:a@a.example", "2027-01", NOW + 30, 2).await.is_ok(), "next period, skew edge");
        assert!(matches!(ask(&p, "ba", 1, "sip:a@a.example", "2027-02", NOW, 3).await, Err(ProvRefusal::Forbidden(_))));
        assert!(matches!(ask(&p, "ba", 1, "sip:a@a.example", "2026-11", NOW, 4).await, Err(ProvRefusal::Forbidden(_))));
        assert!(matches!(ask(&p, "ba", 1, "sip:a@a.example", "2026-12", NOW + 31, 5).await, Err(ProvRefusal::Unauthenticated(_))));
        assert!(matches!(ask(&p, "ba", 1, "sip:a@a.example", "2026-12", NOW, 1).await, Err(ProvRefusal::Replayed)));
        assert!(matches!(ask(&p, "bb", 2, "sip:a@a.example", "2026-12", NOW, 9).await, Err(ProvRefusal::Forbidden(r)) if r.contains("IMPU")));
        assert!(matches!(ask(&p, "bb", 2, "sip:b@a.example", "2026-12", NOW, 6).await, Err(ProvRefusal::Forbidden(r)) if r.contains("policy")));
        assert!(matches!(ask(&p, "ba", 2, "sip:a@a.example", "2026-12", NOW, 7).await, Err(ProvRefusal::Unauthenticated(r)) if r.contains("MAC")));
        assert!(matches!(ask(&p, "zz", 1, "sip:a@a.example", "2026-12", NOW, 8).await, Err(ProvRefusal::Unauthenticated(r)) if r.contains("B-TID")));
    }
}
