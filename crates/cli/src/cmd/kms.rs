//! `mediasec kms`: run the KMS (Ua, admin API, /metrics, Zk) on an embedded store or
//! PostgreSQL, and generate a lab PKI for Zk (see docs/kms.md).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use mediasec_bsf::client::Endpoint;
use mediasec_kms::bsf_zn::BsfZn;
use mediasec_kms::keyring::{MASTER_KEY_ENV, MasterKey};
use mediasec_kms::kms::{KmsConfig, NoPeers, Peers, os_random};
use mediasec_kms::persist::Persist;
use mediasec_kms::policy::Policies;
use mediasec_kms::server::{Service, serve};
use mediasec_kms_store::Store;

/// Arguments of `mediasec kms`.
#[derive(clap::Args)]
pub(crate) struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(clap::Subcommand)]
enum Action {
    /// Serve Ua (`/keymanagement`), the admin API and /metrics; optionally Zk.
    Serve(Box<ServeArgs>),
    /// Write a lab PKI for Zk (a private CA and one certificate per KMS domain).
    Pki {
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// A KMS domain (repeat); its certificate names `kms.<domain>`.
        #[arg(long = "domain", required = true)]
        domains: Vec<String>,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    /// KMS FQDN: its NAF name for Ks_NAF and its IDRkms (Zk peers know it as `kms.<domain>`).
    #[arg(long)]
    fqdn: String,
    /// Home domain of its users (default: the FQDN without a leading `kms.`).
    #[arg(long)]
    domain: Option<String>,
    /// Store: a file path (embedded redb, created if missing) or `postgres://...`.
    #[arg(long)]
    store: String,
    /// Ua / admin / metrics listen address.
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: String,
    /// BSF base URL for Zn.
    #[arg(long)]
    bsf: String,
    /// Zn bearer token (else env MEDIASEC_KMS_ZN_TOKEN).
    #[arg(long)]
    zn_token: Option<String>,
    /// Admin API bearer token (else env MEDIASEC_KMS_ADMIN_TOKEN, else random, printed).
    #[arg(long)]
    admin_token: Option<String>,
    /// Key-ring master key, 64 hex digits (else env MEDIASEC_KMS_MASTER_KEY). Required: the
    /// ring in the store is encrypted under it.
    #[arg(long)]
    master_key: Option<String>,
    /// Policy document (TOML) to store at start (replaces the stored policies).
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Provision these KMS UIDs at start (repeat).
    #[arg(long = "user")]
    users: Vec<String>,
    /// Accepted clock skew, seconds.
    #[arg(long, default_value_t = 30)]
    skew: u64,
    /// Re-read users, policies and key ring from the store every so many seconds (replicas
    /// sharing a database); 0 = never.
    #[arg(long, default_value_t = 5)]
    reload: u64,
    /// Zk listen address (needs --zk-pki).
    #[arg(long, requires = "zk_pki")]
    zk_listen: Option<String>,
    /// Zk PKI directory (`mediasec kms pki`).
    #[arg(long)]
    zk_pki: Option<PathBuf>,
    /// A Zk peer: `DOMAIN=HOST:PORT` (repeat); it is also allowed to resolve here.
    #[arg(long = "zk-peer", requires = "zk_pki")]
    zk_peers: Vec<String>,
    /// Bound of one Zk resolve, milliseconds.
    #[arg(long, default_value_t = 2000)]
    zk_timeout_ms: u64,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("tokio runtime")
}

/// Opens the store named by `--store`.
pub(crate) async fn open_store(spec: &str) -> anyhow::Result<Arc<dyn Store>> {
    if spec.starts_with("postgres://") || spec.starts_with("postgresql://") {
        open_postgres(spec).await
    } else {
        Ok(Arc::new(mediasec_kms_store::RedbStore::open(std::path::Path::new(spec)).with_context(|| format!("opening {spec}"))?))
    }
}

async fn open_postgres(_url: &str) -> anyhow::Result<Arc<dyn Store>> {
    bail!("the PostgreSQL store backend is not available in this build yet (use a file path for the embedded store)")
}

pub(crate) fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.action {
        Action::Serve(a) => serve_kms(*a),
        Action::Pki { out, domains } => pki(&out, &domains),
    }
}

fn pki(_out: &std::path::Path, _domains: &[String]) -> anyhow::Result<ExitCode> {
    bail!("Zk PKI generation is not available in this build yet")
}

fn zk_peers(a: &ServeArgs) -> anyhow::Result<Arc<dyn Peers>> {
    if a.zk_pki.is_some() || !a.zk_peers.is_empty() || a.zk_listen.is_some() {
        bail!("Zk is not available in this build yet");
    }
    Ok(Arc::new(NoPeers))
}

fn serve_kms(a: ServeArgs) -> anyhow::Result<ExitCode> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .try_init();
    let master = a.master_key.clone().or_else(|| std::env::var(MASTER_KEY_ENV).ok()).with_context(|| format!("--master-key or {MASTER_KEY_ENV} is required"))?;
    let master = MasterKey::from_hex(&master)?;
    let zn_token = a.zn_token.clone().or_else(|| std::env::var("MEDIASEC_KMS_ZN_TOKEN").ok()).context("--zn-token or MEDIASEC_KMS_ZN_TOKEN is required")?;
    let admin_token = a.admin_token.clone().or_else(|| std::env::var("MEDIASEC_KMS_ADMIN_TOKEN").ok()).unwrap_or_else(|| {
        let t = hex::encode(rand::random::<[u8; 16]>());
        eprintln!("admin token (generated): {t}");
        t
    });
    let domain = a.domain.clone().unwrap_or_else(|| a.fqdn.strip_prefix("kms.").unwrap_or(&a.fqdn).to_owned());
    let policy = match &a.policy {
        Some(p) => Some(Policies::from_toml(&std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?)?),
        None => None,
    };
    let peers = zk_peers(&a)?;
    runtime()?.block_on(async move {
        let persist = Persist::new(open_store(&a.store).await?, master);
        let now_ms = u64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis())?;
        if let Some(p) = &policy {
            persist.put_document(p, "cli", now_ms).await?;
        }
        for u in &a.users {
            let uid = mediasec_kms::identity::KmsUid::parse(u)?;
            persist.put_user(&mediasec_kms::users::User { uid, enabled: true }, "cli", now_ms).await?;
        }
        let zn = Arc::new(BsfZn::new(Endpoint::http(&a.bsf)?, zn_token, a.fqdn.clone()));
        let cfg = KmsConfig { fqdn: a.fqdn.clone(), domain, skew: a.skew };
        let service = Service::start(cfg, persist, zn, peers, admin_token, os_random()).await?;
        let listener = tokio::net::TcpListener::bind(&a.listen).await.with_context(|| format!("binding {}", a.listen))?;
        println!("KMS {} listening on http://{}", a.fqdn, listener.local_addr()?);
        if a.reload > 0 {
            let s = Arc::clone(&service);
            let every = Duration::from_secs(a.reload);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    if let Err(e) = s.reload().await {
                        tracing::warn!(error = %e, "reload from the store failed");
                    }
                }
            });
        }
        tokio::select! {
            r = serve(listener, service) => r?,
            _ = tokio::signal::ctrl_c() => {}
        }
        Ok(ExitCode::SUCCESS)
    })
}
