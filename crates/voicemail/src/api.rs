//! The JSON documents of the retrieval API (`/voicemail/v1/messages`, docs/voicemail.md),
//! shared by the server and the owner's client.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use crate::error::VoicemailError;
use crate::record::{Packet, Record};

/// Base path of the API.
pub const BASE: &str = "/voicemail/v1/messages";

/// One entry of `GET /voicemail/v1/messages`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Summary {
    /// Message id.
    pub id: u64,
    /// Mailbox (`sip:user@host`).
    pub mailbox: String,
    /// Caller as asserted by the network.
    pub caller: String,
    /// Answer time, Unix milliseconds.
    pub received_ms: u64,
    /// Stored packets.
    pub packets: usize,
    /// Packets dropped beyond the caps.
    pub dropped: u64,
}

/// One stored packet in a [`MessageDoc`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PacketDoc {
    /// Arrival, ms after the answer.
    pub at_ms: u64,
    /// The SRTP/SRTCP datagram, base64.
    pub data: String,
}

/// `GET /voicemail/v1/messages/{id}`: the whole record, binary fields in base64.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageDoc {
    /// Message id.
    pub id: u64,
    /// Mailbox.
    pub mailbox: String,
    /// Caller.
    pub caller: String,
    /// Answer time, Unix milliseconds.
    pub received_ms: u64,
    /// The SDP offer.
    pub offer: String,
    /// TRANSFER_INIT, base64.
    pub transfer_init: String,
    /// The packets.
    pub packets: Vec<PacketDoc>,
    /// Packets dropped beyond the caps.
    pub dropped: u64,
}

impl Summary {
    /// The summary of `r`.
    pub fn of(r: &Record) -> Self {
        Self { id: r.id, mailbox: r.mailbox.clone(), caller: r.caller.clone(), received_ms: r.received_ms, packets: r.packets.len(), dropped: r.dropped }
    }
}

impl MessageDoc {
    /// The document of `r`.
    pub fn of(r: &Record) -> Self {
        Self {
            id: r.id,
            mailbox: r.mailbox.clone(),
            caller: r.caller.clone(),
            received_ms: r.received_ms,
            offer: r.offer.clone(),
            transfer_init: STANDARD.encode(&r.transfer_init),
            packets: r.packets.iter().map(|p| PacketDoc { at_ms: p.at_ms, data: STANDARD.encode(&p.bytes) }).collect(),
            dropped: r.dropped,
        }
    }

    /// The record back (base64 fields decoded; packet `i` named in the error).
    pub fn into_record(self) -> Result<Record, VoicemailError> {
        let b64 = |what: String, s: &str| STANDARD.decode(s).map_err(|e| VoicemailError::Answer(format!("{what}: not base64 ({e})")));
        let transfer_init = b64("transfer_init".into(), &self.transfer_init)?;
        let mut packets = Vec::with_capacity(self.packets.len());
        for (i, p) in self.packets.iter().enumerate() {
            packets.push(Packet { at_ms: p.at_ms, bytes: b64(format!("packet {i}"), &p.data)? });
        }
        Ok(Record { id: self.id, mailbox: self.mailbox, caller: self.caller, received_ms: self.received_ms, offer: self.offer, transfer_init, packets, dropped: self.dropped })
    }

    /// Parses a `GET /voicemail/v1/messages/{id}` body into a record.
    pub fn parse(body: &[u8]) -> Result<Record, VoicemailError> {
        serde_json::from_slice::<Self>(body).map_err(|e| VoicemailError::Answer(e.to_string()))?.into_record()
    }
}
