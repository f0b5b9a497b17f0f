//! Executes ng commands against the [`Relay`]: SDP offer/answer rewriting for an SDES
//! SRTP⇄RTP (or SRTP⇄SRTP with other keys) gateway, call bookkeeping, statistics and
//! stream timeouts. Sans-IO: ports come from a [`PortSource`], keys from a [`KeySource`],
//! time is passed in.
//!
//! SDP rewriting is lossless (`mediasec_sdp::Sdp`): only the lines named here change —
//! `m=` port and proto, `c=` addresses (ours), `o=` address with `replace: [origin]`,
//! `a=crypto` (the peer's removed, ours inserted with padded base64, RFC 4568 §9.2 allows
//! `=`), ICE/DTLS/rtcp/rtcp-mux attributes removed (the AGW is the media endpoint of both
//! legs and demultiplexes RTCP itself). Every other line is passed byte for byte.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use mediasec_sdp::{sdes, CryptoAttribute, KeySource, Level, Negotiated, Sdp, SdesPolicy};
use mediasec_srtp::{MasterKey, Policy, Suite};

use crate::bencode::Value;
use crate::ng::{self, Command, Options, Transport};
use crate::relay::{Leg, Protection, Relay, Side, StreamId};
use crate::stats::{Component, Counter, DropReason, LegStats};
use crate::Error;

/// Where media ports come from (the driver binds sockets; tests count).
pub trait PortSource {
    /// A free even RTP port whose odd successor (RTCP) is free too, now reserved.
    fn allocate_pair(&mut self) -> Result<u16, Error>;
    /// Gives a pair back.
    fn release_pair(&mut self, rtp_port: u16);
}

/// Gateway configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Our media address, written into every rewritten SDP.
    pub address: IpAddr,
    /// Default SDES policy (suites we accept and offer, most preferred first).
    pub sdes: SdesPolicy,
    /// A call whose streams saw no packet for this long is deleted.
    pub timeout: Duration,
}

struct Media {
    stream: StreamId,
    a: Transport,
    b: Transport,
    /// Our SDES answer to A's offered crypto (A is SRTP).
    a_sdes: Option<Negotiated>,
    /// The crypto we offered to B (B is SRTP).
    b_offer: Vec<CryptoAttribute>,
}

struct Call {
    from_tag: String,
    to_tag: Option<String>,
    created: Instant,
    media: Vec<Option<Media>>,
}

/// Replies remembered per cookie, so a retransmitted request gets the same reply.
const REPLY_CACHE: usize = 256;

/// The ng command executor and the relay it drives.
pub struct Controller {
    config: Config,
    relay: Relay,
    calls: HashMap<String, Call>,
    replies: VecDeque<(Vec<u8>, Vec<u8>)>,
}

const ICE_DTLS_RTCP: [&str; 14] = [
    "ice-ufrag",
    "ice-pwd",
    "ice-options",
    "ice-lite",
    "ice-mismatch",
    "candidate",
    "remote-candidates",
    "end-of-candidates",
    "fingerprint",
    "setup",
    "tls-id",
    "rtcp",
    "rtcp-mux",
    "rtcp-rsize",
];

/// An SRTP policy from an SDES line (its suite, every `inline:` key with MKI and lifetime)
/// and the negotiated session parameters.
fn srtp_policy(line: &CryptoAttribute, n: &Negotiated) -> Result<Policy, Error> {
    let params = line.suite.params().ok_or_else(|| Error::Sdes(format!("unknown suite {}", line.suite)))?;
    let name = params.iana_equivalent.unwrap_or(line.suite.name());
    let suite: Suite = name.parse().map_err(|_| Error::Sdes(format!("suite {name} not supported by the SRTP layer")))?;
    let mut keys = Vec::new();
    for k in line.inline_keys() {
        let mut key = MasterKey::from_inline(suite, k.key_salt()).map_err(|e| Error::Sdes(e.to_string()))?;
        if let Some(mki) = &k.mki {
            key = key.with_mki(mki.bytes());
        }
        if let Some(l) = k.lifetime {
            key = key.with_lifetime(u64::try_from(l.packets()).unwrap_or(u64::MAX));
        }
        keys.push(key);
    }
    let first = keys.first().cloned().ok_or_else(|| Error::Sdes("no inline key".to_owned()))?;
    let mut policy = Policy::new(suite, first);
    policy.keys = keys;
    policy.unencrypted_srtp = n.unencrypted_srtp;
    policy.unencrypted_srtcp = n.unencrypted_srtcp;
    policy.unauthenticated_srtp = n.unauthenticated_srtp;
    Ok(policy)
}

fn protection(n: &Negotiated) -> Result<Protection, Error> {
    Protection::srtp(&srtp_policy(&n.remote, n)?, &srtp_policy(&n.local, n)?)
}

fn sdes_error(e: &mediasec_sdp::Error) -> Error {
    Error::Sdes(match e {
        mediasec_sdp::Error::NoAcceptableCrypto { rejected } => {
            let reasons: Vec<String> = rejected.iter().map(|(i, r)| format!("line {}: {r}", i + 1)).collect();
            format!("no acceptable a=crypto ({})", reasons.join("; "))
        }
        other => other.to_string(),
    })
}

fn connection_addr(sdp: &Sdp, level: Level) -> Result<Option<IpAddr>, Error> {
    for line in sdp.lines(level)? {
        if let Some(c) = line.connection() {
            let c = c?;
            return c
                .address
                .split('/')
                .next()
                .and_then(|a| a.parse().ok())
                .map(Some)
                .ok_or_else(|| Error::Sdp(format!("connection address {:?} is not an IP address", c.address)));
        }
    }
    Ok(None)
}

/// The peer's RTP and RTCP addresses of media `i` (`a=rtcp` port if any, else RTP + 1).
fn media_addresses(sdp: &Sdp, i: usize) -> Result<(SocketAddr, SocketAddr), Error> {
    let m = sdp.media_line(i)?;
    let ip = match connection_addr(sdp, Level::Media(i))? {
        Some(ip) => ip,
        None => connection_addr(sdp, Level::Session)?.ok_or_else(|| Error::Sdp(format!("media {i} has no c= line")))?,
    };
    let rtcp_port = sdp
        .attribute_values(Level::Media(i), "rtcp")?
        .first()
        .and_then(|v| v.split(' ').next()?.parse::<u16>().ok())
        .unwrap_or(m.port.wrapping_add(1));
    Ok((SocketAddr::new(ip, m.port), SocketAddr::new(ip, rtcp_port)))
}

fn c_line(addr: IpAddr) -> String {
    match addr {
        IpAddr::V4(a) => format!("c=IN IP4 {a}"),
        IpAddr::V6(a) => format!("c=IN IP6 {a}"),
    }
}

/// Points every `c=` (and with `replace_origin` the `o=`) line at our address.
fn rewrite_addresses(sdp: &mut Sdp, addr: IpAddr, replace_origin: bool) -> Result<(), Error> {
    let levels: Vec<Level> = sdp.levels().collect();
    for level in levels {
        let edits: Vec<(usize, String)> = sdp
            .lines(level)?
            .iter()
            .enumerate()
            .filter_map(|(i, l)| match l.kind() {
                Some('c') => Some((i, c_line(addr))),
                Some('o') if replace_origin && level == Level::Session => {
                    let v = l.value()?;
                    let toks: Vec<&str> = v.split(' ').collect();
                    let head = toks.get(..3)?.join(" ");
                    let family = if addr.is_ipv4() { "IP4" } else { "IP6" };
                    Some((i, format!("o={head} IN {family} {addr}")))
                }
                _ => None,
            })
            .collect();
        for (i, text) in edits {
            sdp.replace_line(level, i, &text)?;
        }
    }
    Ok(())
}

/// Rewrites media `i` for the receiving side: our port, its profile, its crypto lines.
fn rewrite_media(sdp: &mut Sdp, i: usize, port: u16, transport: Transport, crypto: &[CryptoAttribute]) -> Result<(), Error> {
    sdp.set_media_port_proto(i, Some(port), Some(transport.as_str()))?;
    sdp.remove_attributes(Level::Media(i), |a| a.name == CryptoAttribute::NAME || ICE_DTLS_RTCP.contains(&a.name))?;
    for line in crypto {
        sdp.insert_attribute(Level::Media(i), &line.to_attribute())?;
    }
    Ok(())
}

fn strip_session_ice(sdp: &mut Sdp) -> Result<(), Error> {
    sdp.remove_attributes(Level::Session, |a| ICE_DTLS_RTCP.contains(&a.name))?;
    Ok(())
}

fn transport_of(sdp: &Sdp, i: usize) -> Result<Transport, Error> {
    Transport::parse(sdp.media_line(i)?.proto)
}

impl Controller {
    /// A gateway with no calls.
    pub fn new(config: Config) -> Self {
        Self { config, relay: Relay::new(), calls: HashMap::new(), replies: VecDeque::new() }
    }

    /// The relay (the driver hands it every media packet).
    pub fn relay_mut(&mut self) -> &mut Relay {
        &mut self.relay
    }

    /// The relay.
    pub fn relay(&self) -> &Relay {
        &self.relay
    }

    /// Calls in progress.
    pub fn call_count(&self) -> usize {
        self.calls.len()
    }

    /// Handles one ng datagram and returns the reply datagram (`None` if it has no cookie
    /// to reply to). A retransmission (same cookie) gets the remembered reply.
    pub fn handle_datagram(
        &mut self,
        datagram: &[u8],
        now: Instant,
        ports: &mut impl PortSource,
        keys: &mut impl KeySource,
    ) -> Option<Vec<u8>> {
        let (cookie, message) = ng::split_cookie(datagram).ok()?;
        if let Some((_, reply)) = self.replies.iter().find(|(c, _)| c == cookie) {
            return Some(reply.clone());
        }
        let reply = match Value::decode(message)
            .and_then(|v| Command::parse(&v, &self.config.sdes))
            .and_then(|cmd| self.execute(cmd, now, ports, keys))
        {
            Ok(v) => v,
            Err(e) => ng::error_reply(&e),
        };
        let framed = ng::frame(cookie, &reply);
        if self.replies.len() >= REPLY_CACHE {
            self.replies.pop_front();
        }
        self.replies.push_back((cookie.to_vec(), framed.clone()));
        Some(framed)
    }

    /// Executes one command; the reply dictionary on success.
    pub fn execute(
        &mut self,
        cmd: Command,
        now: Instant,
        ports: &mut impl PortSource,
        keys: &mut impl KeySource,
    ) -> Result<Value<'static>, Error> {
        match cmd {
            Command::Ping => Ok(Value::dict([("result", Value::str("pong"))])),
            Command::Offer { call_id, from_tag, sdp, options } => {
                let sdp = self.offer(&call_id, &from_tag, &sdp, &options, now, ports, keys)?;
                tracing::info!(call_id, from_tag, "offer");
                Ok(Value::dict([("result", Value::str("ok")), ("sdp", Value::str(sdp))]))
            }
            Command::Answer { call_id, from_tag, to_tag, sdp, options } => {
                let sdp = self.answer(&call_id, &from_tag, &to_tag, &sdp, &options, ports)?;
                tracing::info!(call_id, to_tag, "answer");
                Ok(Value::dict([("result", Value::str("ok")), ("sdp", Value::str(sdp))]))
            }
            Command::Delete { call_id } => {
                let call = self.calls.remove(&call_id).ok_or(Error::UnknownCall)?;
                let totals = self.totals(&call);
                self.drop_call(call, ports);
                tracing::info!(call_id, "delete");
                Ok(Value::dict([("result", Value::str("ok")), ("totals", totals)]))
            }
            Command::Query { call_id } => {
                let call = self.calls.get(&call_id).ok_or(Error::UnknownCall)?;
                Ok(self.query(call, now))
            }
        }
    }

    fn release_media(&mut self, media: Media, ports: &mut impl PortSource) {
        if let Some(stream) = self.relay.remove_stream(media.stream) {
            ports.release_pair(stream.leg(Side::A).port());
            ports.release_pair(stream.leg(Side::B).port());
        }
    }

    fn drop_call(&mut self, call: Call, ports: &mut impl PortSource) {
        for media in call.media.into_iter().flatten() {
            self.release_media(media, ports);
        }
    }

    fn new_stream(&mut self, now: Instant, ports: &mut impl PortSource) -> Result<StreamId, Error> {
        let a = ports.allocate_pair()?;
        let b = match ports.allocate_pair() {
            Ok(b) => b,
            Err(e) => {
                ports.release_pair(a);
                return Err(e);
            }
        };
        self.relay.add_stream(a, b, now).inspect_err(|_| {
            ports.release_pair(a);
            ports.release_pair(b);
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn offer(
        &mut self,
        call_id: &str,
        from_tag: &str,
        text: &str,
        options: &Options,
        now: Instant,
        ports: &mut impl PortSource,
        keys: &mut impl KeySource,
    ) -> Result<String, Error> {
        let mut sdp = Sdp::parse(text);
        if sdp.media_count() == 0 {
            return Err(Error::Sdp("no m= line".to_owned()));
        }
        // Negotiate everything before touching any state, so a refused offer changes nothing.
        let mut plans = Vec::new();
        for i in 0..sdp.media_count() {
            if sdp.media_line(i)?.port == 0 {
                plans.push(None);
                continue;
            }
            let a = transport_of(&sdp, i)?;
            let b = options.transport.unwrap_or(a);
            let addrs = media_addresses(&sdp, i)?;
            let a_sdes = if a.is_srtp() {
                let offered = sdp.attribute_values(Level::Media(i), CryptoAttribute::NAME)?;
                if offered.is_empty() {
                    return Err(Error::Unsupported(format!("{} media {i} without a=crypto (DTLS-SRTP)", a.as_str())));
                }
                let n = sdes::answer(&offered, &options.sdes, keys).map_err(|e| sdes_error(&e))?;
                Some((protection(&n)?, n))
            } else {
                None
            };
            let b_offer = if b.is_srtp() { sdes::offer(&options.sdes, keys).map_err(|e| sdes_error(&e))? } else { Vec::new() };
            plans.push(Some((a, b, addrs, a_sdes, b_offer)));
        }
        let mut old = match self.calls.remove(call_id) {
            Some(call) if call.from_tag == from_tag => call.media,
            Some(call) => {
                self.calls.insert(call_id.to_owned(), call);
                return Err(Error::Unsupported("re-offer from the answerer's side (from-tag differs)".to_owned()));
            }
            None => Vec::new(),
        };
        let mut media = Vec::new();
        let mut result = Ok(());
        for (i, plan) in plans.into_iter().enumerate() {
            let previous = old.get_mut(i).and_then(Option::take);
            let Some((a, b, (rtp, rtcp), a_sdes, b_offer)) = plan else {
                if let Some(m) = previous {
                    self.release_media(m, ports);
                }
                media.push(None);
                continue;
            };
            let stream = match previous {
                Some(m) => m.stream,
                None => match self.new_stream(now, ports) {
                    Ok(s) => s,
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                },
            };
            let Some(s) = self.relay.stream_mut(stream) else { continue };
            let leg_a = s.leg_mut(Side::A);
            leg_a.set_signalled(Some(rtp), Some(rtcp));
            let (a_protection, a_sdes) = match a_sdes {
                Some((p, n)) => (p, Some(n)),
                None => (Protection::Plain, None),
            };
            leg_a.set_protection(a_protection);
            let leg_b = s.leg_mut(Side::B);
            leg_b.set_protection(if b.is_srtp() { Protection::Pending } else { Protection::Plain });
            let b_port = leg_b.port();
            if let Err(e) = rewrite_media(&mut sdp, i, b_port, b, &b_offer) {
                result = Err(e);
            }
            media.push(Some(Media { stream, a, b, a_sdes, b_offer }));
        }
        for m in old.into_iter().flatten() {
            self.release_media(m, ports);
        }
        let call = Call { from_tag: from_tag.to_owned(), to_tag: None, created: now, media };
        if let Err(e) = result.and_then(|()| {
            strip_session_ice(&mut sdp)?;
            rewrite_addresses(&mut sdp, self.config.address, options.replace_origin)
        }) {
            self.drop_call(call, ports);
            return Err(e);
        }
        self.calls.insert(call_id.to_owned(), call);
        Ok(sdp.to_string())
    }

    fn answer(
        &mut self,
        call_id: &str,
        from_tag: &str,
        to_tag: &str,
        text: &str,
        options: &Options,
        ports: &mut impl PortSource,
    ) -> Result<String, Error> {
        let mut sdp = Sdp::parse(text);
        let call = self.calls.get_mut(call_id).ok_or(Error::UnknownCall)?;
        if call.from_tag != from_tag {
            return Err(Error::Unsupported("answer whose from-tag is not the offerer's".to_owned()));
        }
        if sdp.media_count() != call.media.len() {
            return Err(Error::Sdp(format!("answer has {} media, the offer had {}", sdp.media_count(), call.media.len())));
        }
        // Check and negotiate first; then apply.
        let mut plans = Vec::new();
        for (i, m) in call.media.iter().enumerate() {
            let Some(m) = m else {
                plans.push(None);
                continue;
            };
            if sdp.media_line(i)?.port == 0 {
                plans.push(Some(None));
                continue;
            }
            let answered = transport_of(&sdp, i)?;
            if answered.is_srtp() != m.b.is_srtp() {
                return Err(Error::Sdp(format!("media {i}: answered {} to an offered {}", answered.as_str(), m.b.as_str())));
            }
            let b_protection = if m.b.is_srtp() {
                let values = sdp.attribute_values(Level::Media(i), CryptoAttribute::NAME)?;
                let n = sdes::process_answer(&m.b_offer, &values, &options.sdes).map_err(|e| sdes_error(&e))?;
                protection(&n)?
            } else {
                Protection::Plain
            };
            plans.push(Some(Some((media_addresses(&sdp, i)?, b_protection))));
        }
        call.to_tag = Some(to_tag.to_owned());
        let mut released = Vec::new();
        for (i, plan) in plans.into_iter().enumerate() {
            let Some(slot) = call.media.get_mut(i) else { continue };
            match plan {
                None => {}
                Some(None) => {
                    // The answerer rejected this stream: free it, reject it towards A too.
                    if let Some(m) = slot.take() {
                        sdp.set_media_port_proto(i, Some(0), Some(m.a.as_str()))?;
                        sdp.remove_attributes(Level::Media(i), |a| a.name == CryptoAttribute::NAME)?;
                        released.push(m);
                    }
                }
                Some(Some(((rtp, rtcp), b_protection))) => {
                    let Some(m) = slot.as_ref() else { continue };
                    let Some(s) = self.relay.stream_mut(m.stream) else { continue };
                    let leg_b = s.leg_mut(Side::B);
                    leg_b.set_signalled(Some(rtp), Some(rtcp));
                    leg_b.set_protection(b_protection);
                    let a_port = s.leg(Side::A).port();
                    let ours: Vec<CryptoAttribute> = m.a_sdes.iter().map(|n| n.local.clone()).collect();
                    rewrite_media(&mut sdp, i, a_port, m.a, &ours)?;
                }
            }
        }
        for m in released {
            self.release_media(m, ports);
        }
        strip_session_ice(&mut sdp)?;
        rewrite_addresses(&mut sdp, self.config.address, options.replace_origin)?;
        Ok(sdp.to_string())
    }

    fn leg_stats(&self, call: &Call) -> impl Iterator<Item = (usize, &Leg, &Leg)> {
        call.media.iter().enumerate().filter_map(|(i, m)| {
            let s = self.relay.stream(m.as_ref()?.stream)?;
            Some((i, s.leg(Side::A), s.leg(Side::B)))
        })
    }

    fn totals(&self, call: &Call) -> Value<'static> {
        let mut all = LegStats::default();
        for (_, a, b) in self.leg_stats(call) {
            all.accumulate(&a.stats);
            all.accumulate(&b.stats);
        }
        let comp = |c: Component| {
            let r = all.received(c);
            Value::dict([("packets", int(r.packets)), ("bytes", int(r.bytes))])
        };
        Value::dict([("RTP", comp(Component::Rtp)), ("RTCP", comp(Component::Rtcp)), ("errors", int(all.total_drops()))])
    }

    fn query(&self, call: &Call, now: Instant) -> Value<'static> {
        let streams = self
            .leg_stats(call)
            .map(|(i, a, b)| {
                Value::dict([
                    ("index", int(i as u64)),
                    ("A", leg_value(a, &call.from_tag)),
                    ("B", leg_value(b, call.to_tag.as_deref().unwrap_or(""))),
                ])
            })
            .collect();
        let age = now.saturating_duration_since(call.created).as_secs();
        Value::dict([
            ("result", Value::str("ok")),
            ("age", int(age)),
            ("from-tag", Value::str(call.from_tag.clone())),
            ("to-tag", Value::str(call.to_tag.clone().unwrap_or_default())),
            ("totals", self.totals(call)),
            ("streams", Value::List(streams)),
        ])
    }

    /// Deletes every call whose streams were idle for the configured timeout; returns their
    /// call-ids.
    pub fn expire(&mut self, now: Instant, ports: &mut impl PortSource) -> Vec<String> {
        let timeout = self.config.timeout;
        let expired: Vec<String> = self
            .calls
            .iter()
            .filter(|(_, call)| {
                let last = call
                    .media
                    .iter()
                    .flatten()
                    .filter_map(|m| self.relay.stream(m.stream).map(|s| s.last_activity()))
                    .max()
                    .unwrap_or(call.created);
                now.saturating_duration_since(last) >= timeout
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in &expired {
            if let Some(call) = self.calls.remove(id) {
                tracing::info!(call_id = id, "stream timeout: call deleted");
                self.drop_call(call, ports);
            }
        }
        expired
    }
}

fn int(n: u64) -> Value<'static> {
    Value::Int(i64::try_from(n).unwrap_or(i64::MAX))
}

fn counter(c: Counter) -> Value<'static> {
    Value::dict([("packets", int(c.packets)), ("bytes", int(c.bytes))])
}

fn leg_value(leg: &Leg, tag: &str) -> Value<'static> {
    let addr = |a: Option<SocketAddr>| Value::str(a.map(|a| a.to_string()).unwrap_or_default());
    let per = |f: &dyn Fn(Component) -> Counter| Value::dict([("RTP", counter(f(Component::Rtp))), ("RTCP", counter(f(Component::Rtcp)))]);
    let drops = Value::Dict(
        DropReason::ALL
            .iter()
            .filter(|r| **r != DropReason::UnknownPort)
            .map(|r| (std::borrow::Cow::Borrowed(r.label().as_bytes()), int(leg.stats.drops(*r))))
            .collect(),
    );
    Value::dict([
        ("tag", Value::str(tag)),
        ("protection", Value::str(leg.protection().name())),
        ("local port", int(u64::from(leg.port()))),
        ("signalled", addr(leg.signalled(Component::Rtp))),
        ("latched", addr(leg.latched(Component::Rtp))),
        ("received", per(&|c| leg.stats.received(c))),
        ("sent", per(&|c| leg.stats.sent(c))),
        ("drops", drops),
    ])
}
