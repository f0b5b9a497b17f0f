//! One TCP connection of the endpoint (RFC 3261 §18): a task that connects (or was
//! accepted), frames what it reads with [`crate::stream::Framer`] and hands each message to
//! the endpoint, writes what the endpoint queues, answers keep-alive pings (RFC 5626 §3.5.1),
//! and closes after a period without traffic in either direction.
//!
//! A message that cannot be framed ends the connection (RFC 3261 §18.3: framing is lost);
//! a request without `Content-Length` is answered 400 first.
//!
//! What the endpoint queues for a connection waits in a bounded queue: a peer that stops
//! reading (or a connection that is still being opened) holds at most that many messages, and
//! one more is refused ([`Queued::Full`]) rather than buffered without end.
//!
//! Connections are opened from the endpoint's own SIP port (`SO_REUSEPORT`, shared with the
//! listener), as its UDP datagrams are sent: the peer sees the same source address on both
//! transports, a connection either side opened serves both directions (each side knows the
//! other by its listening address), and no ephemeral port is taken from the range that other
//! endpoints pick their port 0 from. Where the kernel refuses that 4-tuple (a previous
//! connection in TIME_WAIT), an ephemeral port is used instead.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use sipx_sip::{Message, ResponseBuilder, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;

use crate::stream::{Frame, FrameLimits, Framer, PONG};
use crate::Error;

/// The endpoint's name for a connection.
pub(crate) type ConnId = u64;

/// What a connection tells the endpoint.
#[derive(Debug)]
pub(crate) enum Report {
    /// A complete message arrived.
    Message {
        /// The connection.
        conn: ConnId,
        /// Its remote address.
        peer: SocketAddr,
        /// The message.
        message: Box<Message>,
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
    /// A connection the listener accepted.
    pub(crate) fn accepted(conn: ConnId, peer: SocketAddr, stream: TcpStream, setup: &Setup) -> Self {
        Self::spawn(conn, peer, Ok(stream), setup)
    }

    /// A connection to `peer` from `local` (the endpoint's address), opened in the
    /// background; what is sent meanwhile is queued. The connect attempt is bounded by the
    /// idle time too.
    pub(crate) fn connect(conn: ConnId, local: SocketAddr, peer: SocketAddr, setup: &Setup) -> Self {
        Self::spawn(conn, peer, Err(local), setup)
    }

    /// `stream`: the accepted stream, or the local address to connect from.
    fn spawn(conn: ConnId, peer: SocketAddr, stream: Result<TcpStream, SocketAddr>, setup: &Setup) -> Self {
        let (outgoing, queue) = mpsc::channel(setup.queue.max(1));
        let (reports, idle) = (setup.reports.clone(), setup.idle);
        let task = tokio::spawn(async move {
            let end = match open(peer, stream, idle).await {
                Ok(stream) => match serve(conn, peer, stream, queue, &reports, idle).await {
                    Ok(why) => {
                        tracing::debug!(%peer, why, "SIP TCP connection closed");
                        End::Orderly
                    }
                    Err(e) => {
                        tracing::warn!(%peer, error = %e, "SIP TCP connection closed on an error");
                        End::Failed
                    }
                },
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "SIP TCP connection could not be opened");
                    if e.kind() == std::io::ErrorKind::ConnectionRefused { End::Refused } else { End::Failed }
                }
            };
            // An endpoint that has stopped no longer cares.
            let _ = reports.send(Report::Closed { conn, peer, end });
        });
        Self { outgoing, _task: AbortOnDrop(task) }
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
    /// How many messages may wait to be written (at least one).
    pub(crate) queue: usize,
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

/// The accepted stream, or a new connection to `peer` within `timeout`: from `local` if
/// the kernel allows that 4-tuple, else from an ephemeral port.
async fn open(peer: SocketAddr, stream: Result<TcpStream, SocketAddr>, timeout: Duration) -> std::io::Result<TcpStream> {
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

/// Runs a connection until it ends: `Ok` with why for an orderly end, `Err` on a failure.
async fn serve(
    conn: ConnId,
    peer: SocketAddr,
    stream: TcpStream,
    mut queue: mpsc::Receiver<Bytes>,
    reports: &mpsc::UnboundedSender<Report>,
    idle: Duration,
) -> Result<&'static str, Error> {
    stream.set_nodelay(true)?;
    let (mut reader, mut writer) = stream.into_split();
    let mut framer = Framer::new(FrameLimits::default());
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        tokio::select! {
            read = reader.read(&mut buf) => {
                let n = read?;
                if n == 0 {
                    return Ok("closed by the peer");
                }
                framer.push(buf.get(..n).unwrap_or_default());
                loop {
                    match framer.next_frame() {
                        Ok(Some(Frame::Message(message))) => {
                            tracing::trace!(%peer, "SIP TCP message in");
                            if reports.send(Report::Message { conn, peer, message }).is_err() {
                                return Ok("the endpoint stopped");
                            }
                        }
                        Ok(Some(Frame::Ping)) => write(&mut writer, PONG, idle).await?,
                        Ok(Some(Frame::Pong)) => {}
                        Ok(None) => break,
                        Err(e) => {
                            if let Error::ContentLengthRequired { request: Some(request), .. } = &e
                                && let Some(status) = StatusCode::new(400)
                                && let Ok(response) = ResponseBuilder::to_request(request, status, "Missing Content-Length")
                            {
                                write(&mut writer, &Message::Response(response.build()).to_bytes(), idle).await?;
                            }
                            return Err(e);
                        }
                    }
                }
            }
            bytes = queue.recv() => match bytes {
                Some(bytes) => write(&mut writer, &bytes, idle).await?,
                None => return Ok("no longer used"),
            },
            () = tokio::time::sleep(idle) => return Ok("idle"),
        }
    }
}

/// Writes `bytes`, failing if the peer has not taken them within `limit` (a peer that stops
/// reading must not hold the connection, and what is queued for it, forever).
async fn write(writer: &mut OwnedWriteHalf, bytes: &[u8], limit: Duration) -> std::io::Result<()> {
    tokio::time::timeout(limit, writer.write_all(bytes))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TCP peer stopped reading"))?
}
