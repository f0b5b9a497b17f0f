//! Key derivations of RFC 3830 §4.1.3–4.1.4 and RFC 6043 §5.1 / Appendix A.2, built on
//! [`crate::prf::prf`].
//!
//! Constants are the RFC 3830 §4.1.3/§4.1.4 and RFC 6043 §5.1.1/A.2.2 values; every label
//! builder writes multi-octet integers big-endian.

use zeroize::Zeroizing;

use crate::error::Result;
use crate::prf::prf;
use crate::registry::{EncrAlg, MacAlg, PrfFunc};

/// TEK from TGK (RFC 3830 §4.1.3).
pub const TEK: u32 = 0x2AD0_1C64;
/// SRTP authentication key directly from TGK (RFC 3830 §4.1.3).
pub const AUTH_FROM_TGK: u32 = 0x1B5C_7973;
/// SRTP encryption key directly from TGK (RFC 3830 §4.1.3).
pub const ENCR_FROM_TGK: u32 = 0x1579_8CEF;
/// Salting key from TGK (RFC 3830 §4.1.3).
pub const SALT_FROM_TGK: u32 = 0x39A2_C14B;
/// MIKEY message encryption key (RFC 3830 §4.1.4).
pub const MSG_ENCR: u32 = 0x1505_33E1;
/// MIKEY message authentication key (RFC 3830 §4.1.4).
pub const MSG_AUTH: u32 = 0x2D22_AC75;
/// MIKEY message salting key (RFC 3830 §4.1.4).
pub const MSG_SALT: u32 = 0x29B8_8916;
/// Forked MPKr' from MPKr (RFC 6043 §5.1.1).
pub const FORK_MPKR: u32 = 0x2B28_8856;
/// Forked TGK' / GTGK' (RFC 6043 §5.1.1).
pub const FORK_TGK: u32 = 0x1512_B54A;
/// MPKi from the ticket MPK (RFC 6043 Appendix A.2.2).
pub const MPKI: u32 = 0x220E_99A2;
/// MPKr from the ticket MPK (RFC 6043 Appendix A.2.2).
pub const MPKR: u32 = 0x1F4D_675B;

/// "Any CSB" value used where RFC 6043 labels have no CSB ID.
const NO_CSB: u32 = 0xFFFF_FFFF;

/// Which message of an RFC 6043 exchange a key protects (label octet after the CSB ID).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// REQUEST_INIT, TRANSFER_INIT, RESOLVE_INIT (0x01).
    Initial,
    /// REQUEST_RESP, TRANSFER_RESP, RESOLVE_RESP and error messages (0x02).
    Response,
}

/// A label's buffer, allocated once: `const` followed by room for `rest` more octets (the
/// builders below know their exact length; a growing `Vec` would reallocate two or three
/// times per label, and a ticket exchange derives dozens of keys).
fn start(constant: u32, rest: usize) -> Vec<u8> {
    let mut l = Vec::with_capacity(4 + rest);
    l.extend_from_slice(&constant.to_be_bytes());
    l
}

/// Octets [`lv8`] writes for `v`.
fn lv8_len(v: Option<&[u8]>) -> usize {
    1 + v.map_or(0, |v| v.len().min(usize::from(u8::MAX)))
}

fn lv8(out: &mut Vec<u8>, v: Option<&[u8]>) {
    let v = v.unwrap_or_default();
    out.push(u8::try_from(v.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(v.get(..usize::from(u8::MAX)).unwrap_or(v));
}

/// RFC 3830 §4.1.3 label: `const || cs_id || csb_id || RAND`.
pub fn label_tgk(constant: u32, cs_id: u8, csb_id: u32, rand: &[u8]) -> Vec<u8> {
    let mut l = start(constant, 5 + rand.len());
    l.push(cs_id);
    l.extend_from_slice(&csb_id.to_be_bytes());
    l.extend_from_slice(rand);
    l
}

/// RFC 3830 §4.1.4 label: `const || 0xFF || csb_id || RAND`.
pub fn label_message(constant: u32, csb_id: u32, rand: &[u8]) -> Vec<u8> {
    let mut l = start(constant, 5 + rand.len());
    l.push(0xFF);
    l.extend_from_slice(&csb_id.to_be_bytes());
    l.extend_from_slice(rand);
    l
}

/// RFC 6043 §5.1.2 label for keys protecting MIKEY-TICKET messages:
/// `const || 0xFF || CSB ID || 0x01|0x02 || len RANDRi || RANDRi || len RANDRr || RANDRr`.
pub fn label_ticket_message(
    constant: u32,
    csb_id: u32,
    dir: Direction,
    randri: Option<&[u8]>,
    randrr: Option<&[u8]>,
) -> Vec<u8> {
    let mut l = start(constant, 6 + lv8_len(randri) + lv8_len(randrr));
    l.push(0xFF);
    l.extend_from_slice(&csb_id.to_be_bytes());
    l.push(match dir {
        Direction::Initial => 0x01,
        Direction::Response => 0x02,
    });
    lv8(&mut l, randri);
    lv8(&mut l, randrr);
    l
}

/// RFC 6043 §5.1.3 label for TEK/salt from TGK in the Ticket Transfer exchange:
/// `const || CS ID || 0xFFFFFFFF || 0x03 || len RANDRi || RANDRi || len RANDRr || RANDRr`.
pub fn label_ticket_tgk(constant: u32, cs_id: u8, randri: Option<&[u8]>, randrr: Option<&[u8]>) -> Vec<u8> {
    let mut l = start(constant, 6 + lv8_len(randri) + lv8_len(randrr));
    l.push(cs_id);
    l.extend_from_slice(&NO_CSB.to_be_bytes());
    l.push(0x03);
    lv8(&mut l, randri);
    lv8(&mut l, randrr);
    l
}

/// RFC 6043 §5.1.1 forking label:
/// `const || 0xFF || 0xFFFFFFFF || 0x00 || len16 ID Data || ID Data || len8 RANDRkms || RANDRkms`.
pub fn label_fork(constant: u32, id_data: &[u8], randrkms: Option<&[u8]>) -> Vec<u8> {
    let n = u16::try_from(id_data.len()).unwrap_or(u16::MAX);
    let mut l = start(constant, 8 + usize::from(n) + lv8_len(randrkms));
    l.push(0xFF);
    l.extend_from_slice(&NO_CSB.to_be_bytes());
    l.push(0x00);
    l.extend_from_slice(&n.to_be_bytes());
    l.extend_from_slice(id_data.get(..usize::from(n)).unwrap_or(id_data));
    lv8(&mut l, randrkms);
    l
}

/// RFC 6043 §6.11 label of the Initiator Data Vr auth key: `const || 0xFF || 0xFFFFFFFF || 0x04`.
pub fn label_initiator_data(constant: u32) -> Vec<u8> {
    let mut l = start(constant, 6);
    l.push(0xFF);
    l.extend_from_slice(&NO_CSB.to_be_bytes());
    l.push(0x04);
    l
}

/// RFC 6043 Appendix A.2 labels for TPK-derived keys (`tag` 0x05) and MPKi/MPKr (`tag` 0x06):
/// `const || 0xFF || 0xFFFFFFFF || tag || len RAND || RAND`.
pub fn label_base_ticket(constant: u32, tag: u8, rand: &[u8]) -> Vec<u8> {
    let mut l = start(constant, 6 + lv8_len(Some(rand)));
    l.push(0xFF);
    l.extend_from_slice(&NO_CSB.to_be_bytes());
    l.push(tag);
    lv8(&mut l, Some(rand));
    l
}

/// Encryption key length for a KEMAC encryption algorithm (RFC 3830 §4.2.3, RFC 6043 §6.2).
pub fn encr_key_len(alg: EncrAlg) -> Option<usize> {
    match alg {
        EncrAlg::NULL => Some(0),
        EncrAlg::AES_CM_128 | EncrAlg::AES_KW_128 => Some(16),
        EncrAlg::AES_CM_256 => Some(32),
        _ => None,
    }
}

/// Authentication key length for a MAC algorithm: 160 bits for HMAC-SHA-1-160 (RFC 3830
/// §4.2.4), 256 bits for HMAC-SHA-256-256 (RFC 6043 §6.2).
pub fn auth_key_len(alg: MacAlg) -> Option<usize> {
    match alg {
        MacAlg::NULL => Some(0),
        MacAlg::HMAC_SHA_1_160 => Some(20),
        MacAlg::HMAC_SHA_256_256 => Some(32),
        _ => None,
    }
}

/// Length of the salting key: 112 bits (RFC 3830 §4.2.3); AES-KW uses its leftmost 64 bits.
pub const SALT_KEY_LEN: usize = 14;

/// Keys protecting one MIKEY message (RFC 3830 §4.1.4 / RFC 6043 §5.1.2). Zeroized on drop.
#[derive(Clone)]
pub struct MessageKeys {
    /// PRF used for the KEMAC/V computations.
    pub prf: PrfFunc,
    /// encr_key.
    pub encr_key: Zeroizing<Vec<u8>>,
    /// auth_key.
    pub auth_key: Zeroizing<Vec<u8>>,
    /// salt_key.
    pub salt_key: Zeroizing<Vec<u8>>,
}

impl core::fmt::Debug for MessageKeys {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("MessageKeys(..)")
    }
}

impl MessageKeys {
    /// Derives encr/auth/salt keys from `inkey` (PSK, env_key, MPK...) with a label builder
    /// that takes the constant.
    pub fn derive(
        prf_func: PrfFunc,
        inkey: &[u8],
        encr: EncrAlg,
        mac: MacAlg,
        label: impl Fn(u32) -> Vec<u8>,
    ) -> Result<Self> {
        let el = encr_key_len(encr).ok_or(crate::Error::Unsupported {
            what: "KEMAC encryption algorithm",
            value: u16::from(encr.0),
        })?;
        let al = auth_key_len(mac)
            .ok_or(crate::Error::Unsupported { what: "MAC algorithm", value: u16::from(mac.0) })?;
        Ok(Self {
            prf: prf_func,
            encr_key: prf(prf_func, inkey, &label(MSG_ENCR), el)?,
            auth_key: prf(prf_func, inkey, &label(MSG_AUTH), al)?,
            salt_key: prf(prf_func, inkey, &label(MSG_SALT), SALT_KEY_LEN)?,
        })
    }

    /// RFC 3830 §4.1.4 keys (PSK / envelope key modes).
    pub fn rfc3830(prf_func: PrfFunc, inkey: &[u8], csb_id: u32, rand: &[u8], encr: EncrAlg, mac: MacAlg) -> Result<Self> {
        Self::derive(prf_func, inkey, encr, mac, |c| label_message(c, csb_id, rand))
    }

    /// RFC 6043 §5.1.2 keys for an initial or response message.
    #[allow(clippy::too_many_arguments)]
    pub fn ticket(
        prf_func: PrfFunc,
        inkey: &[u8],
        csb_id: u32,
        dir: Direction,
        randri: Option<&[u8]>,
        randrr: Option<&[u8]>,
        encr: EncrAlg,
        mac: MacAlg,
    ) -> Result<Self> {
        Self::derive(prf_func, inkey, encr, mac, |c| label_ticket_message(c, csb_id, dir, randri, randrr))
    }
}
