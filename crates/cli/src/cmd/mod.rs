//! One module per subcommand.

pub(crate) mod agw;
pub(crate) mod bench;
pub(crate) mod bench_sakke;
pub(crate) mod bsf;
pub(crate) mod cscf;
pub(crate) mod demo;
pub(crate) mod demo_sip;
pub(crate) mod gba;
pub(crate) mod kms;
pub(crate) mod li;
pub(crate) mod mikey;
pub(crate) mod rekey;
pub(crate) mod sdp;
pub(crate) mod srtp;
pub(crate) mod ua;
pub(crate) mod voicemail;

/// The multi-threaded tokio runtime the network subcommands run their servers and clients on.
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    use anyhow::Context as _;
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("tokio runtime")
}

/// The DNS resolver of a `--dns system|ADDR` flag (RFC 3263 server location,
/// `mediasec_sip::locate`): `system` reads /etc/resolv.conf, `ADDR` asks that name server.
pub(crate) fn dns_resolver(flag: Option<&str>) -> anyhow::Result<Option<std::sync::Arc<dyn mediasec_sip::locate::Resolve>>> {
    use anyhow::Context as _;
    use mediasec_sip::locate::DnsResolver;
    Ok(match flag {
        None => None,
        Some("system") => Some(std::sync::Arc::new(DnsResolver::system().context("--dns system")?)),
        Some(addr) => Some(std::sync::Arc::new(DnsResolver::with_server(addr.parse().with_context(|| format!("--dns {addr}: neither `system` nor IP:PORT"))?))),
    })
}

/// The USIM credentials a subscriber is provisioned with and a UE bootstraps with
/// (TS 35.206 Milenage: K and OPc or OP), shared by `bsf subscriber add` and `gba bootstrap`.
#[derive(clap::Args)]
pub(crate) struct UsimKeys {
    /// IMPI.
    #[arg(long)]
    pub(crate) impi: String,
    /// K (32 hex digits).
    #[arg(long)]
    pub(crate) k: String,
    /// OPc (32 hex digits).
    #[arg(long, conflicts_with = "op", required_unless_present = "op")]
    pub(crate) opc: Option<String>,
    /// OP (32 hex digits).
    #[arg(long)]
    pub(crate) op: Option<String>,
}
