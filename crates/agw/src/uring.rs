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
use std::os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, RawFd};
use std::mem::ManuallyDrop;
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use io_uring::types::{Fixed, SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, squeue, IoUring};
use nix::libc;
use nix::sys::socket::{SockaddrLike as _, SockaddrStorage};

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

/// Per registered-file index: the port of the socket there (if any) and the generation of its
/// receive.
#[derive(Clone, Copy, Default)]
struct Slot {
    port: Option<u16>,
    generation: u32,
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
    index: PortTable<u32>,
    free: Vec<u32>,
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
    /// A ring for up to `sockets` media sockets; `wake` is an eventfd whose writes end a wait
    /// (and make [`MediaRing::take_wake`] true). Checks itself by relaying one datagram
    /// between two loopback sockets: fails (`ENOSYS`, `EPERM` under seccomp, `EINVAL` before
    /// Linux 6.1, `EMFILE` when `sockets` exceeds `RLIMIT_NOFILE`, …) when the kernel cannot do
    /// what the media thread needs. Must be created on the thread that will use it
    /// (`IORING_SETUP_SINGLE_ISSUER`).
    pub(crate) fn new(sockets: u32, wake: BorrowedFd<'_>) -> io::Result<Self> {
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_cqsize(8 * u32::from(BUFS))
            .build(u32::from(BUFS))?;
        let table = sockets.checked_add(2).ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        ring.submitter().register_files_sparse(table)?;
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
            slots: vec![Slot::default(); table as usize],
            index: PortTable::default(),
            free: (0..table).rev().collect(),
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
        let slot = self.slots.get_mut(index as usize).ok_or_else(|| io::Error::other("file slot out of range"))?;
        slot.port = Some(port);
        slot.generation = slot.generation.wrapping_add(1);
        let generation = slot.generation;
        self.index.insert(port, index);
        self.arm(index, generation);
        Ok(())
    }

    /// Cancels the receive of the socket of `port` and unregisters it.
    pub(crate) fn close(&mut self, port: u16) -> io::Result<()> {
        let Some(index) = self.index.remove(port) else { return Ok(()) };
        let Some(slot) = self.slots.get_mut(index as usize) else { return Ok(()) };
        let armed = recv_data(index, slot.generation);
        slot.port = None;
        slot.generation = slot.generation.wrapping_add(1);
        self.queue(opcode::AsyncCancel::new(armed).build().user_data(CANCEL));
        self.ring.submitter().register_files_update(index, &[-1])?;
        self.free.push(index);
        Ok(())
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

    fn send(&mut self, bid: u16, from: u32, to: SocketAddr, len: usize) {
        let at = usize::from(bid % BUFS);
        if len > BUF - PAYLOAD_AT {
            self.give_back(bid);
            return;
        }
        let Some(dest) = self.dest.get_mut(at) else {
            self.give_back(bid);
            return;
        };
        *dest = SockaddrStorage::from(to);
        let (addr, addr_len) = (dest.as_ptr(), dest.len());
        // SAFETY: within the pool: `at` < BUFS and PAYLOAD_AT + len ≤ BUF.
        let payload = unsafe { self.pool.ptr.as_ptr().add(at * BUF + PAYLOAD_AT) };
        let entry = opcode::Send::new(Fixed(from), payload, len as u32)
            .dest_addr(addr)
            .dest_addr_len(addr_len)
            .flags(libc::MSG_DONTWAIT)
            .build()
            .user_data(SEND | u64::from(bid));
        if self.push(&entry) {
            self.sending += 1;
            self.queued_sends += 1;
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

    proptest! {
        #[test]
        fn any_name_bytes_parse_without_panic(name in proptest::collection::vec(any::<u8>(), 0..40)) {
            let _ = socket_addr(&name);
        }
    }
}
