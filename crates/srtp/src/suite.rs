//! Crypto suites, named exactly as in the IANA SDES registry so that an `a=crypto` line
//! (RFC 4568 §6.2, RFC 6188 §6, RFC 7714 §12) maps 1:1 to a [`Suite`].

use core::fmt;
use core::str::FromStr;

/// An SRTP crypto suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Suite {
    /// RFC 4568 §6.2.1: AES-128 counter mode, HMAC-SHA1 80-bit tag.
    AesCm128HmacSha1_80,
    /// RFC 4568 §6.2.2: AES-128 counter mode, HMAC-SHA1 32-bit tag (SRTCP keeps 80 bits).
    AesCm128HmacSha1_32,
    /// RFC 6188 §6: AES-192 counter mode, HMAC-SHA1 80-bit tag.
    Aes192CmHmacSha1_80,
    /// RFC 6188 §6: AES-192 counter mode, HMAC-SHA1 32-bit tag (SRTCP keeps 80 bits).
    Aes192CmHmacSha1_32,
    /// RFC 6188 §6: AES-256 counter mode, HMAC-SHA1 80-bit tag.
    Aes256CmHmacSha1_80,
    /// RFC 6188 §6: AES-256 counter mode, HMAC-SHA1 32-bit tag (SRTCP keeps 80 bits).
    Aes256CmHmacSha1_32,
    /// RFC 7714 §12: AES-128 GCM, 16-octet tag.
    AeadAes128Gcm,
    /// RFC 7714 §12: AES-256 GCM, 16-octet tag.
    AeadAes256Gcm,
    /// NULL cipher with HMAC-SHA1 80-bit tag. TS 33.328 §5.3: supported, but should not be used.
    NullHmacSha1_80,
    /// NULL cipher with HMAC-SHA1 32-bit tag. TS 33.328 §5.3: supported, but should not be used.
    NullHmacSha1_32,
}

/// The confidentiality transform of a suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CipherKind {
    /// No encryption (keystream of zeros).
    Null,
    /// AES in counter mode (RFC 3711 §4.1.1), with HMAC-SHA1 authentication.
    AesCm,
    /// AES-GCM AEAD (RFC 7714).
    AesGcm,
}

impl Suite {
    /// Every suite, strongest-first in the order a cautious offerer would list them.
    pub const ALL: [Self; 10] = [
        Self::AeadAes256Gcm,
        Self::AeadAes128Gcm,
        Self::Aes256CmHmacSha1_80,
        Self::Aes256CmHmacSha1_32,
        Self::Aes192CmHmacSha1_80,
        Self::Aes192CmHmacSha1_32,
        Self::AesCm128HmacSha1_80,
        Self::AesCm128HmacSha1_32,
        Self::NullHmacSha1_80,
        Self::NullHmacSha1_32,
    ];

    /// The IANA SDES registry name (`a=crypto` crypto-suite token).
    pub fn name(self) -> &'static str {
        match self {
            Self::AesCm128HmacSha1_80 => "AES_CM_128_HMAC_SHA1_80",
            Self::AesCm128HmacSha1_32 => "AES_CM_128_HMAC_SHA1_32",
            Self::Aes192CmHmacSha1_80 => "AES_192_CM_HMAC_SHA1_80",
            Self::Aes192CmHmacSha1_32 => "AES_192_CM_HMAC_SHA1_32",
            Self::Aes256CmHmacSha1_80 => "AES_256_CM_HMAC_SHA1_80",
            Self::Aes256CmHmacSha1_32 => "AES_256_CM_HMAC_SHA1_32",
            Self::AeadAes128Gcm => "AEAD_AES_128_GCM",
            Self::AeadAes256Gcm => "AEAD_AES_256_GCM",
            Self::NullHmacSha1_80 => "NULL_HMAC_SHA1_80",
            Self::NullHmacSha1_32 => "NULL_HMAC_SHA1_32",
        }
    }

    /// Master key length in octets (16, 24 or 32). The NULL suites keep a 128-bit master key
    /// because their session authentication key is still derived with the AES-128 PRF.
    pub fn master_key_len(self) -> usize {
        match self {
            Self::AesCm128HmacSha1_80
            | Self::AesCm128HmacSha1_32
            | Self::AeadAes128Gcm
            | Self::NullHmacSha1_80
            | Self::NullHmacSha1_32 => 16,
            Self::Aes192CmHmacSha1_80 | Self::Aes192CmHmacSha1_32 => 24,
            Self::Aes256CmHmacSha1_80 | Self::Aes256CmHmacSha1_32 | Self::AeadAes256Gcm => 32,
        }
    }

    /// Master salt length in octets: 14 (112 bits) for the counter-mode suites, 12 (96 bits)
    /// for GCM (RFC 7714 §11).
    pub fn master_salt_len(self) -> usize {
        if self.is_aead() { 12 } else { 14 }
    }

    /// Length of the SDES inline key (`master key || master salt`).
    pub fn inline_key_len(self) -> usize {
        self.master_key_len() + self.master_salt_len()
    }

    /// Authentication tag length of SRTP packets in octets.
    pub fn srtp_tag_len(self) -> usize {
        match self {
            Self::AesCm128HmacSha1_32
            | Self::Aes192CmHmacSha1_32
            | Self::Aes256CmHmacSha1_32
            | Self::NullHmacSha1_32 => 4,
            Self::AeadAes128Gcm | Self::AeadAes256Gcm => 16,
            _ => 10,
        }
    }

    /// Authentication tag length of SRTCP packets in octets: the `_32` suites keep an 80-bit
    /// SRTCP tag (RFC 4568 §6.2.2, RFC 6188 §6).
    pub fn srtcp_tag_len(self) -> usize {
        if self.is_aead() { 16 } else { 10 }
    }

    /// Whether the suite is an AEAD (RFC 7714).
    pub fn is_aead(self) -> bool {
        matches!(self, Self::AeadAes128Gcm | Self::AeadAes256Gcm)
    }

    /// Whether TS 33.328 §5.3 says the suite should not be used (the NULL-cipher suites).
    pub fn is_discouraged(self) -> bool {
        matches!(self, Self::NullHmacSha1_80 | Self::NullHmacSha1_32)
    }

    pub(crate) fn cipher(self) -> CipherKind {
        match self {
            Self::NullHmacSha1_80 | Self::NullHmacSha1_32 => CipherKind::Null,
            Self::AeadAes128Gcm | Self::AeadAes256Gcm => CipherKind::AesGcm,
            _ => CipherKind::AesCm,
        }
    }

    /// Length of the session encryption key (equals the master key length; RFC 6188 §3,
    /// RFC 7714 §11). Zero for the NULL cipher.
    pub(crate) fn session_enc_key_len(self) -> usize {
        if self.cipher() == CipherKind::Null { 0 } else { self.master_key_len() }
    }
}

impl fmt::Display for Suite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The name is not a suite this crate implements.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown SRTP crypto suite {0:?}")]
pub struct UnknownSuite(pub String);

impl FromStr for Suite {
    type Err = UnknownSuite;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|suite| suite.name() == s)
            .ok_or_else(|| UnknownSuite(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for suite in Suite::ALL {
            assert_eq!(suite.name().parse::<Suite>(), Ok(suite));
        }
        assert!("AES_CM_256_HMAC_SHA1_80".parse::<Suite>().is_err());
    }

    #[test]
    fn sdes_inline_lengths() {
        // RFC 4568 §6.2: 30 octets, RFC 6188: 38/46, RFC 7714 §12: 28/44.
        assert_eq!(Suite::AesCm128HmacSha1_80.inline_key_len(), 30);
        assert_eq!(Suite::Aes192CmHmacSha1_32.inline_key_len(), 38);
        assert_eq!(Suite::Aes256CmHmacSha1_80.inline_key_len(), 46);
        assert_eq!(Suite::AeadAes128Gcm.inline_key_len(), 28);
        assert_eq!(Suite::AeadAes256Gcm.inline_key_len(), 44);
    }
}
