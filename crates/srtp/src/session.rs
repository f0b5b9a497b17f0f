//! An SRTP session: master keys shared by any number of streams, protect/unprotect in place.
//!
//! Processing order follows RFC 3711 §3.3 (SRTP) and §3.4 (SRTCP); the AEAD layouts follow
//! RFC 7714 §8–§9. State (ROC, `s_l`, replay lists, key counters) changes only after a
//! packet has been authenticated, so a forged packet can never move a stream.

use std::collections::hash_map::{Entry, HashMap};

use subtle::ConstantTimeEq;

use crate::header::{rtcp_ssrc, RtpHeader};
use crate::keys::{Derivation, KeyState, Kind, Protection};
use crate::stream::{Estimate, Stream};
use crate::{Error, Policy, Suite};

/// Which side of a stream: what we send, or what we receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Streams we protect.
    Outbound,
    /// Streams we unprotect.
    Inbound,
}

/// Bit 31 of the SRTCP trailer word: the E (encrypted) flag (RFC 3711 §3.4).
const E_FLAG: u32 = 1 << 31;
const GCM_TAG: usize = 16;

/// An SRTP/SRTCP session: one policy, any number of SSRCs in each direction.
pub struct Session {
    derivation: Derivation,
    keys: Vec<KeyState>,
    active: usize,
    mki_len: usize,
    encrypt_srtcp: bool,
    replay_window: usize,
    max_streams: usize,
    allow_repeat_tx: bool,
    tx: HashMap<u32, Stream>,
    rx: HashMap<u32, Stream>,
}

/// The AES-CM IV of RFC 3711 §4.1.1: `(k_s * 2^16) XOR (SSRC * 2^64) XOR (i * 2^16)`.
fn cm_iv(salt: &[u8; 14], ssrc: u32, index: u64) -> [u8; 16] {
    let mut iv = [0u8; 16];
    let salt = u128::from_be_bytes({
        let mut s = [0u8; 16];
        s[..14].copy_from_slice(salt);
        s
    });
    let v = salt ^ (u128::from(ssrc) << 64) ^ (u128::from(index) << 16);
    iv.copy_from_slice(&v.to_be_bytes());
    iv
}

/// The GCM IV of RFC 7714 §8.1 / §9.1: `00 00 || SSRC || tail` XOR the 96-bit salt, where
/// `tail` is `ROC || SEQ` for SRTP and `00 00 || 0 || SRTCP index` for SRTCP.
fn gcm_iv(salt: &[u8; 14], ssrc: u32, tail: [u8; 6]) -> [u8; 12] {
    let mut iv = [0u8; 12];
    iv[2..6].copy_from_slice(&ssrc.to_be_bytes());
    iv[6..].copy_from_slice(&tail);
    for (v, s) in iv.iter_mut().zip(salt) {
        *v ^= s;
    }
    iv
}

fn srtp_tail(e: Estimate) -> [u8; 6] {
    let [a, b, c, d] = e.roc.to_be_bytes();
    let [x, y] = e.seq.to_be_bytes();
    [a, b, c, d, x, y]
}

fn srtcp_tail(index: u32) -> [u8; 6] {
    let [a, b, c, d] = index.to_be_bytes();
    [0, 0, a, b, c, d]
}

/// Copies `src` to the front of `dst` (callers size `dst` first).
fn put(dst: &mut [u8], src: &[u8]) {
    if let Some(d) = dst.get_mut(..src.len()) {
        d.copy_from_slice(src);
    }
}

fn stream_for(
    map: &mut HashMap<u32, Stream>,
    ssrc: u32,
    max: usize,
    window: usize,
) -> Result<&mut Stream, Error> {
    let n = map.len();
    match map.entry(ssrc) {
        Entry::Occupied(e) => Ok(e.into_mut()),
        Entry::Vacant(_) if n >= max => Err(Error::StreamLimit),
        Entry::Vacant(e) => Ok(e.insert(Stream::new(window, 0))),
    }
}

impl Session {
    /// Builds a session after validating the policy and deriving the session keys.
    pub fn new(policy: &Policy) -> Result<Self, Error> {
        policy.validate()?;
        let derivation = Derivation::new(policy);
        let keys = policy.keys.iter().map(|k| KeyState::new(k, &derivation)).collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            derivation,
            keys,
            active: 0,
            mki_len: policy.keys.first().map_or(0, |k| k.mki().len()),
            encrypt_srtcp: !policy.unencrypted_srtcp && policy.suite.cipher() != crate::suite::CipherKind::Null,
            replay_window: policy.replay_window,
            max_streams: policy.max_streams,
            allow_repeat_tx: policy.allow_repeat_tx,
            tx: HashMap::new(),
            rx: HashMap::new(),
        })
    }

    /// A session that uses the given session keys as they are (for published vectors).
    #[cfg(test)]
    pub(crate) fn from_session_keys(policy: &Policy, srtp: (&[u8], &[u8], &[u8]), srtcp: (&[u8], &[u8], &[u8])) -> Result<Self, Error> {
        let mut s = Self::new(policy)?;
        s.keys = vec![KeyState::from_session_keys(&s.derivation, srtp, srtcp)?];
        Ok(s)
    }


    /// The session's suite.
    pub fn suite(&self) -> Suite {
        self.derivation.suite
    }

    fn srtp_tag_len(&self) -> usize {
        if self.derivation.authenticate_srtp { self.derivation.suite.srtp_tag_len() } else { 0 }
    }

    /// Octets `protect_rtp` appends (MKI and tag).
    pub fn rtp_overhead(&self) -> usize {
        self.mki_len + self.srtp_tag_len()
    }

    /// Octets `protect_rtcp` appends (tag, E||index and MKI).
    pub fn rtcp_overhead(&self) -> usize {
        self.mki_len + 4 + self.derivation.suite.srtcp_tag_len()
    }

    /// Chooses the master key used for sending by its MKI.
    pub fn set_active_mki(&mut self, mki: &[u8]) -> Result<(), Error> {
        self.active = self.keys.iter().position(|k| k.mki == mki).ok_or(Error::UnknownMki)?;
        Ok(())
    }

    /// Sets the ROC of a stream out of band (RFC 3711 §3.3.1; MIKEY carries it in the CS ID
    /// map, RFC 3830 §6.1.1), creating the stream if needed.
    pub fn set_roc(&mut self, direction: Direction, ssrc: u32, roc: u32) -> Result<(), Error> {
        let map = match direction {
            Direction::Outbound => &mut self.tx,
            Direction::Inbound => &mut self.rx,
        };
        stream_for(map, ssrc, self.max_streams, self.replay_window)?.set_roc(roc);
        Ok(())
    }

    /// Sets the SRTCP index the next outbound packet of `ssrc` will carry (RFC 3711 §3.4 starts
    /// at 0; libsrtp starts at 1; a resumed context continues where it stopped). Creates the
    /// stream if needed.
    pub fn set_srtcp_index(&mut self, ssrc: u32, next: u32) -> Result<(), Error> {
        if u64::from(next) >= 1 << 31 {
            return Err(Error::IndexExhausted);
        }
        stream_for(&mut self.tx, ssrc, self.max_streams, self.replay_window)?.rtcp_next = next;
        Ok(())
    }

    /// The current ROC of a stream, if the stream exists.
    pub fn roc(&self, direction: Direction, ssrc: u32) -> Option<u32> {
        match direction {
            Direction::Outbound => self.tx.get(&ssrc),
            Direction::Inbound => self.rx.get(&ssrc),
        }
        .map(Stream::roc)
    }

    /// Number of streams in a direction.
    pub fn stream_count(&self, direction: Direction) -> usize {
        match direction {
            Direction::Outbound => self.tx.len(),
            Direction::Inbound => self.rx.len(),
        }
    }

    fn key_for_mki(&self, mki: &[u8]) -> Result<usize, Error> {
        if self.mki_len == 0 {
            return Ok(0);
        }
        self.keys.iter().position(|k| k.mki == mki).ok_or(Error::UnknownMki)
    }

    /// Protects the RTP packet in `buf[..len]` in place and returns the SRTP length.
    /// `buf` must have room for [`Self::rtp_overhead`] more octets.
    pub fn protect_rtp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, Error> {
        let header = RtpHeader::parse(buf.get(..len).ok_or(Error::Malformed("length exceeds buffer"))?)?;
        let tag_len = self.srtp_tag_len();
        let total = len + self.mki_len + tag_len;
        let (packet, trailer) = buf
            .get_mut(..total)
            .ok_or(Error::BufferTooSmall(total))?
            .split_at_mut(len);
        let key = self.keys.get_mut(self.active).ok_or(Error::UnknownMki)?;
        key.check_limit(Kind::Srtp)?;
        let stream = stream_for(&mut self.tx, header.ssrc, self.max_streams, self.replay_window)?;
        let e = stream.estimate(header.seq)?;
        if !self.allow_repeat_tx {
            stream.rtp_window.check(e.index)?;
        }
        let mki = key.mki.clone();
        let keys = key.session_keys(&self.derivation, Kind::Srtp, e.index)?;
        match &keys.protection {
            Protection::Hmac { cipher, mac } => {
                if let Some(aes) = cipher {
                    let payload = packet.get_mut(header.len..).unwrap_or_default();
                    aes.ctr_xor(&cm_iv(&keys.salt, header.ssrc, e.index), payload);
                }
                let (mki_out, tag_out) = trailer.split_at_mut(mki.len());
                mki_out.copy_from_slice(&mki);
                if let Some(mac) = mac {
                    put(tag_out, mac.tag(packet, &e.roc.to_be_bytes()).get(..tag_len).unwrap_or_default());
                }
            }
            Protection::Gcm(gcm) => {
                let (head, payload) = packet.split_at_mut(header.len);
                let tag = gcm.seal(&gcm_iv(&keys.salt, header.ssrc, srtp_tail(e)), head, payload);
                let (tag_out, mki_out) = trailer.split_at_mut(GCM_TAG);
                tag_out.copy_from_slice(&tag);
                mki_out.copy_from_slice(&mki);
            }
        }
        key.count(Kind::Srtp);
        stream.advance(e);
        stream.rtp_window.accept(e.index);
        Ok(total)
    }

    /// Verifies and decrypts the SRTP packet `buf` in place; returns the RTP length.
    /// On error the session is unchanged and `buf`'s contents are unspecified.
    pub fn unprotect_rtp(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        let header = RtpHeader::parse(buf)?;
        let tag_len = self.srtp_tag_len();
        let body_end = buf
            .len()
            .checked_sub(tag_len + self.mki_len)
            .filter(|&end| end >= header.len)
            .ok_or(Error::Malformed("SRTP packet too short for its MKI and tag"))?;
        let gcm = self.derivation.suite.is_aead();
        let mki_at = if gcm { body_end + tag_len } else { body_end };
        let key_index = self.key_for_mki(buf.get(mki_at..mki_at + self.mki_len).unwrap_or_default())?;
        let key = self.keys.get_mut(key_index).ok_or(Error::UnknownMki)?;
        key.check_limit(Kind::Srtp)?;

        let mut fresh = None;
        let known = self.rx.len();
        let stream = match self.rx.get_mut(&header.ssrc) {
            Some(s) => s,
            None if known >= self.max_streams => return Err(Error::StreamLimit),
            None => fresh.insert(Stream::new(self.replay_window, 0)),
        };
        let e: Estimate = stream.estimate(header.seq)?;
        let authenticated = self.derivation.authenticate_srtp;
        if authenticated {
            stream.rtp_window.check(e.index)?;
        }
        let keys = key.session_keys(&self.derivation, Kind::Srtp, e.index)?;
        match &keys.protection {
            Protection::Hmac { cipher, mac } => {
                let (packet, rest) = buf.split_at_mut(body_end);
                if let Some(mac) = mac {
                    let expected = mac.tag(packet, &e.roc.to_be_bytes());
                    let received = rest.get(self.mki_len..).unwrap_or_default();
                    let expected = expected.get(..tag_len).unwrap_or_default();
                    if !bool::from(expected.ct_eq(received)) {
                        return Err(Error::AuthFailed);
                    }
                }
                if let Some(aes) = cipher {
                    let payload = packet.get_mut(header.len..).unwrap_or_default();
                    aes.ctr_xor(&cm_iv(&keys.salt, header.ssrc, e.index), payload);
                }
            }
            Protection::Gcm(gcm) => {
                let (head, rest) = buf.split_at_mut(header.len);
                let sealed = rest.get_mut(..body_end + tag_len - header.len).ok_or(Error::Malformed("GCM tag missing"))?;
                gcm.open(&gcm_iv(&keys.salt, header.ssrc, srtp_tail(e)), head, sealed)?;
            }
        }
        key.count(Kind::Srtp);
        stream.advance(e);
        if authenticated {
            stream.rtp_window.accept(e.index);
        }
        if let Some(new) = fresh {
            self.rx.insert(header.ssrc, new);
        }
        Ok(body_end)
    }

    /// Protects the RTCP compound packet in `buf[..len]` in place and returns the SRTCP
    /// length. `buf` must have room for [`Self::rtcp_overhead`] more octets.
    ///
    /// ```text
    /// AES-CM / NULL:  RTCP(first 8 clear, rest encrypted if E) || E|index || MKI || tag
    /// AES-GCM, E=1:   first 8 || ciphertext || tag || E|index || MKI   (RFC 7714 §9.2)
    /// AES-GCM, E=0:   RTCP || tag || E|index || MKI                    (RFC 7714 §9.3)
    /// ```
    pub fn protect_rtcp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, Error> {
        let ssrc = rtcp_ssrc(buf.get(..len).ok_or(Error::Malformed("length exceeds buffer"))?)?;
        let total = len + self.rtcp_overhead();
        let out = buf.get_mut(..total).ok_or(Error::BufferTooSmall(total))?;
        let key = self.keys.get_mut(self.active).ok_or(Error::UnknownMki)?;
        key.check_limit(Kind::Srtcp)?;
        let stream = stream_for(&mut self.tx, ssrc, self.max_streams, self.replay_window)?;
        let index = stream.rtcp_next;
        if u64::from(index) >= 1 << 31 {
            return Err(Error::IndexExhausted);
        }
        let word = (if self.encrypt_srtcp { E_FLAG | index } else { index }).to_be_bytes();
        let mki = key.mki.clone();
        let keys = key.session_keys(&self.derivation, Kind::Srtcp, u64::from(index))?;
        match &keys.protection {
            Protection::Hmac { cipher, mac } => {
                let (packet, trailer) = out.split_at_mut(len);
                if let (true, Some(aes)) = (self.encrypt_srtcp, cipher) {
                    aes.ctr_xor(&cm_iv(&keys.salt, ssrc, u64::from(index)), packet.get_mut(8..).unwrap_or_default());
                }
                let (word_out, rest) = trailer.split_at_mut(4);
                word_out.copy_from_slice(&word);
                let (mki_out, tag_out) = rest.split_at_mut(mki.len());
                mki_out.copy_from_slice(&mki);
                let mac = mac.as_ref().ok_or(Error::Policy("SRTCP authentication is mandatory"))?;
                put(tag_out, mac.tag(packet, &word).get(..tag_out.len()).unwrap_or_default());
            }
            Protection::Gcm(gcm) => {
                let iv = gcm_iv(&keys.salt, ssrc, srtcp_tail(index));
                let tag = if self.encrypt_srtcp {
                    let (head, body) = out.split_at_mut(8);
                    let mut aad = [0u8; 12];
                    put(&mut aad, head);
                    put(aad.get_mut(8..).unwrap_or_default(), &word);
                    gcm.seal(&iv, &aad, body.get_mut(..len - 8).unwrap_or_default())
                } else {
                    // The AAD is the packet followed by E||index: write the word right after
                    // the packet, authenticate, then move it behind the tag.
                    put(out.get_mut(len..).unwrap_or_default(), &word);
                    gcm.seal(&iv, out.get(..len + 4).unwrap_or_default(), &mut [])
                };
                let trailer = out.get_mut(len..).unwrap_or_default();
                let (tag_out, rest) = trailer.split_at_mut(GCM_TAG);
                tag_out.copy_from_slice(&tag);
                let (word_out, mki_out) = rest.split_at_mut(4);
                word_out.copy_from_slice(&word);
                mki_out.copy_from_slice(&mki);
            }
        }
        key.count(Kind::Srtcp);
        stream.rtcp_next = index + 1;
        Ok(total)
    }

    /// Verifies and (if its E flag is set) decrypts the SRTCP packet `buf` in place; returns
    /// the RTCP length. On error the session is unchanged and `buf`'s contents are unspecified.
    pub fn unprotect_rtcp(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        let ssrc = rtcp_ssrc(buf)?;
        let gcm = self.derivation.suite.is_aead();
        let tag_len = self.derivation.suite.srtcp_tag_len();
        let body_end = buf
            .len()
            .checked_sub(tag_len + 4 + self.mki_len)
            .filter(|&end| end >= 8)
            .ok_or(Error::Malformed("SRTCP packet too short for its trailer"))?;
        // Positions of E||index and MKI in the two layouts.
        let (word_at, mki_at) = if gcm {
            (body_end + tag_len, body_end + tag_len + 4)
        } else {
            (body_end, body_end + 4)
        };
        let word_bytes: [u8; 4] = buf
            .get(word_at..word_at + 4)
            .and_then(|w| w.try_into().ok())
            .ok_or(Error::Malformed("SRTCP index missing"))?;
        let word = u32::from_be_bytes(word_bytes);
        let (encrypted, index) = (word & E_FLAG != 0, word & !E_FLAG);
        let key_index = self.key_for_mki(buf.get(mki_at..mki_at + self.mki_len).unwrap_or_default())?;
        let key = self.keys.get_mut(key_index).ok_or(Error::UnknownMki)?;
        key.check_limit(Kind::Srtcp)?;

        let mut fresh = None;
        let known = self.rx.len();
        let stream = match self.rx.get_mut(&ssrc) {
            Some(s) => s,
            None if known >= self.max_streams => return Err(Error::StreamLimit),
            None => fresh.insert(Stream::new(self.replay_window, 0)),
        };
        stream.rtcp_window.check(u64::from(index))?;
        let keys = key.session_keys(&self.derivation, Kind::Srtcp, u64::from(index))?;
        match &keys.protection {
            Protection::Hmac { cipher, mac } => {
                let mac = mac.as_ref().ok_or(Error::Policy("SRTCP authentication is mandatory"))?;
                let (authenticated, rest) = buf.split_at_mut(body_end + 4);
                let expected = mac.tag(authenticated, &[]);
                let received = rest.get(self.mki_len..).unwrap_or_default();
                if !bool::from(expected.get(..tag_len).unwrap_or_default().ct_eq(received)) {
                    return Err(Error::AuthFailed);
                }
                if encrypted {
                    let aes = cipher.as_ref().ok_or(Error::Malformed("E flag set under the NULL cipher"))?;
                    let body = authenticated.get_mut(8..body_end).unwrap_or_default();
                    aes.ctr_xor(&cm_iv(&keys.salt, ssrc, u64::from(index)), body);
                }
            }
            Protection::Gcm(gcm) => {
                let iv = gcm_iv(&keys.salt, ssrc, srtcp_tail(index));
                if encrypted {
                    let (head, body) = buf.split_at_mut(8);
                    let mut aad = [0u8; 12];
                    put(&mut aad, head);
                    put(aad.get_mut(8..).unwrap_or_default(), &word_bytes);
                    let sealed = body.get_mut(..body_end + GCM_TAG - 8).ok_or(Error::Malformed("GCM tag missing"))?;
                    gcm.open(&iv, &aad, sealed)?;
                } else {
                    // AAD = packet || E||index: keep the tag aside, move the word over its place.
                    let mut tag: [u8; GCM_TAG] = buf
                        .get(body_end..body_end + GCM_TAG)
                        .and_then(|t| t.try_into().ok())
                        .ok_or(Error::Malformed("GCM tag missing"))?;
                    put(buf.get_mut(body_end..).unwrap_or_default(), &word_bytes);
                    gcm.open(&iv, buf.get(..body_end + 4).unwrap_or_default(), &mut tag)?;
                }
            }
        }
        key.count(Kind::Srtcp);
        stream.rtcp_window.accept(u64::from(index));
        if let Some(new) = fresh {
            self.rx.insert(ssrc, new);
        }
        Ok(body_end)
    }

    /// [`Self::protect_rtp`] on a `Vec`, growing it by the overhead (no allocation when its
    /// capacity already allows).
    pub fn protect_rtp_vec(&mut self, packet: &mut Vec<u8>) -> Result<(), Error> {
        let len = packet.len();
        packet.resize(len + self.rtp_overhead(), 0);
        let result = self.protect_rtp(packet, len);
        packet.truncate(*result.as_ref().unwrap_or(&len));
        result.map(drop)
    }

    /// [`Self::unprotect_rtp`] on a `Vec`, truncating it to the RTP packet.
    pub fn unprotect_rtp_vec(&mut self, packet: &mut Vec<u8>) -> Result<(), Error> {
        let len = self.unprotect_rtp(packet)?;
        packet.truncate(len);
        Ok(())
    }

    /// [`Self::protect_rtcp`] on a `Vec`.
    pub fn protect_rtcp_vec(&mut self, packet: &mut Vec<u8>) -> Result<(), Error> {
        let len = packet.len();
        packet.resize(len + self.rtcp_overhead(), 0);
        let result = self.protect_rtcp(packet, len);
        packet.truncate(*result.as_ref().unwrap_or(&len));
        result.map(drop)
    }

    /// [`Self::unprotect_rtcp`] on a `Vec`.
    pub fn unprotect_rtcp_vec(&mut self, packet: &mut Vec<u8>) -> Result<(), Error> {
        let len = self.unprotect_rtcp(packet)?;
        packet.truncate(len);
        Ok(())
    }
}
