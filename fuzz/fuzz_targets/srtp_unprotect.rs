#![no_main]
//! SRTP/SRTCP parsing, unprotect and protect on arbitrary bytes.
libfuzzer_sys::fuzz_target!(|data: &[u8]| mediasec_srtp::fuzzing::unprotect(data));
