//! The UDP driver: tokio tasks for the ng control socket, the stream-timeout timer and
//! metrics; one media thread for every media socket (RTP on even ports, RTCP on the next).
//! The [`Controller`] and its relay sit behind one mutex.
//!
//! The media thread waits on one `epoll` set (via `mio`, edge-triggered) holding every media
//! socket, and works in batches, taking the mutex once per batch, not per packet: it receives
//! one packet from each readable socket in turn into one of [`BATCH`] preallocated 2 KiB
//! buffers, lets the relay transform it in place, and once the buffers are full (or every
//! socket has been visited) sends the forwarded packets from the other legs' sockets. A
//! socket stays on the ready list until it reports `WouldBlock` (edge-triggered readiness
//! is only re-armed by a drain). No allocation, task wake-up or clock read per packet.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd as _;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token};
use rand::RngCore as _;
use tokio::net::UdpSocket;

use crate::control::{Config, Controller, PortSource};
use crate::relay::Verdict;
use crate::Error;

/// Driver settings.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// ng control address.
    pub listen_ng: SocketAddr,
    /// Media address (bound and written into SDP).
    pub interface: IpAddr,
    /// Lowest media port (rounded up to even).
    pub port_min: u16,
    /// Highest media port.
    pub port_max: u16,
    /// Prometheus `/metrics` over HTTP/1.1 on this address, if any.
    pub metrics: Option<SocketAddr>,
    /// Gateway behaviour.
    pub control: Config,
}

/// Media sockets by local port, and the range they come from.
struct Sockets {
    interface: IpAddr,
    min: u16,
    max: u16,
    next: u16,
    open: HashMap<u16, std::net::UdpSocket>,
    /// The media thread's readiness set; a socket's token is its port.
    registry: Registry,
}

impl Sockets {
    /// Binds a non-blocking media socket and adds it to the media thread's readiness set.
    fn bind(&self, port: u16) -> io::Result<std::net::UdpSocket> {
        let s = std::net::UdpSocket::bind(SocketAddr::new(self.interface, port))?;
        s.set_nonblocking(true)?;
        self.registry.register(&mut SourceFd(&s.as_raw_fd()), Token(usize::from(port)), Interest::READABLE)?;
        Ok(s)
    }
}

impl PortSource for Sockets {
    fn allocate_pair(&mut self) -> Result<u16, Error> {
        let first = self.min.next_multiple_of(2);
        let span = u32::from(self.max.saturating_sub(first)) / 2 + 1;
        for _ in 0..span {
            let port = self.next.max(first);
            self.next = if u32::from(port) + 2 > u32::from(self.max) { first } else { port + 2 };
            if port.checked_add(1).is_none_or(|p| p > self.max) || self.open.contains_key(&port) {
                continue;
            }
            // A socket dropped on failure leaves the readiness set as it is closed.
            let (Ok(rtp), Ok(rtcp)) = (self.bind(port), self.bind(port + 1)) else {
                continue;
            };
            self.open.insert(port, rtp);
            self.open.insert(port + 1, rtcp);
            return Ok(port);
        }
        Err(Error::NoPorts)
    }

    fn release_pair(&mut self, rtp_port: u16) {
        for p in [rtp_port, rtp_port.wrapping_add(1)] {
            if let Some(s) = self.open.remove(&p) {
                let _ = self.registry.deregister(&mut SourceFd(&s.as_raw_fd()));
            }
        }
    }
}

struct State {
    ctl: Controller,
    sockets: Sockets,
}

type Shared = Arc<Mutex<State>>;

fn lock(s: &Shared) -> MutexGuard<'_, State> {
    s.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A running gateway.
pub struct Agw {
    ng_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    state: Shared,
}

impl Agw {
    /// Binds the ng socket and starts the control and timer tasks on the current runtime.
    pub async fn start(config: ServerConfig) -> io::Result<Self> {
        let ng = UdpSocket::bind(config.listen_ng).await?;
        let ng_addr = ng.local_addr()?;
        let poll = Poll::new()?;
        let sockets = Sockets {
            interface: config.interface,
            min: config.port_min,
            max: config.port_max,
            next: 0,
            open: HashMap::new(),
            registry: poll.registry().try_clone()?,
        };
        let state: Shared = Arc::new(Mutex::new(State { ctl: Controller::new(config.control), sockets }));
        // The thread ends once the control and timer tasks (the state's owners) are gone.
        let weak = Arc::downgrade(&state);
        std::thread::Builder::new().name("agw-media".into()).spawn(move || media_thread(poll, &weak))?;
        tokio::spawn(control_loop(ng, state.clone()));
        tokio::spawn(timer_loop(state.clone()));
        let mut metrics_addr = None;
        if let Some(addr) = config.metrics {
            let listener = tokio::net::TcpListener::bind(addr).await?;
            metrics_addr = Some(listener.local_addr()?);
            tracing::info!(addr = ?metrics_addr, "metrics on /metrics");
            tokio::spawn(metrics_loop(listener, state.clone()));
        }
        tracing::info!(%ng_addr, "IMS-AGW listening for ng commands");
        Ok(Self { ng_addr, metrics_addr, state })
    }

    /// The ng control address actually bound.
    pub fn ng_addr(&self) -> SocketAddr {
        self.ng_addr
    }

    /// The metrics address actually bound, if metrics are served.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Calls in progress.
    pub fn call_count(&self) -> usize {
        lock(&self.state).ctl.call_count()
    }
}

async fn control_loop(ng: UdpSocket, state: Shared) {
    let mut buf = vec![0u8; 65536];
    loop {
        let Ok((n, from)) = ng.recv_from(&mut buf).await else { continue };
        let reply = {
            let mut st = lock(&state);
            let State { ctl, sockets } = &mut *st;
            let mut rng = |b: &mut [u8]| rand::rng().fill_bytes(b);
            ctl.handle_datagram(buf.get(..n).unwrap_or_default(), Instant::now(), sockets, &mut rng)
        };
        if let Some(reply) = reply {
            let _ = ng.send_to(&reply, from).await;
        }
    }
}

async fn timer_loop(state: Shared) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let mut st = lock(&state);
        let State { ctl, sockets } = &mut *st;
        ctl.expire(Instant::now(), sockets);
    }
}

/// Packets received per batch (and buffers of the media thread).
const BATCH: usize = 64;
/// Received packets leave room for the SRTP trailer (tag + MKI) that protection appends.
const RX_MAX: usize = 1900;
/// How long the idle media thread waits before checking that the gateway still exists.
const IDLE: Duration = Duration::from_millis(200);

/// A packet to send: from our local port, to, length at the start of its buffer.
type Outgoing = (u16, SocketAddr, usize);

fn media_thread(mut poll: Poll, state: &Weak<Mutex<State>>) {
    let mut events = Events::with_capacity(1024);
    let mut bufs = vec![[0u8; 2048]; BATCH];
    let mut out: Vec<Outgoing> = Vec::with_capacity(BATCH);
    // Ports whose socket has not reported `WouldBlock` since its last readiness event.
    let mut ready: Vec<u16> = Vec::new();
    loop {
        let timeout = if ready.is_empty() { IDLE } else { Duration::ZERO };
        if let Err(e) = poll.poll(&mut events, Some(timeout))
            && e.kind() != io::ErrorKind::Interrupted
        {
            tracing::error!(error = %e, "media poll failed; media relaying stopped");
            return;
        }
        ready.extend(events.iter().filter_map(|e| u16::try_from(e.token().0).ok()));
        let Some(state) = state.upgrade() else { return };
        if ready.is_empty() {
            continue;
        }
        let mut st = lock(&state);
        relay_pass(&mut st, &mut ready, &mut bufs, &mut out, Instant::now());
    }
}

/// One pass over the ready sockets: at most one packet from each, sent in batches.
fn relay_pass(st: &mut State, ready: &mut Vec<u16>, bufs: &mut [[u8; 2048]], out: &mut Vec<Outgoing>, now: Instant) {
    let State { ctl, sockets } = st;
    let mut i = 0;
    while let Some(&port) = ready.get(i) {
        let (Some(socket), Some(buf)) = (sockets.open.get(&port), bufs.get_mut(out.len())) else {
            ready.swap_remove(i);
            continue;
        };
        let Some(rx) = buf.get_mut(..RX_MAX) else { return };
        match socket.recv_from(rx) {
            Ok((n, from)) => {
                if let Verdict::Forward { from_port, to, len } = ctl.relay_mut().handle(port, from, buf, n, now) {
                    out.push((from_port, to, len));
                    if out.len() == bufs.len() {
                        flush(sockets, bufs, out);
                    }
                }
                i += 1;
            }
            // An ICMP error for an earlier send; the socket may still hold packets.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => i += 1,
            Err(_) => {
                ready.swap_remove(i);
            }
        }
    }
    flush(sockets, bufs, out);
}

fn flush(sockets: &Sockets, bufs: &[[u8; 2048]], out: &mut Vec<Outgoing>) {
    for (&(from_port, to, len), buf) in out.iter().zip(bufs) {
        if let (Some(socket), Some(packet)) = (sockets.open.get(&from_port), buf.get(..len)) {
            let _ = socket.send_to(packet, to);
        }
    }
    out.clear();
}

/// A minimal HTTP/1.1 responder: `GET /metrics` → Prometheus text, anything else → 404.
async fn metrics_loop(listener: tokio::net::TcpListener, state: Shared) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    loop {
        let Ok((mut conn, _)) = listener.accept().await else { continue };
        let state = state.clone();
        tokio::spawn(async move {
            let mut req = [0u8; 1024];
            let Ok(n) = conn.read(&mut req).await else { return };
            let head = req.get(..n).unwrap_or_default();
            let (status, body) = if head.starts_with(b"GET /metrics ") {
                ("200 OK", lock(&state).ctl.metrics())
            } else {
                ("404 Not Found", String::from("not found\n"))
            };
            let reply = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(reply.as_bytes()).await;
        });
    }
}
