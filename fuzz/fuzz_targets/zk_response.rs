//! Fuzz the Zk client's response decoding (HTTP status line, headers, base64 MIKEY body).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = mediasec_kms_zk::decode_answer(data);
});
