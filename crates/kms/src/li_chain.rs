//! The LI audit trail as a hash chain *(ours; docs/li.md "Tamper-evident trail")*: rows of
//! the sealed `li_audit` table cannot be forged or altered without the master key (AES-256-GCM,
//! AAD `li_audit:<row>`), but whoever can write the store can delete them. Each entry carries
//! its position `seq` and the link hash of the entry before it ([`link_hash`]); the `head` row
//! of the same table holds the newest entry's `seq` and link hash. [`verify`] walks the chain
//! back from the head and names every break: an entry missing (deleted, the newest ones
//! included), the head missing, an entry not on the chain.
//!
//! **Hash, not MAC.** The link is an unkeyed SHA-256 of the row key and the entry's plaintext,
//! inside the sealed value: a store-only attacker cannot make a row that opens, so a keyed
//! link would add nothing, while a MAC under a key derived from the master key would have to
//! be recomputed for every row at each master-key rotation (`kms rekey`, online rotation)
//! — rewriting the whole chain at once. The hash is rotation-invariant: the rotation re-seals
//! the same plaintexts and the head row, the chain is untouched.
//!
//! **Concurrent writers** (KMS replicas on one store): an append writes its entry, then moves
//! the head with [`Store::compare_and_swap`] from the exact head value it read; a replica that
//! lost the race deletes its entry and retries after the new head. The chain is therefore
//! linear: two entries never share a predecessor. An append interrupted between its entry and
//! the head (a crash, or a failed clean-up) leaves an entry off the chain, which [`verify`]
//! reports.
//!
//! **Not detected**: a rollback of the whole table (or of the head row together with the
//! deletion of the entries after it) to an earlier state kept by the attacker — the head it
//! restores is genuine. An auditor detects it by keeping the head each reading reports
//! ([`ChainReport::head_seq`], [`ChainReport::head_hash`]) and checking the next reading
//! still holds that entry. Entries written before the chain existed (`seq` 0) are counted,
//! not protected.

use std::collections::{HashMap, HashSet};

use aws_lc_rs::digest;
use mediasec_kms_store::{Store, Table};
use serde::{Deserialize, Serialize};

use crate::error::KmsError;
use crate::keyring::MasterKey;
use crate::li::LiAuditEntry;

/// Row of the `li_audit` table holding the chain's head; entry rows start with a digit, so it
/// sorts after all of them.
pub const HEAD_ROW: &str = "head";

/// What [`append`] links entry 1 to: 32 zero octets, hex.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Attempts of one append against concurrent writers before it fails (a store error: the
/// LI action it records is then not performed).
const APPEND_ATTEMPTS: usize = 16;

/// Domain separation of [`link_hash`].
const LINK_LABEL: &[u8] = b"mediasec li_audit chain v1\0";

/// The head row's content (sealed like the entries).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Head {
    seq: u64,
    hash: String,
}

/// The link hash of the entry stored in `row` with plaintext `plain` (its JSON as sealed):
/// hex SHA-256 of `"mediasec li_audit chain v1" 0x00 || row || 0x00 || plain`. The row key is
/// included so that an entry cannot stand for another of the same content.
pub fn link_hash(row: &str, plain: &[u8]) -> String {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(LINK_LABEL);
    ctx.update(row.as_bytes());
    ctx.update(b"\0");
    ctx.update(plain);
    hex::encode(ctx.finish().as_ref())
}

fn open(keys: &[&MasterKey], row: &str, sealed: &[u8]) -> Result<zeroize::Zeroizing<Vec<u8>>, KmsError> {
    let mut last = None;
    for k in keys {
        match k.open(Table::LiAudit, row, sealed) {
            Ok(p) => return Ok(p),
            Err(e) => last = Some(e),
        }
    }
    Err(last.map_or_else(|| KmsError::Config("no master key to open the LI audit trail".into()), KmsError::from))
}

fn read_head(keys: &[&MasterKey], sealed: Option<&[u8]>) -> Result<Option<Head>, KmsError> {
    sealed.map(|v| serde_json::from_slice(&open(keys, HEAD_ROW, v)?).map_err(|e| KmsError::Config(format!("LI audit head: {e}")))).transpose()
}

/// Appends `e` to the chain in `store`: sealed under `seal`, the head opened with any of
/// `open_with`. Entry first, then the head by compare-and-swap (lost: the entry is removed
/// and the append retried after the new head).
pub async fn append(store: &dyn Store, seal: &MasterKey, open_with: &[&MasterKey], e: &LiAuditEntry, suffix: u64) -> Result<(), KmsError> {
    let row = e.row(suffix);
    for _ in 0..APPEND_ATTEMPTS {
        let current = store.get(Table::LiAudit, HEAD_ROW).await?;
        let (seq, prev) = match read_head(open_with, current.as_deref())? {
            Some(h) => (h.seq.checked_add(1).ok_or_else(|| KmsError::Config("LI audit chain full".into()))?, h.hash),
            None => (1, GENESIS.to_owned()),
        };
        let entry = LiAuditEntry { seq, prev, ..e.clone() };
        let plain = serde_json::to_vec(&entry).map_err(|e| KmsError::Config(e.to_string()))?;
        store.put(Table::LiAudit, &row, &seal.seal(Table::LiAudit, &row, &plain)?).await?;
        let head = serde_json::to_vec(&Head { seq, hash: link_hash(&row, &plain) }).map_err(|e| KmsError::Config(e.to_string()))?;
        let head = seal.seal(Table::LiAudit, HEAD_ROW, &head)?;
        if store.compare_and_swap(Table::LiAudit, HEAD_ROW, current.as_deref(), Some(&head)).await? {
            return Ok(());
        }
        store.delete(Table::LiAudit, &row).await?;
    }
    Err(KmsError::Config(format!("LI audit trail: {APPEND_ATTEMPTS} appends in a row lost to concurrent writers")))
}

/// One break of the chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ChainBreak {
    /// The entry concerned (its `seq`; for a missing run, the newest missing one).
    pub seq: u64,
    /// What is wrong, in words.
    pub what: String,
}

/// The verification of the whole LI audit trail.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ChainReport {
    /// No break.
    pub intact: bool,
    /// `seq` of the newest entry (the head; 0 for an empty chain).
    pub head_seq: u64,
    /// Link hash of the newest entry ([`GENESIS`] for an empty chain): keep it to detect a
    /// later rollback.
    pub head_hash: String,
    /// Entries found on the chain.
    pub chained: u64,
    /// Entries written before the trail was chained (`seq` 0): not protected.
    pub unchained: u64,
    /// Every break found, newest first.
    pub breaks: Vec<ChainBreak>,
}

/// The LI audit trail as read: entries and the chain's verification.
#[derive(Clone, Debug, Serialize)]
pub struct LiAuditTrail {
    /// The chain's verification (over the whole trail, whatever the selection).
    pub chain: ChainReport,
    /// The entries selected, oldest first (row order: time).
    pub entries: Vec<LiAuditEntry>,
}

/// One entry as stored: its row, its record and its link hash.
pub struct Stored {
    /// Row key.
    pub row: String,
    /// The record.
    pub entry: LiAuditEntry,
    /// [`link_hash`] of its row and plaintext.
    pub hash: String,
}

/// Verifies the chain of `entries` (in any order) under the head `head` (`(seq, hash)`,
/// `None` when the head row is absent). Pure: [`read`] does the I/O.
pub fn verify(entries: &[Stored], head: Option<(u64, &str)>) -> ChainReport {
    let mut breaks = Vec::new();
    let chained: Vec<&Stored> = entries.iter().filter(|s| s.entry.seq > 0).collect();
    let by_hash: HashMap<&str, &Stored> = chained.iter().map(|s| (s.hash.as_str(), *s)).collect();
    let mut on_chain: HashSet<&str> = HashSet::new();
    let (head_seq, head_hash) = match head {
        Some((seq, hash)) => (seq, hash.to_owned()),
        None => (0, GENESIS.to_owned()),
    };
    // Without a head, walk from the newest chained entry (its loss is reported).
    let start = match head {
        Some((seq, hash)) => Some((seq, hash.to_owned())),
        None => chained.iter().max_by_key(|s| s.entry.seq).map(|s| {
            breaks.push(ChainBreak { seq: s.entry.seq, what: "the chain's head row is missing (deleted): entries after the newest found may be missing too".into() });
            (s.entry.seq, s.hash.clone())
        }),
    };
    let (mut seq, mut hash) = start.unwrap_or((0, GENESIS.to_owned()));
    while seq > 0 {
        match by_hash.get(hash.as_str()) {
            Some(s) if s.entry.seq == seq => {
                on_chain.insert(s.hash.as_str());
                seq -= 1;
                hash.clone_from(&s.entry.prev);
            }
            Some(s) => {
                breaks.push(ChainBreak { seq, what: format!("entry {seq} is linked to an entry claiming position {} (row {})", s.entry.seq, s.row) });
                break;
            }
            None => {
                // Resynchronise on the newest chained entry older than the gap.
                let next = chained.iter().filter(|s| s.entry.seq < seq && !on_chain.contains(s.hash.as_str())).max_by_key(|s| s.entry.seq);
                let first_missing = next.map_or(1, |s| s.entry.seq + 1);
                let what = if first_missing == seq { format!("entry {seq} is missing (deleted)") } else { format!("entries {first_missing} to {seq} are missing (deleted)") };
                breaks.push(ChainBreak { seq, what });
                match next {
                    Some(s) => {
                        seq = s.entry.seq;
                        hash.clone_from(&s.hash);
                    }
                    None => {
                        hash = GENESIS.to_owned();
                        seq = 0;
                    }
                }
            }
        }
    }
    if seq == 0 && hash != GENESIS {
        breaks.push(ChainBreak { seq: 1, what: "entry 1 does not start the chain (its predecessor is not the genesis)".into() });
    }
    for s in chained.iter().filter(|s| !on_chain.contains(s.hash.as_str())) {
        breaks.push(ChainBreak {
            seq: s.entry.seq,
            what: format!("entry {} (row {}) is not on the chain from the head: an append interrupted before it moved the head, or the head rolled back", s.entry.seq, s.row),
        });
    }
    breaks.sort_by_key(|b| std::cmp::Reverse(b.seq));
    ChainReport {
        intact: breaks.is_empty(),
        head_seq,
        head_hash,
        chained: u64::try_from(on_chain.len()).unwrap_or(u64::MAX),
        unchained: u64::try_from(entries.len().saturating_sub(chained.len())).unwrap_or(u64::MAX),
        breaks,
    }
}

/// Reads the whole trail from `store` (opened with any of `keys`), verifies its chain, and
/// selects the entries from `since_ms` on, at most `limit`.
pub async fn read(store: &dyn Store, keys: &[&MasterKey], since_ms: u64, limit: usize) -> Result<LiAuditTrail, KmsError> {
    let mut head = None;
    let mut stored = Vec::new();
    for (row, v) in store.list(Table::LiAudit).await? {
        if row == HEAD_ROW {
            head = read_head(keys, Some(&v))?;
            continue;
        }
        let plain = open(keys, &row, &v)?;
        let entry: LiAuditEntry = serde_json::from_slice(&plain).map_err(|e| KmsError::Config(format!("LI audit row {row}: {e}")))?;
        let hash = link_hash(&row, &plain);
        stored.push(Stored { row, entry, hash });
    }
    let chain = verify(&stored, head.as_ref().map(|h| (h.seq, h.hash.as_str())));
    let entries = stored.into_iter().map(|s| s.entry).filter(|e| e.at_unix_ms >= since_ms).take(limit).collect();
    Ok(LiAuditTrail { chain, entries })
}
