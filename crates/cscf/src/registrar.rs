//! Registrar and location service of the S-CSCF (RFC 3261 §10.3, RFC 3327 `Path`), sans-IO:
//! the time is passed in.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// One registered contact of an AOR.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    /// The contact URI (without angle brackets).
    pub contact: String,
    /// The `Path` entries recorded at registration (RFC 3327), first hop first, as written.
    pub path: Vec<String>,
    /// When it expires.
    pub expires: Instant,
    /// The UE indicated `sdes-srtp;mediasec` (TS 24.229 §5.1.1.2) at registration.
    pub mediasec: bool,
}

/// AOR → bindings.
#[derive(Debug, Default)]
pub struct Registrar {
    bindings: HashMap<String, Vec<Binding>>,
}

/// The canonical AOR of a SIP URI: `sip:user@host`, lower-cased host, no parameters.
pub fn aor(uri: &str) -> String {
    let uri = uri.trim().trim_start_matches('<').trim_end_matches('>');
    let base = uri.split([';', '?', '>']).next().unwrap_or(uri);
    match base.rsplit_once('@') {
        Some((user, host)) => format!("{user}@{}", host.to_ascii_lowercase()),
        None => base.to_ascii_lowercase(),
    }
}

impl Registrar {
    /// Adds or refreshes `contact` for `aor` (expires 0 removes it). Returns the AOR's
    /// bindings afterwards.
    pub fn register(&mut self, aor: &str, contact: &str, path: Vec<String>, expires: Duration, mediasec: bool, now: Instant) -> Vec<Binding> {
        let list = self.bindings.entry(aor.to_owned()).or_default();
        list.retain(|b| b.contact != contact && b.expires > now);
        if !expires.is_zero() {
            list.push(Binding { contact: contact.to_owned(), path, expires: now + expires, mediasec });
        }
        list.clone()
    }

    /// The live bindings of `aor`, oldest first.
    pub fn lookup(&self, aor: &str, now: Instant) -> Vec<Binding> {
        self.bindings.get(aor).map(|l| l.iter().filter(|b| b.expires > now).cloned().collect()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bindings_expire_refresh_and_fork() {
        let mut r = Registrar::default();
        let t0 = Instant::now();
        let a = aor("<sip:bob@B.example;transport=udp>");
        assert_eq!(a, "sip:bob@b.example");
        r.register(&a, "sip:bob@127.0.0.1:5001", vec![], Duration::from_secs(60), true, t0);
        r.register(&a, "sip:bob@127.0.0.1:5002", vec!["<sip:127.0.0.1:5060;lr>".into()], Duration::from_secs(10), false, t0);
        assert_eq!(r.lookup(&a, t0).len(), 2, "both contacts are forked to");
        assert_eq!(r.lookup(&a, t0 + Duration::from_secs(11)).len(), 1, "the short one expired");
        r.register(&a, "sip:bob@127.0.0.1:5001", vec![], Duration::ZERO, true, t0);
        assert_eq!(r.lookup(&a, t0).len(), 1, "expires=0 removed it");
        assert!(r.lookup("sip:nobody@b.example", t0).is_empty());
    }
}
