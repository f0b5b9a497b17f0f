//! The SDES `a=crypto` attribute (RFC 4568 §9.1 grammar, SRTP parameters of §6 and §9.2).
//!
//! ```text
//! a=crypto:<tag> 1*WSP <crypto-suite> 1*WSP <key-params> *(1*WSP <session-param>)
//! key-params = key-param *(";" key-param)          key-param = key-method ":" key-info
//! inline:<base64(key||salt)>["|"lifetime]["|"mki-value":"mki-length]
//! ```
//! Parsing accepts padded and unpadded base64 and any run of spaces/tabs between fields;
//! [`Display`](std::fmt::Display) writes the canonical form (single spaces, padded base64),
//! which parses back to an equal value.

use crate::suite::CryptoSuite;
use crate::{Error, b64};
use sha2::Digest as _;
use std::fmt;
use subtle::ConstantTimeEq as _;
use zeroize::Zeroizing;

/// Largest lifetime an SRTP master key may have (RFC 3711 §9.2: 2^48 SRTP packets).
const MAX_LIFETIME: u128 = 1 << 48;

/// One `a=crypto` attribute value (what follows `a=crypto:`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CryptoAttribute {
    /// Tag (RFC 4568 §4.1: 1 to 9 digits, unique within the media section).
    pub tag: u32,
    /// Crypto-suite (§6.2).
    pub suite: CryptoSuite,
    /// One or more key parameters (§6.1); several keys all carry an MKI of one length.
    pub keys: Vec<KeyParam>,
    /// Session parameters in order (§6.3).
    pub params: Vec<SessionParam>,
}

/// One key-param (RFC 4568 §5.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyParam {
    /// `inline:` — the only key method registered for SRTP (§6.1).
    Inline(InlineKey),
    /// Another key method, kept verbatim (§9.1 `key-method-ext`).
    Other {
        /// Key method name.
        method: String,
        /// Key info text.
        info: String,
    },
}

/// An `inline:` SRTP key: master key || master salt, optional lifetime and MKI (§6.1).
/// The key material is zeroized on drop and never printed by `Debug`.
#[derive(Clone)]
pub struct InlineKey {
    key_salt: Zeroizing<Vec<u8>>,
    /// Master key lifetime in packets.
    pub lifetime: Option<Lifetime>,
    /// Master key identifier (value and length).
    pub mki: Option<Mki>,
}

/// Master key lifetime (§6.1: `["2^"] 1*DIGIT` packets); the written form is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lifetime {
    /// Decimal packet count.
    Packets(u64),
    /// `2^n` packets.
    PowerOfTwo(u8),
}

/// MKI (§6.1: `mki-value ":" mki-length`, length 1..128 octets): the value as it appears
/// in SRTP packets, big-endian in exactly `length` octets.
#[derive(Clone, PartialEq, Eq)]
pub struct Mki {
    bytes: Vec<u8>,
}

/// `FEC_ORDER` values (§6.3.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FecOrder {
    /// FEC is applied before SRTP processing by the sender (the default).
    FecSrtp,
    /// SRTP processing precedes FEC.
    SrtpFec,
}

/// A session parameter (RFC 4568 §6.3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionParam {
    /// `KDR=n`: key derivation rate 2^n (§6.3.1; n = 0..24).
    Kdr(u8),
    /// `UNENCRYPTED_SRTP` (§6.3.2).
    UnencryptedSrtp,
    /// `UNENCRYPTED_SRTCP` (§6.3.2).
    UnencryptedSrtcp,
    /// `UNAUTHENTICATED_SRTP` (§6.3.3).
    UnauthenticatedSrtp,
    /// `FEC_ORDER=` (§6.3.4).
    FecOrder(FecOrder),
    /// `FEC_KEY=key-params` (§6.3.5): separate master key(s) for the FEC stream.
    FecKey(Vec<KeyParam>),
    /// `WSH=n`: SRTP replay window size hint, at least 64 (§6.3.6).
    Wsh(u32),
    /// Any other parameter, verbatim. Without a leading `-` it is mandatory: a receiver that
    /// does not understand it must treat the attribute as invalid (§6.3.7, §9.1).
    Extension(String),
}

impl SessionParam {
    /// True for an unknown parameter without the optional `-` prefix.
    pub fn is_unknown_mandatory(&self) -> bool {
        matches!(self, Self::Extension(e) if !e.starts_with('-'))
    }
}

impl CryptoAttribute {
    /// The attribute name.
    pub const NAME: &'static str = "crypto";

    /// Parses an attribute value (the text after `a=crypto:`). Error offsets count from
    /// the start of `value`.
    pub fn parse(value: &str) -> Result<Self, Error> {
        let toks = wsp_tokens(value);
        let mut it = toks.iter().copied();
        let (tag_off, tag) = it.next().ok_or(Error::Syntax { offset: 0, what: "tag" })?;
        if tag_off != 0 || tag.is_empty() || tag.len() > 9 || !tag.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Error::Syntax { offset: tag_off, what: "tag (1 to 9 digits)" });
        }
        let tag = tag.parse::<u32>().map_err(|_| Error::Syntax { offset: tag_off, what: "tag" })?;
        let (suite_off, suite) =
            it.next().ok_or(Error::Syntax { offset: value.len(), what: "crypto-suite" })?;
        if !suite.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(Error::Syntax { offset: suite_off, what: "crypto-suite (ALPHA / DIGIT / \"_\")" });
        }
        let suite = CryptoSuite::new(suite);
        let (keys_off, keys) =
            it.next().ok_or(Error::Syntax { offset: value.len(), what: "key-params" })?;
        let keys = parse_key_params(keys, keys_off, &suite)?;
        let params = it.map(|(off, tok)| parse_session_param(tok, off, &suite)).collect::<Result<_, _>>()?;
        Ok(Self { tag, suite, keys, params })
    }

    /// The `inline:` keys in order.
    pub fn inline_keys(&self) -> impl Iterator<Item = &InlineKey> {
        self.keys.iter().filter_map(|k| match k {
            KeyParam::Inline(i) => Some(i),
            KeyParam::Other { .. } => None,
        })
    }

    /// True if the session parameter list contains `p`.
    pub fn has_param(&self, p: &SessionParam) -> bool {
        self.params.contains(p)
    }

    /// `crypto:<value>`, ready for [`crate::Sdp::insert_attribute`].
    pub fn to_attribute(&self) -> String {
        format!("{}:{self}", Self::NAME)
    }
}

/// Splits at runs of SP / HTAB (RFC 4568 `1*WSP`), yielding `(offset, token)`.
fn wsp_tokens(s: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in s.char_indices() {
        match (c == ' ' || c == '\t', start) {
            (true, Some(st)) => {
                out.push((st, s.get(st..i).unwrap_or_default()));
                start = None;
            }
            (false, None) => start = Some(i),
            _ => {}
        }
    }
    if let Some(st) = start {
        out.push((st, s.get(st..).unwrap_or_default()));
    }
    out
}

/// Splits `s` at `sep`, yielding `(offset, part)`.
fn split_offsets(s: &str, sep: char) -> impl Iterator<Item = (usize, &str)> {
    s.split(sep).scan(0usize, move |pos, part| {
        let start = *pos;
        *pos = start + part.len() + sep.len_utf8();
        Some((start, part))
    })
}

fn parse_key_params(text: &str, base: usize, suite: &CryptoSuite) -> Result<Vec<KeyParam>, Error> {
    let mut keys = Vec::new();
    for (off, kp) in split_offsets(text, ';') {
        let off = base + off;
        let (method, info) = kp.split_once(':').ok_or(Error::Syntax { offset: off, what: "key-method \":\" key-info" })?;
        if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(Error::Syntax { offset: off, what: "key-method" });
        }
        keys.push(if method == "inline" {
            KeyParam::Inline(InlineKey::parse(info, off + method.len() + 1, suite)?)
        } else {
            KeyParam::Other { method: method.to_owned(), info: info.to_owned() }
        });
    }
    // §6.1: with several keys every key carries an MKI, all of the same length.
    if keys.len() > 1 {
        let lens: Vec<Option<usize>> = keys
            .iter()
            .map(|k| match k {
                KeyParam::Inline(i) => i.mki.as_ref().map(Mki::len),
                KeyParam::Other { .. } => Some(0),
            })
            .collect();
        if lens.iter().any(Option::is_none) {
            return Err(Error::Syntax { offset: base, what: "several keys: every key needs an MKI" });
        }
        if lens.windows(2).any(|w| w.first() != w.get(1)) {
            return Err(Error::Syntax { offset: base, what: "several keys: MKI lengths differ" });
        }
    }
    Ok(keys)
}

impl InlineKey {
    /// A key from its parts; `key_salt` is master key || master salt.
    pub fn new(key_salt: Vec<u8>, lifetime: Option<Lifetime>, mki: Option<Mki>) -> Self {
        Self { key_salt: Zeroizing::new(key_salt), lifetime, mki }
    }

    /// Parses `key-salt ["|" lifetime] ["|" mki]`; `base` is its offset for errors.
    fn parse(info: &str, base: usize, suite: &CryptoSuite) -> Result<Self, Error> {
        let mut parts = split_offsets(info, '|');
        let (_, key_b64) = parts.next().unwrap_or((0, ""));
        if key_b64.is_empty() {
            return Err(Error::Syntax { offset: base, what: "base64 key||salt" });
        }
        let key_salt = Zeroizing::new(b64::decode(key_b64, base)?);
        if let Some(expected) = suite.key_salt_len()
            && key_salt.len() != expected
        {
            return Err(Error::KeyLength { offset: base, suite: suite.to_string(), expected, got: key_salt.len() });
        }
        let (mut lifetime, mut mki) = (None, None);
        for (off, part) in parts {
            let off = base + off;
            if mki.is_some() {
                return Err(Error::Syntax { offset: off, what: "nothing may follow the MKI" });
            }
            if part.contains(':') {
                mki = Some(Mki::parse(part, off)?);
            } else if lifetime.is_none() {
                let l = Lifetime::parse(part, off)?;
                if suite.params().is_some() && l.packets() > MAX_LIFETIME {
                    return Err(Error::Range { offset: off, what: "lifetime exceeds 2^48 packets (RFC 3711 §9.2)" });
                }
                lifetime = Some(l);
            } else {
                return Err(Error::Syntax { offset: off, what: "MKI (value:length) after the lifetime" });
            }
        }
        Ok(Self { key_salt, lifetime, mki })
    }

    /// Master key || master salt.
    pub fn key_salt(&self) -> &[u8] {
        &self.key_salt
    }

    /// `(master key, master salt)` split by the suite's lengths (`None` for an unknown
    /// suite or a length that does not match).
    pub fn split(&self, suite: &CryptoSuite) -> Option<(&[u8], &[u8])> {
        let p = suite.params()?;
        (self.key_salt.len() == p.key_len + p.salt_len).then(|| self.key_salt.split_at(p.key_len))
    }

    /// A non-secret identifier of the key material: the first 8 octets of SHA-256(key||salt)
    /// in hex, for logs and `mediasec sdp inspect`.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.key_salt)
    }
}

/// A non-secret identifier of secret bytes: the first 8 octets of SHA-256 in hex.
pub fn fingerprint(secret: &[u8]) -> String {
    sha2::Sha256::digest(secret).iter().take(8).map(|b| format!("{b:02x}")).collect()
}

impl PartialEq for InlineKey {
    fn eq(&self, other: &Self) -> bool {
        bool::from(self.key_salt.as_slice().ct_eq(other.key_salt.as_slice()))
            && self.lifetime == other.lifetime
            && self.mki == other.mki
    }
}

impl Eq for InlineKey {}

impl fmt::Debug for InlineKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InlineKey")
            .field("len", &self.key_salt.len())
            .field("fingerprint", &self.fingerprint())
            .field("lifetime", &self.lifetime)
            .field("mki", &self.mki)
            .finish()
    }
}

fn parse_decimal<T: std::str::FromStr>(s: &str, off: usize, what: &'static str) -> Result<T, Error> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::Syntax { offset: off, what });
    }
    s.parse().map_err(|_| Error::Range { offset: off, what })
}

impl Lifetime {
    fn parse(s: &str, off: usize) -> Result<Self, Error> {
        let l = match s.strip_prefix("2^") {
            Some(exp) => {
                let e: u8 = parse_decimal(exp, off + 2, "lifetime exponent")?;
                if e > 64 {
                    return Err(Error::Range { offset: off + 2, what: "lifetime exponent" });
                }
                Self::PowerOfTwo(e)
            }
            None => Self::Packets(parse_decimal(s, off, "lifetime")?),
        };
        if l.packets() == 0 {
            return Err(Error::Range { offset: off, what: "lifetime must be at least 1 packet" });
        }
        Ok(l)
    }

    /// The lifetime in packets.
    pub fn packets(self) -> u128 {
        match self {
            Self::Packets(n) => u128::from(n),
            Self::PowerOfTwo(e) => 1u128 << e,
        }
    }
}

impl fmt::Display for Lifetime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Packets(n) => write!(f, "{n}"),
            Self::PowerOfTwo(e) => write!(f, "2^{e}"),
        }
    }
}

impl Mki {
    /// An MKI of `length` octets (1..=128) holding `value`.
    pub fn new(value: u64, length: usize) -> Result<Self, Error> {
        Self::from_decimal(&value.to_string(), length, 0)
    }

    fn parse(s: &str, off: usize) -> Result<Self, Error> {
        let (value, len) = s.split_once(':').ok_or(Error::Syntax { offset: off, what: "MKI value:length" })?;
        let length: usize = parse_decimal(len, off + value.len() + 1, "MKI length (1*3DIGIT)")?;
        if len.len() > 3 {
            return Err(Error::Syntax { offset: off + value.len() + 1, what: "MKI length (1*3DIGIT)" });
        }
        if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Error::Syntax { offset: off, what: "MKI value" });
        }
        Self::from_decimal(value, length, off)
    }

    fn from_decimal(digits: &str, length: usize, off: usize) -> Result<Self, Error> {
        if !(1..=128).contains(&length) {
            return Err(Error::Range { offset: off, what: "MKI length must be 1..128 octets" });
        }
        let mut bytes = vec![0u8; length];
        for d in digits.bytes() {
            let mut carry = u16::from(d.wrapping_sub(b'0'));
            for b in bytes.iter_mut().rev() {
                let v = u16::from(*b) * 10 + carry;
                *b = (v & 0xff) as u8;
                carry = v >> 8;
            }
            if carry != 0 {
                return Err(Error::Range { offset: off, what: "MKI value does not fit in its length" });
            }
        }
        Ok(Self { bytes })
    }

    /// The MKI as carried in SRTP packets (big-endian, `len()` octets).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// MKI length in octets.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Always false (an MKI has 1..128 octets); present for API symmetry with `len`.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The value in decimal, as written in SDP.
    pub fn decimal(&self) -> String {
        let mut n = self.bytes.clone();
        let mut digits = Vec::new();
        loop {
            let mut rem = 0u16;
            for b in &mut n {
                let v = (rem << 8) | u16::from(*b);
                *b = (v / 10) as u8;
                rem = v % 10;
            }
            digits.push(b'0' + rem as u8);
            if n.iter().all(|b| *b == 0) {
                break;
            }
        }
        digits.iter().rev().map(|d| char::from(*d)).collect()
    }
}

impl fmt::Display for Mki {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.decimal(), self.len())
    }
}

impl fmt::Debug for Mki {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Mki({self})")
    }
}

fn parse_session_param(tok: &str, off: usize, suite: &CryptoSuite) -> Result<SessionParam, Error> {
    let (name, value) = match tok.split_once('=') {
        Some((n, v)) => (n, Some(v)),
        None => (tok, None),
    };
    let voff = off + name.len() + 1;
    Ok(match (name, value) {
        ("KDR", Some(v)) => {
            let n: u8 = parse_decimal(v, voff, "KDR (0..24)")?;
            if v.len() > 2 || n > 24 {
                return Err(Error::Range { offset: voff, what: "KDR (0..24)" });
            }
            SessionParam::Kdr(n)
        }
        ("UNENCRYPTED_SRTP", None) => SessionParam::UnencryptedSrtp,
        ("UNENCRYPTED_SRTCP", None) => SessionParam::UnencryptedSrtcp,
        ("UNAUTHENTICATED_SRTP", None) => SessionParam::UnauthenticatedSrtp,
        ("FEC_ORDER", Some("FEC_SRTP")) => SessionParam::FecOrder(FecOrder::FecSrtp),
        ("FEC_ORDER", Some("SRTP_FEC")) => SessionParam::FecOrder(FecOrder::SrtpFec),
        ("FEC_ORDER", Some(_)) => return Err(Error::Syntax { offset: voff, what: "FEC_ORDER=FEC_SRTP|SRTP_FEC" }),
        ("FEC_KEY", Some(v)) => SessionParam::FecKey(parse_key_params(v, voff, suite)?),
        ("WSH", Some(v)) => {
            let n: u32 = parse_decimal(v, voff, "WSH")?;
            if n < 64 {
                return Err(Error::Range { offset: voff, what: "WSH must be at least 64" });
            }
            SessionParam::Wsh(n)
        }
        ("KDR" | "UNENCRYPTED_SRTP" | "UNENCRYPTED_SRTCP" | "UNAUTHENTICATED_SRTP" | "FEC_ORDER" | "FEC_KEY" | "WSH", _) => {
            return Err(Error::Syntax { offset: off, what: "malformed session parameter" });
        }
        _ => SessionParam::Extension(tok.to_owned()),
    })
}

impl fmt::Display for KeyParam {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Inline(k) => {
                write!(f, "inline:{}", b64::encode(&k.key_salt))?;
                if let Some(l) = k.lifetime {
                    write!(f, "|{l}")?;
                }
                if let Some(m) = &k.mki {
                    write!(f, "|{m}")?;
                }
                Ok(())
            }
            Self::Other { method, info } => write!(f, "{method}:{info}"),
        }
    }
}

fn write_key_params(f: &mut fmt::Formatter<'_>, keys: &[KeyParam]) -> fmt::Result {
    for (i, k) in keys.iter().enumerate() {
        if i > 0 {
            f.write_str(";")?;
        }
        write!(f, "{k}")?;
    }
    Ok(())
}

impl fmt::Display for SessionParam {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Kdr(n) => write!(f, "KDR={n}"),
            Self::UnencryptedSrtp => f.write_str("UNENCRYPTED_SRTP"),
            Self::UnencryptedSrtcp => f.write_str("UNENCRYPTED_SRTCP"),
            Self::UnauthenticatedSrtp => f.write_str("UNAUTHENTICATED_SRTP"),
            Self::FecOrder(FecOrder::FecSrtp) => f.write_str("FEC_ORDER=FEC_SRTP"),
            Self::FecOrder(FecOrder::SrtpFec) => f.write_str("FEC_ORDER=SRTP_FEC"),
            Self::FecKey(keys) => {
                f.write_str("FEC_KEY=")?;
                write_key_params(f, keys)
            }
            Self::Wsh(n) => write!(f, "WSH={n}"),
            Self::Extension(e) => f.write_str(e),
        }
    }
}

impl fmt::Display for CryptoAttribute {
    /// The canonical attribute value (without `a=crypto:`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} ", self.tag, self.suite)?;
        write_key_params(f, &self.keys)?;
        for p in &self.params {
            write!(f, " {p}")?;
        }
        Ok(())
    }
}
