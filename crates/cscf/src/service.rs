//! A CSCF as a tokio service: the proxy core on a SIP endpoint (UDP and TCP; TLS on its own
//! port when configured, [`Cscf::start_with`]).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use mediasec_sip::core::Timers;
use mediasec_sip::udp::{Config, Endpoint, Received, TcpStats};

use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::proxy::{NgRequest, Proxy, ProxyConfig, Stats};

/// An ng reply (or why there is none) for the command with this id.
type NgReply = (u64, Result<Vec<u8>, String>);

/// How long one ng attempt waits for its reply, and how many attempts (same cookie: the AGW
/// answers a retransmission from its cache without executing the command again).
const NG_WAIT: std::time::Duration = std::time::Duration::from_millis(500);
const NG_ATTEMPTS: u32 = 4;
/// How often the proxy's timers are run when no event comes ([`Proxy::tick`]): Timer C is
/// minutes, the other timers 64·T1, so a second is precise enough.
const TICK: std::time::Duration = std::time::Duration::from_secs(1);

/// The IMS-ALG's ng client (rtpengine ng framing, `cookie SP bencode`, over UDP): sends the
/// proxy's commands to the AGW one at a time, in order (an answer never overtakes its offer),
/// and returns each reply or the reason there is none.
async fn ng_worker(agw: SocketAddr, replies: mpsc::UnboundedSender<NgReply>) -> std::io::Result<mpsc::UnboundedSender<NgRequest>> {
    let any: SocketAddr = if agw.is_ipv4() { (std::net::Ipv4Addr::UNSPECIFIED, 0).into() } else { (std::net::Ipv6Addr::UNSPECIFIED, 0).into() };
    let socket = UdpSocket::bind(any).await?;
    let (tx, mut rx) = mpsc::unbounded_channel::<NgRequest>();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Some(request) = rx.recv().await {
            let cookie = format!("{:016x}", rand::random::<u64>());
            let mut datagram = Vec::with_capacity(cookie.len() + 1 + request.command.len());
            datagram.extend_from_slice(cookie.as_bytes());
            datagram.push(b' ');
            datagram.extend_from_slice(&request.command);
            let mut result = Err(format!("no reply from the IMS-AGW at {agw} after {NG_ATTEMPTS} attempts"));
            'attempts: for _ in 0..NG_ATTEMPTS {
                if let Err(e) = socket.send_to(&datagram, agw).await {
                    result = Err(format!("ng send to {agw}: {e}"));
                    break;
                }
                let deadline = tokio::time::Instant::now() + NG_WAIT;
                while let Ok(Ok((n, _))) = tokio::time::timeout_at(deadline, socket.recv_from(&mut buf)).await {
                    if let Ok((c, message)) = mediasec_agw::ng::split_cookie(buf.get(..n).unwrap_or_default())
                        && c == cookie.as_bytes()
                    {
                        result = Ok(message.to_vec());
                        break 'attempts;
                    }
                }
            }
            if replies.send((request.id, result)).is_err() {
                return;
            }
        }
    });
    Ok(tx)
}

/// What the service task publishes after each event: the proxy's counters and what it holds.
#[derive(Clone, Debug, Default)]
struct Observed {
    stats: Stats,
    /// Requests and client branches in flight ([`Proxy::in_flight`]).
    in_flight: (usize, usize),
}

/// A running CSCF; dropping it stops it.
pub struct Cscf {
    local: SocketAddr,
    endpoint: Endpoint,
    observed: Arc<Mutex<Observed>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Cscf {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Cscf {
    /// Binds `addr` and starts serving.
    pub async fn start(config: ProxyConfig, addr: SocketAddr, timers: Timers) -> Result<Self, mediasec_sip::Error> {
        Self::start_with(config, addr, Config::from(timers)).await
    }

    /// Binds `addr` with this endpoint configuration (with a TLS server side, also its TLS
    /// port: the proxy then record-routes its TLS side, RFC 5658) and starts serving.
    pub async fn start_with(config: ProxyConfig, addr: SocketAddr, endpoint: Config) -> Result<Self, mediasec_sip::Error> {
        let (endpoint, mut events) = Endpoint::bind_with(addr, endpoint).await?;
        let local = endpoint.local_addr();
        let tls_local = endpoint.tls_addr();
        let observed = Arc::new(Mutex::new(Observed::default()));
        let shared = Arc::clone(&observed);
        let handle = endpoint.clone();
        let (ng_tx, mut ng_replies) = mpsc::unbounded_channel();
        let ng_queue = match config.agw_ng {
            Some(agw) => Some(ng_worker(agw, ng_tx).await?),
            None => None,
        };
        let task = tokio::spawn(async move {
            let mut proxy = Proxy::new(config, local).listening_tls(tls_local);
            // The proxy's timers (Timer C, given-up CANCELs, context expiry) fire with no traffic.
            let mut timers = tokio::time::interval(TICK);
            timers.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let commands = tokio::select! {
                    event = events.recv() => match event {
                        Some(event) => proxy.handle(event, std::time::Instant::now()),
                        None => return,
                    },
                    Some((id, reply)) = ng_replies.recv() => proxy.ng_result(id, reply, std::time::Instant::now()),
                    _ = timers.tick() => proxy.tick(std::time::Instant::now()),
                };
                // Published before anything is sent: whoever sees a response sees its counts.
                if let Ok(mut o) = shared.lock() {
                    *o = Observed { stats: proxy.stats.clone(), in_flight: proxy.in_flight() };
                }
                for command in commands {
                    if endpoint.send(command).is_err() {
                        return;
                    }
                }
                for request in proxy.take_ng() {
                    if let Some(queue) = &ng_queue {
                        let _ = queue.send(request);
                    }
                }
            }
        });
        Ok(Self { local, endpoint: handle, observed, task })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The TLS address, when listening on TLS.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.endpoint.tls_addr()
    }

    /// The SIP endpoint's TCP bounds and TLS handshakes so far.
    pub fn tcp_stats(&self) -> TcpStats {
        self.endpoint.tcp_stats()
    }

    /// SIP messages received so far, by transport.
    pub fn received(&self) -> Received {
        self.endpoint.received()
    }

    /// The proxy's counters.
    pub fn stats(&self) -> Stats {
        self.observed().stats
    }

    fn observed(&self) -> Observed {
        self.observed.lock().map(|o| o.clone()).unwrap_or_default()
    }

    /// Prometheus text exposition (format 0.0.4): the proxy's counters ([`Stats`]), what it
    /// holds in flight, how often the SIP endpoint's bounds acted (TCP, and the TU queue's
    /// 503s, [`mediasec_sip::udp::OverloadStats`]), and its RFC 3263 server location
    /// ([`mediasec_sip::udp::LocateStats`]: lookups refused at the cap, given up at the
    /// deadline, failovers, lookups running).
    pub fn metrics(&self) -> String {
        use std::fmt::Write as _;
        let Observed { stats: s, in_flight: (requests, branches) } = self.observed();
        let tcp = self.endpoint.tcp_stats();
        let overload = self.endpoint.overload_stats();
        let locate = self.endpoint.locate_stats();
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
        };
        let counters = [
            ("mediasec_cscf_requests_total", "Requests received (new server transactions).", s.requests),
            ("mediasec_cscf_branches_total", "Client branches created (each fork counts one).", s.branches),
            ("mediasec_cscf_cancels_total", "CANCELs sent to pending branches.", s.cancels),
            ("mediasec_cscf_timer_c_total", "INVITE branches whose Timer C fired (RFC 3261 16.8): CANCELled, or taken as answered 408.", s.timer_c),
            ("mediasec_cscf_rejected_total", "Requests answered locally with an error.", s.rejected),
            ("mediasec_cscf_sdes_refused_total", "Offers failing the P-CSCF's SDES check.", s.sdes_refused),
            ("mediasec_cscf_e2ae_applied_total", "IMS-ALG: offers and answers the IMS-AGW rewrote for e2ae.", s.e2ae_applied),
            ("mediasec_cscf_e2ae_stripped_total", "IMS-ALG: SDP bodies whose a=3ge2ae inserted by others was removed.", s.e2ae_stripped),
            ("mediasec_cscf_agw_failures_total", "IMS-ALG: ng commands that failed, and ACKs missing the answer.", s.agw_failures),
            ("mediasec_sip_overload_refused_total", "Requests answered 503 by the SIP endpoint: the proxy's event queue was three quarters full.", overload.requests_refused),
            ("mediasec_sip_transactions_full_total", "Requests answered 503 statelessly by the SIP endpoint: its transaction table was full.", overload.transactions_full),
            ("mediasec_sip_udp_queue_refused_total", "Requests answered 503 statelessly by the SIP endpoint before any transaction: its UDP receive queue was above the high-water mark.", overload.udp_queue_deep),
            ("mediasec_sip_events_dropped_total", "Stray or malformed SIP messages dropped: the proxy's event queue was full.", overload.events_dropped),
            ("mediasec_sip_tcp_accepts_refused_total", "Incoming SIP TCP connections closed at once: the overall connection cap.", tcp.accepts_refused),
            ("mediasec_sip_tcp_accepts_refused_per_peer_total", "Incoming SIP TCP connections closed at once: the per-address connection cap.", tcp.accepts_refused_per_peer),
            ("mediasec_sip_tcp_reads_paused_total", "Times a SIP TCP connection stopped reading: its messages waited for the endpoint.", tcp.reads_paused),
            ("mediasec_sip_tcp_connects_refused_total", "Outgoing SIP TCP connections not opened: connection cap.", tcp.connects_refused),
            ("mediasec_sip_tcp_queues_full_total", "SIP TCP connections failed: their peer did not take what was sent.", tcp.queues_full),
            ("mediasec_sip_tcp_streams_unframed_total", "SIP TCP connections closed: their stream could not be framed.", tcp.streams_unframed),
            ("mediasec_sip_tls_connections_total", "SIP TLS connections established (handshake completed), accepted and opened.", tcp.tls_connections),
            ("mediasec_sip_dns_lookups_refused_total", "Next hops named by a host name not located: the endpoint's cap of concurrent DNS locations was reached (the request failed as unreachable).", locate.lookups_refused),
            ("mediasec_sip_dns_deadlines_total", "DNS locations of a next hop given up at the endpoint's deadline (the request failed as unreachable).", locate.deadlines_passed),
            ("mediasec_sip_dns_failovers_total", "Requests sent again with a new branch to the next located target after a timeout, a transport error or a 503 (RFC 3263 4.3).", locate.failovers),
            ("mediasec_sip_tls_handshakes_failed_total", "SIP TLS handshakes failed or timed out (certificate refused, no client certificate, plaintext on the TLS port).", tcp.tls_handshakes_failed),
        ];
        for (name, help, value) in counters {
            metric(name, "counter", help, value);
        }
        metric("mediasec_cscf_requests_in_flight", "gauge", "Requests whose server transaction the proxy still handles.", requests as u64);
        metric("mediasec_cscf_branches_in_flight", "gauge", "Client branches still pending.", branches as u64);
        metric("mediasec_sip_dns_lookups_running", "gauge", "DNS locations of next hops running now.", locate.lookups_running as u64);
        out
    }
}
