//! The tokio UDP driver: one ng control socket, one UDP socket per media port (RTP on even
//! ports, RTCP on the next), a timer for stream timeouts. The [`Controller`] and its relay
//! sit behind one mutex; each media socket's task receives into its own 2 KiB buffer,
//! lets the relay transform the packet in place and sends it from the other leg's socket —
//! no allocation per packet.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rand::RngCore as _;
use tokio::net::UdpSocket;
use tokio::task::AbortHandle;

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
    open: HashMap<u16, (Arc<UdpSocket>, Option<AbortHandle>)>,
    /// Bound during a command; their receive tasks are started after it.
    fresh: Vec<(u16, Arc<UdpSocket>)>,
}

fn bind(addr: SocketAddr) -> io::Result<Arc<UdpSocket>> {
    let s = std::net::UdpSocket::bind(addr)?;
    s.set_nonblocking(true)?;
    Ok(Arc::new(UdpSocket::from_std(s)?))
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
            let (Ok(rtp), Ok(rtcp)) = (bind(SocketAddr::new(self.interface, port)), bind(SocketAddr::new(self.interface, port + 1)))
            else {
                continue;
            };
            self.open.insert(port, (rtp.clone(), None));
            self.open.insert(port + 1, (rtcp.clone(), None));
            self.fresh.push((port, rtp));
            self.fresh.push((port + 1, rtcp));
            return Ok(port);
        }
        Err(Error::NoPorts)
    }

    fn release_pair(&mut self, rtp_port: u16) {
        for p in [rtp_port, rtp_port.wrapping_add(1)] {
            if let Some((_, Some(task))) = self.open.remove(&p) {
                task.abort();
            }
            self.fresh.retain(|(q, _)| *q != p);
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
        let sockets = Sockets {
            interface: config.interface,
            min: config.port_min,
            max: config.port_max,
            next: 0,
            open: HashMap::new(),
            fresh: Vec::new(),
        };
        let state: Shared = Arc::new(Mutex::new(State { ctl: Controller::new(config.control), sockets }));
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
            let reply = ctl.handle_datagram(buf.get(..n).unwrap_or_default(), Instant::now(), sockets, &mut rng);
            for (port, socket) in std::mem::take(&mut sockets.fresh) {
                let task = tokio::spawn(media_loop(port, socket, state.clone()));
                if let Some(entry) = sockets.open.get_mut(&port) {
                    entry.1 = Some(task.abort_handle());
                }
            }
            reply
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

async fn media_loop(port: u16, socket: Arc<UdpSocket>, state: Shared) {
    let mut buf = [0u8; 2048];
    loop {
        // Leave room for the SRTP trailer (tag + MKI) that protection appends.
        let Some(rx) = buf.get_mut(..1900) else { return };
        let (n, from) = match socket.recv_from(rx).await {
            Ok(x) => x,
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
            Err(_) => return,
        };
        let mut st = lock(&state);
        let State { ctl, sockets } = &mut *st;
        if let Verdict::Forward { from_port, to, len } = ctl.relay_mut().handle(port, from, &mut buf, n, Instant::now())
            && let (Some((out, _)), Some(packet)) = (sockets.open.get(&from_port), buf.get(..len))
        {
            let _ = out.try_send_to(packet, to);
        }
    }
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
