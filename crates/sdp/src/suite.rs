//! SRTP crypto-suite names of `a=crypto` (IANA "SRTP Crypto Suite Registrations":
//! RFC 4568 §6.2, RFC 6188 §3, RFC 7714 §14.2) as a newtype that keeps unknown names.

use std::borrow::Cow;
use std::fmt;

/// A crypto-suite name, compared case-sensitively as RFC 4568 §9.2 spells them.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CryptoSuite(Cow<'static, str>);

/// Key, salt and tag sizes of a known suite (octets).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SuiteParams {
    /// Master key length.
    pub key_len: usize,
    /// Master salt length.
    pub salt_len: usize,
    /// SRTP authentication tag length (for AEAD suites: the AEAD tag).
    pub srtp_tag_len: usize,
    /// True for the RFC 7714 AEAD (GCM) suites.
    pub aead: bool,
    /// False for names outside the IANA registry that peers use anyway.
    pub iana: bool,
    /// The IANA name with the same parameters, for a non-IANA alias.
    pub iana_equivalent: Option<&'static str>,
}

macro_rules! suites {
    ($($konst:ident = $name:literal: $key:literal + $salt:literal, tag $tag:literal, $aead:literal, $iana:literal, $eq:expr;)*) => {
        impl CryptoSuite {
            $(
                #[doc = concat!("`", $name, "`")]
                pub const $konst: Self = Self(Cow::Borrowed($name));
            )*

            /// Every suite whose parameters this crate knows, IANA names first.
            pub const KNOWN: &'static [Self] = &[$(Self::$konst),*];

            /// Key/salt/tag sizes, for a known name.
            pub fn params(&self) -> Option<SuiteParams> {
                match self.name() {
                    $($name => Some(SuiteParams {
                        key_len: $key, salt_len: $salt, srtp_tag_len: $tag, aead: $aead,
                        iana: $iana, iana_equivalent: $eq,
                    }),)*
                    _ => None,
                }
            }
        }
    };
}

suites! {
    AES_CM_128_HMAC_SHA1_80 = "AES_CM_128_HMAC_SHA1_80": 16 + 14, tag 10, false, true, None;
    AES_CM_128_HMAC_SHA1_32 = "AES_CM_128_HMAC_SHA1_32": 16 + 14, tag 4, false, true, None;
    AES_192_CM_HMAC_SHA1_80 = "AES_192_CM_HMAC_SHA1_80": 24 + 14, tag 10, false, true, None;
    AES_192_CM_HMAC_SHA1_32 = "AES_192_CM_HMAC_SHA1_32": 24 + 14, tag 4, false, true, None;
    AES_256_CM_HMAC_SHA1_80 = "AES_256_CM_HMAC_SHA1_80": 32 + 14, tag 10, false, true, None;
    AES_256_CM_HMAC_SHA1_32 = "AES_256_CM_HMAC_SHA1_32": 32 + 14, tag 4, false, true, None;
    AEAD_AES_128_GCM = "AEAD_AES_128_GCM": 16 + 12, tag 16, true, true, None;
    AEAD_AES_256_GCM = "AEAD_AES_256_GCM": 32 + 12, tag 16, true, true, None;
    F8_128_HMAC_SHA1_80 = "F8_128_HMAC_SHA1_80": 16 + 14, tag 10, false, true, None;
    // RFC 4568 §9.2's ABNF misprint of the F8 suite, also emitted by rtpengine.
    F8_128_HMAC_SHA1_32 = "F8_128_HMAC_SHA1_32": 16 + 14, tag 4, false, false, None;
    // rtpengine's NULL-cipher suites (HMAC-SHA1 only; 128-bit key as the AES-CM suites).
    NULL_HMAC_SHA1_80 = "NULL_HMAC_SHA1_80": 16 + 14, tag 10, false, false, None;
    NULL_HMAC_SHA1_32 = "NULL_HMAC_SHA1_32": 16 + 14, tag 4, false, false, None;
    // FreeSWITCH spellings (freeswitch#691, #1251).
    AES_CM_192_HMAC_SHA1_80 = "AES_CM_192_HMAC_SHA1_80": 24 + 14, tag 10, false, false, Some("AES_192_CM_HMAC_SHA1_80");
    AES_CM_192_HMAC_SHA1_32 = "AES_CM_192_HMAC_SHA1_32": 24 + 14, tag 4, false, false, Some("AES_192_CM_HMAC_SHA1_32");
    AES_CM_256_HMAC_SHA1_80 = "AES_CM_256_HMAC_SHA1_80": 32 + 14, tag 10, false, false, Some("AES_256_CM_HMAC_SHA1_80");
    AES_CM_256_HMAC_SHA1_32 = "AES_CM_256_HMAC_SHA1_32": 32 + 14, tag 4, false, false, Some("AES_256_CM_HMAC_SHA1_32");
    AEAD_AES_128_GCM_8 = "AEAD_AES_128_GCM_8": 16 + 12, tag 8, true, false, None;
    AEAD_AES_256_GCM_8 = "AEAD_AES_256_GCM_8": 32 + 12, tag 8, true, false, None;
}

impl CryptoSuite {
    /// Any name (RFC 4568 §9.1 `srtp-crypto-suite = 1*(ALPHA / DIGIT / "_")`, not checked
    /// here; the `a=crypto` parser checks it).
    pub fn new(name: &str) -> Self {
        Self::KNOWN.iter().find(|k| k.name() == name).cloned().unwrap_or_else(|| Self(Cow::Owned(name.to_owned())))
    }

    /// The name as written in SDP.
    pub fn name(&self) -> &str {
        &self.0
    }

    /// Master key + master salt length, for a known suite.
    pub fn key_salt_len(&self) -> Option<usize> {
        self.params().map(|p| p.key_len + p.salt_len)
    }
}

impl fmt::Display for CryptoSuite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Debug for CryptoSuite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CryptoSuite({})", self.name())
    }
}
