//! How full a UDP socket's receive queue is: the early overload signal of the endpoint
//! (docs/sip.md §1.1). When the endpoint task itself is the bottleneck, datagrams wait in
//! the kernel's receive queue, and once it holds more than the socket's receive buffer the
//! kernel drops them silently; the endpoint sees that coming by sampling the queue.
//!
//! Where the numbers come from: on UDP, `FIONREAD`/`SIOCINQ` give the size of the next
//! datagram only. The queue's total is `SK_MEMINFO_RMEM_ALLOC` of the `SO_MEMINFO` socket
//! option (Linux ≥ 3.x; `<linux/sock_diag.h>`): the memory charged for the queued datagrams,
//! which the kernel compares with `SK_MEMINFO_RCVBUF` (the enforced `SO_RCVBUF`) before it
//! drops, and `SK_MEMINFO_DROPS` counts those drops. One `getsockopt` per sample, whatever
//! else runs on the host. (The same figures are in `/proc/net/udp`, but reading that table
//! walks every UDP socket of the network namespace: 48 ms per read with 5 000 sockets open
//! here, e.g. an IMS-AGW's media ports on the same host — far too slow for an overload signal.)
//! `nix` and `socket2` have no wrapper for `SO_MEMINFO`, so [`meminfo`] calls `getsockopt`
//! itself: the one `unsafe` block of this crate. Linux only: elsewhere [`Probe::new`] fails
//! and the endpoint runs without this check.

use std::io;
use std::os::fd::{AsFd, AsRawFd as _, OwnedFd};
use std::sync::Arc;

use nix::libc;

/// A UDP socket's receive queue at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UdpQueue {
    /// Bytes charged for the datagrams waiting to be read (each datagram counts with its
    /// kernel overhead, so more than its payload).
    pub queued: usize,
    /// The receive buffer: beyond it the kernel drops what arrives (`SO_RCVBUF`).
    pub capacity: usize,
    /// Datagrams the kernel has dropped on this socket since it was opened (0 on a kernel
    /// whose `SO_MEMINFO` predates the drop count).
    pub drops: u64,
}

impl UdpQueue {
    /// Whether more than `percent` % of the receive buffer is in use.
    pub fn above(&self, percent: u8) -> bool {
        self.queued.saturating_mul(100) > self.capacity.saturating_mul(usize::from(percent))
    }
}

/// Reads one socket's receive queue (a duplicate of its descriptor, so that the endpoint and
/// its task can both hold one).
#[derive(Clone, Debug)]
pub(crate) struct Probe {
    fd: Arc<OwnedFd>,
}

impl Probe {
    /// A probe of `socket`; fails where `SO_MEMINFO` cannot be read.
    pub(crate) fn new(socket: &impl AsFd) -> io::Result<Self> {
        let probe = Self { fd: Arc::new(socket.as_fd().try_clone_to_owned()?) };
        // Fail now, not at every sample, where there is no such option.
        probe.read()?;
        Ok(probe)
    }

    /// The queue now.
    pub(crate) fn read(&self) -> io::Result<UdpQueue> {
        let info = meminfo(&self.fd)?;
        let at = |i: usize| info.get(i).copied().flatten();
        match (at(SK_MEMINFO_RMEM_ALLOC), at(SK_MEMINFO_RCVBUF)) {
            (Some(queued), Some(capacity)) => Ok(UdpQueue {
                queued: queued as usize,
                capacity: capacity as usize,
                drops: at(SK_MEMINFO_DROPS).map_or(0, u64::from),
            }),
            _ => Err(io::Error::new(io::ErrorKind::Unsupported, "SO_MEMINFO too short")),
        }
    }
}

/// Indices of `SO_MEMINFO`'s array (`enum sk_meminfo_vars` in `<linux/sock_diag.h>`).
const SK_MEMINFO_RMEM_ALLOC: usize = 0;
const SK_MEMINFO_RCVBUF: usize = 1;
const SK_MEMINFO_DROPS: usize = 8;
/// Entries of the array asked for (`SK_MEMINFO_VARS` of Linux ≥ 4.x; an older kernel returns
/// fewer, a newer one is cut to this many).
const VARS: usize = 9;

/// The socket's `SO_MEMINFO` array; an entry the kernel did not fill is `None`.
#[allow(unsafe_code)]
fn meminfo(fd: &impl AsFd) -> io::Result<[Option<u32>; VARS]> {
    let mut info = [0u32; VARS];
    let mut len = libc::socklen_t::try_from(size_of_val(&info)).map_err(io::Error::other)?;
    // SAFETY: `info` is an initialised, aligned array of `len` bytes that lives across the
    // call, and `len` is a valid `socklen_t` the kernel may lower; `getsockopt(SO_MEMINFO)`
    // writes at most `len` bytes to `info` (it copies `min(len, sizeof meminfo)`) and the new
    // length to `len`, and reads nothing else from our memory. The descriptor is borrowed
    // from an open socket for the duration of the call.
    let rc = unsafe {
        libc::getsockopt(fd.as_fd().as_raw_fd(), libc::SOL_SOCKET, libc::SO_MEMINFO, info.as_mut_ptr().cast(), &raw mut len)
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let filled = len as usize / size_of::<u32>();
    Ok(std::array::from_fn(|i| (i < filled).then(|| info.get(i).copied()).flatten()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UdpSocket;

    /// A real socket: empty at first; after datagrams sent to it and not read, its queue is
    /// above zero and below the buffer, and `above` compares it in per cent; no drops.
    #[tokio::test]
    async fn a_real_socket_fills() {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let Ok(probe) = Probe::new(&socket) else {
            assert!(std::env::var_os("MEDIASEC_REQUIRE_PEERS").is_none(), "no SO_MEMINFO");
            println!("skipped: no SO_MEMINFO on this system");
            return;
        };
        let empty = probe.read().expect("read");
        assert_eq!(empty.queued, 0);
        let rcvbuf = nix::sys::socket::getsockopt(&socket, nix::sys::socket::sockopt::RcvBuf).expect("SO_RCVBUF");
        assert_eq!(empty.capacity, rcvbuf, "SK_MEMINFO_RCVBUF is the enforced SO_RCVBUF");
        let sender = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        for _ in 0..10 {
            sender.send_to(&[b'x'; 500], socket.local_addr().expect("addr")).await.expect("send");
        }
        let queue = probe.read().expect("read");
        assert!(queue.queued >= 10 * 500 && queue.queued < queue.capacity, "{queue:?}");
        assert_eq!(queue.drops, 0);
        assert!(queue.above(0) && !queue.above(100));
        assert!(!UdpQueue { queued: 50, capacity: 100, drops: 0 }.above(50));
        assert!(UdpQueue { queued: 51, capacity: 100, drops: 0 }.above(50));
    }

    /// A socket whose buffer overflows: the kernel's drops are counted.
    #[tokio::test]
    async fn an_overflowing_socket_counts_its_drops() {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::RcvBuf, &4096).expect("SO_RCVBUF");
        let Ok(probe) = Probe::new(&socket) else {
            assert!(std::env::var_os("MEDIASEC_REQUIRE_PEERS").is_none(), "no SO_MEMINFO");
            println!("skipped: no SO_MEMINFO on this system");
            return;
        };
        let sender = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        for _ in 0..100 {
            sender.send_to(&[b'x'; 500], socket.local_addr().expect("addr")).await.expect("send");
        }
        let queue = probe.read().expect("read");
        assert!(queue.drops > 0, "{queue:?}");
        assert!(queue.above(50), "{queue:?}");
    }
}
