//! Identity payloads: ID and CERT (RFC 3830 §6.7), CHASH (§6.8), IDR (RFC 6043 §6.6).

use crate::codec::{Reader, Writer};
use crate::error::{Error, Result};
use crate::registry::{CertType, HashFunc, IdRole, IdType};

/// ID payload: `ID type | ID len(16) | ID data`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Id {
    /// ID type.
    pub id_type: IdType,
    /// ID data.
    pub data: Vec<u8>,
}

impl Id {
    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self> {
        let id_type = IdType(r.u8("ID type")?);
        let n = r.u16("ID len")?;
        Ok(Self { id_type, data: r.vec(usize::from(n), "ID data")? })
    }

    pub(crate) fn encode(&self, w: &mut Writer) -> Result<()> {
        w.u8(self.id_type.0);
        w.len16(&self.data, "ID data")
    }
}

/// CERT payload: `Cert type | Cert len(16) | Cert data`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cert {
    /// Certificate type.
    pub cert_type: CertType,
    /// Certificate data.
    pub data: Vec<u8>,
}

impl Cert {
    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self> {
        let cert_type = CertType(r.u8("Cert type")?);
        let n = r.u16("Cert len")?;
        Ok(Self { cert_type, data: r.vec(usize::from(n), "Cert data")? })
    }

    pub(crate) fn encode(&self, w: &mut Writer) -> Result<()> {
        w.u8(self.cert_type.0);
        w.len16(&self.data, "Cert data")
    }
}

/// CHASH payload: `Hash func | Hash` (length by function).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chash {
    /// Hash function.
    pub hash_func: HashFunc,
    /// Hash value.
    pub hash: Vec<u8>,
}

impl Chash {
    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self> {
        let off = r.offset();
        let hash_func = HashFunc(r.u8("CHASH Hash func")?);
        let n = hash_func.hash_len().ok_or_else(|| {
            Error::invalid(off, "CHASH Hash func", format!("unknown hash function {}", hash_func.0))
        })?;
        Ok(Self { hash_func, hash: r.vec(n, "CHASH Hash")? })
    }

    pub(crate) fn encode(&self, w: &mut Writer) -> Result<()> {
        if self.hash_func.hash_len() != Some(self.hash.len()) {
            return Err(Error::encode("CHASH Hash", "length does not match the hash function"));
        }
        w.u8(self.hash_func.0);
        w.bytes(&self.hash);
        Ok(())
    }
}

/// IDR payload: `ID Role | ID Type | ID len(16) | ID Data`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idr {
    /// Role.
    pub role: IdRole,
    /// ID type.
    pub id_type: IdType,
    /// ID data (the "Identity" entering MACs and labels, RFC 6043 §5.5).
    pub data: Vec<u8>,
}

impl Idr {
    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self> {
        let role = IdRole(r.u8("IDR ID Role")?);
        let id_type = IdType(r.u8("IDR ID Type")?);
        let n = r.u16("IDR ID len")?;
        Ok(Self { role, id_type, data: r.vec(usize::from(n), "IDR ID Data")? })
    }

    pub(crate) fn encode(&self, w: &mut Writer) -> Result<()> {
        w.u8(self.role.0);
        w.u8(self.id_type.0);
        w.len16(&self.data, "IDR ID Data")
    }
}
