//! Verification V (RFC 3830 §6.9) and error ERR (RFC 3830 §6.12) payloads.

use crate::codec::{Reader, Writer};
use crate::error::{Error, Result};
use crate::payload::kemac::check_mac_len;
use crate::registry::{ErrorCode, MacAlg};

/// Verification payload: `Auth alg | Ver data` (length by algorithm).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    /// MAC algorithm.
    pub auth_alg: MacAlg,
    /// MAC value.
    pub mac: Vec<u8>,
}

impl Verification {
    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self> {
        let off = r.offset();
        let auth_alg = MacAlg(r.u8("V Auth alg")?);
        let n = auth_alg.mac_len().ok_or_else(|| {
            Error::invalid(off, "V Auth alg", format!("unknown MAC algorithm {}", auth_alg.0))
        })?;
        Ok(Self { auth_alg, mac: r.vec(n, "V Ver data")? })
    }

    pub(crate) fn encode(&self, w: &mut Writer) -> Result<()> {
        check_mac_len(self.auth_alg, &self.mac, "V Ver data")?;
        w.u8(self.auth_alg.0);
        w.bytes(&self.mac);
        Ok(())
    }
}

/// Error payload: `Error no | Reserved(16)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrPayload {
    /// Error number.
    pub code: ErrorCode,
    /// Reserved field (kept for exact re-encoding; 0 when built).
    pub reserved: u16,
}

impl ErrPayload {
    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self> {
        let code = ErrorCode(r.u8("ERR Error no")?);
        Ok(Self { code, reserved: r.u16("ERR Reserved")? })
    }

    pub(crate) fn encode(&self, w: &mut Writer) -> Result<()> {
        w.u8(self.code.0);
        w.u16(self.reserved);
        Ok(())
    }
}
