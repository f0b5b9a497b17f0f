//! Mapping a MIKEY crypto session and its SP payload to an SRTP policy (RFC 3830 §4.1.3,
//! §6.10.1; RFC 7714 §14.2 for AES-GCM).
//!
//! [`SrtpPolicy`] is a plain typed value so that the SRTP crate can convert it into its
//! own policy type; the suite is named by its SDES (RFC 4568 / RFC 6188 / RFC 7714) string.

use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::keys::{SALT_FROM_TGK, TEK};
use crate::payload::{PolicyParam, SecurityPolicy};
use crate::prf::prf;
use crate::registry::{ErrorCode, PrfFunc, ProtType, SrtpParam};

/// The SP payload (policy number 0) for AES_CM_128_HMAC_SHA1_80 with SRTP/SRTCP encryption
/// and SRTP authentication on and a key derivation rate of 0 (RFC 3830 §6.10.1 values): what
/// our UEs offer by default.
pub fn aes_cm_128_hmac_sha1_80() -> SecurityPolicy {
    let p = |t: SrtpParam, v: u8| PolicyParam { param_type: t, value: vec![v] };
    SecurityPolicy {
        policy_no: 0,
        prot_type: ProtType::SRTP,
        params: vec![
            p(SrtpParam::ENCR_ALG, 1),
            p(SrtpParam::ENCR_KEY_LEN, 16),
            p(SrtpParam::AUTH_ALG, 1),
            p(SrtpParam::AUTH_KEY_LEN, 20),
            p(SrtpParam::SALT_KEY_LEN, 14),
            p(SrtpParam::SRTP_PRF, 0),
            p(SrtpParam::KDR, 0),
            p(SrtpParam::SRTP_ENCR, 1),
            p(SrtpParam::SRTCP_ENCR, 1),
            p(SrtpParam::SRTP_AUTH, 1),
            p(SrtpParam::AUTH_TAG_LEN, 10),
        ],
    }
}

/// An SRTP crypto context's keying and parameters.
#[derive(Clone, PartialEq, Eq)]
pub struct SrtpPolicy {
    /// SDES suite name, e.g. `AES_CM_128_HMAC_SHA1_80` or `AEAD_AES_128_GCM`.
    pub suite: &'static str,
    /// SRTP master key (the TEK).
    pub master_key: Zeroizing<Vec<u8>>,
    /// SRTP master salt.
    pub master_salt: Zeroizing<Vec<u8>>,
    /// Roll-over counter from the CS ID map.
    pub roc: u32,
    /// SSRC from the CS ID map (0 = unknown).
    pub ssrc: u32,
    /// Key derivation rate value as carried in SP parameter 6 (0 = derive once).
    pub kdr: u32,
    /// MKI (the SPI of the Key data / GENERIC-ID map), empty when none.
    pub mki: Vec<u8>,
    /// SRTP encryption on (SP parameter 7).
    pub srtp_encryption: bool,
    /// SRTCP encryption on (SP parameter 8).
    pub srtcp_encryption: bool,
    /// SRTP authentication on (SP parameter 10).
    pub srtp_authentication: bool,
}

impl core::fmt::Debug for SrtpPolicy {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SrtpPolicy")
            .field("suite", &self.suite)
            .field("roc", &self.roc)
            .field("ssrc", &self.ssrc)
            .field("kdr", &self.kdr)
            .field("mki", &self.mki)
            .finish_non_exhaustive()
    }
}

/// Suite, master key length and master salt length selected by an SP payload (unset
/// parameters take the RFC 3711 §8.2 defaults).
pub fn suite_of(sp: &SecurityPolicy) -> Result<(&'static str, usize, usize)> {
    let bad = |why: &str| Error::rejected(ErrorCode::INVALID_SPPAR, format!("SP policy {}: {why}", sp.policy_no));
    if sp.prot_type != ProtType::SRTP {
        return Err(Error::rejected(ErrorCode::INVALID_SP, format!("protocol {} is not SRTP", sp.prot_type.0)));
    }
    let get = |t: SrtpParam, d: u32| sp.param_u32(t).unwrap_or(d);
    let encr = get(SrtpParam::ENCR_ALG, 1);
    let key_len = get(SrtpParam::ENCR_KEY_LEN, 16);
    let auth = get(SrtpParam::AUTH_ALG, 1);
    let prf_alg = get(SrtpParam::SRTP_PRF, 0);
    if prf_alg != 0 {
        return Err(bad("SRTP PRF is not AES-CM"));
    }
    match encr {
        1 => {
            if auth != 1 {
                return Err(bad("only HMAC-SHA-1 authentication is supported with AES-CM"));
            }
            let salt = get(SrtpParam::SALT_KEY_LEN, 14);
            if salt != 14 {
                return Err(bad("AES-CM needs a 14-octet salt"));
            }
            let tag = get(SrtpParam::AUTH_TAG_LEN, 10);
            let suite = match (key_len, tag) {
                (16, 10) => "AES_CM_128_HMAC_SHA1_80",
                (16, 4) => "AES_CM_128_HMAC_SHA1_32",
                (24, 10) => "AES_192_CM_HMAC_SHA1_80",
                (24, 4) => "AES_192_CM_HMAC_SHA1_32",
                (32, 10) => "AES_256_CM_HMAC_SHA1_80",
                (32, 4) => "AES_256_CM_HMAC_SHA1_32",
                _ => return Err(bad("unsupported key length / tag length")),
            };
            Ok((suite, usize::try_from(key_len).unwrap_or(16), 14))
        }
        6 => {
            let salt = get(SrtpParam::SALT_KEY_LEN, 12);
            let tag = get(SrtpParam::AEAD_AUTH_TAG_LEN, 16);
            if salt != 12 || tag != 16 {
                return Err(bad("AES-GCM needs a 12-octet salt and a 16-octet tag (RFC 7714)"));
            }
            match key_len {
                16 => Ok(("AEAD_AES_128_GCM", 16, 12)),
                32 => Ok(("AEAD_AES_256_GCM", 32, 12)),
                _ => Err(bad("AES-GCM key length must be 16 or 32")),
            }
        }
        _ => Err(bad("unsupported SRTP encryption algorithm")),
    }
}

/// Crypto-session inputs from the CS ID map and Key data.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CryptoSession {
    /// SSRC.
    pub ssrc: u32,
    /// ROC.
    pub roc: u32,
    /// MKI/SPI.
    pub mki: Vec<u8>,
}

/// Builds the SRTP policy of one crypto session: master key = PRF(TGK, label(TEK)),
/// master salt = the Key data salt if present, else PRF(TGK, label(SALT)) (RFC 3830 §4.1.3,
/// RFC 6043 §5.1.3). `label` builds the label for a constant.
pub fn derive(
    prf_func: PrfFunc,
    tgk: &[u8],
    label: impl Fn(u32) -> Vec<u8>,
    key_data_salt: Option<&[u8]>,
    sp: &SecurityPolicy,
    cs: &CryptoSession,
) -> Result<SrtpPolicy> {
    let (suite, key_len, salt_len) = suite_of(sp)?;
    let master_key = prf(prf_func, tgk, &label(TEK), key_len)?;
    let master_salt = match key_data_salt {
        Some(s) if s.len() == salt_len => Zeroizing::new(s.to_vec()),
        Some(s) => {
            return Err(Error::rejected(
                ErrorCode::INVALID_SPPAR,
                format!("Key data salt has {} octets, {suite} needs {salt_len}", s.len()),
            ));
        }
        None => prf(prf_func, tgk, &label(SALT_FROM_TGK), salt_len)?,
    };
    let flag = |t: SrtpParam| sp.param_u32(t).unwrap_or(1) != 0;
    Ok(SrtpPolicy {
        suite,
        master_key,
        master_salt,
        roc: cs.roc,
        ssrc: cs.ssrc,
        kdr: sp.param_u32(SrtpParam::KDR).unwrap_or(0),
        mki: cs.mki.clone(),
        srtp_encryption: flag(SrtpParam::SRTP_ENCR),
        srtcp_encryption: flag(SrtpParam::SRTCP_ENCR),
        srtp_authentication: flag(SrtpParam::SRTP_AUTH),
    })
}

impl SrtpPolicy {
    /// The SRTP crate's policy for this crypto session (suite, master key and salt, MKI, KDR,
    /// and the SP on/off parameters as RFC 4568-style session parameters). The ROC and SSRC
    /// go to [`mediasec_srtp::Session::set_roc`] once the session exists.
    pub fn to_srtp(&self) -> core::result::Result<mediasec_srtp::Policy, mediasec_srtp::Error> {
        let suite: mediasec_srtp::Suite =
            self.suite.parse().map_err(|_| mediasec_srtp::Error::Policy("suite unknown to the SRTP crate"))?;
        let key = mediasec_srtp::MasterKey::new(&self.master_key, &self.master_salt).with_mki(&self.mki);
        let mut policy = mediasec_srtp::Policy::new(suite, key);
        policy.kdr = self.kdr;
        policy.unencrypted_srtp = !self.srtp_encryption;
        policy.unencrypted_srtcp = !self.srtcp_encryption;
        policy.unauthenticated_srtp = !self.srtp_authentication;
        Ok(policy)
    }
}
