//! A CSCF as a tokio service: the proxy core on a UDP SIP endpoint.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use mediasec_sip::core::Timers;
use mediasec_sip::udp::Endpoint;

use crate::proxy::{Proxy, ProxyConfig, Stats};

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
        let task = tokio::spawn(async move {
            let mut proxy = Proxy::new(config, local);
            while let Some(event) = events.recv().await {
                for command in proxy.handle(event, std::time::Instant::now()) {
                    if endpoint.send(command).is_err() {
                        return;
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
