//! A throw-away PostgreSQL server for tests (of this crate and of the KMS): `initdb` into a
//! temporary directory, `postgres` listening on 127.0.0.1 on a free port (its unix socket in
//! the same directory), stopped by PID and deleted on drop.
//!
//! ```no_run
//! # fn main() -> Result<(), mediasec_kms_store::StoreError> {
//! let Some(pg) = mediasec_kms_store::pg_lab::PgLab::start()? else { return Ok(()) }; // skipped
//! let url = pg.create_database("kms_test")?; // postgres://postgres@127.0.0.1:PORT/kms_test
//! # let _ = url; Ok(()) }
//! ```
//!
//! [`PgLab::start_tls`] starts the server with `ssl=on` and a certificate the test made (for
//! the TLS tests of [`crate::pg_tls`]); it still accepts connections without TLS.
//!
//! The binaries are taken from `$MEDIASEC_PG_BIN`, else the newest `/usr/lib/postgresql/*/bin`
//! (Debian package `postgresql`). When they are missing, [`PgLab::start`] prints a skip line
//! and returns `Ok(None)`, unless `MEDIASEC_REQUIRE_PEERS=1`, where it fails. PostgreSQL
//! refuses to run as root: under uid 0 the server and `initdb` run as the `postgres` system
//! user (created by the Debian package), which then owns the temporary directory.

use std::os::unix::fs::MetadataExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::StoreError;

/// Longest wait for the server to accept connections, and for it to stop.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

fn lab_err(what: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("PostgreSQL lab: {what}"))
}

/// A temporary directory, removed (with its content) on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `$TMPDIR/mediasec-<tag>-<pid>-<n>`.
    pub fn new(tag: &str) -> std::io::Result<Self> {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!("mediasec-{tag}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p)?;
        Ok(Self(p))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The directory holding `initdb`, `postgres`, `pg_isready` and `createdb`, if installed.
fn bin_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("MEDIASEC_PG_BIN") {
        return Some(PathBuf::from(d)).filter(|d| d.join("postgres").is_file());
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| Some((e.file_name().to_str()?.parse::<u32>().ok()?, e.path().join("bin"))))
        .filter(|(_, d)| d.join("postgres").is_file() && d.join("initdb").is_file())
        .collect();
    versions.sort();
    versions.pop().map(|(_, d)| d)
}

/// uid and gid of the `postgres` system user, from `/etc/passwd`.
fn postgres_user() -> Result<(u32, u32), StoreError> {
    let passwd = std::fs::read_to_string("/etc/passwd").map_err(|e| lab_err(format!("/etc/passwd: {e}")))?;
    passwd
        .lines()
        .find_map(|l| {
            let mut f = l.split(':');
            if f.next()? != "postgres" {
                return None;
            }
            let (_pw, uid, gid) = (f.next()?, f.next()?.parse().ok()?, f.next()?.parse().ok()?);
            Some((uid, gid))
        })
        .ok_or_else(|| lab_err("running as root and there is no `postgres` user to run the server as"))
}

/// The certificate of a TLS lab server ([`PgLab::start_tls`]).
#[derive(Clone)]
pub struct PgLabTls {
    /// The server's certificate chain (PEM), leaf first.
    pub cert_chain_pem: String,
    /// Its private key (PEM).
    pub key_pem: String,
}

impl std::fmt::Debug for PgLabTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgLabTls").finish_non_exhaustive()
    }
}

/// A running lab server. Dropping it stops the server (SIGINT, fast shutdown; SIGKILL if it
/// does not stop in 10 s) and deletes its directory.
#[derive(Debug)]
pub struct PgLab {
    bin: PathBuf,
    port: u16,
    server: Child,
    /// uid/gid the server runs as when the tests run as root.
    run_as: Option<(u32, u32)>,
    dir: TempDir,
}

impl PgLab {
    /// Initialises a cluster and starts the server; `Ok(None)` (after a skip line on stderr)
    /// when PostgreSQL is not installed and `MEDIASEC_REQUIRE_PEERS` is not `1`.
    pub fn start() -> Result<Option<Self>, StoreError> {
        Self::start_with(None)
    }

    /// As [`PgLab::start`], with TLS on (`ssl=on`) under `tls`'s certificate and key.
    pub fn start_tls(tls: &PgLabTls) -> Result<Option<Self>, StoreError> {
        Self::start_with(Some(tls))
    }

    fn start_with(tls: Option<&PgLabTls>) -> Result<Option<Self>, StoreError> {
        let Some(bin) = bin_dir() else {
            if std::env::var("MEDIASEC_REQUIRE_PEERS").is_ok_and(|v| v == "1") {
                return Err(lab_err("PostgreSQL binaries not found (install the Debian package `postgresql`, or set MEDIASEC_PG_BIN)"));
            }
            eprintln!("SKIP: PostgreSQL not installed (Debian package `postgresql`); PostgreSQL store tests skipped");
            return Ok(None);
        };
        let dir = TempDir::new("pg").map_err(|e| lab_err(format!("temp dir: {e}")))?;
        let is_root = std::fs::metadata("/proc/self").map_err(|e| lab_err(format!("/proc/self: {e}")))?.uid() == 0;
        let run_as = if is_root { Some(postgres_user()?) } else { None };
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).map_err(|e| lab_err(format!("chown: {e}")))?;
        }
        let data = dir.path().join("data");
        let out = as_user(Command::new(bin.join("initdb")), run_as)
            .current_dir(dir.path())
            .env("LC_ALL", "C")
            .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C", "--no-sync", "-D"])
            .arg(&data)
            .output()
            .map_err(|e| lab_err(format!("initdb: {e}")))?;
        if !out.status.success() {
            return Err(lab_err(format!("initdb failed: {}", String::from_utf8_lossy(&out.stderr).trim())));
        }
        let settings = match tls {
            None => Vec::new(),
            Some(tls) => {
                let cert = write_private(&dir.path().join("server.crt"), tls.cert_chain_pem.as_bytes(), run_as)?;
                let key = write_private(&dir.path().join("server.key"), tls.key_pem.as_bytes(), run_as)?;
                vec!["ssl=on".to_owned(), format!("ssl_cert_file={}", cert.display()), format!("ssl_key_file={}", key.display())]
            }
        };
        // A port probed free can be taken before the server binds it: try a few.
        let mut last = lab_err("no attempt");
        for _ in 0..3 {
            match Self::launch(&bin, &data, dir.path(), run_as, &settings) {
                Ok((server, port)) => return Ok(Some(Self { bin, port, server, run_as, dir })),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn launch(bin: &Path, data: &Path, dir: &Path, run_as: Option<(u32, u32)>, settings: &[String]) -> Result<(Child, u16), StoreError> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| lab_err(format!("probing a free port: {e}")))?
            .port();
        let log_path = dir.join(format!("postgres-{port}.log"));
        let log = std::fs::File::create(&log_path).map_err(|e| lab_err(format!("log file: {e}")))?;
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(&log_path, Some(uid), Some(gid)).map_err(|e| lab_err(format!("chown: {e}")))?;
        }
        let log2 = log.try_clone().map_err(|e| lab_err(format!("log file: {e}")))?;
        let mut server = as_user(Command::new(bin.join("postgres")), run_as)
            .current_dir(dir)
            .env("LC_ALL", "C")
            .arg("-D")
            .arg(data)
            .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=on", "-c", "max_connections=60", "-k"])
            .arg(dir)
            .args(settings.iter().flat_map(|s| ["-c", s.as_str()]))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| lab_err(format!("postgres: {e}")))?;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = server.try_wait() {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                return Err(lab_err(format!("postgres exited ({status}): {}", log.trim())));
            }
            let ready = Command::new(bin.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return Ok((server, port));
            }
            if Instant::now() > deadline {
                stop(&mut server);
                return Err(lab_err("server not ready within 30 s"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// URL of the default `postgres` database (superuser `postgres`, no password).
    pub fn url(&self) -> String {
        self.database_url("postgres")
    }

    /// URL of database `name` on this server.
    pub fn database_url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Creates an empty database (so tests sharing one server stay independent) and returns
    /// its URL. `name` must be a plain identifier.
    pub fn create_database(&self, name: &str) -> Result<String, StoreError> {
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(StoreError::Invalid(format!("database name {name:?}: use [A-Za-z0-9_]")));
        }
        let out = Command::new(self.bin.join("createdb"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres", name])
            .output()
            .map_err(|e| lab_err(format!("createdb: {e}")))?;
        if !out.status.success() {
            return Err(lab_err(format!("createdb {name}: {}", String::from_utf8_lossy(&out.stderr).trim())));
        }
        Ok(self.database_url(name))
    }

    /// The server's data and socket directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Whether the server runs as the `postgres` user (the tests run as root).
    pub fn runs_as_postgres_user(&self) -> bool {
        self.run_as.is_some()
    }
}

/// Writes `bytes` to `path` readable by the server only (mode 0600, owned by the user it runs
/// as): PostgreSQL refuses a key file others can read.
fn write_private(path: &Path, bytes: &[u8], run_as: Option<(u32, u32)>) -> Result<PathBuf, StoreError> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let err = |e: std::io::Error| lab_err(format!("{}: {e}", path.display()));
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path).map_err(err)?;
    std::io::Write::write_all(&mut f, bytes).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    if let Some((uid, gid)) = run_as {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(err)?;
    }
    Ok(path.to_owned())
}

fn as_user(mut cmd: Command, run_as: Option<(u32, u32)>) -> Command {
    if let Some((uid, gid)) = run_as {
        // std drops the supplementary groups when it changes uid.
        cmd.uid(uid).gid(gid);
    }
    cmd
}

/// Fast shutdown by PID (SIGINT), SIGKILL after [`STOP_TIMEOUT`], then reap.
fn stop(server: &mut Child) {
    let _ = Command::new("kill").args(["-INT", &server.id().to_string()]).stderr(Stdio::null()).status();
    let deadline = Instant::now() + STOP_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = server.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = server.kill();
    let _ = server.wait();
}

impl Drop for PgLab {
    fn drop(&mut self) {
        stop(&mut self.server);
    }
}
