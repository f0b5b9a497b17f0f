#![no_main]
//! Whole SDP body: lossless round trip plus every attribute parser on its lines.
libfuzzer_sys::fuzz_target!(|data: &[u8]| mediasec_sdp::fuzzing::body(data));
