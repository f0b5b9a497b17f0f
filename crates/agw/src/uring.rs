//! Batched sends over io_uring: the packets the media thread forwards in one flush, whatever
//! socket each leaves from, are handed to the kernel in one `io_uring_enter`
//! (`IORING_OP_SEND` with a destination address, Linux ≥ 6.0) instead of one `sendto` each.
//! The datagrams, their sources and destinations are the same as with `sendto`; only the
//! number of system calls changes.
//!
//! The ring owns the memory the kernel reads: each queued packet is copied into a slot of
//! the ring (a datagram of at most [`SLOT`] octets and its destination address), and
//! [`SendRing::send_all`] does not return before every submitted send has completed, so a
//! slot is never rewritten while the kernel may still read it. If the ring fails in a way
//! that leaves sends queued or in flight, its memory is leaked rather than freed (see
//! [`SendRing::send_all`]).

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsFd as _, AsRawFd as _, BorrowedFd};

use io_uring::{opcode, types, IoUring};
use nix::sys::socket::{SockaddrLike as _, SockaddrStorage};

/// Largest datagram a slot holds (the media thread's buffers are 2 KiB).
pub(crate) const SLOT: usize = 2048;

/// A packet queued for sending and its destination; kept at a fixed address in the ring.
struct Slot {
    data: [u8; SLOT],
    to: SockaddrStorage,
}

/// An io_uring and the slots of the sends of one batch.
pub(crate) struct SendRing {
    ring: IoUring,
    /// Boxed once at creation and never resized: the addresses handed to the kernel stay
    /// valid for the ring's life.
    slots: Box<[Slot]>,
}

impl SendRing {
    /// A ring for batches of up to `capacity` sends, checked by sending one datagram to
    /// ourselves over loopback: fails (`ENOSYS`, `EPERM` under seccomp, `EINVAL` before
    /// Linux 6.0, …) when the kernel cannot do what the media thread needs.
    pub(crate) fn new(capacity: u16) -> io::Result<Self> {
        let ring = IoUring::new(u32::from(capacity).next_power_of_two())?;
        let unspecified = SockaddrStorage::from(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
        let slots = (0..capacity).map(|_| Slot { data: [0; SLOT], to: unspecified }).collect();
        let mut s = Self { ring, slots };
        let rx = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
        rx.set_nonblocking(true)?;
        let tx = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
        let probe = b"mediasec io_uring probe";
        if s.send_all([(tx.as_fd(), &probe[..], rx.local_addr()?)])? != 1 {
            return Err(io::Error::other("io_uring send failed"));
        }
        let mut got = [0u8; 64];
        match rx.recv(&mut got) {
            Ok(n) if got.get(..n) == Some(&probe[..]) => Ok(s),
            _ => Err(io::Error::other("io_uring send did not arrive")),
        }
    }

    /// Sends each `(socket, datagram, destination)` (at most the ring's capacity; datagrams
    /// longer than [`SLOT`] and the excess are skipped) with one `io_uring_enter`, and waits
    /// until every send has completed. Returns how many were sent. Like a non-blocking
    /// `sendto`, a send that would block fails (and the datagram is lost).
    ///
    /// An error means the ring is unusable; the caller must then [`SendRing::abandon`] it.
    pub(crate) fn send_all<'a>(&mut self, packets: impl IntoIterator<Item = (BorrowedFd<'a>, &'a [u8], SocketAddr)>) -> io::Result<usize> {
        let mut queued = 0;
        {
            let mut sq = self.ring.submission();
            for ((fd, packet, to), slot) in packets.into_iter().zip(self.slots.iter_mut()) {
                let Some(data) = slot.data.get_mut(..packet.len()) else { continue };
                data.copy_from_slice(packet);
                slot.to = SockaddrStorage::from(to);
                // `packet.len()` ≤ SLOT, so it fits a u32.
                let entry = opcode::Send::new(types::Fd(fd.as_raw_fd()), slot.data.as_ptr(), packet.len() as u32)
                    .dest_addr(slot.to.as_ptr())
                    .dest_addr_len(slot.to.len())
                    .flags(nix::libc::MSG_DONTWAIT)
                    .build();
                // SAFETY: the entry points into `slot`, which lives in `self.slots` (a boxed
                // slice never moved or resized while the ring exists) and is not written again
                // before this call has reaped the entry's completion below (or, on error,
                // never: `abandon` leaks the slots). The file descriptor is borrowed for
                // `'a`, which outlasts this call, so it stays open while the send is in flight.
                // The submission queue has room: it holds at least `slots.len()` entries and
                // is empty whenever this function starts or returns Ok.
                if unsafe { sq.push(&entry) }.is_err() {
                    break;
                }
                queued += 1;
            }
        }
        let (mut done, mut sent) = (0, 0);
        while done < queued {
            match self.ring.submit_and_wait(queued - done) {
                Ok(_) => {}
                Err(e) if matches!(e.raw_os_error(), Some(nix::libc::EINTR | nix::libc::EAGAIN | nix::libc::EBUSY)) => {}
                Err(e) => return Err(e),
            }
            for cqe in self.ring.completion() {
                done += 1;
                if cqe.result() >= 0 {
                    sent += 1;
                }
            }
        }
        Ok(sent)
    }

    /// Gives a failed ring up without freeing what the kernel might still read: the ring
    /// and its slots are leaked (once per failure; the media thread then uses `sendto`).
    pub(crate) fn abandon(self) {
        std::mem::forget(self);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    /// Where io_uring works (it does on the development machine; under seccomp it may not),
    /// a batch across several sockets arrives intact, from the right sources; over-long
    /// datagrams are skipped.
    #[test]
    fn batch_from_several_sockets_arrives_intact() {
        let Ok(mut ring) = SendRing::new(4) else {
            println!("skipping: io_uring unavailable here");
            return;
        };
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(std::time::Duration::from_secs(2))).unwrap();
        let to = rx.local_addr().unwrap();
        let txs: Vec<UdpSocket> = (0..3).map(|_| UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
        let big = [0u8; SLOT + 1];
        let batch: Vec<(BorrowedFd<'_>, &[u8], SocketAddr)> = vec![
            (txs[0].as_fd(), b"one", to),
            (txs[1].as_fd(), &big, to),
            (txs[1].as_fd(), b"two", to),
            (txs[2].as_fd(), b"three", to),
        ];
        assert_eq!(ring.send_all(batch).unwrap(), 3);
        let mut buf = [0u8; 64];
        for (want, from) in [(&b"one"[..], 0), (b"two", 1), (b"three", 2)] {
            let (n, src) = rx.recv_from(&mut buf).unwrap();
            assert_eq!((&buf[..n], src), (want, txs[from].local_addr().unwrap()));
        }
    }
}
