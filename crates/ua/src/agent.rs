//! The UE as a tokio service: one task owns the SIP [`Endpoint`], the calls and their media,
//! and is driven by the API ([`Ue`]) and by SIP events.
//!
//! Flows (RFC 3261 UAC/UAS §8, §12–§15; TS 24.229 as far as a loopback lab needs):
//! - REGISTER to the outbound proxy (the P-CSCF) with `Security-Client: sdes-srtp;mediasec`
//!   when the local policy allows SDES: the media-security capability indication of TS 24.229
//!   §5.1.1.2 / TS 33.328 §7.1 (RFC 3329 syntax with the `mediasec` parameter). A P-CSCF that
//!   supports it answers `Security-Server: sdes-srtp;mediasec`.
//! - Calling: INVITE with our offer through the outbound proxy. A 18x with SDP starts early
//!   media as soon as its keys are known; the first 2xx confirms the dialog (ACK) and starts
//!   or keeps media; every further 2xx (another fork, RFC 6026) is ACKed and ended with BYE
//!   (§13.2.2.4) — when it carries an offer (our INVITE had none), its ACK carries an answer
//!   refusing every stream, made without KMS work. A 2xx whose answer breaks the policy
//!   (downgrade) is ACKed and ended with BYE.
//! - Answering: 180 at once; with early media a 183 carrying the answer and media; the 200
//!   with the same answer after the configured delay (retransmitted until ACK); CANCEL before
//!   the 200 gives 200 (CANCEL) + 487 (INVITE); an offer the policy refuses gives 488.
//! - Reliable provisional responses (RFC 3262): our INVITEs carry `Supported: 100rel`; a
//!   reliable 18x (`Require: 100rel`, `RSeq`) creates the early dialog and gets a PRACK with
//!   `RAck` (§4: a retransmission of the same `RSeq` is not PRACKed again — the PRACK's own
//!   client transaction retransmits until its 200 — and one out of order is discarded
//!   unprocessed); UPDATE works in that early dialog. Answering an INVITE that supports
//!   (with early media) or requires 100rel, the 183 (or, without early media, the 180) carries
//!   the answer reliably instead of the unreliable 180/183: `Require: 100rel`, `RSeq`,
//!   retransmitted by the endpoint until the PRACK (200), 504 after 64·T1 without one; the 200
//!   waits for the PRACK and carries no SDP (the offer/answer exchange is complete). §5 offer
//!   in a reliable 18x: [`Ue::call_without_offer`] answers it in the PRACK (one our policy
//!   refuses gets a refusal, every stream at port 0, and the INVITE is then CANCELled, RFC 3261
//!   §9.1: its 487 — or a 2xx crossing the CANCEL, ACKed and ended with BYE — fails the call
//!   488 with the refusal's reason, and so does no final response within 64·T1 of the CANCEL);
//!   an offerless INVITE with 100rel gets our offer in the reliable 18x and its answer from the
//!   PRACK.
//! - Delayed offer without 100rel (RFC 3261 §13.2.1, §13.2.2.4, §13.3.1.4): an offerless
//!   INVITE answered unreliably gets our offer in the 200 and its answer from the ACK (media
//!   starts then; an ACK without a usable answer ends the call with BYE); calling without an
//!   offer, an offer in the 2xx is answered in the ACK (one we cannot accept gets a valid
//!   answer refusing every stream, then BYE). Offerless re-INVITEs work the same way.
//! - Delayed offer under a MIKEY policy (MIKEY-TICKET, high-security, MIKEY-SAKKE), every
//!   variant above: whoever sends the SDP offer is the MIKEY Initiator (RFC 4567 §3), so the
//!   roles swap with the offer. Answering an offerless INVITE we initiate, keyed to the caller
//!   (`P-Asserted-Identity`, else `From`): MIKEY-TICKET requests a ticket for the caller from
//!   our KMS and offers TRANSFER_INIT, high-security offers a signed DH_INIT, MIKEY-SAKKE an
//!   I_MESSAGE, in the 200 or the reliable 18x; the ACK / PRACK must bring the caller's MIKEY
//!   response (TRANSFER_RESP, DH_RESP; none for MIKEY-SAKKE), verified as any offerer
//!   verifies one (an ACK without one ends the call with BYE, 488 and the reason recorded).
//!   An anonymous caller nothing identifies gets 433 Anonymity Disallowed (RFC 5079): no
//!   MIKEY message can be addressed to it. Calling without an offer, the callee's offer must
//!   carry `a=key-mgmt:mikey` (else a downgrade: the ACK refuses every stream, then BYE) whose
//!   authenticated Initiator is the party called; we answer it as responder (Ticket Resolve at
//!   our KMS, DH or SAKKE verification). An offerless re-INVITE, either way, gets a fresh
//!   MIKEY exchange initiated by its receiver in the 2xx and re-keys like any re-INVITE. A
//!   MIKEY policy never accepts an SDES or plain offer or answer on any of these paths.
//! - Re-INVITE in either direction with a fresh offer re-keys the media ([`crate::media`]).
//! - BYE in either direction ends the call.
//! - KMS work (Ticket Request / Resolve, key provisioning) runs off the task as jobs polled
//!   by its loop ([`Core::start`]): the step waiting for it resumes from the job's result
//!   ([`Step`]), other calls' signalling goes on meanwhile; a call that ends, fails or is
//!   cancelled first abandons its job (docs/sip.md §2 "KMS work off the UE task").
//! - Over TLS to the P-CSCF ([`UeConfig::tls`], RFC 3261 §26.2; TS 33.328 §4.1.2.1: SDES is only
//!   as safe as the signalling that carries the keys): every request we send has a `TLS` top
//!   `Via` (the endpoint then sends it over TLS only, never in clear), initial requests carry
//!   the preloaded `Route: <sip:P-CSCF;transport=tls;lr>` (the P-CSCF is verified as that
//!   address, RFC 5922 §7), and our `Contact` says `;transport=tls`, so requests towards us come
//!   over TLS too — on the connection we opened, which the P-CSCF reuses.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use mediasec_sdp::{SdesPolicy, Sdp};
use mediasec_sip::core::{HeaderName, Message, Method, Request, RequestBuilder, Response, ResponseBuilder, StatusCode, Timers, TransactionKey, Uri};
use mediasec_sip::dialog::{Dialog, DialogId};
use mediasec_sip::core::rel::{self, Numbering, Offered, RAck, Received, Reliability, Sequence};
use mediasec_sip::udp::{Command, Endpoint, Event, Events};
use tokio::sync::{mpsc, oneshot};
use tokio::task::{AbortHandle, Id as JobId, JoinSet};

use crate::media::{MediaStats, RtpEndpoint};
use crate::offer_answer::{self, Media, Offer, Protection, Security};
use crate::high_security;
use crate::mikey_sakke;
use crate::ticket::{self, KmsAccess, PendingCall, SharedKms};
use crate::Error;

/// How incoming calls are answered.
#[derive(Clone, Copy, Debug)]
pub struct Answering {
    /// Answer at all (otherwise ring until cancelled).
    pub auto: bool,
    /// Ring this long before the 200.
    pub delay: Duration,
    /// Send a 183 with the answer and start media before the 200.
    pub early_media: bool,
}

/// The UE's configuration.
#[derive(Clone, Debug)]
pub struct UeConfig {
    /// Our public identity, e.g. `sip:alice@a.example`.
    pub aor: String,
    /// SIP address (port 0 picks one).
    pub sip_bind: SocketAddr,
    /// Address for RTP sockets.
    pub rtp_ip: IpAddr,
    /// The P-CSCF (outbound proxy) every initial request goes to.
    pub outbound_proxy: SocketAddr,
    /// Media security for calls we place and accept.
    pub security: Security,
    /// SDES suites and parameters.
    pub sdes: SdesPolicy,
    /// Answering behaviour.
    pub answering: Answering,
    /// The tone we send (Hz).
    pub tone_hz: f64,
    /// The tone we expect from peers (Hz), if any.
    pub expect_hz: Option<f64>,
    /// First RTP sequence number (a value near 65535 exercises the ROC).
    pub initial_seq: u16,
    /// Call anonymously (RFC 3323/3325): `From: "Anonymous" <sip:anonymous@anonymous.invalid>`,
    /// `Privacy: id`, the real identity only in `P-Preferred-Identity` for the home network.
    /// With MIKEY-TICKET the KMS still knows the caller (the Ticket Request is authenticated
    /// with the caller's GBA key), and TRANSFER_INIT names the initiator's KMS UID.
    pub anonymous: bool,
    /// Ask for end-to-access-edge security (TS 33.328 §7.2.1, TS 24.229 §7.5.2): the initial
    /// SDES offer carries `a=3ge2ae:requested`, whichever side makes it (our INVITE's, or our
    /// 200's / reliable 18x's to an offerless INVITE). The P-CSCF then answers with the
    /// IMS-AGW's key and `a=3ge2ae:applied` (reported as [`CallReport::e2ae_applied`]); SRTP
    /// runs to the AGW only. Registration always indicates the capability
    /// (`Security-Client: sdes-srtp;mediasec`).
    pub e2ae: bool,
    /// SIP timers.
    pub timers: Timers,
    /// Reach the P-CSCF over TLS, trusting these roots (`mediasec_sip::tls::client_config`):
    /// [`UeConfig::outbound_proxy`] is then the P-CSCF's TLS address, whose certificate must
    /// carry that IP address. `None`: UDP/TCP as the endpoint picks.
    pub tls: Option<Arc<mediasec_sip::tls::ClientConfig>>,
    /// The P-CSCF named by a SIP URI with a host name (e.g. `sip:pcscf.a.example;lr`), located
    /// by DNS (RFC 3263, [`UeConfig::resolver`]): initial requests (REGISTER, INVITE, CANCEL)
    /// carry it as their preloaded `Route` (RFC 3261 §8.1.2) and go where the endpoint
    /// locates it. [`UeConfig::outbound_proxy`] then only names the connection TLS
    /// keep-alives go to. `None`: the P-CSCF is [`UeConfig::outbound_proxy`].
    pub outbound_proxy_uri: Option<String>,
    /// The DNS lookups for host-name next hops (the outbound proxy URI, a dialog's route or
    /// remote target with a host name). `None`: such a hop fails as unreachable.
    pub resolver: Option<Arc<dyn mediasec_sip::locate::Resolve>>,
}

/// Where a request goes: an address, or a URI the endpoint locates (RFC 3263).
#[derive(Clone, Debug)]
enum NextHop {
    Addr(SocketAddr),
    Uri(Uri),
}

impl From<SocketAddr> for NextHop {
    fn from(addr: SocketAddr) -> Self {
        Self::Addr(addr)
    }
}

/// A dialog's next hop (RFC 3261 §12.2.1.1): its address for an IP literal, else the URI to
/// locate.
fn dialog_hop(dialog: &Dialog) -> NextHop {
    dialog.next_hop().map_or_else(|| NextHop::Uri(dialog.next_hop_uri().clone()), NextHop::Addr)
}

/// Sends the ACK for a 2xx (RFC 3261 §13.2.2.4), outside any transaction, to its dialog's
/// next hop: an address at once, a URI with a host name located by the endpoint
/// ([`Command::StatelessUri`], RFC 3263 §4.4: every copy of it to the same server).
fn send_ack(endpoint: &Endpoint, ack: Message, to: NextHop) -> Result<(), Error> {
    let command = match (to, ack) {
        (NextHop::Addr(to), message) => Command::Stateless { message, to },
        (NextHop::Uri(uri), Message::Request(request)) => Command::StatelessUri { request, uri },
        (NextHop::Uri(_), Message::Response(_)) => return Err(Error::Negotiation("an ACK that is not a request".into())),
    };
    endpoint.send(command)?;
    Ok(())
}

impl UeConfig {
    /// A UE on 127.0.0.1 (SIP and RTP ports picked by the system) behind `outbound_proxy`,
    /// sending a `tone_hz` tone and expecting `expect_hz` from its peers; answers at once,
    /// default SDES suites, RTP sequence from 1000, not anonymous, no e2ae, RFC 3261 timers.
    /// The labs, tests and demo start from this and set what differs.
    pub fn loopback(aor: &str, outbound_proxy: SocketAddr, security: Security, tone_hz: f64, expect_hz: f64) -> Self {
        Self {
            aor: aor.into(),
            sip_bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            rtp_ip: IpAddr::from([127, 0, 0, 1]),
            outbound_proxy,
            security,
            sdes: SdesPolicy::default(),
            answering: Answering { auto: true, delay: Duration::ZERO, early_media: false },
            tone_hz,
            expect_hz: Some(expect_hz),
            initial_seq: 1000,
            anonymous: false,
            e2ae: false,
            timers: Timers::default(),
            tls: None,
            outbound_proxy_uri: None,
            resolver: None,
        }
    }
}

/// Who placed the call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// We called.
    Caller,
    /// We were called.
    Callee,
}

/// Where a call stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallState {
    /// INVITE sent or received, no answer yet.
    Setup,
    /// Early media running (18x with SDP).
    Early,
    /// Confirmed dialog.
    Established,
    /// Ended by BYE.
    Ended,
    /// Failed or refused (status and reason).
    Failed(u16, String),
}

/// What a test or the CLI reads about a call.
#[derive(Clone, Debug)]
pub struct CallReport {
    /// `Call-ID`.
    pub call_id: String,
    /// Role.
    pub role: Role,
    /// State.
    pub state: CallState,
    /// `rtp` or `srtp <suite>`.
    pub protection: String,
    /// Dialling (keys made, MIKEY-TICKET: the Ticket Request included) → 2xx processed
    /// (caller) / INVITE received → ACK received (callee).
    pub setup: Option<Duration>,
    /// Media counters.
    pub media: MediaStats,
    /// Tone packets verified before the call was established (early media).
    pub early_verified: u64,
    /// Fingerprint of the SDES key the peer sends with (for the caller: the answerer's key;
    /// for the callee: the offerer's key — which every forked callee sees).
    pub peer_key: Option<String>,
    /// Fingerprint of the SDES key we send with.
    pub own_key: Option<String>,
    /// Extra 2xx answers (other forks) we ACKed and ended.
    pub extra_forks_ended: u32,
    /// Re-INVITEs completed.
    pub rekeys: u32,
    /// The peer as its `From` (callee) or `To` (caller) header presents it.
    pub peer_identity: String,
    /// The peer as the key management authenticated it ([`Media::peer`]: the KMS UID of a
    /// MIKEY-TICKET peer, the URI of a high-security one); `None` with SDES or plain RTP, a
    /// MIKEY-SAKKE caller's view, deferred delivery, or before keys are agreed. An anonymous
    /// MIKEY-TICKET caller (RFC 3323) is named here too: its ticket names it in TRANSFER_INIT
    /// (RFC 6043 has no initiator privacy towards the responder).
    pub authenticated_peer: Option<String>,
    /// The SDP from the network said `a=3ge2ae:applied` (TS 24.229 §7.5.2): the P-CSCF
    /// applied e2ae, our SRTP ends at the IMS-AGW.
    pub e2ae_applied: bool,
    /// Caller with MIKEY-TICKET: the answer announced deferred delivery (a voicemail server
    /// stores our SRTP for the callee, docs/voicemail.md): no responder was authenticated, our
    /// media is keyed from our own TRANSFER_INIT ([`crate::ticket::DEFERRED_ATTRIBUTE`]).
    pub deferred_delivery: bool,
    /// The MIKEY message of the initial offer (`a=key-mgmt:mikey`: TRANSFER_INIT, DH_INIT or
    /// I_MESSAGE), sent or received — the INVITE's, or with a delayed offer the one in the
    /// callee's 200 or reliable 18x; `None` for other modes. For checks such as "LI key release
    /// of this call" (docs/high-security.md).
    pub offer_mikey: Option<Vec<u8>>,
}

/// The outcome of a registration.
#[derive(Clone, Debug)]
pub struct Registration {
    /// The final status.
    pub status: u16,
    /// The registrar's path accepted our `mediasec` capability (`Security-Server`).
    pub mediasec: bool,
}

enum Op {
    Register(u32, oneshot::Sender<Result<Registration, Error>>),
    /// Call `target`, with (`true`) or without an offer in the INVITE.
    Call(String, bool, oneshot::Sender<Result<String, Error>>),
    /// Re-offer with fresh keys in a re-INVITE or an UPDATE (RFC 3311), or (`false`) an
    /// offerless re-INVITE (the peer offers in its 2xx, our answer goes in the ACK).
    Reinvite(String, Method, bool, oneshot::Sender<Result<(), Error>>),
    Hangup(String, oneshot::Sender<Result<(), Error>>),
    Report(String, oneshot::Sender<Option<CallReport>>),
    Reports(oneshot::Sender<Vec<CallReport>>),
    AnswerNow(String),
    /// 64·T1 have passed since the CANCEL of this call's INVITE (RFC 3261 §9.1).
    CancelExpired(String),
}

/// A running UE.
pub struct Ue {
    ops: mpsc::UnboundedSender<Op>,
    sip: SocketAddr,
    endpoint: Endpoint,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Ue {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Ue {
    /// Binds the SIP endpoint and starts the UE (no KMS: modes none and SDES).
    pub async fn start(config: UeConfig) -> Result<Self, Error> {
        Self::start_with_kms(config, None).await
    }

    /// Starts a UE that also has access to its KMS (modes MIKEY-TICKET, high-security,
    /// MIKEY-SAKKE). The KMS exchanges run off the UE task (docs/sip.md §2 "KMS work off the
    /// UE task"): signalling of other calls goes on while one call waits for its KMS.
    pub async fn start_with_kms(config: UeConfig, kms: Option<KmsAccess>) -> Result<Self, Error> {
        let tls = mediasec_sip::tls::Tls { server: None, client: config.tls.clone() };
        let (endpoint, events) = Endpoint::bind_with(config.sip_bind, mediasec_sip::udp::Config { tls, resolver: config.resolver.clone(), ..mediasec_sip::udp::Config::from(config.timers) }).await?;
        let sip = endpoint.local_addr();
        let (ops, ops_rx) = mpsc::unbounded_channel();
        let kms = kms.map(|k| Arc::new(Mutex::new(k)));
        let core = Core { config, endpoint: endpoint.clone(), ops: ops.clone(), calls: HashMap::new(), client: HashMap::new(), seq: 0, kms, jobs: JoinSet::new(), steps: HashMap::new() };
        let task = tokio::spawn(core.run(events, ops_rx));
        Ok(Self { ops, sip, endpoint, task })
    }

    /// Our SIP address.
    pub fn sip_addr(&self) -> SocketAddr {
        self.sip
    }

    /// SIP messages we received so far, by transport (with [`UeConfig::tls`], all over TLS).
    pub fn sip_received(&self) -> mediasec_sip::udp::Received {
        self.endpoint.received()
    }

    /// How many TLS connections our endpoint established and how many handshakes failed (and
    /// its TCP bounds).
    pub fn sip_tcp_stats(&self) -> mediasec_sip::udp::TcpStats {
        self.endpoint.tcp_stats()
    }

    async fn ask<T>(&self, op: impl FnOnce(oneshot::Sender<T>) -> Op) -> Result<T, Error> {
        let (tx, rx) = oneshot::channel();
        self.ops.send(op(tx)).map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)
    }

    /// REGISTER through the outbound proxy.
    pub async fn register(&self, expires: u32) -> Result<Registration, Error> {
        self.ask(|tx| Op::Register(expires, tx)).await?
    }

    /// Calls `target` (a SIP URI); returns the Call-ID once the call is established.
    pub async fn call(&self, target: &str) -> Result<String, Error> {
        self.ask(|tx| Op::Call(target.to_owned(), true, tx)).await?
    }

    /// Places a call with an offerless INVITE (RFC 3261 §13.2.1, `Supported: 100rel`): an
    /// offer in a reliable 18x is answered in its PRACK (RFC 3262 §5), one in the 2xx in the
    /// ACK (an offer we cannot accept gets a refusing answer, then BYE: §13.2.2.4). Under a
    /// MIKEY policy the callee is the MIKEY Initiator: its offer must carry `a=key-mgmt:mikey`
    /// from the party called, and our answer carries our MIKEY response.
    pub async fn call_without_offer(&self, target: &str) -> Result<String, Error> {
        self.ask(|tx| Op::Call(target.to_owned(), false, tx)).await?
    }

    /// Re-INVITE with fresh keys; returns when the new answer is applied.
    pub async fn reinvite(&self, call_id: &str) -> Result<(), Error> {
        self.ask(|tx| Op::Reinvite(call_id.to_owned(), Method::Invite, true, tx)).await?
    }

    /// Offerless re-INVITE (delayed offer, RFC 3261 §13.2.1): the peer's offer comes in the
    /// 2xx, our answer goes in the ACK (an offer we cannot answer: the ACK goes without one and
    /// the error is returned and the call ended with BYE); returns when the answer is applied.
    /// Under a MIKEY policy the peer's offer is a fresh MIKEY exchange it initiates.
    pub async fn reinvite_without_offer(&self, call_id: &str) -> Result<(), Error> {
        self.ask(|tx| Op::Reinvite(call_id.to_owned(), Method::Invite, false, tx)).await?
    }

    /// UPDATE with fresh keys (RFC 3311: the answer comes in its 2xx); returns when the new
    /// answer is applied.
    pub async fn update(&self, call_id: &str) -> Result<(), Error> {
        self.ask(|tx| Op::Reinvite(call_id.to_owned(), Method::Update, true, tx)).await?
    }

    /// BYE; returns when the BYE is answered.
    pub async fn hangup(&self, call_id: &str) -> Result<(), Error> {
        self.ask(|tx| Op::Hangup(call_id.to_owned(), tx)).await?
    }

    /// The report of one call.
    pub async fn report(&self, call_id: &str) -> Result<Option<CallReport>, Error> {
        self.ask(|tx| Op::Report(call_id.to_owned(), tx)).await
    }

    /// Reports of every call, oldest first.
    pub async fn reports(&self) -> Result<Vec<CallReport>, Error> {
        self.ask(Op::Reports).await
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Purpose {
    Register,
    Invite,
    Reinvite,
    /// An UPDATE with an offer (no ACK after its 2xx).
    Update,
    /// A re-INVITE without an offer: the 2xx brings one, the ACK our answer.
    OfferlessReinvite,
    Bye,
    /// BYE whose response needs no action: an extra fork's, or one ending a session whose
    /// offer/answer failed after the 2xx (RFC 3261 §13.2.2.4).
    EndingBye,
    /// PRACK for a reliable provisional response (RFC 3262 §4; its 200 needs no action).
    Prack,
    /// CANCEL of our INVITE (RFC 3261 §9.1; its 200 needs no action: the INVITE's 487 or
    /// 2xx decides).
    Cancel,
}

struct Call {
    role: Role,
    state: CallState,
    order: u64,
    dialog: Option<Dialog>,
    /// Caller: the early dialog of a reliable 18x (RFC 3262 §4) and the `RSeq`s seen in it,
    /// until a 2xx confirms it.
    early: Option<(Dialog, Sequence)>,
    /// Caller: the offer/answer exchange completed in a reliable 18x, so a 2xx may come
    /// without SDP (RFC 3262 §5).
    answered_reliably: bool,
    /// Caller: why the offer of that exchange was refused (every stream rejected in our
    /// answer, RFC 3264 §6): the INVITE is then CANCELled, and the call fails with this reason
    /// when its 487 (or a 2xx that crossed the CANCEL) comes.
    refused_reliably: Option<String>,
    /// Callee: numbering of our reliable provisional responses (RFC 3262 §3); `Some` when the
    /// answer went in one.
    reliable: Option<Numbering>,
    /// Callee: the 200 is due but waits for the PRACK of our reliable 18x (§3).
    answer_waits_prack: bool,
    /// Callee: our offer (to an offerless INVITE) went in the reliable 18x; the PRACK brings
    /// the answer (RFC 3262 §5).
    answer_in_prack: bool,
    /// Caller: the INVITE we sent. Callee: the INVITE received.
    invite: Request,
    /// Callee: the INVITE server transaction.
    invite_key: Option<TransactionKey>,
    /// Caller: the pending offer (initial or re-INVITE).
    offer: Option<Offer>,
    /// Caller with MIKEY-TICKET: the pending transfer, and the answer already applied (the
    /// same TRANSFER_RESP in a 183 and the 200 is verified once).
    ticket: Option<Keying>,
    ticket_answer: Option<(String, Media)>,
    /// Caller with MIKEY-TICKET: that answer announced deferred delivery.
    deferred_delivery: bool,
    /// Callee: the answer text and media, until the 200 is sent.
    answer: Option<(String, Media)>,
    /// The initial offer of an offerless INVITE (RFC 3261 §13.2.1): the callee's own (any mode;
    /// the 200 carries it when no reliable 18x did, §13.3.1.4), or the one the caller received
    /// in the first reliable 18x or 2xx.
    delayed_offer: Option<String>,
    /// Whom our MIKEY offers are addressed to (a SIP URI): the target we called, or the caller
    /// as asserted or presented ([`caller_identity`]); `None` for an anonymous caller.
    mikey_peer: Option<String>,
    answered: bool,
    rtp: RtpEndpoint,
    started: Instant,
    setup: Option<Duration>,
    early_verified: u64,
    protection: String,
    peer_key: Option<String>,
    own_key: Option<String>,
    sdp_version: u64,
    extra_forks_ended: u32,
    rekeys: u32,
    peer_identity: String,
    authenticated_peer: Option<String>,
    e2ae_applied: bool,
    reinvite_seq: Option<u32>,
    /// Our offer went in the 2xx to an offerless INVITE or re-INVITE: its answer comes in the
    /// ACK (RFC 3261 §13.3.1.4).
    answer_in_ack: bool,
    /// Caller: the ACK of the 2xx that confirmed the call, sent again for its retransmissions
    /// (§13.2.2.4) — with our answer when that 2xx brought the offer.
    ack: Option<Request>,
    waiter: Option<oneshot::Sender<Result<String, Error>>>,
    unit_waiter: Option<oneshot::Sender<Result<(), Error>>>,
    /// The KMS work this call waits for ([`Core::start`]); cleared when the call ends, fails
    /// or is cancelled, which turns the work's late result into an abandoned one.
    keying: Option<JobId>,
}

impl Call {
    /// A call in set-up, before any offer, answer, dialog or waiter is attached.
    fn new(role: Role, order: u64, invite: Request, rtp: RtpEndpoint, started: Instant, peer_identity: String) -> Self {
        Self {
            role,
            state: CallState::Setup,
            order,
            dialog: None,
            early: None,
            answered_reliably: false,
            refused_reliably: None,
            reliable: None,
            answer_waits_prack: false,
            answer_in_prack: false,
            invite,
            invite_key: None,
            offer: None,
            ticket: None,
            ticket_answer: None,
            answer: None,
            delayed_offer: None,
            mikey_peer: None,
            answered: false,
            rtp,
            started,
            setup: None,
            early_verified: 0,
            protection: String::new(),
            peer_key: None,
            own_key: None,
            sdp_version: 1,
            extra_forks_ended: 0,
            rekeys: 0,
            peer_identity,
            authenticated_peer: None,
            e2ae_applied: false,
            deferred_delivery: false,
            reinvite_seq: None,
            answer_in_ack: false,
            ack: None,
            waiter: None,
            unit_waiter: None,
            keying: None,
        }
    }

    fn report(&self, call_id: &str) -> CallReport {
        CallReport {
            call_id: call_id.to_owned(),
            role: self.role,
            state: self.state.clone(),
            protection: self.protection.clone(),
            setup: self.setup,
            media: self.rtp.stats(),
            early_verified: self.early_verified,
            peer_key: self.peer_key.clone(),
            own_key: self.own_key.clone(),
            extra_forks_ended: self.extra_forks_ended,
            rekeys: self.rekeys,
            peer_identity: self.peer_identity.clone(),
            authenticated_peer: self.authenticated_peer.clone(),
            e2ae_applied: self.e2ae_applied,
            deferred_delivery: self.deferred_delivery,
            offer_mikey: match &self.delayed_offer {
                Some(offer) => Some(Sdp::parse(offer)),
                None => mediasec_sip::body::sdp(&Message::Request(self.invite.clone())).ok().flatten(),
            }
            .and_then(|sdp| ticket::mikey_data(&sdp).ok().flatten()),
        }
    }

    /// Our offer is out: its SDES / plain offer or MIKEY keying is kept until its answer. The
    /// peer's send key of a MIKEY-SAKKE offer is known now, so the media endpoint accepts it
    /// from now on ([`RtpEndpoint::expect`]); any other offer withdraws an earlier expectation.
    fn offered(&mut self, offer: Option<Offer>, keying: Option<Keying>) {
        let expected = match &keying {
            Some(Keying::Sakke(pending)) => mikey_sakke::expected(pending),
            _ => None,
        };
        self.rtp.expect(expected.as_ref());
        self.offer = offer;
        self.ticket = keying;
    }

    fn apply_media(&mut self, media: &Media) {
        self.protection = media.protection.describe();
        self.authenticated_peer.clone_from(&media.peer);
        if let Protection::Srtp { own_key, peer_key, .. } = &media.protection {
            self.peer_key = Some(peer_key.clone());
            self.own_key = Some(own_key.clone());
        }
        self.rtp.apply(media);
    }

    /// Fails a call whose INVITE we CANCELled after refusing the offer of its reliable 18x:
    /// the user sees why — the refusal (488, the text a 2xx crossing the CANCEL ends it with
    /// too) — not the 487 it caused or the silence after it.
    fn fail_refused(&mut self, why: String) {
        self.fail(488, &Error::Negotiation(why).to_string());
    }

    fn fail(&mut self, code: u16, reason: &str) {
        self.state = CallState::Failed(code, reason.to_owned());
        self.keying = None;
        self.rtp.stop();
        if let Some(w) = self.waiter.take() {
            let _ = w.send(Err(Error::CallFailed { code, reason: reason.to_owned() }));
        }
    }
}

struct Core {
    config: UeConfig,
    endpoint: Endpoint,
    ops: mpsc::UnboundedSender<Op>,
    calls: HashMap<String, Call>,
    client: HashMap<TransactionKey, (String, Purpose)>,
    seq: u64,
    kms: Option<SharedKms>,
    /// KMS work in flight, off this task (docs/sip.md §2).
    jobs: JoinSet<Keyed>,
    /// The step each job in [`Self::jobs`] resumes, and its abort handle.
    steps: HashMap<JobId, (Step, AbortHandle)>,
}

type RegisterWaiter = oneshot::Sender<Result<Registration, Error>>;

fn random_token() -> String {
    format!("{:016x}", rand::random::<u64>())
}

fn fill_random(buf: &mut [u8]) {
    rand::RngCore::fill_bytes(&mut rand::rng(), buf);
}

/// The audio stream carries `a=3ge2ae:applied` (TS 24.229 §7.5.2).
fn e2ae_applied(sdp: &Sdp) -> bool {
    offer_answer::audio(sdp).is_ok_and(|stream| {
        mediasec_sdp::e2ae::find(sdp, mediasec_sdp::Level::Media(stream.index)).is_ok_and(|v| v.iter().any(|x| x == &Ok(mediasec_sdp::E2aeIndication::Applied)))
    })
}

/// The `Warning` of a refusal (RFC 3261 §20.43: code 399, miscellaneous; agent `mediasec`):
/// why, with double quotes made single to stay inside the quoted text.
fn warning(why: &Error) -> String {
    format!("399 mediasec \"{}\"", why.to_string().replace('"', "'"))
}

fn header_text(headers: &mediasec_sip::core::Headers, name: &HeaderName) -> Option<String> {
    headers.get(name).map(|h| String::from_utf8_lossy(h.value().trim_ascii()).into_owned())
}

impl Core {
    async fn run(mut self, mut events: Events, mut ops: mpsc::UnboundedReceiver<Op>) {
        let mut registering: HashMap<TransactionKey, RegisterWaiter> = HashMap::new();
        // Over TLS, RFC 5626 §3.5.1 keep-alives on our connection to the P-CSCF every 16·T1
        // (a quarter of the 64·T1 after which our endpoints close an idle connection): a
        // P-CSCF cannot connect to a UE, so a connection closed as idle would lose the calls
        // to us until our next request.
        let mut keep_alive = tokio::time::interval(self.config.timers.t1 * 16);
        keep_alive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = keep_alive.tick(), if self.config.tls.is_some() => {
                    if let Err(e) = self.endpoint.send(Command::KeepAlive { to: self.config.outbound_proxy }) {
                        tracing::warn!(error = %e, "SIP keep-alive");
                    }
                }
                event = events.recv() => match event {
                    Some(e) => {
                        if let Err(err) = self.on_event(e, &mut registering).await {
                            tracing::warn!(error = %err, "UE event");
                        }
                    }
                    None => return,
                },
                op = ops.recv() => match op {
                    Some(Op::Register(expires, tx)) => match self.register(expires) {
                        Ok(key) => { registering.insert(key, tx); }
                        Err(e) => { let _ = tx.send(Err(e)); }
                    },
                    Some(op) => self.on_op(op).await,
                    None => return,
                },
                Some(done) = self.jobs.join_next_with_id(), if !self.jobs.is_empty() => {
                    let outcome = match done {
                        Ok((id, keyed)) => self.finished(id, keyed),
                        // Aborted: its step was abandoned already. A panic: the step is
                        // abandoned now, as for a call that ended.
                        Err(e) => match self.steps.remove(&e.id()) {
                            Some((step, _)) => {
                                tracing::warn!(error = %e, "KMS work failed");
                                if let Some(call) = step.call_id().and_then(|c| self.calls.get_mut(c)) {
                                    call.keying = None;
                                }
                                self.abandon(step)
                            }
                            None => Ok(()),
                        },
                    };
                    if let Err(err) = outcome {
                        tracing::warn!(error = %err, "UE: resuming after KMS work");
                    }
                }
            }
        }
    }

    /// Starts the KMS work of a step (docs/sip.md §2 "KMS work off the UE task"). Work that
    /// needs no exchange — SDES or plain, a cached reusable ticket or resolve, high-security
    /// keys already held — completes on its first poll and `step` resumes at once, as if
    /// inline. Otherwise the work goes on off this task ([`Self::jobs`]), the call (if `step`
    /// has one) records it in [`Call::keying`], and the task returns to other events; the
    /// result resumes `step` ([`Self::finished`]). The first poll uses a no-op waker: a
    /// pending future registers the task's waker again when the job polls it.
    fn start(&mut self, work: impl Future<Output = Keyed> + Send + 'static, step: Step) -> Result<(), Error> {
        let mut work = Box::pin(work);
        if let Poll::Ready(keyed) = work.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            return self.resume(step, keyed);
        }
        let handle = self.jobs.spawn(work);
        let id = handle.id();
        if let Some(call) = step.call_id().and_then(|c| self.calls.get_mut(c)) {
            call.keying = Some(id);
        }
        self.steps.insert(id, (step, handle));
        Ok(())
    }

    /// KMS work `id` finished: its step resumes if its call still waits for it; if the call
    /// ended, failed or was cancelled meanwhile ([`Call::keying`] no longer names it), the
    /// result is dropped and the step abandoned ([`Self::abandon`]).
    fn finished(&mut self, id: JobId, keyed: Keyed) -> Result<(), Error> {
        let Some((step, _)) = self.steps.remove(&id) else { return Ok(()) };
        let waited = match step.call_id() {
            None => true,
            Some(call_id) => self.calls.get_mut(call_id).is_some_and(|call| call.keying.take_if(|k| *k == id).is_some()),
        };
        if waited {
            self.resume(step, keyed)
        } else {
            tracing::info!(call_id = step.call_id().unwrap_or_default(), "KMS result for a call that no longer waits for it: dropped");
            self.abandon(step)
        }
    }

    /// Abandons the KMS work `call_id` waits for, at once (its call ends: BYE, hangup,
    /// CANCEL): the job is aborted — its lock-free HTTP exchange simply stops, the KMS state
    /// is untouched between its locked steps — and the step abandoned.
    fn abandon_keying(&mut self, call_id: &str) -> Result<(), Error> {
        let Some(id) = self.calls.get_mut(call_id).and_then(|c| c.keying.take()) else { return Ok(()) };
        let Some((step, handle)) = self.steps.remove(&id) else { return Ok(()) };
        handle.abort();
        tracing::info!(%call_id, "the call ended while its KMS work was in flight: abandoned");
        self.abandon(step)
    }

    /// What an abandoned step still owes (docs/sip.md §2): an API request gets its error; a 2xx
    /// whose ACK waited for our answer is ACKed with an answer refusing every stream (RFC 3261
    /// §13.2.2.4: the 2xx must be ACKed and, carrying an offer, answered); a re-INVITE or
    /// UPDATE of the peer waiting for our answer gets 487 (§15.1.2). Nothing else is sent:
    /// no INVITE, no 18x or 200, no PRACK for a call that ended.
    fn abandon(&mut self, step: Step) -> Result<(), Error> {
        match step {
            Step::Invite { tx, .. } => {
                let _ = tx.send(Err(Error::CallFailed { code: 487, reason: "the call ended during its KMS exchange".into() }));
                Ok(())
            }
            Step::Reoffer { tx, .. } => {
                let _ = tx.send(Err(Error::CallFailed { code: 487, reason: "the call ended during its KMS exchange".into() }));
                Ok(())
            }
            Step::Ack { call_id, purpose, mut ack, to, offer, local, version } => {
                let refusal = refusing_answer(&offer, local, version, &Error::Negotiation("the call ended".into()))?;
                mediasec_sip::body::set_sdp(&mut ack, &Sdp::parse(&refusal))?;
                if purpose == Purpose::Invite
                    && let (Some(call), Message::Request(request)) = (self.calls.get_mut(&call_id), &ack)
                {
                    // The same ACK again for the 2xx's retransmissions (§13.2.2.4).
                    call.ack = Some(request.clone());
                }
                send_ack(&self.endpoint, ack, to)
            }
            Step::ReinviteAnswer { key, request, to, .. } => self.respond(&key, &request, 487, "Request Terminated", Some(to), None),
            Step::Prack { .. } | Step::IncomingAnswer { .. } | Step::IncomingOffer { .. } => Ok(()),
        }
    }

    /// Resumes `step` with the result of its KMS work.
    fn resume(&mut self, step: Step, keyed: Keyed) -> Result<(), Error> {
        match step {
            Step::Invite { target, rtp, started, tx } => self.invite_keyed(&target, rtp, started, tx, keyed.offer()),
            Step::Reoffer { call_id, method, tx } => self.reoffer_keyed(&call_id, method, tx, keyed.offer()),
            Step::Ack { call_id, purpose, ack, to, offer, local, version } => self.ack_keyed(&call_id, purpose, ack, to, &offer, local, version, keyed.answer()),
            Step::Prack { call_id, prack, to, offer, local, version, refused_before } => self.prack_keyed(&call_id, prack, to, &offer, local, version, refused_before, keyed.answer()),
            Step::IncomingAnswer { call_id, key, request, to, offer } => self.incoming_answer_keyed(call_id, key, &request, to, offer.as_ref(), keyed.answer()),
            Step::IncomingOffer { call_id, key, request, to, reliable } => self.incoming_offer_keyed(call_id, &key, &request, to, reliable, keyed.offer()),
            Step::ReinviteAnswer { call_id, key, request, to, offerless } => self.reinvite_answer_keyed(&call_id, &key, &request, to, offerless, keyed),
        }
    }

    /// Our `Via`: `TLS` when we reach the P-CSCF over TLS (the endpoint then never sends the
    /// request in clear), else `UDP` (the endpoint may switch to TCP for size).
    fn via(&self) -> String {
        let transport = if self.config.tls.is_some() { "TLS" } else { "UDP" };
        format!("SIP/2.0/{transport} {};branch=z9hG4bK{};rport", self.endpoint.local_addr(), random_token())
    }

    fn contact(&self) -> String {
        let user = self.config.aor.trim_start_matches("sip:").split('@').next().unwrap_or("ue").to_owned();
        let transport = if self.config.tls.is_some() { ";transport=tls" } else { "" };
        format!("<sip:{user}@{}{transport}>", self.endpoint.local_addr())
    }

    /// Over TLS, the preloaded `Route` of an initial request (RFC 3261 §8.1.2): the P-CSCF's TLS
    /// address, which its certificate must prove (RFC 5922 §7).
    /// With [`UeConfig::outbound_proxy_uri`], that URI.
    fn outbound_route(&self) -> Option<String> {
        if let Some(uri) = &self.config.outbound_proxy_uri {
            return Some(format!("<{uri}>"));
        }
        self.config.tls.as_ref().map(|_| format!("<sip:{};transport=tls;lr>", self.config.outbound_proxy))
    }

    /// Where initial requests go: the outbound proxy's URI to locate, else its address.
    fn outbound_hop(&self) -> Result<NextHop, Error> {
        match &self.config.outbound_proxy_uri {
            Some(uri) => Ok(NextHop::Uri(Uri::parse(Bytes::from(uri.clone())).map_err(|e| Error::Negotiation(format!("outbound proxy URI {uri}: {e}")))?)),
            None => Ok(NextHop::Addr(self.config.outbound_proxy)),
        }
    }

    fn domain(&self) -> String {
        self.config.aor.rsplit('@').next().unwrap_or_default().to_owned()
    }

    fn send_request(&mut self, request: Request, to: impl Into<NextHop>, call_id: &str, purpose: Purpose) -> Result<TransactionKey, Error> {
        let key = TransactionKey::from_sent_request(&request).ok_or(Error::Negotiation("request without Via".into()))?;
        self.client.insert(key.clone(), (call_id.to_owned(), purpose));
        match to.into() {
            NextHop::Addr(to) => self.endpoint.send(Command::Request { request, to })?,
            NextHop::Uri(uri) => self.endpoint.send(Command::RequestUri { request, uri })?,
        }
        Ok(key)
    }

    fn register(&mut self, expires: u32) -> Result<TransactionKey, Error> {
        let uri = Uri::parse(Bytes::from(format!("sip:{}", self.domain()))).map_err(|e| Error::Negotiation(e.to_string()))?;
        let call_id = random_token();
        let mut b = RequestBuilder::new(Method::Register, uri)
            .header(HeaderName::Via, self.via())?
            .max_forwards(70)
            .header(HeaderName::From, format!("<{}>;tag={}", self.config.aor, random_token()))?
            .header(HeaderName::To, format!("<{}>", self.config.aor))?
            .header(HeaderName::CallId, call_id.clone())?
            .cseq(1, &Method::Register)?
            .header(HeaderName::Contact, self.contact())?
            .header(HeaderName::Expires, expires.to_string())?;
        if let Some(route) = self.outbound_route() {
            b = b.header(HeaderName::Route, route)?;
        }
        if matches!(self.config.security, Security::Sdes { .. }) {
            b = b.header(security_client(), "sdes-srtp;mediasec")?;
        }
        let to = self.outbound_hop()?;
        self.send_request(b.build(), to, &call_id, Purpose::Register)
    }

    async fn on_op(&mut self, op: Op) {
        match op {
            Op::Call(target, with_offer, tx) => {
                if let Err(e) = self.place_call(&target, with_offer, tx).await {
                    tracing::warn!(error = %e, "call");
                }
            }
            Op::Reinvite(call_id, method, with_offer, tx) => {
                if let Err(e) = self.reinvite(&call_id, method, with_offer, tx) {
                    tracing::warn!(error = %e, "re-INVITE");
                }
            }
            Op::Hangup(call_id, tx) => match self.hangup(&call_id) {
                Ok(()) => {
                    if let Some(c) = self.calls.get_mut(&call_id) {
                        c.unit_waiter = Some(tx);
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            },
            Op::Report(call_id, tx) => {
                let _ = tx.send(self.calls.get(&call_id).map(|c| c.report(&call_id)));
            }
            Op::Reports(tx) => {
                let mut all: Vec<(&String, &Call)> = self.calls.iter().collect();
                all.sort_by_key(|(_, c)| c.order);
                let _ = tx.send(all.into_iter().map(|(id, c)| c.report(id)).collect());
            }
            Op::AnswerNow(call_id) => {
                if let Err(e) = self.answer_now(&call_id) {
                    tracing::warn!(error = %e, "answering");
                }
            }
            Op::CancelExpired(call_id) => {
                if let Err(e) = self.cancel_expired(&call_id) {
                    tracing::warn!(error = %e, "giving up the INVITE");
                }
            }
            Op::Register(..) => {}
        }
    }

    async fn new_rtp(&self) -> Result<RtpEndpoint, Error> {
        RtpEndpoint::bind(self.config.rtp_ip, self.config.tone_hz, self.config.expect_hz, self.config.initial_seq).await
    }

    async fn place_call(&mut self, target: &str, with_offer: bool, tx: oneshot::Sender<Result<String, Error>>) -> Result<(), Error> {
        let started = Instant::now();
        let rtp = match self.new_rtp().await {
            Ok(r) => r,
            Err(e) => {
                let _ = tx.send(Err(e));
                return Ok(());
            }
        };
        let (local, ssrc) = (rtp.local_addr(), rtp.ssrc());
        let step = Step::Invite { target: target.to_owned(), rtp, started, tx };
        match self.config.security {
            // Delayed offer (RFC 3261 §13.2.1): the callee offers in its 2xx or reliable 18x;
            // under a MIKEY policy it is then the MIKEY Initiator and we answer as responder.
            _ if !with_offer => self.resume(step, Keyed::offered(Ok((String::new(), None, None)))),
            s if s.is_mikey() => self.start(offer_work(s, self.kms.clone(), local, 1, ssrc, target.to_owned()), step),
            _ => {
                let made = self.initial_offer(local).map(|o| (o.sdp.clone(), Some(o), None));
                self.resume(step, Keyed::offered(made))
            }
        }
    }

    /// [`Self::place_call`] once our offer is made (with a MIKEY policy, after our KMS
    /// exchange): the INVITE goes out — with the offer, or none for a delayed offer (`sdp`
    /// empty).
    fn invite_keyed(&mut self, target: &str, rtp: RtpEndpoint, started: Instant, tx: oneshot::Sender<Result<String, Error>>, made: Result<Made, Error>) -> Result<(), Error> {
        let (sdp, offer, ticket) = match made {
            Ok(m) => m,
            Err(e) => {
                let _ = tx.send(Err(e));
                return Ok(());
            }
        };
        let with_offer = !sdp.is_empty();
        let uri = match Uri::parse(Bytes::from(target.to_owned())) {
            Ok(u) => u,
            Err(e) => {
                let _ = tx.send(Err(Error::Negotiation(format!("target {target}: {e}"))));
                return Ok(());
            }
        };
        let call_id = format!("{}@{}", random_token(), self.endpoint.local_addr().ip());
        let from = if self.config.anonymous {
            format!("\"Anonymous\" <sip:anonymous@anonymous.invalid>;tag={}", random_token())
        } else {
            format!("<{}>;tag={}", self.config.aor, random_token())
        };
        let mut builder = RequestBuilder::new(Method::Invite, uri)
            .header(HeaderName::Via, self.via())?
            .max_forwards(70)
            .header(HeaderName::From, from)?;
        if self.config.anonymous {
            builder = builder.header(HeaderName::Privacy, "id")?.header(HeaderName::PPreferredIdentity, format!("<{}>", self.config.aor))?;
        }
        let mut builder = builder
            .header(HeaderName::To, format!("<{target}>"))?
            .header(HeaderName::CallId, call_id.clone())?
            .cseq(1, &Method::Invite)?
            .header(HeaderName::Contact, self.contact())?
            .header(HeaderName::Supported, rel::OPTION_TAG)?;
        if let Some(route) = self.outbound_route() {
            builder = builder.header(HeaderName::Route, route)?;
        }
        if with_offer {
            builder = builder.header(HeaderName::ContentType, "application/sdp")?.body(sdp);
        }
        let request = builder.build();
        let to = self.outbound_hop()?;
        self.seq += 1;
        let mut call = Call { mikey_peer: Some(target.to_owned()), waiter: Some(tx), ..Call::new(Role::Caller, self.seq, request.clone(), rtp, started, target.to_owned()) };
        call.offered(offer, ticket);
        self.calls.insert(call_id.clone(), call);
        self.send_request(request, to, &call_id, Purpose::Invite)?;
        Ok(())
    }

    /// Re-INVITE with new keys: SDES offers fresh `a=crypto` keys (RFC 4568 §7.1.4); the MIKEY
    /// modes make a fresh exchange to the peer ([`mikey_offer`]: MIKEY-TICKET a new Ticket
    /// Transfer, as our tickets are single-use; a new DH_INIT or I_MESSAGE). Without an offer
    /// (`with_offer` false, RFC 3261 §13.2.1) the peer offers in its 2xx — under a MIKEY
    /// policy as the new MIKEY Initiator — and our answer goes in the ACK.
    fn reinvite(&mut self, call_id: &str, method: Method, with_offer: bool, tx: oneshot::Sender<Result<(), Error>>) -> Result<(), Error> {
        let (security, sdes) = (self.config.security, self.config.sdes.clone());
        let Some(call) = self.calls.get_mut(call_id) else {
            let _ = tx.send(Err(Error::NoSuchCall));
            return Ok(());
        };
        if call.dialog.is_none() && method != Method::Update {
            // Only UPDATE may go in an early dialog (RFC 3311 §5.1).
            let _ = tx.send(Err(Error::NoSuchCall));
            return Ok(());
        }
        if current_dialog(&mut call.dialog, &mut call.early).is_none() {
            let _ = tx.send(Err(Error::NoSuchCall));
            return Ok(());
        }
        if call.keying.is_some() {
            // RFC 3261 §14.1: no new offer while this call's offer/answer exchange is still
            // waiting for our KMS.
            let _ = tx.send(Err(Error::Negotiation("a KMS exchange of this call is in progress; re-offer after it".into())));
            return Ok(());
        }
        call.sdp_version += 1;
        let (local, version, ssrc) = (call.rtp.local_addr(), call.sdp_version, call.rtp.ssrc());
        let peer = call.mikey_peer.clone().or_else(|| call.authenticated_peer.clone());
        let step = Step::Reoffer { call_id: call_id.to_owned(), method, tx };
        if !with_offer {
            // Delayed offer: the peer offers in its 2xx (with MIKEY, as the new Initiator).
            return self.resume(step, Keyed::offered(Ok((String::new(), None, None))));
        }
        if !security.is_mikey() {
            let made = offer_answer::offer(local, version, security, &sdes, &mut fill_random).map(|o| (o.sdp.clone(), Some(o), None));
            return self.resume(step, Keyed::offered(made));
        }
        let Some(peer) = peer else {
            return self.resume(step, Keyed::offered(Err(Error::Negotiation("the peer's identity is unknown (an anonymous caller): no MIKEY offer can be addressed to it".into()))));
        };
        self.start(offer_work(security, self.kms.clone(), local, version, ssrc, peer), step)
    }

    /// [`Self::reinvite`] once our fresh offer is made (with a MIKEY policy, after our KMS
    /// exchange): the re-INVITE or UPDATE goes out, offerless when `made`'s SDP is empty.
    fn reoffer_keyed(&mut self, call_id: &str, method: Method, tx: oneshot::Sender<Result<(), Error>>, made: Result<Made, Error>) -> Result<(), Error> {
        let via = self.via();
        let contact = self.contact();
        let (sdp, offer, ticket) = match made {
            Ok(made) => made,
            Err(e) => {
                let _ = tx.send(Err(e));
                return Ok(());
            }
        };
        let with_offer = !sdp.is_empty();
        let Some(call) = self.calls.get_mut(call_id) else {
            let _ = tx.send(Err(Error::NoSuchCall));
            return Ok(());
        };
        let purpose = match (method == Method::Update, with_offer) {
            (true, _) => Purpose::Update,
            (false, true) => Purpose::Reinvite,
            (false, false) => Purpose::OfferlessReinvite,
        };
        let Some(dialog) = current_dialog(&mut call.dialog, &mut call.early) else {
            let _ = tx.send(Err(Error::NoSuchCall));
            return Ok(());
        };
        let mut request = dialog.request(method, &via)?;
        mediasec_sip::dialog::push_header(&mut request, HeaderName::Contact, &contact)?;
        let mut message = Message::Request(request);
        if with_offer {
            mediasec_sip::body::set_sdp(&mut message, &Sdp::parse(&sdp))?;
        }
        let Message::Request(request) = message else { return Ok(()) };
        let to = dialog_hop(dialog);
        call.reinvite_seq = Some(dialog.local_seq());
        call.offered(offer, ticket);
        call.ticket_answer = None;
        call.unit_waiter = Some(tx);
        let call_id = call_id.to_owned();
        self.send_request(request, to, &call_id, purpose)?;
        Ok(())
    }

    fn hangup(&mut self, call_id: &str) -> Result<(), Error> {
        if self.calls.get(call_id).is_none_or(|c| c.dialog.is_none()) {
            return Err(Error::NoSuchCall);
        }
        // A KMS exchange of this call in flight is abandoned: nothing it was for goes out
        // (but the ACK a 2xx is owed, [`Self::abandon`]).
        self.abandon_keying(call_id)?;
        let via = self.via();
        let call = self.calls.get_mut(call_id).ok_or(Error::NoSuchCall)?;
        let dialog = call.dialog.as_mut().ok_or(Error::NoSuchCall)?;
        let request = dialog.request(Method::Bye, &via)?;
        let to = dialog_hop(dialog);
        call.rtp.stop();
        let call_id = call_id.to_owned();
        self.send_request(request, to, &call_id, Purpose::Bye)?;
        Ok(())
    }

    async fn on_event(&mut self, event: Event, registering: &mut HashMap<TransactionKey, RegisterWaiter>) -> Result<(), Error> {
        match event {
            Event::Request { key, request, .. } => self.on_request(key, *request).await,
            Event::Response { key, response } => {
                if let Some(waiter) = registering.remove(&key) {
                    if response.status.is_provisional() {
                        registering.insert(key, waiter);
                    } else {
                        let mediasec = response.headers.get_all(&security_server()).any(|h| {
                            String::from_utf8_lossy(&h.value()).split(';').any(|p| p.trim().eq_ignore_ascii_case("mediasec"))
                        });
                        let _ = waiter.send(Ok(Registration { status: response.status.code(), mediasec }));
                    }
                    return Ok(());
                }
                let Some((call_id, purpose)) = self.client.get(&key).cloned() else { return Ok(()) };
                if response.status.is_final() && purpose != Purpose::Invite {
                    self.client.remove(&key);
                }
                self.on_response(&call_id, purpose, *response)
            }
            Event::Stray { message, .. } => {
                // A 2xx retransmission after the INVITE transaction ended (another fork, or a
                // lost ACK): handled like any 2xx of that call.
                if let Message::Response(r) = *message
                    && let Some(call_id) = header_text(&r.headers, &HeaderName::CallId)
                    && self.calls.get(&call_id).is_some_and(|c| c.role == Role::Caller)
                    && r.status.is_success()
                {
                    return self.on_response(&call_id, Purpose::Invite, r);
                }
                Ok(())
            }
            Event::Ack { request, .. } => {
                let Some(call_id) = header_text(&request.headers, &HeaderName::CallId) else { return Ok(()) };
                let Some(call) = self.calls.get_mut(&call_id) else { return Ok(()) };
                let confirms = call.role == Role::Callee && call.answered && matches!(call.state, CallState::Setup | CallState::Early);
                if confirms {
                    call.state = CallState::Established;
                    call.early_verified = call.rtp.stats().verified;
                    call.setup = Some(call.started.elapsed());
                }
                if std::mem::take(&mut call.answer_in_ack) {
                    // Our offer went in the 2xx (RFC 3261 §13.3.1.4): the ACK must bring the
                    // answer (§13.2.2.4); media starts (or re-keys) with it.
                    let applied = mediasec_sip::body::sdp(&Message::Request(*request))
                        .map_err(Error::from)
                        .and_then(|a| a.ok_or(Error::Negotiation("ACK without the answer to our offer in the 2xx".into())))
                        .and_then(|answer| {
                            call.e2ae_applied = e2ae_applied(&answer);
                            answer_media(call, self.kms.as_ref(), &answer, &self.config.sdes)
                        });
                    match applied {
                        Ok(media) => {
                            call.apply_media(&media);
                            if !confirms {
                                call.rekeys += 1;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(%call_id, error = %e, "answer in the ACK refused: BYE");
                            return self.end_failed(&call_id, &e.to_string());
                        }
                    }
                }
                Ok(())
            }
            Event::Timeout { key } => {
                if let Some(waiter) = registering.remove(&key) {
                    let _ = waiter.send(Err(Error::CallFailed { code: 408, reason: "REGISTER timed out".into() }));
                }
                if let Some((call_id, purpose)) = self.client.remove(&key)
                    && let Some(call) = self.calls.get_mut(&call_id)
                {
                    match purpose {
                        Purpose::Invite if call.state != CallState::Established => call.fail(408, "INVITE timed out"),
                        Purpose::Reinvite | Purpose::Update | Purpose::OfferlessReinvite | Purpose::Bye => {
                            if let Some(w) = call.unit_waiter.take() {
                                let _ = w.send(Err(Error::CallFailed { code: 408, reason: "timed out".into() }));
                            }
                        }
                        _ => {}
                    }
                }
                Ok(())
            }
            Event::ReliableTimeout { key } => self.reliable_timeout(&key),
            Event::Malformed { .. } => Ok(()),
        }
    }

    fn on_response(&mut self, call_id: &str, purpose: Purpose, response: Response) -> Result<(), Error> {
        let via = self.via();
        let Some(call) = self.calls.get_mut(call_id) else { return Ok(()) };
        let code = response.status.code();
        match purpose {
            Purpose::Register | Purpose::EndingBye | Purpose::Prack | Purpose::Cancel => Ok(()),
            Purpose::Bye => {
                if response.status.is_final() {
                    call.state = CallState::Ended;
                    if let Some(w) = call.unit_waiter.take() {
                        let _ = w.send(Ok(()));
                    }
                }
                Ok(())
            }
            Purpose::Reinvite | Purpose::Update | Purpose::OfferlessReinvite => {
                if !response.status.is_final() {
                    return Ok(());
                }
                let Some(dialog) = current_dialog(&mut call.dialog, &mut call.early) else { return Ok(()) };
                if !response.status.is_success() {
                    // The refused offer's keys never apply.
                    call.rtp.expect(None);
                    if let Some(w) = call.unit_waiter.take() {
                        let _ = w.send(Err(Error::CallFailed { code, reason: String::from_utf8_lossy(&response.reason).into_owned() }));
                    }
                    return Ok(());
                }
                dialog.receive_target_refresh(&response)?;
                let seq = call.reinvite_seq.unwrap_or_else(|| dialog.local_seq());
                let ack = Message::Request(dialog.ack(seq, &via)?);
                let to = dialog_hop(dialog);
                let result = match mediasec_sip::body::sdp(&Message::Response(response))? {
                    // Delayed offer: the 2xx's offer is answered in the ACK (RFC 3261 §13.2.2.4),
                    // once our KMS work (a Ticket Resolve) is done.
                    Some(offer) if purpose == Purpose::OfferlessReinvite => {
                        let (local, version, ssrc) = answer_version(call);
                        let work = answer_work(self.config.security, self.kms.clone(), self.config.sdes.clone(), offer.clone(), local, version, ssrc);
                        return self.start(work, Step::Ack { call_id: call_id.to_owned(), purpose, ack, to, offer, local, version });
                    }
                    Some(answer) => answer_media(call, self.kms.as_ref(), &answer, &self.config.sdes),
                    None => Err(Error::Negotiation("re-INVITE 2xx without an offer or answer".into())),
                };
                self.reinvite_answered(call_id, purpose, ack, to, result)
            }
            Purpose::Invite => self.on_invite_response(call_id, response, &via),
        }
    }

    /// The 2xx of our re-INVITE or UPDATE processed (`result`: the media of its answer, or of
    /// our answer in the `ack` to its offer): the ACK goes out (not for UPDATE), the media
    /// re-keys, the API request returns; an offer in the 2xx we could not accept ends the call
    /// (RFC 3261 §13.2.2.4).
    fn reinvite_answered(&mut self, call_id: &str, purpose: Purpose, ack: Message, to: NextHop, result: Result<Media, Error>) -> Result<(), Error> {
        if purpose != Purpose::Update {
            send_ack(&self.endpoint, ack, to)?;
        }
        let Some(call) = self.calls.get_mut(call_id) else { return Ok(()) };
        let refused = result.as_ref().err().map(ToString::to_string).filter(|_| purpose == Purpose::OfferlessReinvite);
        let outcome = result.map(|media| {
            call.apply_media(&media);
            call.rekeys += 1;
        });
        if let Some(w) = call.unit_waiter.take() {
            let _ = w.send(outcome);
        }
        match refused {
            // §13.2.2.4: an offer in the 2xx we cannot accept is answered, then BYE.
            Some(reason) => self.end_failed(call_id, &reason),
            None => Ok(()),
        }
    }

    /// Our answer in an ACK is ready (after our KMS work): the ACK goes out and the call
    /// goes on as its 2xx would have taken it ([`Self::invite_confirmed`],
    /// [`Self::reinvite_answered`]).
    #[allow(clippy::too_many_arguments)]
    fn ack_keyed(&mut self, call_id: &str, purpose: Purpose, mut ack: Message, to: NextHop, offer: &Sdp, local: SocketAddr, version: u64, answered: Result<(String, Media), Error>) -> Result<(), Error> {
        let security = self.config.security;
        let Some(call) = self.calls.get_mut(call_id) else { return Ok(()) };
        let result = answered_in_request(call, answered, offer, local, version, &mut ack, security);
        if purpose == Purpose::Invite {
            return self.invite_confirmed(call_id, ack, to, result.map(Some));
        }
        self.reinvite_answered(call_id, purpose, ack, to, result)
    }

    fn on_invite_response(&mut self, call_id: &str, response: Response, via: &str) -> Result<(), Error> {
        let policy = self.config.sdes.clone();
        let Some(call) = self.calls.get_mut(call_id) else { return Ok(()) };
        let status = response.status;
        if let Ok(Some(answer)) = mediasec_sip::body::sdp(&Message::Response(response.clone()))
            && status.code() < 300
        {
            call.e2ae_applied = e2ae_applied(&answer);
        }
        if status.is_provisional() {
            if call.state == CallState::Established {
                return Ok(());
            }
            if let Some(rseq) = reliable_rseq(&response) {
                return self.on_reliable_provisional(call_id, response, rseq, via);
            }
            // Early media (RFC 3264 answer in a 18x): start as soon as the keys are known.
            if let Ok(Some(answer)) = mediasec_sip::body::sdp(&Message::Response(response))
                && status.code() != 100
            {
                match answer_media(call, self.kms.as_ref(), &answer, &policy) {
                    Ok(media) => {
                        call.apply_media(&media);
                        call.state = CallState::Early;
                    }
                    Err(e) => tracing::info!(error = %e, "early answer not used"),
                }
            }
            return Ok(());
        }
        if !status.is_success() {
            // A call already failed (or given up on 64·T1 after its CANCEL, RFC 3261 §9.1) keeps
            // its outcome: a late final response changes nothing.
            if matches!(call.state, CallState::Setup | CallState::Early) {
                match call.refused_reliably.take() {
                    // The 487 of the INVITE we CANCELled after refusing the offer of its
                    // reliable 18x.
                    Some(why) => call.fail_refused(why),
                    None => {
                        let mut reason = String::from_utf8_lossy(&response.reason).into_owned();
                        // A refused MIKEY-DH or MIKEY-SAKKE offer: what the callee's error
                        // message says, and whether the callee signed it.
                        if let (Some(keying @ (Keying::Dh(_) | Keying::Sakke(_))), Some(kms)) = (call.ticket.as_ref(), self.kms.as_ref())
                            && let Ok(Some(answer)) = mediasec_sip::body::sdp(&Message::Response(response))
                            && let Some(why) = ticket::lock(kms).high_security.as_ref().and_then(|hs| match keying {
                                Keying::Dh(pending) => high_security::refusal(hs, pending, &answer, unix_now()),
                                Keying::Sakke(pending) => mikey_sakke::refusal(hs, pending, &answer),
                                Keying::Ticket(_) => None,
                            })
                        {
                            reason = format!("{reason}: {why}");
                        }
                        call.fail(status.code(), &reason);
                    }
                }
            }
            return Ok(());
        }
        let id = DialogId::of_received_response(&response).ok_or(mediasec_sip::Error::NotADialog("2xx without tags"))?;
        // A retransmission of the 2xx we confirmed: the same ACK again (§13.2.2.4) — or none
        // yet while our answer to its offer waits for our KMS (the ACK goes when it is ready).
        if let Some(dialog) = call.dialog.as_ref()
            && dialog.id() == &id
        {
            let ack = match &call.ack {
                Some(ack) => ack.clone(),
                None if call.keying.is_some() => return Ok(()),
                None => dialog.ack(1, via)?,
            };
            let to = dialog_hop(dialog);
            return send_ack(&self.endpoint, Message::Request(ack), to);
        }
        let dialog = match call.early.take() {
            // The 2xx of the early dialog a reliable 18x created confirms it (§13.2.2.4).
            Some((mut early, _)) if early.id() == &id => {
                early.confirm(&response)?;
                early
            }
            other => {
                call.early = other;
                Dialog::uac(&call.invite, &response)?
            }
        };
        let mut ack = Message::Request(dialog.ack(1, via)?);
        let to = dialog_hop(&dialog);
        let extra_fork = call.dialog.is_some() || matches!(call.state, CallState::Failed(..));
        let sdp = mediasec_sip::body::sdp(&Message::Response(response))?;
        // Our INVITE had no offer and no reliable 18x brought one: an SDP in the 2xx is the
        // offer, answered in the ACK (RFC 3261 §13.2.1, §13.2.2.4).
        let offered = !call.answered_reliably && call.offer.is_none() && call.ticket.is_none();
        if extra_fork {
            // Another fork answered too (RFC 3261 §13.2.2.4), or a 2xx came after the call
            // failed (one given up 64·T1 after its CANCEL, §9.1): ACK and BYE it. When it
            // carries an offer (our INVITE had none) the ACK must carry an answer (§13.2.2.4):
            // one refusing every stream (RFC 3264 §6, port 0, no keys) — no KMS work (no
            // Ticket Resolve) for a session ended at once (docs/sip.md §2 "Forked answers").
            if offered && let Some(offer) = &sdp {
                let refusal = refusing_answer(offer, call.rtp.local_addr(), call.sdp_version, &Error::Negotiation("another fork answered first".into()))?;
                mediasec_sip::body::set_sdp(&mut ack, &Sdp::parse(&refusal))?;
            }
            if call.dialog.is_some() {
                call.extra_forks_ended += 1;
            } else {
                tracing::info!(%call_id, "2xx after the call failed: ACK and BYE");
            }
            send_ack(&self.endpoint, ack, to)?;
            let mut dialog = dialog;
            let bye = dialog.request(Method::Bye, &self.via())?;
            self.send_request(bye, dialog_hop(&dialog), call_id, Purpose::EndingBye)?;
            return Ok(());
        }
        if offered && let Some(offer) = sdp {
            // Our answer goes in the ACK once our KMS work (Ticket Resolve) is done. The
            // dialog is confirmed now: a retransmission of this 2xx waits for that ACK, another
            // fork's 2xx is an extra fork.
            call.delayed_offer = Some(offer.to_string());
            let (local, version, ssrc) = answer_version(call);
            call.dialog = Some(dialog);
            let work = answer_work(self.config.security, self.kms.clone(), policy, offer.clone(), local, version, ssrc);
            return self.start(work, Step::Ack { call_id: call_id.to_owned(), purpose: Purpose::Invite, ack, to, offer, local, version });
        }
        let media = match sdp {
            // The exchange completed reliably in a 18x (and maybe an UPDATE after it): an SDP
            // in the 2xx repeats an answer already applied (RFC 6337 §3.1), none is needed —
            // or repeats an offer our answer refused, which leaves the call without media.
            _ if call.answered_reliably => call.refused_reliably.take().map_or(Ok(None), |why| Err(Error::Negotiation(why))),
            Some(answer) => answer_media(call, self.kms.as_ref(), &answer, &policy).map(Some),
            None => Err(Error::Negotiation("2xx without an SDP answer".into())),
        };
        call.dialog = Some(dialog);
        self.invite_confirmed(call_id, ack, to, media)
    }

    /// The first 2xx of our INVITE processed (`media`: of its answer, of our answer in the
    /// `ack` to its offer, or none needed after a reliable 18x): the ACK goes out (and is kept
    /// for the 2xx's retransmissions); the call is established, or — refused against policy —
    /// ended with BYE (RFC 3261 §13.2.2.4).
    fn invite_confirmed(&mut self, call_id: &str, ack: Message, to: NextHop, media: Result<Option<Media>, Error>) -> Result<(), Error> {
        let Message::Request(ack) = ack else { return Ok(()) };
        send_ack(&self.endpoint, Message::Request(ack.clone()), to)?;
        let Some(call) = self.calls.get_mut(call_id) else { return Ok(()) };
        call.ack = Some(ack);
        match media {
            Ok(media) => {
                call.early_verified = call.rtp.stats().verified;
                if let Some(media) = media {
                    call.apply_media(&media);
                }
                call.state = CallState::Established;
                call.setup = Some(call.started.elapsed());
                if let Some(w) = call.waiter.take() {
                    let _ = w.send(Ok(call_id.to_owned()));
                }
                Ok(())
            }
            Err(e) => {
                // Refused against policy: the dialog exists, so it is ended with BYE.
                tracing::info!(error = %e, "answer (or offer in the 2xx) refused");
                let reason = e.to_string();
                if let Some(w) = call.waiter.take() {
                    let _ = w.send(Err(e));
                }
                self.end_failed(call_id, &reason)
            }
        }
    }

    /// Ends a call whose offer/answer failed after its 2xx (RFC 3261 §13.2.2.4): it fails
    /// (488, `reason`), its media stops and a BYE goes out in its dialog.
    fn end_failed(&mut self, call_id: &str, reason: &str) -> Result<(), Error> {
        let via = self.via();
        let Some(call) = self.calls.get_mut(call_id) else { return Ok(()) };
        call.fail(488, reason);
        let Some(dialog) = call.dialog.as_mut() else { return Ok(()) };
        let bye = dialog.request(Method::Bye, &via)?;
        let to = dialog_hop(dialog);
        self.send_request(bye, to, call_id, Purpose::EndingBye)?;
        Ok(())
    }

    /// A reliable 18x (RFC 3262 §4): in order, it creates (or continues) the early dialog, its
    /// answer is applied as early media, and it is PRACKed with `RAck`; a retransmission of
    /// the last one is discarded (its PRACK's client transaction retransmits on its own) and
    /// one out of order is neither PRACKed nor processed.
    fn on_reliable_provisional(&mut self, call_id: &str, response: Response, rseq: u32, via: &str) -> Result<(), Error> {
        let policy = self.config.sdes.clone();
        let Some(call) = self.calls.get_mut(call_id) else { return Ok(()) };
        let refused_before = call.refused_reliably.is_some();
        let id = DialogId::of_received_response(&response).ok_or(mediasec_sip::Error::NotADialog("reliable 1xx without a To tag"))?;
        if !call.early.as_ref().is_some_and(|(d, _)| d.id() == &id) {
            // A new early dialog (the first, or another fork's: the last one is kept).
            call.early = Some((Dialog::uac(&call.invite, &response)?, Sequence::default()));
        }
        let Some((dialog, sequence)) = call.early.as_mut() else { return Ok(()) };
        match sequence.accept(rseq) {
            Received::Acknowledge => {}
            Received::Duplicate | Received::OutOfOrder => {
                tracing::debug!(rseq, "reliable provisional response discarded (RFC 3262 §4)");
                return Ok(());
            }
        }
        let cseq = response.headers.typed::<mediasec_sip::core::CSeq>().and_then(Result::ok).map_or(1, |c| c.sequence);
        let mut prack = dialog.request(Method::Prack, via)?;
        let rack = RAck { rseq, cseq, method: Method::Invite.as_bytes().to_vec() };
        mediasec_sip::dialog::push_header(&mut prack, HeaderName::RAck, &rack.to_string())?;
        let to = dialog_hop(dialog);
        let prack = Message::Request(prack);
        let offerless = call.offer.is_none() && call.ticket.is_none();
        if !call.answered_reliably
            && let Ok(Some(sdp)) = mediasec_sip::body::sdp(&Message::Response(response))
        {
            if offerless {
                // Our INVITE had no offer: this is the offer, answered in the PRACK (RFC 3262
                // §5) once our KMS work is done. The exchange is under way: no later SDP of
                // this INVITE is a new offer.
                call.delayed_offer = Some(sdp.to_string());
                call.answered_reliably = true;
                let (local, version, ssrc) = answer_version(call);
                let work = answer_work(self.config.security, self.kms.clone(), policy, sdp.clone(), local, version, ssrc);
                return self.start(work, Step::Prack { call_id: call_id.to_owned(), prack, to, offer: sdp, local, version, refused_before });
            }
            match answer_media(call, self.kms.as_ref(), &sdp, &policy) {
                Ok(media) => {
                    call.apply_media(&media);
                    call.state = CallState::Early;
                    call.answered_reliably = true;
                }
                Err(e) => tracing::info!(error = %e, offerless, "answer in a reliable 1xx not used"),
            }
        }
        self.prack_ready(call_id, prack, to, refused_before)
    }

    /// Our answer to the offer of a reliable 18x is ready (after our KMS work): it goes in
    /// the PRACK, or a refusal does (RFC 3262 §5).
    #[allow(clippy::too_many_arguments)]
    fn prack_keyed(&mut self, call_id: &str, mut prack: Message, to: NextHop, offer: &Sdp, local: SocketAddr, version: u64, refused_before: bool, answered: Result<(String, Media), Error>) -> Result<(), Error> {
        let security = self.config.security;
        let Some(call) = self.calls.get_mut(call_id) else { return Ok(()) };
        match answered_in_request(call, answered, offer, local, version, &mut prack, security) {
            Ok(media) => {
                call.apply_media(&media);
                call.state = CallState::Early;
            }
            Err(e) => {
                tracing::info!(error = %e, "offer in a reliable 1xx not used");
                // The PRACK carries our refusal: the exchange is complete all the same (RFC
                // 3262 §5), so no later SDP of this INVITE is a new offer.
                call.refused_reliably = Some(match &e {
                    Error::Negotiation(why) => why.clone(),
                    other => other.to_string(),
                });
            }
        }
        self.prack_ready(call_id, prack, to, refused_before)
    }

    /// The PRACK of a reliable 18x goes out; if its offer was just refused, the INVITE is
    /// CANCELled.
    fn prack_ready(&mut self, call_id: &str, prack: Message, to: NextHop, refused_before: bool) -> Result<(), Error> {
        let Some(call) = self.calls.get_mut(call_id) else { return Ok(()) };
        let refused_now = !refused_before && call.refused_reliably.is_some();
        let invite = call.invite.clone();
        let Message::Request(prack) = prack else { return Ok(()) };
        self.send_request(prack, to, call_id, Purpose::Prack)?;
        if refused_now {
            // Nothing of this call can be used: rather than ring on to a 2xx that would set
            // up a session without media, CANCEL the INVITE (RFC 3261 §9.1 — allowed now, a
            // provisional response came) to the address the INVITE went to. Its 487 ends the
            // call; a 2xx crossing the CANCEL is ACKed and ended with BYE (§9.1, §13.2.2.4).
            let cancel = mediasec_sip::dialog::cancel_for(&invite).ok_or_else(|| Error::Negotiation("CANCEL: the INVITE lacks a Via, From, To, Call-ID or CSeq".into()))?;
            let to = self.outbound_hop()?;
            self.send_request(cancel, to, call_id, Purpose::Cancel)?;
            // §9.1: a UAS need not send the 487 (RFC 2543 ones do not); give up after 64·T1.
            self.schedule(self.config.timers.t1 * 64, Op::CancelExpired(call_id.to_owned()));
        }
        Ok(())
    }

    /// RFC 3261 §9.1: no final response to the INVITE within 64·T1 of its CANCEL — the UAC
    /// "SHOULD then consider the original transaction cancelled" and "SHOULD destroy the client
    /// transaction": the call fails as its 487 would have failed it (488, the refusal's
    /// reason), and the INVITE's client transaction is given up ([`Command::Abandon`]; in
    /// Proceeding it has no timer, so it would stay in the endpoint forever). A late 487 is
    /// then still ACKed by the endpoint, and a late 2xx comes as a stray that
    /// [`Self::on_invite_response`] ACKs and ends with BYE; neither changes the outcome.
    fn cancel_expired(&mut self, call_id: &str) -> Result<(), Error> {
        let Some(call) = self.calls.get_mut(call_id) else { return Ok(()) };
        if !matches!(call.state, CallState::Setup | CallState::Early) {
            return Ok(());
        }
        let Some(why) = call.refused_reliably.take() else { return Ok(()) };
        tracing::info!(%call_id, "no final response to the INVITE within 64*T1 of its CANCEL (RFC 3261 §9.1): considered cancelled");
        call.fail_refused(why);
        let invite = self.client.iter().find(|(_, (c, purpose))| c == call_id && *purpose == Purpose::Invite).map(|(key, _)| key.clone());
        if let Some(key) = invite {
            self.client.remove(&key);
            self.endpoint.send(Command::Abandon { key })?;
        }
        Ok(())
    }

    /// A PRACK (RFC 3262 §3): it must name our outstanding reliable 1xx, in the dialog, else
    /// 481; its 200 lets a 2xx that waited for it go out.
    fn incoming_prack(&mut self, key: &TransactionKey, request: &Request, call_id: &str) -> Result<(), Error> {
        let id = DialogId::of_received_request(request);
        let rack = request.headers.typed::<RAck>().and_then(Result::ok);
        let acknowledged = match (self.calls.get_mut(call_id), rack) {
            (Some(call), Some(rack)) if call.dialog.as_ref().is_some_and(|d| Some(d.id()) == id.as_ref()) => {
                // §12.2.2: an in-dialog request with a CSeq not above the last one gets 500.
                if let Some(Err(e)) = call.dialog.as_mut().map(|d| d.receive_request(request)) {
                    tracing::info!(error = %e, "PRACK refused");
                    return self.respond(key, request, 500, "Server Internal Error", None, None);
                }
                let cseq = call.invite.headers.typed::<mediasec_sip::core::CSeq>().and_then(Result::ok).map_or(1, |c| c.sequence);
                call.reliable.as_mut().is_some_and(|n| n.acknowledge(&rack, cseq, Method::Invite.as_bytes()))
            }
            _ => false,
        };
        if !acknowledged {
            return self.respond(key, request, 481, "Call/Transaction Does Not Exist", None, None);
        }
        self.respond(key, request, 200, "OK", None, None)?;
        if let Some(call) = self.calls.get_mut(call_id)
            && std::mem::take(&mut call.answer_in_prack)
        {
            // Our offer went in the reliable 1xx: the PRACK brings the answer (RFC 3262 §5).
            let policy = self.config.sdes.clone();
            let applied = mediasec_sip::body::sdp(&Message::Request(request.clone()))
                .map_err(Error::from)
                .and_then(|a| a.ok_or(Error::Negotiation("PRACK without the answer to our offer in the reliable 1xx".into())))
                .and_then(|answer| {
                    call.e2ae_applied = e2ae_applied(&answer);
                    answer_media(call, self.kms.as_ref(), &answer, &policy)
                });
            match applied {
                Ok(media) => {
                    call.apply_media(&media);
                    call.state = CallState::Early;
                }
                Err(e) => {
                    tracing::info!(error = %e, "answer in the PRACK refused: 488 to the INVITE");
                    let (invite, to) = (call.invite.clone(), call.dialog.as_ref().map(|d| d.local_header().clone()));
                    call.fail(488, &e.to_string());
                    call.answered = true;
                    let Some(invite_key) = call.invite_key.clone() else { return Ok(()) };
                    let status = StatusCode::new(488).ok_or(Error::Negotiation("status".into()))?;
                    let mut b = ResponseBuilder::to_request(&invite, status, "Not Acceptable Here")?.header(HeaderName::Warning, warning(&e))?;
                    if let Some(to) = to {
                        b = b.set_header(&HeaderName::To, to)?;
                    }
                    self.endpoint.send(Command::Respond { key: invite_key, response: b.build() })?;
                    return Ok(());
                }
            }
        }
        if let Some(call) = self.calls.get_mut(call_id)
            && std::mem::take(&mut call.answer_waits_prack)
        {
            self.answer_now(call_id)?;
        }
        Ok(())
    }

    /// RFC 3262 §3: a reliable 1xx not PRACKed within 64·T1 fails the INVITE with a 5xx.
    fn reliable_timeout(&mut self, key: &TransactionKey) -> Result<(), Error> {
        let Some((call_id, call)) = self.calls.iter_mut().find(|(_, c)| c.invite_key.as_ref() == Some(key) && !c.answered) else { return Ok(()) };
        let (call_id, invite) = (call_id.clone(), call.invite.clone());
        let to = call.dialog.as_ref().map(|d| d.local_header().clone());
        call.fail(504, "no PRACK for the reliable provisional response");
        call.answered = true;
        tracing::info!(%call_id, "no PRACK within 64*T1: 504");
        self.respond(key, &invite, 504, "Server Time-out", to, None)
    }

    async fn on_request(&mut self, key: TransactionKey, request: Request) -> Result<(), Error> {
        let call_id = header_text(&request.headers, &HeaderName::CallId).unwrap_or_default();
        let in_dialog = DialogId::of_received_request(&request).is_some();
        match request.method {
            Method::Invite if !in_dialog => self.incoming_call(key, request, call_id).await,
            Method::Invite | Method::Update => self.incoming_reinvite(key, &request, &call_id),
            Method::Cancel => {
                self.respond(&key, &request, 200, "OK", None, None)?;
                if self.calls.get(&call_id).is_some_and(|c| !c.answered) {
                    // Our answer or offer may still wait for our KMS: abandoned, nothing of
                    // it will be sent.
                    self.abandon_keying(&call_id)?;
                }
                if let Some(call) = self.calls.get_mut(&call_id)
                    && !call.answered
                    && let Some(invite_key) = call.invite_key.clone()
                {
                    let invite = call.invite.clone();
                    let to = call.dialog.as_ref().map(|d| d.local_header().clone());
                    call.fail(487, "cancelled");
                    self.respond(&invite_key, &invite, 487, "Request Terminated", to, None)?;
                }
                Ok(())
            }
            Method::Bye => {
                let known = self.calls.get(&call_id).is_some_and(|c| c.dialog.as_ref().is_some_and(|d| Some(d.id()) == DialogId::of_received_request(&request).as_ref()));
                if known {
                    // KMS work of this call in flight is abandoned (a re-INVITE of the peer
                    // waiting for our answer gets its 487, RFC 3261 §15.1.2).
                    self.abandon_keying(&call_id)?;
                }
                match self.calls.get_mut(&call_id).filter(|_| known) {
                    Some(call) => {
                        call.rtp.stop();
                        call.state = CallState::Ended;
                        self.respond(&key, &request, 200, "OK", None, None)
                    }
                    None => self.respond(&key, &request, 481, "Call/Transaction Does Not Exist", None, None),
                }
            }
            Method::Options => self.respond(&key, &request, 200, "OK", None, None),
            Method::Prack => self.incoming_prack(&key, &request, &call_id),
            _ => self.respond(&key, &request, 501, "Not Implemented", None, None),
        }
    }

    /// Sends a response through a server transaction; `to` replaces `To` (our tag), `body`
    /// is an SDP answer.
    fn respond(&self, key: &TransactionKey, request: &Request, code: u16, reason: &str, to: Option<Bytes>, body: Option<&str>) -> Result<(), Error> {
        self.respond_with(key, request, code, reason, to, body, None)
    }

    /// [`Self::respond`], and with `rseq` a reliable provisional response (RFC 3262 §3:
    /// `Require: 100rel` and `RSeq`, retransmitted by the endpoint until its PRACK).
    #[allow(clippy::too_many_arguments)]
    fn respond_with(&self, key: &TransactionKey, request: &Request, code: u16, reason: &str, to: Option<Bytes>, body: Option<&str>, rseq: Option<u32>) -> Result<(), Error> {
        let status = StatusCode::new(code).ok_or(Error::Negotiation("status code".into()))?;
        let mut b = ResponseBuilder::to_request(request, status, reason.to_owned())?;
        if let Some(to) = to {
            b = b.set_header(&HeaderName::To, to)?;
        }
        if request.method == Method::Invite && code < 300 && code > 100 {
            b = b.header(HeaderName::Contact, self.contact())?;
            // RFC 3261 §12.1.1: the dialog-creating response copies every Record-Route, in
            // order, so the caller's in-dialog requests (ACK, BYE) take the proxies' path.
            for rr in request.headers.get_all(&HeaderName::RecordRoute) {
                b = b.header(HeaderName::RecordRoute, rr.value().into_owned())?;
            }
        }
        if let Some(rseq) = rseq {
            b = b.header(HeaderName::Require, rel::OPTION_TAG)?.header(HeaderName::RSeq, rseq.to_string())?;
        }
        if let Some(sdp) = body {
            b = b.header(HeaderName::ContentType, "application/sdp")?.body(sdp.to_owned());
        }
        let response = b.build();
        let command = if rseq.is_some() {
            Command::RespondReliable { key: key.clone(), response }
        } else if request.method == Method::Invite && status.is_success() {
            Command::Respond2xx { key: key.clone(), response }
        } else {
            Command::Respond { key: key.clone(), response }
        };
        self.endpoint.send(command)?;
        Ok(())
    }

    async fn incoming_call(&mut self, key: TransactionKey, request: Request, call_id: String) -> Result<(), Error> {
        if self.calls.contains_key(&call_id) {
            // Same Call-ID through another fork path: one call per Call-ID here (§8.2.2.2).
            return self.respond(&key, &request, 482, "Loop Detected", None, None);
        }
        let tag = random_token();
        let dialog = Dialog::uas(&request, &tag)?;
        let to = dialog.local_header().clone();
        let rtp = self.new_rtp().await?;
        let offer = mediasec_sip::body::sdp(&Message::Request(request.clone()));
        let applied = offer.as_ref().ok().and_then(Option::as_ref).is_some_and(e2ae_applied);
        let reliable = answers_reliably(&request, self.config.answering);
        let offer = match offer {
            Ok(Some(offer)) => Ok(offer),
            Ok(None) => return self.offer_first(key, request, call_id, dialog, rtp, reliable),
            Err(e) => Err(Error::from(e)),
        };
        self.seq += 1;
        let peer = header_text(&request.headers, &HeaderName::From).unwrap_or_default();
        let (local, ssrc) = (rtp.local_addr(), rtp.ssrc());
        // The call exists from now on, while our answer may wait for our KMS: a CANCEL finds
        // it (487, and the KMS work is abandoned); the INVITE's server transaction absorbs
        // its retransmissions.
        let call = Call {
            dialog: Some(dialog),
            invite_key: Some(key.clone()),
            e2ae_applied: applied,
            mikey_peer: caller_identity(&request),
            ..Call::new(Role::Callee, self.seq, request.clone(), rtp, Instant::now(), peer)
        };
        self.calls.insert(call_id.clone(), call);
        let (security, kms, sdes) = (self.config.security, self.kms.clone(), self.config.sdes.clone());
        let step = Step::IncomingAnswer { call_id: call_id.clone(), key: key.clone(), request: request.clone(), to, offer: offer.as_ref().ok().cloned() };
        let work = async move {
            Keyed::Answer(match offer {
                Ok(offer) => answer_offer(security, kms, sdes, offer, local, 1, ssrc).await,
                Err(e) => Err(e),
            })
        };
        self.start(work, step)?;
        self.trying_while_keying(&call_id, &key, &request)
    }

    /// RFC 3261 §8.2.6.1, §17.2.1: an INVITE whose response waits for our KMS (which may take
    /// longer than 200 ms) gets `100 Trying` at once.
    fn trying_while_keying(&self, call_id: &str, key: &TransactionKey, request: &Request) -> Result<(), Error> {
        if self.calls.get(call_id).is_some_and(|c| c.keying.is_some()) {
            self.respond(key, request, 100, "Trying", None, None)?;
        }
        Ok(())
    }

    /// [`Self::incoming_call`] once our answer is made (after our KMS work, for a MIKEY offer):
    /// a 488 refusing the offer, or the reliable 18x with the answer, or 180 (and 183 with early
    /// media); the 200 follows ([`Self::schedule_answer`]).
    fn incoming_answer_keyed(&mut self, call_id: String, key: TransactionKey, request: &Request, to: Bytes, offer: Option<&Sdp>, negotiated: Result<(String, Media), Error>) -> Result<(), Error> {
        let answering = self.config.answering;
        let reliable = answers_reliably(request, answering);
        let Some(call) = self.calls.get_mut(&call_id) else { return Ok(()) };
        match negotiated {
            Err(e) => {
                tracing::info!(%call_id, error = %e, "offer refused with 488");
                call.state = CallState::Failed(488, e.to_string());
                // The key-management error goes back in the key-management attribute of a
                // refusing answer *(ours)*: the MIKEY Error message of the failed exchange.
                let body = match (&e, offer) {
                    (Error::KeyRefused { mikey_error: Some(_), .. }, Some(offer)) => refusing_answer(offer, call.rtp.local_addr(), 1, &e).ok(),
                    _ => None,
                };
                let status = StatusCode::new(488).ok_or(Error::Negotiation("status".into()))?;
                let mut builder = ResponseBuilder::to_request(request, status, "Not Acceptable Here")?.set_header(&HeaderName::To, to)?.header(HeaderName::Warning, warning(&e))?;
                if let Some(body) = body {
                    builder = builder.header(HeaderName::ContentType, "application/sdp")?.body(body);
                }
                let response = builder.build();
                self.endpoint.send(Command::Respond { key, response })?;
                Ok(())
            }
            Ok((answer, media)) => {
                // Key fingerprints are known from the offer on (every fork sees the offer key).
                if let Protection::Srtp { peer_key, .. } = &media.protection {
                    call.peer_key = Some(peer_key.clone());
                }
                call.answer = Some((answer.clone(), media.clone()));
                if reliable {
                    // RFC 3262 §3/§5: the answer goes in the first reliable 1xx; early media
                    // starts with it. A 183 with early media, else (100rel required) a 180.
                    let mut numbering = Numbering::starting_at(rand::random::<u32>() & rel::MAX_FIRST_RSEQ);
                    let rseq = numbering.allocate();
                    call.reliable = Some(numbering);
                    call.apply_media(&media);
                    call.state = CallState::Early;
                    let (code, reason) = if answering.early_media { (183, "Session Progress") } else { (180, "Ringing") };
                    self.respond_with(&key, request, code, reason, Some(to), Some(&answer), rseq)?;
                    self.schedule_answer(call_id);
                    return Ok(());
                }
                self.respond(&key, request, 180, "Ringing", Some(to.clone()), None)?;
                if !answering.auto {
                    return Ok(());
                }
                if answering.early_media {
                    self.respond(&key, request, 183, "Session Progress", Some(to), Some(&answer))?;
                    if let Some(call) = self.calls.get_mut(&call_id) {
                        call.apply_media(&media);
                        call.state = CallState::Early;
                    }
                }
                self.schedule_answer(call_id);
                Ok(())
            }
        }
    }

    /// With automatic answering, the 200 after the configured delay.
    fn schedule_answer(&self, call_id: String) {
        let answering = self.config.answering;
        if answering.auto {
            self.schedule(answering.delay, Op::AnswerNow(call_id));
        }
    }

    /// The UE's own timers (the delayed 200, the give-up after a CANCEL): `op` comes back to
    /// the UE task after `after`, handled like any other operation.
    fn schedule(&self, after: Duration, op: Op) {
        let ops = self.ops.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let _ = ops.send(op);
        });
    }

    /// Our initial offer (RFC 3264 §5, `o=` version 1), SDES or plain — in the INVITE when we
    /// call, in the 200 or the reliable 18x when an offerless INVITE reaches us (RFC 3261
    /// §13.2.1, RFC 3262 §5). With [`UeConfig::e2ae`] and SDES its audio stream carries
    /// `a=3ge2ae:requested` whichever side offers: TS 24.229 §7.5.2 defines the media-level
    /// indication as the wish of "the sender" that end-to-access-edge security is applied
    /// (TS 33.328 §7.2.1), the answer's `a=3ge2ae:applied` saying it was.
    fn initial_offer(&self, local: SocketAddr) -> Result<Offer, Error> {
        let mut offer = offer_answer::offer(local, 1, self.config.security, &self.config.sdes, &mut fill_random)?;
        if self.config.e2ae && matches!(self.config.security, Security::Sdes { .. }) {
            let mut body = Sdp::parse(&offer.sdp);
            mediasec_sdp::e2ae::add(&mut body, 0, &mediasec_sdp::E2aeIndication::Requested)?;
            offer.sdp = body.to_string();
        }
        Ok(offer)
    }

    /// An offerless INVITE (RFC 3261 §13.2.1): we make the offer. `reliable` (RFC 3262 §5): our
    /// offer goes in the reliable 183 (180 without early media), its answer comes in the PRACK,
    /// media starts then, and the 200 (no SDP) follows the PRACK. Otherwise (the caller does
    /// not support 100rel, or early media is off): an unreliable 180, our offer in the 200
    /// (§13.3.1.4), its answer from the ACK (§13.2.2.4), media starting with it.
    ///
    /// Under a MIKEY policy the roles of RFC 4567 §3 swap: we are the MIKEY Initiator, keying
    /// our offer to the caller ([`caller_identity`]) through [`mikey_offer`] (MIKEY-TICKET: a
    /// Ticket Request to our KMS for the caller, then TRANSFER_INIT), and the caller's answer
    /// must carry its MIKEY response (TRANSFER_RESP or DH_RESP; none for MIKEY-SAKKE), verified
    /// as a caller verifies one. An anonymous caller that nothing identifies gets 433 Anonymity
    /// Disallowed (RFC 5079 §5): we cannot address a ticket, DH_INIT or I_MESSAGE to it, and it
    /// may call again with an offer or its identity. An offer we cannot make (no KMS access,
    /// the KMS refuses the ticket) gets 488 with a `Warning`; either failure is the call's
    /// recorded outcome.
    fn offer_first(&mut self, key: TransactionKey, request: Request, call_id: String, dialog: Dialog, rtp: RtpEndpoint, reliable: bool) -> Result<(), Error> {
        let to = dialog.local_header().clone();
        let security = self.config.security;
        let peer = caller_identity(&request);
        self.seq += 1;
        let from = header_text(&request.headers, &HeaderName::From).unwrap_or_default();
        let (local, ssrc) = (rtp.local_addr(), rtp.ssrc());
        // The call exists from now on, while our offer may wait for our KMS (see
        // [`Self::incoming_call`]).
        let call = Call {
            dialog: Some(dialog),
            invite_key: Some(key.clone()),
            answer_in_ack: !reliable,
            answer_in_prack: reliable,
            mikey_peer: peer.clone(),
            ..Call::new(Role::Callee, self.seq, request.clone(), rtp, Instant::now(), from)
        };
        self.calls.insert(call_id.clone(), call);
        let step = Step::IncomingOffer { call_id: call_id.clone(), key: key.clone(), request: request.clone(), to, reliable };
        match (security.is_mikey(), peer) {
            (false, _) => {
                let made = self.initial_offer(local).map(|o| (o.sdp.clone(), Some(o), None));
                self.resume(step, Keyed::offered(made))
            }
            (true, Some(peer)) => {
                self.start(offer_work(security, self.kms.clone(), local, 1, ssrc, peer), step)?;
                self.trying_while_keying(&call_id, &key, &request)
            }
            (true, None) => self.resume(step, Keyed::offered(Err(Error::Negotiation("offerless INVITE from an anonymous caller: no identity to key a MIKEY offer to".into())))),
        }
    }

    /// [`Self::offer_first`] once our offer is made (after our KMS work under a MIKEY
    /// policy): it goes in the reliable 18x, or the 200 carries it after an unreliable 180;
    /// an offer we cannot make gets 433 (anonymous caller, MIKEY) or 488.
    fn incoming_offer_keyed(&mut self, call_id: String, key: &TransactionKey, request: &Request, to: Bytes, reliable: bool, made: Result<Made, Error>) -> Result<(), Error> {
        let security = self.config.security;
        let early_media = self.config.answering.early_media;
        let Some(call) = self.calls.get_mut(&call_id) else { return Ok(()) };
        let (text, offer, keying) = match made {
            Ok(made) => made,
            Err(e) => {
                let (code, reason) = if security.is_mikey() && call.mikey_peer.is_none() { (433, "Anonymity Disallowed") } else { (488, "Not Acceptable Here") };
                tracing::info!(%call_id, error = %e, code, "no offer to make for an offerless INVITE");
                call.state = CallState::Failed(code, e.to_string());
                call.rtp.stop();
                let status = StatusCode::new(code).ok_or(Error::Negotiation("status".into()))?;
                let response = ResponseBuilder::to_request(request, status, reason)?.set_header(&HeaderName::To, to)?.header(HeaderName::Warning, warning(&e))?.build();
                self.endpoint.send(Command::Respond { key: key.clone(), response })?;
                return Ok(());
            }
        };
        call.offered(offer, keying);
        call.delayed_offer = Some(text.clone());
        if reliable {
            let mut numbering = Numbering::starting_at(rand::random::<u32>() & rel::MAX_FIRST_RSEQ);
            let rseq = numbering.allocate();
            call.reliable = Some(numbering);
            let (code, reason) = if early_media { (183, "Session Progress") } else { (180, "Ringing") };
            self.respond_with(key, request, code, reason, Some(to), Some(&text), rseq)?;
        } else {
            self.respond(key, request, 180, "Ringing", Some(to), None)?;
        }
        self.schedule_answer(call_id);
        Ok(())
    }

    fn answer_now(&mut self, call_id: &str) -> Result<(), Error> {
        let Some(call) = self.calls.get_mut(call_id) else { return Ok(()) };
        if call.answered || matches!(call.state, CallState::Failed(..) | CallState::Ended) {
            return Ok(());
        }
        let (Some(key), Some(dialog)) = (call.invite_key.clone(), call.dialog.as_ref()) else {
            return Ok(());
        };
        let to = dialog.local_header().clone();
        if let Some(numbering) = &call.reliable {
            // RFC 3262 §3: no 2xx before the reliable 1xx was PRACKed; the answer went in it
            // (and an UPDATE may have changed the media since), so the 200 carries no SDP.
            if numbering.outstanding().is_some() {
                call.answer_waits_prack = true;
                return Ok(());
            }
            call.answered = true;
            let request = call.invite.clone();
            return self.respond(&key, &request, 200, "OK", Some(to), None);
        }
        if call.answer_in_ack {
            // Delayed offer (RFC 3261 §13.3.1.4): our offer goes in the 200, the answer comes
            // in the ACK.
            let Some(offer) = call.delayed_offer.clone() else { return Ok(()) };
            call.answered = true;
            let request = call.invite.clone();
            return self.respond(&key, &request, 200, "OK", Some(to), Some(&offer));
        }
        let Some((answer, media)) = call.answer.clone() else { return Ok(()) };
        call.answered = true;
        call.apply_media(&media);
        let request = call.invite.clone();
        self.respond(&key, &request, 200, "OK", Some(to), Some(&answer))
    }

    /// A re-INVITE or UPDATE inside the dialog. Its offer is answered by [`answer_offer`] (SDES
    /// or plain through [`offer_answer`], a MIKEY offer — a new Ticket Transfer resolved at
    /// our KMS, a DH_INIT, an I_MESSAGE — through [`mikey_answer`]); a re-INVITE without one
    /// gets our offer in the 2xx and its answer from the ACK (RFC 3261 §13.2.1), a fresh MIKEY
    /// exchange under a MIKEY policy.
    fn incoming_reinvite(&mut self, key: TransactionKey, request: &Request, call_id: &str) -> Result<(), Error> {
        let (security, sdes) = (self.config.security, self.config.sdes.clone());
        let Some(call) = self.calls.get_mut(call_id) else {
            return self.respond(&key, request, 481, "Call/Transaction Does Not Exist", None, None);
        };
        let Some(dialog) = call.dialog.as_mut() else {
            return self.respond(&key, request, 481, "Call/Transaction Does Not Exist", None, None);
        };
        if let Err(e) = dialog.receive_request(request) {
            tracing::info!(error = %e, "re-INVITE refused");
            return self.respond(&key, request, 500, "Server Internal Error", None, None);
        }
        let to = dialog.local_header().clone();
        if let Some(pending) = call.keying {
            // An offer/answer exchange of this call still waits for our KMS. RFC 3261 §14.2
            // (RFC 3311 §5.2 for UPDATE): our own re-offer in progress → 491; our answer to
            // an earlier request in preparation → 500 with a Retry-After of 0-10 s.
            let ours = matches!(self.steps.get(&pending), Some((Step::Reoffer { .. }, _)));
            if ours {
                return self.respond(&key, request, 491, "Request Pending", Some(to), None);
            }
            let status = StatusCode::new(500).ok_or(Error::Negotiation("status".into()))?;
            let response = ResponseBuilder::to_request(request, status, "Server Internal Error")?
                .set_header(&HeaderName::To, to)?
                .header(HeaderName::RetryAfter, (rand::random::<u32>() % 11).to_string())?
                .build();
            self.endpoint.send(Command::Respond { key, response })?;
            return Ok(());
        }
        call.sdp_version += 1;
        let (local, version, ssrc) = (call.rtp.local_addr(), call.sdp_version, call.rtp.ssrc());
        let peer = call.mikey_peer.clone().or_else(|| call.authenticated_peer.clone());
        let body = mediasec_sip::body::sdp(&Message::Request(request.clone()));
        let offerless = matches!(body, Ok(None)) && request.method == Method::Invite;
        let step = Step::ReinviteAnswer { call_id: call_id.to_owned(), key, request: request.clone(), to, offerless };
        if offerless {
            // Delayed offer (RFC 3261 §13.2.1): our offer in the 2xx, the answer in the ACK.
            // Under a MIKEY policy we are the MIKEY Initiator of a fresh exchange (RFC 4567 §3).
            if !security.is_mikey() {
                let made = offer_answer::offer(local, version, security, &sdes, &mut fill_random).map(|o| (o.sdp.clone(), Some(o), None));
                return self.resume(step, Keyed::offered(made));
            }
            return match peer {
                Some(peer) => self.start(offer_work(security, self.kms.clone(), local, version, ssrc, peer), step),
                None => self.resume(step, Keyed::offered(Err(Error::Negotiation("the peer's identity is unknown (an anonymous caller): no MIKEY offer can be addressed to it".into())))),
            };
        }
        let offer = match body {
            Ok(Some(offer)) => Ok(offer),
            Ok(None) => Err(Error::Negotiation("re-INVITE without an offer".into())),
            Err(e) => Err(e.into()),
        };
        let kms = self.kms.clone();
        let work = async move {
            Keyed::Answer(match offer {
                Ok(offer) => answer_offer(security, kms, sdes, offer, local, version, ssrc).await,
                Err(e) => Err(e),
            })
        };
        self.start(work, step)
    }

    /// [`Self::incoming_reinvite`] once our answer — or, to an offerless re-INVITE, our offer —
    /// is made (after our KMS work under a MIKEY policy): the 2xx carries it (an offer's answer
    /// then comes in the ACK), or 488.
    fn reinvite_answer_keyed(&mut self, call_id: &str, key: &TransactionKey, request: &Request, to: Bytes, offerless: bool, keyed: Keyed) -> Result<(), Error> {
        let Some(call) = self.calls.get_mut(call_id) else { return Ok(()) };
        if offerless {
            return match keyed.offer() {
                Ok((text, offer, keying)) => {
                    call.offered(offer, keying);
                    call.ticket_answer = None;
                    call.answer_in_ack = true;
                    self.respond(key, request, 200, "OK", Some(to), Some(&text))
                }
                Err(e) => {
                    tracing::info!(error = %e, "offerless re-INVITE: no offer to make");
                    self.respond(key, request, 488, "Not Acceptable Here", Some(to), None)
                }
            };
        }
        match keyed.answer() {
            Ok((answer, media)) => {
                call.apply_media(&media);
                call.rekeys += 1;
                self.respond(key, request, 200, "OK", Some(to), Some(&answer))
            }
            Err(e) => {
                tracing::info!(error = %e, "re-INVITE offer refused");
                self.respond(key, request, 488, "Not Acceptable Here", Some(to), None)
            }
        }
    }
}

/// The `RSeq` of a reliable provisional response (RFC 3262 §7.1: `Require: 100rel` and
/// `RSeq`); `None` for an unreliable one, a 100, or a malformed `RSeq`.
fn reliable_rseq(response: &Response) -> Option<u32> {
    let code = response.status.code();
    let required = response.headers.get_all(&HeaderName::Require).any(|h| {
        h.value().split(|b| *b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(rel::OPTION_TAG.as_bytes()))
    });
    if !(101..200).contains(&code) || !required {
        return None;
    }
    response.headers.typed::<rel::RSeq>().and_then(Result::ok).map(|r| r.0)
}

/// Whether the UE answers `request` in a reliable provisional response (RFC 3262 §3): when it
/// requires 100rel, or supports it and early media is on.
fn answers_reliably(request: &Request, answering: Answering) -> bool {
    match rel::reliability(Offered::in_request(request), true) {
        Reliability::Required => true,
        Reliability::Permitted => answering.early_media,
        Reliability::Forbidden | Reliability::Refuse => false,
    }
}

/// The dialog a call's in-dialog requests go in: the confirmed one, else the caller's early
/// dialog (RFC 3311 §5.1: UPDATE may be sent in it). Takes the two fields, so the call's other
/// fields stay usable while it is borrowed.
fn current_dialog<'a>(dialog: &'a mut Option<Dialog>, early: &'a mut Option<(Dialog, Sequence)>) -> Option<&'a mut Dialog> {
    match (dialog, early) {
        (Some(d), _) | (None, Some((d, _))) => Some(d),
        (None, None) => None,
    }
}

fn security_client() -> HeaderName {
    HeaderName::parse(&Bytes::from_static(b"Security-Client"))
}

fn security_server() -> HeaderName {
    HeaderName::parse(&Bytes::from_static(b"Security-Server"))
}

/// A MIKEY offer of ours awaiting its answer.
enum Keying {
    /// MIKEY-TICKET: TRANSFER_INIT sent.
    Ticket(PendingCall),
    /// High-security mode: DH_INIT sent (holds the DH secret).
    Dh(high_security::PendingCall),
    Sakke(mikey_sakke::PendingCall),
}

/// An offer of ours as made: its SDP, and the SDES / plain offer or the MIKEY keying kept
/// until its answer.
type Made = (String, Option<Offer>, Option<Keying>);

/// What KMS work produces ([`Core::start`]).
enum Keyed {
    /// Our offer, or why none could be made (boxed: an SDES offer with its keys is large).
    Offer(Box<Result<Made, Error>>),
    /// Our answer to an offer (its SDP and the media), or why the offer is refused.
    Answer(Result<(String, Media), Error>),
}

impl Keyed {
    fn offered(made: Result<Made, Error>) -> Self {
        Self::Offer(Box::new(made))
    }

    fn offer(self) -> Result<Made, Error> {
        match self {
            Self::Offer(made) => *made,
            Self::Answer(_) => Err(Error::Negotiation("KMS work: an answer where an offer was awaited".into())),
        }
    }

    fn answer(self) -> Result<(String, Media), Error> {
        match self {
            Self::Answer(answered) => answered,
            Self::Offer(_) => Err(Error::Negotiation("KMS work: an offer where an answer was awaited".into())),
        }
    }
}

/// KMS work making our MIKEY offer ([`mikey_offer`]).
async fn offer_work(security: Security, kms: Option<SharedKms>, local: SocketAddr, version: u64, ssrc: u32, peer: String) -> Keyed {
    Keyed::offered(mikey_offer(security, kms, local, version, ssrc, peer).await.map(|(sdp, k)| (sdp, None, Some(k))))
}

/// The step of the UE's flows that waits for KMS work (docs/sip.md §2): what it needs to go
/// on when the result comes back ([`Core::resume`]), or to do what it still owes when its call
/// ended meanwhile ([`Core::abandon`]).
enum Step {
    /// Our INVITE waits for our MIKEY offer ([`Core::place_call`]). No call exists yet.
    Invite { target: String, rtp: RtpEndpoint, started: Instant, tx: oneshot::Sender<Result<String, Error>> },
    /// Our re-INVITE or UPDATE (API) waits for our fresh MIKEY offer.
    Reoffer { call_id: String, method: Method, tx: oneshot::Sender<Result<(), Error>> },
    /// The ACK of a 2xx carrying an offer — the first 2xx to our offerless INVITE
    /// (`purpose` [`Purpose::Invite`]) or the 2xx to our offerless re-INVITE — waits for our
    /// answer (Ticket Resolve at our KMS, RFC 3261 §13.2.2.4).
    Ack { call_id: String, purpose: Purpose, ack: Message, to: NextHop, offer: Sdp, local: SocketAddr, version: u64 },
    /// The PRACK of a reliable 18x carrying the offer to our offerless INVITE waits for our
    /// answer (RFC 3262 §5).
    Prack { call_id: String, prack: Message, to: NextHop, offer: Sdp, local: SocketAddr, version: u64, refused_before: bool },
    /// The 18x / 200 answering an INVITE with an offer waits for our answer.
    IncomingAnswer { call_id: String, key: TransactionKey, request: Request, to: Bytes, offer: Option<Sdp> },
    /// The reliable 18x or 200 to an offerless INVITE waits for our MIKEY offer.
    IncomingOffer { call_id: String, key: TransactionKey, request: Request, to: Bytes, reliable: bool },
    /// The 2xx to the peer's re-INVITE or UPDATE waits for our answer, or for our offer when
    /// the re-INVITE had none (`offerless`).
    ReinviteAnswer { call_id: String, key: TransactionKey, request: Request, to: Bytes, offerless: bool },
}

impl Step {
    /// The call the step belongs to; `None` before our INVITE exists.
    fn call_id(&self) -> Option<&str> {
        match self {
            Self::Invite { .. } => None,
            Self::Reoffer { call_id, .. }
            | Self::Ack { call_id, .. }
            | Self::Prack { call_id, .. }
            | Self::IncomingAnswer { call_id, .. }
            | Self::IncomingOffer { call_id, .. }
            | Self::ReinviteAnswer { call_id, .. } => Some(call_id),
        }
    }
}

/// The wall clock as Unix time: the T of high-security messages and their key month.
fn unix_now() -> Duration {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default()
}

/// A MIKEY offer of ours under our MIKEY policy, to `peer` (a SIP URI or KMS UID), SDP session
/// version `version`: MIKEY-TICKET asks our KMS for a ticket and sends TRANSFER_INIT
/// ([`ticket::offer`]), the high-security mode a signed DH_INIT ([`high_security::offer`]),
/// MIKEY-SAKKE an I_MESSAGE ([`mikey_sakke::offer`]). Whoever sends the SDP offer is the MIKEY
/// Initiator (RFC 4567 §3): the caller in its INVITE, or the callee in its 200 / reliable 18x
/// to an offerless INVITE, or either side in the 2xx to an offerless re-INVITE.
async fn mikey_offer(security: Security, kms: Option<SharedKms>, local: SocketAddr, version: u64, ssrc: u32, peer: String) -> Result<(String, Keying), Error> {
    match (security, kms) {
        (Security::MikeyTicket, Some(kms)) => ticket::offer(&kms, local, version, ssrc, &peer).await.map(|(sdp, p)| (sdp, Keying::Ticket(p))),
        (Security::HighSecurity, Some(kms)) => {
            let now = unix_now();
            high_security::ready(&kms, now).await?;
            let access = ticket::lock(&kms);
            let hs = access.high_security.as_ref().ok_or_else(|| Error::Negotiation("the high-security mode needs an ECCSI key from the KMS".into()))?;
            high_security::offer(hs, local, version, ssrc, &peer, now).map(|(sdp, p)| (sdp, Keying::Dh(p)))
        }
        (Security::MikeySakke, Some(kms)) => {
            let now = unix_now();
            high_security::ready(&kms, now).await?;
            let mut access = ticket::lock(&kms);
            let hs = access.high_security.as_mut().ok_or_else(|| Error::Negotiation("MIKEY-SAKKE needs keys from the KMS".into()))?;
            mikey_sakke::offer(hs, local, version, ssrc, &peer, now).map(|(sdp, p)| (sdp, Keying::Sakke(p)))
        }
        (Security::MikeyTicket, None) => Err(Error::Negotiation("MIKEY-TICKET needs KMS access".into())),
        (Security::HighSecurity, None) => Err(Error::Negotiation("the high-security mode needs an ECCSI key from the KMS".into())),
        (Security::MikeySakke, None) => Err(Error::Negotiation("MIKEY-SAKKE needs keys from the KMS".into())),
        _ => Err(Error::Negotiation("no MIKEY key management under this policy".into())),
    }
}

/// Our answer to `offer` under our policy (session version `version`): a MIKEY offer through
/// [`mikey_answer`]; an offer without `a=key-mgmt:mikey` is a downgrade when the policy is a
/// MIKEY mode, else answered by [`offer_answer`] (SDES or plain).
async fn answer_offer(security: Security, kms: Option<SharedKms>, sdes: SdesPolicy, offer: Sdp, local: SocketAddr, version: u64, ssrc: u32) -> Result<(String, Media), Error> {
    if ticket::has_mikey(&offer) {
        mikey_answer(security, kms, &offer, local, version, ssrc).await
    } else if security.is_mikey() {
        Err(Error::Downgrade("offer without a=key-mgmt:mikey; policy requires MIKEY key management".into()))
    } else {
        offer_answer::answer(&offer, local, version, security, &sdes, &mut fill_random)
    }
}

/// KMS work answering `offer` ([`answer_offer`]).
async fn answer_work(security: Security, kms: Option<SharedKms>, sdes: SdesPolicy, offer: Sdp, local: SocketAddr, version: u64, ssrc: u32) -> Keyed {
    Keyed::Answer(answer_offer(security, kms, sdes, offer, local, version, ssrc).await)
}

/// The SDP refusing every stream of `offer` ([`offer_answer::refusal`]) and, when `why` is a
/// refused MIKEY message, carrying the MIKEY Error message answering it (RFC 3830 §5.1.2) in
/// its key-management attribute: what a 488, or the ACK / PRACK answering an offer we cannot
/// accept, carries.
fn refusing_answer(offer: &Sdp, local: SocketAddr, version: u64, why: &Error) -> Result<String, Error> {
    let refusal = offer_answer::refusal(offer, local, version)?;
    Ok(match why {
        Error::KeyRefused { mikey_error: Some(m), .. } => format!("{refusal}a={}\r\n", ticket::key_mgmt_line(m.clone())),
        _ => refusal,
    })
}

/// The identity a callee keys its MIKEY offer to, for an offerless INVITE (RFC 3261 §13.2.1):
/// the caller as the network asserts it (`P-Asserted-Identity`, RFC 3325 §9.1, its SIP or SIPS
/// URI), else as its `From` presents it. `None` for an anonymous caller (RFC 3323 §4.1.1.3:
/// `anonymous.invalid`) whose identity nothing asserts: no ticket, DH_INIT or I_MESSAGE can be
/// addressed to it.
fn caller_identity(request: &Request) -> Option<String> {
    let asserted = mediasec_sip::core::PAssertedIdentityList::from_headers(&request.headers)
        .ok()
        .flatten()
        .and_then(|list| list.values().iter().map(|v| v.uri.clone()).find(|uri| uri.scheme().is_sip()));
    let uri = asserted.or_else(|| request.headers.typed::<mediasec_sip::core::headers::From>().and_then(Result::ok).map(|from| from.uri.clone()))?;
    let anonymous = uri.host().is_some_and(|h| String::from_utf8_lossy(&h.to_bytes()).eq_ignore_ascii_case("anonymous.invalid"));
    (!anonymous).then(|| uri.to_string())
}

/// Answers a MIKEY offer under our policy: MIKEY-TICKET through [`ticket`], the high-security
/// mode through [`high_security`]; any other policy (or a missing KMS access) refuses it.
async fn mikey_answer(security: Security, kms: Option<SharedKms>, offer: &Sdp, local: SocketAddr, version: u64, ssrc: u32) -> Result<(String, Media), Error> {
    let kms = kms.filter(|k| matches!(security, Security::MikeyTicket) || ticket::lock(k).high_security.is_some());
    match (security, kms) {
        (Security::MikeyTicket, Some(kms)) => ticket::answer(&kms, offer, local, version, ssrc).await,
        (Security::HighSecurity, Some(kms)) => {
            let now = unix_now();
            high_security::ready(&kms, now).await?;
            let mut access = ticket::lock(&kms);
            let hs = access.high_security.as_mut().ok_or_else(|| Error::Negotiation("MIKEY offered; no KMS access or keys here".into()))?;
            high_security::answer(hs, offer, local, version, ssrc, now)
        }
        (Security::MikeySakke, Some(kms)) => {
            let now = unix_now();
            high_security::ready(&kms, now).await?;
            let mut access = ticket::lock(&kms);
            let hs = access.high_security.as_mut().ok_or_else(|| Error::Negotiation("MIKEY offered; no KMS access or keys here".into()))?;
            mikey_sakke::answer(hs, offer, local, version, ssrc, now)
        }
        (Security::MikeyTicket | Security::HighSecurity | Security::MikeySakke, _) => Err(Error::Negotiation("MIKEY offered; no KMS access or keys here".into())),
        _ => Err(Error::Negotiation("MIKEY offered; not enabled here".into())),
    }
}

/// The media an answer gives the caller: SDES / plain through [`offer_answer`], MIKEY-TICKET
/// through [`ticket`], the high-security mode through [`high_security`] (an identical answer
/// already verified is reused, not verified twice).
fn answer_media(call: &mut Call, kms: Option<&SharedKms>, answer: &Sdp, policy: &SdesPolicy) -> Result<Media, Error> {
    if let Some(offer) = call.offer.as_ref() {
        return offer_answer::process_answer(offer, answer, policy);
    }
    let (Some(pending), Some(kms)) = (call.ticket.as_ref(), kms) else {
        return Err(Error::Negotiation("no offer outstanding".into()));
    };
    let text = answer.to_string();
    if let Some((seen, media)) = &call.ticket_answer
        && *seen == text
    {
        return Ok(media.clone());
    }
    // Sans-IO verification under the lock, held only for it (no KMS exchange here).
    let mut access = ticket::lock(kms);
    let (media, deferred) = match pending {
        Keying::Ticket(p) => ticket::process_answer(&mut access, p, answer)?,
        Keying::Dh(p) => (high_security::process_answer(access.high_security.as_ref().ok_or_else(|| Error::Negotiation("no high-security keys".into()))?, p, answer, unix_now())?, false),
        Keying::Sakke(p) => (mikey_sakke::process_answer(p, answer)?, false),
    };
    call.deferred_delivery = deferred;
    call.ticket_answer = Some((text, media.clone()));
    Ok(media)
}

/// The SDP version and RTP endpoint of our answer to an offer that came in a response — a 2xx
/// to an offerless INVITE or re-INVITE (RFC 3261 §13.2.2.4: the answer goes in the ACK) or a
/// reliable 18x (RFC 3262 §5: in the PRACK): the session version goes up by one.
fn answer_version(call: &mut Call) -> (SocketAddr, u64, u32) {
    call.sdp_version += 1;
    (call.rtp.local_addr(), call.sdp_version, call.rtp.ssrc())
}

/// Puts our answer to an offer that came in a response into `request` (the ACK or PRACK),
/// once [`answer_offer`] (through [`answer_work`]) made it at `local`, session version
/// `version`: under a MIKEY policy the offer must carry `a=key-mgmt:mikey` (its sender is the
/// MIKEY Initiator, we the responder, RFC 4567 §3), and a caller requires the authenticated
/// Initiator to be the party it called, as it requires of a MIKEY responder when it offers
/// itself. An offer we cannot accept still gets a valid answer, every stream refused
/// ([`refusing_answer`]), and the error is returned (after an ACK the caller then ends the
/// session with BYE, §13.2.2.4).
fn answered_in_request(call: &Call, answered: Result<(String, Media), Error>, offer: &Sdp, local: SocketAddr, version: u64, request: &mut Message, security: Security) -> Result<Media, Error> {
    let answered = answered.and_then(|(answer, media)| {
        if security.is_mikey() && call.role == Role::Caller {
            initiator_is_callee(call.mikey_peer.as_deref(), media.peer.as_deref())?;
        }
        Ok((answer, media))
    });
    match answered {
        Ok((answer, media)) => {
            mediasec_sip::body::set_sdp(request, &Sdp::parse(&answer))?;
            Ok(media)
        }
        Err(e) => {
            match refusing_answer(offer, local, version, &e) {
                Ok(refusal) => mediasec_sip::body::set_sdp(request, &Sdp::parse(&refusal))?,
                Err(r) => tracing::warn!(error = %r, "no refusing answer for an unusable offer"),
            }
            Err(e)
        }
    }
}

/// Caller answering a MIKEY offer in a response: the Initiator the key management
/// authenticated (the KMS UID of a ticket's initiator, the signer of a DH_INIT or I_MESSAGE)
/// must be the party called — the same check the offerer makes of its responder
/// ([`ticket::process_answer`], [`high_security::process_answer`]; TR 33.828 req 49).
fn initiator_is_callee(called: Option<&str>, initiator: Option<&str>) -> Result<(), Error> {
    let called = ticket::uid_of(called.ok_or_else(|| Error::Negotiation("no called identity to check the MIKEY Initiator against".into()))?)?;
    let initiator = initiator.ok_or_else(|| Error::Downgrade("MIKEY offer in the response: its Initiator is not authenticated".into()))?;
    match ticket::uid_of(initiator)? {
        who if who == called => Ok(()),
        who => Err(Error::Negotiation(format!("the offering party is {who}, not {called}"))),
    }
}

/// RFC 3262 at the UE, against a scripted peer on a raw UDP socket (the peer plays the
/// proxy: the UE's outbound proxy is its address, and its messages name it in `Via`).
#[cfg(test)]
mod reliable_tests {
    use std::time::Duration;

    use mediasec_sip::core::{parse_datagram, Limits};
    use tokio::net::UdpSocket;

    use super::*;

    const SDES: Security = Security::Sdes { fallback: false };

    fn timers(t1_ms: u64) -> Timers {
        Timers { t1: Duration::from_millis(t1_ms), t2: Duration::from_millis(t1_ms * 8), t4: Duration::from_millis(t1_ms * 10) }
    }

    async fn peer() -> UdpSocket {
        UdpSocket::bind("127.0.0.1:0").await.expect("bind")
    }

    /// The next SIP message within `wait`, or `None`.
    async fn next(socket: &UdpSocket, wait: Duration) -> Option<Message> {
        let mut buf = vec![0u8; 65_535];
        let (n, _) = tokio::time::timeout(wait, socket.recv_from(&mut buf)).await.ok()?.ok()?;
        parse_datagram(Bytes::copy_from_slice(buf.get(..n)?), &Limits::datagram()).ok()
    }

    /// Messages until `pred` matches one (within `wait` each), returning it and those before.
    async fn until(socket: &UdpSocket, wait: Duration, pred: impl Fn(&Message) -> bool) -> (Message, Vec<Message>) {
        let mut before = Vec::new();
        loop {
            let m = next(socket, wait).await.expect("a message in time");
            if pred(&m) {
                return (m, before);
            }
            before.push(m);
        }
    }

    fn text(m: &Message) -> String {
        String::from_utf8_lossy(&m.to_bytes()).into_owned()
    }

    fn code(m: &Message) -> Option<u16> {
        match m {
            Message::Response(r) => Some(r.status.code()),
            Message::Request(_) => None,
        }
    }

    fn value(m: &Message, name: &HeaderName) -> Option<String> {
        header_text(m.headers(), name)
    }

    async fn send(socket: &UdpSocket, to: SocketAddr, text: &str) {
        socket.send_to(text.as_bytes(), to).await.expect("send");
    }

    fn invite(peer: SocketAddr, to: SocketAddr, rel: &str, offer: &str) -> String {
        format!(
            "INVITE sip:bob@{to} SIP/2.0\r\nVia: SIP/2.0/UDP {peer};branch=z9hG4bKinv1\r\nMax-Forwards: 70\r\n\
From: <sip:alice@a.example>;tag=at\r\nTo: <sip:bob@b.example>\r\nCall-ID: rel-1\r\nCSeq: 1 INVITE\r\n\
Contact: <sip:alice@{peer}>\r\n{rel}Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{offer}",
            offer.len()
        )
    }

    fn prack(peer: SocketAddr, to: SocketAddr, to_header: &str, rack: &str, branch: &str, cseq: u32) -> String {
        format!(
            "PRACK sip:bob@{to} SIP/2.0\r\nVia: SIP/2.0/UDP {peer};branch={branch}\r\nMax-Forwards: 70\r\n\
From: <sip:alice@a.example>;tag=at\r\nTo: {to_header}\r\nCall-ID: rel-1\r\nCSeq: {cseq} PRACK\r\nRAck: {rack}\r\nContent-Length: 0\r\n\r\n"
        )
    }

    fn caller_offer(peer: SocketAddr) -> String {
        let local = SocketAddr::new(peer.ip(), 40_000);
        offer_answer::offer(local, 1, SDES, &SdesPolicy::default(), &mut fill_random).expect("offer").sdp
    }

    /// High-security keys of `uri` for the month of `now`, issued under `ksak` (no KMS), trusting
    /// that KMS's KPAK only.
    fn local_high_security(uri: &str, ksak: &mediasec_mikey::eccsi::KmsSecret, now: Duration) -> high_security::HighSecurity {
        let p = mediasec_kms::keyprov::Period::of_unix(now.as_secs()).expect("period");
        let id = mediasec_mikey::eccsi::identity(uri, p.year, p.month);
        let (ssk, pvt) = ksak.issue(&id, &[0x24; 32]).expect("issue");
        let key = mediasec_mikey::eccsi::SigningKey::new(&ksak.kpak(), &id, ssk, pvt).expect("key");
        high_security::HighSecurity::new(uri, p, key, vec![ksak.kpak()])
    }

    /// High-security callee of an offerless INVITE (RFC 3261 §13.2.1; the offerer is the MIKEY
    /// Initiator, RFC 4567 §3): its 200 offers a DH_INIT it signed for the caller — one the
    /// caller's keys verify and answer — and an ACK whose answer has no key management (an
    /// SDES answer: a downgrade) fails the call 488 with that reason and ends it with BYE.
    #[tokio::test]
    async fn high_security_uas_offers_dh_init_and_ends_the_call_on_an_ack_without_key_management() {
        let now = unix_now();
        let ksak = mediasec_mikey::eccsi::KmsSecret::from_bytes(&[0x11; 32]).expect("KSAK");
        let mut alice = local_high_security("sip:alice@a.example", &ksak, now);
        let socket = peer().await;
        let addr = socket.local_addr().expect("addr");
        let config = UeConfig::loopback("sip:bob@b.example", addr, Security::HighSecurity, 1500.0, 1000.0);
        let bob = local_high_security("sip:bob@b.example", &ksak, now);
        let ue = Ue::start_with_kms(config, Some(KmsAccess { high_security: Some(bob), ..unreachable_kms("bob@b.example") })).await.expect("UE");
        let offerless = invite(addr, ue.sip_addr(), "", "").replace("Content-Type: application/sdp\r\n", "");
        send(&socket, ue.sip_addr(), &offerless).await;
        let (ok, _) = until(&socket, Duration::from_secs(2), |m| code(m) == Some(200)).await;
        let offer = mediasec_sip::body::sdp(&ok).expect("body").expect("the offer in the 200");
        let init = ticket::mikey_data(&offer).expect("key-mgmt").expect("a MIKEY message");
        assert_eq!(init.get(1), Some(&4), "DH_INIT (RFC 3830 data type 4)");
        let (_, verified) = high_security::answer(&mut alice, &offer, SocketAddr::new(addr.ip(), 40_000), 1, 0x1234, now).expect("signed by bob for alice");
        assert_eq!(verified.peer.as_deref(), Some("sip:bob@b.example"));
        let to = value(&ok, &HeaderName::To).expect("To");
        let sdes = caller_offer(addr);
        let ack = format!(
            "ACK sip:bob@{ue} SIP/2.0\r\nVia: SIP/2.0/UDP {addr};branch=z9hG4bKack1\r\nMax-Forwards: 70\r\nFrom: <sip:alice@a.example>;tag=at\r\n\
To: {to}\r\nCall-ID: rel-1\r\nCSeq: 1 ACK\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdes}",
            sdes.len(),
            ue = ue.sip_addr()
        );
        send(&socket, ue.sip_addr(), &ack).await;
        let (bye, _) = until(&socket, Duration::from_secs(2), |m| matches!(m, Message::Request(r) if r.method == Method::Bye)).await;
        assert_eq!(value(&bye, &HeaderName::CallId).as_deref(), Some("rel-1"));
        let reports = ue.reports().await.expect("reports");
        assert!(reports.len() == 1 && reports.iter().all(|r| matches!(&r.state, CallState::Failed(488, why) if why.contains("a=key-mgmt:mikey"))), "{reports:?}");
    }

    /// High-security callee (docs/high-security.md §8): an INVITE whose DH_INIT is signed under
    /// a KPAK the callee does not trust is refused with 488, a `Warning`, and an SDP refusing
    /// the stream (port 0) whose `a=key-mgmt:mikey` carries the RFC 3830 §5.1.2 Error message
    /// (data type Error, ERR Auth failure) of that DH_INIT's CSB.
    #[tokio::test]
    async fn high_security_callee_refuses_an_untrusted_signature_with_the_mikey_error() {
        use mediasec_mikey::eccsi::KmsSecret;
        use mediasec_mikey::registry::{DataType, ErrorCode};
        let now = unix_now();
        let (ours, theirs) = (KmsSecret::from_bytes(&[0x11; 32]).expect("KSAK"), KmsSecret::from_bytes(&[0x22; 32]).expect("KSAK"));
        let alice = local_high_security("sip:alice@a.example", &theirs, now);
        let bob = local_high_security("sip:bob@b.example", &ours, now);
        let socket = peer().await;
        let addr = socket.local_addr().expect("addr");
        let mut config = UeConfig::loopback("sip:bob@b.example", addr, Security::HighSecurity, 1500.0, 1000.0);
        config.timers = timers(50);
        let ue = Ue::start_with_kms(config, Some(KmsAccess { high_security: Some(bob), ..unreachable_kms("bob@b.example") })).await.expect("UE");
        let (offer, _) = high_security::offer(&alice, SocketAddr::new(addr.ip(), 40_000), 1, 0x1234, "sip:bob@b.example", now).expect("DH_INIT offer");
        send(&socket, ue.sip_addr(), &invite(addr, ue.sip_addr(), "", &offer)).await;
        let (refused, _) = until(&socket, Duration::from_secs(5), |m| code(m).is_some_and(|c| c >= 200)).await;
        assert_eq!(code(&refused), Some(488), "{}", text(&refused));
        assert!(value(&refused, &HeaderName::Warning).is_some_and(|w| w.contains("Auth")), "{}", text(&refused));
        let sdp = mediasec_sip::body::sdp(&refused).expect("SDP").expect("a refusing SDP");
        assert!(sdp.to_string().contains("m=audio 0 "), "{sdp}");
        let error = ticket::mikey_data(&sdp).expect("key-mgmt").expect("the MIKEY Error message");
        let m = mediasec_mikey::Message::decode(&error).expect("MIKEY");
        assert_eq!(m.header.data_type, DataType::ERROR);
        let init = ticket::mikey_data(&Sdp::parse(&offer)).expect("offer").expect("DH_INIT");
        assert_eq!(m.header.csb_id, mediasec_mikey::Message::decode(&init).expect("DH_INIT").header.csb_id);
        assert!(m.payloads.iter().any(|p| matches!(p, mediasec_mikey::Payload::Err(e) if e.code == ErrorCode::AUTH_FAILURE)), "{m:?}");
    }

    /// UAS (RFC 3262 §3): with `Supported: 100rel` and early media the 183 carries the answer
    /// with `Require: 100rel` and `RSeq`, no 180 goes out, the 183 is retransmitted (same
    /// `RSeq`) until the PRACK, a PRACK naming another `RSeq` gets 481, the right one 200,
    /// and only then does the 200 (without SDP: the exchange is complete) go out.
    #[tokio::test]
    async fn uas_sends_the_183_reliably_and_holds_the_200_for_the_prack() {
        let peer = peer().await;
        let peer_addr = peer.local_addr().expect("addr");
        let mut config = UeConfig::loopback("sip:bob@b.example", peer_addr, SDES, 1000.0, 440.0);
        config.timers = timers(40);
        config.answering = Answering { auto: true, delay: Duration::ZERO, early_media: true };
        let bob = Ue::start(config).await.expect("ue");
        let ue = bob.sip_addr();
        send(&peer, ue, &invite(peer_addr, ue, "Supported: 100rel\r\n", &caller_offer(peer_addr))).await;
        let (first, before) = until(&peer, Duration::from_secs(2), |m| code(m) == Some(183)).await;
        assert!(before.iter().all(|m| code(m) == Some(100)), "no 180 before the reliable 183: {:?}", before.iter().map(text).collect::<Vec<_>>());
        assert_eq!(value(&first, &HeaderName::Require).as_deref(), Some("100rel"), "{}", text(&first));
        let rseq = value(&first, &HeaderName::RSeq).expect("RSeq");
        assert!(rseq.parse::<u32>().is_ok_and(|n| (1..=rel::MAX_FIRST_RSEQ).contains(&n)), "{rseq}");
        assert!(mediasec_sip::body::sdp(&first).expect("sdp").is_some(), "the answer is in the 183");
        // No PRACK yet: the same 183 comes again, and no 200.
        let (again, before) = until(&peer, Duration::from_secs(2), |m| code(m) == Some(183)).await;
        assert!(before.is_empty(), "{:?}", before.iter().map(text).collect::<Vec<_>>());
        assert_eq!(value(&again, &HeaderName::RSeq), Some(rseq.clone()));
        let to = value(&first, &HeaderName::To).expect("To");
        let wrong = rseq.parse::<u32>().expect("n") + 1;
        send(&peer, ue, &prack(peer_addr, ue, &to, &format!("{wrong} 1 INVITE"), "z9hG4bKpr0", 2)).await;
        let (refused, _) = until(&peer, Duration::from_secs(2), |m| code(m) == Some(481)).await;
        assert!(value(&refused, &HeaderName::CSeq).is_some_and(|c| c.ends_with("PRACK")));
        send(&peer, ue, &prack(peer_addr, ue, &to, &format!("{rseq} 1 INVITE"), "z9hG4bKpr1", 3)).await;
        let (ok, _) = until(&peer, Duration::from_secs(2), |m| code(m) == Some(200)).await;
        assert!(value(&ok, &HeaderName::CSeq).is_some_and(|c| c.ends_with("PRACK")), "the PRACK is answered first: {}", text(&ok));
        let (ok, _) = until(&peer, Duration::from_secs(2), |m| code(m) == Some(200)).await;
        assert!(value(&ok, &HeaderName::CSeq).is_some_and(|c| c.ends_with("INVITE")), "{}", text(&ok));
        assert!(mediasec_sip::body::sdp(&ok).expect("body").is_none(), "no SDP in the 200: {}", text(&ok));
        // The PRACK stopped the 183's retransmissions.
        let late = next(&peer, Duration::from_millis(400)).await;
        assert!(late.as_ref().is_none_or(|m| code(m) != Some(183)), "{:?}", late.as_ref().map(text));
    }

    /// Alice calls bob offerless ([`Ue::call_without_offer`]), directly (each the other's
    /// outbound proxy), bob answering as `answering` says; after `settle` of media both calls
    /// are checked established with SDES (`AEAD_AES_256_GCM`), nothing refused, and the keys
    /// of one exchange crossed (alice's own key is bob's peer key and the other way round).
    /// Returns alice's and bob's reports for each test's own expectations.
    async fn two_ues_delayed_offer(answering: Answering, settle: Duration) -> (CallReport, CallReport) {
        let placeholder = SocketAddr::from(([127, 0, 0, 1], 9));
        let mut b = UeConfig::loopback("sip:bob@b.example", placeholder, SDES, 1000.0, 440.0);
        b.answering = answering;
        let bob = Ue::start(b).await.expect("bob");
        let alice = Ue::start(UeConfig::loopback("sip:alice@a.example", bob.sip_addr(), SDES, 440.0, 1000.0)).await.expect("alice");
        let id = tokio::time::timeout(Duration::from_secs(5), alice.call_without_offer(&format!("sip:bob@{}", bob.sip_addr())))
            .await
            .expect("in time")
            .expect("established");
        tokio::time::sleep(settle).await;
        let a = alice.report(&id).await.expect("r").expect("call");
        let b = bob.report(&id).await.expect("r").expect("call");
        for r in [&a, &b] {
            assert_eq!((r.state.clone(), r.protection.as_str()), (CallState::Established, "srtp AEAD_AES_256_GCM"), "{r:?}");
            assert_eq!(r.media.refused, 0, "{r:?}");
        }
        assert_eq!((a.own_key.as_ref(), a.peer_key.as_ref()), (b.peer_key.as_ref(), b.own_key.as_ref()), "one exchange, keys crossed");
        (a, b)
    }

    /// RFC 3262 §5 between two UEs: alice's offerless INVITE (no body, `Supported: 100rel`);
    /// bob, answering with early media, puts his offer in the reliable 183; alice's answer goes
    /// in the PRACK; bob's 200 (after the PRACK) has no SDP; SDES media verified both ways,
    /// before and after the 200.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn offer_in_the_reliable_183_answer_in_the_prack_between_two_ues() {
        let answering = Answering { auto: true, delay: Duration::from_millis(600), early_media: true };
        let (a, b) = two_ues_delayed_offer(answering, Duration::from_millis(600)).await;
        for r in [&a, &b] {
            assert!(r.early_verified >= 10 && r.media.verified >= r.early_verified + 20, "early media, then more: {r:?}");
        }
    }

    /// Delayed offer without 100rel (RFC 3261 §13.2.1, §13.3.1.4, §13.2.2.4) between two UEs:
    /// alice's offerless INVITE; bob, without early media, answers it unreliably — 180, then
    /// his offer in the 200 — and alice's answer goes in the ACK; SDES media verified both ways
    /// from then on (none before: no early media), one exchange, no re-keying.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn offer_in_the_200_answer_in_the_ack_between_two_ues() {
        let answering = Answering { auto: true, delay: Duration::from_millis(200), early_media: false };
        let (a, b) = two_ues_delayed_offer(answering, Duration::from_millis(700)).await;
        for r in [&a, &b] {
            assert!(r.early_verified == 0 && r.media.verified >= 20 && r.rekeys == 0, "{r:?}");
        }
    }

    /// UAS, delayed offer without 100rel: an offerless INVITE without `Supported: 100rel` gets
    /// an unreliable 180 and our SDES offer in the 200; an ACK without the answer (RFC 3261
    /// §13.2.2.4 requires one) ends the call with BYE.
    #[tokio::test]
    async fn uas_offers_in_the_200_and_ends_the_call_when_the_ack_has_no_answer() {
        let peer = peer().await;
        let peer_addr = peer.local_addr().expect("addr");
        let mut config = UeConfig::loopback("sip:bob@b.example", peer_addr, SDES, 1000.0, 440.0);
        config.answering = Answering { auto: true, delay: Duration::ZERO, early_media: true };
        let bob = Ue::start(config).await.expect("ue");
        let ue = bob.sip_addr();
        send(&peer, ue, &invite(peer_addr, ue, "", "").replace("Content-Type: application/sdp\r\n", "")).await;
        let (ok, before) = until(&peer, Duration::from_secs(2), |m| code(m) == Some(200)).await;
        assert!(before.iter().any(|m| code(m) == Some(180) && value(m, &HeaderName::RSeq).is_none() && mediasec_sip::body::sdp(m).is_ok_and(|b| b.is_none())), "an unreliable 180 first: {:?}", before.iter().map(text).collect::<Vec<_>>());
        let offer = mediasec_sip::body::sdp(&ok).expect("body").expect("our offer in the 200");
        assert!(offer.to_string().contains(" RTP/SAVP ") && offer.to_string().contains("a=crypto:1 "), "{offer}");
        let to = value(&ok, &HeaderName::To).expect("To");
        send(&peer, ue, &format!(
            "ACK sip:bob@{ue} SIP/2.0\r\nVia: SIP/2.0/UDP {peer_addr};branch=z9hG4bKack1\r\nMax-Forwards: 70\r\n\
From: <sip:alice@a.example>;tag=at\r\nTo: {to}\r\nCall-ID: rel-1\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
        )).await;
        let (bye, _) = until(&peer, Duration::from_secs(2), |m| matches!(m, Message::Request(r) if r.method == Method::Bye)).await;
        assert!(value(&bye, &HeaderName::CallId).as_deref() == Some("rel-1"), "{}", text(&bye));
        let report = bob.report("rel-1").await.expect("r").expect("call");
        assert!(matches!(report.state, CallState::Failed(488, ref r) if r.contains("ACK without the answer")), "{report:?}");
    }

    /// UAS with e2ae (TS 24.229 §7.5.2, TS 33.328 §7.2.1), the callee of an offerless INVITE
    /// from the scripted peer — `reliable`: with `Supported: 100rel` to a UE answering with
    /// early media, so the offer goes in the reliable 183 and the answer in the PRACK (RFC 3262
    /// §5); else without, so the offer goes in the 200 and the answer in the ACK (RFC 3261
    /// §13.3.1.4). Either way our offer is `RTP/SAVP` with `a=crypto` and, on the audio stream
    /// (not at session level), `a=3ge2ae:requested` — as in the offers of our INVITEs — and
    /// the peer's answer with `a=3ge2ae:applied` (what a P-CSCF applying e2ae sends)
    /// establishes the call with SRTP, reported as [`CallReport::e2ae_applied`].
    async fn e2ae_callee_of_an_offerless_invite(reliable: bool) {
        let peer = peer().await;
        let peer_addr = peer.local_addr().expect("addr");
        let mut config = UeConfig::loopback("sip:bob@b.example", peer_addr, SDES, 1000.0, 440.0);
        config.e2ae = true;
        config.answering = Answering { auto: true, delay: Duration::ZERO, early_media: reliable };
        let bob = Ue::start(config).await.expect("ue");
        let ue = bob.sip_addr();
        let rel = if reliable { "Supported: 100rel\r\n" } else { "" };
        send(&peer, ue, &invite(peer_addr, ue, rel, "").replace("Content-Type: application/sdp\r\n", "")).await;
        let offering = if reliable { 183 } else { 200 };
        let (offered, _) = until(&peer, Duration::from_secs(2), |m| code(m) == Some(offering)).await;
        let offer = mediasec_sip::body::sdp(&offered).expect("body").expect("our offer");
        let stream = offer_answer::audio(&offer).expect("audio");
        let indications = mediasec_sdp::e2ae::find(&offer, mediasec_sdp::Level::Media(stream.index)).expect("3ge2ae");
        assert_eq!(indications, vec![Ok(mediasec_sdp::E2aeIndication::Requested)], "{offer}");
        assert!(mediasec_sdp::e2ae::find(&offer, mediasec_sdp::Level::Session).expect("session").is_empty(), "media level only: {offer}");
        assert!(stream.proto == "RTP/SAVP" && offer.to_string().contains("\r\na=crypto:1 "), "{offer}");
        let (answer, _) = offer_answer::answer(&offer, SocketAddr::new(peer_addr.ip(), 40_002), 1, SDES, &SdesPolicy::default(), &mut fill_random).expect("answer");
        let mut answer = Sdp::parse(&answer);
        mediasec_sdp::e2ae::add(&mut answer, 0, &mediasec_sdp::E2aeIndication::Applied).expect("applied");
        let body = format!("Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{answer}", answer.to_string().len());
        let to = value(&offered, &HeaderName::To).expect("To");
        let ack_body = if reliable {
            let rack = format!("{} 1 INVITE", value(&offered, &HeaderName::RSeq).expect("RSeq"));
            send(&peer, ue, &prack(peer_addr, ue, &to, &rack, "z9hG4bKpr1", 2).replace("Content-Length: 0\r\n\r\n", &body)).await;
            let (ok, _) = until(&peer, Duration::from_secs(2), |m| code(m) == Some(200)).await;
            assert!(value(&ok, &HeaderName::CSeq).is_some_and(|c| c.ends_with("PRACK")), "the PRACK is answered: {}", text(&ok));
            until(&peer, Duration::from_secs(2), |m| code(m) == Some(200)).await;
            "Content-Length: 0\r\n\r\n".to_owned()
        } else {
            body
        };
        send(&peer, ue, &format!(
            "ACK sip:bob@{ue} SIP/2.0\r\nVia: SIP/2.0/UDP {peer_addr};branch=z9hG4bKack1\r\nMax-Forwards: 70\r\n\
From: <sip:alice@a.example>;tag=at\r\nTo: {to}\r\nCall-ID: rel-1\r\nCSeq: 1 ACK\r\n{ack_body}"
        )).await;
        let report = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                let r = bob.report("rel-1").await.expect("r").expect("call");
                if !matches!(r.state, CallState::Setup | CallState::Early) {
                    return r;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the ACK is processed");
        assert_eq!((report.state.clone(), report.e2ae_applied), (CallState::Established, true), "{report:?}");
        assert!(report.protection.starts_with("srtp "), "{report:?}");
    }

    /// [`e2ae_callee_of_an_offerless_invite`]: offer in the 200, answer in the ACK.
    #[tokio::test]
    async fn uas_with_e2ae_requests_it_in_its_offer_in_the_200_to_an_offerless_invite() {
        e2ae_callee_of_an_offerless_invite(false).await;
    }

    /// [`e2ae_callee_of_an_offerless_invite`]: offer in the reliable 183, answer in the PRACK.
    #[tokio::test]
    async fn uas_with_e2ae_requests_it_in_its_offer_in_the_reliable_183_to_an_offerless_invite() {
        e2ae_callee_of_an_offerless_invite(true).await;
    }

    /// KMS access for `uid` whose KMS nobody serves (port 9): for tests in which the UE must
    /// not need its KMS, or whose KMS exchange must fail.
    fn unreachable_kms(uid: &str) -> KmsAccess {
        let ue = mediasec_kms::ue::Ue::new(mediasec_kms::identity::KmsUid::parse(uid).expect("uid"), "kms.example", "btid", &[0; 32], 30);
        let client = mediasec_kms::client::KmsClient::new(mediasec_bsf::client::Endpoint::http("http://127.0.0.1:9").expect("endpoint"));
        KmsAccess { ue, client, high_security: None }
    }

    /// Alice, an `sdes` UE behind the scripted peer with SIP `timers`, places an offerless call
    /// ([`Ue::call_without_offer`]): see [`offerless_call_as`].
    async fn offerless_call(peer: &UdpSocket, timers: Timers) -> (tokio::task::JoinHandle<(Ue, Result<String, Error>)>, SocketAddr, Request, String) {
        offerless_call_as(peer, timers, SDES, None).await
    }

    /// Alice, a UE with `security` (and `kms`) behind the scripted peer with SIP `timers`,
    /// places an offerless call ([`Ue::call_without_offer`]): the task placing it (it returns
    /// alice and the call's outcome), her SIP address, her INVITE (checked to be offerless)
    /// and the `To` of the peer's responses (tag `bt`).
    async fn offerless_call_as(peer: &UdpSocket, timers: Timers, security: Security, kms: Option<KmsAccess>) -> (tokio::task::JoinHandle<(Ue, Result<String, Error>)>, SocketAddr, Request, String) {
        let peer_addr = peer.local_addr().expect("addr");
        let mut config = UeConfig::loopback("sip:alice@a.example", peer_addr, security, 440.0, 1000.0);
        config.timers = timers;
        let alice = Ue::start_with_kms(config, kms).await.expect("ue");
        let ue = alice.sip_addr();
        let call = tokio::spawn(async move {
            let r = alice.call_without_offer("sip:bob@b.example").await;
            (alice, r)
        });
        let (invite, _) = until(peer, Duration::from_secs(2), |m| matches!(m, Message::Request(r) if r.method == Method::Invite)).await;
        assert!(mediasec_sip::body::sdp(&invite).expect("body").is_none(), "offerless: {}", text(&invite));
        let Message::Request(invite) = invite else { panic!("request") };
        let to = format!("{};tag=bt", header_text(&invite.headers, &HeaderName::To).expect("To"));
        (call, ue, invite, to)
    }

    /// The peer's response to `request`: `To` (with its tag), its `Contact`, `extra` headers
    /// and, if any, an SDP body.
    fn peer_response(request: &Request, code: u16, reason: &str, to: &str, contact: SocketAddr, extra: &[(HeaderName, &str)], sdp: Option<String>) -> Vec<u8> {
        let mut b = ResponseBuilder::to_request(request, StatusCode::new(code).expect("code"), reason.to_owned())
            .and_then(|b| b.set_header(&HeaderName::To, to.to_owned()))
            .and_then(|b| b.header(HeaderName::Contact, format!("<sip:bob@{contact}>")))
            .expect("response");
        for (name, v) in extra {
            b = b.header(name.clone(), (*v).to_owned()).expect("header");
        }
        if let Some(sdp) = sdp {
            b = b.header(HeaderName::ContentType, "application/sdp").expect("ct").body(sdp);
        }
        Message::Response(b.build()).to_bytes().to_vec()
    }

    /// A plain RTP offer (`RTP/AVP`, no `a=crypto`): our `sdes` policy refuses it.
    fn plain_offer(peer_addr: SocketAddr) -> String {
        offer_answer::sdp_text(SocketAddr::new(peer_addr.ip(), 40_002), 1, "RTP/AVP", &[])
    }

    /// The SDP of `m` is a refusal of [`plain_offer`] (RFC 3264 §6): its one stream at port 0,
    /// no keys.
    fn assert_refusal(m: &Message) {
        let answer = mediasec_sip::body::sdp(m).expect("body").expect("an answer").to_string();
        assert!(answer.contains("m=audio 0 RTP/AVP 0\r\n") && !answer.contains("crypto"), "every stream refused: {answer}");
    }

    /// UAC, delayed offer: an offer in the 2xx to our offerless INVITE that our policy refuses
    /// (plain RTP for an `sdes` UE) still gets a valid answer in the ACK — every stream
    /// refused, port 0 (RFC 3264 §6) — and then a BYE (RFC 3261 §13.2.2.4); the call fails.
    #[tokio::test]
    async fn uac_answers_an_unusable_offer_in_the_2xx_with_a_refusal_then_bye() {
        let peer = peer().await;
        let peer_addr = peer.local_addr().expect("addr");
        let (call, ue, invite, to) = offerless_call(&peer, Timers::default()).await;
        peer.send_to(&peer_response(&invite, 200, "OK", &to, peer_addr, &[], Some(plain_offer(peer_addr))), ue).await.expect("send");
        let (ack, _) = until(&peer, Duration::from_secs(2), |m| matches!(m, Message::Request(r) if r.method == Method::Ack)).await;
        assert_refusal(&ack);
        let (bye, _) = until(&peer, Duration::from_secs(2), |m| matches!(m, Message::Request(r) if r.method == Method::Bye)).await;
        assert_eq!(value(&bye, &HeaderName::CallId), header_text(&invite.headers, &HeaderName::CallId));
        let (alice, result) = call.await.expect("task");
        assert!(result.is_err(), "{result:?}");
        let reports = alice.reports().await.expect("reports");
        assert!(reports.iter().all(|r| matches!(r.state, CallState::Failed(488, _))) && reports.len() == 1, "{reports:?}");
    }

    /// UAC under MIKEY-TICKET, delayed offer: the callee's offer in the 2xx lacks
    /// `a=key-mgmt:mikey` (an SDES offer: a downgrade for a MIKEY policy, whose callee would be
    /// the MIKEY Initiator, RFC 4567 §3). RFC 3261 §13.2.2.4 still requires an ACK with an
    /// answer: it refuses every stream (port 0, no keys of either kind); then BYE. The call
    /// fails 488 with the downgrade as its reason, and no KMS is asked anything (alice's KMS
    /// is unreachable: a Ticket Resolve would fail with another reason).
    #[tokio::test]
    async fn mikey_uac_refuses_an_offer_without_key_management_in_the_2xx() {
        let peer = peer().await;
        let peer_addr = peer.local_addr().expect("addr");
        let (call, ue, invite, to) = offerless_call_as(&peer, Timers::default(), Security::MikeyTicket, Some(unreachable_kms("alice@a.example"))).await;
        peer.send_to(&peer_response(&invite, 200, "OK", &to, peer_addr, &[], Some(caller_offer(peer_addr))), ue).await.expect("send");
        let (ack, _) = until(&peer, Duration::from_secs(2), |m| matches!(m, Message::Request(r) if r.method == Method::Ack)).await;
        let answer = mediasec_sip::body::sdp(&ack).expect("body").expect("an answer in the ACK").to_string();
        assert!(answer.contains("m=audio 0 RTP/SAVP ") && !answer.contains("crypto") && !answer.contains("key-mgmt"), "every stream refused: {answer}");
        let (bye, _) = until(&peer, Duration::from_secs(2), |m| matches!(m, Message::Request(r) if r.method == Method::Bye)).await;
        assert_eq!(value(&bye, &HeaderName::CallId), header_text(&invite.headers, &HeaderName::CallId));
        let (alice, result) = call.await.expect("task");
        assert!(matches!(&result, Err(Error::Downgrade(why)) if why.contains("key-mgmt")), "{result:?}");
        let reports = alice.reports().await.expect("reports");
        assert!(reports.len() == 1 && reports.iter().all(|r| matches!(&r.state, CallState::Failed(488, why) if why.contains("answer refused by policy") && why.contains("a=key-mgmt:mikey"))), "{reports:?}");
    }

    /// UAS under MIKEY-TICKET: an offerless INVITE from an anonymous caller (RFC 3323:
    /// `anonymous.invalid`, no `P-Asserted-Identity`) cannot be answered with an offer — we
    /// would be the MIKEY Initiator and no ticket can name an unknown responder — so it gets
    /// 433 Anonymity Disallowed (RFC 5079) with a `Warning` saying why, before any KMS
    /// exchange; the call is recorded as failed with that status.
    #[tokio::test]
    async fn mikey_uas_refuses_an_offerless_invite_of_an_anonymous_caller_with_433() {
        let socket = peer().await;
        let addr = socket.local_addr().expect("addr");
        let config = UeConfig::loopback("sip:bob@b.example", addr, Security::MikeyTicket, 1500.0, 1000.0);
        let bob = Ue::start_with_kms(config, Some(unreachable_kms("bob@b.example"))).await.expect("UE");
        let anonymous = invite(addr, bob.sip_addr(), "Privacy: id\r\nSupported: 100rel\r\n", "")
            .replace("From: <sip:alice@a.example>;tag=at", "From: \"Anonymous\" <sip:anonymous@anonymous.invalid>;tag=at")
            .replace("Content-Type: application/sdp\r\n", "");
        send(&socket, bob.sip_addr(), &anonymous).await;
        let (refused, before) = until(&socket, Duration::from_secs(2), |m| code(m).is_some_and(|c| c >= 180)).await;
        assert!(before.iter().all(|m| code(m) == Some(100)), "{:?}", before.iter().map(text).collect::<Vec<_>>());
        assert_eq!(code(&refused), Some(433), "{}", text(&refused));
        assert!(value(&refused, &HeaderName::Warning).is_some_and(|w| w.contains("anonymous")), "{}", text(&refused));
        let reports = bob.reports().await.expect("reports");
        assert!(reports.len() == 1 && reports.iter().all(|r| matches!(&r.state, CallState::Failed(433, why) if why.contains("anonymous"))), "{reports:?}");
    }

    /// UAC, offer in a reliable 18x (RFC 3262 §5) that our policy refuses (plain RTP for an
    /// `sdes` UE), up to the CANCEL: the PRACK (with `RAck`, in the early dialog) carries a
    /// valid answer refusing every stream (port 0, RFC 3264 §6) and the INVITE is then
    /// CANCELled, the CANCEL built as RFC 3261 §9.1 says — the INVITE's Request-URI, Call-ID,
    /// From, To (without the 183's tag), CSeq number with the method CANCEL, and one Via equal
    /// to the INVITE's top Via — and sent where the INVITE went. Returns the placing task,
    /// alice's address, the INVITE, the peer's `To`, the PRACK and the CANCEL.
    async fn refuse_reliable_offer_then_cancel(peer: &UdpSocket, timers: Timers) -> (tokio::task::JoinHandle<(Ue, Result<String, Error>)>, SocketAddr, Request, String, Request, Request) {
        let peer_addr = peer.local_addr().expect("addr");
        let (call, ue, invite, to) = offerless_call(peer, timers).await;
        assert_eq!(header_text(&invite.headers, &HeaderName::Supported).as_deref(), Some("100rel"));
        let reliable = [(HeaderName::Require, "100rel"), (HeaderName::RSeq, "1")];
        peer.send_to(&peer_response(&invite, 183, "Session Progress", &to, peer_addr, &reliable, Some(plain_offer(peer_addr))), ue).await.expect("send");
        let (prack, _) = until(peer, Duration::from_secs(2), |m| matches!(m, Message::Request(r) if r.method == Method::Prack)).await;
        assert_eq!(value(&prack, &HeaderName::RAck).as_deref(), Some("1 1 INVITE"), "{}", text(&prack));
        assert!(value(&prack, &HeaderName::To).is_some_and(|t| t.contains("tag=bt")), "in the early dialog: {}", text(&prack));
        assert_refusal(&prack);
        let (cancel, before) = until(peer, Duration::from_secs(2), |m| matches!(m, Message::Request(r) if r.method == Method::Cancel)).await;
        assert!(before.is_empty(), "the CANCEL follows the PRACK: {:?}", before.iter().map(text).collect::<Vec<_>>());
        let (Message::Request(prack), Message::Request(cancel)) = (prack, cancel) else { panic!("requests") };
        assert_eq!(cancel.uri.to_string(), invite.uri.to_string(), "Request-URI");
        for name in [HeaderName::CallId, HeaderName::From, HeaderName::To] {
            assert_eq!(header_text(&cancel.headers, &name), header_text(&invite.headers, &name), "{name}");
        }
        assert!(header_text(&cancel.headers, &HeaderName::To).is_some_and(|t| !t.contains("tag=")), "To without a tag");
        assert_eq!(header_text(&cancel.headers, &HeaderName::CSeq).as_deref(), Some("1 CANCEL"));
        let vias: Vec<_> = cancel.headers.get_all(&HeaderName::Via).map(|h| h.value().into_owned()).collect();
        assert_eq!(vias, vec![invite.headers.get(&HeaderName::Via).expect("Via").value().into_owned()], "a single Via, the INVITE's top one");
        assert!(Message::Request(cancel.clone()).body().is_empty(), "no body");
        (call, ue, invite, to, prack, cancel)
    }

    /// The call fails 488 with the refusal's reason — the one the PRACK's answer gave, not
    /// "2xx without an SDP answer" nor the 487's "Request Terminated" — and so does the call
    /// the user placed. Returns alice.
    async fn assert_failed_with_the_refusal(call: tokio::task::JoinHandle<(Ue, Result<String, Error>)>) -> Ue {
        const REFUSAL: &str = "answer refused by policy: offer without key management; policy requires SRTP";
        let (alice, result) = call.await.expect("task");
        assert!(result.as_ref().is_err_and(|e| e.to_string().contains(REFUSAL)), "{result:?}");
        let reports = alice.reports().await.expect("reports");
        assert!(reports.len() == 1 && reports.iter().all(|r| r.state == CallState::Failed(488, format!("media negotiation: {REFUSAL}"))), "{reports:?}");
        alice
    }

    /// UAC, an unusable offer in a reliable 18x (see [`refuse_reliable_offer_then_cancel`];
    /// T1 = 50 ms): the callee answers the PRACK and the CANCEL 200 but never the INVITE (an
    /// RFC 2543 UAS sends no 487). RFC 3261 §9.1: 64·T1 after the CANCEL the INVITE is
    /// considered cancelled — the call fails 488 with the refusal's reason, as the 487 would
    /// have made it, and not before. A 487 arriving after that is ACKed by the endpoint (the
    /// INVITE's client transaction was given up, its ACK kept for 64·T1) and changes nothing:
    /// no BYE, the same single failed call, the UE still serving.
    #[tokio::test]
    async fn uac_gives_up_64_t1_after_its_cancel_when_no_final_response_comes() {
        let peer = peer().await;
        let peer_addr = peer.local_addr().expect("addr");
        let (call, ue, invite, to, prack, cancel) = refuse_reliable_offer_then_cancel(&peer, timers(50)).await;
        let cancelled = Instant::now();
        peer.send_to(&peer_response(&prack, 200, "OK", &to, peer_addr, &[], None), ue).await.expect("send");
        let cancel_to = header_text(&cancel.headers, &HeaderName::To).expect("To");
        peer.send_to(&peer_response(&cancel, 200, "OK", &cancel_to, peer_addr, &[], None), ue).await.expect("send");
        let alice = tokio::time::timeout(Duration::from_secs(10), assert_failed_with_the_refusal(call)).await.expect("the call ends, 64·T1 after the CANCEL");
        let elapsed = cancelled.elapsed();
        // The timer starts when the CANCEL is sent, just before the peer reads it.
        assert!(elapsed >= Duration::from_millis(64 * 50 - 20) && elapsed < Duration::from_secs(8), "{elapsed:?}");
        peer.send_to(&peer_response(&invite, 487, "Request Terminated", &to, peer_addr, &[], None), ue).await.expect("send");
        let (ack, before) = until(&peer, Duration::from_secs(2), |m| matches!(m, Message::Request(r) if r.method == Method::Ack)).await;
        assert_eq!(value(&ack, &HeaderName::CSeq).as_deref(), Some("1 ACK"), "{}", text(&ack));
        assert!(before.iter().all(|m| !matches!(m, Message::Request(r) if r.method == Method::Bye)), "{:?}", before.iter().map(text).collect::<Vec<_>>());
        let quiet = next(&peer, Duration::from_millis(300)).await;
        assert!(quiet.as_ref().is_none_or(|m| !matches!(m, Message::Request(r) if r.method == Method::Bye)), "no BYE after the late 487: {:?}", quiet.as_ref().map(text));
        let reports = alice.reports().await.expect("the UE still runs");
        assert!(reports.len() == 1 && reports.iter().all(|r| matches!(&r.state, CallState::Failed(488, why) if why.contains("policy requires SRTP"))), "unchanged by the 487: {reports:?}");
    }

    /// UAC, as above but what comes after the give-up is a 200 to the INVITE (it crossed
    /// nothing: the UAS answered late). The INVITE's client transaction is gone (RFC 3261
    /// §9.1), so the 200 reaches the UE as a stray: it is still ACKed in its dialog and the
    /// session ended with BYE (§13.2.2.4), and the outcome stays the refusal.
    #[tokio::test]
    async fn uac_acks_and_byes_a_2xx_that_comes_after_it_gave_up() {
        let peer = peer().await;
        let peer_addr = peer.local_addr().expect("addr");
        let (call, ue, invite, to, prack, cancel) = refuse_reliable_offer_then_cancel(&peer, timers(50)).await;
        peer.send_to(&peer_response(&prack, 200, "OK", &to, peer_addr, &[], None), ue).await.expect("send");
        let cancel_to = header_text(&cancel.headers, &HeaderName::To).expect("To");
        peer.send_to(&peer_response(&cancel, 200, "OK", &cancel_to, peer_addr, &[], None), ue).await.expect("send");
        let alice = tokio::time::timeout(Duration::from_secs(10), assert_failed_with_the_refusal(call)).await.expect("the call ends, 64·T1 after the CANCEL");
        peer.send_to(&peer_response(&invite, 200, "OK", &to, peer_addr, &[], Some(plain_offer(peer_addr))), ue).await.expect("send");
        let (ack, _) = until(&peer, Duration::from_secs(2), |m| matches!(m, Message::Request(r) if r.method == Method::Ack)).await;
        assert!(value(&ack, &HeaderName::To).is_some_and(|t| t.contains("tag=bt")), "in the dialog: {}", text(&ack));
        assert_ne!(value(&ack, &HeaderName::Via), header_text(&invite.headers, &HeaderName::Via), "the 2xx's ACK is a transaction of its own (§17.1.1.3)");
        let (bye, _) = until(&peer, Duration::from_secs(2), |m| matches!(m, Message::Request(r) if r.method == Method::Bye)).await;
        assert_eq!(value(&bye, &HeaderName::CallId), header_text(&invite.headers, &HeaderName::CallId));
        let reports = alice.reports().await.expect("the UE still runs");
        assert!(reports.len() == 1 && reports.iter().all(|r| matches!(&r.state, CallState::Failed(488, why) if why.contains("policy requires SRTP"))), "unchanged by the 2xx: {reports:?}");
    }

    /// UAC, an unusable offer in a reliable 18x (see [`refuse_reliable_offer_then_cancel`]):
    /// the callee answers the CANCEL 200 and the INVITE 487 (RFC 3261 §9.2); the 487 is ACKed
    /// by the transaction layer (§17.1.1.3), no BYE goes out (no dialog was confirmed) and
    /// the call fails 488 with the refusal's reason.
    #[tokio::test]
    async fn uac_cancels_after_refusing_an_unusable_offer_in_a_reliable_18x_in_the_prack() {
        let peer = peer().await;
        let peer_addr = peer.local_addr().expect("addr");
        let (call, ue, invite, to, prack, cancel) = refuse_reliable_offer_then_cancel(&peer, Timers::default()).await;
        peer.send_to(&peer_response(&prack, 200, "OK", &to, peer_addr, &[], None), ue).await.expect("send");
        let cancel_to = header_text(&cancel.headers, &HeaderName::To).expect("To");
        peer.send_to(&peer_response(&cancel, 200, "OK", &cancel_to, peer_addr, &[], None), ue).await.expect("send");
        peer.send_to(&peer_response(&invite, 487, "Request Terminated", &to, peer_addr, &[], None), ue).await.expect("send");
        let (ack, before) = until(&peer, Duration::from_secs(2), |m| matches!(m, Message::Request(r) if r.method == Method::Ack)).await;
        assert!(before.is_empty(), "{:?}", before.iter().map(text).collect::<Vec<_>>());
        assert_eq!(value(&ack, &HeaderName::CSeq).as_deref(), Some("1 ACK"), "{}", text(&ack));
        assert_failed_with_the_refusal(call).await;
        let quiet = next(&peer, Duration::from_millis(300)).await;
        assert!(quiet.is_none(), "no BYE after the 487: {:?}", quiet.as_ref().map(text));
    }

    /// UAC, an unusable offer in a reliable 18x (see [`refuse_reliable_offer_then_cancel`]),
    /// and the callee's 200 to the INVITE crosses the CANCEL (RFC 3261 §9.1: the CANCEL then
    /// has no effect). That 200 repeats the 183's offer (RFC 6337 §3.1): the exchange completed
    /// in the 183/PRACK, so it is no new offer — the ACK has no body — and the session is
    /// ended with BYE (§13.2.2.4); the call fails 488 with the refusal's reason.
    #[tokio::test]
    async fn uac_acks_and_byes_a_2xx_that_crosses_its_cancel_after_a_refusal_in_the_prack() {
        let peer = peer().await;
        let peer_addr = peer.local_addr().expect("addr");
        let (call, ue, invite, to, prack, cancel) = refuse_reliable_offer_then_cancel(&peer, Timers::default()).await;
        peer.send_to(&peer_response(&prack, 200, "OK", &to, peer_addr, &[], None), ue).await.expect("send");
        peer.send_to(&peer_response(&invite, 200, "OK", &to, peer_addr, &[], Some(plain_offer(peer_addr))), ue).await.expect("send");
        let cancel_to = header_text(&cancel.headers, &HeaderName::To).expect("To");
        peer.send_to(&peer_response(&cancel, 200, "OK", &cancel_to, peer_addr, &[], None), ue).await.expect("send");
        let (ack, _) = until(&peer, Duration::from_secs(2), |m| matches!(m, Message::Request(r) if r.method == Method::Ack)).await;
        assert!(mediasec_sip::body::sdp(&ack).expect("body").is_none(), "no second answer: {}", text(&ack));
        assert!(value(&ack, &HeaderName::To).is_some_and(|t| t.contains("tag=bt")), "in the dialog: {}", text(&ack));
        let (bye, before) = until(&peer, Duration::from_secs(2), |m| matches!(m, Message::Request(r) if r.method == Method::Bye)).await;
        assert!(before.is_empty(), "{:?}", before.iter().map(text).collect::<Vec<_>>());
        assert_eq!(value(&bye, &HeaderName::CallId), header_text(&invite.headers, &HeaderName::CallId));
        assert_failed_with_the_refusal(call).await;
    }

    /// UAS (RFC 3262 §3): the 183 is passed again at T1, 2·T1, 4·T1, … and after 64·T1 without
    /// a PRACK the INVITE is answered 504.
    #[tokio::test]
    async fn uas_gives_up_with_504_after_64_t1_without_prack() {
        let peer = peer().await;
        let peer_addr = peer.local_addr().expect("addr");
        let mut config = UeConfig::loopback("sip:bob@b.example", peer_addr, SDES, 1000.0, 440.0);
        config.timers = timers(10);
        config.answering = Answering { auto: true, delay: Duration::ZERO, early_media: true };
        let bob = Ue::start(config).await.expect("ue");
        let ue = bob.sip_addr();
        let started = Instant::now();
        send(&peer, ue, &invite(peer_addr, ue, "Require: 100rel\r\n", &caller_offer(peer_addr))).await;
        let (last, before) = until(&peer, Duration::from_secs(3), |m| code(m) == Some(504)).await;
        let elapsed = started.elapsed();
        let copies = before.iter().filter(|m| code(m) == Some(183)).count();
        // At 0, 10, 30, 70, 150, 310 and 630 ms (the next would be at 1270): seven copies, then
        // 504 once 64·T1 = 640 ms have passed. The seventh is due only 10 ms before the 504,
        // which a loaded machine's late timers can push past it: six is accepted, more is not.
        assert!((6..=7).contains(&copies), "{copies}: {:?}", before.iter().map(text).collect::<Vec<_>>());
        assert!(elapsed >= Duration::from_millis(640), "{elapsed:?}");
        assert!(value(&last, &HeaderName::To).is_some_and(|t| t.contains("tag=")));
        let report = bob.reports().await.expect("reports");
        assert!(report.iter().any(|r| matches!(r.state, CallState::Failed(504, _))), "{report:?}");
    }

    /// Addresses for one host name, no NAPTR or SRV: a resolver without DNS for a test.
    struct OneName(&'static str, IpAddr);

    impl mediasec_sip::locate::Resolve for OneName {
        fn naptr<'a>(&'a self, _: &'a str) -> mediasec_sip::locate::Lookup<'a, mediasec_sip::locate::Naptr> {
            Box::pin(async { Ok(Vec::new()) })
        }
        fn srv<'a>(&'a self, _: &'a str) -> mediasec_sip::locate::Lookup<'a, mediasec_sip::locate::Srv> {
            Box::pin(async { Ok(Vec::new()) })
        }
        fn ips<'a>(&'a self, name: &'a str) -> mediasec_sip::locate::Lookup<'a, IpAddr> {
            Box::pin(async move { Ok(if name.trim_end_matches('.').eq_ignore_ascii_case(self.0) { vec![self.1] } else { Vec::new() }) })
        }
    }

    /// UAC: a 2xx whose `Contact` names a host name (no `Record-Route`: the ACK goes to the
    /// remote target, RFC 3261 §13.2.2.4) is ACKed at the address that name locates to
    /// (`Command::StatelessUri`, RFC 3263 §4.2), and the call is established; before, the ACK
    /// needed an IP literal and the call failed.
    #[tokio::test]
    async fn uac_acks_a_2xx_whose_contact_is_a_host_name() {
        let peer = peer().await;
        let peer_addr = peer.local_addr().expect("addr");
        let mut config = UeConfig::loopback("sip:alice@a.example", peer_addr, SDES, 440.0, 1000.0);
        config.timers = timers(100);
        config.resolver = Some(Arc::new(OneName("bob.test", peer_addr.ip())));
        let alice = Arc::new(Ue::start(config).await.expect("ue"));
        let calling = tokio::spawn({
            let (alice, target) = (alice.clone(), format!("sip:bob@{peer_addr}"));
            async move { alice.call(&target).await }
        });
        let (invite, _) = until(&peer, Duration::from_secs(2), |m| matches!(m, Message::Request(r) if r.method == Method::Invite)).await;
        let offer = mediasec_sip::body::sdp(&invite).expect("sdp").expect("offer");
        let (answer, _) = offer_answer::answer(&offer, SocketAddr::new(peer_addr.ip(), 40_002), 1, SDES, &SdesPolicy::default(), &mut fill_random).expect("answer");
        let Message::Request(inv) = &invite else { panic!("request") };
        let contact = format!("sip:bob@bob.test:{}", peer_addr.port());
        let ok = ResponseBuilder::to_request(inv, StatusCode::new(200).expect("code"), "OK".to_owned())
            .expect("builder")
            .set_header(&HeaderName::To, format!("<sip:bob@{peer_addr}>;tag=bt"))
            .expect("to")
            .header(HeaderName::Contact, format!("<{contact}>"))
            .expect("contact")
            .header(HeaderName::ContentType, "application/sdp")
            .expect("ct")
            .body(answer);
        send(&peer, alice.sip_addr(), &text(&Message::Response(ok.build()))).await;
        let (ack, _) = until(&peer, Duration::from_secs(5), |m| matches!(m, Message::Request(r) if r.method == Method::Ack)).await;
        let Message::Request(ack) = ack else { panic!("request") };
        assert_eq!(String::from_utf8_lossy(&ack.uri.to_bytes()), contact);
        let call_id = tokio::time::timeout(Duration::from_secs(5), calling).await.expect("in time").expect("joined").expect("established");
        assert_eq!(value(&invite, &HeaderName::CallId).as_deref(), Some(call_id.as_str()));
    }

    /// UAC (RFC 3262 §4): `Supported: 100rel` in the INVITE; a reliable 183 is PRACKed with
    /// `RAck: rseq cseq INVITE` in its early dialog; its retransmission and a response out of
    /// order get no PRACK; the next in order does; an UPDATE goes in the early dialog; the 200
    /// without SDP establishes the call on the 183's answer and the ACK follows.
    #[tokio::test]
    async fn uac_pracks_in_order_and_updates_in_the_early_dialog() {
        let peer = peer().await;
        let peer_addr = peer.local_addr().expect("addr");
        let mut config = UeConfig::loopback("sip:alice@a.example", peer_addr, SDES, 440.0, 1000.0);
        config.timers = timers(100);
        let alice = Arc::new(Ue::start(config).await.expect("ue"));
        let ue = alice.sip_addr();
        let calling = tokio::spawn({
            let (alice, target) = (alice.clone(), format!("sip:bob@{peer_addr}"));
            async move { alice.call(&target).await }
        });
        let (invite, _) = until(&peer, Duration::from_secs(2), |m| matches!(m, Message::Request(r) if r.method == Method::Invite)).await;
        assert_eq!(value(&invite, &HeaderName::Supported).as_deref(), Some("100rel"), "{}", text(&invite));
        let offer = mediasec_sip::body::sdp(&invite).expect("sdp").expect("offer");
        let (answer, _) = offer_answer::answer(&offer, SocketAddr::new(peer_addr.ip(), 40_002), 1, SDES, &SdesPolicy::default(), &mut fill_random).expect("answer");
        let Message::Request(inv) = &invite else { panic!("request") };
        let reply = |code: u16, reason: &str, extra: &str, body: &str| {
            let mut b = ResponseBuilder::to_request(inv, StatusCode::new(code).expect("code"), reason.to_owned())
                .expect("builder")
                .set_header(&HeaderName::To, format!("<sip:bob@{peer_addr}>;tag=bt"))
                .expect("to")
                .header(HeaderName::Contact, format!("<sip:bob@{peer_addr}>"))
                .expect("contact");
            for line in extra.lines().filter(|l| !l.is_empty()) {
                let (name, v) = line.split_once(": ").expect("header");
                b = b.header(HeaderName::parse(&Bytes::copy_from_slice(name.as_bytes())), v.to_owned()).expect("header");
            }
            if !body.is_empty() {
                b = b.header(HeaderName::ContentType, "application/sdp").expect("ct").body(body.to_owned());
            }
            text(&Message::Response(b.build()))
        };
        let is_prack = |m: &Message| matches!(m, Message::Request(r) if r.method == Method::Prack);
        send(&peer, ue, &reply(183, "Session Progress", "Require: 100rel\nRSeq: 10\n", &answer)).await;
        let (prack, _) = until(&peer, Duration::from_secs(2), is_prack).await;
        assert_eq!(value(&prack, &HeaderName::RAck).as_deref(), Some("10 1 INVITE"));
        assert!(value(&prack, &HeaderName::To).is_some_and(|t| t.contains("tag=bt")), "in the early dialog: {}", text(&prack));
        let Message::Request(p) = &prack else { panic!("request") };
        let ok = ResponseBuilder::to_request(p, StatusCode::new(200).expect("code"), "OK".to_owned()).expect("b").build();
        send(&peer, ue, &text(&Message::Response(ok))).await;
        // UPDATE with a fresh offer in the early dialog (RFC 3311 §5.1), answered in its 200.
        let call_id = value(&invite, &HeaderName::CallId).expect("Call-ID");
        let updating = tokio::spawn({
            let (alice, call_id) = (alice.clone(), call_id.clone());
            async move { alice.update(&call_id).await }
        });
        let (update, _) = until(&peer, Duration::from_secs(2), |m| matches!(m, Message::Request(r) if r.method == Method::Update)).await;
        assert_eq!(value(&update, &HeaderName::CSeq).as_deref(), Some("3 UPDATE"));
        assert!(value(&update, &HeaderName::To).is_some_and(|t| t.contains("tag=bt")), "{}", text(&update));
        let new_offer = mediasec_sip::body::sdp(&update).expect("sdp").expect("offer");
        let (new_answer, _) = offer_answer::answer(&new_offer, SocketAddr::new(peer_addr.ip(), 40_002), 2, SDES, &SdesPolicy::default(), &mut fill_random).expect("answer");
        let Message::Request(u) = &update else { panic!("request") };
        let ok = ResponseBuilder::to_request(u, StatusCode::new(200).expect("code"), "OK".to_owned())
            .expect("b")
            .header(HeaderName::ContentType, "application/sdp")
            .expect("ct")
            .body(new_answer)
            .build();
        send(&peer, ue, &text(&Message::Response(ok))).await;
        updating.await.expect("join").expect("UPDATE answered in the early dialog");
        // A retransmission (same RSeq) and one out of order (gap): no new PRACK.
        send(&peer, ue, &reply(183, "Session Progress", "Require: 100rel\nRSeq: 10\n", &answer)).await;
        send(&peer, ue, &reply(180, "Ringing", "Require: 100rel\nRSeq: 12\n", "")).await;
        let quiet = next(&peer, Duration::from_millis(300)).await;
        assert!(quiet.is_none(), "nothing to acknowledge: {:?}", quiet.as_ref().map(text));
        send(&peer, ue, &reply(180, "Ringing", "Require: 100rel\nRSeq: 11\n", "")).await;
        let (prack, _) = until(&peer, Duration::from_secs(2), is_prack).await;
        assert_eq!(value(&prack, &HeaderName::RAck).as_deref(), Some("11 1 INVITE"));
        let Message::Request(p) = &prack else { panic!("request") };
        let ok = ResponseBuilder::to_request(p, StatusCode::new(200).expect("code"), "OK".to_owned()).expect("b").build();
        send(&peer, ue, &text(&Message::Response(ok))).await;
        send(&peer, ue, &reply(200, "OK", "", "")).await;
        let (ack, _) = until(&peer, Duration::from_secs(2), |m| matches!(m, Message::Request(r) if r.method == Method::Ack)).await;
        assert!(value(&ack, &HeaderName::CSeq).is_some_and(|c| c == "1 ACK"), "{}", text(&ack));
        let id = calling.await.expect("join").expect("established on the 183's answer");
        assert_eq!(id, call_id);
        let report = alice.report(&id).await.expect("report").expect("call");
        assert_eq!(report.state, CallState::Established);
        assert!(report.protection.starts_with("srtp"), "{report:?}");
        assert_eq!(report.rekeys, 1, "the UPDATE's keys are in force: {report:?}");
        // PRACK, UPDATE and PRACK took CSeq 2–4 in the early dialog; the BYE goes on from there.
        let hanging = tokio::spawn(async move { alice.hangup(&id).await });
        let (bye, _) = until(&peer, Duration::from_secs(2), |m| matches!(m, Message::Request(r) if r.method == Method::Bye)).await;
        assert_eq!(value(&bye, &HeaderName::CSeq).as_deref(), Some("5 BYE"));
        hanging.abort();
    }

    /// A UE's KMS access whose KMS (on 127.0.0.1) accepts connections and holds them: each
    /// accepted connection goes to the returned channel, unanswered, until the test drops it
    /// (the KMS then closes it without a response: the exchange fails). Also counts them.
    async fn holding_kms(uid: &str) -> (KmsAccess, mpsc::UnboundedReceiver<tokio::net::TcpStream>, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let (tx, rx) = mpsc::unbounded_channel();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if tx.send(conn).is_err() {
                    return;
                }
            }
        });
        let ue = mediasec_kms::ue::Ue::new(mediasec_kms::identity::KmsUid::parse(uid).expect("uid"), "kms.example", "btid", &[0; 32], 30);
        let client = mediasec_kms::client::KmsClient::new(mediasec_bsf::client::Endpoint::http(&url).expect("endpoint"));
        (KmsAccess { ue, client, high_security: None }, rx, accepted)
    }

    /// The next connection to a [`holding_kms`], and the request line of the request on it.
    async fn held_request(held: &mut mpsc::UnboundedReceiver<tokio::net::TcpStream>) -> (tokio::net::TcpStream, String) {
        use tokio::io::AsyncReadExt as _;
        let mut conn = tokio::time::timeout(Duration::from_secs(5), held.recv()).await.expect("a KMS request in time").expect("listener");
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(2).any(|w| w == b"\r\n") {
            let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf)).await.expect("request in time").expect("read");
            assert!(n > 0, "the KMS connection closed before a request");
            head.extend_from_slice(buf.get(..n).unwrap_or_default());
        }
        let line = String::from_utf8_lossy(&head).lines().next().unwrap_or_default().to_owned();
        (conn, line)
    }

    /// An `RTP/SAVP` offer at the peer carrying a TRANSFER_INIT from `initiator` to `responder`
    /// under a ticket the initiator's UE made itself (mode 3, TS 33.328 Annex D.4): a 3GPP
    /// ticket, so the responder's UE asks its KMS to resolve it.
    fn ticket_offer(peer_addr: SocketAddr, initiator: &str, responder: &str) -> String {
        use mediasec_kms::identity::{KmsUid, Pattern};
        let ue = mediasec_kms::ue::Ue::new(KmsUid::parse(initiator).expect("uid"), "kms.example", "btid-i", &[5; 32], 30);
        let to = KmsUid::parse(responder).expect("uid");
        let ask = mediasec_kms::ue::Ask { recipients: vec![Pattern::parse(to.as_str()).expect("pattern")], reusable: false, forking: false, lifetime: 60 };
        let now = unix_now();
        let held = ue.make_ticket(&ask, now, &fill_random).expect("ticket");
        let (init, _) = ue.transfer_init(&held, &to, 1, 0x1234, now, [9; 16]).expect("TRANSFER_INIT");
        offer_answer::sdp_text(SocketAddr::new(peer_addr.ip(), 40_002), 1, "RTP/SAVP", &[ticket::key_mgmt_line(init), "rtcp-mux".into()])
    }

    fn is_request(m: &Message, method: &Method, to_tag: &str) -> bool {
        matches!(m, Message::Request(r) if r.method == *method) && value(m, &HeaderName::To).is_some_and(|t| t.ends_with(&format!(";tag={to_tag}")))
    }

    /// UAC under MIKEY-TICKET, delayed offer with two forks (docs/sip.md §5 "Delayed offer",
    /// §2). The first fork's 2xx brings bob's TRANSFER_INIT; alice's Ticket Resolve of it is
    /// held by her KMS. Meanwhile — the UE task is not waiting for the KMS — a retransmission
    /// of that 2xx gets no ACK yet (the ACK goes with the answer: processed once), and a 2xx
    /// of a second fork is ACKed at once with an answer refusing every stream (RFC 3261
    /// §13.2.2.4, RFC 3264 §6: no keys) and ended with BYE, without a Ticket Resolve. When
    /// the KMS closes the held request unanswered, the first fork's offer is refused the same
    /// way (ACK with the refusal, BYE) and the call fails; the KMS saw one connection only.
    #[tokio::test]
    async fn uac_refuses_an_extra_forks_offer_without_kms_work_while_the_first_waits_for_its_resolve() {
        let peer = peer().await;
        let peer_addr = peer.local_addr().expect("addr");
        let (kms, mut held, accepted) = holding_kms("alice@a.example").await;
        let (call, ue, invite, to) = offerless_call_as(&peer, Timers::default(), Security::MikeyTicket, Some(kms)).await;
        let offer = ticket_offer(peer_addr, "bob@b.example", "alice@a.example");
        let first = peer_response(&invite, 200, "OK", &to, peer_addr, &[], Some(offer.clone()));
        peer.send_to(&first, ue).await.expect("send");
        let (conn, line) = held_request(&mut held).await;
        assert!(line.starts_with("POST /keymanagement?requesttype=ticketresolve "), "{line}");
        peer.send_to(&first, ue).await.expect("send");
        let second = to.replace(";tag=bt", ";tag=bt2");
        peer.send_to(&peer_response(&invite, 200, "OK", &second, peer_addr, &[], Some(offer)), ue).await.expect("send");
        let (ack, before) = until(&peer, Duration::from_secs(2), |m| matches!(m, Message::Request(r) if r.method == Method::Ack)).await;
        assert!(before.is_empty(), "no ACK for the retransmitted 2xx while its answer waits: {:?}", before.iter().map(text).collect::<Vec<_>>());
        assert!(is_request(&ack, &Method::Ack, "bt2"), "the second fork's ACK first: {}", text(&ack));
        let refusal = mediasec_sip::body::sdp(&ack).expect("body").expect("an answer in the ACK").to_string();
        assert!(refusal.contains("m=audio 0 RTP/SAVP ") && !refusal.contains("key-mgmt") && !refusal.contains("crypto"), "every stream refused, no keys: {refusal}");
        let (bye, _) = until(&peer, Duration::from_secs(2), |m| matches!(m, Message::Request(r) if r.method == Method::Bye)).await;
        assert!(is_request(&bye, &Method::Bye, "bt2"), "{}", text(&bye));
        drop(conn);
        let (ack, _) = until(&peer, Duration::from_secs(5), |m| is_request(m, &Method::Ack, "bt")).await;
        let refusal = mediasec_sip::body::sdp(&ack).expect("body").expect("an answer in the ACK").to_string();
        assert!(refusal.contains("m=audio 0 RTP/SAVP ") && !refusal.contains("key-mgmt"), "the failed resolve: refused, {refusal}");
        until(&peer, Duration::from_secs(2), |m| is_request(m, &Method::Bye, "bt")).await;
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1, "one Ticket Resolve, none for the extra fork");
        let (alice, result) = call.await.expect("task");
        assert!(matches!(&result, Err(Error::Negotiation(why)) if why.contains("MIKEY-TICKET")), "{result:?}");
        let reports = alice.reports().await.expect("reports");
        assert!(reports.len() == 1 && reports.iter().all(|r| r.extra_forks_ended == 1 && matches!(r.state, CallState::Failed(488, _))), "{reports:?}");
    }

    /// UAS under MIKEY-TICKET (docs/sip.md §2): an INVITE whose TRANSFER_INIT bob must resolve
    /// at his KMS, which holds the request. The INVITE gets `100 Trying` at once (RFC 3261
    /// §8.2.6.1); its retransmission is absorbed by the server transaction (no second Ticket
    /// Resolve); a CANCEL gets 200 and the INVITE 487 while the resolve is still held — the KMS
    /// work is abandoned. When the KMS then closes the held request, nothing more is sent for
    /// the call (an OPTIONS' 200 comes with nothing but 487 retransmissions before it), and
    /// bob still answers.
    #[tokio::test]
    async fn uas_cancelled_while_its_ticket_resolve_is_held_sends_nothing_more() {
        let socket = peer().await;
        let addr = socket.local_addr().expect("addr");
        let (kms, mut held, accepted) = holding_kms("bob@b.example").await;
        let config = UeConfig::loopback("sip:bob@b.example", addr, Security::MikeyTicket, 1500.0, 1000.0);
        let bob = Ue::start_with_kms(config, Some(kms)).await.expect("UE");
        let ue = bob.sip_addr();
        let invite = invite(addr, ue, "", &ticket_offer(addr, "alice@a.example", "bob@b.example"));
        send(&socket, ue, &invite).await;
        let (trying, _) = until(&socket, Duration::from_secs(2), |m| code(m).is_some()).await;
        assert_eq!(code(&trying), Some(100), "{}", text(&trying));
        let (conn, line) = held_request(&mut held).await;
        assert!(line.starts_with("POST /keymanagement?requesttype=ticketresolve "), "{line}");
        send(&socket, ue, &invite).await;
        send(&socket, ue, &format!(
            "CANCEL sip:bob@{ue} SIP/2.0\r\nVia: SIP/2.0/UDP {addr};branch=z9hG4bKinv1\r\nMax-Forwards: 70\r\n\
From: <sip:alice@a.example>;tag=at\r\nTo: <sip:bob@b.example>\r\nCall-ID: rel-1\r\nCSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n"
        )).await;
        let (terminated, before) = until(&socket, Duration::from_secs(2), |m| code(m) == Some(487)).await;
        assert!(
            before.iter().all(|m| code(m) == Some(100) || (code(m) == Some(200) && value(m, &HeaderName::CSeq).is_some_and(|c| c.ends_with("CANCEL")))),
            "only 100s and the CANCEL's 200 before the 487: {:?}",
            before.iter().map(text).collect::<Vec<_>>()
        );
        let to = value(&terminated, &HeaderName::To).expect("To");
        send(&socket, ue, &format!(
            "ACK sip:bob@{ue} SIP/2.0\r\nVia: SIP/2.0/UDP {addr};branch=z9hG4bKinv1\r\nMax-Forwards: 70\r\n\
From: <sip:alice@a.example>;tag=at\r\nTo: {to}\r\nCall-ID: rel-1\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
        )).await;
        drop(conn);
        send(&socket, ue, &format!(
            "OPTIONS sip:bob@{ue} SIP/2.0\r\nVia: SIP/2.0/UDP {addr};branch=z9hG4bKopt1\r\nMax-Forwards: 70\r\n\
From: <sip:alice@a.example>;tag=ot\r\nTo: <sip:bob@b.example>\r\nCall-ID: opt-1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        )).await;
        let (_, before) = until(&socket, Duration::from_secs(2), |m| code(m) == Some(200) && value(m, &HeaderName::CSeq).is_some_and(|c| c.ends_with("OPTIONS"))).await;
        assert!(before.iter().all(|m| code(m) == Some(487)), "nothing for the cancelled call: {:?}", before.iter().map(text).collect::<Vec<_>>());
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1, "one Ticket Resolve: the retransmitted INVITE made none");
        let reports = bob.reports().await.expect("reports");
        assert!(reports.len() == 1 && reports.iter().all(|r| matches!(r.state, CallState::Failed(487, _)) && r.peer_key.is_none()), "{reports:?}");
    }

    /// High-security caller whose key is last month's (docs/high-security.md §9): before
    /// signing its DH_INIT the UE fetches this month's key (`high_security::ready`, Ua
    /// `keyprovision`), off the UE task (docs/sip.md §2). While its KMS holds that request the
    /// UE answers an OPTIONS and has sent no INVITE; when the KMS closes the request
    /// unanswered, the call fails with the provisioning error and still no INVITE goes out.
    #[tokio::test]
    async fn uac_held_key_provisioning_does_not_stall_the_ue() {
        let socket = peer().await;
        let addr = socket.local_addr().expect("addr");
        let (mut kms, mut held, accepted) = holding_kms("alice@a.example").await;
        let ksak = mediasec_mikey::eccsi::KmsSecret::from_bytes(&[0x42; 32]).expect("KSAK");
        let last_month = unix_now().saturating_sub(Duration::from_secs(40 * 86_400));
        kms.high_security = Some(local_high_security("sip:alice@a.example", &ksak, last_month));
        let config = UeConfig::loopback("sip:alice@a.example", addr, Security::HighSecurity, 440.0, 1000.0);
        let alice = Arc::new(Ue::start_with_kms(config, Some(kms)).await.expect("UE"));
        let ue = alice.sip_addr();
        let calling = {
            let alice = Arc::clone(&alice);
            tokio::spawn(async move { alice.call("sip:bob@b.example").await })
        };
        let (conn, line) = held_request(&mut held).await;
        assert!(line.starts_with("POST /keymanagement?requesttype=keyprovision "), "{line}");
        let options = |branch: &str| {
            format!(
                "OPTIONS sip:alice@{ue} SIP/2.0\r\nVia: SIP/2.0/UDP {addr};branch={branch}\r\nMax-Forwards: 70\r\n\
From: <sip:bob@b.example>;tag=ot\r\nTo: <sip:alice@a.example>\r\nCall-ID: {branch}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
            )
        };
        send(&socket, ue, &options("z9hG4bKopt1")).await;
        let (ok, before) = until(&socket, Duration::from_secs(2), |m| code(m).is_some()).await;
        assert_eq!(code(&ok), Some(200), "{}", text(&ok));
        assert!(before.is_empty() && !calling.is_finished(), "no INVITE while the key is being fetched: {:?}", before.iter().map(text).collect::<Vec<_>>());
        drop(conn);
        let result = tokio::time::timeout(Duration::from_secs(5), calling).await.expect("in time").expect("task");
        assert!(matches!(&result, Err(Error::Negotiation(why)) if why.contains("key provisioning")), "{result:?}");
        send(&socket, ue, &options("z9hG4bKopt2")).await;
        let (ok, before) = until(&socket, Duration::from_secs(2), |m| code(m).is_some()).await;
        assert!(code(&ok) == Some(200) && before.is_empty(), "no INVITE after the failed provisioning: {:?}", before.iter().map(text).collect::<Vec<_>>());
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
