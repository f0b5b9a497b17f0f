//! Zk on loopback with real TLS: round trips between a.example and b.example, and every
//! refusal and failure the KMS must turn into a clear MIKEY error for its UE (foreign CA,
//! domain not allowed, wrong server name, peer down, slow peer, handler refusals, bad
//! requests), plus the lab PKI and the replay of the `zk_response` fuzz corpus.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use mediasec_kms_zk::{ZkClient, ZkError, ZkFuture, ZkHandler, ZkTls, decode_answer, decode_certificate_answer, pki, serve};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!("mediasec-zk-{tag}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("temp dir");
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn domains(ds: &[&str]) -> Vec<String> {
    ds.iter().map(|d| (*d).to_owned()).collect()
}

fn set(ds: &[&str]) -> BTreeSet<String> {
    ds.iter().map(|d| (*d).to_owned()).collect()
}

/// A handler that answers `<serving domain>|<peer domain>|<request>` and counts its calls;
/// a request starting with `refuse` gets a 403, `fail` an internal error.
struct Echo {
    me: String,
    calls: AtomicUsize,
}

impl ZkHandler for Echo {
    fn resolve<'a>(&'a self, peer_domain: &'a str, request: Vec<u8>) -> ZkFuture<'a, Vec<u8>> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if request.starts_with(b"refuse") {
                return Err(ZkError::Refused { status: 403, reason: "policy forbids resolving this ticket".into() });
            }
            if request.starts_with(b"fail") {
                return Err(ZkError::Config("secret detail not for the peer".into()));
            }
            let mut out = format!("{}|{peer_domain}|", self.me).into_bytes();
            out.extend_from_slice(&request);
            Ok(out)
        })
    }

    /// `{"kms": <serving domain>, "for": <peer domain>}` (a stand-in: the KMS sends its KMS
    /// certificate); a server of `c.example` refuses (503).
    fn certificate<'a>(&'a self, peer_domain: &'a str) -> ZkFuture<'a, Vec<u8>> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if self.me == "c.example" {
                return Err(ZkError::Refused { status: 503, reason: "keys unavailable".into() });
            }
            Ok(format!("{{\"kms\":\"{}\",\"for\":\"{peer_domain}\"}}", self.me).into_bytes())
        })
    }
}

/// A handler that only resolves (the trait's default: no KMS certificate).
struct ResolveOnly;

impl ZkHandler for ResolveOnly {
    fn resolve<'a>(&'a self, _peer_domain: &'a str, request: Vec<u8>) -> ZkFuture<'a, Vec<u8>> {
        Box::pin(async move { Ok(request) })
    }
}

/// A running Zk server of `domain`; aborted on drop.
struct Server {
    addr: SocketAddr,
    handler: Arc<Echo>,
    task: tokio::task::JoinHandle<Result<(), ZkError>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn start(dir: &Path, domain: &str, allowed: &[&str]) -> Server {
    let tls = ZkTls::load(dir, domain).expect("load server TLS");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let handler = Arc::new(Echo { me: domain.to_owned(), calls: AtomicUsize::new(0) });
    let task = tokio::spawn(serve(listener, &tls, set(allowed), Arc::clone(&handler) as Arc<dyn ZkHandler>));
    Server { addr, handler, task }
}

fn client(dir: &Path, domain: &str, peers: &[(&str, SocketAddr)], timeout: Duration) -> ZkClient {
    let tls = ZkTls::load(dir, domain).expect("load client TLS");
    let peers: BTreeMap<String, String> = peers.iter().map(|(d, a)| ((*d).to_owned(), a.to_string())).collect();
    ZkClient::new(&tls, peers, timeout)
}

fn lab() -> TempDir {
    let d = TempDir::new("pki");
    pki::generate(&d.0, &domains(&["a.example", "b.example", "c.example"])).expect("pki");
    d
}

const T: Duration = Duration::from_secs(5);

#[tokio::test]
async fn round_trip_between_two_domains_both_ways() {
    let pki = lab();
    let a = start(&pki.0, "a.example", &["b.example"]).await;
    let b = start(&pki.0, "b.example", &["a.example"]).await;
    let from_a = client(&pki.0, "a.example", &[("b.example", b.addr)], T);
    let from_b = client(&pki.0, "b.example", &[("a.example", a.addr)], T);
    let msg: Vec<u8> = (0..=255u8).cycle().take(3000).collect(); // binary, > one TLS record
    let mut want = b"b.example|a.example|".to_vec();
    want.extend_from_slice(&msg);
    assert_eq!(from_a.resolve("b.example", &msg).await.expect("a -> b"), want);
    assert_eq!(from_b.resolve("a.example", b"hello").await.expect("b -> a"), b"a.example|b.example|hello");
    // Several concurrent resolves over separate connections.
    let results = futures_join(&from_a, 8).await;
    assert!(results.iter().all(|r| r.as_deref() == Ok(&b"b.example|a.example|x"[..])), "{results:?}");
    assert_eq!(b.handler.calls.load(Ordering::SeqCst), 9);
    assert_eq!(a.handler.calls.load(Ordering::SeqCst), 1);
}

async fn futures_join(c: &ZkClient, n: usize) -> Vec<Result<Vec<u8>, String>> {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let c = c.clone();
        set.spawn(async move { c.resolve("b.example", b"x").await.map_err(|e| e.to_string()) });
    }
    set.join_all().await
}

/// A TCP relay to `to` that counts the connections it accepts.
async fn counting_relay(to: SocketAddr) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    (addr, accepted)
}

/// The client keeps its mutually authenticated connection to a peer: ten resolves, one TCP
/// connection (and one TLS handshake); clones of the client share it.
#[tokio::test]
async fn sequential_resolves_reuse_one_connection() {
    let pki = lab();
    let b = start(&pki.0, "b.example", &["a.example"]).await;
    let (relay, accepted) = counting_relay(b.addr).await;
    let c = client(&pki.0, "a.example", &[("b.example", relay)], T);
    for i in 0..10u8 {
        let via = c.clone();
        assert_eq!(via.resolve("b.example", &[i]).await.expect("resolve"), [b"b.example|a.example|".as_slice(), &[i]].concat());
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    assert_eq!(b.handler.calls.load(Ordering::SeqCst), 10);
}

#[tokio::test]
async fn client_certificate_from_another_ca_is_refused() {
    let pki = lab();
    let other = TempDir::new("other");
    pki::generate(&other.0, &domains(&["a.example"])).expect("other pki");
    // Trusts the right CA (so the client accepts the server) but presents a certificate for
    // kms.a.example issued by a different CA.
    let mixed = TempDir::new("mixed");
    std::fs::copy(pki.0.join(pki::CA_FILE), mixed.0.join(pki::CA_FILE)).expect("copy");
    std::fs::copy(pki::cert_file(&other.0, "a.example"), pki::cert_file(&mixed.0, "a.example")).expect("copy");
    std::fs::copy(pki::key_file(&other.0, "a.example"), pki::key_file(&mixed.0, "a.example")).expect("copy");
    let b = start(&pki.0, "b.example", &["a.example"]).await;
    let err = client(&mixed.0, "a.example", &[("b.example", b.addr)], T).resolve("b.example", b"x").await.expect_err("refused");
    assert!(matches!(&err, ZkError::Tls { peer, .. } if peer == "b.example"), "{err:?}");
    // The other CA's client also refuses our server (its only root is the other CA).
    let err = client(&other.0, "a.example", &[("b.example", b.addr)], T).resolve("b.example", b"x").await.expect_err("refused");
    // (Both CAs have the same name, so webpki finds the issuer by name and the signature fails.)
    assert!(matches!(&err, ZkError::Tls { reason, .. } if reason.contains("BadSignature")), "{err:?}");
    assert_eq!(b.handler.calls.load(Ordering::SeqCst), 0, "handler ran for an unauthenticated peer");
}

#[tokio::test]
async fn peer_domain_not_allowed_is_refused_before_the_handler() {
    let pki = lab();
    let b = start(&pki.0, "b.example", &["a.example"]).await;
    let err = client(&pki.0, "c.example", &[("b.example", b.addr)], T).resolve("b.example", b"x").await.expect_err("refused");
    match &err {
        ZkError::Refused { status: 403, reason } => assert!(reason.contains("kms.c.example"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(b.handler.calls.load(Ordering::SeqCst), 0);
    // An empty allow-list refuses everyone.
    let closed = start(&pki.0, "b.example", &[]).await;
    let err = client(&pki.0, "a.example", &[("b.example", closed.addr)], T).resolve("b.example", b"x").await.expect_err("refused");
    assert!(matches!(err, ZkError::Refused { status: 403, .. }), "{err:?}");
}

#[tokio::test]
async fn wrong_server_name_is_refused() {
    let pki = lab();
    // a.example's client is told that b.example is at c.example's server.
    let c = start(&pki.0, "c.example", &["a.example"]).await;
    let err = client(&pki.0, "a.example", &[("b.example", c.addr)], T).resolve("b.example", b"x").await.expect_err("refused");
    assert!(matches!(&err, ZkError::Tls { reason, .. } if reason.contains("not valid for name \"kms.b.example\"")), "{err:?}");
    assert_eq!(c.handler.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn unknown_peer_and_peer_down_fail_fast() {
    let pki = lab();
    let c = client(&pki.0, "a.example", &[], T);
    assert!(matches!(c.resolve("b.example", b"x").await, Err(ZkError::UnknownPeer(d)) if d == "b.example"));
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
    // The port is closed again now: connection refused.
    let c = client(&pki.0, "a.example", &[("b.example", port)], T);
    let t0 = Instant::now();
    let err = c.resolve("b.example", b"x").await.expect_err("down");
    assert!(matches!(&err, ZkError::Unreachable { peer, addr, .. } if peer == "b.example" && *addr == port.to_string()), "{err:?}");
    assert!(t0.elapsed() < Duration::from_secs(1), "took {:?} with a {T:?} bound", t0.elapsed());
}

#[tokio::test]
async fn slow_peer_times_out_within_the_bound() {
    let pki = lab();
    // Accepts TCP connections and never says a word.
    let silent = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = silent.local_addr().expect("addr");
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let bound = Duration::from_millis(400);
    let c = client(&pki.0, "a.example", &[("b.example", addr)], bound);
    let t0 = Instant::now();
    let err = c.resolve("b.example", b"x").await.expect_err("timeout");
    let took = t0.elapsed();
    assert!(matches!(&err, ZkError::Timeout { peer, after } if peer == "b.example" && *after == bound), "{err:?}");
    assert!(took >= bound && took < bound + Duration::from_millis(400), "took {took:?} for a {bound:?} bound");
    // A silent TCP client does not block the real server's accept loop either.
    let b = start(&pki.0, "b.example", &["a.example"]).await;
    let _stalled = tokio::net::TcpStream::connect(b.addr).await.expect("connect");
    let ok = client(&pki.0, "a.example", &[("b.example", b.addr)], bound).resolve("b.example", b"y").await;
    assert_eq!(ok.expect("served despite a stalled handshake"), b"b.example|a.example|y");
    hold.abort();
}

#[tokio::test]
async fn handler_refusals_reach_the_client() {
    let pki = lab();
    let b = start(&pki.0, "b.example", &["a.example"]).await;
    let c = client(&pki.0, "a.example", &[("b.example", b.addr)], T);
    let err = c.resolve("b.example", b"refuse me").await.expect_err("refused");
    assert!(matches!(&err, ZkError::Refused { status: 403, reason } if reason == "policy forbids resolving this ticket"), "{err:?}");
    let err = c.resolve("b.example", b"fail").await.expect_err("500");
    assert!(matches!(&err, ZkError::Refused { status: 500, reason } if reason == "internal error"), "{err:?}");
}

/// Raw HTTP over the mutually authenticated TLS connection, as a peer KMS would send it.
async fn raw(dir: &Path, addr: SocketAddr, request: &str) -> String {
    let tls = ZkTls::load(dir, "a.example").expect("tls");
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut s = tls.connector().connect(ServerName::try_from("kms.b.example").expect("name"), tcp).await.expect("tls");
    s.write_all(request.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn wire_format_is_annex_a_resolve() {
    let pki = lab();
    let b = start(&pki.0, "b.example", &["a.example"]).await;
    let req = |path: &str, ct: &str, body: &str| {
        format!("POST {path} HTTP/1.1\r\nHost: kms.b.example\r\nContent-Type: {ct}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
    };
    // "aGk=" is base64 of "hi".
    let ok = raw(&pki.0, b.addr, &req("/keymanagement?requesttype=ticketresolve", "application/mikey", "aGk=")).await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert!(ok.to_ascii_lowercase().contains("content-type: application/mikey"), "{ok}");
    assert_eq!(decode_answer(ok.as_bytes()).expect("answer"), b"b.example|a.example|hi");
    let r = raw(&pki.0, b.addr, &req("/keymanagement?requesttype=ticketrequest", "application/mikey", "aGk=")).await;
    assert!(r.starts_with("HTTP/1.1 400") && r.contains("only requesttype=ticketresolve"), "{r}");
    let r = raw(&pki.0, b.addr, &req("/keymanagement?requesttype=ticketresolve", "text/plain", "aGk=")).await;
    assert!(r.starts_with("HTTP/1.1 415"), "{r}");
    let r = raw(&pki.0, b.addr, &req("/keymanagement?requesttype=ticketresolve", "application/mikey", "not base64!")).await;
    assert!(r.starts_with("HTTP/1.1 400") && r.contains("not base64"), "{r}");
    let r = raw(&pki.0, b.addr, &req("/keymanagement?requesttype=ticketresolve", "application/mikey", "")).await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    let r = raw(&pki.0, b.addr, &req("/zk/other", "application/mikey", "aGk=")).await;
    assert!(r.starts_with("HTTP/1.1 404"), "{r}");
    let big = "A".repeat(mediasec_kms_zk::MAX_BODY + 4);
    let r = raw(&pki.0, b.addr, &req("/keymanagement?requesttype=ticketresolve", "application/mikey", &big)).await;
    assert!(r.starts_with("HTTP/1.1 413"), "{r}");
    assert_eq!(b.handler.calls.load(Ordering::SeqCst), 1, "only the valid request reached the handler");
}

#[test]
fn pki_files_and_names() {
    let d = TempDir::new("files");
    pki::generate(&d.0, &domains(&["a.example", "op-2.example.net"])).expect("pki");
    for f in ["ca.pem", "kms.a.example.pem", "kms.a.example.key.pem", "kms.op-2.example.net.pem", "kms.op-2.example.net.key.pem"] {
        assert!(d.0.join(f).is_file(), "{f} missing");
    }
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(pki::key_file(&d.0, "a.example")).expect("meta").permissions().mode();
    assert_eq!(mode & 0o077, 0, "key readable by others: {mode:o}");
    let tls = ZkTls::load(&d.0, "op-2.example.net").expect("load");
    assert_eq!(tls.domain(), "op-2.example.net");
    for bad in ["", "a..example", "-a.example", "a.example/../x", "a example", "ä.example"] {
        assert!(matches!(pki::generate(&d.0, &domains(&[bad])), Err(ZkError::Config(_))), "{bad:?} accepted");
        assert!(matches!(ZkTls::load(&d.0, bad), Err(ZkError::Config(_))), "{bad:?} loaded");
    }
    assert!(matches!(pki::generate(&d.0, &[]), Err(ZkError::Config(_))));
    match ZkTls::load(&d.0, "b.example") {
        Err(ZkError::Config(m)) => assert!(m.contains("kms.b.example.pem"), "{m}"),
        other => panic!("{other:?}"),
    }
}

/// KMS certificates over Zk (docs/zk.md "KMS certificates"): `GET /keymanagement/certificate`
/// over the same mutual TLS, answered for an allow-listed peer (which the handler learns);
/// a peer not allowed is refused before the handler; handler refusals and a handler without
/// certificates (404) reach the client typed; unknown peer fails fast.
#[tokio::test]
async fn certificates_over_zk() {
    let pki = lab();
    let b = start(&pki.0, "b.example", &["a.example"]).await;
    let from_a = client(&pki.0, "a.example", &[("b.example", b.addr)], T);
    assert_eq!(from_a.certificate("b.example").await.expect("a fetches b's"), br#"{"kms":"b.example","for":"a.example"}"#);
    let err = client(&pki.0, "c.example", &[("b.example", b.addr)], T).certificate("b.example").await.expect_err("c not allowed");
    assert!(matches!(&err, ZkError::Refused { status: 403, .. }), "{err:?}");
    assert_eq!(b.handler.calls.load(Ordering::SeqCst), 1, "the refused peer never reached the handler");
    let c = start(&pki.0, "c.example", &["a.example"]).await;
    let err = client(&pki.0, "a.example", &[("c.example", c.addr)], T).certificate("c.example").await.expect_err("503");
    assert!(matches!(&err, ZkError::Refused { status: 503, reason } if reason == "keys unavailable"), "{err:?}");
    let tls = ZkTls::load(&pki.0, "b.example").expect("tls");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(serve(listener, &tls, set(&["a.example"]), Arc::new(ResolveOnly) as Arc<dyn ZkHandler>));
    let err = client(&pki.0, "a.example", &[("b.example", addr)], T).certificate("b.example").await.expect_err("404");
    assert!(matches!(&err, ZkError::Refused { status: 404, .. }), "{err:?}");
    task.abort();
    assert!(matches!(from_a.certificate("d.example").await, Err(ZkError::UnknownPeer(_))));
}

#[test]
fn decode_certificate_answer_cases() {
    assert_eq!(decode_certificate_answer(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}").expect("ok"), b"{}");
    let e = decode_certificate_answer(b"HTTP/1.1 200 OK\r\nContent-Type: application/mikey\r\nContent-Length: 2\r\n\r\n{}").expect_err("ct");
    assert!(matches!(e, ZkError::BadResponse { .. }), "{e:?}");
    let e = decode_certificate_answer(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 0\r\n\r\n").expect_err("empty");
    assert!(matches!(e, ZkError::BadResponse { .. }), "{e:?}");
    let e = decode_certificate_answer(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 3\r\n\r\nno\n").expect_err("403");
    assert!(matches!(&e, ZkError::Refused { status: 403, reason } if reason == "no"), "{e:?}");
    assert!(decode_certificate_answer(b"garbage").is_err());
}

#[test]
fn decode_answer_cases() {
    assert_eq!(decode_answer(b"HTTP/1.1 200 OK\r\nContent-Type: application/mikey\r\nContent-Length: 4\r\n\r\naGk=").expect("ok"), b"hi");
    let e = decode_answer(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 5\r\n\r\nbusy\n").expect_err("503");
    assert!(matches!(&e, ZkError::Refused { status: 503, reason } if reason == "busy"), "{e:?}");
    let e = decode_answer(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\naGk=").expect_err("ct");
    assert!(matches!(e, ZkError::BadResponse { .. }), "{e:?}");
    let e = decode_answer(b"HTTP/1.1 200 OK\r\nContent-Type: application/mikey\r\n\r\n*").expect_err("b64");
    assert!(matches!(e, ZkError::BadResponse { offset: 52, .. }), "{e:?}");
    let e = decode_answer(b"HTTP/1.1 302 Found\r\n\r\n").expect_err("302");
    assert!(matches!(e, ZkError::BadResponse { .. }), "{e:?}");
    let e = decode_answer(b"HTTP/1.1 200 OK\r\nContent-Type: application/mikey\r\nContent-Length: 9\r\n\r\naGk=").expect_err("short");
    assert!(matches!(e, ZkError::BadResponse { .. }), "{e:?}");
}

/// Every seed of the `zk_response` fuzz target goes through the same function without panic.
#[test]
fn fuzz_corpus_replays() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/corpus/zk_response");
    let mut n = 0;
    for e in std::fs::read_dir(dir).expect("corpus dir") {
        let data = std::fs::read(e.expect("entry").path()).expect("seed");
        let _ = decode_answer(&data);
        n += 1;
    }
    assert!(n >= 3, "corpus has {n} seeds");
}
