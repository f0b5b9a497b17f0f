//! Process-level test of `mediasec bsf rekey` on an embedded store (and the argument checks
//! of `mediasec kms rekey`): refused while a BSF serves the file; a rotation with the keys
//! from the environment re-seals the subscriber, prints progress per table and a summary;
//! afterwards the old key is refused by `bsf subscriber list` and by the server at start, the
//! new key serves; a second run finds everything done; a wrong current key exits non-zero
//! naming the row.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_mediasec");
const IMPI: &str = "001010000000077@ims.mnc001.mcc001.3gppnetwork.org";
const OLD: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const NEW: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";

fn bsf(args: &[&str], db: &Path, envs: &[(&str, &str)]) -> Output {
    let mut c = Command::new(BIN);
    c.arg("bsf").args(args).arg("--store").arg(db).env_remove("MEDIASEC_BSF_MASTER_KEY").env_remove("MEDIASEC_BSF_NEW_MASTER_KEY");
    for (k, v) in envs {
        c.env(k, v);
    }
    c.output().expect("run mediasec bsf")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn bsf_rekey_process() {
    let db = std::env::temp_dir().join(format!("mediasec-rekey-process-{}.redb", std::process::id()));
    let _ = std::fs::remove_file(&db);
    let add = bsf(&["subscriber", "add", "--master-key", OLD, "--impi", IMPI, "--k", "465b5ce8b199b49faa5f0a2ee238a6bc", "--opc", "cd63cb71954a9f4e48a5994e37a02baf"], &db, &[]);
    assert!(add.status.success(), "{}", text(&add));

    // A BSF serving the file: the rekey cannot open it, and says why.
    let mut server = Command::new(BIN)
        .args(["bsf", "--store"])
        .arg(&db)
        .args(["--master-key", OLD, "--listen", "127.0.0.1:0", "--zn-token", "z", "--admin-token", "a"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn bsf");
    let mut line = String::new();
    BufReader::new(server.stdout.take().expect("stdout")).read_line(&mut line).expect("read");
    assert!(line.starts_with("listening on "), "{line}");
    let busy = bsf(&["rekey"], &db, &[("MEDIASEC_BSF_MASTER_KEY", OLD), ("MEDIASEC_BSF_NEW_MASTER_KEY", NEW)]);
    assert!(!busy.status.success() && text(&busy).contains("still running"), "{}", text(&busy));
    server.kill().expect("kill");
    server.wait().expect("wait");

    // Missing new key: a clear message, nothing done.
    let none = bsf(&["rekey", "--master-key", OLD], &db, &[]);
    assert!(!none.status.success() && text(&none).contains("--new-master-key or MEDIASEC_BSF_NEW_MASTER_KEY is required"), "{}", text(&none));

    // The rotation, keys from the environment.
    let run = bsf(&["rekey"], &db, &[("MEDIASEC_BSF_MASTER_KEY", OLD), ("MEDIASEC_BSF_NEW_MASTER_KEY", NEW)]);
    let out = text(&run);
    assert!(run.status.success(), "{out}");
    assert!(out.contains("subscribers: 1 rows: 1 re-sealed, 0 already under the new key, 0 sealed from clear"), "{out}");
    assert!(out.contains("sessions: 0 rows") && out.contains("bsf_pending: 0 rows"), "{out}");
    assert!(out.contains("rekey bsf: done, 1 rows in 3 tables"), "{out}");

    // Old key refused (listing and server start), new key works.
    let old = bsf(&["subscriber", "list", "--master-key", OLD], &db, &[]);
    assert!(!old.status.success() && text(&old).contains("do not open under this BSF master key"), "{}", text(&old));
    let start_old = Command::new(BIN)
        .args(["bsf", "--store"])
        .arg(&db)
        .args(["--master-key", OLD, "--listen", "127.0.0.1:0", "--zn-token", "z", "--admin-token", "a"])
        .output()
        .expect("run bsf");
    assert!(!start_old.status.success() && text(&start_old).contains("the master key does not open this store"), "{}", text(&start_old));
    let new = bsf(&["subscriber", "list", "--master-key", NEW], &db, &[]);
    assert!(new.status.success() && text(&new).contains(IMPI), "{}", text(&new));

    // Again: everything is already done. With a wrong current key and another new key: the
    // row is named, exit non-zero.
    let again = bsf(&["rekey", "--master-key", OLD, "--new-master-key", NEW], &db, &[]);
    assert!(again.status.success() && text(&again).contains("0 re-sealed, 1 already under the new key"), "{}", text(&again));
    let third = "11".repeat(32);
    let wrong = bsf(&["rekey", "--master-key", OLD, "--new-master-key", &third], &db, &[]);
    assert!(!wrong.status.success() && text(&wrong).contains(&format!("row {IMPI:?} of table subscribers opens under neither")), "{}", text(&wrong));
    // That run left its rotation unfinished: the server refuses to start, saying so.
    let start_new = Command::new(BIN)
        .args(["bsf", "--store"])
        .arg(&db)
        .args(["--master-key", NEW, "--listen", "127.0.0.1:0", "--zn-token", "z", "--admin-token", "a"])
        .output()
        .expect("run bsf");
    assert!(!start_new.status.success() && text(&start_new).contains("mediasec bsf rekey"), "{}", text(&start_new));
    let _ = std::fs::remove_file(&db);
}

#[test]
fn kms_rekey_arguments() {
    let missing = std::env::temp_dir().join(format!("mediasec-rekey-missing-{}.redb", std::process::id()));
    let o = Command::new(BIN)
        .args(["kms", "rekey", "--store"])
        .arg(&missing)
        .env("MEDIASEC_KMS_MASTER_KEY", OLD)
        .env("MEDIASEC_KMS_NEW_MASTER_KEY", NEW)
        .output()
        .expect("run kms rekey");
    assert!(!o.status.success() && text(&o).contains("no such store file"), "{}", text(&o));
    assert!(!missing.exists(), "no store created");
    let same = Command::new(BIN).args(["kms", "rekey", "--store"]).arg(&missing).args(["--master-key", OLD, "--new-master-key", OLD]).output().expect("run");
    assert!(!same.status.success() && text(&same).contains("the new master key is the old master key"), "{}", text(&same));
    let help = Command::new(BIN).args(["kms", "rekey", "--help"]).output().expect("help");
    assert!(text(&help).contains("ps") && text(&help).contains("MEDIASEC_KMS_NEW_MASTER_KEY"), "{}", text(&help));
    assert!(text(&help).contains("--online"), "{}", text(&help));
    // Online needs PostgreSQL: an embedded store has one server, which holds the file.
    let db = std::env::temp_dir().join(format!("mediasec-rekey-online-{}.redb", std::process::id()));
    std::fs::write(&db, b"").expect("file");
    let online = Command::new(BIN).args(["kms", "rekey", "--online", "--store"]).arg(&db).args(["--master-key", OLD, "--new-master-key", NEW]).output().expect("run");
    assert!(!online.status.success() && text(&online).contains("--online needs a PostgreSQL store"), "{}", text(&online));
    let _ = std::fs::remove_file(&db);
    // A previous key equal to the sealing key is a configuration mistake, refused at start.
    let dup = Command::new(BIN)
        .args(["kms", "serve", "--fqdn", "kms.a.example", "--bsf", "http://127.0.0.1:9", "--zn-token", "z", "--store"])
        .arg(&db)
        .args(["--master-key", OLD, "--previous-master-key", OLD])
        .output()
        .expect("run");
    assert!(!dup.status.success() && text(&dup).contains("given twice"), "{}", text(&dup));
    assert!(!db.exists(), "refused before the store is opened");
}
