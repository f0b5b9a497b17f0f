//! MIKEY error messages (RFC 3830 §5.1.2, RFC 6043 §5.4): `HDR, T, {ERR}, [V]`.
//!
//! The header is copied from the failed message with data type Error and V = 0; T is fresh.
//! The V payload's MAC covers the error message itself up to the MAC field (RFC 6043
//! Table 5.2 "Error message"), keyed with the auth_key the answer to the failed message
//! would use (MIKEY-TICKET: the response-direction key of the failed exchange,
//! [`crate::ticket::message_keys`] with [`crate::keys::Direction::Response`]; RFC 3830 PSK:
//! the auth_key of the I_MESSAGE).
//!
//! Protection rule ([`reply`], docs/ticket-profile.md decision 13): an error is sent
//! **unprotected** only when the sender cannot authenticate it — the failed message's MAC was
//! not verified (it failed, the message did not decode, the key is unknown) or the error is
//! an authentication failure (RFC 3830 §5.1.2 and RFC 6043 §5.4 let such errors go
//! unprotected, with the DoS caveats of RFC 3830 §9). Every other error is MACed. A receiver
//! learns which one it got from [`ErrorReport`].

use crate::error::{Error, Result};
use crate::header::CommonHeader;
use crate::kemac_crypto;
use crate::message::Message;
use crate::payload::{ErrPayload, Payload, Timestamp, Verification};
use crate::registry::{DataType, ErrorCode, MacAlg};

/// The key protecting an error message: MAC algorithm and auth_key.
#[derive(Debug, Clone, Copy)]
pub struct ErrorKey<'a> {
    /// MAC algorithm of the V payload (that of the failed message).
    pub mac: MacAlg,
    /// auth_key.
    pub auth_key: &'a [u8],
}

/// Builds `HDR, T, ERR..., [V]` answering a message with header `failed`; with `key` the
/// message ends with a V payload over the whole message up to the MAC field.
pub fn build(failed: &CommonHeader, timestamp: Timestamp, codes: &[ErrorCode], key: Option<ErrorKey<'_>>) -> Result<Vec<u8>> {
    if failed.data_type == DataType::ERROR {
        return Err(Error::encode("Error message", "an error message is never answered with an error message"));
    }
    if codes.is_empty() {
        return Err(Error::encode("Error message", "at least one ERR payload"));
    }
    let mut payloads = vec![Payload::T(timestamp)];
    payloads.extend(codes.iter().map(|&code| Payload::Err(ErrPayload { code, reserved: 0 })));
    let Some(k) = key else {
        return Message { header: CommonHeader { data_type: DataType::ERROR, v_flag: false, ..failed.clone() }, payloads }.encode();
    };
    let n = k.mac.mac_len().ok_or(Error::Unsupported { what: "MAC algorithm", value: u16::from(k.mac.0) })?;
    payloads.push(Payload::V(Verification { auth_alg: k.mac, mac: vec![0; n] }));
    let mut bytes = Message { header: CommonHeader { data_type: DataType::ERROR, v_flag: false, ..failed.clone() }, payloads }.encode()?;
    let covered = bytes.len().saturating_sub(n);
    let tag = kemac_crypto::mac(k.mac, k.auth_key, &[bytes.get(..covered).unwrap_or_default()])?;
    bytes.truncate(covered);
    bytes.extend_from_slice(&tag);
    Ok(bytes)
}

/// Answers `err` (raised while processing a message with header `failed`) following the
/// protection rule of this module: `verified_key` is the auth_key for the answer, given
/// only once the failed message's MAC verified; ERR 0 (Auth failure) is never MACed.
pub fn reply(failed: &CommonHeader, timestamp: Timestamp, err: &Error, verified_key: Option<ErrorKey<'_>>) -> Result<Vec<u8>> {
    let code = err.err_code();
    let key = if code == ErrorCode::AUTH_FAILURE { None } else { verified_key };
    build(failed, timestamp, &[code], key)
}

/// A received error message, with whether its origin was authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorReport {
    /// The V payload verified with the expected key: the peer really reported these errors.
    Authenticated {
        /// Header of the error message.
        header: CommonHeader,
        /// ERR codes in wire order.
        codes: Vec<ErrorCode>,
    },
    /// No V payload, or no key to check it: anyone on the path could have sent it. Treat as
    /// a hint only (RFC 3830 §9: do not tear down state on an unauthenticated error).
    Unauthenticated {
        /// Header of the error message.
        header: CommonHeader,
        /// ERR codes in wire order.
        codes: Vec<ErrorCode>,
    },
}

impl ErrorReport {
    /// The ERR codes, whatever the authentication.
    pub fn codes(&self) -> &[ErrorCode] {
        match self {
            Self::Authenticated { codes, .. } | Self::Unauthenticated { codes, .. } => codes,
        }
    }

    /// Whether the error message was authenticated.
    pub fn is_authenticated(&self) -> bool {
        matches!(self, Self::Authenticated { .. })
    }
}

/// Decodes and checks an error message. With `key`, a V payload must verify (constant
/// time; a wrong MAC or an algorithm other than `key.mac` is an error, never a report),
/// giving [`ErrorReport::Authenticated`]; a message without V, or any message when `key` is
/// `None`, gives [`ErrorReport::Unauthenticated`].
pub fn verify(bytes: &[u8], key: Option<ErrorKey<'_>>) -> Result<ErrorReport> {
    report(&Message::decode(bytes)?, bytes, key)
}

/// [`verify`] of `m`, the message `bytes` decode to (a caller that reads more of the message
/// decodes it once).
pub(crate) fn report(m: &Message, bytes: &[u8], key: Option<ErrorKey<'_>>) -> Result<ErrorReport> {
    if m.header.data_type != DataType::ERROR {
        return Err(Error::rejected(ErrorCode::INVALID_DT, format!("{:?} is not an error message", m.header.data_type)));
    }
    let codes: Vec<ErrorCode> = m.payloads.iter().filter_map(|p| if let Payload::Err(e) = p { Some(e.code) } else { None }).collect();
    if codes.is_empty() {
        return Err(Error::rejected(ErrorCode::UNSPECIFIED, "error message without ERR payload"));
    }
    let header = m.header.clone();
    match (m.payloads.last(), key) {
        (Some(Payload::V(v)), Some(k)) => {
            if v.auth_alg != k.mac {
                return Err(Error::rejected(ErrorCode::INVALID_MAC, format!("error message MAC {:?}, expected {:?}", v.auth_alg, k.mac)));
            }
            let covered = bytes.len().saturating_sub(v.mac.len());
            kemac_crypto::verify_mac(k.mac, k.auth_key, &[bytes.get(..covered).unwrap_or_default()], &v.mac)?;
            Ok(ErrorReport::Authenticated { header, codes })
        }
        _ => Ok(ErrorReport::Unauthenticated { header, codes }),
    }
}
