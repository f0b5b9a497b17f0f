#![no_main]
//! RTP/RTCP header parsing on arbitrary bytes.
libfuzzer_sys::fuzz_target!(|data: &[u8]| mediasec_srtp::fuzzing::headers(data));
