//! Locating a SIP server by DNS (RFC 3263 §4): from a SIP or SIPS URI to an ordered list of
//! (transport, address) targets to try in turn.
//!
//! The selection is sans-IO ([`start`], [`naptr_services`], [`srv_services`], [`order_srv`]):
//! records in, targets out. [`locate`] runs it over a [`Resolve`]r, the async lookups;
//! [`DnsResolver`] is the one over DNS ([`hickory_resolver`], which caches answers for their
//! TTL).
//!
//! What the URI fixes first (§4.1, §4.2):
//! - a numeric host (IP literal): no DNS; the transport from `;transport=`, else TLS for
//!   `sips:` and UDP for `sip:`; the port from the URI, else the transport's default;
//! - a host name with a port: A/AAAA of the name only, same transport rule;
//! - a host name with `;transport=` (or `sips:`, which means TLS): SRV of that transport
//!   (`_sip._udp`, `_sip._tcp`, `_sips._tcp`), then A/AAAA of each SRV target; no SRV: A/AAAA of
//!   the name with the transport's default port;
//! - else NAPTR of the name: records with flag `s` and service `SIP+D2U`, `SIP+D2T` or
//!   `SIPS+D2T` (only `SIPS+D2T` for a `sips:` URI), by order then preference, each giving an
//!   SRV name; no usable NAPTR: SRV of `_sip._udp`, `_sip._tcp` and `_sips._tcp` (for `sips:`
//!   `_sips._tcp` only), in that order; no SRV either: A/AAAA of the name, UDP (TLS for `sips:`)
//!   on the default port.
//!
//! SRV records are ordered by RFC 2782: lowest priority first, within a priority by weighted
//! random selection. A single SRV record with target `.` says the service is not offered
//! there. Transports other than UDP, TCP and TLS (SCTP, WebSocket, QUIC) are not located.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;

use hickory_resolver::config::{NameServerConfigGroup, ResolveHosts, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::TokioResolver;
use rand::SeedableRng as _;
use sipx_sip::{Host, Uri};

/// A transport the endpoint speaks (RFC 3261 §18).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    /// UDP.
    Udp,
    /// TCP.
    Tcp,
    /// TLS over TCP.
    Tls,
}

impl Transport {
    /// The default port (RFC 3261 §19.1.2): 5061 for TLS, else 5060.
    pub fn default_port(self) -> u16 {
        match self {
            Self::Tls => 5061,
            Self::Udp | Self::Tcp => 5060,
        }
    }

    /// The NAPTR service field that names it (RFC 3263 §4.1).
    pub fn naptr_service(self) -> &'static str {
        match self {
            Self::Udp => "SIP+D2U",
            Self::Tcp => "SIP+D2T",
            Self::Tls => "SIPS+D2T",
        }
    }

    /// The SRV prefix of its service (RFC 3263 §4.1).
    pub fn srv_prefix(self) -> &'static str {
        match self {
            Self::Udp => "_sip._udp.",
            Self::Tcp => "_sip._tcp.",
            Self::Tls => "_sips._tcp.",
        }
    }
}

/// One place to send a request: how and where.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    /// The transport.
    pub transport: Transport,
    /// The address and port.
    pub addr: SocketAddr,
}

/// A NAPTR record (RFC 3403 §4.1), as far as RFC 3263 uses it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Naptr {
    /// ORDER.
    pub order: u16,
    /// PREFERENCE.
    pub preference: u16,
    /// FLAGS (`s` for an SRV lookup next).
    pub flags: String,
    /// SERVICES (`SIP+D2U`, …).
    pub services: String,
    /// REPLACEMENT: the next name to look up.
    pub replacement: String,
}

/// An SRV record (RFC 2782).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Srv {
    /// Priority: lowest first.
    pub priority: u16,
    /// Weight within a priority.
    pub weight: u16,
    /// Port.
    pub port: u16,
    /// Target host name (`.`: no service here).
    pub target: String,
}

/// Why a URI could not be located.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LocateError {
    /// Not a `sip:` or `sips:` URI, or no host.
    #[error("not a SIP URI with a host")]
    NotSip,
    /// `;transport=` names a transport this stack does not speak, or `sips:` with UDP.
    #[error("the URI names a transport this stack does not locate: {0}")]
    Transport(String),
    /// The lookups gave no address (NXDOMAIN, no records, or the server failed: the last
    /// error is kept).
    #[error("{name} resolves to no address{}", .cause.as_ref().map(|c| format!(" ({c})")).unwrap_or_default())]
    NoAddress {
        /// The URI's host.
        name: String,
        /// The last lookup error, when one failed rather than found nothing.
        cause: Option<String>,
    },
}

/// What the URI decides before any lookup (RFC 3263 §4.1, §4.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Start {
    /// A numeric host: the one target, no DNS.
    Done(Target),
    /// A name with a port: its A/AAAA records, on that port and transport.
    Address {
        /// Host name.
        name: String,
        /// Port.
        port: u16,
        /// Transport.
        transport: Transport,
    },
    /// A name with a transport fixed by the URI: SRV of that transport.
    Srv {
        /// Host name.
        name: String,
        /// Transport.
        transport: Transport,
    },
    /// A name only: NAPTR, limited to these transports (all three for `sip:`, TLS for `sips:`).
    Naptr {
        /// Host name.
        name: String,
        /// Transports allowed.
        allowed: Vec<Transport>,
    },
}

/// What `uri` decides before any lookup.
pub fn start(uri: &Uri) -> Result<Start, LocateError> {
    if !uri.scheme().is_sip() {
        return Err(LocateError::NotSip);
    }
    let secure = uri.scheme().is_secure();
    let explicit = match uri.transport() {
        None => None,
        Some(t) => Some(match t.to_ascii_lowercase().as_slice() {
            b"udp" if !secure => Transport::Udp,
            // `sips:` over TCP means TLS (RFC 3261 §26.2.2).
            b"tcp" if secure => Transport::Tls,
            b"tcp" => Transport::Tcp,
            b"tls" => Transport::Tls,
            other => return Err(LocateError::Transport(String::from_utf8_lossy(other).into_owned())),
        }),
    };
    let fixed = explicit.or(secure.then_some(Transport::Tls));
    let name = match uri.host().ok_or(LocateError::NotSip)? {
        Host::Ip(ip) => {
            // §4.1: a numeric host without a transport is UDP for `sip:`, TLS for `sips:`.
            let transport = fixed.unwrap_or(Transport::Udp);
            return Ok(Start::Done(Target { transport, addr: SocketAddr::new(*ip, uri.port().unwrap_or_else(|| transport.default_port())) }));
        }
        Host::Name(name) => String::from_utf8_lossy(name.as_bytes()).into_owned(),
    };
    Ok(match (uri.port(), explicit) {
        (Some(port), _) => Start::Address { name, port, transport: fixed.unwrap_or(Transport::Udp) },
        (None, Some(transport)) => Start::Srv { name, transport },
        (None, None) => Start::Naptr { name, allowed: if secure { vec![Transport::Tls] } else { vec![Transport::Udp, Transport::Tcp, Transport::Tls] } },
    })
}

/// The SRV names to query, with their transports, from NAPTR records (RFC 3263 §4.1): those
/// with flag `s` and a service among `allowed`, by order, then preference.
pub fn naptr_services(records: &[Naptr], allowed: &[Transport]) -> Vec<(Transport, String)> {
    let mut usable: Vec<(&Naptr, Transport)> = records
        .iter()
        .filter(|r| r.flags.eq_ignore_ascii_case("s"))
        .filter_map(|r| allowed.iter().find(|t| r.services.eq_ignore_ascii_case(t.naptr_service())).map(|t| (r, *t)))
        .collect();
    usable.sort_by_key(|(r, _)| (r.order, r.preference));
    usable.into_iter().map(|(r, t)| (t, r.replacement.clone())).collect()
}

/// The SRV names to query when there is no usable NAPTR record (RFC 3263 §4.1): one per
/// allowed transport, UDP, TCP, then TLS.
pub fn srv_services(name: &str, allowed: &[Transport]) -> Vec<(Transport, String)> {
    allowed.iter().map(|t| (*t, format!("{}{name}", t.srv_prefix()))).collect()
}

/// SRV records in the order to try them (RFC 2782): by priority, lowest first; within a
/// priority, each next one picked at random with a chance proportional to its weight (zero
/// weights first in the running sum, so they are picked only rarely unless all are zero).
/// Empty when the records say the service is not offered (a single target `.`).
pub fn order_srv<R: rand::Rng + ?Sized>(records: &[Srv], rng: &mut R) -> Vec<Srv> {
    if let [only] = records
        && (only.target == "." || only.target.is_empty())
    {
        return Vec::new();
    }
    let mut priorities: Vec<u16> = records.iter().map(|r| r.priority).collect();
    priorities.sort_unstable();
    priorities.dedup();
    let mut ordered = Vec::with_capacity(records.len());
    for priority in priorities {
        // Zero weights first (RFC 2782 "Usage rules").
        let mut left: Vec<&Srv> = records.iter().filter(|r| r.priority == priority).collect();
        left.sort_by_key(|r| r.weight != 0);
        while !left.is_empty() {
            let total: u32 = left.iter().map(|r| u32::from(r.weight)).sum();
            let pick = rng.random_range(0..=total);
            let mut sum = 0u32;
            let at = left
                .iter()
                .position(|r| {
                    sum += u32::from(r.weight);
                    sum >= pick
                })
                .unwrap_or(0);
            ordered.push(left.remove(at).clone());
        }
    }
    ordered
}

/// A boxed future of a lookup.
pub type Lookup<'a, T> = Pin<Box<dyn Future<Output = Result<Vec<T>, String>> + Send + 'a>>;

/// The DNS lookups RFC 3263 needs. Each gives the records found (none for NXDOMAIN or an
/// empty answer), or the error of a failed lookup. Names are absolute (no search list).
pub trait Resolve: Send + Sync {
    /// NAPTR records of `name`.
    fn naptr<'a>(&'a self, name: &'a str) -> Lookup<'a, Naptr>;
    /// SRV records of `name`.
    fn srv<'a>(&'a self, name: &'a str) -> Lookup<'a, Srv>;
    /// A and AAAA records of `name` (IPv4 first).
    fn ips<'a>(&'a self, name: &'a str) -> Lookup<'a, IpAddr>;
}

impl std::fmt::Debug for dyn Resolve {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Resolve")
    }
}

/// Locates `uri` (RFC 3263 §4): the targets to try, in order, each at most once. Lookups that
/// fail are skipped as if empty (the next record or step is tried); an error is returned only
/// when no target is found. The weighted random order within an SRV priority (RFC 2782) is
/// drawn from the thread's generator: [`locate_with`] to choose it.
pub async fn locate<R: Resolve + ?Sized>(resolver: &R, uri: &Uri) -> Result<Vec<Target>, LocateError> {
    locate_with(resolver, uri, &mut rand::rngs::StdRng::from_rng(&mut rand::rng())).await
}

/// [`locate`] with the SRV weighted order drawn from `rng`: a generator seeded from the
/// request (its `Call-ID`) gives every retransmission of one stateless request the same
/// target, as RFC 3263 §4.4 asks of stateless proxies (with the same records).
pub async fn locate_with<R: Resolve + ?Sized, G: rand::Rng + Send>(resolver: &R, uri: &Uri, rng: &mut G) -> Result<Vec<Target>, LocateError> {
    let mut cause = None;
    let (name, services, fallback) = match start(uri)? {
        Start::Done(target) => return Ok(vec![target]),
        Start::Address { name, port, transport } => {
            let targets = addresses(resolver, &name, transport, port, &mut cause).await;
            return found(targets, name, cause);
        }
        Start::Srv { name, transport } => {
            let services = srv_services(&name, &[transport]);
            (name, services, transport)
        }
        Start::Naptr { name, allowed } => {
            let naptr = resolver.naptr(&name).await.unwrap_or_else(|e| {
                cause = Some(e);
                Vec::new()
            });
            let mut services = naptr_services(&naptr, &allowed);
            if services.is_empty() {
                services = srv_services(&name, &allowed);
            }
            let fallback = allowed.first().copied().unwrap_or(Transport::Udp);
            (name, services, fallback)
        }
    };
    let mut targets = Vec::new();
    let mut any_srv = false;
    for (transport, service) in services {
        let records = resolver.srv(&service).await.unwrap_or_else(|e| {
            cause = Some(e);
            Vec::new()
        });
        any_srv |= !records.is_empty();
        let ordered = order_srv(&records, rng);
        for srv in ordered {
            for target in addresses(resolver, &srv.target, transport, srv.port, &mut cause).await {
                if !targets.contains(&target) {
                    targets.push(target);
                }
            }
        }
    }
    // §4.2: no SRV records at all → the name's own addresses on the default port.
    if !any_srv {
        targets = addresses(resolver, &name, fallback, fallback.default_port(), &mut cause).await;
    }
    found(targets, name, cause)
}

async fn addresses<R: Resolve + ?Sized>(resolver: &R, name: &str, transport: Transport, port: u16, cause: &mut Option<String>) -> Vec<Target> {
    match resolver.ips(name).await {
        Ok(ips) => ips.into_iter().map(|ip| Target { transport, addr: SocketAddr::new(ip, port) }).collect(),
        Err(e) => {
            *cause = Some(e);
            Vec::new()
        }
    }
}

fn found(targets: Vec<Target>, name: String, cause: Option<String>) -> Result<Vec<Target>, LocateError> {
    if targets.is_empty() {
        Err(LocateError::NoAddress { name, cause })
    } else {
        Ok(targets)
    }
}

/// [`Resolve`] over DNS with [`hickory_resolver`], which caches each answer for its TTL.
#[derive(Clone)]
pub struct DnsResolver(TokioResolver);

impl std::fmt::Debug for DnsResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DnsResolver")
    }
}

impl DnsResolver {
    /// The system's resolver configuration (`/etc/resolv.conf`).
    pub fn system() -> Result<Self, crate::Error> {
        let builder = TokioResolver::builder_tokio().map_err(|e| crate::Error::Dns(e.to_string()))?;
        Ok(Self(builder.build()))
    }

    /// One name server at `server` (UDP, then TCP for a truncated answer), no hosts file:
    /// for an operator's DNS or a test's.
    pub fn with_server(server: SocketAddr) -> Self {
        let group = NameServerConfigGroup::from_ips_clear(&[server.ip()], server.port(), true);
        let mut builder = TokioResolver::builder_with_config(ResolverConfig::from_parts(None, Vec::new(), group), TokioConnectionProvider::default());
        builder.options_mut().use_hosts_file = ResolveHosts::Never;
        Self(builder.build())
    }

    async fn lookup(&self, name: &str, kind: RecordType) -> Result<Vec<RData>, String> {
        let absolute = if name.ends_with('.') { name.to_owned() } else { format!("{name}.") };
        match self.0.lookup(absolute.as_str(), kind).await {
            Ok(lookup) => Ok(lookup.record_iter().map(|r| r.data().clone()).collect()),
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => Ok(Vec::new()),
            Err(e) => Err(format!("{kind} {name}: {e}")),
        }
    }
}

impl Resolve for DnsResolver {
    fn naptr<'a>(&'a self, name: &'a str) -> Lookup<'a, Naptr> {
        Box::pin(async move {
            Ok(self
                .lookup(name, RecordType::NAPTR)
                .await?
                .into_iter()
                .filter_map(|d| match d {
                    RData::NAPTR(n) => Some(Naptr {
                        order: n.order(),
                        preference: n.preference(),
                        flags: String::from_utf8_lossy(n.flags()).into_owned(),
                        services: String::from_utf8_lossy(n.services()).into_owned(),
                        replacement: n.replacement().to_ascii(),
                    }),
                    _ => None,
                })
                .collect())
        })
    }

    fn srv<'a>(&'a self, name: &'a str) -> Lookup<'a, Srv> {
        Box::pin(async move {
            Ok(self
                .lookup(name, RecordType::SRV)
                .await?
                .into_iter()
                .filter_map(|d| match d {
                    RData::SRV(s) => Some(Srv { priority: s.priority(), weight: s.weight(), port: s.port(), target: s.target().to_ascii() }),
                    _ => None,
                })
                .collect())
        })
    }

    fn ips<'a>(&'a self, name: &'a str) -> Lookup<'a, IpAddr> {
        Box::pin(async move {
            let mut ips = Vec::new();
            let mut error = None;
            for kind in [RecordType::A, RecordType::AAAA] {
                match self.lookup(name, kind).await {
                    Ok(data) => ips.extend(data.into_iter().filter_map(|d| match d {
                        RData::A(a) => Some(IpAddr::V4(a.0)),
                        RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                        _ => None,
                    })),
                    Err(e) => error = Some(e),
                }
            }
            match error {
                Some(e) if ips.is_empty() => Err(e),
                _ => Ok(ips),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn uri(s: &str) -> Uri {
        Uri::parse(bytes::Bytes::copy_from_slice(s.as_bytes())).expect("URI")
    }

    #[test]
    fn start_follows_rfc3263_4_1_and_4_2() {
        let done = |t, a: &str| Ok(Start::Done(Target { transport: t, addr: a.parse().expect("address") }));
        assert_eq!(start(&uri("sip:192.0.2.1")), done(Transport::Udp, "192.0.2.1:5060"));
        assert_eq!(start(&uri("sips:192.0.2.1")), done(Transport::Tls, "192.0.2.1:5061"));
        assert_eq!(start(&uri("sip:[2001:db8::1]:5070;transport=tcp")), done(Transport::Tcp, "[2001:db8::1]:5070"));
        assert_eq!(start(&uri("sip:p.example.org:5080;lr")), Ok(Start::Address { name: "p.example.org".into(), port: 5080, transport: Transport::Udp }));
        assert_eq!(start(&uri("sips:p.example.org:5081")), Ok(Start::Address { name: "p.example.org".into(), port: 5081, transport: Transport::Tls }));
        assert_eq!(start(&uri("sip:p.example.org;transport=TCP")), Ok(Start::Srv { name: "p.example.org".into(), transport: Transport::Tcp }));
        assert_eq!(start(&uri("sip:p.example.org;lr")), Ok(Start::Naptr { name: "p.example.org".into(), allowed: vec![Transport::Udp, Transport::Tcp, Transport::Tls] }));
        assert_eq!(start(&uri("sips:p.example.org")), Ok(Start::Naptr { name: "p.example.org".into(), allowed: vec![Transport::Tls] }));
        assert_eq!(start(&uri("sip:p.example.org;transport=sctp")), Err(LocateError::Transport("sctp".into())));
        assert_eq!(start(&uri("sips:p.example.org;transport=udp")), Err(LocateError::Transport("udp".into())));
        assert_eq!(start(&uri("tel:+15551234")), Err(LocateError::NotSip));
    }

    fn naptr(order: u16, preference: u16, flags: &str, services: &str, replacement: &str) -> Naptr {
        Naptr { order, preference, flags: flags.into(), services: services.into(), replacement: replacement.into() }
    }

    #[test]
    fn naptr_filtered_to_supported_services_by_order_then_preference() {
        let records = [
            naptr(20, 10, "s", "SIP+D2U", "_sip._udp.example.org."),
            naptr(10, 50, "s", "SIP+D2T", "_sip._tcp.example.org."),
            naptr(10, 10, "S", "SIPS+D2T", "_sips._tcp.example.org."),
            naptr(5, 10, "s", "SIP+D2S", "_sip._sctp.example.org."),
            naptr(1, 10, "a", "SIP+D2U", "a.example.org."),
        ];
        let all = [Transport::Udp, Transport::Tcp, Transport::Tls];
        assert_eq!(
            naptr_services(&records, &all),
            vec![(Transport::Tls, "_sips._tcp.example.org.".into()), (Transport::Tcp, "_sip._tcp.example.org.".into()), (Transport::Udp, "_sip._udp.example.org.".into())]
        );
        assert_eq!(naptr_services(&records, &[Transport::Tls]), vec![(Transport::Tls, "_sips._tcp.example.org.".into())]);
    }

    #[test]
    fn srv_target_dot_means_no_service() {
        let records = [Srv { priority: 0, weight: 0, port: 0, target: ".".into() }];
        assert!(order_srv(&records, &mut rand::rng()).is_empty());
    }

    #[test]
    fn srv_weights_pick_in_proportion() {
        // Priority 10, weights 0 and 0 never before weight 90 most of the time; measured over
        // many draws: the heavy record comes first in most of them.
        let records = [
            Srv { priority: 10, weight: 1, port: 1, target: "light.".into() },
            Srv { priority: 10, weight: 99, port: 2, target: "heavy.".into() },
            Srv { priority: 20, weight: 0, port: 3, target: "backup.".into() },
        ];
        let mut rng = rand::rng();
        let heavy_first = (0..1000).filter(|_| order_srv(&records, &mut rng).first().is_some_and(|s| s.target == "heavy.")).count();
        // Expected 990; a binomial(1000, 0.99) below 950 has probability far under 1e-20.
        assert!(heavy_first > 950, "{heavy_first}");
    }

    fn srv_strategy() -> impl Strategy<Value = Vec<Srv>> {
        prop::collection::vec((0u16..4, 0u16..5, 1u16..10), 0..12)
            .prop_map(|v| v.into_iter().enumerate().map(|(i, (priority, weight, port))| Srv { priority, weight, port, target: format!("t{i}.") }).collect())
    }

    proptest! {
        #[test]
        fn srv_order_is_a_permutation_by_priority(records in srv_strategy()) {
            let ordered = order_srv(&records, &mut rand::rng());
            prop_assert_eq!(ordered.len(), records.len());
            for r in &records {
                prop_assert!(ordered.contains(r));
            }
            prop_assert!(ordered.windows(2).all(|w| w.first().map(|s| s.priority) <= w.get(1).map(|s| s.priority)));
        }
    }
}
