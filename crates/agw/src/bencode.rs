//! Bencode, the encoding of rtpengine's ng control protocol (BitTorrent BEP 3 §"bencoding":
//! `i<decimal>e` integers, `<length>:<bytes>` strings, `l…e` lists, `d…e` dictionaries).
//!
//! Our own small codec rather than a crate: the grammar is four productions, ng needs
//! borrowed zero-copy strings, and decode errors must carry the byte offset. Decoding is
//! strict (no leading zeros, no `-0`, no trailing bytes, no duplicate dictionary keys,
//! nesting ≤ [`MAX_DEPTH`]); dictionary key order is not enforced on input (rtpengine and
//! Kamailio do not sort), and [`Value::encode`] always writes keys sorted as BEP 3 requires.

use std::borrow::Cow;

use crate::Error;

/// Deepest list/dictionary nesting accepted (ng messages use 3).
pub const MAX_DEPTH: usize = 32;

/// A bencode value. Strings are octet strings, borrowed from the input when decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value<'a> {
    /// `i…e`.
    Int(i64),
    /// `<len>:<bytes>`.
    Bytes(Cow<'a, [u8]>),
    /// `l…e`.
    List(Vec<Self>),
    /// `d…e`, in input order (encoding sorts).
    Dict(Vec<(Cow<'a, [u8]>, Self)>),
}

fn err(offset: usize, what: &'static str) -> Error {
    Error::Bencode { offset, what }
}

impl<'a> Value<'a> {
    /// A string value.
    pub fn str(s: impl Into<String>) -> Value<'static> {
        Value::Bytes(Cow::Owned(s.into().into_bytes()))
    }

    /// A dictionary from `(key, value)` pairs.
    pub fn dict<const N: usize>(entries: [(&'static str, Self); N]) -> Self {
        Value::Dict(entries.into_iter().map(|(k, v)| (Cow::Borrowed(k.as_bytes()), v)).collect())
    }

    /// Decodes exactly one value spanning all of `input`.
    pub fn decode(input: &'a [u8]) -> Result<Self, Error> {
        let (v, end) = Self::decode_prefix(input, 0)?;
        if end != input.len() {
            return Err(err(end, "trailing bytes after the value"));
        }
        Ok(v)
    }

    /// Decodes one value starting at `at`; returns it and the offset after it.
    pub fn decode_prefix(input: &'a [u8], at: usize) -> Result<(Self, usize), Error> {
        Decoder { input }.value(at, 0)
    }

    /// Appends the encoding to `out` (dictionary keys sorted, duplicates kept in order).
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Self::Int(i) => {
                out.push(b'i');
                out.extend_from_slice(i.to_string().as_bytes());
                out.push(b'e');
            }
            Self::Bytes(b) => put_bytes(b, out),
            Self::List(items) => {
                out.push(b'l');
                for v in items {
                    v.encode(out);
                }
                out.push(b'e');
            }
            Self::Dict(entries) => {
                let mut sorted: Vec<&(Cow<'a, [u8]>, Self)> = entries.iter().collect();
                sorted.sort_by(|x, y| x.0.cmp(&y.0));
                out.push(b'd');
                for (k, v) in sorted {
                    put_bytes(k, out);
                    v.encode(out);
                }
                out.push(b'e');
            }
        }
    }

    /// The encoding as a new vector.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }

    /// A copy that borrows nothing.
    pub fn into_owned(self) -> Value<'static> {
        match self {
            Self::Int(i) => Value::Int(i),
            Self::Bytes(b) => Value::Bytes(Cow::Owned(b.into_owned())),
            Self::List(l) => Value::List(l.into_iter().map(Value::into_owned).collect()),
            Self::Dict(d) => Value::Dict(d.into_iter().map(|(k, v)| (Cow::Owned(k.into_owned()), v.into_owned())).collect()),
        }
    }

    /// The value of `key` if this is a dictionary.
    pub fn get(&self, key: &str) -> Option<&Self> {
        match self {
            Self::Dict(entries) => entries.iter().find(|(k, _)| k.as_ref() == key.as_bytes()).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The string, if this is a UTF-8 string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::Bytes(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    /// The octets, if this is a string.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Self::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// The items, if this is a list.
    pub fn as_list(&self) -> Option<&[Self]> {
        match self {
            Self::List(l) => Some(l),
            _ => None,
        }
    }

    /// The integer, if this is one.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Self::Int(i) => Some(*i),
            _ => None,
        }
    }
}

fn put_bytes(b: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(b.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(b);
}

struct Decoder<'a> {
    input: &'a [u8],
}

impl<'a> Decoder<'a> {
    fn byte(&self, at: usize) -> Result<u8, Error> {
        self.input.get(at).copied().ok_or_else(|| err(at, "unexpected end of input"))
    }

    fn value(&self, at: usize, depth: usize) -> Result<(Value<'a>, usize), Error> {
        match self.byte(at)? {
            b'i' => {
                let (n, end) = self.integer(at + 1, b'e')?;
                Ok((Value::Int(n), end))
            }
            b'0'..=b'9' => {
                let (b, end) = self.string(at)?;
                Ok((Value::Bytes(Cow::Borrowed(b)), end))
            }
            b'l' | b'd' if depth >= MAX_DEPTH => Err(err(at, "nesting too deep")),
            b'l' => {
                let mut items = Vec::new();
                let mut pos = at + 1;
                while self.byte(pos)? != b'e' {
                    let (v, next) = self.value(pos, depth + 1)?;
                    items.push(v);
                    pos = next;
                }
                Ok((Value::List(items), pos + 1))
            }
            b'd' => {
                let mut entries: Vec<(Cow<'a, [u8]>, Value<'a>)> = Vec::new();
                let mut pos = at + 1;
                while self.byte(pos)? != b'e' {
                    if !self.byte(pos)?.is_ascii_digit() {
                        return Err(err(pos, "dictionary key is not a string"));
                    }
                    let (k, next) = self.string(pos)?;
                    if entries.iter().any(|(e, _)| e.as_ref() == k) {
                        return Err(err(pos, "duplicate dictionary key"));
                    }
                    let (v, next) = self.value(next, depth + 1)?;
                    entries.push((Cow::Borrowed(k), v));
                    pos = next;
                }
                Ok((Value::Dict(entries), pos + 1))
            }
            _ => Err(err(at, "expected 'i', 'l', 'd' or a digit")),
        }
    }

    /// A decimal integer ending with `end` (`-` allowed only before a non-zero value).
    fn integer(&self, at: usize, end: u8) -> Result<(i64, usize), Error> {
        let negative = self.byte(at)? == b'-';
        let start = at + usize::from(negative);
        let mut pos = start;
        let mut value: i64 = 0;
        while self.byte(pos)?.is_ascii_digit() {
            let d = i64::from(self.byte(pos)? - b'0');
            value = value
                .checked_mul(10)
                .and_then(|v| if negative { v.checked_sub(d) } else { v.checked_add(d) })
                .ok_or_else(|| err(start, "integer out of range"))?;
            pos += 1;
        }
        if pos == start {
            return Err(err(pos, "expected a digit"));
        }
        if self.byte(start)? == b'0' && (pos - start > 1 || negative) {
            return Err(err(start, "leading zero or negative zero"));
        }
        if self.byte(pos)? != end {
            return Err(err(pos, if end == b'e' { "expected 'e' after the integer" } else { "expected ':' after the length" }));
        }
        Ok((value, pos + 1))
    }

    fn string(&self, at: usize) -> Result<(&'a [u8], usize), Error> {
        if self.byte(at)? == b'-' {
            return Err(err(at, "negative string length"));
        }
        let (len, start) = self.integer(at, b':')?;
        let end = usize::try_from(len).ok().and_then(|l| start.checked_add(l)).ok_or_else(|| err(at, "string length out of range"))?;
        let bytes = self.input.get(start..end).ok_or_else(|| err(at, "string longer than the input"))?;
        Ok((bytes, end))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn decodes_an_ng_offer() {
        let msg = b"d7:command5:offer7:call-id3:abc5:flagsl13:trust-addresse3:numi-42ee";
        let v = Value::decode(msg).expect("decodes");
        assert_eq!(v.get("command").and_then(Value::as_str), Some("offer"));
        assert_eq!(v.get("call-id").and_then(Value::as_str), Some("abc"));
        assert_eq!(v.get("num").and_then(Value::as_int), Some(-42));
        let flags = v.get("flags").and_then(Value::as_list).expect("list");
        assert_eq!(flags.first().and_then(Value::as_str), Some("trust-address"));
        assert_eq!(v.to_vec(), b"d7:call-id3:abc7:command5:offer5:flagsl13:trust-addresse3:numi-42ee");
    }

    #[test]
    fn errors_carry_offsets() {
        let cases: [(&[u8], usize); 12] = [
            (b"i03e", 1),
            (b"i-0e", 2),
            (b"ie", 1),
            (b"i12", 3),
            (b"5:abc", 0),
            (b"d1:ai1e1:ai2ee", 7),
            (b"di1ei2ee", 1),
            (b"l", 1),
            (b"x", 0),
            (b"i1ei2e", 3),
            (b"-1:a", 0),
            (b"i99999999999999999999e", 1),
        ];
        for (input, offset) in cases {
            match Value::decode(input) {
                Err(Error::Bencode { offset: o, .. }) => assert_eq!(o, offset, "{:?}", String::from_utf8_lossy(input)),
                other => panic!("{:?} gave {other:?}", String::from_utf8_lossy(input)),
            }
        }
    }

    #[test]
    fn unsorted_input_keys_encode_sorted() {
        let v = Value::decode(b"d1:bi1e1:ai2ee").expect("unsorted keys are accepted");
        assert_eq!(v.get("a").and_then(Value::as_int), Some(2));
        assert_eq!(v.to_vec(), b"d1:ai2e1:bi1ee");
    }

    #[test]
    fn depth_is_bounded() {
        let deep = [b"l".repeat(MAX_DEPTH + 1), b"e".repeat(MAX_DEPTH + 1)].concat();
        assert!(matches!(Value::decode(&deep), Err(Error::Bencode { offset, .. }) if offset == MAX_DEPTH));
        let ok = [b"l".repeat(MAX_DEPTH), b"e".repeat(MAX_DEPTH)].concat();
        assert!(Value::decode(&ok).is_ok());
    }

    fn arb_value() -> impl Strategy<Value = Value<'static>> {
        let leaf = prop_oneof![
            any::<i64>().prop_map(Value::Int),
            proptest::collection::vec(any::<u8>(), 0..20).prop_map(|b| Value::Bytes(Cow::Owned(b))),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::List),
                proptest::collection::btree_map(proptest::collection::vec(any::<u8>(), 0..8), inner, 0..6)
                    .prop_map(|m| Value::Dict(m.into_iter().map(|(k, v)| (Cow::Owned(k), v)).collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn encode_decode_round_trip(v in arb_value()) {
            let bytes = v.to_vec();
            let back = Value::decode(&bytes).expect("own encoding decodes").into_owned();
            prop_assert_eq!(&back, &v);
            prop_assert_eq!(back.to_vec(), bytes);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(v) = Value::decode(&bytes) {
                // Whatever decodes re-encodes (keys sorted) to a fixed point.
                let again = v.to_vec();
                prop_assert_eq!(Value::decode(&again).expect("re-decodes").to_vec(), again);
            }
        }
    }
}
