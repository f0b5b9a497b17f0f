//! The SIP layer: why `sipx-sip` was adopted (lossless parsing and editing of IMS requests,
//! RFC 3261 §17 transactions over UDP including forked 2xx answers) and the body edit that
//! the IMS-ALG and the UEs make.

use bytes::Bytes;
use mediasec_sdp::{Level, Sdp};
use mediasec_sip::body::{sdp, set_sdp};
use mediasec_sip::core::transaction::Output;
use mediasec_sip::core::{
    parse_datagram, HeaderName, Limits, Message, Method, Reliability, RequestBuilder, ResponseBuilder, StatusCode, Timer,
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
