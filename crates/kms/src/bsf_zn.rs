//! Zn over HTTP to the mediasec BSF (`POST /zn/v1/naf-keys`, docs/gba.md) with the Ua
//! security protocol identifier of TS 33.328 (`01 00 00 00 06`, TS 33.220 Annex H) for the
//! KMS, or another one for another NAF ([`BsfZn::for_protocol`]).
//!
//! GBA_U UEs need nothing else: TS 33.328 keys MIKEY with "Ks_NAF or Ks_ext_NAF", and MIKEY
//! runs in the ME, which only gets Ks_ext_NAF (TS 33.220 G.2). The KMS asks as a GBA_U unaware
//! NAF, so the BSF's `ks_naf` is Ks_ext_NAF for a GBA_U bootstrap and Ks_int_NAF never comes.

use std::sync::Arc;

use mediasec_bsf::client::{Endpoint, zn_lookup};
use mediasec_gba::bootstrapping_info::parse_time;
use mediasec_gba::kdf::UaProtocolId;
use zeroize::Zeroizing;

use crate::error::KmsError;
use crate::zn::{NafKey, Zn, ZnFuture};

/// The BSF as a Zn source for the NAF `naf_fqdn` (the KMS, or another NAF of ours: the
/// voicemail server, docs/voicemail.md).
pub struct BsfZn {
    endpoint: Endpoint,
    token: String,
    naf_fqdn: String,
    ua: UaProtocolId,
}

impl BsfZn {
    /// Zn client of the KMS `naf_fqdn` with a bearer `token` (Ua protocol: TS 33.328).
    pub fn new(endpoint: Endpoint, token: impl Into<String>, naf_fqdn: impl Into<String>) -> Self {
        Self::for_protocol(endpoint, token, naf_fqdn, UaProtocolId::IMS_MEDIA_PLANE)
    }

    /// Zn client of the NAF `naf_fqdn` keyed for the Ua security protocol `ua` (TS 33.220
    /// Annex H), e.g. [`UaProtocolId::HTTP_DIGEST`] for a NAF authenticating with HTTP Digest.
    pub fn for_protocol(endpoint: Endpoint, token: impl Into<String>, naf_fqdn: impl Into<String>, ua: UaProtocolId) -> Self {
        Self { endpoint, token: token.into(), naf_fqdn: naf_fqdn.into(), ua }
    }
}

impl Zn for BsfZn {
    fn naf_key<'a>(&'a self, btid: &'a str, _now: u64) -> ZnFuture<'a> {
        Box::pin(async move {
            let ua = self.ua.to_hex();
            let Some(k) = zn_lookup(&self.endpoint, &self.token, btid, &self.naf_fqdn, &ua).await.map_err(|e| KmsError::Zn(e.to_string()))? else {
                return Ok(None);
            };
            let ks_naf = Zeroizing::new(k.key().map_err(|e| KmsError::Zn(e.to_string()))?);
            let expiry = parse_time(&k.key_expiry).map_err(|e| KmsError::Zn(format!("key_expiry: {e}")))?;
            Ok(Some(Arc::new(NafKey { ks_naf, impus: k.impus, expiry })))
        })
    }
}
