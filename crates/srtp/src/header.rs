//! The fixed parts of RTP (RFC 3550 §5.1) and RTCP (RFC 3550 §6.4) headers that SRTP needs.

use crate::Error;

/// What SRTP needs from an RTP header: where the payload starts, the SSRC and the SEQ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpHeader {
    /// Sequence number.
    pub seq: u16,
    /// Synchronization source.
    pub ssrc: u32,
    /// Octets of fixed header, CSRC list and header extension (RFC 3550 §5.3.1).
    pub len: usize,
}

impl RtpHeader {
    /// Parses the header of an RTP (or SRTP) packet.
    ///
    /// ```text
    ///  0                   1                   2                   3
    ///  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    /// |V=2|P|X|  CC   |M|     PT      |       sequence number         |
    /// |                           timestamp                           |
    /// |           synchronization source (SSRC) identifier            |
    /// |            contributing source (CSRC) identifiers             | (CC of them)
    /// |      defined by profile       |           length              | (if X)
    /// |                        header extension                       | (length words)
    /// ```
    pub fn parse(packet: &[u8]) -> Result<Self, Error> {
        let fixed: &[u8; 12] = packet
            .first_chunk()
            .ok_or(Error::Malformed("RTP packet shorter than 12 octets"))?;
        let [b0, _, s0, s1, _, _, _, _, c0, c1, c2, c3] = *fixed;
        if b0 >> 6 != 2 {
            return Err(Error::Malformed("RTP version is not 2"));
        }
        let mut len = 12 + 4 * usize::from(b0 & 0x0f);
        if b0 & 0x10 != 0 {
            let Some(&[_, _, w0, w1]) = packet.get(len..len + 4) else {
                return Err(Error::Malformed("RTP header extension truncated"));
            };
            let words = usize::from(u16::from_be_bytes([w0, w1]));
            len += 4 + 4 * words;
        }
        if len > packet.len() {
            return Err(Error::Malformed("RTP header longer than the packet"));
        }
        Ok(Self { seq: u16::from_be_bytes([s0, s1]), ssrc: u32::from_be_bytes([c0, c1, c2, c3]), len })
    }
}

/// The SSRC of an RTCP compound packet's first report (RFC 3550 §6.4), after checking that
/// the first 8 octets that SRTCP leaves in clear are present and plausible.
pub fn rtcp_ssrc(packet: &[u8]) -> Result<u32, Error> {
    let fixed: &[u8; 8] = packet
        .first_chunk()
        .ok_or(Error::Malformed("RTCP packet shorter than 8 octets"))?;
    let [b0, _, _, _, s0, s1, s2, s3] = *fixed;
    if b0 >> 6 != 2 {
        return Err(Error::Malformed("RTCP version is not 2"));
    }
    Ok(u32::from_be_bytes([s0, s1, s2, s3]))
}

/// RFC 5761 §4: on a multiplexed port, octet 1 in 192..=223 marks RTCP (SR 200 .. APP 204
/// and the feedback types); RTP payload types never use that range with the marker bit.
pub fn is_rtcp(packet: &[u8]) -> bool {
    packet.get(1).is_some_and(|pt| (192..=223).contains(pt))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_csrcs_and_extension() {
        let mut p = vec![0x92, 0x00, 0x12, 0x34, 0, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef];
        p.extend_from_slice(&[1, 1, 1, 1, 2, 2, 2, 2]); // two CSRCs
        p.extend_from_slice(&[0xbe, 0xde, 0x00, 0x01, 9, 9, 9, 9]); // one-word extension
        p.extend_from_slice(b"payload");
        let h = RtpHeader::parse(&p).expect("valid");
        assert_eq!((h.seq, h.ssrc, h.len), (0x1234, 0xdeadbeef, 28));
        p.truncate(26);
        assert!(RtpHeader::parse(&p).is_err());
    }
}
