//! One TCP connection of the endpoint (RFC 3261 §18): a task that connects (or was
//! accepted), frames what it reads with [`crate::stream::Framer`] and hands each message to
//! the endpoint, writes what the endpoint queues, answers keep-alive pings (RFC 5626 §3.5.1),
//! and closes after a period without traffic in either direction.
//!
//! A message that cannot be framed ends the connection (RFC 3261 §18.3: framing is lost);
//! a request without `Content-Length` is answered 400 first.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use sipx_sip::{Message, ResponseBuilder, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
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
    /// The connection is gone; `failed` when it ended on an error (connect, I/O or framing)
    /// rather than by the peer closing or by idleness.
    Closed {
        /// The connection.
        conn: ConnId,
        /// Its remote address.
        peer: SocketAddr,
        /// Whether it failed.
        failed: bool,
    },
}

/// A connection as the endpoint holds it; dropping it stops the task.
#[derive(Debug)]
pub(crate) struct Connection {
    outgoing: mpsc::UnboundedSender<Bytes>,
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
    pub(crate) fn accepted(conn: ConnId, peer: SocketAddr, stream: TcpStream, reports: mpsc::UnboundedSender<Report>, idle: Duration) -> Self {
        Self::spawn(conn, peer, Some(stream), reports, idle)
    }

    /// A connection to `peer`, opened in the background; what is sent meanwhile is queued.
    /// The connect attempt is bounded by `idle` too.
    pub(crate) fn connect(conn: ConnId, peer: SocketAddr, reports: mpsc::UnboundedSender<Report>, idle: Duration) -> Self {
        Self::spawn(conn, peer, None, reports, idle)
    }

    fn spawn(conn: ConnId, peer: SocketAddr, stream: Option<TcpStream>, reports: mpsc::UnboundedSender<Report>, idle: Duration) -> Self {
        let (outgoing, queue) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let failed = match serve(conn, peer, stream, queue, &reports, idle).await {
                Ok(why) => {
                    tracing::debug!(%peer, why, "SIP TCP connection closed");
                    false
                }
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "SIP TCP connection closed on an error");
                    true
                }
            };
            // An endpoint that has stopped no longer cares.
            let _ = reports.send(Report::Closed { conn, peer, failed });
        });
        Self { outgoing, _task: AbortOnDrop(task) }
    }

    /// Queues bytes for the peer; false if the connection has ended.
    pub(crate) fn send(&self, bytes: Bytes) -> bool {
        self.outgoing.send(bytes).is_ok()
    }
}

/// Runs a connection until it ends: `Ok` with why for an orderly end, `Err` on a failure.
async fn serve(
    conn: ConnId,
    peer: SocketAddr,
    stream: Option<TcpStream>,
    mut queue: mpsc::UnboundedReceiver<Bytes>,
    reports: &mpsc::UnboundedSender<Report>,
    idle: Duration,
) -> Result<&'static str, Error> {
    let stream = match stream {
        Some(s) => s,
        None => tokio::time::timeout(idle, TcpStream::connect(peer))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TCP connect timed out"))??,
    };
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
                        Ok(Some(Frame::Ping)) => writer.write_all(PONG).await?,
                        Ok(Some(Frame::Pong)) => {}
                        Ok(None) => break,
                        Err(e) => {
                            if let Error::ContentLengthRequired { request: Some(request), .. } = &e
                                && let Some(status) = StatusCode::new(400)
                                && let Ok(response) = ResponseBuilder::to_request(request, status, "Missing Content-Length")
                            {
                                writer.write_all(&Message::Response(response.build()).to_bytes()).await?;
                            }
                            return Err(e);
                        }
                    }
                }
            }
            bytes = queue.recv() => match bytes {
                Some(bytes) => writer.write_all(&bytes).await?,
                None => return Ok("no longer used"),
            },
            () = tokio::time::sleep(idle) => return Ok("idle"),
        }
    }
}
