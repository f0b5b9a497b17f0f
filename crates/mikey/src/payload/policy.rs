//! Security Policy payload SP (RFC 3830 §6.10) with SRTP parameters (§6.10.1).

use crate::codec::{Reader, Writer};
use crate::error::Result;
use crate::registry::{ProtType, SrtpParam};

/// One policy parameter `Type | Length | Value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyParam {
    /// Parameter type (SRTP registry when the protocol is SRTP).
    pub param_type: SrtpParam,
    /// Value.
    pub value: Vec<u8>,
}

/// Security policy payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecurityPolicy {
    /// Policy number referenced from the CS ID map.
    pub policy_no: u8,
    /// Security protocol.
    pub prot_type: ProtType,
    /// Parameters.
    pub params: Vec<PolicyParam>,
}

impl SecurityPolicy {
    /// The value of parameter `t` as a single integer (first occurrence), if present.
    pub fn param_u32(&self, t: SrtpParam) -> Option<u32> {
        let p = self.params.iter().find(|p| p.param_type == t)?;
        if p.value.is_empty() || p.value.len() > 4 {
            return None;
        }
        Some(p.value.iter().fold(0u32, |acc, b| acc << 8 | u32::from(*b)))
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self> {
        let policy_no = r.u8("SP Policy no")?;
        let prot_type = ProtType(r.u8("SP Prot type")?);
        let n = r.u16("SP Policy param length")?;
        let mut pr = r.sub(usize::from(n), "SP Policy params")?;
        let mut params = Vec::new();
        while !pr.is_empty() {
            let param_type = SrtpParam(pr.u8("SP param Type")?);
            let len = pr.u8("SP param Length")?;
            params.push(PolicyParam { param_type, value: pr.vec(usize::from(len), "SP param Value")? });
        }
        Ok(Self { policy_no, prot_type, params })
    }

    pub(crate) fn encode(&self, w: &mut Writer) -> Result<()> {
        w.u8(self.policy_no);
        w.u8(self.prot_type.0);
        let mut pw = Writer::new();
        for p in &self.params {
            pw.u8(p.param_type.0);
            pw.len8(&p.value, "SP param Value")?;
        }
        w.len16(&pw.into_vec(), "SP Policy params")
    }
}
