//! The UE's HTTP driver for Ua (TS 33.328 Annex A): one `POST
//! /keymanagement?requesttype=...` per exchange, base64 MIKEY bodies, around the sans-IO
//! [`Ue`](crate::ue::Ue).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use mediasec_bsf::client::{Endpoint, request};

use crate::error::KmsError;
use crate::keyprov::{self, Period, Provisioned};
use crate::server::CONTENT_TYPE;
use crate::ue::{Ask, HeldTicket, Resolved, Ue};

/// User-Agent of the UE's KMS client (the Annex A example form).
pub const USER_AGENT: &str = "KMSAgent; mediasec 3gpp-gba";

/// A Ua client of one KMS.
#[derive(Clone)]
pub struct KmsClient {
    endpoint: Endpoint,
}

fn now() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default()
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut b);
    b
}

impl KmsClient {
    /// A client of the KMS at `endpoint` (`http(s)://host:port`).
    pub fn new(endpoint: Endpoint) -> Self {
        Self { endpoint }
    }

    /// Posts a MIKEY message; returns the MIKEY answer of a 200 (a response or an Error
    /// message), or the HTTP status and reason otherwise.
    pub async fn post(&self, requesttype: &str, mikey: &[u8]) -> Result<Vec<u8>, KmsError> {
        let path = format!("/keymanagement?requesttype={requesttype}");
        let body = STANDARD.encode(mikey);
        let r = request(&self.endpoint, "POST", &path, &[("Content-Type", CONTENT_TYPE), ("User-Agent", USER_AGENT)], body.as_bytes())
            .await
            .map_err(|e| KmsError::Http(e.to_string()))?;
        if r.status != 200 {
            return Err(KmsError::Http(format!("{} {}", r.status, String::from_utf8_lossy(&r.body).trim())));
        }
        let compact: Vec<u8> = r.body.iter().copied().filter(|b| !b.is_ascii_whitespace()).collect();
        STANDARD.decode(compact).map_err(|_| KmsError::Http("200 body is not base64".into()))
    }

    /// Ticket Request (Annex B.1): a reusable cached ticket is not requested again by the
    /// caller; see [`Ue::cached_ticket`].
    pub async fn request_ticket(&self, ue: &mut Ue, ask: &Ask) -> Result<HeldTicket, KmsError> {
        let (req, pending) = ue.request_init(ask, u32::from_be_bytes(random()), now(), random())?;
        let resp = self.post("ticketrequest", &req).await?;
        ue.on_request_resp(pending, &resp, now())
    }

    /// Ticket Resolve (Annex B.2.2) of the ticket in `transfer_init`, unless a reusable
    /// resolve is cached.
    pub async fn resolve(&self, ue: &mut Ue, transfer_init: &[u8]) -> Result<Resolved, KmsError> {
        if let Some(r) = ue.cached_resolve(transfer_init, now()) {
            return Ok(r);
        }
        let (req, pending) = ue.resolve_init(transfer_init, u32::from_be_bytes(random()), now(), random())?;
        let resp = self.post("ticketresolve", &req).await?;
        ue.on_resolve_resp(pending, &resp, now())
    }

    /// Ua `keyprovision` (ours, [`crate::keyprov`]): the ECCSI signing key of `uri` (one of
    /// the user's IMPUs) for the current month (UTC), verified, unwrapped and validated
    /// against the KPAK the MACed response names. A refusal is `KmsError::Http` with the
    /// status and reason.
    pub async fn provision_keys(&self, ue: &Ue, uri: &str) -> Result<Provisioned, KmsError> {
        self.provision_keys_for(ue, uri, Period::of_unix(now().as_secs())?, false).await
    }

    /// [`Self::provision_keys`] for the key period `period` (the KMS issues the current month
    /// or the next: a UE renews ahead of the month boundary, docs/high-security.md §8); with
    /// `sakke`, the MIKEY-SAKKE keys too (RSK and Z, policy `mikey_sakke`).
    pub async fn provision_keys_for(&self, ue: &Ue, uri: &str, period: Period, sakke: bool) -> Result<Provisioned, KmsError> {
        let (body, pending) = ue.keyprov_request(uri, period, now(), random(), sakke)?;
        self.post_keyprovision(&body, pending).await
    }

    /// The HTTP half of [`Self::provision_keys_for`]: posts a `keyprovision` request built with
    /// [`Ue::keyprov_request`] and opens the response with its `pending` state. For a caller
    /// that keeps its [`Ue`] where it cannot be borrowed across the exchange (the mediasec UE
    /// agent holds it under a lock it does not keep across HTTP).
    pub async fn post_keyprovision(&self, body: &[u8], pending: keyprov::Pending) -> Result<Provisioned, KmsError> {
        let r = request(&self.endpoint, "POST", "/keymanagement?requesttype=keyprovision", &[("Content-Type", keyprov::CONTENT_TYPE), ("User-Agent", USER_AGENT)], body)
            .await
            .map_err(|e| KmsError::Http(e.to_string()))?;
        if r.status != 200 {
            return Err(KmsError::Http(format!("{} {}", r.status, String::from_utf8_lossy(&r.body).trim())));
        }
        pending.open(&r.body)
    }

    /// `GET /keymanagement/kpak` (ours): the KMS's published KPAK (unauthenticated: for
    /// configuring trust in another KMS's community out of band, not for a UE's own KMS,
    /// whose KPAK comes MACed with its keys).
    pub async fn kpak(&self) -> Result<mediasec_mikey::eccsi::Kpak, KmsError> {
        let bytes = self.public_key("kpak").await?;
        mediasec_mikey::eccsi::Kpak::from_uncompressed(&bytes).map_err(|e| KmsError::Http(format!("kpak: {e}")))
    }

    /// `GET /keymanagement/kpak` (ours): the KMS's published SAKKE public key Z (MIKEY-SAKKE;
    /// unauthenticated like the KPAK).
    pub async fn sakke_z(&self) -> Result<mediasec_mikey::sakke::PublicKey, KmsError> {
        let bytes = self.public_key("sakke_z").await?;
        mediasec_mikey::sakke::PublicKey::from_uncompressed(&bytes).map_err(|e| KmsError::Http(format!("sakke_z: {e}")))
    }

    /// The octets of field `field` of `GET /keymanagement/kpak`.
    async fn public_key(&self, field: &str) -> Result<Vec<u8>, KmsError> {
        let r = request(&self.endpoint, "GET", "/keymanagement/kpak", &[("User-Agent", USER_AGENT)], b"").await.map_err(|e| KmsError::Http(e.to_string()))?;
        if r.status != 200 {
            return Err(KmsError::Http(format!("{} {}", r.status, String::from_utf8_lossy(&r.body).trim())));
        }
        let v: serde_json::Value = serde_json::from_slice(&r.body).map_err(|e| KmsError::Http(format!("KPAK body: {e}")))?;
        let text = v.get(field).and_then(serde_json::Value::as_str).ok_or_else(|| KmsError::Http(format!("KPAK body has no {field}")))?;
        hex::decode(text).map_err(|_| KmsError::Http(format!("{field} is not hex")))
    }
}
