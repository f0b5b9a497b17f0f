//! Process-level test of `mediasec voicemail serve --store postgres://…`: two voicemail server
//! processes share one PostgreSQL database (docs/voicemail.md). A call diverted to the first
//! (the one registered with the S-CSCF) is stored there; the mailbox owner lists, downloads
//! and decrypts it through the second's retrieval API, and a delete through the second is seen
//! by the first. The first connects with `sslmode=verify-full` to a TLS lab server (and says
//! so in its log), the second without TLS; neither logs the connection string's password.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mediasec_bsf::client::Endpoint;
use mediasec_cscf::lab::{LabConfig, TwoDomains};
use mediasec_gba::kdf::{NafId, UaProtocolId};
use mediasec_kms::identity::KmsUid;
use mediasec_kms::lab::{DomainSpec, Lab as KmsLab};
use mediasec_kms_store::pg_lab::{PgLab, PgLabTls};
use mediasec_ua::ticket::KmsAccess;
use mediasec_ua::{Security, Ue, UeConfig};
use mediasec_voicemail::owner::{MailboxClient, open_message};

const BIN: &str = env!("CARGO_BIN_EXE_mediasec");
const VM_FQDN: &str = "vm.a.example";
const ALICE_HZ: f64 = 1000.0;
const POLICY: &str = "[domain.\"a.example\"]\nmay_call = [\"?@a.example\"]\n";
/// In the connection strings; trust authentication ignores it, and no log may show it.
const PASSWORD: &str = "pw-never-logged";

/// A `mediasec voicemail serve` process: killed and reaped on drop; its stderr (the log) is
/// collected.
struct VoicemailProcess {
    child: Child,
    api: String,
    log: Arc<Mutex<String>>,
}

impl VoicemailProcess {
    fn start(store: &str, bsf: &str, zn_token: &str, registrar: Option<SocketAddr>) -> Self {
        let mut args = vec![
            "voicemail".to_owned(),
            "serve".into(),
            "--aor".into(),
            "sip:vm@a.example".into(),
            "--domain".into(),
            "a.example".into(),
            "--store".into(),
            store.into(),
            "--sip".into(),
            "127.0.0.1:0".into(),
            "--api".into(),
            "127.0.0.1:0".into(),
            "--naf-fqdn".into(),
            VM_FQDN.into(),
            "--bsf".into(),
            bsf.into(),
            "--zn-token".into(),
            zn_token.into(),
        ];
        if let Some(r) = registrar {
            args.extend(["--registrar".to_owned(), r.to_string()]);
        }
        let mut child = Command::new(BIN)
            .args(&args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn mediasec voicemail serve");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("stderr");
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut l = sink.lock().expect("log lock");
                l.push_str(&line);
                l.push('\n');
            }
        });
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("read");
        let Some(api) = line.split_whitespace().last().filter(|u| u.starts_with("http://")) else {
            let _ = child.kill();
            let _ = child.wait();
            std::thread::sleep(Duration::from_millis(200));
            panic!("no serve line ({line:?}); log:\n{}", log.lock().expect("log lock"));
        };
        Self { api: api.to_owned(), child, log }
    }

    fn log(&self) -> String {
        self.log.lock().expect("log lock").clone()
    }
}

impl Drop for VoicemailProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// carol's mailbox client at `api`, and her KMS side, from one bootstrap.
async fn carol(kms: &KmsLab, api: &str) -> (MailboxClient, mediasec_kms::ue::Ue, mediasec_kms::client::KmsClient) {
    let boot = kms.bootstrap(&KmsUid::parse("carol@a.example").expect("uid")).await.expect("bootstrap");
    let key = boot.ks_naf(&NafId::new(VM_FQDN, UaProtocolId::HTTP_DIGEST)).expect("Ks_NAF");
    let client = MailboxClient::new(Endpoint::http(api).expect("API URL"), VM_FQDN, boot.btid.to_string(), &key.0);
    let (ue, kms_client) = kms.ue_of(&boot, "carol@a.example").expect("KMS UE");
    (client, ue, kms_client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_voicemail_processes_share_postgresql_one_over_tls() {
    let dir = std::env::temp_dir().join(format!("mediasec-cli-vm-pg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let pki = mediasec_sip::tls::LabPki::generate(&["localhost", "127.0.0.1"]).expect("lab PKI");
    let ca = dir.join("pg-ca.pem");
    std::fs::write(&ca, &pki.ca_pem).expect("write CA");
    let tls = PgLabTls { cert_chain_pem: pki.cert_pem.clone(), key_pem: pki.key_pem.to_string() };
    let pg = match PgLab::start_tls(&tls) {
        Ok(Some(pg)) => pg,
        Ok(None) => return, // skip line printed by PgLab (MEDIASEC_REQUIRE_PEERS=1 makes it fail)
        Err(e) => panic!("PostgreSQL lab: {e}"),
    };
    pg.create_database("vm_shared").expect("createdb");
    let tls_url = format!(
        "postgres://postgres:{PASSWORD}@localhost:{}/vm_shared?sslmode=verify-full&sslrootcert={}",
        pg.port(),
        ca.to_str().expect("UTF-8 path")
    );
    let plain_url = format!("postgres://postgres:{PASSWORD}@127.0.0.1:{}/vm_shared?sslmode=disable", pg.port());

    let kms = KmsLab::start_local(&dir, &[DomainSpec { domain: "a.example", policy: POLICY }], &["alice@a.example", "carol@a.example"]).await.expect("KMS lab");
    let lab = TwoDomains::start_config(LabConfig { voicemail_a: Some("sip:vm@a.example".into()), ..LabConfig::default() }).await.expect("CSCFs");
    // A registers with S-CSCF a (calls are diverted to it); B only serves the API.
    let a = VoicemailProcess::start(&tls_url, &kms.bsf_url, kms.zn_token(), Some(lab.scscf_a.local_addr()));
    let b = VoicemailProcess::start(&plain_url, &kms.bsf_url, kms.zn_token(), None);

    // alice calls carol, who is not registered: diverted to A, which stores the message.
    let (mut ue, client) = kms.ue("alice@a.example").await.expect("GBA bootstrap");
    ue.set_deferred_delivery(true);
    let config = UeConfig::loopback("sip:alice@a.example", lab.pcscf_a.local_addr(), Security::MikeyTicket, ALICE_HZ, 1500.0);
    let alice = Ue::start_with_kms(config, Some(KmsAccess { ue, client, high_security: None })).await.expect("UE");
    assert_eq!(alice.register(600).await.expect("REGISTER").status, 200);
    let id = tokio::time::timeout(Duration::from_secs(10), alice.call("sip:carol@a.example")).await.expect("in time").expect("established");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(alice.report(&id).await.expect("report").expect("call").deferred_delivery);
    alice.hangup(&id).await.expect("BYE");
    assert_eq!(lab.scscf_a.stats().diverted, 1);

    // carol reads it through B: listed, downloaded, decrypted.
    let (mailbox_b, mut carol_ue, carol_kms) = carol(&kms, &b.api).await;
    let mut list = Vec::new();
    for _ in 0..50 {
        list = mailbox_b.list().await.expect("list at B");
        if !list.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let [summary] = list.as_slice() else { panic!("one message at B: {list:?}") };
    assert_eq!((summary.mailbox.as_str(), summary.caller.as_str()), ("sip:carol@a.example", "sip:alice@a.example"));
    let record = mailbox_b.fetch(summary.id).await.expect("fetch at B");
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let out = open_message(&mut carol_ue, &carol_kms, &record, now).await.expect("decrypted");
    assert!(out.rtp >= 40 && out.failed == 0, "{out:?}");
    assert!(out.tone_packets(ALICE_HZ) as u64 >= out.rtp - 1, "alice's tone comes out");
    // A serves the same record; a delete at B is seen at A.
    let (mailbox_a, _, _) = carol(&kms, &a.api).await;
    assert_eq!(mailbox_a.fetch(summary.id).await.expect("fetch at A"), record);
    mailbox_b.delete(summary.id).await.expect("DELETE at B");
    assert!(mailbox_a.list().await.expect("list at A").is_empty());

    // A's session is TLS, B's is not, as the servers report it (pg_stat_ssl); no log holds
    // the password.
    let (log_a, log_b) = (a.log(), b.log());
    assert!(log_a.contains("connected to PostgreSQL") && log_a.contains("sslmode=verify-full") && log_a.contains("tls=true"), "A's log:\n{log_a}");
    assert!(log_b.contains("connected to PostgreSQL") && log_b.contains("sslmode=disable") && log_b.contains("tls=false"), "B's log:\n{log_b}");
    assert!(!log_a.contains(PASSWORD) && !log_b.contains(PASSWORD), "a log shows the password");
    drop((a, b));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A voicemail server whose `--store` asks `verify-full` against a CA that did not issue the
/// PostgreSQL server's certificate refuses to start, and says why without the password.
#[test]
fn voicemail_serve_refuses_a_postgresql_certificate_from_another_ca() {
    let dir = std::env::temp_dir().join(format!("mediasec-cli-vm-pg-ca-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let pki = mediasec_sip::tls::LabPki::generate(&["localhost"]).expect("lab PKI");
    let other = mediasec_sip::tls::LabPki::generate(&["localhost"]).expect("other PKI");
    let ca = dir.join("other-ca.pem");
    std::fs::write(&ca, &other.ca_pem).expect("write CA");
    let pg = match PgLab::start_tls(&PgLabTls { cert_chain_pem: pki.cert_pem.clone(), key_pem: pki.key_pem.to_string() }) {
        Ok(Some(pg)) => pg,
        Ok(None) => return,
        Err(e) => panic!("PostgreSQL lab: {e}"),
    };
    let url = format!("postgres://postgres:{PASSWORD}@localhost:{}/postgres?sslmode=verify-full&sslrootcert={}", pg.port(), ca.display());
    let out = Command::new(BIN)
        .args(["voicemail", "serve", "--aor", "sip:vm@a.example", "--domain", "a.example", "--store", &url, "--sip", "127.0.0.1:0"])
        .args(["--api", "127.0.0.1:0", "--naf-fqdn", VM_FQDN, "--bsf", "http://127.0.0.1:9", "--zn-token", "z"])
        .output()
        .expect("run mediasec voicemail serve");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started despite the wrong CA");
    assert!(stderr.contains("sslmode=verify-full") && stderr.contains("certificate check against the root CA file"), "{stderr}");
    assert!(!stderr.contains(PASSWORD), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}
