//! What a session is configured with: suite, master keys (with MKI and lifetime), key
//! derivation rate, replay window, the RFC 4568 §6.3 session parameters, and stream bounds.

use core::fmt;

use zeroize::Zeroizing;

use crate::replay::{DEFAULT_REPLAY_WINDOW, MAX_REPLAY_WINDOW, MIN_REPLAY_WINDOW};
use crate::{Error, Suite};

/// Most packets one master key may protect in SRTP (RFC 3711 §9.2).
pub const SRTP_MAX_PACKETS: u64 = 1 << 48;
/// Most packets one master key may protect in SRTCP (RFC 3711 §9.2).
pub const SRTCP_MAX_PACKETS: u64 = 1 << 31;
/// Longest MKI RFC 4568 §6.1 allows (`MKI:length`, 1..128 octets).
pub const MAX_MKI_LEN: usize = 128;

/// A master key and master salt, with its optional MKI and lifetime. Zeroized on drop;
/// `Debug` never prints key material.
#[derive(Clone)]
pub struct MasterKey {
    key: Zeroizing<Vec<u8>>,
    salt: Zeroizing<Vec<u8>>,
    mki: Vec<u8>,
    lifetime: Option<u64>,
}

impl MasterKey {
    /// A master key and salt; lengths are checked against the suite when the session is built.
    pub fn new(key: &[u8], salt: &[u8]) -> Self {
        Self { key: Zeroizing::new(key.to_vec()), salt: Zeroizing::new(salt.to_vec()), mki: Vec::new(), lifetime: None }
    }

    /// Splits an SDES inline key (`master key || master salt`, RFC 4568 §6.1) for `suite`.
    pub fn from_inline(suite: Suite, key_and_salt: &[u8]) -> Result<Self, Error> {
        if key_and_salt.len() != suite.inline_key_len() {
            return Err(Error::Policy("inline key length does not match the suite"));
        }
        let (key, salt) = key_and_salt.split_at(suite.master_key_len());
        Ok(Self::new(key, salt))
    }

    /// Sets the master key identifier carried in every packet (RFC 3711 §3.1).
    #[must_use]
    pub fn with_mki(mut self, mki: &[u8]) -> Self {
        self.mki = mki.to_vec();
        self
    }

    /// Limits the key to `packets` packets, as an SDES lifetime (`|2^20`) or MIKEY key
    /// validity does; the RFC 3711 §9.2 limits apply in any case.
    #[must_use]
    pub fn with_lifetime(mut self, packets: u64) -> Self {
        self.lifetime = Some(packets);
        self
    }

    /// The master key identifier (empty when MKI is not used).
    pub fn mki(&self) -> &[u8] {
        &self.mki
    }

    pub(crate) fn key(&self) -> &[u8] {
        &self.key
    }

    pub(crate) fn salt(&self) -> &[u8] {
        &self.salt
    }

    pub(crate) fn lifetime(&self) -> Option<u64> {
        self.lifetime
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterKey")
            .field("key", &format_args!("<{} octets>", self.key.len()))
            .field("salt", &format_args!("<{} octets>", self.salt.len()))
            .field("mki", &self.mki)
            .field("lifetime", &self.lifetime)
            .finish()
    }
}

/// The configuration of a [`crate::Session`].
///
/// RTCP integrity cannot be switched off: TS 33.328 §5.2 and RFC 3711 §3.4 make the SRTCP
/// authentication tag mandatory, so there is deliberately no `UNAUTHENTICATED_SRTCP`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Policy {
    /// The crypto suite.
    pub suite: Suite,
    /// Master keys. With more than one, every key needs an MKI of the same length; the
    /// sender uses the active one ([`crate::Session::set_active_mki`]), the receiver selects
    /// by the MKI in each packet.
    pub keys: Vec<MasterKey>,
    /// Key derivation rate (RFC 3711 §4.3.1): 0, or a power of two up to 2^24.
    pub kdr: u32,
    /// Replay window size in packets, per stream (RFC 3711 §3.3.2), 64..=32768.
    pub replay_window: usize,
    /// RFC 4568 §6.3.3 `UNENCRYPTED_SRTP`: RTP payloads are sent in clear (still authenticated).
    pub unencrypted_srtp: bool,
    /// RFC 4568 §6.3.4 `UNENCRYPTED_SRTCP`: SRTCP is sent with E=0 (still authenticated).
    pub unencrypted_srtcp: bool,
    /// RFC 4568 §6.3.5 `UNAUTHENTICATED_SRTP`: no SRTP tag (and hence no replay protection).
    pub unauthenticated_srtp: bool,
    /// Most streams (SSRCs) per direction; packets of further SSRCs are refused.
    pub max_streams: usize,
    /// Lets the sender protect a packet index twice (retransmissions); off by default because
    /// it reuses keystream.
    pub allow_repeat_tx: bool,
}

impl Policy {
    /// A policy with one master key and the RFC 3711 §8.2 defaults.
    pub fn new(suite: Suite, key: MasterKey) -> Self {
        Self {
            suite,
            keys: vec![key],
            kdr: 0,
            replay_window: DEFAULT_REPLAY_WINDOW,
            unencrypted_srtp: false,
            unencrypted_srtcp: false,
            unauthenticated_srtp: false,
            max_streams: 1024,
            allow_repeat_tx: false,
        }
    }

    /// Checks everything that can be checked before the first packet.
    pub(crate) fn validate(&self) -> Result<(), Error> {
        let first = self.keys.first().ok_or(Error::Policy("no master key"))?;
        let mki_len = first.mki.len();
        for (i, k) in self.keys.iter().enumerate() {
            if k.key.len() != self.suite.master_key_len() {
                return Err(Error::Policy("master key length does not match the suite"));
            }
            if k.salt.len() != self.suite.master_salt_len() {
                return Err(Error::Policy("master salt length does not match the suite"));
            }
            if k.mki.len() != mki_len {
                return Err(Error::Policy("all MKIs of a session must have the same length"));
            }
            if self.keys.iter().take(i).any(|other| other.mki == k.mki) {
                return Err(Error::Policy("two master keys share an MKI"));
            }
        }
        if self.keys.len() > 1 && mki_len == 0 {
            return Err(Error::Policy("several master keys need an MKI"));
        }
        if mki_len > MAX_MKI_LEN {
            return Err(Error::Policy("MKI longer than 128 octets"));
        }
        if self.kdr != 0 && (!self.kdr.is_power_of_two() || self.kdr > 1 << 24) {
            return Err(Error::Policy("key derivation rate must be 0 or a power of two up to 2^24"));
        }
        if !(MIN_REPLAY_WINDOW..=MAX_REPLAY_WINDOW).contains(&self.replay_window) {
            return Err(Error::Policy("replay window must be 64..=32768 packets"));
        }
        if self.suite.is_aead() && (self.unencrypted_srtp || self.unauthenticated_srtp) {
            return Err(Error::Policy("RFC 7714 §14: AEAD suites always encrypt and authenticate SRTP"));
        }
        if self.max_streams == 0 {
            return Err(Error::Policy("max_streams must be at least 1"));
        }
        Ok(())
    }
}
