//! Fuzz the MIKEY message decoder: no panic, and decode/encode must be exact.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    mediasec_mikey::fuzzing::decode_round_trip(data);
});
