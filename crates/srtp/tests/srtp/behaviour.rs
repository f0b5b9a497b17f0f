//! Behaviour required by RFC 3711 and the issue: replay, ROC, MKI, limits, session params.

use mediasec_srtp::{Direction, Error, MasterKey, Policy, Session, Suite};

use crate::util::{rtcp, rtp, session};

const KEY: [u8; 46] = [0x42; 46];

fn key(suite: Suite) -> &'static [u8] {
    &KEY[..suite.inline_key_len()]
}

#[test]
fn every_suite_round_trips_rtp_and_rtcp() {
    for suite in Suite::ALL {
        let (mut tx, mut rx) = (session(suite, key(suite)), session(suite, key(suite)));
        let plain = rtp(1, 7, 2, true, b"hello world");
        let mut p = plain.clone();
        tx.protect_rtp_vec(&mut p).expect("protect");
        assert_eq!(p.len(), plain.len() + suite.srtp_tag_len(), "{suite}");
        if suite.is_discouraged() {
            assert_eq!(&p[..plain.len()], &plain[..], "NULL cipher leaves the payload in clear");
        } else {
            assert_ne!(&p[..plain.len()], &plain[..], "{suite} encrypts");
        }
        rx.unprotect_rtp_vec(&mut p).expect("unprotect");
        assert_eq!(p, plain, "{suite}");

        let plain = rtcp(7, 1);
        let mut p = plain.clone();
        tx.protect_rtcp_vec(&mut p).expect("protect rtcp");
        assert_eq!(p.len(), plain.len() + 4 + suite.srtcp_tag_len(), "{suite}");
        rx.unprotect_rtcp_vec(&mut p).expect("unprotect rtcp");
        assert_eq!(p, plain, "{suite}");
    }
}

#[test]
fn replay_and_tampering_are_rejected_without_moving_state() {
    let suite = Suite::AesCm128HmacSha1_80;
    let (mut tx, mut rx) = (session(suite, key(suite)), session(suite, key(suite)));
    let mut first = rtp(40000, 1, 0, false, b"payload");
    tx.protect_rtp_vec(&mut first).expect("protect");
    let mut copy = first.clone();
    rx.unprotect_rtp_vec(&mut copy).expect("first time");
    let mut again = first.clone();
    assert_eq!(rx.unprotect_rtp_vec(&mut again), Err(Error::Replay));

    // A forged packet that looks like the next ROC (RFC 3711 §3.3.1 guess ROC+1) must not
    // move the ROC.
    let mut forged = rtp(100, 1, 0, false, b"payload");
    forged.extend_from_slice(&[0; 10]);
    assert_eq!(rx.unprotect_rtp(&mut forged), Err(Error::AuthFailed));
    assert_eq!(rx.roc(Direction::Inbound, 1), Some(0));

    for i in 0..first.len() {
        let mut t = first.clone();
        t[i] ^= 0x01;
        assert!(rx.unprotect_rtp_vec(&mut t).is_err(), "flipped byte {i} accepted");
    }
    // Old beyond the window.
    let mut p = rtp(40300, 1, 0, false, b"x");
    tx.protect_rtp_vec(&mut p).expect("protect");
    rx.unprotect_rtp_vec(&mut p).expect("fresh");
    let mut old = rtp(40001, 1, 0, false, b"x");
    let mut tx = session(suite, key(suite));
    tx.protect_rtp_vec(&mut old).expect("sender goes back in time");
    assert_eq!(rx.unprotect_rtp_vec(&mut old), Err(Error::TooOld));
}

#[test]
fn sender_refuses_repeated_index_unless_allowed() {
    let suite = Suite::AeadAes128Gcm;
    let mut tx = session(suite, key(suite));
    let mut p = rtp(5, 1, 0, false, b"a");
    tx.protect_rtp_vec(&mut p).expect("first");
    let mut p = rtp(5, 1, 0, false, b"a");
    assert_eq!(tx.protect_rtp_vec(&mut p), Err(Error::Replay));
    let mut policy = Policy::new(suite, MasterKey::from_inline(suite, key(suite)).expect("key"));
    policy.allow_repeat_tx = true;
    let mut tx = Session::new(&policy).expect("policy");
    for _ in 0..2 {
        let mut p = rtp(5, 1, 0, false, b"a");
        tx.protect_rtp_vec(&mut p).expect("repeat allowed");
    }
}

#[test]
fn roc_crosses_the_sequence_wrap_and_can_be_set_out_of_band() {
    let suite = Suite::AesCm128HmacSha1_32;
    let (mut tx, mut rx) = (session(suite, key(suite)), session(suite, key(suite)));
    for i in 0..2000u32 {
        let seq = (65000 + i) as u16;
        let mut p = rtp(seq, 9, 0, false, &i.to_be_bytes());
        tx.protect_rtp_vec(&mut p).expect("protect");
        rx.unprotect_rtp_vec(&mut p).expect("unprotect");
    }
    assert_eq!(tx.roc(Direction::Outbound, 9), Some(1));
    assert_eq!(rx.roc(Direction::Inbound, 9), Some(1));

    // A receiver that joins late learns the ROC out of band (as MIKEY signals it).
    let mut late = session(suite, key(suite));
    let mut p = rtp(1500, 9, 0, false, b"late");
    tx.protect_rtp_vec(&mut p).expect("protect");
    let mut q = p.clone();
    assert_eq!(late.unprotect_rtp_vec(&mut q), Err(Error::AuthFailed));
    late.set_roc(Direction::Inbound, 9, 1).expect("stream");
    late.unprotect_rtp_vec(&mut p).expect("with ROC 1");
}

#[test]
fn mki_selects_the_master_key() {
    let suite = Suite::AesCm128HmacSha1_80;
    let k1 = MasterKey::from_inline(suite, &[1; 30]).expect("key").with_mki(&[0, 1]);
    let k2 = MasterKey::from_inline(suite, &[2; 30]).expect("key").with_mki(&[0, 2]);
    let mut policy = Policy::new(suite, k1);
    policy.keys.push(k2);
    let (mut tx, mut rx) = (Session::new(&policy).expect("policy"), Session::new(&policy).expect("policy"));
    let mut a = rtp(1, 3, 0, false, b"key one");
    tx.protect_rtp_vec(&mut a).expect("protect");
    assert_eq!(&a[a.len() - 12..a.len() - 10], &[0, 1]);
    tx.set_active_mki(&[0, 2]).expect("known MKI");
    let mut b = rtp(2, 3, 0, false, b"key two");
    tx.protect_rtp_vec(&mut b).expect("protect");
    assert_eq!(&b[b.len() - 12..b.len() - 10], &[0, 2]);
    let mut c = rtcp(3, 0);
    tx.protect_rtcp_vec(&mut c).expect("protect rtcp");
    rx.unprotect_rtp_vec(&mut a).expect("key one");
    rx.unprotect_rtp_vec(&mut b).expect("key two");
    rx.unprotect_rtcp_vec(&mut c).expect("rtcp under key two");
    let mut d = rtp(4, 3, 0, false, b"x");
    tx.protect_rtp_vec(&mut d).expect("protect");
    let n = d.len();
    d[n - 11] = 9; // unknown MKI
    assert_eq!(rx.unprotect_rtp_vec(&mut d), Err(Error::UnknownMki));
    assert_eq!(tx.set_active_mki(&[9, 9]), Err(Error::UnknownMki));
}

#[test]
fn key_lifetime_is_enforced() {
    let suite = Suite::AeadAes256Gcm;
    let policy = Policy::new(suite, MasterKey::from_inline(suite, key(suite)).expect("key").with_lifetime(3));
    let mut tx = Session::new(&policy).expect("policy");
    for seq in 0..3 {
        let mut p = rtp(seq, 1, 0, false, b"x");
        tx.protect_rtp_vec(&mut p).expect("within lifetime");
    }
    let mut p = rtp(3, 1, 0, false, b"x");
    assert_eq!(tx.protect_rtp_vec(&mut p), Err(Error::KeyExhausted));
}

#[test]
fn stream_bound_is_enforced() {
    let suite = Suite::AesCm128HmacSha1_80;
    let mut policy = Policy::new(suite, MasterKey::from_inline(suite, key(suite)).expect("key"));
    policy.max_streams = 2;
    let (mut tx, mut rx) = (Session::new(&policy).expect("policy"), Session::new(&policy).expect("policy"));
    policy.max_streams = 3;
    let mut tx3 = Session::new(&policy).expect("policy");
    for ssrc in 1..=2 {
        let mut p = rtp(1, ssrc, 0, false, b"x");
        tx.protect_rtp_vec(&mut p).expect("protect");
        rx.unprotect_rtp_vec(&mut p).expect("unprotect");
    }
    let mut p = rtp(1, 3, 0, false, b"x");
    assert_eq!(tx.protect_rtp_vec(&mut p.clone()), Err(Error::StreamLimit));
    tx3.protect_rtp_vec(&mut p).expect("protect");
    assert_eq!(rx.unprotect_rtp_vec(&mut p), Err(Error::StreamLimit));
    assert_eq!(rx.stream_count(Direction::Inbound), 2);
}

#[test]
fn session_parameters_of_rfc4568() {
    let suite = Suite::AesCm128HmacSha1_80;
    let mut policy = Policy::new(suite, MasterKey::from_inline(suite, key(suite)).expect("key"));
    policy.unencrypted_srtp = true;
    policy.unencrypted_srtcp = true;
    let (mut tx, mut rx) = (Session::new(&policy).expect("policy"), Session::new(&policy).expect("policy"));
    let plain = rtp(1, 1, 0, false, b"clear text");
    let mut p = plain.clone();
    tx.protect_rtp_vec(&mut p).expect("protect");
    assert_eq!(&p[..plain.len()], &plain[..], "UNENCRYPTED_SRTP leaves the payload");
    assert_eq!(p.len(), plain.len() + 10, "but keeps the tag");
    rx.unprotect_rtp_vec(&mut p).expect("unprotect");
    let plain = rtcp(1, 5);
    let mut c = plain.clone();
    tx.protect_rtcp_vec(&mut c).expect("protect");
    assert_eq!(&c[..plain.len()], &plain[..]);
    assert_eq!(c[plain.len()] & 0x80, 0, "E flag clear");
    rx.unprotect_rtcp_vec(&mut c).expect("unprotect");

    policy.unencrypted_srtp = false;
    policy.unauthenticated_srtp = true;
    let (mut tx, mut rx) = (Session::new(&policy).expect("policy"), Session::new(&policy).expect("policy"));
    let plain = rtp(1, 1, 0, false, b"no tag");
    let mut p = plain.clone();
    tx.protect_rtp_vec(&mut p).expect("protect");
    assert_eq!(p.len(), plain.len(), "UNAUTHENTICATED_SRTP: no tag");
    rx.unprotect_rtp_vec(&mut p).expect("unprotect");
    assert_eq!(p, plain);
    // RTCP keeps its tag (TS 33.328 §5.2).
    let mut c = rtcp(1, 1);
    tx.protect_rtcp_vec(&mut c).expect("protect");
    assert_eq!(c.len(), rtcp(1, 1).len() + 14);

    let gcm = Suite::AeadAes128Gcm;
    let mut bad = Policy::new(gcm, MasterKey::from_inline(gcm, key(gcm)).expect("key"));
    bad.unauthenticated_srtp = true;
    assert!(matches!(Session::new(&bad), Err(Error::Policy(_))));
}

#[test]
fn key_derivation_rate_rekeys_per_packet_block() {
    let suite = Suite::AesCm128HmacSha1_80;
    let mut policy = Policy::new(suite, MasterKey::from_inline(suite, key(suite)).expect("key"));
    policy.kdr = 4;
    let (mut tx, mut rx) = (Session::new(&policy).expect("policy"), Session::new(&policy).expect("policy"));
    let mut plain_session = session(suite, key(suite));
    let mut differs = 0;
    for seq in 0..16u16 {
        let plain = rtp(seq, 1, 0, false, b"kdr");
        let (mut a, mut b) = (plain.clone(), plain.clone());
        tx.protect_rtp_vec(&mut a).expect("protect");
        plain_session.protect_rtp_vec(&mut b).expect("protect");
        differs += usize::from(a != b);
        rx.unprotect_rtp_vec(&mut a).expect("unprotect");
        assert_eq!(a, plain);
    }
    // r = index DIV 4 is 0 for the first four packets only (same keys as KDR 0).
    assert_eq!(differs, 12);
    for bad in [3, 1 << 25] {
        policy.kdr = bad;
        assert!(Session::new(&policy).is_err(), "KDR {bad}");
    }
}

#[test]
fn policy_validation() {
    let suite = Suite::Aes256CmHmacSha1_80;
    assert!(MasterKey::from_inline(suite, &[0; 30]).is_err());
    let mut p = Policy::new(suite, MasterKey::from_inline(suite, key(suite)).expect("key"));
    p.replay_window = 1024;
    Session::new(&p).expect("1024 window");
    p.replay_window = 32;
    assert!(Session::new(&p).is_err());
    p.replay_window = 128;
    p.keys.push(MasterKey::from_inline(suite, key(suite)).expect("key"));
    assert!(Session::new(&p).is_err(), "two keys without MKI");
    let short = Policy::new(suite, MasterKey::new(&[0; 16], &[0; 14]));
    assert!(Session::new(&short).is_err());
}

#[test]
fn buffer_too_small_is_reported() {
    let suite = Suite::AesCm128HmacSha1_80;
    let mut tx = session(suite, key(suite));
    let mut p = rtp(1, 1, 0, false, b"abc");
    let len = p.len();
    assert_eq!(tx.protect_rtp(&mut p, len), Err(Error::BufferTooSmall(len + 10)));
    assert!(tx.protect_rtp(&mut p, len + 1).is_err());
}
