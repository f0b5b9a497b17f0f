//! The UDP driver: tokio tasks for the ng control socket with the stream-timeout timer, and
//! for metrics; media threads for the media sockets (RTP on even ports, RTCP on the next).
//!
//! **Shards.** With N media threads ([`ServerConfig::media_threads`]) the gateway is N
//! shards that share nothing: each has its own [`Controller`] (its calls and their relay),
//! its own slice of the port range and its own media thread with its own driver. An ng
//! command goes to the shard holding its call ([`Router`]: the shard its `call-id` hashes
//! to, or another if that one was full at the offer), so every command about one call
//! reaches the controller holding it; a command without one (`ping`) goes to the first. A
//! shard's controller and relay sit behind one mutex, which its media thread takes once per
//! batch of packets, not per packet; the threads never contend for a lock (the control side
//! takes a shard's lock per command). No allocation, task wake-up or clock read per packet.
//!
//! The media thread has two drivers ([`MediaPath`]):
//! - **io_uring** (Linux ≥ 6.1, [`crate::uring`]): each socket has an armed multishot receive
//!   into a pool of provided buffers; the relay transforms each packet in the buffer it
//!   arrived in, and the forwarded packets are sent from there. One `io_uring_enter` per batch
//!   submits its sends and waits for the next arrivals. Sockets opened and closed by the
//!   control side are handed to the media thread as changes, with an eventfd to wake it.
//!   Each socket that sends gets a connected *twin* on its port for its destination, which
//!   sends without a route lookup per packet ([`crate::uring`], § Connected twins).
//! - **epoll** (the fallback where io_uring is refused, and `--no-io-uring`): one `epoll` set
//!   (via `mio`, edge-triggered) of every media socket; each readable socket is read with
//!   `recvmmsg` into one of [`BATCH`] preallocated 2 KiB buffers, the relay transforms the
//!   packet in place, and the forwarded packets are sent with one `sendto` each once the
//!   buffers are full (or every socket has been visited). A socket stays on the ready list
//!   until it reports `WouldBlock` (edge-triggered readiness is only re-armed by a drain).

use std::collections::HashMap;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd as _, AsRawFd as _};
use std::sync::mpsc::sync_channel;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token};
use nix::errno::Errno;
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::socket::{recvmmsg, MsgFlags, MultiHeaders, SockaddrStorage};
use rand::RngCore as _;
use tokio::net::UdpSocket;

use crate::bencode::Value;
use crate::control::{Config, Controller, Handled, Metrics, PortSource};
use crate::ng;
use crate::ports::PortTable;
use crate::relay::Verdict;
use crate::uring::MediaRing;
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
    /// Media threads (≥ 1), each relaying the calls of one shard on an equal slice of the
    /// port range.
    pub media_threads: usize,
    /// Gateway behaviour.
    pub control: Config,
}

/// The `RLIMIT_NOFILE` that `ports` media ports want: two descriptors per port with the
/// io_uring driver (a main socket and its connected twin, each also a registered-file slot,
/// bounded by this limit), and 256 for the rest of the process. Below about `ports` + 256 the
/// io_uring driver is refused (epoll instead); between that and this, some ports send
/// unconnected (no twin).
pub fn open_files_wanted(ports: u64) -> u64 {
    ports.saturating_mul(2).saturating_add(256)
}

/// Raises the soft `RLIMIT_NOFILE` (up to the hard limit) to [`open_files_wanted`] for `ports`
/// media ports. Returns the soft limit now.
pub fn ensure_open_files(ports: u64) -> io::Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    let want = open_files_wanted(ports).min(hard);
    if want <= soft {
        return Ok(soft);
    }
    setrlimit(Resource::RLIMIT_NOFILE, want, hard)?;
    Ok(want)
}

/// How the media thread receives and sends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MediaPath {
    /// io_uring where the kernel allows it (chosen at start-up, and logged), else
    /// [`MediaPath::Epoll`].
    #[default]
    Auto,
    /// `epoll` readiness, `recvmmsg` and one `sendto` per packet.
    Epoll,
}

/// How the media thread learns about the sockets the control side opens and closes.
enum Readiness {
    /// Registered in the media thread's epoll set directly (epoll is thread-safe).
    Epoll(Registry),
    /// Queued for the media thread, which owns its io_uring (`(port, opened?)`), and signalled
    /// on the eventfd.
    Ring { changes: Vec<(u16, bool)>, wake: Arc<EventFd> },
}

impl Readiness {
    fn opened(&mut self, port: u16, socket: &std::net::UdpSocket) -> io::Result<()> {
        match self {
            Self::Epoll(registry) => registry.register(&mut SourceFd(&socket.as_raw_fd()), Token(usize::from(port)), Interest::READABLE),
            Self::Ring { changes, wake } => {
                changes.push((port, true));
                wake.write(1).map(drop).map_err(io::Error::from)
            }
        }
    }

    fn closed(&mut self, port: u16, socket: &std::net::UdpSocket) {
        match self {
            Self::Epoll(registry) => {
                let _ = registry.deregister(&mut SourceFd(&socket.as_raw_fd()));
            }
            Self::Ring { changes, wake } => {
                changes.push((port, false));
                let _ = wake.write(1);
            }
        }
    }
}

/// Media sockets by local port, and the range they come from.
struct Sockets {
    interface: IpAddr,
    min: u16,
    max: u16,
    next: u16,
    open: PortTable<std::net::UdpSocket>,
    readiness: Readiness,
    /// Media packets handed to the kernel: (from a connected twin, with an address).
    sends: (u64, u64),
    /// Port pairs bound.
    pairs_open: u32,
}

impl Sockets {
    /// Port pairs of the slice not bound by us (some may still be taken by another process).
    fn free_pairs(&self) -> u32 {
        let first = self.min.next_multiple_of(2);
        let pairs = (u32::from(self.max) + 1).saturating_sub(u32::from(first)) / 2;
        pairs.saturating_sub(self.pairs_open)
    }

    /// Binds a non-blocking media socket and hands it to the media thread.
    fn bind(&mut self, port: u16) -> io::Result<std::net::UdpSocket> {
        let s = std::net::UdpSocket::bind(SocketAddr::new(self.interface, port))?;
        s.set_nonblocking(true)?;
        self.readiness.opened(port, &s)?;
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
            if port.checked_add(1).is_none_or(|p| p > self.max) || self.open.contains(port) {
                continue;
            }
            let (rtp, rtcp) = (self.bind(port), self.bind(port + 1));
            let (Ok(rtp), Ok(rtcp)) = (rtp, rtcp) else {
                // A socket dropped here leaves the epoll set as it is closed; the media
                // thread's ring finds no socket for a queued port and skips it.
                continue;
            };
            self.open.insert(port, rtp);
            self.open.insert(port + 1, rtcp);
            self.pairs_open += 1;
            return Ok(port);
        }
        Err(Error::NoPorts)
    }

    fn release_pair(&mut self, rtp_port: u16) {
        if self.open.contains(rtp_port) {
            self.pairs_open = self.pairs_open.saturating_sub(1);
        }
        for p in [rtp_port, rtp_port.wrapping_add(1)] {
            if let Some(s) = self.open.remove(p) {
                self.readiness.closed(p, &s);
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

/// The port pairs (RTP even, RTCP next) between `min` and `max`, split into `shards`
/// contiguous slices as equal as they can be: `(first, last)` port of each slice.
fn split_ports(min: u16, max: u16, shards: usize) -> io::Result<Vec<(u16, u16)>> {
    let first = u32::from(min.next_multiple_of(2));
    let pairs = (u32::from(max) + 1).saturating_sub(first) / 2;
    let n = u32::try_from(shards).unwrap_or(u32::MAX);
    if n == 0 || pairs < n {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("media ports {min}-{max} hold {pairs} RTP/RTCP port pairs, fewer than the {shards} media threads (each needs at least one)"),
        ));
    }
    let (each, extra) = (pairs / n, pairs % n);
    let mut at = first;
    let mut slices = Vec::with_capacity(shards);
    for i in 0..n {
        let len = 2 * (each + u32::from(i < extra));
        // Within u16: the slices end at or below `max`.
        let (lo, hi) = (u16::try_from(at), u16::try_from(at + len - 1));
        let (Ok(lo), Ok(hi)) = (lo, hi) else { return Err(io::Error::other("port slice out of range")) };
        slices.push((lo, hi));
        at += len;
    }
    Ok(slices)
}

/// The command name and `call-id` of an ng datagram, as far as they decode (the controller
/// answers whatever does not with its error).
struct Peek {
    command: Option<Vec<u8>>,
    call_id: Option<Vec<u8>>,
}

fn peek(datagram: &[u8]) -> Peek {
    let message = ng::split_cookie(datagram).ok().and_then(|(_, m)| Value::decode(m).ok());
    let field = |key| message.as_ref().and_then(|m| m.get(key)).and_then(Value::as_bytes).map(<[u8]>::to_vec);
    Peek { command: field("command"), call_id: field("call-id") }
}

/// The shard a call belongs to by the hash of its `call-id`.
fn hash_shard(call_id: &[u8], shards: usize) -> usize {
    use std::hash::{Hash as _, Hasher as _};
    if shards <= 1 {
        return 0;
    }
    let mut h = std::hash::DefaultHasher::new();
    call_id.hash(&mut h);
    usize::try_from(h.finish() % u64::try_from(shards).unwrap_or(1)).unwrap_or(0)
}

/// Routes ng commands to the shards (module docs; docs/agw.md § Shards). A call lives in the
/// shard of its `call-id`'s hash, unless that shard had no free port pair for its offer: the
/// offer then goes to the other shards, most free pairs first, and the call stays where it
/// was accepted (`moved`). A command without a call-id goes to the first shard; `list`
/// there names the calls of every shard.
struct Router {
    shards: Arc<[Shared]>,
    /// Calls held by another shard than their hash's, until they end.
    moved: HashMap<Vec<u8>, usize>,
}

impl Router {
    fn shard(&self, index: usize) -> Option<&Shared> {
        self.shards.get(index)
    }

    fn home(&self, call_id: Option<&[u8]>) -> usize {
        call_id.map_or(0, |id| self.moved.get(id).copied().unwrap_or_else(|| hash_shard(id, self.shards.len())))
    }

    fn holds(&self, index: usize, call_id: &[u8]) -> bool {
        let Ok(id) = std::str::from_utf8(call_id) else { return false };
        self.shard(index).is_some_and(|s| lock(s).ctl.has_call(id))
    }

    fn run(&self, index: usize, datagram: &[u8], now: Instant, elsewhere: &[String]) -> Option<Handled> {
        let mut st = lock(self.shard(index)?);
        let State { ctl, sockets } = &mut *st;
        let mut rng = |b: &mut [u8]| rand::rng().fill_bytes(b);
        ctl.handle_datagram(datagram, now, sockets, &mut rng, elsewhere)
    }

    /// Handles one ng datagram; the reply datagram.
    fn handle(&mut self, datagram: &[u8], now: Instant) -> Option<Vec<u8>> {
        let Peek { command, call_id } = peek(datagram);
        let home = self.home(call_id.as_deref());
        let elsewhere: Vec<String> = if command.as_deref() == Some(b"list") {
            let others = self.shards.iter().enumerate().filter(|&(i, _)| i != home);
            others.flat_map(|(_, s)| lock(s).ctl.call_ids().map(str::to_owned).collect::<Vec<_>>()).collect()
        } else {
            Vec::new()
        };
        let new_offer = command.as_deref() == Some(b"offer") && call_id.as_deref().is_some_and(|id| !self.holds(home, id));
        let handled = self.run(home, datagram, now, &elsewhere)?;
        let (Some(id), true, Some(Error::NoPorts)) = (call_id, new_offer, &handled.refused) else { return Some(handled.reply) };
        let mut others: Vec<(u32, usize)> = (0..self.shards.len())
            .filter(|&i| i != home)
            .filter_map(|i| Some((lock(self.shard(i)?).sockets.free_pairs(), i)))
            .filter(|&(free, _)| free > 0)
            .collect();
        others.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        for (_, index) in others {
            let Some(h) = self.run(index, datagram, now, &[]) else { continue };
            if h.refused == Some(Error::NoPorts) {
                continue;
            }
            if h.refused.is_none() {
                tracing::info!(call_id = %String::from_utf8_lossy(&id), home, shard = index, "offer placed outside its full shard");
                self.moved.insert(id, index);
            }
            return Some(h.reply);
        }
        tracing::warn!(call_id = %String::from_utf8_lossy(&id), "offer refused: no free media port in any shard");
        Some(handled.reply)
    }

    /// Ends the streams that timed out, in every shard, and forgets the moved calls that ended.
    fn expire(&mut self, now: Instant) {
        for shard in self.shards.iter() {
            let mut st = lock(shard);
            let State { ctl, sockets } = &mut *st;
            ctl.expire(now, sockets);
        }
        let shards = &self.shards;
        self.moved.retain(|id, index| {
            let Ok(id) = std::str::from_utf8(id) else { return false };
            shards.get(*index).is_some_and(|s| lock(s).ctl.has_call(id))
        });
    }
}

/// A running gateway.
pub struct Agw {
    ng_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    io_uring: bool,
    shards: Arc<[Shared]>,
}

impl Agw {
    /// Binds the ng socket and starts the control and timer tasks on the current runtime;
    /// media is relayed as [`MediaPath::Auto`] says.
    pub async fn start(config: ServerConfig) -> io::Result<Self> {
        Self::start_with(config, MediaPath::Auto).await
    }

    /// [`Agw::start`] with the given media path.
    pub async fn start_with(config: ServerConfig, path: MediaPath) -> io::Result<Self> {
        let slices = split_ports(config.port_min, config.port_max, config.media_threads)?;
        let ng = UdpSocket::bind(config.listen_ng).await?;
        let ng_addr = ng.local_addr()?;
        let mut shards = Vec::with_capacity(slices.len());
        let mut io_uring = true;
        for (i, (min, max)) in slices.into_iter().enumerate() {
            let (shard, ring) = start_shard(i, min, max, config.interface, config.control.clone(), path)?;
            io_uring &= ring;
            shards.push(shard);
        }
        let shards: Arc<[Shared]> = shards.into();
        tokio::spawn(control_loop(ng, shards.clone()));
        let mut metrics_addr = None;
        if let Some(addr) = config.metrics {
            let listener = tokio::net::TcpListener::bind(addr).await?;
            metrics_addr = Some(listener.local_addr()?);
            tracing::info!(addr = ?metrics_addr, "metrics on /metrics");
            tokio::spawn(metrics_loop(listener, shards.clone()));
        }
        tracing::info!(%ng_addr, media_threads = shards.len(), "IMS-AGW listening for ng commands");
        Ok(Self { ng_addr, metrics_addr, io_uring, shards })
    }

    /// The ng control address actually bound.
    pub fn ng_addr(&self) -> SocketAddr {
        self.ng_addr
    }

    /// The metrics address actually bound, if metrics are served.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Whether media is relayed over io_uring ([`MediaPath`]) by every media thread.
    pub fn uses_io_uring(&self) -> bool {
        self.io_uring
    }

    /// Calls in progress.
    pub fn call_count(&self) -> usize {
        self.shards.iter().map(|s| lock(s).ctl.call_count()).sum()
    }

    /// Calls in progress per media thread (shard), in shard order.
    pub fn calls_per_media_thread(&self) -> Vec<usize> {
        self.shards.iter().map(|s| lock(s).ctl.call_count()).collect()
    }

    /// Media packets sent so far, as (from a connected twin socket, with a destination
    /// address), as of each media thread's last batch; the epoll driver sends with addresses
    /// only.
    pub fn media_sends(&self) -> (u64, u64) {
        self.shards.iter().map(|s| lock(s).sockets.sends).fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    }
}

/// Starts shard `index`: its media thread (which creates its driver: an io_uring belongs to
/// the thread that made it) and its state over ports `min`–`max`. Returns the state and
/// whether the thread relays over io_uring.
fn start_shard(index: usize, min: u16, max: u16, interface: IpAddr, control: Config, path: MediaPath) -> io::Result<(Shared, bool)> {
    let wake = Arc::new(EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)?);
    let ports = u32::from(max.saturating_sub(min)) + 1;
    // The thread says which driver it has, then waits for the state it serves.
    let (ready_tx, ready_rx) = sync_channel(1);
    let (state_tx, state_rx) = sync_channel::<Weak<Mutex<State>>>(1);
    let thread_wake = wake.clone();
    let name = if index == 0 { "agw-media".to_owned() } else { format!("agw-media-{index}") };
    std::thread::Builder::new().name(name).spawn(move || {
        let Some(driver) = Driver::new(path, ports, thread_wake, &ready_tx) else { return };
        if let Ok(state) = state_rx.recv() {
            driver.run(&state);
        }
    })?;
    let readiness = match ready_rx.recv().map_err(io::Error::other)?? {
        Some(registry) => Readiness::Epoll(registry),
        None => Readiness::Ring { changes: Vec::new(), wake },
    };
    let io_uring = matches!(readiness, Readiness::Ring { .. });
    let sockets = Sockets { interface, min, max, next: 0, open: PortTable::default(), readiness, sends: (0, 0), pairs_open: 0 };
    let state: Shared = Arc::new(Mutex::new(State { ctl: Controller::new(control), sockets }));
    // The thread ends once the control and timer tasks (the state's owners) are gone.
    state_tx.send(Arc::downgrade(&state)).map_err(io::Error::other)?;
    Ok((state, io_uring))
}

/// The ng socket and the 1-s stream-timeout tick, in one task that owns the [`Router`].
async fn control_loop(ng: UdpSocket, shards: Arc<[Shared]>) {
    let mut router = Router { shards, moved: HashMap::new() };
    let mut buf = vec![0u8; 65536];
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            got = ng.recv_from(&mut buf) => {
                let Ok((n, from)) = got else { continue };
                let datagram = buf.get(..n).unwrap_or_default();
                if let Some(reply) = router.handle(datagram, Instant::now()) {
                    let _ = ng.send_to(&reply, from).await;
                }
            }
            _ = tick.tick() => router.expire(Instant::now()),
        }
    }
}

/// Packet buffers of the epoll driver: packets received before the forwarded ones are sent.
const BATCH: usize = 64;
/// Packets read from one socket per visit (one `recvmmsg`).
const READ_MAX: usize = 8;
/// Received packets leave room for the SRTP trailer (tag + MKI) that protection appends.
const RX_MAX: usize = 1900;
/// How long the idle media thread waits before checking that the gateway still exists.
const IDLE: Duration = Duration::from_millis(200);

type Buf = [u8; 2048];

/// The media thread's driver.
enum Driver {
    Ring { ring: Box<MediaRing>, _wake: Arc<EventFd> },
    Epoll(Poll),
}

impl Driver {
    /// Chooses and creates the driver, and reports it on `ready` (the epoll set's registry for
    /// [`Driver::Epoll`], nothing for io_uring) or the error that leaves media without one.
    fn new(path: MediaPath, sockets: u32, wake: Arc<EventFd>, ready: &std::sync::mpsc::SyncSender<io::Result<Option<Registry>>>) -> Option<Self> {
        if path == MediaPath::Auto {
            match MediaRing::new(sockets, wake.as_fd()) {
                Ok(ring) => {
                    tracing::info!("media thread: io_uring (multishot receives, batched sends)");
                    ready.send(Ok(None)).ok()?;
                    return Some(Self::Ring { ring: Box::new(ring), _wake: wake });
                }
                Err(e) => tracing::warn!(error = %e, sockets, "io_uring unavailable (or RLIMIT_NOFILE below the port range): media relayed with epoll + recvmmsg + sendto"),
            }
        }
        match Poll::new().and_then(|poll| Ok((poll.registry().try_clone()?, poll))) {
            Ok((registry, poll)) => {
                tracing::info!("media thread: epoll + recvmmsg + sendto");
                ready.send(Ok(Some(registry))).ok()?;
                Some(Self::Epoll(poll))
            }
            Err(e) => {
                let _ = ready.send(Err(e));
                None
            }
        }
    }

    fn run(self, state: &Weak<Mutex<State>>) {
        match self {
            Self::Ring { ring, _wake } => ring_thread(*ring, state),
            Self::Epoll(poll) => epoll_thread(poll, state),
        }
    }
}

fn ring_thread(mut ring: MediaRing, state: &Weak<Mutex<State>>) {
    loop {
        if let Err(e) = ring.wait(IDLE) {
            tracing::error!(error = %e, "media io_uring failed; media relaying stopped");
            return;
        }
        let Some(state) = state.upgrade() else { return };
        let mut st = lock(&state);
        let State { ctl, sockets } = &mut *st;
        let now = Instant::now();
        ring.dispatch(|port, from, buf, len| match ctl.relay_mut().handle(port, from, buf, len, now) {
            Verdict::Forward { from_port, to, len } => Some((from_port, to, len)),
            Verdict::Drop(_) => None,
        });
        // Sockets the control side opened or closed since (their wake-up was among the
        // completions just handled); registered now, armed by the next wait's submission.
        if ring.take_wake()
            && let Readiness::Ring { changes, .. } = &mut sockets.readiness
        {
            for (port, opened) in changes.drain(..) {
                let changed = match (opened, sockets.open.get(port)) {
                    (true, Some(socket)) => ring.open(port, socket.as_fd()),
                    (true, None) => Ok(()),
                    (false, _) => ring.close(port),
                };
                if let Err(e) = changed {
                    tracing::error!(port, opened, error = %e, "media socket not (un)registered with io_uring");
                }
            }
        }
        ring.connect_twins(now, |port| sockets.open.get(port).map(|s| s.as_fd()));
        sockets.sends = ring.sends();
    }
}

/// The epoll driver's preallocated state: no allocation per packet.
struct Batch {
    bufs: Vec<Buf>,
    /// Buffers filled since the last flush.
    used: usize,
    /// Packets to send: (buffer, our local port, destination, length).
    out: Vec<(usize, u16, SocketAddr, usize)>,
    headers: MultiHeaders<SockaddrStorage>,
    /// Ports whose socket has not been drained since its last readiness event, and a flag
    /// per port telling whether it is on that list.
    ready: Vec<u16>,
    queued: Vec<bool>,
}

fn epoll_thread(mut poll: Poll, state: &Weak<Mutex<State>>) {
    let mut events = Events::with_capacity(1024);
    let mut b = Batch {
        bufs: vec![[0; 2048]; BATCH],
        used: 0,
        out: Vec::with_capacity(BATCH),
        headers: MultiHeaders::preallocate(READ_MAX, None),
        ready: Vec::new(),
        queued: vec![false; usize::from(u16::MAX) + 1],
    };
    loop {
        let timeout = if b.ready.is_empty() { IDLE } else { Duration::ZERO };
        if let Err(e) = poll.poll(&mut events, Some(timeout))
            && e.kind() != io::ErrorKind::Interrupted
        {
            tracing::error!(error = %e, "media poll failed; media relaying stopped");
            return;
        }
        for port in events.iter().filter_map(|e| u16::try_from(e.token().0).ok()) {
            if let Some(q) = b.queued.get_mut(usize::from(port))
                && !*q
            {
                *q = true;
                b.ready.push(port);
            }
        }
        let Some(state) = state.upgrade() else { return };
        if b.ready.is_empty() {
            continue;
        }
        let mut st = lock(&state);
        b.pass(&mut st, Instant::now());
    }
}

impl Batch {
    /// One pass over the ready sockets: up to [`READ_MAX`] packets from each, relayed and
    /// sent in batches; a socket that returned fewer is drained and leaves the list.
    fn pass(&mut self, st: &mut State, now: Instant) {
        let State { ctl, sockets } = st;
        let mut i = 0;
        while let Some(&port) = self.ready.get(i) {
            if self.used + READ_MAX > self.bufs.len() {
                self.flush(sockets);
            }
            let mut got = [(0usize, None); READ_MAX];
            let more = match sockets.open.get(port).map(|s| self.receive(s, &mut got)) {
                Some(Ok(n)) => {
                    for (len, from) in got.iter().take(n) {
                        let slot = self.used;
                        self.used += 1;
                        // UDP always reports the source; the buffer exists (`used` < BATCH).
                        let (Some(from), Some(buf)) = (from, self.bufs.get_mut(slot)) else { continue };
                        if let Verdict::Forward { from_port, to, len } = ctl.relay_mut().handle(port, *from, buf, *len, now) {
                            self.out.push((slot, from_port, to, len));
                        }
                    }
                    n == READ_MAX
                }
                // An ICMP error for an earlier send; the socket may still hold packets.
                Some(Err(Errno::ECONNREFUSED)) => true,
                // Drained (EAGAIN), failed, or closed by a `delete`.
                Some(Err(_)) | None => false,
            };
            if more {
                i += 1;
            } else {
                self.ready.swap_remove(i);
                if let Some(q) = self.queued.get_mut(usize::from(port)) {
                    *q = false;
                }
            }
        }
        self.flush(sockets);
    }

    /// One `recvmmsg` of up to [`READ_MAX`] packets into the next free buffers; fills `got`
    /// with (length, source) and returns how many arrived. Fewer than asked means the
    /// socket's queue is empty, which re-arms its edge-triggered readiness.
    fn receive(&mut self, socket: &std::net::UdpSocket, got: &mut [(usize, Option<SocketAddr>); READ_MAX]) -> Result<usize, Errno> {
        let free: &mut [Buf; READ_MAX] =
            self.bufs.get_mut(self.used..self.used + READ_MAX).and_then(|f| f.try_into().ok()).ok_or(Errno::ENOBUFS)?;
        let mut iovs = free.each_mut().map(|b| [IoSliceMut::new(b.split_at_mut(RX_MAX).0)]);
        let received = recvmmsg(socket.as_raw_fd(), &mut self.headers, &mut iovs, MsgFlags::MSG_DONTWAIT, None)?;
        let mut n = 0;
        for (slot, msg) in got.iter_mut().zip(received) {
            *slot = (msg.bytes, msg.address.and_then(std_addr));
            n += 1;
        }
        Ok(n)
    }

    fn flush(&mut self, sockets: &mut Sockets) {
        for &(slot, from_port, to, len) in &self.out {
            if let (Some(socket), Some(packet)) = (sockets.open.get(from_port), self.bufs.get(slot).and_then(|b| b.get(..len))) {
                let _ = socket.send_to(packet, to);
                sockets.sends.1 += 1;
            }
        }
        self.out.clear();
        self.used = 0;
    }
}

fn std_addr(a: SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    a.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into()))
}

/// A minimal HTTP/1.1 responder: `GET /metrics` → Prometheus text (the controllers' counters
/// summed over the shards, and the media sends from connected twins and with addresses,
/// [`Agw::media_sends`]), anything else → 404.
async fn metrics_loop(listener: tokio::net::TcpListener, shards: Arc<[Shared]>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    loop {
        let Ok((mut conn, _)) = listener.accept().await else { continue };
        let shards = shards.clone();
        tokio::spawn(async move {
            let mut req = [0u8; 1024];
            let Ok(n) = conn.read(&mut req).await else { return };
            let head = req.get(..n).unwrap_or_default();
            let (status, body) = if head.starts_with(b"GET /metrics ") {
                let (mut all, mut sends) = (Metrics::default(), (0, 0));
                for shard in shards.iter() {
                    let st = lock(shard);
                    all.add(&st.ctl.metrics());
                    sends = (sends.0 + st.sockets.sends.0, sends.1 + st.sockets.sends.1);
                }
                let (connected, unconnected) = sends;
                let sends = format!("# TYPE mediasec_agw_media_sends_total counter\nmediasec_agw_media_sends_total{{socket=\"connected\"}} {connected}\nmediasec_agw_media_sends_total{{socket=\"unconnected\"}} {unconnected}\n");
                ("200 OK", all.render() + &sends)
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn sdp(port: u16) -> String {
        format!("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {port} RTP/AVP 0\r\n")
    }

    fn media_port(reply: &Value<'_>) -> u16 {
        let sdp = reply.get("sdp").and_then(Value::as_str).unwrap();
        sdp.lines().find_map(|l| l.strip_prefix("m=audio ")?.split(' ').next()?.parse().ok()).unwrap()
    }

    fn config(base: u16) -> ServerConfig {
        ServerConfig {
            listen_ng: "127.0.0.1:0".parse().unwrap(),
            interface: "127.0.0.1".parse().unwrap(),
            port_min: base,
            port_max: base + 199,
            metrics: None,
            media_threads: 1,
            control: Config {
                address: "127.0.0.1".parse().unwrap(),
                sdes: mediasec_sdp::SdesPolicy::default(),
                timeout: Duration::from_secs(30),
            },
        }
    }

    /// Sets a plain call up between `ue` and `core`: the relay's (UE-facing, core-facing) ports.
    fn plain_call(agw: &Agw, client: &std::net::UdpSocket, id: &str, ue: &std::net::UdpSocket, core: &std::net::UdpSocket) -> (SocketAddr, SocketAddr) {
        let offer = Value::dict([
            ("command", Value::str("offer")),
            ("call-id", Value::str(id.to_owned())),
            ("from-tag", Value::str("ue")),
            ("sdp", Value::str(sdp(ue.local_addr().unwrap().port()))),
        ]);
        let to_core = media_port(&ng::request(client, agw.ng_addr(), &offer).unwrap());
        let answer = Value::dict([
            ("command", Value::str("answer")),
            ("call-id", Value::str(id.to_owned())),
            ("from-tag", Value::str("ue")),
            ("to-tag", Value::str("core")),
            ("sdp", Value::str(sdp(core.local_addr().unwrap().port()))),
        ]);
        let to_ue = media_port(&ng::request(client, agw.ng_addr(), &answer).unwrap());
        (SocketAddr::from(([127, 0, 0, 1], to_ue)), SocketAddr::from(([127, 0, 0, 1], to_core)))
    }

    /// Packets relayed one at a time both ways: each arrives intact from the relay port of
    /// its leg. With io_uring each direction's first send goes with an address and the rest
    /// leave from the connected twin (its peer's packets are received by the twin); the epoll
    /// driver sends every packet with an address. Deleting the call closes the ports and
    /// their twins: they can be bound again.
    #[test]
    fn sends_leave_from_connected_twins() {
        for path in [MediaPath::Auto, MediaPath::Epoll] {
            twins_by_path(path);
        }
    }

    fn twins_by_path(path: MediaPath) {
        const ROUNDS: u16 = 5;
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let base = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port().min(60000);
        let agw = rt.block_on(Agw::start_with(ServerConfig { metrics: Some("127.0.0.1:0".parse().unwrap()), ..config(base) }, path)).unwrap();
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        client.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let (ue, core) = (std::net::UdpSocket::bind("127.0.0.1:0").unwrap(), std::net::UdpSocket::bind("127.0.0.1:0").unwrap());
        for s in [&ue, &core] {
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        }
        let (relay_ue, relay_core) = plain_call(&agw, &client, "twins", &ue, &core);
        let packet = |dir: u8, seq: u16| [&[0x80, 0][..], &seq.to_be_bytes(), &[0, 0, 0, 0, 0, 0, 0, dir], &[dir; 40]].concat();
        let mut buf = [0u8; 2048];
        for seq in 0..ROUNDS {
            for (dir, (from, to, at, sender)) in [(&ue, &core, relay_ue, relay_core), (&core, &ue, relay_core, relay_ue)].into_iter().enumerate() {
                let p = packet(dir as u8, seq);
                from.send_to(&p, at).unwrap();
                let (n, src) = to.recv_from(&mut buf).unwrap_or_else(|e| panic!("{path:?} dir {dir} packet {seq}: {e}"));
                assert_eq!((&buf[..n], src), (&p[..], sender), "{path:?} dir {dir} packet {seq}");
            }
        }
        let total = 2 * u64::from(ROUNDS);
        // The counters are copied at the end of the media thread's batch.
        let deadline = Instant::now() + Duration::from_secs(2);
        while agw.media_sends().0 + agw.media_sends().1 < total && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let want = if agw.uses_io_uring() { (total - 2, 2) } else { (0, total) };
        assert_eq!(agw.media_sends(), want, "{path:?}");
        let mut http = std::net::TcpStream::connect(agw.metrics_addr().unwrap()).unwrap();
        io::Write::write_all(&mut http, b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
        let mut body = String::new();
        io::Read::read_to_string(&mut http, &mut body).unwrap();
        for (socket, n) in [("connected", want.0), ("unconnected", want.1)] {
            let line = format!("\nmediasec_agw_media_sends_total{{socket=\"{socket}\"}} {n}\n");
            assert!(body.contains(&line), "{path:?}: {line:?} in {body}");
        }
        let delete = Value::dict([("command", Value::str("delete")), ("call-id", Value::str("twins")), ("from-tag", Value::str("ue"))]);
        ng::request(&client, agw.ng_addr(), &delete).unwrap();
        for port in [relay_ue, relay_core] {
            let deadline = Instant::now() + Duration::from_secs(2);
            while std::net::UdpSocket::bind(port).is_err() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            assert!(std::net::UdpSocket::bind(port).is_ok(), "{path:?}: {port} free after delete");
        }
        drop(rt);
    }

    /// The port range splits into contiguous, even-aligned slices of whole RTP/RTCP pairs,
    /// as equal as they can be, covering every pair; fewer pairs than threads is refused.
    #[test]
    fn port_range_splits_into_one_slice_per_media_thread() {
        assert_eq!(split_ports(30000, 30009, 1).unwrap(), vec![(30000, 30009)]);
        assert_eq!(split_ports(30000, 30009, 2).unwrap(), vec![(30000, 30005), (30006, 30009)]);
        // An odd minimum rounds up, a last port without its RTCP partner is left out.
        assert_eq!(split_ports(30001, 30010, 2).unwrap(), vec![(30002, 30005), (30006, 30009)]);
        assert_eq!(split_ports(30000, 30003, 2).unwrap(), vec![(30000, 30001), (30002, 30003)]);
        for (min, max, n) in [(2000u16, 2999u16, 3usize), (1, 65535, 7), (40000, 40001, 1)] {
            let slices = split_ports(min, max, n).unwrap();
            assert_eq!(slices.len(), n);
            let pairs: Vec<u32> = slices.iter().map(|&(lo, hi)| (u32::from(hi) + 1 - u32::from(lo)) / 2).collect();
            assert!(pairs.iter().max().unwrap() - pairs.iter().min().unwrap() <= 1, "{pairs:?}");
            assert_eq!(pairs.iter().sum::<u32>(), (u32::from(max) + 1 - u32::from(min.next_multiple_of(2))) / 2);
            for w in slices.windows(2) {
                assert_eq!(u32::from(w[0].1) + 1, u32::from(w[1].0), "contiguous");
            }
            assert!(slices.iter().all(|&(lo, hi)| lo % 2 == 0 && hi % 2 == 1 && hi <= max));
        }
        let e = split_ports(30000, 30003, 3).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("2 RTP/RTCP port pairs, fewer than the 3 media threads"), "{e}");
        assert!(split_ports(30000, 30003, 0).is_err());
    }

    /// Every command about a call goes to the same shard, whatever the command; a message
    /// without a call-id (or not ng at all) to the first.
    #[test]
    fn commands_go_to_the_shard_of_their_call_id() {
        let framed = |v: &Value<'_>| ng::frame(b"c00kie", v);
        let command = |c: &str, id: &str| framed(&Value::dict([("command", Value::str(c.to_owned())), ("call-id", Value::str(id.to_owned()))]));
        let shard_of = |datagram: &[u8], shards: usize| peek(datagram).call_id.map_or(0, |id| hash_shard(&id, shards));
        let mut seen = [false; 4];
        for i in 0..64 {
            let id = format!("call-{i}@example");
            let shard = shard_of(&command("offer", &id), 4);
            for c in ["answer", "query", "delete"] {
                assert_eq!(shard_of(&command(c, &id), 4), shard, "{c} {id}");
            }
            seen[shard] = true;
        }
        assert_eq!(seen, [true; 4], "64 call-ids reach every shard");
        assert_eq!(shard_of(&framed(&Value::dict([("command", Value::str("ping"))])), 4), 0);
        assert_eq!(shard_of(b"no cookie", 4), 0);
        assert_eq!(shard_of(b"c00kie d7:command", 4), 0);
        assert_eq!(shard_of(&command("offer", "x"), 1), 0);
        let list = peek(&framed(&Value::dict([("command", Value::str("list"))])));
        assert_eq!((list.command.as_deref(), list.call_id), (Some(&b"list"[..]), None));
    }

    /// A shard without a free port pair does not refuse a new call while another has one:
    /// the offer goes there and every later command about the call follows it; `list`
    /// names the calls of every shard; with every shard full the offer is refused.
    #[test]
    fn a_full_shard_places_new_calls_in_another() {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let base = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port().min(60000).next_multiple_of(2);
        // Four port pairs, two per shard: one plain call (two legs) fills a shard.
        let config = ServerConfig { port_max: base + 7, media_threads: 2, ..config(base) };
        let agw = rt.block_on(Agw::start_with(config, MediaPath::Auto)).unwrap();
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        client.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let ids: Vec<String> = (0..).map(|i| format!("full-{i}")).filter(|id| hash_shard(id.as_bytes(), 2) == 0).take(3).collect();
        let sockets = || {
            let (ue, core) = (std::net::UdpSocket::bind("127.0.0.1:0").unwrap(), std::net::UdpSocket::bind("127.0.0.1:0").unwrap());
            for s in [&ue, &core] {
                s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            }
            (ue, core)
        };
        let (ue0, core0) = sockets();
        plain_call(&agw, &client, &ids[0], &ue0, &core0);
        assert_eq!(agw.calls_per_media_thread(), vec![1, 0]);
        // The second call hashes to the full first shard and is placed in the second; its
        // answer (in `plain_call`) reached it there, and so does its media.
        let (ue1, core1) = sockets();
        let (relay_ue, relay_core) = plain_call(&agw, &client, &ids[1], &ue1, &core1);
        assert_eq!(agw.calls_per_media_thread(), vec![1, 1]);
        let slices = split_ports(base, base + 7, 2).unwrap();
        assert!((slices[1].0..=slices[1].1).contains(&relay_ue.port()) && (slices[1].0..=slices[1].1).contains(&relay_core.port()));
        let packet = [&[0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 9][..], &[7; 160]].concat();
        let mut buf = [0u8; 2048];
        ue1.send_to(&packet, relay_ue).unwrap();
        let (n, src) = core1.recv_from(&mut buf).unwrap();
        assert_eq!((&buf[..n], src), (&packet[..], relay_core));
        let request = |v: Value<'static>| ng::request(&client, agw.ng_addr(), &v).unwrap();
        let query = request(Value::dict([("command", Value::str("query")), ("call-id", Value::str(ids[1].clone()))]));
        assert_eq!(query.get("result").and_then(Value::as_str), Some("ok"), "query reaches the moved call");
        let listed = request(Value::dict([("command", Value::str("list"))]));
        let calls: Vec<&str> = match listed.get("calls") {
            Some(Value::List(l)) => l.iter().filter_map(Value::as_str).collect(),
            other => panic!("{other:?}"),
        };
        let mut both = vec![ids[0].as_str(), ids[1].as_str()];
        both.sort_unstable();
        assert_eq!(calls, both, "list names the calls of both shards");
        // Every shard full: the offer is refused with the reason.
        let (ue2, _) = sockets();
        let offer = Value::dict([
            ("command", Value::str("offer")),
            ("call-id", Value::str(ids[2].clone())),
            ("from-tag", Value::str("ue")),
            ("sdp", Value::str(sdp(ue2.local_addr().unwrap().port()))),
        ]);
        let refused = request(offer.clone());
        assert_eq!(refused.get("error-reason").and_then(Value::as_str), Some("no free media port in the configured range"));
        // Deleting the moved call frees its shard for the next overflow.
        let delete = request(Value::dict([("command", Value::str("delete")), ("call-id", Value::str(ids[1].clone())), ("from-tag", Value::str("ue"))]));
        assert_eq!(delete.get("result").and_then(Value::as_str), Some("ok"));
        assert_eq!(agw.calls_per_media_thread(), vec![1, 0]);
        // The media thread closes the freed sockets on its next turn; until then their ports
        // cannot be bound again (a wider range would simply move on to other ports).
        for port in [relay_ue, relay_core].into_iter().flat_map(|a| [a.port(), a.port() + 1]) {
            let deadline = Instant::now() + Duration::from_secs(2);
            while std::net::UdpSocket::bind(("127.0.0.1", port)).is_err() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        assert_eq!(request(offer).get("result").and_then(Value::as_str), Some("ok"));
        assert_eq!(agw.calls_per_media_thread(), vec![1, 1]);
        drop(rt);
    }

    /// Calls spread over three media threads: every packet is relayed both ways by the
    /// shard holding its call, `/metrics` and the counters add up over the shards, and
    /// `delete` reaches each call's shard (its ports are free again).
    #[test]
    fn calls_are_relayed_by_the_media_thread_of_their_shard() {
        for path in [MediaPath::Auto, MediaPath::Epoll] {
            sharded_by_path(path);
        }
    }

    fn sharded_by_path(path: MediaPath) {
        const CALLS: usize = 12;
        const THREADS: usize = 3;
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let base = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port().min(60000);
        let config = ServerConfig { metrics: Some("127.0.0.1:0".parse().unwrap()), media_threads: THREADS, ..config(base) };
        let agw = rt.block_on(Agw::start_with(config, path)).unwrap();
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        client.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut calls = Vec::new();
        for c in 0..CALLS {
            let (ue, core) = (std::net::UdpSocket::bind("127.0.0.1:0").unwrap(), std::net::UdpSocket::bind("127.0.0.1:0").unwrap());
            for s in [&ue, &core] {
                s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            }
            let id = format!("shard-{c}");
            let (relay_ue, relay_core) = plain_call(&agw, &client, &id, &ue, &core);
            calls.push((id, ue, core, relay_ue, relay_core));
        }
        let per_thread = agw.calls_per_media_thread();
        assert_eq!(per_thread.len(), THREADS);
        assert!(per_thread.iter().all(|&n| n > 0), "{path:?}: every shard holds calls: {per_thread:?}");
        assert_eq!(agw.call_count(), CALLS);
        // Each call's ports come from its shard's slice of the range.
        let slices = split_ports(base, base + 199, THREADS).unwrap();
        let shard_of_port = |p: u16| slices.iter().position(|&(lo, hi)| (lo..=hi).contains(&p)).unwrap();
        let mut by_ports = [0usize; THREADS];
        for (_, _, _, relay_ue, relay_core) in &calls {
            assert_eq!(shard_of_port(relay_ue.port()), shard_of_port(relay_core.port()), "{path:?}: both legs in one shard");
            by_ports[shard_of_port(relay_ue.port())] += 1;
        }
        assert_eq!(by_ports.to_vec(), per_thread, "{path:?}");
        let packet = |c: usize, dir: u8, seq: u16| [&[0x80, 0][..], &seq.to_be_bytes(), &[0, 0, 0, 0, 0, 0, dir, c as u8], &[c as u8 ^ dir; 160]].concat();
        let mut buf = [0u8; 2048];
        for seq in 0..3 {
            for (c, (_, ue, core, relay_ue, relay_core)) in calls.iter().enumerate() {
                for (dir, (from, to, at, sender)) in [(ue, core, *relay_ue, *relay_core), (core, ue, *relay_core, *relay_ue)].into_iter().enumerate() {
                    let p = packet(c, dir as u8, seq);
                    from.send_to(&p, at).unwrap();
                    let (n, src) = to.recv_from(&mut buf).unwrap_or_else(|e| panic!("{path:?} call {c} dir {dir} packet {seq}: {e}"));
                    assert_eq!((&buf[..n], src), (&p[..], sender), "{path:?} call {c} dir {dir} packet {seq}");
                }
            }
        }
        let total = (CALLS * 2 * 3) as u64;
        let deadline = Instant::now() + Duration::from_secs(2);
        while agw.media_sends().0 + agw.media_sends().1 < total && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(agw.media_sends().0 + agw.media_sends().1, total, "{path:?}");
        let mut http = std::net::TcpStream::connect(agw.metrics_addr().unwrap()).unwrap();
        io::Write::write_all(&mut http, b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
        let mut body = String::new();
        io::Read::read_to_string(&mut http, &mut body).unwrap();
        for line in [
            format!("\nmediasec_agw_calls {CALLS}\n"),
            format!("\nmediasec_agw_packets_total{{component=\"rtp\",direction=\"received\"}} {total}\n"),
            format!("\nmediasec_agw_packets_total{{component=\"rtp\",direction=\"sent\"}} {total}\n"),
            format!("\nmediasec_agw_ng_commands_total {}\n", 2 * CALLS),
        ] {
            assert!(body.contains(&line), "{path:?}: {line:?} in {body}");
        }
        for (id, _, _, relay_ue, relay_core) in &calls {
            let delete = Value::dict([("command", Value::str("delete")), ("call-id", Value::str(id.clone())), ("from-tag", Value::str("ue"))]);
            let reply = ng::request(&client, agw.ng_addr(), &delete).unwrap();
            assert_eq!(reply.get("result").and_then(Value::as_str), Some("ok"), "{path:?} {id}");
            for port in [relay_ue, relay_core] {
                let deadline = Instant::now() + Duration::from_secs(2);
                while std::net::UdpSocket::bind(port).is_err() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                }
                assert!(std::net::UdpSocket::bind(port).is_ok(), "{path:?}: {port} free after delete");
            }
        }
        assert_eq!(agw.calls_per_media_thread(), vec![0; THREADS], "{path:?}");
        drop(rt);
    }

    /// The soft limit is raised to what the ports want (two descriptors each + 256), capped
    /// by the hard limit, and never lowered.
    #[test]
    fn open_files_are_raised_to_two_per_port() {
        use nix::sys::resource::{getrlimit, Resource};
        assert_eq!(open_files_wanted(1000), 2256);
        assert_eq!(open_files_wanted(u64::MAX), u64::MAX);
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        let ports = 2000;
        let limit = ensure_open_files(ports).unwrap();
        assert_eq!(limit, soft.max(open_files_wanted(ports).min(hard)));
        assert_eq!(getrlimit(Resource::RLIMIT_NOFILE).unwrap(), (limit, hard));
    }

    /// Bursts queued while the media thread waits for the lock: more than one `recvmmsg` per
    /// socket (a full read keeps the socket on the ready list) and more than one batch per
    /// pass (mid-pass flush). Every packet is relayed exactly once, intact, to its call's peer.
    #[test]
    fn bursts_are_drained_and_relayed_intact() {
        for path in [MediaPath::Auto, MediaPath::Epoll] {
            bursts_relayed_intact(path);
        }
    }

    fn bursts_relayed_intact(path: MediaPath) {
        const CALLS: usize = 9; // CALLS × READ_MAX > BATCH
        const BURST: u16 = 20; // > 2 × READ_MAX
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let base = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port().min(60000);
        let agw = rt.block_on(Agw::start_with(config(base), path)).unwrap();
        // Auto is io_uring wherever a ring works (the kernel may refuse it, e.g. under seccomp).
        let wake = EventFd::new().unwrap();
        assert_eq!(agw.uses_io_uring(), path == MediaPath::Auto && MediaRing::new(4, wake.as_fd()).is_ok());
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        client.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let ue = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut calls = Vec::new();
        for c in 0..CALLS {
            let core = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            core.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
            let id = format!("burst-{c}");
            let offer = Value::dict([
                ("command", Value::str("offer")),
                ("call-id", Value::str(id.clone())),
                ("from-tag", Value::str("ue")),
                ("sdp", Value::str(sdp(ue.local_addr().unwrap().port()))),
            ]);
            ng::request(&client, agw.ng_addr(), &offer).unwrap();
            let answer = Value::dict([
                ("command", Value::str("answer")),
                ("call-id", Value::str(id)),
                ("from-tag", Value::str("ue")),
                ("to-tag", Value::str("core")),
                ("sdp", Value::str(sdp(core.local_addr().unwrap().port()))),
            ]);
            let relay_port = media_port(&ng::request(&client, agw.ng_addr(), &answer).unwrap());
            calls.push((core, SocketAddr::from(([127, 0, 0, 1], relay_port))));
        }
        let packet = |c: usize, seq: u16| [&[0x80, 0][..], &seq.to_be_bytes(), &[0, 0, 0, 0, 0, 0, 0, c as u8], &[c as u8 ^ 0x5a; 160]].concat();
        let held = lock(&agw.shards[0]);
        for seq in 0..BURST {
            for (c, (_, relay)) in calls.iter().enumerate() {
                ue.send_to(&packet(c, seq), relay).unwrap();
            }
        }
        std::thread::sleep(Duration::from_millis(50));
        drop(held);
        let mut buf = [0u8; 2048];
        for (c, (core, _)) in calls.iter().enumerate() {
            for seq in 0..BURST {
                let n = core.recv(&mut buf).unwrap_or_else(|e| panic!("call {c} packet {seq}: {e}"));
                assert_eq!(&buf[..n], &packet(c, seq)[..], "call {c} packet {seq}");
            }
            assert!(core.recv(&mut buf).is_err(), "call {c}: nothing more");
        }
        drop(rt);
    }
}
