//! Timestamp payloads: T (RFC 3830 §6.6, RFC 6043 §6.6 for NTP-UTC-32) and TR (RFC 6043
//! §6.4).

use crate::codec::{Reader, Writer};
use crate::error::{Error, Result};
use crate::registry::{TsRole, TsType};

/// Timestamp payload. `value` holds the TS value right-aligned (32-bit types use the low
/// 32 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp {
    /// Timestamp type (implies the value length).
    pub ts_type: TsType,
    /// Timestamp value.
    pub value: u64,
}

impl Timestamp {
    /// The value as the 64-bit quantity used in IVs and PRF labels: 32-bit types are
    /// zero-padded on the left (COUNTER, RFC 3830 §4.2.3) or extended with a zero fraction
    /// (NTP-UTC-32, RFC 6043 §6.6).
    pub fn as_u64(&self) -> u64 {
        match self.ts_type {
            TsType::NTP_UTC_32 => self.value << 32,
            _ => self.value,
        }
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self> {
        let off = r.offset();
        let ts_type = TsType(r.u8("TS type")?);
        Ok(Self { ts_type, value: read_ts_value(ts_type, off, r)? })
    }

    pub(crate) fn encode(&self, w: &mut Writer) -> Result<()> {
        w.u8(self.ts_type.0);
        write_ts_value(self.ts_type, self.value, w)
    }
}

fn read_ts_value(ts_type: TsType, off: usize, r: &mut Reader<'_>) -> Result<u64> {
    match ts_type.value_len() {
        Some(8) => Ok(u64::from_be_bytes(r.array("TS value")?)),
        Some(_) => Ok(u64::from(r.u32("TS value")?)),
        None => Err(Error::invalid(off, "TS type", format!("unknown timestamp type {}", ts_type.0))),
    }
}

fn write_ts_value(ts_type: TsType, value: u64, w: &mut Writer) -> Result<()> {
    match ts_type.value_len() {
        Some(8) => w.bytes(&value.to_be_bytes()),
        Some(_) => w.u32(
            u32::try_from(value).map_err(|_| Error::encode("TS value", "does not fit 32 bits"))?,
        ),
        None => return Err(Error::encode("TS type", format!("unknown timestamp type {}", ts_type.0))),
    }
    Ok(())
}

/// Timestamp payload with role: `TS Role | TS Type | TS Value`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimestampRole {
    /// Role.
    pub role: TsRole,
    /// The timestamp.
    pub ts: Timestamp,
}

impl TimestampRole {
    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self> {
        let role = TsRole(r.u8("TS Role")?);
        Ok(Self { role, ts: Timestamp::decode(r)? })
    }

    pub(crate) fn encode(&self, w: &mut Writer) -> Result<()> {
        w.u8(self.role.0);
        self.ts.encode(w)
    }
}
