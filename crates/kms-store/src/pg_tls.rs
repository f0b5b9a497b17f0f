//! TLS from the store to PostgreSQL, with libpq's connection parameters and their meaning
//! (PostgreSQL documentation, libpq "Parameter Key Words" `sslmode`, `sslrootcert`, `sslsni`,
//! and "SSL Support", "Protection Provided in Different Modes"):
//!
//! | `sslmode` | TLS | server certificate |
//! |---|---|---|
//! | `disable` | never | — |
//! | `allow` | first without; with TLS if that attempt fails | as `require` |
//! | `prefer` (default) | first with TLS; without if the server refuses TLS or the TLS attempt fails | as `require` |
//! | `require` | only with TLS | not checked, unless a root CA file is present: then as `verify-ca` |
//! | `verify-ca` | only with TLS | chains to a CA of the root CA file |
//! | `verify-full` | only with TLS | chains to a CA of the root CA file and names the host |
//!
//! The root CA file is `sslrootcert`, else libpq's default `~/.postgresql/root.crt`; for
//! `verify-ca`/`verify-full` it must exist. `sslmode` is ignored for Unix-domain sockets (the
//! server never offers TLS there). The host name checked by `verify-full` is `host` (not
//! `hostaddr`), against the certificate's subject alternative names (dNSName, or iPAddress when
//! `host` is an IP address); see docs/kms-store.md for where this differs from libpq.
//!
//! Why this module: tokio-postgres parses only `disable|prefer|require` (it refuses
//! `verify-ca`/`verify-full` and `sslrootcert` as unknown) and leaves TLS to an implementation
//! of its `MakeTlsConnect`/`TlsConnect` traits. No crate in Cargo.lock provides one
//! (tokio-postgres-rustls, postgres-openssl and postgres-native-tls are not in the tree), so
//! the small adapter over tokio-rustls (already used by the BSF, SIP and Zk) lives here. The
//! TLS parameters are taken out of the connection string before tokio-postgres parses the rest.

use std::error::Error as _;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, verify_server_name};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::config::Host;
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use tokio_postgres::{Client, Connection, Socket};
use tracing::warn;

use crate::StoreError;

/// libpq's `sslmode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    /// Only without TLS.
    Disable,
    /// First without TLS; if that attempt fails, with TLS.
    Allow,
    /// First with TLS; if the server refuses TLS or the TLS attempt fails, without (libpq's
    /// default, and ours).
    Prefer,
    /// Only with TLS; the certificate is checked as by `verify-ca` only when a root CA file is
    /// present.
    Require,
    /// Only with TLS; the server certificate must chain to a CA of the root CA file.
    VerifyCa,
    /// As `verify-ca`, and the certificate must name the host.
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Result<Self, StoreError> {
        Ok(match s {
            "disable" => Self::Disable,
            "allow" => Self::Allow,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            other => {
                return Err(StoreError::Invalid(format!(
                    "sslmode {other:?}: use disable, allow, prefer, require, verify-ca or verify-full"
                )));
            }
        })
    }

    /// The parameter value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Allow => "allow",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }
}

impl std::fmt::Display for SslMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The connection parameters this module handles (the others go to tokio-postgres).
const TLS_KEYS: [&str; 3] = ["sslmode", "sslrootcert", "sslsni"];

/// Where to connect and how: the tokio-postgres configuration (its password is redacted by
/// its `Debug`) and the TLS settings of the connection string.
#[derive(Clone)]
pub(crate) struct Target {
    config: tokio_postgres::Config,
    mode: SslMode,
    /// The TLS client configuration (with its certificate check) for the TLS attempts.
    tls: Arc<rustls::ClientConfig>,
    /// Whether the server certificate is checked, and against which file (for errors).
    check: Check,
    /// Every host is a Unix-domain socket: libpq ignores `sslmode` there.
    unix_only: bool,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target").field("sslmode", &self.mode).field("check", &self.check).finish_non_exhaustive()
    }
}

/// How the server certificate is checked.
#[derive(Clone, Debug)]
enum Check {
    /// Not at all (encryption only): `require`/`prefer`/`allow` without a root CA file.
    None,
    /// Chain to a CA of the file.
    Chain(PathBuf),
    /// Chain, and the host name.
    ChainAndName(PathBuf),
}

impl Target {
    /// Parses a libpq connection URL (`postgres://…?sslmode=…`) or key=value string
    /// (`host=… sslmode=…`) and loads the root CA file. Errors name the parameter, never the
    /// password. A string without a password takes the environment's `PGPASSWORD`, else the
    /// password file's ([`crate::pg_pass`]: `PGPASSFILE` or `~/.pgpass`), as libpq does, so
    /// that the password need not be on a command line (`ps` shows those).
    pub(crate) fn parse(conn: &str) -> Result<Self, StoreError> {
        Self::parse_with(conn, |name| std::env::var_os(name))
    }

    /// [`Target::parse`] with the environment as `env`.
    fn parse_with(conn: &str, env: impl Fn(&str) -> Option<std::ffi::OsString>) -> Result<Self, StoreError> {
        let (rest, params) = take_tls_params(conn)?;
        let mut mode = SslMode::Prefer;
        let mut root_cert = None;
        let mut sni = true;
        for (key, value) in params {
            match key.as_str() {
                "sslmode" => mode = SslMode::parse(&value)?,
                "sslrootcert" if value == "system" => {
                    return Err(StoreError::Invalid(
                        "sslrootcert=system (the system's trusted roots) is not supported: give the CA file (PEM)".into(),
                    ));
                }
                "sslrootcert" => root_cert = Some(PathBuf::from(value)),
                "sslsni" => {
                    sni = match value.as_str() {
                        "1" => true,
                        "0" => false,
                        other => return Err(StoreError::Invalid(format!("sslsni {other:?}: use 0 or 1"))),
                    }
                }
                _ => {}
            }
        }
        let mut config: tokio_postgres::Config =
            rest.parse().map_err(|e| StoreError::Invalid(format!("PostgreSQL connection string: {}", error_chain(&e))))?;
        if config.get_password().is_none() {
            if let Some(password) = env("PGPASSWORD") {
                config.password(password.as_encoded_bytes());
            } else if let Some(password) = crate::pg_pass::lookup(&config, &env) {
                config.password(password.as_slice());
            }
        }
        if config.get_hosts().is_empty() && !config.get_hostaddrs().is_empty() {
            // Only `hostaddr`: libpq then has no name to check (verify-full fails) and runs the
            // other modes' TLS without one; tokio-postgres refuses TLS without a `host`, so
            // the addresses stand in for it (no SNI is sent for an address).
            if mode == SslMode::VerifyFull {
                return Err(StoreError::Invalid(
                    "sslmode=verify-full needs `host`, the name the server certificate must carry (`hostaddr` alone gives none)".into(),
                ));
            }
            let addrs: Vec<String> = config.get_hostaddrs().iter().map(ToString::to_string).collect();
            for a in &addrs {
                config.host(a);
            }
        }
        let unix_only = !config.get_hosts().is_empty()
            && config.get_hostaddrs().is_empty()
            && config.get_hosts().iter().all(|h| !matches!(h, Host::Tcp(_)));
        // No TLS is attempted over Unix-domain sockets, so no root CA file is needed either.
        let check = if unix_only { Check::None } else { root_cert_check(mode, root_cert)? };
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier = ServerCheck::new(&check, &provider, mode)?;
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| StoreError::Invalid(format!("TLS configuration: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        tls.enable_sni = sni;
        // What libpq 17 sends, and what a server accepting direct TLS (`sslnegotiation=direct`)
        // requires; older servers ignore it.
        tls.alpn_protocols = vec![b"postgresql".to_vec()];
        Ok(Self { config, mode, tls: Arc::new(tls), check, unix_only })
    }

    /// The `sslmode` asked for.
    pub(crate) fn mode(&self) -> SslMode {
        self.mode
    }

    /// Connects with the mode's attempts (libpq's order), the TLS one through rustls.
    pub(crate) async fn connect(&self) -> Result<(Client, Connection<Socket, PgTlsStream>), StoreError> {
        use tokio_postgres::config::SslMode as Wire;
        let fail = |e: &AttemptError| StoreError::Unavailable(self.describe(e));
        let wire = match self.mode {
            _ if self.unix_only => Wire::Disable,
            SslMode::Disable => Wire::Disable,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => Wire::Require,
            // tokio-postgres's `prefer` already falls back when the server answers that it has
            // no TLS; libpq also retries without TLS when the TLS attempt itself fails.
            SslMode::Prefer => {
                return match self.attempt(Wire::Prefer).await {
                    Err(tls @ AttemptError::Tls(_)) => {
                        let plain = self.attempt(Wire::Disable).await.map_err(|e| {
                            StoreError::Unavailable(format!("{}; and then without TLS: {}", self.describe(&tls), self.describe(&e)))
                        })?;
                        warn!(failure = %self.describe(&tls), "sslmode=prefer: the TLS attempt failed, connected without TLS");
                        Ok(plain)
                    }
                    r => r.map_err(|e| fail(&e)),
                };
            }
            SslMode::Allow => {
                return match self.attempt(Wire::Disable).await {
                    Err(plain) => self.attempt(Wire::Require).await.map_err(|e| {
                        StoreError::Unavailable(format!("without TLS: {}; and then with TLS: {}", self.describe(&plain), self.describe(&e)))
                    }),
                    ok => ok.map_err(|e| fail(&e)),
                };
            }
        };
        self.attempt(wire).await.map_err(|e| fail(&e))
    }

    async fn attempt(&self, wire: tokio_postgres::config::SslMode) -> Result<(Client, Connection<Socket, PgTlsStream>), AttemptError> {
        let mut config = self.config.clone();
        config.ssl_mode(wire);
        config.connect(MakeRustls { tls: Arc::clone(&self.tls), mode: self.mode, check: self.check.clone() }).await.map_err(|e| {
            match e.source().and_then(|s| s.downcast_ref::<PgTlsError>()) {
                Some(tls) => AttemptError::Tls(tls.to_string()),
                None => AttemptError::Pg(e),
            }
        })
    }

    fn describe(&self, e: &AttemptError) -> String {
        match e {
            AttemptError::Tls(msg) => format!("PostgreSQL connect: {msg}"),
            AttemptError::Pg(e) => format!("PostgreSQL connect (sslmode={}): {}", self.mode, error_chain(e)),
        }
    }
}

/// One connection attempt's failure.
enum AttemptError {
    /// Our TLS handshake or certificate check failed (the message says which).
    Tls(String),
    /// Anything else tokio-postgres reports (refused, server has no TLS, authentication).
    Pg(tokio_postgres::Error),
}

/// A tokio-postgres error with its causes (its `Display` shows only the kind, e.g. "error
/// connecting to server"). No cause carries the connection string: configuration errors name
/// the parameter, not its value.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

/// libpq's choice of the root CA file and of the check for `mode`: `sslrootcert`, else
/// `~/.postgresql/root.crt`; when the file exists, every mode that uses TLS checks the chain
/// (`verify-full` the name too); when it does not, `verify-ca`/`verify-full` fail and the
/// others do not check the certificate (libpq's rule, also for a `sslrootcert` that names a
/// missing file: logged as a warning, because a mistyped path then silently turns the check
/// off).
fn root_cert_check(mode: SslMode, given: Option<PathBuf>) -> Result<Check, StoreError> {
    if mode == SslMode::Disable {
        return Ok(Check::None);
    }
    let explicit = given.is_some();
    let path = given.or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".postgresql/root.crt")));
    match (mode, path) {
        (SslMode::VerifyFull, Some(p)) if p.exists() => Ok(Check::ChainAndName(p)),
        (_, Some(p)) if p.exists() => Ok(Check::Chain(p)),
        (SslMode::VerifyCa | SslMode::VerifyFull, p) => Err(StoreError::Invalid(format!(
            "sslmode={mode} needs a root CA file: {} does not exist (set sslrootcert=<PEM file>)",
            p.map_or_else(|| "~/.postgresql/root.crt ($HOME unset)".to_owned(), |p| p.display().to_string())
        ))),
        (_, p) => {
            if let Some(p) = p.filter(|_| explicit) {
                warn!(sslmode = %mode, sslrootcert = %p.display(), "sslrootcert does not exist: the server certificate will not be checked (as libpq)");
            }
            Ok(Check::None)
        }
    }
}

fn load_roots(path: &Path, mode: SslMode) -> Result<RootCertStore, StoreError> {
    let what = |e: &dyn std::fmt::Display| StoreError::Invalid(format!("sslmode={mode}: root CA file {}: {e}", path.display()));
    let pem = std::fs::read(path).map_err(|e| what(&e))?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        roots.add(cert.map_err(|e| what(&e))?).map_err(|e| what(&e))?;
    }
    if roots.is_empty() {
        return Err(what(&"no certificate in it"));
    }
    Ok(roots)
}

/// Entry point of the `pg_conninfo` fuzz target ([`crate::fuzz_conninfo`]): a connection string
/// through the TLS-parameter split, `sslmode`/`sslsni` values and tokio-postgres's parser,
/// and `pgpass` as a password file for it — no file or environment is read (a fuzzed
/// `sslrootcert` could name a device that never ends).
pub(crate) fn fuzz_conninfo(conn: &str, pgpass: &[u8]) {
    let Ok((rest, params)) = take_tls_params(conn) else { return };
    for (key, value) in &params {
        if key == "sslmode" {
            let _ = SslMode::parse(value);
        }
    }
    if let Ok(config) = rest.parse::<tokio_postgres::Config>() {
        let _ = crate::pg_pass::password_in_file(&config, pgpass, &|_: &str| None);
    }
}

/// Splits the TLS parameters ([`TLS_KEYS`], values decoded) off a connection string; returns
/// the string without them (for tokio-postgres) and the parameters in order (the last wins, as
/// in libpq).
fn take_tls_params(conn: &str) -> Result<(String, Vec<(String, String)>), StoreError> {
    let rest = conn.strip_prefix("postgres://").or_else(|| conn.strip_prefix("postgresql://"));
    match rest {
        Some(rest) => take_from_url(conn, rest),
        None => take_from_key_values(conn),
    }
}

/// URL form: the parameters are the query (`?k=v&k=v`, percent-encoded) after the authority;
/// the user info may hold a `?` in the password, so the query starts after the first `@`, as
/// tokio-postgres reads it.
fn take_from_url(conn: &str, rest: &str) -> Result<(String, Vec<(String, String)>), StoreError> {
    let creds_end = rest.find('@').map_or(0, |i| i + 1);
    let Some(q) = rest.get(creds_end..).and_then(|after| after.find('?')).map(|i| conn.len() - rest.len() + creds_end + i) else {
        return Ok((conn.to_owned(), Vec::new()));
    };
    let (base, query) = conn.split_at(q);
    let query = query.get(1..).unwrap_or_default();
    let decode = |s: &str, what: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8()
            .map(|c| c.into_owned())
            .map_err(|_| StoreError::Invalid(format!("PostgreSQL URL: {what} is not UTF-8 after percent-decoding")))
    };
    let mut kept = Vec::new();
    let mut taken = Vec::new();
    for part in query.split('&') {
        match part.split_once('=') {
            Some((k, v)) if TLS_KEYS.contains(&decode(k, "a parameter name")?.as_str()) => {
                let key = decode(k, "a parameter name")?;
                let value = decode(v, &key)?;
                taken.push((key, value));
            }
            _ => kept.push(part),
        }
    }
    let mut out = base.to_owned();
    if !kept.is_empty() {
        out.push('?');
        out.push_str(&kept.join("&"));
    }
    Ok((out, taken))
}

/// key=value form: `key = value` pairs separated by white space; a value is a run of
/// non-space characters or `'…'`, with `\` escaping the next character in both (libpq's
/// rules, which tokio-postgres follows).
fn take_from_key_values(conn: &str) -> Result<(String, Vec<(String, String)>), StoreError> {
    let bad = |what: &str| StoreError::Invalid(format!("PostgreSQL connection string: {what}"));
    let mut chars = conn.char_indices().peekable();
    let mut kept: Vec<&str> = Vec::new();
    let mut taken = Vec::new();
    loop {
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let Some(&(start, _)) = chars.peek() else { break };
        let mut key_end = conn.len();
        while let Some(&(i, c)) = chars.peek() {
            if c.is_whitespace() || c == '=' {
                key_end = i;
                break;
            }
            chars.next();
        }
        let key = conn.get(start..key_end).unwrap_or_default();
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        if chars.next().is_none_or(|(_, c)| c != '=') {
            return Err(bad(&format!("expected `=` after {key:?}")));
        }
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        let quoted = chars.next_if(|(_, c)| *c == '\'').is_some();
        let mut end = conn.len();
        let mut closed = !quoted;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, e)) = chars.next() {
                        value.push(e);
                    }
                }
                '\'' if quoted => {
                    end = i + 1;
                    closed = true;
                    break;
                }
                c if !quoted && c.is_whitespace() => {
                    end = i;
                    break;
                }
                c => value.push(c),
            }
        }
        if !closed {
            return Err(bad(&format!("unterminated quoted value of {key:?}")));
        }
        if TLS_KEYS.contains(&key) {
            taken.push((key.to_owned(), value));
        } else {
            kept.push(conn.get(start..end).unwrap_or_default());
        }
    }
    Ok((kept.join(" "), taken))
}

/// The certificate check of one connection string, as a rustls verifier. The handshake
/// signatures are always verified (the server proves it holds the key of the certificate it
/// sent); what the mode decides is whether that certificate is trusted.
#[derive(Debug)]
struct ServerCheck {
    roots: Option<RootCertStore>,
    name: bool,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCheck {
    fn new(check: &Check, provider: &CryptoProvider, mode: SslMode) -> Result<Self, StoreError> {
        let (roots, name) = match check {
            Check::None => (None, false),
            Check::Chain(p) => (Some(load_roots(p, mode)?), false),
            Check::ChainAndName(p) => (Some(load_roots(p, mode)?), true),
        };
        Ok(Self { roots, name, algs: provider.signature_verification_algorithms })
    }
}

impl ServerCertVerifier for ServerCheck {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            let cert = ParsedCertificate::try_from(end_entity)?;
            verify_server_cert_signed_by_trust_anchor(&cert, roots, intermediates, now, self.algs.all)?;
            if self.name {
                verify_server_name(&cert, server_name)?;
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// A TLS failure, saying which mode and which check failed.
#[derive(Debug)]
pub(crate) struct PgTlsError(String);

impl std::fmt::Display for PgTlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PgTlsError {}

/// tokio-postgres's `MakeTlsConnect` over rustls: one [`RustlsConnect`] per host tried.
struct MakeRustls {
    tls: Arc<rustls::ClientConfig>,
    mode: SslMode,
    check: Check,
}

impl MakeTlsConnect<Socket> for MakeRustls {
    type Stream = PgTlsStream;
    type TlsConnect = RustlsConnect;
    type Error = PgTlsError;

    fn make_tls_connect(&mut self, host: &str) -> Result<RustlsConnect, PgTlsError> {
        // `host` is empty for a Unix-domain socket, where no TLS is attempted: fail only if
        // the handshake is actually asked for.
        Ok(RustlsConnect { tls: Arc::clone(&self.tls), mode: self.mode, check: self.check.clone(), host: host.to_owned() })
    }
}

/// One TLS handshake with `host` (the `host` parameter, which SNI and `verify-full` use).
struct RustlsConnect {
    tls: Arc<rustls::ClientConfig>,
    mode: SslMode,
    check: Check,
    host: String,
}

impl TlsConnect<Socket> for RustlsConnect {
    type Stream = PgTlsStream;
    type Error = PgTlsError;
    type Future = Pin<Box<dyn Future<Output = Result<PgTlsStream, PgTlsError>> + Send>>;

    fn connect(self, stream: Socket) -> Self::Future {
        Box::pin(async move {
            let prefix = format!("sslmode={}, host {:?}", self.mode, self.host);
            let name = ServerName::try_from(self.host.clone())
                .map_err(|e| PgTlsError(format!("{prefix}: not a host name for TLS: {e}")))?;
            let connector = tokio_rustls::TlsConnector::from(Arc::clone(&self.tls));
            match connector.connect(name, stream).await {
                Ok(s) => Ok(PgTlsStream(s)),
                Err(e) => Err(PgTlsError(format!("{prefix}: {}", self.explain(&e)))),
            }
        })
    }
}

impl RustlsConnect {
    /// Which check failed, from the rustls error inside the handshake's I/O error.
    fn explain(&self, e: &io::Error) -> String {
        let rustls_err = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
        match (rustls_err, &self.check) {
            (
                Some(rustls::Error::InvalidCertificate(
                    c @ (CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }),
                )),
                _,
            ) => format!("host name check failed: the server certificate does not name the host ({c})"),
            (Some(rustls::Error::InvalidCertificate(c)), Check::Chain(p) | Check::ChainAndName(p)) => {
                let why = match c {
                    CertificateError::UnknownIssuer => "not issued by a CA of that file (UnknownIssuer)".to_owned(),
                    CertificateError::BadSignature => {
                        "not signed by the CA of that name in that file (BadSignature)".to_owned()
                    }
                    c => c.to_string(),
                };
                format!("certificate check against the root CA file {} failed: {why}", p.display())
            }
            (Some(other), _) => format!("TLS handshake failed: {other}"),
            (None, _) => format!("TLS handshake failed: {e}"),
        }
    }
}

/// The TLS stream of a PostgreSQL connection.
pub struct PgTlsStream(tokio_rustls::client::TlsStream<Socket>);

impl AsyncRead for PgTlsStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for PgTlsStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl TlsStream for PgTlsStream {
    /// No `tls-server-end-point` binding: it is the hash of the server certificate under its
    /// signature's hash algorithm, which needs a certificate parser this crate does not carry.
    /// SCRAM then runs without channel binding (tokio-postgres's `channel_binding=prefer`).
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taken(s: &str) -> (String, Vec<(String, String)>) {
        take_tls_params(s).expect("parses")
    }

    #[test]
    fn url_tls_params_are_taken_out_and_decoded() {
        let (rest, p) = taken("postgres://kms:p%3Fw@db.example:5432/kms?sslmode=verify-full&application_name=x&sslrootcert=%2Fetc%2Fca%20x.pem");
        assert_eq!(rest, "postgres://kms:p%3Fw@db.example:5432/kms?application_name=x");
        assert_eq!(p, vec![("sslmode".into(), "verify-full".into()), ("sslrootcert".into(), "/etc/ca x.pem".into())]);
        // A `?` in the (unencoded) password is not the query.
        let (rest, p) = taken("postgresql://kms:a?b@h/db?sslmode=require");
        assert_eq!((rest.as_str(), p), ("postgresql://kms:a?b@h/db", vec![("sslmode".into(), "require".into())]));
        let (rest, p) = taken("postgres://h/db");
        assert_eq!((rest.as_str(), p.len()), ("postgres://h/db", 0));
    }

    #[test]
    fn key_value_tls_params_are_taken_out_with_quotes_and_escapes() {
        let (rest, p) = taken("host=localhost  password='a b\\'c' sslmode = verify-ca sslrootcert='/tmp/my ca.pem' dbname=kms");
        assert_eq!(rest, "host=localhost password='a b\\'c' dbname=kms");
        assert_eq!(p, vec![("sslmode".into(), "verify-ca".into()), ("sslrootcert".into(), "/tmp/my ca.pem".into())]);
        let cfg: tokio_postgres::Config = rest.parse().expect("tokio-postgres reads the rest");
        assert_eq!(cfg.get_password(), Some(&b"a b'c"[..]));
        assert!(take_tls_params("host=x sslmode='verify-ca").is_err());
        assert!(take_tls_params("host").is_err());
    }

    #[test]
    fn modes_parse_and_bad_values_name_the_parameter_not_the_password() {
        for m in ["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] {
            assert_eq!(SslMode::parse(m).expect("mode").as_str(), m);
        }
        let e = Target::parse("postgres://kms:s3cret@h/db?sslmode=verify").expect_err("bad mode").to_string();
        assert!(e.contains("sslmode") && !e.contains("s3cret"), "{e}");
        let e = Target::parse("postgres://kms:s3cret@h/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem").expect_err("no file").to_string();
        assert!(e.contains("verify-full") && e.contains("/nonexistent/ca.pem") && !e.contains("s3cret"), "{e}");
        let e = Target::parse("postgres://kms:s3cret@h/db?bogus=1").expect_err("unknown").to_string();
        assert!(e.contains("bogus") && !e.contains("s3cret"), "{e}");
        assert!(Target::parse("postgres://h/db?sslrootcert=system").is_err());
        let e = Target::parse("hostaddr=127.0.0.1 dbname=kms sslmode=verify-full").expect_err("no host").to_string();
        assert!(e.contains("verify-full") && e.contains("hostaddr"), "{e}");
        // sslmode is ignored for a Unix-domain socket (libpq): no root CA file needed.
        assert!(Target::parse("host=/run/postgresql dbname=kms sslmode=verify-full sslrootcert=/nonexistent/ca.pem").is_ok());
        assert_eq!(Target::parse("postgres://h/db").expect("default").mode(), SslMode::Prefer);
        // PGPASSWORD (libpq) when the string has no password; the string's own wins.
        let env = |name: &str| (name == "PGPASSWORD").then(|| std::ffi::OsString::from("from-env"));
        assert_eq!(Target::parse_with("postgres://kms@h/db", env).expect("env").config.get_password(), Some(&b"from-env"[..]));
        assert_eq!(Target::parse_with("host=h user=kms dbname=db", env).expect("env").config.get_password(), Some(&b"from-env"[..]));
        assert_eq!(Target::parse_with("postgres://kms:own@h/db", env).expect("own").config.get_password(), Some(&b"own"[..]));
        assert_eq!(Target::parse_with("postgres://kms@h/db", |_| None).expect("none").config.get_password(), None);
        // Then the password file (libpq's order: the string's, PGPASSWORD, the file).
        let dir = crate::pg_lab::TempDir::new("pgpass-target").expect("temp dir");
        let file = dir.path().join("pgpass");
        std::fs::write(&file, "h:5432:db:kms:from-file\n").expect("write");
        std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
        let passfile = |name: &str| (name == "PGPASSFILE").then(|| file.as_os_str().to_owned());
        assert_eq!(Target::parse_with("postgres://kms@h/db", passfile).expect("file").config.get_password(), Some(&b"from-file"[..]));
        let both = |name: &str| passfile(name).or_else(|| env(name));
        assert_eq!(Target::parse_with("postgres://kms@h/db", both).expect("env first").config.get_password(), Some(&b"from-env"[..]));
        assert_eq!(Target::parse_with("postgres://kms:own@h/db", passfile).expect("own").config.get_password(), Some(&b"own"[..]));
    }
}
