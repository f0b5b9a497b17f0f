//! Base64 as SDP uses it (RFC 4648 §4 alphabet): padded and unpadded input accepted
//! (RFC 4568 §6.1 peers such as rtpengine omit `=`), padded output.

use crate::Error;
use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Decodes `text`; `base` is the offset of `text` in the parsed value, for errors.
pub(crate) fn decode(text: &str, base: usize) -> Result<Vec<u8>, Error> {
    LENIENT.decode(text).map_err(|e| {
        let rel = match e {
            base64::DecodeError::InvalidByte(o, _) => o,
            base64::DecodeError::InvalidLastSymbol { offset, .. } => offset,
            _ => text.len(),
        };
        Error::Base64 { offset: base + rel }
    })
}

/// Encodes with `=` padding.
pub(crate) fn encode(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
