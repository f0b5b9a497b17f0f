//! The servers using a store and the master keys they hold, so that an online master-key
//! rotation ([`crate::rekey`], docs/kms-store.md § Online rotation) is checked by the store
//! rather than left to operator discipline.
//!
//! Each server (`mediasec kms serve`, `mediasec bsf`) registers at start: one row of
//! [`Table::Servers`], keyed `<scope>/<instance id>`, holding the fingerprint
//! ([`crate::sealed::MasterKey::fingerprint`], never the key) of the key it seals with, those
//! of every key it opens with, and a liveness time stamp it refreshes every
//! [`Liveness::heartbeat`] ([`Registration::heartbeat`]). A row whose time stamp is older
//! than [`Liveness::stale_after`] is a server gone (killed, its host lost): it is ignored and
//! deleted by whoever meets it, so a crashed server never blocks a rotation for longer than
//! that. On a store one process holds ([`Store::one_process`]: redb locks its file), a row
//! another process wrote is of a process gone whatever its age (each row names its process
//! by a random id drawn once per process), so a server restarted after a crash, with other
//! keys after an offline rotation, is not held back. The time stamps are the writers' wall clocks: the hosts' clocks must agree to well
//! within `stale_after − heartbeat` (50 s by default; NTP keeps them within milliseconds).
//!
//! The rules, which make a replica meeting a row it cannot open impossible while every
//! registered server follows them:
//! - **registration** ([`Registration::register`]): the server writes its row first, then
//!   reads the others; it is refused (its row deleted again) when a live server seals with a
//!   key it cannot open, or it seals with a key a live server cannot open. So a server that
//!   only knows OLD cannot join replicas that may seal NEW, and a server sealing NEW cannot
//!   join replicas that cannot open NEW. A rotation marker in the store is checked too
//!   ([`crate::rekey::check_no_rotation`]): during an online walk only servers sealing NEW
//!   and opening OLD register.
//! - **the online walk** ([`crate::rekey::Rotation::begin_online`]) writes its marker first,
//!   then reads the rows: it is refused while a live server seals with anything but NEW or
//!   cannot open OLD. Writer-then-reader on both sides: a server registering concurrently
//!   either sees the marker or is seen by the walk.
//! - a server whose row disappeared (deleted as stale while it could not reach the store)
//!   registers again at its next heartbeat, with the same checks; refused, its
//!   [`Registration::heartbeat`] fails and the server stops.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::rekey::{RekeyError, check_no_rotation};
use crate::sealed::MasterKeys;
use crate::update::{Step, update};
use crate::{Store, StoreError, Table};

/// How often a server refreshes its row, and when a row not refreshed counts as a server gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Liveness {
    /// Interval between two refreshes.
    pub heartbeat: Duration,
    /// Age after which a row is a server gone.
    pub stale_after: Duration,
}

impl Default for Liveness {
    /// A refresh every 10 s; gone after 60 s without one.
    fn default() -> Self {
        Self { heartbeat: Duration::from_secs(10), stale_after: Duration::from_secs(60) }
    }
}

/// One server's row (JSON; no secret: fingerprints only).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerRecord {
    /// Who: what the server says of itself (program, listen address, process id).
    pub label: String,
    /// A random id of the process that wrote the row (drawn once per process).
    #[serde(default)]
    pub process: String,
    /// Fingerprint of the key it seals with.
    pub seals: String,
    /// Fingerprints of every key it opens with (the sealing key first).
    pub opens: Vec<String>,
    /// When it registered (milliseconds since the Unix epoch).
    pub started_unix_ms: u64,
    /// Its last refresh (milliseconds since the Unix epoch).
    pub alive_unix_ms: u64,
}

impl ServerRecord {
    /// Whether it is a server gone at `now_ms`.
    pub fn stale(&self, now_ms: u64, liveness: &Liveness) -> bool {
        now_ms.saturating_sub(self.alive_unix_ms) > u64::try_from(liveness.stale_after.as_millis()).unwrap_or(u64::MAX)
    }
}

/// This process's id in the rows it writes ([`ServerRecord::process`]): 16 random hex digits,
/// drawn once.
pub fn process_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        let mut id = [0u8; 8];
        // A failed draw leaves zeros: the id then only fails to tell processes apart, which
        // makes rows of a crashed process on an embedded store wait for the timeout.
        let _ = aws_lc_rs::rand::fill(&mut id);
        hex::encode(id)
    })
}

impl std::fmt::Display for ServerRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (seals with {}, opens with {})", self.label, self.seals, self.opens.join(", "))
    }
}

/// The milliseconds since the Unix epoch of the local clock.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The key range of the rows of `scope`: `<scope>/` up to (excluded) `<scope>0`.
fn prefix(scope: &str) -> (String, String) {
    // '0' is the character after '/'.
    (format!("{scope}/"), format!("{scope}0"))
}

/// Every live server row of `scope` (key, bytes, record). Rows gone stale are deleted (by
/// compare-and-swap against the bytes read, so a row refreshed meanwhile stays) and logged;
/// rows that do not decode are reported as corrupt.
pub async fn live_servers(store: &dyn Store, scope: &str, liveness: &Liveness) -> Result<Vec<(String, ServerRecord)>, StoreError> {
    let (mut from, to) = prefix(scope);
    let mut live = Vec::new();
    loop {
        let batch = store.range(Table::Servers, &from, &to, crate::rekey::BATCH).await?;
        let full = batch.len() == crate::rekey::BATCH;
        let now = now_ms();
        let mut last = None;
        for (key, bytes) in batch {
            let rec: ServerRecord = serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt(format!("row {key:?} of table servers: {e}")))?;
            // On a store one process holds, a row of another process is of a process gone.
            let gone = rec.stale(now, liveness) || (store.one_process() && rec.process != process_id());
            if !gone {
                live.push((key.clone(), rec));
            } else if store.compare_and_swap(Table::Servers, &key, Some(&bytes), None).await? {
                tracing::warn!(scope, server = %rec, "removed the row of a server gone (no refresh for longer than the liveness timeout)");
            }
            last = Some(key);
        }
        // Keys hold no NUL: the smallest key after `k` is `k` followed by U+0001.
        match last {
            Some(k) if full => from = format!("{k}\u{1}"),
            _ => break,
        }
    }
    Ok(live)
}

/// Deletes every server row of `scope`: an offline rotation runs with every server stopped, so
/// each row is one of a server gone (a crash), and a server restarted with the new key right
/// after must not wait for the liveness timeout of a server of the old key.
pub async fn forget_all(store: &dyn Store, scope: &str) -> Result<u64, StoreError> {
    let (from, to) = prefix(scope);
    let mut n = 0;
    loop {
        let batch = store.range(Table::Servers, &from, &to, crate::rekey::BATCH).await?;
        if batch.is_empty() {
            return Ok(n);
        }
        for (key, _) in batch {
            n += u64::from(store.delete(Table::Servers, &key).await?);
        }
    }
}

/// Why two servers cannot share a store: `a` seals with a key `b` cannot open, or the reverse.
fn conflict(a: &ServerRecord, b: &ServerRecord) -> Option<String> {
    if !b.opens.contains(&a.seals) {
        return Some(format!("{a} seals with a key that {b} cannot open"));
    }
    if !a.opens.contains(&b.seals) {
        return Some(format!("{b} seals with a key that {a} cannot open"));
    }
    None
}

/// A server's registration: its row, refreshed by [`Registration::heartbeat`].
pub struct Registration {
    store: Arc<dyn Store>,
    scope: String,
    key: String,
    record: ServerRecord,
    liveness: Liveness,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration").field("key", &self.key).field("record", &self.record).finish_non_exhaustive()
    }
}

impl Registration {
    /// Registers a server of `scope` holding `keys` (see the module documentation): refused
    /// with [`RekeyError::Incompatible`] when a live server of the scope and this one could
    /// not open each other's rows, and with [`RekeyError::Unfinished`] during a rotation this
    /// server may not serve through. `label` names the server in errors and logs.
    pub async fn register(store: Arc<dyn Store>, scope: &str, keys: &MasterKeys, label: &str, liveness: Liveness) -> Result<Self, RekeyError> {
        let mut id = [0u8; 8];
        aws_lc_rs::rand::fill(&mut id).map_err(|_| crate::sealed::SealError::Seal)?;
        let now = now_ms();
        let record = ServerRecord {
            label: label.to_owned(),
            process: process_id().to_owned(),
            seals: keys.sealing().fingerprint(),
            opens: keys.opening().map(crate::sealed::MasterKey::fingerprint).collect(),
            started_unix_ms: now,
            alive_unix_ms: now,
        };
        let reg = Self { store, scope: scope.to_owned(), key: format!("{scope}/{}", hex::encode(id)), record, liveness };
        reg.join(keys).await?;
        Ok(reg)
    }

    /// Writes the row, then checks the marker and the other live rows; on refusal deletes
    /// the row again.
    async fn join(&self, keys: &MasterKeys) -> Result<(), RekeyError> {
        self.store.put(Table::Servers, &self.key, &self.encode(&self.record)?).await?;
        let verdict = self.check(keys).await;
        if verdict.is_err() {
            self.store.delete(Table::Servers, &self.key).await?;
        }
        verdict
    }

    async fn check(&self, keys: &MasterKeys) -> Result<(), RekeyError> {
        check_no_rotation(&*self.store, &self.scope, keys).await?;
        for (key, other) in live_servers(&*self.store, &self.scope, &self.liveness).await? {
            if key == self.key {
                continue;
            }
            if let Some(reason) = conflict(&self.record, &other) {
                tracing::error!(scope = %self.scope, %reason, "refusing to serve: the master keys of the replicas do not agree");
                return Err(RekeyError::Incompatible { scope: self.scope.clone(), reason });
            }
        }
        Ok(())
    }

    fn encode(&self, r: &ServerRecord) -> Result<Vec<u8>, StoreError> {
        serde_json::to_vec(r).map_err(|e| StoreError::Backend(format!("encoding the server row: {e}")))
    }

    /// The row as registered.
    pub fn record(&self) -> &ServerRecord {
        &self.record
    }

    /// The liveness settings.
    pub fn liveness(&self) -> Liveness {
        self.liveness
    }

    /// Refreshes the row's time stamp. A row found deleted (taken for a server gone while this
    /// one could not reach the store) is registered again with the checks of
    /// [`Registration::register`]; refused, the error is returned and the server must stop
    /// (it may no longer seal: another key may be in use). Store errors are returned as they
    /// are: the caller retries at the next beat.
    pub async fn heartbeat(&self, keys: &MasterKeys) -> Result<(), RekeyError> {
        let refreshed = update(&*self.store, Table::Servers, &self.key, |held| {
            let Some(bytes) = held else { return Ok::<_, StoreError>(Step::Keep(false)) };
            let mut rec: ServerRecord = serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(format!("row {:?} of table servers: {e}", self.key)))?;
            rec.alive_unix_ms = now_ms();
            Ok(Step::Write(Some(zeroize::Zeroizing::new(self.encode(&rec)?)), true))
        })
        .await?;
        if !refreshed {
            tracing::warn!(scope = %self.scope, "this server's row was removed as stale: registering again");
            let mut again = self.record.clone();
            again.alive_unix_ms = now_ms();
            self.store.put(Table::Servers, &self.key, &self.encode(&again)?).await?;
            let verdict = self.check(keys).await;
            if verdict.is_err() {
                self.store.delete(Table::Servers, &self.key).await?;
            }
            return verdict;
        }
        Ok(())
    }

    /// Refreshes the row every [`Liveness::heartbeat`] until a refresh is refused (returned:
    /// the server must stop). A store error is logged and retried at the next beat.
    pub async fn keep_alive(&self, keys: &MasterKeys) -> RekeyError {
        loop {
            tokio::time::sleep(self.liveness.heartbeat).await;
            match self.heartbeat(keys).await {
                Ok(()) => {}
                Err(RekeyError::Store(e)) => tracing::warn!(scope = %self.scope, error = %e, "refreshing this server's row failed; retrying"),
                Err(e) => return e,
            }
        }
    }

    /// Removes the row (a server stopping cleanly).
    pub async fn deregister(&self) -> Result<(), StoreError> {
        self.store.delete(Table::Servers, &self.key).await.map(drop)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn rec(seals: &str, opens: &[&str], alive: u64) -> ServerRecord {
        ServerRecord { label: format!("s-{seals}"), process: String::new(), seals: seals.into(), opens: opens.iter().map(|s| (*s).to_owned()).collect(), started_unix_ms: 0, alive_unix_ms: alive }
    }

    #[test]
    fn replicas_conflict_when_one_cannot_open_what_the_other_seals() {
        let old_only = rec("old", &["old"], 0);
        let phase1 = rec("old", &["old", "new"], 0);
        let phase2 = rec("new", &["new", "old"], 0);
        let new_only = rec("new", &["new"], 0);
        assert!(conflict(&old_only, &phase1).is_none());
        assert!(conflict(&phase1, &phase2).is_none());
        assert!(conflict(&phase2, &new_only).is_none());
        assert!(conflict(&old_only, &phase2).is_some_and(|r| r.contains("s-new") && r.contains("cannot open")));
        assert!(conflict(&phase2, &old_only).is_some());
        assert!(conflict(&phase1, &new_only).is_some());
    }

    #[test]
    fn a_row_is_stale_only_after_the_timeout() {
        let l = Liveness { heartbeat: Duration::from_secs(10), stale_after: Duration::from_secs(60) };
        let r = rec("k", &["k"], 1_000_000);
        assert!(!r.stale(1_000_000 + 60_000, &l));
        assert!(r.stale(1_000_000 + 60_001, &l));
        assert!(!r.stale(0, &l), "a clock behind is not stale");
    }
}
