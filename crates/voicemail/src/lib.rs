//! Deferred delivery of MIKEY-TICKET calls (TR 33.828 requirement 52; TS 33.328 KMS-based
//! solution): a voicemail server that stores encrypted media it cannot decrypt, and the
//! mailbox owner's retrieval. docs/voicemail.md.
//!
//! - [`record`]: one stored message and its encoding; [`store`]: the redb message store.
//! - [`deposit`]: the SIP side (answers diverted INVITEs with a deferred-delivery answer,
//!   records the SRTP verbatim).
//! - [`api`], [`auth`], [`http`]: the retrieval API (JSON over HTTP, GBA HTTP Digest as a NAF).
//! - [`metrics`]: the Prometheus counters (`GET /metrics` on the API listener).
//! - [`owner`]: the owner's client: download, Ticket Resolve, SRTP decryption, WAV.
//! - [`service`]: the whole server (store, SIP, API) as the CLI, tests and demo run it.

pub mod api;
pub mod auth;
pub mod deposit;
mod error;
pub mod http;
pub mod metrics;
pub mod owner;
pub mod record;
pub mod service;
pub mod store;

pub use error::VoicemailError;

/// Entry point of the `voicemail_record` fuzz target and its corpus replay: arbitrary bytes as
/// a stored record and as a `GET /voicemail/v1/messages/{id}` / list body. Must never panic;
/// what decodes re-encodes to a record that decodes the same.
#[doc(hidden)]
pub fn fuzz_inputs(data: &[u8]) {
    let head = record::head(data);
    if let Ok(r) = record::Record::decode(data)
        && let Ok(bytes) = r.encode()
    {
        assert_eq!(record::Record::decode(&bytes).ok().as_ref(), Some(&r), "re-encoded record differs");
        assert_eq!(head.ok(), Some(record::Head { id: r.id, received_ms: r.received_ms, mailbox: r.mailbox }), "the head of a record is its own");
    }
    if let Ok(r) = api::MessageDoc::parse(data) {
        let _ = r.encode();
    }
    let _ = serde_json::from_slice::<Vec<api::Summary>>(data);
}
