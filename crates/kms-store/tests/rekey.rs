//! Master-key rotation ([`mediasec_kms_store::rekey`]) against both backends (redb, and a real
//! PostgreSQL from the lab when installed): every row re-sealed in batches; an interrupted run
//! finished by a second one; a row under an unrelated key stops the run naming it and is
//! left as it was; a concurrent writer is not overwritten; the marker refuses servers until
//! the end; online, the servers' rows decide who may serve and whether the walk may start.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use mediasec_kms_store::pg_lab::PgLab;
use mediasec_kms_store::rekey::{Aad, Counts, Keys, Progress, RekeyError, Rotation, SealedTable, WholeValue, check_no_rotation};
use mediasec_kms_store::sealed::{MasterKey, MasterKeys};
use mediasec_kms_store::servers::{Liveness, Registration, ServerRecord};
use mediasec_kms_store::{AuditEntry, PgStore, RedbStore, Store, StoreFuture, Table};

const OLD: [u8; 32] = [1; 32];
const NEW: [u8; 32] = [2; 32];
/// Rows in the big table: more than two batches.
const ROWS: usize = mediasec_kms_store::rekey::BATCH * 2 + 7;

fn old() -> MasterKey {
    MasterKey::new(&OLD).expect("key")
}
fn new() -> MasterKey {
    MasterKey::new(&NEW).expect("key")
}
fn keys() -> Keys {
    Keys::new(old(), new()).expect("keys")
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

/// Each backend: a fresh store (and what keeps it alive).
fn backends(tag: &str, f: impl Fn(Arc<dyn Store>)) {
    let dir = std::env::temp_dir().join(format!("mediasec-kms-store-rekey-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    f(Arc::new(RedbStore::open(&dir.join("s.redb")).expect("redb")));
    let _ = std::fs::remove_dir_all(&dir);
    if let Some(lab) = PgLab::start().expect("PostgreSQL lab") {
        let url = lab.create_database("rekey_test").expect("createdb");
        f(rt().block_on(PgStore::connect(&url)).map(|s| Arc::new(s) as Arc<dyn Store>).expect("connect"));
    }
}

/// The rows written: `ROWS` settings sealed `settings:<key>` and 3 ring rows sealed with the
/// row key as AAD (as the KMS's ring), all under [`OLD`].
async fn fill(s: &dyn Store) {
    let m = old();
    for i in 0..ROWS {
        let k = format!("row{i:04}");
        s.put(Table::Settings, &k, &m.seal(Table::Settings, &k, k.as_bytes()).expect("seal")).await.expect("put");
    }
    for id in 1..=3u32 {
        let k = format!("{id:08x}");
        let v = mediasec_kms_store::sealed::seal_row(&m, &k, k.as_bytes(), [id as u8; 12]).expect("seal");
        s.put(Table::KeyRing, &k, &v).await.expect("put");
    }
}

const TABLES: [SealedTable<'static>; 2] =
    [SealedTable { table: Table::Settings, codec: &WholeValue(Aad::TableRow) }, SealedTable { table: Table::KeyRing, codec: &WholeValue(Aad::Row) }];

/// Every row opens under `m` to its own key (and so not under the other key).
async fn all_open_under(s: &dyn Store, m: &MasterKey) -> bool {
    let mut ok = true;
    for (k, v) in s.list(Table::Settings).await.expect("list") {
        ok &= m.open(Table::Settings, &k, &v).is_ok_and(|p| *p == *k.as_bytes());
    }
    for (k, v) in s.list(Table::KeyRing).await.expect("list") {
        ok &= mediasec_kms_store::sealed::open_row(m, &k, &v).is_ok_and(|p| *p == *k.as_bytes());
    }
    ok
}

fn go(_: &Progress) -> ControlFlow<()> {
    ControlFlow::Continue(())
}

#[test]
fn every_row_is_resealed_in_batches_and_recorded() {
    backends("all", |s| {
        rt().block_on(async {
            fill(&*s).await;
            // A server of the old key that crashed: its row does not outlive an offline rotation.
            let crashed = register(&s, &server(OLD, &[]), "crashed", Liveness::default()).await.expect("register");
            let bsf = Registration::register(Arc::clone(&s), "bsf", &server(OLD, &[]), "bsf", Liveness::default()).await.expect("register");
            let r = Rotation::begin(&*s, "kms", keys(), "test").await.expect("begin");
            assert_eq!(s.list(Table::Servers).await.expect("list").len(), 1, "the kms row removed, the bsf one kept");
            drop(crashed);
            bsf.deregister().await.expect("deregister");
            assert!(matches!(check_no_rotation(&*s, "kms", &old().into()).await, Err(RekeyError::Unfinished { .. })), "marker refuses servers meanwhile");
            check_no_rotation(&*s, "bsf", &old().into()).await.expect("another scope is not concerned");
            let mut seen = Vec::new();
            let report = r
                .run(&TABLES, &mut |p: &Progress| {
                    if p.table_done {
                        seen.push((p.table, p.counts.rows()));
                    }
                    ControlFlow::Continue(())
                })
                .await
                .expect("run");
            assert_eq!(seen, [(Table::Settings, ROWS as u64), (Table::KeyRing, 3)]);
            assert_eq!(report.total(), Counts { resealed: ROWS as u64 + 3, ..Counts::default() });
            r.finish(&report).await.expect("finish");
            check_no_rotation(&*s, "kms", &old().into()).await.expect("marker gone");
            assert!(all_open_under(&*s, &new()).await, "every row under the new key");
            let audit: Vec<String> = s.audit(0, 10).await.expect("audit").into_iter().map(|(_, e)| e.action).collect();
            assert_eq!(audit, ["master_key.rekey.begin", "master_key.rekey"]);

            // A second run finds everything done; the same key twice is refused.
            let r = Rotation::begin(&*s, "kms", keys(), "test").await.expect("begin");
            let again = r.run(&TABLES, &mut go).await.expect("run");
            assert_eq!(again.total(), Counts { already_new: ROWS as u64 + 3, ..Counts::default() });
            r.finish(&again).await.expect("finish");
            assert!(matches!(Keys::new(new(), new()), Err(RekeyError::SameKey)));
        });
    });
}

#[test]
fn an_interrupted_run_is_finished_by_the_next() {
    backends("resume", |s| {
        rt().block_on(async {
            fill(&*s).await;
            let r = Rotation::begin(&*s, "kms", keys(), "test").await.expect("begin");
            let stop_at = 300u64;
            let mut n = 0u64;
            let err = r
                .run(&TABLES, &mut |p: &Progress| {
                    n += u64::from(!p.table_done);
                    if n == stop_at { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
                })
                .await
                .expect_err("stopped");
            assert!(matches!(err, RekeyError::Stopped { rows } if rows == stop_at), "{err}");
            drop(r); // as a crash: no finish
            assert!(!all_open_under(&*s, &new()).await && !all_open_under(&*s, &old()).await, "mixed");
            let msg = check_no_rotation(&*s, "kms", &old().into()).await.expect_err("unfinished").to_string();
            assert!(msg.contains("mediasec kms rekey") && msg.contains("again"), "{msg}");

            // Resuming with another new key is refused; with the same one it finishes.
            let other = Keys::new(old(), MasterKey::new(&[3; 32]).expect("key")).expect("keys");
            assert!(matches!(Rotation::begin(&*s, "kms", other, "test").await, Err(RekeyError::OtherRotation { .. })));
            let r = Rotation::begin(&*s, "kms", keys(), "test").await.expect("resume");
            let report = r.run(&TABLES, &mut go).await.expect("run");
            assert_eq!(report.total(), Counts { resealed: ROWS as u64 + 3 - stop_at, already_new: stop_at, ..Counts::default() });
            r.finish(&report).await.expect("finish");
            assert!(all_open_under(&*s, &new()).await);
            check_no_rotation(&*s, "kms", &old().into()).await.expect("finished");
        });
    });
}

#[test]
fn a_row_under_an_unrelated_key_stops_the_run_and_is_not_written() {
    backends("foreign", |s| {
        rt().block_on(async {
            fill(&*s).await;
            let stranger = MasterKey::new(&[9; 32]).expect("key");
            let foreign = stranger.seal(Table::Settings, "row0100", b"row0100").expect("seal");
            s.put(Table::Settings, "row0100", &foreign).await.expect("put");
            let r = Rotation::begin(&*s, "kms", keys(), "test").await.expect("begin");
            let err = r.run(&TABLES, &mut go).await.expect_err("stops");
            assert!(matches!(&err, RekeyError::Unopenable { table: "settings", key } if key == "row0100"), "{err}");
            assert!(err.to_string().contains("\"row0100\""), "{err}");
            assert_eq!(s.get(Table::Settings, "row0100").await.expect("get"), Some(foreign), "left as it was");
            let under = |k: &'static str, m: MasterKey| {
                let s = Arc::clone(&s);
                async move { m.open(Table::Settings, k, &s.get(Table::Settings, k).await.expect("get").expect("row")).is_ok() }
            };
            assert!(under("row0099", new()).await, "rows before it done");
            assert!(under("row0101", old()).await, "rows after it not touched");
            check_no_rotation(&*s, "kms", &old().into()).await.expect_err("still unfinished");
        });
    });
}

/// A store whose first compare-and-swap of row `row0005` is preceded by another writer's
/// update of that row (sealed under the old key, new content).
struct Racing(Arc<dyn Store>, AtomicBool, AtomicU32);

impl Store for Racing {
    fn get<'a>(&'a self, t: Table, k: &'a str) -> StoreFuture<'a, Option<Vec<u8>>> {
        self.0.get(t, k)
    }
    fn put<'a>(&'a self, t: Table, k: &'a str, v: &'a [u8]) -> StoreFuture<'a, ()> {
        self.0.put(t, k, v)
    }
    fn put_if_absent<'a>(&'a self, t: Table, k: &'a str, v: &'a [u8]) -> StoreFuture<'a, Vec<u8>> {
        self.0.put_if_absent(t, k, v)
    }
    fn compare_and_swap<'a>(&'a self, t: Table, k: &'a str, e: Option<&'a [u8]>, n: Option<&'a [u8]>) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            if k == "row0005" && !self.1.swap(true, Ordering::SeqCst) {
                let v = old().seal(Table::Settings, k, b"written meanwhile").expect("seal");
                self.0.put(t, k, &v).await?;
            }
            self.2.fetch_add(1, Ordering::Relaxed);
            self.0.compare_and_swap(t, k, e, n).await
        })
    }
    fn range<'a>(&'a self, t: Table, f: &'a str, to: &'a str, l: usize) -> StoreFuture<'a, Vec<(String, Vec<u8>)>> {
        self.0.range(t, f, to, l)
    }
    fn range_from<'a>(&'a self, t: Table, f: &'a str, l: usize) -> StoreFuture<'a, Vec<(String, Vec<u8>)>> {
        self.0.range_from(t, f, l)
    }
    fn delete<'a>(&'a self, t: Table, k: &'a str) -> StoreFuture<'a, bool> {
        self.0.delete(t, k)
    }
    fn list<'a>(&'a self, t: Table) -> StoreFuture<'a, Vec<(String, Vec<u8>)>> {
        self.0.list(t)
    }
    fn append_audit<'a>(&'a self, e: &'a AuditEntry) -> StoreFuture<'a, u64> {
        self.0.append_audit(e)
    }
    fn audit<'a>(&'a self, a: u64, l: usize) -> StoreFuture<'a, Vec<(u64, AuditEntry)>> {
        self.0.audit(a, l)
    }
}

#[test]
fn a_concurrent_write_is_reread_not_overwritten() {
    backends("race", |s| {
        rt().block_on(async {
            fill(&*s).await;
            let racing = Racing(Arc::clone(&s), AtomicBool::new(false), AtomicU32::new(0));
            let r = Rotation::begin(&racing, "kms", keys(), "test").await.expect("begin");
            let report = r.run(&TABLES, &mut go).await.expect("run");
            r.finish(&report).await.expect("finish");
            assert_eq!(report.total().resealed, ROWS as u64 + 3);
            assert_eq!(racing.2.load(Ordering::Relaxed), ROWS as u32 + 3 + 1, "one lost swap, retried once");
            let v = s.get(Table::Settings, "row0005").await.expect("get").expect("row");
            assert_eq!(&*new().open(Table::Settings, "row0005", &v).expect("under the new key"), b"written meanwhile");
        });
    });
}

/// PostgreSQL: the sessions of other clients of the database are listed (what `rekey`
/// refuses to run under).
#[test]
fn pg_lists_other_sessions() {
    let Some(lab) = PgLab::start().expect("PostgreSQL lab") else { return };
    let url = lab.create_database("sessions_test").expect("createdb");
    rt().block_on(async {
        let me = PgStore::connect(&url).await.expect("connect");
        assert!(me.other_sessions().await.expect("sessions").is_empty(), "alone");
        let replica = PgStore::connect(&url).await.expect("connect");
        let others = me.other_sessions().await.expect("sessions");
        assert_eq!(others.len(), 1, "{others:?}");
        assert!(others.first().is_some_and(|s| s.starts_with("pid ")), "{others:?}");
        drop(replica);
    });
}

/// The keys of a server: sealing with `seal`, also opening with `open_also`.
fn server(seal: [u8; 32], open_also: &[[u8; 32]]) -> MasterKeys {
    MasterKeys::new(MasterKey::new(&seal).expect("key"), open_also.iter().map(|k| MasterKey::new(k).expect("key")).collect()).expect("keys")
}

async fn register(s: &Arc<dyn Store>, keys: &MasterKeys, label: &str, liveness: Liveness) -> Result<Registration, RekeyError> {
    Registration::register(Arc::clone(s), "kms", keys, label, liveness).await
}

/// The online rotation's phases on one store, with the servers' rows checked at every step:
/// a server that cannot open what a live one seals (or the reverse) is refused; the walk is
/// refused while a live server seals with the old key (its marker removed again); during the
/// walk only servers sealing with the new key and opening with the old one start; rows a
/// server writes under the new key meanwhile are left; afterwards a server with the old key
/// alone is refused next to the new ones.
#[test]
fn the_online_phases_are_checked_by_the_servers_rows() {
    backends("online", |s| {
        rt().block_on(async {
            fill(&*s).await;
            let l = Liveness::default();
            let (old_only, phase1, phase2, new_only) = (server(OLD, &[]), server(OLD, &[NEW]), server(NEW, &[OLD]), server(NEW, &[]));
            let a = register(&s, &old_only, "A", l).await.expect("A on the old key");
            let b = register(&s, &old_only, "B", l).await.expect("B on the old key");

            // Phase 2 before phase 1 is done: refused, A still serves.
            let e = register(&s, &phase2, "A2", l).await.expect_err("B cannot open NEW").to_string();
            assert!(e.contains("A2 (seals with") && e.contains("cannot open"), "{e}");
            // Phase 1: A opens NEW too; B as well.
            a.deregister().await.expect("A stops");
            let a = register(&s, &phase1, "A", l).await.expect("A in phase 1");
            let e = Rotation::begin_online(&*s, "kms", keys(), "test", &l).await.expect_err("everyone seals OLD").to_string();
            assert!(e.contains("A (seals with") && e.contains("B (seals with"), "{e}");
            assert_eq!(s.get(Table::Rekey, "kms").await.expect("get"), None, "the refused walk removed its marker");
            b.deregister().await.expect("B stops");
            let b = register(&s, &phase1, "B", l).await.expect("B in phase 1");
            // Phase 2: A seals NEW; the walk is refused while B still seals OLD.
            a.deregister().await.expect("A stops");
            let a = register(&s, &phase2, "A", l).await.expect("A in phase 2");
            let e = Rotation::begin_online(&*s, "kms", keys(), "test", &l).await.expect_err("B seals OLD").to_string();
            assert!(e.contains("B (seals with") && !e.contains("A (seals with"), "{e}");
            let e = register(&s, &old_only, "C", l).await.expect_err("a server of the old key alone").to_string();
            assert!(e.contains("cannot open"), "{e}");
            b.deregister().await.expect("B stops");
            let b = register(&s, &phase2, "B", l).await.expect("B in phase 2");

            // The walk: servers of phase 1 and of one key refused meanwhile, phase 2 accepted.
            let r = Rotation::begin_online(&*s, "kms", keys(), "test", &l).await.expect("every live server seals NEW");
            for (keys, who) in [(&old_only, "old key alone"), (&phase1, "phase 1"), (&new_only, "new key alone")] {
                assert!(matches!(register(&s, keys, "D", l).await, Err(RekeyError::Unfinished { .. })), "{who}");
                assert!(check_no_rotation(&*s, "kms", keys).await.is_err(), "{who}");
            }
            let c = register(&s, &phase2, "C", l).await.expect("phase 2 starts during the walk");
            // A row written by a server meanwhile, under the new key, is left as it is.
            s.put(Table::Settings, "row0001", &phase2.seal(Table::Settings, "row0001", b"row0001").expect("seal")).await.expect("put");
            let report = r.run(&TABLES, &mut go).await.expect("run");
            assert_eq!(report.total(), Counts { resealed: ROWS as u64 + 2, already_new: 1, ..Counts::default() });
            r.finish(&report).await.expect("finish");
            assert!(all_open_under(&*s, &new()).await, "every row under the new key");
            let audit: Vec<String> = s.audit(0, 10).await.expect("audit").into_iter().map(|(_, e)| format!("{} {}", e.action, e.detail)).collect();
            assert_eq!(audit.first().map(String::as_str), Some("master_key.rekey.begin kms: online, started"), "{audit:?}");
            assert!(audit.last().is_some_and(|e| e.starts_with("master_key.rekey kms: ")), "{audit:?}");

            // Phase 3: the new key alone joins; the old key alone is refused.
            let d = register(&s, &new_only, "D", l).await.expect("new key alone after the walk");
            assert!(matches!(register(&s, &old_only, "E", l).await, Err(RekeyError::Incompatible { .. })));
            for r in [a, b, c, d] {
                r.deregister().await.expect("stop");
            }
            assert!(s.list(Table::Servers).await.expect("list").is_empty(), "every row removed");
        });
    });
}

/// A server that stops refreshing its row (killed) blocks the walk only until its row is
/// older than the liveness timeout: then the walk deletes it and proceeds. If that server
/// comes back during the walk, its next refresh registers it again and, on the old key,
/// is refused (it must stop).
#[test]
fn a_server_gone_blocks_the_walk_only_until_its_row_is_stale() {
    backends("stale", |s| {
        rt().block_on(async {
            fill(&*s).await;
            let l = Liveness { heartbeat: std::time::Duration::from_millis(50), stale_after: std::time::Duration::from_millis(300) };
            let old_only = server(OLD, &[]);
            let gone = register(&s, &old_only, "killed", l).await.expect("register");
            gone.heartbeat(&old_only).await.expect("a refresh of a live row");
            let e = Rotation::begin_online(&*s, "kms", keys(), "test", &l).await.expect_err("live");
            assert!(matches!(e, RekeyError::LiveServers { .. }), "{e}");
            // No refresh for longer than the timeout: the row is a server gone.
            tokio::time::sleep(l.stale_after * 2).await;
            let r = Rotation::begin_online(&*s, "kms", keys(), "test", &l).await.expect("a stale row does not block");
            assert!(s.list(Table::Servers).await.expect("list").is_empty(), "the stale row was deleted");
            let e = gone.heartbeat(&old_only).await.expect_err("back during the walk, on the old key");
            assert!(matches!(e, RekeyError::Unfinished { .. }), "{e}");
            assert!(s.list(Table::Servers).await.expect("list").is_empty(), "not registered again");
            let report = r.run(&TABLES, &mut go).await.expect("run");
            r.finish(&report).await.expect("finish");
            assert!(all_open_under(&*s, &new()).await);
        });
    });
}

/// Registration and walk racing: each writes its own row first and reads the other's
/// second, so of a server on the old key registering and a walk starting at the same time,
/// at least one is refused, never both accepted.
#[test]
fn a_registration_racing_the_walk_never_both_succeed() {
    backends("race-online", |s| {
        rt().block_on(async {
            let l = Liveness::default();
            for _ in 0..20 {
                let old_only = server(OLD, &[]);
                let (reg, walk) = tokio::join!(register(&s, &old_only, "racer", l), Rotation::begin_online(&*s, "kms", keys(), "test", &l));
                assert!(reg.is_err() || walk.is_err(), "both accepted");
                if let Ok(r) = reg {
                    r.deregister().await.expect("deregister");
                }
                if let Ok(w) = walk {
                    w.finish(&Default::default()).await.expect("finish");
                }
            }
        });
    });
}

/// A fresh row of another process: on redb (one process holds the file) that process is gone,
/// so its row is deleted and holds nobody back; on PostgreSQL it is a live replica.
#[test]
fn a_row_of_another_process_counts_only_on_a_shared_store() {
    backends("process", |s| {
        rt().block_on(async {
            let (old_only, new_only) = (server(OLD, &[]), server(NEW, &[]));
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() as u64;
            let other = ServerRecord {
                label: "crashed elsewhere".into(),
                process: "another process".into(),
                seals: old_only.sealing().fingerprint(),
                opens: vec![old_only.sealing().fingerprint()],
                started_unix_ms: now,
                alive_unix_ms: now,
            };
            s.put(Table::Servers, "kms/0123", &serde_json::to_vec(&other).expect("json")).await.expect("put");
            let r = register(&s, &new_only, "restarted with the new key", Liveness::default()).await;
            if s.one_process() {
                r.expect("the other process is gone").deregister().await.expect("deregister");
                assert!(s.list(Table::Servers).await.expect("list").is_empty(), "its row deleted");
            } else {
                assert!(matches!(r, Err(RekeyError::Incompatible { .. })), "a live replica on the old key");
            }
        });
    });
}
