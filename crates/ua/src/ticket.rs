//! KMS-based e2e media security in calls (TS 33.328 §7.3 and Annex B, MIKEY-TICKET RFC 6043):
//! the SDP side of Ticket Transfer. The KMS exchanges (Ticket Request, Ticket Resolve over Ua)
//! and the MIKEY messages are `mediasec_kms::ue`'s; this module carries them in
//! `a=key-mgmt:mikey` (RFC 4567, media level) and turns the derived crypto sessions into SRTP.
//!
//! - Offerer: Ticket Request to its KMS for the callee's KMS UID (from the To URI), then
//!   TRANSFER_INIT in an `RTP/SAVP` offer, bound to our SSRC (CS 1).
//! - Answerer: Ticket Resolve at its KMS, then TRANSFER_RESP in the answer with its SSRC
//!   (CS 2). With key forking (RFC 6043 §5.1.1, mandatory in 3GPP) every fork resolves to its
//!   own key, so a fork that does not answer cannot decrypt the call.
//! - The offerer verifies TRANSFER_RESP (MACed with the responder's key) and checks the
//!   authenticated responder identity against the callee it asked for (TR 33.828 req 49).
//!
//! Unlike SDES, stripping or altering the key-management attribute is detectable: TRANSFER_INIT
//! and TRANSFER_RESP are MACed, so an altered message fails verification, and a stripped
//! answer is refused by the offerer's policy (no RTP fallback with this mode).

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mediasec_kms::client::KmsClient;
use mediasec_kms::identity::{KmsUid, Pattern};
use mediasec_kms::ue::{Ask, PendingTransfer, Ue as KmsUe};
use mediasec_sdp::{KeyMgmt, Level, Sdp};
use mediasec_srtp::Suite;

use crate::offer_answer::{audio, sdp_text, Media, Protection, RTCP_MUX, SAVP};
use crate::Error;

/// Validity asked for a ticket (TP Data end = now + this): a reusable one serves calls to
/// its responder for this long.
pub const TICKET_LIFETIME_SECS: u64 = 300;

/// A UE's access to its KMS: its bootstrapped KMS-side state and a Ua client.
pub struct KmsAccess {
    /// The sans-IO UE side (B-TID, Ks_NAF, ticket caches).
    pub ue: KmsUe,
    /// The Ua HTTP client of its KMS.
    pub client: KmsClient,
    /// The high-security credentials (ECCSI key from this KMS, trusted KPAKs), when the UE
    /// uses that mode ([`crate::high_security`]).
    pub high_security: Option<crate::high_security::HighSecurity>,
}

/// What the offerer keeps until TRANSFER_RESP arrives.
pub struct PendingCall {
    transfer: PendingTransfer,
    callee: KmsUid,
}

fn now() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default()
}

fn kms(e: mediasec_kms::KmsError) -> Error {
    Error::Negotiation(format!("MIKEY-TICKET: {e}"))
}

/// The KMS UID of a SIP URI (`sip:bob@b.example;x` → `bob@b.example`, TS 33.328 §7.3.1).
pub fn uid_of(uri: &str) -> Result<KmsUid, Error> {
    let bare = uri.trim().trim_start_matches('<').trim_start_matches("sips:").trim_start_matches("sip:");
    let bare = bare.split([';', '>', '?']).next().unwrap_or(bare);
    KmsUid::parse(bare).map_err(kms)
}

pub(crate) fn key_mgmt_line(data: Vec<u8>) -> String {
    format!("key-mgmt:{}", KeyMgmt { protocol: "mikey".into(), data })
}

pub(crate) fn protection(tx: &mediasec_mikey::srtp_policy::SrtpPolicy, rx: &mediasec_mikey::srtp_policy::SrtpPolicy) -> Result<Protection, Error> {
    let suite: Suite = tx.suite.parse().map_err(|_| Error::Negotiation(format!("MIKEY policy suite {} has no SRTP transform", tx.suite)))?;
    Ok(Protection::Srtp {
        suite,
        tx: Box::new(tx.to_srtp()?),
        rx: Box::new(rx.to_srtp()?),
        own_key: mediasec_sdp::fingerprint(&tx.master_key),
        peer_key: mediasec_sdp::fingerprint(&rx.master_key),
    })
}

/// The `mikey` key-management data of the audio stream (media level overrides session level).
pub(crate) fn mikey_data(sdp: &Sdp) -> Result<Option<Vec<u8>>, Error> {
    let index = audio(sdp)?.index;
    for level in [Level::Media(index), Level::Session] {
        for value in sdp.attribute_values(level, "key-mgmt")? {
            let k = KeyMgmt::parse(value)?;
            if k.protocol == "mikey" {
                return Ok(Some(k.data));
            }
        }
    }
    Ok(None)
}

/// Whether an offer carries `a=key-mgmt:mikey`.
pub fn has_mikey(sdp: &Sdp) -> bool {
    mikey_data(sdp).ok().flatten().is_some()
}

/// Offerer: Ticket Request (key forking asked; reusable when the UE reuses tickets, see
/// `mediasec_kms::ue::Ue::set_ticket_reuse`) and TRANSFER_INIT for `callee_uri`, in an offer
/// with SDP session version `version` (1, or higher in a re-INVITE). A cached reusable ticket
/// for the callee is used instead of a Ticket Request: such a call contacts no KMS on the
/// caller's side (TS 33.328 Annex B.1), and the callee's cached resolve spares its side too.
pub async fn offer(access: &mut KmsAccess, local: SocketAddr, version: u64, ssrc: u32, callee_uri: &str) -> Result<(String, PendingCall), Error> {
    let callee = uid_of(callee_uri)?;
    let held = match access.ue.cached_ticket(&callee, now()) {
        Some(held) => held,
        None => {
            let reusable = access.ue.ticket_reuse();
            let ask = Ask { recipients: vec![Pattern::parse(callee.as_str()).map_err(kms)?], reusable, forking: true, lifetime: TICKET_LIFETIME_SECS };
            access.client.request_ticket(&mut access.ue, &ask).await.map_err(kms)?
        }
    };
    let (init, transfer) = access.ue.transfer_init(&held, &callee, rand::random(), ssrc, now(), rand::random()).map_err(kms)?;
    Ok((sdp_text(local, version, SAVP, &[key_mgmt_line(init), RTCP_MUX.into()]), PendingCall { transfer, callee }))
}

/// Answerer: Ticket Resolve and TRANSFER_RESP; the answer SDP (session version `version`)
/// and the media.
pub async fn answer(access: &mut KmsAccess, offer: &Sdp, local: SocketAddr, version: u64, ssrc: u32) -> Result<(String, Media), Error> {
    let stream = audio(offer)?;
    let init = mikey_data(offer)?.ok_or_else(|| Error::Negotiation("offer without a=key-mgmt:mikey".into()))?;
    let resolved = access.client.resolve(&mut access.ue, &init).await.map_err(kms)?;
    let (resp, media) = access.ue.transfer_resp(&resolved, &init, ssrc, now()).map_err(kms)?;
    // We send the responder's stream (CS 2) and receive the initiator's (CS 1).
    let protection = protection(&media.responder_stream, &media.initiator_stream)?;
    let mut lines = stream.answer_lines();
    lines.insert(0, key_mgmt_line(resp));
    Ok((sdp_text(local, version, SAVP, &lines), stream.media(stream.mux, protection)))
}

/// Offerer: verifies TRANSFER_RESP and checks the authenticated responder is the callee.
pub fn process_answer(access: &mut KmsAccess, pending: &PendingCall, answer: &Sdp) -> Result<Media, Error> {
    let stream = audio(answer)?;
    let resp = mikey_data(answer)?.ok_or_else(|| Error::Downgrade("answer without a=key-mgmt:mikey; policy requires MIKEY-TICKET".into()))?;
    let (responder, media) = access.ue.on_transfer_resp(&pending.transfer, &resp, now()).map_err(kms)?;
    if responder != pending.callee {
        return Err(Error::Negotiation(format!("the answering party is {responder}, not {}", pending.callee)));
    }
    Ok(stream.media(stream.mux, protection(&media.initiator_stream, &media.responder_stream)?))
}
