//! Packet builders and a small seeded generator shared by the tests.

use mediasec_srtp::{MasterKey, Policy, Session, Suite};

/// xorshift64*: deterministic test data; the seed is printed by tests that use random keys.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    /// A seed from the clock, or from `MEDIASEC_TEST_SEED` (hex, as printed) to replay a run.
    pub(crate) fn from_time() -> Self {
        let replay = std::env::var("MEDIASEC_TEST_SEED").ok();
        let seed = replay.and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
        });
        eprintln!("random seed {seed:#x}");
        Self::new(seed)
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// An RTP packet with `csrcs` CSRCs, an optional one-word header extension and a payload.
pub(crate) fn rtp(seq: u16, ssrc: u32, csrcs: u8, ext: bool, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x80 | (u8::from(ext) << 4) | csrcs, 0x00];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&u32::from(seq).wrapping_mul(160).to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    for i in 0..csrcs {
        p.extend_from_slice(&[i; 4]);
    }
    if ext {
        p.extend_from_slice(&[0xbe, 0xde, 0, 1, 0x10, 0xaa, 0, 0]);
    }
    p.extend_from_slice(payload);
    p
}

/// A receiver report (RFC 3550 §6.4.2) with one report block, as a compound RTCP packet.
pub(crate) fn rtcp(ssrc: u32, n: u32) -> Vec<u8> {
    let mut p = vec![0x81, 201, 0, 7];
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(&0x1234_5678u32.to_be_bytes());
    p.extend_from_slice(&n.to_be_bytes());
    p.extend_from_slice(&[0u8; 16]);
    p
}

pub(crate) fn session(suite: Suite, key: &[u8]) -> Session {
    Session::new(&Policy::new(suite, MasterKey::from_inline(suite, key).expect("key length"))).expect("policy")
}
