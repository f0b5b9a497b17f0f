//! The ticket-protection key ring (docs/ticket-profile.md: THDR Data = 4-octet ticket-key
//! id). New tickets are protected with the newest key; a rotated-out key stays for resolving
//! until every ticket it protected has expired. Entries are stored encrypted at rest with
//! AES-256-GCM under a master key from configuration or the environment
//! ([`mediasec_kms_store::sealed`], AAD = the row name); the store never sees a ticket key in
//! clear.
//!
//! Key id 0 is reserved: it marks a UE-made (mode 3) ticket whose TPK is the creator's Ks_NAF.

use std::collections::BTreeMap;

use aws_lc_rs::aead::NONCE_LEN;
use mediasec_kms_store::sealed::seal_row;
use zeroize::Zeroizing;

use crate::error::KmsError;

/// THDR key id of a UE-made (mode 3) ticket.
pub const MODE3_KEY_ID: u32 = 0;
/// Ticket-protection key length (PRF input; 256 bits).
pub const TPK_LEN: usize = 32;
/// Environment variable holding the master key (64 hex digits).
pub const MASTER_KEY_ENV: &str = "MEDIASEC_KMS_MASTER_KEY";

/// The key-encryption key of the ring at rest (shared with the BSF: one sealing
/// implementation, [`mediasec_kms_store::sealed`]).
pub use mediasec_kms_store::sealed::{MasterKey, MasterKeys};

/// One ticket-protection key.
#[derive(Clone, serde::Serialize, serde::Deserialize, zeroize::ZeroizeOnDrop)]
pub struct TicketKey {
    /// THDR key id (>= 1).
    #[zeroize(skip)]
    pub id: u32,
    /// Creation time (Unix seconds).
    #[zeroize(skip)]
    pub created: u64,
    /// When it stopped protecting new tickets (Unix seconds); `None` while newest.
    #[zeroize(skip)]
    pub retired: Option<u64>,
    /// The key, hex.
    key: String,
}

impl core::fmt::Debug for TicketKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("TicketKey").field("id", &self.id).field("created", &self.created).field("retired", &self.retired).finish_non_exhaustive()
    }
}

impl TicketKey {
    /// The key octets.
    pub fn key(&self) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        hex::decode(&self.key).map(Zeroizing::new).map_err(|_| KmsError::KeyRing(format!("key {} is not hex", self.id)))
    }
}

/// The key ring.
#[derive(Clone, Debug, Default)]
pub struct KeyRing {
    keys: BTreeMap<u32, TicketKey>,
}

impl KeyRing {
    /// The key protecting new tickets (highest id).
    pub fn newest(&self) -> Option<&TicketKey> {
        self.keys.values().next_back()
    }

    /// The key named `id`.
    pub fn get(&self, id: u32) -> Option<&TicketKey> {
        self.keys.get(&id)
    }

    /// Every key, by id.
    pub fn keys(&self) -> impl Iterator<Item = &TicketKey> {
        self.keys.values()
    }

    /// Adds a fresh key (id = highest + 1) made from `random` and retires the previous newest
    /// at `now`. Returns the new key and the retired one (both to be persisted).
    pub fn rotate(&mut self, now: u64, random: [u8; TPK_LEN]) -> Result<(TicketKey, Option<TicketKey>), KmsError> {
        let id = self.keys.keys().next_back().map_or(Ok(1), |m| m.checked_add(1).ok_or_else(|| KmsError::KeyRing("key ids exhausted".into())))?;
        let retired = self.keys.values_mut().next_back().map(|k| {
            k.retired.get_or_insert(now);
            k.clone()
        });
        let key = TicketKey { id, created: now, retired: None, key: hex::encode(random) };
        self.keys.insert(id, key.clone());
        Ok((key, retired))
    }

    /// Removes retired keys whose every ticket has expired (`retired + max_lifetime < now`);
    /// returns their ids (to delete from the store).
    pub fn prune(&mut self, now: u64, max_lifetime: u64) -> Vec<u32> {
        let gone: Vec<u32> =
            self.keys.values().filter(|k| k.retired.is_some_and(|r| r.saturating_add(max_lifetime) < now)).map(|k| k.id).collect();
        for id in &gone {
            self.keys.remove(id);
        }
        gone
    }

    /// Inserts a key read from the store.
    pub fn insert(&mut self, key: TicketKey) {
        self.keys.insert(key.id, key);
    }

    /// Store row name of a key id (8 hex digits, so rows sort by id).
    pub fn row(id: u32) -> String {
        format!("{id:08x}")
    }

    /// Encrypts a key for the store: `nonce(12) || AES-256-GCM(JSON)`, AAD = row name.
    pub fn seal(master: &MasterKey, key: &TicketKey, nonce: [u8; NONCE_LEN]) -> Result<Vec<u8>, KmsError> {
        let plain = Zeroizing::new(serde_json::to_vec(key).map_err(|e| KmsError::KeyRing(e.to_string()))?);
        Ok(seal_row(master, &Self::row(key.id), &plain, nonce)?)
    }

    /// Decrypts a stored key under any of `keys` ([`MasterKeys::open_aad`]); `row` must be
    /// the row it was stored under.
    pub fn open(keys: &MasterKeys, row: &str, sealed: &[u8]) -> Result<TicketKey, KmsError> {
        let plain = keys.open_aad(row, sealed)?;
        let key: TicketKey = serde_json::from_slice(&plain).map_err(|e| KmsError::KeyRing(format!("row {row}: {e}")))?;
        if Self::row(key.id) != row || key.id == MODE3_KEY_ID {
            return Err(KmsError::KeyRing(format!("row {row}: holds key id {}", key.id)));
        }
        Ok(key)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn rotation_keeps_old_keys_until_their_tickets_expire() {
        let mut ring = KeyRing::default();
        assert!(ring.newest().is_none());
        let (k1, none) = ring.rotate(100, [1; 32]).unwrap();
        assert!(none.is_none() && k1.id == 1);
        let (k2, old) = ring.rotate(200, [2; 32]).unwrap();
        assert_eq!((k2.id, old.unwrap().retired), (2, Some(200)));
        assert_eq!(ring.newest().unwrap().id, 2);
        assert_eq!(*ring.get(1).unwrap().key().unwrap(), vec![1; 32]);
        assert!(ring.prune(200 + 3600, 3600).is_empty(), "still needed at the boundary");
        assert_eq!(ring.prune(200 + 3601, 3600), vec![1]);
        assert!(ring.get(1).is_none() && ring.get(2).is_some());
    }

    #[test]
    fn sealed_at_rest() {
        let master = MasterKey::new(&[9; 32]).unwrap();
        let mut ring = KeyRing::default();
        let (k, _) = ring.rotate(5, [0xAB; 32]).unwrap();
        let row = KeyRing::row(k.id);
        let sealed = KeyRing::seal(&master, &k, [7; 12]).unwrap();
        assert!(!sealed.windows(8).any(|w| w == hex::encode([0xAB; 4]).as_bytes()), "key in clear");
        let master = MasterKeys::from(master);
        let back = KeyRing::open(&master, &row, &sealed).unwrap();
        assert_eq!(*back.key().unwrap(), vec![0xAB; 32]);
        assert!(KeyRing::open(&MasterKey::new(&[8; 32]).unwrap().into(), &row, &sealed).is_err());
        assert!(KeyRing::open(&master, "00000002", &sealed).is_err(), "moved row");
        for i in 0..sealed.len() {
            let mut t = sealed.clone();
            t[i] ^= 1;
            assert!(KeyRing::open(&master, &row, &t).is_err(), "byte {i}");
        }
        assert!(KeyRing::open(&master, &row, &sealed[..5]).is_err());
    }
}
