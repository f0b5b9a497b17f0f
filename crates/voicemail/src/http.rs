//! The retrieval API (docs/voicemail.md), axum: `GET /voicemail/v1/messages` (the summaries
//! of the caller's mailboxes), `GET /voicemail/v1/messages/{id}` (the whole record: metadata,
//! base64 TRANSFER_INIT and packets), `DELETE /voicemail/v1/messages/{id}`. Every request is
//! authenticated with GBA HTTP Digest ([`crate::auth`]); a user sees only the messages of
//! mailboxes that are one of its B-TID's IMPUs.
//!
//! | case | status |
//! |---|---|
//! | no / bad / stale credentials | 401 + `WWW-Authenticate` (fresh nonce), reason in the body |
//! | a message of another mailbox | 403, reason |
//! | no such message, id not a number | 404, reason |
//! | Zn or the store failed | 503, reason |
//!
//! `GET /metrics` (unauthenticated, as the BSF's and the KMS's) serves [`Metrics`].

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use crate::api::{BASE, MessageDoc};
use crate::auth::{Authenticated, NafAuth, Refusal};
use crate::deposit::mailbox_of;
use crate::metrics::Metrics;
use crate::record::Record;
use crate::store::Store;

/// What the handlers share.
pub struct Api {
    store: Store,
    auth: NafAuth,
    metrics: Arc<Metrics>,
}

fn plain(status: StatusCode, reason: impl Into<String>) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain")], reason.into()).into_response()
}

impl Api {
    /// The API over `store`, authenticating with `auth`, counting in `metrics` (the deposit
    /// side's: [`crate::deposit::Deposit::metrics`]).
    pub fn new(store: Store, auth: NafAuth, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self { store, auth, metrics })
    }

    /// The router.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route(BASE, get(list))
            .route(&format!("{BASE}/{{id}}"), get(fetch).delete(remove))
            .layer(axum::middleware::map_response_with_state(Arc::clone(self), count_response))
            .route("/metrics", get(metrics))
            .with_state(Arc::clone(self))
    }

    async fn authenticate(&self, method: &Method, uri: &Uri, headers: &HeaderMap) -> Result<Authenticated, Response> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        let target = uri.path_and_query().map_or_else(|| uri.path().to_owned(), |p| p.as_str().to_owned());
        self.auth.verify(method.as_str(), &target, authorization, now).await.map_err(|r| match r {
            Refusal::Unauthenticated(why) => {
                tracing::info!(%why, "voicemail API: 401");
                (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, self.auth.challenge(now))], why).into_response()
            }
            Refusal::Unavailable(why) => plain(StatusCode::SERVICE_UNAVAILABLE, why),
        })
    }

    /// Message `id` if it is in one of `who`'s mailboxes.
    async fn owned(&self, who: &Authenticated, id: &str) -> Result<Record, Response> {
        let id: u64 = id.parse().map_err(|_| plain(StatusCode::NOT_FOUND, "message ids are numbers"))?;
        let r = self.store.get(id).await.map_err(|e| plain(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?.ok_or_else(|| plain(StatusCode::NOT_FOUND, "no such message"))?;
        if !owns(&who.impus, &r.mailbox) {
            tracing::info!(btid = %who.btid, id, "voicemail API: 403 (another mailbox)");
            return Err(plain(StatusCode::FORBIDDEN, "the message is in a mailbox that is not one of your identities"));
        }
        Ok(r)
    }
}

/// Whether `mailbox` is one of the authenticated user's IMPUs.
fn owns(impus: &[String], mailbox: &str) -> bool {
    impus.iter().any(|i| mailbox_of(i).is_ok_and(|m| m == mailbox))
}

async fn list(State(api): State<Arc<Api>>, method: Method, uri: Uri, headers: HeaderMap) -> Response {
    let who = match api.authenticate(&method, &uri, &headers).await {
        Ok(w) => w,
        Err(r) => return r,
    };
    let mut mailboxes: Vec<String> = who.impus.iter().filter_map(|i| mailbox_of(i).ok()).collect();
    mailboxes.sort_unstable();
    mailboxes.dedup();
    match api.store.summaries_of(&mailboxes).await {
        Ok(summaries) => Json(summaries).into_response(),
        Err(e) => plain(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

async fn fetch(State(api): State<Arc<Api>>, Path(id): Path<String>, method: Method, uri: Uri, headers: HeaderMap) -> Response {
    let who = match api.authenticate(&method, &uri, &headers).await {
        Ok(w) => w,
        Err(r) => return r,
    };
    match api.owned(&who, &id).await {
        Ok(r) => Json(MessageDoc::of(&r)).into_response(),
        Err(r) => r,
    }
}

async fn remove(State(api): State<Arc<Api>>, Path(id): Path<String>, method: Method, uri: Uri, headers: HeaderMap) -> Response {
    let who = match api.authenticate(&method, &uri, &headers).await {
        Ok(w) => w,
        Err(r) => return r,
    };
    let r = match api.owned(&who, &id).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    match api.store.delete(r.id, &r.mailbox).await {
        Ok(_) => {
            api.metrics.messages_deleted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => plain(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// Counts every API response by status.
async fn count_response(State(api): State<Arc<Api>>, response: Response) -> Response {
    api.metrics.api_answered(response.status().as_u16());
    response
}

async fn metrics(State(api): State<Arc<Api>>) -> Response {
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4")], api.metrics.render()).into_response()
}

/// Serves the API over plain HTTP on `listener` until `until` completes (then the open
/// connections, idle keep-alive ones included, are closed after their request in progress)
/// or the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, api: Arc<Api>, until: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
    axum::serve(listener, api.router()).with_graceful_shutdown(until).await
}

/// Serves the API over HTTPS (TS 33.222 §5.3: Digest inside server-authenticated TLS; the
/// BSF's rustls listener), as [`serve`].
pub async fn serve_tls(listener: mediasec_bsf::tls::TlsListener, api: Arc<Api>, until: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
    axum::serve(listener, api.router()).with_graceful_shutdown(until).await
}
