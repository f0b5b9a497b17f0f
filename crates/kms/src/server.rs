//! The KMS as an HTTP service (axum): Ua per TS 33.328 Annex A
//! (`POST /keymanagement?requesttype=ticketrequest|ticketresolve`, `Content-Type:
//! application/mikey`, base64 body; 200 with the response or a MIKEY Error message, 4xx when
//! the client erred, 5xx when the KMS did), the Ua extension `requesttype=keyprovision` and
//! `GET /keymanagement/kpak` *(ours: ECCSI signing keys, [`crate::keyprov`])*, the admin API (bearer token; docs/openapi/kms-admin.yaml),
//! `/metrics` (Prometheus text) and `tracing` spans with a request id; over HTTP or HTTPS.
//! The LI API (`/li/v1/…`, docs/openapi/kms-li.yaml) answers 404 unless an LI token was
//! set ([`Service::enable_li`]); it has its own two tokens, audit trail and no metrics, and is
//! served over HTTPS only ([`serve_tls`]; [`serve`] refuses to start with LI on, and never
//! routes `/li/v1`).

use std::sync::{Arc, OnceLock};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use subtle::ConstantTimeEq;
use tracing::{Instrument, info, info_span, warn};

use crate::community::{Communities, Community, Source};
use crate::error::KmsError;
use crate::identity::KmsUid;
use crate::keyprov;
use crate::signing_keys::{Provisioner, ProvRefusal};
use crate::kms::{Kms, KmsConfig, Peers, Random, Reply};
use crate::li::{LiAuditEntry, Refusal, Warrant};
use crate::persist::{Persist, Scope};
use crate::policy::{Policies, Rules};
use crate::users::User;
use crate::zn::{Zn, ZnCache};

/// MIME type of Ua bodies (TS 33.328 Annex A).
pub const CONTENT_TYPE: &str = "application/mikey";

/// What a request is, for metrics and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Ua ticketrequest.
    TicketRequest,
    /// Ua ticketresolve.
    TicketResolve,
    /// Zk resolve from a peer KMS.
    PeerResolve,
    /// Ua keyprovision (ours).
    KeyProvision,
}

impl Kind {
    const ALL: [Self; 4] = [Self::TicketRequest, Self::TicketResolve, Self::PeerResolve, Self::KeyProvision];
    fn name(self) -> &'static str {
        match self {
            Self::TicketRequest => "ticketrequest",
            Self::TicketResolve => "ticketresolve",
            Self::PeerResolve => "zk_resolve",
            Self::KeyProvision => "keyprovision",
        }
    }
}

const OUTCOMES: [&str; 4] = ["ok", "mikey_error", "client_error", "kms_error"];
/// Histogram bucket bounds in seconds.
const BUCKETS: [f64; 11] = [0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0];

/// Reasons a keyprovision request is refused ([`ProvRefusal::label`]).
const REFUSALS: [&str; 5] = ["malformed", "unauthenticated", "replayed", "forbidden", "kms_error"];

#[derive(Default)]
struct Metrics {
    outcomes: [[AtomicU64; 4]; 4],
    buckets: [[AtomicU64; BUCKETS.len()]; 4],
    sum_us: [AtomicU64; 4],
    count: [AtomicU64; 4],
    keyprov_refusals: [AtomicU64; REFUSALS.len()],
}

impl Metrics {
    fn record(&self, kind: Kind, outcome: usize, took: Duration) {
        let k = kind as usize;
        let Some(o) = self.outcomes.get(k).and_then(|r| r.get(outcome)) else { return };
        o.fetch_add(1, Ordering::Relaxed);
        let secs = took.as_secs_f64();
        if let Some(b) = self.buckets.get(k) {
            for (bound, c) in BUCKETS.iter().zip(b) {
                if secs <= *bound {
                    c.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if let (Some(s), Some(c)) = (self.sum_us.get(k), self.count.get(k)) {
            s.fetch_add(u64::try_from(took.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn render(&self) -> String {
        let mut s = String::from("# HELP mediasec_kms_requests_total KMS requests by type and outcome\n# TYPE mediasec_kms_requests_total counter\n");
        for (kind, row) in Kind::ALL.iter().zip(&self.outcomes) {
            for (o, c) in OUTCOMES.iter().zip(row) {
                s.push_str(&format!("mediasec_kms_requests_total{{type=\"{}\",outcome=\"{o}\"}} {}\n", kind.name(), c.load(Ordering::Relaxed)));
            }
        }
        s.push_str("# HELP mediasec_kms_request_seconds KMS request latency\n# TYPE mediasec_kms_request_seconds histogram\n");
        for (i, kind) in Kind::ALL.iter().enumerate() {
            let n = kind.name();
            if let Some(b) = self.buckets.get(i) {
                for (bound, c) in BUCKETS.iter().zip(b) {
                    s.push_str(&format!("mediasec_kms_request_seconds_bucket{{type=\"{n}\",le=\"{bound}\"}} {}\n", c.load(Ordering::Relaxed)));
                }
            }
            let count = self.count.get(i).map_or(0, |c| c.load(Ordering::Relaxed));
            let sum = self.sum_us.get(i).map_or(0, |c| c.load(Ordering::Relaxed));
            s.push_str(&format!("mediasec_kms_request_seconds_bucket{{type=\"{n}\",le=\"+Inf\"}} {count}\n"));
            s.push_str(&format!("mediasec_kms_request_seconds_sum{{type=\"{n}\"}} {}\n", sum as f64 / 1e6));
            s.push_str(&format!("mediasec_kms_request_seconds_count{{type=\"{n}\"}} {count}\n"));
        }
        s.push_str("# HELP mediasec_kms_keyprov_refusals_total keyprovision requests refused, by reason\n# TYPE mediasec_kms_keyprov_refusals_total counter\n");
        for (reason, c) in REFUSALS.iter().zip(&self.keyprov_refusals) {
            s.push_str(&format!("mediasec_kms_keyprov_refusals_total{{reason=\"{reason}\"}} {}\n", c.load(Ordering::Relaxed)));
        }
        s
    }

    fn refused(&self, r: &ProvRefusal) {
        if let Some(c) = REFUSALS.iter().position(|l| *l == r.label()).and_then(|i| self.keyprov_refusals.get(i)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The running KMS service.
pub struct Service {
    kms: Kms,
    prov: Provisioner,
    zn: ZnCache,
    peers: Arc<dyn Peers>,
    persist: Persist,
    /// External KMS communities (configured, learned over Zk).
    communities: Communities,
    admin_token: String,
    li_tokens: OnceLock<LiTokens>,
    metrics: Metrics,
    next_id: AtomicU64,
    last_reload_ms: AtomicU64,
    /// When the community key generations were last read from the store.
    generations_read_ms: AtomicU64,
}

/// How often a KMS re-reads its community key generations (a rotation made by another
/// replica or by `mediasec kms community-keys rotate`), milliseconds.
const GENERATIONS_REFRESH_MS: u64 = 60_000;

fn now() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default()
}

fn text(status: StatusCode, reason: &str) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain")], format!("{reason}\n")).into_response()
}

fn internal(e: &KmsError) -> Response {
    warn!(error = %e, "KMS error");
    text(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string())
}

fn bearer_ok(headers: &HeaderMap, token: &str) -> bool {
    let got = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).unwrap_or_default();
    !token.is_empty() && got.len() == token.len() && bool::from(got.as_bytes().ct_eq(token.as_bytes()))
}

impl Service {
    /// Loads users, policies, the key ring (making a first key if the ring is empty) and the
    /// ECCSI KSAK (making it on first start) from `persist` and builds the service.
    pub async fn start(cfg: KmsConfig, persist: Persist, zn: Arc<dyn Zn>, peers: Arc<dyn Peers>, admin_token: String, random: Random) -> Result<Arc<Self>, KmsError> {
        crate::rekey::check_not_rotating(persist.store(), persist.keys()).await?;
        let ring = persist.ring_or_init(now().as_secs(), &*random).await?;
        let prov = Provisioner::with_generations(persist.generations_or_init(now_ms(), &*random).await?);
        let kms = Kms::new(cfg, persist.policies().await?, persist.users().await?, ring, random);
        Ok(Arc::new(Self { kms, prov, zn: ZnCache::new(zn), peers, persist, communities: Communities::default(), admin_token, li_tokens: OnceLock::new(), metrics: Metrics::default(), next_id: AtomicU64::new(1), last_reload_ms: AtomicU64::new(0), generations_read_ms: AtomicU64::new(now_ms()) }))
    }

    /// Turns the LI API on with its two bearer tokens (docs/li.md "Two LI credentials"):
    /// `warrants` for warrant provisioning and the LI audit trail (X1-like), `keys` for key
    /// retrieval (X2-like) — a key-retrieval client cannot create, read or remove warrants,
    /// and a provisioning client gets no keys. Each must be non-empty and differ from the
    /// other and from the admin token; once per service. The API is served by [`serve_tls`]
    /// only: the tokens and the released keys never cross a plain-HTTP listener
    /// ([`LI_NEEDS_TLS`]).
    pub fn enable_li(&self, warrants: String, keys: String) -> Result<(), KmsError> {
        let same = |a: &str, b: &str| bool::from(a.as_bytes().ct_eq(b.as_bytes()));
        if warrants.is_empty() || keys.is_empty() || same(&warrants, &self.admin_token) || same(&keys, &self.admin_token) {
            return Err(KmsError::Config("the LI tokens must be non-empty and differ from the admin token".into()));
        }
        if same(&warrants, &keys) {
            return Err(KmsError::Config("the LI warrant-provisioning and key-retrieval tokens must differ".into()));
        }
        self.li_tokens.set(LiTokens { warrants, keys }).map_err(|_| KmsError::Config("the LI API is already enabled".into()))
    }

    /// The core.
    pub fn kms(&self) -> &Kms {
        &self.kms
    }

    /// The store wiring.
    pub fn persist(&self) -> &Persist {
        &self.persist
    }

    /// LI key release (docs/li.md) of the call of `transfer_init`: a MIKEY-SAKKE I_MESSAGE
    /// through [`crate::signing_keys::Provisioner::li_release_sakke`] (with z), anything else
    /// through [`Kms::li_release`] (tickets; typed refusals for high-security calls). For a
    /// UE-made (mode 3) ticket, the creator's Ks_NAF is looked up over Zn first (as for a
    /// resolution; the target sees nothing of it). A ticket under a ring key this replica
    /// does not hold yet makes it re-read the store first ([`Self::catch_up`]).
    pub async fn li_release(&self, warrant: &Warrant, transfer_init: &[u8], transfer_resp: Option<&[u8]>, now: u64) -> Result<crate::li::Release, KmsError> {
        let read = crate::li::LiTransferInit::read(transfer_init);
        if read.data_type() == Some(mediasec_mikey::registry::DataType::SAKKE) {
            if transfer_resp.is_some() {
                return Err(KmsError::LiInput("transfer_resp: a MIKEY-SAKKE call has no response message".into()));
            }
            return self.li_release_sakke(warrant, &read, now);
        }
        // A ticket under a ring key made at another replica since our last reload: re-read
        // the store first, as a resolve does, or the release would be refused as foreign.
        self.catch_up(transfer_init).await;
        let creator_key = match self.kms.li_ue_made_btid(&read) {
            Some(btid) => self.zn.naf_key(&btid, now).await?,
            None => None,
        };
        self.kms.li_release(warrant, read, transfer_resp, now, creator_key.as_deref())
    }

    /// LI of a MIKEY-SAKKE I_MESSAGE across communities (docs/li.md "Across KMS
    /// communities"): a message whose IDRkmsr names another KMS was encapsulated under that
    /// KMS's Z — refused [`Refusal::OtherCommunity`], this KMS cannot derive the RSK; one whose
    /// IDRkmsi names another KMS is verified under that community's KPAK from its KMS
    /// certificate valid at the I_MESSAGE's T ([`Refusal::UnknownCommunity`] when none is held,
    /// [`KmsError::CertificateNotValid`] when none is valid at T) and its IDRi must be a
    /// user of that community's domains ([`Refusal::InitiatorOutsideCommunity`]); then
    /// [`Provisioner::li_release_sakke`] with our z. The message is the one `read` decoded
    /// (no second decoding).
    fn li_release_sakke(&self, warrant: &Warrant, read: &crate::li::LiTransferInit<'_>, now: u64) -> Result<crate::li::Release, KmsError> {
        warrant.check_active(now)?;
        let i_message = read.sakke().ok_or_else(|| KmsError::LiInput("i_message: not a MIKEY-SAKKE I_MESSAGE (data type 26)".into()))?;
        let (kmsi, kmsr) = mediasec_mikey::mikey_sakke::kms_uris_of(i_message.message()).map_err(|e| KmsError::LiInput(format!("i_message: {e}")))?;
        let own = &self.kms.config().fqdn;
        if let Some(r) = kmsr.as_ref().filter(|r| !r.eq_ignore_ascii_case(own)) {
            return Err(Refusal::OtherCommunity(r.clone()).into());
        }
        let signer = match kmsi.as_ref().filter(|i| !i.eq_ignore_ascii_case(own)) {
            None => None,
            Some(i) => {
                let set = self.communities.get(i);
                let t = crate::li::sakke_time(i_message)?;
                Some(crate::community::at(&set, t)?.ok_or_else(|| Refusal::UnknownCommunity(i.clone()))?.clone())
            }
        };
        if let Some(c) = &signer {
            // An external community vouches only for its own users: the IDRi it signed must be
            // one (a message without IDRi, TS 33.180 UIDs, is refused by the release itself).
            let idri = mediasec_mikey::ticket::id_of(i_message.message(), mediasec_mikey::registry::IdRole::INITIATOR);
            if !idri.is_empty() && !std::str::from_utf8(&idri).is_ok_and(|u| c.vouches_for(u)) {
                return Err(Refusal::InitiatorOutsideCommunity(c.kms_uri().to_owned()).into());
            }
        }
        self.prov.li_release_sakke(&self.kms, warrant, i_message, signer.as_ref().map(Community::kpak), now)
    }

    /// This KMS's own certificate set (docs/high-security.md §10.9, §10.10): one KMS
    /// certificate per generation of its community keys, oldest first (its FQDN, the
    /// generation's KPAK and Z, its window, its user domain).
    pub fn own_certificates(&self) -> Result<Vec<Community>, KmsError> {
        let cfg = self.kms.config();
        let gens = self.prov.generations().ok_or_else(|| KmsError::KeyRing("community keys unavailable".into()))?;
        gens.certificates(&cfg.fqdn, std::slice::from_ref(&cfg.domain))
    }

    /// The generations of this KMS's community keys.
    pub fn generations(&self) -> Option<Arc<crate::generations::Generations>> {
        self.prov.generations()
    }

    /// Rotates the community keys ([`Persist::rotate_community_keys`]): a new generation
    /// valid from `valid_from` (default: the earliest allowed), used at once for the keys of
    /// the months it covers and published in the certificate set.
    pub async fn rotate_community_keys(&self, valid_from: Option<u64>, actor: &str) -> Result<Arc<crate::generations::Generations>, KmsError> {
        let random = |b: &mut [u8]| rand::RngCore::fill_bytes(&mut rand::rng(), b);
        let gens = self.persist.rotate_community_keys(valid_from, now().as_secs(), &random, actor).await?;
        let newest = gens.newest();
        info!(generation = newest.number(), valid_from = %crate::community::fmt_time(newest.valid_from()), "community keys rotated");
        self.prov.set_generations(gens);
        self.prov.generations().ok_or_else(|| KmsError::KeyRing("community keys unavailable".into()))
    }

    /// The known external communities and how each became known.
    pub fn communities(&self) -> Vec<(Community, Source)> {
        self.communities.all()
    }

    /// Adds an operator-configured external KMS certificate set (`--community-cert`, one
    /// KMS's certificates: [`crate::community::decode_set`]).
    pub fn configure_community(&self, set: Vec<Community>) -> Result<(), KmsError> {
        let cfg = self.kms.config();
        if let Some(c) = set.first() {
            info!(kms = c.kms_uri(), domains = ?c.domains(), certificates = set.len(), "KMS certificate configured");
        }
        self.communities.configure(set, &cfg.fqdn, std::slice::from_ref(&cfg.domain))
    }

    /// Fetches the KMS certificate of every Zk peer over the mutually authenticated Zk
    /// channel and learns it ([`Communities::learn`]: the peer's TLS identity is the trust
    /// anchor). Returns each peer's outcome (its KMS URI, or why not); failures are logged
    /// and leave a previously learned certificate in place.
    pub async fn refresh_communities(&self) -> Vec<(String, Result<String, KmsError>)> {
        let cfg = self.kms.config();
        let mut out = Vec::new();
        for peer in self.peers.domains() {
            let got = match self.peers.certificate(&peer).await {
                Ok(json) => crate::community::decode_set(&json).and_then(|set| {
                    let uri = set.first().map(|c| c.kms_uri().to_owned()).unwrap_or_default();
                    self.communities.learn(&peer, set, now().as_secs(), &cfg.fqdn, std::slice::from_ref(&cfg.domain)).map(|()| uri)
                }),
                Err(e) => Err(e),
            };
            match &got {
                Ok(uri) => info!(peer, kms = uri, "KMS certificate learned over Zk"),
                Err(e) => warn!(peer, error = %e, "KMS certificate not learned over Zk"),
            }
            out.push((peer, got));
        }
        out
    }

    /// The certificates handed to UEs with MIKEY-SAKKE keys: our own set (every generation),
    /// then every external one (a failure to make ours leaves the list empty: the UE then
    /// keeps to one community).
    fn certificates(&self) -> Vec<Community> {
        let Ok(mut all) = self.own_certificates() else { return Vec::new() };
        all.extend(self.communities.all().into_iter().map(|(c, _)| c));
        all
    }

    /// The KPAK of this KMS valid now (RFC 6507 §4.2): what UEs of its community verify
    /// signatures of this month with.
    pub fn kpak(&self) -> Option<mediasec_mikey::eccsi::Kpak> {
        self.prov.kpak_at(now().as_secs())
    }

    /// Re-reads users, policies, the key ring and the community key generations from the store (replicas sharing
    /// a database pick up each other's changes).
    pub async fn reload(&self) -> Result<(), KmsError> {
        self.kms.set_policies(self.persist.policies().await?);
        self.kms.set_users(self.persist.users().await?);
        self.kms.set_ring(self.persist.ring().await?);
        if let Some(g) = self.persist.generations().await? {
            self.prov.set_generations(g);
        }
        Ok(())
    }

    /// Re-reads the community key generations when they were read over
    /// [`GENERATIONS_REFRESH_MS`] ago (run before issuing keys and publishing certificates:
    /// a new generation starts at least a month after its creation, so a minute's delay
    /// is harmless); a failure is logged and keeps the generations held.
    pub async fn refresh_generations(&self) {
        let t = now_ms();
        let last = self.generations_read_ms.load(Ordering::Relaxed);
        if t.saturating_sub(last) < GENERATIONS_REFRESH_MS || self.generations_read_ms.compare_exchange(last, t, Ordering::Relaxed, Ordering::Relaxed).is_err() {
            return;
        }
        match self.persist.generations().await {
            Ok(Some(g)) => self.prov.set_generations(g),
            Ok(None) => {}
            Err(e) => warn!(error = %e, "re-reading the community key generations failed"),
        }
    }

    /// Re-reads the store when a ticket names a ring key this replica does not hold (a
    /// rotation made elsewhere), at most once a second so forged key ids cannot load the store.
    async fn catch_up(&self, body: &[u8]) {
        let Some(id) = self.kms.missing_ticket_key(body) else { return };
        let t = now_ms();
        let last = self.last_reload_ms.load(Ordering::Relaxed);
        if t.saturating_sub(last) < 1000 || self.last_reload_ms.compare_exchange(last, t, Ordering::Relaxed, Ordering::Relaxed).is_err() {
            return;
        }
        info!(key_id = id, "ticket under an unknown ring key: re-reading the store");
        if let Err(e) = self.reload().await {
            warn!(error = %e, "reload from the store failed");
        }
    }

    /// Serves a Zk resolve from the authenticated peer KMS of domain `peer` (for the Zk
    /// server): `Ok` with a RESOLVE_RESP or MIKEY Error message (200), or an HTTP status and
    /// reason (400 not a resolve, 503 KMS failure).
    pub async fn peer_resolve(&self, peer: &str, body: &[u8]) -> Result<Vec<u8>, (u16, String)> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        self.catch_up(body).await;
        let reply = self.kms.peer_resolve(peer, body, now(), &self.zn).instrument(info_span!("zk", request_id = id, peer)).await;
        let (outcome, out) = match reply {
            Reply::Response(b) => (0, Ok(b)),
            Reply::Error { message, code, reason } => {
                info!(request_id = id, peer, ?code, reason, "Zk resolve refused");
                (1, Ok(message))
            }
            Reply::BadRequest(r) => (2, Err((400, r))),
            Reply::Failed(r) => {
                warn!(request_id = id, peer, reason = r, "Zk resolve failed");
                (3, Err((503, r)))
            }
        };
        self.metrics.record(Kind::PeerResolve, outcome, started.elapsed());
        out
    }

    /// The axum router; the LI routes only with `li` (a TLS listener).
    fn router(self: &Arc<Self>, li: bool) -> Router {
        let router = Router::new()
            .route("/keymanagement", post(ua))
            .route("/keymanagement/kpak", get(kpak))
            .route("/keymanagement/certificate", get(certificate))
            .route("/metrics", get(metrics))
            .route("/admin/v1/policies", get(policies_get).put(policies_put))
            .route("/admin/v1/policies/defaults", put(defaults_put))
            .route("/admin/v1/policies/domains/{domain}", put(domain_put).delete(domain_delete))
            .route("/admin/v1/policies/users/{uid}", put(user_rules_put).delete(user_rules_delete))
            .route("/admin/v1/users", get(users_get))
            .route("/admin/v1/users/{uid}", put(user_put).delete(user_delete))
            .route("/admin/v1/keys", get(keys_get))
            .route("/admin/v1/keys/rotate", post(keys_rotate))
            .route("/admin/v1/keys/prune", post(keys_prune))
            .route("/admin/v1/audit", get(audit_get))
            .route("/admin/v1/communities", get(communities_get))
            .route("/admin/v1/communities/refresh", post(communities_refresh))
            .route("/admin/v1/community-keys", get(community_keys_get))
            .route("/admin/v1/community-keys/rotate", post(community_keys_rotate));
        let router = if li { router.merge(self.li_router()) } else { router };
        router.with_state(Arc::clone(self))
    }

    /// The LI routes, each behind its interface's guard ([`li_auth`], which also runs before
    /// a 405, so with LI off every method on these paths is a 404).
    fn li_router(self: &Arc<Self>) -> Router<Arc<Self>> {
        let x1 = Router::new()
            .route("/li/v1/warrants", get(warrants_get))
            .route("/li/v1/warrants/{id}", get(warrant_get).put(warrant_put).delete(warrant_delete))
            .route("/li/v1/audit", get(li_audit_get))
            .route_layer(axum::middleware::from_fn_with_state((Arc::clone(self), LiInterface::X1), li_auth));
        let x2 = Router::new().route("/li/v1/keys", post(li_keys)).route_layer(axum::middleware::from_fn_with_state((Arc::clone(self), LiInterface::X2), li_auth));
        x1.merge(x2)
    }
}

#[derive(Deserialize)]
struct UaQuery {
    requesttype: Option<String>,
}

async fn ua(State(s): State<Arc<Service>>, Query(q): Query<UaQuery>, headers: HeaderMap, body: Bytes) -> Response {
    let started = Instant::now();
    let id = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .unwrap_or_else(|| s.next_id.fetch_add(1, Ordering::Relaxed).to_string());
    let kind = match q.requesttype.as_deref() {
        Some("ticketrequest") => Kind::TicketRequest,
        Some("ticketresolve") => Kind::TicketResolve,
        Some("keyprovision") => return keyprovision(&s, &id, &headers, &body).await,
        other => {
            info!(request_id = %id, requesttype = ?other, "unknown requesttype");
            return text(StatusCode::BAD_REQUEST, "requesttype must be ticketrequest, ticketresolve or keyprovision");
        }
    };
    let span = info_span!("ua", request_id = %id, requesttype = kind.name());
    let (outcome, resp) = async {
        let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
        if !ct.split(';').next().unwrap_or_default().trim().eq_ignore_ascii_case(CONTENT_TYPE) {
            return (2, text(StatusCode::UNSUPPORTED_MEDIA_TYPE, "Content-Type must be application/mikey"));
        }
        let compact: Vec<u8> = body.iter().copied().filter(|b| !b.is_ascii_whitespace()).collect();
        let Ok(mikey) = STANDARD.decode(&compact) else {
            return (2, text(StatusCode::BAD_REQUEST, "body is not base64"));
        };
        let reply = match kind {
            Kind::TicketRequest => s.kms.ticket_request(&mikey, now(), &s.zn).await,
            _ => {
                s.catch_up(&mikey).await;
                s.kms.ticket_resolve(&mikey, now(), &s.zn, &*s.peers).await
            }
        };
        match reply {
            Reply::Response(b) => {
                info!("answered");
                (0, ((StatusCode::OK, [(header::CONTENT_TYPE, CONTENT_TYPE)], STANDARD.encode(b)).into_response()))
            }
            Reply::Error { message, code, reason } => {
                info!(?code, reason, "MIKEY error");
                (1, (StatusCode::OK, [(header::CONTENT_TYPE, CONTENT_TYPE)], STANDARD.encode(message)).into_response())
            }
            Reply::BadRequest(r) => {
                info!(reason = r, "bad request");
                (2, text(StatusCode::BAD_REQUEST, &r))
            }
            Reply::Failed(r) => {
                warn!(reason = r, "KMS failure");
                (3, text(StatusCode::SERVICE_UNAVAILABLE, &r))
            }
        }
    }
    .instrument(span)
    .await;
    s.metrics.record(kind, outcome, started.elapsed());
    resp
}

/// Ua `keyprovision` (ours, docs/kms.md): JSON in and out; 200 with the keys, else 415 / 400
/// (malformed) / 401 (B-TID, MAC, time, replay) / 403 (identity not allowed) / 503, each with
/// a reason, a log line and a count in `mediasec_kms_keyprov_refusals_total`.
async fn keyprovision(s: &Service, id: &str, headers: &HeaderMap, body: &[u8]) -> Response {
    let started = Instant::now();
    let span = info_span!("ua", request_id = %id, requesttype = Kind::KeyProvision.name());
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let json = ct.split(';').next().unwrap_or_default().trim().eq_ignore_ascii_case(keyprov::CONTENT_TYPE);
    let out = if json {
        s.refresh_generations().await;
        s.prov.provision(&s.kms, body, now(), &s.zn, &s.certificates()).instrument(span.clone()).await
    } else {
        Err(ProvRefusal::Malformed("Content-Type must be application/json".into()))
    };
    let _g = span.enter();
    let (outcome, resp) = match out {
        Ok(json) => {
            info!("signing key issued");
            (0, (StatusCode::OK, [(header::CONTENT_TYPE, keyprov::CONTENT_TYPE)], json).into_response())
        }
        Err(r) => {
            s.metrics.refused(&r);
            let status = match &r {
                ProvRefusal::Malformed(_) if !json => StatusCode::UNSUPPORTED_MEDIA_TYPE,
                ProvRefusal::Malformed(_) => StatusCode::BAD_REQUEST,
                ProvRefusal::Unauthenticated(_) | ProvRefusal::Replayed => StatusCode::UNAUTHORIZED,
                ProvRefusal::Forbidden(_) => StatusCode::FORBIDDEN,
                ProvRefusal::Failed(_) => StatusCode::SERVICE_UNAVAILABLE,
            };
            if matches!(r, ProvRefusal::Failed(_)) {
                warn!(reason = r.reason(), "keyprovision failed");
            } else {
                info!(reason = r.reason(), refusal = r.label(), "keyprovision refused");
            }
            (if status.is_server_error() { 3 } else { 2 }, text(status, r.reason()))
        }
    };
    s.metrics.record(Kind::KeyProvision, outcome, started.elapsed());
    resp
}

/// `GET /keymanagement/kpak` (ours): this KMS's public keys — the ECCSI KPAK and the SAKKE Z
/// (`sakke_z`) — public (the ones a UE uses come in its MACed `keyprovision` response; this
/// is for configuring other communities).
async fn kpak(State(s): State<Arc<Service>>) -> Response {
    match (s.kpak(), s.prov.sakke_public_at(now().as_secs())) {
        (Some(k), Some(z)) => axum::Json(serde_json::json!({ "kms": s.kms.config().fqdn, "kpak": hex::encode(k.to_uncompressed()), "sakke_z": hex::encode(z.to_uncompressed()) })).into_response(),
        _ => text(StatusCode::SERVICE_UNAVAILABLE, "KPAK unavailable"),
    }
}

/// `GET /keymanagement/certificate`: this KMS's certificate set (JSON: the certificate, or an
/// array of one per generation — [`crate::community::encode_set`]; unauthenticated like the
/// KPAK: an operator who configures it at another KMS checks it out of band).
async fn certificate(State(s): State<Arc<Service>>) -> Response {
    s.refresh_generations().await;
    match s.own_certificates() {
        Ok(set) => (StatusCode::OK, [(header::CONTENT_TYPE, crate::community::CONTENT_TYPE)], crate::community::encode_set(&set)).into_response(),
        Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

fn community_json(c: &Community, source: &Source) -> serde_json::Value {
    let source = match source {
        Source::Configured => serde_json::json!({ "configured": true }),
        Source::Zk { peer, fetched } => serde_json::json!({ "zk_peer": peer, "fetched": fetched }),
    };
    serde_json::json!({ "certificate": c.certificate(), "source": source })
}

async fn metrics(State(s): State<Arc<Service>>) -> Response {
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s.metrics.render()).into_response()
}

macro_rules! admin {
    ($s:ident, $h:ident) => {
        if !bearer_ok(&$h, &$s.admin_token) {
            return text(StatusCode::UNAUTHORIZED, "admin API requires a valid bearer token");
        }
    };
}

/// `GET /admin/v1/communities`: the external KMS certificates and their source.
async fn communities_get(State(s): State<Arc<Service>>, h: HeaderMap) -> Response {
    admin!(s, h);
    let list: Vec<_> = s.communities().iter().map(|(c, src)| community_json(c, src)).collect();
    axum::Json(serde_json::json!({ "communities": list })).into_response()
}

fn generations_json(s: &Service) -> Response {
    let Some(gens) = s.generations() else { return text(StatusCode::SERVICE_UNAVAILABLE, "community keys unavailable") };
    let list: Vec<_> = gens
        .all()
        .map(|g| {
            serde_json::json!({
                "generation": g.number(),
                "valid_from": (g.valid_from() > 0).then(|| crate::community::fmt_time(g.valid_from())),
                "valid_to": gens.valid_to(g).map(crate::community::fmt_time),
                "kpak": hex::encode(g.kpak().to_uncompressed()),
            })
        })
        .collect();
    axum::Json(serde_json::json!({ "generations": list })).into_response()
}

/// `GET /admin/v1/community-keys`: the generations of the community keys (number, window,
/// KPAK; never a secret).
async fn community_keys_get(State(s): State<Arc<Service>>, h: HeaderMap) -> Response {
    admin!(s, h);
    generations_json(&s)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RotateBody {
    valid_from: Option<String>,
}

/// `POST /admin/v1/community-keys/rotate` with an optional JSON body `{"valid_from":
/// "YYYY-MM-DDTHH:MM:SSZ"}`: a new generation (docs/kms.md "Community key rotation"); 400 with
/// the reason when the start is refused.
async fn community_keys_rotate(State(s): State<Arc<Service>>, h: HeaderMap, body: Bytes) -> Response {
    admin!(s, h);
    let req: RotateBody = if body.iter().all(u8::is_ascii_whitespace) {
        RotateBody::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => return text(StatusCode::BAD_REQUEST, &format!("body: {e}")),
        }
    };
    let valid_from = match req.valid_from.as_deref().map(mediasec_gba::bootstrapping_info::parse_time).transpose() {
        Ok(t) => t,
        Err(e) => return text(StatusCode::BAD_REQUEST, &format!("valid_from: {e}")),
    };
    match s.rotate_community_keys(valid_from, "admin").await {
        Ok(_) => generations_json(&s),
        Err(e @ KmsError::Config(_)) => {
            info!(error = %e, "community key rotation refused");
            text(StatusCode::BAD_REQUEST, &e.to_string())
        }
        Err(e) => internal(&e),
    }
}

/// `POST /admin/v1/communities/refresh`: fetch every Zk peer's certificate now.
async fn communities_refresh(State(s): State<Arc<Service>>, h: HeaderMap) -> Response {
    admin!(s, h);
    let outcomes: Vec<_> = s
        .refresh_communities()
        .await
        .into_iter()
        .map(|(peer, r)| match r {
            Ok(kms) => serde_json::json!({ "peer": peer, "kms": kms }),
            Err(e) => serde_json::json!({ "peer": peer, "error": e.to_string() }),
        })
        .collect();
    axum::Json(serde_json::json!({ "refreshed": outcomes })).into_response()
}

fn now_ms() -> u64 {
    u64::try_from(now().as_millis()).unwrap_or(u64::MAX)
}

async fn reloaded(s: &Service, ok: Response) -> Response {
    match s.reload().await {
        Ok(()) => ok,
        Err(e) => internal(&e),
    }
}

async fn policies_get(State(s): State<Arc<Service>>, h: HeaderMap) -> Response {
    admin!(s, h);
    match s.persist.policies().await.and_then(|p| p.to_toml()) {
        Ok(t) => (StatusCode::OK, [(header::CONTENT_TYPE, "application/toml")], t).into_response(),
        Err(e) => internal(&e),
    }
}

async fn policies_put(State(s): State<Arc<Service>>, h: HeaderMap, body: String) -> Response {
    admin!(s, h);
    let doc = match Policies::from_toml(&body) {
        Ok(d) => d,
        Err(e) => return text(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    match s.persist.put_document(&doc, "admin", now_ms()).await {
        Ok(()) => reloaded(&s, text(StatusCode::OK, "policies replaced")).await,
        Err(e) => internal(&e),
    }
}

async fn put_scope(s: &Service, scope: Scope, body: Option<&str>) -> Response {
    let rules = match body.map(toml::from_str::<Rules>) {
        Some(Ok(r)) => Some(r),
        Some(Err(e)) => return text(StatusCode::BAD_REQUEST, &e.to_string()),
        None => None,
    };
    match s.persist.put_rules(&scope, rules.as_ref(), "admin", now_ms()).await {
        Ok(true) => reloaded(s, text(StatusCode::OK, "ok")).await,
        Ok(false) => text(StatusCode::NOT_FOUND, "no such policy"),
        Err(e) => internal(&e),
    }
}

async fn defaults_put(State(s): State<Arc<Service>>, h: HeaderMap, body: String) -> Response {
    admin!(s, h);
    put_scope(&s, Scope::Defaults, Some(&body)).await
}

async fn domain_put(State(s): State<Arc<Service>>, h: HeaderMap, Path(d): Path<String>, body: String) -> Response {
    admin!(s, h);
    put_scope(&s, Scope::Domain(d), Some(&body)).await
}

async fn domain_delete(State(s): State<Arc<Service>>, h: HeaderMap, Path(d): Path<String>) -> Response {
    admin!(s, h);
    put_scope(&s, Scope::Domain(d), None).await
}

fn bad_uid(e: &KmsError) -> Response {
    text(StatusCode::BAD_REQUEST, &e.to_string())
}

async fn user_rules_put(State(s): State<Arc<Service>>, h: HeaderMap, Path(uid): Path<String>, body: String) -> Response {
    admin!(s, h);
    match KmsUid::parse(&uid) {
        Ok(u) => put_scope(&s, Scope::User(u), Some(&body)).await,
        Err(e) => bad_uid(&e),
    }
}

async fn user_rules_delete(State(s): State<Arc<Service>>, h: HeaderMap, Path(uid): Path<String>) -> Response {
    admin!(s, h);
    match KmsUid::parse(&uid) {
        Ok(u) => put_scope(&s, Scope::User(u), None).await,
        Err(e) => bad_uid(&e),
    }
}

async fn users_get(State(s): State<Arc<Service>>, h: HeaderMap) -> Response {
    admin!(s, h);
    match s.persist.users().await {
        Ok(u) => axum::Json(u.iter().cloned().collect::<Vec<_>>()).into_response(),
        Err(e) => internal(&e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserBody {
    #[serde(default = "yes")]
    enabled: bool,
}

fn yes() -> bool {
    true
}

async fn user_put(State(s): State<Arc<Service>>, h: HeaderMap, Path(uid): Path<String>, body: Bytes) -> Response {
    admin!(s, h);
    let uid = match KmsUid::parse(&uid) {
        Ok(u) => u,
        Err(e) => return bad_uid(&e),
    };
    let enabled = if body.is_empty() {
        true
    } else {
        match serde_json::from_slice::<UserBody>(&body) {
            Ok(b) => b.enabled,
            Err(e) => return text(StatusCode::BAD_REQUEST, &e.to_string()),
        }
    };
    match s.persist.put_user(&User { uid, enabled }, "admin", now_ms()).await {
        Ok(()) => reloaded(&s, text(StatusCode::OK, "ok")).await,
        Err(e) => internal(&e),
    }
}

async fn user_delete(State(s): State<Arc<Service>>, h: HeaderMap, Path(uid): Path<String>) -> Response {
    admin!(s, h);
    let uid = match KmsUid::parse(&uid) {
        Ok(u) => u,
        Err(e) => return bad_uid(&e),
    };
    match s.persist.delete_user(&uid, "admin", now_ms()).await {
        Ok(true) => reloaded(&s, text(StatusCode::OK, "removed")).await,
        Ok(false) => text(StatusCode::NOT_FOUND, "no such user"),
        Err(e) => internal(&e),
    }
}

fn key_list(s: &Service) -> Response {
    let keys: Vec<_> = s.kms.ring().keys().map(|k| serde_json::json!({ "id": k.id, "created": k.created, "retired": k.retired })).collect();
    axum::Json(keys).into_response()
}

async fn keys_get(State(s): State<Arc<Service>>, h: HeaderMap) -> Response {
    admin!(s, h);
    key_list(&s)
}

async fn keys_rotate(State(s): State<Arc<Service>>, h: HeaderMap) -> Response {
    admin!(s, h);
    let random = |b: &mut [u8]| rand::RngCore::fill_bytes(&mut rand::rng(), b);
    match s.persist.rotate(now().as_secs(), &random, "admin").await {
        Ok(ring) => {
            s.kms.set_ring(ring);
            key_list(&s)
        }
        Err(e) => internal(&e),
    }
}

async fn keys_prune(State(s): State<Arc<Service>>, h: HeaderMap) -> Response {
    admin!(s, h);
    let max = s.kms.policies().max_lifetime();
    match s.persist.prune(now().as_secs(), max, "admin").await {
        Ok(ring) => {
            s.kms.set_ring(ring);
            key_list(&s)
        }
        Err(e) => internal(&e),
    }
}

#[derive(Deserialize)]
struct AuditQuery {
    after: Option<u64>,
    limit: Option<usize>,
}

async fn audit_get(State(s): State<Arc<Service>>, h: HeaderMap, Query(q): Query<AuditQuery>) -> Response {
    admin!(s, h);
    match s.persist.audit_log(q.after.unwrap_or(0), q.limit.unwrap_or(100).min(1000)).await {
        Ok(rows) => axum::Json(
            rows.into_iter()
                .map(|(seq, e)| serde_json::json!({ "seq": seq, "at_unix_ms": e.at_unix_ms, "actor": e.actor, "action": e.action, "detail": e.detail }))
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Err(e) => internal(&e),
    }
}

/// The two LI bearer tokens ([`Service::enable_li`]).
struct LiTokens {
    /// Warrant provisioning and the LI audit trail (X1-like).
    warrants: String,
    /// Key retrieval (X2-like).
    keys: String,
}

/// The LI interface a route belongs to.
#[derive(Clone, Copy)]
enum LiInterface {
    /// Warrants and the LI audit trail.
    X1,
    /// Key retrieval.
    X2,
}

/// LI API guard: 404 (as if absent) when LI is off; 403 for the other interface's token
/// (a key-retrieval client managing warrants, or the reverse); 401 on any other token. Both
/// refusals are logged.
fn li_guard(s: &Service, h: &HeaderMap, interface: LiInterface) -> Option<Response> {
    let Some(tokens) = s.li_tokens.get() else { return Some(StatusCode::NOT_FOUND.into_response()) };
    let (own, other, refused) = match interface {
        LiInterface::X1 => (&tokens.warrants, &tokens.keys, "the LI key-retrieval token does not manage warrants or read the LI audit trail"),
        LiInterface::X2 => (&tokens.keys, &tokens.warrants, "the LI warrant-provisioning token does not retrieve keys"),
    };
    if bearer_ok(h, own) {
        None
    } else if bearer_ok(h, other) {
        warn!(target: "li", "{refused}");
        Some(text(StatusCode::FORBIDDEN, refused))
    } else {
        warn!(target: "li", "LI API call with a missing or wrong token");
        Some(text(StatusCode::UNAUTHORIZED, "LI API requires an LI bearer token"))
    }
}

async fn li_auth(State((s, interface)): State<(Arc<Service>, LiInterface)>, req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    match li_guard(&s, req.headers(), interface) {
        Some(refused) => refused,
        None => next.run(req).await,
    }
}

fn suffix() -> u64 {
    rand::random()
}

/// Errors of LI handlers: refusals 403, bad input 400, store 503, else 500.
fn li_error(e: &KmsError) -> Response {
    match e {
        KmsError::LiRefused(_) | KmsError::CertificateNotValid(_) => text(StatusCode::FORBIDDEN, &e.to_string()),
        KmsError::LiInput(_) | KmsError::Mikey { .. } | KmsError::Identity(_) => text(StatusCode::BAD_REQUEST, &e.to_string()),
        KmsError::Store(_) => text(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
        _ => internal(e),
    }
}

async fn warrants_get(State(s): State<Arc<Service>>) -> Response {
    match s.persist.warrants().await {
        Ok(w) => axum::Json(w).into_response(),
        Err(e) => li_error(&e),
    }
}

async fn warrant_get(State(s): State<Arc<Service>>, Path(id): Path<String>) -> Response {
    match s.persist.warrant(&id).await {
        Ok(Some(w)) => axum::Json(w).into_response(),
        Ok(None) => text(StatusCode::NOT_FOUND, "no such warrant"),
        Err(e) => li_error(&e),
    }
}

async fn warrant_put(State(s): State<Arc<Service>>, Path(id): Path<String>, body: Bytes) -> Response {
    let w: Warrant = match serde_json::from_slice(&body) {
        Ok(w) => w,
        Err(e) => return text(StatusCode::BAD_REQUEST, &format!("warrant: {e}")),
    };
    if w.id != id {
        return text(StatusCode::BAD_REQUEST, "warrant: the id in the body differs from the path");
    }
    match s.persist.put_warrant(&w, now_ms(), suffix()).await {
        Ok(()) => {
            info!(target: "li", warrant = %w.id, "warrant stored");
            axum::Json(w).into_response()
        }
        Err(e) => li_error(&e),
    }
}

async fn warrant_delete(State(s): State<Arc<Service>>, Path(id): Path<String>) -> Response {
    match s.persist.delete_warrant(&id, now_ms(), suffix()).await {
        Ok(true) => {
            info!(target: "li", warrant = %id, "warrant removed");
            text(StatusCode::OK, "removed")
        }
        Ok(false) => text(StatusCode::NOT_FOUND, "no such warrant"),
        Err(e) => li_error(&e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysBody {
    warrant: String,
    transfer_init: String,
    transfer_resp: Option<String>,
}

fn b64(what: &str, s: &str) -> Result<Vec<u8>, KmsError> {
    let compact: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    STANDARD.decode(&compact).map_err(|e| KmsError::LiInput(format!("{what} is not base64: {e}")))
}

/// The JSON of a key release and what the LI trail records of it.
async fn release(s: &Service, body: &KeysBody) -> Result<(Vec<u8>, String), KmsError> {
    let w = s.persist.warrant(&body.warrant).await?.ok_or(Refusal::NoSuchWarrant)?;
    let ti = b64("transfer_init", &body.transfer_init)?;
    let tr = body.transfer_resp.as_deref().map(|t| b64("transfer_resp", t)).transpose()?;
    let r = s.li_release(&w, &ti, tr.as_deref(), now().as_secs()).await?;
    let json = r.to_json(&w.id)?;
    Ok((json.to_vec(), r.audit_detail()))
}

async fn li_keys(State(s): State<Arc<Service>>, body: Bytes) -> Response {
    let body: KeysBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return text(StatusCode::BAD_REQUEST, &format!("key request: {e}")),
    };
    let out = release(&s, &body).await;
    let (action, detail) = match &out {
        Ok((_, detail)) => ("keys.release", detail.clone()),
        Err(e) => ("keys.refuse", e.to_string()),
    };
    // The log names no identity (admins read logs): the outcome class only, the precise
    // reason is in the LI trail.
    let logged = match &out {
        Ok(_) => "released",
        Err(KmsError::LiRefused(r)) => r.class(),
        Err(KmsError::LiInput(_) | KmsError::Mikey { .. } | KmsError::Identity(_)) => "malformed input",
        Err(_) => "KMS failure",
    };
    info!(target: "li", warrant = %body.warrant, action, outcome = logged, "LI key request");
    let entry = LiAuditEntry::new(now_ms(), action, &body.warrant, detail);
    if let Err(e) = s.persist.li_audit(&entry, suffix()).await {
        // No release that the LI trail does not record.
        return li_error(&e);
    }
    match out {
        Ok((json, _)) => (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Err(e) => li_error(&e),
    }
}

#[derive(Deserialize)]
struct LiAuditQuery {
    since_ms: Option<u64>,
    limit: Option<usize>,
}

/// `GET /li/v1/audit`: the entries and the verification of the trail's hash chain
/// ([`crate::li_chain`]); 200 when the chain is intact, 409 with the same body naming each
/// break (a deleted entry, a missing head) when not — never a silently shortened trail.
async fn li_audit_get(State(s): State<Arc<Service>>, Query(q): Query<LiAuditQuery>) -> Response {
    match s.persist.li_audit_log(q.since_ms.unwrap_or(0), q.limit.unwrap_or(100).min(1000)).await {
        Ok(trail) if trail.chain.intact => axum::Json(trail).into_response(),
        Ok(trail) => {
            warn!(target: "li", breaks = trail.chain.breaks.len(), "LI audit trail: hash chain broken");
            (StatusCode::CONFLICT, axum::Json(trail)).into_response()
        }
        Err(e) => li_error(&e),
    }
}

/// Why [`serve`] refuses a service with LI on (and `mediasec kms serve --li-token-file`
/// without `--tls-cert`): the fix is named.
pub const LI_NEEDS_TLS: &str = "the LI API (--li-token-file) is served over HTTPS only: on a plain-HTTP listener its bearer token and the released call keys would cross the network in clear; serve with --tls-cert and --tls-key (or leave LI off)";

/// Serves plain HTTP on a bound listener until `until` completes (then gracefully:
/// [`mediasec_bsf::graceful`]) or the future is dropped. Without the LI API: refused
/// ([`LI_NEEDS_TLS`]) when LI is on, and `/li/v1` is not routed (404, as absent) should LI be
/// turned on later — LI answers on a [`serve_tls`] listener of the same service only.
pub async fn serve(listener: tokio::net::TcpListener, s: Arc<Service>, until: impl Future<Output = ()> + Send + 'static) -> Result<(), KmsError> {
    if s.li_tokens.get().is_some() {
        tracing::error!("{LI_NEEDS_TLS}");
        return Err(KmsError::Config(LI_NEEDS_TLS.into()));
    }
    axum::serve(listener, s.router(false)).with_graceful_shutdown(until).await.map_err(|e| KmsError::Http(e.to_string()))
}

/// Serves HTTPS (rustls, the BSF's TLS listener: handshakes concurrent and bounded) as
/// [`serve`], with the LI API (when on).
pub async fn serve_tls(listener: mediasec_bsf::tls::TlsListener, s: Arc<Service>, until: impl Future<Output = ()> + Send + 'static) -> Result<(), KmsError> {
    axum::serve(listener, s.router(true)).with_graceful_shutdown(until).await.map_err(|e| KmsError::Http(e.to_string()))
}
