//! The high-security mode in calls (docs/high-security.md; TR 33.829 high-security groups):
//! ECCSI-signed MIKEY-DH ([`mediasec_mikey::signed_dh`]) in `a=key-mgmt:mikey` (RFC 4567,
//! media level) of an `RTP/SAVP` offer and answer. No ticket, no KMS in the call: both sides
//! sign with the ECCSI key their KMS issued for their identity and month (Ua `keyprovision`,
//! `mediasec_kms::keyprov`), verify the other's signature under a KPAK they trust, and derive
//! the SRTP keys from an ephemeral Diffie-Hellman secret (OAKLEY 5) nobody else learns — the
//! KMS included, so it has no key to release for LI.
//!
//! - Offerer: DH_INIT (IDRi = our URI, IDRr = the callee's SIP URI, CS 1 = our SSRC).
//! - Answerer: verifies DH_INIT under each trusted KPAK in turn (the signer's KMS is not named
//!   in the message), checks IDRr is us, freshness and replay; answers DH_RESP with its SSRC
//!   (CS 2). A failing offer is refused with 488 and the RFC 3830 §5.1.2 MIKEY Error message
//!   ([`Error::KeyRefused`], put in the 488's SDP by the agent).
//! - Offerer: verifies DH_RESP (signature by the callee's identity, echo of our DH value) and
//!   requires the answering identity to be the one called. An answer without key management,
//!   or whose DH_RESP fails, fails the call: no fallback to RTP or to another mode.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use mediasec_mikey::eccsi::{Kpak, SigningKey};
use mediasec_mikey::psk::ReplayCache;
use mediasec_mikey::registry::{ErrorCode, PrfFunc};
use mediasec_mikey::signed_dh::{self, Keys, Offer};
use mediasec_mikey::srtp_policy;
use mediasec_sdp::Sdp;

use crate::offer_answer::{Media, RTCP_MUX, SAVP, audio, sdp_text};
use crate::ticket::{self, KmsAccess};
use crate::Error;

/// Accepted clock difference between caller and callee (RFC 3830 §5.4), seconds.
pub const SKEW_SECS: u64 = 30;

/// Replay cache of received DH_INITs, bounded by the skew window (RFC 3830 §5.4).
#[derive(Default)]
struct Replay(std::collections::HashMap<(u32, u64, Vec<u8>), u64>);

impl ReplayCache for Replay {
    fn insert(&mut self, csb_id: u32, timestamp: u64, mac: &[u8]) -> bool {
        let oldest = (now_ntp() >> 32).saturating_sub(2 * SKEW_SECS);
        self.0.retain(|_, t| *t >= oldest);
        self.0.insert((csb_id, timestamp, mac.to_vec()), timestamp >> 32).is_none()
    }
}

/// A UE's high-security credentials: its URI, the ECCSI key its KMS issued for it this month,
/// and the KPAKs it trusts (its own KMS's first; others are configuration).
pub struct HighSecurity {
    uri: String,
    key: SigningKey,
    kpaks: Vec<Kpak>,
    replay: Replay,
}

/// What the offerer keeps until DH_RESP arrives: the DH secret (dropped with it).
pub struct PendingCall {
    pending: signed_dh::Pending,
}

fn now_ntp() -> u64 {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    mediasec_kms::tp_data::ntp(d).value
}

fn random(b: &mut [u8]) {
    rand::RngCore::fill_bytes(&mut rand::rng(), b);
}

fn dh(e: &mediasec_mikey::Error) -> Error {
    Error::Negotiation(format!("high-security (MIKEY-DH): {e}"))
}

fn protection(keys: &Keys, initiator: bool) -> Result<crate::offer_answer::Protection, Error> {
    let (tx, rx) = if initiator { (&keys.initiator_stream, &keys.responder_stream) } else { (&keys.responder_stream, &keys.initiator_stream) };
    ticket::protection(tx, rx)
}

/// Runs a verification under each trusted KPAK in turn until one accepts the signature (the
/// message does not name the signer's KMS); a failure other than ERR Auth failure (time,
/// replay, identity, DH value) ends the search.
fn under_trusted<T>(kpaks: &[Kpak], mut verify: impl FnMut(&Kpak) -> Result<T, mediasec_mikey::Error>) -> Result<T, mediasec_mikey::Error> {
    let mut last = mediasec_mikey::Error::Rejected { code: ErrorCode::AUTH_FAILURE, reason: "no trusted KPAK".into() };
    for kpak in kpaks {
        match verify(kpak) {
            Err(e) if e.err_code() == ErrorCode::AUTH_FAILURE => last = e,
            other => return other,
        }
    }
    Err(last)
}

impl HighSecurity {
    /// Credentials from a validated signing key for `uri` and the trusted KPAKs.
    pub fn new(uri: impl Into<String>, key: SigningKey, kpaks: Vec<Kpak>) -> Self {
        Self { uri: uri.into(), key, kpaks, replay: Replay::default() }
    }

    /// Fetches our signing key for `uri` (one of our IMPUs) from our KMS (Ua `keyprovision`,
    /// GBA-authenticated) and trusts its KPAK — taken from the MACed response — plus `others`
    /// (KPAKs of other KMSs, from configuration).
    pub async fn provision(kms: &KmsAccess, uri: &str, others: Vec<Kpak>) -> Result<Self, Error> {
        let got = kms.client.provision_keys(&kms.ue, uri).await.map_err(|e| Error::Negotiation(format!("high-security key provisioning: {e}")))?;
        let mut kpaks = vec![got.kpak];
        kpaks.extend(others.into_iter().filter(|k| *k != got.kpak));
        Ok(Self::new(uri, got.key, kpaks))
    }

    /// Our URI (the identity we sign as).
    pub fn uri(&self) -> &str {
        &self.uri
    }
}

/// Offerer: DH_INIT to `callee_uri` in an `RTP/SAVP` offer with SDP session version `version`.
pub fn offer(hs: &HighSecurity, local: SocketAddr, version: u64, ssrc: u32, callee_uri: &str) -> Result<(String, PendingCall), Error> {
    let callee = format!("sip:{}", ticket::uid_of(callee_uri)?);
    let o = Offer {
        prf: PrfFunc::MIKEY_1,
        csb_id: rand::random(),
        initiator_uri: hs.uri.clone(),
        responder_uri: callee,
        initiator_ssrc: ssrc,
        policy: srtp_policy::aes_cm_128_hmac_sha1_80(),
    };
    let (init, pending) = signed_dh::offer(&o, &hs.key, now_ntp(), &mut random).map_err(|e| dh(&e))?;
    Ok((sdp_text(local, version, SAVP, &[ticket::key_mgmt_line(init), RTCP_MUX.into()]), PendingCall { pending }))
}

/// Answerer: verifies the DH_INIT of `offer` and answers DH_RESP; the answer SDP (session
/// version `version`) and the media. A DH_INIT that fails is [`Error::KeyRefused`] with the
/// MIKEY Error message to return.
pub fn answer(hs: &mut HighSecurity, offer: &Sdp, local: SocketAddr, version: u64, ssrc: u32) -> Result<(String, Media), Error> {
    let refused = |reason: String| Error::KeyRefused { reason, mikey_error: None };
    let stream = audio(offer).map_err(|e| refused(e.to_string()))?;
    let init = ticket::mikey_data(offer)
        .map_err(|e| refused(e.to_string()))?
        .ok_or_else(|| refused("offer without a=key-mgmt:mikey; policy requires the high-security mode".into()))?;
    let now = now_ntp();
    let HighSecurity { uri, key, kpaks, replay } = hs;
    let outcome = under_trusted(kpaks, |kpak| signed_dh::answer(&init, kpak, key, uri, ssrc, now, SKEW_SECS, replay, &mut random));
    let answered = outcome.map_err(|e| Error::KeyRefused { reason: format!("high-security (MIKEY-DH): {e}"), mikey_error: signed_dh::error_reply(&init, &e, now) })?;
    let protection = protection(&answered.keys, false).map_err(|e| refused(e.to_string()))?;
    let mut lines = stream.answer_lines();
    lines.insert(0, ticket::key_mgmt_line(answered.response));
    Ok((sdp_text(local, version, SAVP, &lines), stream.media(stream.mux, protection)))
}

/// Offerer: verifies DH_RESP under a trusted KPAK and requires the signer to be the callee.
pub fn process_answer(hs: &HighSecurity, pending: &PendingCall, answer: &Sdp) -> Result<Media, Error> {
    let stream = audio(answer)?;
    let resp = ticket::mikey_data(answer)?.ok_or_else(|| Error::Downgrade("answer without a=key-mgmt:mikey; policy requires the high-security mode".into()))?;
    let now = now_ntp();
    let outcome = under_trusted(&hs.kpaks, |kpak| pending.pending.finish(&resp, kpak, now, SKEW_SECS));
    let done = outcome.map_err(|e| Error::Downgrade(format!("high-security (MIKEY-DH) answer refused: {e}")))?;
    if done.redirected {
        return Err(Error::Negotiation(format!("the answering party is {}, not {}", done.responder_uri, pending.pending.offer().responder_uri)));
    }
    Ok(stream.media(stream.mux, protection(&done.keys, true)?))
}
