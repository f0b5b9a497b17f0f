//! The two-domain topology on loopback used by the whole-system tests, `mediasec demo` and the
//! set-up latency measurement: `a.example` and `b.example`, each with a P-CSCF (supporting the
//! `mediasec` indication) and an S-CSCF; the S-CSCFs route to each other.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;

use mediasec_sip::core::Timers;
use mediasec_sip::tls::{ServerConfig, Tls, TlsServer};
use mediasec_sip::udp::Config;

use crate::alg::Provisioned;
use crate::proxy::{ProxyConfig, Role};
use crate::service::Cscf;

/// What the lab runs with ([`TwoDomains::start_config`]).
#[derive(Clone, Debug, Default)]
pub struct LabConfig {
    /// S-CSCF b's retargeting table.
    pub retarget_b: HashMap<String, String>,
    /// Where S-CSCF a sends b.example requests instead of S-CSCF b (a test's relay).
    pub a_to_b: Option<SocketAddr>,
    /// Where S-CSCF b sends a.example requests instead of S-CSCF a (a test's relay).
    pub b_to_a: Option<SocketAddr>,
    /// The IMS-AGW that P-CSCF a drives as IMS-ALG (e2ae for a.example's UEs).
    pub agw_ng_a: Option<SocketAddr>,
    /// P-CSCF a's operator-provisioned e2ae UEs (legacy SDES clients, [`Provisioned`]).
    pub e2ae_provisioned_a: Provisioned,
    /// P-CSCF a's IMS-ALG asks for re-protected SRTP towards the core
    /// ([`ProxyConfig::core_srtp`]).
    pub core_srtp_a: bool,
    /// Both P-CSCFs also listen on TLS (a free port, `Cscf::tls_addr`) with this certificate,
    /// for UEs that reach them over TLS (RFC 3261 §26.2); the core side stays UDP/TCP.
    pub pcscf_tls: Option<Arc<ServerConfig>>,
    /// S-CSCF a's voicemail URI ([`ProxyConfig::voicemail`]).
    pub voicemail_a: Option<String>,
    /// S-CSCF b's voicemail URI.
    pub voicemail_b: Option<String>,
    /// S-CSCF a finds b.example's servers by DNS (RFC 3263) at this name server instead of
    /// having S-CSCF b configured as its peer (`a_to_b` is then unused).
    pub dns_a: Option<SocketAddr>,
}

/// The four running proxies.
pub struct TwoDomains {
    /// P-CSCF of a.example.
    pub pcscf_a: Cscf,
    /// S-CSCF of a.example.
    pub scscf_a: Cscf,
    /// P-CSCF of b.example.
    pub pcscf_b: Cscf,
    /// S-CSCF of b.example.
    pub scscf_b: Cscf,
}

/// A free loopback UDP port, found by binding port 0 (the socket is closed again; the next
/// bind on it wins in practice on a lab machine).
fn free_addr() -> Result<SocketAddr, mediasec_sip::Error> {
    // The SIP endpoint binds UDP and TCP on one port (RFC 3261 §18), so the port must be free
    // for both: a port the system gives for UDP can be held by a TCP socket.
    let mut tries = 0;
    loop {
        let addr = UdpSocket::bind("127.0.0.1:0")?.local_addr()?;
        match std::net::TcpListener::bind(addr) {
            Ok(_) => return Ok(addr),
            Err(e) if tries >= 16 => return Err(e.into()),
            Err(_) => tries += 1,
        }
    }
}

impl TwoDomains {
    /// Starts the four proxies. `retarget_b` is S-CSCF b's retargeting table; `a_to_b`, when
    /// given, is where S-CSCF a sends b.example requests instead of S-CSCF b (a test puts a
    /// relay there).
    pub async fn start(retarget_b: HashMap<String, String>, a_to_b: Option<SocketAddr>) -> Result<Self, mediasec_sip::Error> {
        Self::start_config(LabConfig { retarget_b, a_to_b, ..LabConfig::default() }).await
    }

    /// [`Self::start`], with P-CSCF a an IMS-ALG driving the IMS-AGW at `agw_ng_a` (e2ae for
    /// a.example's UEs; b.example stays without).
    pub async fn start_with_agw(retarget_b: HashMap<String, String>, a_to_b: Option<SocketAddr>, agw_ng_a: Option<SocketAddr>) -> Result<Self, mediasec_sip::Error> {
        Self::start_config(LabConfig { retarget_b, a_to_b, agw_ng_a, ..LabConfig::default() }).await
    }

    /// Starts the four proxies as `config` says.
    pub async fn start_config(config: LabConfig) -> Result<Self, mediasec_sip::Error> {
        let LabConfig { retarget_b, a_to_b, b_to_a, agw_ng_a, e2ae_provisioned_a, core_srtp_a, pcscf_tls, voicemail_a, voicemail_b, dns_a } = config;
        let (sa, sb) = (free_addr()?, free_addr()?);
        let scscf = |domain: &str, peer: Option<(&str, SocketAddr)>, retarget: HashMap<String, String>, voicemail: Option<String>| ProxyConfig {
            role: Role::Scscf,
            domain: domain.into(),
            scscf: None,
            peers: peer.map(|(d, a)| HashMap::from([(d.to_owned(), a)])).unwrap_or_default(),
            retarget,
            mediasec: false,
            agw_ng: None,
            e2ae_provisioned: Provisioned::default(),
            core_srtp: false,
            dns: peer.is_none(),
            hostnames: Vec::new(),
            voicemail,
        };
        let pcscf = |domain: &str, s: SocketAddr, agw_ng: Option<SocketAddr>, e2ae_provisioned: Provisioned, core_srtp: bool| ProxyConfig {
            role: Role::Pcscf,
            domain: domain.into(),
            scscf: Some(s),
            peers: HashMap::new(),
            retarget: HashMap::new(),
            mediasec: true,
            agw_ng,
            e2ae_provisioned,
            core_srtp,
            voicemail: None,
            dns: false,
            hostnames: vec![format!("pcscf.{domain}")],
        };
        let t = Timers::default();
        let scscf_a = match dns_a {
            None => Cscf::start(scscf("a.example", Some(("b.example", a_to_b.unwrap_or(sb))), HashMap::new(), voicemail_a), sa, t).await?,
            Some(server) => {
                let resolver: Arc<dyn mediasec_sip::locate::Resolve> = Arc::new(mediasec_sip::locate::DnsResolver::with_server(server));
                Cscf::start_with(scscf("a.example", None, HashMap::new(), voicemail_a), sa, Config { resolver: Some(resolver), ..Config::from(t) }).await?
            }
        };
        let scscf_b = Cscf::start(scscf("b.example", Some(("a.example", b_to_a.unwrap_or(sa))), retarget_b, voicemail_b), sb, t).await?;
        let edge = Config { tls: Tls { server: pcscf_tls.map(|config| TlsServer { port: 0, config }), client: None }, ..Config::from(t) };
        let pcscf_a = Cscf::start_with(pcscf("a.example", sa, agw_ng_a, e2ae_provisioned_a, core_srtp_a), free_addr()?, edge.clone()).await?;
        let pcscf_b = Cscf::start_with(pcscf("b.example", sb, None, Provisioned::default(), false), free_addr()?, edge).await?;
        Ok(Self { pcscf_a, scscf_a, pcscf_b, scscf_b })
    }
}
