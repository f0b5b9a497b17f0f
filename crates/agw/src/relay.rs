//! The sans-IO relay core of the IMS Access Gateway (TS 33.328 §4.1.2.1 / §5.4.1 e2ae:
//! the AGW terminates SRTP towards the UE and relays plain RTP, or SRTP under other keys,
//! towards the core).
//!
//! A [`MediaStream`] has two [`Leg`]s: side A faces the offerer (ng `from-tag`), side B the
//! answerer (`to-tag`). Each leg owns one local port pair (RTP on an even port, RTCP on the
//! next odd one; RTCP arriving on the RTP port is demultiplexed as in RFC 5761 §4). A packet
//! received on a leg is
//! 1. authenticated and decrypted with the peer's key if the leg is SRTP (RFC 3711 §3.3,
//!    §3.4) — a packet that fails is dropped and counted, never forwarded;
//! 2. used for latching: the leg learns its peer's address from the first packet that
//!    passed step 1 (an SRTP leg follows any later authenticated source, e.g. a NAT
//!    rebinding; a plain leg latches once, and only to a source at its peer's signalled IP:
//!    before that address is known — the answerer's leg until the answer — it latches
//!    nothing, so a packet from a guessed port cannot claim the leg);
//! 3. re-protected with our key if the other leg is SRTP, and sent from the other leg's
//!    port to that leg's latched (else signalled) address.
//!
//! Packets are transformed in the caller's buffer: no allocation per packet. Time is passed
//! in; the relay never reads a clock.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mediasec_srtp::{is_rtcp, Policy, Session};

use crate::ports::PortTable;
use crate::stats::{Component, DropReason, LegStats};
use crate::Error;

/// Which side of a media stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// Towards the offerer (ng `from-tag`).
    A,
    /// Towards the answerer (ng `to-tag`).
    B,
}

impl Side {
    /// The other side.
    pub fn other(self) -> Self {
        match self {
            Self::A => Self::B,
            Self::B => Self::A,
        }
    }
}

/// Index of a media stream in the relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StreamId(usize);

/// How a leg's media is protected.
pub enum Protection {
    /// Not known yet (SDES answer pending): packets in either direction are dropped.
    Pending,
    /// Plain RTP/RTCP.
    Plain,
    /// SRTP/SRTCP: `rx` holds the peer's key (we unprotect what it sends), `tx` ours.
    Srtp {
        /// Unprotects what the peer sends.
        rx: Box<Session>,
        /// Protects what we send to the peer.
        tx: Box<Session>,
    },
}

impl Protection {
    /// SRTP with the peer's key `rx` and our key `tx`.
    pub fn srtp(rx: &Policy, tx: &Policy) -> Result<Self, Error> {
        let build = |p: &Policy| Session::new(p).map(Box::new).map_err(|e| Error::Sdes(e.to_string()));
        Ok(Self::Srtp { rx: build(rx)?, tx: build(tx)? })
    }

    /// A short name (`plain`, `srtp`, `pending`).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Plain => "plain",
            Self::Srtp { .. } => "srtp",
        }
    }
}

/// One leg: our port pair towards one peer, the peer's addresses, keys and counters.
pub struct Leg {
    port: u16,
    signalled: [Option<SocketAddr>; 2],
    latched: [Option<SocketAddr>; 2],
    protection: Protection,
    /// The peer's previous key after it re-keyed ([`Leg::rekey`]).
    retired: Option<Retired>,
    /// Counters.
    pub stats: LegStats,
}

/// The peer's key before a re-key: packets it sent before it learnt the answer still arrive
/// under it. A packet the current key refuses is tried with this one, which is kept until
/// [`RETIRED_GRACE`] after the current key first authenticated a packet, and at most
/// [`RETIRED_MAX`] after the re-key.
struct Retired {
    rx: Box<Session>,
    since: Instant,
    confirmed: Option<Instant>,
}

/// How long the previous key is still accepted once the new one is in use (late and
/// reordered packets).
const RETIRED_GRACE: Duration = Duration::from_secs(2);
/// How long the previous key is accepted at most after a re-key.
const RETIRED_MAX: Duration = Duration::from_secs(30);

impl Retired {
    fn expired(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.since) > RETIRED_MAX
            || self.confirmed.is_some_and(|t| now.saturating_duration_since(t) > RETIRED_GRACE)
    }
}

fn slot(c: Component) -> usize {
    match c {
        Component::Rtp => 0,
        Component::Rtcp => 1,
    }
}

impl Leg {
    fn new(port: u16) -> Self {
        Self { port, signalled: [None; 2], latched: [None; 2], protection: Protection::Pending, retired: None, stats: LegStats::default() }
    }

    /// Our RTP port (RTCP is the next port).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The address latched for a component, if any.
    pub fn latched(&self, c: Component) -> Option<SocketAddr> {
        self.latched.get(slot(c)).copied().flatten()
    }

    /// The signalled (SDP) address of a component, if any.
    pub fn signalled(&self, c: Component) -> Option<SocketAddr> {
        self.signalled.get(slot(c)).copied().flatten()
    }

    /// The protection in force.
    pub fn protection(&self) -> &Protection {
        &self.protection
    }

    /// Sets the peer's signalled RTP and RTCP addresses.
    pub fn set_signalled(&mut self, rtp: Option<SocketAddr>, rtcp: Option<SocketAddr>) {
        self.signalled = [rtp, rtcp];
    }

    /// Sets the protection (keys are replaced; SRTP state starts afresh).
    pub fn set_protection(&mut self, p: Protection) {
        self.protection = p;
        self.retired = None;
    }

    /// Sets the protection a re-negotiation (a re-offer, or its answer) agreed. When SRTP
    /// stays SRTP, the peer's receive context is carried over if the peer kept its key
    /// (`peer_rekeyed` false: its rollover counter and replay list continue, as one SRTP
    /// session), else the old one is retired: still tried on packets the new key refuses
    /// (see [`Retired`]), so the packets the peer sent under its old key before it received
    /// the answer are not lost. Our own key is the new one at once.
    pub fn rekey(&mut self, p: Protection, peer_rekeyed: bool, now: Instant) {
        let old = std::mem::replace(&mut self.protection, p);
        self.retired = None;
        if let (Protection::Srtp { rx: old_rx, .. }, Protection::Srtp { rx, .. }) = (old, &mut self.protection) {
            if peer_rekeyed {
                self.retired = Some(Retired { rx: old_rx, since: now, confirmed: None });
            } else {
                *rx = old_rx;
            }
        }
    }

    fn destination(&self, c: Component) -> Option<SocketAddr> {
        self.latched(c).or_else(|| self.signalled(c))
    }

    /// Step 2 of the module documentation.
    fn latch(&mut self, c: Component, from: SocketAddr) -> Result<(), DropReason> {
        let i = slot(c);
        let authenticated = matches!(self.protection, Protection::Srtp { .. });
        let current = self.latched.get(i).copied().flatten();
        let signalled_ip = self.signalled.iter().flatten().next().map(SocketAddr::ip);
        let ok = match current {
            Some(addr) => addr == from || authenticated,
            None => authenticated || signalled_ip.is_some_and(|ip| ip == from.ip()),
        };
        if !ok {
            return Err(DropReason::SourceMismatch);
        }
        if let Some(l) = self.latched.get_mut(i) {
            *l = Some(from);
        }
        Ok(())
    }

    /// Step 1: authenticate and decrypt in place; returns the plain length. During a re-key a
    /// packet the current key refuses is tried with the retired one (on a copy: a failed
    /// unprotect may leave the buffer altered); one that both refuse counts once, with the
    /// current key's reason.
    fn open(&mut self, c: Component, buf: &mut [u8], len: usize, now: Instant) -> Result<usize, DropReason> {
        let packet = buf.get_mut(..len).ok_or(DropReason::Malformed)?;
        let unprotect = |s: &mut Session, p: &mut [u8]| match c {
            Component::Rtp => s.unprotect_rtp(p),
            Component::Rtcp => s.unprotect_rtcp(p),
        };
        let rx = match &mut self.protection {
            Protection::Pending => return Err(DropReason::NotNegotiated),
            Protection::Plain => return Ok(len),
            Protection::Srtp { rx, .. } => rx,
        };
        if self.retired.as_ref().is_some_and(|r| r.expired(now)) {
            self.retired = None;
        }
        let Some(retired) = &mut self.retired else {
            return unprotect(rx, packet).map_err(DropReason::from_unprotect);
        };
        let mut copy = [0u8; 2048];
        let original = copy.get_mut(..len).ok_or(DropReason::Malformed)?;
        original.copy_from_slice(packet);
        match unprotect(rx, packet) {
            Ok(n) => {
                retired.confirmed.get_or_insert(now);
                Ok(n)
            }
            Err(e) => {
                let n = unprotect(&mut retired.rx, original).map_err(|_| DropReason::from_unprotect(e))?;
                packet.get_mut(..n).ok_or(DropReason::Malformed)?.copy_from_slice(original.get(..n).ok_or(DropReason::Malformed)?);
                Ok(n)
            }
        }
    }

    /// Step 3: protect in place for this leg's peer; returns the length to send.
    fn seal(&mut self, c: Component, buf: &mut [u8], len: usize) -> Result<usize, DropReason> {
        match &mut self.protection {
            Protection::Pending => Err(DropReason::NotNegotiated),
            Protection::Plain => Ok(len),
            Protection::Srtp { tx, .. } => match c {
                Component::Rtp => tx.protect_rtp(buf, len),
                Component::Rtcp => tx.protect_rtcp(buf, len),
            }
            .map_err(|_| DropReason::ProtectFailed),
        }
    }
}

/// A media stream: two legs and its creation time.
pub struct MediaStream {
    legs: [Leg; 2],
    created: Instant,
}

impl MediaStream {
    /// One leg.
    pub fn leg(&self, side: Side) -> &Leg {
        let [a, b] = &self.legs;
        match side {
            Side::A => a,
            Side::B => b,
        }
    }

    /// One leg, mutably.
    pub fn leg_mut(&mut self, side: Side) -> &mut Leg {
        let [a, b] = &mut self.legs;
        match side {
            Side::A => a,
            Side::B => b,
        }
    }

    /// The last time a packet arrived on either leg, or the creation time.
    pub fn last_activity(&self) -> Instant {
        let [a, b] = &self.legs;
        self.created.max(a.stats.last_received.unwrap_or(self.created)).max(b.stats.last_received.unwrap_or(self.created))
    }

    fn split(&mut self, inbound: Side) -> (&mut Leg, &mut Leg) {
        let [a, b] = &mut self.legs;
        match inbound {
            Side::A => (a, b),
            Side::B => (b, a),
        }
    }
}

/// What to do with a received packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Send `buf[..len]` from local port `from_port` to `to`.
    Forward {
        /// Our local port to send from (the other leg's RTP or RTCP port).
        from_port: u16,
        /// Destination.
        to: SocketAddr,
        /// Length of the packet to send, at the start of the buffer.
        len: usize,
    },
    /// Do not forward; the reason has been counted.
    Drop(DropReason),
}

/// Every media stream of the gateway, indexed by our local ports.
#[derive(Default)]
pub struct Relay {
    streams: Vec<Option<MediaStream>>,
    free: Vec<usize>,
    /// By each leg's RTP port.
    by_port: PortTable<(StreamId, Side)>,
    live: usize,
    unknown_port: u64,
}

impl Relay {
    /// An empty relay.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a stream whose legs use the RTP ports `a` and `b` (even; RTCP on port + 1).
    pub fn add_stream(&mut self, a: u16, b: u16, now: Instant) -> Result<StreamId, Error> {
        if !a.is_multiple_of(2) || !b.is_multiple_of(2) || a == b || self.by_port.contains(a) || self.by_port.contains(b) {
            return Err(Error::NoPorts);
        }
        let stream = MediaStream { legs: [Leg::new(a), Leg::new(b)], created: now };
        let id = match self.free.pop() {
            Some(i) => {
                if let Some(slot) = self.streams.get_mut(i) {
                    *slot = Some(stream);
                }
                StreamId(i)
            }
            None => {
                self.streams.push(Some(stream));
                StreamId(self.streams.len() - 1)
            }
        };
        self.by_port.insert(a, (id, Side::A));
        self.by_port.insert(b, (id, Side::B));
        self.live += 1;
        Ok(id)
    }

    /// Removes a stream and returns it (its ports are free again).
    pub fn remove_stream(&mut self, id: StreamId) -> Option<MediaStream> {
        let stream = self.streams.get_mut(id.0)?.take()?;
        for leg in &stream.legs {
            self.by_port.remove(leg.port);
        }
        self.live -= 1;
        self.free.push(id.0);
        Some(stream)
    }

    /// A stream.
    pub fn stream(&self, id: StreamId) -> Option<&MediaStream> {
        self.streams.get(id.0)?.as_ref()
    }

    /// A stream, mutably.
    pub fn stream_mut(&mut self, id: StreamId) -> Option<&mut MediaStream> {
        self.streams.get_mut(id.0)?.as_mut()
    }

    /// Live streams.
    pub fn stream_count(&self) -> usize {
        self.live
    }

    /// Packets received on ports of no stream.
    pub fn unknown_port_drops(&self) -> u64 {
        self.unknown_port
    }

    /// Handles the packet `buf[..len]` received on our local port `port` from `from` at
    /// `now`; on [`Verdict::Forward`] the packet to send is at the start of `buf`. `buf`
    /// must have room for the SRTP trailer (len + 16 + MKI; 2048 octets is plenty).
    pub fn handle(&mut self, port: u16, from: SocketAddr, buf: &mut [u8], len: usize, now: Instant) -> Verdict {
        let Some(&(id, side)) = self.by_port.get(port & !1) else {
            self.unknown_port += 1;
            return Verdict::Drop(DropReason::UnknownPort);
        };
        let Some(stream) = self.streams.get_mut(id.0).and_then(Option::as_mut) else {
            self.unknown_port += 1;
            return Verdict::Drop(DropReason::UnknownPort);
        };
        let component =
            if port % 2 == 1 || buf.get(..len).is_some_and(is_rtcp) { Component::Rtcp } else { Component::Rtp };
        let (inbound, outbound) = stream.split(side);
        inbound.stats.on_received(component, len, now);
        match Self::relay(inbound, outbound, component, from, buf, len, now) {
            Ok(v) => v,
            Err(reason) => {
                inbound.stats.on_drop(reason);
                Verdict::Drop(reason)
            }
        }
    }

    fn relay(
        inbound: &mut Leg,
        outbound: &mut Leg,
        c: Component,
        from: SocketAddr,
        buf: &mut [u8],
        len: usize,
        now: Instant,
    ) -> Result<Verdict, DropReason> {
        let plain = inbound.open(c, buf, len, now)?;
        inbound.latch(c, from)?;
        let to = outbound.destination(c).ok_or(DropReason::NoDestination)?;
        let out = outbound.seal(c, buf, plain)?;
        inbound.stats.on_forwarded(c, out);
        outbound.stats.on_sent(c, out);
        let from_port = match c {
            Component::Rtp => outbound.port,
            Component::Rtcp => outbound.port + 1,
        };
        Ok(Verdict::Forward { from_port, to, len: out })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use mediasec_srtp::{MasterKey, Suite};
    use proptest::prelude::*;

    const SUITE: Suite = Suite::AesCm128HmacSha1_80;

    fn policy(byte: u8) -> Policy {
        Policy::new(SUITE, MasterKey::from_inline(SUITE, &[byte; 30]).expect("key"))
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    fn rtp(seq: u16, ssrc: u32, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        p[2..4].copy_from_slice(&seq.to_be_bytes());
        p[8..12].copy_from_slice(&ssrc.to_be_bytes());
        p.extend_from_slice(payload);
        p
    }

    fn rtcp_sr(ssrc: u32) -> Vec<u8> {
        let mut p = vec![0x80, 200, 0, 6];
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.extend_from_slice(&[7; 20]);
        p
    }

    const UE: &str = "192.0.2.10:4000";
    const UE_RTCP: &str = "192.0.2.10:4001";
    const CORE: &str = "198.51.100.5:6000";
    const CORE_RTCP: &str = "198.51.100.5:6001";

    /// Access leg A is SRTP (UE key 0x11, our key 0x22); core leg B is plain.
    fn setup() -> (Relay, StreamId, Session, Session, Instant) {
        let now = Instant::now();
        let mut relay = Relay::new();
        let id = relay.add_stream(30000, 30002, now).expect("stream");
        let s = relay.stream_mut(id).expect("stream");
        s.leg_mut(Side::A).set_signalled(Some(addr(UE)), Some(addr(UE_RTCP)));
        s.leg_mut(Side::A).set_protection(Protection::srtp(&policy(0x11), &policy(0x22)).expect("srtp"));
        s.leg_mut(Side::B).set_signalled(Some(addr(CORE)), Some(addr(CORE_RTCP)));
        s.leg_mut(Side::B).set_protection(Protection::Plain);
        let ue_tx = Session::new(&policy(0x11)).expect("session");
        let ue_rx = Session::new(&policy(0x22)).expect("session");
        (relay, id, ue_tx, ue_rx, now)
    }

    fn send(relay: &mut Relay, port: u16, from: &str, packet: &[u8], now: Instant) -> (Verdict, Vec<u8>) {
        let mut buf = [0u8; 2048];
        buf[..packet.len()].copy_from_slice(packet);
        let v = relay.handle(port, addr(from), &mut buf, packet.len(), now);
        let out = match v {
            Verdict::Forward { len, .. } => buf[..len].to_vec(),
            Verdict::Drop(_) => Vec::new(),
        };
        (v, out)
    }

    #[test]
    fn srtp_to_plain_and_back_with_rtcp() {
        let (mut relay, id, mut ue_tx, mut ue_rx, now) = setup();
        for seq in 0..20u16 {
            let plain = rtp(seq.wrapping_add(65530), 0xaaaa, &[seq as u8; 160]);
            let mut srtp = plain.clone();
            ue_tx.protect_rtp_vec(&mut srtp).expect("protect");
            let (v, out) = send(&mut relay, 30000, UE, &srtp, now);
            assert_eq!(v, Verdict::Forward { from_port: 30002, to: addr(CORE), len: plain.len() });
            assert_eq!(out, plain);
            let down = rtp(seq, 0xbbbb, &[0x55; 160]);
            let (v, mut out) = send(&mut relay, 30002, CORE, &down, now);
            assert_eq!(v, Verdict::Forward { from_port: 30000, to: addr(UE), len: down.len() + 10 });
            ue_rx.unprotect_rtp_vec(&mut out).expect("UE decrypts");
            assert_eq!(out, down);
        }
        // RTCP on the RTCP ports, and RTCP multiplexed on the RTP port.
        for port in [30001, 30000] {
            let mut srtcp = rtcp_sr(0xaaaa);
            ue_tx.protect_rtcp_vec(&mut srtcp).expect("protect");
            let (v, out) = send(&mut relay, port, UE_RTCP, &srtcp, now);
            assert_eq!(v, Verdict::Forward { from_port: 30003, to: addr(CORE_RTCP), len: 28 });
            assert_eq!(out, rtcp_sr(0xaaaa));
        }
        let (v, mut out) = send(&mut relay, 30003, CORE_RTCP, &rtcp_sr(0xbbbb), now);
        assert!(matches!(v, Verdict::Forward { from_port: 30001, .. }));
        ue_rx.unprotect_rtcp_vec(&mut out).expect("UE decrypts SRTCP");
        assert_eq!(out, rtcp_sr(0xbbbb));
        let s = relay.stream(id).expect("stream");
        assert_eq!(s.leg(Side::A).stats.received(Component::Rtp).packets, 20);
        assert_eq!(s.leg(Side::A).stats.received(Component::Rtcp).packets, 2);
        assert_eq!(s.leg(Side::B).stats.sent(Component::Rtp).packets, 20);
        assert_eq!(s.leg(Side::A).stats.sent(Component::Rtcp).packets, 1);
        assert_eq!(s.leg(Side::A).stats.total_drops() + s.leg(Side::B).stats.total_drops(), 0);
    }

    #[test]
    fn failed_packets_are_never_forwarded_and_counted() {
        let (mut relay, id, mut ue_tx, _, now) = setup();
        let mut srtp = rtp(1, 0xaaaa, &[1; 160]);
        ue_tx.protect_rtp_vec(&mut srtp).expect("protect");
        let mut forged = srtp.clone();
        forged[20] ^= 1;
        assert_eq!(send(&mut relay, 30000, "203.0.113.9:1", &forged, now).0, Verdict::Drop(DropReason::AuthFailed));
        // A forged packet does not latch: the genuine one latches the UE's real address.
        assert!(matches!(send(&mut relay, 30000, UE, &srtp, now).0, Verdict::Forward { .. }));
        assert_eq!(send(&mut relay, 30000, UE, &srtp, now).0, Verdict::Drop(DropReason::Replay));
        assert_eq!(send(&mut relay, 30000, UE, &[0x80, 0], now).0, Verdict::Drop(DropReason::Malformed));
        let mut wrong_key = Session::new(&policy(0x33)).expect("session");
        let mut other = rtp(2, 0xaaaa, &[2; 160]);
        wrong_key.protect_rtp_vec(&mut other).expect("protect");
        assert_eq!(send(&mut relay, 30000, UE, &other, now).0, Verdict::Drop(DropReason::AuthFailed));
        assert_eq!(send(&mut relay, 40000, UE, &srtp, now).0, Verdict::Drop(DropReason::UnknownPort));
        let leg = &relay.stream(id).expect("stream").leg(Side::A).stats;
        assert_eq!(leg.drops(DropReason::AuthFailed), 2);
        assert_eq!(leg.drops(DropReason::Replay), 1);
        assert_eq!(leg.drops(DropReason::Malformed), 1);
        assert_eq!(leg.total_drops(), 4);
        assert_eq!(relay.unknown_port_drops(), 1);
        assert_eq!(relay.stream(id).expect("stream").leg(Side::A).latched(Component::Rtp), Some(addr(UE)));
    }

    /// A re-key with a new peer key retires the old one: packets the peer sent under it
    /// before switching still pass, until the grace period after the new key's first packet;
    /// a packet neither key authenticates is dropped and counted once. Re-keyed with the same
    /// peer key, the receive context carries on (no replay of packets seen before).
    #[test]
    fn rekey_retires_the_old_peer_key_then_drops_it() {
        let (mut relay, id, mut old_tx, _, now) = setup();
        let forward = |v: Verdict| matches!(v, Verdict::Forward { .. });
        let mut before = Vec::new();
        for seq in 0..3u16 {
            let mut p = rtp(seq, 0xaaaa, &[seq as u8; 160]);
            old_tx.protect_rtp_vec(&mut p).expect("protect");
            before.push(p);
        }
        assert!(forward(send(&mut relay, 30000, UE, &before[0], now).0));
        relay.stream_mut(id).expect("stream").leg_mut(Side::A).rekey(Protection::srtp(&policy(0x44), &policy(0x55)).expect("srtp"), true, now);
        // In flight under the old key: accepted, decrypted.
        let (v, out) = send(&mut relay, 30000, UE, &before[1], now);
        assert!(forward(v), "{v:?}");
        assert_eq!(out, rtp(1, 0xaaaa, &[1; 160]));
        let mut new_tx = Session::new(&policy(0x44)).expect("session");
        let mut fresh = rtp(3, 0xaaaa, &[3; 160]);
        new_tx.protect_rtp_vec(&mut fresh).expect("protect");
        let t1 = now + Duration::from_millis(100);
        assert!(forward(send(&mut relay, 30000, UE, &fresh, t1).0));
        let mut forged = before[2].clone();
        forged[20] ^= 1;
        assert_eq!(send(&mut relay, 30000, UE, &forged, t1).0, Verdict::Drop(DropReason::AuthFailed));
        // Late, within the grace period after the new key's first packet: still accepted.
        let late = t1 + RETIRED_GRACE;
        assert!(forward(send(&mut relay, 30000, UE, &before[2], late).0));
        let mut last_old = rtp(4, 0xaaaa, &[4; 160]);
        old_tx.protect_rtp_vec(&mut last_old).expect("protect");
        let after = late + Duration::from_millis(1);
        assert_eq!(send(&mut relay, 30000, UE, &last_old, after).0, Verdict::Drop(DropReason::AuthFailed));
        assert_eq!(relay.stream(id).expect("stream").leg(Side::A).stats.drops(DropReason::AuthFailed), 2);

        // The same peer key again: its context continues, so a replay is still caught.
        relay.stream_mut(id).expect("stream").leg_mut(Side::A).rekey(Protection::srtp(&policy(0x44), &policy(0x66)).expect("srtp"), false, after);
        assert_eq!(send(&mut relay, 30000, UE, &fresh, after).0, Verdict::Drop(DropReason::Replay));
        let mut next = rtp(5, 0xaaaa, &[5; 160]);
        new_tx.protect_rtp_vec(&mut next).expect("protect");
        assert!(forward(send(&mut relay, 30000, UE, &next, after).0));
    }

    /// A retired key the peer never stops using is dropped at the latest `RETIRED_MAX` after
    /// the re-key.
    #[test]
    fn retired_key_expires_even_unconfirmed() {
        let (mut relay, id, mut old_tx, _, now) = setup();
        relay.stream_mut(id).expect("stream").leg_mut(Side::A).rekey(Protection::srtp(&policy(0x44), &policy(0x55)).expect("srtp"), true, now);
        let mut a = rtp(1, 0xaaaa, &[1; 160]);
        old_tx.protect_rtp_vec(&mut a).expect("protect");
        assert!(matches!(send(&mut relay, 30000, UE, &a, now + RETIRED_MAX).0, Verdict::Forward { .. }));
        let mut b = rtp(2, 0xaaaa, &[2; 160]);
        old_tx.protect_rtp_vec(&mut b).expect("protect");
        let past = now + RETIRED_MAX + Duration::from_millis(1);
        assert_eq!(send(&mut relay, 30000, UE, &b, past).0, Verdict::Drop(DropReason::AuthFailed));
    }

    #[test]
    fn latching_follows_authenticated_sources_only() {
        let (mut relay, id, mut ue_tx, _, now) = setup();
        let natted = "203.0.113.7:55000";
        let mut srtp = rtp(1, 0xaaaa, &[1; 160]);
        ue_tx.protect_rtp_vec(&mut srtp).expect("protect");
        assert!(matches!(send(&mut relay, 30000, natted, &srtp, now).0, Verdict::Forward { .. }));
        // Core media now goes to the latched (NATed) address, not the signalled one.
        assert_eq!(send(&mut relay, 30002, CORE, &rtp(9, 1, &[0; 10]), now).0, Verdict::Forward { from_port: 30000, to: addr(natted), len: 32 });
        // The plain core leg accepts only its signalled IP, then only its latched address.
        assert_eq!(send(&mut relay, 30002, "192.0.2.99:6000", &rtp(10, 1, &[0; 10]), now).0, Verdict::Drop(DropReason::SourceMismatch));
        assert_eq!(send(&mut relay, 30002, "198.51.100.5:6002", &rtp(11, 1, &[0; 10]), now).0, Verdict::Drop(DropReason::SourceMismatch));
        assert_eq!(relay.stream(id).expect("stream").leg(Side::B).stats.drops(DropReason::SourceMismatch), 2);
    }

    #[test]
    fn pending_and_missing_destination() {
        let now = Instant::now();
        let mut relay = Relay::new();
        let id = relay.add_stream(30000, 30002, now).expect("stream");
        assert_eq!(send(&mut relay, 30000, UE, &rtp(1, 1, &[0; 4]), now).0, Verdict::Drop(DropReason::NotNegotiated));
        let s = relay.stream_mut(id).expect("stream");
        s.leg_mut(Side::A).set_protection(Protection::Plain);
        s.leg_mut(Side::B).set_protection(Protection::Plain);
        // A plain leg with no signalled address latches nothing.
        assert_eq!(send(&mut relay, 30000, UE, &rtp(1, 1, &[0; 4]), now).0, Verdict::Drop(DropReason::SourceMismatch));
        relay.stream_mut(id).expect("stream").leg_mut(Side::A).set_signalled(Some(addr(UE)), Some(addr(UE_RTCP)));
        assert_eq!(send(&mut relay, 30000, UE, &rtp(1, 1, &[0; 4]), now).0, Verdict::Drop(DropReason::NoDestination));
        assert!(relay.add_stream(30000, 30004, now).is_err(), "port in use");
        assert!(relay.add_stream(30005, 30008, now).is_err(), "odd port");
        assert!(relay.remove_stream(id).is_some());
        assert_eq!(relay.stream_count(), 0);
        assert!(relay.add_stream(30000, 30002, now).is_ok(), "ports free again");
    }

    #[test]
    fn activity_is_tracked_for_timeouts() {
        let (mut relay, id, mut ue_tx, _, now) = setup();
        assert_eq!(relay.stream(id).expect("stream").last_activity(), now);
        let later = now + Duration::from_secs(5);
        let mut srtp = rtp(1, 0xaaaa, &[1; 160]);
        ue_tx.protect_rtp_vec(&mut srtp).expect("protect");
        send(&mut relay, 30000, UE, &srtp, later);
        assert_eq!(relay.stream(id).expect("stream").last_activity(), later);
    }

    proptest! {
        #[test]
        fn arbitrary_packets_on_an_srtp_leg_are_dropped_and_counted(packets in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..20)) {
            let (mut relay, id, _, _, now) = setup();
            for p in &packets {
                let mut buf = [0u8; 2048];
                buf[..p.len()].copy_from_slice(p);
                let v = relay.handle(30000, addr(UE), &mut buf, p.len(), now);
                prop_assert!(matches!(v, Verdict::Drop(_)), "forwarded an unauthenticated packet");
            }
            prop_assert_eq!(relay.stream(id).expect("stream").leg(Side::A).stats.total_drops(), packets.len() as u64);
            prop_assert_eq!(relay.stream(id).expect("stream").leg(Side::B).stats.sent(Component::Rtp).packets, 0);
        }

        #[test]
        fn relayed_payloads_are_intact(payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..1200), 1..10), start in any::<u16>()) {
            let (mut relay, _, mut ue_tx, mut ue_rx, now) = setup();
            for (i, payload) in payloads.iter().enumerate() {
                let seq = start.wrapping_add(i as u16);
                let plain = rtp(seq, 0xaaaa, payload);
                let mut srtp = plain.clone();
                ue_tx.protect_rtp_vec(&mut srtp).expect("protect");
                let (_, out) = send(&mut relay, 30000, UE, &srtp, now);
                prop_assert_eq!(&out, &plain);
                let (_, mut back) = send(&mut relay, 30002, CORE, &plain, now);
                ue_rx.unprotect_rtp_vec(&mut back).expect("decrypt");
                prop_assert_eq!(&back, &plain);
            }
        }
    }
}
