//! SDP offer/answer for one audio stream with the UE's media-security policy (RFC 3264,
//! RFC 4568 §7.1 SDES, RFC 8643 opportunistic SRTP for the RTP fallback), sans-IO: the caller
//! passes the local RTP address and a key source, and gets SDP text and the SRTP policies
//! that media must use.
//!
//! Policy per call ([`Security`]):
//! - `Off`: `RTP/AVP`, no key management. An offer that *requires* SRTP (`RTP/SAVP`) is
//!   refused (488); an opportunistic offer (`RTP/AVP` + `a=crypto`) is answered in clear.
//! - `Sdes { fallback: false }`: offer `RTP/SAVP` with one `a=crypto` per suite; an answer
//!   without an acceptable `a=crypto` is a downgrade and is refused ([`Error::Downgrade`]).
//! - `Sdes { fallback: true }`: offer `RTP/AVP` with the same `a=crypto` lines (RFC 8643): an
//!   answer with `a=crypto` gives SRTP, one without gives plain RTP, as policy allows.
//!
//! What SDES cannot detect (TS 33.328 §5.4.2, TR 33.828 req 43): the keys and the choice of
//! protection travel in clear SDP. Any SIP hop can strip `a=crypto` from the offer (the
//! answerer then sees a plain offer) or from the answer, or replace the keys, and neither end
//! can tell. A caller whose policy forbids RTP refuses a stripped answer — that is all SDES
//! offers; with fallback allowed a stripped call silently runs in clear. Only key management
//! that authenticates the offered list (MIKEY with the RFC 4567 SDP-ID General Extension)
//! detects it.
//!
//! RTCP (RFC 3550 §11, RFC 3605, RFC 5761 §5.1.1): every offer carries `a=rtcp-mux`, an answer
//! carries it when the offer did. Multiplexed, RTCP travels on the RTP port; otherwise it goes
//! to the peer's `a=rtcp` port, else its RTP port + 1 (and ours is the RTP port + 1).

use std::net::{IpAddr, SocketAddr};

use mediasec_sdp::sdes::{self, KeySource};
use mediasec_sdp::{CryptoAttribute, Level, Negotiated, Sdp, SdesPolicy};
use mediasec_srtp::{MasterKey, Policy, Suite};

use crate::Error;

/// The per-call media-security choice (local policy).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Security {
    /// Plain RTP, no key management.
    Off,
    /// SDES end to end (RFC 4568): keys in `a=crypto`, visible to every SIP hop.
    Sdes {
        /// Offer opportunistically (`RTP/AVP` + `a=crypto`) and accept a plain answer.
        fallback: bool,
    },
    /// KMS-based e2e (TS 33.328 §7.3, MIKEY-TICKET): `a=key-mgmt:mikey` carrying
    /// TRANSFER_INIT / TRANSFER_RESP (see [`crate::ticket`]); SRTP required.
    MikeyTicket,
    /// The high-security mode (docs/high-security.md): ECCSI-signed MIKEY-DH in
    /// `a=key-mgmt:mikey` (see [`crate::high_security`]); SRTP required, keys the KMS cannot
    /// derive.
    HighSecurity,
    /// MIKEY-SAKKE (RFC 6509; docs/high-security.md §10): the ECCSI-signed I_MESSAGE in the
    /// offer's `a=key-mgmt:mikey` (see [`crate::mikey_sakke`]); SRTP required, keys the KMS
    /// can derive (LI without a man in the middle).
    MikeySakke,
}

impl Security {
    /// Whether calls are keyed with MIKEY in `a=key-mgmt` (MIKEY-TICKET, high-security or
    /// MIKEY-SAKKE): SRTP required, no fallback; whoever offers is the MIKEY Initiator, also
    /// in a 2xx or reliable 18x answering an offerless INVITE (RFC 4567 §3).
    pub fn is_mikey(self) -> bool {
        matches!(self, Self::MikeyTicket | Self::HighSecurity | Self::MikeySakke)
    }
}

/// How media is protected once negotiated.
#[derive(Clone, Debug)]
pub enum Protection {
    /// Plain RTP.
    Plain,
    /// SRTP with these policies.
    Srtp {
        /// The suite.
        suite: Suite,
        /// Our send key.
        tx: Box<Policy>,
        /// The peer's send key.
        rx: Box<Policy>,
        /// Fingerprint of our send key (SDES: our `a=crypto` key‖salt; MIKEY: the master key).
        own_key: String,
        /// Fingerprint of the peer's send key — with SDES the key every fork sees.
        peer_key: String,
    },
}

impl Protection {
    /// `"srtp <SUITE>"` or `"rtp"`.
    pub fn describe(&self) -> String {
        match self {
            Self::Plain => "rtp".into(),
            Self::Srtp { suite, .. } => format!("srtp {}", suite.name()),
        }
    }
}

/// The media parameters of an answered stream.
#[derive(Clone, Debug)]
pub struct Media {
    /// Where the peer receives RTP.
    pub remote: SocketAddr,
    /// Where the peer receives RTCP: `remote` when both ends agreed to multiplex.
    pub rtcp: SocketAddr,
    /// Protection.
    pub protection: Protection,
    /// The peer as the key management authenticated it: MIKEY-TICKET, the initiator its
    /// ticket names (callee) or the responder TRANSFER_RESP proves (caller); the high-security
    /// modes, the ECCSI-signed IDRi (callee) or IDRr of DH_RESP (caller). `None` where no key
    /// management vouches for the peer: SDES and plain RTP (they rest on SIP signalling
    /// security), a MIKEY-SAKKE caller (RFC 6509 has no response) and deferred delivery.
    pub peer: Option<String>,
}

impl Media {
    /// The same media, with the peer identity its keys authenticate.
    #[must_use]
    pub(crate) fn authenticated(self, peer: impl Into<String>) -> Self {
        Self { peer: Some(peer.into()), ..self }
    }
}

/// What the offerer keeps until the answer arrives.
#[derive(Clone, Debug)]
pub struct Offer {
    /// The SDP text sent.
    pub sdp: String,
    /// The `a=crypto` lines offered (with our keys), empty for `Security::Off`.
    pub crypto: Vec<CryptoAttribute>,
    security: Security,
}

/// RTP profile names (RFC 3551, RFC 3711 §12).
const AVP: &str = "RTP/AVP";
pub(crate) const SAVP: &str = "RTP/SAVP";
/// RTP/RTCP multiplexing (RFC 5761 §5.1.1), the attribute's text after `a=`.
pub(crate) const RTCP_MUX: &str = "rtcp-mux";

pub(crate) fn sdp_text(local: SocketAddr, version: u64, proto: &str, crypto: &[String]) -> String {
    let ip = local.ip();
    let family = if ip.is_ipv4() { "IP4" } else { "IP6" };
    let mut s = format!(
        "v=0\r\no=- 1 {version} IN {family} {ip}\r\ns=-\r\nc=IN {family} {ip}\r\nt=0 0\r\nm=audio {} {proto} 0\r\na=rtpmap:0 PCMU/8000\r\na=ptime:20\r\na=sendrecv\r\n",
        local.port()
    );
    for line in crypto {
        s.push_str("a=");
        s.push_str(line);
        s.push_str("\r\n");
    }
    s
}

/// Builds an offer (RFC 3264 §5) for one PCMU audio stream at `local`. `version` is the `o=`
/// session version (incremented for each re-offer, §8).
pub fn offer(local: SocketAddr, version: u64, security: Security, policy: &SdesPolicy, keys: &mut impl KeySource) -> Result<Offer, Error> {
    let (proto, crypto) = match security {
        Security::Off => (AVP, Vec::new()),
        Security::MikeyTicket | Security::HighSecurity | Security::MikeySakke => return Err(Error::Negotiation("MIKEY offers are built by crate::ticket / crate::high_security".into())),
        Security::Sdes { fallback } => (if fallback { AVP } else { SAVP }, sdes::offer(policy, keys)?),
    };
    let mut lines: Vec<String> = crypto.iter().map(CryptoAttribute::to_attribute).collect();
    lines.push(RTCP_MUX.into());
    Ok(Offer { sdp: sdp_text(local, version, proto, &lines), crypto, security })
}

/// The first audio stream of a body.
pub(crate) struct Stream {
    /// Its index among the `m=` lines.
    pub(crate) index: usize,
    /// Where it receives RTP.
    pub(crate) rtp: SocketAddr,
    /// Where it receives RTCP when not multiplexed: `a=rtcp` (RFC 3605), else RTP port + 1.
    rtcp: SocketAddr,
    /// It carries `a=rtcp-mux`.
    pub(crate) mux: bool,
    /// The transport protocol of its `m=` line.
    pub(crate) proto: String,
}

impl Stream {
    /// The media towards this stream; `mux`: both ends agreed to multiplex RTCP.
    pub(crate) fn media(&self, mux: bool, protection: Protection) -> Media {
        Media { remote: self.rtp, rtcp: if mux { self.rtp } else { self.rtcp }, protection, peer: None }
    }

    /// The attribute lines of our answer to this (offered) stream besides key management.
    pub(crate) fn answer_lines(&self) -> Vec<String> {
        if self.mux { vec![RTCP_MUX.into()] } else { Vec::new() }
    }
}

/// The first audio stream of a body: index, addresses, multiplexing, proto.
pub(crate) fn audio(sdp: &Sdp) -> Result<Stream, Error> {
    for index in 0..sdp.media_count() {
        let m = sdp.media_line(index)?;
        if m.media != "audio" {
            continue;
        }
        let address = connection(sdp, index).ok_or_else(|| Error::Negotiation("no usable c= line for the audio stream".into()))?;
        let rtp = SocketAddr::new(address, m.port);
        let level = Level::Media(index);
        // RFC 3605 §2.1: `a=rtcp:<port> [IN IP4|IP6 <address>]`.
        let rtcp = match sdp.attribute_values(level, "rtcp")?.first() {
            Some(value) => {
                let mut words = value.split_ascii_whitespace();
                let port = words.next().and_then(|p| p.parse().ok()).ok_or_else(|| Error::Negotiation(format!("a=rtcp:{value} has no port")))?;
                let ip = words.nth(2).map_or(Ok(address), str::parse).map_err(|_| Error::Negotiation(format!("a=rtcp:{value} has no usable address")))?;
                SocketAddr::new(ip, port)
            }
            None => SocketAddr::new(address, m.port.saturating_add(1)),
        };
        let mux = !sdp.attribute_values(level, RTCP_MUX)?.is_empty();
        return Ok(Stream { index, rtp, rtcp, mux, proto: m.proto.to_owned() });
    }
    Err(Error::Negotiation("no audio stream".into()))
}

/// The media-level `c=` address, else the session-level one (RFC 4566 §5.7).
fn connection(sdp: &Sdp, media: usize) -> Option<IpAddr> {
    [Level::Media(media), Level::Session].into_iter().find_map(|level| {
        sdp.lines(level).ok()?.iter().find_map(|l| {
            let c = l.connection()?.ok()?;
            c.address.split('/').next()?.parse().ok()
        })
    })
}

fn policies(n: &Negotiated) -> Result<(Suite, Policy, Policy), Error> {
    let suite: Suite = n.suite().name().parse().map_err(|_| Error::Negotiation(format!("suite {} has no SRTP transform here", n.suite())))?;
    let build = |line: &CryptoAttribute| -> Result<Policy, Error> {
        let key = line.inline_keys().next().ok_or_else(|| Error::Negotiation("no inline key".into()))?;
        let mut master = MasterKey::from_inline(suite, key.key_salt())?;
        if let Some(mki) = &key.mki {
            master = master.with_mki(mki.bytes());
        }
        if let Some(lifetime) = key.lifetime {
            master = master.with_lifetime(u64::try_from(lifetime.packets()).unwrap_or(u64::MAX));
        }
        let mut p = Policy::new(suite, master);
        p.unencrypted_srtp = n.unencrypted_srtp;
        p.unencrypted_srtcp = n.unencrypted_srtcp;
        p.unauthenticated_srtp = n.unauthenticated_srtp;
        Ok(p)
    };
    Ok((suite, build(&n.local)?, build(&n.remote)?))
}

fn srtp(n: Negotiated) -> Result<Protection, Error> {
    let (suite, tx, rx) = policies(&n)?;
    let fp = |l: &CryptoAttribute| l.inline_keys().map(mediasec_sdp::InlineKey::fingerprint).collect::<String>();
    Ok(Protection::Srtp { suite, tx: Box::new(tx), rx: Box::new(rx), own_key: fp(&n.local), peer_key: fp(&n.remote) })
}

/// Answers an offer (RFC 3264 §6, RFC 4568 §7.1.2) with our stream at `local`: returns the
/// answer SDP and the negotiated media, or the reason to refuse the offer with 488.
pub fn answer(offer_sdp: &Sdp, local: SocketAddr, version: u64, security: Security, policy: &SdesPolicy, keys: &mut impl KeySource) -> Result<(String, Media), Error> {
    let stream = audio(offer_sdp)?;
    let proto = stream.proto.as_str();
    let offered = offer_sdp.attribute_values(Level::Media(stream.index), CryptoAttribute::NAME)?;
    let requires_srtp = proto == SAVP;
    let lines = stream.answer_lines();
    let media = |protection| stream.media(stream.mux, protection);
    if proto != AVP && proto != SAVP {
        return Err(Error::Negotiation(format!("transport {proto} not supported")));
    }
    match security {
        Security::Off if requires_srtp => Err(Error::Negotiation("SRTP required by the offer, our policy has no key management".into())),
        Security::Off => Ok((sdp_text(local, version, AVP, &lines), media(Protection::Plain))),
        Security::MikeyTicket | Security::HighSecurity | Security::MikeySakke => Err(Error::Negotiation("MIKEY answers are built by crate::ticket / crate::high_security".into())),
        Security::Sdes { fallback } => {
            if offered.is_empty() {
                if requires_srtp {
                    return Err(Error::Negotiation("RTP/SAVP offer without a=crypto".into()));
                }
                if !fallback {
                    return Err(Error::Downgrade("offer without key management; policy requires SRTP".into()));
                }
                return Ok((sdp_text(local, version, AVP, &lines), media(Protection::Plain)));
            }
            let n = sdes::answer(&offered, policy, keys)?;
            let mut lines = lines;
            lines.insert(0, n.local.to_attribute());
            Ok((sdp_text(local, version, proto, &lines), media(srtp(n)?)))
        }
    }
}

/// A valid answer refusing every stream of `offer` (RFC 3264 §6: one m-line per offered one,
/// same media, transport and formats, port 0), for an offer that must be answered but cannot
/// be accepted: one in a 2xx, answered in the ACK before a BYE (RFC 3261 §13.2.2.4), or in a
/// reliable 18x, answered in the PRACK (RFC 3262 §5).
pub fn refusal(offer: &Sdp, local: SocketAddr, version: u64) -> Result<String, Error> {
    let ip = local.ip();
    let family = if ip.is_ipv4() { "IP4" } else { "IP6" };
    let mut s = format!("v=0\r\no=- 1 {version} IN {family} {ip}\r\ns=-\r\nc=IN {family} {ip}\r\nt=0 0\r\n");
    for i in 0..offer.media_count() {
        let m = offer.media_line(i).map_err(|e| Error::Negotiation(format!("offer m-line {i}: {e}")))?;
        s.push_str(&format!("m={} 0 {} {}\r\n", m.media, m.proto, m.formats.join(" ")));
    }
    Ok(s)
}

/// Processes the answer to our offer (RFC 4568 §7.1.3); refuses what the policy forbids.
pub fn process_answer(offer: &Offer, answer_sdp: &Sdp, policy: &SdesPolicy) -> Result<Media, Error> {
    let stream = audio(answer_sdp)?;
    if stream.rtp.port() == 0 {
        return Err(Error::Negotiation("the audio stream was rejected (port 0)".into()));
    }
    let answered = answer_sdp.attribute_values(Level::Media(stream.index), CryptoAttribute::NAME)?;
    // We offered multiplexing; the answer's `a=rtcp-mux` accepts it.
    let media = |protection| stream.media(stream.mux, protection);
    match offer.security {
        Security::Off => Ok(media(Protection::Plain)),
        Security::MikeyTicket | Security::HighSecurity | Security::MikeySakke => Err(Error::Negotiation("MIKEY answers are processed by crate::ticket / crate::high_security".into())),
        Security::Sdes { fallback } => {
            if answered.is_empty() {
                return if fallback {
                    Ok(media(Protection::Plain))
                } else {
                    Err(Error::Downgrade(format!("answer ({}) carries no a=crypto; policy requires SRTP", stream.proto)))
                };
            }
            let n = sdes::process_answer(&offer.crypto, &answered, policy)?;
            Ok(media(srtp(n)?))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn counter() -> impl FnMut(&mut [u8]) {
        let mut n = 0u8;
        move |b: &mut [u8]| {
            for x in b {
                n = n.wrapping_add(1);
                *x = n;
            }
        }
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn sdes_offer_answer_gives_mirrored_srtp_policies() {
        let policy = SdesPolicy::default();
        let mut keys = counter();
        let o = offer(addr(4000), 1, Security::Sdes { fallback: false }, &policy, &mut keys).unwrap();
        assert!(o.sdp.contains("m=audio 4000 RTP/SAVP 0\r\n"));
        assert_eq!(o.crypto.len(), policy.suites.len());
        let (a, callee) = answer(&Sdp::parse(&o.sdp), addr(5000), 1, Security::Sdes { fallback: false }, &policy, &mut keys).unwrap();
        assert_eq!(callee.remote, addr(4000));
        let caller = process_answer(&o, &Sdp::parse(&a), &policy).unwrap();
        assert_eq!(caller.remote, addr(5000));
        let (Protection::Srtp { tx: ctx, rx: crx, .. }, Protection::Srtp { tx: etx, rx: erx, .. }) = (&caller.protection, &callee.protection) else {
            panic!("SRTP both ways")
        };
        // What the caller sends, the callee opens, and back.
        let mut packet = vec![0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 9, 1, 2, 3];
        mediasec_srtp::Session::new(ctx).unwrap().protect_rtp_vec(&mut packet).unwrap();
        mediasec_srtp::Session::new(erx).unwrap().unprotect_rtp_vec(&mut packet).unwrap();
        let mut back = vec![0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 8, 4, 5];
        mediasec_srtp::Session::new(etx).unwrap().protect_rtp_vec(&mut back).unwrap();
        mediasec_srtp::Session::new(crx).unwrap().unprotect_rtp_vec(&mut back).unwrap();
        assert_eq!(back.get(12..), Some(&[4u8, 5][..]));
    }

    #[test]
    fn rtcp_is_multiplexed_only_when_both_ends_say_so() {
        let policy = SdesPolicy::default();
        let mut keys = counter();
        let off = Security::Off;
        let o = offer(addr(4000), 1, off, &policy, &mut keys).unwrap();
        assert!(o.sdp.contains("a=rtcp-mux\r\n"), "{}", o.sdp);
        // Answered with a=rtcp-mux: RTCP on the RTP port both ways.
        let (a, callee) = answer(&Sdp::parse(&o.sdp), addr(5000), 1, off, &policy, &mut keys).unwrap();
        assert!(a.contains("a=rtcp-mux\r\n") && callee.rtcp == addr(4000), "{a}");
        assert_eq!(process_answer(&o, &Sdp::parse(&a), &policy).unwrap().rtcp, addr(5000));
        // An answer without it: the peer's RTP port + 1 (RFC 3550 §11) ...
        let plain = sdp_text(addr(5000), 1, AVP, &[]);
        assert_eq!(process_answer(&o, &Sdp::parse(&plain), &policy).unwrap().rtcp, addr(5001));
        // ... or its a=rtcp port and address (RFC 3605), and an offer without it gets no mux.
        let legacy = sdp_text(addr(6000), 1, AVP, &["rtcp:7001 IN IP4 127.0.0.2".into()]);
        let (a, m) = answer(&Sdp::parse(&legacy), addr(5000), 1, off, &policy, &mut keys).unwrap();
        assert!(!a.contains("rtcp-mux") && m.remote == addr(6000), "{a}");
        assert_eq!(m.rtcp, SocketAddr::from(([127, 0, 0, 2], 7001)));
        let broken = sdp_text(addr(6000), 1, AVP, &["rtcp:x".into()]);
        assert!(answer(&Sdp::parse(&broken), addr(5000), 1, off, &policy, &mut keys).is_err());
    }

    #[test]
    fn a_stripped_answer_is_a_downgrade_unless_fallback_is_allowed() {
        let policy = SdesPolicy::default();
        let mut keys = counter();
        let plain_answer = Sdp::parse(&sdp_text(addr(5000), 1, AVP, &[]));
        let strict = offer(addr(4000), 1, Security::Sdes { fallback: false }, &policy, &mut keys).unwrap();
        assert!(matches!(process_answer(&strict, &plain_answer, &policy), Err(Error::Downgrade(_))));
        let lenient = offer(addr(4000), 1, Security::Sdes { fallback: true }, &policy, &mut keys).unwrap();
        assert!(lenient.sdp.contains("m=audio 4000 RTP/AVP 0\r\n") && lenient.sdp.contains("a=crypto:1 "));
        assert!(matches!(process_answer(&lenient, &plain_answer, &policy).unwrap().protection, Protection::Plain));
        // A UE without key management answers the opportunistic offer in clear and refuses SAVP.
        let (a, m) = answer(&Sdp::parse(&lenient.sdp), addr(5000), 1, Security::Off, &policy, &mut keys).unwrap();
        assert!(matches!(m.protection, Protection::Plain) && !a.contains("crypto"));
        assert!(answer(&Sdp::parse(&strict.sdp), addr(5000), 1, Security::Off, &policy, &mut keys).is_err());
    }

    /// RFC 3264 §6: the refusing answer keeps every offered m-line (media, transport,
    /// formats) at port 0, and nothing of the offer's keys.
    #[test]
    fn a_refusal_rejects_every_offered_stream() {
        let policy = SdesPolicy::default();
        let strict = offer(addr(4000), 1, Security::Sdes { fallback: false }, &policy, &mut counter()).unwrap();
        let mut two = strict.sdp.clone();
        two.push_str("m=video 4002 RTP/SAVP 96 97\r\n");
        let r = refusal(&Sdp::parse(&two), addr(5000), 3).unwrap();
        assert_eq!(r, "v=0\r\no=- 1 3 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 0 RTP/SAVP 0\r\nm=video 0 RTP/SAVP 96 97\r\n");
        // The offerer refuses it (no usable stream).
        assert!(process_answer(&strict, &Sdp::parse(&r), &policy).is_err());
    }
}
