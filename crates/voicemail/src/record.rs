//! One stored message (deferred delivery, docs/voicemail.md) and its on-disk encoding *(ours)*.
//!
//! Nothing in a record is decryptable by the server: the SRTP/SRTCP packets are kept verbatim
//! as they arrived, next to the TRANSFER_INIT of the offer, whose ticket only the KMS and the
//! ticket's authorised responders can open.
//!
//! Encoding (all integers big-endian):
//! ```text
//! "MSVM" version(1)=1
//! id(u64) received_ms(u64) dropped(u64)
//! mailbox(u16 len + UTF-8) caller(u16 len + UTF-8) offer(u32 len + UTF-8) transfer_init(u32 len)
//! count(u32), then per packet: at_ms(u64, since received_ms) len(u16) bytes
//! ```
//! The decoder never panics and reports the byte offset of what it cannot read.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::VoicemailError;

const MAGIC: &[u8; 4] = b"MSVM";
const VERSION: u8 = 1;
/// Longest mailbox or caller identity kept.
pub const MAX_IDENTITY: usize = 1024;
/// Largest stored SDP offer or TRANSFER_INIT.
pub const MAX_BLOB: usize = 64 * 1024;
/// Largest stored packet (a UDP datagram of the media port, as read).
pub const MAX_PACKET: usize = 2048;

/// Now, in Unix milliseconds (the unit of [`Record::received_ms`]).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// One SRTP or SRTCP packet as received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    /// Arrival, milliseconds after [`Record::received_ms`].
    pub at_ms: u64,
    /// The datagram, verbatim.
    pub bytes: Vec<u8>,
}

/// A stored message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Message id (unique in the store).
    pub id: u64,
    /// The mailbox: the original callee (the INVITE's `To` URI, canonical `sip:user@host`).
    pub mailbox: String,
    /// The caller as the network asserted it (`P-Asserted-Identity`, else `From`).
    pub caller: String,
    /// When the call was answered, Unix milliseconds.
    pub received_ms: u64,
    /// The SDP offer, verbatim.
    pub offer: String,
    /// The TRANSFER_INIT of the offer's `a=key-mgmt:mikey`.
    pub transfer_init: Vec<u8>,
    /// The packets received, in order, up to the caps.
    pub packets: Vec<Packet>,
    /// Packets received beyond the caps (dropped, counted).
    pub dropped: u64,
}

fn put_len(out: &mut Vec<u8>, len: usize, wide: bool) {
    if wide {
        out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
    } else {
        out.extend_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_be_bytes());
    }
}

impl Record {
    /// The stored bytes. Fields beyond their limits are refused, so that what is written
    /// always decodes.
    pub fn encode(&self) -> Result<Vec<u8>, VoicemailError> {
        let limit = |ok: bool, reason: &'static str| if ok { Ok(()) } else { Err(VoicemailError::Record { offset: 0, reason }) };
        limit(self.mailbox.len() <= MAX_IDENTITY && self.caller.len() <= MAX_IDENTITY, "identity too long")?;
        limit(self.offer.len() <= MAX_BLOB && self.transfer_init.len() <= MAX_BLOB, "offer or TRANSFER_INIT too long")?;
        limit(self.packets.iter().all(|p| p.bytes.len() <= MAX_PACKET), "packet too long")?;
        limit(u32::try_from(self.packets.len()).is_ok(), "too many packets")?;
        let mut out = Vec::with_capacity(64 + self.offer.len() + self.transfer_init.len() + self.packets.iter().map(|p| p.bytes.len() + 10).sum::<usize>());
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        for v in [self.id, self.received_ms, self.dropped] {
            out.extend_from_slice(&v.to_be_bytes());
        }
        for (field, wide) in [(self.mailbox.as_bytes(), false), (self.caller.as_bytes(), false), (self.offer.as_bytes(), true), (self.transfer_init.as_slice(), true)] {
            put_len(&mut out, field.len(), wide);
            out.extend_from_slice(field);
        }
        put_len(&mut out, self.packets.len(), true);
        for p in &self.packets {
            out.extend_from_slice(&p.at_ms.to_be_bytes());
            put_len(&mut out, p.bytes.len(), false);
            out.extend_from_slice(&p.bytes);
        }
        Ok(out)
    }

    /// Decodes stored bytes (the whole input must be one record).
    pub fn decode(bytes: &[u8]) -> Result<Self, VoicemailError> {
        let mut r = Reader { bytes, at: 0 };
        let (id, received_ms) = r.header()?;
        let dropped = r.u64("truncated drop count")?;
        let mailbox = r.text(false, MAX_IDENTITY, "mailbox")?;
        let caller = r.text(false, MAX_IDENTITY, "caller")?;
        let offer = r.text(true, MAX_BLOB, "offer")?;
        let transfer_init = r.blob(true, MAX_BLOB, "TRANSFER_INIT")?.to_vec();
        let count = r.u32("truncated packet count")?;
        // Each packet takes at least 10 octets: a count beyond what is left is a lie.
        let left = bytes.len().saturating_sub(r.at);
        if usize::try_from(count).map_or(true, |c| c > left / 10) {
            return Err(r.error(r.at.saturating_sub(4), "packet count exceeds the record"));
        }
        let mut packets = Vec::new();
        for _ in 0..count {
            let at_ms = r.u64("truncated packet time")?;
            let bytes = r.blob(false, MAX_PACKET, "packet")?.to_vec();
            packets.push(Packet { at_ms, bytes });
        }
        if r.at != bytes.len() {
            return Err(r.error(r.at, "trailing bytes after the record"));
        }
        Ok(Self { id, mailbox, caller, received_ms, offer, transfer_init, packets, dropped })
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

/// What the retention purge needs of an encoded record, read from its start alone (no
/// caller, offer or packets decoded): id, arrival time, mailbox.
#[derive(Debug, PartialEq, Eq)]
pub struct Head {
    /// The message id.
    pub id: u64,
    /// When it was received (Unix milliseconds).
    pub received_ms: u64,
    /// Whose mailbox it is in.
    pub mailbox: String,
}

/// The [`Head`] of an encoded record.
pub fn head(bytes: &[u8]) -> Result<Head, VoicemailError> {
    let mut r = Reader { bytes, at: 0 };
    let (id, received_ms) = r.header()?;
    r.u64("truncated drop count")?;
    let mailbox = r.text(false, MAX_IDENTITY, "mailbox")?;
    Ok(Head { id, received_ms, mailbox })
}

impl<'a> Reader<'a> {
    /// Magic, version, id and `received_ms`.
    fn header(&mut self) -> Result<(u64, u64), VoicemailError> {
        if self.take(4, "truncated magic")? != MAGIC {
            return Err(self.error(0, "not a voicemail record (magic)"));
        }
        if self.u8("truncated version")? != VERSION {
            return Err(self.error(4, "unknown record version"));
        }
        Ok((self.u64("truncated id")?, self.u64("truncated time")?))
    }

    fn error(&self, offset: usize, reason: &'static str) -> VoicemailError {
        VoicemailError::Record { offset, reason }
    }

    fn take(&mut self, n: usize, reason: &'static str) -> Result<&'a [u8], VoicemailError> {
        let end = self.at.checked_add(n).ok_or_else(|| self.error(self.at, reason))?;
        let s = self.bytes.get(self.at..end).ok_or_else(|| self.error(self.at, reason))?;
        self.at = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, reason: &'static str) -> Result<[u8; N], VoicemailError> {
        let s = self.take(N, reason)?;
        <[u8; N]>::try_from(s).map_err(|_| self.error(self.at, reason))
    }

    fn u8(&mut self, reason: &'static str) -> Result<u8, VoicemailError> {
        Ok(self.array::<1>(reason)?[0])
    }

    fn u32(&mut self, reason: &'static str) -> Result<u32, VoicemailError> {
        Ok(u32::from_be_bytes(self.array(reason)?))
    }

    fn u64(&mut self, reason: &'static str) -> Result<u64, VoicemailError> {
        Ok(u64::from_be_bytes(self.array(reason)?))
    }

    fn blob(&mut self, wide: bool, max: usize, what: &'static str) -> Result<&'a [u8], VoicemailError> {
        let start = self.at;
        let len = if wide { usize::try_from(self.u32(what)?).unwrap_or(usize::MAX) } else { usize::from(u16::from_be_bytes(self.array(what)?)) };
        if len > max {
            return Err(self.error(start, "field longer than its limit"));
        }
        self.take(len, "truncated field")
    }

    fn text(&mut self, wide: bool, max: usize, what: &'static str) -> Result<String, VoicemailError> {
        let start = self.at;
        let b = self.blob(wide, max, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| self.error(start, "field is not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record() -> impl Strategy<Value = Record> {
        let packet = (any::<u64>(), proptest::collection::vec(any::<u8>(), 0..300)).prop_map(|(at_ms, bytes)| Packet { at_ms, bytes });
        (
            any::<u64>(),
            "[ -~]{0,60}",
            "[ -~]{0,60}",
            any::<u64>(),
            "[ -~\r\n]{0,200}",
            proptest::collection::vec(any::<u8>(), 0..200),
            proptest::collection::vec(packet, 0..20),
            any::<u64>(),
        )
            .prop_map(|(id, mailbox, caller, received_ms, offer, transfer_init, packets, dropped)| Record { id, mailbox, caller, received_ms, offer, transfer_init, packets, dropped })
    }

    proptest! {
        #[test]
        fn encode_decode_round_trip(r in record()) {
            let bytes = r.encode().expect("within limits");
            prop_assert_eq!(head(&bytes).expect("head"), Head { id: r.id, received_ms: r.received_ms, mailbox: r.mailbox.clone() });
            prop_assert_eq!(Record::decode(&bytes).expect("decodes"), r);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = Record::decode(&bytes);
        }

        #[test]
        fn every_truncation_is_refused(r in record(), cut in any::<prop::sample::Index>()) {
            let bytes = r.encode().expect("within limits");
            let cut = cut.index(bytes.len());
            prop_assert!(Record::decode(bytes.get(..cut).unwrap_or_default()).is_err());
        }
    }

    #[test]
    fn errors_name_the_offset() {
        let r = Record { id: 1, mailbox: "sip:carol@b.example".into(), caller: "sip:alice@a.example".into(), received_ms: 2, offer: "v=0".into(), transfer_init: vec![1, 2], packets: vec![Packet { at_ms: 3, bytes: vec![9; 4] }], dropped: 0 };
        let mut bytes = r.encode().expect("encode");
        bytes.push(0);
        let e = Record::decode(&bytes).expect_err("trailing");
        assert!(e.to_string().contains(&format!("at byte {}", bytes.len() - 1)), "{e}");
        let e = Record::decode(b"MSVX\x01").expect_err("magic");
        assert!(e.to_string().contains("(magic) at byte 0"), "{e}");
        let long = Record { mailbox: "x".repeat(MAX_IDENTITY + 1), ..r };
        assert!(long.encode().is_err());
    }
}
