//! The voicemail server as a NAF (TS 33.220 §4.4.4, TS 24.109 §5.2): HTTP Digest (RFC 2617,
//! algorithm `MD5`, qop `auth`, realm `3GPP-bootstrapping@<NAF FQDN>`, which the client checks
//! names the server it meant: TS 33.222 §5.3) where the username is the B-TID and the password the base64 of
//! Ks_NAF for the server's NAF FQDN, fetched from the BSF over Zn (the KMS's Zn client,
//! `mediasec_kms::bsf_zn::BsfZn`, with the HTTP Digest Ua protocol id) together with the
//! user's IMPUs, which name the mailboxes the user may read.
//!
//! Nonces are issued here and hold no state until they authenticate: issue time, a random salt
//! and an HMAC-SHA-256 tag (16 octets) under a key of this process, valid [`NONCE_LIFETIME`],
//! so clients asking for challenges without end cannot make the NAF forget a user's nonce.
//! A nonce-count must grow per nonce (RFC 2617 §3.2.2: replays of a request are refused); the
//! counts of at most [`MAX_NONCES`] authenticated nonces are kept (the oldest is forgotten
//! first). Digests and tags are compared in constant time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use mediasec_gba::digest::{Challenge, Credentials, NAF_ALGORITHM, Qop, digest_eq, request_digest};
use mediasec_kms::zn::Zn;
use sha2::Sha256;
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
/// Nonce-counts of authenticated nonces kept at most.
pub const MAX_NONCES: usize = 4096;
/// Octets of a nonce's HMAC-SHA-256 tag.
const TAG_LEN: usize = 16;

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
    issued: u64,
    last_nc: u32,
}

/// The NAF side of Ua HTTP Digest.
pub struct NafAuth {
    zn: Arc<dyn Zn>,
    realm: String,
    /// Keys the nonces' tags.
    key: Zeroizing<[u8; 32]>,
    /// Nonce-counts of the nonces that authenticated.
    nonces: Mutex<HashMap<String, Nonce>>,
}

impl NafAuth {
    /// The NAF `naf_fqdn`, authenticating against the BSF (Zn source `zn`, keyed for it).
    pub fn new(zn: Arc<dyn Zn>, naf_fqdn: &str) -> Self {
        Self { zn, realm: realm(naf_fqdn), key: Zeroizing::new(rand::random()), nonces: Mutex::new(HashMap::new()) }
    }

    /// The tag of a nonce issued at `issued` with `salt`.
    fn tag(&self, issued: u64, salt: &[u8]) -> Option<Hmac<Sha256>> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&*self.key).ok()?;
        mac.update(&issued.to_be_bytes());
        mac.update(salt);
        Some(mac)
    }

    /// A `WWW-Authenticate` value with a fresh nonce issued at Unix time `now`.
    pub fn challenge(&self, now: u64) -> String {
        let salt: [u8; 16] = rand::random();
        let mut raw = now.to_be_bytes().to_vec();
        raw.extend_from_slice(&salt);
        if let Some(mac) = self.tag(now, &salt) {
            raw.extend_from_slice(mac.finalize().into_bytes().get(..TAG_LEN).unwrap_or_default());
        }
        let nonce = STANDARD.encode(raw);
        Challenge { realm: self.realm.clone(), nonce, qop: vec![Qop::Auth], opaque: None, stale: false }.to_header_with(NAF_ALGORITHM)
    }

    /// When `nonce` was issued, if this NAF issued it (its tag verifies) and it is still valid
    /// at `now`.
    fn issued(&self, nonce: &str, now: u64) -> Option<u64> {
        let raw = STANDARD.decode(nonce).ok()?;
        let (time, rest) = raw.split_first_chunk::<8>()?;
        let (salt, tag) = rest.split_first_chunk::<16>()?;
        let issued = u64::from_be_bytes(*time);
        if tag.len() != TAG_LEN || issued > now || now - issued >= NONCE_LIFETIME.as_secs() {
            return None;
        }
        self.tag(issued, salt)?.verify_truncated_left(tag).ok()?;
        Some(issued)
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
        let issued = self.issued(&c.nonce, now).ok_or_else(|| unauth("unknown or expired nonce"))?;
        let key = self.zn.naf_key(&c.username, now).await.map_err(|e| Refusal::Unavailable(e.to_string()))?.ok_or_else(|| unauth("unknown or expired B-TID (bootstrap again)"))?;
        let password = Zeroizing::new(STANDARD.encode(&*key.ks_naf));
        let expected = request_digest(password.as_bytes(), &c.digest_input(method, &[]));
        if !digest_eq(&expected, &c.response) {
            return Err(unauth("wrong digest"));
        }
        // Replay: the nonce-count must grow (checked after the digest, so a forger cannot
        // burn a user's counts).
        let mut nonces = self.nonces.lock().map_err(|_| Refusal::Unavailable("nonce table".into()))?;
        nonces.retain(|_, n| now.saturating_sub(n.issued) < NONCE_LIFETIME.as_secs());
        if nonces.len() >= MAX_NONCES
            && !nonces.contains_key(&c.nonce)
            && let Some(oldest) = nonces.iter().min_by_key(|(_, n)| n.issued).map(|(k, _)| k.clone())
        {
            nonces.remove(&oldest);
        }
        let entry = nonces.entry(c.nonce).or_insert(Nonce { issued, last_nc: 0 });
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
        let challenge = naf.challenge(0);
        assert!(challenge.starts_with("Digest realm=\"3GPP-bootstrapping@vm.a.example\"") && challenge.contains("algorithm=MD5"), "{challenge}");
        assert!(authorization(&challenge, "GET", URI, "kms.a.example", "btid@bsf", &KEY).is_err(), "a challenge of another NAF is not answered");
        let good = authorization(&challenge, "GET", URI, "vm.a.example", "btid@bsf", &KEY).expect("answer");
        let who = naf.verify("GET", URI, Some(&good), 0).await.map_err(|_| "refused").expect("authenticated");
        assert_eq!(who.impus, ["sip:carol@a.example"]);
        refused(naf.verify("GET", URI, Some(&good), 0).await, "replayed nonce-count");
        refused(naf.verify("GET", URI, None, 0).await, "no Authorization");
        let other_uri = authorization(&naf.challenge(0), "GET", "/voicemail/v1/messages/1", "vm.a.example", "btid@bsf", &KEY).expect("answer");
        refused(naf.verify("GET", URI, Some(&other_uri), 0).await, "digest-uri");
        let wrong_method = authorization(&naf.challenge(0), "DELETE", URI, "vm.a.example", "btid@bsf", &KEY).expect("answer");
        refused(naf.verify("GET", URI, Some(&wrong_method), 0).await, "wrong digest");
        let wrong_key = authorization(&naf.challenge(0), "GET", URI, "vm.a.example", "btid@bsf", &[6; 32]).expect("answer");
        refused(naf.verify("GET", URI, Some(&wrong_key), 0).await, "wrong digest");
        let unknown = authorization(&naf.challenge(0), "GET", URI, "vm.a.example", "other@bsf", &KEY).expect("answer");
        refused(naf.verify("GET", URI, Some(&unknown), 0).await, "B-TID");
        let foreign = authorization(&NafAuth::new(Arc::new(StaticZn::default()), "vm.a.example").challenge(0), "GET", URI, "vm.a.example", "btid@bsf", &KEY).expect("answer");
        refused(naf.verify("GET", URI, Some(&foreign), 0).await, "unknown or expired nonce");
        let aka = good.replace("algorithm=MD5", "algorithm=AKAv1-MD5");
        refused(naf.verify("GET", URI, Some(&aka), 0).await, "algorithm");
        refused(naf.verify("GET", URI, Some("Basic Zm9vOmJhcg=="), 0).await, "Authorization");
    }

    /// A client asking for challenges without end (each 401 issues one) cannot make the NAF
    /// forget the nonce a user is about to answer.
    #[tokio::test]
    async fn a_flood_of_challenges_does_not_evict_a_users_nonce() {
        let naf = naf();
        let challenge = naf.challenge(0);
        for _ in 0..=MAX_NONCES {
            let _ = naf.challenge(0);
        }
        let good = authorization(&challenge, "GET", URI, "vm.a.example", "btid@bsf", &KEY).expect("answer");
        assert!(naf.verify("GET", URI, Some(&good), 0).await.is_ok(), "the user's nonce was evicted");
        // A nonce is valid NONCE_LIFETIME after its issue; one whose tag is changed or cut
        // short was not issued here.
        let late = authorization(&naf.challenge(0), "GET", URI, "vm.a.example", "btid@bsf", &KEY).expect("answer");
        refused(naf.verify("GET", URI, Some(&late), NONCE_LIFETIME.as_secs()).await, "unknown or expired nonce");
        let ch = naf.challenge(0);
        let nonce = ch.split("nonce=\"").nth(1).and_then(|r| r.split('"').next()).expect("nonce");
        let raw = STANDARD.decode(nonce).expect("base64");
        let mut flipped = raw.clone();
        if let Some(b) = flipped.last_mut() {
            *b ^= 1;
        }
        for forged in [flipped, raw.get(..25).expect("cut").to_vec()] {
            let ch = ch.replace(nonce, &STANDARD.encode(&forged));
            let a = authorization(&ch, "GET", URI, "vm.a.example", "btid@bsf", &KEY).expect("answer");
            refused(naf.verify("GET", URI, Some(&a), 0).await, "unknown or expired nonce");
        }
    }
}
