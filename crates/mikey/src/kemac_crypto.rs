//! KEMAC protection (RFC 3830 §4.2.3–4.2.4, §5.1): encryption of the Key data chain with
//! NULL, AES-CM-128/256 or AES-KW-128, and the MAC (HMAC-SHA-1-160, HMAC-SHA-256-256)
//! with constant-time verification.

use aes::cipher::{BlockCipherDecrypt, BlockCipherEncrypt, KeyInit, KeyIvInit, StreamCipher};
use hmac::Hmac;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::keys::MessageKeys;
use crate::prf::hmac_with;
use crate::registry::{EncrAlg, ErrorCode, MacAlg};

/// AES-CM IV of RFC 3830 §4.2.3: `(S XOR (0x0000 || CSB ID || T)) || 0x0000`, with S the
/// 112-bit salt_key and T the 64-bit timestamp (32-bit types zero-padded to 64 bits).
pub fn aes_cm_iv(salt: &[u8], csb_id: u32, t: u64) -> Result<[u8; 16]> {
    if salt.len() != 14 {
        return Err(Error::Length { what: "AES-CM salt_key", expected: 14, got: salt.len() });
    }
    let mut iv = [0u8; 16];
    let mut x = [0u8; 14];
    x[2..6].copy_from_slice(&csb_id.to_be_bytes());
    x[6..14].copy_from_slice(&t.to_be_bytes());
    for ((o, a), b) in iv.iter_mut().zip(salt.iter()).zip(x.iter()) {
        *o = a ^ b;
    }
    Ok(iv)
}

fn aes_cm(key: &[u8], iv: &[u8; 16], data: &mut [u8]) -> Result<()> {
    match key.len() {
        16 => ctr::Ctr128BE::<aes::Aes128>::new_from_slices(key, iv)
            .map_err(|_| Error::Length { what: "AES-CM-128 key", expected: 16, got: key.len() })?
            .apply_keystream(data),
        32 => ctr::Ctr128BE::<aes::Aes256>::new_from_slices(key, iv)
            .map_err(|_| Error::Length { what: "AES-CM-256 key", expected: 32, got: key.len() })?
            .apply_keystream(data),
        n => return Err(Error::Length { what: "AES-CM key", expected: 16, got: n }),
    }
    Ok(())
}

fn aes128(key: &[u8]) -> Result<aes::Aes128> {
    aes::Aes128::new_from_slice(key)
        .map_err(|_| Error::Length { what: "AES-KW-128 key", expected: 16, got: key.len() })
}

/// `A || R[i]` as one AES block.
fn join(a: &[u8; 8], r: &[u8; 8]) -> aes::Block {
    let mut buf = [0u8; 16];
    for (o, v) in buf.iter_mut().zip(a.iter().chain(r.iter())) {
        *o = *v;
    }
    aes::Block::from(buf)
}

/// Splits an AES block into `MSB(64)` and `LSB(64)`.
fn split(b: &aes::Block) -> ([u8; 8], [u8; 8]) {
    let (mut hi, mut lo) = ([0u8; 8], [0u8; 8]);
    for (o, v) in hi.iter_mut().chain(lo.iter_mut()).zip(b.iter()) {
        *o = *v;
    }
    (hi, lo)
}

/// RFC 3394 §2.2.1 key wrap with an explicit 64-bit initial value (RFC 3830 §4.2.3 uses the
/// salt as IV instead of the default A6A6...).
pub fn aes_kw_wrap(kek: &[u8], iv: [u8; 8], plain: &[u8]) -> Result<Vec<u8>> {
    if !plain.len().is_multiple_of(8) || plain.len() < 16 {
        return Err(Error::Length { what: "AES-KW plaintext (multiple of 8, >= 16)", expected: 16, got: plain.len() });
    }
    let cipher = aes128(kek)?;
    let mut a = iv;
    let mut r: Vec<[u8; 8]> = plain.chunks_exact(8).map(|c| c.try_into().unwrap_or([0; 8])).collect();
    let mut t: u64 = 0;
    for _ in 0..6 {
        for ri in r.iter_mut() {
            t = t.wrapping_add(1);
            let mut b = join(&a, ri);
            cipher.encrypt_block(&mut b);
            let (hi, lo) = split(&b);
            a = hi;
            for (x, y) in a.iter_mut().zip(t.to_be_bytes()) {
                *x ^= y;
            }
            *ri = lo;
        }
    }
    let mut out = a.to_vec();
    for ri in &r {
        out.extend_from_slice(ri);
    }
    Ok(out)
}

/// RFC 3394 §2.2.2 key unwrap; the recovered initial value must equal `iv` (compared in
/// constant time).
pub fn aes_kw_unwrap(kek: &[u8], iv: [u8; 8], wrapped: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
    if !wrapped.len().is_multiple_of(8) || wrapped.len() < 24 {
        return Err(Error::rejected(ErrorCode::AUTH_FAILURE, "AES-KW data is not a multiple of 8 octets >= 24"));
    }
    let cipher = aes128(kek)?;
    let mut chunks = wrapped.chunks_exact(8).map(|c| <[u8; 8]>::try_from(c).unwrap_or([0; 8]));
    let mut a = chunks.next().unwrap_or([0; 8]);
    let mut r: Vec<[u8; 8]> = chunks.collect();
    let n = u64::try_from(r.len()).unwrap_or(0);
    for j in (0..6u64).rev() {
        for (i, ri) in r.iter_mut().enumerate().rev() {
            let t = n.wrapping_mul(j).wrapping_add(u64::try_from(i).unwrap_or(0)).wrapping_add(1);
            for (x, y) in a.iter_mut().zip(t.to_be_bytes()) {
                *x ^= y;
            }
            let mut b = join(&a, ri);
            cipher.decrypt_block(&mut b);
            (a, *ri) = split(&b);
        }
    }
    if !bool::from(a.ct_eq(&iv)) {
        return Err(Error::rejected(ErrorCode::AUTH_FAILURE, "AES-KW integrity check failed"));
    }
    let mut out = Zeroizing::new(Vec::with_capacity(r.len() * 8));
    for ri in &r {
        out.extend_from_slice(ri);
    }
    Ok(out)
}

fn kw_iv(keys: &MessageKeys) -> [u8; 8] {
    let mut iv = [0u8; 8];
    for (o, s) in iv.iter_mut().zip(keys.salt_key.iter()) {
        *o = *s;
    }
    iv
}

/// Encrypts the plaintext Key data chain for a KEMAC (RFC 3830 §4.2.3). `t` is the 64-bit
/// timestamp feeding the AES-CM IV.
pub fn encrypt(alg: EncrAlg, keys: &MessageKeys, csb_id: u32, t: u64, plain: &[u8]) -> Result<Vec<u8>> {
    match alg {
        EncrAlg::NULL => Ok(plain.to_vec()),
        EncrAlg::AES_CM_128 | EncrAlg::AES_CM_256 => {
            let mut data = plain.to_vec();
            aes_cm(&keys.encr_key, &aes_cm_iv(&keys.salt_key, csb_id, t)?, &mut data)?;
            Ok(data)
        }
        EncrAlg::AES_KW_128 => aes_kw_wrap(&keys.encr_key, kw_iv(keys), plain),
        other => Err(Error::rejected(ErrorCode::INVALID_EA, format!("encryption algorithm {} not supported", other.0))),
    }
}

/// Decrypts KEMAC Encr data (inverse of [`encrypt`]).
pub fn decrypt(alg: EncrAlg, keys: &MessageKeys, csb_id: u32, t: u64, data: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
    match alg {
        EncrAlg::NULL => Ok(Zeroizing::new(data.to_vec())),
        EncrAlg::AES_CM_128 | EncrAlg::AES_CM_256 => {
            let mut out = Zeroizing::new(data.to_vec());
            aes_cm(&keys.encr_key, &aes_cm_iv(&keys.salt_key, csb_id, t)?, &mut out)?;
            Ok(out)
        }
        EncrAlg::AES_KW_128 => aes_kw_unwrap(&keys.encr_key, kw_iv(keys), data),
        other => Err(Error::rejected(ErrorCode::INVALID_EA, format!("encryption algorithm {} not supported", other.0))),
    }
}

/// Computes the MAC of `parts` (concatenated) with `alg` (RFC 3830 §4.2.4, RFC 6043 §6.2).
pub fn mac(alg: MacAlg, auth_key: &[u8], parts: &[&[u8]]) -> Result<Vec<u8>> {
    match alg {
        MacAlg::NULL => Ok(Vec::new()),
        MacAlg::HMAC_SHA_1_160 => hmac_with::<Hmac<sha1::Sha1>>(auth_key, parts),
        MacAlg::HMAC_SHA_256_256 => hmac_with::<Hmac<sha2::Sha256>>(auth_key, parts),
        other => Err(Error::rejected(ErrorCode::INVALID_MAC, format!("MAC algorithm {} not supported", other.0))),
    }
}

/// Verifies a MAC in constant time; a mismatch is an authentication failure (ERR 0).
pub fn verify_mac(alg: MacAlg, auth_key: &[u8], parts: &[&[u8]], tag: &[u8]) -> Result<()> {
    let expected = mac(alg, auth_key, parts)?;
    if expected.len() == tag.len() && bool::from(expected.ct_eq(tag)) {
        Ok(())
    } else {
        Err(Error::rejected(ErrorCode::AUTH_FAILURE, "MAC verification failed"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 3394 §4.1: wrap 128 bits of key data with a 128-bit KEK (default IV).
    #[test]
    fn rfc3394_4_1_vector_round_trips() {
        let kek: Vec<u8> = (0u8..16).collect();
        let key = [0x00u8, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff];
        let expected = [
            0x1f, 0xa6, 0x8b, 0x0a, 0x81, 0x12, 0xb4, 0x47, 0xae, 0xf3, 0x4b, 0xd8, 0xfb, 0x5a, 0x7b, 0x82, 0x9d, 0x3e,
            0x86, 0x23, 0x71, 0xd2, 0xcf, 0xe5,
        ];
        let iv = [0xa6u8; 8];
        let w = aes_kw_wrap(&kek, iv, &key).expect("wrap");
        assert_eq!(w, expected);
        assert_eq!(aes_kw_unwrap(&kek, iv, &w).expect("unwrap").as_slice(), &key);
        let mut bad = w.clone();
        if let Some(b) = bad.get_mut(5) {
            *b ^= 1;
        }
        assert!(aes_kw_unwrap(&kek, iv, &bad).is_err());
        assert!(aes_kw_unwrap(&kek, [0; 8], &w).is_err());
    }

    #[test]
    fn aes_cm_iv_layout() {
        let salt = [0u8; 14];
        let iv = aes_cm_iv(&salt, 0x0102_0304, 0x1112_1314_1516_1718).expect("iv");
        assert_eq!(iv, [0, 0, 1, 2, 3, 4, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0, 0]);
    }
}
