//! Entry point shared by the cargo-fuzz target `fuzz/fuzz_targets/cscf_proxy.rs` and the
//! corpus replay test, so CI exercises the same code without cargo-fuzz.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mediasec_agw::bencode::Value;
use mediasec_sip::core::{parse_datagram, Header, HeaderName, Host, Limits, Message, Method, Request, TransactionKey, Via};
use mediasec_sip::udp::{Command, Event};

use crate::alg::Provisioned;
use crate::proxy::{Proxy, ProxyConfig, Role};

/// The proxy's own address (P-CSCF and S-CSCF alike).
const LOCAL: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 5060);
/// The P-CSCF's S-CSCF: a request whose top `Via` names it comes from the core.
const SCSCF: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 5061);
/// Where a request comes from when its top `Via` names no address.
const UE: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 5071);

/// The input is a sequence of pieces separated by NUL bytes, fed in order to a fresh P-CSCF
/// (IMS-ALG: `mediasec` and an AGW address, `sip:carol@a.example` provisioned for e2ae) and,
/// separately, to a fresh S-CSCF (domain `a.example`, `b.example` peered), as the endpoint
/// would deliver them:
/// - an empty piece: the latest forwarded request's client transaction fails
///   ([`Event::Timeout`]);
/// - a one-byte piece: the clock advances that many seconds and the proxy's timers run
///   ([`Proxy::tick`], as the service does every second: contexts linger 32 s, Timer C is
///   181 s, a CANCELled branch is given up after 32 s, registrations expire);
/// - any other piece is a datagram (the clock advances 20 ms): [`Event::Malformed`] if it does
///   not parse; a request is an [`Event::Request`] from its top `Via` address (an `ACK` is an
///   [`Event::Ack`], one without a usable `Via` a [`Event::Stray`]); a response whose CSeq
///   method is that of a request the proxy forwarded is an [`Event::Response`] of the latest
///   such client transaction, with that request's `Via` on top (the transaction layer matches
///   on the branch and the method only, RFC 3261 §17.1.3), else an [`Event::Stray`].
///
/// The ng commands the P-CSCF queues for the AGW are answered at once by a stand-in that
/// echoes the offered or answered SDP (`delete`: a plain `ok`), so the held INVITEs and
/// answers go on through the ALG's SDP rewriting. Nothing may panic.
pub fn proxy(data: &[u8]) {
    for role in [Role::Pcscf, Role::Scscf] {
        let mut run = Run::new(role);
        for piece in data.split(|b| *b == 0) {
            run.piece(piece);
        }
    }
}

/// One proxy fed one input.
struct Run {
    proxy: Proxy,
    now: Instant,
    /// The requests the proxy forwarded (its client transactions), oldest first.
    forwarded: Vec<Request>,
}

impl Run {
    fn new(role: Role) -> Self {
        let config = ProxyConfig {
            role,
            domain: "a.example".into(),
            scscf: Some(SCSCF),
            peers: HashMap::from([("b.example".to_owned(), SocketAddr::from(([127, 0, 0, 1], 6060)))]),
            retarget: HashMap::from([("sip:dave@a.example".to_owned(), "sip:carol@a.example".to_owned())]),
            mediasec: true,
            agw_ng: Some(SocketAddr::from(([127, 0, 0, 1], 2223))),
            e2ae_provisioned: Provisioned::parse(["sip:carol@a.example"]).unwrap_or_default(),
            core_srtp: false,
            voicemail: Some("sip:vm@a.example".into()),
            dns: true,
            hostnames: vec!["pcscf.a.example".into()],
        };
        Self { proxy: Proxy::new(config, LOCAL), now: Instant::now(), forwarded: Vec::new() }
    }

    fn piece(&mut self, piece: &[u8]) {
        match piece {
            [] => {
                if let Some(key) = self.forwarded.last().and_then(TransactionKey::from_sent_request) {
                    self.event(Event::Timeout { key });
                }
            }
            [seconds] => {
                self.now += Duration::from_secs(u64::from(*seconds));
                let commands = self.proxy.tick(self.now);
                self.track(commands);
            }
            datagram => {
                self.now += Duration::from_millis(20);
                let event = match parse_datagram(Bytes::copy_from_slice(datagram), &Limits::datagram()) {
                    Ok(message) => self.arrival(message),
                    Err(e) => Event::Malformed { source: UE, reason: e.to_string() },
                };
                self.event(event);
            }
        }
    }

    /// The event the endpoint would deliver for `message`.
    fn arrival(&self, message: Message) -> Event {
        match message {
            Message::Request(request) => {
                let source = via_address(&request.headers).unwrap_or(UE);
                if request.method == Method::Ack {
                    return Event::Ack { request: Box::new(request), source };
                }
                match TransactionKey::from_request(&request) {
                    Some(key) => Event::Request { key, request: Box::new(request), source },
                    None => Event::Stray { message: Box::new(Message::Request(request)), source },
                }
            }
            Message::Response(mut response) => {
                let method = response.headers.typed::<mediasec_sip::core::CSeq>().and_then(Result::ok).map(|c| c.method);
                let client = self.forwarded.iter().rev().find(|r| Some(&r.method) == method.as_ref());
                let matched = client.and_then(|r| {
                    let key = TransactionKey::from_sent_request(r)?;
                    let via = Header::build(HeaderName::Via, r.headers.get(&HeaderName::Via)?.value().into_owned()).ok()?;
                    Some((key, via))
                });
                match matched {
                    Some((key, via)) => {
                        response.headers.push_front(via);
                        Event::Response { key, response: Box::new(response) }
                    }
                    None => Event::Stray { message: Box::new(Message::Response(response)), source: SCSCF },
                }
            }
        }
    }

    /// Hands `event` to the proxy, then answers its ng commands until none is left.
    fn event(&mut self, event: Event) {
        let commands = self.proxy.handle(event, self.now);
        self.track(commands);
        loop {
            let ng = self.proxy.take_ng();
            if ng.is_empty() {
                break;
            }
            for request in ng {
                let commands = self.proxy.ng_result(request.id, agw_reply(&request.command), self.now);
                self.track(commands);
            }
        }
    }

    fn track(&mut self, commands: Vec<Command>) {
        for command in commands {
            if let Command::Request { request, .. } | Command::RequestUri { request, .. } = command {
                self.forwarded.push(request);
            }
        }
    }
}

/// The stand-in AGW: `ok` with the command's own SDP, `ok` alone for a command without one.
fn agw_reply(command: &[u8]) -> Result<Vec<u8>, String> {
    let command = Value::decode(command).map_err(|e| e.to_string())?;
    Ok(match command.get("sdp").and_then(Value::as_bytes) {
        Some(sdp) => Value::dict([("result", Value::str("ok")), ("sdp", Value::str(String::from_utf8_lossy(sdp)))]).to_vec(),
        None => Value::dict([("result", Value::str("ok"))]).to_vec(),
    })
}

/// The address of a top `Via` with an IP host (its port, else 5060).
fn via_address(headers: &mediasec_sip::core::Headers) -> Option<SocketAddr> {
    let via: Via = headers.typed::<Via>()?.ok()?;
    match via.host {
        Host::Ip(ip) => Some(SocketAddr::new(ip, via.port.unwrap_or(5060))),
        Host::Name(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stats of `role` after the seed `name`.
    fn after(role: Role, name: &str) -> crate::Stats {
        let path = format!("{}/../../fuzz/corpus/cscf_proxy/{name}", env!("CARGO_MANIFEST_DIR"));
        let mut run = Run::new(role);
        for piece in std::fs::read(path).expect("seed").split(|b| *b == 0) {
            run.piece(piece);
        }
        run.proxy.stats.clone()
    }

    /// The harness reaches what it is for. At the P-CSCF the e2ae call seed goes through the
    /// ALG: its offer, 180 and 200 answers are each rewritten through the stand-in AGW and
    /// nothing fails; the terminating seed's plain offer from the core to alice's contact is
    /// too. At the S-CSCF the REGISTERs stay local (registrar) and the INVITE to alice's AOR
    /// forks to her two contacts (plus one branch for the INVITE to a contact address). The
    /// delayed-offer, UPDATE and reliable-183 seeds go through the ALG without failure.
    #[test]
    fn seeds_reach_the_alg_and_the_fork() {
        let call = after(Role::Pcscf, "e2ae_call");
        assert_eq!((call.requests, call.e2ae_applied, call.agw_failures, call.rejected), (3, 3, 0, 0), "{call:?}");
        let term = after(Role::Pcscf, "terminating_fork");
        assert!(term.e2ae_applied >= 1 && term.agw_failures == 0, "{term:?}");
        let fork = after(Role::Scscf, "terminating_fork");
        assert_eq!((fork.requests, fork.branches, fork.rejected), (4, 3, 0), "{fork:?}");
        // Delayed offer, initial INVITE and re-INVITE: offer in the 2xx and answer in the ACK
        // through the AGW each (their retransmissions replayed without AGW work).
        let delayed = after(Role::Pcscf, "delayed_offer");
        assert_eq!((delayed.e2ae_applied, delayed.agw_failures, delayed.rejected), (4, 0, 0), "{delayed:?}");
        // UPDATE: the initial offer and answer, the same side's and the swapped side's UPDATE
        // offers and answers; the overlapping UPDATE gets 500.
        let update = after(Role::Pcscf, "update_offer");
        assert_eq!((update.e2ae_applied, update.agw_failures, update.rejected), (6, 0, 1), "{update:?}");
        // Preconditions flow (RFC 3262, RFC 3311): the offer, the reliable 183's answer (its
        // retransmission replayed without AGW work), the early UPDATE's offer and answer; the
        // UPDATE overlapping it gets 500; PRACK, 180 and the SDP-less 200 pass.
        let reliable = after(Role::Pcscf, "reliable_183_prack_update");
        assert_eq!((reliable.e2ae_applied, reliable.agw_failures, reliable.rejected), (4, 0, 1), "{reliable:?}");
        // Offer in a reliable 183 to an offerless INVITE, answer in the PRACK: both through the
        // AGW once; the 183's retransmission and the 200's copy of the offer are not.
        let prack = after(Role::Pcscf, "offer_in_reliable_183");
        assert_eq!((prack.e2ae_applied, prack.agw_failures, prack.rejected), (2, 0, 0), "{prack:?}");
        // An offer in the 2xx to an offerless INVITE that fails the SDES check (a repeated
        // a=crypto tag): passed on once counted, its retransmission and the ACK without AGW work.
        let refused = after(Role::Pcscf, "offer_in_2xx_sdes_refused");
        assert_eq!((refused.sdes_refused, refused.e2ae_applied, refused.agw_failures, refused.rejected), (1, 0, 0, 0), "{refused:?}");
        // The caller's CANCEL goes on once the branch sent its 100 (RFC 3261 §9.1).
        let cancel = after(Role::Scscf, "timeout_cancel_clock");
        assert_eq!(cancel.cancels, 1, "{cancel:?}");
        // Timer C (RFC 3261 §16.8) in both roles: the ringing branch CANCELled, the silent
        // one taken as 408.
        for role in [Role::Pcscf, Role::Scscf] {
            let timer_c = after(role, "timer_c");
            assert_eq!((timer_c.requests, timer_c.timer_c, timer_c.cancels), (2, 2, 1), "{role:?} {timer_c:?}");
        }
    }

    /// Every committed seed of `fuzz/corpus/cscf_proxy` through the fuzz target's function.
    #[test]
    fn fuzz_corpus_replay() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/corpus/cscf_proxy");
        let mut n = 0;
        for entry in std::fs::read_dir(dir).expect("corpus") {
            let data = std::fs::read(entry.expect("entry").path()).expect("seed");
            proxy(&data);
            n += 1;
        }
        assert!(n >= 7, "seed corpus has {n} files");
    }
}
