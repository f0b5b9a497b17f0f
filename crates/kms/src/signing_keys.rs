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
use mediasec_mikey::sakke;
use zeroize::Zeroizing;

use crate::community::Community;
use crate::error::KmsError;
use crate::generations::{Generations, month_start};
use crate::identity::KmsUid;
use crate::keyprov::{Issued, NONCE_LEN, Period, ProvKeys, Request, Response, SakkeIssued};
use crate::kms::Kms;
use crate::persist::Persist;
use crate::zn::Zn;

/// The `settings` row holding the sealed KSAK.
pub const KSAK_ROW: &str = "eccsi_ksak";

/// The `settings` row holding the sealed SAKKE master secret z (MIKEY-SAKKE).
pub const SAKKE_Z_ROW: &str = "sakke_z";

/// Draws of a fresh scalar before giving up (a draw fails with probability about 2⁻³²).
const DRAWS: usize = 8;
/// Draws of z before giving up (each succeeds with probability q / 2^1022 > 1/2).
const SAKKE_DRAWS: usize = 64;

impl Persist {
    /// The secret sealed in `settings` row `row`, if one was made, parsed by `parse`.
    pub(crate) async fn settings_secret<T>(&self, row: &str, parse: fn(&[u8]) -> Result<T, String>) -> Result<Option<T>, KmsError> {
        let Some(sealed) = self.store().get(Table::Settings, row).await? else { return Ok(None) };
        let plain = self.open(Table::Settings, row, &sealed)?;
        parse(&plain).map(Some).map_err(|e| KmsError::KeyRing(format!("settings row {row}: {e}")))
    }

    /// The secret of `row`, or `fresh` (whose octets are `plain`) sealed and stored if the
    /// row is absent — create-if-absent at the store ([`mediasec_kms_store::Store::put_if_absent`]):
    /// replicas starting together on an empty shared store each offer a candidate, exactly one
    /// is stored, and every replica returns that one; only the winner appends `audit`.
    async fn settings_secret_or_init<T>(&self, row: &str, parse: fn(&[u8]) -> Result<T, String>, fresh: T, plain: &[u8], audit: AuditEntry) -> Result<T, KmsError> {
        if let Some(k) = self.settings_secret(row, parse).await? {
            return Ok(k);
        }
        let sealed = self.seal(Table::Settings, row, plain)?;
        let held = self.store().put_if_absent(Table::Settings, row, &sealed).await?;
        if held != sealed {
            return self.settings_secret(row, parse).await?.ok_or_else(|| KmsError::KeyRing(format!("settings row {row} vanished after creation")));
        }
        self.store().append_audit(&audit).await?;
        Ok(fresh)
    }

    /// The stored KSAK, if one was made.
    pub async fn ksak(&self) -> Result<Option<KmsSecret>, KmsError> {
        self.settings_secret(KSAK_ROW, parse_ksak).await
    }

    /// The stored KSAK, or a new one made from `random`, sealed and committed before return
    /// (audited as `ksak.create` with its KPAK); create-if-absent, so replicas started
    /// together on an empty store share one KSAK.
    pub async fn ksak_or_init(&self, now_ms: u64, random: &(dyn Fn(&mut [u8]) + Sync)) -> Result<KmsSecret, KmsError> {
        if let Some(k) = self.ksak().await? {
            return Ok(k);
        }
        let ksak = draw_ksak(random)?;
        let (plain, detail) = (ksak.to_bytes(), format!("KPAK {}", hex::encode(ksak.kpak().to_uncompressed())));
        let audit = AuditEntry { at_unix_ms: now_ms, actor: "kms".into(), action: "ksak.create".into(), detail };
        self.settings_secret_or_init(KSAK_ROW, parse_ksak, ksak, &*plain, audit).await
    }

    /// The stored SAKKE master secret z, if one was made.
    pub async fn sakke_z(&self) -> Result<Option<sakke::KmsSecret>, KmsError> {
        self.settings_secret(SAKKE_Z_ROW, parse_sakke_z).await
    }

    /// The stored SAKKE master secret z, or a new one drawn uniformly from \[2, q − 1\]
    /// (RFC 6508 §2.2) by rejection sampling from `random`, sealed like the KSAK and audited
    /// as `sakke_z.create`; create-if-absent like the KSAK.
    pub async fn sakke_z_or_init(&self, now_ms: u64, random: &(dyn Fn(&mut [u8]) + Sync)) -> Result<sakke::KmsSecret, KmsError> {
        if let Some(z) = self.sakke_z().await? {
            return Ok(z);
        }
        let z = draw_sakke_z(random)?;
        let plain = z.to_bytes();
        let audit = AuditEntry { at_unix_ms: now_ms, actor: "kms".into(), action: "sakke_z.create".into(), detail: "SAKKE master secret z".into() };
        self.settings_secret_or_init(SAKKE_Z_ROW, parse_sakke_z, z, &*plain, audit).await
    }
}

/// A fresh KSAK from `random` (RFC 6507 §4.2: uniform in \[1, q − 1\]).
pub(crate) fn draw_ksak(random: &(dyn Fn(&mut [u8]) + Sync)) -> Result<KmsSecret, KmsError> {
    draw(random, |b| KmsSecret::from_bytes(b).ok()).ok_or_else(|| KmsError::KeyRing("no usable random KSAK".into()))
}

/// A fresh SAKKE master secret z from `random`, uniform in \[2, q − 1\] (RFC 6508 §2.2) by
/// rejection sampling.
pub(crate) fn draw_sakke_z(random: &(dyn Fn(&mut [u8]) + Sync)) -> Result<sakke::KmsSecret, KmsError> {
    (0..SAKKE_DRAWS)
        .find_map(|_| {
            let mut b = Zeroizing::new([0u8; sakke::SECRET_LEN]);
            random(&mut *b);
            // q < 2^1022 < 2q (RFC 6509 Appendix A): keep 1022 bits, then reject ≥ q.
            if let Some(top) = b.first_mut() {
                *top &= 0x3f;
            }
            sakke::KmsSecret::from_bytes(&*b).ok()
        })
        .ok_or_else(|| KmsError::KeyRing("no usable random SAKKE z".into()))
}

fn parse_ksak(plain: &[u8]) -> Result<KmsSecret, String> {
    let bytes: &[u8; eccsi::N] = plain.try_into().map_err(|_| format!("not {} octets", eccsi::N))?;
    KmsSecret::from_bytes(bytes).map_err(|e| e.to_string())
}

fn parse_sakke_z(plain: &[u8]) -> Result<sakke::KmsSecret, String> {
    if plain.len() != sakke::SECRET_LEN {
        return Err(format!("not {} octets", sakke::SECRET_LEN));
    }
    sakke::KmsSecret::from_bytes(plain).map_err(|e| e.to_string())
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
    /// without `high_security` — or `mikey_sakke` for MIKEY-SAKKE keys —, period not issuable).
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

/// Issues signing keys (and MIKEY-SAKKE RSKs): holds the generations of the community keys
/// (KSAK, z; [`crate::generations`]) and the replay cache of `keyprovision`.
pub struct Provisioner {
    generations: RwLock<Arc<Generations>>,
    /// (B-TID, nonce) → request time, kept for the skew window.
    seen: Mutex<HashMap<(String, [u8; NONCE_LEN]), u64>>,
}

impl Provisioner {
    /// With one generation: the KMS's KSAK and SAKKE master secret z.
    pub fn new(ksak: KmsSecret, z: sakke::KmsSecret) -> Self {
        Self::with_generations(Generations::first(ksak, z))
    }

    /// With every generation of the community keys.
    pub fn with_generations(g: Generations) -> Self {
        Self { generations: RwLock::new(Arc::new(g)), seen: Mutex::default() }
    }

    /// The generations held.
    pub fn generations(&self) -> Option<Arc<Generations>> {
        self.generations.read().ok().map(|g| Arc::clone(&g))
    }

    /// Replaces the generations (store reload, rotation); keeps the computed Z of those
    /// unchanged.
    pub fn set_generations(&self, g: Generations) {
        let Some(old) = self.generations() else { return };
        if let Ok(mut w) = self.generations.write() {
            *w = Arc::new(old.refreshed(g));
        }
    }

    /// The SAKKE public key Z valid at Unix time `t` (RFC 6508 §2.2), published to UEs with
    /// their RSK.
    pub fn sakke_public_at(&self, t: u64) -> Option<sakke::PublicKey> {
        self.generations().map(|g| g.at(t).z_public())
    }

    /// The KPAK valid at Unix time `t`.
    pub fn kpak_at(&self, t: u64) -> Option<Kpak> {
        self.generations().map(|g| g.at(t).kpak())
    }

    /// LI key release of a MIKEY-SAKKE call with this KMS's z ([`Kms::li_release_sakke`]) of
    /// the generation valid at the I_MESSAGE's T (every generation is kept, so calls under
    /// retired ones stay releasable); the signature is verified under `initiator_kpak` (the
    /// KPAK valid at T of the community IDRkmsi names, from its KMS certificate) or, when
    /// `None`, under this KMS's KPAK of that generation.
    pub fn li_release_sakke(&self, kms: &Kms, warrant: &crate::li::Warrant, i_message: &mediasec_mikey::Decoded<'_>, initiator_kpak: Option<&Kpak>, now: u64) -> Result<crate::li::Release, KmsError> {
        let gens = self.generations().ok_or_else(|| KmsError::KeyRing("community keys unavailable".into()))?;
        let g = gens.at(crate::li::sakke_time(i_message)?);
        let own = g.kpak();
        kms.li_release_sakke(warrant, i_message, g.z(), &g.z_public(), initiator_kpak.unwrap_or(&own), now)
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
    /// fresh SSK/PVT (RFC 6507 §5.1.1) under the community key generation of the period
    /// → the response, SSK wrapped. With MIKEY-SAKKE keys,
    /// `communities` (the KMS certificates: own first, then the external ones) go with them.
    pub async fn provision(&self, kms: &Kms, body: &[u8], now: Duration, zn: &dyn Zn, communities: &[Community]) -> Result<Vec<u8>, ProvRefusal> {
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
        let rules = kms.policies().effective(&uid);
        if req.sakke && !rules.mikey_sakke {
            return Err(ProvRefusal::Forbidden(format!("policy does not allow {uid} the MIKEY-SAKKE mode")));
        }
        if !req.sakke && !rules.high_security {
            return Err(ProvRefusal::Forbidden(format!("policy does not allow {uid} the high-security mode")));
        }
        let current = Period::of_unix(now_s).map_err(|e| ProvRefusal::Failed(e.to_string()))?;
        if period != current && period != current.next() {
            return Err(ProvRefusal::Forbidden(format!("period {period} is neither {current} nor {}", current.next())));
        }
        // The generation of the period: the one valid at its first instant, valid for the
        // whole month (generations start on month boundaries, crate::generations).
        let gens = self.generations().ok_or_else(|| ProvRefusal::Failed("community keys unavailable".into()))?;
        let g = gens.at(month_start(period).map_err(|e| ProvRefusal::Failed(e.to_string()))?);
        let ksak = g.ksak();
        let id = eccsi::identity(&req.uri, period.year, period.month);
        let (ssk, pvt) = draw(&|b| kms.fill_random(b), |v| ksak.issue(&id, v).ok()).ok_or_else(|| ProvRefusal::Failed("no usable random v".into()))?;
        let sakke = match req.sakke {
            false => None,
            true => {
                let rsk = g.z().issue(&id).map_err(|e| ProvRefusal::Failed(e.to_string()))?;
                Some((g.z_public().to_uncompressed(), rsk.to_uncompressed()))
            }
        };
        let sakke_issued = sakke.as_ref().map(|(z, rsk)| SakkeIssued { z, rsk, certificates: communities });
        let issued = Issued { id: &id, kpak: &ksak.kpak().to_uncompressed(), pvt: &pvt.to_uncompressed(), ssk: &ssk.to_bytes(), sakke: sakke_issued };
        Response::build(&keys, &cfg.fqdn, &req, &issued).map_err(|e| ProvRefusal::Failed(e.to_string()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
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
        let policies = Policies::from_toml("[user.\"a@a.example\"]\nhigh_security = true\n[user.\"b@a.example\"]\nmikey_sakke = true").unwrap();
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
        ask_for(p, btid, key, uri, period, time, nonce, false).await
    }

    #[allow(clippy::too_many_arguments)]
    async fn ask_for(p: &Provisioner, btid: &str, key: u8, uri: &str, period: &str, time: u64, nonce: u8, sakke: bool) -> Result<Vec<u8>, ProvRefusal> {
        let (body, pending) = crate::keyprov::request(btid, &[key; 32], "kms.a.example", uri, Period::parse(period).unwrap(), time, [nonce; 16], sakke).unwrap();
        let out = p.provision(&kms(), &body, Duration::from_secs(NOW), &zn(), &[]).await;
        if let Ok(resp) = &out {
            assert_eq!(pending.open(resp).unwrap().kpak, p.kpak_at(NOW).unwrap());
        }
        out
    }

    /// The issuing rules of docs/kms.md: this month and the next (here across a year end),
    /// time within the skew, policy `high_security`, the user's own IMPU, one use per nonce.
    #[tokio::test]
    async fn issuing_rules() {
        let p = provisioner();
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

    /// Keys follow the community key generation of their month (crate::generations): with
    /// generation 2 from 2027-01-01, December's keys are generation 1's (KPAK, Z, RSK under
    /// Z₁) and January's generation 2's; the certificates handed out are both generations'
    /// (windows contiguous); the UE refuses a response whose own certificate for the
    /// period names other keys than the response.
    #[tokio::test]
    async fn keys_follow_the_generation_of_their_month() {
        use crate::generations::{Generation, Generations};
        const JAN: u64 = 1_798_761_600;
        let mut gens = Generations::first(KmsSecret::from_bytes(&[0x42; 32]).unwrap(), sakke::KmsSecret::from_bytes(&[0x5a; 32]).unwrap());
        gens.push(Generation::new(2, JAN, KmsSecret::from_bytes(&[0x44; 32]).unwrap(), sakke::KmsSecret::from_bytes(&[0x5c; 32]).unwrap())).unwrap();
        let certs = gens.certificates("kms.a.example", &["a.example".into()]).unwrap();
        let p = Provisioner::with_generations(gens.clone());
        for (period, g, nonce) in [("2026-12", 1u32, 1u8), ("2027-01", 2, 2)] {
            let (body, pending) = crate::keyprov::request("bb", &[2; 32], "kms.a.example", "sip:b@a.example", Period::parse(period).unwrap(), NOW, [nonce; 16], true).unwrap();
            let resp = p.provision(&kms(), &body, Duration::from_secs(NOW), &zn(), &certs).await.unwrap();
            let got = pending.open(&resp).unwrap();
            let want = gens.all().find(|x| x.number() == g).unwrap();
            assert_eq!((got.kpak, got.sakke.as_ref().unwrap().z), (want.kpak(), want.z_public()), "{period}: generation {g}");
            assert_eq!(got.communities, certs, "{period}: both generations' certificates");
            // Only generation 1's certificate, unbounded: wrong for January's keys.
            let (body, pending) = crate::keyprov::request("bb", &[2; 32], "kms.a.example", "sip:b@a.example", Period::parse(period).unwrap(), NOW, [nonce + 10; 16], true).unwrap();
            let stale = [Community::new("kms.a.example", gens.at(0).kpak(), gens.at(0).z_public(), &["a.example".into()]).unwrap()];
            let resp = p.provision(&kms(), &body, Duration::from_secs(NOW), &zn(), &stale).await.unwrap();
            assert_eq!(pending.open(&resp).is_ok(), g == 1, "{period}");
        }
        assert_eq!((p.kpak_at(JAN - 1), p.kpak_at(JAN)), (Some(gens.at(0).kpak()), Some(gens.at(JAN).kpak())));
    }

    fn provisioner() -> Provisioner {
        Provisioner::new(KmsSecret::from_bytes(&[0x42; 32]).unwrap(), sakke::KmsSecret::from_bytes(&[0x5a; 32]).unwrap())
    }

    /// MIKEY-SAKKE keys (`sakke` in the request) are issued under their own policy rule
    /// (`mikey_sakke`, independent of `high_security`): the UE gets its ECCSI key, Z and an
    /// RSK for the period's identifier that validates under Z (RFC 6508 §6.1.2); Z and the
    /// wrapped RSK are covered by the response MAC; the RSK is not on the wire in clear.
    #[tokio::test]
    async fn sakke_keys_under_their_own_rule() {
        let p = provisioner();
        assert!(matches!(ask_for(&p, "ba", 1, "sip:a@a.example", "2026-12", NOW, 1, true).await, Err(ProvRefusal::Forbidden(r)) if r.contains("MIKEY-SAKKE")));
        assert!(matches!(ask_for(&p, "bb", 2, "sip:b@a.example", "2026-12", NOW, 2, false).await, Err(ProvRefusal::Forbidden(r)) if r.contains("high-security")));
        let (body, pending) = crate::keyprov::request("bb", &[2; 32], "kms.a.example", "sip:b@a.example", Period::parse("2027-01").unwrap(), NOW, [3; 16], true).unwrap();
        let own = Community::new("kms.a.example", p.kpak_at(NOW).unwrap(), p.sakke_public_at(NOW).unwrap(), &["a.example".into()]).unwrap();
        let b = Community::new("kms.b.example", KmsSecret::from_bytes(&[0x43; 32]).unwrap().kpak(), sakke::KmsSecret::from_bytes(&[0x5b; 32]).unwrap().public_key(), &["b.example".into()]).unwrap();
        let resp = p.provision(&kms(), &body, Duration::from_secs(NOW), &zn(), &[own.clone(), b.clone()]).await.unwrap();
        let got = pending.open(&resp).unwrap();
        assert_eq!(got.communities, [own, b], "the KMS certificates, own first");
        let keys = got.sakke.unwrap();
        assert_eq!(keys.z, p.sakke_public_at(NOW).unwrap());
        assert_eq!(keys.rsk.id(), b"2027-01\0sip:b@a.example\0");
        assert_eq!(got.key.id(), keys.rsk.id(), "one identifier for ECCSI and SAKKE (RFC 6509 §4.2)");
        let wire = String::from_utf8(resp.clone()).unwrap().to_ascii_lowercase();
        assert!(!wire.contains(&hex::encode(&keys.rsk.to_uncompressed()[1..9])), "RSK in clear on the wire");
        let v: serde_json::Value = serde_json::from_slice(&resp).unwrap();
        let mut t = v.clone();
        t["certificates"][1]["kms_domain_list"][0] = "c.example".into();
        assert!(pending.open(&serde_json::to_vec(&t).unwrap()).is_err(), "certificates under the MAC");
        let mut t = v.clone();
        t["certificates"].as_array_mut().unwrap().pop();
        assert!(pending.open(&serde_json::to_vec(&t).unwrap()).is_err(), "a certificate removed");
        for field in ["z", "rsk_wrapped"] {
            let mut t = v.clone();
            let s = t[field].as_str().unwrap().to_owned();
            t[field] = format!("{}{}", &s[..s.len() - 1], if s.ends_with('0') { '1' } else { '0' }).into();
            assert!(pending.open(&serde_json::to_vec(&t).unwrap()).is_err(), "{field} under the MAC");
        }
        // A response without the SAKKE keys does not satisfy a SAKKE request.
        let (_, plain_pending) = crate::keyprov::request("bb", &[2; 32], "kms.a.example", "sip:b@a.example", Period::parse("2027-01").unwrap(), NOW, [3; 16], false).unwrap();
        assert!(plain_pending.open(&resp).is_err(), "SAKKE keys sent unasked");
    }
}
