//! The voicemail server as a NAF (TS 33.220 §4.4.4, TS 24.109 §5.2): HTTP Digest (RFC 2617,
//! algorithm `MD5`, qop `auth`) where the username is the B-TID and the password the base64 of
//! Ks_NAF for the server's NAF FQDN, fetched from the BSF over Zn (the KMS's Zn client,
//! `mediasec_kms::bsf_zn::BsfZn`, with the HTTP Digest Ua protocol id) together with the
//! user's IMPUs, which name the mailboxes the user may read.
//!
//! Nonces are issued here, valid [`NONCE_LIFETIME`], at most [`MAX_NONCES`] outstanding (the
//! oldest is forgotten first); a nonce-count must grow per nonce (RFC 2617 §3.2.2: replays of
//! a request are refused). Digests are compared in constant time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use mediasec_gba::digest::{Challenge, Credentials, NAF_ALGORITHM, Qop, digest_eq, request_digest};
use mediasec_kms::zn::Zn;
use zeroize::Zeroizing;

/// The realm of a GBA NAF's Digest challenge (TS 24.109 §5.2.2: the constant string that
/// tells the UE to answer with its bootstrapped key).
pub const REALM: &str = "3GPP-bootstrapping";
/// How long an issued nonce is accepted.
pub const NONCE_LIFETIME: Duration = Duration::from_secs(300);
/// Outstanding nonces kept at most.
pub const MAX_NONCES: usize = 4096;

/// Who a request authenticated as.
#[derive(Clone, Debug)]
pub struct Authenticated {
    /// The B-TID.
    pub btid: String,
    /// The user's IMPUs (from Zn).
    pub impus: Vec<String>,
}

/// Why a request is not authenticated.
#[derive(Debug)]
pub enum Refusal {
    /// 401 with a fresh challenge (the reason goes to the log and the body).
    Unauthenticated(String),
    /// 503: Zn could not be asked.
    Unavailable(String),
}

struct Nonce {
    issued: Instant,
    last_nc: u32,
}

/// The NAF side of Ua HTTP Digest.
pub struct NafAuth {
    zn: Arc<dyn Zn>,
    nonces: Mutex<HashMap<String, Nonce>>,
}

impl NafAuth {
    /// Authenticates against the BSF (Zn source `zn`, keyed for this NAF's FQDN).
    pub fn new(zn: Arc<dyn Zn>) -> Self {
        Self { zn, nonces: Mutex::new(HashMap::new()) }
    }

    /// A `WWW-Authenticate` value with a fresh nonce.
    pub fn challenge(&self) -> String {
        let nonce = STANDARD.encode(rand::random::<[u8; 24]>());
        if let Ok(mut n) = self.nonces.lock() {
            n.retain(|_, v| v.issued.elapsed() < NONCE_LIFETIME);
            if n.len() >= MAX_NONCES
                && let Some(oldest) = n.iter().min_by_key(|(_, v)| v.issued).map(|(k, _)| k.clone())
            {
                n.remove(&oldest);
            }
            n.insert(nonce.clone(), Nonce { issued: Instant::now(), last_nc: 0 });
        }
        Challenge { realm: REALM.into(), nonce, qop: vec![Qop::Auth], opaque: None, stale: false }.to_header_with(NAF_ALGORITHM)
    }

    /// Checks `authorization` of a `method` request for `uri` (path and query as sent) at Unix
    /// time `now`.
    pub async fn verify(&self, method: &str, uri: &str, authorization: Option<&str>, now: u64) -> Result<Authenticated, Refusal> {
        let unauth = |s: &str| Refusal::Unauthenticated(s.to_owned());
        let header = authorization.ok_or_else(|| unauth("no Authorization"))?;
        let c = Credentials::parse_with(header, NAF_ALGORITHM).map_err(|e| Refusal::Unauthenticated(format!("Authorization: {e}")))?;
        if c.realm != REALM {
            return Err(unauth("wrong realm"));
        }
        if c.uri != uri {
            return Err(unauth("digest-uri is not the request URI"));
        }
        let nc = match (c.qop, c.nc.as_deref()) {
            (Some(Qop::Auth), Some(nc)) => u32::from_str_radix(nc, 16).map_err(|_| unauth("bad nc"))?,
            _ => return Err(unauth("qop=auth required")),
        };
        {
            let nonces = self.nonces.lock().map_err(|_| Refusal::Unavailable("nonce table".into()))?;
            match nonces.get(&c.nonce) {
                Some(n) if n.issued.elapsed() < NONCE_LIFETIME => {}
                _ => return Err(unauth("unknown or expired nonce")),
            }
        }
        let key = self.zn.naf_key(&c.username, now).await.map_err(|e| Refusal::Unavailable(e.to_string()))?.ok_or_else(|| unauth("unknown or expired B-TID (bootstrap again)"))?;
        let password = Zeroizing::new(STANDARD.encode(&*key.ks_naf));
        let expected = request_digest(password.as_bytes(), &c.digest_input(method, &[]));
        if !digest_eq(&expected, &c.response) {
            return Err(unauth("wrong digest"));
        }
        // Replay: the nonce-count must grow (checked after the digest, so a forger cannot
        // burn a user's counts).
        let mut nonces = self.nonces.lock().map_err(|_| Refusal::Unavailable("nonce table".into()))?;
        let entry = nonces.get_mut(&c.nonce).ok_or_else(|| unauth("unknown or expired nonce"))?;
        if nc <= entry.last_nc {
            return Err(unauth("replayed nonce-count"));
        }
        entry.last_nc = nc;
        Ok(Authenticated { btid: c.username, impus: key.impus.clone() })
    }
}

/// The owner's `Authorization` answering `challenge` for `method uri`: username `btid`,
/// password base64(Ks_NAF) (TS 24.109 §5.2.2).
pub fn authorization(challenge: &str, method: &str, uri: &str, btid: &str, ks_naf: &[u8]) -> Result<String, mediasec_gba::GbaError> {
    let ch = Challenge::parse_with(challenge, NAF_ALGORITHM)?;
    let password = Zeroizing::new(STANDARD.encode(ks_naf));
    let mut c = Credentials {
        username: btid.to_owned(),
        realm: ch.realm,
        nonce: ch.nonce,
        uri: uri.to_owned(),
        algorithm: Some(NAF_ALGORITHM.into()),
        qop: Some(Qop::Auth),
        nc: Some("00000001".into()),
        cnonce: Some(hex::encode(rand::random::<[u8; 12]>())),
        opaque: ch.opaque,
        ..Credentials::default()
    };
    c.response = request_digest(password.as_bytes(), &c.digest_input(method, &[]));
    Ok(c.to_header())
}
