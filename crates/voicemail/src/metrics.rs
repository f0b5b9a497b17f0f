//! The voicemail server's Prometheus metrics (text format 0.0.4), served on the API listener at
//! `GET /metrics`, as the BSF and the KMS serve theirs: final responses to INVITEs by status
//! (answered 200, or refused: 403 not from the registrar, 404 no such mailbox, 480 mailbox
//! full, 486 busy, 488 not a MIKEY-TICKET offer, 500 store failure), messages written, octets
//! and packets dropped beyond the caps, retention deletions, store failures, calls recording
//! now, and API responses by status.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// The counters; shared by the deposit side and the API.
#[derive(Debug, Default)]
pub struct Metrics {
    invites: Mutex<BTreeMap<u16, u64>>,
    api: Mutex<BTreeMap<u16, u64>>,
    pub(crate) messages_stored: AtomicU64,
    pub(crate) packets_dropped: AtomicU64,
    pub(crate) messages_purged: AtomicU64,
    pub(crate) messages_deleted: AtomicU64,
    pub(crate) store_errors: AtomicU64,
    pub(crate) calls_recording: AtomicU64,
}

fn bump(by_status: &Mutex<BTreeMap<u16, u64>>, status: u16) {
    if let Ok(mut m) = by_status.lock() {
        *m.entry(status).or_default() += 1;
    }
}

impl Metrics {
    /// A final response `status` to an INVITE went out.
    pub(crate) fn invite_answered(&self, status: u16) {
        bump(&self.invites, status);
    }

    /// The API answered `status`.
    pub(crate) fn api_answered(&self, status: u16) {
        bump(&self.api, status);
    }

    /// The Prometheus text.
    pub fn render(&self) -> String {
        let mut s = String::new();
        for (name, help, by_status) in [
            ("mediasec_voicemail_invites_total", "Final responses to INVITEs, by status.", &self.invites),
            ("mediasec_voicemail_api_responses_total", "Retrieval API responses, by status.", &self.api),
        ] {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter");
            if let Ok(m) = by_status.lock() {
                for (status, n) in m.iter() {
                    let _ = writeln!(s, "{name}{{status=\"{status}\"}} {n}");
                }
            }
        }
        for (name, kind, help, value) in [
            ("mediasec_voicemail_messages_stored_total", "counter", "Messages written at the end of their call.", &self.messages_stored),
            ("mediasec_voicemail_packets_dropped_total", "counter", "Packets not kept: beyond a message's caps.", &self.packets_dropped),
            ("mediasec_voicemail_messages_purged_total", "counter", "Messages deleted past their retention.", &self.messages_purged),
            ("mediasec_voicemail_messages_deleted_total", "counter", "Messages deleted by their owners.", &self.messages_deleted),
            ("mediasec_voicemail_store_errors_total", "counter", "Store operations that failed.", &self.store_errors),
            ("mediasec_voicemail_calls_recording", "gauge", "Calls being recorded now.", &self.calls_recording),
        ] {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}", value.load(Ordering::Relaxed));
        }
        s
    }
}
