//! RTP/SRTP media of one call over UDP (tokio): sends the UE's tone every 20 ms and checks
//! what arrives by content (the peer's tone, [`crate::tone`]). SRTCP receiver reports go out
//! every 25 packets: on the RTP port when both ends multiplex (RFC 5761), else from our RTCP
//! port (RTP + 1, RFC 3550 §11) to the peer's. Both of our ports receive either kind.
//!
//! Re-keying (RFC 4568 §7.1.4, peers.md §1e): new SDES keys mean new crypto contexts, so the
//! sender's new context starts at ROC 0 while the RTP sequence numbers continue; the receiver's
//! new context binds on the first authenticated packet, also at ROC 0. The previous receive
//! context is kept as a fallback for packets still in flight under the old key. Applying the
//! *same* keys again (the answer of a 183 repeated in the 200) changes nothing, so an index is
//! never protected twice under one key.

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

/// The media endpoint of one call; dropping it stops the task.
pub struct RtpEndpoint {
    local: SocketAddr,
    ssrc: u32,
    control: watch::Sender<Option<Config>>,
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
        let (control, watcher) = watch::channel(None);
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
            if current.as_ref().is_some_and(|c| c.id == id) {
                return false;
            }
            *current = Some(Config { media: media.clone(), id: id.clone() });
            true
        });
    }

    /// Stops sending (receiving continues to be counted).
    pub fn stop(&self) {
        self.control.send_replace(None);
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
}

fn session(p: &Policy) -> Option<Box<Session>> {
    Session::new(p).map(Box::new).map_err(|e| tracing::warn!(error = %e, "SRTP session")).ok()
}

impl State {
    fn configure(&mut self, config: Option<&Config>) {
        let Some(config) = config else {
            self.remote = None;
            self.remote_rtcp = None;
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
            }
            Protection::Srtp { tx, rx, .. } => {
                self.tx = session(tx);
                self.plain_tx = false;
                // A receive context that cannot be built leaves nothing accepted, never plain.
                let old = std::mem::replace(&mut self.rx, session(rx).map(Rx::Srtp));
                self.previous_rx = match old {
                    Some(Rx::Srtp(s)) => Some(s),
                    _ => None,
                };
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

async fn run(sockets: Sockets, mut control: watch::Receiver<Option<Config>>, stats: Arc<Mutex<MediaStats>>, sending: Sending, expect_hz: Option<f64>) {
    let Sockets { rtp: socket, rtcp: rtcp_socket } = sockets;
    let mut state = State { remote: None, remote_rtcp: None, tx: None, plain_tx: false, rx: None, previous_rx: None };
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
                let config = control.borrow_and_update().clone();
                state.configure(config.as_ref());
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
                        Received::Rtp { verified, previous, roc } => {
                            s.accepted += 1;
                            s.verified += u64::from(verified);
                            s.accepted_by_previous_key += u64::from(previous);
                            if !previous {
                                s.rx_roc = roc;
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

enum Received {
    Rtp { verified: bool, previous: bool, roc: u32 },
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
        Some(Rx::Plain) => Received::Rtp { verified: check(packet.get(12..)), previous: false, roc: 0 },
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
                return Received::Rtp { verified: check(packet.get(12..len)), previous: false, roc };
            }
            let Some(previous) = state.previous_rx.as_mut() else { return Received::Refused };
            let mut copy = original;
            match previous.unprotect_rtp(&mut copy) {
                Ok(len) => Received::Rtp { verified: check(copy.get(12..len)), previous: true, roc: 0 },
                Err(_) => Received::Refused,
            }
        }
    }
}
