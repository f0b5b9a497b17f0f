#![no_main]
//! SIP over a byte stream (RFC 3261 §18.3): the framer gives the same frames however the
//! stream is cut into reads, and never loses or invents bytes.
libfuzzer_sys::fuzz_target!(|data: &[u8]| mediasec_sip::fuzzing::stream(data));
