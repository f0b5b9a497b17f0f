//! The SIP layer: why `sipx-sip` was adopted (lossless parsing and editing of IMS requests,
//! RFC 3261 §17 transactions over UDP including forked 2xx answers), the body edit that
//! the IMS-ALG and the UEs make, and the endpoint over UDP, TCP and TLS (RFC 3261 §18, §26).

use bytes::Bytes;
use mediasec_sdp::{Level, Sdp};
use mediasec_sip::body::{sdp, set_sdp};
use mediasec_sip::core::transaction::Output;
use mediasec_sip::core::{
    parse_datagram, HeaderName, Limits, Message, Method, Reliability, Request, RequestBuilder, Response, ResponseBuilder, StatusCode, Timer,
    Timers, TransactionLayer, TuEvent, Uri,
};
use mediasec_sip::Error;
use proptest::prelude::*;

const SDP: &str = "v=0\r\n\
o=- 2987933615 2987933615 IN IP6 2001:db8::9\r\n\
s=-\r\n\
c=IN IP6 2001:db8::9\r\n\
t=0 0\r\n\
m=audio 3456 RTP/SAVP 97 96\r\n\
a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz|2^20|1:4\r\n\
a=rtpmap:97 AMR/8000\r\n\
a=rtpmap:96 telephone-event/8000\r\n\
a=3ge2ae:requested\r\n";

/// An IMS INVITE as a UE sends it (TS 24.229 headers, compact forms, folding, odd spacing, an
/// unknown header), with its SDP body.
fn invite_text() -> String {
    format!(
        "INVITE tel:+12125550100;phone-context=ims.example SIP/2.0\r\n\
Via: SIP/2.0/UDP [2001:db8::9]:5060;comp=sigcomp;branch=z9hG4bKnashds7\r\n\
Max-Forwards: 70\r\n\
Route: <sip:pcscf.ims.example:7531;lr;comp=sigcomp>, <sip:orig@scscf.ims.example;lr>\r\n\
P-Preferred-Identity: \"Alice\" <sip:alice@ims.example>\r\n\
P-Access-Network-Info: 3GPP-UTRAN-TDD; utran-cell-id-3gpp=23456789ABCDE\r\n\
Privacy: none\r\n\
f: <sip:alice@ims.example>;tag=171828\r\n\
To:   <tel:+12125550100>\r\n\
Call-ID: cb03a0s09a2sdfglkj490333\r\n\
CSeq: 127 INVITE\r\n\
Require: sec-agree\r\n\
Supported: 100rel, precondition,\r\n gruu\r\n\
Security-Verify: ipsec-3gpp; q=0.1; alg=hmac-sha-1-96; spi-c=98765432; spi-s=87654321; port-c=8642; port-s=7531\r\n\
Contact: <sip:alice@[2001:db8::9]:5060;comp=sigcomp>;+g.3gpp.icsi-ref=\"urn%3Aurn-7%3A3gpp-service.ims.icsi.mmtel\"\r\n\
X-Unknown-Header:   keep   me  \r\n\
c: application/sdp\r\n\
l: {}\r\n\
\r\n{SDP}",
        SDP.len()
    )
}

fn parse(text: &str) -> Message {
    parse_datagram(Bytes::from(text.to_owned()), &Limits::datagram()).expect("parse")
}

#[test]
fn an_ims_invite_is_parsed_and_written_back_byte_for_byte() {
    let text = invite_text();
    let message = parse(&text);
    assert_eq!(message.to_bytes(), Bytes::from(text));
    let body = sdp(&message).expect("sdp").expect("a body");
    assert_eq!(body.to_string(), SDP);
}

#[test]
fn the_alg_edit_changes_only_the_body_and_content_length() {
    let text = invite_text();
    let mut message = parse(&text);
    let mut body = sdp(&message).expect("sdp").expect("a body");
    let removed = body.remove_attributes(Level::Media(0), |a| a.name == "crypto").expect("media 0");
    assert_eq!(removed, 1);
    let ours = "crypto:1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR";
    body.insert_attribute(Level::Media(0), ours).expect("insert");
    set_sdp(&mut message, &body).expect("set body");

    let new_body = body.to_string();
    let expected = text
        .replace(&format!("l: {}\r\n", SDP.len()), &format!("Content-Length: {}\r\n", new_body.len()))
        .replace(SDP, &new_body);
    assert_eq!(String::from_utf8_lossy(&message.to_bytes()), expected);
    // What went out parses again, with the new key and a consistent length.
    let again = parse(&expected);
    assert!(sdp(&again).expect("sdp").expect("body").to_string().contains("PS1uQCVe"));
}

#[test]
fn a_body_of_another_type_is_refused_and_left_alone() {
    let text = invite_text().replace("c: application/sdp", "c: multipart/mixed;boundary=x");
    let mut message = parse(&text);
    assert!(matches!(sdp(&message), Err(Error::NotSdp(t)) if t.starts_with("multipart/mixed")));
    let replacement = Sdp::parse(SDP);
    assert!(matches!(set_sdp(&mut message, &replacement), Err(Error::NotSdp(_))));
    assert_eq!(message.to_bytes(), Bytes::from(text));
}

#[test]
fn a_body_is_added_to_a_message_without_one() {
    let uri = Uri::parse(Bytes::from_static(b"sip:bob@ims.example")).expect("uri");
    let mut message = Message::Request(
        RequestBuilder::new(Method::Invite, uri)
            .header(HeaderName::CallId, "a84b4c76e66710")
            .expect("Call-ID")
            .build(),
    );
    set_sdp(&mut message, &Sdp::parse(SDP)).expect("set body");
    let out = String::from_utf8_lossy(&message.to_bytes()).into_owned();
    assert!(out.contains(&format!("Content-Length: {}\r\n", SDP.len())), "{out}");
    assert!(out.contains("Content-Type: application/sdp\r\n"), "{out}");
    assert!(out.ends_with(SDP));
}

fn outputs_sent(outputs: &[Output]) -> usize {
    outputs.iter().filter(|o| matches!(o, Output::Send(_))).count()
}

/// RFC 3261 §17.1.1 over UDP: Timer A retransmits the INVITE at T1, 2·T1, …; a provisional
/// response stops retransmission; under RFC 6026 every 2xx — one per fork — reaches the
/// transaction user, which is how a forked MIKEY-TICKET call sees each answering leg.
#[test]
fn invite_client_transaction_retransmits_and_delivers_every_forked_2xx() {
    let text = invite_text();
    let Message::Request(invite) = parse(&text) else { panic!("a request") };
    let mut layer = TransactionLayer::new(Timers::default());
    let (key, outputs) = layer.send_request(invite, Reliability::Unreliable).expect("client transaction");
    assert_eq!(outputs_sent(&outputs), 1);
    let a = outputs
        .iter()
        .find_map(|o| match o {
            Output::SetTimer { timer: Timer::A, after } => Some(*after),
            _ => None,
        })
        .expect("Timer A");
    let retransmit = layer.on_timer(&key, Timer::A);
    assert_eq!(outputs_sent(&retransmit), 1, "Timer A retransmits the INVITE");
    let doubled = retransmit.iter().find_map(|o| match o {
        Output::SetTimer { timer: Timer::A, after } => Some(*after),
        _ => None,
    });
    assert_eq!(doubled, Some(a * 2), "Timer A doubles");

    let original = layer.client_request(&key).expect("in flight").clone();
    let answer = |code: u16, tag: &str| {
        let status = StatusCode::new(code).expect("status");
        let response = ResponseBuilder::to_request(&original, status, "x").expect("response");
        let mut response = response.build();
        let to = format!("<tel:+12125550100>;tag={tag}");
        response.headers.remove_all(&HeaderName::To);
        response.headers.push(mediasec_sip::core::Header::build(HeaderName::To, to).expect("To"));
        Message::Response(response)
    };
    let mut delivered = Vec::new();
    for (code, tag) in [(180, "fork-a"), (200, "fork-a"), (200, "fork-b")] {
        match layer.receive(answer(code, tag), Reliability::Unreliable) {
            mediasec_sip::core::transaction::Dispatch::Matched { outputs, .. } => {
                for o in outputs {
                    if let Output::ToTu(event) = o
                        && let TuEvent::Response(r) = *event
                    {
                        delivered.push(r.status.code());
                    }
                }
            }
            other => panic!("{code} from {tag} did not match the transaction: {other:?}"),
        }
    }
    assert_eq!(delivered, vec![180, 200, 200], "both forked 2xx reach the TU");
}

proptest! {
    /// Arbitrary bytes never panic the parser or the body reader.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        if let Ok(message) = parse_datagram(Bytes::from(bytes), &Limits::datagram()) {
            let _ = sdp(&message);
        }
    }

    /// Whatever SDP is set, the message re-parses with that body and a matching length.
    #[test]
    fn set_body_round_trips(extra in proptest::collection::vec("[a-z]{1,12}:[ -~]{0,40}", 0..8)) {
        let mut body = Sdp::parse(SDP);
        for a in &extra {
            body.insert_attribute(Level::Media(0), a).expect("insert");
        }
        let mut message = parse(&invite_text());
        set_sdp(&mut message, &body).expect("set");
        let again = parse_datagram(message.to_bytes(), &Limits::datagram()).expect("reparse");
        prop_assert_eq!(sdp(&again).expect("sdp").expect("body").to_string(), body.to_string());
    }
}

mod dialogs {
    use super::*;
    use mediasec_sip::dialog::{Dialog, DialogId};

    const INVITE: &str = "INVITE sip:bob@b.example SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5071;branch=z9hG4bKa1;rport\r\n\
Max-Forwards: 70\r\n\
From: \"Alice\" <sip:alice@a.example>;tag=al1\r\n\
To: <sip:bob@b.example>\r\n\
Call-ID: d1@127.0.0.1\r\n\
CSeq: 10 INVITE\r\n\
Record-Route: <sip:127.0.0.1:5062;lr>, <sip:127.0.0.1:5061;lr>\r\n\
Contact: <sip:alice@127.0.0.1:5071>\r\n\
Content-Length: 0\r\n\r\n";

    fn ok_for(invite: &Request) -> Response {
        let mut r = ResponseBuilder::to_request(invite, StatusCode::new(200).expect("200"), "OK").expect("200").build();
        r.headers.remove_all(&HeaderName::To);
        r.headers.push(mediasec_sip::core::Header::build(HeaderName::To, "<sip:bob@b.example>;tag=bo1").expect("To"));
        r.headers.push(mediasec_sip::core::Header::build(HeaderName::RecordRoute, "<sip:127.0.0.1:5062;lr>").expect("RR"));
        r.headers.push(mediasec_sip::core::Header::build(HeaderName::RecordRoute, "<sip:127.0.0.1:5061;lr>").expect("RR"));
        r.headers.push(mediasec_sip::core::Header::build(HeaderName::Contact, "<sip:bob@127.0.0.1:5081>").expect("Contact"));
        r
    }

    fn text(r: &Request) -> String {
        String::from_utf8_lossy(&Message::Request(r.clone()).to_bytes()).into_owned()
    }

    /// RFC 3261 §12.1.2 and §12.2.1.1: the UAC's route set is the 2xx's Record-Route reversed,
    /// the BYE goes to the first route with the next CSeq, the tags in place and the
    /// Request-URI = the callee's Contact; the ACK keeps the INVITE's CSeq number.
    #[test]
    fn uac_dialog_builds_in_dialog_requests() {
        let Message::Request(invite) = parse(INVITE) else { panic!("request") };
        let mut d = Dialog::uac(&invite, &ok_for(&invite)).expect("dialog");
        assert_eq!(d.id(), &DialogId { call_id: "d1@127.0.0.1".into(), local_tag: "al1".into(), remote_tag: "bo1".into() });
        assert_eq!(d.next_hop(), Some("127.0.0.1:5061".parse().expect("addr")));
        let ack = text(&d.ack(10, "SIP/2.0/UDP 127.0.0.1:5071;branch=z9hG4bKa2").expect("ack"));
        assert!(ack.starts_with("ACK sip:bob@127.0.0.1:5081 SIP/2.0\r\n"), "{ack}");
        assert!(ack.contains("CSeq: 10 ACK\r\n"), "{ack}");
        let bye = text(&d.request(Method::Bye, "SIP/2.0/UDP 127.0.0.1:5071;branch=z9hG4bKa3").expect("bye"));
        assert!(bye.starts_with("BYE sip:bob@127.0.0.1:5081 SIP/2.0\r\n"), "{bye}");
        let routes: Vec<&str> = bye.lines().filter(|l| l.starts_with("Route:")).collect();
        assert_eq!(routes, ["Route: <sip:127.0.0.1:5061;lr>", "Route: <sip:127.0.0.1:5062;lr>"]);
        assert!(bye.contains("From: \"Alice\" <sip:alice@a.example>;tag=al1\r\n"), "{bye}");
        assert!(bye.contains("To: <sip:bob@b.example>;tag=bo1\r\n"), "{bye}");
        assert!(bye.contains("CSeq: 11 BYE\r\n"), "{bye}");
    }

    /// RFC 3261 §12.1.1 and §12.2.2: the UAS keeps Record-Route in order, refuses a CSeq that
    /// does not increase, and a re-INVITE's Contact refreshes the remote target.
    #[test]
    fn uas_dialog_orders_cseq_and_refreshes_target() {
        let Message::Request(invite) = parse(INVITE) else { panic!("request") };
        let mut d = Dialog::uas(&invite, "bo1").expect("dialog");
        assert_eq!(d.id().local_tag, "bo1");
        assert_eq!(d.next_hop(), Some("127.0.0.1:5062".parse().expect("addr")));
        let bye = text(&d.request(Method::Bye, "SIP/2.0/UDP 127.0.0.1:5081;branch=z9hG4bKb1").expect("bye"));
        assert!(bye.contains("From: <sip:bob@b.example>;tag=bo1\r\n"), "{bye}");
        assert!(bye.contains("To: \"Alice\" <sip:alice@a.example>;tag=al1\r\n"), "{bye}");
        let stale = parse(&INVITE.replace("CSeq: 10 INVITE", "CSeq: 9 INVITE"));
        let Message::Request(stale) = stale else { panic!("request") };
        assert!(matches!(d.receive_request(&stale), Err(Error::CSeqOrder { last: 10, got: 9 })));
        let reinvite = INVITE.replace("CSeq: 10 INVITE", "CSeq: 11 INVITE").replace("127.0.0.1:5071>", "127.0.0.1:6000>");
        let Message::Request(reinvite) = parse(&reinvite) else { panic!("request") };
        d.receive_request(&reinvite).expect("in order");
        assert_eq!(d.remote_target().to_bytes(), "sip:alice@127.0.0.1:6000");
    }
}

mod endpoint {
    use super::*;
    use mediasec_sip::stream::{Frame, FrameLimits, Framer};
    use mediasec_sip::udp::{Command, Config, Endpoint, Event, Events, OverloadStats, TcpStats, Transactions, OVERLOAD_RETRY_AFTER_SECS};
    use std::net::SocketAddr;
    use std::time::Duration;

    fn timers() -> Timers {
        Timers { t1: Duration::from_millis(40), t2: Duration::from_millis(200), t4: Duration::from_millis(500) }
    }

    async fn next(rx: &mut Events) -> Event {
        tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.expect("event in time").expect("endpoint alive")
    }

    /// Two endpoints over real UDP on loopback: an INVITE creates a server transaction at the
    /// callee, its 2xx reaches the caller and is retransmitted (RFC 3261 §13.3.1.4) until the
    /// caller's ACK arrives; after the ACK no further 2xx comes.
    #[tokio::test]
    async fn invite_2xx_is_retransmitted_until_the_ack() {
        let any = "127.0.0.1:0".parse().expect("addr");
        let (a, mut a_rx) = Endpoint::bind(any, timers()).await.expect("bind a");
        let (b, mut b_rx) = Endpoint::bind(any, timers()).await.expect("bind b");
        let invite = dialogs_invite(a.local_addr());
        a.send(Command::Request { request: invite, to: b.local_addr() }).expect("send");
        let Event::Request { key, request, source } = next(&mut b_rx).await else { panic!("a request") };
        assert_eq!(source, a.local_addr());
        let ok = ResponseBuilder::to_request(&request, StatusCode::new(200).expect("200"), "OK").expect("200").build();
        b.send(Command::Respond2xx { key, response: ok }).expect("respond");
        let mut oks = 0;
        while oks < 3 {
            match next(&mut a_rx).await {
                Event::Response { response, .. } => {
                    assert_eq!(response.status.code(), 200);
                    oks += 1;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        let invite = *request;
        let mut ack = RequestBuilder::new(Method::Ack, invite.uri.clone());
        for name in [HeaderName::Via, HeaderName::From, HeaderName::To, HeaderName::CallId] {
            ack = ack.header(name.clone(), invite.headers.value(&name).expect("header").into_owned()).expect("h");
        }
        let ack = ack.cseq(1, &Method::Ack).expect("cseq").build();
        a.send(Command::Stateless { message: Message::Request(ack), to: b.local_addr() }).expect("ack");
        assert!(matches!(next(&mut b_rx).await, Event::Ack { .. }));
        // Drain what was in flight, then nothing more arrives for several intervals.
        tokio::time::sleep(Duration::from_millis(100)).await;
        while a_rx.try_recv().is_ok() {}
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(a_rx.try_recv().is_err(), "2xx retransmitted after the ACK");
    }

    fn dialogs_invite(from: SocketAddr) -> Request {
        sized_request("INVITE", "z9hG4bKe1", from, 0)
    }

    /// A request from `from` with a body of `body` bytes (so a chosen size on the wire).
    fn sized_request(method: &str, branch: &str, from: SocketAddr, body: usize) -> Request {
        let text = format!(
            "{method} sip:bob@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch={branch};rport\r\nMax-Forwards: 70\r\n\
From: <sip:alice@a.example>;tag=x\r\nTo: <sip:bob@b.example>\r\nCall-ID: {branch}\r\nCSeq: 1 {method}\r\n\
Contact: <sip:alice@{from}>\r\nContent-Type: text/plain\r\nContent-Length: {body}\r\n\r\n{}",
            "b".repeat(body)
        );
        let Message::Request(r) = parse(&text) else { panic!("request") };
        r
    }

    fn top_via(r: &Request) -> String {
        String::from_utf8_lossy(&r.headers.value(&HeaderName::Via).expect("Via")).into_owned()
    }

    fn response_text(request: &Request, code: u16) -> String {
        let r = ResponseBuilder::to_request(request, StatusCode::new(code).expect("status"), "X").expect("response").build();
        String::from_utf8_lossy(&Message::Response(r).to_bytes()).into_owned()
    }

    /// A peer that is not our endpoint: a UDP socket and a TCP listener on one port, to see
    /// exactly which transport each message used.
    struct RawPeer {
        udp: tokio::net::UdpSocket,
        tcp: tokio::net::TcpListener,
    }

    impl RawPeer {
        async fn bind() -> Self {
            loop {
                let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("udp");
                if let Ok(tcp) = tokio::net::TcpListener::bind(udp.local_addr().expect("addr")).await {
                    return Self { udp, tcp };
                }
            }
        }

        fn addr(&self) -> SocketAddr {
            self.udp.local_addr().expect("addr")
        }
    }

    /// Reads from `stream` until the framer yields a message.
    async fn read_message(stream: &mut tokio::net::TcpStream, framer: &mut Framer) -> Message {
        use tokio::io::AsyncReadExt;
        loop {
            if let Some(frame) = framer.next_frame().expect("framed") {
                let Frame::Message(m) = frame else { continue };
                return *m;
            }
            let mut buf = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await.expect("in time").expect("read");
            assert!(n > 0, "connection closed before a message");
            framer.push(buf.get(..n).expect("read bytes"));
        }
    }

    /// RFC 3261 §18.1.1 against a raw peer: a small request arrives over UDP as sent; a
    /// 2 000-byte INVITE arrives over TCP with its top Via saying TCP and is not retransmitted
    /// (reliable, no Timer A); two responses in one TCP segment both reach the caller; a second
    /// large request reuses the connection; a response split across two segments is framed.
    #[tokio::test]
    async fn a_large_request_goes_over_tcp_and_a_small_one_over_udp() {
        let (a, mut a_rx) = Endpoint::bind("127.0.0.1:0".parse().expect("addr"), timers()).await.expect("bind a");
        let peer = RawPeer::bind().await;

        let small = sized_request("OPTIONS", "z9hG4bKsmall", a.local_addr(), 100);
        a.send(Command::Request { request: small.clone(), to: peer.addr() }).expect("send");
        let mut buf = [0u8; 4096];
        let (n, from) = tokio::time::timeout(Duration::from_secs(5), peer.udp.recv_from(&mut buf)).await.expect("in time").expect("udp");
        assert_eq!(from, a.local_addr());
        assert_eq!(buf.get(..n).expect("datagram"), Message::Request(small.clone()).to_bytes().as_ref());
        peer.udp.send_to(response_text(&small, 200).as_bytes(), from).await.expect("answer");
        match next(&mut a_rx).await {
            Event::Response { response, .. } => assert_eq!(response.status.code(), 200),
            other => panic!("unexpected {other:?}"),
        }
        // Drain the OPTIONS retransmissions that crossed the answer.
        tokio::time::sleep(Duration::from_millis(50)).await;
        while peer.udp.try_recv_from(&mut buf).is_ok() {}

        let invite = sized_request("INVITE", "z9hG4bKlarge", a.local_addr(), 1500);
        assert!(Message::Request(invite.clone()).to_bytes().len() >= 2000 - 300);
        a.send(Command::Request { request: invite.clone(), to: peer.addr() }).expect("send");
        let (mut stream, from) = tokio::time::timeout(Duration::from_secs(5), peer.tcp.accept()).await.expect("in time").expect("accept");
        assert_eq!(from, a.local_addr(), "connected from the SIP port, as UDP is sent");
        let mut framer = Framer::new(FrameLimits::default());
        let Message::Request(got) = read_message(&mut stream, &mut framer).await else { panic!("a request") };
        assert_eq!(top_via(&got), top_via(&invite).replace("SIP/2.0/UDP", "SIP/2.0/TCP"));
        assert_eq!(got.body(), invite.body());
        // Reliable: after several T1 nothing more came, over either transport.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(peer.udp.try_recv_from(&mut buf).is_err(), "nothing over UDP");
        assert_eq!(framer.pending(), 0);
        {
            let mut probe = [0u8; 64];
            assert!(stream.try_read(&mut probe).is_err(), "INVITE retransmitted over TCP");
        }

        // 100 and 180 in one segment.
        use tokio::io::AsyncWriteExt;
        let both = format!("{}{}", response_text(&got, 100), response_text(&got, 180));
        stream.write_all(both.as_bytes()).await.expect("write");
        for code in [100, 180] {
            match next(&mut a_rx).await {
                Event::Response { response, .. } => assert_eq!(response.status.code(), code),
                other => panic!("unexpected {other:?}"),
            }
        }

        // A second large request on the same connection; its 200 arrives in two halves.
        let message = sized_request("MESSAGE", "z9hG4bKsecond", a.local_addr(), 1500);
        a.send(Command::Request { request: message, to: peer.addr() }).expect("send");
        let Message::Request(second) = read_message(&mut stream, &mut framer).await else { panic!("a request") };
        assert_eq!(second.method, Method::Message);
        assert!(tokio::time::timeout(Duration::from_millis(200), peer.tcp.accept()).await.is_err(), "no second connection");
        let ok = response_text(&second, 200);
        let (head, tail) = ok.split_at(ok.len() / 2);
        stream.write_all(head.as_bytes()).await.expect("write");
        tokio::time::sleep(Duration::from_millis(50)).await;
        stream.write_all(tail.as_bytes()).await.expect("write");
        match next(&mut a_rx).await {
            Event::Response { response, .. } => assert_eq!(response.status.code(), 200),
            other => panic!("unexpected {other:?}"),
        }
    }

    /// Endpoint to endpoint: the 2 000-byte INVITE reaches B with a TCP Via and from A's
    /// connection; B's 2xx comes back once (no retransmission over TCP, §17.2.1), and the
    /// small ACK goes over UDP.
    #[tokio::test]
    async fn endpoint_to_endpoint_invite_over_tcp() {
        let any = "127.0.0.1:0".parse().expect("addr");
        let (a, mut a_rx) = Endpoint::bind(any, timers()).await.expect("bind a");
        let (b, mut b_rx) = Endpoint::bind(any, timers()).await.expect("bind b");
        let invite = sized_request("INVITE", "z9hG4bKe2e", a.local_addr(), 1700);
        let size = Message::Request(invite.clone()).to_bytes().len();
        assert!((1900..=2100).contains(&size), "{size}");
        a.send(Command::Request { request: invite, to: b.local_addr() }).expect("send");
        let Event::Request { key, request, source } = next(&mut b_rx).await else { panic!("a request") };
        assert!(top_via(&request).starts_with("SIP/2.0/TCP "), "{}", top_via(&request));
        assert_eq!(source, a.local_addr(), "A connects from its SIP port");
        let ok = ResponseBuilder::to_request(&request, StatusCode::new(200).expect("200"), "OK").expect("200").build();
        b.send(Command::Respond2xx { key, response: ok }).expect("respond");
        match next(&mut a_rx).await {
            Event::Response { response, .. } => assert_eq!(response.status.code(), 200),
            other => panic!("unexpected {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(a_rx.try_recv().is_err(), "2xx retransmitted over TCP");

        let mut ack = RequestBuilder::new(Method::Ack, request.uri.clone());
        ack = ack.header(HeaderName::Via, format!("SIP/2.0/UDP {};branch=z9hG4bKack", a.local_addr())).expect("Via");
        for name in [HeaderName::From, HeaderName::To, HeaderName::CallId] {
            ack = ack.header(name.clone(), request.headers.value(&name).expect("header").into_owned()).expect("h");
        }
        let ack = ack.cseq(1, &Method::Ack).expect("cseq").build();
        a.send(Command::Stateless { message: Message::Request(ack), to: b.local_addr() }).expect("ack");
        let Event::Ack { request: ack, source } = next(&mut b_rx).await else { panic!("an ACK") };
        assert_eq!(source, a.local_addr(), "the small ACK over UDP");
        assert!(top_via(&ack).starts_with("SIP/2.0/UDP "));

        // The other way: B's large request reaches A over TCP, from B's SIP port.
        let bye = sized_request("BYE", "z9hG4bKback", b.local_addr(), 1700);
        b.send(Command::Request { request: bye, to: a.local_addr() }).expect("send");
        let Event::Request { request, source, .. } = next(&mut a_rx).await else { panic!("a request") };
        assert_eq!((request.method.clone(), source), (Method::Bye, b.local_addr()));
        assert!(top_via(&request).starts_with("SIP/2.0/TCP "), "{}", top_via(&request));
    }

    /// §18.2.2 and §18.3 at the server: a request written in two segments is framed; its
    /// response goes back on the same connection; a double-CRLF ping gets a CRLF pong; when
    /// the client has closed its connection, the response to its next request goes to a new
    /// connection to the Via sent-by port; a request without Content-Length gets a 400 and the
    /// connection is closed.
    #[tokio::test]
    async fn responses_go_back_on_the_connection_or_to_the_via_port() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (b, mut b_rx) = Endpoint::bind("127.0.0.1:0".parse().expect("addr"), timers()).await.expect("bind b");
        let client = RawPeer::bind().await;
        let mut stream = tokio::net::TcpStream::connect(b.local_addr()).await.expect("connect");
        let options = Message::Request(sized_request("OPTIONS", "z9hG4bKsplit", client.addr(), 10)).to_bytes();
        let (head, tail) = options.split_at(40);
        stream.write_all(head).await.expect("write");
        tokio::time::sleep(Duration::from_millis(50)).await;
        stream.write_all(tail).await.expect("write");
        let Event::Request { key, request, source } = next(&mut b_rx).await else { panic!("a request") };
        assert_eq!(source, stream.local_addr().expect("addr"));
        let ok = ResponseBuilder::to_request(&request, StatusCode::new(200).expect("200"), "OK").expect("200").build();
        b.send(Command::Respond { key, response: ok }).expect("respond");
        let mut framer = Framer::new(FrameLimits::default());
        let Message::Response(r) = read_message(&mut stream, &mut framer).await else { panic!("a response") };
        assert_eq!(r.status.code(), 200);

        stream.write_all(b"\r\n\r\n").await.expect("ping");
        let mut pong = [0u8; 8];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut pong)).await.expect("in time").expect("pong");
        assert_eq!(pong.get(..n), Some(&b"\r\n"[..]));

        // The client closes right after its request: the response reconnects to the Via port.
        let message = Message::Request(sized_request("MESSAGE", "z9hG4bKgone", client.addr(), 10)).to_bytes();
        stream.write_all(&message).await.expect("write");
        let Event::Request { key, request, .. } = next(&mut b_rx).await else { panic!("a request") };
        drop(stream);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let ok = ResponseBuilder::to_request(&request, StatusCode::new(200).expect("200"), "OK").expect("200").build();
        b.send(Command::Respond { key, response: ok }).expect("respond");
        let (mut back, from) = tokio::time::timeout(Duration::from_secs(5), client.tcp.accept()).await.expect("in time").expect("accept");
        assert_eq!(from.ip(), b.local_addr().ip());
        let Message::Response(r) = read_message(&mut back, &mut Framer::new(FrameLimits::default())).await else { panic!("a response") };
        assert_eq!((r.status.code(), r.headers.value(&HeaderName::CallId).map(|v| v.into_owned())), (200, Some(b"z9hG4bKgone".to_vec())));

        // No Content-Length on a stream: 400, then the connection closes.
        let mut stream = tokio::net::TcpStream::connect(b.local_addr()).await.expect("connect");
        let text = String::from_utf8_lossy(&message).replace("Content-Length: 10\r\n", "").replace("z9hG4bKgone", "z9hG4bKnolen");
        stream.write_all(text.as_bytes()).await.expect("write");
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut got)).await.expect("closed in time").expect("read");
        let got = String::from_utf8_lossy(&got);
        assert!(got.starts_with("SIP/2.0 400 Missing Content-Length\r\n"), "{got}");
        assert!(b_rx.try_recv().is_err(), "the unframed request reached the TU");
    }

    /// RFC 3261 §18.1.1: a request on TCP only for its size, whose connection is refused (a
    /// TCP reset), is sent again over UDP, as the TU gave it, and the TU hears nothing of it.
    #[tokio::test]
    async fn a_refused_connection_falls_back_to_udp() {
        let (a, mut a_rx) = Endpoint::bind("127.0.0.1:0".parse().expect("addr"), timers()).await.expect("bind a");
        let udp_only = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("udp");
        let invite = sized_request("INVITE", "z9hG4bKrefused", a.local_addr(), 1500);
        a.send(Command::Request { request: invite.clone(), to: udp_only.local_addr().expect("addr") }).expect("send");
        let mut buf = vec![0u8; 65_535];
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), udp_only.recv_from(&mut buf)).await.expect("in time").expect("udp");
        assert_eq!(buf.get(..n).expect("datagram"), Message::Request(invite).to_bytes().as_ref());
        assert!(a_rx.try_recv().is_err(), "the TU was told about the TCP attempt");
    }

    /// A TCP connection that fails — here a peer whose response cannot be framed (no
    /// Content-Length) — fails its client transaction at once with a transport error
    /// (`Event::Timeout`), long before 64·T1.
    #[tokio::test]
    async fn a_failed_connection_is_a_transport_error() {
        use tokio::io::AsyncWriteExt;
        let slow = Timers { t1: Duration::from_millis(500), t2: Duration::from_secs(4), t4: Duration::from_secs(5) };
        let (a, mut a_rx) = Endpoint::bind("127.0.0.1:0".parse().expect("addr"), slow).await.expect("bind a");
        let peer = RawPeer::bind().await;
        let invite = sized_request("INVITE", "z9hG4bKbroken", a.local_addr(), 1500);
        let key = mediasec_sip::core::TransactionKey::from_sent_request(&invite).expect("key");
        let started = std::time::Instant::now();
        a.send(Command::Request { request: invite, to: peer.addr() }).expect("send");
        let (mut stream, _) = tokio::time::timeout(Duration::from_secs(5), peer.tcp.accept()).await.expect("in time").expect("accept");
        let Message::Request(got) = read_message(&mut stream, &mut Framer::new(FrameLimits::default())).await else { panic!("a request") };
        let unframed = response_text(&got, 100).replace("Content-Length: 0\r\n", "");
        stream.write_all(unframed.as_bytes()).await.expect("write");
        match next(&mut a_rx).await {
            Event::Timeout { key: k } => assert_eq!(k, key),
            other => panic!("unexpected {other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(5), "a transport error, not Timer B");
    }

    /// A BYE from `from` in a dialog (its `To` carries a tag), as text.
    fn in_dialog_bye(branch: &str, from: SocketAddr) -> String {
        String::from_utf8_lossy(&Message::Request(sized_request("BYE", branch, from, 0)).to_bytes()).replace("To: <sip:bob@b.example>", "To: <sip:bob@b.example>;tag=b")
    }

    /// After an overload has passed: a new OPTIONS (branch and Call-ID `branch`) from `peer`
    /// reaches the TU.
    async fn delivered_again(peer: &RawPeer, b: &Endpoint, rx: &mut Events, branch: &str) {
        let options = Message::Request(sized_request("OPTIONS", branch, peer.addr(), 0)).to_bytes();
        peer.udp.send_to(&options, b.local_addr()).await.expect("send");
        let Event::Request { request, .. } = next(rx).await else { panic!("delivered again") };
        assert_eq!(request.headers.value(&HeaderName::CallId).as_deref(), Some(branch.as_bytes()));
    }

    /// A TU that falls behind (RFC 3261 §21.5.4): with a queue of 4 events that the TU does not
    /// read, three new requests are queued and the fourth and later ones are answered 503 with
    /// `Retry-After` by the endpoint; a retransmission of a refused request gets the 503 again
    /// from its transaction, not the TU; an in-dialog BYE still takes the reserved room, and
    /// the response to the endpoint's own client transaction waits for room rather than being
    /// lost; a stray response with the queue full is dropped and counted. Draining the queue
    /// yields exactly the three requests, the BYE and the response, and a new request is then
    /// delivered again.
    #[tokio::test]
    async fn a_tu_that_falls_behind_gets_503_for_new_requests_and_keeps_every_response() {
        let config = Config { tu_queue_events: 4, ..Config::from(timers()) };
        let (b, mut b_rx) = Endpoint::bind_with("127.0.0.1:0".parse().expect("addr"), config).await.expect("bind b");
        let peer = RawPeer::bind().await;
        let mut buf = vec![0u8; 65_535];
        // The next response at the peer; retransmissions of B's MESSAGE (Timer E) are skipped.
        let mut receive = async |peer: &RawPeer, want_request: bool| -> Message {
            loop {
                let (n, _) = tokio::time::timeout(Duration::from_secs(5), peer.udp.recv_from(&mut buf)).await.expect("in time").expect("recv");
                let message = parse(&String::from_utf8_lossy(buf.get(..n).expect("datagram")));
                if want_request == matches!(message, Message::Request(_)) {
                    return message;
                }
            }
        };
        // B's own client transaction towards the peer, answered later.
        let ours = sized_request("MESSAGE", "z9hG4bKours", b.local_addr(), 0);
        b.send(Command::Request { request: ours, to: peer.addr() }).expect("send");
        let Message::Request(ours) = receive(&peer, true).await else { panic!("our MESSAGE") };

        let mut refused = Vec::new();
        for i in 0..6 {
            let options = Message::Request(sized_request("OPTIONS", &format!("z9hG4bKflood{i}"), peer.addr(), 0)).to_bytes();
            peer.udp.send_to(&options, b.local_addr()).await.expect("send");
            if i >= 3 {
                let Message::Response(r) = receive(&peer, false).await else { panic!("a response") };
                assert_eq!(r.status.code(), 503, "request {i}");
                assert_eq!(r.headers.value(&HeaderName::RetryAfter).as_deref(), Some(OVERLOAD_RETRY_AFTER_SECS.to_string().as_bytes()));
                refused.push(options);
            } else {
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        }
        // The retransmission of a refused request is absorbed by its transaction.
        peer.udp.send_to(refused.first().expect("refused"), b.local_addr()).await.expect("send");
        let Message::Response(again) = receive(&peer, false).await else { panic!("a response") };
        assert_eq!(again.status.code(), 503);

        // Datagrams from one socket are handled in order. An in-dialog request (a BYE: To tag)
        // belongs to a call the TU knows and takes the last free place; the response to B's own
        // transaction then waits for room, and so does everything after it.
        peer.udp.send_to(in_dialog_bye("z9hG4bKbye", peer.addr()).as_bytes(), b.local_addr()).await.expect("send");
        peer.udp.send_to(response_text(&ours, 200).as_bytes(), b.local_addr()).await.expect("send");
        let stray = sized_request("MESSAGE", "z9hG4bKnobody", b.local_addr(), 0);
        peer.udp.send_to(response_text(&stray, 200).as_bytes(), b.local_addr()).await.expect("send");
        let settled = async |expected: OverloadStats| {
            for _ in 0..100 {
                if b.overload_stats() == expected {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert_eq!(b.overload_stats(), expected);
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        settled(OverloadStats { requests_refused: 3, ..OverloadStats::default() }).await;
        // Taking one event makes room for the waiting response; the stray then finds the
        // queue full and is dropped.
        let Event::Request { request, .. } = next(&mut b_rx).await else { panic!("request 0") };
        assert_eq!(request.headers.value(&HeaderName::CallId).as_deref(), Some(b"z9hG4bKflood0".as_slice()));
        settled(OverloadStats { requests_refused: 3, events_dropped: 1, ..OverloadStats::default() }).await;
        for i in 1..3 {
            let Event::Request { request, .. } = next(&mut b_rx).await else { panic!("request {i}") };
            assert_eq!(request.headers.value(&HeaderName::CallId).as_deref(), Some(format!("z9hG4bKflood{i}").as_bytes()));
        }
        let Event::Request { request, .. } = next(&mut b_rx).await else { panic!("the BYE") };
        assert_eq!(request.method, Method::Bye);
        let Event::Response { response, .. } = next(&mut b_rx).await else { panic!("our response") };
        assert_eq!(response.status.code(), 200);
        assert!(tokio::time::timeout(Duration::from_millis(200), b_rx.recv()).await.is_err(), "nothing else was queued");

        delivered_again(&peer, &b, &mut b_rx, "z9hG4bKafter").await;
        assert_eq!(b.overload_stats().requests_refused, 3);
    }

    /// The next datagram at `peer` that parses to a message `want` accepts (others skipped).
    async fn peer_receives(peer: &RawPeer, want: impl Fn(&Message) -> bool) -> Message {
        let mut buf = vec![0u8; 65_535];
        loop {
            let (n, _) = tokio::time::timeout(Duration::from_secs(5), peer.udp.recv_from(&mut buf)).await.expect("in time").expect("recv");
            let message = parse(&String::from_utf8_lossy(buf.get(..n).expect("datagram")));
            if want(&message) {
                return message;
            }
        }
    }

    /// RFC 3261 §9.1 (a UAC that got no final response 64·T1 after its CANCEL destroys the
    /// INVITE client transaction): two INVITEs answered 180 sit in Proceeding, which has no
    /// timer (§17.1.1.2), so the endpoint holds two more client transactions. The TU gives
    /// both up (`Command::Abandon`): the table returns to where it was, nothing is sent, the
    /// TU hears nothing, and each is kept as a small record for 64·T1. A late 487 to the first
    /// is ACKed as its transaction would have (§17.1.1.3: the INVITE's Request-URI and branch,
    /// the 487's To tag, `CSeq: 1 ACK`), without a TU event; a late 200 to the second reaches
    /// the TU as a stray, for it to ACK and BYE (§13.2.2.4), and the endpoint sends no ACK of
    /// its own. After 64·T1 the records are gone too and a late 487 is only a stray.
    #[tokio::test]
    async fn a_given_up_invite_leaves_the_table_and_its_late_responses_are_handled() {
        let (a, mut a_rx) = Endpoint::bind("127.0.0.1:0".parse().expect("addr"), timers()).await.expect("bind a");
        let peer = RawPeer::bind().await;
        let before = a.transactions();
        let mut invites = Vec::new();
        for branch in ["z9hG4bKgiveup1", "z9hG4bKgiveup2"] {
            a.send(Command::Request { request: sized_request("INVITE", branch, a.local_addr(), 0), to: peer.addr() }).expect("send");
            let Message::Request(invite) = peer_receives(&peer, |m| matches!(m, Message::Request(r) if r.method == Method::Invite && top_via(r).contains(branch))).await else { panic!("INVITE") };
            let ringing = response_text(&invite, 180).replace("To: <sip:bob@b.example>", "To: <sip:bob@b.example>;tag=b");
            peer.udp.send_to(ringing.as_bytes(), a.local_addr()).await.expect("send");
            let Event::Response { key, response } = next(&mut a_rx).await else { panic!("the 180") };
            assert_eq!(response.status.code(), 180);
            invites.push((key, invite));
        }
        let settled = async |expected: Transactions| {
            for _ in 0..100 {
                if a.transactions() == expected {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert_eq!(a.transactions(), expected);
        };
        settled(Transactions { client: before.client + 2, ..before }).await;
        for (key, _) in &invites {
            a.send(Command::Abandon { key: key.clone() }).expect("abandon");
        }
        settled(Transactions { abandoned: 2, ..before }).await;
        assert!(tokio::time::timeout(Duration::from_millis(200), a_rx.recv()).await.is_err(), "the TU is told nothing");

        let [(_, first), (_, second)] = [invites.remove(0), invites.remove(0)];
        let late_487 = response_text(&first, 487).replace("To: <sip:bob@b.example>", "To: <sip:bob@b.example>;tag=b");
        peer.udp.send_to(late_487.as_bytes(), a.local_addr()).await.expect("send");
        let Message::Request(ack) = peer_receives(&peer, |m| matches!(m, Message::Request(_))).await else { panic!("ACK") };
        assert_eq!(ack.method, Method::Ack);
        assert_eq!(ack.uri.to_string(), first.uri.to_string());
        assert_eq!(top_via(&ack), top_via(&first));
        assert_eq!(ack.headers.get_all(&HeaderName::Via).count(), 1);
        assert_eq!(ack.headers.value(&HeaderName::To).as_deref(), Some(b"<sip:bob@b.example>;tag=b".as_slice()));
        for name in [HeaderName::From, HeaderName::CallId] {
            assert_eq!(ack.headers.value(&name), first.headers.value(&name), "{name}");
        }
        assert_eq!(ack.headers.value(&HeaderName::CSeq).as_deref(), Some(b"1 ACK".as_slice()));
        assert!(tokio::time::timeout(Duration::from_millis(200), a_rx.recv()).await.is_err(), "the ACKed 487 is not the TU's");

        let late_200 = response_text(&second, 200).replace("To: <sip:bob@b.example>", "To: <sip:bob@b.example>;tag=b");
        peer.udp.send_to(late_200.as_bytes(), a.local_addr()).await.expect("send");
        let Event::Stray { message, .. } = next(&mut a_rx).await else { panic!("the 200 as a stray") };
        assert!(matches!(*message, Message::Response(ref r) if r.status.code() == 200));
        let mut buf = vec![0u8; 65_535];
        assert!(tokio::time::timeout(Duration::from_millis(200), peer.udp.recv_from(&mut buf)).await.is_err(), "the 2xx's ACK is the TU's");

        // 64·T1 = 2.56 s with these timers.
        tokio::time::sleep(timers().t1 * 64 + Duration::from_millis(200)).await;
        settled(before).await;
        peer.udp.send_to(late_487.as_bytes(), a.local_addr()).await.expect("send");
        let Event::Stray { message, .. } = next(&mut a_rx).await else { panic!("the 487 as a stray") };
        assert!(matches!(*message, Message::Response(ref r) if r.status.code() == 487));
        assert!(tokio::time::timeout(Duration::from_millis(200), peer.udp.recv_from(&mut buf)).await.is_err(), "no ACK without the record");
    }

    /// The endpoint task as the bottleneck (docs/sip.md §1.1): the task is held — four
    /// in-dialog BYEs fill a TU queue of 4 that the TU does not read, and a fifth waits for
    /// room, so nothing more is read from the socket — while a raw peer fills the UDP receive
    /// queue past the high-water mark (60 % of the buffer, above the 50 % mark this test sets; the default is 90 %) with new
    /// OPTIONS and INVITEs, then sends one more in-dialog BYE; nothing is dropped by the
    /// kernel. Once the TU reads again, requests read while the queue is above the mark
    /// (sampled at every datagram here) are answered 503 with `Retry-After` statelessly: no
    /// server transaction, no TU event, both methods refused; the in-dialog BYE is still
    /// delivered to the TU. What the counters say matches what the peer saw.
    #[tokio::test]
    async fn a_deep_udp_queue_gets_new_requests_503_while_in_dialog_ones_go_on() {
        let config = Config { tu_queue_events: 4, udp_queue_sample_every: 1, udp_queue_high_water: 50, ..Config::from(timers()) };
        let (b, mut b_rx) = Endpoint::bind_with("127.0.0.1:0".parse().expect("addr"), config).await.expect("bind b");
        if b.udp_queue().is_none() {
            assert!(std::env::var_os("MEDIASEC_REQUIRE_PEERS").is_none(), "the UDP receive queue cannot be read here");
            println!("skipped: the UDP receive queue cannot be read here (no SO_MEMINFO)");
            return;
        }
        let peer = RawPeer::bind().await;
        for i in 0..5 {
            peer.udp.send_to(in_dialog_bye(&format!("z9hG4bKhold{i}"), peer.addr()).as_bytes(), b.local_addr()).await.expect("send");
        }
        for _ in 0..100 {
            if b.udp_queue().is_some_and(|q| q.queued == 0) && b.transactions().server == 5 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(b.transactions().server, 5, "the fifth BYE is read and waits for room");
        let mut sent = 0;
        while !b.udp_queue().expect("queue").above(60) {
            let method = if sent % 2 == 0 { "OPTIONS" } else { "INVITE" };
            let request = Message::Request(sized_request(method, &format!("z9hG4bKdeep{sent}"), peer.addr(), 0)).to_bytes();
            peer.udp.send_to(&request, b.local_addr()).await.expect("send");
            sent += 1;
            assert!(sent < 2000, "the queue never filled: {:?}", b.udp_queue());
        }
        peer.udp.send_to(in_dialog_bye("z9hG4bKdeepbye", peer.addr()).as_bytes(), b.local_addr()).await.expect("send");
        let full = b.udp_queue().expect("queue");
        assert!(full.queued < full.capacity && full.drops == 0, "nothing dropped by the kernel: {full:?}");

        // The TU reads again: its four BYEs, the waiting fifth, then whatever the endpoint
        // passes on, up to the last BYE.
        let mut delivered = 0;
        loop {
            let Event::Request { request, .. } = next(&mut b_rx).await else { panic!("a request") };
            let call_id = String::from_utf8_lossy(&request.headers.value(&HeaderName::CallId).expect("Call-ID")).into_owned();
            if call_id == "z9hG4bKdeepbye" {
                assert_eq!(request.method, Method::Bye);
                break;
            }
            if call_id.starts_with("z9hG4bKdeep") {
                delivered += 1;
            }
        }
        let stats = b.overload_stats();
        let server = b.transactions().server;
        println!("{sent} requests queued ({full:?}): {} refused early, {} by the TU queue, {delivered} delivered", stats.udp_queue_deep, stats.requests_refused);
        assert!(stats.udp_queue_deep > 0, "{stats:?}");
        assert_eq!(stats.udp_queue_deep + stats.requests_refused + delivered, sent, "every request refused or delivered: {stats:?}");
        assert_eq!(server as u64, 6 + delivered + stats.requests_refused, "the stateless 503s made no transaction");

        let mut refused: std::collections::HashMap<String, Method> = std::collections::HashMap::new();
        let mut buf = vec![0u8; 65_535];
        while let Ok(Ok((n, _))) = tokio::time::timeout(Duration::from_millis(300), peer.udp.recv_from(&mut buf)).await {
            let Message::Response(r) = parse(&String::from_utf8_lossy(buf.get(..n).expect("datagram"))) else { continue };
            if r.status.code() == 503 {
                assert_eq!(r.headers.value(&HeaderName::RetryAfter).as_deref(), Some(OVERLOAD_RETRY_AFTER_SECS.to_string().as_bytes()));
                let call_id = String::from_utf8_lossy(&r.headers.value(&HeaderName::CallId).expect("Call-ID")).into_owned();
                let cseq = r.headers.typed::<mediasec_sip::core::CSeq>().expect("CSeq").expect("CSeq");
                refused.insert(call_id, cseq.method);
            }
        }
        assert_eq!(refused.len() as u64, stats.udp_queue_deep + stats.requests_refused, "one 503 per refused request");
        for method in [Method::Options, Method::Invite] {
            assert!(refused.values().any(|m| *m == method), "{method} refused: {refused:?}");
        }
    }

    /// The transaction table's bound: with `max_transactions` 2, two OPTIONS are delivered
    /// and held (the TU answers neither yet); a third is answered 503 with `Retry-After`
    /// statelessly — no transaction, so its retransmission is refused afresh and counted
    /// again — while an in-dialog BYE is still delivered. Once the first two are answered and
    /// their transactions have ended (Timer J, 64·T1 over UDP), a new request is delivered.
    #[tokio::test]
    async fn at_the_transaction_bound_new_requests_get_a_stateless_503() {
        let config = Config { max_transactions: 2, ..Config::from(timers()) };
        let (b, mut b_rx) = Endpoint::bind_with("127.0.0.1:0".parse().expect("addr"), config).await.expect("bind b");
        let peer = RawPeer::bind().await;
        let mut buf = vec![0u8; 65_535];
        let options = |i: usize| Message::Request(sized_request("OPTIONS", &format!("z9hG4bKcap{i}"), peer.addr(), 0)).to_bytes();
        let mut held = Vec::new();
        for i in 0..2 {
            peer.udp.send_to(&options(i), b.local_addr()).await.expect("send");
            let Event::Request { key, request, .. } = next(&mut b_rx).await else { panic!("request {i}") };
            held.push((key, request));
        }
        for attempt in 1..=2 {
            peer.udp.send_to(&options(2), b.local_addr()).await.expect("send");
            let (n, _) = tokio::time::timeout(Duration::from_secs(5), peer.udp.recv_from(&mut buf)).await.expect("in time").expect("recv");
            let Message::Response(r) = parse(&String::from_utf8_lossy(buf.get(..n).expect("datagram"))) else { panic!("a response") };
            assert_eq!((r.status.code(), r.headers.value(&HeaderName::RetryAfter).is_some()), (503, true));
            assert_eq!(b.overload_stats(), OverloadStats { transactions_full: attempt, ..OverloadStats::default() });
        }
        peer.udp.send_to(in_dialog_bye("z9hG4bKcapbye", peer.addr()).as_bytes(), b.local_addr()).await.expect("send");
        let Event::Request { key, request, .. } = next(&mut b_rx).await else { panic!("the BYE") };
        assert_eq!(request.method, Method::Bye);
        held.push((key, request));
        for (key, request) in held {
            let ok = ResponseBuilder::to_request(&request, StatusCode::new(200).expect("200"), "OK").expect("200").build();
            b.send(Command::Respond { key, response: ok }).expect("respond");
        }
        // Timer J: 64·T1 = 2.56 s with these timers.
        tokio::time::sleep(timers().t1 * 64 + Duration::from_millis(300)).await;
        delivered_again(&peer, &b, &mut b_rx, "z9hG4bKcap3").await;
        assert_eq!(b.overload_stats().transactions_full, 2);
    }

    /// RFC 3261 §18 with a cap of two TCP connections: a third incoming connection is closed
    /// at once, unread, and counted, while the first two keep carrying requests and responses;
    /// a send that needs a new connection at the cap fails as a refused connection does, so a
    /// request on TCP only for its size goes over UDP as the TU gave it (§18.1.1).
    #[tokio::test]
    async fn the_connection_cap_closes_one_more_and_the_first_ones_keep_working() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let config = Config { max_tcp_connections: 2, ..Config::from(timers()) };
        let (b, mut b_rx) = Endpoint::bind_with("127.0.0.1:0".parse().expect("addr"), config).await.expect("bind b");
        let client = RawPeer::bind().await;
        let mut open = Vec::new();
        for i in 0..2 {
            let mut stream = tokio::net::TcpStream::connect(b.local_addr()).await.expect("connect");
            let options = sized_request("OPTIONS", &format!("z9hG4bKcap{i}"), client.addr(), 10);
            stream.write_all(&Message::Request(options).to_bytes()).await.expect("write");
            let Event::Request { source, .. } = next(&mut b_rx).await else { panic!("a request") };
            assert_eq!(source, stream.local_addr().expect("addr"));
            open.push(stream);
        }

        let mut third = tokio::net::TcpStream::connect(b.local_addr()).await.expect("the kernel accepts");
        let mut got = Vec::new();
        match tokio::time::timeout(Duration::from_secs(5), third.read_to_end(&mut got)).await.expect("closed in time") {
            Ok(_) => assert!(got.is_empty(), "{got:?}"),
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        }
        assert_eq!(b.tcp_stats(), TcpStats { accepts_refused: 1, ..TcpStats::default() });

        // Both first connections still work, in both directions.
        for (i, stream) in open.iter_mut().enumerate() {
            let message = sized_request("MESSAGE", &format!("z9hG4bKkept{i}"), client.addr(), 10);
            stream.write_all(&Message::Request(message).to_bytes()).await.expect("write");
            let Event::Request { key, request, .. } = next(&mut b_rx).await else { panic!("a request") };
            let ok = ResponseBuilder::to_request(&request, StatusCode::new(200).expect("200"), "OK").expect("200").build();
            b.send(Command::Respond { key, response: ok }).expect("respond");
            let Message::Response(r) = read_message(stream, &mut Framer::new(FrameLimits::default())).await else { panic!("a response") };
            assert_eq!(r.status.code(), 200);
            assert_eq!(r.headers.value(&HeaderName::CallId).map(|v| v.into_owned()), Some(format!("z9hG4bKkept{i}").into_bytes()));
        }

        // Outgoing at the cap: no connection, the large request goes over UDP unchanged.
        let invite = sized_request("INVITE", "z9hG4bKcapout", b.local_addr(), 1500);
        b.send(Command::Request { request: invite.clone(), to: client.addr() }).expect("send");
        let mut buf = vec![0u8; 65_535];
        let (n, from) = tokio::time::timeout(Duration::from_secs(5), client.udp.recv_from(&mut buf)).await.expect("in time").expect("udp");
        assert_eq!(from, b.local_addr());
        assert_eq!(buf.get(..n).expect("datagram"), Message::Request(invite).to_bytes().as_ref());
        assert_eq!(b.tcp_stats(), TcpStats { accepts_refused: 1, connects_refused: 1, ..TcpStats::default() });
        assert!(b_rx.try_recv().is_err(), "the TU was told about the refused connection");
    }

    /// §18.4 with a bounded outbound queue: towards a peer that does not take the connection
    /// (a listener whose accept queue is full: Linux drops the SYNs, the connect hangs), a
    /// connection holds at most `tcp_queue_messages` messages; one more fails it, and each of
    /// the client transactions on it gets the transport error at once, long before 64·T1.
    #[tokio::test]
    async fn a_full_queue_is_a_transport_error() {
        let slow = Timers { t1: Duration::from_millis(500), t2: Duration::from_secs(4), t4: Duration::from_secs(5) };
        let config = Config { tcp_queue_messages: 2, ..Config::from(slow) };
        let (a, mut a_rx) = Endpoint::bind_with("127.0.0.1:0".parse().expect("addr"), config).await.expect("bind a");
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
        // A backlog of 0 holds one connection, which the filler takes.
        let listener = socket.listen(0).expect("listen");
        let to = listener.local_addr().expect("addr");
        let _filler = tokio::net::TcpStream::connect(to).await.expect("filler");

        let started = std::time::Instant::now();
        let mut keys = Vec::new();
        for i in 0..3 {
            let invite = sized_request("INVITE", &format!("z9hG4bKfull{i}"), a.local_addr(), 1500);
            keys.push(mediasec_sip::core::TransactionKey::from_sent_request(&invite).expect("key"));
            a.send(Command::Request { request: invite, to }).expect("send");
        }
        let mut failed = Vec::new();
        while failed.len() < keys.len() {
            match next(&mut a_rx).await {
                Event::Timeout { key } => failed.push(key),
                other => panic!("unexpected {other:?}"),
            }
        }
        for key in &keys {
            assert!(failed.contains(key), "{key:?} not failed");
        }
        assert!(started.elapsed() < Duration::from_secs(5), "a transport error, not Timer B");
        assert_eq!(a.tcp_stats(), TcpStats { queues_full: 1, ..TcpStats::default() });
    }

    /// A TCP stream from 127.0.0.1, or from another loopback address (Linux routes all of
    /// 127/8 on `lo`).
    async fn connect_from(ip: &str, to: SocketAddr) -> tokio::net::TcpStream {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.bind(SocketAddr::new(ip.parse().expect("ip"), 0)).expect("bind");
        socket.connect(to).await.expect("connect")
    }

    /// Expects `stream` closed by the endpoint without a byte (a FIN or a reset).
    async fn closed_unread(stream: &mut tokio::net::TcpStream) {
        use tokio::io::AsyncReadExt;
        let mut got = Vec::new();
        match tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut got)).await.expect("closed in time") {
            Ok(_) => assert!(got.is_empty(), "{got:?}"),
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        }
    }

    /// The per-peer cap (two here): a third connection from 127.0.0.1 is closed at once and
    /// counted apart from the overall cap, while one from 127.0.0.2 is accepted and carries a
    /// request; a send that needs a new connection to 127.0.0.1 fails as at the overall cap
    /// (the large request goes over UDP as the TU gave it, RFC 3261 §18.1.1).
    #[tokio::test]
    async fn one_peer_address_cannot_take_every_connection() {
        use tokio::io::AsyncWriteExt;
        let config = Config { max_tcp_connections_per_peer: 2, ..Config::from(timers()) };
        let (b, mut b_rx) = Endpoint::bind_with("127.0.0.1:0".parse().expect("addr"), config).await.expect("bind b");
        let client = RawPeer::bind().await;
        let mut open = Vec::new();
        for (i, ip) in ["127.0.0.1", "127.0.0.1", "127.0.0.2"].into_iter().enumerate() {
            if i == 2 {
                let mut third = connect_from("127.0.0.1", b.local_addr()).await;
                closed_unread(&mut third).await;
                assert_eq!(b.tcp_stats(), TcpStats { accepts_refused_per_peer: 1, ..TcpStats::default() });
            }
            let mut stream = connect_from(ip, b.local_addr()).await;
            let options = sized_request("OPTIONS", &format!("z9hG4bKperpeer{i}"), client.addr(), 10);
            stream.write_all(&Message::Request(options).to_bytes()).await.expect("write");
            let Event::Request { source, .. } = next(&mut b_rx).await else { panic!("a request") };
            assert_eq!(source, stream.local_addr().expect("addr"));
            open.push(stream);
        }

        let invite = sized_request("INVITE", "z9hG4bKperpeerout", b.local_addr(), 1500);
        b.send(Command::Request { request: invite.clone(), to: client.addr() }).expect("send");
        let mut buf = vec![0u8; 65_535];
        let (n, from) = tokio::time::timeout(Duration::from_secs(5), client.udp.recv_from(&mut buf)).await.expect("in time").expect("udp");
        assert_eq!(from, b.local_addr());
        assert_eq!(buf.get(..n).expect("datagram"), Message::Request(invite).to_bytes().as_ref());
        assert_eq!(b.tcp_stats(), TcpStats { accepts_refused_per_peer: 1, connects_refused: 1, ..TcpStats::default() });
        assert!(b_rx.try_recv().is_err(), "the TU was told about the refused connection");
    }

    /// RFC 3261 §18.3 with bounded framing: an endless header section and a body whose
    /// `Content-Length` is over the limit each get their connection closed and counted, long
    /// before the endpoint buffers them, and the TU hears of neither.
    #[tokio::test]
    async fn an_endless_header_or_a_huge_body_closes_the_connection() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (b, mut b_rx) = Endpoint::bind("127.0.0.1:0".parse().expect("addr"), timers()).await.expect("bind b");

        let mut endless = tokio::net::TcpStream::connect(b.local_addr()).await.expect("connect");
        let mut sent = 0usize;
        let line = format!("X-Junk: {}\r\n", "j".repeat(1000));
        let mut written = endless.write_all(b"OPTIONS sip:bob@127.0.0.1 SIP/2.0\r\n").await;
        // The endpoint closes once it has 16 KiB of header section; writing on then fails.
        while written.is_ok() && sent < 1024 * 1024 {
            written = endless.write_all(line.as_bytes()).await;
            sent += line.len();
        }
        let mut got = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), endless.read_to_end(&mut got)).await.expect("closed in time");
        assert!(got.is_empty(), "{got:?}");
        assert!(sent < 1024 * 1024, "1 MiB of header section taken without closing");

        let mut huge = tokio::net::TcpStream::connect(b.local_addr()).await.expect("connect");
        let client = RawPeer::bind().await;
        let text = Message::Request(sized_request("MESSAGE", "z9hG4bKhuge", client.addr(), 0)).to_bytes();
        let text = String::from_utf8_lossy(&text).replace("Content-Length: 0\r\n", "Content-Length: 100000000\r\n");
        huge.write_all(text.as_bytes()).await.expect("write");
        closed_unread(&mut huge).await;

        assert_eq!(b.tcp_stats(), TcpStats { streams_unframed: 2, ..TcpStats::default() });
        assert!(b_rx.try_recv().is_err(), "an unframed message reached the TU");
    }

    /// The TCP port must be the UDP port: when it is taken, binding says so.
    #[tokio::test]
    async fn a_taken_tcp_port_is_a_clear_error() {
        let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = taken.local_addr().expect("addr");
        match Endpoint::bind(addr, timers()).await {
            Err(e @ Error::TcpBind { .. }) => assert!(e.to_string().contains(&addr.to_string()), "{e}"),
            Err(other) => panic!("{other}"),
            Ok(_) => panic!("bound a taken TCP port"),
        }
    }

    /// SIP over TLS (RFC 3261 §26.2, RFC 5922 §7) between endpoints on loopback, with
    /// certificates made here by rcgen.
    mod tls {
        use super::*;
        use mediasec_sip::core::Uri;
        use mediasec_sip::tls::{client_config, server_config, Tls, TlsServer};
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

        type Ca = CertifiedIssuer<'static, KeyPair>;

        fn new_ca() -> Ca {
            let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("ca")
        }

        /// A certificate for `names` (an IP address string becomes an IP SAN) signed by `ca`:
        /// (chain PEM, key PEM).
        fn leaf(ca: &Ca, names: &[&str], expired: bool) -> (String, String) {
            let mut params = CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).expect("params");
            if expired {
                params.not_before = rcgen::date_time_ymd(2020, 1, 1);
                params.not_after = rcgen::date_time_ymd(2021, 1, 1);
            }
            let key = KeyPair::generate().expect("key");
            (params.signed_by(&key, ca).expect("cert").pem(), key.serialize_pem())
        }

        /// A config with a TLS server side on a free port (certificate `cert`, clients checked
        /// against `client_ca` when given) and a client side trusting `trust` (presenting
        /// `identity` when given).
        fn config(cert: Option<&(String, String)>, client_ca: Option<&Ca>, trust: Option<&Ca>, identity: Option<&(String, String)>) -> Config {
            let server = cert.map(|(chain, key)| TlsServer {
                port: 0,
                config: server_config(chain.as_bytes(), key.as_bytes(), client_ca.map(|c| c.pem()).as_deref().map(str::as_bytes)).expect("server config"),
            });
            let client = trust.map(|ca| {
                let identity = identity.map(|(c, k)| (c.as_bytes(), k.as_bytes()));
                client_config(ca.pem().as_bytes(), identity).expect("client config")
            });
            Config { tls: Tls { server, client }, ..Config::from(timers()) }
        }

        async fn bind(config: Config) -> (Endpoint, Events) {
            Endpoint::bind_with("127.0.0.1:0".parse().expect("addr"), config).await.expect("bind")
        }

        /// A small request (well under the §18.1.1 size) from `from` to `uri`.
        fn request_to(method: &str, branch: &str, from: SocketAddr, uri: &str) -> Request {
            let mut r = sized_request(method, branch, from, 10);
            r.uri = Uri::parse(Bytes::from(uri.to_owned())).expect("uri");
            r
        }

        async fn answer(endpoint: &Endpoint, rx: &mut Events) -> Request {
            let Event::Request { key, request, .. } = next(rx).await else { panic!("a request") };
            let ok = ResponseBuilder::to_request(&request, StatusCode::new(200).expect("200"), "OK").expect("200").build();
            endpoint.send(Command::Respond { key, response: ok }).expect("respond");
            *request
        }

        async fn answered(rx: &mut Events) {
            match next(rx).await {
                Event::Response { response, .. } => assert_eq!(response.status.code(), 200),
                other => panic!("unexpected {other:?}"),
            }
        }

        /// A request to a `sips:` URI goes over TLS with its top Via saying so and reaches B
        /// from A's SIP port; the 200 comes back on that connection; B's request the other way
        /// (a `;transport=tls` URI at A's address) reuses it, as does A's next request: one
        /// TLS connection on each side, established once (RFC 3261 §18.2.2, §26.2).
        #[tokio::test]
        async fn requests_and_responses_both_ways_over_one_tls_connection() {
            let ca = new_ca();
            let b_cert = leaf(&ca, &["127.0.0.1"], false);
            let (a, mut a_rx) = bind(config(None, None, Some(&ca), None)).await;
            let (b, mut b_rx) = bind(config(Some(&b_cert), None, Some(&ca), None)).await;
            assert_eq!(a.tls_addr(), None);
            let b_tls = b.tls_addr().expect("TLS port");
            assert_ne!(b_tls, b.local_addr());

            let first = request_to("MESSAGE", "z9hG4bKtls1", a.local_addr(), &format!("sips:bob@{b_tls}"));
            a.send(Command::Request { request: first, to: b_tls }).expect("send");
            let Event::Request { key, request, source } = next(&mut b_rx).await else { panic!("a request") };
            assert!(top_via(&request).starts_with("SIP/2.0/TLS "), "{}", top_via(&request));
            assert_eq!(source, a.local_addr(), "A connects from its SIP port");
            let ok = ResponseBuilder::to_request(&request, StatusCode::new(200).expect("200"), "OK").expect("200").build();
            b.send(Command::Respond { key, response: ok }).expect("respond");
            answered(&mut a_rx).await;

            // B to A on the connection A opened (A has no TLS port of its own).
            let back = request_to("OPTIONS", "z9hG4bKtls2", b.local_addr(), &format!("sip:alice@{};transport=tls", a.local_addr()));
            b.send(Command::Request { request: back, to: a.local_addr() }).expect("send");
            let request = answer(&a, &mut a_rx).await;
            assert!(top_via(&request).starts_with("SIP/2.0/TLS "), "{}", top_via(&request));
            answered(&mut b_rx).await;

            let again = request_to("MESSAGE", "z9hG4bKtls3", a.local_addr(), &format!("sips:bob@{b_tls}"));
            a.send(Command::Request { request: again, to: b_tls }).expect("send");
            answer(&b, &mut b_rx).await;
            answered(&mut a_rx).await;

            for stats in [a.tcp_stats(), b.tcp_stats()] {
                assert_eq!(stats, TcpStats { tls_connections: 1, ..TcpStats::default() });
            }
        }

        /// RFC 5626 §3.5.1 keep-alives: A (a UE: TLS client only) opens a TLS connection to B
        /// (its P-CSCF) and pings it every 64·T1 / 5 with `Command::KeepAlive`. Past one and a
        /// half idle periods of 64·T1, B's request to A (an incoming call) still finds the
        /// connection: one TLS connection each side, none failed. Without the pings (a second
        /// pair, same steps) the connection closes as idle and B, which cannot connect to a
        /// UE, gets a transport error.
        #[tokio::test]
        async fn keep_alives_hold_a_ues_tls_connection_open_for_incoming_requests() {
            let ca = new_ca();
            let b_cert = leaf(&ca, &["127.0.0.1"], false);
            for ping in [true, false] {
                let (a, mut a_rx) = bind(config(None, None, Some(&ca), None)).await;
                let (b, mut b_rx) = bind(config(Some(&b_cert), None, None, None)).await;
                let b_tls = b.tls_addr().expect("TLS port");
                let first = request_to("MESSAGE", "z9hG4bKka1", a.local_addr(), &format!("sips:bob@{b_tls}"));
                a.send(Command::Request { request: first, to: b_tls }).expect("send");
                answer(&b, &mut b_rx).await;
                answered(&mut a_rx).await;

                let idle = timers().t1 * 64;
                let until = std::time::Instant::now() + idle + idle / 2;
                while std::time::Instant::now() < until {
                    if ping {
                        a.send(Command::KeepAlive { to: b_tls }).expect("keep-alive");
                    }
                    tokio::time::sleep(idle / 5).await;
                }
                let back = request_to("OPTIONS", "z9hG4bKka2", b.local_addr(), &format!("sip:alice@{};transport=tls", a.local_addr()));
                let key = mediasec_sip::core::TransactionKey::from_sent_request(&back).expect("key");
                b.send(Command::Request { request: back, to: a.local_addr() }).expect("send");
                if ping {
                    answer(&a, &mut a_rx).await;
                    answered(&mut b_rx).await;
                    for stats in [a.tcp_stats(), b.tcp_stats()] {
                        assert_eq!(stats, TcpStats { tls_connections: 1, ..TcpStats::default() });
                    }
                } else {
                    match next(&mut b_rx).await {
                        Event::Timeout { key: k } => assert_eq!(k, key, "B cannot reach A once the connection is gone"),
                        other => panic!("unexpected {other:?}"),
                    }
                    assert!(a_rx.try_recv().is_err(), "A got a request without a connection");
                }
            }
        }

        /// RFC 5922 §7: the client verifies the server as the host of the URI it routes on. A
        /// certificate for another name, from a CA the client does not trust, or expired fails
        /// the handshake: the client transaction gets its transport error at once (long before
        /// Timer F) and nothing reaches B. A certificate for the DNS name in the `Route` (sent
        /// as SNI) passes.
        #[tokio::test]
        async fn a_server_that_cannot_prove_the_name_fails_the_transaction() {
            let ca = new_ca();
            let stranger = new_ca();
            let cases = [
                ("wrong name", leaf(&ca, &["pcscf.ims.example"], false), "127.0.0.1"),
                ("untrusted CA", leaf(&stranger, &["127.0.0.1"], false), "127.0.0.1"),
                ("expired", leaf(&ca, &["127.0.0.1"], true), "127.0.0.1"),
                ("right DNS name", leaf(&ca, &["pcscf.ims.example"], false), "pcscf.ims.example"),
            ];
            for (i, (case, cert, host)) in cases.into_iter().enumerate() {
                let (a, mut a_rx) = bind(config(None, None, Some(&ca), None)).await;
                let (b, mut b_rx) = bind(config(Some(&cert), None, None, None)).await;
                let b_tls = b.tls_addr().expect("TLS port");
                let branch = format!("z9hG4bKname{i}");
                let mut request = request_to("MESSAGE", &branch, a.local_addr(), "sip:bob@b.example");
                let route = format!("<sip:{host}:{};transport=tls;lr>", b_tls.port());
                request.headers.push(mediasec_sip::core::Header::build(HeaderName::Route, route).expect("Route"));
                let key = mediasec_sip::core::TransactionKey::from_sent_request(&request).expect("key");
                let started = std::time::Instant::now();
                a.send(Command::Request { request, to: b_tls }).expect("send");
                if case == "right DNS name" {
                    answer(&b, &mut b_rx).await;
                    answered(&mut a_rx).await;
                    assert_eq!(a.tcp_stats().tls_connections, 1, "{case}");
                    continue;
                }
                match next(&mut a_rx).await {
                    Event::Timeout { key: k } => assert_eq!(k, key, "{case}"),
                    other => panic!("{case}: unexpected {other:?}"),
                }
                assert!(started.elapsed() < timers().t1 * 32, "{case}: a transport error, not Timer F");
                assert_eq!(a.tcp_stats(), TcpStats { tls_handshakes_failed: 1, ..TcpStats::default() }, "{case}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                assert!(b_rx.try_recv().is_err(), "{case}: delivered to B");
                assert_eq!(b.tcp_stats().tls_connections, 0, "{case}");
            }
        }

        /// Plaintext SIP sent to the TLS port gets no SIP answer: the handshake fails, the
        /// connection closes and is counted, the TU hears nothing. A connection that never
        /// starts its handshake is closed after the handshake bound (64·T1 here).
        #[tokio::test]
        async fn plaintext_or_silence_on_the_tls_port_is_refused() {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let ca = new_ca();
            let (b, mut b_rx) = bind(config(Some(&leaf(&ca, &["127.0.0.1"], false)), None, None, None)).await;
            let b_tls = b.tls_addr().expect("TLS port");
            let client = RawPeer::bind().await;
            let mut plain = tokio::net::TcpStream::connect(b_tls).await.expect("connect");
            plain.write_all(&Message::Request(sized_request("OPTIONS", "z9hG4bKplain", client.addr(), 0)).to_bytes()).await.expect("write");
            let mut got = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut got)).await.expect("closed in time");
            assert!(!got.starts_with(b"SIP/2.0"), "{}", String::from_utf8_lossy(&got));
            assert_eq!(b.tcp_stats(), TcpStats { tls_handshakes_failed: 1, ..TcpStats::default() });

            let mut silent = tokio::net::TcpStream::connect(b_tls).await.expect("connect");
            let started = std::time::Instant::now();
            let mut got = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(10), silent.read_to_end(&mut got)).await.expect("closed in time");
            let waited = started.elapsed();
            assert!(waited >= timers().timeout() - Duration::from_millis(200) && waited < timers().timeout() * 2, "{waited:?}");
            assert_eq!(b.tcp_stats(), TcpStats { tls_handshakes_failed: 2, ..TcpStats::default() });
            assert!(b_rx.try_recv().is_err(), "the TU heard of it");
        }

        /// Mutual TLS (core nodes): a server with client roots refuses a client without a
        /// certificate (a transport error for its transaction, nothing delivered) and takes one
        /// whose certificate chains to those roots.
        #[tokio::test]
        async fn mutual_tls_requires_a_client_certificate() {
            let ca = new_ca();
            let node_ca = new_ca();
            let (b, mut b_rx) = bind(config(Some(&leaf(&ca, &["127.0.0.1"], false)), Some(&node_ca), None, None)).await;
            let b_tls = b.tls_addr().expect("TLS port");
            let uri = format!("sips:scscf@{b_tls}");

            let (anonymous, mut anonymous_rx) = bind(config(None, None, Some(&ca), None)).await;
            anonymous.send(Command::Request { request: request_to("OPTIONS", "z9hG4bKanon", anonymous.local_addr(), &uri), to: b_tls }).expect("send");
            assert!(matches!(next(&mut anonymous_rx).await, Event::Timeout { .. }));
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert!(b_rx.try_recv().is_err(), "delivered without a client certificate");
            assert_eq!(b.tcp_stats().tls_handshakes_failed, 1);

            let identity = leaf(&node_ca, &["127.0.0.1"], false);
            let (node, mut node_rx) = bind(config(None, None, Some(&ca), Some(&identity))).await;
            node.send(Command::Request { request: request_to("OPTIONS", "z9hG4bKnode", node.local_addr(), &uri), to: b_tls }).expect("send");
            answer(&b, &mut b_rx).await;
            answered(&mut node_rx).await;
            assert_eq!(b.tcp_stats(), TcpStats { tls_connections: 1, tls_handshakes_failed: 1, ..TcpStats::default() });
        }

        /// A request that must be secured never goes over UDP or TCP: without a TLS client side
        /// it fails at once; towards a peer that speaks no TLS, what reaches its TCP port is a
        /// TLS ClientHello (not SIP), its close fails the transaction, and no UDP datagram is
        /// ever sent — neither the §18.1.1 size rule nor the UDP fallback applies.
        #[tokio::test]
        async fn a_secured_request_never_goes_over_udp_or_tcp() {
            use tokio::io::AsyncReadExt;
            let peer = RawPeer::bind().await;
            let (plain, mut plain_rx) = bind(Config::from(timers())).await;
            plain.send(Command::Request { request: request_to("OPTIONS", "z9hG4bKnoclient", plain.local_addr(), &format!("sips:x@{}", peer.addr())), to: peer.addr() }).expect("send");
            assert!(matches!(next(&mut plain_rx).await, Event::Timeout { .. }));

            let ca = new_ca();
            let (a, mut a_rx) = bind(config(None, None, Some(&ca), None)).await;
            let large = sized_request("INVITE", "z9hG4bKlargetls", a.local_addr(), 1500);
            let mut large = large;
            large.uri = Uri::parse(Bytes::from(format!("sip:x@{};transport=tls", peer.addr()))).expect("uri");
            a.send(Command::Request { request: large, to: peer.addr() }).expect("send");
            let (mut stream, _) = tokio::time::timeout(Duration::from_secs(5), peer.tcp.accept()).await.expect("in time").expect("accept");
            let mut first = [0u8; 1];
            stream.read_exact(&mut first).await.expect("read");
            assert_eq!(first[0], 0x16, "a TLS handshake record, not SIP");
            drop(stream);
            assert!(matches!(next(&mut a_rx).await, Event::Timeout { .. }));
            tokio::time::sleep(Duration::from_millis(300)).await;
            let mut buf = [0u8; 2048];
            assert!(peer.udp.try_recv_from(&mut buf).is_err(), "sent over UDP");
            assert!(tokio::time::timeout(Duration::from_millis(100), peer.tcp.accept()).await.is_err(), "a second (plain) connection");
        }
    }
}

/// Every committed seed of `fuzz/corpus/sip_stream` through the fuzz target's function.
#[test]
fn fuzz_corpus_replay() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/corpus/sip_stream");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).expect("corpus") {
        let data = std::fs::read(entry.expect("entry").path()).expect("seed");
        mediasec_sip::fuzzing::stream(&data);
        n += 1;
    }
    assert!(n >= 10, "seed corpus has {n} files");
}
