//! Master-key rotation of the KMS store (`mediasec_kms::rekey`), embedded (redb) and
//! PostgreSQL alike: a KMS with a two-key ticket ring (one retired), a KSAK, a SAKKE z, a
//! warrant and its LI audit entry issues a ticket; the rotation is interrupted, refused at
//! start while unfinished, and finished by a second run; then a KMS on the new key resolves
//! the ticket issued before the rotation (the call's keys agree end to end), a KMS on the old
//! key refuses to start, and a row sealed under an unrelated key stops a rotation naming it.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mediasec_kms::KmsError;
use mediasec_kms::identity::{KmsUid, Pattern};
use mediasec_kms::keyring::MasterKey;
use mediasec_kms::kms::{KmsConfig, NoPeers, Reply, os_random};
use mediasec_kms::li::Warrant;
use mediasec_kms::persist::Persist;
use mediasec_kms::policy::Policies;
use mediasec_kms::rekey::rekey;
use mediasec_kms::server::Service;
use mediasec_kms::ue::{Ask, Ue};
use mediasec_kms::users::User;
use mediasec_kms::zn::{NafKey, StaticZn};
use mediasec_kms_store::rekey::{Counts, Keys, Progress, RekeyError};
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

async fn scenario(store: Arc<dyn Store>, backend: &str) {
    let random = |b: &mut [u8]| rand::RngCore::fill_bytes(&mut rand::rng(), b);
    let p = Persist::new(Arc::clone(&store), key(OLD));
    p.put_document(&Policies::from_toml(POLICY).expect("policy"), "test", 1).await.expect("policy");
    for u in ["alice@a.example", "bob@a.example"] {
        p.put_user(&User { uid: KmsUid::parse(u).expect("uid"), enabled: true }, "test", 1).await.expect("user");
    }
    let w = Warrant { id: "W-1".into(), target: KmsUid::parse("alice@a.example").expect("uid"), not_before: 10, not_after: 20 };
    p.put_warrant(&w, 1, 2).await.expect("warrant");

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
    assert_eq!(sealed_rows, 2 + 2 + 1 + 1, "{backend}: ring keys, KSAK and z, warrant, LI audit entry");

    // Interrupted after 3 rows (as Ctrl-C or a crash): both keys' KMS refuse to start.
    let keys = || Keys::new(key(OLD), key(NEW)).expect("keys");
    let mut n = 0;
    let stop = rekey(&*store, keys(), &mut |p: &Progress| {
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
    let report = rekey(&*store, keys(), &mut go).await.expect("rekey");
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
    let li: Vec<_> = p.li_audit_log(0, 10).await.expect("LI audit").into_iter().map(|e| (e.action, e.at_unix_ms)).collect();
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
    let e = rekey(&*store, Keys::new(key(NEW), key([10; 32])).expect("keys"), &mut go).await.expect_err("stops");
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
