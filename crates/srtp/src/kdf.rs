//! SRTP key derivation (RFC 3711 §4.3, AES-192/256 PRFs of RFC 6188 §3, GCM salts of RFC 7714 §11).
//!
//! ```text
//! r      = index DIV key_derivation_rate        (0 when the rate is 0)
//! key_id = label || r                            (8 + 48 bits)
//! x      = key_id XOR master_salt                (right-aligned in 112 bits)
//! out    = AES-CM keystream, key = master key, IV = x * 2^16, first n bits
//! ```
//! A 96-bit GCM master salt is zero-extended on the right to 112 bits (libsrtp does the same;
//! RFC 7714 §11 derives with the AES-CM PRF of the matching key size).

use zeroize::Zeroizing;

use crate::crypto::Aes;
use crate::Error;

/// The six labels of RFC 3711 §4.3.1 / §4.3.2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Label {
    SrtpEncryption = 0,
    SrtpAuth = 1,
    SrtpSalt = 2,
    SrtcpEncryption = 3,
    SrtcpAuth = 4,
    SrtcpSalt = 5,
}

/// The AES-CM PRF keyed with a master key, plus the master salt.
pub(crate) struct Kdf {
    prf: Aes,
    salt: Zeroizing<[u8; 14]>,
}

impl Kdf {
    pub(crate) fn new(master_key: &[u8], master_salt: &[u8]) -> Result<Self, Error> {
        let mut salt = Zeroizing::new([0u8; 14]);
        salt.get_mut(..master_salt.len())
            .ok_or(Error::Policy("master salt longer than 112 bits"))?
            .copy_from_slice(master_salt);
        Ok(Self { prf: Aes::new(master_key)?, salt })
    }

    /// Fills `out` with the key for `label` at derivation index `r` (48 bits).
    pub(crate) fn derive(&self, label: Label, r: u64, out: &mut [u8]) {
        let mut iv = [0u8; 16];
        iv[..14].copy_from_slice(&*self.salt);
        iv[7] ^= label as u8;
        for (x, r) in iv[8..14].iter_mut().zip(&r.to_be_bytes()[2..]) {
            *x ^= r;
        }
        out.fill(0);
        self.prf.ctr_xor(&iv, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_sits_at_octet_seven() {
        // With an all-zero salt and r = 0, only the label differs between the IVs; a
        // different label must give a different key.
        let kdf = Kdf::new(&[7u8; 16], &[0u8; 14]).expect("valid key");
        let (mut a, mut b) = ([0u8; 16], [0u8; 16]);
        kdf.derive(Label::SrtpEncryption, 0, &mut a);
        kdf.derive(Label::SrtcpEncryption, 0, &mut b);
        assert_ne!(a, b);
    }
}
