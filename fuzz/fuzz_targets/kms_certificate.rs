//! Fuzz the KMS certificate decoders (docs/high-security.md §10.9): the Zk certificate
//! answer (HTTP) and the certificate JSON, with an encode → decode round trip.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    mediasec_kms::fuzzing::kms_certificate(data);
});
