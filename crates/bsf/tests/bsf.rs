//! The BSF over real HTTP on loopback: full bootstrap, resync, every failure case, Ks_NAF
//! from the UE equals Ks_NAF from Zn, session expiry, admin API, restart persistence; the
//! store contract on both backends (redb, and a real PostgreSQL from `PgLab`: secrets sealed,
//! rows of earlier versions read and sealed on their next write, a wrong master key a clear
//! error), and two BSF
//! replicas sharing one PostgreSQL.

#![allow(clippy::indexing_slicing)] // test code indexes JSON

use std::path::PathBuf;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use mediasec_bsf::client::{self, request};
use mediasec_bsf::graceful::Serving;
use mediasec_bsf::server::{Bsf, ServerConfig};
use mediasec_bsf::store::{Store, Subscriber};
use mediasec_gba::bsf::{BootstrapSession, BsfConfig, PendingChallenge};
use mediasec_gba::digest::{AkaNonce, Challenge, Credentials};
use mediasec_gba::kdf::{NafId, UaProtocolId};
use mediasec_gba::milenage::{AutnCheck, Milenage};
use mediasec_gba::ue::{UeAnswer, UeBootstrap};
use mediasec_kms_store::sealed::MasterKey;

#[path = "common/lab_ca.rs"]
mod lab_ca;

const DOMAIN: &str = "bsf.mnc001.mcc001.pub.3gppnetwork.org";
const IMPI: &str = "001010000000001@ims.mnc001.mcc001.3gppnetwork.org";
const ZN: &str = "zn-secret";
const ADMIN: &str = "admin-secret";

fn db_path(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("mediasec-bsf-{name}-{}.redb", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

struct Running {
    url: String,
    server: Serving,
    bsf: Arc<Bsf>,
}

async fn start(path: &std::path::Path, key_lifetime: u64) -> Running {
    start_on(Store::open(path, master()).expect("open store"), key_lifetime).await
}

async fn start_on(store: Store, key_lifetime: u64) -> Running {
    let mut cfg = BsfConfig::new(DOMAIN);
    cfg.key_lifetime = key_lifetime;
    let bsf = Bsf::new(ServerConfig { bsf: cfg, zn_token: ZN.into(), admin_token: ADMIN.into() }, store);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let b = Arc::clone(&bsf);
    let server = Serving::spawn("BSF", |until| mediasec_bsf::server::serve(listener, b, until));
    Running { url, server, bsf }
}

impl Running {
    /// Stops the server gracefully ([`Serving::shutdown`]): its store is closed on return.
    async fn stop(self) {
        self.server.shutdown().await;
        drop(self.bsf);
    }
}

/// A BSF stopped through its in-process handle releases its store even while a client keeps
/// an idle connection to it: a BSF started again at once on the same redb file opens it and
/// answers. (Aborting the server task instead left that connection's task holding the store:
/// "Database already open".)
#[tokio::test]
async fn a_bsf_stopped_with_an_idle_client_connection_restarts_on_the_same_redb_file() {
    let path = db_path("restart-idle");
    let srv = start(&path, 3600).await;
    let kept = ep(&srv.url);
    assert_eq!(request(&kept, "GET", "/metrics", &[], b"").await.expect("http").status, 200);
    assert_eq!(kept.idle_connections(), 1, "the client keeps its connection, idle");
    srv.stop().await;
    let srv = start(&path, 3600).await;
    assert_eq!(request(&ep(&srv.url), "GET", "/metrics", &[], b"").await.expect("http").status, 200);
    srv.stop().await;
    drop(kept);
    let _ = std::fs::remove_file(&path);
}

/// The BSF master key of these tests (one key, so a restarted server opens what it sealed).
fn master() -> MasterKey {
    MasterKey::new(&[0x42; 32]).expect("master key")
}

fn keys() -> ([u8; 16], [u8; 16]) {
    (rand::random(), rand::random())
}

fn subscriber(k: &[u8; 16], opc: &[u8; 16]) -> Subscriber {
    Subscriber::with_opc(IMPI, k, opc, vec!["sip:alice@ims.example.org".into(), "tel:+15551234".into()])
}

fn ue(k: &[u8; 16], opc: &[u8; 16], sqn_ms: u64) -> UeBootstrap {
    UeBootstrap::new(IMPI, DOMAIN, Milenage::with_opc(k, opc), sqn_ms)
}

fn ep(url: &str) -> client::Endpoint {
    client::Endpoint::http(url).expect("endpoint")
}

fn authority(url: &str) -> String {
    client::split_url(url).expect("url").0
}

async fn ub(url: &str, auth: &str) -> client::HttpResponse {
    request(&ep(url), "GET", "/", &[("Authorization", auth), ("User-Agent", "t 3gpp-gba")], b"").await.expect("http")
}

#[tokio::test]
async fn bootstrap_zn_resync_and_restart() {
    let path = db_path("main");
    let (k, opc) = keys();
    let srv = start(&path, 3600).await;
    // Provision over the admin API.
    let body = serde_json::to_vec(&subscriber(&k, &opc)).expect("json");
    let bearer = format!("Bearer {ADMIN}");
    let r = request(&ep(&srv.url), "POST", "/admin/v1/subscribers", &[("Authorization", &bearer)], &body).await.expect("http");
    assert_eq!(r.status, 201);
    let r = request(&ep(&srv.url), "POST", "/admin/v1/subscribers", &[("Authorization", &bearer)], &body).await.expect("http");
    assert_eq!(r.status, 409, "duplicate add");
    let r = request(&ep(&srv.url), "GET", "/admin/v1/subscribers", &[("Authorization", &bearer)], b"").await.expect("http");
    let list: serde_json::Value = serde_json::from_slice(&r.body).expect("json");
    assert_eq!(list[0]["impi"], IMPI);
    assert!(list[0].get("k").is_none(), "secrets never listed");
    let r = request(&ep(&srv.url), "GET", "/admin/v1/subscribers", &[], b"").await.expect("http");
    assert_eq!(r.status, 401);

    // Full bootstrap with a USIM that is ahead (SQN_MS = 500): resync, then success.
    let (boot, sqn_ms) = client::bootstrap(&ep(&srv.url), ue(&k, &opc, 500)).await.expect("bootstrap");
    assert_eq!(sqn_ms, 501);
    assert_eq!(srv.bsf.store().subscriber(IMPI).await.expect("db").expect("sub").sqn, 501);
    assert_eq!(boot.btid.domain, DOMAIN);

    // Ks_NAF from the UE == Ks_NAF from Zn, for the KMS Ua id.
    let naf = NafId::new("kms.ims.example.org", UaProtocolId::IMS_MEDIA_PLANE);
    let ue_key = boot.ks_naf(&naf).expect("ks_naf");
    let zn = client::zn_lookup(&ep(&srv.url), ZN, &boot.btid.to_string(), "kms.ims.example.org", "0100000006")
        .await
        .expect("zn")
        .expect("found");
    assert_eq!(zn.key().expect("b64"), ue_key.0.to_vec());
    assert_eq!(zn.impi, IMPI);
    assert_eq!(zn.impus, vec!["sip:alice@ims.example.org".to_owned(), "tel:+15551234".to_owned()]);
    // A different NAF gets a different key.
    let other = client::zn_lookup(&ep(&srv.url), ZN, &boot.btid.to_string(), "xcap.ims.example.org", "0100000002").await.expect("zn").expect("found");
    assert_ne!(other.ks_naf, zn.ks_naf);
    // Zn failures: wrong token 401, unknown B-TID 404, bad ua id 400.
    assert!(matches!(client::zn_lookup(&ep(&srv.url), "wrong", &boot.btid.to_string(), "kms", "0100000006").await, Err(mediasec_bsf::BsfError::Status { status: 401, .. })));
    let unknown = format!("{}@{DOMAIN}", STANDARD.encode([0u8; 16]));
    assert!(client::zn_lookup(&ep(&srv.url), ZN, &unknown, "kms", "0100000006").await.expect("zn").is_none());
    assert!(matches!(client::zn_lookup(&ep(&srv.url), ZN, &boot.btid.to_string(), "kms", "01").await, Err(mediasec_bsf::BsfError::Status { status: 400, .. })));

    // Restart: subscribers, SQN and the session survive.
    srv.stop().await;
    let srv = start(&path, 3600).await;
    assert_eq!(srv.bsf.store().subscriber(IMPI).await.expect("db").expect("sub").sqn, 501);
    let again = client::zn_lookup(&ep(&srv.url), ZN, &boot.btid.to_string(), "kms.ims.example.org", "0100000006").await.expect("zn").expect("found");
    assert_eq!(again.ks_naf, zn.ks_naf);
    let (boot2, sqn2) = client::bootstrap(&ep(&srv.url), ue(&k, &opc, sqn_ms)).await.expect("bootstrap after restart");
    assert_eq!(sqn2, 502, "no resync needed: SQN continued from the store");
    assert_ne!(boot2.btid, boot.btid);

    // Remove over the admin API; then the IMPI is unknown.
    let r = request(&ep(&srv.url), "DELETE", &format!("/admin/v1/subscribers/{IMPI}"), &[("Authorization", &bearer)], b"").await.expect("http");
    assert_eq!(r.status, 200);
    let r = ub(&srv.url, &ue(&k, &opc, 0).initial_authorization()).await;
    assert_eq!((r.status, String::from_utf8_lossy(&r.body).trim()), (403, "unknown IMPI"));
    let metrics = request(&ep(&srv.url), "GET", "/metrics", &[], b"").await.expect("http");
    assert!(String::from_utf8_lossy(&metrics.body).contains("mediasec_bsf_bootstraps_total 1"));
    srv.stop().await;
    let _ = std::fs::remove_file(&path);
}

#[tokio::test]
async fn ub_failure_cases_and_expiry() {
    let path = db_path("fail");
    let (k, opc) = keys();
    let srv = start(&path, 1).await;
    srv.bsf.store().add_subscriber(&subscriber(&k, &opc)).await.expect("add");
    let url = srv.url.clone();

    // Missing / malformed Authorization: 400.
    let r = request(&ep(&url), "GET", "/", &[], b"").await.expect("http");
    assert_eq!(r.status, 400);
    let r = ub(&url, "Digest username=").await;
    assert_eq!(r.status, 400);

    // Wrong RES: 403, and the SQN is not changed by the failed response.
    let mut u = ue(&k, &opc, 0);
    let r = ub(&url, &u.initial_authorization()).await;
    assert_eq!(r.status, 401);
    let www = r.header("www-authenticate").expect("challenge").to_owned();
    let UeAnswer::Response(auth) = u.on_challenge(&www, "GET", b"", &[1; 16]).expect("ok") else { panic!("response expected") };
    let mut forged = Credentials::parse(&auth).expect("creds");
    forged.response = "0123456789abcdef0123456789abcdef".into();
    let sqn_before = srv.bsf.store().subscriber(IMPI).await.expect("db").expect("sub").sqn;
    let r = ub(&url, &forged.to_header()).await;
    assert_eq!((r.status, String::from_utf8_lossy(&r.body).trim()), (403, "wrong RES (user authentication failure)"));
    assert_eq!(srv.bsf.store().subscriber(IMPI).await.expect("db").expect("sub").sqn, sqn_before);

    // Replayed request: the nonce was consumed -> 401 with a fresh challenge, stale=TRUE.
    let r = ub(&url, &auth).await;
    assert_eq!((r.status, String::from_utf8_lossy(&r.body).trim()), (401, "unknown or already used nonce"));
    assert!(Challenge::parse(r.header("www-authenticate").expect("challenge")).expect("parse").stale);

    // A correct answer to a fresh challenge works; replaying that successful request fails.
    let mut u = ue(&k, &opc, u.sqn_ms());
    let r = ub(&url, &u.initial_authorization()).await;
    let UeAnswer::Response(auth) = u.on_challenge(r.header("www-authenticate").expect("c"), "GET", b"", &[2; 16]).expect("ok") else { panic!("response expected") };
    let ok = ub(&url, &auth).await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.header("content-type"), Some("application/vnd.3gpp.bsf+xml"));
    let boot = u.on_success(ok.header("authentication-info").expect("info"), &ok.body).expect("bootstrap");
    let replay = ub(&url, &auth).await;
    assert_eq!(replay.status, 401);

    // AUTS with a bad MAC-S: 403.
    let r = ub(&url, &ue(&k, &opc, 0).initial_authorization()).await;
    let www = r.header("www-authenticate").expect("c").to_owned();
    let ch = Challenge::parse(&www).expect("parse");
    let nonce = AkaNonce::decode(&ch.nonce).expect("nonce");
    let m = Milenage::with_opc(&k, &opc);
    assert!(matches!(m.check_autn(&nonce.rand, &nonce.autn, 0, |_| true), Ok(AutnCheck::Ok { .. })));
    let mut u2 = ue(&k, &opc, 1 << 40);
    let UeAnswer::Resync(auth) = u2.on_challenge(&www, "GET", b"", &[3; 16]).expect("ok") else { panic!("resync expected") };
    let mut bad = Credentials::parse(&auth).expect("creds");
    bad.auts = Some(STANDARD.encode([0u8; 14]));
    bad.response = mediasec_gba::digest::request_digest(b"", &bad.digest_input("GET", b""));
    let r = ub(&url, &bad.to_header()).await;
    assert_eq!((r.status, String::from_utf8_lossy(&r.body).trim()), (403, "AUTS MAC-S does not verify"));

    // Session expiry (lifetime 1 s): Zn answers 404 afterwards.
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    assert!(client::zn_lookup(&ep(&url), ZN, &boot.btid.to_string(), "kms", "0100000006").await.expect("zn").is_none());
    srv.stop().await;
    let _ = std::fs::remove_file(&path);
}

/// Acceptance: an independent UE (Python stdlib + osmo-auc-gen as the USIM, written from
/// TS 24.109 / RFC 3310 / TS 33.220 only) bootstraps against our BSF and derives the same
/// Ks_NAF that Zn returns.
#[tokio::test]
async fn independent_python_ue_interoperates() {
    let have = |cmd: &str, arg: &str| std::process::Command::new(cmd).arg(arg).output().is_ok();
    if !have("python3", "--version") || !have("osmo-auc-gen", "--help") {
        mediasec_testkit::peer_unavailable("python3 and osmo-auc-gen (libosmocore-utils)", "not installed");
        return;
    }
    let path = db_path("indep");
    let (k, opc) = keys();
    let srv = start(&path, 3600).await;
    srv.bsf.store().add_subscriber(&subscriber(&k, &opc)).await.expect("add");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/independent_ue.py");
    let args = [script.to_owned(), authority(&srv.url), IMPI.into(), DOMAIN.into(), hex::encode(k), hex::encode(opc), "kms.ims.example.org".into(), "0100000006".into()];
    let out = tokio::task::spawn_blocking(move || std::process::Command::new("python3").args(&args).output())
        .await
        .expect("join")
        .expect("run python");
    assert!(out.status.success(), "independent UE failed: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = stdout.lines();
    let (btid, ks_naf) = (lines.next().expect("btid"), lines.next().expect("ks_naf"));
    let zn = client::zn_lookup(&ep(&srv.url), ZN, btid, "kms.ims.example.org", "0100000006").await.expect("zn").expect("found");
    assert_eq!(hex::encode(zn.key().expect("b64")), ks_naf);
    srv.stop().await;
    let _ = std::fs::remove_file(&path);
}

/// Ub and Zn over HTTPS (rustls; lab PKI from rcgen): bootstrap and Zn look-up, NAF
/// authentication by client certificate, and a client that does not trust the CA is refused.
#[tokio::test]
async fn https_bootstrap_and_zn() {
    let ca = lab_ca::ca();
    let (cert, key) = lab_ca::issue(&ca, "localhost");
    // A separate CA issues NAF client certificates.
    let naf_ca = lab_ca::ca();
    let (naf_pem, naf_key_pem) = lab_ca::issue(&naf_ca, "kms.ims.example.org");
    let server_cfg = mediasec_bsf::tls::server_config(cert.as_bytes(), key.as_bytes(), Some(naf_ca.pem().as_bytes())).expect("tls config");

    let path = db_path("tls");
    let (k, opc) = keys();
    let store = Store::open(&path, master()).expect("store");
    store.add_subscriber(&subscriber(&k, &opc)).await.expect("add");
    let bsf = Bsf::new(ServerConfig { bsf: BsfConfig::new(DOMAIN), zn_token: ZN.into(), admin_token: ADMIN.into() }, store);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let tls = mediasec_bsf::tls::TlsListener::new(listener, server_cfg).expect("listener");
    let served = Arc::clone(&bsf);
    let server = Serving::spawn("BSF", |until| mediasec_bsf::server::serve_tls(tls, served, until));

    let url = format!("https://localhost:{port}");
    let connector = mediasec_bsf::tls::client_connector(ca.pem().as_bytes(), None).expect("connector");
    let endpoint = client::Endpoint::new(&url, Some(connector)).expect("endpoint");
    let (boot, _) = client::bootstrap(&endpoint, ue(&k, &opc, 0)).await.expect("bootstrap over https");
    let zn = client::zn_lookup(&endpoint, ZN, &boot.btid.to_string(), "kms.ims.example.org", "0100000006").await.expect("zn").expect("found");
    let naf = NafId::new("kms.ims.example.org", UaProtocolId::IMS_MEDIA_PLANE);
    assert_eq!(zn.key().expect("b64"), boot.ks_naf(&naf).expect("ks_naf").0.to_vec());
    // NAF with a client certificate from the NAF CA: no bearer token needed.
    let naf_conn = mediasec_bsf::tls::client_connector(ca.pem().as_bytes(), Some((naf_pem.as_bytes(), naf_key_pem.as_bytes()))).expect("c");
    let naf_ep = client::Endpoint::new(&url, Some(naf_conn)).expect("ep");
    let by_cert = client::zn_lookup(&naf_ep, "", &boot.btid.to_string(), "kms.ims.example.org", "0100000006").await.expect("zn").expect("found");
    assert_eq!(by_cert.ks_naf, zn.ks_naf);
    // ... but only for the FQDN its certificate names.
    assert!(matches!(
        client::zn_lookup(&naf_ep, "", &boot.btid.to_string(), "xcap.ims.example.org", "0100000002").await,
        Err(mediasec_bsf::BsfError::Status { status: 403, .. })
    ));
    // Without certificate and without a valid token: 401.
    assert!(matches!(
        client::zn_lookup(&endpoint, "", &boot.btid.to_string(), "kms.ims.example.org", "0100000006").await,
        Err(mediasec_bsf::BsfError::Status { status: 401, .. })
    ));
    // A client certificate from another CA fails the handshake.
    let (rogue_pem, rogue_key_pem) = lab_ca::issue(&ca, "kms.ims.example.org");
    let rogue = client::Endpoint::new(&url, Some(mediasec_bsf::tls::client_connector(ca.pem().as_bytes(), Some((rogue_pem.as_bytes(), rogue_key_pem.as_bytes()))).expect("c"))).expect("ep");
    assert!(client::zn_lookup(&rogue, "", &boot.btid.to_string(), "kms.ims.example.org", "0100000006").await.is_err());
    // https without a CA is refused before connecting; an untrusted CA fails the handshake.
    assert!(client::Endpoint::new(&url, None).is_err());
    let other = lab_ca::ca();
    let wrong = client::Endpoint::new(&url, Some(mediasec_bsf::tls::client_connector(other.pem().as_bytes(), None).expect("c"))).expect("ep");
    assert!(client::bootstrap(&wrong, ue(&k, &opc, 10)).await.is_err());
    server.shutdown().await;
    let _ = std::fs::remove_file(&path);
}

/// GBA_U end to end over HTTP (TS 33.220 clause 5, Annex G): a subscriber whose GUSS says
/// `uiccType: GBA_U`, a simulated UICC driven by the ME through the same Ub flow; Zn gives an
/// unaware NAF (the KMS) Ks_ext_NAF only and a GBA_U aware NAF Ks_int_NAF too, both equal to
/// what the UICC derives; a GBA_ME subscriber's answer carries neither GBA_U field even when the
/// NAF is aware; a UICC with the wrong K and a plain USIM both fail with a typed MAC error.
#[tokio::test]
async fn gba_u_bootstrap_and_zn() {
    use mediasec_gba::uicc::Uicc;
    use mediasec_gba::GbaError;
    const IMPI_U: &str = "001010000000002@ims.mnc001.mcc001.3gppnetwork.org";
    let path = db_path("gbau");
    let (k, opc) = keys();
    let srv = start(&path, 3600).await;
    let mut sub_u = subscriber(&k, &opc);
    sub_u.impi = IMPI_U.into();
    sub_u.guss = Some(serde_json::json!({"bsfInfo": {"uiccType": "GBA_U"}}));
    srv.bsf.store().add_subscriber(&sub_u).await.expect("add GBA_U subscriber");
    srv.bsf.store().add_subscriber(&subscriber(&k, &opc)).await.expect("add GBA_ME subscriber");
    let mut bad = subscriber(&k, &opc);
    bad.impi = "bad@x".into();
    bad.guss = Some(serde_json::json!({"bsfInfo": {"uiccType": "GBA-U"}}));
    assert!(matches!(srv.bsf.store().add_subscriber(&bad).await, Err(mediasec_bsf::BsfError::InvalidSubscriber(_))));

    // The UICC is ahead (SQN_MS 40): resync, then GBA_U success.
    let ue_u = UeBootstrap::with_uicc(IMPI_U, DOMAIN, Uicc::new(Milenage::with_opc(&k, &opc), 40));
    let (boot, mut uicc) = client::bootstrap_gba_u(&ep(&srv.url), ue_u).await.expect("GBA_U bootstrap");
    assert_eq!((uicc.sqn_ms(), uicc.btid()), (41, Some(&boot.btid)));
    let btid = boot.btid.to_string();
    let naf = NafId::new("kms.ims.example.org", UaProtocolId::IMS_MEDIA_PLANE);
    let ext = uicc.naf_derivation(&naf, IMPI_U).expect("G.2");

    // The KMS (not GBA_U aware): Ks_ext_NAF, never Ks_int_NAF; lifetime as for GBA_ME.
    let zn = client::zn_lookup(&ep(&srv.url), ZN, &btid, "kms.ims.example.org", "0100000006").await.expect("zn").expect("found");
    assert_eq!(zn.key().expect("b64"), ext.0.to_vec());
    assert_eq!((zn.gba_type.as_deref(), zn.int_key().expect("b64")), (Some("GBA_U"), None));
    assert_eq!(mediasec_gba::bootstrapping_info::parse_time(&zn.key_expiry).expect("time"), boot.expiry);
    // A GBA_U aware NAF: Ks_ext_NAF and Ks_int_NAF; the latter equals the UICC's.
    let aware = client::zn_lookup_gba_u_aware(&ep(&srv.url), ZN, &btid, "kms.ims.example.org", "0100000006").await.expect("zn").expect("found");
    assert_eq!(aware.key().expect("b64"), ext.0.to_vec());
    let (_, int) = uicc.application_ks_int_naf(&naf).expect("kept in the UICC");
    assert_eq!(aware.int_key().expect("b64"), Some(int.0.to_vec()));
    assert_ne!(aware.ks_int_naf.as_deref(), Some(aware.ks_naf.as_str()));

    // GBA_ME subscriber: the answer has exactly today's fields, aware NAF or not.
    let (boot_me, _) = client::bootstrap(&ep(&srv.url), ue(&k, &opc, 0)).await.expect("GBA_ME bootstrap");
    let body = serde_json::json!({"btid": boot_me.btid.to_string(), "naf_fqdn": "kms.ims.example.org", "ua_protocol_id": "0100000006", "gba_u_aware": true});
    let r = request(&ep(&srv.url), "POST", "/zn/v1/naf-keys", &[("Authorization", &format!("Bearer {ZN}"))], body.to_string().as_bytes()).await.expect("http");
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("json");
    let mut fields: Vec<&str> = v.as_object().expect("object").keys().map(String::as_str).collect();
    fields.sort_unstable();
    assert_eq!(fields, ["bootstrap_time", "impi", "impus", "key_expiry", "ks_naf"]);
    assert_eq!(STANDARD.decode(v["ks_naf"].as_str().expect("ks_naf")).expect("b64"), boot_me.ks_naf(&naf).expect("ks_naf").0.to_vec());

    // Wrong K in the UICC: typed MAC failure, no request sent after the challenge.
    let wrong = UeBootstrap::with_uicc(IMPI_U, DOMAIN, Uicc::new(Milenage::with_opc(&rand::random(), &opc), 0));
    assert!(matches!(client::bootstrap_gba_u(&ep(&srv.url), wrong).await, Err(mediasec_bsf::BsfError::Gba(GbaError::MacFailure))));
    // A plain USIM (GBA_ME ME) cannot answer a GBA_U subscriber's AUTN*.
    let plain = UeBootstrap::new(IMPI_U, DOMAIN, Milenage::with_opc(&k, &opc), 100);
    assert!(matches!(client::bootstrap(&ep(&srv.url), plain).await, Err(mediasec_bsf::BsfError::Gba(GbaError::MacFailure))));
    // Restart: the session keeps its GBA_U type.
    srv.stop().await;
    let srv = start(&path, 3600).await;
    let again = client::zn_lookup_gba_u_aware(&ep(&srv.url), ZN, &btid, "kms.ims.example.org", "0100000006").await.expect("zn").expect("found");
    assert_eq!(again.int_key().expect("b64"), Some(int.0.to_vec()));
    srv.stop().await;
    let _ = std::fs::remove_file(&path);
}

// ---- The store on both backends, and replicas on one PostgreSQL ----

use mediasec_gba::milenage::SQN_MAX;
use mediasec_gba::uicc::UiccType;
use mediasec_kms_store::pg_lab::PgLab;
use mediasec_kms_store::{PgStore, RedbStore, Store as Kv, Table};

/// A fresh, empty backend: a redb file, or a database on a lab PostgreSQL server (`None`
/// after a skip line when PostgreSQL is not installed and `MEDIASEC_REQUIRE_PEERS` is not 1).
enum Backend {
    Redb(PathBuf),
    /// The lab server (stopped on drop) and the database URL.
    Pg { _lab: PgLab, url: String },
}

impl Backend {
    fn redb(name: &str) -> Self {
        Self::Redb(db_path(name))
    }

    fn pg() -> Option<Self> {
        let lab = PgLab::start().expect("PostgreSQL lab")?;
        let url = lab.create_database("bsf_test").expect("createdb");
        Some(Self::Pg { _lab: lab, url })
    }

    async fn kv(&self) -> Arc<dyn Kv> {
        match self {
            Self::Redb(path) => Arc::new(RedbStore::open(path).expect("open redb")),
            Self::Pg { url, .. } => Arc::new(PgStore::connect(url).await.expect("connect PostgreSQL")),
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Self::Redb(path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn session(btid: &str, impi: &str, expiry: u64, uicc: UiccType) -> BootstrapSession {
    BootstrapSession { btid: btid.into(), ks: rand::random(), rand: rand::random(), impi: impi.into(), bootstrap_time: expiry - 10, expiry, uicc }
}

/// The BSF store contract, one body for every backend: subscribers (atomic add, listing,
/// removal, rows of earlier versions), SQN allocation and resync, concurrent allocation
/// without a repeated SQN, sessions (lookup, expiry, purge through the expiry index).
async fn store_conformance(kv: Arc<dyn Kv>) {
    let store = Store::new(Arc::clone(&kv), master());
    let (k, opc) = keys();
    let mut sub = subscriber(&k, &opc);
    sub.guss = Some(serde_json::json!({"bsfInfo": {"uiccType": "GBA_U"}}));
    store.check_master_key().await.expect("an empty store passes the key check");
    store.add_subscriber(&sub).await.expect("add");
    assert!(matches!(store.add_subscriber(&sub).await, Err(mediasec_bsf::BsfError::Subscriber(_, "already exists"))));
    let mut bad = subscriber(&k, &opc);
    bad.impi = "bad@x".into();
    bad.k = "00".into();
    assert!(matches!(store.add_subscriber(&bad).await, Err(mediasec_bsf::BsfError::InvalidSubscriber(_))));
    let got = store.subscriber(IMPI).await.expect("get").expect("present");
    assert_eq!((got.k.as_str(), got.opc.as_deref(), &got.impus, &got.guss, got.sqn), (sub.k.as_str(), sub.opc.as_deref(), &sub.impus, &sub.guss, 0));
    // K and OPc are sealed in the row; the row's other fields stay readable.
    let raw = String::from_utf8(kv.get(Table::BsfSubscribers, IMPI).await.expect("get").expect("row")).expect("JSON");
    assert!(!raw.contains(&hex::encode(k)) && !raw.contains(&hex::encode(opc)), "secrets in clear: {raw}");
    let row: serde_json::Value = serde_json::from_str(&raw).expect("JSON");
    assert!(row["secrets"].is_string() && row.get("k").is_none() && row.get("opc").is_none() && row["sqn"] == 0, "{row}");
    // A sealed row moved under another key does not open (the AAD names the row).
    kv.put(Table::BsfSubscribers, "moved@x", raw.as_bytes()).await.expect("put moved row");
    assert!(matches!(store.subscriber("moved@x").await, Err(mediasec_bsf::BsfError::Sealed { ref key, .. }) if key == "moved@x"));
    assert!(matches!(store.next_sqn("moved@x").await, Err(mediasec_bsf::BsfError::Sealed { .. })));
    assert!(kv.delete(Table::BsfSubscribers, "moved@x").await.expect("delete"));
    assert!(store.subscriber("nobody@x").await.expect("get").is_none());

    // SQN: +1 per challenge, durable; resync sets SQN_HE := SQN_MS; the top of the space errs.
    for want in 1..=3 {
        assert_eq!(store.next_sqn(IMPI).await.expect("sqn").expect("known").sqn, want);
    }
    assert_eq!(store.subscriber(IMPI).await.expect("get").expect("present").sqn, 3);
    assert_eq!(store.resync_sqn(IMPI, 1000).await.expect("resync").expect("known").sqn, 1000);
    assert_eq!(store.next_sqn(IMPI).await.expect("sqn").expect("known").sqn, 1001);
    assert_eq!(store.resync_sqn(IMPI, 2).await.expect("resync").expect("known").sqn, 2, "resync may move SQN_HE down");
    assert_eq!(store.next_sqn(IMPI).await.expect("sqn").expect("known").sqn, 3);
    assert!(store.next_sqn("nobody@x").await.expect("sqn").is_none());
    assert!(store.resync_sqn("nobody@x", 5).await.expect("resync").is_none());
    let mut top = subscriber(&k, &opc);
    top.impi = "top@x".into();
    top.sqn = SQN_MAX;
    store.add_subscriber(&top).await.expect("add");
    assert!(matches!(store.next_sqn("top@x").await, Err(mediasec_bsf::BsfError::Subscriber(_, "SQN space exhausted"))));

    // A row as versions before this store wrote it (no write counter, K and OPc in the
    // clear) reads, advances, and is sealed by that write.
    let old = serde_json::json!({"impi": "old@x", "k": hex::encode(k), "opc": hex::encode(opc), "amf": "8000", "sqn": 41, "impus": ["sip:old@x"]});
    kv.put(Table::BsfSubscribers, "old@x", old.to_string().as_bytes()).await.expect("put old row");
    let read = store.subscriber("old@x").await.expect("get").expect("present");
    assert_eq!((read.k.as_str(), read.opc.as_deref(), read.sqn), (hex::encode(k).as_str(), Some(hex::encode(opc).as_str()), 41), "old row read as it is");
    assert_eq!(store.next_sqn("old@x").await.expect("sqn").expect("known").sqn, 42);
    let raw = String::from_utf8(kv.get(Table::BsfSubscribers, "old@x").await.expect("get").expect("row")).expect("JSON");
    assert!(!raw.contains(&hex::encode(k)) && !raw.contains(&hex::encode(opc)) && raw.contains("\"secrets\""), "sealed on its next write: {raw}");
    let got = store.subscriber("old@x").await.expect("get").expect("present");
    assert_eq!((got.k.as_str(), got.opc.as_deref(), &got.impus, got.sqn), (hex::encode(k).as_str(), Some(hex::encode(opc).as_str()), &vec!["sip:old@x".to_owned()], 42));
    let before = kv.get(Table::BsfSubscribers, "old@x").await.expect("get");
    assert_eq!(store.next_sqn("old@x").await.expect("sqn").expect("known").sqn, 43);
    let after = String::from_utf8(kv.get(Table::BsfSubscribers, "old@x").await.expect("get").expect("row")).expect("JSON");
    let secrets = |raw: &str| serde_json::from_str::<serde_json::Value>(raw).expect("JSON")["secrets"].clone();
    assert_eq!(secrets(&after), secrets(&String::from_utf8(before.expect("row")).expect("JSON")), "an SQN update carries the sealed secrets over, no new seal");

    // Concurrent allocation through separate store handles: never the same SQN twice.
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let s = Store::new(Arc::clone(&kv), master());
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for _ in 0..15 {
                got.push(s.next_sqn(IMPI).await.expect("sqn").expect("known").sqn);
            }
            got
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        let got = t.await.expect("task");
        assert!(got.windows(2).all(|w| w[0] < w[1]), "one allocator's SQNs must increase: {got:?}");
        all.extend(got);
    }
    all.sort_unstable();
    assert_eq!(all, (4..94).collect::<Vec<_>>(), "90 allocations, every SQN once");

    let listed: Vec<String> = store.subscribers().await.expect("list").iter().map(|s| s.impi.clone()).collect();
    assert_eq!(listed, [IMPI, "old@x", "top@x"]);
    assert!(store.remove_subscriber("top@x").await.expect("remove"));
    assert!(!store.remove_subscriber("top@x").await.expect("remove again"));

    // Sessions: valid until expiry, deleted when looked up after it; purge deletes what has
    // expired and nothing else.
    let (s1, s2, s3) = (session("b1@bsf", IMPI, 1_000, UiccType::Gba), session("b2@bsf", IMPI, 2_000, UiccType::GbaU), session("b3@bsf", "x@y", 3_000, UiccType::Gba));
    for s in [&s1, &s2, &s3] {
        store.put_session(s).await.expect("put session");
    }
    let got = store.session("b2@bsf", 1_999).await.expect("get").expect("valid");
    assert_eq!((got.ks, got.rand, got.impi.as_str(), got.bootstrap_time, got.expiry, got.uicc), (s2.ks, s2.rand, IMPI, 1_990, 2_000, UiccType::GbaU));
    let raw = String::from_utf8(kv.get(Table::BsfSessions, "b2@bsf").await.expect("get").expect("row")).expect("JSON");
    assert!(!raw.contains(&hex::encode(s2.ks)) && raw.contains("\"ks_sealed\"") && !raw.contains("\"ks\""), "Ks sealed: {raw}");
    // A session as earlier versions wrote it (Ks in the clear) reads; a sealed one moved to
    // another B-TID does not open.
    let old = serde_json::json!({"ks": hex::encode([5u8; 32]), "rand": hex::encode([6u8; 16]), "impi": IMPI, "bootstrap_time": 10, "expiry": 1_900});
    kv.put(Table::BsfSessions, "old@bsf", old.to_string().as_bytes()).await.expect("put old session");
    assert_eq!(store.session("old@bsf", 11).await.expect("get").expect("old session").ks, [5u8; 32]);
    assert!(kv.delete(Table::BsfSessions, "old@bsf").await.expect("delete"));
    kv.put(Table::BsfSessions, "moved@bsf", raw.as_bytes()).await.expect("put moved session");
    assert!(matches!(store.session("moved@bsf", 11).await, Err(mediasec_bsf::BsfError::Sealed { .. })));
    assert!(kv.delete(Table::BsfSessions, "moved@bsf").await.expect("delete"));
    assert!(store.session("b1@bsf", 1_000).await.expect("get").is_none(), "expired at its expiry");
    assert!(store.session("b1@bsf", 10).await.expect("get").is_none(), "deleted on the expired lookup");
    assert!(store.session("unknown@bsf", 10).await.expect("get").is_none());
    assert_eq!(store.purge_expired(2_500).await.expect("purge"), 1, "b2 only (b1 is already gone)");
    assert!(store.session("b2@bsf", 10).await.expect("get").is_none(), "purged");
    assert!(store.session("b3@bsf", 2_999).await.expect("get").is_some(), "not expired: kept");
    assert_eq!(kv.range(Table::BsfSessionExpiry, "", "~", 10).await.expect("index").len(), 1, "index rows of deleted sessions are gone");
    assert_eq!(store.purge_expired(2_500).await.expect("purge again"), 0);
    // Challenges in flight: stored sealed, taken once, purged when stale.
    let pend = |nonce: &str, issued_at: u64| {
        let mut p = pending(nonce);
        (p.sqn, p.issued_at, p.uicc) = (77, issued_at, UiccType::GbaU);
        p
    };
    store.put_pending(&pend("n1", 100), 161).await.expect("put pending");
    store.put_pending(&pend("n2", 200), 261).await.expect("put pending");
    let raw = kv.get(Table::BsfPending, "n1").await.expect("get").expect("row");
    assert!(!raw.windows(8).any(|w| w == [0xA5; 8]) && !String::from_utf8_lossy(&raw).contains(&hex::encode([0xA5u8; 8])), "XRES in clear");
    kv.put(Table::BsfPending, "moved", &raw).await.expect("put moved");
    assert!(matches!(store.take_pending("moved").await, Err(mediasec_bsf::BsfError::Sealed { .. })), "a sealed challenge moved to another nonce does not open");
    let got = store.take_pending("n1").await.expect("take").expect("pending");
    assert_eq!((got.impi.as_str(), got.nonce.as_str(), got.opaque.as_str(), got.rand, got.xres, got.ck, got.ik, got.sqn, got.issued_at, got.uicc), (IMPI, "n1", "op", [1; 16], [0xA5; 8], [3; 16], [4; 16], 77, 100, UiccType::GbaU));
    assert!(store.take_pending("n1").await.expect("take again").is_none(), "taken once");
    assert!(store.take_pending("").await.expect("empty").is_none() && store.take_pending(&"x".repeat(200)).await.expect("long").is_none());
    assert_eq!(store.purge_stale_challenges(260).await.expect("purge"), 0, "n2 not stale before 261");
    assert_eq!(store.purge_stale_challenges(261).await.expect("purge"), 1);
    assert!(store.take_pending("n2").await.expect("take").is_none(), "purged");
    assert!(kv.range(Table::BsfPendingExpiry, "", "~", 10).await.expect("index").is_empty());
    // Concurrent takes of one nonce through separate handles: exactly one gets it.
    store.put_pending(&pend("n3", 300), 361).await.expect("put pending");
    let takers: Vec<_> = (0..6)
        .map(|_| {
            let s = Store::new(Arc::clone(&kv), master());
            tokio::spawn(async move { s.take_pending("n3").await.expect("take").is_some() })
        })
        .collect();
    let mut won = 0;
    for t in takers {
        won += usize::from(t.await.expect("task"));
    }
    assert_eq!(won, 1, "a nonce is taken exactly once");

    // Many expired sessions: purge walks the index in batches.
    for i in 0..300 {
        store.put_session(&session(&format!("m{i}@bsf"), IMPI, 500 + i, UiccType::Gba)).await.expect("put session");
    }
    assert_eq!(store.purge_expired(3_000).await.expect("purge"), 301);
    assert!(kv.range(Table::BsfSessionExpiry, "", "~", 10).await.expect("index").is_empty());
    // A session row that does not decode does not stop the purge; its look-up reports it.
    kv.put(Table::BsfSessionExpiry, &format!("{:020}/bad@bsf", 100), b"").await.expect("index row");
    kv.put(Table::BsfSessions, "bad@bsf", b"{not json").await.expect("corrupt row");
    store.put_session(&session("late@bsf", IMPI, 200, UiccType::Gba)).await.expect("put session");
    assert_eq!(store.purge_expired(3_000).await.expect("purge past a corrupt row"), 1);
    assert!(matches!(store.session("bad@bsf", 0).await, Err(mediasec_bsf::BsfError::Corrupt { .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_conformance_redb() {
    let b = Backend::redb("conformance");
    store_conformance(b.kv().await).await;
}

/// A challenge in flight under `nonce` for IMPI (XRES 0xA5…, SQN 9, issued at 100, GBA_ME).
fn pending(nonce: &str) -> PendingChallenge {
    PendingChallenge {
        impi: IMPI.into(),
        nonce: nonce.into(),
        opaque: "op".into(),
        rand: [1; 16],
        xres: [0xA5; 8],
        ck: [3; 16],
        ik: [4; 16],
        sqn: 9,
        issued_at: 100,
        uicc: UiccType::Gba,
    }
}

/// An embedded store's BSF keeps its challenges in flight in memory
/// (`Store::challenges_in_memory`, what `Store::open` and `mediasec bsf --store FILE` do):
/// nothing reaches the store's rows, a nonce is taken once (also through a clone, as the
/// server's tasks share it), and stale ones are purged at their expiry, not before.
#[tokio::test]
async fn an_embedded_stores_challenges_stay_in_memory() {
    let b = Backend::redb("challenges-in-memory");
    let kv = b.kv().await;
    let store = Store::new(Arc::clone(&kv), master()).challenges_in_memory();
    store.put_pending(&pending("n1"), 161).await.expect("put");
    store.put_pending(&pending("n2"), 261).await.expect("put");
    assert!(kv.get(Table::BsfPending, "n1").await.expect("get").is_none(), "not in the store");
    assert!(kv.range(Table::BsfPendingExpiry, "", "~", 10).await.expect("index").is_empty());
    let other_task = store.clone();
    let got = other_task.take_pending("n1").await.expect("take").expect("held");
    assert_eq!((got.nonce.as_str(), got.xres, got.sqn), ("n1", [0xA5; 8], 9));
    assert!(store.take_pending("n1").await.expect("take again").is_none(), "taken once");
    assert_eq!(store.purge_stale_challenges(260).await.expect("purge"), 0, "n2 not stale before 261");
    assert_eq!(store.purge_stale_challenges(261).await.expect("purge"), 1);
    assert!(store.take_pending("n2").await.expect("take").is_none(), "purged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_conformance_postgres() {
    let Some(b) = Backend::pg() else { return };
    store_conformance(b.kv().await).await;
}

/// Another master key (a replica started with the wrong `--master-key`) gets a typed error
/// naming the row from every read of a sealed secret, never garbage keys or a panic, and
/// changes nothing; its server answers 500 (reference only) and keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_master_key_is_a_clear_error() {
    logs();
    let b = Backend::redb("wrong-key");
    let kv = b.kv().await;
    let (k, opc) = keys();
    let right = Store::new(Arc::clone(&kv), master());
    right.add_subscriber(&subscriber(&k, &opc)).await.expect("add");
    right.put_session(&session("s@bsf", IMPI, u64::MAX, UiccType::Gba)).await.expect("put session");
    let wrong = Store::new(Arc::clone(&kv), MasterKey::new(&[0x43; 32]).expect("key"));
    let sealed = |r: Result<_, mediasec_bsf::BsfError>, row: &str| match r {
        Err(e @ mediasec_bsf::BsfError::Sealed { .. }) => {
            let text = e.to_string();
            assert!(text.contains(row) && text.contains("master key") && text.contains("wrong master key or tampered entry"), "{text}");
        }
        Err(e) => panic!("{row}: {e}"),
        Ok(_) => panic!("{row}: opened under the wrong key"),
    };
    let before = kv.get(Table::BsfSubscribers, IMPI).await.expect("get");
    sealed(wrong.check_master_key().await, IMPI);
    right.check_master_key().await.expect("the right key passes the check");
    sealed(wrong.subscriber(IMPI).await.map(drop), IMPI);
    sealed(wrong.subscribers().await.map(drop), IMPI);
    sealed(wrong.next_sqn(IMPI).await.map(drop), IMPI);
    sealed(wrong.resync_sqn(IMPI, 9).await.map(drop), IMPI);
    sealed(wrong.session("s@bsf", 0).await.map(drop), "s@bsf");
    assert_eq!(kv.get(Table::BsfSubscribers, IMPI).await.expect("get"), before, "nothing written under the wrong key");
    assert_eq!(right.subscriber(IMPI).await.expect("get").expect("present").k, hex::encode(k), "the right key still opens it");

    let srv = start_on(wrong, 3600).await;
    let r = ub(&srv.url, &ue(&k, &opc, 0).initial_authorization()).await;
    assert_eq!(r.status, 500, "no challenge from garbage keys");
    assert!(logged_cause(&r).contains("do not open under this BSF master key"));
    assert!(matches!(client::zn_lookup(&ep(&srv.url), ZN, "s@bsf", "kms", "0100000006").await, Err(mediasec_bsf::BsfError::Status { status: 500, .. })));
    assert_eq!(metric(&srv.url, "mediasec_bsf_store_errors_total").await, 2);
    srv.stop().await;
}

/// A redb file written by the BSF before it moved onto the shared store (its own tables
/// `subscribers` and `sessions`, `&str → JSON`) opens, and its rows serve.
#[tokio::test]
async fn redb_file_of_the_previous_layout_opens() {
    let path = db_path("legacy");
    let (k, opc) = keys();
    {
        let db = redb::Database::create(&path).expect("create");
        let tx = db.begin_write().expect("tx");
        {
            let subs: redb::TableDefinition<'_, &str, &[u8]> = redb::TableDefinition::new("subscribers");
            let sessions: redb::TableDefinition<'_, &str, &[u8]> = redb::TableDefinition::new("sessions");
            let row = serde_json::json!({"impi": IMPI, "k": hex::encode(k), "opc": hex::encode(opc), "amf": "8000", "sqn": 7, "impus": ["sip:a@b"]});
            tx.open_table(subs).expect("table").insert(IMPI, row.to_string().as_bytes()).expect("insert");
            let s = serde_json::json!({"ks": hex::encode([5u8; 32]), "rand": hex::encode([6u8; 16]), "impi": IMPI, "bootstrap_time": 10, "expiry": u64::MAX});
            tx.open_table(sessions).expect("table").insert("old@bsf", s.to_string().as_bytes()).expect("insert");
        }
        tx.commit().expect("commit");
    }
    let srv = start(&path, 3600).await;
    assert_eq!(srv.bsf.store().session("old@bsf", 11).await.expect("get").expect("session").ks, [5u8; 32]);
    let (_, sqn) = client::bootstrap(&ep(&srv.url), ue(&k, &opc, 7)).await.expect("bootstrap");
    assert_eq!(sqn, 8, "SQN continued from the old row");
    srv.stop().await;
    let _ = std::fs::remove_file(&path);
}

async fn metric(url: &str, name: &str) -> u64 {
    let r = request(&ep(url), "GET", "/metrics", &[], b"").await.expect("metrics");
    let body = String::from_utf8_lossy(&r.body).into_owned();
    body.lines().find_map(|l| l.strip_prefix(name)?.trim().parse().ok()).unwrap_or_else(|| panic!("{name} missing in {body}"))
}

/// Every log line of this test process (a global subscriber, since the servers log from the
/// runtime's worker threads), for the tests that check what a server logged.
fn logs() -> &'static Arc<std::sync::Mutex<Vec<u8>>> {
    static LOGS: std::sync::OnceLock<Arc<std::sync::Mutex<Vec<u8>>>> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(std::sync::Mutex::new(Vec::new()));
        let w = Arc::clone(&buf);
        let _ = tracing_subscriber::fmt().with_ansi(false).with_writer(move || LogCapture(Arc::clone(&w))).try_init();
        buf
    })
}

struct LogCapture(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogCapture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A store-error 500: its body is `internal error, reference R` and nothing else; returns the
/// `warn` line logged under reference `R` (which carries the cause).
fn logged_cause(r: &client::HttpResponse) -> String {
    let body = String::from_utf8_lossy(&r.body).into_owned();
    let reference = body.trim().strip_prefix("internal error, reference ").unwrap_or_else(|| panic!("500 body {body:?}"));
    assert!(reference.len() == 8 && reference.bytes().all(|c| c.is_ascii_hexdigit()), "reference {reference:?}");
    let logs = String::from_utf8_lossy(&logs().lock().expect("log buffer")).into_owned();
    let line = logs.lines().find(|l| l.contains(&format!("reference={reference}")));
    let line = line.unwrap_or_else(|| panic!("no log line with reference {reference} in {logs}"));
    assert!(line.contains("WARN") && line.contains("BSF store error"), "{line}");
    line.to_owned()
}

/// A store error reaches the client as a 500 with a reference only (no table, row or
/// decoder text), and the operator's log has the cause under the same reference; the count
/// goes up once per failure and references differ.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_error_500_carries_a_reference_not_the_cause() {
    logs();
    let b = Backend::redb("internal");
    let kv = b.kv().await;
    kv.put(Table::BsfSubscribers, IMPI, b"{not json").await.expect("corrupt row");
    let srv = start_on(Store::new(kv, master()), 3600).await;
    let (k, opc) = keys();
    let first = ub(&srv.url, &ue(&k, &opc, 0).initial_authorization()).await;
    assert_eq!(first.status, 500);
    let body = String::from_utf8_lossy(&first.body).into_owned();
    for secret in ["corrupt", IMPI, "json", "store record"] {
        assert!(!body.contains(secret), "500 body {body:?} names {secret:?}");
    }
    let cause = logged_cause(&first);
    assert!(cause.contains("is corrupt") && cause.contains(IMPI), "{cause}");
    let second = ub(&srv.url, &ue(&k, &opc, 0).initial_authorization()).await;
    assert_eq!(second.status, 500);
    logged_cause(&second);
    assert_ne!(first.body, second.body, "each failure gets its own reference");
    assert_eq!(metric(&srv.url, "mediasec_bsf_store_errors_total").await, 2);
    srv.stop().await;
}

/// Two BSF servers on one PostgreSQL: Ub at A, Zn at B; concurrent bootstraps of one IMPI
/// through both never share an SQN and all complete AKA; a resync at B is seen by A; a
/// challenge from A answered at B, the answer replayed at either gets stale=TRUE, the same
/// answer at both at once bootstraps once; a store
/// outage is a 500 with a reference (the cause in the log) and a count, not a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_one_postgres() {
    logs();
    let Some(b) = Backend::pg() else { return };
    let Backend::Pg { url, .. } = &b else { unreachable!("Backend::pg is PostgreSQL") };
    let (k, opc) = keys();
    let a = start_on(Store::connect(url, master()).await.expect("replica A store"), 3600).await;
    let r = start_on(Store::connect(url, master()).await.expect("replica B store"), 3600).await;
    let body = serde_json::to_vec(&subscriber(&k, &opc)).expect("json");
    let admin = request(&ep(&a.url), "POST", "/admin/v1/subscribers", &[("Authorization", &format!("Bearer {ADMIN}"))], &body).await.expect("http");
    assert_eq!(admin.status, 201);
    let dup = request(&ep(&r.url), "POST", "/admin/v1/subscribers", &[("Authorization", &format!("Bearer {ADMIN}"))], &body).await.expect("http");
    assert_eq!(dup.status, 409, "B sees the subscriber A added");

    // Ub at A, Zn at B: the session is found and the key agrees.
    let (boot, mut sqn_ms) = client::bootstrap(&ep(&a.url), ue(&k, &opc, 0)).await.expect("bootstrap at A");
    assert_eq!(sqn_ms, 1);
    let naf = NafId::new("kms.ims.example.org", UaProtocolId::IMS_MEDIA_PLANE);
    let zn = client::zn_lookup(&ep(&r.url), ZN, &boot.btid.to_string(), "kms.ims.example.org", "0100000006").await.expect("zn").expect("found at B");
    assert_eq!(zn.key().expect("b64"), boot.ks_naf(&naf).expect("ks_naf").0.to_vec());

    // Concurrent bootstraps of the one IMPI: 4 UEs, 2 per replica, 12 rounds each.
    let urls = [a.url.clone(), r.url.clone()];
    let mut tasks = Vec::new();
    for i in 0..4usize {
        let (url, other) = (urls[i % 2].clone(), urls[(i + 1) % 2].clone());
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut last = 0;
            for _ in 0..12 {
                let (boot, sqn) = client::bootstrap(&ep(&url), ue(&k, &opc, last)).await.expect("concurrent bootstrap");
                // AKA completed: the other replica serves the session.
                assert!(client::zn_lookup(&ep(&other), ZN, &boot.btid.to_string(), "kms", "0100000006").await.expect("zn").is_some());
                seen.push(sqn);
                last = sqn;
            }
            seen
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        let seen = t.await.expect("task");
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
        all.extend(seen);
    }
    all.sort_unstable();
    let n = all.len();
    all.dedup();
    assert_eq!(all.len(), n, "an SQN was handed out twice");
    let he = a.bsf.store().subscriber(IMPI).await.expect("get").expect("present").sqn;
    assert!(all.iter().all(|s| *s > sqn_ms && *s <= he), "SQNs {all:?} within (1, SQN_HE {he}]");
    assert_eq!(metric(&a.url, "mediasec_bsf_resyncs_total").await + metric(&r.url, "mediasec_bsf_resyncs_total").await, 0);

    // Resync at B (the USIM is far ahead) is seen by A: A continues without a resync.
    sqn_ms = he + 1_000;
    let (_, s) = client::bootstrap(&ep(&r.url), ue(&k, &opc, sqn_ms)).await.expect("resync at B");
    assert_eq!((s, metric(&r.url, "mediasec_bsf_resyncs_total").await), (sqn_ms + 1, 1));
    assert_eq!(a.bsf.store().subscriber(IMPI).await.expect("get").expect("present").sqn, sqn_ms + 1);
    let (_, s) = client::bootstrap(&ep(&a.url), ue(&k, &opc, sqn_ms + 1)).await.expect("bootstrap at A");
    assert_eq!((s, metric(&a.url, "mediasec_bsf_resyncs_total").await), (sqn_ms + 2, 0));

    // One Ub run across replicas: the challenge from A, the answer at B succeeds; replaying
    // that answer at A or at B gets a fresh challenge with stale=TRUE (the nonce was taken).
    let mut u = ue(&k, &opc, sqn_ms + 2);
    let ch = ub(&a.url, &u.initial_authorization()).await;
    assert_eq!(ch.status, 401);
    let UeAnswer::Response(auth) = u.on_challenge(ch.header("www-authenticate").expect("challenge"), "GET", b"", &[7; 16]).expect("answer") else { panic!("response expected") };
    let ok = ub(&r.url, &auth).await;
    assert_eq!(ok.status, 200, "{}", String::from_utf8_lossy(&ok.body));
    let boot = u.on_success(ok.header("authentication-info").expect("info"), &ok.body).expect("bootstrap");
    assert!(client::zn_lookup(&ep(&a.url), ZN, &boot.btid.to_string(), "kms", "0100000006").await.expect("zn").is_some());
    for url in [&a.url, &r.url] {
        let replay = ub(url, &auth).await;
        assert_eq!((replay.status, String::from_utf8_lossy(&replay.body).trim()), (401, "unknown or already used nonce"));
        assert!(Challenge::parse(replay.header("www-authenticate").expect("challenge")).expect("parse").stale);
    }
    // The same answer at both replicas at once: exactly one bootstraps.
    let mut u = ue(&k, &opc, u.sqn_ms());
    let r1 = ub(&r.url, &u.initial_authorization()).await;
    let UeAnswer::Response(auth) = u.on_challenge(r1.header("www-authenticate").expect("challenge"), "GET", b"", &[8; 16]).expect("answer") else { panic!("response expected") };
    let (x, y) = tokio::join!(ub(&a.url, &auth), ub(&r.url, &auth));
    let mut statuses = [x.status, y.status];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 401], "one answer, one replay");

    // The database goes away: a 500 with a reference only, the cause in the log under that
    // reference, counted; the server keeps running.
    drop(b);
    let r500 = ub(&a.url, &ue(&k, &opc, 0).initial_authorization()).await;
    assert_eq!(r500.status, 500);
    let cause = logged_cause(&r500);
    assert!(cause.contains("store unavailable"), "{cause}");
    assert_eq!(metric(&a.url, "mediasec_bsf_store_errors_total").await, 1);
    a.stop().await;
    r.stop().await;
}

/// Master-key rotation (`mediasec_bsf::rekey`) on one backend: a subscriber and a session
/// sealed under the old key, a subscriber row and a session of an earlier version in the
/// clear, a challenge in flight; the rotation interrupted after one row (the store refused
/// meanwhile, with a message saying to finish it), then finished; afterwards the old key is
/// refused, everything opens under the new key, the clear rows are sealed, a Zn look-up of the
/// session made before the rotation gives the same Ks_NAF and a new bootstrap works.
async fn rekey_scenario(kv: Arc<dyn Kv>) {
    use mediasec_kms_store::rekey::{Counts, Keys, Mode, Progress, RekeyError};
    use std::ops::ControlFlow;
    let new_key = || MasterKey::new(&[0x77; 32]).expect("key");
    let old_store = Store::new(Arc::clone(&kv), master());
    let (k, opc) = keys();
    old_store.add_subscriber(&subscriber(&k, &opc)).await.expect("add");
    let (lk, lopc) = keys();
    let legacy = serde_json::json!({"impi": "old@x", "k": hex::encode(lk), "opc": hex::encode(lopc), "amf": "8000", "sqn": 41, "impus": ["sip:old@x"]});
    kv.put(Table::BsfSubscribers, "old@x", legacy.to_string().as_bytes()).await.expect("legacy subscriber");
    let legacy_session = serde_json::json!({"ks": hex::encode([5u8; 32]), "rand": hex::encode([6u8; 16]), "impi": "old@x", "bootstrap_time": 10, "expiry": u64::MAX});
    kv.put(Table::BsfSessions, "legacy@bsf", legacy_session.to_string().as_bytes()).await.expect("legacy session");
    old_store.put_pending(&pending("n9"), u64::MAX).await.expect("challenge in flight");
    let srv = start_on(old_store, 3600).await;
    let (boot, sqn) = client::bootstrap(&ep(&srv.url), ue(&k, &opc, 0)).await.expect("bootstrap");
    let btid = boot.btid.to_string();
    let zn = |url: String, btid: String| async move { client::zn_lookup(&ep(&url), ZN, &btid, "kms.ims.example.org", "0100000006").await.expect("zn").expect("found").ks_naf };
    let before = zn(srv.url.clone(), btid.clone()).await;
    srv.stop().await;

    // Interrupted after one row: both keys' stores are refused, saying to finish.
    let pair = || Keys::new(master(), new_key()).expect("keys");
    let stop = mediasec_bsf::rekey::rekey(&*kv, pair(), Mode::Offline, &mut |_: &Progress| ControlFlow::Break(())).await;
    assert!(matches!(stop, Err(mediasec_bsf::BsfError::Rekey(RekeyError::Stopped { rows: 1 }))), "{stop:?}");
    for m in [master(), new_key()] {
        let e = Store::new(Arc::clone(&kv), m).check_master_key().await.expect_err("refused while unfinished").to_string();
        assert!(e.contains("mediasec bsf rekey") && e.contains("again"), "{e}");
    }
    let report = mediasec_bsf::rekey::rekey(&*kv, pair(), Mode::Offline, &mut |_: &Progress| ControlFlow::Continue(())).await.expect("rekey");
    // 2 subscribers (1 sealed, 1 clear), 2 sessions (1 sealed, 1 clear), 1 challenge; the
    // first row (the sealed subscriber, first in key order) was done by the stopped run.
    assert_eq!(report.total(), Counts { resealed: 2, already_new: 1, sealed_from_clear: 2, gone: 0 }, "{report}");
    assert_eq!(report.tables.iter().map(|(t, c)| (*t, c.rows())).collect::<Vec<_>>(), [("subscribers", 2), ("sessions", 2), ("bsf_pending", 1)]);

    // Clear rows are sealed now: no K, OPc or Ks in the clear.
    let raw = String::from_utf8(kv.get(Table::BsfSubscribers, "old@x").await.expect("get").expect("row")).expect("JSON");
    assert!(!raw.contains(&hex::encode(lk)) && !raw.contains(&hex::encode(lopc)) && raw.contains("\"secrets\""), "{raw}");
    assert!(raw.contains("\"sqn\":41"), "other fields kept: {raw}");
    let raw = String::from_utf8(kv.get(Table::BsfSessions, "legacy@bsf").await.expect("get").expect("row")).expect("JSON");
    assert!(!raw.contains(&hex::encode([5u8; 32])) && raw.contains("\"ks_sealed\""), "{raw}");

    // The old key is refused; the new one opens everything.
    let old_again = Store::new(Arc::clone(&kv), master());
    assert!(matches!(old_again.check_master_key().await, Err(mediasec_bsf::BsfError::Sealed { .. })));
    let new_store = Store::new(Arc::clone(&kv), new_key());
    new_store.check_master_key().await.expect("the new key opens the store");
    assert_eq!(new_store.subscriber("old@x").await.expect("get").expect("legacy").k, hex::encode(lk));
    assert_eq!(new_store.session("legacy@bsf", 11).await.expect("get").expect("legacy session").ks, [5u8; 32]);
    assert_eq!(new_store.take_pending("n9").await.expect("take").expect("in flight").xres, [0xA5; 8]);
    let srv = start_on(new_store, 3600).await;
    assert_eq!(zn(srv.url.clone(), btid).await, before, "the session made before the rotation serves the same Ks_NAF");
    let (_, sqn2) = client::bootstrap(&ep(&srv.url), ue(&k, &opc, sqn)).await.expect("bootstrap on the new key");
    assert_eq!(sqn2, sqn + 1, "SQN kept across the rotation");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rekey_redb() {
    let b = Backend::redb("rekey");
    rekey_scenario(b.kv().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rekey_postgres() {
    let Some(b) = Backend::pg() else { return };
    rekey_scenario(b.kv().await).await;
}

/// A BSF replica on PostgreSQL registered with its keys (sealing `seal`, also opening
/// `open_also`), as `mediasec bsf` runs one.
async fn online_replica(url: &str, seal: [u8; 32], open_also: &[[u8; 32]], name: &str) -> Result<(Running, mediasec_kms_store::servers::Registration), mediasec_bsf::BsfError> {
    use mediasec_kms_store::sealed::MasterKeys;
    let keys = MasterKeys::new(MasterKey::new(&seal).expect("key"), open_also.iter().map(|k| MasterKey::new(k).expect("key")).collect()).expect("keys");
    let store = Store::connect(url, keys).await.expect("connect");
    let reg = mediasec_bsf::rekey::register(&store, name, mediasec_kms_store::servers::Liveness::default()).await?;
    store.check_master_key().await?;
    Ok((start_on(store, 3600).await, reg))
}

async fn stop_replica(r: (Running, mediasec_kms_store::servers::Registration)) {
    r.1.deregister().await.expect("deregister");
    r.0.stop().await;
}

/// A bootstrap at `ub_at` (the UE's SQN_MS in `sqn`), then Zn look-ups at both replicas: the
/// session is found and the Ks_NAF agrees with the UE's; `old` (an earlier B-TID and the
/// UE's Ks_NAF for it) is still served the same.
async fn bootstraps(ub_at: &Running, zn_at: &Running, k: &[u8; 16], opc: &[u8; 16], sqn: &mut u64, old: Option<&(String, Vec<u8>)>, when: &str) -> (String, Vec<u8>) {
    let naf = NafId::new("kms.ims.example.org", UaProtocolId::IMS_MEDIA_PLANE);
    let (boot, s) = client::bootstrap(&ep(&ub_at.url), ue(k, opc, *sqn)).await.unwrap_or_else(|e| panic!("{when}: bootstrap: {e}"));
    *sqn = s;
    let ks_naf = boot.ks_naf(&naf).expect("ks_naf").0.to_vec();
    let btid = boot.btid.to_string();
    let mut checks = vec![(zn_at, (&btid, &ks_naf)), (ub_at, (&btid, &ks_naf))];
    if let Some((b, want)) = old {
        checks.push((zn_at, (b, want)));
    }
    for (at, (b, want)) in checks {
        let zn = client::zn_lookup(&ep(&at.url), ZN, b, "kms.ims.example.org", "0100000006").await.unwrap_or_else(|e| panic!("{when}: Zn: {e}"));
        assert_eq!(&zn.unwrap_or_else(|| panic!("{when}: {b} not found")).key().expect("b64"), want, "{when}: Ks_NAF of {b}");
    }
    (btid, ks_naf)
}

/// The rolling online rotation with two BSF replicas on one PostgreSQL database, bootstraps
/// at one and Zn look-ups at both at every step, the session of the first bootstrap served
/// with the same Ks_NAF throughout: phase 1 (seal OLD, open NEW), phase 2 (seal NEW, open
/// OLD; a replica sealing NEW refused while the other cannot open NEW; the walk refused while
/// one seals OLD), the walk while bootstraps go on, phase 3 (NEW alone; OLD alone refused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_rekey_with_two_replicas_on_postgres() {
    use mediasec_kms_store::rekey::{Keys, Mode, Progress, RekeyError};
    use mediasec_kms_store::servers::Liveness;
    use std::ops::ControlFlow;
    let Some(b) = Backend::pg() else { return };
    let Backend::Pg { url, .. } = &b else { unreachable!("Backend::pg is PostgreSQL") };
    const OLD: [u8; 32] = [0x42; 32];
    const NEW: [u8; 32] = [0x77; 32];
    let (k, opc) = keys();
    let x = online_replica(url, OLD, &[], "X").await.expect("X");
    let y = online_replica(url, OLD, &[], "Y").await.expect("Y");
    x.0.bsf.store().add_subscriber(&subscriber(&k, &opc)).await.expect("add");
    let mut sqn = 0;
    let first = bootstraps(&x.0, &y.0, &k, &opc, &mut sqn, None, "before").await;
    bootstraps(&y.0, &x.0, &k, &opc, &mut sqn, Some(&first), "before").await;

    // Phase 1; sealing NEW refused while Y cannot open it.
    stop_replica(x).await;
    let e = online_replica(url, NEW, &[OLD], "X").await.err().expect("Y cannot open NEW").to_string();
    assert!(e.contains("cannot open") && e.contains("Y (seals with"), "{e}");
    let x = online_replica(url, OLD, &[NEW], "X").await.expect("X in phase 1");
    bootstraps(&x.0, &y.0, &k, &opc, &mut sqn, Some(&first), "X in phase 1").await;
    stop_replica(y).await;
    let y = online_replica(url, OLD, &[NEW], "Y").await.expect("Y in phase 1");
    bootstraps(&y.0, &x.0, &k, &opc, &mut sqn, Some(&first), "phase 1").await;

    // Phase 2: sessions sealed under NEW at X are read at Y (phase 1); the walk is refused
    // while Y seals OLD.
    stop_replica(x).await;
    let x = online_replica(url, NEW, &[OLD], "X").await.expect("X in phase 2");
    bootstraps(&x.0, &y.0, &k, &opc, &mut sqn, Some(&first), "X in phase 2").await;
    let pair = || Keys::new(MasterKey::new(&OLD).expect("key"), MasterKey::new(&NEW).expect("key")).expect("keys");
    let kv: Arc<dyn Kv> = Arc::new(PgStore::connect(url).await.expect("connect"));
    let go = |_: &Progress| ControlFlow::Continue(());
    let e = mediasec_bsf::rekey::rekey(&*kv, pair(), Mode::Online(Liveness::default()), &mut go.clone()).await.expect_err("Y seals OLD");
    assert!(matches!(&e, mediasec_bsf::BsfError::Rekey(RekeyError::LiveServers { servers, .. }) if servers.starts_with("Y (")), "{e}");
    stop_replica(y).await;
    let y = online_replica(url, NEW, &[OLD], "Y").await.expect("Y in phase 2");
    bootstraps(&y.0, &x.0, &k, &opc, &mut sqn, Some(&first), "phase 2").await;

    // The walk, with bootstraps and look-ups going on at both replicas.
    let (xu, yu) = (x.0.url.clone(), y.0.url.clone());
    let mut progress = go;
    let walk = mediasec_bsf::rekey::rekey(&*kv, pair(), Mode::Online(Liveness::default()), &mut progress);
    let traffic = async {
        let naf = NafId::new("kms.ims.example.org", UaProtocolId::IMS_MEDIA_PLANE);
        let mut s = sqn;
        for i in 0..6 {
            let (ub_url, zn_url) = if i % 2 == 0 { (&xu, &yu) } else { (&yu, &xu) };
            let (boot, n) = client::bootstrap(&ep(ub_url), ue(&k, &opc, s)).await.expect("bootstrap during the walk");
            s = n;
            let zn = client::zn_lookup(&ep(zn_url), ZN, &boot.btid.to_string(), "kms.ims.example.org", "0100000006").await.expect("Zn during the walk").expect("found");
            assert_eq!(zn.key().expect("b64"), boot.ks_naf(&naf).expect("ks_naf").0.to_vec(), "Ks_NAF during the walk");
            let old = client::zn_lookup(&ep(zn_url), ZN, &first.0, "kms.ims.example.org", "0100000006").await.expect("Zn during the walk").expect("found");
            assert_eq!(old.key().expect("b64"), first.1, "the first session during the walk");
        }
        s
    };
    let (report, s) = tokio::join!(walk, traffic);
    sqn = s;
    let report = report.expect("online rekey");
    // Under OLD: the subscriber (its SQN updates carry the sealed secrets over) and the 4
    // sessions of before and phase 1; under NEW: the 2 sessions of phase 2 and any made
    // during the walk that it reached.
    assert_eq!(report.total().resealed, 5, "{report}");
    assert!(report.total().rows() >= 7, "{report}");
    bootstraps(&x.0, &y.0, &k, &opc, &mut sqn, Some(&first), "after the walk").await;

    // Phase 3: NEW alone everywhere; OLD alone refused; every sealed value opens under NEW.
    stop_replica(x).await;
    let x = online_replica(url, NEW, &[], "X").await.expect("X in phase 3");
    stop_replica(y).await;
    let y = online_replica(url, NEW, &[], "Y").await.expect("Y in phase 3");
    bootstraps(&y.0, &x.0, &k, &opc, &mut sqn, Some(&first), "phase 3").await;
    let e = online_replica(url, OLD, &[], "Z").await.err().expect("old key alone").to_string();
    assert!(e.contains("cannot open"), "{e}");
    let new_only = Store::new(Arc::clone(&kv), MasterKey::new(&NEW).expect("key"));
    new_only.check_master_key().await.expect("the new key alone opens the store");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
    for (btid, _) in kv.list(Table::BsfSessions).await.expect("sessions") {
        new_only.session(&btid, now).await.unwrap_or_else(|e| panic!("session {btid} under NEW: {e}"));
    }
    let admin: Vec<String> = kv.audit(0, 100).await.expect("audit").into_iter().map(|(_, e)| format!("{} {}", e.action, e.detail)).collect();
    assert!(admin.iter().any(|a| a == "master_key.rekey.begin bsf: online, started") && admin.iter().any(|a| a.starts_with("master_key.rekey bsf: ")), "{admin:?}");
    stop_replica(x).await;
    stop_replica(y).await;
}
