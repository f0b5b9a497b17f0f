//! Master-key rotation of the BSF store (`mediasec bsf rekey`; docs/gba.md § Storage), on the
//! one implementation of [`mediasec_kms_store::rekey`]. The BSF seals, under its master key
//! ([`crate::store`]):
//! - `subscribers`: K and OPc/OP, the JSON field `secrets` (hex); rows of earlier versions
//!   hold them in the clear (`k`, `opc`/`op`) and are sealed under the new key here;
//! - `sessions`: Ks, the JSON field `ks_sealed` (hex); sessions of earlier versions hold `ks`
//!   in the clear and are sealed here;
//! - `bsf_pending`: the challenges in flight, the whole value.
//!
//! Every other field of a row is kept as it is (a subscriber's SQN included); a rewritten
//! subscriber row gets `rev + 1`, as every write of it does. The expiry indexes hold nothing
//! sealed. The BSF keeps no audit log of its own: the rotation's entries
//! (`master_key.rekey.begin`, `master_key.rekey`) go to the store's audit log.

use std::ops::ControlFlow;
use std::sync::Arc;

use mediasec_kms_store::Store as Kv;
use mediasec_kms_store::Table;
use mediasec_kms_store::rekey::{Aad, Change, Keys, Mode, Progress, RekeyError, Report, Rotation, RowCodec, RowStep, SealedTable, WholeValue, check_no_rotation};
use mediasec_kms_store::sealed::{MasterKeys, row_aad};
use mediasec_kms_store::servers::{Liveness, Registration};
use zeroize::Zeroizing;

use crate::BsfError;
use crate::store::{Secrets, SessionRecord, SubscriberRow};

/// The scope of the BSF's rotation marker (row of table `rekey`).
pub const SCOPE: &str = "bsf";

/// Environment variable holding the new master key of `mediasec bsf rekey` (64 hex digits).
pub const NEW_MASTER_KEY_ENV: &str = "MEDIASEC_BSF_NEW_MASTER_KEY";

/// Environment variable holding the previous master key(s) a BSF also opens with during an
/// online rotation (64 hex digits each, separated by commas).
pub const PREVIOUS_MASTER_KEY_ENV: &str = "MEDIASEC_BSF_PREVIOUS_MASTER_KEY";

/// Subscriber rows: the sealed `secrets`, or K and OPc/OP in the clear.
struct Subscribers;

/// Session rows: the sealed `ks_sealed`, or Ks in the clear.
struct Sessions;

fn corrupt(table: Table, key: &str, reason: impl std::fmt::Display) -> RekeyError {
    RekeyError::Corrupt { table: table.name(), key: key.to_owned(), reason: reason.to_string() }
}

/// The sealed hex field `sealed` of row `key` re-sealed: `None` when already under the new key.
fn reseal_hex(keys: &Keys, table: Table, key: &str, sealed: &str) -> Result<Option<String>, RekeyError> {
    let raw = hex::decode(sealed).map_err(|_| corrupt(table, key, "sealed value is not hex"))?;
    Ok(keys.reseal(table, key, &row_aad(table, key), &raw)?.map(hex::encode))
}

fn encode<T: serde::Serialize>(table: Table, key: &str, v: &T) -> Result<Zeroizing<Vec<u8>>, RekeyError> {
    serde_json::to_vec(v).map(Zeroizing::new).map_err(|e| corrupt(table, key, e))
}

impl RowCodec for Subscribers {
    fn step(&self, keys: &Keys, table: Table, key: &str, value: &[u8]) -> Result<RowStep, RekeyError> {
        let mut row: SubscriberRow = serde_json::from_slice(value).map_err(|e| corrupt(table, key, e))?;
        let change = match &row.secrets {
            Some(sealed) => match reseal_hex(keys, table, key, sealed)? {
                None => return Ok(RowStep::AlreadyNew),
                Some(new) => {
                    row.secrets = Some(new);
                    Change::Resealed
                }
            },
            None => {
                let k = row.k.clone().ok_or_else(|| corrupt(table, key, "neither secrets nor k"))?;
                let plain = encode(table, key, &Secrets { k, opc: row.opc.clone(), op: row.op.clone() })?;
                row.secrets = Some(hex::encode(keys.seal_new(&row_aad(table, key), &plain)?));
                Change::Sealed
            }
        };
        row.rev = row.rev.checked_add(1).ok_or_else(|| corrupt(table, key, "write counter exhausted"))?;
        Ok(RowStep::Write(encode(table, key, &row)?, change))
    }
}

impl RowCodec for Sessions {
    fn step(&self, keys: &Keys, table: Table, key: &str, value: &[u8]) -> Result<RowStep, RekeyError> {
        let mut rec: SessionRecord = serde_json::from_slice(value).map_err(|e| corrupt(table, key, e))?;
        let change = match (&rec.ks_sealed, &rec.ks) {
            (Some(sealed), _) => match reseal_hex(keys, table, key, sealed)? {
                None => return Ok(RowStep::AlreadyNew),
                Some(new) => {
                    rec.ks_sealed = Some(new);
                    Change::Resealed
                }
            },
            (None, Some(clear)) => {
                let ks = Zeroizing::new(hex::decode(clear).map_err(|_| corrupt(table, key, "ks is not hex"))?);
                rec.ks_sealed = Some(hex::encode(keys.seal_new(&row_aad(table, key), &ks)?));
                Change::Sealed
            }
            (None, None) => return Err(corrupt(table, key, "neither ks_sealed nor ks")),
        };
        Ok(RowStep::Write(encode(table, key, &rec)?, change))
    }
}

/// Every table in which the BSF seals, and how.
pub const TABLES: [SealedTable<'static>; 3] = [
    SealedTable { table: Table::BsfSubscribers, codec: &Subscribers },
    SealedTable { table: Table::BsfSessions, codec: &Sessions },
    SealedTable { table: Table::BsfPending, codec: &WholeValue(Aad::TableRow) },
];

/// Refuses a store whose rotation is unfinished (its rows are sealed under two keys), unless
/// it is an online rotation a BSF holding `keys` serves through ([`check_no_rotation`]):
/// [`crate::store::Store::check_master_key`] runs it first.
pub async fn check_not_rotating(kv: &dyn Kv, keys: &MasterKeys) -> Result<(), BsfError> {
    check_no_rotation(kv, SCOPE, keys).await.map_err(|e| {
        tracing::error!(error = %e, "refusing the store");
        BsfError::from(e)
    })
}

/// Registers a BSF (or a `mediasec bsf subscriber` run, which seals too) using `store` with
/// its keys ([`Registration::register`]: refused while a live BSF of the store could not open
/// what this one seals, or the reverse, and during a rotation this one may not serve
/// through). Run before serving; keep it alive with [`Registration::keep_alive`].
pub async fn register(store: &crate::store::Store, label: &str, liveness: Liveness) -> Result<Registration, BsfError> {
    Registration::register(Arc::clone(store.kv()), SCOPE, store.keys(), label, liveness).await.map_err(|e| {
        tracing::error!(error = %e, "refusing the store");
        BsfError::from(e)
    })
}

/// Re-seals every sealed row of the BSF store from `keys`' old master key to its new one
/// (and seals under the new key what earlier versions left in the clear), resuming an
/// unfinished rotation to the same new key. [`Mode::Offline`]: every BSF using the store
/// stopped; [`Mode::Online`]: every live BSF seals with the new key and opens with the old
/// one, else refused. `progress` sees each row; [`ControlFlow::Break`] stops the run, which
/// a later call finishes.
pub async fn rekey(kv: &dyn Kv, keys: Keys, mode: Mode, progress: &mut (dyn FnMut(&Progress) -> ControlFlow<()> + Send)) -> Result<Report, BsfError> {
    let rotation = Rotation::start(kv, SCOPE, keys, "mediasec bsf rekey", mode).await?;
    let report = rotation.run(&TABLES, progress).await?;
    rotation.finish(&report).await?;
    Ok(report)
}
