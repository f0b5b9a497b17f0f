//! The mediasec GBA BSF (TS 33.220, TS 24.109) as a service, and the UE's HTTP driver.
//!
//! - [`store`]: subscribers (IMPI, K, OPc/OP, AMF, SQN, IMPUs, GUSS) and bootstrap sessions
//!   in an embedded redb file or in PostgreSQL shared by replicas; K, OPc/OP and Ks sealed
//!   under the BSF master key; SQNs are allocated atomically across replicas and committed
//!   before use.
//! - [`rekey`]: master-key rotation of the store's sealed rows (`mediasec bsf rekey`: offline, or online on PostgreSQL).
//! - [`server`]: Ub, Zn (`POST /zn/v1/naf-keys`), admin API and `/metrics` (axum).
//! - [`client`]: UE bootstrapping over HTTP(S) and a Zn client for NAFs (e.g. the KMS), and
//!   the HTTP/1.1 client of every mediasec component, with connection reuse (`http.rs`).
//! - [`tls`]: HTTPS server listener and client connector (rustls).
//! - [`graceful`]: a server task stopped gracefully within a bound (the BSF's, the KMS's and
//!   the voicemail API's).
//!
//! The protocol logic lives in the sans-IO crate `mediasec-gba`.

pub mod client;
mod error;
pub mod graceful;
mod http;
pub mod rekey;
pub mod server;
pub mod store;
pub mod tls;

pub use error::BsfError;
