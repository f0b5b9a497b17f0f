//! KMS user identities (TS 33.328 §7.x / Annex B: "KMS UID"): the `user@domain` part of a
//! public SIP URI, and group identities with the `?` wildcard.
//!
//! A group identity is any UID string containing `?`, which matches zero or more arbitrary
//! characters: `?.sales@company.example`, `?@a.example`, `?@?`, or `?` alone (everyone).

use core::fmt;

use crate::error::KmsError;

/// A KMS UID: `user@domain`, the domain in lower case (DNS names are case-insensitive; the
/// user part is kept as is, RFC 3261 §19.1.4).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct KmsUid(String);

impl KmsUid {
    /// Parses `user@domain` (no scheme, no `?`).
    pub fn parse(s: &str) -> Result<Self, KmsError> {
        let (user, domain) = s.rsplit_once('@').ok_or_else(|| KmsError::Identity(format!("{s:?} is not user@domain")))?;
        if user.is_empty() || domain.is_empty() || s.contains('?') || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(KmsError::Identity(format!("{s:?} is not a KMS UID")));
        }
        Ok(Self(format!("{user}@{}", domain.to_ascii_lowercase())))
    }

    /// The KMS UID of a public user identity (IMPU): `sip:`/`sips:` URIs give their
    /// `user@host` (password, port, parameters and headers removed); `tel:` URIs give
    /// `number@home_domain` *(ours: TS 33.328 names SIP URIs only; a TEL URI has no domain,
    /// so the user's home domain is used)*; a bare `user@domain` is taken as is.
    pub fn from_uri(uri: &str, home_domain: &str) -> Result<Self, KmsError> {
        let lower = uri.get(..5).map(str::to_ascii_lowercase).unwrap_or_default();
        if lower.starts_with("tel:") {
            let number = uri.get(4..).unwrap_or_default();
            let number = number.split(';').next().unwrap_or_default();
            return Self::parse(&format!("{number}@{home_domain}"));
        }
        let rest = if lower.starts_with("sips:") {
            uri.get(5..).unwrap_or_default()
        } else if lower.starts_with("sip:") {
            uri.get(4..).unwrap_or_default()
        } else {
            uri
        };
        let rest = rest.split(['?', ';']).next().unwrap_or_default();
        let (userinfo, hostport) =
            rest.rsplit_once('@').ok_or_else(|| KmsError::Identity(format!("{uri:?} has no user part")))?;
        let user = canonical_user(userinfo.split(':').next().unwrap_or_default());
        let host = if hostport.starts_with('[') {
            hostport.split_inclusive(']').next().unwrap_or_default()
        } else {
            hostport.split(':').next().unwrap_or_default()
        };
        Self::parse(&format!("{user}@{host}"))
    }

    /// The UID as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The domain part.
    pub fn domain(&self) -> &str {
        self.0.rsplit_once('@').map_or("", |(_, d)| d)
    }
}

impl TryFrom<String> for KmsUid {
    type Error = KmsError;
    fn try_from(s: String) -> Result<Self, KmsError> {
        Self::parse(&s)
    }
}

impl From<KmsUid> for String {
    fn from(u: KmsUid) -> Self {
        u.0
    }
}

impl fmt::Display for KmsUid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The user part of a SIP URI in the one form RFC 3261 §19.1.4 makes equal: an escape `%HH`
/// of an unreserved character is that character (`%63arol` is `carol`); any other escape is
/// kept, with upper-case hex, so that it cannot become a delimiter such as `@`.
fn canonical_user(user: &str) -> String {
    let b = user.as_bytes();
    let mut out = String::with_capacity(user.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        let hex = b.get(i + 1..i + 3).and_then(|h| core::str::from_utf8(h).ok()).and_then(|h| u8::from_str_radix(h, 16).ok());
        match (c, hex) {
            (b'%', Some(v)) => {
                if v.is_ascii_alphanumeric() || b"-_.!~*'()".contains(&v) {
                    out.push(char::from(v));
                } else {
                    out.push_str(&format!("%{v:02X}"));
                }
                i += 3;
            }
            _ => {
                // Not an escape: copy the (possibly multi-byte) character as is.
                let ch = user.get(i..).and_then(|r| r.chars().next()).unwrap_or(char::REPLACEMENT_CHARACTER);
                out.push(ch);
                i += ch.len_utf8().max(1);
            }
        }
    }
    out
}

/// A recipient identity: a KMS UID or a group identity (contains `?`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Pattern(String);

impl Pattern {
    /// Parses an identity or group identity; the part after the last `@` is lower-cased.
    pub fn parse(s: &str) -> Result<Self, KmsError> {
        if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(KmsError::Identity(format!("{s:?} is not an identity or group identity")));
        }
        Ok(Self(match s.rsplit_once('@') {
            Some((user, domain)) => format!("{user}@{}", domain.to_ascii_lowercase()),
            None => s.to_owned(),
        }))
    }

    /// The pattern text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is a group identity (contains the wildcard).
    pub fn is_group(&self) -> bool {
        self.0.contains('?')
    }

    /// Whether `uid` is this identity or a member of this group.
    pub fn matches(&self, uid: &KmsUid) -> bool {
        wildcard_match(self.0.as_bytes(), uid.as_str().as_bytes())
    }

    /// Whether every identity `other` can stand for is also matched by `self` (so a caller
    /// allowed `self` may be granted `other`). Sound: `self` matches the text of `other`
    /// with `other`'s wildcards read as literal characters only if each of them is absorbed
    /// by a wildcard of `self`, which then absorbs whatever it expands to.
    pub fn covers(&self, other: &Self) -> bool {
        wildcard_match(self.0.as_bytes(), other.0.as_bytes())
    }
}

impl TryFrom<String> for Pattern {
    type Error = KmsError;
    fn try_from(s: String) -> Result<Self, KmsError> {
        Self::parse(&s)
    }
}

impl From<Pattern> for String {
    fn from(p: Pattern) -> Self {
        p.0
    }
}

impl From<KmsUid> for Pattern {
    fn from(u: KmsUid) -> Self {
        Self(u.0)
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `?` = zero or more characters; everything else literal. Linear-space greedy matcher with
/// backtracking to the last wildcard (O(|p|·|s|) worst case, no recursion).
fn wildcard_match(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        match p.get(pi) {
            Some(b'?') => {
                star = Some((pi, si));
                pi += 1;
            }
            Some(c) if Some(c) == s.get(si) => {
                pi += 1;
                si += 1;
            }
            _ => match star {
                Some((sp, ss)) => {
                    pi = sp + 1;
                    si = ss + 1;
                    star = Some((sp, ss + 1));
                }
                None => return false,
            },
        }
    }
    p.get(pi..).unwrap_or_default().iter().all(|&c| c == b'?')
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn uid(s: &str) -> KmsUid {
        KmsUid::parse(s).expect("uid")
    }

    fn pat(s: &str) -> Pattern {
        Pattern::parse(s).expect("pattern")
    }

    #[test]
    fn uid_from_uris() {
        let cases = [
            ("sip:alice@ims.example.org", "alice@ims.example.org"),
            ("SIP:Alice@IMS.Example.org;transport=udp", "Alice@ims.example.org"),
            ("sips:bob:secret@b.example:5061?subject=x", "bob@b.example"),
            ("sip:+4930123@a.example;user=phone", "+4930123@a.example"),
            ("tel:+4930123;phone-context=x", "+4930123@home.example"),
            ("carol@c.example", "carol@c.example"),
            // RFC 3261 §19.1.4: escaped unreserved characters equal themselves; an escaped
            // delimiter stays escaped (upper-case hex) and never splits the UID.
            ("sip:%63arol@a.example", "carol@a.example"),
            ("sip:car%6fl@a.example", "carol@a.example"),
            ("sip:carol%40b.example@a.example", "carol%40b.example@a.example"),
            ("sip:a%2fb%2Fc@a.example", "a%2Fb%2Fc@a.example"),
            ("sip:100%@a.example", "100%@a.example"),
        ];
        for (uri, want) in cases {
            assert_eq!(KmsUid::from_uri(uri, "home.example").expect(uri).as_str(), want, "{uri}");
        }
        for bad in ["sip:a.example", "sip:@a.example", "alice@", "a?@b", "tel:", "x y@z"] {
            assert!(KmsUid::from_uri(bad, "home.example").is_err(), "{bad}");
        }
    }

    #[test]
    fn group_examples() {
        assert!(pat("?").matches(&uid("anyone@anywhere.example")));
        assert!(pat("?@?").matches(&uid("a@b")));
        assert!(pat("?.sales@company.example").matches(&uid("jo.sales@company.example")));
        assert!(pat("?.sales@company.example").matches(&uid(".sales@company.example")));
        assert!(!pat("?.sales@company.example").matches(&uid("jo.dev@company.example")));
        assert!(!pat("?@a.example").matches(&uid("x@a.example.evil")));
        assert!(pat("?@A.Example").matches(&uid("x@a.example")));
        assert!(!pat("alice@a.example").matches(&uid("alice2@a.example")));
        assert!(pat("?@a.example").covers(&pat("?.sales@a.example")));
        assert!(!pat("?.sales@a.example").covers(&pat("?@a.example")));
        assert!(pat("?").covers(&pat("?")));
    }

    /// Reference matcher (exponential, for small inputs only).
    fn reference(p: &[u8], s: &[u8]) -> bool {
        match p.split_first() {
            None => s.is_empty(),
            Some((b'?', rest)) => (0..=s.len()).any(|i| reference(rest, &s[i..])),
            Some((c, rest)) => s.first() == Some(c) && reference(rest, &s[1..]),
        }
    }

    proptest! {
        #[test]
        fn matcher_agrees_with_reference(p in "[ab?@.]{0,8}", s in "[ab@.]{0,10}") {
            prop_assert_eq!(wildcard_match(p.as_bytes(), s.as_bytes()), reference(p.as_bytes(), s.as_bytes()));
        }

        #[test]
        fn identity_matches_itself_and_wildcards_generalise(user in "[a-z0-9.+]{1,12}", domain in "[a-z0-9.]{1,12}", cut in 0usize..12, len in 0usize..6) {
            let u = uid(&format!("{user}@{domain}"));
            prop_assert!(Pattern::from(u.clone()).matches(&u));
            prop_assert!(pat("?").matches(&u));
            let s = u.as_str();
            let a = cut.min(s.len());
            let b = (a + len).min(s.len());
            let g = pat(&format!("{}?{}", &s[..a], &s[b..]));
            prop_assert!(g.matches(&u), "{} should match {}", g, u);
        }

        #[test]
        fn covers_is_sound(p in "[ab?@]{0,6}", q in "[ab?@]{1,6}", fills in proptest::collection::vec("[ab@]{0,3}", 6)) {
            let (p, q) = (Pattern(p), Pattern(q));
            if p.covers(&q) {
                // Every instance of q (wildcards replaced by arbitrary strings) matches p.
                let mut inst = String::new();
                let mut k = 0;
                for c in q.as_str().chars() {
                    if c == '?' { inst.push_str(&fills[k % fills.len()]); k += 1; } else { inst.push(c); }
                }
                prop_assert!(wildcard_match(p.as_str().as_bytes(), inst.as_bytes()), "{} covers {} but not {}", p, q, inst);
            }
        }

        #[test]
        fn parsing_never_panics(s in "\\PC{0,40}") {
            let _ = KmsUid::from_uri(&s, "h.example");
            let _ = Pattern::parse(&s);
        }
    }
}
