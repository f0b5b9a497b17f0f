//! The CSCF proxy core (RFC 3261 §16 stateful proxy, RFC 6026), sans-IO: it takes the SIP
//! endpoint's [`Event`]s with the current time and returns the [`Command`]s to perform.
//!
//! Roles ([`Role`]):
//! - **P-CSCF**: the UE's outbound proxy. Forwards REGISTER to its S-CSCF adding
//!   `Path: <sip:us;lr>` (RFC 3327, so terminating requests come back through it) and, when it
//!   supports the media-security indication, answers a `Security-Client: ...;mediasec` with
//!   `Security-Server: sdes-srtp;mediasec` in the 2xx (TS 24.229 §5.2.2, TS 33.328 §7.1).
//!   Checks the `a=crypto` lines of every INVITE and UPDATE offer (TS 33.328 §7.2: the
//!   P-CSCF is where SDES is inspected); a secured stream without one usable line is answered
//!   488, and every finding is logged. As IMS-ALG it checks offers in responses of its e2ae
//!   calls too (passed on without the AGW when they fail). Everything else is routed.
//! - **S-CSCF**: registrar of its domain (location service with `Path`), routes to other
//!   domains' S-CSCFs by a configured table, retargets configured AORs (rewrites the
//!   Request-URI, §16.5), and **forks in parallel** to every registered contact (§16.6–16.7):
//!   provisional responses and every 2xx go upstream, the other branches are CANCELled after a
//!   2xx, and when no branch succeeds the best final response is returned (§16.7 step 6).
//!
//! Both record-route (`Record-Route: <sip:us;lr>`) so in-dialog requests keep the path, and
//! both pop their own `Route` entry (loose routing, §16.4). A proxy that also listens on TLS
//! ([`Proxy::listening_tls`]) and forwards between TLS and UDP/TCP — a P-CSCF with its UEs on
//! TLS — record-routes twice (RFC 5658 §3.1): the entry for the side the request came from
//! first, then the one for the side it leaves by, the TLS one being
//! `<sip:us-tls;transport=tls;lr>`; so each side's in-dialog requests reach it on its own
//! transport, and it pops both entries when they come back. ACKs for 2xx and 2xx responses
//! whose transactions are gone are forwarded statelessly (§16.11, RFC 6026 §8).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mediasec_sdp::{CryptoAttribute, Level, Sdp};
use mediasec_sip::core::headers::{Contact, Route};
use mediasec_sip::core::{
    Header, HeaderName, Message, Method, Request, Response, ResponseBuilder, StatusCode, TransactionKey, TypedHeader as _, Uri, Via,
};
use mediasec_sip::core::rel::RSeq;
use mediasec_sip::dialog::{cancel_for, socket_addr, split_addresses};
use mediasec_sip::udp::{Command, Event};

use crate::alg;
use crate::registrar::{aor, Registrar};

/// Which CSCF this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Proxy-CSCF: the UE's first hop.
    Pcscf,
    /// Serving-CSCF: registrar and router of a home domain.
    Scscf,
}

/// Configuration of one proxy.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// Role.
    pub role: Role,
    /// Home domain (`a.example`).
    pub domain: String,
    /// P-CSCF: the S-CSCF every request without a route goes to.
    pub scscf: Option<SocketAddr>,
    /// S-CSCF: other domains' S-CSCFs.
    pub peers: HashMap<String, SocketAddr>,
    /// S-CSCF: a Request-URI of another domain with no entry in `peers` goes to the servers
    /// DNS names for it (RFC 3263 §4, located by the endpoint's resolver) instead of being
    /// answered 404. (A `Route` or `Path` entry with a host name is located by DNS either way.)
    pub dns: bool,
    /// Host names that name this proxy (besides its addresses) in a `Route` or Request-URI,
    /// e.g. `pcscf.a.example` when UEs locate it by DNS (RFC 3263): a top `Route` with one of
    /// them (no port, or one of ours) is removed as ours (RFC 3261 §16.4) instead of being
    /// located and sent out again.
    pub hostnames: Vec<String>,
    /// S-CSCF: AOR → new Request-URI (retargeting).
    pub retarget: HashMap<String, String>,
    /// P-CSCF: supports the `mediasec` indication (answers `Security-Server`).
    pub mediasec: bool,
    /// P-CSCF: the IMS-AGW's ng control address. With `mediasec`, it makes this P-CSCF an
    /// IMS-ALG (e2ae, [`crate::alg`]) for the UEs that registered `sdes-srtp;mediasec`.
    pub agw_ng: Option<SocketAddr>,
    /// P-CSCF IMS-ALG: UEs the operator provisioned as e2ae UEs although they cannot signal it
    /// (an extension beyond TS 33.328, [`alg::Provisioned`]).
    pub e2ae_provisioned: alg::Provisioned,
    /// P-CSCF IMS-ALG: towards the core, originating e2ae calls get SRTP re-protected with
    /// the IMS-AGW's own keys (`RTP/SAVP` + the AGW's `a=crypto`; the far end's SDES answer
    /// keys that leg) instead of plain RTP — TS 33.328 §4.1.2.1 and §5.4.1: the IMS-AGW
    /// relays "plain RTP, or SRTP re-protected with other keys" towards the core. A far end
    /// answering plain is refused by the AGW (an AGW failure: the answer reaches the UE
    /// without `a=3ge2ae:applied`).
    pub core_srtp: bool,
    /// S-CSCF: the voicemail server's URI (`sip:vm@<domain>`, docs/voicemail.md). An INVITE
    /// for a home user with no registration is diverted there (Request-URI replaced, `To`
    /// unchanged, RFC 7044 `History-Info` naming the original target with cause 480) instead
    /// of being answered 480. Only INVITEs; the voicemail URI is routed like any other (its
    /// registration, or an address in it); when it cannot be reached either, 480 as before.
    pub voicemail: Option<String>,
}

/// An ng command the service must send to the IMS-AGW (bencode dictionary, without the
/// cookie); its reply goes back through [`Proxy::ng_result`] with the same `id`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NgRequest {
    /// Matches the reply to what waits for it.
    pub id: u64,
    /// The bencoded command.
    pub command: Vec<u8>,
}

/// What waits for an ng reply.
#[derive(Debug)]
enum Pending {
    /// An INVITE offer held until the AGW rewrote it.
    Offer { key: TransactionKey, request: Request, leg: AlgLeg, now: Instant },
    /// A response with an answer (or early answer) held until the AGW rewrote it.
    Answer { server: TransactionKey, client: TransactionKey, response: Response, leg: AlgLeg },
    /// A 2xx (or reliable 18x, RFC 3262 §5) carrying the offer of an offerless INVITE (delayed
    /// offer, RFC 3261 §13.2.1), held until the AGW rewrote it.
    OfferIn2xx { server: TransactionKey, client: TransactionKey, response: Response, leg: AlgLeg, exchange: ExchangeKey },
    /// The ACK carrying the answer to an offer in a 2xx, held until the AGW rewrote it.
    AnswerInAck { ack: Request, leg: AlgLeg, exchange: ExchangeKey },
    /// The PRACK carrying the answer to an offer in a reliable 18x (RFC 3262 §5), held until
    /// the AGW rewrote it.
    AnswerInPrack { key: TransactionKey, prack: Request, leg: AlgLeg, exchange: ExchangeKey, now: Instant },
    /// A `delete`: nothing waits.
    Delete,
}

/// An offer/answer exchange whose 2xx (or reliable 18x) the IMS-ALG rewrote, by Call-ID, CSeq
/// number, To tag (what a 2xx retransmission and its ACK share, RFC 3261 §13.3.1.4,
/// §17.1.1.3) and, for a reliable provisional response, its `RSeq` (what its retransmissions
/// share, RFC 3262 §3; `None` for a 2xx or ACK).
type ExchangeKey = (String, u32, String, Option<u32>);

/// An SDP body the IMS-ALG rewrites once; its retransmissions get the same result and create
/// no AGW work.
#[derive(Clone, Debug)]
enum Rewrite {
    /// Not seen yet (the ACK of a delayed offer).
    Expected,
    /// Held for the AGW: a copy arriving now is dropped (the first goes on when it answers).
    Waiting,
    /// The AGW's SDP, as sent on.
    Done(Box<Sdp>),
    /// Passed without the AGW (it failed), minus any `a=3ge2ae`.
    Unsecured,
}

/// One exchange of [`ExchangeKey`].
#[derive(Debug)]
struct Exchange {
    /// The 2xx's SDP (an answer, or a delayed offer).
    response: Rewrite,
    /// Delayed offer: the AGW call of the offer and the answer in the ACK (offer in a 2xx) or
    /// in the PRACK (offer in a reliable 18x).
    ack: Option<(AlgLeg, Rewrite)>,
    created: Instant,
}

/// An offerless INVITE that the IMS-ALG follows: its 2xx carries the offer, its ACK the answer
/// (RFC 3261 §13.2.1, RFC 3264, RFC 6337 §2). `from_core`: the INVITE came from the core, so
/// the offer comes from the UE.
#[derive(Clone, Debug)]
enum Delayed {
    /// An initial INVITE from or to an e2ae UE (how it registered).
    Initial { from_core: bool, support: alg::Support },
    /// A re-INVITE in an e2ae dialog (the dialog's AGW call).
    Reinvite { from_core: bool, dialog: AlgLeg },
}

/// One AGW call the ALG set up for a SIP call.
#[derive(Clone, Debug)]
struct AlgLeg {
    ng_call_id: String,
    from_tag: String,
    side: alg::Side,
    /// The AGW call's core leg is SRTP re-protected with the AGW's keys
    /// ([`ProxyConfig::core_srtp`] for an originating call; a terminating call's core offered
    /// plain RTP). A re-offer on a new AGW call keeps it.
    core_srtp: bool,
    /// A re-INVITE's new AGW call, to replace the dialog's on its 2xx.
    replaces: bool,
}

/// A branch target: Request-URI, `Route` entries to add (a binding's `Path`), next hop.
type Target = (Uri, Vec<String>, Hop);

/// Where a branch goes next: an address, or a URI with a host name that the endpoint locates
/// by DNS (RFC 3263 §4, [`Command::RequestUri`]), never in this sans-IO core.
#[derive(Clone, Debug)]
enum Hop {
    /// A numeric next hop (an IP-literal URI, a configured address).
    Addr(SocketAddr),
    /// A URI whose host is a name.
    Uri(Uri),
}

impl Hop {
    /// The next hop `uri` names: its address for an IP literal, else the URI to locate.
    fn of(uri: &Uri) -> Self {
        socket_addr(uri).map_or_else(|| Self::Uri(uri.clone()), Self::Addr)
    }

    /// The endpoint command that sends `request` there in a client transaction.
    fn command(&self, request: Request) -> Command {
        match self {
            Self::Addr(to) => Command::Request { request, to: *to },
            Self::Uri(uri) => Command::RequestUri { request, uri: uri.clone() },
        }
    }

    /// The endpoint command that forwards `request` (an ACK for a 2xx) there statelessly: a
    /// host name is located by the endpoint too (RFC 3263 §4.4, [`Command::StatelessUri`]).
    fn stateless(self, request: Request) -> Command {
        match self {
            Self::Addr(to) => Command::Stateless { message: Message::Request(request), to },
            Self::Uri(uri) => Command::StatelessUri { request, uri },
        }
    }
}

impl std::fmt::Display for Hop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Addr(a) => write!(f, "{a}"),
            Self::Uri(u) => write!(f, "{u}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum BranchState {
    Pending,
    Done(u16),
}

#[derive(Debug)]
struct Branch {
    key: TransactionKey,
    request: Request,
    to: Hop,
    state: BranchState,
    /// A provisional response (100 included) arrived: the branch may be CANCELled (RFC 3261
    /// §9.1: not before).
    provisional: bool,
    /// INVITE: when Timer C fires (RFC 3261 §16.6 step 11), pushed back by every 101–199
    /// (§16.7 step 2); `None` for other methods, once it fired, and once CANCELled.
    timer_c: Option<Instant>,
    /// When this proxy decided to CANCEL the branch (a 2xx on another branch, the caller's
    /// CANCEL, Timer C). The CANCEL goes out then, or with the first provisional response if
    /// none came yet (§9.1); with no final response [`LINGER`] (64·T1) later, the branch is
    /// given up (§9.1).
    cancelled: Option<Instant>,
}

/// One proxied request: its server transaction and branches.
#[derive(Debug)]
struct Context {
    server: TransactionKey,
    method: Method,
    branches: Vec<Branch>,
    best: Option<Response>,
    forwarded_2xx: bool,
    security_server: bool,
    /// P-CSCF REGISTER: the AOR and contacts to remember as e2ae-capable on a 2xx, and
    /// whether the REGISTER removes them.
    e2ae_registration: Option<(String, Vec<String>, bool)>,
    /// P-CSCF INVITE or UPDATE whose offer went through the IMS-ALG.
    alg: Option<AlgLeg>,
    /// P-CSCF offerless INVITE of an e2ae call: its 2xx (or a reliable 18x) carries the offer.
    delayed: Option<Delayed>,
    /// The offer of [`Self::delayed`] came in a reliable 18x: SDP in later responses to the
    /// INVITE is no new offer (RFC 3262 §5, RFC 6337 §3.1).
    offered_reliably: bool,
    /// The answer to this INVITE's offer came in a reliable 18x (RFC 3262 §5): its To tag and
    /// what the IMS-ALG made of it. SDP in later responses of that dialog to the INVITE repeats
    /// it (RFC 6337 §3.1) and gets the same, with no AGW work.
    reliable_answer: Option<(String, Rewrite)>,
    /// When the final response went upstream (or, after a forwarded 2xx, every branch ended).
    finished: Option<Instant>,
    created: Instant,
}

impl Branch {
    /// When this branch's timer is due, while it is pending: 64·T1 after its CANCEL, else its
    /// Timer C ([`timer_due`]).
    fn deadline(&self) -> Option<Instant> {
        match self.cancelled {
            Some(at) => Some(at + LINGER),
            None => self.timer_c,
        }
    }
}

impl Context {
    /// The earliest of its pending branches' deadlines and its own end ([`Self::ended`]).
    fn next_deadline(&self) -> Option<Instant> {
        let branches = self.branches.iter().filter(|b| b.state == BranchState::Pending).filter_map(Branch::deadline);
        let end = self.finished.map(|at| at + LINGER).into_iter().chain((self.method != Method::Invite).then(|| self.created + TIMER_C));
        branches.chain(end).min()
    }

    /// Whether it is dropped at `now`: its final response went out [`LINGER`] ago, or it is a
    /// non-INVITE context [`TIMER_C`] old (its client transactions end by Timer F long before).
    fn ended(&self, now: Instant) -> bool {
        self.finished.is_some_and(|at| now.saturating_duration_since(at) >= LINGER) || (self.method != Method::Invite && now.saturating_duration_since(self.created) >= TIMER_C)
    }
}

/// How long a context outlives its final response: late 2xx of other forks (RFC 6026 Timer M
/// territory, 64·T1 with the default T1) still find their way upstream. Also how long a
/// CANCELled branch waits for its final response before it is given up (RFC 3261 §9.1).
const LINGER: Duration = Duration::from_secs(32);
/// RFC 3261 §16.6 step 11 Timer C ("greater than 3 minutes"), per INVITE branch, restarted by
/// every provisional response but 100 (§16.7 step 2). When it fires (§16.8) a branch with a
/// provisional response is CANCELled, one without is taken as answered 408; a non-INVITE
/// context (ended by its branches' Timer F long before) is dropped at this age in any case.
const TIMER_C: Duration = Duration::from_secs(181);
/// The least time between two runs of the timers from [`Proxy::handle`]: the timers are seconds
/// long, so a tenth of a second of lateness changes nothing, and most events pay no look at the
/// [`Timers`] queue.
const TICK_GAP: Duration = Duration::from_millis(100);

/// What a [`Timers`] entry asks [`Proxy::tick`] to look at.
#[derive(Debug)]
enum Due {
    /// A context's branch timers (Timer C, the 64·T1 after a CANCEL) and its own end.
    Context(TransactionKey),
    /// An IMS-ALG rewrite kept for retransmissions, [`LINGER`] after it was made.
    Exchange(ExchangeKey),
    /// An in-dialog offer/answer exchange through the IMS-ALG, [`LINGER`] after it began.
    Offering(String),
}

/// The proxy's timers by due time, so that [`Proxy::tick`] visits only what is due instead of
/// every context (tens of thousands under a load of calls, those of the last [`LINGER`]
/// included). An entry may be early — Timer C was pushed back by a provisional response
/// (RFC 3261 §16.7 step 2) — or stale — its context is gone, or the map entry was replaced:
/// the tick re-checks the state it names, and files a context again at its actual next
/// deadline ([`Context::next_deadline`]). Whatever moves a deadline earlier (a CANCEL, a final
/// response) files a new entry.
#[derive(Debug, Default)]
struct Timers {
    queue: BTreeMap<(Instant, u64), Due>,
    /// Tie-breaker: entries due at the same instant keep their order.
    filed: u64,
}

impl Timers {
    fn at(&mut self, when: Instant, what: Due) {
        self.filed += 1;
        self.queue.insert((when, self.filed), what);
    }

    /// The next entry due at `now`, if any.
    fn next_due(&mut self, now: Instant) -> Option<Due> {
        let first = self.queue.first_entry()?;
        (first.key().0 <= now).then(|| first.remove())
    }
}

/// The proxy core.
#[derive(Debug)]
pub struct Proxy {
    config: ProxyConfig,
    local: SocketAddr,
    /// Where this proxy also listens on TLS.
    tls_local: Option<SocketAddr>,
    registrar: Registrar,
    contexts: HashMap<TransactionKey, Context>,
    /// Client transaction → server transaction of its context.
    branches: HashMap<TransactionKey, TransactionKey>,
    /// P-CSCF IMS-ALG: AORs and contact AORs registered with e2ae support.
    e2ae_aors: HashSet<String>,
    e2ae_contacts: HashSet<String>,
    /// SIP Call-ID → the AGW calls set up for it (deleted on BYE or a failed INVITE).
    alg_calls: HashMap<String, Vec<String>>,
    /// SIP Call-ID → the AGW call whose 2xx answer established the dialog: a re-INVITE from
    /// the same offerer re-offers on it.
    alg_dialogs: HashMap<String, AlgLeg>,
    /// SIP Call-ID → when the in-dialog offer/answer exchange still open through the IMS-ALG
    /// began (one at a time per dialog, RFC 3261 §14.1, RFC 3311 §5.2).
    offering: HashMap<String, Instant>,
    /// The 2xx (and delayed-offer ACK) bodies the IMS-ALG rewrote, for their retransmissions.
    exchanges: HashMap<ExchangeKey, Exchange>,
    pending: HashMap<u64, Pending>,
    ng_out: Vec<NgRequest>,
    next_ng: u64,
    timers: Timers,
    /// When [`Self::tick`] last ran.
    last_tick: Option<Instant>,
    /// Counters for logs and tests.
    pub stats: Stats,
}

/// What the proxy has done, for logs, metrics and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Requests received (new server transactions).
    pub requests: u64,
    /// Branches created (forks count one each).
    pub branches: u64,
    /// CANCELs sent to pending branches.
    pub cancels: u64,
    /// INVITE branches whose Timer C fired (RFC 3261 §16.8: CANCELled, or taken as 408).
    pub timer_c: u64,
    /// Requests answered locally with an error.
    pub rejected: u64,
    /// Offers failing the P-CSCF's SDES check ([`check_sdes`]): INVITE and UPDATE offers
    /// refused with 488, and (IMS-ALG) offers in a 2xx or reliable 18x to an offerless INVITE,
    /// which a proxy cannot refuse, passed on without the AGW.
    pub sdes_refused: u64,
    /// IMS-ALG: offers and answers the AGW rewrote for e2ae (P-CSCF).
    pub e2ae_applied: u64,
    /// IMS-ALG: SDP bodies whose `a=3ge2ae` this P-CSCF removed (it did not insert them).
    pub e2ae_stripped: u64,
    /// IMS-ALG: ng commands that failed (no reply, or refused), and ACKs without the answer
    /// to an offer the ALG put through the AGW in a 2xx.
    pub agw_failures: u64,
    /// S-CSCF: INVITEs for unregistered home users diverted to the voicemail server.
    pub diverted: u64,
}

fn branch_id() -> String {
    format!("z9hG4bK{:016x}", rand::random::<u64>())
}

fn header(name: HeaderName, value: impl Into<Bytes>) -> Option<Header> {
    Header::build(name, value).ok()
}

impl Proxy {
    /// A proxy listening at `local`.
    pub fn new(config: ProxyConfig, local: SocketAddr) -> Self {
        Self {
            config,
            local,
            tls_local: None,
            registrar: Registrar::default(),
            contexts: HashMap::new(),
            branches: HashMap::new(),
            e2ae_aors: HashSet::new(),
            e2ae_contacts: HashSet::new(),
            alg_calls: HashMap::new(),
            alg_dialogs: HashMap::new(),
            offering: HashMap::new(),
            exchanges: HashMap::new(),
            pending: HashMap::new(),
            ng_out: Vec::new(),
            next_ng: 0,
            timers: Timers::default(),
            last_tick: None,
            stats: Stats::default(),
        }
    }

    /// This proxy also listens on TLS at `tls` (its endpoint's TLS address): requests naming
    /// it are its own, and it record-routes its TLS side with it (RFC 5658).
    #[must_use]
    pub fn listening_tls(mut self, tls: Option<SocketAddr>) -> Self {
        self.tls_local = tls;
        self
    }

    /// The registrar (S-CSCF).
    pub fn registrar(&self) -> &Registrar {
        &self.registrar
    }

    /// Handles one endpoint event, after running the timers ([`Self::tick`]) if they have not
    /// run for [`TICK_GAP`].
    pub fn handle(&mut self, event: Event, now: Instant) -> Vec<Command> {
        let due = self.last_tick.is_none_or(|t| now.saturating_duration_since(t) >= TICK_GAP);
        let mut out = if due { self.tick(now) } else { Vec::new() };
        out.extend(self.dispatch(event, now));
        out
    }

    fn dispatch(&mut self, event: Event, now: Instant) -> Vec<Command> {
        match event {
            Event::Request { key, request, source } => {
                self.stats.requests += 1;
                self.on_request(key, *request, source, now)
            }
            Event::Response { key, response } => self.on_response(&key, *response, now),
            Event::Ack { request, .. } => {
                let mut message = Message::Request(*request);
                if self.alg_enabled()
                    && let Some(out) = self.alg_ack(&mut message)
                {
                    return out;
                }
                self.forward_stateless(message, now)
            }
            // A stray request other than ACK has no usable Via: nothing can answer it.
            Event::Stray { message, source } => match *message {
                Message::Request(r) if r.method != Method::Ack => {
                    tracing::info!(%source, method = %r.method, "request without a usable Via dropped");
                    Vec::new()
                }
                mut other => {
                    // A 2xx retransmission whose transaction is gone gets what its first copy got.
                    if self.alg_enabled() {
                        match self.replay(&mut other) {
                            Some(false) => return Vec::new(),
                            Some(true) => {}
                            // Not one the ALG rewrote: no foreign indication passes.
                            None => {
                                if let Ok(Some(sdp)) = mediasec_sip::body::sdp(&other) {
                                    self.strip_foreign(&mut other, sdp);
                                }
                            }
                        }
                    }
                    self.forward_stateless(other, now)
                }
            },
            Event::Timeout { key } => self.on_timeout(&key, now),
            // A proxy forwards reliable provisional responses, it never sends its own.
            Event::ReliableTimeout { .. } => Vec::new(),
            Event::Malformed { source, reason } => {
                tracing::info!(%source, %reason, "malformed datagram dropped");
                Vec::new()
            }
        }
    }

    /// Runs the proxy's timers at `now` ([`Self::handle`] does so first, at most every
    /// [`TICK_GAP`]; the service also calls it about once a second, so that they fire with no
    /// traffic):
    /// - **Timer C** (RFC 3261 §16.8) of each INVITE branch still without a final response: a
    ///   branch that had a provisional response is CANCELled, one that had none is given up
    ///   ([`Command::Abandon`]) and counts as a 408 (Request Timeout) it received; the best
    ///   response then goes upstream when no branch is left (§16.7 step 6);
    /// - a CANCELled INVITE branch with no final response [`LINGER`] = 64·T1 after it is given
    ///   up in the same way (§9.1: the UAS never answered 487);
    /// - contexts whose final response went out more than [`LINGER`] ago are dropped with their
    ///   branch entries (a branch still pending then is given up), as is a non-INVITE context
    ///   older than [`TIMER_C`] (its client transactions end by Timer F long before).
    pub fn tick(&mut self, now: Instant) -> Vec<Command> {
        self.last_tick = Some(now);
        let mut out = Vec::new();
        while let Some(due) = self.timers.next_due(now) {
            match due {
                Due::Context(server) => out.extend(self.context_timers(server, now)),
                Due::Exchange(key) => {
                    if self.exchanges.get(&key).is_some_and(|x| now.saturating_duration_since(x.created) >= LINGER) {
                        self.exchanges.remove(&key);
                    }
                }
                Due::Offering(call_id) => {
                    if self.offering.get(&call_id).is_some_and(|since| now.saturating_duration_since(*since) >= LINGER) {
                        self.offering.remove(&call_id);
                    }
                }
            }
        }
        out
    }

    /// [`Self::tick`] for context `server`: its due branch timers, then its end when due
    /// (a branch still pending then is given up); otherwise it is filed again at its next
    /// deadline.
    fn context_timers(&mut self, server: TransactionKey, now: Instant) -> Vec<Command> {
        let Some(context) = self.contexts.get(&server) else { return Vec::new() };
        let due: Vec<TransactionKey> = context.branches.iter().filter(|b| b.state == BranchState::Pending && timer_due(b, now)).map(|b| b.key.clone()).collect();
        let mut out = Vec::new();
        for key in due {
            out.extend(self.branch_timer(&server, &key, now));
        }
        let Some(context) = self.contexts.get(&server) else { return out };
        if !context.ended(now) {
            // Never at `now` again: the loop in `tick` would find it due forever.
            if let Some(next) = context.next_deadline() {
                self.timers.at(next.max(now + TICK_GAP), Due::Context(server));
            }
            return out;
        }
        if let Some(context) = self.contexts.remove(&server) {
            for b in context.branches {
                self.branches.remove(&b.key);
                if context.method == Method::Invite && b.state == BranchState::Pending {
                    out.push(Command::Abandon { key: b.key });
                }
            }
        }
        out
    }

    /// Branch `key` of context `server` whose Timer C fired or whose CANCEL went unanswered
    /// ([`timer_due`]).
    fn branch_timer(&mut self, server: &TransactionKey, key: &TransactionKey, now: Instant) -> Vec<Command> {
        let Some(context) = self.contexts.get_mut(server) else { return Vec::new() };
        let Some(b) = context.branches.iter_mut().find(|b| &b.key == key) else { return Vec::new() };
        let call_id = b.request.headers.value(&HeaderName::CallId).map(|v| String::from_utf8_lossy(&v).into_owned()).unwrap_or_default();
        if b.cancelled.is_none() && b.provisional {
            // §16.8: "the proxy MUST generate a CANCEL request matching that transaction".
            self.stats.timer_c += 1;
            tracing::info!(%call_id, to = %b.to, "Timer C fired on a branch with a provisional response: CANCELled");
            // (`context_timers` files the context again at the CANCEL's 64·T1.)
            return cancel_branch(b, now, &mut self.stats).into_iter().collect();
        }
        if b.cancelled.is_none() {
            // §16.8: "behave as if the transaction received a 408 (Request Timeout) response".
            self.stats.timer_c += 1;
            tracing::info!(%call_id, to = %b.to, "Timer C fired on a branch without a provisional response: taken as 408");
        } else {
            // §9.1: "consider the original transaction cancelled and ... destroy the client
            // transaction".
            tracing::info!(%call_id, to = %b.to, "CANCELled branch without a final response after 64*T1: given up");
        }
        let mut out = vec![Command::Abandon { key: key.clone() }];
        out.extend(self.branch_failed(server, key, now));
        out
    }

    /// Branch `key` of context `server` ended without a final response (its client transaction
    /// timed out, or was given up): for an INVITE it counts as a 408 it received (RFC 3261
    /// §16.7 step 6, §16.8; a non-INVITE gets no 408 from a proxy, RFC 4320 §4.2), and an
    /// IMS-ALG exchange it carried is over. The best response goes upstream when no branch is
    /// left.
    fn branch_failed(&mut self, server: &TransactionKey, key: &TransactionKey, now: Instant) -> Vec<Command> {
        let Some(context) = self.contexts.get_mut(server) else { return Vec::new() };
        let Some(b) = context.branches.iter_mut().find(|b| &b.key == key) else { return Vec::new() };
        b.state = BranchState::Done(408);
        let call_id = b.request.headers.value(&HeaderName::CallId).map(|v| String::from_utf8_lossy(&v).into_owned()).unwrap_or_default();
        let in_dialog = tag_of(&b.request.headers, &HeaderName::To).is_some();
        let timeout = (context.method == Method::Invite).then(|| upstream_response(&b.request, 408, "Request Timeout")).flatten();
        if let Some(response) = timeout {
            keep_best(context, response);
        }
        let alg = context.alg.is_some() || context.delayed.is_some();
        let initial_invite = context.method == Method::Invite && !in_dialog;
        let out = finish_if_done(context, now, &mut self.timers);
        if alg && initial_invite {
            // The e2ae INVITE failed (as on a final response >= 300): its AGW calls go.
            self.alg_delete(&call_id);
        } else if alg {
            // An in-dialog offer through the ALG that got no answer: its exchange is over.
            self.offering.remove(&call_id);
        }
        out
    }

    /// Requests and branches in flight (contexts, client branches).
    pub fn in_flight(&self) -> (usize, usize) {
        (self.contexts.len(), self.branches.len())
    }

    fn reply(&mut self, key: &TransactionKey, request: &Request, code: u16, reason: &str, extra: Vec<Header>) -> Vec<Command> {
        if code >= 300 {
            self.stats.rejected += 1;
        }
        let Some(status) = StatusCode::new(code) else { return Vec::new() };
        let Ok(builder) = ResponseBuilder::to_request(request, status, reason.to_owned()) else {
            // Not even the mandatory headers to answer with: nothing can be sent (§8.2.6.2).
            tracing::info!(method = %request.method, "request without the headers a response needs; dropped");
            return Vec::new();
        };
        let mut response = builder.build();
        for h in extra {
            response.headers.push(h);
        }
        vec![Command::Respond { key: key.clone(), response }]
    }

    /// Whether `uri` names this proxy: one of its addresses, or one of its
    /// [`ProxyConfig::hostnames`] without a port or with one of its ports.
    fn is_us(&self, uri: &Uri) -> bool {
        match uri.host() {
            Some(mediasec_sip::core::Host::Name(name)) => {
                let ports = [Some(self.local.port()), self.tls_local.map(|t| t.port())];
                self.config.hostnames.iter().any(|h| h.as_bytes().eq_ignore_ascii_case(name.as_bytes())) && uri.port().is_none_or(|p| ports.contains(&Some(p)))
            }
            _ => {
                let at = socket_addr(uri);
                at == Some(self.local) || (at.is_some() && at == self.tls_local)
            }
        }
    }

    /// The `Record-Route` values to push, in order, for a request that came in over TLS or not
    /// (`inbound_tls`) and leaves over TLS or not (RFC 5658 §3.1: when the two sides differ,
    /// the inbound side's entry first, then the outbound side's on top).
    fn record_routes(&self, inbound_tls: bool, outbound_tls: bool) -> Vec<String> {
        let plain = format!("<sip:{};lr>", self.local);
        let Some(tls) = self.tls_local else { return vec![plain] };
        let tls = format!("<sip:{tls};transport=tls;lr>");
        match (inbound_tls, outbound_tls) {
            (false, false) => vec![plain],
            (true, true) => vec![tls],
            (true, false) => vec![tls, plain],
            (false, true) => vec![plain, tls],
        }
    }

    fn on_request(&mut self, key: TransactionKey, mut request: Request, source: SocketAddr, now: Instant) -> Vec<Command> {
        let call_id = request.headers.value(&HeaderName::CallId).map(|v| String::from_utf8_lossy(&v).into_owned()).unwrap_or_default();
        tracing::info!(role = ?self.config.role, method = %request.method, uri = %String::from_utf8_lossy(&request.uri.to_bytes()), %source, %call_id, "request");
        // §16.3: Max-Forwards.
        match request.headers.typed::<mediasec_sip::core::headers::MaxForwards>() {
            Some(Ok(mf)) if mf.0 == 0 => return self.reply(&key, &request, 483, "Too Many Hops", vec![]),
            Some(Ok(mf)) => {
                // Rewritten in place: every other header keeps its position and bytes.
                let at = request.headers.iter().position(|h| h.name() == &HeaderName::MaxForwards);
                if let (Some(at), Some(h)) = (at, header(HeaderName::MaxForwards, (mf.0 - 1).to_string())) {
                    request.headers.remove_first(&HeaderName::MaxForwards);
                    request.headers.insert(at, h);
                }
            }
            Some(Err(_)) => return self.reply(&key, &request, 400, "Bad Max-Forwards", vec![]),
            None => {}
        }
        self.pop_own_route(&mut request);
        match request.method {
            Method::Cancel => self.on_cancel(&key, &request, now),
            Method::Register if self.config.role == Role::Scscf && self.routes_here(&request) => self.on_register(&key, &request, now),
            Method::Invite | Method::Update if self.config.role == Role::Pcscf => {
                if let Err(reason) = check_offer(&request) {
                    self.stats.sdes_refused += 1;
                    tracing::warn!(%call_id, %reason, method = %request.method, "offer refused");
                    let warning = header(HeaderName::Warning, format!("399 pcscf \"{}\"", reason.replace('"', "'")));
                    return self.reply(&key, &request, 488, "Not Acceptable Here", warning.into_iter().collect());
                }
                match request.method {
                    Method::Invite if self.alg_enabled() => self.alg_invite(key, request, source, now),
                    Method::Update if self.alg_enabled() => {
                        if tag_of(&request.headers, &HeaderName::To).is_some() && self.alg_calls.contains_key(&call_id) {
                            let from_core = Some(source) == self.config.scscf;
                            return self.alg_in_dialog(key, request, &call_id, from_core, now);
                        }
                        self.route_stripped(key, request, now)
                    }
                    _ => self.route(key, request, now),
                }
            }
            Method::Prack if self.alg_enabled() => self.alg_prack(key, request, now),
            Method::Bye if self.alg_enabled() => {
                self.alg_delete(&call_id);
                self.route_stripped(key, request, now)
            }
            // TS 33.328 §7.1: whatever the method, no foreign `a=3ge2ae` passes an IMS-ALG.
            _ if self.alg_enabled() => self.route_stripped(key, request, now),
            _ => self.route(key, request, now),
        }
    }

    /// No Route left and the Request-URI names our domain (or us).
    fn routes_here(&self, request: &Request) -> bool {
        request.headers.get(&HeaderName::Route).is_none()
            && (self.is_us(&request.uri)
                || request.uri.host().is_some_and(|h| String::from_utf8_lossy(&h.to_bytes()).eq_ignore_ascii_case(&self.config.domain)))
    }

    /// §16.4: a top `Route` naming us is removed — and the next one too when it also names us
    /// (our two entries of RFC 5658 double record-routing).
    fn pop_own_route(&self, request: &mut Request) {
        while self.pop_one_own_route(request) {}
    }

    /// Removes the top `Route` if it names us; whether it did.
    fn pop_one_own_route(&self, request: &mut Request) -> bool {
        let first = request.headers.get(&HeaderName::Route).map(|h| h.value().into_owned());
        let Some(value) = first else { return false };
        let Ok(routes) = Route::parse_list(&value) else { return false };
        let Some(top) = routes.first() else { return false };
        if !self.is_us(&top.0.uri) {
            return false;
        }
        let index = request.headers.iter().position(|h| h.name() == &HeaderName::Route);
        let rest: Vec<String> = split_addresses(&value).iter().skip(1).map(|p| String::from_utf8_lossy(p.trim_ascii()).into_owned()).collect();
        request.headers.remove_first(&HeaderName::Route);
        if !rest.is_empty()
            && let (Some(i), Some(h)) = (index, header(HeaderName::Route, rest.join(", ")))
        {
            request.headers.insert(i, h);
        }
        true
    }

    fn on_register(&mut self, key: &TransactionKey, request: &Request, now: Instant) -> Vec<Command> {
        let Some(to) = request.headers.get(&HeaderName::To).map(|h| h.value().into_owned()) else {
            return self.reply(key, request, 400, "Missing To", vec![]);
        };
        let Ok(to) = mediasec_sip::core::Address::parse(&to, "To") else { return self.reply(key, request, 400, "Bad To", vec![]) };
        let aor = aor(&String::from_utf8_lossy(&to.uri.to_bytes()));
        let default_expires = match request.headers.typed::<mediasec_sip::core::headers::Expires>() {
            Some(Ok(e)) => e.0,
            Some(Err(_)) => return self.reply(key, request, 400, "Bad Expires", vec![]),
            None => 3600,
        };
        let path: Vec<String> = request
            .headers
            .get_all(&HeaderName::Path)
            .flat_map(|h| split_list(&h.value()))
            .collect();
        let mediasec = request
            .headers
            .get_all(&HeaderName::parse(&Bytes::from_static(b"Security-Client")))
            .any(|h| String::from_utf8_lossy(&h.value()).to_ascii_lowercase().contains("mediasec"));
        let mut bindings = Vec::new();
        for h in request.headers.get_all(&HeaderName::Contact) {
            let value = h.value();
            let Ok(contacts) = Contact::parse_list(&value) else { return self.reply(key, request, 400, "Bad Contact", vec![]) };
            for c in contacts {
                let expires = c.param("expires").and_then(|e| std::str::from_utf8(e).ok()?.parse().ok()).unwrap_or(default_expires);
                let contact = String::from_utf8_lossy(&c.uri.to_bytes()).into_owned();
                bindings = self.registrar.register(&aor, &contact, path.clone(), Duration::from_secs(u64::from(expires)), mediasec, now);
            }
        }
        if request.headers.get(&HeaderName::Contact).is_none() {
            bindings = self.registrar.lookup(&aor, now);
        }
        tracing::info!(%aor, contacts = bindings.len(), mediasec, "registered");
        let mut extra = Vec::new();
        for b in &bindings {
            let left = b.expires.saturating_duration_since(now).as_secs();
            extra.extend(header(HeaderName::Contact, format!("<{}>;expires={left}", b.contact)));
        }
        for p in &path {
            extra.extend(header(HeaderName::Path, p.clone()));
        }
        self.reply(key, request, 200, "OK", extra)
    }

    /// Where a request goes when no Route is left: the targets (Request-URI, extra Route
    /// entries, next hop) or an error response.
    fn targets(&self, request: &Request, now: Instant) -> Result<Vec<Target>, (u16, &'static str)> {
        if let Some(addr) = socket_addr(&request.uri) {
            return Ok(vec![(request.uri.clone(), vec![], Hop::Addr(addr))]);
        }
        match self.config.role {
            Role::Pcscf => self.config.scscf.map(|s| vec![(request.uri.clone(), vec![], Hop::Addr(s))]).ok_or((404, "No S-CSCF configured")),
            Role::Scscf => {
                let mut uri = request.uri.clone();
                let target = aor(&String::from_utf8_lossy(&uri.to_bytes()));
                if let Some(new) = self.config.retarget.get(&target) {
                    tracing::info!(from = %target, to = %new, "retargeted");
                    uri = Uri::parse(Bytes::from(new.clone())).map_err(|_| (500, "Bad retarget URI"))?;
                }
                let host = uri.host().map(|h| String::from_utf8_lossy(&h.to_bytes()).to_ascii_lowercase()).unwrap_or_default();
                if host == self.config.domain {
                    let bindings = self.registrar.lookup(&aor(&String::from_utf8_lossy(&uri.to_bytes())), now);
                    if bindings.is_empty() {
                        return Err((480, "Temporarily Unavailable"));
                    }
                    let out: Vec<_> = bindings
                        .into_iter()
                        .filter_map(|b| {
                            let contact = Uri::parse(Bytes::from(b.contact.clone())).ok()?;
                            // The first Path entry, else the contact itself (a name there is
                            // located by DNS).
                            let first = b.path.first().and_then(|p| Route::decode(p.as_bytes()).ok()).map(|r| Hop::of(&r.0.uri));
                            let to = first.unwrap_or_else(|| Hop::of(&contact));
                            Some((contact, b.path, to))
                        })
                        .collect();
                    return if out.is_empty() { Err((480, "Temporarily Unavailable")) } else { Ok(out) };
                }
                match self.config.peers.get(&host) {
                    Some(p) => Ok(vec![(uri, vec![], Hop::Addr(*p))]),
                    // Another domain without a configured peer: its servers by DNS (RFC 3263
                    // §4: the Request-URI's host), when this proxy locates by DNS.
                    None if self.config.dns && !host.is_empty() => Ok(vec![(uri.clone(), vec![], Hop::Uri(uri))]),
                    None => Err((404, "Not Found")),
                }
            }
        }
    }

    /// S-CSCF: the voicemail targets for an INVITE whose home target has no registration,
    /// and the `History-Info` entries to add (RFC 7044: index 1 the original Request-URI with
    /// `Reason: SIP;cause=480` escaped in it, index 1.1 the voicemail URI with the RFC 4458
    /// `target` and `cause=480` parameters and `mp=1`, the target user changed). An INVITE
    /// already carrying History-Info keeps its own entries (ours would clash with their
    /// indexes) and gets none. `None`: no voicemail, not an INVITE, or unreachable too.
    fn divert(&self, request: &Request, now: Instant) -> Option<(Vec<Target>, Vec<String>)> {
        let voicemail = self.config.voicemail.as_ref().filter(|_| self.config.role == Role::Scscf && request.method == Method::Invite)?;
        let original = String::from_utf8_lossy(&request.uri.to_bytes()).into_owned();
        let mut diverted = request.clone();
        diverted.set_uri(Uri::parse(Bytes::from(voicemail.clone())).ok()?).ok()?;
        if aor(voicemail) == aor(&original) {
            return None;
        }
        let targets = self.targets(&diverted, now).ok()?;
        tracing::info!(from = %original, to = %voicemail, "diverted to voicemail (480: no registration)");
        let history = if request.headers.get(&history_info()).is_some() {
            Vec::new()
        } else {
            vec![
                format!("<{original}?Reason=SIP%3Bcause%3D480%3Btext%3D%22Temporarily%20Unavailable%22>;index=1"),
                format!("<{voicemail};target={};cause=480>;index=1.1;mp=1", param_escaped(&aor(&original))),
            ]
        };
        Some((targets, history))
    }

    fn route(&mut self, key: TransactionKey, request: Request, now: Instant) -> Vec<Command> {
        let mut diversion: Vec<String> = Vec::new();
        let targets = match request.headers.get(&HeaderName::Route).map(|h| h.value().into_owned()) {
            // §16.6 step 7: the top Route's URI is the next hop; a name there is located by DNS.
            Some(value) => match Route::parse_list(&value).ok().and_then(|r| r.first().map(|top| Hop::of(&top.0.uri))) {
                Some(hop) => vec![(request.uri.clone(), vec![], hop)],
                None => return self.reply(&key, &request, 400, "Unroutable Route", vec![]),
            },
            None => match self.targets(&request, now) {
                Ok(t) => t,
                Err((480, reason)) => match self.divert(&request, now) {
                    Some((t, history)) => {
                        diversion = history;
                        self.stats.diverted += 1;
                        t
                    }
                    None => return self.reply(&key, &request, 480, reason, vec![]),
                },
                Err((code, reason)) => return self.reply(&key, &request, code, reason, vec![]),
            },
        };
        let mut out = Vec::new();
        if request.method == Method::Invite {
            out.extend(self.reply(&key, &request, 100, "Trying", vec![]));
        }
        let security_server = self.config.role == Role::Pcscf
            && self.config.mediasec
            && request.method == Method::Register
            && request.headers.get_all(&HeaderName::parse(&Bytes::from_static(b"Security-Client"))).any(|h| String::from_utf8_lossy(&h.value()).to_ascii_lowercase().contains("mediasec"));
        let e2ae_registration = if self.config.role == Role::Pcscf && request.method == Method::Register && self.alg_enabled() {
            // Indicated (`Security-Client: …mediasec`) or provisioned by the operator.
            registration_of(&request).filter(|(aor, _, _)| security_server || self.config.e2ae_provisioned.contains(aor))
        } else {
            None
        };
        let mut context = Context {
            server: key.clone(),
            method: request.method.clone(),
            branches: Vec::new(),
            best: None,
            forwarded_2xx: false,
            security_server,
            e2ae_registration,
            alg: None,
            delayed: None,
            offered_reliably: false,
            reliable_answer: None,
            finished: None,
            created: now,
        };
        let me = format!("<sip:{};lr>", self.local);
        // The side the request came from: its sender's Via says TLS (the endpoint wrote it).
        let inbound_tls = mediasec_sip::udp::top_via_says(&request.headers, "TLS");
        for (uri, path, to) in targets {
            let mut branch = request.clone();
            if uri.to_bytes() != request.uri.to_bytes() && branch.set_uri(uri).is_err() {
                continue;
            }
            // History-Info of a diversion to the voicemail server, in order (RFC 7044 §6.1).
            for h in diversion.iter().rev() {
                branch.headers.push_front_header(history_info(), h);
            }
            // Path entries of the binding become the Route (RFC 3327 §5.3), ahead of any left.
            // (Only reached with no Route left, so they are the whole Route set, in order.)
            branch.headers.extend_routes(&path);
            if request.method == Method::Invite {
                for rr in self.record_routes(inbound_tls, mediasec_sip::udp::routed_over_tls(&branch)) {
                    branch.headers.push_front_header(HeaderName::RecordRoute, &rr);
                }
            }
            // Path names the core side, where the S-CSCF sends terminating requests from.
            if request.method == Method::Register && self.config.role == Role::Pcscf {
                branch.headers.push_front_header(HeaderName::Path, &me);
            }
            branch.headers.push_front_header(HeaderName::Via, &format!("SIP/2.0/UDP {};branch={}", self.local, branch_id()));
            let Some(client) = TransactionKey::from_sent_request(&branch) else { continue };
            self.branches.insert(client.clone(), key.clone());
            let timer_c = (request.method == Method::Invite).then(|| now + TIMER_C);
            context.branches.push(Branch { key: client, request: branch.clone(), to: to.clone(), state: BranchState::Pending, provisional: false, timer_c, cancelled: None });
            self.stats.branches += 1;
            out.push(to.command(branch));
        }
        if context.branches.is_empty() {
            return self.reply(&key, &request, 500, "No usable target", vec![]);
        }
        if context.branches.len() > 1 {
            tracing::info!(branches = context.branches.len(), "forking in parallel");
        }
        if let Some(first) = context.next_deadline() {
            self.timers.at(first, Due::Context(key.clone()));
        }
        self.contexts.insert(key, context);
        out
    }

    fn on_cancel(&mut self, key: &TransactionKey, cancel: &Request, now: Instant) -> Vec<Command> {
        let mut out = self.reply(key, cancel, 200, "OK", vec![]);
        let Some(invite) = TransactionKey::for_cancelled_invite(cancel) else { return out };
        // An INVITE still held for the AGW was never forwarded: it ends here (487, §9.2).
        let held = self.pending.iter().find_map(|(id, p)| matches!(p, Pending::Offer { key, .. } if *key == invite).then_some(*id));
        if let Some(Pending::Offer { key, request, .. }) = held.and_then(|id| self.pending.remove(&id)) {
            let call_id = request.headers.value(&HeaderName::CallId).map(|v| String::from_utf8_lossy(&v).into_owned()).unwrap_or_default();
            self.alg_delete(&call_id);
            out.extend(self.reply(&key, &request, 487, "Request Terminated", vec![]));
            return out;
        }
        let Some(context) = self.contexts.get_mut(&invite) else { return out };
        out.extend(cancel_pending(context, now, &mut self.stats, &mut self.timers));
        out
    }

    fn on_response(&mut self, key: &TransactionKey, mut response: Response, now: Instant) -> Vec<Command> {
        let Some(server) = self.branches.get(key).cloned() else { return Vec::new() };
        let Some(context) = self.contexts.get_mut(&server) else { return Vec::new() };
        let code = response.status.code();
        response.headers.remove_first(&HeaderName::Via);
        // A CANCEL decided before the branch's first provisional response goes now (§9.1).
        let mut out = Vec::new();
        if let Some(b) = context.branches.iter_mut().find(|b| &b.key == key)
            && response.status.is_provisional()
        {
            if !b.provisional && b.cancelled.is_some() {
                out.extend(send_cancel(b, &mut self.stats));
            }
            b.provisional = true;
            // §16.7 step 2: every provisional response but 100 restarts Timer C.
            if code > 100 && b.timer_c.is_some() {
                b.timer_c = Some(now + TIMER_C);
            }
        }
        if context.method == Method::Cancel || code == 100 {
            return out;
        }
        out.extend(self.on_response_to(server, key, response, now));
        out
    }

    /// [`Self::on_response`] once the branch's timers are updated: through the IMS-ALG, if
    /// any, and upstream.
    fn on_response_to(&mut self, server: TransactionKey, key: &TransactionKey, mut response: Response, now: Instant) -> Vec<Command> {
        let Some(context) = self.contexts.get(&server) else { return Vec::new() };
        let code = response.status.code();
        if self.alg_enabled() && matches!(context.method, Method::Invite | Method::Update) {
            let leg = context.alg.clone();
            let delayed = context.delayed.clone();
            let reliable_answer = context.reliable_answer.clone();
            let in_dialog = context.branches.iter().any(|b| tag_of(&b.request.headers, &HeaderName::To).is_some());
            let call_id = response.headers.value(&HeaderName::CallId).map(|v| String::from_utf8_lossy(&v).into_owned()).unwrap_or_default();
            let reliable = is_reliable(&response);
            let mut message = Message::Response(response);
            if (200..300).contains(&code) || reliable {
                match self.replay(&mut message) {
                    // A retransmission of a 2xx (or of a reliable 18x, same RSeq) whose first
                    // copy still waits for the AGW.
                    Some(false) => return Vec::new(),
                    Some(true) => {
                        let Message::Response(r) = message else { return Vec::new() };
                        return self.forward_response(server, key, r, now);
                    }
                    None => {}
                }
            }
            if let Some(delayed) = delayed {
                return self.delayed_response(server, key, message, delayed, &call_id, now);
            }
            let sdp = mediasec_sip::body::sdp(&message).ok().flatten();
            let Message::Response(r) = &message else { return Vec::new() };
            let to_tag = tag_of(&r.headers, &HeaderName::To);
            match (leg, sdp) {
                // A repetition of the answer a reliable 18x of this dialog brought (RFC 6337
                // §3.1: the exchange is complete): what that answer got, no AGW work.
                (Some(_), Some(_)) if code < 300 && reliable_answer.as_ref().is_some_and(|(tag, _)| Some(tag) == to_tag.as_ref()) => {
                    if let Some((_, state)) = reliable_answer
                        && !self.rewrite_again(&mut message, &state)
                    {
                        return Vec::new();
                    }
                }
                // An answer (18x or 2xx) of an e2ae call: held until the AGW rewrote it.
                (Some(leg), Some(sdp)) if code < 300 => {
                    let to_tag = tag_of(&r.headers, &HeaderName::To).unwrap_or_default();
                    let command = alg::answer(&leg.ng_call_id, &leg.from_tag, &to_tag, &sdp).to_vec();
                    if (code >= 200 || reliable)
                        && let Some(exchange) = exchange_key(&r.headers)
                    {
                        self.timers.at(now + LINGER, Due::Exchange(exchange.clone()));
                        self.exchanges.insert(exchange, Exchange { response: Rewrite::Waiting, ack: None, created: now });
                    }
                    let pending = Pending::Answer { server, client: key.clone(), response: r.clone(), leg };
                    self.ng(command, pending);
                    return Vec::new();
                }
                (Some(leg), _) if code >= 300 && in_dialog => {
                    // RFC 3261 §14.1: the dialog and its media continue.
                    self.offering.remove(&call_id);
                    if leg.replaces {
                        // The new AGW call goes; the old one was never touched.
                        self.alg_forget(&call_id, &leg.ng_call_id, true);
                    } else {
                        // The AGW took the re-offer but gets no answer: ours keeps the keys in
                        // force before it (a re-offer's keys take effect at its answer,
                        // docs/agw.md). An AGW that switches at the offer would leave this
                        // stream failing until the next re-INVITE.
                        tracing::info!(ng_call_id = %leg.ng_call_id, code, "IMS-ALG: re-offer of an e2ae call failed; the AGW call keeps its previous keys");
                    }
                }
                (Some(_), _) if code >= 300 => self.alg_delete(&call_id),
                (leg, sdp) => {
                    if leg.is_some() && in_dialog && code >= 200 {
                        // A 2xx without the answer: nothing for the AGW (the offerer ends the session).
                        self.offering.remove(&call_id);
                    }
                    if let Some(sdp) = sdp {
                        self.strip_foreign(&mut message, sdp);
                    }
                }
            }
            let Message::Response(r) = message else { return Vec::new() };
            response = r;
        } else if self.alg_enabled() {
            // A response to any other method (a PRACK's 2xx answering the PRACK's offer, RFC
            // 3262 §5; OPTIONS): no foreign indication passes either (TS 33.328 §7.1).
            let mut message = Message::Response(response);
            if let Ok(Some(sdp)) = mediasec_sip::body::sdp(&message) {
                self.strip_foreign(&mut message, sdp);
            }
            let Message::Response(r) = message else { return Vec::new() };
            response = r;
        }
        self.forward_response(server, key, response, now)
    }

    /// The forwarding half of [`Self::on_response`] (after the IMS-ALG, if any, rewrote the SDP).
    fn forward_response(&mut self, server: TransactionKey, key: &TransactionKey, mut response: Response, now: Instant) -> Vec<Command> {
        let Some(context) = self.contexts.get_mut(&server) else { return Vec::new() };
        let code = response.status.code();
        if let Some(b) = context.branches.iter_mut().find(|b| &b.key == key)
            && code >= 200
        {
            b.state = BranchState::Done(code);
        }
        if response.status.is_provisional() {
            return vec![Command::Respond { key: server, response }];
        }
        if response.status.is_success() {
            if context.security_server
                && let Some(h) = header(security_server_name(), "sdes-srtp;mediasec")
            {
                response.headers.push(h);
            }
            if let Some((aor, contacts, remove)) = context.e2ae_registration.take() {
                if remove {
                    self.e2ae_aors.remove(&aor);
                    for c in &contacts {
                        self.e2ae_contacts.remove(c);
                    }
                } else {
                    let provisioned = self.config.e2ae_provisioned.contains(&aor);
                    tracing::info!(%aor, provisioned, "UE registered e2ae support (the IMS-ALG applies to its calls)");
                    self.e2ae_aors.insert(aor);
                    self.e2ae_contacts.extend(contacts);
                }
            }
            context.forwarded_2xx = true;
            if context.finished.is_none() {
                context.finished = Some(now);
                self.timers.at(now + LINGER, Due::Context(server.clone()));
            }
            let mut out = vec![Command::Respond { key: server, response }];
            if context.method == Method::Invite {
                out.extend(cancel_pending(context, now, &mut self.stats, &mut self.timers));
            }
            return out;
        }
        keep_best(context, response);
        finish_if_done(context, now, &mut self.timers)
    }

    /// This P-CSCF is an IMS-ALG (mediasec indication supported and an AGW configured).
    fn alg_enabled(&self) -> bool {
        self.config.role == Role::Pcscf && self.config.mediasec && self.config.agw_ng.is_some()
    }

    /// Removes every `a=3ge2ae` from a message the ALG does not secure (TS 33.328 §7.1: only
    /// this P-CSCF may indicate e2ae to its UEs).
    fn strip_foreign(&mut self, message: &mut Message, mut sdp: Sdp) {
        if alg::strip(&mut sdp) > 0 {
            self.stats.e2ae_stripped += 1;
            if let Err(e) = mediasec_sip::body::set_sdp(message, &sdp) {
                tracing::warn!(error = %e, "IMS-ALG: the body without a=3ge2ae could not be set");
            }
        }
    }

    /// Queues an ng command; `pending` continues when its reply arrives.
    fn ng(&mut self, command: Vec<u8>, pending: Pending) {
        self.next_ng += 1;
        self.pending.insert(self.next_ng, pending);
        self.ng_out.push(NgRequest { id: self.next_ng, command });
    }

    /// The ng commands to send now (the service sends them in order, one at a time).
    pub fn take_ng(&mut self) -> Vec<NgRequest> {
        std::mem::take(&mut self.ng_out)
    }

    /// Deletes every AGW call of a SIP call (BYE, or the INVITE failed).
    fn alg_delete(&mut self, call_id: &str) {
        self.alg_dialogs.remove(call_id);
        self.offering.remove(call_id);
        for ng_call_id in self.alg_calls.remove(call_id).unwrap_or_default() {
            tracing::info!(%call_id, %ng_call_id, "IMS-ALG: deleting the AGW call");
            self.ng(alg::delete(&ng_call_id).to_vec(), Pending::Delete);
        }
    }

    /// An INVITE at the IMS-ALG P-CSCF (TS 33.328 §7.2.1): an initial offer from an e2ae UE
    /// with `a=3ge2ae:requested` — or an SDES offer from a provisioned one — (originating) or a
    /// plain initial offer towards an e2ae UE (terminating) is held for the AGW
    /// ([`alg::decide`]); any other has its foreign `a=3ge2ae` removed and is routed. An
    /// offerless initial INVITE from or to an e2ae UE is routed and followed
    /// ([`Self::delayed_response`]: the offer comes in its 2xx). An in-dialog INVITE of an e2ae
    /// call goes to [`Self::alg_in_dialog`].
    fn alg_invite(&mut self, key: TransactionKey, request: Request, source: SocketAddr, now: Instant) -> Vec<Command> {
        let call_id = request.headers.value(&HeaderName::CallId).map(|v| String::from_utf8_lossy(&v).into_owned()).unwrap_or_default();
        let from_core = Some(source) == self.config.scscf;
        let initial = tag_of(&request.headers, &HeaderName::To).is_none();
        if !initial && self.alg_calls.contains_key(&call_id) {
            return self.alg_in_dialog(key, request, &call_id, from_core, now);
        }
        let support = self.e2ae_support(&request, from_core);
        let sdp = match mediasec_sip::body::sdp(&Message::Request(request.clone())) {
            Ok(Some(sdp)) => sdp,
            Ok(None) => {
                // Delayed offer (RFC 3261 §13.2.1): followed when an e2ae UE is on our side.
                let out = self.route(key.clone(), request, now);
                if initial
                    && let Some(support) = support
                    && let Some(c) = self.contexts.get_mut(&key)
                {
                    tracing::info!(%call_id, from_core, "IMS-ALG: offerless INVITE of an e2ae UE; the offer is expected in the 2xx");
                    c.delayed = Some(Delayed::Initial { from_core, support });
                }
                return out;
            }
            Err(_) => return self.route(key, request, now),
        };
        let side = if initial { alg::decide(&sdp, from_core, support.filter(|_| !from_core), support.is_some() && from_core) } else { None };
        let Some(side) = side else { return self.route_stripped(key, request, now) };
        let from_tag = tag_of(&request.headers, &HeaderName::From).unwrap_or_default();
        let ng_call_id = match side {
            alg::Side::Originating => format!("{call_id};orig"),
            // One AGW call per terminating branch (the S-CSCF may fork to several contacts).
            alg::Side::Terminating => format!("{call_id};term;{}", self.next_ng),
        };
        let core_srtp = self.core_srtp(side);
        let command = alg::offer(&ng_call_id, &from_tag, &sdp, side, core_srtp).to_vec();
        tracing::info!(%call_id, ?side, %ng_call_id, core_srtp, "IMS-ALG: e2ae offer to the AGW");
        self.alg_calls.entry(call_id).or_default().push(ng_call_id.clone());
        let out = self.reply(&key, &request, 100, "Trying", vec![]);
        let leg = AlgLeg { ng_call_id, from_tag, side, core_srtp, replaces: false };
        self.ng(command, Pending::Offer { key, request, leg, now });
        out
    }

    /// Whether a new AGW call for an initial offer secured on `side` gets SRTP towards the
    /// core ([`ProxyConfig::core_srtp`]; a terminating call's core offered plain RTP).
    fn core_srtp(&self, side: alg::Side) -> bool {
        side == alg::Side::Originating && self.config.core_srtp
    }

    /// How the e2ae UE on our access side of an initial INVITE registered, if it did: the
    /// caller (INVITE from the access side) or the called contact (INVITE from the core);
    /// [`alg::Support::Provisioned`] when its AOR is provisioned.
    fn e2ae_support(&self, request: &Request, from_core: bool) -> Option<alg::Support> {
        let aor_of = |name: &HeaderName| {
            let value = request.headers.get(name)?.value().into_owned();
            let address = mediasec_sip::core::Address::parse(&value, "From/To").ok()?;
            Some(aor(&String::from_utf8_lossy(&address.uri.to_bytes())))
        };
        let (registered, ue) = if from_core {
            (self.e2ae_contacts.contains(&aor(&String::from_utf8_lossy(&request.uri.to_bytes()))), aor_of(&HeaderName::To))
        } else {
            let ue = aor_of(&HeaderName::From);
            (ue.as_ref().is_some_and(|a| self.e2ae_aors.contains(a)), ue)
        };
        let provisioned = ue.is_some_and(|a| self.config.e2ae_provisioned.contains(&a));
        registered.then_some(if provisioned { alg::Support::Provisioned } else { alg::Support::Indicated })
    }

    /// Routes a request the IMS-ALG does not secure, minus any foreign `a=3ge2ae`.
    fn route_stripped(&mut self, key: TransactionKey, request: Request, now: Instant) -> Vec<Command> {
        let mut message = Message::Request(request);
        if let Ok(Some(sdp)) = mediasec_sip::body::sdp(&message) {
            self.strip_foreign(&mut message, sdp);
        }
        let Message::Request(request) = message else { return Vec::new() };
        self.route(key, request, now)
    }

    /// Another in-dialog offer/answer exchange of `call_id` is still open through the ALG.
    fn busy(&self, call_id: &str, now: Instant) -> bool {
        self.offering.get(call_id).is_some_and(|since| now.saturating_duration_since(*since) < LINGER)
    }

    /// An in-dialog offer/answer exchange of `call_id` begins through the ALG; [`Self::tick`]
    /// forgets it [`LINGER`] later if nothing ended it.
    fn begin_offering(&mut self, call_id: &str, now: Instant) {
        self.timers.at(now + LINGER, Due::Offering(call_id.to_owned()));
        self.offering.insert(call_id.to_owned(), now);
    }

    /// A re-INVITE or UPDATE inside an e2ae call (its dialog established through the AGW):
    /// - with an offer: to the AGW as a re-offer ([`Self::re_offer_leg`]), forwarded when it
    ///   answered; the answer in the final response comes back through ng `answer`;
    /// - an offerless re-INVITE (delayed offer): routed; the offer in its 2xx and the answer in
    ///   the ACK go through the AGW ([`Self::delayed_response`], [`Self::alg_ack`]);
    /// - an UPDATE without an offer: routed.
    ///
    /// One exchange at a time per dialog: an offer while another is open through the ALG gets
    /// 500 with `Retry-After` 0–10 s, what the UAS would answer (RFC 3311 §5.2, RFC 3261
    /// §14.2). Refused with 488, never passed end to end (its SDP would not match the AGW's
    /// ports and keys): an offer before the dialog was established through the AGW, and an
    /// answerer's re-offer that the swapped side cannot secure.
    fn alg_in_dialog(&mut self, key: TransactionKey, request: Request, call_id: &str, from_core: bool, now: Instant) -> Vec<Command> {
        let invite = request.method == Method::Invite;
        let sdp = mediasec_sip::body::sdp(&Message::Request(request.clone())).ok().flatten();
        if !invite && sdp.is_none() {
            return self.route(key, request, now);
        }
        let Some(dialog) = self.alg_dialogs.get(call_id).cloned() else {
            if self.initial_exchange_open(call_id) {
                // RFC 3311 §5.2: an offer while the INVITE's is unanswered gets 500 from the UAS.
                return self.offer_pending(&key, &request, call_id);
            }
            return self.refuse(&key, &request, 488, "an offer in an e2ae call before it was established through the IMS-AGW is not supported by this IMS-ALG");
        };
        if self.busy(call_id, now) {
            return self.offer_pending(&key, &request, call_id);
        }
        let Some(sdp) = sdp else {
            tracing::info!(%call_id, from_core, "IMS-ALG: offerless re-INVITE of an e2ae call; the offer is expected in the 2xx");
            self.begin_offering(call_id, now);
            let out = self.route(key.clone(), request, now);
            match self.contexts.get_mut(&key) {
                Some(c) => c.delayed = Some(Delayed::Reinvite { from_core, dialog }),
                None => {
                    self.offering.remove(call_id);
                }
            }
            return out;
        };
        let from_tag = tag_of(&request.headers, &HeaderName::From).unwrap_or_default();
        let Some(leg) = self.re_offer_leg(call_id, dialog, from_tag, from_core, &sdp) else {
            return self.refuse(&key, &request, 488, "re-offer of an e2ae call that the IMS-ALG cannot secure (SDES from the UE or plain RTP from the core expected)");
        };
        self.begin_offering(call_id, now);
        let command = alg::offer(&leg.ng_call_id, &leg.from_tag, &sdp, leg.side, leg.core_srtp).to_vec();
        tracing::info!(%call_id, method = %request.method, side = ?leg.side, ng_call_id = %leg.ng_call_id, "IMS-ALG: e2ae re-offer to the AGW");
        let out = if invite { self.reply(&key, &request, 100, "Trying", vec![]) } else { Vec::new() };
        self.ng(command, Pending::Offer { key, request, leg, now });
        out
    }

    /// 500 with `Retry-After` 0–10 s to an offer while another is open in the dialog (RFC 3311
    /// §5.2, RFC 3261 §14.2).
    fn offer_pending(&mut self, key: &TransactionKey, request: &Request, call_id: &str) -> Vec<Command> {
        tracing::info!(%call_id, method = %request.method, "IMS-ALG: an offer while another is open in the dialog; 500 with Retry-After");
        let retry = header(HeaderName::parse(&Bytes::from_static(b"Retry-After")), (rand::random::<u8>() % 11).to_string());
        self.reply(key, request, 500, "Offer Pending", retry.into_iter().collect())
    }

    /// The initial INVITE of e2ae call `call_id` carried an offer that is not answered yet
    /// (held for the AGW, or forwarded and waiting for a reliable 18x or 2xx answer): an early
    /// dialog's offer now would overlap it.
    fn initial_exchange_open(&self, call_id: &str) -> bool {
        let of_call = |r: &Request| r.headers.value(&HeaderName::CallId).is_some_and(|v| v.as_ref() == call_id.as_bytes());
        self.pending.values().any(|p| matches!(p, Pending::Offer { request, .. } if of_call(request)))
            || self.contexts.values().any(|c| {
                c.method == Method::Invite && c.finished.is_none() && c.alg.is_some() && c.branches.iter().any(|b| of_call(&b.request) && tag_of(&b.request.headers, &HeaderName::To).is_none())
            })
    }

    /// Refuses an in-dialog offer with `code` and a `Warning` giving `reason`.
    fn refuse(&mut self, key: &TransactionKey, request: &Request, code: u16, reason: &str) -> Vec<Command> {
        tracing::warn!(method = %request.method, %reason, "IMS-ALG: in-dialog offer refused");
        let warning = header(HeaderName::Warning, format!("399 pcscf \"{reason}\""));
        self.reply(key, request, code, "Not Acceptable Here", warning.into_iter().collect())
    }

    /// The AGW call an in-dialog offer from `offerer_tag` (from the core or not) goes to:
    /// - from the original offerer of the dialog's AGW call: that call (same `call-id` and
    ///   `from-tag`: the AGW keeps its ports and renegotiates the keys, docs/agw.md);
    /// - from the original answerer (our AGW takes no re-offer from that side): a new AGW call
    ///   `<Call-ID>;re;<n>` with the sides' roles swapped (the UE's SDES offer is terminated as
    ///   for an originating call, a plain offer from the core is secured towards the UE as for
    ///   a terminating one); its answer replaces the dialog's call, a failure deletes it. The
    ///   core leg keeps its transport (`core_srtp`: an SDES offer from the core, an `RTP/SAVP`
    ///   offer towards it).
    ///
    /// `None` when the swapped side cannot secure the offer (not SDES from the UE, not what
    /// the core leg is from the core).
    fn re_offer_leg(&mut self, call_id: &str, dialog: AlgLeg, offerer_tag: String, from_core: bool, sdp: &Sdp) -> Option<AlgLeg> {
        if offerer_tag == dialog.from_tag && from_core == (dialog.side == alg::Side::Terminating) {
            return Some(dialog);
        }
        let side = if from_core { alg::Side::Terminating } else { alg::Side::Originating };
        let suitable = match side {
            alg::Side::Originating => alg::sdes_offer(sdp),
            // The core offers what its leg is: re-protected SRTP or plain.
            alg::Side::Terminating if dialog.core_srtp => alg::sdes_offer(sdp),
            alg::Side::Terminating => alg::plain_offer(sdp),
        };
        if !suitable {
            return None;
        }
        let ng_call_id = format!("{call_id};re;{}", self.next_ng);
        self.alg_calls.entry(call_id.to_owned()).or_default().push(ng_call_id.clone());
        Some(AlgLeg { ng_call_id, from_tag: offerer_tag, side, core_srtp: dialog.core_srtp, replaces: true })
    }

    /// A response to an offerless INVITE of an e2ae call ([`Delayed`]). Its first 2xx carries
    /// the offer: from the UE or the core, it goes to the AGW as an ng `offer` — on the AGW
    /// call [`Self::re_offer_leg`] picks for a re-INVITE; for an initial INVITE, on a new one
    /// (`<Call-ID>;d;<n>`) when [`alg::decide`] secures it (a plain offer from the core
    /// towards the UE, `applied` added; the UE's offer with `requested`, or a provisioned UE's
    /// SDES offer, plain towards the core) — and the 2xx is held until the AGW answered. An
    /// offer it does not secure is passed minus any `a=3ge2ae`. Provisional responses pass
    /// minus any `a=3ge2ae`; a final failure ends the exchange (an initial INVITE's AGW calls
    /// are deleted).
    fn delayed_response(&mut self, server: TransactionKey, key: &TransactionKey, mut message: Message, delayed: Delayed, call_id: &str, now: Instant) -> Vec<Command> {
        let sdp = mediasec_sip::body::sdp(&message).ok().flatten();
        let Message::Response(r) = &message else { return Vec::new() };
        let code = r.status.code();
        let offerer_tag = tag_of(&r.headers, &HeaderName::To).unwrap_or_default();
        let (from_core, dialog) = match &delayed {
            Delayed::Initial { from_core, .. } => (*from_core, None),
            Delayed::Reinvite { from_core, dialog } => (*from_core, Some(dialog.clone())),
        };
        let exchange = exchange_key(&r.headers);
        let reliable = is_reliable(r);
        let offered_before = self.contexts.get(&server).is_some_and(|c| c.offered_reliably);
        let offer = match (code, sdp, exchange) {
            (200..300, Some(sdp), Some(exchange)) if !offered_before => Some((sdp, exchange)),
            // RFC 3262 §5: an offer in a reliable 18x, its answer in the PRACK.
            (_, Some(sdp), Some(exchange)) if reliable && !offered_before => Some((sdp, exchange)),
            (_, sdp, _) => {
                if code >= 300 && dialog.is_none() {
                    self.alg_delete(call_id);
                } else if code >= 200 {
                    // A failure, or a 2xx without the offer (RFC 3261 §13.2.2.4: the UAC ends
                    // the session): nothing for the AGW.
                    self.offering.remove(call_id);
                }
                if let Some(sdp) = sdp {
                    self.strip_foreign(&mut message, sdp);
                }
                None
            }
        };
        let Some((sdp, exchange)) = offer else {
            let Message::Response(r) = message else { return Vec::new() };
            return self.forward_response(server, key, r, now);
        };
        if reliable && let Some(c) = self.contexts.get_mut(&server) {
            // This is the exchange's offer; SDP in later responses is no new one (RFC 6337 §3.1).
            c.offered_reliably = true;
        }
        if let Err(reason) = check_sdes(&sdp) {
            // The P-CSCF's SDES check, as for an offer in a request — but a proxy cannot refuse
            // a 2xx (RFC 3261 §16.7), nor answer a reliable 18x for its UAC (RFC 3262 §5: the
            // UAC answers it in the PRACK and, if it cannot accept it, ends the call itself):
            // passed on without the AGW, minus any a=3ge2ae, so its receiver's own policy
            // refuses it; its retransmissions and the ACK/PRACK pass untouched.
            self.stats.sdes_refused += 1;
            tracing::warn!(%call_id, %reason, code, reliable, "IMS-ALG: an offer in a response fails the SDES check; passed on without the AGW");
            if dialog.is_some() {
                self.offering.remove(call_id);
            }
            self.timers.at(now + LINGER, Due::Exchange(exchange.clone()));
            self.exchanges.insert(exchange, Exchange { response: Rewrite::Unsecured, ack: None, created: now });
            self.strip_foreign(&mut message, sdp);
            let Message::Response(r) = message else { return Vec::new() };
            return self.forward_response(server, key, r, now);
        }
        let offer_from_core = !from_core;
        let leg = match dialog {
            Some(dialog) => self.re_offer_leg(call_id, dialog, offerer_tag, offer_from_core, &sdp),
            None => {
                let Delayed::Initial { support, .. } = delayed else { return Vec::new() };
                let side = alg::decide(&sdp, offer_from_core, Some(support).filter(|_| !offer_from_core), offer_from_core);
                side.map(|side| {
                    let ng_call_id = format!("{call_id};d;{}", self.next_ng);
                    self.alg_calls.entry(call_id.to_owned()).or_default().push(ng_call_id.clone());
                    AlgLeg { ng_call_id, from_tag: offerer_tag, side, core_srtp: self.core_srtp(side), replaces: false }
                })
            }
        };
        let Some(leg) = leg else {
            if matches!(delayed, Delayed::Reinvite { .. }) {
                tracing::warn!(%call_id, "IMS-ALG: an offer in a 2xx that the swapped side cannot secure; passed without the AGW");
                self.offering.remove(call_id);
            }
            self.strip_foreign(&mut message, sdp);
            let Message::Response(r) = message else { return Vec::new() };
            return self.forward_response(server, key, r, now);
        };
        tracing::info!(%call_id, side = ?leg.side, ng_call_id = %leg.ng_call_id, reliable, "IMS-ALG: e2ae offer in a 2xx or reliable 18x to the AGW");
        let command = alg::offer(&leg.ng_call_id, &leg.from_tag, &sdp, leg.side, leg.core_srtp).to_vec();
        self.timers.at(now + LINGER, Due::Exchange(exchange.clone()));
        self.exchanges.insert(exchange.clone(), Exchange { response: Rewrite::Waiting, ack: Some((leg.clone(), Rewrite::Expected)), created: now });
        let Message::Response(response) = message else { return Vec::new() };
        self.ng(command, Pending::OfferIn2xx { server, client: key.clone(), response, leg, exchange });
        Vec::new()
    }

    /// An ACK for a 2xx that carried a delayed offer ([`Self::delayed_response`]): its answer
    /// goes to the AGW as ng `answer` (the ACK held until it answered); a retransmitted ACK
    /// gets the same SDP (or is dropped while the first waits). An ACK without an answer
    /// (RFC 3261 §13.2.2.4 requires one; the UAS ends the session with BYE) is passed on and
    /// counted as an AGW failure, and the exchange's new AGW call, if any, is deleted (the
    /// dialog's carries on). `None`: forward `message` (rewritten; not such an ACK: minus any
    /// foreign `a=3ge2ae`).
    fn alg_ack(&mut self, message: &mut Message) -> Option<Vec<Command>> {
        let Message::Request(ack) = &*message else { return None };
        let Some((exchange, (leg, state))) = exchange_key(&ack.headers).and_then(|k| {
            let ack = self.exchanges.get(&k)?.ack.clone()?;
            Some((k, ack))
        }) else {
            // Not the answer to an offer this ALG secured: no foreign indication passes.
            if let Ok(Some(sdp)) = mediasec_sip::body::sdp(message) {
                self.strip_foreign(message, sdp);
            }
            return None;
        };
        let call_id = exchange.0.clone();
        match state {
            Rewrite::Waiting => Some(Vec::new()),
            Rewrite::Done(_) | Rewrite::Unsecured => {
                self.rewrite_again(message, &state);
                None
            }
            Rewrite::Expected => {
                let answerer = tag_of(&ack.headers, &HeaderName::From).unwrap_or_default();
                let ack = ack.clone();
                match mediasec_sip::body::sdp(message) {
                    Ok(Some(sdp)) => {
                        let command = alg::answer(&leg.ng_call_id, &leg.from_tag, &answerer, &sdp).to_vec();
                        self.set_ack(&exchange, Rewrite::Waiting);
                        self.ng(command, Pending::AnswerInAck { ack, leg, exchange });
                        Some(Vec::new())
                    }
                    _ => {
                        tracing::warn!(%call_id, ng_call_id = %leg.ng_call_id, "IMS-ALG: the ACK brings no answer to the offer in the 2xx (RFC 3261 §13.2.2.4); passed on");
                        self.exchange_unsecured(&leg, &exchange, true);
                        None
                    }
                }
            }
        }
    }

    /// A PRACK (RFC 3262 §7.2 `RAck`: the RSeq and CSeq of the reliable 18x it acknowledges):
    /// when that 18x carried an offer the ALG put through the AGW
    /// ([`Self::delayed_response`]), the PRACK's answer (RFC 3262 §5) goes to the AGW as ng
    /// `answer`, the PRACK held until it answered, then routed; a PRACK without an answer is
    /// routed as it is, counted as an AGW failure, and the exchange's new AGW call deleted (as
    /// for an ACK without one). Any other PRACK is routed minus any foreign `a=3ge2ae` (its
    /// offer, RFC 3262 §5, is not one this ALG secures).
    fn alg_prack(&mut self, key: TransactionKey, request: Request, now: Instant) -> Vec<Command> {
        let rack = request.headers.typed::<mediasec_sip::core::rel::RAck>().and_then(Result::ok);
        let call_id = request.headers.value(&HeaderName::CallId).map(|v| String::from_utf8_lossy(&v).into_owned());
        let to_tag = tag_of(&request.headers, &HeaderName::To);
        let exchange = match (rack, call_id, to_tag) {
            (Some(rack), Some(call_id), Some(to_tag)) if rack.method == Method::Invite.as_bytes() => (call_id, rack.cseq, to_tag, Some(rack.rseq)),
            _ => return self.route_stripped(key, request, now),
        };
        let Some((leg, Rewrite::Expected)) = self.exchanges.get(&exchange).and_then(|x| x.ack.clone()) else {
            return self.route_stripped(key, request, now);
        };
        let call_id = exchange.0.clone();
        match mediasec_sip::body::sdp(&Message::Request(request.clone())) {
            Ok(Some(sdp)) => {
                let answerer = tag_of(&request.headers, &HeaderName::From).unwrap_or_default();
                let command = alg::answer(&leg.ng_call_id, &leg.from_tag, &answerer, &sdp).to_vec();
                self.set_ack(&exchange, Rewrite::Waiting);
                self.ng(command, Pending::AnswerInPrack { key, prack: request, leg, exchange, now });
                Vec::new()
            }
            _ => {
                tracing::warn!(%call_id, ng_call_id = %leg.ng_call_id, "IMS-ALG: the PRACK brings no answer to the offer in the reliable 18x (RFC 3262 §5); passed on");
                self.exchange_unsecured(&leg, &exchange, true);
                self.route(key, request, now)
            }
        }
    }

    fn set_ack(&mut self, exchange: &ExchangeKey, state: Rewrite) {
        if let Some((_, s)) = self.exchanges.get_mut(exchange).and_then(|x| x.ack.as_mut()) {
            *s = state;
        }
    }

    /// The AGW's reply to the answer that an ACK (to an offer in a 2xx, RFC 3261 §13.2.2.4) or
    /// a PRACK (to an offer in a reliable 18x, RFC 3262 §5) carries in `message`; `carried_in`
    /// names which, for the log. Taken: the AGW's SDP goes into `message` and its AGW call
    /// becomes the dialog's ([`Self::alg_established`]). Not taken: the AGW took the offer but
    /// not the answer, so the exchange goes on unsecured ([`Self::exchange_unsecured`], a new
    /// AGW call deleted, the dialog's keeping its previous keys) and `message` minus any
    /// `a=3ge2ae`. Either way the exchange is over; a retransmitted ACK gets the same SDP.
    fn answer_in_request(&mut self, message: &mut Message, sdp: Result<Sdp, String>, leg: &AlgLeg, exchange: &ExchangeKey, carried_in: &str) {
        let call_id = &exchange.0;
        match sdp {
            Ok(sdp) => {
                let done = self.set_agw_sdp(message, sdp, leg.side, true, call_id);
                self.alg_established(call_id, leg);
                self.offering.remove(call_id);
                self.set_ack(exchange, done);
            }
            Err(reason) => {
                tracing::warn!(%call_id, %reason, "IMS-ALG: the AGW did not take the answer in the {carried_in}; passed on unsecured");
                self.exchange_unsecured(leg, exchange, true);
                self.rewrite_again(message, &Rewrite::Unsecured);
            }
        }
    }

    /// An exchange with an offer in a 2xx or reliable 18x that goes on without the AGW (it
    /// refused the offer or the answer, or the ACK/PRACK brought no answer): counted as an AGW
    /// failure; the exchange's AGW call, when new, is forgotten (and deleted when the AGW took
    /// the offer, `delete`), the dialog's keeping its keys; the exchange is over and its
    /// ACK/PRACK passes unsecured.
    fn exchange_unsecured(&mut self, leg: &AlgLeg, exchange: &ExchangeKey, delete: bool) {
        let call_id = &exchange.0;
        self.stats.agw_failures += 1;
        self.alg_drop_new(call_id, leg, delete);
        self.offering.remove(call_id);
        self.set_ack(exchange, Rewrite::Unsecured);
    }

    /// A 2xx the IMS-ALG already rewrote (a retransmission, RFC 3261 §13.3.1.4): `Some(true)`
    /// with the same SDP set again, `Some(false)` while its first copy waits for the AGW (this
    /// one is dropped), `None` when it is new.
    fn replay(&mut self, message: &mut Message) -> Option<bool> {
        let Message::Response(r) = &*message else { return None };
        if !r.status.is_success() && !is_reliable(r) {
            return None;
        }
        let state = self.exchanges.get(&exchange_key(&r.headers)?)?.response.clone();
        Some(self.rewrite_again(message, &state))
    }

    /// Puts the AGW's SDP for an offer or `answer` of an e2ae call into `message`, prepared for
    /// its receiver ([`alg::for_receiver`]), and counts it as applied; returns it as what the
    /// exchange's retransmissions get ([`Rewrite::Done`]).
    fn set_agw_sdp(&mut self, message: &mut Message, mut sdp: Sdp, side: alg::Side, answer: bool, call_id: &str) -> Rewrite {
        alg::for_receiver(&mut sdp, side, answer);
        self.stats.e2ae_applied += 1;
        if let Err(e) = mediasec_sip::body::set_sdp(message, &sdp) {
            tracing::warn!(%call_id, error = %e, answer, "IMS-ALG: the rewritten SDP could not be set");
        }
        Rewrite::Done(Box::new(sdp))
    }

    /// Sets what an exchange's first copy got; `false` when it still waits for the AGW.
    fn rewrite_again(&mut self, message: &mut Message, state: &Rewrite) -> bool {
        match state {
            Rewrite::Expected | Rewrite::Waiting => false,
            Rewrite::Done(sdp) => {
                if let Err(e) = mediasec_sip::body::set_sdp(message, sdp) {
                    tracing::warn!(error = %e, "IMS-ALG: the rewritten SDP could not be set again");
                }
                true
            }
            Rewrite::Unsecured => {
                if let Ok(Some(sdp)) = mediasec_sip::body::sdp(message) {
                    self.strip_foreign(message, sdp);
                }
                true
            }
        }
    }

    /// An exchange's AGW call that is not the dialog's (a new one for a swapped re-offer or a
    /// delayed initial offer) is dropped: forgotten, and deleted when the AGW took its offer.
    fn alg_drop_new(&mut self, call_id: &str, leg: &AlgLeg, delete: bool) {
        if self.alg_dialogs.get(call_id).map(|d| d.ng_call_id.as_str()) != Some(leg.ng_call_id.as_str()) {
            self.alg_forget(call_id, &leg.ng_call_id, delete);
        }
    }

    /// An exchange's answer went through the AGW on `leg`: a new AGW call replaces the
    /// dialog's (deleted), and the first answer of an initial INVITE makes the dialog's (later
    /// forks' 2xx are ended by the caller).
    fn alg_established(&mut self, call_id: &str, leg: &AlgLeg) {
        if leg.replaces {
            let new = AlgLeg { replaces: false, ..leg.clone() };
            if let Some(old) = self.alg_dialogs.insert(call_id.to_owned(), new)
                && old.ng_call_id != leg.ng_call_id
            {
                self.alg_forget(call_id, &old.ng_call_id, true);
            }
        } else {
            self.alg_dialogs.entry(call_id.to_owned()).or_insert_with(|| leg.clone());
        }
    }

    /// Deletes one AGW call of SIP call `call_id` (a replaced or failed re-INVITE's).
    fn alg_forget(&mut self, call_id: &str, ng_call_id: &str, delete: bool) {
        if let Some(list) = self.alg_calls.get_mut(call_id) {
            list.retain(|c| c != ng_call_id);
        }
        if delete {
            tracing::info!(%call_id, %ng_call_id, "IMS-ALG: deleting the AGW call");
            self.ng(alg::delete(ng_call_id).to_vec(), Pending::Delete);
        }
    }

    /// The AGW's reply to ng command `id` (`Err`: no reply in time, with the reason);
    /// continues what waited for it.
    pub fn ng_result(&mut self, id: u64, reply: Result<Vec<u8>, String>, now: Instant) -> Vec<Command> {
        let Some(pending) = self.pending.remove(&id) else { return Vec::new() };
        let sdp = reply.and_then(|r| alg::reply_sdp(&r));
        match pending {
            Pending::Delete => {
                if let Err(reason) = sdp {
                    // A delete answers without `sdp`; only a refusal or silence is a failure.
                    if !reason.contains("without sdp") {
                        self.stats.agw_failures += 1;
                        tracing::warn!(%reason, "IMS-ALG: delete failed");
                    }
                }
                Vec::new()
            }
            Pending::Offer { key, request, leg, now: received } => {
                let call_id = request.headers.value(&HeaderName::CallId).map(|v| String::from_utf8_lossy(&v).into_owned()).unwrap_or_default();
                let sdp = match sdp {
                    Ok(sdp) => sdp,
                    Err(reason) => {
                        self.stats.agw_failures += 1;
                        tracing::warn!(%call_id, %reason, "IMS-ALG: the AGW did not take the offer");
                        // A refused re-offer leaves the AGW call as it was (a refused offer creates
                        // nothing there): the dialog goes on.
                        if tag_of(&request.headers, &HeaderName::To).is_none() {
                            self.alg_delete(&call_id);
                        } else {
                            self.offering.remove(&call_id);
                            if leg.replaces {
                                self.alg_forget(&call_id, &leg.ng_call_id, false);
                            }
                        }
                        let warning = header(HeaderName::Warning, format!("399 pcscf \"IMS-AGW: {}\"", reason.replace('"', "'")));
                        return self.reply(&key, &request, 488, "Not Acceptable Here", warning.into_iter().collect());
                    }
                };
                let mut message = Message::Request(request);
                self.set_agw_sdp(&mut message, sdp, leg.side, false, &call_id);
                let Message::Request(request) = message else { return Vec::new() };
                let out = self.route(key.clone(), request, received.max(now));
                if let Some(c) = self.contexts.get_mut(&key) {
                    c.alg = Some(leg);
                }
                // The 100 went out when the INVITE arrived.
                out.into_iter().filter(|c| !matches!(c, Command::Respond { response, .. } if response.status.code() == 100)).collect()
            }
            Pending::Answer { server, client, response, leg } => {
                let call_id = response.headers.value(&HeaderName::CallId).map(|v| String::from_utf8_lossy(&v).into_owned()).unwrap_or_default();
                // A reliable 18x completes the exchange as a 2xx does (RFC 3262 §5): the early
                // dialog's offers (UPDATE, RFC 3311) go on this AGW call.
                let success = response.status.is_success() || is_reliable(&response);
                if success {
                    self.alg_established(&call_id, &leg);
                    self.offering.remove(&call_id);
                }
                let mut message = Message::Response(response);
                let rewrite = match sdp {
                    Ok(sdp) => self.set_agw_sdp(&mut message, sdp, leg.side, true, &call_id),
                    Err(reason) => {
                        // Forwarded without any e2ae indication: the UE sees no "applied" and its
                        // own policy decides (an SDES UE refuses the plain answer as a downgrade).
                        self.stats.agw_failures += 1;
                        tracing::warn!(%reason, "IMS-ALG: the AGW did not take the answer");
                        self.rewrite_again(&mut message, &Rewrite::Unsecured);
                        Rewrite::Unsecured
                    }
                };
                let Message::Response(response) = message else { return Vec::new() };
                if is_reliable(&response)
                    && let Some(c) = self.contexts.get_mut(&server)
                    && c.reliable_answer.is_none()
                {
                    c.reliable_answer = tag_of(&response.headers, &HeaderName::To).map(|tag| (tag, rewrite.clone()));
                }
                if success
                    && let Some(x) = exchange_key(&response.headers).and_then(|k| self.exchanges.get_mut(&k))
                {
                    x.response = rewrite;
                }
                self.forward_response(server, &client, response, now)
            }
            Pending::OfferIn2xx { server, client, response, leg, exchange } => {
                let call_id = exchange.0.clone();
                let mut message = Message::Response(response);
                let rewrite = match sdp {
                    Ok(sdp) => self.set_agw_sdp(&mut message, sdp, leg.side, false, &call_id),
                    Err(reason) => {
                        // A proxy cannot refuse a 2xx (RFC 3261 §16.7): it goes on unsecured, and
                        // a receiver that cannot accept it answers in the ACK and sends BYE
                        // (§13.2.2.4). The AGW took nothing: a new call is forgotten, the
                        // dialog's keeps its keys.
                        tracing::warn!(%call_id, %reason, "IMS-ALG: the AGW did not take the offer in the 2xx; passed on unsecured");
                        self.exchange_unsecured(&leg, &exchange, false);
                        self.rewrite_again(&mut message, &Rewrite::Unsecured);
                        Rewrite::Unsecured
                    }
                };
                if let Some(x) = self.exchanges.get_mut(&exchange) {
                    x.response = rewrite;
                }
                let Message::Response(response) = message else { return Vec::new() };
                self.forward_response(server, &client, response, now)
            }
            Pending::AnswerInAck { ack, leg, exchange } => {
                let mut message = Message::Request(ack);
                self.answer_in_request(&mut message, sdp, &leg, &exchange, "ACK");
                self.forward_stateless(message, now)
            }
            Pending::AnswerInPrack { key, prack, leg, exchange, now: received } => {
                let mut message = Message::Request(prack);
                self.answer_in_request(&mut message, sdp, &leg, &exchange, "PRACK");
                let Message::Request(prack) = message else { return Vec::new() };
                self.route(key, prack, received.max(now))
            }
        }
    }

    /// A client transaction timed out (Timer B or F): [`Self::branch_failed`].
    fn on_timeout(&mut self, key: &TransactionKey, now: Instant) -> Vec<Command> {
        let Some(server) = self.branches.get(key).cloned() else { return Vec::new() };
        self.branch_failed(&server, key, now)
    }

    /// ACK for a 2xx (and stray 2xx responses): forwarded without a transaction.
    fn forward_stateless(&mut self, message: Message, now: Instant) -> Vec<Command> {
        match message {
            Message::Request(mut request) => {
                if let Some(Ok(mf)) = request.headers.typed::<mediasec_sip::core::headers::MaxForwards>()
                    && mf.0 == 0
                {
                    return Vec::new();
                }
                self.pop_own_route(&mut request);
                let hop = match request.headers.get(&HeaderName::Route).map(|h| h.value().into_owned()) {
                    Some(v) => Route::parse_list(&v).ok().and_then(|r| r.first().map(|t| Hop::of(&t.0.uri))),
                    None => self.targets(&request, now).ok().and_then(|t| t.into_iter().next().map(|(_, _, hop)| hop)),
                };
                let Some(hop) = hop else { return Vec::new() };
                request.headers.push_front_header(HeaderName::Via, &format!("SIP/2.0/UDP {};branch={}", self.local, branch_id()));
                vec![hop.stateless(request)]
            }
            Message::Response(mut response) => {
                // RFC 6026 §8: a 2xx whose transaction is gone is forwarded by its Via.
                let ours = response.headers.typed::<Via>().and_then(Result::ok).is_some_and(|v| {
                    matches!(v.host, mediasec_sip::core::Host::Ip(ip) if ip == self.local.ip()) && v.port == Some(self.local.port())
                });
                if !ours || !response.status.is_success() {
                    return Vec::new();
                }
                response.headers.remove_first(&HeaderName::Via);
                let Some(Ok(next)) = response.headers.typed::<Via>() else { return Vec::new() };
                let Some(to) = via_address(&next) else { return Vec::new() };
                vec![Command::Stateless { message: Message::Response(response), to }]
            }
        }
    }
}

/// §16.7 step 10 / §16.10: CANCEL every branch still pending (their 64·T1 filed in `timers`).
fn cancel_pending(context: &mut Context, now: Instant, stats: &mut Stats, timers: &mut Timers) -> Vec<Command> {
    let mut cancelled = false;
    let out = context
        .branches
        .iter_mut()
        .filter(|b| b.state == BranchState::Pending && b.cancelled.is_none())
        .filter_map(|b| {
            cancelled = true;
            cancel_branch(b, now, stats)
        })
        .collect();
    if cancelled {
        timers.at(now + LINGER, Due::Context(context.server.clone()));
    }
    out
}

/// Decides to CANCEL branch `b` at `now` and returns the CANCEL (RFC 3261 §9.1, sent without
/// a transaction of its own) when it may go now: once the branch had a provisional response;
/// otherwise [`Proxy::on_response`] sends it with the first one.
fn cancel_branch(b: &mut Branch, now: Instant, stats: &mut Stats) -> Option<Command> {
    b.cancelled = Some(now);
    b.timer_c = None;
    if b.provisional { send_cancel(b, stats) } else { None }
}

/// The CANCEL of branch `b` ([`cancel_for`]: its Request-URI, Call-ID, From, To, CSeq
/// number, Route and its single top Via), to its next hop, in a client transaction of its own
/// (RFC 3261 §9.1, §16.10: over UDP it is retransmitted until answered, Timer E/F). Its
/// response is consumed here (no branch has its key: [`Proxy::on_response`] drops it), and
/// so is its timeout; the INVITE branch ends by its own final response or 64·T1 later.
fn send_cancel(b: &Branch, stats: &mut Stats) -> Option<Command> {
    let cancel = cancel_for(&b.request)?;
    stats.cancels += 1;
    Some(b.to.command(cancel))
}

/// Whether a pending branch has a timer due at `now`: its Timer C, or the 64·T1 its CANCEL
/// waits for a final response ([`Proxy::tick`]).
fn timer_due(b: &Branch, now: Instant) -> bool {
    b.deadline().is_some_and(|at| now >= at)
}

/// A response of this proxy to the server transaction of the request `branch` was forwarded
/// as (its own top `Via` removed, so the response carries the upstream `Via`s).
fn upstream_response(branch: &Request, code: u16, reason: &'static str) -> Option<Response> {
    let mut request = branch.clone(); // shares its buffers
    request.headers.remove_first(&HeaderName::Via);
    Some(ResponseBuilder::to_request(&request, StatusCode::new(code)?, reason).ok()?.build())
}

/// §16.7 step 6: keeps the best non-2xx final response (6xx wins, then the lowest class; the
/// first of a class stays).
fn keep_best(context: &mut Context, response: Response) {
    let better = context.best.as_ref().is_none_or(|b| {
        let (old, new) = (b.status.code(), response.status.code());
        old < 600 && (new >= 600 || new / 100 < old / 100)
    });
    if better {
        context.best = Some(response);
    }
}

/// When every branch is done and no 2xx went up, the best response goes upstream.
fn finish_if_done(context: &mut Context, now: Instant, timers: &mut Timers) -> Vec<Command> {
    if context.finished.is_some() || context.branches.iter().any(|b| b.state == BranchState::Pending) {
        return Vec::new();
    }
    context.finished = Some(now);
    timers.at(now + LINGER, Due::Context(context.server.clone()));
    if context.forwarded_2xx {
        return Vec::new();
    }
    match context.best.take() {
        Some(mut response) => {
            // §16.7 step 6: a 503 from downstream says that hop is unavailable, not this proxy;
            // forwarded as it is, the client would take this proxy for overloaded. It goes
            // upstream as 500 (its other headers, `Retry-After` among them, kept).
            if response.status.code() == 503
                && let Some(status) = StatusCode::new(500)
            {
                tracing::info!("a 503 from downstream goes upstream as 500 (RFC 3261 §16.7 step 6)");
                response.status = status;
                response.reason = Bytes::from_static(b"Server Internal Error");
            }
            vec![Command::Respond { key: context.server.clone(), response }]
        }
        None => Vec::new(),
    }
}

/// Where a response goes by a `Via` (RFC 3261 §18.2.2, RFC 3581): `received`/`rport` when
/// present, else the sent-by.
fn via_address(via: &Via) -> Option<SocketAddr> {
    let ip = match via.received().and_then(|r| std::str::from_utf8(r).ok()?.parse().ok()) {
        Some(ip) => ip,
        None => match &via.host {
            mediasec_sip::core::Host::Ip(ip) => *ip,
            mediasec_sip::core::Host::Name(_) => return None,
        },
    };
    let port = via.rport().flatten().and_then(|p| std::str::from_utf8(p).ok()?.parse().ok()).or(via.port).unwrap_or(5060);
    Some(SocketAddr::new(ip, port))
}

/// The [`ExchangeKey`] of a 2xx or its ACK, or of a reliable 18x: Call-ID, CSeq number, To
/// tag, `RSeq`.
fn exchange_key(headers: &mediasec_sip::core::Headers) -> Option<ExchangeKey> {
    let call_id = String::from_utf8_lossy(&headers.value(&HeaderName::CallId)?).into_owned();
    let cseq = headers.typed::<mediasec_sip::core::CSeq>()?.ok()?.sequence;
    let rseq = headers.typed::<RSeq>().and_then(Result::ok).map(|r| r.0);
    Some((call_id, cseq, tag_of(headers, &HeaderName::To)?, rseq))
}

/// A reliable provisional response (RFC 3262 §7.1: a 1xx with `RSeq`; the UAS that sent it
/// retransmits it until its PRACK, and its answer completes the offer/answer exchange, §5).
fn is_reliable(response: &Response) -> bool {
    response.status.is_provisional() && response.headers.typed::<RSeq>().is_some_and(|r| r.is_ok())
}

/// The `tag` parameter of a `From`/`To` header.
fn tag_of(headers: &mediasec_sip::core::Headers, name: &HeaderName) -> Option<String> {
    let value = headers.get(name)?.value().into_owned();
    let address = mediasec_sip::core::Address::parse(&value, "From/To").ok()?;
    address.tag().map(|t| String::from_utf8_lossy(t).into_owned())
}

/// A REGISTER's AOR, contact AORs, and whether it removes them (`Expires: 0` / `expires=0`).
fn registration_of(request: &Request) -> Option<(String, Vec<String>, bool)> {
    let to = request.headers.get(&HeaderName::To)?.value().into_owned();
    let to = mediasec_sip::core::Address::parse(&to, "To").ok()?;
    let mut contacts = Vec::new();
    let mut remove = matches!(request.headers.typed::<mediasec_sip::core::headers::Expires>(), Some(Ok(e)) if e.0 == 0);
    for h in request.headers.get_all(&HeaderName::Contact) {
        for c in Contact::parse_list(&h.value()).ok()? {
            remove |= c.param("expires").is_some_and(|e| e == b"0");
            contacts.push(aor(&String::from_utf8_lossy(&c.uri.to_bytes())));
        }
    }
    Some((aor(&String::from_utf8_lossy(&to.uri.to_bytes())), contacts, remove))
}

/// `uri` as a SIP URI parameter value (RFC 3261 §25.1 `paramchar`; RFC 4458 §2's escaped
/// `target`): every octet but unreserved, param-unreserved and existing `%` escapes as `%XX`.
fn param_escaped(uri: &str) -> String {
    uri.bytes().map(|b| if b.is_ascii_alphanumeric() || b"-_.!~*'()[]/:&+$%".contains(&b) { char::from(b).to_string() } else { format!("%{b:02X}") }).collect()
}

/// `History-Info` (RFC 7044).
fn history_info() -> HeaderName {
    HeaderName::parse(&Bytes::from_static(b"History-Info"))
}

fn security_server_name() -> HeaderName {
    HeaderName::parse(&Bytes::from_static(b"Security-Server"))
}

/// Header edits of a forwarded request. Values are built from our own address and parsed
/// routes, so they always validate; one that did not would be left out, never panic.
trait HeaderEdits {
    fn push_front_header(&mut self, name: HeaderName, value: &str);
    fn extend_routes(&mut self, routes: &[String]);
}

impl HeaderEdits for mediasec_sip::core::Headers {
    fn push_front_header(&mut self, name: HeaderName, value: &str) {
        if let Some(h) = header(name, value.to_owned()) {
            self.push_front(h);
        }
    }

    fn extend_routes(&mut self, routes: &[String]) {
        for r in routes {
            if let Some(h) = header(HeaderName::Route, r.clone()) {
                self.push(h);
            }
        }
    }
}

fn split_list(value: &[u8]) -> Vec<String> {
    Route::parse_list(value)
        .map(|list| {
            list.into_iter()
                .map(|r| format!("<{}>", String::from_utf8_lossy(&r.0.uri.to_bytes())))
                .collect()
        })
        .unwrap_or_default()
}

/// The P-CSCF's SDES check of an offer in an INVITE or UPDATE ([`check_sdes`]; an unreadable
/// SDP body refuses it too).
pub fn check_offer(request: &Request) -> Result<(), String> {
    match mediasec_sip::body::sdp(&Message::Request(request.clone())) {
        Ok(Some(sdp)) => check_sdes(&sdp),
        Ok(None) => Ok(()),
        Err(e) => Err(format!("unreadable SDP body: {e}")),
    }
}

/// The P-CSCF's SDES check of an offer (RFC 4568 §9 grammar and §7.1 rules), in a request
/// ([`check_offer`]) or, at the IMS-ALG, in a 2xx or reliable 18x to an offerless INVITE:
/// every `a=crypto` line is parsed and logged; a media section whose tags repeat, or an
/// `RTP/SAVP` section with neither one usable line nor an `a=key-mgmt` (RFC 4567), fails it.
pub fn check_sdes(sdp: &Sdp) -> Result<(), String> {
    for i in 0..sdp.media_count() {
        let proto = sdp.media_line(i).map(|m| m.proto.to_owned()).map_err(|e| format!("m-line {i}: {e}"))?;
        let values = sdp.attribute_values(Level::Media(i), CryptoAttribute::NAME).map_err(|e| e.to_string())?;
        let mut tags = Vec::new();
        let mut usable = 0;
        for v in &values {
            match CryptoAttribute::parse(v) {
                Ok(line) => {
                    tracing::info!(media = i, tag = line.tag, suite = %line.suite, known = line.suite.key_salt_len().is_some(), "a=crypto");
                    if tags.contains(&line.tag) {
                        return Err(format!("media {i}: a=crypto tag {} used twice", line.tag));
                    }
                    tags.push(line.tag);
                    if line.suite.key_salt_len().is_some() && line.inline_keys().next().is_some() {
                        usable += 1;
                    }
                }
                Err(e) => tracing::warn!(media = i, error = %e, "malformed a=crypto"),
            }
        }
        // RFC 4567: a=key-mgmt (media level, or session level) keys the stream instead.
        let key_mgmt = [Level::Media(i), Level::Session].into_iter().any(|l| sdp.attribute_values(l, "key-mgmt").is_ok_and(|v| !v.is_empty()));
        if key_mgmt {
            tracing::info!(media = i, "a=key-mgmt present");
        }
        if proto == "RTP/SAVP" && usable == 0 && !key_mgmt {
            return Err(format!("media {i}: RTP/SAVP without a usable a=crypto line ({} present) or a=key-mgmt", values.len()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const INVITE: &str = "INVITE sip:bob@b.example SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5071;branch=z9hG4bKp1\r\n\
Max-Forwards: 70\r\nRoute: <sip:127.0.0.1:5060;lr>, <sip:127.0.0.1:6060;lr>\r\nFrom: <sip:a@a.example>;tag=1\r\n\
To: <sip:bob@b.example>\r\nCall-ID: p1\r\nCSeq: 1 INVITE\r\nContact: <sip:a@127.0.0.1:5071>\r\n\
Content-Type: application/sdp\r\nContent-Length: 104\r\n\r\nv=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 4000 RTP/SAVP 0\r\n\
a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:x|2^20|1:4\r\n";

    fn proxies() -> [Proxy; 2] {
        let local: SocketAddr = "127.0.0.1:5060".parse().unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 5060)));
        let base = ProxyConfig {
            role: Role::Pcscf,
            domain: "a.example".into(),
            scscf: Some(SocketAddr::from(([127, 0, 0, 1], 5061))),
            peers: HashMap::from([("b.example".to_owned(), SocketAddr::from(([127, 0, 0, 1], 6060)))]),
            retarget: HashMap::new(),
            mediasec: true,
            agw_ng: None,
            e2ae_provisioned: alg::Provisioned::default(),
            core_srtp: false,
            voicemail: None,
            dns: false,
            hostnames: Vec::new(),
        };
        [Proxy::new(base.clone(), local), Proxy::new(ProxyConfig { role: Role::Scscf, ..base }, local)]
    }

    /// Feeds one datagram to both roles as every kind of event it could arrive as.
    fn feed(bytes: Vec<u8>) {
        let Ok(message) = mediasec_sip::core::parse_datagram(Bytes::from(bytes), &mediasec_sip::core::Limits::datagram()) else { return };
        let source = SocketAddr::from(([127, 0, 0, 1], 7000));
        let now = Instant::now();
        for mut proxy in proxies() {
            match &message {
                Message::Request(r) => {
                    if let Some(key) = TransactionKey::from_request(r) {
                        let _ = proxy.handle(Event::Request { key, request: Box::new(r.clone()), source }, now);
                    }
                    let _ = proxy.handle(Event::Ack { request: Box::new(r.clone()), source }, now);
                }
                Message::Response(r) => {
                    if let Some(key) = TransactionKey::from_response(r) {
                        let _ = proxy.handle(Event::Response { key, response: Box::new(r.clone()) }, now);
                    }
                }
            }
            let _ = proxy.handle(Event::Stray { message: Box::new(message.clone()), source }, now);
        }
    }

    fn parse(text: &str) -> Message {
        mediasec_sip::core::parse_datagram(Bytes::from(text.to_owned()), &mediasec_sip::core::Limits::datagram()).expect("parses")
    }

    fn sent(out: &[Command]) -> Vec<String> {
        out.iter()
            .filter_map(|c| match c {
                Command::Request { request, .. } => Some(Message::Request(request.clone()).to_bytes()),
                Command::Respond { response, .. } => Some(Message::Response(response.clone()).to_bytes()),
                _ => None,
            })
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .collect()
    }

    fn request_event(text: &str) -> (TransactionKey, Box<Request>) {
        match parse(text) {
            Message::Request(r) => (TransactionKey::from_request(&r).expect("key"), Box::new(r)),
            Message::Response(_) => panic!("a request"),
        }
    }

    /// RFC 3263 in the core: a next hop named by a host name becomes `Command::RequestUri`
    /// (the endpoint locates it); an S-CSCF routes another domain without a peer by DNS only
    /// with `dns`, else 404 as before.
    #[test]
    fn host_name_next_hops_go_to_the_endpoint_to_locate() {
        let now = Instant::now();
        let message = |uri: &str, route: &str, branch: &str| {
            format!(
                "MESSAGE {uri} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5071;branch={branch}\r\nMax-Forwards: 70\r\n{route}\
From: <sip:a@a.example>;tag=1\r\nTo: <{uri}>\r\nCall-ID: {branch}\r\nCSeq: 1 MESSAGE\r\nContent-Length: 0\r\n\r\n"
            )
        };
        let located = |out: &[Command]| {
            out.iter()
                .find_map(|c| match c {
                    Command::RequestUri { uri, .. } => Some(String::from_utf8_lossy(&uri.to_bytes()).into_owned()),
                    _ => None,
                })
        };
        let [mut pcscf, scscf] = proxies();
        let (key, r) = request_event(&message("sip:bob@b.example", "Route: <sip:scscf.a.example;lr>\r\n", "z9hG4bKn1"));
        let out = pcscf.handle(Event::Request { key, request: r, source: UE }, now);
        assert_eq!(located(&out).as_deref(), Some("sip:scscf.a.example;lr"), "{out:?}");

        // A Route naming this proxy by one of its host names is ours: removed, not located.
        let mut named = Proxy::new(ProxyConfig { hostnames: vec!["pcscf.a.example".into()], ..pcscf.config.clone() }, pcscf.local);
        let (key, r) = request_event(&message("sip:bob@b.example", "Route: <sip:PCSCF.a.example;lr>\r\n", "z9hG4bKn5"));
        let out = named.handle(Event::Request { key, request: r, source: UE }, now);
        assert!(located(&out).is_none() && out.iter().any(|c| matches!(c, Command::Request { to, .. } if *to == SCSCF)), "{out:?}");

        let mut plain = Proxy::new(scscf.config.clone(), scscf.local);
        let (key, r) = request_event(&message("sip:carol@c.example", "", "z9hG4bKn2"));
        let out = plain.handle(Event::Request { key, request: r, source: UE }, now);
        assert!(located(&out).is_none());
        assert!(sent(&out).iter().any(|m| m.starts_with("SIP/2.0 404")), "{out:?}");

        let mut by_dns = Proxy::new(ProxyConfig { dns: true, ..scscf.config.clone() }, scscf.local);
        let (key, r) = request_event(&message("sip:carol@c.example", "", "z9hG4bKn3"));
        let out = by_dns.handle(Event::Request { key, request: r, source: UE }, now);
        assert_eq!(located(&out).as_deref(), Some("sip:carol@c.example"), "{out:?}");
        // A configured peer still wins over DNS.
        let (key, r) = request_event(&message("sip:bob@b.example", "", "z9hG4bKn4"));
        let out = by_dns.handle(Event::Request { key, request: r, source: UE }, now);
        assert!(located(&out).is_none() && out.iter().any(|c| matches!(c, Command::Request { to, .. } if to.port() == 6060)), "{out:?}");
    }

    /// An ACK for a 2xx forwarded statelessly to a next hop named by a host name (its top
    /// `Route`, or the Request-URI of another domain on an S-CSCF with `dns`) is handed to the
    /// endpoint to locate (`Command::StatelessUri`, RFC 3263 §4.4) with this proxy's `Via` on
    /// top, not dropped; an IP-literal next hop is still sent to at once.
    #[test]
    fn a_stateless_ack_to_a_host_name_goes_to_the_endpoint_to_locate() {
        let now = Instant::now();
        let ack = |uri: &str, route: &str| {
            let text = format!(
                "ACK {uri} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5071;branch=z9hG4bKack\r\nMax-Forwards: 70\r\n{route}\
From: <sip:a@a.example>;tag=1\r\nTo: <{uri}>;tag=2\r\nCall-ID: ack1\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
            );
            let Message::Request(r) = parse(&text) else { panic!("a request") };
            Event::Ack { request: Box::new(r), source: UE }
        };
        let stateless_uri = |out: &[Command]| match out {
            [Command::StatelessUri { request, uri }] => {
                let via = String::from_utf8_lossy(&request.headers.value(&HeaderName::Via).expect("Via")).into_owned();
                Some((String::from_utf8_lossy(&uri.to_bytes()).into_owned(), via))
            }
            _ => None,
        };
        let [mut pcscf, scscf] = proxies();
        let out = pcscf.handle(ack("sip:bob@192.0.2.9:5090", "Route: <sip:scscf.a.example;lr>\r\n"), now);
        let (uri, via) = stateless_uri(&out).unwrap_or_else(|| panic!("{out:?}"));
        assert_eq!(uri, "sip:scscf.a.example;lr");
        assert!(via.starts_with(&format!("SIP/2.0/UDP {};branch=z9hG4bK", pcscf.local)), "{via}");

        let out = pcscf.handle(ack("sip:bob@192.0.2.9:5090", "Route: <sip:127.0.0.1:5061;lr>\r\n"), now);
        assert!(matches!(out.as_slice(), [Command::Stateless { to, .. }] if *to == SCSCF), "{out:?}");

        let mut by_dns = Proxy::new(ProxyConfig { dns: true, ..scscf.config.clone() }, scscf.local);
        let out = by_dns.handle(ack("sip:carol@c.example", ""), now);
        assert_eq!(stateless_uri(&out).map(|(uri, _)| uri).as_deref(), Some("sip:carol@c.example"), "{out:?}");
    }

    const UE: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 5071);
    const SCSCF: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 5061);

    /// An IMS-ALG P-CSCF with the operator's e2ae provisioning `provisioned`.
    fn alg_pcscf(provisioned: &[&str]) -> Proxy {
        let config = ProxyConfig {
            role: Role::Pcscf,
            domain: "a.example".into(),
            scscf: Some(SCSCF),
            peers: HashMap::new(),
            retarget: HashMap::new(),
            mediasec: true,
            agw_ng: Some(SocketAddr::from(([127, 0, 0, 1], 2223))),
            e2ae_provisioned: alg::Provisioned::parse(provisioned.iter().copied()).expect("provisioning"),
            core_srtp: false,
            voicemail: None,
            dns: false,
            hostnames: Vec::new(),
        };
        Proxy::new(config, SocketAddr::from(([127, 0, 0, 1], 5060)))
    }

    /// `user`@a.example (contact port `port`) registers through `p` (`expires`, with or
    /// without `Security-Client: sdes-srtp;mediasec`); the S-CSCF says 200. Returns the
    /// response the UE gets.
    fn register(p: &mut Proxy, user: &str, port: u16, mediasec: bool, expires: u32, now: Instant) -> String {
        let security = if mediasec { "Security-Client: sdes-srtp;mediasec\r\n" } else { "" };
        let reg = format!(
            "REGISTER sip:a.example SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKr{user}{expires}\r\nMax-Forwards: 70\r\n\
From: <sip:{user}@a.example>;tag=r\r\nTo: <sip:{user}@a.example>\r\nCall-ID: r{user}\r\nCSeq: {} REGISTER\r\n\
Contact: <sip:{user}@127.0.0.1:{port}>\r\nExpires: {expires}\r\n{security}Content-Length: 0\r\n\r\n",
            2 - expires.min(1)
        );
        let (key, r) = request_event(&reg);
        let out = p.handle(Event::Request { key, request: r, source: UE }, now);
        let Some(Command::Request { request: fwd, .. }) = out.into_iter().find(|c| matches!(c, Command::Request { .. })) else { panic!("REGISTER forwarded") };
        let ok = ResponseBuilder::to_request(&fwd, StatusCode::new(200).expect("200"), "OK").expect("200").build();
        let up = sent(&p.handle(Event::Response { key: TransactionKey::from_sent_request(&fwd).expect("k"), response: Box::new(ok) }, now));
        let [up] = up.as_slice() else { panic!("one 200 to the UE: {up:?}") };
        up.clone()
    }

    /// An IMS-ALG P-CSCF with alice registered `sdes-srtp;mediasec` through it.
    fn alg_with_e2ae_ue(now: Instant) -> Proxy {
        let mut p = alg_pcscf(&[]);
        let up = register(&mut p, "alice", 5071, true, 600, now);
        assert!(up.contains("Security-Server: sdes-srtp;mediasec"), "{up}");
        p
    }

    const SDES: &str = "v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 4000 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\n";

    /// An initial INVITE from `user`@a.example to bob@b.example with `offer`.
    fn invite_from(user: &str, branch: &str, call: &str, offer: &str) -> String {
        format!(
            "INVITE sip:bob@b.example SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5071;branch={branch}\r\nMax-Forwards: 70\r\n\
From: <sip:{user}@a.example>;tag=f\r\nTo: <sip:bob@b.example>\r\nCall-ID: {call}\r\nCSeq: 1 INVITE\r\n\
Contact: <sip:{user}@127.0.0.1:5071>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{offer}",
            offer.len()
        )
    }

    /// alice's INVITE with `a=3ge2ae:requested`.
    fn e2ae_invite(branch: &str, call: &str) -> String {
        invite_from("alice", branch, call, &format!("{SDES}a=3ge2ae:requested\r\n"))
    }

    const AGW_OFFER: &str = "v=0\r\nc=IN IP4 127.0.0.9\r\nm=audio 30000 RTP/AVP 0\r\n";
    const AGW_ANSWER: &str = "v=0\r\nc=IN IP4 127.0.0.9\r\nm=audio 30002 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\n";

    fn ng_ok(sdp: &str) -> Vec<u8> {
        mediasec_agw::bencode::Value::dict([("result", mediasec_agw::bencode::Value::str("ok")), ("sdp", mediasec_agw::bencode::Value::str(sdp.to_owned()))]).to_vec()
    }

    /// A 2xx (`code`) to a forwarded INVITE with To tag `t` and, if given, an SDP body.
    fn response_to(fwd: &Request, code: u16, sdp: Option<&str>) -> Box<Response> {
        tagged_response(fwd, code, "t", sdp)
    }

    /// A response (`code`) to a forwarded request with To tag `tag` and, if given, an SDP body.
    fn tagged_response(fwd: &Request, code: u16, tag: &str, sdp: Option<&str>) -> Box<Response> {
        let mut ok = ResponseBuilder::to_request(fwd, StatusCode::new(code).expect("code"), "R").expect("response").build();
        ok.headers.remove_first(&HeaderName::To);
        ok.headers.push(header(HeaderName::To, format!("<sip:bob@b.example>;tag={tag}")).expect("To"));
        let mut m = Message::Response(ok);
        if let Some(sdp) = sdp {
            mediasec_sip::body::set_sdp(&mut m, &Sdp::parse(sdp)).expect("sdp");
        }
        let Message::Response(ok) = m else { panic!() };
        Box::new(ok)
    }

    /// What [`establish`] saw.
    struct Established {
        to: SocketAddr,
        forwarded: String,
        offer: mediasec_agw::bencode::Value<'static>,
        answer: mediasec_agw::bencode::Value<'static>,
        to_ue: String,
    }

    /// alice's e2ae INVITE (`a=3ge2ae:requested`) for Call-ID `call` through `p`: the AGW
    /// answers the ng offer with [`AGW_OFFER`], the core answers 200 (To tag `t`, with a
    /// foreign `applied`), the AGW answers the ng answer with [`AGW_ANSWER`].
    fn establish(p: &mut Proxy, call: &str, now: Instant) -> Established {
        let (key, r) = request_event(&e2ae_invite(&format!("z9hG4bK{call}"), call));
        let out = p.handle(Event::Request { key, request: r, source: UE }, now);
        assert!(!out.iter().any(|c| matches!(c, Command::Request { .. })), "held for the AGW: {out:?}");
        let (id, offer) = one_ng(p);
        let out = p.ng_result(id, Ok(ng_ok(AGW_OFFER)), now);
        let Some(Command::Request { request: fwd, to }) = out.into_iter().find(|c| matches!(c, Command::Request { .. })) else { panic!("INVITE forwarded") };
        let forwarded = String::from_utf8_lossy(&Message::Request(fwd.clone()).to_bytes()).into_owned();
        let core_answer = "v=0\r\nc=IN IP4 127.0.0.2\r\nm=audio 5000 RTP/AVP 0\r\na=3ge2ae:applied\r\n";
        let out = p.handle(Event::Response { key: TransactionKey::from_sent_request(&fwd).expect("k"), response: response_to(&fwd, 200, Some(core_answer)) }, now);
        assert!(sent(&out).is_empty(), "held for the AGW: {out:?}");
        let (id, answer) = one_ng(p);
        let out = sent(&p.ng_result(id, Ok(ng_ok(AGW_ANSWER)), now));
        let [to_ue] = out.as_slice() else { panic!("the 200 to the UE: {out:?}") };
        Established { to, forwarded, offer, answer, to_ue: to_ue.clone() }
    }

    /// An in-dialog INVITE of Call-ID `call` (From tag `from_tag`, To tag `to_tag`) with an
    /// optional SDP body.
    fn reinvite(branch: &str, call: &str, from_tag: &str, to_tag: &str, sdp: Option<&str>) -> (TransactionKey, Box<Request>) {
        reinvite_seq(branch, call, from_tag, to_tag, sdp, 2)
    }

    /// [`reinvite`] with CSeq number `cseq`.
    fn reinvite_seq(branch: &str, call: &str, from_tag: &str, to_tag: &str, sdp: Option<&str>, cseq: u32) -> (TransactionKey, Box<Request>) {
        let body = sdp.unwrap_or_default();
        let content_type = if sdp.is_some() { "Content-Type: application/sdp\r\n" } else { "" };
        request_event(&format!(
            "INVITE sip:peer@127.0.0.1:5090 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5071;branch={branch}\r\nMax-Forwards: 70\r\n\
Route: <sip:127.0.0.1:5060;lr>, <sip:127.0.0.1:5061;lr>\r\nFrom: <sip:x@a.example>;tag={from_tag}\r\nTo: <sip:y@b.example>;tag={to_tag}\r\n\
Call-ID: {call}\r\nCSeq: {cseq} INVITE\r\nContact: <sip:x@127.0.0.1:5071>\r\n{content_type}Content-Length: {}\r\n\r\n{body}",
            body.len()
        ))
    }

    /// Re-INVITE in an e2ae call, sans-IO: alice's (the offerer's) re-offer goes to the AGW as
    /// an ng `offer` on the same AGW call (`c1;orig`, from-tag `f`, plain towards the core),
    /// is forwarded along its Route with the AGW's SDP, and the core's answer goes back through
    /// an ng `answer` to alice with `applied`. A re-offer the AGW refuses gets 488 and the AGW call stays (no `delete`). bob's
    /// re-INVITE (the answerer's side, From tag `t`, plain) makes a new AGW call secured
    /// towards alice (`RTP/SAVP`, `applied`), whose 2xx deletes `c1;orig`; then alice is the
    /// answerer's side: her plain re-offer gets 488, her SDES re-offer a new AGW call which the
    /// far end's 491 deletes again, the dialog's staying. BYE deletes what is left.
    #[test]
    fn reinvite_of_an_e2ae_call_re_offers_on_the_same_agw_call() {
        use mediasec_agw::bencode::Value;
        let now = Instant::now();
        let mut p = alg_with_e2ae_ue(now);
        let _ = establish(&mut p, "c1", now);
        let new_offer = SDES.replace("WVNf", "AAAA");
        let (key, r) = reinvite("z9hG4bKre1", "c1", "f", "t", Some(&new_offer));
        let out = p.handle(Event::Request { key, request: r, source: UE }, now);
        assert!(!out.iter().any(|c| matches!(c, Command::Request { .. })), "held for the AGW: {out:?}");
        let (id, offer) = one_ng(&mut p);
        let get = |v: &Value<'static>, k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        assert_eq!((get(&offer, "command"), get(&offer, "call-id"), get(&offer, "from-tag")), (Some("offer".into()), Some("c1;orig".into()), Some("f".into())));
        assert_eq!(get(&offer, "transport-protocol").as_deref(), Some("RTP/AVP"));
        assert!(get(&offer, "sdp").is_some_and(|s| s.contains("inline:AAAA")), "{offer:?}");
        let out = p.ng_result(id, Ok(ng_ok(AGW_OFFER)), now);
        let Some(Command::Request { request: fwd, to }) = out.into_iter().find(|c| matches!(c, Command::Request { .. })) else { panic!("re-INVITE forwarded") };
        assert_eq!(to, SCSCF, "along its Route");
        assert!(String::from_utf8_lossy(&Message::Request(fwd.clone()).to_bytes()).ends_with(AGW_OFFER));
        let _ = p.handle(Event::Response { key: TransactionKey::from_sent_request(&fwd).expect("k"), response: response_to(&fwd, 200, Some("v=0\r\nc=IN IP4 127.0.0.2\r\nm=audio 5000 RTP/AVP 0\r\n")) }, now);
        let (id, answer) = one_ng(&mut p);
        assert_eq!((get(&answer, "command"), get(&answer, "call-id"), get(&answer, "to-tag")), (Some("answer".into()), Some("c1;orig".into()), Some("t".into())));
        let out = sent(&p.ng_result(id, Ok(ng_ok(AGW_ANSWER)), now));
        assert!(out.len() == 1 && out.iter().all(|m| m.starts_with("SIP/2.0 200") && m.ends_with("a=3ge2ae:applied\r\n")), "{out:?}");

        // The AGW refuses the re-offer: 488, the AGW call stays.
        let (key, r) = reinvite("z9hG4bKre4", "c1", "f", "t", Some(&new_offer));
        let _ = p.handle(Event::Request { key, request: r, source: UE }, now);
        let (id, _) = one_ng(&mut p);
        let refusal = Value::dict([("result", Value::str("error")), ("error-reason", Value::str("no"))]).to_vec();
        let out = sent(&p.ng_result(id, Ok(refusal), now));
        assert!(out.iter().any(|m| m.starts_with("SIP/2.0 488") && m.contains("IMS-AGW: IMS-AGW refused: no")), "{out:?}");
        assert!(p.take_ng().is_empty(), "no delete");

        // bob (the answerer's side, from the core) re-INVITEs with a plain offer: a new AGW call
        // secured towards alice; its 2xx replaces c1;orig.
        let plain = "v=0\r\nc=IN IP4 127.0.0.2\r\nm=audio 5000 RTP/AVP 0\r\n";
        let (key, r) = reinvite("z9hG4bKre2", "c1", "t", "f", Some(plain));
        let _ = p.handle(Event::Request { key, request: r, source: SCSCF }, now);
        let (id, offer) = one_ng(&mut p);
        let new_call = get(&offer, "call-id").expect("call-id");
        assert!(new_call.starts_with("c1;re;") && get(&offer, "from-tag").as_deref() == Some("t"), "{offer:?}");
        assert_eq!(get(&offer, "transport-protocol").as_deref(), Some("RTP/SAVP"));
        let out = p.ng_result(id, Ok(ng_ok(AGW_ANSWER)), now);
        let Some(Command::Request { request: fwd, .. }) = out.into_iter().find(|c| matches!(c, Command::Request { .. })) else { panic!("re-INVITE forwarded") };
        let text = String::from_utf8_lossy(&Message::Request(fwd.clone()).to_bytes()).into_owned();
        assert!(text.contains("RTP/SAVP") && text.ends_with("a=3ge2ae:applied\r\n"), "{text}");
        let ok = tagged_response(&fwd, 200, "f", Some(&new_offer));
        let _ = p.handle(Event::Response { key: TransactionKey::from_sent_request(&fwd).expect("k"), response: ok.clone() }, now);
        let (id, answer) = one_ng(&mut p);
        assert_eq!((get(&answer, "command").as_deref(), get(&answer, "call-id")), (Some("answer"), Some(new_call.clone())));
        let out = sent(&p.ng_result(id, Ok(ng_ok(plain)), now));
        assert!(out.len() == 1 && out.iter().all(|m| m.starts_with("SIP/2.0 200") && !m.contains("3ge2ae") && m.contains("RTP/AVP")), "{out:?}");
        let (_, delete) = one_ng(&mut p);
        assert_eq!((get(&delete, "command").as_deref(), get(&delete, "call-id").as_deref()), (Some("delete"), Some("c1;orig")), "the old AGW call goes");
        // A 2xx retransmission gets the same answer, with no AGW work (no second `answer`,
        // which would replace the new AGW call by itself and delete it).
        let again = sent(&p.handle(Event::Response { key: TransactionKey::from_sent_request(&fwd).expect("k"), response: ok }, now));
        assert_eq!(again, out);
        assert!(p.take_ng().is_empty());

        // Now alice is the answerer's side: a plain re-offer cannot be secured (488, no ng).
        let (key, r) = reinvite("z9hG4bKre6", "c1", "f", "t", Some(plain));
        let out = sent(&p.handle(Event::Request { key, request: r, source: UE }, now));
        assert!(out.iter().any(|m| m.starts_with("SIP/2.0 488") && m.contains("cannot secure")), "{out:?}");
        assert!(p.take_ng().is_empty());

        // Her SDES re-offer makes a new AGW call; the far end's 491 deletes it, the dialog's stays.
        let failures = p.stats.agw_failures;
        let (key, r) = reinvite("z9hG4bKre5", "c1", "f", "t", Some(&new_offer));
        let _ = p.handle(Event::Request { key, request: r, source: UE }, now);
        let (id, offer) = one_ng(&mut p);
        let newer = get(&offer, "call-id").expect("call-id");
        assert!(newer.starts_with("c1;re;") && newer != new_call && get(&offer, "transport-protocol").as_deref() == Some("RTP/AVP"), "{offer:?}");
        let out = p.ng_result(id, Ok(ng_ok(AGW_OFFER)), now);
        let Some(Command::Request { request: fwd, .. }) = out.into_iter().find(|c| matches!(c, Command::Request { .. })) else { panic!("re-INVITE forwarded") };
        let out = sent(&p.handle(Event::Response { key: TransactionKey::from_sent_request(&fwd).expect("k"), response: response_to(&fwd, 491, None) }, now));
        assert!(out.iter().any(|m| m.starts_with("SIP/2.0 491")), "{out:?}");
        let (_, delete) = one_ng(&mut p);
        assert_eq!(get(&delete, "call-id"), Some(newer), "the failed re-INVITE's AGW call goes");
        assert_eq!(p.stats.agw_failures, failures);

        // BYE deletes the dialog's AGW call (only).
        let bye = "BYE sip:peer@127.0.0.1:5090 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5071;branch=z9hG4bKbye\r\nMax-Forwards: 70\r\n\
Route: <sip:127.0.0.1:5060;lr>, <sip:127.0.0.1:5061;lr>\r\nFrom: <sip:x@a.example>;tag=f\r\nTo: <sip:y@b.example>;tag=t\r\nCall-ID: c1\r\nCSeq: 3 BYE\r\nContent-Length: 0\r\n\r\n";
        let (key, r) = request_event(bye);
        let _ = p.handle(Event::Request { key, request: r, source: UE }, now);
        let (_, delete) = one_ng(&mut p);
        assert_eq!((get(&delete, "command").as_deref(), get(&delete, "call-id")), (Some("delete"), Some(new_call)));
    }

    /// The request `out` forwards (the first).
    fn forwarded(out: Vec<Command>) -> Request {
        out.into_iter()
            .find_map(|c| match c {
                Command::Request { request, .. } => Some(request),
                _ => None,
            })
            .expect("a forwarded request")
    }

    /// The messages `out` sends statelessly (an ACK for a 2xx).
    fn stateless(out: &[Command]) -> Vec<String> {
        out.iter()
            .filter_map(|c| match c {
                Command::Stateless { message, .. } => Some(String::from_utf8_lossy(&message.to_bytes()).into_owned()),
                _ => None,
            })
            .collect()
    }

    /// The response event of the client transaction of `fwd`.
    fn response_event(fwd: &Request, response: Box<Response>) -> Event {
        Event::Response { key: TransactionKey::from_sent_request(fwd).expect("key"), response }
    }

    /// An ACK (Call-ID `call`, CSeq `cseq`, From tag `from_tag`, To tag `to_tag`) from `source`
    /// with an optional SDP body.
    fn ack_event(call: &str, cseq: u32, from_tag: &str, to_tag: &str, sdp: Option<&str>, source: SocketAddr) -> Event {
        let body = sdp.unwrap_or_default();
        let content_type = if sdp.is_some() { "Content-Type: application/sdp\r\n" } else { "" };
        let text = format!(
            "ACK sip:peer@127.0.0.1:5090 SIP/2.0\r\nVia: SIP/2.0/UDP {source};branch=z9hG4bKack{cseq}{from_tag}\r\nMax-Forwards: 70\r\n\
Route: <sip:127.0.0.1:5060;lr>, <sip:127.0.0.1:5061;lr>\r\nFrom: <sip:x@a.example>;tag={from_tag}\r\nTo: <sip:y@b.example>;tag={to_tag}\r\n\
Call-ID: {call}\r\nCSeq: {cseq} ACK\r\n{content_type}Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let Message::Request(r) = parse(&text) else { panic!("a request") };
        Event::Ack { request: Box::new(r), source }
    }

    fn field(v: &mediasec_agw::bencode::Value<'static>, k: &str) -> Option<String> {
        v.get(k).and_then(mediasec_agw::bencode::Value::as_str).map(str::to_owned)
    }

    const PLAIN: &str = "v=0\r\nc=IN IP4 127.0.0.2\r\nm=audio 5000 RTP/AVP 0\r\n";

    /// Delayed-offer re-INVITE in an e2ae call (RFC 3261 §13.2.1, §13.3.1.4), sans-IO. bob (the
    /// core, From tag `t`) re-INVITEs alice without an offer: forwarded at once, no ng. alice's
    /// 2xx (To tag `f`: the call's original offerer) carries her SDES offer: an ng `offer` on the
    /// same AGW call (`c1;orig`, from-tag `f`), the 2xx held; a retransmission while it waits
    /// is dropped; the core gets the AGW's plain offer; a later retransmission gets the same
    /// SDP and no ng. An UPDATE offer while the exchange is open gets 500 with Retry-After.
    /// bob's ACK carries the plain answer: ng `answer` (to-tag `t`), the ACK held, then sent to
    /// alice with the AGW's SRTP and `applied`; a retransmitted ACK gets the same, without ng.
    /// Then alice's offerless re-INVITE: the core's plain offer in the 2xx makes a new AGW call
    /// with the sides swapped (`c1;re;n`, from-tag `t`, SRTP towards alice with `applied`); her
    /// ACK's answer goes through ng `answer`, the core gets a plain ACK, `c1;orig` is deleted.
    #[test]
    fn delayed_offer_reinvites_of_an_e2ae_call() {
        let now = Instant::now();
        let mut p = alg_with_e2ae_ue(now);
        let _ = establish(&mut p, "c1", now);
        let applied = p.stats.e2ae_applied;
        let (key, r) = reinvite("z9hG4bKd1", "c1", "t", "f", None);
        let out = p.handle(Event::Request { key, request: r, source: SCSCF }, now);
        assert!(p.take_ng().is_empty(), "nothing for the AGW before the offer");
        let fwd = forwarded(out);
        let offer = SDES.replace("WVNf", "BBBB");
        let ok = tagged_response(&fwd, 200, "f", Some(&offer));
        assert!(sent(&p.handle(response_event(&fwd, ok.clone()), now)).is_empty(), "held for the AGW");
        let (id, ng) = one_ng(&mut p);
        assert_eq!([field(&ng, "command"), field(&ng, "call-id"), field(&ng, "from-tag"), field(&ng, "transport-protocol")], [Some("offer".into()), Some("c1;orig".into()), Some("f".into()), Some("RTP/AVP".into())]);
        assert!(field(&ng, "sdp").is_some_and(|s| s.contains("inline:BBBB")), "{ng:?}");
        assert!(p.handle(response_event(&fwd, ok.clone()), now).is_empty() && p.take_ng().is_empty(), "a retransmission while the first waits: dropped");
        let out = sent(&p.ng_result(id, Ok(ng_ok(AGW_OFFER)), now));
        let [to_core] = out.as_slice() else { panic!("the 200 to the core: {out:?}") };
        assert!(to_core.starts_with("SIP/2.0 200") && to_core.ends_with(AGW_OFFER), "{to_core}");
        let again = sent(&p.handle(response_event(&fwd, ok), now));
        assert_eq!(again, out, "a 2xx retransmission gets the same SDP");
        assert!(p.take_ng().is_empty(), "and no AGW work");

        // Another offer while this exchange is open: 500 with Retry-After, nothing for the AGW.
        let update = "UPDATE sip:peer@127.0.0.1:5090 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5071;branch=z9hG4bKu0\r\nMax-Forwards: 70\r\n\
Route: <sip:127.0.0.1:5060;lr>\r\nFrom: <sip:x@a.example>;tag=f\r\nTo: <sip:y@b.example>;tag=t\r\nCall-ID: c1\r\nCSeq: 5 UPDATE\r\n\
Content-Type: application/sdp\r\nContent-Length: 0\r\n\r\n";
        let update = update.replace("Content-Length: 0\r\n\r\n", &format!("Content-Length: {}\r\n\r\n{SDES}", SDES.len()));
        let (key, r) = request_event(&update);
        let out = sent(&p.handle(Event::Request { key, request: r, source: UE }, now));
        assert!(out.iter().any(|m| m.starts_with("SIP/2.0 500") && m.contains("Retry-After: ")), "{out:?}");
        assert!(p.take_ng().is_empty());

        // bob's ACK with the answer.
        assert!(p.handle(ack_event("c1", 2, "t", "f", Some(PLAIN), SCSCF), now).is_empty(), "held for the AGW");
        let (id, ng) = one_ng(&mut p);
        assert_eq!([field(&ng, "command"), field(&ng, "call-id"), field(&ng, "from-tag"), field(&ng, "to-tag")], [Some("answer".into()), Some("c1;orig".into()), Some("f".into()), Some("t".into())]);
        assert!(p.handle(ack_event("c1", 2, "t", "f", Some(PLAIN), SCSCF), now).is_empty() && p.take_ng().is_empty(), "a retransmitted ACK while the first waits: dropped");
        let out = stateless(&p.ng_result(id, Ok(ng_ok(AGW_ANSWER)), now));
        let [to_ue] = out.as_slice() else { panic!("the ACK to alice: {out:?}") };
        assert!(to_ue.starts_with("ACK ") && to_ue.contains("inline:WVNf") && to_ue.ends_with("a=3ge2ae:applied\r\n"), "{to_ue}");
        let body = |m: &[String]| m.iter().map(|m| m.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())).collect::<Vec<_>>();
        assert_eq!(body(&stateless(&p.handle(ack_event("c1", 2, "t", "f", Some(PLAIN), SCSCF), now))), body(&out), "a retransmitted ACK gets the same SDP");
        assert!(p.take_ng().is_empty());
        assert_eq!(p.stats.e2ae_applied - applied, 2);

        // alice's offerless re-INVITE: the core's offer is from the answerer's side.
        let (key, r) = reinvite("z9hG4bKd2", "c1", "f", "t", None);
        let fwd = forwarded(p.handle(Event::Request { key, request: r, source: UE }, now));
        let _ = p.handle(response_event(&fwd, tagged_response(&fwd, 200, "t", Some(PLAIN))), now);
        let (id, ng) = one_ng(&mut p);
        let new_call = field(&ng, "call-id").expect("call-id");
        assert!(new_call.starts_with("c1;re;") && field(&ng, "from-tag").as_deref() == Some("t") && field(&ng, "transport-protocol").as_deref() == Some("RTP/SAVP"), "{ng:?}");
        let out = sent(&p.ng_result(id, Ok(ng_ok(AGW_ANSWER)), now));
        assert!(out.len() == 1 && out.iter().all(|m| m.starts_with("SIP/2.0 200") && m.ends_with("a=3ge2ae:applied\r\n")), "{out:?}");
        let answer = SDES.replace("WVNf", "CCCC");
        assert!(p.handle(ack_event("c1", 2, "f", "t", Some(&answer), UE), now).is_empty());
        let (id, ng) = one_ng(&mut p);
        assert_eq!([field(&ng, "command"), field(&ng, "call-id"), field(&ng, "from-tag"), field(&ng, "to-tag")], [Some("answer".into()), Some(new_call), Some("t".into()), Some("f".into())]);
        assert!(field(&ng, "sdp").is_some_and(|s| s.contains("inline:CCCC")), "{ng:?}");
        let out = stateless(&p.ng_result(id, Ok(ng_ok(AGW_OFFER)), now));
        assert!(out.len() == 1 && out.iter().all(|m| m.ends_with(AGW_OFFER)), "plain ACK to the core: {out:?}");
        let (_, delete) = one_ng(&mut p);
        assert_eq!([field(&delete, "command"), field(&delete, "call-id")], [Some("delete".into()), Some("c1;orig".into())], "the old AGW call goes");
        assert_eq!(p.stats.agw_failures, 0);
    }

    /// Delayed offer failures, sans-IO. An ACK without the answer (RFC 3261 §13.2.2.4) is
    /// passed on, counted, and the exchange's new AGW call deleted while the dialog's stays;
    /// an offer in a 2xx the AGW refuses goes on unsecured (a proxy cannot refuse a 2xx), is
    /// counted, creates nothing, and its ACK passes without any ng.
    #[test]
    fn delayed_offer_failures_keep_the_dialogs_agw_call() {
        let now = Instant::now();
        let mut p = alg_with_e2ae_ue(now);
        let _ = establish(&mut p, "c1", now);
        // alice's offerless re-INVITE; the core's plain offer makes a new AGW call.
        let (key, r) = reinvite("z9hG4bKf1", "c1", "f", "t", None);
        let fwd = forwarded(p.handle(Event::Request { key, request: r, source: UE }, now));
        let _ = p.handle(response_event(&fwd, tagged_response(&fwd, 200, "t", Some(PLAIN))), now);
        let (id, ng) = one_ng(&mut p);
        let new_call = field(&ng, "call-id").expect("call-id");
        let _ = p.ng_result(id, Ok(ng_ok(AGW_ANSWER)), now);
        let out = stateless(&p.handle(ack_event("c1", 2, "f", "t", None, UE), now));
        assert!(out.len() == 1 && out.iter().all(|m| m.starts_with("ACK ")), "passed on: {out:?}");
        let (_, delete) = one_ng(&mut p);
        assert_eq!([field(&delete, "command"), field(&delete, "call-id")], [Some("delete".into()), Some(new_call)]);
        assert_eq!(p.stats.agw_failures, 1);

        // The AGW refuses the offer in bob's 2xx to alice's next offerless re-INVITE.
        let (key, r) = reinvite_seq("z9hG4bKf2", "c1", "f", "t", None, 3);
        let fwd = forwarded(p.handle(Event::Request { key, request: r, source: UE }, now));
        let foreign = format!("{PLAIN}a=3ge2ae:applied\r\n");
        let _ = p.handle(response_event(&fwd, tagged_response(&fwd, 200, "t", Some(&foreign))), now);
        let (id, _) = one_ng(&mut p);
        let refusal = mediasec_agw::bencode::Value::dict([("result", mediasec_agw::bencode::Value::str("error")), ("error-reason", mediasec_agw::bencode::Value::str("no"))]).to_vec();
        let out = sent(&p.ng_result(id, Ok(refusal), now));
        assert!(out.len() == 1 && out.iter().all(|m| m.starts_with("SIP/2.0 200") && m.ends_with(PLAIN)), "unsecured, no indication: {out:?}");
        assert!(p.take_ng().is_empty(), "nothing to delete: the AGW took nothing");
        let out = stateless(&p.handle(ack_event("c1", 3, "f", "t", Some(SDES), UE), now));
        assert!(out.len() == 1 && p.take_ng().is_empty(), "the ACK passes: {out:?}");
        assert_eq!(p.stats.agw_failures, 2);

        // The dialog's AGW call is still c1;orig: BYE deletes it.
        let bye = "BYE sip:peer@127.0.0.1:5090 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5071;branch=z9hG4bKbye2\r\nMax-Forwards: 70\r\n\
Route: <sip:127.0.0.1:5060;lr>\r\nFrom: <sip:x@a.example>;tag=f\r\nTo: <sip:y@b.example>;tag=t\r\nCall-ID: c1\r\nCSeq: 3 BYE\r\nContent-Length: 0\r\n\r\n";
        let (key, r) = request_event(bye);
        let _ = p.handle(Event::Request { key, request: r, source: UE }, now);
        let (_, delete) = one_ng(&mut p);
        assert_eq!(field(&delete, "call-id").as_deref(), Some("c1;orig"));
    }

    /// Offerless initial INVITEs, sans-IO. From alice (registered e2ae; no offer, so no
    /// `requested`: her registration decides): routed at once; the core's plain offer in the
    /// 2xx goes to a new AGW call `c2;d;n` secured towards her (`RTP/SAVP`, from-tag `t`) and
    /// reaches her with `applied`; her ACK's SDES answer goes through ng `answer` and the core
    /// gets a plain ACK; the call is then an e2ae dialog (the core's re-INVITE re-offers on the
    /// same AGW call). To alice from the core: her offer in the 2xx with `requested` goes to
    /// the AGW (plain towards the core), the core's ACK answer comes back to her with the AGW's
    /// key and `applied`.
    #[test]
    fn offerless_initial_invites_from_and_to_an_e2ae_ue() {
        let now = Instant::now();
        let mut p = alg_with_e2ae_ue(now);
        let invite = invite_from("alice", "z9hG4bKo1", "c2", "").replace("Content-Type: application/sdp\r\n", "");
        let (key, r) = request_event(&invite);
        let fwd = forwarded(p.handle(Event::Request { key, request: r, source: UE }, now));
        assert!(p.take_ng().is_empty());
        let _ = p.handle(response_event(&fwd, tagged_response(&fwd, 200, "t", Some(PLAIN))), now);
        let (id, ng) = one_ng(&mut p);
        let agw_call = field(&ng, "call-id").expect("call-id");
        assert!(agw_call.starts_with("c2;d;") && field(&ng, "from-tag").as_deref() == Some("t") && field(&ng, "transport-protocol").as_deref() == Some("RTP/SAVP"), "{ng:?}");
        let out = sent(&p.ng_result(id, Ok(ng_ok(AGW_ANSWER)), now));
        assert!(out.len() == 1 && out.iter().all(|m| m.starts_with("SIP/2.0 200") && m.ends_with("a=3ge2ae:applied\r\n")), "{out:?}");
        assert!(p.handle(ack_event("c2", 1, "f", "t", Some(SDES), UE), now).is_empty());
        let (id, ng) = one_ng(&mut p);
        assert_eq!([field(&ng, "command"), field(&ng, "call-id"), field(&ng, "to-tag")], [Some("answer".into()), Some(agw_call.clone()), Some("f".into())]);
        let out = stateless(&p.ng_result(id, Ok(ng_ok(AGW_OFFER)), now));
        assert!(out.len() == 1 && out.iter().all(|m| m.ends_with(AGW_OFFER)), "{out:?}");
        let (key, r) = reinvite("z9hG4bKo2", "c2", "t", "f", Some(PLAIN));
        let _ = p.handle(Event::Request { key, request: r, source: SCSCF }, now);
        let (_, ng) = one_ng(&mut p);
        assert_eq!([field(&ng, "call-id"), field(&ng, "from-tag")], [Some(agw_call), Some("t".into())], "the core re-offers on the dialog's AGW call");

        // From the core to alice's contact.
        let term = "INVITE sip:alice@127.0.0.1:5071 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bKo3\r\nMax-Forwards: 69\r\n\
From: <sip:bob@b.example>;tag=b\r\nTo: <sip:alice@a.example>\r\nCall-ID: c3\r\nCSeq: 1 INVITE\r\nContact: <sip:bob@127.0.0.1:5090>\r\nContent-Length: 0\r\n\r\n";
        let (key, r) = request_event(term);
        let fwd = forwarded(p.handle(Event::Request { key, request: r, source: SCSCF }, now));
        let _ = p.handle(response_event(&fwd, tagged_response(&fwd, 200, "a", Some(&format!("{SDES}a=3ge2ae:requested\r\n")))), now);
        let (id, ng) = one_ng(&mut p);
        assert!(field(&ng, "from-tag").as_deref() == Some("a") && field(&ng, "transport-protocol").as_deref() == Some("RTP/AVP") && field(&ng, "sdp").is_some_and(|s| !s.contains("3ge2ae")), "{ng:?}");
        let out = sent(&p.ng_result(id, Ok(ng_ok(AGW_OFFER)), now));
        assert!(out.len() == 1 && out.iter().all(|m| m.ends_with(AGW_OFFER)), "plain offer to the core: {out:?}");
        assert!(p.handle(ack_event("c3", 1, "b", "a", Some(PLAIN), SCSCF), now).is_empty());
        let (id, ng) = one_ng(&mut p);
        assert_eq!(field(&ng, "to-tag").as_deref(), Some("b"));
        let out = stateless(&p.ng_result(id, Ok(ng_ok(AGW_ANSWER)), now));
        assert!(out.len() == 1 && out.iter().all(|m| m.ends_with("a=3ge2ae:applied\r\n")), "{out:?}");
        // An SDES offer in the 2xx to an offerless INVITE from a UE that is not e2ae passes.
        let invite = invite_from("erin", "z9hG4bKo4", "c4", "").replace("Content-Type: application/sdp\r\n", "");
        let (key, r) = request_event(&invite);
        let fwd = forwarded(p.handle(Event::Request { key, request: r, source: UE }, now));
        let out = sent(&p.handle(response_event(&fwd, tagged_response(&fwd, 200, "t", Some(SDES))), now));
        assert!(out.len() == 1 && p.take_ng().is_empty(), "{out:?}");
    }

    /// UPDATE with an offer in an e2ae call (RFC 3311), sans-IO: alice's (the original
    /// offerer's) UPDATE goes to the same AGW call, forwarded with the AGW's plain SDP, its 2xx
    /// answer back through ng `answer` with `applied`; bob's UPDATE (the answerer's side) makes
    /// a new AGW call which a 488 deletes again (the dialog's stays), and a second one whose 2xx
    /// replaces the dialog's. An UPDATE without an offer is routed without the AGW; one whose
    /// transaction times out ends its exchange (the next offer is taken).
    #[test]
    fn update_offers_in_an_e2ae_call() {
        let now = Instant::now();
        let mut p = alg_with_e2ae_ue(now);
        let _ = establish(&mut p, "c1", now);
        let update = |branch: &str, from: &str, to: &str, sdp: Option<&str>| {
            let body = sdp.unwrap_or_default();
            let ct = if sdp.is_some() { "Content-Type: application/sdp\r\n" } else { "" };
            request_event(&format!(
                "UPDATE sip:peer@127.0.0.1:5090 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5071;branch={branch}\r\nMax-Forwards: 70\r\n\
Route: <sip:127.0.0.1:5060;lr>, <sip:127.0.0.1:5061;lr>\r\nFrom: <sip:x@a.example>;tag={from}\r\nTo: <sip:y@b.example>;tag={to}\r\n\
Call-ID: c1\r\nCSeq: 7 UPDATE\r\nContact: <sip:x@127.0.0.1:5071>\r\n{ct}Content-Length: {}\r\n\r\n{body}",
                body.len()
            ))
        };
        let (key, r) = update("z9hG4bKu1", "f", "t", Some(&SDES.replace("WVNf", "DDDD")));
        let out = p.handle(Event::Request { key, request: r, source: UE }, now);
        assert!(out.is_empty(), "held, no 100 to a non-INVITE: {out:?}");
        let (id, ng) = one_ng(&mut p);
        assert_eq!([field(&ng, "command"), field(&ng, "call-id"), field(&ng, "from-tag")], [Some("offer".into()), Some("c1;orig".into()), Some("f".into())]);
        let fwd = forwarded(p.ng_result(id, Ok(ng_ok(AGW_OFFER)), now));
        assert!(fwd.method == Method::Update && String::from_utf8_lossy(&Message::Request(fwd.clone()).to_bytes()).ends_with(AGW_OFFER));
        let _ = p.handle(response_event(&fwd, tagged_response(&fwd, 200, "t", Some(PLAIN))), now);
        let (id, ng) = one_ng(&mut p);
        assert_eq!([field(&ng, "command"), field(&ng, "call-id")], [Some("answer".into()), Some("c1;orig".into())]);
        let out = sent(&p.ng_result(id, Ok(ng_ok(AGW_ANSWER)), now));
        assert!(out.len() == 1 && out.iter().all(|m| m.starts_with("SIP/2.0 200") && m.ends_with("a=3ge2ae:applied\r\n")), "{out:?}");

        // bob's UPDATE: a new AGW call; the 488 deletes it.
        let (key, r) = update("z9hG4bKu2", "t", "f", Some(PLAIN));
        let _ = p.handle(Event::Request { key, request: r, source: SCSCF }, now);
        let (id, ng) = one_ng(&mut p);
        let first = field(&ng, "call-id").expect("call-id");
        assert!(first.starts_with("c1;re;") && field(&ng, "transport-protocol").as_deref() == Some("RTP/SAVP"), "{ng:?}");
        let fwd = forwarded(p.ng_result(id, Ok(ng_ok(AGW_ANSWER)), now));
        let out = sent(&p.handle(response_event(&fwd, tagged_response(&fwd, 488, "f", None)), now));
        assert!(out.iter().any(|m| m.starts_with("SIP/2.0 488")), "{out:?}");
        let (_, delete) = one_ng(&mut p);
        assert_eq!(field(&delete, "call-id"), Some(first));
        // Again, answered: the new call replaces c1;orig.
        let (key, r) = update("z9hG4bKu3", "t", "f", Some(PLAIN));
        let _ = p.handle(Event::Request { key, request: r, source: SCSCF }, now);
        let (id, ng) = one_ng(&mut p);
        let second = field(&ng, "call-id").expect("call-id");
        let fwd = forwarded(p.ng_result(id, Ok(ng_ok(AGW_ANSWER)), now));
        let _ = p.handle(response_event(&fwd, tagged_response(&fwd, 200, "f", Some(SDES))), now);
        let (id, ng) = one_ng(&mut p);
        assert_eq!([field(&ng, "command"), field(&ng, "call-id")], [Some("answer".into()), Some(second)]);
        let out = sent(&p.ng_result(id, Ok(ng_ok(PLAIN)), now));
        assert!(out.len() == 1 && out.iter().all(|m| m.ends_with(PLAIN)), "{out:?}");
        let (_, delete) = one_ng(&mut p);
        assert_eq!(field(&delete, "call-id").as_deref(), Some("c1;orig"));
        // Without an offer: routed, nothing for the AGW.
        let (key, r) = update("z9hG4bKu4", "f", "t", None);
        let out = sent(&p.handle(Event::Request { key, request: r, source: UE }, now));
        assert!(out.iter().any(|m| m.starts_with("UPDATE")) && p.take_ng().is_empty(), "{out:?}");
        // An UPDATE offer that times out ends its exchange: the next offer goes to the AGW.
        let (key, r) = update("z9hG4bKu5", "f", "t", Some(SDES));
        let _ = p.handle(Event::Request { key, request: r, source: UE }, now);
        let (id, _) = one_ng(&mut p);
        let fwd = forwarded(p.ng_result(id, Ok(ng_ok(AGW_OFFER)), now));
        let _ = p.handle(Event::Timeout { key: TransactionKey::from_sent_request(&fwd).expect("key") }, now);
        let (key, r) = update("z9hG4bKu6", "f", "t", Some(SDES));
        let _ = p.handle(Event::Request { key, request: r, source: UE }, now);
        let (_, ng) = one_ng(&mut p);
        assert_eq!(field(&ng, "command").as_deref(), Some("offer"));
        assert_eq!(p.stats.agw_failures, 0);
    }

    /// The IMS-ALG, sans-IO: a UE registers `sdes-srtp;mediasec`; its INVITE with
    /// `a=3ge2ae:requested` is held for an ng `offer` (plain towards the core); the AGW's SDP
    /// goes to the core without any indication; the core's answer goes to the AGW as an ng
    /// `answer` and the AGW's SRTP answer reaches the UE with `a=3ge2ae:applied` (once). A
    /// reply that is not ng (arbitrary bytes) refuses the INVITE with 488, never panics.
    #[test]
    fn alg_holds_offer_and_answer_for_the_agw() {
        let now = Instant::now();
        let mut p = alg_with_e2ae_ue(now);
        let (ue, scscf) = (UE, SCSCF);
        let request = request_event;
        let invite = e2ae_invite;
        let e = establish(&mut p, "c1", now);
        assert_eq!(e.offer.get("command").and_then(|v| v.as_str()), Some("offer"));
        assert_eq!(e.offer.get("call-id").and_then(|v| v.as_str()), Some("c1;orig"));
        assert_eq!(e.to, scscf);
        assert!(e.forwarded.ends_with(&format!("Content-Length: {}\r\n\r\n{AGW_OFFER}", AGW_OFFER.len())), "{}", e.forwarded);
        assert_eq!(e.answer.get("to-tag").and_then(|v| v.as_str()), Some("t"));
        assert!(!e.answer.get("sdp").and_then(|v| v.as_str()).unwrap_or_default().contains("3ge2ae"), "foreign indication not passed on");
        assert!(e.to_ue.ends_with("VubGVz\r\na=3ge2ae:applied\r\n") && e.to_ue.matches("3ge2ae").count() == 1, "{}", e.to_ue);
        assert_eq!((p.stats.e2ae_applied, p.stats.e2ae_stripped), (2, 0));

        // CANCEL while the INVITE waits for the AGW: 200 + 487, the AGW call deleted, and the
        // late ng reply changes nothing.
        let (key, r) = request(&invite("z9hG4bKi3", "c3"));
        let _ = p.handle(Event::Request { key, request: r.clone(), source: ue }, now);
        let id = p.take_ng().first().expect("offer").id;
        let cancel = cancel_for(&r).expect("CANCEL");
        let (key, c) = (TransactionKey::from_request(&cancel).expect("key"), Box::new(cancel));
        let out = sent(&p.handle(Event::Request { key, request: c, source: ue }, now));
        assert!(out.iter().any(|m| m.starts_with("SIP/2.0 200")) && out.iter().any(|m| m.starts_with("SIP/2.0 487")), "{out:?}");
        assert!(String::from_utf8_lossy(&p.take_ng().first().expect("delete").command).contains("6:delete"));
        assert!(p.ng_result(id, Ok(b"d6:result2:oke".to_vec()), now).is_empty());

        // Garbage from the AGW: the UE gets 488 with the reason, the AGW call is deleted.
        let (key, r) = request(&invite("z9hG4bKi2", "c2"));
        let _ = p.handle(Event::Request { key, request: r, source: ue }, now);
        let id = p.take_ng().first().expect("offer").id;
        let out = sent(&p.ng_result(id, Ok(b"not bencode".to_vec()), now));
        assert!(out.iter().any(|m| m.starts_with("SIP/2.0 488") && m.contains("IMS-AGW")), "{out:?}");
        let ng = p.take_ng();
        assert!(ng.len() == 1 && String::from_utf8_lossy(&ng.first().expect("delete").command).contains("6:delete"), "{ng:?}");
        assert_eq!(p.stats.agw_failures, 1);
    }

    /// With the operator's `core_srtp` (TS 33.328 §4.1.2.1 "or SRTP re-protected with other
    /// keys"): alice's e2ae offer goes to the AGW with `transport-protocol: RTP/SAVP` (towards
    /// the core), and so do her re-offer on the same AGW call and — the core leg being SRTP —
    /// bob's SDES re-offer from the core on a new AGW call (`RTP/SAVP` towards alice), while
    /// bob's plain re-offer is refused with 488. A far end answering plain: the AGW refuses the
    /// answer, which reaches alice as it came (no `applied`) and counts as an AGW failure.
    #[test]
    fn core_srtp_asks_for_srtp_towards_the_core_in_offers_and_re_offers() {
        use mediasec_agw::bencode::Value;
        let now = Instant::now();
        let mut p = alg_with_e2ae_ue(now);
        p.config.core_srtp = true;
        let get = |v: &Value<'static>, k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        let e = establish(&mut p, "c1", now);
        assert_eq!((get(&e.offer, "call-id").as_deref(), get(&e.offer, "transport-protocol").as_deref()), (Some("c1;orig"), Some("RTP/SAVP")), "{:?}", e.offer);

        let new_offer = SDES.replace("WVNf", "AAAA");
        let (key, r) = reinvite("z9hG4bKcs1", "c1", "f", "t", Some(&new_offer));
        let _ = p.handle(Event::Request { key, request: r, source: UE }, now);
        let (id, offer) = one_ng(&mut p);
        assert_eq!((get(&offer, "call-id").as_deref(), get(&offer, "transport-protocol").as_deref()), (Some("c1;orig"), Some("RTP/SAVP")), "{offer:?}");
        let out = p.ng_result(id, Ok(ng_ok(AGW_ANSWER)), now);
        let Some(Command::Request { request: fwd, .. }) = out.into_iter().find(|c| matches!(c, Command::Request { .. })) else { panic!("re-INVITE forwarded") };
        let _ = p.handle(Event::Response { key: TransactionKey::from_sent_request(&fwd).expect("k"), response: response_to(&fwd, 200, Some(SDES)) }, now);
        let (id, _) = one_ng(&mut p);
        let out = sent(&p.ng_result(id, Ok(ng_ok(AGW_ANSWER)), now));
        assert!(out.len() == 1 && out.iter().all(|m| m.starts_with("SIP/2.0 200") && m.ends_with("a=3ge2ae:applied\r\n")), "{out:?}");

        // bob re-offers from the core: plain cannot be what the SRTP core leg carries (488);
        // SDES makes a new AGW call secured towards alice.
        let plain = "v=0\r\nc=IN IP4 127.0.0.2\r\nm=audio 5000 RTP/AVP 0\r\n";
        let (key, r) = reinvite("z9hG4bKcs2", "c1", "t", "f", Some(plain));
        let out = sent(&p.handle(Event::Request { key, request: r, source: SCSCF }, now));
        assert!(out.iter().any(|m| m.starts_with("SIP/2.0 488") && m.contains("cannot secure")), "{out:?}");
        assert!(p.take_ng().is_empty());
        let (key, r) = reinvite("z9hG4bKcs3", "c1", "t", "f", Some(SDES));
        let _ = p.handle(Event::Request { key, request: r, source: SCSCF }, now);
        let (_, offer) = one_ng(&mut p);
        assert!(get(&offer, "call-id").is_some_and(|c| c.starts_with("c1;re;")) && get(&offer, "from-tag").as_deref() == Some("t"), "{offer:?}");
        assert_eq!(get(&offer, "transport-protocol").as_deref(), Some("RTP/SAVP"));

        // A plain answer from the far end: the AGW refuses it; alice gets it without `applied`.
        let failures = p.stats.agw_failures;
        let (key, r) = request_event(&e2ae_invite("z9hG4bKcs4", "c2"));
        let _ = p.handle(Event::Request { key, request: r, source: UE }, now);
        let (id, offer) = one_ng(&mut p);
        assert_eq!(get(&offer, "transport-protocol").as_deref(), Some("RTP/SAVP"));
        let out = p.ng_result(id, Ok(ng_ok(AGW_ANSWER)), now);
        let Some(Command::Request { request: fwd, .. }) = out.into_iter().find(|c| matches!(c, Command::Request { .. })) else { panic!("INVITE forwarded") };
        let _ = p.handle(Event::Response { key: TransactionKey::from_sent_request(&fwd).expect("k"), response: response_to(&fwd, 200, Some(plain)) }, now);
        let (id, _) = one_ng(&mut p);
        let refusal = Value::dict([("result", Value::str("error")), ("error-reason", Value::str("media 0: answered RTP/AVP to an offered RTP/SAVP"))]).to_vec();
        let out = sent(&p.ng_result(id, Ok(refusal), now));
        assert!(out.len() == 1 && out.iter().all(|m| m.starts_with("SIP/2.0 200") && m.ends_with(plain) && !m.contains("3ge2ae")), "{out:?}");
        assert_eq!(p.stats.agw_failures, failures + 1);
    }

    /// The one ng command queued, decoded.
    /// The TS 24.229 preconditions flow through the IMS-ALG, sans-IO (RFC 3262, RFC 3311):
    /// alice's e2ae INVITE goes through the AGW; an UPDATE offer before any answer overlaps the
    /// INVITE's offer (500 + Retry-After); the core's reliable 183 answer goes through ng
    /// `answer` (`applied` towards alice, its `RSeq` kept); its retransmission (same `RSeq`)
    /// gets the cached SDP without AGW work, also while the first copy waits (dropped); the
    /// PRACK is routed; alice's UPDATE offer in the early dialog is a re-offer on `c9;orig`
    /// (another one meanwhile gets 500), its 200 answer goes through ng `answer`; a reliable
    /// 180 repeating the 183's answer gets what the 183 got; the 180 and the SDP-less 200 to
    /// the INVITE pass; none of these makes AGW work.
    #[test]
    fn reliable_183_prack_and_early_update_of_an_e2ae_call() {
        let now = Instant::now();
        let mut p = alg_with_e2ae_ue(now);
        let (key, r) = request_event(&e2ae_invite("z9hG4bKc9", "c9"));
        let _ = p.handle(Event::Request { key, request: r, source: UE }, now);
        let (id, _) = one_ng(&mut p);
        let fwd = forwarded(p.ng_result(id, Ok(ng_ok(AGW_OFFER)), now));
        let in_dialog = |method: &str, branch: &str, cseq: u32, extra: &str, sdp: Option<&str>| {
            let body = sdp.unwrap_or_default();
            let ct = if sdp.is_some() { "Content-Type: application/sdp\r\n" } else { "" };
            request_event(&format!(
                "{method} sip:bob@127.0.0.1:5090 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5071;branch={branch}\r\nMax-Forwards: 70\r\n\
Route: <sip:127.0.0.1:5060;lr>, <sip:127.0.0.1:5061;lr>\r\nFrom: <sip:alice@a.example>;tag=f\r\nTo: <sip:bob@b.example>;tag=t\r\n\
Call-ID: c9\r\nCSeq: {cseq} {method}\r\n{extra}Contact: <sip:alice@127.0.0.1:5071>\r\n{ct}Content-Length: {}\r\n\r\n{body}",
                body.len()
            ))
        };
        let pending_500 = |out: &[String]| out.len() == 1 && out.iter().all(|m| m.starts_with("SIP/2.0 500") && m.contains("Retry-After: "));
        // An offer while the INVITE's is unanswered (RFC 3311 §5.2).
        let (key, r) = in_dialog("UPDATE", "z9hG4bKu0", 2, "", Some(SDES));
        let out = sent(&p.handle(Event::Request { key, request: r, source: UE }, now));
        assert!(pending_500(&out) && p.take_ng().is_empty(), "{out:?}");
        // The reliable 183 with the core's answer: held for ng `answer`.
        let reliable = |code: u16, rseq: u32, sdp: Option<&str>| {
            let mut r = tagged_response(&fwd, code, "t", sdp);
            r.headers.push(header(HeaderName::Require, "100rel").expect("Require"));
            r.headers.push(header(HeaderName::RSeq, rseq.to_string()).expect("RSeq"));
            r
        };
        let out = p.handle(response_event(&fwd, reliable(183, 5, Some(PLAIN))), now);
        assert!(sent(&out).is_empty(), "held for the AGW: {out:?}");
        let (id, ng) = one_ng(&mut p);
        assert_eq!([field(&ng, "command"), field(&ng, "call-id"), field(&ng, "to-tag")], [Some("answer".into()), Some("c9;orig".into()), Some("t".into())]);
        let out = sent(&p.handle(response_event(&fwd, reliable(183, 5, Some(PLAIN))), now));
        assert!(out.is_empty() && p.take_ng().is_empty(), "a copy while the first waits is dropped: {out:?}");
        let out = sent(&p.ng_result(id, Ok(ng_ok(AGW_ANSWER)), now));
        let [first] = out.as_slice() else { panic!("the 183 to alice: {out:?}") };
        assert!(first.starts_with("SIP/2.0 183") && first.contains("RSeq: 5\r\n") && first.ends_with("a=3ge2ae:applied\r\n"), "{first}");
        let out = sent(&p.handle(response_event(&fwd, reliable(183, 5, Some(PLAIN))), now));
        assert_eq!(out, vec![first.clone()], "the retransmission gets the same SDP");
        assert!(p.take_ng().is_empty(), "no AGW work for a retransmission");
        // The PRACK is routed along its Route.
        let (key, r) = in_dialog("PRACK", "z9hG4bKp1", 3, "RAck: 5 1 INVITE\r\n", None);
        let prack = forwarded(p.handle(Event::Request { key, request: r, source: UE }, now));
        assert!(prack.method == Method::Prack && p.take_ng().is_empty());
        // alice's UPDATE offer in the early dialog: a re-offer on the dialog's AGW call.
        let (key, r) = in_dialog("UPDATE", "z9hG4bKu1", 4, "", Some(&SDES.replace("WVNf", "EEEE")));
        let out = p.handle(Event::Request { key, request: r, source: UE }, now);
        assert!(out.is_empty(), "held: {out:?}");
        let (id, ng) = one_ng(&mut p);
        assert_eq!([field(&ng, "command"), field(&ng, "call-id"), field(&ng, "from-tag")], [Some("offer".into()), Some("c9;orig".into()), Some("f".into())]);
        let update = forwarded(p.ng_result(id, Ok(ng_ok(AGW_OFFER)), now));
        assert!(update.method == Method::Update && String::from_utf8_lossy(&Message::Request(update.clone()).to_bytes()).ends_with(AGW_OFFER));
        let (key, r) = in_dialog("UPDATE", "z9hG4bKu2", 5, "", Some(SDES));
        let out = sent(&p.handle(Event::Request { key, request: r, source: UE }, now));
        assert!(pending_500(&out) && p.take_ng().is_empty(), "one offer at a time in the early dialog: {out:?}");
        let _ = p.handle(response_event(&update, tagged_response(&update, 200, "t", Some(PLAIN))), now);
        let (id, ng) = one_ng(&mut p);
        assert_eq!([field(&ng, "command"), field(&ng, "call-id")], [Some("answer".into()), Some("c9;orig".into())]);
        let out = sent(&p.ng_result(id, Ok(ng_ok(AGW_ANSWER)), now));
        assert!(out.len() == 1 && out.iter().all(|m| m.starts_with("SIP/2.0 200") && m.ends_with("a=3ge2ae:applied\r\n")), "{out:?}");
        // A reliable 180 repeating the answer (RFC 6337 §3.1): what the 183's answer got, no
        // AGW work (which would take the answer back to before the UPDATE).
        let out = sent(&p.handle(response_event(&fwd, reliable(180, 6, Some(PLAIN))), now));
        let body = |m: &str| m.split_once("\r\n\r\n").map(|(_, b)| b.to_owned());
        assert!(out.len() == 1 && out.iter().all(|m| m.starts_with("SIP/2.0 180") && body(m) == body(first)), "{out:?}");
        assert!(p.take_ng().is_empty(), "a repeated answer makes no AGW work");
        // 180 and the 200 without SDP: passed, no AGW work.
        let out = sent(&p.handle(response_event(&fwd, tagged_response(&fwd, 180, "t", None)), now));
        assert!(out.len() == 1 && out.iter().all(|m| m.starts_with("SIP/2.0 180")), "{out:?}");
        let out = sent(&p.handle(response_event(&fwd, tagged_response(&fwd, 200, "t", None)), now));
        assert!(out.len() == 1 && out.iter().all(|m| m.starts_with("SIP/2.0 200") && m.contains("Content-Length: 0\r\n") && m.ends_with("\r\n\r\n")), "{out:?}");
        assert!(p.take_ng().is_empty());
        assert_eq!(p.stats.agw_failures, 0);
        assert_eq!(p.stats.e2ae_applied, 4, "offer, 183 answer, UPDATE offer and answer");
    }

    /// Terminating side of the preconditions flow, sans-IO: bob's plain offer from the core to
    /// alice's contact goes to the AGW (`RTP/SAVP` towards alice); alice's reliable 183 with
    /// her SDES answer goes through ng `answer` (plain towards the core, `RSeq` kept); the
    /// core's UPDATE offer in the early dialog (bob, the original offerer) re-offers on the
    /// same terminating AGW call and alice's 200 UPDATE answer comes back through ng `answer`.
    #[test]
    fn reliable_183_and_early_update_from_the_core_to_an_e2ae_ue() {
        let now = Instant::now();
        let mut p = alg_with_e2ae_ue(now);
        let term = format!(
            "INVITE sip:alice@127.0.0.1:5071 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bKt7\r\nMax-Forwards: 69\r\n\
From: <sip:bob@b.example>;tag=b\r\nTo: <sip:alice@a.example>\r\nCall-ID: c7\r\nCSeq: 1 INVITE\r\nContact: <sip:bob@127.0.0.1:5090>\r\n\
Supported: 100rel\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{PLAIN}",
            PLAIN.len()
        );
        let (key, r) = request_event(&term);
        let _ = p.handle(Event::Request { key, request: r, source: SCSCF }, now);
        let (id, ng) = one_ng(&mut p);
        let agw_call = field(&ng, "call-id").expect("call-id");
        assert!(agw_call.starts_with("c7;term;") && field(&ng, "transport-protocol").as_deref() == Some("RTP/SAVP"), "{ng:?}");
        let fwd = forwarded(p.ng_result(id, Ok(ng_ok(AGW_ANSWER)), now));
        let mut ringing = tagged_response(&fwd, 183, "a", Some(SDES));
        ringing.headers.push(header(HeaderName::Require, "100rel").expect("Require"));
        ringing.headers.push(header(HeaderName::RSeq, "1").expect("RSeq"));
        assert!(sent(&p.handle(response_event(&fwd, ringing), now)).is_empty(), "held for the AGW");
        let (id, ng) = one_ng(&mut p);
        assert_eq!([field(&ng, "command"), field(&ng, "call-id"), field(&ng, "to-tag")], [Some("answer".into()), Some(agw_call.clone()), Some("a".into())]);
        let out = sent(&p.ng_result(id, Ok(ng_ok(AGW_OFFER)), now));
        assert!(out.len() == 1 && out.iter().all(|m| m.starts_with("SIP/2.0 183") && m.contains("RSeq: 1\r\n") && m.ends_with(AGW_OFFER)), "plain towards the core: {out:?}");
        // bob's UPDATE offer in the early dialog, from the core.
        let (key, r) = request_event(&format!(
            "UPDATE sip:alice@127.0.0.1:5071 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bKu7\r\nMax-Forwards: 69\r\n\
Route: <sip:127.0.0.1:5060;lr>\r\nFrom: <sip:bob@b.example>;tag=b\r\nTo: <sip:alice@a.example>;tag=a\r\nCall-ID: c7\r\nCSeq: 3 UPDATE\r\n\
Contact: <sip:bob@127.0.0.1:5090>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{PLAIN}",
            PLAIN.len()
        ));
        assert!(p.handle(Event::Request { key, request: r, source: SCSCF }, now).is_empty(), "held for the AGW");
        let (id, ng) = one_ng(&mut p);
        assert_eq!([field(&ng, "command"), field(&ng, "call-id"), field(&ng, "from-tag")], [Some("offer".into()), Some(agw_call.clone()), Some("b".into())]);
        let update = forwarded(p.ng_result(id, Ok(ng_ok(AGW_ANSWER)), now));
        assert!(update.method == Method::Update && String::from_utf8_lossy(&Message::Request(update.clone()).to_bytes()).ends_with("a=3ge2ae:applied\r\n"));
        let _ = p.handle(response_event(&update, tagged_response(&update, 200, "a", Some(SDES))), now);
        let (id, ng) = one_ng(&mut p);
        assert_eq!([field(&ng, "command"), field(&ng, "call-id")], [Some("answer".into()), Some(agw_call)]);
        let out = sent(&p.ng_result(id, Ok(ng_ok(AGW_OFFER)), now));
        assert!(out.len() == 1 && out.iter().all(|m| m.starts_with("SIP/2.0 200") && m.ends_with(AGW_OFFER)), "{out:?}");
        assert_eq!((p.stats.e2ae_applied, p.stats.agw_failures), (4, 0));
    }

    /// An offer in a reliable 18x to an offerless INVITE, its answer in the PRACK (RFC 3262
    /// §5), sans-IO: alice's offerless INVITE is routed; the core's reliable 183 with a plain
    /// offer goes to the AGW (`c5;d;<n>`, from-tag `t`, `RTP/SAVP` towards alice) and reaches
    /// alice with the AGW's SDP and `applied`; its retransmission gets the same SDP without
    /// AGW work; alice's PRACK with her SDES answer is held for ng `answer` and routed with the
    /// AGW's plain SDP; her early UPDATE then re-offers on that AGW call (the dialog's); the
    /// 200 to the INVITE, even with an SDP (a repeated offer, RFC 6337 §3.1), is no new offer.
    /// A PRACK without the answer is passed on, counted as an AGW failure, and deletes the
    /// exchange's AGW call.
    #[test]
    fn offer_in_a_reliable_183_answer_in_the_prack() {
        let now = Instant::now();
        let mut p = alg_with_e2ae_ue(now);
        let offerless = |branch: &str, call: &str| invite_from("alice", branch, call, "").replace("Content-Type: application/sdp\r\n", "");
        let (key, r) = request_event(&offerless("z9hG4bKo5", "c5"));
        let fwd = forwarded(p.handle(Event::Request { key, request: r, source: UE }, now));
        assert!(p.take_ng().is_empty());
        let reliable = |fwd: &Request, code: u16, rseq: u32, sdp: Option<&str>| {
            let mut r = tagged_response(fwd, code, "t", sdp);
            r.headers.push(header(HeaderName::Require, "100rel").expect("Require"));
            r.headers.push(header(HeaderName::RSeq, rseq.to_string()).expect("RSeq"));
            r
        };
        let out = p.handle(response_event(&fwd, reliable(&fwd, 183, 9, Some(PLAIN))), now);
        assert!(sent(&out).is_empty(), "held for the AGW: {out:?}");
        let (id, ng) = one_ng(&mut p);
        let agw_call = field(&ng, "call-id").expect("call-id");
        assert!(field(&ng, "command").as_deref() == Some("offer") && agw_call.starts_with("c5;d;") && field(&ng, "from-tag").as_deref() == Some("t") && field(&ng, "transport-protocol").as_deref() == Some("RTP/SAVP"), "{ng:?}");
        let out = sent(&p.ng_result(id, Ok(ng_ok(AGW_ANSWER)), now));
        let [first] = out.as_slice() else { panic!("the 183 to alice: {out:?}") };
        assert!(first.starts_with("SIP/2.0 183") && first.ends_with("a=3ge2ae:applied\r\n"), "{first}");
        let out = sent(&p.handle(response_event(&fwd, reliable(&fwd, 183, 9, Some(PLAIN))), now));
        assert!(out == vec![first.clone()] && p.take_ng().is_empty(), "retransmission replayed: {out:?}");
        let prack = |branch: &str, call: &str, rseq: u32, sdp: Option<&str>| {
            let body = sdp.unwrap_or_default();
            let ct = if sdp.is_some() { "Content-Type: application/sdp\r\n" } else { "" };
            request_event(&format!(
                "PRACK sip:bob@127.0.0.1:5090 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5071;branch={branch}\r\nMax-Forwards: 70\r\n\
Route: <sip:127.0.0.1:5060;lr>, <sip:127.0.0.1:5061;lr>\r\nFrom: <sip:alice@a.example>;tag=f\r\nTo: <sip:bob@b.example>;tag=t\r\n\
Call-ID: {call}\r\nCSeq: 2 PRACK\r\nRAck: {rseq} 1 INVITE\r\n{ct}Content-Length: {}\r\n\r\n{body}",
                body.len()
            ))
        };
        let (key, r) = prack("z9hG4bKp5", "c5", 9, Some(SDES));
        assert!(p.handle(Event::Request { key, request: r, source: UE }, now).is_empty(), "held for the AGW");
        let (id, ng) = one_ng(&mut p);
        assert_eq!([field(&ng, "command"), field(&ng, "call-id"), field(&ng, "to-tag")], [Some("answer".into()), Some(agw_call), Some("f".into())]);
        let fwd_prack = forwarded(p.ng_result(id, Ok(ng_ok(AGW_OFFER)), now));
        assert!(fwd_prack.method == Method::Prack && String::from_utf8_lossy(&Message::Request(fwd_prack).to_bytes()).ends_with(AGW_OFFER));
        // The dialog's AGW call: alice's early UPDATE re-offers on it.
        let (key, r) = request_event(&format!(
            "UPDATE sip:bob@127.0.0.1:5090 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5071;branch=z9hG4bKu5\r\nMax-Forwards: 70\r\n\
Route: <sip:127.0.0.1:5060;lr>, <sip:127.0.0.1:5061;lr>\r\nFrom: <sip:alice@a.example>;tag=f\r\nTo: <sip:bob@b.example>;tag=t\r\n\
Call-ID: c5\r\nCSeq: 3 UPDATE\r\nContact: <sip:alice@127.0.0.1:5071>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{SDES}",
            SDES.len()
        ));
        let _ = p.handle(Event::Request { key, request: r, source: UE }, now);
        let (_, ng) = one_ng(&mut p);
        assert!(field(&ng, "command").as_deref() == Some("offer") && field(&ng, "call-id").is_some_and(|c| c.starts_with("c5;re;")), "alice, the answerer's side, re-offers on a swapped call: {ng:?}");
        // The 200 with a copy of the offer: no new offer, nothing for the AGW.
        let out = sent(&p.handle(response_event(&fwd, tagged_response(&fwd, 200, "t", Some(PLAIN))), now));
        assert!(out.len() == 1 && out.iter().all(|m| m.starts_with("SIP/2.0 200")) && p.take_ng().is_empty(), "{out:?}");
        assert_eq!(p.stats.agw_failures, 0);

        // A PRACK without the answer: passed on, the exchange's AGW call deleted.
        let (key, r) = request_event(&offerless("z9hG4bKo6", "c6"));
        let fwd = forwarded(p.handle(Event::Request { key, request: r, source: UE }, now));
        let _ = p.handle(response_event(&fwd, reliable(&fwd, 183, 4, Some(PLAIN))), now);
        let (id, ng) = one_ng(&mut p);
        let agw_call = field(&ng, "call-id").expect("call-id");
        let _ = p.ng_result(id, Ok(ng_ok(AGW_ANSWER)), now);
        let (key, r) = prack("z9hG4bKp6", "c6", 4, None);
        let out = forwarded(p.handle(Event::Request { key, request: r, source: UE }, now));
        assert_eq!(out.method, Method::Prack);
        let (_, delete) = one_ng(&mut p);
        assert_eq!([field(&delete, "command"), field(&delete, "call-id")], [Some("delete".into()), Some(agw_call)]);
        assert_eq!(p.stats.agw_failures, 1);
    }

    /// The SDES check of offers in responses (`check_sdes`): alice (e2ae) calls without an
    /// offer and the core's offer in the 2xx repeats an `a=crypto` tag — a proxy cannot refuse
    /// a 2xx (RFC 3261 §16.7), so it passes on without the AGW and minus the foreign
    /// `a=3ge2ae`, counted in `sdes_refused`; its retransmission and the ACK pass untouched
    /// with no AGW work. From the core to alice: her offer in a reliable 183 fails the check
    /// the same way (passed on for the caller to answer in the PRACK, RFC 3262 §5), the PRACK
    /// is routed untouched and the 200's SDP is no new offer (RFC 6337 §3.1).
    #[test]
    fn offers_in_responses_get_the_sdes_check() {
        let now = Instant::now();
        let mut p = alg_with_e2ae_ue(now);
        let bad = format!("{SDES}a=crypto:1 AES_CM_128_HMAC_SHA1_32 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\n");
        let invite = invite_from("alice", "z9hG4bKs1", "s1", "").replace("Content-Type: application/sdp\r\n", "");
        let (key, r) = request_event(&invite);
        let fwd = forwarded(p.handle(Event::Request { key, request: r, source: UE }, now));
        let ok = || tagged_response(&fwd, 200, "t", Some(&format!("{bad}a=3ge2ae:applied\r\n")));
        let out = sent(&p.handle(response_event(&fwd, ok()), now));
        assert!(out.len() == 1 && out.iter().all(|m| m.starts_with("SIP/2.0 200") && m.ends_with(&bad)), "passed on minus a=3ge2ae: {out:?}");
        assert!(p.take_ng().is_empty(), "nothing for the AGW");
        assert_eq!((p.stats.sdes_refused, p.stats.e2ae_stripped), (1, 1));
        let again = sent(&p.handle(response_event(&fwd, ok()), now));
        assert!(again == out && p.take_ng().is_empty() && p.stats.sdes_refused == 1, "retransmission: {again:?}");
        let acked = stateless(&p.handle(ack_event("s1", 1, "f", "t", Some(PLAIN), UE), now));
        assert!(acked.len() == 1 && acked.iter().all(|m| m.ends_with(PLAIN)) && p.take_ng().is_empty(), "{acked:?}");

        // From the core to alice: her offer in a reliable 183.
        let term = "INVITE sip:alice@127.0.0.1:5071 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bKs2\r\nMax-Forwards: 69\r\n\
From: <sip:bob@b.example>;tag=b\r\nTo: <sip:alice@a.example>\r\nCall-ID: s2\r\nCSeq: 1 INVITE\r\nContact: <sip:bob@127.0.0.1:5090>\r\nContent-Length: 0\r\n\r\n";
        let (key, r) = request_event(term);
        let fwd = forwarded(p.handle(Event::Request { key, request: r, source: SCSCF }, now));
        let mut r183 = tagged_response(&fwd, 183, "a", Some(&format!("{bad}a=3ge2ae:requested\r\n")));
        r183.headers.push(header(HeaderName::Require, "100rel").expect("Require"));
        r183.headers.push(header(HeaderName::RSeq, "7").expect("RSeq"));
        let out = sent(&p.handle(response_event(&fwd, r183), now));
        assert!(out.len() == 1 && out.iter().all(|m| m.starts_with("SIP/2.0 183") && m.ends_with(&bad)) && p.take_ng().is_empty(), "{out:?}");
        assert_eq!(p.stats.sdes_refused, 2);
        let (key, r) = request_event(&format!(
            "PRACK sip:alice@127.0.0.1:5071 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bKs3\r\nMax-Forwards: 69\r\n\
Route: <sip:127.0.0.1:5060;lr>\r\nFrom: <sip:bob@b.example>;tag=b\r\nTo: <sip:alice@a.example>;tag=a\r\n\
Call-ID: s2\r\nCSeq: 2 PRACK\r\nRAck: 7 1 INVITE\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{PLAIN}",
            PLAIN.len()
        ));
        let prack = forwarded(p.handle(Event::Request { key, request: r, source: SCSCF }, now));
        assert!(prack.method == Method::Prack && String::from_utf8_lossy(&Message::Request(prack).to_bytes()).ends_with(PLAIN) && p.take_ng().is_empty());
        let out = sent(&p.handle(response_event(&fwd, tagged_response(&fwd, 200, "a", Some(&bad))), now));
        assert!(out.len() == 1 && p.take_ng().is_empty(), "the 200's SDP is no new offer: {out:?}");
        assert_eq!((p.stats.sdes_refused, p.stats.agw_failures), (2, 0));
    }

    fn one_ng(p: &mut Proxy) -> (u64, mediasec_agw::bencode::Value<'static>) {
        let ng = p.take_ng();
        let [cmd] = ng.as_slice() else { panic!("one ng command: {ng:?}") };
        (cmd.id, mediasec_agw::bencode::Value::decode(&cmd.command).expect("bencode").into_owned())
    }

    /// The operator's e2ae provisioning (an extension beyond TS 33.328): carol (provisioned by
    /// AOR, its host in another case) and erin (not provisioned; only b.example is, as a domain)
    /// register without `Security-Client` and get no `Security-Server`; carol's registration
    /// counts as e2ae all the same. carol's plain SDES offer
    /// (no `requested`, a foreign `applied` in it) goes to the AGW as an ng `offer` without any
    /// indication, plain towards the core, and the AGW's answer reaches her with
    /// `a=3ge2ae:applied`; a plain INVITE from the core to her contact is secured towards her.
    /// The same SDES offer from erin (registered, not provisioned) and from alice (indicated,
    /// no `requested`) is routed end to end, minus the foreign indication — TS 33.328
    /// behaviour unchanged; carol's plain offer is routed too, and after she deregisters her
    /// SDES offer is no longer touched.
    #[test]
    fn provisioned_legacy_ues_get_e2ae_without_indicating_it() {
        use mediasec_agw::bencode::Value;
        let now = Instant::now();
        let mut p = alg_pcscf(&["sip:carol@A.Example", "sip:*@b.example"]);
        for (user, port) in [("carol", 5072), ("erin", 5073)] {
            let up = register(&mut p, user, port, false, 600, now);
            assert!(up.starts_with("SIP/2.0 200") && !up.contains("Security-Server"), "{up}");
        }
        assert!(register(&mut p, "alice", 5071, true, 600, now).contains("Security-Server: sdes-srtp;mediasec"));
        let foreign = format!("{SDES}a=3ge2ae:applied\r\n");

        // carol: held for the AGW, no indication passed on, plain towards the core.
        let (key, r) = request_event(&invite_from("carol", "z9hG4bKc1", "c1", &foreign));
        let out = p.handle(Event::Request { key, request: r, source: UE }, now);
        assert!(!out.iter().any(|c| matches!(c, Command::Request { .. })), "held for the AGW: {out:?}");
        let (id, offer) = one_ng(&mut p);
        assert_eq!(offer.get("call-id").and_then(Value::as_str), Some("c1;orig"));
        assert_eq!(offer.get("transport-protocol").and_then(Value::as_str), Some("RTP/AVP"));
        let sdp = offer.get("sdp").and_then(Value::as_str).expect("sdp");
        assert!(sdp.contains("a=crypto:1 AES_CM_128_HMAC_SHA1_80") && !sdp.contains("3ge2ae"), "{sdp}");
        let agw_offer = "v=0\r\nc=IN IP4 127.0.0.9\r\nm=audio 30000 RTP/AVP 0\r\n";
        let reply = Value::dict([("result", Value::str("ok")), ("sdp", Value::str(agw_offer))]).to_vec();
        let Some(Command::Request { request: fwd, .. }) = p.ng_result(id, Ok(reply), now).into_iter().find(|c| matches!(c, Command::Request { .. })) else {
            panic!("INVITE forwarded")
        };
        let mut ok = ResponseBuilder::to_request(&fwd, StatusCode::new(200).expect("200"), "OK").expect("200").build();
        ok.headers.remove_first(&HeaderName::To);
        ok.headers.push(header(HeaderName::To, "<sip:bob@b.example>;tag=t").expect("To"));
        let mut m = Message::Response(ok);
        mediasec_sip::body::set_sdp(&mut m, &Sdp::parse("v=0\r\nc=IN IP4 127.0.0.2\r\nm=audio 5000 RTP/AVP 0\r\n")).expect("sdp");
        let Message::Response(ok) = m else { panic!() };
        let _ = p.handle(Event::Response { key: TransactionKey::from_sent_request(&fwd).expect("k"), response: Box::new(ok) }, now);
        let (id, answer) = one_ng(&mut p);
        assert_eq!(answer.get("command").and_then(Value::as_str), Some("answer"));
        let reply = Value::dict([("result", Value::str("ok")), ("sdp", Value::str(SDES.replace("4000", "30002")))]).to_vec();
        let out = sent(&p.ng_result(id, Ok(reply), now));
        let [to_ue] = out.as_slice() else { panic!("the 200 to carol: {out:?}") };
        assert!(to_ue.contains("RTP/SAVP") && to_ue.ends_with("VubGVz\r\na=3ge2ae:applied\r\n") && to_ue.matches("3ge2ae").count() == 1, "{to_ue}");
        assert_eq!(p.stats.e2ae_applied, 2);

        // Terminating: a plain offer from the core to carol's contact is secured towards her.
        let plain = "v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 4000 RTP/AVP 0\r\n";
        let term = format!(
            "INVITE sip:carol@127.0.0.1:5072 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bKt1\r\nMax-Forwards: 69\r\n\
From: <sip:bob@b.example>;tag=b\r\nTo: <sip:carol@a.example>\r\nCall-ID: t1\r\nCSeq: 1 INVITE\r\nContact: <sip:bob@127.0.0.1:5090>\r\n\
Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{plain}",
            plain.len()
        );
        let (key, r) = request_event(&term);
        let _ = p.handle(Event::Request { key, request: r, source: SCSCF }, now);
        let (_, offer) = one_ng(&mut p);
        assert_eq!(offer.get("transport-protocol").and_then(Value::as_str), Some("RTP/SAVP"), "{offer:?}");

        // Not provisioned, or indicated without `requested`, or a plain offer: end to end.
        for (user, offer, call) in [("erin", foreign.as_str(), "c2"), ("alice", foreign.as_str(), "c3"), ("carol", plain, "c4")] {
            let stripped = p.stats.e2ae_stripped;
            let (key, r) = request_event(&invite_from(user, &format!("z9hG4bK{call}"), call, offer));
            let out = sent(&p.handle(Event::Request { key, request: r, source: UE }, now));
            assert!(p.take_ng().is_empty(), "{user}: no AGW");
            let fwd = out.iter().find(|m| m.starts_with("INVITE")).unwrap_or_else(|| panic!("{user}: routed: {out:?}"));
            assert!(!fwd.contains("3ge2ae") && fwd.contains(if offer == plain { "RTP/AVP" } else { "inline:WVNf" }), "{fwd}");
            assert_eq!(p.stats.e2ae_stripped - stripped, u64::from(offer != plain));
        }
        assert_eq!(p.stats.e2ae_applied, 2, "only carol's call (her terminating offer still waits for the AGW)");

        // carol deregisters: her SDES offer passes end to end.
        let _ = register(&mut p, "carol", 5072, false, 0, now);
        let (key, r) = request_event(&invite_from("carol", "z9hG4bKc5", "c5", SDES));
        let out = sent(&p.handle(Event::Request { key, request: r, source: UE }, now));
        assert!(p.take_ng().is_empty() && out.iter().any(|m| m.starts_with("INVITE") && m.contains("inline:WVNf")), "{out:?}");
    }

    /// Foreign `a=3ge2ae` in the messages around a reliable 18x (RFC 3262): a PRACK that is
    /// not the answer to an offer the ALG secured was routed as it came, and a response to a
    /// PRACK (or to any method but INVITE and UPDATE) was forwarded as it came, so the far end
    /// could put `a=3ge2ae:applied` in the offer of its PRACK or in the answer of its 2xx to
    /// the UE's PRACK and the UE reported its end-to-end SDES as e2ae applied by this P-CSCF
    /// (TS 33.328 §7.1: only the P-CSCF may indicate it). Both are stripped now.
    #[test]
    fn foreign_indications_in_prack_and_its_responses_are_stripped() {
        let now = Instant::now();
        let mut p = alg_with_e2ae_ue(now);
        let spoofed = format!("{SDES}a=3ge2ae:applied\r\n");
        let prack = |source: SocketAddr, branch: &str| {
            request_event(&format!(
                "PRACK sip:alice@127.0.0.1:5071 SIP/2.0\r\nVia: SIP/2.0/UDP {source};branch={branch}\r\nMax-Forwards: 70\r\n\
Route: <sip:127.0.0.1:5060;lr>\r\nFrom: <sip:bob@b.example>;tag=b\r\nTo: <sip:alice@a.example>;tag=a\r\n\
Call-ID: pr1\r\nCSeq: 2 PRACK\r\nRAck: 1 1 INVITE\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{spoofed}",
                spoofed.len()
            ))
        };
        let (key, r) = prack(SCSCF, "z9hG4bKpr1");
        let fwd = forwarded(p.handle(Event::Request { key, request: r, source: SCSCF }, now));
        let text = String::from_utf8_lossy(&Message::Request(fwd.clone()).to_bytes()).into_owned();
        assert!(text.starts_with("PRACK") && !text.contains("3ge2ae") && text.contains("inline:WVNf"), "{text}");
        let stripped = p.stats.e2ae_stripped;
        let out = sent(&p.handle(response_event(&fwd, tagged_response(&fwd, 200, "a", Some(&spoofed))), now));
        let [up] = out.as_slice() else { panic!("the 200 upstream: {out:?}") };
        assert!(up.starts_with("SIP/2.0 200") && !up.contains("3ge2ae") && up.contains("inline:WVNf"), "{up}");
        assert_eq!(p.stats.e2ae_stripped - stripped, 1);
        assert!(p.take_ng().is_empty(), "nothing for the AGW");
    }

    /// RFC 5658 with a P-CSCF also on TLS (127.0.0.1:5062): an INVITE from its UE over TLS
    /// leaves for the S-CSCF record-routed twice, the TLS entry first and the UDP one on top
    /// (what the UE reaches first in its reversed route set is the TLS one); an INVITE from the
    /// core to a `;transport=tls` contact gets the opposite order; a BYE from the UE naming both
    /// entries has both popped; a request that stays on UDP gets the single plain entry.
    #[test]
    fn a_pcscf_on_tls_record_routes_each_side_on_its_transport() {
        let tls = SocketAddr::from(([127, 0, 0, 1], 5062));
        let [pcscf, _] = proxies();
        let mut p = pcscf.listening_tls(Some(tls));
        let now = Instant::now();
        let from_ue = invite_from("alice", "z9hG4bKt1", "t1", SDES).replacen("SIP/2.0/UDP 127.0.0.1:5071", "SIP/2.0/TLS 127.0.0.1:5071", 1).replacen(
            "Max-Forwards: 70\r\n",
            "Max-Forwards: 70\r\nRoute: <sip:127.0.0.1:5062;transport=tls;lr>\r\n",
            1,
        );
        let (key, r) = request_event(&from_ue);
        let out = p.handle(Event::Request { key, request: r, source: UE }, now);
        let to_core = sent(&out).into_iter().find(|m| m.starts_with("INVITE")).expect("forwarded");
        assert!(!to_core.contains("\r\nRoute:"), "own Route popped: {to_core}");
        assert!(to_core.contains("Record-Route: <sip:127.0.0.1:5060;lr>\r\nRecord-Route: <sip:127.0.0.1:5062;transport=tls;lr>\r\n"), "{to_core}");

        let to_ue = "INVITE sip:alice@127.0.0.1:5071;transport=tls SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bKt2\r\nMax-Forwards: 70\r\n\
Route: <sip:127.0.0.1:5060;lr>\r\nFrom: <sip:bob@b.example>;tag=b\r\nTo: <sip:alice@a.example>\r\nCall-ID: t2\r\nCSeq: 1 INVITE\r\n\
Contact: <sip:bob@127.0.0.1:7070>\r\nContent-Length: 0\r\n\r\n";
        let (key, r) = request_event(to_ue);
        let out = p.handle(Event::Request { key, request: r, source: SCSCF }, now);
        let towards_ue = sent(&out).into_iter().find(|m| m.starts_with("INVITE")).expect("forwarded");
        assert!(towards_ue.contains("Record-Route: <sip:127.0.0.1:5062;transport=tls;lr>\r\nRecord-Route: <sip:127.0.0.1:5060;lr>\r\n"), "{towards_ue}");

        let bye = "BYE sip:bob@127.0.0.1:7070 SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5071;branch=z9hG4bKt3\r\nMax-Forwards: 70\r\n\
Route: <sip:127.0.0.1:5062;transport=tls;lr>, <sip:127.0.0.1:5060;lr>, <sip:127.0.0.1:6060;lr>\r\nFrom: <sip:alice@a.example>;tag=f\r\n\
To: <sip:bob@b.example>;tag=b\r\nCall-ID: t1\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n";
        let (key, r) = request_event(bye);
        let out = p.handle(Event::Request { key, request: r, source: UE }, now);
        let on = out.iter().find_map(|c| match c {
            Command::Request { request, to } => Some((String::from_utf8_lossy(&Message::Request(request.clone()).to_bytes()).into_owned(), *to)),
            _ => None,
        });
        let (text, to) = on.expect("BYE forwarded");
        assert_eq!(to, SocketAddr::from(([127, 0, 0, 1], 6060)));
        assert!(text.contains("Route: <sip:127.0.0.1:6060;lr>\r\n") && !text.contains("5060;lr>") && !text.contains("5062"), "{text}");

        let (key, r) = request_event(&invite_from("carol", "z9hG4bKt4", "t4", SDES));
        let out = p.handle(Event::Request { key, request: r, source: UE }, now);
        let plain = sent(&out).into_iter().find(|m| m.starts_with("INVITE")).expect("forwarded");
        assert!(plain.contains("Record-Route: <sip:127.0.0.1:5060;lr>\r\n") && !plain.contains("transport=tls"), "{plain}");
    }

    /// The seed of the mutation test is a real request: the S-CSCF pops its own Route and
    /// forwards to the next one (with its Via and Record-Route on top); the P-CSCF refuses
    /// the offer, whose only key has the wrong length, with 488.
    #[test]
    fn the_seed_invite_is_routed_or_refused() {
        let Ok(Message::Request(invite)) = mediasec_sip::core::parse_datagram(Bytes::from_static(INVITE.as_bytes()), &mediasec_sip::core::Limits::datagram()) else {
            panic!("the seed parses")
        };
        let key = TransactionKey::from_request(&invite).expect("key");
        let source = SocketAddr::from(([127, 0, 0, 1], 5071));
        let [mut pcscf, mut scscf] = proxies();
        let out = scscf.handle(Event::Request { key: key.clone(), request: Box::new(invite.clone()), source }, Instant::now());
        let forwarded = out.iter().find_map(|c| match c {
            Command::Request { request, to } => Some((String::from_utf8_lossy(&Message::Request(request.clone()).to_bytes()).into_owned(), *to)),
            _ => None,
        });
        let (text, to) = forwarded.expect("forwarded");
        assert_eq!(to, SocketAddr::from(([127, 0, 0, 1], 6060)));
        assert!(text.contains("Route: <sip:127.0.0.1:6060;lr>\r\n") && !text.contains("5060;lr>,"), "{text}");
        assert!(text.starts_with("INVITE sip:bob@b.example SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK"), "{text}");
        assert!(text.contains("Max-Forwards: 69\r\n") && text.contains("Record-Route: <sip:127.0.0.1:5060;lr>\r\n"), "{text}");
        let out = pcscf.handle(Event::Request { key, request: Box::new(invite), source }, Instant::now());
        assert!(out.iter().any(|c| matches!(c, Command::Respond { response, .. } if response.status.code() == 488)), "{out:?}");
        // The same offer in an UPDATE (RFC 3311) gets the same check.
        let text = INVITE.replacen("INVITE sip:", "UPDATE sip:", 1).replace(" INVITE\r\n", " UPDATE\r\n");
        let Ok(Message::Request(update)) = mediasec_sip::core::parse_datagram(Bytes::from(text), &mediasec_sip::core::Limits::datagram()) else {
            panic!("the UPDATE parses")
        };
        assert_eq!(update.method, Method::Update);
        let key = TransactionKey::from_request(&update).expect("key");
        let out = pcscf.handle(Event::Request { key, request: Box::new(update), source }, Instant::now());
        assert!(out.iter().any(|c| matches!(c, Command::Respond { response, .. } if response.status.code() == 488)), "{out:?}");
        assert_eq!(pcscf.stats.sdes_refused, 2);
    }

    /// docs/voicemail.md: an S-CSCF with a voicemail diverts an INVITE for an unregistered
    /// home user to the voicemail server's registered contact (Request-URI replaced, To kept,
    /// History-Info with cause 480); other methods, an S-CSCF without voicemail, and a
    /// voicemail that is not registered either still get 480.
    #[test]
    fn invite_for_an_unregistered_user_is_diverted_to_voicemail() {
        let now = Instant::now();
        let invite = |method: &str| {
            format!(
                "{method} sip:carol@a.example SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5071;branch=z9hG4bKd{method}\r\nMax-Forwards: 70\r\n\
From: <sip:alice@a.example>;tag=1\r\nTo: <sip:carol@a.example>\r\nCall-ID: d{method}\r\nCSeq: 1 {method}\r\n\
Contact: <sip:alice@127.0.0.1:5071>\r\nContent-Length: 0\r\n\r\n"
            )
        };
        let scscf = |voicemail: Option<&str>| {
            let [_, s] = proxies();
            Proxy { config: ProxyConfig { voicemail: voicemail.map(str::to_owned), ..s.config.clone() }, ..s }
        };
        let code = |out: &[Command]| out.iter().find_map(|c| match c {
            Command::Respond { response, .. } if response.status.code() >= 200 => Some(response.status.code()),
            _ => None,
        });
        // Not registered, no voicemail configured: 480 as before.
        let mut plain = scscf(None);
        let (key, r) = request_event(&invite("INVITE"));
        assert_eq!(code(&plain.handle(Event::Request { key, request: r, source: UE }, now)), Some(480));
        // Voicemail configured but not registered: still 480.
        let mut p = scscf(Some("sip:vm@a.example"));
        let (key, r) = request_event(&invite("INVITE"));
        assert_eq!(code(&p.handle(Event::Request { key, request: r, source: UE }, now)), Some(480));
        assert_eq!(p.stats.diverted, 0);
        // The voicemail registers (directly at the S-CSCF, as an AS): the INVITE goes there.
        let reg = "REGISTER sip:a.example SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5090;branch=z9hG4bKvm\r\nMax-Forwards: 70\r\n\
From: <sip:vm@a.example>;tag=v\r\nTo: <sip:vm@a.example>\r\nCall-ID: vm\r\nCSeq: 1 REGISTER\r\nContact: <sip:vm@127.0.0.1:5090>\r\n\
Expires: 600\r\nContent-Length: 0\r\n\r\n";
        let (key, r) = request_event(reg);
        assert_eq!(code(&p.handle(Event::Request { key, request: r, source: UE }, now)), Some(200));
        let (key, r) = request_event(&invite("INVITE"));
        let out = p.handle(Event::Request { key, request: r, source: UE }, now);
        let to = out.iter().find_map(|c| if let Command::Request { to, .. } = c { Some(*to) } else { None });
        assert_eq!(to, Some(SocketAddr::from(([127, 0, 0, 1], 5090))));
        let text = String::from_utf8_lossy(&Message::Request(forwarded(out)).to_bytes()).into_owned();
        assert!(text.starts_with("INVITE sip:vm@127.0.0.1:5090 SIP/2.0\r\n"), "{text}");
        assert!(text.contains("To: <sip:carol@a.example>\r\n"), "To unchanged: {text}");
        let h1 = "History-Info: <sip:carol@a.example?Reason=SIP%3Bcause%3D480%3Btext%3D%22Temporarily%20Unavailable%22>;index=1\r\n";
        let h2 = "History-Info: <sip:vm@a.example;target=sip:carol%40a.example;cause=480>;index=1.1;mp=1\r\n";
        let (i1, i2) = (text.find(h1).expect("index 1"), text.find(h2).expect("index 1.1"));
        assert!(i1 < i2, "{text}");
        assert_eq!(p.stats.diverted, 1);
        // Only INVITEs are diverted.
        let (key, r) = request_event(&invite("MESSAGE"));
        assert_eq!(code(&p.handle(Event::Request { key, request: r, source: UE }, now)), Some(480));
        assert_eq!(p.stats.diverted, 1);
        // RFC 4458 `target` is the whole original URI escaped as a parameter value (RFC 3261
        // §25.1 paramchar): its own scheme, and no raw '@', '=' or ',' to end the parameter.
        for (n, (target, escaped)) in [("sips:carol@a.example", "sips:carol%40a.example"), ("sip:c=1,x@a.example", "sip:c%3D1%2Cx%40a.example")].into_iter().enumerate() {
            let text = invite("INVITE").replace("INVITE sip:carol@a.example", &format!("INVITE {target}")).replace("dINVITE", &format!("e{n}"));
            let (key, r) = request_event(&text);
            let out = p.handle(Event::Request { key, request: r, source: UE }, now);
            let text = String::from_utf8_lossy(&Message::Request(forwarded(out)).to_bytes()).into_owned();
            assert!(text.contains(&format!("History-Info: <sip:vm@a.example;target={escaped};cause=480>;index=1.1;mp=1\r\n")), "{text}");
        }
    }

    /// RFC 3261 §16.7 step 6: a 503 from the only branch (say, the next hop's endpoint
    /// refusing for overload) goes upstream as 500 with its `Retry-After`, so the client does
    /// not take this proxy for unavailable; any other final response goes up as it came.
    #[test]
    fn a_503_from_downstream_goes_upstream_as_500() {
        let Ok(Message::Request(invite)) = mediasec_sip::core::parse_datagram(Bytes::from_static(INVITE.as_bytes()), &mediasec_sip::core::Limits::datagram()) else {
            panic!("the seed parses")
        };
        let [_, mut scscf] = proxies();
        let now = Instant::now();
        let out = scscf.handle(Event::Request { key: TransactionKey::from_request(&invite).expect("key"), request: Box::new(invite), source: SocketAddr::from(([127, 0, 0, 1], 5071)) }, now);
        let Some(Command::Request { request, .. }) = out.into_iter().find(|c| matches!(c, Command::Request { .. })) else { panic!("forwarded") };
        let unavailable = ResponseBuilder::to_request(&request, StatusCode::new(503).expect("503"), "Service Unavailable")
            .and_then(|b| b.header(HeaderName::RetryAfter, "2"))
            .expect("503")
            .build();
        let up = scscf.handle(Event::Response { key: TransactionKey::from_sent_request(&request).expect("client key"), response: Box::new(unavailable) }, now);
        let Some(Command::Respond { response, .. }) = up.iter().find(|c| matches!(c, Command::Respond { .. })) else { panic!("a final response upstream: {up:?}") };
        assert_eq!((response.status.code(), response.reason.as_ref()), (500, b"Server Internal Error".as_slice()));
        assert_eq!(response.headers.value(&HeaderName::RetryAfter).as_deref(), Some(b"2".as_slice()));
    }

    /// An S-CSCF that has received [`INVITE`] at `t0`, and the request it forwarded.
    fn scscf_forwarding_invite(t0: Instant) -> (Proxy, Request) {
        let Ok(Message::Request(invite)) = mediasec_sip::core::parse_datagram(Bytes::from_static(INVITE.as_bytes()), &mediasec_sip::core::Limits::datagram()) else {
            panic!("the seed parses")
        };
        let key = TransactionKey::from_request(&invite).expect("key");
        let [_, mut scscf] = proxies();
        let out = scscf.handle(Event::Request { key, request: Box::new(invite), source: SocketAddr::from(([127, 0, 0, 1], 5071)) }, t0);
        (scscf, forwarded(out))
    }

    /// Contexts are dropped once their final response is [`LINGER`] old (memory stays bounded).
    #[test]
    fn finished_contexts_are_purged() {
        let t0 = Instant::now();
        let (mut scscf, request) = scscf_forwarding_invite(t0);
        assert_eq!(scscf.in_flight(), (1, 1));
        let client = TransactionKey::from_sent_request(&request).expect("client key");
        let busy = ResponseBuilder::to_request(&request, StatusCode::new(486).expect("486"), "Busy Here").expect("486").build();
        let up = scscf.handle(Event::Response { key: client, response: Box::new(busy) }, t0);
        assert!(up.iter().any(|c| matches!(c, Command::Respond { response, .. } if response.status.code() == 486)), "{up:?}");
        assert!(scscf.tick(t0 + LINGER / 2).is_empty());
        assert_eq!(scscf.in_flight(), (1, 1), "kept while late responses may come");
        assert!(scscf.tick(t0 + LINGER * 2).is_empty());
        assert_eq!(scscf.in_flight(), (0, 0));
    }

    /// The timers are a queue by due time: a tick visits what is due, not every context. 200
    /// calls answered 486 are dropped [`LINGER`] later, with nothing else to do for them; the
    /// Timer C entries they leave behind go when they come due (so the queue is bounded by
    /// what happened within [`TIMER_C`]), and an early tick touches nothing.
    #[test]
    fn timers_are_filed_by_due_time_and_drain() {
        let t0 = Instant::now();
        let [_, mut scscf] = proxies();
        let mut forwarded_requests = Vec::new();
        for i in 0..200 {
            let text = INVITE.replace("branch=z9hG4bKp1", &format!("branch=z9hG4bKq{i}")).replace("Call-ID: p1", &format!("Call-ID: q{i}"));
            let Ok(Message::Request(invite)) = mediasec_sip::core::parse_datagram(Bytes::from(text), &mediasec_sip::core::Limits::datagram()) else {
                panic!("the seed parses")
            };
            let key = TransactionKey::from_request(&invite).expect("key");
            forwarded_requests.push(forwarded(scscf.handle(Event::Request { key, request: Box::new(invite), source: SocketAddr::from(([127, 0, 0, 1], 5071)) }, t0)));
        }
        assert_eq!(scscf.in_flight(), (200, 200));
        assert_eq!(scscf.timers.queue.len(), 200, "one Timer C entry per call");
        assert!(scscf.tick(t0 + Duration::from_secs(1)).is_empty());
        assert_eq!(scscf.timers.queue.len(), 200, "nothing due yet, nothing refiled");
        let answered = t0 + Duration::from_secs(2);
        for request in &forwarded_requests {
            let up = scscf.handle(callee(request, 486), answered);
            assert!(up.iter().any(|c| matches!(c, Command::Respond { response, .. } if response.status.code() == 486)), "{up:?}");
        }
        assert_eq!(scscf.timers.queue.len(), 400, "each final response files the context's end");
        assert!(scscf.tick(answered + LINGER).is_empty());
        assert_eq!(scscf.in_flight(), (0, 0));
        assert_eq!(scscf.timers.queue.len(), 200, "the Timer C entries wait for their time");
        assert!(scscf.tick(t0 + TIMER_C).is_empty(), "stale entries fire nothing");
        assert!(scscf.timers.queue.is_empty());
    }

    /// A response with status `code` from the callee to the forwarded `request`, as its client
    /// transaction delivers it.
    fn callee(request: &Request, code: u16) -> Event {
        let response = ResponseBuilder::to_request(request, StatusCode::new(code).expect("code"), "R").expect("response").build();
        response_event(request, Box::new(response))
    }

    /// The one response `out` sends upstream: its status and its `Via`s.
    fn upstream(out: &[Command]) -> (u16, Vec<String>) {
        let responses: Vec<_> = out
            .iter()
            .filter_map(|c| match c {
                Command::Respond { response, .. } => Some(response),
                _ => None,
            })
            .collect();
        let [r] = responses.as_slice() else { panic!("one response upstream: {out:?}") };
        (r.status.code(), r.headers.get_all(&HeaderName::Via).map(|h| String::from_utf8_lossy(&h.value()).into_owned()).collect())
    }

    /// The CANCELs in `out`, with where they go.
    fn cancels(out: &[Command]) -> Vec<(Request, SocketAddr)> {
        out.iter()
            .filter_map(|c| match c {
                Command::Request { request: r, to } if r.method == Method::Cancel => Some((r.clone(), *to)),
                _ => None,
            })
            .collect()
    }

    /// RFC 3261 §16.8: Timer C of a branch that rang (180) and then said nothing fires after
    /// [`TIMER_C`] — not before — and the proxy CANCELs it, built as §9.1 says (Request-URI,
    /// Call-ID, From, To, CSeq number of the INVITE; its one top Via; its Route), to its next
    /// hop. The callee's 487 then goes to the caller (§16.7 step 6); the context is freed, and
    /// nothing is given up (the branch ended).
    #[test]
    fn timer_c_cancels_a_ringing_branch_and_the_caller_gets_its_487() {
        let t0 = Instant::now();
        let (mut scscf, request) = scscf_forwarding_invite(t0);
        let ringing = scscf.handle(callee(&request, 180), t0);
        assert_eq!(upstream(&ringing).0, 180);
        assert!(scscf.tick(t0 + TIMER_C - Duration::from_secs(1)).is_empty());
        let out = scscf.tick(t0 + TIMER_C);
        let [(cancel, to)] = cancels(&out).try_into().unwrap_or_else(|c| panic!("one CANCEL: {c:?}"));
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(to, SocketAddr::from(([127, 0, 0, 1], 6060)));
        assert_eq!(cancel.uri.to_bytes(), request.uri.to_bytes());
        for name in [HeaderName::CallId, HeaderName::From, HeaderName::To] {
            assert_eq!(cancel.headers.value(&name), request.headers.value(&name), "{name:?}");
        }
        assert_eq!(cancel.headers.value(&HeaderName::CSeq).as_deref(), Some(b"1 CANCEL".as_slice()));
        let vias: Vec<_> = cancel.headers.get_all(&HeaderName::Via).map(|h| h.value().into_owned()).collect();
        assert_eq!(vias, vec![request.headers.get(&HeaderName::Via).expect("Via").value().into_owned()]);
        assert_eq!(cancel.headers.value(&HeaderName::Route).as_deref(), Some(b"<sip:127.0.0.1:6060;lr>".as_slice()));
        assert_eq!(request.headers.value(&HeaderName::Route), cancel.headers.value(&HeaderName::Route));
        assert_eq!((scscf.stats.timer_c, scscf.stats.cancels), (1, 1));
        assert!(scscf.tick(t0 + TIMER_C + Duration::from_secs(5)).is_empty(), "one CANCEL only");
        // The CANCEL went in a client transaction of its own (§9.1: retransmitted over UDP);
        // its 200, or its timeout, is consumed here: nothing goes upstream.
        let cancel_key = TransactionKey::from_sent_request(&cancel).expect("CANCEL key");
        assert_ne!(Some(&cancel_key), TransactionKey::from_sent_request(&request).as_ref());
        let ok = ResponseBuilder::to_request(&cancel, StatusCode::new(200).expect("200"), "OK").expect("200").build();
        let later = t0 + TIMER_C + Duration::from_millis(500);
        assert!(scscf.handle(Event::Response { key: cancel_key.clone(), response: Box::new(ok) }, later).is_empty());
        assert!(scscf.handle(Event::Timeout { key: cancel_key }, later).is_empty());
        let up = scscf.handle(callee(&request, 487), t0 + TIMER_C + Duration::from_secs(1));
        assert_eq!(upstream(&up), (487, vec!["SIP/2.0/UDP 127.0.0.1:5071;branch=z9hG4bKp1".to_owned()]));
        assert!(scscf.tick(t0 + TIMER_C + LINGER * 2).is_empty(), "nothing to give up");
        assert_eq!(scscf.in_flight(), (0, 0));
    }

    /// The callee never answers the CANCEL of Timer C: 64·T1 ([`LINGER`]) later the branch is
    /// given up at the endpoint ([`Command::Abandon`], §9.1) and the caller gets 408 (§16.7
    /// step 6: no final response); the context is freed after it.
    #[test]
    fn a_cancel_never_answered_ends_in_408_and_frees_the_context() {
        let t0 = Instant::now();
        let (mut scscf, request) = scscf_forwarding_invite(t0);
        let client = TransactionKey::from_sent_request(&request).expect("client key");
        let _ = scscf.handle(callee(&request, 180), t0);
        assert_eq!(cancels(&scscf.tick(t0 + TIMER_C)).len(), 1);
        assert!(scscf.tick(t0 + TIMER_C + LINGER - Duration::from_secs(1)).is_empty());
        let out = scscf.tick(t0 + TIMER_C + LINGER);
        assert!(out.iter().any(|c| matches!(c, Command::Abandon { key } if *key == client)), "{out:?}");
        assert_eq!(upstream(&out), (408, vec!["SIP/2.0/UDP 127.0.0.1:5071;branch=z9hG4bKp1".to_owned()]));
        assert_eq!(scscf.in_flight(), (1, 1), "late responses still find the context");
        assert!(scscf.tick(t0 + TIMER_C + LINGER * 3).is_empty());
        assert_eq!(scscf.in_flight(), (0, 0));
    }

    /// §16.8: a branch with no provisional response at Timer C is not CANCELled (§9.1 forbids
    /// it) but taken as answered 408: given up at the endpoint, 408 to the caller at once.
    #[test]
    fn timer_c_without_a_provisional_response_is_a_408() {
        let t0 = Instant::now();
        let (mut scscf, request) = scscf_forwarding_invite(t0);
        let client = TransactionKey::from_sent_request(&request).expect("client key");
        let out = scscf.tick(t0 + TIMER_C);
        assert!(cancels(&out).is_empty(), "{out:?}");
        assert!(matches!(out.first(), Some(Command::Abandon { key }) if *key == client), "{out:?}");
        assert_eq!(upstream(&out).0, 408);
        assert_eq!((scscf.stats.timer_c, scscf.stats.cancels), (1, 0));
        assert!(scscf.tick(t0 + TIMER_C + LINGER * 2).is_empty());
        assert_eq!(scscf.in_flight(), (0, 0));
    }

    /// §16.7 step 2: a provisional response other than 100 restarts Timer C. A 183 two minutes
    /// in moves the CANCEL from `t0 + TIMER_C` to `t0 + 2 min + TIMER_C`; a 100 later on does
    /// not move it again.
    #[test]
    fn a_provisional_response_restarts_timer_c() {
        let t0 = Instant::now();
        let (mut scscf, request) = scscf_forwarding_invite(t0);
        let _ = scscf.handle(callee(&request, 180), t0);
        let again = t0 + Duration::from_secs(120);
        let _ = scscf.handle(callee(&request, 183), again);
        let _ = scscf.handle(callee(&request, 100), again + Duration::from_secs(30));
        assert!(scscf.tick(t0 + TIMER_C).is_empty(), "no CANCEL at the first deadline");
        assert!(scscf.tick(again + TIMER_C - Duration::from_secs(1)).is_empty());
        assert_eq!(cancels(&scscf.tick(again + TIMER_C)).len(), 1);
    }

    /// §16.7: a 200 arriving after the CANCEL of Timer C (the callee answered as it went out)
    /// still goes to the caller, and the context is freed [`LINGER`] later with nothing given
    /// up.
    #[test]
    fn a_2xx_after_the_timer_c_cancel_is_forwarded() {
        let t0 = Instant::now();
        let (mut scscf, request) = scscf_forwarding_invite(t0);
        let _ = scscf.handle(callee(&request, 180), t0);
        assert_eq!(cancels(&scscf.tick(t0 + TIMER_C)).len(), 1);
        let answered = t0 + TIMER_C + Duration::from_millis(50);
        let up = scscf.handle(callee(&request, 200), answered);
        assert_eq!(upstream(&up).0, 200);
        assert!(cancels(&up).is_empty(), "{up:?}");
        assert!(scscf.tick(answered + LINGER - Duration::from_secs(1)).is_empty());
        assert_eq!(scscf.in_flight(), (1, 1));
        assert!(scscf.tick(answered + LINGER + Duration::from_secs(1)).is_empty(), "nothing to give up");
        assert_eq!(scscf.in_flight(), (0, 0));
    }

    /// §9.1: the caller's CANCEL before the branch had any provisional response is answered
    /// 200 but not passed on until the branch's first provisional response (a 100 will do);
    /// then the CANCEL goes, and the callee's 487 reaches the caller.
    #[test]
    fn a_cancel_waits_for_the_first_provisional_response() {
        let t0 = Instant::now();
        let (mut scscf, request) = scscf_forwarding_invite(t0);
        let Message::Request(invite) = parse(INVITE) else { panic!("a request") };
        let cancel = cancel_for(&invite).expect("CANCEL");
        let out = scscf.handle(Event::Request { key: TransactionKey::from_request(&cancel).expect("key"), request: Box::new(cancel), source: UE }, t0);
        assert_eq!(upstream(&out).0, 200);
        assert!(cancels(&out).is_empty(), "{out:?}");
        let out = scscf.handle(callee(&request, 100), t0 + Duration::from_secs(1));
        assert_eq!(cancels(&out).len(), 1, "{out:?}");
        assert!(cancels(&scscf.handle(callee(&request, 180), t0 + Duration::from_secs(2))).is_empty(), "once");
        assert_eq!(upstream(&scscf.handle(callee(&request, 487), t0 + Duration::from_secs(3))).0, 487);
        assert_eq!(scscf.stats.cancels, 1);
    }

    /// A branch whose client transaction times out (Timer B) counts as a 408 (§16.7 step 6):
    /// the caller of an INVITE gets 408. A non-INVITE gets none from a proxy (RFC 4320 §4.2):
    /// its client times out on its own.
    #[test]
    fn a_timed_out_branch_gives_408_to_an_invite_only() {
        let t0 = Instant::now();
        let (mut scscf, request) = scscf_forwarding_invite(t0);
        let out = scscf.handle(Event::Timeout { key: TransactionKey::from_sent_request(&request).expect("key") }, t0 + Duration::from_secs(32));
        assert_eq!(upstream(&out).0, 408);
        let options = INVITE.replacen("INVITE sip:", "OPTIONS sip:", 1).replace("CSeq: 1 INVITE", "CSeq: 1 OPTIONS").replace("z9hG4bKp1", "z9hG4bKo1");
        let (key, r) = request_event(&options);
        let fwd = forwarded(scscf.handle(Event::Request { key, request: r, source: UE }, t0));
        let out = scscf.handle(Event::Timeout { key: TransactionKey::from_sent_request(&fwd).expect("key") }, t0 + Duration::from_secs(32));
        assert!(out.is_empty(), "{out:?}");
    }

    /// A forked INVITE (two contacts): one branch answers 486, the other rings past Timer C and
    /// answers its CANCEL 487; the caller gets the best of the two, the 486 (§16.7 step 6: the
    /// first of the lowest class).
    #[test]
    fn timer_c_on_one_fork_then_the_best_response() {
        let t0 = Instant::now();
        let [_, mut scscf] = proxies();
        for (port, branch) in [(7001, "z9hG4bKr1"), (7002, "z9hG4bKr2")] {
            let reg = format!(
                "REGISTER sip:a.example SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch={branch}\r\nMax-Forwards: 70\r\n\
From: <sip:carol@a.example>;tag=r\r\nTo: <sip:carol@a.example>\r\nCall-ID: r{port}\r\nCSeq: 1 REGISTER\r\n\
Contact: <sip:carol@127.0.0.1:{port}>\r\nExpires: 600\r\nContent-Length: 0\r\n\r\n"
            );
            let (key, r) = request_event(&reg);
            assert_eq!(upstream(&scscf.handle(Event::Request { key, request: r, source: UE }, t0)).0, 200);
        }
        let invite = INVITE.replace("sip:bob@b.example", "sip:carol@a.example").replace("Route: <sip:127.0.0.1:5060;lr>, <sip:127.0.0.1:6060;lr>\r\n", "");
        let (key, r) = request_event(&invite);
        let out = scscf.handle(Event::Request { key, request: r, source: UE }, t0);
        let branches: Vec<Request> = out
            .into_iter()
            .filter_map(|c| match c {
                Command::Request { request, .. } => Some(request),
                _ => None,
            })
            .collect();
        let [one, two] = branches.as_slice() else { panic!("two branches: {branches:?}") };
        let _ = scscf.handle(callee(two, 180), t0);
        assert!(scscf.handle(callee(one, 486), t0 + Duration::from_secs(1)).iter().all(|c| !matches!(c, Command::Respond { .. })), "held as a candidate");
        let out = scscf.tick(t0 + TIMER_C);
        let [(_, to)] = cancels(&out).try_into().unwrap_or_else(|c| panic!("one CANCEL: {c:?}"));
        assert_eq!(Some(to), socket_addr(&two.uri), "to the ringing contact");
        assert_eq!(upstream(&scscf.handle(callee(two, 487), t0 + TIMER_C + Duration::from_secs(1))).0, 486);
    }

    proptest! {
        /// Whatever comes back from the AGW (arbitrary bytes, or a bencoded reply with an
        /// arbitrary `sdp`), the IMS-ALG never panics and answers or forwards the INVITE.
        #[test]
        fn arbitrary_ng_replies_never_panic(reply in proptest::collection::vec(any::<u8>(), 0..600), sdp in "[ -~\r\n]{0,300}") {
            let now = Instant::now();
            for bytes in [reply, mediasec_agw::bencode::Value::dict([("result", mediasec_agw::bencode::Value::str("ok")), ("sdp", mediasec_agw::bencode::Value::str(sdp))]).to_vec()] {
                let mut p = alg_with_e2ae_ue(now);
                let (key, r) = request_event(&e2ae_invite("z9hG4bKp", "p1"));
                let _ = p.handle(Event::Request { key, request: r, source: UE }, now);
                let id = p.take_ng().first().map(|r| r.id);
                prop_assert!(id.is_some());
                let out = p.ng_result(id.unwrap_or_default(), Ok(bytes), now);
                prop_assert!(out.iter().any(|c| matches!(c, Command::Request { .. } | Command::Respond { .. })), "{out:?}");
            }
        }

        /// Network input never panics the proxy core: arbitrary datagrams.
        #[test]
        fn arbitrary_datagrams_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1500)) {
            feed(bytes);
        }

        /// ... and a routable INVITE with random bytes overwritten (headers, routes, SDP).
        #[test]
        fn mutated_invites_never_panic(edits in proptest::collection::vec((0usize..400, any::<u8>()), 1..12)) {
            let mut bytes = INVITE.as_bytes().to_vec();
            for (at, b) in edits {
                let len = bytes.len();
                if let Some(x) = bytes.get_mut(at % len) {
                    *x = b;
                }
            }
            feed(bytes);
        }
    }
}
