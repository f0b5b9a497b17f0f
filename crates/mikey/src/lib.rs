//! MIKEY (RFC 3830) and MIKEY-TICKET (RFC 6043) for mediasec.
//!
//! - [`codec`-level types](payload): every payload of RFC 3830, RFC 6043 and the RFC 6509
//!   SAKKE payload, with exact re-encoding ([`Message::decode`] / [`Message::encode`]).
//! - [`registry`]: IANA registries as newtypes that keep unknown values.
//! - [`prf`] and [`keys`]: the MIKEY PRF (RFC 3830 §4.1.2, RFC 6043 §6.1) and the key
//!   derivations of RFC 3830 §4.1.3–4.1.4 and RFC 6043 §5.1.
//! - [`kemac_crypto`]: KEMAC encryption and MAC (RFC 3830 §4.2.3–4.2.4, §5.2).
//! - [`srtp_policy`]: the SRTP policy a crypto session + SP payload map to.
//! - [`psk`], [`ticket`], [`forking`], [`pk`], [`error_message`]: sans-IO message builders and verifiers.
//! - The high-security mode (docs/high-security.md): [`eccsi`] (RFC 6507 signatures with
//!   identity-based keys), [`dh_group`] (OAKLEY 5, RFC 3526 §2) and [`signed_dh`] (the RFC 3830
//!   DH method with ECCSI SIGN payloads: no passive escrow, PFS, mutual authentication).
//! - The identity-based mode of 3GPP mission-critical services (docs/high-security.md,
//!   "MIKEY-SAKKE"): [`sakke`] (RFC 6508 key encapsulation, parameter set 1) and
//!   [`mikey_sakke`] (the RFC 6509 I_MESSAGE: key escrow by design, no PFS, initiator-only
//!   authentication, lawful interception without a man in the middle).
//!
//! Everything is sans-IO: no clock, no randomness, no sockets.

mod codec;
pub mod dh_group;
pub mod eccsi;
mod error;
pub mod error_message;
pub mod forking;
pub mod header;
pub mod kemac_crypto;
pub mod keys;
mod message;
pub mod mikey_sakke;
pub mod payload;
pub mod pk;
pub mod prf;
pub mod psk;
pub mod registry;
pub mod sakke;
pub mod signed_dh;
pub mod srtp_policy;
pub mod ticket;

pub use error::{Error, Result};
pub use header::{CommonHeader, CsIdMap, GenericCs, SrtpCs};
pub use message::{Decoded, Encoded, Message};
pub use payload::Payload;

/// Entry points shared by the fuzz targets and the corpus-replay test.
#[doc(hidden)]
pub mod fuzzing {
    /// Decodes arbitrary bytes; a message that decodes must re-encode to the same bytes.
    /// Returns whether the input decoded.
    pub fn decode_round_trip(data: &[u8]) -> bool {
        match crate::Message::decode(data) {
            Ok(m) => {
                let again = m.encode();
                assert_eq!(again.as_deref(), Ok(data), "decode/encode is not exact");
                true
            }
            Err(_) => false,
        }
    }

    /// Feeds arbitrary bytes to the high-security mode with fixed keys: as a DH_INIT to the
    /// responder ([`crate::signed_dh::answer`], building its error message, signed or not, on
    /// refusal) and as a DH_RESP and an error message to a pending initiator
    /// ([`crate::signed_dh::Pending::finish`], [`crate::signed_dh::Pending::refusal`]).
    /// Returns whether each side accepted the input.
    pub fn signed_dh(data: &[u8]) -> (bool, bool) {
        crate::signed_dh::fuzz::run(data)
    }

    /// The valid DH_INIT and DH_RESP of the fixed keys behind [`signed_dh`] (seed corpus).
    pub fn signed_dh_seeds() -> Option<(Vec<u8>, Vec<u8>)> {
        crate::signed_dh::fuzz::seeds()
    }

    /// Feeds arbitrary bytes to the MIKEY-SAKKE responder ([`crate::mikey_sakke::receive`])
    /// with fixed keys; returns whether the input was accepted.
    pub fn mikey_sakke(data: &[u8]) -> bool {
        crate::mikey_sakke::fuzz::run(data)
    }

    /// The valid I_MESSAGE of the fixed keys behind [`mikey_sakke`] (seed corpus).
    pub fn mikey_sakke_seed() -> Option<Vec<u8>> {
        crate::mikey_sakke::fuzz::seed()
    }
}
