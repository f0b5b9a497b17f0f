//! `mediasec kms rekey` and `mediasec bsf rekey`: replace the master key a store's secrets
//! are sealed under ([`mediasec_kms_store::rekey`]; docs/kms.md § Master-key rotation,
//! docs/gba.md § Storage). Offline: every server using the store is stopped first.

use std::ops::ControlFlow;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, bail};
use mediasec_kms_store::rekey::{Keys, Progress};
use mediasec_kms_store::sealed::MasterKey;
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
    #[arg(long)]
    ignore_other_sessions: bool,
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

/// Opens the store for a rekey: an existing redb file (never creates one), or PostgreSQL
/// with no other session on the database unless `ignore_other_sessions`.
async fn open(a: &Args, scope: &str) -> anyhow::Result<Arc<dyn Store>> {
    if !is_postgres(&a.store) {
        let path = std::path::Path::new(&a.store);
        if !path.is_file() {
            bail!("{}: no such store file", path.display());
        }
        let store = RedbStore::open(path).with_context(|| format!("opening {} (is a {scope} server still running on it? stop it first)", path.display()))?;
        return Ok(Arc::new(store));
    }
    let pg = PgStore::connect(&a.store).await.context("connecting to PostgreSQL")?;
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
        println!("rekey {scope}: started");
        let report = match service {
            Service::Kms => mediasec_kms::rekey::rekey(&*store, keys, &mut progress).await?,
            Service::Bsf => mediasec_bsf::rekey::rekey(&*store, keys, &mut progress).await?,
        };
        println!("rekey {scope}: done, {report}; start the {scope} servers with the new master key");
        Ok(ExitCode::SUCCESS)
    })
}
