//! The KMS store contract, checked with the same code against every backend: conformance
//! (the compare-and-swap read-modify-write `update` included), property-based round trips,
//! concurrent writers (concurrent `update`s lose no update), and kill -9 durability (a child process
//! writes in a loop, reports each committed key, and is killed with SIGKILL mid-load).

#![allow(clippy::indexing_slicing)] // test code indexes the sequence numbers it collected

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use mediasec_kms_store::pg_lab::PgLab;
use mediasec_kms_store::{AuditEntry, PgStore, RedbStore, Step, Store, StoreError, Table, UPDATE_ATTEMPTS, update};
use zeroize::Zeroizing;
use proptest::prelude::*;

#[path = "store/pg_tls.rs"]
mod pg_tls;

/// Env var that turns the `kill9_child` test into the writer child: `redb:<path>` or
/// `pg:<url>`.
const CHILD_ENV: &str = "MEDIASEC_KMS_STORE_CHILD";

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "mediasec-kms-store-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A backend under test: how to open a fresh, empty store and how the child reopens it.
enum Backend {
    Redb(TempDir),
    /// A lab server and the URL of a fresh database on it.
    Pg(PgLab, String),
}

impl Backend {
    fn redb() -> Self {
        Self::Redb(TempDir::new("redb"))
    }

    /// A fresh database on a new lab server; `None` when PostgreSQL is not installed (the
    /// lab printed a skip line; with `MEDIASEC_REQUIRE_PEERS=1` it fails instead).
    fn pg() -> Option<Self> {
        let lab = PgLab::start().expect("PostgreSQL lab")?;
        let url = lab.create_database("kms_store_test").expect("createdb");
        Some(Self::Pg(lab, url))
    }

    /// The spec the writer child receives in [`CHILD_ENV`].
    fn child_spec(&self) -> String {
        match self {
            Self::Redb(d) => format!("redb:{}", d.0.join("kms.redb").display()),
            Self::Pg(_, url) => format!("pg:{url}"),
        }
    }

    async fn open(&self) -> Arc<dyn Store> {
        open_spec(&self.child_spec()).await
    }
}

async fn open_spec(spec: &str) -> Arc<dyn Store> {
    match spec.split_once(':') {
        Some(("redb", path)) => Arc::new(RedbStore::open(path.as_ref()).expect("open redb")),
        Some(("pg", url)) => Arc::new(PgStore::connect(url).await.expect("connect PostgreSQL")),
        _ => panic!("bad backend spec {spec:?}"),
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

fn entry(i: u64) -> AuditEntry {
    AuditEntry { at_unix_ms: 1_700_000_000_000 + i, actor: format!("admin-{i}"), action: "policy.put".into(), detail: format!("détail №{i}") }
}

/// The whole contract on a fresh, empty store.
async fn conformance(s: &dyn Store) {
    // get / put / replace / delete.
    assert_eq!(s.get(Table::Users, "alice@a.example").await.expect("get"), None);
    s.put(Table::Users, "alice@a.example", b"v1").await.expect("put");
    assert_eq!(s.get(Table::Users, "alice@a.example").await.expect("get").as_deref(), Some(&b"v1"[..]));
    s.put(Table::Users, "alice@a.example", b"v2-longer").await.expect("replace");
    assert_eq!(s.get(Table::Users, "alice@a.example").await.expect("get").as_deref(), Some(&b"v2-longer"[..]));
    assert!(s.delete(Table::Users, "alice@a.example").await.expect("delete"));
    assert!(!s.delete(Table::Users, "alice@a.example").await.expect("delete again"));
    assert_eq!(s.get(Table::Users, "alice@a.example").await.expect("get"), None);

    // put_if_absent: the first value stays; every caller gets the value held.
    assert_eq!(s.put_if_absent(Table::Settings, "once", b"first").await.expect("insert"), b"first");
    assert_eq!(s.put_if_absent(Table::Settings, "once", b"second").await.expect("kept"), b"first");
    assert_eq!(s.get(Table::Settings, "once").await.expect("get").as_deref(), Some(&b"first"[..]));
    assert!(matches!(s.put_if_absent(Table::Settings, "a\0b", b"x").await, Err(StoreError::Invalid(_))));
    assert!(s.delete(Table::Settings, "once").await.expect("delete"));

    // Tables are separate name spaces.
    for (i, t) in Table::ALL.into_iter().enumerate() {
        s.put(t, "same-key", format!("table {i}").as_bytes()).await.expect("put");
    }
    for (i, t) in Table::ALL.into_iter().enumerate() {
        assert_eq!(s.get(t, "same-key").await.expect("get"), Some(format!("table {i}").into_bytes()), "{t:?}");
    }
    assert!(s.delete(Table::Settings, "same-key").await.expect("delete"));
    assert!(s.get(Table::KeyRing, "same-key").await.expect("get").is_some(), "delete touched another table");
    assert!(s.delete(Table::Policies, "same-key").await.expect("delete"));

    // Empty and large values, binary content.
    s.put(Table::KeyRing, "empty", b"").await.expect("put empty");
    assert_eq!(s.get(Table::KeyRing, "empty").await.expect("get").as_deref(), Some(&b""[..]));
    let big: Vec<u8> = (0..1_048_576u32).map(|i| (i * 7 + i / 251) as u8).collect();
    s.put(Table::KeyRing, "big", &big).await.expect("put big");
    assert_eq!(s.get(Table::KeyRing, "big").await.expect("get").as_deref(), Some(big.as_slice()));

    // list: every row, sorted by key (byte order of the UTF-8 key, as Rust's `str` sorts).
    let keys = ["b", "a@b", "B", "é", "a", "?@b.example", "a@", "z\u{10FFFF}", "Ω", "ab", " "];
    for (i, k) in keys.iter().enumerate() {
        s.put(Table::Policies, k, &[i as u8, 0, 0xff]).await.expect("put");
    }
    let want: BTreeMap<String, Vec<u8>> = keys.iter().enumerate().map(|(i, k)| ((*k).to_owned(), vec![i as u8, 0, 0xff])).collect();
    let got = s.list(Table::Policies).await.expect("list");
    assert_eq!(got, want.into_iter().collect::<Vec<_>>());
    assert_eq!(s.list(Table::Settings).await.expect("list").len(), 0);

    // range: [from, to), sorted, limited.
    let range = |from: &'static str, to: &'static str, limit| s.range(Table::Policies, from, to, limit);
    let keys_of = |rows: Vec<(String, Vec<u8>)>| rows.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
    assert_eq!(keys_of(range("a", "b", 100).await.expect("range")), ["a", "a@", "a@b", "ab"]);
    assert_eq!(keys_of(range("a", "b", 2).await.expect("range")), ["a", "a@"]);
    assert_eq!(keys_of(range("a@", "a@b", 100).await.expect("range")), ["a@"], "end is exclusive");
    assert_eq!(keys_of(range("é", "\u{10FFFF}", 100).await.expect("range")), ["é", "Ω"]);
    assert!(range("b", "a", 100).await.expect("empty range").is_empty());
    assert!(range("a", "b", 0).await.expect("limit 0").is_empty());
    // range_from: [from, ∞), sorted, limited; keys above U+10FFFF's one-character string too.
    let from = |from: &'static str, limit| s.range_from(Table::Policies, from, limit);
    assert_eq!(keys_of(from("é", 100).await.expect("range_from")), ["é", "Ω"]);
    assert_eq!(keys_of(from("ab", 2).await.expect("range_from")), ["ab", "b"]);
    assert_eq!(keys_of(from("z", 1).await.expect("range_from")), ["z\u{10FFFF}"]);
    s.put(Table::VoicemailMeta, "\u{10FFFF}\u{10FFFF}", b"top").await.expect("put");
    let top = s.range_from(Table::VoicemailMeta, "\u{10FFFF}", 10).await.expect("range_from");
    assert_eq!(keys_of(top), ["\u{10FFFF}\u{10FFFF}"], "no upper bound: above every one-character key");
    assert!(s.delete(Table::VoicemailMeta, "\u{10FFFF}\u{10FFFF}").await.expect("delete"));
    assert_eq!(from("", 100).await.expect("range_from").len(), keys.len());
    assert!(from("a", 0).await.expect("limit 0").is_empty());

    // compare_and_swap: insert if absent, swap on equal, delete on equal; a mismatch changes
    // nothing.
    let cas = |exp: Option<&'static [u8]>, new: Option<&'static [u8]>| s.compare_and_swap(Table::BsfSubscribers, "imsi", exp, new);
    assert!(cas(None, None).await.expect("absent"));
    assert!(cas(None, Some(b"v1")).await.expect("insert"));
    assert!(!cas(None, Some(b"v0")).await.expect("present: no insert"));
    assert!(!cas(Some(b"v0"), Some(b"v2")).await.expect("mismatch"));
    assert!(!cas(None, None).await.expect("present"));
    assert_eq!(s.get(Table::BsfSubscribers, "imsi").await.expect("get").as_deref(), Some(&b"v1"[..]));
    assert!(cas(Some(b"v1"), Some(b"v2")).await.expect("swap"));
    assert!(!cas(Some(b"v1"), None).await.expect("stale delete"));
    assert_eq!(s.get(Table::BsfSubscribers, "imsi").await.expect("get").as_deref(), Some(&b"v2"[..]));
    assert!(cas(Some(b"v2"), None).await.expect("delete"));
    assert_eq!(s.get(Table::BsfSubscribers, "imsi").await.expect("get"), None);
    assert!(!cas(Some(b"v2"), Some(b"v3")).await.expect("absent: no swap"));
    assert_eq!(s.get(Table::BsfSubscribers, "imsi").await.expect("get"), None);

    // Read-modify-write through `update`.
    update_steps(s).await;

    // NUL is refused by every backend (PostgreSQL text cannot hold it).
    for r in [
        s.put(Table::Users, "a\0b", b"x").await.map(drop),
        s.get(Table::Users, "a\0b").await.map(drop),
        s.delete(Table::Users, "a\0b").await.map(drop),
        s.compare_and_swap(Table::Users, "a\0b", None, Some(b"x")).await.map(drop),
        s.range(Table::Users, "a\0", "b", 1).await.map(drop),
        s.range_from(Table::Users, "a\0", 1).await.map(drop),
    ] {
        assert!(matches!(r, Err(StoreError::Invalid(_))), "{r:?}");
    }
    let bad = AuditEntry { detail: "x\0".into(), ..entry(0) };
    assert!(matches!(s.append_audit(&bad).await, Err(StoreError::Invalid(_))));

    // Audit: strictly increasing sequence numbers, paging with `after`/`limit`.
    assert!(s.audit(0, 100).await.expect("audit").is_empty());
    let mut seqs = Vec::new();
    for i in 1..=5 {
        seqs.push(s.append_audit(&entry(i)).await.expect("append"));
    }
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    let all = s.audit(0, 100).await.expect("audit");
    assert_eq!(all, seqs.iter().zip(1..).map(|(q, i)| (*q, entry(i))).collect::<Vec<_>>());
    assert_eq!(s.audit(seqs[1], 2).await.expect("page"), vec![(seqs[2], entry(3)), (seqs[3], entry(4))]);
    assert!(s.audit(seqs[4], 10).await.expect("after last").is_empty());
    assert!(s.audit(0, 0).await.expect("limit 0").is_empty());
    assert!(s.audit(u64::MAX, 10).await.expect("after max").is_empty());
    // After the fresh appends, a new one is still greater than every earlier one.
    let next = s.append_audit(&entry(6)).await.expect("append");
    assert!(next > seqs[4]);
}

/// Many writers at once: every put lands, every audit sequence number is distinct, and the
/// log reads back in increasing order with all entries.
async fn concurrent_writers(s: Arc<dyn Store>) {
    let mut tasks = Vec::new();
    for w in 0..8u64 {
        let s = Arc::clone(&s);
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..10u64 {
                s.put(Table::Users, &format!("w{w}-k{i}"), &(w * 100 + i).to_be_bytes()).await.expect("put");
                seqs.push(s.append_audit(&entry(w * 100 + i)).await.expect("append"));
            }
            seqs
        }));
    }
    // Concurrent put_if_absent of distinct values: one wins, every writer reads the winner.
    let racers: Vec<_> = (0..8u8)
        .map(|w| {
            let s = Arc::clone(&s);
            tokio::spawn(async move { s.put_if_absent(Table::Settings, "race", &[w; 4]).await.expect("put_if_absent") })
        })
        .collect();
    let mut held = Vec::new();
    for r in racers {
        held.push(r.await.expect("task"));
    }
    let stored = s.get(Table::Settings, "race").await.expect("get").expect("a winner");
    assert!(held.iter().all(|h| *h == stored), "{held:?} vs {stored:?}");
    // Concurrent read-modify-write through `update`: no increment is lost, and every updater
    // saw each value it wrote exactly once (the values returned are distinct).
    let counters: Vec<_> = (0..8)
        .map(|_| {
            let s = Arc::clone(&s);
            tokio::spawn(async move {
                let mut mine = Vec::new();
                for _ in 0..10 {
                    mine.push(increment(&*s, "counter").await.expect("update"));
                }
                mine
            })
        })
        .collect();
    let mut written = Vec::new();
    for c in counters {
        written.extend(c.await.expect("task"));
    }
    written.sort_unstable();
    assert_eq!(written, (1..=80).collect::<Vec<_>>(), "every increment applied once");
    assert_eq!(s.get(Table::Settings, "counter").await.expect("get"), Some(80u64.to_be_bytes().to_vec()), "lost increments");
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.extend(t.await.expect("task"));
    }
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), 80, "audit sequence numbers reused");
    let log = s.audit(0, 1000).await.expect("audit");
    assert_eq!(log.iter().map(|(q, _)| *q).collect::<Vec<_>>(), seqs);
    let rows = s.list(Table::Users).await.expect("list");
    assert_eq!(rows.len(), 80);
    for (k, v) in rows {
        let (w, i) = k.strip_prefix('w').and_then(|r| r.split_once("-k")).expect("key shape");
        let n: u64 = w.parse::<u64>().expect("w") * 100 + i.parse::<u64>().expect("i");
        assert_eq!(v, n.to_be_bytes());
    }
}

/// Adds one to the big-endian counter in row `key` of `Settings` (absent: 0) through
/// [`update`]; returns the value written.
async fn increment(s: &dyn Store, key: &str) -> Result<u64, StoreError> {
    update(s, Table::Settings, key, |held| {
        let n = held.map_or(Ok(0), |v| <[u8; 8]>::try_from(v).map(u64::from_be_bytes)).map_err(|_| StoreError::Corrupt("counter".into()))?;
        Ok(Step::Write(Some(Zeroizing::new((n + 1).to_be_bytes().to_vec())), n + 1))
    })
    .await
}

/// [`update`] on one store: write, keep, delete, the function's error, and the function
/// shown the row as it is when it is called.
async fn update_steps(s: &dyn Store) {
    assert_eq!(increment(s, "u").await.expect("from absent"), 1);
    assert_eq!(increment(s, "u").await.expect("again"), 2);
    // Keep: nothing written, the value returned.
    let seen = update(s, Table::Settings, "u", |held| Ok::<_, StoreError>(Step::Keep(held.map(<[u8]>::to_vec)))).await.expect("keep");
    assert_eq!(seen, Some(2u64.to_be_bytes().to_vec()));
    let absent = update(s, Table::Settings, "none", |held| Ok::<_, StoreError>(Step::Keep(held.is_none()))).await.expect("keep absent");
    assert!(absent);
    assert_eq!(s.get(Table::Settings, "none").await.expect("get"), None, "keep on an absent row writes nothing");
    // The function's error comes back at once; the row is untouched.
    let err = update(s, Table::Settings, "u", |_| Err::<Step<()>, _>(StoreError::Invalid("refused".into()))).await;
    assert!(matches!(err, Err(StoreError::Invalid(ref m)) if m == "refused"), "{err:?}");
    assert_eq!(s.get(Table::Settings, "u").await.expect("get"), Some(2u64.to_be_bytes().to_vec()));
    // Delete through a write of `None`.
    assert!(update(s, Table::Settings, "u", |held| Ok::<_, StoreError>(Step::Write(None, held.is_some()))).await.expect("delete"));
    assert_eq!(s.get(Table::Settings, "u").await.expect("get"), None);
}

/// A store whose every compare-and-swap loses, as if another writer always got in first.
struct AlwaysContended(Arc<dyn Store>, AtomicU32);

impl Store for AlwaysContended {
    fn get<'a>(&'a self, table: Table, key: &'a str) -> mediasec_kms_store::StoreFuture<'a, Option<Vec<u8>>> {
        self.1.fetch_add(1, Ordering::Relaxed);
        self.0.get(table, key)
    }
    fn put<'a>(&'a self, table: Table, key: &'a str, value: &'a [u8]) -> mediasec_kms_store::StoreFuture<'a, ()> {
        self.0.put(table, key, value)
    }
    fn put_if_absent<'a>(&'a self, table: Table, key: &'a str, value: &'a [u8]) -> mediasec_kms_store::StoreFuture<'a, Vec<u8>> {
        self.0.put_if_absent(table, key, value)
    }
    fn compare_and_swap<'a>(&'a self, _: Table, _: &'a str, _: Option<&'a [u8]>, _: Option<&'a [u8]>) -> mediasec_kms_store::StoreFuture<'a, bool> {
        Box::pin(async { Ok(false) })
    }
    fn range<'a>(&'a self, table: Table, from: &'a str, to: &'a str, limit: usize) -> mediasec_kms_store::StoreFuture<'a, Vec<(String, Vec<u8>)>> {
        self.0.range(table, from, to, limit)
    }
    fn range_from<'a>(&'a self, table: Table, from: &'a str, limit: usize) -> mediasec_kms_store::StoreFuture<'a, Vec<(String, Vec<u8>)>> {
        self.0.range_from(table, from, limit)
    }
    fn delete<'a>(&'a self, table: Table, key: &'a str) -> mediasec_kms_store::StoreFuture<'a, bool> {
        self.0.delete(table, key)
    }
    fn list<'a>(&'a self, table: Table) -> mediasec_kms_store::StoreFuture<'a, Vec<(String, Vec<u8>)>> {
        self.0.list(table)
    }
    fn append_audit<'a>(&'a self, entry: &'a AuditEntry) -> mediasec_kms_store::StoreFuture<'a, u64> {
        self.0.append_audit(entry)
    }
    fn audit<'a>(&'a self, after: u64, limit: usize) -> mediasec_kms_store::StoreFuture<'a, Vec<(u64, AuditEntry)>> {
        self.0.audit(after, limit)
    }
}

/// An updater that loses every swap gives up after [`UPDATE_ATTEMPTS`] reads with the typed
/// [`StoreError::Contention`], and writes nothing.
#[test]
fn update_gives_up_with_contention_after_its_attempts() {
    let b = Backend::redb();
    rt().block_on(async {
        let s = AlwaysContended(b.open().await, AtomicU32::new(0));
        let err = increment(&s, "hot").await;
        match err {
            Err(StoreError::Contention { table, ref key, attempts }) => assert_eq!((table, key.as_str(), attempts), ("settings", "hot", UPDATE_ATTEMPTS)),
            other => panic!("{other:?}"),
        }
        assert_eq!(s.1.load(Ordering::Relaxed) as usize, UPDATE_ATTEMPTS, "one read per attempt");
        assert_eq!(s.0.get(Table::Settings, "hot").await.expect("get"), None);
    });
}

/// Arbitrary keys (no NUL) and values: what goes in comes back, `list` is sorted.
fn roundtrip_props(b: &Backend, cases: u32) {
    let rt = rt();
    let store = rt.block_on(b.open());
    let cfg = ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() };
    proptest!(cfg, |(rows in prop::collection::btree_map("[^\u{0}]{0,40}", prop::collection::vec(any::<u8>(), 0..300), 0..12),
                     overwrite in prop::collection::vec(any::<u8>(), 0..50))| {
        rt.block_on(async {
            for (k, _) in store.list(Table::Settings).await.expect("list") {
                store.delete(Table::Settings, &k).await.expect("clear");
            }
            for (k, v) in &rows {
                store.put(Table::Settings, k, &overwrite).await.expect("put");
                store.put(Table::Settings, k, v).await.expect("replace");
            }
            for (k, v) in &rows {
                let got = store.get(Table::Settings, k).await.expect("get");
                prop_assert_eq!(got.as_ref(), Some(v));
            }
            prop_assert_eq!(store.list(Table::Settings).await.expect("list"), rows.clone().into_iter().collect::<Vec<_>>());
            Ok(())
        })?;
    });
}

/// Value written for key number `i` by the kill -9 child.
fn child_value(i: u64) -> Vec<u8> {
    let mut v = i.to_be_bytes().to_vec();
    v.extend(std::iter::repeat_n((i % 251) as u8, (i % 97) as usize));
    v
}

/// The writer child: opens the store named by [`CHILD_ENV`] and writes until killed,
/// printing `committed <n> <audit seq>` after each durable put + audit append.
#[test]
#[ignore = "the writer child of the kill -9 tests, which start it themselves"]
fn kill9_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else { return };
    rt().block_on(async {
        let s = open_spec(&spec).await;
        for i in 0u64.. {
            let key = format!("key-{i:08}");
            s.put(Table::KeyRing, &key, &child_value(i)).await.expect("child put");
            let seq = s.append_audit(&entry(i)).await.expect("child audit");
            println!("committed {i} {seq}");
        }
    });
}

/// Parent side of kill -9: start the child, let it commit at least `min` writes, SIGKILL it
/// mid-load, reopen, and check that every reported write is there with its value.
fn kill9(b: &Backend, min: u64) {
    let exe = std::env::current_exe().expect("current exe");
    let mut child = Command::new(exe)
        .args(["--exact", "kill9_child", "--ignored", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, b.child_spec())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut committed: Vec<(u64, u64)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(40);
    while (committed.len() as u64) < min {
        assert!(Instant::now() < deadline, "child too slow: {} writes", committed.len());
        let Some(Ok(line)) = lines.next() else { panic!("child ended after {} writes", committed.len()) };
        if let Some(rest) = line.strip_prefix("committed ") {
            let (i, seq) = rest.split_once(' ').expect("line shape");
            committed.push((i.parse().expect("i"), seq.parse().expect("seq")));
        }
    }
    child.kill().expect("SIGKILL"); // std's Child::kill sends SIGKILL on Unix
    let status = child.wait().expect("reap");
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(9), "child was not killed mid-load: {status}");
    // Lines already printed before the kill were committed too.
    for line in lines.map_while(Result::ok) {
        if let Some((i, seq)) = line.strip_prefix("committed ").and_then(|r| r.split_once(' ')) {
            committed.push((i.parse().expect("i"), seq.parse().expect("seq")));
        }
    }
    rt().block_on(async {
        let s = b.open().await;
        for (i, _) in &committed {
            let got = s.get(Table::KeyRing, &format!("key-{i:08}")).await.expect("get");
            assert_eq!(got, Some(child_value(*i)), "committed key {i} lost after kill -9");
        }
        let log: BTreeMap<u64, AuditEntry> = s.audit(0, usize::MAX).await.expect("audit").into_iter().collect();
        for (i, seq) in &committed {
            assert_eq!(log.get(seq), Some(&entry(*i)), "committed audit entry {seq} lost after kill -9");
        }
        // The store still works after recovery.
        let seq = s.append_audit(&entry(0)).await.expect("append after recovery");
        assert!(committed.iter().all(|(_, q)| *q < seq));
    });
    eprintln!("kill -9: {} committed writes checked after recovery", committed.len());
}

#[test]
fn redb_conformance() {
    let b = Backend::redb();
    rt().block_on(async { conformance(&*b.open().await).await });
}

#[test]
fn redb_concurrent_writers() {
    let b = Backend::redb();
    rt().block_on(async { concurrent_writers(b.open().await).await });
}

#[test]
fn redb_roundtrip_props() {
    roundtrip_props(&Backend::redb(), 32);
}

#[test]
fn redb_kill9_durability() {
    kill9(&Backend::redb(), 200);
}

#[test]
fn redb_reopen_keeps_data() {
    let b = Backend::redb();
    rt().block_on(async {
        let s = b.open().await;
        s.put(Table::Policies, "a.example", b"policy").await.expect("put");
        let seq = s.append_audit(&entry(1)).await.expect("audit");
        drop(s);
        let s = b.open().await;
        assert_eq!(s.get(Table::Policies, "a.example").await.expect("get").as_deref(), Some(&b"policy"[..]));
        assert_eq!(s.audit(0, 10).await.expect("audit"), vec![(seq, entry(1))]);
        assert!(s.append_audit(&entry(2)).await.expect("audit") > seq);
    });
}

#[test]
fn redb_open_fails_cleanly_on_a_non_database_file() {
    let d = TempDir::new("garbage");
    let p = d.0.join("not-a-db");
    std::fs::write(&p, b"this is not a redb file, just some bytes that are long enough").expect("write");
    assert!(matches!(RedbStore::open(&p), Err(StoreError::Unavailable(_))));
}

#[test]
fn pg_conformance() {
    let Some(b) = Backend::pg() else { return };
    rt().block_on(async { conformance(&*b.open().await).await });
}

#[test]
fn pg_concurrent_writers() {
    let Some(b) = Backend::pg() else { return };
    rt().block_on(async { concurrent_writers(b.open().await).await });
}

#[test]
fn pg_roundtrip_props() {
    let Some(b) = Backend::pg() else { return };
    roundtrip_props(&b, 16);
}

#[test]
fn pg_kill9_durability() {
    let Some(b) = Backend::pg() else { return };
    kill9(&b, 100);
}

/// Replicas: several stores connect to one fresh database at once (schema creation races),
/// then write concurrently; each sees the others' writes, sequence numbers stay unique and
/// in commit order, concurrent `update`s of one row through the replicas lose no increment,
/// and a store reconnects after its server connection is killed.
#[test]
fn pg_replicas_share_one_database() {
    let Some(b) = Backend::pg() else { return };
    let Backend::Pg(lab, url) = &b else { unreachable!() };
    rt().block_on(async {
        let mut connecting = tokio::task::JoinSet::new();
        for _ in 0..4 {
            let url = url.clone();
            connecting.spawn(async move { PgStore::connect(&url).await });
        }
        let replicas: Vec<Arc<dyn Store>> =
            connecting.join_all().await.into_iter().map(|r| Arc::new(r.expect("replica connects")) as Arc<dyn Store>).collect();
        let mut writers = tokio::task::JoinSet::new();
        for (r, s) in replicas.iter().enumerate() {
            let s = Arc::clone(s);
            writers.spawn(async move {
                let mut seqs = Vec::new();
                for i in 0..15u64 {
                    // Every replica writes the same hot key too (upsert under contention).
                    s.put(Table::Policies, "hot", &[r as u8]).await.expect("put hot");
                    s.put(Table::Users, &format!("r{r}-{i}"), &i.to_be_bytes()).await.expect("put");
                    seqs.push(s.append_audit(&entry(i)).await.expect("append"));
                }
                seqs
            });
        }
        let mut seqs: Vec<u64> = writers.join_all().await.into_iter().flatten().collect();
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=60).collect::<Vec<u64>>(), "sequence numbers unique, gap-free");
        for s in &replicas {
            assert_eq!(s.list(Table::Users).await.expect("list").len(), 60);
            assert!(s.get(Table::Policies, "hot").await.expect("get").is_some_and(|v| v.len() == 1));
        }
        // Read-modify-write of one row through `update` from every replica (its own
        // connection, so the swaps race in the server): no increment is lost.
        let mut updaters = tokio::task::JoinSet::new();
        for s in &replicas {
            let s = Arc::clone(s);
            updaters.spawn(async move {
                let mut mine = Vec::new();
                for _ in 0..15 {
                    mine.push(increment(&*s, "shared-counter").await.expect("update"));
                }
                mine
            });
        }
        let mut written: Vec<u64> = updaters.join_all().await.into_iter().flatten().collect();
        written.sort_unstable();
        assert_eq!(written, (1..=60).collect::<Vec<u64>>(), "every replica's increment applied once");
        assert_eq!(replicas[1].get(Table::Settings, "shared-counter").await.expect("get"), Some(60u64.to_be_bytes().to_vec()));
        // Kill the server-side sessions of replica 0; its next calls reconnect.
        let (client, conn) = tokio_postgres::connect(&lab.url(), tokio_postgres::NoTls).await.expect("psql");
        tokio::spawn(conn);
        client
            .execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'kms_store_test' AND pid <> pg_backend_pid()", &[])
            .await
            .expect("terminate");
        let s = &replicas[0];
        let mut recovered = false;
        for _ in 0..3 {
            match s.get(Table::Policies, "hot").await {
                Ok(v) => {
                    recovered = v.is_some();
                    break;
                }
                Err(StoreError::Unavailable(_)) => continue,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(recovered, "store did not reconnect");
    });
}

#[test]
fn pg_connect_failure_is_unavailable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let r = rt().block_on(PgStore::connect(&format!("postgres://postgres@127.0.0.1:{port}/x")));
    assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
}

/// The `pg_conninfo` fuzz corpus replays through the fuzz target's function.
#[test]
fn fuzz_corpus_replays() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/corpus/pg_conninfo");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).expect("corpus") {
        let bytes = std::fs::read(entry.expect("entry").path()).expect("read");
        mediasec_kms_store::fuzz_conninfo(&bytes);
        n += 1;
    }
    assert!(n >= 3, "corpus has {n} files");
}
