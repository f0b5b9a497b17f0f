//! `mediasec kms`: run the KMS (Ua, admin API, /metrics, Zk) on an embedded store or
//! PostgreSQL, replace its master key (`rekey`), and generate a lab PKI for Zk (see
//! docs/kms.md).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};

use super::runtime;
use mediasec_bsf::client::Endpoint;
use mediasec_kms::bsf_zn::BsfZn;
use mediasec_kms::keyring::MASTER_KEY_ENV;
use mediasec_kms::kms::{KmsConfig, NoPeers, Peers, os_random};
use mediasec_kms::persist::Persist;
use mediasec_kms::policy::Policies;
use mediasec_kms::server::{Service, serve, serve_tls};
use mediasec_kms::zk::{ZkPeers, ZkServer};
use mediasec_kms_store::Store;
use mediasec_kms_zk::{ZkClient, ZkTls};

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
    /// Replace the master key: re-seal the key ring, KSAK, SAKKE z, LI warrants and LI audit
    /// trail under a new one (offline: stop every KMS using the store first; resumable: an
    /// interrupted run is finished by running it again).
    Rekey(super::rekey::Args),
    /// Rotate the community keys (KSAK and SAKKE z, docs/kms.md "Community key rotation"):
    /// store a new generation valid from a future month start; the current one stays valid
    /// until then. Running KMSs of the store pick it up within a minute.
    CommunityKeys(CommunityKeysArgs),
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
struct CommunityKeysArgs {
    #[command(subcommand)]
    action: CommunityKeysAction,
}

#[derive(clap::Subcommand)]
enum CommunityKeysAction {
    /// List the generations (number, window, KPAK).
    List(StoreArgs),
    /// Create the next generation.
    Rotate {
        #[command(flatten)]
        store: StoreArgs,
        /// First instant of the new generation, `YYYY-MM-DDTHH:MM:SSZ`: the first instant of
        /// a UTC month, no earlier than the month after next (default: that earliest one).
        #[arg(long)]
        valid_from: Option<String>,
    },
}

#[derive(clap::Args)]
struct StoreArgs {
    /// Store of the KMS: a file path (redb) or `postgres://...`.
    #[arg(long)]
    store: String,
    /// Master key, 64 hex digits (else env MEDIASEC_KMS_MASTER_KEY).
    #[arg(long)]
    master_key: Option<String>,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// KMS FQDN: its NAF name for Ks_NAF and its IDRkms (Zk peers know it as `kms.<domain>`).
    #[arg(long)]
    fqdn: String,
    /// Home domain of its users (default: the FQDN without a leading `kms.`).
    #[arg(long)]
    domain: Option<String>,
    /// Store: a file path (embedded redb, created if missing) or `postgres://...` (libpq's
    /// `sslmode`/`sslrootcert`; the password may come from env PGPASSWORD or ~/.pgpass instead).
    #[arg(long)]
    store: String,
    /// Ua / admin / metrics listen address.
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: String,
    /// Serve Ua over HTTPS with this PEM certificate chain (needs --tls-key).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// BSF base URL for Zn.
    #[arg(long)]
    bsf: String,
    /// Zn bearer token (else env MEDIASEC_KMS_ZN_TOKEN).
    #[arg(long)]
    zn_token: Option<String>,
    /// Admin API bearer token (else env MEDIASEC_KMS_ADMIN_TOKEN, else random, printed).
    #[arg(long)]
    admin_token: Option<String>,
    /// Turn on the LI API (`/li/v1`, docs/li.md) with the warrant-provisioning bearer token
    /// in this file (first line): warrants and the LI audit trail (X1-like). Needs
    /// --li-keys-token-file and --tls-cert/--tls-key: LI is served over HTTPS only. Without it
    /// the LI API answers 404.
    #[arg(long, requires = "li_keys_token_file")]
    li_token_file: Option<PathBuf>,
    /// The LI key-retrieval bearer token (first line): `POST /li/v1/keys` only (X2-like). The
    /// two LI tokens and the admin token must all differ.
    #[arg(long, requires = "li_token_file")]
    li_keys_token_file: Option<PathBuf>,
    /// Key-ring master key, 64 hex digits (else env MEDIASEC_KMS_MASTER_KEY). Required: the
    /// ring in the store is encrypted under it; new values are sealed with it.
    #[arg(long)]
    master_key: Option<String>,
    /// A previous master key, 64 hex digits, values are also opened with but never sealed
    /// with (repeat; else env MEDIASEC_KMS_PREVIOUS_MASTER_KEY, comma-separated): the online
    /// rotation's phases (docs/kms.md § Master-key rotation).
    #[arg(long = "previous-master-key")]
    previous_master_keys: Vec<String>,
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
    /// Zk listen address (needs --zk-pki; peers allowed to resolve here = --zk-peer domains).
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
    /// An external KMS certificate (JSON file, docs/high-security.md §10.9; repeat): a
    /// MIKEY-SAKKE community configured by the operator (it wins over one learned over Zk).
    #[arg(long = "community-cert")]
    community_certs: Vec<PathBuf>,
    /// Seconds between fetches of the Zk peers' KMS certificates (the first at start); 0:
    /// never (only configured certificates, or `POST /admin/v1/communities/refresh`).
    #[arg(long, default_value_t = 3600)]
    community_refresh: u64,
}

/// Opens the store named by `--store`.
pub(crate) async fn open_store(spec: &str) -> anyhow::Result<Arc<dyn Store>> {
    if is_postgres(spec) {
        open_postgres(spec).await
    } else {
        Ok(Arc::new(mediasec_kms_store::RedbStore::open(std::path::Path::new(spec)).with_context(|| format!("opening {spec}"))?))
    }
}

/// Whether a `--store` value names PostgreSQL (else it is a redb file path).
pub(crate) fn is_postgres(spec: &str) -> bool {
    spec.starts_with("postgres://") || spec.starts_with("postgresql://")
}

async fn open_postgres(url: &str) -> anyhow::Result<Arc<dyn Store>> {
    Ok(Arc::new(mediasec_kms_store::PgStore::connect(url).await.context("connecting to PostgreSQL")?))
}

pub(crate) fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.action {
        Action::Serve(a) => serve_kms(*a),
        Action::Rekey(a) => super::rekey::run(a, super::rekey::Service::Kms),
        Action::CommunityKeys(a) => community_keys(a),
        Action::Pki { out, domains } => pki(&out, &domains),
    }
}

fn community_keys(a: CommunityKeysArgs) -> anyhow::Result<ExitCode> {
    let (store, valid_from) = match a.action {
        CommunityKeysAction::List(s) => (s, None),
        CommunityKeysAction::Rotate { store, valid_from } => (store, Some(valid_from)),
    };
    let master = super::rekey::server_keys(store.master_key.as_deref(), MASTER_KEY_ENV, &[], mediasec_kms::rekey::PREVIOUS_MASTER_KEY_ENV)?;
    runtime()?.block_on(async move {
        let persist = Persist::new(open_store(&store.store).await?, master);
        mediasec_kms::rekey::check_not_rotating(persist.store(), persist.keys()).await?;
        let gens = match valid_from {
            None => persist.generations().await?.context("no community keys yet: start the KMS once first")?,
            Some(from) => {
                let from = from.as_deref().map(mediasec_gba::bootstrapping_info::parse_time).transpose().context("--valid-from")?;
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
                persist.rotate_community_keys(from, now, &|b: &mut [u8]| rand::RngCore::fill_bytes(&mut rand::rng(), b), "cli").await?
            }
        };
        for g in gens.all() {
            let from = if g.valid_from() > 0 { mediasec_kms::community::fmt_time(g.valid_from()) } else { "-".into() };
            let to = gens.valid_to(g).map_or_else(|| "-".into(), mediasec_kms::community::fmt_time);
            println!("generation {} from {from} to {to} KPAK {}", g.number(), hex::encode(g.kpak().to_uncompressed()));
        }
        Ok(ExitCode::SUCCESS)
    })
}

fn pki(out: &std::path::Path, domains: &[String]) -> anyhow::Result<ExitCode> {
    mediasec_kms_zk::pki::generate(out, domains)?;
    println!("wrote {}", out.join(mediasec_kms_zk::pki::CA_FILE).display());
    for d in domains {
        println!("wrote {} and {}", mediasec_kms_zk::pki::cert_file(out, d).display(), mediasec_kms_zk::pki::key_file(out, d).display());
    }
    Ok(ExitCode::SUCCESS)
}

/// `--zk-peer DOMAIN=HOST:PORT` list as a map.
fn zk_peer_map(a: &ServeArgs) -> anyhow::Result<BTreeMap<String, String>> {
    a.zk_peers
        .iter()
        .map(|p| p.split_once('=').map(|(d, addr)| (d.to_owned(), addr.to_owned())).with_context(|| format!("--zk-peer {p:?} is not DOMAIN=HOST:PORT")))
        .collect()
}

fn serve_kms(a: ServeArgs) -> anyhow::Result<ExitCode> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .try_init();
    let master = super::rekey::server_keys(a.master_key.as_deref(), MASTER_KEY_ENV, &a.previous_master_keys, mediasec_kms::rekey::PREVIOUS_MASTER_KEY_ENV)?;
    let zn_token = a.zn_token.clone().or_else(|| std::env::var("MEDIASEC_KMS_ZN_TOKEN").ok()).context("--zn-token or MEDIASEC_KMS_ZN_TOKEN is required")?;
    let admin_token = a.admin_token.clone().or_else(|| std::env::var("MEDIASEC_KMS_ADMIN_TOKEN").ok()).unwrap_or_else(|| {
        let t = hex::encode(rand::random::<[u8; 16]>());
        eprintln!("admin token (generated): {t}");
        t
    });
    let first_line = |f: &PathBuf| -> anyhow::Result<String> { Ok(std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?.lines().next().unwrap_or_default().trim().to_owned()) };
    let li_token = match (&a.li_token_file, &a.li_keys_token_file) {
        (Some(w), Some(k)) => Some((first_line(w)?, first_line(k)?)),
        _ => None,
    };
    let domain = a.domain.clone().unwrap_or_else(|| a.fqdn.strip_prefix("kms.").unwrap_or(&a.fqdn).to_owned());
    let policy = match &a.policy {
        Some(p) => Some(Policies::from_toml(&std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?)?),
        None => None,
    };
    let tls = match (&a.tls_cert, &a.tls_key) {
        (Some(c), Some(k)) => {
            let cert = std::fs::read(c).with_context(|| format!("reading {}", c.display()))?;
            let key = std::fs::read(k).with_context(|| format!("reading {}", k.display()))?;
            Some(mediasec_bsf::tls::server_config(&cert, &key, None)?)
        }
        _ => None,
    };
    if li_token.is_some() && tls.is_none() {
        anyhow::bail!("{}", mediasec_kms::server::LI_NEEDS_TLS);
    }
    let peer_map = zk_peer_map(&a)?;
    let mut communities = Vec::new();
    for f in &a.community_certs {
        let json = std::fs::read(f).with_context(|| format!("reading {}", f.display()))?;
        communities.push(mediasec_kms::community::decode_set(&json).with_context(|| format!("KMS certificate {}", f.display()))?);
    }
    let zk = match &a.zk_pki {
        Some(dir) => Some(ZkTls::load(dir, &domain).with_context(|| format!("loading the Zk PKI of {domain} from {}", dir.display()))?),
        None => None,
    };
    let peers: Arc<dyn Peers> = match &zk {
        Some(tls) => {
            let client = ZkClient::new(tls, peer_map.clone(), Duration::from_millis(a.zk_timeout_ms));
            Arc::new(ZkPeers::new(client, peer_map.keys().cloned().collect()))
        }
        None => Arc::new(NoPeers),
    };
    runtime()?.block_on(async move {
        let persist = Persist::new(open_store(&a.store).await?, master);
        // Registered before anything is sealed (Service::start may make a first ticket key).
        let label = format!("mediasec kms serve {} on {} pid {}", a.fqdn, a.listen, std::process::id());
        let registration = mediasec_kms::rekey::register(&persist, &label, super::rekey::liveness()).await?;
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
        if let Some((warrants, keys)) = li_token {
            service.enable_li(warrants, keys)?;
        }
        for c in communities {
            service.configure_community(c)?;
        }
        if a.community_refresh > 0 && zk.is_some() && !peer_map.is_empty() {
            let s = Arc::clone(&service);
            let every = Duration::from_secs(a.community_refresh);
            tokio::spawn(async move {
                loop {
                    // Outcomes are logged by refresh_communities; a failure keeps what was learned.
                    let _ = s.refresh_communities().await;
                    tokio::time::sleep(every).await;
                }
            });
        }
        let listener = tokio::net::TcpListener::bind(&a.listen).await.with_context(|| format!("binding {}", a.listen))?;
        println!("KMS {} listening on {}://{}", a.fqdn, if tls.is_some() { "https" } else { "http" }, listener.local_addr()?);
        if let (Some(tls), Some(addr)) = (&zk, &a.zk_listen) {
            let zl = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
            println!("Zk listening on https://{} (peers: {:?})", zl.local_addr()?, peer_map.keys().collect::<Vec<_>>());
            let serve_zk = mediasec_kms_zk::serve(zl, tls, peer_map.keys().cloned().collect::<BTreeSet<_>>(), Arc::new(ZkServer(Arc::clone(&service))));
            tokio::spawn(async move {
                if let Err(e) = serve_zk.await {
                    tracing::warn!(error = %e, "Zk server stopped");
                }
            });
        }
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
        let keys = Arc::clone(&service);
        let server = async move {
            match tls {
                Some(cfg) => serve_tls(mediasec_bsf::tls::TlsListener::new(listener, cfg)?, service, std::future::pending()).await.map_err(anyhow::Error::from),
                None => serve(listener, service, std::future::pending()).await.map_err(anyhow::Error::from),
            }
        };
        let until_ctrl_c = async move {
            tokio::select! {
                r = server => r,
                _ = tokio::signal::ctrl_c() => Ok(()),
            }
        };
        super::rekey::serve_registered(registration, keys.persist().keys(), until_ctrl_c).await?;
        Ok(ExitCode::SUCCESS)
    })
}

/// Arguments of `mediasec bench kms`.
#[derive(clap::Args)]
pub(crate) struct BenchArgs {
    /// Request+resolve pairs (each run).
    #[arg(long, default_value_t = 2000)]
    pairs: usize,
    /// Concurrent UE pairs.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Instead: issue this many tickets in-process (no HTTP) and report the RSS every tenth,
    /// to show that KMS memory does not grow with the tickets issued.
    #[arg(long)]
    tickets: Option<u64>,
}

/// Resident set size of this process in KiB (`/proc/self/statm`).
fn rss_kib() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}

struct Run {
    rate: f64,
    p50: Duration,
    p99: Duration,
}

fn summarize(mut lat: Vec<Duration>, wall: Duration) -> Run {
    lat.sort();
    Run { rate: lat.len() as f64 / wall.as_secs_f64(), p50: percentile(&lat, 0.5), p99: percentile(&lat, 0.99) }
}

pub(crate) fn bench(a: BenchArgs) -> anyhow::Result<ExitCode> {
    match a.tickets {
        Some(n) => flat_rss(n),
        None => bench_pairs(a.pairs.max(1), a.concurrency.max(1)),
    }
}

/// Request+resolve pairs over HTTP against a KMS of the loopback lab, then the same number of
/// POST pairs with the same bodies against a bare axum echo server, same client, same run.
fn bench_pairs(pairs: usize, concurrency: usize) -> anyhow::Result<ExitCode> {
    use mediasec_kms::client::KmsClient;
    use mediasec_kms::identity::Pattern;
    use mediasec_kms::lab::{DomainSpec, Lab};
    use mediasec_kms::ue::Ask;
    use std::time::{Instant, SystemTime, UNIX_EPOCH};

    let dir = std::env::temp_dir().join(format!("mediasec-bench-kms-{}", std::process::id()));
    let result = runtime()?.block_on(async {
        let users: Vec<String> = (0..concurrency).flat_map(|c| [format!("alice{c}@a.example"), format!("bob{c}@a.example")]).collect();
        let refs: Vec<&str> = users.iter().map(String::as_str).collect();
        let policy = "[domain.\"a.example\"]\nmay_call = [\"?@a.example\"]\n";
        let mut lab = Lab::start_local(&dir, &[DomainSpec { domain: "a.example", policy }], &refs).await?;
        let echo = KmsClient::new(Endpoint::http(&lab.start_echo().await?)?);
        let per = pairs.div_ceil(concurrency);
        let now = || SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let mut tasks = Vec::new();
        let mut echo_ues = Vec::new();
        for c in 0..concurrency {
            let (mut alice, ka) = lab.ue(&format!("alice{c}@a.example")).await?;
            let (mut bob, kb) = lab.ue(&format!("bob{c}@a.example")).await?;
            let ask = Ask { recipients: vec![Pattern::parse(&format!("bob{c}@a.example"))?], reusable: false, forking: false, lifetime: 300 };
            // The echo run's UEs build the same messages (with a ticket held from the start).
            let (mut alice2, ka2) = lab.ue(&format!("alice{c}@a.example")).await?;
            let (bob2, _) = lab.ue(&format!("bob{c}@a.example")).await?;
            let held2 = ka2.request_ticket(&mut alice2, &ask).await?;
            echo_ues.push((alice2, bob2, held2, ask.clone()));
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::with_capacity(per);
                for _ in 0..per {
                    let t = Instant::now();
                    let held = ka.request_ticket(&mut alice, &ask).await?;
                    let (ti, _) = alice.transfer_init(&held, &bob.uid.clone(), rand::random(), 3, now(), rand::random())?;
                    kb.resolve(&mut bob, &ti).await?;
                    lat.push(t.elapsed());
                }
                anyhow::Ok(lat)
            }));
        }
        let t = Instant::now();
        let mut lat = Vec::new();
        for task in tasks {
            lat.extend(task.await??);
        }
        let kms = summarize(lat, t.elapsed());
        let t = Instant::now();
        let mut tasks = Vec::new();
        for (alice, bob, held, ask) in echo_ues {
            let echo = echo.clone();
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::with_capacity(per);
                for _ in 0..per {
                    let t = Instant::now();
                    let (req, _) = alice.request_init(&ask, rand::random(), now(), rand::random())?;
                    anyhow::ensure!(echo.post("ticketrequest", &req).await? == req, "echo differs");
                    let (ti, _) = alice.transfer_init(&held, &bob.uid.clone(), rand::random(), 3, now(), rand::random())?;
                    let (res, _) = bob.resolve_init(&ti, rand::random(), now(), rand::random())?;
                    anyhow::ensure!(echo.post("ticketresolve", &res).await? == res, "echo differs");
                    lat.push(t.elapsed());
                }
                anyhow::Ok(lat)
            }));
        }
        let mut lat = Vec::new();
        for task in tasks {
            lat.extend(task.await??);
        }
        let echo = summarize(lat, t.elapsed());
        anyhow::Ok((kms, echo))
    });
    let _ = std::fs::remove_dir_all(&dir);
    let (kms, echo) = result?;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("KMS bench: {pairs} request+resolve pairs, {concurrency} concurrent UE pairs, HTTP/1.1 with connection reuse (keep-alive), 127.0.0.1");
    println!("{:<34} {:>10} {:>9} {:>9}", "", "pairs/s", "p50 ms", "p99 ms");
    println!("{:<34} {:>10.0} {:>9.3} {:>9.3}", "KMS (ticketrequest+ticketresolve)", kms.rate, ms(kms.p50), ms(kms.p99));
    println!("{:<34} {:>10.0} {:>9.3} {:>9.3}", "bare axum echo (same UE messages)", echo.rate, ms(echo.p50), ms(echo.p99));
    println!("KMS / echo rate: {:.0} %", 100.0 * kms.rate / echo.rate);
    Ok(ExitCode::SUCCESS)
}

/// Issues `n` tickets through the KMS core (REQUEST_INIT built by a UE, verified, ticket
/// issued, REQUEST_RESP sealed) with a clock advancing 1 ms per request, and prints the RSS.
fn flat_rss(n: u64) -> anyhow::Result<ExitCode> {
    use mediasec_kms::identity::{KmsUid, Pattern};
    use mediasec_kms::keyring::KeyRing;
    use mediasec_kms::kms::{Kms, Reply};
    use mediasec_kms::ue::{Ask, Ue};
    use mediasec_kms::users::{User, Users};
    use mediasec_kms::zn::{NafKey, StaticZn};

    let start = Duration::from_secs(1_800_000_000);
    let ks: [u8; 32] = rand::random();
    let mut zn = StaticZn::default();
    zn.insert("btid-alice", NafKey::new(&ks, vec!["sip:alice@a.example".into()], u64::MAX));
    let mut ring = KeyRing::default();
    ring.rotate(start.as_secs(), rand::random())?;
    let policies = Policies::from_toml("[domain.\"a.example\"]\nmay_call = [\"?@a.example\"]\n")?;
    let users = Users::new([User { uid: KmsUid::parse("alice@a.example")?, enabled: true }]);
    let kms = Kms::new(KmsConfig { fqdn: "kms.a.example".into(), domain: "a.example".into(), skew: 30 }, policies, users, ring, os_random());
    let ue = Ue::new(KmsUid::parse("alice@a.example")?, "kms.a.example", "btid-alice", &ks, 30);
    let ask = Ask { recipients: vec![Pattern::parse("bob@a.example")?], reusable: false, forking: false, lifetime: 300 };
    println!("{:>10} {:>10} {:>12}", "tickets", "RSS KiB", "tickets/s");
    let step = (n / 10).max(1);
    let t = std::time::Instant::now();
    runtime()?.block_on(async {
        for i in 0..n {
            let now = start + Duration::from_millis(i);
            let (req, _) = ue.request_init(&ask, i as u32, now, rand::random())?;
            match kms.ticket_request(&req, now, &zn).await {
                Reply::Response(_) => {}
                other => bail!("ticket {i}: {other:?}"),
            }
            if (i + 1) % step == 0 {
                println!("{:>10} {:>10} {:>12.0}", i + 1, rss_kib().unwrap_or(0), (i + 1) as f64 / t.elapsed().as_secs_f64());
            }
        }
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}
