//! Finding and rewriting the UDP payload of a captured frame: link layers Ethernet (with
//! 802.1Q tags), Linux cooked v1/v2, raw IP and BSD loopback; IPv4 (RFC 791) and IPv6
//! (RFC 8200) without extension headers; UDP (RFC 768). Lengths and checksums are fixed up
//! when the payload changes size, so the rewritten capture stays valid.

use pcap_file::DataLink;

/// Where the UDP datagram sits inside a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct UdpFrame {
    ip: usize,
    v6: bool,
    udp: usize,
    end: usize,
    pub(crate) src_port: u16,
    pub(crate) dst_port: u16,
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// Offset of the IP header, or `None` for frames that do not carry IP.
fn ip_offset(link: DataLink, frame: &[u8]) -> Option<usize> {
    match link {
        DataLink::ETHERNET => {
            let mut at = 12;
            let mut ethertype = be16(frame, at)?;
            while ethertype == 0x8100 || ethertype == 0x88a8 {
                at += 4;
                ethertype = be16(frame, at)?;
            }
            matches!(ethertype, 0x0800 | 0x86dd).then_some(at + 2)
        }
        DataLink::LINUX_SLL => matches!(be16(frame, 14)?, 0x0800 | 0x86dd).then_some(16),
        DataLink::LINUX_SLL2 => matches!(be16(frame, 0)?, 0x0800 | 0x86dd).then_some(20),
        DataLink::RAW | DataLink::IPV4 | DataLink::IPV6 => Some(0),
        DataLink::NULL => Some(4),
        _ => None,
    }
}

impl UdpFrame {
    /// Locates the UDP datagram of an unfragmented IPv4/IPv6 packet in `frame`.
    pub(crate) fn locate(link: DataLink, frame: &[u8]) -> Option<Self> {
        let ip = ip_offset(link, frame)?;
        let version = frame.get(ip)? >> 4;
        let (udp, ip_end, v6) = match version {
            4 => {
                let ihl = usize::from(frame.get(ip)? & 0x0f) * 4;
                let total = usize::from(be16(frame, ip + 2)?);
                let flags_frag = be16(frame, ip + 6)?;
                if ihl < 20 || *frame.get(ip + 9)? != 17 || flags_frag & 0x3fff != 0 {
                    return None;
                }
                (ip + ihl, ip + total, false)
            }
            6 => {
                if *frame.get(ip + 6)? != 17 {
                    return None;
                }
                (ip + 40, ip + 40 + usize::from(be16(frame, ip + 4)?), true)
            }
            _ => return None,
        };
        let udp_len = usize::from(be16(frame, udp + 4)?);
        let end = udp + udp_len;
        if udp_len < 8 || end > ip_end || ip_end > frame.len() {
            return None;
        }
        Some(Self { ip, v6, udp, end, src_port: be16(frame, udp)?, dst_port: be16(frame, udp + 2)? })
    }

    /// The UDP payload.
    pub(crate) fn payload<'a>(&self, frame: &'a [u8]) -> &'a [u8] {
        frame.get(self.udp + 8..self.end).unwrap_or_default()
    }

    /// A copy of `frame` with the UDP payload replaced and lengths and checksums updated.
    pub(crate) fn rebuild(&self, frame: &[u8], payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(frame.len() + payload.len());
        out.extend_from_slice(frame.get(..self.udp + 8).unwrap_or_default());
        out.extend_from_slice(payload);
        out.extend_from_slice(frame.get(self.end..).unwrap_or_default());
        let udp_len = 8 + payload.len();
        let set16 = |out: &mut Vec<u8>, at: usize, v: u16| {
            if let Some(b) = out.get_mut(at..at + 2) {
                b.copy_from_slice(&v.to_be_bytes());
            }
        };
        let ip_hdr_len = self.udp - self.ip;
        if self.v6 {
            set16(&mut out, self.ip + 4, (udp_len + ip_hdr_len - 40) as u16);
        } else {
            set16(&mut out, self.ip + 2, (ip_hdr_len + udp_len) as u16);
            set16(&mut out, self.ip + 10, 0);
            let sum = checksum(0, out.get(self.ip..self.udp).unwrap_or_default());
            set16(&mut out, self.ip + 10, !fold(sum));
        }
        set16(&mut out, self.udp + 4, udp_len as u16);
        let old_sum = be16(frame, self.udp + 6).unwrap_or(0);
        if old_sum != 0 || self.v6 {
            set16(&mut out, self.udp + 6, 0);
            // Pseudo-header: addresses, protocol, UDP length (RFC 768; RFC 8200 §8.1).
            let addrs = if self.v6 { self.ip + 8..self.ip + 40 } else { self.ip + 12..self.ip + 20 };
            let mut sum = checksum(0, out.get(addrs).unwrap_or_default());
            sum += 17 + udp_len as u32;
            sum = checksum(sum, out.get(self.udp..self.udp + udp_len).unwrap_or_default());
            let c = !fold(sum);
            set16(&mut out, self.udp + 6, if c == 0 { 0xffff } else { c });
        }
        out
    }
}

/// One's-complement sum of 16-bit words (RFC 1071), not yet folded.
fn checksum(mut sum: u32, data: &[u8]) -> u32 {
    let mut words = data.chunks_exact(2);
    for w in &mut words {
        if let &[hi, lo] = w {
            sum += u32::from(u16::from_be_bytes([hi, lo]));
        }
    }
    if let [last] = words.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Builds an Ethernet/IPv4/UDP frame around `payload` (for tests).
#[cfg(test)]
pub(crate) fn ethernet_ipv4_udp(src_port: u16, dst_port: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; 12];
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(&[0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0, 127, 0, 0, 1, 127, 0, 0, 1]);
    f.extend_from_slice(&src_port.to_be_bytes());
    f.extend_from_slice(&dst_port.to_be_bytes());
    f.extend_from_slice(&[0, 8, 0xff, 0xff]); // length 8, checksum "present" so it is computed
    let frame = UdpFrame { ip: 14, v6: false, udp: 34, end: 42, src_port, dst_port };
    frame.rebuild(&f, payload)
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)] // fixed-layout test frames
mod tests {
    use super::*;

    #[test]
    fn rebuild_keeps_checksums_valid() {
        let f = ethernet_ipv4_udp(4000, 5000, b"hello");
        let u = UdpFrame::locate(DataLink::ETHERNET, &f).expect("udp");
        assert_eq!((u.src_port, u.dst_port, u.payload(&f)), (4000, 5000, &b"hello"[..]));
        assert_eq!(fold(checksum(0, &f[14..34])), 0xffff, "IPv4 header checksum verifies");
        let mut pseudo = checksum(0, &f[26..34]) + 17 + 13;
        pseudo = checksum(pseudo, &f[34..]);
        assert_eq!(fold(pseudo), 0xffff, "UDP checksum verifies");
        let g = u.rebuild(&f, b"hello, longer");
        let v = UdpFrame::locate(DataLink::ETHERNET, &g).expect("udp");
        assert_eq!(v.payload(&g), b"hello, longer");
        assert_eq!(v.rebuild(&g, b"hello"), f, "shrinking back restores the frame");
    }
}
