//! RAND (RFC 3830 §6.11) and RANDR (RFC 6043 §6.16) payloads.

use crate::codec::{Reader, Writer};
use crate::error::Result;
use crate::registry::RandRole;

/// RAND payload: `RAND len(8) | RAND`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rand {
    /// Random value.
    pub rand: Vec<u8>,
}

impl Rand {
    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self> {
        let n = r.u8("RAND len")?;
        Ok(Self { rand: r.vec(usize::from(n), "RAND")? })
    }

    pub(crate) fn encode(&self, w: &mut Writer) -> Result<()> {
        w.len8(&self.rand, "RAND")
    }
}

/// RANDR payload: `RAND Role | RAND length(8) | RAND`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Randr {
    /// Role.
    pub role: RandRole,
    /// Random value.
    pub rand: Vec<u8>,
}

impl Randr {
    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self> {
        let role = RandRole(r.u8("RANDR Role")?);
        let n = r.u8("RANDR length")?;
        Ok(Self { role, rand: r.vec(usize::from(n), "RANDR")? })
    }

    pub(crate) fn encode(&self, w: &mut Writer) -> Result<()> {
        w.u8(self.role.0);
        w.len8(&self.rand, "RANDR")
    }
}
