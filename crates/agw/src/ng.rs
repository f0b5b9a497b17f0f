//! The rtpengine *ng* control protocol, the subset SDES e2ae needs: framing
//! (`<cookie> SP <bencode dictionary>` over UDP, the reply echoes the cookie) and the typed
//! commands `ping`, `offer`, `answer`, `delete`, `query`, `list` with the keys and flags Kamailio's
//! `rtpengine` module sends for an SDES SRTP⇄RTP gateway. Anything else is refused with an
//! [`Error`] that becomes the reply's `error-reason`. The exact supported set is listed in
//! `docs/agw.md`.

use mediasec_sdp::{CryptoSuite, SdesPolicy, SuiteOrder};

use crate::bencode::Value;
use crate::Error;

/// Splits an ng datagram into cookie and message (`cookie SP message`).
pub fn split_cookie(datagram: &[u8]) -> Result<(&[u8], &[u8]), Error> {
    let sp = datagram.iter().position(|&b| b == b' ').filter(|&i| i > 0).ok_or(Error::NoCookie)?;
    let cookie = datagram.get(..sp).ok_or(Error::NoCookie)?;
    let message = datagram.get(sp + 1..).ok_or(Error::NoCookie)?;
    Ok((cookie, message))
}

/// Frames a reply: `cookie SP bencode(reply)`.
pub fn frame(cookie: &[u8], reply: &Value<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(cookie.len() + 256);
    out.extend_from_slice(cookie);
    out.push(b' ');
    reply.encode(&mut out);
    out
}

/// A blocking ng client call (for tools and tests): sends `request` with a fresh cookie
/// over `socket` to `server` and waits for the reply carrying that cookie. A wait interrupted
/// without a reply (`EINTR`: a socket with a read timeout is not restarted, e.g. after
/// io_uring task work on this thread) goes on waiting; the read timeout still ends it.
pub fn request(socket: &std::net::UdpSocket, server: std::net::SocketAddr, request: &Value<'_>) -> std::io::Result<Value<'static>> {
    use std::io::{Error as IoError, ErrorKind};
    let cookie = format!("{:016x}", rand::random::<u64>());
    socket.send_to(&frame(cookie.as_bytes(), request), server)?;
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, _) = match socket.recv_from(&mut buf) {
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            got => got?,
        };
        let datagram = buf.get(..n).unwrap_or_default();
        let Ok((c, message)) = split_cookie(datagram) else { continue };
        if c == cookie.as_bytes() {
            return Value::decode(message).map(Value::into_owned).map_err(|e| IoError::new(ErrorKind::InvalidData, e));
        }
    }
}

/// An error reply (`result: error`, `error-reason`).
pub fn error_reply(e: &Error) -> Value<'static> {
    Value::dict([("result", Value::str("error")), ("error-reason", Value::str(e.to_string()))])
}

/// An RTP profile of an `m=` line (RFC 3551, RFC 3711 §12, RFC 4585, RFC 5124).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// `RTP/AVP`.
    Avp,
    /// `RTP/AVPF`.
    Avpf,
    /// `RTP/SAVP`.
    Savp,
    /// `RTP/SAVPF`.
    Savpf,
}

impl Transport {
    /// Parses an `m=` proto / ng `transport-protocol` value.
    pub fn parse(s: &str) -> Result<Self, Error> {
        match s {
            "RTP/AVP" => Ok(Self::Avp),
            "RTP/AVPF" => Ok(Self::Avpf),
            "RTP/SAVP" => Ok(Self::Savp),
            "RTP/SAVPF" => Ok(Self::Savpf),
            other => Err(Error::Unsupported(format!("transport protocol {other:?} (only RTP/AVP, RTP/AVPF, RTP/SAVP, RTP/SAVPF)"))),
        }
    }

    /// The SDP token.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Avp => "RTP/AVP",
            Self::Avpf => "RTP/AVPF",
            Self::Savp => "RTP/SAVP",
            Self::Savpf => "RTP/SAVPF",
        }
    }

    /// SRTP profile?
    pub fn is_srtp(self) -> bool {
        matches!(self, Self::Savp | Self::Savpf)
    }
}

/// Options of an `offer` or `answer`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// `transport-protocol`: the profile towards the side that receives the rewritten SDP.
    pub transport: Option<Transport>,
    /// `replace: [origin]`: the `o=` address becomes ours.
    pub replace_origin: bool,
    /// SDES policy after the `SDES` flags (`no-`, `only-`, `offerer_pref`).
    pub sdes: SdesPolicy,
}

/// A decoded ng command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// `ping` → `pong`.
    Ping,
    /// `offer`: an SDP offer from `from-tag`.
    Offer {
        /// `call-id`.
        call_id: String,
        /// `from-tag`.
        from_tag: String,
        /// `sdp`.
        sdp: String,
        /// Options.
        options: Options,
    },
    /// `answer`: the SDP answer from `to-tag`.
    Answer {
        /// `call-id`.
        call_id: String,
        /// `from-tag` (the offerer).
        from_tag: String,
        /// `to-tag` (the answerer).
        to_tag: String,
        /// `sdp`.
        sdp: String,
        /// Options.
        options: Options,
    },
    /// `delete`: ends the call (`from-tag`/`to-tag` are accepted and not needed).
    Delete {
        /// `call-id`.
        call_id: String,
    },
    /// `query`: statistics of a call.
    Query {
        /// `call-id`.
        call_id: String,
    },
    /// `list`: the Call-IDs of the calls held (rtpengine's `call_list_ng`).
    List {
        /// `limit`: at most this many Call-IDs ([`LIST_LIMIT`] when absent).
        limit: u64,
    },
}

/// `list` without `limit` returns at most this many Call-IDs (rtpengine's `call_list_ng`
/// default).
pub const LIST_LIMIT: u64 = 32;

/// The `limit` of `list`: a non-negative integer, given as a bencode integer or as a
/// decimal string (rtpengine reads it with its integer-or-string getter). Any other type
/// or a negative value is refused (rtpengine: `invalid limit, must be >= 0`).
fn list_limit(req: &Value<'_>) -> Result<u64, Error> {
    let Some(v) = req.get("limit") else { return Ok(LIST_LIMIT) };
    let n = match v {
        Value::Int(n) => Some(*n),
        _ => v.as_str().and_then(|s| s.parse::<i64>().ok()),
    };
    n.and_then(|n| u64::try_from(n).ok()).ok_or(Error::BadKey("limit"))
}

/// Keys that carry information we do not need and are accepted as such (see docs/agw.md).
const INFORMATIONAL: [&str; 6] = ["via-branch", "received-from", "supports", "sip-message-type", "sip_message_type", "label"];

/// Entries of `flags` accepted because they match what the AGW always does.
const FLAGS: [&str; 5] = ["trust-address", "SIP-source-address", "symmetric", "port-latching", "loop-protect"];

fn string(req: &Value<'_>, key: &'static str) -> Result<String, Error> {
    req.get(key).and_then(Value::as_str).map(str::to_owned).ok_or(Error::BadKey(key))
}

fn strings<'v>(v: &'v Value<'_>, key: &'static str) -> Result<Vec<&'v str>, Error> {
    match v {
        Value::List(items) => items.iter().map(|i| i.as_str().ok_or(Error::BadKey(key))).collect(),
        Value::Bytes(_) => v.as_str().map(|s| vec![s]).ok_or(Error::BadKey(key)),
        _ => Err(Error::BadKey(key)),
    }
}

/// A suite both `mediasec-sdp` and `mediasec-srtp` know.
fn known_suite(name: &str) -> Result<CryptoSuite, Error> {
    let s = CryptoSuite::new(name);
    if s.params().is_some() && name.parse::<mediasec_srtp::Suite>().is_ok() {
        Ok(s)
    } else {
        Err(Error::Unsupported(format!("SDES suite {name:?}")))
    }
}

/// One `SDES` flag other than `only-`.
fn apply_sdes(policy: &mut SdesPolicy, flag: &str) -> Result<(), Error> {
    if let Some(name) = flag.strip_prefix("no-") {
        let s = known_suite(name)?;
        policy.suites.retain(|x| *x != s);
    } else if flag == "offerer_pref" {
        policy.order = SuiteOrder::Offerer;
    } else if flag != "pad" {
        return Err(Error::Unsupported(format!("SDES flag {flag:?}")));
    }
    Ok(())
}

fn options(req: &Value<'_>, base: &SdesPolicy) -> Result<Options, Error> {
    let mut o = Options { transport: None, replace_origin: false, sdes: base.clone() };
    if let Some(v) = req.get("transport-protocol") {
        o.transport = Some(Transport::parse(v.as_str().ok_or(Error::BadKey("transport-protocol"))?)?);
    }
    if let Some(v) = req.get("replace") {
        for r in strings(v, "replace")? {
            match r {
                "origin" => o.replace_origin = true,
                "session-connection" | "session connection" => {}
                other => return Err(Error::Unsupported(format!("replace {other:?}"))),
            }
        }
    }
    if let Some(v) = req.get("ICE") {
        match v.as_str().ok_or(Error::BadKey("ICE"))? {
            "remove" => {}
            other => return Err(Error::Unsupported(format!("ICE {other:?} (ICE attributes are always removed)"))),
        }
    }
    if let Some(v) = req.get("SDES") {
        // `only-` flags add up to the allowed set; `no-` flags remove from it.
        let mut only = Vec::new();
        for f in strings(v, "SDES")? {
            match f.strip_prefix("only-") {
                Some(name) => only.push(known_suite(name)?),
                None => apply_sdes(&mut o.sdes, f)?,
            }
        }
        if !only.is_empty() {
            o.sdes.suites.retain(|s| only.contains(s));
            for s in only {
                if !o.sdes.suites.contains(&s) {
                    o.sdes.suites.push(s);
                }
            }
        }
        if o.sdes.suites.is_empty() {
            return Err(Error::Unsupported("SDES flags that leave no crypto suite".to_owned()));
        }
    }
    if let Some(v) = req.get("DTLS") {
        match v.as_str().ok_or(Error::BadKey("DTLS"))? {
            "off" | "no" | "disable" => {}
            other => return Err(Error::Unsupported(format!("DTLS {other:?} (only SDES)"))),
        }
    }
    if let Some(v) = req.get("rtcp-mux") {
        for r in strings(v, "rtcp-mux")? {
            if r != "demux" {
                return Err(Error::Unsupported(format!("rtcp-mux {r:?} (RTCP is always demultiplexed)")));
            }
        }
    }
    if let Some(v) = req.get("direction") {
        // One interface: every direction maps to it. Checked for type only.
        strings(v, "direction")?;
    }
    if let Some(v) = req.get("flags") {
        for f in strings(v, "flags")? {
            if !FLAGS.contains(&f) {
                return Err(Error::Unsupported(format!("flag {f:?}")));
            }
        }
    }
    if let Some(v) = req.get("record call").or_else(|| req.get("record-call"))
        && v.as_str() != Some("no")
        && v.as_str() != Some("off")
    {
        return Err(Error::Unsupported("call recording".to_owned()));
    }
    Ok(o)
}

const OPTION_KEYS: [&str; 10] =
    ["transport-protocol", "replace", "ICE", "SDES", "DTLS", "rtcp-mux", "direction", "flags", "record call", "record-call"];

/// Rejects keys that neither the command nor [`INFORMATIONAL`] names.
fn check_keys(req: &Value<'_>, allowed: &[&str]) -> Result<(), Error> {
    let Value::Dict(entries) = req else { return Err(Error::BadKey("command")) };
    for (k, _) in entries {
        let k = std::str::from_utf8(k).map_err(|_| Error::Unsupported("non-UTF-8 key".to_owned()))?;
        if !(k == "command" || allowed.contains(&k) || INFORMATIONAL.contains(&k)) {
            return Err(Error::Unsupported(format!("key {k:?}")));
        }
    }
    Ok(())
}

impl Command {
    /// Decodes a request dictionary; `sdes` is the gateway's default SDES policy.
    pub fn parse(req: &Value<'_>, sdes: &SdesPolicy) -> Result<Self, Error> {
        let command = req.get("command").and_then(Value::as_str).ok_or(Error::BadKey("command"))?;
        let with_options = |extra: &[&'static str]| -> Vec<&'static str> { extra.iter().chain(OPTION_KEYS.iter()).copied().collect() };
        match command {
            "ping" => {
                check_keys(req, &[])?;
                Ok(Self::Ping)
            }
            "offer" => {
                check_keys(req, &with_options(&["call-id", "from-tag", "sdp"]))?;
                Ok(Self::Offer {
                    call_id: string(req, "call-id")?,
                    from_tag: string(req, "from-tag")?,
                    sdp: string(req, "sdp")?,
                    options: options(req, sdes)?,
                })
            }
            "answer" => {
                check_keys(req, &with_options(&["call-id", "from-tag", "to-tag", "sdp"]))?;
                Ok(Self::Answer {
                    call_id: string(req, "call-id")?,
                    from_tag: string(req, "from-tag")?,
                    to_tag: string(req, "to-tag")?,
                    sdp: string(req, "sdp")?,
                    options: options(req, sdes)?,
                })
            }
            "delete" => {
                check_keys(req, &["call-id", "from-tag", "to-tag", "flags", "delete-delay", "delete delay"])?;
                Ok(Self::Delete { call_id: string(req, "call-id")? })
            }
            "query" => {
                check_keys(req, &["call-id", "from-tag", "to-tag"])?;
                Ok(Self::Query { call_id: string(req, "call-id")? })
            }
            "list" => {
                check_keys(req, &["limit"])?;
                Ok(Self::List { limit: list_limit(req)? })
            }
            other => Err(Error::UnsupportedCommand(other.to_owned())),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn list(items: &[&str]) -> Value<'static> {
        Value::List(items.iter().map(|s| Value::str(*s)).collect())
    }

    fn req<const N: usize>(entries: [(&'static str, Value<'static>); N]) -> Result<Command, Error> {
        let bytes = Value::dict(entries).to_vec();
        Command::parse(&Value::decode(&bytes).expect("bencode"), &SdesPolicy::default())
    }

    fn offer<const N: usize>(extra: [(&'static str, Value<'static>); N]) -> Result<Command, Error> {
        let bytes = Value::Dict(
            [("command", Value::str("offer")), ("call-id", Value::str("c1")), ("from-tag", Value::str("f1")), ("sdp", Value::str("v=0"))]
                .into_iter()
                .chain(extra)
                .map(|(k, v)| (std::borrow::Cow::Borrowed(k.as_bytes()), v))
                .collect(),
        )
        .to_vec();
        Command::parse(&Value::decode(&bytes).expect("bencode"), &SdesPolicy::default())
    }

    #[test]
    fn cookie_framing() {
        assert_eq!(split_cookie(b"5d3a d7:command4:pinge"), Ok((&b"5d3a"[..], &b"d7:command4:pinge"[..])));
        assert_eq!(split_cookie(b" d7:command4:pinge"), Err(Error::NoCookie));
        assert_eq!(split_cookie(b"nocookie"), Err(Error::NoCookie));
        let reply = frame(b"ab", &Value::dict([("result", Value::str("pong"))]));
        assert_eq!(reply, b"ab d6:result4:ponge");
        assert_eq!(req([("command", Value::str("ping"))]), Ok(Command::Ping));
    }

    #[test]
    fn kamailio_style_offer() {
        let parsed = offer([
            ("replace", list(&["origin", "session-connection"])),
            ("ICE", Value::str("remove")),
            ("transport-protocol", Value::str("RTP/AVP")),
            ("SDES", list(&["no-NULL_HMAC_SHA1_32", "pad"])),
            ("flags", list(&["trust-address"])),
            ("received-from", list(&["IP4", "127.0.0.1"])),
            ("via-branch", Value::str("z9hG4bK")),
            ("direction", list(&["internal", "external"])),
        ]);
        let Ok(Command::Offer { call_id, from_tag, options, .. }) = parsed else { panic!("not an offer: {parsed:?}") };
        assert_eq!((call_id.as_str(), from_tag.as_str()), ("c1", "f1"));
        assert_eq!(options.transport, Some(Transport::Avp));
        assert!(options.replace_origin);
        assert_eq!(options.sdes.suites, SdesPolicy::default().suites);
    }

    #[test]
    fn sdes_only_and_no() {
        let Ok(Command::Offer { options, .. }) =
            offer([("SDES", list(&["only-AES_CM_128_HMAC_SHA1_80", "only-AES_CM_128_HMAC_SHA1_32"]))])
        else {
            panic!("not an offer")
        };
        assert_eq!(options.sdes.suites, vec![CryptoSuite::AES_CM_128_HMAC_SHA1_80, CryptoSuite::AES_CM_128_HMAC_SHA1_32]);
        let Ok(Command::Offer { options, .. }) = offer([("SDES", list(&["no-AEAD_AES_256_GCM", "offerer_pref"]))]) else {
            panic!("not an offer")
        };
        assert!(!options.sdes.suites.contains(&CryptoSuite::AEAD_AES_256_GCM));
        assert_eq!(options.sdes.suites.len(), SdesPolicy::default().suites.len() - 1);
        assert_eq!(options.sdes.order, SuiteOrder::Offerer);
    }

    #[test]
    fn unsupported_things_are_named() {
        let reason = |r: Result<Command, Error>| r.map_err(|e| e.to_string()).err().unwrap_or_default();
        assert_eq!(reason(req([("command", Value::str("statistics"))])), "unsupported command \"statistics\"");
        assert_eq!(reason(req([("command", Value::str("ping")), ("foo", Value::Int(1))])), "unsupported key \"foo\"");
        assert_eq!(reason(offer([("ICE", Value::str("force"))])), "unsupported ICE \"force\" (ICE attributes are always removed)");
        assert_eq!(reason(offer([("flags", list(&["asymmetric"]))])), "unsupported flag \"asymmetric\"");
        assert_eq!(reason(offer([("SDES", list(&["unencrypted_srtp"]))])), "unsupported SDES flag \"unencrypted_srtp\"");
        assert_eq!(reason(offer([("SDES", list(&["no-FOO"]))])), "unsupported SDES suite \"FOO\"");
        assert_eq!(reason(offer([("DTLS", Value::str("passive"))])), "unsupported DTLS \"passive\" (only SDES)");
        assert_eq!(
            reason(offer([("transport-protocol", Value::str("UDP/TLS/RTP/SAVPF"))])),
            "unsupported transport protocol \"UDP/TLS/RTP/SAVPF\" (only RTP/AVP, RTP/AVPF, RTP/SAVP, RTP/SAVPF)"
        );
        assert_eq!(
            reason(req([("command", Value::str("offer")), ("from-tag", Value::str("f")), ("sdp", Value::str(""))])),
            "missing or invalid key \"call-id\""
        );
    }

    #[test]
    fn list_limit_default_and_types() {
        let list_req = |limit: Option<Value<'static>>| {
            let mut entries = vec![("command", Value::str("list"))];
            entries.extend(limit.map(|l| ("limit", l)));
            let bytes = Value::Dict(entries.into_iter().map(|(k, v)| (std::borrow::Cow::Borrowed(k.as_bytes()), v)).collect()).to_vec();
            Command::parse(&Value::decode(&bytes).expect("bencode"), &SdesPolicy::default())
        };
        assert_eq!(list_req(None), Ok(Command::List { limit: LIST_LIMIT }));
        assert_eq!(list_req(Some(Value::Int(0))), Ok(Command::List { limit: 0 }));
        assert_eq!(list_req(Some(Value::Int(5))), Ok(Command::List { limit: 5 }));
        assert_eq!(list_req(Some(Value::str("7"))), Ok(Command::List { limit: 7 }));
        let bad = Err(Error::BadKey("limit"));
        assert_eq!(list_req(Some(Value::Int(-1))), bad);
        assert_eq!(list_req(Some(Value::str("-1"))), bad);
        assert_eq!(list_req(Some(Value::str("ten"))), bad);
        assert_eq!(list_req(Some(list(&["5"]))), bad);
        assert_eq!(list_req(Some(Value::dict([("n", Value::Int(5))]))), bad);
        assert_eq!(bad.map_err(|e| e.to_string()), Err::<Command, _>("missing or invalid key \"limit\"".to_owned()));
        assert_eq!(req([("command", Value::str("list")), ("call-id", Value::str("c"))]), Err(Error::Unsupported("key \"call-id\"".to_owned())));
    }

    proptest::proptest! {
        /// Any integer `limit`: the non-negative ones are taken as they are, the negative
        /// ones refused; never a panic.
        #[test]
        fn list_limit_any_integer(n in proptest::num::i64::ANY) {
            let parsed = req([("command", Value::str("list")), ("limit", Value::Int(n))]);
            match u64::try_from(n) {
                Ok(limit) => proptest::prop_assert_eq!(parsed, Ok(Command::List { limit })),
                Err(_) => proptest::prop_assert_eq!(parsed, Err(Error::BadKey("limit"))),
            }
        }
    }
}
