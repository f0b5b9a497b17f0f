//! An HTTP server (axum `serve`) running in its own task, stopped gracefully and within a
//! bound: the in-process handle of the BSF ([`crate::server::serve`]), the KMS
//! (`mediasec_kms::server::serve`) and the voicemail API (`mediasec_voicemail::service`).
//!
//! On [`Serving::shutdown`] the server accepts no more connections and tells every open one
//! to close (axum's graceful shutdown, hyper's `graceful_shutdown`): an idle kept-alive
//! connection — the project's client keeps them for reuse (RFC 9112 §9.3, `client::Endpoint`)
//! — is closed at once, one with a request in progress once its response is sent; the call
//! returns when they have all ended, or after [`GRACE`]. Each connection task holds the
//! server's state, its store included, so a server that stopped this way has released its
//! store: the same redb file can be opened again at once (an in-process restart). Aborting the
//! `serve` task instead returns before its connection tasks end, and a new server on the same
//! file then fails with redb's "Database already open".
//!
//! Past [`GRACE`] the handle stops waiting (logged): the connections still answering a request
//! finish it on their own, and until they do their state stays held.

use std::fmt::Display;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long [`Serving::shutdown`] waits for the open connections to end.
pub const GRACE: Duration = Duration::from_secs(5);

/// The future a server's graceful shutdown waits for (axum's `with_graceful_shutdown`):
/// it completes when [`Serving::shutdown`] is called.
pub type Until = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A running server task; dropping the handle aborts the task (no grace).
pub struct Serving {
    what: &'static str,
    task: JoinHandle<()>,
    stop: Option<oneshot::Sender<()>>,
}

impl Serving {
    /// Spawns `serve(until)`, a server that shuts down gracefully once `until` completes;
    /// `what` names it in log lines (its error, if it stops with one, is logged).
    pub fn spawn<F, E>(what: &'static str, serve: impl FnOnce(Until) -> F) -> Self
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: Display,
    {
        let (stop, stopped) = oneshot::channel::<()>();
        let until: Until = Box::pin(async move {
            let _ = stopped.await;
        });
        let served = serve(until);
        let task = tokio::spawn(async move {
            if let Err(e) = served.await {
                tracing::warn!(error = %e, "{what} stopped");
            }
        });
        Self { what, task, stop: Some(stop) }
    }

    /// Stops the server gracefully (see the module doc), waiting at most [`GRACE`].
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if tokio::time::timeout(GRACE, &mut self.task).await.is_err() {
            tracing::warn!(after = ?GRACE, "{}: connections still answering requests at shutdown were left to finish on their own", self.what);
            self.task.abort();
            let _ = (&mut self.task).await;
        }
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.task.abort();
    }
}
