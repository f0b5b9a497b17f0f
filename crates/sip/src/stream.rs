//! Framing SIP messages out of a byte stream (RFC 3261 §18.3), sans-IO: bytes in, complete
//! messages out.
//!
//! On a stream the only thing that says where a message ends is its `Content-Length`, which
//! is therefore mandatory there (RFC 3261 §18.3, §20.14). CRLFs between messages are ignored
//! (§7.5) except as RFC 5626 §3.5.1 keep-alives: a double CRLF is a ping the receiver answers
//! with a single CRLF, the pong. The framer bounds the header section and the body *before*
//! buffering them ([`FrameLimits`]), so a peer cannot make it hold more than one bounded
//! message.
//!
//! Each complete message is parsed by [`sipx_sip::parse_frame`], which also checks that the
//! bytes the framer cut hold exactly one message — so this module's reading of
//! `Content-Length` and the parser's can never silently disagree.
//!
//! Errors name the stream offset of the message that failed. Framing is lost after one: the
//! connection must be closed (a body must never be read as a request, RFC 4475 §3.1.2.3).
//! The framer does not consume a message it could not frame, so asking again gives the same
//! error.

use bytes::{Buf, Bytes, BytesMut};
use sipx_sip::{parse_datagram, parse_frame, HeaderName, Limits, Message, Request};

use crate::Error;

/// Bounds on one message of a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameLimits {
    /// Largest header section (start line and header fields, without the blank line).
    pub head_bytes: usize,
    /// Largest body a `Content-Length` may declare.
    pub body_bytes: usize,
}

impl Default for FrameLimits {
    /// 16 KiB of headers and 64 KiB of body: an IMS INVITE with a MIKEY-TICKET offer is under
    /// 2 KiB; a UDP datagram could not carry more than 64 KiB either.
    fn default() -> Self {
        Self { head_bytes: 16 * 1024, body_bytes: 64 * 1024 }
    }
}

/// What a stream yields.
#[derive(Debug)]
pub enum Frame {
    /// A complete message.
    Message(Box<Message>),
    /// An RFC 5626 §3.5.1 keep-alive ping (CRLF CRLF): answer with [`PONG`].
    Ping,
    /// An RFC 5626 §3.5.1 pong (a single CRLF between messages).
    Pong,
}

/// The answer to a [`Frame::Ping`] (RFC 5626 §3.5.1).
pub const PONG: &[u8] = b"\r\n";

/// A keep-alive ping (RFC 5626 §3.5.1: a double CRLF between messages).
pub const PING: &[u8] = b"\r\n\r\n";

/// Cuts a byte stream into SIP messages.
#[derive(Debug)]
pub struct Framer {
    /// Received bytes not yet returned as frames.
    buf: BytesMut,
    /// Stream offset of the first byte of `buf`.
    offset: u64,
    limits: FrameLimits,
    /// How far the header terminator search has looked into `buf`.
    scanned: usize,
    /// Length of the message at the start of `buf`, once its header section is known.
    framed: Option<usize>,
}

impl Framer {
    /// A framer with the given limits.
    pub fn new(limits: FrameLimits) -> Self {
        Self { buf: BytesMut::new(), offset: 0, limits, scanned: 0, framed: None }
    }

    /// Appends received bytes; [`Framer::next_frame`] returns what they complete.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received but not yet part of a returned frame.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed.
    ///
    /// # Errors
    /// [`Error::HeadTooLarge`], [`Error::BodyTooLarge`], [`Error::ContentLengthRequired`] or
    /// [`Error::Framing`], each with the stream offset of the message: the stream cannot be
    /// framed any further and the connection must be closed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, Error> {
        if self.framed.is_none() {
            if let Some(keepalive) = self.keepalive() {
                return Ok(Some(keepalive));
            }
            if self.buf.starts_with(b"\r") && self.buf.len() < 4 {
                // A CR, CRLF or CRLF CR: which keep-alive it is depends on what follows.
                return Ok(None);
            }
            let Some(head_end) = self.header_terminator()? else { return Ok(None) };
            self.framed = Some(self.frame_length(head_end)?);
        }
        let Some(length) = self.framed.filter(|&n| n <= self.buf.len()) else { return Ok(None) };
        let bytes = Bytes::copy_from_slice(self.buf.get(..length).unwrap_or_default());
        let limits = Limits {
            max_message_bytes: length,
            max_body_bytes: self.limits.body_bytes,
            max_header_bytes: self.limits.head_bytes,
            ..Limits::datagram()
        };
        let message = parse_frame(bytes, &limits).map_err(|source| Error::Framing { offset: self.offset, source })?;
        self.consume(length);
        Ok(Some(Frame::Message(Box::new(message))))
    }

    /// A ping or pong at the start of the buffer, consumed.
    fn keepalive(&mut self) -> Option<Frame> {
        let frame = if self.buf.starts_with(b"\r\n\r\n") {
            (4, Frame::Ping)
        } else if self.buf.starts_with(b"\r\n") && (self.buf.len() >= 4 || self.buf.get(2).is_some_and(|&b| b != b'\r')) {
            (2, Frame::Pong)
        } else {
            return None;
        };
        self.consume(frame.0);
        Some(frame.1)
    }

    /// Where the header section ends (the index of its CRLF CRLF), if it has arrived.
    fn header_terminator(&mut self) -> Result<Option<usize>, Error> {
        let window = self.buf.get(..self.buf.len().min(self.limits.head_bytes + 4)).unwrap_or_default();
        let found = window.get(self.scanned..).and_then(|tail| tail.windows(4).position(|w| w == b"\r\n\r\n"));
        match found {
            Some(i) => Ok(Some(self.scanned + i)),
            None if window.len() >= self.limits.head_bytes + 4 => {
                Err(Error::HeadTooLarge { offset: self.offset, limit: self.limits.head_bytes })
            }
            None => {
                // A terminator straddling two reads is still found next time.
                self.scanned = window.len().saturating_sub(3);
                Ok(None)
            }
        }
    }

    /// The whole length of the message whose header section ends at `head_end`.
    fn frame_length(&self, head_end: usize) -> Result<usize, Error> {
        let head = self.buf.get(..head_end).unwrap_or_default();
        let offset = self.offset;
        let declared = match content_length(head) {
            Some(Ok(n)) => n,
            // Not a lone decimal length: the parser names what is wrong with it.
            Some(Err(())) => return Err(self.head_error()),
            None => return Err(Error::ContentLengthRequired { offset, request: self.head_request().map(Box::new) }),
        };
        if declared > self.limits.body_bytes as u64 {
            return Err(Error::BodyTooLarge { offset, declared, limit: self.limits.body_bytes });
        }
        let declared = usize::try_from(declared).unwrap_or(usize::MAX);
        Ok(head_end.saturating_add(4).saturating_add(declared))
    }

    /// The header section alone, as the datagram parser reads it.
    fn parse_head(&self) -> Result<Message, sipx_sip::error::ParseError> {
        let end = self.buf.windows(4).position(|w| w == b"\r\n\r\n").map_or(self.buf.len(), |i| i + 4);
        let head = Bytes::copy_from_slice(self.buf.get(..end).unwrap_or_default());
        parse_datagram(head, &Limits::datagram())
    }

    /// The request whose header section lacks `Content-Length`, if it parses: enough to
    /// answer it 400 before closing.
    fn head_request(&self) -> Option<Request> {
        match self.parse_head() {
            Ok(Message::Request(r)) => Some(r),
            _ => None,
        }
    }

    /// The parser's reason for refusing this header section.
    fn head_error(&self) -> Error {
        let source = match self.parse_head() {
            Err(e) => e,
            Ok(_) => sipx_sip::error::ParseError::Framing(sipx_sip::error::FramingError::ContentLengthMalformed),
        };
        Error::Framing { offset: self.offset, source }
    }

    fn consume(&mut self, n: usize) {
        self.buf.advance(n);
        self.offset = self.offset.saturating_add(n as u64);
        self.scanned = 0;
        self.framed = None;
    }
}

/// The `Content-Length` of a header section (RFC 3261 §20.14, compact form `l`): `None` if
/// absent, `Err` if repeated or not a decimal number.
fn content_length(head: &[u8]) -> Option<Result<u64, ()>> {
    let mut found = None;
    for field in fields(head) {
        let Some(colon) = field.iter().position(|&b| b == b':') else { continue };
        let name = field.get(..colon).unwrap_or_default().trim_ascii();
        if HeaderName::parse(&Bytes::copy_from_slice(name)) != HeaderName::ContentLength {
            continue;
        }
        if found.is_some() {
            return Some(Err(()));
        }
        let value: Vec<u8> = field.get(colon + 1..).unwrap_or_default().iter().copied().filter(|b| !b" \t\r\n".contains(b)).collect();
        let parsed = (!value.is_empty() && value.iter().all(u8::is_ascii_digit))
            .then(|| value.iter().try_fold(0u64, |n, &d| n.checked_mul(10)?.checked_add(u64::from(d - b'0'))))
            .flatten();
        found = Some(parsed.ok_or(()));
    }
    found
}

/// The header fields of a header section, each with its continuation lines (RFC 3261 §7.3.1).
fn fields(head: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut starts = Vec::new();
    let mut i = 0;
    while let Some(at) = head.get(i..).and_then(|t| t.windows(2).position(|w| w == b"\r\n")) {
        let next = i + at + 2;
        if !matches!(head.get(next), Some(b' ' | b'\t')) {
            starts.push(next);
        }
        i = next;
    }
    let ends: Vec<usize> = starts.iter().skip(1).map(|&s| s - 2).chain(std::iter::once(head.len())).collect();
    starts.into_iter().zip(ends).filter_map(move |(s, e)| head.get(s..e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const OPTIONS: &str = "OPTIONS sip:b@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:5070;branch=z9hG4bKs1\r\n\
From: <sip:a@a.example>;tag=1\r\nTo: <sip:b@b.example>\r\nCall-ID: s1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";
    const MESSAGE: &str = "MESSAGE sip:b@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:5070;branch=z9hG4bKs2\r\n\
From: <sip:a@a.example>;tag=1\r\nTo: <sip:b@b.example>\r\nCall-ID: s2\r\nCSeq: 2 MESSAGE\r\nl:\r\n 11\r\n\r\nhello\r\n\r\nyo";

    fn frames(framer: &mut Framer) -> Result<Vec<String>, Error> {
        let mut out = Vec::new();
        while let Some(frame) = framer.next_frame()? {
            out.push(match frame {
                Frame::Message(m) => String::from_utf8_lossy(&m.to_bytes()).into_owned(),
                Frame::Ping => "PING".into(),
                Frame::Pong => "PONG".into(),
            });
        }
        Ok(out)
    }

    fn frame_all(chunks: &[&[u8]]) -> Result<Vec<String>, Error> {
        let mut framer = Framer::new(FrameLimits::default());
        let mut out = Vec::new();
        for chunk in chunks {
            framer.push(chunk);
            out.extend(frames(&mut framer)?);
        }
        Ok(out)
    }

    /// Two messages in one read — the second with a folded compact `Content-Length` and a body
    /// holding a blank line — come out whole and byte for byte.
    #[test]
    fn two_messages_in_one_read() {
        let stream = format!("{OPTIONS}{MESSAGE}");
        assert_eq!(frame_all(&[stream.as_bytes()]).expect("frames"), [OPTIONS, MESSAGE]);
    }

    /// A message split anywhere waits for its rest.
    #[test]
    fn a_split_message_waits_for_its_rest() {
        for at in 0..MESSAGE.len() {
            let (a, b) = MESSAGE.as_bytes().split_at(at);
            assert_eq!(frame_all(&[a, b]).expect("frames"), [MESSAGE], "split at {at}");
        }
        let mut framer = Framer::new(FrameLimits::default());
        framer.push(MESSAGE.as_bytes().get(..MESSAGE.len() - 1).expect("prefix"));
        assert!(framer.next_frame().expect("no error").is_none());
        assert_eq!(framer.pending(), MESSAGE.len() - 1);
    }

    /// RFC 5626 §3.5.1: CRLF CRLF is a ping, a lone CRLF before a message a pong; a lone CRLF
    /// at the end waits (it may be the first half of a ping).
    #[test]
    fn keepalives_are_pings_and_pongs() {
        let stream = format!("\r\n\r\n{OPTIONS}\r\n{OPTIONS}\r\n\r\n\r\n");
        assert_eq!(frame_all(&[stream.as_bytes()]).expect("frames"), ["PING", OPTIONS, "PONG", OPTIONS, "PING"]);
        assert_eq!(frame_all(&[b"\r\n", b"\r\n"]).expect("frames"), ["PING"]);
        assert_eq!(frame_all(&[b"\r\n\r", b"\n"]).expect("frames"), ["PING"]);
    }

    /// A stream message without `Content-Length` is refused at its offset, with the request
    /// so it can be answered 400.
    #[test]
    fn content_length_is_required() {
        let missing = OPTIONS.replace("Content-Length: 0\r\n", "");
        let err = frame_all(&[OPTIONS.as_bytes(), missing.as_bytes()]).expect_err("refused");
        match err {
            Error::ContentLengthRequired { offset, request: Some(r) } => {
                assert_eq!(offset, OPTIONS.len() as u64);
                assert_eq!(r.method, sipx_sip::Method::Options);
            }
            other => panic!("{other:?}"),
        }
        assert!(err_at(&format!("{OPTIONS}garbage\r\n\r\n")).to_string().starts_with(&format!("stream offset {}:", OPTIONS.len())));
    }

    fn err_at(stream: &str) -> Error {
        frame_all(&[stream.as_bytes()]).expect_err("refused")
    }

    /// Oversized header sections and bodies are refused before they are buffered; a repeated
    /// or signed length is refused by the parser's rule.
    #[test]
    fn limits_and_bad_lengths_are_refused() {
        let limits = FrameLimits { head_bytes: 200, body_bytes: 10 };
        let mut framer = Framer::new(limits);
        framer.push(&[b'a'; 205]);
        assert!(matches!(framer.next_frame(), Err(Error::HeadTooLarge { offset: 0, limit: 200 })));
        let mut framer = Framer::new(limits);
        framer.push(OPTIONS.replace("Content-Length: 0", "Content-Length: 11").as_bytes());
        assert!(matches!(framer.next_frame(), Err(Error::BodyTooLarge { offset: 0, declared: 11, limit: 10 })));
        for bad in ["Content-Length: -1", "Content-Length: 0\r\nl: 0", "Content-Length: 99999999999999999999999"] {
            let text = OPTIONS.replace("Content-Length: 0", bad);
            assert!(matches!(err_at(&text), Error::Framing { offset: 0, .. }), "{bad}");
        }
        // A start line the parser refuses, after a good message.
        assert!(matches!(err_at(&format!("{OPTIONS}NOT SIP\r\nl: 0\r\n\r\n")), Error::Framing { offset, .. } if offset == OPTIONS.len() as u64));
    }

    proptest! {
        /// Any split of a valid stream into reads yields the same frames.
        #[test]
        fn any_split_yields_the_same_messages(cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12)) {
            let stream = format!("{OPTIONS}\r\n\r\n{MESSAGE}{OPTIONS}");
            let bytes = stream.as_bytes();
            let mut at: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
            at.sort_unstable();
            let mut chunks = Vec::new();
            let mut from = 0;
            for to in at.into_iter().chain(std::iter::once(bytes.len())) {
                chunks.push(bytes.get(from..to).unwrap_or_default());
                from = to;
            }
            prop_assert_eq!(frame_all(&chunks).expect("frames"), vec![OPTIONS.to_owned(), "PING".into(), MESSAGE.into(), OPTIONS.into()]);
        }

        /// Arbitrary bytes, in arbitrary reads, never panic the framer.
        #[test]
        fn arbitrary_bytes_never_panic(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..8)) {
            let chunks: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
            let _ = frame_all(&chunks);
        }
    }
}
