//! Lawful interception at the KMS, which can open every ticket it issued (TR 33.828: "LI
//! must be possible without giving the LEA more than the warrant", i.e. per-target keys).
//! The interfaces are ours *(3GPP leaves X1/X2 to TS 33.107/33.108 and operators;
//! docs/li.md, docs/openapi/kms-li.yaml)*:
//!
//! - **warrants** (X1-like): `{id, target, not_before, not_after}`, one exact KMS UID per
//!   warrant, kept in the store's `li_warrants` table; LI actions go to the `li_audit` table,
//!   never to the admin audit log. Both tables hold their rows encrypted under the KMS master
//!   key (AES-256-GCM, AAD = table and row, [`crate::persist::Persist::seal`]): whoever reads
//!   the store (a database administrator, a backup) does not learn who is a target;
//! - **key release** (X2-like): from an intercepted TRANSFER_INIT (and TRANSFER_RESP when the
//!   ticket forks), the KMS opens the ticket with its ring and derives the call's SRTP master
//!   keys exactly as the UEs do ([`crate::ue`]), only for a call of the warrant's target
//!   within the warrant's window. From an intercepted MIKEY-SAKKE I_MESSAGE (RFC 6509), the
//!   KMS verifies its ECCSI signature under its KPAK, derives the responder's RSK from its
//!   master secret z for the message's key period, decapsulates the SSV and derives the keys
//!   exactly as the callee does ([`Kms::li_release_sakke`]): LI without a man in the middle.
//!
//! Nothing here touches Ua/Zk: a target cannot tell (no state, payload or code path of Ticket
//! Request / Resolve depends on warrants).

use mediasec_kms_store::Table;
use mediasec_mikey::eccsi::Kpak;
use mediasec_mikey::forking;
use mediasec_mikey::{mikey_sakke, sakke};
use mediasec_mikey::payload::{BaseTicketData, Ticket, TicketFlags};
use mediasec_mikey::registry::{DataType, IdRole};
use mediasec_mikey::srtp_policy::SrtpPolicy;
use mediasec_mikey::ticket as tk;
use mediasec_mikey::{Decoded, Payload};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error::KmsError;
use crate::identity::KmsUid;
use crate::kms::{Kms, key_id_of, rand_payload};
use crate::persist::Persist;
use crate::tp_data::{TpData, unix_of};
use crate::ue::{self, Media, PendingTransfer};
use crate::zn::NafKey;

/// Longest warrant id.
pub const MAX_ID_LEN: usize = 64;

/// A warrant: keys of calls of `target` (initiator or answering responder) whose ticket
/// validity overlaps `[not_before, not_after]` may be released while the warrant is active.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Warrant {
    /// Operator-chosen id: 1 to 64 characters of `A-Z a-z 0-9 . _ -`.
    pub id: String,
    /// The target: one exact KMS UID (no group identity).
    pub target: KmsUid,
    /// Start of the window, UNIX seconds.
    pub not_before: u64,
    /// End of the window (inclusive), UNIX seconds.
    pub not_after: u64,
}

/// Why a key release was refused (HTTP 403).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// No warrant with this id.
    #[error("no such warrant")]
    NoSuchWarrant,
    /// The warrant's window ended.
    #[error("warrant expired")]
    WarrantExpired,
    /// The warrant's window has not begun.
    #[error("warrant not yet active")]
    WarrantNotYetActive,
    /// The target is neither the ticket's initiator nor the answering responder.
    #[error("target not a party of this call")]
    NotAParty,
    /// The ticket's validity, or the call's TRANSFER_INIT time, is outside the window.
    #[error("outside the warrant window")]
    OutsideWindow,
    /// Another KMS issued the ticket (its operator does the LI), or this ring cannot open it.
    #[error("ticket not issued by this KMS ({0})")]
    ForeignTicket(String),
    /// A UE-made (mode 3) ticket this KMS cannot open: its keys are under the creator's
    /// Ks_NAF, which the BSF gives (Zn) only while the creator's bootstrap lives, and only
    /// for a creator whose policy allows mode 3 (the reason says which check failed).
    #[error("UE-made (mode 3) ticket: {0}")]
    UeMadeTicket(String),
    /// A high-security call (ECCSI-signed MIKEY-DH, docs/high-security.md): there is no
    /// ticket; the keys come from an ephemeral Diffie-Hellman exchange between the UEs that
    /// the KMS never sees, so it has none to release.
    #[error("high-security call (MIKEY-DH): no ticket, the KMS holds no key of it")]
    HighSecurityCall,
    /// A MIKEY-SAKKE call to a user of another KMS community (IDRkmsr, RFC 6509 §4.1): the
    /// SSV is encapsulated under that KMS's Z, whose master secret z this KMS does not hold,
    /// so it cannot derive the responder's RSK. That community's operator can release.
    #[error("MIKEY-SAKKE I_MESSAGE encapsulated under the KMS community {0}: this KMS does not hold its z (that KMS can release)")]
    OtherCommunity(String),
    /// A MIKEY-SAKKE call signed in a KMS community (IDRkmsi) this KMS holds no KMS
    /// certificate of, so the signature cannot be verified.
    #[error("MIKEY-SAKKE I_MESSAGE signed in the KMS community {0}, whose KMS certificate this KMS does not hold")]
    UnknownCommunity(String),
    /// A MIKEY-SAKKE call signed in an external KMS community (IDRkmsi) whose initiator
    /// (IDRi) is not a user of the domains its KMS certificate lists
    /// ([`crate::community::Community::vouches_for`]): that community's KPAK authenticates
    /// only its own users, so the message is no call of the identity it names. The reason
    /// names the community only (it is logged).
    #[error("MIKEY-SAKKE I_MESSAGE signed in the KMS community {0} for an initiator of a domain it does not serve")]
    InitiatorOutsideCommunity(String),
}

impl Refusal {
    /// The refusal without its details, for the KMS log: admins read it and must not learn
    /// who is intercepted, and some details name a party of the call (a UE-made ticket's
    /// creator). The precise reason goes to the LI trail and to the LEA.
    pub fn class(&self) -> &'static str {
        match self {
            Self::NoSuchWarrant => "no such warrant",
            Self::WarrantExpired => "warrant expired",
            Self::WarrantNotYetActive => "warrant not yet active",
            Self::NotAParty => "target not a party of this call",
            Self::OutsideWindow => "outside the warrant window",
            Self::ForeignTicket(_) => "ticket not issued by this KMS",
            Self::UeMadeTicket(_) => "UE-made (mode 3) ticket",
            Self::HighSecurityCall => "high-security call (MIKEY-DH)",
            Self::OtherCommunity(_) => "MIKEY-SAKKE I_MESSAGE of another KMS community",
            Self::UnknownCommunity(_) => "MIKEY-SAKKE I_MESSAGE of an unknown KMS community",
            Self::InitiatorOutsideCommunity(_) => "MIKEY-SAKKE initiator outside its signing KMS community",
        }
    }
}

impl From<Refusal> for KmsError {
    fn from(r: Refusal) -> Self {
        Self::LiRefused(r)
    }
}

fn input(what: &str, e: impl std::fmt::Display) -> KmsError {
    KmsError::LiInput(format!("{what}: {e}"))
}

impl Warrant {
    /// Checks the id and window are well formed (the target is a [`KmsUid`]: exact, domain in
    /// lower case, checked when parsed or deserialised).
    pub fn validate(&self) -> Result<(), KmsError> {
        let id_ok = !self.id.is_empty() && self.id.len() <= MAX_ID_LEN && self.id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !id_ok {
            return Err(input("warrant id", format!("must be 1 to {MAX_ID_LEN} characters of A-Z a-z 0-9 . _ -")));
        }
        if self.not_before > self.not_after {
            return Err(input("warrant window", "not_before is after not_after"));
        }
        Ok(())
    }

    /// Active at `now` (UNIX seconds).
    pub fn check_active(&self, now: u64) -> Result<(), Refusal> {
        if now > self.not_after {
            Err(Refusal::WarrantExpired)
        } else if now < self.not_before {
            Err(Refusal::WarrantNotYetActive)
        } else {
            Ok(())
        }
    }

    fn covers(&self, t: u64) -> bool {
        (self.not_before..=self.not_after).contains(&t)
    }

    /// What the LI audit trail says of it: `target T, window A..=B`.
    fn audit_detail(&self) -> String {
        format!("target {}, window {}..={}", self.target, self.not_before, self.not_after)
    }
}

/// Keys released for one call.
pub struct Release {
    /// The ticket's initiator (TP Data IDRi).
    pub initiator: KmsUid,
    /// The answering responder (TRANSFER_RESP IDRr, else the TRANSFER_INIT's IDRr).
    pub responder: KmsUid,
    /// Whether a TRANSFER_RESP was given (else CS 2's SSRC is unknown, 0).
    pub answered: bool,
    /// CS 1 (initiator's stream) and CS 2 (responder's stream).
    pub media: Media,
    /// The call's time: T of the TRANSFER_INIT or I_MESSAGE, UNIX seconds.
    pub call_time: u64,
    /// The call's CSB ID (header of the TRANSFER_INIT or I_MESSAGE).
    pub csb_id: u32,
}

#[derive(Serialize)]
struct SessionJson<'a> {
    cs_id: u8,
    stream: &'static str,
    ssrc: Option<u32>,
    roc: u32,
    suite: &'static str,
    mki: String,
    master_key: &'a str,
    master_salt: &'a str,
}

#[derive(Serialize)]
struct ReleaseJson<'a> {
    warrant: &'a str,
    initiator: &'a str,
    responder: &'a str,
    crypto_sessions: [SessionJson<'a>; 2],
}

fn session<'a>(cs_id: u8, stream: &'static str, p: &SrtpPolicy, ssrc: Option<u32>, key: &'a str, salt: &'a str) -> SessionJson<'a> {
    SessionJson { cs_id, stream, ssrc, roc: p.roc, suite: p.suite, mki: hex::encode(&p.mki), master_key: key, master_salt: salt }
}

impl Release {
    /// What the LI audit trail says of it (never key material): which call's keys were
    /// released — `initiator I, responder R, call at T, CSB ID X` — so that each release can
    /// be checked against its warrant.
    pub fn audit_detail(&self) -> String {
        format!("initiator {}, responder {}, call at {}, CSB ID {:08x}", self.initiator, self.responder, self.call_time, self.csb_id)
    }

    /// The JSON body of the key release (docs/openapi/kms-li.yaml); the hex copies of the
    /// keys are zeroized once serialised.
    pub fn to_json(&self, warrant: &str) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        let hex_of = |b: &[u8]| Zeroizing::new(hex::encode(b));
        let (ik, is) = (hex_of(&self.media.initiator_stream.master_key), hex_of(&self.media.initiator_stream.master_salt));
        let (rk, rs) = (hex_of(&self.media.responder_stream.master_key), hex_of(&self.media.responder_stream.master_salt));
        let (i, r) = (&self.media.initiator_stream, &self.media.responder_stream);
        let body = ReleaseJson {
            warrant,
            initiator: self.initiator.as_str(),
            responder: self.responder.as_str(),
            crypto_sessions: [session(1, "initiator", i, Some(i.ssrc), &ik, &is), session(2, "responder", r, self.answered.then_some(r.ssrc), &rk, &rs)],
        };
        serde_json::to_vec(&body).map(Zeroizing::new).map_err(|e| KmsError::Config(format!("LI release JSON: {e}")))
    }
}

/// The ticket's issue time (T of its Ticket Data), UNIX seconds.
fn issued_at(ticket: &Ticket) -> Option<u64> {
    BaseTicketData::decode(&ticket.ticket_data, 0).ok()?.payloads.iter().find_map(|p| if let Payload::T(t) = p { unix_of(t) } else { None })
}

impl Kms {
    /// LI key release (X2-like, docs/li.md) under `warrant` at `now` (UNIX seconds): opens
    /// the ticket of `transfer_init` with the ring (no responder authentication, no per-user
    /// state), verifies the TRANSFER_INIT (and `transfer_resp`, required when the ticket
    /// forks) with the ticket's keys as the UEs do, and derives the call's SRTP policies
    /// with the UEs' code ([`crate::ue`]). Released only if the warrant is active, its target
    /// is the ticket's initiator or the answering responder, and both the ticket's validity
    /// and the call's TRANSFER_INIT time fall within the window.
    ///
    /// A UE-made (mode 3) ticket of this KMS's domain opens with `creator_key`, the Zn answer
    /// for the B-TID [`Kms::li_ue_made_btid`] names (the caller looks it up: this core does no
    /// I/O), under the same checks as a resolution (creator's policy allows mode 3, creator an
    /// identity of that bootstrap); without it the release is refused
    /// ([`Refusal::UeMadeTicket`]): once the bootstrap has expired, no key of the call exists
    /// anywhere in the network.
    pub fn li_release(&self, warrant: &Warrant, transfer_init: LiTransferInit<'_>, transfer_resp: Option<&[u8]>, now: u64, creator_key: Option<&NafKey>) -> Result<Release, KmsError> {
        warrant.check_active(now)?;
        let LiTransferInit { bytes: transfer_init, read, .. } = transfer_init;
        let (ticket, data) = read?;
        if data.kms.as_deref() != Some(self.config().fqdn.as_str()) {
            return Err(Refusal::ForeignTicket(format!("issued by {}", data.kms.as_deref().unwrap_or("no KMS"))).into());
        }
        let content = if ticket.policy.flags.contains(TicketFlags::D) {
            self.open_ring(&ticket).map_err(|e| Refusal::ForeignTicket(e.to_string()))?
        } else {
            let ue_made = |e: KmsError| Refusal::UeMadeTicket(e.to_string());
            let (creator, _) = self.ue_made_checks(&data, now).map_err(ue_made)?;
            self.open_ue_made(&ticket, &creator, creator_key).map_err(ue_made)?
        };
        let forks = forking::is_forking(&ticket);
        let rand = rand_payload(&ticket)?;
        let keys = forking::request_resp_keys(&content, &rand, &key_id_of(&ticket)?.to_be_bytes(), forks)?;
        let (mpki, mpkr, tgk) = ue::split_keys(&keys, forks)?;
        let (ti, randri) = ue::verified_transfer_init(&mpki, transfer_init).map_err(|e| input("transfer_init", e))?;
        let initiator = data.initiator.clone().ok_or_else(|| input("ticket TP Data", "no initiator (IDRi)"))?;
        let (responder, media) = match transfer_resp {
            Some(tr) => {
                let p = PendingTransfer::rebuilt(transfer_init, randri, mpki, mpkr, tgk, data.recipients.clone());
                let (_, who, media) = ue::verified_transfer_resp(&p, tr).map_err(|e| input("transfer_resp", e))?;
                (who, media)
            }
            None if forks => return Err(input("transfer_resp", "required: the ticket forks keys per responder")),
            None => {
                let named = String::from_utf8(tk::id_of(&ti, IdRole::RESPONDER)).map_err(|_| input("transfer_init", "IDRr is not UTF-8"))?;
                let named = KmsUid::parse(&named).map_err(|e| input("transfer_init IDRr", e))?;
                if data.authorised(std::slice::from_ref(&named)).is_none() {
                    return Err(input("transfer_init", format!("names {named}, whom the ticket does not authorise")));
                }
                (named, ue::media(&tgk, &randri, &ue::sp_of(&ti)?, &ue::generic_map(&ti)?)?)
            }
        };
        if warrant.target != initiator && warrant.target != responder {
            return Err(Refusal::NotAParty.into());
        }
        let start = data.start.or_else(|| issued_at(&ticket)).ok_or_else(|| input("ticket", "no start of validity or issue time"))?;
        let end = data.end.unwrap_or(u64::MAX);
        let call = tk::t_of(&ti).ok().as_ref().and_then(unix_of).ok_or_else(|| input("transfer_init", "no usable timestamp"))?;
        if start > warrant.not_after || end < warrant.not_before || !warrant.covers(call) {
            return Err(Refusal::OutsideWindow.into());
        }
        Ok(Release { initiator, responder, answered: transfer_resp.is_some(), media, call_time: call, csb_id: ti.header.csb_id })
    }
}

/// An intercepted TRANSFER_INIT, decoded once for one key release: read by
/// [`Kms::li_ue_made_btid`] (whose Ks_NAF to look up) and then by [`Kms::li_release`]; or a
/// MIKEY-SAKKE I_MESSAGE, kept decoded for [`Kms::li_release_sakke`].
pub struct LiTransferInit<'a> {
    bytes: &'a [u8],
    /// The data type of the message, when it decodes.
    data_type: Option<DataType>,
    /// The decoded message when it is a MIKEY-SAKKE I_MESSAGE (data type 26).
    sakke: Option<Decoded<'a>>,
    /// The ticket of the TRANSFER_INIT and its TP Data; or why the message is no ticket call
    /// to release (reported by [`Kms::li_release`] after its warrant check).
    read: Result<(Ticket, TpData), KmsError>,
}

impl<'a> LiTransferInit<'a> {
    /// Decodes `bytes` (the MIKEY message of the call's offer) and reads its ticket.
    pub fn read(bytes: &'a [u8]) -> Self {
        let decoded = Decoded::decode(bytes).map_err(|e| input("transfer_init", e));
        let data_type = decoded.as_ref().ok().map(|d| d.message().header.data_type);
        let mut sakke = None;
        let read: Result<(Ticket, TpData), KmsError> = decoded.and_then(|d| match d.message().header.data_type {
            DataType::DH_INIT | DataType::DH_RESP => Err(Refusal::HighSecurityCall.into()),
            DataType::SAKKE => {
                sakke = Some(d);
                Err(input("transfer_init", "a MIKEY-SAKKE I_MESSAGE: released with the SAKKE master secret (Kms::li_release_sakke, Service::li_release)"))
            }
            _ => {
                let ti = tk::expect(d.into_message(), DataType::TRANSFER_INIT).map_err(|e| input("transfer_init", e))?;
                let ticket = tk::ticket_of(&ti).map_err(|e| input("transfer_init", e))?;
                let data = TpData::decode(&ticket.policy.data).map_err(|e| input("ticket TP Data", e))?;
                Ok((ticket, data))
            }
        });
        Self { bytes, data_type, sakke, read }
    }

    /// The decoded MIKEY-SAKKE I_MESSAGE, when the message is one.
    pub fn sakke(&self) -> Option<&Decoded<'a>> {
        self.sakke.as_ref()
    }

    /// The data type of the message, when it decodes (a MIKEY-SAKKE I_MESSAGE is released
    /// by [`Kms::li_release_sakke`]).
    pub fn data_type(&self) -> Option<DataType> {
        self.data_type
    }
}

impl Kms {
    /// The B-TID whose Ks_NAF [`Kms::li_release`] needs for the call of `transfer_init`: the
    /// IDRpsk of a UE-made (mode 3) ticket this KMS would resolve; `None` for anything else
    /// (KMS-made tickets, other KMSs' tickets, malformed input: `li_release` reports those).
    pub fn li_ue_made_btid(&self, transfer_init: &LiTransferInit<'_>) -> Option<String> {
        let (ticket, data) = transfer_init.read.as_ref().ok()?;
        let ours = data.kms.as_deref() == Some(self.config().fqdn.as_str());
        (ours && !ticket.policy.flags.contains(TicketFlags::D)).then(|| data.psk.clone()).flatten()
    }
}

/// Accepts every message: an LI release is not a reception (the same I_MESSAGE may be
/// released under several warrants, long after the call).
struct NoReplayCheck;

impl mediasec_mikey::psk::ReplayCache for NoReplayCheck {
    fn insert(&mut self, _: u32, _: u64, _: &[u8]) -> bool {
        true
    }
}

impl Kms {
    /// LI key release of a MIKEY-SAKKE call (docs/li.md) under `warrant` at `now` (UNIX
    /// seconds), with this KMS's SAKKE master secret `z` (public key `z_pub`) and KPAK
    /// `kpak`: the responder's RSK for the identifier of IDRr and the month of T is derived
    /// from z (RFC 6508 §6.1.1); the message is then checked and decapsulated exactly as the
    /// callee does ([`mikey_sakke::receive`]: ECCSI signature by IDRi under `kpak`, SAKKE
    /// identifier, R re-check), except freshness and replay, which do not apply to a later
    /// release. Warrant rules as for tickets: active warrant; target = IDRi or IDRr; T in the
    /// window. CS 2's SSRC is unknown (0 in the message: no response).
    /// `i_message` is decoded once, by [`LiTransferInit::read`].
    pub fn li_release_sakke(&self, warrant: &Warrant, i_message: &Decoded<'_>, z: &sakke::KmsSecret, z_pub: &sakke::PublicKey, kpak: &Kpak, now: u64) -> Result<Release, KmsError> {
        warrant.check_active(now)?;
        let m = i_message.message();
        if m.header.data_type != DataType::SAKKE {
            return Err(input("i_message", "not a MIKEY-SAKKE I_MESSAGE (data type 26)"));
        }
        let t = tk::t_of(m).map_err(|e| input("i_message", e))?;
        let responder_uri = String::from_utf8(tk::id_of(m, IdRole::RESPONDER)).map_err(|_| input("i_message", "IDRr is not UTF-8"))?;
        let b = mikey_sakke::identifier(&responder_uri, &t).map_err(|e| input("i_message", e))?;
        let rsk = z.issue(&b).map_err(|e| input("i_message", e))?;
        let received = mikey_sakke::receive_decoded(i_message, kpak, z_pub, &rsk, t.value, 0, &mut NoReplayCheck).map_err(|e| match e.err_code() {
            mediasec_mikey::registry::ErrorCode::AUTH_FAILURE => KmsError::from(Refusal::ForeignTicket(format!("I_MESSAGE not verifiable under this KMS's keys: {e}"))),
            _ => input("i_message", e),
        })?;
        let keys = received.keys.ok_or_else(|| input("i_message", "no two-stream SRTP-ID map (not a call message)"))?;
        let domain = &self.config().domain;
        let initiator = match &received.initiator {
            mikey_sakke::Identity::Uri(u) => KmsUid::from_uri(u, domain).map_err(|e| input("i_message IDRi", e))?,
            mikey_sakke::Identity::Uid(_) => return Err(input("i_message", "TS 33.180 UID identities are not call identities here")),
        };
        let responder = KmsUid::from_uri(&responder_uri, domain).map_err(|e| input("i_message IDRr", e))?;
        if warrant.target != initiator && warrant.target != responder {
            return Err(Refusal::NotAParty.into());
        }
        let call = unix_of(&t).ok_or_else(|| input("i_message", "no usable timestamp"))?;
        if !warrant.covers(call) {
            return Err(Refusal::OutsideWindow.into());
        }
        Ok(Release { initiator, responder, answered: false, media: Media { initiator_stream: keys.initiator_stream, responder_stream: keys.responder_stream }, call_time: call, csb_id: m.header.csb_id })
    }
}

/// Unix time of the T payload of a decoded MIKEY-SAKKE I_MESSAGE (unverified: it selects the
/// community key generation whose keys verify and open the message, crate::generations).
pub fn sakke_time(i_message: &Decoded<'_>) -> Result<u64, KmsError> {
    let t = tk::t_of(i_message.message()).map_err(|e| input("i_message", e))?;
    unix_of(&t).ok_or_else(|| input("i_message", "no usable timestamp"))
}

/// One LI audit record (never key material; readable only through the LI API), a link of
/// the trail's hash chain ([`crate::li_chain`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiAuditEntry {
    /// Milliseconds since the UNIX epoch.
    pub at_unix_ms: u64,
    /// `warrant.put`, `warrant.delete`, `keys.release`, `keys.refuse`, `master_key.rekey`
    /// (the trail re-sealed under a new master key: [`crate::rekey`]; no warrant).
    pub action: String,
    /// The warrant id.
    pub warrant: String,
    /// Outcome or reason.
    pub detail: String,
    /// Position in the chain, from 1; 0 for an entry written before the trail was chained
    /// (reported as unchained, [`crate::li_chain::ChainReport::unchained`]). Set on append.
    #[serde(default)]
    pub seq: u64,
    /// The link hash of the previous entry ([`crate::li_chain::link_hash`], hex); 64 zeros
    /// for entry 1. Set on append.
    #[serde(default)]
    pub prev: String,
}

impl LiAuditEntry {
    /// A record to append ([`Persist::li_audit`] sets its place in the chain).
    pub fn new(at_unix_ms: u64, action: &str, warrant: &str, detail: String) -> Self {
        Self { at_unix_ms, action: action.into(), warrant: warrant.into(), detail, seq: 0, prev: String::new() }
    }

    /// Its row in the LI audit table: zero-padded time, then `suffix` (random, so that rows
    /// of one millisecond stay apart).
    pub fn row(&self, suffix: u64) -> String {
        format!("{:020}-{suffix:016x}", self.at_unix_ms)
    }
}

impl Persist {
    /// Every warrant, by id.
    pub async fn warrants(&self) -> Result<Vec<Warrant>, KmsError> {
        self.store()
            .list(Table::LiWarrants)
            .await?
            .into_iter()
            .map(|(row, v)| {
                let plain = self.open(Table::LiWarrants, &row, &v)?;
                serde_json::from_slice(&plain).map_err(|e| KmsError::Config(format!("warrant row {row}: {e}")))
            })
            .collect()
    }

    /// The warrant `id`, if any.
    pub async fn warrant(&self, id: &str) -> Result<Option<Warrant>, KmsError> {
        match self.store().get(Table::LiWarrants, id).await? {
            Some(v) => Ok(Some(serde_json::from_slice(&self.open(Table::LiWarrants, id, &v)?).map_err(|e| KmsError::Config(format!("warrant row {id}: {e}")))?)),
            None => Ok(None),
        }
    }

    /// Adds or replaces a warrant ([`Warrant::validate`]d), committed with its LI audit
    /// record, which names its target and window and, for a replacement, those it replaced
    /// (the row key is the id: without them a retargeted warrant would leave no trace).
    pub async fn put_warrant(&self, w: &Warrant, now_ms: u64, suffix: u64) -> Result<(), KmsError> {
        w.validate()?;
        let replaced = self.warrant(&w.id).await?;
        let plain = Zeroizing::new(serde_json::to_vec(w).map_err(|e| KmsError::Config(e.to_string()))?);
        self.store().put(Table::LiWarrants, &w.id, &self.seal(Table::LiWarrants, &w.id, &plain)?).await?;
        let mut detail = w.audit_detail();
        if let Some(old) = replaced {
            detail.push_str(&format!(" (replaced: {})", old.audit_detail()));
        }
        self.li_audit(&LiAuditEntry::new(now_ms, "warrant.put", &w.id, detail), suffix).await
    }

    /// Removes a warrant; `true` when it existed.
    pub async fn delete_warrant(&self, id: &str, now_ms: u64, suffix: u64) -> Result<bool, KmsError> {
        let existed = self.store().delete(Table::LiWarrants, id).await?;
        self.li_audit(&LiAuditEntry::new(now_ms, "warrant.delete", id, if existed { "removed" } else { "absent" }.into()), suffix).await?;
        Ok(existed)
    }

    /// Appends to the LI audit trail, chained after its head ([`crate::li_chain::append`]);
    /// `suffix` (random) keeps rows of one millisecond apart.
    pub async fn li_audit(&self, e: &LiAuditEntry, suffix: u64) -> Result<(), KmsError> {
        let opening: Vec<_> = self.keys().opening().collect();
        crate::li_chain::append(&**self.store(), self.master(), &opening, e, suffix).await
    }

    /// The LI audit trail from `since_ms` on, oldest first, at most `limit` records, with the
    /// verification of the whole chain ([`crate::li_chain::verify`]).
    pub async fn li_audit_log(&self, since_ms: u64, limit: usize) -> Result<crate::li_chain::LiAuditTrail, KmsError> {
        let opening: Vec<_> = self.keys().opening().collect();
        crate::li_chain::read(&**self.store(), &opening, since_ms, limit).await
    }
}
