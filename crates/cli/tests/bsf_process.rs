//! Process-level test of `mediasec bsf`: kill -9 the real binary in the middle of a load of
//! bootstrapping challenges, restart it on the same database, and check that the SQN never
//! goes backwards (every SQN after the restart is above every SQN a UE saw before), and
//! that subscribers survive. And two `mediasec bsf --store postgres://…` processes sharing one
//! PostgreSQL, provisioned with `mediasec bsf subscriber add --store postgres://…`; the
//! master key is required and a wrong one is refused clearly.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use mediasec_bsf::client;
use mediasec_gba::digest::{AkaNonce, Challenge};
use mediasec_gba::milenage::{AutnCheck, Milenage};
use mediasec_gba::ue::UeBootstrap;

const BIN: &str = env!("CARGO_BIN_EXE_mediasec");
const IMPI: &str = "001010000000009@ims.mnc001.mcc001.3gppnetwork.org";
const K: &str = "465b5ce8b199b49faa5f0a2ee238a6bc";
const OPC: &str = "cd63cb71954a9f4e48a5994e37a02baf";

/// The BSF master key (64 hex digits): `--master-key` here, the environment in
/// [`two_bsf_processes_share_postgresql`].
const MASTER: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn start(db: &Path) -> (Child, String) {
    start_on("--db", db.as_os_str())
}

/// `mediasec bsf <flag> <store>` on a free port with the master key in
/// `MEDIASEC_BSF_MASTER_KEY`; its URL.
fn start_on(flag: &str, store: &std::ffi::OsStr) -> (Child, String) {
    let mut child = Command::new(BIN)
        .args(["bsf", flag])
        .arg(store)
        .env("MEDIASEC_BSF_MASTER_KEY", MASTER)
        .args(["--listen", "127.0.0.1:0", "--domain", "bsf.mnc001.mcc001.pub.3gppnetwork.org"])
        .args(["--zn-token", "z", "--admin-token", "a"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn mediasec bsf");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("read");
    let url = line.trim().strip_prefix("listening on ").expect("listening line").to_owned();
    (child, url)
}

fn milenage() -> Milenage {
    let k: [u8; 16] = hex::decode(K).expect("hex").try_into().expect("16");
    let opc: [u8; 16] = hex::decode(OPC).expect("hex").try_into().expect("16");
    Milenage::with_opc(&k, &opc)
}

/// One initial request; the SQN the BSF put in AUTN (as the USIM recovers it).
async fn challenge_sqn(url: &str) -> Option<u64> {
    let ue = UeBootstrap::new(IMPI, "bsf.mnc001.mcc001.pub.3gppnetwork.org", milenage(), 0);
    let ep = client::Endpoint::http(url).ok()?;
    let r = client::request(&ep, "GET", "/", &[("Authorization", &ue.initial_authorization())], b"").await.ok()?;
    let ch = Challenge::parse(r.header("www-authenticate")?).ok()?;
    let n = AkaNonce::decode(&ch.nonce).ok()?;
    match milenage().check_autn(&n.rand, &n.autn, 0, |_| true) {
        Ok(AutnCheck::Ok { sqn, .. }) => Some(sqn),
        _ => None,
    }
}

#[test]
fn kill_9_never_moves_sqn_backwards() {
    let db = std::env::temp_dir().join(format!("mediasec-bsf-kill9-{}.redb", std::process::id()));
    let _ = std::fs::remove_file(&db);
    let add = Command::new(BIN)
        .args(["bsf", "subscriber", "add", "--db"])
        .arg(&db)
        .args(["--master-key", MASTER, "--impi", IMPI, "--k", K, "--opc", OPC, "--impu", "sip:kill9@example.org"])
        .output()
        .expect("subscriber add");
    assert!(add.status.success(), "{}", String::from_utf8_lossy(&add.stderr));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
    let mut highest_seen = 0u64;
    for round in 0..3 {
        let (mut child, url) = start(&db);
        let first = rt.block_on(challenge_sqn(&url)).expect("first challenge after (re)start");
        assert!(first > highest_seen, "round {round}: SQN {first} after restart is not above {highest_seen}");
        let max = Arc::new(AtomicU64::new(first));
        let stop = Arc::new(AtomicBool::new(false));
        let load: Vec<_> = (0..4)
            .map(|_| {
                let (url, max, stop) = (url.clone(), Arc::clone(&max), Arc::clone(&stop));
                rt.spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        match challenge_sqn(&url).await {
                            Some(s) => {
                                max.fetch_max(s, Ordering::SeqCst);
                            }
                            None => break,
                        }
                    }
                })
            })
            .collect();
        std::thread::sleep(std::time::Duration::from_millis(400));
        child.kill().expect("kill -9"); // SIGKILL on Unix
        child.wait().expect("wait");
        stop.store(true, Ordering::Relaxed);
        for t in load {
            let _ = rt.block_on(t);
        }
        highest_seen = max.load(Ordering::SeqCst);
        assert!(highest_seen > first, "round {round}: the load produced challenges");
    }
    // Finally a full bootstrap by a USIM that accepted the highest SQN ever sent: it must
    // succeed without resynchronisation, and the subscriber is still there.
    let (mut child, url) = start(&db);
    let ue = UeBootstrap::new(IMPI, "bsf.mnc001.mcc001.pub.3gppnetwork.org", milenage(), highest_seen);
    let (boot, sqn_ms) = rt.block_on(client::bootstrap(&client::Endpoint::http(&url).expect("url"), ue)).expect("bootstrap after kill -9");
    assert!(sqn_ms > highest_seen);
    assert!(boot.btid.to_string().ends_with("@bsf.mnc001.mcc001.pub.3gppnetwork.org"));
    let zn = rt.block_on(client::zn_lookup(&client::Endpoint::http(&url).expect("url"), "z", &boot.btid.to_string(), "kms.example.org", "0100000006")).expect("zn").expect("found");
    assert_eq!(zn.impus, vec!["sip:kill9@example.org".to_owned()]);
    child.kill().expect("kill");
    child.wait().expect("wait");
    let _ = std::fs::remove_file(&db);
}

/// Kills the process (SIGKILL) and reaps it on drop, also when an assertion fails.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn two_bsf_processes_share_postgresql() {
    let pg = match mediasec_kms_store::pg_lab::PgLab::start() {
        Ok(Some(pg)) => pg,
        Ok(None) => return, // skip line printed by PgLab (MEDIASEC_REQUIRE_PEERS=1 makes it fail)
        Err(e) => panic!("PostgreSQL lab: {e}"),
    };
    let url = pg.create_database("bsf_cli").expect("database");
    let run = |args: &[&str], key: Option<&str>| {
        let mut cmd = Command::new(BIN);
        cmd.args(["bsf", "subscriber"]).args(args).args(["--store", &url]).env_remove("MEDIASEC_BSF_MASTER_KEY");
        if let Some(key) = key {
            cmd.env("MEDIASEC_BSF_MASTER_KEY", key);
        }
        let out = cmd.output().expect("mediasec bsf subscriber");
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let admin = |args: &[&str]| {
        let (ok, out, err) = run(args, Some(MASTER));
        assert!(ok, "{args:?}: {err}");
        out
    };
    admin(&["add", "--impi", IMPI, "--k", K, "--opc", OPC, "--impu", "sip:pg@example.org"]);
    admin(&["add", "--impi", "other@example.org", "--k", K, "--opc", OPC]);
    assert!(admin(&["list"]).contains(IMPI));
    admin(&["remove", "--impi", "other@example.org"]);
    assert!(!admin(&["list"]).contains("other@example.org"));
    // The master key is required, and another one does not open the sealed secrets.
    let (ok, _, err) = run(&["list"], None);
    assert!(!ok && err.contains("--master-key or MEDIASEC_BSF_MASTER_KEY is required"), "{err}");
    let (ok, out, err) = run(&["list"], Some(&"ab".repeat(32)));
    assert!(!ok && !out.contains(K) && err.contains("do not open under this BSF master key"), "{err}");
    let (ok, _, err) = run(&["list"], Some("not hex"));
    assert!(!ok && err.contains("master key is not hex"), "{err}");

    // A server started with another key stops at start, saying why.
    let out = Command::new(BIN)
        .args(["bsf", "--store", &url, "--listen", "127.0.0.1:0", "--zn-token", "z", "--admin-token", "a", "--master-key", &"cd".repeat(32)])
        .output()
        .expect("mediasec bsf");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("the master key does not open this store") && err.contains(IMPI), "{err}");
    let (a, url_a) = start_on("--store", url.as_ref());
    let (b, url_b) = start_on("--store", url.as_ref());
    let (_a, _b) = (Reaped(a), Reaped(b));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
    let ep = |u: &str| client::Endpoint::http(u).expect("url");
    // Ub at A, Zn at B; then Ub at B continues A's SQN without a resync.
    let ue = UeBootstrap::new(IMPI, "bsf.mnc001.mcc001.pub.3gppnetwork.org", milenage(), 0);
    let (boot, sqn_ms) = rt.block_on(client::bootstrap(&ep(&url_a), ue)).expect("bootstrap at A");
    assert_eq!(sqn_ms, 1);
    let zn = rt.block_on(client::zn_lookup(&ep(&url_b), "z", &boot.btid.to_string(), "kms.example.org", "0100000006")).expect("zn").expect("found at B");
    assert_eq!(zn.impus, vec!["sip:pg@example.org".to_owned()]);
    let ue = UeBootstrap::new(IMPI, "bsf.mnc001.mcc001.pub.3gppnetwork.org", milenage(), sqn_ms);
    let (_, sqn_ms) = rt.block_on(client::bootstrap(&ep(&url_b), ue)).expect("bootstrap at B");
    assert_eq!(sqn_ms, 2);
}

/// `mediasec bsf` on `url` with `envs` (its keys), stderr kept; its URL.
fn start_with_keys(url: &str, envs: &[(&str, &str)]) -> (Child, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(["bsf", "--store", url, "--listen", "127.0.0.1:0", "--zn-token", "z", "--admin-token", "a"]).env_remove("MEDIASEC_BSF_MASTER_KEY");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("spawn mediasec bsf");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("read");
    let url = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("listening line: {line:?}")).to_owned();
    (child, url)
}

/// Stops a server as Ctrl-C does (SIGINT): it removes its row from the store and exits.
fn interrupt(mut child: Child) {
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-INT", &pid]).status().expect("kill").success());
    assert!(child.wait().expect("wait").success());
}

/// The online rotation with real processes: a BSF of phase 1 blocks `bsf rekey --online`
/// (named in the refusal); a BSF of the old key alone cannot start next to one sealing the
/// new key; once the BSF runs in phase 2 (the phase-1 one stopped with Ctrl-C, which removes
/// its row), the online rekey runs while it serves, and the store then opens under the new key
/// alone.
#[test]
fn online_rekey_with_a_serving_bsf_process() {
    let pg = match mediasec_kms_store::pg_lab::PgLab::start() {
        Ok(Some(pg)) => pg,
        Ok(None) => return,
        Err(e) => panic!("PostgreSQL lab: {e}"),
    };
    let url = pg.create_database("bsf_online").expect("database");
    const NEW: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";
    let add = Command::new(BIN).args(["bsf", "subscriber", "add", "--store", &url, "--master-key", MASTER, "--impi", IMPI, "--k", K, "--opc", OPC]).output().expect("add");
    assert!(add.status.success(), "{}", String::from_utf8_lossy(&add.stderr));
    let rekey = || {
        let o = Command::new(BIN).args(["bsf", "rekey", "--online", "--store", &url, "--master-key", MASTER, "--new-master-key", NEW]).output().expect("rekey");
        (o.status.success(), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
    };

    let (phase1, phase1_url) = start_with_keys(&url, &[("MEDIASEC_BSF_MASTER_KEY", MASTER), ("MEDIASEC_BSF_PREVIOUS_MASTER_KEY", NEW)]);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    assert!(rt.block_on(challenge_sqn(&phase1_url)).is_some(), "phase 1 serves");
    let (ok, out) = rekey();
    assert!(!ok && out.contains("not yet: mediasec bsf on 127.0.0.1:0 pid"), "{out}");
    interrupt(phase1);

    let (phase2, phase2_url) = start_with_keys(&url, &[("MEDIASEC_BSF_MASTER_KEY", NEW), ("MEDIASEC_BSF_PREVIOUS_MASTER_KEY", MASTER)]);
    let old_alone = Command::new(BIN)
        .args(["bsf", "--store", &url, "--listen", "127.0.0.1:0", "--zn-token", "z", "--admin-token", "a", "--master-key", MASTER])
        .output()
        .expect("mediasec bsf");
    let err = String::from_utf8_lossy(&old_alone.stderr);
    assert!(!old_alone.status.success() && err.contains("cannot open"), "{err}");
    let (ok, out) = rekey();
    assert!(ok && out.contains("rekey bsf: done") && out.contains("1 re-sealed"), "{out}");
    assert!(rt.block_on(challenge_sqn(&phase2_url)).is_some(), "serves after the walk");
    interrupt(phase2);
    let list = Command::new(BIN).args(["bsf", "subscriber", "list", "--store", &url, "--master-key", NEW]).output().expect("list");
    assert!(list.status.success() && String::from_utf8_lossy(&list.stdout).contains(IMPI), "{}", String::from_utf8_lossy(&list.stderr));
}
