//! A complete MIKEY message: Common Header + payload chain (RFC 3830 §6).

use crate::codec::{Reader, Writer};
use crate::error::Result;
use crate::header::CommonHeader;
use crate::payload::{Payload, Span, decode_chain, encode_chain, first_type};

/// A decoded MIKEY message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Common header.
    pub header: CommonHeader,
    /// Payloads in wire order.
    pub payloads: Vec<Payload>,
}

/// An encoded message with the byte span of every payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// Message bytes.
    pub bytes: Vec<u8>,
    /// Length of the header.
    pub header_len: usize,
    /// Span of each payload, in order.
    pub spans: Vec<Span>,
}

/// A message decoded once together with the bytes it came from, for readers that need both
/// (signature checks cover the bytes, the checks read the payloads): the pair cannot come
/// apart, as it is only made by [`Decoded::decode`].
#[derive(Debug, Clone)]
pub struct Decoded<'a> {
    bytes: &'a [u8],
    message: Message,
}

impl<'a> Decoded<'a> {
    /// Decodes `bytes` ([`Message::decode`]).
    pub fn decode(bytes: &'a [u8]) -> Result<Self> {
        Ok(Self { bytes, message: Message::decode(bytes)? })
    }

    /// The encoded message.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The decoded message.
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// The decoded message, the bytes no longer needed.
    pub fn into_message(self) -> Message {
        self.message
    }
}

impl Message {
    /// Decodes a whole message; trailing bytes are an error.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        Ok(Self::decode_with_spans(bytes)?.0)
    }

    /// Decodes a whole message and returns the header length and payload spans too.
    pub fn decode_with_spans(bytes: &[u8]) -> Result<(Self, usize, Vec<Span>)> {
        let mut r = Reader::new(bytes, 0);
        let (header, first) = CommonHeader::decode(&mut r)?;
        let header_len = r.offset();
        let (payloads, spans) = decode_chain(&mut r, first)?;
        Ok((Self { header, payloads }, header_len, spans))
    }

    /// Encodes the message.
    pub fn encode(&self) -> Result<Vec<u8>> {
        Ok(self.encode_with_spans()?.bytes)
    }

    /// Encodes the message and reports where each payload landed.
    pub fn encode_with_spans(&self) -> Result<Encoded> {
        let mut w = Writer::new();
        self.header.encode(first_type(&self.payloads), &mut w)?;
        let header_len = w.len();
        let mut spans = Vec::with_capacity(self.payloads.len());
        encode_chain(&self.payloads, &mut w, |s| spans.push(s))?;
        Ok(Encoded { bytes: w.into_vec(), header_len, spans })
    }

    /// First payload matching `f`.
    pub fn find<'a, T>(&'a self, f: impl Fn(&'a Payload) -> Option<T>) -> Option<T> {
        self.payloads.iter().find_map(f)
    }
}
