//! The SDP body of a SIP message (RFC 3261 §7.4, RFC 3264 offer/answer carried in SIP).
//!
//! [`sdp`] reads it; [`set_sdp`] replaces it and rewrites `Content-Length` (RFC 3261 §20.14)
//! in place, at the same position, so that an IMS-ALG or a UE editing the offer changes
//! exactly the body and that one header — nothing else of the message moves.

use bytes::Bytes;
use mediasec_sdp::Sdp;
use sipx_sip::{Header, HeaderName, Message};

use crate::Error;

/// The SDP body of `message`: `Ok(None)` when the message has no body, an error when the body
/// is not `application/sdp` (multipart bodies are not supported yet) or is not valid SDP text.
/// A body without `Content-Type` is taken as SDP, as RFC 3261 §20.15 says a body's type must
/// be given and IMS peers that omit it send SDP.
pub fn sdp(message: &Message) -> Result<Option<Sdp>, Error> {
    if message.body().is_empty() {
        return Ok(None);
    }
    check_content_type(message)?;
    Ok(Some(Sdp::parse_bytes(message.body())?))
}

/// Replaces the body of `message` with `sdp` and sets `Content-Length` to its length. The
/// header keeps its position (it is appended when the message had none); no other header is
/// touched. `Content-Type` must already say `application/sdp` when the message had a body;
/// a message without a body gets `Content-Type: application/sdp` appended.
pub fn set_sdp(message: &mut Message, sdp: &Sdp) -> Result<(), Error> {
    let body = Bytes::from(sdp.to_string());
    let headers = message.headers();
    if headers.count(&HeaderName::ContentLength) > 1 {
        return Err(Error::DuplicateContentLength);
    }
    let had_type = headers.count(&HeaderName::ContentType) > 0;
    if !message.body().is_empty() {
        // Never overwrite a body of another type.
        check_content_type(message)?;
    }
    let position = headers.iter().position(|h| h.name() == &HeaderName::ContentLength);
    let length = Header::build(HeaderName::ContentLength, body.len().to_string())?;
    let headers = message.headers_mut();
    match position {
        Some(i) => {
            headers.remove_first(&HeaderName::ContentLength);
            headers.insert(i, length);
        }
        None => headers.push(length),
    }
    if !had_type {
        headers.push(Header::build(HeaderName::ContentType, "application/sdp")?);
    }
    match message {
        Message::Request(r) => r.set_body(body),
        Message::Response(r) => r.set_body(body),
    }
    Ok(())
}

/// `Content-Type` is absent or `application/sdp` (parameters allowed, case-insensitive).
fn check_content_type(message: &Message) -> Result<(), Error> {
    let Some(value) = message.headers().value(&HeaderName::ContentType) else { return Ok(()) };
    let text = String::from_utf8_lossy(&value).into_owned();
    let media_type = text.split(';').next().unwrap_or_default().trim();
    if media_type.eq_ignore_ascii_case("application/sdp") { Ok(()) } else { Err(Error::NotSdp(text)) }
}
