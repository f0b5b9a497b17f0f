//! RFC 3263 server location against a real DNS responder on 127.0.0.1
//! (`mediasec_testkit::dns`), through `DnsResolver` (hickory-resolver): the NAPTR → SRV → A
//! chain, SRV priority order, the A-only fallback, an explicit port, `sips:` limited to TLS,
//! NXDOMAIN; and the endpoint's `Command::RequestUri`: NXDOMAIN fails the client transaction
//! as an unreachable hop does (`Event::Timeout`), and a refused TCP connection to the first
//! SRV target moves the request to the second (§4.3).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use mediasec_sip::core::{Message, Request, Timers, TransactionKey, Uri};
use mediasec_sip::locate::{locate, DnsResolver, LocateError, Target, Transport};
use mediasec_sip::stream::{Frame, FrameLimits, Framer};
use mediasec_sip::udp::{Command, Config, Endpoint, Event};
use mediasec_testkit::dns::{DnsServer, Zone};

fn uri(s: &str) -> Uri {
    Uri::parse(bytes::Bytes::copy_from_slice(s.as_bytes())).expect("URI")
}

fn target(transport: Transport, addr: &str) -> Target {
    Target { transport, addr: addr.parse().expect("address") }
}

fn resolver(server: &DnsServer) -> DnsResolver {
    DnsResolver::with_server(server.addr())
}

const LO1: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const LO2: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// §4.1: NAPTR records by order (TCP before UDP here), each to its SRV name, each SRV target
/// to its A record; a service we do not speak (SCTP) is skipped.
#[tokio::test]
async fn naptr_then_srv_then_a() {
    let dns = DnsServer::start(
        Zone::new()
            .naptr("ims.test", 20, 10, "SIP+D2U", "_sip._udp.ims.test")
            .naptr("ims.test", 10, 10, "SIP+D2T", "_sip._tcp.ims.test")
            .naptr("ims.test", 5, 10, "SIP+D2S", "_sip._sctp.ims.test")
            .srv("_sip._tcp.ims.test", 10, 1, 5070, "tcp.ims.test")
            .srv("_sip._udp.ims.test", 10, 1, 5080, "udp.ims.test")
            .srv("_sip._sctp.ims.test", 10, 1, 5090, "sctp.ims.test")
            .a("tcp.ims.test", LO1)
            .a("udp.ims.test", LO2)
            .a("sctp.ims.test", LO2),
    );
    let targets = locate(&resolver(&dns), &uri("sip:scscf@ims.test;lr")).await.expect("located");
    assert_eq!(targets, vec![target(Transport::Tcp, "127.0.0.1:5070"), target(Transport::Udp, "127.0.0.2:5080")]);
}

/// §4.1 without NAPTR: the SRV queries per transport; RFC 2782: lower priority first, and
/// every record of a priority before the next (their order within it is weighted random).
#[tokio::test]
async fn srv_priority_order_without_naptr() {
    let dns = DnsServer::start(
        Zone::new()
            .a("ims.test", LO1)
            .srv("_sip._udp.ims.test", 20, 0, 6000, "backup.ims.test")
            .srv("_sip._udp.ims.test", 10, 60, 6001, "one.ims.test")
            .srv("_sip._udp.ims.test", 10, 40, 6002, "two.ims.test")
            .a("backup.ims.test", LO2)
            .a("one.ims.test", LO1)
            .a("two.ims.test", LO1),
    );
    let targets = locate(&resolver(&dns), &uri("sip:ims.test")).await.expect("located");
    assert_eq!(targets.len(), 3, "{targets:?}");
    let first_two: Vec<u16> = targets.iter().take(2).map(|t| t.addr.port()).collect();
    assert!(first_two.contains(&6001) && first_two.contains(&6002), "{targets:?}");
    assert_eq!(targets.get(2), Some(&target(Transport::Udp, "127.0.0.2:6000")));
}

/// §4.2: no NAPTR and no SRV: the host's own A and AAAA records on the default port, UDP for
/// `sip:`.
#[tokio::test]
async fn a_records_only() {
    let dns = DnsServer::start(Zone::new().a("pcscf.test", LO2).aaaa("pcscf.test", std::net::Ipv6Addr::LOCALHOST));
    let targets = locate(&resolver(&dns), &uri("sip:pcscf.test;lr")).await.expect("located");
    assert_eq!(targets, vec![target(Transport::Udp, "127.0.0.2:5060"), target(Transport::Udp, "[::1]:5060")]);
}

/// §4.2: an explicit port skips NAPTR and SRV (the SRV record here is not used); an explicit
/// transport skips NAPTR (the NAPTR's UDP service is not used) and queries that transport's SRV.
#[tokio::test]
async fn explicit_port_and_transport() {
    let dns = DnsServer::start(
        Zone::new()
            .a("icscf.test", LO1)
            .naptr("icscf.test", 10, 10, "SIP+D2U", "_sip._udp.icscf.test")
            .srv("_sip._udp.icscf.test", 10, 1, 7000, "icscf.test")
            .srv("_sip._tcp.icscf.test", 10, 1, 7001, "icscf.test"),
    );
    let r = resolver(&dns);
    assert_eq!(locate(&r, &uri("sip:icscf.test:5099;lr")).await.expect("located"), vec![target(Transport::Udp, "127.0.0.1:5099")]);
    assert_eq!(locate(&r, &uri("sip:icscf.test;transport=tcp")).await.expect("located"), vec![target(Transport::Tcp, "127.0.0.1:7001")]);
    // A numeric host asks nothing of DNS.
    let before = dns.queries();
    assert_eq!(locate(&r, &uri("sip:127.0.0.9;transport=tcp")).await.expect("located"), vec![target(Transport::Tcp, "127.0.0.9:5060")]);
    assert_eq!(dns.queries(), before);
}

/// §4.1: a `sips:` URI uses only `SIPS+D2T` NAPTR records, and without NAPTR only
/// `_sips._tcp`; without either, TLS on 5061.
#[tokio::test]
async fn sips_is_tls_only() {
    let dns = DnsServer::start(
        Zone::new()
            .naptr("secure.test", 10, 10, "SIP+D2U", "_sip._udp.secure.test")
            .naptr("secure.test", 20, 10, "SIPS+D2T", "_sips._tcp.secure.test")
            .srv("_sip._udp.secure.test", 10, 1, 5060, "h.secure.test")
            .srv("_sips._tcp.secure.test", 10, 1, 5161, "h.secure.test")
            .a("h.secure.test", LO1)
            .srv("_sip._udp.plain.test", 10, 1, 5060, "h.secure.test")
            .a("plain.test", LO2),
    );
    let r = resolver(&dns);
    assert_eq!(locate(&r, &uri("sips:secure.test")).await.expect("located"), vec![target(Transport::Tls, "127.0.0.1:5161")]);
    assert_eq!(locate(&r, &uri("sips:plain.test")).await.expect("located"), vec![target(Transport::Tls, "127.0.0.2:5061")]);
}

/// A name nobody knows: no target, an error naming it.
#[tokio::test]
async fn nxdomain_locates_nothing() {
    let dns = DnsServer::start(Zone::new().a("known.test", LO1));
    let err = locate(&resolver(&dns), &uri("sip:unknown.test")).await.expect_err("nothing");
    assert!(matches!(err, LocateError::NoAddress { ref name, .. } if name == "unknown.test"), "{err:?}");
}

fn timers() -> Timers {
    Timers { t1: Duration::from_millis(500), t2: Duration::from_secs(4), t4: Duration::from_secs(5) }
}

async fn endpoint(dns: &DnsServer) -> (Endpoint, mediasec_sip::udp::Events) {
    let config = Config { resolver: Some(Arc::new(resolver(dns))), ..Config::from(timers()) };
    Endpoint::bind_with("127.0.0.1:0".parse().expect("addr"), config).await.expect("bind")
}

fn options(from: SocketAddr, to: &str, branch: &str) -> Request {
    let text = format!(
        "OPTIONS {to} SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch={branch};rport\r\nMax-Forwards: 70\r\n\
From: <sip:alice@a.test>;tag=x\r\nTo: <{to}>\r\nCall-ID: {branch}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    );
    let Ok(Message::Request(r)) = mediasec_sip::core::parse_datagram(text.into_bytes().into(), &mediasec_sip::core::Limits::datagram()) else { panic!("a request") };
    r
}

/// NXDOMAIN for the next hop: the TU gets `Event::Timeout` for the transaction at once, the
/// event of an unreachable hop, on which a proxy answers 408 and a UE fails the call.
#[tokio::test]
async fn an_unknown_name_fails_the_transaction() {
    let dns = DnsServer::start(Zone::new());
    let (a, mut events) = endpoint(&dns).await;
    let request = options(a.local_addr(), "sip:nobody.test", "z9hG4bKnx");
    let key = TransactionKey::from_sent_request(&request).expect("key");
    a.send(Command::RequestUri { request, uri: uri("sip:nobody.test") }).expect("send");
    match tokio::time::timeout(Duration::from_secs(10), events.recv()).await.expect("in time").expect("alive") {
        Event::Timeout { key: k } => assert_eq!(k, key),
        other => panic!("unexpected {other:?}"),
    }
}

/// §4.3: the first SRV target (priority 10) refuses the TCP connection; the request goes to
/// the second (priority 20), whole and over TCP, and the TU hears nothing of the refusal.
#[tokio::test]
async fn a_refused_target_fails_over_to_the_next() {
    let refusing = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let closed = refusing.local_addr().expect("addr").port();
    drop(refusing);
    let listening = tokio::net::TcpListener::bind("127.0.0.2:0").await.expect("bind");
    let open = listening.local_addr().expect("addr").port();
    let dns = DnsServer::start(
        Zone::new()
            .srv("_sip._tcp.svc.test", 10, 1, closed, "first.svc.test")
            .srv("_sip._tcp.svc.test", 20, 1, open, "second.svc.test")
            .a("first.svc.test", LO1)
            .a("second.svc.test", LO2),
    );
    let (a, mut events) = endpoint(&dns).await;
    let request = options(a.local_addr(), "sip:svc.test;transport=tcp", "z9hG4bKfail");
    a.send(Command::RequestUri { request: request.clone(), uri: uri("sip:svc.test;transport=tcp") }).expect("send");
    let (mut stream, _) = tokio::time::timeout(Duration::from_secs(10), listening.accept()).await.expect("in time").expect("accept");
    let mut framer = Framer::new(FrameLimits::default());
    let got = loop {
        use tokio::io::AsyncReadExt;
        if let Some(Frame::Message(m)) = framer.next_frame().expect("framed") {
            break *m;
        }
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await.expect("in time").expect("read");
        assert!(n > 0, "closed before a message");
        framer.push(buf.get(..n).expect("read"));
    };
    let Message::Request(got) = got else { panic!("a request") };
    assert_eq!(got.uri.to_bytes(), request.uri.to_bytes());
    let via = String::from_utf8_lossy(&got.headers.value(&mediasec_sip::core::HeaderName::Via).expect("Via")).into_owned();
    assert!(via.starts_with("SIP/2.0/TCP ") && via.contains("branch=z9hG4bKfail"), "{via}");
    assert!(events.try_recv().is_err(), "the TU was told about the refused target");
}

/// TLS to a located name (RFC 5922 §4 with RFC 3263): the certificate is verified against the
/// URI's host, not the SRV target's name. B's certificate names only `sip.secure.test`; both
/// `sips:sip.secure.test` and `sips:other.secure.test` have SRV records to `node.secure.test`
/// (B's TLS port). The first request reaches B over TLS and is answered; the second fails its
/// handshake (the certificate is not valid for `other.secure.test`): `Event::Timeout`.
#[tokio::test]
async fn tls_to_a_name_verifies_the_uri_host() {
    use mediasec_sip::core::{ResponseBuilder, StatusCode};
    use mediasec_sip::tls::{client_config, server_config, Tls, TlsServer};
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("key")).expect("ca");
    let key = KeyPair::generate().expect("key");
    let cert = CertificateParams::new(vec!["sip.secure.test".to_owned()]).expect("params").signed_by(&key, &ca).expect("cert");
    let server = TlsServer { port: 0, config: server_config(cert.pem().as_bytes(), key.serialize_pem().as_bytes(), None).expect("server config") };
    let (b, mut b_events) = Endpoint::bind_with("127.0.0.1:0".parse().expect("addr"), Config { tls: Tls { server: Some(server), client: None }, ..Config::from(timers()) }).await.expect("bind b");
    let b_tls = b.tls_addr().expect("TLS port");

    let dns = DnsServer::start(
        Zone::new()
            .srv("_sips._tcp.sip.secure.test", 10, 1, b_tls.port(), "node.secure.test")
            .srv("_sips._tcp.other.secure.test", 10, 1, b_tls.port(), "node.secure.test")
            .a("node.secure.test", LO1),
    );
    let client = client_config(ca.pem().as_bytes(), None).expect("client config");
    let config = Config { tls: Tls { server: None, client: Some(client) }, resolver: Some(Arc::new(resolver(&dns))), ..Config::from(timers()) };
    let (a, mut a_events) = Endpoint::bind_with("127.0.0.1:0".parse().expect("addr"), config).await.expect("bind a");

    let request = options(a.local_addr(), "sips:bob@sip.secure.test", "z9hG4bKtlsname");
    a.send(Command::RequestUri { request, uri: uri("sips:sip.secure.test") }).expect("send");
    let Event::Request { key, request: got, .. } = tokio::time::timeout(Duration::from_secs(10), b_events.recv()).await.expect("in time").expect("alive") else {
        panic!("a request at B")
    };
    let via = String::from_utf8_lossy(&got.headers.value(&mediasec_sip::core::HeaderName::Via).expect("Via")).into_owned();
    assert!(via.starts_with("SIP/2.0/TLS "), "{via}");
    let ok = ResponseBuilder::to_request(&got, StatusCode::new(200).expect("200"), "OK").expect("200").build();
    b.send(Command::Respond { key, response: ok }).expect("respond");
    match tokio::time::timeout(Duration::from_secs(10), a_events.recv()).await.expect("in time").expect("alive") {
        Event::Response { response, .. } => assert_eq!(response.status.code(), 200),
        other => panic!("unexpected {other:?}"),
    }

    let wrong = options(a.local_addr(), "sips:bob@other.secure.test", "z9hG4bKtlsother");
    let key = TransactionKey::from_sent_request(&wrong).expect("key");
    a.send(Command::RequestUri { request: wrong, uri: uri("sips:other.secure.test") }).expect("send");
    match tokio::time::timeout(Duration::from_secs(10), a_events.recv()).await.expect("in time").expect("alive") {
        Event::Timeout { key: k } => assert_eq!(k, key),
        other => panic!("unexpected {other:?}"),
    }
}

/// Waits for the next event, at most `secs` seconds.
async fn next_event(events: &mut mediasec_sip::udp::Events, secs: u64) -> Event {
    tokio::time::timeout(Duration::from_secs(secs), events.recv()).await.expect("in time").expect("alive")
}

/// Answers `request` (received by an endpoint as server transaction `key`) with `status`.
fn answer(endpoint: &Endpoint, key: TransactionKey, request: &Request, status: u16) {
    use mediasec_sip::core::{ResponseBuilder, StatusCode};
    let response = ResponseBuilder::to_request(request, StatusCode::new(status).expect("status"), "Reason").expect("response").build();
    endpoint.send(Command::Respond { key, response }).expect("respond");
}

fn top_branch(request: &Request) -> String {
    let via = request.headers.typed::<mediasec_sip::core::Via>().expect("Via").expect("parses");
    String::from_utf8_lossy(via.branch().expect("branch")).into_owned()
}

/// `Config::max_lookups` and `Config::locate_deadline`: with a name server that never answers
/// for two names, two locations hold the endpoint's two lookup slots; a third request, to a
/// name that does resolve, is not located at all: it fails at once (`Event::Timeout`, counted
/// as refused) while the two are still running. The two end at the deadline (`Event::Timeout`
/// each, counted), their slots are free again, and the same request to the resolvable name
/// then reaches its server and is answered.
#[tokio::test]
async fn lookups_are_capped_and_given_up_at_the_deadline() {
    let (b, mut b_events) = Endpoint::bind("127.0.0.1:0".parse().expect("addr"), timers()).await.expect("bind b");
    let dns = DnsServer::start(Zone::new().silent("slow1.test").silent("slow2.test").a("fast.test", LO1));
    let config = Config { resolver: Some(Arc::new(resolver(&dns))), max_lookups: 2, locate_deadline: Duration::from_secs(4), ..Config::from(timers()) };
    let (a, mut events) = Endpoint::bind_with("127.0.0.1:0".parse().expect("addr"), config).await.expect("bind a");
    let fast_uri = format!("sip:fast.test:{}", b.local_addr().port());

    let mut slow = Vec::new();
    for (n, name) in ["slow1.test", "slow2.test"].into_iter().enumerate() {
        let request = options(a.local_addr(), &format!("sip:{name}"), &format!("z9hG4bKslow{n}"));
        slow.push(TransactionKey::from_sent_request(&request).expect("key"));
        a.send(Command::RequestUri { request, uri: uri(&format!("sip:{name}")) }).expect("send");
    }
    let over = options(a.local_addr(), &fast_uri, "z9hG4bKover");
    let over_key = TransactionKey::from_sent_request(&over).expect("key");
    a.send(Command::RequestUri { request: over, uri: uri(&fast_uri) }).expect("send");
    match next_event(&mut events, 10).await {
        Event::Timeout { key } => assert_eq!(key, over_key, "the request over the cap fails first"),
        other => panic!("unexpected {other:?}"),
    }
    let stats = a.locate_stats();
    assert_eq!((stats.lookups_refused, stats.lookups_running, stats.deadlines_passed), (1, 2, 0), "{stats:?}");

    let mut ended = Vec::new();
    for _ in 0..2 {
        match next_event(&mut events, 20).await {
            Event::Timeout { key } => ended.push(key),
            other => panic!("unexpected {other:?}"),
        }
    }
    ended.sort_by_key(|k| format!("{k:?}"));
    slow.sort_by_key(|k| format!("{k:?}"));
    assert_eq!(ended, slow);
    let stats = a.locate_stats();
    assert_eq!((stats.lookups_refused, stats.lookups_running, stats.deadlines_passed), (1, 0, 2), "{stats:?}");

    let again = options(a.local_addr(), &fast_uri, "z9hG4bKagain");
    a.send(Command::RequestUri { request: again, uri: uri(&fast_uri) }).expect("send");
    let Event::Request { key, request, .. } = next_event(&mut b_events, 10).await else { panic!("a request at B") };
    assert_eq!(top_branch(&request), "z9hG4bKagain");
    answer(&b, key, &request, 200);
    match next_event(&mut events, 10).await {
        Event::Response { response, .. } => assert_eq!(response.status.code(), 200),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(a.locate_stats().lookups_refused, 1);
}

/// Timers with Timer F (64·T1) at 3.2 s: a UDP target that never answers fails quickly.
fn short_timers() -> Timers {
    Timers { t1: Duration::from_millis(50), t2: Duration::from_millis(400), t4: Duration::from_millis(500) }
}

/// RFC 3263 §4.3 on a timeout over UDP: the first SRV target is a UDP socket that reads
/// everything and answers nothing; the request's client transaction times out (Timer F), and
/// instead of the TU hearing of it the same request, with a new branch, goes to the second
/// target, which answers. The TU sees only the 200, under the key of the request it sent.
#[tokio::test]
async fn a_silent_udp_target_fails_over_to_the_next_with_a_new_branch() {
    let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let (b, mut b_events) = Endpoint::bind("127.0.0.2:0".parse().expect("addr"), short_timers()).await.expect("bind b");
    let dns = DnsServer::start(
        Zone::new()
            .srv("_sip._udp.pair.test", 10, 1, silent.local_addr().expect("addr").port(), "first.pair.test")
            .srv("_sip._udp.pair.test", 20, 1, b.local_addr().port(), "second.pair.test")
            .a("first.pair.test", LO1)
            .a("second.pair.test", LO2),
    );
    let config = Config { resolver: Some(Arc::new(resolver(&dns))), ..Config::from(short_timers()) };
    let (a, mut events) = Endpoint::bind_with("127.0.0.1:0".parse().expect("addr"), config).await.expect("bind a");
    let request = options(a.local_addr(), "sip:pair.test;transport=udp", "z9hG4bKsilent");
    let sent_key = TransactionKey::from_sent_request(&request).expect("key");
    a.send(Command::RequestUri { request, uri: uri("sip:pair.test;transport=udp") }).expect("send");

    let mut buf = [0u8; 4096];
    let (n, _) = tokio::time::timeout(Duration::from_secs(10), silent.recv_from(&mut buf)).await.expect("in time").expect("recv");
    let Ok(Message::Request(first)) = mediasec_sip::core::parse_datagram(buf.get(..n).expect("read").to_vec().into(), &mediasec_sip::core::Limits::datagram()) else {
        panic!("a request at the first target")
    };
    assert_eq!(top_branch(&first), "z9hG4bKsilent");

    let Event::Request { key, request: second, .. } = next_event(&mut b_events, 20).await else { panic!("a request at the second target") };
    let branch = top_branch(&second);
    assert!(branch.starts_with("z9hG4bK") && branch != "z9hG4bKsilent", "{branch}");
    let mut same = (*second).clone();
    let mut headers_of_first = first.clone();
    for r in [&mut same, &mut headers_of_first] {
        r.headers.remove_first(&mediasec_sip::core::HeaderName::Via);
    }
    assert_eq!(Message::Request(same).to_bytes(), Message::Request(headers_of_first).to_bytes(), "only the branch differs");
    answer(&b, key, &second, 200);
    match next_event(&mut events, 10).await {
        Event::Response { key, response } => {
            assert_eq!(response.status.code(), 200);
            assert_eq!(key, sent_key, "the TU's key");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(a.locate_stats().failovers, 1);
}

/// An INVITE, or the CANCEL of it (RFC 3261 §9.1: same Request-URI, top Via, From, To,
/// Call-ID and CSeq number).
fn invite(from: SocketAddr, to: &str, branch: &str, method: &str) -> Request {
    let text = format!(
        "{method} {to} SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch={branch};rport\r\nMax-Forwards: 70\r\n\
From: <sip:alice@a.test>;tag=x\r\nTo: <{to}>\r\nCall-ID: {branch}\r\nCSeq: 1 {method}\r\nContent-Length: 0\r\n\r\n"
    );
    let Ok(Message::Request(r)) = mediasec_sip::core::parse_datagram(text.into_bytes().into(), &mediasec_sip::core::Limits::datagram()) else { panic!("a request") };
    r
}

/// RFC 3263 §4.3 on a 503 (RFC 3261 §21.5.4): the first target answers the INVITE 503; the
/// INVITE goes to the second target with a new branch, and the TU never sees the 503: it sees
/// the second target's 180 under its own key. Its CANCEL, built from the INVITE it sent (the
/// old branch), reaches the second target with the branch of the INVITE it got (RFC 3261
/// §9.1), and cancels it there (487 to the TU, under its key).
#[tokio::test]
async fn a_503_fails_over_and_the_cancel_follows_the_new_branch() {
    let (c, mut c_events) = Endpoint::bind("127.0.0.1:0".parse().expect("addr"), timers()).await.expect("bind c");
    let (b, mut b_events) = Endpoint::bind("127.0.0.2:0".parse().expect("addr"), timers()).await.expect("bind b");
    let dns = DnsServer::start(
        Zone::new()
            .srv("_sip._udp.busy.test", 10, 1, c.local_addr().port(), "first.busy.test")
            .srv("_sip._udp.busy.test", 20, 1, b.local_addr().port(), "second.busy.test")
            .a("first.busy.test", LO1)
            .a("second.busy.test", LO2),
    );
    let (a, mut events) = endpoint(&dns).await;
    let target = "sip:bob@busy.test;transport=udp";
    let request = invite(a.local_addr(), target, "z9hG4bKbusy", "INVITE");
    let sent_key = TransactionKey::from_sent_request(&request).expect("key");
    a.send(Command::RequestUri { request, uri: uri(target) }).expect("send");

    let Event::Request { key, request: at_c, .. } = next_event(&mut c_events, 10).await else { panic!("the INVITE at the first target") };
    assert_eq!(top_branch(&at_c), "z9hG4bKbusy");
    answer(&c, key, &at_c, 503);

    let Event::Request { key: b_key, request: at_b, .. } = next_event(&mut b_events, 10).await else { panic!("the INVITE at the second target") };
    let branch = top_branch(&at_b);
    assert_ne!(branch, "z9hG4bKbusy");
    answer(&b, b_key.clone(), &at_b, 180);
    loop {
        match next_event(&mut events, 10).await {
            // A 100 Trying may come first (RFC 3261 §17.2.1).
            Event::Response { response, .. } if response.status.code() == 100 => {}
            Event::Response { key, response } => break assert_eq!((key, response.status.code()), (sent_key.clone(), 180), "the 503 is not the TU's"),
            other => panic!("unexpected {other:?}"),
        }
    }

    let cancel = invite(a.local_addr(), target, "z9hG4bKbusy", "CANCEL");
    let cancel_key = TransactionKey::from_sent_request(&cancel).expect("key");
    a.send(Command::RequestUri { request: cancel, uri: uri(target) }).expect("send");
    let cancelled = loop {
        match next_event(&mut b_events, 10).await {
            Event::Request { key, request, .. } if request.method == mediasec_sip::core::Method::Cancel => break (key, request),
            Event::Request { request, .. } if request.method == mediasec_sip::core::Method::Invite => {}
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(top_branch(&cancelled.1), branch, "the CANCEL names the INVITE it cancels");
    answer(&b, cancelled.0, &cancelled.1, 200);
    answer(&b, b_key, &at_b, 487);
    let mut finals = Vec::new();
    while finals.len() < 2 {
        match next_event(&mut events, 10).await {
            Event::Response { key, response } if response.status.is_final() => finals.push((key, response.status.code())),
            Event::Response { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(finals.contains(&(cancel_key, 200)) && finals.contains(&(sent_key, 487)), "{finals:?}");
    assert_eq!(a.locate_stats().failovers, 1);
}

/// `Command::StatelessUri` (an ACK for a 2xx forwarded to a host name): located, and sent to
/// the first target only. Two SRV targets share a priority with equal weights: every copy of
/// one ACK (one Call-ID) goes to the same one (RFC 3263 §4.4: the weighted draw is seeded by
/// the Call-ID), while ACKs of different calls spread over both.
#[tokio::test]
async fn a_stateless_ack_to_a_name_goes_to_one_target_per_call() {
    let x = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let y = tokio::net::UdpSocket::bind("127.0.0.2:0").await.expect("bind");
    let dns = DnsServer::start(
        Zone::new()
            .srv("_sip._udp.ack.test", 10, 50, x.local_addr().expect("addr").port(), "x.ack.test")
            .srv("_sip._udp.ack.test", 10, 50, y.local_addr().expect("addr").port(), "y.ack.test")
            .a("x.ack.test", LO1)
            .a("y.ack.test", LO2),
    );
    let (a, _events) = endpoint(&dns).await;
    let ack = |call_id: &str| {
        let text = format!(
            "ACK sip:bob@ack.test;transport=udp SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bK{call_id}\r\nMax-Forwards: 70\r\n\
From: <sip:alice@a.test>;tag=x\r\nTo: <sip:bob@ack.test>;tag=y\r\nCall-ID: {call_id}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
            a.local_addr()
        );
        let Ok(Message::Request(r)) = mediasec_sip::core::parse_datagram(text.into_bytes().into(), &mediasec_sip::core::Limits::datagram()) else { panic!("an ACK") };
        r
    };
    // Where each datagram arrived: 'x' or 'y', with its Call-ID.
    let receive = |count: usize| {
        let (x, y) = (&x, &y);
        async move {
            let mut got = Vec::new();
            let (mut bx, mut by) = ([0u8; 2048], [0u8; 2048]);
            while got.len() < count {
                let (side, n) = tokio::time::timeout(Duration::from_secs(10), async {
                    tokio::select! {
                        r = x.recv_from(&mut bx) => ('x', r.expect("recv").0),
                        r = y.recv_from(&mut by) => ('y', r.expect("recv").0),
                    }
                })
                .await
                .expect("in time");
                let bytes = if side == 'x' { bx.get(..n) } else { by.get(..n) };
                let Ok(Message::Request(r)) = mediasec_sip::core::parse_datagram(bytes.expect("read").to_vec().into(), &mediasec_sip::core::Limits::datagram()) else {
                    panic!("an ACK")
                };
                assert_eq!(r.method, mediasec_sip::core::Method::Ack);
                got.push((side, String::from_utf8_lossy(&r.headers.value(&mediasec_sip::core::HeaderName::CallId).expect("Call-ID")).into_owned()));
            }
            got
        }
    };
    for _ in 0..8 {
        a.send(Command::StatelessUri { request: ack("same-call"), uri: uri("sip:ack.test;transport=udp") }).expect("send");
    }
    let same = receive(8).await;
    assert!(same.iter().all(|(side, _)| *side == same.first().expect("one").0), "{same:?}");

    for n in 0..16 {
        a.send(Command::StatelessUri { request: ack(&format!("call-{n}")), uri: uri("sip:ack.test;transport=udp") }).expect("send");
    }
    let spread = receive(16).await;
    assert!(spread.iter().any(|(side, _)| *side == 'x') && spread.iter().any(|(side, _)| *side == 'y'), "{spread:?}");
}
