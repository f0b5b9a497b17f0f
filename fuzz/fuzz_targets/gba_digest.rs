//! Fuzz every Ub header/body parser (Digest AKA headers, nonce, XML, B-TID).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    mediasec_gba::digest::fuzz_parse(data);
});
