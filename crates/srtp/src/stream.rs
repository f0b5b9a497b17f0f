//! Per-SSRC, per-direction state: ROC and highest SEQ (RFC 3711 §3.3.1), the SRTCP index
//! (§3.4), and the replay lists (§3.3.2).

use crate::replay::ReplayWindow;
use crate::Error;

/// A packet index estimate: the ROC guessed for the packet and the 48-bit index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Estimate {
    pub(crate) roc: u32,
    pub(crate) seq: u16,
    pub(crate) index: u64,
}

#[derive(Debug, Clone)]
pub(crate) struct Stream {
    roc: u32,
    /// Highest SEQ seen with the current ROC (`s_l`); `None` until the first packet.
    s_l: Option<u16>,
    pub(crate) rtp_window: ReplayWindow,
    /// Sender: the next SRTCP index to use.
    pub(crate) rtcp_next: u32,
    /// Receiver: the SRTCP replay list.
    pub(crate) rtcp_window: ReplayWindow,
}

impl Stream {
    pub(crate) fn new(window: usize, roc: u32) -> Self {
        Self { roc, s_l: None, rtp_window: ReplayWindow::new(window), rtcp_next: 0, rtcp_window: ReplayWindow::new(window) }
    }

    pub(crate) fn roc(&self) -> u32 {
        self.roc
    }

    /// Sets the ROC out of band (e.g. from a MIKEY CS ID map); the next packet's SEQ
    /// becomes `s_l`.
    pub(crate) fn set_roc(&mut self, roc: u32) {
        self.roc = roc;
        self.s_l = None;
    }

    /// RFC 3711 §3.3.1 / Appendix A: guess the ROC of a packet with sequence number `seq`.
    /// A guess below ROC 0 cannot be a packet of this stream and is refused as too old.
    pub(crate) fn estimate(&self, seq: u16) -> Result<Estimate, Error> {
        let roc = match self.s_l {
            None => self.roc,
            Some(s_l) if s_l < 32768 => {
                if i32::from(seq) - i32::from(s_l) > 32768 {
                    self.roc.checked_sub(1).ok_or(Error::TooOld)?
                } else {
                    self.roc
                }
            }
            Some(s_l) => {
                if i32::from(s_l) - 32768 > i32::from(seq) {
                    self.roc.wrapping_add(1)
                } else {
                    self.roc
                }
            }
        };
        Ok(Estimate { roc, seq, index: (u64::from(roc) << 16) | u64::from(seq) })
    }

    /// Updates ROC and `s_l` after the packet was authenticated (RFC 3711 §3.3.1).
    pub(crate) fn advance(&mut self, e: Estimate) {
        match self.s_l {
            None => {
                self.roc = e.roc;
                self.s_l = Some(e.seq);
            }
            Some(s_l) => {
                if e.roc == self.roc.wrapping_add(1) {
                    self.roc = e.roc;
                    self.s_l = Some(e.seq);
                } else if e.roc == self.roc && e.seq > s_l {
                    self.s_l = Some(e.seq);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(s: &mut Stream, seq: u16) -> Estimate {
        let e = s.estimate(seq).expect("estimable");
        s.advance(e);
        e
    }

    #[test]
    fn roc_follows_wrap_and_reordering() {
        let mut s = Stream::new(128, 0);
        feed(&mut s, 65534);
        feed(&mut s, 65535);
        assert_eq!(feed(&mut s, 1).roc, 1);
        // A late packet from before the wrap keeps ROC 0.
        assert_eq!(s.estimate(65533).expect("estimable").roc, 0);
        assert_eq!(s.roc(), 1);
    }

    #[test]
    fn out_of_band_roc() {
        let mut s = Stream::new(128, 0);
        s.set_roc(7);
        assert_eq!(feed(&mut s, 40000).index, (7 << 16) | 40000);
        assert_eq!(s.estimate(100).expect("estimable").roc, 8);
    }

    #[test]
    fn nothing_before_roc_zero() {
        let mut s = Stream::new(128, 0);
        feed(&mut s, 10);
        assert_eq!(s.estimate(60000), Err(Error::TooOld));
    }
}
