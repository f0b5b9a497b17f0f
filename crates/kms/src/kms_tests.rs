//! The KMS core with UEs in process: every Annex B path and its refusals.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use mediasec_mikey::registry::ErrorCode;
use zeroize::Zeroizing;

use super::*;
use crate::identity::Pattern;
use crate::li::LiTransferInit;
use crate::ue::{Ask, Ue};
use crate::zn::{NafKey, StaticZn};

const NOW: Duration = Duration::from_secs(1_800_000_000);
const POLICY: &str = r#"
[domain."a.example"]
may_call = ["?@a.example", "?@b.example"]
reusable = true
group_tickets = true
[domain."b.example"]
may_call = ["?@a.example", "?@b.example"]
[user."alice@a.example"]
mode3 = true
forking = true
[user."bob@a.example"]
may_call = ["alice@a.example"]
[user."dan@a.example"]
end_to_middle = ["mgw@a.example"]
"#;

fn ks(uid: &str, kms: &str) -> Vec<u8> {
    let mut k = vec![0u8; 32];
    for (i, b) in uid.bytes().chain(kms.bytes()).enumerate() {
        k[i % 32] ^= b.rotate_left(i as u32 % 7);
    }
    k
}

/// Zn answering from a table: B-TID "btid-<uid>", Ks_NAF derived from uid and KMS.
fn table(kms: &str, users: &[&str]) -> StaticZn {
    let mut z = StaticZn::default();
    for u in users {
        let impus = vec![format!("sip:{u}"), format!("tel:+1{}", u.len())];
        z.insert(format!("btid-{u}"), NafKey { ks_naf: Zeroizing::new(ks(u, kms)), impus, expiry: NOW.as_secs() + 3600 });
    }
    z
}

fn counter() -> Random {
    let c = AtomicU32::new(1);
    Box::new(move |b| {
        for x in b.iter_mut() {
            *x = (c.fetch_add(1, Ordering::Relaxed) % 251) as u8;
        }
    })
}

fn kms(fqdn: &str, domain: &str) -> Kms {
    let mut ring = KeyRing::default();
    ring.rotate(NOW.as_secs() - 100, [fqdn.len() as u8; 32]).unwrap();
    let user = |u: &str, enabled| crate::users::User { uid: KmsUid::parse(u).unwrap(), enabled };
    let users = Users::new([
        user("alice@a.example", true),
        user("bob@a.example", true),
        user("dan@a.example", true),
        user("carol@b.example", true),
        user("eve@a.example", false),
        user("mgw@a.example", true),
    ]);
    Kms::new(KmsConfig { fqdn: fqdn.into(), domain: domain.into(), skew: 30 }, Policies::from_toml(POLICY).unwrap(), users, ring, counter())
}

fn ue(uid: &str, kms: &str) -> Ue {
    Ue::new(KmsUid::parse(uid).unwrap(), kms, format!("btid-{uid}"), &ks(uid, kms), 30)
}

struct World {
    a: Kms,
    b: Kms,
    zn_a: StaticZn,
    zn_b: StaticZn,
}

/// Zk between the two test KMSs, calling the peer's core directly.
struct Link<'w>(&'w World, AtomicU32);

impl Peers for Link<'_> {
    fn knows(&self, kms: &str) -> bool {
        kms == "kms.a.example" || kms == "kms.b.example"
    }
    fn resolve<'a>(&'a self, kms: &'a str, request: Vec<u8>) -> PeerFuture<'a> {
        Box::pin(async move {
            self.1.fetch_add(1, Ordering::SeqCst);
            let (k, zn, from) = if kms == "kms.a.example" { (&self.0.a, &self.0.zn_a, "b.example") } else { (&self.0.b, &self.0.zn_b, "a.example") };
            match k.peer_resolve(from, &request, NOW, zn).await {
                Reply::Response(b) | Reply::Error { message: b, .. } => Ok(b),
                other => Err(KmsError::Zk(format!("{other:?}"))),
            }
        })
    }
}

fn world() -> World {
    World {
        a: kms("kms.a.example", "a.example"),
        b: kms("kms.b.example", "b.example"),
        zn_a: table("kms.a.example", &["alice@a.example", "bob@a.example", "dan@a.example", "eve@a.example", "frank@a.example", "mgw@a.example"]),
        zn_b: table("kms.b.example", &["carol@b.example"]),
    }
}

fn ok(r: Reply) -> Vec<u8> {
    match r {
        Reply::Response(b) => b,
        other => panic!("expected a response, got {other:?}"),
    }
}

fn err_code(r: Reply) -> ErrorCode {
    match r {
        Reply::Error { code, message, .. } => {
            assert_eq!(Message::decode(&message).unwrap().header.data_type, DataType::ERROR);
            code
        }
        other => panic!("expected a MIKEY error, got {other:?}"),
    }
}

fn ask(to: &str, reusable: bool) -> Ask {
    Ask { recipients: vec![Pattern::parse(to).unwrap()], reusable, forking: false, lifetime: 600 }
}

/// One call: initiator `i` (at `ki`) to `r` (at `kr`); returns the responder identity the
/// initiator authenticated. Checks both sides derived the same SRTP keys.
async fn call(w: &World, i: &mut Ue, held: &crate::ue::HeldTicket, r: &mut Ue, kr: &Kms, znr: &StaticZn, t: u64) -> Result<KmsUid, KmsError> {
    Ok(call_msgs(w, i, held, r, kr, znr, t).await?.who)
}

/// What a call leaves: the authenticated responder, TRANSFER_INIT, TRANSFER_RESP and the
/// initiator's / responder's SRTP policies.
struct Call {
    who: KmsUid,
    ti: Vec<u8>,
    tr: Vec<u8>,
    m_i: crate::ue::Media,
    m_r: crate::ue::Media,
}

async fn call_msgs(w: &World, i: &mut Ue, held: &crate::ue::HeldTicket, r: &mut Ue, kr: &Kms, znr: &StaticZn, t: u64) -> Result<Call, KmsError> {
    let now = NOW + Duration::from_secs(t);
    let (ti, pt) = i.transfer_init(held, &r.uid.clone(), 0x1000 + t as u32, 0xaaaa, now, [t as u8; 16])?;
    let resolved = match r.cached_resolve(&ti, now) {
        Some(c) => c,
        None => {
            let (ri, pr) = r.resolve_init(&ti, 0x2000 + t as u32, now, [0x40 + t as u8; 16])?;
            let link = Link(w, AtomicU32::new(0));
            let rr = match kr.ticket_resolve(&ri, now, znr, &link).await {
                Reply::Response(b) | Reply::Error { message: b, .. } => b,
                other => return Err(KmsError::Http(format!("{other:?}"))),
            };
            r.on_resolve_resp(pr, &rr, now)?
        }
    };
    let (tr, m_r) = r.transfer_resp(&resolved, &ti, 0xbbbb, now)?;
    let (who, m_i) = i.on_transfer_resp(&pt, &tr, now)?;
    assert_eq!(*m_i.initiator_stream.master_key, *m_r.initiator_stream.master_key);
    assert_eq!(*m_i.responder_stream.master_salt, *m_r.responder_stream.master_salt);
    assert_ne!(*m_i.initiator_stream.master_key, *m_i.responder_stream.master_key);
    assert_eq!((m_i.initiator_stream.ssrc, m_i.responder_stream.ssrc), (0xaaaa, 0xbbbb));
    Ok(Call { who, ti, tr, m_i, m_r })
}

async fn request(k: &Kms, zn: &StaticZn, u: &mut Ue, a: &Ask, t: u64) -> Result<crate::ue::HeldTicket, KmsError> {
    let now = NOW + Duration::from_secs(t);
    let (req, p) = u.request_init(a, 0x3000 + t as u32, now, [0x60 + t as u8; 16])?;
    let resp = match k.ticket_request(&req, now, zn).await {
        Reply::Response(b) | Reply::Error { message: b, .. } => b,
        other => return Err(KmsError::Http(format!("{other:?}"))),
    };
    u.on_request_resp(p, &resp, now)
}

#[tokio::test]
async fn same_domain_reusable_and_group_calls() {
    let w = world();
    let (mut alice, mut bob, mut dan) = (ue("alice@a.example", "kms.a.example"), ue("bob@a.example", "kms.a.example"), ue("dan@a.example", "kms.a.example"));
    let held = request(&w.a, &w.zn_a, &mut alice, &ask("bob@a.example", false), 0).await.unwrap();
    assert!(!held.reusable() && !held.changed());
    assert_eq!(call(&w, &mut alice, &held, &mut bob, &w.a, &w.zn_a, 1).await.unwrap().as_str(), "bob@a.example");
    assert!(alice.cached_ticket(bob_uid(), NOW).is_none(), "single-use ticket not cached");

    // Reusable: granted by the a.example policy; the second call contacts no KMS.
    let held = request(&w.a, &w.zn_a, &mut alice, &ask("bob@a.example", true), 2).await.unwrap();
    assert!(held.reusable());
    call(&w, &mut alice, &held, &mut bob, &w.a, &w.zn_a, 3).await.unwrap();
    let again = alice.cached_ticket(bob_uid(), NOW + Duration::from_secs(4)).expect("cached ticket");
    let (ti, _) = alice.transfer_init(&again, bob_uid(), 9, 1, NOW + Duration::from_secs(4), [4; 16]).unwrap();
    assert!(bob.cached_resolve(&ti, NOW + Duration::from_secs(4)).is_some(), "responder cache hit");
    let down = kms("kms.a.example", "a.example");
    down.set_ring(KeyRing::default());
    call(&w, &mut alice, &again, &mut bob, &down, &w.zn_a, 5).await.expect("no KMS needed for a cached ticket");

    // Group ticket: any member of ?@a.example may resolve, and is named in TRANSFER_RESP.
    let held = request(&w.a, &w.zn_a, &mut alice, &ask("?@a.example", false), 6).await.unwrap();
    assert_eq!(call(&w, &mut alice, &held, &mut dan, &w.a, &w.zn_a, 7).await.unwrap().as_str(), "dan@a.example");
    // Bob's policy forbids group tickets (b/c his user rule lists only alice).
    let e = request(&w.a, &w.zn_a, &mut bob, &ask("?@a.example", false), 8).await.err().unwrap();
    assert!(matches!(e, KmsError::Mikey { code: ErrorCode::INVALID_TPPAR, .. }), "{e}");
}

fn bob_uid() -> &'static KmsUid {
    static B: std::sync::OnceLock<KmsUid> = std::sync::OnceLock::new();
    B.get_or_init(|| KmsUid::parse("bob@a.example").unwrap())
}

#[tokio::test]
async fn cross_domain_via_zk_and_refusals() {
    let w = world();
    let (mut alice, mut carol) = (ue("alice@a.example", "kms.a.example"), ue("carol@b.example", "kms.b.example"));
    let held = request(&w.a, &w.zn_a, &mut alice, &ask("carol@b.example", false), 0).await.unwrap();
    assert_eq!(call(&w, &mut alice, &held, &mut carol, &w.b, &w.zn_b, 1).await.unwrap().as_str(), "carol@b.example");

    // KMS_R with no Zk peers: a clear MIKEY error.
    let now = NOW + Duration::from_secs(2);
    let (ti, _) = alice.transfer_init(&held, &carol.uid.clone(), 5, 5, now, [2; 16]).unwrap();
    let (ri, _) = carol.resolve_init(&ti, 6, now, [3; 16]).unwrap();
    assert_eq!(err_code(w.b.ticket_resolve(&ri, now, &w.zn_b, &NoPeers).await), ErrorCode::INVALID_TICKET);

    // A peer KMS vouches only for its own domain's users.
    let fwd = |csb: u32| {
        Message {
            header: tk::header(DataType::RESOLVE_INIT_PSK, true, csb, CsIdMap::Empty { n_cs: 0 }),
            payloads: vec![
                Payload::T(ntp(now)),
                tk::randr(RandRole::RESPONDER, &[1; 16]),
                tk::idr(IdRole::RESPONDER, IdType::NAI, b"carol@b.example"),
                Payload::Ticket(held.ticket.clone()),
            ],
        }
        .encode()
        .unwrap()
    };
    assert_eq!(err_code(w.a.peer_resolve("c.example", &fwd(9), now, &w.zn_a).await), ErrorCode::INVALID_ID);
    let r = w.a.peer_resolve("b.example", &fwd(10), now, &w.zn_a).await;
    assert!(matches!(r, Reply::Response(_)), "{r:?}");

    // A user of the issuing domain not named by the ticket cannot resolve.
    let mut bob = ue("bob@a.example", "kms.a.example");
    let (ri, _) = bob.resolve_init(&ti, 7, now, [4; 16]).unwrap();
    assert_eq!(err_code(w.a.ticket_resolve(&ri, now, &w.zn_a, &NoPeers).await), ErrorCode::INVALID_ID);
    let _ = &mut bob;
}

#[tokio::test]
async fn policy_identity_and_authentication_refusals() {
    let w = world();
    let mut bob = ue("bob@a.example", "kms.a.example");
    // Policy: bob may call alice only.
    let e = request(&w.a, &w.zn_a, &mut bob, &ask("carol@b.example", false), 0).await.err().unwrap();
    assert!(matches!(&e, KmsError::Mikey { code: ErrorCode::INVALID_TPPAR, reason } if reason.contains("an authenticated")), "{e}");
    // IDRi not among the IMPUs of the B-TID.
    let mut liar = Ue::new(KmsUid::parse("alice@a.example").unwrap(), "kms.a.example", "btid-bob@a.example", &ks("bob@a.example", "kms.a.example"), 30);
    let e = request(&w.a, &w.zn_a, &mut liar, &ask("bob@a.example", false), 1).await.err().unwrap();
    assert!(matches!(e, KmsError::Mikey { code: ErrorCode::INVALID_ID, .. }), "{e}");
    // Unknown B-TID, wrong key.
    let mut ghost = Ue::new(KmsUid::parse("alice@a.example").unwrap(), "kms.a.example", "btid-nobody", &[0; 32], 30);
    let e = request(&w.a, &w.zn_a, &mut ghost, &ask("bob@a.example", false), 2).await.err().unwrap();
    assert!(matches!(&e, KmsError::Mikey { code: ErrorCode::AUTH_FAILURE, reason } if reason.contains("unauthenticated")), "{e}");
    let mut wrong = Ue::new(KmsUid::parse("alice@a.example").unwrap(), "kms.a.example", "btid-alice@a.example", &[0; 32], 30);
    let e = request(&w.a, &w.zn_a, &mut wrong, &ask("bob@a.example", false), 3).await.err().unwrap();
    assert!(matches!(e, KmsError::Mikey { code: ErrorCode::AUTH_FAILURE, .. }), "{e}");
    // Disabled and unprovisioned users get nothing, and cannot resolve either.
    for who in ["eve@a.example", "frank@a.example"] {
        let e = request(&w.a, &w.zn_a, &mut ue(who, "kms.a.example"), &ask("bob@a.example", false), 3).await.err().unwrap();
        assert!(matches!(e, KmsError::Mikey { code: ErrorCode::INVALID_ID, .. }), "{who}: {e}");
    }
    let mut alice = ue("alice@a.example", "kms.a.example");
    let held = request(&w.a, &w.zn_a, &mut alice, &ask("?@a.example", false), 3).await.unwrap();
    let e = call(&w, &mut alice, &held, &mut ue("eve@a.example", "kms.a.example"), &w.a, &w.zn_a, 3).await.err().unwrap();
    assert!(matches!(e, KmsError::Mikey { code: ErrorCode::INVALID_ID, .. }), "{e}");
    // Replay and stale timestamps.
    let alice = ue("alice@a.example", "kms.a.example");
    let (req, _) = alice.request_init(&ask("bob@a.example", false), 77, NOW, [1; 16]).unwrap();
    ok(w.a.ticket_request(&req, NOW, &w.zn_a).await);
    assert_eq!(err_code(w.a.ticket_request(&req, NOW, &w.zn_a).await), ErrorCode::INVALID_TS);
    assert_eq!(err_code(w.a.ticket_request(&req, NOW + Duration::from_secs(31), &w.zn_a).await), ErrorCode::INVALID_TS);
    // Not MIKEY / wrong message: 4xx.
    assert!(matches!(w.a.ticket_request(b"hello", NOW, &w.zn_a).await, Reply::BadRequest(_)));
    let (ri, _) = bob.resolve_init(&alice.transfer_init(&request(&w.a, &w.zn_a, &mut ue("alice@a.example", "kms.a.example"), &ask("bob@a.example", false), 4).await.unwrap(), bob_uid(), 1, 1, NOW, [0; 16]).unwrap().0, 1, NOW, [0; 16]).unwrap();
    assert!(matches!(w.a.ticket_request(&ri, NOW, &w.zn_a).await, Reply::BadRequest(_)));
}

/// RFC 3830 §5.4: a request is remembered for the whole skew window, whichever NTP timestamp
/// type (NTP-UTC or NTP-UTC-32, both accepted, docs/ticket-profile.md §16) it carries. The
/// cache prunes itself as traffic grows; an NTP-UTC-32 request must survive that, or whoever
/// recorded it may replay it once the KMS has served ~1000 other requests.
#[tokio::test]
async fn replay_cache_keeps_ntp_utc_32_requests_for_the_skew_window() {
    use mediasec_mikey::payload::Timestamp;
    use mediasec_mikey::registry::TsType;
    let w = world();
    let alice = ue("alice@a.example", "kms.a.example");
    let randri = [9u8; 16];
    let (req, _) = alice.request_init(&ask("bob@a.example", false), 4242, NOW, randri).unwrap();
    // The same request with an NTP-UTC-32 T, MACed under alice's key as her UE would.
    let mut m = Message::decode(&req).unwrap();
    m.payloads.retain(|p| !matches!(p, Payload::V(_)));
    for p in &mut m.payloads {
        if let Payload::T(t) = p {
            *t = Timestamp { ts_type: TsType::NTP_UTC_32, value: t.value >> 32 };
        }
    }
    let k = tk::message_keys(&ks("alice@a.example", "kms.a.example"), 4242, Direction::Initial, Some(&randri), None).unwrap();
    let req32 = tk::seal(m, &k.auth_key, &[b"alice@a.example", b"kms.a.example"]).unwrap();
    ok(w.a.ticket_request(&req32, NOW, &w.zn_a).await);
    assert_eq!(err_code(w.a.ticket_request(&req32, NOW, &w.zn_a).await), ErrorCode::INVALID_TS);
    // Enough other requests within the window for the cache to prune itself.
    for i in 0..1100u32 {
        let (r, _) = alice.request_init(&ask("bob@a.example", false), 10_000 + i, NOW, randri).unwrap();
        ok(w.a.ticket_request(&r, NOW, &w.zn_a).await);
    }
    assert_eq!(err_code(w.a.ticket_request(&req32, NOW + Duration::from_secs(1), &w.zn_a).await), ErrorCode::INVALID_TS, "replayed after the prune");
}

#[tokio::test]
async fn tampered_tickets_are_rejected() {
    let w = world();
    let (mut alice, bob) = (ue("alice@a.example", "kms.a.example"), ue("bob@a.example", "kms.a.example"));
    let held = request(&w.a, &w.zn_a, &mut alice, &ask("bob@a.example", false), 0).await.unwrap();
    let n = held.ticket.ticket_data.len();
    for i in 0..n {
        let mut bad = held.clone();
        bad.ticket.ticket_data[i] ^= 0x01;
        let now = NOW + Duration::from_secs(1);
        let (ti, _) = alice.transfer_init(&bad, bob_uid(), i as u32, 1, now, [1; 16]).unwrap();
        let (ri, _) = bob.resolve_init(&ti, 0x100 + i as u32, now, [2; 16]).unwrap();
        match w.a.ticket_resolve(&ri, now, &w.zn_a, &NoPeers).await {
            Reply::Error { code, .. } => assert!(matches!(code, ErrorCode::INVALID_TICKET | ErrorCode::AUTH_FAILURE | ErrorCode::UNSUPPORTED_MESSAGE), "byte {i}: {code:?}"),
            other => panic!("byte {i} of the ticket data flipped: {other:?}"),
        }
    }
    // The policy is MACed too: widening the recipients breaks the ticket.
    let mut wider = held.clone();
    let mut d = TpData::decode(&wider.ticket.policy.data).unwrap();
    d.recipients.push(Pattern::parse("?").unwrap());
    wider.ticket.policy.data = d.encode().unwrap();
    let (ti, _) = alice.transfer_init(&wider, bob_uid(), 1, 1, NOW, [1; 16]).unwrap();
    let (ri, _) = bob.resolve_init(&ti, 2, NOW, [2; 16]).unwrap();
    assert_eq!(err_code(w.a.ticket_resolve(&ri, NOW, &w.zn_a, &NoPeers).await), ErrorCode::AUTH_FAILURE);
}

#[tokio::test]
async fn mode3_tickets_resolve_only_if_policy_allows() {
    let w = world();
    let (mut alice, mut bob, mut carol) = (ue("alice@a.example", "kms.a.example"), ue("bob@a.example", "kms.a.example"), ue("carol@b.example", "kms.b.example"));
    let held = alice.make_ticket(&ask("bob@a.example", false), NOW, &|b| b.fill(0x5a)).unwrap();
    assert_eq!(call(&w, &mut alice, &held, &mut bob, &w.a, &w.zn_a, 1).await.unwrap().as_str(), "bob@a.example");
    // Cross-domain mode 3: carol's KMS forwards to alice's.
    let held = alice.make_ticket(&ask("carol@b.example", false), NOW, &|b| b.fill(0x5b)).unwrap();
    assert_eq!(call(&w, &mut alice, &held, &mut carol, &w.b, &w.zn_b, 2).await.unwrap().as_str(), "carol@b.example");
    // Bob has no mode 3 in his policy.
    let held = bob.make_ticket(&ask("alice@a.example", false), NOW, &|b| b.fill(0x5c)).unwrap();
    let e = call(&w, &mut bob, &held, &mut alice, &w.a, &w.zn_a, 3).await.err().unwrap();
    assert!(matches!(e, KmsError::Mikey { code: ErrorCode::INVALID_TPPAR, .. }), "{e}");
    // Too long a validity.
    let held = alice.make_ticket(&Ask { lifetime: 7200, ..ask("bob@a.example", false) }, NOW, &|b| b.fill(0x5d)).unwrap();
    let e = call(&w, &mut alice, &held, &mut bob, &w.a, &w.zn_a, 4).await.err().unwrap();
    assert!(matches!(e, KmsError::Mikey { code: ErrorCode::INVALID_TPPAR, .. }), "{e}");
}

/// Only provisioned, enabled users may use the KMS (docs/kms.md, `users`): a UE-made (mode 3)
/// ticket is its creator's use of it, as a Ticket Request is. Once the admin disables the
/// creator — while the bootstrap still lives — its new tickets resolve neither here nor
/// over Zk (ERR 14), nor do those of a creator never provisioned here whose policy has mode 3.
/// LI of the call made while the creator was enabled still releases.
#[tokio::test]
async fn mode3_tickets_of_a_disabled_or_unprovisioned_creator_do_not_resolve() {
    let w = world();
    let (mut alice, mut bob, mut carol) = (ue("alice@a.example", "kms.a.example"), ue("bob@a.example", "kms.a.example"), ue("carol@b.example", "kms.b.example"));
    let held = alice.make_ticket(&ask("bob@a.example", false), NOW, &|b| b.fill(0x61)).unwrap();
    let before = call_msgs(&w, &mut alice, &held, &mut bob, &w.a, &w.zn_a, 1).await.unwrap();
    let users: Vec<_> = w.a.users().iter().cloned().map(|u| crate::users::User { enabled: u.enabled && u.uid.as_str() != "alice@a.example", ..u }).collect();
    w.a.set_users(Users::new(users));
    let refused = |e: KmsError| assert!(matches!(e, KmsError::Mikey { code: ErrorCode::INVALID_TICKET, .. }), "{e}");
    let held = alice.make_ticket(&ask("bob@a.example", false), NOW, &|b| b.fill(0x62)).unwrap();
    refused(call(&w, &mut alice, &held, &mut bob, &w.a, &w.zn_a, 2).await.err().unwrap());
    let held = alice.make_ticket(&ask("carol@b.example", false), NOW, &|b| b.fill(0x63)).unwrap();
    refused(call(&w, &mut alice, &held, &mut carol, &w.b, &w.zn_b, 3).await.err().unwrap());
    // frank has a bootstrap and, by policy, mode 3, but is no user of this KMS.
    w.a.set_policies(Policies::from_toml(&format!("{POLICY}[user.\"frank@a.example\"]\nmode3 = true\n")).unwrap());
    let mut frank = ue("frank@a.example", "kms.a.example");
    let held = frank.make_ticket(&ask("bob@a.example", false), NOW, &|b| b.fill(0x64)).unwrap();
    refused(call(&w, &mut frank, &held, &mut bob, &w.a, &w.zn_a, 4).await.err().unwrap());
    let s = NOW.as_secs();
    let alices = w.zn_a.naf_key("btid-alice@a.example", s + 5).await.unwrap().unwrap();
    let r = w.a.li_release(&warrant("alice@a.example", s - 10, s + 100), LiTransferInit::read(&before.ti), Some(&before.tr), s + 5, Some(&alices)).unwrap();
    same_keys(&r.media, &before.m_i);
}

#[tokio::test]
async fn rotation_keeps_old_tickets_resolvable_until_pruned() {
    let w = world();
    let (mut alice, mut bob) = (ue("alice@a.example", "kms.a.example"), ue("bob@a.example", "kms.a.example"));
    let old = request(&w.a, &w.zn_a, &mut alice, &ask("bob@a.example", false), 0).await.unwrap();
    let mut ring = (*w.a.ring()).clone();
    ring.rotate(NOW.as_secs(), [0x77; 32]).unwrap();
    w.a.set_ring(ring.clone());
    let new = request(&w.a, &w.zn_a, &mut alice, &ask("bob@a.example", false), 1).await.unwrap();
    assert_eq!((key_id_of(&old.ticket).unwrap(), key_id_of(&new.ticket).unwrap()), (1, 2), "new key id in THDR");
    call(&w, &mut alice, &old, &mut bob, &w.a, &w.zn_a, 2).await.expect("old key still resolves");
    call(&w, &mut alice, &new, &mut bob, &w.a, &w.zn_a, 3).await.unwrap();
    ring.prune(NOW.as_secs() + 10_000, 3600);
    w.a.set_ring(ring);
    let e = call(&w, &mut alice, &old, &mut bob, &w.a, &w.zn_a, 4).await.err().unwrap();
    assert!(matches!(e, KmsError::Mikey { code: ErrorCode::INVALID_TICKET, .. }), "{e}");
}

/// Resolves `ti` for `r` at `k` and answers; returns (TRANSFER_RESP, responder's media).
async fn answer(w: &World, r: &mut Ue, ti: &[u8], k: &Kms, zn: &StaticZn, ssrc: u32) -> Result<(Vec<u8>, crate::ue::Media), KmsError> {
    let (ri, pr) = r.resolve_init(ti, rand_u32(), NOW, [ssrc as u8; 16])?;
    let link = Link(w, AtomicU32::new(0));
    let rr = match k.ticket_resolve(&ri, NOW, zn, &link).await {
        Reply::Response(b) | Reply::Error { message: b, .. } => b,
        other => return Err(KmsError::Http(format!("{other:?}"))),
    };
    let resolved = r.on_resolve_resp(pr, &rr, NOW)?;
    r.transfer_resp(&resolved, ti, ssrc, NOW)
}

fn rand_u32() -> u32 {
    static N: AtomicU32 = AtomicU32::new(0x9000);
    N.fetch_add(1, Ordering::Relaxed)
}

#[tokio::test]
async fn forked_call_gives_each_responder_its_own_key() {
    let w = world();
    let (mut alice, mut bob, mut dan, mut carol) =
        (ue("alice@a.example", "kms.a.example"), ue("bob@a.example", "kms.a.example"), ue("dan@a.example", "kms.a.example"), ue("carol@b.example", "kms.b.example"));
    let a = Ask { recipients: ["bob@a.example", "dan@a.example", "carol@b.example"].iter().map(|p| Pattern::parse(p).unwrap()).collect(), reusable: false, forking: true, lifetime: 600 };
    let held = request(&w.a, &w.zn_a, &mut alice, &a, 0).await.unwrap();
    assert!(held.forking() && held.mpkr.is_some() && !held.changed());
    // One TRANSFER_INIT, forked by the network to three devices (one in another domain).
    let (ti, pt) = alice.transfer_init(&held, bob_uid(), 0x4242, 0xaaaa, NOW, [7; 16]).unwrap();
    let (tr_b, m_b) = answer(&w, &mut bob, &ti, &w.a, &w.zn_a, 0xb0b).await.unwrap();
    let (tr_d, m_d) = answer(&w, &mut dan, &ti, &w.a, &w.zn_a, 0xda0).await.unwrap();
    let (tr_c, m_c) = answer(&w, &mut carol, &ti, &w.b, &w.zn_b, 0xca0).await.unwrap();
    let mut keys = Vec::new();
    for (tr, m_r, who) in [(&tr_b, &m_b, "bob@a.example"), (&tr_d, &m_d, "dan@a.example"), (&tr_c, &m_c, "carol@b.example")] {
        let (got, m_i) = alice.on_transfer_resp(&pt, tr, NOW).unwrap();
        assert_eq!(got.as_str(), who);
        assert_eq!(*m_i.initiator_stream.master_key, *m_r.initiator_stream.master_key, "{who}");
        assert_eq!(*m_i.responder_stream.master_key, *m_r.responder_stream.master_key, "{who}");
        keys.push(m_i.initiator_stream.master_key.to_vec());
    }
    assert!(keys[0] != keys[1] && keys[1] != keys[2] && keys[0] != keys[2], "each responder has its own key");

    // Dan cannot answer in Bob's name: he cannot compute Bob's MPKr'.
    let mut forged = Message::decode(&tr_d).unwrap();
    for p in forged.payloads.iter_mut() {
        if let Payload::Idr(i) = p {
            i.data = b"bob@a.example".to_vec();
        }
    }
    let forged = forged.encode().unwrap();
    let e = alice.on_transfer_resp(&pt, &forged, NOW).err().unwrap();
    assert!(matches!(e, KmsError::Mikey { code: ErrorCode::AUTH_FAILURE, .. }), "{e}");

    // The KMS checks Vr: Initiator Data not made with MPKr is refused.
    let mut bad = Message::decode(&ti).unwrap();
    for p in bad.payloads.iter_mut() {
        if let Payload::Ticket(t) = p {
            let n = t.initiator_data.len();
            t.initiator_data[n - 1] ^= 1;
        }
    }
    let bad = bad.encode().unwrap();
    let e = answer(&w, &mut ue("bob@a.example", "kms.a.example"), &bad, &w.a, &w.zn_a, 1).await.err().unwrap();
    assert!(matches!(e, KmsError::Mikey { code: ErrorCode::AUTH_FAILURE, .. }), "{e}");

    // Without forking in his policy, bob's forking request is narrowed (I cleared, K set).
    let held = request(&w.a, &w.zn_a, &mut bob, &Ask { forking: true, ..ask("alice@a.example", false) }, 1).await.unwrap();
    assert!(!held.forking() && held.changed() && held.mpkr.is_none());
}

#[tokio::test]
async fn end_to_middle_identity_may_resolve() {
    let w = world();
    let (mut dan, mut bob, mut mgw) = (ue("dan@a.example", "kms.a.example"), ue("bob@a.example", "kms.a.example"), ue("mgw@a.example", "kms.a.example"));
    let held = request(&w.a, &w.zn_a, &mut dan, &ask("bob@a.example", false), 0).await.unwrap();
    assert!(held.changed(), "K: the KMS added the end-to-middle identity");
    assert!(held.granted.recipients.contains(&Pattern::parse("mgw@a.example").unwrap()));
    // The media gateway of dan's domain resolves the ticket and terminates the call's keys.
    assert_eq!(call(&w, &mut dan, &held, &mut mgw, &w.a, &w.zn_a, 1).await.unwrap().as_str(), "mgw@a.example");
    assert_eq!(call(&w, &mut dan, &held, &mut bob, &w.a, &w.zn_a, 2).await.unwrap().as_str(), "bob@a.example");
}

// ---- lawful interception (crate::li) ----------------------------------------------------

fn warrant(target: &str, from: u64, to: u64) -> crate::li::Warrant {
    crate::li::Warrant { id: format!("w-{target}"), target: KmsUid::parse(target).unwrap(), not_before: from, not_after: to }
}

fn refusal(r: Result<crate::li::Release, KmsError>) -> crate::li::Refusal {
    match r {
        Err(KmsError::LiRefused(x)) => x,
        Err(e) => panic!("expected an LI refusal, got {e}"),
        Ok(_) => panic!("expected an LI refusal, got keys"),
    }
}

/// The released keys are the keys both UEs derived (master key, salt, SSRC, MKI, suite).
fn same_keys(got: &crate::ue::Media, ue: &crate::ue::Media) {
    for (g, u) in [(&got.initiator_stream, &ue.initiator_stream), (&got.responder_stream, &ue.responder_stream)] {
        assert_eq!((&*g.master_key, &*g.master_salt), (&*u.master_key, &*u.master_salt));
        assert_eq!((g.ssrc, &g.mki, g.suite), (u.ssrc, &u.mki, u.suite));
    }
}

#[tokio::test]
async fn li_releases_exactly_the_call_keys_of_a_warrant_target() {
    let w = world();
    let (mut alice, mut bob) = (ue("alice@a.example", "kms.a.example"), ue("bob@a.example", "kms.a.example"));
    let held = request(&w.a, &w.zn_a, &mut alice, &ask("bob@a.example", false), 0).await.unwrap();
    let c = call_msgs(&w, &mut alice, &held, &mut bob, &w.a, &w.zn_a, 1).await.unwrap();
    let (now, s) = (NOW.as_secs() + 5, NOW.as_secs());
    // Warrant on the caller, then on the callee: the keys both UEs derived.
    for target in ["alice@a.example", "bob@a.example"] {
        let r = w.a.li_release(&warrant(target, s - 10, s + 100), LiTransferInit::read(&c.ti), Some(&c.tr), now, None).unwrap();
        assert_eq!((r.initiator.as_str(), r.responder.as_str(), r.answered), ("alice@a.example", "bob@a.example", true));
        same_keys(&r.media, &c.m_i);
        same_keys(&r.media, &c.m_r);
    }
    // End to end: RTP the caller protects with its keys opens with the released keys.
    let srtp = |p: &mediasec_mikey::srtp_policy::SrtpPolicy| {
        let key = mediasec_srtp::MasterKey::new(&p.master_key, &p.master_salt).with_mki(&p.mki);
        mediasec_srtp::Session::new(&mediasec_srtp::Policy::new(p.suite.parse().unwrap(), key)).unwrap()
    };
    let released = w.a.li_release(&warrant("alice@a.example", s - 10, s + 100), LiTransferInit::read(&c.ti), Some(&c.tr), now, None).unwrap();
    let mut packet = vec![0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xaa, 0xaa, 1, 2, 3];
    srtp(&c.m_i.initiator_stream).protect_rtp_vec(&mut packet).unwrap();
    srtp(&released.media.initiator_stream).unprotect_rtp_vec(&mut packet).unwrap();
    assert_eq!(packet.get(12..), Some(&[1u8, 2, 3][..]));
    let mut back = vec![0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xbb, 0xbb, 4, 5];
    srtp(&c.m_r.responder_stream).protect_rtp_vec(&mut back).unwrap();
    srtp(&released.media.responder_stream).unprotect_rtp_vec(&mut back).unwrap();
    assert_eq!(back.get(12..), Some(&[4u8, 5][..]));
    // Without TRANSFER_RESP (non-forking ticket): same keys, CS 2's SSRC unknown.
    let r = w.a.li_release(&warrant("bob@a.example", s - 10, s + 100), LiTransferInit::read(&c.ti), None, now, None).unwrap();
    assert_eq!((&*r.media.responder_stream.master_key, r.media.responder_stream.ssrc, r.answered), (&*c.m_r.responder_stream.master_key, 0, false));
    assert_eq!(*r.media.initiator_stream.master_salt, *c.m_i.initiator_stream.master_salt);
    // Someone else, an expired or future warrant, a window the call is not in: refused.
    assert_eq!(refusal(w.a.li_release(&warrant("dan@a.example", s - 10, s + 100), LiTransferInit::read(&c.ti), Some(&c.tr), now, None)), crate::li::Refusal::NotAParty);
    assert_eq!(refusal(w.a.li_release(&warrant("alice@a.example", s - 100, now - 1), LiTransferInit::read(&c.ti), Some(&c.tr), now, None)), crate::li::Refusal::WarrantExpired);
    assert_eq!(refusal(w.a.li_release(&warrant("alice@a.example", now + 1, now + 100), LiTransferInit::read(&c.ti), Some(&c.tr), now, None)), crate::li::Refusal::WarrantNotYetActive);
    // Active now, but the ticket (valid NOW..NOW+600) and the call precede the window.
    assert_eq!(refusal(w.a.li_release(&warrant("alice@a.example", s + 700, s + 900), LiTransferInit::read(&c.ti), Some(&c.tr), s + 800, None)), crate::li::Refusal::OutsideWindow);
    // Ticket valid in the window but the call (at NOW+1) before it.
    assert_eq!(refusal(w.a.li_release(&warrant("alice@a.example", s + 2, s + 100), LiTransferInit::read(&c.ti), Some(&c.tr), now, None)), crate::li::Refusal::OutsideWindow);
    // Another KMS's ticket: its operator's LI.
    let mut carol = ue("carol@b.example", "kms.b.example");
    let theirs = request(&w.b, &w.zn_b, &mut carol, &ask("alice@a.example", false), 0).await.unwrap();
    let (ti_b, _) = carol.transfer_init(&theirs, &alice.uid.clone(), 7, 7, NOW, [7; 16]).unwrap();
    assert!(matches!(refusal(w.a.li_release(&warrant("carol@b.example", s, s + 100), LiTransferInit::read(&ti_b), None, now, None)), crate::li::Refusal::ForeignTicket(_)));
    // A ring that does not hold the ticket's key: not ours either.
    let other = kms("kms.a.example.", "a.example");
    let other = Kms::new(KmsConfig { fqdn: "kms.a.example".into(), ..other.config().clone() }, Policies::default(), Users::default(), (*other.ring()).clone(), counter());
    assert!(matches!(refusal(other.li_release(&warrant("alice@a.example", s, s + 100), LiTransferInit::read(&c.ti), None, now, None)), crate::li::Refusal::ForeignTicket(_)));
    // Malformed or tampered input: typed input errors.
    let mut bad = c.ti.clone();
    let n = bad.len();
    bad[n - 1] ^= 1;
    assert!(matches!(w.a.li_release(&warrant("alice@a.example", s, s + 100), LiTransferInit::read(&bad), None, now, None), Err(KmsError::LiInput(_))));
    assert!(matches!(w.a.li_release(&warrant("alice@a.example", s, s + 100), LiTransferInit::read(b"junk"), None, now, None), Err(KmsError::LiInput(_))));
    let mut bad = c.tr.clone();
    let n = bad.len();
    bad[n - 1] ^= 1;
    assert!(matches!(w.a.li_release(&warrant("alice@a.example", s, s + 100), LiTransferInit::read(&c.ti), Some(&bad), now, None), Err(KmsError::LiInput(_))));
    // Warrant fields are validated.
    assert!(crate::li::Warrant { id: "bad id/1".into(), ..warrant("alice@a.example", 1, 2) }.validate().is_err());
    assert!(crate::li::Warrant { id: "w1".into(), ..warrant("alice@a.example", 3, 2) }.validate().is_err());
    let upper: crate::li::Warrant = serde_json::from_str(r#"{"id":"W-2026.1_a","target":"alice@A.Example","not_before":2,"not_after":3}"#).unwrap();
    assert!(upper.validate().is_ok());
    assert_eq!(upper.target.as_str(), "alice@a.example", "canonical target");
    assert!(serde_json::from_str::<crate::li::Warrant>(r#"{"id":"w","target":"?@a.example","not_before":2,"not_after":3}"#).is_err(), "no group");
}

/// LI of a UE-made (mode 3) call: the KMS opens the ticket with the creator's Ks_NAF (the Zn
/// answer for the ticket's B-TID) and releases exactly the keys both UEs derived; without that
/// answer (bootstrap expired), with another user's, or for a creator whose policy no longer
/// allows mode 3, it refuses, saying why.
#[tokio::test]
async fn li_releases_a_ue_made_call_while_the_creators_bootstrap_lives() {
    let w = world();
    let (mut alice, mut bob) = (ue("alice@a.example", "kms.a.example"), ue("bob@a.example", "kms.a.example"));
    let held = alice.make_ticket(&ask("bob@a.example", false), NOW, &|b| b.fill(0x6a)).unwrap();
    let c = call_msgs(&w, &mut alice, &held, &mut bob, &w.a, &w.zn_a, 1).await.unwrap();
    let (now, s) = (NOW.as_secs() + 5, NOW.as_secs());
    assert_eq!(w.a.li_ue_made_btid(&LiTransferInit::read(&c.ti)).as_deref(), Some("btid-alice@a.example"));
    assert_eq!(w.b.li_ue_made_btid(&LiTransferInit::read(&c.ti)), None, "another KMS's UE-made ticket: not its LI");
    let alices = w.zn_a.naf_key("btid-alice@a.example", now).await.unwrap().unwrap();
    for target in ["alice@a.example", "bob@a.example"] {
        let r = w.a.li_release(&warrant(target, s - 10, s + 100), LiTransferInit::read(&c.ti), Some(&c.tr), now, Some(&alices)).unwrap();
        assert_eq!((r.initiator.as_str(), r.responder.as_str(), r.answered), ("alice@a.example", "bob@a.example", true));
        same_keys(&r.media, &c.m_i);
        same_keys(&r.media, &c.m_r);
    }
    assert_eq!(refusal(w.a.li_release(&warrant("dan@a.example", s - 10, s + 100), LiTransferInit::read(&c.ti), Some(&c.tr), now, Some(&alices))), crate::li::Refusal::NotAParty);
    let why = |r| match refusal(r) {
        crate::li::Refusal::UeMadeTicket(why) => why,
        other => panic!("expected a UE-made ticket refusal, got {other}"),
    };
    let expired = why(w.a.li_release(&warrant("alice@a.example", s - 10, s + 100), LiTransferInit::read(&c.ti), Some(&c.tr), now, None));
    assert!(expired.contains("bootstrap is unknown or expired"), "{expired}");
    let bobs = w.zn_a.naf_key("btid-bob@a.example", now).await.unwrap().unwrap();
    let wrong = why(w.a.li_release(&warrant("alice@a.example", s - 10, s + 100), LiTransferInit::read(&c.ti), Some(&c.tr), now, Some(&bobs)));
    assert!(wrong.contains("not an identity of the ticket's B-TID"), "{wrong}");
    // Same B-TID and identities but another key (a forged Zn answer): the ticket does not open.
    let forged = NafKey::new(&[0x11; 32], alices.impus.clone(), alices.expiry);
    assert!(matches!(refusal(w.a.li_release(&warrant("alice@a.example", s - 10, s + 100), LiTransferInit::read(&c.ti), Some(&c.tr), now, Some(&forged))), crate::li::Refusal::UeMadeTicket(_)));
    w.a.set_policies(Policies::from_toml(&POLICY.replace("mode3 = true", "mode3 = false")).unwrap());
    let policy = why(w.a.li_release(&warrant("alice@a.example", s - 10, s + 100), LiTransferInit::read(&c.ti), Some(&c.tr), now, Some(&alices)));
    assert!(policy.contains("policy does not allow UE-made tickets"), "{policy}");
}

#[tokio::test]
async fn li_on_a_forked_call_releases_only_the_answering_responder_keys() {
    let w = world();
    let (mut alice, mut bob, mut dan) = (ue("alice@a.example", "kms.a.example"), ue("bob@a.example", "kms.a.example"), ue("dan@a.example", "kms.a.example"));
    let a = Ask { recipients: ["bob@a.example", "dan@a.example"].iter().map(|p| Pattern::parse(p).unwrap()).collect(), reusable: false, forking: true, lifetime: 600 };
    let held = request(&w.a, &w.zn_a, &mut alice, &a, 0).await.unwrap();
    assert!(held.forking());
    let (ti, pt) = alice.transfer_init(&held, bob_uid(), 0x4242, 0xaaaa, NOW, [7; 16]).unwrap();
    let (tr_b, m_b) = answer(&w, &mut bob, &ti, &w.a, &w.zn_a, 0xb0b).await.unwrap();
    let (tr_d, m_d) = answer(&w, &mut dan, &ti, &w.a, &w.zn_a, 0xda0).await.unwrap();
    let (_, m_i) = alice.on_transfer_resp(&pt, &tr_d, NOW).unwrap();
    let (s, now) = (NOW.as_secs(), NOW.as_secs() + 5);
    // Warrant on the callee who answered (forked keys from its TRANSFER_RESP).
    let r = w.a.li_release(&warrant("dan@a.example", s - 10, s + 100), LiTransferInit::read(&ti), Some(&tr_d), now, None).unwrap();
    assert_eq!(r.responder.as_str(), "dan@a.example");
    same_keys(&r.media, &m_d);
    same_keys(&r.media, &m_i);
    // Dan's warrant gives nothing of Bob's leg; the caller's warrant gives either leg.
    assert_eq!(refusal(w.a.li_release(&warrant("dan@a.example", s - 10, s + 100), LiTransferInit::read(&ti), Some(&tr_b), now, None)), crate::li::Refusal::NotAParty);
    same_keys(&w.a.li_release(&warrant("alice@a.example", s - 10, s + 100), LiTransferInit::read(&ti), Some(&tr_b), now, None).unwrap().media, &m_b);
    // A forking ticket needs the TRANSFER_RESP (TGK' depends on the responder).
    assert!(matches!(w.a.li_release(&warrant("alice@a.example", s - 10, s + 100), LiTransferInit::read(&ti), None, now, None), Err(KmsError::LiInput(_))));
    // A TRANSFER_RESP claiming Bob but keyed by Dan does not verify.
    let mut forged = Message::decode(&tr_d).unwrap();
    for p in forged.payloads.iter_mut() {
        if let Payload::Idr(i) = p {
            i.data = b"bob@a.example".to_vec();
        }
    }
    let forged = forged.encode().unwrap();
    assert!(matches!(w.a.li_release(&warrant("bob@a.example", s - 10, s + 100), LiTransferInit::read(&ti), Some(&forged), now, None), Err(KmsError::LiInput(_))));
}

/// Deferred delivery (docs/voicemail.md, profile decision 18): the caller's keys from its own
/// TRANSFER_INIT equal what the responder derives when it resolves the stored message much
/// later (no TRANSFER_INIT freshness window), as long as the ticket is valid; expired tickets
/// and forking tickets are refused explicitly, on both sides.
#[tokio::test]
async fn deferred_delivery_keys_match_when_the_responder_resolves_later() {
    let w = world();
    let (mut alice, mut dan) = (ue("alice@a.example", "kms.a.example"), ue("dan@a.example", "kms.a.example"));
    let held = request(&w.a, &w.zn_a, &mut alice, &ask("dan@a.example", false), 0).await.unwrap();
    let (ti, pt) = alice.transfer_init(&held, &KmsUid::parse("dan@a.example").unwrap(), 0x77, 0xaaaa, NOW, [5; 16]).unwrap();
    let sent = pt.deferred_media(&KmsUid::parse("dan@a.example").unwrap()).unwrap();
    // 500 s later: beyond the ±30 s window, within the 600 s ticket.
    let later = NOW + Duration::from_secs(500);
    assert_eq!(crate::ue::deferred_ticket_end(&ti, later).unwrap(), Some(NOW.as_secs() + 600));
    let (ri, pr) = dan.resolve_init(&ti, 0x78, later, [6; 16]).unwrap();
    let link = Link(&w, AtomicU32::new(0));
    let rr = ok(w.a.ticket_resolve(&ri, later, &w.zn_a, &link).await);
    let resolved = dan.on_resolve_resp(pr, &rr, later).unwrap();
    let opened = dan.deferred_open(&resolved, &ti, later).unwrap();
    assert_eq!(opened.initiator.as_str(), "alice@a.example", "the caller the ticket names");
    let got = opened.media;
    assert_eq!(*got.initiator_stream.master_key, *sent.initiator_stream.master_key);
    assert_eq!(*got.initiator_stream.master_salt, *sent.initiator_stream.master_salt);
    assert_eq!(got.initiator_stream.ssrc, 0xaaaa);
    // The live path would refuse this TRANSFER_INIT as stale.
    assert!(dan.transfer_resp(&resolved, &ti, 1, later).is_err());
    // A tampered TRANSFER_INIT does not verify with MPKi.
    let mut bad = ti.clone();
    let n = bad.len();
    bad[n - 1] ^= 1;
    assert!(matches!(dan.deferred_open(&resolved, &bad, later), Err(KmsError::Mikey { code: ErrorCode::AUTH_FAILURE, .. })));
    // After TRe: a clear error before and after asking the KMS.
    let expired = NOW + Duration::from_secs(601);
    assert!(matches!(crate::ue::deferred_ticket_end(&ti, expired), Err(KmsError::TicketExpired { .. })));
    let e = dan.deferred_open(&resolved, &ti, expired).err().unwrap();
    assert!(e.to_string().starts_with("ticket expired at"), "{e}");
    // Forking tickets cannot be delivered deferred.
    let forking = request(&w.a, &w.zn_a, &mut alice, &Ask { forking: true, ..ask("dan@a.example", false) }, 1).await.unwrap();
    assert!(forking.forking());
    let (_, pt) = alice.transfer_init(&forking, &KmsUid::parse("dan@a.example").unwrap(), 0x79, 0xaaaa, NOW, [8; 16]).unwrap();
    assert!(matches!(pt.deferred_media(&KmsUid::parse("dan@a.example").unwrap()), Err(KmsError::Deferred(m)) if m.contains("forks keys")));
    // A ticket that authorises more than the callee (here a group) cannot either: any other
    // authorised party could announce deferred delivery and decrypt what we send.
    let group = request(&w.a, &w.zn_a, &mut alice, &ask("?@a.example", false), 2).await.unwrap();
    let (_, pt) = alice.transfer_init(&group, &KmsUid::parse("dan@a.example").unwrap(), 0x7a, 0xaaaa, NOW, [9; 16]).unwrap();
    assert!(matches!(pt.deferred_media(&KmsUid::parse("dan@a.example").unwrap()), Err(KmsError::Deferred(m)) if m.contains("also authorises ?@a.example")));
}
