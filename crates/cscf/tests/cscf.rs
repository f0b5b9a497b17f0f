//! Whole-system calls on loopback over real UDP: two domains (a.example, b.example), each with
//! a P-CSCF and an S-CSCF, and UEs registered through them. Every call's media is checked by
//! content: each UE sends its own tone and counts the packets carrying the peer's tone.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use mediasec_cscf::lab::TwoDomains;
use mediasec_sdp::SdesPolicy;
use mediasec_ua::{Answering, CallReport, CallState, Security, Ue, UeConfig};

const ALICE_HZ: f64 = 1000.0;
const BOB_HZ: f64 = 1500.0;

type Lab = TwoDomains;

async fn lab_with(retarget: HashMap<String, String>, between: Option<SocketAddr>) -> Lab {
    TwoDomains::start(retarget, between).await.expect("two domains")
}

async fn lab() -> Lab {
    lab_with(HashMap::new(), None).await
}

/// A temporary directory removed when the test ends.
struct Dir(std::path::PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn ue(aor: &str, proxy: SocketAddr, security: Security, tone: f64, expect: f64) -> UeConfig {
    let mut config = UeConfig::loopback(aor, proxy, security, tone, expect);
    config.answering.delay = Duration::from_millis(50);
    config
}

const STRICT: Security = Security::Sdes { fallback: false };
const FALLBACK: Security = Security::Sdes { fallback: true };

async fn registered(config: UeConfig) -> Ue {
    let ue = Ue::start(config).await.expect("UE");
    let r = tokio::time::timeout(Duration::from_secs(5), ue.register(600)).await.expect("in time").expect("REGISTER");
    assert_eq!(r.status, 200);
    ue
}

async fn only_call(ue: &Ue) -> CallReport {
    let mut all = ue.reports().await.expect("reports");
    assert_eq!(all.len(), 1, "{all:?}");
    all.remove(0)
}

async fn call(ue: &Ue, target: &str) -> Result<String, mediasec_ua::Error> {
    tokio::time::timeout(Duration::from_secs(10), ue.call(target)).await.expect("call in time")
}

/// Media flowed both ways, protected as expected, checked by content.
fn assert_media(caller: &CallReport, callee: &CallReport, protection: &str) {
    for r in [caller, callee] {
        assert_eq!(r.protection, protection, "{r:?}");
        assert!(r.media.verified >= 20, "too little verified media: {r:?}");
        assert_eq!(r.media.refused, 0, "{r:?}");
    }
}

/// The data type of a MIKEY message (RFC 3830 §6.1: the header's second octet).
fn mediasec_mikey_data_type(m: &[u8]) -> u8 {
    m.get(1).copied().unwrap_or(0)
}

/// The SDES e2e call through P-CSCF and S-CSCF of two domains: both registrations carry the
/// mediasec indication, the SRTP keys are the ones each side put in its SDP, media is verified
/// both ways (SRTP and SRTCP), and BYE ends both sides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdes_e2e_call_across_two_domains() {
    let lab = lab().await;
    let alice = Ue::start(ue("sip:alice@a.example", lab.pcscf_a.local_addr(), STRICT, ALICE_HZ, BOB_HZ)).await.expect("alice");
    let reg = alice.register(600).await.expect("register");
    assert!(reg.mediasec && reg.status == 200, "the P-CSCF answers Security-Server mediasec: {reg:?}");
    let bob = registered(ue("sip:bob@b.example", lab.pcscf_b.local_addr(), STRICT, BOB_HZ, ALICE_HZ)).await;
    let id = call(&alice, "sip:bob@b.example").await.expect("established");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (a, b) = (alice.report(&id).await.expect("r").expect("call"), only_call(&bob).await);
    assert_eq!(a.state, CallState::Established);
    assert_eq!(b.state, CallState::Established);
    assert_media(&a, &b, "srtp AEAD_AES_256_GCM");
    assert!(a.media.rtcp >= 1 && b.media.rtcp >= 1, "SRTCP authenticated: {a:?} {b:?}");
    assert_eq!(a.peer_key, b.own_key);
    assert_eq!(b.peer_key, a.own_key);
    assert_eq!((a.authenticated_peer.as_deref(), b.authenticated_peer.as_deref()), (None, None), "SDES authenticates no peer");
    assert!(a.setup.is_some_and(|d| d < Duration::from_secs(2)));
    alice.hangup(&id).await.expect("BYE");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(only_call(&bob).await.state, CallState::Ended);
    for p in [&lab.pcscf_a, &lab.scscf_a, &lab.scscf_b, &lab.pcscf_b] {
        assert_eq!(p.stats().rejected, 0, "{:?}", p.stats());
    }
}

/// SDES keys never in clear on the UE–P-CSCF hop (TS 33.328 §4.1.2.1: SDES rests on the
/// protection of the signalling; RFC 3261 §26.2): both P-CSCFs listen on TLS with a lab
/// certificate for 127.0.0.1 made here, both UEs trust its CA and reach their P-CSCF's TLS
/// address; the core stays on UDP. The SDES call sets up through the four proxies, media is
/// verified both ways under the keys each side offered, and each side hangs up once (alice,
/// then — in a second call — bob: in-dialog requests in both directions). Every SIP message
/// either UE received came over TLS — none over UDP or TCP — and each UE and P-CSCF
/// established exactly one TLS connection (the UE's, reused for its calls, their responses and
/// the P-CSCF's requests towards it), without a failed handshake; the S-CSCFs saw no TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdes_call_with_both_ues_on_tls_to_their_pcscf() {
    use mediasec_sip::tls::{client_config, server_config, LabPki};
    let pki = LabPki::generate(&["127.0.0.1"]).expect("lab PKI");
    let server = server_config(pki.cert_pem.as_bytes(), pki.key_pem.as_bytes(), None).expect("server config");
    let client = client_config(pki.ca_pem.as_bytes(), None).expect("client config");
    let lab = TwoDomains::start_config(mediasec_cscf::lab::LabConfig { pcscf_tls: Some(server), ..Default::default() }).await.expect("lab");
    let on_tls = |aor: &str, pcscf: &mediasec_cscf::service::Cscf, tone: f64, expect: f64| {
        let mut config = ue(aor, pcscf.tls_addr().expect("the P-CSCF listens on TLS"), STRICT, tone, expect);
        config.tls = Some(std::sync::Arc::clone(&client));
        config
    };
    let alice = registered(on_tls("sip:alice@a.example", &lab.pcscf_a, ALICE_HZ, BOB_HZ)).await;
    let bob = registered(on_tls("sip:bob@b.example", &lab.pcscf_b, BOB_HZ, ALICE_HZ)).await;
    for (round, hangs_up) in ["alice", "bob"].into_iter().enumerate() {
        let id = call(&alice, "sip:bob@b.example").await.expect("established");
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let a = alice.report(&id).await.expect("r").expect("call");
        let b = bob.report(&id).await.expect("r").expect("bob's call");
        assert_media(&a, &b, "srtp AEAD_AES_256_GCM");
        assert_eq!((&a.peer_key, &b.peer_key), (&b.own_key, &a.own_key), "round {round}");
        let (ender, other) = if hangs_up == "alice" { (&alice, &bob) } else { (&bob, &alice) };
        ender.hangup(&id).await.expect("BYE over TLS");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(other.report(&id).await.expect("r").expect("call").state, CallState::Ended, "{hangs_up} hung up");
    }
    for (name, ue) in [("alice", &alice), ("bob", &bob)] {
        let received = ue.sip_received();
        assert!(received.tls > 0 && received.udp == 0 && received.tcp == 0, "{name}: {received:?}");
        let tls = ue.sip_tcp_stats();
        assert_eq!((tls.tls_connections, tls.tls_handshakes_failed), (1, 0), "{name}: {tls:?}");
    }
    for p in [&lab.pcscf_a, &lab.pcscf_b] {
        let tls = p.tcp_stats();
        assert_eq!((tls.tls_connections, tls.tls_handshakes_failed), (1, 0), "{tls:?}");
        assert!(p.received().tls > 0, "{:?}", p.received());
        assert_eq!(p.stats().rejected, 0, "{:?}", p.stats());
    }
    for s in [&lab.scscf_a, &lab.scscf_b] {
        assert_eq!(s.received().tls, 0, "the core stays on UDP");
    }
}

/// Parallel forking to two registered contacts of bob: the first to answer gets the call,
/// the other is CANCELled (or, if its 2xx crossed the CANCEL, ACKed and ended with BYE).
/// TS 33.328 §5.4.2: with SDES every fork receives the offer — both candidates hold the key
/// alice sends with, so the fork that did not answer could decrypt her media.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forked_call_with_two_answering_candidates_sdes_limitation() {
    let lab = lab().await;
    let alice = registered(ue("sip:alice@a.example", lab.pcscf_a.local_addr(), STRICT, ALICE_HZ, BOB_HZ)).await;
    let bob1 = registered(ue("sip:bob@b.example", lab.pcscf_b.local_addr(), STRICT, BOB_HZ, ALICE_HZ)).await;
    let mut slow = ue("sip:bob@b.example", lab.pcscf_b.local_addr(), STRICT, BOB_HZ, ALICE_HZ);
    slow.answering.delay = Duration::from_millis(700);
    let bob2 = registered(slow).await;
    let id = call(&alice, "sip:bob@b.example").await.expect("established");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let a = alice.report(&id).await.expect("r").expect("call");
    let (b1, b2) = (only_call(&bob1).await, only_call(&bob2).await);
    assert_eq!(b1.state, CallState::Established);
    assert_media(&a, &b1, "srtp AEAD_AES_256_GCM");
    assert!(matches!(b2.state, CallState::Failed(487, _) | CallState::Ended), "{b2:?}");
    assert!(lab.scscf_b.stats().branches >= 2 && lab.scscf_b.stats().cancels >= 1, "{:?}", lab.scscf_b.stats());
    // The SDES forking limitation, as data: both forks saw alice's sending key.
    assert!(a.own_key.is_some());
    assert_eq!(b1.peer_key, a.own_key);
    assert_eq!(b2.peer_key, a.own_key, "the losing fork holds the key alice encrypts with");
}

/// Mixed SRTP and RTP forks. With RTP fallback allowed (RFC 8643 offer), the plain fork that
/// answers first gets a plain call; with SRTP required, the plain UE refuses the RTP/SAVP offer
/// (488) and the call is set up, protected, with the SDES fork.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_srtp_and_rtp_forks() {
    let lab = lab().await;
    let mut secure = ue("sip:bob@b.example", lab.pcscf_b.local_addr(), STRICT, BOB_HZ, ALICE_HZ);
    secure.answering.delay = Duration::from_millis(500);
    let bob_srtp = registered(secure).await;
    let bob_rtp = registered(ue("sip:bob@b.example", lab.pcscf_b.local_addr(), Security::Off, BOB_HZ, ALICE_HZ)).await;

    let lenient = registered(ue("sip:alice@a.example", lab.pcscf_a.local_addr(), FALLBACK, ALICE_HZ, BOB_HZ)).await;
    let id = call(&lenient, "sip:bob@b.example").await.expect("established");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let a = lenient.report(&id).await.expect("r").expect("call");
    let plain = only_call(&bob_rtp).await;
    assert_media(&a, &plain, "rtp");
    lenient.hangup(&id).await.expect("BYE");
    drop(lenient);

    let strict = registered(ue("sip:alice2@a.example", lab.pcscf_a.local_addr(), STRICT, ALICE_HZ, BOB_HZ)).await;
    let id = call(&strict, "sip:bob@b.example").await.expect("established");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let a = strict.report(&id).await.expect("r").expect("call");
    let reports = bob_srtp.reports().await.expect("reports");
    let secured = reports.iter().find(|r| r.state == CallState::Established).expect("the SDES fork answered");
    assert_media(&a, secured, "srtp AEAD_AES_256_GCM");
    let refused = bob_rtp.reports().await.expect("reports");
    assert!(refused.iter().any(|r| matches!(&r.state, CallState::Failed(488, _))), "{refused:?}");
}

/// Early media: the callee sends a 183 with its answer and starts SRTP before the 200; the
/// caller decrypts and verifies it as soon as the 183's keys are known (no clipping).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_media_before_the_answer() {
    let lab = lab().await;
    let alice = registered(ue("sip:alice@a.example", lab.pcscf_a.local_addr(), STRICT, ALICE_HZ, BOB_HZ)).await;
    let mut early = ue("sip:bob@b.example", lab.pcscf_b.local_addr(), STRICT, BOB_HZ, ALICE_HZ);
    early.answering = Answering { auto: true, delay: Duration::from_millis(800), early_media: true };
    let bob = registered(early).await;
    let id = call(&alice, "sip:bob@b.example").await.expect("established");
    tokio::time::sleep(Duration::from_millis(800)).await;
    let a = alice.report(&id).await.expect("r").expect("call");
    let b = only_call(&bob).await;
    assert!(a.early_verified >= 15, "early media verified before the 200: {a:?}");
    assert_media(&a, &b, "srtp AEAD_AES_256_GCM");
}

/// Re-INVITE with re-keying (RFC 4568 §7.1.4, peers.md §1e): both sides start near the
/// sequence-number wrap so their ROC is 1 before the re-key; new keys mean new contexts at
/// ROC 0 while the sequence numbers continue, and media stays verified without refusals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reinvite_rekeys_and_resets_the_roc() {
    let lab = lab().await;
    let mut ac = ue("sip:alice@a.example", lab.pcscf_a.local_addr(), STRICT, ALICE_HZ, BOB_HZ);
    ac.initial_seq = 65_500;
    let alice = registered(ac).await;
    let mut bc = ue("sip:bob@b.example", lab.pcscf_b.local_addr(), STRICT, BOB_HZ, ALICE_HZ);
    bc.initial_seq = 65_500;
    let bob = registered(bc).await;
    let id = call(&alice, "sip:bob@b.example").await.expect("established");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = alice.report(&id).await.expect("r").expect("call");
    assert_eq!(before.media.tx_roc, 1, "the sequence number wrapped: {before:?}");
    assert_eq!(before.media.rx_roc, 1, "{before:?}");
    tokio::time::timeout(Duration::from_secs(5), alice.reinvite(&id)).await.expect("in time").expect("re-INVITE");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let after = alice.report(&id).await.expect("r").expect("call");
    let b = only_call(&bob).await;
    assert_eq!((after.rekeys, b.rekeys), (1, 1));
    assert_ne!(after.own_key, before.own_key, "a new key was sent");
    assert_ne!(after.peer_key, before.peer_key, "a new key was received");
    assert_eq!((after.media.tx_roc, after.media.rx_roc), (0, 0), "new contexts start at ROC 0: {after:?}");
    assert!(after.media.verified >= before.media.verified + 30, "media continued: {before:?} -> {after:?}");
    // bob sends with his new key once he has answered, alice can decrypt it once the answer
    // reached her (RFC 4568 §7.1.4): on a loaded machine a packet may fall in between.
    assert!(after.media.refused <= 2, "{after:?}");
    assert_eq!(b.media.refused, 0, "{b:?}");
}

/// Retargeting at the terminating S-CSCF: a call to carol reaches bob.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retargeted_call() {
    let lab = lab_with(HashMap::from([("sip:carol@b.example".to_owned(), "sip:bob@b.example".to_owned())]), None).await;
    let alice = registered(ue("sip:alice@a.example", lab.pcscf_a.local_addr(), STRICT, ALICE_HZ, BOB_HZ)).await;
    let bob = registered(ue("sip:bob@b.example", lab.pcscf_b.local_addr(), STRICT, BOB_HZ, ALICE_HZ)).await;
    let id = call(&alice, "sip:carol@b.example").await.expect("established");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_media(&alice.report(&id).await.expect("r").expect("call"), &only_call(&bob).await, "srtp AEAD_AES_256_GCM");
    // An unknown user of a known domain: 480 from the registrar.
    let err = call(&alice, "sip:nobody@b.example").await.expect_err("no such user");
    assert!(matches!(err, mediasec_ua::Error::CallFailed { code: 480, .. }), "{err}");
}

/// RFC 3263 on the path, with a DNS responder on 127.0.0.1 (`mediasec_testkit::dns`): alice's
/// outbound proxy is `sip:pcscf.a.example;lr` (no NAPTR; SRV `_sip._udp.pcscf.a.example` → P-CSCF
/// a's port; A 127.0.0.1), which P-CSCF a knows as its own name; S-CSCF a has no peer
/// configured for b.example and finds S-CSCF b by NAPTR `SIP+D2U` of b.example → SRV
/// `_sip._udp.b.example` → `scscf.b.example` → A 127.0.0.1. Alice registers and calls through
/// the four proxies with media verified both ways and ends by BYE; a domain DNS does not know
/// (NXDOMAIN) fails the call as an unreachable next hop does (408).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_to_a_domain_found_by_dns() {
    use mediasec_testkit::dns::{DnsServer, Zone};
    let dns = DnsServer::start(Zone::new());
    let lab = TwoDomains::start_config(mediasec_cscf::lab::LabConfig { dns_a: Some(dns.addr()), ..Default::default() }).await.expect("lab");
    let (scscf_b, pcscf_a) = (lab.scscf_b.local_addr(), lab.pcscf_a.local_addr());
    dns.set_zone(
        Zone::new()
            .naptr("b.example", 10, 10, "SIP+D2U", "_sip._udp.b.example")
            .srv("_sip._udp.b.example", 10, 1, scscf_b.port(), "scscf.b.example")
            .a("scscf.b.example", std::net::Ipv4Addr::LOCALHOST)
            .srv("_sip._udp.pcscf.a.example", 10, 1, pcscf_a.port(), "pcscf.a.example")
            .a("pcscf.a.example", std::net::Ipv4Addr::LOCALHOST),
    );
    // The address given is not used for requests: the URI is.
    let mut by_name = ue("sip:alice@a.example", "127.0.0.1:9".parse().expect("addr"), STRICT, ALICE_HZ, BOB_HZ);
    by_name.outbound_proxy_uri = Some("sip:pcscf.a.example;lr".into());
    by_name.resolver = Some(std::sync::Arc::new(mediasec_sip::locate::DnsResolver::with_server(dns.addr())));
    let alice = registered(by_name).await;
    let bob = registered(ue("sip:bob@b.example", lab.pcscf_b.local_addr(), STRICT, BOB_HZ, ALICE_HZ)).await;
    let id = call(&alice, "sip:bob@b.example").await.expect("established");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (a, b) = (alice.report(&id).await.expect("r").expect("call"), only_call(&bob).await);
    assert_eq!(a.state, CallState::Established);
    assert_eq!(b.state, CallState::Established);
    assert_media(&a, &b, "srtp AEAD_AES_256_GCM");
    assert_eq!(a.peer_key, b.own_key);
    alice.hangup(&id).await.expect("BYE");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(only_call(&bob).await.state, CallState::Ended);
    assert!(dns.queries() >= 6, "NAPTR, SRV and A asked by alice and S-CSCF a: {}", dns.queries());
    let err = call(&alice, "sip:carol@c.example").await.expect_err("c.example is unknown");
    assert!(matches!(err, mediasec_ua::Error::CallFailed { code: 408, .. }), "{err}");
}

/// A proxy on the path strips `a=crypto` from the answer (an attack SDES cannot detect).
/// A caller whose policy requires SRTP refuses the call (ACK + BYE); a caller that allows
/// fallback runs in clear without noticing — only its peer's SRTP stays unreadable to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stripped_answer_is_refused_only_when_policy_requires_srtp() {
    let mitm = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("mitm");
    let lab = lab_with(HashMap::new(), Some(mitm.local_addr().expect("addr"))).await;
    let (a_side, b_side) = (lab.scscf_a.local_addr(), lab.scscf_b.local_addr());
    let relay = tokio::spawn(async move {
        let mut buf = vec![0u8; 65_535];
        loop {
            let Ok((n, from)) = mitm.recv_from(&mut buf).await else { return };
            let Some(bytes) = buf.get(..n) else { continue };
            let to = if from == a_side { b_side } else { a_side };
            let mut out = bytes.to_vec();
            if let Ok(mut m) = mediasec_sip::core::parse_datagram(bytes::Bytes::copy_from_slice(bytes), &mediasec_sip::core::Limits::datagram())
                && m.as_response().is_some()
                && let Ok(Some(mut sdp)) = mediasec_sip::body::sdp(&m)
            {
                let _ = sdp.remove_attributes(mediasec_sdp::Level::Media(0), |a| a.name == "crypto");
                let _ = sdp.set_media_port_proto(0, None, Some("RTP/AVP"));
                if mediasec_sip::body::set_sdp(&mut m, &sdp).is_ok() {
                    out = m.to_bytes().to_vec();
                }
            }
            let _ = mitm.send_to(&out, to).await;
        }
    });
    let bob = registered(ue("sip:bob@b.example", lab.pcscf_b.local_addr(), STRICT, BOB_HZ, ALICE_HZ)).await;
    let strict = registered(ue("sip:alice@a.example", lab.pcscf_a.local_addr(), STRICT, ALICE_HZ, BOB_HZ)).await;
    let err = call(&strict, "sip:bob@b.example").await.expect_err("downgrade refused");
    assert!(matches!(err, mediasec_ua::Error::Downgrade(_)), "{err}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(only_call(&bob).await.state, CallState::Ended, "the refused dialog was ended with BYE");

    let lenient = registered(ue("sip:alice2@a.example", lab.pcscf_a.local_addr(), FALLBACK, ALICE_HZ, BOB_HZ)).await;
    let id = call(&lenient, "sip:bob@b.example").await.expect("established in clear");
    tokio::time::sleep(Duration::from_millis(800)).await;
    let a = lenient.report(&id).await.expect("r").expect("call");
    assert_eq!(a.protection, "rtp", "the caller believes the answerer chose RTP");
    assert_eq!(a.media.verified, 0, "bob sends SRTP the caller cannot read: {a:?}");
    relay.abort();
}

/// The P-CSCF checks the SDES lines of offers: duplicate tags, or RTP/SAVP without one usable
/// line, are answered 488 with a Warning; the request goes no further.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pcscf_refuses_unusable_sdes_offers() {
    let lab = lab().await;
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let me = socket.local_addr().expect("addr");
    let key = "inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz";
    let cases = [
        ("duplicate tag", format!("a=crypto:1 AES_CM_128_HMAC_SHA1_80 {key}\r\na=crypto:1 AES_CM_128_HMAC_SHA1_32 {key}\r\n"), 488),
        ("unknown suite only", format!("a=crypto:1 FOO_BAR {key}\r\n"), 488),
        ("missing crypto", String::new(), 488),
        ("huge MKI", format!("a=crypto:1 AES_CM_128_HMAC_SHA1_80 {key}|2^20|1:200\r\n"), 488),
    ];
    for (i, (what, lines, code)) in cases.iter().enumerate() {
        let body = format!("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/SAVP 0\r\n{lines}");
        let invite = format!(
            "INVITE sip:bob@b.example SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKt{i}\r\nMax-Forwards: 70\r\n\
From: <sip:alice@a.example>;tag=t{i}\r\nTo: <sip:bob@b.example>\r\nCall-ID: check{i}\r\nCSeq: 1 INVITE\r\n\
Contact: <sip:alice@{me}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        socket.send_to(invite.as_bytes(), lab.pcscf_a.local_addr()).await.expect("send");
        let mut buf = vec![0u8; 4096];
        let final_line = loop {
            let (n, _) = tokio::time::timeout(Duration::from_secs(3), socket.recv_from(&mut buf)).await.expect("answer").expect("recv");
            let text = String::from_utf8_lossy(buf.get(..n).unwrap_or_default()).into_owned();
            if !text.starts_with("SIP/2.0 100") {
                break text;
            }
        };
        assert!(final_line.starts_with(&format!("SIP/2.0 {code}")), "{what}: {final_line}");
        assert!(final_line.contains("Warning: 399 pcscf"), "{what}: {final_line}");
    }
    assert_eq!(lab.pcscf_a.stats().sdes_refused, 4);
    assert_eq!(lab.scscf_a.stats().requests, 0, "nothing was forwarded");
}

/// Interop with baresip 1.0 (libre's own SDES/SRTP), through our proxies, both directions:
/// our UE calls baresip (auto-answer), then baresip calls our UE (dialled over ctrl_tcp); e2ae
/// with baresip as the far UE, and as the e2ae UE itself by operator provisioning.
/// Media is verified by content at both ends: our UE counts baresip's 1500 Hz tone; baresip's
/// decoded audio (sndfile dump) must carry our 1000 Hz tone.
/// Packets a UE may refuse around a re-key: those its peer sends under its new key before
/// the answer (or, for an offer in a 2xx, the ACK's answer) that installs that key reaches the
/// UE — RFC 3264 lets the answerer send under the new parameters at once (the RFC 4568 race;
/// 0–1 measured on an idle machine). The bound is a re-key's signalling time through the
/// proxies on a loaded 2-core CI machine (≈ 0.5 s of 20-ms packets); a mismatch that does not
/// heal fails the `verified` checks next to each use.
const REKEY_RACE: u64 = 25;

mod baresip {
    use super::*;
    use std::io::{Read as _, Write as _};
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};

    struct Peer(Child);
    impl Drop for Peer {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn found(program: &str) -> bool {
        Command::new("sh").arg("-c").arg(format!("command -v {program}")).stdout(Stdio::null()).status().is_ok_and(|s| s.success())
    }

    /// A 16-bit mono 8-kHz WAV of a tone.
    fn write_wav(path: &Path, hz: f64, seconds: u32) {
        let samples: Vec<u8> = (0..8000 * seconds)
            .flat_map(|n| (((2.0 * std::f64::consts::PI * hz * f64::from(n) / 8000.0).sin() * 12_000.0) as i16).to_le_bytes())
            .collect();
        let mut out = Vec::new();
        out.extend_from_slice(b"RIFF");
        out.extend_from_slice(&(36 + samples.len() as u32).to_le_bytes());
        out.extend_from_slice(b"WAVEfmt ");
        out.extend_from_slice(&[16, 0, 0, 0, 1, 0, 1, 0]);
        out.extend_from_slice(&8000u32.to_le_bytes());
        out.extend_from_slice(&16000u32.to_le_bytes());
        out.extend_from_slice(&[2, 0, 16, 0]);
        out.extend_from_slice(b"data");
        out.extend_from_slice(&(samples.len() as u32).to_le_bytes());
        out.extend_from_slice(&samples);
        std::fs::write(path, out).expect("wav");
    }

    /// 20-ms frames of a WAV file (the `data` chunk) carrying the tone at `hz`, and all frames.
    fn tone_frames(path: &Path, hz: f64) -> (usize, usize) {
        let bytes = std::fs::read(path).expect("dump");
        let at = bytes.windows(4).position(|w| w == b"data").expect("data chunk") + 8;
        let samples: Vec<i16> = bytes.get(at..).unwrap_or_default().chunks_exact(2).filter_map(|c| <[u8; 2]>::try_from(c).ok().map(i16::from_le_bytes)).collect();
        let frames: Vec<&[i16]> = samples.chunks_exact(160).collect();
        (frames.iter().filter(|f| mediasec_ua::tone::linear_share(f, hz) > 0.5).count(), frames.len())
    }

    fn dumps(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .expect("dir")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.to_string_lossy().ends_with("-dec.wav"))
            .collect();
        v.sort();
        v
    }

    fn ctrl(port: u16, command: &str, params: &str) {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("ctrl_tcp");
        let json = format!("{{\"command\":\"{command}\",\"params\":\"{params}\",\"token\":\"t\"}}");
        s.write_all(format!("{}:{json},", json.len()).as_bytes()).expect("write");
        s.set_read_timeout(Some(Duration::from_millis(500))).expect("timeout");
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf);
    }

    /// One baresip UA: `user`@`domain` registered through `pcscf`, sending a `hz` tone,
    /// auto-answering, SDES SRTP mandatory (`srtp`) or plain RTP.
    struct Ua {
        user: &'static str,
        domain: &'static str,
        pcscf: SocketAddr,
        hz: f64,
        srtp: bool,
    }

    impl Ua {
        /// baresip "bob" (1500 Hz) of b.example.
        fn bob(lab: &Lab, srtp: bool) -> Self {
            Self { user: "bob", domain: "b.example", pcscf: lab.pcscf_b.local_addr(), hz: BOB_HZ, srtp }
        }
    }

    /// A running baresip: the process, its ctrl_tcp port and its SIP address (UDP and TCP).
    struct Running {
        _peer: Peer,
        ctrl: u16,
        sip: SocketAddr,
    }

    /// Starts baresip as `ua` with SIP trace on (`-s`, into `baresip.log`), its RTP bound to
    /// loopback by the LD_PRELOAD shim, and waits for its registration; `None` when baresip or
    /// cc is missing (skip line printed).
    async fn baresip(dir: &Dir, ua: Ua) -> Option<Running> {
        if !found("baresip") || !found("cc") {
            mediasec_testkit::peer_unavailable("baresip", "needs `baresip` (Debian baresip-core) and a C compiler for the bind shim");
            return None;
        }
        std::fs::create_dir_all(&dir.0).expect("dir");
        let root = mediasec_testkit::repo_root().join("tests/interop/sip");
        let shim = dir.0.join("bind_lo.so");
        let built = Command::new("cc")
            .args(["-shared", "-fPIC", "-o"])
            .arg(&shim)
            .arg(root.join("bind_lo.c"))
            .arg("-ldl")
            .status()
            .expect("cc");
        assert!(built.success(), "bind shim did not build");
        write_wav(&dir.0.join("tone.wav"), ua.hz, 30);
        write_wav(&dir.0.join("alert.wav"), ua.hz, 1);
        // SIP on p (UDP and TCP; baresip also opens TLS on p + 1), ctrl_tcp on p + 2.
        let sip_port = mediasec_testkit::free_ports(3);
        let ctrl_port = sip_port + 2;
        let fill = |text: String| {
            let text = text
                .replace("@SIP_PORT@", &sip_port.to_string())
                .replace("@CTRL_PORT@", &ctrl_port.to_string())
                .replace("@DIR@", &dir.0.to_string_lossy())
                .replace("@USER@", ua.user)
                .replace("@DOMAIN@", ua.domain)
                .replace("@PCSCF_PORT@", &ua.pcscf.port().to_string());
            if ua.srtp { text } else { text.replace(";mediaenc=srtp-mand", "") }
        };
        for f in ["config", "accounts"] {
            let template = std::fs::read_to_string(root.join(format!("baresip.{f}"))).expect("template");
            std::fs::write(dir.0.join(f), fill(template)).expect("write");
        }
        let log = std::fs::File::create(dir.0.join("baresip.log")).expect("log");
        let peer = Peer(
            Command::new("baresip")
                .arg("-s")
                .arg("-f")
                .arg(&dir.0)
                .env("LD_PRELOAD", &shim)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .expect("baresip"),
        );
        let ua_registered = async {
            loop {
                let text = std::fs::read_to_string(dir.0.join("baresip.log")).unwrap_or_default();
                if text.contains("200 OK") {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), ua_registered).await.expect("baresip registered through our P-CSCF");
        Some(Running { _peer: peer, ctrl: ctrl_port, sip: SocketAddr::from(([127, 0, 0, 1], sip_port)) })
    }

    /// e2ae with baresip as the far UE: our UE alice (SDES, `a=3ge2ae:requested`) → P-CSCF a
    /// (IMS-ALG) + our IMS-AGW → S-CSCFs → baresip (plain RTP). alice verifies baresip's tone
    /// arriving as SRTP from the AGW; baresip's decoded dump carries alice's tone, which the
    /// AGW decrypted; the AGW's legs are `srtp` (access) and `plain` (core).
    /// (baresip 1.0 sends neither `Security-Client: …mediasec` nor `a=3ge2ae:requested`; it is
    /// the e2ae UE only when the operator provisions it: `provisioned_baresip_is_the_e2ae_ue`.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn e2ae_call_to_baresip_through_the_agw() {
        let agw = e2ae::agw().await;
        let lab = TwoDomains::start_with_agw(HashMap::new(), None, Some(agw.ng_addr())).await.expect("lab");
        let dir = Dir(std::env::temp_dir().join(format!("mediasec-baresip-e2ae-{}", std::process::id())));
        let Some(_bob) = baresip(&dir, Ua::bob(&lab, false)).await else { return };
        let mut a = ue("sip:alice@a.example", lab.pcscf_a.local_addr(), STRICT, ALICE_HZ, BOB_HZ);
        a.e2ae = true;
        let alice = registered(a).await;
        let id = call(&alice, "sip:bob@b.example").await.expect("baresip answered");
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let q = e2ae::query(agw.ng_addr(), format!("{id};orig")).await;
        alice.hangup(&id).await.expect("BYE");
        let out = alice.report(&id).await.expect("r").expect("call");
        assert!(out.e2ae_applied && out.protection.starts_with("srtp "), "{out:?}");
        assert!(out.media.verified >= 80 && out.media.refused == 0, "baresip's tone verified through the AGW: {out:?}");
        let (access, core) = (e2ae::leg(&q, "A"), e2ae::leg(&q, "B"));
        assert_eq!(access.get("protection").and_then(mediasec_agw::bencode::Value::as_str), Some("srtp"));
        assert_eq!(core.get("protection").and_then(mediasec_agw::bencode::Value::as_str), Some("plain"));
        for l in [access, core] {
            assert!(e2ae::int(l, &["received", "RTP", "packets"]) >= 80, "{l:?}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let dumps = dumps(&dir.0);
        let (tone, frames) = tone_frames(dumps.last().expect("baresip dumped the call"), ALICE_HZ);
        assert!(tone >= 80 && tone * 10 >= frames * 9, "baresip decoded our tone in {tone}/{frames} frames");
    }

    /// The SIP messages of baresip's trace (`-s`) in `baresip.log`, over UDP or TCP:
    /// (sender, receiver, text).
    fn sip_trace(dir: &Path) -> Vec<(String, String, String)> {
        let log = std::fs::read_to_string(dir.join("baresip.log")).expect("log");
        log.split("\u{1b}[36;1m#\n")
            .skip(1)
            .filter_map(|block| {
                let (route, rest) = block.split_once('\n')?;
                let (_transport, route) = route.trim().split_once(' ')?;
                let (from, to) = route.split_once(" -> ")?;
                let message = rest.split("\u{1b}[;m").next()?;
                Some((from.to_owned(), to.to_owned(), message.replace('\r', "")))
            })
            .collect()
    }

    /// The SDES keys (`inline:` values) of an SDP text.
    fn sdes_keys(sdp: &str) -> Vec<String> {
        sdp.lines()
            .filter(|l| l.starts_with("a=crypto:"))
            .filter_map(|l| l.split("inline:").nth(1)?.split(['|', ' ']).next().map(str::to_owned))
            .collect()
    }

    /// The one SDP body baresip (SIP address `sip`) received in a message starting with
    /// `start`, and every key baresip itself sent.
    fn baresip_received(dir: &Path, sip: SocketAddr, start: &str) -> (String, Vec<String>) {
        let trace = sip_trace(dir);
        let to_baresip = |to: &String| to == &sip.to_string();
        let received: Vec<&String> = trace.iter().filter(|(_, to, m)| to_baresip(to) && m.starts_with(start) && m.contains("\nv=0")).map(|(_, _, m)| m).collect();
        let summary: Vec<String> = trace.iter().map(|(from, to, m)| format!("{from} -> {to}: {}", m.lines().next().unwrap_or_default())).collect();
        let [sdp] = received.as_slice() else { panic!("one {start} with SDP to baresip at {sip}: {received:?} in {summary:#?}") };
        let own = trace.iter().filter(|(_, to, _)| !to_baresip(to)).flat_map(|(_, _, m)| sdes_keys(m)).collect();
        ((*sdp).clone(), own)
    }

    /// baresip as the e2ae UE (the interop point of issue 7), by operator provisioning — it
    /// signals nothing (no `Security-Client: …mediasec`, no `a=3ge2ae:requested`): baresip
    /// "alice" (`srtp-mand`, 1000 Hz) registers through P-CSCF a (IMS-ALG with our AGW, alice
    /// provisioned) and dials our UE bob (b.example, plain RTP, 1500 Hz) over ctrl_tcp; then bob
    /// calls baresip. Each way: bob verifies baresip's tone arriving as plain RTP; baresip's
    /// decoded dump carries bob's tone (it decrypted the AGW's SRTP); the SDP baresip received
    /// is `RTP/SAVP` with a key it did not send (the AGW's) and `a=3ge2ae:applied`, while every
    /// SDP crossing the core (so what bob received and sent) is `RTP/AVP` without `a=crypto`
    /// or `a=3ge2ae`. The AGW's `query` of the originating call shows the access leg `srtp` and
    /// the core leg `plain` with ≥ 80 RTP packets each way and no `auth_failed`/`replay` drop;
    /// its `/metrics` count ≥ 160 RTP packets received during the terminating call; BYE
    /// deletes each AGW call.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn provisioned_baresip_is_the_e2ae_ue() {
        use mediasec_agw::bencode::Value;
        let agw = e2ae::agw().await;
        // A relay each way between the S-CSCFs records every SDP crossing the core.
        let (a_to_b, seen_ab, peers_ab, task_ab) = e2ae::core_relay(false).await;
        let (b_to_a, seen_ba, peers_ba, task_ba) = e2ae::core_relay(false).await;
        let e2ae_provisioned_a = mediasec_cscf::alg::Provisioned::parse(["sip:alice@a.example"]).expect("provisioning");
        let config = mediasec_cscf::lab::LabConfig { a_to_b: Some(a_to_b), b_to_a: Some(b_to_a), agw_ng_a: Some(agw.ng_addr()), e2ae_provisioned_a, ..Default::default() };
        let lab = TwoDomains::start_config(config).await.expect("lab");
        let _ = peers_ab.send((lab.scscf_a.local_addr(), lab.scscf_b.local_addr()));
        let _ = peers_ba.send((lab.scscf_b.local_addr(), lab.scscf_a.local_addr()));
        let dir = Dir(std::env::temp_dir().join(format!("mediasec-baresip-provisioned-{}", std::process::id())));
        let alice = Ua { user: "alice", domain: "a.example", pcscf: lab.pcscf_a.local_addr(), hz: ALICE_HZ, srtp: true };
        let Some(running) = baresip(&dir, alice).await else { return };
        let ctrl_port = running.ctrl;
        let bob = registered(ue("sip:bob@b.example", lab.pcscf_b.local_addr(), Security::Off, BOB_HZ, ALICE_HZ)).await;
        let core_sdp_ok = |what: &str, seen: &std::sync::Mutex<Vec<String>>| {
            let seen = seen.lock().expect("log");
            assert!(seen.len() >= 2, "{what}: offer and answer crossed the core: {seen:?}");
            for sdp in seen.iter() {
                assert!(sdp.contains("RTP/AVP") && !sdp.contains("RTP/SAVP") && !sdp.contains("a=crypto") && !sdp.contains("3ge2ae"), "{what}: core SDP {sdp}");
            }
        };
        let dump_has_bob = |what: &str| {
            let dumps = dumps(&dir.0);
            let (tone, frames) = tone_frames(dumps.last().expect("baresip dumped the call"), BOB_HZ);
            assert!(tone >= 80 && tone * 10 >= frames * 9, "{what}: baresip decoded bob's tone in {tone}/{frames} frames");
            dumps.len()
        };

        // Originating: baresip calls bob.
        ctrl(ctrl_port, "dial", "sip:bob@b.example");
        tokio::time::sleep(Duration::from_millis(3000)).await;
        let call_id = only_call(&bob).await.call_id;
        let q = e2ae::query(agw.ng_addr(), format!("{call_id};orig")).await;
        ctrl(ctrl_port, "hangup", "");
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rb = only_call(&bob).await;
        assert_eq!((&rb.state, rb.protection.as_str(), rb.e2ae_applied), (&CallState::Ended, "rtp", false), "{rb:?}");
        assert!(rb.media.verified >= 80 && rb.media.refused == 0, "baresip's tone reached bob as plain RTP: {rb:?}");
        let (access, core) = (e2ae::leg(&q, "A"), e2ae::leg(&q, "B"));
        assert_eq!(access.get("protection").and_then(Value::as_str), Some("srtp"), "{q:?}");
        assert_eq!(core.get("protection").and_then(Value::as_str), Some("plain"), "{q:?}");
        for l in [access, core] {
            assert!(e2ae::int(l, &["received", "RTP", "packets"]) >= 80 && e2ae::int(l, &["sent", "RTP", "packets"]) >= 80, "{l:?}");
            assert_eq!((e2ae::int(l, &["drops", "auth_failed"]), e2ae::int(l, &["drops", "replay"])), (0, 0), "{l:?}");
        }
        let (answer, own) = baresip_received(&dir.0, running.sip, "SIP/2.0 200");
        let agw_port = e2ae::int(access, &["local port"]);
        let keys = sdes_keys(&answer);
        assert!(answer.contains(&format!("m=audio {agw_port} RTP/SAVP")) && answer.contains("a=3ge2ae:applied"), "{answer}");
        assert!(!keys.is_empty() && keys.iter().all(|k| !own.contains(k)), "the AGW's key, not an echo of baresip's: {answer}");
        core_sdp_ok("originating", &seen_ab);
        let first = dump_has_bob("originating");
        assert_eq!(agw.call_count(), 0, "BYE deleted the AGW call");
        assert_eq!(lab.pcscf_a.stats().e2ae_applied, 2, "{:?}", lab.pcscf_a.stats());

        // Terminating: bob calls baresip.
        const RTP_RECEIVED: &str = "mediasec_agw_packets_total{component=\"rtp\",direction=\"received\"}";
        let rtp_before = e2ae::metric(&agw, RTP_RECEIVED).await;
        let id = call(&bob, "sip:alice@a.example").await.expect("baresip answered");
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_eq!(agw.call_count(), 1, "the terminating call runs through the AGW");
        bob.hangup(&id).await.expect("BYE");
        let relayed = e2ae::metric(&agw, RTP_RECEIVED).await - rtp_before;
        assert!(relayed >= 160, "the AGW received ≥ 80 RTP packets on each leg: {relayed}");
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rb = bob.report(&id).await.expect("r").expect("call");
        assert_eq!((rb.protection.as_str(), rb.e2ae_applied), ("rtp", false), "{rb:?}");
        assert!(rb.media.verified >= 80 && rb.media.refused == 0, "{rb:?}");
        let (offer, _) = baresip_received(&dir.0, running.sip, "INVITE");
        assert!(offer.contains("RTP/SAVP") && !sdes_keys(&offer).is_empty() && offer.contains("a=3ge2ae:applied"), "{offer}");
        core_sdp_ok("terminating", &seen_ba);
        assert!(dumps(&dir.0).len() > first, "a second dump");
        dump_has_bob("terminating");
        assert_eq!(agw.call_count(), 0, "BYE deleted the AGW call");
        assert_eq!(lab.pcscf_a.stats().e2ae_applied, 4, "{:?}", lab.pcscf_a.stats());
        task_ab.abort();
        task_ba.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sdes_srtp_calls_with_baresip_both_directions() {
        let lab = lab().await;
        let dir = Dir(std::env::temp_dir().join(format!("mediasec-baresip-{}", std::process::id())));
        let Some(running) = baresip(&dir, Ua::bob(&lab, true)).await else { return };
        let ctrl_port = running.ctrl;

        let alice = registered(ue("sip:alice@a.example", lab.pcscf_a.local_addr(), STRICT, ALICE_HZ, BOB_HZ)).await;
        // Our UE calls baresip.
        let id = call(&alice, "sip:bob@b.example").await.expect("baresip answered");
        tokio::time::sleep(Duration::from_millis(2500)).await;
        alice.hangup(&id).await.expect("BYE");
        let out = alice.report(&id).await.expect("r").expect("call");
        assert!(out.protection.starts_with("srtp "), "{out:?}");
        assert!(out.media.verified >= 80 && out.media.refused == 0, "baresip's tone verified: {out:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let first = dumps(&dir.0);
        let (tone, frames) = tone_frames(first.last().expect("baresip dumped the call"), ALICE_HZ);
        assert!(tone >= 80 && tone * 10 >= frames * 9, "baresip decoded our tone in {tone}/{frames} frames");

        // baresip calls our UE.
        let before = first.len();
        ctrl(ctrl_port, "dial", "sip:alice@a.example");
        tokio::time::sleep(Duration::from_millis(3000)).await;
        ctrl(ctrl_port, "hangup", "");
        tokio::time::sleep(Duration::from_millis(500)).await;
        let reports = alice.reports().await.expect("reports");
        let incoming = reports.iter().find(|r| r.role == mediasec_ua::Role::Callee).expect("baresip's call reached our UE");
        assert_eq!(incoming.state, CallState::Ended, "{incoming:?}");
        assert!(incoming.protection.starts_with("srtp "), "{incoming:?}");
        assert!(incoming.media.verified >= 80 && incoming.media.refused == 0, "{incoming:?}");
        let second = dumps(&dir.0);
        assert!(second.len() > before, "a second dump");
        let (tone, frames) = tone_frames(second.last().expect("dump"), ALICE_HZ);
        assert!(tone >= 80 && tone * 10 >= frames * 9, "baresip decoded our tone in {tone}/{frames} frames");
    }
}

/// SIPp (an independent SIP implementation) drives our P-CSCF with malformed and edge-case
/// SDES offers (`tests/interop/sip/sipp_*`): missing `a=crypto` on RTP/SAVP, a duplicate tag,
/// only an unknown suite, an MKI longer than 128 octets, a key of the wrong length — each
/// answered 488 with a Warning (checked by SIPp), logged, nothing forwarded; an unpadded GCM
/// key, an unknown suite beside a known one, lifetimes and MKIs — passed and answered 200 by
/// our UE with the expected suite, then ACK and BYE along the recorded route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sipp_edge_case_sdes_offers_through_the_pcscf() {
    let found = std::process::Command::new("sh").arg("-c").arg("command -v sipp").stdout(std::process::Stdio::null()).status();
    if !found.is_ok_and(|s| s.success()) {
        mediasec_testkit::peer_unavailable("sipp", "needs `sipp` (Debian sip-tester)");
        return;
    }
    let lab = lab().await;
    let bob = registered(ue("sip:bob@b.example", lab.pcscf_b.local_addr(), STRICT, BOB_HZ, ALICE_HZ)).await;
    let dir = mediasec_testkit::repo_root().join("tests/interop/sip");
    let errors = std::env::temp_dir().join(format!("mediasec-sipp-{}", std::process::id()));
    let run = |scenario: &str, csv: &str, calls: u32| {
        // SIPp's SIP port, then its media port pair (RTP, RTCP) two above it.
        let sip = mediasec_testkit::free_ports(4);
        let mut cmd = std::process::Command::new("timeout");
        cmd.arg("60").arg("sipp").arg(lab.pcscf_a.local_addr().to_string());
        cmd.arg("-sf").arg(dir.join(scenario)).arg("-inf").arg(dir.join(csv));
        cmd.args(["-m", &calls.to_string(), "-l", "1", "-i", "127.0.0.1", "-p", &sip.to_string(), "-mp", &(sip + 2).to_string()]);
        cmd.args(["-timeout", "40", "-timeout_error", "-trace_err", "-error_file"]).arg(errors.with_extension(format!("{scenario}.log")));
        cmd.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
        tokio::task::spawn_blocking(move || cmd.status().expect("sipp"))
    };
    let refused = run("sipp_uac_refused.xml", "sipp_refused.csv", 5).await.expect("join");
    let log = |s: &str| std::fs::read_to_string(errors.with_extension(format!("{s}.log"))).unwrap_or_default();
    assert!(refused.success(), "SIPp: every offer answered 488 with a Warning; {}", log("sipp_uac_refused.xml"));
    assert_eq!(lab.pcscf_a.stats().sdes_refused, 5);
    let accepted = run("sipp_uac_accepted.xml", "sipp_accepted.csv", 3).await.expect("join");
    assert!(accepted.success(), "SIPp: every offer answered 200; {}", log("sipp_uac_accepted.xml"));
    let calls = bob.reports().await.expect("reports");
    let suites: Vec<&str> = calls.iter().map(|r| r.protection.as_str()).collect();
    assert_eq!(suites, ["srtp AEAD_AES_128_GCM", "srtp AES_CM_128_HMAC_SHA1_80", "srtp AES_CM_128_HMAC_SHA1_80"]);
    assert!(calls.iter().all(|r| r.state == CallState::Ended), "{calls:?}");
    for s in ["sipp_uac_refused.xml", "sipp_uac_accepted.xml"] {
        let _ = std::fs::remove_file(errors.with_extension(format!("{s}.log")));
    }
}

/// MIKEY-TICKET e2e calls (TS 33.328 §7.3, Annex B) through the proxies: a real BSF and KMS
/// (mediasec-kms lab: embedded stores, Ub and Ua over HTTP), UEs bootstrapped over Ub.
mod mikey_ticket {
    use super::*;
    use mediasec_kms::lab::{DomainSpec, Lab as KmsLab};
    use mediasec_ua::ticket::KmsAccess;

    const POLICY: &str = "[domain.\"a.example\"]\nmay_call = [\"?@a.example\"]\nforking = true\n";

    /// A BSF and the KMS of a.example (embedded stores under `dir`) with alice and bob.
    async fn a_example_kms(dir: &Dir) -> KmsLab {
        KmsLab::start_local(&dir.0, &[DomainSpec { domain: "a.example", policy: POLICY }], &["alice@a.example", "bob@a.example"])
            .await
            .expect("KMS lab")
    }

    async fn kms_ue(kms: &KmsLab, uid: &str, config: UeConfig) -> Ue {
        let (ue, client) = kms.ue(uid).await.expect("GBA bootstrap");
        let ue = Ue::start_with_kms(config, Some(KmsAccess { ue, client, high_security: None })).await.expect("UE");
        let r = ue.register(600).await.expect("REGISTER");
        assert_eq!(r.status, 200);
        ue
    }

    /// Same-domain call with a forked ticket and two registered contacts of bob: each fork
    /// resolves the ticket to its own key (key forking), the answering fork's media is
    /// verified both ways, and the fork that did not answer holds a different key — it
    /// cannot decrypt the call (contrast with SDES, where every fork holds the offer key).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn same_domain_call_with_key_forking() {
        let dir = Dir(std::env::temp_dir().join(format!("mediasec-sip-kms-{}", std::process::id())));
        let kms = a_example_kms(&dir).await;
        let lab = lab().await;
        let p = lab.pcscf_a.local_addr();
        let alice = kms_ue(&kms, "alice@a.example", ue("sip:alice@a.example", p, Security::MikeyTicket, ALICE_HZ, BOB_HZ)).await;
        // bob1 rings 1 s before answering: bob2's Ticket Resolve, which runs off its UE task
        // (docs/sip.md §2) and is abandoned if the CANCEL that bob1's answer causes comes
        // first, has long completed by then on a loaded machine too (a debug-build resolve
        // on loopback takes milliseconds; CI runs hundreds of tests at once).
        let mut first = ue("sip:bob@a.example", p, Security::MikeyTicket, BOB_HZ, ALICE_HZ);
        first.answering.delay = Duration::from_millis(1000);
        let bob1 = kms_ue(&kms, "bob@a.example", first).await;
        let mut slow = ue("sip:bob@a.example", p, Security::MikeyTicket, BOB_HZ, ALICE_HZ);
        slow.answering.delay = Duration::from_millis(3000);
        let bob2 = kms_ue(&kms, "bob@a.example", slow).await;
        let id = call(&alice, "sip:bob@a.example").await.expect("established");
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let a = alice.report(&id).await.expect("r").expect("call");
        let (b1, b2) = (only_call(&bob1).await, only_call(&bob2).await);
        assert_media(&a, &b1, "srtp AES_CM_128_HMAC_SHA1_80");
        assert_eq!(a.peer_key, b1.own_key);
        assert_eq!(a.own_key, b1.peer_key);
        assert!(matches!(b2.state, CallState::Failed(487, _) | CallState::Ended), "{b2:?}");
        assert!(b2.peer_key.is_some(), "the other fork resolved its own key: {b2:?}");
        assert_ne!(b2.peer_key, a.own_key, "key forking: the other fork cannot decrypt alice's media");
        // A callee that only does SDES refuses a MIKEY-TICKET offer.
        let sdes_only = registered(ue("sip:carol@a.example", p, STRICT, BOB_HZ, ALICE_HZ)).await;
        let err = call(&alice, "sip:carol@a.example").await.expect_err("488");
        assert!(matches!(err, mediasec_ua::Error::CallFailed { code: 488, .. }), "{err}");
        drop(sdes_only);
    }

    /// Ticket reuse (TS 33.328 Annex B.1, RFC 6043 J flag): with a policy that grants
    /// `reusable` and UEs that ask for it, alice's second call to bob is keyed from her cached
    /// ticket and bob's cached resolve — the KMS counts no Ticket Request or Resolve for it —
    /// and still gets keys of its own (fresh RANDRi), media verified both ways.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reusable_ticket_keys_a_second_call_without_the_kms() {
        let dir = Dir(std::env::temp_dir().join(format!("mediasec-sip-kms-reuse-{}", std::process::id())));
        let policy = format!("{POLICY}reusable = true\n");
        let kms = KmsLab::start_local(&dir.0, &[DomainSpec { domain: "a.example", policy: &policy }], &["alice@a.example", "bob@a.example"]).await.expect("KMS lab");
        let lab = lab().await;
        let p = lab.pcscf_a.local_addr();
        let reusing = |uid: &'static str, config: UeConfig| {
            let kms = &kms;
            async move {
                let (mut ue, client) = kms.ue(uid).await.expect("GBA bootstrap");
                ue.set_ticket_reuse(true);
                let ue = Ue::start_with_kms(config, Some(KmsAccess { ue, client, high_security: None })).await.expect("UE");
                assert_eq!(ue.register(600).await.expect("REGISTER").status, 200);
                ue
            }
        };
        let alice = reusing("alice@a.example", ue("sip:alice@a.example", p, Security::MikeyTicket, ALICE_HZ, BOB_HZ)).await;
        let bob = reusing("bob@a.example", ue("sip:bob@a.example", p, Security::MikeyTicket, BOB_HZ, ALICE_HZ)).await;
        let url = kms.domain("a.example").expect("domain").url.clone();
        let mut keys = Vec::new();
        let mut kms_requests = Vec::new();
        for round in 0..2 {
            let id = call(&alice, "sip:bob@a.example").await.expect("established");
            tokio::time::sleep(Duration::from_millis(800)).await;
            let a = alice.report(&id).await.expect("r").expect("call");
            let b = bob.reports().await.expect("reports").pop().expect("bob's call");
            assert_media(&a, &b, "srtp AES_CM_128_HMAC_SHA1_80");
            assert_eq!(a.peer_key, b.own_key, "round {round}");
            keys.push(a.own_key.clone());
            alice.hangup(&id).await.expect("BYE reaches bob");
            kms_requests.push(ua_requests(&url).await);
        }
        assert_eq!(kms_requests, [2, 2], "first call: one Ticket Request and one Ticket Resolve; second call: no KMS contact");
        assert!(matches!(&keys[..], [first, second] if first != second), "each call has its own keys: {keys:?}");
    }

    /// A MIKEY-TICKET call alice → bob placed without an offer ([`Ue::call_without_offer`],
    /// RFC 3261 §13.2.1), bob answering as `answering` says. Whoever offers is the MIKEY
    /// Initiator (RFC 4567 §3), so the roles swap: bob asks his KMS for a ticket for alice and
    /// offers TRANSFER_INIT (in his 200, or his reliable 183 with early media), alice resolves
    /// it and answers TRANSFER_RESP (in the ACK, or the PRACK). Checked here: media verified
    /// both ways under keys both ends agree on (each one's send key the other's receive key),
    /// each side authenticated as the other's KMS UID, and the KMS saw one Ticket Request and
    /// one Resolve. Returns the labs (kept running), alice, bob, the Call-ID and the reports.
    async fn offerless_ticket_call(dir: &Dir, answering: Answering) -> (KmsLab, Lab, Ue, Ue, String, CallReport, CallReport) {
        let kms = a_example_kms(dir).await;
        let lab = lab().await;
        let p = lab.pcscf_a.local_addr();
        let alice = kms_ue(&kms, "alice@a.example", ue("sip:alice@a.example", p, Security::MikeyTicket, ALICE_HZ, BOB_HZ)).await;
        let mut b = ue("sip:bob@a.example", p, Security::MikeyTicket, BOB_HZ, ALICE_HZ);
        b.answering = answering;
        let bob = kms_ue(&kms, "bob@a.example", b).await;
        let id = tokio::time::timeout(Duration::from_secs(10), alice.call_without_offer("sip:bob@a.example")).await.expect("in time").expect("established");
        tokio::time::sleep(Duration::from_millis(800)).await;
        let a = alice.report(&id).await.expect("r").expect("call");
        let b = only_call(&bob).await;
        assert_media(&a, &b, "srtp AES_CM_128_HMAC_SHA1_80");
        assert_eq!((a.own_key.as_ref(), a.peer_key.as_ref()), (b.peer_key.as_ref(), b.own_key.as_ref()), "keys crossed");
        assert_eq!((a.authenticated_peer.as_deref(), b.authenticated_peer.as_deref()), (Some("bob@a.example"), Some("alice@a.example")), "the ticket's initiator, the TRANSFER_RESP's responder");
        let init = b.offer_mikey.clone().expect("bob's offer carried TRANSFER_INIT");
        assert_eq!(a.offer_mikey.as_ref(), Some(&init), "alice answered that offer");
        assert_eq!(mediasec_mikey_data_type(&init), 14, "TRANSFER_INIT (RFC 6043)");
        let url = kms.domain("a.example").expect("domain").url.clone();
        assert_eq!(ua_requests(&url).await, 2, "bob's Ticket Request and alice's Resolve");
        (kms, lab, alice, bob, id, a, b)
    }

    /// Delayed offer without 100rel under MIKEY-TICKET (see [`offerless_ticket_call`]): bob's
    /// TRANSFER_INIT in the 200, alice's TRANSFER_RESP in the ACK, media from then on (none
    /// early). Then offerless re-INVITEs both ways re-key the call, each with a fresh Ticket
    /// Transfer initiated by the side that receives the re-INVITE (RFC 3261 §13.2.1: its
    /// offer in the 2xx, the answer in the ACK): alice's makes bob ask for a new ticket for
    /// alice, bob's makes alice ask for one for bob; new keys both ways each time, still
    /// crossed, media continuing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn offerless_call_and_offerless_reinvites_keyed_by_the_callee() {
        let dir = Dir(std::env::temp_dir().join(format!("mediasec-sip-kms-late-{}", std::process::id())));
        let answering = Answering { auto: true, delay: Duration::from_millis(200), early_media: false };
        let (kms, _lab, alice, bob, id, a, b) = offerless_ticket_call(&dir, answering).await;
        assert!(a.early_verified == 0 && b.early_verified == 0, "no early media: {a:?} {b:?}");
        let url = kms.domain("a.example").expect("domain").url.clone();
        let mut before = (a, b);
        for (round, (reinviting, offering)) in [(&alice, "bob"), (&bob, "alice")].into_iter().enumerate() {
            tokio::time::timeout(Duration::from_secs(10), reinviting.reinvite_without_offer(&id)).await.expect("in time").expect("offerless re-INVITE");
            tokio::time::sleep(Duration::from_millis(800)).await;
            let (a, b) = (alice.report(&id).await.expect("r").expect("call"), only_call(&bob).await);
            let rekeys = round as u32 + 1;
            assert_eq!((a.rekeys, b.rekeys), (rekeys, rekeys), "{offering} offered: {a:?} {b:?}");
            assert!(a.own_key != before.0.own_key && a.peer_key != before.0.peer_key, "new keys both ways: {:?} -> {a:?}", before.0);
            assert_eq!((a.own_key.as_ref(), a.peer_key.as_ref()), (b.peer_key.as_ref(), b.own_key.as_ref()), "keys crossed");
            assert!(a.media.verified >= before.0.media.verified + 25 && b.media.verified >= before.1.media.verified + 25, "media continued: {a:?} {b:?}");
            // The re-INVITE's sender sends with its new key once it has the 2xx, the offerer
            // decrypts it once the ACK's answer is applied (and the other way round).
            assert!(a.media.refused <= REKEY_RACE && b.media.refused <= REKEY_RACE, "{a:?} {b:?}");
            assert_eq!(ua_requests(&url).await, 2 * (rekeys as u64 + 1), "one Ticket Request and one Resolve per exchange");
            before = (a, b);
        }
        alice.hangup(&id).await.expect("BYE reaches bob");
    }

    /// Delayed offer with 100rel under MIKEY-TICKET (RFC 3262 §5, see
    /// [`offerless_ticket_call`]): bob, answering with early media, puts TRANSFER_INIT in the
    /// reliable 183; alice's TRANSFER_RESP goes in the PRACK; media verified before the 200
    /// (which carries no SDP) and after it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn offerless_call_keyed_in_the_reliable_183_and_the_prack() {
        let dir = Dir(std::env::temp_dir().join(format!("mediasec-sip-kms-late-rel-{}", std::process::id())));
        let answering = Answering { auto: true, delay: Duration::from_millis(600), early_media: true };
        let (_kms, _lab, alice, _bob, id, a, b) = offerless_ticket_call(&dir, answering).await;
        for r in [&a, &b] {
            assert!(r.early_verified >= 10 && r.media.verified >= r.early_verified + 20, "early media, then more: {r:?}");
        }
        alice.hangup(&id).await.expect("BYE reaches bob");
    }

    /// Ticket Requests and Resolves the KMS at `url` has counted (its Prometheus metrics).
    async fn ua_requests(url: &str) -> u64 {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let authority = url.trim_start_matches("http://").trim_end_matches('/');
        let mut s = tokio::net::TcpStream::connect(authority).await.expect("KMS metrics");
        s.write_all(format!("GET /metrics HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n").as_bytes()).await.expect("GET");
        let mut text = String::new();
        s.read_to_string(&mut text).await.expect("metrics");
        text.lines()
            .filter(|l| l.starts_with("mediasec_kms_requests_total{type=\"ticketrequest\"") || l.starts_with("mediasec_kms_requests_total{type=\"ticketresolve\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }

    /// Caller anonymity: alice calls with `From: anonymous` and `Privacy: id`; bob sees only
    /// "Anonymous", yet the call is keyed by a ticket the KMS issued to alice's authenticated
    /// identity (her Ticket Request is MACed with her GBA key) — the KMS still knows her.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn anonymous_caller_still_known_to_the_kms() {
        let dir = Dir(std::env::temp_dir().join(format!("mediasec-sip-kms-anon-{}", std::process::id())));
        let kms = a_example_kms(&dir).await;
        let lab = lab().await;
        let p = lab.pcscf_a.local_addr();
        let mut hidden = ue("sip:alice@a.example", p, Security::MikeyTicket, ALICE_HZ, BOB_HZ);
        hidden.anonymous = true;
        let alice = kms_ue(&kms, "alice@a.example", hidden).await;
        let bob = kms_ue(&kms, "bob@a.example", ue("sip:bob@a.example", p, Security::MikeyTicket, BOB_HZ, ALICE_HZ)).await;
        let id = call(&alice, "sip:bob@a.example").await.expect("established");
        tokio::time::sleep(Duration::from_millis(800)).await;
        let a = alice.report(&id).await.expect("r").expect("call");
        let b = only_call(&bob).await;
        assert_media(&a, &b, "srtp AES_CM_128_HMAC_SHA1_80");
        assert!(b.peer_identity.contains("anonymous@anonymous.invalid") && !b.peer_identity.contains("alice"), "{}", b.peer_identity);
        // The ticket in TRANSFER_INIT names its initiator all the same (RFC 6043 has no
        // initiator privacy); the report says so, and the caller knows who answered.
        assert_eq!(b.authenticated_peer.as_deref(), Some("alice@a.example"));
        assert_eq!(a.authenticated_peer.as_deref(), Some("bob@a.example"));
        alice.hangup(&id).await.expect("BYE reaches bob");
    }

    /// Cross-domain call (TS 33.328 Annex B.2.3): alice@a.example calls bob@b.example through
    /// both domains' P-CSCF and S-CSCF; bob resolves the ticket at KMS b, which resolves it
    /// at KMS a over Zk (mutual TLS); media verified both ways.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cross_domain_call_resolved_over_zk() {
        let dir = Dir(std::env::temp_dir().join(format!("mediasec-sip-kms-zk-{}", std::process::id())));
        let policy_a = "[domain.\"a.example\"]\nmay_call = [\"?@b.example\"]\nforking = true\n";
        let policy_b = "[domain.\"b.example\"]\nmay_call = [\"?@a.example\"]\n";
        let domains = [DomainSpec { domain: "a.example", policy: policy_a }, DomainSpec { domain: "b.example", policy: policy_b }];
        let kms = KmsLab::start(&dir.0, &domains, &["alice@a.example", "bob@b.example"], Some(Duration::from_secs(2))).await.expect("KMS lab with Zk");
        let lab = lab().await;
        let alice = kms_ue(&kms, "alice@a.example", ue("sip:alice@a.example", lab.pcscf_a.local_addr(), Security::MikeyTicket, ALICE_HZ, BOB_HZ)).await;
        let bob = kms_ue(&kms, "bob@b.example", ue("sip:bob@b.example", lab.pcscf_b.local_addr(), Security::MikeyTicket, BOB_HZ, ALICE_HZ)).await;
        let id = call(&alice, "sip:bob@b.example").await.expect("established");
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let a = alice.report(&id).await.expect("r").expect("call");
        let b = only_call(&bob).await;
        assert_media(&a, &b, "srtp AES_CM_128_HMAC_SHA1_80");
        assert_eq!((a.peer_key.as_ref(), a.own_key.as_ref()), (b.own_key.as_ref(), b.peer_key.as_ref()));
        // Each side knows whom the keys authenticate: the KMS UIDs.
        assert_eq!((a.authenticated_peer.as_deref(), b.authenticated_peer.as_deref()), (Some("bob@b.example"), Some("alice@a.example")));
    }

    /// KMS work off the UE task (docs/sip.md §2): a Ua relay in front of a KMS that holds
    /// every request until the test releases it. Each HTTP/1.1 request (head, then the
    /// `Content-Length` body, as our client and KMS send them) is read whole and announced on
    /// `arrivals`; released, it goes to the KMS on a connection of its own and the KMS's
    /// response back to the UE's connection.
    struct Relay {
        addr: SocketAddr,
        arrivals: tokio::sync::mpsc::UnboundedReceiver<Held>,
    }

    /// A request the relay holds: its request line, the release, and a signal once the KMS's
    /// response was written back (or found the UE's connection gone).
    struct Held {
        line: String,
        release: tokio::sync::oneshot::Sender<()>,
        relayed: tokio::sync::oneshot::Receiver<()>,
    }

    impl Relay {
        async fn start(kms_url: &str) -> Self {
            let upstream = kms_url.trim_start_matches("http://").trim_end_matches('/').to_owned();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("addr");
            let (tx, arrivals) = tokio::sync::mpsc::unbounded_channel();
            tokio::spawn(async move {
                while let Ok((mut ue, _)) = listener.accept().await {
                    let (tx, upstream) = (tx.clone(), upstream.clone());
                    tokio::spawn(async move {
                        use tokio::io::AsyncWriteExt as _;
                        let mut buf = Vec::new();
                        while let Some(request) = http_message(&mut ue, &mut buf).await {
                            let line = String::from_utf8_lossy(&request).lines().next().unwrap_or_default().to_owned();
                            let (release, released) = tokio::sync::oneshot::channel();
                            let (done, relayed) = tokio::sync::oneshot::channel();
                            if tx.send(Held { line, release, relayed }).is_err() || released.await.is_err() {
                                return;
                            }
                            let Ok(mut kms) = tokio::net::TcpStream::connect(&upstream).await else { return };
                            if kms.write_all(&request).await.is_err() {
                                return;
                            }
                            let Some(response) = http_message(&mut kms, &mut Vec::new()).await else { return };
                            let written = ue.write_all(&response).await;
                            let _ = done.send(());
                            if written.is_err() {
                                return;
                            }
                        }
                    });
                }
            });
            Self { addr, arrivals }
        }

        /// The next request the relay holds, which must be of `requesttype`.
        async fn next(&mut self, requesttype: &str) -> Held {
            let held = tokio::time::timeout(Duration::from_secs(10), self.arrivals.recv()).await.expect("a KMS request in time").expect("relay");
            assert!(held.line.starts_with(&format!("POST /keymanagement?requesttype={requesttype} ")), "{}", held.line);
            held
        }

        /// From now on every request goes through at once.
        fn release_all(mut self) {
            tokio::spawn(async move {
                while let Some(held) = self.arrivals.recv().await {
                    let _ = held.release.send(());
                }
            });
        }
    }

    /// One HTTP/1.1 message from `stream`; `buf` keeps what was read past it. `None` at EOF.
    async fn http_message(stream: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
        use tokio::io::AsyncReadExt as _;
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(buf.get(..end)?).to_ascii_lowercase();
                let length = head.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse::<usize>().ok()).unwrap_or(0);
                let total = end + 4 + length;
                if buf.len() >= total {
                    let rest = buf.split_off(total);
                    return Some(std::mem::replace(buf, rest));
                }
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(chunk.get(..n)?);
        }
    }

    /// A registered MIKEY-TICKET UE (GBA-bootstrapped with `kms`) that reaches its KMS through
    /// the relay at `relay`.
    async fn kms_ue_via(kms: &KmsLab, uid: &str, relay: SocketAddr, config: UeConfig) -> Ue {
        let (ue, _) = kms.ue(uid).await.expect("GBA bootstrap");
        let client = mediasec_kms::client::KmsClient::new(mediasec_bsf::client::Endpoint::http(&format!("http://{relay}")).expect("endpoint"));
        let ue = Ue::start_with_kms(config, Some(KmsAccess { ue, client, high_security: None })).await.expect("UE");
        assert_eq!(ue.register(600).await.expect("REGISTER").status, 200);
        ue
    }

    /// A KMS lab of a.example with alice, bob and carol, and a relay in front of it.
    async fn held_kms(dir: &Dir) -> (KmsLab, Relay) {
        let kms = KmsLab::start_local(&dir.0, &[DomainSpec { domain: "a.example", policy: POLICY }], &["alice@a.example", "bob@a.example", "carol@a.example"]).await.expect("KMS lab");
        let url = kms.domain("a.example").expect("domain").url.clone();
        let relay = Relay::start(&url).await;
        (kms, relay)
    }

    /// One call's KMS exchange does not stall the UE's other calls (docs/sip.md §2). Alice
    /// reaches her KMS through a relay, which holds her Ticket Request for call 1 (to bob).
    /// Meanwhile carol calls alice: alice's Ticket Resolve of carol's ticket is let through,
    /// she answers, media flows both ways, and carol's BYE is answered — while call 1 still
    /// waits (bob has seen no INVITE, alice has no such call yet). Released, call 1 goes out
    /// and completes, media verified both ways, bob authenticated.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_held_ticket_request_does_not_stall_the_ues_other_calls() {
        let dir = Dir(std::env::temp_dir().join(format!("mediasec-sip-kms-held-{}", std::process::id())));
        let (kms, mut relay) = held_kms(&dir).await;
        let lab = lab().await;
        let p = lab.pcscf_a.local_addr();
        let alice = std::sync::Arc::new(kms_ue_via(&kms, "alice@a.example", relay.addr, ue("sip:alice@a.example", p, Security::MikeyTicket, ALICE_HZ, BOB_HZ)).await);
        let bob = kms_ue(&kms, "bob@a.example", ue("sip:bob@a.example", p, Security::MikeyTicket, BOB_HZ, ALICE_HZ)).await;
        let carol = kms_ue(&kms, "carol@a.example", ue("sip:carol@a.example", p, Security::MikeyTicket, BOB_HZ, ALICE_HZ)).await;
        let calling = {
            let alice = std::sync::Arc::clone(&alice);
            tokio::spawn(async move { alice.call("sip:bob@a.example").await })
        };
        let request = relay.next("ticketrequest").await;
        let (answered, ()) = tokio::join!(call(&carol, "sip:alice@a.example"), async { relay.next("ticketresolve").await.release.send(()).expect("relay") });
        let id2 = answered.expect("call 2 established while call 1's Ticket Request is held");
        tokio::time::sleep(Duration::from_millis(800)).await;
        let (c, a2) = (carol.report(&id2).await.expect("r").expect("call"), alice.report(&id2).await.expect("r").expect("call"));
        assert_media(&c, &a2, "srtp AES_CM_128_HMAC_SHA1_80");
        assert_eq!((c.authenticated_peer.as_deref(), a2.authenticated_peer.as_deref()), (Some("alice@a.example"), Some("carol@a.example")));
        carol.hangup(&id2).await.expect("alice answers carol's BYE");
        assert_eq!(alice.report(&id2).await.expect("r").expect("call").state, CallState::Ended);
        assert!(!calling.is_finished() && bob.reports().await.expect("reports").is_empty(), "call 1 still waits for its ticket: no INVITE to bob");
        assert_eq!(alice.reports().await.expect("reports").len(), 1, "alice has call 2 only");
        request.release.send(()).expect("relay");
        let id1 = tokio::time::timeout(Duration::from_secs(10), calling).await.expect("in time").expect("task").expect("call 1 established");
        tokio::time::sleep(Duration::from_millis(800)).await;
        let (a1, b1) = (alice.report(&id1).await.expect("r").expect("call"), only_call(&bob).await);
        assert_media(&a1, &b1, "srtp AES_CM_128_HMAC_SHA1_80");
        assert_eq!((a1.peer_key.as_ref(), a1.own_key.as_ref()), (b1.own_key.as_ref(), b1.peer_key.as_ref()));
        assert_eq!(a1.authenticated_peer.as_deref(), Some("bob@a.example"));
        alice.hangup(&id1).await.expect("BYE reaches bob");
    }

    /// API hangup while the call's KMS work is in flight (docs/sip.md §2): alice re-keys an
    /// established call by re-INVITE and hangs up while the relay holds her Ticket Request for
    /// the new offer. The re-INVITE request fails (487) as the KMS work is abandoned, the BYE
    /// is answered; released afterwards, the KMS's answer changes nothing: bob never saw a
    /// re-INVITE (his side ended, never re-keyed), and alice goes on — her next call to bob
    /// completes with media verified.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_call_hung_up_while_its_ticket_request_is_held_sends_nothing_more() {
        let dir = Dir(std::env::temp_dir().join(format!("mediasec-sip-kms-hangup-{}", std::process::id())));
        let (kms, mut relay) = held_kms(&dir).await;
        let lab = lab().await;
        let p = lab.pcscf_a.local_addr();
        let alice = std::sync::Arc::new(kms_ue_via(&kms, "alice@a.example", relay.addr, ue("sip:alice@a.example", p, Security::MikeyTicket, ALICE_HZ, BOB_HZ)).await);
        let bob = kms_ue(&kms, "bob@a.example", ue("sip:bob@a.example", p, Security::MikeyTicket, BOB_HZ, ALICE_HZ)).await;
        let (placed, ()) = tokio::join!(call(&alice, "sip:bob@a.example"), async { relay.next("ticketrequest").await.release.send(()).expect("relay") });
        let id = placed.expect("established");
        let rekeying = {
            let (alice, id) = (std::sync::Arc::clone(&alice), id.clone());
            tokio::spawn(async move { alice.reinvite(&id).await })
        };
        let request = relay.next("ticketrequest").await;
        alice.hangup(&id).await.expect("bob answers the BYE");
        let rekeyed = tokio::time::timeout(Duration::from_secs(5), rekeying).await.expect("in time").expect("task");
        assert!(matches!(rekeyed, Err(mediasec_ua::Error::CallFailed { code: 487, .. })), "{rekeyed:?}");
        request.release.send(()).expect("relay");
        tokio::time::timeout(Duration::from_secs(10), request.relayed).await.expect("in time").expect("relay");
        let (placed, ()) = tokio::join!(call(&alice, "sip:bob@a.example"), async { relay.next("ticketrequest").await.release.send(()).expect("relay") });
        let id2 = placed.expect("alice's next call established");
        tokio::time::sleep(Duration::from_millis(800)).await;
        let (a2, b2) = (alice.report(&id2).await.expect("r").expect("call"), bob.report(&id2).await.expect("r").expect("call"));
        assert_media(&a2, &b2, "srtp AES_CM_128_HMAC_SHA1_80");
        alice.hangup(&id2).await.expect("BYE reaches bob");
        for (who, r) in [("alice", alice.report(&id).await.expect("r").expect("call")), ("bob", bob.report(&id).await.expect("r").expect("call"))] {
            assert_eq!((&r.state, r.rekeys), (&CallState::Ended, 0), "{who}: {r:?}");
        }
    }

    /// A fork CANCELled while its KMS work is in flight (docs/sip.md §2): bob has two
    /// registered UEs; bob2 reaches his KMS through the relay, which holds his Ticket Resolve
    /// of alice's ticket. bob1 answers, the S-CSCF CANCELs bob2's branch (RFC 3261 §16.7 step
    /// 10): bob2 answers 487 and abandons the resolve. Released afterwards, nothing more goes
    /// out for that call (alice ends it with no second 2xx), and bob2 still works: with bob1
    /// gone, alice's next call is answered by bob2, media verified.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fork_cancelled_while_its_ticket_resolve_is_held_sends_nothing_more() {
        let dir = Dir(std::env::temp_dir().join(format!("mediasec-sip-kms-cancel-{}", std::process::id())));
        let (kms, mut relay) = held_kms(&dir).await;
        let lab = lab().await;
        let p = lab.pcscf_a.local_addr();
        let alice = std::sync::Arc::new(kms_ue(&kms, "alice@a.example", ue("sip:alice@a.example", p, Security::MikeyTicket, ALICE_HZ, BOB_HZ)).await);
        let bob1 = kms_ue(&kms, "bob@a.example", ue("sip:bob@a.example", p, Security::MikeyTicket, BOB_HZ, ALICE_HZ)).await;
        let bob2 = kms_ue_via(&kms, "bob@a.example", relay.addr, ue("sip:bob@a.example", p, Security::MikeyTicket, BOB_HZ, ALICE_HZ)).await;
        let calling = {
            let alice = std::sync::Arc::clone(&alice);
            tokio::spawn(async move { alice.call("sip:bob@a.example").await })
        };
        let resolve = relay.next("ticketresolve").await;
        let id = tokio::time::timeout(Duration::from_secs(10), calling).await.expect("in time").expect("task").expect("bob1 answers");
        let cancelled = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if let Some(r) = bob2.reports().await.expect("reports").pop().filter(|r| r.state != CallState::Setup) {
                    return r;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("bob2's branch CANCELled");
        assert!(matches!(cancelled.state, CallState::Failed(487, _)), "{cancelled:?}");
        resolve.release.send(()).expect("relay");
        tokio::time::timeout(Duration::from_secs(10), resolve.relayed).await.expect("in time").expect("relay");
        relay.release_all();
        drop(bob1);
        let id2 = call(&alice, "sip:bob@a.example").await.expect("bob2 answers the next call");
        tokio::time::sleep(Duration::from_millis(800)).await;
        let a2 = alice.report(&id2).await.expect("r").expect("call");
        let b2 = bob2.report(&id2).await.expect("r").expect("bob2's call");
        assert_media(&a2, &b2, "srtp AES_CM_128_HMAC_SHA1_80");
        alice.hangup(&id2).await.expect("BYE reaches bob2");
        let a1 = alice.report(&id).await.expect("r").expect("call");
        assert_eq!(a1.extra_forks_ended, 0, "no 2xx from bob2 for the cancelled branch: {a1:?}");
        let b1 = bob2.report(&id).await.expect("r").expect("bob2's first call");
        assert!(matches!(b1.state, CallState::Failed(487, _)) && b1.peer_key.is_none(), "{b1:?}");
    }
}

/// The high-security mode (docs/high-security.md: ECCSI-signed MIKEY-DH) through the proxies:
/// keys from real KMSs (`keyprovision` over Ua, GBA-authenticated), one KMS per domain with
/// its own KSAK/KPAK.
mod high_security {
    use super::*;
    use mediasec_kms::lab::{DomainSpec, Lab as KmsLab};
    use mediasec_ua::high_security::HighSecurity;
    use mediasec_ua::ticket::KmsAccess;

    const HS: Security = Security::HighSecurity;

    /// KMSs of a.example and b.example; every user may have high-security keys.
    async fn kmss(dir: &Dir) -> KmsLab {
        let a = "[domain.\"a.example\"]\nhigh_security = true\nmikey_sakke = true\n";
        let b = "[domain.\"b.example\"]\nhigh_security = true\n";
        let domains = [DomainSpec { domain: "a.example", policy: a }, DomainSpec { domain: "b.example", policy: b }];
        KmsLab::start_local(&dir.0, &domains, &["alice@a.example", "bob@a.example", "carol@b.example", "dave@b.example", "erin@a.example", "frank@a.example"]).await.expect("KMS lab")
    }

    /// A registered UE whose ECCSI key comes from its KMS; it trusts that KMS's KPAK and, when
    /// `trust_other`, the other domain's.
    async fn hs_ue(kms: &KmsLab, uid: &str, config: UeConfig, trust_other: bool) -> Ue {
        let (ue, client) = kms.ue(uid).await.expect("GBA bootstrap");
        let mut access = KmsAccess { ue, client, high_security: None };
        let others = kms.domains.iter().filter(|d| trust_other && !uid.ends_with(&d.domain)).filter_map(|d| d.service.kpak()).collect();
        let uri = format!("sip:{uid}");
        let keys = match config.security {
            Security::MikeySakke => HighSecurity::provision_sakke(&access, &uri, others).await,
            _ => HighSecurity::provision(&access, &uri, others).await,
        };
        access.high_security = Some(keys.expect("keys from the KMS"));
        let ue = Ue::start_with_kms(config, Some(access)).await.expect("UE");
        assert_eq!(ue.register(600).await.expect("REGISTER").status, 200);
        ue
    }

    /// A same-domain high-security call: media verified both ways under keys both ends derived
    /// from the DH exchange (each side's send key is the other's receive key); and the KMS
    /// that issued both signing keys cannot produce the call's keys — its LI key release,
    /// under a valid warrant for the caller, refuses the call's DH_INIT with the typed
    /// `HighSecurityCall` refusal (there is no ticket). A callee without high-security keys
    /// refuses the offer (488), and so does an SDES-only one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn call_keyed_by_signed_dh_that_the_kms_cannot_release() {
        let dir = Dir(std::env::temp_dir().join(format!("mediasec-sip-hs-{}", std::process::id())));
        let kms = kmss(&dir).await;
        let lab = lab().await;
        let p = lab.pcscf_a.local_addr();
        let alice = hs_ue(&kms, "alice@a.example", ue("sip:alice@a.example", p, HS, ALICE_HZ, BOB_HZ), false).await;
        let bob = hs_ue(&kms, "bob@a.example", ue("sip:bob@a.example", p, HS, BOB_HZ, ALICE_HZ), false).await;
        let id = call(&alice, "sip:bob@a.example").await.expect("established");
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let a = alice.report(&id).await.expect("r").expect("call");
        let b = only_call(&bob).await;
        assert_media(&a, &b, "srtp AES_CM_128_HMAC_SHA1_80");
        assert_eq!((a.peer_key.as_ref(), a.own_key.as_ref()), (b.own_key.as_ref(), b.peer_key.as_ref()));
        assert_eq!((a.authenticated_peer.as_deref(), b.authenticated_peer.as_deref()), (Some("sip:bob@a.example"), Some("sip:alice@a.example")), "ECCSI-signed IDRr / IDRi");
        let dh_init = a.offer_mikey.clone().expect("the offer carried DH_INIT");
        assert_eq!(b.offer_mikey.as_ref(), Some(&dh_init));
        assert_eq!(mediasec_mikey_data_type(&dh_init), 4, "DH_INIT (RFC 3830 data type 4)");
        alice.hangup(&id).await.expect("BYE reaches bob");

        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
        let target = mediasec_kms::identity::KmsUid::parse("alice@a.example").expect("uid");
        let warrant = mediasec_kms::li::Warrant { id: "W1".into(), target, not_before: now - 60, not_after: now + 3600 };
        let kms_a = &kms.domain("a.example").expect("KMS a").service;
        match kms_a.li_release(&warrant, &dh_init, None, now).await {
            Err(mediasec_kms::KmsError::LiRefused(mediasec_kms::li::Refusal::HighSecurityCall)) => {}
            other => panic!("the KMS must have no key of a high-security call: {:?}", other.map(|_| "keys released")),
        }

        // No silent downgrade: an SDES-only callee refuses the offer.
        let sdes_only = registered(ue("sip:carol2@a.example", p, STRICT, BOB_HZ, ALICE_HZ)).await;
        let err = call(&alice, "sip:carol2@a.example").await.expect_err("488");
        assert!(matches!(err, mediasec_ua::Error::CallFailed { code: 488, .. }), "{err}");
        drop(sdes_only);
    }

    /// MIKEY-SAKKE through the proxies (docs/high-security.md §10): keys (ECCSI key, Z, RSK)
    /// from the KMS under policy `mikey_sakke`; the INVITE's offer carries the I_MESSAGE (data
    /// type 26), the answer no key management; media verified both ways, each side's send key
    /// the other's receive key. The KMS's LI key release, under a warrant for the caller,
    /// verifies the I_MESSAGE, derives the callee's RSK from z and releases exactly the keys
    /// both sides send with; a non-party target, a call outside the window and a tampered
    /// message are refused. A callee in the signed-DH mode refuses the I_MESSAGE (488).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mikey_sakke_call() {
        let dir = Dir(std::env::temp_dir().join(format!("mediasec-sip-sakke-{}", std::process::id())));
        let kms = kmss(&dir).await;
        let lab = lab().await;
        let p = lab.pcscf_a.local_addr();
        let ms = Security::MikeySakke;
        let alice = hs_ue(&kms, "erin@a.example", ue("sip:erin@a.example", p, ms, ALICE_HZ, BOB_HZ), false).await;
        let bob = hs_ue(&kms, "frank@a.example", ue("sip:frank@a.example", p, ms, BOB_HZ, ALICE_HZ), false).await;
        let id = call(&alice, "sip:frank@a.example").await.expect("established");
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let a = alice.report(&id).await.expect("r").expect("call");
        let b = only_call(&bob).await;
        assert_media(&a, &b, "srtp AES_CM_128_HMAC_SHA1_80");
        assert_eq!((a.peer_key.as_ref(), a.own_key.as_ref()), (b.own_key.as_ref(), b.peer_key.as_ref()));
        // The callee verified erin's ECCSI signature; the caller has no response to verify.
        assert_eq!((a.authenticated_peer.as_deref(), b.authenticated_peer.as_deref()), (None, Some("sip:erin@a.example")));
        let i_message = a.offer_mikey.clone().expect("the offer carried the I_MESSAGE");
        assert_eq!(mediasec_mikey_data_type(&i_message), 26, "I_MESSAGE (RFC 6509 data type 26)");
        alice.hangup(&id).await.expect("BYE reaches frank");

        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
        let target = mediasec_kms::identity::KmsUid::parse("erin@a.example").expect("uid");
        let warrant = mediasec_kms::li::Warrant { id: "W2".into(), target, not_before: now - 60, not_after: now + 3600 };
        let kms_a = &kms.domain("a.example").expect("KMS a").service;
        let released = kms_a.li_release(&warrant, &i_message, None, now).await.expect("the KMS releases a MIKEY-SAKKE call's keys");
        assert_eq!((released.initiator.as_str(), released.responder.as_str()), ("erin@a.example", "frank@a.example"));
        // The released master keys are the ones each side sends with (media verified above).
        assert_eq!(Some(mediasec_sdp::fingerprint(&released.media.initiator_stream.master_key)), a.own_key);
        assert_eq!(Some(mediasec_sdp::fingerprint(&released.media.responder_stream.master_key)), b.own_key);
        let not_a_party = mediasec_kms::li::Warrant { id: "W3".into(), target: mediasec_kms::identity::KmsUid::parse("bob@a.example").expect("uid"), ..warrant.clone() };
        assert!(matches!(kms_a.li_release(&not_a_party, &i_message, None, now).await, Err(mediasec_kms::KmsError::LiRefused(mediasec_kms::li::Refusal::NotAParty))));
        let later = mediasec_kms::li::Warrant { not_before: now + 600, not_after: now + 3600, ..warrant.clone() };
        assert!(matches!(kms_a.li_release(&later, &i_message, None, now + 700).await, Err(mediasec_kms::KmsError::LiRefused(mediasec_kms::li::Refusal::OutsideWindow))));
        let mut forged = i_message.clone();
        if let Some(last) = forged.last_mut() {
            *last ^= 1;
        }
        assert!(kms_a.li_release(&warrant, &forged, None, now).await.is_err(), "a message whose signature fails");

        let dh = hs_ue(&kms, "bob@a.example", ue("sip:bob@a.example", p, HS, BOB_HZ, ALICE_HZ), false).await;
        let err = call(&alice, "sip:bob@a.example").await.expect_err("a signed-DH callee refuses the I_MESSAGE");
        assert!(matches!(err, mediasec_ua::Error::CallFailed { code: 488, .. }), "{err}");
        drop(dh);
    }

    /// Cross-community MIKEY-SAKKE (docs/high-security.md §10.9) through the two-domain lab.
    /// The KMSs of a.example and b.example are Zk peers (mutual TLS under the lab PKI); each
    /// learns the other's KMS certificate over Zk and hands both certificates to its users
    /// with their MIKEY-SAKKE keys. erin (a) calls carol (b) through P-CSCF a, the S-CSCFs and
    /// P-CSCF b: the I_MESSAGE is encapsulated under KMS b's Z, names KMS a in IDRkmsi and
    /// KMS b in IDRkmsr and is signed with erin's key from KMS a; carol verifies it under a's
    /// KPAK from a's certificate and decapsulates with her RSK from KMS b; media verified both
    /// ways, each side's send key the other's receive key. LI: KMS b (the callee's) releases
    /// exactly the keys both sides send with; KMS a (the caller's) refuses with the typed
    /// `OtherCommunity` (it does not hold b's z). dave (b), provisioned before KMS b knew a's
    /// certificate, refuses erin's call with 488 ("unknown community").
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cross_community_mikey_sakke_call() {
        let dir = Dir(std::env::temp_dir().join(format!("mediasec-sip-communities-{}", std::process::id())));
        let (pol_a, pol_b) = ("[domain.\"a.example\"]\nmikey_sakke = true\n", "[domain.\"b.example\"]\nmikey_sakke = true\n");
        let domains = [DomainSpec { domain: "a.example", policy: pol_a }, DomainSpec { domain: "b.example", policy: pol_b }];
        let kms = KmsLab::start(&dir.0, &domains, &["erin@a.example", "carol@b.example", "dave@b.example"], Some(Duration::from_secs(5))).await.expect("KMS lab with Zk");
        let lab = lab().await;
        let (pa, pb) = (lab.pcscf_a.local_addr(), lab.pcscf_b.local_addr());
        let ms = Security::MikeySakke;
        let dave = hs_ue(&kms, "dave@b.example", ue("sip:dave@b.example", pb, ms, BOB_HZ, ALICE_HZ), false).await;
        for d in &kms.domains {
            let learned = d.service.refresh_communities().await;
            assert!(learned.len() == 1 && learned.iter().all(|(_, r)| r.is_ok()), "{}: {learned:?}", d.domain);
        }
        let erin = hs_ue(&kms, "erin@a.example", ue("sip:erin@a.example", pa, ms, ALICE_HZ, BOB_HZ), false).await;
        let carol = hs_ue(&kms, "carol@b.example", ue("sip:carol@b.example", pb, ms, BOB_HZ, ALICE_HZ), false).await;
        let id = call(&erin, "sip:carol@b.example").await.expect("established across communities");
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let a = erin.report(&id).await.expect("r").expect("call");
        let c = only_call(&carol).await;
        assert_media(&a, &c, "srtp AES_CM_128_HMAC_SHA1_80");
        assert_eq!((a.peer_key.as_ref(), a.own_key.as_ref()), (c.own_key.as_ref(), c.peer_key.as_ref()));
        assert_eq!((a.authenticated_peer.as_deref(), c.authenticated_peer.as_deref()), (None, Some("sip:erin@a.example")));
        let i_message = a.offer_mikey.clone().expect("the offer carried the I_MESSAGE");
        assert_eq!(mediasec_mikey::mikey_sakke::kms_uris(&i_message).expect("IDRkms"), (Some("kms.a.example".into()), Some("kms.b.example".into())));
        erin.hangup(&id).await.expect("BYE reaches carol");

        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
        let warrant = |id: &str, target: &str| mediasec_kms::li::Warrant { id: id.into(), target: mediasec_kms::identity::KmsUid::parse(target).expect("uid"), not_before: now - 60, not_after: now + 3600 };
        let kms_b = &kms.domain("b.example").expect("KMS b").service;
        let released = kms_b.li_release(&warrant("W-B", "carol@b.example"), &i_message, None, now).await.expect("the callee's KMS releases");
        assert_eq!((released.initiator.as_str(), released.responder.as_str()), ("erin@a.example", "carol@b.example"));
        assert_eq!(Some(mediasec_sdp::fingerprint(&released.media.initiator_stream.master_key)), a.own_key);
        assert_eq!(Some(mediasec_sdp::fingerprint(&released.media.responder_stream.master_key)), c.own_key);
        let kms_a = &kms.domain("a.example").expect("KMS a").service;
        match kms_a.li_release(&warrant("W-A", "erin@a.example"), &i_message, None, now).await {
            Err(mediasec_kms::KmsError::LiRefused(mediasec_kms::li::Refusal::OtherCommunity(k))) => assert_eq!(k, "kms.b.example"),
            other => panic!("the caller's KMS holds no z of b: {:?}", other.map(|_| "keys released")),
        }

        let err = call(&erin, "sip:dave@b.example").await.expect_err("dave holds no certificate of KMS a");
        assert!(matches!(&err, mediasec_ua::Error::CallFailed { code: 488, .. }), "{err}");
        let d = only_call(&dave).await;
        assert!(matches!(&d.state, CallState::Failed(488, why) if why.contains("unknown community")), "{d:?}");
    }

    /// Offerless calls in the high-security mode and with MIKEY-SAKKE (RFC 3261 §13.2.1; the
    /// offerer is the MIKEY Initiator, RFC 4567 §3): the callee signs a DH_INIT to the caller
    /// (or sends it an I_MESSAGE) in its 200, the caller verifies it and answers in the ACK
    /// (DH_RESP; no key management with MIKEY-SAKKE). Media verified both ways under keys both
    /// ends agree on; each side authenticated the other by its ECCSI signature (with
    /// MIKEY-SAKKE only the caller: the I_MESSAGE is the only message). Then an offerless
    /// re-INVITE of the caller re-keys the MIKEY-SAKKE call with a fresh I_MESSAGE of the
    /// callee, without a refused packet.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn offerless_calls_keyed_by_the_callee() {
        let dir = Dir(std::env::temp_dir().join(format!("mediasec-sip-hs-late-{}", std::process::id())));
        let kms = kmss(&dir).await;
        let lab = lab().await;
        let p = lab.pcscf_a.local_addr();
        for (mode, caller, callee) in [(HS, "alice@a.example", "bob@a.example"), (Security::MikeySakke, "erin@a.example", "frank@a.example")] {
            let a_ue = hs_ue(&kms, caller, ue(&format!("sip:{caller}"), p, mode, ALICE_HZ, BOB_HZ), false).await;
            let b_ue = hs_ue(&kms, callee, ue(&format!("sip:{callee}"), p, mode, BOB_HZ, ALICE_HZ), false).await;
            let id = tokio::time::timeout(Duration::from_secs(10), a_ue.call_without_offer(&format!("sip:{callee}"))).await.expect("in time").expect("established");
            tokio::time::sleep(Duration::from_millis(1000)).await;
            let a = a_ue.report(&id).await.expect("r").expect("call");
            let b = only_call(&b_ue).await;
            assert_media(&a, &b, "srtp AES_CM_128_HMAC_SHA1_80");
            assert_eq!((a.own_key.as_ref(), a.peer_key.as_ref()), (b.peer_key.as_ref(), b.own_key.as_ref()), "{mode:?}: keys crossed");
            let callee_uri = format!("sip:{callee}");
            let caller_uri = format!("sip:{caller}");
            let expected = if mode == HS { Some(caller_uri.as_str()) } else { None };
            assert_eq!((a.authenticated_peer.as_deref(), b.authenticated_peer.as_deref()), (Some(callee_uri.as_str()), expected), "{mode:?}");
            // The initial offer is the callee's, in its 200: DH_INIT or I_MESSAGE.
            let init = b.offer_mikey.clone().expect("the callee's offer carried the MIKEY message");
            assert_eq!(a.offer_mikey.as_ref(), Some(&init), "the caller answered that offer");
            assert_eq!(mediasec_mikey_data_type(&init), if mode == HS { 4 } else { 26 }, "{mode:?}: DH_INIT (RFC 3830), I_MESSAGE (RFC 6509)");
            if mode == Security::MikeySakke {
                tokio::time::timeout(Duration::from_secs(10), a_ue.reinvite_without_offer(&id)).await.expect("in time").expect("offerless re-INVITE");
                tokio::time::sleep(Duration::from_millis(800)).await;
                let (a2, b2) = (a_ue.report(&id).await.expect("r").expect("call"), only_call(&b_ue).await);
                assert_eq!((a2.rekeys, b2.rekeys), (1, 1), "{a2:?} {b2:?}");
                assert!(a2.own_key != a.own_key && a2.peer_key != a.peer_key, "new keys both ways: {a:?} -> {a2:?}");
                assert_eq!((a2.own_key.as_ref(), a2.peer_key.as_ref()), (b2.peer_key.as_ref(), b2.own_key.as_ref()), "keys crossed");
                assert!(a2.media.verified >= a.media.verified + 25 && b2.media.verified >= b.media.verified + 25, "media continued: {a2:?} {b2:?}");
                // The caller sends under the new key once it has the 200; the callee, the
                // offerer, chose that key (the SSV) and expects it from its offer on, so the
                // re-key refuses nothing either way (before the ACK applies it, such packets
                // are `accepted_by_expected_key`; the caller's previous key covers the
                // callee's packets until then).
                assert_eq!((a2.media.refused, b2.media.refused), (0, 0), "{a2:?} {b2:?}");
            }
            a_ue.hangup(&id).await.expect("BYE reaches the callee");
        }
    }

    /// KPAK trust is configuration: across domains (two KMSs, two KPAKs), a call works only
    /// where each side trusts the other's KMS. Alice (a.example) trusts only her own KPAK:
    /// carol (b.example, trusting both) verifies the DH_INIT and answers, but alice refuses
    /// carol's DH_RESP (signed under KMS b's KPAK) — the call fails, no media in clear. Dave
    /// (b.example) trusts only his KPAK: he refuses alice's DH_INIT with 488, the 488 carrying
    /// the MIKEY Error message (ERR Auth failure) in its SDP. With mutual trust the same
    /// cross-domain call goes through, media verified both ways.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_peer_under_an_untrusted_kpak_fails_the_call_cleanly() {
        let dir = Dir(std::env::temp_dir().join(format!("mediasec-sip-hs-kpak-{}", std::process::id())));
        let kms = kmss(&dir).await;
        let lab = lab().await;
        let (pa, pb) = (lab.pcscf_a.local_addr(), lab.pcscf_b.local_addr());
        let alice = hs_ue(&kms, "alice@a.example", ue("sip:alice@a.example", pa, HS, ALICE_HZ, BOB_HZ), false).await;
        let carol = hs_ue(&kms, "carol@b.example", ue("sip:carol@b.example", pb, HS, BOB_HZ, ALICE_HZ), true).await;
        let dave = hs_ue(&kms, "dave@b.example", ue("sip:dave@b.example", pb, HS, BOB_HZ, ALICE_HZ), false).await;
        let err = call(&alice, "sip:carol@b.example").await.expect_err("alice does not trust KMS b");
        assert!(err.to_string().contains("high-security (MIKEY-DH) answer refused"), "{err}");
        let err = call(&alice, "sip:dave@b.example").await.expect_err("dave does not trust KMS a");
        assert!(matches!(&err, mediasec_ua::Error::CallFailed { code: 488, .. }), "{err}");
        let d = only_call(&dave).await;
        assert!(matches!(&d.state, CallState::Failed(488, why) if why.contains("Auth failure") || why.contains("AUTH_FAILURE") || why.contains("signature")), "{d:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
        for r in alice.reports().await.expect("reports") {
            assert!(r.state != CallState::Established && r.media.verified == 0, "{r:?}");
        }
        // Mutual trust: alice2 trusts KMS b too.
        let alice2 = hs_ue(&kms, "bob@a.example", ue("sip:bob@a.example", pa, HS, ALICE_HZ, BOB_HZ), true).await;
        let id = call(&alice2, "sip:carol@b.example").await.expect("established with mutual trust");
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let a = alice2.report(&id).await.expect("r").expect("call");
        let c = carol.reports().await.expect("reports").into_iter().find(|r| r.state == CallState::Established).expect("carol's call");
        assert_media(&a, &c, "srtp AES_CM_128_HMAC_SHA1_80");
    }
}

/// e2ae (TS 33.328 §4.1.2.1, §7.2.1) through P-CSCF a as IMS-ALG driving our IMS-AGW over ng.
mod e2ae {
    use super::*;

    use mediasec_agw::bencode::Value;
    use mediasec_agw::{Agw, Config, ServerConfig};
    use std::sync::{Arc, Mutex};

    pub(super) async fn agw() -> Agw {
        // A port range of its own per test run (tests run in parallel in this binary), below
        // the ephemeral range (Linux: 32768–60999) where the lab's port-0 binds land.
        let base = 20_000 + 2 * (rand::random::<u16>() % 6_000);
        Agw::start(ServerConfig {
            listen_ng: "127.0.0.1:0".parse().expect("addr"),
            interface: "127.0.0.1".parse().expect("ip"),
            port_min: base,
            port_max: base + 99,
            metrics: Some("127.0.0.1:0".parse().expect("addr")),
            media_threads: 2,
            control: Config { address: "127.0.0.1".parse().expect("ip"), sdes: SdesPolicy::default(), timeout: Duration::from_secs(30) },
        })
        .await
        .expect("AGW")
    }

    /// An ng `query` of one AGW call (blocking client of `mediasec_agw::ng`, off the runtime).
    pub(super) async fn query(ng: SocketAddr, call_id: String) -> Value<'static> {
        tokio::task::spawn_blocking(move || {
            let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("socket");
            socket.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
            let q = Value::dict([("command", Value::str("query")), ("call-id", Value::str(call_id))]);
            mediasec_agw::ng::request(&socket, ng, &q).expect("query reply")
        })
        .await
        .expect("join")
    }

    /// One sample of the AGW's Prometheus `/metrics` (`name{labels}` as written there).
    pub(super) async fn metric(agw: &Agw, sample: &str) -> u64 {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut conn = tokio::net::TcpStream::connect(agw.metrics_addr().expect("metrics")).await.expect("metrics connect");
        conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: agw\r\nConnection: close\r\n\r\n").await.expect("GET");
        let mut text = String::new();
        conn.read_to_string(&mut text).await.expect("metrics");
        let line = text.lines().find(|l| l.split_once(' ').is_some_and(|(name, _)| name == sample)).unwrap_or_else(|| panic!("{sample} in {text}"));
        line.rsplit(' ').next().and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{line}"))
    }

    pub(super) fn int(v: &Value<'_>, path: &[&str]) -> i64 {
        path.iter().try_fold(v, |v, k| v.get(k)).and_then(Value::as_int).unwrap_or_else(|| panic!("{path:?} in {v:?}"))
    }

    pub(super) fn leg<'a>(q: &'a Value<'static>, side: &str) -> &'a Value<'static> {
        q.get("streams").and_then(Value::as_list).and_then(|s| s.first()).and_then(|s| s.get(side)).unwrap_or_else(|| panic!("stream leg {side} in {q:?}"))
    }

    /// A relay in front of S-CSCF b (requests a → b, responses b → a) that records every SDP
    /// body crossing the core, and puts a foreign `a=3ge2ae:applied` into every response's
    /// SDP when `inject` is set.
    pub(super) async fn core_relay(inject: bool) -> (SocketAddr, Arc<Mutex<Vec<String>>>, tokio::sync::oneshot::Sender<(SocketAddr, SocketAddr)>, tokio::task::JoinHandle<()>) {
        let mitm = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("relay");
        let addr = mitm.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        let (tx, rx) = tokio::sync::oneshot::channel::<(SocketAddr, SocketAddr)>();
        let task = tokio::spawn(async move {
            let Ok((a_side, b_side)) = rx.await else { return };
            let mut buf = vec![0u8; 65_535];
            loop {
                let Ok((n, from)) = mitm.recv_from(&mut buf).await else { return };
                let Some(bytes) = buf.get(..n) else { continue };
                let to = if from == a_side { b_side } else { a_side };
                let mut out = bytes.to_vec();
                if let Ok(mut m) = mediasec_sip::core::parse_datagram(bytes::Bytes::copy_from_slice(bytes), &mediasec_sip::core::Limits::datagram())
                    && let Ok(Some(mut sdp)) = mediasec_sip::body::sdp(&m)
                {
                    log.lock().expect("log").push(sdp.to_string());
                    if inject && m.as_response().is_some() && mediasec_sdp::e2ae::add(&mut sdp, 0, &mediasec_sdp::E2aeIndication::Applied).is_ok() && mediasec_sip::body::set_sdp(&mut m, &sdp).is_ok() {
                        out = m.to_bytes().to_vec();
                    }
                }
                let _ = mitm.send_to(&out, to).await;
            }
        });
        (addr, seen, tx, task)
    }

    /// The e2ae topology: our AGW, the two-domain lab with P-CSCF a as IMS-ALG and a relay
    /// logging the SDP that crosses the core, alice (a.example) registered with e2ae support
    /// and strict SDES, bob (b.example) on plain RTP.
    struct E2aeLab {
        agw: Agw,
        lab: TwoDomains,
        seen: Arc<Mutex<Vec<String>>>,
        task: tokio::task::JoinHandle<()>,
        alice: Ue,
        bob: Ue,
    }

    /// Both legs of the AGW call relayed at least 25 more RTP packets each way between the
    /// queries `q` and `q1`.
    fn relayed_25_more(q: &Value<'static>, q1: &Value<'static>) {
        for (side, dir) in [("A", "received"), ("B", "sent"), ("B", "received"), ("A", "sent")] {
            let grown = int(leg(q1, side), &[dir, "RTP", "packets"]) - int(leg(q, side), &[dir, "RTP", "packets"]);
            assert!(grown >= 25, "{side} {dir}: {grown} more packets through the AGW call: {q1:?}");
        }
    }

    /// After a re-key from the answerer's side replaced the first AGW call (`<id>;orig`): one
    /// AGW call left and the first gone, six e2ae applications and no failure at P-CSCF a;
    /// alice's BYE deletes the AGW call.
    async fn ends_on_the_replacing_agw_call(agw: &Agw, lab: &TwoDomains, alice: &Ue, id: &str) {
        assert_eq!(agw.call_count(), 1, "the first AGW call was deleted");
        assert_eq!(query(agw.ng_addr(), format!("{id};orig")).await.get("result").and_then(Value::as_str), Some("error"));
        applied_without_failure(lab, 6, "offer, answer, two re-offers and their answers");
        bye_deletes_the_agw_call(agw, lab, alice, id).await;
    }

    /// `ue` ends call `id`: its BYE deletes the AGW call, none is left.
    async fn bye_deletes_the_agw_call(agw: &Agw, lab: &TwoDomains, ue: &Ue, id: &str) {
        ue.hangup(id).await.expect("BYE");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(agw.call_count(), 0, "BYE deleted the AGW call: {:?}", lab.pcscf_a.stats());
    }

    /// P-CSCF a put `applied` offers and answers through the AGW (`what` they were) and no ng
    /// command failed.
    fn applied_without_failure(lab: &TwoDomains, applied: u64, what: &str) {
        let stats = lab.pcscf_a.stats();
        assert_eq!((stats.e2ae_applied, stats.agw_failures), (applied, 0), "{what}: {stats:?}");
    }

    /// Every SDP body that crossed the core (logged by [`core_relay`]) was plain `RTP/AVP`,
    /// without `a=crypto` or `a=3ge2ae`.
    fn core_saw_plain_rtp(seen: &Mutex<Vec<String>>) {
        for sdp in seen.lock().expect("log").iter() {
            assert!(!sdp.contains("a=crypto") && !sdp.contains("3ge2ae") && sdp.contains("RTP/AVP"), "core SDP: {sdp}");
        }
    }

    /// The local ports of both legs of an AGW call ([`query`]).
    fn ports(q: &Value<'static>) -> (i64, i64) {
        (int(leg(q, "A"), &["local port"]), int(leg(q, "B"), &["local port"]))
    }

    /// Both UEs' reports of a call that bob's offer from the core in a response (delayed
    /// offer) established: alice on SRTP with the AGW's key and `applied`, bob on plain RTP.
    async fn established_srtp_to_plain(alice: &Ue, bob: &Ue, id: &str) -> (CallReport, CallReport) {
        let (a, b) = (alice.report(id).await.expect("r").expect("call"), only_call(bob).await);
        assert_eq!((a.state.clone(), a.protection.as_str(), a.e2ae_applied), (CallState::Established, "srtp AEAD_AES_256_GCM", true), "{a:?}");
        assert_eq!((b.state.clone(), b.protection.as_str(), b.e2ae_applied), (CallState::Established, "rtp", false), "{b:?}");
        (a, b)
    }

    /// The AGW call (`<id>;d;0`) of bob's offer from the core in a response: the offerer's leg
    /// A (the core) plain, leg B (alice) SRTP, at least `packets` RTP packets received and sent
    /// on each, no SRTP authentication failure.
    async fn delayed_offer_agw_call(agw: &Agw, id: &str, packets: i64) {
        let q = query(agw.ng_addr(), format!("{id};d;0")).await;
        assert_eq!(leg(&q, "A").get("protection").and_then(Value::as_str), Some("plain"), "the core (bob) offered: {q:?}");
        assert_eq!(leg(&q, "B").get("protection").and_then(Value::as_str), Some("srtp"), "{q:?}");
        for side in ["A", "B"] {
            assert!(int(leg(&q, side), &["received", "RTP", "packets"]) >= packets && int(leg(&q, side), &["sent", "RTP", "packets"]) >= packets, "{q:?}");
        }
        assert_eq!(int(leg(&q, "B"), &["drops", "auth_failed"]), 0, "{q:?}");
    }

    async fn e2ae_lab() -> E2aeLab {
        e2ae_lab_with(false, Security::Off).await
    }

    /// [`e2ae_lab`] with P-CSCF a's `core_srtp` and bob's `security`.
    async fn e2ae_lab_with(core_srtp_a: bool, bob: Security) -> E2aeLab {
        e2ae_lab_answering(core_srtp_a, bob, None).await
    }

    /// [`e2ae_lab_with`], and bob answering as `answering` says when given.
    async fn e2ae_lab_answering(core_srtp_a: bool, bob: Security, answering: Option<Answering>) -> E2aeLab {
        let agw = agw().await;
        let (relay, seen, peers, task) = core_relay(false).await;
        let config = mediasec_cscf::lab::LabConfig { a_to_b: Some(relay), agw_ng_a: Some(agw.ng_addr()), core_srtp_a, ..Default::default() };
        let lab = TwoDomains::start_config(config).await.expect("lab");
        let _ = peers.send((lab.scscf_a.local_addr(), lab.scscf_b.local_addr()));
        let mut a = ue("sip:alice@a.example", lab.pcscf_a.local_addr(), STRICT, ALICE_HZ, BOB_HZ);
        a.e2ae = true;
        let alice = registered(a).await;
        let mut b = ue("sip:bob@b.example", lab.pcscf_b.local_addr(), bob, BOB_HZ, ALICE_HZ);
        if let Some(answering) = answering {
            b.answering = answering;
        }
        let bob = registered(b).await;
        E2aeLab { agw, lab, seen, task, alice, bob }
    }

    /// Originating e2ae: alice (a.example, SDES, `a=3ge2ae:requested`) calls bob (b.example,
    /// plain RTP). The core sees only plain RTP/AVP at the AGW's address, without any crypto
    /// or e2ae indication; alice gets the AGW's key and `a=3ge2ae:applied`. Media is checked
    /// by content at both UEs and by the AGW's per-leg counters (SRTP on the access leg, RTP
    /// on the core leg); forged SRTP from the access side is dropped, counted, and never
    /// reaches bob. BYE deletes the AGW call.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn originating_e2ae_call_srtp_to_the_agw_rtp_in_the_core() {
        let E2aeLab { agw, lab, seen, task, alice, bob } = e2ae_lab().await;
        let id = call(&alice, "sip:bob@b.example").await.expect("established");
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let (ra, rb) = (alice.report(&id).await.expect("r").expect("call"), only_call(&bob).await);
        assert!(ra.e2ae_applied && !rb.e2ae_applied, "{ra:?} {rb:?}");
        assert_eq!(ra.protection, "srtp AEAD_AES_256_GCM", "SRTP towards the AGW");
        assert_eq!(rb.protection, "rtp", "plain RTP in the core");
        for r in [&ra, &rb] {
            assert!(r.media.verified >= 20 && r.media.refused == 0, "{r:?}");
        }
        core_saw_plain_rtp(&seen);
        assert_eq!(lab.pcscf_a.stats().e2ae_applied, 2, "offer and answer through the AGW: {:?}", lab.pcscf_a.stats());

        let q = query(agw.ng_addr(), format!("{id};orig")).await;
        let (access, core) = (leg(&q, "A"), leg(&q, "B"));
        assert_eq!(access.get("protection").and_then(Value::as_str), Some("srtp"));
        assert_eq!(core.get("protection").and_then(Value::as_str), Some("plain"));
        for l in [access, core] {
            assert!(int(l, &["received", "RTP", "packets"]) >= 20 && int(l, &["sent", "RTP", "packets"]) >= 20, "{l:?}");
        }
        // Forged SRTP (fresh sequence numbers, wrong tag) into the access port.
        let port = u16::try_from(int(access, &["local port"])).expect("port");
        let before_core_sent = int(core, &["sent", "RTP", "packets"]);
        let forger = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("forger");
        for i in 0..10u16 {
            let [s0, s1] = (60_000 + i).to_be_bytes();
            let mut p = vec![0x80, 0, s0, s1, 0, 0, 0, 0, 0x0b, 0xad, 0xbe, 0xef];
            p.extend_from_slice(&[0x55; 176]);
            forger.send_to(&p, ("127.0.0.1", port)).await.expect("send");
        }
        let bob_before = only_call(&bob).await.media;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let q = query(agw.ng_addr(), format!("{id};orig")).await;
        assert_eq!(int(leg(&q, "A"), &["drops", "auth_failed"]), 10, "{q:?}");
        let bob_after = only_call(&bob).await.media;
        let core_sent = int(leg(&q, "B"), &["sent", "RTP", "packets"]) - before_core_sent;
        assert_eq!(bob_after.accepted - bob_before.accepted, bob_after.verified - bob_before.verified, "only alice's tone reached bob");
        assert!(core_sent <= int(leg(&q, "A"), &["received", "RTP", "packets"]) - 10, "{q:?}");
        bye_deletes_the_agw_call(&agw, &lab, &alice, &id).await;
        task.abort();
    }

    /// Originating e2ae with P-CSCF a's `core_srtp` (TS 33.328 §4.1.2.1: "SRTP re-protected
    /// with other keys" towards the core): alice (SDES, `a=3ge2ae:requested`) calls bob (SDES).
    /// The core sees `RTP/SAVP` with the AGW's keys (never alice's) and no e2ae indication; bob
    /// answers SDES; alice gets the AGW's key and `applied`. Media verified by content both
    /// ways, both AGW legs `srtp`. Re-offers keep the core leg SRTP: alice's re-INVITE (same
    /// AGW call) and bob's (a new AGW call, bob's SDES offer from the core secured towards
    /// alice) both reach the other side as SDES with new keys, media going on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn originating_e2ae_call_with_srtp_in_the_core() {
        let E2aeLab { agw, lab, seen, task, alice, bob } = e2ae_lab_with(true, STRICT).await;
        let id = call(&alice, "sip:bob@b.example").await.expect("established");
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let (ra, rb) = (alice.report(&id).await.expect("r").expect("call"), only_call(&bob).await);
        assert!(ra.e2ae_applied && !rb.e2ae_applied, "{ra:?} {rb:?}");
        assert_eq!(ra.protection, "srtp AEAD_AES_256_GCM", "SRTP towards the AGW");
        assert!(rb.protection.starts_with("srtp "), "re-protected SRTP in the core: {rb:?}");
        assert!(rb.peer_key.is_some() && rb.peer_key != ra.own_key && ra.peer_key != rb.own_key, "other keys in the core: {ra:?} {rb:?}");
        for r in [&ra, &rb] {
            assert!(r.media.verified >= 20 && r.media.refused == 0, "{r:?}");
        }
        let core_sdp = seen.lock().expect("log").clone();
        assert!(core_sdp.len() >= 2, "offer and answer crossed the core: {core_sdp:?}");
        for sdp in &core_sdp {
            assert!(sdp.contains("RTP/SAVP") && sdp.contains("a=crypto") && !sdp.contains("3ge2ae"), "core SDP: {sdp}");
        }
        let q = query(agw.ng_addr(), format!("{id};orig")).await;
        for side in ["A", "B"] {
            let l = leg(&q, side);
            assert_eq!(l.get("protection").and_then(Value::as_str), Some("srtp"), "{side}: {q:?}");
            assert!(int(l, &["received", "RTP", "packets"]) >= 20 && int(l, &["sent", "RTP", "packets"]) >= 20, "{l:?}");
        }

        tokio::time::timeout(Duration::from_secs(5), alice.reinvite(&id)).await.expect("in time").expect("alice's re-INVITE");
        tokio::time::timeout(Duration::from_secs(5), bob.reinvite(&id)).await.expect("in time").expect("bob's re-INVITE through a new AGW call");
        let (a1, b1) = (alice.report(&id).await.expect("r").expect("call"), only_call(&bob).await);
        tokio::time::sleep(Duration::from_millis(800)).await;
        let (a2, b2) = (alice.report(&id).await.expect("r").expect("call"), only_call(&bob).await);
        assert_eq!((a2.rekeys, a2.protection.as_str(), a2.e2ae_applied, b2.rekeys), (2, "srtp AEAD_AES_256_GCM", true, 2), "{a2:?} {b2:?}");
        assert_eq!(b2.protection, rb.protection, "still SRTP in the core: {b2:?}");
        assert!(b2.own_key != rb.own_key && b2.peer_key != rb.peer_key && b2.peer_key.is_some(), "new keys in the core: {rb:?} -> {b2:?}");
        assert!(a2.media.verified >= a1.media.verified + 25 && b2.media.verified >= b1.media.verified + 25, "{a1:?} {a2:?} {b1:?} {b2:?}");
        assert_eq!(agw.call_count(), 1, "bob's re-offer replaced the first AGW call");
        applied_without_failure(&lab, 6, "offer, answer, two re-offers and their answers");
        bye_deletes_the_agw_call(&agw, &lab, &alice, &id).await;
        task.abort();
    }

    /// Terminating e2ae: bob (plain RTP) calls alice, who registered e2ae support. P-CSCF a
    /// offers alice RTP/SAVP with the AGW's key and `a=3ge2ae:applied`; alice's answered key
    /// is terminated in the AGW, bob gets a plain answer. Media verified by content both ways,
    /// also after bob's re-INVITE (re-offered by the AGW to alice with new keys).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn terminating_e2ae_call() {
        let E2aeLab { agw, lab, seen, task, alice, bob } = e2ae_lab().await;
        let id = call(&bob, "sip:alice@a.example").await.expect("established");
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let (rb, ra) = (bob.report(&id).await.expect("r").expect("call"), only_call(&alice).await);
        assert!(ra.e2ae_applied && !rb.e2ae_applied, "{ra:?} {rb:?}");
        assert_eq!((ra.protection.as_str(), rb.protection.as_str()), ("srtp AEAD_AES_256_GCM", "rtp"));
        for r in [&ra, &rb] {
            assert!(r.media.verified >= 20 && r.media.refused == 0, "{r:?}");
        }
        for sdp in seen.lock().expect("log").iter() {
            assert!(!sdp.contains("a=crypto") && !sdp.contains("3ge2ae"), "core SDP: {sdp}");
        }
        // bob (the offerer, in the core) re-INVITEs: the AGW re-offers SRTP to alice with a new
        // key of its own; media goes on.
        tokio::time::timeout(Duration::from_secs(5), bob.reinvite(&id)).await.expect("in time").expect("re-INVITE through the AGW");
        tokio::time::sleep(Duration::from_millis(800)).await;
        let (rb2, ra2) = (bob.report(&id).await.expect("r").expect("call"), only_call(&alice).await);
        assert_eq!((ra2.rekeys, ra2.protection.as_str(), rb2.protection.as_str()), (1, "srtp AEAD_AES_256_GCM", "rtp"), "{ra2:?} {rb2:?}");
        assert!(ra2.peer_key != ra.peer_key && ra2.own_key != ra.own_key && ra2.e2ae_applied, "new keys on the access leg: {ra:?} -> {ra2:?}");
        assert!(ra2.media.verified >= ra.media.verified + 25 && rb2.media.verified >= rb.media.verified + 25, "{ra2:?} {rb2:?}");
        assert!(ra2.media.refused <= REKEY_RACE && rb2.media.refused == 0, "{ra2:?} {rb2:?}");
        bye_deletes_the_agw_call(&agw, &lab, &bob, &id).await;
        task.abort();
    }

    /// Re-INVITE inside an e2ae call: alice (the offerer) re-keys; P-CSCF a sends the re-offer
    /// to the AGW on the same AGW call, which keeps its ports and answers alice's new key with
    /// a new key of its own; bob again gets plain RTP/AVP; media goes on both ways. Then bob
    /// (the answerer's side, which our AGW takes no re-offer from) re-INVITEs: P-CSCF a sets up
    /// a new AGW call secured towards alice, deletes the first one, and media goes on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reinvite_in_an_e2ae_call() {
        let E2aeLab { agw, lab, seen: _, task, alice, bob } = e2ae_lab().await;
        let id = call(&alice, "sip:bob@b.example").await.expect("established");
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let before = alice.report(&id).await.expect("r").expect("call");
        let q = query(agw.ng_addr(), format!("{id};orig")).await;

        tokio::time::timeout(Duration::from_secs(5), alice.reinvite(&id)).await.expect("in time").expect("re-INVITE through the AGW");
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let after = alice.report(&id).await.expect("r").expect("call");
        assert_eq!(after.rekeys, 1, "{after:?}");
        assert!(after.own_key != before.own_key && after.peer_key != before.peer_key, "new keys both ways on the access leg: {before:?} -> {after:?}");
        assert_eq!(after.protection, before.protection);
        assert!(after.media.verified >= before.media.verified + 30, "alice: media continued: {before:?} -> {after:?}");
        let q2 = query(agw.ng_addr(), format!("{id};orig")).await;
        assert_eq!(ports(&q2), ports(&q), "the AGW kept its ports");
        assert_eq!(leg(&q2, "A").get("protection").and_then(Value::as_str), Some("srtp"));
        // The AGW takes alice's new key at the answer and keeps her old one retired for what
        // she sent under it before the answer reached her: it drops nothing.
        assert_eq!(int(leg(&q2, "A"), &["drops", "auth_failed"]), 0, "{q2:?}");
        assert_eq!(agw.call_count(), 1);
        // The re-INVITE follows the Record-Route (not the relay): bob tells what reached him.
        let b0 = only_call(&bob).await;
        assert_eq!((b0.protection.as_str(), b0.e2ae_applied, b0.peer_key.as_deref()), ("rtp", false, None), "plain re-offer in the core: {b0:?}");
        assert_eq!(lab.pcscf_a.stats().e2ae_applied, 4, "{:?}", lab.pcscf_a.stats());

        // bob (the answerer) re-INVITEs: a new AGW call secured towards alice replaces the
        // first one (new ports and keys on both legs); the call goes on.
        tokio::time::timeout(Duration::from_secs(5), bob.reinvite(&id)).await.expect("in time").expect("bob's re-INVITE through a new AGW call");
        let (b1, a1) = (only_call(&bob).await, alice.report(&id).await.expect("r").expect("call"));
        tokio::time::sleep(Duration::from_millis(800)).await;
        let (b2, a2) = (only_call(&bob).await, alice.report(&id).await.expect("r").expect("call"));
        assert!(b2.media.verified >= b1.media.verified + 25 && a2.media.verified >= a1.media.verified + 25, "{b1:?} {b2:?} {a1:?} {a2:?}");
        assert_eq!((a2.rekeys, a2.protection.as_str(), a2.e2ae_applied), (2, "srtp AEAD_AES_256_GCM", true), "{a2:?}");
        assert!(a2.peer_key != after.peer_key && a2.own_key != after.own_key, "new keys on the access leg: {after:?} -> {a2:?}");
        assert_eq!((b2.protection.as_str(), b2.media.refused, b2.rekeys), ("rtp", 0, 2), "{b2:?}");
        assert_eq!(agw.call_count(), 1, "the first AGW call was deleted");
        let replaced = query(agw.ng_addr(), format!("{id};orig")).await;
        assert_eq!(replaced.get("result").and_then(Value::as_str), Some("error"), "{replaced:?}");
        // The AGW switches to its new key when it answers the re-offer, alice when the answer
        // reaches her: what arrives in between is refused (1 packet measured here). What the
        // first AGW call relayed just before its deletion arrives under the key alice had
        // before and is accepted by it (her previous key is kept for exactly that): usually
        // none, a few on a loaded machine — both bounded by the same race.
        assert!(a2.media.refused <= REKEY_RACE && a2.media.accepted_by_previous_key <= REKEY_RACE, "{a2:?}");
        bye_deletes_the_agw_call(&agw, &lab, &alice, &id).await;
        task.abort();
    }

    /// UPDATE offers inside an e2ae call (RFC 3311): alice (the original offerer) re-keys with
    /// an UPDATE: P-CSCF a re-offers on the same AGW call, which keeps its ports, and the 2xx's
    /// answer comes back through the AGW; then bob (the answerer's side) re-keys with an
    /// UPDATE: a new AGW call secured towards alice replaces the first. Media verified by
    /// content at both UEs and by the AGW's counters on the new call after each.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn update_in_an_e2ae_call() {
        let E2aeLab { agw, lab, seen: _, task, alice, bob } = e2ae_lab().await;
        let id = call(&alice, "sip:bob@b.example").await.expect("established");
        tokio::time::sleep(Duration::from_millis(800)).await;
        let before = alice.report(&id).await.expect("r").expect("call");
        let q = query(agw.ng_addr(), format!("{id};orig")).await;

        tokio::time::timeout(Duration::from_secs(5), alice.update(&id)).await.expect("in time").expect("UPDATE through the AGW");
        tokio::time::sleep(Duration::from_millis(800)).await;
        let (a1, b1) = (alice.report(&id).await.expect("r").expect("call"), only_call(&bob).await);
        assert_eq!((a1.rekeys, a1.protection.as_str(), a1.e2ae_applied), (1, "srtp AEAD_AES_256_GCM", true), "{a1:?}");
        assert!(a1.own_key != before.own_key && a1.peer_key != before.peer_key, "new keys both ways on the access leg: {before:?} -> {a1:?}");
        assert_eq!((b1.protection.as_str(), b1.peer_key.as_deref()), ("rtp", None), "plain re-offer in the core: {b1:?}");
        assert!(a1.media.verified >= before.media.verified + 25 && a1.media.refused <= REKEY_RACE, "{before:?} -> {a1:?}");
        let q1 = query(agw.ng_addr(), format!("{id};orig")).await;
        assert_eq!(ports(&q1), ports(&q), "the AGW kept its ports");
        relayed_25_more(&q, &q1);

        tokio::time::timeout(Duration::from_secs(5), bob.update(&id)).await.expect("in time").expect("bob's UPDATE through a new AGW call");
        tokio::time::sleep(Duration::from_millis(800)).await;
        let (a2, b2) = (alice.report(&id).await.expect("r").expect("call"), only_call(&bob).await);
        assert_eq!((a2.rekeys, a2.protection.as_str(), a2.e2ae_applied), (2, "srtp AEAD_AES_256_GCM", true), "{a2:?}");
        assert!(a2.own_key != a1.own_key && a2.peer_key != a1.peer_key, "new keys on the access leg: {a1:?} -> {a2:?}");
        assert!(a2.media.verified >= a1.media.verified + 25 && b2.media.verified >= b1.media.verified + 25, "{a1:?} {a2:?} {b1:?} {b2:?}");
        assert_eq!((b2.protection.as_str(), b2.media.refused), ("rtp", 0), "{b2:?}");
        ends_on_the_replacing_agw_call(&agw, &lab, &alice, &id).await;
        task.abort();
    }

    /// The TS 24.229 preconditions flow through the IMS-ALG (RFC 3262, RFC 3311): alice (e2ae,
    /// `Supported: 100rel`) calls bob (plain RTP), who answers in a reliable 183 with early
    /// media (`Require: 100rel`, `RSeq`); P-CSCF a puts the answer through the AGW (`applied`
    /// to alice), alice PRACKs, then re-keys with an UPDATE in the early dialog — a re-offer on
    /// the same AGW call (ports kept), its 200 answer back through the AGW — and bob's 200
    /// (no SDP: the exchange is complete) and alice's ACK establish the call. Media is verified
    /// by content at both UEs before the 200 (early media, under the UPDATE's keys) and after,
    /// and by the AGW's counters on both legs with no authentication failure.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reliable_183_prack_and_early_update_in_an_e2ae_call() {
        let answering = Answering { auto: true, delay: Duration::from_millis(3500), early_media: true };
        let E2aeLab { agw, lab, seen, task, alice, bob } = e2ae_lab_answering(false, Security::Off, Some(answering)).await;
        let alice = Arc::new(alice);
        let calling = tokio::spawn({
            let alice = Arc::clone(&alice);
            async move { alice.call("sip:bob@b.example").await }
        });
        let early = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if let Some(r) = alice.reports().await.expect("reports").into_iter().find(|r| r.state == CallState::Early) {
                    return r;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("early media from the reliable 183");
        let id = early.call_id.clone();
        assert!(early.e2ae_applied && early.protection == "srtp AEAD_AES_256_GCM", "{early:?}");
        tokio::time::sleep(Duration::from_millis(600)).await;
        let before = alice.report(&id).await.expect("r").expect("call");
        assert!(before.media.verified >= 15, "early media verified: {before:?}");
        let q = query(agw.ng_addr(), format!("{id};orig")).await;

        tokio::time::timeout(Duration::from_secs(5), alice.update(&id)).await.expect("in time").expect("UPDATE in the early dialog through the AGW");
        tokio::time::sleep(Duration::from_millis(800)).await;
        let (a1, b1) = (alice.report(&id).await.expect("r").expect("call"), only_call(&bob).await);
        assert_eq!((a1.state.clone(), b1.state.clone()), (CallState::Early, CallState::Early), "still before the 200");
        assert_eq!((a1.rekeys, a1.protection.as_str(), a1.e2ae_applied), (1, "srtp AEAD_AES_256_GCM", true), "{a1:?}");
        assert!(a1.own_key != before.own_key && a1.peer_key != before.peer_key, "new keys both ways on the access leg: {before:?} -> {a1:?}");
        assert!(a1.media.verified >= before.media.verified + 25 && a1.media.refused <= REKEY_RACE, "{before:?} -> {a1:?}");
        assert_eq!((b1.protection.as_str(), b1.rekeys), ("rtp", 1), "plain re-offer in the core: {b1:?}");
        let q1 = query(agw.ng_addr(), format!("{id};orig")).await;
        assert_eq!(ports(&q1), ports(&q), "the AGW kept its ports");
        relayed_25_more(&q, &q1);

        let established = tokio::time::timeout(Duration::from_secs(10), calling).await.expect("in time").expect("join").expect("established");
        assert_eq!(established, id);
        tokio::time::sleep(Duration::from_millis(800)).await;
        let (a2, b2) = (alice.report(&id).await.expect("r").expect("call"), only_call(&bob).await);
        assert_eq!((a2.state.clone(), b2.state.clone()), (CallState::Established, CallState::Established));
        assert_eq!((a2.rekeys, a2.own_key.as_ref(), a2.peer_key.as_ref()), (1, a1.own_key.as_ref(), a1.peer_key.as_ref()), "the 200 kept the UPDATE's keys: {a2:?}");
        assert!(a2.early_verified >= a1.media.verified && a2.media.verified >= a2.early_verified + 25, "media before and after the 200: {a2:?}");
        assert!(b2.media.verified >= b1.media.verified + 25 && b2.media.refused == 0, "{b2:?}");
        let q2 = query(agw.ng_addr(), format!("{id};orig")).await;
        relayed_25_more(&q1, &q2);
        assert_eq!(int(leg(&q2, "A"), &["drops", "auth_failed"]), 0, "{q2:?}");
        core_saw_plain_rtp(&seen);
        applied_without_failure(&lab, 4, "offer, 183 answer, UPDATE offer and answer");
        bye_deletes_the_agw_call(&agw, &lab, &alice, &id).await;
        task.abort();
    }

    /// Offer in a reliable 18x, answer in the PRACK (RFC 3262 §5) through the IMS-ALG: alice
    /// (e2ae) calls bob (plain RTP, early media) with an offerless INVITE; bob's plain offer in
    /// his reliable 183 is secured towards alice by the AGW (a new `<Call-ID>;d;0` call:
    /// `RTP/SAVP`, the AGW's key, `applied`), alice's SDES answer in the PRACK goes through ng
    /// `answer` and reaches bob plain; bob's SDP-less 200 after the PRACK establishes the call.
    /// Media verified by content at both UEs (early and after the 200) and by the AGW call's
    /// counters on both legs, `auth_failed` 0.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn offer_in_a_reliable_183_answer_in_the_prack_of_an_e2ae_call() {
        let answering = Answering { auto: true, delay: Duration::from_millis(1000), early_media: true };
        let E2aeLab { agw, lab, seen, task, alice, bob } = e2ae_lab_answering(false, Security::Off, Some(answering)).await;
        let id = tokio::time::timeout(Duration::from_secs(5), alice.call_without_offer("sip:bob@b.example")).await.expect("in time").expect("established");
        tokio::time::sleep(Duration::from_millis(800)).await;
        let (a, b) = established_srtp_to_plain(&alice, &bob, &id).await;
        for r in [&a, &b] {
            assert!(r.early_verified >= 10 && r.media.verified >= r.early_verified + 25 && r.media.refused == 0, "early media, then more: {r:?}");
        }
        core_saw_plain_rtp(&seen);
        delayed_offer_agw_call(&agw, &id, 40).await;
        applied_without_failure(&lab, 2, "offer in the 183, answer in the PRACK");
        bye_deletes_the_agw_call(&agw, &lab, &alice, &id).await;
        task.abort();
    }

    /// Delayed offer without 100rel through the IMS-ALG (RFC 3261 §13.2.1, §13.3.1.4,
    /// §13.2.2.4): alice (e2ae) calls bob (plain RTP, no early media, so no reliable 18x) with
    /// an offerless INVITE; bob's plain offer in his 200 is secured towards alice by the AGW (a
    /// new `<Call-ID>;d;0` call: `RTP/SAVP`, the AGW's key, `applied`), alice's SDES answer in
    /// the ACK goes through ng `answer` and reaches bob plain. Media verified by content at both
    /// UEs (none before the ACK) and by the AGW call's counters on both legs, `auth_failed` 0;
    /// the core sees neither crypto nor indication.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn offer_in_the_200_answer_in_the_ack_of_an_e2ae_call() {
        let answering = Answering { auto: true, delay: Duration::from_millis(300), early_media: false };
        let E2aeLab { agw, lab, seen, task, alice, bob } = e2ae_lab_answering(false, Security::Off, Some(answering)).await;
        let id = tokio::time::timeout(Duration::from_secs(5), alice.call_without_offer("sip:bob@b.example")).await.expect("in time").expect("established");
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let (a, b) = established_srtp_to_plain(&alice, &bob, &id).await;
        for r in [&a, &b] {
            assert!(r.early_verified == 0 && r.media.verified >= 30 && r.media.refused == 0, "media from the ACK on: {r:?}");
        }
        core_saw_plain_rtp(&seen);
        delayed_offer_agw_call(&agw, &id, 30).await;
        applied_without_failure(&lab, 2, "offer in the 200, answer in the ACK");
        assert_eq!(lab.pcscf_a.stats().sdes_refused, 0, "{:?}", lab.pcscf_a.stats());
        bye_deletes_the_agw_call(&agw, &lab, &alice, &id).await;
        task.abort();
    }

    /// Delayed-offer re-INVITEs inside an e2ae call (RFC 3261 §13.2.1: the offer in the 2xx,
    /// the answer in the ACK). bob re-INVITEs without an offer: alice's SDES offer in her 2xx
    /// is the original offerer's, so P-CSCF a re-offers it on the same AGW call (ports kept)
    /// and bob's plain answer in the ACK reaches alice with the AGW's key and `applied`. Then
    /// alice re-INVITEs without an offer: bob's plain offer in his 2xx comes from the
    /// answerer's side, so a new AGW call secured towards alice replaces the first. Media is
    /// verified by content at both UEs and by the AGW's counters after the first.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn delayed_offer_reinvites_in_an_e2ae_call() {
        let E2aeLab { agw, lab, seen: _, task, alice, bob } = e2ae_lab().await;
        let id = call(&alice, "sip:bob@b.example").await.expect("established");
        tokio::time::sleep(Duration::from_millis(800)).await;
        let before = alice.report(&id).await.expect("r").expect("call");
        let q = query(agw.ng_addr(), format!("{id};orig")).await;

        tokio::time::timeout(Duration::from_secs(5), bob.reinvite_without_offer(&id)).await.expect("in time").expect("bob's offerless re-INVITE");
        tokio::time::sleep(Duration::from_millis(800)).await;
        let (a1, b1) = (alice.report(&id).await.expect("r").expect("call"), only_call(&bob).await);
        assert_eq!((a1.rekeys, a1.protection.as_str(), b1.rekeys, b1.protection.as_str()), (1, "srtp AEAD_AES_256_GCM", 1, "rtp"), "{a1:?} {b1:?}");
        assert!(a1.own_key != before.own_key && a1.peer_key != before.peer_key, "new keys both ways on the access leg: {before:?} -> {a1:?}");
        assert!(a1.media.verified >= before.media.verified + 25 && a1.media.refused <= REKEY_RACE, "{before:?} -> {a1:?}");
        let q1 = query(agw.ng_addr(), format!("{id};orig")).await;
        assert_eq!(ports(&q1), ports(&q), "the AGW kept its ports");
        relayed_25_more(&q, &q1);

        tokio::time::timeout(Duration::from_secs(5), alice.reinvite_without_offer(&id)).await.expect("in time").expect("alice's offerless re-INVITE");
        tokio::time::sleep(Duration::from_millis(800)).await;
        let (a2, b2) = (alice.report(&id).await.expect("r").expect("call"), only_call(&bob).await);
        assert_eq!((a2.rekeys, a2.protection.as_str(), b2.rekeys, b2.protection.as_str()), (2, "srtp AEAD_AES_256_GCM", 2, "rtp"), "{a2:?} {b2:?}");
        assert!(a2.own_key != a1.own_key && a2.peer_key != a1.peer_key, "new keys on the access leg: {a1:?} -> {a2:?}");
        assert!(a2.media.verified >= a1.media.verified + 25 && b2.media.verified >= b1.media.verified + 25, "{a1:?} {a2:?} {b1:?} {b2:?}");
        assert_eq!(b2.media.refused, 0, "{b2:?}");
        ends_on_the_replacing_agw_call(&agw, &lab, &alice, &id).await;
        task.abort();
    }

    /// A forged `a=3ge2ae:applied` from the core never reaches the UE: alice (registered with
    /// e2ae support, this call without `requested`) calls bob with SDES end to end, the relay
    /// puts the indication into bob's answer, P-CSCF a removes it: the call runs SRTP end to
    /// end with bob's key, no AGW, and alice does not believe in e2ae.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn foreign_indications_are_removed() {
        let agw = agw().await;
        let (relay, _seen, peers, task) = core_relay(true).await;
        let lab = TwoDomains::start_with_agw(HashMap::new(), Some(relay), Some(agw.ng_addr())).await.expect("lab");
        let _ = peers.send((lab.scscf_a.local_addr(), lab.scscf_b.local_addr()));
        let alice = registered(ue("sip:alice@a.example", lab.pcscf_a.local_addr(), STRICT, ALICE_HZ, BOB_HZ)).await;
        let bob = registered(ue("sip:bob@b.example", lab.pcscf_b.local_addr(), STRICT, BOB_HZ, ALICE_HZ)).await;
        let id = call(&alice, "sip:bob@b.example").await.expect("established");
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let (ra, rb) = (alice.report(&id).await.expect("r").expect("call"), only_call(&bob).await);
        assert!(!ra.e2ae_applied, "the injected indication was removed: {ra:?}");
        assert_eq!(ra.peer_key, rb.own_key, "SDES end to end, no AGW");
        assert!(ra.media.verified >= 20 && rb.media.verified >= 20, "{ra:?} {rb:?}");
        assert!(lab.pcscf_a.stats().e2ae_stripped >= 1 && lab.pcscf_a.stats().e2ae_applied == 0, "{:?}", lab.pcscf_a.stats());
        assert_eq!(agw.call_count(), 0);
        task.abort();
    }
}
