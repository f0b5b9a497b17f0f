//! Fuzz the high-security mode's verification paths (ECCSI-signed MIKEY-DH, fixed keys): the
//! responder's DH_INIT checks and error reply, and the initiator's DH_RESP checks. No panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    mediasec_mikey::fuzzing::signed_dh(data);
});
