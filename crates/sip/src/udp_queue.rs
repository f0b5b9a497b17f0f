//! How full a UDP socket's receive queue is: the early overload signal of the endpoint
//! (docs/sip.md §1.1). When the endpoint task itself is the bottleneck, datagrams wait in
//! the kernel's receive queue, and once it holds more than the socket's receive buffer the
//! kernel drops them silently; the endpoint sees that coming by sampling the queue.
//!
//! Where the numbers come from: on UDP, `FIONREAD`/`SIOCINQ` give the size of the next
//! datagram only, and the queue's total (`SK_MEMINFO_RMEM_ALLOC` of `SO_MEMINFO`) has no safe
//! wrapper in `nix` or `socket2` (the workspace denies `unsafe`). The kernel publishes the
//! same figure, `udp_rqueue_get()` (the memory charged for queued datagrams, as the receive
//! buffer limit counts it), in the `rx_queue` column of `/proc/net/udp` and `udp6`, with the
//! socket's drop count in `drops`; the socket is found there by its inode. The buffer size is
//! `SO_RCVBUF` (the value the kernel enforces, twice what was set). Linux only: elsewhere
//! [`Probe::new`] fails and the endpoint runs without this check.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;

use nix::sys::socket::{getsockopt, sockopt};
use tokio::net::UdpSocket;

/// A UDP socket's receive queue at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UdpQueue {
    /// Bytes charged for the datagrams waiting to be read (each datagram counts with its
    /// kernel overhead, so more than its payload).
    pub queued: usize,
    /// The receive buffer: beyond it the kernel drops what arrives (`SO_RCVBUF`).
    pub capacity: usize,
    /// Datagrams the kernel has dropped on this socket since it was opened.
    pub drops: u64,
}

impl UdpQueue {
    /// Whether more than `percent` % of the receive buffer is in use.
    pub fn above(&self, percent: u8) -> bool {
        self.queued.saturating_mul(100) > self.capacity.saturating_mul(usize::from(percent))
    }
}

/// Reads one socket's receive queue from the kernel's UDP table.
#[derive(Clone, Debug)]
pub(crate) struct Probe {
    inode: u64,
    table: &'static str,
    capacity: usize,
}

impl Probe {
    /// Finds `socket` (its inode, its address family's table, its receive buffer size).
    pub(crate) fn new(socket: &UdpSocket) -> io::Result<Self> {
        let inode = std::fs::metadata(format!("/proc/self/fd/{}", socket.as_raw_fd()))?.ino();
        let table = if socket.local_addr()?.is_ipv6() { "/proc/self/net/udp6" } else { "/proc/self/net/udp" };
        let capacity = getsockopt(socket, sockopt::RcvBuf).map_err(io::Error::from)?;
        let probe = Self { inode, table, capacity };
        // Fail now, not at every sample, where there is no such table.
        probe.read()?;
        Ok(probe)
    }

    /// The queue now.
    pub(crate) fn read(&self) -> io::Result<UdpQueue> {
        let text = std::fs::read_to_string(self.table)?;
        let (queued, drops) = rx_queue(&text, self.inode).ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("socket inode {} not in {}", self.inode, self.table)))?;
        Ok(UdpQueue { queued, capacity: self.capacity, drops })
    }
}

/// The `rx_queue` (hexadecimal bytes) and `drops` (decimal) of the socket with `inode` in the
/// text of `/proc/net/udp` or `udp6`: after the header line, one line per socket with the
/// whitespace-separated fields `sl local_address rem_address st tx_queue:rx_queue tr:tm->when
/// retrnsmt uid timeout inode ref pointer drops`. `None` when no line has that inode or the
/// line does not read as that.
pub(crate) fn rx_queue(table: &str, inode: u64) -> Option<(usize, u64)> {
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_ascii_whitespace().collect();
        if fields.get(9)?.parse::<u64>().ok()? != inode {
            return None;
        }
        let (_, rx) = fields.get(4)?.split_once(':')?;
        let queued = usize::from_str_radix(rx, 16).ok()?;
        let drops = fields.get(12)?.parse().ok()?;
        Some((queued, drops))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  412: 0100007F:A1B2 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 77001 2 0000000000000000 0
  977: 0100007F:13C4 00000000:0000 07 00000000:0001F400 00:00000000 00000000  1000        0 77002 2 0000000000000000 12
";

    /// The line of the socket's inode gives its queue (0x1F400 = 128 000 bytes) and drops; an
    /// inode not listed, a header-only table and a cut line give nothing.
    #[test]
    fn the_queue_of_the_socket_with_that_inode() {
        assert_eq!(rx_queue(TABLE, 77002), Some((128_000, 12)));
        assert_eq!(rx_queue(TABLE, 77001), Some((0, 0)));
        assert_eq!(rx_queue(TABLE, 5), None);
        assert_eq!(rx_queue(TABLE.lines().next().unwrap_or_default(), 77002), None);
        assert_eq!(rx_queue("header\n  1: 0100007F:13C4 00000000:0000 07 00000000:0001F400 00:0 0 0 0 77002", 77002), None);
    }

    /// A real socket: empty at first; after datagrams sent to it and not read, its queue is
    /// above zero and below the buffer, and `above` compares it in per cent.
    #[tokio::test]
    async fn a_real_socket_fills() {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let Ok(probe) = Probe::new(&socket) else {
            assert!(std::env::var_os("MEDIASEC_REQUIRE_PEERS").is_none(), "no /proc/self/net/udp");
            println!("skipped: no /proc/self/net/udp on this system");
            return;
        };
        assert_eq!(probe.read().expect("read").queued, 0);
        let sender = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        for _ in 0..10 {
            sender.send_to(&[b'x'; 500], socket.local_addr().expect("addr")).await.expect("send");
        }
        let queue = probe.read().expect("read");
        assert!(queue.queued >= 10 * 500 && queue.queued < queue.capacity, "{queue:?}");
        assert!(queue.above(0) && !queue.above(100));
        assert!(!UdpQueue { queued: 50, capacity: 100, drops: 0 }.above(50));
        assert!(UdpQueue { queued: 51, capacity: 100, drops: 0 }.above(50));
    }
}
