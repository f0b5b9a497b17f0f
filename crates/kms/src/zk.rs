//! Zk wiring (TS 33.328 Annex B.2.3) over `mediasec-kms-zk` (mutually authenticated TLS,
//! private CA): the KMS_R side as [`Peers`] and the KMS_I side as a `ZkHandler`.
//!
//! Beside resolves, a KMS hands its KMS certificate to its Zk peers (`ZkHandler::certificate`,
//! `Peers::certificate`; docs/zk.md "KMS certificates").
//!
//! A KMS's Zk name is its domain; its FQDN (IDRkms of its tickets) is `kms.<domain>`
//! (`mediasec_kms_zk::pki::kms_name`), so the issuer of a ticket names its Zk peer.

use std::collections::BTreeSet;
use std::sync::Arc;

use mediasec_kms_zk::{ZkClient, ZkError, ZkFuture, ZkHandler, pki};

use crate::error::KmsError;
use crate::kms::{PeerFuture, Peers};
use crate::server::Service;

/// The Zk domain of a KMS FQDN (`kms.<domain>`).
pub fn domain_of(kms_fqdn: &str) -> Option<&str> {
    kms_fqdn.strip_prefix("kms.").filter(|d| pki::kms_name(d) == kms_fqdn && !d.is_empty())
}

/// KMS_R side: the peers this KMS forwards resolves to.
pub struct ZkPeers {
    client: ZkClient,
    domains: BTreeSet<String>,
}

impl ZkPeers {
    /// Peers `domains`, reached with `client` (which bounds every resolve in time).
    pub fn new(client: ZkClient, domains: BTreeSet<String>) -> Self {
        Self { client, domains }
    }
}

impl Peers for ZkPeers {
    fn knows(&self, kms: &str) -> bool {
        domain_of(kms).is_some_and(|d| self.domains.contains(d))
    }

    fn resolve<'a>(&'a self, kms: &'a str, request: Vec<u8>) -> PeerFuture<'a> {
        Box::pin(async move {
            let domain = domain_of(kms).ok_or_else(|| KmsError::Zk(format!("{kms} is not kms.<domain>")))?;
            self.client.resolve(domain, &request).await.map_err(|e| KmsError::Zk(e.to_string()))
        })
    }

    fn domains(&self) -> Vec<String> {
        self.domains.iter().cloned().collect()
    }

    fn certificate<'a>(&'a self, domain: &'a str) -> PeerFuture<'a> {
        Box::pin(async move { self.client.certificate(domain).await.map_err(|e| KmsError::Zk(e.to_string())) })
    }
}

/// KMS_I side: answers resolves forwarded by allow-listed peers.
pub struct ZkServer(pub Arc<Service>);

impl ZkHandler for ZkServer {
    fn resolve<'a>(&'a self, peer_domain: &'a str, request: Vec<u8>) -> ZkFuture<'a, Vec<u8>> {
        Box::pin(async move { self.0.peer_resolve(peer_domain, &request).await.map_err(|(status, reason)| ZkError::Refused { status, reason }) })
    }

    /// Our KMS certificate set (one per generation), to an allow-listed peer (docs/zk.md "KMS certificates").
    fn certificate<'a>(&'a self, _peer_domain: &'a str) -> ZkFuture<'a, Vec<u8>> {
        Box::pin(async move {
            self.0.refresh_generations().await;
            self.0.own_certificates().map(|set| crate::community::encode_set(&set)).map_err(|e| ZkError::Refused { status: 503, reason: e.to_string() })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::domain_of;

    #[test]
    fn fqdn_to_domain() {
        assert_eq!(domain_of("kms.a.example"), Some("a.example"));
        assert_eq!(domain_of("a.example"), None);
        assert_eq!(domain_of("kms."), None);
    }
}
