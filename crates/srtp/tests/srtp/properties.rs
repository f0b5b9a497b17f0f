//! Property tests: protect→unprotect is the identity; no byte string makes anything panic.

use mediasec_srtp::Suite;
use proptest::prelude::*;

use crate::util::{rtcp, rtp, session};

fn suite() -> impl Strategy<Value = Suite> {
    proptest::sample::select(Suite::ALL.to_vec())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn protect_then_unprotect_is_identity(
        suite in suite(),
        key in proptest::collection::vec(any::<u8>(), 46),
        seq in any::<u16>(),
        ssrc in any::<u32>(),
        csrcs in 0u8..16,
        ext in any::<bool>(),
        payload in proptest::collection::vec(any::<u8>(), 0..1500),
    ) {
        let key = &key[..suite.inline_key_len()];
        let (mut tx, mut rx) = (session(suite, key), session(suite, key));
        let plain = rtp(seq, ssrc, csrcs, ext, &payload);
        let mut p = plain.clone();
        tx.protect_rtp_vec(&mut p).expect("protect");
        rx.unprotect_rtp_vec(&mut p).expect("unprotect");
        prop_assert_eq!(p, plain);
        let plain = rtcp(ssrc, u32::from(seq));
        let mut c = plain.clone();
        tx.protect_rtcp_vec(&mut c).expect("protect");
        rx.unprotect_rtcp_vec(&mut c).expect("unprotect");
        prop_assert_eq!(c, plain);
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        suite in suite(),
        bytes in proptest::collection::vec(any::<u8>(), 0..200),
        len in 0usize..260,
    ) {
        let key = [3u8; 46];
        let mut s = session(suite, &key[..suite.inline_key_len()]);
        let _ = s.unprotect_rtp(&mut bytes.clone());
        let _ = s.unprotect_rtcp(&mut bytes.clone());
        let mut buf = bytes.clone();
        buf.resize(bytes.len() + 40, 0);
        let _ = s.protect_rtp(&mut buf, len);
        let _ = s.protect_rtcp(&mut buf, len);
        let _ = mediasec_srtp::RtpHeader::parse(&bytes);
    }
}

/// Replays the committed seed corpus of the `srtp_unprotect` fuzz target (CI runs no fuzzer).
#[test]
fn fuzz_corpus_replays_without_panic() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/corpus/srtp_unprotect");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).expect("corpus directory") {
        let data = std::fs::read(entry.expect("entry").path()).expect("seed");
        mediasec_srtp::fuzzing::unprotect(&data);
        // The same seeds (less their selector byte) feed the `rtp_header` target.
        mediasec_srtp::fuzzing::headers(data.get(1..).unwrap_or_default());
        n += 1;
    }
    assert!(n >= 5, "corpus has {n} seeds");
}
