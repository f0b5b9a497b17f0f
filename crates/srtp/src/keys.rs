//! Per-master-key state: the derived session keys (RFC 3711 §4.3) and the packet counters
//! that enforce the master key's lifetime (RFC 3711 §9.2).

use zeroize::Zeroizing;

use crate::crypto::{Aes, Gcm, HmacSha1};
use crate::kdf::{Kdf, Label};
use crate::policy::{MasterKey, SRTCP_MAX_PACKETS, SRTP_MAX_PACKETS};
use crate::suite::CipherKind;
use crate::{Error, Policy, Suite};

/// The transforms keyed with one set of session keys.
// One per session and direction, built at key derivation and never moved on the packet path:
// boxing the HMAC variant would only add an indirection to every packet.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Protection {
    /// AES-CM (or NULL) encryption with HMAC-SHA1 authentication (RFC 3711 §4).
    Hmac { cipher: Option<Aes>, mac: Option<HmacSha1> },
    /// AES-GCM (RFC 7714).
    Gcm(Gcm),
}

/// Session keys for one of SRTP or SRTCP, derived at one key derivation index `r`.
pub(crate) struct SessionKeys {
    pub(crate) protection: Protection,
    /// Session salt, 14 octets (AES-CM) or 12 (GCM, zero-padded here).
    pub(crate) salt: Zeroizing<[u8; 14]>,
    r: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Srtp,
    Srtcp,
}

/// What the derivation needs to know of the policy.
#[derive(Clone, Copy)]
pub(crate) struct Derivation {
    pub(crate) suite: Suite,
    pub(crate) encrypt_srtp: bool,
    pub(crate) authenticate_srtp: bool,
    /// `log2(KDR)`, or `None` for a key derivation rate of 0 (derive once).
    pub(crate) kdr_shift: Option<u32>,
}

impl Derivation {
    pub(crate) fn new(policy: &Policy) -> Self {
        Self {
            suite: policy.suite,
            encrypt_srtp: !policy.unencrypted_srtp,
            authenticate_srtp: !policy.unauthenticated_srtp,
            kdr_shift: (policy.kdr != 0).then(|| policy.kdr.trailing_zeros()),
        }
    }

    /// `r = index DIV key_derivation_rate` (RFC 3711 §4.3.1).
    fn r(&self, index: u64) -> u64 {
        self.kdr_shift.map_or(0, |shift| index >> shift)
    }

    fn derive(&self, kdf: &Kdf, kind: Kind, r: u64) -> Result<SessionKeys, Error> {
        let (enc, auth, salt_label) = match kind {
            Kind::Srtp => (Label::SrtpEncryption, Label::SrtpAuth, Label::SrtpSalt),
            Kind::Srtcp => (Label::SrtcpEncryption, Label::SrtcpAuth, Label::SrtcpSalt),
        };
        let suite = self.suite;
        let mut salt = Zeroizing::new([0u8; 14]);
        kdf.derive(salt_label, r, salt.get_mut(..suite.master_salt_len()).unwrap_or_default());
        let mut key = Zeroizing::new([0u8; 32]);
        let key = key.get_mut(..suite.session_enc_key_len()).unwrap_or_default();
        kdf.derive(enc, r, key);
        let protection = match suite.cipher() {
            CipherKind::AesGcm => Protection::Gcm(Gcm::new(key)?),
            kind_of_cipher => {
                // SRTCP always keeps its cipher: the E flag of each packet says whether it is
                // encrypted (RFC 3711 §3.4), and its tag is mandatory.
                let encrypt = kind == Kind::Srtcp || self.encrypt_srtp;
                let cipher = (kind_of_cipher == CipherKind::AesCm && encrypt).then(|| Aes::new(key)).transpose()?;
                let mac = (kind == Kind::Srtcp || self.authenticate_srtp).then(|| {
                    let mut auth_key = Zeroizing::new([0u8; 20]);
                    kdf.derive(auth, r, &mut *auth_key);
                    HmacSha1::new(&*auth_key)
                });
                Protection::Hmac { cipher, mac }
            }
        };
        Ok(SessionKeys { protection, salt, r })
    }
}

/// One master key of a session and everything derived from it.
pub(crate) struct KeyState {
    pub(crate) mki: Vec<u8>,
    kdf: Kdf,
    srtp: SessionKeys,
    srtcp: SessionKeys,
    used: [u64; 2],
    limit: [u64; 2],
}

impl KeyState {
    pub(crate) fn new(master: &MasterKey, d: &Derivation) -> Result<Self, Error> {
        let kdf = Kdf::new(master.key(), master.salt())?;
        let lifetime = master.lifetime().unwrap_or(u64::MAX);
        Ok(Self {
            mki: master.mki().to_vec(),
            srtp: d.derive(&kdf, Kind::Srtp, 0)?,
            srtcp: d.derive(&kdf, Kind::Srtcp, 0)?,
            kdf,
            used: [0, 0],
            limit: [lifetime.min(SRTP_MAX_PACKETS), lifetime.min(SRTCP_MAX_PACKETS)],
        })
    }

    /// A key state holding the given session keys directly (published vectors give session
    /// keys, not master keys).
    #[cfg(test)]
    pub(crate) fn from_session_keys(
        d: &Derivation,
        srtp: (&[u8], &[u8], &[u8]),
        srtcp: (&[u8], &[u8], &[u8]),
    ) -> Result<Self, Error> {
        let build = |(enc, auth, salt): (&[u8], &[u8], &[u8]), kind: Kind| -> Result<SessionKeys, Error> {
            let mut s = Zeroizing::new([0u8; 14]);
            s.get_mut(..salt.len()).ok_or(Error::Policy("salt too long"))?.copy_from_slice(salt);
            let protection = match d.suite.cipher() {
                CipherKind::AesGcm => Protection::Gcm(Gcm::new(enc)?),
                c => Protection::Hmac {
                    cipher: (c == CipherKind::AesCm && (kind == Kind::Srtcp || d.encrypt_srtp)).then(|| Aes::new(enc)).transpose()?,
                    mac: Some(HmacSha1::new(auth)),
                },
            };
            Ok(SessionKeys { protection, salt: s, r: 0 })
        };
        Ok(Self {
            mki: Vec::new(),
            kdf: Kdf::new(&[0u8; 16], &[0u8; 14])?,
            srtp: build(srtp, Kind::Srtp)?,
            srtcp: build(srtcp, Kind::Srtcp)?,
            used: [0, 0],
            limit: [SRTP_MAX_PACKETS, SRTCP_MAX_PACKETS],
        })
    }

    /// Refuses the key once it has processed its share of packets.
    pub(crate) fn check_limit(&self, kind: Kind) -> Result<(), Error> {
        let i = kind as usize;
        if self.used.get(i) >= self.limit.get(i) { Err(Error::KeyExhausted) } else { Ok(()) }
    }

    /// Counts one more packet processed under this key.
    pub(crate) fn count(&mut self, kind: Kind) {
        if let Some(n) = self.used.get_mut(kind as usize) {
            *n += 1;
        }
    }

    /// The session keys for packet `index`, re-derived first if the key derivation rate
    /// moved `r` (RFC 3711 §4.3.1).
    pub(crate) fn session_keys(&mut self, d: &Derivation, kind: Kind, index: u64) -> Result<&SessionKeys, Error> {
        let r = d.r(index);
        let keys = match kind {
            Kind::Srtp => &mut self.srtp,
            Kind::Srtcp => &mut self.srtcp,
        };
        if keys.r != r {
            *keys = d.derive(&self.kdf, kind, r)?;
        }
        Ok(keys)
    }
}
