//! Fuzz the PostgreSQL connection-string handling of the stores (docs/kms-store.md § TLS): the
//! libpq TLS parameters split off, tokio-postgres's parser, and the password file read for the
//! result (`~/.pgpass` lines). No panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    mediasec_kms_store::fuzz_conninfo(data);
});
