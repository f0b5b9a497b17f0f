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
    /// Our SDES answer to A's offered crypto (A is SRTP), in force.
    a_sdes: Option<Negotiated>,
    /// What A's re-offer agreed (protection, SDES answer), in force from B's answer on.
    a_next: Option<(Protection, Option<Negotiated>)>,
    /// The crypto we offered to B (B is SRTP).
    b_offer: Vec<CryptoAttribute>,
    /// B's answered crypto line, once answered (B is SRTP).
    b_remote: Option<CryptoAttribute>,
}

struct Call {
    from_tag: String,
    to_tag: Option<String>,
    created: Instant,
    media: Vec<Option<Media>>,
}

/// Replies remembered per cookie, so a retransmitted request gets the same reply.
const REPLY_CACHE: usize = 256;

/// One ng datagram handled by [`Controller::handle_datagram`].
#[derive(Debug, PartialEq, Eq)]
pub struct Handled {
    /// The reply datagram.
    pub reply: Vec<u8>,
    /// Why the command was refused, when it was executed now and refused (a retransmission
    /// answered from the reply cache carries `None`).
    pub refused: Option<Error>,
}

/// The ng command executor and the relay it drives.
pub struct Controller {
    config: Config,
    relay: Relay,
    calls: HashMap<String, Call>,
    replies: VecDeque<(Vec<u8>, Vec<u8>)>,
    /// Counters of streams already released (so metrics never go backwards).
    finished: LegStats,
    commands: u64,
    command_errors: u64,
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

/// Whether two peer lines carry the same SRTP master key(s) under the same transform: the
/// same suite, key parameters (key and salt, MKI, lifetime) and session parameters. The tag
/// only names the line (RFC 4568 §4.1), so it is left out: a peer that re-offers its key
/// under another tag keeps its crypto context (RFC 3711 §3.2: rollover counter and replay
/// list belong to the master key), and a fresh one would accept its earlier packets again.
fn same_key(a: Option<&CryptoAttribute>, b: Option<&CryptoAttribute>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a.suite == b.suite && a.keys == b.keys && a.params == b.params,
        (None, None) => true,
        _ => false,
    }
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
        Self {
            config,
            relay: Relay::new(),
            calls: HashMap::new(),
            replies: VecDeque::new(),
            finished: LegStats::default(),
            commands: 0,
            command_errors: 0,
        }
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

    /// Whether a call with this call-id is in progress here.
    pub fn has_call(&self, call_id: &str) -> bool {
        self.calls.contains_key(call_id)
    }

    /// The call-ids of the calls in progress, in no order.
    pub fn call_ids(&self) -> impl Iterator<Item = &str> {
        self.calls.keys().map(String::as_str)
    }

    /// Handles one ng datagram (`None` if it has no cookie to reply to). A retransmission
    /// (same cookie) gets the remembered reply. `elsewhere` are the call-ids of calls held
    /// outside this controller (the gateway's other shards), which `list` includes.
    pub fn handle_datagram(
        &mut self,
        datagram: &[u8],
        now: Instant,
        ports: &mut impl PortSource,
        keys: &mut impl KeySource,
        elsewhere: &[String],
    ) -> Option<Handled> {
        let (cookie, message) = ng::split_cookie(datagram).ok()?;
        if let Some((_, reply)) = self.replies.iter().find(|(c, _)| c == cookie) {
            return Some(Handled { reply: reply.clone(), refused: None });
        }
        let (reply, refused) = match Value::decode(message).and_then(|v| Command::parse(&v, &self.config.sdes)).and_then(|cmd| match cmd {
            Command::List { limit } => Ok(self.list(limit, elsewhere)),
            cmd => self.execute(cmd, now, ports, keys),
        }) {
            Ok(v) => (v, None),
            Err(e) => {
                self.command_errors += 1;
                (ng::error_reply(&e), Some(e))
            }
        };
        self.commands += 1;
        let framed = ng::frame(cookie, &reply);
        if self.replies.len() >= REPLY_CACHE {
            self.replies.pop_front();
        }
        self.replies.push_back((cookie.to_vec(), framed.clone()));
        Some(Handled { reply: framed, refused })
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
                let sdp = self.answer(&call_id, &from_tag, &to_tag, &sdp, &options, now, ports)?;
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
            Command::List { limit } => Ok(self.list(limit, &[])),
        }
    }

    /// `list`: the first `limit` Call-IDs in byte order, of this controller's calls and
    /// `elsewhere` (rtpengine walks its call hash table, so its order is unspecified; ours
    /// is sorted so that replies are deterministic).
    fn list(&self, limit: u64, elsewhere: &[String]) -> Value<'static> {
        let mut ids: Vec<&str> = self.call_ids().chain(elsewhere.iter().map(String::as_str)).collect();
        ids.sort_unstable();
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let calls = Value::List(ids.into_iter().take(limit).map(Value::str).collect());
        Value::dict([("result", Value::str("ok")), ("calls", calls)])
    }

    fn release_media(&mut self, media: Media, ports: &mut impl PortSource) {
        if let Some(stream) = self.relay.remove_stream(media.stream) {
            self.finished.accumulate(&stream.leg(Side::A).stats);
            self.finished.accumulate(&stream.leg(Side::B).stats);
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
            // A re-offer keeps the stream; what it agrees with A takes effect at B's answer
            // (A sends under its new key only once it has our answer, and gets our new key in
            // it); B keeps its keys until it answers if its transport is unchanged (it cannot
            // use the key we now offer before it has it, nor may we send under it before).
            let (stream, prior) = match previous {
                Some(m) => (m.stream, Some((m.a_sdes, m.b, m.b_remote))),
                None => match self.new_stream(now, ports) {
                    Ok(s) => (s, None),
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                },
            };
            let Some(s) = self.relay.stream_mut(stream) else {
                media.push(None);
                continue;
            };
            let leg_a = s.leg_mut(Side::A);
            leg_a.set_signalled(Some(rtp), Some(rtcp));
            let agreed = match a_sdes {
                Some((p, n)) => (p, Some(n)),
                None => (Protection::Plain, None),
            };
            let (a_sdes, a_next, b_remote) = match prior {
                Some((in_force, old_b, b_remote)) => (in_force, Some(agreed), (old_b == b).then_some(b_remote).flatten()),
                None => {
                    let (p, n) = agreed;
                    leg_a.set_protection(p);
                    (n, None, None)
                }
            };
            let leg_b = s.leg_mut(Side::B);
            if b_remote.is_none() {
                leg_b.set_protection(if b.is_srtp() { Protection::Pending } else { Protection::Plain });
            }
            let b_port = leg_b.port();
            if let Err(e) = rewrite_media(&mut sdp, i, b_port, b, &b_offer) {
                result = Err(e);
            }
            media.push(Some(Media { stream, a, b, a_sdes, a_next, b_offer, b_remote }));
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

    #[allow(clippy::too_many_arguments)]
    fn answer(
        &mut self,
        call_id: &str,
        from_tag: &str,
        to_tag: &str,
        text: &str,
        options: &Options,
        now: Instant,
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
            let (b_protection, b_remote) = if m.b.is_srtp() {
                let values = sdp.attribute_values(Level::Media(i), CryptoAttribute::NAME)?;
                let n = sdes::process_answer(&m.b_offer, &values, &options.sdes).map_err(|e| sdes_error(&e))?;
                (protection(&n)?, Some(n.remote))
            } else {
                (Protection::Plain, None)
            };
            plans.push(Some(Some((media_addresses(&sdp, i)?, b_protection, b_remote))));
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
                Some(Some(((rtp, rtcp), b_protection, b_remote))) => {
                    let Some(m) = slot.as_mut() else { continue };
                    let Some(s) = self.relay.stream_mut(m.stream) else { continue };
                    let leg_b = s.leg_mut(Side::B);
                    leg_b.set_signalled(Some(rtp), Some(rtcp));
                    leg_b.rekey(b_protection, !same_key(b_remote.as_ref(), m.b_remote.as_ref()), now);
                    m.b_remote = b_remote;
                    if let Some((p, n)) = m.a_next.take() {
                        let rekeyed = !same_key(m.a_sdes.as_ref().map(|x| &x.remote), n.as_ref().map(|x| &x.remote));
                        s.leg_mut(Side::A).rekey(p, rekeyed, now);
                        m.a_sdes = n;
                    }
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

    /// The gateway's counters now ([`Metrics`]): calls and streams in progress, ng commands,
    /// packets/octets and drops of every stream, released ones included.
    pub fn metrics(&self) -> Metrics {
        let mut streams = self.finished.clone();
        for call in self.calls.values() {
            for (_, a, b) in self.leg_stats(call) {
                streams.accumulate(&a.stats);
                streams.accumulate(&b.stats);
            }
        }
        Metrics {
            calls: self.calls.len(),
            streams: self.relay.stream_count(),
            commands: self.commands,
            command_errors: self.command_errors,
            unknown_port_drops: self.relay.unknown_port_drops(),
            totals: streams,
        }
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

/// A snapshot of a gateway's counters; the snapshots of several controllers (the media
/// threads' shards) add up to the gateway's.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    /// Calls in progress.
    pub calls: usize,
    /// Streams in progress.
    pub streams: usize,
    /// ng commands handled.
    pub commands: u64,
    /// ng commands answered with an error.
    pub command_errors: u64,
    /// Packets that arrived on a port no stream owns.
    pub unknown_port_drops: u64,
    /// Packets, octets and drops of every stream, released ones included.
    pub totals: LegStats,
}

impl Metrics {
    /// Adds another controller's counters.
    pub fn add(&mut self, other: &Self) {
        self.calls += other.calls;
        self.streams += other.streams;
        self.commands += other.commands;
        self.command_errors += other.command_errors;
        self.unknown_port_drops += other.unknown_port_drops;
        self.totals.accumulate(&other.totals);
    }

    /// Prometheus text exposition (format 0.0.4): calls and streams in progress, ng commands,
    /// packets/octets per component and direction, drops by reason.
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let _ = writeln!(out, "# TYPE mediasec_agw_calls gauge\nmediasec_agw_calls {}", self.calls);
        let _ = writeln!(out, "# TYPE mediasec_agw_streams gauge\nmediasec_agw_streams {}", self.streams);
        let _ = writeln!(out, "# TYPE mediasec_agw_ng_commands_total counter\nmediasec_agw_ng_commands_total {}", self.commands);
        let _ = writeln!(out, "# TYPE mediasec_agw_ng_errors_total counter\nmediasec_agw_ng_errors_total {}", self.command_errors);
        let _ = writeln!(out, "# TYPE mediasec_agw_packets_total counter\n# TYPE mediasec_agw_bytes_total counter");
        for (c, name) in [(Component::Rtp, "rtp"), (Component::Rtcp, "rtcp")] {
            for (dir, counter) in [("received", self.totals.received(c)), ("sent", self.totals.sent(c))] {
                let _ = writeln!(out, "mediasec_agw_packets_total{{component=\"{name}\",direction=\"{dir}\"}} {}", counter.packets);
                let _ = writeln!(out, "mediasec_agw_bytes_total{{component=\"{name}\",direction=\"{dir}\"}} {}", counter.bytes);
            }
        }
        let _ = writeln!(out, "# TYPE mediasec_agw_drops_total counter");
        for r in DropReason::ALL {
            let n = if r == DropReason::UnknownPort { self.unknown_port_drops } else { self.totals.drops(r) };
            let _ = writeln!(out, "mediasec_agw_drops_total{{reason=\"{}\"}} {n}", r.label());
        }
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use mediasec_srtp::Session;

    /// Hands out pairs from 30000 upwards and remembers what is out.
    #[derive(Default)]
    struct Ports {
        next: u16,
        out: Vec<u16>,
    }

    impl PortSource for Ports {
        fn allocate_pair(&mut self) -> Result<u16, Error> {
            let p = 30000 + self.next;
            self.next += 2;
            self.out.push(p);
            Ok(p)
        }
        fn release_pair(&mut self, rtp_port: u16) {
            self.out.retain(|p| *p != rtp_port);
        }
    }

    fn keys() -> impl KeySource {
        let mut n = 0u8;
        move |buf: &mut [u8]| {
            for b in buf {
                n = n.wrapping_add(1);
                *b = n;
            }
        }
    }

    fn ctl() -> Controller {
        Controller::new(Config { address: "203.0.113.1".parse().expect("ip"), sdes: SdesPolicy::default(), timeout: Duration::from_secs(30) })
    }

    const UE_KEY: &str = "WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz";

    fn ue_offer() -> String {
        [
            "v=0",
            "o=ue 1 1 IN IP4 192.0.2.10",
            "s=-",
            "c=IN IP4 192.0.2.10",
            "t=0 0",
            "a=ice-ufrag:abcd",
            "m=audio 4000 RTP/SAVP 0 101",
            "a=rtpmap:0 PCMU/8000",
            "a=rtpmap:101 telephone-event/8000",
            &format!("a=crypto:7 AES_CM_128_HMAC_SHA1_80 inline:{UE_KEY}"),
            "a=crypto:8 AES_CM_128_HMAC_SHA1_32 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz",
            "a=candidate:1 1 UDP 1 192.0.2.10 4000 typ host",
            "a=3ge2ae:requested",
            "a=sendrecv",
            "",
        ]
        .join("\r\n")
    }

    fn core_answer() -> String {
        ["v=0", "o=core 5 5 IN IP4 198.51.100.5", "s=-", "c=IN IP4 198.51.100.5", "t=0 0", "m=audio 6000 RTP/AVP 0", "a=rtpmap:0 PCMU/8000", "a=sendrecv", ""]
            .join("\r\n")
    }

    fn opts(transport: Option<Transport>) -> Options {
        Options { transport, replace_origin: true, sdes: SdesPolicy::default() }
    }

    #[test]
    fn srtp_to_rtp_offer_answer_and_media() {
        let (mut c, mut ports, mut k, now) = (ctl(), Ports::default(), keys(), Instant::now());
        let offer = c.offer("call1", "ue", &ue_offer(), &opts(Some(Transport::Avp)), now, &mut ports, &mut k).expect("offer");
        let expected_offer = [
            "v=0",
            "o=ue 1 1 IN IP4 203.0.113.1",
            "s=-",
            "c=IN IP4 203.0.113.1",
            "t=0 0",
            "m=audio 30002 RTP/AVP 0 101",
            "a=rtpmap:0 PCMU/8000",
            "a=rtpmap:101 telephone-event/8000",
            "a=3ge2ae:requested",
            "a=sendrecv",
            "",
        ]
        .join("\r\n");
        assert_eq!(offer, expected_offer);
        let answer = c.answer("call1", "ue", "core", &core_answer(), &opts(None), now, &mut ports).expect("answer");
        let lines: Vec<&str> = answer.split("\r\n").collect();
        assert_eq!(&lines[..7], ["v=0", "o=core 5 5 IN IP4 203.0.113.1", "s=-", "c=IN IP4 203.0.113.1", "t=0 0", "m=audio 30000 RTP/SAVP 0", "a=rtpmap:0 PCMU/8000"]);
        let crypto = lines[8].strip_prefix("a=crypto:").expect("our crypto line");
        let ours = CryptoAttribute::parse(crypto).expect("parses");
        assert_eq!((ours.tag, ours.suite.name()), (7, "AES_CM_128_HMAC_SHA1_80"), "local preference picks tag 7's suite");
        assert_eq!(crypto.rsplit("inline:").next().map(|b| b.len() % 4), Some(0), "padded base64: {crypto}");
        assert_eq!(lines[7], "a=sendrecv");

        // Media: the UE's key in, our answered key out.
        let suite = Suite::AesCm128HmacSha1_80;
        let ue_line = CryptoAttribute::parse(&format!("7 AES_CM_128_HMAC_SHA1_80 inline:{UE_KEY}")).expect("ue line");
        let ue_key = ue_line.inline_keys().next().expect("key").key_salt().to_vec();
        let agw_key = ours.inline_keys().next().expect("key").key_salt().to_vec();
        let mut ue_tx = Session::new(&Policy::new(suite, MasterKey::from_inline(suite, &ue_key).expect("k"))).expect("s");
        let mut ue_rx = Session::new(&Policy::new(suite, MasterKey::from_inline(suite, &agw_key).expect("k"))).expect("s");
        let plain = [0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 9, 1, 2, 3];
        let mut buf = [0u8; 2048];
        let mut srtp = plain.to_vec();
        ue_tx.protect_rtp_vec(&mut srtp).expect("protect");
        buf[..srtp.len()].copy_from_slice(&srtp);
        let v = c.relay_mut().handle(30000, "192.0.2.10:4000".parse().expect("a"), &mut buf, srtp.len(), now);
        assert_eq!(v, crate::Verdict::Forward { from_port: 30002, to: "198.51.100.5:6000".parse().expect("a"), len: plain.len() });
        assert_eq!(&buf[..plain.len()], plain);
        let v = c.relay_mut().handle(30002, "198.51.100.5:6000".parse().expect("a"), &mut buf, plain.len(), now);
        let crate::Verdict::Forward { len, .. } = v else { panic!("{v:?}") };
        let mut down = buf[..len].to_vec();
        ue_rx.unprotect_rtp_vec(&mut down).expect("UE decrypts with the answered key");
        assert_eq!(down, plain);

        let q = c.execute(Command::Query { call_id: "call1".into() }, now, &mut ports, &mut k).expect("query");
        let rtp = q.get("totals").and_then(|t| t.get("RTP")).and_then(|r| r.get("packets")).and_then(Value::as_int);
        assert_eq!(rtp, Some(2));
        let d = c.execute(Command::Delete { call_id: "call1".into() }, now, &mut ports, &mut k).expect("delete");
        let m = c.metrics().render();
        assert!(m.contains("mediasec_agw_packets_total{component=\"rtp\",direction=\"received\"} 2\n"), "{m}");
        assert!(m.contains("mediasec_agw_calls 0\n") && m.contains("mediasec_agw_drops_total{reason=\"auth_failed\"} 0\n"), "{m}");
        assert_eq!(d.get("result").and_then(Value::as_str), Some("ok"));
        assert!(ports.out.is_empty(), "ports released");
        assert_eq!(c.relay().stream_count(), 0);
    }

    #[test]
    fn rtp_to_srtp_towards_the_core() {
        let (mut c, mut ports, mut k, now) = (ctl(), Ports::default(), keys(), Instant::now());
        let plain_offer = core_answer().replace("core 5 5", "a 1 1");
        let offer = c.offer("c2", "a", &plain_offer, &opts(Some(Transport::Savp)), now, &mut ports, &mut k).expect("offer");
        let offered: Vec<&str> = offer.split("\r\n").filter_map(|l| l.strip_prefix("a=crypto:")).collect();
        assert_eq!(offered.len(), SdesPolicy::default().suites.len());
        assert!(offer.contains("m=audio 30002 RTP/SAVP 0\r\n"));
        // B picks our tag 4 (AES_CM_128_HMAC_SHA1_80) with its own key.
        let b_answer = ue_offer()
            .replace("a=crypto:7", "a=crypto:4")
            .lines()
            .filter(|l| !l.starts_with("a=crypto:8"))
            .collect::<Vec<_>>()
            .join("\r\n");
        let answer = c.answer("c2", "a", "b", &b_answer, &opts(None), now, &mut ports).expect("answer");
        assert!(answer.contains("m=audio 30000 RTP/AVP 0 101\r\n") && !answer.contains("a=crypto"), "{answer}");
        let leg = c.relay().stream(c.calls["c2"].media[0].as_ref().expect("m").stream).expect("s").leg(Side::B).protection().name();
        assert_eq!(leg, "srtp");
        // Answering with a suite we did not offer under that tag fails.
        let bad = b_answer.replace("a=crypto:4 AES_CM_128_HMAC_SHA1_80", "a=crypto:4 AES_CM_128_HMAC_SHA1_32");
        assert!(matches!(c.answer("c2", "a", "b", &bad, &opts(None), now, &mut ports), Err(Error::Sdes(_))));
    }

    #[test]
    fn srtp_to_srtp_with_other_keys() {
        let (mut c, mut ports, mut k, now) = (ctl(), Ports::default(), keys(), Instant::now());
        let offer = c.offer("rk", "ue", &ue_offer(), &opts(Some(Transport::Savp)), now, &mut ports, &mut k).expect("offer");
        assert!(!offer.contains(UE_KEY), "the UE's key never leaves the access side");
        let ours: Vec<&str> = offer.lines().filter_map(|l| l.strip_prefix("a=crypto:")).collect();
        assert_eq!(ours.len(), SdesPolicy::default().suites.len());
        let b_answer = core_answer().replace("RTP/AVP 0", "RTP/SAVP 0").replace(
            "a=sendrecv",
            "a=crypto:4 AES_CM_128_HMAC_SHA1_80 inline:QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNk\r\na=sendrecv",
        );
        let answer = c.answer("rk", "ue", "core", &b_answer, &opts(None), now, &mut ports).expect("answer");
        assert!(!answer.contains("QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNk") && answer.contains("a=crypto:7 AES_CM_128_HMAC_SHA1_80 inline:"), "{answer}");
        let s = c.relay().stream(c.calls["rk"].media[0].as_ref().expect("m").stream).expect("s");
        assert_eq!((s.leg(Side::A).protection().name(), s.leg(Side::B).protection().name()), ("srtp", "srtp"));
    }

    #[test]
    fn re_offer_keeps_ports() {
        let (mut c, mut ports, mut k, now) = (ctl(), Ports::default(), keys(), Instant::now());
        let first = c.offer("re", "ue", &ue_offer(), &opts(Some(Transport::Avp)), now, &mut ports, &mut k).expect("offer");
        c.answer("re", "ue", "core", &core_answer(), &opts(None), now, &mut ports).expect("answer");
        let again = c.offer("re", "ue", &ue_offer(), &opts(Some(Transport::Avp)), now, &mut ports, &mut k).expect("re-offer");
        assert_eq!(first, again, "same ports, same rewritten SDP");
        assert_eq!(ports.out.len(), 2);
        let e = c.offer("re", "core", &core_answer(), &opts(None), now, &mut ports, &mut k).expect_err("callee re-offer");
        assert!(e.to_string().contains("re-offer from the answerer's side"), "{e}");
    }

    /// The AGW's key in an answer towards the UE.
    fn answered_key(answer: &str) -> Vec<u8> {
        let line = answer.lines().find_map(|l| l.strip_prefix("a=crypto:")).expect("our crypto line");
        CryptoAttribute::parse(line).expect("parses").inline_keys().next().expect("key").key_salt().to_vec()
    }

    fn session(key: &[u8]) -> Session {
        let suite = Suite::AesCm128HmacSha1_80;
        Session::new(&Policy::new(suite, MasterKey::from_inline(suite, key).expect("k"))).expect("s")
    }

    /// A UE re-offer with a new key takes effect at the core's answer (RFC 4568 §7.1.4): until
    /// then both directions stay on the old keys; from then on the new keys are used and the
    /// UE's packets still in flight under its old key are not lost.
    #[test]
    fn ue_reoffer_new_key_takes_effect_at_the_answer() {
        let (mut c, mut ports, mut k, now) = (ctl(), Ports::default(), keys(), Instant::now());
        c.offer("rk", "ue", &ue_offer(), &opts(Some(Transport::Avp)), now, &mut ports, &mut k).expect("offer");
        let first = c.answer("rk", "ue", "core", &core_answer(), &opts(None), now, &mut ports).expect("answer");
        let ue_key = |b64: &str| CryptoAttribute::parse(&format!("7 AES_CM_128_HMAC_SHA1_80 inline:{b64}")).expect("l").inline_keys().next().expect("k").key_salt().to_vec();
        let (mut ue_old, mut down_old) = (session(&ue_key(UE_KEY)), session(&answered_key(&first)));
        let (ue, core) = ("192.0.2.10:4000".parse().expect("a"), "198.51.100.5:6000".parse().expect("a"));
        let mut seq = 0u16;
        let mut up = |c: &mut Controller, tx: &mut Session| {
            seq += 1;
            let mut p = [&[0x80, 0][..], &seq.to_be_bytes(), &[0, 0, 0, 0, 0, 0, 0, 9], &[7; 20]].concat();
            tx.protect_rtp_vec(&mut p).expect("protect");
            let mut buf = [0u8; 2048];
            buf[..p.len()].copy_from_slice(&p);
            c.relay_mut().handle(30000, ue, &mut buf, p.len(), now)
        };
        let mut dseq = 0u16;
        let mut down = |c: &mut Controller| {
            dseq += 1;
            let plain = [&[0x80, 0][..], &dseq.to_be_bytes(), &[0, 0, 0, 0, 0, 0, 0, 5], &[3; 20]].concat();
            let mut buf = [0u8; 2048];
            buf[..plain.len()].copy_from_slice(&plain);
            let crate::Verdict::Forward { len, .. } = c.relay_mut().handle(30002, core, &mut buf, plain.len(), now) else { panic!("not forwarded") };
            buf[..len].to_vec()
        };
        let forwarded = |v: crate::Verdict| matches!(v, crate::Verdict::Forward { .. });
        assert!(forwarded(up(&mut c, &mut ue_old)));

        let new_key = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNk";
        c.offer("rk", "ue", &ue_offer().replace(UE_KEY, new_key), &opts(Some(Transport::Avp)), now, &mut ports, &mut k).expect("re-offer");
        // Before the answer: the old keys, both ways.
        assert!(forwarded(up(&mut c, &mut ue_old)));
        down_old.unprotect_rtp_vec(&mut down(&mut c)).expect("still under our old key");

        let second = c.answer("rk", "ue", "core", &core_answer(), &opts(None), now, &mut ports).expect("answer");
        assert_ne!(answered_key(&first), answered_key(&second), "a new key of ours in the new answer");
        let mut ue_new = session(&ue_key(new_key));
        assert!(forwarded(up(&mut c, &mut ue_new)));
        assert!(forwarded(up(&mut c, &mut ue_old)), "in flight under the UE's old key");
        session(&answered_key(&second)).unprotect_rtp_vec(&mut down(&mut c)).expect("under our new key");
        let s = c.relay().stream(c.calls["rk"].media[0].as_ref().expect("m").stream).expect("s");
        assert_eq!(s.leg(Side::A).stats.total_drops(), 0);
    }

    /// Off-path hijack of the core leg: between the offer and the answer the plain B leg has
    /// no signalled address, and it latched to the source of the first packet on its port.
    /// An attacker who guessed the port (ringing lasts seconds) got its packets relayed into
    /// the UE's call and, latched, received the UE's decrypted media after the answer while
    /// the real core's packets were dropped. A plain leg latches only to its signalled IP.
    #[test]
    fn plain_leg_does_not_latch_before_its_address_is_signalled() {
        let (mut c, mut ports, mut k, now) = (ctl(), Ports::default(), keys(), Instant::now());
        c.offer("h", "ue", &ue_offer(), &opts(Some(Transport::Avp)), now, &mut ports, &mut k).expect("offer");
        let (attacker, core) = ("192.0.2.66:9999".parse().expect("a"), "198.51.100.5:6000".parse().expect("a"));
        let plain = [0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 9, 1, 2, 3];
        let mut buf = [0u8; 2048];
        buf[..plain.len()].copy_from_slice(&plain);
        let v = c.relay_mut().handle(30002, attacker, &mut buf, plain.len(), now);
        assert_eq!(v, crate::Verdict::Drop(DropReason::SourceMismatch), "injected into the UE's call");
        let answer = c.answer("h", "ue", "core", &core_answer(), &opts(None), now, &mut ports).expect("answer");
        let mut ue_tx = session(CryptoAttribute::parse(&format!("7 AES_CM_128_HMAC_SHA1_80 inline:{UE_KEY}")).expect("l").inline_keys().next().expect("k").key_salt());
        let mut srtp = plain.to_vec();
        ue_tx.protect_rtp_vec(&mut srtp).expect("protect");
        buf[..srtp.len()].copy_from_slice(&srtp);
        let v = c.relay_mut().handle(30000, "192.0.2.10:4000".parse().expect("a"), &mut buf, srtp.len(), now);
        assert_eq!(v, crate::Verdict::Forward { from_port: 30002, to: core, len: plain.len() }, "the UE's media goes to the signalled core");
        buf[..plain.len()].copy_from_slice(&plain);
        let v = c.relay_mut().handle(30002, core, &mut buf, plain.len(), now);
        let crate::Verdict::Forward { len, .. } = v else { panic!("the core's media is relayed: {v:?}") };
        let mut down = buf[..len].to_vec();
        session(&answered_key(&answer)).unprotect_rtp_vec(&mut down).expect("UE decrypts");
        let s = c.relay().stream(c.calls["h"].media[0].as_ref().expect("m").stream).expect("s");
        assert_eq!(s.leg(Side::B).latched(Component::Rtp), Some(core));
        assert_eq!(s.leg(Side::B).stats.drops(DropReason::SourceMismatch), 1);
    }

    /// A UE re-offer that keeps its key under another tag (RFC 4568 §4.1: tags only name the
    /// line) is not a re-key: the SRTP context of that key (rollover counter, replay list) goes
    /// on. It was taken for a new key, and the fresh context under the same master key
    /// accepted every packet the UE had sent before the re-offer once more: a replay.
    #[test]
    fn reoffer_of_the_same_key_under_another_tag_keeps_the_replay_list() {
        let (mut c, mut ports, mut k, now) = (ctl(), Ports::default(), keys(), Instant::now());
        c.offer("rt", "ue", &ue_offer(), &opts(Some(Transport::Avp)), now, &mut ports, &mut k).expect("offer");
        c.answer("rt", "ue", "core", &core_answer(), &opts(None), now, &mut ports).expect("answer");
        let mut ue_tx = session(CryptoAttribute::parse(&format!("7 AES_CM_128_HMAC_SHA1_80 inline:{UE_KEY}")).expect("l").inline_keys().next().expect("k").key_salt());
        let mut first = vec![0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 9, 1, 2, 3];
        ue_tx.protect_rtp_vec(&mut first).expect("protect");
        let ue = "192.0.2.10:4000".parse().expect("a");
        let up = |c: &mut Controller, p: &[u8]| {
            let mut buf = [0u8; 2048];
            buf[..p.len()].copy_from_slice(p);
            c.relay_mut().handle(30000, ue, &mut buf, p.len(), now)
        };
        assert!(matches!(up(&mut c, &first), crate::Verdict::Forward { .. }));
        let retagged = ue_offer().replace("a=crypto:7 ", "a=crypto:9 ");
        c.offer("rt", "ue", &retagged, &opts(Some(Transport::Avp)), now, &mut ports, &mut k).expect("re-offer");
        c.answer("rt", "ue", "core", &core_answer(), &opts(None), now, &mut ports).expect("answer");
        assert_eq!(up(&mut c, &first), crate::Verdict::Drop(DropReason::Replay), "a packet seen before the re-offer, replayed");
        let mut next = vec![0x80, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 9, 4, 5, 6];
        ue_tx.protect_rtp_vec(&mut next).expect("protect");
        assert!(matches!(up(&mut c, &next), crate::Verdict::Forward { .. }), "the same key goes on");
    }

    #[test]
    fn refusals_leave_no_state() {
        let (mut c, mut ports, mut k, now) = (ctl(), Ports::default(), keys(), Instant::now());
        let dtls = ue_offer().lines().filter(|l| !l.starts_with("a=crypto")).collect::<Vec<_>>().join("\r\n");
        let e = c.offer("x", "ue", &dtls, &opts(None), now, &mut ports, &mut k).expect_err("no crypto");
        assert_eq!(e.to_string(), "unsupported RTP/SAVP media 0 without a=crypto (DTLS-SRTP)");
        let weak = ue_offer().replace("AES_CM_128_HMAC_SHA1_80", "NULL_HMAC_SHA1_80").replace("AES_CM_128_HMAC_SHA1_32", "NULL_HMAC_SHA1_32");
        let e = c.offer("x", "ue", &weak, &opts(None), now, &mut ports, &mut k).expect_err("no suite");
        assert!(e.to_string().starts_with("SDES: no acceptable a=crypto (line 1: crypto-suite NULL_HMAC_SHA1_80 not acceptable"), "{e}");
        let e = c.offer("x", "ue", &ue_offer().replace("RTP/SAVP", "UDP/BFCP"), &opts(None), now, &mut ports, &mut k).expect_err("bfcp");
        assert!(e.to_string().contains("UDP/BFCP"));
        assert!(ports.out.is_empty() && c.call_count() == 0);
        assert_eq!(c.answer("nope", "a", "b", &core_answer(), &opts(None), now, &mut ports), Err(Error::UnknownCall));
    }

    #[test]
    fn rejected_stream_and_timeouts_and_retransmissions() {
        let (mut c, mut ports, mut k, now) = (ctl(), Ports::default(), keys(), Instant::now());
        c.offer("t", "ue", &ue_offer(), &opts(Some(Transport::Avp)), now, &mut ports, &mut k).expect("offer");
        let rejected = c.answer("t", "ue", "core", &core_answer().replace("m=audio 6000", "m=audio 0"), &opts(None), now, &mut ports).expect("answer");
        assert!(rejected.contains("m=audio 0 RTP/SAVP 0\r\n"), "{rejected}");
        assert!(ports.out.is_empty());
        c.offer("t2", "ue", &ue_offer(), &opts(Some(Transport::Avp)), now, &mut ports, &mut k).expect("offer");
        assert!(c.expire(now + Duration::from_secs(29), &mut ports).is_empty());
        assert_eq!(c.expire(now + Duration::from_secs(30), &mut ports).len(), 2);
        assert!(ports.out.is_empty() && c.call_count() == 0);
        // Same cookie, same reply (and the offer is executed once).
        let req = ng::frame(b"ck1", &Value::dict([("command", Value::str("offer")), ("call-id", Value::str("r")), ("from-tag", Value::str("f")), ("sdp", Value::str(ue_offer()))]));
        let first = c.handle_datagram(&req, now, &mut ports, &mut k, &[]).expect("reply");
        let again = c.handle_datagram(&req, now, &mut ports, &mut k, &[]).expect("reply");
        assert_eq!((&first.reply, first.refused), (&again.reply, None));
        assert_eq!(ports.out.len(), 2);
        let err = c.handle_datagram(b"ck2 d7:command3:fooe", now, &mut ports, &mut k, &[]).expect("reply");
        assert_eq!(err.reply, b"ck2 d12:error-reason25:unsupported command \"foo\"6:result5:errore");
        assert_eq!(err.refused, Some(Error::UnsupportedCommand("foo".to_owned())));
        assert_eq!(c.handle_datagram(b"ck2 d7:command3:fooe", now, &mut ports, &mut k, &[]).map(|h| h.refused), Some(None), "a cached reply was not executed now");
        assert_eq!(c.handle_datagram(b"nocookie", now, &mut ports, &mut k, &[]), None);
    }

    #[test]
    fn list_returns_sorted_call_ids_up_to_the_limit() {
        let (mut c, mut ports, mut k, now) = (ctl(), Ports::default(), keys(), Instant::now());
        // `list` draws no key: a key source that is never called does.
        let list = |c: &mut Controller, ports: &mut Ports, req: &[u8]| {
            String::from_utf8(c.handle_datagram(req, now, ports, &mut |_: &mut [u8]| unreachable!("list draws no key"), &[]).expect("reply").reply).expect("utf-8")
        };
        assert_eq!(list(&mut c, &mut ports, b"l0 d7:command4:liste"), "l0 d5:callsle6:result2:oke");
        for id in ["b-call", "a-call", "c-call"] {
            c.offer(id, "ue", &ue_offer(), &opts(Some(Transport::Avp)), now, &mut ports, &mut k).expect("offer");
        }
        assert_eq!(
            list(&mut c, &mut ports, b"l1 d7:command4:liste"),
            "l1 d5:callsl6:a-call6:b-call6:c-calle6:result2:oke"
        );
        assert_eq!(list(&mut c, &mut ports, b"l2 d7:command4:list5:limiti2ee"), "l2 d5:callsl6:a-call6:b-calle6:result2:oke");
        assert_eq!(list(&mut c, &mut ports, b"l3 d7:command4:list5:limiti0ee"), "l3 d5:callsle6:result2:oke");
        assert_eq!(list(&mut c, &mut ports, b"l4 d7:command4:list5:limit1:1e"), "l4 d5:callsl6:a-calle6:result2:oke");
        assert_eq!(
            list(&mut c, &mut ports, b"l5 d7:command4:list5:limitl2:abee"),
            "l5 d12:error-reason30:missing or invalid key \"limit\"6:result5:errore"
        );
        assert_eq!(
            list(&mut c, &mut ports, b"l6 d7:command4:list5:limiti-1ee"),
            "l6 d12:error-reason30:missing or invalid key \"limit\"6:result5:errore"
        );
        // Call-ids held elsewhere (the gateway's other shards) are listed with ours.
        let elsewhere = ["0-call".to_owned(), "b2-call".to_owned()];
        let merged = c.handle_datagram(b"l7 d7:command4:list5:limiti3ee", now, &mut ports, &mut k, &elsewhere).expect("reply");
        assert_eq!(merged.reply, b"l7 d5:callsl6:0-call6:a-call6:b-calle6:result2:oke");
        c.execute(Command::Delete { call_id: "b-call".into() }, now, &mut ports, &mut k).expect("delete");
        let listed = c.execute(Command::List { limit: ng::LIST_LIMIT }, now, &mut ports, &mut k).expect("list");
        assert_eq!(listed.get("calls"), Some(&Value::List(vec![Value::str("a-call"), Value::str("c-call")])));
    }
}
