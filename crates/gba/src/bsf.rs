//! The BSF side of the Ub bootstrapping procedure (TS 33.220 §4.5.2, TS 24.109 §4.2-§4.5),
//! sans-IO: the caller owns storage, clock and randomness. The flow is
//!
//! 1. [`classify`] the `Authorization` header: initial request (empty nonce) or a response.
//! 2. Initial: allocate and durably store the next SQN, then [`issue_challenge`] → 401.
//! 3. Response: look up the [`PendingChallenge`] by nonce (single use: remove it), then
//!    [`verify_response`] → bootstrapped (200 + [`success`]), resynchronise (store SQN_MS,
//!    new challenge) or reject (401/403 with a reason).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::bootstrapping_info::BootstrappingInfo;
use crate::btid::Btid;
use crate::digest::{self, AkaNonce, AuthenticationInfo, Challenge, Credentials, Qop};
use crate::kdf::Ks;
use crate::milenage::{Milenage, Sqn};
use crate::uicc::{UiccType, mask_mac};

/// BSF policy.
#[derive(Debug, Clone)]
pub struct BsfConfig {
    /// The BSF FQDN: Digest realm (TS 24.109 §4.2) and B-TID domain (TS 33.220 §4.5.2).
    pub domain: String,
    /// Bootstrapping key lifetime in seconds (BSF policy, TS 33.220 §4.5.2 step 6).
    pub key_lifetime: u64,
    /// How long an issued nonce may be answered, in seconds.
    pub nonce_lifetime: u64,
    /// qop values offered; TS 24.109 §4.2 requires auth-int.
    pub qop: Vec<Qop>,
}

impl BsfConfig {
    /// Defaults: key lifetime 1 day, nonce lifetime 60 s, qop auth-int.
    pub fn new(domain: impl Into<String>) -> Self {
        Self { domain: domain.into(), key_lifetime: 86_400, nonce_lifetime: 60, qop: vec![Qop::AuthInt] }
    }
}

/// What an incoming Ub request is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UbRequest {
    /// First request: IMPI only (TS 24.109 §4.2, empty nonce and response).
    Initial {
        /// The IMPI (Digest username).
        impi: String,
    },
    /// A response to a challenge (possibly with `auts`).
    Response(Box<Credentials>),
}

/// A rejected request: HTTP status and a human-readable reason for the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// 400, 401 or 403.
    pub status: u16,
    /// Why.
    pub reason: &'static str,
}

const fn reject(status: u16, reason: &'static str) -> Rejection {
    Rejection { status, reason }
}

/// Classify a request by its `Authorization` header value.
pub fn classify(authorization: Option<&str>) -> Result<UbRequest, Rejection> {
    let h = authorization.ok_or(reject(400, "missing Authorization header carrying the IMPI"))?;
    let c = Credentials::parse(h).map_err(|_| reject(400, "malformed Authorization header"))?;
    if c.username.is_empty() {
        return Err(reject(400, "empty username (IMPI)"));
    }
    if c.nonce.is_empty() {
        Ok(UbRequest::Initial { impi: c.username })
    } else {
        Ok(UbRequest::Response(Box::new(c)))
    }
}

/// The subscriber data the BSF needs to authenticate (from the HSS/Zh in the spec; from
/// the local store here).
pub struct SubscriberAuth {
    /// MILENAGE with K and OPc.
    pub milenage: Milenage,
    /// AMF for generated vectors (separation bit 0 for non-EPS use, TS 33.102 Annex H).
    pub amf: [u8; 2],
}

/// What the BSF remembers about an outstanding challenge. Zeroized on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct PendingChallenge {
    /// IMPI challenged.
    pub impi: String,
    /// The nonce text sent (lookup key).
    pub nonce: String,
    /// opaque sent.
    pub opaque: String,
    /// RAND.
    pub rand: [u8; 16],
    /// XRES.
    pub xres: [u8; 8],
    /// CK.
    pub ck: [u8; 16],
    /// IK.
    pub ik: [u8; 16],
    /// The SQN used in AUTN.
    pub sqn: Sqn,
    /// When issued (Unix seconds).
    pub issued_at: u64,
    /// GBA_ME or GBA_U run (the subscriber's UICC type when challenged).
    #[zeroize(skip)]
    pub uicc: UiccType,
}

/// The per-challenge inputs the caller provides: durable SQN, randomness, time.
#[derive(Debug, Clone, Copy)]
pub struct ChallengeInput {
    /// SQN for AUTN, already stored durably (so a crash never reuses it).
    pub sqn: Sqn,
    /// Fresh RAND.
    pub rand: [u8; 16],
    /// Fresh opaque.
    pub opaque: [u8; 16],
    /// Now (Unix seconds).
    pub now: u64,
    /// Set `stale=TRUE` (re-challenge after a stale or replayed nonce).
    pub stale: bool,
}

/// Generate an AV for `sqn` (already stored durably by the caller) and build the 401
/// challenge of a GBA_ME run (RFC 3310 §3.1: nonce = base64(RAND || AUTN)).
pub fn issue_challenge(
    cfg: &BsfConfig,
    impi: &str,
    sub: &SubscriberAuth,
    fresh: ChallengeInput,
) -> (Challenge, PendingChallenge) {
    issue_challenge_for(cfg, impi, sub, UiccType::Gba, fresh)
}

/// [`issue_challenge`] for a subscriber with this UICC type: for GBA_U the nonce carries
/// AUTN* (MAC* = MAC ⊕ Trunc(SHA-1(IK)), TS 33.220 §5.3.2 step 4); XRES, CK and IK are
/// those of the unmodified vector.
pub fn issue_challenge_for(
    cfg: &BsfConfig,
    impi: &str,
    sub: &SubscriberAuth,
    uicc: UiccType,
    fresh: ChallengeInput,
) -> (Challenge, PendingChallenge) {
    let ChallengeInput { sqn, rand, opaque, now, stale } = fresh;
    let av = sub.milenage.generate_vector(&rand, sqn, sub.amf);
    let autn = match uicc {
        UiccType::Gba => av.autn,
        UiccType::GbaU => mask_mac(&av.autn, &av.keys.ik),
    };
    let nonce = AkaNonce { rand, autn, server_data: Vec::new() }.encode();
    let opaque = hex::encode(opaque);
    let challenge = Challenge {
        realm: cfg.domain.clone(),
        nonce: nonce.clone(),
        qop: cfg.qop.clone(),
        opaque: Some(opaque.clone()),
        stale,
    };
    let pending = PendingChallenge {
        impi: impi.to_owned(),
        nonce,
        opaque,
        rand,
        xres: av.keys.res,
        ck: av.keys.ck,
        ik: av.keys.ik,
        sqn,
        issued_at: now,
        uicc,
    };
    (challenge, pending)
}

/// A bootstrapping session (TS 33.220 §4.5.2 step 6). Zeroized on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct BootstrapSession {
    /// B-TID text.
    pub btid: String,
    /// Ks = CK || IK.
    pub ks: [u8; 32],
    /// RAND.
    pub rand: [u8; 16],
    /// IMPI.
    pub impi: String,
    /// Bootstrapping time (Unix seconds).
    pub bootstrap_time: u64,
    /// Key expiry (Unix seconds).
    pub expiry: u64,
    /// GBA_ME or GBA_U: on Zn, a GBA_U session gives Ks_ext_NAF, and Ks_int_NAF to a GBA_U
    /// aware NAF (TS 33.220 §5.3.3).
    #[zeroize(skip)]
    pub uicc: UiccType,
}

impl BootstrapSession {
    /// Ks as a key object.
    pub fn ks(&self) -> Ks {
        Ks::from_bytes(self.ks)
    }

    /// Whether the session is usable at `now` (expired sessions must be deleted, TS 24.109
    /// §4.2).
    pub fn is_valid(&self, now: u64) -> bool {
        now < self.expiry
    }
}

/// Outcome of checking a response against its pending challenge.
pub enum Verdict {
    /// RES verified: create the session, answer 200 via [`success`].
    Bootstrapped(BootstrapSession),
    /// Valid AUTS (TS 33.102 §6.3.5): the HE's SQN becomes `sqn_ms`; re-challenge (401).
    Resync {
        /// SQN_MS recovered from AUTS.
        sqn_ms: Sqn,
    },
    /// Refused.
    Rejected(Rejection),
}

/// Verify a response (TS 24.109 §4.2/§4.3/§4.5). The caller has already removed `pending`
/// from its table (each nonce is answerable once: a replay finds no pending challenge).
pub fn verify_response(
    cfg: &BsfConfig,
    pending: &PendingChallenge,
    creds: &Credentials,
    method: &str,
    body: &[u8],
    sub: &SubscriberAuth,
    now: u64,
) -> Verdict {
    if now.saturating_sub(pending.issued_at) > cfg.nonce_lifetime {
        return Verdict::Rejected(reject(401, "stale nonce"));
    }
    if creds.username != pending.impi || creds.realm != cfg.domain {
        return Verdict::Rejected(reject(403, "username or realm does not match the challenge"));
    }
    if creds.opaque.as_deref() != Some(pending.opaque.as_str()) {
        return Verdict::Rejected(reject(403, "opaque does not match the challenge"));
    }
    match creds.qop {
        Some(q) if cfg.qop.contains(&q) => {}
        _ => return Verdict::Rejected(reject(403, "qop not offered")),
    }
    if creds.nc.as_deref() != Some("00000001") {
        return Verdict::Rejected(reject(403, "nonce count must be 00000001 (nonces are single use)"));
    }
    let input = creds.digest_input(method, body);
    if let Some(auts_b64) = &creds.auts {
        // RFC 3310 §3.4: on synchronisation failure the response is computed with an
        // empty password.
        if !digest::digest_eq(&digest::request_digest(b"", &input), &creds.response) {
            return Verdict::Rejected(reject(403, "resynchronisation response does not verify"));
        }
        let auts = STANDARD.decode(auts_b64).ok().and_then(|v| <[u8; 14]>::try_from(v).ok());
        let Some(auts) = auts else {
            return Verdict::Rejected(reject(403, "auts is not base64 of 14 octets"));
        };
        return match sub.milenage.verify_auts(&pending.rand, &auts) {
            Ok(sqn_ms) => Verdict::Resync { sqn_ms },
            Err(_) => Verdict::Rejected(reject(403, "AUTS MAC-S does not verify")),
        };
    }
    if !digest::digest_eq(&digest::request_digest(&pending.xres, &input), &creds.response) {
        return Verdict::Rejected(reject(403, "wrong RES (user authentication failure)"));
    }
    let ks = Ks::from_ck_ik(&pending.ck, &pending.ik);
    Verdict::Bootstrapped(BootstrapSession {
        btid: Btid::new(pending.rand, cfg.domain.clone()).to_string(),
        ks: *ks.as_bytes(),
        rand: pending.rand,
        impi: pending.impi.clone(),
        bootstrap_time: now,
        expiry: now.saturating_add(cfg.key_lifetime),
        uicc: pending.uicc,
    })
}

/// The 200 OK: body (TS 24.109 Annex C) and `Authentication-Info` with rspauth computed
/// with XRES as password over the response body (RFC 2617 §3.2.3, RFC 3310 §3.3).
pub fn success(
    pending: &PendingChallenge,
    creds: &Credentials,
    session: &BootstrapSession,
) -> (String, AuthenticationInfo) {
    let body = BootstrappingInfo { btid: session.btid.clone(), lifetime: session.expiry }.to_xml();
    let rspauth = digest::request_digest(&pending.xres, &creds.rspauth_input(body.as_bytes()));
    let info = AuthenticationInfo { qop: creds.qop, rspauth, cnonce: creds.cnonce.clone(), nc: creds.nc.clone() };
    (body, info)
}
