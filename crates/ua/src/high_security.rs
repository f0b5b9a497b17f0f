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
//!
//! Keys per period (docs/high-security.md §9, RFC 6509 ID scheme 1: one key per identity and
//! UTC month): a message is signed with the key of the month of its own timestamp T, and a
//! peer's signature is verified as that of its URI for the month of *its* T, so a call whose
//! DH_INIT and DH_RESP straddle a month boundary works. [`HighSecurity`] keeps the keys of
//! the current and next month; [`ready`], run before each signing, fetches the current
//! month's key if it lacks it (first use of a period) and, during the last
//! [`RENEW_AHEAD_SECS`] of a month, the next month's key (a failure there is logged and
//! retried at the next call, the current key still serving). No timer: a UE idle across the
//! boundary fetches on its first call or answer of the new month. Time is a parameter of
//! every function here; only the agent reads the clock.

use std::net::SocketAddr;
use std::time::Duration;

use mediasec_kms::community::Community;
use mediasec_kms::keyprov::{Period, Provisioned, SakkeKeys};
use mediasec_mikey::eccsi::{Kpak, SigningKey};
use mediasec_mikey::error_message::ErrorReport;
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

/// How long before the end of a month [`ready`] fetches the next month's key: a day, so a
/// KMS outage shorter than that does not break calls at the boundary.
pub const RENEW_AHEAD_SECS: u64 = 86_400;

/// Replay cache of received DH_INITs, bounded by the skew window (RFC 3830 §5.4) around
/// `now_ntp_secs` (set by [`answer`] before each use).
#[derive(Default)]
pub(crate) struct Replay {
    seen: std::collections::HashMap<(u32, u64, Vec<u8>), u64>,
    pub(crate) now_ntp_secs: u64,
}

impl ReplayCache for Replay {
    fn insert(&mut self, csb_id: u32, timestamp: u64, mac: &[u8]) -> bool {
        let oldest = self.now_ntp_secs.saturating_sub(2 * SKEW_SECS);
        self.seen.retain(|_, t| *t >= oldest);
        self.seen.insert((csb_id, timestamp, mac.to_vec()), timestamp >> 32).is_none()
    }
}

/// A UE's identity-based credentials, for the high-security mode and for MIKEY-SAKKE
/// ([`crate::mikey_sakke`]): its URI, the keys its KMS issued for it per month (current and
/// next, oldest first), and the KPAKs it trusts (its own KMS's first; others are
/// configuration).
pub struct HighSecurity {
    pub(crate) uri: String,
    pub(crate) keys: Vec<PeriodKeys>,
    pub(crate) kpaks: Vec<Kpak>,
    pub(crate) replay: Replay,
    /// MIKEY-SAKKE: the callees' SAKKE points, kept between calls.
    pub(crate) recipients: crate::mikey_sakke::Recipients,
    /// Whether the MIKEY-SAKKE keys (Z, RSK) are fetched with each ECCSI key.
    sakke: bool,
    /// Our KMS's URI (IDRkmsi of our I_MESSAGEs), when the keys came from a KMS.
    pub(crate) kms: Option<String>,
    /// MIKEY-SAKKE: the KMS certificates our KMS handed out with the keys (its own first,
    /// then the external communities'; docs/high-security.md §10.9), replaced at each
    /// renewal. Empty: one community only (our KMS's Z for every callee).
    pub(crate) communities: Vec<Community>,
}

/// One month's keys: the ECCSI signing key and, for MIKEY-SAKKE, Z and the RSK.
pub(crate) struct PeriodKeys {
    pub(crate) period: Period,
    pub(crate) key: SigningKey,
    pub(crate) sakke: Option<SakkeKeys>,
}

/// What the offerer keeps until DH_RESP arrives: the DH secret (dropped with it).
pub struct PendingCall {
    pending: signed_dh::Pending,
}

/// NTP-UTC time of Unix time `now` (the T of our messages).
pub(crate) fn ntp(now: Duration) -> u64 {
    mediasec_kms::tp_data::ntp(now).value
}

fn period(now: Duration) -> Result<Period, Error> {
    Period::of_unix(now.as_secs()).map_err(|e| Error::Negotiation(format!("high-security key period: {e}")))
}

pub(crate) fn random(b: &mut [u8]) {
    rand::RngCore::fill_bytes(&mut rand::rng(), b);
}

fn dh(e: &mediasec_mikey::Error) -> Error {
    Error::Negotiation(format!("high-security (MIKEY-DH): {e}"))
}

pub(crate) fn protection(keys: &Keys, initiator: bool) -> Result<crate::offer_answer::Protection, Error> {
    let (tx, rx) = if initiator { (&keys.initiator_stream, &keys.responder_stream) } else { (&keys.responder_stream, &keys.initiator_stream) };
    ticket::protection(tx, rx)
}

/// Runs a verification under each trusted KPAK in turn until one accepts the signature (the
/// message does not name the signer's KMS); a failure other than ERR Auth failure (time,
/// replay, identity, DH value) ends the search.
pub(crate) fn under_trusted<T>(kpaks: &[Kpak], mut verify: impl FnMut(&Kpak) -> Result<T, mediasec_mikey::Error>) -> Result<T, mediasec_mikey::Error> {
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
    /// Credentials for `uri` from a validated signing key for `uri` and month `period`, and
    /// the trusted KPAKs.
    pub fn new(uri: impl Into<String>, period: Period, key: SigningKey, kpaks: Vec<Kpak>) -> Self {
        Self { uri: uri.into(), keys: vec![PeriodKeys { period, key, sakke: None }], kpaks, replay: Replay::default(), recipients: Default::default(), sakke: false, kms: None, communities: Vec::new() }
    }

    /// Credentials from what our KMS issued (with MIKEY-SAKKE keys if `got` has them, and then
    /// renewed with them), trusting `got`'s KPAK first, then `others`.
    pub fn from_provisioned(got: Provisioned, others: Vec<Kpak>) -> Self {
        let mut kpaks = vec![got.kpak];
        kpaks.extend(others.into_iter().filter(|k| *k != got.kpak));
        let sakke = got.sakke.is_some();
        Self {
            uri: got.uri,
            keys: vec![PeriodKeys { period: got.period, key: got.key, sakke: got.sakke }],
            kpaks,
            replay: Replay::default(),
            recipients: Default::default(),
            sakke,
            kms: Some(got.kms),
            communities: got.communities,
        }
    }

    /// Fetches our signing key for `uri` (one of our IMPUs) for the current month from our
    /// KMS (Ua `keyprovision`, GBA-authenticated) and trusts its KPAK — taken from the MACed
    /// response — plus `others` (KPAKs of other KMSs, from configuration).
    pub async fn provision(kms: &KmsAccess, uri: &str, others: Vec<Kpak>) -> Result<Self, Error> {
        Self::provision_mode(kms, uri, others, false).await
    }

    /// [`Self::provision`] for MIKEY-SAKKE: the ECCSI key, Z and our RSK (policy
    /// `mikey_sakke` at the KMS).
    pub async fn provision_sakke(kms: &KmsAccess, uri: &str, others: Vec<Kpak>) -> Result<Self, Error> {
        Self::provision_mode(kms, uri, others, true).await
    }

    async fn provision_mode(kms: &KmsAccess, uri: &str, others: Vec<Kpak>, sakke: bool) -> Result<Self, Error> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let got = kms.client.provision_keys_for(&kms.ue, uri, period(now)?, sakke).await.map_err(|e| Error::Negotiation(format!("key provisioning: {e}")))?;
        if got.uri != uri {
            return Err(Error::Negotiation(format!("key provisioning: key for {}, not {uri}", got.uri)));
        }
        Ok(Self::from_provisioned(got, others))
    }

    /// The KMS certificates held (MIKEY-SAKKE; own community first).
    pub fn communities(&self) -> &[Community] {
        &self.communities
    }

    /// Our URI (the identity we sign as).
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The months whose key we should fetch at `now`: the current one if we lack it, and the
    /// next one if we lack it and `now` is within [`RENEW_AHEAD_SECS`] of its start.
    pub fn missing(&self, now: Duration) -> Result<Vec<Period>, Error> {
        let current = period(now)?;
        let soon = period(now.saturating_add(Duration::from_secs(RENEW_AHEAD_SECS)))?;
        let mut want = vec![current];
        if soon != current {
            want.push(current.next());
        }
        want.retain(|p| !self.keys.iter().any(|have| have.period == *p));
        Ok(want)
    }

    /// Adds a key our KMS issued (a [`Provisioned`] answering our request for `uri`): it must
    /// be for our URI and validated against a KPAK; keys of months before `now`'s are dropped.
    /// Our KMS's KPAK (from the MACed response) becomes the first trusted one.
    pub fn add(&mut self, got: Provisioned, now: Duration) -> Result<(), Error> {
        if got.uri != self.uri {
            return Err(Error::Negotiation(format!("high-security key provisioning: key for {}, not {}", got.uri, self.uri)));
        }
        if got.sakke.is_some() != self.sakke {
            return Err(Error::Negotiation("key provisioning: MIKEY-SAKKE keys missing or unexpected".into()));
        }
        let current = period(now)?;
        self.keys.retain(|k| k.period >= current && k.period != got.period);
        self.keys.push(PeriodKeys { period: got.period, key: got.key, sakke: got.sakke });
        self.keys.sort_by_key(|k| k.period);
        self.kms = Some(got.kms);
        if self.sakke {
            self.communities = got.communities;
        }
        if self.kpaks.first() != Some(&got.kpak) {
            self.kpaks.retain(|k| *k != got.kpak);
            self.kpaks.insert(0, got.kpak);
        }
        Ok(())
    }

}

/// `uri`'s keys among `keys` for the month of `now` (the T we are about to sign with).
pub(crate) fn key_at<'a>(keys: &'a [PeriodKeys], uri: &str, now: Duration) -> Result<&'a PeriodKeys, Error> {
    let p = period(now)?;
    keys.iter()
        .find(|k| k.period == p)
        .ok_or_else(|| Error::Negotiation(format!("high-security: no ECCSI key of {uri} for {p} (not fetched from the KMS)")))
}

/// Makes our high-security credentials ready to sign at `now` (module docs): fetches the
/// current month's key if missing (failure is an error) and, near the month's end, the next
/// month's (failure is logged; the next call retries). The credentials stay in `shared`
/// ([`ticket::SharedKms`]), locked only to build each request and to add its key, never
/// across the HTTP exchange; the caller locks it again to sign. Two exchanges that both find
/// a month missing both fetch it, the later key replacing the earlier ([`HighSecurity::add`]).
pub async fn ready(shared: &ticket::SharedKms, now: Duration) -> Result<(), Error> {
    let (missing, uri, sakke, client) = {
        let access = ticket::lock(shared);
        let hs = access.high_security.as_ref().ok_or_else(|| Error::Negotiation("the high-security mode needs an ECCSI key from the KMS".into()))?;
        (hs.missing(now)?, hs.uri.clone(), hs.sakke, access.client.clone())
    };
    let current = period(now)?;
    for p in missing {
        let built = ticket::lock(shared).ue.keyprov_request(&uri, p, now, rand::random(), sakke);
        let fetched = match built {
            Ok((body, pending)) => client.post_keyprovision(&body, pending).await,
            Err(e) => Err(e),
        };
        match fetched {
            Ok(got) if got.period == p => {
                let mut access = ticket::lock(shared);
                let hs = access.high_security.as_mut().ok_or_else(|| Error::Negotiation("the high-security mode needs an ECCSI key from the KMS".into()))?;
                hs.add(got, now)?;
            }
            Ok(got) => return Err(Error::Negotiation(format!("high-security key provisioning: asked {p}, got {}", got.period))),
            Err(e) if p != current => tracing::warn!(period = %p, error = %e, "high-security: next month's ECCSI key not fetched yet; retried at the next call"),
            Err(e) => return Err(Error::Negotiation(format!("high-security key provisioning for {p}: {e}"))),
        }
    }
    Ok(())
}

/// Offerer: DH_INIT to `callee_uri` in an `RTP/SAVP` offer with SDP session version `version`,
/// signed at `now` (Unix time) with our key of that month.
pub fn offer(hs: &HighSecurity, local: SocketAddr, version: u64, ssrc: u32, callee_uri: &str, now: Duration) -> Result<(String, PendingCall), Error> {
    let callee = format!("sip:{}", ticket::uid_of(callee_uri)?);
    let o = Offer {
        prf: PrfFunc::MIKEY_1,
        csb_id: rand::random(),
        initiator_uri: hs.uri.clone(),
        responder_uri: callee,
        initiator_ssrc: ssrc,
        policy: srtp_policy::aes_cm_128_hmac_sha1_80(),
    };
    let (init, pending) = signed_dh::offer(&o, &key_at(&hs.keys, &hs.uri, now)?.key, ntp(now), &mut random).map_err(|e| dh(&e))?;
    Ok((sdp_text(local, version, SAVP, &[ticket::key_mgmt_line(init), RTCP_MUX.into()]), PendingCall { pending }))
}

/// Answerer: verifies the DH_INIT of `offer` and answers DH_RESP; the answer SDP (session
/// version `version`) and the media, at `now` (Unix time; DH_RESP is signed with our key of
/// that month). A DH_INIT that fails is [`Error::KeyRefused`] with the MIKEY Error message to
/// return.
pub fn answer(hs: &mut HighSecurity, offer: &Sdp, local: SocketAddr, version: u64, ssrc: u32, now: Duration) -> Result<(String, Media), Error> {
    let refused = |reason: String| Error::KeyRefused { reason, mikey_error: None };
    let stream = audio(offer).map_err(|e| refused(e.to_string()))?;
    let init = ticket::mikey_data(offer)
        .map_err(|e| refused(e.to_string()))?
        .ok_or_else(|| refused("offer without a=key-mgmt:mikey; policy requires the high-security mode".into()))?;
    let HighSecurity { uri, keys, kpaks, replay, .. } = hs;
    let key = &key_at(keys, uri, now).map_err(|e| refused(e.to_string()))?.key;
    let now = ntp(now);
    replay.now_ntp_secs = now >> 32;
    // The error message of the last attempt: signed once a KPAK admitted the DH_INIT.
    let mut reply = None;
    let outcome = under_trusted(kpaks, |kpak| {
        signed_dh::answer(&init, kpak, key, uri, ssrc, now, SKEW_SECS, replay, &mut random).map_err(|r| {
            reply = r.reply;
            r.error
        })
    });
    let answered = outcome.map_err(|e| Error::KeyRefused {
        reason: format!("high-security (MIKEY-DH): {e}"),
        mikey_error: reply.take().or_else(|| signed_dh::error_reply(&init, &e, now)),
    })?;
    let protection = protection(&answered.keys, false).map_err(|e| refused(e.to_string()))?;
    let mut lines = stream.answer_lines();
    lines.insert(0, ticket::key_mgmt_line(answered.response));
    Ok((sdp_text(local, version, SAVP, &lines), stream.media(stream.mux, protection).authenticated(answered.initiator_uri)))
}

/// Offerer: what the MIKEY error message in the key-management attribute of a refusing answer
/// (the SDP of a 488) says, for the call's failure reason: its ERR codes, and who signed it
/// (SIGNr under a trusted KPAK: that user itself refused — the URI called, or whoever a
/// forwarded call reached) or that nobody did (a hint only: anyone on the path could have
/// written it, RFC 3830 §9). `None` when the answer carries no MIKEY message.
pub fn refusal(hs: &HighSecurity, pending: &PendingCall, answer: &Sdp, now: Duration) -> Option<String> {
    let message = ticket::mikey_data(answer).ok().flatten()?;
    let now = ntp(now);
    let read = under_trusted(&hs.kpaks, |kpak| pending.pending.refusal(&message, kpak, now, SKEW_SECS));
    Some(describe_refusal(read, &pending.pending.offer().responder_uri))
}

/// A refusal as read ([`refusal`], [`crate::mikey_sakke::refusal`]), for the call's failure
/// reason: "MIKEY error CODES (signed by URI[, not the URI called] | unsigned: a hint only)",
/// or why the error message was not accepted.
pub(crate) fn describe_refusal(read: Result<(ErrorReport, Option<String>), mediasec_mikey::Error>, called: &str) -> String {
    match read {
        Ok((report, signer)) => {
            let codes: Vec<String> = report.codes().iter().map(|c| format!("{c:?}")).collect();
            let by = match signer {
                Some(s) if s == called => format!("signed by {s}"),
                Some(s) => format!("signed by {s}, not the URI called"),
                None => "unsigned: a hint only".into(),
            };
            format!("MIKEY error {} ({by})", codes.join(", "))
        }
        Err(e) => format!("MIKEY error message not accepted: {e}"),
    }
}

/// Offerer: verifies DH_RESP under a trusted KPAK at `now` (Unix time) and requires the signer
/// to be the callee (its identity for the month of DH_RESP's T).
pub fn process_answer(hs: &HighSecurity, pending: &PendingCall, answer: &Sdp, now: Duration) -> Result<Media, Error> {
    let stream = audio(answer)?;
    let resp = ticket::mikey_data(answer)?.ok_or_else(|| Error::Downgrade("answer without a=key-mgmt:mikey; policy requires the high-security mode".into()))?;
    let now = ntp(now);
    let outcome = under_trusted(&hs.kpaks, |kpak| pending.pending.finish(&resp, kpak, now, SKEW_SECS));
    // `finish` refuses a DH_RESP signed by anyone but the URI called (ERR Invalid ID).
    let done = outcome.map_err(|e| Error::Downgrade(format!("high-security (MIKEY-DH) answer refused: {e}")))?;
    Ok(stream.media(stream.mux, protection(&done.keys, true)?).authenticated(done.responder_uri))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
pub(crate) mod tests {
    use super::*;
    use mediasec_mikey::eccsi::KmsSecret;

    /// 2026-12-31T00:00:00Z: the last day of a month (here also of a year).
    const LAST_DAY: u64 = 1_798_675_200;
    /// 2027-01-01T00:00:00Z.
    const BOUNDARY: u64 = 1_798_761_600;

    fn at(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    /// What our KMS's `keyprovision` would give `uri` for `p` (the issuing itself is
    /// `mediasec_kms::signing_keys`; here the KSAK issues directly, so time can be chosen).
    fn issued(ksak: &KmsSecret, uri: &str, p: Period) -> Provisioned {
        let id = mediasec_mikey::eccsi::identity(uri, p.year, p.month);
        let (ssk, pvt) = ksak.issue(&id, &[p.month; 32]).unwrap();
        let key = SigningKey::new(&ksak.kpak(), &id, ssk, pvt).unwrap();
        Provisioned { kms: "kms.a.example".into(), uri: uri.into(), period: p, kpak: ksak.kpak(), key, sakke: None, communities: Vec::new() }
    }

    /// Fetches what `missing` names, as [`ready`] does with the KMS.
    fn renew(hs: &mut HighSecurity, ksak: &KmsSecret, now: Duration) -> Vec<Period> {
        let wanted = hs.missing(now).unwrap();
        for p in &wanted {
            let uri = hs.uri.clone();
            hs.add(issued(ksak, &uri, *p), now).unwrap();
        }
        wanted
    }

    /// One call alice → bob: DH_INIT at `t_offer`, DH_RESP at `t_answer`, processed at
    /// `t_answer + 1`; both sides end with the same SRTP keys.
    fn call(caller: &HighSecurity, callee: &mut HighSecurity, t_offer: u64, t_answer: u64) -> Result<(), Error> {
        let local: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let (offer_sdp, pending) = offer(caller, local, 1, 0x1111, callee.uri(), at(t_offer))?;
        let (answer_sdp, callee_media) = answer(callee, &Sdp::parse(&offer_sdp), local, 1, 0x2222, at(t_answer))?;
        let caller_media = process_answer(caller, &pending, &Sdp::parse(&answer_sdp), at(t_answer + 1))?;
        srtp_both_ways(&caller_media, &callee_media);
        Ok(())
    }

    /// Each side's sent packet opens with the other's receive key.
    pub(crate) fn srtp_both_ways(a: &Media, b: &Media) {
        for (from, to) in [(a, b), (b, a)] {
            let (crate::offer_answer::Protection::Srtp { tx, .. }, crate::offer_answer::Protection::Srtp { rx, .. }) = (&from.protection, &to.protection) else {
                panic!("SRTP both ways")
            };
            let mut packet = [0x80, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0x11, 0x11, 0xAB, 0xCD].to_vec();
            mediasec_srtp::Session::new(tx).unwrap().protect_rtp_vec(&mut packet).unwrap();
            let len = mediasec_srtp::Session::new(rx).unwrap().unprotect_rtp(&mut packet).unwrap();
            assert_eq!(packet.get(12..len), Some(&[0xAB, 0xCD][..]));
        }
    }

    /// A UE whose clock crosses a month boundary keeps placing and receiving calls: keys are
    /// kept per month, the next month's is fetched during the last day, each message is signed
    /// with the key of its own T's month and verified per the peer's T — including a call
    /// whose DH_INIT is of the old month and DH_RESP of the new one. Without the new month's
    /// key, signing in it fails with an explicit error (the pre-fix behaviour was to sign with
    /// an identity whose key the UE lacks).
    #[test]
    fn calls_continue_across_the_month_boundary() {
        let ksak = KmsSecret::from_bytes(&[0x42; 32]).unwrap();
        let dec = Period::of_unix(LAST_DAY - 1).unwrap();
        let jan = dec.next();
        let start = |uri: &str| HighSecurity::new(uri, dec, issued(&ksak, uri, dec).key, vec![ksak.kpak()]);
        let (mut alice, mut bob) = (start("sip:alice@a.example"), start("sip:bob@a.example"));
        // Mid-month: nothing to fetch; calls both ways.
        assert!(alice.missing(at(LAST_DAY - 3_600)).unwrap().is_empty());
        call(&alice, &mut bob, LAST_DAY - 3_600, LAST_DAY - 3_599).unwrap();
        call(&bob, &mut alice, LAST_DAY - 3_500, LAST_DAY - 3_499).unwrap();
        // A UE that did not renew cannot sign after the boundary, and says why.
        let err = offer(&alice, "127.0.0.1:40000".parse().unwrap(), 1, 1, "sip:bob@a.example", at(BOUNDARY + 5)).err().unwrap();
        assert!(err.to_string().contains("2027-01"), "{err}");
        // The last day: the next month's key is fetched ahead (the current one is kept).
        assert_eq!(renew(&mut alice, &ksak, at(LAST_DAY + 10)), [jan]);
        assert_eq!(renew(&mut bob, &ksak, at(BOUNDARY - 60)), [jan]);
        assert!(alice.missing(at(BOUNDARY - 1)).unwrap().is_empty());
        // Calls straddling the boundary, both ways: old-month DH_INIT, new-month DH_RESP.
        call(&alice, &mut bob, BOUNDARY - 5, BOUNDARY + 5).unwrap();
        call(&bob, &mut alice, BOUNDARY - 2, BOUNDARY).unwrap();
        // After the boundary: new-month calls; the old month's key is dropped at the next add.
        call(&alice, &mut bob, BOUNDARY + 100, BOUNDARY + 101).unwrap();
        call(&bob, &mut alice, BOUNDARY + 200, BOUNDARY + 201).unwrap();
        assert!(alice.missing(at(BOUNDARY + 300)).unwrap().is_empty());
        // A UE idle across the boundary (only December's key) fetches January on first use.
        let mut carol = start("sip:carol@a.example");
        assert_eq!(renew(&mut carol, &ksak, at(BOUNDARY + 400)), [jan]);
        assert_eq!(carol.keys.iter().map(|k| k.period).collect::<Vec<_>>(), [jan], "December's key dropped");
        call(&carol, &mut bob, BOUNDARY + 400, BOUNDARY + 401).unwrap();
        call(&alice, &mut carol, BOUNDARY + 500, BOUNDARY + 501).unwrap();
    }

    /// What a caller learns from a refusing answer's MIKEY error ([`refusal`]): a DH_INIT for
    /// bob that reached carol (a forwarded call) is refused by carol after she verified it,
    /// with an error she signs — the caller reads "signed by carol, not the URI called"; a
    /// DH_INIT under a KPAK the callee does not trust gets an unsigned error, read as a hint.
    #[test]
    fn refusals_say_who_signed_them() {
        let ksak = KmsSecret::from_bytes(&[0x42; 32]).unwrap();
        let now = LAST_DAY - 3_600;
        let p = Period::of_unix(now).unwrap();
        let start = |uri: &str| HighSecurity::new(uri, p, issued(&ksak, uri, p).key, vec![ksak.kpak()]);
        let (alice, mut carol) = (start("sip:alice@a.example"), start("sip:carol@a.example"));
        let local: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let refused_sdp = |offer_sdp: &str, e: Error| {
            let Error::KeyRefused { mikey_error: Some(m), .. } = e else { panic!("a MIKEY error: {e}") };
            let refusal = crate::offer_answer::refusal(&Sdp::parse(offer_sdp), local, 1).unwrap();
            Sdp::parse(&format!("{refusal}a={}\r\n", ticket::key_mgmt_line(m)))
        };
        let (offer_sdp, pending) = offer(&alice, local, 1, 0x1111, "sip:bob@a.example", at(now)).unwrap();
        let e = answer(&mut carol, &Sdp::parse(&offer_sdp), local, 1, 0x2222, at(now + 1)).unwrap_err();
        let why = refusal(&alice, &pending, &refused_sdp(&offer_sdp, e), at(now + 2)).unwrap();
        assert_eq!(why, "MIKEY error ID not supported (signed by sip:carol@a.example, not the URI called)");

        let other = KmsSecret::from_bytes(&[0x43; 32]).unwrap();
        let mut stranger = HighSecurity::new("sip:carol@a.example", p, issued(&ksak, "sip:carol@a.example", p).key, vec![other.kpak()]);
        let (offer_sdp, pending) = offer(&alice, local, 1, 0x1111, "sip:carol@a.example", at(now)).unwrap();
        let e = answer(&mut stranger, &Sdp::parse(&offer_sdp), local, 1, 0x2222, at(now + 1)).unwrap_err();
        let why = refusal(&alice, &pending, &refused_sdp(&offer_sdp, e), at(now + 2)).unwrap();
        assert_eq!(why, "MIKEY error Authentication failure (unsigned: a hint only)");
    }

    /// [`ready`] against an unreachable KMS: with the current month's key, failing to fetch
    /// the next one only logs (the call proceeds); without the current key it is an error.
    #[tokio::test]
    async fn ready_needs_only_the_current_key() {
        let ksak = KmsSecret::from_bytes(&[0x42; 32]).unwrap();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
        let current = Period::of_unix(now.as_secs()).unwrap();
        let ue = mediasec_kms::ue::Ue::new(mediasec_kms::identity::KmsUid::parse("alice@a.example").unwrap(), "kms.a.example", "btid", &[0; 32], 30);
        let client = || mediasec_kms::client::KmsClient::new(mediasec_bsf::client::Endpoint::http("http://127.0.0.1:9").unwrap());
        let uri = "sip:alice@a.example";
        let hs = HighSecurity::new(uri, current, issued(&ksak, uri, current).key, vec![ksak.kpak()]);
        let access: ticket::SharedKms = std::sync::Arc::new(std::sync::Mutex::new(KmsAccess { ue, client: client(), high_security: Some(hs) }));
        // Just before the month ends the next key is wanted; the KMS is down: still ready.
        let end = (0..40u64).map(|d| now + Duration::from_secs(d * 86_400)).find(|t| Period::of_unix(t.as_secs()).unwrap() != current).unwrap();
        let last_hour = Duration::from_secs(end.as_secs() - end.as_secs() % 86_400 - 3_600);
        assert_eq!(Period::of_unix(last_hour.as_secs()).unwrap(), current);
        assert!(ready(&access, last_hour).await.is_ok());
        // In the next month, without its key: an explicit provisioning error.
        let err = ready(&access, end).await.err().unwrap();
        assert!(err.to_string().contains("key provisioning"), "{err}");
    }
}
