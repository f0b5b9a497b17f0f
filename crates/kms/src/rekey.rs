//! Master-key rotation of the KMS store (`mediasec kms rekey`; docs/kms.md § Master-key
//! rotation), on the one implementation of [`mediasec_kms_store::rekey`]. The KMS seals, at
//! rest under its master key:
//! - `key_ring`: the ticket-protection keys, AAD the row key alone ([`crate::keyring`]);
//! - `settings`: the ECCSI KSAK and the SAKKE master secret z ([`crate::signing_keys`]; every
//!   row of `settings` is sealed);
//! - `li_warrants`: the LI warrants; `li_audit`: the LI audit trail ([`crate::li`]).
//!
//! Users, policies and the admin audit log are not secret and not sealed; they are not
//! touched. The LI audit trail is append-only: its entries are re-sealed byte for byte (the
//! plaintext the old key authenticated is sealed unchanged under the new key; no entry is
//! added, removed or altered), and the rotation appends its own LI audit entry
//! `master_key.rekey` (sealed under the new key) before it ends, so the trail says when it
//! was re-encrypted. The admin audit log (not sealed) gets `master_key.rekey.begin` and
//! `master_key.rekey` with the counts.
//!
//! Online (PostgreSQL, replicas serving): each KMS registers its keys in the store
//! ([`register`], [`mediasec_kms_store::servers`]) and serves through the walk when it seals
//! with the new key and opens with the old one (`--previous-master-key`); docs/kms.md §
//! Master-key rotation gives the rolling procedure.

use std::ops::ControlFlow;
use std::sync::Arc;

use mediasec_kms_store::Store;
use mediasec_kms_store::Table;
use mediasec_kms_store::rekey::{Aad, Keys, Mode, Progress, Report, Rotation, SealedTable, WholeValue, check_no_rotation};
use mediasec_kms_store::sealed::MasterKeys;
use mediasec_kms_store::servers::{Liveness, Registration};

use crate::error::KmsError;
use crate::li::LiAuditEntry;

/// The scope of the KMS's rotation marker (row of table `rekey`).
pub const SCOPE: &str = "kms";

/// Environment variable holding the new master key of `mediasec kms rekey` (64 hex digits).
pub const NEW_MASTER_KEY_ENV: &str = "MEDIASEC_KMS_NEW_MASTER_KEY";

/// Every table in which the KMS seals, and how.
pub const TABLES: [SealedTable<'static>; 4] = [
    SealedTable { table: Table::KeyRing, codec: &WholeValue(Aad::Row) },
    SealedTable { table: Table::Settings, codec: &WholeValue(Aad::TableRow) },
    SealedTable { table: Table::LiWarrants, codec: &WholeValue(Aad::TableRow) },
    SealedTable { table: Table::LiAudit, codec: &WholeValue(Aad::TableRow) },
];

/// Environment variable holding the previous master key(s) a KMS also opens with during an
/// online rotation (64 hex digits each, separated by commas).
pub const PREVIOUS_MASTER_KEY_ENV: &str = "MEDIASEC_KMS_PREVIOUS_MASTER_KEY";

/// Refuses to serve from a store whose rotation is unfinished (its rows are sealed under two
/// keys), unless it is an online rotation this KMS's `keys` serve through
/// ([`check_no_rotation`]). [`crate::server::Service::start`] runs it first.
pub async fn check_not_rotating(store: &Arc<dyn Store>, keys: &MasterKeys) -> Result<(), KmsError> {
    check_no_rotation(&**store, SCOPE, keys).await.map_err(|e| {
        tracing::error!(error = %e, "refusing to start");
        KmsError::from(e)
    })
}

/// Registers a KMS serving from `persist`'s store with its keys ([`Registration::register`]:
/// refused while a live KMS of the store could not open what this one seals, or the reverse,
/// and during a rotation this one may not serve through). Run before
/// [`crate::server::Service::start`] (which may seal: a first ticket key, KSAK, z); keep it
/// alive with [`Registration::keep_alive`] while serving.
pub async fn register(persist: &crate::persist::Persist, label: &str, liveness: Liveness) -> Result<Registration, KmsError> {
    Registration::register(Arc::clone(persist.store()), SCOPE, persist.keys(), label, liveness).await.map_err(|e| {
        tracing::error!(error = %e, "refusing to start");
        KmsError::from(e)
    })
}

/// Re-seals every sealed row of the KMS store from `keys`' old master key to its new one
/// (resuming an unfinished rotation to the same new key), records it in both audit trails,
/// and ends the rotation. [`Mode::Offline`]: every KMS using the store stopped;
/// [`Mode::Online`]: every live KMS seals with the new key and opens with the old one, else
/// refused. `progress` sees each row; [`ControlFlow::Break`] stops the run, which a later
/// call finishes.
pub async fn rekey(store: &dyn Store, keys: Keys, mode: Mode, progress: &mut (dyn FnMut(&Progress) -> ControlFlow<()> + Send)) -> Result<Report, KmsError> {
    let rotation = Rotation::start(store, SCOPE, keys, "mediasec kms rekey", mode).await?;
    let report = rotation.run(&TABLES, progress).await?;
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let entry = LiAuditEntry::new(now_ms, "master_key.rekey", "", format!("the LI audit trail and the warrants re-sealed under a new master key: {report}"));
    let keys = rotation.keys();
    // Chained like any LI entry (the chain's hashes are over plaintexts: the re-sealing left
    // it intact); the head is under the new key now, or the old one if no row was re-sealed.
    crate::li_chain::append(store, keys.new_key(), &[keys.new_key(), keys.old_key()], &entry, rand::random()).await?;
    rotation.finish(&report).await?;
    Ok(report)
}
