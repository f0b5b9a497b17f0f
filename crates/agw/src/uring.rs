//! The media thread's io_uring (Linux ≥ 6.1): every media socket has one armed multishot
//! `IORING_OP_RECVMSG` that receives into buffers the kernel picks from a provided-buffer
//! ring, and the forwarded packets leave with `IORING_OP_SEND` (with a destination address)
//! straight from the buffer they arrived in. The thread neither polls readiness nor makes a
//! system call per packet: one `io_uring_enter` submits a batch's sends and waits for the next
//! arrivals, which the kernel has already copied into buffers (`IORING_SETUP_DEFER_TASKRUN`
//! runs that work on this thread, inside the call). Sockets are registered files (no file
//! table lookup per operation), at an index the ring assigns per port.
//!
//! The datagrams, their sources and destinations are those of `recvfrom`/`sendto`; only the
//! number of system calls changes.
//!
//! # Connected twins
//! A send with a destination address costs the kernel a route lookup per packet; a send on a
//! `connect()`ed UDP socket does not. A media socket itself cannot be connected (it would stop
//! receiving from other sources, which latching and re-latching need, see [`crate::relay`]),
//! so each media socket (the *main* one) gets a **twin**: a second UDP socket bound to the
//! same local address and port, connected to the destination the main socket sends to. The
//! kernel delivers the connected peer's datagrams to the twin (a connected socket scores higher
//! in the UDP socket lookup) and everything else to the main socket; both are registered files
//! with a multishot receive, and what the twin receives is handed to the relay as received on
//! the main socket's port. Sends to the twin's peer leave from the twin without an address.
//!
//! The twin is made after a batch in which the main socket sent (that first send, and any
//! send to a destination the twin is not connected to, goes unconnected as before: the twin
//! never delays or drops a packet). Binding it leaves the port unshareable: `SO_REUSEPORT` is
//! set on the main socket (bound without it), the twin is bound with it to the main socket's
//! exact address, then `SO_REUSEPORT` is cleared on both, after which any other bind of the
//! port fails with `EADDRINUSE` (with or without `SO_REUSEPORT`, specific address or
//! wildcard) while the lookup still goes by score. Only between the first and the last step
//! (microseconds, on this thread) could another socket with `SO_REUSEPORT` of the same user
//! join the port; another mediasec cannot, as it binds its media sockets without it. When the
//! main socket's destination changes (a re-latch, or the first latch replacing the signalled
//! address) the twin is connected again, at most once per [`RECONNECT_GAP`] per socket;
//! meanwhile the old peer's datagrams arrive on the main socket, which is received from too.
//! A twin that cannot be made or connected (`RLIMIT_NOFILE`, no file slot, …) is logged once
//! per socket and its socket keeps sending unconnected. Closing a port closes its twin.
//!
//! # Memory shared with the kernel
//! Two allocations are handed to the kernel: the buffer pool (the kernel writes a received
//! datagram into a buffer it took from the ring, and reads a buffer a send names) and the
//! buffer ring (the kernel reads its entries and our tail). A buffer is in exactly one of three
//! states, tracked by who may touch it: *in the ring* (the kernel may write it; we do not touch
//! it), *ours* (from the completion that names it until we queue a send of it or give it back),
//! *sending* (the kernel may read it, until the send's completion). Both allocations are freed
//! only after the buffer ring is unregistered (no receive can pick a buffer any more) with no
//! send in flight; otherwise they are leaked rather than freed (see [`Drop`]).

use std::alloc::{self, Layout};
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, OwnedFd, RawFd};
use std::mem::ManuallyDrop;
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use io_uring::types::{Fixed, SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, squeue, IoUring};
use nix::libc;
use nix::sys::socket::{sockopt, SockFlag, SockType, SockaddrLike as _, SockaddrStorage};

use crate::ports::PortTable;

/// Size of one pool buffer.
pub(crate) const BUF: usize = 2048;
/// Buffers in the pool (and entries of the buffer ring; a power of two).
const BUFS: u16 = 1024;
/// Space reserved for the source address in each received buffer (IPv4 or IPv6).
const NAME_LEN: usize = size_of::<libc::sockaddr_in6>();
/// Where a datagram's payload starts in its buffer: after the kernel's
/// `struct io_uring_recvmsg_out` (four `__u32`) and the address.
const PAYLOAD_AT: usize = 16 + NAME_LEN;
/// How much of a buffer the kernel may fill: the rest is room for the SRTP trailer (tag + MKI)
/// that protection appends in place.
const RECEIVE_LEN: usize = PAYLOAD_AT + 1900;
/// The provided-buffer group of the pool.
const GROUP: u16 = 0;

/// A twin is connected to a new destination at most this often (per socket): a source that
/// keeps changing costs one `connect` per interval, not one per packet.
const RECONNECT_GAP: Duration = Duration::from_secs(1);

/// What a completion is for: the tag in the top byte of its user data.
const RECV: u64 = 1 << 56;
const SEND: u64 = 2 << 56;
const WAKE: u64 = 3 << 56;
const CANCEL: u64 = 4 << 56;
const TAG: u64 = 0xff << 56;

/// A receive's user data: its socket's file index (24 bits) and that index's generation, so
/// that the last completion of a cancelled receive is told from the receive of a new socket
/// given the same index.
fn recv_data(index: u32, generation: u32) -> u64 {
    RECV | u64::from(generation) << 24 | u64::from(index & 0xff_ffff)
}

/// A packet to forward: (the local port to send from, destination, length from the buffer's
/// payload start).
pub(crate) type Forward = (u16, SocketAddr, usize);

/// One entry of a provided-buffer ring, as `struct io_uring_buf` in `<linux/io_uring.h>`;
/// `resv` of the first entry is the ring's tail (`struct io_uring_buf_ring`).
#[repr(C)]
struct RingEntry {
    addr: u64,
    len: u32,
    bid: u16,
    resv: u16,
}

/// A page-aligned, zeroed allocation the kernel shares with us.
struct Shared {
    ptr: NonNull<u8>,
    layout: Layout,
}

impl Shared {
    fn new(size: usize) -> io::Result<Self> {
        let layout = Layout::from_size_align(size, 4096).map_err(io::Error::other)?;
        // SAFETY: `layout` has a non-zero size (every caller asks for at least one page).
        let ptr = unsafe { alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(ptr).ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))?;
        Ok(Self { ptr, layout })
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout. [`MediaRing`] only lets a `Shared` drop
        // once the kernel can no longer use it (and leaks it otherwise).
        unsafe { alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// Per registered-file index: the port of the socket there (if any; a twin's is its main
/// socket's) and the generation of its receive; for a main socket, its twin.
#[derive(Default)]
struct Slot {
    port: Option<u16>,
    generation: u32,
    twin: Option<Twin>,
    /// The destination a send asked the twin to be connected to (queued in `pending`).
    want: Option<SocketAddr>,
    /// A twin could not be made or connected: this socket sends unconnected (logged once).
    twin_failed: bool,
}

/// A main socket's connected twin (see the module documentation).
struct Twin {
    /// Kept open to connect it again; its registered file holds the kernel's reference.
    socket: UdpSocket,
    /// Its registered-file index.
    index: u32,
    /// The destination it is connected to, since when.
    peer: SocketAddr,
    since: Instant,
}

/// The media thread's ring: sockets by port, the buffer pool, the wake-up event.
pub(crate) struct MediaRing {
    ring: IoUring,
    /// `BUFS` buffers of `BUF` octets; not dropped while the kernel may use it (see `Drop`).
    pool: ManuallyDrop<Shared>,
    /// `BUFS` [`RingEntry`]s of the provided-buffer ring; its tail is ours to advance.
    buf_ring: ManuallyDrop<Shared>,
    tail: u16,
    /// Destination address of each buffer being sent, read by the kernel until completion.
    dest: Box<[SockaddrStorage]>,
    /// Tells the kernel how much room to leave for the source address (copied at submission).
    msghdr: Box<libc::msghdr>,
    slots: Vec<Slot>,
    /// Main sockets' file indices by port.
    index: PortTable<u32>,
    /// Free file indices: for main sockets, and (above them) for twins.
    free: Vec<u32>,
    twin_free: Vec<u32>,
    /// Main sockets (file index, generation) whose twin a send asked for: made or connected
    /// by [`Self::connect_twins`].
    pending: Vec<(u32, u32)>,
    /// Sends queued from a connected twin, and with a destination address.
    connected_sends: u64,
    unconnected_sends: u64,
    /// Whether a twin failure has been logged as a warning (later ones are debug).
    twin_warned: bool,
    wake: RawFd,
    woken: bool,
    /// Sends submitted or queued whose completion has not been seen.
    sending: usize,
    /// Sends queued since the last wait: the next wait asks for one completion more.
    queued_sends: usize,
    /// Reused by [`MediaRing::dispatch`]: no allocation per batch.
    completions: Vec<cqueue::Entry>,
    /// Receives to arm again, as (file index, generation).
    rearm: Vec<(u32, u32)>,
    /// Entries the full submission queue could not take yet.
    deferred: Vec<squeue::Entry>,
}

impl MediaRing {
    /// A ring for up to `sockets` media sockets and as many twins; `wake` is an eventfd whose
    /// writes end a wait (and make [`MediaRing::take_wake`] true). Checks itself by relaying
    /// one datagram between two loopback sockets: fails (`ENOSYS`, `EPERM` under seccomp,
    /// `EINVAL` before Linux 6.1, `EMFILE` when `sockets` exceeds `RLIMIT_NOFILE`, …) when the
    /// kernel cannot do what the media thread needs. Where `RLIMIT_NOFILE` admits a file slot
    /// per socket but not two, the ring has no slot for twins (all sends unconnected). Must be
    /// created on the thread that will use it (`IORING_SETUP_SINGLE_ISSUER`).
    pub(crate) fn new(sockets: u32, wake: BorrowedFd<'_>) -> io::Result<Self> {
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_cqsize(8 * u32::from(BUFS))
            .build(u32::from(BUFS))?;
        let mains = sockets.checked_add(2).ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        let table = match mains.checked_add(sockets) {
            Some(both) if ring.submitter().register_files_sparse(both).is_ok() => both,
            _ => {
                ring.submitter().register_files_sparse(mains)?;
                mains
            }
        };
        let pool = Shared::new(usize::from(BUFS) * BUF)?;
        let buf_ring = Shared::new(usize::from(BUFS) * size_of::<RingEntry>())?;
        // SAFETY: `buf_ring` is page-aligned, zeroed and holds `BUFS` entries; it stays
        // allocated while registered (see the module documentation and `Drop`).
        unsafe { ring.submitter().register_buf_ring_with_flags(buf_ring.ptr.as_ptr() as u64, BUFS, GROUP, 0)? };
        // SAFETY: `msghdr` is plain old data; all-zero is a valid (empty) value.
        let mut msghdr: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
        msghdr.msg_namelen = NAME_LEN as libc::socklen_t;
        let unspecified = SockaddrStorage::from(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
        let mut me = Self {
            ring,
            pool: ManuallyDrop::new(pool),
            buf_ring: ManuallyDrop::new(buf_ring),
            tail: 0,
            dest: vec![unspecified; usize::from(BUFS)].into_boxed_slice(),
            msghdr,
            slots: (0..table).map(|_| Slot::default()).collect(),
            index: PortTable::default(),
            free: (0..mains).rev().collect(),
            twin_free: (mains..table).rev().collect(),
            pending: Vec::new(),
            connected_sends: 0,
            unconnected_sends: 0,
            twin_warned: false,
            wake: wake.as_raw_fd(),
            woken: false,
            sending: 0,
            queued_sends: 0,
            completions: Vec::with_capacity(8 * usize::from(BUFS)),
            rearm: Vec::new(),
            deferred: Vec::new(),
        };
        for bid in 0..BUFS {
            me.give_back(bid);
        }
        me.publish();
        me.queue(opcode::PollAdd::new(io_uring::types::Fd(me.wake), libc::POLLIN as u32).multi(true).build().user_data(WAKE));
        me.self_test()?;
        // Counters and twin requests are of media sockets, not the self-test's.
        (me.connected_sends, me.unconnected_sends) = (0, 0);
        me.pending.clear();
        Ok(me)
    }

    /// Relays one datagram between two loopback sockets through every path the media thread
    /// uses: multishot receive, address parsing, send from a registered file.
    fn self_test(&mut self) -> io::Result<()> {
        let relay = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
        let peer = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
        peer.set_read_timeout(Some(Duration::from_secs(1)))?;
        let (relay_port, peer_addr) = (relay.local_addr()?.port(), peer.local_addr()?);
        self.open(relay_port, relay.as_fd())?;
        let probe = b"mediasec io_uring probe";
        peer.send_to(probe, relay.local_addr()?)?;
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut seen = None;
        while seen.is_none() && Instant::now() < deadline {
            self.wait(Duration::from_millis(100))?;
            self.dispatch(|port, from, buf, len| {
                seen = Some((port, from, buf.get(..len) == Some(&probe[..])));
                Some((port, peer_addr, len))
            });
        }
        self.flush()?;
        self.close(relay_port)?;
        let mut got = [0u8; 64];
        match (seen, peer.recv_from(&mut got)) {
            (Some((p, from, true)), Ok((n, src))) if p == relay_port && from == peer_addr && src == relay.local_addr()? && got.get(..n) == Some(&probe[..]) => Ok(()),
            _ => Err(io::Error::other("io_uring relay self-test failed")),
        }
    }

    /// Registers `socket` (bound to `port`) and arms its receive.
    pub(crate) fn open(&mut self, port: u16, socket: BorrowedFd<'_>) -> io::Result<()> {
        if self.index.contains(port) {
            self.close(port)?;
        }
        let index = self.free.pop().ok_or_else(|| io::Error::other("no free io_uring file slot"))?;
        if let Err(e) = self.ring.submitter().register_files_update(index, &[socket.as_raw_fd()]) {
            self.free.push(index);
            return Err(e);
        }
        let generation = self.occupy(index, port);
        self.index.insert(port, index);
        self.arm(index, generation);
        Ok(())
    }

    /// Marks the registered file at `index` as the socket of `port` (its main socket's, for a
    /// twin), without a twin; returns the generation of its receive.
    fn occupy(&mut self, index: u32, port: u16) -> u32 {
        let Some(slot) = self.slots.get_mut(index as usize) else { return 0 };
        slot.generation = slot.generation.wrapping_add(1);
        let generation = slot.generation;
        *slot = Slot { port: Some(port), generation, ..Slot::default() };
        generation
    }

    /// Cancels the receives of the socket of `port` and of its twin, and unregisters both.
    pub(crate) fn close(&mut self, port: u16) -> io::Result<()> {
        let Some(index) = self.index.remove(port) else { return Ok(()) };
        let Some(slot) = self.slots.get_mut(index as usize) else { return Ok(()) };
        let twin = slot.twin.take();
        let main = self.release(index);
        if main.is_ok() {
            self.free.push(index);
        }
        if let Some(twin) = twin {
            self.close_twin(port, twin);
        }
        main
    }

    /// Cancels the receive of a twin and unregisters it; its socket closes here (the kernel's
    /// reference ends with the unregistration and the operations still using it).
    fn close_twin(&mut self, port: u16, twin: Twin) {
        match self.release(twin.index) {
            Ok(()) => self.twin_free.push(twin.index),
            Err(e) => tracing::warn!(port, error = %e, "twin socket not unregistered from io_uring"),
        }
    }

    /// Cancels the receive of the registered file at `index` (the cancel's completion and the
    /// receive's last one are told from a new socket's by the generation) and unregisters it.
    fn release(&mut self, index: u32) -> io::Result<()> {
        let Some(slot) = self.slots.get_mut(index as usize) else { return Ok(()) };
        let armed = recv_data(index, slot.generation);
        slot.generation = slot.generation.wrapping_add(1);
        *slot = Slot { generation: slot.generation, ..Slot::default() };
        self.queue(opcode::AsyncCancel::new(armed).build().user_data(CANCEL));
        self.ring.submitter().register_files_update(index, &[-1]).map(drop)
    }

    /// Makes or re-connects the twins that the sends since the last call asked for (see the
    /// module documentation); `main` gives the main socket of a port. A twin connected less
    /// than [`RECONNECT_GAP`] before `now` stays as it is and is asked again later.
    pub(crate) fn connect_twins<'a>(&mut self, now: Instant, main: impl Fn(u16) -> Option<BorrowedFd<'a>>) {
        let mut pending = std::mem::take(&mut self.pending);
        let mut flushed = false;
        pending.retain(|&(index, generation)| {
            let Some(slot) = self.slots.get_mut(index as usize) else { return false };
            let (Some(port), Some(to)) = (slot.port, slot.want) else { return false };
            if slot.generation != generation || slot.twin_failed {
                return false;
            }
            let result = match &mut slot.twin {
                Some(twin) if twin.peer == to => Ok(()),
                Some(twin) if now.saturating_duration_since(twin.since) < RECONNECT_GAP => return true,
                Some(twin) => {
                    // A send queued from the twin must leave for the peer it was queued for:
                    // submitted, it is issued at once (`MSG_DONTWAIT` is never retried later).
                    if !flushed {
                        flushed = self.ring.submit().is_ok() && self.ring.submission().is_empty();
                        if !flushed {
                            return true;
                        }
                    }
                    twin.socket.connect(to).map(|()| {
                        twin.peer = to;
                        twin.since = now;
                    })
                }
                None => match main(port) {
                    Some(fd) => self.make_twin(index, port, fd, to, now),
                    None => return false,
                },
            };
            if let Err(e) = result {
                self.twin_failed(index, port, to, &e);
            } else if let Some(slot) = self.slots.get_mut(index as usize) {
                slot.want = None;
            }
            false
        });
        // What is left waits for its interval (nothing above asks for a twin).
        self.pending = pending;
    }

    /// Makes, connects to `to`, registers and arms the twin of the main socket at `index`.
    fn make_twin(&mut self, index: u32, port: u16, main: BorrowedFd<'_>, to: SocketAddr, now: Instant) -> io::Result<()> {
        let &at = self.twin_free.last().ok_or_else(|| io::Error::other("no free io_uring file slot for a twin"))?;
        let socket = bind_twin(main)?;
        socket.connect(to)?;
        self.ring.submitter().register_files_update(at, &[socket.as_raw_fd()])?;
        self.twin_free.pop();
        let generation = self.occupy(at, port);
        if let Some(slot) = self.slots.get_mut(index as usize) {
            slot.twin = Some(Twin { socket, index: at, peer: to, since: now });
        }
        self.arm(at, generation);
        Ok(())
    }

    /// A twin of the socket at `index` could not be made or connected: that socket sends
    /// unconnected from now on (a twin left connected elsewhere is closed).
    fn twin_failed(&mut self, index: u32, port: u16, to: SocketAddr, error: &io::Error) {
        let Some(slot) = self.slots.get_mut(index as usize) else { return };
        slot.twin_failed = true;
        slot.want = None;
        let twin = slot.twin.take();
        if std::mem::replace(&mut self.twin_warned, true) {
            tracing::debug!(port, %to, %error, "no connected twin socket: this port sends unconnected");
        } else {
            tracing::warn!(port, %to, %error, "no connected twin socket: this port sends unconnected (further failures are logged at debug)");
        }
        if let Some(twin) = twin {
            self.close_twin(port, twin);
        }
    }

    /// Sends queued so far: (from a connected twin, with a destination address).
    pub(crate) fn sends(&self) -> (u64, u64) {
        (self.connected_sends, self.unconnected_sends)
    }

    /// Arms the receive of the socket at `index` if that socket is still the one of
    /// `generation`; one the submission queue cannot take now is retried by the next
    /// [`Self::dispatch`], so that no socket is left without a receive.
    fn arm(&mut self, index: u32, generation: u32) {
        let Some(slot) = self.slots.get(index as usize) else { return };
        if slot.generation != generation || slot.port.is_none() {
            return;
        }
        let entry = opcode::RecvMsgMulti::new(Fixed(index), &raw const *self.msghdr, GROUP).build().user_data(recv_data(index, generation));
        if !self.push(&entry) {
            self.rearm.push((index, generation));
        }
    }

    /// Queues an entry that refers to no memory of ours (a cancel, the wake-up poll); one the
    /// submission queue cannot take now is queued by the next [`Self::dispatch`].
    fn queue(&mut self, entry: squeue::Entry) {
        if !self.push(&entry) {
            self.deferred.push(entry);
        }
    }

    /// Queues an entry, submitting what is queued first if the submission queue is full;
    /// false if it stays full (the kernel is behind: completions it cannot post yet).
    fn push(&mut self, entry: &squeue::Entry) -> bool {
        for _ in 0..2 {
            // SAFETY: every entry this module builds points only at memory that outlives its
            // operation: the pool and `dest` (see the module documentation), `msghdr` (boxed
            // for the ring's life; the kernel copies it when the receive is submitted), or
            // none; files are registered ones, which the kernel keeps referenced.
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                return true;
            }
            let _ = self.ring.submit();
        }
        false
    }

    /// Submits what is queued and waits until something arrives (or `timeout` passes).
    pub(crate) fn wait(&mut self, timeout: Duration) -> io::Result<()> {
        let ts = Timespec::from(timeout);
        let args = SubmitArgs::new().timespec(&ts);
        let want = std::mem::take(&mut self.queued_sends) + 1;
        match self.ring.submitter().submit_with_args(want, &args) {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Submits what is queued without waiting.
    pub(crate) fn flush(&mut self) -> io::Result<()> {
        self.ring.submit().map(drop)
    }

    /// Whether the wake-up event fired since the last call.
    pub(crate) fn take_wake(&mut self) -> bool {
        std::mem::take(&mut self.woken)
    }

    /// Handles every completion: each received datagram is passed to `relay` as
    /// `(local port, source, buffer from the payload on, payload length)`, in place; a
    /// `Some((from port, destination, length))` queues its send from that buffer.
    /// A send the submission queue cannot take is dropped (as a non-blocking `sendto` that
    /// would block), its buffer given back.
    pub(crate) fn dispatch(&mut self, mut relay: impl FnMut(u16, SocketAddr, &mut [u8], usize) -> Option<Forward>) {
        for entry in std::mem::take(&mut self.deferred) {
            self.queue(entry);
        }
        let mut completions = std::mem::take(&mut self.completions);
        let mut rearm = std::mem::take(&mut self.rearm);
        completions.extend(self.ring.completion());
        for cqe in completions.drain(..) {
            let data = cqe.user_data();
            match data & TAG {
                SEND => {
                    self.sending = self.sending.saturating_sub(1);
                    self.give_back((data & 0xffff) as u16);
                }
                RECV => {
                    let index = (data & 0xff_ffff) as u32;
                    let current = self.slots.get(index as usize).filter(|s| recv_data(index, s.generation) == data).and_then(|s| s.port);
                    if let Some(bid) = cqueue::buffer_select(cqe.flags()) {
                        let forward = match current {
                            Some(port) if cqe.result() > 0 => self.received(bid, cqe.result() as usize).and_then(|(from, len)| relay(port, from, self.payload(bid), len)),
                            _ => None,
                        };
                        match forward.and_then(|(from_port, to, len)| Some((self.index.get(from_port).copied()?, to, len))) {
                            Some((from, to, len)) => self.send(bid, from, to, len),
                            None => self.give_back(bid),
                        }
                    }
                    // A multishot receive ends on an error (an ICMP error queued on the socket,
                    // no free buffer, …) or a cancel; the socket's receive is armed again
                    // unless it has been closed.
                    if !cqueue::more(cqe.flags()) && current.is_some() {
                        rearm.push((index, (data >> 24 & 0xffff_ffff) as u32));
                    }
                }
                WAKE => {
                    self.woken = true;
                    let mut count = [0u8; 8];
                    // Resets the eventfd; a failure (EAGAIN) means another read already did.
                    let _ = nix::unistd::read(
                        // SAFETY: `wake` is the eventfd the owner of this ring keeps open for
                        // the ring's life (see `new`).
                        unsafe { BorrowedFd::borrow_raw(self.wake) },
                        &mut count,
                    );
                    if !cqueue::more(cqe.flags()) {
                        self.queue(opcode::PollAdd::new(io_uring::types::Fd(self.wake), libc::POLLIN as u32).multi(true).build().user_data(WAKE));
                    }
                }
                _ => {}
            }
        }
        self.publish();
        self.completions = completions;
        for (index, generation) in rearm.drain(..) {
            self.arm(index, generation);
        }
        // `arm` may have queued retries meanwhile; keep both.
        rearm.append(&mut self.rearm);
        self.rearm = rearm;
    }

    /// The source and payload length of a received buffer, if whole and from IPv4/IPv6.
    fn received(&self, bid: u16, len: usize) -> Option<(SocketAddr, usize)> {
        let filled = self.buffer(bid).get(..len)?;
        let out = io_uring::types::RecvMsgOut::parse(filled, &self.msghdr).ok()?;
        if out.is_payload_truncated() || out.is_name_data_truncated() {
            return None;
        }
        Some((socket_addr(out.name_data())?, out.payload_data().len()))
    }

    fn buffer(&self, bid: u16) -> &[u8] {
        let bid = usize::from(bid % BUFS);
        // SAFETY: within the pool (bid < BUFS). Only called for a buffer that is ours (named by
        // a completion and not yet given back or sent), which the kernel does not touch.
        unsafe { std::slice::from_raw_parts(self.pool.ptr.as_ptr().add(bid * BUF), BUF) }
    }

    fn payload(&mut self, bid: u16) -> &mut [u8] {
        let bid = usize::from(bid % BUFS);
        // SAFETY: as in `buffer`; `&mut self` makes this the only reference to it.
        let buf = unsafe { std::slice::from_raw_parts_mut(self.pool.ptr.as_ptr().add(bid * BUF), BUF) };
        buf.get_mut(PAYLOAD_AT..).unwrap_or_default()
    }

    /// Queues the send of a buffer from the main socket at file index `from`: from its twin if
    /// that is connected to `to`, else with the address (and the twin is asked for `to`).
    fn send(&mut self, bid: u16, from: u32, to: SocketAddr, len: usize) {
        let at = usize::from(bid % BUFS);
        let (Some(slot), Some(dest)) = (self.slots.get_mut(from as usize), self.dest.get_mut(at)) else {
            self.give_back(bid);
            return;
        };
        if len > BUF - PAYLOAD_AT {
            self.give_back(bid);
            return;
        }
        // SAFETY: within the pool: `at` < BUFS and PAYLOAD_AT + len ≤ BUF.
        let payload = unsafe { self.pool.ptr.as_ptr().add(at * BUF + PAYLOAD_AT) };
        let connected = match &slot.twin {
            Some(twin) if twin.peer == to => {
                slot.want = None;
                Some(twin.index)
            }
            _ => {
                if !slot.twin_failed && slot.want != Some(to) {
                    if slot.want.is_none() {
                        self.pending.push((from, slot.generation));
                    }
                    slot.want = Some(to);
                }
                None
            }
        };
        let entry = match connected {
            Some(twin) => opcode::Send::new(Fixed(twin), payload, len as u32),
            None => {
                *dest = SockaddrStorage::from(to);
                opcode::Send::new(Fixed(from), payload, len as u32).dest_addr(dest.as_ptr()).dest_addr_len(dest.len())
            }
        };
        let entry = entry.flags(libc::MSG_DONTWAIT).build().user_data(SEND | u64::from(bid));
        if self.push(&entry) {
            self.sending += 1;
            self.queued_sends += 1;
            if connected.is_some() {
                self.connected_sends += 1;
            } else {
                self.unconnected_sends += 1;
            }
        } else {
            self.give_back(bid);
        }
    }

    /// Puts a buffer back in the ring (visible to the kernel at the next [`Self::publish`]).
    fn give_back(&mut self, bid: u16) {
        let bid = bid % BUFS;
        let at = usize::from(self.tail % BUFS);
        // SAFETY: within the pool (bid < BUFS) and the buffer ring (`at` < BUFS entries). The
        // kernel reads only the entries between its head and our published tail, and this one
        // is past the tail; its `resv` (the tail, in the first entry) is not written here.
        unsafe {
            let addr = self.pool.ptr.as_ptr().add(usize::from(bid) * BUF) as u64;
            let entry = self.buf_ring.ptr.as_ptr().cast::<RingEntry>().add(at);
            ptr::addr_of_mut!((*entry).addr).write(addr);
            ptr::addr_of_mut!((*entry).len).write(RECEIVE_LEN as u32);
            ptr::addr_of_mut!((*entry).bid).write(bid);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes the buffers given back visible to the kernel.
    fn publish(&self) {
        // SAFETY: the tail is the `resv` u16 of the ring's first entry (aligned: the ring is
        // page-aligned), which only we write; the kernel reads it with acquire ordering.
        let tail = unsafe { &*ptr::addr_of!((*self.buf_ring.ptr.as_ptr().cast::<RingEntry>()).resv).cast::<AtomicU16>() };
        tail.store(self.tail, Ordering::Release);
    }
}

impl Drop for MediaRing {
    /// Frees the pool and the buffer ring only once the kernel can no longer use them: the
    /// buffer ring unregistered (no receive can pick a buffer) and no send in flight.
    /// Otherwise they are leaked, once per failed ring.
    fn drop(&mut self) {
        if self.ring.submitter().unregister_buf_ring(GROUP).is_ok() && self.sending == 0 {
            // SAFETY: neither field is used again; the kernel no longer uses them (above).
            unsafe {
                ManuallyDrop::drop(&mut self.pool);
                ManuallyDrop::drop(&mut self.buf_ring);
            }
        }
    }
}

/// A UDP socket bound to `main`'s local address while leaving the port unshareable (see the
/// module documentation): `SO_REUSEPORT` on `main`, the new socket bound with it, then
/// cleared on both, so that no third socket can bind the port afterwards.
fn bind_twin(main: BorrowedFd<'_>) -> io::Result<UdpSocket> {
    use nix::sys::socket::{bind, getsockname, setsockopt, socket};
    let local: SockaddrStorage = getsockname(main.as_raw_fd())?;
    let family = local.family().ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    setsockopt(&main, sockopt::ReusePort, &true)?;
    let twin = (|| -> nix::Result<OwnedFd> {
        let twin = socket(family, SockType::Datagram, SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC, None)?;
        setsockopt(&twin, sockopt::ReusePort, &true)?;
        bind(twin.as_raw_fd(), &local)?;
        setsockopt(&twin, sockopt::ReusePort, &false)?;
        Ok(twin)
    })();
    // Cleared whether or not the twin was bound; a twin is kept only once both are cleared.
    setsockopt(&main, sockopt::ReusePort, &false)?;
    Ok(UdpSocket::from(twin?))
}

/// A `sockaddr_in`/`sockaddr_in6` as the kernel wrote it.
fn socket_addr(name: &[u8]) -> Option<SocketAddr> {
    let family = i32::from(u16::from_ne_bytes(name.get(0..2)?.try_into().ok()?));
    let port = u16::from_be_bytes(name.get(2..4)?.try_into().ok()?);
    match family {
        libc::AF_INET => {
            let ip: [u8; 4] = name.get(4..8)?.try_into().ok()?;
            Some(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip), port)))
        }
        libc::AF_INET6 => {
            let flow = u32::from_be_bytes(name.get(4..8)?.try_into().ok()?);
            let ip: [u8; 16] = name.get(8..24)?.try_into().ok()?;
            let scope = u32::from_ne_bytes(name.get(24..28)?.try_into().ok()?);
            Some(SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(ip), port, flow, scope)))
        }
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use nix::sys::eventfd::EventFd;
    use proptest::prelude::*;

    fn ring(wake: &EventFd) -> Option<MediaRing> {
        match MediaRing::new(16, wake.as_fd()) {
            Ok(r) => Some(r),
            Err(e) => {
                println!("skipping: io_uring unavailable here ({e})");
                None
            }
        }
    }

    fn socket() -> (UdpSocket, u16) {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_nonblocking(true).unwrap();
        let port = s.local_addr().unwrap().port();
        (s, port)
    }

    /// Runs the ring until `done` returns true or `limit` passes.
    fn pump(ring: &mut MediaRing, limit: Duration, mut relay: impl FnMut(u16, SocketAddr, &mut [u8], usize) -> Option<Forward>, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + limit;
        while !done() && Instant::now() < deadline {
            ring.wait(Duration::from_millis(20)).unwrap();
            ring.dispatch(&mut relay);
        }
        ring.flush().unwrap();
    }

    /// Datagrams to two registered sockets are each handed over once, with their source, and
    /// forwarded from the other socket; after a close the port's receive is gone, and a
    /// re-open receives again, once per datagram (no stale receive left behind).
    #[test]
    fn relays_across_sockets_and_reopens() {
        let wake = EventFd::new().unwrap();
        let Some(mut ring) = ring(&wake) else { return };
        let ((a, pa), (b, pb)) = (socket(), socket());
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        ring.open(pa, a.as_fd()).unwrap();
        ring.open(pb, b.as_fd()).unwrap();
        for (to, msg) in [(pa, &b"to a"[..]), (pb, b"to b")] {
            peer.send_to(msg, ("127.0.0.1", to)).unwrap();
        }
        let mut got = Vec::new();
        let other = |p: u16| if p == pa { pb } else { pa };
        let peer_addr = peer.local_addr().unwrap();
        pump(&mut ring, Duration::from_millis(300), |port, from, buf, len| {
            got.push((port, from, buf[..len].to_vec()));
            Some((other(port), peer_addr, len))
        }, || false);
        got.sort();
        let mut want = vec![(pa, peer_addr, b"to a".to_vec()), (pb, peer_addr, b"to b".to_vec())];
        want.sort();
        assert_eq!(got, want);
        let mut buf = [0u8; 64];
        let mut back = Vec::new();
        for _ in 0..2 {
            let (n, src) = peer.recv_from(&mut buf).unwrap();
            back.push((src.port(), buf[..n].to_vec()));
        }
        back.sort();
        let mut want = vec![(pb, b"to a".to_vec()), (pa, b"to b".to_vec())];
        want.sort();
        assert_eq!(back, want);

        ring.close(pa).unwrap();
        peer.send_to(b"while closed", ("127.0.0.1", pa)).unwrap();
        let mut after_close = 0;
        pump(&mut ring, Duration::from_millis(300), |_, _, _, _| {
            after_close += 1;
            None
        }, || false);
        assert_eq!(after_close, 0, "a closed port's receive is cancelled");
        ring.open(pa, a.as_fd()).unwrap();
        peer.send_to(b"reopened", ("127.0.0.1", pa)).unwrap();
        let mut seen = Vec::new();
        pump(&mut ring, Duration::from_millis(300), |port, _, buf, len| {
            seen.push((port, buf[..len].to_vec()));
            None
        }, || false);
        // The datagram queued while closed and the new one, once each.
        assert_eq!(seen, vec![(pa, b"while closed".to_vec()), (pa, b"reopened".to_vec())]);
    }

    /// More datagrams queued than the pool has buffers: receives that end for want of a buffer
    /// are re-armed and every datagram is handed over exactly once; an over-long one is not.
    #[test]
    fn more_packets_than_buffers_and_an_overlong_one() {
        let wake = EventFd::new().unwrap();
        let Some(mut ring) = ring(&wake) else { return };
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        let sockets: Vec<(UdpSocket, u16)> = (0..8).map(|_| socket()).collect();
        for (s, p) in &sockets {
            ring.open(*p, s.as_fd()).unwrap();
        }
        const EACH: u16 = 200; // 8 × 200 > BUFS, and fits a default socket buffer
        let mut seen = vec![Vec::new(); sockets.len()];
        for seq in 0..EACH {
            for (_, p) in &sockets {
                peer.send_to(&seq.to_be_bytes(), ("127.0.0.1", *p)).unwrap();
            }
        }
        let (_, first) = sockets[0];
        peer.send_to(&[7u8; 1950], ("127.0.0.1", first)).unwrap();
        peer.send_to(b"after", ("127.0.0.1", first)).unwrap();
        let total = std::cell::Cell::new(0);
        pump(&mut ring, Duration::from_secs(5), |port, _, buf, len| {
            let i = sockets.iter().position(|(_, p)| *p == port).unwrap();
            seen[i].push(buf[..len].to_vec());
            total.set(total.get() + 1);
            None
        }, || total.get() == 8 * usize::from(EACH) + 1);
        for (i, s) in seen.iter().enumerate() {
            let mut want: Vec<Vec<u8>> = (0..EACH).map(|q| q.to_be_bytes().to_vec()).collect();
            if i == 0 {
                want.push(b"after".to_vec());
            }
            assert_eq!(s, &want, "socket {i}");
        }
    }

    /// Sends to a closed port (the kernel answers each with an ICMP port unreachable) leave the
    /// sending socket's receive working. (Linux reports such errors only to connected sockets
    /// or with `IP_RECVERR`, neither of which the media sockets use; were one reported, it
    /// would end the multishot receive with `ECONNREFUSED` and `dispatch` would re-arm it.)
    #[test]
    fn receive_survives_an_icmp_error() {
        let wake = EventFd::new().unwrap();
        let Some(mut ring) = ring(&wake) else { return };
        let (a, pa) = socket();
        ring.open(pa, a.as_fd()).unwrap();
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        let closed = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap(); // dropped: closed
        let seen = std::cell::Cell::new(0);
        for round in 0..3u8 {
            peer.send_to(&[round], ("127.0.0.1", pa)).unwrap();
            // Relay each datagram to the closed port: the kernel answers with ICMP.
            pump(&mut ring, Duration::from_secs(2), |port, _, buf, len| {
                assert_eq!((port, &buf[..len]), (pa, &[round][..]));
                seen.set(seen.get() + 1);
                Some((pa, closed, len))
            }, || seen.get() == usize::from(round) + 1);
        }
        assert_eq!(seen.get(), 3, "every datagram after an ICMP error received");
    }

    #[test]
    fn source_addresses_as_the_kernel_writes_them() {
        let mut v4 = [0u8; NAME_LEN];
        v4[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        v4[2..4].copy_from_slice(&5004u16.to_be_bytes());
        v4[4..8].copy_from_slice(&[192, 0, 2, 1]);
        assert_eq!(socket_addr(&v4), Some("192.0.2.1:5004".parse().unwrap()));
        let mut v6 = [0u8; NAME_LEN];
        v6[..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
        v6[2..4].copy_from_slice(&5006u16.to_be_bytes());
        v6[8..24].copy_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        assert_eq!(socket_addr(&v6), Some("[2001:db8::1]:5006".parse().unwrap()));
        assert_eq!(socket_addr(&v6[..20]), None);
    }

    /// The peer the twin of `port` is connected to, as the kernel reports it.
    fn twin_peer(ring: &MediaRing, port: u16) -> Option<SocketAddr> {
        let index = *ring.index.get(port)?;
        ring.slots[index as usize].twin.as_ref()?.socket.peer_addr().ok()
    }

    /// Binds `port` on `ip` (with `SO_REUSEPORT` if `reuse`): the error kind, if it fails.
    fn third_bind(ip: Ipv4Addr, port: u16, reuse: bool) -> Option<io::ErrorKind> {
        use nix::sys::socket::{bind, setsockopt, socket, AddressFamily, SockaddrIn};
        let fd = socket(AddressFamily::Inet, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None).unwrap();
        setsockopt(&fd, sockopt::ReusePort, &reuse).unwrap();
        bind(fd.as_raw_fd(), &SockaddrIn::from(SocketAddrV4::new(ip, port))).err().map(|e| io::Error::from(e).kind())
    }

    /// Every third bind of a port with a twin is refused, whatever its options.
    fn assert_unshareable(port: u16) {
        for ip in [Ipv4Addr::LOCALHOST, Ipv4Addr::UNSPECIFIED] {
            for reuse in [false, true] {
                assert_eq!(third_bind(ip, port, reuse), Some(io::ErrorKind::AddrInUse), "bind {ip}:{port}, SO_REUSEPORT {reuse}");
            }
        }
    }

    /// The kernel behaviour twins rely on, without a ring: the twin gets its connected peer's
    /// datagrams, the main socket everyone else's (also once the twin is connected to another
    /// peer: then the first peer's go to the main socket), and no third socket can bind the
    /// port, with or without `SO_REUSEPORT`, on the address or the wildcard.
    #[test]
    fn twin_takes_its_peer_and_leaves_the_port_unshareable() {
        let (main, port) = socket();
        let twin = bind_twin(main.as_fd()).unwrap();
        let (p1, p2) = (UdpSocket::bind("127.0.0.1:0").unwrap(), UdpSocket::bind("127.0.0.1:0").unwrap());
        twin.connect(p1.local_addr().unwrap()).unwrap();
        assert_unshareable(port);
        let recv = |s: &UdpSocket| {
            s.set_nonblocking(false).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
            let mut buf = [0u8; 16];
            let (n, from) = s.recv_from(&mut buf).unwrap();
            (buf[..n].to_vec(), from)
        };
        let to = main.local_addr().unwrap();
        p1.send_to(b"p1", to).unwrap();
        p2.send_to(b"p2", to).unwrap();
        assert_eq!(recv(&twin), (b"p1".to_vec(), p1.local_addr().unwrap()));
        assert_eq!(recv(&main), (b"p2".to_vec(), p2.local_addr().unwrap()));
        twin.connect(p2.local_addr().unwrap()).unwrap();
        p1.send_to(b"p1 again", to).unwrap();
        p2.send_to(b"p2 again", to).unwrap();
        assert_eq!(recv(&main), (b"p1 again".to_vec(), p1.local_addr().unwrap()));
        assert_eq!(recv(&twin), (b"p2 again".to_vec(), p2.local_addr().unwrap()));
        // What the twin sends leaves from the port.
        twin.send(b"from twin").unwrap();
        assert_eq!(recv(&p2), (b"from twin".to_vec(), to));
        assert_unshareable(port);
    }

    /// Runs one batch: waits, relays, and makes or re-connects twins as of `now`.
    fn batch(ring: &mut MediaRing, main: &UdpSocket, now: Instant, relay: impl FnMut(u16, SocketAddr, &mut [u8], usize) -> Option<Forward>) {
        ring.wait(Duration::from_millis(20)).unwrap();
        ring.dispatch(relay);
        ring.connect_twins(now, |_| Some(main.as_fd()));
    }

    fn recv_all(s: &UdpSocket) -> Vec<(Vec<u8>, SocketAddr)> {
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            got.push((buf[..n].to_vec(), from));
        }
        got
    }

    /// A socket's first send goes with an address and makes a twin connected to that
    /// destination; from then on, sends there leave from the twin (counted), datagrams from the
    /// twin's peer (received by the twin) and from another source (by the main socket) are
    /// both handed over on the main socket's port, and everything sent leaves from that port.
    /// While the twin exists the port cannot be bound; once closed, it can.
    #[test]
    fn twin_relays_both_sources_and_closes_with_its_port() {
        let wake = EventFd::new().unwrap();
        let Some(mut ring) = ring(&wake) else { return };
        let (a, pa) = socket();
        ring.open(pa, a.as_fd()).unwrap();
        let (peer, other) = (UdpSocket::bind("127.0.0.1:0").unwrap(), UdpSocket::bind("127.0.0.1:0").unwrap());
        peer.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        let (peer_addr, other_addr, a_addr) = (peer.local_addr().unwrap(), other.local_addr().unwrap(), a.local_addr().unwrap());
        let mut seen = Vec::new();
        // Everything is echoed to `peer`.
        let round = |ring: &mut MediaRing, from: &UdpSocket, msg: &[u8], seen: &mut Vec<(u16, SocketAddr, Vec<u8>)>| {
            from.send_to(msg, a_addr).unwrap();
            let deadline = Instant::now() + Duration::from_secs(2);
            let before = seen.len();
            while seen.len() == before && Instant::now() < deadline {
                batch(ring, &a, Instant::now(), |port, src, buf, len| {
                    seen.push((port, src, buf[..len].to_vec()));
                    Some((port, peer_addr, len))
                });
            }
            ring.flush().unwrap();
            let mut buf = [0u8; 64];
            let (n, src) = peer.recv_from(&mut buf).unwrap();
            assert_eq!((&buf[..n], src), (msg, a_addr), "relayed from the port");
        };
        round(&mut ring, &other, b"first", &mut seen);
        assert_eq!(ring.sends(), (0, 1), "the first send is unconnected");
        assert_eq!(twin_peer(&ring, pa), Some(peer_addr), "and makes a twin for its destination");
        assert_unshareable(pa);
        round(&mut ring, &peer, b"from the peer", &mut seen);
        round(&mut ring, &other, b"from another", &mut seen);
        assert_eq!(ring.sends(), (2, 1), "later sends leave from the twin");
        assert_eq!(seen, vec![(pa, other_addr, b"first".to_vec()), (pa, peer_addr, b"from the peer".to_vec()), (pa, other_addr, b"from another".to_vec())]);

        ring.close(pa).unwrap();
        drop(a);
        pump(&mut ring, Duration::from_millis(100), |_, _, _, _| None, || false);
        assert_eq!(third_bind(Ipv4Addr::LOCALHOST, pa, false), None, "closing the port closed its twin");
    }

    /// The destination changes (packets say where they go): sends to the new one go with an
    /// address until the twin is re-connected, which waits for [`RECONNECT_GAP`]; then they
    /// leave from the twin again. Every packet arrives once, at the destination it was sent
    /// to (a send queued from the twin before it is re-connected goes to the old peer), and
    /// the old peer, now an ordinary source, is still received.
    #[test]
    fn twin_reconnects_after_the_gap_without_loss() {
        let wake = EventFd::new().unwrap();
        let Some(mut ring) = ring(&wake) else { return };
        let (a, pa) = socket();
        ring.open(pa, a.as_fd()).unwrap();
        let src = UdpSocket::bind("127.0.0.1:0").unwrap();
        let peers = [UdpSocket::bind("127.0.0.1:0").unwrap(), UdpSocket::bind("127.0.0.1:0").unwrap()];
        let dests = [peers[0].local_addr().unwrap(), peers[1].local_addr().unwrap()];
        for p in &peers {
            p.set_nonblocking(true).unwrap();
        }
        let a_addr = a.local_addr().unwrap();
        let t0 = Instant::now();
        let mut received = 0usize;
        let mut sent = 0usize;
        // Sends `[dest, seq]` packets from `from` and relays them until all are handed over.
        let mut send = |ring: &mut MediaRing, from: &UdpSocket, packets: &[[u8; 2]], now: Instant| {
            for p in packets {
                from.send_to(p, a_addr).unwrap();
            }
            sent += packets.len();
            let deadline = Instant::now() + Duration::from_secs(2);
            while received < sent && Instant::now() < deadline {
                batch(ring, &a, now, |port, _, buf, len| {
                    received += 1;
                    Some((port, dests[usize::from(buf[0])], len))
                });
            }
            assert_eq!(received, sent);
            ring.flush().unwrap();
        };
        send(&mut ring, &src, &[[0, 0]], t0);
        assert_eq!(twin_peer(&ring, pa), Some(dests[0]));
        send(&mut ring, &src, &[[0, 1], [0, 2]], t0);
        assert_eq!(ring.sends(), (2, 1));
        // New destination, within the gap: unconnected, twin unchanged.
        send(&mut ring, &src, &[[0, 3], [1, 4], [1, 5]], t0 + RECONNECT_GAP / 2);
        assert_eq!(ring.sends(), (3, 3));
        assert_eq!(twin_peer(&ring, pa), Some(dests[0]));
        // Past the gap: re-connected after the batch (its send to the old peer went first).
        send(&mut ring, &src, &[[0, 6], [1, 7]], t0 + RECONNECT_GAP);
        assert_eq!(twin_peer(&ring, pa), Some(dests[1]));
        assert_eq!(ring.sends(), (4, 4));
        send(&mut ring, &src, &[[1, 8], [1, 9]], t0 + RECONNECT_GAP);
        assert_eq!(ring.sends(), (6, 4), "sends to the new destination leave from the twin");
        // The old peer is received (by the main socket now) and relayed.
        send(&mut ring, &peers[0], &[[1, 10]], t0 + RECONNECT_GAP);
        assert_eq!(ring.sends(), (7, 4));
        std::thread::sleep(Duration::from_millis(50));
        let got: Vec<Vec<Vec<u8>>> = peers.iter().map(|p| recv_all(p).into_iter().map(|(m, from)| {
            assert_eq!(from, a_addr);
            m
        }).collect()).collect();
        assert_eq!(got[0], [0, 1, 2, 3, 6].map(|s| vec![0, s]).to_vec());
        assert_eq!(got[1], [4, 5, 7, 8, 9, 10].map(|s| vec![1, s]).to_vec());
    }

    /// A twin connected to a closed port gets the ICMP errors of its sends (a connected UDP
    /// socket does): its receive, ended by one, is armed again, and the peer's next datagram
    /// (once its port is open again) is relayed.
    #[test]
    fn twin_receive_survives_an_icmp_error() {
        let wake = EventFd::new().unwrap();
        let Some(mut ring) = ring(&wake) else { return };
        let (a, pa) = socket();
        ring.open(pa, a.as_fd()).unwrap();
        let src = UdpSocket::bind("127.0.0.1:0").unwrap();
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        let peer_addr = peer.local_addr().unwrap();
        let a_addr = a.local_addr().unwrap();
        let relayed = std::cell::Cell::new(0);
        let run = |ring: &mut MediaRing, want: usize| {
            let deadline = Instant::now() + Duration::from_secs(2);
            while relayed.get() < want && Instant::now() < deadline {
                batch(ring, &a, Instant::now(), |port, _, _, len| {
                    relayed.set(relayed.get() + 1);
                    Some((port, peer_addr, len))
                });
            }
            ring.flush().unwrap();
        };
        src.send_to(b"0", a_addr).unwrap();
        run(&mut ring, 1);
        assert_eq!(twin_peer(&ring, pa), Some(peer_addr));
        drop(peer); // closed: the twin's sends there draw ICMP port unreachable
        for i in 1..=3 {
            src.send_to(b"x", a_addr).unwrap();
            run(&mut ring, i + 1);
            std::thread::sleep(Duration::from_millis(20));
        }
        pump(&mut ring, Duration::from_millis(100), |_, _, _, _| None, || false);
        let peer = UdpSocket::bind(peer_addr).unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        peer.send_to(b"back", a_addr).unwrap();
        run(&mut ring, 5);
        assert_eq!(relayed.get(), 5, "the twin's peer is received after the errors");
        assert!(ring.sends().0 >= 3, "{:?}", ring.sends());
        let mut buf = [0u8; 8];
        assert_eq!(peer.recv(&mut buf).unwrap(), 4);
        assert_eq!(&buf[..4], b"back");
    }

    proptest! {
        #[test]
        fn any_name_bytes_parse_without_panic(name in proptest::collection::vec(any::<u8>(), 0..40)) {
            let _ = socket_addr(&name);
        }
    }
}
