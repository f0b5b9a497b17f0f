//! Whole-gateway tests on 127.0.0.1: our AGW over real UDP sockets, rtpengine as the
//! reference implementation, pylibsrtp (libsrtp 2.7) as the independent UE-side SRTP stack.
//! External tools missing ⇒ skip with a line, or fail under `MEDIASEC_REQUIRE_PEERS=1`.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mediasec_agw::bencode::Value;
use mediasec_agw::{ng, Agw, Config, MediaPath, ServerConfig};
use mediasec_sdp::{CryptoAttribute, SdesPolicy};
use mediasec_srtp::{MasterKey, Policy, Session, Suite};

const HELPER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/interop/agw/sdes_call.py");

use mediasec_testkit::free_ports;
use mediasec_testkit::tool_usable as need;

/// A child process killed (by PID) and reaped on drop.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        // SIGTERM first so that a forking daemon (Kamailio) stops its children itself.
        let pid = self.0.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        for _ in 0..30 {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn client() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s
}

fn ping(addr: SocketAddr) -> bool {
    ng::request(&client(), addr, &Value::dict([("command", Value::str("ping"))]))
        .is_ok_and(|r| r.get("result").and_then(Value::as_str) == Some("pong"))
}

/// Our AGW on its own runtime thread; the runtime lives as long as the returned guard.
fn start_agw() -> (SocketAddr, tokio::runtime::Runtime) {
    let (agw, rt) = start_agw_with_metrics(MediaPath::Auto);
    (agw.ng_addr(), rt)
}

/// Our AGW with `/metrics`, relaying media over `path`.
fn start_agw_with_metrics(path: MediaPath) -> (Agw, tokio::runtime::Runtime) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let base = free_ports(200);
    let agw = rt
        .block_on(Agw::start_with(ServerConfig {
            listen_ng: "127.0.0.1:0".parse().unwrap(),
            interface: "127.0.0.1".parse().unwrap(),
            port_min: base,
            port_max: base + 199,
            metrics: Some("127.0.0.1:0".parse().unwrap()),
            media_threads: 2,
            control: Config { address: "127.0.0.1".parse().unwrap(), sdes: SdesPolicy::default(), timeout: Duration::from_secs(30) },
        }, path))
        .unwrap();
    (agw, rt)
}

fn start_rtpengine() -> Option<(SocketAddr, Daemon)> {
    if !need("rtpengine (Debian rtpengine-daemon)", Command::new("rtpengine").arg("--version")) {
        return None;
    }
    let port = free_ports(1);
    let base = free_ports(200);
    let child = Command::new("rtpengine")
        .args(["--config-file=none", "--foreground", "--log-stderr", "--table=-1", "--interface=127.0.0.1", "--delete-delay=0"])
        .arg(format!("--listen-ng=127.0.0.1:{port}"))
        .arg(format!("--port-min={base}"))
        .arg(format!("--port-max={}", base + 199))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("rtpengine starts");
    let daemon = Daemon(child);
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    for _ in 0..50 {
        if ping(addr) {
            return Some((addr, daemon));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("rtpengine did not answer ping on {addr}");
}

fn sdes_call(ng: SocketAddr, suites: &str, flags: &[&str]) -> serde_json::Value {
    let out = Command::new("python3").arg(HELPER).arg(ng.port().to_string()).arg(suites).args(flags).output().unwrap();
    assert!(out.status.success(), "{suites} via {ng}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Same SDES offers into rtpengine (userspace) and into our AGW: equivalent answers, and
/// media decrypted correctly both ways by libsrtp on the UE side.
#[test]
fn rtpengine_reference_equivalent_answers_and_media() {
    if !need("python3 with pylibsrtp", Command::new("python3").args(["-c", "import pylibsrtp"])) {
        return;
    }
    let Some((rtpe, _daemon)) = start_rtpengine() else { return };
    let (ours, _rt) = start_agw();
    for suite in ["AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32", "AEAD_AES_128_GCM", "AEAD_AES_256_GCM"] {
        let (r, o) = (sdes_call(rtpe, suite, &[]), sdes_call(ours, suite, &[]));
        for field in ["crypto_lines", "tag", "suite", "key_len", "core_has_crypto"] {
            assert_eq!(r[field], o[field], "{suite}: {field} differs: rtpengine {r} vs ours {o}");
        }
        for v in [&r, &o] {
            assert_eq!((v["up_ok"].as_u64(), v["down_ok"].as_u64()), (v["packets"].as_u64(), v["packets"].as_u64()), "{suite}: {v}");
        }
        // Padding: we always pad (RFC 4568 base64 with '='); rtpengine omits '=' for the
        // 28- and 44-octet GCM keys (peers.md §0.2).
        assert_eq!(o["padded"], true, "{o}");
        let unpadded = suite.starts_with("AEAD");
        assert_eq!(r["padded"], !unpadded, "{r}");
        println!("{suite}: rtpengine inline {} chars, ours {} chars; media 2x{} packets OK through both", r["inline_len"], o["inline_len"], o["packets"]);
    }
    // Suite choice among several lines: rtpengine takes the offerer's first; we take our
    // local preference unless told `SDES: [offerer_pref]`.
    let two = "AES_CM_128_HMAC_SHA1_80,AEAD_AES_256_GCM";
    let (r, o, p) = (sdes_call(rtpe, two, &[]), sdes_call(ours, two, &[]), sdes_call(ours, two, &["offerer_pref"]));
    assert_eq!((r["tag"].as_u64(), r["suite"].as_str()), (Some(1), Some("AES_CM_128_HMAC_SHA1_80")));
    assert_eq!((p["tag"].clone(), p["suite"].clone()), (r["tag"].clone(), r["suite"].clone()));
    assert_eq!((o["tag"].as_u64(), o["suite"].as_str()), (Some(2), Some("AEAD_AES_256_GCM")));
}

fn request(ng_addr: SocketAddr, entries: Vec<(&'static str, Value<'static>)>) -> Value<'static> {
    let v = Value::Dict(entries.into_iter().map(|(k, v)| (std::borrow::Cow::Borrowed(k.as_bytes()), v)).collect());
    ng::request(&client(), ng_addr, &v).unwrap()
}

fn port_of(sdp: &str) -> u16 {
    sdp.lines().find_map(|l| l.strip_prefix("m=audio ")?.split(' ').next()?.parse().ok()).unwrap()
}

/// The SRTP suite and the UE's key of the UDP tests' calls ([`srtp_call`]).
const SUITE: Suite = Suite::AeadAes128Gcm;
const UE_KEY: [u8; 28] = [9; 28];

/// A call UE (SRTP) ⇄ core (plain RTP) set up over ng, as the IMS-ALG sets an originating
/// e2ae call up.
struct SrtpCall {
    /// The relay's address the UE sends to (leg A).
    relay_ue: SocketAddr,
    /// The relay's address the core sends to (leg B).
    relay_core: SocketAddr,
    /// What the UE protects with (its offered key).
    ue_key: Policy,
    /// What the UE unprotects with (the relay's answered key).
    agw_key: Policy,
}

/// Sets up call `id`: `ue` offers `RTP/SAVP` with one AEAD_AES_128_GCM line ([`UE_KEY`]),
/// `RTP/AVP` towards the core, which answers from `core` with plain `RTP/AVP`.
fn srtp_call(ng_addr: SocketAddr, id: &str, ue: &UdpSocket, core: &UdpSocket) -> SrtpCall {
    let sdp = |port: u16, proto: &str, extra: &str| {
        format!("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {port} {proto} 0\r\n{extra}")
    };
    // inline: UE_KEY in base64.
    let crypto = "a=crypto:1 AEAD_AES_128_GCM inline:CQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQ==\r\n";
    let offer = request(
        ng_addr,
        vec![
            ("command", Value::str("offer")),
            ("call-id", Value::str(id)),
            ("from-tag", Value::str("ue")),
            ("transport-protocol", Value::str("RTP/AVP")),
            ("sdp", Value::str(sdp(ue.local_addr().unwrap().port(), "RTP/SAVP", crypto))),
        ],
    );
    assert_eq!(offer.get("result").and_then(Value::as_str), Some("ok"), "{offer:?}");
    let answer = request(
        ng_addr,
        vec![
            ("command", Value::str("answer")),
            ("call-id", Value::str(id)),
            ("from-tag", Value::str("ue")),
            ("to-tag", Value::str("core")),
            ("sdp", Value::str(sdp(core.local_addr().unwrap().port(), "RTP/AVP", ""))),
        ],
    );
    let to_ue = answer.get("sdp").and_then(Value::as_str).unwrap();
    let ours = to_ue.lines().find_map(|l| l.strip_prefix("a=crypto:")).unwrap();
    let ours = CryptoAttribute::parse(ours).unwrap();
    let agw_key = ours.inline_keys().next().unwrap().key_salt().to_vec();
    let to_core = offer.get("sdp").and_then(Value::as_str).unwrap();
    SrtpCall {
        relay_ue: ([127, 0, 0, 1], port_of(to_ue)).into(),
        relay_core: ([127, 0, 0, 1], port_of(to_core)).into(),
        ue_key: Policy::new(SUITE, MasterKey::from_inline(SUITE, &UE_KEY).unwrap()),
        agw_key: Policy::new(SUITE, MasterKey::from_inline(SUITE, &agw_key).unwrap()),
    }
}

/// Over real sockets: forged and replayed SRTP never reaches the core and is counted per
/// reason in `query`; genuine media flows; `delete` frees the call.
#[test]
fn over_udp_failed_packets_are_dropped_and_counted() {
    // Both send paths: io_uring (where the kernel allows it) and sendto.
    for path in [MediaPath::Auto, MediaPath::Epoll] {
        dropped_and_counted(path);
    }
}

fn dropped_and_counted(path: MediaPath) {
    let (agw, _rt) = start_agw_with_metrics(path);
    let (ng_addr, metrics) = (agw.ng_addr(), agw.metrics_addr().unwrap());
    let ue = UdpSocket::bind("127.0.0.1:0").unwrap();
    let core = UdpSocket::bind("127.0.0.1:0").unwrap();
    core.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let call = srtp_call(ng_addr, "udp-1", &ue, &core);
    let relay_ue = call.relay_ue;
    let mut tx = Session::new(&call.ue_key).unwrap();
    let mut forger = Session::new(&call.ue_key).unwrap();
    let mut buf = [0u8; 2048];
    for seq in 0..5u16 {
        let plain = [&[0x80, 0][..], &seq.to_be_bytes(), &[0, 0, 0, 0, 0, 0, 0, 7], &[0xab; 160]].concat();
        let mut p = plain.clone();
        tx.protect_rtp_vec(&mut p).unwrap();
        ue.send_to(&p, relay_ue).unwrap();
        let n = core.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], &plain[..]);
        ue.send_to(&p, relay_ue).unwrap(); // replay
        // A forged packet with a fresh index (so the replay check passes and the tag fails).
        let mut forged = [&[0x80, 0][..], &(1000 + seq).to_be_bytes(), &[0, 0, 0, 0, 0, 0, 0, 7], &[0xcd; 160]].concat();
        forger.protect_rtp_vec(&mut forged).unwrap();
        forged[30] ^= 0x40;
        ue.send_to(&forged, relay_ue).unwrap();
    }
    assert!(core.recv(&mut buf).is_err(), "nothing but the genuine packets reached the core");
    let q = request(ng_addr, vec![("command", Value::str("query")), ("call-id", Value::str("udp-1"))]);
    let a = q.get("streams").and_then(Value::as_list).unwrap()[0].get("A").unwrap().clone();
    let drops = a.get("drops").unwrap();
    assert_eq!(drops.get("replay").and_then(Value::as_int), Some(5), "{q:?}");
    assert_eq!(drops.get("auth_failed").and_then(Value::as_int), Some(5), "{q:?}");
    assert_eq!(q.get("totals").and_then(|t| t.get("errors")).and_then(Value::as_int), Some(10));
    let mut http = std::net::TcpStream::connect(metrics).unwrap();
    std::io::Write::write_all(&mut http, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut page = String::new();
    std::io::Read::read_to_string(&mut http, &mut page).unwrap();
    assert!(page.starts_with("HTTP/1.1 200 OK"), "{page}");
    assert!(page.contains("mediasec_agw_drops_total{reason=\"auth_failed\"} 5\n"), "{page}");
    assert!(page.contains("mediasec_agw_packets_total{component=\"rtp\",direction=\"sent\"} 5\n"), "{page}");
    let d = request(ng_addr, vec![("command", Value::str("delete")), ("call-id", Value::str("udp-1"))]);
    assert_eq!(d.get("result").and_then(Value::as_str), Some("ok"));
    let again = request(ng_addr, vec![("command", Value::str("query")), ("call-id", Value::str("udp-1"))]);
    assert_eq!(again.get("error-reason").and_then(Value::as_str), Some("unknown call-id"));
}

/// NAT rebinding of an SRTP UE mid-call, over real sockets, for both media drivers. The relay
/// must follow the UE to its new address once one packet from there authenticates (relay.rs:
/// latching), a forged packet must move nothing, and with io_uring the UE-facing port's
/// connected twin must follow too, without losing a packet (uring.rs § Connected twins).
#[test]
fn srtp_ue_rebinding_mid_call_is_followed() {
    for path in [MediaPath::Auto, MediaPath::Epoll] {
        for old_closes in [false, true] {
            rebinding(path, old_closes);
        }
    }
}

/// Media of an [`SrtpCall`], one packet at a time: each is received (and checked) before the
/// next is sent, so which address the relay had latched when it relayed a packet is known.
struct Lockstep {
    call: SrtpCall,
    core: UdpSocket,
    ue_tx: Session,
    ue_rx: Session,
    /// Next sequence numbers, UE → core and core → UE.
    up_seq: u16,
    down_seq: u16,
    /// Packets relayed so far, each way.
    ups: u64,
    downs: u64,
}

fn rtp_packet(seq: u16, ssrc: u8) -> Vec<u8> {
    [&[0x80, 0][..], &seq.to_be_bytes(), &[0, 0, 0, 0, 0, 0, 0, ssrc], &[ssrc ^ seq as u8; 160]].concat()
}

impl Lockstep {
    /// The UE sends its next packet from `from`; the core receives it decrypted, from the
    /// relay's core-facing port.
    fn up(&mut self, from: &UdpSocket) {
        let (seq, plain) = (self.up_seq, rtp_packet(self.up_seq, 0x0e));
        let mut p = plain.clone();
        self.ue_tx.protect_rtp_vec(&mut p).unwrap();
        from.send_to(&p, self.call.relay_ue).unwrap();
        let mut buf = [0u8; 2048];
        let (n, src) = self.core.recv_from(&mut buf).unwrap_or_else(|e| panic!("UE packet {seq} from {:?}: {e}", from.local_addr()));
        assert_eq!((&buf[..n], src), (&plain[..], self.call.relay_core), "UE packet {seq}");
        self.up_seq = seq.wrapping_add(1);
        self.ups += 1;
    }

    /// The core sends its next packet; `to` receives it from the relay's UE-facing port,
    /// protected under the relay's answered key.
    fn down(&mut self, to: &UdpSocket) {
        let (seq, plain) = (self.down_seq, rtp_packet(self.down_seq, 0xc0));
        self.core.send_to(&plain, self.call.relay_core).unwrap();
        let mut buf = [0u8; 2048];
        let (n, src) = to.recv_from(&mut buf).unwrap_or_else(|e| panic!("core packet {seq} to {:?}: {e}", to.local_addr()));
        assert_eq!(src, self.call.relay_ue, "core packet {seq}");
        let mut p = buf[..n].to_vec();
        self.ue_rx.unprotect_rtp_vec(&mut p).unwrap();
        assert_eq!(p, plain, "core packet {seq}");
        self.down_seq = seq.wrapping_add(1);
        self.downs += 1;
    }
}

/// Leg A (the UE's) of call `id` as `query` reports it.
fn ue_leg(ng_addr: SocketAddr, id: &str) -> Value<'static> {
    let q = request(ng_addr, vec![("command", Value::str("query")), ("call-id", Value::str(id))]);
    q.get("streams").and_then(Value::as_list).unwrap()[0].get("A").unwrap().clone()
}

fn int_at(v: &Value<'_>, path: &[&str]) -> i64 {
    path.iter().try_fold(v, |v, k| v.get(k)).and_then(Value::as_int).unwrap_or_else(|| panic!("{path:?} in {v:?}"))
}

/// No datagram waiting on `s` (after a moment for stragglers).
fn assert_nothing_queued(s: &UdpSocket, what: &str) {
    std::thread::sleep(Duration::from_millis(50));
    s.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 2048];
    let got = s.recv_from(&mut buf);
    assert!(matches!(&got, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock), "{what}: {got:?}");
    s.set_nonblocking(false).unwrap();
}

/// The scenario of [`srtp_ue_rebinding_mid_call_is_followed`], each packet awaited:
/// 1. `OLD` rounds (UE → core, core → UE) from and to the UE's first socket;
/// 2. the core sends `IN_FLIGHT` more before the UE's first packet from its new address: they
///    reach the old socket (sent before the re-latch, the relay has no reason to move yet).
///    With `old_closes` the old socket then closes (its NAT binding is gone) and the core
///    sends `DEAD` more, which the relay sends to the dead address (with io_uring from the
///    twin connected there, which draws ICMP port unreachable); after the re-latch the old
///    address is bound again, to see that nothing more is sent there;
/// 3. the UE sends from a new socket, same keys, its sequence numbers continuing (they wrap
///    on the new address: rollover counter 0 → 1); the core receives every such packet and
///    every core packet from then on reaches the new socket: none the old one;
/// 4. a packet under a wrong key from a third address is dropped as `auth_failed`: nothing
///    reaches the core or that address, and the relay stays latched to the new socket;
/// 5. rounds go on 20 ms apart until one has started after the twin's 1-s re-connect guard
///    (io_uring; the guard runs from the twin's creation, which is before the UE got the
///    first core packet; at least 5 rounds), then `AFTER` more rounds.
///
/// Sends, as `Agw::media_sends` (connected, unconnected): the epoll driver sends every packet
/// with an address. With io_uring the first send of each port is unconnected (it makes that
/// port's twin: core-facing for the core, UE-facing for the old socket), and so is every core
/// packet to the new socket until the twin is re-connected there: `n` of them, 1 ≤ n ≤ the core
/// packets to the new socket before the `AFTER` rounds. Every other send leaves from a twin
/// (the core-facing twin never moves), and the `AFTER` rounds are all connected: +2·`AFTER`
/// connected, +0 unconnected. Genuine packets draw no `auth_failed`: the one counted is the
/// forgery.
fn rebinding(path: MediaPath, old_closes: bool) {
    const OLD: u16 = 4;
    const IN_FLIGHT: u64 = 3;
    const DEAD: u64 = 3;
    const AFTER: u64 = 20;
    const GUARD: Duration = Duration::from_secs(1);
    let (agw, _rt) = start_agw_with_metrics(path);
    let ng_addr = agw.ng_addr();
    let socket = || {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s
    };
    let (ue_old, ue_new, forger) = (socket(), socket(), socket());
    let core = socket();
    let call = srtp_call(ng_addr, "rebind", &ue_old, &core);
    let (ue_tx, ue_rx) = (Session::new(&call.ue_key).unwrap(), Session::new(&call.agw_key).unwrap());
    let mut m = Lockstep { call, core, ue_tx, ue_rx, up_seq: 0u16.wrapping_sub(OLD + 1), down_seq: 0, ups: 0, downs: 0 };
    let new_addr = ue_new.local_addr().unwrap().to_string();

    // 1.
    m.up(&ue_old);
    m.down(&ue_old);
    let guard_over = Instant::now() + GUARD;
    for _ in 1..OLD {
        m.up(&ue_old);
        m.down(&ue_old);
    }
    // 2.
    for _ in 0..IN_FLIGHT {
        m.down(&ue_old);
    }
    let to_old = m.downs;
    let old_addr = ue_old.local_addr().unwrap();
    let mut lost = 0;
    let ue_old = if old_closes {
        drop(ue_old);
        for _ in 0..DEAD {
            m.core.send_to(&rtp_packet(m.down_seq, 0xc0), m.call.relay_core).unwrap();
            m.down_seq = m.down_seq.wrapping_add(1);
        }
        lost = DEAD;
        let deadline = Instant::now() + Duration::from_secs(2);
        while int_at(&ue_leg(ng_addr, "rebind"), &["sent", "RTP", "packets"]) < (m.downs + lost) as i64 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    } else {
        Some(ue_old)
    };
    // 3.
    m.up(&ue_new);
    let leg = ue_leg(ng_addr, "rebind");
    assert_eq!(leg.get("latched").and_then(Value::as_str), Some(new_addr.as_str()), "{path:?}: re-latched on one authenticated packet");
    let ue_old = ue_old.unwrap_or_else(|| UdpSocket::bind(old_addr).unwrap());
    m.down(&ue_new);
    m.up(&ue_new);
    assert_eq!(m.up_seq, 1, "the UE's sequence numbers wrapped on the new address");
    m.down(&ue_new);
    assert_eq!(int_at(&ue_leg(ng_addr, "rebind"), &["drops", "auth_failed"]), 0, "{path:?}: genuine packets");
    // 4.
    let mut wrong = Session::new(&Policy::new(SUITE, MasterKey::from_inline(SUITE, &[0x5a; 28]).unwrap())).unwrap();
    let mut forged = rtp_packet(m.up_seq.wrapping_add(100), 0x0e);
    wrong.protect_rtp_vec(&mut forged).unwrap();
    forger.send_to(&forged, m.call.relay_ue).unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    while int_at(&ue_leg(ng_addr, "rebind"), &["drops", "auth_failed"]) == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let leg = ue_leg(ng_addr, "rebind");
    assert_eq!(int_at(&leg, &["drops", "auth_failed"]), 1, "{path:?}: the forgery is counted");
    assert_eq!(leg.get("latched").and_then(Value::as_str), Some(new_addr.as_str()), "{path:?}: the forgery moved nothing");
    // 5.
    for round in 0.. {
        // A core packet sent after the guard is relayed in a batch that re-connects the twin.
        let past_guard = Instant::now() >= guard_over || !agw.uses_io_uring();
        m.up(&ue_new);
        m.down(&ue_new);
        if past_guard && round >= 4 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let to_new_before = m.downs - to_old;
    let before = agw.media_sends();
    for _ in 0..AFTER {
        m.up(&ue_new);
        m.down(&ue_new);
    }
    let after = agw.media_sends();

    assert_nothing_queued(&ue_old, "nothing reached the old socket after the re-latch");
    assert_nothing_queued(&forger, "nothing reached the forger");
    assert_nothing_queued(&m.core, "nothing but the UE's packets reached the core");
    let leg = ue_leg(ng_addr, "rebind");
    assert_eq!(int_at(&leg, &["received", "RTP", "packets"]), (m.ups + 1) as i64, "{path:?}: the UE's packets and the forgery");
    assert_eq!(int_at(&leg, &["sent", "RTP", "packets"]), (m.downs + lost) as i64, "{path:?}");
    assert_eq!(int_at(&leg, &["drops", "auth_failed"]), 1, "{path:?}: no genuine packet failed");
    let core_leg = request(ng_addr, vec![("command", Value::str("query")), ("call-id", Value::str("rebind"))]);
    assert_eq!(int_at(&core_leg, &["totals", "errors"]), 1, "{path:?}: the forgery is the only drop");
    let b = core_leg.get("streams").and_then(Value::as_list).unwrap()[0].get("B").unwrap().clone();
    assert_eq!(int_at(&b, &["sent", "RTP", "packets"]), m.ups as i64, "{path:?}: every UE packet relayed to the core");

    assert_eq!(after.0 + after.1, m.ups + m.downs + lost, "{path:?}: {after:?}");
    if agw.uses_io_uring() {
        let unconnected_to_new = after.1 - 2;
        assert_eq!((after.0 - before.0, after.1 - before.1), (2 * AFTER, 0), "{path:?}: after the guard, every send leaves from a twin ({before:?} → {after:?})");
        assert!((1..=to_new_before).contains(&unconnected_to_new), "{path:?}: {unconnected_to_new} unconnected sends to the new address, of {to_new_before}");
        println!("{path:?}: {unconnected_to_new} of the {to_new_before} core packets to the new address before the guard ended went unconnected");
    } else {
        assert_eq!(after, (0, m.ups + m.downs + lost), "{path:?}");
    }
    println!(
        "{path:?} (io_uring {}), old socket closed at the move {old_closes}: UE → core {} packets ({} from the new address), core → UE {} ({to_old} to the old socket, and {lost} to it once closed, all before the re-latch); sends (connected, unconnected) {before:?} before the last {AFTER} rounds, {after:?} after",
        agw.uses_io_uring(),
        m.ups,
        m.ups - u64::from(OLD),
        m.downs,
    );
}

/// Every committed seed of `fuzz/corpus/agw_ng` through the fuzz target's function.
#[test]
fn fuzz_corpus_replay() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/corpus/agw_ng");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let data = std::fs::read(entry.unwrap().path()).unwrap();
        mediasec_agw::fuzzing::ng(&data);
        n += 1;
    }
    assert!(n >= 8, "seed corpus has {n} files");
}

/// A SIP port `p` with `p + 1` free too (baresip's TLS transport takes SIP port + 1).
/// 8 kHz mono 16-bit PCM WAV with a sine of `hz` for `secs` seconds.
fn tone_wav(hz: f64, secs: usize) -> Vec<u8> {
    let samples: Vec<u8> = (0..8000 * secs)
        .flat_map(|i| ((8000.0 * (2.0 * std::f64::consts::PI * hz * i as f64 / 8000.0).sin()) as i16).to_le_bytes())
        .collect();
    let mut w = Vec::new();
    w.extend_from_slice(b"RIFF");
    w.extend_from_slice(&(36 + samples.len() as u32).to_le_bytes());
    w.extend_from_slice(b"WAVEfmt ");
    for v in [16u32.to_le_bytes().to_vec(), 1u16.to_le_bytes().to_vec(), 1u16.to_le_bytes().to_vec(), 8000u32.to_le_bytes().to_vec(), 16000u32.to_le_bytes().to_vec(), 2u16.to_le_bytes().to_vec(), 16u16.to_le_bytes().to_vec()] {
        w.extend_from_slice(&v);
    }
    w.extend_from_slice(b"data");
    w.extend_from_slice(&(samples.len() as u32).to_le_bytes());
    w.extend_from_slice(&samples);
    w
}

/// Goertzel power of `hz` in 8-kHz samples.
fn goertzel(samples: &[i16], hz: f64) -> f64 {
    let c = 2.0 * (2.0 * std::f64::consts::PI * hz / 8000.0).cos();
    let (mut s1, mut s2) = (0.0, 0.0);
    for &x in samples {
        let s0 = f64::from(x) + c * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    s1 * s1 + s2 * s2 - c * s1 * s2
}

/// The samples of the audio a baresip UA decoded (its `sndfile` dump `*-dec.wav`).
fn decoded_audio(dir: &std::path::Path) -> Vec<i16> {
    let file = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).find(|p| p.to_string_lossy().ends_with("-dec.wav"));
    let Some(file) = file else { panic!("no decoded audio dump in {}", dir.display()) };
    let bytes = std::fs::read(file).unwrap();
    bytes[44..].chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]])).collect()
}

fn baresip_dir(root: &std::path::Path, name: &str, sip: u16, rtp: u16, account: &str, hz: f64) -> std::path::PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let wav = root.join(format!("{name}.wav"));
    std::fs::write(&wav, tone_wav(hz, 10)).unwrap();
    let config = format!(
        "poll_method epoll\nsip_listen 127.0.0.1:{sip}\nnet_interface 127.0.0.1\nrtp_ports {rtp}-{}\n\
         audio_source aufile,{}\naudio_player aubridge,p{name}\naudio_alert aubridge,a{name}\n\
         module_path /usr/lib/baresip/modules\nmodule g711.so\nmodule aufile.so\nmodule aubridge.so\n\
         module sndfile.so\nmodule srtp.so\nmodule menu.so\nmodule_app account.so\nsnd_path {}\n",
        rtp + 19,
        wav.display(),
        dir.display()
    );
    std::fs::write(dir.join("config"), config).unwrap();
    std::fs::write(dir.join("accounts"), format!("{account}\n")).unwrap();
    dir
}

/// Kamailio (Debian 5.6, `rtpengine` module) drives our AGW over ng and relays an SDES call
/// between two baresip UAs: alice insists on SRTP (`srtp-mand`, access side), bob speaks
/// plain RTP (core side). Each sends its own tone; each side's decoded audio must carry the
/// other's tone, so the AGW decrypted alice's SRTP and encrypted bob's RTP correctly.
#[test]
fn kamailio_drives_our_agw_between_baresip_uas() {
    if !need("kamailio (Debian kamailio)", Command::new("kamailio").arg("-v"))
        || !need("baresip (Debian baresip-core)", Command::new("sh").args(["-c", "test -e /usr/lib/baresip/modules/srtp.so && command -v baresip"]))
        || !need("a C compiler for the bind shim (cc)", Command::new("cc").arg("--version"))
    {
        return;
    }
    let (ng_addr, _rt) = start_agw();
    let root = std::env::temp_dir().join(format!("mediasec-agw-kamailio-{}-{}", std::process::id(), rand::random::<u32>()));
    std::fs::create_dir_all(&root).unwrap();
    // baresip binds its RTP sockets to the wildcard address; the SIP tests' LD_PRELOAD shim
    // turns those binds into 127.0.0.1 ones (nothing listens beyond loopback).
    let shim = root.join("bind_lo.so");
    let built = Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&shim)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/interop/sip/bind_lo.c"))
        .arg("-ldl")
        .status()
        .unwrap();
    assert!(built.success(), "the bind shim did not build");
    let (kam_port, alice_port, bob_port) = (free_ports(1), free_ports(2), free_ports(2));
    let template = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/interop/agw/kamailio.cfg")).unwrap();
    let cfg = template
        .replace("@SIP_PORT@", &kam_port.to_string())
        .replace("@NG_PORT@", &ng_addr.port().to_string())
        .replace("@BOB_PORT@", &bob_port.to_string());
    let cfg_path = root.join("kamailio.cfg");
    std::fs::write(&cfg_path, cfg).unwrap();
    let check = Command::new("kamailio").arg("-c").arg("-f").arg(&cfg_path).output().unwrap();
    assert!(check.status.success(), "kamailio -c: {}", String::from_utf8_lossy(&check.stderr));
    let kamailio = Daemon(
        Command::new("kamailio")
            .arg("-f")
            .arg(&cfg_path)
            .args(["-DD", "-E"])
            .arg("-P")
            .arg(root.join("kamailio.pid"))
            .arg("-Y")
            .arg(&root)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(root.join("kamailio.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let rtp = free_ports(40);
    let bob = baresip_dir(&root, "bob", bob_port, rtp, "<sip:bob@127.0.0.1>;regint=0;answermode=auto;audio_codecs=PCMU", 1500.0);
    let alice = baresip_dir(&root, "alice", alice_port, rtp + 20, "<sip:alice@127.0.0.1>;regint=0;mediaenc=srtp-mand;audio_codecs=PCMU", 1000.0);
    std::thread::sleep(Duration::from_millis(800));
    let spawn = |dir: &std::path::Path, extra: &[String]| {
        Daemon(
            Command::new("baresip")
                .env("LD_PRELOAD", &shim)
                .arg("-f")
                .arg(dir)
                .args(extra)
                .stdout(std::fs::File::create(dir.join("baresip.log")).unwrap())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    };
    let bob_ua = spawn(&bob, &["-t".into(), "12".into()]);
    std::thread::sleep(Duration::from_millis(500));
    let mut alice_ua = spawn(&alice, &["-t".into(), "8".into(), "-e".into(), format!("/dial sip:bob@127.0.0.1:{kam_port}")]);
    // alice hangs up (quits) after 8 s: BYE through Kamailio, rtpengine_delete to our AGW.
    for _ in 0..150 {
        if matches!(alice_ua.0.try_wait(), Ok(Some(_))) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    drop(bob_ua);
    drop(alice_ua);
    drop(kamailio);
    let log = std::fs::read_to_string(alice.join("baresip.log")).unwrap_or_default();
    assert!(log.contains("SRTP is Enabled"), "alice (srtp-mand) did not get SRTP:\n{log}");
    let (heard_by_alice, heard_by_bob) = (decoded_audio(&alice), decoded_audio(&bob));
    assert!(heard_by_alice.len() > 8000 && heard_by_bob.len() > 8000, "less than 1 s of audio decoded");
    let (a1000, a1500) = (goertzel(&heard_by_alice, 1000.0), goertzel(&heard_by_alice, 1500.0));
    let (b1000, b1500) = (goertzel(&heard_by_bob, 1000.0), goertzel(&heard_by_bob, 1500.0));
    println!("alice hears 1500 Hz/1000 Hz power ratio {:.0}, bob hears 1000/1500 ratio {:.0}", a1500 / a1000.max(1.0), b1000 / b1500.max(1.0));
    assert!(a1500 > 1000.0 * a1000.max(1.0), "alice (SRTP leg) must hear bob's 1500 Hz tone");
    assert!(b1000 > 1000.0 * b1500.max(1.0), "bob (RTP leg) must hear alice's 1000 Hz tone");
    let _ = std::fs::remove_dir_all(&root);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
    /// Seeds of the corpus with random bytes flipped/truncated, and arbitrary bytes, never panic
    /// anywhere in the ng path.
    #[test]
    fn mutated_ng_datagrams_never_panic(
        seed in 0usize..8,
        flips in proptest::collection::vec((proptest::prelude::any::<usize>(), proptest::prelude::any::<u8>()), 0..6),
        cut in proptest::prelude::any::<usize>(),
        noise in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
    ) {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/corpus/agw_ng");
        let mut files: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        let mut data = std::fs::read(&files[seed % files.len()]).unwrap();
        for (at, b) in flips {
            if !data.is_empty() {
                let i = at % data.len();
                data[i] ^= b;
            }
        }
        data.truncate(cut % (data.len() + 1));
        mediasec_agw::fuzzing::ng(&data);
        let mut framed = b"c ".to_vec();
        framed.extend_from_slice(&noise);
        mediasec_agw::fuzzing::ng(&framed);
    }
}
