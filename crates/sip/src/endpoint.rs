//! The SIP endpoint over UDP and TCP on one port, and TLS on its own: a tokio task that owns
//! the sockets, runs
//! the RFC 3261 §17 transaction layer of [`sipx_sip`] and its timers, and talks to the
//! transaction user (a UA or proxy core) through [`Command`]s in and [`Event`]s out.
//!
//! Which transport (RFC 3261 §18): a request larger than [`UDP_MAX_REQUEST`] bytes goes over
//! TCP (§18.1.1: the path MTU is unknown), with its top `Via` rewritten to `TCP` and its client
//! transaction reliable (no Timer A/E, §17.1.1.2, §17.1.2.2); a smaller one over UDP. An open
//! connection to the next hop — whichever side opened it — is reused, else one is opened. A
//! response goes back the way its request came (§18.2.2): over UDP to the request's source
//! (symmetric response, RFC 3581, exact on loopback), over TCP on the request's connection or,
//! if that has closed, on a connection to the request's source address and its `Via` sent-by
//! port. A connection that cannot be opened or written fails its client transactions with a
//! transport error ([`Event::Timeout`], §17.1.4); stream framing is [`crate::stream`].
//!
//! TLS (RFC 3261 §26.2; [`Config::tls`], [`crate::tls`]): a request goes over TLS when its top
//! `Via` says `TLS`, or the URI it is routed on (its top `Route`, else its Request-URI) is a
//! `sips:` URI or has `;transport=tls`, or its Request-URI is `sips:`; its top `Via` then says
//! `TLS`. Such a request never goes over UDP or TCP: the size rule and the UDP fallback do not
//! apply, and a TLS connection that cannot be opened, fails its handshake or breaks is a
//! transport error for its client transactions. A new connection verifies the server as the
//! host of that URI (RFC 5922 §7: SNI and the certificate's DNS name, or its IP address for an
//! IP literal). A TLS connection is the TCP connection task over a TLS stream: it is reused
//! as TCP ones are (for the same transport only), responses go back on it, and it counts
//! against the same bounds; a handshake that does not finish within 64·T1, at most
//! [`TLS_HANDSHAKE_MAX`], closes it. The endpoint accepts TLS on its own port
//! ([`crate::tls::TlsServer::port`], [`Endpoint::tls_addr`]) when it has a server side.
//!
//! TCP resources are bounded ([`Config`]): at most [`Config::max_tcp_connections`] connections
//! are open at once — one more incoming is closed as soon as it is accepted, one more outgoing
//! is not opened and fails as a refused connection does (the §18.1.1 UDP fallback included) —
//! and at most [`Config::tcp_queue_messages`] messages wait to be written on one connection: a
//! connection whose peer does not take more is failed (§18.4), so its client transactions get
//! the transport error. At most [`Config::max_tcp_connections_per_peer`] of the connections
//! are with one remote host, an IPv4 address or an IPv6 /64 (beyond, the same as at the overall cap). Reads are bounded
//! too: a connection with [`Config::tcp_read_messages`] messages read and not yet handled by
//! the endpoint task stops reading its socket until one is (TCP flow control then holds the
//! peer back), and a stream that cannot be framed within [`crate::stream::FrameLimits`] is
//! closed. [`Endpoint::tcp_stats`] counts each time a limit acted.
//!
//! A UAS 2xx to an INVITE received over UDP is retransmitted by the endpoint at T1, 2·T1, …
//! capped at T2 until an ACK with the same `Call-ID` and CSeq number arrives or 64·T1 has
//! passed (§13.3.1.4); over TCP it is sent once (§17.2.1). The transaction itself leaves that
//! job to the TU (RFC 6026).
//!
//! A UAS reliable provisional response ([`Command::RespondReliable`], RFC 3262 §3) is passed to
//! its transaction again at T1, 2·T1, 4·T1, … (no T2 cap) until a PRACK whose `RAck` names it
//! arrives or a final response goes out on the transaction; after 64·T1 the TU gets
//! [`Event::ReliableTimeout`] and answers the request with a 5xx.
//!
//! The TU's queue of [`Event`]s is bounded too ([`Config::tu_queue_events`]): a TU that falls
//! behind (a flood of requests, a slow KMS) must not grow the endpoint's memory without
//! bound. When no more than a quarter of the queue is free, a request outside any dialog
//! (no `To` tag) other than CANCEL is answered by the endpoint itself with `503 Service
//! Unavailable` and a `Retry-After` (RFC 3261 §21.5.4, §20.33) through its new server
//! transaction, which also absorbs its retransmissions, and never reaches the TU. Everything
//! that belongs to a transaction or dialog the TU already knows (responses, ACKs, timeouts,
//! CANCELs, in-dialog requests such as BYE) keeps the reserved quarter and,
//! when even that is full, waits for room: nothing of a call in progress is dropped. Only
//! reports that lose nothing when dropped ([`Event::Stray`], [`Event::Malformed`]) are dropped
//! when the queue is full. [`Endpoint::overload_stats`] counts both.
//!
//! When the endpoint task itself is the bottleneck, the TU's queue stays short and datagrams
//! wait in the UDP socket's receive queue, which the kernel empties by dropping. The queue is
//! sampled every [`Config::udp_queue_sample_every`] datagrams ([`crate::udp_queue`]); while
//! the last [`UDP_QUEUE_DEEP_SAMPLES`] samples found it above [`Config::udp_queue_high_water`] a new UDP request outside any dialog (not ACK,
//! not CANCEL, not a retransmission of a request with a transaction) gets the 503 statelessly,
//! with no transaction, before anything else is done with it.
//!
//! Refusals are logged at `debug` each, and at `warn` at most once a second per reason with
//! the count left unlogged since the last line.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sipx_sip::headers::first_hop_end;
use sipx_sip::rel::{RAck, RSeq};
use sipx_sip::transaction::Dispatch;
use sipx_sip::{
    parse_datagram, Header, HeaderName, Headers, Limits, Message, Method, Output, Reliability, Request, Response,
    ResponseBuilder, StatusCode, Timer, Timers, TransactionKey, TransactionLayer, TuEvent, Via,
};
use rustls::pki_types::ServerName;
use tokio::net::{TcpListener, UdpSocket};
use rand::SeedableRng as _;
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::tcp::{AbortOnDrop, ConnId, Connection, Counters as TcpCounters, End, Kind, Queued, Report, Setup};
use crate::locate::Resolve;
use crate::tls::Tls;
use crate::udp_queue::{Probe, UdpQueue};
use crate::Error;

/// The longest a TLS handshake may take (when 64·T1 is longer): a peer that opens a
/// connection and never completes its handshake must not hold a connection slot for long.
pub const TLS_HANDSHAKE_MAX: Duration = Duration::from_secs(10);

/// How many ephemeral UDP ports [`Endpoint::bind_with`] tries when the TCP port of the same
/// number is taken.
pub const PORT_ATTEMPTS: u32 = 16;

/// The largest request sent over UDP: RFC 3261 §18.1.1 requires a congestion-controlled
/// transport for a request larger than 1300 bytes when the path MTU is unknown (it always is
/// here).
pub const UDP_MAX_REQUEST: usize = 1300;

/// How long a client refused for overload is asked to wait before retrying (RFC 3261 §20.33
/// `Retry-After`, in seconds).
pub const OVERLOAD_RETRY_AFTER_SECS: u32 = 2;

/// The receiving end of an endpoint's events, bounded by [`Config::tu_queue_events`].
pub type Events = mpsc::Receiver<Event>;

/// What the transaction user asks the endpoint to do.
#[derive(Debug)]
pub enum Command {
    /// Send `request` in a new client transaction to `to` (its key is
    /// `TransactionKey::from_sent_request(&request)`), over TLS when [`routed_over_tls`] or its
    /// top `Via` says so, else over UDP or TCP by its size.
    Request {
        /// The request, with this hop's `Via` on top.
        request: Request,
        /// The next hop.
        to: SocketAddr,
    },
    /// Send `request` in a new client transaction to the server `uri` names, located by
    /// RFC 3263 §4 ([`crate::locate`]): a numeric host at once, a host name through
    /// [`Config::resolver`] on a task of its own (the endpoint goes on meanwhile), at most
    /// [`Config::max_lookups`] at once and each for at most [`Config::locate_deadline`]. The
    /// request goes to the first target over its transport (a UDP target still moves to TCP
    /// for its size); when a TCP or TLS connection to a target is refused, the same request
    /// (same branch: nothing reached the refusing target) goes to the next (§4.3). When its
    /// client transaction times out, gets another transport error or a 503 (RFC 3261
    /// §21.5.4), the request goes to the next target with a new `Via` branch, a new client
    /// transaction (§4.3), and the TU hears only of the last: its responses and timeout come
    /// under the key of `request`, and a CANCEL or [`Command::Abandon`] of that key acts on the
    /// transaction sent last. TLS verifies the server as `uri`'s host (RFC 5922 §4), not an SRV
    /// target's. When nothing is found, there is no resolver, the lookups are at their cap or
    /// past their deadline, or every target failed, the TU gets [`Event::Timeout`] for the
    /// transaction, as for any unreachable next hop.
    RequestUri {
        /// The request, with this hop's `Via` on top.
        request: Request,
        /// The next hop: the top `Route`'s URI, else the Request-URI (RFC 3261 §8.1.2, §16.6).
        uri: sipx_sip::Uri,
    },
    /// Answer a server transaction.
    Respond {
        /// The server transaction.
        key: TransactionKey,
        /// The response.
        response: Response,
    },
    /// A UAS 2xx to an INVITE: sent through the transaction, then retransmitted until the ACK
    /// (RFC 3261 §13.3.1.4).
    Respond2xx {
        /// The INVITE server transaction.
        key: TransactionKey,
        /// The 2xx.
        response: Response,
    },
    /// A UAS reliable provisional response (RFC 3262 §3; it carries `Require: 100rel` and
    /// `RSeq`): sent through the transaction, then passed to it again at T1, 2·T1, 4·T1, …
    /// until a PRACK whose `RAck` names its `RSeq`, CSeq number and method (same `Call-ID`)
    /// arrives or a final response is sent on the transaction; after 64·T1 without one,
    /// [`Event::ReliableTimeout`].
    RespondReliable {
        /// The INVITE server transaction.
        key: TransactionKey,
        /// The reliable 1xx.
        response: Response,
    },
    /// Keep the stream connection to `to` (TLS, else TCP) up: an RFC 5626 §3.5.1 keep-alive
    /// ping (CRLF CRLF) on it, which the peer answers with a pong. Both are traffic, so
    /// neither side closes the connection as idle (after 64·T1 here), and requests the peer
    /// sends us later — an incoming call to a UE registered over TLS — still find the
    /// connection. Nothing is sent, and no connection opened, when none is open to `to`.
    KeepAlive {
        /// The peer (for a UE, its P-CSCF's address).
        to: SocketAddr,
    },
    /// Give up client transaction `key` while it has no final response (Calling, Trying or
    /// Proceeding): RFC 3261 §9.1 — a UAC whose CANCEL got no final response for the INVITE
    /// within 64·T1 "SHOULD then consider the original transaction cancelled and SHOULD
    /// destroy the client transaction". An INVITE client transaction in Proceeding has no
    /// timer of its own (§17.1.1.2), so without this it would stay forever.
    ///
    /// Nothing is sent and the TU hears nothing of it. The transaction is removed from the
    /// transaction layer with its route and timers; for an INVITE, a small record of it (the
    /// ACK of §17.1.1.3 without its `To`, and the route) stays for 64·T1 more, the time the
    /// peer's server transaction retransmits a final response (Timer H): a late non-2xx final
    /// response is ACKed from it as the transaction would have done, and a late 2xx is handed
    /// to the TU as [`Event::Stray`] so that it can ACK it and end the session with BYE
    /// (§13.2.2.4). After that, or for a non-INVITE, a late response is an [`Event::Stray`].
    /// A transaction that already has its final response ends on its own timers (D, K, M)
    /// and is left alone.
    Abandon {
        /// The client transaction.
        key: TransactionKey,
    },
    /// Send `request` outside any transaction (an ACK for a 2xx, as a UA sends it or a proxy
    /// forwards it) to the server `uri` names, located as for [`Command::RequestUri`] (within
    /// the same [`Config::max_lookups`] and [`Config::locate_deadline`]), to its first target
    /// only: there is no transaction to fail over with. The weighted order of SRV records of
    /// one priority is drawn from a generator seeded by the request's `Call-ID`, so every
    /// retransmission of it goes to the same target (RFC 3263 §4.4), while different calls
    /// spread over the targets by weight. Nothing found, or lookups at their cap: the request
    /// is dropped and logged (the UAC retransmits its ACK with each 2xx it receives again).
    StatelessUri {
        /// The request, with this hop's `Via` on top.
        request: Request,
        /// The next hop: the top `Route`'s URI, else the Request-URI.
        uri: sipx_sip::Uri,
    },
    /// Send outside any transaction: the ACK for a 2xx, or what a proxy forwards statelessly
    /// (ACK for 2xx, a 2xx retransmission whose transaction is gone).
    Stateless {
        /// The message.
        message: Message,
        /// Where to.
        to: SocketAddr,
    },
}

/// What the endpoint tells the transaction user.
#[derive(Debug)]
pub enum Event {
    /// A new request created server transaction `key`.
    Request {
        /// The server transaction.
        key: TransactionKey,
        /// The request.
        request: Box<Request>,
        /// Where it came from (over TCP, the remote address of the connection: the peer's SIP
        /// port when the peer, like this endpoint, connects from it).
        source: SocketAddr,
    },
    /// A response to our client transaction `key` (every 2xx of a forked INVITE, RFC 6026).
    Response {
        /// The client transaction.
        key: TransactionKey,
        /// The response.
        response: Box<Response>,
    },
    /// An ACK for a 2xx (its own transaction per RFC 3261 §17.1.1.3).
    Ack {
        /// The ACK.
        request: Box<Request>,
        /// Where it came from.
        source: SocketAddr,
    },
    /// A message that matched no transaction and created none (a response whose transaction
    /// is gone, a request without a usable `Via`).
    Stray {
        /// The message.
        message: Box<Message>,
        /// Where it came from.
        source: SocketAddr,
    },
    /// Client transaction `key` got no final answer within 64·T1, or could not be sent (a
    /// transport error, §17.1.4: a TCP or TLS connection that could not be opened or failed —
    /// for TLS also a failed handshake, e.g. a server certificate not valid for the name).
    Timeout {
        /// The client transaction.
        key: TransactionKey,
    },
    /// A reliable provisional response sent on server transaction `key` got no PRACK within
    /// 64·T1: RFC 3262 §3 says the UAS then rejects the request with a 5xx.
    ReliableTimeout {
        /// The server transaction.
        key: TransactionKey,
    },
    /// A datagram that does not parse as SIP (dropped; RFC 3261 §18.3 framing). A TCP stream
    /// that cannot be framed is closed and logged instead.
    Malformed {
        /// Where it came from.
        source: SocketAddr,
        /// The parser's reason.
        reason: String,
    },
}

/// How an endpoint runs: its timers, the bounds on its TCP resources (RFC 3261 §18; a
/// server facing the network must not let one peer exhaust its memory or descriptors) — TLS
/// connections count as TCP ones — and its TLS setup.
#[derive(Clone, Debug)]
pub struct Config {
    /// The RFC 3261 §17.1.1.1 timer constants. An idle TCP connection is closed after 64·T1,
    /// and a TCP connect or write that takes that long fails.
    pub timers: Timers,
    /// The most TCP connections open at once, accepted and opened together (default
    /// [`Config::MAX_TCP_CONNECTIONS`]). At the limit a newly accepted connection is closed at
    /// once, and a send that needs a new connection fails as a refused connection does (a
    /// request on TCP only for its size goes over UDP, §18.1.1; else the client transaction
    /// gets a transport error, §17.1.4). A value of 0 refuses every TCP connection.
    pub max_tcp_connections: usize,
    /// The most messages that may wait to be written on one TCP connection, while it is being
    /// opened or while its peer is not reading (default [`Config::TCP_QUEUE_MESSAGES`], at
    /// least 1). A message beyond fails the connection: its client transactions get a transport
    /// error (§18.4, §17.1.4) instead of the endpoint buffering without bound.
    pub tcp_queue_messages: usize,
    /// The most TCP connections open at once with one remote host (an IPv4 address or an IPv6
    /// /64, see `peer_host`), accepted and opened
    /// together (default [`Config::MAX_TCP_CONNECTIONS_PER_PEER`]): one host must not take the
    /// whole of [`Config::max_tcp_connections`] and lock every other peer out. Beyond it a
    /// newly accepted connection is closed at once, and a send that needs a new connection
    /// fails as at the overall cap.
    pub max_tcp_connections_per_peer: usize,
    /// The most messages read on one TCP connection that may wait for the endpoint task to
    /// handle them (default [`Config::TCP_READ_MESSAGES`], at least 1). With that many
    /// waiting the connection stops reading its socket until one is handled: the peer's writes
    /// stall (TCP flow control) instead of the endpoint buffering without bound, and no other
    /// connection, nor UDP, waits for it. No message read is dropped.
    pub tcp_read_messages: usize,
    /// The most [`Event`]s that may wait for the TU (default [`Config::TU_QUEUE_EVENTS`], at
    /// least 1). With three quarters of them waiting, new requests are refused with 503 (see
    /// the module documentation).
    pub tu_queue_events: usize,
    /// The most transactions (client and server) the endpoint holds at once (default
    /// [`Config::MAX_TRANSACTIONS`]). A completed transaction is kept for up to 64·T1 to
    /// absorb retransmissions (§17.2.2 Timer J: 32 s over UDP), so a high request rate holds
    /// many; beyond this bound a new request outside any dialog (not CANCEL) is answered 503
    /// statelessly, without a transaction, instead of memory growing with the offered rate.
    pub max_transactions: usize,
    /// The UDP receive queue's high-water mark, in per cent of the socket's receive buffer
    /// (default [`Config::UDP_QUEUE_HIGH_WATER`]; 0 turns the check off). While the last
    /// [`UDP_QUEUE_DEEP_SAMPLES`] samples of the queue ([`crate::udp_queue`]) were above it, the endpoint task is the
    /// bottleneck and datagrams are about to be dropped by the kernel: a new request received
    /// over UDP outside any dialog (not ACK, not CANCEL, not a retransmission of a request whose
    /// transaction exists) is answered 503 with `Retry-After` statelessly, without a
    /// transaction and without reaching the TU. In-dialog requests and responses go on.
    pub udp_queue_high_water: u8,
    /// How often the UDP receive queue is sampled: once every this many datagrams received
    /// (default [`Config::UDP_QUEUE_SAMPLE_EVERY`], at least 1), and at the first datagram
    /// once the last sample is [`UDP_QUEUE_SAMPLE_MAX_AGE`] old. A sample is one
    /// `getsockopt(SO_MEMINFO)` system call.
    pub udp_queue_sample_every: u32,
    /// SIP over TLS (RFC 3261 §26.2): a server side (certificate, key, TLS port, optional
    /// client roots for mutual TLS) and a client side (trusted roots, optional client
    /// certificate). Default: neither — no TLS port, and a request that must go over TLS fails
    /// with a transport error.
    pub tls: Tls,
    /// The DNS lookups of [`Command::RequestUri`] for a host name (RFC 3263 §4). Default: none
    /// — only numeric hosts are located, and a request to a host name fails with
    /// [`Event::Timeout`].
    pub resolver: Option<Arc<dyn Resolve>>,
    /// The most host-name locations of [`Command::RequestUri`] whose DNS lookups run at once
    /// (default [`Config::MAX_LOOKUPS`]): each one is a task of its own, and a peer that sends
    /// requests naming many host names must not make the endpoint run unbounded concurrent
    /// DNS work. With that many running, one more fails at once as an unreachable next hop
    /// does ([`Event::Timeout`]; a proxy answers 408), logged and counted
    /// ([`LocateStats::lookups_refused`]). A value of 0 refuses every lookup.
    pub max_lookups: usize,
    /// The longest one location may take, all its queries together (NAPTR, SRV, A/AAAA,
    /// RFC 3263 §4; default [`Config::LOCATE_DEADLINE`]). A location still running then is
    /// given up, its slot of [`Config::max_lookups`] freed, and its request fails as an
    /// unreachable next hop does ([`Event::Timeout`], [`LocateStats::deadlines_passed`]).
    pub locate_deadline: Duration,
}

impl Config {
    /// Default [`Config::max_tcp_connections`].
    pub const MAX_TCP_CONNECTIONS: usize = 1024;
    /// Default [`Config::tcp_queue_messages`].
    pub const TCP_QUEUE_MESSAGES: usize = 128;
    /// Default [`Config::max_tcp_connections_per_peer`].
    pub const MAX_TCP_CONNECTIONS_PER_PEER: usize = 32;
    /// Default [`Config::tcp_read_messages`].
    pub const TCP_READ_MESSAGES: usize = 32;
    /// Default [`Config::tu_queue_events`].
    pub const TU_QUEUE_EVENTS: usize = 1024;
    /// Default [`Config::max_transactions`]: a CSCF's RSS stopped at ≈ 1.2 GB with the table
    /// full of OPTIONS transactions (BENCHMARKS.md, SIP proxy under load).
    pub const MAX_TRANSACTIONS: usize = 262_144;
    /// Default [`Config::udp_queue_high_water`]: 90 % of the receive buffer, where the
    /// kernel's drops are imminent. Measured with SIPp (BENCHMARKS.md, SIP proxy under load):
    /// with 50 % the endpoint refused 0.5–2.8 % of the requests at 20 000 req/s, two thirds of
    /// its capacity, that it would have answered; with 90 % and [`UDP_QUEUE_DEEP_SAMPLES`]
    /// none.
    pub const UDP_QUEUE_HIGH_WATER: u8 = 90;
    /// Default [`Config::udp_queue_sample_every`].
    pub const UDP_QUEUE_SAMPLE_EVERY: u32 = 64;
    /// Default [`Config::max_lookups`]. A cached answer holds its slot for microseconds; an
    /// uncached location of a few queries answered in ≈ 20 ms each holds it for ≈ 100 ms, so
    /// 256 slots sustain some 2 500 uncached locations a second, while a name server that
    /// never answers holds each slot for [`Config::LOCATE_DEADLINE`]: 256 tasks at most, and
    /// new names fail at once instead of piling up.
    pub const MAX_LOOKUPS: usize = 256;
    /// Default [`Config::locate_deadline`]: room for the resolver's second attempt at a query
    /// whose first got no answer (hickory: 5 s each), and well under Timer B and F (64·T1,
    /// 32 s), which start only once the request is sent.
    pub const LOCATE_DEADLINE: Duration = Duration::from_secs(10);
}

impl From<Timers> for Config {
    /// These timers with the default TCP bounds.
    fn from(timers: Timers) -> Self {
        Self {
            timers,
            max_tcp_connections: Self::MAX_TCP_CONNECTIONS,
            tcp_queue_messages: Self::TCP_QUEUE_MESSAGES,
            max_tcp_connections_per_peer: Self::MAX_TCP_CONNECTIONS_PER_PEER,
            tcp_read_messages: Self::TCP_READ_MESSAGES,
            tu_queue_events: Self::TU_QUEUE_EVENTS,
            max_transactions: Self::MAX_TRANSACTIONS,
            udp_queue_high_water: Self::UDP_QUEUE_HIGH_WATER,
            udp_queue_sample_every: Self::UDP_QUEUE_SAMPLE_EVERY,
            tls: Tls::default(),
            resolver: None,
            max_lookups: Self::MAX_LOOKUPS,
            locate_deadline: Self::LOCATE_DEADLINE,
        }
    }
}

impl Default for Config {
    /// RFC 3261 default timers, default TCP bounds.
    fn default() -> Self {
        Self::from(Timers::default())
    }
}

/// How often the TCP bounds of [`Config`] have acted since the endpoint started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpStats {
    /// Incoming connections closed at once: the endpoint held its maximum of connections.
    pub accepts_refused: u64,
    /// Incoming connections closed at once: the endpoint held its maximum of connections with
    /// that remote host ([`Config::max_tcp_connections_per_peer`]).
    pub accepts_refused_per_peer: u64,
    /// Outgoing connections not opened: the overall or the per-peer maximum was reached.
    pub connects_refused: u64,
    /// Connections failed because their outbound queue was full.
    pub queues_full: u64,
    /// Times a connection stopped reading its socket because [`Config::tcp_read_messages`]
    /// of its messages were waiting for the endpoint task.
    pub reads_paused: u64,
    /// Connections closed because their stream could not be framed (RFC 3261 §18.3): a header
    /// section or body over [`crate::stream::FrameLimits`], no or a bad `Content-Length`, or a
    /// message the parser refused.
    pub streams_unframed: u64,
    /// TLS connections established (handshake completed), accepted and opened.
    pub tls_connections: u64,
    /// TLS handshakes that failed or did not finish in time, accepted and opened: a
    /// certificate refused (name, CA, validity), a client certificate missing where required,
    /// plaintext sent to the TLS port.
    pub tls_handshakes_failed: u64,
}

impl TcpStats {
    fn read(counters: &TcpCounters) -> Self {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Self {
            accepts_refused: load(&counters.accepts_refused),
            accepts_refused_per_peer: load(&counters.accepts_refused_per_peer),
            connects_refused: load(&counters.connects_refused),
            queues_full: load(&counters.queues_full),
            reads_paused: load(&counters.reads_paused),
            streams_unframed: load(&counters.streams_unframed),
            tls_connections: load(&counters.tls_connections),
            tls_handshakes_failed: load(&counters.tls_handshakes_failed),
        }
    }
}

/// How often the bound on the TU's queue ([`Config::tu_queue_events`]) has acted since the
/// endpoint started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OverloadStats {
    /// Requests answered 503 by the endpoint: the TU's queue was three quarters full.
    pub requests_refused: u64,
    /// [`Event::Stray`] and [`Event::Malformed`] reports dropped: the TU's queue was full.
    pub events_dropped: u64,
    /// Requests answered 503 statelessly: the endpoint held [`Config::max_transactions`].
    pub transactions_full: u64,
    /// Requests answered 503 statelessly: the UDP receive queue was above
    /// [`Config::udp_queue_high_water`].
    pub udp_queue_deep: u64,
}

/// What the RFC 3263 server location of [`Command::RequestUri`] has done since the endpoint
/// started, and what it runs now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LocateStats {
    /// Locations not started: [`Config::max_lookups`] were running (the request failed as an
    /// unreachable next hop).
    pub lookups_refused: u64,
    /// Locations given up at [`Config::locate_deadline`].
    pub deadlines_passed: u64,
    /// Requests sent again, with a new branch, to the next target of their location after a
    /// timeout, a transport error or a 503 (RFC 3263 §4.3).
    pub failovers: u64,
    /// Locations running now.
    pub lookups_running: usize,
}

/// The atomics behind [`LocateStats`].
#[derive(Debug, Default)]
struct LocateCounters {
    lookups_refused: AtomicU64,
    deadlines_passed: AtomicU64,
    failovers: AtomicU64,
}

/// What the endpoint holds at a moment: the transactions in its transaction layer, and the
/// INVITE client transactions given up by the TU ([`Command::Abandon`]) whose late final
/// responses it still answers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Transactions {
    /// Client transactions.
    pub client: usize,
    /// Server transactions.
    pub server: usize,
    /// Given-up INVITE client transactions, each kept for 64·T1 as its ACK without `To`.
    pub abandoned: usize,
}

/// The atomics behind [`Transactions`], written by the endpoint task after each thing it does.
#[derive(Debug, Default)]
struct TransactionCounters {
    client: AtomicUsize,
    server: AtomicUsize,
    abandoned: AtomicUsize,
}

/// SIP messages received (parsed) since the endpoint started, by transport: shows which
/// transport a peer actually used (e.g. that a UE on TLS sent nothing in clear).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Received {
    /// Over UDP.
    pub udp: u64,
    /// Over TCP.
    pub tcp: u64,
    /// Over TLS.
    pub tls: u64,
}

/// The atomics behind [`Received`].
#[derive(Debug, Default)]
struct ReceivedCounters {
    udp: AtomicU64,
    tcp: AtomicU64,
    tls: AtomicU64,
}

/// The atomics behind [`OverloadStats`], shared by the endpoint task and its handles.
#[derive(Debug, Default)]
struct OverloadCounters {
    requests_refused: AtomicU64,
    events_dropped: AtomicU64,
    transactions_full: AtomicU64,
    udp_queue_deep: AtomicU64,
}

/// A running endpoint. Cloning shares it; the task stops when the last clone is dropped.
#[derive(Clone, Debug)]
pub struct Endpoint {
    local: SocketAddr,
    tls_local: Option<SocketAddr>,
    commands: mpsc::UnboundedSender<Command>,
    counters: Arc<TcpCounters>,
    overload: Arc<OverloadCounters>,
    received: Arc<ReceivedCounters>,
    table: Arc<TransactionCounters>,
    udp_probe: Option<Probe>,
    locating: Arc<LocateCounters>,
    /// One permit per location allowed to run ([`Config::max_lookups`]).
    lookups: Arc<Semaphore>,
    max_lookups: usize,
    _task: Arc<AbortOnDrop>,
}

impl Endpoint {
    /// [`Endpoint::bind_with`] these timers and the default TCP bounds.
    ///
    /// # Errors
    /// As [`Endpoint::bind_with`].
    pub async fn bind(addr: SocketAddr, timers: Timers) -> Result<(Self, Events), Error> {
        Self::bind_with(addr, Config::from(timers)).await
    }

    /// Binds `addr` on UDP (port 0 picks one) and TCP at the same address and port, and starts
    /// the endpoint task with `config`. Events arrive on the returned receiver. With port 0, a
    /// UDP port whose TCP port another socket holds is given back and another one is tried
    /// (up to [`PORT_ATTEMPTS`] times): the two protocols' ephemeral ports are independent.
    ///
    /// With a TLS server side, TLS is also bound at the same IP address and its own port.
    ///
    /// # Errors
    /// [`Error::Io`] if the UDP socket cannot be bound, [`Error::TcpBind`] if the TCP port is
    /// taken (on every attempt, with port 0), [`Error::TlsBind`] if the TLS port is taken.
    pub async fn bind_with(addr: SocketAddr, config: Config) -> Result<(Self, Events), Error> {
        let Config {
            timers,
            max_tcp_connections,
            tcp_queue_messages,
            max_tcp_connections_per_peer,
            tcp_read_messages,
            tu_queue_events,
            max_transactions,
            udp_queue_high_water,
            udp_queue_sample_every,
            tls,
            resolver,
            max_lookups,
            locate_deadline,
        } = config;
        let max_lookups = max_lookups.min(Semaphore::MAX_PERMITS);
        let lookups = Arc::new(Semaphore::new(max_lookups));
        let locating = Arc::new(LocateCounters::default());
        let mut attempt = 1;
        let (socket, local, listener) = loop {
            let socket = UdpSocket::bind(addr).await?;
            let local = socket.local_addr()?;
            match crate::tcp::listen(local) {
                Ok(listener) => break (socket, local, listener),
                Err(e) if addr.port() == 0 && e.kind() == std::io::ErrorKind::AddrInUse && attempt < PORT_ATTEMPTS => attempt += 1,
                Err(source) => return Err(Error::TcpBind { addr: local, source }),
            }
        };
        let (tls_listener, tls_acceptor) = match tls.server {
            Some(server) => {
                let at = SocketAddr::new(local.ip(), server.port);
                let listener = TcpListener::bind(at).await.map_err(|source| Error::TlsBind { addr: at, source })?;
                (Some(listener), Some(TlsAcceptor::from(server.config)))
            }
            None => (None, None),
        };
        let tls_local = match &tls_listener {
            Some(l) => Some(l.local_addr()?),
            None => None,
        };
        let udp_probe = match Probe::new(&socket) {
            Ok(probe) => Some(probe),
            Err(e) => {
                tracing::info!(error = %e, "the UDP receive queue cannot be read: no early 503 when it is deep");
                None
            }
        };
        let (commands, rx) = mpsc::unbounded_channel();
        let (events, events_rx) = mpsc::channel(tu_queue_events.max(1));
        let (reports, reports_rx) = mpsc::unbounded_channel();
        let (located, located_rx) = mpsc::unbounded_channel();
        let counters = Arc::new(TcpCounters::default());
        let overload = Arc::new(OverloadCounters::default());
        let received = Arc::new(ReceivedCounters::default());
        let table = Arc::new(TransactionCounters::default());
        let driver = Driver {
            socket,
            listener,
            tls_listener,
            tls_acceptor,
            tls_connector: tls.client.map(TlsConnector::from),
            layer: TransactionLayer::new(timers),
            timers,
            destinations: HashMap::new(),
            schedule: BinaryHeap::new(),
            armed: HashMap::new(),
            pending: HashMap::new(),
            next_id: 0,
            retransmits: HashMap::new(),
            unacknowledged: HashMap::new(),
            connections: HashMap::new(),
            by_peer: HashMap::new(),
            tls_names: HashMap::new(),
            by_size: HashMap::new(),
            resolver,
            located,
            lookups: Arc::clone(&lookups),
            max_lookups,
            locate_deadline,
            locating: Arc::clone(&locating),
            lookup_log: RefusalLog::default(),
            alternatives: HashMap::new(),
            tu_keys: HashMap::new(),
            retried: HashMap::new(),
            next_conn: 0,
            tcp: Setup {
                reports,
                idle: timers.timeout(),
                handshake: timers.timeout().min(TLS_HANDSHAKE_MAX),
                queue: tcp_queue_messages,
                read_messages: tcp_read_messages,
                counters: Arc::clone(&counters),
            },
            max_tcp_connections,
            max_tcp_connections_per_peer,
            events,
            overload: Arc::clone(&overload),
            refusals: Refusals::default(),
            received: Arc::clone(&received),
            max_transactions,
            abandoned: HashMap::new(),
            table: Arc::clone(&table),
            udp_sampler: Sampler {
                probe: udp_probe.clone().filter(|_| udp_queue_high_water > 0),
                high_water: udp_queue_high_water,
                every: udp_queue_sample_every.max(1),
                since: 0,
                at: None,
                streak: 0,
            },
        };
        let task = tokio::spawn(driver.run(rx, reports_rx, located_rx));
        Ok((Self { local, tls_local, commands, counters, overload, received, table, udp_probe, locating, lookups, max_lookups, _task: Arc::new(AbortOnDrop(task)) }, events_rx))
    }

    /// How often the bound on the TU's queue has acted so far.
    pub fn overload_stats(&self) -> OverloadStats {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        OverloadStats {
            requests_refused: load(&self.overload.requests_refused),
            events_dropped: load(&self.overload.events_dropped),
            transactions_full: load(&self.overload.transactions_full),
            udp_queue_deep: load(&self.overload.udp_queue_deep),
        }
    }

    /// What RFC 3263 server location has done so far, and the locations running now.
    pub fn locate_stats(&self) -> LocateStats {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        LocateStats {
            lookups_refused: load(&self.locating.lookups_refused),
            deadlines_passed: load(&self.locating.deadlines_passed),
            failovers: load(&self.locating.failovers),
            lookups_running: self.max_lookups.saturating_sub(self.lookups.available_permits()),
        }
    }

    /// How many transactions the endpoint holds now (as of the last thing its task did).
    pub fn transactions(&self) -> Transactions {
        let load = |c: &AtomicUsize| c.load(Ordering::Relaxed);
        Transactions { client: load(&self.table.client), server: load(&self.table.server), abandoned: load(&self.table.abandoned) }
    }

    /// The UDP socket's receive queue now, read from the kernel ([`crate::udp_queue`]);
    /// `None` where it cannot be read (not Linux, no `/proc`).
    pub fn udp_queue(&self) -> Option<UdpQueue> {
        self.udp_probe.as_ref().and_then(|p| p.read().ok())
    }

    /// How many SIP messages arrived over each transport so far.
    pub fn received(&self) -> Received {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Received { udp: load(&self.received.udp), tcp: load(&self.received.tcp), tls: load(&self.received.tls) }
    }

    /// How often the TCP bounds (which TLS connections count against) have acted so far, and
    /// how many TLS handshakes succeeded and failed.
    pub fn tcp_stats(&self) -> TcpStats {
        TcpStats::read(&self.counters)
    }

    /// The bound address (UDP and TCP).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The TLS address, when the endpoint has a TLS server side.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_local
    }

    /// Hands a command to the endpoint task.
    pub fn send(&self, command: Command) -> Result<(), Error> {
        self.commands.send(command).map_err(|_| Error::Stopped)
    }
}

/// How a transaction's messages travel.
#[derive(Clone, Debug)]
enum Route {
    /// Datagrams to this address.
    Udp(SocketAddr),
    /// A TCP connection: `conn` while one is known, else the one open to `to`, else a new one
    /// to `to` (for a server transaction, the request's source address and `Via` sent-by port,
    /// RFC 3261 §18.2.2).
    Tcp { conn: Option<ConnId>, to: SocketAddr },
    /// A TLS connection, found as a TCP one; a new one verifies the server as `name` (RFC 5922
    /// §7.2). Without a name (a server transaction's responses, a URI host that is no valid
    /// DNS name) no new connection is opened: the send fails.
    Tls { conn: Option<ConnId>, to: SocketAddr, name: Option<ServerName<'static>> },
}

impl Route {
    fn reliability(&self) -> Reliability {
        match self {
            Self::Udp(_) => Reliability::Unreliable,
            Self::Tcp { .. } | Self::Tls { .. } => Reliability::Reliable,
        }
    }

    fn address(&self) -> SocketAddr {
        match self {
            Self::Udp(to) | Self::Tcp { to, .. } | Self::Tls { to, .. } => *to,
        }
    }

    /// The connection the route uses, if it is over one that is known.
    fn conn(&self) -> Option<ConnId> {
        match self {
            Self::Udp(_) => None,
            Self::Tcp { conn, .. } | Self::Tls { conn, .. } => *conn,
        }
    }
}

/// What a scheduled timer belongs to.
#[derive(Clone, Debug)]
enum Due {
    Transaction(TransactionKey, Timer),
    Retransmit2xx(u64),
    RetransmitReliable(u64),
    /// The end of the 64·T1 during which a given-up INVITE's late final responses are ACKed.
    Abandoned(TransactionKey),
}

/// An INVITE client transaction the TU gave up ([`Command::Abandon`]): all that is needed to
/// ACK a late non-2xx final response as the transaction would have (RFC 3261 §17.1.1.3).
struct Abandoned {
    /// The ACK without its `To`, which comes from the response (with its tag).
    ack: Request,
    /// Where the INVITE went.
    route: Route,
}

/// A reliable provisional response being retransmitted until its PRACK (RFC 3262 §3).
struct Unacknowledged {
    key: TransactionKey,
    response: Response,
    call_id: Bytes,
    rack: RAck,
    interval: Duration,
    give_up: Instant,
}

/// A 2xx being retransmitted until its ACK (§13.3.1.4).
struct Retransmit {
    bytes: Bytes,
    to: SocketAddr,
    call_id: Bytes,
    cseq: u32,
    interval: Duration,
    give_up: Instant,
}

struct Driver {
    socket: UdpSocket,
    listener: TcpListener,
    /// The TLS port and certificate, with a TLS server side.
    tls_listener: Option<TcpListener>,
    tls_acceptor: Option<TlsAcceptor>,
    /// The trusted roots (and client certificate), with a TLS client side.
    tls_connector: Option<TlsConnector>,
    layer: TransactionLayer,
    timers: Timers,
    /// Client transaction → next hop; server transaction → where its responses go.
    destinations: HashMap<TransactionKey, Route>,
    schedule: BinaryHeap<Reverse<(Instant, u64)>>,
    /// Armed transaction timers → the schedule id that is current for them.
    armed: HashMap<(TransactionKey, Timer), u64>,
    /// Schedule id → what fires.
    pending: HashMap<u64, Due>,
    next_id: u64,
    retransmits: HashMap<u64, Retransmit>,
    unacknowledged: HashMap<u64, Unacknowledged>,
    /// Open TCP and TLS connections, and which one serves each remote address on each.
    connections: HashMap<ConnId, Connection>,
    by_peer: HashMap<(Kind, SocketAddr), ConnId>,
    /// The server name each TLS connection this endpoint opened verified (RFC 5922 §7.2): a
    /// request for another name to the same address (two names located to one server, RFC
    /// 3263) does not reuse it, as its certificate was not checked for that name.
    tls_names: HashMap<ConnId, ServerName<'static>>,
    /// Client transactions on TCP only for their size → their request as it was for UDP.
    by_size: HashMap<TransactionKey, Request>,
    /// The lookups of [`Command::RequestUri`].
    resolver: Option<Arc<dyn Resolve>>,
    /// Where lookup tasks hand their targets back.
    located: mpsc::UnboundedSender<Located>,
    /// One permit per location allowed to run ([`Config::max_lookups`]); a lookup task holds
    /// its own until it ends.
    lookups: Arc<Semaphore>,
    max_lookups: usize,
    locate_deadline: Duration,
    locating: Arc<LocateCounters>,
    /// The warning lines of locations refused at [`Config::max_lookups`].
    lookup_log: RefusalLog,
    /// Client transactions sent to a located target → the targets left to try (RFC 3263 §4.3).
    alternatives: HashMap<TransactionKey, Located>,
    /// A request sent again to another target with a new branch (§4.3): its client
    /// transaction → the key the TU knows (that of the request it handed over).
    tu_keys: HashMap<TransactionKey, TransactionKey>,
    /// The other way: the TU's key → the client transaction that now stands for it.
    retried: HashMap<TransactionKey, TransactionKey>,
    next_conn: ConnId,
    /// What each connection is started with.
    tcp: Setup,
    max_tcp_connections: usize,
    max_tcp_connections_per_peer: usize,
    events: mpsc::Sender<Event>,
    overload: Arc<OverloadCounters>,
    refusals: Refusals,
    received: Arc<ReceivedCounters>,
    max_transactions: usize,
    /// Given-up INVITE client transactions, until 64·T1 after they were given up.
    abandoned: HashMap<TransactionKey, Abandoned>,
    table: Arc<TransactionCounters>,
    udp_sampler: Sampler,
}

/// A [`Command::RequestUri`] located: the targets left to try, in order.
struct Located {
    /// The request to send: as the TU handed it over, with a new branch once it has been
    /// sent again after a failure (RFC 3263 §4.3).
    request: Request,
    uri: sipx_sip::Uri,
    /// The TU's key for it (that of the request it handed over).
    key: TransactionKey,
    targets: Vec<crate::locate::Target>,
    /// Why there are none, when none were found.
    error: Option<String>,
    /// [`Command::StatelessUri`]: sent to the first target, outside any transaction.
    stateless: bool,
}

/// Samples the UDP receive queue every [`Config::udp_queue_sample_every`] datagrams, and at
/// the first datagram once the last sample is [`UDP_QUEUE_SAMPLE_MAX_AGE`] old, and remembers
/// whether the last [`UDP_QUEUE_DEEP_SAMPLES`] samples were all above
/// [`Config::udp_queue_high_water`].
struct Sampler {
    /// None: the check is off, or the queue cannot be read.
    probe: Option<Probe>,
    high_water: u8,
    every: u32,
    since: u32,
    /// When the last sample was taken.
    at: Option<Instant>,
    /// Consecutive samples above the high-water mark, up to [`UDP_QUEUE_DEEP_SAMPLES`].
    streak: u8,
}

/// How many consecutive samples must find the UDP receive queue above its high-water mark
/// before new requests are refused. One deep sample is often a burst (the client's sender, or
/// a pause of this task) that the task drains before the next sample: measured with SIPp at
/// 20 000 req/s, two thirds of this endpoint's capacity, and a 50 % mark, a single-sample rule
/// refused 2.8 % of the requests, two samples 0.8 %, four 0.5 %; a flood keeps the queue deep
/// from one sample to the next.
pub const UDP_QUEUE_DEEP_SAMPLES: u8 = 4;

/// How long a sample of the UDP receive queue stands at most: at a low rate, a burst's verdict
/// must not outlive the burst (nor an idle queue's the next burst) for `every` datagrams. A
/// flood reaches `every` datagrams long before.
pub const UDP_QUEUE_SAMPLE_MAX_AGE: Duration = Duration::from_millis(10);

impl Sampler {
    /// Counts a datagram received at `now`, sampling the queue when one is due; whether the
    /// last [`UDP_QUEUE_DEEP_SAMPLES`] samples were above the high-water mark.
    fn deep(&mut self, now: Instant) -> bool {
        let Some(probe) = &self.probe else { return false };
        self.since += 1;
        if self.since >= self.every || self.at.is_none_or(|at| now.saturating_duration_since(at) >= UDP_QUEUE_SAMPLE_MAX_AGE) {
            self.since = 0;
            self.at = Some(now);
            let above = probe.read().is_ok_and(|q| q.above(self.high_water));
            self.streak = if above { self.streak.saturating_add(1).min(UDP_QUEUE_DEEP_SAMPLES) } else { 0 };
        }
        self.streak >= UDP_QUEUE_DEEP_SAMPLES
    }
}

/// Why a request was refused for overload (one [`RefusalLog`] each).
#[derive(Clone, Copy, Debug)]
enum Refusal {
    /// The TU's queue was three quarters full: 503 through the transaction.
    TuQueue,
    /// [`Config::max_transactions`]: 503 statelessly.
    Table,
    /// The UDP receive queue was deep: 503 statelessly, before any transaction.
    UdpQueue,
}

/// The rate-limited overload log lines, one limiter per [`Refusal`], so that one reason does
/// not hide another.
#[derive(Default)]
struct Refusals {
    tu_queue: RefusalLog,
    table: RefusalLog,
    udp_queue: RefusalLog,
}

impl Refusals {
    fn log(&mut self, reason: Refusal) -> &mut RefusalLog {
        match reason {
            Refusal::TuQueue => &mut self.tu_queue,
            Refusal::Table => &mut self.table,
            Refusal::UdpQueue => &mut self.udp_queue,
        }
    }
}

/// At most one warning line per second for one reason of overload refusals: a flood would
/// otherwise write one per refused request, adding disk load to the overload (each refusal is
/// logged at `debug` level). The counts are in [`OverloadStats`] (and a CSCF's metrics); each
/// line says how many went unlogged before it.
#[derive(Default)]
struct RefusalLog {
    last: Option<Instant>,
    unlogged: u64,
}

impl RefusalLog {
    /// The refusals left unlogged since the last line, if a line is due at `now`.
    fn due(&mut self, now: Instant) -> Option<u64> {
        if self.last.is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(1)) {
            self.unlogged += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }
}

impl Driver {
    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>, mut reports: mpsc::UnboundedReceiver<Report>, mut located: mpsc::UnboundedReceiver<Located>) {
        let mut buf = vec![0u8; 65_535];
        loop {
            let next = self.schedule.peek().map(|Reverse((at, _))| *at);
            tokio::select! {
                received = self.socket.recv_from(&mut buf) => match received {
                    Ok((n, source)) => {
                        let datagram = Bytes::copy_from_slice(buf.get(..n).unwrap_or_default());
                        self.on_datagram(datagram, source).await;
                    }
                    Err(e) => tracing::warn!(error = %e, "SIP UDP receive"),
                },
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, peer)) => self.on_accept(stream, peer, Kind::Tcp),
                    Err(e) => tracing::warn!(error = %e, "SIP TCP accept"),
                },
                accepted = accept(self.tls_listener.as_ref()) => match accepted {
                    Ok((stream, peer)) => self.on_accept(stream, peer, Kind::Tls),
                    Err(e) => tracing::warn!(error = %e, "SIP TLS accept"),
                },
                report = reports.recv() => match report {
                    Some(Report::Message { conn, kind, peer, message, credit }) => {
                        self.on_message(*message, peer, Some((conn, kind))).await;
                        // Handled: the connection may read one more.
                        drop(credit);
                    }
                    Some(Report::Closed { conn, peer, end }) => self.on_closed(conn, peer, end).await,
                    // The driver holds a sender itself.
                    None => return,
                },
                command = commands.recv() => match command {
                    Some(c) => self.on_command(c).await,
                    None => return,
                },
                // The driver holds a sender itself.
                Some(found) = located.recv() => self.on_located(found).await,
                () = sleep_until(next) => self.fire_due().await,
            }
            self.publish_counts();
        }
    }

    /// Makes [`Endpoint::transactions`] current.
    fn publish_counts(&self) {
        let (client, server) = self.layer.len();
        self.table.client.store(client, Ordering::Relaxed);
        self.table.server.store(server, Ordering::Relaxed);
        self.table.abandoned.store(self.abandoned.len(), Ordering::Relaxed);
    }

    /// Which maximum of connections, if any, leaves no room for one more with `peer`.
    fn no_room(&self, peer: SocketAddr) -> Option<Cap> {
        if self.connections.len() >= self.max_tcp_connections {
            return Some(Cap::Total);
        }
        let host = peer_host(peer.ip());
        let with_peer = self.connections.values().filter(|c| peer_host(c.peer().ip()) == host).count();
        (with_peer >= self.max_tcp_connections_per_peer).then_some(Cap::PerPeer)
    }

    /// A new connection from `peer` (on the TLS port: `kind` TLS), closed at once (dropped)
    /// if the endpoint already holds its maximum, overall or with `peer`'s IP address.
    fn on_accept(&mut self, stream: tokio::net::TcpStream, peer: SocketAddr, kind: Kind) {
        let transport = kind.name();
        match self.no_room(peer) {
            Some(Cap::Total) => {
                TcpCounters::bump(&self.tcp.counters.accepts_refused);
                tracing::warn!(%peer, transport, max = self.max_tcp_connections, "SIP connection closed at once: too many connections");
                return;
            }
            Some(Cap::PerPeer) => {
                TcpCounters::bump(&self.tcp.counters.accepts_refused_per_peer);
                tracing::warn!(%peer, transport, max = self.max_tcp_connections_per_peer, "SIP connection closed at once: too many connections from that address");
                return;
            }
            None => {}
        }
        let tls = match kind {
            Kind::Tcp => None,
            // Only the TLS listener accepts TLS, and it exists only with an acceptor.
            Kind::Tls => match &self.tls_acceptor {
                Some(acceptor) => Some(acceptor.clone()),
                None => return,
            },
        };
        let conn = self.next_conn;
        self.next_conn += 1;
        tracing::debug!(%peer, transport, "SIP connection accepted");
        self.connections.insert(conn, Connection::accepted(conn, peer, stream, tls, &self.tcp));
        self.by_peer.insert((kind, peer), conn);
    }

    /// A connection ended: forget it, and if it failed, fail the client transactions that
    /// were using it (RFC 3261 §17.1.4) — except that a request on TCP only for its size goes
    /// over UDP instead when the connection was refused (§18.1.1, for RFC 2543 peers without
    /// TCP). A server transaction keeps its route: its next response opens a new connection
    /// (§18.2.2).
    async fn on_closed(&mut self, conn: ConnId, peer: SocketAddr, end: End) {
        self.tls_names.remove(&conn);
        if let Some(closed) = self.connections.remove(&conn) {
            let at = (closed.kind(), peer);
            if self.by_peer.get(&at) == Some(&conn) {
                self.by_peer.remove(&at);
            }
        }
        if end == End::Orderly {
            return;
        }
        let broken: Vec<TransactionKey> = self
            .destinations
            .iter()
            .filter(|(key, route)| route.conn() == Some(conn) && self.layer.client_state(key).is_some())
            .map(|(key, _)| key.clone())
            .collect();
        for key in broken {
            let outputs = self.layer.on_transport_error(&key);
            match (end, self.by_size.remove(&key)) {
                (End::Refused, Some(request)) => {
                    tracing::info!(%peer, ?key, "TCP refused: the request goes over UDP (RFC 3261 §18.1.1)");
                    // The TU hears nothing of the TCP attempt: the same request, same branch,
                    // starts again over UDP.
                    let outputs = outputs.into_iter().filter(|o| !matches!(o, Output::ToTu(_))).collect();
                    self.perform(&key, outputs, None).await;
                    if let Some((key, outputs)) = self.layer.send_request(request, Reliability::Unreliable) {
                        self.destinations.insert(key.clone(), Route::Udp(peer));
                        self.perform(&key, outputs, None).await;
                    }
                }
                (End::Refused, None) if self.alternatives.get(&key).is_some_and(|a| !a.targets.is_empty()) => {
                    if let Some(next) = self.alternatives.remove(&key) {
                        tracing::info!(%peer, ?key, "connection refused: the request goes to the next target (RFC 3263 §4.3)");
                        let outputs = outputs.into_iter().filter(|o| !matches!(o, Output::ToTu(_))).collect();
                        self.perform(&key, outputs, None).await;
                        self.send_located(next).await;
                    }
                }
                _ => {
                    tracing::info!(%peer, ?key, "client transaction failed: transport error on its connection");
                    self.perform(&key, outputs, None).await;
                }
            }
        }
    }

    async fn on_datagram(&mut self, datagram: Bytes, source: SocketAddr) {
        // Keep-alive CRLFs (RFC 5626 §4.4.1) and empty datagrams are not messages.
        if datagram.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        let deep = self.udp_sampler.deep(Instant::now());
        match parse_datagram(datagram, &Limits::datagram()) {
            Ok(message) => {
                if !(deep && self.refuse_early(&message, source).await) {
                    self.on_message(message, source, None).await;
                }
            }
            Err(e) => {
                tracing::info!(%source, error = %e, "dropped a datagram that is not SIP");
                self.report(Event::Malformed { source, reason: e.to_string() });
            }
        }
    }

    /// A message from `source`, over UDP or over TCP or TLS connection `conn`.
    async fn on_message(&mut self, message: Message, source: SocketAddr, conn: Option<(ConnId, Kind)>) {
        tracing::debug!(%source, transport = conn.map_or("UDP", |(_, kind)| kind.name()), first_line = %first_line(&message), "SIP in");
        let counter = match conn {
            None => &self.received.udp,
            Some((_, Kind::Tcp)) => &self.received.tcp,
            Some((_, Kind::Tls)) => &self.received.tls,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if let Message::Request(r) = &message
            && r.method == Method::Ack
        {
            self.ack_received(&r.headers);
        }
        if let Message::Request(r) = &message
            && r.method == Method::Prack
        {
            self.prack_received(&r.headers);
        }
        // Only a request that starts something new may be refused for overload: a CANCEL or an
        // in-dialog request (BYE, re-INVITE, PRACK, …: a To tag) belongs to what the TU knows.
        let refusable = matches!(&message, Message::Request(r) if r.method != Method::Cancel && crate::dialog::DialogId::of_received_request(r).is_none());
        let route = match conn {
            None => Route::Udp(source),
            Some((conn, Kind::Tcp)) => Route::Tcp { conn: Some(conn), to: reconnect_address(message.headers(), source) },
            // Responses stay on this connection, or one the peer opens again: no new TLS
            // connection towards a client (which may have no certificate to show).
            Some((conn, Kind::Tls)) => Route::Tls { conn: Some(conn), to: source, name: None },
        };
        let reliability = route.reliability();
        match self.layer.receive(message, reliability) {
            Dispatch::Created { key, outputs } => {
                self.destinations.insert(key.clone(), route);
                let full = self.transactions_full();
                if refusable && (full || self.overloaded()) {
                    self.refuse_for_overload(&key, outputs, full).await;
                } else {
                    self.perform(&key, outputs, Some(source)).await;
                }
            }
            Dispatch::Matched { key, outputs } => self.perform(&key, outputs, Some(source)).await,
            Dispatch::Unmatched(message) => match *message {
                Message::Request(r) if r.method == Method::Ack => {
                    self.emit(Event::Ack { request: Box::new(r), source }).await;
                }
                Message::Response(r) if r.status.code() >= 300 && self.ack_abandoned(&r).await => {}
                other => self.report(Event::Stray { message: Box::new(other), source }),
            },
        }
    }

    async fn on_command(&mut self, command: Command) {
        match command {
            Command::Request { mut request, to } => {
                let as_for_udp = request.clone();
                let route = request_route(&mut request, to);
                match self.layer.send_request(request, route.reliability()) {
                    Some((key, outputs)) => {
                        if matches!(route, Route::Tcp { .. }) {
                            // On TCP only for its size (a TLS request never leaves TLS).
                            self.by_size.insert(key.clone(), as_for_udp);
                        }
                        self.destinations.insert(key.clone(), route);
                        self.perform(&key, outputs, None).await;
                    }
                    None => tracing::warn!(%to, "request without a usable Via not sent"),
                }
            }
            Command::RequestUri { request, uri } => self.locate(request, uri, false).await,
            Command::StatelessUri { request, uri } => self.locate(request, uri, true).await,
            Command::Respond { key, response } => {
                if response.status.is_final() {
                    self.unacknowledged.retain(|_, u| u.key != key);
                }
                let outputs = self.layer.send_response(&key, response);
                self.perform(&key, outputs, None).await;
            }
            Command::Respond2xx { key, response } => {
                self.unacknowledged.retain(|_, u| u.key != key);
                let route = self.destinations.get(&key).cloned();
                let call_id = response.headers.get(&HeaderName::CallId).map(|h| Bytes::copy_from_slice(h.value().trim_ascii()));
                let cseq = response.headers.typed::<sipx_sip::CSeq>().and_then(Result::ok).map(|c| c.sequence);
                let bytes = Message::Response(response.clone()).to_bytes();
                let outputs = self.layer.send_response(&key, response);
                self.perform(&key, outputs, None).await;
                // Over TCP the 2xx is sent once (§17.2.1).
                if let (Some(Route::Udp(to)), Some(call_id), Some(cseq)) = (route, call_id, cseq) {
                    let now = Instant::now();
                    let id = self.arm(now + self.timers.t1, None);
                    self.pending.insert(id, Due::Retransmit2xx(id));
                    let give_up = now + self.timers.timeout();
                    self.retransmits.insert(id, Retransmit { bytes, to, call_id, cseq, interval: self.timers.t1, give_up });
                }
            }
            Command::RespondReliable { key, response } => {
                let call_id = response.headers.get(&HeaderName::CallId).map(|h| Bytes::copy_from_slice(h.value().trim_ascii()));
                let rack = reliable_rack(&response.headers);
                let outputs = self.layer.send_response(&key, response.clone());
                self.perform(&key, outputs, None).await;
                match (call_id, rack) {
                    (Some(call_id), Some(rack)) => {
                        let now = Instant::now();
                        let id = self.arm(now + self.timers.t1, None);
                        self.pending.insert(id, Due::RetransmitReliable(id));
                        let give_up = now + self.timers.timeout();
                        self.unacknowledged.insert(id, Unacknowledged { key, response, call_id, rack, interval: self.timers.t1, give_up });
                    }
                    _ => tracing::warn!("reliable provisional response without Call-ID, RSeq or CSeq: sent once"),
                }
            }
            Command::Abandon { key } => {
                let key = self.retried.get(&key).cloned().unwrap_or(key);
                self.abandon(&key);
            }
            Command::KeepAlive { to } => {
                let open = [Kind::Tls, Kind::Tcp].into_iter().find_map(|kind| self.by_peer.get(&(kind, to)));
                if let Some(connection) = open.and_then(|id| self.connections.get(id)) {
                    // A full queue already carries traffic: no ping needed.
                    let _ = connection.send(Bytes::from_static(crate::stream::PING));
                }
            }
            Command::Stateless { mut message, to } => {
                let route = match &mut message {
                    Message::Request(request) => request_route(request, to),
                    // A response travels by the transport its top Via names (§18.2.2).
                    Message::Response(response) if top_via_says(&response.headers, "TCP") => Route::Tcp { conn: None, to },
                    Message::Response(response) if top_via_says(&response.headers, "TLS") => Route::Tls { conn: None, to, name: None },
                    Message::Response(_) => Route::Udp(to),
                };
                self.transmit(route, &message).await;
            }
        }
    }

    /// [`Command::RequestUri`]: a numeric host is sent to at once; a host name is looked up on
    /// a task of its own, which hands the targets back to [`Self::on_located`]. `stateless`:
    /// [`Command::StatelessUri`].
    async fn locate(&mut self, request: Request, uri: sipx_sip::Uri, stateless: bool) {
        let Some(key) = TransactionKey::from_sent_request(&request) else {
            tracing::warn!(%uri, "request without a usable Via not sent");
            return;
        };
        // A CANCEL goes where its INVITE went (RFC 3261 §9.1), not to a new lookup's pick; if
        // the INVITE was sent again to another target (RFC 3263 §4.3), where it went last, with
        // its branch.
        if request.method == Method::Cancel && !stateless {
            let invite = TransactionKey::for_cancelled_invite(&request).map(|k| self.retried.get(&k).cloned().unwrap_or(k));
            let invite_route = invite.as_ref().and_then(|k| self.destinations.get(k).cloned());
            if let Some(route) = invite_route {
                let mut request = request;
                let branch = invite.as_ref().and_then(|k| self.layer.client_request(k)).and_then(|r| r.headers.typed::<Via>()?.ok()?.branch().map(<[u8]>::to_vec));
                if let Some(branch) = branch.filter(|_| invite.as_ref().is_some_and(|k| self.tu_keys.contains_key(k)))
                    && !set_top_via_branch(&mut request.headers, &String::from_utf8_lossy(&branch))
                {
                    tracing::warn!(%uri, "CANCEL without a Via branch to match its INVITE sent again");
                }
                let via = match &route {
                    Route::Udp(_) => "UDP",
                    Route::Tcp { .. } => "TCP",
                    Route::Tls { .. } => "TLS",
                };
                if !top_via_says(&request.headers, via) && !set_top_via_transport(&mut request.headers, via) {
                    tracing::warn!(%uri, "CANCEL without a top Via to name its transport");
                }
                if let Some((sent, outputs)) = self.layer.send_request(request, route.reliability()) {
                    if sent != key {
                        // Its responses are the TU's under the key of the CANCEL it handed over.
                        self.retried.insert(key.clone(), sent.clone());
                        self.tu_keys.insert(sent.clone(), key);
                    }
                    self.destinations.insert(sent.clone(), route);
                    self.perform(&sent, outputs, None).await;
                }
                return;
            }
        }
        match (crate::locate::start(&uri), self.resolver.clone()) {
            (Ok(crate::locate::Start::Done(target)), _) => self.on_located(Located { request, uri, key, targets: vec![target], error: None, stateless }).await,
            (Err(e), _) => self.on_located(Located { request, uri, key, targets: Vec::new(), error: Some(e.to_string()), stateless }).await,
            (Ok(_), None) => self.on_located(Located { request, uri, key, targets: Vec::new(), error: Some("a host name and no DNS resolver".into()), stateless }).await,
            (Ok(_), Some(resolver)) => {
                let Ok(permit) = Arc::clone(&self.lookups).try_acquire_owned() else {
                    self.locating.lookups_refused.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%uri, "next hop not located: too many DNS lookups running");
                    if let Some(unlogged) = self.lookup_log.due(Instant::now()) {
                        tracing::warn!(%uri, max = self.max_lookups, unlogged, "next hop not located: Config::max_lookups DNS locations already running (RFC 3263); the request fails as unreachable");
                    }
                    let error = Some("too many DNS lookups running (Config::max_lookups)".to_owned());
                    self.on_located(Located { request, uri, key, targets: Vec::new(), error, stateless }).await;
                    return;
                };
                let back = self.located.clone();
                let deadline = self.locate_deadline;
                let counters = Arc::clone(&self.locating);
                // RFC 3263 §4.4: one stateless request (its retransmissions too) goes to one
                // target.
                let mut rng = if stateless {
                    let call_id = request.headers.get(&HeaderName::CallId).map(|h| h.value().trim_ascii().to_vec()).unwrap_or_default();
                    rand::rngs::StdRng::seed_from_u64(stable_hash(&call_id))
                } else {
                    rand::rngs::StdRng::from_rng(&mut rand::rng())
                };
                tokio::spawn(async move {
                    let (targets, error) = match tokio::time::timeout(deadline, crate::locate::locate_with(&*resolver, &uri, &mut rng)).await {
                        Ok(Ok(targets)) => (targets, None),
                        Ok(Err(e)) => (Vec::new(), Some(e.to_string())),
                        Err(_) => {
                            counters.deadlines_passed.fetch_add(1, Ordering::Relaxed);
                            (Vec::new(), Some(format!("not located within {deadline:?} (Config::locate_deadline)")))
                        }
                    };
                    // The slot is free before the endpoint hears of the result.
                    drop(permit);
                    // The endpoint may be gone: nothing to send then.
                    let _ = back.send(Located { request, uri, key, targets, error, stateless });
                });
            }
        }
    }

    /// A location ended: a stateless request goes to its first target (or is dropped), a
    /// request of a client transaction to [`Self::send_located`].
    async fn on_located(&mut self, located: Located) {
        if !located.stateless {
            return self.send_located(located).await;
        }
        let Located { mut request, uri, targets, error, .. } = located;
        let Some(target) = targets.first() else {
            tracing::info!(%uri, error = error.as_deref().unwrap_or("no target"), method = %request.method, "stateless request dropped: next hop not located");
            return;
        };
        let route = located_route(&mut request, target, &uri);
        self.transmit(route, &Message::Request(request)).await;
    }

    /// Sends a located request to its first target left, keeping the others for a refused
    /// connection, a timeout, a transport error or a 503 (RFC 3263 §4.3); none left: the TU
    /// gets [`Event::Timeout`] under the key it knows.
    async fn send_located(&mut self, mut located: Located) {
        if located.targets.is_empty() {
            tracing::info!(uri = %located.uri, error = located.error.as_deref().unwrap_or("every target refused"), "next hop not located: the client transaction fails");
            self.emit(Event::Timeout { key: located.key }).await;
            return;
        }
        let target = located.targets.remove(0);
        let mut request = located.request.clone();
        let as_for_udp = request.clone();
        let route = located_route(&mut request, &target, &located.uri);
        match self.layer.send_request(request, route.reliability()) {
            Some((key, outputs)) => {
                if target.transport == crate::locate::Transport::Udp && matches!(route, Route::Tcp { .. }) {
                    self.by_size.insert(key.clone(), as_for_udp);
                }
                if key != located.key {
                    // Sent again with a new branch: the TU still knows it by its own key.
                    self.retried.insert(located.key.clone(), key.clone());
                    self.tu_keys.insert(key.clone(), located.key.clone());
                }
                self.destinations.insert(key.clone(), route);
                let has_more = !located.targets.is_empty();
                if has_more {
                    self.alternatives.insert(key.clone(), located);
                }
                self.perform(&key, outputs, None).await;
            }
            None => tracing::warn!(to = %target.addr, "request without a usable Via not sent"),
        }
    }

    /// Performs a transaction's outputs in order. A failure of a client transaction sent to a
    /// located target with targets left (a timeout, a transport error, a 503) is not told to
    /// the TU: the request goes to the next target with a new branch ([`Self::fail_over`]).
    async fn perform(&mut self, key: &TransactionKey, outputs: Vec<Output>, source: Option<SocketAddr>) {
        let mut next = None;
        for output in outputs {
            match output {
                Output::Send(message) => match self.destinations.get(key).cloned() {
                    Some(route) => {
                        let route = self.transmit(route, &message).await;
                        if let Some(r) = self.destinations.get_mut(key) {
                            *r = route;
                        }
                    }
                    None => tracing::warn!(?key, "no destination for a transaction message"),
                },
                Output::SetTimer { timer, after } => {
                    let id = self.arm(Instant::now() + after, Some((key.clone(), timer)));
                    self.pending.insert(id, Due::Transaction(key.clone(), timer));
                }
                Output::ClearTimer(timer) => {
                    if let Some(id) = self.armed.remove(&(key.clone(), timer)) {
                        self.pending.remove(&id);
                    }
                }
                Output::ToTu(event) => match self.next_target(key, &event) {
                    Some(failure) => next = Some(failure),
                    None => self.deliver(key, *event, source).await,
                },
                Output::Terminated(_) => self.forget(key),
                _ => tracing::warn!("unknown transaction output ignored"),
            }
        }
        if let Some((located, why)) = next {
            // Boxed: sending performs the new transaction's outputs.
            Box::pin(self.fail_over(key, located, why)).await;
        }
    }

    /// RFC 3263 §4.3: when client transaction `key`, sent to a located target, times out, gets
    /// a transport error or a 503 response (RFC 3261 §21.5.4: that server is unavailable), and
    /// its location has targets left, those targets (taken out of [`Self::alternatives`]) and
    /// what failed; else `None`, and the TU hears of it. A refused connection is handled
    /// before this ([`Self::on_closed`]: same branch, nothing reached that target).
    fn next_target(&mut self, key: &TransactionKey, event: &TuEvent) -> Option<(Located, &'static str)> {
        let why = match event {
            TuEvent::Timeout => "no final response in time",
            TuEvent::TransportError => "transport error",
            TuEvent::Response(response) if response.status.code() == 503 => "503 Service Unavailable",
            _ => return None,
        };
        if self.alternatives.get(key).is_none_or(|a| a.targets.is_empty()) {
            return None;
        }
        self.alternatives.remove(key).map(|located| (located, why))
    }

    /// Sends the request of failed client transaction `failed` to the next target of its
    /// location, as RFC 3263 §4.3 asks: a new request identical to the previous but for a new
    /// `Via` branch, so a new client transaction (the failed one ends on its own timers,
    /// absorbing retransmissions of its 503). The TU keeps its key: responses and the final
    /// timeout of the new transaction reach it under that key, and its CANCEL and
    /// [`Command::Abandon`] act on the new transaction.
    async fn fail_over(&mut self, failed: &TransactionKey, mut located: Located, why: &str) {
        let branch = format!("z9hG4bK{:016x}", rand::random::<u64>());
        if !set_top_via_branch(&mut located.request.headers, &branch) {
            tracing::warn!(uri = %located.uri, "request without a Via branch to change: not sent to the next target");
            self.emit(Event::Timeout { key: located.key }).await;
            return;
        }
        self.locating.failovers.fetch_add(1, Ordering::Relaxed);
        let next = located.targets.first().map_or_else(String::new, |t| t.addr.to_string());
        tracing::info!(uri = %located.uri, ?failed, why, %next, "a located target failed: the request goes to the next with a new branch (RFC 3263 §4.3)");
        self.send_located(located).await;
    }

    async fn deliver(&mut self, key: &TransactionKey, event: TuEvent, source: Option<SocketAddr>) {
        let source = source.or_else(|| self.destinations.get(key).map(|r| r.address()));
        // A request sent again to another target (RFC 3263 §4.3) is the TU's under its own key.
        let tu_key = self.tu_keys.get(key).unwrap_or(key).clone();
        let event = match (event, source) {
            (TuEvent::Request(request), Some(source)) => Event::Request { key: key.clone(), request, source },
            (TuEvent::Response(response), _) => Event::Response { key: tu_key, response },
            (TuEvent::Ack(request), Some(source)) => Event::Ack { request, source },
            (TuEvent::Timeout | TuEvent::TransportError, _) => Event::Timeout { key: tu_key },
            _ => return,
        };
        self.emit(event).await;
    }

    /// Drops what the driver keeps for transaction `key` (its route, its timers).
    fn forget(&mut self, key: &TransactionKey) {
        self.destinations.remove(key);
        self.by_size.remove(key);
        self.alternatives.remove(key);
        if let Some(tu_key) = self.tu_keys.remove(key)
            && self.retried.get(&tu_key) == Some(key)
        {
            self.retried.remove(&tu_key);
        }
        for timer in Timer::ALL {
            if let Some(id) = self.armed.remove(&(key.clone(), timer)) {
                self.pending.remove(&id);
            }
        }
    }

    /// [`Command::Abandon`]: removes client transaction `key` if it has no final response yet,
    /// sending nothing. The transaction layer of `sipx-sip` removes a client transaction only
    /// when it ends; its transport-error input ends it at once, without sending anything, and
    /// the TU event that produces is dropped here (the TU asked for the end).
    fn abandon(&mut self, key: &TransactionKey) {
        use sipx_sip::transaction::ClientState;
        if !matches!(self.layer.client_state(key), Some(ClientState::Calling | ClientState::Trying | ClientState::Proceeding)) {
            return;
        }
        let ack = self.layer.client_request(key).filter(|r| r.method == Method::Invite).map(ack_without_to);
        let route = self.destinations.get(key).cloned();
        // Outputs: the TU event and `Terminated`, nothing to send.
        let _ = self.layer.on_transport_error(key);
        self.forget(key);
        tracing::info!(?key, invite = ack.is_some(), "client transaction given up by the TU (RFC 3261 §9.1)");
        if let (Some(ack), Some(route)) = (ack, route) {
            let id = self.arm(Instant::now() + self.timers.timeout(), None);
            self.pending.insert(id, Due::Abandoned(key.clone()));
            self.abandoned.insert(key.clone(), Abandoned { ack, route });
        }
    }

    /// A non-2xx final response that matched no transaction: if it answers an INVITE given up
    /// less than 64·T1 ago, it is ACKed as its transaction would have done (RFC 3261
    /// §17.1.1.3: same branch, `To` from the response) and true is returned; the TU, which gave
    /// up, is not told.
    async fn ack_abandoned(&mut self, response: &Response) -> bool {
        let Some(key) = TransactionKey::from_response(response) else { return false };
        let Some(abandoned) = self.abandoned.get(&key) else { return false };
        let mut ack = abandoned.ack.clone();
        let route = abandoned.route.clone();
        if let Some(to) = response.headers.get(&HeaderName::To) {
            // After Via and From, as the transaction layer writes it.
            ack.headers.insert(2.min(ack.headers.iter().count()), to.clone());
        }
        tracing::debug!(?key, status = response.status.code(), "late final response to a given-up INVITE: ACKed");
        let route = self.transmit(route, &Message::Request(ack)).await;
        if let Some(a) = self.abandoned.get_mut(&key) {
            a.route = route;
        }
        true
    }

    /// Whether the transaction layer holds more than [`Config::max_transactions`].
    fn transactions_full(&self) -> bool {
        let (client, server) = self.layer.len();
        client + server > self.max_transactions
    }

    /// Whether no more than a quarter of the TU's queue is free: new requests are refused.
    fn overloaded(&self) -> bool {
        self.events.capacity() <= self.events.max_capacity() / 4
    }

    /// Answers the request that created server transaction `key` with 503 and `Retry-After`
    /// (RFC 3261 §21.5.4) instead of handing it to the TU. When the TU is behind, through the
    /// transaction: its other outputs (its timers) are performed, so it absorbs the request's
    /// retransmissions. At [`Config::max_transactions`], statelessly: the transaction is
    /// abandoned at once and holds no memory, and a retransmission is refused again.
    async fn refuse_for_overload(&mut self, key: &TransactionKey, outputs: Vec<Output>, stateless: bool) {
        let mut request = None;
        let mut rest = Vec::with_capacity(outputs.len());
        for output in outputs {
            match output {
                Output::ToTu(event) => match *event {
                    TuEvent::Request(r) => request = Some(r),
                    other => rest.push(Output::ToTu(Box::new(other))),
                },
                other => rest.push(other),
            }
        }
        let route = self.destinations.get(key).cloned();
        let response = request.as_deref().and_then(overload_response);
        if let Some(request) = &request {
            self.count_refusal(if stateless { Refusal::Table } else { Refusal::TuQueue }, &request.method);
        }
        if stateless {
            self.layer.abandon(key);
            self.forget(key);
            if let (Some(route), Some(response)) = (route, response) {
                self.transmit(route, &Message::Response(response)).await;
            }
            return;
        }
        self.perform(key, rest, None).await;
        if let Some(response) = response {
            let outputs = self.layer.send_response(key, response);
            self.perform(key, outputs, None).await;
        }
    }

    /// The early refusal (docs/sip.md §1.1): with the UDP receive queue above its high-water
    /// mark, a new request outside any dialog — not ACK, not CANCEL, not a retransmission of
    /// a request whose server transaction exists — is answered 503 with `Retry-After` to its
    /// source, with no transaction and no TU event; true if it was.
    async fn refuse_early(&mut self, message: &Message, source: SocketAddr) -> bool {
        let Message::Request(request) = message else { return false };
        if matches!(request.method, Method::Ack | Method::Cancel) || crate::dialog::DialogId::of_received_request(request).is_some() {
            return false;
        }
        // Without a usable Via it is a stray (no transaction, no response possible).
        if TransactionKey::from_request(request).is_none_or(|key| self.layer.server_state(&key).is_some()) {
            return false;
        }
        self.received.udp.fetch_add(1, Ordering::Relaxed);
        self.count_refusal(Refusal::UdpQueue, &request.method);
        if let Some(response) = overload_response(request) {
            self.transmit(Route::Udp(source), &Message::Response(response)).await;
        }
        true
    }

    /// Counts a request refused for `reason` and logs it: a `debug` line each, and a `warn`
    /// line at most once a second per reason with the number left unlogged since the last one.
    fn count_refusal(&mut self, reason: Refusal, method: &Method) {
        let counter = match reason {
            Refusal::TuQueue => &self.overload.requests_refused,
            Refusal::Table => &self.overload.transactions_full,
            Refusal::UdpQueue => &self.overload.udp_queue_deep,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(%method, ?reason, "SIP request refused with 503 (overload)");
        let Some(unlogged) = self.refusals.log(reason).due(Instant::now()) else { return };
        match reason {
            Refusal::TuQueue => {
                tracing::warn!(%method, queue = self.events.max_capacity(), unlogged, "SIP request refused with 503: the TU's event queue is three quarters full");
            }
            Refusal::Table => tracing::warn!(%method, max = self.max_transactions, unlogged, "SIP request refused with 503: the transaction table is full"),
            Refusal::UdpQueue => {
                tracing::warn!(%method, high_water_percent = self.udp_sampler.high_water, unlogged, "SIP request refused with 503: the UDP receive queue is deep (the endpoint task is behind)");
            }
        }
    }

    fn arm(&mut self, at: Instant, transaction: Option<(TransactionKey, Timer)>) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.schedule.push(Reverse((at, id)));
        if let Some(t) = transaction
            && let Some(old) = self.armed.insert(t, id)
        {
            self.pending.remove(&old);
        }
        id
    }

    async fn fire_due(&mut self) {
        let now = Instant::now();
        while let Some(Reverse((at, id))) = self.schedule.peek().copied() {
            if at > now {
                break;
            }
            self.schedule.pop();
            match self.pending.remove(&id) {
                Some(Due::Transaction(key, timer)) => {
                    self.armed.remove(&(key.clone(), timer));
                    let outputs = self.layer.on_timer(&key, timer);
                    self.perform(&key, outputs, None).await;
                }
                Some(Due::Retransmit2xx(id)) => self.retransmit_2xx(id, now).await,
                Some(Due::RetransmitReliable(id)) => self.retransmit_reliable(id, now).await,
                Some(Due::Abandoned(key)) => {
                    self.abandoned.remove(&key);
                }
                None => {}
            }
        }
    }

    async fn retransmit_2xx(&mut self, id: u64, now: Instant) {
        let Some(r) = self.retransmits.remove(&id) else { return };
        if now >= r.give_up {
            tracing::info!(to = %r.to, "no ACK for a 2xx within 64*T1");
            return;
        }
        if let Err(e) = self.socket.send_to(&r.bytes, r.to).await {
            tracing::warn!(error = %e, "2xx retransmission");
        }
        let interval = (r.interval * 2).min(self.timers.t2);
        let next = self.arm(now + r.interval, None);
        self.pending.insert(next, Due::Retransmit2xx(next));
        self.retransmits.insert(next, Retransmit { interval, ..r });
    }

    /// RFC 3262 §3: the interval starts at T1 and doubles for each retransmission (no T2
    /// cap); after 64·T1 the TU is told.
    async fn retransmit_reliable(&mut self, id: u64, now: Instant) {
        let Some(u) = self.unacknowledged.remove(&id) else { return };
        if now >= u.give_up {
            tracing::info!(key = ?u.key, "no PRACK for a reliable provisional response within 64*T1");
            self.emit(Event::ReliableTimeout { key: u.key }).await;
            return;
        }
        let outputs = self.layer.send_response(&u.key, u.response.clone());
        self.perform(&u.key, outputs, None).await;
        let next = self.arm(now + u.interval, None);
        self.pending.insert(next, Due::RetransmitReliable(next));
        self.unacknowledged.insert(next, Unacknowledged { interval: u.interval * 2, ..u });
    }

    /// A PRACK stops the retransmission of the reliable provisional response its `RAck`
    /// names, in its `Call-ID` (RFC 3262 §3: `RSeq`, CSeq number and method all match).
    fn prack_received(&mut self, headers: &Headers) {
        let call_id = headers.get(&HeaderName::CallId).map(|h| Bytes::copy_from_slice(h.value().trim_ascii()));
        let Some(Ok(rack)) = headers.typed::<RAck>() else { return };
        self.unacknowledged.retain(|_, u| Some(&u.call_id) != call_id.as_ref() || !rack_matches(&u.rack, &rack));
    }

    /// An ACK stops the retransmission of the 2xx with its Call-ID and CSeq number.
    fn ack_received(&mut self, headers: &Headers) {
        let call_id = headers.get(&HeaderName::CallId).map(|h| Bytes::copy_from_slice(h.value().trim_ascii()));
        let cseq = headers.typed::<sipx_sip::CSeq>().and_then(Result::ok).map(|c| c.sequence);
        self.retransmits.retain(|_, r| Some(&r.call_id) != call_id.as_ref() || Some(r.cseq) != cseq);
    }

    /// Sends `message` along `route`; returns the route with the connection it used.
    async fn transmit(&mut self, route: Route, message: &Message) -> Route {
        let bytes = message.to_bytes();
        match route {
            Route::Udp(to) => {
                tracing::debug!(%to, transport = "UDP", first_line = %first_line(message), "SIP out");
                if let Err(e) = self.socket.send_to(&bytes, to).await {
                    tracing::warn!(%to, error = %e, "SIP UDP send");
                }
                route
            }
            Route::Tcp { conn, to } => {
                tracing::debug!(%to, transport = "TCP", first_line = %first_line(message), "SIP out");
                Route::Tcp { conn: Some(self.send_stream(Kind::Tcp, None, conn, to, bytes)), to }
            }
            Route::Tls { conn, to, name } => {
                tracing::debug!(%to, transport = "TLS", first_line = %first_line(message), "SIP out");
                Route::Tls { conn: Some(self.send_stream(Kind::Tls, name.as_ref(), conn, to, bytes)), to, name }
            }
        }
    }

    /// Queues `bytes` on connection `conn` if it is open, else on the one of `kind` open to
    /// `to`, else on a new connection to `to` (for TLS, verifying the server as `name`). Where
    /// a bound of [`Config`] stops that, the connection the bytes were meant for is reported
    /// ended, as a connection task reports its end: a full queue fails its connection, and no
    /// room for a new connection is a refusal. A TLS connection that cannot be opened at all
    /// (no client side configured, no name to verify) is reported failed.
    fn send_stream(&mut self, kind: Kind, name: Option<&ServerName<'static>>, conn: Option<ConnId>, to: SocketAddr, bytes: Bytes) -> ConnId {
        let transport = kind.name();
        // A TLS connection opened for another name is not reused for this one (an accepted
        // connection, which verified no name, is: the P-CSCF's requests to its UE).
        let for_name = |id: &ConnId| name.is_none() || self.tls_names.get(id).is_none_or(|verified| Some(verified) == name);
        let open = conn.filter(|c| self.connections.contains_key(c)).or_else(|| self.by_peer.get(&(kind, to)).copied().filter(for_name));
        if let Some(id) = open
            && let Some(connection) = self.connections.get(&id)
        {
            match connection.send(bytes.clone()) {
                Queued::Yes => return id,
                Queued::Full => {
                    TcpCounters::bump(&self.tcp.counters.queues_full);
                    tracing::warn!(%to, transport, queue = self.tcp.queue, "SIP connection failed: its peer is not taking what is sent (queue full)");
                    // Dropping it stops its task, so the end is reported here.
                    self.connections.remove(&id);
                    self.tls_names.remove(&id);
                    self.by_peer.retain(|_, c| *c != id);
                    self.report_ended(id, to, End::Failed);
                    return id;
                }
                Queued::Ended => {}
            }
        }
        let id = self.next_conn;
        self.next_conn += 1;
        let tls = match kind {
            Kind::Tcp => None,
            Kind::Tls => match (&self.tls_connector, name) {
                (Some(connector), Some(name)) => Some((connector.clone(), name.clone())),
                (None, _) => {
                    tracing::warn!(%to, "SIP TLS connection not opened: this endpoint has no TLS client configuration");
                    self.report_ended(id, to, End::Failed);
                    return id;
                }
                (Some(_), None) => {
                    tracing::warn!(%to, "SIP TLS connection not opened: no server name to verify (a response whose connection has closed, or a URI host that is not a DNS name)");
                    self.report_ended(id, to, End::Failed);
                    return id;
                }
            },
        };
        if let Some(cap) = self.no_room(to) {
            TcpCounters::bump(&self.tcp.counters.connects_refused);
            tracing::warn!(%to, transport, ?cap, "SIP connection not opened: too many connections");
            self.report_ended(id, to, End::Refused);
            return id;
        }
        tracing::debug!(%to, transport, "SIP connecting");
        let local = self.listener.local_addr().unwrap_or_else(|_| SocketAddr::new(to.ip(), 0));
        if let Some((_, verified)) = &tls {
            self.tls_names.insert(id, verified.clone());
        }
        let connection = Connection::connect(id, local, to, tls, &self.tcp);
        // A fresh queue has room, and accepts until its task has ended, which it reports.
        let _ = connection.send(bytes);
        self.connections.insert(id, connection);
        self.by_peer.insert((kind, to), id);
        id
    }

    /// Reports connection `conn` ended, to be handled by [`Driver::on_closed`] once the
    /// message being sent on it has its route.
    fn report_ended(&self, conn: ConnId, peer: SocketAddr, end: End) {
        // The driver holds the receiver while it runs.
        let _ = self.tcp.reports.send(Report::Closed { conn, peer, end });
    }

    /// Hands the TU an event of a transaction or dialog it knows, waiting for room in its
    /// queue: such an event is never dropped.
    async fn emit(&self, event: Event) {
        // A TU that has gone away no longer wants events; nothing else to do.
        if let Err(mpsc::error::TrySendError::Full(event)) = self.events.try_send(event) {
            // The task waits: what it holds is published now, not when the TU reads again.
            self.publish_counts();
            let _ = self.events.send(event).await;
        }
    }

    /// Hands the TU a report that loses nothing when dropped ([`Event::Stray`],
    /// [`Event::Malformed`]); with its queue full, it is dropped and counted.
    fn report(&self, event: Event) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.events.try_send(event) {
            self.overload.events_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A maximum of TCP connections ([`Config`]).
#[derive(Clone, Copy, Debug)]
enum Cap {
    /// [`Config::max_tcp_connections`].
    Total,
    /// [`Config::max_tcp_connections_per_peer`].
    PerPeer,
}

/// What counts as one remote host for [`Config::max_tcp_connections_per_peer`]: an IPv4
/// address (an IPv4-mapped IPv6 one as that address), or an IPv6 /64 — the prefix one
/// subscriber line or host is given (RFC 6177, RFC 7421 §1), inside which a host can pick
/// new addresses at will (RFC 8981), so per-address counting would not bound it.
fn peer_host(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
        },
    }
}

/// The route of a request to `to`: over TLS when it must be secured ([`tls_target`]);
/// otherwise by its size (RFC 3261 §18.1.1): over TCP when it is larger than
/// [`UDP_MAX_REQUEST`], else over UDP. Its top `Via` is rewritten to name a stream transport.
fn request_route(request: &mut Request, to: SocketAddr) -> Route {
    if let Some(name) = tls_target(request) {
        if !top_via_says(&request.headers, "TLS") && !set_top_via_transport(&mut request.headers, "TLS") {
            tracing::warn!(%to, "request over TLS without a top Via to say so");
        }
        return Route::Tls { conn: None, to, name };
    }
    let mut wire = Vec::new();
    request.write_to(&mut wire);
    if wire.len() <= UDP_MAX_REQUEST {
        return Route::Udp(to);
    }
    if !set_top_via_transport(&mut request.headers, "TCP") {
        tracing::warn!(%to, "request over TCP without a top Via to say so");
    }
    Route::Tcp { conn: None, to }
}

/// The route of a request to a located `target` of `uri`: over the target's transport, its
/// top `Via` saying so (a UDP target still moves to TCP for the request's size, or to TLS as
/// [`request_route`] decides); TLS verifies the server as `uri`'s host (RFC 5922 §4), never
/// the SRV target's name.
fn located_route(request: &mut Request, target: &crate::locate::Target, uri: &sipx_sip::Uri) -> Route {
    match target.transport {
        crate::locate::Transport::Udp => request_route(request, target.addr),
        crate::locate::Transport::Tcp => {
            if !set_top_via_transport(&mut request.headers, "TCP") {
                tracing::warn!(to = %target.addr, "request over TCP without a top Via to say so");
            }
            Route::Tcp { conn: None, to: target.addr }
        }
        crate::locate::Transport::Tls => {
            if !set_top_via_transport(&mut request.headers, "TLS") {
                tracing::warn!(to = %target.addr, "request over TLS without a top Via to say so");
            }
            Route::Tls { conn: None, to: target.addr, name: uri.host().and_then(crate::tls::server_name) }
        }
    }
}

/// A hash of `bytes` that is the same on every run (FNV-1a, 64 bits): the seed of the SRV order
/// of a stateless request (RFC 3263 §4.4).
fn stable_hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

/// Whether the URI `request` is routed on — its top `Route`, else its Request-URI (RFC 3261
/// §8.1.2, §16.6) — is `sips:` or has `;transport=tls` (§26.2.2, §19.1.1), or its
/// Request-URI is `sips:` (which asks for TLS on every hop, §26.2.2); with that URI (`None`
/// when the top `Route` does not parse). The endpoint sends such a request over TLS, as it does
/// one whose top `Via` says `TLS`. A proxy asks this of a branch before adding its own `Via`,
/// to know which side of it the branch leaves by (RFC 5658 double record-routing).
pub fn routed_over_tls(request: &Request) -> bool {
    secure_target(request).0
}

fn secure_target(request: &Request) -> (bool, Option<sipx_sip::Uri>) {
    let target = match request.headers.typed::<sipx_sip::headers::Route>() {
        None => Some(request.uri.clone()),
        Some(Ok(route)) => Some(route.0.uri),
        // An unparsable Route names no host; the Request-URI and the Via still count.
        Some(Err(_)) => None,
    };
    let secure_uri = |uri: &sipx_sip::Uri| uri.scheme().is_secure() || uri.transport().is_some_and(|t| t.eq_ignore_ascii_case(b"tls"));
    (request.uri.scheme().is_secure() || target.as_ref().is_some_and(secure_uri), target)
}

/// Whether `request` must go over TLS — [`routed_over_tls`], or its top `Via` says `TLS` —
/// and then the name its server must prove (RFC 5922 §7.2): the host of the URI it is routed
/// on (`None` inside when there is none, or no certificate could match it).
fn tls_target(request: &Request) -> Option<Option<ServerName<'static>>> {
    let (secure, target) = secure_target(request);
    (secure || top_via_says(&request.headers, "TLS")).then(|| target.as_ref().and_then(sipx_sip::Uri::host).and_then(crate::tls::server_name))
}

/// Whether the top `Via` names `transport` (case-insensitive, RFC 3261 §20.42): for a request
/// received, how its sender sent it (our endpoint writes `TLS` there when it sends over TLS).
pub fn top_via_says(headers: &Headers, transport: &str) -> bool {
    matches!(headers.typed::<Via>(), Some(Ok(via)) if via.transport.eq_ignore_ascii_case(transport.as_bytes()))
}

/// Accepts on the TLS listener; never ready without one.
async fn accept(listener: Option<&TcpListener>) -> std::io::Result<(tokio::net::TcpStream, SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

/// Rewrites the transport of the topmost `Via` hop (`SIP/2.0/UDP` → `SIP/2.0/TCP`,
/// RFC 3261 §18.1.1: the client updates `Via` when it changes transport), keeping every other
/// byte of that header and the other hops. False if there is no top `Via` to rewrite.
fn set_top_via_transport(headers: &mut Headers, transport: &str) -> bool {
    let Some(index) = headers.iter().position(|h| *h.name() == HeaderName::Via) else { return false };
    let Some(value) = headers.iter().nth(index).map(|h| h.value().into_owned()) else { return false };
    let hop_end = first_hop_end(&value);
    // sent-protocol = name SLASH version SLASH transport; the transport ends at the LWS
    // before sent-by.
    let Some(second_slash) = value.get(..hop_end).and_then(|hop| hop.iter().enumerate().filter(|(_, b)| **b == b'/').nth(1).map(|(i, _)| i))
    else {
        return false;
    };
    let start = second_slash + 1 + value.get(second_slash + 1..).map_or(0, |t| t.iter().take_while(|b| b.is_ascii_whitespace()).count());
    let end = start + value.get(start..).map_or(0, |t| t.iter().take_while(|b| !b.is_ascii_whitespace()).count());
    let (Some(before), Some(after)) = (value.get(..start), value.get(end..)) else { return false };
    let rewritten = [before, transport.as_bytes(), after].concat();
    let Ok(header) = Header::build(HeaderName::Via, rewritten) else { return false };
    headers.remove_first(&HeaderName::Via);
    headers.insert(index, header);
    true
}

/// Replaces the value of the `branch` parameter of the topmost `Via` hop (RFC 3263 §4.3: a
/// request sent again to another target is a new transaction, with a new branch; a CANCEL
/// takes the branch of the INVITE it cancels, RFC 3261 §9.1), keeping every other byte. False
/// if that hop has no `branch` parameter.
fn set_top_via_branch(headers: &mut Headers, branch: &str) -> bool {
    let Some(index) = headers.iter().position(|h| *h.name() == HeaderName::Via) else { return false };
    let Some(value) = headers.iter().nth(index).map(|h| h.value().into_owned()) else { return false };
    let hop_end = first_hop_end(&value);
    let Some(hop) = value.get(..hop_end) else { return false };
    // via-params follow the sent-by, each after a ';' (RFC 3261 §25.1: SEMI, EQUAL allow LWS).
    let mut range = None;
    for (semi, _) in hop.iter().enumerate().filter(|(_, b)| **b == b';') {
        let Some(rest) = hop.get(semi + 1..) else { continue };
        let name_start = semi + 1 + rest.iter().take_while(|b| b.is_ascii_whitespace()).count();
        let Some(after_name) = hop.get(name_start..).and_then(|t| t.get(..6).filter(|n| n.eq_ignore_ascii_case(b"branch")).map(|_| name_start + 6)) else { continue };
        let Some(tail) = hop.get(after_name..) else { continue };
        let eq = after_name + tail.iter().take_while(|b| b.is_ascii_whitespace()).count();
        if hop.get(eq) != Some(&b'=') {
            continue;
        }
        let start = eq + 1 + hop.get(eq + 1..).map_or(0, |t| t.iter().take_while(|b| b.is_ascii_whitespace()).count());
        let end = start + hop.get(start..).map_or(0, |t| t.iter().take_while(|b| !b.is_ascii_whitespace() && **b != b';').count());
        range = Some((start, end));
        break;
    }
    let Some((start, end)) = range else { return false };
    let (Some(before), Some(after)) = (value.get(..start), value.get(end..)) else { return false };
    let rewritten = [before, branch.as_bytes(), after].concat();
    let Ok(header) = Header::build(HeaderName::Via, rewritten) else { return false };
    headers.remove_first(&HeaderName::Via);
    headers.insert(index, header);
    true
}

/// Where a response to a request received over TCP goes if its connection has closed
/// (RFC 3261 §18.2.2): the source address (what `received` says) at the top `Via`'s
/// sent-by port, 5060 if it names none.
fn reconnect_address(headers: &Headers, source: SocketAddr) -> SocketAddr {
    let port = headers.typed::<Via>().and_then(Result::ok).and_then(|v| v.port).unwrap_or(5060);
    SocketAddr::new(source.ip(), port)
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The `RAck` that acknowledges a reliable provisional response: its `RSeq` and its CSeq
/// number and method (RFC 3262 §7.2). `None` when either header is missing or malformed.
pub fn reliable_rack(headers: &Headers) -> Option<RAck> {
    let rseq = headers.typed::<RSeq>()?.ok()?;
    let cseq = headers.typed::<sipx_sip::CSeq>()?.ok()?;
    Some(RAck { rseq: rseq.0, cseq: cseq.sequence, method: cseq.method.as_bytes().to_vec() })
}

/// Whether `received` acknowledges the response `expected` was built from (RFC 3262 §3: all
/// three fields equal, the method compared case-sensitively as methods are, RFC 3261 §7.1).
pub fn rack_matches(expected: &RAck, received: &RAck) -> bool {
    expected.rseq == received.rseq && expected.cseq == received.cseq && expected.method == received.method
}

/// The 503 with `Retry-After` that refuses `request` for overload (RFC 3261 §21.5.4,
/// §20.33); `None` when the request lacks the headers a response needs (§8.2.6.2).
fn overload_response(request: &Request) -> Option<Response> {
    let status = StatusCode::new(503)?;
    let builder = ResponseBuilder::to_request(request, status, "Service Unavailable".to_owned()).ok()?;
    Some(builder.header(HeaderName::RetryAfter, OVERLOAD_RETRY_AFTER_SECS.to_string()).ok()?.build())
}

/// The ACK for a non-2xx final response to `invite` (RFC 3261 §17.1.1.3), without its `To`
/// (taken from the response, with the tag the UAS chose): the Request-URI of the INVITE, its
/// top `Via` alone (the same branch), its `From`, `Call-ID` and `Route`s, `Max-Forwards`, and
/// its CSeq number with the method ACK.
fn ack_without_to(invite: &Request) -> Request {
    let mut ack = Request::new(Method::Ack, invite.uri.clone());
    for name in [HeaderName::Via, HeaderName::From, HeaderName::CallId] {
        if let Some(h) = invite.headers.get(&name) {
            ack.headers.push(h.clone());
        }
    }
    for route in invite.headers.get_all(&HeaderName::Route) {
        ack.headers.push(route.clone());
    }
    let cseq = invite.headers.typed::<sipx_sip::CSeq>().and_then(Result::ok).map_or(0, |c| c.sequence);
    for (name, value) in [(HeaderName::MaxForwards, "70".to_owned()), (HeaderName::CSeq, format!("{cseq} ACK")), (HeaderName::ContentLength, "0".to_owned())] {
        if let Ok(h) = Header::build(name, value) {
            ack.headers.push(h);
        }
    }
    ack
}

/// The start line of a message, for logs.
pub fn first_line(message: &Message) -> String {
    match message {
        Message::Request(r) => format!("{} {}", r.method, String::from_utf8_lossy(&r.uri.to_bytes())),
        Message::Response(r) => format!("{} {}", r.status.code(), String::from_utf8_lossy(&r.reason)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(via: &str, body: usize) -> Request {
        let text = format!(
            "MESSAGE sip:b@127.0.0.1 SIP/2.0\r\n{via}\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKlower\r\n\
From: <sip:a@a.example>;tag=1\r\nTo: <sip:b@b.example>\r\nCall-ID: v1\r\nCSeq: 1 MESSAGE\r\nContent-Length: {body}\r\n\r\n{}",
            "x".repeat(body)
        );
        let Ok(Message::Request(r)) = parse_datagram(Bytes::from(text), &Limits::datagram()) else { panic!("request") };
        r
    }

    fn text(r: &Request) -> String {
        String::from_utf8_lossy(&Message::Request(r.clone()).to_bytes()).into_owned()
    }

    /// Overload refusals log one line a second at most, each telling how many it stands for.
    #[test]
    fn overload_refusals_log_a_line_a_second() {
        let mut log = RefusalLog::default();
        let t0 = Instant::now();
        assert_eq!(log.due(t0), Some(0));
        for ms in [1, 500, 999] {
            assert_eq!(log.due(t0 + Duration::from_millis(ms)), None);
        }
        assert_eq!(log.due(t0 + Duration::from_millis(1000)), Some(3));
        assert_eq!(log.due(t0 + Duration::from_millis(1001)), None);
        assert_eq!(log.due(t0 + Duration::from_secs(5)), Some(1));
    }

    /// Each reason has its own limiter: a flood refused for one reason does not swallow the
    /// first line of another, and each line counts only its own reason's refusals.
    #[test]
    fn each_reason_logs_on_its_own() {
        let mut refusals = Refusals::default();
        let t0 = Instant::now();
        assert_eq!(refusals.log(Refusal::UdpQueue).due(t0), Some(0));
        for _ in 0..5 {
            assert_eq!(refusals.log(Refusal::UdpQueue).due(t0 + Duration::from_millis(10)), None);
        }
        assert_eq!(refusals.log(Refusal::Table).due(t0 + Duration::from_millis(20)), Some(0));
        assert_eq!(refusals.log(Refusal::TuQueue).due(t0 + Duration::from_millis(30)), Some(0));
        assert_eq!(refusals.log(Refusal::Table).due(t0 + Duration::from_millis(40)), None);
        assert_eq!(refusals.log(Refusal::UdpQueue).due(t0 + Duration::from_millis(1000)), Some(5));
        assert_eq!(refusals.log(Refusal::Table).due(t0 + Duration::from_millis(1020)), Some(1));
        assert_eq!(refusals.log(Refusal::TuQueue).due(t0 + Duration::from_millis(1030)), Some(0));
    }

    /// A sample of the UDP receive queue stands for `every` datagrams or
    /// [`UDP_QUEUE_SAMPLE_MAX_AGE`], whichever comes first (times passed in), and the queue
    /// counts as deep only once [`UDP_QUEUE_DEEP_SAMPLES`] consecutive samples found it above
    /// the mark: a queue filled after a sample is not deep at the next sample yet (one burst),
    /// deep at the one after, and clear again at the first sample after it drained.
    #[tokio::test]
    async fn a_queue_is_deep_after_consecutive_deep_samples_each_standing_for_a_count_or_an_age() {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let Ok(probe) = Probe::new(&socket) else {
            assert!(std::env::var_os("MEDIASEC_REQUIRE_PEERS").is_none(), "no SO_MEMINFO");
            println!("skipped: no SO_MEMINFO on this system");
            return;
        };
        let mut sampler = Sampler { probe: Some(probe), high_water: 1, every: 3, since: 0, at: None, streak: 0 };
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        assert!(!sampler.deep(t0), "the first datagram samples: empty");
        let sender = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        for _ in 0..10 {
            sender.send_to(&[b'x'; 500], socket.local_addr().expect("addr")).await.expect("send");
        }
        for n in [1, 2] {
            assert!(!sampler.deep(ms(n)), "the sample still stands");
        }
        assert!(!sampler.deep(ms(2)), "the third datagram after it samples: above 1 %, but one deep sample is a burst");
        let mut t = 2;
        for _ in 2..UDP_QUEUE_DEEP_SAMPLES {
            for _ in 0..3 {
                t += 1;
                assert!(!sampler.deep(ms(t)), "fewer deep samples in a row than UDP_QUEUE_DEEP_SAMPLES");
            }
        }
        for _ in 0..2 {
            t += 1;
            assert!(!sampler.deep(ms(t)), "the sample still stands");
        }
        assert!(sampler.deep(ms(t)), "the last of UDP_QUEUE_DEEP_SAMPLES deep samples in a row: refuse");
        assert!(sampler.deep(ms(t)), "the verdict stands until the next sample");
        let mut buf = [0u8; 600];
        for _ in 0..10 {
            socket.recv_from(&mut buf).await.expect("recv");
        }
        assert!(sampler.deep(ms(t)), "the sample still stands");
        assert!(!sampler.deep(ms(t) + UDP_QUEUE_SAMPLE_MAX_AGE), "an old sample is taken again: drained");
        for _ in 0..10 {
            sender.send_to(&[b'x'; 500], socket.local_addr().expect("addr")).await.expect("send");
        }
        let later = ms(t) + UDP_QUEUE_SAMPLE_MAX_AGE;
        assert!(!sampler.deep(later) && !sampler.deep(later), "the count restarted: no sample yet");
        assert!(!sampler.deep(later), "deep again, but after a clear sample one deep sample is not enough");
    }

    /// RFC 3261 §18.1.1: up to 1300 bytes a request stays on UDP untouched; above, it goes
    /// over TCP and only the transport of its top Via changes (the branch, and so the
    /// transaction key, does not).
    #[test]
    fn a_large_request_goes_over_tcp_with_its_top_via_rewritten() {
        let to = SocketAddr::from(([127, 0, 0, 1], 5060));
        let via = "Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKtop;rport";
        let small = request(via, 100);
        let mut same = small.clone();
        assert!(matches!(request_route(&mut same, to), Route::Udp(a) if a == to));
        assert_eq!(text(&same), text(&small));

        // Everything but the body, with a four-digit Content-Length.
        let fixed = text(&request(via, 1000)).len() - 1000;
        let mut at_limit = request(via, UDP_MAX_REQUEST - fixed);
        assert_eq!(text(&at_limit).len(), UDP_MAX_REQUEST);
        assert!(matches!(request_route(&mut at_limit, to), Route::Udp(_)));

        let large = request(via, UDP_MAX_REQUEST - fixed + 1);
        let key = TransactionKey::from_sent_request(&large);
        let mut sent = large.clone();
        assert!(matches!(request_route(&mut sent, to), Route::Tcp { conn: None, to: a } if a == to));
        assert_eq!(text(&sent), text(&large).replacen("SIP/2.0/UDP 127.0.0.1:5070", "SIP/2.0/TCP 127.0.0.1:5070", 1));
        assert_eq!(TransactionKey::from_sent_request(&sent), key);
    }

    fn response(extra: &str) -> Response {
        let text = format!(
            "SIP/2.0 183 Session Progress\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKr\r\n\
From: <sip:a@a.example>;tag=1\r\nTo: <sip:b@b.example>;tag=2\r\nCall-ID: r1\r\n{extra}Content-Length: 0\r\n\r\n"
        );
        let Ok(Message::Response(r)) = parse_datagram(Bytes::from(text), &Limits::datagram()) else { panic!("response") };
        r
    }

    /// RFC 3262 §7.2: the `RAck` of a reliable 1xx is its `RSeq`, CSeq number and method; it
    /// is written as `rseq cseq METHOD` and reads back equal. A response missing either header,
    /// or with an unparsable one, has none.
    #[test]
    fn rack_of_a_reliable_response() {
        let r = response("CSeq: 7 INVITE\r\nRSeq: 4242\r\nRequire: 100rel\r\n");
        let rack = reliable_rack(&r.headers).expect("rack");
        assert_eq!(rack.to_string(), "4242 7 INVITE");
        assert!(rack_matches(&rack, &<RAck as sipx_sip::TypedHeader>::decode(b"4242 7 INVITE").expect("decodes")));
        for other in [&b"4243 7 INVITE"[..], b"4242 8 INVITE", b"4242 7 UPDATE", b"4242 7 invite"] {
            let received = <RAck as sipx_sip::TypedHeader>::decode(other).expect("decodes");
            assert!(!rack_matches(&rack, &received), "{}", String::from_utf8_lossy(other));
        }
        assert!(reliable_rack(&response("CSeq: 7 INVITE\r\n").headers).is_none());
        assert!(reliable_rack(&response("CSeq: 7 INVITE\r\nRSeq: x1\r\n").headers).is_none());
        assert!(reliable_rack(&response("CSeq: 7 INVITE\r\nRSeq: 4294967296\r\n").headers).is_none());
    }

    proptest::proptest! {
        /// Any `RSeq`, CSeq number and method round-trip through `RAck`'s text form.
        #[test]
        fn rack_round_trips(rseq in 1u32.., cseq in 0u32..=0x7fff_ffff, method in "[A-Z]{1,10}") {
            let r = response(&format!("CSeq: {cseq} {method}\r\nRSeq: {rseq}\r\n"));
            let rack = reliable_rack(&r.headers).expect("rack");
            let decoded = <RAck as sipx_sip::TypedHeader>::decode(rack.to_string().as_bytes()).expect("decodes");
            proptest::prop_assert!(rack_matches(&rack, &decoded));
            proptest::prop_assert_eq!(decoded.rseq, rseq);
        }

        /// Any token as the old and the new branch, any spacing around `;` and `=`: after the
        /// rewrite the top Via parses with the new branch and the other parameters as they were.
        #[test]
        fn branch_rewrite_round_trips(old in "[A-Za-z0-9.!%*_+`'~-]{1,24}", new in "z9hG4bK[A-Za-z0-9.!%*_+`'~-]{1,24}", ws in "[ \t]{0,2}") {
            let mut r = request(&format!("Via: SIP/2.0/UDP h.example:5070{ws};{ws}branch{ws}={ws}{old}{ws};rport;x=1"), 0);
            proptest::prop_assert!(set_top_via_branch(&mut r.headers, &new));
            let via = r.headers.typed::<Via>().expect("Via").expect("parses");
            proptest::prop_assert_eq!(via.branch(), Some(new.as_bytes()));
            proptest::prop_assert_eq!(via.param("x"), Some(&b"1"[..]));
            proptest::prop_assert!(via.rport().is_some());
        }

        /// Arbitrary `RSeq`/`RAck` values never panic the parsers.
        #[test]
        fn arbitrary_rseq_rack_never_panic(value in proptest::collection::vec(proptest::num::u8::ANY, 0..40)) {
            let _ = <RAck as sipx_sip::TypedHeader>::decode(&value);
            let _ = <RSeq as sipx_sip::TypedHeader>::decode(&value);
        }
    }

    /// RFC 3261 §26.2 / RFC 5922: a `sips:` Request-URI, a top `Route` with `;transport=tls`, or
    /// a `TLS` top Via send the request over TLS, whatever its size, its Via saying `TLS`, the
    /// server to be verified as the host of the URI it is routed on (the top Route, else the
    /// Request-URI); a `;transport=tls` further down the Route set, or none, leaves the size rule.
    #[test]
    fn a_secured_request_takes_tls_and_names_the_host_it_is_routed_on() {
        let to = SocketAddr::from(([127, 0, 0, 1], 5061));
        let name = |r: &Route| match r {
            Route::Tls { conn: None, name, .. } => name.as_ref().map(|n| n.to_str().into_owned()),
            other => panic!("not TLS: {other:?}"),
        };
        let via = "Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKtls";
        let mut sips = request(via, 0);
        sips.uri = sipx_sip::Uri::parse(Bytes::from_static(b"sips:bob@pcscf.example")).expect("uri");
        assert_eq!(name(&request_route(&mut sips, to)).as_deref(), Some("pcscf.example"));
        assert!(top_via_says(&sips.headers, "TLS"), "{}", text(&sips));
        assert!(text(&sips).contains("Via: SIP/2.0/TLS 127.0.0.1:5070;branch=z9hG4bKtls\r\n"));

        let mut routed = request(via, 0);
        routed.headers.insert(1, Header::build(HeaderName::Route, "<sip:192.0.2.7:5061;transport=TLS;lr>, <sip:scscf.example;lr>").expect("Route"));
        assert!(routed_over_tls(&routed));
        assert_eq!(name(&request_route(&mut routed, to)).as_deref(), Some("192.0.2.7"));

        let mut by_via = request("Via: SIP/2.0/TLS 127.0.0.1:5070;branch=z9hG4bKv", 0);
        assert!(!routed_over_tls(&by_via));
        assert_eq!(name(&request_route(&mut by_via, to)).as_deref(), Some("127.0.0.1"));

        let mut further_down = request(via, 0);
        further_down.headers.insert(1, Header::build(HeaderName::Route, "<sip:192.0.2.7;lr>, <sip:192.0.2.8;transport=tls;lr>").expect("Route"));
        assert!(matches!(request_route(&mut further_down, to), Route::Udp(_)));
        let mut large = request(via, UDP_MAX_REQUEST);
        assert!(matches!(request_route(&mut large, to), Route::Tcp { .. }));
    }

    /// Only the first hop of a combined Via line changes, whatever the spacing.
    #[test]
    fn only_the_top_hop_is_rewritten() {
        let mut r = request("Via: SIP / 2.0 / udp   h.example;branch=z9hG4bKa, SIP/2.0/UDP g.example;branch=z9hG4bKb", 0);
        assert!(set_top_via_transport(&mut r.headers, "TCP"));
        let t = text(&r);
        assert!(t.contains("Via: SIP / 2.0 / TCP   h.example;branch=z9hG4bKa, SIP/2.0/UDP g.example;branch=z9hG4bKb\r\n"), "{t}");
        assert!(t.contains("Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKlower\r\n"), "{t}");
        let mut headers = Headers::new();
        assert!(!set_top_via_transport(&mut headers, "TCP"));
    }

    /// RFC 3263 §4.3: a request sent again has a new branch; only the value of the top hop's
    /// `branch` parameter changes, whatever its case and spacing, and a hop without one is
    /// left alone (false).
    #[test]
    fn only_the_top_branch_is_replaced() {
        let mut r = request("Via: SIP/2.0/UDP h.example;rport ; BRANCH = z9hG4bKold;x=1, SIP/2.0/UDP g.example;branch=z9hG4bKb", 0);
        assert!(set_top_via_branch(&mut r.headers, "z9hG4bKnew"));
        let t = text(&r);
        assert!(t.contains("Via: SIP/2.0/UDP h.example;rport ; BRANCH = z9hG4bKnew;x=1, SIP/2.0/UDP g.example;branch=z9hG4bKb\r\n"), "{t}");
        assert!(t.contains("Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKlower\r\n"), "{t}");
        let mut plain = request("Via: SIP/2.0/UDP h.example;branch=z9hG4bKa", 0);
        assert!(set_top_via_branch(&mut plain.headers, "z9hG4bKc"));
        assert_eq!(TransactionKey::from_sent_request(&plain), TransactionKey::from_sent_request(&request("Via: SIP/2.0/UDP h.example;branch=z9hG4bKc", 0)));
        let mut none = request("Via: SIP/2.0/UDP h.example;branchy=1;rport, SIP/2.0/UDP g.example;branch=z9hG4bKb", 0);
        let before = text(&none);
        assert!(!set_top_via_branch(&mut none.headers, "z9hG4bKnew"));
        assert_eq!(text(&none), before);
    }

    /// One remote host for the per-peer connection cap: an IPv4 address (mapped or not), or
    /// an IPv6 /64.
    #[test]
    fn one_peer_is_an_ipv4_address_or_an_ipv6_64() {
        let host = |s: &str| peer_host(s.parse().expect("ip"));
        assert_eq!(host("192.0.2.7"), host("::ffff:192.0.2.7"));
        assert_ne!(host("192.0.2.7"), host("192.0.2.8"));
        assert_eq!(host("2001:db8:1:2:aaaa::1"), host("2001:db8:1:2:ffff:1:2:3"));
        assert_eq!(host("2001:db8:1:2::9"), "2001:db8:1:2::".parse::<IpAddr>().expect("ip"));
        assert_ne!(host("2001:db8:1:2::1"), host("2001:db8:1:3::1"));
    }

    /// §18.2.2: a response whose TCP connection has gone goes to the source IP and the Via
    /// sent-by port.
    #[test]
    fn reconnect_uses_source_ip_and_sent_by_port() {
        let source = SocketAddr::from(([127, 0, 0, 2], 40_001));
        let with_port = request("Via: SIP/2.0/TCP 192.0.2.1:5070;branch=z9hG4bKr;rport", 0);
        assert_eq!(reconnect_address(&with_port.headers, source), SocketAddr::from(([127, 0, 0, 2], 5070)));
        let without = request("Via: SIP/2.0/TCP host.example;branch=z9hG4bKr", 0);
        assert_eq!(reconnect_address(&without.headers, source), SocketAddr::from(([127, 0, 0, 2], 5060)));
    }
}
