//! Fuzz the KMS inputs (TP Data, identities/groups, policy TOML, key-ring rows, Ua/Zk entry
//! points of the core): no panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    mediasec_kms::fuzzing::kms_inputs(data);
});
