//! The HTTP/1.1 client of every mediasec component that speaks HTTP (Ub, Ua, Zn, Zk, the
//! voicemail mailbox, the admin and LI APIs): hyper's client connection API
//! (`hyper::client::conn::http1`) over TCP or TLS, with the idle connections of each
//! [`Endpoint`] kept for reuse (persistent connections, RFC 9112 §9.3).
//!
//! # The pool
//!
//! An [`Endpoint`] and its clones share one pool of idle connections to its authority: at
//! most [`MAX_IDLE`] of them, none reused after [`IDLE_TIMEOUT`] idle (or the endpoint's own
//! [`Endpoint::idle_timeout`]; a reaper task of the pool closes them within half that period
//! more, and ends with the pool). A request takes
//! the most recently used idle connection that is still open, or opens a new one (so
//! concurrent requests each get their own connection); after a complete response the
//! connection goes back to the pool, unless the response said `Connection: close`
//! (RFC 9112 §9.6) or was HTTP/1.0, or anything failed (the connection is then dropped).
//!
//! The mediasec servers (axum on hyper) never close an idle connection themselves (axum's
//! `serve` sets no hyper timer, so hyper's 30 s header-read timeout is off); the idle timeout
//! stays below those 30 s, below common proxy defaults (nginx 75 s), and frees a server's
//! sockets held by a client that went quiet.
//!
//! # Retries (RFC 9112 §9.3.1, RFC 9110 §9.2.2)
//!
//! A server may close an idle connection at any time (RFC 9112 §9.3.1), so a request sent on
//! a reused connection can meet a connection the server already closed. RFC 9110 §9.2.2: a
//! client SHOULD NOT automatically retry a request with a non-idempotent method unless it
//! knows the original request was never applied. Most requests here are POSTs (Ua, Zn, Zk,
//! admin), and Ua/Zk carry MIKEY messages with replay protection (RFC 3830 §5.4): a second
//! delivery of one that the server did read is a replay, refused, and a second admin POST
//! would be applied twice. So a request is retried at most once, always on a fresh
//! connection, and only when
//!
//! - it was sent on a *reused* connection (never when a fresh connection fails: nothing
//!   stale to blame), and
//! - no byte of a response arrived on that connection since the request was handed to it
//!   (a response byte means the server is processing or answering it), and
//! - either hyper handed the request back unsent (the connection was found closed before
//!   any byte of the request was written: never applied, any method), or the method is
//!   idempotent (RFC 9110 §9.2.2: GET, HEAD, OPTIONS, TRACE, PUT, DELETE) and the connection
//!   closed or broke after the request was written. A POST written on a connection that then
//!   closed without a response byte is *not* retried — the server may have read and applied
//!   it — and the caller gets the error.
//!
//! In practice the pool sees an idle connection's close (its task reads the FIN) and drops it
//! before a request is sent; the retry covers the close racing the request.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, LengthLimitError, Limited};
use hyper::client::conn::http1;
use hyper::header::{CONNECTION, CONTENT_LENGTH, HOST, HeaderName, HeaderValue};
use hyper::{Method, Request, Version};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::BsfError;

/// Largest response accepted by default: 4 MiB, room for the largest voicemail message a
/// server may keep (`mediasec_voicemail::deposit::MAX_MESSAGE_BYTES` of packets, base64 in
/// JSON). Enforced on the announced `Content-Length` and while the body is read.
pub const MAX_RESPONSE: usize = 4 << 20;

/// Most idle connections an [`Endpoint`] keeps (more concurrent requests open more
/// connections; those beyond this bound are closed when their response is complete).
pub const MAX_IDLE: usize = 8;

/// How long an idle connection is kept for reuse, unless the endpoint says otherwise
/// ([`Endpoint::idle_timeout`]).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(20);

/// A client connection: hyper's sender and the count of bytes read from the server so far.
struct Conn {
    sender: http1::SendRequest<Full<Bytes>>,
    read: Arc<AtomicU64>,
}

/// A stream that counts the bytes read from it (to know whether any byte of a response came).
struct Counted<S> {
    inner: S,
    read: Arc<AtomicU64>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// An HTTP response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Headers (names lowercased).
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// First header value by (lowercase) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    pub(crate) fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).trim().to_owned()
    }
}

/// Where a server is: `host:port`, TLS (server name + connector) for https, and the pool of
/// idle connections to it, shared by all clones.
#[derive(Clone)]
pub struct Endpoint {
    authority: String,
    tls: Option<(ServerName<'static>, TlsConnector)>,
    max_response: usize,
    pool: Arc<Pool>,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("authority", &self.authority)
            .field("tls", &self.tls.as_ref().map(|(name, _)| name))
            .field("max_response", &self.max_response)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// From `http://host:port` or `https://host:port` (then `tls` must be given: a connector
    /// trusting the server's CA, see [`crate::tls::client_connector`]; the certificate must
    /// name `host`).
    pub fn new(url: &str, tls: Option<TlsConnector>) -> Result<Self, BsfError> {
        let (authority, _) = split_url(url)?;
        let tls = match (url.starts_with("https://"), tls) {
            (false, _) => None,
            (true, None) => return Err(BsfError::Url(url.to_owned())),
            (true, Some(c)) => {
                let host = authority.rsplit_once(':').map_or(authority.as_str(), |(h, _)| h);
                let name = ServerName::try_from(host.trim_matches(['[', ']']).to_owned()).map_err(|_| BsfError::Url(url.to_owned()))?;
                Some((name, c))
            }
        };
        Ok(Self::with(authority, tls))
    }

    /// Plain HTTP endpoint.
    pub fn http(url: &str) -> Result<Self, BsfError> {
        Self::new(url, None)
    }

    /// An https endpoint at `authority` (`host:port`) whose certificate must name `name`,
    /// whatever the address (Zk: `kms.<peer domain>`).
    pub fn tls(authority: impl Into<String>, name: ServerName<'static>, connector: TlsConnector) -> Self {
        Self::with(authority.into(), Some((name, connector)))
    }

    fn with(authority: String, tls: Option<(ServerName<'static>, TlsConnector)>) -> Self {
        Self { authority, tls, max_response: MAX_RESPONSE, pool: Arc::new(Pool::new(IDLE_TIMEOUT)) }
    }

    /// The same endpoint with idle connections kept for `timeout` instead of
    /// [`IDLE_TIMEOUT`] (closed by the reaper within `timeout / 2` more). It gets a pool of
    /// its own: call it where the endpoint is made, before its first request (clones made
    /// earlier keep the former pool).
    #[must_use]
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.pool = Arc::new(Pool::new(timeout));
        self
    }

    /// The same endpoint with a smaller (or larger) response bound than [`MAX_RESPONSE`].
    #[must_use]
    pub fn max_response(mut self, bytes: usize) -> Self {
        self.max_response = bytes;
        self
    }

    /// `host:port`.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// Idle connections kept right now (open or not yet found closed).
    pub fn idle_connections(&self) -> usize {
        self.pool.lock().len()
    }

    /// A new connection: TCP, TLS if https, then the HTTP/1.1 handshake; the connection is
    /// driven by its own task until the sender (and every response body) is dropped.
    async fn connect(&self) -> Result<Conn, BsfError> {
        let tcp = TcpStream::connect(&self.authority).await.map_err(|source| BsfError::Connect { addr: self.authority.clone(), source })?;
        // Requests and responses are small and latency-bound: no Nagle delay.
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => handshake(tcp).await,
            Some((name, connector)) => {
                let tls = connector.connect(name.clone(), tcp).await.map_err(|e| match rustls_error(&e) {
                    Some(reason) => BsfError::Tls(reason),
                    None => BsfError::Io(e),
                })?;
                handshake(tls).await
            }
        }
    }
}

async fn handshake<S>(stream: S) -> Result<Conn, BsfError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let read = Arc::new(AtomicU64::new(0));
    let io = TokioIo::new(Counted { inner: stream, read: Arc::clone(&read) });
    let (sender, conn) = http1::handshake(io).await.map_err(|e| transport(&e))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "HTTP client connection ended with an error");
        }
    });
    Ok(Conn { sender, read })
}

/// The idle connections of an endpoint, most recently used last, how long they are kept,
/// and whether its reaper runs.
struct Pool {
    idle: Mutex<Vec<Idle>>,
    timeout: Duration,
    reaper: AtomicBool,
}

struct Idle {
    conn: Conn,
    since: Instant,
}

impl Idle {
    fn usable(&self, timeout: Duration) -> bool {
        self.since.elapsed() < timeout && !self.conn.sender.is_closed()
    }
}

impl Pool {
    fn new(timeout: Duration) -> Self {
        Self { idle: Mutex::default(), timeout, reaper: AtomicBool::new(false) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Drops (closing them) the idle connections past the timeout or found closed.
    fn drop_stale(&self, idle: &mut Vec<Idle>) {
        idle.retain(|i| i.usable(self.timeout));
    }

    /// The most recently used idle connection still usable; stale ones are dropped.
    fn take(&self) -> Option<Conn> {
        let mut idle = self.lock();
        while let Some(i) = idle.pop() {
            if i.usable(self.timeout) {
                return Some(i.conn);
            }
        }
        None
    }

    /// Keeps a connection whose exchange completed, within [`MAX_IDLE`]; the first one
    /// starts the reaper.
    fn put(self: &Arc<Self>, conn: Conn) {
        {
            let mut idle = self.lock();
            self.drop_stale(&mut idle);
            if idle.len() < MAX_IDLE && !conn.sender.is_closed() {
                idle.push(Idle { conn, since: Instant::now() });
            }
        }
        if !self.reaper.swap(true, Ordering::Relaxed) {
            tokio::spawn(reap(Arc::downgrade(self)));
        }
    }
}

/// Every half of the pool's timeout, closes the connections of `pool` idle for that timeout
/// (dropping a sender ends its connection task, which closes the socket), until the pool is
/// gone.
async fn reap(pool: Weak<Pool>) {
    // A zero timeout keeps nothing idle for long; the floor keeps the loop from spinning.
    let period = match pool.upgrade() {
        Some(p) => (p.timeout / 2).max(Duration::from_millis(10)),
        None => return,
    };
    loop {
        tokio::time::sleep(period).await;
        let Some(pool) = pool.upgrade() else { return };
        pool.drop_stale(&mut pool.lock());
    }
}

/// One HTTP/1.1 request on an idle connection of `ep` or a new one; see the module doc for
/// when a request is retried (at most once, on a new connection).
pub async fn request(ep: &Endpoint, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Result<HttpResponse, BsfError> {
    let req = build(ep, method, path, headers, body)?;
    let idempotent = is_idempotent(req.method());
    // The request again, for an idempotent method (a cheap copy: the body is `Bytes`).
    let again = idempotent.then(|| clone(&req));
    let (mut conn, reused) = ready_conn(ep).await?;
    let read_before = conn.read.load(Ordering::Relaxed);
    let response = match conn.sender.try_send_request(req).await {
        Ok(r) => r,
        Err(mut e) => {
            let no_response_byte = conn.read.load(Ordering::Relaxed) == read_before;
            let retry = match e.take_message() {
                Some(unsent) => Some(unsent),
                None if idempotent && (e.error().is_incomplete_message() || is_io(e.error())) => again,
                None => None,
            };
            match retry {
                Some(req) if reused && no_response_byte => {
                    tracing::debug!(authority = %ep.authority, %method, error = %e.error(), "reused connection closed before any response byte; request retried once on a new connection");
                    conn = ep.connect().await?;
                    conn.sender.ready().await.map_err(|e| transport(&e))?;
                    conn.sender.send_request(req).await.map_err(|e| transport(&e))?
                }
                _ => return Err(transport(e.error())),
            }
        }
    };
    let (parts, incoming) = response.into_parts();
    let announced = parts.headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > ep.max_response as u64) {
        return Err(BsfError::Http { offset: 0, reason: "Content-Length above the response size limit" });
    }
    let body = Limited::new(incoming, ep.max_response).collect().await.map_err(|e| match e.downcast_ref::<LengthLimitError>() {
        Some(_) => BsfError::Http { offset: ep.max_response, reason: "response body above the size limit" },
        None => transport(e.as_ref()),
    })?;
    let close = parts.version < Version::HTTP_11
        || parts.headers.get_all(CONNECTION).iter().any(|v| v.to_str().is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close"))));
    if !close {
        ep.pool.put(conn);
    }
    let headers = parts.headers.iter().map(|(n, v)| (n.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned())).collect();
    Ok(HttpResponse { status: parts.status.as_u16(), headers, body: body.to_bytes().to_vec() })
}

/// A connection ready for a request, and whether it was reused: an idle one that turns out
/// closed is dropped (nothing was sent on it) and the next one tried.
async fn ready_conn(ep: &Endpoint) -> Result<(Conn, bool), BsfError> {
    while let Some(mut conn) = ep.pool.take() {
        if conn.sender.ready().await.is_ok() {
            return Ok((conn, true));
        }
    }
    let mut conn = ep.connect().await?;
    conn.sender.ready().await.map_err(|e| transport(&e))?;
    Ok((conn, false))
}

/// RFC 9110 §9.2.2: the methods whose repetition has the effect of one request.
fn is_idempotent(m: &Method) -> bool {
    [Method::GET, Method::HEAD, Method::OPTIONS, Method::TRACE, Method::PUT, Method::DELETE].contains(m)
}

fn clone(req: &Request<Full<Bytes>>) -> Request<Full<Bytes>> {
    let mut c = Request::new(req.body().clone());
    *c.method_mut() = req.method().clone();
    *c.uri_mut() = req.uri().clone();
    *c.headers_mut() = req.headers().clone();
    c
}

/// Whether a socket error (reset, broken pipe; not TLS) is behind a hyper error.
fn is_io(e: &hyper::Error) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            return io.get_ref().is_none_or(|i| !i.is::<rustls::Error>());
        }
        cur = err.source();
    }
    false
}

/// The request in origin form (RFC 9112 §3.2.1) with `Host` (the authority unless the caller
/// gives one) and `Content-Length` always (also 0, as before).
fn build(ep: &Endpoint, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Result<Request<Full<Bytes>>, BsfError> {
    let bad = |what: &str| BsfError::Request(format!("{what} in {method} {path}"));
    let mut req = Request::new(Full::new(Bytes::copy_from_slice(body)));
    *req.method_mut() = Method::from_bytes(method.as_bytes()).map_err(|_| bad("invalid method"))?;
    *req.uri_mut() = path.parse().map_err(|_| bad("invalid path"))?;
    let h = req.headers_mut();
    for (n, v) in headers {
        let name = HeaderName::from_bytes(n.as_bytes()).map_err(|_| bad("invalid header name"))?;
        let value = HeaderValue::from_str(v).map_err(|_| bad("invalid header value"))?;
        h.append(name, value);
    }
    if !h.contains_key(HOST) {
        h.insert(HOST, HeaderValue::from_str(&ep.authority).map_err(|_| bad("invalid authority"))?);
    }
    h.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    Ok(req)
}

/// The rustls error inside an I/O error, if any (TLS or certificate authentication failed).
fn rustls_error(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(tls.to_string());
        }
        if let Some(io) = err.downcast_ref::<io::Error>()
            && let Some(tls) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>())
        {
            return Some(tls.to_string());
        }
        cur = err.source();
    }
    None
}

/// A failure of the connection or of the HTTP exchange: TLS if rustls is behind it, else
/// the error with its causes.
fn transport(e: &(dyn std::error::Error + 'static)) -> BsfError {
    if let Some(reason) = rustls_error(e) {
        return BsfError::Tls(reason);
    }
    let mut reason = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        reason.push_str(": ");
        reason.push_str(&s.to_string());
        cur = s.source();
    }
    BsfError::Transport(reason)
}

/// `http(s)://host:port[/path]` split into (authority, path).
pub fn split_url(url: &str) -> Result<(String, String), BsfError> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| BsfError::Url(url.to_owned()))?;
    let (auth, path) = rest.find('/').map_or((rest, "/"), |i| (rest.get(..i).unwrap_or_default(), rest.get(i..).unwrap_or("/")));
    if auth.is_empty() || !auth.contains(':') {
        return Err(BsfError::Url(url.to_owned()));
    }
    Ok((auth.to_owned(), path.to_owned()))
}

/// Parse a complete HTTP/1.1 response held in memory (the client itself reads responses with
/// hyper; this serves decoders fed raw bytes, e.g. the `zk_response` fuzz target).
pub fn parse_response(raw: &[u8]) -> Result<HttpResponse, BsfError> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or(BsfError::Http { offset: raw.len(), reason: "no end of headers" })?;
    let head = std::str::from_utf8(raw.get(..end).unwrap_or_default()).map_err(|e| BsfError::Http { offset: e.valid_up_to(), reason: "headers are not UTF-8" })?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| status_line.strip_prefix("HTTP/1.0 "))
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or(BsfError::Http { offset: 0, reason: "bad status line" })?;
    let mut headers = Vec::new();
    for l in lines {
        let (n, v) = l.split_once(':').ok_or(BsfError::Http { offset: 0, reason: "header line without ':'" })?;
        headers.push((n.trim().to_ascii_lowercase(), v.trim().to_owned()));
    }
    let mut body = raw.get(end + 4..).unwrap_or_default().to_vec();
    if headers.iter().any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked")) {
        return Err(BsfError::Http { offset: end, reason: "chunked responses are not supported" });
    }
    if let Some(len) = headers.iter().find(|(n, _)| n == "content-length").and_then(|(_, v)| v.parse::<usize>().ok()) {
        if body.len() < len {
            return Err(BsfError::Http { offset: raw.len(), reason: "body shorter than Content-Length" });
        }
        body.truncate(len);
    }
    Ok(HttpResponse { status, headers, body })
}
