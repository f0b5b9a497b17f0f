//! The Bootstrapping Transaction Identifier (TS 33.220 §4.5.2 step 6):
//! B-TID = base64(RAND) "@" BSF server name, in NAI form.

use core::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::GbaError;

/// A B-TID, split into the RAND it was built from and the BSF domain.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Btid {
    /// The RAND of the bootstrapping run.
    pub rand: [u8; 16],
    /// The BSF server name.
    pub domain: String,
}

impl Btid {
    /// Build from RAND and the BSF domain.
    pub fn new(rand: [u8; 16], domain: impl Into<String>) -> Self {
        Self { rand, domain: domain.into() }
    }

    /// Parse `base64(RAND)@domain`; the local part must decode to exactly 16 octets.
    pub fn parse(s: &str) -> Result<Self, GbaError> {
        let (local, domain) = s.split_once('@').ok_or(GbaError::InvalidBtid("no '@'"))?;
        if domain.is_empty() || domain.contains('@') || domain.chars().any(char::is_whitespace) {
            return Err(GbaError::InvalidBtid("bad domain"));
        }
        let raw = STANDARD.decode(local).map_err(|_| GbaError::InvalidBtid("local part is not base64"))?;
        let rand = <[u8; 16]>::try_from(raw).map_err(|_| GbaError::InvalidBtid("RAND is not 16 octets"))?;
        Ok(Self::new(rand, domain))
    }
}

impl fmt::Display for Btid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", STANDARD.encode(self.rand), self.domain)
    }
}
