//! `mediasec ua`: the UE.
//! - `ua run`: register through a P-CSCF, optionally place a call (or answer incoming ones),
//!   keep media running for `--duration`, hang up and print one JSON line per call; exit 1
//!   when a call verified fewer than `--min-verified` tone packets. With `--tls-ca PEM`, all
//!   SIP with the P-CSCF runs over TLS (`--proxy` is then its TLS address, which its
//!   certificate must carry as an IP address), so SDES keys never cross that hop in clear.
//!   With `--security high-security` the UE bootstraps with GBA at `--bsf` (a simulated USIM:
//!   `--impi`, `--k`, `--opc`), fetches its ECCSI key from its KMS (`--kms`, `--kms-fqdn`;
//!   Ua `keyprovision`) and trusts that KMS's KPAK plus any `--trust-kpak`
//!   (docs/high-security.md).
//! - `ua lab`: start the two-domain lab in-process, run the SIP call scenarios, and measure
//!   the call set-up latency per key-management mode.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use mediasec_sdp::SdesPolicy;
use mediasec_sip::core::Timers;
use mediasec_ua::high_security::HighSecurity;
use mediasec_ua::ticket::KmsAccess;
use mediasec_ua::{Answering, CallReport, CallState, Role, Security, Ue, UeConfig};

use super::demo_sip;

/// Arguments of `mediasec ua`.
#[derive(clap::Args)]
pub(crate) struct Args {
    #[command(subcommand)]
    command: Sub,
}

#[derive(clap::Subcommand)]
enum Sub {
    /// Run a UE: register, call or answer, report every call as JSON.
    Run(Box<RunArgs>),
    /// Run the SIP call scenarios on an in-process two-domain lab and measure set-up latency.
    Lab(LabArgs),
}

/// Per-call media security.
#[derive(Clone, Copy, clap::ValueEnum)]
enum SecurityArg {
    /// Plain RTP.
    None,
    /// SDES e2e, SRTP required.
    Sdes,
    /// SDES e2e offered opportunistically (RFC 8643), RTP accepted.
    SdesFallback,
    /// High-security mode: ECCSI-signed MIKEY-DH, keys the KMS cannot derive (needs --bsf,
    /// --impi, --k, --opc, --kms, --kms-fqdn).
    HighSecurity,
    /// MIKEY-SAKKE (RFC 6509): the ECCSI-signed, SAKKE-encrypted I_MESSAGE in the offer; keys
    /// the KMS can derive (LI without a man in the middle); same KMS arguments as
    /// high-security; the KMS policy must allow `mikey_sakke`.
    MikeySakke,
}

/// GBA and KMS access (`--security high-security`), with a simulated USIM (lab credentials).
#[derive(clap::Args)]
struct KmsArgs {
    /// BSF URL (Ub), http://host:port.
    #[arg(long)]
    bsf: Option<String>,
    /// BSF FQDN (Digest realm); default derived from a 3GPP IMPI (TS 23.003).
    #[arg(long)]
    bsf_realm: Option<String>,
    /// IMPI of the USIM.
    #[arg(long)]
    impi: Option<String>,
    /// USIM K (32 hex digits).
    #[arg(long)]
    k: Option<String>,
    /// USIM OPc (32 hex digits).
    #[arg(long)]
    opc: Option<String>,
    /// KMS Ua URL, http://host:port.
    #[arg(long)]
    kms: Option<String>,
    /// KMS FQDN (its NAF id for Ks_NAF).
    #[arg(long)]
    kms_fqdn: Option<String>,
    /// Also trust this KPAK (130 hex digits: another KMS's community; repeatable). The own
    /// KMS's KPAK comes authenticated with the keys.
    #[arg(long = "trust-kpak")]
    trust_kpak: Vec<String>,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Our public identity (sip:user@domain).
    #[arg(long)]
    aor: String,
    /// The P-CSCF (outbound proxy); with --tls-ca, its TLS address (`mediasec cscf --tls-port`).
    #[arg(long)]
    proxy: SocketAddr,
    /// Reach the P-CSCF over TLS (RFC 3261 §26.2), trusting the CA certificates in this PEM
    /// file; the P-CSCF's certificate must carry the --proxy IP address.
    #[arg(long, value_name = "PEM")]
    tls_ca: Option<std::path::PathBuf>,
    /// The P-CSCF by SIP URI with a host name (e.g. sip:pcscf.a.example;lr), located by DNS
    /// (RFC 3263; needs --dns): the preloaded Route of REGISTER and INVITE. --proxy then only
    /// names where TLS keep-alives go.
    #[arg(long, value_name = "URI", requires = "dns")]
    proxy_uri: Option<String>,
    /// Locate host-name next hops by DNS (RFC 3263): `system` for /etc/resolv.conf's name
    /// servers, or a name server's IP:PORT.
    #[arg(long, value_name = "system|ADDR")]
    dns: Option<String>,
    /// SIP address to bind.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Media security.
    #[arg(long, value_enum, default_value = "sdes")]
    security: SecurityArg,
    /// Call this URI after registering.
    #[arg(long)]
    call: Option<String>,
    /// Seconds to keep running (media time for a placed call; answering window otherwise).
    #[arg(long, default_value_t = 3.0)]
    duration: f64,
    /// Ring this long before answering (ms).
    #[arg(long, default_value_t = 0)]
    answer_delay_ms: u64,
    /// Send a 183 with the answer and media before the 200.
    #[arg(long)]
    early_media: bool,
    /// Do not answer incoming calls.
    #[arg(long)]
    no_answer: bool,
    /// Tone we send (Hz).
    #[arg(long, default_value_t = 1000.0)]
    tone: f64,
    /// Tone we expect (Hz).
    #[arg(long, default_value_t = 1500.0)]
    expect: f64,
    /// Re-INVITE (re-key) this many seconds into a placed call.
    #[arg(long)]
    reinvite_after: Option<f64>,
    /// Call anonymously (From: anonymous, Privacy: id).
    #[arg(long)]
    anonymous: bool,
    /// Request e2ae (a=3ge2ae:requested on SDES offers; the P-CSCF/IMS-AGW terminates SRTP).
    #[arg(long)]
    e2ae: bool,
    /// Exit 1 unless every established call verified at least this many tone packets.
    #[arg(long, default_value_t = 0)]
    min_verified: u64,
    #[command(flatten)]
    kms: KmsArgs,
}

#[derive(clap::Args)]
struct LabArgs {
    /// Calls per mode for the set-up latency.
    #[arg(long, default_value_t = 20)]
    calls: usize,
}

pub(crate) fn run(args: Args) -> anyhow::Result<ExitCode> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .try_init();
    let runtime = super::runtime()?;
    match args.command {
        Sub::Run(a) => runtime.block_on(run_ue(*a)),
        Sub::Lab(a) => runtime.block_on(lab(a)),
    }
}

fn json(r: &CallReport) -> serde_json::Value {
    let state = match &r.state {
        CallState::Failed(code, reason) => serde_json::json!({"failed": code, "reason": reason}),
        other => serde_json::json!(format!("{other:?}").to_lowercase()),
    };
    serde_json::json!({
        "call_id": r.call_id,
        "role": if r.role == Role::Caller { "caller" } else { "callee" },
        "state": state,
        "protection": r.protection,
        "setup_ms": r.setup.map(|d| d.as_secs_f64() * 1000.0),
        "sent": r.media.sent,
        "received": r.media.received,
        "accepted": r.media.accepted,
        "verified": r.media.verified,
        "refused": r.media.refused,
        "rtcp": r.media.rtcp,
        "rtcp_refused": r.media.rtcp_refused,
        "early_verified": r.early_verified,
        "rekeys": r.rekeys,
        "peer": r.peer_identity,
        "authenticated_peer": r.authenticated_peer,
        "own_key": r.own_key,
        "peer_key": r.peer_key,
        "deferred_delivery": r.deferred_delivery,
    })
}

async fn run_ue(a: RunArgs) -> anyhow::Result<ExitCode> {
    let security = match a.security {
        SecurityArg::None => Security::Off,
        SecurityArg::Sdes => Security::Sdes { fallback: false },
        SecurityArg::SdesFallback => Security::Sdes { fallback: true },
        SecurityArg::HighSecurity => Security::HighSecurity,
        SecurityArg::MikeySakke => Security::MikeySakke,
    };
    let access = match security {
        Security::HighSecurity | Security::MikeySakke => Some(high_security_access(&a.aor, &a.kms, security == Security::MikeySakke).await?),
        _ => None,
    };
    let tls = match &a.tls_ca {
        Some(path) => Some(mediasec_sip::tls::client_config(&mediasec_sip::tls::read_pem(path)?, None).with_context(|| format!("--tls-ca {}", path.display()))?),
        None => None,
    };
    let config = UeConfig {
        aor: a.aor,
        sip_bind: a.listen,
        rtp_ip: a.listen.ip(),
        outbound_proxy: a.proxy,
        security,
        sdes: SdesPolicy::default(),
        answering: Answering { auto: !a.no_answer, delay: Duration::from_millis(a.answer_delay_ms), early_media: a.early_media },
        tone_hz: a.tone,
        expect_hz: Some(a.expect),
        initial_seq: 1000,
        anonymous: a.anonymous,
        e2ae: a.e2ae,
        timers: Timers::default(),
        tls,
        outbound_proxy_uri: a.proxy_uri,
        resolver: super::dns_resolver(a.dns.as_deref())?,
    };
    let ue = Ue::start_with_kms(config, access).await?;
    let reg = tokio::time::timeout(Duration::from_secs(5), ue.register(600)).await.context("REGISTER timed out")??;
    println!("{}", serde_json::json!({"registered": reg.status, "mediasec": reg.mediasec, "sip": ue.sip_addr().to_string(), "tls": a.tls_ca.is_some()}));
    anyhow::ensure!(reg.status == 200, "registration failed");
    let duration = Duration::from_secs_f64(a.duration.max(0.0));
    if let Some(target) = a.call {
        let id = tokio::time::timeout(Duration::from_secs(15), ue.call(&target)).await.context("call timed out")??;
        match a.reinvite_after {
            Some(at) => {
                let at = Duration::from_secs_f64(at.max(0.0)).min(duration);
                tokio::time::sleep(at).await;
                ue.reinvite(&id).await?;
                tokio::time::sleep(duration.saturating_sub(at)).await;
            }
            None => tokio::time::sleep(duration).await,
        }
        ue.hangup(&id).await?;
    } else {
        tokio::time::sleep(duration).await;
    }
    let mut ok = true;
    for r in ue.reports().await? {
        println!("{}", json(&r));
        if matches!(r.state, CallState::Established | CallState::Ended) {
            ok &= r.media.verified >= a.min_verified;
        }
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// GBA bootstrap at the BSF, then the ECCSI key from the KMS (Ua `keyprovision`) for `aor`
/// (with `sakke`, also Z and the RSK for MIKEY-SAKKE).
async fn high_security_access(aor: &str, k: &KmsArgs, sakke: bool) -> anyhow::Result<KmsAccess> {
    use mediasec_bsf::client::{self, Endpoint};
    use mediasec_gba::kdf::{NafId, UaProtocolId};
    let (Some(bsf), Some(impi), Some(key), Some(opc), Some(kms), Some(fqdn)) = (&k.bsf, &k.impi, &k.k, &k.opc, &k.kms, &k.kms_fqdn) else {
        anyhow::bail!("--security high-security / mikey-sakke needs --bsf, --impi, --k, --opc, --kms and --kms-fqdn");
    };
    let realm = k.bsf_realm.clone().or_else(|| super::gba::default_realm(impi)).context("cannot derive the BSF FQDN from the IMPI; give --bsf-realm")?;
    let usim = mediasec_gba::milenage::Milenage::with_opc(&super::gba::key16("K", key)?, &super::gba::key16("OPc", opc)?);
    let bsf = Endpoint::new(bsf, None).context("--bsf")?;
    let (boot, _) = client::bootstrap(&bsf, mediasec_gba::ue::UeBootstrap::new(impi.clone(), realm, usim, 0)).await.context("GBA bootstrap")?;
    let ks_naf = boot.ks_naf(&NafId::new(fqdn.clone(), UaProtocolId::IMS_MEDIA_PLANE))?;
    let ue = mediasec_kms::ue::Ue::new(mediasec_ua::ticket::uid_of(aor)?, fqdn.clone(), boot.btid.to_string(), &ks_naf.0, 30);
    let mut access = KmsAccess { ue, client: mediasec_kms::client::KmsClient::new(Endpoint::new(kms, None).context("--kms")?), high_security: None };
    let mut others = Vec::new();
    for h in &k.trust_kpak {
        let bytes = hex::decode(h.trim()).context("--trust-kpak is not hex")?;
        others.push(mediasec_mikey::eccsi::Kpak::from_uncompressed(&bytes).context("--trust-kpak")?);
    }
    access.high_security = Some(if sakke { HighSecurity::provision_sakke(&access, aor, others).await? } else { HighSecurity::provision(&access, aor, others).await? });
    Ok(access)
}

async fn lab(a: LabArgs) -> anyhow::Result<ExitCode> {
    println!("SIP calls through P-CSCF + S-CSCF of two domains on 127.0.0.1");
    let mut ok = true;
    for s in demo_sip::run().await? {
        ok &= s.ok;
        let setup = s.setup.map_or("-".into(), |d| format!("{:.1} ms", d.as_secs_f64() * 1000.0));
        println!("{:<40} {:>10}  {}  {}", s.name, setup, s.detail, if s.ok { "ok" } else { "FAILED" });
    }
    println!("call set-up latency (dial → 2xx processed at the caller), {} calls per mode:", a.calls);
    for (mode, median, p90) in demo_sip::setup_latency(a.calls).await? {
        println!("  {mode:<24} median {:.2} ms, p90 {:.2} ms", median.as_secs_f64() * 1000.0, p90.as_secs_f64() * 1000.0);
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
