//! The SIP endpoint over UDP: a tokio task that owns one socket, runs the RFC 3261 §17
//! transaction layer of [`sipx_sip`] and its timers, and talks to the transaction user (a UA
//! or proxy core) through [`Command`]s in and [`Event`]s out.
//!
//! Where messages go (RFC 3261 §18): a client transaction's request and its retransmissions go
//! to the address the TU named; a server transaction's responses go back to the source address
//! of the request (symmetric response, RFC 3581 — what `rport` asks for, and exact on loopback).
//! A UAS 2xx to an INVITE is retransmitted by the endpoint at T1, 2·T1, … capped at T2 until
//! an ACK with the same `Call-ID` and CSeq number arrives or 64·T1 has passed (§13.3.1.4);
//! the transaction itself leaves that job to the TU (RFC 6026).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sipx_sip::transaction::Dispatch;
use sipx_sip::{
    parse_datagram, HeaderName, Limits, Message, Method, Output, Reliability, Request, Response, Timer, Timers,
    TransactionKey, TransactionLayer, TuEvent,
};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::Error;

/// What the transaction user asks the endpoint to do.
#[derive(Debug)]
pub enum Command {
    /// Send `request` in a new client transaction to `to` (its key is
    /// `TransactionKey::from_sent_request(&request)`).
    Request {
        /// The request, with this hop's `Via` on top.
        request: Request,
        /// The next hop.
        to: SocketAddr,
    },
    /// Answer a server transaction.
    Respond {
        /// The server transaction.
        key: TransactionKey,
        /// The response.
        response: Response,
    },
    /// A UAS 2xx to an INVITE: sent through the transaction, then retransmitted until the ACK
    /// (RFC 3261 §13.3.1.4).
    Respond2xx {
        /// The INVITE server transaction.
        key: TransactionKey,
        /// The 2xx.
        response: Response,
    },
    /// Send outside any transaction: the ACK for a 2xx, or what a proxy forwards statelessly
    /// (ACK for 2xx, a 2xx retransmission whose transaction is gone).
    Stateless {
        /// The message.
        message: Message,
        /// Where to.
        to: SocketAddr,
    },
}

/// What the endpoint tells the transaction user.
#[derive(Debug)]
pub enum Event {
    /// A new request created server transaction `key`.
    Request {
        /// The server transaction.
        key: TransactionKey,
        /// The request.
        request: Box<Request>,
        /// Where it came from.
        source: SocketAddr,
    },
    /// A response to our client transaction `key` (every 2xx of a forked INVITE, RFC 6026).
    Response {
        /// The client transaction.
        key: TransactionKey,
        /// The response.
        response: Box<Response>,
    },
    /// An ACK for a 2xx (its own transaction per RFC 3261 §17.1.1.3).
    Ack {
        /// The ACK.
        request: Box<Request>,
        /// Where it came from.
        source: SocketAddr,
    },
    /// A message that matched no transaction and created none (a response whose transaction
    /// is gone, a request without a usable `Via`).
    Stray {
        /// The message.
        message: Box<Message>,
        /// Where it came from.
        source: SocketAddr,
    },
    /// Client transaction `key` got no final answer within 64·T1, or could not be sent.
    Timeout {
        /// The client transaction.
        key: TransactionKey,
    },
    /// A datagram that does not parse as SIP (dropped; RFC 3261 §18.3 framing).
    Malformed {
        /// Where it came from.
        source: SocketAddr,
        /// The parser's reason.
        reason: String,
    },
}

/// A running endpoint. Cloning shares it; the task stops when the last clone is dropped.
#[derive(Clone, Debug)]
pub struct Endpoint {
    local: SocketAddr,
    commands: mpsc::UnboundedSender<Command>,
    _task: Arc<AbortOnDrop>,
}

#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Endpoint {
    /// Binds `addr` (port 0 picks one) and starts the endpoint task with the given timer
    /// constants. Events arrive on the returned receiver.
    pub async fn bind(addr: SocketAddr, timers: Timers) -> Result<(Self, mpsc::UnboundedReceiver<Event>), Error> {
        let socket = UdpSocket::bind(addr).await?;
        let local = socket.local_addr()?;
        let (commands, rx) = mpsc::unbounded_channel();
        let (events, events_rx) = mpsc::unbounded_channel();
        let driver = Driver {
            socket,
            layer: TransactionLayer::new(timers),
            timers,
            destinations: HashMap::new(),
            schedule: BinaryHeap::new(),
            armed: HashMap::new(),
            pending: HashMap::new(),
            next_id: 0,
            retransmits: HashMap::new(),
            events,
        };
        let task = tokio::spawn(driver.run(rx));
        Ok((Self { local, commands, _task: Arc::new(AbortOnDrop(task)) }, events_rx))
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Hands a command to the endpoint task.
    pub fn send(&self, command: Command) -> Result<(), Error> {
        self.commands.send(command).map_err(|_| Error::Stopped)
    }
}

/// What a scheduled timer belongs to.
#[derive(Clone, Debug)]
enum Due {
    Transaction(TransactionKey, Timer),
    Retransmit2xx(u64),
}

/// A 2xx being retransmitted until its ACK (§13.3.1.4).
struct Retransmit {
    bytes: Bytes,
    to: SocketAddr,
    call_id: Bytes,
    cseq: u32,
    interval: Duration,
    give_up: Instant,
}

struct Driver {
    socket: UdpSocket,
    layer: TransactionLayer,
    timers: Timers,
    /// Client transaction → next hop; server transaction → request source.
    destinations: HashMap<TransactionKey, SocketAddr>,
    schedule: BinaryHeap<Reverse<(Instant, u64)>>,
    /// Armed transaction timers → the schedule id that is current for them.
    armed: HashMap<(TransactionKey, Timer), u64>,
    /// Schedule id → what fires.
    pending: HashMap<u64, Due>,
    next_id: u64,
    retransmits: HashMap<u64, Retransmit>,
    events: mpsc::UnboundedSender<Event>,
}

impl Driver {
    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let mut buf = vec![0u8; 65_535];
        loop {
            let next = self.schedule.peek().map(|Reverse((at, _))| *at);
            tokio::select! {
                received = self.socket.recv_from(&mut buf) => match received {
                    Ok((n, source)) => {
                        let datagram = Bytes::copy_from_slice(buf.get(..n).unwrap_or_default());
                        self.on_datagram(datagram, source).await;
                    }
                    Err(e) => tracing::warn!(error = %e, "SIP UDP receive"),
                },
                command = commands.recv() => match command {
                    Some(c) => self.on_command(c).await,
                    None => return,
                },
                () = sleep_until(next) => self.fire_due().await,
            }
        }
    }

    async fn on_datagram(&mut self, datagram: Bytes, source: SocketAddr) {
        // Keep-alive CRLFs (RFC 5626 §4.4.1) and empty datagrams are not messages.
        if datagram.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        let message = match parse_datagram(datagram, &Limits::datagram()) {
            Ok(m) => m,
            Err(e) => {
                tracing::info!(%source, error = %e, "dropped a datagram that is not SIP");
                self.emit(Event::Malformed { source, reason: e.to_string() });
                return;
            }
        };
        tracing::debug!(%source, first_line = %first_line(&message), "SIP in");
        if let Message::Request(r) = &message
            && r.method == Method::Ack
        {
            self.ack_received(&r.headers);
        }
        match self.layer.receive(message, Reliability::Unreliable) {
            Dispatch::Created { key, outputs } => {
                self.destinations.insert(key.clone(), source);
                self.perform(&key, outputs, Some(source)).await;
            }
            Dispatch::Matched { key, outputs } => self.perform(&key, outputs, Some(source)).await,
            Dispatch::Unmatched(message) => match *message {
                Message::Request(r) if r.method == Method::Ack => {
                    self.emit(Event::Ack { request: Box::new(r), source });
                }
                other => self.emit(Event::Stray { message: Box::new(other), source }),
            },
        }
    }

    async fn on_command(&mut self, command: Command) {
        match command {
            Command::Request { request, to } => match self.layer.send_request(request, Reliability::Unreliable) {
                Some((key, outputs)) => {
                    self.destinations.insert(key.clone(), to);
                    self.perform(&key, outputs, None).await;
                }
                None => tracing::warn!(%to, "request without a usable Via not sent"),
            },
            Command::Respond { key, response } => {
                let outputs = self.layer.send_response(&key, response);
                self.perform(&key, outputs, None).await;
            }
            Command::Respond2xx { key, response } => {
                let to = self.destinations.get(&key).copied();
                let call_id = response.headers.get(&HeaderName::CallId).map(|h| Bytes::copy_from_slice(h.value().trim_ascii()));
                let cseq = response.headers.typed::<sipx_sip::CSeq>().and_then(Result::ok).map(|c| c.sequence);
                let bytes = Message::Response(response.clone()).to_bytes();
                let outputs = self.layer.send_response(&key, response);
                self.perform(&key, outputs, None).await;
                if let (Some(to), Some(call_id), Some(cseq)) = (to, call_id, cseq) {
                    let now = Instant::now();
                    let id = self.arm(now + self.timers.t1, None);
                    self.pending.insert(id, Due::Retransmit2xx(id));
                    let give_up = now + self.timers.timeout();
                    self.retransmits.insert(id, Retransmit { bytes, to, call_id, cseq, interval: self.timers.t1, give_up });
                }
            }
            Command::Stateless { message, to } => self.transmit(&message.to_bytes(), to, &message).await,
        }
    }

    /// Performs a transaction's outputs in order.
    async fn perform(&mut self, key: &TransactionKey, outputs: Vec<Output>, source: Option<SocketAddr>) {
        for output in outputs {
            match output {
                Output::Send(message) => match self.destinations.get(key).copied() {
                    Some(to) => self.transmit(&message.to_bytes(), to, &message).await,
                    None => tracing::warn!(?key, "no destination for a transaction message"),
                },
                Output::SetTimer { timer, after } => {
                    let id = self.arm(Instant::now() + after, Some((key.clone(), timer)));
                    self.pending.insert(id, Due::Transaction(key.clone(), timer));
                }
                Output::ClearTimer(timer) => {
                    if let Some(id) = self.armed.remove(&(key.clone(), timer)) {
                        self.pending.remove(&id);
                    }
                }
                Output::ToTu(event) => self.deliver(key, *event, source),
                Output::Terminated(_) => {
                    self.destinations.remove(key);
                    for timer in Timer::ALL {
                        if let Some(id) = self.armed.remove(&(key.clone(), timer)) {
                            self.pending.remove(&id);
                        }
                    }
                }
                _ => tracing::warn!("unknown transaction output ignored"),
            }
        }
    }

    fn deliver(&mut self, key: &TransactionKey, event: TuEvent, source: Option<SocketAddr>) {
        let source = source.or_else(|| self.destinations.get(key).copied());
        let event = match (event, source) {
            (TuEvent::Request(request), Some(source)) => Event::Request { key: key.clone(), request, source },
            (TuEvent::Response(response), _) => Event::Response { key: key.clone(), response },
            (TuEvent::Ack(request), Some(source)) => Event::Ack { request, source },
            (TuEvent::Timeout | TuEvent::TransportError, _) => Event::Timeout { key: key.clone() },
            _ => return,
        };
        self.emit(event);
    }

    fn arm(&mut self, at: Instant, transaction: Option<(TransactionKey, Timer)>) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.schedule.push(Reverse((at, id)));
        if let Some(t) = transaction
            && let Some(old) = self.armed.insert(t, id)
        {
            self.pending.remove(&old);
        }
        id
    }

    async fn fire_due(&mut self) {
        let now = Instant::now();
        while let Some(Reverse((at, id))) = self.schedule.peek().copied() {
            if at > now {
                break;
            }
            self.schedule.pop();
            match self.pending.remove(&id) {
                Some(Due::Transaction(key, timer)) => {
                    self.armed.remove(&(key.clone(), timer));
                    let outputs = self.layer.on_timer(&key, timer);
                    self.perform(&key, outputs, None).await;
                }
                Some(Due::Retransmit2xx(id)) => self.retransmit_2xx(id, now).await,
                None => {}
            }
        }
    }

    async fn retransmit_2xx(&mut self, id: u64, now: Instant) {
        let Some(r) = self.retransmits.remove(&id) else { return };
        if now >= r.give_up {
            tracing::info!(to = %r.to, "no ACK for a 2xx within 64*T1");
            return;
        }
        if let Err(e) = self.socket.send_to(&r.bytes, r.to).await {
            tracing::warn!(error = %e, "2xx retransmission");
        }
        let interval = (r.interval * 2).min(self.timers.t2);
        let next = self.arm(now + r.interval, None);
        self.pending.insert(next, Due::Retransmit2xx(next));
        self.retransmits.insert(next, Retransmit { interval, ..r });
    }

    /// An ACK stops the retransmission of the 2xx with its Call-ID and CSeq number.
    fn ack_received(&mut self, headers: &sipx_sip::Headers) {
        let call_id = headers.get(&HeaderName::CallId).map(|h| Bytes::copy_from_slice(h.value().trim_ascii()));
        let cseq = headers.typed::<sipx_sip::CSeq>().and_then(Result::ok).map(|c| c.sequence);
        self.retransmits.retain(|_, r| Some(&r.call_id) != call_id.as_ref() || Some(r.cseq) != cseq);
    }

    async fn transmit(&self, bytes: &[u8], to: SocketAddr, message: &Message) {
        tracing::debug!(%to, first_line = %first_line(message), "SIP out");
        if let Err(e) = self.socket.send_to(bytes, to).await {
            tracing::warn!(%to, error = %e, "SIP UDP send");
        }
    }

    fn emit(&self, event: Event) {
        // A TU that has gone away no longer wants events; nothing else to do.
        let _ = self.events.send(event);
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The start line of a message, for logs.
pub fn first_line(message: &Message) -> String {
    match message {
        Message::Request(r) => format!("{} {}", r.method, String::from_utf8_lossy(&r.uri.to_bytes())),
        Message::Response(r) => format!("{} {}", r.status.code(), String::from_utf8_lossy(&r.reason)),
    }
}
