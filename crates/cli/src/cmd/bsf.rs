//! `mediasec bsf`: run the GBA BSF (Ub, Zn, admin API), manage its subscribers, replace its
//! master key (`rekey`), and benchmark it (see docs/gba.md).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};

use super::runtime;
use mediasec_bsf::client;
use mediasec_bsf::graceful::Serving;
use mediasec_bsf::server::{Bsf, ServerConfig};
use mediasec_bsf::rekey::PREVIOUS_MASTER_KEY_ENV;
use mediasec_bsf::store::{MASTER_KEY_ENV, Store, Subscriber};
use mediasec_kms_store::sealed::{MasterKey, MasterKeys};
use mediasec_gba::bsf::BsfConfig;
use mediasec_gba::milenage::Milenage;
use mediasec_gba::ue::UeBootstrap;

/// Arguments of `mediasec bsf`.
#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct Args {
    #[command(subcommand)]
    action: Option<Action>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Store: a file path (embedded redb, created if missing) or `postgres://...` (shared by
    /// BSF replicas; libpq's `sslmode`/`sslrootcert`; the password may come from env
    /// PGPASSWORD or ~/.pgpass instead). `--db` is the former spelling.
    #[arg(long, visible_alias = "db")]
    store: Option<String>,
    /// Master key sealing K, OPc/OP and Ks in the store, 64 hex digits (else env
    /// MEDIASEC_BSF_MASTER_KEY). Required; every replica and `bsf subscriber` uses the same.
    #[arg(long)]
    master_key: Option<String>,
    /// A previous master key, 64 hex digits, values are also opened with but never sealed
    /// with (repeat; else env MEDIASEC_BSF_PREVIOUS_MASTER_KEY, comma-separated): the online
    /// rotation's phases (docs/gba.md § Master-key rotation).
    #[arg(long = "previous-master-key")]
    previous_master_keys: Vec<String>,
    /// Listen address (Ub, Zn, admin and /metrics on one port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    /// BSF FQDN: Digest realm and B-TID domain.
    #[arg(long, default_value = "bsf.mnc001.mcc001.pub.3gppnetwork.org")]
    domain: String,
    /// Bootstrapping key lifetime, seconds.
    #[arg(long, default_value_t = 86_400)]
    key_lifetime: u64,
    /// Zn bearer token (else env MEDIASEC_BSF_ZN_TOKEN, else a random one is printed).
    #[arg(long)]
    zn_token: Option<String>,
    /// Admin API bearer token (else env MEDIASEC_BSF_ADMIN_TOKEN, else random, printed).
    #[arg(long)]
    admin_token: Option<String>,
    /// Serve HTTPS with this PEM certificate chain (needs --tls-key).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// PEM CA that issues NAF client certificates (Zn then accepts a verified client
    /// certificate instead of the bearer token).
    #[arg(long, requires = "tls_cert")]
    naf_client_ca: Option<PathBuf>,
}

#[derive(clap::Subcommand)]
enum Action {
    /// Provision subscribers in the store (a redb file while the server is stopped, else use
    /// the admin API; PostgreSQL at any time).
    Subscriber {
        #[command(subcommand)]
        op: Box<SubscriberOp>,
    },
    /// Replace the master key: re-seal K, OPc/OP, Ks and the challenges in flight under a new
    /// one, and seal what earlier versions left in the clear (offline: stop every BSF using
    /// the store first; resumable: an interrupted run is finished by running it again).
    Rekey(super::rekey::Args),
    /// Measure bootstraps/s and Zn look-ups/s against an in-process BSF on loopback.
    Bench {
        /// Number of bootstraps (Zn look-ups: 10x as many).
        #[arg(long, default_value_t = 200)]
        n: usize,
        /// Concurrent clients.
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
    },
}

#[derive(clap::Subcommand)]
enum SubscriberOp {
    /// Add a subscriber.
    Add {
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        usim: super::UsimKeys,
        /// AMF (4 hex digits).
        #[arg(long, default_value = "8000")]
        amf: String,
        /// Initial SQN_HE.
        #[arg(long, default_value_t = 0)]
        sqn: u64,
        /// An IMPU of the user (repeatable).
        #[arg(long)]
        impu: Vec<String>,
        /// GBA user security settings, a JSON value returned to NAFs as is.
        #[arg(long)]
        guss: Option<String>,
        /// UICC type (GUSS bsfInfo.uiccType): GBA (GBA_ME bootstrapping) or GBA_U (TS 33.220
        /// clause 5: the BSF sends AUTN*, Zn also serves Ks_int_NAF to GBA_U aware NAFs).
        #[arg(long, value_parser = ["GBA", "GBA_U"])]
        uicc_type: Option<String>,
    },
    /// List subscribers (secrets are not shown, but opened: a wrong master key fails here).
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Remove a subscriber.
    Remove {
        #[command(flatten)]
        store: StoreArgs,
        /// IMPI.
        #[arg(long)]
        impi: String,
    },
}

/// The store and its master key, as every `bsf subscriber` operation takes them.
#[derive(clap::Args)]
struct StoreArgs {
    /// Store: a redb file path or `postgres://...` (`--db` is the former spelling).
    #[arg(long, visible_alias = "db")]
    store: String,
    /// Master key sealing K, OPc/OP and Ks, 64 hex digits (else env MEDIASEC_BSF_MASTER_KEY):
    /// the one the BSF serves with.
    #[arg(long)]
    master_key: Option<String>,
    /// A previous master key the BSF also opens with (repeat; else env
    /// MEDIASEC_BSF_PREVIOUS_MASTER_KEY): as the server's option.
    #[arg(long = "previous-master-key")]
    previous_master_keys: Vec<String>,
}

impl StoreArgs {
    async fn open(&self) -> anyhow::Result<Store> {
        open_store(&self.store, master_keys(self.master_key.as_deref(), &self.previous_master_keys)?).await
    }
}

/// The master keys from `--master-key` (else [`MASTER_KEY_ENV`]; required, as the KMS's) and
/// `--previous-master-key` (else [`PREVIOUS_MASTER_KEY_ENV`]).
fn master_keys(arg: Option<&str>, previous: &[String]) -> anyhow::Result<MasterKeys> {
    super::rekey::server_keys(arg, MASTER_KEY_ENV, previous, PREVIOUS_MASTER_KEY_ENV)
}

fn token(arg: Option<String>, env: &str, what: &str) -> String {
    arg.or_else(|| std::env::var(env).ok()).unwrap_or_else(|| {
        let t = hex::encode(rand::random::<[u8; 16]>());
        eprintln!("{what} token (generated): {t}");
        t
    })
}

pub(crate) fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.action {
        None => serve(args.serve),
        Some(Action::Subscriber { op }) => subscriber(*op),
        Some(Action::Rekey(a)) => super::rekey::run(a, super::rekey::Service::Bsf),
        Some(Action::Bench { n, concurrency }) => bench(n, concurrency.max(1)),
    }
}

fn serve(a: ServeArgs) -> anyhow::Result<ExitCode> {
    let Some(spec) = a.store else { bail!("--store PATH|postgres://... is required to serve") };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into())).with_writer(std::io::stderr).try_init();
    let master = master_keys(a.master_key.as_deref(), &a.previous_master_keys)?;
    let mut bsf = BsfConfig::new(a.domain);
    bsf.key_lifetime = a.key_lifetime;
    let cfg = ServerConfig {
        bsf,
        zn_token: token(a.zn_token, "MEDIASEC_BSF_ZN_TOKEN", "Zn"),
        admin_token: token(a.admin_token, "MEDIASEC_BSF_ADMIN_TOKEN", "admin"),
    };
    let tls = match (&a.tls_cert, &a.tls_key) {
        (Some(c), Some(k)) => {
            let cert = std::fs::read(c).with_context(|| format!("reading {}", c.display()))?;
            let key = std::fs::read(k).with_context(|| format!("reading {}", k.display()))?;
            let naf_ca = match &a.naf_client_ca {
                Some(p) => Some(std::fs::read(p).with_context(|| format!("reading {}", p.display()))?),
                None => None,
            };
            Some(mediasec_bsf::tls::server_config(&cert, &key, naf_ca.as_deref())?)
        }
        _ => None,
    };
    runtime()?.block_on(async move {
        let store = open_store(&spec, master).await?;
        let label = format!("mediasec bsf on {} pid {}", a.listen, std::process::id());
        let registration = mediasec_bsf::rekey::register(&store, &label, super::rekey::liveness()).await?;
        if let Err(e) = store.check_master_key().await {
            let _ = registration.deregister().await;
            return Err(anyhow::Error::from(e).context("the master key does not open this store"));
        }
        let keys = store.clone();
        let state = Bsf::new(cfg, store);
        let listener = tokio::net::TcpListener::bind(&a.listen).await.with_context(|| format!("binding {}", a.listen))?;
        let addr = listener.local_addr()?;
        let server = async move {
            match tls {
                Some(cfg) => {
                    println!("listening on https://{addr}");
                    mediasec_bsf::server::serve_tls(mediasec_bsf::tls::TlsListener::new(listener, cfg)?, state, std::future::pending()).await
                }
                None => {
                    println!("listening on http://{addr}");
                    tokio::select! {
                        r = mediasec_bsf::server::serve(listener, state, std::future::pending()) => r,
                        _ = tokio::signal::ctrl_c() => Ok(()),
                    }
                }
            }
            .context("server")
        };
        super::rekey::serve_registered(registration, keys.keys(), server).await?;
        Ok(ExitCode::SUCCESS)
    })
}

/// Opens the store named by `--store`, with the KMS's rule (`postgres://` or a file path),
/// sealing under `master`. One process holds an embedded store, so its challenges in flight
/// stay in memory ([`Store::challenges_in_memory`]); replicas on PostgreSQL store them.
async fn open_store(spec: &str, master: MasterKeys) -> anyhow::Result<Store> {
    let store = Store::new(super::kms::open_store(spec).await?, master);
    Ok(if super::kms::is_postgres(spec) { store } else { store.challenges_in_memory() })
}

fn subscriber(op: SubscriberOp) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(subscriber_op(op))
}

async fn subscriber_op(op: SubscriberOp) -> anyhow::Result<ExitCode> {
    match op {
        SubscriberOp::Add { store, usim: super::UsimKeys { impi, k, opc, op }, amf, sqn, impu, guss, uicc_type } => {
            let guss: Option<serde_json::Value> = guss.map(|g| serde_json::from_str(&g)).transpose().context("--guss is not JSON")?;
            let guss = match uicc_type {
                None => guss,
                Some(t) => Some(with_uicc_type(guss, &t)?),
            };
            let s = Subscriber { impi, k, opc, op, amf, sqn, impus: impu, guss };
            // Adding seals: registered as a server for the time of it, so that it is refused
            // while live BSFs could not open its key (docs/gba.md § Master-key rotation).
            let store = store.open().await?;
            let registration = mediasec_bsf::rekey::register(&store, &format!("mediasec bsf subscriber add pid {}", std::process::id()), super::rekey::liveness()).await?;
            let added = store.add_subscriber(&s).await;
            registration.deregister().await?;
            added?;
            println!("added {}", s.impi);
        }
        SubscriberOp::List { store } => {
            for s in store.open().await?.subscribers().await? {
                println!("{}", s.public_view());
            }
        }
        SubscriberOp::Remove { store, impi } => {
            if !store.open().await?.remove_subscriber(&impi).await? {
                eprintln!("no such subscriber: {impi}");
                return Ok(ExitCode::FAILURE);
            }
            println!("removed {impi}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Sets `bsfInfo.uiccType` in the GUSS JSON (an object, created if absent).
fn with_uicc_type(guss: Option<serde_json::Value>, uicc_type: &str) -> anyhow::Result<serde_json::Value> {
    let mut guss = guss.unwrap_or_else(|| serde_json::json!({}));
    let Some(obj) = guss.as_object_mut() else { bail!("--guss must be a JSON object to add --uicc-type") };
    let info = obj.entry("bsfInfo").or_insert_with(|| serde_json::json!({}));
    let Some(info) = info.as_object_mut() else { bail!("--guss bsfInfo must be a JSON object") };
    info.insert("uiccType".into(), uicc_type.into());
    Ok(guss)
}

fn bench(n: usize, concurrency: usize) -> anyhow::Result<ExitCode> {
    const DOMAIN: &str = "bsf.bench.invalid";
    let db = std::env::temp_dir().join(format!("mediasec-bsf-bench-{}.redb", std::process::id()));
    let _ = std::fs::remove_file(&db);
    let store = Store::open(&db, MasterKey::random()?)?;
    let keys: Vec<([u8; 16], [u8; 16])> = (0..concurrency).map(|_| (rand::random(), rand::random())).collect();
    let token = hex::encode(rand::random::<[u8; 16]>());
    let result = runtime()?.block_on(async move {
        for (i, (k, opc)) in keys.iter().enumerate() {
            store.add_subscriber(&Subscriber::with_opc(format!("bench{i}@ims.bench.invalid"), k, opc, vec![format!("sip:bench{i}@bench.invalid")])).await?;
        }
        let state = Bsf::new(ServerConfig { bsf: BsfConfig::new(DOMAIN), zn_token: token.clone(), admin_token: String::new() }, store);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = client::Endpoint::http(&format!("http://{}", listener.local_addr()?))?;
        let served = Arc::clone(&state);
        let server = Serving::spawn("BSF", |until| mediasec_bsf::server::serve(listener, served, until));
        let per = n.div_ceil(concurrency);
        let t0 = Instant::now();
        let mut tasks = Vec::new();
        for (i, (k, opc)) in keys.into_iter().enumerate() {
            let url = url.clone();
            tasks.push(tokio::spawn(async move {
                let mut sqn_ms = 0;
                let mut btids = Vec::new();
                for _ in 0..per {
                    let ue = UeBootstrap::new(format!("bench{i}@ims.bench.invalid"), DOMAIN, Milenage::with_opc(&k, &opc), sqn_ms);
                    let (boot, s) = client::bootstrap(&url, ue).await?;
                    sqn_ms = s;
                    btids.push(boot.btid.to_string());
                }
                Ok::<_, mediasec_bsf::BsfError>(btids)
            }));
        }
        let mut btids = Vec::new();
        for t in tasks {
            btids.extend(t.await??);
        }
        let boot_secs = t0.elapsed().as_secs_f64();
        let lookups = btids.len() * 10;
        let t1 = Instant::now();
        let mut tasks = Vec::new();
        for chunk in btids.chunks(btids.len().div_ceil(concurrency).max(1)) {
            let (url, token, chunk) = (url.clone(), token.clone(), chunk.to_vec());
            tasks.push(tokio::spawn(async move {
                for _ in 0..10 {
                    for b in &chunk {
                        client::zn_lookup(&url, &token, b, "kms.bench.invalid", "0100000006").await?.ok_or(mediasec_bsf::BsfError::Status { status: 404, body: b.clone() })?;
                    }
                }
                Ok::<_, mediasec_bsf::BsfError>(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        let zn_secs = t1.elapsed().as_secs_f64();
        server.shutdown().await;
        println!("bootstraps: {} in {boot_secs:.2} s = {:.0}/s (each: 2 HTTP round trips and 3 durable store writes: the SQN swap, the session and its index row; the challenge in flight stays in memory with an embedded store; concurrency {concurrency})", btids.len(), btids.len() as f64 / boot_secs);
        println!("Zn look-ups: {lookups} in {zn_secs:.2} s = {:.0}/s", lookups as f64 / zn_secs);
        anyhow::Ok(())
    });
    let _ = std::fs::remove_file(&db);
    result?;
    Ok(ExitCode::SUCCESS)
}
