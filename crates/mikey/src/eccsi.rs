//! ECCSI: Elliptic Curve-Based Certificateless Signatures for Identity-Based Encryption
//! (RFC 6507), with the parameters MIKEY-SAKKE uses (RFC 6509 §2.1): NIST P-256, SHA-256,
//! N = 32 octets.
//!
//! Roles (RFC 6507 §2):
//! - the KMS holds the secret [`KmsSecret`] (KSAK) and publishes [`Kpak`] = \[KSAK\]G;
//! - for each identity (and key period, see [`identity`]) the KMS issues a Secret Signing Key
//!   [`Ssk`] and a Public Validation Token [`Pvt`] ([`KmsSecret::issue`], §5.1.1);
//! - the user validates them once ([`SigningKey::new`], §5.1.2) and signs
//!   ([`SigningKey::sign`], §5.2.1);
//! - anybody holding the KPAK verifies a signature against the signer's identity ([`verify`],
//!   §5.2.2). The signature carries the PVT, so no certificate is needed.
//!
//! Randomness is always a parameter (sans-IO): `v` for key issuance and `j` for signing. Both
//! must be fresh, uniformly random 32-octet values from a CSPRNG; **reusing `j` for two
//! signatures reveals the SSK** (as with ECDSA). Out-of-range values (0 or ≥ q) are refused
//! with [`Error::FreshRandomness`] so that the caller draws again.
//!
//! Scalar and point arithmetic is the RustCrypto `p256` crate's constant-time arithmetic for
//! everything that involves a secret; verification ([`verify`], and the public right-hand
//! side of the key check in [`SigningKey::new`]) uses its variable-time interleaved
//! multi-scalar multiplication, as all its inputs are public. Every secret scalar (KSAK,
//! SSK, v, j, and the intermediate values of signing) is zeroized when dropped.

use p256::elliptic_curve::ops::{LinearCombination, Reduce};
use p256::elliptic_curve::point::AffineCoordinates;
use p256::elliptic_curve::subtle::ConstantTimeEq;
use p256::elliptic_curve::{Field, PrimeField};
use p256::{AffinePoint, FieldBytes, ProjectivePoint, Scalar};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::error::{Error, Result};
use crate::registry::ErrorCode;

/// Length N of scalars, hashes and point coordinates (RFC 6507 §3.2 with P-256 / SHA-256).
pub const N: usize = 32;
/// Length of an uncompressed point `0x04 ‖ x ‖ y` (RFC 6507 §3.3).
pub const POINT_LEN: usize = 1 + 2 * N;
/// Length of an ECCSI signature `r ‖ s ‖ PVT` (RFC 6507 §3.3): 129 octets.
pub const SIGNATURE_LEN: usize = 2 * N + POINT_LEN;

/// `0x04 ‖ x ‖ y` of a point that is not the identity.
fn encode_point(p: &AffinePoint) -> [u8; POINT_LEN] {
    let mut out = [0u8; POINT_LEN];
    let (tag, rest) = out.split_at_mut(1);
    let (x, y) = rest.split_at_mut(N);
    tag.copy_from_slice(&[0x04]);
    x.copy_from_slice(&p.x());
    y.copy_from_slice(&p.y());
    out
}

/// Parses `0x04 ‖ x ‖ y`: exactly 65 octets, coordinates < p, on the curve (P-256 has
/// cofactor 1, so that also puts it in the group of order q); the identity has no such
/// encoding.
fn decode_point(bytes: &[u8], what: &'static str) -> Result<AffinePoint> {
    if bytes.len() != POINT_LEN {
        return Err(Error::Length { what, expected: POINT_LEN, got: bytes.len() });
    }
    let Some((&0x04, rest)) = bytes.split_first() else {
        return Err(Error::Key { what, reason: "not an uncompressed point (first octet is not 0x04)" });
    };
    let (x, y) = rest.split_at(N);
    let x = FieldBytes::try_from(x).map_err(|_| Error::Key { what, reason: "bad x length" })?;
    let y = FieldBytes::try_from(y).map_err(|_| Error::Key { what, reason: "bad y length" })?;
    Option::from(AffinePoint::from_coordinates(&x, &y)).ok_or(Error::Key { what, reason: "point is not on P-256" })
}

/// A scalar in \[1, q−1\] from 32 big-endian octets, or `None`.
fn nonzero_scalar(bytes: &[u8; N]) -> Option<Scalar> {
    let s: Option<Scalar> = Scalar::from_repr(FieldBytes::from(*bytes)).into();
    s.filter(|s| !bool::from(s.is_zero()))
}

/// A 32-octet hash or coordinate read as an integer and reduced modulo q.
fn reduce(bytes: &[u8; N]) -> Scalar {
    <Scalar as Reduce<FieldBytes>>::reduce(&FieldBytes::from(*bytes))
}

/// HS = hash(G ‖ KPAK ‖ ID ‖ PVT) (RFC 6507 §5.1.1 step 3, §5.1.2 step 1, §5.2.2 step 2),
/// all points uncompressed.
fn hash_hs(kpak: &Kpak, id: &[u8], pvt: &[u8; POINT_LEN]) -> [u8; N] {
    let g = encode_point(&ProjectivePoint::GENERATOR.to_affine());
    Sha256::new().chain_update(g).chain_update(kpak.to_uncompressed()).chain_update(id).chain_update(pvt).finalize().into()
}

/// HE = hash(HS ‖ r ‖ M) (RFC 6507 §5.2.1 step 3, §5.2.2 step 3).
fn hash_he(hs: &[u8; N], r: &[u8; N], msg: &[u8]) -> [u8; N] {
    Sha256::new().chain_update(hs).chain_update(r).chain_update(msg).finalize().into()
}

/// The ECCSI identifier of a URI for one monthly key period, as MIKEY-SAKKE forms it
/// under RFC 6509 ID scheme 1, "tel URI with monthly keys" (the form of the identifier of
/// RFC 6507 Appendix A, `"2011-02\0tel:+447700900123\0"`):
/// `"YYYY-MM" ‖ 0x00 ‖ uri ‖ 0x00`, year and month zero-padded to 4 and 2 digits.
pub fn identity(uri: &str, year: u16, month: u8) -> Vec<u8> {
    let mut id = format!("{year:04}-{month:02}").into_bytes();
    id.push(0);
    id.extend_from_slice(uri.as_bytes());
    id.push(0);
    id
}

/// KMS Public Authentication Key, KPAK = \[KSAK\]G (RFC 6507 §2.2, §4.2).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Kpak(AffinePoint);

impl Kpak {
    /// Parses the 65-octet `0x04 ‖ x ‖ y` form; the point must be on P-256 (RFC 6507 §4.2
    /// requires the KPAK to be a point of E of order q; P-256's cofactor is 1).
    pub fn from_uncompressed(bytes: &[u8]) -> Result<Self> {
        decode_point(bytes, "KPAK").map(Self)
    }

    /// The 65-octet `0x04 ‖ x ‖ y` form.
    pub fn to_uncompressed(&self) -> [u8; POINT_LEN] {
        encode_point(&self.0)
    }
}

impl core::fmt::Debug for Kpak {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Kpak({})", hex_upper(&self.to_uncompressed()))
    }
}

fn hex_upper(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02X}")).collect()
}

/// KMS Secret Authentication Key, KSAK (RFC 6507 §2.2, §4.2): a scalar in \[1, q−1\].
/// Zeroized on drop; `Debug` does not show it.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct KmsSecret(Scalar);

impl KmsSecret {
    /// KSAK from 32 big-endian octets (fresh CSPRNG output when creating a KMS); refuses 0 and
    /// values ≥ q.
    pub fn from_bytes(bytes: &[u8; N]) -> Result<Self> {
        nonzero_scalar(bytes).map(Self).ok_or(Error::FreshRandomness { what: "KSAK (must be in [1, q-1])" })
    }

    /// The 32 big-endian octets of the KSAK (for the KMS's own protected storage).
    pub fn to_bytes(&self) -> Zeroizing<[u8; N]> {
        Zeroizing::new(self.0.to_repr().into())
    }

    /// KPAK = \[KSAK\]G (RFC 6507 §4.2).
    pub fn kpak(&self) -> Kpak {
        Kpak((ProjectivePoint::GENERATOR * self.0).to_affine())
    }

    /// Issues the SSK and PVT of identity `id` (RFC 6507 §5.1.1): PVT = \[v\]G,
    /// HS = hash(G ‖ KPAK ‖ ID ‖ PVT), SSK = KSAK + HS·v mod q.
    ///
    /// `v` must be fresh CSPRNG output, never reused (two SSKs from one `v` reveal the KSAK).
    /// v = 0 or ≥ q, and the (negligible) case SSK = 0, return [`Error::FreshRandomness`]:
    /// draw a new `v`.
    pub fn issue(&self, id: &[u8], v: &[u8; N]) -> Result<(Ssk, Pvt)> {
        let v = Zeroizing::new(nonzero_scalar(v).ok_or(Error::FreshRandomness { what: "ECCSI v (must be in [1, q-1])" })?);
        let pvt = Pvt((ProjectivePoint::GENERATOR * *v).to_affine());
        let hs = hash_hs(&self.kpak(), id, &pvt.to_uncompressed());
        let ssk = Ssk(self.0 + reduce(&hs) * *v);
        if bool::from(ssk.0.is_zero()) {
            return Err(Error::FreshRandomness { what: "ECCSI v (gave SSK = 0)" });
        }
        Ok((ssk, pvt))
    }
}

impl core::fmt::Debug for KmsSecret {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("KmsSecret(..)")
    }
}

/// Secret Signing Key of one identity (RFC 6507 §2.2, §5.1.1): a scalar in \[1, q−1\].
/// Zeroized on drop; `Debug` does not show it.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Ssk(Scalar);

impl Ssk {
    /// SSK from its 32 big-endian octets (as the KMS delivers it); refuses 0 and values ≥ q
    /// (RFC 6507 §5.1.2 asks the user to check the SSK is in range before use).
    pub fn from_bytes(bytes: &[u8; N]) -> Result<Self> {
        nonzero_scalar(bytes).map(Self).ok_or(Error::Key { what: "SSK", reason: "not in [1, q-1]" })
    }

    /// The 32 big-endian octets (for key wrapping or protected storage).
    pub fn to_bytes(&self) -> Zeroizing<[u8; N]> {
        Zeroizing::new(self.0.to_repr().into())
    }
}

impl core::fmt::Debug for Ssk {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Ssk(..)")
    }
}

/// Public Validation Token of one identity (RFC 6507 §2.2, §5.1.1): PVT = \[v\]G, a point of
/// P-256 other than the identity.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Pvt(AffinePoint);

impl Pvt {
    /// Parses the 65-octet `0x04 ‖ x ‖ y` form; the point must be on P-256 (RFC 6507 §5.2.2
    /// step 1).
    pub fn from_uncompressed(bytes: &[u8]) -> Result<Self> {
        decode_point(bytes, "PVT").map(Self)
    }

    /// The 65-octet `0x04 ‖ x ‖ y` form.
    pub fn to_uncompressed(&self) -> [u8; POINT_LEN] {
        encode_point(&self.0)
    }
}

impl core::fmt::Debug for Pvt {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Pvt({})", hex_upper(&self.to_uncompressed()))
    }
}

/// A validated signing key: identity, SSK, PVT and the hash HS that binds them to the KPAK
/// (RFC 6507 §5.1.2). The SSK is zeroized on drop.
#[derive(Clone)]
pub struct SigningKey {
    id: Vec<u8>,
    ssk: Ssk,
    pvt: [u8; POINT_LEN],
    hs: [u8; N],
}

impl core::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SigningKey")
            .field("id", &String::from_utf8_lossy(&self.id))
            .field("pvt", &hex_upper(&self.pvt))
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Validates the SSK/PVT pair received from the KMS for identity `id` (RFC 6507 §5.1.2):
    /// HS = hash(G ‖ KPAK ‖ ID ‖ PVT), then \[SSK\]G must equal KPAK + \[HS\]PVT. Refuses with
    /// [`Error::Key`] otherwise (a wrong SSK, a PVT for another identity or another KMS).
    pub fn new(kpak: &Kpak, id: &[u8], ssk: Ssk, pvt: Pvt) -> Result<Self> {
        let pvt_bytes = pvt.to_uncompressed();
        let hs = hash_hs(kpak, id, &pvt_bytes);
        let lhs = ProjectivePoint::GENERATOR * ssk.0;
        // KPAK + [HS]PVT is public: variable time.
        let rhs = ProjectivePoint::lincomb_vartime(&[(ProjectivePoint::from(kpak.0), Scalar::ONE), (ProjectivePoint::from(pvt.0), reduce(&hs))]);
        if !bool::from(lhs.ct_eq(&rhs)) {
            return Err(Error::Key { what: "SSK", reason: "[SSK]G != KPAK + [HS]PVT (RFC 6507 §5.1.2)" });
        }
        Ok(Self { id: id.to_vec(), ssk, pvt: pvt_bytes, hs })
    }

    /// The signer identity this key belongs to.
    pub fn id(&self) -> &[u8] {
        &self.id
    }

    /// HS = hash(G ‖ KPAK ‖ ID ‖ PVT) (RFC 6507 §5.1.2).
    pub fn hs(&self) -> [u8; N] {
        self.hs
    }

    /// Signs `msg` (RFC 6507 §5.2.1) and returns `r ‖ s ‖ PVT` (129 octets):
    /// J = \[j\]G; r = J_x as N octets, **not** reduced mod q; HE = hash(HS ‖ r ‖ M);
    /// s' = (HE + r·SSK)⁻¹ · j mod q; s = s' (s' always fits in N octets on P-256, since q < 2²⁵⁶,
    /// so the "s = q − s'" branch of step 6 never applies).
    ///
    /// `j` **must be fresh CSPRNG output for every signature and never reused**: two
    /// signatures with one `j` reveal the SSK. j = 0 or ≥ q, and the step-4 case
    /// HE + r·SSK ≡ 0 mod q, return [`Error::FreshRandomness`]: draw a new `j` and sign again.
    pub fn sign(&self, msg: &[u8], j: &[u8; N]) -> Result<[u8; SIGNATURE_LEN]> {
        let j = Zeroizing::new(nonzero_scalar(j).ok_or(Error::FreshRandomness { what: "ECCSI j (must be in [1, q-1])" })?);
        let big_j = (ProjectivePoint::GENERATOR * *j).to_affine();
        let r: [u8; N] = big_j.x().into();
        let he = hash_he(&self.hs, &r, msg);
        let t = Zeroizing::new(reduce(&he) + reduce(&r) * self.ssk.0);
        let t_inv: Option<Scalar> = t.invert().into();
        let t_inv = Zeroizing::new(t_inv.ok_or(Error::FreshRandomness { what: "ECCSI j (HE + r*SSK = 0 mod q)" })?);
        let s = *t_inv * *j;
        let mut sig = [0u8; SIGNATURE_LEN];
        let (r_out, rest) = sig.split_at_mut(N);
        let (s_out, pvt_out) = rest.split_at_mut(N);
        r_out.copy_from_slice(&r);
        s_out.copy_from_slice(&s.to_repr());
        pvt_out.copy_from_slice(&self.pvt);
        Ok(sig)
    }
}

fn auth_failure(reason: &str) -> Error {
    Error::rejected(ErrorCode::AUTH_FAILURE, format!("ECCSI signature: {reason}"))
}

/// Verifies an ECCSI signature `sig` = `r ‖ s ‖ PVT` of `msg` by identity `id` under `kpak`
/// (RFC 6507 §5.2.2):
/// 1. PVT must be a point of P-256 (not the identity);
/// 2. HS = hash(G ‖ KPAK ‖ ID ‖ PVT); 3. HE = hash(HS ‖ r ‖ M);
/// 4. Y = \[HS\]PVT + KPAK; 5. J = \[s\](\[HE\]G + \[r\]Y);
/// 6. accept iff J ≠ O and J_x = r, compared in constant time as 32-octet strings.
///
/// Stricter than the letter of step 6 in two ways that no honest signer can notice: r must be
/// the canonical J_x (< p; the RFC's "J_x = r modulo p" would also accept r + p), and s must
/// be in \[1, q−1\] (the only values §5.2.1 produces on P-256). Any failure is
/// [`Error::Rejected`] with ERR code Auth failure.
pub fn verify(kpak: &Kpak, id: &[u8], msg: &[u8], sig: &[u8]) -> Result<()> {
    let sig: &[u8; SIGNATURE_LEN] = sig.try_into().map_err(|_| auth_failure(&format!("length {} (expected {SIGNATURE_LEN})", sig.len())))?;
    let (r, rest) = sig.split_first_chunk::<N>().ok_or_else(|| auth_failure("truncated r"))?;
    let (s, pvt) = rest.split_first_chunk::<N>().ok_or_else(|| auth_failure("truncated s"))?;
    let pvt_point = decode_point(pvt, "PVT").map_err(|_| auth_failure("PVT is not a point of P-256"))?;
    let s = nonzero_scalar(s).ok_or_else(|| auth_failure("s not in [1, q-1]"))?;
    let mut pvt_arr = [0u8; POINT_LEN];
    pvt_arr.copy_from_slice(pvt);
    let hs = hash_hs(kpak, id, &pvt_arr);
    let he = hash_he(&hs, r, msg);
    // J = [s]([HE]G + [r]([HS]PVT + KPAK)) = [s·HE]G + [s·r·HS]PVT + [s·r]KPAK, one
    // interleaved variable-time multi-scalar multiplication: every input (KPAK, the
    // signature, the identity, the message) is public.
    let sr = s * reduce(r);
    let big_j = ProjectivePoint::lincomb_vartime(&[
        (ProjectivePoint::GENERATOR, s * reduce(&he)),
        (ProjectivePoint::from(pvt_point), sr * reduce(&hs)),
        (ProjectivePoint::from(kpak.0), sr),
    ])
    .to_affine();
    let not_identity = !big_j.is_identity();
    let x_matches = big_j.x().as_slice().ct_eq(r.as_slice());
    if bool::from(not_identity & x_matches) {
        Ok(())
    } else {
        Err(auth_failure("verification failed"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn vectors() -> serde_json::Value {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/vectors/rfc6507_eccsi.json");
        serde_json::from_str(&std::fs::read_to_string(path).expect("vector file")).expect("json")
    }

    fn v(j: &serde_json::Value, name: &str) -> Vec<u8> {
        hex::decode(j["values"][name]["hex"].as_str().expect("hex")).expect("hex")
    }

    fn b32(b: &[u8]) -> [u8; N] {
        let mut out = [0u8; N];
        out[N - b.len()..].copy_from_slice(b);
        out
    }

    struct Rfc {
        kpak: Kpak,
        id: Vec<u8>,
        msg: Vec<u8>,
        sig: Vec<u8>,
    }

    fn rfc() -> Rfc {
        let j = vectors();
        Rfc { kpak: Kpak::from_uncompressed(&v(&j, "KPAK")).unwrap(), id: v(&j, "ID"), msg: v(&j, "M"), sig: v(&j, "signature") }
    }

    #[test]
    fn rfc6507_appendix_a_every_value() {
        let j = vectors();
        let ksak = KmsSecret::from_bytes(&b32(&v(&j, "KSAK"))).unwrap();
        let kpak = ksak.kpak();
        assert_eq!(kpak.to_uncompressed().to_vec(), v(&j, "KPAK"));
        assert_eq!(Kpak::from_uncompressed(&v(&j, "KPAK")).unwrap(), kpak);
        let id = v(&j, "ID");
        assert_eq!(id, identity("tel:+447700900123", 2011, 2));
        let (ssk, pvt) = ksak.issue(&id, &b32(&v(&j, "v"))).unwrap();
        assert_eq!(pvt.to_uncompressed().to_vec(), v(&j, "PVT"));
        assert_eq!(ssk.to_bytes().to_vec(), v(&j, "SSK"));
        let key = SigningKey::new(&kpak, &id, ssk, pvt).unwrap();
        assert_eq!(key.hs().to_vec(), v(&j, "HS"));
        let msg = v(&j, "M");
        let sig = key.sign(&msg, &b32(&v(&j, "j"))).unwrap();
        assert_eq!(sig[..32].to_vec(), v(&j, "r"));
        let r: [u8; 32] = sig[..32].try_into().unwrap();
        assert_eq!(hash_he(&key.hs(), &r, &msg).to_vec(), v(&j, "HE"));
        assert_eq!(sig[32..64].to_vec(), v(&j, "s"));
        assert_eq!(sig.to_vec(), v(&j, "signature"));
        verify(&kpak, &id, &msg, &sig).unwrap();
    }

    #[test]
    fn rfc_signature_tampering_is_rejected() {
        let t = rfc();
        verify(&t.kpak, &t.id, &t.msg, &t.sig).unwrap();
        let rejected = |kpak: &Kpak, id: &[u8], msg: &[u8], sig: &[u8]| {
            let e = verify(kpak, id, msg, sig).unwrap_err();
            assert_eq!(e.err_code(), ErrorCode::AUTH_FAILURE, "{e}");
        };
        let mut msg = t.msg.clone();
        msg[0] ^= 1;
        rejected(&t.kpak, &t.id, &msg, &t.sig);
        rejected(&t.kpak, &t.id, &t.msg[..t.msg.len() - 1], &t.sig);
        // Every single-bit flip of r, s and PVT.
        for i in 0..t.sig.len() {
            for bit in [0x01, 0x80] {
                let mut sig = t.sig.clone();
                sig[i] ^= bit;
                rejected(&t.kpak, &t.id, &t.msg, &sig);
            }
        }
        rejected(&t.kpak, &identity("tel:+447700900124", 2011, 2), &t.msg, &t.sig);
        rejected(&t.kpak, &identity("tel:+447700900123", 2011, 3), &t.msg, &t.sig);
        let other = KmsSecret::from_bytes(&b32(&[0x01, 0x23, 0x46])).unwrap().kpak();
        rejected(&other, &t.id, &t.msg, &t.sig);
        rejected(&t.kpak, &t.id, &t.msg, &t.sig[..128]);
        let mut long = t.sig.clone();
        long.push(0);
        rejected(&t.kpak, &t.id, &t.msg, &long);
        // r + p (same value "modulo p") and s + q are refused.
        let p = hex::decode("FFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF").unwrap();
        let q = hex::decode("FFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551").unwrap();
        let add = |a: &[u8], b: &[u8]| -> Option<Vec<u8>> {
            let (mut out, mut carry) = (vec![0u8; 32], 0u16);
            for i in (0..32).rev() {
                let s = u16::from(a[i]) + u16::from(b[i]) + carry;
                out[i] = s as u8;
                carry = s >> 8;
            }
            (carry == 0).then_some(out)
        };
        if let Some(r2) = add(&t.sig[..32], &p) {
            let mut sig = t.sig.clone();
            sig[..32].copy_from_slice(&r2);
            rejected(&t.kpak, &t.id, &t.msg, &sig);
        }
        if let Some(s2) = add(&t.sig[32..64], &q) {
            let mut sig = t.sig.clone();
            sig[32..64].copy_from_slice(&s2);
            rejected(&t.kpak, &t.id, &t.msg, &sig);
        }
    }

    #[test]
    fn out_of_range_randomness_and_keys_are_refused() {
        let q = hex::decode("FFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551").unwrap();
        let q: [u8; 32] = q.try_into().unwrap();
        assert!(matches!(KmsSecret::from_bytes(&[0; 32]), Err(Error::FreshRandomness { .. })));
        assert!(matches!(KmsSecret::from_bytes(&q), Err(Error::FreshRandomness { .. })));
        assert!(matches!(KmsSecret::from_bytes(&[0xff; 32]), Err(Error::FreshRandomness { .. })));
        assert!(Ssk::from_bytes(&[0; 32]).is_err());
        assert!(Ssk::from_bytes(&q).is_err());
        let ksak = KmsSecret::from_bytes(&b32(&[7])).unwrap();
        assert!(matches!(ksak.issue(b"id", &[0; 32]), Err(Error::FreshRandomness { .. })));
        assert!(matches!(ksak.issue(b"id", &q), Err(Error::FreshRandomness { .. })));
        let (ssk, pvt) = ksak.issue(b"id", &b32(&[9])).unwrap();
        let key = SigningKey::new(&ksak.kpak(), b"id", ssk, pvt).unwrap();
        assert!(matches!(key.sign(b"m", &[0; 32]), Err(Error::FreshRandomness { .. })));
        assert!(matches!(key.sign(b"m", &q), Err(Error::FreshRandomness { .. })));
        // Points: wrong length, wrong tag, off the curve, coordinate ≥ p.
        let good = pvt.to_uncompressed();
        assert!(Pvt::from_uncompressed(&good[..64]).is_err());
        let mut bad = good;
        bad[0] = 0x02;
        assert!(Pvt::from_uncompressed(&bad).is_err());
        let mut bad = good;
        bad[64] ^= 1;
        assert!(Pvt::from_uncompressed(&bad).is_err());
        assert!(Kpak::from_uncompressed(&[0x04; 65]).is_err());
        let mut bad = [0xffu8; 65];
        bad[0] = 0x04;
        assert!(Kpak::from_uncompressed(&bad).is_err());
        assert_eq!(format!("{ksak:?}"), "KmsSecret(..)");
        assert!(!format!("{key:?}").contains(&hex_upper(&key.ssk.to_bytes()[..])));
    }

    #[test]
    fn ssk_validation_rejects_wrong_keys() {
        let j = vectors();
        let kpak = Kpak::from_uncompressed(&v(&j, "KPAK")).unwrap();
        let id = v(&j, "ID");
        let pvt = Pvt::from_uncompressed(&v(&j, "PVT")).unwrap();
        let mut ssk = v(&j, "SSK");
        SigningKey::new(&kpak, &id, Ssk::from_bytes(&b32(&ssk)).unwrap(), pvt).unwrap();
        // SSK off by one, right SSK for another identity / another KMS, PVT of another v.
        let ssk_ok = Ssk::from_bytes(&b32(&ssk)).unwrap();
        ssk[31] ^= 1;
        let e = SigningKey::new(&kpak, &id, Ssk::from_bytes(&b32(&ssk)).unwrap(), pvt).unwrap_err();
        assert!(matches!(e, Error::Key { what: "SSK", .. }), "{e}");
        assert!(SigningKey::new(&kpak, &identity("tel:+447700900123", 2011, 3), ssk_ok.clone(), pvt).is_err());
        let other = KmsSecret::from_bytes(&b32(&[0x01, 0x23, 0x46])).unwrap().kpak();
        assert!(SigningKey::new(&other, &id, ssk_ok.clone(), pvt).is_err());
        let other_pvt = Pvt(ProjectivePoint::GENERATOR.to_affine());
        assert!(SigningKey::new(&kpak, &id, ssk_ok, other_pvt).is_err());
    }

    /// The ECCSI signatures of three real TS 33.180 I_MESSAGEs (Streamwide's published
    /// vectors) verify over the covered bytes: every octet before the signature, the 2-octet
    /// SIGN header included (high-security.md §3.1). Signer ID = the initiator's UID (IDR
    /// role 8).
    #[test]
    fn streamwide_i_message_signatures_verify() {
        use base64::Engine;
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/vectors/mikey-sakke-streamwide.json");
        let j: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let kpak = Kpak::from_uncompressed(&hex::decode(j["kms"]["PubAuthKey_KPAK"].as_str().unwrap()).unwrap()).unwrap();
        let msgs = j["i_messages"].as_array().unwrap();
        assert_eq!(msgs.len(), 3);
        for m in msgs {
            let bytes = base64::engine::general_purpose::STANDARD.decode(m["imessage_b64"].as_str().unwrap()).unwrap();
            let user = &j["users"][m["initiator"].as_str().unwrap()];
            let uid = hex::decode(user["uid"].as_str().unwrap()).unwrap();
            // The decoder confirms the message ends with the ECCSI SIGN payload.
            let msg = crate::Message::decode(&bytes).unwrap();
            let Some(crate::Payload::Sign(sign)) = msg.payloads.last() else { panic!("no SIGN") };
            assert_eq!(sign.sig_type, crate::registry::SignatureType::ECCSI);
            assert_eq!(sign.signature.len(), SIGNATURE_LEN);
            let (covered, sig) = bytes.split_at(bytes.len() - SIGNATURE_LEN);
            verify(&kpak, &uid, covered, sig).unwrap();
            // Without the SIGN header it does not verify; a different signer does not either.
            assert!(verify(&kpak, &uid, &covered[..covered.len() - 2], sig).is_err());
            let other = hex::decode(j["users"]["bob"]["uid"].as_str().unwrap()).unwrap();
            assert!(verify(&kpak, &other, covered, sig).is_err());
            // The user's own SSK/PVT validates under the KPAK.
            let ssk = Ssk::from_bytes(&hex::decode(user["ssk"].as_str().unwrap()).unwrap().try_into().unwrap()).unwrap();
            let pvt = Pvt::from_uncompressed(&hex::decode(user["pvt"].as_str().unwrap()).unwrap()).unwrap();
            assert_eq!(&sig[64..], &pvt.to_uncompressed()[..]);
            SigningKey::new(&kpak, &uid, ssk, pvt).unwrap();
        }
    }

    fn scalar_bytes() -> impl Strategy<Value = [u8; 32]> {
        any::<[u8; 32]>().prop_filter("in [1, q-1]", |b| nonzero_scalar(b).is_some())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        #[test]
        fn sign_verify_round_trip(ksak in scalar_bytes(), v in scalar_bytes(), j in scalar_bytes(),
                                  id in proptest::collection::vec(any::<u8>(), 0..64),
                                  msg in proptest::collection::vec(any::<u8>(), 0..200)) {
            let kms = KmsSecret::from_bytes(&ksak).unwrap();
            let kpak = kms.kpak();
            let (ssk, pvt) = kms.issue(&id, &v).unwrap();
            let key = SigningKey::new(&kpak, &id, ssk, pvt).unwrap();
            let sig = key.sign(&msg, &j).unwrap();
            prop_assert!(verify(&kpak, &id, &msg, &sig).is_ok());
            let mut other = msg;
            other.push(0);
            prop_assert!(verify(&kpak, &id, &other, &sig).is_err());
        }

        #[test]
        fn verify_never_panics(sig in proptest::collection::vec(any::<u8>(), 0..140), msg in proptest::collection::vec(any::<u8>(), 0..20)) {
            let t = rfc();
            prop_assert!(verify(&t.kpak, &t.id, &msg, &sig).is_err());
        }
    }
}
