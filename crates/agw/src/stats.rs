//! Per-leg counters: packets and octets in and out per component, and every dropped packet
//! counted by reason. Plain integers in fixed arrays: updating them never allocates.

use std::time::Instant;

/// Why the relay did not forward a packet. Every drop is counted on the leg it arrived on
/// (or globally for [`DropReason::UnknownPort`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DropReason {
    /// Not a well-formed RTP/RTCP (or SRTP/SRTCP) packet.
    Malformed,
    /// The SRTP/SRTCP authentication tag did not verify (RFC 3711 §3.3 step 5, §3.4).
    AuthFailed,
    /// The packet index was already received (RFC 3711 §3.3.2).
    Replay,
    /// The packet index is behind the replay window (RFC 3711 §3.3.2).
    TooOld,
    /// The SRTP MKI names no master key of the leg.
    UnknownMki,
    /// The master key or SRTCP index of the receiving context is used up (RFC 3711 §9.2).
    KeyExhausted,
    /// Too many SSRCs on one leg.
    StreamLimit,
    /// The leg's keys are not negotiated yet (SDES answer still missing).
    NotNegotiated,
    /// The other leg has no address yet (neither signalled nor latched).
    NoDestination,
    /// A plain-RTP leg received a packet from an address other than its signalled/latched one.
    SourceMismatch,
    /// Protecting the packet for the other leg failed (e.g. the core repeated an index).
    ProtectFailed,
    /// The packet arrived on a port that belongs to no stream (counted by the relay).
    UnknownPort,
}

impl DropReason {
    /// Every reason, in counter order.
    pub const ALL: [Self; 12] = [
        Self::Malformed,
        Self::AuthFailed,
        Self::Replay,
        Self::TooOld,
        Self::UnknownMki,
        Self::KeyExhausted,
        Self::StreamLimit,
        Self::NotNegotiated,
        Self::NoDestination,
        Self::SourceMismatch,
        Self::ProtectFailed,
        Self::UnknownPort,
    ];

    /// A stable label, used as a metrics label and as an ng `query` key.
    pub fn label(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::AuthFailed => "auth_failed",
            Self::Replay => "replay",
            Self::TooOld => "too_old",
            Self::UnknownMki => "unknown_mki",
            Self::KeyExhausted => "key_exhausted",
            Self::StreamLimit => "stream_limit",
            Self::NotNegotiated => "not_negotiated",
            Self::NoDestination => "no_destination",
            Self::SourceMismatch => "source_mismatch",
            Self::ProtectFailed => "protect_failed",
            Self::UnknownPort => "unknown_port",
        }
    }

    fn index(self) -> usize {
        Self::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }

    /// The reason for an SRTP/SRTCP unprotect failure.
    pub fn from_unprotect(e: mediasec_srtp::Error) -> Self {
        use mediasec_srtp::Error as E;
        match e {
            E::AuthFailed => Self::AuthFailed,
            E::Replay => Self::Replay,
            E::TooOld => Self::TooOld,
            E::UnknownMki => Self::UnknownMki,
            E::KeyExhausted | E::IndexExhausted => Self::KeyExhausted,
            E::StreamLimit => Self::StreamLimit,
            _ => Self::Malformed,
        }
    }
}

/// Packets and octets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    /// Packets.
    pub packets: u64,
    /// Octets (UDP payload, as received or as sent).
    pub bytes: u64,
}

impl Counter {
    fn add(&mut self, len: usize) {
        self.packets += 1;
        self.bytes += len as u64;
    }
}

/// RTP or RTCP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Component {
    /// RTP (SRTP on a protected leg).
    Rtp,
    /// RTCP (SRTCP on a protected leg).
    Rtcp,
}

/// The counters of one leg.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LegStats {
    /// Received from the leg's peer, per component `[rtp, rtcp]`.
    pub received: [Counter; 2],
    /// Forwarded from this leg to the other leg, per component (octets after re-protection).
    pub forwarded: [Counter; 2],
    /// Sent to this leg's peer (packets that came from the other leg).
    pub sent: [Counter; 2],
    drops: [u64; DropReason::ALL.len()],
    /// When the last packet arrived from the peer.
    pub last_received: Option<Instant>,
}

fn slot(c: Component) -> usize {
    match c {
        Component::Rtp => 0,
        Component::Rtcp => 1,
    }
}

impl LegStats {
    pub(crate) fn on_received(&mut self, c: Component, len: usize, now: Instant) {
        if let Some(x) = self.received.get_mut(slot(c)) {
            x.add(len);
        }
        self.last_received = Some(now);
    }

    pub(crate) fn on_forwarded(&mut self, c: Component, len: usize) {
        if let Some(x) = self.forwarded.get_mut(slot(c)) {
            x.add(len);
        }
    }

    pub(crate) fn on_sent(&mut self, c: Component, len: usize) {
        if let Some(x) = self.sent.get_mut(slot(c)) {
            x.add(len);
        }
    }

    pub(crate) fn on_drop(&mut self, r: DropReason) {
        if let Some(x) = self.drops.get_mut(r.index()) {
            *x += 1;
        }
    }

    /// Packets dropped for `reason`.
    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops.get(reason.index()).copied().unwrap_or(0)
    }

    /// All drops.
    pub fn total_drops(&self) -> u64 {
        self.drops.iter().sum()
    }

    /// Received counter of one component.
    pub fn received(&self, c: Component) -> Counter {
        self.received.get(slot(c)).copied().unwrap_or_default()
    }

    /// Sent counter of one component.
    pub fn sent(&self, c: Component) -> Counter {
        self.sent.get(slot(c)).copied().unwrap_or_default()
    }

    /// Forwarded counter of one component.
    pub fn forwarded(&self, c: Component) -> Counter {
        self.forwarded.get(slot(c)).copied().unwrap_or_default()
    }

    /// Adds another leg's counters (for call totals).
    pub fn accumulate(&mut self, other: &Self) {
        for i in 0..2 {
            for (mine, theirs) in [
                (self.received.get_mut(i), other.received.get(i)),
                (self.forwarded.get_mut(i), other.forwarded.get(i)),
                (self.sent.get_mut(i), other.sent.get(i)),
            ] {
                if let (Some(m), Some(t)) = (mine, theirs) {
                    m.packets += t.packets;
                    m.bytes += t.bytes;
                }
            }
        }
        for (m, t) in self.drops.iter_mut().zip(other.drops) {
            *m += t;
        }
        self.last_received = self.last_received.max(other.last_received);
    }
}
