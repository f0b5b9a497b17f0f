//! KMS communities and their certificates (docs/high-security.md §10.9): what a KMS publishes
//! about itself so that users of *other* KMSs can run MIKEY-SAKKE with its users, and what it
//! knows of other KMSs.
//!
//! A **KMS certificate** is our JSON profile of the TS 33.180 §D.3.2 KmsCertificate (fields of
//! the same names in snake case; `high-security.md` §3.4 on the shelf):
//!
//! ```json
//! {"version": 1, "kms_uri": "kms.b.example", "user_id_format": 1,
//!  "user_key_period": "P1M", "user_key_offset": 0,
//!  "pub_enc_key": "04…", "pub_auth_key": "04…", "kms_domain_list": ["b.example"]}
//! ```
//!
//! - `kms_uri`: the KMS's URI (our KMS FQDN, `kms.<domain>`: its IDRkms, RFC 6509 §4.1).
//! - `user_id_format`: 1 = RFC 6509 ID scheme 1 ("tel URI with monthly keys", applied to any
//!   URI: `"YYYY-MM\0" ‖ URI ‖ "\0"`), the only one our KMS issues keys for. TS 33.180's
//!   UserIdFormat "2" (the hashed UID of F.2.1, which includes the KMS URI) is not issued.
//! - `user_key_period` / `user_key_offset`: `"P1M"` (one UTC calendar month, ISO 8601) and 0 —
//!   the period of scheme 1; TS 33.180 gives seconds, a calendar month is not a fixed number.
//! - `pub_enc_key`: the SAKKE public key Z (RFC 6508 §2.2, 257 octets, hex);
//!   `pub_auth_key`: the ECCSI KPAK (RFC 6507 §2.2, 65 octets, hex).
//! - `kms_domain_list`: the SIP domains whose users this KMS provisions (Secure Chorus
//!   KmsDomainList): a callee `user@d` belongs to the community whose list names `d`.
//!
//! Not in the profile: CertUri, ValidFrom/ValidTo, Revoked (the Secure Chorus form) and a
//! signature over the certificate: a certificate is trusted for how it arrived — the
//! mutually authenticated Zk channel ([`Communities::learn`]), operator configuration, or the
//! MACed `keyprovision` response (UE side, [`crate::keyprov`]).
//!
//! Sans-IO: decoding, validation and the registry; fetching is in [`crate::zk`] and
//! [`crate::server`].

use std::collections::BTreeMap;
use std::sync::RwLock;

use mediasec_mikey::eccsi::{Kpak, POINT_LEN};
use mediasec_mikey::sakke;
use serde::{Deserialize, Serialize};

use crate::error::KmsError;
use crate::identity::KmsUid;

/// The profile version we write and accept.
pub const VERSION: u32 = 1;
/// `user_id_format` of RFC 6509 ID scheme 1 (monthly URI identifiers).
pub const USER_ID_FORMAT_URI_MONTHLY: u8 = 1;
/// `user_key_period` of ID scheme 1: one UTC calendar month (ISO 8601 duration).
pub const USER_KEY_PERIOD_MONTH: &str = "P1M";
/// Largest certificate accepted (octets of JSON).
pub const MAX_LEN: usize = 16 * 1024;
/// Most domains one certificate may list.
pub const MAX_DOMAINS: usize = 64;
/// Media type of a certificate.
pub const CONTENT_TYPE: &str = "application/json";

fn bad(what: impl std::fmt::Display) -> KmsError {
    KmsError::Certificate(what.to_string())
}

/// A KMS certificate as on the wire (module docs). Decode with [`Community::decode`], which
/// validates every field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KmsCertificate {
    /// Profile version ([`VERSION`]).
    pub version: u32,
    /// The KMS URI (IDRkms).
    pub kms_uri: String,
    /// [`USER_ID_FORMAT_URI_MONTHLY`].
    pub user_id_format: u8,
    /// [`USER_KEY_PERIOD_MONTH`].
    pub user_key_period: String,
    /// 0.
    pub user_key_offset: u64,
    /// Z, `04 ‖ x ‖ y`, lower-case hex.
    pub pub_enc_key: String,
    /// KPAK, `04 ‖ x ‖ y`, lower-case hex.
    pub pub_auth_key: String,
    /// The SIP domains the community serves (lower case).
    pub kms_domain_list: Vec<String>,
}

/// A validated KMS certificate: the community's keys, parsed.
#[derive(Clone, Debug)]
pub struct Community {
    cert: KmsCertificate,
    kpak: Kpak,
    z: sakke::PublicKey,
}

/// Whether `d` is a plausible lower-case DNS name (labels of `a-z 0-9 -`, dots between).
fn dns_name(d: &str) -> bool {
    !d.is_empty()
        && d.len() <= 253
        && d.split('.').all(|l| !l.is_empty() && l.len() <= 63 && !l.starts_with('-') && !l.ends_with('-') && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'))
}

impl Community {
    /// The certificate of a community with URI `kms_uri`, keys `kpak` and `z`, serving
    /// `domains` (lower-cased).
    pub fn new(kms_uri: &str, kpak: Kpak, z: sakke::PublicKey, domains: &[String]) -> Result<Self, KmsError> {
        Self::from_certificate(KmsCertificate {
            version: VERSION,
            kms_uri: kms_uri.to_ascii_lowercase(),
            user_id_format: USER_ID_FORMAT_URI_MONTHLY,
            user_key_period: USER_KEY_PERIOD_MONTH.into(),
            user_key_offset: 0,
            pub_enc_key: hex::encode(z.to_uncompressed()),
            pub_auth_key: hex::encode(kpak.to_uncompressed()),
            kms_domain_list: domains.iter().map(|d| d.to_ascii_lowercase()).collect(),
        })
    }

    /// Validates a certificate: version, KMS URI and domains are lower-case DNS names (at
    /// least one domain, at most [`MAX_DOMAINS`], no repeats), ID format and key period
    /// those of ID scheme 1, KPAK a P-256 point (RFC 6507 §2.2), Z a point of the SAKKE curve
    /// (RFC 6508 §2.2). Hex must be lower case, so that a certificate has one encoding (the
    /// UE re-encodes it to check the `keyprovision` MAC).
    pub fn from_certificate(cert: KmsCertificate) -> Result<Self, KmsError> {
        if cert.version != VERSION {
            return Err(bad(format!("version {} (only {VERSION})", cert.version)));
        }
        if !dns_name(&cert.kms_uri) {
            return Err(bad(format!("kms_uri {:?} is not a lower-case DNS name", cert.kms_uri)));
        }
        if cert.user_id_format != USER_ID_FORMAT_URI_MONTHLY || cert.user_key_period != USER_KEY_PERIOD_MONTH || cert.user_key_offset != 0 {
            return Err(bad(format!(
                "{}: user_id_format {}, user_key_period {:?}, user_key_offset {}: only RFC 6509 ID scheme 1 (1, \"P1M\", 0) is supported",
                cert.kms_uri, cert.user_id_format, cert.user_key_period, cert.user_key_offset
            )));
        }
        if cert.kms_domain_list.is_empty() || cert.kms_domain_list.len() > MAX_DOMAINS {
            return Err(bad(format!("{}: kms_domain_list must name 1 to {MAX_DOMAINS} domains", cert.kms_uri)));
        }
        for (i, d) in cert.kms_domain_list.iter().enumerate() {
            if !dns_name(d) {
                return Err(bad(format!("{}: domain {d:?} is not a lower-case DNS name", cert.kms_uri)));
            }
            if cert.kms_domain_list.iter().take(i).any(|e| e == d) {
                return Err(bad(format!("{}: domain {d} listed twice", cert.kms_uri)));
            }
        }
        let lower_hex = |s: &str| s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !lower_hex(&cert.pub_auth_key) || !lower_hex(&cert.pub_enc_key) {
            return Err(bad(format!("{}: keys must be lower-case hex", cert.kms_uri)));
        }
        let kpak_bytes: [u8; POINT_LEN] = hex::decode(&cert.pub_auth_key)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| bad(format!("{}: pub_auth_key is not {POINT_LEN} octets", cert.kms_uri)))?;
        let kpak = Kpak::from_uncompressed(&kpak_bytes).map_err(|e| bad(format!("{}: pub_auth_key: {e}", cert.kms_uri)))?;
        let z_bytes = hex::decode(&cert.pub_enc_key).map_err(|_| bad(format!("{}: pub_enc_key is not hex", cert.kms_uri)))?;
        let z = sakke::PublicKey::from_uncompressed(&z_bytes).map_err(|e| bad(format!("{}: pub_enc_key: {e}", cert.kms_uri)))?;
        Ok(Self { cert, kpak, z })
    }

    /// Parses and validates a certificate's JSON ([`Self::from_certificate`]); at most
    /// [`MAX_LEN`] octets, unknown fields refused. Never panics (fuzz target `kms_certificate`).
    pub fn decode(json: &[u8]) -> Result<Self, KmsError> {
        if json.len() > MAX_LEN {
            return Err(bad(format!("{} octets (at most {MAX_LEN})", json.len())));
        }
        Self::from_certificate(serde_json::from_slice(json).map_err(bad)?)
    }

    /// The JSON of the certificate.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(&self.cert).unwrap_or_default()
    }

    /// The certificate's fields.
    pub fn certificate(&self) -> &KmsCertificate {
        &self.cert
    }

    /// The KMS URI.
    pub fn kms_uri(&self) -> &str {
        &self.cert.kms_uri
    }

    /// The ECCSI KPAK (PubAuthKey).
    pub fn kpak(&self) -> &Kpak {
        &self.kpak
    }

    /// The SAKKE public key Z (PubEncKey).
    pub fn z(&self) -> &sakke::PublicKey {
        &self.z
    }

    /// The SIP domains served.
    pub fn domains(&self) -> &[String] {
        &self.cert.kms_domain_list
    }

    /// Whether users of `domain` (any case) belong to this community.
    pub fn serves(&self, domain: &str) -> bool {
        self.cert.kms_domain_list.iter().any(|d| d.eq_ignore_ascii_case(domain))
    }

    /// Whether this community vouches for the identity URI `uri` (the ECCSI signer IDRi of
    /// an I_MESSAGE signed under its KPAK): a `sip:`/`sips:` URI (or bare `user@domain`)
    /// whose domain it serves. Its KSAK can sign for any identity string, so its KPAK
    /// authenticates only the users of its own `kms_domain_list` (TS 33.180 KmsDomainList).
    /// A `tel:` URI names no domain: no external community vouches for one.
    pub fn vouches_for(&self, uri: &str) -> bool {
        let tel = uri.get(..4).is_some_and(|s| s.eq_ignore_ascii_case("tel:"));
        !tel && KmsUid::from_uri(uri, "").is_ok_and(|u| self.serves(u.domain()))
    }
}

impl PartialEq for Community {
    fn eq(&self, other: &Self) -> bool {
        self.cert == other.cert
    }
}

/// The community of the callee's SIP domain among `communities`.
pub fn of_domain<'a>(communities: &'a [Community], domain: &str) -> Option<&'a Community> {
    communities.iter().find(|c| c.serves(domain))
}

/// How an external certificate became known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// Operator configuration (`mediasec kms serve --community-cert`).
    Configured,
    /// Fetched over Zk from the peer KMS of this domain, at this Unix time.
    Zk {
        /// The peer's Zk domain (authenticated by its TLS certificate `kms.<domain>`).
        peer: String,
        /// When it was fetched (Unix seconds).
        fetched: u64,
    },
}

/// The external KMS communities a KMS knows, by KMS URI (its own is not kept here: it is
/// made from its current keys, `Service::own_certificate`).
#[derive(Debug, Default)]
pub struct Communities {
    by_uri: RwLock<BTreeMap<String, (Community, Source)>>,
}

impl Communities {
    /// Adds or replaces a configured certificate. Refused: our own URI or one of our
    /// `own_domains`, or a domain another known community already serves.
    pub fn configure(&self, c: Community, own_uri: &str, own_domains: &[String]) -> Result<(), KmsError> {
        self.insert(c, Source::Configured, own_uri, own_domains)
    }

    /// Adds or replaces the certificate the Zk peer of `peer` (authenticated as
    /// `kms.<peer>` by mutual TLS: the trust anchor) sent at Unix time `now`. The peer vouches
    /// only for itself: the KMS URI must be `kms.<peer>` and every domain `peer` or a
    /// subdomain of it; a configured certificate of the same URI takes precedence (the
    /// learned one is refused); the rules of [`Self::configure`] apply.
    pub fn learn(&self, peer: &str, c: Community, now: u64, own_uri: &str, own_domains: &[String]) -> Result<(), KmsError> {
        let want = mediasec_kms_zk::pki::kms_name(peer);
        if c.kms_uri() != want {
            return Err(bad(format!("Zk peer {peer} sent the certificate of {}, not of {want}", c.kms_uri())));
        }
        let suffix = format!(".{peer}");
        if let Some(d) = c.domains().iter().find(|d| *d != peer && !d.ends_with(&suffix)) {
            return Err(bad(format!("Zk peer {peer} claims domain {d}, outside {peer}: only configuration can add it")));
        }
        if matches!(self.get_with_source(c.kms_uri()), Some((_, Source::Configured))) {
            return Err(bad(format!("{} is configured; the certificate learned over Zk is not used", c.kms_uri())));
        }
        self.insert(c, Source::Zk { peer: peer.to_owned(), fetched: now }, own_uri, own_domains)
    }

    fn insert(&self, c: Community, source: Source, own_uri: &str, own_domains: &[String]) -> Result<(), KmsError> {
        if c.kms_uri().eq_ignore_ascii_case(own_uri) {
            return Err(bad(format!("{} is this KMS", c.kms_uri())));
        }
        if let Some(d) = c.domains().iter().find(|d| own_domains.iter().any(|o| o.eq_ignore_ascii_case(d))) {
            return Err(bad(format!("{} claims {d}, a domain of this KMS", c.kms_uri())));
        }
        let mut map = self.by_uri.write().map_err(|_| bad("registry lock poisoned"))?;
        if let Some((other, _)) = map.values().find(|(o, _)| o.kms_uri() != c.kms_uri() && c.domains().iter().any(|d| o.serves(d))) {
            return Err(bad(format!("{} claims a domain {} already serves", c.kms_uri(), other.kms_uri())));
        }
        map.insert(c.kms_uri().to_owned(), (c, source));
        Ok(())
    }

    /// The community of `kms_uri`, if known.
    pub fn get(&self, kms_uri: &str) -> Option<Community> {
        self.get_with_source(kms_uri).map(|(c, _)| c)
    }

    /// The community of `kms_uri` and how it became known.
    pub fn get_with_source(&self, kms_uri: &str) -> Option<(Community, Source)> {
        self.by_uri.read().ok()?.get(&kms_uri.to_ascii_lowercase()).cloned()
    }

    /// Every known external community, by KMS URI.
    pub fn all(&self) -> Vec<(Community, Source)> {
        self.by_uri.read().map(|m| m.values().cloned().collect()).unwrap_or_default()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use mediasec_mikey::eccsi::KmsSecret;
    use proptest::prelude::*;

    fn keys(seed: u8) -> (Kpak, sakke::PublicKey) {
        (KmsSecret::from_bytes(&[seed; 32]).unwrap().kpak(), sakke::KmsSecret::from_bytes(&[seed; 32]).unwrap().public_key())
    }

    fn community(uri: &str, seed: u8, domains: &[&str]) -> Community {
        let (kpak, z) = keys(seed);
        Community::new(uri, kpak, z, &domains.iter().map(|d| (*d).to_owned()).collect::<Vec<_>>()).unwrap()
    }

    /// Encode → decode gives the same certificate and keys; every field is checked: version,
    /// names, ID format and period, each key (wrong length, not on its curve, upper-case hex),
    /// domains (none, repeated, not DNS), unknown fields, oversize input.
    #[test]
    fn encode_decode_and_validation() {
        let c = community("kms.b.example", 0x42, &["b.example", "sub.b.example"]);
        let json = c.encode();
        let back = Community::decode(&json).unwrap();
        assert_eq!(back, c);
        assert_eq!((back.kpak(), back.z()), (c.kpak(), c.z()));
        assert!(back.serves("B.example") && back.serves("sub.b.example") && !back.serves("c.example"));
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        let (other_kpak, _) = keys(0x43);
        let mut off_curve = c.certificate().pub_enc_key.clone();
        off_curve.replace_range(off_curve.len() - 2.., if off_curve.ends_with("00") { "01" } else { "00" });
        let cases: Vec<(&str, serde_json::Value)> = vec![
            ("version", 2.into()),
            ("kms_uri", "KMS.b.example".into()),
            ("kms_uri", "kms..example".into()),
            ("user_id_format", 2.into()),
            ("user_key_period", "2592000".into()),
            ("user_key_offset", 1.into()),
            ("pub_auth_key", hex::encode(&other_kpak.to_uncompressed()[..64]).into()),
            ("pub_auth_key", c.certificate().pub_auth_key.to_ascii_uppercase().into()),
            ("pub_enc_key", off_curve.into()),
            ("pub_enc_key", "zz".into()),
            ("kms_domain_list", serde_json::json!([])),
            ("kms_domain_list", serde_json::json!(["b.example", "b.example"])),
            ("kms_domain_list", serde_json::json!(["b example"])),
            ("extra", 1.into()),
        ];
        for (field, value) in cases {
            let mut t = v.clone();
            t[field] = value.clone();
            assert!(Community::decode(&serde_json::to_vec(&t).unwrap()).is_err(), "{field} = {value}");
        }
        assert!(Community::decode(&vec![b' '; MAX_LEN + 1]).is_err());
        assert!(Community::decode(b"").is_err() && Community::decode(b"{}").is_err());
    }

    /// The registry: a Zk peer vouches only for `kms.<peer>` and its own domains; configured
    /// certificates win over learned ones; nobody may claim our URI, our domains or a domain
    /// another community serves; a re-fetch replaces.
    #[test]
    fn registry_rules() {
        let own = ["a.example".to_owned()];
        let r = Communities::default();
        let b = community("kms.b.example", 0x42, &["b.example"]);
        r.learn("b.example", b.clone(), 10, "kms.a.example", &own).unwrap();
        assert_eq!(r.get_with_source("kms.b.example"), Some((b.clone(), Source::Zk { peer: "b.example".into(), fetched: 10 })));
        assert!(r.learn("c.example", b.clone(), 10, "kms.a.example", &own).is_err(), "not the peer's own certificate");
        assert!(r.learn("b.example", community("kms.b.example", 0x42, &["b.example", "c.example"]), 10, "kms.a.example", &own).is_err(), "a domain outside the peer's");
        assert!(r.learn("b.example", community("kms.b.example", 0x42, &["b.example", "a.example"]), 10, "kms.a.example", &own).is_err());
        assert!(r.configure(community("kms.a.example", 0x44, &["x.example"]), "kms.a.example", &own).is_err(), "our own URI");
        assert!(r.configure(community("kms.c.example", 0x44, &["b.example"]), "kms.a.example", &own).is_err(), "b.example is served by kms.b.example");
        let renewed = community("kms.b.example", 0x45, &["b.example", "east.b.example"]);
        r.learn("b.example", renewed.clone(), 20, "kms.a.example", &own).unwrap();
        assert_eq!(r.get("kms.b.example"), Some(renewed));
        let configured = community("kms.b.example", 0x46, &["b.example"]);
        r.configure(configured.clone(), "kms.a.example", &own).unwrap();
        assert!(r.learn("b.example", b, 30, "kms.a.example", &own).is_err(), "configuration wins");
        assert_eq!(r.get_with_source("kms.b.example"), Some((configured, Source::Configured)));
        assert_eq!(r.all().len(), 1);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Property: any valid certificate survives encode → decode unchanged.
        #[test]
        fn round_trip(seed in 1u8..=0xfe, labels in proptest::collection::vec("[a-z][a-z0-9-]{0,10}[a-z0-9]", 1..4), extra in proptest::collection::btree_set("[a-z]{1,8}", 0..4)) {
            let base = labels.join(".");
            let mut domains = vec![base.clone()];
            domains.extend(extra.iter().map(|e| format!("{e}.{base}")));
            let (kpak, z) = keys(seed);
            let c = Community::new(&format!("kms.{base}"), kpak, z, &domains).unwrap();
            let back = Community::decode(&c.encode()).unwrap();
            prop_assert_eq!(back.certificate(), c.certificate());
            prop_assert!(back.kpak() == c.kpak() && back.z() == c.z());
        }

        /// Arbitrary bytes never panic the decoder.
        #[test]
        fn arbitrary_input_never_panics(body in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = Community::decode(&body);
        }
    }
}
