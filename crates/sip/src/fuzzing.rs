//! Entry point shared by the fuzz target `fuzz/fuzz_targets/sip_stream.rs` and the corpus
//! replay test, so CI exercises the same code without cargo-fuzz. It panics only when an
//! invariant of the stream framer is broken (that is the finding).

use crate::stream::{Frame, FrameLimits, Framer, PONG};

/// The first byte picks a read size (1 to 256); the rest is a TCP byte stream. Framing it in
/// one read and in reads of that size must give the same frames and the same error at the
/// same offset, and the frames must be the stream's bytes, in order, without loss.
pub fn stream(data: &[u8]) {
    let Some((&size, bytes)) = data.split_first() else { return };
    let whole = frame(std::iter::once(bytes));
    let chunked = frame(bytes.chunks(usize::from(size) + 1));
    assert_eq!(whole, chunked, "framing depends on how the stream was read");
    let (frames, _) = whole;
    let consumed: Vec<u8> = frames.concat();
    assert!(bytes.starts_with(&consumed), "frames are not the bytes of the stream");
}

/// Frames (a ping as CRLF CRLF, a pong as CRLF) and the error that ended the stream, if any.
fn frame<'a>(reads: impl Iterator<Item = &'a [u8]>) -> (Vec<Vec<u8>>, Option<String>) {
    let mut framer = Framer::new(FrameLimits { head_bytes: 2048, body_bytes: 4096 });
    let mut frames = Vec::new();
    for read in reads {
        framer.push(read);
        loop {
            match framer.next_frame() {
                Ok(Some(Frame::Message(m))) => frames.push(m.to_bytes().to_vec()),
                Ok(Some(Frame::Ping)) => frames.push(b"\r\n\r\n".to_vec()),
                Ok(Some(Frame::Pong)) => frames.push(PONG.to_vec()),
                Ok(None) => break,
                Err(e) => return (frames, Some(e.to_string())),
            }
        }
    }
    (frames, None)
}
