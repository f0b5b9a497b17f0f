//! The deposit side of deferred delivery (docs/voicemail.md): a SIP UAS on the
//! `mediasec_sip` endpoint that answers INVITEs diverted to it (the S-CSCF's `--voicemail`)
//! carrying a MIKEY-TICKET offer, **without** resolving the ticket — it is not the responder,
//! holds no key and the KMS would refuse it. Its 200 answers `a=recvonly`, no key management,
//! `a=mediasec-deferred` ([`mediasec_ua::ticket::deferred_answer`]); it stores the offer, the
//! TRANSFER_INIT and every datagram that reaches the call's media port from the first source
//! that sent one (RTP latching), verbatim, up to the
//! caps ([`Caps`]), in the [`Store`]. The record is written when the call is answered and
//! again when it ends (BYE, [`Caps::max_duration`] over — checked every [`SWEEP`] — or
//! [`Deposit::shutdown`]). At most [`Caps::max_calls`] calls are recorded at once.
//!
//! It registers its AOR with the S-CSCF (RFC 3261 §10, refreshed at half the expiry) so that
//! the S-CSCF finds it like any contact.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use mediasec_sip::core::{HeaderName, Message, Method, Request, RequestBuilder, ResponseBuilder, StatusCode, Timers, TransactionKey, Uri};
use mediasec_sip::dialog::{Dialog, DialogId};
use mediasec_sip::udp::{Command, Endpoint, Event, Events};
use mediasec_ua::ticket;
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

use crate::error::VoicemailError;
use crate::metrics::Metrics;
use crate::record::{MAX_PACKET, Packet, Record};
use crate::store::Store;

/// The most octets of packets one message may keep (`Caps::max_bytes`): its JSON download
/// (base64, ≈ 4/3 of it, plus metadata) must fit the 4 MiB response limit of the HTTP client
/// (`mediasec_bsf::client`).
pub const MAX_MESSAGE_BYTES: usize = 2 << 20;

/// How much of one message is kept; packets beyond are dropped and counted.
#[derive(Clone, Copy, Debug)]
pub struct Caps {
    /// Packets per message.
    pub max_packets: usize,
    /// Octets of packets per message.
    pub max_bytes: usize,
    /// Recording time per message, from the answer: the call is then ended on our side (its
    /// media port closed, the message written) even if no BYE comes.
    pub max_duration: Duration,
    /// Calls recorded at once; further INVITEs are answered 486 (Busy Here).
    pub max_calls: usize,
    /// Messages one mailbox may hold (`None`: no limit); an INVITE for a full mailbox is
    /// answered 480 (Temporarily Unavailable, reason "Mailbox Full", RFC 3261 §21.4.18: the
    /// reason phrase says why) until its owner deletes some or they pass their retention.
    /// Calls being recorded count: each call's record is written at the answer
    /// ([`Store::insert_within`]), so concurrent calls — on this server or on others sharing
    /// the store — never take a mailbox past it; a call that ends without media frees its
    /// place (its record is deleted when it ends).
    pub max_messages: Option<usize>,
    /// How long a message is kept after it was received (`None`: until its owner deletes
    /// it); older ones are deleted at start and every [`RETENTION_SWEEP`]
    /// ([`Store::purge_received_before`]), whether or not they were fetched.
    pub retention: Option<Duration>,
}

/// How often messages past [`Caps::retention`] are deleted.
pub const RETENTION_SWEEP: Duration = Duration::from_secs(600);

impl Default for Caps {
    /// 3000 packets (a minute of 20 ms audio), 1 MiB, 120 s, 64 calls at once, 100 messages
    /// per mailbox, messages kept 30 days.
    fn default() -> Self {
        Self { max_packets: 3000, max_bytes: 1 << 20, max_duration: Duration::from_secs(120), max_calls: 64, max_messages: Some(100), retention: Some(Duration::from_secs(30 * 86_400)) }
    }
}

/// How a voicemail server runs.
#[derive(Clone, Debug)]
pub struct DepositConfig {
    /// Its AOR, registered with the S-CSCF (`sip:vm@b.example`).
    pub aor: String,
    /// Home domain: only mailboxes of this domain are stored (others: 404).
    pub domain: String,
    /// SIP address (port 0 picks one).
    pub sip_bind: SocketAddr,
    /// Address of the media ports.
    pub rtp_ip: IpAddr,
    /// The S-CSCF to register with (none: reached by address only). When set, INVITEs are
    /// accepted from its host only (others: 403).
    pub registrar: Option<SocketAddr>,
    /// Registration expiry asked, seconds.
    pub expires: u32,
    /// Message caps.
    pub caps: Caps,
    /// SIP timers.
    pub timers: Timers,
}

#[derive(Default)]
struct Recording {
    packets: Vec<Packet>,
    bytes: usize,
    dropped: u64,
}

struct Call {
    record: Record,
    recording: Arc<Mutex<Recording>>,
    capture: JoinHandle<()>,
    /// The dialog our 200 made (RFC 3261 §12.1.1): a BYE must match its Call-ID and both
    /// tags, with a CSeq above the INVITE's (§12.2.2), to end the call.
    dialog: Dialog,
}

/// A running voicemail server (deposit side); dropping it stops it without flushing the calls
/// in progress ([`Deposit::shutdown`] flushes them).
pub struct Deposit {
    sip: SocketAddr,
    metrics: Arc<Metrics>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Drop for Deposit {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How often calls whose recording time is over are ended and written.
pub const SWEEP: Duration = Duration::from_secs(1);

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn token() -> String {
    format!("{:016x}", rand::random::<u64>())
}

fn header_text(request: &Request, name: &HeaderName) -> Option<String> {
    request.headers.get(name).map(|h| String::from_utf8_lossy(h.value().trim_ascii()).into_owned())
}

/// The URI inside a name-addr or addr-spec header value (`"A" <sip:a@x>;tag=1` → `sip:a@x`).
pub(crate) fn uri_of(value: &str) -> String {
    let v = value.trim();
    match (v.find('<'), v.find('>')) {
        (Some(a), Some(b)) if a < b => v.get(a + 1..b).unwrap_or(v).to_owned(),
        _ => v.split(';').next().unwrap_or(v).trim().to_owned(),
    }
}

/// The canonical mailbox of a callee URI: `sip:` + its KMS UID (`user@host`).
pub fn mailbox_of(uri: &str) -> Result<String, VoicemailError> {
    Ok(format!("sip:{}", ticket::uid_of(&uri_of(uri))?))
}

impl Deposit {
    /// Binds the SIP endpoint, registers with the S-CSCF when configured (waits for its
    /// answer: an error if it is not 2xx within 64·T1) and starts serving.
    pub async fn start(config: DepositConfig, store: Store) -> Result<Self, VoicemailError> {
        let indexed = store.index_mailboxes().await?;
        if indexed > 0 {
            tracing::info!(messages = indexed, "voicemail: mailbox index built for the messages stored before it");
        }
        let (endpoint, mut events) = Endpoint::bind(config.sip_bind, config.timers).await?;
        let sip = endpoint.local_addr();
        let metrics = Arc::new(Metrics::default());
        let mut core = Core { config, endpoint, store, calls: HashMap::new(), metrics: Arc::clone(&metrics) };
        if core.config.registrar.is_some() {
            let key = core.register()?;
            let deadline = core.config.timers.t1 * 64;
            let status = tokio::time::timeout(deadline, async {
                while let Some(e) = events.recv().await {
                    match e {
                        Event::Response { key: k, response } if k == key && response.status.code() >= 200 => return Some(response.status.code()),
                        Event::Timeout { key: k } if k == key => return None,
                        _ => {}
                    }
                }
                None
            })
            .await
            .ok()
            .flatten();
            match status {
                Some(s) if (200..300).contains(&s) => tracing::info!(aor = %core.config.aor, "voicemail registered"),
                other => return Err(VoicemailError::Config(format!("REGISTER of {} answered {other:?}", core.config.aor))),
            }
        }
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(core.run(events, stopped));
        Ok(Self { sip, metrics, stop: Some(stop), task })
    }

    /// Our SIP address.
    pub fn sip_addr(&self) -> SocketAddr {
        self.sip
    }

    /// The server's counters (the API adds its own to the same set).
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.metrics)
    }

    /// Stops serving after writing every call in progress to the store.
    pub async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

struct Core {
    config: DepositConfig,
    endpoint: Endpoint,
    store: Store,
    calls: HashMap<String, Call>,
    metrics: Arc<Metrics>,
}

impl Core {
    async fn run(mut self, mut events: Events, mut stopped: tokio::sync::oneshot::Receiver<()>) {
        let refresh = Duration::from_secs(u64::from(self.config.expires.max(2) / 2));
        let mut reregister = tokio::time::interval_at(tokio::time::Instant::now() + refresh, refresh);
        let mut sweep = tokio::time::interval(SWEEP);
        let mut retention = tokio::time::interval(RETENTION_SWEEP);
        loop {
            tokio::select! {
                _ = &mut stopped => break,
                _ = retention.tick(), if self.config.caps.retention.is_some() => self.purge_old().await,
                _ = sweep.tick() => {
                    // A call that never sees a BYE ends with its recording time.
                    let ended: Vec<String> = self.calls.iter().filter(|(_, c)| c.capture.is_finished()).map(|(id, _)| id.clone()).collect();
                    for id in ended {
                        self.finish(&id).await;
                    }
                }
                _ = reregister.tick(), if self.config.registrar.is_some() => {
                    if let Err(e) = self.register() {
                        tracing::warn!(error = %e, "voicemail re-REGISTER");
                    }
                }
                event = events.recv() => match event {
                    Some(Event::Request { key, request, source }) => {
                        if let Err(e) = self.on_request(key, *request, source).await {
                            tracing::warn!(error = %e, "voicemail request");
                        }
                    }
                    Some(_) => {}
                    None => break,
                },
            }
        }
        let ids: Vec<String> = self.calls.keys().cloned().collect();
        for id in ids {
            self.finish(&id).await;
        }
    }

    /// Deletes the messages past [`Caps::retention`].
    async fn purge_old(&self) {
        let Some(keep) = self.config.caps.retention else { return };
        let cutoff = now_ms().saturating_sub(u64::try_from(keep.as_millis()).unwrap_or(u64::MAX));
        match self.store.purge_received_before(cutoff).await {
            Ok(0) => {}
            Ok(n) => {
                self.metrics.messages_purged.fetch_add(n as u64, Ordering::Relaxed);
                tracing::info!(deleted = n, retention_s = keep.as_secs(), "voicemail messages past their retention deleted");
            }
            Err(e) => {
                self.metrics.store_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "voicemail retention purge failed");
            }
        }
    }

    fn via(&self) -> String {
        format!("SIP/2.0/UDP {};branch=z9hG4bK{};rport", self.endpoint.local_addr(), token())
    }

    fn contact(&self) -> String {
        let user = self.config.aor.trim_start_matches("sip:").split('@').next().unwrap_or("vm").to_owned();
        format!("<sip:{user}@{}>", self.endpoint.local_addr())
    }

    fn register(&mut self) -> Result<TransactionKey, VoicemailError> {
        let to = self.config.registrar.ok_or_else(|| VoicemailError::Config("no registrar".into()))?;
        let uri = Uri::parse(Bytes::from(format!("sip:{}", self.config.domain))).map_err(|e| VoicemailError::Config(e.to_string()))?;
        let request = RequestBuilder::new(Method::Register, uri)
            .header(HeaderName::Via, self.via())?
            .max_forwards(70)
            .header(HeaderName::From, format!("<{}>;tag={}", self.config.aor, token()))?
            .header(HeaderName::To, format!("<{}>", self.config.aor))?
            .header(HeaderName::CallId, token())?
            .cseq(1, &Method::Register)?
            .header(HeaderName::Contact, self.contact())?
            .header(HeaderName::Expires, self.config.expires.to_string())?
            .build();
        let key = TransactionKey::from_sent_request(&request).ok_or_else(|| VoicemailError::Config("REGISTER without Via".into()))?;
        self.endpoint.send(Command::Request { request, to })?;
        Ok(key)
    }

    fn respond(&self, key: &TransactionKey, request: &Request, code: u16, reason: &str, to: Option<Bytes>, body: Option<&str>) -> Result<(), VoicemailError> {
        let status = StatusCode::new(code).ok_or_else(|| VoicemailError::Config(format!("status {code}")))?;
        if request.method == Method::Invite && code >= 200 {
            self.metrics.invite_answered(code);
        }
        let mut b = ResponseBuilder::to_request(request, status, reason.to_owned())?;
        if let Some(to) = to {
            b = b.set_header(&HeaderName::To, to)?;
        }
        if request.method == Method::Invite && status.is_success() {
            b = b.header(HeaderName::Contact, self.contact())?;
            // RFC 3261 §12.1.1: the dialog-creating response copies the Record-Route set.
            for rr in request.headers.get_all(&HeaderName::RecordRoute) {
                b = b.header(HeaderName::RecordRoute, rr.value().into_owned())?;
            }
        }
        if let Some(sdp) = body {
            b = b.header(HeaderName::ContentType, "application/sdp")?.body(sdp.to_owned());
        }
        let response = b.build();
        let command = if request.method == Method::Invite && status.is_success() {
            Command::Respond2xx { key: key.clone(), response }
        } else {
            Command::Respond { key: key.clone(), response }
        };
        self.endpoint.send(command)?;
        Ok(())
    }

    async fn on_request(&mut self, key: TransactionKey, request: Request, source: SocketAddr) -> Result<(), VoicemailError> {
        let call_id = header_text(&request, &HeaderName::CallId).unwrap_or_default();
        match request.method {
            // Diverted calls come from the S-CSCF: an INVITE from elsewhere bypasses the
            // diversion and asserts a caller of its choice.
            Method::Invite if self.config.registrar.is_some_and(|r| r.ip() != source.ip()) => {
                tracing::info!(%call_id, %source, "voicemail refused an INVITE not from the registrar's host");
                self.respond(&key, &request, 403, "Forbidden", None, None)
            }
            Method::Invite if !self.calls.contains_key(&call_id) => self.deposit(key, request, call_id).await,
            // A re-INVITE would re-key the caller's stream: not supported (the stored
            // TRANSFER_INIT keys the whole message).
            Method::Invite => self.respond(&key, &request, 488, "Not Acceptable Here", None, None),
            Method::Bye => {
                // RFC 3261 §12.2.2: the request's dialog (Call-ID, To tag = ours, From tag =
                // the caller's) or 481, so that someone who only learnt the Call-ID cannot cut
                // a message short; then a CSeq above the last one, or 500 (out of order).
                let verdict = match self.calls.get_mut(&call_id) {
                    Some(c) if DialogId::of_received_request(&request).as_ref() == Some(c.dialog.id()) => c.dialog.receive_request(&request).map_err(|_| (500, "Server Internal Error")),
                    _ => Err((481, "Call/Transaction Does Not Exist")),
                };
                match verdict {
                    Ok(()) => {
                        // The message is on disk before the caller learns the call ended.
                        self.finish(&call_id).await;
                        self.respond(&key, &request, 200, "OK", None, None)
                    }
                    Err((code, reason)) => {
                        tracing::info!(%call_id, code, "voicemail refused a BYE outside the call's dialog or order");
                        self.respond(&key, &request, code, reason, None, None)
                    }
                }
            }
            Method::Cancel | Method::Options => self.respond(&key, &request, 200, "OK", None, None),
            _ => self.respond(&key, &request, 501, "Not Implemented", None, None),
        }
    }

    /// Answers and starts recording a diverted MIKEY-TICKET call.
    async fn deposit(&mut self, key: TransactionKey, request: Request, call_id: String) -> Result<(), VoicemailError> {
        if self.calls.len() >= self.config.caps.max_calls {
            tracing::info!(%call_id, calls = self.calls.len(), "voicemail busy: refused the INVITE");
            return self.respond(&key, &request, 486, "Busy Here", None, None);
        }
        let refuse = |code: u16, why: &str| (code, why.to_owned());
        let prepared = (|| {
            let offer = mediasec_sip::body::sdp(&Message::Request(request.clone())).map_err(|e| refuse(488, &e.to_string()))?.ok_or_else(|| refuse(488, "INVITE without an offer"))?;
            let ti = ticket::mikey_data(&offer).map_err(|e| refuse(488, &e.to_string()))?.ok_or_else(|| refuse(488, "voicemail stores MIKEY-TICKET calls only (no a=key-mgmt:mikey)"))?;
            let to = header_text(&request, &HeaderName::To).ok_or_else(|| refuse(400, "no To"))?;
            let mailbox = mailbox_of(&to).map_err(|e| refuse(404, &e.to_string()))?;
            if !mailbox.ends_with(&format!("@{}", self.config.domain)) {
                return Err(refuse(404, "no mailbox of this domain"));
            }
            let asserted = HeaderName::parse(&Bytes::from_static(b"P-Asserted-Identity"));
            let caller = header_text(&request, &asserted).or_else(|| header_text(&request, &HeaderName::From)).map(|v| uri_of(&v)).unwrap_or_default();
            Ok((offer, ti, mailbox, caller))
        })();
        let (offer, ti, mailbox, caller) = match prepared {
            Ok(p) => p,
            Err((code, why)) => {
                tracing::info!(%call_id, code, %why, "voicemail refused the INVITE");
                let reason = if code == 404 { "Not Found" } else if code == 400 { "Bad Request" } else { "Not Acceptable Here" };
                return self.respond(&key, &request, code, reason, None, None);
            }
        };
        // A full mailbox is refused before anything is written; the place itself is taken
        // by `insert_within` below, which counts again after writing.
        if let Some(max) = self.config.caps.max_messages {
            match self.store.count(&mailbox, max).await {
                Ok(held) if held >= max => return self.mailbox_full(&key, &request, &call_id, &mailbox),
                Ok(_) => {}
                Err(e) => {
                    self.metrics.store_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%call_id, error = %e, "voicemail store failed: refused the INVITE");
                    return self.respond(&key, &request, 500, "Server Internal Error", None, None);
                }
            }
        }
        let dialog = match Dialog::uas(&request, &token()) {
            Ok(d) => d,
            Err(e) => {
                tracing::info!(%call_id, error = %e, "voicemail refused an INVITE that makes no dialog");
                return self.respond(&key, &request, 400, "Bad Request", None, None);
            }
        };
        let socket = UdpSocket::bind(SocketAddr::new(self.config.rtp_ip, 0)).await?;
        let answer = match ticket::deferred_answer(&offer, socket.local_addr()?, 1) {
            Ok(a) => a,
            Err(e) => {
                tracing::info!(%call_id, error = %e, "voicemail refused the offer");
                return self.respond(&key, &request, 488, "Not Acceptable Here", None, None);
            }
        };
        let mut record = Record { id: 0, mailbox, caller, received_ms: now_ms(), offer: offer.to_string(), transfer_init: ti, packets: Vec::new(), dropped: 0 };
        let inserted = match self.config.caps.max_messages {
            Some(max) => self.store.insert_within(record.clone(), max).await,
            None => self.store.insert(record.clone()).await.map(Some),
        };
        record.id = match inserted {
            Ok(Some(id)) => id,
            // Calls recorded now hold their places (their records are written at the answer),
            // here or on another server sharing the store: the last place went to one of them.
            Ok(None) => return self.mailbox_full(&key, &request, &call_id, &record.mailbox),
            // The caller gets a final answer, not a transaction left to time out.
            Err(e) => {
                self.metrics.store_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%call_id, error = %e, "voicemail store failed: refused the INVITE");
                return self.respond(&key, &request, 500, "Server Internal Error", None, None);
            }
        };
        tracing::info!(%call_id, id = record.id, mailbox = %record.mailbox, caller = %record.caller, "deferred delivery: storing the encrypted call");
        let recording = Arc::new(Mutex::new(Recording::default()));
        let capture = tokio::spawn(capture(socket, Arc::clone(&recording), self.config.caps));
        let to = dialog.local_header().clone();
        self.calls.insert(call_id, Call { record, recording, capture, dialog });
        self.metrics.calls_recording.store(self.calls.len() as u64, Ordering::Relaxed);
        self.respond(&key, &request, 200, "OK", Some(to), Some(&answer))
    }

    /// Refuses an INVITE for a mailbox holding [`Caps::max_messages`] (calls being recorded
    /// for it included): 480, reason "Mailbox Full" (RFC 3261 §21.4.18).
    fn mailbox_full(&self, key: &TransactionKey, request: &Request, call_id: &str, mailbox: &str) -> Result<(), VoicemailError> {
        tracing::info!(%call_id, %mailbox, "voicemail: mailbox full, refused the INVITE");
        self.respond(key, request, 480, "Mailbox Full", None, None)
    }

    /// Stops recording `call_id` and writes its record; a call that brought no media leaves
    /// no message (its record, written at the answer, is deleted: its place is free again).
    async fn finish(&mut self, call_id: &str) {
        let Some(mut call) = self.calls.remove(call_id) else { return };
        self.metrics.calls_recording.store(self.calls.len() as u64, Ordering::Relaxed);
        call.capture.abort();
        let _ = (&mut call.capture).await;
        if let Ok(mut r) = call.recording.lock() {
            call.record.packets = std::mem::take(&mut r.packets);
            call.record.dropped = r.dropped;
        }
        let (id, n, dropped) = (call.record.id, call.record.packets.len(), call.record.dropped);
        self.metrics.packets_dropped.fetch_add(dropped, Ordering::Relaxed);
        if n == 0 {
            match self.store.delete(id, &call.record.mailbox).await {
                Ok(_) => tracing::info!(id, dropped, "voicemail call ended without media: no message kept"),
                Err(e) => {
                    self.metrics.store_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(id, error = %e, "voicemail call without media: its record not deleted");
                }
            }
            return;
        }
        match self.store.update(call.record).await {
            Ok(true) => {
                self.metrics.messages_stored.fetch_add(1, Ordering::Relaxed);
                tracing::info!(id, packets = n, dropped, "voicemail message stored");
            }
            Ok(false) => tracing::info!(id, "voicemail message deleted by its owner during the call: not stored"),
            Err(e) => {
                self.metrics.store_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(id, error = %e, "voicemail message not stored");
            }
        }
    }
}

/// Keeps every datagram reaching the media port from the first source that sent one (the
/// caller: RTP latching, so others who learn the port cannot fill the caps), verbatim with
/// its arrival time, within `caps`; returns (closing the port) when `caps.max_duration` is over.
async fn capture(socket: UdpSocket, recording: Arc<Mutex<Recording>>, caps: Caps) {
    let start = Instant::now();
    let end = tokio::time::Instant::now() + caps.max_duration;
    let mut buf = vec![0u8; MAX_PACKET];
    let mut caller = None;
    loop {
        let Ok(Ok((n, from))) = tokio::time::timeout_at(end, socket.recv_from(&mut buf)).await else { return };
        let at = start.elapsed();
        let Ok(mut r) = recording.lock() else { return };
        let bytes = buf.get(..n).unwrap_or_default();
        if *caller.get_or_insert(from) != from || r.packets.len() >= caps.max_packets || r.bytes.saturating_add(n) > caps.max_bytes {
            r.dropped += 1;
            continue;
        }
        r.bytes += n;
        r.packets.push(Packet { at_ms: u64::try_from(at.as_millis()).unwrap_or(u64::MAX), bytes: bytes.to_vec() });
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    const OFFER: &str = "v=0\r\no=alice 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/SAVP 0\r\n\
a=rtpmap:0 PCMU/8000\r\na=key-mgmt:mikey AQIDBA==\r\na=rtcp-mux\r\n";

    struct Dir(std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Sends an INVITE for carol with `call_id` and returns the final status and, on 200, the
    /// media port of the answer.
    async fn invite(ue: &UdpSocket, vm: SocketAddr, call_id: &str) -> (u16, Option<u16>) {
        let (code, port, _) = invite_answer(ue, vm, call_id).await;
        (code, port)
    }

    /// The INVITE of a call from alice for `user`@a.example with `call_id`.
    fn invite_text(ue: &UdpSocket, vm: SocketAddr, call_id: &str, user: &str) -> String {
        let me = ue.local_addr().unwrap();
        format!(
            "INVITE sip:vm@{vm} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK{call_id}\r\nMax-Forwards: 70\r\n\
From: <sip:alice@a.example>;tag=a\r\nTo: <sip:{user}@a.example>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\n\
Contact: <sip:alice@{me}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{OFFER}",
            OFFER.len()
        )
    }

    /// As [`invite`], with the tag of the answer's `To` (the server's dialog tag).
    async fn invite_answer(ue: &UdpSocket, vm: SocketAddr, call_id: &str) -> (u16, Option<u16>, Option<String>) {
        let text = invite_text(ue, vm, call_id, "carol");
        let (code, r) = final_response(ue, vm, &text, &format!("Call-ID: {call_id}\r\n")).await;
        let port = r.split("m=audio ").nth(1).and_then(|s| s.split(' ').next()).and_then(|p| p.parse().ok());
        let tag = r.lines().find(|l| l.starts_with("To:")).and_then(|l| l.split(";tag=").nth(1)).map(|t| t.trim().to_owned());
        (code, port, tag)
    }

    /// Sends `request` to `vm` and returns the first final response containing `marker`
    /// (status, text).
    async fn final_response(ue: &UdpSocket, vm: SocketAddr, request: &str, marker: &str) -> (u16, String) {
        ue.send_to(request.as_bytes(), vm).await.unwrap();
        let mut buf = vec![0u8; 4096];
        loop {
            let (n, _) = tokio::time::timeout(Duration::from_secs(5), ue.recv_from(&mut buf)).await.expect("an answer").unwrap();
            let r = String::from_utf8_lossy(&buf[..n]).into_owned();
            let code: u16 = r.get(8..11).and_then(|c| c.parse().ok()).unwrap_or(0);
            if code >= 200 && r.contains(marker) {
                return (code, r);
            }
        }
    }

    /// A remote party cannot make the server hold unbounded state: calls beyond
    /// `Caps::max_calls` are refused (486), and a call that never ends (no BYE) is closed and
    /// written to the store once `Caps::max_duration` is over, freeing its slot.
    /// A fresh store in a directory named after `dir`.
    fn store(dir: &str) -> (Dir, Store) {
        let dir = Dir(std::env::temp_dir().join(format!("mediasec-vm-{dir}-{}", std::process::id())));
        std::fs::create_dir_all(&dir.0).unwrap();
        let store = Store::open(&dir.0.join("vm.redb")).unwrap();
        (dir, store)
    }

    fn config(caps: Caps, registrar: Option<SocketAddr>) -> DepositConfig {
        DepositConfig {
            aor: "sip:vm@a.example".into(),
            domain: "a.example".into(),
            sip_bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            rtp_ip: [127, 0, 0, 1].into(),
            registrar,
            expires: 600,
            caps,
            timers: Timers::default(),
        }
    }

    /// A deposit server with `caps` over a fresh store (no registrar).
    async fn server(dir: &str, caps: Caps) -> (Dir, Store, Deposit) {
        let (dir, store) = store(dir);
        let vm = Deposit::start(config(caps, None), store.clone()).await.unwrap();
        (dir, store, vm)
    }

    #[tokio::test]
    async fn concurrent_calls_are_capped_and_calls_without_bye_end_at_max_duration() {
        let caps = Caps { max_calls: 2, max_duration: Duration::from_millis(300), ..Caps::default() };
        let (_dir, store, mut vm) = server("deposit-caps", caps).await;
        let ue = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let (code, port) = invite(&ue, vm.sip_addr(), "c1").await;
        assert_eq!(code, 200);
        ue.send_to(&[0x80; 20], SocketAddr::from(([127, 0, 0, 1], port.expect("media port")))).await.unwrap();
        assert_eq!(invite(&ue, vm.sip_addr(), "c2").await.0, 200);
        assert_eq!(invite(&ue, vm.sip_addr(), "c3").await.0, 486, "a third call at once is refused");
        // No BYE ever comes: after max_duration the calls end and are stored.
        tokio::time::sleep(Duration::from_millis(1800)).await;
        let first = store.get(1).await.unwrap().expect("message 1");
        assert_eq!(first.packets.len(), 1, "the call without BYE was written when it ended");
        assert_eq!(invite(&ue, vm.sip_addr(), "c4").await.0, 200, "the ended calls freed their slots");
        vm.shutdown().await;
    }

    /// A mailbox holding `Caps::max_messages` takes no further call (480 "Mailbox Full") until
    /// its owner deletes one; other mailboxes are not affected.
    #[tokio::test]
    async fn a_full_mailbox_takes_no_further_call() {
        let caps = Caps { max_messages: Some(2), ..Caps::default() };
        let (_dir, store, mut vm) = server("deposit-quota", caps).await;
        let ue = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        assert_eq!(call_with_media(&ue, vm.sip_addr(), "q1").await, 200);
        assert_eq!(call_with_media(&ue, vm.sip_addr(), "q2").await, 200);
        let (code, text) = final_response(&ue, vm.sip_addr(), &invite_text(&ue, vm.sip_addr(), "q3", "carol"), "Call-ID: q3\r\n").await;
        assert_eq!(code, 480, "{text}");
        assert!(text.starts_with("SIP/2.0 480 Mailbox Full\r\n"), "{text}");
        let (code, text) = final_response(&ue, vm.sip_addr(), &invite_text(&ue, vm.sip_addr(), "q4", "dan"), "Call-ID: q4\r\n").await;
        assert_eq!(code, 200, "dan's mailbox is empty");
        let port = text.split("m=audio ").nth(1).and_then(|s| s.split(' ').next()).and_then(|p| p.parse().ok()).expect("media port");
        ue.send_to(&[0x80; 20], SocketAddr::from(([127, 0, 0, 1], port))).await.unwrap();
        let held = store.summaries_of(&["sip:carol@a.example".into()]).await.unwrap();
        assert_eq!(held.len(), 2);
        assert!(store.delete(held[0].id, "sip:carol@a.example").await.unwrap());
        assert_eq!(call_with_media(&ue, vm.sip_addr(), "q5").await, 200, "room again after a delete");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let metrics = vm.metrics().render();
        for line in ["mediasec_voicemail_invites_total{status=\"200\"} 4\n", "mediasec_voicemail_invites_total{status=\"480\"} 1\n", "mediasec_voicemail_calls_recording 4\n"] {
            assert!(metrics.contains(line), "{line} in {metrics}");
        }
        vm.shutdown().await;
        let metrics = vm.metrics().render();
        assert!(metrics.contains("mediasec_voicemail_messages_stored_total 3\n"), "the calls were written at shutdown, but the one deleted while recording: {metrics}");
    }

    /// A call for carol that sends one media packet when answered; its final status.
    async fn call_with_media(ue: &UdpSocket, vm: SocketAddr, call_id: &str) -> u16 {
        let (code, port) = invite(ue, vm, call_id).await;
        if let Some(port) = port {
            ue.send_to(&[0x80; 20], SocketAddr::from(([127, 0, 0, 1], port))).await.unwrap();
        }
        code
    }

    /// A message of `mailbox` already stored.
    fn stored(mailbox: &str) -> Record {
        Record { id: 0, mailbox: mailbox.into(), caller: "sip:alice@a.example".into(), received_ms: now_ms(), offer: OFFER.into(), transfer_init: vec![1; 8], packets: vec![Packet { at_ms: 0, bytes: vec![0x80; 20] }], dropped: 0 }
    }

    /// Calls being recorded hold their mailbox's places: with `max_messages` = 3 and 2 messages
    /// stored, two calls at once → one is recorded, the other refused 480 (and counted so);
    /// the refused call took no place, and a call that ends without media frees its own.
    #[tokio::test]
    async fn concurrent_calls_never_take_a_mailbox_past_its_quota() {
        let carol = "sip:carol@a.example";
        let (_dir, store) = store("deposit-quota-race");
        for _ in 0..2 {
            store.insert(stored(carol)).await.unwrap();
        }
        let mut vm = Deposit::start(config(Caps { max_messages: Some(3), ..Caps::default() }, None), store.clone()).await.unwrap();
        let (ue1, ue2) = (UdpSocket::bind("127.0.0.1:0").await.unwrap(), UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let ((c1, _, t1), (c2, _, t2)) = tokio::join!(invite_answer(&ue1, vm.sip_addr(), "r1"), invite_answer(&ue2, vm.sip_addr(), "r2"));
        let mut codes = [c1, c2];
        codes.sort_unstable();
        assert_eq!(codes, [200, 480], "one call takes the last place");
        assert_eq!(store.count(carol, usize::MAX).await.unwrap(), 3, "the call being recorded holds it");
        let (ue, call, tag) = if c1 == 200 { (&ue1, "r1", t1) } else { (&ue2, "r2", t2) };
        assert_eq!(bye(ue, vm.sip_addr(), call, "a", tag.as_deref(), 2).await, 200);
        assert_eq!(store.count(carol, usize::MAX).await.unwrap(), 2, "a call without media leaves no message");
        let (code, port, tag) = invite_answer(&ue1, vm.sip_addr(), "r3").await;
        assert_eq!(code, 200, "its place is free again");
        ue1.send_to(&[0x80; 20], SocketAddr::from(([127, 0, 0, 1], port.expect("media port")))).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(bye(&ue1, vm.sip_addr(), "r3", "a", tag.as_deref(), 3).await, 200);
        assert_eq!(invite(&ue2, vm.sip_addr(), "r4").await.0, 480, "three messages stored: full");
        assert_eq!(store.count(carol, usize::MAX).await.unwrap(), 3);
        let metrics = vm.metrics().render();
        for line in ["mediasec_voicemail_invites_total{status=\"200\"} 2\n", "mediasec_voicemail_invites_total{status=\"480\"} 2\n", "mediasec_voicemail_messages_stored_total 1\n"] {
            assert!(metrics.contains(line), "{line} in {metrics}");
        }
        vm.shutdown().await;
    }

    /// Two servers sharing one store (replicas on one PostgreSQL; here one redb store), a call
    /// to each at once for a mailbox's last place, again and again: never both recorded, the
    /// mailbox never past its quota.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn servers_sharing_a_store_never_take_a_mailbox_past_its_quota() {
        let carol = "sip:carol@a.example";
        let (_dir, store) = store("deposit-quota-replicas");
        store.insert(stored(carol)).await.unwrap();
        let caps = Caps { max_messages: Some(2), ..Caps::default() };
        let mut a = Deposit::start(config(caps, None), store.clone()).await.unwrap();
        let mut b = Deposit::start(config(caps, None), store.clone()).await.unwrap();
        let (ue1, ue2) = (UdpSocket::bind("127.0.0.1:0").await.unwrap(), UdpSocket::bind("127.0.0.1:0").await.unwrap());
        for round in 0..10 {
            let (x, y) = (format!("x{round}"), format!("y{round}"));
            let ((c1, _, t1), (c2, _, t2)) = tokio::join!(invite_answer(&ue1, a.sip_addr(), &x), invite_answer(&ue2, b.sip_addr(), &y));
            assert!([c1, c2].iter().all(|c| [200, 480].contains(c)), "{c1} {c2}");
            assert!(c1 != 200 || c2 != 200, "round {round}: both servers gave the last place");
            assert!(store.count(carol, usize::MAX).await.unwrap() <= 2);
            // The recorded call (if any) ends without media: the place is free for the next round.
            if c1 == 200 {
                assert_eq!(bye(&ue1, a.sip_addr(), &x, "a", t1.as_deref(), 2).await, 200);
            }
            if c2 == 200 {
                assert_eq!(bye(&ue2, b.sip_addr(), &y, "a", t2.as_deref(), 2).await, 200);
            }
            assert_eq!(store.count(carol, usize::MAX).await.unwrap(), 1, "round {round}");
        }
        a.shutdown().await;
        b.shutdown().await;
    }

    /// Messages past `Caps::retention` are deleted when the server starts (and every
    /// [`RETENTION_SWEEP`]), fetched or not; newer ones stay; `None` keeps everything.
    #[tokio::test]
    async fn messages_past_their_retention_are_deleted() {
        let (_dir, store) = store("deposit-retention");
        let old = Record { id: 0, mailbox: "sip:carol@a.example".into(), caller: "sip:alice@a.example".into(), received_ms: 1, offer: OFFER.into(), transfer_init: vec![1; 8], packets: Vec::new(), dropped: 0 };
        let old_id = store.insert(old.clone()).await.unwrap();
        let new_id = store.insert(Record { received_ms: now_ms(), ..old.clone() }).await.unwrap();
        let mut keep_all = Deposit::start(config(Caps { retention: None, ..Caps::default() }, None), store.clone()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        keep_all.shutdown().await;
        assert!(store.get(old_id).await.unwrap().is_some(), "no retention: kept");
        let mut vm = Deposit::start(config(Caps { retention: Some(Duration::from_secs(86_400)), ..Caps::default() }, None), store.clone()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        vm.shutdown().await;
        assert!(store.get(old_id).await.unwrap().is_none(), "received in 1970: past a day's retention");
        assert!(store.get(new_id).await.unwrap().is_some(), "received now: kept");
    }

    /// The media port latches on the first source that sends to it (the caller): datagrams
    /// from anyone else who learnt the port cannot fill the message's caps with junk.
    #[tokio::test]
    async fn media_from_another_source_than_the_first_is_not_stored() {
        let (_dir, store, mut vm) = server("deposit-latch", Caps::default()).await;
        let ue = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let (code, port) = invite(&ue, vm.sip_addr(), "latch").await;
        assert_eq!(code, 200);
        let media = SocketAddr::from(([127, 0, 0, 1], port.expect("media port")));
        let intruder = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        ue.send_to(&[0x80; 20], media).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        intruder.send_to(&[0x81; 20], media).await.unwrap();
        ue.send_to(&[0x82; 20], media).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        vm.shutdown().await;
        let r = store.get(1).await.unwrap().expect("message 1");
        assert_eq!(r.packets.iter().map(|p| p.bytes[0]).collect::<Vec<_>>(), [0x80, 0x82]);
        assert_eq!(r.dropped, 1);
    }

    /// Sends a BYE in `call_id` with the given tags and CSeq; returns the final status.
    async fn bye(ue: &UdpSocket, vm: SocketAddr, call_id: &str, from_tag: &str, to_tag: Option<&str>, cseq: u32) -> u16 {
        let me = ue.local_addr().unwrap();
        let to_tag = to_tag.map(|t| format!(";tag={t}")).unwrap_or_default();
        let text = format!(
            "BYE sip:vm@{vm} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKbye{cseq}{from_tag}{call_id}\r\nMax-Forwards: 70\r\n\
From: <sip:alice@a.example>;tag={from_tag}\r\nTo: <sip:carol@a.example>{to_tag}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} BYE\r\n\
Content-Length: 0\r\n\r\n"
        );
        final_response(ue, vm, &text, &format!("CSeq: {cseq} BYE")).await.0
    }

    /// RFC 3261 §12.2.2: only a BYE of the call's dialog (Call-ID and both tags) with a higher
    /// CSeq ends the recording; one that only knows the Call-ID gets 481, one out of order 500,
    /// and the message goes on being recorded.
    #[tokio::test]
    async fn only_a_bye_of_the_calls_dialog_ends_it() {
        let (_dir, store, mut vm) = server("deposit-bye", Caps::default()).await;
        let ue = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let (code, port, tag) = invite_answer(&ue, vm.sip_addr(), "bye").await;
        assert_eq!(code, 200);
        let (media, tag) = (SocketAddr::from(([127, 0, 0, 1], port.expect("media port"))), tag.expect("a To tag in the 200"));
        ue.send_to(&[0x80; 20], media).await.unwrap();
        assert_eq!(bye(&ue, vm.sip_addr(), "bye", "a", None, 2).await, 481, "no To tag");
        assert_eq!(bye(&ue, vm.sip_addr(), "bye", "a", Some("not-ours"), 3).await, 481, "another To tag");
        assert_eq!(bye(&ue, vm.sip_addr(), "bye", "b", Some(&tag), 4).await, 481, "another From tag");
        assert_eq!(bye(&ue, vm.sip_addr(), "bye", "a", Some(&tag), 1).await, 500, "CSeq not above the INVITE's: out of order");
        tokio::time::sleep(Duration::from_millis(50)).await;
        ue.send_to(&[0x82; 20], media).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(bye(&ue, vm.sip_addr(), "bye", "a", Some(&tag), 5).await, 200, "the call's own BYE");
        let r = store.get(1).await.unwrap().expect("message 1");
        assert_eq!(r.packets.iter().map(|p| p.bytes[0]).collect::<Vec<_>>(), [0x80, 0x82], "recording went on until the dialog's BYE");
        assert_eq!(bye(&ue, vm.sip_addr(), "bye", "a", Some(&tag), 6).await, 481, "the call is over");
        vm.shutdown().await;
    }

    /// With a registrar (the S-CSCF), INVITEs come from it: one sent straight to the server
    /// from elsewhere (bypassing the diversion, with a `P-Asserted-Identity` of its choice)
    /// is refused 403.
    #[tokio::test]
    async fn invites_from_another_host_than_the_registrar_are_refused() {
        let (_dir, store) = store("deposit-source");
        let scscf = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let config = config(Caps::default(), Some(scscf.local_addr().unwrap()));
        // The S-CSCF answers the REGISTER 200.
        let registrar = async {
            let mut buf = vec![0u8; 4096];
            let (n, from) = scscf.recv_from(&mut buf).await.unwrap();
            let register = String::from_utf8_lossy(&buf[..n]).into_owned();
            let copied: String = register.lines().filter(|l| ["Via:", "From:", "To:", "Call-ID:", "CSeq:"].iter().any(|h| l.starts_with(h))).map(|l| format!("{l}\r\n")).collect();
            scscf.send_to(format!("SIP/2.0 200 OK\r\n{copied}Content-Length: 0\r\n\r\n").as_bytes(), from).await.unwrap();
        };
        let (vm, ()) = tokio::join!(Deposit::start(config, store), registrar);
        let mut vm = vm.unwrap();
        let elsewhere = UdpSocket::bind("127.0.0.2:0").await.unwrap();
        assert_eq!(invite(&elsewhere, vm.sip_addr(), "direct").await.0, 403);
        assert_eq!(invite(&scscf, vm.sip_addr(), "diverted").await.0, 200);
        vm.shutdown().await;
    }
}
