#![no_main]
//! `a=crypto` parser: parse, canonical re-format must parse to the same value.
libfuzzer_sys::fuzz_target!(|data: &[u8]| mediasec_sdp::fuzzing::crypto(data));
