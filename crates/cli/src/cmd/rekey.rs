//! `mediasec kms rekey` and `mediasec bsf rekey`: replace the master key a store's secrets
//! are sealed under ([`mediasec_kms_store::rekey`]; docs/kms.md § Master-key rotation,
//! docs/gba.md § Storage). Offline: every server using the store is stopped first; or
//! `--online` on PostgreSQL: every live server already seals with the new key and opens with
//! the old one (`--previous-master-key`), which the store's server rows show
//! ([`mediasec_kms_store::servers`]). Also the servers' key options
//! ([`server_keys`]) and their registration ([`serve_registered`]).

use std::ops::ControlFlow;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, bail};
use mediasec_kms_store::rekey::{Keys, Mode, Progress};
use mediasec_kms_store::sealed::{MasterKey, MasterKeys};
use mediasec_kms_store::servers::{Liveness, Registration};
use mediasec_kms_store::{PgStore, RedbStore, Store};

use super::kms::is_postgres;
use super::runtime;

/// Rows between two progress lines of one table.
const PROGRESS_EVERY: u64 = 1000;

/// Arguments of `mediasec kms rekey` / `mediasec bsf rekey`.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Store: a redb file path (it must exist; the server using it must be stopped, redb
    /// refuses a second opener) or `postgres://...` (every replica using the database must be
    /// stopped first; the password may come from env PGPASSWORD instead).
    #[arg(long, visible_alias = "db")]
    store: String,
    /// The current master key, 64 hex digits (else env MEDIASEC_KMS_MASTER_KEY for `kms
    /// rekey`, MEDIASEC_BSF_MASTER_KEY for `bsf rekey`). A key on the command line is visible
    /// to other local users in `ps`: prefer the environment.
    #[arg(long)]
    master_key: Option<String>,
    /// The new master key, 64 hex digits (else env MEDIASEC_KMS_NEW_MASTER_KEY /
    /// MEDIASEC_BSF_NEW_MASTER_KEY); the servers start with it afterwards. Visible in `ps` on
    /// the command line, as --master-key: prefer the environment.
    #[arg(long)]
    new_master_key: Option<String>,
    /// PostgreSQL: run although other sessions are connected to the database. Only when none
    /// of them is a server of this store: a replica serving during a rekey could seal new
    /// rows under the old key after they were walked.
    #[arg(long, conflicts_with = "online")]
    ignore_other_sessions: bool,
    /// PostgreSQL: re-seal while the servers keep serving. Refused unless every live server
    /// of the store seals with the new key and opens with the old one (started with
    /// `--master-key NEW --previous-master-key OLD`); servers that stopped refreshing their
    /// row 60 s ago count as gone. The rolling procedure: docs/kms-store.md § Online rotation.
    #[arg(long)]
    online: bool,
}

/// Which service's store is rotated.
#[derive(Clone, Copy)]
pub(crate) enum Service {
    /// The KMS ([`mediasec_kms::rekey`]).
    Kms,
    /// The BSF ([`mediasec_bsf::rekey`]).
    Bsf,
}

impl Service {
    fn scope(self) -> &'static str {
        match self {
            Self::Kms => mediasec_kms::rekey::SCOPE,
            Self::Bsf => mediasec_bsf::rekey::SCOPE,
        }
    }

    /// The environment variables of the current and the new key.
    fn envs(self) -> (&'static str, &'static str) {
        match self {
            Self::Kms => (mediasec_kms::keyring::MASTER_KEY_ENV, mediasec_kms::rekey::NEW_MASTER_KEY_ENV),
            Self::Bsf => (mediasec_bsf::store::MASTER_KEY_ENV, mediasec_bsf::rekey::NEW_MASTER_KEY_ENV),
        }
    }
}

/// A key from its option, else its environment variable; required.
fn key(arg: Option<&str>, option: &str, env: &str) -> anyhow::Result<MasterKey> {
    let hex = match arg {
        Some(h) => h.to_owned(),
        None => std::env::var(env).with_context(|| format!("{option} or {env} is required (64 hex digits)"))?,
    };
    MasterKey::from_hex(&hex).with_context(|| format!("{option} / {env}"))
}

/// The keys of a server: `seal` (else env `seal_env`) seals and opens; each of `previous`
/// (else the comma-separated keys of env `previous_env`) only opens (an online rotation,
/// docs/kms-store.md § Online rotation).
pub(crate) fn server_keys(seal: Option<&str>, seal_env: &str, previous: &[String], previous_env: &str) -> anyhow::Result<MasterKeys> {
    let seal = key(seal, "--master-key", seal_env)?;
    let previous: Vec<String> = if previous.is_empty() {
        std::env::var(previous_env).map(|v| v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()).unwrap_or_default()
    } else {
        previous.to_vec()
    };
    let previous = previous.iter().map(|h| MasterKey::from_hex(h)).collect::<Result<Vec<_>, _>>().with_context(|| format!("--previous-master-key / {previous_env}"))?;
    let keys = MasterKeys::new(seal, previous).context("--master-key and --previous-master-key")?;
    tracing::info!(seals = %keys.sealing().fingerprint(), opens = ?keys.opening().map(MasterKey::fingerprint).collect::<Vec<_>>(), "master keys");
    Ok(keys)
}

/// Runs `server` while refreshing the server's row `reg` ([`Registration::keep_alive`]); a
/// refresh refused ends the server with that error (another key may be in use: it may no
/// longer seal). The row is removed at the end; a crash leaves it to go stale.
pub(crate) async fn serve_registered(reg: Registration, keys: &MasterKeys, server: impl Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    let result = tokio::select! {
        r = server => r,
        e = reg.keep_alive(keys) => Err(anyhow::Error::from(e).context("this server may no longer serve the store")),
    };
    if let Err(e) = reg.deregister().await {
        tracing::warn!(error = %e, "removing this server's row from the store");
    }
    result
}

/// The liveness settings of servers and of `rekey --online` (the defaults: a refresh every
/// 10 s, a server gone after 60 s without one).
pub(crate) fn liveness() -> Liveness {
    Liveness::default()
}

/// Opens the store for a rekey: an existing redb file (never creates one), or PostgreSQL
/// with no other session on the database unless `ignore_other_sessions` or `online`.
async fn open(a: &Args, scope: &str) -> anyhow::Result<Arc<dyn Store>> {
    if !is_postgres(&a.store) {
        if a.online {
            bail!("--online needs a PostgreSQL store: an embedded store is held by its one server (redb locks the file), so its rotation is offline");
        }
        let path = std::path::Path::new(&a.store);
        if !path.is_file() {
            bail!("{}: no such store file", path.display());
        }
        let store = RedbStore::open(path).with_context(|| format!("opening {} (is a {scope} server still running on it? stop it first)", path.display()))?;
        return Ok(Arc::new(store));
    }
    let pg = PgStore::connect(&a.store).await.context("connecting to PostgreSQL")?;
    if a.online {
        return Ok(Arc::new(pg));
    }
    let others = pg.other_sessions().await.context("listing the other sessions of the database")?;
    if !others.is_empty() && !a.ignore_other_sessions {
        bail!(
            "{} other session(s) connected to this database ({}): stop every {scope} replica using it before a rekey; if none of them is one, run again with --ignore-other-sessions",
            others.len(),
            others.join("; ")
        );
    }
    Ok(Arc::new(pg))
}

/// Runs the rotation of `service`'s store, printing progress per table and a summary.
pub(crate) fn run(a: Args, service: Service) -> anyhow::Result<ExitCode> {
    let scope = service.scope();
    let (old_env, new_env) = service.envs();
    let keys = Keys::new(key(a.master_key.as_deref(), "--master-key", old_env)?, key(a.new_master_key.as_deref(), "--new-master-key", new_env)?)?;
    runtime()?.block_on(async move {
        let store = open(&a, scope).await?;
        // Ctrl-C stops after the row in hand; the next run finishes the rotation.
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                flag.store(true, Ordering::SeqCst);
            }
        });
        let mut progress = move |p: &Progress| {
            let rows = p.counts.rows();
            if p.table_done {
                println!("{}: {rows} rows: {}", p.table.name(), p.counts);
            } else if rows.is_multiple_of(PROGRESS_EVERY) {
                println!("{}: {rows} rows so far", p.table.name());
            }
            if stop.load(Ordering::SeqCst) { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
        };
        let mode = if a.online { Mode::Online(liveness()) } else { Mode::Offline };
        println!("rekey {scope}: started{}", if a.online { " (online)" } else { "" });
        let report = match service {
            Service::Kms => mediasec_kms::rekey::rekey(&*store, keys, mode, &mut progress).await?,
            Service::Bsf => mediasec_bsf::rekey::rekey(&*store, keys, mode, &mut progress).await?,
        };
        if a.online {
            println!("rekey {scope}: done, {report}; restart the {scope} servers one by one without --previous-master-key");
        } else {
            println!("rekey {scope}: done, {report}; start the {scope} servers with the new master key");
        }
        Ok(ExitCode::SUCCESS)
    })
}
