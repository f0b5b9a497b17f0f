//! A small authoritative DNS responder on 127.0.0.1 over UDP (RFC 1035 §4), for tests of SIP
//! server location (RFC 3263): it answers from a fixed zone of NAPTR, SRV, A and AAAA records,
//! NXDOMAIN for a name it has no record of, and an empty answer for a name it knows with no
//! record of the asked type; it never answers queries for the names made [`Zone::silent`] (a
//! name server that is down or black-holed). Messages are encoded and decoded with `hickory-proto`. It runs on
//! a thread of its own and stops when dropped.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, NAPTR, SRV};
use hickory_proto::rr::{Name, RData, Record};

/// The records to serve: (owner name, data), names absolute or not (a final dot is added).
#[derive(Clone, Debug, Default)]
pub struct Zone {
    records: Vec<(Name, RData)>,
    silent: Vec<Name>,
}

impl Zone {
    /// An empty zone.
    pub fn new() -> Self {
        Self::default()
    }

    fn name(name: &str) -> Name {
        let absolute = if name.ends_with('.') { name.to_owned() } else { format!("{name}.") };
        Name::from_ascii(absolute).expect("a DNS name")
    }

    /// Adds a NAPTR record (RFC 3403) with an `s` flag, no regexp.
    pub fn naptr(mut self, owner: &str, order: u16, preference: u16, service: &str, replacement: &str) -> Self {
        let data = NAPTR::new(order, preference, b"s".to_vec().into(), service.as_bytes().to_vec().into(), Vec::new().into(), Self::name(replacement));
        self.records.push((Self::name(owner), RData::NAPTR(data)));
        self
    }

    /// Adds an SRV record (RFC 2782).
    pub fn srv(mut self, owner: &str, priority: u16, weight: u16, port: u16, target: &str) -> Self {
        self.records.push((Self::name(owner), RData::SRV(SRV::new(priority, weight, port, Self::name(target)))));
        self
    }

    /// Adds an A record.
    pub fn a(mut self, owner: &str, ip: Ipv4Addr) -> Self {
        self.records.push((Self::name(owner), RData::A(A(ip))));
        self
    }

    /// Adds an AAAA record.
    pub fn aaaa(mut self, owner: &str, ip: Ipv6Addr) -> Self {
        self.records.push((Self::name(owner), RData::AAAA(AAAA(ip))));
        self
    }

    /// Answers no query for `name`, of any type: the resolver's lookups of it only end by its
    /// own timeouts.
    pub fn silent(mut self, name: &str) -> Self {
        self.silent.push(Self::name(name).to_lowercase());
        self
    }

    /// The response to `query` bytes, `None` for bytes that are not a DNS query or ask about a
    /// silent name.
    fn answer(&self, query: &[u8]) -> Option<Vec<u8>> {
        let query = Message::from_vec(query).ok()?;
        let question = query.queries().first()?.clone();
        if self.silent.contains(&question.name().to_lowercase()) {
            return None;
        }
        let mut response = Message::new();
        response.set_id(query.id()).set_message_type(MessageType::Response).set_op_code(query.op_code()).set_authoritative(true);
        response.set_recursion_desired(query.recursion_desired());
        let name = question.name().to_lowercase();
        let known: Vec<&(Name, RData)> = self.records.iter().filter(|(owner, _)| owner.to_lowercase() == name).collect();
        if known.is_empty() {
            response.set_response_code(ResponseCode::NXDomain);
        }
        for (owner, data) in known.into_iter().filter(|(_, d)| d.record_type() == question.query_type()) {
            response.add_answer(Record::from_rdata(owner.clone(), 60, data.clone()));
        }
        response.add_query(question);
        response.to_vec().ok()
    }
}

/// The responder: a UDP socket on 127.0.0.1 answering from a [`Zone`].
pub struct DnsServer {
    addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    stop: Arc<AtomicBool>,
    queries: Arc<AtomicUsize>,
}

impl DnsServer {
    /// Binds 127.0.0.1 on a free port and serves `zone` until dropped.
    pub fn start(zone: Zone) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind the DNS responder");
        socket.set_read_timeout(Some(Duration::from_millis(50))).expect("read timeout");
        let addr = socket.local_addr().expect("address");
        let stop = Arc::new(AtomicBool::new(false));
        let queries = Arc::new(AtomicUsize::new(0));
        let zone = Arc::new(Mutex::new(zone));
        let (halt, count, served) = (Arc::clone(&stop), Arc::clone(&queries), Arc::clone(&zone));
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !halt.load(Ordering::Relaxed) {
                let Ok((n, from)) = socket.recv_from(&mut buf) else { continue };
                count.fetch_add(1, Ordering::Relaxed);
                let reply = served.lock().ok().and_then(|zone| buf.get(..n).and_then(|q| zone.answer(q)));
                if let Some(reply) = reply {
                    let _ = socket.send_to(&reply, from);
                }
            }
        });
        Self { addr, zone, stop, queries }
    }

    /// Serves `zone` from now on (for records that name servers started after this one).
    pub fn set_zone(&self, zone: Zone) {
        if let Ok(mut served) = self.zone.lock() {
            *served = zone;
        }
    }

    /// Where it answers.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many datagrams it has received.
    pub fn queries(&self) -> usize {
        self.queries.load(Ordering::Relaxed)
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
