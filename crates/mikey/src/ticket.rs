//! Sans-IO builders and verifiers of the six PSK-protected MIKEY-TICKET messages (RFC 6043
//! §4–§5) and of our 3GPP ticket profile (ticket type 2, docs/ticket-profile.md).
//!
//! Every message ends with a V payload whose MAC covers exactly the input of RFC 6043
//! Table 5.2 (§5.5): initial messages add the ID Data of the two parties' IDR payloads,
//! responses add the complete initiating message, and TRANSFER_INIT excludes the TICKET's
//! Initiator Data length and Initiator Data fields.

use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::header::{CommonHeader, CsIdMap, MIKEY_VERSION};
use crate::kemac_crypto;
use crate::keys::{self, Direction, MessageKeys};
use crate::message::Message;
use crate::payload::{
    self, BaseTicketData, Idr, KeyData, KeyValidity, Kemac, Payload, Randr, Ticket, TicketPolicy, Timestamp,
    Verification,
};
use crate::psk::ReplayCache;
use crate::registry::{DataType, EncrAlg, ErrorCode, IdRole, KeyType, MacAlg, PayloadType, PrfFunc, RandRole, TsType};

/// Algorithms of our profile: PRF-HMAC-SHA-256, AES-CM-128, HMAC-SHA-256-256.
pub const PRF: PrfFunc = PrfFunc::HMAC_SHA_256;
/// KEMAC encryption of our profile.
pub const ENCR: EncrAlg = EncrAlg::AES_CM_128;
/// MAC of our profile.
pub const MAC: MacAlg = MacAlg::HMAC_SHA_256_256;
/// THDR Data length of ticket type 2: a 4-octet ticket-key id.
pub const THDR_LEN: usize = 4;

/// A received message after verification.
#[derive(Debug, Clone)]
pub struct Received {
    /// Decoded message.
    pub message: Message,
    /// Its exact bytes (responses MAC over them).
    pub bytes: Vec<u8>,
}

/// The ID Data of the first IDR with `role` (empty when absent, docs/ticket-profile.md §4).
pub fn id_of(m: &Message, role: IdRole) -> Vec<u8> {
    m.find(|p| match p {
        Payload::Idr(i) if i.role == role => Some(i.data.clone()),
        _ => None,
    })
    .unwrap_or_default()
}

/// The RAND of the first RANDR with `role`.
pub fn rand_of(m: &Message, role: RandRole) -> Option<Vec<u8>> {
    m.find(|p| match p {
        Payload::Randr(r) if r.role == role => Some(r.rand.clone()),
        _ => None,
    })
}

/// The T payload.
pub fn t_of(m: &Message) -> Result<Timestamp> {
    m.find(|p| if let Payload::T(t) = p { Some(*t) } else { None })
        .ok_or_else(|| Error::rejected(ErrorCode::UNSPECIFIED, "no T payload"))
}

/// The TICKET payload.
pub fn ticket_of(m: &Message) -> Result<Ticket> {
    m.find(|p| if let Payload::Ticket(t) = p { Some(t.clone()) } else { None })
        .ok_or_else(|| Error::rejected(ErrorCode::INVALID_TICKET, "no TICKET payload"))
}

/// Builds the MIKEY-TICKET header: #CS 0 / Empty map for KMS exchanges, `cs_map` for Transfer.
pub fn header(data_type: DataType, v_flag: bool, csb_id: u32, cs_map: CsIdMap) -> CommonHeader {
    CommonHeader { version: MIKEY_VERSION, data_type, v_flag, prf: PRF, csb_id, cs_map }
}

/// The MAC input of a message whose last payload is V (RFC 6043 §5.5).
fn mac_input(bytes: &[u8], m: &Message, spans: &[payload::Span], mac_len: usize) -> Vec<u8> {
    let end = bytes.len().saturating_sub(mac_len);
    let mut out = Vec::with_capacity(end);
    let mut pos = 0;
    if m.header.data_type == DataType::TRANSFER_INIT {
        for (p, s) in m.payloads.iter().zip(spans) {
            if let Payload::Ticket(t) = p {
                let cut = s.end.saturating_sub(t.initiator_data_field_len());
                out.extend_from_slice(bytes.get(pos..cut).unwrap_or_default());
                pos = s.end;
            }
        }
    }
    out.extend_from_slice(bytes.get(pos..end).unwrap_or_default());
    out
}

/// Encodes `m` (whose payloads must not yet hold V) with a final V payload computed with
/// `auth_key` over the Table 5.2 input, `extra` being appended to the covered bytes.
pub fn seal(mut m: Message, auth_key: &[u8], extra: &[&[u8]]) -> Result<Vec<u8>> {
    let n = MAC.mac_len().unwrap_or(32);
    m.payloads.push(Payload::V(Verification { auth_alg: MAC, mac: vec![0; n] }));
    let enc = m.encode_with_spans()?;
    let covered = mac_input(&enc.bytes, &m, &enc.spans, n);
    let mut parts: Vec<&[u8]> = vec![&covered];
    parts.extend_from_slice(extra);
    let tag = kemac_crypto::mac(MAC, auth_key, &parts)?;
    let mut bytes = enc.bytes;
    bytes.truncate(bytes.len().saturating_sub(n));
    bytes.extend_from_slice(&tag);
    Ok(bytes)
}

/// Decodes `bytes`, checks the data type, the PRF and the CS ID map type
/// ([`check_cs_map`]), and returns the message.
pub fn decode_expect(bytes: &[u8], dt: DataType) -> Result<Message> {
    expect(Message::decode(bytes)?, dt)
}

/// The checks of [`decode_expect`] on a message already decoded.
pub fn expect(m: Message, dt: DataType) -> Result<Message> {
    if m.header.data_type != dt {
        return Err(Error::rejected(ErrorCode::INVALID_DT, format!("expected {dt:?}, got {:?}", m.header.data_type)));
    }
    if m.header.prf != PRF {
        return Err(Error::rejected(ErrorCode::INVALID_PRF, format!("PRF {:?} not accepted", m.header.prf)));
    }
    check_cs_map(&m.header)?;
    Ok(m)
}

/// CS ID map rule of our profile (RFC 6043 §5.1–§5.3, §6.1.1; docs/ticket-profile.md
/// decision 15): Ticket Request/Resolve messages carry the Empty map with #CS 0; the Ticket
/// Transfer carries the GENERIC-ID map. Anything else, notably an SRTP-ID map inside a
/// Transfer, is refused with ERR 13 "Unsupported message type" *(ours: no RFC code names
/// the map type)*. Error messages are not checked (they copy the failed header).
pub fn check_cs_map(h: &CommonHeader) -> Result<()> {
    let transfer = matches!(h.data_type, DataType::TRANSFER_INIT | DataType::TRANSFER_RESP);
    let kms = matches!(
        h.data_type,
        DataType::REQUEST_INIT_PSK | DataType::REQUEST_INIT_PK | DataType::REQUEST_RESP | DataType::RESOLVE_INIT_PSK | DataType::RESOLVE_INIT_PK | DataType::RESOLVE_RESP
    );
    let ok = match &h.cs_map {
        CsIdMap::GenericId(_) => transfer,
        CsIdMap::Empty { n_cs: 0 } => kms,
        CsIdMap::Empty { .. } | CsIdMap::SrtpId(_) => !transfer && !kms,
    };
    if ok {
        Ok(())
    } else {
        Err(Error::rejected(
            ErrorCode::UNSUPPORTED_MESSAGE,
            format!("{:?} map not allowed in {:?} (Transfer: GENERIC-ID; Request/Resolve: Empty, #CS 0)", h.cs_map.map_type(), h.data_type),
        ))
    }
}

/// The bytes a final V payload's MAC covers before the Table 5.2 additions, and the MAC.
pub fn covered_by_v(bytes: &[u8]) -> Result<(Vec<u8>, Verification)> {
    let (m, _, spans) = Message::decode_with_spans(bytes)?;
    covered_in(bytes, &m, &spans).map(|(covered, v)| (covered, v.clone()))
}

/// [`covered_by_v`] of `m`, decoded from `bytes` with payload `spans`.
fn covered_in<'m>(bytes: &[u8], m: &'m Message, spans: &[payload::Span]) -> Result<(Vec<u8>, &'m Verification)> {
    match m.payloads.last() {
        Some(Payload::V(v)) => Ok((mac_input(bytes, m, spans, v.mac.len()), v)),
        _ => Err(Error::rejected(ErrorCode::AUTH_FAILURE, "V is not the last payload")),
    }
}

/// Verifies the final V payload of `bytes` with the profile MAC; `extra` are the Table 5.2
/// additions (identities, or the initiating message).
pub fn verify_v(bytes: &[u8], auth_key: &[u8], extra: &[&[u8]]) -> Result<()> {
    let (m, _, spans) = Message::decode_with_spans(bytes)?;
    verify_v_in(bytes, &m, &spans, auth_key, extra)
}

/// [`verify_v`] of `m`, which the caller decoded from `bytes`: saves decoding it again (the
/// KMS verifies every request it serves). Only a TRANSFER_INIT needs its payload spans (its
/// MAC input leaves out the ticket's Initiator Data), so that one is decoded again.
pub fn verify_v_decoded(bytes: &[u8], m: &Message, auth_key: &[u8], extra: &[&[u8]]) -> Result<()> {
    if m.header.data_type == DataType::TRANSFER_INIT {
        return verify_v(bytes, auth_key, extra);
    }
    verify_v_in(bytes, m, &[], auth_key, extra)
}

fn verify_v_in(bytes: &[u8], m: &Message, spans: &[payload::Span], auth_key: &[u8], extra: &[&[u8]]) -> Result<()> {
    let (covered, v) = covered_in(bytes, m, spans)?;
    if v.auth_alg != MAC {
        return Err(Error::rejected(ErrorCode::INVALID_MAC, format!("MAC {:?} not accepted", v.auth_alg)));
    }
    let mut parts: Vec<&[u8]> = vec![&covered];
    parts.extend_from_slice(extra);
    kemac_crypto::verify_mac(MAC, auth_key, &parts, &v.mac)
}

/// Checks an NTP-UTC / NTP-UTC-32 timestamp against `now_ntp` ± `skew` and the replay cache
/// (RFC 3830 §5.4, docs/ticket-profile.md §16). Call only after the MAC verified.
pub fn check_fresh(m: &Message, now_ntp: u64, skew: u64, replay: &mut dyn ReplayCache) -> Result<()> {
    let t = t_of(m)?;
    let secs = match t.ts_type {
        TsType::NTP_UTC => t.value >> 32,
        TsType::NTP_UTC_32 => t.value,
        other => return Err(Error::rejected(ErrorCode::INVALID_TS, format!("timestamp type {other:?} not accepted"))),
    };
    if secs.abs_diff(now_ntp) > skew {
        return Err(Error::rejected(ErrorCode::INVALID_TS, format!("timestamp {secs} outside ±{skew} s of {now_ntp}")));
    }
    let mac = match m.payloads.last() {
        Some(Payload::V(v)) => v.mac.clone(),
        _ => Vec::new(),
    };
    if !replay.insert(m.header.csb_id, t.value, &mac) {
        return Err(Error::rejected(ErrorCode::INVALID_TS, "replayed message"));
    }
    Ok(())
}

/// Message keys for an RFC 6043 message (PSK or MPK as `inkey`).
pub fn message_keys(inkey: &[u8], csb_id: u32, dir: Direction, randri: Option<&[u8]>, randrr: Option<&[u8]>) -> Result<MessageKeys> {
    MessageKeys::ticket(PRF, inkey, csb_id, dir, randri, randrr, ENCR, MAC)
}

/// A KEMAC carrying `keys`, encrypted with `mk` (MAC NULL: the V payload carries the MAC,
/// RFC 6043 §5.2). The IV uses the CSB ID and the 64-bit value of `t`.
pub fn kemac(mk: &MessageKeys, csb_id: u32, t: &Timestamp, keys: &[KeyData]) -> Result<Payload> {
    let plain = Zeroizing::new(payload::encode_key_data(keys)?);
    let encr_data = kemac_crypto::encrypt(ENCR, mk, csb_id, t.as_u64(), &plain)?;
    Ok(Payload::Kemac(Kemac { encr_alg: ENCR, encr_data, mac_alg: MacAlg::NULL, mac: Vec::new() }))
}

/// Decrypts the KEMAC of `m` with `mk`; the IV uses the CSB ID and T of `m` itself.
pub fn open_kemac(m: &Message, mk: &MessageKeys, csb_id: u32) -> Result<Vec<KeyData>> {
    let k = m
        .find(|p| if let Payload::Kemac(k) = p { Some(k.clone()) } else { None })
        .ok_or_else(|| Error::rejected(ErrorCode::UNSPECIFIED, "no KEMAC payload"))?;
    if k.encr_alg != ENCR {
        return Err(Error::rejected(ErrorCode::INVALID_EA, format!("{:?} not accepted", k.encr_alg)));
    }
    let t = t_of(m)?;
    let plain = kemac_crypto::decrypt(k.encr_alg, mk, csb_id, t.as_u64(), &k.encr_data)?;
    payload::decode_payloads(&plain, PayloadType::KEY_DATA, 0)
        .map_err(|e| Error::rejected(ErrorCode::AUTH_FAILURE, format!("KEMAC content: {e}")))?
        .into_iter()
        .map(|p| match p {
            Payload::KeyData(k) => Ok(k),
            other => Err(Error::rejected(ErrorCode::UNSPECIFIED, format!("{:?} inside KEMAC", other.payload_type()))),
        })
        .collect()
}

/// Key data with an SPI (RFC 6043 §6.13: every key has an SPI).
pub fn key(key_type: KeyType, key: &[u8], spi: &[u8]) -> KeyData {
    KeyData { key_type, key: key.to_vec(), salt: None, validity: KeyValidity::Spi(spi.to_vec()) }
}

/// An IDR payload.
pub fn idr(role: IdRole, id_type: crate::registry::IdType, data: &[u8]) -> Payload {
    Payload::Idr(Idr { role, id_type, data: data.to_vec() })
}

/// A RANDR payload.
pub fn randr(role: RandRole, rand: &[u8]) -> Payload {
    Payload::Randr(Randr { role, rand: rand.to_vec() })
}

// ---- ticket type 2 (docs/ticket-profile.md) ------------------------------------------

/// Inputs of a ticket issued by the KMS.
#[derive(Debug, Clone)]
pub struct TicketContent {
    /// MPK (the ticket's MIKEY protection key, RFC 6043 A.2.2).
    pub mpk: Vec<u8>,
    /// Session keys (TGK etc.) with their SPIs.
    pub keys: Vec<KeyData>,
}

fn tpk_keys(tpk: &[u8], rand: &[u8]) -> Result<MessageKeys> {
    MessageKeys::derive(PRF, tpk, ENCR, MAC, |c| keys::label_base_ticket(c, 0x05, rand))
}

/// A secret key that is zeroized on drop.
pub type Secret = Zeroizing<Vec<u8>>;

/// MPKi and MPKr from the ticket MPK (RFC 6043 A.2.2), each as long as the MPK.
pub fn mpk_i_r(mpk: &[u8], rand: &[u8]) -> Result<(Secret, Secret)> {
    let n = mpk.len();
    Ok((
        crate::prf::prf(PRF, mpk, &keys::label_base_ticket(keys::MPKI, 0x06, rand), n)?,
        crate::prf::prf(PRF, mpk, &keys::label_base_ticket(keys::MPKR, 0x06, rand), n)?,
    ))
}

/// The ticket-integrity MAC input: the TICKET payload without its Next Payload octet,
/// without the Initiator Data length/data and without the MAC (RFC 6043 A.1).
fn ticket_mac_input(policy: &TicketPolicy, ticket_data_wo_mac: &[u8], mac_len: usize) -> Result<Vec<u8>> {
    let t = Ticket { policy: policy.clone(), ticket_data: ticket_data_wo_mac.to_vec(), initiator_data: Vec::new() };
    let body = payload::encode_payloads(&[Payload::Ticket(t)])?;
    // body = Next(1) | TICKET fields | Ticket Data | Initiator Data length(2); the Ticket
    // Data length field must count the MAC too, so patch it.
    let off = 1 + 9 + policy.data.len();
    let mut body = body;
    let total = u16::try_from(ticket_data_wo_mac.len().saturating_add(mac_len))
        .map_err(|_| Error::encode("Ticket Data", "too long"))?;
    if let Some(f) = body.get_mut(off..off + 2) {
        f.copy_from_slice(&total.to_be_bytes());
    }
    let end = body.len().saturating_sub(2);
    Ok(body.get(1..end).unwrap_or_default().to_vec())
}

/// Issues a type-2 TICKET: Ticket Data = THDR(key id), T, RAND, KEMAC(E(TPK keys,
/// MPK || keys), NULL MAC), V(HMAC over the ticket with the TPK auth key).
pub fn issue_ticket(
    policy: TicketPolicy,
    tpk: &[u8],
    key_id: u32,
    t: Timestamp,
    rand: &[u8],
    content: &TicketContent,
) -> Result<Ticket> {
    let tk = tpk_keys(tpk, rand)?;
    let mut all = vec![key(KeyType::MPK, &content.mpk, &key_id.to_be_bytes())];
    all.extend(content.keys.iter().cloned());
    let n = MAC.mac_len().unwrap_or(32);
    let mut td = BaseTicketData {
        thdr_data: key_id.to_be_bytes().to_vec(),
        payloads: vec![
            Payload::T(t),
            Payload::Rand(payload::Rand { rand: rand.to_vec() }),
            kemac(&tk, 0xFFFF_FFFF, &t, &all)?,
            Payload::V(Verification { auth_alg: MAC, mac: vec![0; n] }),
        ],
    };
    let enc = td.encode()?;
    let wo_mac = enc.get(..enc.len().saturating_sub(n)).unwrap_or_default();
    let tag = kemac_crypto::mac(MAC, &tk.auth_key, &[&ticket_mac_input(&policy, wo_mac, n)?])?;
    if let Some(Payload::V(v)) = td.payloads.last_mut() {
        v.mac = tag;
    }
    Ok(Ticket { policy, ticket_data: td.encode()?, initiator_data: Vec::new() })
}

/// Opens a type-2 TICKET with the ticket key named by its THDR key id (`tpk_for`), checks
/// its MAC (constant time) and returns the MPK and keys.
pub fn open_ticket(ticket: &Ticket, tpk_for: impl Fn(u32) -> Option<Vec<u8>>) -> Result<TicketContent> {
    let p = &ticket.policy;
    if p.ticket_type != crate::registry::TicketType::THREE_GPP || p.subtype != 0 || p.version != 0 {
        return Err(Error::rejected(ErrorCode::INVALID_TICKET, format!("ticket {:?}/{}/{} not supported", p.ticket_type, p.subtype, p.version)));
    }
    let bad = |e: Error| Error::rejected(ErrorCode::INVALID_TICKET, format!("ticket data: {e}"));
    let td = BaseTicketData::decode(&ticket.ticket_data, 0).map_err(bad)?;
    let key_id = <[u8; THDR_LEN]>::try_from(td.thdr_data.as_slice())
        .map(u32::from_be_bytes)
        .map_err(|_| Error::rejected(ErrorCode::INVALID_TICKET, "THDR is not a 4-octet key id"))?;
    let tpk = tpk_for(key_id).ok_or_else(|| Error::rejected(ErrorCode::INVALID_TICKET, format!("unknown ticket key id {key_id}")))?;
    let rand = td
        .payloads
        .iter()
        .find_map(|p| if let Payload::Rand(r) = p { Some(r.rand.clone()) } else { None })
        .ok_or_else(|| Error::rejected(ErrorCode::INVALID_TICKET, "no RAND in ticket"))?;
    let v = match td.payloads.last() {
        Some(Payload::V(v)) if v.auth_alg == MAC => v.clone(),
        _ => return Err(Error::rejected(ErrorCode::INVALID_TICKET, "ticket does not end with an HMAC-SHA-256 V")),
    };
    let tk = tpk_keys(&tpk, &rand)?;
    let n = v.mac.len();
    let wo_mac = ticket.ticket_data.get(..ticket.ticket_data.len().saturating_sub(n)).unwrap_or_default();
    kemac_crypto::verify_mac(MAC, &tk.auth_key, &[&ticket_mac_input(p, wo_mac, n)?], &v.mac)?;
    let inner = Message { header: header(DataType::REQUEST_RESP, false, 0xFFFF_FFFF, CsIdMap::Empty { n_cs: 0 }), payloads: td.payloads };
    let mut keys = open_kemac(&inner, &tk, 0xFFFF_FFFF)?;
    if keys.first().map(|k| k.key_type) != Some(KeyType::MPK) {
        return Err(Error::rejected(ErrorCode::INVALID_TICKET, "ticket KEMAC does not start with the MPK"));
    }
    let mpk = keys.remove(0).key.clone();
    Ok(TicketContent { mpk, keys })
}
