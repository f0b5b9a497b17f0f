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
//! forward secrecy); only the initiator is authenticated (the responder sends nothing but,
//! on a refusal, a signed error: [`answer`]);
//! lawful interception needs no man in the middle. The opposite trade-off to
//! [`crate::signed_dh`].
//!
//! Sans-IO: time, randomness (SSV, RAND, the ECCSI `j`) and the replay cache are parameters.

use zeroize::Zeroizing;

use crate::eccsi::{self, Kpak, SigningKey};
use crate::error::{Error, Result};
use crate::header::{CommonHeader, CsIdMap, MIKEY_VERSION, SrtpCs};
use crate::message::{Decoded, Message};
use crate::error_message::ErrorReport;
use crate::payload::{Payload, Rand, Sakke, SecurityPolicy, Timestamp};
use crate::psk::ReplayCache;
use crate::registry::{DataType, ErrorCode, IdRole, PrfFunc, SakkeIdScheme, SakkeParams};
use crate::sakke::{self, Rsk};
use crate::signed_dh::{self, Keys, Refused, check_key, derive, draw, idr, ntp, parse_decoded, period_of, seal, signed_error};
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
    kms_uris_of(&Message::decode(i_message)?)
}

/// [`kms_uris`] of a message already decoded.
pub fn kms_uris_of(m: &Message) -> Result<(Option<String>, Option<String>)> {
    if m.header.data_type != DataType::SAKKE {
        return Err(rejected(ErrorCode::INVALID_DT, format!("data type {:?}, not an I_MESSAGE", m.header.data_type)));
    }
    let one = |role: IdRole| -> Result<Option<String>> {
        match idr_data(m, role) {
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
/// signed octets — not the signature, which has a second valid form; ERR Invalid TS) — up
/// to here the message is *admitted* ([`answer`]) —;
/// decapsulation with the mandatory R re-check (ERR Auth failure). With an SRTP-ID map of
/// CS 1 and 2 under SP policy 0 and a RAND, the SRTP keys are derived (ERR Invalid SP / SP
/// par on a bad policy).
pub fn receive(
    i_message: &[u8],
    kpak: &Kpak,
    z: &sakke::PublicKey,
    rsk: &Rsk,
    now_ntp: u64,
    skew_secs: u64,
    replay: &mut dyn ReplayCache,
) -> Result<Received> {
    receive_decoded(&Decoded::decode(i_message)?, kpak, z, rsk, now_ntp, skew_secs, replay)
}

/// [`receive`] of a message already decoded (e.g. by an LI release that read its KMS URIs
/// first, [`kms_uris_of`]): no second decoding.
pub fn receive_decoded(
    i_message: &Decoded<'_>,
    kpak: &Kpak,
    z: &sakke::PublicKey,
    rsk: &Rsk,
    now_ntp: u64,
    skew_secs: u64,
    replay: &mut dyn ReplayCache,
) -> Result<Received> {
    open(admit(i_message.message().clone(), i_message.bytes(), kpak, rsk, now_ntp, skew_secs, replay)?, z, rsk)
}

/// Responder in a call: [`receive`], and on failure the RFC 3830 §5.1.2 error message to send
/// back (docs/high-security.md §10.8 "Refusals"), **signed** when the I_MESSAGE was admitted
/// (decoded, for our identifier `rsk.id()` under ID scheme 1, its signature verified under
/// `kpak`, T fresh, not a replay) and `key` is our ECCSI key for the month of the I_MESSAGE's
/// T (the key period the caller addressed, the one of `rsk`): `HDR, T, IDRr, ERR, SIGNr` with
/// T = the I_MESSAGE's own T (it selects the signing key's period and binds the error to that
/// message), IDRr = our URI (the I_MESSAGE's IDRr) — a refusal only we could have made
/// ([`refusal`] verifies it). The refusals so signed: decapsulation (ERR Auth failure: the
/// SAKKE data is not for our RSK, e.g. encapsulated under another KMS's Z), the SRTP-ID map,
/// RAND and SP (ERR Invalid SP, Unspecified). Every earlier refusal — undecodable, a broken
/// or untrusted signature, stale or replayed, and a message for another identity or key
/// period (ERR Invalid ID: we do not hold the key it names) — and any refusal of a TS 33.180
/// scheme 2 message (a UID names no URI to sign as) gets the unsigned `HDR, T, ERR`
/// ([`crate::signed_dh::error_reply`]), which the caller must read as a hint only (RFC 3830
/// §9): signing for unverified input would let anyone make us spend an ECCSI signature per
/// message.
#[allow(clippy::too_many_arguments)]
pub fn answer(
    i_message: &[u8],
    kpak: &Kpak,
    z: &sakke::PublicKey,
    rsk: &Rsk,
    key: &SigningKey,
    now_ntp: u64,
    skew_secs: u64,
    replay: &mut dyn ReplayCache,
    random: &mut dyn FnMut(&mut [u8]),
) -> core::result::Result<Received, Refused> {
    let unsigned = |error: Error| Refused { reply: signed_dh::error_reply(i_message, &error, now_ntp), error };
    let admitted = Message::decode(i_message).and_then(|m| admit(m, i_message, kpak, rsk, now_ntp, skew_secs, replay)).map_err(unsigned)?;
    let signer = match &admitted.responder {
        Some(uri) if check_key(key, uri, &admitted.p.t).is_ok() => Some((uri.clone(), admitted.p.t, admitted.p.message.header.clone())),
        _ => None,
    };
    open(admitted, z, rsk).map_err(|error| {
        let signed = signer.and_then(|(uri, t, header)| signed_error(&header, &error, t, &uri, key, random).ok());
        Refused { reply: signed.or_else(|| signed_dh::error_reply(i_message, &error, now_ntp)), error }
    })
}

/// Initiator: reads an error message answering our I_MESSAGE (CSB ID `csb_id`, T
/// `i_message_t`), e.g. from the key-management attribute of a 488 (docs/high-security.md
/// §10.8 "Refusals"): without SIGN, [`ErrorReport::Unauthenticated`] and no signer — anyone on
/// the path could have sent it, a hint only (RFC 3830 §9); ending with SIGN, it must carry our
/// I_MESSAGE's T (ERR Invalid TS otherwise) and be signed by the identity of the URI its IDRr
/// names for that month under `kpak` — the KPAK of the callee's community: ours, or the
/// external KMS's from its certificate — giving [`ErrorReport::Authenticated`] and that URI
/// (compare it with the URI called). Another CSB ID, or a SIGN that does not verify, is an
/// error, never a report. The shared rule: [`crate::signed_dh::Pending::refusal`].
pub fn refusal(error_message: &[u8], csb_id: u32, i_message_t: u64, kpak: &Kpak) -> Result<(ErrorReport, Option<String>)> {
    signed_dh::read_refusal(error_message, csb_id, kpak, |p| {
        if p.t != ntp(i_message_t) {
            return Err(rejected(ErrorCode::INVALID_TS, "a signed MIKEY-SAKKE error message carries the T of the I_MESSAGE it refuses"));
        }
        Ok(())
    })
}

/// Whether the ECCSI signature of `i_message` by its initiator (ID scheme 1: IDRi for the
/// month of T; scheme 2: the initiator's UID) verifies under `kpak` — and nothing else (no
/// time, replay or recipient check). For a receiver to tell which key generation of a
/// community signed a message it refused (docs/high-security.md §10.10: signed under a
/// retired generation); never a reason to accept one.
pub fn signed_under(i_message: &[u8], kpak: &Kpak) -> bool {
    let Ok(p) = Message::decode(i_message).and_then(|m| parse_decoded(m, i_message, DataType::SAKKE)) else { return false };
    let Some(s) = p.message.payloads.iter().find_map(|x| if let Payload::Sakke(s) = x { Some(s) } else { None }) else { return false };
    let signer = match s.id_scheme {
        SakkeIdScheme::TEL_URI_MONTHLY => p.uri(IdRole::INITIATOR).and_then(|i| identifier(&i, &p.t)),
        SakkeIdScheme::TS33180_UID => uid_of(&p.message, IdRole::INITIATOR_UID).map(|u| u.to_vec()),
        _ => return false,
    };
    signer.is_ok_and(|id| eccsi::verify(kpak, &id, i_message.get(..p.covered_len).unwrap_or_default(), &p.signature).is_ok())
}

/// An I_MESSAGE that passed [`receive`]'s checks up to decapsulation.
struct Admitted {
    p: signed_dh::Parsed,
    sakke: Sakke,
    initiator: Identity,
    /// Our URI (IDRr) under ID scheme 1; `None` under scheme 2.
    responder: Option<String>,
}

/// [`receive`]'s checks up to the replay cache (the message is then admitted); `message` is
/// what `i_message` decodes to.
fn admit(message: Message, i_message: &[u8], kpak: &Kpak, rsk: &Rsk, now_ntp: u64, skew_secs: u64, replay: &mut dyn ReplayCache) -> Result<Admitted> {
    let p = parse_decoded(message, i_message, DataType::SAKKE)?;
    let m = &p.message;
    let mut sakkes = m.payloads.iter().filter_map(|x| if let Payload::Sakke(s) = x { Some(s) } else { None });
    let s = match (sakkes.next(), sakkes.next()) {
        (Some(s), None) => s.clone(),
        _ => return Err(rejected(ErrorCode::UNSPECIFIED, "an I_MESSAGE carries exactly one SAKKE payload")),
    };
    if s.params != SakkeParams::PARAM_SET_1 {
        return Err(rejected(ErrorCode::UNSPECIFIED, format!("SAKKE parameter set {} (only 1 is defined)", s.params.0)));
    }
    let (initiator, responder, signer_id, b) = match s.id_scheme {
        SakkeIdScheme::TEL_URI_MONTHLY => {
            let (i, r) = (p.uri(IdRole::INITIATOR)?, p.uri(IdRole::RESPONDER)?);
            let (signer, b) = (identifier(&i, &p.t)?, identifier(&r, &p.t)?);
            (Identity::Uri(i), Some(r), signer, b)
        }
        SakkeIdScheme::TS33180_UID => {
            let (i, r) = (uid_of(m, IdRole::INITIATOR_UID)?, uid_of(m, IdRole::RESPONDER_UID)?);
            (Identity::Uid(i), None, i.to_vec(), r.to_vec())
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
    // The signed octets, not the signature: an ECCSI signature has a twin (s → q − s) that
    // verifies as well, so a replay under it would pass a cache of signatures.
    if !replay.insert(m.header.csb_id, p.t.value, i_message.get(..p.covered_len).unwrap_or_default()) {
        return Err(rejected(ErrorCode::INVALID_TS, "replayed I_MESSAGE"));
    }
    Ok(Admitted { p, sakke: s, initiator, responder })
}

/// [`receive`] after admission: decapsulation and the SRTP keys.
fn open(admitted: Admitted, z: &sakke::PublicKey, rsk: &Rsk) -> Result<Received> {
    let Admitted { p, sakke: s, initiator, .. } = admitted;
    let m = &p.message;
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

    /// `data` as an I_MESSAGE to Bob; returns whether it was accepted. Also read as an error
    /// message answering the fixture's I_MESSAGE ([`refusal`]).
    pub(crate) fn run(data: &[u8]) -> bool {
        if let Some(f) = fixture() {
            let _ = refusal(data, 0x5a4b_e001, NOW, &f.kpak);
        }
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
            // The same message under the other valid signature of it (s → q − s: J negates,
            // J_x stays r, so it verifies) is still a replay: the cache keys the signed octets,
            // not the signature.
            let mut twin = bytes.clone();
            let at = twin.len() - eccsi::SIGNATURE_LEN + 32;
            let s_bytes: [u8; 32] = twin[at..at + 32].try_into().unwrap();
            let negated = -Option::<p256::Scalar>::from(p256::elliptic_curve::PrimeField::from_repr(s_bytes.into())).unwrap();
            twin[at..at + 32].copy_from_slice(&p256::elliptic_curve::PrimeField::to_repr(&negated));
            assert_ne!(twin, bytes);
            let e = receive(&twin, &kpak, &z, &rsk, now, 30, &mut cache).unwrap_err();
            assert_eq!(e.err_code(), ErrorCode::INVALID_TS, "the signature twin is a replay: {e}");
            receive(&twin, &kpak, &z, &rsk, now, 30, &mut Cache::default()).expect("the twin verifies on its own");
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

    fn random(buf: &mut [u8]) {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        signed_dh::fuzz::counter_random(&COUNTER, b"mediasec mikey_sakke refusals", buf);
    }

    /// [`signed_under`]: true under the signer's KPAK only — not another KPAK, not a message
    /// with a flipped signed octet, not garbage — whatever the message's time or recipient.
    #[test]
    fn signed_under_checks_only_the_signature() {
        use crate::signed_dh::fuzz::{ALICE, BOB, NOW};
        let ksak = draw(&mut random, eccsi::KmsSecret::from_bytes).unwrap();
        let other = draw(&mut random, eccsi::KmsSecret::from_bytes).unwrap();
        let id = identifier(ALICE, &ntp(NOW)).unwrap();
        let (ssk, pvt) = draw(&mut random, |v| ksak.issue(&id, v)).unwrap();
        let alice = SigningKey::new(&ksak.kpak(), &id, ssk, pvt).unwrap();
        let z = draw(&mut random, |b| sakke::KmsSecret::from_bytes(b)).unwrap().public_key();
        let o = Offer { prf: PrfFunc::MIKEY_1, csb_id: 9, initiator_uri: ALICE.into(), responder_uri: BOB.into(), kms_uri: None, responder_kms_uri: None, initiator_ssrc: 7, policy: srtp_policy::aes_cm_128_hmac_sha1_80() };
        let (m, _) = build(&o, &alice, &z, NOW, &mut random).unwrap();
        assert!(signed_under(&m, &ksak.kpak()));
        assert!(!signed_under(&m, &other.kpak()));
        let mut altered = m;
        if let Some(b) = altered.get_mut(20) {
            *b ^= 1;
        }
        assert!(!signed_under(&altered, &ksak.kpak()));
        assert!(!signed_under(b"not a message", &ksak.kpak()) && !signed_under(&[], &ksak.kpak()));
    }

    /// [`answer`] and [`refusal`]: an I_MESSAGE bob admits (signed by alice under the trusted
    /// KPAK, for his identifier of the month of T, fresh) but cannot open — encapsulated under
    /// another KMS's Z — is refused with an error bob signs with his ECCSI key of that month,
    /// carrying the I_MESSAGE's T, which alice reads as authenticated and signed by bob; the
    /// same error altered, read for another CSB, another T or under another KPAK is an error.
    /// Refusals before admission (a message for carol, a broken signature) and one where bob's
    /// ECCSI key is not of the I_MESSAGE's month get the unsigned error, read as a hint.
    #[test]
    fn refusals_after_admission_are_signed_by_the_callee() {
        use crate::signed_dh::fuzz::{ALICE, BOB, NOW, NoReplay};
        const CAROL: &str = "sip:carol@fuzz.example.org";
        let ksak = draw(&mut random, eccsi::KmsSecret::from_bytes).unwrap();
        let kpak = ksak.kpak();
        let key = |uri: &str, at: u64| {
            let id = identifier(uri, &ntp(at)).unwrap();
            let (ssk, pvt) = draw(&mut random, |v| ksak.issue(&id, v)).unwrap();
            SigningKey::new(&kpak, &id, ssk, pvt).unwrap()
        };
        let master = draw(&mut random, |b| sakke::KmsSecret::from_bytes(b)).unwrap();
        let other_master = draw(&mut random, |b| sakke::KmsSecret::from_bytes(b)).unwrap();
        let z = master.public_key();
        let (alice, bob) = (key(ALICE, NOW), key(BOB, NOW));
        let bob_rsk = master.issue(&identifier(BOB, &ntp(NOW)).unwrap()).unwrap();
        let offer = |csb_id: u32, to: &str| Offer {
            prf: PrfFunc::MIKEY_1,
            csb_id,
            initiator_uri: ALICE.into(),
            responder_uri: to.into(),
            kms_uri: None,
            responder_kms_uri: None,
            initiator_ssrc: 7,
            policy: srtp_policy::aes_cm_128_hmac_sha1_80(),
        };
        let answer_at = |m: &[u8], key: &SigningKey| answer(m, &kpak, &z, &bob_rsk, key, NOW + (1 << 32), 30, &mut NoReplay, &mut random);

        let (good, _) = build(&offer(1, BOB), &alice, &z, NOW, &mut random).unwrap();
        assert!(answer_at(&good, &bob).unwrap().keys.is_some());

        let (unopenable, _) = build(&offer(2, BOB), &alice, &other_master.public_key(), NOW, &mut random).unwrap();
        let refused = answer_at(&unopenable, &bob).unwrap_err();
        assert_eq!(refused.error.err_code(), ErrorCode::AUTH_FAILURE, "{}", refused.error);
        let reply = refused.reply.expect("an error message");
        let (report, signer) = refusal(&reply, 2, NOW, &kpak).unwrap();
        assert!(report.is_authenticated() && report.codes() == [ErrorCode::AUTH_FAILURE], "{report:?}");
        assert_eq!(signer.as_deref(), Some(BOB));
        let m = Message::decode(&reply).unwrap();
        assert!(m.payloads.first() == Some(&Payload::T(ntp(NOW))), "the I_MESSAGE's T: {m:?}");

        let mut forged = reply.clone();
        let last = forged.len() - 1;
        forged[last] ^= 1;
        assert!(refusal(&forged, 2, NOW, &kpak).is_err(), "a SIGN that does not verify is no report");
        assert!(refusal(&reply, 3, NOW, &kpak).is_err(), "another CSB's error");
        assert_eq!(refusal(&reply, 2, NOW + (1 << 32), &kpak).unwrap_err().err_code(), ErrorCode::INVALID_TS, "another I_MESSAGE's T");
        let stranger = draw(&mut random, eccsi::KmsSecret::from_bytes).unwrap().kpak();
        assert!(refusal(&reply, 2, NOW, &stranger).is_err(), "signed under another KPAK");

        let unsigned = |m: &[u8], key: &SigningKey, csb: u32, code: ErrorCode| {
            let refused = answer_at(m, key).unwrap_err();
            assert_eq!(refused.error.err_code(), code, "{}", refused.error);
            let (report, signer) = refusal(&refused.reply.expect("an error message"), csb, NOW, &kpak).unwrap();
            assert!(!report.is_authenticated() && report.codes() == [code] && signer.is_none(), "{report:?}");
        };
        let (for_carol, _) = build(&offer(4, CAROL), &alice, &z, NOW, &mut random).unwrap();
        unsigned(&for_carol, &bob, 4, ErrorCode::INVALID_ID);
        let (mut broken, _) = build(&offer(5, BOB), &alice, &z, NOW, &mut random).unwrap();
        let last = broken.len() - 1;
        broken[last] ^= 1;
        unsigned(&broken, &bob, 5, ErrorCode::AUTH_FAILURE);
        let (unopenable, _) = build(&offer(6, BOB), &alice, &other_master.public_key(), NOW, &mut random).unwrap();
        let december = NOW + ((30 * 86_400) << 32);
        unsigned(&unopenable, &key(BOB, december), 6, ErrorCode::AUTH_FAILURE);
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
