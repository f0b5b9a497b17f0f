//! The replay list of RFC 3711 §3.3.2: a sliding window over packet indices.
//!
//! The window is a ring of bits, one per index, covering `[top - size + 1, top]`. Checking
//! is separate from accepting, because the list may be updated only after the packet has
//! been authenticated.

use crate::Error;

/// Default window size (libsrtp's default for SRTP).
pub const DEFAULT_REPLAY_WINDOW: usize = 128;
/// Smallest window RFC 3711 §3.3.2 allows.
pub const MIN_REPLAY_WINDOW: usize = 64;
/// Largest window this crate accepts.
pub const MAX_REPLAY_WINDOW: usize = 32768;

#[derive(Debug, Clone)]
pub(crate) struct ReplayWindow {
    bits: Box<[u64]>,
    size: u64,
    /// Highest index accepted so far; `None` before the first packet.
    top: Option<u64>,
}

impl ReplayWindow {
    /// `size` must lie in `MIN_REPLAY_WINDOW..=MAX_REPLAY_WINDOW` (checked by the policy).
    pub(crate) fn new(size: usize) -> Self {
        Self { bits: vec![0; size.div_ceil(64)].into_boxed_slice(), size: size as u64, top: None }
    }

    fn ring_bits(&self) -> u64 {
        self.bits.len() as u64 * 64
    }

    fn slot(&self, index: u64) -> (usize, u64) {
        let pos = index % self.ring_bits();
        ((pos / 64) as usize, 1u64 << (pos % 64))
    }

    fn is_set(&self, index: u64) -> bool {
        let (word, mask) = self.slot(index);
        self.bits.get(word).is_some_and(|w| w & mask != 0)
    }

    fn set(&mut self, index: u64, on: bool) {
        let (word, mask) = self.slot(index);
        if let Some(w) = self.bits.get_mut(word) {
            if on { *w |= mask } else { *w &= !mask }
        }
    }

    /// Whether `index` may still be accepted.
    pub(crate) fn check(&self, index: u64) -> Result<(), Error> {
        let Some(top) = self.top else { return Ok(()) };
        if index > top {
            Ok(())
        } else if top - index >= self.size {
            Err(Error::TooOld)
        } else if self.is_set(index) {
            Err(Error::Replay)
        } else {
            Ok(())
        }
    }

    /// Records `index` as received (call only after [`Self::check`] and authentication).
    pub(crate) fn accept(&mut self, index: u64) {
        match self.top {
            Some(top) if index <= top => {}
            Some(top) if index - top < self.ring_bits() => {
                for i in top + 1..index {
                    self.set(i, false);
                }
                self.top = Some(index);
            }
            _ => {
                self.bits.fill(0);
                self.top = Some(index);
            }
        }
        self.set(index, true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_duplicates_and_old_indices() {
        let mut w = ReplayWindow::new(128);
        for i in [1000u64, 1002, 1001] {
            w.check(i).expect("fresh");
            w.accept(i);
        }
        assert_eq!(w.check(1001), Err(Error::Replay));
        assert_eq!(w.check(1002 - 128), Err(Error::TooOld));
        w.check(1002 - 127).expect("inside the window, never seen");
        w.check(5000).expect("ahead of the window");
    }

    #[test]
    fn jump_clears_stale_bits() {
        let mut w = ReplayWindow::new(64);
        w.accept(10);
        w.accept(10 + 64); // same ring slot as 10
        w.check(10 + 64 - 1).expect("never seen");
        assert_eq!(w.check(10), Err(Error::TooOld));
        w.accept(10_000);
        w.check(10_000 - 63).expect("cleared by the jump");
        assert_eq!(w.check(10_000), Err(Error::Replay));
    }

    #[test]
    fn large_window() {
        let mut w = ReplayWindow::new(1024);
        w.accept(5000);
        w.check(5000 - 1023).expect("inside a 1024 window");
        assert_eq!(w.check(5000 - 1024), Err(Error::TooOld));
    }
}
