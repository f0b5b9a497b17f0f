//! Ua `keyprovision` *(ours)*: a user authenticated with GBA obtains the ECCSI signing key of
//! its identity for one key period (RFC 6507 §5.1.1: SSK and PVT; RFC 6509 §3.2 identity
//! `"YYYY-MM\0" URI "\0"`) and the KPAK of its KMS, for the high-security mode
//! (ECCSI-signed MIKEY-DH, docs/high-security.md). Modelled on the TS 33.180 KMS
//! key-provisioning concept (user keys wrapped under a transport key); TS 33.328 defines no
//! such exchange, so the wire format is ours (docs/kms.md "Key provisioning").
//!
//! Keys, from the user's Ks_NAF for this KMS (named by the B-TID, exactly as for
//! MIKEY-TICKET): `K_x = HMAC-SHA-256(Ks_NAF, "mediasec keyprov " ‖ x)` for `x` =
//! `request-mac`, `response-mac` and `kek`.
//!
//! - Request: JSON `{btid, uri, period, time, nonce, mac}`; `mac` = HMAC-SHA-256 under
//!   `K_request-mac` of `"request"` followed by each of btid, uri, period (as sent), time
//!   (8 octets big-endian) and nonce (as sent), each preceded by its length in 4 octets
//!   big-endian.
//! - Response: JSON `{kms, uri, period, id, kpak, pvt, ssk_wrapped, nonce, mac}` (binary fields
//!   in hex): the SSK wrapped with AES-256 key wrap (RFC 3394, default IV) under `K_kek`, the
//!   request's nonce echoed, `mac` under `K_response-mac` over `"response"` and the other
//!   fields in that order, encoded as for the request. Separate request and response MAC keys:
//!   a response cannot be replayed as a request or the other way round.
//!
//! - MIKEY-SAKKE (request field `"sakke": true`, absent = false; covered by the request MAC
//!   only when true, so requests without it keep their MAC): the response adds `z`, the KMS's
//!   SAKKE public key Z (RFC 6508 §2.2, 257 octets), and `rsk_wrapped`, the RSK of the same
//!   identity string (RFC 6509 §4.2 ID scheme 1) as x ‖ y (256 octets; the 0x04 is implied)
//!   wrapped like the SSK (264 octets); both appended to the response MAC input. The UE
//!   validates the RSK (RFC 6508 §6.1.2) before use.
//! - KMS certificates (with `sakke`; docs/high-security.md §10.9): the response adds
//!   `certificates`, the KMS certificates ([`crate::community`]) of the communities the user
//!   may call or be called from — its own first, then the external ones its KMS knows — each
//!   appended to the response MAC input as its JSON encoding (absent when empty, so
//!   responses without certificates keep their MAC). A KMS sends one certificate per
//!   generation of its community keys (docs/high-security.md §10.10; windows disjoint per KMS
//!   URI). The UE refuses the response when its own KMS's certificate valid at the start of
//!   the key period names other keys than the response's KPAK and Z.
//!
//! This module is sans-IO: the UE side ([`request`], [`Pending::open`]) and the pieces the KMS
//! side (`crate::signing_keys`) checks and builds with.

use core::fmt;

use aes_kw::KeyInit as _;
use aws_lc_rs::hmac;
use mediasec_mikey::eccsi::{self, Kpak, POINT_LEN, Pvt, SigningKey, Ssk};
use mediasec_mikey::sakke;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::community::{Community, KmsCertificate};
use crate::error::KmsError;

/// Length of the request nonce in octets (sent as 32 hex digits).
pub const NONCE_LEN: usize = 16;
/// Length of an SSK (RFC 6507 §3.3, N = 32).
const SSK_LEN: usize = eccsi::N;
/// Length of the wrapped SSK (RFC 3394: n + 1 blocks of 64 bits).
pub const WRAPPED_LEN: usize = SSK_LEN + 8;
/// Length of the wrapped SAKKE RSK (x ‖ y, RFC 3394: n + 1 blocks of 64 bits).
pub const RSK_WRAPPED_LEN: usize = 2 * sakke::FIELD_LEN + 8;
/// Content type of `keyprovision` bodies.
pub const CONTENT_TYPE: &str = "application/json";

/// A key period: one calendar month (UTC), RFC 6509 §3.2 ("YYYY-MM").
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Period {
    /// Year (four digits).
    pub year: u16,
    /// Month, 1–12.
    pub month: u8,
}

impl Period {
    /// Parses `YYYY-MM`.
    pub fn parse(s: &str) -> Result<Self, KmsError> {
        let bad = || KmsError::KeyProvision(format!("period {s:?} is not YYYY-MM"));
        let (y, m) = s.split_once('-').ok_or_else(bad)?;
        if y.len() != 4 || m.len() != 2 || !y.bytes().chain(m.bytes()).all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let (year, month) = (y.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
        if !(1..=12).contains(&month) {
            return Err(bad());
        }
        Ok(Self { year, month })
    }

    /// The month (UTC) of Unix time `secs`: the key period of a message sent then
    /// ([`mediasec_mikey::signed_dh::period_of`], which signer and verifier use).
    pub fn of_unix(secs: u64) -> Result<Self, KmsError> {
        let t = crate::tp_data::ntp(std::time::Duration::from_secs(secs));
        let (year, month) = mediasec_mikey::signed_dh::period_of(&t).map_err(|e| KmsError::KeyProvision(e.to_string()))?;
        Ok(Self { year, month })
    }

    /// The following month.
    pub fn next(self) -> Self {
        if self.month >= 12 { Self { year: self.year.saturating_add(1), month: 1 } } else { Self { year: self.year, month: self.month + 1 } }
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

/// The three keys of one user's exchanges, from its Ks_NAF.
pub(crate) struct ProvKeys {
    request_mac: Zeroizing<[u8; 32]>,
    response_mac: Zeroizing<[u8; 32]>,
    kek: Zeroizing<[u8; 32]>,
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Zeroizing<[u8; 32]> {
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data);
    let mut out = Zeroizing::new([0u8; 32]);
    out.copy_from_slice(tag.as_ref());
    out
}

impl ProvKeys {
    /// `K_x = HMAC-SHA-256(Ks_NAF, "mediasec keyprov " ‖ x)`.
    pub(crate) fn derive(ks_naf: &[u8]) -> Self {
        let k = |x: &str| hmac_sha256(ks_naf, format!("mediasec keyprov {x}").as_bytes());
        Self { request_mac: k("request-mac"), response_mac: k("response-mac"), kek: k("kek") }
    }
}

/// `label ‖ (len(f) as 4 octets BE ‖ f)*`: the MAC input.
fn canonical(label: &str, fields: &[&[u8]]) -> Vec<u8> {
    let mut out = label.as_bytes().to_vec();
    for f in fields {
        out.extend_from_slice(&u32::try_from(f.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(f);
    }
    out
}

/// Whether `mac_hex` is the MAC of `input` under `key` (constant-time comparison).
fn mac_ok(key: &[u8], input: &[u8], mac_hex: &str) -> bool {
    let want = hmac_sha256(key, input);
    hex::decode(mac_hex).is_ok_and(|got| bool::from(got.as_slice().ct_eq(want.as_slice())))
}

/// A `keyprovision` request.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// The B-TID naming the user's Ks_NAF.
    pub btid: String,
    /// The public identity (an IMPU of the B-TID) the key is for.
    pub uri: String,
    /// The key period, `YYYY-MM`.
    pub period: String,
    /// The UE's clock, Unix seconds (checked against the KMS's within its skew).
    pub time: u64,
    /// 16 random octets, hex.
    pub nonce: String,
    /// HMAC-SHA-256 under `K_request-mac`, hex.
    pub mac: String,
    /// Also the MIKEY-SAKKE keys (RSK and Z); absent means false.
    #[serde(default, skip_serializing_if = "core::ops::Not::not")]
    pub sakke: bool,
}

impl Request {
    fn mac_input(&self) -> Vec<u8> {
        let time = self.time.to_be_bytes();
        let mut fields: Vec<&[u8]> = vec![self.btid.as_bytes(), self.uri.as_bytes(), self.period.as_bytes(), &time, self.nonce.as_bytes()];
        if self.sakke {
            fields.push(b"sakke");
        }
        canonical("request", &fields)
    }

    /// Parses a request body; checks the shape of every field (not the MAC).
    pub fn parse(body: &[u8]) -> Result<Self, KmsError> {
        let r: Self = serde_json::from_slice(body).map_err(|e| KmsError::KeyProvision(format!("request: {e}")))?;
        r.period()?;
        r.nonce()?;
        if r.btid.is_empty() || r.uri.is_empty() {
            return Err(KmsError::KeyProvision("request: empty btid or uri".into()));
        }
        if r.mac.len() != 64 {
            return Err(KmsError::KeyProvision("request: mac is not 64 hex digits".into()));
        }
        Ok(r)
    }

    /// The period asked for.
    pub fn period(&self) -> Result<Period, KmsError> {
        Period::parse(&self.period)
    }

    /// The nonce octets.
    pub fn nonce(&self) -> Result<[u8; NONCE_LEN], KmsError> {
        hex::decode(&self.nonce).ok().and_then(|n| n.try_into().ok()).ok_or_else(|| KmsError::KeyProvision("request: nonce is not 32 hex digits".into()))
    }

    /// Whether the MAC verifies under the keys of `ks_naf`.
    pub(crate) fn verify(&self, keys: &ProvKeys) -> bool {
        mac_ok(&*keys.request_mac, &self.mac_input(), &self.mac)
    }
}

/// A `keyprovision` response.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Response {
    /// The issuing KMS (its FQDN).
    pub kms: String,
    /// The identity's URI, as requested.
    pub uri: String,
    /// The key period, as requested.
    pub period: String,
    /// The ECCSI identity signed for (RFC 6509 §3.2 form), hex.
    pub id: String,
    /// The KMS's KPAK (uncompressed point), hex.
    pub kpak: String,
    /// The PVT (uncompressed point), hex.
    pub pvt: String,
    /// The SSK, AES-256 key-wrapped (RFC 3394) under `K_kek`, hex.
    pub ssk_wrapped: String,
    /// The request's nonce.
    pub nonce: String,
    /// HMAC-SHA-256 under `K_response-mac`, hex.
    pub mac: String,
    /// The KMS's SAKKE public key Z (257 octets), hex; only when the request had `sakke`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub z: Option<String>,
    /// The RSK's x ‖ y wrapped under `K_kek` ([`RSK_WRAPPED_LEN`] octets), hex; with `z`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rsk_wrapped: Option<String>,
    /// KMS certificates (own community first), with `z`; absent when none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<KmsCertificate>,
}

/// What the KMS issues for one identity and period.
pub struct Issued<'a> {
    /// The ECCSI identity.
    pub id: &'a [u8],
    /// The KPAK.
    pub kpak: &'a [u8; POINT_LEN],
    /// The PVT.
    pub pvt: &'a [u8; POINT_LEN],
    /// The SSK (wrapped before it leaves).
    pub ssk: &'a [u8; SSK_LEN],
    /// The MIKEY-SAKKE keys, when asked for.
    pub sakke: Option<SakkeIssued<'a>>,
}

/// What the KMS issues for MIKEY-SAKKE beside the ECCSI key.
pub struct SakkeIssued<'a> {
    /// Z, `0x04 ‖ x ‖ y`.
    pub z: &'a [u8; sakke::POINT_LEN],
    /// The RSK, `0x04 ‖ x ‖ y` (wrapped before it leaves, without the 0x04).
    pub rsk: &'a [u8; sakke::POINT_LEN],
    /// The KMS certificates handed out with the keys (own community first).
    pub certificates: &'a [Community],
}

impl Response {
    fn mac_input(&self) -> Vec<u8> {
        let certificates: Vec<Vec<u8>> = self.certificates.iter().map(|c| serde_json::to_vec(c).unwrap_or_default()).collect();
        let mut fields: Vec<&[u8]> = vec![
            self.kms.as_bytes(),
            self.uri.as_bytes(),
            self.period.as_bytes(),
            self.id.as_bytes(),
            self.kpak.as_bytes(),
            self.pvt.as_bytes(),
            self.ssk_wrapped.as_bytes(),
            self.nonce.as_bytes(),
        ];
        fields.extend(self.z.iter().chain(&self.rsk_wrapped).map(String::as_bytes));
        fields.extend(certificates.iter().map(Vec::as_slice));
        canonical("response", &fields)
    }

    /// The KMS's answer to `req` (whose MAC verified under `keys`): the SSK wrapped, the
    /// whole MACed. Returns the JSON body.
    pub(crate) fn build(keys: &ProvKeys, kms: &str, req: &Request, issued: &Issued<'_>) -> Result<Vec<u8>, KmsError> {
        let kw = aes_kw::KwAes256::new_from_slice(&*keys.kek).map_err(|_| KmsError::KeyProvision("KEK length".into()))?;
        let mut wrapped = [0u8; WRAPPED_LEN];
        let wrapped = kw.wrap_key(issued.ssk, &mut wrapped).map_err(|e| KmsError::KeyProvision(format!("wrapping the SSK: {e}")))?;
        let mut r = Self {
            kms: kms.to_owned(),
            uri: req.uri.clone(),
            period: req.period.clone(),
            id: hex::encode(issued.id),
            kpak: hex::encode(issued.kpak),
            pvt: hex::encode(issued.pvt),
            ssk_wrapped: hex::encode(wrapped),
            nonce: req.nonce.clone(),
            mac: String::new(),
            z: None,
            rsk_wrapped: None,
            certificates: Vec::new(),
        };
        if let Some(s) = &issued.sakke {
            let xy = s.rsk.get(1..).ok_or_else(|| KmsError::KeyProvision("RSK encoding".into()))?;
            let mut out = [0u8; RSK_WRAPPED_LEN];
            let w = kw.wrap_key(xy, &mut out).map_err(|e| KmsError::KeyProvision(format!("wrapping the RSK: {e}")))?;
            r.z = Some(hex::encode(s.z));
            r.rsk_wrapped = Some(hex::encode(w));
            r.certificates = s.certificates.iter().map(|c| c.certificate().clone()).collect();
        }
        r.mac = hex::encode(*hmac_sha256(&*keys.response_mac, &r.mac_input()));
        serde_json::to_vec(&r).map_err(|e| KmsError::KeyProvision(e.to_string()))
    }
}

/// A sent request awaiting its response (UE side).
pub struct Pending {
    keys: ProvKeys,
    kms: String,
    uri: String,
    period: Period,
    nonce: String,
    sakke: bool,
}

/// The MIKEY-SAKKE keys a verified response gives the UE.
pub struct SakkeKeys {
    /// The KMS's SAKKE public key Z.
    pub z: sakke::PublicKey,
    /// Our RSK for the period's identifier, validated under Z (RFC 6508 §6.1.2).
    pub rsk: sakke::Rsk,
}

/// What a verified response gives the UE.
pub struct Provisioned {
    /// The issuing KMS.
    pub kms: String,
    /// The identity's URI.
    pub uri: String,
    /// The key period.
    pub period: Period,
    /// The KMS's KPAK, authenticated by the response MAC.
    pub kpak: Kpak,
    /// The signing key, validated against the KPAK (RFC 6507 §5.1.2).
    pub key: SigningKey,
    /// The MIKEY-SAKKE keys, when asked for.
    pub sakke: Option<SakkeKeys>,
    /// The KMS certificates sent with the MIKEY-SAKKE keys (validated; own community first
    /// when the KMS sent it), authenticated by the response MAC.
    pub communities: Vec<Community>,
}

/// UE side: the request for `uri`'s key of `period` at the KMS `kms` (its FQDN), by the user
/// bootstrapped as `btid` with `ks_naf`; `now` in Unix seconds, `nonce` random; with `sakke`,
/// the MIKEY-SAKKE keys too. (One argument per wire field.)
#[allow(clippy::too_many_arguments)]
pub fn request(btid: &str, ks_naf: &[u8], kms: &str, uri: &str, period: Period, now: u64, nonce: [u8; NONCE_LEN], sakke: bool) -> Result<(Vec<u8>, Pending), KmsError> {
    let keys = ProvKeys::derive(ks_naf);
    let mut r = Request { btid: btid.to_owned(), uri: uri.to_owned(), period: period.to_string(), time: now, nonce: hex::encode(nonce), mac: String::new(), sakke };
    r.mac = hex::encode(*hmac_sha256(&*keys.request_mac, &r.mac_input()));
    let body = serde_json::to_vec(&r).map_err(|e| KmsError::KeyProvision(e.to_string()))?;
    Ok((body, Pending { keys, kms: kms.to_owned(), uri: r.uri, period, nonce: r.nonce, sakke }))
}

fn point(what: &str, s: &str) -> Result<[u8; POINT_LEN], KmsError> {
    hex::decode(s).ok().and_then(|p| p.try_into().ok()).ok_or_else(|| KmsError::KeyProvision(format!("response: {what} is not {POINT_LEN} octets of hex")))
}

impl Pending {
    /// Verifies the KMS's response (MAC first, constant time; then that it answers this
    /// request: KMS, URI, period, nonce, and the RFC 6509 identity of that URI and period),
    /// unwraps the SSK and validates it against the KPAK and PVT (RFC 6507 §5.1.2).
    pub fn open(&self, body: &[u8]) -> Result<Provisioned, KmsError> {
        let bad = |what: &str| KmsError::KeyProvision(format!("response: {what}"));
        let r: Response = serde_json::from_slice(body).map_err(|e| bad(&e.to_string()))?;
        if !mac_ok(&*self.keys.response_mac, &r.mac_input(), &r.mac) {
            return Err(bad("MAC does not verify"));
        }
        if r.kms != self.kms || r.uri != self.uri || r.period != self.period.to_string() || r.nonce != self.nonce {
            return Err(bad("answers another request (KMS, URI, period or nonce differ)"));
        }
        let id = eccsi::identity(&self.uri, self.period.year, self.period.month);
        if hex::decode(&r.id).ok().as_deref() != Some(id.as_slice()) {
            return Err(bad("the key is for another identity"));
        }
        let wrapped = hex::decode(&r.ssk_wrapped).map_err(|_| bad("ssk_wrapped is not hex"))?;
        if wrapped.len() != WRAPPED_LEN {
            return Err(bad(&format!("ssk_wrapped is {} octets, not {WRAPPED_LEN}", wrapped.len())));
        }
        let kw = aes_kw::KwAes256::new_from_slice(&*self.keys.kek).map_err(|_| bad("KEK length"))?;
        let mut ssk = Zeroizing::new([0u8; SSK_LEN]);
        kw.unwrap_key(&wrapped, &mut *ssk).map_err(|_| bad("the wrapped SSK fails its integrity check (RFC 3394)"))?;
        let kpak = Kpak::from_uncompressed(&point("kpak", &r.kpak)?).map_err(|e| bad(&e.to_string()))?;
        let pvt = Pvt::from_uncompressed(&point("pvt", &r.pvt)?).map_err(|e| bad(&e.to_string()))?;
        let ssk = Ssk::from_bytes(&ssk).map_err(|e| bad(&e.to_string()))?;
        let key = SigningKey::new(&kpak, &id, ssk, pvt).map_err(|e| bad(&e.to_string()))?;
        let sakke = match (self.sakke, &r.z, &r.rsk_wrapped) {
            (false, None, None) => None,
            (true, Some(z), Some(w)) => Some(self.open_sakke(&id, z, w)?),
            _ => return Err(bad("MIKEY-SAKKE keys missing, or sent unasked")),
        };
        if sakke.is_none() && !r.certificates.is_empty() {
            return Err(bad("KMS certificates without MIKEY-SAKKE keys"));
        }
        let communities = r.certificates.into_iter().map(Community::from_certificate).collect::<Result<Vec<_>, _>>().map_err(|e| bad(&e.to_string()))?;
        crate::community::check_disjoint(&communities).map_err(|e| bad(&e.to_string()))?;
        // The issuing KMS's certificate of the key period (valid at its first instant: keys of a
        // month are of the generation valid then) must name the response's keys.
        let start = crate::generations::month_start(self.period)?;
        if let (Some(s), Ok(Some(c))) = (&sakke, crate::community::at(crate::community::of_uri(&communities, &r.kms), start))
            && (*c.kpak() != kpak || *c.z() != s.z)
        {
            return Err(bad("the certificate of the issuing KMS names other keys than the response"));
        }
        Ok(Provisioned { kms: r.kms, uri: r.uri, period: self.period, kpak, key, sakke, communities })
    }

    /// Z and the RSK of identifier `id`: unwrapped (RFC 3394 integrity check) and validated.
    fn open_sakke(&self, id: &[u8], z: &str, wrapped: &str) -> Result<SakkeKeys, KmsError> {
        let bad = |what: &str| KmsError::KeyProvision(format!("response: {what}"));
        let z = hex::decode(z).map_err(|_| bad("z is not hex"))?;
        let z = sakke::PublicKey::from_uncompressed(&z).map_err(|e| bad(&format!("z: {e}")))?;
        let wrapped = hex::decode(wrapped).map_err(|_| bad("rsk_wrapped is not hex"))?;
        if wrapped.len() != RSK_WRAPPED_LEN {
            return Err(bad(&format!("rsk_wrapped is {} octets, not {RSK_WRAPPED_LEN}", wrapped.len())));
        }
        let kw = aes_kw::KwAes256::new_from_slice(&*self.keys.kek).map_err(|_| bad("KEK length"))?;
        let mut rsk = Zeroizing::new([0u8; sakke::POINT_LEN]);
        let (prefix, xy) = rsk.split_at_mut(1);
        prefix.fill(0x04);
        kw.unwrap_key(&wrapped, xy).map_err(|_| bad("the wrapped RSK fails its integrity check (RFC 3394)"))?;
        let rsk = sakke::Rsk::new(&z, id, &*rsk).map_err(|e| bad(&e.to_string()))?;
        Ok(SakkeKeys { z, rsk })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn periods() {
        assert_eq!(Period::of_unix(0).unwrap().to_string(), "1970-01");
        assert_eq!(Period::of_unix(951_782_400).unwrap().to_string(), "2000-02"); // 2000-02-29T00:00Z
        assert_eq!(Period::of_unix(951_868_799).unwrap().to_string(), "2000-02"); // 2000-02-29T23:59:59Z
        assert_eq!(Period::of_unix(951_868_800).unwrap().to_string(), "2000-03");
        assert_eq!(Period::of_unix(1_798_761_599).unwrap().to_string(), "2026-12"); // 2026-12-31T23:59:59Z
        assert_eq!(Period::of_unix(1_798_761_600).unwrap().to_string(), "2027-01");
        assert_eq!(Period::parse("2026-12").unwrap().next(), Period::parse("2027-01").unwrap());
        assert_eq!(Period::parse("2026-01").unwrap().next().to_string(), "2026-02");
        for bad in ["2026-13", "2026-00", "2026-1", "26-01", "2026/01", "2026-0a", "+026-01", "2026-01-01", ""] {
            assert!(Period::parse(bad).is_err(), "{bad}");
        }
    }

    /// RFC 3394 §4.6: 256 bits of key data with a 256-bit KEK (the wrap the SSK uses).
    #[test]
    fn rfc3394_4_6() {
        let kek = hex::decode("000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F").unwrap();
        let data = hex::decode("00112233445566778899AABBCCDDEEFF000102030405060708090A0B0C0D0E0F").unwrap();
        let kw = aes_kw::KwAes256::new_from_slice(&kek).unwrap();
        let mut out = [0u8; 40];
        let w = kw.wrap_key(&data, &mut out).unwrap();
        assert_eq!(hex::encode_upper(w), "28C9F404C4B810F4CBCCB35CFB87F8263F5786E2D80ED326CBC7F0E71A99F43BFB988B9B7A02DD21");
    }

    const KSAK: [u8; 32] = [0x11; 32];

    fn issue(keys: &ProvKeys, req: &Request, ksak: &eccsi::KmsSecret) -> (Vec<u8>, [u8; 32]) {
        let p = req.period().unwrap();
        let id = eccsi::identity(&req.uri, p.year, p.month);
        let (ssk, pvt) = ksak.issue(&id, &[0x22; 32]).unwrap();
        let issued = Issued { id: &id, kpak: &ksak.kpak().to_uncompressed(), pvt: &pvt.to_uncompressed(), ssk: &ssk.to_bytes(), sakke: None };
        (Response::build(keys, "kms.a.example", req, &issued).unwrap(), *ssk.to_bytes())
    }

    #[test]
    fn round_trip_and_tampering() {
        let ks_naf = [7u8; 32];
        let ksak = eccsi::KmsSecret::from_bytes(&KSAK).unwrap();
        let p = Period::parse("2026-11").unwrap();
        let (body, pending) = request("btid@bsf", &ks_naf, "kms.a.example", "sip:a@a.example", p, 1_790_000_000, [1; 16], false).unwrap();
        let req = Request::parse(&body).unwrap();
        let keys = ProvKeys::derive(&ks_naf);
        assert!(req.verify(&keys));
        assert!(!req.verify(&ProvKeys::derive(&[8; 32])), "another user's key");
        let (resp, ssk) = issue(&keys, &req, &ksak);
        let wire = String::from_utf8(resp.clone()).unwrap().to_ascii_lowercase();
        assert!(!wire.contains(&hex::encode(&ssk[..8])), "SSK in clear on the wire");
        let got = pending.open(&resp).unwrap();
        assert_eq!((got.kpak, got.period, got.uri.as_str(), got.kms.as_str()), (ksak.kpak(), p, "sip:a@a.example", "kms.a.example"));
        assert_eq!(got.key.id(), b"2026-11\0sip:a@a.example\0");
        let sig = got.key.sign(b"m", &[0x33; 32]).unwrap();
        eccsi::verify(&ksak.kpak(), got.key.id(), b"m", &sig).unwrap();
        // Keys of another KMS do not validate under the KPAK the response names.
        let other = eccsi::KmsSecret::from_bytes(&[0x12; 32]).unwrap();
        let (forged, _) = issue(&keys, &req, &other);
        let mut fv: serde_json::Value = serde_json::from_slice(&forged).unwrap();
        fv["kpak"] = hex::encode(ksak.kpak().to_uncompressed()).into();
        let mut f: Response = serde_json::from_value(fv).unwrap();
        f.mac = hex::encode(*hmac_sha256(&*keys.response_mac, &f.mac_input()));
        assert!(pending.open(&serde_json::to_vec(&f).unwrap()).is_err(), "SSK/PVT of another KMS");

        // Every request field is covered by the MAC.
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        for (field, other) in [("btid", serde_json::json!("btid2@bsf")), ("uri", "sip:b@a.example".into()), ("period", "2026-12".into()), ("time", 1_790_000_001u64.into()), ("nonce", hex::encode([2u8; 16]).into())] {
            let mut t = v.clone();
            t[field] = other;
            assert!(!Request::parse(&serde_json::to_vec(&t).unwrap()).unwrap().verify(&keys), "{field}");
        }
        // Every response field is covered by the MAC; a response to another request is refused.
        let rv: serde_json::Value = serde_json::from_slice(&resp).unwrap();
        for field in ["kms", "uri", "period", "id", "kpak", "pvt", "ssk_wrapped", "nonce", "mac"] {
            let mut t = rv.clone();
            let s = t[field].as_str().unwrap().to_owned();
            t[field] = format!("{}0", &s[..s.len() - 1]).into();
            if t[field] == rv[field] {
                t[field] = format!("{}1", &s[..s.len() - 1]).into();
            }
            assert!(pending.open(&serde_json::to_vec(&t).unwrap()).is_err(), "{field}");
        }
        let (_, again) = request("btid@bsf", &ks_naf, "kms.a.example", "sip:a@a.example", p, 1_790_000_000, [3; 16], false).unwrap();
        assert!(again.open(&resp).is_err(), "nonce not echoed");
        let (_, wrong_key) = request("btid@bsf", &[9; 32], "kms.a.example", "sip:a@a.example", p, 1_790_000_000, [1; 16], false).unwrap();
        assert!(wrong_key.open(&resp).is_err());
        assert!(pending.open(b"{").is_err() && pending.open(b"").is_err());
    }

    #[test]
    fn malformed_requests() {
        let good = serde_json::json!({"btid": "b", "uri": "sip:a@a.example", "period": "2026-11", "time": 1, "nonce": hex::encode([0u8; 16]), "mac": hex::encode([0u8; 32])});
        assert!(Request::parse(&serde_json::to_vec(&good).unwrap()).is_ok());
        for (field, v) in [("period", serde_json::json!("2026-13")), ("nonce", "00".into()), ("mac", "zz".into()), ("btid", "".into()), ("time", (-1).into()), ("extra", 1.into())] {
            let mut t = good.clone();
            t[field] = v;
            assert!(Request::parse(&serde_json::to_vec(&t).unwrap()).is_err(), "{field}");
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bodies_never_panic(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = Request::parse(&body);
            let (_, p) = request("b", &[1; 32], "k", "u", Period { year: 2026, month: 1 }, 0, [0; 16], false).unwrap();
            let _ = p.open(&body);
        }
    }
}
