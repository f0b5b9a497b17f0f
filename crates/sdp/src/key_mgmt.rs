//! The `a=key-mgmt` attribute (RFC 4567 §3.1), session or media level:
//!
//! ```text
//! key-mgmt-attribute = "key-mgmt:" [SP] prtcl-id SP keymgmt-data
//! prtcl-id = 1*(ALPHA / DIGIT)      ; "mikey" (RFC 4567 §7.1), case-sensitive
//! keymgmt-data = base64             ; for MIKEY, the MIKEY message (RFC 4567 §3.1)
//! ```
//! A media-level attribute overrides the session-level ones for that media (§3.1).

use crate::body::{Level, Sdp};
use crate::{Error, b64};
use std::fmt;

/// One `a=key-mgmt` attribute with its data decoded from base64.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyMgmt {
    /// Key management protocol identifier (`mikey`).
    pub protocol: String,
    /// The decoded key management data (for MIKEY, the message bytes).
    pub data: Vec<u8>,
}

impl KeyMgmt {
    /// The attribute name.
    pub const NAME: &'static str = "key-mgmt";
    /// The MIKEY protocol identifier (RFC 4567 §7.1).
    pub const MIKEY: &'static str = "mikey";

    /// Parses an attribute value (after `a=key-mgmt:`); offsets count from its start.
    pub fn parse(value: &str) -> Result<Self, Error> {
        let start = usize::from(value.starts_with(' '));
        let rest = value.get(start..).unwrap_or_default();
        let (protocol, data) =
            rest.split_once(' ').ok_or(Error::Syntax { offset: value.len(), what: "SP keymgmt-data" })?;
        if protocol.is_empty() || !protocol.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(Error::Syntax { offset: start, what: "prtcl-id (ALPHA / DIGIT)" });
        }
        let data_off = start + protocol.len() + 1;
        if data.is_empty() {
            return Err(Error::Syntax { offset: data_off, what: "keymgmt-data" });
        }
        Ok(Self { protocol: protocol.to_owned(), data: b64::decode(data, data_off)? })
    }

    /// `key-mgmt:<value>`, ready for [`Sdp::insert_attribute`].
    pub fn to_attribute(&self) -> String {
        format!("{}:{self}", Self::NAME)
    }

    /// The attributes that apply to media section `media` (RFC 4567 §3.1): its own
    /// `a=key-mgmt` lines if it has any, else the session-level ones. Each entry keeps the
    /// level it came from; unparsable attributes are returned as errors, in order.
    pub fn effective(sdp: &Sdp, media: usize) -> Result<(Level, Vec<Result<Self, Error>>), Error> {
        let own = sdp.attribute_values(Level::Media(media), Self::NAME)?;
        let (level, values) = if own.is_empty() {
            (Level::Session, sdp.attribute_values(Level::Session, Self::NAME)?)
        } else {
            (Level::Media(media), own)
        };
        Ok((level, values.into_iter().map(Self::parse).collect()))
    }
}

impl fmt::Display for KeyMgmt {
    /// The canonical value: `<prtcl-id> <padded base64>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.protocol, b64::encode(&self.data))
    }
}
