//! Key derivation of TS 33.220 Annex B: the generic KDF (B.2), Ks (§4.5.2) and the
//! NAF-specific keys of B.3 — Ks_NAF (GBA_ME), Ks_ext_NAF and Ks_int_NAF (GBA_U, clause 5) —
//! with NAF_Id = FQDN || Ua security protocol identifier (Annex H).

use core::fmt;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::GbaError;

/// FC value of the GBA NAF key derivation (TS 33.220 B.3).
pub const FC_GBA: u8 = 0x01;

/// P0 of Ks_NAF and Ks_ext_NAF (TS 33.220 B.3): "gba-me".
const P0_GBA_ME: &[u8] = b"gba-me";

/// P0 of Ks_int_NAF (TS 33.220 B.3): "gba-u".
const P0_GBA_U: &[u8] = b"gba-u";

/// The generic KDF (TS 33.220 B.2): HMAC-SHA-256(Key, S), S = FC || P0 || L0 || P1 || L1 ...,
/// each Li the 2-octet big-endian length of Pi.
pub fn kdf(key: &[u8], fc: u8, params: &[&[u8]]) -> Result<[u8; 32], GbaError> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).map_err(|_| GbaError::Length {
        what: "KDF key",
        expected: 32,
        got: key.len(),
    })?;
    mac.update(&[fc]);
    for p in params {
        let len = u16::try_from(p.len()).map_err(|_| GbaError::Length {
            what: "KDF parameter",
            expected: usize::from(u16::MAX),
            got: p.len(),
        })?;
        mac.update(p);
        mac.update(&len.to_be_bytes());
    }
    Ok(mac.finalize().into_bytes().into())
}

/// Ks = CK || IK (TS 33.220 §4.5.2 step 6), 32 octets, CK first. Zeroized on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Ks([u8; 32]);

impl Ks {
    /// Concatenate CK and IK.
    pub fn from_ck_ik(ck: &[u8; 16], ik: &[u8; 16]) -> Self {
        let mut ks = [0u8; 32];
        ks[..16].copy_from_slice(ck);
        ks[16..].copy_from_slice(ik);
        Self(ks)
    }

    /// Wrap 32 stored octets.
    pub fn from_bytes(b: [u8; 32]) -> Self {
        Self(b)
    }

    /// The raw 32 octets (for storage by the BSF; never log them).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Ks_NAF (GBA_ME), which is also Ks_ext_NAF (GBA_U) = KDF(Ks, "gba-me", RAND, IMPI,
    /// NAF_Id) (TS 33.220 B.3).
    pub fn ks_naf(&self, rand: &[u8; 16], impi: &str, naf_id: &NafId) -> Result<KsNaf, GbaError> {
        self.naf_key(P0_GBA_ME, rand, impi, naf_id)
    }

    /// Ks_int_NAF (GBA_U only) = KDF(Ks, "gba-u", RAND, IMPI, NAF_Id) (TS 33.220 B.3): the key
    /// that stays in the UICC (clause 5.3.3, Annex G.2).
    pub fn ks_int_naf(&self, rand: &[u8; 16], impi: &str, naf_id: &NafId) -> Result<KsNaf, GbaError> {
        self.naf_key(P0_GBA_U, rand, impi, naf_id)
    }

    /// B.3: FC = 0x01, P0 = label, P1 = RAND, P2 = IMPI (UTF-8), P3 = NAF_Id.
    fn naf_key(&self, p0: &[u8], rand: &[u8; 16], impi: &str, naf_id: &NafId) -> Result<KsNaf, GbaError> {
        let naf = naf_id.to_bytes();
        kdf(&self.0, FC_GBA, &[p0, rand, impi.as_bytes(), &naf]).map(KsNaf)
    }
}

impl fmt::Debug for Ks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Ks(..)")
    }
}

/// A NAF-specific key (32 octets). Zeroized on drop; compared in constant time.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct KsNaf(pub [u8; 32]);

impl PartialEq for KsNaf {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}
impl Eq for KsNaf {}

impl fmt::Debug for KsNaf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KsNaf(..)")
    }
}

/// A Ua security protocol identifier (TS 33.220 Annex H): organisation octet || 4 octets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UaProtocolId(pub [u8; 5]);

impl UaProtocolId {
    /// Default / unspecified protocol (Annex H.2).
    pub const DEFAULT: Self = Self([0, 0, 0, 0, 0]);
    /// HTTP Digest authentication per TS 24.109 (H.3).
    pub const HTTP_DIGEST: Self = Self([1, 0, 0, 0, 2]);
    /// IMS media plane security, TS 33.328: the KMS key (H.3).
    pub const IMS_MEDIA_PLANE: Self = Self([1, 0, 0, 0, 6]);

    /// Parse the 10 hex digits used on Zn and the command line.
    pub fn from_hex(s: &str) -> Result<Self, GbaError> {
        let v = hex::decode(s).map_err(|_| GbaError::Parse {
            what: "Ua security protocol id",
            offset: 0,
            reason: "not hex",
        })?;
        let got = v.len();
        <[u8; 5]>::try_from(v).map(Self).map_err(|_| GbaError::Length {
            what: "Ua security protocol id",
            expected: 5,
            got,
        })
    }

    /// Lowercase hex form.
    pub fn to_hex(self) -> String {
        hex::encode(self.0)
    }
}

/// NAF_Id = NAF FQDN || Ua security protocol identifier (TS 33.220 §4.5.2, B.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NafId {
    /// The NAF's fully qualified domain name, as the UE addresses it.
    pub fqdn: String,
    /// The Ua protocol used with that NAF.
    pub ua: UaProtocolId,
}

impl NafId {
    /// Construct.
    pub fn new(fqdn: impl Into<String>, ua: UaProtocolId) -> Self {
        Self { fqdn: fqdn.into(), ua }
    }

    /// The octets fed to the KDF.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.fqdn.len() + 5);
        v.extend_from_slice(self.fqdn.as_bytes());
        v.extend_from_slice(&self.ua.0);
        v
    }
}
