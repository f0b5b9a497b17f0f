#![no_main]
//! SIP messages (NUL-separated) into a P-CSCF with the IMS-ALG on and into an S-CSCF, with a
//! fake clock and a stand-in AGW: routing, registration, forking, e2ae SDP rewriting.
libfuzzer_sys::fuzz_target!(|data: &[u8]| mediasec_cscf::fuzzing::proxy(data));
