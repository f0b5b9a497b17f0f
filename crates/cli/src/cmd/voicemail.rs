//! `mediasec voicemail`: deferred delivery of MIKEY-TICKET calls (docs/voicemail.md).
//! `serve` runs the voicemail server (SIP deposit side registered with the S-CSCF, redb
//! store, retrieval API with GBA HTTP Digest); `fetch` is the mailbox owner: bootstrap (GBA),
//! list and download the messages, resolve each ticket at the KMS as the responder, decrypt,
//! write WAV files.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use mediasec_bsf::client::{self, Endpoint};
use mediasec_gba::kdf::{NafId, UaProtocolId};
use mediasec_gba::ue::UeBootstrap;
use mediasec_kms::bsf_zn::BsfZn;
use mediasec_kms::client::KmsClient;
use mediasec_kms::identity::KmsUid;
use mediasec_kms::ue::Ue;
use mediasec_kms::zn::ZnCache;
use mediasec_sip::core::Timers;
use mediasec_voicemail::deposit::{Caps, DepositConfig, MAX_MESSAGE_BYTES};
use mediasec_voicemail::owner::{MailboxClient, open_message};
use mediasec_voicemail::service::Server;

/// Arguments of `mediasec voicemail`.
#[derive(clap::Args)]
pub(crate) struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(clap::Subcommand)]
enum Action {
    /// Run the voicemail server until Ctrl-C.
    Serve(ServeArgs),
    /// As a mailbox owner: download, decrypt and (optionally) delete the messages.
    Fetch(FetchArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Our AOR, registered with the S-CSCF (the S-CSCF's --voicemail URI).
    #[arg(long)]
    aor: String,
    /// Home domain: mailboxes of this domain are stored.
    #[arg(long)]
    domain: String,
    /// Message store: a file path (embedded redb, created if missing) or `postgres://...`
    /// (shared by voicemail servers), as the KMS's and the BSF's `--store` (libpq's
    /// `sslmode`/`sslrootcert`; the password may come from env PGPASSWORD or ~/.pgpass instead).
    #[arg(long)]
    store: String,
    /// SIP address (UDP and TCP).
    #[arg(long, default_value = "127.0.0.1:5070")]
    sip: SocketAddr,
    /// The S-CSCF to register with.
    #[arg(long)]
    registrar: Option<SocketAddr>,
    /// Address of the media ports.
    #[arg(long, default_value = "127.0.0.1")]
    rtp_ip: IpAddr,
    /// Retrieval API address.
    #[arg(long, default_value = "127.0.0.1:8095")]
    api: SocketAddr,
    /// Serve the API over HTTPS with this certificate chain (PEM; needs --tls-key): TS 33.222
    /// §5.3 runs the GBA Digest inside server-authenticated TLS.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Our NAF FQDN (the Ks_NAF the BSF gives us over Zn, and users derive).
    #[arg(long)]
    naf_fqdn: String,
    /// BSF base URL (Zn).
    #[arg(long)]
    bsf: String,
    /// Zn bearer token (or MEDIASEC_VOICEMAIL_ZN_TOKEN).
    #[arg(long)]
    zn_token: Option<String>,
    /// Packets kept per message.
    #[arg(long, default_value_t = 3000)]
    max_packets: usize,
    /// Octets of packets kept per message.
    #[arg(long, default_value_t = 1 << 20)]
    max_bytes: usize,
    /// Seconds recorded per message.
    #[arg(long, default_value_t = 120)]
    max_seconds: u64,
    /// Days a message is kept after it was received, fetched or not (0: until its owner
    /// deletes it).
    #[arg(long, default_value_t = 30)]
    retention_days: u64,
    /// Messages one mailbox may hold; further calls for it are answered 480 "Mailbox Full"
    /// (0: no limit).
    #[arg(long, default_value_t = 100)]
    max_messages: usize,
}

#[derive(clap::Args)]
struct FetchArgs {
    /// Voicemail API base URL (http:// or https://).
    #[arg(long)]
    server: String,
    /// PEM CA certificate(s) to trust for an https --server.
    #[arg(long, value_name = "PEM")]
    ca: Option<PathBuf>,
    /// The voicemail server's NAF FQDN.
    #[arg(long)]
    naf_fqdn: String,
    /// KMS Ua base URL.
    #[arg(long)]
    kms: String,
    /// KMS FQDN (default kms.<domain of --impu>).
    #[arg(long)]
    kms_fqdn: Option<String>,
    /// BSF base URL (Ub).
    #[arg(long)]
    bsf: String,
    #[command(flatten)]
    usim: super::UsimKeys,
    /// BSF FQDN (Digest realm of Ub); default derived from the IMPI.
    #[arg(long)]
    realm: Option<String>,
    /// Our public identity (the mailbox), e.g. sip:carol@a.example.
    #[arg(long)]
    impu: String,
    /// Write each decrypted message as <DIR>/<id>.wav.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Delete each message that decrypted without failure.
    #[arg(long)]
    delete: bool,
    /// Count the packets carrying this tone (Hz) in each message.
    #[arg(long)]
    expect_hz: Option<f64>,
}

pub(crate) fn run(args: Args) -> anyhow::Result<ExitCode> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .try_init();
    let runtime = super::runtime()?;
    match args.action {
        Action::Serve(a) => runtime.block_on(serve(a)),
        Action::Fetch(a) => runtime.block_on(fetch(a)),
    }
}

async fn serve(a: ServeArgs) -> anyhow::Result<ExitCode> {
    let token = a.zn_token.clone().or_else(|| std::env::var("MEDIASEC_VOICEMAIL_ZN_TOKEN").ok()).context("--zn-token or MEDIASEC_VOICEMAIL_ZN_TOKEN is required")?;
    let zn = BsfZn::for_protocol(Endpoint::http(&a.bsf)?, token, a.naf_fqdn.clone(), UaProtocolId::HTTP_DIGEST);
    if a.max_bytes > MAX_MESSAGE_BYTES {
        anyhow::bail!("--max-bytes {} exceeds {MAX_MESSAGE_BYTES}: a larger message could not be downloaded in one response", a.max_bytes);
    }
    let retention = (a.retention_days > 0).then(|| Duration::from_secs(a.retention_days.saturating_mul(86_400)));
    let max_messages = (a.max_messages > 0).then_some(a.max_messages);
    let caps = Caps { max_packets: a.max_packets, max_bytes: a.max_bytes, max_duration: Duration::from_secs(a.max_seconds), retention, max_messages, ..Caps::default() };
    let config = DepositConfig { aor: a.aor, domain: a.domain.to_ascii_lowercase(), sip_bind: a.sip, rtp_ip: a.rtp_ip, registrar: a.registrar, expires: 3600, caps, timers: Timers::default() };
    let tls = match (&a.tls_cert, &a.tls_key) {
        (Some(c), Some(k)) => Some((std::fs::read(c).with_context(|| format!("reading {}", c.display()))?, std::fs::read(k).with_context(|| format!("reading {}", k.display()))?)),
        _ => None,
    };
    let tls = tls.as_ref().map(|(c, k)| (c.as_slice(), k.as_slice()));
    let store = if super::kms::is_postgres(&a.store) {
        mediasec_voicemail::store::Store::new(super::kms::open_store(&a.store).await?)
    } else {
        mediasec_voicemail::store::Store::open(std::path::Path::new(&a.store)).with_context(|| format!("opening {}", a.store))?
    };
    let server = Server::start(store, config, a.api, tls, &a.naf_fqdn, Arc::new(ZnCache::new(Arc::new(zn)))).await.context("starting the voicemail server")?;
    println!("voicemail: SIP {} API {}", server.deposit.sip_addr(), server.api_url());
    tokio::signal::ctrl_c().await?;
    server.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

async fn fetch(a: FetchArgs) -> anyhow::Result<ExitCode> {
    let usim = super::gba::milenage(&a.usim)?;
    let impi = a.usim.impi.clone();
    let realm = a.realm.clone().or_else(|| super::gba::default_realm(&impi)).context("cannot derive the BSF FQDN from the IMPI; give --realm")?;
    let uid = mediasec_ua::ticket::uid_of(&a.impu)?;
    let (boot, _) = client::bootstrap(&Endpoint::http(&a.bsf)?, UeBootstrap::new(impi, realm, usim, 0)).await.context("GBA bootstrap")?;
    let vm_key = boot.ks_naf(&NafId::new(a.naf_fqdn.clone(), UaProtocolId::HTTP_DIGEST))?;
    let kms_fqdn = a.kms_fqdn.clone().unwrap_or_else(|| format!("kms.{}", uid.domain()));
    let kms_key = boot.ks_naf(&NafId::new(kms_fqdn.clone(), UaProtocolId::IMS_MEDIA_PLANE))?;
    let mut ue = Ue::new(KmsUid::parse(uid.as_str())?, kms_fqdn, boot.btid.to_string(), &kms_key.0, 30);
    let kms = KmsClient::new(Endpoint::http(&a.kms)?);
    let connector = match &a.ca {
        Some(p) => Some(mediasec_bsf::tls::client_connector(&std::fs::read(p).with_context(|| format!("reading {}", p.display()))?, None)?),
        None => None,
    };
    let server = Endpoint::new(&a.server, connector).context("--server (https needs --ca)")?;
    let mailbox = MailboxClient::new(server, a.naf_fqdn.clone(), boot.btid.to_string(), &vm_key.0);
    let list = mailbox.list().await.context("listing messages")?;
    println!("{} message(s)", list.len());
    let mut failures = 0;
    for m in list {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let record = mailbox.fetch(m.id).await.with_context(|| format!("message {}", m.id))?;
        match open_message(&mut ue, &kms, &record, now).await {
            Ok(out) => {
                let tone = a.expect_hz.map(|hz| format!(", {} with the {hz} Hz tone", out.tone_packets(hz))).unwrap_or_default();
                // The caller the ticket names, and the network's claim when it differs.
                let from = out.initiator.as_ref().map_or_else(|| m.caller.clone(), KmsUid::to_string);
                let same = out.initiator.as_ref().is_some_and(|i| KmsUid::from_uri(&m.caller, uid.domain()).is_ok_and(|c| &c == i));
                let asserted = if same { String::new() } else { format!(" (the network asserted {})", m.caller) };
                println!("message {} from {from}{asserted} to {}: {} packets stored ({} dropped), {} RTP + {} RTCP decrypted, {} failed{tone}", m.id, m.mailbox, record.packets.len(), record.dropped, out.rtp, out.rtcp, out.failed);
                if let Some(dir) = &a.out {
                    let path = dir.join(format!("{}.wav", m.id));
                    std::fs::write(&path, out.wav()).with_context(|| format!("writing {}", path.display()))?;
                    println!("  wrote {}", path.display());
                }
                if out.failed > 0 {
                    failures += 1;
                } else if a.delete {
                    mailbox.delete(m.id).await.with_context(|| format!("deleting message {}", m.id))?;
                    println!("  deleted");
                }
            }
            Err(e) => {
                failures += 1;
                println!("message {} from {}: cannot be decrypted: {e}", m.id, m.caller);
            }
        }
    }
    Ok(if failures == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
