//! A CSCF as a tokio service: the proxy core on a UDP SIP endpoint.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use mediasec_sip::core::Timers;
use mediasec_sip::udp::Endpoint;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::proxy::{NgRequest, Proxy, ProxyConfig, Stats};

/// An ng reply (or why there is none) for the command with this id.
type NgReply = (u64, Result<Vec<u8>, String>);

/// How long one ng attempt waits for its reply, and how many attempts (same cookie: the AGW
/// answers a retransmission from its cache without executing the command again).
const NG_WAIT: std::time::Duration = std::time::Duration::from_millis(500);
const NG_ATTEMPTS: u32 = 4;

/// The IMS-ALG's ng client (rtpengine ng framing, `cookie SP bencode`, over UDP): sends the
/// proxy's commands to the AGW one at a time, in order (an answer never overtakes its offer),
/// and returns each reply or the reason there is none.
async fn ng_worker(agw: SocketAddr, replies: mpsc::UnboundedSender<NgReply>) -> std::io::Result<mpsc::UnboundedSender<NgRequest>> {
    let any: SocketAddr = if agw.is_ipv4() { (std::net::Ipv4Addr::UNSPECIFIED, 0).into() } else { (std::net::Ipv6Addr::UNSPECIFIED, 0).into() };
    let socket = UdpSocket::bind(any).await?;
    let (tx, mut rx) = mpsc::unbounded_channel::<NgRequest>();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Some(request) = rx.recv().await {
            let cookie = format!("{:016x}", rand::random::<u64>());
            let mut datagram = Vec::with_capacity(cookie.len() + 1 + request.command.len());
            datagram.extend_from_slice(cookie.as_bytes());
            datagram.push(b' ');
            datagram.extend_from_slice(&request.command);
            let mut result = Err(format!("no reply from the IMS-AGW at {agw} after {NG_ATTEMPTS} attempts"));
            'attempts: for _ in 0..NG_ATTEMPTS {
                if let Err(e) = socket.send_to(&datagram, agw).await {
                    result = Err(format!("ng send to {agw}: {e}"));
                    break;
                }
                let deadline = tokio::time::Instant::now() + NG_WAIT;
                while let Ok(Ok((n, _))) = tokio::time::timeout_at(deadline, socket.recv_from(&mut buf)).await {
                    if let Ok((c, message)) = mediasec_agw::ng::split_cookie(buf.get(..n).unwrap_or_default())
                        && c == cookie.as_bytes()
                    {
                        result = Ok(message.to_vec());
                        break 'attempts;
                    }
                }
            }
            if replies.send((request.id, result)).is_err() {
                return;
            }
        }
    });
    Ok(tx)
}

/// A running CSCF; dropping it stops it.
pub struct Cscf {
    local: SocketAddr,
    stats: Arc<Mutex<Stats>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Cscf {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Cscf {
    /// Binds `addr` and starts serving.
    pub async fn start(config: ProxyConfig, addr: SocketAddr, timers: Timers) -> Result<Self, mediasec_sip::Error> {
        let (endpoint, mut events) = Endpoint::bind(addr, timers).await?;
        let local = endpoint.local_addr();
        let stats = Arc::new(Mutex::new(Stats::default()));
        let shared = Arc::clone(&stats);
        let (ng_tx, mut ng_replies) = mpsc::unbounded_channel();
        let ng_queue = match config.agw_ng {
            Some(agw) => Some(ng_worker(agw, ng_tx).await?),
            None => None,
        };
        let task = tokio::spawn(async move {
            let mut proxy = Proxy::new(config, local);
            loop {
                let commands = tokio::select! {
                    event = events.recv() => match event {
                        Some(event) => proxy.handle(event, std::time::Instant::now()),
                        None => return,
                    },
                    Some((id, reply)) = ng_replies.recv() => proxy.ng_result(id, reply, std::time::Instant::now()),
                };
                for command in commands {
                    if endpoint.send(command).is_err() {
                        return;
                    }
                }
                for request in proxy.take_ng() {
                    if let Some(queue) = &ng_queue {
                        let _ = queue.send(request);
                    }
                }
                if let Ok(mut s) = shared.lock() {
                    *s = proxy.stats.clone();
                }
            }
        });
        Ok(Self { local, stats, task })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The proxy's counters.
    pub fn stats(&self) -> Stats {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }
}
