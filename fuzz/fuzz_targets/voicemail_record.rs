//! Fuzz the voicemail server's stored-record decoder and the retrieval API's JSON documents
//! (docs/voicemail.md): no panic, and what decodes re-encodes to the same record.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    mediasec_voicemail::fuzz_inputs(data);
});
