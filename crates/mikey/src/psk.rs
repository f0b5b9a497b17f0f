//! Sans-IO builder and verifier of the RFC 3830 pre-shared-key I_MESSAGE (§3.1, §5.1):
//! `HDR, T, RAND, [IDi], [IDr], {SP}, KEMAC`, the KEMAC MAC covering the whole message up
//! to the MAC field (§5.2). Time comes from the caller; replays are rejected through a
//! caller-supplied [`ReplayCache`]. The verification message R_MESSAGE `HDR, T, [IDr], V`
//! (§3.1, §5.2) is built by [`build_response`] and checked by [`verify_response`].

use crate::error::{Error, Result};
use crate::header::{CommonHeader, CsIdMap, SrtpCs};
use crate::kemac_crypto;
use crate::keys::MessageKeys;
use crate::message::Message;
use crate::payload::{self, Id, KeyData, Kemac, Payload, Rand, SecurityPolicy, Timestamp};
use crate::registry::{DataType, EncrAlg, ErrorCode, MacAlg, PayloadType, PrfFunc, TsType};

/// Remembers authenticated messages for the allowed clock skew (RFC 3830 §5.4).
pub trait ReplayCache {
    /// Records `(csb_id, timestamp, mac)`; returns `false` if it was already present.
    fn insert(&mut self, csb_id: u32, timestamp: u64, mac: &[u8]) -> bool;
}

/// Inputs of a PSK I_MESSAGE.
#[derive(Debug, Clone)]
pub struct PskInit {
    /// PRF function.
    pub prf: PrfFunc,
    /// CSB ID.
    pub csb_id: u32,
    /// Crypto sessions (SRTP-ID map).
    pub sessions: Vec<SrtpCs>,
    /// Whether a verification message is requested.
    pub v_flag: bool,
    /// Timestamp (NTP-UTC recommended).
    pub timestamp: Timestamp,
    /// RAND (>= 16 octets).
    pub rand: Vec<u8>,
    /// Initiator identity.
    pub id_i: Option<Id>,
    /// Responder identity.
    pub id_r: Option<Id>,
    /// Security policies.
    pub policies: Vec<SecurityPolicy>,
    /// Keys to transport.
    pub keys: Vec<KeyData>,
    /// KEMAC encryption.
    pub encr: EncrAlg,
    /// KEMAC MAC.
    pub mac: MacAlg,
}

/// Builds the I_MESSAGE.
pub fn build_init(psk: &[u8], p: &PskInit) -> Result<Vec<u8>> {
    let keys = MessageKeys::rfc3830(p.prf, psk, p.csb_id, &p.rand, p.encr, p.mac)?;
    let plain = payload::encode_key_data(&p.keys)?;
    let encr_data = kemac_crypto::encrypt(p.encr, &keys, p.csb_id, p.timestamp.as_u64(), &plain)?;
    let mac_len = p.mac.mac_len().ok_or(Error::Unsupported { what: "MAC algorithm", value: u16::from(p.mac.0) })?;
    let mut payloads = vec![Payload::T(p.timestamp), Payload::Rand(Rand { rand: p.rand.clone() })];
    payloads.extend(p.id_i.iter().cloned().map(Payload::Id));
    payloads.extend(p.id_r.iter().cloned().map(Payload::Id));
    payloads.extend(p.policies.iter().cloned().map(Payload::Sp));
    payloads.push(Payload::Kemac(Kemac { encr_alg: p.encr, encr_data, mac_alg: p.mac, mac: vec![0; mac_len] }));
    let msg = Message {
        header: CommonHeader {
            version: crate::header::MIKEY_VERSION,
            data_type: DataType::PSK_INIT,
            v_flag: p.v_flag,
            prf: p.prf,
            csb_id: p.csb_id,
            cs_map: CsIdMap::SrtpId(p.sessions.clone()),
        },
        payloads,
    };
    let mut bytes = msg.encode()?;
    let covered = bytes.len().saturating_sub(mac_len);
    let tag = kemac_crypto::mac(p.mac, &keys.auth_key, &[bytes.get(..covered).unwrap_or_default()])?;
    bytes.truncate(covered);
    bytes.extend_from_slice(&tag);
    Ok(bytes)
}

/// A verified I_MESSAGE and the keys it carried.
#[derive(Debug, Clone)]
pub struct VerifiedInit {
    /// The decoded message.
    pub message: Message,
    /// Decrypted Key data sub-payloads.
    pub keys: Vec<KeyData>,
}

/// Verifies an I_MESSAGE: structure, timestamp within `skew_secs` of `now_ntp` (NTP
/// seconds), MAC (constant time), replay, then decrypts the KEMAC. Every failure carries
/// the ERR code to answer with ([`Error::err_code`]).
pub fn verify_init(
    psk: &[u8],
    bytes: &[u8],
    now_ntp: u64,
    skew_secs: u64,
    replay: &mut dyn ReplayCache,
) -> Result<VerifiedInit> {
    let message = Message::decode(bytes)?;
    let h = &message.header;
    if h.data_type != DataType::PSK_INIT {
        return Err(Error::rejected(ErrorCode::INVALID_DT, format!("data type {:?} is not a PSK I_MESSAGE", h.data_type)));
    }
    let t = message
        .find(|p| if let Payload::T(t) = p { Some(*t) } else { None })
        .ok_or_else(|| Error::rejected(ErrorCode::UNSPECIFIED, "no T payload"))?;
    let rand = message
        .find(|p| if let Payload::Rand(r) = p { Some(r.rand.clone()) } else { None })
        .ok_or_else(|| Error::rejected(ErrorCode::UNSPECIFIED, "no RAND payload"))?;
    let kemac = match message.payloads.last() {
        Some(Payload::Kemac(k)) => k.clone(),
        _ => return Err(Error::rejected(ErrorCode::UNSPECIFIED, "KEMAC is not the last payload")),
    };
    if kemac.mac_alg == MacAlg::NULL {
        return Err(Error::rejected(ErrorCode::INVALID_MAC, "NULL MAC is not accepted"));
    }
    let keys = MessageKeys::rfc3830(h.prf, psk, h.csb_id, &rand, kemac.encr_alg, kemac.mac_alg).map_err(|e| match e {
        Error::Unsupported { what: "PRF func", .. } => Error::rejected(ErrorCode::INVALID_PRF, e.to_string()),
        Error::Unsupported { what: "KEMAC encryption algorithm", .. } => Error::rejected(ErrorCode::INVALID_EA, e.to_string()),
        other => Error::rejected(ErrorCode::INVALID_MAC, other.to_string()),
    })?;
    let covered = bytes.len().saturating_sub(kemac.mac.len());
    kemac_crypto::verify_mac(kemac.mac_alg, &keys.auth_key, &[bytes.get(..covered).unwrap_or_default()], &kemac.mac)?;
    let secs = match t.ts_type {
        TsType::NTP_UTC | TsType::NTP => t.value >> 32,
        TsType::NTP_UTC_32 => t.value,
        _ => return Err(Error::rejected(ErrorCode::INVALID_TS, "COUNTER timestamps need a per-peer counter")),
    };
    if secs.abs_diff(now_ntp) > skew_secs {
        return Err(Error::rejected(ErrorCode::INVALID_TS, format!("timestamp {secs} outside {skew_secs} s of {now_ntp}")));
    }
    if !replay.insert(h.csb_id, t.value, &kemac.mac) {
        return Err(Error::rejected(ErrorCode::INVALID_TS, "replayed message"));
    }
    let plain = kemac_crypto::decrypt(kemac.encr_alg, &keys, h.csb_id, t.as_u64(), &kemac.encr_data)?;
    let keys = payload::decode_payloads(&plain, PayloadType::KEY_DATA, 0)
        .map_err(|e| Error::rejected(ErrorCode::AUTH_FAILURE, format!("KEMAC content: {e}")))?
        .into_iter()
        .map(|p| match p {
            Payload::KeyData(k) => Ok(k),
            other => Err(Error::rejected(ErrorCode::UNSPECIFIED, format!("{:?} inside KEMAC", other.payload_type()))),
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(VerifiedInit { message, keys })
}

/// Builds the unprotected RFC 3830 error message `HDR, T, ERR` answering a failed message
/// (§5.1.2): HDR fields copied, data type Error, V = 0. For MACed error messages and the
/// protection rule see [`crate::error_message`].
pub fn build_error(failed: &CommonHeader, timestamp: Timestamp, code: ErrorCode) -> Result<Vec<u8>> {
    crate::error_message::build(failed, timestamp, &[code], None)
}

/// The message keys of a verified I_MESSAGE (RFC 3830 §4.1.4), for its R_MESSAGE and for a
/// MACed error message answering it, with the KEMAC's MAC algorithm.
pub fn init_keys(psk: &[u8], init: &Message) -> Result<(MessageKeys, MacAlg)> {
    let rand = init
        .find(|p| if let Payload::Rand(r) = p { Some(r.rand.clone()) } else { None })
        .ok_or_else(|| Error::rejected(ErrorCode::UNSPECIFIED, "no RAND payload"))?;
    let kemac = init
        .find(|p| if let Payload::Kemac(k) = p { Some((k.encr_alg, k.mac_alg)) } else { None })
        .ok_or_else(|| Error::rejected(ErrorCode::UNSPECIFIED, "no KEMAC payload"))?;
    Ok((MessageKeys::rfc3830(init.header.prf, psk, init.header.csb_id, &rand, kemac.0, kemac.1)?, kemac.1))
}

fn id_data(m: &Message, nth: usize) -> Option<Vec<u8>> {
    m.payloads.iter().filter_map(|p| if let Payload::Id(i) = p { Some(i.data.clone()) } else { None }).nth(nth)
}

/// MAC input of the verification message (RFC 3830 §5.2): the R_MESSAGE up to its MAC
/// field, then `Identity_i || Identity_r || Timestamp`. Identity_i = ID Data of the
/// I_MESSAGE's IDi; Identity_r = ID Data of the R_MESSAGE's IDr, else of the I_MESSAGE's IDr;
/// an absent identity contributes zero octets *(ours)*; Timestamp = the TS value of the
/// I_MESSAGE's T payload.
fn response_mac_input(resp: &[u8], resp_msg: &Message, init: &Message, mac_len: usize) -> Result<Vec<u8>> {
    let t = init
        .find(|p| if let Payload::T(t) = p { Some(*t) } else { None })
        .ok_or_else(|| Error::rejected(ErrorCode::UNSPECIFIED, "no T payload in the I_MESSAGE"))?;
    let mut out = resp.get(..resp.len().saturating_sub(mac_len)).unwrap_or_default().to_vec();
    out.extend(id_data(init, 0).unwrap_or_default());
    // In the I_MESSAGE the second ID payload is IDr (RFC 3830 §3.1: `[IDi], [IDr]`).
    out.extend(id_data(resp_msg, 0).or_else(|| id_data(init, 1)).unwrap_or_default());
    let len = t.ts_type.value_len().unwrap_or(8);
    out.extend_from_slice(t.value.to_be_bytes().get(8usize.saturating_sub(len)..).unwrap_or_default());
    Ok(out)
}

/// Builds the PSK verification message `R_MESSAGE = HDR, T, [IDr], V` (RFC 3830 §3.1)
/// answering a verified I_MESSAGE that set the V flag: HDR copied with data type "PSK ver
/// msg" and V = 0, T = the I_MESSAGE's timestamp, V keyed with the I_MESSAGE's auth_key and
/// MAC algorithm. An I_MESSAGE without the V flag gets no answer (error).
pub fn build_response(psk: &[u8], init: &VerifiedInit, id_r: Option<Id>) -> Result<Vec<u8>> {
    let h = &init.message.header;
    if !h.v_flag {
        return Err(Error::encode("R_MESSAGE", "the I_MESSAGE did not request verification (V = 0)"));
    }
    let t = init
        .message
        .find(|p| if let Payload::T(t) = p { Some(*t) } else { None })
        .ok_or_else(|| Error::rejected(ErrorCode::UNSPECIFIED, "no T payload"))?;
    let (keys, mac) = init_keys(psk, &init.message)?;
    let n = mac.mac_len().ok_or(Error::Unsupported { what: "MAC algorithm", value: u16::from(mac.0) })?;
    let mut payloads = vec![Payload::T(t)];
    payloads.extend(id_r.map(Payload::Id));
    payloads.push(Payload::V(payload::Verification { auth_alg: mac, mac: vec![0; n] }));
    let msg = Message { header: CommonHeader { data_type: DataType::PSK_RESP, v_flag: false, ..h.clone() }, payloads };
    let mut bytes = msg.encode()?;
    let tag = kemac_crypto::mac(mac, &keys.auth_key, &[&response_mac_input(&bytes, &msg, &init.message, n)?])?;
    bytes.truncate(bytes.len().saturating_sub(n));
    bytes.extend_from_slice(&tag);
    Ok(bytes)
}

/// Initiator side: verifies an R_MESSAGE against the I_MESSAGE it sent (`init`, its exact
/// bytes): data type, CSB ID, T equal to the I_MESSAGE's, V algorithm equal to the KEMAC's
/// MAC, then the MAC (constant time). Returns the decoded R_MESSAGE.
pub fn verify_response(psk: &[u8], init: &[u8], resp: &[u8]) -> Result<Message> {
    let im = Message::decode(init)?;
    let rm = Message::decode(resp)?;
    if rm.header.data_type != DataType::PSK_RESP {
        return Err(Error::rejected(ErrorCode::INVALID_DT, format!("data type {:?} is not a PSK verification message", rm.header.data_type)));
    }
    if rm.header.csb_id != im.header.csb_id || rm.header.prf != im.header.prf {
        return Err(Error::rejected(ErrorCode::UNSPECIFIED, "R_MESSAGE header does not match the I_MESSAGE"));
    }
    let ts = |m: &Message| m.find(|p| if let Payload::T(t) = p { Some(*t) } else { None });
    if ts(&rm).is_none() || ts(&rm) != ts(&im) {
        return Err(Error::rejected(ErrorCode::INVALID_TS, "R_MESSAGE timestamp differs from the I_MESSAGE's"));
    }
    let (keys, mac) = init_keys(psk, &im)?;
    let v = match rm.payloads.last() {
        Some(Payload::V(v)) => v.clone(),
        _ => return Err(Error::rejected(ErrorCode::AUTH_FAILURE, "V is not the last payload")),
    };
    if v.auth_alg != mac {
        return Err(Error::rejected(ErrorCode::INVALID_MAC, format!("V uses {:?}, the I_MESSAGE {:?}", v.auth_alg, mac)));
    }
    kemac_crypto::verify_mac(mac, &keys.auth_key, &[&response_mac_input(resp, &rm, &im, v.mac.len())?], &v.mac)?;
    Ok(rm)
}
