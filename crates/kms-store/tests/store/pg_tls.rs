//! TLS to a real PostgreSQL (`ssl=on`, a certificate for `localhost` and 127.0.0.1 issued by a
//! test CA made here with rcgen): each `sslmode` means what it means to libpq, and the server
//! itself says whether the session is encrypted (`pg_stat_ssl`).

use mediasec_kms_store::pg_lab::{PgLab, PgLabTls};
use mediasec_kms_store::{PgStore, StoreError};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

use super::{TempDir, conformance, rt};

/// A test CA; its certificate is written to `<dir>/<name>.pem`.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    pem_path: std::path::PathBuf,
}

impl Ca {
    fn new(dir: &TempDir, name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name.push(DnType::CommonName, format!("mediasec test CA {name}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key")).expect("CA cert");
        let pem_path = dir.0.join(format!("{name}.pem"));
        std::fs::write(&pem_path, issuer.pem()).expect("write CA");
        Self { issuer, pem_path }
    }

    /// A server certificate for `names` (DNS names or IP addresses).
    fn server_cert(&self, names: &[&str]) -> PgLabTls {
        let key = KeyPair::generate().expect("server key");
        let mut params = CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).expect("params");
        params.distinguished_name.push(DnType::CommonName, "mediasec test PostgreSQL");
        let cert = params.signed_by(&key, &self.issuer).expect("server cert");
        PgLabTls { cert_chain_pem: cert.pem(), key_pem: key.serialize_pem() }
    }

    fn path(&self) -> &str {
        self.pem_path.to_str().expect("UTF-8 temp path")
    }
}

/// A TLS lab server with a fresh database, and the CA that issued its certificate plus one
/// that did not.
struct TlsLab {
    lab: PgLab,
    ca: Ca,
    other_ca: Ca,
    _dir: TempDir,
}

impl TlsLab {
    fn start() -> Option<Self> {
        let dir = TempDir::new("pgtls");
        let ca = Ca::new(&dir, "ca");
        let other_ca = Ca::new(&dir, "other-ca");
        let lab = PgLab::start_tls(&ca.server_cert(&["localhost", "127.0.0.1"])).expect("PostgreSQL TLS lab")?;
        lab.create_database("kms_tls").expect("createdb");
        Some(Self { lab, ca, other_ca, _dir: dir })
    }

    /// URL form, host `localhost`.
    fn url(&self, params: &str) -> String {
        format!("postgres://postgres:s3cret-pw@localhost:{}/kms_tls?{params}", self.lab.port())
    }
}

async fn connect(conn: &str) -> Result<PgStore, StoreError> {
    PgStore::connect(conn).await
}

/// Connects and returns whether the server sees the session as TLS.
async fn tls_of(conn: &str) -> bool {
    let s = connect(conn).await.unwrap_or_else(|e| panic!("connect: {e}"));
    s.session_tls().await.expect("pg_stat_ssl")
}

/// The failure of `conn`, checked to name the mode and never to carry the password.
async fn failure(conn: &str, mode: &str) -> String {
    let e = connect(conn).await.expect_err("connection must fail").to_string();
    assert!(e.contains(&format!("sslmode={mode}")), "error does not name the mode: {e}");
    assert!(!e.contains("s3cret-pw"), "error leaks the password: {e}");
    e
}

#[test]
fn pg_tls_sslmodes_against_a_tls_server() {
    let Some(t) = TlsLab::start() else { return };
    let (ca, other) = (t.ca.path(), t.other_ca.path());
    rt().block_on(async {
        // verify-full: the chain and the name (DNS `localhost`, and the IP SAN for 127.0.0.1).
        assert!(tls_of(&t.url(&format!("sslmode=verify-full&sslrootcert={ca}"))).await);
        let by_ip = format!("postgres://postgres@127.0.0.1:{}/kms_tls?sslmode=verify-full&sslrootcert={ca}", t.lab.port());
        assert!(tls_of(&by_ip).await, "IP address SAN");

        // verify-full / verify-ca with a CA that did not issue the certificate: refused.
        let e = failure(&t.url(&format!("sslmode=verify-full&sslrootcert={other}")), "verify-full").await;
        assert!(e.contains("certificate check against the root CA file") && e.contains(other), "{e}");
        failure(&t.url(&format!("sslmode=verify-ca&sslrootcert={other}")), "verify-ca").await;

        // A host name the certificate does not carry (connecting to 127.0.0.1 by `hostaddr`,
        // key=value form): verify-full refuses, verify-ca accepts (chain only).
        let port = t.lab.port();
        let kv = |mode: &str| {
            format!("host=db.invalid hostaddr=127.0.0.1 port={port} user=postgres password='s3cret-pw' dbname=kms_tls sslmode={mode} sslrootcert='{ca}'")
        };
        let e = failure(&kv("verify-full"), "verify-full").await;
        assert!(e.contains("host name check failed") && e.contains("db.invalid"), "{e}");
        assert!(tls_of(&kv("verify-ca")).await);
        // Only `hostaddr` (no name): TLS still runs for the modes that check no name.
        assert!(tls_of(&format!("hostaddr=127.0.0.1 port={port} user=postgres dbname=kms_tls sslmode=verify-ca sslrootcert='{ca}'")).await);

        // require: with a root CA file it checks the chain as verify-ca does (libpq); the
        // issuing CA passes, another CA fails.
        assert!(tls_of(&t.url(&format!("sslmode=require&sslrootcert={ca}"))).await);
        let e = failure(&t.url(&format!("sslmode=require&sslrootcert={other}")), "require").await;
        assert!(e.contains("certificate check against the root CA file"), "{e}");
        // Without a root CA file it encrypts without checking the certificate.
        if !default_root_file_exists() {
            assert!(tls_of(&t.url("sslmode=require")).await);
            // prefer (the default): TLS when the server offers it.
            assert!(tls_of(&t.url("")).await);
        }
        // prefer with a root CA file the certificate does not chain to: libpq falls back to a
        // connection without TLS.
        assert!(!tls_of(&t.url(&format!("sslmode=prefer&sslrootcert={other}"))).await);

        // disable: no TLS even though the server offers it.
        assert!(!tls_of(&t.url("sslmode=disable")).await);
        // allow: without TLS first, and the server accepts that.
        assert!(!tls_of(&t.url("sslmode=allow")).await);

        // verify-* without any root CA file: refused before connecting, naming the file.
        let missing = t.url("sslmode=verify-full&sslrootcert=/nonexistent/ca.pem");
        let e = connect(&missing).await.expect_err("no root file").to_string();
        assert!(e.contains("verify-full") && e.contains("/nonexistent/ca.pem") && !e.contains("s3cret-pw"), "{e}");
    });
}

/// libpq's implicit root CA file; when it exists on the test machine, the modes without
/// `sslrootcert` check against it and the unchecked cases are not asserted.
fn default_root_file_exists() -> bool {
    std::env::var_os("HOME").is_some_and(|h| std::path::Path::new(&h).join(".postgresql/root.crt").exists())
}

#[test]
fn pg_tls_require_refuses_a_server_without_tls() {
    let Some(lab) = PgLab::start().expect("PostgreSQL lab") else { return };
    let url = lab.create_database("kms_plain").expect("createdb");
    rt().block_on(async {
        let e = failure(&format!("{url}?sslmode=require"), "require").await;
        assert!(e.contains("server does not support TLS"), "{e}");
        // prefer (the default) connects without TLS, as before TLS support.
        assert!(!tls_of(&url).await);
        // Over the Unix-domain socket sslmode is ignored (libpq), even verify-full.
        let socket = format!("host='{}' port={} user=postgres dbname=kms_plain sslmode=verify-full", lab.dir().display(), lab.port());
        assert!(!tls_of(&socket).await);
    });
}

#[test]
fn pg_tls_conformance_over_verify_full() {
    let Some(t) = TlsLab::start() else { return };
    rt().block_on(async {
        let s = connect(&t.url(&format!("sslmode=verify-full&sslrootcert={}", t.ca.path()))).await.expect("connect");
        assert!(s.session_tls().await.expect("pg_stat_ssl"));
        conformance(&s).await;
        assert!(s.session_tls().await.expect("pg_stat_ssl"), "still the TLS session");
    });
}
