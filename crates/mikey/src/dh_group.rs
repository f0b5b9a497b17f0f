//! Finite-field Diffie-Hellman for the MIKEY DH payload (RFC 3830 §4.1.1 "TGK = g^(xi·xr)",
//! §6.4 DH-Group).
//!
//! RFC 3830 §6.4 registers three groups: OAKLEY 5 (value 0), OAKLEY 1 (1) and OAKLEY 2 (2).
//! Only **OAKLEY 5** is accepted: the 1536-bit MODP group of RFC 3526 §2, generator 2,
//! p = 2^1536 − 2^1472 − 1 + 2^64·(⌊2^1406·π⌋ + 741804), a safe prime (p = 2q + 1, q prime).
//! RFC 3526 §8 estimates its strength at 90–120 bits. OAKLEY 1 (768-bit) and OAKLEY 2
//! (1024-bit, RFC 2409 §6) are within reach of academic discrete-log computations and are
//! refused with [`Error::Unsupported`] (ERR code "DH group not supported" when a peer sends
//! them).
//!
//! - Private exponent x: 256 bits of caller randomness (x ∈ \[2, 2^256)), so the work to
//!   recover it by Pollard's rho is 2^128, above the group's own strength.
//! - Exponentiations with a secret exponent are constant-time Montgomery ladders/windows of
//!   `crypto-bigint` (`ConstMontyForm::pow`, fixed 256-bit exponent length).
//! - Peer public values are validated (NIST SP 800-56A §5.6.2.3.1 style): exactly 192 octets,
//!   2 ≤ y ≤ p − 2, and y^q ≡ 1 (mod p), which, p being a safe prime, puts y in the subgroup
//!   of prime order q and refuses the small-subgroup values (1, p − 1) and the quadratic
//!   non-residues.
//! - The shared secret g^(xi·xr) is the fixed-length 192-octet big-endian value (leading
//!   zeros kept), the TGK of RFC 3830 §4.1.1. Secrets are zeroized on drop.

use crypto_bigint::modular::{ConstMontyForm, ConstMontyParams};
use crypto_bigint::{U256, U1536, const_monty_params};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::error::{Error, Result};
use crate::registry::DhGroup;

const_monty_params!(
    Modp1536,
    U1536,
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7EDEE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF0598DA48361C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB9ED529077096966D670C354E4ABC9804F1746C08CA237327FFFFFFFFFFFFFFFF",
    "The 1536-bit MODP prime of RFC 3526 §2 (MIKEY DH-Group OAKLEY 5)."
);

type Fp = ConstMontyForm<Modp1536, { U1536::LIMBS }>;

/// Length of an OAKLEY 5 DH value and of the shared secret: 192 octets (RFC 3830 §6.4).
pub const VALUE_LEN: usize = 192;

/// Length of the caller randomness that becomes the private exponent (256 bits).
pub const SECRET_LEN: usize = 32;

fn p() -> U1536 {
    *Modp1536::PARAMS.modulus().as_ref()
}

/// Accepts OAKLEY 5 only (see the module documentation for why OAKLEY 1 and 2 are refused).
pub fn check_group(group: DhGroup) -> Result<()> {
    match group {
        DhGroup::OAKLEY_5 => Ok(()),
        DhGroup::OAKLEY_1 | DhGroup::OAKLEY_2 => Err(Error::Unsupported {
            what: "DH group (OAKLEY 1 and 2, 768/1024-bit MODP, are refused as too weak; only OAKLEY 5)",
            value: u16::from(group.0),
        }),
        _ => Err(Error::Unsupported { what: "DH group (not registered in RFC 3830 §6.4)", value: u16::from(group.0) }),
    }
}

fn to_bytes(v: &U1536) -> [u8; VALUE_LEN] {
    let mut out = [0u8; VALUE_LEN];
    let mut enc = v.to_be_bytes();
    out.copy_from_slice(enc.as_ref());
    enc.zeroize();
    out
}

/// Validates a peer's OAKLEY 5 public value y: 192 octets, 2 ≤ y ≤ p − 2, y^q ≡ 1 (mod p).
/// Failures are [`Error::Key`].
pub fn validate_public(y: &[u8]) -> Result<()> {
    parse_public(y).map(|_| ())
}

fn parse_public(y: &[u8]) -> Result<Fp> {
    if y.len() != VALUE_LEN {
        return Err(Error::Length { what: "OAKLEY 5 DH value", expected: VALUE_LEN, got: y.len() });
    }
    let v = U1536::from_be_slice(y);
    let p = p();
    let two = U1536::from_u8(2);
    if v < two || v > p.wrapping_sub(&two) {
        return Err(Error::Key { what: "DH value", reason: "outside [2, p-2] (RFC 3526 group)" });
    }
    let q = p.shr_vartime(1);
    let y = Fp::new(&v);
    // Public data: variable time is fine here.
    if y.pow_vartime(&q) != Fp::ONE {
        return Err(Error::Key { what: "DH value", reason: "not in the prime-order subgroup (y^q != 1 mod p)" });
    }
    Ok(y)
}

/// An ephemeral DH private exponent (xi or xr of RFC 3830 §4.1.1) for OAKLEY 5. Lives only as
/// long as one exchange; zeroized on drop, never serialised, so a finished session's TGK cannot
/// be recomputed later (perfect forward secrecy).
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct EphemeralSecret {
    x: U256,
}

impl core::fmt::Debug for EphemeralSecret {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("EphemeralSecret(..)")
    }
}

impl EphemeralSecret {
    /// The private exponent for `group` from 32 octets of fresh CSPRNG output (big-endian).
    /// Refuses every group but OAKLEY 5 ([`check_group`]) and the degenerate exponents 0 and 1
    /// ([`Error::FreshRandomness`]: draw again).
    pub fn new(group: DhGroup, random: &[u8; SECRET_LEN]) -> Result<Self> {
        check_group(group)?;
        let x = U256::from_be_slice(random);
        if x < U256::from_u8(2) {
            return Err(Error::FreshRandomness { what: "DH private exponent (must be >= 2)" });
        }
        Ok(Self { x })
    }

    /// The public value g^x mod p as 192 big-endian octets (the DH-value field, RFC 3830 §6.4).
    pub fn public_value(&self) -> [u8; VALUE_LEN] {
        let g = Fp::new(&U1536::from_u8(2));
        to_bytes(&g.pow(&self.x).retrieve())
    }

    /// The shared secret y^x mod p (RFC 3830 §4.1.1: the TGK g^(xi·xr)) as 192 big-endian
    /// octets, after validating the peer's public value `peer` ([`validate_public`]).
    pub fn shared_secret(&self, peer: &[u8]) -> Result<Zeroizing<[u8; VALUE_LEN]>> {
        let y = parse_public(peer)?;
        let z = Zeroizing::new(y.pow(&self.x));
        let v = Zeroizing::new(z.retrieve());
        Ok(Zeroizing::new(to_bytes(&v)))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // Generated with Python's built-in pow() (independent big-integer arithmetic):
    //   P = int(<the RFC 3526 §2 hex above>, 16)
    //   xi = int.from_bytes(hashlib.sha256(b"mediasec dh_group KAT xi").digest(), "big")
    //   xr = int.from_bytes(hashlib.sha256(b"mediasec dh_group KAT xr").digest(), "big")
    //   pow(2, xi, P), pow(2, xr, P), pow(2, xi * xr, P)  -> .to_bytes(192, "big").hex()
    const XI: &str = "a26c8095c98447e1f4dff8f4776fca7b0c7c92ed211951fbb765ef47d1eed485";
    const XR: &str = "f489e9992b3c20218b0a349b7495efa4236bd68f138326eaeea258386265f24d";
    const GXI: &str = "0f3684c34970dd0bcf53bce2603f2b7ab623517c433269b193922ebfce62f4d68c50f20a66c2b89d43fd3ebbbefc553acb7f2a861cd643203985780a25c0517d11d55cb87f659dfbc11a7f144050747c372c6d9b53b397ef8cd71b9c240071a3611035e30dbc0dde7bd2acd9b63e6182a2a8f6eb6811a94eda4a5bc7f52c9f34ff1224e913f6599104e6895d159347bdd613b81a1e0c49ad56fde211e7425a65f051b596c3a9eeb8273ed61a6cadfdacb1db1cd40234fcfe4bfdb5d8149e028c";
    const GXR: &str = "715f2c48fd4b80376a9001a2545180059c2d8455698719644da6c843f271efee87ace3a8e9a803fe1434706568ee3cf0d8d6cea00578c33ca19b22f217525ca4828fee563d3ec31a3f0f7487d329efa073da9b9a68ae2b88443e63f749beb86e794212e144fb374eaf867fd2f8837307012f8b05d3515c88a7cb59f1dfc49c9013f249866ebad47dee70513b9a25a6a4f51d75e7ada0984e74d92786c4783cda67a405796001bd1a2d5253e8a581a9958ecafcccea575e1cc93c7d4684cec03c";
    const SHARED: &str = "fb28000faac93bb34b2bc94feb1482eab6f0de43a3bcf24da7912f771b790a270e05dc3104bca5faa4fe96d85f5f21cc629a1444b7b3f71bcd330b1998734318afaa972ff25c1fb3e51b722af394bd1f4ae521350c348fca896dee4fd8c3366b1ea5dc6d35de24fd8613085fa3a336bd6baa3ee25d060838615271668ecba38461e73a5170864735ff8c59b890c4968354171991314746734a4703088ada3bded9c5902ea3f48eb0e23d92a525f0d4d8fd035867da633be14019ed5ef7bfbf9d";

    fn secret(h: &str) -> EphemeralSecret {
        EphemeralSecret::new(DhGroup::OAKLEY_5, &hex::decode(h).unwrap().try_into().unwrap()).unwrap()
    }

    fn be(v: &U1536) -> Vec<u8> {
        to_bytes(v).to_vec()
    }

    #[test]
    fn known_answer_against_python_pow() {
        let (xi, xr) = (secret(XI), secret(XR));
        assert_eq!(hex::encode(xi.public_value()), GXI);
        assert_eq!(hex::encode(xr.public_value()), GXR);
        assert_eq!(hex::encode(*xi.shared_secret(&hex::decode(GXR).unwrap()).unwrap()), SHARED);
        assert_eq!(hex::encode(*xr.shared_secret(&hex::decode(GXI).unwrap()).unwrap()), SHARED);
    }

    #[test]
    fn prime_has_the_rfc3526_shape_and_2_is_in_the_subgroup() {
        // Leading and trailing 64 one-bits, 1536 bits, and 2^q ≡ 1 (2 generates the q-subgroup).
        let p = be(&p());
        assert_eq!(p.len(), 192);
        assert!(p[..8].iter().chain(&p[184..]).all(|b| *b == 0xff));
        validate_public(&be(&U1536::from_u8(2))).unwrap();
    }

    #[test]
    fn invalid_public_values_are_refused() {
        let xi = secret(XI);
        let p = p();
        let refused = |v: Vec<u8>| {
            let e = xi.shared_secret(&v).unwrap_err();
            assert!(matches!(e, Error::Key { .. } | Error::Length { .. }), "{e}");
        };
        refused(be(&U1536::ZERO));
        refused(be(&U1536::ONE));
        refused(be(&p.wrapping_sub(&U1536::ONE))); // order 2
        refused(be(&p));
        refused(be(&U1536::MAX));
        // In range but not in the subgroup: p − 2 = −2 and p − 3 = −3 are non-residues
        // (−1 is a non-residue since p ≡ 3 mod 4; 2 and 3 are residues).
        refused(be(&p.wrapping_sub(&U1536::from_u8(2))));
        refused(be(&p.wrapping_sub(&U1536::from_u8(3))));
        refused(vec![2; 191]);
        refused(vec![2; 193]);
        refused(Vec::new());
    }

    #[test]
    fn weak_and_unknown_groups_and_degenerate_exponents_are_refused() {
        for g in [DhGroup::OAKLEY_1, DhGroup::OAKLEY_2, DhGroup(3), DhGroup(255)] {
            assert!(matches!(EphemeralSecret::new(g, &[7; 32]), Err(Error::Unsupported { .. })));
            assert_eq!(check_group(g).unwrap_err().err_code(), crate::registry::ErrorCode::UNSPECIFIED);
        }
        let mut one = [0u8; 32];
        assert!(matches!(EphemeralSecret::new(DhGroup::OAKLEY_5, &one), Err(Error::FreshRandomness { .. })));
        one[31] = 1;
        assert!(matches!(EphemeralSecret::new(DhGroup::OAKLEY_5, &one), Err(Error::FreshRandomness { .. })));
        one[31] = 2;
        assert!(EphemeralSecret::new(DhGroup::OAKLEY_5, &one).is_ok());
        assert_eq!(format!("{:?}", secret(XI)), "EphemeralSecret(..)");
    }

    fn exponent() -> impl Strategy<Value = [u8; 32]> {
        any::<[u8; 32]>().prop_filter(">= 2", |b| b[..31].iter().any(|x| *x != 0) || b[31] >= 2)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        #[test]
        fn both_sides_agree_and_public_values_validate(a in exponent(), b in exponent()) {
            let (xa, xb) = (EphemeralSecret::new(DhGroup::OAKLEY_5, &a).unwrap(), EphemeralSecret::new(DhGroup::OAKLEY_5, &b).unwrap());
            let (ya, yb) = (xa.public_value(), xb.public_value());
            prop_assert!(validate_public(&ya).is_ok());
            let (sa, sb) = (xa.shared_secret(&yb).unwrap(), xb.shared_secret(&ya).unwrap());
            prop_assert_eq!(&sa[..], &sb[..]);
            prop_assert!(validate_public(&sa[..]).is_ok());
        }

        #[test]
        fn arbitrary_peer_values_never_panic(v in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = secret(XI).shared_secret(&v);
        }
    }
}
