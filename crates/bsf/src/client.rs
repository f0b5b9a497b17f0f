//! The UE's HTTP driver for Ub (TS 24.109 §4) and a Zn client for NAFs, over the HTTP/1.1
//! client of `http.rs` (re-exported here: [`Endpoint`], [`request`], ...), which keeps
//! connections alive, so a bootstrap's two or three Ub requests share one connection.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use mediasec_gba::GbaError;
use mediasec_gba::ue::{Bootstrap, GbaUBootstrap, USER_AGENT, UeAnswer, UeBootstrap, UB_URI};
use mediasec_gba::uicc::Uicc;

use crate::BsfError;
pub use crate::http::{Endpoint, HttpResponse, IDLE_TIMEOUT, MAX_IDLE, MAX_RESPONSE, parse_response, request, split_url};

/// Bootstrap against the BSF at `bsf` (TS 24.109 §4.2, with resynchronisation §4.5), GBA_ME.
/// Returns the bootstrap and the highest accepted SQN (for the caller's USIM state).
pub async fn bootstrap(bsf: &Endpoint, mut ue: UeBootstrap) -> Result<(Bootstrap, u64), BsfError> {
    let boot = ub_run(bsf, &mut ue, UeBootstrap::on_success).await?;
    Ok((boot, ue.sqn_ms()))
}

/// GBA_U bootstrap (TS 33.220 §5.3.2, G.1) of a run made with [`UeBootstrap::with_uicc`]:
/// the same Ub exchange; returns what the ME keeps and the UICC, which holds Ks (NAF keys:
/// [`Uicc::naf_derivation`]) and its SQN_MS.
pub async fn bootstrap_gba_u(bsf: &Endpoint, mut ue: UeBootstrap) -> Result<(GbaUBootstrap, Uicc), BsfError> {
    let boot = ub_run(bsf, &mut ue, UeBootstrap::on_success_gba_u).await?;
    let uicc = ue.into_uicc().ok_or(GbaError::WrongGbaMode { run: "GBA_ME", called: "GBA_U" })?;
    Ok((boot, uicc))
}

/// The Ub exchange of both modes; `finish` handles the 200.
async fn ub_run<T>(
    bsf: &Endpoint,
    ue: &mut UeBootstrap,
    finish: impl FnOnce(&mut UeBootstrap, &str, &[u8]) -> Result<T, GbaError>,
) -> Result<T, BsfError> {
    let mut auth = ue.initial_authorization();
    // Initial request, at most one resync, then the response: 3 rounds suffice; allow 4.
    for _ in 0..4 {
        let r = request(bsf, "GET", UB_URI, &[("Authorization", &auth), ("User-Agent", USER_AGENT)], b"").await?;
        match r.status {
            401 => {
                let www = r.header("www-authenticate").ok_or(BsfError::Http { offset: 0, reason: "401 without WWW-Authenticate" })?;
                auth = match ue.on_challenge(www, "GET", b"", &rand::random())? {
                    UeAnswer::Response(a) | UeAnswer::Resync(a) => a,
                };
            }
            200 => {
                let info = r.header("authentication-info").ok_or(BsfError::Http { offset: 0, reason: "200 without Authentication-Info" })?;
                return Ok(finish(ue, info, &r.body)?);
            }
            status => return Err(BsfError::Status { status, body: r.body_text() }),
        }
    }
    Err(BsfError::Status { status: 401, body: "bootstrapping did not converge".into() })
}

/// What Zn returns for a B-TID.
#[derive(Debug, Clone, serde::Deserialize)]
#[non_exhaustive]
pub struct ZnKey {
    /// Ks_NAF (GBA_ME) or Ks_ext_NAF (GBA_U), base64.
    pub ks_naf: String,
    /// `"GBA_U"` for a GBA_U bootstrap; absent for GBA_ME.
    #[serde(default)]
    pub gba_type: Option<String>,
    /// Ks_int_NAF, base64: only for a GBA_U bootstrap and a NAF that asked as GBA_U aware.
    #[serde(default)]
    pub ks_int_naf: Option<String>,
    /// IMPI.
    pub impi: String,
    /// IMPUs.
    pub impus: Vec<String>,
    /// Bootstrapping time (xs:dateTime).
    pub bootstrap_time: String,
    /// Key expiry (xs:dateTime).
    pub key_expiry: String,
}

impl ZnKey {
    /// Ks_NAF / Ks_ext_NAF octets.
    pub fn key(&self) -> Result<Vec<u8>, BsfError> {
        STANDARD.decode(&self.ks_naf).map_err(|_| BsfError::Http { offset: 0, reason: "ks_naf is not base64" })
    }

    /// Ks_int_NAF octets, when the BSF sent it.
    pub fn int_key(&self) -> Result<Option<Vec<u8>>, BsfError> {
        self.ks_int_naf
            .as_ref()
            .map(|k| STANDARD.decode(k).map_err(|_| BsfError::Http { offset: 0, reason: "ks_int_naf is not base64" }))
            .transpose()
    }
}

/// NAF side: fetch Ks_NAF and the user's profile by B-TID. `Ok(None)` on 404 (unknown or
/// expired B-TID: tell the UE to bootstrap again).
pub async fn zn_lookup(
    bsf: &Endpoint,
    token: &str,
    btid: &str,
    naf_fqdn: &str,
    ua_protocol_id: &str,
) -> Result<Option<ZnKey>, BsfError> {
    zn_post(bsf, token, btid, naf_fqdn, ua_protocol_id, false).await
}

/// [`zn_lookup`] by a GBA_U aware NAF (TS 33.220 §5.3.3): for a GBA_U bootstrap the answer
/// also carries Ks_int_NAF.
pub async fn zn_lookup_gba_u_aware(
    bsf: &Endpoint,
    token: &str,
    btid: &str,
    naf_fqdn: &str,
    ua_protocol_id: &str,
) -> Result<Option<ZnKey>, BsfError> {
    zn_post(bsf, token, btid, naf_fqdn, ua_protocol_id, true).await
}

/// The Zn request of both; `gba_u_aware` is sent only when true (an unaware NAF's request is
/// the one of GBA_ME, field for field).
async fn zn_post(bsf: &Endpoint, token: &str, btid: &str, naf_fqdn: &str, ua_protocol_id: &str, gba_u_aware: bool) -> Result<Option<ZnKey>, BsfError> {
    let mut body = serde_json::json!({ "btid": btid, "naf_fqdn": naf_fqdn, "ua_protocol_id": ua_protocol_id });
    if gba_u_aware && let Some(fields) = body.as_object_mut() {
        fields.insert("gba_u_aware".into(), true.into());
    }
    let body = body.to_string();
    let bearer = format!("Bearer {token}");
    let r = request(bsf, "POST", "/zn/v1/naf-keys", &[("Authorization", &bearer), ("Content-Type", "application/json")], body.as_bytes()).await?;
    match r.status {
        200 => serde_json::from_slice(&r.body).map(Some).map_err(|_| BsfError::Http { offset: 0, reason: "Zn body is not the documented JSON" }),
        404 => Ok(None),
        status => Err(BsfError::Status { status, body: r.body_text() }),
    }
}

/// Current Unix time in seconds.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
