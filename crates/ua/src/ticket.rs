//! KMS-based e2e media security in calls (TS 33.328 §7.3 and Annex B, MIKEY-TICKET RFC 6043):
//! the SDP side of Ticket Transfer. The KMS exchanges (Ticket Request, Ticket Resolve over Ua)
//! and the MIKEY messages are `mediasec_kms::ue`'s; this module carries them in
//! `a=key-mgmt:mikey` (RFC 4567, media level) and turns the derived crypto sessions into SRTP.
//!
//! - Offerer: Ticket Request to its KMS for the callee's KMS UID (from the To URI), then
//!   TRANSFER_INIT in an `RTP/SAVP` offer, bound to our SSRC (CS 1). The offerer is whoever
//!   sends the SDP offer (RFC 4567 §3): a callee answering an offerless INVITE offers in its
//!   200 or reliable 18x, and its "callee" here is the caller (docs/sip.md §5 "Delayed offer").
//! - Answerer: Ticket Resolve at its KMS, then TRANSFER_RESP in the answer with its SSRC
//!   (CS 2). With key forking (RFC 6043 §5.1.1, mandatory in 3GPP) every fork resolves to its
//!   own key, so a fork that does not answer cannot decrypt the call.
//! - The offerer verifies TRANSFER_RESP (MACed with the responder's key) and checks the
//!   authenticated responder identity against the callee it asked for (TR 33.828 req 49).
//!
//! Unlike SDES, stripping or altering the key-management attribute is detectable: TRANSFER_INIT
//! and TRANSFER_RESP are MACed, so an altered message fails verification, and a stripped
//! answer is refused by the offerer's policy (no RTP fallback with this mode).
//!
//! Deferred delivery (docs/voicemail.md, ticket-profile decision 18): a voicemail server that
//! stores the call for the callee cannot resolve the ticket. Its answer is `a=recvonly`, has no
//! `a=key-mgmt` and carries [`DEFERRED_ATTRIBUTE`] (ours); a caller whose policy allows it
//! ([`mediasec_kms::ue::Ue::set_deferred_delivery`]) then sends SRTP keyed from its own
//! TRANSFER_INIT. An answer without key management and without that indication is still a
//! downgrade and fails the call.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mediasec_kms::client::KmsClient;
use mediasec_kms::identity::{KmsUid, Pattern};
use mediasec_kms::ue::{Ask, PendingTransfer, Ue as KmsUe};
use mediasec_sdp::{KeyMgmt, Level, Sdp};
use mediasec_srtp::Suite;

use crate::offer_answer::{audio, sdp_text, Media, Protection, RTCP_MUX, SAVP};
use crate::Error;

/// The media-level attribute of an answer announcing deferred delivery (`a=mediasec-deferred`,
/// a flag): **non-standard, ours** (docs/voicemail.md). It only widens what a caller accepts
/// when its own policy says so, never what it sends unprotected: the media stays SRTP under the
/// ticket's keys.
pub const DEFERRED_ATTRIBUTE: &str = "mediasec-deferred";

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

/// The `mikey` key-management data of the audio stream (media level overrides session level):
/// the TRANSFER_INIT of an offer, the TRANSFER_RESP of an answer.
pub fn mikey_data(sdp: &Sdp) -> Result<Option<Vec<u8>>, Error> {
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

/// A UE's [`KmsAccess`] shared between the UE task and the KMS exchanges it runs off that task
/// (docs/sip.md §2 "KMS work off the UE task"). The lock is taken only for the sans-IO steps
/// (building a request, processing a response, the ticket caches) and never held across an
/// HTTP exchange: a `std` guard is not `Send`, so a spawned exchange that kept it across an
/// `.await` would not compile.
pub type SharedKms = Arc<Mutex<KmsAccess>>;

/// The KMS access behind `shared`. A poisoned lock (a panic elsewhere while holding it: none
/// is expected, the sans-IO steps return errors) still yields the state, whose every step
/// leaves it consistent.
pub(crate) fn lock(shared: &SharedKms) -> MutexGuard<'_, KmsAccess> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Offerer: Ticket Request (key forking asked; reusable when the UE reuses tickets, see
/// `mediasec_kms::ue::Ue::set_ticket_reuse`) and TRANSFER_INIT for `callee_uri`, in an offer
/// with SDP session version `version` (1, or higher in a re-INVITE). A cached reusable ticket
/// for the callee is used instead of a Ticket Request: such a call contacts no KMS on the
/// caller's side (TS 33.328 Annex B.1), and the callee's cached resolve spares its side too.
/// The Ticket Request goes out without the lock on `shared` ([`SharedKms`]).
pub async fn offer(shared: &SharedKms, local: SocketAddr, version: u64, ssrc: u32, callee_uri: &str) -> Result<(String, PendingCall), Error> {
    let callee = uid_of(callee_uri)?;
    let cached = lock(shared).ue.cached_ticket(&callee, now());
    let held = match cached {
        Some(held) => held,
        None => {
            let (request, pending, client) = {
                let access = lock(shared);
                let ask = Ask { recipients: vec![Pattern::parse(callee.as_str()).map_err(kms)?], reusable: access.ue.ticket_reuse(), forking: true, lifetime: TICKET_LIFETIME_SECS };
                let (request, pending) = access.ue.request_init(&ask, rand::random(), now(), rand::random()).map_err(kms)?;
                (request, pending, access.client.clone())
            };
            let response = client.post("ticketrequest", &request).await.map_err(kms)?;
            lock(shared).ue.on_request_resp(pending, &response, now()).map_err(kms)?
        }
    };
    let (init, transfer) = lock(shared).ue.transfer_init(&held, &callee, rand::random(), ssrc, now(), rand::random()).map_err(kms)?;
    Ok((sdp_text(local, version, SAVP, &[key_mgmt_line(init), RTCP_MUX.into()]), PendingCall { transfer, callee }))
}

/// Answerer: Ticket Resolve (unless a reusable resolve is cached) and TRANSFER_RESP; the
/// answer SDP (session version `version`) and the media. The Ticket Resolve goes out without
/// the lock on `shared`.
pub async fn answer(shared: &SharedKms, offer: &Sdp, local: SocketAddr, version: u64, ssrc: u32) -> Result<(String, Media), Error> {
    let stream = audio(offer)?;
    let init = mikey_data(offer)?.ok_or_else(|| Error::Negotiation("offer without a=key-mgmt:mikey".into()))?;
    let cached = lock(shared).ue.cached_resolve(&init, now());
    let resolved = match cached {
        Some(resolved) => resolved,
        None => {
            let (request, pending, client) = {
                let access = lock(shared);
                let (request, pending) = access.ue.resolve_init(&init, rand::random(), now(), rand::random()).map_err(kms)?;
                (request, pending, access.client.clone())
            };
            let response = client.post("ticketresolve", &request).await.map_err(kms)?;
            lock(shared).ue.on_resolve_resp(pending, &response, now()).map_err(kms)?
        }
    };
    let (resp, media) = lock(shared).ue.transfer_resp(&resolved, &init, ssrc, now()).map_err(kms)?;
    // The KMS resolved this ticket and TRANSFER_INIT verified under MPKi: its initiator called.
    let caller = mediasec_kms::ue::ticket_initiator(&init).map_err(kms)?;
    // We send the responder's stream (CS 2) and receive the initiator's (CS 1).
    let protection = protection(&media.responder_stream, &media.initiator_stream)?;
    let mut lines = stream.answer_lines();
    lines.insert(0, key_mgmt_line(resp));
    Ok((sdp_text(local, version, SAVP, &lines), stream.media(stream.mux, protection).authenticated(caller.as_str())))
}

/// Offerer: verifies TRANSFER_RESP and checks the authenticated responder is the callee;
/// returns the media and whether the call is a deferred delivery (then no TRANSFER_RESP: an
/// answer with [`DEFERRED_ATTRIBUTE`], `a=recvonly` and no key management, accepted when our
/// policy allows deferred delivery; the media is keyed from our TRANSFER_INIT alone).
pub fn process_answer(access: &mut KmsAccess, pending: &PendingCall, answer: &Sdp) -> Result<(Media, bool), Error> {
    let stream = audio(answer)?;
    let Some(resp) = mikey_data(answer)? else {
        return deferred(&access.ue, pending, answer, &stream).map(|m| (m, true));
    };
    let (responder, media) = access.ue.on_transfer_resp(&pending.transfer, &resp, now()).map_err(kms)?;
    if responder != pending.callee {
        return Err(Error::Negotiation(format!("the answering party is {responder}, not {}", pending.callee)));
    }
    Ok((stream.media(stream.mux, protection(&media.initiator_stream, &media.responder_stream)?).authenticated(responder.as_str()), false))
}

/// The deferred-delivery answer to a key-less answer, or the downgrade refusal.
fn deferred(ue: &KmsUe, pending: &PendingCall, answer: &Sdp, stream: &crate::offer_answer::Stream) -> Result<Media, Error> {
    let level = Level::Media(stream.index);
    let indicated = !answer.attribute_values(level, DEFERRED_ATTRIBUTE)?.is_empty();
    if !indicated {
        return Err(Error::Downgrade("answer without a=key-mgmt:mikey; policy requires MIKEY-TICKET".into()));
    }
    if answer.attribute_values(level, "recvonly")?.is_empty() {
        return Err(Error::Negotiation("deferred-delivery answer is not a=recvonly".into()));
    }
    if !ue.deferred_delivery() {
        return Err(Error::Downgrade("deferred delivery offered by the answerer; our policy does not allow it".into()));
    }
    let media = pending.transfer.deferred_media(&pending.callee).map_err(kms)?;
    tracing::info!(callee = %pending.callee, "deferred delivery: the answerer stores our SRTP for the callee; no responder authenticated");
    Ok(stream.media(stream.mux, protection(&media.initiator_stream, &media.responder_stream)?))
}

/// A voicemail server's answer to a MIKEY-TICKET `offer` (deferred delivery): our stream at
/// `local`, `a=recvonly`, no key management, [`DEFERRED_ATTRIBUTE`]; `RTP/SAVP` as offered.
pub fn deferred_answer(offer: &Sdp, local: SocketAddr, version: u64) -> Result<String, Error> {
    let stream = audio(offer)?;
    if stream.proto != SAVP {
        return Err(Error::Negotiation(format!("deferred delivery needs an RTP/SAVP offer, got {}", stream.proto)));
    }
    let mut lines = stream.answer_lines();
    lines.push(DEFERRED_ATTRIBUTE.into());
    // sdp_text writes the default direction; this answer only receives (RFC 3264 §6.1).
    Ok(sdp_text(local, version, SAVP, &lines).replacen("a=sendrecv\r\n", "a=recvonly\r\n", 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A caller with a UE-made (mode 3, non-forking) ticket for carol and its pending
    /// TRANSFER_INIT in an offer, no KMS involved.
    fn pending() -> (KmsUe, PendingCall, Sdp) {
        let ue = KmsUe::new(KmsUid::parse("alice@a.example").expect("uid"), "kms.a.example", "btid", &[3; 32], 30);
        let callee = KmsUid::parse("carol@a.example").expect("uid");
        let ask = Ask { recipients: vec![Pattern::parse(callee.as_str()).expect("pattern")], reusable: false, forking: false, lifetime: 60 };
        let held = ue.make_ticket(&ask, now(), &|b: &mut [u8]| b.fill(7)).expect("ticket");
        let (init, transfer) = ue.transfer_init(&held, &callee, 1, 0x1234, now(), [9; 16]).expect("TRANSFER_INIT");
        let local = SocketAddr::from(([127, 0, 0, 1], 4000));
        let offer = Sdp::parse(&sdp_text(local, 1, SAVP, &[key_mgmt_line(init), RTCP_MUX.into()]));
        (ue, PendingCall { transfer, callee }, offer)
    }

    /// docs/voicemail.md V3: the deferred answer keys the caller's stream from its own
    /// TRANSFER_INIT; without the indication, not recvonly, or with the caller's policy off,
    /// the key-less answer is refused (no downgrade).
    #[test]
    fn key_less_answers_are_accepted_only_as_announced_deferred_delivery() {
        let (mut ue, pending, offer) = pending();
        let vm = SocketAddr::from(([127, 0, 0, 1], 5000));
        let text = deferred_answer(&offer, vm, 1).expect("deferred answer");
        assert!(text.contains("a=recvonly\r\n") && text.contains("a=mediasec-deferred\r\n") && !text.contains("key-mgmt") && !text.contains("sendrecv"), "{text}");
        let answer = Sdp::parse(&text);
        let stream = audio(&answer).expect("audio");
        let media = deferred(&ue, &pending, &answer, &stream).expect("accepted");
        let keys = pending.transfer.deferred_media(&pending.callee).expect("keys");
        assert_eq!(media.remote, vm);
        let Protection::Srtp { own_key, .. } = &media.protection else { panic!("SRTP") };
        assert_eq!(*own_key, mediasec_sdp::fingerprint(&keys.initiator_stream.master_key));
        let stripped = Sdp::parse(&text.replace("a=mediasec-deferred\r\n", ""));
        assert!(matches!(deferred(&ue, &pending, &stripped, &stream), Err(Error::Downgrade(_))));
        let both_ways = Sdp::parse(&text.replace("a=recvonly", "a=sendrecv"));
        assert!(matches!(deferred(&ue, &pending, &both_ways, &stream), Err(Error::Negotiation(m)) if m.contains("recvonly")));
        ue.set_deferred_delivery(false);
        assert!(matches!(deferred(&ue, &pending, &answer, &stream), Err(Error::Downgrade(m)) if m.contains("does not allow")));
        // A plain RTP offer cannot be answered deferred.
        let plain = Sdp::parse(&offer.to_string().replace("RTP/SAVP", "RTP/AVP"));
        assert!(deferred_answer(&plain, vm, 1).is_err());
    }
}
