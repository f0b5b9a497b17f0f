//! The BSF HTTP server (axum): Ub (TS 24.109 §4, any path, GET or POST), Zn
//! (`POST /zn/v1/naf-keys`, NAF client certificate or bearer token), admin (`/admin/v1/subscribers`, bearer token) and
//! `/metrics` (Prometheus text format).
//!
//! Replicas: several servers may share one PostgreSQL store (docs/gba.md § Storage). SQNs,
//! sessions and the challenges in flight live in the store, so a NAF's Zn lookup may reach
//! any replica, and so may the second request of a Ub run: the challenge is stored (sealed)
//! under its nonce and taken by compare-and-swap delete, so exactly one replica gets it and
//! a replayed answer, at any replica, gets a fresh challenge with `stale=TRUE`. Every replica
//! purges expired sessions and stale challenges every [`PURGE_INTERVAL`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, Path, State};
use axum::serve::IncomingStream;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use mediasec_gba::bootstrapping_info::{CONTENT_TYPE, format_time};
use mediasec_gba::bsf::{self, BsfConfig, ChallengeInput, UbRequest, Verdict};
use mediasec_gba::kdf::{NafId, UaProtocolId};
use mediasec_gba::uicc::UiccType;
use rustls::pki_types::{CertificateDer, ServerName};
use serde::Deserialize;
use subtle::ConstantTimeEq;
use tracing::{info, warn};

use crate::BsfError;
use crate::store::{Store, Subscriber};

/// Server configuration.
pub struct ServerConfig {
    /// Ub policy (domain, lifetimes, qop).
    pub bsf: BsfConfig,
    /// Bearer token NAFs present on Zn.
    pub zn_token: String,
    /// Bearer token for the admin API.
    pub admin_token: String,
}

#[derive(Default)]
struct Metrics {
    challenges: AtomicU64,
    bootstraps: AtomicU64,
    resyncs: AtomicU64,
    rejections: AtomicU64,
    zn_lookups: AtomicU64,
    zn_not_found: AtomicU64,
    store_errors: AtomicU64,
    sessions_purged: AtomicU64,
}

/// How often [`serve`] and [`serve_tls`] delete expired sessions from the store.
pub const PURGE_INTERVAL: Duration = Duration::from_secs(60);

/// Shared server state.
pub struct Bsf {
    cfg: ServerConfig,
    store: Store,
    metrics: Metrics,
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn text(status: StatusCode, reason: &str) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain")], format!("{reason}\n")).into_response()
}

impl Bsf {
    /// Build the state around an open store.
    pub fn new(cfg: ServerConfig, store: Store) -> Arc<Self> {
        Arc::new(Self { cfg, store, metrics: Metrics::default() })
    }

    /// The store (for tests and the CLI).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The axum router.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/zn/v1/naf-keys", post(zn))
            .route("/admin/v1/subscribers", get(admin_list).post(admin_add))
            .route("/admin/v1/subscribers/{impi}", delete(admin_remove))
            .route("/metrics", get(metrics))
            .fallback(ub)
            .with_state(Arc::clone(self))
    }

    /// A failure of the store or of a stored record: 500 with a generic reason and a fresh
    /// reference, a `warn` log line with the cause under that same reference, and a count in
    /// `mediasec_bsf_store_errors_total` (never a panic). The body never carries the cause:
    /// a store error names hosts, tables and rows, which a UE or NAF has no business seeing;
    /// the operator finds the cause in the log by the reference the client got.
    fn internal(&self, e: &BsfError) -> Response {
        self.metrics.store_errors.fetch_add(1, Ordering::Relaxed);
        let reference = hex::encode(rand::random::<[u8; 4]>());
        warn!(%reference, error = %e, "BSF store error");
        text(StatusCode::INTERNAL_SERVER_ERROR, &format!("internal error, reference {reference}"))
    }

    /// Deletes the sessions expired now and the challenges whose nonce is stale; logs and
    /// counts what it did.
    pub async fn purge_expired(&self) {
        let t = now();
        match self.store.purge_expired(t).await {
            Ok(0) => {}
            Ok(n) => {
                self.metrics.sessions_purged.fetch_add(n as u64, Ordering::Relaxed);
                info!(sessions = n, "expired bootstrapping sessions purged");
            }
            Err(e) => {
                self.metrics.store_errors.fetch_add(1, Ordering::Relaxed);
                warn!(error = %e, "purging expired sessions failed");
            }
        }
        match self.store.purge_stale_challenges(t).await {
            Ok(0) => {}
            Ok(n) => info!(challenges = n, "unanswered challenges purged"),
            Err(e) => {
                self.metrics.store_errors.fetch_add(1, Ordering::Relaxed);
                warn!(error = %e, "purging stale challenges failed");
            }
        }
    }

    /// Allocate a durable SQN and answer 401 with a challenge (TS 24.109 §4.2).
    async fn challenge(&self, impi: &str, stale: bool, reason: &str) -> Response {
        let sub = match self.store.next_sqn(impi).await {
            Ok(Some(s)) => s,
            Ok(None) => {
                self.metrics.rejections.fetch_add(1, Ordering::Relaxed);
                info!(impi, "unknown IMPI");
                return text(StatusCode::FORBIDDEN, "unknown IMPI");
            }
            Err(e) => return self.internal(&e),
        };
        let (auth, uicc) = match sub.auth().and_then(|a| Ok((a, sub.uicc_type()?))) {
            Ok(a) => a,
            Err(e) => return self.internal(&e),
        };
        let t = now();
        let input = ChallengeInput { sqn: sub.sqn, rand: rand::random(), opaque: rand::random(), now: t, stale };
        let (ch, pending) = bsf::issue_challenge_for(&self.cfg.bsf, impi, &auth, uicc, input);
        // Stale from `t + nonce_lifetime + 1` on (`bsf::verify_response`); stored before the
        // 401 leaves, so any replica can take the answer.
        let expiry = t.saturating_add(self.cfg.bsf.nonce_lifetime).saturating_add(1);
        if let Err(e) = self.store.put_pending(&pending, expiry).await {
            return self.internal(&e);
        }
        self.metrics.challenges.fetch_add(1, Ordering::Relaxed);
        let mut r = text(StatusCode::UNAUTHORIZED, reason);
        if let Ok(v) = HeaderValue::from_str(&ch.to_header()) {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
        r
    }

    fn reject(&self, status: u16, reason: &str) -> Response {
        self.metrics.rejections.fetch_add(1, Ordering::Relaxed);
        info!(status, reason, "Ub request rejected");
        text(StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN), reason)
    }
}

/// Ub. The store runs its blocking work (redb file I/O and fsync) on tokio's blocking pool, so
/// a slow disk does not stall the runtime threads that serve the other connections.
async fn ub(State(b): State<Arc<Bsf>>, method: Method, headers: HeaderMap, body: Bytes) -> Response {
    if method != Method::GET && method != Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, "Ub accepts GET or POST");
    }
    let auth = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let creds = match bsf::classify(auth) {
        Err(r) => return b.reject(r.status, r.reason),
        Ok(UbRequest::Initial { impi }) => return b.challenge(&impi, false, "bootstrapping challenge").await,
        Ok(UbRequest::Response(c)) => c,
    };
    let pending = match b.store.take_pending(&creds.nonce).await {
        Ok(p) => p,
        Err(e) => return b.internal(&e),
    };
    let Some(pending) = pending else {
        // Unknown or already answered nonce (replay): fresh challenge, stale=TRUE.
        return b.challenge(&creds.username, true, "unknown or already used nonce").await;
    };
    let sub = match b.store.subscriber(&pending.impi).await {
        Ok(Some(s)) => s,
        Ok(None) => return b.reject(403, "unknown IMPI"),
        Err(e) => return b.internal(&e),
    };
    let auth = match sub.auth() {
        Ok(a) => a,
        Err(e) => return b.internal(&e),
    };
    match bsf::verify_response(&b.cfg.bsf, &pending, &creds, method.as_str(), &body, &auth, now()) {
        Verdict::Bootstrapped(session) => {
            if let Err(e) = b.store.put_session(&session).await {
                return b.internal(&e);
            }
            let (xml, info) = bsf::success(&pending, &creds, &session);
            b.metrics.bootstraps.fetch_add(1, Ordering::Relaxed);
            info!(impi = %session.impi, btid = %session.btid, "bootstrapped");
            let mut r = (StatusCode::OK, [(header::CONTENT_TYPE, CONTENT_TYPE)], xml).into_response();
            if let Ok(v) = HeaderValue::from_str(&info.to_header()) {
                r.headers_mut().insert("authentication-info", v);
            }
            r
        }
        Verdict::Resync { sqn_ms } => {
            match b.store.resync_sqn(&pending.impi, sqn_ms).await {
                Ok(Some(_)) => {}
                Ok(None) => return b.reject(403, "unknown IMPI"),
                Err(e) => return b.internal(&e),
            }
            b.metrics.resyncs.fetch_add(1, Ordering::Relaxed);
            info!(impi = %pending.impi, sqn_ms, "SQN resynchronised");
            b.challenge(&pending.impi, false, "SQN resynchronised").await
        }
        Verdict::Rejected(r) if r.status == 401 => b.challenge(&pending.impi, true, r.reason).await,
        Verdict::Rejected(r) => b.reject(r.status, r.reason),
    }
}

fn bearer_ok(headers: &HeaderMap, token: &str) -> bool {
    let got = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    !token.is_empty() && got.len() == token.len() && bool::from(got.as_bytes().ct_eq(token.as_bytes()))
}

#[derive(Deserialize)]
struct ZnRequest {
    btid: String,
    naf_fqdn: String,
    ua_protocol_id: String,
    /// The NAF is GBA_U aware (TS 33.220 §5.3.3): it also gets Ks_int_NAF of GBA_U sessions.
    #[serde(default)]
    gba_u_aware: bool,
}

/// The end-entity TLS client certificate of the connection, already verified by rustls
/// against the NAF CA (see [`crate::tls::server_config`]); `None` on plain HTTP or when the
/// client offered none.
#[derive(Debug, Clone)]
pub struct NafCert(pub Option<Arc<CertificateDer<'static>>>);

impl Connected<IncomingStream<'_, tokio::net::TcpListener>> for NafCert {
    fn connect_info(_: IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        Self(None)
    }
}

impl Connected<IncomingStream<'_, crate::tls::TlsListener>> for NafCert {
    fn connect_info(s: IncomingStream<'_, crate::tls::TlsListener>) -> Self {
        Self(s.io().get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| Arc::new(c.clone().into_owned())))
    }
}

/// NAF authorisation by certificate: the verified client certificate must be valid for the
/// requested NAF FQDN (its DNS subjectAltName), so a NAF only obtains its own keys.
fn cert_names_naf(cert: &CertificateDer<'_>, naf_fqdn: &str) -> bool {
    let Ok(ee) = webpki::EndEntityCert::try_from(cert) else { return false };
    let Ok(name) = ServerName::try_from(naf_fqdn) else { return false };
    ee.verify_is_valid_for_subject_name(&name).is_ok()
}

async fn zn(
    State(b): State<Arc<Bsf>>,
    ConnectInfo(cert): ConnectInfo<NafCert>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let cert = cert.0.as_deref();
    if cert.is_none() && !bearer_ok(&headers, &b.cfg.zn_token) {
        return text(StatusCode::UNAUTHORIZED, "Zn requires a NAF client certificate or a valid bearer token");
    }
    let Ok(req) = serde_json::from_slice::<ZnRequest>(&body) else {
        return text(StatusCode::BAD_REQUEST, "expected {\"btid\",\"naf_fqdn\",\"ua_protocol_id\"}");
    };
    if cert.is_some_and(|c| !cert_names_naf(c, &req.naf_fqdn)) {
        return text(StatusCode::FORBIDDEN, "the NAF client certificate does not name naf_fqdn");
    }
    let Ok(ua) = UaProtocolId::from_hex(&req.ua_protocol_id) else {
        return text(StatusCode::BAD_REQUEST, "ua_protocol_id must be 10 hex digits");
    };
    if req.naf_fqdn.is_empty() {
        return text(StatusCode::BAD_REQUEST, "naf_fqdn is empty");
    }
    b.metrics.zn_lookups.fetch_add(1, Ordering::Relaxed);
    let session = match b.store.session(&req.btid, now()).await {
        Ok(Some(s)) => s,
        Ok(None) => {
            b.metrics.zn_not_found.fetch_add(1, Ordering::Relaxed);
            return text(StatusCode::NOT_FOUND, "unknown or expired B-TID");
        }
        Err(e) => return b.internal(&e),
    };
    let impus = match b.store.subscriber(&session.impi).await {
        Ok(Some(s)) => s.impus.clone(),
        Ok(None) => Vec::new(),
        Err(e) => return b.internal(&e),
    };
    let naf = NafId::new(req.naf_fqdn.clone(), ua);
    let Ok(key) = session.ks().ks_naf(&session.rand, &session.impi, &naf) else {
        return text(StatusCode::BAD_REQUEST, "naf_fqdn too long");
    };
    let mut out = serde_json::Map::new();
    out.insert("ks_naf".into(), STANDARD.encode(key.0).into());
    out.insert("impi".into(), session.impi.clone().into());
    out.insert("impus".into(), impus.into());
    out.insert("bootstrap_time".into(), format_time(session.bootstrap_time).into());
    out.insert("key_expiry".into(), format_time(session.expiry).into());
    // GBA_U session (TS 33.220 §5.3.3): `ks_naf` above is Ks_ext_NAF; Ks_int_NAF only to a NAF
    // that says it is GBA_U aware. A GBA_ME session's answer has neither field.
    if session.uicc == UiccType::GbaU {
        out.insert("gba_type".into(), UiccType::GbaU.as_str().into());
        if req.gba_u_aware {
            let Ok(int) = session.ks().ks_int_naf(&session.rand, &session.impi, &naf) else {
                return text(StatusCode::BAD_REQUEST, "naf_fqdn too long");
            };
            out.insert("ks_int_naf".into(), STANDARD.encode(int.0).into());
        }
    }
    info!(btid = %req.btid, naf = %req.naf_fqdn, gba_u = session.uicc == UiccType::GbaU, aware = req.gba_u_aware, "Zn key delivered");
    (StatusCode::OK, axum::Json(out)).into_response()
}

async fn admin_list(State(b): State<Arc<Bsf>>, headers: HeaderMap) -> Response {
    if !bearer_ok(&headers, &b.cfg.admin_token) {
        return text(StatusCode::UNAUTHORIZED, "admin API requires a valid bearer token");
    }
    match b.store.subscribers().await {
        Ok(v) => axum::Json(v.iter().map(Subscriber::public_view).collect::<Vec<_>>()).into_response(),
        Err(e) => b.internal(&e),
    }
}

async fn admin_add(State(b): State<Arc<Bsf>>, headers: HeaderMap, body: Bytes) -> Response {
    if !bearer_ok(&headers, &b.cfg.admin_token) {
        return text(StatusCode::UNAUTHORIZED, "admin API requires a valid bearer token");
    }
    let Ok(sub) = serde_json::from_slice::<Subscriber>(&body) else {
        return text(StatusCode::BAD_REQUEST, "expected a subscriber JSON object");
    };
    match b.store.add_subscriber(&sub).await {
        Ok(()) => text(StatusCode::CREATED, "created"),
        Err(BsfError::Subscriber(_, why)) => text(StatusCode::CONFLICT, why),
        Err(BsfError::InvalidSubscriber(why)) => text(StatusCode::BAD_REQUEST, &why),
        Err(e) => b.internal(&e),
    }
}

async fn admin_remove(State(b): State<Arc<Bsf>>, headers: HeaderMap, Path(impi): Path<String>) -> Response {
    if !bearer_ok(&headers, &b.cfg.admin_token) {
        return text(StatusCode::UNAUTHORIZED, "admin API requires a valid bearer token");
    }
    match b.store.remove_subscriber(&impi).await {
        Ok(true) => text(StatusCode::OK, "removed"),
        Ok(false) => text(StatusCode::NOT_FOUND, "no such subscriber"),
        Err(e) => b.internal(&e),
    }
}

async fn metrics(State(b): State<Arc<Bsf>>) -> Response {
    let m = &b.metrics;
    let rows = [
        ("mediasec_bsf_challenges_total", &m.challenges),
        ("mediasec_bsf_bootstraps_total", &m.bootstraps),
        ("mediasec_bsf_resyncs_total", &m.resyncs),
        ("mediasec_bsf_rejections_total", &m.rejections),
        ("mediasec_bsf_zn_lookups_total", &m.zn_lookups),
        ("mediasec_bsf_zn_not_found_total", &m.zn_not_found),
        ("mediasec_bsf_store_errors_total", &m.store_errors),
        ("mediasec_bsf_sessions_purged_total", &m.sessions_purged),
    ];
    let mut s = String::new();
    for (name, c) in rows {
        s.push_str(&format!("# TYPE {name} counter\n{name} {}\n", c.load(Ordering::Relaxed)));
    }
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s).into_response()
}

/// Deletes expired sessions every [`PURGE_INTERVAL`], forever.
async fn purge_loop(bsf: Arc<Bsf>, mut stopped: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(PURGE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopped.changed() => return,
        }
        // Outside the select: a purge is never cut off half-way. On redb each store operation
        // runs on a blocking thread holding the database; a purge dropped mid-flight would
        // keep the file open after the server returned, and a server restarted on the same
        // file would fail with "Database already open".
        bsf.purge_expired().await;
    }
}

/// Runs `serving` (axum's serve, graceful once `until` completes) and the purge loop, which
/// stops between purges once the serving has ended: on return nothing holds the store.
async fn run(serving: impl Future<Output = std::io::Result<()>>, bsf: Arc<Bsf>) -> Result<(), BsfError> {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let serving = async move {
        let served = serving.await;
        let _ = stop.send(true);
        served
    };
    let (served, ()) = tokio::join!(serving, purge_loop(bsf, stopped));
    served.map_err(BsfError::Io)
}

/// Serve plain HTTP on an already bound listener until `until` completes (then gracefully:
/// [`crate::graceful`]) or the future is dropped; purges expired sessions meanwhile.
pub async fn serve(listener: tokio::net::TcpListener, bsf: Arc<Bsf>, until: impl Future<Output = ()> + Send + 'static) -> Result<(), BsfError> {
    let app = bsf.router().into_make_service_with_connect_info::<NafCert>();
    run(axum::serve(listener, app).with_graceful_shutdown(until).into_future(), bsf).await
}

/// Serve HTTPS (see [`crate::tls`]) as [`serve`].
pub async fn serve_tls(listener: crate::tls::TlsListener, bsf: Arc<Bsf>, until: impl Future<Output = ()> + Send + 'static) -> Result<(), BsfError> {
    let app = bsf.router().into_make_service_with_connect_info::<NafCert>();
    run(axum::serve(listener, app).with_graceful_shutdown(until).into_future(), bsf).await
}
