//! The voicemail server as a NAF (TS 33.220 §4.4.4, TS 24.109 §5.2): HTTP Digest (RFC 2617,
//! algorithm `MD5`, qop `auth`, realm `3GPP-bootstrapping@<NAF FQDN>`, which the client checks
//! names the server it meant: TS 33.222 §5.3) where the username is the B-TID and the password the base64 of
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

/// The realm prefix of a GBA NAF's Digest challenge, followed by the NAF FQDN (TS 24.109
/// §5.2.2: it tells the UE to answer with its bootstrapped key for that NAF).
pub const REALM_PREFIX: &str = "3GPP-bootstrapping@";

/// The realm of NAF `naf_fqdn`.
pub fn realm(naf_fqdn: &str) -> String {
    format!("{REALM_PREFIX}{naf_fqdn}")
}
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
    realm: String,
    nonces: Mutex<HashMap<String, Nonce>>,
}

impl NafAuth {
    /// The NAF `naf_fqdn`, authenticating against the BSF (Zn source `zn`, keyed for it).
    pub fn new(zn: Arc<dyn Zn>, naf_fqdn: &str) -> Self {
        Self { zn, realm: realm(naf_fqdn), nonces: Mutex::new(HashMap::new()) }
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
        Challenge { realm: self.realm.clone(), nonce, qop: vec![Qop::Auth], opaque: None, stale: false }.to_header_with(NAF_ALGORITHM)
    }

    /// Checks `authorization` of a `method` request for `uri` (path and query as sent) at Unix
    /// time `now`.
    pub async fn verify(&self, method: &str, uri: &str, authorization: Option<&str>, now: u64) -> Result<Authenticated, Refusal> {
        let unauth = |s: &str| Refusal::Unauthenticated(s.to_owned());
        let header = authorization.ok_or_else(|| unauth("no Authorization"))?;
        let c = Credentials::parse_with(header, NAF_ALGORITHM).map_err(|e| Refusal::Unauthenticated(format!("Authorization: {e}")))?;
        if c.realm != self.realm {
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
/// password base64(Ks_NAF) for `naf_fqdn` (TS 24.109 §5.2.2). A challenge whose realm is not
/// `3GPP-bootstrapping@naf_fqdn` is refused: the key is for that NAF only.
pub fn authorization(challenge: &str, method: &str, uri: &str, naf_fqdn: &str, btid: &str, ks_naf: &[u8]) -> Result<String, mediasec_gba::GbaError> {
    let ch = Challenge::parse_with(challenge, NAF_ALGORITHM)?;
    if ch.realm != realm(naf_fqdn) {
        return Err(mediasec_gba::GbaError::Unsupported { param: "realm", value: ch.realm });
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use mediasec_kms::zn::{NafKey, StaticZn};

    const KEY: [u8; 32] = [5; 32];
    const URI: &str = "/voicemail/v1/messages";

    fn naf() -> NafAuth {
        let mut zn = StaticZn::default();
        zn.insert("btid@bsf", NafKey::new(&KEY, vec!["sip:carol@a.example".into()], u64::MAX));
        NafAuth::new(Arc::new(zn), "vm.a.example")
    }

    fn refused(r: Result<Authenticated, Refusal>, why: &str) {
        match r {
            Err(Refusal::Unauthenticated(w)) => assert!(w.contains(why), "{w}"),
            Err(Refusal::Unavailable(w)) => panic!("unavailable: {w}"),
            Ok(a) => panic!("authenticated {a:?}, expected {why}"),
        }
    }

    #[tokio::test]
    async fn digest_with_ks_naf_authenticates_once_and_everything_else_is_refused() {
        let naf = naf();
        let challenge = naf.challenge();
        assert!(challenge.starts_with("Digest realm=\"3GPP-bootstrapping@vm.a.example\"") && challenge.contains("algorithm=MD5"), "{challenge}");
        assert!(authorization(&challenge, "GET", URI, "kms.a.example", "btid@bsf", &KEY).is_err(), "a challenge of another NAF is not answered");
        let good = authorization(&challenge, "GET", URI, "vm.a.example", "btid@bsf", &KEY).expect("answer");
        let who = naf.verify("GET", URI, Some(&good), 0).await.map_err(|_| "refused").expect("authenticated");
        assert_eq!(who.impus, ["sip:carol@a.example"]);
        refused(naf.verify("GET", URI, Some(&good), 0).await, "replayed nonce-count");
        refused(naf.verify("GET", URI, None, 0).await, "no Authorization");
        let other_uri = authorization(&naf.challenge(), "GET", "/voicemail/v1/messages/1", "vm.a.example", "btid@bsf", &KEY).expect("answer");
        refused(naf.verify("GET", URI, Some(&other_uri), 0).await, "digest-uri");
        let wrong_method = authorization(&naf.challenge(), "DELETE", URI, "vm.a.example", "btid@bsf", &KEY).expect("answer");
        refused(naf.verify("GET", URI, Some(&wrong_method), 0).await, "wrong digest");
        let wrong_key = authorization(&naf.challenge(), "GET", URI, "vm.a.example", "btid@bsf", &[6; 32]).expect("answer");
        refused(naf.verify("GET", URI, Some(&wrong_key), 0).await, "wrong digest");
        let unknown = authorization(&naf.challenge(), "GET", URI, "vm.a.example", "other@bsf", &KEY).expect("answer");
        refused(naf.verify("GET", URI, Some(&unknown), 0).await, "B-TID");
        let foreign = authorization(&NafAuth::new(Arc::new(StaticZn::default()), "vm.a.example").challenge(), "GET", URI, "vm.a.example", "btid@bsf", &KEY).expect("answer");
        refused(naf.verify("GET", URI, Some(&foreign), 0).await, "unknown or expired nonce");
        let aka = good.replace("algorithm=MD5", "algorithm=AKAv1-MD5");
        refused(naf.verify("GET", URI, Some(&aka), 0).await, "algorithm");
        refused(naf.verify("GET", URI, Some("Basic Zm9vOmJhcg=="), 0).await, "Authorization");
    }
}
