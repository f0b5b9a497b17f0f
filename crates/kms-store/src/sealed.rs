//! Values sealed at rest under a master key: AES-256-GCM, stored as `nonce(12) ‖ ciphertext ‖
//! tag(16)`, the AAD naming the row the value belongs to, so a sealed value copied into
//! another row (or another table) no longer opens. Whoever reads the store (a copy of the redb
//! file, a PostgreSQL dump) sees no secret without the master key.
//!
//! Used by the KMS (its ticket-key ring, LI warrants, signing keys: `mediasec-kms`) and by the
//! BSF (K, OPc/OP, Ks, challenges in flight: `mediasec-bsf`), one implementation for both.
//! Nonces are random (96 bits from the system generator): NIST SP 800-38D §8.3 bounds one key
//! to 2^32 seals with random nonces. The KMS seals rarely (key rotation, warrants); the BSF
//! seals twice per bootstrap (the challenge, the session's Ks), so a BSF doing 1 000
//! bootstraps/s without pause reaches the bound in about 25 days. The master key is replaced
//! by [`crate::rekey`] (offline: `mediasec kms rekey`, `mediasec bsf rekey`), which re-seals
//! every row under the new key with the same AAD.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use zeroize::Zeroizing;

use crate::Table;

/// Why a value could not be sealed or opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// The master key is not 32 octets.
    #[error("master key must be 32 octets")]
    KeyLength,
    /// The master key text is not hex.
    #[error("master key is not hex")]
    KeyHex,
    /// The AEAD or the random generator failed.
    #[error("sealing failed")]
    Seal,
    /// The stored value is shorter than a nonce.
    #[error("row {row}: too short")]
    TooShort {
        /// The row (the AAD).
        row: String,
    },
    /// The tag does not verify: another master key, another row, or a changed value.
    #[error("row {row}: wrong master key or tampered entry")]
    Open {
        /// The row (the AAD).
        row: String,
    },
}

/// The key that seals values at rest (AES-256-GCM). aws-lc wipes the key schedule when it is
/// dropped.
pub struct MasterKey(LessSafeKey);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    /// From 32 octets.
    pub fn new(key: &[u8]) -> Result<Self, SealError> {
        let k = UnboundKey::new(&AES_256_GCM, key).map_err(|_| SealError::KeyLength)?;
        Ok(Self(LessSafeKey::new(k)))
    }

    /// A fresh random key, for stores that live no longer than the process (labs, demos,
    /// benchmarks).
    pub fn random() -> Result<Self, SealError> {
        let mut k = Zeroizing::new([0u8; 32]);
        aws_lc_rs::rand::fill(&mut *k).map_err(|_| SealError::Seal)?;
        Self::new(&*k)
    }

    /// From 64 hex digits (surrounding white space ignored).
    pub fn from_hex(s: &str) -> Result<Self, SealError> {
        let k = Zeroizing::new(hex::decode(s.trim()).map_err(|_| SealError::KeyHex)?);
        Self::new(&k)
    }

    /// Seals `plain` for row `key` of `table` under a fresh random nonce; AAD `<table>:<key>`.
    pub fn seal(&self, table: Table, key: &str, plain: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| SealError::Seal)?;
        seal_row(self, &row_aad(table, key), plain, nonce)
    }

    /// Opens what [`MasterKey::seal`] sealed for row `key` of `table`.
    pub fn open(&self, table: Table, key: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
        open_row(self, &row_aad(table, key), sealed)
    }
}

/// The AAD of row `key` of `table`: `<table>:<key>`.
pub fn row_aad(table: Table, key: &str) -> String {
    format!("{}:{key}", table.name())
}

/// Seals `plain` under `nonce` with AAD `row`: `nonce(12) ‖ AES-256-GCM(plain)`. The caller
/// guarantees the nonce is never used twice with this key ([`MasterKey::seal`] draws it at
/// random); `row` names where the value is stored.
pub fn seal_row(master: &MasterKey, row: &str, plain: &[u8], nonce: [u8; NONCE_LEN]) -> Result<Vec<u8>, SealError> {
    // Room for the tag up front: no reallocation leaves plaintext behind.
    let mut buf = Zeroizing::new(Vec::with_capacity(plain.len() + AES_256_GCM.tag_len()));
    buf.extend_from_slice(plain);
    master.0.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(row.as_bytes()), &mut *buf).map_err(|_| SealError::Seal)?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&buf);
    Ok(out)
}

/// Opens what [`seal_row`] sealed with AAD `row`.
pub fn open_row(master: &MasterKey, row: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
    let (nonce, ct) = sealed.split_at_checked(NONCE_LEN).ok_or_else(|| SealError::TooShort { row: row.to_owned() })?;
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::TooShort { row: row.to_owned() })?;
    let mut buf = Zeroizing::new(ct.to_vec());
    let len = master.0.open_in_place(nonce, Aad::from(row.as_bytes()), &mut buf).map_err(|_| SealError::Open { row: row.to_owned() })?.len();
    buf.truncate(len);
    Ok(buf)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_in_their_row_under_their_key() {
        let master = MasterKey::new(&[9; 32]).unwrap();
        let sealed = master.seal(Table::BsfSubscribers, "alice", b"secret K").unwrap();
        assert!(!sealed.windows(8).any(|w| w == b"secret K"), "value in clear");
        assert_eq!(&*master.open(Table::BsfSubscribers, "alice", &sealed).unwrap(), b"secret K");
        assert_ne!(master.seal(Table::BsfSubscribers, "alice", b"secret K").unwrap(), sealed, "fresh nonce per seal");
        let wrong = MasterKey::from_hex(&"08".repeat(32)).unwrap();
        assert!(matches!(wrong.open(Table::BsfSubscribers, "alice", &sealed), Err(SealError::Open { .. })));
        assert!(matches!(master.open(Table::BsfSubscribers, "bob", &sealed), Err(SealError::Open { .. })), "moved row");
        assert!(matches!(master.open(Table::BsfSessions, "alice", &sealed), Err(SealError::Open { .. })), "moved table");
        for i in 0..sealed.len() {
            let mut t = sealed.clone();
            t[i] ^= 1;
            assert!(master.open(Table::BsfSubscribers, "alice", &t).is_err(), "byte {i}");
        }
        assert!(matches!(master.open(Table::BsfSubscribers, "alice", &sealed[..5]), Err(SealError::TooShort { .. })));
        assert!(matches!(MasterKey::new(&[1; 16]), Err(SealError::KeyLength)));
        assert!(matches!(MasterKey::from_hex("zz"), Err(SealError::KeyHex)));
    }
}
