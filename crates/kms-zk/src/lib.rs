//! Zk, the interface between KMSs of different domains (TS 33.328 §4.2.4, Annex B.2.3; RFC 6043
//! §10): the resolving KMS (KMS_R) forwards a ticket resolve to the issuing KMS (KMS_I, named by
//! IDRkms in the ticket policy) and re-protects the answer for its own user.
//!
//! 3GPP asks for mutual authentication, integrity and confidentiality on Zk (NDS/IP: the keys
//! travel in clear inside the unprotected RESOLVE_RESP). Here that is TLS with client
//! certificates under one private CA; a KMS's certificate names `kms.<domain>`.
//!
//! - [`pki`]: a lab PKI (`mediasec kms pki`).
//! - [`ZkTls`]: a KMS's TLS identity (server and client configurations).
//! - [`serve`] + [`ZkHandler`]: the KMS_I side, with a per-domain allow-list.
//! - [`ZkClient`]: the KMS_R side, every resolve bounded in time, failures typed ([`ZkError`]).
//! - KMS certificates *(ours)*: `GET /keymanagement/certificate` on the same channel
//!   ([`ZkHandler::certificate`], [`ZkClient::certificate`]) for cross-community MIKEY-SAKKE
//!   (docs/zk.md "KMS certificates").
//!
//! The MIKEY processing itself (Annex B.2.3 steps) is the KMS's; this crate moves bytes.

mod client;
mod error;
pub mod pki;
mod server;
mod tls;

pub use client::{ZkClient, decode_answer, decode_certificate_answer};
pub use error::ZkError;
pub use server::{CERTIFICATE_CONTENT_TYPE, CERTIFICATE_PATH, MAX_BODY, MIKEY_CONTENT_TYPE, ZK_PATH, ZK_QUERY, ZkFuture, ZkHandler, serve};
pub use tls::ZkTls;
