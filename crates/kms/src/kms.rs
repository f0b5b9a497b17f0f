//! The KMS core: Ticket Request (TS 33.328 Annex B.1 at the KMS), Ticket Resolve (B.2.2)
//! and inter-KMS resolve (B.2.3), on RFC 6043 PSK messages whose PSK is the user's Ks_NAF
//! named by the B-TID in IDRpsk.
//!
//! The core owns no socket and no clock: time comes with each call, randomness from the
//! [`Random`] given at construction, Zn through the [`Zn`] trait and Zk through [`Peers`].
//! It keeps no per-ticket state: a ticket carries its keys, encrypted and MACed under the
//! ring key its THDR names (docs/ticket-profile.md), so memory does not grow with tickets.
//! The only per-message state is the replay cache, bounded by the clock-skew window.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use mediasec_mikey::forking::{self, ForkModifier};
use mediasec_mikey::header::CsIdMap;
use mediasec_mikey::keys::{Direction, MessageKeys};
use mediasec_mikey::payload::{BaseTicketData, KeyData, Kemac, Ticket, TicketFlags, TicketPolicy, decode_payloads, encode_key_data};
use mediasec_mikey::error_message::{self, ErrorKey};
use mediasec_mikey::psk::ReplayCache;
use mediasec_mikey::registry::{DataType, EncrAlg, ErrorCode, IdRole, IdType, KeyType, MacAlg, PayloadType, RandRole, TicketType};
use mediasec_mikey::ticket::{self as tk, Secret, TicketContent};
use mediasec_mikey::{CommonHeader, Message, Payload};
use tracing::debug;
use zeroize::Zeroizing;

use crate::error::KmsError;
use crate::identity::KmsUid;
use crate::keyring::{KeyRing, MODE3_KEY_ID};
use crate::policy::{Policies, Requested};
use crate::tp_data::{TpData, ntp, unix_of};
use crate::users::Users;
use crate::zn::{NafKey, Zn};

/// A source of random octets.
pub type Random = Box<dyn Fn(&mut [u8]) + Send + Sync>;

/// The operating system's random generator.
pub fn os_random() -> Random {
    Box::new(|b| rand::RngCore::fill_bytes(&mut rand::rng(), b))
}

/// Future of a Zk resolve.
pub type PeerFuture<'a> = Pin<Box<dyn Future<Output = Result<Vec<u8>, KmsError>> + Send + 'a>>;

/// The KMS's Zk peers (TS 33.328 B.2.3), by KMS identity (the IDRkms of their tickets).
pub trait Peers: Send + Sync {
    /// Whether `kms` is an allowed peer.
    fn knows(&self, kms: &str) -> bool;
    /// Sends an unprotected RESOLVE_INIT to `kms`; returns its answer. Must give up within a
    /// bounded time.
    fn resolve<'a>(&'a self, kms: &'a str, request: Vec<u8>) -> PeerFuture<'a>;
    /// The Zk domains of the peers (whose KMS certificates [`Peers::certificate`] fetches).
    fn domains(&self) -> Vec<String> {
        Vec::new()
    }
    /// Fetches the KMS certificate (JSON, docs/high-security.md §10.9) of the peer of Zk
    /// domain `domain`, within a bounded time.
    fn certificate<'a>(&'a self, domain: &'a str) -> PeerFuture<'a> {
        Box::pin(async move { Err(KmsError::Zk(format!("no Zk peer {domain}"))) })
    }
}

/// No Zk peers.
pub struct NoPeers;

impl Peers for NoPeers {
    fn knows(&self, _kms: &str) -> bool {
        false
    }
    fn resolve<'a>(&'a self, kms: &'a str, _request: Vec<u8>) -> PeerFuture<'a> {
        Box::pin(async move { Err(KmsError::Zk(format!("no Zk peer {kms}"))) })
    }
}

/// KMS identity and tolerances.
#[derive(Clone, Debug)]
pub struct KmsConfig {
    /// The KMS FQDN: its NAF id for Ks_NAF and its IDRkms.
    pub fqdn: String,
    /// The home domain of its users (TEL URIs map to `number@domain`).
    pub domain: String,
    /// Accepted clock skew in seconds (RFC 3830 §5.4).
    pub skew: u64,
}

/// SPI of the TGK in a KMS-made ticket; it becomes the SRTP MKI (docs/ticket-profile.md §15).
pub const TGK_SPI: [u8; 4] = [0, 0, 0, 1];

/// The answer to a Ua/Zk request.
#[derive(Debug)]
pub enum Reply {
    /// 200 with a REQUEST_RESP / RESOLVE_RESP.
    Response(Vec<u8>),
    /// 200 with a MIKEY Error message.
    Error {
        /// The Error message.
        message: Vec<u8>,
        /// Its ERR code.
        code: ErrorCode,
        /// Why (for logs; never sent).
        reason: String,
    },
    /// 4xx: the request is not a MIKEY message the KMS can answer.
    BadRequest(String),
    /// 5xx: the KMS failed (Zn, store, key ring).
    Failed(String),
}

/// Replay cache bounded by the skew window (RFC 3830 §5.4); the KMS's and each UE's
/// ([`crate::ue::Ue`]).
#[derive(Default)]
pub(crate) struct Replay {
    seen: HashMap<(u32, u64, Vec<u8>), u64>,
    high_water: usize,
}

impl Replay {
    /// [`tk::check_fresh`] of `m` at `now_s` (UNIX seconds) within ±`skew` seconds, the
    /// message remembered until its time leaves the window ([`ReplayAt`]).
    pub(crate) fn check_fresh(&mut self, m: &Message, now_s: u64, skew: u64) -> Result<(), KmsError> {
        // A T that does not read as a time is refused by `check_fresh` before any insert.
        let sent = tk::t_of(m).ok().as_ref().and_then(unix_of).unwrap_or(0);
        let mut at = ReplayAt { r: self, oldest: now_s.saturating_sub(skew), sent };
        tk::check_fresh(m, now_s.saturating_add(crate::tp_data::NTP_UNIX_OFFSET), skew, &mut at)?;
        Ok(())
    }

    /// Messages remembered.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.seen.len()
    }
}

/// The replay cache at one message: `oldest` is the earliest time (UNIX seconds) a message
/// may carry and still pass the skew check; `sent` the time of this message's T, read with
/// its own timestamp type (NTP-UTC or NTP-UTC-32, RFC 3830 §6.6: the cache is handed only
/// the value, whose meaning depends on the type). An entry is kept while its time can still
/// pass the skew check, so a pruned entry can no longer be replayed.
struct ReplayAt<'a> {
    r: &'a mut Replay,
    oldest: u64,
    sent: u64,
}

impl ReplayCache for ReplayAt<'_> {
    fn insert(&mut self, csb_id: u32, timestamp: u64, mac: &[u8]) -> bool {
        if self.r.seen.len() > self.r.high_water.max(1024) {
            let oldest = self.oldest;
            self.r.seen.retain(|_, t| *t >= oldest);
            self.r.high_water = self.r.seen.len() * 2;
        }
        self.r.seen.insert((csb_id, timestamp, mac.to_vec()), self.sent).is_none()
    }
}

/// The KMS.
pub struct Kms {
    cfg: KmsConfig,
    policies: RwLock<Arc<Policies>>,
    users: RwLock<Arc<Users>>,
    ring: RwLock<Arc<KeyRing>>,
    replay: Mutex<Replay>,
    random: Random,
}

fn rejected(code: ErrorCode, reason: impl Into<String>) -> KmsError {
    KmsError::mikey(code, reason)
}

fn btid_of(m: &Message) -> Result<String, KmsError> {
    let id = m
        .find(|p| match p {
            Payload::Idr(i) if i.role == IdRole::PSK => Some(i.data.clone()),
            _ => None,
        })
        .ok_or_else(|| rejected(ErrorCode::INVALID_ID, "no IDRpsk (B-TID)"))?;
    String::from_utf8(id).map_err(|_| rejected(ErrorCode::INVALID_ID, "IDRpsk is not a B-TID"))
}

fn uid_of(m: &Message, role: IdRole, what: &str) -> Result<KmsUid, KmsError> {
    let id = tk::id_of(m, role);
    if id.is_empty() {
        return Err(rejected(ErrorCode::INVALID_ID, format!("no {what}")));
    }
    let s = String::from_utf8(id).map_err(|_| rejected(ErrorCode::INVALID_ID, format!("{what} is not UTF-8")))?;
    KmsUid::parse(&s).map_err(|e| rejected(ErrorCode::INVALID_ID, format!("{what}: {e}")))
}

pub(crate) fn rand_payload(ticket: &Ticket) -> Result<Vec<u8>, KmsError> {
    BaseTicketData::decode(&ticket.ticket_data, 0)?
        .payloads
        .iter()
        .find_map(|p| if let Payload::Rand(r) = p { Some(r.rand.clone()) } else { None })
        .ok_or_else(|| rejected(ErrorCode::INVALID_TICKET, "no RAND in ticket"))
}

pub(crate) fn key_id_of(ticket: &Ticket) -> Result<u32, KmsError> {
    let td = BaseTicketData::decode(&ticket.ticket_data, 0)?;
    <[u8; 4]>::try_from(td.thdr_data.as_slice()).map(u32::from_be_bytes).map_err(|_| rejected(ErrorCode::INVALID_TICKET, "THDR is not a key id"))
}

/// Keys of a resolved ticket for `responder`: `MPKi || [MPKr'] || TGK(')` (RFC 6043 §5.3),
/// forked to the responder's identity and a fresh RANDRkms when the ticket has the I flag
/// (after checking the Initiator Data Vr, §6.11). Returns the keys and the modifier whose
/// IDRr (and RANDRkms) the RESOLVE_RESP carries.
fn resolved_keys(ticket: &Ticket, content: &TicketContent, responder: &KmsUid, randrkms: [u8; 16]) -> Result<(Vec<KeyData>, ForkModifier), KmsError> {
    let rand = rand_payload(ticket)?;
    let forks = forking::is_forking(ticket);
    if forks {
        let (_, mpkr) = tk::mpk_i_r(&content.mpk, &rand)?;
        forking::verify_initiator_data(ticket, &mpkr)?;
    }
    let fork = ForkModifier { id_r: responder.as_str().as_bytes().to_vec(), id_type: IdType::NAI, randrkms: forks.then(|| randrkms.to_vec()) };
    let keys = forking::resolve_resp_keys(content, &rand, &key_id_of(ticket)?.to_be_bytes(), forks.then_some(&fork))?;
    Ok((keys, fork))
}

impl Kms {
    /// A KMS with its policies and key ring.
    pub fn new(cfg: KmsConfig, policies: Policies, users: Users, ring: KeyRing, random: Random) -> Self {
        Self { cfg, policies: RwLock::new(Arc::new(policies)), users: RwLock::new(Arc::new(users)), ring: RwLock::new(Arc::new(ring)), replay: Mutex::default(), random }
    }

    /// The ring key id a RESOLVE_INIT's KMS-made ticket names, when this KMS does not hold
    /// it (a replica that has not yet seen a rotation should re-read its store).
    pub fn missing_ticket_key(&self, body: &[u8]) -> Option<u32> {
        let m = Message::decode(body).ok()?;
        let t = tk::ticket_of(&m).ok()?;
        if !t.policy.flags.contains(TicketFlags::D) {
            return None;
        }
        let id = key_id_of(&t).ok()?;
        self.ring().get(id).is_none().then_some(id)
    }

    /// The configuration.
    pub fn config(&self) -> &KmsConfig {
        &self.cfg
    }

    /// Replaces the policies (admin API, store reload).
    pub fn set_policies(&self, p: Policies) {
        if let Ok(mut w) = self.policies.write() {
            *w = Arc::new(p);
        }
    }

    /// The policies in force.
    pub fn policies(&self) -> Arc<Policies> {
        self.policies.read().map(|p| Arc::clone(&p)).unwrap_or_default()
    }

    /// Replaces the provisioned users (admin API, store reload).
    pub fn set_users(&self, u: Users) {
        if let Ok(mut w) = self.users.write() {
            *w = Arc::new(u);
        }
    }

    /// The provisioned users.
    pub fn users(&self) -> Arc<Users> {
        self.users.read().map(|u| Arc::clone(&u)).unwrap_or_default()
    }

    /// Replaces the key ring (rotation, store reload).
    pub fn set_ring(&self, r: KeyRing) {
        if let Ok(mut w) = self.ring.write() {
            *w = Arc::new(r);
        }
    }

    /// The key ring in force.
    pub fn ring(&self) -> Arc<KeyRing> {
        self.ring.read().map(|r| Arc::clone(&r)).unwrap_or_default()
    }

    /// Opens a KMS-made ticket with the ring key its THDR names (unknown id → ERR 14, bad
    /// MAC → ERR 0; docs/ticket-profile.md). Used by Ticket Resolve and by LI key release.
    pub(crate) fn open_ring(&self, ticket: &Ticket) -> Result<TicketContent, KmsError> {
        let ring = self.ring();
        Ok(tk::open_ticket(ticket, |id| ring.get(id).and_then(|k| k.key().ok()).map(|k| k.to_vec()))?)
    }

    /// Fills `b` from the KMS's random source.
    pub(crate) fn fill_random(&self, b: &mut [u8]) {
        (self.random)(b);
    }

    fn random<const N: usize>(&self) -> Zeroizing<[u8; N]> {
        let mut b = Zeroizing::new([0u8; N]);
        (self.random)(&mut *b);
        b
    }

    fn fresh(&self, m: &Message, now: Duration) -> Result<(), KmsError> {
        let mut r = self.replay.lock().map_err(|_| KmsError::Config("replay cache poisoned".into()))?;
        r.check_fresh(m, now.as_secs(), self.cfg.skew)
    }

    /// The answer: the response, or a MIKEY Error message (docs/ticket-profile.md decision
    /// 13: MACed with the response-direction `auth_key` once the request's MAC verified,
    /// unprotected before that and for ERR 0).
    fn reply(&self, failed: &CommonHeader, now: Duration, r: Result<Vec<u8>, KmsError>, auth_key: Option<&[u8]>) -> Reply {
        match r {
            Ok(b) => Reply::Response(b),
            Err(KmsError::Mikey { code, reason }) => match error_message::reply(
                failed,
                ntp(now),
                &mediasec_mikey::Error::Rejected { code, reason: reason.clone() },
                auth_key.map(|auth_key| ErrorKey { mac: tk::MAC, auth_key }),
            ) {
                Ok(message) => Reply::Error { message, code, reason },
                Err(e) => Reply::Failed(format!("building the error message: {e}")),
            },
            Err(e) => Reply::Failed(e.to_string()),
        }
    }

    fn decode(body: &[u8], dt: DataType) -> Result<Message, Reply> {
        let m = Message::decode(body).map_err(|e| Reply::BadRequest(format!("not a MIKEY message: {e}")))?;
        if m.header.data_type != dt {
            return Err(Reply::BadRequest(format!("expected {dt:?}, got {:?}", m.header.data_type)));
        }
        Ok(m)
    }

    /// Authenticates a REQUEST_INIT_PSK / RESOLVE_INIT_PSK (Annex B steps 1–5): B-TID from
    /// IDRpsk → Ks_NAF and IMPUs over Zn → MAC check (Table 5.2 input) → freshness.
    /// Once the MAC verified, `err_key` holds the auth_key errors are MACed with.
    /// Returns the NAF key, the RAND of the request and the response-direction keys.
    async fn authenticate(&self, m: &Message, body: &[u8], now: Duration, zn: &dyn Zn, err_key: &mut Option<Secret>) -> Result<(Arc<NafKey>, Vec<u8>, MessageKeys), KmsError> {
        if m.header.prf != tk::PRF {
            return Err(rejected(ErrorCode::INVALID_PRF, format!("PRF {:?} not accepted", m.header.prf)));
        }
        let btid = btid_of(m)?;
        let naf = zn.naf_key(&btid, now.as_secs()).await?.ok_or_else(|| rejected(ErrorCode::AUTH_FAILURE, "unknown or expired B-TID: bootstrap again"))?;
        let request = m.header.data_type == DataType::REQUEST_INIT_PSK;
        let (role, who) = if request { (RandRole::INITIATOR, IdRole::INITIATOR) } else { (RandRole::RESPONDER, IdRole::RESPONDER) };
        let rand = tk::rand_of(m, role).ok_or_else(|| rejected(ErrorCode::UNSPECIFIED, format!("no {role:?}")))?;
        let (ri, rr) = if request { (Some(rand.as_slice()), None) } else { (None, Some(rand.as_slice())) };
        let k = tk::message_keys(&naf.ks_naf, m.header.csb_id, Direction::Initial, ri, rr)?;
        tk::verify_v_decoded(body, m, &k.auth_key, &[&tk::id_of(m, who), &tk::id_of(m, IdRole::KMS)])?;
        let rk = tk::message_keys(&naf.ks_naf, m.header.csb_id, Direction::Response, ri, rr)?;
        *err_key = Some(rk.auth_key.clone());
        self.fresh(m, now)?;
        let kms = tk::id_of(m, IdRole::KMS);
        if !kms.is_empty() && kms != self.cfg.fqdn.as_bytes() {
            return Err(rejected(ErrorCode::INVALID_ID, "IDRkms names another KMS"));
        }
        Ok((naf, rand, rk))
    }

    /// Ticket Request (Annex B.1): `body` is a REQUEST_INIT_PSK.
    pub async fn ticket_request(&self, body: &[u8], now: Duration, zn: &dyn Zn) -> Reply {
        let m = match Self::decode(body, DataType::REQUEST_INIT_PSK) {
            Ok(m) => m,
            Err(r) => return r,
        };
        let mut key = None;
        let r = self.request_inner(&m, body, now, zn, &mut key).await;
        self.reply(&m.header, now, r, key.as_deref().map(Vec::as_slice))
    }

    async fn request_inner(&self, m: &Message, body: &[u8], now: Duration, zn: &dyn Zn, err_key: &mut Option<Secret>) -> Result<Vec<u8>, KmsError> {
        let (naf, _, rk) = self.authenticate(m, body, now, zn, err_key).await?;
        let requester = uid_of(m, IdRole::INITIATOR, "IDRi")?;
        if !naf.uids(&self.cfg.domain).contains(&requester) {
            return Err(rejected(ErrorCode::INVALID_ID, format!("{requester} is not one of the user's IMPUs")));
        }
        if !self.users().allows(&requester) {
            return Err(rejected(ErrorCode::INVALID_ID, format!("{requester} is not an enabled user of this KMS")));
        }
        let tp = m
            .find(|p| if let Payload::Tp(t) = p { Some(t.clone()) } else { None })
            .ok_or_else(|| rejected(ErrorCode::INVALID_TPPAR, "no TP payload"))?;
        if tp.ticket_type != TicketType::THREE_GPP || tp.subtype != 0 || tp.version != 0 {
            return Err(rejected(ErrorCode::INVALID_TICKET, format!("ticket {:?}/{}/{} not supported", tp.ticket_type, tp.subtype, tp.version)));
        }
        tp.flags.check().map_err(|e| rejected(ErrorCode::INVALID_TPPAR, e))?;
        if !tp.flags.contains(TicketFlags::D) || tp.flags.contains(TicketFlags::K) {
            return Err(rejected(ErrorCode::INVALID_TPPAR, "a Ticket Request asks for a KMS-made ticket (D = 1, K = 0)"));
        }
        let asked = TpData::decode(&tp.data)?;
        let req = Requested {
            recipients: asked.recipients.clone(),
            reusable: tp.flags.contains(TicketFlags::J),
            forking: tp.flags.contains(TicketFlags::I),
            end: asked.end,
        };
        let granted = self.policies().effective(&requester).grant(&req, now.as_secs(), true)?;
        let mut flags = TicketFlags(tp.flags.0 & !(TicketFlags::J.0 | TicketFlags::I.0));
        if granted.reusable {
            flags = flags.with(TicketFlags::J);
        }
        if granted.forking {
            flags = flags.with(TicketFlags::I);
        }
        if granted.changed {
            flags = flags.with(TicketFlags::K);
        }
        let data = TpData {
            kms: Some(self.cfg.fqdn.clone()),
            initiator: Some(requester.clone()),
            psk: None,
            start: Some(now.as_secs()),
            end: Some(granted.end),
            recipients: granted.recipients.clone(),
        };
        let policy = TicketPolicy { flags, data: data.encode()?, reserved: 0, ..tp };
        let ring = self.ring();
        let tpk_entry = ring.newest().ok_or_else(|| KmsError::KeyRing("the key ring is empty".into()))?;
        let tpk = tpk_entry.key()?;
        let mpk = self.random::<16>();
        let tgk = self.random::<16>();
        let rand = self.random::<16>();
        let content = TicketContent { mpk: mpk.to_vec(), keys: vec![tk::key(KeyType::TGK, &*tgk, &TGK_SPI)] };
        let t = ntp(now);
        let ticket = tk::issue_ticket(policy, &tpk, tpk_entry.id, t, &*rand, &content)?;
        let keys = forking::request_resp_keys(&content, &*rand, &tpk_entry.id.to_be_bytes(), granted.forking)?;
        let kemac = tk::kemac(&rk, m.header.csb_id, &t, &keys)?;
        let resp = Message {
            header: CommonHeader { data_type: DataType::REQUEST_RESP, v_flag: false, ..m.header.clone() },
            payloads: vec![Payload::T(t), tk::idr(IdRole::KMS, IdType::NAI, self.cfg.fqdn.as_bytes()), Payload::Ticket(ticket), kemac],
        };
        debug!(%requester, recipients = ?granted.recipients, notes = ?granted.notes, "ticket issued");
        Ok(tk::seal(resp, &rk.auth_key, &[body])?)
    }

    /// Ticket Resolve from a UE (Annex B.2.2; B.2.3 when another KMS issued the ticket).
    pub async fn ticket_resolve(&self, body: &[u8], now: Duration, zn: &dyn Zn, peers: &dyn Peers) -> Reply {
        let m = match Self::decode(body, DataType::RESOLVE_INIT_PSK) {
            Ok(m) => m,
            Err(r) => return r,
        };
        let mut key = None;
        let r = self.resolve_inner(&m, body, now, zn, peers, &mut key).await;
        self.reply(&m.header, now, r, key.as_deref().map(Vec::as_slice))
    }

    async fn resolve_inner(&self, m: &Message, body: &[u8], now: Duration, zn: &dyn Zn, peers: &dyn Peers, err_key: &mut Option<Secret>) -> Result<Vec<u8>, KmsError> {
        let (naf, randrr, rk) = self.authenticate(m, body, now, zn, err_key).await?;
        let ticket = tk::ticket_of(m)?;
        let data = TpData::decode(&ticket.policy.data)?;
        let users = self.users();
        let uids: Vec<KmsUid> = naf.uids(&self.cfg.domain).into_iter().filter(|u| users.allows(u)).collect();
        let matched = data
            .authorised(&uids)
            .cloned()
            .ok_or_else(|| rejected(ErrorCode::INVALID_ID, "none of the requester's KMS UIDs is an allowed recipient of the ticket"))?;
        let issuer = data.kms.clone().ok_or_else(|| rejected(ErrorCode::INVALID_TICKET, "ticket names no KMS (IDRkms)"))?;
        let (keys, fork) = if issuer == self.cfg.fqdn {
            self.open_local(&ticket, &data, &matched, now, zn).await?
        } else {
            self.forward(peers, &issuer, m, &ticket, &matched, &randrr, now).await?
        };
        let t = ntp(now);
        let kemac = tk::kemac(&rk, m.header.csb_id, &t, &keys)?;
        let mut payloads = vec![Payload::T(t), tk::idr(IdRole::KMS, IdType::NAI, self.cfg.fqdn.as_bytes()), kemac];
        payloads.extend(fork.payloads());
        let resp = Message { header: CommonHeader { data_type: DataType::RESOLVE_RESP, v_flag: false, ..m.header.clone() }, payloads };
        debug!(responder = %matched, %issuer, forked = fork.randrkms.is_some(), "ticket resolved");
        Ok(tk::seal(resp, &rk.auth_key, &[body])?)
    }

    /// Opens a ticket this KMS can open: a KMS-made ticket under a ring key, or a UE-made
    /// (mode 3) ticket under its creator's Ks_NAF when the creator is a provisioned, enabled
    /// user (making a ticket is using the KMS, as a Ticket Request is) whose policy allows
    /// mode 3 and allows calling `responder`.
    async fn open_local(&self, ticket: &Ticket, data: &TpData, responder: &KmsUid, now: Duration, zn: &dyn Zn) -> Result<(Vec<KeyData>, ForkModifier), KmsError> {
        let now_s = now.as_secs();
        if data.end.is_some_and(|e| e < now_s) {
            return Err(rejected(ErrorCode::INVALID_TICKET, "ticket expired"));
        }
        if data.start.is_some_and(|s| s > now_s.saturating_add(self.cfg.skew)) {
            return Err(rejected(ErrorCode::INVALID_TICKET, "ticket not yet valid"));
        }
        let content = if ticket.policy.flags.contains(TicketFlags::D) {
            self.open_ring(ticket)?
        } else {
            let (creator, btid) = self.ue_made_checks(data, now_s)?;
            // Checked here, not in `ue_made_checks`: LI releases calls made while the
            // creator was enabled.
            if !self.users().allows(&creator) {
                return Err(rejected(ErrorCode::INVALID_TICKET, format!("UE-made ticket of {creator}, who is not an enabled user of this KMS")));
            }
            if !self.policies().effective(&creator).may_call(&responder.clone().into()) {
                return Err(rejected(ErrorCode::INVALID_TPPAR, format!("{creator} may not call {responder}")));
            }
            let nk = zn.naf_key(btid, now_s).await?;
            self.open_ue_made(ticket, &creator, nk.as_deref())?
        };
        resolved_keys(ticket, &content, responder, *self.random::<16>())
    }

    /// The checks of a UE-made (mode 3) ticket (RFC 6043 §4.1, TS 33.328 Annex D.4) that need
    /// no key: its creator (IDRi) may make tickets by policy and gave it a validity within the
    /// policy lifetime at `now_s`, and it names the creator's bootstrap (IDRpsk). Returns the
    /// creator and that B-TID, whose Ks_NAF for this KMS (over Zn) opens the ticket.
    pub(crate) fn ue_made_checks<'d>(&self, data: &'d TpData, now_s: u64) -> Result<(KmsUid, &'d str), KmsError> {
        let creator = data.initiator.clone().ok_or_else(|| rejected(ErrorCode::INVALID_TICKET, "UE-made ticket names no creator (IDRi)"))?;
        let eff = self.policies().effective(&creator);
        if !eff.mode3 {
            return Err(rejected(ErrorCode::INVALID_TPPAR, format!("policy does not allow UE-made tickets for {creator}")));
        }
        if data.end.is_none_or(|e| e > now_s.saturating_add(eff.ticket_lifetime)) {
            return Err(rejected(ErrorCode::INVALID_TPPAR, "UE-made ticket validity missing or beyond the policy lifetime"));
        }
        let btid = data.psk.as_deref().ok_or_else(|| rejected(ErrorCode::INVALID_TICKET, "UE-made ticket names no B-TID (IDRpsk)"))?;
        Ok((creator, btid))
    }

    /// Opens a UE-made ticket of `creator` under `creator_key`, the Zn answer for its B-TID
    /// (`None`: the bootstrap is unknown or expired), which must list `creator` among its
    /// identities: its TPK is that Ks_NAF, under key id [`MODE3_KEY_ID`].
    pub(crate) fn open_ue_made(&self, ticket: &Ticket, creator: &KmsUid, creator_key: Option<&NafKey>) -> Result<TicketContent, KmsError> {
        let nk = creator_key.ok_or_else(|| rejected(ErrorCode::INVALID_TICKET, "the creator's bootstrap is unknown or expired"))?;
        if !nk.uids(&self.cfg.domain).contains(creator) {
            return Err(rejected(ErrorCode::INVALID_TICKET, format!("{creator} is not an identity of the ticket's B-TID")));
        }
        Ok(tk::open_ticket(ticket, |id| (id == MODE3_KEY_ID).then(|| nk.ks_naf.to_vec()))?)
    }

    /// KMS_R side of B.2.3: re-sends the resolve, unprotected, to the issuing KMS over Zk
    /// (mutually authenticated TLS) with the same TICKET and the matching KMS UID as IDRr.
    #[allow(clippy::too_many_arguments)]
    async fn forward(&self, peers: &dyn Peers, issuer: &str, m: &Message, ticket: &Ticket, responder: &KmsUid, randrr: &[u8], now: Duration) -> Result<(Vec<KeyData>, ForkModifier), KmsError> {
        if !peers.knows(issuer) {
            return Err(rejected(ErrorCode::INVALID_TICKET, format!("ticket issued by {issuer}, which is not a Zk peer")));
        }
        let fwd = Message {
            header: tk::header(DataType::RESOLVE_INIT_PSK, true, m.header.csb_id, CsIdMap::Empty { n_cs: 0 }),
            payloads: vec![
                Payload::T(ntp(now)),
                tk::randr(RandRole::RESPONDER, randrr),
                tk::idr(IdRole::RESPONDER, IdType::NAI, responder.as_str().as_bytes()),
                tk::idr(IdRole::KMS, IdType::NAI, issuer.as_bytes()),
                Payload::Ticket(ticket.clone()),
            ],
        }
        .encode()?;
        let answer = peers.resolve(issuer, fwd).await.map_err(|e| rejected(ErrorCode::UNSPECIFIED, format!("peer KMS {issuer}: {e}")))?;
        let r = Message::decode(&answer).map_err(|e| rejected(ErrorCode::UNSPECIFIED, format!("peer KMS {issuer} answered garbage: {e}")))?;
        if r.header.data_type == DataType::ERROR {
            let code = r.find(|p| if let Payload::Err(e) = p { Some(e.code) } else { None }).unwrap_or(ErrorCode::UNSPECIFIED);
            return Err(rejected(code, format!("peer KMS {issuer} refused the resolve")));
        }
        if r.header.data_type != DataType::RESOLVE_RESP || r.header.csb_id != m.header.csb_id {
            return Err(rejected(ErrorCode::UNSPECIFIED, format!("peer KMS {issuer} answered {:?}", r.header.data_type)));
        }
        let fork = ForkModifier::of(&r)?;
        if fork.id_r != responder.as_str().as_bytes() || fork.randrkms.is_some() != forking::is_forking(ticket) {
            return Err(rejected(ErrorCode::UNSPECIFIED, format!("peer KMS {issuer} answered for another responder or fork")));
        }
        let kemac = r
            .find(|p| if let Payload::Kemac(k) = p { Some(k.clone()) } else { None })
            .filter(|k| k.encr_alg == EncrAlg::NULL)
            .ok_or_else(|| rejected(ErrorCode::UNSPECIFIED, format!("peer KMS {issuer}: no clear KEMAC")))?;
        let keys = Zeroizing::new(kemac.encr_data);
        let keys = decode_payloads(&keys, PayloadType::KEY_DATA, 0)?
            .into_iter()
            .map(|p| match p {
                Payload::KeyData(k) => Ok(k),
                _ => Err(rejected(ErrorCode::UNSPECIFIED, format!("peer KMS {issuer}: not key data in KEMAC"))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((keys, fork))
    }

    /// KMS_I side of B.2.3: a RESOLVE_INIT from the KMS of domain `peer` (already
    /// authenticated by mutual TLS and on the allow-list), unprotected; answers an
    /// unprotected RESOLVE_RESP (KEMAC in clear, no MAC) or an Error message. Trust is hop by
    /// hop: a peer vouches only for responders of its own domain *(ours)*.
    pub async fn peer_resolve(&self, peer: &str, body: &[u8], now: Duration, zn: &dyn Zn) -> Reply {
        let m = match Self::decode(body, DataType::RESOLVE_INIT_PSK) {
            Ok(m) => m,
            Err(r) => return r,
        };
        let r = self.peer_resolve_inner(peer, &m, now, zn).await;
        self.reply(&m.header, now, r, None)
    }

    async fn peer_resolve_inner(&self, peer: &str, m: &Message, now: Duration, zn: &dyn Zn) -> Result<Vec<u8>, KmsError> {
        self.fresh(m, now)?;
        let responder = uid_of(m, IdRole::RESPONDER, "IDRr")?;
        if !responder.domain().eq_ignore_ascii_case(peer) {
            return Err(rejected(ErrorCode::INVALID_ID, format!("the KMS of {peer} cannot vouch for {responder}")));
        }
        let ticket = tk::ticket_of(m)?;
        let data = TpData::decode(&ticket.policy.data)?;
        if data.kms.as_deref() != Some(self.cfg.fqdn.as_str()) {
            return Err(rejected(ErrorCode::INVALID_TICKET, "ticket not issued by this KMS"));
        }
        if data.authorised(std::slice::from_ref(&responder)).is_none() {
            return Err(rejected(ErrorCode::INVALID_ID, format!("{responder} (via {peer}) is not an allowed recipient")));
        }
        let (keys, fork) = self.open_local(&ticket, &data, &responder, now, zn).await?;
        let kemac = Kemac { encr_alg: EncrAlg::NULL, encr_data: encode_key_data(&keys)?, mac_alg: MacAlg::NULL, mac: Vec::new() };
        debug!(%responder, %peer, "ticket resolved for a peer KMS");
        Ok(Message {
            header: CommonHeader { data_type: DataType::RESOLVE_RESP, v_flag: false, ..m.header.clone() },
            payloads: [Payload::T(ntp(now)), tk::idr(IdRole::KMS, IdType::NAI, self.cfg.fqdn.as_bytes()), Payload::Kemac(kemac)].into_iter().chain(fork.payloads()).collect(),
        }
        .encode()?)
    }
}

#[cfg(test)]
#[path = "kms_tests.rs"]
mod tests;
