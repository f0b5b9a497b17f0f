//! Entry points for the cargo-fuzz targets in `fuzz/` (and for the corpus replay test):
//! arbitrary bytes through every parser and transform, which must never panic.

use crate::{MasterKey, Policy, RtpHeader, Session, Suite};

/// The first byte picks the suite and an MKI length; the rest is a packet that is parsed,
/// unprotected as SRTP and SRTCP, and protected as RTP and RTCP.
pub fn unprotect(data: &[u8]) {
    let Some((&selector, packet)) = data.split_first() else { return };
    let Some(&suite) = Suite::ALL.get(usize::from(selector) % Suite::ALL.len()) else { return };
    let (Some(inline), Some(mki)) = ([0x5a; 46].get(..suite.inline_key_len()), [1, 2, 3, 4].get(..usize::from(selector >> 6)))
    else {
        return;
    };
    let Ok(key) = MasterKey::from_inline(suite, inline).map(|k| k.with_mki(mki)) else { return };
    let Ok(mut session) = Session::new(&Policy::new(suite, key)) else { return };
    let _ = RtpHeader::parse(packet);
    let _ = crate::rtcp_ssrc(packet);
    let _ = session.unprotect_rtp(&mut packet.to_vec());
    let _ = session.unprotect_rtcp(&mut packet.to_vec());
    let mut buf = packet.to_vec();
    buf.resize(packet.len() + session.rtcp_overhead().max(session.rtp_overhead()), 0);
    let _ = session.protect_rtp(&mut buf.clone(), packet.len());
    let _ = session.protect_rtcp(&mut buf, packet.len());
}

/// RTP and RTCP header parsing alone (RFC 3550 §5.1, §6.4; RFC 5761 demultiplexing).
pub fn headers(data: &[u8]) {
    if let Ok(h) = RtpHeader::parse(data) {
        assert!(h.len <= data.len(), "header length within the packet");
    }
    let _ = crate::rtcp_ssrc(data);
    let _ = crate::is_rtcp(data);
}
