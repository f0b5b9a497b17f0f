//! RTP/SRTP media of one call over UDP (tokio): sends the UE's tone every 20 ms and checks
//! what arrives by content (the peer's tone, [`crate::tone`]). SRTCP receiver reports go out
//! every 25 packets: on the RTP port when both ends multiplex (RFC 5761), else from our RTCP
//! port (RTP + 1, RFC 3550 §11) to the peer's. Both of our ports receive either kind.
//!
//! Re-keying (RFC 4568 §7.1.4, peers.md §1e): new SDES keys mean new crypto contexts, so the
//! sender's new context starts at ROC 0 while the RTP sequence numbers continue; the receiver's
//! new context binds on the first authenticated packet, also at ROC 0. The previous receive
//! context is kept as a fallback for packets still in flight under the old key. A key already
//! in force keeps its context whenever media is applied again (the answer of a 183 repeated in
//! the 200, or the same keys towards another address), so an index is never protected twice
//! under one key and no packet is accepted twice. An offerer that knows the peer's next send key before
//! the answer (MIKEY-SAKKE: the Initiator chooses the SSV both directions derive from, RFC
//! 6509 §2.1) *expects* it ([`RtpEndpoint::expect`]): packets under it are accepted from the
//! offer on — the answerer may send under its new key as soon as it has the offer, before our
//! side has the answer (RFC 3264 §8) — and the answer's media takes over that receive context
//! with its replay state, so the re-key refuses nothing.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mediasec_srtp::{is_rtcp, Direction, Policy, Session};
use tokio::net::UdpSocket;
use tokio::sync::watch;

use crate::offer_answer::{Media, Protection};
use crate::tone;
use crate::Error;

/// Counters of one call's media, by content.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MediaStats {
    /// RTP packets sent.
    pub sent: u64,
    /// Datagrams received.
    pub received: u64,
    /// RTP packets accepted (authenticated and decrypted, or plain RTP when unprotected).
    pub accepted: u64,
    /// Accepted packets whose payload is the expected tone.
    pub verified: u64,
    /// RTP packets refused by SRTP (authentication, replay, unknown key).
    pub refused: u64,
    /// SRTCP reports authenticated.
    pub rtcp: u64,
    /// RTCP packets refused by SRTCP (e.g. sent unprotected: baresip 1.0 sends its RTCP BYE and
    /// a `PINGPONG` APP keep-alive in clear).
    pub rtcp_refused: u64,
    /// Packets accepted by the previous receive context after a re-key.
    pub accepted_by_previous_key: u64,
    /// Packets accepted under the expected next key before the answer applied it.
    pub accepted_by_expected_key: u64,
    /// The outbound ROC of our SSRC in the current send context.
    pub tx_roc: u32,
    /// The ROC of the peer's SSRC in the current receive context.
    pub rx_roc: u32,
}

#[derive(Clone)]
struct Config {
    media: Media,
    id: String,
}

/// The peer's next send key, expected before the answer: its fingerprint and policy.
#[derive(Clone)]
struct Expected {
    peer_key: String,
    rx: Box<Policy>,
}

/// The identities of the call's wishes the media task has taken: media applied, key expected.
#[derive(Default)]
struct Seen {
    config: Option<String>,
    expected: Option<String>,
}

/// What the call asks of its media task.
#[derive(Clone, Default)]
struct Control {
    config: Option<Config>,
    expected: Option<Expected>,
}

/// The media endpoint of one call; dropping it stops the task.
pub struct RtpEndpoint {
    local: SocketAddr,
    ssrc: u32,
    control: watch::Sender<Control>,
    stats: Arc<Mutex<MediaStats>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RtpEndpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a [`Media`] is, for "same keys again?" checks: remote address and both keys.
fn identity(media: &Media) -> String {
    match &media.protection {
        Protection::Plain => format!("{} rtp", media.remote),
        Protection::Srtp { own_key, peer_key, .. } => format!("{} {own_key} {peer_key}", media.remote),
    }
}

/// An even RTP port and the RTCP port above it (RFC 3550 §11), both bound on `ip`: the system
/// picks the RTP port; a few tries find one whose neighbour is free.
async fn port_pair(ip: std::net::IpAddr) -> Result<(UdpSocket, UdpSocket), Error> {
    let mut last = None;
    for _ in 0..32 {
        let rtp = UdpSocket::bind(SocketAddr::new(ip, 0)).await?;
        let port = rtp.local_addr()?.port();
        if port % 2 != 0 || port == u16::MAX {
            continue;
        }
        match UdpSocket::bind(SocketAddr::new(ip, port + 1)).await {
            Ok(rtcp) => return Ok((rtp, rtcp)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.map_or_else(|| Error::Negotiation("no free RTP/RTCP port pair".into()), Error::from))
}

impl RtpEndpoint {
    /// Binds an RTP/RTCP port pair on `ip` and starts receiving; nothing is sent until
    /// [`Self::apply`]. `tone_hz` is what we send, `expect_hz` what we check.
    pub async fn bind(ip: std::net::IpAddr, tone_hz: f64, expect_hz: Option<f64>, initial_seq: u16) -> Result<Self, Error> {
        let (socket, rtcp) = port_pair(ip).await?;
        let local = socket.local_addr()?;
        let (control, watcher) = watch::channel(Control::default());
        let stats = Arc::new(Mutex::new(MediaStats::default()));
        let ssrc: u32 = rand::random();
        let sockets = Sockets { rtp: socket, rtcp };
        let task = tokio::spawn(run(sockets, watcher, Arc::clone(&stats), Sending { ssrc, tone_hz, initial_seq }, expect_hz));
        Ok(Self { local, ssrc, control, stats, task })
    }

    /// Our SSRC (MIKEY binds it in the CS ID map, RFC 3830 §6.1.1).
    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    /// Where we receive RTP (goes into our SDP).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Starts sending to / receiving from the negotiated peer, or re-keys. The same media
    /// again is a no-op.
    pub fn apply(&self, media: &Media) {
        let id = identity(media);
        self.control.send_if_modified(|current| {
            if current.config.as_ref().is_some_and(|c| c.id == id) {
                return false;
            }
            current.config = Some(Config { media: media.clone(), id: id.clone() });
            true
        });
    }

    /// Accepts packets under the peer's send key of `next` (its `rx`) from now on, besides
    /// the keys in force, until media is applied (which takes that context over when it has
    /// the same peer key) or another expectation replaces it; `None` (or plain `next`)
    /// withdraws it, as when the offer is refused (module docs).
    pub fn expect(&self, next: Option<&Protection>) {
        let expected = match next {
            Some(Protection::Srtp { rx, peer_key, .. }) => Some(Expected { peer_key: peer_key.clone(), rx: rx.clone() }),
            Some(Protection::Plain) | None => None,
        };
        self.control.send_if_modified(|current| {
            let same = current.expected.as_ref().map(|e| &e.peer_key) == expected.as_ref().map(|e| &e.peer_key);
            current.expected = expected;
            !same
        });
    }

    /// Stops sending (receiving continues to be counted).
    pub fn stop(&self) {
        self.control.send_modify(|current| *current = Control::default());
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> MediaStats {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

enum Rx {
    Plain,
    Srtp(Box<Session>),
}

struct State {
    remote: Option<SocketAddr>,
    remote_rtcp: Option<SocketAddr>,
    tx: Option<Box<Session>>,
    plain_tx: bool,
    rx: Option<Rx>,
    previous_rx: Option<Box<Session>>,
    /// The context of the expected next peer key, and that key's fingerprint.
    expected_rx: Option<(String, Box<Session>)>,
    /// Fingerprints of the keys in force: (ours, the peer's).
    keys: Option<(String, String)>,
}

fn session(p: &Policy) -> Option<Box<Session>> {
    Session::new(p).map(Box::new).map_err(|e| tracing::warn!(error = %e, "SRTP session")).ok()
}

impl State {
    /// Takes the call's wishes when they changed since `seen`: a new expectation first (so
    /// that media applied in the same change takes it over), then new media. An expectation
    /// is installed once: after media took its context over or ended it, the same one still
    /// in the call's wishes is not installed again (a fresh context would accept its packets
    /// a second time).
    fn control(&mut self, control: &Control, seen: &mut Seen) {
        let expected = control.expected.as_ref().map(|e| &e.peer_key);
        if expected != seen.expected.as_ref() {
            seen.expected = expected.cloned();
            self.expected_rx = control.expected.as_ref().and_then(|e| Some((e.peer_key.clone(), session(&e.rx)?)));
        }
        let id = control.config.as_ref().map(|c| &c.id);
        if id != seen.config.as_ref() {
            seen.config = id.cloned();
            self.configure(control.config.as_ref());
        }
    }

    fn configure(&mut self, config: Option<&Config>) {
        let Some(config) = config else {
            self.remote = None;
            self.remote_rtcp = None;
            self.expected_rx = None;
            return;
        };
        self.remote = Some(config.media.remote);
        self.remote_rtcp = Some(config.media.rtcp);
        match &config.media.protection {
            Protection::Plain => {
                self.tx = None;
                self.plain_tx = true;
                self.rx = Some(Rx::Plain);
                self.previous_rx = None;
                self.expected_rx = None;
                self.keys = None;
            }
            Protection::Srtp { tx, rx, own_key, peer_key, .. } => {
                // A key already in force goes on in its context: a fresh one would send
                // indexes again under the same key (RFC 3711 §9.1: never) and accept again
                // what it already received (media re-applied with another address, say).
                let (keep_tx, keep_rx) = match &self.keys {
                    Some((own, peer)) => (own == own_key && self.tx.is_some(), peer == peer_key && matches!(self.rx, Some(Rx::Srtp(_)))),
                    None => (false, false),
                };
                if !keep_tx {
                    self.tx = session(tx);
                }
                self.plain_tx = false;
                // The expected context of the new peer key goes on with what it has seen;
                // any other expectation ends here.
                let expected = self.expected_rx.take();
                if !keep_rx {
                    let next = match expected {
                        Some((key, s)) if key == *peer_key => Some(s),
                        _ => session(rx),
                    };
                    // A receive context that cannot be built leaves nothing accepted, never plain.
                    let old = std::mem::replace(&mut self.rx, next.map(Rx::Srtp));
                    self.previous_rx = match old {
                        Some(Rx::Srtp(s)) => Some(s),
                        _ => None,
                    };
                }
                self.keys = Some((own_key.clone(), peer_key.clone()));
            }
        }
    }
}

/// What the sender puts in its packets.
struct Sending {
    ssrc: u32,
    tone_hz: f64,
    initial_seq: u16,
}

/// The call's RTP socket and the RTCP socket on the port above it.
struct Sockets {
    rtp: UdpSocket,
    rtcp: UdpSocket,
}

async fn run(sockets: Sockets, mut control: watch::Receiver<Control>, stats: Arc<Mutex<MediaStats>>, sending: Sending, expect_hz: Option<f64>) {
    let Sockets { rtp: socket, rtcp: rtcp_socket } = sockets;
    let mut state = State { remote: None, remote_rtcp: None, tx: None, plain_tx: false, rx: None, previous_rx: None, expected_rx: None, keys: None };
    let mut seen = Seen::default();
    let Sending { ssrc, tone_hz, initial_seq } = sending;
    let mut seq = initial_seq;
    let mut index: u64 = 0;
    let mut ticker = tokio::time::interval(Duration::from_millis(20));
    let mut buf = vec![0u8; 2048];
    let mut rtcp_buf = vec![0u8; 2048];
    loop {
        tokio::select! {
            changed = control.changed() => {
                if changed.is_err() {
                    return;
                }
                let wanted = control.borrow_and_update().clone();
                state.control(&wanted, &mut seen);
            }
            _ = ticker.tick() => {
                let Some(remote) = state.remote else { continue };
                if state.tx.is_none() && !state.plain_tx {
                    continue;
                }
                let mut packet = Vec::with_capacity(200);
                packet.extend_from_slice(&[0x80, 0]);
                packet.extend_from_slice(&seq.to_be_bytes());
                packet.extend_from_slice(&((index as u32).wrapping_mul(160)).to_be_bytes());
                packet.extend_from_slice(&ssrc.to_be_bytes());
                packet.extend_from_slice(&tone::packet(tone_hz, index));
                let mut report = None;
                if let Some(tx) = state.tx.as_mut() {
                    if tx.protect_rtp_vec(&mut packet).is_err() {
                        continue;
                    }
                    if index % 25 == 24 {
                        let mut rr = vec![0x80, 201, 0, 1];
                        rr.extend_from_slice(&ssrc.to_be_bytes());
                        report = tx.protect_rtcp_vec(&mut rr).ok().map(|()| rr);
                    }
                }
                let _ = socket.send_to(&packet, remote).await;
                if let Some(rr) = report {
                    let rtcp_to = state.remote_rtcp.unwrap_or(remote);
                    let from = if rtcp_to == remote { &socket } else { &rtcp_socket };
                    let _ = from.send_to(&rr, rtcp_to).await;
                }
                seq = seq.wrapping_add(1);
                index += 1;
                if let Ok(mut s) = stats.lock() {
                    s.sent += 1;
                    s.tx_roc = state.tx.as_ref().and_then(|t| t.roc(Direction::Outbound, ssrc)).unwrap_or(0);
                }
            }
            received = recv_either(&socket, &mut buf, &rtcp_socket, &mut rtcp_buf) => {
                let Some(packet) = received else { continue };
                let outcome = receive(&mut state, packet, expect_hz);
                if let Ok(mut s) = stats.lock() {
                    s.received += 1;
                    match outcome {
                        Received::Rtp { verified, by, roc } => {
                            s.accepted += 1;
                            s.verified += u64::from(verified);
                            match by {
                                By::Current => s.rx_roc = roc,
                                By::Previous => s.accepted_by_previous_key += 1,
                                By::Expected => s.accepted_by_expected_key += 1,
                            }
                        }
                        Received::Rtcp => s.rtcp += 1,
                        Received::RtcpRefused => s.rtcp_refused += 1,
                        Received::Refused => s.refused += 1,
                        Received::NotReady => {}
                    }
                }
            }
        }
    }
}

/// The next datagram on either socket (RTCP may arrive on both, RTP on the RTP one).
async fn recv_either<'a>(rtp: &UdpSocket, rtp_buf: &'a mut [u8], rtcp: &UdpSocket, rtcp_buf: &'a mut [u8]) -> Option<&'a mut [u8]> {
    tokio::select! {
        r = rtp.recv_from(rtp_buf) => r.ok().and_then(|(n, _)| rtp_buf.get_mut(..n)),
        r = rtcp.recv_from(rtcp_buf) => r.ok().and_then(|(n, _)| rtcp_buf.get_mut(..n)),
    }
}

/// Which receive context accepted a packet.
#[derive(Clone, Copy)]
enum By {
    Current,
    Previous,
    Expected,
}

enum Received {
    Rtp { verified: bool, by: By, roc: u32 },
    Rtcp,
    RtcpRefused,
    Refused,
    NotReady,
}

fn receive(state: &mut State, packet: &mut [u8], expect_hz: Option<f64>) -> Received {
    let rtcp = is_rtcp(packet);
    let check = |payload: Option<&[u8]>| expect_hz.is_some_and(|hz| payload.is_some_and(|p| tone::is_tone(p, hz)));
    match state.rx.as_mut() {
        None => Received::NotReady,
        Some(Rx::Plain) if rtcp => Received::Rtcp,
        Some(Rx::Plain) => Received::Rtp { verified: check(packet.get(12..)), by: By::Current, roc: 0 },
        Some(Rx::Srtp(session)) => {
            let original = packet.to_vec();
            if rtcp {
                return match session.unprotect_rtcp(packet) {
                    Ok(_) => Received::Rtcp,
                    Err(_) => Received::RtcpRefused,
                };
            }
            let ssrc = packet.get(8..12).and_then(|b| <[u8; 4]>::try_from(b).ok()).map_or(0, u32::from_be_bytes);
            if let Ok(len) = session.unprotect_rtp(packet) {
                let roc = session.roc(Direction::Inbound, ssrc).unwrap_or(0);
                return Received::Rtp { verified: check(packet.get(12..len)), by: By::Current, roc };
            }
            // The fallbacks each decrypt a copy of the packet as it arrived.
            let others = [(By::Previous, state.previous_rx.as_mut()), (By::Expected, state.expected_rx.as_mut().map(|(_, s)| s))];
            for (by, fallback) in others {
                let Some(fallback) = fallback else { continue };
                let mut copy = original.clone();
                if let Ok(len) = fallback.unprotect_rtp(&mut copy) {
                    return Received::Rtp { verified: check(copy.get(12..len)), by, roc: 0 };
                }
            }
            Received::Refused
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use mediasec_srtp::{MasterKey, Suite};

    use super::*;

    const SUITE: Suite = Suite::AesCm128HmacSha1_80;

    fn policy(fill: u8) -> Box<Policy> {
        Box::new(Policy::new(SUITE, MasterKey::from_inline(SUITE, &[fill; 30]).unwrap()))
    }

    /// SRTP media keyed `own` to send and `peer` to receive, fingerprinted by their fill octet.
    fn srtp(own: u8, peer: u8) -> Config {
        let protection = Protection::Srtp { suite: SUITE, tx: policy(own), rx: policy(peer), own_key: own.to_string(), peer_key: peer.to_string() };
        let media = Media { remote: "127.0.0.1:4000".parse().unwrap(), rtcp: "127.0.0.1:4000".parse().unwrap(), protection, peer: None };
        Config { id: identity(&media), media }
    }

    fn expected(peer: u8) -> Expected {
        Expected { peer_key: peer.to_string(), rx: policy(peer) }
    }

    /// The peer's packet `seq` under the key of `fill`.
    fn packet(sender: &mut Session, seq: u16) -> Vec<u8> {
        let mut p = [&[0x80, 0][..], &seq.to_be_bytes(), &[0, 0, 0, 0, 0, 0, 0, 7], &[0x55; 160]].concat();
        sender.protect_rtp_vec(&mut p).unwrap();
        p
    }

    fn by(state: &mut State, p: &[u8]) -> Option<&'static str> {
        match receive(state, &mut p.to_vec(), None) {
            Received::Rtp { by: By::Current, .. } => Some("current"),
            Received::Rtp { by: By::Previous, .. } => Some("previous"),
            Received::Rtp { by: By::Expected, .. } => Some("expected"),
            _ => None,
        }
    }

    /// An expected key is accepted before the answer applies it; the applied media takes that
    /// context over with its replay state; the old key stays a fallback; a withdrawn or
    /// replaced expectation accepts nothing more.
    #[test]
    fn expected_keys_are_accepted_before_the_answer_and_taken_over_by_it() {
        let mut state = State { remote: None, remote_rtcp: None, tx: None, plain_tx: false, rx: None, previous_rx: None, expected_rx: None, keys: None };
        let mut seen = Seen::default();
        let (mut old_peer, mut new_peer) = (Session::new(&policy(1)).unwrap(), Session::new(&policy(2)).unwrap());
        state.control(&Control { config: Some(srtp(9, 1)), expected: None }, &mut seen);
        assert_eq!(by(&mut state, &packet(&mut old_peer, 1)), Some("current"));
        let early = packet(&mut new_peer, 2);
        assert_eq!(by(&mut state, &early), None, "not expected yet");
        // Our offer is out: the peer's next key is expected.
        state.control(&Control { config: Some(srtp(9, 1)), expected: Some(expected(2)) }, &mut seen);
        let under_new = packet(&mut new_peer, 3);
        assert_eq!(by(&mut state, &under_new), Some("expected"));
        assert_eq!(by(&mut state, &packet(&mut old_peer, 4)), Some("current"));
        // The answer applies that key: the expected context goes on, so what it accepted is a
        // replay now; the old key is the fallback.
        state.control(&Control { config: Some(srtp(8, 2)), expected: Some(expected(2)) }, &mut seen);
        assert_eq!(by(&mut state, &under_new), None, "replay state kept across the take-over");
        assert_eq!(by(&mut state, &packet(&mut new_peer, 5)), Some("current"));
        assert_eq!(by(&mut state, &packet(&mut old_peer, 6)), Some("previous"));
        // Later media (here: the same keys, another address) does not bring the expectation
        // back as a fresh context that would accept its packets again.
        let mut moved = srtp(8, 2);
        moved.media.remote = "127.0.0.1:4002".parse().unwrap();
        moved.id = identity(&moved.media);
        let tx = |state: &State| state.tx.as_deref().map(std::ptr::from_ref);
        let sending = tx(&state);
        state.control(&Control { config: Some(moved.clone()), expected: Some(expected(2)) }, &mut seen);
        assert_eq!(by(&mut state, &under_new), None, "no second context for a taken-over key");
        assert!(sending.is_some() && tx(&state) == sending, "our key in force goes on sending in its context (no index twice)");
        assert_eq!(by(&mut state, &packet(&mut new_peer, 6)), Some("current"));
        // A refused offer withdraws its expectation.
        let mut third = Session::new(&policy(3)).unwrap();
        state.control(&Control { config: Some(moved.clone()), expected: Some(expected(3)) }, &mut seen);
        assert_eq!(by(&mut state, &packet(&mut third, 7)), Some("expected"));
        state.control(&Control { config: Some(moved.clone()), expected: None }, &mut seen);
        assert_eq!(by(&mut state, &packet(&mut third, 8)), None);
        // Media applied with another key ends an expectation.
        state.control(&Control { config: Some(moved), expected: Some(expected(3)) }, &mut seen);
        let mut fourth = Session::new(&policy(4)).unwrap();
        state.control(&Control { config: Some(srtp(7, 4)), expected: Some(expected(3)) }, &mut seen);
        assert_eq!(by(&mut state, &packet(&mut fourth, 9)), Some("current"));
        assert!(tx(&state).is_some() && tx(&state) != sending, "a new key of ours, a new send context");
        assert_eq!(by(&mut state, &packet(&mut third, 10)), None, "the expectation ended with the other key");
    }
}
