//! One TCP or TLS connection of the endpoint (RFC 3261 §18, §26.2): a task that connects (or
//! was accepted), for TLS runs the handshake within a bound ([`Setup::handshake`]), frames
//! what it reads with [`crate::stream::Framer`] and hands each message to the endpoint, writes
//! what the endpoint queues, answers keep-alive pings (RFC 5626 §3.5.1), and closes after a
//! period without traffic in either direction. TLS is the same task over a TLS stream: the
//! framing, queues, credits and idle close below apply to both alike.
//!
//! A TLS handshake that fails — the server's certificate not valid for the name the client
//! verifies (RFC 5922 §7), an unknown CA, an expired certificate, a missing client certificate
//! where one is required, plaintext sent to the TLS port — or does not finish in time fails
//! the connection, with a log line: its client transactions get a transport error, and
//! nothing is delivered (no SIP byte is read before the handshake completes).
//!
//! A message that cannot be framed ends the connection (RFC 3261 §18.3: framing is lost);
//! a request without `Content-Length` is answered 400 first.
//!
//! What the endpoint queues for a connection waits in a bounded queue: a peer that stops
//! reading (or a connection that is still being opened) holds at most that many messages, and
//! one more is refused ([`Queued::Full`]) rather than buffered without end.
//!
//! The other way is bounded too (read back-pressure): each message handed to the endpoint
//! carries one of the connection's read credits ([`Setup::read_messages`]), given back when
//! the endpoint has handled it. Without a credit the connection stops reading its socket, so
//! the peer's writes stall on TCP flow control, while other connections and UDP go on; the
//! message already framed waits for the next credit and is delivered in order. What the framer
//! holds is bounded by [`FrameLimits`] (one message, plus at most one read beyond it).
//!
//! Connections are opened from the endpoint's own SIP port (`SO_REUSEPORT`, shared with the
//! listener), as its UDP datagrams are sent: the peer sees the same source address on both
//! transports, a connection either side opened serves both directions (each side knows the
//! other by its listening address), and no ephemeral port is taken from the range that other
//! endpoints pick their port 0 from. Where the kernel refuses that 4-tuple (a previous
//! connection in TIME_WAIT), an ephemeral port is used instead.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rustls::pki_types::ServerName;
use sipx_sip::{Message, ResponseBuilder, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::stream::{Frame, FrameLimits, Framer, PONG};
use crate::Error;

/// The endpoint's name for a connection.
pub(crate) type ConnId = u64;

/// What a connection carries SIP over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    /// Plain TCP.
    Tcp,
    /// TLS over TCP (RFC 3261 §26.2).
    Tls,
}

impl Kind {
    /// The `Via` transport token (RFC 3261 §20.42), also used in logs.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Tcp => "TCP",
            Self::Tls => "TLS",
        }
    }
}

/// The TLS side of a connection being set up.
pub(crate) enum Handshake {
    /// An accepted connection: the server side, with the endpoint's certificate.
    Accept(TlsAcceptor),
    /// An opened connection: the client side, verifying the server's certificate against this
    /// name (RFC 5922 §7.2; also sent as SNI when it is a host name).
    Connect(TlsConnector, ServerName<'static>),
}

/// What a connection tells the endpoint.
#[derive(Debug)]
pub(crate) enum Report {
    /// A complete message arrived.
    Message {
        /// The connection.
        conn: ConnId,
        /// What it carries SIP over.
        kind: Kind,
        /// Its remote address.
        peer: SocketAddr,
        /// The message.
        message: Box<Message>,
        /// The connection's read credit the message holds; dropping it, once the message is
        /// handled, lets the connection read on.
        credit: OwnedSemaphorePermit,
    },
    /// The connection is gone.
    Closed {
        /// The connection.
        conn: ConnId,
        /// Its remote address.
        peer: SocketAddr,
        /// How it ended.
        end: End,
    },
}

/// How a connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// Closed by the peer, by idleness, or no longer wanted.
    Orderly,
    /// The peer refused the connection (a TCP reset: RFC 3261 §18.1.1 lets a request that is
    /// on TCP only for its size fall back to UDP), or the endpoint did not open it because it
    /// already holds its maximum of connections (handled the same way).
    Refused,
    /// It could not be opened, or failed on an I/O or framing error.
    Failed,
}

/// What became of bytes handed to [`Connection::send`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Queued {
    /// Queued for the peer.
    Yes,
    /// Not queued: the queue is full (the peer is not taking what is sent).
    Full,
    /// Not queued: the connection has ended.
    Ended,
}

/// A connection as the endpoint holds it; dropping it stops the task.
#[derive(Debug)]
pub(crate) struct Connection {
    peer: SocketAddr,
    kind: Kind,
    outgoing: mpsc::Sender<Bytes>,
    _task: AbortOnDrop,
}

/// Aborts a task when dropped.
#[derive(Debug)]
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Connection {
    /// A connection the listener accepted; with `tls`, the server side of a TLS handshake
    /// runs first.
    pub(crate) fn accepted(conn: ConnId, peer: SocketAddr, stream: TcpStream, tls: Option<TlsAcceptor>, setup: &Setup) -> Self {
        Self::spawn(conn, peer, Ok(stream), tls.map(Handshake::Accept), setup)
    }

    /// A connection to `peer` from `local` (the endpoint's address), opened in the
    /// background; what is sent meanwhile is queued. The connect attempt is bounded by the
    /// idle time too. With `tls`, the client side of a TLS handshake runs once connected,
    /// verifying the server as that name.
    pub(crate) fn connect(conn: ConnId, local: SocketAddr, peer: SocketAddr, tls: Option<(TlsConnector, ServerName<'static>)>, setup: &Setup) -> Self {
        Self::spawn(conn, peer, Err(local), tls.map(|(connector, name)| Handshake::Connect(connector, name)), setup)
    }

    /// `stream`: the accepted stream, or the local address to connect from.
    fn spawn(conn: ConnId, peer: SocketAddr, stream: Result<TcpStream, SocketAddr>, tls: Option<Handshake>, setup: &Setup) -> Self {
        let (outgoing, queue) = mpsc::channel(setup.queue.max(1));
        let kind = if tls.is_some() { Kind::Tls } else { Kind::Tcp };
        let setup = setup.clone();
        let task = tokio::spawn(async move {
            let transport = kind.name();
            let end = match open(peer, stream, setup.idle).await {
                Ok(stream) => {
                    let served = match tls {
                        None => Some(serve(conn, kind, peer, stream, queue, &setup).await),
                        Some(handshake) => match secure(peer, stream, handshake, &setup).await {
                            Some(stream) => Some(serve(conn, kind, peer, stream, queue, &setup).await),
                            None => None,
                        },
                    };
                    match served {
                        Some(Ok(why)) => {
                            tracing::debug!(%peer, transport, why, "SIP connection closed");
                            End::Orderly
                        }
                        Some(Err(e)) => {
                            tracing::warn!(%peer, transport, error = %e, "SIP connection closed on an error");
                            End::Failed
                        }
                        // The handshake failed; `secure` said why.
                        None => End::Failed,
                    }
                }
                Err(e) => {
                    tracing::warn!(%peer, transport, error = %e, "SIP connection could not be opened");
                    if e.kind() == std::io::ErrorKind::ConnectionRefused { End::Refused } else { End::Failed }
                }
            };
            // An endpoint that has stopped no longer cares.
            let _ = setup.reports.send(Report::Closed { conn, peer, end });
        });
        Self { peer, kind, outgoing, _task: AbortOnDrop(task) }
    }

    /// The remote address.
    pub(crate) fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// What the connection carries SIP over.
    pub(crate) fn kind(&self) -> Kind {
        self.kind
    }

    /// Queues bytes for the peer, unless its queue is full or the connection has ended.
    pub(crate) fn send(&self, bytes: Bytes) -> Queued {
        match self.outgoing.try_send(bytes) {
            Ok(()) => Queued::Yes,
            Err(mpsc::error::TrySendError::Full(_)) => Queued::Full,
            Err(mpsc::error::TrySendError::Closed(_)) => Queued::Ended,
        }
    }
}

/// What every connection of an endpoint shares.
#[derive(Clone, Debug)]
pub(crate) struct Setup {
    /// Where connections report.
    pub(crate) reports: mpsc::UnboundedSender<Report>,
    /// How long a connection may be idle, and a connect or a write may take.
    pub(crate) idle: Duration,
    /// How long a TLS handshake may take.
    pub(crate) handshake: Duration,
    /// How many messages may wait to be written (at least one).
    pub(crate) queue: usize,
    /// How many messages read may wait for the endpoint to handle them (at least one).
    pub(crate) read_messages: usize,
    /// Where the bounds count what they did.
    pub(crate) counters: Arc<Counters>,
}

/// How often the TCP bounds have acted, shared by the endpoint's handles, its task and its
/// connections (`Endpoint::tcp_stats` reads them).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Accepted connections closed at once: the endpoint held its maximum of connections.
    pub(crate) accepts_refused: AtomicU64,
    /// Accepted connections closed at once: the endpoint held its maximum from that IP.
    pub(crate) accepts_refused_per_peer: AtomicU64,
    /// Outgoing connections not opened: either maximum reached.
    pub(crate) connects_refused: AtomicU64,
    /// Connections failed because their outbound queue was full.
    pub(crate) queues_full: AtomicU64,
    /// Times a connection stopped reading: all its read credits were out.
    pub(crate) reads_paused: AtomicU64,
    /// Connections closed because their stream could not be framed (a header section or body
    /// over [`FrameLimits`], no or a bad `Content-Length`, a message the parser refused).
    pub(crate) streams_unframed: AtomicU64,
    /// TLS handshakes completed, accepted and opened.
    pub(crate) tls_connections: AtomicU64,
    /// TLS handshakes failed or timed out, accepted and opened.
    pub(crate) tls_handshakes_failed: AtomicU64,
}

impl Counters {
    /// Counts one more.
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The endpoint's TCP listener at `addr`, sharing its port with the endpoint's outgoing
/// connections (`SO_REUSEPORT`; a port held by any other socket is still refused).
pub(crate) fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = shared_port_socket(addr)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

fn shared_port_socket(addr: SocketAddr) -> std::io::Result<TcpSocket> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    Ok(socket)
}

/// [`connect`], with Nagle off (a SIP message is written whole).
async fn open(peer: SocketAddr, stream: Result<TcpStream, SocketAddr>, timeout: Duration) -> std::io::Result<TcpStream> {
    let stream = connect(peer, stream, timeout).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// The accepted stream, or a new connection to `peer` within `timeout`: from `local` if
/// the kernel allows that 4-tuple, else from an ephemeral port.
async fn connect(peer: SocketAddr, stream: Result<TcpStream, SocketAddr>, timeout: Duration) -> std::io::Result<TcpStream> {
    let local = match stream {
        Ok(s) => return Ok(s),
        Err(local) => local,
    };
    let connect = async {
        if local.is_ipv4() == peer.is_ipv4() {
            let from_local = async {
                let socket = shared_port_socket(local)?;
                socket.bind(local)?;
                socket.connect(peer).await
            };
            match from_local.await {
                Err(e) if matches!(e.kind(), std::io::ErrorKind::AddrInUse | std::io::ErrorKind::AddrNotAvailable) => {
                    tracing::debug!(%local, %peer, error = %e, "SIP TCP: connecting from an ephemeral port instead");
                }
                other => return other,
            }
        }
        TcpStream::connect(peer).await
    };
    tokio::time::timeout(timeout, connect)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TCP connect timed out"))?
}

/// The TLS handshake on `stream` within [`Setup::handshake`]: the TLS stream, or `None` (logged
/// and counted) when it fails or takes too long.
async fn secure(peer: SocketAddr, stream: TcpStream, handshake: Handshake, setup: &Setup) -> Option<tokio_rustls::TlsStream<TcpStream>> {
    let (side, verifying, result) = match handshake {
        Handshake::Accept(acceptor) => {
            let done = tokio::time::timeout(setup.handshake, acceptor.accept(stream)).await;
            ("server", None, done.map(|r| r.map(tokio_rustls::TlsStream::from)))
        }
        Handshake::Connect(connector, name) => {
            let verifying = Some(name.to_str().into_owned());
            let done = tokio::time::timeout(setup.handshake, connector.connect(name, stream)).await;
            ("client", verifying, done.map(|r| r.map(tokio_rustls::TlsStream::from)))
        }
    };
    let error = match result {
        Ok(Ok(stream)) => {
            Counters::bump(&setup.counters.tls_connections);
            tracing::debug!(%peer, side, verifying, "SIP TLS connection established");
            return Some(stream);
        }
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("no handshake within {} ms", setup.handshake.as_millis()),
    };
    Counters::bump(&setup.counters.tls_handshakes_failed);
    tracing::warn!(%peer, side, verifying, error, "SIP TLS handshake failed: connection closed");
    None
}

/// How long an orderly close may take to send its TLS `close_notify` (or TCP FIN).
const SHUTDOWN: Duration = Duration::from_secs(1);

/// Runs a connection until it ends: `Ok` with why for an orderly end — then closed in an orderly
/// way (over TLS, `close_notify`) —, `Err` on a failure.
async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    conn: ConnId,
    kind: Kind,
    peer: SocketAddr,
    mut stream: S,
    queue: mpsc::Receiver<Bytes>,
    setup: &Setup,
) -> Result<&'static str, Error> {
    let end = exchange(conn, kind, peer, &mut stream, queue, setup).await;
    if end.is_ok() {
        // The peer may be gone already: nothing to do if this fails.
        let _ = tokio::time::timeout(SHUTDOWN.min(setup.idle), stream.shutdown()).await;
    }
    end
}

/// Reads, frames and hands over messages, writes what is queued, until the connection ends.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    conn: ConnId,
    kind: Kind,
    peer: SocketAddr,
    stream: &mut S,
    mut queue: mpsc::Receiver<Bytes>,
    setup: &Setup,
) -> Result<&'static str, Error> {
    let idle = setup.idle;
    let mut framer = Framer::new(FrameLimits::default());
    let mut buf = vec![0u8; 16 * 1024];
    let credits = Arc::new(Semaphore::new(setup.read_messages.max(1)));
    // A credit taken for the next message, not yet spent.
    let mut credit: Option<OwnedSemaphorePermit> = None;
    let mut was_paused = false;
    loop {
        // Hand the endpoint what the framer holds, as far as the credits go.
        let paused = loop {
            let Some(c) = credit.take().or_else(|| Arc::clone(&credits).try_acquire_owned().ok()) else { break true };
            match framer.next_frame() {
                Ok(Some(Frame::Message(message))) => {
                    tracing::trace!(%peer, "SIP stream message in");
                    if setup.reports.send(Report::Message { conn, kind, peer, message, credit: c }).is_err() {
                        return Ok("the endpoint stopped");
                    }
                }
                Ok(Some(Frame::Ping)) => {
                    credit = Some(c);
                    write(stream, PONG, idle).await?;
                }
                Ok(Some(Frame::Pong)) => credit = Some(c),
                Ok(None) => {
                    credit = Some(c);
                    break false;
                }
                Err(e) => {
                    Counters::bump(&setup.counters.streams_unframed);
                    if let Error::ContentLengthRequired { request: Some(request), .. } = &e
                        && let Some(status) = StatusCode::new(400)
                        && let Ok(response) = ResponseBuilder::to_request(request, status, "Missing Content-Length")
                    {
                        write(stream, &Message::Response(response.build()).to_bytes(), idle).await?;
                    }
                    return Err(e);
                }
            }
        };
        if paused && !was_paused {
            Counters::bump(&setup.counters.reads_paused);
            tracing::debug!(%peer, pending = framer.pending(), "SIP stream reads paused: the endpoint is behind");
        }
        was_paused = paused;
        tokio::select! {
            read = stream.read(&mut buf), if !paused => {
                let n = match read {
                    Ok(n) => n,
                    // A TLS peer that closes without `close_notify` (an aborted process): an
                    // orderly end between messages — SIP framing, not TLS, tells whether a
                    // message was cut (RFC 3261 §18.3) —, a failure inside one.
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && framer.pending() == 0 => return Ok("closed by the peer without TLS close_notify"),
                    Err(e) => return Err(e.into()),
                };
                if n == 0 {
                    return Ok("closed by the peer");
                }
                framer.push(buf.get(..n).unwrap_or_default());
            }
            given = Arc::clone(&credits).acquire_owned(), if paused => match given {
                Ok(c) => credit = Some(c),
                // Never closed while the connection runs.
                Err(_) => return Ok("no longer used"),
            },
            bytes = queue.recv() => match bytes {
                Some(bytes) => write(stream, &bytes, idle).await?,
                None => return Ok("no longer used"),
            },
            () = tokio::time::sleep(idle) => return Ok("idle"),
        }
    }
}

/// Writes `bytes` (over TLS, as records flushed to the socket), failing if the peer has not
/// taken them within `limit` (a peer that stops reading must not hold the connection, and what
/// is queued for it, forever).
async fn write<S: AsyncWrite + Unpin>(stream: &mut S, bytes: &[u8], limit: Duration) -> std::io::Result<()> {
    let written = async {
        stream.write_all(bytes).await?;
        stream.flush().await
    };
    tokio::time::timeout(limit, written)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "stream peer stopped reading"))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use sipx_sip::HeaderName;

    /// A MESSAGE whose Call-ID is its place in the flood, about `body` bytes long.
    fn numbered(i: usize, body: usize) -> Vec<u8> {
        format!(
            "MESSAGE sip:b@b.example SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:5060;branch=z9hG4bKflood{i}\r\n\
Max-Forwards: 70\r\nFrom: <sip:a@a.example>;tag=a\r\nTo: <sip:b@b.example>\r\nCall-ID: {i}\r\n\
CSeq: 1 MESSAGE\r\nContent-Type: text/plain\r\nContent-Length: {body}\r\n\r\n{}",
            "m".repeat(body)
        )
        .into_bytes()
    }

    /// Read back-pressure: towards an endpoint that handles nothing, a connection hands over
    /// `read_messages` messages, then stops reading (counted once), so a peer flooding it sees
    /// its writes stall on TCP flow control; as the endpoint hands credits back, every message
    /// is delivered, in the order sent, and the flood completes.
    #[tokio::test]
    async fn a_connection_stops_reading_while_its_messages_wait_and_loses_none() {
        use std::sync::atomic::AtomicUsize;
        const FLOOD: usize = 1000;
        const CREDITS: usize = 4;
        // Small socket buffers (no autotuning): what the kernel holds stays well under the flood.
        let socket = TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(32 * 1024).expect("rcvbuf");
        socket.bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let listener = socket.listen(1).expect("listen");
        let client = TcpSocket::new_v4().expect("socket");
        client.set_send_buffer_size(32 * 1024).expect("sndbuf");
        let mut client = client.connect(listener.local_addr().expect("addr")).await.expect("connect");
        let (stream, peer) = listener.accept().await.expect("accept");

        let (reports, mut endpoint) = mpsc::unbounded_channel();
        let counters = Arc::new(Counters::default());
        let setup = Setup { reports, idle: Duration::from_secs(30), handshake: Duration::from_secs(10), queue: 4, read_messages: CREDITS, counters: Arc::clone(&counters) };
        let _connection = Connection::accepted(7, peer, stream, None, &setup);

        let written = Arc::new(AtomicUsize::new(0));
        let flood = tokio::spawn({
            let written = Arc::clone(&written);
            async move {
                for i in 0..FLOOD {
                    client.write_all(&numbered(i, 2000)).await.expect("write");
                    written.fetch_add(1, Ordering::Relaxed);
                }
                client
            }
        });

        // The endpoint handles nothing: the flood stalls well short of its end.
        let mut last = usize::MAX;
        loop {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let now = written.load(Ordering::Relaxed);
            if now == last {
                break;
            }
            last = now;
        }
        assert!(last < FLOOD / 2, "{last} of {FLOOD} messages written with the endpoint not reading");
        assert_eq!(counters.reads_paused.load(Ordering::Relaxed), 1);
        let mut held = Vec::new();
        while let Ok(report) = endpoint.try_recv() {
            held.push(report);
        }
        assert_eq!(held.len(), CREDITS, "messages handed over beyond the credits");

        // The endpoint catches up: every message, in order.
        let mut held = held.into_iter();
        for i in 0..FLOOD {
            let report = match held.next() {
                Some(r) => r,
                None => tokio::time::timeout(Duration::from_secs(10), endpoint.recv()).await.expect("in time").expect("alive"),
            };
            let Report::Message { conn, message, credit, .. } = report else { panic!("closed early") };
            assert_eq!(conn, 7);
            let call_id = message.headers().value(&HeaderName::CallId).map(|v| v.into_owned());
            assert_eq!(call_id, Some(i.to_string().into_bytes()));
            // Handled: the connection may read one more.
            drop(credit);
        }
        let _client = tokio::time::timeout(Duration::from_secs(10), flood).await.expect("flood done").expect("flood");
        assert_eq!(written.load(Ordering::Relaxed), FLOOD);
        assert!(counters.reads_paused.load(Ordering::Relaxed) >= 1);
        assert_eq!(counters.streams_unframed.load(Ordering::Relaxed), 0);
    }
}
