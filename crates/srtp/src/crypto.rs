//! The crypto backend: AES block cipher in counter mode, HMAC-SHA1 and AES-GCM.
//!
//! Backend choice (measured on this project's machines, see `BENCHMARKS.md` and
//! `docs/architecture.md`): RustCrypto `aes` (runtime-detected AES-NI, 8-block pipelined),
//! `sha1` (runtime-detected SHA-NI) behind `hmac`, and `aes-gcm` (AES-NI + CLMUL). The rest of
//! the crate sees only the three types below, so a second backend slots in here.
//!
//! Counter mode is written here rather than taken from the `ctr` crate: SRTP needs a fresh
//! 128-bit IV per packet under one key schedule, and building the keystream in batches of
//! blocks from the already expanded key avoids cloning the key schedule for every packet.

use aes::cipher::{BlockCipherEncrypt, KeyInit};
use aes::{Aes128Enc, Aes192Enc, Aes256Enc, Block};
use aes_gcm::{AeadInOut, Aes128Gcm, Aes256Gcm};
use hmac::{Hmac, Mac};
use sha1::Sha1;

use crate::Error;

/// Blocks of keystream computed per batch (lets AES-NI pipeline its rounds).
const BATCH: usize = 8;

/// An expanded AES encryption key of any of the three sizes.
#[derive(Clone)]
pub(crate) enum Aes {
    A128(Aes128Enc),
    A192(Aes192Enc),
    A256(Aes256Enc),
}

impl Aes {
    pub(crate) fn new(key: &[u8]) -> Result<Self, Error> {
        let bad = |_| Error::Policy("AES key must be 16, 24 or 32 octets");
        Ok(match key.len() {
            16 => Self::A128(Aes128Enc::new_from_slice(key).map_err(bad)?),
            24 => Self::A192(Aes192Enc::new_from_slice(key).map_err(bad)?),
            32 => Self::A256(Aes256Enc::new_from_slice(key).map_err(bad)?),
            _ => return Err(Error::Policy("AES key must be 16, 24 or 32 octets")),
        })
    }

    fn encrypt_blocks(&self, blocks: &mut [Block]) {
        match self {
            Self::A128(c) => c.encrypt_blocks(blocks),
            Self::A192(c) => c.encrypt_blocks(blocks),
            Self::A256(c) => c.encrypt_blocks(blocks),
        }
    }

    /// XORs `data` with the AES counter-mode keystream whose first counter block is `iv`
    /// (RFC 3711 §4.1.1: block j is `AES(k, IV + j mod 2^128)`).
    pub(crate) fn ctr_xor(&self, iv: &[u8; 16], data: &mut [u8]) {
        let base = u128::from_be_bytes(*iv);
        let mut counter: u128 = 0;
        let mut blocks = [Block::default(); BATCH];
        for chunk in data.chunks_mut(16 * BATCH) {
            let n = chunk.len().div_ceil(16);
            for block in blocks.iter_mut().take(n) {
                *block = base.wrapping_add(counter).to_be_bytes().into();
                counter += 1;
            }
            let used = blocks.get_mut(..n).unwrap_or_default();
            self.encrypt_blocks(used);
            for (bytes, ks) in chunk.chunks_mut(16).zip(used.iter()) {
                for (b, k) in bytes.iter_mut().zip(ks.iter()) {
                    *b ^= k;
                }
            }
        }
    }
}

/// HMAC-SHA1 keyed once; each tag starts from a copy of the keyed state (RFC 3711 §4.2.1).
#[derive(Clone)]
pub(crate) struct HmacSha1(Hmac<Sha1>);

impl HmacSha1 {
    pub(crate) fn new(key: &[u8]) -> Self {
        // HMAC accepts keys of any length (RFC 2104 §3), so this cannot fail.
        Self(<Hmac<Sha1> as KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!()))
    }

    /// HMAC-SHA1 over the concatenation of `first` and `second`.
    pub(crate) fn tag(&self, first: &[u8], second: &[u8]) -> [u8; 20] {
        let mut mac = self.0.clone();
        mac.update(first);
        mac.update(second);
        mac.finalize().into_bytes().into()
    }
}

/// AES-GCM with a 96-bit nonce and a 128-bit tag (RFC 7714 §5, §8).
#[derive(Clone)]
pub(crate) enum Gcm {
    A128(Box<Aes128Gcm>),
    A256(Box<Aes256Gcm>),
}

impl Gcm {
    pub(crate) fn new(key: &[u8]) -> Result<Self, Error> {
        let bad = |_| Error::Policy("AES-GCM key must be 16 or 32 octets");
        Ok(match key.len() {
            16 => Self::A128(Box::new(Aes128Gcm::new_from_slice(key).map_err(bad)?)),
            32 => Self::A256(Box::new(Aes256Gcm::new_from_slice(key).map_err(bad)?)),
            _ => return Err(Error::Policy("AES-GCM key must be 16 or 32 octets")),
        })
    }

    /// Encrypts `data` in place and returns the tag.
    pub(crate) fn seal(&self, nonce: &[u8; 12], aad: &[u8], data: &mut [u8]) -> [u8; 16] {
        let nonce = (*nonce).into();
        let tag = match self {
            Self::A128(c) => c.encrypt_inout_detached(&nonce, aad, data.into()),
            Self::A256(c) => c.encrypt_inout_detached(&nonce, aad, data.into()),
        };
        // Only fails for plaintexts over 2^36 - 32 octets; SRTP packets are < 2^16.
        tag.map(Into::into).unwrap_or_default()
    }

    /// Verifies `tag` (in constant time, inside `aes-gcm`) and decrypts `data` in place.
    pub(crate) fn open(&self, nonce: &[u8; 12], aad: &[u8], data: &mut [u8], tag: &[u8; 16]) -> Result<(), Error> {
        let nonce = (*nonce).into();
        let tag = (*tag).into();
        match self {
            Self::A128(c) => c.decrypt_inout_detached(&nonce, aad, data.into(), &tag),
            Self::A256(c) => c.decrypt_inout_detached(&nonce, aad, data.into(), &tag),
        }
        .map_err(|_| Error::AuthFailed)
    }
}
