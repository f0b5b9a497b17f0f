//! GBA_U, the UICC-based variant of GBA (TS 33.220 clause 5, Annex G): the subscriber's UICC
//! type, the authentication-vector change the BSF makes for it, and a simulated UICC.
//!
//! What the text says (read for this module, see docs/gba.md):
//! - §5.1: CK and IK of a GBA_U run never leave the UICC; the UICC tells GBA_U authentication
//!   requests from other 3G ones; the BSF picks GBA_U or GBA_ME from the UICC capabilities in
//!   the GBA user security settings; the Ub messages are identical for both procedures, only
//!   the local handling of keys and authentication vectors differs.
//! - §5.3.2 step 4 (with TS 33.223 §3.1, "GBA_U relies on AUTN*"): the BSF sends
//!   AUTN* = SQN ⊕ AK || AMF || MAC*, MAC* = MAC ⊕ Trunc(SHA-1(IK)), Trunc = the first 64
//!   bits; the UICC recomputes MAC = MAC* ⊕ Trunc(SHA-1(IK)) before the TS 33.102 check. See
//!   [`mask_mac`] (the exact formula is from memory: the clause text was not reachable here).
//! - G.1: the ME gives RAND and AUTN* to the UICC, which derives and keeps Ks = CK || IK and
//!   RAND and answers RES only; the ME then stores the B-TID and key lifetime in the UICC; a
//!   new run replaces Ks, B-TID, lifetime and RAND.
//! - G.2: the ME gives NAF_Id and IMPI; the UICC derives Ks_ext_NAF and Ks_int_NAF (B.3) from
//!   the stored Ks and RAND, returns Ks_ext_NAF and keeps Ks_int_NAF with the B-TID and NAF_Id;
//!   when out of room it overwrites the least recently used or derived entry; without Ks it
//!   answers an error.

use core::fmt;

use sha1::{Digest, Sha1};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::btid::Btid;
use crate::kdf::{Ks, KsNaf, NafId};
use crate::milenage::{AutnCheck, Milenage, Sqn};
use crate::ue::sqn_fresh;
use crate::GbaError;

/// The GBA capability of a subscriber's UICC, as the GUSS says (TS 33.220 §5.1: the BSF
/// decides between GBA_ME and GBA_U from it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UiccType {
    /// No GBA_U support: GBA_ME bootstrapping (TS 33.220 clause 4).
    #[default]
    Gba,
    /// GBA_U aware UICC: GBA_U bootstrapping (TS 33.220 clause 5).
    GbaU,
}

impl UiccType {
    /// The GUSS spelling: `GBA` or `GBA_U`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "GBA" => Some(Self::Gba),
            "GBA_U" => Some(Self::GbaU),
            _ => None,
        }
    }

    /// `GBA` or `GBA_U`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gba => "GBA",
            Self::GbaU => "GBA_U",
        }
    }
}

/// AUTN with its MAC field xored with Trunc(SHA-1(IK)) (the first 8 octets of the digest):
/// the BSF turns AUTN into AUTN* with it and the UICC turns AUTN* back into AUTN with it
/// (TS 33.220 §5.3.2 step 4; xor makes the one function serve both directions).
pub fn mask_mac(autn: &[u8; 16], ik: &[u8; 16]) -> [u8; 16] {
    let mut out = *autn;
    let h = Sha1::digest(ik);
    out.iter_mut().skip(8).zip(h.iter()).for_each(|(o, m)| *o ^= m);
    out
}

/// The UICC's answer to a GBA bootstrapping AUTHENTICATE (TS 33.220 G.1).
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub enum UiccAnswer {
    /// AUTN* verified, SQN fresh: RES for the ME (Ks stays inside).
    Res([u8; 8]),
    /// SQN not fresh: AUTS (TS 33.102 §6.3.3) for the resynchronisation request.
    SyncFailure([u8; 14]),
}

/// The GBA_U bootstrap the UICC holds (TS 33.220 G.1).
#[derive(Zeroize, ZeroizeOnDrop)]
struct Bootstrapped {
    ks: Ks,
    rand: [u8; 16],
    #[zeroize(skip)]
    btid: Option<Btid>,
    lifetime: Option<u64>,
}

/// One stored Ks_int_NAF with its B-TID and NAF_Id (TS 33.220 G.2).
#[derive(Zeroize, ZeroizeOnDrop)]
struct NafEntry {
    #[zeroize(skip)]
    naf_id: NafId,
    #[zeroize(skip)]
    btid: Btid,
    key: KsNaf,
}

/// A simulated GBA_U aware UICC (USIM application with MILENAGE). Secrets are zeroized on
/// drop; neither K, CK, IK, Ks nor Ks_int_NAF is returned to the ME.
pub struct Uicc {
    usim: Milenage,
    sqn_ms: Sqn,
    boot: Option<Bootstrapped>,
    /// Ks_int_NAF entries, most recently used or derived first (G.2).
    naf_keys: Vec<NafEntry>,
}

impl fmt::Debug for Uicc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Uicc").field("sqn_ms", &self.sqn_ms).finish_non_exhaustive()
    }
}

impl Uicc {
    /// Ks_int_NAF records the simulated UICC has room for (G.2 overwrite rule beyond it).
    pub const NAF_KEY_SLOTS: usize = 8;

    /// A UICC with these subscriber secrets whose USIM has accepted SQNs up to `sqn_ms`.
    pub fn new(usim: Milenage, sqn_ms: Sqn) -> Self {
        Self { usim, sqn_ms, boot: None, naf_keys: Vec::new() }
    }

    /// Highest SQN accepted (the USIM's SQN_MS; persist it between runs).
    pub fn sqn_ms(&self) -> Sqn {
        self.sqn_ms
    }

    /// AUTHENTICATE in GBA bootstrapping mode (TS 33.220 G.1, §5.3.2): undo the BSF's MAC
    /// change, verify AUTN and SQN as any USIM does (TS 33.102 §6.3.3, the same freshness rule
    /// as the GBA_ME USIM), keep Ks = CK || IK and RAND (replacing an earlier bootstrap) and
    /// answer RES. A wrong MAC (wrong K, or a GBA_ME vector) is [`GbaError::MacFailure`].
    pub fn authenticate_gba(&mut self, rand: &[u8; 16], autn_star: &[u8; 16]) -> Result<UiccAnswer, GbaError> {
        let autn = mask_mac(autn_star, &self.usim.f2345(rand).ik);
        match self.usim.check_autn(rand, &autn, self.sqn_ms, sqn_fresh(self.sqn_ms))? {
            AutnCheck::Ok { keys, sqn } => {
                self.sqn_ms = sqn;
                self.boot = Some(Bootstrapped {
                    ks: Ks::from_ck_ik(&keys.ck, &keys.ik),
                    rand: *rand,
                    btid: None,
                    lifetime: None,
                });
                Ok(UiccAnswer::Res(keys.res))
            }
            AutnCheck::SyncFailure { auts } => Ok(UiccAnswer::SyncFailure(auts)),
        }
    }

    /// The ME stores the B-TID and key lifetime of the current Ks (TS 33.220 G.1). The B-TID
    /// must be the one of the stored RAND.
    pub fn store_bootstrap_params(&mut self, btid: Btid, lifetime: u64) -> Result<(), GbaError> {
        let boot = self.boot.as_mut().ok_or(GbaError::NoBootstrap)?;
        if btid.rand != boot.rand {
            return Err(GbaError::InvalidBtid("local part is not base64 of the RAND the UICC holds"));
        }
        boot.btid = Some(btid);
        boot.lifetime = Some(lifetime);
        Ok(())
    }

    /// RAND of the current bootstrap (readable by the ME, G.1).
    pub fn rand(&self) -> Option<[u8; 16]> {
        self.boot.as_ref().map(|b| b.rand)
    }

    /// B-TID of the current bootstrap (readable by the ME, G.1).
    pub fn btid(&self) -> Option<&Btid> {
        self.boot.as_ref().and_then(|b| b.btid.as_ref())
    }

    /// Key lifetime (expiry, Unix seconds) of the current bootstrap (readable by the ME, G.1).
    pub fn key_lifetime(&self) -> Option<u64> {
        self.boot.as_ref().and_then(|b| b.lifetime)
    }

    /// GBA NAF derivation (TS 33.220 G.2): derive Ks_ext_NAF and Ks_int_NAF (B.3) from the
    /// stored Ks and RAND, keep Ks_int_NAF with the B-TID and NAF_Id, return Ks_ext_NAF.
    pub fn naf_derivation(&mut self, naf_id: &NafId, impi: &str) -> Result<KsNaf, GbaError> {
        let boot = self.boot.as_ref().ok_or(GbaError::NoBootstrap)?;
        let btid = boot.btid.clone().ok_or(GbaError::NoBootstrap)?;
        let ext = boot.ks.ks_naf(&boot.rand, impi, naf_id)?;
        let key = boot.ks.ks_int_naf(&boot.rand, impi, naf_id)?;
        self.naf_keys.retain(|e| e.naf_id != *naf_id);
        self.naf_keys.insert(0, NafEntry { naf_id: naf_id.clone(), btid, key });
        self.naf_keys.truncate(Self::NAF_KEY_SLOTS);
        Ok(ext)
    }

    /// UICC-application API (an application on the card, e.g. an MBMS or GBA-aware applet —
    /// never the ME): Ks_int_NAF stored for `naf_id` and its B-TID, which becomes the most
    /// recently used entry (G.2).
    pub fn application_ks_int_naf(&mut self, naf_id: &NafId) -> Option<(&Btid, &KsNaf)> {
        let pos = self.naf_keys.iter().position(|e| e.naf_id == *naf_id)?;
        let entry = self.naf_keys.remove(pos);
        self.naf_keys.insert(0, entry);
        self.naf_keys.first().map(|e| (&e.btid, &e.key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_mac_touches_only_the_mac_and_is_an_involution() {
        let autn: [u8; 16] = core::array::from_fn(|i| i as u8);
        let ik = [7u8; 16];
        let star = mask_mac(&autn, &ik);
        assert_eq!(star[..8], autn[..8], "SQN xor AK and AMF unchanged");
        assert_ne!(star[8..], autn[8..]);
        assert_eq!(mask_mac(&star, &ik), autn);
    }

    #[test]
    fn uicc_type_spelling() {
        for t in [UiccType::Gba, UiccType::GbaU] {
            assert_eq!(UiccType::parse(t.as_str()), Some(t));
        }
        assert_eq!(UiccType::parse("gba_u"), None);
    }
}
