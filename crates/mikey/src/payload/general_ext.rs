//! General Extension payload (RFC 3830 §6.15).

use crate::codec::{Reader, Writer};
use crate::error::Result;
use crate::registry::GeneralExtType;

/// General extension: `Type | Length(16) | Data`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneralExt {
    /// Extension type.
    pub ext_type: GeneralExtType,
    /// Data.
    pub data: Vec<u8>,
}

impl GeneralExt {
    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self> {
        let ext_type = GeneralExtType(r.u8("General Ext Type")?);
        let n = r.u16("General Ext Length")?;
        Ok(Self { ext_type, data: r.vec(usize::from(n), "General Ext Data")? })
    }

    pub(crate) fn encode(&self, w: &mut Writer) -> Result<()> {
        w.u8(self.ext_type.0);
        w.len16(&self.data, "General Ext Data")
    }
}
