//! Master-key rotation of the KMS store (`mediasec_kms::rekey`), embedded (redb) and
//! PostgreSQL alike: a KMS with a two-key ticket ring (one retired), a KSAK, a SAKKE z, a
//! warrant and its LI audit entry issues a ticket; the rotation is interrupted, refused at
//! start while unfinished, and finished by a second run; then a KMS on the new key resolves
//! the ticket issued before the rotation (the call's keys agree end to end), a KMS on the old
//! key refuses to start, and a row sealed under an unrelated key stops a rotation naming it.
//! Online (PostgreSQL): two replicas go through the rolling phases while serving calls.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mediasec_kms::KmsError;
use mediasec_kms::identity::{KmsUid, Pattern};
use mediasec_kms::keyring::{MasterKey, MasterKeys};
use mediasec_kms::kms::{KmsConfig, NoPeers, Reply, os_random};
use mediasec_kms::li::Warrant;
use mediasec_kms::persist::Persist;
use mediasec_kms::policy::Policies;
use mediasec_kms::rekey::rekey;
use mediasec_kms::server::Service;
use mediasec_kms::ue::{Ask, Ue};
use mediasec_kms::users::User;
use mediasec_kms::zn::{NafKey, StaticZn};
use mediasec_kms_store::rekey::{Counts, Keys, Mode, Progress, RekeyError};
use mediasec_kms_store::servers::{Liveness, Registration};
use mediasec_kms_store::{Store, Table};

const OLD: [u8; 32] = [7; 32];
const NEW: [u8; 32] = [8; 32];
const POLICY: &str = "[domain.\"a.example\"]\nmay_call = [\"?@a.example\"]\n";

fn key(k: [u8; 32]) -> MasterKey {
    MasterKey::new(&k).expect("key")
}

fn now() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock")
}

/// Zn of both users: B-TID `btid-<user>`, Ks_NAF derived from the name.
fn zn() -> StaticZn {
    let mut z = StaticZn::default();
    for u in ["alice", "bob"] {
        z.insert(format!("btid-{u}"), NafKey::new(&[u.len() as u8; 32], vec![format!("sip:{u}@a.example")], now().as_secs() + 3600));
    }
    z
}

fn ue(u: &str) -> Ue {
    Ue::new(KmsUid::parse(&format!("{u}@a.example")).expect("uid"), "kms.a.example", format!("btid-{u}"), &[u.len() as u8; 32], 30)
}

async fn start(store: &Arc<dyn Store>, master: [u8; 32]) -> Result<Arc<Service>, KmsError> {
    let cfg = KmsConfig { fqdn: "kms.a.example".into(), domain: "a.example".into(), skew: 30 };
    Service::start(cfg, Persist::new(Arc::clone(store), key(master)), Arc::new(zn()), Arc::new(NoPeers), "admin".into(), os_random()).await
}

fn go(_: &Progress) -> ControlFlow<()> {
    ControlFlow::Continue(())
}

/// The store's administration under the old key, as both tests start from it: the policy,
/// alice and bob, and a warrant for alice (returned).
async fn provision(store: &Arc<dyn Store>) -> Warrant {
    let p = Persist::new(Arc::clone(store), key(OLD));
    p.put_document(&Policies::from_toml(POLICY).expect("policy"), "test", 1).await.expect("policy");
    for u in ["alice@a.example", "bob@a.example"] {
        p.put_user(&User { uid: KmsUid::parse(u).expect("uid"), enabled: true }, "test", 1).await.expect("user");
    }
    let w = Warrant { id: "W-1".into(), target: KmsUid::parse("alice@a.example").expect("uid"), not_before: 10, not_after: 20 };
    p.put_warrant(&w, 1, 2).await.expect("warrant");
    w
}

async fn scenario(store: Arc<dyn Store>, backend: &str) {
    let random = |b: &mut [u8]| rand::RngCore::fill_bytes(&mut rand::rng(), b);
    let w = provision(&store).await;

    // A KMS on the old key: first ticket key, KSAK and z made; a ticket issued under key 1,
    // which the rotation of the ring then retires (key 2 is newest).
    let svc = start(&store, OLD).await.expect("KMS on the old key");
    let kpak = svc.kpak().expect("KPAK");
    let z_pub = svc.persist().sakke_z().await.expect("z").expect("made").public_key();
    let mut alice = ue("alice");
    let ask = Ask { recipients: vec![Pattern::parse("bob@a.example").expect("pattern")], reusable: false, forking: false, lifetime: 300 };
    let (req, pending) = alice.request_init(&ask, 1, now(), rand::random()).expect("request");
    let Reply::Response(resp) = svc.kms().ticket_request(&req, now(), &zn()).await else { panic!("{backend}: ticket refused") };
    let held = alice.on_request_resp(pending, &resp, now()).expect("ticket");
    let (ti, transfer) = alice.transfer_init(&held, &KmsUid::parse("bob@a.example").expect("uid"), 2, 0xaaaa, now(), rand::random()).expect("transfer");
    svc.persist().rotate(now().as_secs(), &random, "test").await.expect("rotate the ring");
    drop(svc);
    let sealed_rows = {
        let mut n = 0;
        for t in [Table::KeyRing, Table::Settings, Table::LiWarrants, Table::LiAudit] {
            n += store.list(t).await.expect("list").len() as u64;
        }
        n
    };
    assert_eq!(sealed_rows, 2 + 2 + 1 + 2, "{backend}: ring keys, KSAK and z, warrant, LI audit entry and its chain head");

    // Interrupted after 3 rows (as Ctrl-C or a crash): both keys' KMS refuse to start.
    let keys = || Keys::new(key(OLD), key(NEW)).expect("keys");
    let mut n = 0;
    let stop = rekey(&*store, keys(), Mode::Offline, &mut |p: &Progress| {
        n += u64::from(!p.table_done);
        if n == 3 { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
    })
    .await;
    assert!(matches!(stop, Err(KmsError::Rekey(RekeyError::Stopped { rows: 3 }))), "{backend}: {stop:?}");
    for master in [OLD, NEW] {
        let e = start(&store, master).await.err().expect("refused while unfinished").to_string();
        assert!(e.contains("mediasec kms rekey") && e.contains("not finished"), "{backend}: {e}");
    }

    // The second run finishes: the 3 rows done are skipped.
    let report = rekey(&*store, keys(), Mode::Offline, &mut go).await.expect("rekey");
    assert_eq!(report.total(), Counts { resealed: sealed_rows - 3, already_new: 3, ..Counts::default() }, "{backend}");

    // The old key no longer starts a KMS; the new one does, with the same KSAK and z, and
    // resolves the ticket issued before the rotation under the (retired) key 1.
    let e = start(&store, OLD).await.err().expect("old key refused").to_string();
    assert!(e.contains("wrong master key"), "{backend}: {e}");
    let svc = start(&store, NEW).await.expect("KMS on the new key");
    assert_eq!(svc.kpak(), Some(kpak), "{backend}: same KSAK");
    assert!(svc.persist().sakke_z().await.expect("z").is_some_and(|z| z.public_key() == z_pub), "{backend}: same z");
    assert_eq!(svc.persist().ring().await.expect("ring").keys().map(|k| k.id).collect::<Vec<_>>(), [1, 2]);
    let mut bob = ue("bob");
    let (ri, pr) = bob.resolve_init(&ti, 3, now(), rand::random()).expect("resolve init");
    let Reply::Response(rr) = svc.kms().ticket_resolve(&ri, now(), &zn(), &NoPeers).await else { panic!("{backend}: resolve refused") };
    let resolved = bob.on_resolve_resp(pr, &rr, now()).expect("resolved");
    let (tr, m_r) = bob.transfer_resp(&resolved, &ti, 0xbbbb, now()).expect("transfer resp");
    let (who, m_i) = alice.on_transfer_resp(&transfer, &tr, now()).expect("call keyed");
    assert_eq!(who.as_str(), "bob@a.example");
    assert_eq!(*m_i.initiator_stream.master_key, *m_r.initiator_stream.master_key, "{backend}: both ends derived the same keys");

    // Warrants read; the LI trail holds its entry unchanged plus the rotation's own; the
    // admin log the two runs' begin entries and the end.
    let p = svc.persist();
    assert_eq!(p.warrants().await.expect("warrants"), [w]);
    let trail = p.li_audit_log(0, 10).await.expect("LI audit");
    assert!(trail.chain.intact && trail.chain.head_seq == 2, "{backend}: the LI hash chain survives the rotation: {:?}", trail.chain);
    let li: Vec<_> = trail.entries.into_iter().map(|e| (e.action, e.at_unix_ms)).collect();
    let [first, last] = li.as_slice() else { panic!("{backend}: {li:?}") };
    assert_eq!(first, &("warrant.put".to_owned(), 1), "{backend}: the old entry as it was");
    assert_eq!(last.0, "master_key.rekey");
    let admin: Vec<String> = p.audit_log(0, 100).await.expect("audit").into_iter().map(|(_, e)| e.action).filter(|a| a.starts_with("master_key")).collect();
    assert_eq!(admin, ["master_key.rekey.begin", "master_key.rekey.begin", "master_key.rekey"], "{backend}");
    drop(svc);

    // A warrant row sealed under an unrelated key stops the next rotation, naming it; the row
    // is left as it was.
    let stranger = key([9; 32]);
    let foreign = stranger.seal(Table::LiWarrants, "W-foreign", b"{}").expect("seal");
    store.put(Table::LiWarrants, "W-foreign", &foreign).await.expect("put");
    let e = rekey(&*store, Keys::new(key(NEW), key([10; 32])).expect("keys"), Mode::Offline, &mut go).await.expect_err("stops");
    assert!(matches!(&e, KmsError::Rekey(RekeyError::Unopenable { table: "li_warrants", key }) if key == "W-foreign"), "{backend}: {e}");
    assert_eq!(store.get(Table::LiWarrants, "W-foreign").await.expect("get"), Some(foreign), "{backend}: unchanged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_on_redb() {
    let dir = std::env::temp_dir().join(format!("mediasec-kms-rekey-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let store: Arc<dyn Store> = Arc::new(mediasec_kms_store::RedbStore::open(&dir.join("kms.redb")).expect("redb"));
    scenario(store, "redb").await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_on_postgresql() {
    let pg = tokio::task::spawn_blocking(mediasec_kms_store::pg_lab::PgLab::start).await.expect("task").expect("PostgreSQL lab");
    let Some(pg) = pg else { return }; // skip line printed by PgLab (MEDIASEC_REQUIRE_PEERS=1 makes it fail)
    let url = pg.create_database("kms_rekey").expect("createdb");
    let store: Arc<dyn Store> = Arc::new(mediasec_kms_store::PgStore::connect(&url).await.expect("connect"));
    scenario(store, "postgres").await;
}

/// A KMS replica registered in the store with its keys, as `mediasec kms serve` runs one.
async fn replica(store: &Arc<dyn Store>, keys: MasterKeys, name: &str) -> Result<(Arc<Service>, Registration), KmsError> {
    let cfg = KmsConfig { fqdn: "kms.a.example".into(), domain: "a.example".into(), skew: 30 };
    let persist = Persist::new(Arc::clone(store), keys);
    let reg = mediasec_kms::rekey::register(&persist, name, Liveness::default()).await?;
    let svc = Service::start(cfg, persist, Arc::new(zn()), Arc::new(NoPeers), "admin".into(), os_random()).await?;
    Ok((svc, reg))
}

async fn stop(r: (Arc<Service>, Registration)) {
    r.1.deregister().await.expect("deregister");
}

fn keys_of(seal: [u8; 32], open_also: &[[u8; 32]]) -> MasterKeys {
    MasterKeys::new(key(seal), open_also.iter().map(|k| key(*k)).collect()).expect("keys")
}

/// One call: alice's ticket issued by `issuer`, resolved for bob by `resolver` (both reload
/// the ring from the store first, as replicas do every few seconds); both ends must derive
/// the same SRTP keys.
async fn call(issuer: &Service, resolver: &Service) -> Result<(), String> {
    issuer.reload().await.map_err(|e| format!("reload: {e}"))?;
    resolver.reload().await.map_err(|e| format!("reload: {e}"))?;
    let mut alice = ue("alice");
    let ask = Ask { recipients: vec![Pattern::parse("bob@a.example").expect("pattern")], reusable: false, forking: false, lifetime: 300 };
    let (req, pending) = alice.request_init(&ask, 1, now(), rand::random()).map_err(|e| e.to_string())?;
    let Reply::Response(resp) = issuer.kms().ticket_request(&req, now(), &zn()).await else { return Err("ticket refused".into()) };
    let held = alice.on_request_resp(pending, &resp, now()).map_err(|e| e.to_string())?;
    let (ti, transfer) = alice.transfer_init(&held, &KmsUid::parse("bob@a.example").expect("uid"), 2, 0xaaaa, now(), rand::random()).map_err(|e| e.to_string())?;
    let mut bob = ue("bob");
    let (ri, pr) = bob.resolve_init(&ti, 3, now(), rand::random()).map_err(|e| e.to_string())?;
    let Reply::Response(rr) = resolver.kms().ticket_resolve(&ri, now(), &zn(), &NoPeers).await else { return Err("resolve refused".into()) };
    let resolved = bob.on_resolve_resp(pr, &rr, now()).map_err(|e| e.to_string())?;
    let (tr, m_r) = bob.transfer_resp(&resolved, &ti, 0xbbbb, now()).map_err(|e| e.to_string())?;
    let (_, m_i) = alice.on_transfer_resp(&transfer, &tr, now()).map_err(|e| e.to_string())?;
    if *m_i.initiator_stream.master_key != *m_r.initiator_stream.master_key {
        return Err("the two ends derived different keys".into());
    }
    Ok(())
}

/// Calls across both replicas, both ways.
async fn calls(a: &Service, b: &Service, when: &str) {
    call(a, b).await.unwrap_or_else(|e| panic!("{when}: A issues, B resolves: {e}"));
    call(b, a).await.unwrap_or_else(|e| panic!("{when}: B issues, A resolves: {e}"));
}

/// The rolling online rotation with two KMS replicas on one PostgreSQL database, calls
/// served across them at every step (each issues tickets the other resolves, with the same
/// derived keys): phase 1 (each seals OLD and opens NEW; a replica sealing NEW is refused
/// while a replica cannot open NEW), phase 2 (each seals NEW and opens OLD; the ring rotated
/// by one replica under NEW is read by the other; the walk refused while one still seals
/// OLD), the walk while calls go on, then phase 3 (NEW alone). A KMS on the old key alone is
/// refused; both audit trails record the rotation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_rotation_with_two_replicas_on_postgresql() {
    let pg = tokio::task::spawn_blocking(mediasec_kms_store::pg_lab::PgLab::start).await.expect("task").expect("PostgreSQL lab");
    let Some(pg) = pg else { return };
    let url = pg.create_database("kms_online_rekey").expect("createdb");
    let store: Arc<dyn Store> = Arc::new(mediasec_kms_store::PgStore::connect(&url).await.expect("connect"));
    let w = provision(&store).await;
    let random = |b: &mut [u8]| rand::RngCore::fill_bytes(&mut rand::rng(), b);

    let a = replica(&store, keys_of(OLD, &[]), "A").await.expect("A");
    let b = replica(&store, keys_of(OLD, &[]), "B").await.expect("B");
    let kpak = a.0.kpak().expect("KPAK");
    calls(&a.0, &b.0, "before").await;

    // Phase 1, one replica at a time; sealing NEW is refused while B cannot open it.
    stop(a).await;
    let e = replica(&store, keys_of(NEW, &[OLD]), "A").await.err().expect("B cannot open NEW").to_string();
    assert!(e.contains("cannot open") && e.contains("B (seals with"), "{e}");
    let a = replica(&store, keys_of(OLD, &[NEW]), "A").await.expect("A in phase 1");
    calls(&a.0, &b.0, "A in phase 1").await;
    stop(b).await;
    let b = replica(&store, keys_of(OLD, &[NEW]), "B").await.expect("B in phase 1");
    calls(&a.0, &b.0, "phase 1").await;

    // Phase 2: A seals NEW (a ring key rotated under NEW, which B opens); the walk is refused
    // while B seals OLD.
    stop(a).await;
    let a = replica(&store, keys_of(NEW, &[OLD]), "A").await.expect("A in phase 2");
    a.0.persist().rotate(now().as_secs(), &random, "test").await.expect("ring rotated under NEW");
    calls(&a.0, &b.0, "A in phase 2").await;
    let pair = || Keys::new(key(OLD), key(NEW)).expect("keys");
    let e = rekey(&*store, pair(), Mode::Online(Liveness::default()), &mut go).await.expect_err("B seals OLD");
    assert!(matches!(&e, KmsError::Rekey(RekeyError::LiveServers { servers, .. }) if servers.starts_with("B (")), "{e}");
    stop(b).await;
    let b = replica(&store, keys_of(NEW, &[OLD]), "B").await.expect("B in phase 2");
    calls(&a.0, &b.0, "phase 2").await;

    // The walk, calls served across the replicas all the while.
    let (sa, sb) = (Arc::clone(&a.0), Arc::clone(&b.0));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = Arc::clone(&done);
    let traffic = tokio::spawn(async move {
        let mut n = 0u32;
        while !flag.load(std::sync::atomic::Ordering::SeqCst) || n < 2 {
            calls(&sa, &sb, "during the walk").await;
            n += 1;
        }
        n
    });
    let report = rekey(&*store, pair(), Mode::Online(Liveness::default()), &mut go).await.expect("online rekey");
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(traffic.await.expect("calls during the walk") >= 2);
    assert_eq!(report.total().resealed + report.total().already_new, 2 + 2 + 1 + 2, "{report}: 2 ring keys (the first, re-sealed under NEW by the rotation of the ring, and the second), KSAK and z, warrant, LI entry and its chain head");
    calls(&a.0, &b.0, "after the walk").await;

    // Phase 3: NEW alone; the old key alone is refused.
    stop(a).await;
    let a = replica(&store, keys_of(NEW, &[]), "A").await.expect("A in phase 3");
    stop(b).await;
    let b = replica(&store, keys_of(NEW, &[]), "B").await.expect("B in phase 3");
    calls(&a.0, &b.0, "phase 3").await;
    assert_eq!(a.0.kpak(), Some(kpak), "same KSAK");
    let e = replica(&store, keys_of(OLD, &[]), "C").await.err().expect("old key alone").to_string();
    assert!(e.contains("cannot open"), "{e}");
    assert_eq!(a.0.persist().warrants().await.expect("warrants"), [w]);
    let trail = a.0.persist().li_audit_log(0, 10).await.expect("LI audit");
    assert!(trail.chain.intact && trail.chain.head_seq == 2, "the LI hash chain survives the online rotation: {:?}", trail.chain);
    let li: Vec<String> = trail.entries.into_iter().map(|e| e.action).collect();
    assert_eq!(li, ["warrant.put", "master_key.rekey"]);
    let admin: Vec<String> = a.0.persist().audit_log(0, 100).await.expect("audit").into_iter().filter(|(_, e)| e.action.starts_with("master_key")).map(|(_, e)| format!("{} {}", e.action, e.detail)).collect();
    assert!(matches!(admin.as_slice(), [begin, end] if begin == "master_key.rekey.begin kms: online, started" && end.starts_with("master_key.rekey kms: ")), "{admin:?}");
    stop(a).await;
    stop(b).await;
}
