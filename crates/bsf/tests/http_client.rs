//! The HTTP/1.1 client (`mediasec_bsf::client::request`) against real servers on 127.0.0.1:
//! connection reuse over TCP and TLS (accepted connections counted), concurrency, the retry
//! rule (a reused connection closed before any response byte: idempotent requests retried
//! once on a new connection, a POST not; a fresh connection never; never after a response
//! byte), `Connection: close`, and the response size limit.

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use mediasec_bsf::BsfError;
use mediasec_bsf::client::{Endpoint, MAX_RESPONSE, request};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

#[path = "common/lab_ca.rs"]
mod lab_ca;

/// Counts accepted TCP connections for axum.
struct Counting {
    tcp: TcpListener,
    accepted: Arc<AtomicUsize>,
}

impl axum::serve::Listener for Counting {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            if let Ok(conn) = self.tcp.accept().await {
                self.accepted.fetch_add(1, Ordering::SeqCst);
                return conn;
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// Counts accepted TCP connections and serves TLS on them.
struct CountingTls {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    accepted: Arc<AtomicUsize>,
}

impl axum::serve::Listener for CountingTls {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            if let Ok((tcp, addr)) = self.tcp.accept().await {
                self.accepted.fetch_add(1, Ordering::SeqCst);
                if let Ok(tls) = self.acceptor.accept(tcp).await {
                    return (tls, addr);
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// `/echo` (POST, the body back), `/slow` (GET, after 200 ms), `/close` (GET, answered with
/// `Connection: close`), `/big` (GET, one byte above the limit).
fn app() -> Router {
    Router::new()
        .route("/echo", post(|body: axum::body::Bytes| async move { body }))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(200)).await;
                "slow"
            }),
        )
        .route("/close", get(|| async { ([("connection", "close")], "bye") }))
        .route("/big", get(|| async { vec![b'x'; MAX_RESPONSE + 1] }))
}

async fn serve_http() -> (Endpoint, Arc<AtomicUsize>) {
    let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = tcp.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    tokio::spawn(axum::serve(Counting { tcp, accepted: Arc::clone(&accepted) }, app()).into_future());
    (Endpoint::http(&format!("http://{addr}")).expect("endpoint"), accepted)
}

#[tokio::test]
async fn sequential_requests_and_clones_share_one_connection() {
    let (ep, accepted) = serve_http().await;
    let clone = ep.clone();
    for i in 0..20 {
        let via = if i % 2 == 0 { &ep } else { &clone };
        let body = format!("message {i}");
        let r = request(via, "POST", "/echo", &[("Content-Type", "application/octet-stream")], body.as_bytes()).await.expect("response");
        assert_eq!((r.status, r.body), (200, body.into_bytes()));
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "20 requests on one connection");
    assert_eq!(ep.idle_connections(), 1);
}

#[tokio::test]
async fn tls_requests_share_one_connection() {
    let ca = lab_ca::ca();
    let (cert, key) = lab_ca::issue(&ca, "localhost");
    let config = mediasec_bsf::tls::server_config(cert.as_bytes(), key.as_bytes(), None).expect("server config");
    let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = tcp.local_addr().expect("addr").port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let listener = CountingTls { tcp, acceptor: TlsAcceptor::from(config), accepted: Arc::clone(&accepted) };
    tokio::spawn(axum::serve(listener, app()).into_future());
    let connector = mediasec_bsf::tls::client_connector(ca.pem().as_bytes(), None).expect("connector");
    let ep = Endpoint::new(&format!("https://localhost:{port}"), Some(connector)).expect("endpoint");
    for i in 0..10 {
        let r = request(&ep, "POST", "/echo", &[], format!("{i}").as_bytes()).await.expect("response");
        assert_eq!((r.status, r.body), (200, format!("{i}").into_bytes()));
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "10 requests on one TLS connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_get_their_own_connections_then_reuse_them() {
    let (ep, accepted) = serve_http().await;
    for round in 1..=2 {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..4 {
            let ep = ep.clone();
            set.spawn(async move { request(&ep, "GET", "/slow", &[], b"").await });
        }
        for r in set.join_all().await {
            let r = r.expect("response");
            assert_eq!((r.status, r.body.as_slice()), (200, b"slow".as_slice()), "round {round}");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 4, "round {round}: one connection per concurrent request, kept");
    }
    assert_eq!(ep.idle_connections(), 4);
}

#[tokio::test]
async fn a_connection_close_response_is_not_reused() {
    let (ep, accepted) = serve_http().await;
    for _ in 0..3 {
        let r = request(&ep, "GET", "/close", &[], b"").await.expect("response");
        assert_eq!((r.status, r.header("connection")), (200, Some("close")));
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
    assert_eq!(ep.idle_connections(), 0);
}

#[tokio::test]
async fn oversized_responses_are_refused() {
    // Announced by Content-Length.
    let (ep, _) = serve_http().await;
    let e = request(&ep, "GET", "/big", &[], b"").await.expect_err("too big");
    assert!(matches!(e, BsfError::Http { reason, .. } if reason.contains("size limit")), "{e:?}");
    // Chunked, found while reading.
    let raw = RawServer::start(|conns| {
        let (mut s, _) = conns.accept().expect("accept");
        read_request(&mut s).expect("request");
        s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").expect("head");
        let chunk = vec![b'x'; 64 * 1024];
        let mut sent = 0;
        while sent <= MAX_RESPONSE {
            if s.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).and_then(|()| s.write_all(&chunk)).and_then(|()| s.write_all(b"\r\n")).is_err() {
                return; // the client gave up, as it should
            }
            sent += chunk.len();
        }
        let _ = s.write_all(b"0\r\n\r\n");
    });
    let e = request(&raw.endpoint(), "GET", "/", &[], b"").await.expect_err("too big");
    assert!(matches!(e, BsfError::Http { offset, reason } if offset == MAX_RESPONSE && reason.contains("size limit")), "{e:?}");
}

/// A response above the former 1 MiB limit (a voicemail message at its default caps is
/// about 1.4 MB of JSON) is read whole.
#[tokio::test]
async fn responses_up_to_the_limit_are_read_whole() {
    let raw = RawServer::start(|conns| {
        let (mut s, _) = conns.accept().expect("accept");
        read_request(&mut s).expect("request");
        let body = vec![b'x'; 3 << 20];
        s.write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes()).expect("head");
        s.write_all(&body).expect("body");
    });
    let r = request(&raw.endpoint(), "GET", "/", &[], &[]).await.expect("response");
    assert_eq!((r.status, r.body.len()), (200, 3 << 20));
}

/// A raw HTTP server on a std thread (independent of the test's runtime, which some tests
/// block on purpose); `script` gets the listener.
struct RawServer {
    addr: SocketAddr,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RawServer {
    fn start(script: impl FnOnce(std::net::TcpListener) + Send + 'static) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        Self { addr, thread: Some(std::thread::spawn(move || script(listener))) }
    }

    fn endpoint(&self) -> Endpoint {
        Endpoint::http(&format!("http://{}", self.addr)).expect("endpoint")
    }

    /// Waits for the script to end (panics of the script fail the test).
    fn join(mut self) {
        if let Some(t) = self.thread.take() {
            t.join().expect("server script");
        }
    }
}

/// Reads one request (head and Content-Length body); `None` at end of stream.
fn read_request(s: &mut std::net::TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => buf.extend_from_slice(&byte),
            _ => return None,
        }
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let len = head.lines().find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap_or(0))).unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).ok()?;
    Some(head.lines().next().unwrap_or_default().to_owned())
}

const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

/// An idle connection is closed by the client once the endpoint's idle timeout is over: the
/// server reads end of stream on it (nothing else arrives), the pool holds no connection any
/// more, and the next request opens a new connection and succeeds. The timeout is short here
/// (`Endpoint::idle_timeout`; the default `IDLE_TIMEOUT`, 20 s, takes the same path). Real
/// time, not tokio's paused clock: with the clock paused, the runtime jumps to the reaper's
/// next tick whenever it waits for the loopback socket, so it would not show the timeout
/// being honoured.
#[tokio::test]
async fn an_idle_connection_is_closed_after_the_idle_timeout_and_a_new_one_is_opened() {
    let (tx, rx) = std::sync::mpsc::channel();
    let server = RawServer::start(move |conns| {
        let (mut first, _) = conns.accept().expect("accept");
        read_request(&mut first).expect("first request");
        first.write_all(OK).expect("answer");
        // Bounded: a client that never closes fails the test instead of hanging it.
        first.set_read_timeout(Some(Duration::from_secs(20))).expect("read timeout");
        let mut byte = [0u8; 1];
        let seen = match first.read(&mut byte) {
            Ok(0) => "end of stream",
            Ok(_) => "another request",
            Err(_) => "an error, or nothing within 20 s",
        };
        tx.send(seen).expect("report");
        let (mut second, _) = conns.accept().expect("a new connection");
        read_request(&mut second).expect("second request");
        second.write_all(OK).expect("answer");
    });
    let ep = server.endpoint().idle_timeout(Duration::from_millis(200));
    assert_eq!(request(&ep, "GET", "/a", &[], &[]).await.expect("first").body, b"ok");
    assert_eq!(ep.idle_connections(), 1, "kept alive after a complete response");
    let seen = tokio::task::spawn_blocking(move || rx.recv()).await.expect("join").expect("server report");
    assert_eq!(seen, "end of stream", "the client closed its idle connection");
    assert_eq!(ep.idle_connections(), 0, "the reaper dropped it from the pool");
    let r = request(&ep, "GET", "/b", &[], &[]).await.expect("on a new connection");
    assert_eq!((r.status, r.body.as_slice()), (200, b"ok".as_slice()));
    drop(ep);
    server.join();
}

/// The server answers a first request on a kept-alive connection, waits until the client
/// says that connection is idle, then sends its FIN (and
/// reports what else arrived on that connection) while the client's runtime is blocked, so
/// the client's connection task cannot see the close before the next request is written:
/// the race of RFC 9112 §9.3.1. Then it serves every further connection with one answer each.
/// Returns the server, the requests seen on the first connection after the close, and the
/// count of later connections.
fn closes_after_first_answer(idle: std::sync::mpsc::Receiver<()>, closed: std::sync::mpsc::Sender<()>) -> (RawServer, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let late = Arc::new(AtomicUsize::new(0));
    let later = Arc::new(AtomicUsize::new(0));
    let (late2, later2) = (Arc::clone(&late), Arc::clone(&later));
    let server = RawServer::start(move |conns| {
        let (mut first, _) = conns.accept().expect("accept");
        read_request(&mut first).expect("first request");
        first.write_all(OK).expect("answer");
        // Only once the client has the answer and its connection sits idle in the pool.
        idle.recv().expect("client idle");
        first.shutdown(std::net::Shutdown::Write).expect("FIN");
        closed.send(()).expect("tell the client");
        // Whatever the client still writes on it is read, never answered.
        while read_request(&mut first).is_some() {
            late2.fetch_add(1, Ordering::SeqCst);
        }
        drop(first);
        conns.set_nonblocking(true).expect("nonblocking");
        let until = std::time::Instant::now() + Duration::from_secs(2);
        while std::time::Instant::now() < until {
            match conns.accept() {
                Ok((mut s, _)) => {
                    s.set_nonblocking(false).expect("blocking");
                    later2.fetch_add(1, Ordering::SeqCst);
                    if read_request(&mut s).is_some() {
                        let _ = s.write_all(OK);
                    }
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    });
    (server, late, later)
}

/// The race of [`closes_after_first_answer`] for `method`: a first request answered on a
/// kept-alive connection, the server's FIN sent while that connection sits idle in the pool,
/// then a second request through the same endpoint. Returns the second request's outcome, the
/// requests the server saw on the closed connection, and the connections it accepted later.
async fn second_request_after_the_server_closed(method: &str, first: &[u8], second: &[u8]) -> (Result<mediasec_bsf::client::HttpResponse, BsfError>, usize, usize) {
    let (idle_tx, idle_rx) = std::sync::mpsc::channel();
    let (tx, rx) = std::sync::mpsc::channel();
    let (server, late, later) = closes_after_first_answer(idle_rx, tx);
    let ep = server.endpoint();
    assert_eq!(request(&ep, method, "/a", &[], first).await.expect("first").body, b"ok");
    // Blocks this (current-thread) runtime until the FIN is on its way, without yielding.
    idle_tx.send(()).expect("idle");
    rx.recv().expect("closed");
    std::thread::sleep(Duration::from_millis(50));
    let outcome = request(&ep, method, "/b", &[], second).await;
    drop(ep);
    server.join();
    (outcome, late.load(Ordering::SeqCst), later.load(Ordering::SeqCst))
}

/// GET is idempotent (RFC 9110 §9.2.2): written on a reused connection that the server had
/// closed, no response byte, it is retried once on a new connection and succeeds.
#[tokio::test]
async fn idempotent_request_on_a_reused_connection_closed_by_the_server_is_retried_once() {
    let (outcome, late, later) = second_request_after_the_server_closed("GET", b"", b"").await;
    let r = outcome.expect("retried on a new connection");
    assert_eq!((r.status, r.body.as_slice()), (200, b"ok".as_slice()));
    assert_eq!(late, 1, "the GET was written on the closed connection first");
    assert_eq!(later, 1, "one retry, on one new connection");
}

/// A POST in the same race is not retried (the server may have applied it): an error, and
/// no second connection.
#[tokio::test]
async fn post_on_a_reused_connection_closed_after_it_was_written_is_not_retried() {
    let (outcome, late, later) = second_request_after_the_server_closed("POST", b"one", b"two").await;
    let e = outcome.expect_err("not retried");
    assert!(matches!(e, BsfError::Transport(_)), "{e:?}");
    assert_eq!(late, 1, "the POST reached the server once");
    assert_eq!(later, 0, "no retry");
}

/// When the close is seen before the next request (the usual case: the connection task
/// reads the FIN of an idle connection), the dead connection is dropped from the pool and a
/// POST goes out once, on a new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_seen_closed_is_dropped_before_use() {
    let (idle_tx, idle_rx) = std::sync::mpsc::channel();
    let (tx, rx) = std::sync::mpsc::channel();
    let (server, late, later) = closes_after_first_answer(idle_rx, tx);
    let ep = server.endpoint();
    assert_eq!(request(&ep, "POST", "/a", &[], b"one").await.expect("first").body, b"ok");
    idle_tx.send(()).expect("idle");
    tokio::task::spawn_blocking(move || rx.recv()).await.expect("join").expect("closed");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = request(&ep, "POST", "/b", &[], b"two").await.expect("on a new connection");
    assert_eq!(r.body, b"ok");
    drop(ep);
    server.join();
    assert_eq!((late.load(Ordering::SeqCst), later.load(Ordering::SeqCst)), (0, 1));
}

/// A fresh connection closed after the server read the request: an error, never retried,
/// whatever the method.
#[tokio::test]
async fn a_fresh_connection_closed_before_the_answer_is_not_retried() {
    let received = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&received);
    let server = RawServer::start(move |conns| {
        conns.set_nonblocking(true).expect("nonblocking");
        let until = std::time::Instant::now() + Duration::from_secs(2);
        while std::time::Instant::now() < until {
            match conns.accept() {
                Ok((mut s, _)) => {
                    s.set_nonblocking(false).expect("blocking");
                    if read_request(&mut s).is_some() {
                        seen.fetch_add(1, Ordering::SeqCst);
                    }
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    });
    let ep = server.endpoint();
    for method in ["POST", "GET"] {
        let e = request(&ep, method, "/x", &[], b"mikey").await.expect_err("no answer");
        assert!(matches!(e, BsfError::Transport(_)), "{method}: {e:?}");
    }
    drop(ep);
    server.join();
    assert_eq!(received.load(Ordering::SeqCst), 2, "each request received once");
}

/// Once a byte of the response arrived, even an idempotent request is not retried.
#[tokio::test]
async fn no_retry_after_a_response_byte() {
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    let server = RawServer::start(move |conns| {
        let (mut s, _) = conns.accept().expect("accept");
        count.fetch_add(1, Ordering::SeqCst);
        read_request(&mut s).expect("first");
        s.write_all(OK).expect("answer");
        read_request(&mut s).expect("second");
        s.write_all(b"HTTP/1.").expect("part of a status line");
        drop(s);
        conns.set_nonblocking(true).expect("nonblocking");
        std::thread::sleep(Duration::from_millis(300));
        while conns.accept().is_ok() {
            count.fetch_add(1, Ordering::SeqCst);
        }
    });
    let ep = server.endpoint();
    assert_eq!(request(&ep, "GET", "/a", &[], b"").await.expect("first").body, b"ok");
    let e = request(&ep, "GET", "/b", &[], b"").await.expect_err("cut answer");
    assert!(matches!(e, BsfError::Transport(_)), "{e:?}");
    drop(ep);
    server.join();
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "no second connection");
}
