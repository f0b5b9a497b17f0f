//! The mediasec KMS (3GPP TS 33.328 §4.2.4, §5.4.3, Annex A/B): MIKEY-TICKET (RFC 6043) over
//! Ua with GBA-derived keys, policies, group identities, a rotating ticket-key ring, and
//! inter-KMS resolve over Zk; plus the UE side.
//!
//! - [`identity`]: KMS UIDs and group identities (`?` wildcard).
//! - [`policy`]: per-user / per-domain rules and the narrowing of a requested ticket policy.
//! - [`keyring`]: ticket-protection keys by 4-octet key id, rotation, encryption at rest.
//! - [`tp_data`]: TP Data of tickets (identities, validity).
//! - [`zn`]: NAF keys from the BSF, cached until expiry.
//! - [`kms`]: the sans-IO core (Ticket Request, Ticket Resolve, inter-KMS resolve).
//! - [`ue`]: the UE side (request, mode-3 tickets, transfer, resolve, caches, SRTP out).
//! - [`users`]: users provisioned at the KMS.
//!
//! Services (tokio): [`server`] (Ua, admin API, `/metrics`), [`persist`] (users, policies,
//! encrypted key ring and audit log in a `mediasec_kms_store::Store`), [`bsf_zn`] (Zn over
//! HTTP), [`zk`] (Zk peers and server over mutually authenticated TLS), [`client`] (the UE's Ua driver), [`lab`] (a loopback BSF + KMS domains).

pub mod bsf_zn;
pub mod client;
pub mod error;
pub mod identity;
pub mod keyring;
pub mod lab;
pub mod kms;
pub mod persist;
pub mod policy;
pub mod tp_data;
pub mod server;
pub mod ue;
pub mod users;
pub mod zk;
pub mod zn;

pub use error::KmsError;
