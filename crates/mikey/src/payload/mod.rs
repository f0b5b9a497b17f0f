//! MIKEY payloads and payload chains (RFC 3830 §6, RFC 6043 §6, RFC 6509 §4).
//!
//! Every payload except SIGN starts with a Next Payload octet naming the type of the
//! following payload (0 = last). Payloads carry no generic length, so a chain is walked by
//! type; an unknown type is a hard error. A decoded chain is a `Vec<Payload>` and the Next
//! Payload octets are re-derived from it on encoding, which makes encoding exact.

mod general_ext;
mod identity;
mod kemac;
mod keyexchange;
mod policy;
mod rand;
mod status;
mod ticket;
mod timestamp;

pub use general_ext::GeneralExt;
pub use identity::{Cert, Chash, Id, Idr};
pub use kemac::{KeyData, KeyValidity, Kemac};
pub use keyexchange::{Dh, Pke, Sakke, Sign};
pub use policy::{PolicyParam, SecurityPolicy};
pub use rand::{Rand, Randr};
pub use status::{ErrPayload, Verification};
pub use ticket::{BaseTicketData, Ticket, TicketFlags, TicketPolicy};
pub use timestamp::{Timestamp, TimestampRole};

use crate::codec::{Reader, Writer};
use crate::error::{Error, Result};
use crate::registry::PayloadType;

/// Any MIKEY payload this codec understands.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)]
pub enum Payload {
    /// Key data transport (type 1).
    Kemac(Kemac),
    /// Envelope data (type 2).
    Pke(Pke),
    /// Diffie-Hellman (type 3).
    Dh(Dh),
    /// Signature (type 4), always last.
    Sign(Sign),
    /// Timestamp (type 5).
    T(Timestamp),
    /// Identity (type 6).
    Id(Id),
    /// Certificate (type 7).
    Cert(Cert),
    /// Certificate hash (type 8).
    Chash(Chash),
    /// Verification (type 9).
    V(Verification),
    /// Security policy (type 10).
    Sp(SecurityPolicy),
    /// Random value (type 11).
    Rand(Rand),
    /// Error (type 12).
    Err(ErrPayload),
    /// Timestamp with role (type 13).
    Tr(TimestampRole),
    /// Identity with role (type 14).
    Idr(Idr),
    /// RAND with role (type 15).
    Randr(Randr),
    /// Ticket policy (type 16).
    Tp(TicketPolicy),
    /// Ticket (type 17).
    Ticket(Ticket),
    /// Key data sub-payload (type 20).
    KeyData(KeyData),
    /// General extension (type 21).
    GeneralExt(GeneralExt),
    /// SAKKE encapsulated data (type 26).
    Sakke(Sakke),
}

impl Payload {
    /// The payload's type code.
    pub fn payload_type(&self) -> PayloadType {
        match self {
            Self::Kemac(_) => PayloadType::KEMAC,
            Self::Pke(_) => PayloadType::PKE,
            Self::Dh(_) => PayloadType::DH,
            Self::Sign(_) => PayloadType::SIGN,
            Self::T(_) => PayloadType::T,
            Self::Id(_) => PayloadType::ID,
            Self::Cert(_) => PayloadType::CERT,
            Self::Chash(_) => PayloadType::CHASH,
            Self::V(_) => PayloadType::V,
            Self::Sp(_) => PayloadType::SP,
            Self::Rand(_) => PayloadType::RAND,
            Self::Err(_) => PayloadType::ERR,
            Self::Tr(_) => PayloadType::TR,
            Self::Idr(_) => PayloadType::IDR,
            Self::Randr(_) => PayloadType::RANDR,
            Self::Tp(_) => PayloadType::TP,
            Self::Ticket(_) => PayloadType::TICKET,
            Self::KeyData(_) => PayloadType::KEY_DATA,
            Self::GeneralExt(_) => PayloadType::GENERAL_EXT,
            Self::Sakke(_) => PayloadType::SAKKE,
        }
    }

    /// Decodes the body of a payload of type `ty` (after its Next Payload octet).
    fn decode_body(ty: PayloadType, start: usize, r: &mut Reader<'_>) -> Result<Self> {
        Ok(match ty {
            PayloadType::KEMAC => Self::Kemac(Kemac::decode(r)?),
            PayloadType::PKE => Self::Pke(Pke::decode(r)?),
            PayloadType::DH => Self::Dh(Dh::decode(r)?),
            PayloadType::SIGN => Self::Sign(Sign::decode(r)?),
            PayloadType::T => Self::T(Timestamp::decode(r)?),
            PayloadType::ID => Self::Id(Id::decode(r)?),
            PayloadType::CERT => Self::Cert(Cert::decode(r)?),
            PayloadType::CHASH => Self::Chash(Chash::decode(r)?),
            PayloadType::V => Self::V(Verification::decode(r)?),
            PayloadType::SP => Self::Sp(SecurityPolicy::decode(r)?),
            PayloadType::RAND => Self::Rand(Rand::decode(r)?),
            PayloadType::ERR => Self::Err(ErrPayload::decode(r)?),
            PayloadType::TR => Self::Tr(TimestampRole::decode(r)?),
            PayloadType::IDR => Self::Idr(Idr::decode(r)?),
            PayloadType::RANDR => Self::Randr(Randr::decode(r)?),
            PayloadType::TP => Self::Tp(TicketPolicy::decode(r)?),
            PayloadType::TICKET => Self::Ticket(Ticket::decode(r)?),
            PayloadType::KEY_DATA => Self::KeyData(KeyData::decode(r)?),
            PayloadType::GENERAL_EXT => Self::GeneralExt(GeneralExt::decode(r)?),
            PayloadType::SAKKE => Self::Sakke(Sakke::decode(r)?),
            other => return Err(Error::UnknownPayload { offset: start, payload_type: other.0 }),
        })
    }

    fn encode_body(&self, w: &mut Writer) -> Result<()> {
        match self {
            Self::Kemac(p) => p.encode(w),
            Self::Pke(p) => p.encode(w),
            Self::Dh(p) => p.encode(w),
            Self::Sign(p) => p.encode(w),
            Self::T(p) => p.encode(w),
            Self::Id(p) => p.encode(w),
            Self::Cert(p) => p.encode(w),
            Self::Chash(p) => p.encode(w),
            Self::V(p) => p.encode(w),
            Self::Sp(p) => p.encode(w),
            Self::Rand(p) => p.encode(w),
            Self::Err(p) => p.encode(w),
            Self::Tr(p) => p.encode(w),
            Self::Idr(p) => p.encode(w),
            Self::Randr(p) => p.encode(w),
            Self::Tp(p) => p.encode(w),
            Self::Ticket(p) => p.encode(w),
            Self::KeyData(p) => p.encode(w),
            Self::GeneralExt(p) => p.encode(w),
            Self::Sakke(p) => p.encode(w),
        }
    }
}

/// Byte span of one payload inside an encoded buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// Offset of the payload's first octet.
    pub start: usize,
    /// Offset one past its last octet.
    pub end: usize,
}

/// Decodes a chain whose first payload has type `first`, consuming the whole reader.
pub(crate) fn decode_chain(r: &mut Reader<'_>, first: u8) -> Result<(Vec<Payload>, Vec<Span>)> {
    // Room for the usual message (HDR aside, four to eight payloads) without regrowing.
    let mut payloads = Vec::with_capacity(8);
    let mut spans = Vec::with_capacity(8);
    let mut next = first;
    while next != PayloadType::LAST.0 {
        let start = r.offset();
        let ty = PayloadType(next);
        if ty == PayloadType::SIGN {
            payloads.push(Payload::decode_body(ty, start, r)?);
            spans.push(Span { start, end: r.offset() });
            break;
        }
        if !is_known(ty) {
            return Err(Error::UnknownPayload { offset: start, payload_type: next });
        }
        next = r.u8("Next Payload")?;
        payloads.push(Payload::decode_body(ty, start, r)?);
        spans.push(Span { start, end: r.offset() });
    }
    r.finish()?;
    Ok((payloads, spans))
}

fn is_known(ty: PayloadType) -> bool {
    matches!(ty.0, 1..=17 | 20 | 21 | 26)
}

/// What a payload chain is made of: [`Payload`]s, or only [`KeyData`] (a KEMAC's plaintext,
/// encoded without wrapping — and so copying — each key in a [`Payload`]).
pub(crate) trait Chained {
    fn payload_type(&self) -> PayloadType;
    fn encode_body(&self, w: &mut Writer) -> Result<()>;
}

impl Chained for Payload {
    fn payload_type(&self) -> PayloadType {
        Self::payload_type(self)
    }
    fn encode_body(&self, w: &mut Writer) -> Result<()> {
        Self::encode_body(self, w)
    }
}

impl Chained for KeyData {
    fn payload_type(&self) -> PayloadType {
        PayloadType::KEY_DATA
    }
    fn encode_body(&self, w: &mut Writer) -> Result<()> {
        self.encode(w)
    }
}

/// Encodes a chain, telling `span` where each payload landed (offsets in the writer); callers
/// that need no spans pass `|_| ()` and allocate nothing for them.
pub(crate) fn encode_chain<P: Chained>(payloads: &[P], w: &mut Writer, mut span: impl FnMut(Span)) -> Result<()> {
    let mut iter = payloads.iter().peekable();
    while let Some(p) = iter.next() {
        let start = w.len();
        if p.payload_type() == PayloadType::SIGN {
            if iter.peek().is_some() {
                return Err(Error::encode("SIGN", "SIGN must be the last payload"));
            }
        } else {
            w.u8(iter.peek().map_or(0, |n| n.payload_type().0));
        }
        p.encode_body(w)?;
        span(Span { start, end: w.len() });
    }
    Ok(())
}

/// Type code of the first payload of a chain (0 = empty chain).
pub(crate) fn first_type(payloads: &[Payload]) -> u8 {
    payloads.first().map_or(0, |p| p.payload_type().0)
}

/// Decodes a standalone chain preceded by nothing, given the first type (used for the
/// decrypted KEMAC content and for ticket sub-chains). `base` is the absolute offset of
/// `bytes[0]`, for error messages.
pub fn decode_payloads(bytes: &[u8], first: PayloadType, base: usize) -> Result<Vec<Payload>> {
    let mut r = Reader::new(bytes, base);
    Ok(decode_chain(&mut r, first.0)?.0)
}

/// Encodes a standalone chain (no leading type octet).
pub fn encode_payloads(payloads: &[Payload]) -> Result<Vec<u8>> {
    let mut w = Writer::new();
    encode_chain(payloads, &mut w, |_| ())?;
    Ok(w.into_vec())
}

/// Encodes a chain of KEY DATA payloads (a KEMAC's plaintext, RFC 3830 §6.2), as
/// [`encode_payloads`] of each wrapped in [`Payload::KeyData`] would, without copying them.
pub fn encode_key_data(keys: &[KeyData]) -> Result<Vec<u8>> {
    let mut w = Writer::new();
    encode_chain(keys, &mut w, |_| ())?;
    Ok(w.into_vec())
}

/// Decodes a chain that starts with a "first payload" octet (TP Data, Initiator Data;
/// RFC 6043 §6.10, §6.11).
pub fn decode_first_payload_chain(bytes: &[u8], base: usize) -> Result<Vec<Payload>> {
    let mut r = Reader::new(bytes, base);
    let first = r.u8("First Payload")?;
    Ok(decode_chain(&mut r, first)?.0)
}

/// Encodes a chain preceded by its "first payload" octet.
pub fn encode_first_payload_chain(payloads: &[Payload]) -> Result<Vec<u8>> {
    let mut w = Writer::new();
    w.u8(first_type(payloads));
    encode_chain(payloads, &mut w, |_| ())?;
    Ok(w.into_vec())
}
