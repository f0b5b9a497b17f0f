//! The Zk server of the issuing KMS (KMS_I, TS 33.328 Annex B.2.3): it answers ticket
//! resolves forwarded by peer KMSs.
//!
//! Wire format: the Ua binding of TS 33.328 Annex A, restricted to resolve ("Zk uses the same
//! Annex A with requesttype=ticketresolve only"):
//!
//! ```text
//! POST /keymanagement?requesttype=ticketresolve HTTP/1.1
//! Content-Type: application/mikey
//!
//! <base64 of RESOLVE_INIT>
//!
//! HTTP/1.1 200 OK
//! Content-Type: application/mikey
//!
//! <base64 of RESOLVE_RESP or of a MIKEY Error message>
//! ```
//!
//! 4xx (the requesting KMS erred) or 5xx (this KMS did) carry a one-line reason in a
//! `text/plain` body. The peer's domain is the one allowed domain whose `kms.<domain>` its
//! verified client certificate names; a peer not allowed is refused (403) before the handler
//! runs.
//!
//! `GET /keymanagement/certificate` *(ours)* answers an allow-listed peer this KMS's KMS
//! certificate (200, `application/json`; [`ZkHandler::certificate`]), the same peer checks
//! first.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, DefaultBodyLimit, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::IncomingStream;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rustls::pki_types::CertificateDer;
use tracing::{info, warn};

use crate::ZkError;
use crate::tls::{ZkTls, peer_domain};
use mediasec_bsf::tls::TlsListener;

/// The Zk request path (TS 33.328 Annex A).
pub const ZK_PATH: &str = "/keymanagement";
/// The query selecting a resolve (the only request type Zk carries).
pub const ZK_QUERY: &str = "requesttype=ticketresolve";
/// The MIKEY media type of request and answer bodies.
pub const MIKEY_CONTENT_TYPE: &str = "application/mikey";
/// The path of a KMS certificate request (ours; docs/zk.md "KMS certificates").
pub const CERTIFICATE_PATH: &str = "/keymanagement/certificate";
/// The media type of a KMS certificate.
pub const CERTIFICATE_CONTENT_TYPE: &str = "application/json";
/// Largest request body accepted (base64 text).
pub const MAX_BODY: usize = 64 * 1024;

/// The future a [`ZkHandler`] returns.
pub type ZkFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, ZkError>> + Send + 'a>>;

/// What the issuing KMS does with a resolve forwarded by a peer KMS (Annex B.2.3: check the
/// ticket and policy, return an unprotected RESOLVE_RESP, or a MIKEY Error message).
///
/// Return `Ok(answer)` for any MIKEY-level outcome (sent as 200), or
/// [`ZkError::Refused`] to answer with that HTTP status and reason; any other error
/// becomes 500 "internal error" (and is logged).
pub trait ZkHandler: Send + Sync + 'static {
    /// Resolves `request` (the decoded MIKEY RESOLVE_INIT) for the authenticated peer KMS
    /// of `peer_domain`.
    fn resolve<'a>(&'a self, peer_domain: &'a str, request: Vec<u8>) -> ZkFuture<'a, Vec<u8>>;

    /// This KMS's KMS certificate (JSON) for the authenticated peer KMS of `peer_domain`
    /// (`GET` [`CERTIFICATE_PATH`]). By default none: 404.
    fn certificate<'a>(&'a self, peer_domain: &'a str) -> ZkFuture<'a, Vec<u8>> {
        let _ = peer_domain;
        Box::pin(async { Err(ZkError::Refused { status: 404, reason: "this KMS publishes no KMS certificate".into() }) })
    }
}

/// The verified end-entity client certificate of a Zk connection.
#[derive(Clone, Debug)]
struct PeerCert(Option<Arc<CertificateDer<'static>>>);

impl Connected<IncomingStream<'_, TlsListener>> for PeerCert {
    fn connect_info(s: IncomingStream<'_, TlsListener>) -> Self {
        Self(s.io().get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| Arc::new(c.clone().into_owned())))
    }
}

struct ZkState {
    allowed: BTreeSet<String>,
    handler: Arc<dyn ZkHandler>,
}

fn text(status: StatusCode, reason: &str) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain")], format!("{reason}\n")).into_response()
}

/// Serves Zk on `listener` until the returned future is dropped or the listener fails.
/// The future does not borrow `tls` (spawn it).
pub fn serve(
    listener: tokio::net::TcpListener,
    tls: &ZkTls,
    allowed: BTreeSet<String>,
    handler: Arc<dyn ZkHandler>,
) -> impl Future<Output = Result<(), ZkError>> + Send + use<> {
    let config = tls.server_config();
    async move {
        let listener = TlsListener::new(listener, config)?;
        let state = Arc::new(ZkState { allowed, handler });
        let app = Router::new()
            .route(ZK_PATH, post(resolve))
            .route(CERTIFICATE_PATH, get(certificate))
            .layer(DefaultBodyLimit::max(MAX_BODY))
            .with_state(state);
        axum::serve(listener, app.into_make_service_with_connect_info::<PeerCert>()).await.map_err(ZkError::Io)
    }
}

/// The verified peer's domain, or the status and reason of the refusal to send.
fn authorised<'a>(st: &'a ZkState, cert: &PeerCert) -> Result<&'a str, (StatusCode, String)> {
    // rustls already required and verified the certificate; this only maps it to a domain.
    let Some(cert) = &cert.0 else {
        return Err((StatusCode::UNAUTHORIZED, "Zk requires a KMS client certificate".into()));
    };
    peer_domain(cert, &st.allowed).map_err(|reason| {
        info!(%reason, "Zk peer refused");
        (StatusCode::FORBIDDEN, reason)
    })
}

fn refusal(peer: &str, e: ZkError) -> Response {
    match e {
        ZkError::Refused { status, reason } => {
            let status = StatusCode::from_u16(status).ok().filter(|s| s.is_client_error() || s.is_server_error());
            text(status.unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), &reason)
        }
        e => {
            warn!(peer, error = %e, "Zk handler failed");
            text(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
        }
    }
}

/// `GET /keymanagement/certificate`: this KMS's certificate to an allow-listed peer.
async fn certificate(State(st): State<Arc<ZkState>>, ConnectInfo(cert): ConnectInfo<PeerCert>) -> Response {
    let peer = match authorised(&st, &cert) {
        Ok(d) => d,
        Err((status, reason)) => return text(status, &reason),
    };
    match st.handler.certificate(peer).await {
        Ok(json) => (StatusCode::OK, [(header::CONTENT_TYPE, CERTIFICATE_CONTENT_TYPE)], json).into_response(),
        Err(e) => refusal(peer, e),
    }
}

async fn resolve(
    State(st): State<Arc<ZkState>>,
    ConnectInfo(cert): ConnectInfo<PeerCert>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let peer = match authorised(&st, &cert) {
        Ok(d) => d,
        Err((status, reason)) => return text(status, &reason),
    };
    if !query.as_deref().is_some_and(|q| q.split('&').any(|p| p == ZK_QUERY)) {
        return text(StatusCode::BAD_REQUEST, "Zk carries only requesttype=ticketresolve");
    }
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    if !ct.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case(MIKEY_CONTENT_TYPE)) {
        return text(StatusCode::UNSUPPORTED_MEDIA_TYPE, "Content-Type must be application/mikey");
    }
    let request = match STANDARD.decode(body.trim_ascii()) {
        Ok(r) if !r.is_empty() => r,
        Ok(_) => return text(StatusCode::BAD_REQUEST, "empty MIKEY message"),
        Err(e) => return text(StatusCode::BAD_REQUEST, &format!("body is not base64: {e}")),
    };
    match st.handler.resolve(peer, request).await {
        Ok(answer) => (StatusCode::OK, [(header::CONTENT_TYPE, MIKEY_CONTENT_TYPE)], STANDARD.encode(answer)).into_response(),
        Err(e) => refusal(peer, e),
    }
}
