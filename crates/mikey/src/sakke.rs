//! SAKKE: Sakai-Kasahara Key Encryption (RFC 6508) with MIKEY-SAKKE parameter set 1
//! (RFC 6509 Appendix A): the identity-based key transport of MIKEY-SAKKE.
//!
//! Parameter set 1: E: y² = x³ − 3x over F_p, p a 1024-bit prime with p ≡ 3 (mod 4) and
//! p + 1 = 4q, q a 1022-bit prime; P = (Px, Py) of order q; g = ⟨P, P⟩; n = 128; Hash =
//! SHA-256. E is supersingular with embedding degree 2: the pairing is the reduced
//! Tate-Lichtenbaum pairing into PF_p = F_p²*/F_p* (RFC 6508 §3.2, §3.3).
//!
//! Roles (RFC 6508 §2):
//! - the KMS holds the master secret z ([`KmsSecret`]) and publishes Z = \[z\]P ([`PublicKey`]);
//! - for identifier b it issues the Receiver Secret Key K_b = \[(b + z)⁻¹\]P ([`KmsSecret::issue`],
//!   §6.1.1) which the receiver validates once ([`Rsk::new`]: ⟨\[b\]P + Z, K_b⟩ = g, §6.1.2);
//! - anybody holding Z encapsulates a 16-octet SSV to b ([`encapsulate`], §6.2.1);
//! - the holder of K_b decapsulates it ([`decapsulate`], §6.2.2), re-checking R.
//!
//! **The KMS secret z decrypts everything**: with z anybody computes every K_b, past or
//! future, and so every SSV ever sent (key escrow by design, no forward secrecy).
//!
//! Identifiers b are octet strings (for MIKEY-SAKKE ID scheme 1 `"YYYY-MM\0uri\0"`,
//! [`crate::eccsi::identity`]; for TS 33.180 the 32-octet UID). In point multiplications and
//! in b + z they are read as big-endian integers (RFC 6508 §2.1) and reduced mod q, which
//! does not change \[b\]P since P has order q; HashToIntegerRange hashes the octets.
//!
//! Side channels: every operation on a secret (z, b + z and its inverse, r, the RSK
//! coordinates, g^r, the SSV) uses `crypto-bigint`'s constant-time Montgomery arithmetic,
//! fixed 4-bit windows over all 1024 bits with constant-time table scans for scalar
//! multiplications and for g^r (fixed-base tables for P and g), and constant-time inversion. Two steps branch on data, both on public values only: the Miller
//! loop branches on the bits of the public constant q − 1, and the reduction of an
//! identifier (public) loops over its length. Decoding a received point checks it against
//! the curve equation (public data).
//!
//! Work done once: multiples of the generator P and powers of g come from fixed-base tables
//! (256 × 16 entries, ≈ 1.5 MB and ≈ 1 MB, built on first use: one addition or
//! multiplication per window, no doubling or squaring); a
//! [`Recipient`] keeps \[b\]P + Z for a sender, and an [`Rsk`] keeps its
//! own \[b\]P + Z and the Miller-loop lines of K (computed with K fixed, using ⟨R, K⟩ =
//! ⟨K, R⟩), so a decapsulation only evaluates those lines at R.
//!
//! All secrets (z, the RSK and its lines, r, the pairing value, the mask, the SSV) are
//! zeroized on drop.

use std::sync::OnceLock;

use crypto_bigint::ctutils::{CtEq, CtLt, CtSelect};
use crypto_bigint::modular::{ConstMontyForm, ConstMontyParams};
use crypto_bigint::{Choice, NonZero, U1024, Word, const_monty_params};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::error::{Error, Result};
use crate::registry::ErrorCode;

const_monty_params!(
    SakkeP,
    U1024,
    "997ABB1F0A563FDA65C61198DAD0657A416C0CE19CB48261BE9AE358B3E01A2EF40AAB27E2FC0F1B228730D531A59CB0E791B39FF7C88A19356D27F4A666A6D0E26C6487326B4CD4512AC5CD65681CE1B6AFF4A831852A82A7CF3C521C3C09AA9F94D6AF56971F1FFCE3E82389857DB080C5DF10AC7ACE87666D807AFEA85FEB",
    "p of MIKEY-SAKKE parameter set 1 (RFC 6509 Appendix A)."
);

const_monty_params!(
    SakkeQ,
    U1024,
    "265EAEC7C2958FF69971846636B4195E905B0338672D20986FA6B8D62CF8068BBD02AAC9F8BF03C6C8A1CC354C69672C39E46CE7FDF222864D5B49FD2999A9B4389B1921CC9AD335144AB173595A07386DABFD2A0C614AA0A9F3CF14870F026AA7E535ABD5A5C7C7FF38FA08E2615F6C203177C42B1EB3A1D99B601EBFAA17FB",
    "q = (p + 1) / 4 of MIKEY-SAKKE parameter set 1 (RFC 6509 Appendix A)."
);

type Fp = ConstMontyForm<SakkeP, { U1024::LIMBS }>;
type Fq = ConstMontyForm<SakkeQ, { U1024::LIMBS }>;

const PX: U1024 = U1024::from_be_hex(
    "53FC09EE332C29AD0A7990053ED9B52A2B1A2FD60AEC69C698B2F204B6FF7CBFB5EDB6C0F6CE2308AB10DB9030B09E1043D5F22CDB9DFA55718BD9E7406CE8909760AF765DD5BCCB337C86548B72F2E1A702C3397A60DE74A7C1514DBA66910DD5CFB4CC80728D87EE9163A5B63F73EC80EC46C4967E0979880DC8ABEAE63895",
);
const PY: U1024 = U1024::from_be_hex(
    "0A8249063F6009F1F9F1F0533634A135D3E82016029906963D778D821E141178F5EA69F4654EC2B9E7F7F5E5F0DE55F66B598CCF9A140B2E416CFF0CA9E032B970DAE117AD547C6CCAD696B5B7652FE0AC6F1E80164AA989492D979FC5A4D5F213515AD7E9CB99A980BDAD5AD5BB4636ADB9B5706A67DCDE75573FD71BEF16D7",
);
/// g = ⟨P, P⟩ as its PF_p representative (RFC 6509 Appendix A).
const G: U1024 = U1024::from_be_hex(
    "66FC2A432B6EA392148F15867D623068C6A87BD1FB94C41E27FABE658E015A87371E94744C96FEDA449AE9563F8BC446CBFDA85D5D00EF577072DA8F541721BEEE0FAED1828EAB90B99DFB0138C7843355DF0460B4A9FD74B4F1A32BCAFA1FFAD682C033A7942BCCE3720F20B9B7B0403C8CAE87B7A0042ACDE0FAB36461EA46",
);

/// Length of a field element / coordinate: 128 octets.
pub const FIELD_LEN: usize = 128;
/// Length of an encoded point `0x04 ‖ x ‖ y`: 257 octets.
pub const POINT_LEN: usize = 1 + 2 * FIELD_LEN;
/// Length of the SSV (n = 128 bits).
pub const SSV_LEN: usize = 16;
/// Length of the encapsulated data `R_(b,S) ‖ H` (the MIKEY-SAKKE "SAKKE data"): 273 octets.
pub const ENCAPSULATED_LEN: usize = POINT_LEN + SSV_LEN;
/// Length of the KMS master secret as octets (big-endian, zero-padded).
pub const SECRET_LEN: usize = FIELD_LEN;

fn q() -> U1024 {
    *SakkeQ::PARAMS.modulus().as_ref()
}

fn fp(v: &U1024) -> Fp {
    Fp::new(v)
}

/// An affine point of E (never the point at infinity).
#[derive(Clone, Copy)]
struct Affine {
    x: Fp,
    y: Fp,
}

impl Zeroize for Affine {
    fn zeroize(&mut self) {
        self.x.zeroize();
        self.y.zeroize();
    }
}

/// Jacobian coordinates: (X, Y, Z) is (X/Z², Y/Z³); Z = 0 is the point at infinity.
#[derive(Clone, Copy)]
struct Jacobian {
    x: Fp,
    y: Fp,
    z: Fp,
}

impl Zeroize for Jacobian {
    fn zeroize(&mut self) {
        self.x.zeroize();
        self.y.zeroize();
        self.z.zeroize();
    }
}

fn generator() -> Affine {
    Affine { x: fp(&PX), y: fp(&PY) }
}

/// \[d·16^w\]P for every window w and digit d: the fixed-base table of the generator
/// (public; 256 × 16 points, ≈ 1.5 MB), built once per process on first use.
fn generator_table() -> &'static [[Jacobian; WINDOW_TABLE]] {
    static TABLE: OnceLock<Vec<[Jacobian; WINDOW_TABLE]>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut base = generator().to_jacobian();
        (0..U1024::BITS / WINDOW)
            .map(|_| {
                let row = base.multiples();
                for _ in 0..WINDOW {
                    base = base.double();
                }
                row
            })
            .collect()
    })
}

/// \[k\]P for k < q from [`generator_table`]: one addition per window and no doubling, the
/// window's entry read by a constant-time scan (k may be secret: z, (b + z)⁻¹). Windows are
/// added from the lowest, so the sum so far is below 16^w ≤ the entry added (or the entry
/// is \[0\]P): the addition never meets its doubling case.
fn mul_generator(k: &U1024) -> Jacobian {
    generator_table().iter().zip(0..).fold(Jacobian::INFINITY, |acc, (row, w)| {
        let mut t = ct_lookup(row, window(k, w), Jacobian::INFINITY, Jacobian::select);
        let sum = acc.add(&t);
        t.zeroize();
        sum
    })
}

fn on_curve(x: &Fp, y: &Fp) -> bool {
    let three = fp(&U1024::from_u8(3));
    let rhs = x.square().mul(x).sub(&three.mul(x));
    bool::from(y.square().ct_eq(&rhs))
}

impl Affine {
    fn to_jacobian(self) -> Jacobian {
        Jacobian { x: self.x, y: self.y, z: Fp::ONE }
    }

    /// `0x04 ‖ x ‖ y`, coordinates as 128-octet big-endian integers.
    fn encode(&self) -> [u8; POINT_LEN] {
        let mut out = [0u8; POINT_LEN];
        let (tag, rest) = out.split_at_mut(1);
        let (x, y) = rest.split_at_mut(FIELD_LEN);
        tag.copy_from_slice(&[0x04]);
        x.copy_from_slice(fe_bytes(&self.x).as_ref());
        y.copy_from_slice(fe_bytes(&self.y).as_ref());
        out
    }

    /// Parses `0x04 ‖ x ‖ y`: 257 octets, coordinates < p, on E. (Public data.)
    fn decode(bytes: &[u8], what: &'static str) -> Result<Self> {
        if bytes.len() != POINT_LEN {
            return Err(Error::Length { what, expected: POINT_LEN, got: bytes.len() });
        }
        let Some((&0x04, rest)) = bytes.split_first() else {
            return Err(Error::Key { what, reason: "not an uncompressed point (first octet is not 0x04)" });
        };
        let (x, y) = rest.split_at(FIELD_LEN);
        let p = *SakkeP::PARAMS.modulus().as_ref();
        let (x, y) = (U1024::from_be_slice(x), U1024::from_be_slice(y));
        if x >= p || y >= p {
            return Err(Error::Key { what, reason: "coordinate not below p" });
        }
        let (x, y) = (fp(&x), fp(&y));
        if !on_curve(&x, &y) {
            return Err(Error::Key { what, reason: "point is not on the SAKKE curve y^2 = x^3 - 3x" });
        }
        Ok(Self { x, y })
    }
}

/// 128-octet big-endian encoding of a field element.
fn fe_bytes(v: &Fp) -> Zeroizing<[u8; FIELD_LEN]> {
    let mut out = Zeroizing::new([0u8; FIELD_LEN]);
    let mut n = v.retrieve();
    let mut enc = n.to_be_bytes();
    out.copy_from_slice(enc.as_ref());
    enc.as_mut().zeroize();
    n.zeroize();
    out
}

/// Window width of the fixed-window scalar multiplication and exponentiation.
const WINDOW: u32 = 4;
/// Entries of a window table: the multiples / powers 0 … 2^WINDOW − 1.
const WINDOW_TABLE: usize = 1 << WINDOW;

/// Digit `w` (bits 4w … 4w + 3) of k. Reads the limb chosen by the public position w: no
/// branch or memory access depends on k.
fn window(k: &U1024, w: u32) -> u32 {
    let bit = w * WINDOW;
    let word = k.as_words().get((bit / Word::BITS) as usize).copied().unwrap_or(0);
    ((word >> (bit % Word::BITS)) & ((1 << WINDOW) - 1)) as u32
}

/// table\[d\] by a scan over every entry with constant-time selection (d secret).
fn ct_lookup<T: Copy>(table: &[T; WINDOW_TABLE], d: u32, init: T, select: fn(&T, &T, Choice) -> T) -> T {
    table.iter().zip(0u32..).fold(init, |acc, (t, i)| select(&acc, t, Choice::from_u32_eq(i, d)))
}

impl Jacobian {
    const INFINITY: Self = Self { x: Fp::ONE, y: Fp::ONE, z: Fp::ZERO };

    fn is_infinity(&self) -> Choice {
        self.z.ct_eq(&Fp::ZERO)
    }

    fn select(a: &Self, b: &Self, c: Choice) -> Self {
        Self { x: a.x.ct_select(&b.x, c), y: a.y.ct_select(&b.y, c), z: a.z.ct_select(&b.z, c) }
    }

    /// Doubling for a = −3 (EFD dbl-2001-b); also returns α = 3(X − Z²)(X + Z²) and δ = Z²,
    /// γ = Y² for the line function. Infinity doubles to infinity (Z3 = 2YZ).
    fn double_parts(&self) -> (Self, Fp, Fp, Fp) {
        let delta = self.z.square();
        let gamma = self.y.square();
        let beta = self.x.mul(&gamma);
        let t = self.x.sub(&delta).mul(&self.x.add(&delta));
        let alpha = t.double().add(&t);
        let beta4 = beta.double().double();
        let x3 = alpha.square().sub(&beta4.double());
        let z3 = self.y.add(&self.z).square().sub(&gamma).sub(&delta);
        let gamma2_8 = gamma.square().double().double().double();
        let y3 = alpha.mul(&beta4.sub(&x3)).sub(&gamma2_8);
        (Self { x: x3, y: y3, z: z3 }, alpha, delta, gamma)
    }

    fn double(&self) -> Self {
        self.double_parts().0
    }

    /// General addition (EFD add-2007-bl), with constant-time selection of the other input
    /// when one is at infinity; a = −b gives H = 0, so Z3 = 0: infinity. The doubling case
    /// a = b is never met by its callers: the ladder keeps R1 − R0 = P, and
    /// [`mul`](Self::mul) adds \[d\]B (d < 16) to \[16a\]B with 16a + d ≤ k < q, equal only
    /// if 16a = d (q divides the order of B), that is both at infinity.
    fn add(&self, b: &Self) -> Self {
        let z1z1 = self.z.square();
        let z2z2 = b.z.square();
        let u1 = self.x.mul(&z2z2);
        let u2 = b.x.mul(&z1z1);
        let s1 = self.y.mul(&b.z).mul(&z2z2);
        let s2 = b.y.mul(&self.z).mul(&z1z1);
        let h = u2.sub(&u1);
        let i = h.double().square();
        let j = h.mul(&i);
        let r = s2.sub(&s1).double();
        let v = u1.mul(&i);
        let x3 = r.square().sub(&j).sub(&v.double());
        let y3 = r.mul(&v.sub(&x3)).sub(&s1.mul(&j).double());
        let z3 = self.z.add(&b.z).square().sub(&z1z1).sub(&z2z2).mul(&h);
        let sum = Self { x: x3, y: y3, z: z3 };
        let sum = Self::select(&sum, b, self.is_infinity());
        Self::select(&sum, self, b.is_infinity())
    }

    /// \[k\]self for k < q (every caller's scalar is reduced mod q) and self of order q, 2q
    /// or 4q (or small order: a wrong, public result): fixed 4-bit windows from the top, each
    /// window four doublings and one addition of table\[digit\] (table\[d\] = \[d\]self)
    /// read by a constant-time scan of the whole table. The operation sequence and the memory
    /// accesses do not depend on k (k may be secret: r, z, (b + z)⁻¹).
    fn mul(&self, k: &U1024) -> Self {
        let mut table = self.multiples();
        let mut acc = Self::INFINITY;
        for w in (0..U1024::BITS / WINDOW).rev() {
            for _ in 0..WINDOW {
                acc = acc.double();
            }
            let mut t = ct_lookup(&table, window(k, w), Self::INFINITY, Self::select);
            acc = acc.add(&t);
            t.zeroize();
        }
        table.iter_mut().for_each(Zeroize::zeroize);
        acc
    }

    /// \[0\]self … \[15\]self, the table of one window.
    fn multiples(&self) -> [Self; WINDOW_TABLE] {
        let mut table = [Self::INFINITY; WINDOW_TABLE];
        for i in 1..WINDOW_TABLE {
            // [2i]B = 2·[i]B; [2i+1]B = [2i]B + B (never a doubling: 2i ≠ 1 mod the order).
            let entry = if i % 2 == 0 { table.get(i / 2).map(Self::double) } else { table.get(i - 1).map(|t| t.add(self)) };
            if let (Some(entry), Some(slot)) = (entry, table.get_mut(i)) {
                *slot = entry;
            }
        }
        table
    }

    /// The Montgomery ladder this crate used before the windowed [`mul`](Self::mul): kept as
    /// the reference the property test compares against.
    #[cfg(test)]
    fn mul_ladder(&self, k: &U1024) -> Self {
        let mut r0 = Self::INFINITY;
        let mut r1 = *self;
        for i in (0..U1024::BITS).rev() {
            let bit = k.bit(i);
            let (a, b) = (Self::select(&r0, &r1, bit), Self::select(&r1, &r0, bit));
            let (a, b) = (a.double(), a.add(&b));
            r0 = Self::select(&a, &b, bit);
            r1 = Self::select(&b, &a, bit);
        }
        r0
    }

    /// Whether this point equals the affine `a`, compared projectively in constant time
    /// (X = x·Z², Y = y·Z³; false at infinity): no inversion.
    fn ct_equals(&self, a: &Affine) -> bool {
        let zz = self.z.square();
        let x = a.x.mul(&zz);
        let y = a.y.mul(&zz).mul(&self.z);
        bool::from(self.x.ct_eq(&x) & self.y.ct_eq(&y) & !self.is_infinity())
    }

    /// The affine point, or `None` at infinity. Constant-time inversion.
    fn to_affine(self) -> Option<Affine> {
        let zi: Option<Fp> = self.z.invert().into_option();
        let zi = zi?;
        let zi2 = zi.square();
        Some(Affine { x: self.x.mul(&zi2), y: self.y.mul(&zi2).mul(&zi) })
    }
}

/// An element a + b·i of F_p² = F_p\[i\], i² = −1 (RFC 6508 §3.3).
#[derive(Clone, Copy)]
struct Fp2 {
    re: Fp,
    im: Fp,
}

impl Zeroize for Fp2 {
    fn zeroize(&mut self) {
        self.re.zeroize();
        self.im.zeroize();
    }
}

impl Fp2 {
    const ONE: Self = Self { re: Fp::ONE, im: Fp::ZERO };

    fn mul(&self, o: &Self) -> Self {
        let ac = self.re.mul(&o.re);
        let bd = self.im.mul(&o.im);
        let cross = self.re.add(&self.im).mul(&o.re.add(&o.im));
        Self { re: ac.sub(&bd), im: cross.sub(&ac).sub(&bd) }
    }

    fn square(&self) -> Self {
        let re = self.re.add(&self.im).mul(&self.re.sub(&self.im));
        let im = self.re.mul(&self.im).double();
        Self { re, im }
    }

    fn select(a: &Self, b: &Self, c: Choice) -> Self {
        Self { re: a.re.ct_select(&b.re, c), im: a.im.ct_select(&b.im, c) }
    }

    /// self^0 … self^15, the table of one window.
    fn powers(&self) -> [Self; WINDOW_TABLE] {
        let mut table = [Self::ONE; WINDOW_TABLE];
        let mut next = Self::ONE;
        for slot in table.iter_mut() {
            *slot = next;
            next = next.mul(self);
        }
        table
    }

    /// Square-and-multiply-always, the exponentiation this crate used before [`pow_g`]:
    /// kept as the reference the property test compares against.
    #[cfg(test)]
    fn pow_reference(&self, e: &U1024) -> Self {
        let mut acc = Self::ONE;
        for i in (0..U1024::BITS).rev() {
            acc = acc.square();
            let t = acc.mul(self);
            acc = Self::select(&acc, &t, e.bit(i));
        }
        acc
    }

    /// The PF_p representative Im/Re of this class (RFC 6508 §3.3), `None` for the class
    /// with Re = 0 (not in the image of the pairing). Constant-time inversion.
    fn representative(&self) -> Option<Fp> {
        let inv: Option<Fp> = self.re.invert().into_option();
        inv.map(|r| self.im.mul(&r))
    }
}

/// One line of the Miller loop of RFC 6508 §3.2 for a fixed first argument R: evaluated at
/// the distortion image (−Q_x, i·Q_y) of Q it is (a·Q_x + b) + (c·Q_y)·i, up to a factor in
/// F_p* (which PF_p ignores).
#[derive(Clone, Copy)]
struct Line {
    a: Fp,
    b: Fp,
    c: Fp,
}

impl Zeroize for Line {
    fn zeroize(&mut self) {
        self.a.zeroize();
        self.b.zeroize();
        self.c.zeroize();
    }
}

impl Line {
    fn at(&self, q_pt: &Affine) -> Fp2 {
        Fp2 { re: self.a.mul(&q_pt.x).add(&self.b), im: self.c.mul(&q_pt.y) }
    }
}

/// The Miller-loop lines of R (RFC 6508 §3.2), in loop order: over the bits of q − 1 from
/// the second most significant one down, a doubling line, then an addition line where the
/// bit is 1. They depend on R only, so a fixed R (the RSK, [`Rsk`]) is computed once. The
/// loop branches only on the bits of the public constant q − 1.
fn miller_lines(r: &Affine) -> Vec<Line> {
    let e = q().wrapping_sub(&U1024::ONE);
    let top = e.bit_width().saturating_sub(1);
    // At most two lines per bit: no reallocation leaves copies of secret lines behind.
    let mut lines = Vec::with_capacity(2 * top as usize);
    let mut c = r.to_jacobian();
    for i in (0..top).rev() {
        // Doubling: l = 3(x²−1)(Qx + x) − 2y² + 2y·Qy·i, times Z⁶ (2YZ = Z3).
        let (c2, alpha, delta, gamma) = c.double_parts();
        lines.push(Line { a: alpha.mul(&delta), b: alpha.mul(&c.x).sub(&gamma.double()), c: c2.z.mul(&delta) });
        c = c2;
        if e.bit_vartime(i) {
            // Addition (mixed, R affine): l = λ(Qx + Rx) − Ry + Qy·i with
            // λ = (Cy − Ry)/(Cx − Rx), times −(Cx − Rx)·Z³.
            let z1z1 = c.z.square();
            let h = r.x.mul(&z1z1).sub(&c.x);
            let rr = r.y.mul(&c.z).mul(&z1z1).sub(&c.y);
            let z3 = c.z.mul(&h);
            let hh = h.square();
            let hhh = h.mul(&hh);
            let vv = c.x.mul(&hh);
            let x3 = rr.square().sub(&hhh).sub(&vv.double());
            let y3 = rr.mul(&vv.sub(&x3)).sub(&c.y.mul(&hhh));
            lines.push(Line { a: rr, b: rr.mul(&r.x).sub(&r.y.mul(&z3)), c: z3 });
            c = Jacobian { x: x3, y: y3, z: z3 };
        }
    }
    c.zeroize();
    lines
}

/// The reduced Tate-Lichtenbaum pairing ⟨R, Q⟩ of RFC 6508 §3.2 from the lines of R
/// ([`miller_lines`]), as its PF_p representative: v = v²·l at each doubling line, v = v·l
/// at each addition line, then the exponent c = (p + 1)/q = 4 (two squarings), then Im/Re.
/// The sequence of operations is fixed by q − 1 (R and Q may be secret: the RSK).
/// `None` when the result is not in PF_p's image (only for a point not of order q).
fn pairing_with_lines(lines: &[Line], q_pt: &Affine) -> Option<Fp> {
    let e = q().wrapping_sub(&U1024::ONE);
    let top = e.bit_width().saturating_sub(1);
    let mut lines = lines.iter();
    let mut v = Fp2::ONE;
    for i in (0..top).rev() {
        let mut l = lines.next()?.at(q_pt);
        v = v.square().mul(&l);
        if e.bit_vartime(i) {
            l = lines.next()?.at(q_pt);
            v = v.mul(&l);
        }
        l.zeroize();
    }
    let mut t = v.square().square();
    v.zeroize();
    let out = t.representative();
    t.zeroize();
    out
}

/// ⟨R, Q⟩ (RFC 6508 §3.2), computing the lines of R: the direct form the tests check the
/// cached-lines form of [`Rsk`] against.
#[cfg(test)]
fn pairing(r: &Affine, q_pt: &Affine) -> Option<Fp> {
    let mut lines = miller_lines(r);
    let out = pairing_with_lines(&lines, q_pt);
    lines.iter_mut().for_each(Zeroize::zeroize);
    out
}

/// (1 + g·i)^(d·16^w) for every window w and digit d: 1 + g·i is the class of the public
/// pairing value g = ⟨P, P⟩ (RFC 6508 §6.2.1 step 4); 256 × 16 elements (≈ 1 MB), built once per
/// process on first use.
fn g_table() -> &'static [[Fp2; WINDOW_TABLE]] {
    static TABLE: OnceLock<Vec<[Fp2; WINDOW_TABLE]>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut base = Fp2 { re: Fp::ONE, im: fp(&G) };
        (0..U1024::BITS / WINDOW)
            .map(|_| {
                let row = base.powers();
                for _ in 0..WINDOW {
                    base = base.square();
                }
                row
            })
            .collect()
    })
}

/// g^e (e secret: r) from [`g_table`]: one multiplication per window, the window's entry
/// read by a constant-time scan of its row.
fn pow_g(e: &U1024) -> Fp2 {
    g_table().iter().zip(0..).fold(Fp2::ONE, |acc, (row, w)| {
        let mut t = ct_lookup(row, window(e, w), Fp2::ONE, Fp2::select);
        let product = acc.mul(&t);
        t.zeroize();
        product
    })
}

/// HashToIntegerRange(s, n, SHA-256) of RFC 6508 §5.1 for n = q: A = H(s), h_0 = 0²⁵⁶,
/// l = ⌈lg(q)/256⌉ = 4, h_i = H(h_(i−1)), v_i = H(h_i ‖ A), v = (v_1 ‖ … ‖ v_4) mod q.
/// The reduction is constant-time (the input may be secret).
fn hash_to_q(parts: &[&[u8]]) -> Zeroizing<U1024> {
    let mut v = Zeroizing::new([0u8; FIELD_LEN]);
    hash_to_range_blocks(parts, &mut v[..]);
    let wide = Zeroizing::new(U1024::from_be_slice(&v[..]));
    let modulus = NonZero::new(q()).into_option().unwrap_or(NonZero::<U1024>::ONE);
    Zeroizing::new(wide.rem(&modulus))
}

/// HashToIntegerRange(s, 2^n, SHA-256) for n = 128 (RFC 6508 §5.1): l = 1, so the result is
/// the last 16 octets of v_1 = H(H(0²⁵⁶) ‖ H(s)).
fn hash_to_mask(parts: &[&[u8]]) -> Zeroizing<[u8; SSV_LEN]> {
    let mut v = Zeroizing::new([0u8; 32]);
    hash_to_range_blocks(parts, &mut v[..]);
    let mut out = Zeroizing::new([0u8; SSV_LEN]);
    out.copy_from_slice(v.get(32 - SSV_LEN..).unwrap_or_default());
    out
}

/// v_1 ‖ … ‖ v_l of RFC 6508 §5.1 into `out` (l = out.len() / 32).
fn hash_to_range_blocks(parts: &[&[u8]], out: &mut [u8]) {
    let mut a = Sha256::new();
    for p in parts {
        a.update(p);
    }
    let a = Zeroizing::new(<[u8; 32]>::from(a.finalize()));
    let mut h = [0u8; 32];
    for chunk in out.chunks_mut(32) {
        h = Sha256::digest(h).into();
        let v: [u8; 32] = Sha256::new().chain_update(h).chain_update(&a[..]).finalize().into();
        chunk.copy_from_slice(v.get(..chunk.len()).unwrap_or_default());
    }
}

/// An identifier read as a big-endian integer and reduced mod q (Horner's rule; loops over
/// the public identifier's length).
fn reduce_mod_q(id: &[u8]) -> Fq {
    let base = Fq::new(&U1024::from_u16(256));
    id.iter().fold(Fq::ZERO, |acc, b| acc.mul(&base).add(&Fq::new(&U1024::from_u8(*b))))
}

/// \[b\]P + Z for identifier b. Constant-time like every scalar multiplication here,
/// though b (an identifier) and Z are public.
fn identity_point(z: &PublicKey, id: &[u8]) -> Jacobian {
    let b = reduce_mod_q(id).retrieve();
    mul_generator(&b).add(&z.0.to_jacobian())
}

/// An identifier b under one KMS key Z_S with its point \[b\]P + Z_S (RFC 6508 §6.2.1
/// step 3, §6.2.2 step 5; public), computed once: a sender keeps one per peer it sends to,
/// and a validated [`Rsk`] keeps its own, so each encapsulation and decapsulation saves
/// one scalar multiplication.
#[derive(Clone)]
pub struct Recipient {
    z: PublicKey,
    id: Vec<u8>,
    point: Jacobian,
}

impl core::fmt::Debug for Recipient {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Recipient").field("id", &self.id).finish_non_exhaustive()
    }
}

impl Recipient {
    /// Identifier `id` under the KMS public key `z`.
    pub fn new(z: &PublicKey, id: &[u8]) -> Self {
        Self { z: *z, id: id.to_vec(), point: identity_point(z, id) }
    }

    /// The identifier b.
    pub fn id(&self) -> &[u8] {
        &self.id
    }

    /// The KMS public key Z this identifier's point is computed under.
    pub fn public_key(&self) -> &PublicKey {
        &self.z
    }

    /// [`encapsulate`] to this identifier.
    pub fn encapsulate(&self, ssv: &[u8; SSV_LEN]) -> Result<[u8; ENCAPSULATED_LEN]> {
        let e = encapsulate_parts(self, ssv)?;
        let mut out = [0u8; ENCAPSULATED_LEN];
        let (r, h) = out.split_at_mut(POINT_LEN);
        r.copy_from_slice(&e.big_r.encode());
        h.copy_from_slice(&e.h);
        Ok(out)
    }
}

fn wrong_key(reason: &'static str) -> Error {
    Error::Key { what: "SAKKE RSK", reason }
}

/// The KMS master secret z (RFC 6508 §2.2), in \[2, q − 1\]. Zeroized on drop; `Debug`
/// does not show it. Whoever holds it can decrypt every SAKKE message to any identity.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct KmsSecret(Fq);

impl core::fmt::Debug for KmsSecret {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("KmsSecret(..)")
    }
}

impl KmsSecret {
    /// z from big-endian octets (at most 128; fresh CSPRNG output when creating a KMS);
    /// refuses values outside \[2, q − 1\] with [`Error::FreshRandomness`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let fresh = Error::FreshRandomness { what: "SAKKE z (must be in [2, q-1])" };
        if bytes.len() > SECRET_LEN {
            return Err(fresh);
        }
        let mut padded = Zeroizing::new([0u8; SECRET_LEN]);
        if let Some(tail) = padded.get_mut(SECRET_LEN - bytes.len()..) {
            tail.copy_from_slice(bytes);
        }
        let v = Zeroizing::new(U1024::from_be_slice(&padded[..]));
        let ok = v.ct_lt(&q()) & !v.ct_lt(&U1024::from_u8(2));
        if !ok.to_bool() {
            return Err(fresh);
        }
        Ok(Self(Fq::new(&v)))
    }

    /// The 128 big-endian octets of z (for the KMS's own protected storage).
    pub fn to_bytes(&self) -> Zeroizing<[u8; SECRET_LEN]> {
        let mut out = Zeroizing::new([0u8; SECRET_LEN]);
        let v = Zeroizing::new(self.0.retrieve());
        out.copy_from_slice(v.to_be_bytes().as_ref());
        out
    }

    /// The KMS public key Z = \[z\]P (RFC 6508 §2.2).
    pub fn public_key(&self) -> PublicKey {
        let z = Zeroizing::new(self.0.retrieve());
        let pt = mul_generator(&z).to_affine();
        // z ∈ [2, q−1] and P has order q, so [z]P is never the point at infinity.
        PublicKey(pt.unwrap_or_else(generator))
    }

    /// The Receiver Secret Key of identifier `id`: K = \[(b + z)⁻¹ mod q\]P (RFC 6508 §6.1.1).
    /// If b + z ≡ 0 (mod q) the KMS must pick a new z (RFC 6508 §6.1.1):
    /// [`Error::FreshRandomness`].
    pub fn issue(&self, id: &[u8]) -> Result<Rsk> {
        let sum = Zeroizing::new(reduce_mod_q(id).add(&self.0));
        let inv: Option<Fq> = sum.invert().into_option();
        let inv = Zeroizing::new(inv.ok_or(Error::FreshRandomness { what: "SAKKE z (b + z = 0 mod q for this identifier)" })?);
        let k = Zeroizing::new(inv.retrieve());
        let pt = mul_generator(&k).to_affine().ok_or(Error::FreshRandomness { what: "SAKKE z" })?;
        Ok(Rsk { point: pt, lines: OnceLock::new(), id: id.to_vec(), recipient: None })
    }
}

/// The KMS public key Z_S = \[z\]P (RFC 6508 §2.2), the MIKEY-SAKKE "PubEncKey".
#[derive(Clone, Copy)]
pub struct PublicKey(Affine);

impl PublicKey {
    /// Parses the 257-octet `0x04 ‖ x ‖ y` form (on the curve).
    pub fn from_uncompressed(bytes: &[u8]) -> Result<Self> {
        Affine::decode(bytes, "SAKKE KMS public key Z").map(Self)
    }

    /// The 257-octet `0x04 ‖ x ‖ y` form.
    pub fn to_uncompressed(&self) -> [u8; POINT_LEN] {
        self.0.encode()
    }
}

impl PartialEq for PublicKey {
    fn eq(&self, o: &Self) -> bool {
        self.to_uncompressed() == o.to_uncompressed()
    }
}

impl Eq for PublicKey {}

impl core::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "PublicKey({})", self.to_uncompressed().iter().map(|b| format!("{b:02X}")).collect::<String>())
    }
}

/// A Receiver Secret Key K_(b,S) (RFC 6508 §2.2) with its identifier b. Zeroized on drop;
/// `Debug` does not show it.
#[derive(Clone)]
pub struct Rsk {
    point: Affine,
    /// The Miller-loop lines of K, computed once on first use (secret, zeroized on drop).
    lines: OnceLock<Vec<Line>>,
    id: Vec<u8>,
    /// \[b\]P + Z under the KMS key this RSK was validated for ([`Rsk::new`]).
    recipient: Option<Recipient>,
}

impl Drop for Rsk {
    fn drop(&mut self) {
        self.point.zeroize();
        if let Some(lines) = self.lines.get_mut() {
            lines.iter_mut().for_each(Zeroize::zeroize);
        }
    }
}

impl core::fmt::Debug for Rsk {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Rsk").field("id", &self.id).finish_non_exhaustive()
    }
}

impl Rsk {
    /// Validates the RSK `bytes` (`0x04 ‖ x ‖ y`) for identifier `id` under the KMS key `z`
    /// (RFC 6508 §6.1.2): on the curve and ⟨\[b\]P + Z, K⟩ = g. Failures are [`Error::Key`].
    pub fn new(z: &PublicKey, id: &[u8], bytes: &[u8]) -> Result<Self> {
        let point = Affine::decode(bytes, "SAKKE RSK")?;
        let recipient = Recipient::new(z, id);
        let mut rsk = Self { point, lines: OnceLock::new(), id: id.to_vec(), recipient: None };
        rsk.check(&recipient)?;
        rsk.recipient = Some(recipient);
        Ok(rsk)
    }

    /// RFC 6508 §6.1.2: ⟨\[b\]P + Z, K⟩ = g (compared in constant time).
    pub fn validate(&self, z: &PublicKey) -> Result<()> {
        self.check(&Recipient::new(z, &self.id))
    }

    fn check(&self, recipient: &Recipient) -> Result<()> {
        let bp = recipient.point.to_affine().ok_or(wrong_key("[b]P + Z is the point at infinity"))?;
        let w = self.pairing(&bp).ok_or(wrong_key("pairing value outside PF_p"))?;
        if bool::from(w.ct_eq(&fp(&G))) { Ok(()) } else { Err(wrong_key("<[b]P + Z, K> != g: not the key of this identifier under this KMS")) }
    }

    /// ⟨X, K⟩ for a point X, computed as ⟨K, X⟩ from the cached lines of K: the pairing
    /// is bilinear and K and X lie in the cyclic group of order q (⟨aP, bP⟩ = g^(ab) =
    /// ⟨bP, aP⟩). For a K outside that group (a cofactor component, which RFC 6508 §6.1.2's
    /// check would not see) the result is not g, so such a key is refused at validation;
    /// for an X outside it (a forged R) the R re-check of decapsulation refuses.
    fn pairing(&self, x: &Affine) -> Option<Fp> {
        pairing_with_lines(self.lines.get_or_init(|| miller_lines(&self.point)), x)
    }

    /// The identifier b this key belongs to.
    pub fn id(&self) -> &[u8] {
        &self.id
    }

    /// The 257-octet `0x04 ‖ x ‖ y` form (secret: for the user's protected storage).
    pub fn to_uncompressed(&self) -> Zeroizing<[u8; POINT_LEN]> {
        Zeroizing::new(self.point.encode())
    }
}

/// Intermediate values of one encapsulation (for known-answer tests).
struct Encapsulation {
    /// r, g^r and the mask are only read by the known-answer test.
    #[cfg_attr(not(test), allow(dead_code))]
    r: Zeroizing<U1024>,
    big_r: Affine,
    #[cfg_attr(not(test), allow(dead_code))]
    g_r: Zeroizing<[u8; FIELD_LEN]>,
    #[cfg_attr(not(test), allow(dead_code))]
    mask: Zeroizing<[u8; SSV_LEN]>,
    h: [u8; SSV_LEN],
}

fn encapsulate_parts(to: &Recipient, ssv: &[u8; SSV_LEN]) -> Result<Encapsulation> {
    // 2. r = HashToIntegerRange(SSV ‖ b, q).
    let r = hash_to_q(&[ssv, &to.id]);
    // 3. R_(b,S) = [r]([b]P + Z_S).
    let big_r = to.point.mul(&r).to_affine().ok_or(Error::FreshRandomness { what: "SAKKE SSV (r = 0 mod q)" })?;
    // 4. H = SSV ⊕ HashToIntegerRange(g^r, 2^n): g^r = Im/Re of (1 + g·i)^r.
    let gr = Zeroizing::new(pow_g(&r).representative().ok_or(Error::FreshRandomness { what: "SAKKE SSV" })?);
    let g_r = fe_bytes(&gr);
    let mask = hash_to_mask(&[&g_r[..]]);
    let mut h = [0u8; SSV_LEN];
    for ((o, s), m) in h.iter_mut().zip(ssv).zip(mask.iter()) {
        *o = s ^ m;
    }
    Ok(Encapsulation { r, big_r, g_r, mask, h })
}

/// Encapsulates the 16-octet `ssv` to identifier `id` under the KMS public key `z`
/// (RFC 6508 §6.2.1) and returns the Encapsulated Data `R_(b,S) ‖ H` (273 octets:
/// `0x04 ‖ x ‖ y ‖ H`, the MIKEY-SAKKE "SAKKE data", RFC 6509 §4.2). A sender that sends to
/// the same identifier again keeps a [`Recipient`] instead.
///
/// `ssv` must be fresh CSPRNG output: it is the key being sent, and r is derived from it
/// (the scheme is deterministic in (SSV, b)). [`Error::FreshRandomness`] in the negligible
/// case r ≡ 0 (mod q).
pub fn encapsulate(z: &PublicKey, id: &[u8], ssv: &[u8; SSV_LEN]) -> Result<[u8; ENCAPSULATED_LEN]> {
    Recipient::new(z, id).encapsulate(ssv)
}

fn refused(reason: &str) -> Error {
    Error::rejected(ErrorCode::AUTH_FAILURE, format!("SAKKE: {reason}"))
}

/// Decapsulates `data` = `R_(b,S) ‖ H` with the receiver's key `rsk` (identifier
/// `rsk.id()`) under the KMS public key `z` (RFC 6508 §6.2.2): w = ⟨R, K⟩;
/// SSV = H ⊕ HashToIntegerRange(w, 2^n); r = HashToIntegerRange(SSV ‖ b, q); and the
/// mandatory check \[r\](\[b\]P + Z) = R (constant-time comparison), without which the SSV is
/// refused. Every failure is [`Error::Rejected`] (ERR Auth failure) without detail on which
/// check failed after decoding.
pub fn decapsulate(z: &PublicKey, rsk: &Rsk, data: &[u8]) -> Result<Zeroizing<[u8; SSV_LEN]>> {
    if data.len() != ENCAPSULATED_LEN {
        return Err(refused(&format!("encapsulated data of {} octets (expected {ENCAPSULATED_LEN})", data.len())));
    }
    let (r_bytes, h) = data.split_at(POINT_LEN);
    let big_r = Affine::decode(r_bytes, "R_(b,S)").map_err(|e| refused(&e.to_string()))?;
    let w = Zeroizing::new(rsk.pairing(&big_r).ok_or_else(|| refused("decapsulation failed"))?);
    let mask = hash_to_mask(&[&fe_bytes(&w)[..]]);
    let mut ssv = Zeroizing::new([0u8; SSV_LEN]);
    for ((o, h), m) in ssv.iter_mut().zip(h).zip(mask.iter()) {
        *o = h ^ m;
    }
    let r = hash_to_q(&[&ssv[..], &rsk.id]);
    let fresh;
    let recipient = match &rsk.recipient {
        Some(cached) if cached.z == *z => cached,
        _ => {
            fresh = Recipient::new(z, &rsk.id);
            &fresh
        }
    };
    let mut test = recipient.point.mul(&r);
    let matches = test.ct_equals(&big_r);
    test.zeroize();
    if matches { Ok(ssv) } else { Err(refused("decapsulation failed")) }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn vectors() -> serde_json::Value {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/vectors/rfc6508_sakke.json");
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn v(j: &serde_json::Value, name: &str) -> Vec<u8> {
        hex::decode(j["values"][name]["hex"].as_str().unwrap()).unwrap()
    }

    fn point(j: &serde_json::Value, x: &str, y: &str) -> Vec<u8> {
        [vec![4], v(j, x), v(j, y)].concat()
    }

    #[test]
    fn parameter_set_1_constants() {
        let j = vectors();
        let p = *SakkeP::PARAMS.modulus().as_ref();
        assert_eq!(p.to_be_bytes().as_ref(), &v(&j, "p")[..]);
        assert_eq!(q().to_be_bytes().as_ref(), &v(&j, "q")[..]);
        // p + 1 = 4q.
        assert_eq!(p.wrapping_add(&U1024::ONE), q().shl_vartime(2));
        assert_eq!(generator().encode().to_vec(), point(&j, "Px", "Py"));
        assert_eq!(G.to_be_bytes().as_ref(), &v(&j, "g")[..]);
        // g = <P, P> (RFC 6508 §3.2 pairing with the PF_p representation of §3.3).
        let g = pairing(&generator(), &generator()).unwrap();
        assert_eq!(fe_bytes(&g).to_vec(), v(&j, "g"));
    }

    /// RFC 6508 Appendix A, every value: Z, K_(b,S), r, R_(b,S), g^r, mask, H, SSV back.
    #[test]
    fn rfc6508_appendix_a_every_value() {
        let j = vectors();
        let kms = KmsSecret::from_bytes(&v(&j, "z")).unwrap();
        let z = kms.public_key();
        assert_eq!(z.to_uncompressed().to_vec(), point(&j, "Zx", "Zy"));
        assert_eq!(PublicKey::from_uncompressed(&point(&j, "Zx", "Zy")).unwrap(), z);
        let b = v(&j, "b");
        assert_eq!(b, crate::eccsi::identity("tel:+447700900123", 2011, 2));
        let rsk = kms.issue(&b).unwrap();
        assert_eq!(rsk.to_uncompressed().to_vec(), point(&j, "Kbx", "Kby"));
        let rsk = Rsk::new(&z, &b, &point(&j, "Kbx", "Kby")).unwrap();
        let ssv: [u8; 16] = v(&j, "SSV").try_into().unwrap();
        let e = encapsulate_parts(&Recipient::new(&z, &b), &ssv).unwrap();
        assert_eq!(e.r.to_be_bytes().as_ref(), &v(&j, "r")[..]);
        assert_eq!(e.big_r.encode().to_vec(), point(&j, "Rbx", "Rby"));
        assert_eq!(e.g_r.to_vec(), v(&j, "g_pow_r"));
        assert_eq!(e.mask.to_vec(), v(&j, "mask"));
        assert_eq!(e.h.to_vec(), v(&j, "H"));
        let data = encapsulate(&z, &b, &ssv).unwrap();
        assert_eq!(data.to_vec(), [point(&j, "Rbx", "Rby"), v(&j, "H")].concat());
        // <R, K> = g^r, and decapsulation gives the SSV back.
        assert_eq!(fe_bytes(&pairing(&e.big_r, &rsk.point).unwrap()).to_vec(), v(&j, "g_pow_r"));
        // The same value from the lines of K (⟨K, R⟩ = ⟨R, K⟩), as decapsulation computes it.
        assert_eq!(fe_bytes(&rsk.pairing(&e.big_r).unwrap()).to_vec(), v(&j, "g_pow_r"));
        assert_eq!(fe_bytes(&pairing(&rsk.point, &e.big_r).unwrap()).to_vec(), v(&j, "g_pow_r"));
        assert_eq!(decapsulate(&z, &rsk, &data).unwrap().to_vec(), ssv.to_vec());
    }

    #[test]
    fn tampered_keys_and_data_are_refused() {
        let j = vectors();
        let z = PublicKey::from_uncompressed(&point(&j, "Zx", "Zy")).unwrap();
        let b = v(&j, "b");
        let k = point(&j, "Kbx", "Kby");
        // RSK for another identifier / another KMS / off the curve.
        let other_b = crate::eccsi::identity("tel:+447700900123", 2011, 3);
        assert!(matches!(Rsk::new(&z, &other_b, &k), Err(Error::Key { .. })));
        let other_z = KmsSecret::from_bytes(&[0x12, 0x34]).unwrap().public_key();
        assert!(matches!(Rsk::new(&other_z, &b, &k), Err(Error::Key { .. })));
        let mut bad = k.clone();
        bad[256] ^= 1;
        assert!(matches!(Rsk::new(&z, &b, &bad), Err(Error::Key { .. })));
        // A valid point of order q that is not the RSK: [2]K.
        let k2 = Rsk::new(&z, &b, &k).unwrap().point.to_jacobian().double().to_affine().unwrap();
        assert!(matches!(Rsk::new(&z, &b, &k2.encode()), Err(Error::Key { .. })));
        let rsk = Rsk::new(&z, &b, &k).unwrap();
        let data = [point(&j, "Rbx", "Rby"), v(&j, "H")].concat();
        assert!(decapsulate(&z, &rsk, &data).is_ok());
        // H tampered: the SSV changes, so r changes and the R re-check fails.
        for i in [257, 262, 272] {
            let mut d = data.clone();
            d[i] ^= 0x01;
            assert_eq!(decapsulate(&z, &rsk, &d).unwrap_err().err_code(), ErrorCode::AUTH_FAILURE);
        }
        // R replaced by another curve point ([2]R), off the curve, wrong tag, wrong length.
        let r2 = Affine::decode(&data[..257], "R").unwrap().to_jacobian().double().to_affine().unwrap();
        let mut d = data.clone();
        d[..257].copy_from_slice(&r2.encode());
        assert!(decapsulate(&z, &rsk, &d).is_err());
        let mut d = data.clone();
        d[100] ^= 0x80;
        assert!(decapsulate(&z, &rsk, &d).is_err());
        let mut d = data.clone();
        d[0] = 0x02;
        assert!(decapsulate(&z, &rsk, &d).is_err());
        assert!(decapsulate(&z, &rsk, &data[..272]).is_err());
        // The right data under another KMS key fails the re-check.
        assert!(decapsulate(&other_z, &rsk, &data).is_err());
        // z out of range.
        assert!(KmsSecret::from_bytes(&[]).is_err());
        assert!(KmsSecret::from_bytes(&[1]).is_err());
        assert!(KmsSecret::from_bytes(&v(&j, "q")).is_err());
        assert!(KmsSecret::from_bytes(&[0xff; 129]).is_err());
        assert_eq!(format!("{:?}", KmsSecret::from_bytes(&[2]).unwrap()), "KmsSecret(..)");
        assert!(!format!("{rsk:?}").contains("93AF"));
    }

    /// Points of small order (y = 0: x = 0 is the point of order 2) decode as curve
    /// points; decapsulation refuses them without panicking.
    #[test]
    fn small_order_r_is_refused() {
        let j = vectors();
        let z = PublicKey::from_uncompressed(&point(&j, "Zx", "Zy")).unwrap();
        let b = v(&j, "b");
        let rsk = Rsk::new(&z, &b, &point(&j, "Kbx", "Kby")).unwrap();
        let mut d = vec![0u8; ENCAPSULATED_LEN];
        d[0] = 4;
        assert!(decapsulate(&z, &rsk, &d).is_err());
    }

    fn same_point(a: &Jacobian, b: &Jacobian) -> bool {
        a.to_affine().map(|p| p.encode()) == b.to_affine().map(|p| p.encode())
    }

    fn same_fp2(a: &Fp2, b: &Fp2) -> bool {
        bool::from(a.re.ct_eq(&b.re) & a.im.ct_eq(&b.im))
    }

    /// The windowed scalar multiplication and exponentiation equal the ladder / multiply-
    /// always reference on edge scalars below q (0, 1, 15, 16, 17, q − 16, q − 1) and on
    /// powers (no scalar meets the doubling case of the addition).
    #[test]
    fn windowed_equals_reference_on_edge_scalars() {
        let p = generator().to_jacobian();
        let i = identity_point(&KmsSecret::from_bytes(&[7]).unwrap().public_key(), b"edge");
        let g = Fp2 { re: Fp::ONE, im: fp(&G) };
        let q1 = q().wrapping_sub(&U1024::ONE);
        for k in [U1024::ZERO, U1024::ONE, U1024::from_u8(15), U1024::from_u8(16), U1024::from_u8(17), q().wrapping_sub(&U1024::from_u8(16)), q1] {
            assert!(same_point(&p.mul(&k), &p.mul_ladder(&k)));
            assert!(same_point(&mul_generator(&k), &p.mul_ladder(&k)));
            assert!(same_point(&i.mul(&k), &i.mul_ladder(&k)));
            assert!(same_fp2(&pow_g(&k), &g.pow_reference(&k)));
        }
        assert!(p.mul(&q1).ct_equals(&Affine { x: fp(&PX), y: fp(&PY).neg() }));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3))]
        /// The windowed paths equal the reference ladder / multiply-always on random
        /// scalars mod q (the exponentiation also on 1024-bit ones).
        #[test]
        fn windowed_equals_reference(k in any::<[u8; 128]>()) {
            let wide = U1024::from_be_slice(&k);
            let k = wide.rem(&NonZero::new(q()).unwrap());
            let p = generator().to_jacobian();
            prop_assert!(same_point(&p.mul(&k), &p.mul_ladder(&k)));
            prop_assert!(same_point(&mul_generator(&k), &p.mul_ladder(&k)));
            let g = Fp2 { re: Fp::ONE, im: fp(&G) };
            prop_assert!(same_fp2(&pow_g(&wide), &g.pow_reference(&wide)));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2))]
        #[test]
        fn encapsulate_decapsulate_round_trip(zb in proptest::collection::vec(any::<u8>(), 1..=127),
                                              id in proptest::collection::vec(any::<u8>(), 0..40),
                                              ssv in any::<[u8; 16]>()) {
            let Ok(kms) = KmsSecret::from_bytes(&zb) else { return Ok(()) };
            let z = kms.public_key();
            let rsk = kms.issue(&id).unwrap();
            let data = encapsulate(&z, &id, &ssv).unwrap();
            prop_assert_eq!(decapsulate(&z, &rsk, &data).unwrap().to_vec(), ssv.to_vec());
            let mut other = id;
            other.push(1);
            let rsk2 = kms.issue(&other).unwrap();
            prop_assert!(decapsulate(&z, &rsk2, &data).is_err());
        }
    }
}

