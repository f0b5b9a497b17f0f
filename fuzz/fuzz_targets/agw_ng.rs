#![no_main]
//! An ng datagram into a fresh IMS-AGW controller: bencode, command decoding, SDP rewriting.
libfuzzer_sys::fuzz_target!(|data: &[u8]| mediasec_agw::fuzzing::ng(data));
