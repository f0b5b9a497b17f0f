//! `mediasec cscf`: run a P-CSCF or S-CSCF (registrar/location, routing between domains,
//! parallel forking, retargeting) on UDP and TCP until Ctrl-C; with `--tls-cert`/`--tls-key`
//! also on TLS at `--tls-port` (RFC 3261 §26.2), e.g. a P-CSCF for UEs that protect their
//! signalling (and so their SDES keys) with TLS. Logs every request, registration,
//! fork and SDES finding through `tracing` (`RUST_LOG`, default info) on stderr. With
//! `--metrics ADDR`, serves Prometheus metrics on `http://ADDR/metrics`. With `--dns
//! system|ADDR`, next hops named by a host name are located by DNS (RFC 3263) and an S-CSCF
//! routes other domains without a `--peer` by DNS; `--hostname NAME` names this proxy.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use mediasec_cscf::alg::Provisioned;
use mediasec_cscf::service::Cscf;
use mediasec_cscf::{ProxyConfig, Role};
use mediasec_sip::core::Timers;
use mediasec_sip::tls::{client_config, read_pem, server_config, Tls, TlsServer};
use mediasec_sip::udp::Config;

/// Which CSCF.
#[derive(Clone, Copy, clap::ValueEnum)]
enum RoleArg {
    /// Proxy-CSCF (the UE's outbound proxy).
    Pcscf,
    /// Serving-CSCF (registrar and router of the home domain).
    Scscf,
}

/// Arguments of `mediasec cscf`.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Role.
    #[arg(long, value_enum)]
    role: RoleArg,
    /// UDP (and TCP) address to listen on.
    #[arg(long, default_value = "127.0.0.1:5060")]
    listen: SocketAddr,
    /// Also listen on TLS with this certificate chain (PEM; needs --tls-key). A UE reaching us
    /// by IP address needs that address in the certificate.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// The TLS port, on the --listen IP address (RFC 3261 default 5061; 0 picks one).
    #[arg(long, default_value_t = mediasec_sip::tls::DEFAULT_PORT)]
    tls_port: u16,
    /// Mutual TLS (core nodes): accept TLS clients only with a certificate from the CA in this
    /// PEM file (needs --tls-cert).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_client_ca: Option<std::path::PathBuf>,
    /// Open TLS connections (to `sips:` / `;transport=tls` next hops) trusting the CA in this
    /// PEM file; with --tls-cert/--tls-key that certificate is also presented as ours.
    #[arg(long, value_name = "PEM")]
    tls_ca: Option<std::path::PathBuf>,
    /// Home domain.
    #[arg(long)]
    domain: String,
    /// P-CSCF: the S-CSCF address.
    #[arg(long)]
    scscf: Option<SocketAddr>,
    /// S-CSCF: another domain's S-CSCF, as DOMAIN=ADDR (repeatable).
    #[arg(long, value_parser = parse_pair)]
    peer: Vec<(String, String)>,
    /// S-CSCF: retarget an AOR, as sip:from@domain=sip:to@domain (repeatable).
    #[arg(long, value_parser = parse_pair)]
    retarget: Vec<(String, String)>,
    /// S-CSCF: divert INVITEs for home users with no registration to this voicemail server
    /// URI (e.g. sip:vm@a.example, registered by `mediasec voicemail serve`) instead of 480;
    /// History-Info records the original target (docs/voicemail.md).
    #[arg(long, value_name = "URI")]
    voicemail: Option<String>,
    /// P-CSCF: answer the mediasec registration indication (Security-Server: sdes-srtp;mediasec).
    #[arg(long)]
    mediasec: bool,
    /// P-CSCF: act as IMS-ALG (e2ae) driving the IMS-AGW whose ng control address this is
    /// (`mediasec agw --listen-ng`); needs --mediasec.
    #[arg(long)]
    agw_ng: Option<SocketAddr>,
    /// P-CSCF IMS-ALG: treat this UE as an e2ae UE although it cannot signal it (a legacy SDES
    /// client: no `Security-Client: …mediasec`, no `a=3ge2ae:requested`), as sip:user@host or
    /// sip:*@host for a whole domain (repeatable; needs --agw-ng). An operator extension beyond
    /// TS 33.328: the UE cannot tell that its SDES ends at the AGW; the core leg is plain RTP (SRTP with the AGW's keys under --core-srtp).
    #[arg(long, value_name = "AOR")]
    e2ae_provisioned: Vec<String>,
    /// P-CSCF IMS-ALG: towards the core, originating e2ae calls get SRTP re-protected with the
    /// IMS-AGW's own keys (`RTP/SAVP` + the AGW's a=crypto) instead of plain RTP (TS 33.328
    /// §4.1.2.1); the far end must answer SDES (needs --agw-ng).
    #[arg(long)]
    core_srtp: bool,
    /// Serve Prometheus metrics on http://ADDR/metrics (port 0 picks one; the address is
    /// printed).
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// Locate next hops named by host name by DNS (RFC 3263: NAPTR, SRV, A/AAAA): `system` for
    /// the name servers of /etc/resolv.conf, or a name server's ADDR (IP:PORT). An S-CSCF then
    /// also routes a request for another domain without a --peer to that domain's servers.
    /// Without it, a host-name next hop fails as unreachable.
    #[arg(long, value_name = "system|ADDR")]
    dns: Option<String>,
    /// A host name that names this proxy in a Route or Request-URI (repeatable), e.g. the
    /// name UEs locate it by: a top Route with it is ours and removed, not located again.
    #[arg(long, value_name = "NAME")]
    hostname: Vec<String>,
}

/// The endpoint's TLS setup from the `--tls-*` flags.
fn tls(args: &Args) -> anyhow::Result<Tls> {
    let read = |path: &std::path::Path| read_pem(path).map_err(anyhow::Error::from);
    let identity = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
        _ => None,
    };
    let server = match &identity {
        Some((cert, key)) => {
            let client_roots = args.tls_client_ca.as_deref().map(read).transpose()?;
            let config = server_config(cert, key, client_roots.as_ref().map(|r| r.as_slice())).context("--tls-cert/--tls-key")?;
            Some(TlsServer { port: args.tls_port, config })
        }
        None => None,
    };
    let client = match &args.tls_ca {
        Some(ca) => Some(client_config(&read(ca)?, identity.as_ref().map(|(c, k)| (c.as_slice(), k.as_slice()))).context("--tls-ca")?),
        None => None,
    };
    Ok(Tls { server, client })
}

fn parse_pair(s: &str) -> Result<(String, String), String> {
    // The value after the last '=' is the target: a SIP URI itself contains no '='.
    s.rsplit_once('=').map(|(a, b)| (a.to_owned(), b.to_owned())).ok_or_else(|| format!("{s}: expected KEY=VALUE"))
}

pub(crate) fn run(args: Args) -> anyhow::Result<ExitCode> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .try_init();
    let role = match args.role {
        RoleArg::Pcscf => Role::Pcscf,
        RoleArg::Scscf => Role::Scscf,
    };
    anyhow::ensure!(role == Role::Scscf || args.scscf.is_some(), "a P-CSCF needs --scscf");
    anyhow::ensure!(args.agw_ng.is_none() || (role == Role::Pcscf && args.mediasec), "--agw-ng needs --role pcscf and --mediasec");
    anyhow::ensure!(args.e2ae_provisioned.is_empty() || args.agw_ng.is_some(), "--e2ae-provisioned needs --agw-ng");
    anyhow::ensure!(!args.core_srtp || args.agw_ng.is_some(), "--core-srtp needs --agw-ng");
    anyhow::ensure!(args.voicemail.is_none() || role == Role::Scscf, "--voicemail needs --role scscf");
    let tls = tls(&args)?;
    let e2ae_provisioned = Provisioned::parse(args.e2ae_provisioned.iter().map(String::as_str))?;
    let peers = args
        .peer
        .into_iter()
        .map(|(d, a)| Ok((d.to_ascii_lowercase(), a.parse().with_context(|| format!("--peer {d}={a}"))?)))
        .collect::<anyhow::Result<HashMap<_, _>>>()?;
    let retarget = args.retarget.into_iter().map(|(from, to)| (mediasec_cscf::registrar::aor(&from), to)).collect();
    let config = ProxyConfig { role, domain: args.domain.to_ascii_lowercase(), scscf: args.scscf, peers, retarget, mediasec: args.mediasec, agw_ng: args.agw_ng, e2ae_provisioned, core_srtp: args.core_srtp, voicemail: args.voicemail, dns: args.dns.is_some(), hostnames: args.hostname.iter().map(|h| h.to_ascii_lowercase()).collect() };
    let mut endpoint = Config { tls, ..Config::from(Timers::default()) };
    let runtime = super::runtime()?;
    runtime.block_on(async {
        endpoint.resolver = super::dns_resolver(args.dns.as_deref())?;
        let cscf = Arc::new(Cscf::start_with(config, args.listen, endpoint).await.context("starting the CSCF")?);
        println!("listening on {}", cscf.local_addr());
        if let Some(tls) = cscf.tls_addr() {
            println!("TLS on {tls}");
        }
        if let Some(addr) = args.metrics {
            let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding --metrics {addr}"))?;
            println!("metrics on http://{}/metrics", listener.local_addr()?);
            let shared = Arc::clone(&cscf);
            let router = axum::Router::new().route(
                "/metrics",
                axum::routing::get(move || {
                    let text = shared.metrics();
                    async move { ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], text) }
                }),
            );
            tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, router).await {
                    tracing::error!(error = %e, "metrics server stopped");
                }
            });
        }
        tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
        eprintln!("{:?}", cscf.stats());
        Ok(ExitCode::SUCCESS)
    })
}
