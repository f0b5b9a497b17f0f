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
//! every row under the new key with the same AAD, offline or, on PostgreSQL, while the
//! servers run (docs/kms-store.md § Online rotation).
//!
//! A server holds [`MasterKeys`]: the one key it seals with and any previous keys it only
//! opens with; every place that opens a sealed value goes through [`MasterKeys::open`] /
//! [`MasterKeys::open_aad`], which try the sealing key, then the others, in order. The AEAD
//! tag is the only signal (a key that does not verify the tag is not the row's key); no
//! plaintext is inspected. Keys are named in the store and in logs by their
//! [`MasterKey::fingerprint`], never by their value.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::hmac;
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
    /// The same key was given twice (as the sealing key and a previous key, or twice as a
    /// previous key).
    #[error("master key {fingerprint} given twice")]
    Duplicate {
        /// The key's fingerprint.
        fingerprint: String,
    },
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
pub struct MasterKey {
    key: LessSafeKey,
    fingerprint: [u8; FINGERPRINT_LEN],
}

/// Octets of a [`MasterKey::fingerprint`] (shown as twice as many hex digits).
const FINGERPRINT_LEN: usize = 8;

/// What the fingerprint authenticates (HMAC-SHA-256 under the master key).
const FINGERPRINT_LABEL: &[u8] = b"mediasec master-key fingerprint v1";

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MasterKey({})", self.fingerprint())
    }
}

impl MasterKey {
    /// From 32 octets.
    pub fn new(key: &[u8]) -> Result<Self, SealError> {
        let k = UnboundKey::new(&AES_256_GCM, key).map_err(|_| SealError::KeyLength)?;
        let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), FINGERPRINT_LABEL);
        let mut fingerprint = [0u8; FINGERPRINT_LEN];
        fingerprint.copy_from_slice(tag.as_ref().get(..FINGERPRINT_LEN).ok_or(SealError::Seal)?);
        Ok(Self { key: LessSafeKey::new(k), fingerprint })
    }

    /// The key's public name: the first 8 octets of HMAC-SHA-256(key, "mediasec master-key
    /// fingerprint v1"), 16 hex digits. One-way (a PRF output under the key: it reveals
    /// nothing of the key and opens nothing); what servers record in the store and what logs
    /// and errors show, so that operators and the rotation compare keys without handling them.
    pub fn fingerprint(&self) -> String {
        hex::encode(self.fingerprint)
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

/// The keys of a server: the one it seals with, and previous keys it only opens with (during
/// a master-key rotation, docs/kms-store.md § Online rotation). Opening tries the sealing key
/// first, then the others in the order given; the first whose tag verifies wins.
pub struct MasterKeys {
    seal: MasterKey,
    open_also: Vec<MasterKey>,
}

impl std::fmt::Debug for MasterKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterKeys").field("seal", &self.seal).field("open_also", &self.open_also).finish()
    }
}

impl From<MasterKey> for MasterKeys {
    fn from(seal: MasterKey) -> Self {
        Self { seal, open_also: Vec::new() }
    }
}

impl MasterKeys {
    /// Seals with `seal`, opens with it and with `open_also`; a key given twice is refused
    /// ([`SealError::Duplicate`]: a configuration mistake, such as the new key also given as
    /// the previous one).
    pub fn new(seal: MasterKey, open_also: Vec<MasterKey>) -> Result<Self, SealError> {
        let mut seen = vec![seal.fingerprint];
        for k in &open_also {
            if seen.contains(&k.fingerprint) {
                return Err(SealError::Duplicate { fingerprint: k.fingerprint() });
            }
            seen.push(k.fingerprint);
        }
        Ok(Self { seal, open_also })
    }

    /// The key new values are sealed with.
    pub fn sealing(&self) -> &MasterKey {
        &self.seal
    }

    /// Every key values are opened with: the sealing key first.
    pub fn opening(&self) -> impl Iterator<Item = &MasterKey> {
        std::iter::once(&self.seal).chain(&self.open_also)
    }

    /// Whether a key with this fingerprint is among [`MasterKeys::opening`].
    pub fn opens(&self, fingerprint: &str) -> bool {
        self.opening().any(|k| k.fingerprint() == fingerprint)
    }

    /// Seals `plain` for row `key` of `table` under the sealing key ([`MasterKey::seal`]).
    pub fn seal(&self, table: Table, key: &str, plain: &[u8]) -> Result<Vec<u8>, SealError> {
        self.seal.seal(table, key, plain)
    }

    /// Opens a value sealed for row `key` of `table` ([`MasterKeys::open_aad`] with AAD
    /// `<table>:<key>`).
    pub fn open(&self, table: Table, key: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
        self.open_aad(&row_aad(table, key), sealed)
    }

    /// Opens a value sealed with AAD `row` under any of the keys: the sealing key, then the
    /// previous ones. [`SealError::Open`] when none verifies the tag.
    pub fn open_aad(&self, row: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let mut last = SealError::Open { row: row.to_owned() };
        for k in self.opening() {
            match open_row(k, row, sealed) {
                Ok(plain) => return Ok(plain),
                Err(e @ SealError::TooShort { .. }) => return Err(e),
                Err(e) => last = e,
            }
        }
        Err(last)
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
    master.key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(row.as_bytes()), &mut *buf).map_err(|_| SealError::Seal)?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&buf);
    Ok(out)
}

/// Opens what [`seal_row`] sealed with AAD `row`.
pub fn open_row(master: &MasterKey, row: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
    let (nonce, ct) = sealed.split_at_checked(NONCE_LEN).ok_or_else(|| SealError::TooShort { row: row.to_owned() })?;
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::TooShort { row: row.to_owned() })?;
    let mut buf = Zeroizing::new(ct.to_vec());
    let len = master.key.open_in_place(nonce, Aad::from(row.as_bytes()), &mut buf).map_err(|_| SealError::Open { row: row.to_owned() })?.len();
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
        assert_eq!(master.fingerprint(), MasterKey::new(&[9; 32]).unwrap().fingerprint(), "a function of the key");
        assert_ne!(master.fingerprint(), wrong.fingerprint());
        assert_eq!(master.fingerprint().len(), 16);
        assert!(matches!(MasterKey::from_hex("zz"), Err(SealError::KeyHex)));
    }

    #[test]
    fn several_keys_open_what_any_of_them_sealed_and_seal_with_the_first() {
        let (old, new) = (MasterKey::new(&[1; 32]).unwrap(), MasterKey::new(&[2; 32]).unwrap());
        let by_old = old.seal(Table::Settings, "a", b"from old").unwrap();
        let by_new = new.seal(Table::Settings, "a", b"from new").unwrap();
        let both = MasterKeys::new(MasterKey::new(&[2; 32]).unwrap(), vec![MasterKey::new(&[1; 32]).unwrap()]).unwrap();
        assert_eq!(&*both.open(Table::Settings, "a", &by_old).unwrap(), b"from old");
        assert_eq!(&*both.open(Table::Settings, "a", &by_new).unwrap(), b"from new");
        let sealed = both.seal(Table::Settings, "a", b"x").unwrap();
        assert!(new.open(Table::Settings, "a", &sealed).is_ok() && old.open(Table::Settings, "a", &sealed).is_err(), "sealed with the first key");
        assert!(matches!(both.open(Table::Settings, "b", &by_old), Err(SealError::Open { .. })), "moved row: no key opens it");
        assert!(matches!(both.open(Table::Settings, "a", &by_old[..3]), Err(SealError::TooShort { .. })));
        assert!(both.opens(&old.fingerprint()) && both.opens(&new.fingerprint()) && !both.opens(&MasterKey::new(&[3; 32]).unwrap().fingerprint()));
        let alone = MasterKeys::from(MasterKey::new(&[2; 32]).unwrap());
        assert!(alone.open(Table::Settings, "a", &by_old).is_err(), "a key not given does not open");
        let dup = MasterKeys::new(MasterKey::new(&[2; 32]).unwrap(), vec![MasterKey::new(&[2; 32]).unwrap()]);
        assert!(matches!(dup, Err(SealError::Duplicate { .. })));
        assert!(!format!("{both:?}").contains("0202"), "Debug shows fingerprints only");
    }
}
