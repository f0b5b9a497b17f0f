//! The MIKEY PRF (RFC 3830 §4.1.2) with HMAC-SHA-1 (PRF func 0, "MIKEY-1") or HMAC-SHA-256
//! (PRF func 1, PRF-HMAC-SHA-256, RFC 6043 §6.1).
//!
//! ```text
//! P(s, label, m) = HMAC(s, A_1 || label) || ... || HMAC(s, A_m || label),
//!                  A_0 = label, A_i = HMAC(s, A_(i-1))
//! PRF(inkey, label) = leftmost outkey_len bits of P(s_1,label,m) XOR ... XOR P(s_n,label,m)
//! ```
//! where `s_1..s_n` are the 256-bit chunks of `inkey` (the last may be shorter) and `m` is
//! the number of HMAC output blocks needed for `outkey_len`.

use hmac::{Hmac, KeyInit, Mac};
use zeroize::{Zeroize, Zeroizing};

use crate::error::{Error, Result};
use crate::registry::PrfFunc;

/// Size of an inkey chunk in octets (256 bits, RFC 3830 §4.1.2).
const CHUNK: usize = 32;

pub(crate) fn hmac_with<M: Mac + KeyInit>(key: &[u8], parts: &[&[u8]]) -> Result<Vec<u8>> {
    let mut mac = <M as KeyInit>::new_from_slice(key)
        .map_err(|_| Error::Length { what: "HMAC key", expected: 0, got: key.len() })?;
    for p in parts {
        mac.update(p);
    }
    Ok(mac.finalize().into_bytes().to_vec())
}

/// The P-function: `m` blocks of HMAC output keyed with `s`.
fn p_function(prf: PrfFunc, s: &[u8], label: &[u8], out_len: usize) -> Result<Zeroizing<Vec<u8>>> {
    match prf {
        PrfFunc::MIKEY_1 => p_function_with::<Hmac<sha1::Sha1>>(s, label, out_len),
        PrfFunc::HMAC_SHA_256 => p_function_with::<Hmac<sha2::Sha256>>(s, label, out_len),
        other => Err(Error::Unsupported { what: "PRF func", value: u16::from(other.0) }),
    }
}

/// [`p_function`] with HMAC `M`, keyed once: every HMAC of the chain starts from a copy of the
/// keyed state instead of hashing the key pads again (two compression-function calls saved
/// per HMAC, most of the cost for these one- and two-block messages), and A_(m+1), which no
/// block uses, is not computed. The A_i and output blocks live on the stack (zeroized before
/// return); the output is the one allocation.
fn p_function_with<M: Mac + KeyInit + Clone>(s: &[u8], label: &[u8], out_len: usize) -> Result<Zeroizing<Vec<u8>>> {
    let keyed = <M as KeyInit>::new_from_slice(s).map_err(|_| Error::Length { what: "HMAC key", expected: 0, got: s.len() })?;
    let hmac = |a: &[u8], with_label: bool| {
        let mut mac = keyed.clone();
        mac.update(a);
        if with_label {
            mac.update(label);
        }
        mac.finalize().into_bytes()
    };
    let mut out = Zeroizing::new(Vec::with_capacity(out_len));
    // A_1 = HMAC(s, A_0) with A_0 = label.
    let mut a = hmac(label, false);
    loop {
        let mut block = hmac(&a, true);
        let take = block.len().min(out_len - out.len());
        out.extend_from_slice(block.get(..take).unwrap_or_default());
        block.as_mut_slice().zeroize();
        if out.len() >= out_len {
            break;
        }
        let next = hmac(&a, false);
        a.as_mut_slice().zeroize();
        a = next;
    }
    a.as_mut_slice().zeroize();
    Ok(out)
}

/// `PRF(inkey, label)` producing `out_len` octets (RFC 3830 §4.1.2).
pub fn prf(prf: PrfFunc, inkey: &[u8], label: &[u8], out_len: usize) -> Result<Zeroizing<Vec<u8>>> {
    let mut chunks = inkey.chunks(CHUNK);
    // An empty inkey is a single empty chunk; one chunk (every key up to 256 bits) needs no XOR.
    let mut out = p_function(prf, chunks.next().unwrap_or_default(), label, out_len)?;
    for s in chunks {
        let p = p_function(prf, s, label, out_len)?;
        for (o, b) in out.iter_mut().zip(p.iter()) {
            *o ^= b;
        }
    }
    Ok(out)
}
