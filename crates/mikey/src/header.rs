//! The MIKEY Common Header (HDR), RFC 3830 §6.1, with the CS ID map types of RFC 3830
//! (SRTP-ID), RFC 4563 §4.1.1 (Empty map) and RFC 6043 §6.1.1 (GENERIC-ID).

use crate::codec::{Reader, Writer};
use crate::error::{Error, Result};
use crate::registry::{CsIdMapType, DataType, PrfFunc, ProtType};

/// MIKEY version carried in every HDR (RFC 3830 §6.1).
pub const MIKEY_VERSION: u8 = 1;

/// One crypto session of an SRTP-ID map (RFC 3830 §6.1.1): 9 octets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SrtpCs {
    /// Policy number of the SP payload that applies.
    pub policy_no: u8,
    /// SSRC (0 = to be filled in by the Responder).
    pub ssrc: u32,
    /// Roll-over counter.
    pub roc: u32,
}

/// One crypto session of a GENERIC-ID map (RFC 6043 §6.1.1).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GenericCs {
    /// CS ID.
    pub cs_id: u8,
    /// Security protocol (0 = SRTP).
    pub prot_type: ProtType,
    /// S flag: Session Data carries ROC and SEQ in addition to the SSRC.
    pub s_flag: bool,
    /// Offered policy numbers (#P is 7 bits).
    pub policies: Vec<u8>,
    /// Session Data (for SRTP: SSRC, and if S = 1, ROC and SEQ).
    pub session_data: Vec<u8>,
    /// SPI (for SRTP: the MKI).
    pub spi: Vec<u8>,
}

impl GenericCs {
    /// Session Data for SRTP (RFC 6043 §6.1.1): SSRC, and ROC + SEQ when `s_flag`.
    pub fn srtp_session(&self) -> Option<(u32, Option<(u32, u16)>)> {
        let mut r = Reader::new(&self.session_data, 0);
        let ssrc = r.u32("SSRC").ok()?;
        let rest = if self.s_flag {
            Some((r.u32("ROC").ok()?, r.u16("SEQ").ok()?))
        } else {
            None
        };
        r.finish().ok()?;
        Some((ssrc, rest))
    }
}

/// CS ID map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CsIdMap {
    /// SRTP-ID map (type 0); #CS = number of entries.
    SrtpId(Vec<SrtpCs>),
    /// Empty map (type 1) with the #CS value carried in the header.
    Empty {
        /// Number of crypto sessions.
        n_cs: u8,
    },
    /// GENERIC-ID map (type 2); #CS = number of entries.
    GenericId(Vec<GenericCs>),
}

impl CsIdMap {
    /// The map type code.
    pub fn map_type(&self) -> CsIdMapType {
        match self {
            Self::SrtpId(_) => CsIdMapType::SRTP_ID,
            Self::Empty { .. } => CsIdMapType::EMPTY,
            Self::GenericId(_) => CsIdMapType::GENERIC_ID,
        }
    }

    /// The #CS value.
    pub fn n_cs(&self) -> usize {
        match self {
            Self::SrtpId(v) => v.len(),
            Self::Empty { n_cs } => usize::from(*n_cs),
            Self::GenericId(v) => v.len(),
        }
    }
}

/// The Common Header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommonHeader {
    /// Version (1).
    pub version: u8,
    /// Data type.
    pub data_type: DataType,
    /// V flag: a verification/response message is expected.
    pub v_flag: bool,
    /// PRF function (7 bits).
    pub prf: PrfFunc,
    /// CSB ID.
    pub csb_id: u32,
    /// CS ID map.
    pub cs_map: CsIdMap,
}

impl CommonHeader {
    /// Decodes the header; returns it and the Next Payload value naming the first payload.
    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<(Self, u8)> {
        let version = r.u8("HDR version")?;
        let data_type = DataType(r.u8("HDR data type")?);
        let next = r.u8("HDR next payload")?;
        let vp = r.u8("HDR V/PRF")?;
        let csb_id = r.u32("HDR CSB ID")?;
        let n_cs = r.u8("HDR #CS")?;
        let map_off = r.offset();
        let map_type = CsIdMapType(r.u8("HDR CS ID map type")?);
        let cs_map = match map_type {
            CsIdMapType::SRTP_ID => {
                let mut v = Vec::with_capacity(usize::from(n_cs));
                for _ in 0..n_cs {
                    v.push(SrtpCs {
                        policy_no: r.u8("SRTP-ID Policy_no")?,
                        ssrc: r.u32("SRTP-ID SSRC")?,
                        roc: r.u32("SRTP-ID ROC")?,
                    });
                }
                CsIdMap::SrtpId(v)
            }
            CsIdMapType::EMPTY => CsIdMap::Empty { n_cs },
            CsIdMapType::GENERIC_ID => {
                let mut v = Vec::with_capacity(usize::from(n_cs));
                for _ in 0..n_cs {
                    let cs_id = r.u8("GENERIC-ID CS ID")?;
                    let prot_type = ProtType(r.u8("GENERIC-ID Prot type")?);
                    let sp = r.u8("GENERIC-ID S/#P")?;
                    let policies = r.vec(usize::from(sp & 0x7f), "GENERIC-ID Policy_no")?;
                    let sdl = r.u16("GENERIC-ID Session Data Length")?;
                    let session_data = r.vec(usize::from(sdl), "GENERIC-ID Session Data")?;
                    let spil = r.u8("GENERIC-ID SPI Length")?;
                    let spi = r.vec(usize::from(spil), "GENERIC-ID SPI")?;
                    v.push(GenericCs {
                        cs_id,
                        prot_type,
                        s_flag: sp & 0x80 != 0,
                        policies,
                        session_data,
                        spi,
                    });
                }
                CsIdMap::GenericId(v)
            }
            other => {
                return Err(Error::invalid(
                    map_off,
                    "HDR CS ID map type",
                    format!("unknown map type {} (map info length unknown)", other.0),
                ));
            }
        };
        let hdr = Self {
            version,
            data_type,
            v_flag: vp & 0x80 != 0,
            prf: PrfFunc(vp & 0x7f),
            csb_id,
            cs_map,
        };
        Ok((hdr, next))
    }

    pub(crate) fn encode(&self, next: u8, w: &mut Writer) -> Result<()> {
        if self.prf.0 > 0x7f {
            return Err(Error::encode("HDR PRF func", "exceeds 7 bits"));
        }
        w.u8(self.version);
        w.u8(self.data_type.0);
        w.u8(next);
        w.u8(u8::from(self.v_flag) << 7 | self.prf.0);
        w.u32(self.csb_id);
        let n_cs = u8::try_from(self.cs_map.n_cs())
            .map_err(|_| Error::encode("HDR #CS", "more than 255 crypto sessions"))?;
        w.u8(n_cs);
        w.u8(self.cs_map.map_type().0);
        match &self.cs_map {
            CsIdMap::SrtpId(v) => {
                for cs in v {
                    w.u8(cs.policy_no);
                    w.u32(cs.ssrc);
                    w.u32(cs.roc);
                }
            }
            CsIdMap::Empty { .. } => {}
            CsIdMap::GenericId(v) => {
                for cs in v {
                    w.u8(cs.cs_id);
                    w.u8(cs.prot_type.0);
                    let np = u8::try_from(cs.policies.len())
                        .ok()
                        .filter(|n| *n <= 0x7f)
                        .ok_or_else(|| Error::encode("GENERIC-ID #P", "more than 127 policies"))?;
                    w.u8(u8::from(cs.s_flag) << 7 | np);
                    w.bytes(&cs.policies);
                    w.len16(&cs.session_data, "GENERIC-ID Session Data")?;
                    w.len8(&cs.spi, "GENERIC-ID SPI")?;
                }
            }
        }
        Ok(())
    }
}
