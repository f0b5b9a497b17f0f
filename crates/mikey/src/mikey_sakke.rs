//! MIKEY-SAKKE (RFC 6509): the identity-based key transport of 3GPP mission-critical
//! services (TS 33.179, TS 33.180), as a single signed I_MESSAGE (data type 26):
//!
//! ```text
//! I_MESSAGE = HDR, T, RAND, IDRi, IDRr, [IDRkmsi, IDRkmsr], SP, SAKKE, SIGN
//! ```
//!
//! - **HDR** (RFC 3830 §6.1): data type 26 ("SAKKE"), V = 0 (RFC 6509: a simplex message,
//!   no response), the PRF, the CSB ID, and for our calls an SRTP-ID map with CS 1 = the
//!   initiator's stream and CS 2 = the responder's (SSRC 0: there is no response to fill it
//!   in), both under SP policy 0 — the map of [`crate::signed_dh`].
//! - **T** (NTP-UTC): selects the key period of both identities and is checked against a
//!   window and a replay cache.
//! - **IDRi / IDRr** (RFC 6043 §6.6 roles 1 and 2, ID type URI) and optionally **IDRkmsi /
//!   IDRkmsr** (roles 6 and 7, RFC 6509): the parties' URIs and their KMS.
//! - **SAKKE** (RFC 6509 §4.2): parameter set 1, ID scheme 1 ("tel URI with monthly keys"),
//!   the 273-octet `R_(b,S) ‖ H` of [`sakke::encapsulate`] carrying the 16-octet SSV to
//!   identifier b = `"YYYY-MM\0" ‖ IDRr ‖ "\0"` ([`crate::eccsi::identity`], month of T).
//! - **SIGN** (RFC 6509 §4.3): ECCSI by the initiator's identity of the same form over every
//!   octet before the signature, the 2-octet SIGN header included.
//!
//! Keys: the SSV is the TGK (RFC 6509); each crypto session's SRTP master key and salt
//! come from it by the RFC 3830 §4.1.3 PRF (CS ID, CSB ID, RAND), exactly as in
//! [`crate::signed_dh`] (the same [`Keys`] type and derivation).
//!
//! **Receiving TS 33.180 messages** ([`receive`]): ID scheme 2 (the identifiers are the
//! 32-octet UIDs of TS 33.180 F.2.1, [`uid`], in IDR roles 8 and 9), PRF-HMAC-SHA-256,
//! GENERIC-ID or empty CS ID maps and general extensions are parsed, signature-checked and
//! decapsulated: the SSV (the GMK, PCK or CSK) is returned. Their TS 33.180 media key
//! derivation (key IDs, the protected associated parameters of general-extension type 7) is
//! not implemented, so [`Received::keys`] is `None` for them. [`build`] makes scheme 1
//! messages only.
//!
//! **Properties, plainly** (docs/high-security.md): the KMS master secret z decrypts every
//! I_MESSAGE ever sent to any of its users, past and future (key escrow by design, no
//! forward secrecy); only the initiator is authenticated (the responder sends nothing);
//! lawful interception needs no man in the middle. The opposite trade-off to
//! [`crate::signed_dh`].
//!
//! Sans-IO: time, randomness (SSV, RAND, the ECCSI `j`) and the replay cache are parameters.

use zeroize::Zeroizing;

use crate::eccsi::{self, Kpak, SigningKey};
use crate::error::{Error, Result};
use crate::header::{CommonHeader, CsIdMap, MIKEY_VERSION, SrtpCs};
use crate::message::Message;
use crate::payload::{Payload, Rand, Sakke, SecurityPolicy, Timestamp};
use crate::psk::ReplayCache;
use crate::registry::{DataType, ErrorCode, IdRole, PrfFunc, SakkeIdScheme, SakkeParams};
use crate::sakke::{self, Rsk};
use crate::signed_dh::{self, Keys, check_key, derive, draw, idr, ntp, parse, period_of, seal};
use crate::srtp_policy;

/// Length of the RAND payload (RFC 3830 §6.11: at least 128 bits).
pub const RAND_LEN: usize = 16;

/// What the initiator sends.
#[derive(Debug, Clone)]
pub struct Offer {
    /// PRF of the HDR (MIKEY-1 = PRF-HMAC-SHA-1, or PRF-HMAC-SHA-256 as TS 33.180 uses).
    pub prf: PrfFunc,
    /// CSB ID (RFC 3830 §6.1): random, chosen by the initiator.
    pub csb_id: u32,
    /// The initiator's URI (IDRi; with the month of T, its ECCSI identity).
    pub initiator_uri: String,
    /// The URI called (IDRr; with the month of T, the SAKKE identifier b).
    pub responder_uri: String,
    /// The initiator's KMS URI (IDRkmsi), if it is to be sent; also IDRkmsr unless
    /// `responder_kms_uri` names another KMS.
    pub kms_uri: Option<String>,
    /// The responder's KMS URI (IDRkmsr) when it differs from the initiator's: a responder of
    /// another KMS community, whose Z the SSV is encapsulated under (RFC 6509 §4.1; sent only
    /// with `kms_uri`, the IDRkmsi).
    pub responder_kms_uri: Option<String>,
    /// SSRC of the initiator's media stream (CS 1).
    pub initiator_ssrc: u32,
    /// The SRTP policy (SP payload, policy number 0).
    pub policy: SecurityPolicy,
}

/// An identity named by a received I_MESSAGE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// ID scheme 1: a URI (its key-period identifier is `"YYYY-MM\0" ‖ URI ‖ "\0"`).
    Uri(String),
    /// ID scheme 2: a TS 33.180 UID (F.2.1), which already binds URI, KMS and key period.
    Uid([u8; 32]),
}

/// A verified I_MESSAGE.
pub struct Received {
    /// The initiator, authenticated by the ECCSI signature.
    pub initiator: Identity,
    /// The identifier scheme of the SAKKE payload.
    pub id_scheme: SakkeIdScheme,
    /// CSB ID of the HDR (TS 33.180: the key ID of the GMK/PCK/CSK).
    pub csb_id: u32,
    /// The decapsulated SSV: the TGK (RFC 6509), or the GMK/PCK/CSK (TS 33.180).
    pub ssv: Zeroizing<[u8; sakke::SSV_LEN]>,
    /// SRTP keys of CS 1 and CS 2, for messages with the two-stream SRTP-ID map [`build`]
    /// makes; `None` for other maps (TS 33.180 key use is outside this module).
    pub keys: Option<Keys>,
}

impl core::fmt::Debug for Received {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Received")
            .field("initiator", &self.initiator)
            .field("id_scheme", &self.id_scheme)
            .field("csb_id", &self.csb_id)
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

fn rejected(code: ErrorCode, reason: impl Into<String>) -> Error {
    Error::rejected(code, reason)
}

/// The SAKKE identifier b of `uri` at time `t` under ID scheme 1 (RFC 6509 §4.2: the monthly
/// form `"YYYY-MM\0" ‖ URI ‖ "\0"`, the same string as the ECCSI identity).
pub fn identifier(uri: &str, t: &Timestamp) -> Result<Vec<u8>> {
    signed_dh::signer_identity(uri, t)
}

/// The TS 33.180 F.2.1 MIKEY-SAKKE UID:
/// `SHA-256(0x00 ‖ "MIKEY-SAKKE-UID" ‖ L ‖ URI ‖ L ‖ KMS URI ‖ L ‖ key period ‖ L ‖ key
/// period offset ‖ L ‖ key period number ‖ L)`, every parameter followed by its 2-octet
/// length L, integers as minimal big-endian octets (0 as one 0x00).
pub fn uid(uri: &str, kms_uri: &str, key_period: u64, key_period_offset: u64, key_period_no: u64) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    fn minimal(v: u64) -> Vec<u8> {
        let b = v.to_be_bytes();
        let skip = b.iter().take(7).take_while(|x| **x == 0).count();
        b.get(skip..).unwrap_or_default().to_vec()
    }
    let mut h = Sha256::new();
    h.update([0x00]);
    h.update(b"MIKEY-SAKKE-UID");
    h.update(15u16.to_be_bytes());
    for p in [uri.as_bytes().to_vec(), kms_uri.as_bytes().to_vec(), minimal(key_period), minimal(key_period_offset), minimal(key_period_no)] {
        h.update(&p);
        h.update(u16::try_from(p.len()).unwrap_or(u16::MAX).to_be_bytes());
    }
    h.finalize().into()
}

/// The TS 33.180 key period number of an NTP-UTC time in seconds:
/// ⌊(seconds − offset) / period⌋; `None` before the offset or for a zero period.
pub fn key_period_no(ntp_secs: u64, key_period: u64, key_period_offset: u64) -> Option<u64> {
    ntp_secs.checked_sub(key_period_offset)?.checked_div(key_period)
}

/// Builds the I_MESSAGE (module documentation) from `offer`, signed by `key` (the ECCSI key of
/// `offer.initiator_uri` for the month of `now_ntp`), the SSV encapsulated under the KMS public
/// key `z` to the responder's identifier for that month. Returns the message and the keys of
/// the call (the initiator protects CS 1 and receives CS 2).
///
/// `random` supplies the SSV, RAND and the ECCSI `j`: fresh CSPRNG output each call.
pub fn build(offer: &Offer, key: &SigningKey, z: &sakke::PublicKey, now_ntp: u64, random: &mut dyn FnMut(&mut [u8])) -> Result<(Vec<u8>, Keys)> {
    let b = identifier(&offer.responder_uri, &ntp(now_ntp))?;
    build_for(offer, key, &sakke::Recipient::new(z, &b), now_ntp, random)
}

/// [`build`] with the responder as a [`sakke::Recipient`] the caller keeps (its \[b\]P + Z
/// computed once per peer, KMS key and month, not per message). The recipient must be the
/// responder's identifier for the month of `now_ntp` (else [`Error::Encode`]: a stale cache
/// entry would encrypt to a key period the responder no longer uses).
pub fn build_for(offer: &Offer, key: &SigningKey, recipient: &sakke::Recipient, now_ntp: u64, random: &mut dyn FnMut(&mut [u8])) -> Result<(Vec<u8>, Keys)> {
    let t = ntp(now_ntp);
    check_key(key, &offer.initiator_uri, &t)?;
    srtp_policy::suite_of(&offer.policy)?;
    if offer.policy.policy_no != 0 {
        return Err(Error::encode("SP", "the crypto sessions reference policy 0"));
    }
    if recipient.id() != identifier(&offer.responder_uri, &t)? {
        return Err(Error::encode("SAKKE", "the recipient is not the responder's identifier for the month of T"));
    }
    let mut ssv = Zeroizing::new([0u8; sakke::SSV_LEN]);
    random(&mut ssv[..]);
    let data = recipient.encapsulate(&ssv)?;
    let mut rand = [0u8; RAND_LEN];
    random(&mut rand);
    let map = [SrtpCs { policy_no: 0, ssrc: offer.initiator_ssrc, roc: 0 }, SrtpCs { policy_no: 0, ssrc: 0, roc: 0 }];
    let mut payloads = vec![
        Payload::T(t),
        Payload::Rand(Rand { rand: rand.to_vec() }),
        idr(IdRole::INITIATOR, &offer.initiator_uri),
        idr(IdRole::RESPONDER, &offer.responder_uri),
    ];
    if let Some(kms) = &offer.kms_uri {
        payloads.push(idr(IdRole::INITIATOR_KMS, kms));
        payloads.push(idr(IdRole::RESPONDER_KMS, offer.responder_kms_uri.as_deref().unwrap_or(kms)));
    }
    payloads.push(Payload::Sp(offer.policy.clone()));
    payloads.push(Payload::Sakke(Sakke { params: SakkeParams::PARAM_SET_1, id_scheme: SakkeIdScheme::TEL_URI_MONTHLY, data: data.to_vec() }));
    let m = Message {
        header: CommonHeader {
            version: MIKEY_VERSION,
            data_type: DataType::SAKKE,
            v_flag: false,
            prf: offer.prf,
            csb_id: offer.csb_id,
            cs_map: CsIdMap::SrtpId(map.to_vec()),
        },
        payloads,
    };
    let bytes = seal(m, key, random)?;
    let keys = derive(offer.prf, Zeroizing::new(ssv.to_vec()), offer.csb_id, &rand, &offer.policy, &map)?;
    Ok((bytes, keys))
}

/// The data of the only IDR payload with `role` (ERR Invalid ID if absent or repeated).
fn idr_data(m: &Message, role: IdRole) -> Result<Vec<u8>> {
    let mut found = m.payloads.iter().filter_map(|p| match p {
        Payload::Idr(i) if i.role == role => Some(i.data.clone()),
        _ => None,
    });
    match (found.next(), found.next()) {
        (Some(d), None) => Ok(d),
        (None, _) => Err(rejected(ErrorCode::INVALID_ID, format!("no IDR with role {role:?}"))),
        (Some(_), Some(_)) => Err(rejected(ErrorCode::INVALID_ID, format!("more than one IDR with role {role:?}"))),
    }
}

/// The KMS URIs an I_MESSAGE names, **unverified**: (IDRkmsi, IDRkmsr), each `None` when
/// absent (RFC 6509 §4.1: optional). What a responder of several KMS communities uses to pick
/// the KPAK to verify under and to check the SSV was encapsulated under its own KMS's Z; the
/// signature, verified next, covers both. ERR Invalid DT for another data type, ERR Invalid
/// ID for a repeated or non-UTF-8 one.
pub fn kms_uris(i_message: &[u8]) -> Result<(Option<String>, Option<String>)> {
    let m = Message::decode(i_message)?;
    if m.header.data_type != DataType::SAKKE {
        return Err(rejected(ErrorCode::INVALID_DT, format!("data type {:?}, not an I_MESSAGE", m.header.data_type)));
    }
    let one = |role: IdRole| -> Result<Option<String>> {
        match idr_data(&m, role) {
            Ok(d) => String::from_utf8(d).map(Some).map_err(|_| rejected(ErrorCode::INVALID_ID, format!("{role:?} is not UTF-8"))),
            Err(_) if !m.payloads.iter().any(|p| matches!(p, Payload::Idr(i) if i.role == role)) => Ok(None),
            Err(e) => Err(e),
        }
    };
    Ok((one(IdRole::INITIATOR_KMS)?, one(IdRole::RESPONDER_KMS)?))
}

fn uid_of(m: &Message, role: IdRole) -> Result<[u8; 32]> {
    idr_data(m, role)?.try_into().map_err(|_| rejected(ErrorCode::INVALID_ID, format!("{role:?} is not a 32-octet UID")))
}

/// Responder: verifies an I_MESSAGE and decapsulates its SSV with the receiver key `rsk`.
///
/// Checks, in order: decoding and data type 26 (ERR Invalid DT); SIGN last and ECCSI (ERR
/// Auth failure); exactly one SAKKE payload with parameter set 1 (ERR Unspecified) and ID
/// scheme 1 or 2; the identities: scheme 1 — IDRi and IDRr URIs, identifiers for the month
/// of T; scheme 2 — the UIDs of IDR roles 8 and 9; the responder's identifier must be
/// `rsk.id()` (ERR Invalid ID: the message is for another user, or for another key period);
/// the ECCSI signature by the initiator's identifier under `kpak` (ERR Auth failure); T
/// within `skew_secs` of `now_ntp` and not replayed (`replay` records CSB ID, T and the
/// signature; ERR Invalid TS); decapsulation with the mandatory R re-check (ERR Auth
/// failure). With an SRTP-ID map of CS 1 and 2 under SP policy 0 and a RAND, the SRTP keys
/// are derived (ERR Invalid SP / SP par on a bad policy).
pub fn receive(
    i_message: &[u8],
    kpak: &Kpak,
    z: &sakke::PublicKey,
    rsk: &Rsk,
    now_ntp: u64,
    skew_secs: u64,
    replay: &mut dyn ReplayCache,
) -> Result<Received> {
    let p = parse(i_message, DataType::SAKKE)?;
    let m = &p.message;
    let mut sakkes = m.payloads.iter().filter_map(|x| if let Payload::Sakke(s) = x { Some(s) } else { None });
    let s = match (sakkes.next(), sakkes.next()) {
        (Some(s), None) => s.clone(),
        _ => return Err(rejected(ErrorCode::UNSPECIFIED, "an I_MESSAGE carries exactly one SAKKE payload")),
    };
    if s.params != SakkeParams::PARAM_SET_1 {
        return Err(rejected(ErrorCode::UNSPECIFIED, format!("SAKKE parameter set {} (only 1 is defined)", s.params.0)));
    }
    let (initiator, signer_id, b) = match s.id_scheme {
        SakkeIdScheme::TEL_URI_MONTHLY => {
            let (i, r) = (p.uri(IdRole::INITIATOR)?, p.uri(IdRole::RESPONDER)?);
            let signer = identifier(&i, &p.t)?;
            (Identity::Uri(i), signer, identifier(&r, &p.t)?)
        }
        SakkeIdScheme::TS33180_UID => {
            let (i, r) = (uid_of(m, IdRole::INITIATOR_UID)?, uid_of(m, IdRole::RESPONDER_UID)?);
            (Identity::Uid(i), i.to_vec(), r.to_vec())
        }
        other => return Err(rejected(ErrorCode::UNSPECIFIED, format!("SAKKE ID scheme {}", other.0))),
    };
    if b != rsk.id() {
        let why = match period_of(&p.t) {
            Ok((y, mo)) => format!("the SAKKE identifier is not this receiver key's (another user, or a key period other than the one of T, {y:04}-{mo:02})"),
            Err(_) => "the SAKKE identifier is not this receiver key's".to_string(),
        };
        return Err(rejected(ErrorCode::INVALID_ID, why));
    }
    eccsi::verify(kpak, &signer_id, i_message.get(..p.covered_len).unwrap_or_default(), &p.signature)?;
    p.check_fresh(now_ntp, skew_secs)?;
    if !replay.insert(m.header.csb_id, p.t.value, &p.signature) {
        return Err(rejected(ErrorCode::INVALID_TS, "replayed I_MESSAGE"));
    }
    let ssv = sakke::decapsulate(z, rsk, &s.data)?;
    let keys = match &m.header.cs_map {
        CsIdMap::SrtpId(_) => {
            let map = p.srtp_map()?;
            let rand = m
                .find(|x| if let Payload::Rand(r) = x { Some(r.rand.clone()) } else { None })
                .filter(|r| r.len() >= RAND_LEN)
                .ok_or_else(|| rejected(ErrorCode::UNSPECIFIED, format!("no RAND payload of at least {RAND_LEN} octets")))?;
            let sp = m
                .find(|x| match x {
                    Payload::Sp(s) if s.policy_no == 0 => Some(s.clone()),
                    _ => None,
                })
                .ok_or_else(|| rejected(ErrorCode::INVALID_SP, "no SP payload with policy number 0"))?;
            Some(derive(m.header.prf, Zeroizing::new(ssv.to_vec()), m.header.csb_id, &rand, &sp, &map)?)
        }
        _ => None,
    };
    Ok(Received { initiator, id_scheme: s.id_scheme, csb_id: m.header.csb_id, ssv, keys })
}

/// Fixed keys and a message for the fuzz target and its corpus replay (`fuzzing::mikey_sakke`).
pub(crate) mod fuzz {
    use super::*;
    use crate::eccsi::KmsSecret;
    use crate::signed_dh::fuzz::{ALICE, BOB, NOW, NoReplay, counter_random};
    use std::sync::OnceLock;
    use std::sync::atomic::AtomicU64;

    fn random(buf: &mut [u8]) {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        counter_random(&COUNTER, b"mediasec mikey_sakke fuzz", buf);
    }

    struct Fixture {
        kpak: Kpak,
        z: sakke::PublicKey,
        bob: Rsk,
        message: Vec<u8>,
    }

    fn build_fixture() -> Result<Fixture> {
        let kms = draw(&mut random, KmsSecret::from_bytes)?;
        let kpak = kms.kpak();
        let t = ntp(NOW);
        let alice_id = identifier(ALICE, &t)?;
        let (ssk, pvt) = draw(&mut random, |v| kms.issue(&alice_id, v))?;
        let alice = SigningKey::new(&kpak, &alice_id, ssk, pvt)?;
        let master = draw(&mut random, |b| sakke::KmsSecret::from_bytes(b))?;
        let z = master.public_key();
        let bob = master.issue(&identifier(BOB, &t)?)?;
        let offer = Offer {
            prf: PrfFunc::MIKEY_1,
            csb_id: 0x5a4b_e001,
            initiator_uri: ALICE.into(),
            responder_uri: BOB.into(),
            kms_uri: Some("kms.fuzz.example.org".into()),
            responder_kms_uri: None,
            initiator_ssrc: 0x1234_5678,
            policy: srtp_policy::aes_cm_128_hmac_sha1_80(),
        };
        let (message, _) = build(&offer, &alice, &z, NOW, &mut random)?;
        Ok(Fixture { kpak, z, bob, message })
    }

    fn fixture() -> Option<&'static Fixture> {
        static F: OnceLock<Option<Fixture>> = OnceLock::new();
        F.get_or_init(|| build_fixture().ok()).as_ref()
    }

    /// `data` as an I_MESSAGE to Bob; returns whether it was accepted.
    pub(crate) fn run(data: &[u8]) -> bool {
        // The responder reads IDRkmsi / IDRkmsr before verifying (cross-community, docs/high-security.md §10.9).
        let _ = kms_uris(data);
        fixture().is_some_and(|f| receive(data, &f.kpak, &f.z, &f.bob, NOW, 30, &mut NoReplay).is_ok())
    }

    /// The fixture's valid I_MESSAGE (the seed corpus).
    pub(crate) fn seed() -> Option<Vec<u8>> {
        fixture().map(|f| f.message.clone())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use base64::Engine;
    use std::collections::HashSet;

    #[derive(Default)]
    struct Cache(HashSet<(u32, u64, Vec<u8>)>);

    impl ReplayCache for Cache {
        fn insert(&mut self, csb: u32, ts: u64, sig: &[u8]) -> bool {
            self.0.insert((csb, ts, sig.to_vec()))
        }
    }

    fn streamwide() -> serde_json::Value {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/vectors/mikey-sakke-streamwide.json");
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn h(v: &serde_json::Value) -> Vec<u8> {
        hex::decode(v.as_str().unwrap()).unwrap()
    }

    /// TS 33.180 F.2.1 UIDs: Streamwide's five UID vectors and the three users of their
    /// I_MESSAGEs (KMS key period 16777215 s, offset 0, period number from T).
    #[test]
    fn ts33180_uids() {
        let j = streamwide();
        for v in j["uid_vectors"].as_array().unwrap() {
            let u = uid(
                v["uri"].as_str().unwrap(),
                v["kms_uri"].as_str().unwrap(),
                v["key_period"].as_u64().unwrap(),
                v["key_period_offset"].as_u64().unwrap(),
                v["key_period_no"].as_u64().unwrap(),
            );
            assert_eq!(u.to_vec(), h(&v["uid"]));
        }
        let kms = &j["kms"];
        let (period, offset) = (kms["UserKeyPeriod"].as_u64().unwrap(), kms["UserKeyOffset"].as_u64().unwrap());
        for (_, user) in j["users"].as_object().unwrap() {
            let no = key_period_no(0xec89_8da8, period, offset).unwrap();
            assert_eq!(no, user["key_period_no"].as_u64().unwrap());
            let u = uid(user["uri"].as_str().unwrap(), kms["KmsUri"].as_str().unwrap(), period, offset, no);
            assert_eq!(u.to_vec(), h(&user["uid"]));
        }
        assert_eq!(key_period_no(5, 10, 6), None);
        assert_eq!(key_period_no(5, 0, 0), None);
    }

    /// The three Streamwide TS 33.180 I_MESSAGEs (GMK, CSK, PCK): they decode and re-encode
    /// byte for byte, their ECCSI signatures verify, they decapsulate with the responder's
    /// published RSK (which validates) to the published key, and a replay is refused.
    #[test]
    fn streamwide_i_messages() {
        let j = streamwide();
        let kpak = Kpak::from_uncompressed(&h(&j["kms"]["PubAuthKey_KPAK"])).unwrap();
        let z = sakke::PublicKey::from_uncompressed(&h(&j["kms"]["PubEncKey_Z"])).unwrap();
        let mut cache = Cache::default();
        for m in j["i_messages"].as_array().unwrap() {
            let bytes = base64::engine::general_purpose::STANDARD.decode(m["imessage_b64"].as_str().unwrap()).unwrap();
            assert_eq!(Message::decode(&bytes).unwrap().encode().unwrap(), bytes);
            let init = &j["users"][m["initiator"].as_str().unwrap()];
            let resp = &j["users"][m["responder"].as_str().unwrap()];
            let rsk = Rsk::new(&z, &h(&resp["uid"]), &h(&resp["rsk"])).unwrap();
            let now = 0xec89_8da8_0000_0000 + (5 << 32);
            let r = receive(&bytes, &kpak, &z, &rsk, now, 30, &mut cache).unwrap();
            assert_eq!(r.ssv.to_vec(), h(&m["key"]), "{}", m["name"]);
            assert_eq!(r.initiator, Identity::Uid(h(&init["uid"]).try_into().unwrap()));
            // The CSB ID is the key ID (CSK, PCK) or, for a GMK, the GUK-ID (TS 33.180 E.2).
            assert_eq!(r.csb_id.to_be_bytes().to_vec(), h(m.get("guk_id").unwrap_or(&m["key_id"])));
            assert_eq!(r.id_scheme, SakkeIdScheme::TS33180_UID);
            assert!(r.keys.is_none());
            let e = receive(&bytes, &kpak, &z, &rsk, now, 30, &mut cache).unwrap_err();
            assert_eq!(e.err_code(), ErrorCode::INVALID_TS, "{e}");
            // Outside the time window.
            let e = receive(&bytes, &kpak, &z, &rsk, now + (60 << 32), 30, &mut Cache::default()).unwrap_err();
            assert_eq!(e.err_code(), ErrorCode::INVALID_TS, "{e}");
            // Another user's RSK: the message is not for it.
            let other = if m["responder"] == "bob" { "alice" } else { "bob" };
            let o = &j["users"][other];
            let orsk = Rsk::new(&z, &h(&o["uid"]), &h(&o["rsk"])).unwrap();
            let e = receive(&bytes, &kpak, &z, &orsk, now, 30, &mut Cache::default()).unwrap_err();
            assert_eq!(e.err_code(), ErrorCode::INVALID_ID, "{e}");
        }
    }

    /// Every single-byte change of a TS 33.180 I_MESSAGE is refused.
    #[test]
    fn streamwide_tampering_is_refused() {
        let j = streamwide();
        let kpak = Kpak::from_uncompressed(&h(&j["kms"]["PubAuthKey_KPAK"])).unwrap();
        let z = sakke::PublicKey::from_uncompressed(&h(&j["kms"]["PubEncKey_Z"])).unwrap();
        let m = &j["i_messages"][2];
        let bytes = base64::engine::general_purpose::STANDARD.decode(m["imessage_b64"].as_str().unwrap()).unwrap();
        let bob = &j["users"]["bob"];
        let rsk = Rsk::new(&z, &h(&bob["uid"]), &h(&bob["rsk"])).unwrap();
        let now = 0xec89_8da8_0000_0000;
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x01;
            assert!(receive(&b, &kpak, &z, &rsk, now, 30, &mut Cache::default()).is_err(), "byte {i} changed and accepted");
        }
        assert!(receive(&bytes[..bytes.len() - 1], &kpak, &z, &rsk, now, 30, &mut Cache::default()).is_err());
        let mut longer = bytes;
        longer.push(0);
        assert!(receive(&longer, &kpak, &z, &rsk, now, 30, &mut Cache::default()).is_err());
    }
}
