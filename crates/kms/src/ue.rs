//! The UE side of KMS-based media security (TS 33.328 Annex B.1 / B.2.2), sans-IO: Ticket
//! Request, UE-made (mode 3) tickets, Ticket Transfer (TRANSFER_INIT / TRANSFER_RESP) and
//! Ticket Resolve, a reusable-ticket cache on both sides, and the SRTP policies out.
//!
//! Crypto sessions (docs/kms.md): CS 1 is the initiator's stream, CS 2 the responder's; the
//! TRANSFER_INIT GENERIC-ID map carries the initiator's SSRC (CS 2 Session Data zero), the
//! TRANSFER_RESP map repeats it with the responder's SSRC filled in (RFC 6043 §5.2). TEK and
//! salt of each CS come from the TGK with RANDRi (flags H = 1, G = 0; RFC 6043 §5.1.3).

use std::collections::HashMap;
use std::time::Duration;

use mediasec_mikey::error_message::{self, ErrorKey};
use mediasec_mikey::forking::{self, ForkModifier};
use mediasec_mikey::header::{CsIdMap, GenericCs};
use mediasec_mikey::keys::{self, Direction};
use mediasec_mikey::payload::{KeyData, KeyValidity, SecurityPolicy, Ticket, TicketFlags, TicketPolicy};
use mediasec_mikey::registry::{DataType, ErrorCode, IdRole, IdType, KeyType, ProtType, RandRole, TicketType};
use mediasec_mikey::srtp_policy::{self, CryptoSession, SrtpPolicy};
use mediasec_mikey::ticket::{self as tk, Secret, TicketContent};
use mediasec_mikey::{CommonHeader, Message, Payload};
use zeroize::Zeroizing;

use crate::error::KmsError;
use crate::identity::{KmsUid, Pattern};
use crate::keyring::MODE3_KEY_ID;
use crate::kms::{Replay, TGK_SPI};
use crate::tp_data::{TpData, ntp};

/// Flags a UE asks for (docs/ticket-profile.md §7): D E F H N O, plus J for reuse and I for
/// key forking.
pub fn request_flags(reusable: bool, forking: bool) -> TicketFlags {
    let mut f = TicketFlags::D.with(TicketFlags::E).with(TicketFlags::F).with(TicketFlags::H).with(TicketFlags::N).with(TicketFlags::O);
    if reusable {
        f = f.with(TicketFlags::J);
    }
    if forking {
        f = f.with(TicketFlags::I);
    }
    f
}


/// What a UE asks a ticket for.
#[derive(Clone, Debug)]
pub struct Ask {
    /// Responders (identities or groups).
    pub recipients: Vec<Pattern>,
    /// Ask for a reusable ticket.
    pub reusable: bool,
    /// Ask for key forking (each responder gets its own key, RFC 6043 §5.1.1).
    pub forking: bool,
    /// Requested validity in seconds.
    pub lifetime: u64,
}

/// A ticket the initiator holds, with its keys.
#[derive(Clone)]
pub struct HeldTicket {
    /// The TICKET payload to send in TRANSFER_INIT.
    pub ticket: Ticket,
    /// MPKi.
    pub mpki: Secret,
    /// MPKr, when the ticket forks (only the requester has it).
    pub mpkr: Option<Secret>,
    /// The TGK (with its SPI).
    pub tgk: KeyData,
    /// The granted policy's TP Data.
    pub granted: TpData,
}

impl HeldTicket {
    /// Whether the KMS granted reuse (J flag).
    pub fn reusable(&self) -> bool {
        self.ticket.policy.flags.contains(TicketFlags::J)
    }
    /// Whether the ticket forks keys (I flag).
    pub fn forking(&self) -> bool {
        forking::is_forking(&self.ticket)
    }
    /// Whether the KMS changed the request (K flag).
    pub fn changed(&self) -> bool {
        self.ticket.policy.flags.contains(TicketFlags::K)
    }
}

/// Keys a responder obtained by resolving a ticket.
#[derive(Clone)]
pub struct Resolved {
    /// MPKi.
    pub mpki: Secret,
    /// Key of TRANSFER_RESP's V: MPKr' when the ticket forks, else MPKi.
    pub resp_key: Secret,
    /// The TGK (TGK' when forked).
    pub tgk: KeyData,
    /// IDRr and RANDRkms of RESOLVE_RESP, repeated in TRANSFER_RESP.
    pub fork: ForkModifier,
    /// The responder identity the KMS authorised (IDRr of RESOLVE_RESP).
    pub responder: KmsUid,
    /// Ticket end of validity (Unix seconds).
    pub end: Option<u64>,
    /// Reusable.
    pub reusable: bool,
}

/// The initiator the ticket of `transfer_init` names (TP Data IDRi): the user the KMS
/// authenticated when it issued it (for a UE-made ticket, an identity of the B-TID it checks
/// when resolving). Vouched for only once the KMS resolved this very ticket for us and this
/// TRANSFER_INIT verified under MPKi ([`Ue::transfer_resp`], [`Ue::deferred_open`]): only the
/// ticket's holder has MPKi.
pub fn ticket_initiator(transfer_init: &[u8]) -> Result<KmsUid, KmsError> {
    let ticket = tk::ticket_of(&Message::decode(transfer_init)?)?;
    TpData::decode(&ticket.policy.data)?.initiator.ok_or_else(|| KmsError::Identity("the ticket names no initiator (TP Data IDRi)".into()))
}

/// A stored call opened by its responder ([`Ue::deferred_open`]).
pub struct Deferred {
    /// CS 1 (the caller's stream, what was stored) and CS 2.
    pub media: Media,
    /// Who made the call, as the ticket names it (TP Data IDRi): the user the KMS
    /// authenticated when it issued the ticket (for a UE-made ticket, an identity of the B-TID
    /// the KMS checked when it resolved it). Only that user holds MPKi, under which the
    /// TRANSFER_INIT verified; unlike a `From` or `P-Asserted-Identity` header, no SIP hop can
    /// change it.
    pub initiator: KmsUid,
}

/// A sent REQUEST_INIT awaiting REQUEST_RESP.
pub struct PendingRequest {
    request: Vec<u8>,
    randri: [u8; 16],
}

/// A sent RESOLVE_INIT awaiting RESOLVE_RESP.
pub struct PendingResolve {
    request: Vec<u8>,
    randrr: [u8; 16],
    ticket: Ticket,
}

/// A sent TRANSFER_INIT awaiting TRANSFER_RESP.
pub struct PendingTransfer {
    init: Vec<u8>,
    randri: Vec<u8>,
    mpki: Secret,
    mpkr: Option<Secret>,
    tgk: KeyData,
    recipients: Vec<Pattern>,
}

/// SRTP policies of a call: for the initiator's stream (CS 1) and the responder's (CS 2).
pub struct Media {
    /// CS 1: initiator → responder.
    pub initiator_stream: SrtpPolicy,
    /// CS 2: responder → initiator.
    pub responder_stream: SrtpPolicy,
}

/// A UE: its KMS UID, its KMS, its bootstrap (B-TID, Ks_NAF for the KMS), caches.
pub struct Ue {
    /// The user's KMS UID.
    pub uid: KmsUid,
    /// The KMS FQDN (IDRkms).
    pub kms: String,
    btid: String,
    ks_naf: Secret,
    skew: u64,
    replay: Replay,
    held: Vec<HeldTicket>,
    resolved: HashMap<Vec<u8>, Resolved>,
    reuse: bool,
    deferred: bool,
}

fn rejected(code: ErrorCode, reason: impl Into<String>) -> KmsError {
    KmsError::mikey(code, reason)
}

/// Splits a KEMAC content `MPKi || [MPKr or MPKr'] || TGK` (RFC 6043 §5.2/§5.3).
pub(crate) fn split_keys(keys: &[KeyData], forks: bool) -> Result<(Secret, Option<Secret>, KeyData), KmsError> {
    let tgk_ok = |t: &KeyData| matches!(t.key_type, KeyType::TGK | KeyType::TGK_SALT);
    match (forks, keys) {
        (false, [m, t]) if m.key_type == KeyType::MPK && tgk_ok(t) => Ok((Zeroizing::new(m.key.clone()), None, t.clone())),
        (true, [m, r, t]) if m.key_type == KeyType::MPK && r.key_type == KeyType::MPK && tgk_ok(t) => {
            Ok((Zeroizing::new(m.key.clone()), Some(Zeroizing::new(r.key.clone())), t.clone()))
        }
        _ => Err(rejected(ErrorCode::UNSPECIFIED, format!("KEMAC does not hold MPKi{} then one TGK", if forks { ", MPKr" } else { "" }))),
    }
}

fn spi_of(k: &KeyData) -> Vec<u8> {
    match &k.validity {
        KeyValidity::Spi(s) => s.clone(),
        _ => Vec::new(),
    }
}

fn cs(cs_id: u8, ssrc: u32, spi: &[u8]) -> GenericCs {
    GenericCs { cs_id, prot_type: ProtType::SRTP, s_flag: false, policies: vec![0], session_data: ssrc.to_be_bytes().to_vec(), spi: spi.to_vec() }
}

/// SRTP policies of CS 1 and CS 2 from the TGK (RANDRi only: H = 1, G = 0).
pub(crate) fn media(tgk: &KeyData, randri: &[u8], sp: &SecurityPolicy, map: &[GenericCs]) -> Result<Media, KmsError> {
    let one = |id: u8| -> Result<SrtpPolicy, KmsError> {
        let c = map.iter().find(|c| c.cs_id == id).ok_or_else(|| rejected(ErrorCode::INVALID_SP, format!("no CS {id} in the map")))?;
        let (ssrc, _) = c.srtp_session().ok_or_else(|| rejected(ErrorCode::INVALID_SP, format!("CS {id}: no SSRC")))?;
        let session = CryptoSession { ssrc, roc: 0, mki: c.spi.clone() };
        Ok(srtp_policy::derive(tk::PRF, &tgk.key, |k| keys::label_ticket_tgk(k, id, Some(randri), None), tgk.salt.as_deref(), sp, &session)?)
    };
    Ok(Media { initiator_stream: one(1)?, responder_stream: one(2)? })
}

pub(crate) fn generic_map(m: &Message) -> Result<Vec<GenericCs>, KmsError> {
    match &m.header.cs_map {
        CsIdMap::GenericId(v) => Ok(v.clone()),
        _ => Err(rejected(ErrorCode::INVALID_SP, "Ticket Transfer needs a GENERIC-ID map (RFC 6043 §6.1.1)")),
    }
}

pub(crate) fn sp_of(m: &Message) -> Result<SecurityPolicy, KmsError> {
    m.find(|p| if let Payload::Sp(s) = p { Some(s.clone()) } else { None }).ok_or_else(|| rejected(ErrorCode::INVALID_SP, "no SP payload"))
}

impl Ue {
    /// A UE bootstrapped with `btid` holding `ks_naf` for the KMS `kms`.
    pub fn new(uid: KmsUid, kms: impl Into<String>, btid: impl Into<String>, ks_naf: &[u8], skew: u64) -> Self {
        Self {
            uid,
            kms: kms.into(),
            btid: btid.into(),
            ks_naf: Zeroizing::new(ks_naf.to_vec()),
            skew,
            replay: Replay::default(),
            held: Vec::new(),
            resolved: HashMap::new(),
            reuse: false,
            deferred: true,
        }
    }

    /// Whether calls ask for reusable tickets and use a cached one before asking again
    /// (TS 33.328 Annex B.1 reuse; RFC 6043 §6.3 J flag). Off by default: a reusable ticket's
    /// TGK keys every call to that responder until the ticket expires, so a compromise of one
    /// exposes them all (each call's TEKs still differ: they are derived with a fresh RANDRi).
    /// The KMS grants J only where its policy says `reusable`; otherwise the ticket comes
    /// back single-use and nothing is cached.
    pub fn set_ticket_reuse(&mut self, on: bool) {
        self.reuse = on;
    }

    /// See [`Ue::set_ticket_reuse`].
    pub fn ticket_reuse(&self) -> bool {
        self.reuse
    }

    /// Whether, as a caller, this UE accepts an answer announcing deferred delivery (a
    /// voicemail server storing the media, docs/voicemail.md, profile decision 18) and sends
    /// SRTP keyed from its own TRANSFER_INIT ([`PendingTransfer::deferred_media`]). On by
    /// default: the media stays encrypted under keys only the KMS and the ticket's authorised
    /// responders can obtain, so the store learns nothing; what the caller gives up is the
    /// proof (TRANSFER_RESP) that the callee answered, which its log and report state.
    pub fn set_deferred_delivery(&mut self, on: bool) {
        self.deferred = on;
    }

    /// See [`Ue::set_deferred_delivery`].
    pub fn deferred_delivery(&self) -> bool {
        self.deferred
    }

    /// Mailbox owner (deferred delivery, docs/voicemail.md): the SRTP policies of a stored
    /// TRANSFER_INIT whose ticket this UE resolved (`r`). TRANSFER_INIT's V is verified with
    /// MPKi as in [`Ue::transfer_resp`], but **not** its timestamp: a stored message is old
    /// by design, so the ±skew window and the replay cache cannot apply (the KMS's resolve
    /// was fresh instead, and the ticket must still be valid `now` → [`KmsError::TicketExpired`]).
    /// Forking tickets are refused (the caller refuses them too, [`PendingTransfer::deferred_media`]).
    ///
    /// `r` must be the resolution of this TRANSFER_INIT's own ticket (as
    /// `mediasec_voicemail::owner::open_message` does): the KMS's resolve is what vouches for
    /// the ticket, and so for the [`Deferred::initiator`] its TP Data names.
    pub fn deferred_open(&self, r: &Resolved, transfer_init: &[u8], now: Duration) -> Result<Deferred, KmsError> {
        check_ticket_valid(r.end, now)?;
        let (ti, randri) = verified_transfer_init(&r.mpki, transfer_init)?;
        let ticket = tk::ticket_of(&ti)?;
        if forking::is_forking(&ticket) {
            return Err(KmsError::Deferred(FORKING_REFUSED.into()));
        }
        Ok(Deferred { media: media(&r.tgk, &randri, &sp_of(&ti)?, &generic_map(&ti)?)?, initiator: ticket_initiator(transfer_init)? })
    }

    /// Timestamp and replay check of a received message (RFC 3830 §5.4): the replay memory is
    /// the KMS's, bounded by time — a message is remembered while its T can pass the ±skew
    /// check, then dropped ([`Replay::check_fresh`]).
    fn fresh(&mut self, m: &Message, now: Duration) -> Result<(), KmsError> {
        self.replay.check_fresh(m, now.as_secs(), self.skew)
    }

    /// A Ua `keyprovision` request for the ECCSI signing key of `uri` (one of our IMPUs) for
    /// `period` ([`crate::keyprov`]), authenticated with our Ks_NAF.
    pub fn keyprov_request(&self, uri: &str, period: crate::keyprov::Period, now: Duration, nonce: [u8; crate::keyprov::NONCE_LEN], sakke: bool) -> Result<(Vec<u8>, crate::keyprov::Pending), KmsError> {
        crate::keyprov::request(&self.btid, &self.ks_naf, &self.kms, uri, period, now.as_secs(), nonce, sakke)
    }

    fn psk_idr(&self) -> Payload {
        tk::idr(IdRole::PSK, IdType::BYTE_STRING, self.btid.as_bytes())
    }

    /// A cached reusable ticket authorising `to`, still valid at `now` (Annex B.1: reuse).
    pub fn cached_ticket(&self, to: &KmsUid, now: Duration) -> Option<HeldTicket> {
        self.held
            .iter()
            .find(|h| h.reusable() && h.granted.end.is_some_and(|e| e > now.as_secs()) && h.granted.authorised(std::slice::from_ref(to)).is_some())
            .cloned()
    }

    /// REQUEST_INIT_PSK (RFC 6043 §4.1.1) asking for `ask`.
    pub fn request_init(&self, ask: &Ask, csb_id: u32, now: Duration, randri: [u8; 16]) -> Result<(Vec<u8>, PendingRequest), KmsError> {
        let data = TpData {
            kms: Some(self.kms.clone()),
            initiator: Some(self.uid.clone()),
            psk: None,
            start: None,
            end: Some(now.as_secs().saturating_add(ask.lifetime)),
            recipients: ask.recipients.clone(),
        };
        let tp = TicketPolicy { ticket_type: TicketType::THREE_GPP, subtype: 0, version: 0, prf: tk::PRF, flags: request_flags(ask.reusable, ask.forking), reserved: 0, data: data.encode()? };
        let m = Message {
            header: tk::header(DataType::REQUEST_INIT_PSK, true, csb_id, CsIdMap::Empty { n_cs: 0 }),
            payloads: vec![
                Payload::T(ntp(now)),
                tk::randr(RandRole::INITIATOR, &randri),
                tk::idr(IdRole::INITIATOR, IdType::NAI, self.uid.as_str().as_bytes()),
                tk::idr(IdRole::KMS, IdType::NAI, self.kms.as_bytes()),
                Payload::Tp(tp),
                self.psk_idr(),
            ],
        };
        let k = tk::message_keys(&self.ks_naf, csb_id, Direction::Initial, Some(&randri), None)?;
        let request = tk::seal(m, &k.auth_key, &[self.uid.as_str().as_bytes(), self.kms.as_bytes()])?;
        Ok((request.clone(), PendingRequest { request, randri }))
    }

    /// Verifies REQUEST_RESP (or reports the KMS's MIKEY Error), keeps a reusable ticket.
    pub fn on_request_resp(&mut self, p: PendingRequest, resp: &[u8], now: Duration) -> Result<HeldTicket, KmsError> {
        let m = Message::decode(resp)?;
        let k = tk::message_keys(&self.ks_naf, m.header.csb_id, Direction::Response, Some(&p.randri), None)?;
        refused(resp, &m, &k.auth_key)?;
        let m = tk::expect(m, DataType::REQUEST_RESP)?;
        tk::verify_v_decoded(resp, &m, &k.auth_key, &[&p.request])?;
        self.fresh(&m, now)?;
        let ticket = tk::ticket_of(&m)?;
        let (mpki, mpkr, tgk) = split_keys(&tk::open_kemac(&m, &k, m.header.csb_id)?, forking::is_forking(&ticket))?;
        let granted = TpData::decode(&ticket.policy.data)?;
        let held = HeldTicket { ticket, mpki, mpkr, tgk, granted };
        if held.reusable() {
            self.held.retain(|h| h.granted.end.is_some_and(|e| e > now.as_secs()));
            self.held.push(held.clone());
        }
        Ok(held)
    }

    /// Makes a ticket itself (mode 3, RFC 6043 §4.1 / TS 33.328 Annex D.4): TPK = its Ks_NAF,
    /// THDR key id 0, TP Data naming its KMS, itself and its B-TID. `random` fills keys.
    pub fn make_ticket(&self, ask: &Ask, now: Duration, random: &dyn Fn(&mut [u8])) -> Result<HeldTicket, KmsError> {
        let data = TpData {
            kms: Some(self.kms.clone()),
            initiator: Some(self.uid.clone()),
            psk: Some(self.btid.clone()),
            start: Some(now.as_secs()),
            end: Some(now.as_secs().saturating_add(ask.lifetime)),
            recipients: ask.recipients.clone(),
        };
        // Not D (UE-made) requires L (RFC 6043 §6.10); resolve stays mandatory (E).
        let flags = TicketFlags(request_flags(ask.reusable, false).0 & !TicketFlags::D.0).with(TicketFlags::L);
        flags.check().map_err(|e| rejected(ErrorCode::INVALID_TPPAR, e))?;
        let policy = TicketPolicy { ticket_type: TicketType::THREE_GPP, subtype: 0, version: 0, prf: tk::PRF, flags, reserved: 0, data: data.encode()? };
        let mut mpk = Zeroizing::new([0u8; 16]);
        let mut tgk = Zeroizing::new([0u8; 16]);
        let mut rand = [0u8; 16];
        random(&mut *mpk);
        random(&mut *tgk);
        random(&mut rand);
        let tgk = tk::key(KeyType::TGK, &*tgk, &TGK_SPI);
        let content = TicketContent { mpk: mpk.to_vec(), keys: vec![tgk.clone()] };
        let ticket = tk::issue_ticket(policy, &self.ks_naf, MODE3_KEY_ID, ntp(now), &rand, &content)?;
        let (mpki, _) = tk::mpk_i_r(&content.mpk, &rand)?;
        Ok(HeldTicket { ticket, mpki, mpkr: None, tgk, granted: data })
    }

    /// TRANSFER_INIT (RFC 6043 §4.1.2) from this UE to `to` with `ticket`; CS 1 = `ssrc`.
    pub fn transfer_init(&self, held: &HeldTicket, to: &KmsUid, csb_id: u32, ssrc: u32, now: Duration, randri: [u8; 16]) -> Result<(Vec<u8>, PendingTransfer), KmsError> {
        let spi = spi_of(&held.tgk);
        let m = Message {
            header: tk::header(DataType::TRANSFER_INIT, true, csb_id, CsIdMap::GenericId(vec![cs(1, ssrc, &spi), cs(2, 0, &spi)])),
            payloads: vec![
                Payload::T(ntp(now)),
                tk::randr(RandRole::INITIATOR, &randri),
                tk::idr(IdRole::INITIATOR, IdType::NAI, self.uid.as_str().as_bytes()),
                tk::idr(IdRole::RESPONDER, IdType::NAI, to.as_str().as_bytes()),
                Payload::Sp(srtp_policy::aes_cm_128_hmac_sha1_80()),
                Payload::Ticket(held.ticket.clone()),
            ],
        };
        let k = tk::message_keys(&held.mpki, csb_id, Direction::Initial, Some(&randri), None)?;
        let init = tk::seal(m, &k.auth_key, &[self.uid.as_str().as_bytes(), to.as_str().as_bytes()])?;
        // With forking, Initiator Data (Vi, Vr keyed from MPKr) proves to the KMS that the
        // holder of MPKr sent this TRANSFER_INIT (RFC 6043 §6.11).
        let init = match &held.mpkr {
            Some(mpkr) => forking::attach_initiator_data(&init, mpkr)?,
            None => init,
        };
        let pending = PendingTransfer { init: init.clone(), randri: randri.to_vec(), mpki: held.mpki.clone(), mpkr: held.mpkr.clone(), tgk: held.tgk.clone(), recipients: held.granted.recipients.clone() };
        Ok((init, pending))
    }

    /// A cached resolve of the ticket in `transfer_init` (reusable tickets: no KMS contact).
    pub fn cached_resolve(&self, transfer_init: &[u8], now: Duration) -> Option<Resolved> {
        let m = Message::decode(transfer_init).ok()?;
        let t = tk::ticket_of(&m).ok()?;
        self.resolved.get(&t.ticket_data).filter(|r| r.reusable && r.end.is_some_and(|e| e > now.as_secs())).cloned()
    }

    /// RESOLVE_INIT_PSK (RFC 6043 §4.1.3) for the ticket of a received TRANSFER_INIT, after
    /// an early policy check (3GPP ticket type, we are a named responder or group member).
    pub fn resolve_init(&self, transfer_init: &[u8], csb_id: u32, now: Duration, randrr: [u8; 16]) -> Result<(Vec<u8>, PendingResolve), KmsError> {
        let ti = tk::decode_expect(transfer_init, DataType::TRANSFER_INIT)?;
        let ticket = tk::ticket_of(&ti)?;
        if ticket.policy.ticket_type != TicketType::THREE_GPP {
            return Err(rejected(ErrorCode::INVALID_TICKET, "not a 3GPP ticket"));
        }
        let m = Message {
            header: tk::header(DataType::RESOLVE_INIT_PSK, true, csb_id, CsIdMap::Empty { n_cs: 0 }),
            payloads: vec![
                Payload::T(ntp(now)),
                tk::randr(RandRole::RESPONDER, &randrr),
                tk::idr(IdRole::RESPONDER, IdType::NAI, self.uid.as_str().as_bytes()),
                tk::idr(IdRole::KMS, IdType::NAI, self.kms.as_bytes()),
                Payload::Ticket(ticket.clone()),
                self.psk_idr(),
            ],
        };
        let k = tk::message_keys(&self.ks_naf, csb_id, Direction::Initial, None, Some(&randrr))?;
        let request = tk::seal(m, &k.auth_key, &[self.uid.as_str().as_bytes(), self.kms.as_bytes()])?;
        Ok((request.clone(), PendingResolve { request, randrr, ticket }))
    }

    /// Verifies RESOLVE_RESP (or reports the KMS's MIKEY Error); caches a reusable result.
    pub fn on_resolve_resp(&mut self, p: PendingResolve, resp: &[u8], now: Duration) -> Result<Resolved, KmsError> {
        let m = Message::decode(resp)?;
        let k = tk::message_keys(&self.ks_naf, m.header.csb_id, Direction::Response, None, Some(&p.randrr))?;
        refused(resp, &m, &k.auth_key)?;
        let m = tk::expect(m, DataType::RESOLVE_RESP)?;
        tk::verify_v_decoded(resp, &m, &k.auth_key, &[&p.request])?;
        self.fresh(&m, now)?;
        let forks = forking::is_forking(&p.ticket);
        let (mpki, mpkr_forked, tgk) = split_keys(&tk::open_kemac(&m, &k, m.header.csb_id)?, forks)?;
        let fork = ForkModifier::of(&m)?;
        if fork.randrkms.is_some() != forks {
            return Err(rejected(ErrorCode::UNSPECIFIED, "RANDRkms present exactly when the ticket forks"));
        }
        let responder = KmsUid::parse(&String::from_utf8_lossy(&fork.id_r))?;
        let data = TpData::decode(&p.ticket.policy.data)?;
        let resp_key = mpkr_forked.unwrap_or_else(|| mpki.clone());
        let r = Resolved { mpki, resp_key, tgk, fork, responder, end: data.end, reusable: p.ticket.policy.flags.contains(TicketFlags::J) };
        if r.reusable {
            self.resolved.retain(|_, v| v.end.is_some_and(|e| e > now.as_secs()));
            self.resolved.insert(p.ticket.ticket_data, r.clone());
        }
        Ok(r)
    }

    /// Responder: verifies TRANSFER_INIT with MPKi and answers TRANSFER_RESP (IDRr = the
    /// identity the KMS authorised, CS 2 = `ssrc`); returns the call's SRTP policies.
    pub fn transfer_resp(&mut self, r: &Resolved, transfer_init: &[u8], ssrc: u32, now: Duration) -> Result<(Vec<u8>, Media), KmsError> {
        let (ti, randri) = verified_transfer_init(&r.mpki, transfer_init)?;
        self.fresh(&ti, now)?;
        let mut map = generic_map(&ti)?;
        for c in map.iter_mut().filter(|c| c.cs_id == 2) {
            c.session_data = ssrc.to_be_bytes().to_vec();
        }
        let media = media(&r.tgk, &randri, &sp_of(&ti)?, &map)?;
        let resp = Message {
            header: CommonHeader { data_type: DataType::TRANSFER_RESP, v_flag: false, cs_map: CsIdMap::GenericId(map), ..ti.header.clone() },
            payloads: [Payload::T(ntp(now))].into_iter().chain(r.fork.payloads()).chain([Payload::Sp(sp_of(&ti)?)]).collect(),
        };
        let rk = tk::message_keys(&r.resp_key, ti.header.csb_id, Direction::Response, Some(&randri), None)?;
        Ok((tk::seal(resp, &rk.auth_key, &[transfer_init])?, media))
    }

    /// Initiator: verifies a TRANSFER_RESP (several, when the call forked); returns the
    /// authenticated responder identity (which must be one the ticket authorises) and the
    /// call's SRTP policies. With forking the V is keyed from MPKr' and the keys come from
    /// TGK', both forked to the responder's IDRr and RANDRkms (RFC 6043 §5.1.1), so only the
    /// KMS-authorised holder of that identity could have answered.
    pub fn on_transfer_resp(&mut self, p: &PendingTransfer, tr: &[u8], now: Duration) -> Result<(KmsUid, Media), KmsError> {
        let (m, who, media) = verified_transfer_resp(p, tr)?;
        self.fresh(&m, now)?;
        Ok((who, media))
    }
}

/// Why a forking ticket cannot be delivered deferred.
const FORKING_REFUSED: &str = "the ticket forks keys (I flag): the responder's TGK' depends on the RANDRkms of a resolve that has not happened, so no stream key exists to send with";

/// [`KmsError::TicketExpired`] when a ticket ending at `end` (Unix seconds) is over at `now`.
fn check_ticket_valid(end: Option<u64>, now: Duration) -> Result<(), KmsError> {
    match end {
        Some(end) if end <= now.as_secs() => Err(KmsError::TicketExpired { end, now: now.as_secs() }),
        _ => Ok(()),
    }
}

/// Mailbox owner, before asking the KMS: the ticket in a stored TRANSFER_INIT must still be
/// valid at `now` (TRe of its TP Data; the KMS would refuse with ERR 14 otherwise, this says
/// why). Returns TRe.
pub fn deferred_ticket_end(transfer_init: &[u8], now: Duration) -> Result<Option<u64>, KmsError> {
    let ti = tk::decode_expect(transfer_init, DataType::TRANSFER_INIT)?;
    let end = TpData::decode(&tk::ticket_of(&ti)?.policy.data)?.end;
    check_ticket_valid(end, now)?;
    Ok(end)
}

impl PendingTransfer {
    /// Caller, deferred delivery (docs/voicemail.md): the SRTP policies of this call from the
    /// ticket's TGK and our RANDRi alone, with no TRANSFER_RESP — what the responder will
    /// derive when it resolves the stored ticket later. CS 1 (our stream) is what we send;
    /// CS 2 keys are what only the KMS or an authorised responder could send with. Refused
    /// for forking tickets, and for tickets that authorise anyone but `callee` — a group
    /// pattern or an added end-to-middle identity ([`KmsError::Deferred`]): with no
    /// TRANSFER_RESP nobody proves to be the callee, so any other party the ticket authorises
    /// could announce deferred delivery from the signalling path, take our media and resolve
    /// the ticket to decrypt it.
    pub fn deferred_media(&self, callee: &KmsUid) -> Result<Media, KmsError> {
        if self.mpkr.is_some() {
            return Err(KmsError::Deferred(FORKING_REFUSED.into()));
        }
        if let Some(other) = self.recipients.iter().find(|p| p.is_group() || p.as_str() != callee.as_str()) {
            return Err(KmsError::Deferred(format!("the ticket also authorises {} besides {callee}: only a ticket for the callee alone may be delivered deferred", other.as_str())));
        }
        let ti = Message::decode(&self.init)?;
        media(&self.tgk, &self.randri, &sp_of(&ti)?, &generic_map(&ti)?)
    }

    /// The initiator's view of a sent TRANSFER_INIT, rebuilt from the ticket's keys (the KMS
    /// holds them all: LI key release, [`crate::li`]).
    pub(crate) fn rebuilt(init: &[u8], randri: Vec<u8>, mpki: Secret, mpkr: Option<Secret>, tgk: KeyData, recipients: Vec<Pattern>) -> Self {
        Self { init: init.to_vec(), randri, mpki, mpkr, tgk, recipients }
    }
}

/// Verifies a TRANSFER_INIT's V with MPKi (RFC 6043 §5.1.3) and, when the ticket forks, that
/// Vi repeats it (§6.11); returns the message and RANDRi. No freshness check: the caller
/// decides (the responder checks it; LI key release works on past calls).
pub(crate) fn verified_transfer_init(mpki: &[u8], transfer_init: &[u8]) -> Result<(Message, Vec<u8>), KmsError> {
    let ti = tk::decode_expect(transfer_init, DataType::TRANSFER_INIT)?;
    let randri = tk::rand_of(&ti, RandRole::INITIATOR).ok_or_else(|| rejected(ErrorCode::UNSPECIFIED, "no RANDRi"))?;
    let ik = tk::message_keys(mpki, ti.header.csb_id, Direction::Initial, Some(&randri), None)?;
    tk::verify_v(transfer_init, &ik.auth_key, &[&tk::id_of(&ti, IdRole::INITIATOR), &tk::id_of(&ti, IdRole::RESPONDER)])?;
    if forking::is_forking(&tk::ticket_of(&ti)?) {
        forking::check_vi(&ti)?;
    }
    Ok((ti, randri))
}

/// Verifies a TRANSFER_RESP against the TRANSFER_INIT it answers (V keyed from MPKr' with
/// forking, else MPKi; RFC 6043 §5.1.1) and that the ticket authorises the responder it
/// names; returns the message, that responder and the call's SRTP policies (from TGK' with
/// forking). No freshness check (see [`verified_transfer_init`]).
pub(crate) fn verified_transfer_resp(p: &PendingTransfer, tr: &[u8]) -> Result<(Message, KmsUid, Media), KmsError> {
    let m = tk::decode_expect(tr, DataType::TRANSFER_RESP)?;
    let fork = ForkModifier::of(&m)?;
    let (key, tgk) = match &p.mpkr {
        Some(mpkr) => (fork.mpkr(mpkr)?, fork.key(&p.tgk)?),
        None => (p.mpki.clone(), p.tgk.clone()),
    };
    let k = tk::message_keys(&key, m.header.csb_id, Direction::Response, Some(&p.randri), None)?;
    tk::verify_v_decoded(tr, &m, &k.auth_key, &[&p.init])?;
    let who = KmsUid::parse(&String::from_utf8_lossy(&fork.id_r))?;
    if !p.recipients.iter().any(|r| r.matches(&who)) {
        return Err(rejected(ErrorCode::INVALID_ID, format!("answered by {who}, whom the ticket does not authorise")));
    }
    let media = media(&tgk, &p.randri, &sp_of(&m)?, &generic_map(&m)?)?;
    Ok((m, who, media))
}

/// A MIKEY Error message from the KMS as an error, saying whether its MAC (keyed like the
/// expected response) authenticated it; a V that does not verify is an error itself.
fn refused(bytes: &[u8], m: &Message, auth_key: &[u8]) -> Result<(), KmsError> {
    if m.header.data_type != DataType::ERROR {
        return Ok(());
    }
    let report = error_message::verify(bytes, Some(ErrorKey { mac: tk::MAC, auth_key }))?;
    let code = report.codes().first().copied().unwrap_or(ErrorCode::UNSPECIFIED);
    let how = if report.is_authenticated() { "authenticated" } else { "unauthenticated" };
    Err(rejected(code, format!("the KMS answered with an {how} MIKEY Error message")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use mediasec_mikey::registry::PrfFunc;

    use super::*;

    /// A message of CSB ID `csb_id` sent at `unix` (UNIX seconds): all the replay memory reads.
    fn message(csb_id: u32, unix: u64) -> Message {
        let header = CommonHeader { version: 1, data_type: DataType::TRANSFER_INIT, v_flag: false, prf: PrfFunc::MIKEY_1, csb_id, cs_map: CsIdMap::Empty { n_cs: 0 } };
        Message { header, payloads: vec![Payload::T(ntp(Duration::from_secs(unix)))] }
    }

    /// The UE's replay memory (RFC 3830 §5.4) is bounded by time, as the KMS's: 5000
    /// messages, one a second with a 30 s skew, never leave more than the prune threshold
    /// remembered; each is refused when replayed 29 s later (inside its window), before and
    /// after prunes, and an old one is refused by its timestamp once dropped.
    #[test]
    fn replay_memory_stays_bounded_and_refuses_replays_in_the_window() {
        let mut ue = Ue::new(KmsUid::parse("bob@a.example").unwrap(), "kms.a.example", "btid", &[7; 32], 30);
        let start = 1_800_000_000u64;
        let mut most = 0;
        for i in 0..5000u32 {
            let (m, now) = (message(i, start + u64::from(i)), Duration::from_secs(start + u64::from(i)));
            ue.fresh(&m, now).unwrap();
            let replayed = ue.fresh(&m, now + Duration::from_secs(29)).unwrap_err().to_string();
            assert!(replayed.contains("replayed"), "message {i}: {replayed}");
            most = most.max(ue.replay.len());
        }
        assert!(most <= 1025, "the replay memory grew to {most} messages");
        let end = Duration::from_secs(start + 5000);
        assert!(ue.fresh(&message(4990, start + 4990), end).unwrap_err().to_string().contains("replayed"), "inside the window after prunes");
        assert!(ue.fresh(&message(0, start), end).unwrap_err().to_string().contains("outside"), "dropped, refused by its time");
    }
}
