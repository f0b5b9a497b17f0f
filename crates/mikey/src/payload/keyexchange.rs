//! Public-key and identity-based key transport payloads: PKE (RFC 3830 §6.3), DH (§6.4),
//! SIGN (§6.5) and SAKKE (RFC 6509 §4.2).

use crate::codec::{Reader, Writer, fits};
use crate::error::{Error, Result};
use crate::payload::kemac::KeyValidity;
use crate::registry::{DhGroup, KvType, PkeCache, SakkeIdScheme, SakkeParams, SignatureType};

/// Envelope data payload: `C(2) | Data len(14) | Data`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pke {
    /// Cache indicator (2 bits).
    pub cache: PkeCache,
    /// Encrypted envelope key.
    pub data: Vec<u8>,
}

impl Pke {
    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self> {
        let cl = r.u16("PKE C/Data len")?;
        let data = r.vec(usize::from(cl & 0x3fff), "PKE Data")?;
        Ok(Self { cache: PkeCache(u8::try_from(cl >> 14).unwrap_or(0)), data })
    }

    pub(crate) fn encode(&self, w: &mut Writer) -> Result<()> {
        if self.cache.0 > 3 {
            return Err(Error::encode("PKE C", "exceeds 2 bits"));
        }
        let len = fits(self.data.len(), 14, "PKE Data len")?;
        w.u16(u16::from(self.cache.0) << 14 | len);
        w.bytes(&self.data);
        Ok(())
    }
}

/// Diffie-Hellman payload: `DH-Group | DH-value | Reserv(4) KV(4) | KV data`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dh {
    /// DH group (implies the value length).
    pub group: DhGroup,
    /// Public DH value.
    pub value: Vec<u8>,
    /// The 4 reserved bits (kept for exact re-encoding).
    pub reserved: u8,
    /// Key validity of the TGK.
    pub validity: KeyValidity,
}

impl Dh {
    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self> {
        let g_off = r.offset();
        let group = DhGroup(r.u8("DH-Group")?);
        let n = group.value_len().ok_or_else(|| {
            Error::invalid(g_off, "DH-Group", format!("unknown DH group {} (value length unknown)", group.0))
        })?;
        let value = r.vec(n, "DH-value")?;
        let kv_off = r.offset();
        let rk = r.u8("DH Reserv/KV")?;
        let validity = KeyValidity::decode(KvType(rk & 0x0f), kv_off, r)?;
        Ok(Self { group, value, reserved: rk >> 4, validity })
    }

    pub(crate) fn encode(&self, w: &mut Writer) -> Result<()> {
        match self.group.value_len() {
            Some(n) if n == self.value.len() => {}
            _ => return Err(Error::encode("DH-value", "length does not match the DH group")),
        }
        if self.reserved > 0x0f {
            return Err(Error::encode("DH Reserv", "exceeds 4 bits"));
        }
        w.u8(self.group.0);
        w.bytes(&self.value);
        w.u8(self.reserved << 4 | self.validity.kv_type().0);
        self.validity.encode(w)
    }
}

/// Signature payload: `S type(4) | Signature len(12) | Signature`; no Next Payload field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sign {
    /// Signature type (4 bits).
    pub sig_type: SignatureType,
    /// Signature.
    pub signature: Vec<u8>,
}

impl Sign {
    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self> {
        let tl = r.u16("SIGN S type/Signature len")?;
        let signature = r.vec(usize::from(tl & 0x0fff), "SIGN Signature")?;
        Ok(Self { sig_type: SignatureType(u8::try_from(tl >> 12).unwrap_or(0)), signature })
    }

    pub(crate) fn encode(&self, w: &mut Writer) -> Result<()> {
        if self.sig_type.0 > 0x0f {
            return Err(Error::encode("SIGN S type", "exceeds 4 bits"));
        }
        let len = fits(self.signature.len(), 12, "SIGN Signature len")?;
        w.u16(u16::from(self.sig_type.0) << 12 | len);
        w.bytes(&self.signature);
        Ok(())
    }
}

/// SAKKE payload: `SAKKE params | ID scheme | SAKKE data length(16) | SAKKE data`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sakke {
    /// SAKKE parameter set.
    pub params: SakkeParams,
    /// Identifier scheme.
    pub id_scheme: SakkeIdScheme,
    /// Encapsulated data (R || H).
    pub data: Vec<u8>,
}

impl Sakke {
    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self> {
        let params = SakkeParams(r.u8("SAKKE params")?);
        let id_scheme = SakkeIdScheme(r.u8("SAKKE ID scheme")?);
        let n = r.u16("SAKKE data length")?;
        Ok(Self { params, id_scheme, data: r.vec(usize::from(n), "SAKKE data")? })
    }

    pub(crate) fn encode(&self, w: &mut Writer) -> Result<()> {
        w.u8(self.params.0);
        w.u8(self.id_scheme.0);
        w.len16(&self.data, "SAKKE data")
    }
}
