//! The whole voicemail server as `mediasec voicemail serve`, the tests and the demo run it:
//! the store, the SIP deposit side and the retrieval API on one HTTP listener.

use std::net::SocketAddr;
use std::sync::Arc;

use mediasec_bsf::graceful::Serving;
use mediasec_kms::zn::Zn;

use crate::auth::NafAuth;
use crate::deposit::{Deposit, DepositConfig};
use crate::error::VoicemailError;
use crate::http::{Api, serve, serve_tls};
use crate::store::Store;

/// A running voicemail server.
pub struct Server {
    /// The SIP side.
    pub deposit: Deposit,
    /// The retrieval API's address.
    pub api_addr: SocketAddr,
    /// The API runs over TLS.
    pub https: bool,
    /// The store (shared with both sides).
    pub store: Store,
    /// The API server (stopped gracefully: open connections are closed too).
    http: Serving,
}

impl Server {
    /// On `store` (see [`Store::open`], [`Store::new`]), starts the deposit side (registering when configured) and
    /// serves the API on `api` (port 0 picks one) as the NAF `naf_fqdn`, authenticating users
    /// with Zn source `zn` (keyed for `naf_fqdn`); over HTTPS with `tls` = (certificate chain,
    /// private key) in PEM.
    pub async fn start(store: Store, deposit: DepositConfig, api: SocketAddr, tls: Option<(&[u8], &[u8])>, naf_fqdn: &str, zn: Arc<dyn Zn>) -> Result<Self, VoicemailError> {
        let tls = tls.map(|(cert, key)| mediasec_bsf::tls::server_config(cert, key, None)).transpose().map_err(|e| VoicemailError::Config(format!("TLS: {e}")))?;
        let deposit = Deposit::start(deposit, store.clone()).await?;
        let listener = tokio::net::TcpListener::bind(api).await?;
        let api_addr = listener.local_addr()?;
        let api = Api::new(store.clone(), NafAuth::new(zn, naf_fqdn), deposit.metrics());
        let https = tls.is_some();
        let http = match tls {
            Some(cfg) => {
                let listener = mediasec_bsf::tls::TlsListener::new(listener, cfg)?;
                Serving::spawn("voicemail API", |until| serve_tls(listener, api, until))
            }
            None => Serving::spawn("voicemail API", |until| serve(listener, api, until)),
        };
        tracing::info!(sip = %deposit.sip_addr(), api = %api_addr, https, "voicemail server running");
        Ok(Self { deposit, api_addr, https, store, http })
    }

    /// The API base URL (`http://addr` or `https://addr`).
    pub fn api_url(&self) -> String {
        format!("{}://{}", if self.https { "https" } else { "http" }, self.api_addr)
    }

    /// Stops both sides, writing the calls in progress first; the store is closed when this
    /// returns (it can be opened again, e.g. by a restarted server). The API closes its open
    /// connections too — clients keep idle ones alive (RFC 9112 §9.3), and each holds the
    /// store — letting requests in progress finish within [`mediasec_bsf::graceful::GRACE`].
    pub async fn shutdown(mut self) {
        self.deposit.shutdown().await;
        self.http.shutdown().await;
    }
}
