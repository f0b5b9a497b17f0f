//! The crypto backend: AES in counter mode, HMAC-SHA1 and AES-GCM.
//!
//! Backend choice (measured on this project's machines, see `BENCHMARKS.md` and
//! `docs/architecture.md`): aws-lc-rs for AES-CTR and AES-GCM (AES-NI/VAES and CLMUL
//! assembly; roughly twice RustCrypto's throughput on 1200-octet packets) and RustCrypto
//! `sha1` (runtime-detected SHA-NI, the lowest per-call cost) behind `hmac` for HMAC-SHA1.
//! The rest of the crate sees only the three types below. aws-lc frees (and cleanses) its
//! key schedules when these types drop.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM, AES_256_GCM};
use aws_lc_rs::cipher::{EncryptingKey, EncryptionContext, UnboundCipherKey, AES_128, AES_192, AES_256};
use aws_lc_rs::iv::FixedLength;
use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;

use crate::Error;

/// An expanded AES encryption key (128, 192 or 256 bits) for counter mode.
pub(crate) struct Aes(EncryptingKey);

impl Aes {
    pub(crate) fn new(key: &[u8]) -> Result<Self, Error> {
        let algorithm = match key.len() {
            16 => &AES_128,
            24 => &AES_192,
            32 => &AES_256,
            _ => return Err(Error::Policy("AES key must be 16, 24 or 32 octets")),
        };
        let bad = |_| Error::Policy("AES key rejected by the crypto backend");
        Ok(Self(EncryptingKey::ctr(UnboundCipherKey::new(algorithm, key).map_err(bad)?).map_err(bad)?))
    }

    /// XORs `data` with the AES counter-mode keystream whose first counter block is `iv`
    /// (RFC 3711 §4.1.1: block j is `AES(k, IV + j mod 2^128)`).
    pub(crate) fn ctr_xor(&self, iv: &[u8; 16], data: &mut [u8]) {
        // CTR accepts any length and a 128-bit IV; this cannot fail for SRTP-sized input.
        let _ = self.0.less_safe_encrypt(data, EncryptionContext::Iv128(FixedLength::from(*iv)));
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
pub(crate) struct Gcm(LessSafeKey);

impl Gcm {
    pub(crate) fn new(key: &[u8]) -> Result<Self, Error> {
        let algorithm = match key.len() {
            16 => &AES_128_GCM,
            32 => &AES_256_GCM,
            _ => return Err(Error::Policy("AES-GCM key must be 16 or 32 octets")),
        };
        let key = UnboundKey::new(algorithm, key).map_err(|_| Error::Policy("AES-GCM key rejected by the crypto backend"))?;
        Ok(Self(LessSafeKey::new(key)))
    }

    /// Encrypts `data` in place and returns the tag.
    pub(crate) fn seal(&self, nonce: &[u8; 12], aad: &[u8], data: &mut [u8]) -> [u8; 16] {
        let mut out = [0u8; 16];
        // Only fails for plaintexts beyond GCM's limit; SRTP packets are < 2^16 octets.
        if let Ok(tag) = self.0.seal_in_place_separate_tag(Nonce::assume_unique_for_key(*nonce), Aad::from(aad), data) {
            out.copy_from_slice(tag.as_ref());
        }
        out
    }

    /// Verifies the tag at the end of `ciphertext_and_tag` (constant time, inside aws-lc) and
    /// decrypts the ciphertext in place.
    pub(crate) fn open(&self, nonce: &[u8; 12], aad: &[u8], ciphertext_and_tag: &mut [u8]) -> Result<(), Error> {
        self.0
            .open_in_place(Nonce::assume_unique_for_key(*nonce), Aad::from(aad), ciphertext_and_tag)
            .map(drop)
            .map_err(|_| Error::AuthFailed)
    }
}
