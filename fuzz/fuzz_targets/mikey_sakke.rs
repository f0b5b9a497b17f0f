//! Fuzz the MIKEY-SAKKE responder (RFC 6509 I_MESSAGE, fixed keys): decoding, identity and
//! ECCSI signature checks, SAKKE decapsulation with its R re-check, key derivation. No panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    mediasec_mikey::fuzzing::mikey_sakke(data);
});
