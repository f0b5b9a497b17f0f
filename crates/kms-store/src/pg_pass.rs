//! The PostgreSQL password file (`~/.pgpass`, or the file env `PGPASSFILE` names), read as
//! libpq reads it (PostgreSQL documentation, libpq § "The Password File"): lines
//! `hostname:port:database:username:password`, each of the first four fields a literal or `*`
//! (anything), `\` escaping `:` and `\`, `#` starting a comment line; the first line matching
//! the connection gives the password (up to an unescaped `:`, as libpq's `passwordFromFile`).
//! With several hosts in the connection string the first one's line is used (tokio-postgres
//! keeps one password for all; libpq looks one up per host). It is consulted only when neither the connection string
//! nor env `PGPASSWORD` has one. The file is ignored, with a warning, unless it is a regular
//! file that neither group nor others may access (`chmod 0600`), as libpq does on Unix.
//!
//! `tokio-postgres` reads no password file, hence this module.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use tokio_postgres::config::Host;
use tracing::warn;
use zeroize::{Zeroize, Zeroizing};

/// libpq's default Unix-domain socket directories (Debian's and upstream's): a connection
/// through one of them also matches a `localhost` line.
const DEFAULT_SOCKET_DIRS: [&str; 2] = ["/var/run/postgresql", "/tmp"];

/// The password the password file gives for `config`'s first host, if any. `env` is the
/// process environment (`PGPASSFILE`, `HOME`, `USER`).
pub(crate) fn lookup(config: &tokio_postgres::Config, env: &impl Fn(&str) -> Option<OsString>) -> Option<Zeroizing<Vec<u8>>> {
    let path = match env("PGPASSFILE") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env("HOME")?).join(".pgpass"),
    };
    let meta = std::fs::metadata(&path).ok()?;
    if !meta.is_file() {
        warn!(file = %path.display(), "password file is not a plain file: ignored (as libpq)");
        return None;
    }
    if meta.permissions().mode() & 0o077 != 0 {
        warn!(file = %path.display(), "password file has group or world access: ignored (as libpq); chmod 0600 it");
        return None;
    }
    let text = Zeroizing::new(std::fs::read(&path).ok()?);
    password_in_file(config, &text, env)
}

/// The password of the first line of `text` (a password file's content) matching `config`.
pub(crate) fn password_in_file(config: &tokio_postgres::Config, text: &[u8], env: &impl Fn(&str) -> Option<OsString>) -> Option<Zeroizing<Vec<u8>>> {
    let wanted = Wanted::of(config, env);
    text.split(|&b| b == b'\n').find_map(|line| wanted.password_in(line))
}

/// What a line must match: host, port, database and user of the connection.
struct Wanted {
    /// The host parameter (a name, an address or a socket directory), and whether `localhost`
    /// matches it too (a connection through the default socket directory).
    hosts: Vec<String>,
    port: String,
    database: String,
    user: String,
}

impl Wanted {
    fn of(config: &tokio_postgres::Config, env: &impl Fn(&str) -> Option<OsString>) -> Self {
        let mut hosts = Vec::new();
        match config.get_hosts().first() {
            Some(Host::Tcp(name)) => hosts.push(name.clone()),
            Some(Host::Unix(dir)) => {
                let dir = dir.to_string_lossy().into_owned();
                if DEFAULT_SOCKET_DIRS.contains(&dir.trim_end_matches('/')) {
                    hosts.push("localhost".to_owned());
                }
                hosts.push(dir);
            }
            None => match config.get_hostaddrs().first() {
                Some(addr) => hosts.push(addr.to_string()),
                None => hosts.push("localhost".to_owned()),
            },
        }
        let port = config.get_ports().first().copied().unwrap_or(5432).to_string();
        let user = config.get_user().map(str::to_owned).or_else(|| env("USER").map(|u| u.to_string_lossy().into_owned())).unwrap_or_default();
        let database = config.get_dbname().map_or_else(|| user.clone(), str::to_owned);
        Self { hosts, port, database, user }
    }

    /// The password of `line` if its four fields match.
    fn password_in(&self, line: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.first() == Some(&b'#') {
            return None;
        }
        let fields = split_fields(line);
        let [host, port, database, user, password, ..] = fields.as_slice() else { return None };
        let matches = |field: &Field, value: &str| field.any || field.text == value.as_bytes();
        let host_matches = host.any || self.hosts.iter().any(|h| h.as_bytes() == host.text.as_slice());
        (host_matches && matches(port, &self.port) && matches(database, &self.database) && matches(user, &self.user))
            .then(|| Zeroizing::new(password.text.clone()))
    }
}

/// One field of a line: its octets with the escapes removed, and whether it was a bare `*`.
struct Field {
    text: Vec<u8>,
    any: bool,
}

impl Drop for Field {
    fn drop(&mut self) {
        self.text.zeroize();
    }
}

/// The fields of a line as libpq reads them: `:` separates, `\` makes the next octet literal
/// (an escaped `*` is no wildcard), and the password ends at the first unescaped `:` after the
/// fourth.
fn split_fields(line: &[u8]) -> Vec<Field> {
    let mut fields = Vec::with_capacity(5);
    let mut current = Field { text: Vec::new(), any: false };
    let (mut escaped, mut literal) = (false, false);
    for &b in line {
        match b {
            b'\\' if !escaped => (escaped, literal) = (true, true),
            b':' if !escaped => {
                current.any = !literal && current.text == b"*";
                fields.push(std::mem::replace(&mut current, Field { text: Vec::new(), any: false }));
                literal = false;
                if fields.len() == 5 {
                    return fields;
                }
            }
            _ => {
                escaped = false;
                current.text.push(b);
            }
        }
    }
    current.any = !literal && current.text == b"*";
    fields.push(current);
    fields
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg_lab::TempDir;

    fn config(s: &str) -> tokio_postgres::Config {
        s.parse().expect("connection string")
    }

    fn file(text: &str, mode: u32) -> (TempDir, PathBuf) {
        let dir = TempDir::new("pgpass").expect("temp dir");
        let path = dir.path().join("pgpass");
        std::fs::write(&path, text).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        (dir, path)
    }

    fn with_file(path: &std::path::Path) -> impl Fn(&str) -> Option<OsString> + '_ {
        move |name| match name {
            "PGPASSFILE" => Some(path.as_os_str().to_owned()),
            "USER" => Some("osuser".into()),
            _ => None,
        }
    }

    fn password(conn: &str, path: &std::path::Path) -> Option<String> {
        lookup(&config(conn), &with_file(path)).map(|p| String::from_utf8_lossy(&p).into_owned())
    }

    /// A field as a line writes it: `\` before `:` and `\`, and a literal `*` as `\*`.
    fn escape(field: &str) -> String {
        if field == "*" {
            return "\\*".into();
        }
        field.replace('\\', "\\\\").replace(':', "\\:")
    }

    proptest::proptest! {
        /// Any four fields and password, escaped and joined, read back as themselves; a bare
        /// `*` is a wildcard, an escaped one is not.
        #[test]
        fn escaped_fields_read_back(fields in proptest::collection::vec("[ -~]{0,12}", 5), star in proptest::bool::ANY) {
            let mut line: Vec<String> = fields.iter().map(|f| escape(f)).collect();
            if star && let Some(host) = line.first_mut() {
                *host = "*".into();
            }
            let read = split_fields(line.join(":").as_bytes());
            proptest::prop_assert_eq!(read.len(), 5);
            for (i, (f, r)) in fields.iter().zip(&read).enumerate() {
                if i == 0 && star {
                    proptest::prop_assert!(r.any && r.text == b"*");
                } else {
                    proptest::prop_assert_eq!(&r.text, &f.as_bytes().to_vec());
                    proptest::prop_assert!(!r.any, "an escaped field is no wildcard");
                }
            }
        }
    }

    const LINES: &str = "# hostname:port:database:username:password\n\
        db1.example:5433:kms:kms:first\n\
        db1.example:*:*:kms:second\n\
        localhost:5432:bsf:bsf:local\n\
        10.0.0.7:5432:*:*:by-address\n\
        *:*:*:esc\\:aped:pa\\\\s\\:s:after-the-end\r\n\
        \\*:*:*:*:escaped-star\n";

    /// The first matching line wins; `*` matches anything, `\*` only itself; escapes; the
    /// password ends at an unescaped `:`; defaults (port 5432, database = user); Unix sockets in the default
    /// directory match `localhost`, others only their own path.
    #[test]
    fn lines_match_as_libpq_reads_them() {
        let (_dir, path) = file(LINES, 0o600);
        assert_eq!(password("postgres://kms@db1.example:5433/kms", &path).as_deref(), Some("first"));
        assert_eq!(password("postgres://kms@db1.example:5432/other", &path).as_deref(), Some("second"));
        assert_eq!(password("host=localhost user=bsf", &path).as_deref(), Some("local"), "database defaults to the user");
        assert_eq!(password("host=/var/run/postgresql user=bsf dbname=bsf", &path).as_deref(), Some("local"));
        assert_eq!(password("host=/srv/pg user=bsf dbname=bsf", &path), None);
        assert_eq!(password("hostaddr=10.0.0.7 user=x dbname=y", &path).as_deref(), Some("by-address"));
        assert_eq!(password("postgres://esc:aped@h/d", &path), None, "that is user esc with password aped in the URL");
        assert_eq!(password("host=h user='esc:aped' dbname=d", &path).as_deref(), Some("pa\\s:s"), "the password ends at an unescaped colon");
        assert_eq!(password("host=* user=u dbname=d", &path).as_deref(), Some("escaped-star"), "an escaped star is a literal host");
        assert_eq!(password("host=zz user=u dbname=d", &path), None, "…not a wildcard");
        assert_eq!(password("postgres://nobody@db2.example/kms", &path), None);
    }

    /// As libpq on Unix: a file group or others may read is ignored, as is a directory.
    #[test]
    fn a_file_others_may_read_is_ignored() {
        let (_dir, path) = file(LINES, 0o644);
        assert_eq!(password("postgres://kms@db1.example:5433/kms", &path), None);
        let (_dir, path) = file(LINES, 0o640);
        assert_eq!(password("postgres://kms@db1.example:5433/kms", &path), None);
        let dir = TempDir::new("pgpass").expect("temp dir");
        assert_eq!(password("postgres://kms@db1.example:5433/kms", dir.path()), None);
        let home = |name: &str| (name == "HOME").then(|| dir.path().as_os_str().to_owned());
        assert!(lookup(&config("postgres://kms@h/kms"), &home).is_none(), "no ~/.pgpass");
    }
}
