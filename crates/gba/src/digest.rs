//! HTTP Digest AKA (RFC 3310, AKAv1-MD5) on top of HTTP Digest (RFC 2617 §3.2):
//! the `WWW-Authenticate`, `Authorization` and `Authentication-Info` headers, the AKA nonce
//! `base64(RAND || AUTN || server data)` (RFC 3310 §3.2) and the request-digest / rspauth
//! computations (RFC 2617 §3.2.2, §3.2.3) with password = RES as raw octets (RFC 3310 §3.3).
//! The parsers never panic on any input.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use md5::{Digest as _, Md5};

use crate::GbaError;

/// The algorithm of Ub (RFC 3310 §3.1).
pub const ALGORITHM: &str = "AKAv1-MD5";

/// The algorithm of a NAF's HTTP Digest on Ua (TS 24.109 §5.2, RFC 2617 `MD5`): username =
/// B-TID, password = base64 of Ks_NAF (TS 33.220 §4.5.3) — the same request-digest
/// ([`request_digest`]) with another password. Parse with [`Challenge::parse_with`] /
/// [`Credentials::parse_with`], write with [`Challenge::to_header_with`].
pub const NAF_ALGORITHM: &str = "MD5";

/// Longest header value the parsers accept (bounds work on hostile input).
pub const MAX_HEADER_LEN: usize = 8192;

/// Quality of protection (RFC 2617 §3.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qop {
    /// Authentication only.
    Auth,
    /// Authentication with integrity protection of the entity body.
    AuthInt,
}

impl Qop {
    /// Token form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auth => "auth",
            Self::AuthInt => "auth-int",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        if s.eq_ignore_ascii_case("auth") {
            Some(Self::Auth)
        } else if s.eq_ignore_ascii_case("auth-int") {
            Some(Self::AuthInt)
        } else {
            None
        }
    }
}

/// The AKA nonce (RFC 3310 §3.2): RAND (16) || AUTN (16) || optional server data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AkaNonce {
    /// RAND.
    pub rand: [u8; 16],
    /// AUTN.
    pub autn: [u8; 16],
    /// Server-specific data (opaque to the UE).
    pub server_data: Vec<u8>,
}

impl AkaNonce {
    /// base64 of the concatenation.
    pub fn encode(&self) -> String {
        let mut v = Vec::with_capacity(32 + self.server_data.len());
        v.extend_from_slice(&self.rand);
        v.extend_from_slice(&self.autn);
        v.extend_from_slice(&self.server_data);
        STANDARD.encode(v)
    }

    /// Decode; at least 32 octets are required.
    pub fn decode(nonce: &str) -> Result<Self, GbaError> {
        let raw = STANDARD.decode(nonce).map_err(|_| GbaError::Base64 { what: "nonce" })?;
        let got = raw.len();
        let short = GbaError::Length { what: "nonce (RAND||AUTN)", expected: 32, got };
        let rand = raw.get(..16).and_then(|s| <[u8; 16]>::try_from(s).ok()).ok_or(short.clone())?;
        let autn = raw.get(16..32).and_then(|s| <[u8; 16]>::try_from(s).ok()).ok_or(short)?;
        Ok(Self { rand, autn, server_data: raw.get(32..).unwrap_or_default().to_vec() })
    }
}

/// `WWW-Authenticate: Digest ...` of the BSF (RFC 3310 §3.1, TS 24.109 §4.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// realm: the BSF FQDN (TS 24.109).
    pub realm: String,
    /// The AKA nonce, base64.
    pub nonce: String,
    /// qop-options offered.
    pub qop: Vec<Qop>,
    /// opaque, echoed by the client.
    pub opaque: Option<String>,
    /// stale=TRUE: the previous nonce was not usable, retry with this one.
    pub stale: bool,
}

/// `Authorization: Digest ...` of the UE (RFC 2617 §3.2.2, RFC 3310 §3.3/§3.4).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Credentials {
    /// username: the IMPI.
    pub username: String,
    /// realm.
    pub realm: String,
    /// nonce (empty in the initial request of TS 24.109 §4.2).
    pub nonce: String,
    /// digest-uri.
    pub uri: String,
    /// request-digest, 32 hex digits (empty in the initial request).
    pub response: String,
    /// algorithm, if sent.
    pub algorithm: Option<String>,
    /// message-qop.
    pub qop: Option<Qop>,
    /// nonce-count, 8 hex digits.
    pub nc: Option<String>,
    /// cnonce.
    pub cnonce: Option<String>,
    /// opaque.
    pub opaque: Option<String>,
    /// auts (RFC 3310 §3.4): base64(AUTS) on synchronisation failure.
    pub auts: Option<String>,
}

/// `Authentication-Info` (RFC 2617 §3.2.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthenticationInfo {
    /// message-qop echoed.
    pub qop: Option<Qop>,
    /// response-auth.
    pub rspauth: String,
    /// cnonce echoed.
    pub cnonce: Option<String>,
    /// nc echoed.
    pub nc: Option<String>,
}

/// The inputs of one request-digest (RFC 2617 §3.2.2.1).
#[derive(Debug, Clone, Copy)]
pub struct DigestInput<'a> {
    /// username.
    pub username: &'a str,
    /// realm.
    pub realm: &'a str,
    /// nonce as sent (base64 text).
    pub nonce: &'a str,
    /// Request method; empty for rspauth (RFC 2617 §3.2.3).
    pub method: &'a str,
    /// digest-uri.
    pub uri: &'a str,
    /// qop with its nc and cnonce; `None` for the RFC 2069 form.
    pub qop: Option<(Qop, &'a str, &'a str)>,
    /// Entity body (hashed only for auth-int).
    pub body: &'a [u8],
}

fn md5_hex(parts: &[&[u8]]) -> String {
    let mut h = Md5::new();
    for p in parts {
        h.update(p);
    }
    hex::encode(h.finalize())
}

/// request-digest (RFC 2617 §3.2.2.1) with algorithm MD5 as AKAv1-MD5 prescribes
/// (RFC 3310 §3.3): A1 = username ":" realm ":" password, A2 = method ":" uri
/// [":" H(entity-body)]. `password` is RES as raw octets (or empty for auts, §3.4).
pub fn request_digest(password: &[u8], d: &DigestInput<'_>) -> String {
    // HA1 is a password equivalent (RFC 7616 §5.13): wiped when dropped.
    let ha1 = zeroize::Zeroizing::new(md5_hex(&[d.username.as_bytes(), b":", d.realm.as_bytes(), b":", password]));
    let ha2 = match d.qop {
        Some((Qop::AuthInt, ..)) => {
            let hb = md5_hex(&[d.body]);
            md5_hex(&[d.method.as_bytes(), b":", d.uri.as_bytes(), b":", hb.as_bytes()])
        }
        _ => md5_hex(&[d.method.as_bytes(), b":", d.uri.as_bytes()]),
    };
    match d.qop {
        Some((qop, nc, cnonce)) => md5_hex(&[
            ha1.as_bytes(),
            b":",
            d.nonce.as_bytes(),
            b":",
            nc.as_bytes(),
            b":",
            cnonce.as_bytes(),
            b":",
            qop.as_str().as_bytes(),
            b":",
            ha2.as_bytes(),
        ]),
        None => md5_hex(&[ha1.as_bytes(), b":", d.nonce.as_bytes(), b":", ha2.as_bytes()]),
    }
}

/// Constant-time comparison of two digest strings.
pub fn digest_eq(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

// ---------------------------------------------------------------------------------------
// Header grammar (RFC 2617 §1.2 / §3.2; RFC 7235 §2.1): auth-param = token "=" (token |
// quoted-string), comma separated.

fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

fn perr(what: &'static str, offset: usize, reason: &'static str) -> GbaError {
    GbaError::Parse { what, offset, reason }
}

/// Parse `name=value` pairs starting at byte `start` of `s`. Names are lowercased.
fn parse_params(what: &'static str, s: &str, start: usize) -> Result<Vec<(String, String)>, GbaError> {
    let b = s.as_bytes();
    let mut i = start;
    let mut out: Vec<(String, String)> = Vec::new();
    let at = |i: usize| b.get(i).copied();
    loop {
        while matches!(at(i), Some(b' ' | b'\t' | b'\r' | b'\n' | b',')) {
            i += 1;
        }
        if i >= b.len() {
            break;
        }
        let name_start = i;
        while at(i).is_some_and(is_tchar) {
            i += 1;
        }
        if i == name_start {
            return Err(perr(what, i, "expected a parameter name"));
        }
        let name = s.get(name_start..i).unwrap_or_default().to_ascii_lowercase();
        while matches!(at(i), Some(b' ' | b'\t')) {
            i += 1;
        }
        if at(i) != Some(b'=') {
            return Err(perr(what, i, "expected '='"));
        }
        i += 1;
        while matches!(at(i), Some(b' ' | b'\t')) {
            i += 1;
        }
        let value = if at(i) == Some(b'"') {
            i += 1;
            let mut v = Vec::new();
            loop {
                match at(i) {
                    None => return Err(perr(what, i, "unterminated quoted-string")),
                    Some(b'"') => {
                        i += 1;
                        break;
                    }
                    Some(b'\\') => {
                        let c = at(i + 1).ok_or_else(|| perr(what, i, "dangling escape"))?;
                        v.push(c);
                        i += 2;
                    }
                    Some(c) => {
                        v.push(c);
                        i += 1;
                    }
                }
            }
            String::from_utf8(v).map_err(|_| perr(what, i, "quoted-string is not UTF-8"))?
        } else {
            let vs = i;
            while at(i).is_some_and(is_tchar) {
                i += 1;
            }
            if i == vs {
                return Err(perr(what, i, "expected a token or quoted-string"));
            }
            s.get(vs..i).unwrap_or_default().to_owned()
        };
        if out.iter().any(|(n, _)| *n == name) {
            return Err(perr(what, name_start, "duplicate parameter"));
        }
        out.push((name, value));
        while matches!(at(i), Some(b' ' | b'\t')) {
            i += 1;
        }
        match at(i) {
            None | Some(b',') => {}
            Some(_) => return Err(perr(what, i, "expected ',' between parameters")),
        }
    }
    Ok(out)
}

/// Strip the `Digest` scheme and parse its parameters.
fn parse_digest(what: &'static str, s: &str) -> Result<Vec<(String, String)>, GbaError> {
    if s.len() > MAX_HEADER_LEN {
        return Err(perr(what, MAX_HEADER_LEN, "header too long"));
    }
    let lead = s.len() - s.trim_start().len();
    let rest = s.get(lead..).unwrap_or_default();
    let scheme_ok = rest.get(..6).is_some_and(|p| p.eq_ignore_ascii_case("digest"))
        && matches!(rest.as_bytes().get(6), Some(b' ' | b'\t' | b'\r' | b'\n'));
    if !scheme_ok {
        return Err(perr(what, lead, "scheme is not Digest"));
    }
    parse_params(what, s, lead + 6)
}

fn take(params: &mut Vec<(String, String)>, name: &str) -> Option<String> {
    let pos = params.iter().position(|(n, _)| n == name)?;
    Some(params.swap_remove(pos).1)
}

fn quote(v: &str) -> String {
    let mut o = String::with_capacity(v.len() + 2);
    o.push('"');
    for c in v.chars() {
        if c == '"' || c == '\\' {
            o.push('\\');
        }
        o.push(c);
    }
    o.push('"');
    o
}

fn check_algorithm(alg: Option<&str>, expected: &str) -> Result<(), GbaError> {
    match alg {
        Some(a) if !a.eq_ignore_ascii_case(expected) => {
            Err(GbaError::Unsupported { param: "algorithm", value: a.to_owned() })
        }
        _ => Ok(()),
    }
}

impl Challenge {
    /// Header value for `WWW-Authenticate` (AKAv1-MD5).
    pub fn to_header(&self) -> String {
        self.to_header_with(ALGORITHM)
    }

    /// Header value for `WWW-Authenticate` with `algorithm` ([`NAF_ALGORITHM`] on Ua).
    pub fn to_header_with(&self, algorithm: &str) -> String {
        let qops: Vec<&str> = self.qop.iter().map(|q| q.as_str()).collect();
        let mut h = format!(
            "Digest realm={}, nonce={}, algorithm={algorithm}, qop={}",
            quote(&self.realm),
            quote(&self.nonce),
            quote(&qops.join(","))
        );
        if let Some(o) = &self.opaque {
            h.push_str(&format!(", opaque={}", quote(o)));
        }
        if self.stale {
            h.push_str(", stale=TRUE");
        }
        h
    }

    /// Parse a `WWW-Authenticate` value; the algorithm must be AKAv1-MD5.
    pub fn parse(s: &str) -> Result<Self, GbaError> {
        Self::parse_with(s, ALGORITHM)
    }

    /// Parse a `WWW-Authenticate` value whose algorithm must be `algorithm`.
    pub fn parse_with(s: &str, algorithm: &str) -> Result<Self, GbaError> {
        let mut p = parse_digest("WWW-Authenticate", s)?;
        let alg = take(&mut p, "algorithm").ok_or(GbaError::MissingParam("algorithm"))?;
        check_algorithm(Some(&alg), algorithm)?;
        let qop = match take(&mut p, "qop") {
            None => Vec::new(),
            Some(q) => q.split(',').map(str::trim).filter_map(Qop::parse).collect(),
        };
        Ok(Self {
            realm: take(&mut p, "realm").ok_or(GbaError::MissingParam("realm"))?,
            nonce: take(&mut p, "nonce").ok_or(GbaError::MissingParam("nonce"))?,
            qop,
            opaque: take(&mut p, "opaque"),
            stale: take(&mut p, "stale").is_some_and(|v| v.eq_ignore_ascii_case("true")),
        })
    }
}

impl Credentials {
    /// The initial request of TS 24.109 §4.2 (empty nonce and response).
    pub fn initial(impi: &str, realm: &str, uri: &str) -> Self {
        Self { username: impi.into(), realm: realm.into(), uri: uri.into(), ..Self::default() }
    }

    /// Header value for `Authorization`.
    pub fn to_header(&self) -> String {
        let mut h = format!(
            "Digest username={}, realm={}, nonce={}, uri={}, response={}",
            quote(&self.username),
            quote(&self.realm),
            quote(&self.nonce),
            quote(&self.uri),
            quote(&self.response)
        );
        if let Some(a) = &self.algorithm {
            h.push_str(&format!(", algorithm={a}"));
        }
        if let Some(q) = self.qop {
            h.push_str(&format!(", qop={}", q.as_str()));
        }
        if let Some(nc) = &self.nc {
            h.push_str(&format!(", nc={nc}"));
        }
        if let Some(c) = &self.cnonce {
            h.push_str(&format!(", cnonce={}", quote(c)));
        }
        if let Some(o) = &self.opaque {
            h.push_str(&format!(", opaque={}", quote(o)));
        }
        if let Some(a) = &self.auts {
            h.push_str(&format!(", auts={}", quote(a)));
        }
        h
    }

    /// Parse an `Authorization` value. username/realm/nonce/uri/response are required
    /// (RFC 2617 §3.2.2); if qop is present, nc and cnonce are too.
    pub fn parse(s: &str) -> Result<Self, GbaError> {
        Self::parse_with(s, ALGORITHM)
    }

    /// [`Self::parse`] where the algorithm, when given, must be `expected`.
    pub fn parse_with(s: &str, expected: &str) -> Result<Self, GbaError> {
        let mut p = parse_digest("Authorization", s)?;
        let algorithm = take(&mut p, "algorithm");
        check_algorithm(algorithm.as_deref(), expected)?;
        let qop = match take(&mut p, "qop") {
            None => None,
            Some(q) => Some(Qop::parse(&q).ok_or(GbaError::Unsupported { param: "qop", value: q })?),
        };
        let nc = take(&mut p, "nc");
        if let Some(n) = nc.as_ref().filter(|n| n.len() != 8 || !n.bytes().all(|c| c.is_ascii_hexdigit())) {
            return Err(GbaError::Unsupported { param: "nc", value: n.clone() });
        }
        let c = Self {
            username: take(&mut p, "username").ok_or(GbaError::MissingParam("username"))?,
            realm: take(&mut p, "realm").ok_or(GbaError::MissingParam("realm"))?,
            nonce: take(&mut p, "nonce").ok_or(GbaError::MissingParam("nonce"))?,
            uri: take(&mut p, "uri").ok_or(GbaError::MissingParam("uri"))?,
            response: take(&mut p, "response").ok_or(GbaError::MissingParam("response"))?,
            algorithm,
            qop,
            nc,
            cnonce: take(&mut p, "cnonce"),
            opaque: take(&mut p, "opaque"),
            auts: take(&mut p, "auts"),
        };
        if c.qop.is_some() && c.nc.is_none() {
            return Err(GbaError::MissingParam("nc"));
        }
        if c.qop.is_some() && c.cnonce.is_none() {
            return Err(GbaError::MissingParam("cnonce"));
        }
        Ok(c)
    }

    /// The digest inputs of this request (`body` is the request entity body).
    pub fn digest_input<'a>(&'a self, method: &'a str, body: &'a [u8]) -> DigestInput<'a> {
        DigestInput {
            username: &self.username,
            realm: &self.realm,
            nonce: &self.nonce,
            method,
            uri: &self.uri,
            qop: match (self.qop, &self.nc, &self.cnonce) {
                (Some(q), Some(nc), Some(cn)) => Some((q, nc.as_str(), cn.as_str())),
                _ => None,
            },
            body,
        }
    }

    /// The rspauth inputs (RFC 2617 §3.2.3): empty method, the response body.
    pub fn rspauth_input<'a>(&'a self, response_body: &'a [u8]) -> DigestInput<'a> {
        self.digest_input("", response_body)
    }
}

impl AuthenticationInfo {
    /// Header value for `Authentication-Info`.
    pub fn to_header(&self) -> String {
        let mut parts = Vec::new();
        if let Some(q) = self.qop {
            parts.push(format!("qop={}", q.as_str()));
        }
        parts.push(format!("rspauth={}", quote(&self.rspauth)));
        if let Some(c) = &self.cnonce {
            parts.push(format!("cnonce={}", quote(c)));
        }
        if let Some(n) = &self.nc {
            parts.push(format!("nc={n}"));
        }
        parts.join(", ")
    }

    /// Parse an `Authentication-Info` value (no scheme).
    pub fn parse(s: &str) -> Result<Self, GbaError> {
        if s.len() > MAX_HEADER_LEN {
            return Err(perr("Authentication-Info", MAX_HEADER_LEN, "header too long"));
        }
        let mut p = parse_params("Authentication-Info", s, 0)?;
        let qop = match take(&mut p, "qop") {
            None => None,
            Some(q) => Some(Qop::parse(&q).ok_or(GbaError::Unsupported { param: "qop", value: q })?),
        };
        Ok(Self {
            qop,
            rspauth: take(&mut p, "rspauth").ok_or(GbaError::MissingParam("rspauth"))?,
            cnonce: take(&mut p, "cnonce"),
            nc: take(&mut p, "nc"),
        })
    }
}

/// Entry point of the `gba_digest` fuzz target and its corpus replay: runs every
/// header/body parser of the Ub exchange on arbitrary bytes (they must never panic).
pub fn fuzz_parse(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = Challenge::parse(&text);
    let _ = Credentials::parse(&text);
    let _ = AuthenticationInfo::parse(&text);
    let _ = AkaNonce::decode(&text);
    let _ = crate::bootstrapping_info::BootstrappingInfo::parse(&text);
    let _ = crate::btid::Btid::parse(&text);
    let _ = crate::bsf::classify(Some(&text));
    let _ = crate::uicc::UiccType::parse(&text);
    // A GBA_U UICC fed a nonce from the network (TS 33.220 G.1).
    if let Ok(n) = AkaNonce::decode(&text) {
        let mut uicc = crate::uicc::Uicc::new(crate::milenage::Milenage::with_opc(&[0; 16], &[0; 16]), 0);
        let _ = uicc.authenticate_gba(&n.rand, &n.autn);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_escapes_round_trip() {
        let c = Credentials {
            username: "a\"b\\c@x".into(),
            realm: "r".into(),
            ..Credentials::default()
        };
        let back = Credentials::parse(&c.to_header());
        assert_eq!(back.map(|b| b.username), Ok("a\"b\\c@x".to_owned()));
    }

    #[test]
    fn errors_carry_offsets() {
        let e = Challenge::parse("Digest realm=\"x\", nonce");
        assert_eq!(
            e,
            Err(GbaError::Parse { what: "WWW-Authenticate", offset: 23, reason: "expected '='" })
        );
        assert!(matches!(Challenge::parse("Basic realm=\"x\""), Err(GbaError::Parse { offset: 0, .. })));
    }
}
