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
//! - `valid_from` / `valid_to` (TS 33.180 ValidFrom / ValidTo, version 2): the window, UTC
//!   `YYYY-MM-DDTHH:MM:SSZ`, in which the certificate's keys are *the* keys of the community
//!   (each absent = unbounded on that side); `revoked` (Revoked, version 2): true when the
//!   KMS withdrew them. A KMS holds one or more generations of (KSAK, z)
//!   ([`crate::generations`]) and publishes one certificate per generation, windows
//!   contiguous and disjoint. A receiver uses the certificate valid at the I_MESSAGE's T
//!   ([`at`]); none valid there is a typed refusal ([`NotValid`]).
//!
//! **Versions.** A certificate without any of the three (a KMS that never rotated) is written
//! as version 1, byte for byte the form of before, so KMSs and UEs that know only version 1
//! keep accepting it; one with any of them is version 2. Both are accepted; a version 1
//! certificate carrying a version 2 field is refused.
//!
//! **Sets.** What a KMS publishes (`GET /keymanagement/certificate`, on Zk and Ua) is its
//! certificate set ([`encode_set`], [`decode_set`]): the certificate object itself when it
//! has one generation, a JSON array of its generations' certificates (oldest first) otherwise.
//!
//! Not in the profile: CertUri (the Secure Chorus form) and a signature over the
//! certificate: a certificate is trusted for how it arrived — the mutually authenticated Zk
//! channel ([`Communities::learn`]), operator configuration, or the MACed `keyprovision`
//! response (UE side, [`crate::keyprov`]).
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

/// The profile version of certificates with a validity window or revocation (written when
/// one of `valid_from`, `valid_to`, `revoked` is set; module docs "Versions").
pub const VERSION: u32 = 2;
/// The version of certificates without them (written for an unbounded, unrevoked one).
pub const VERSION_1: u32 = 1;
/// `user_id_format` of RFC 6509 ID scheme 1 (monthly URI identifiers).
pub const USER_ID_FORMAT_URI_MONTHLY: u8 = 1;
/// `user_key_period` of ID scheme 1: one UTC calendar month (ISO 8601 duration).
pub const USER_KEY_PERIOD_MONTH: &str = "P1M";
/// Largest certificate accepted (octets of JSON).
pub const MAX_LEN: usize = 16 * 1024;
/// Largest certificate set accepted (octets of JSON, [`decode_set`]).
pub const MAX_SET_LEN: usize = 8 * MAX_LEN;
/// Most certificates (generations) in one set.
pub const MAX_SET: usize = 8;
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
    /// ValidFrom: first instant of validity, `YYYY-MM-DDTHH:MM:SSZ` (version 2; absent:
    /// unbounded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_from: Option<String>,
    /// ValidTo: first instant *after* the validity (version 2; absent: unbounded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_to: Option<String>,
    /// Revoked (version 2): the KMS withdrew these keys; absent = false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub revoked: bool,
}

/// A validated KMS certificate: the community's keys and validity, parsed.
#[derive(Clone, Debug)]
pub struct Community {
    cert: KmsCertificate,
    kpak: Kpak,
    z: sakke::PublicKey,
    /// Unix seconds of `valid_from` (0 when unbounded) and `valid_to` (`None`: unbounded).
    from: u64,
    to: Option<u64>,
}

/// Why no certificate of a community may be used at an instant ([`at`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotValid {
    /// The certificate valid at `at` was revoked by its KMS.
    #[error("the KMS certificate of {kms_uri} valid at {} is revoked", fmt_time(*at))]
    Revoked {
        /// The community's KMS URI.
        kms_uri: String,
        /// The instant asked (Unix seconds).
        at: u64,
    },
    /// Every certificate held ended before `at`.
    #[error("the KMS certificate of {kms_uri} expired at {} (asked for {}): its keys are no longer valid", fmt_time(*valid_to), fmt_time(*at))]
    Expired {
        /// The community's KMS URI.
        kms_uri: String,
        /// The latest end of validity held (Unix seconds).
        valid_to: u64,
        /// The instant asked (Unix seconds).
        at: u64,
    },
    /// No certificate held is valid yet at `at`.
    #[error("no KMS certificate of {kms_uri} is valid at {} (the next from {})", fmt_time(*at), fmt_time(*valid_from))]
    NotYetValid {
        /// The community's KMS URI.
        kms_uri: String,
        /// The earliest start of validity after `at` (Unix seconds).
        valid_from: u64,
        /// The instant asked (Unix seconds).
        at: u64,
    },
}

/// `YYYY-MM-DDTHH:MM:SSZ` of Unix time `t` (xs:dateTime in UTC, as TS 33.180 writes it).
pub fn fmt_time(t: u64) -> String {
    mediasec_gba::bootstrapping_info::format_time(t)
}

/// Unix seconds of a canonical `YYYY-MM-DDTHH:MM:SSZ` (the form [`fmt_time`] writes, so that a
/// certificate has one encoding).
fn parse_time(s: &str) -> Result<u64, KmsError> {
    let t = mediasec_gba::bootstrapping_info::parse_time(s).map_err(|e| bad(format!("time {s:?}: {e}")))?;
    if fmt_time(t) != s {
        return Err(bad(format!("time {s:?} is not of the form YYYY-MM-DDTHH:MM:SSZ")));
    }
    Ok(t)
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
        Self::with_validity(kms_uri, kpak, z, domains, None, None, false)
    }

    /// [`Self::new`] with a validity window (Unix seconds; `None`: unbounded) and revocation:
    /// version 2 when any is set, else version 1 (module docs "Versions").
    pub fn with_validity(kms_uri: &str, kpak: Kpak, z: sakke::PublicKey, domains: &[String], valid_from: Option<u64>, valid_to: Option<u64>, revoked: bool) -> Result<Self, KmsError> {
        let v2 = valid_from.is_some() || valid_to.is_some() || revoked;
        Self::from_certificate(KmsCertificate {
            version: if v2 { VERSION } else { VERSION_1 },
            kms_uri: kms_uri.to_ascii_lowercase(),
            user_id_format: USER_ID_FORMAT_URI_MONTHLY,
            user_key_period: USER_KEY_PERIOD_MONTH.into(),
            user_key_offset: 0,
            pub_enc_key: hex::encode(z.to_uncompressed()),
            pub_auth_key: hex::encode(kpak.to_uncompressed()),
            kms_domain_list: domains.iter().map(|d| d.to_ascii_lowercase()).collect(),
            valid_from: valid_from.map(fmt_time),
            valid_to: valid_to.map(fmt_time),
            revoked,
        })
    }

    /// Validates a certificate: version, KMS URI and domains are lower-case DNS names (at
    /// least one domain, at most [`MAX_DOMAINS`], no repeats), ID format and key period
    /// those of ID scheme 1, KPAK a P-256 point (RFC 6507 §2.2), Z a point of the SAKKE curve
    /// (RFC 6508 §2.2); version 2 fields only in version 2, times canonical, `valid_from`
    /// before `valid_to`. Hex must be lower case, so that a certificate has one encoding (the
    /// UE re-encodes it to check the `keyprovision` MAC).
    pub fn from_certificate(cert: KmsCertificate) -> Result<Self, KmsError> {
        let v2_fields = cert.valid_from.is_some() || cert.valid_to.is_some() || cert.revoked;
        match cert.version {
            VERSION => {}
            VERSION_1 if !v2_fields => {}
            VERSION_1 => return Err(bad("version 1 with valid_from, valid_to or revoked (version 2 fields)")),
            v => return Err(bad(format!("version {v} (only {VERSION_1} and {VERSION})"))),
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
        let from = cert.valid_from.as_deref().map(parse_time).transpose()?.unwrap_or(0);
        let to = cert.valid_to.as_deref().map(parse_time).transpose()?;
        if to.is_some_and(|to| to <= from) {
            return Err(bad(format!("{}: valid_to is not after valid_from", cert.kms_uri)));
        }
        Ok(Self { cert, kpak, z, from, to })
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

    /// Start of validity (Unix seconds; 0 when unbounded).
    pub fn valid_from(&self) -> u64 {
        self.from
    }

    /// End of validity, exclusive (Unix seconds; `None`: unbounded).
    pub fn valid_to(&self) -> Option<u64> {
        self.to
    }

    /// Whether its KMS revoked it.
    pub fn revoked(&self) -> bool {
        self.cert.revoked
    }

    /// Whether Unix time `t` is inside the validity window (revocation aside).
    pub fn covers(&self, t: u64) -> bool {
        t >= self.from && self.to.is_none_or(|to| t < to)
    }

    /// Whether the windows of `self` and `other` share an instant.
    fn overlaps(&self, other: &Self) -> bool {
        self.from < other.to.unwrap_or(u64::MAX) && other.from < self.to.unwrap_or(u64::MAX)
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

/// The certificate among `certs` (those of one community) valid at Unix time `t`: the one
/// whose window covers `t` and that is not revoked (docs/high-security.md §10.10). `Ok(None)`
/// when `certs` is empty; a typed [`NotValid`] when the one covering `t` is revoked, or when
/// none covers it (every window ended before `t`: expired; else not yet valid).
pub fn at<'a>(certs: impl IntoIterator<Item = &'a Community>, t: u64) -> Result<Option<&'a Community>, NotValid> {
    let certs: Vec<&Community> = certs.into_iter().collect();
    let Some(first) = certs.first() else { return Ok(None) };
    let kms_uri = first.kms_uri().to_owned();
    if let Some(c) = certs.iter().find(|c| c.covers(t)) {
        return match c.revoked() {
            true => Err(NotValid::Revoked { kms_uri, at: t }),
            false => Ok(Some(c)),
        };
    }
    match certs.iter().filter(|c| c.valid_from() > t).map(|c| c.valid_from()).min() {
        Some(valid_from) => Err(NotValid::NotYetValid { kms_uri, valid_from, at: t }),
        None => Err(NotValid::Expired { kms_uri, valid_to: certs.iter().filter_map(|c| c.valid_to()).max().unwrap_or(t), at: t }),
    }
}

/// Checks that the certificates of each KMS URI among `certs` have disjoint windows (a
/// community has one set of keys at any instant).
pub fn check_disjoint(certs: &[Community]) -> Result<(), KmsError> {
    for (i, c) in certs.iter().enumerate() {
        if let Some(o) = certs.iter().take(i).find(|o| o.kms_uri() == c.kms_uri() && o.overlaps(c)) {
            return Err(bad(format!("two certificates of {} valid at once (from {} and from {})", c.kms_uri(), fmt_time(o.valid_from()), fmt_time(c.valid_from()))));
        }
    }
    Ok(())
}

/// The JSON of a KMS's certificate set (module docs "Sets"): the one certificate's object, or
/// an array of them.
pub fn encode_set(certs: &[Community]) -> Vec<u8> {
    match certs {
        [one] => one.encode(),
        _ => serde_json::to_vec(&certs.iter().map(Community::certificate).collect::<Vec<_>>()).unwrap_or_default(),
    }
}

/// Parses a certificate set (a certificate object, or an array of 1 to [`MAX_SET`] of them),
/// at most [`MAX_SET_LEN`] octets: every certificate validated ([`Community::decode`]'s
/// rules), all of one KMS URI, windows disjoint ([`check_disjoint`]). Never panics (fuzz
/// target `kms_certificate`).
pub fn decode_set(json: &[u8]) -> Result<Vec<Community>, KmsError> {
    if json.len() > MAX_SET_LEN {
        return Err(bad(format!("certificate set of {} octets (at most {MAX_SET_LEN})", json.len())));
    }
    let first = json.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'[') {
        return Community::decode(json).map(|c| vec![c]);
    }
    let list: Vec<KmsCertificate> = serde_json::from_slice(json).map_err(bad)?;
    if list.is_empty() || list.len() > MAX_SET {
        return Err(bad(format!("a certificate set holds 1 to {MAX_SET} certificates, not {}", list.len())));
    }
    let certs = list.into_iter().map(Community::from_certificate).collect::<Result<Vec<_>, _>>()?;
    if let Some(c) = certs.iter().find(|c| certs.first().is_some_and(|f| f.kms_uri() != c.kms_uri())) {
        return Err(bad(format!("a certificate set of two KMSs ({})", c.kms_uri())));
    }
    check_disjoint(&certs)?;
    Ok(certs)
}

impl PartialEq for Community {
    fn eq(&self, other: &Self) -> bool {
        self.cert == other.cert
    }
}

/// The certificates among `communities` of the community serving the callee's SIP domain.
pub fn of_domain<'a>(communities: &'a [Community], domain: &str) -> Vec<&'a Community> {
    communities.iter().filter(|c| c.serves(domain)).collect()
}

/// The certificates among `communities` of KMS URI `kms_uri` (any case).
pub fn of_uri<'a>(communities: &'a [Community], kms_uri: &str) -> Vec<&'a Community> {
    communities.iter().filter(|c| c.kms_uri().eq_ignore_ascii_case(kms_uri)).collect()
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

/// The external KMS communities a KMS knows, by KMS URI, each with its certificate set (one
/// certificate per generation of its keys; its own is not kept here: it is made from its
/// current generations, `Service::own_certificates`).
#[derive(Debug, Default)]
pub struct Communities {
    by_uri: RwLock<BTreeMap<String, (Vec<Community>, Source)>>,
}

impl Communities {
    /// Adds or replaces a configured certificate set (one KMS URI, [`decode_set`]). Refused:
    /// our own URI or one of our `own_domains`, or a domain another known community already
    /// serves.
    pub fn configure(&self, set: Vec<Community>, own_uri: &str, own_domains: &[String]) -> Result<(), KmsError> {
        self.insert(set, Source::Configured, own_uri, own_domains)
    }

    /// Adds or replaces the certificate set the Zk peer of `peer` (authenticated as
    /// `kms.<peer>` by mutual TLS: the trust anchor) sent at Unix time `now`. The peer vouches
    /// only for itself: the KMS URI must be `kms.<peer>` and every domain `peer` or a
    /// subdomain of it; a configured certificate of the same URI takes precedence (the
    /// learned one is refused); the rules of [`Self::configure`] apply.
    pub fn learn(&self, peer: &str, set: Vec<Community>, now: u64, own_uri: &str, own_domains: &[String]) -> Result<(), KmsError> {
        let want = mediasec_kms_zk::pki::kms_name(peer);
        let suffix = format!(".{peer}");
        for c in &set {
            if c.kms_uri() != want {
                return Err(bad(format!("Zk peer {peer} sent the certificate of {}, not of {want}", c.kms_uri())));
            }
            if let Some(d) = c.domains().iter().find(|d| *d != peer && !d.ends_with(&suffix)) {
                return Err(bad(format!("Zk peer {peer} claims domain {d}, outside {peer}: only configuration can add it")));
            }
        }
        if matches!(self.get_with_source(&want), Some((_, Source::Configured))) {
            return Err(bad(format!("{want} is configured; the certificate learned over Zk is not used")));
        }
        self.insert(set, Source::Zk { peer: peer.to_owned(), fetched: now }, own_uri, own_domains)
    }

    fn insert(&self, set: Vec<Community>, source: Source, own_uri: &str, own_domains: &[String]) -> Result<(), KmsError> {
        let uri = set.first().map(|c| c.kms_uri().to_owned()).ok_or_else(|| bad("an empty certificate set"))?;
        if set.iter().any(|c| c.kms_uri() != uri) {
            return Err(bad(format!("a certificate set of {uri} holds another KMS's certificate")));
        }
        check_disjoint(&set)?;
        if uri.eq_ignore_ascii_case(own_uri) {
            return Err(bad(format!("{uri} is this KMS")));
        }
        let domains: Vec<&String> = set.iter().flat_map(|c| c.domains()).collect();
        if let Some(d) = domains.iter().find(|d| own_domains.iter().any(|o| o.eq_ignore_ascii_case(d))) {
            return Err(bad(format!("{uri} claims {d}, a domain of this KMS")));
        }
        let mut map = self.by_uri.write().map_err(|_| bad("registry lock poisoned"))?;
        if let Some(other) = map.iter().filter(|(o, _)| **o != uri).find_map(|(o, (certs, _))| certs.iter().any(|c| domains.iter().any(|d| c.serves(d))).then_some(o)) {
            return Err(bad(format!("{uri} claims a domain {other} already serves")));
        }
        map.insert(uri, (set, source));
        Ok(())
    }

    /// The certificate set of `kms_uri` (oldest generation first; empty if unknown).
    pub fn get(&self, kms_uri: &str) -> Vec<Community> {
        self.get_with_source(kms_uri).map(|(c, _)| c).unwrap_or_default()
    }

    /// The certificate set of `kms_uri` and how it became known.
    pub fn get_with_source(&self, kms_uri: &str) -> Option<(Vec<Community>, Source)> {
        self.by_uri.read().ok()?.get(&kms_uri.to_ascii_lowercase()).cloned()
    }

    /// Every known external certificate (each generation of each community), by KMS URI.
    pub fn all(&self) -> Vec<(Community, Source)> {
        self.by_uri.read().map(|m| m.values().flat_map(|(set, src)| set.iter().map(move |c| (c.clone(), src.clone()))).collect()).unwrap_or_default()
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
            ("version", 3.into()),
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
    /// another community serves; a re-fetch replaces; a set of several generations is kept
    /// whole (windows disjoint, one URI).
    #[test]
    fn registry_rules() {
        let own = ["a.example".to_owned()];
        let r = Communities::default();
        let b = community("kms.b.example", 0x42, &["b.example"]);
        r.learn("b.example", vec![b.clone()], 10, "kms.a.example", &own).unwrap();
        assert_eq!(r.get_with_source("kms.b.example"), Some((vec![b.clone()], Source::Zk { peer: "b.example".into(), fetched: 10 })));
        assert!(r.learn("c.example", vec![b.clone()], 10, "kms.a.example", &own).is_err(), "not the peer's own certificate");
        assert!(r.learn("b.example", vec![community("kms.b.example", 0x42, &["b.example", "c.example"])], 10, "kms.a.example", &own).is_err(), "a domain outside the peer's");
        assert!(r.learn("b.example", vec![community("kms.b.example", 0x42, &["b.example", "a.example"])], 10, "kms.a.example", &own).is_err());
        assert!(r.configure(vec![community("kms.a.example", 0x44, &["x.example"])], "kms.a.example", &own).is_err(), "our own URI");
        assert!(r.configure(vec![community("kms.c.example", 0x44, &["b.example"])], "kms.a.example", &own).is_err(), "b.example is served by kms.b.example");
        assert!(r.configure(Vec::new(), "kms.a.example", &own).is_err(), "an empty set");
        let (g1, g2) = (generation("kms.b.example", 0x45, None, Some(JAN)), generation("kms.b.example", 0x47, Some(JAN), None));
        r.learn("b.example", vec![g1.clone(), g2.clone()], 20, "kms.a.example", &own).unwrap();
        assert_eq!(r.get("kms.b.example"), [g1.clone(), g2]);
        assert_eq!(r.all().len(), 2, "each generation listed");
        assert!(r.learn("b.example", vec![g1, generation("kms.b.example", 0x47, Some(JAN - 1), None)], 20, "kms.a.example", &own).is_err(), "overlapping windows");
        assert!(r.configure(vec![generation("kms.c.example", 0x48, None, Some(JAN)), generation("kms.d.example", 0x49, Some(JAN), None)], "kms.a.example", &own).is_err(), "two KMSs in one set");
        let configured = community("kms.b.example", 0x46, &["b.example"]);
        r.configure(vec![configured.clone()], "kms.a.example", &own).unwrap();
        assert!(r.learn("b.example", vec![b], 30, "kms.a.example", &own).is_err(), "configuration wins");
        assert_eq!(r.get_with_source("kms.b.example"), Some((vec![configured], Source::Configured)));
        assert_eq!(r.all().len(), 1);
    }

    const JAN: u64 = 1_798_761_600; // 2027-01-01T00:00:00Z

    fn generation(uri: &str, seed: u8, from: Option<u64>, to: Option<u64>) -> Community {
        let (kpak, z) = keys(seed);
        Community::with_validity(uri, kpak, z, &["b.example".into()], from, to, false).unwrap()
    }

    /// Version 2: validity and revocation encode, decode and round-trip; version 1 is written
    /// for an unbounded unrevoked certificate (the form of before) and still accepted; a
    /// version 1 certificate with a version 2 field, a non-canonical time and an empty or
    /// inverted window are refused.
    #[test]
    fn validity_fields_and_versions() {
        let c = generation("kms.b.example", 0x42, Some(JAN), Some(JAN + 86_400 * 31));
        let json = c.encode();
        let text = String::from_utf8(json.clone()).unwrap();
        assert!(text.contains(r#""version":2"#) && text.contains(r#""valid_from":"2027-01-01T00:00:00Z""#) && text.contains(r#""valid_to":"2027-02-01T00:00:00Z""#) && !text.contains("revoked"), "{text}");
        let back = Community::decode(&json).unwrap();
        assert_eq!(back, c);
        assert_eq!((back.valid_from(), back.valid_to(), back.revoked()), (JAN, Some(JAN + 86_400 * 31), false));
        let v1 = community("kms.b.example", 0x42, &["b.example"]);
        assert_eq!(v1.certificate().version, VERSION_1);
        assert!(!String::from_utf8(v1.encode()).unwrap().contains("valid"), "version 1 has no version 2 fields");
        let revoked = Community::with_validity("kms.b.example", *c.kpak(), *c.z(), &["b.example".into()], None, None, true).unwrap();
        assert!(Community::decode(&revoked.encode()).unwrap().revoked());
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        let cases: Vec<(&str, serde_json::Value)> = vec![
            ("version", 1.into()),
            ("valid_from", "2027-01-01T00:00:00.000Z".into()),
            ("valid_from", "2027-01-01 00:00:00Z".into()),
            ("valid_from", "2027-13-01T00:00:00Z".into()),
            ("valid_from", 1_798_761_600u64.into()),
            ("valid_to", "2027-01-01T00:00:00Z".into()),
            ("valid_to", "2026-12-31T23:59:59Z".into()),
            ("revoked", "yes".into()),
        ];
        for (field, value) in cases {
            let mut t = v.clone();
            t[field] = value.clone();
            assert!(Community::decode(&serde_json::to_vec(&t).unwrap()).is_err(), "{field} = {value}");
        }
        let mut t: serde_json::Value = serde_json::from_slice(&v1.encode()).unwrap();
        t["revoked"] = true.into();
        assert!(Community::decode(&serde_json::to_vec(&t).unwrap()).is_err(), "version 1 with revoked");
        t["version"] = 2.into();
        assert!(Community::decode(&serde_json::to_vec(&t).unwrap()).unwrap().revoked());
    }

    /// The certificate valid at an instant: the window covering it; at the boundary the new
    /// one; after every window, expired (naming the end); before, not yet valid; covering but
    /// revoked, revoked; no certificate, none.
    #[test]
    fn selection_at_an_instant() {
        let (g1, g2) = (generation("kms.b.example", 0x42, None, Some(JAN)), generation("kms.b.example", 0x43, Some(JAN), Some(JAN + 100)));
        let set = [g1.clone(), g2.clone()];
        assert_eq!(at(&set, 0).unwrap(), Some(&g1));
        assert_eq!(at(&set, JAN - 1).unwrap(), Some(&g1));
        assert_eq!(at(&set, JAN).unwrap(), Some(&g2));
        assert_eq!(at(&set, JAN + 100), Err(NotValid::Expired { kms_uri: "kms.b.example".into(), valid_to: JAN + 100, at: JAN + 100 }));
        assert!(at(&set, JAN + 100).unwrap_err().to_string().contains("expired at 2027-01-01T00:01:40Z"));
        assert_eq!(at(std::slice::from_ref(&g2), JAN - 1), Err(NotValid::NotYetValid { kms_uri: "kms.b.example".into(), valid_from: JAN, at: JAN - 1 }));
        let revoked = Community::with_validity("kms.b.example", *g2.kpak(), *g2.z(), &["b.example".into()], Some(JAN), None, true).unwrap();
        assert_eq!(at(&[g1.clone(), revoked], JAN + 5), Err(NotValid::Revoked { kms_uri: "kms.b.example".into(), at: JAN + 5 }));
        assert_eq!(at(&[] as &[Community], 5), Ok(None));
        assert!(check_disjoint(&set).is_ok() && check_disjoint(&[g1.clone(), g1]).is_err());
    }

    /// A certificate set: one certificate is its object (the version 1 form of before), more
    /// are an array; both decode; an array of two KMSs, overlapping windows, none or too many
    /// certificates is refused.
    #[test]
    fn certificate_sets() {
        let (g1, g2) = (generation("kms.b.example", 0x42, None, Some(JAN)), generation("kms.b.example", 0x43, Some(JAN), None));
        let one = community("kms.b.example", 0x42, &["b.example"]);
        assert_eq!(encode_set(std::slice::from_ref(&one)), one.encode());
        assert_eq!(decode_set(&one.encode()).unwrap(), [one]);
        let two = encode_set(&[g1.clone(), g2.clone()]);
        assert_eq!(two.first(), Some(&b'['));
        assert_eq!(decode_set(&two).unwrap(), [g1.clone(), g2]);
        let other = generation("kms.c.example", 0x44, Some(JAN), None);
        let refused = [
            encode_set(&[g1.clone(), other]),
            encode_set(&[g1.clone(), g1.clone()]),
            b"[]".to_vec(),
            encode_set(&vec![g1; MAX_SET + 1]),
            vec![b' '; MAX_SET_LEN + 1],
        ];
        for json in refused {
            assert!(decode_set(&json).is_err(), "{}", String::from_utf8_lossy(&json[..json.len().min(80)]));
        }
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

        /// Arbitrary bytes never panic the decoders.
        #[test]
        fn arbitrary_input_never_panics(body in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = Community::decode(&body);
            let _ = decode_set(&body);
        }

        /// Property: any set of generations (contiguous windows, some revoked) survives
        /// encode → decode unchanged, and the selection at each boundary picks the
        /// generation starting there.
        #[test]
        fn set_round_trip(starts in proptest::collection::btree_set(1u64..4_000_000_000, 1..MAX_SET), revoked in proptest::collection::vec(any::<bool>(), MAX_SET)) {
            let starts: Vec<u64> = starts.into_iter().collect();
            let (kpak, z) = keys(7);
            let set: Vec<Community> = (0..=starts.len())
                .map(|i| {
                    let from = i.checked_sub(1).and_then(|j| starts.get(j)).copied();
                    Community::with_validity("kms.b.example", kpak, z, &["b.example".into()], from, starts.get(i).copied(), revoked[i % MAX_SET]).unwrap()
                })
                .take(MAX_SET)
                .collect();
            let back = decode_set(&encode_set(&set)).unwrap();
            prop_assert_eq!(&back, &set);
            for c in &set {
                let got = at(&set, c.valid_from());
                let picked = if c.revoked() { got.is_err() } else { got == Ok(Some(c)) };
                prop_assert!(picked, "generation from {}", c.valid_from());
            }
        }
    }
}
