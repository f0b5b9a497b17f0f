//! The UE side of Ub bootstrapping (TS 33.220 §4.5.2, TS 24.109 §4.2-§4.5), sans-IO: the
//! driver sends [`UeBootstrap::initial_authorization`], feeds the 401's `WWW-Authenticate`
//! to [`UeBootstrap::on_challenge`], sends the returned `Authorization`, and on 200 calls
//! [`UeBootstrap::on_success`] to get a [`Bootstrap`] (B-TID, Ks, expiry).
//!
//! GBA_ME ([`UeBootstrap::new`], a USIM that hands CK and IK to the ME, TS 33.220 clause 4)
//! and GBA_U ([`UeBootstrap::with_uicc`], a [`Uicc`] that keeps them, clause 5 and Annex G.1)
//! share the Ub exchange: the messages are identical (§5.1); only the card step and what the
//! ME keeps at the end ([`UeBootstrap::on_success`] vs [`UeBootstrap::on_success_gba_u`]) differ.
//!
//! USIM SQN freshness: this simulator keeps the highest accepted SQN (`sqn_ms`) and accepts
//! SQN if `sqn_ms < SQN <= sqn_ms + DELTA` — the "simple monotone" alternative of TS 33.102
//! Annex C (no IND array), matching the BSF's per-subscriber monotone SQN.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::bootstrapping_info::BootstrappingInfo;
use crate::btid::Btid;
use crate::digest::{self, AkaNonce, AuthenticationInfo, Challenge, Credentials, Qop};
use crate::kdf::{Ks, KsNaf, NafId};
use crate::milenage::{AutnCheck, Milenage, Sqn};
use crate::uicc::{Uicc, UiccAnswer};
use crate::GbaError;

/// Largest forward jump of SQN the UE accepts (TS 33.102 C.2.1 suggests Δ = 2^28).
pub const DELTA: Sqn = 1 << 28;

/// The simulated USIM's freshness rule for a network SQN, given SQN_MS (see the module doc).
pub(crate) fn sqn_fresh(sqn_ms: Sqn) -> impl FnOnce(Sqn) -> bool {
    move |sqn| sqn > sqn_ms && sqn - sqn_ms <= DELTA
}

/// The Ub request URI (TS 24.109 A.3: "/" by default).
pub const UB_URI: &str = "/";

/// Product token for GBA_ME in `User-Agent` (TS 24.109 §4.2).
pub const USER_AGENT: &str = "mediasec-ue 3gpp-gba";

/// A UE bootstrapping run (one IMPI, one USIM or GBA_U UICC).
pub struct UeBootstrap {
    impi: String,
    realm: String,
    card: Card,
    pending: Option<Pending>,
}

/// The card the ME drives.
enum Card {
    /// GBA_ME: a USIM that returns RES, CK and IK to the ME.
    Usim { usim: Milenage, sqn_ms: Sqn },
    /// GBA_U: a UICC that returns RES only and keeps Ks.
    Uicc(Uicc),
}

impl Card {
    fn mode(&self) -> &'static str {
        match self {
            Self::Usim { .. } => "GBA_ME",
            Self::Uicc(_) => "GBA_U",
        }
    }
}

#[derive(Zeroize, ZeroizeOnDrop)]
struct Pending {
    rand: [u8; 16],
    res: [u8; 8],
    /// CK and IK as the USIM gave them (GBA_ME); zero on a GBA_U run, where the ME never sees them.
    ck: [u8; 16],
    ik: [u8; 16],
    #[zeroize(skip)]
    creds: Credentials,
}

/// What the card answered to (RAND, AUTN). Zeroized on drop.
#[derive(Zeroize, ZeroizeOnDrop)]
enum CardAnswer {
    Keys { res: [u8; 8], ck: [u8; 16], ik: [u8; 16] },
    Sync([u8; 14]),
}

/// What the ME keeps after a GBA_U run (TS 33.220 G.1): the B-TID and key lifetime, also
/// stored in the UICC, which holds Ks. NAF keys come from [`Uicc::naf_derivation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GbaUBootstrap {
    /// B-TID.
    pub btid: Btid,
    /// IMPI.
    pub impi: String,
    /// Key expiry (Unix seconds), from the BSF's `lifetime`.
    pub expiry: u64,
}

/// What to send after a challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UeAnswer {
    /// AUTN accepted: send this `Authorization` (RES-based digest); expect 200.
    Response(String),
    /// SQN out of range: send this `Authorization` with `auts`; expect a fresh 401.
    Resync(String),
}

/// A completed bootstrap: what the UE keeps (TS 33.220 §4.5.2 step 6). Zeroized on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Bootstrap {
    /// B-TID.
    #[zeroize(skip)]
    pub btid: Btid,
    /// Ks = CK || IK.
    pub ks: Ks,
    /// IMPI.
    pub impi: String,
    /// Key expiry (Unix seconds), from the BSF's `lifetime`.
    pub expiry: u64,
}

impl Bootstrap {
    /// RAND of the run (also the B-TID's local part).
    pub fn rand(&self) -> [u8; 16] {
        self.btid.rand
    }

    /// Whether Ks may still be used at `now`.
    pub fn is_valid(&self, now: u64) -> bool {
        now < self.expiry
    }

    /// Ks_NAF for a NAF (TS 33.220 B.3).
    pub fn ks_naf(&self, naf: &NafId) -> Result<KsNaf, GbaError> {
        self.ks.ks_naf(&self.btid.rand, &self.impi, naf)
    }
}

impl UeBootstrap {
    /// Start a GBA_ME run. `realm` is the BSF FQDN; `sqn_ms` the highest SQN this USIM accepted.
    pub fn new(impi: impl Into<String>, realm: impl Into<String>, usim: Milenage, sqn_ms: Sqn) -> Self {
        Self { impi: impi.into(), realm: realm.into(), card: Card::Usim { usim, sqn_ms }, pending: None }
    }

    /// Start a GBA_U run (TS 33.220 §5.3.2, G.1) with this UICC.
    pub fn with_uicc(impi: impl Into<String>, realm: impl Into<String>, uicc: Uicc) -> Self {
        Self { impi: impi.into(), realm: realm.into(), card: Card::Uicc(uicc), pending: None }
    }

    /// Highest SQN accepted so far (persist it between runs like a USIM would).
    pub fn sqn_ms(&self) -> Sqn {
        match &self.card {
            Card::Usim { sqn_ms, .. } => *sqn_ms,
            Card::Uicc(u) => u.sqn_ms(),
        }
    }

    /// The UICC of a GBA_U run (`None` for GBA_ME), e.g. for NAF derivation after the run.
    pub fn into_uicc(self) -> Option<Uicc> {
        match self.card {
            Card::Uicc(u) => Some(u),
            Card::Usim { .. } => None,
        }
    }

    /// The card step for (RAND, AUTN): the USIM (GBA_ME) or the UICC in GBA bootstrapping mode.
    fn card_authenticate(&mut self, rand: &[u8; 16], autn: &[u8; 16]) -> Result<CardAnswer, GbaError> {
        match &mut self.card {
            Card::Usim { usim, sqn_ms } => match usim.check_autn(rand, autn, *sqn_ms, sqn_fresh(*sqn_ms))? {
                AutnCheck::Ok { keys, sqn } => {
                    *sqn_ms = sqn;
                    Ok(CardAnswer::Keys { res: keys.res, ck: keys.ck, ik: keys.ik })
                }
                AutnCheck::SyncFailure { auts } => Ok(CardAnswer::Sync(auts)),
            },
            Card::Uicc(u) => match u.authenticate_gba(rand, autn)? {
                UiccAnswer::Res(res) => Ok(CardAnswer::Keys { res, ck: [0; 16], ik: [0; 16] }),
                UiccAnswer::SyncFailure(auts) => Ok(CardAnswer::Sync(auts)),
            },
        }
    }

    /// The initial `Authorization` (TS 24.109 §4.2, A.3 table A.3-1).
    pub fn initial_authorization(&self) -> String {
        Credentials::initial(&self.impi, &self.realm, UB_URI).to_header()
    }

    /// Answer a 401. `method`/`body` are those of the request about to be sent;
    /// `cnonce` is fresh client randomness (RFC 2617 §3.2.2).
    pub fn on_challenge(
        &mut self,
        www_authenticate: &str,
        method: &str,
        body: &[u8],
        cnonce: &[u8; 16],
    ) -> Result<UeAnswer, GbaError> {
        let ch = Challenge::parse(www_authenticate)?;
        if ch.realm != self.realm {
            return Err(GbaError::Unsupported { param: "realm", value: ch.realm });
        }
        let qop = if ch.qop.contains(&Qop::AuthInt) {
            Qop::AuthInt
        } else if ch.qop.contains(&Qop::Auth) {
            Qop::Auth
        } else {
            return Err(GbaError::MissingParam("qop"));
        };
        let nonce = AkaNonce::decode(&ch.nonce)?;
        let check = self.card_authenticate(&nonce.rand, &nonce.autn)?;
        let mut creds = Credentials {
            username: self.impi.clone(),
            realm: ch.realm,
            nonce: ch.nonce,
            uri: UB_URI.into(),
            response: String::new(),
            algorithm: Some(digest::ALGORITHM.into()),
            qop: Some(qop),
            nc: Some("00000001".into()),
            cnonce: Some(hex::encode(cnonce)),
            opaque: ch.opaque,
            auts: None,
        };
        match check {
            CardAnswer::Keys { res, ck, ik } => {
                creds.response = digest::request_digest(&res, &creds.digest_input(method, body));
                let header = creds.to_header();
                self.pending = Some(Pending { rand: nonce.rand, res, ck, ik, creds });
                Ok(UeAnswer::Response(header))
            }
            CardAnswer::Sync(auts) => {
                // RFC 3310 §3.4: auts with the response computed over an empty password.
                creds.auts = Some(STANDARD.encode(auts));
                creds.response = digest::request_digest(b"", &creds.digest_input(method, body));
                self.pending = None;
                Ok(UeAnswer::Resync(creds.to_header()))
            }
        }
    }

    /// Handle the 200 of a GBA_ME run: verify `Authentication-Info` rspauth over the body
    /// (RFC 2617 §3.2.3) before trusting it, then parse the B-TID and lifetime.
    pub fn on_success(&mut self, authentication_info: &str, body: &[u8]) -> Result<Bootstrap, GbaError> {
        if !matches!(self.card, Card::Usim { .. }) {
            return Err(GbaError::WrongGbaMode { run: self.card.mode(), called: "GBA_ME" });
        }
        let (p, btid, expiry) = self.accept(authentication_info, body)?;
        Ok(Bootstrap { btid, ks: Ks::from_ck_ik(&p.ck, &p.ik), impi: self.impi.clone(), expiry })
    }

    /// Handle the 200 of a GBA_U run: checks as [`Self::on_success`], then the ME stores the
    /// B-TID and key lifetime in the UICC (TS 33.220 G.1).
    pub fn on_success_gba_u(&mut self, authentication_info: &str, body: &[u8]) -> Result<GbaUBootstrap, GbaError> {
        if !matches!(self.card, Card::Uicc(_)) {
            return Err(GbaError::WrongGbaMode { run: self.card.mode(), called: "GBA_U" });
        }
        let (_, btid, expiry) = self.accept(authentication_info, body)?;
        if let Card::Uicc(u) = &mut self.card {
            u.store_bootstrap_params(btid.clone(), expiry)?;
        }
        Ok(GbaUBootstrap { btid, impi: self.impi.clone(), expiry })
    }

    /// rspauth, BootstrappingInfo and B-TID checks shared by both modes.
    fn accept(&mut self, authentication_info: &str, body: &[u8]) -> Result<(Pending, Btid, u64), GbaError> {
        let p = self.pending.take().ok_or(GbaError::MissingParam("challenge (no response was sent)"))?;
        let info = AuthenticationInfo::parse(authentication_info)?;
        let expected = digest::request_digest(&p.res, &p.creds.rspauth_input(body));
        if !bool::from(expected.as_bytes().ct_eq(info.rspauth.as_bytes())) {
            return Err(GbaError::RspauthMismatch);
        }
        let text = core::str::from_utf8(body).map_err(|e| GbaError::Parse {
            what: "BootstrappingInfo",
            offset: e.valid_up_to(),
            reason: "not UTF-8",
        })?;
        let bi = BootstrappingInfo::parse(text)?;
        let btid = Btid::parse(&bi.btid)?;
        if btid.rand != p.rand {
            return Err(GbaError::InvalidBtid("local part is not base64(RAND) of this run"));
        }
        Ok((p, btid, bi.lifetime))
    }
}
