//! KEMAC payload (RFC 3830 §6.2) and its Key data sub-payload (RFC 3830 §6.13, RFC 6043
//! §6.13).

use zeroize::Zeroize;

use crate::codec::{Reader, Writer};
use crate::error::{Error, Result};
use crate::registry::{EncrAlg, KeyType, KvType, MacAlg};

/// Key data transport payload. `encr_data` is the (possibly encrypted) Key data chain; the
/// MAC length is implied by `mac_alg`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kemac {
    /// Encryption algorithm.
    pub encr_alg: EncrAlg,
    /// Encrypted data (sub-payload chain after decryption).
    pub encr_data: Vec<u8>,
    /// MAC algorithm.
    pub mac_alg: MacAlg,
    /// MAC value (length by `mac_alg`).
    pub mac: Vec<u8>,
}

impl Kemac {
    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self> {
        let encr_alg = EncrAlg(r.u8("KEMAC Encr alg")?);
        let len = r.u16("KEMAC Encr data len")?;
        let encr_data = r.vec(usize::from(len), "KEMAC Encr data")?;
        let mac_off = r.offset();
        let mac_alg = MacAlg(r.u8("KEMAC MAC alg")?);
        let n = mac_alg.mac_len().ok_or_else(|| {
            Error::invalid(mac_off, "KEMAC MAC alg", format!("unknown MAC algorithm {}", mac_alg.0))
        })?;
        let mac = r.vec(n, "KEMAC MAC")?;
        Ok(Self { encr_alg, encr_data, mac_alg, mac })
    }

    pub(crate) fn encode(&self, w: &mut Writer) -> Result<()> {
        w.u8(self.encr_alg.0);
        w.len16(&self.encr_data, "KEMAC Encr data")?;
        w.u8(self.mac_alg.0);
        check_mac_len(self.mac_alg, &self.mac, "KEMAC MAC")?;
        w.bytes(&self.mac);
        Ok(())
    }
}

pub(crate) fn check_mac_len(alg: MacAlg, mac: &[u8], field: &'static str) -> Result<()> {
    match alg.mac_len() {
        Some(n) if n == mac.len() => Ok(()),
        Some(n) => Err(Error::encode(field, format!("{alg:?} needs {n} octets, got {}", mac.len()))),
        None => Err(Error::encode(field, format!("unknown MAC algorithm {}", alg.0))),
    }
}

/// Key validity data (KV) of a Key data sub-payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyValidity {
    /// KV = NULL: no restriction.
    Null,
    /// KV = SPI: the key applies to this SPI (for SRTP the MKI).
    Spi(Vec<u8>),
    /// KV = Interval: valid from/to (for SRTP, 48-bit packet indexes).
    Interval {
        /// Valid From.
        from: Vec<u8>,
        /// Valid To.
        to: Vec<u8>,
    },
}

impl KeyValidity {
    /// The KV type code.
    pub fn kv_type(&self) -> KvType {
        match self {
            Self::Null => KvType::NULL,
            Self::Spi(_) => KvType::SPI,
            Self::Interval { .. } => KvType::INTERVAL,
        }
    }

    pub(crate) fn decode(kv: KvType, off: usize, r: &mut Reader<'_>) -> Result<Self> {
        Ok(match kv {
            KvType::NULL => Self::Null,
            KvType::SPI => {
                let n = r.u8("KV SPI Length")?;
                Self::Spi(r.vec(usize::from(n), "KV SPI")?)
            }
            KvType::INTERVAL => {
                let n = r.u8("KV VF Length")?;
                let from = r.vec(usize::from(n), "KV Valid From")?;
                let n = r.u8("KV VT Length")?;
                let to = r.vec(usize::from(n), "KV Valid To")?;
                Self::Interval { from, to }
            }
            other => {
                return Err(Error::invalid(off, "KV", format!("unknown key validity type {}", other.0)));
            }
        })
    }

    pub(crate) fn encode(&self, w: &mut Writer) -> Result<()> {
        match self {
            Self::Null => Ok(()),
            Self::Spi(spi) => w.len8(spi, "KV SPI"),
            Self::Interval { from, to } => {
                w.len8(from, "KV Valid From")?;
                w.len8(to, "KV Valid To")
            }
        }
    }
}

/// Key data sub-payload. Secret material is zeroized on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyData {
    /// Key type (4 bits).
    pub key_type: KeyType,
    /// Key data.
    pub key: Vec<u8>,
    /// Salt; present exactly when `key_type.has_salt()`.
    pub salt: Option<Vec<u8>>,
    /// Key validity.
    pub validity: KeyValidity,
}

impl core::fmt::Debug for KeyData {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("KeyData")
            .field("key_type", &self.key_type)
            .field("key_len", &self.key.len())
            .field("salt_len", &self.salt.as_ref().map(Vec::len))
            .field("validity", &self.validity)
            .finish()
    }
}

impl Drop for KeyData {
    fn drop(&mut self) {
        self.key.zeroize();
        self.salt.zeroize();
    }
}

impl KeyData {
    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self> {
        let tk_off = r.offset();
        let tk = r.u8("Key data Type/KV")?;
        let key_type = KeyType(tk >> 4);
        let kv = KvType(tk & 0x0f);
        let n = r.u16("Key data len")?;
        let key = r.vec(usize::from(n), "Key data")?;
        let salt = if key_type.has_salt() {
            let n = r.u16("Salt len")?;
            Some(r.vec(usize::from(n), "Salt data")?)
        } else {
            None
        };
        let validity = KeyValidity::decode(kv, tk_off, r)?;
        Ok(Self { key_type, key, salt, validity })
    }

    pub(crate) fn encode(&self, w: &mut Writer) -> Result<()> {
        if self.key_type.0 > 0x0f {
            return Err(Error::encode("Key data Type", "exceeds 4 bits"));
        }
        w.u8(self.key_type.0 << 4 | self.validity.kv_type().0);
        w.len16(&self.key, "Key data")?;
        match (&self.salt, self.key_type.has_salt()) {
            (Some(salt), true) => w.len16(salt, "Salt data")?,
            (None, false) => {}
            _ => return Err(Error::encode("Salt data", "salt present iff the key type has +SALT")),
        }
        self.validity.encode(w)
    }
}
