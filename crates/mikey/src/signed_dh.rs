//! ECCSI-signed MIKEY Diffie-Hellman: the high-security mode (docs/high-security.md).
//!
//! The RFC 3830 DH method (§3.3) with its SIGN payloads made by ECCSI (RFC 6507, S type 2 as
//! RFC 6509 §4.3 registers it) under identity-based keys a KMS issues per identity and month
//! ([`eccsi::identity`]):
//!
//! ```text
//! DH_INIT (data type 4) = HDR, T, RAND, IDRi, IDRr, SP, DHi, SIGNi
//! DH_RESP (data type 5) = HDR, T, IDRr, IDRi, DHr, DHi, SIGNr
//! ```
//!
//! - **HDR**: version 1, V = 0 (RFC 3830 §6.1: the V flag is ignored in the DH method, the
//!   response is mandatory), PRF chosen by the initiator, the CSB ID, an SRTP-ID map (RFC 3830
//!   §6.1.1) with CS 1 = the initiator's stream (its SSRC) and CS 2 = the responder's stream
//!   (SSRC 0 in DH_INIT, filled in by the responder in DH_RESP), both under SP policy 0 — the
//!   two crypto sessions of a MIKEY-TICKET call (`crates/kms/src/ue.rs`) on the RFC 3830 map.
//! - **T**: NTP-UTC (RFC 3830 §6.6), the sender's current time. DH_RESP carries the
//!   responder's own time *(ours, as RFC 6043 responders do)*; its binding to the DH_INIT is
//!   the signed DHi echo.
//! - **IDRi / IDRr** (RFC 6043 §6.6 roles 1 and 2, ID type URI): the two parties' URIs. The
//!   ECCSI signer identity is `eccsi::identity(URI, year, month)` with year and month taken
//!   from the message's own T payload (UTC): the form of RFC 6509 ID scheme 1, "tel URI with
//!   monthly keys", applied to any URI.
//! - **SP** (RFC 3830 §6.10): the SRTP policy, as in the ticket messages.
//! - **DH** (RFC 3830 §6.4): group OAKLEY 5 only ([`crate::dh_group`]), KV NULL.
//! - **SIGN** (RFC 3830 §6.5, §5.2): S type ECCSI, signature = `r ‖ s ‖ PVT` (129 octets) over
//!   every octet of the message before the Signature field, the 2-octet S type / length
//!   header included, nothing appended (RFC 3830's DH method adds no identities, unlike
//!   RFC 6043 Table 5.2). That is the coverage of minisip's libmikey for RFC 3830 signatures
//!   and of the MIKEY-SAKKE implementations (verified against published TS 33.180 messages
//!   in [`crate::eccsi`]'s tests).
//!
//! Keys: TGK = g^(xi·xr) mod p as its 192-octet big-endian value (RFC 3830 §4.1.1, §6.4);
//! each crypto session's SRTP master key and salt = PRF(TGK, label(const, CS ID, CSB ID,
//! RAND)) (RFC 3830 §4.1.3, [`crate::keys::label_tgk`], [`crate::srtp_policy::derive`]).
//!
//! **Perfect forward secrecy.** The private exponents xi and xr exist only in the initiator's
//! [`Pending`] and in [`answer`]'s stack frame ([`dh_group::EphemeralSecret`], zeroized on
//! drop, never serialised). Long-term keys (KMS secret, SSKs) only sign; once both exponents
//! are gone, a recorded exchange cannot be decrypted by anyone, the KMS included. The KMS can
//! still impersonate any user towards a live call (active man-in-the-middle): see
//! docs/high-security.md.
//!
//! Sans-IO: time (`now_ntp`, the 64-bit NTP-UTC timestamp) and randomness (`random`, which
//! must fill its buffer from a CSPRNG) are parameters; replays are rejected through the
//! caller's [`ReplayCache`]. Failures are [`Error::Rejected`] with the RFC 3830 §6.12 ERR code;
//! [`error_reply`] builds the RFC 3830 §5.1.2 error message a responder sends back.

use zeroize::Zeroizing;

use crate::dh_group::{self, EphemeralSecret};
use crate::eccsi::{self, Kpak, SigningKey};
use crate::error::{Error, Result};
use crate::header::{CommonHeader, CsIdMap, MIKEY_VERSION, SrtpCs};
use crate::keys;
use crate::message::Message;
use crate::error_message::ErrorReport;
use crate::payload::{Dh, ErrPayload, Idr, KeyValidity, Payload, Rand, SecurityPolicy, Sign, Timestamp};
use crate::psk::ReplayCache;
use crate::registry::{DataType, DhGroup, ErrorCode, IdRole, IdType, PrfFunc, SignatureType, TsType};
use crate::srtp_policy::{self, CryptoSession, SrtpPolicy};

/// Length of the RAND payload the initiator sends (RFC 3830 §6.11: at least 128 bits).
pub const RAND_LEN: usize = 16;

/// How many times a builder draws fresh randomness when a draw is unusable (an ECCSI `j` or a
/// DH exponent out of range: probability < 2⁻³² each) before giving up.
const MAX_DRAWS: usize = 8;

/// What the initiator offers.
#[derive(Debug, Clone)]
pub struct Offer {
    /// PRF of the HDR (RFC 3830 §6.1; MIKEY-1 = PRF-HMAC-SHA-1, or PRF-HMAC-SHA-256).
    pub prf: PrfFunc,
    /// CSB ID (RFC 3830 §6.1): random, chosen by the initiator.
    pub csb_id: u32,
    /// The initiator's URI (IDRi; with the month of T, its ECCSI identity).
    pub initiator_uri: String,
    /// The URI called (IDRr).
    pub responder_uri: String,
    /// SSRC of the initiator's media stream (CS 1).
    pub initiator_ssrc: u32,
    /// The SRTP policy (SP payload, policy number 0), e.g.
    /// [`srtp_policy::aes_cm_128_hmac_sha1_80`].
    pub policy: SecurityPolicy,
}

/// SRTP keys of a call and the TGK they come from (shared with [`crate::mikey_sakke`]).
pub struct Keys {
    /// The TGK: g^(xi·xr) mod p, 192 octets (RFC 3830 §4.1.1), in this mode; the 16-octet
    /// SSV in MIKEY-SAKKE (RFC 6509).
    pub tgk: Zeroizing<Vec<u8>>,
    /// CS 1: initiator → responder.
    pub initiator_stream: SrtpPolicy,
    /// CS 2: responder → initiator.
    pub responder_stream: SrtpPolicy,
}

impl core::fmt::Debug for Keys {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Keys")
            .field("initiator_stream", &self.initiator_stream)
            .field("responder_stream", &self.responder_stream)
            .finish_non_exhaustive()
    }
}

/// What the responder learns from a verified DH_INIT, with the keys.
#[derive(Debug)]
pub struct Answered {
    /// The DH_RESP to send back.
    pub response: Vec<u8>,
    /// The authenticated initiator URI (IDRi, signature verified).
    pub initiator_uri: String,
    /// The keys.
    pub keys: Keys,
}

/// What the initiator learns from a verified DH_RESP.
#[derive(Debug)]
pub struct Finished {
    /// The authenticated responder URI (IDRr of DH_RESP, signature verified). Only
    /// [`Pending::finish_forwarded`] lets it differ from the URI called
    /// ([`Finished::redirected`]).
    pub responder_uri: String,
    /// Whether the responder is not the one called.
    pub redirected: bool,
    /// The keys.
    pub keys: Keys,
}

/// The initiator's state between DH_INIT and DH_RESP: holds the private exponent xi. Drop it
/// as soon as [`Pending::finish`] succeeded (the exponent is zeroized on drop, which is what
/// makes the exchange forward-secret). `finish` takes `&self` so that a forged DH_RESP
/// cannot cancel a call: the genuine one can still be accepted.
pub struct Pending {
    offer: Offer,
    rand: [u8; RAND_LEN],
    secret: EphemeralSecret,
    dh_i: [u8; dh_group::VALUE_LEN],
}

impl core::fmt::Debug for Pending {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Pending").field("offer", &self.offer).finish_non_exhaustive()
    }
}

fn rejected(code: ErrorCode, reason: impl Into<String>) -> Error {
    Error::rejected(code, reason)
}

/// The key period (UTC year, month) of an NTP-UTC timestamp: the month that selects a user's
/// ECCSI key (RFC 6509 ID scheme 1: monthly keys). NTP era rollover follows RFC 4330 §3: a
/// seconds value with the top bit clear is read as era 1 (2036 onwards).
pub fn period_of(t: &Timestamp) -> Result<(u16, u8)> {
    let secs = match t.ts_type {
        TsType::NTP_UTC => t.value >> 32,
        TsType::NTP_UTC_32 => t.value & 0xffff_ffff,
        other => return Err(rejected(ErrorCode::INVALID_TS, format!("timestamp type {other:?}: an NTP-UTC time is needed for the key period"))),
    };
    let secs = if secs < 0x8000_0000 { secs + (1 << 32) } else { secs };
    // Days since 1970-01-01, then H. Hinnant's civil_from_days (proleptic Gregorian).
    let days = secs.checked_sub(2_208_988_800).ok_or_else(|| rejected(ErrorCode::INVALID_TS, "time before 1970"))? / 86_400;
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    let year = u16::try_from(year).map_err(|_| rejected(ErrorCode::INVALID_TS, "year out of range"))?;
    Ok((year, u8::try_from(month).unwrap_or(1)))
}

/// The ECCSI identity that signs a message sent by `uri` at time `t`.
pub fn signer_identity(uri: &str, t: &Timestamp) -> Result<Vec<u8>> {
    let (year, month) = period_of(t)?;
    Ok(eccsi::identity(uri, year, month))
}

pub(crate) fn ntp(now_ntp: u64) -> Timestamp {
    Timestamp { ts_type: TsType::NTP_UTC, value: now_ntp }
}

pub(crate) fn idr(role: IdRole, uri: &str) -> Payload {
    Payload::Idr(Idr { role, id_type: IdType::URI, data: uri.as_bytes().to_vec() })
}

fn dh(value: &[u8]) -> Payload {
    Payload::Dh(Dh { group: DhGroup::OAKLEY_5, value: value.to_vec(), reserved: 0, validity: KeyValidity::Null })
}

pub(crate) fn draw<T>(random: &mut dyn FnMut(&mut [u8]), make: impl Fn(&[u8; 32]) -> Result<T>) -> Result<T> {
    let mut last = Error::FreshRandomness { what: "no draw made" };
    for _ in 0..MAX_DRAWS {
        let mut buf = Zeroizing::new([0u8; 32]);
        random(&mut *buf);
        match make(&buf) {
            Err(e @ Error::FreshRandomness { .. }) => last = e,
            other => return other,
        }
    }
    Err(last)
}

/// Appends SIGN (ECCSI) to `m`, signed by `key` over every octet before the signature.
pub(crate) fn seal(m: Message, key: &SigningKey, random: &mut dyn FnMut(&mut [u8])) -> Result<Vec<u8>> {
    let mut m = m;
    m.payloads.push(Payload::Sign(Sign { sig_type: SignatureType::ECCSI, signature: vec![0; eccsi::SIGNATURE_LEN] }));
    let mut bytes = m.encode()?;
    bytes.truncate(bytes.len().saturating_sub(eccsi::SIGNATURE_LEN));
    let sig = draw(random, |j| key.sign(&bytes, j))?;
    bytes.extend_from_slice(&sig);
    Ok(bytes)
}

pub(crate) fn check_key(key: &SigningKey, uri: &str, t: &Timestamp) -> Result<()> {
    if key.id() != signer_identity(uri, t)?.as_slice() {
        let (y, m) = period_of(t)?;
        return Err(Error::encode("SIGN", format!("the signing key is not the ECCSI key of {uri} for {y:04}-{m:02}")));
    }
    Ok(())
}

/// Builds DH_INIT (module documentation) and the state awaiting DH_RESP.
///
/// `key` must be the ECCSI key of `offer.initiator_uri` for the month of `now_ntp`.
/// `random` supplies RAND, the DH exponent xi and the ECCSI `j` (fresh CSPRNG output each
/// call; never replay it).
pub fn offer(offer: &Offer, key: &SigningKey, now_ntp: u64, random: &mut dyn FnMut(&mut [u8])) -> Result<(Vec<u8>, Pending)> {
    let t = ntp(now_ntp);
    check_key(key, &offer.initiator_uri, &t)?;
    srtp_policy::suite_of(&offer.policy)?;
    if offer.policy.policy_no != 0 {
        return Err(Error::encode("SP", "the crypto sessions reference policy 0"));
    }
    let mut rand = [0u8; RAND_LEN];
    random(&mut rand);
    let secret = draw(random, |x| EphemeralSecret::new(DhGroup::OAKLEY_5, x))?;
    let dh_i = secret.public_value();
    let m = Message {
        header: CommonHeader {
            version: MIKEY_VERSION,
            data_type: DataType::DH_INIT,
            v_flag: false,
            prf: offer.prf,
            csb_id: offer.csb_id,
            cs_map: CsIdMap::SrtpId(vec![
                SrtpCs { policy_no: 0, ssrc: offer.initiator_ssrc, roc: 0 },
                SrtpCs { policy_no: 0, ssrc: 0, roc: 0 },
            ]),
        },
        payloads: vec![
            Payload::T(t),
            Payload::Rand(Rand { rand: rand.to_vec() }),
            idr(IdRole::INITIATOR, &offer.initiator_uri),
            idr(IdRole::RESPONDER, &offer.responder_uri),
            Payload::Sp(offer.policy.clone()),
            dh(&dh_i),
        ],
    };
    let bytes = seal(m, key, random)?;
    Ok((bytes, Pending { offer: offer.clone(), rand, secret, dh_i }))
}

/// A DH_INIT or DH_RESP split into what the checks need.
pub(crate) struct Parsed {
    pub(crate) message: Message,
    pub(crate) t: Timestamp,
    pub(crate) signature: Vec<u8>,
    pub(crate) covered_len: usize,
}

pub(crate) fn parse(bytes: &[u8], dt: DataType) -> Result<Parsed> {
    parse_decoded(Message::decode(bytes)?, bytes, dt)
}

/// [`parse`] of `message`, the message `bytes` decode to.
pub(crate) fn parse_decoded(message: Message, bytes: &[u8], dt: DataType) -> Result<Parsed> {
    if message.header.data_type != dt {
        return Err(rejected(ErrorCode::INVALID_DT, format!("data type {:?}, expected {dt:?}", message.header.data_type)));
    }
    let sign = match message.payloads.last() {
        Some(Payload::Sign(s)) => s.clone(),
        _ => return Err(rejected(ErrorCode::AUTH_FAILURE, "SIGN is not the last payload")),
    };
    if sign.sig_type != SignatureType::ECCSI {
        return Err(rejected(ErrorCode::AUTH_FAILURE, format!("signature type {:?}, ECCSI expected", sign.sig_type)));
    }
    let t = message
        .find(|p| if let Payload::T(t) = p { Some(*t) } else { None })
        .ok_or_else(|| rejected(ErrorCode::INVALID_TS, "no T payload"))?;
    let covered_len = bytes.len().saturating_sub(sign.signature.len());
    Ok(Parsed { message, t, signature: sign.signature, covered_len })
}

impl Parsed {
    /// The URI of the first IDR with `role` (ID type URI, UTF-8).
    pub(crate) fn uri(&self, role: IdRole) -> Result<String> {
        let idr = self
            .message
            .find(|p| match p {
                Payload::Idr(i) if i.role == role => Some(i.clone()),
                _ => None,
            })
            .ok_or_else(|| rejected(ErrorCode::INVALID_ID, format!("no IDR with role {role:?}")))?;
        if idr.id_type != IdType::URI {
            return Err(rejected(ErrorCode::INVALID_ID, format!("{role:?}: ID type {:?}, URI expected", idr.id_type)));
        }
        String::from_utf8(idr.data).map_err(|_| rejected(ErrorCode::INVALID_ID, format!("{role:?}: URI is not UTF-8")))
    }

    /// Verifies SIGN as the signature of `signer_uri` (identity for the month of T).
    pub(crate) fn verify(&self, bytes: &[u8], kpak: &Kpak, signer_uri: &str) -> Result<()> {
        let id = signer_identity(signer_uri, &self.t)?;
        eccsi::verify(kpak, &id, bytes.get(..self.covered_len).unwrap_or_default(), &self.signature)
    }

    pub(crate) fn check_fresh(&self, now_ntp: u64, skew_secs: u64) -> Result<()> {
        let (secs, now) = (self.t.value >> 32, now_ntp >> 32);
        if self.t.ts_type != TsType::NTP_UTC {
            return Err(rejected(ErrorCode::INVALID_TS, format!("timestamp type {:?}, NTP-UTC expected", self.t.ts_type)));
        }
        if secs.abs_diff(now) > skew_secs {
            return Err(rejected(ErrorCode::INVALID_TS, format!("timestamp {secs} outside ±{skew_secs} s of {now}")));
        }
        Ok(())
    }

    /// The DH payloads in order, each checked: OAKLEY 5 (else ERR "DH group not supported").
    fn dh_values(&self) -> Result<Vec<Vec<u8>>> {
        self.message
            .payloads
            .iter()
            .filter_map(|p| if let Payload::Dh(d) = p { Some(d) } else { None })
            .map(|d| match dh_group::check_group(d.group) {
                Ok(()) => Ok(d.value.clone()),
                Err(e) => Err(rejected(ErrorCode::INVALID_DH, e.to_string())),
            })
            .collect()
    }

    pub(crate) fn srtp_map(&self) -> Result<[SrtpCs; 2]> {
        match &self.message.header.cs_map {
            CsIdMap::SrtpId(v) => match v.as_slice() {
                [a, b] if a.policy_no == 0 && b.policy_no == 0 => Ok([*a, *b]),
                _ => Err(rejected(ErrorCode::INVALID_SP, "the SRTP-ID map must hold CS 1 and CS 2, both under policy 0")),
            },
            _ => Err(rejected(ErrorCode::INVALID_SP, "an SRTP-ID map (RFC 3830 §6.1.1) is expected")),
        }
    }
}

fn bad_dh(e: &Error) -> Error {
    rejected(ErrorCode::UNSPECIFIED, format!("DH value refused: {e}"))
}

/// Both parties' SRTP keys from the TGK (RFC 3830 §4.1.3: CS ID 1 and 2, CSB ID, RAND).
pub(crate) fn derive(prf: PrfFunc, tgk: Zeroizing<Vec<u8>>, csb_id: u32, rand: &[u8], sp: &SecurityPolicy, map: &[SrtpCs; 2]) -> Result<Keys> {
    let one = |cs_id: u8, cs: &SrtpCs| {
        let session = CryptoSession { ssrc: cs.ssrc, roc: cs.roc, mki: Vec::new() };
        srtp_policy::derive(prf, &tgk[..], |c| keys::label_tgk(c, cs_id, csb_id, rand), None, sp, &session)
    };
    let [cs1, cs2] = map;
    Ok(Keys { initiator_stream: one(1, cs1)?, responder_stream: one(2, cs2)?, tgk })
}

/// Why a DH_INIT got no DH_RESP ([`answer`]), or an I_MESSAGE was refused
/// ([`crate::mikey_sakke::answer`]), with the error message to send back.
#[derive(Debug)]
pub struct Refused {
    /// What failed (its ERR code: [`Error::err_code`]).
    pub error: Error,
    /// The RFC 3830 §5.1.2 error message `HDR, T, [IDRr], ERR, [SIGNr]`: signed by the
    /// responder's key, and naming the responder (IDRr, *ours*: the format has no ID, but the
    /// signer must be named for a forwarded call's error to verify) once the DH_INIT was
    /// admitted — its signature verified, T fresh, not a replay — unsigned before (signing for unverified or replayed input would let anyone make us
    /// spend an ECCSI signature per datagram, RFC 3830 §9). `None` when the DH_INIT has no
    /// decodable header.
    pub reply: Option<Vec<u8>>,
}

impl From<Refused> for Error {
    fn from(r: Refused) -> Self {
        r.error
    }
}

/// Responder: verifies a DH_INIT and answers it with DH_RESP.
///
/// Checks, in order: decoding and data type (ERR Invalid DT); SIGN last and ECCSI (ERR Auth
/// failure); the signature by the IDRi URI's identity for the month of T under `kpak` (ERR
/// Auth failure); T within `skew_secs` of `now_ntp` (NTP-UTC, 64-bit) and not replayed
/// (`replay` records CSB ID, T and the signed octets — not the malleable signature; ERR
/// Invalid TS); IDRr equal to
/// `responder_uri` (ERR Invalid ID); one DH payload in group OAKLEY 5 (ERR Invalid DH) with a
/// valid value; the SRTP-ID map and SP (ERR Invalid SP / SP par).
///
/// Then draws xr (from `random`, with the ECCSI `j`), builds DH_RESP signed by `key` (the
/// ECCSI key of `responder_uri` for the month of `now_ntp`), and derives the keys. CS 2 of
/// the answer carries `responder_ssrc`. On failure, [`Refused`] carries the error and the
/// error message to send back: signed once the DH_INIT was admitted (its signature verified,
/// T fresh, not a replay) — a DH_INIT refused then (IDRr not us, DH, RAND, SP, CS map) gets
/// `HDR, T, IDRr, ERR, SIGNr` (RFC 3830 §5.1.2: `[V|SIGNr]`), which the initiator verifies
/// with [`Pending::refusal`] — unsigned ([`error_reply`]) before.
#[allow(clippy::too_many_arguments)]
pub fn answer(
    i_message: &[u8],
    kpak: &Kpak,
    key: &SigningKey,
    responder_uri: &str,
    responder_ssrc: u32,
    now_ntp: u64,
    skew_secs: u64,
    replay: &mut dyn ReplayCache,
    random: &mut dyn FnMut(&mut [u8]),
) -> std::result::Result<Answered, Refused> {
    let unsigned = |error: Error| Refused { reply: error_reply(i_message, &error, now_ntp), error };
    let now = ntp(now_ntp);
    check_key(key, responder_uri, &now).map_err(unsigned)?;
    let p = parse(i_message, DataType::DH_INIT).map_err(unsigned)?;
    let initiator_uri = p.uri(IdRole::INITIATOR).map_err(unsigned)?;
    p.verify(i_message, kpak, &initiator_uri).map_err(unsigned)?;
    p.check_fresh(now_ntp, skew_secs).map_err(unsigned)?;
    // The cache keys on the signed octets, not on the signature: ECCSI signatures are
    // malleable ((r, q − s, PVT) verifies whenever (r, s, PVT) does: J becomes −J, same x),
    // so a replay with s negated would otherwise pass as a new message.
    if !replay.insert(p.message.header.csb_id, p.t.value, i_message.get(..p.covered_len).unwrap_or_default()) {
        return Err(unsigned(rejected(ErrorCode::INVALID_TS, "replayed DH_INIT")));
    }
    respond(&p, initiator_uri, key, responder_uri, responder_ssrc, now, random).map_err(|error| {
        let reply = signed_error(&p.message.header, &error, now, responder_uri, key, random).ok().or_else(|| error_reply(i_message, &error, now_ntp));
        Refused { reply, error }
    })
}

/// `HDR, T, IDRr, ERR, SIGNr` answering a message with header `failed` (RFC 3830 §5.1.2): the
/// header copied with data type Error and V = 0, the T `now`, our URI, the ERR of `error`,
/// signed by `key` (the ECCSI key of `responder_uri` for the month of `now`). Signed-DH passes
/// the responder's clock; MIKEY-SAKKE the I_MESSAGE's own T ([`crate::mikey_sakke::answer`]).
pub(crate) fn signed_error(failed: &CommonHeader, error: &Error, now: Timestamp, responder_uri: &str, key: &SigningKey, random: &mut dyn FnMut(&mut [u8])) -> Result<Vec<u8>> {
    let header = CommonHeader { data_type: DataType::ERROR, v_flag: false, ..failed.clone() };
    let payloads = vec![Payload::T(now), idr(IdRole::RESPONDER, responder_uri), Payload::Err(ErrPayload { code: error.err_code(), reserved: 0 })];
    seal(Message { header, payloads }, key, random)
}

/// [`answer`] once the DH_INIT `p` (from `initiator_uri`) was admitted: the checks
/// that may be answered with a signed error, then DH_RESP and the keys.
fn respond(p: &Parsed, initiator_uri: String, key: &SigningKey, responder_uri: &str, responder_ssrc: u32, now: Timestamp, random: &mut dyn FnMut(&mut [u8])) -> Result<Answered> {
    let called = p.uri(IdRole::RESPONDER)?;
    if called != responder_uri {
        return Err(rejected(ErrorCode::INVALID_ID, format!("IDRr names {called}, not {responder_uri}")));
    }
    let dh_i = match p.dh_values()?.as_slice() {
        [v] => v.clone(),
        _ => return Err(rejected(ErrorCode::UNSPECIFIED, "DH_INIT must carry exactly one DH payload")),
    };
    let rand = p
        .message
        .find(|x| if let Payload::Rand(r) = x { Some(r.rand.clone()) } else { None })
        .ok_or_else(|| rejected(ErrorCode::UNSPECIFIED, "no RAND payload"))?;
    if rand.len() < RAND_LEN {
        return Err(rejected(ErrorCode::UNSPECIFIED, format!("RAND of {} octets (at least {RAND_LEN})", rand.len())));
    }
    let sp = p
        .message
        .find(|x| match x {
            Payload::Sp(s) if s.policy_no == 0 => Some(s.clone()),
            _ => None,
        })
        .ok_or_else(|| rejected(ErrorCode::INVALID_SP, "no SP payload with policy number 0"))?;
    srtp_policy::suite_of(&sp)?;
    let [cs1, cs2] = p.srtp_map()?;
    dh_group::validate_public(&dh_i).map_err(|e| bad_dh(&e))?;

    let secret = draw(random, |x| EphemeralSecret::new(DhGroup::OAKLEY_5, x))?;
    let tgk = secret.shared_secret(&dh_i).map_err(|e| bad_dh(&e))?;
    let dh_r = secret.public_value();
    drop(secret);
    let h = &p.message.header;
    let map = [cs1, SrtpCs { ssrc: responder_ssrc, ..cs2 }];
    let m = Message {
        header: CommonHeader { data_type: DataType::DH_RESP, v_flag: false, cs_map: CsIdMap::SrtpId(map.to_vec()), ..h.clone() },
        payloads: vec![
            Payload::T(now),
            idr(IdRole::RESPONDER, responder_uri),
            idr(IdRole::INITIATOR, &initiator_uri),
            dh(&dh_r),
            dh(&dh_i),
        ],
    };
    let response = seal(m, key, random)?;
    let keys = derive(h.prf, Zeroizing::new(tgk.to_vec()), h.csb_id, &rand, &sp, &map)?;
    Ok(Answered { response, initiator_uri, keys })
}

impl Pending {
    /// The offer this state belongs to.
    pub fn offer(&self) -> &Offer {
        &self.offer
    }

    /// Initiator: verifies DH_RESP, which must be signed by the URI called, and derives the
    /// keys. A DH_RESP signed by anyone else (any user of the KMS, e.g. one in the signalling
    /// path) is refused with ERR Invalid ID; [`Pending::finish_forwarded`] accepts it.
    pub fn finish(&self, r_message: &[u8], kpak: &Kpak, now_ntp: u64, skew_secs: u64) -> Result<Finished> {
        let done = self.finish_forwarded(r_message, kpak, now_ntp, skew_secs)?;
        if done.redirected {
            return Err(rejected(ErrorCode::INVALID_ID, format!("DH_RESP signed by {}, not by {} (the URI called)", done.responder_uri, self.offer.responder_uri)));
        }
        Ok(done)
    }

    /// Initiator: reads an error message answering our DH_INIT (RFC 3830 §5.1.2), e.g. from
    /// the key-management attribute of a 488: its ERR codes, [`ErrorReport::Authenticated`]
    /// with the signer's URI when it ends with SIGNr by the URI its IDRr names (that URI's
    /// identity for the month of the error's T) under `kpak` with T within `skew_secs` of
    /// `now_ntp` — that user itself refused; compare it with the URI called, a forwarded call
    /// reaches someone else — and [`ErrorReport::Unauthenticated`] (no signer) without SIGN:
    /// anyone on the path could have sent it, a hint only (RFC 3830 §9). A SIGN that does not
    /// verify, or an error for another CSB ID, is an error, never a report.
    pub fn refusal(&self, error_message: &[u8], kpak: &Kpak, now_ntp: u64, skew_secs: u64) -> Result<(ErrorReport, Option<String>)> {
        read_refusal(error_message, self.offer.csb_id, kpak, |p| p.check_fresh(now_ntp, skew_secs))
    }

    /// Initiator: verifies DH_RESP and derives the keys, whoever of the KMS's users signed it
    /// (a forwarded call: [`Finished::redirected`] tells whether it is not the URI called).
    ///
    /// Checks: decoding and data type 5; SIGN last, ECCSI, and the signature by the IDRr URI's
    /// identity for the month of T under `kpak` (that URI is returned); T within `skew_secs`
    /// of `now_ntp`; IDRi is ours; the header (PRF, CSB ID, CS 1) unchanged; exactly DHr then
    /// the echo of our DHi (ERR Auth failure if the echo differs: the response was not made
    /// for this DH_INIT); DHr a valid OAKLEY 5 value.
    pub fn finish_forwarded(&self, r_message: &[u8], kpak: &Kpak, now_ntp: u64, skew_secs: u64) -> Result<Finished> {
        let p = parse(r_message, DataType::DH_RESP)?;
        let responder_uri = p.uri(IdRole::RESPONDER)?;
        p.verify(r_message, kpak, &responder_uri)?;
        p.check_fresh(now_ntp, skew_secs)?;
        let o = &self.offer;
        if p.uri(IdRole::INITIATOR)? != o.initiator_uri {
            return Err(rejected(ErrorCode::INVALID_ID, "IDRi of DH_RESP is not the initiator"));
        }
        let h = &p.message.header;
        if h.csb_id != o.csb_id || h.prf != o.prf {
            return Err(rejected(ErrorCode::UNSPECIFIED, "DH_RESP header (CSB ID / PRF) differs from DH_INIT"));
        }
        let [cs1, cs2] = p.srtp_map()?;
        if cs1 != (SrtpCs { policy_no: 0, ssrc: o.initiator_ssrc, roc: 0 }) {
            return Err(rejected(ErrorCode::INVALID_SP, "DH_RESP changed CS 1 of the map"));
        }
        let dh_r = match p.dh_values()?.as_slice() {
            [r, i] if i.as_slice() == self.dh_i.as_slice() => r.clone(),
            [_, _] => return Err(rejected(ErrorCode::AUTH_FAILURE, "DHi echo differs from the DH value we sent")),
            _ => return Err(rejected(ErrorCode::UNSPECIFIED, "DH_RESP must carry DHr then DHi")),
        };
        let tgk = self.secret.shared_secret(&dh_r).map_err(|e| bad_dh(&e))?;
        let keys = derive(o.prf, Zeroizing::new(tgk.to_vec()), o.csb_id, &self.rand, &o.policy, &[cs1, cs2])?;
        Ok(Finished { redirected: responder_uri != o.responder_uri, responder_uri, keys })
    }
}

/// Reads an error message answering our message of CSB ID `csb_id` (RFC 3830 §5.1.2): the
/// rule of [`Pending::refusal`], shared with [`crate::mikey_sakke::refusal`]. Without SIGN it
/// is [`ErrorReport::Unauthenticated`] (no signer); ending with SIGN, it must be ECCSI by the
/// identity of the URI its IDRr names for the month of the error's T under `kpak`, and pass
/// `check_t` (the time rule of the mode), giving [`ErrorReport::Authenticated`] and that URI.
/// Another CSB ID, a SIGN that does not verify, a signed error naming no signer or failing
/// `check_t` are errors, never reports.
pub(crate) fn read_refusal(error_message: &[u8], csb_id: u32, kpak: &Kpak, check_t: impl FnOnce(&Parsed) -> Result<()>) -> Result<(ErrorReport, Option<String>)> {
    let message = Message::decode(error_message)?;
    let report = crate::error_message::report(&message, error_message, None)?;
    let ErrorReport::Unauthenticated { header, codes } = report else {
        return Err(rejected(ErrorCode::UNSPECIFIED, "error message read as authenticated without a key"));
    };
    if header.csb_id != csb_id {
        return Err(rejected(ErrorCode::UNSPECIFIED, format!("error message for CSB ID {:#010x}, not ours", header.csb_id)));
    }
    if !matches!(message.payloads.last(), Some(Payload::Sign(_))) {
        return Ok((ErrorReport::Unauthenticated { header, codes }, None));
    }
    let p = parse_decoded(message, error_message, DataType::ERROR)?;
    let signer = p.uri(IdRole::RESPONDER)?;
    p.verify(error_message, kpak, &signer)?;
    check_t(&p)?;
    Ok((ErrorReport::Authenticated { header, codes }, Some(signer)))
}

/// The RFC 3830 §5.1.2 error message `HDR, T, ERR` answering a DH_INIT that failed with
/// `err` (its ERR code, [`Error::err_code`]); `None` when the failed message has no decodable
/// header or is itself an error message. The error message is not signed (RFC 3830 allows an
/// unauthenticated error; the receiver must treat it as a hint only, RFC 3830 §9):
/// [`answer`] uses it before a DH_INIT is admitted, and signs after.
pub fn error_reply(failed: &[u8], err: &Error, now_ntp: u64) -> Option<Vec<u8>> {
    let (header, _) = CommonHeader::decode(&mut crate::codec::Reader::new(failed, 0)).ok()?;
    crate::error_message::build(&header, ntp(now_ntp), &[err.err_code()], None).ok()
}

/// Fixed keys and messages for the fuzz target and its corpus replay (`fuzzing::signed_dh`).
pub(crate) mod fuzz {
    use super::*;
    use crate::eccsi::KmsSecret;
    use sha2::{Digest, Sha256};
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// 2026-11-24 10:00:00 UTC (NTP-UTC).
    pub(crate) const NOW: u64 = 0xeeaf_dea0_0000_0000;
    pub(crate) const ALICE: &str = "sip:alice@fuzz.example.org";
    pub(crate) const BOB: &str = "sip:bob@fuzz.example.org";

    /// Deterministic, never-repeating test randomness: SHA-256 of `label` and the next value
    /// of `counter` (one counter per fixture): the fixture is reproducible, and no ECCSI `j` is
    /// used twice within a process.
    pub(crate) fn counter_random(counter: &AtomicU64, label: &[u8], buf: &mut [u8]) {
        for chunk in buf.chunks_mut(32) {
            let n = counter.fetch_add(1, Ordering::Relaxed);
            let block: [u8; 32] = Sha256::new().chain_update(label).chain_update(n.to_be_bytes()).finalize().into();
            chunk.copy_from_slice(block.get(..chunk.len()).unwrap_or_default());
        }
    }

    fn random(buf: &mut [u8]) {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        counter_random(&COUNTER, b"mediasec signed_dh fuzz", buf);
    }

    struct Fixture {
        kpak: Kpak,
        bob: SigningKey,
        pending: Pending,
        init: Vec<u8>,
        resp: Vec<u8>,
    }

    fn key(kms: &KmsSecret, uri: &str) -> Result<SigningKey> {
        let id = signer_identity(uri, &ntp(NOW))?;
        let (ssk, pvt) = draw(&mut random, |v| kms.issue(&id, v))?;
        SigningKey::new(&kms.kpak(), &id, ssk, pvt)
    }

    fn build() -> Result<Fixture> {
        let kms = draw(&mut random, KmsSecret::from_bytes)?;
        let (alice, bob) = (key(&kms, ALICE)?, key(&kms, BOB)?);
        let o = Offer {
            prf: PrfFunc::MIKEY_1,
            csb_id: 0x0bad_cafe,
            initiator_uri: ALICE.into(),
            responder_uri: BOB.into(),
            initiator_ssrc: 0x1234_5678,
            policy: srtp_policy::aes_cm_128_hmac_sha1_80(),
        };
        let (init, pending) = offer(&o, &alice, NOW, &mut random)?;
        let kpak = kms.kpak();
        let resp = answer(&init, &kpak, &bob, BOB, 0x9abc_def0, NOW, 30, &mut NoReplay, &mut random)?.response;
        Ok(Fixture { kpak, bob, pending, init, resp })
    }

    fn fixture() -> Option<&'static Fixture> {
        static F: OnceLock<Option<Fixture>> = OnceLock::new();
        F.get_or_init(|| build().ok()).as_ref()
    }

    /// A replay cache that remembers nothing (each fuzz input is a fresh message).
    pub(crate) struct NoReplay;

    impl ReplayCache for NoReplay {
        fn insert(&mut self, _: u32, _: u64, _: &[u8]) -> bool {
            true
        }
    }

    /// `data` as a DH_INIT to the responder (on a refusal its error message, signed or not, is
    /// built too), and as a DH_RESP and as an error message to the initiator. Returns
    /// (answered, finished).
    pub(crate) fn run(data: &[u8]) -> (bool, bool) {
        let Some(f) = fixture() else { return (false, false) };
        let answered = answer(data, &f.kpak, &f.bob, BOB, 1, NOW, 30, &mut NoReplay, &mut random).is_ok();
        let _ = f.pending.refusal(data, &f.kpak, NOW, 30);
        (answered, f.pending.finish(data, &f.kpak, NOW, 30).is_ok())
    }

    /// The fixture's valid DH_INIT and DH_RESP (the seed corpus).
    pub(crate) fn seeds() -> Option<(Vec<u8>, Vec<u8>)> {
        fixture().map(|f| (f.init.clone(), f.resp.clone()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn ntp_of(y: i64, m: u32, d: u32) -> u64 {
        // Days from civil (Hinnant), independent of period_of's direction.
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let mp = i64::from((m + 9) % 12);
        let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        let secs = u64::try_from(days * 86_400).unwrap() + 2_208_988_800;
        (secs & 0xffff_ffff) << 32
    }

    fn random(buf: &mut [u8]) {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        fuzz::counter_random(&COUNTER, b"mediasec signed_dh refusals", buf);
    }

    /// A DH_INIT the responder admits (signature, T, no replay) but refuses — here without
    /// its DH payload, re-signed by the initiator — is answered with an error signed by the
    /// responder, which the initiator reads as authenticated; one refused before admission
    /// (a broken signature) gets an unsigned error, read as a hint; a signed error whose
    /// signature was altered, or that answers another CSB, is an error.
    #[test]
    fn refusals_after_admission_are_signed_and_read_as_authenticated() {
        const NOW: u64 = fuzz::NOW;
        let kms = draw(&mut random, eccsi::KmsSecret::from_bytes).unwrap();
        let key = |uri: &str| {
            let id = signer_identity(uri, &ntp(NOW)).unwrap();
            let (ssk, pvt) = draw(&mut random, |v| kms.issue(&id, v)).unwrap();
            SigningKey::new(&kms.kpak(), &id, ssk, pvt).unwrap()
        };
        let (alice, bob) = (key(fuzz::ALICE), key(fuzz::BOB));
        let o = Offer {
            prf: PrfFunc::MIKEY_1,
            csb_id: 0x5151_0001,
            initiator_uri: fuzz::ALICE.into(),
            responder_uri: fuzz::BOB.into(),
            initiator_ssrc: 7,
            policy: srtp_policy::aes_cm_128_hmac_sha1_80(),
        };
        let (init, pending) = offer(&o, &alice, NOW, &mut random).unwrap();
        let mut m = Message::decode(&init).unwrap();
        m.payloads.retain(|p| !matches!(p, Payload::Dh(_) | Payload::Sign(_)));
        let without_dh = seal(m, &alice, &mut random).unwrap();
        let kpak = kms.kpak();

        let refused = answer(&without_dh, &kpak, &bob, fuzz::BOB, 9, NOW, 30, &mut fuzz::NoReplay, &mut random).unwrap_err();
        assert_eq!(refused.error.err_code(), ErrorCode::UNSPECIFIED, "{}", refused.error);
        let reply = refused.reply.expect("an error message");
        let (report, signer) = pending.refusal(&reply, &kpak, NOW, 30).unwrap();
        assert!(report.is_authenticated(), "{report:?}");
        assert_eq!(report.codes(), [ErrorCode::UNSPECIFIED]);
        assert_eq!(signer.as_deref(), Some(fuzz::BOB));

        let mut broken = init;
        let last = broken.len() - 1;
        broken[last] ^= 1;
        let refused = answer(&broken, &kpak, &bob, fuzz::BOB, 9, NOW, 30, &mut fuzz::NoReplay, &mut random).unwrap_err();
        assert_eq!(refused.error.err_code(), ErrorCode::AUTH_FAILURE);
        let (report, signer) = pending.refusal(&refused.reply.expect("an error message"), &kpak, NOW, 30).unwrap();
        assert!(!report.is_authenticated() && report.codes() == [ErrorCode::AUTH_FAILURE] && signer.is_none(), "{report:?}");

        // Sent to bob, reached carol (a forwarded call): carol admits it and refuses (IDRr is
        // not her), signing as herself.
        let carol = key("sip:carol@fuzz.example.org");
        let (init2, pending2) = offer(&Offer { csb_id: 0x5151_0003, ..o.clone() }, &alice, NOW, &mut random).unwrap();
        let refused = answer(&init2, &kpak, &carol, "sip:carol@fuzz.example.org", 9, NOW, 30, &mut fuzz::NoReplay, &mut random).unwrap_err();
        assert_eq!(refused.error.err_code(), ErrorCode::INVALID_ID);
        let (report, signer) = pending2.refusal(&refused.reply.expect("an error message"), &kpak, NOW, 30).unwrap();
        assert!(report.is_authenticated() && report.codes() == [ErrorCode::INVALID_ID], "{report:?}");
        assert_eq!(signer.as_deref(), Some("sip:carol@fuzz.example.org"));

        let mut forged = reply.clone();
        let last = forged.len() - 1;
        forged[last] ^= 1;
        assert!(pending.refusal(&forged, &kpak, NOW, 30).is_err(), "a SIGN that does not verify is no report");
        let (_, other) = offer(&Offer { csb_id: 0x5151_0002, ..o }, &alice, NOW, &mut random).unwrap();
        assert!(other.refusal(&reply, &kpak, NOW, 30).is_err(), "another CSB's error");
        let late = NOW + (120u64 << 32);
        assert_eq!(pending.refusal(&reply, &kpak, late, 30).unwrap_err().err_code(), ErrorCode::INVALID_TS);
    }

    /// What [`Pending::refusal`] reads besides a well-formed refusal: a DH_INIT is no error
    /// message (ERR Invalid DT), truncated bytes do not decode, and an error message that ends
    /// with SIGN but names no signer (no IDRr) is an error, never a report.
    #[test]
    fn a_refusal_is_an_error_message_naming_its_signer() {
        const NOW: u64 = fuzz::NOW;
        let kms = draw(&mut random, eccsi::KmsSecret::from_bytes).unwrap();
        let id = signer_identity(fuzz::ALICE, &ntp(NOW)).unwrap();
        let (ssk, pvt) = draw(&mut random, |v| kms.issue(&id, v)).unwrap();
        let alice = SigningKey::new(&kms.kpak(), &id, ssk, pvt).unwrap();
        let o = Offer {
            prf: PrfFunc::MIKEY_1,
            csb_id: 0x5151_0004,
            initiator_uri: fuzz::ALICE.into(),
            responder_uri: fuzz::BOB.into(),
            initiator_ssrc: 7,
            policy: srtp_policy::aes_cm_128_hmac_sha1_80(),
        };
        let (init, pending) = offer(&o, &alice, NOW, &mut random).unwrap();
        let kpak = kms.kpak();
        assert_eq!(pending.refusal(&init, &kpak, NOW, 30).unwrap_err().err_code(), ErrorCode::INVALID_DT);
        assert!(pending.refusal(&init[..init.len() / 2], &kpak, NOW, 30).is_err(), "truncated");

        let header = Message::decode(&init).unwrap().header;
        let unsigned = crate::error_message::build(&header, ntp(NOW), &[ErrorCode::UNSPECIFIED], None).unwrap();
        let (report, signer) = pending.refusal(&unsigned, &kpak, NOW, 30).unwrap();
        assert!(!report.is_authenticated() && report.codes() == [ErrorCode::UNSPECIFIED] && signer.is_none(), "{report:?}");
        let anonymous = seal(Message::decode(&unsigned).unwrap(), &alice, &mut random).unwrap();
        assert_eq!(pending.refusal(&anonymous, &kpak, NOW, 30).unwrap_err().err_code(), ErrorCode::INVALID_ID, "signed, no IDRr");
    }

    #[test]
    fn key_periods_follow_the_utc_month() {
        let p = |v| period_of(&Timestamp { ts_type: TsType::NTP_UTC, value: v }).unwrap();
        assert_eq!(p(ntp_of(2011, 2, 1)), (2011, 2));
        assert_eq!(p(ntp_of(2026, 11, 24)), (2026, 11));
        assert_eq!(p(ntp_of(2026, 12, 31) + (86_399 << 32)), (2026, 12));
        assert_eq!(p(ntp_of(2027, 1, 1)), (2027, 1));
        assert_eq!(p(ntp_of(2024, 2, 29)), (2024, 2));
        assert_eq!(p(ntp_of(2024, 3, 1) - (1 << 32)), (2024, 2));
        assert_eq!(p(ntp_of(2036, 2, 7)), (2036, 2)); // after the NTP era 0 rollover
        assert_eq!(p(ntp_of(2100, 3, 1)), (2100, 3));
        let t32 = Timestamp { ts_type: TsType::NTP_UTC_32, value: ntp_of(2030, 7, 4) >> 32 };
        assert_eq!(period_of(&t32).unwrap(), (2030, 7));
        let counter = Timestamp { ts_type: TsType::COUNTER, value: 5 };
        assert_eq!(period_of(&counter).unwrap_err().err_code(), ErrorCode::INVALID_TS);
    }
}
