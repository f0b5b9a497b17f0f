//! MIKEY-SAKKE in calls (RFC 6509; docs/high-security.md §10): the caller's INVITE carries
//! the ECCSI-signed I_MESSAGE ([`mediasec_mikey::mikey_sakke`]) in `a=key-mgmt:mikey`
//! (RFC 4567, media level) of an `RTP/SAVP` offer; the SSV is SAKKE-encapsulated to the
//! callee's identity for the month of T under its KMS's Z. The callee verifies the signature
//! under a trusted KPAK, that the message is for its own identity and key period, time and
//! replay, decapsulates with its RSK and answers an `RTP/SAVP` SDP **without**
//! `a=key-mgmt`: RFC 6509 has no response message (the HDR's V bit is 0, no verification
//! message is asked for), so there is nothing to carry. Both sides derive the SRTP keys of CS 1
//! (caller) and CS 2 (callee) from the SSV. Failures are refused with 488 and, when the
//! message had a decodable header, the RFC 3830 §5.1.2 MIKEY Error message, as in the
//! high-security mode ([`crate::high_security`]): signed by the callee once it admitted the
//! I_MESSAGE ([`mikey_sakke::answer`]), which the caller reads for the call's failure reason
//! ([`refusal`]: signed by whom, or a hint only).
//!
//! Keys come from the UE's KMS per month with the ECCSI key (Ua `keyprovision` with `sakke`,
//! policy `mikey_sakke`), kept and renewed by the same [`HighSecurity`] credentials and
//! [`crate::high_security::ready`] as the high-security mode.
//!
//! Across KMS communities (docs/high-security.md §10.9): the KMS hands the UE, with its keys,
//! the KMS certificates of its own and of the external communities it knows. The caller
//! finds the community of the callee's SIP domain (`kms_domain_list`) and encapsulates under
//! *that* community's Z (the callee's RSK is of its own KMS), names its own KMS in IDRkmsi
//! and the callee's in IDRkmsr (RFC 6509 §4.1) and signs with its own SSK; a callee domain
//! in no certificate fails the call before anything is sent. The callee takes the KPAK of
//! the community IDRkmsi names — its own KMS's, or an external one's from a certificate it
//! holds; an unknown community is refused (ERR Auth failure, with the MIKEY Error message) —
//! and requires IDRkmsr to be its own KMS (ERR Invalid ID). A UE given no certificates (or a
//! message without IDRkmsi) keeps to one community: our KMS's Z, every trusted KPAK tried.
//!
//! The caller keeps the callee's SAKKE point \[b\]P + Z ([`sakke::Recipient`]) in a small
//! cache ([`Recipients`]: per identifier — which names the month — and KMS key, the
//! [`RECIPIENTS`] most recently used), so calling the same peer again saves that scalar
//! multiplication (BENCHMARKS § MIKEY-SAKKE).
//!
//! Properties (stated in docs/high-security.md §10): the KMS can derive every call key (LI
//! without a man in the middle), no forward secrecy, only the caller is authenticated — the
//! caller learns nothing of who answered beyond SIP (only a refusal is signed).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use mediasec_kms::community::{self, Community};
use mediasec_mikey::eccsi::Kpak;
use mediasec_mikey::mikey_sakke::{self, Offer};
use mediasec_mikey::payload::Timestamp;
use mediasec_mikey::registry::{ErrorCode, IdRole, PrfFunc, TsType};
use mediasec_mikey::sakke;
use mediasec_mikey::signed_dh::{self, Keys};
use mediasec_mikey::srtp_policy;
use mediasec_sdp::Sdp;

use crate::high_security::{self, HighSecurity, SKEW_SECS, key_at, ntp, protection, random, under_trusted};
use crate::offer_answer::{Media, RTCP_MUX, SAVP, audio, sdp_text};
use crate::ticket;
use crate::Error;

/// What the caller keeps until the answer: the call's keys (derived when the I_MESSAGE was
/// built; the answer carries none), and what reading a refusal needs ([`refusal`]).
pub struct PendingCall {
    keys: Keys,
    /// CSB ID and T (NTP-UTC) of the I_MESSAGE.
    csb_id: u32,
    t: u64,
    /// The URI called (IDRr).
    callee: String,
    /// The KPAK of the callee's community when it is an external one (from its KMS
    /// certificate); `None`: ours, i.e. the trusted KPAKs.
    callee_kpak: Option<Kpak>,
}

/// How many callees' [`sakke::Recipient`]s a UE keeps ([`Recipients`]).
pub const RECIPIENTS: usize = 16;

/// The [`sakke::Recipient`]s of the peers a UE called last: at most [`RECIPIENTS`], one per
/// SAKKE identifier (RFC 6509 §4.2: the callee's URI *and* the month) and KMS public key Z,
/// so a new month or a renewed Z makes a new entry and the old one ages out. Full, the least
/// recently used entry is evicted. Only public values are kept.
#[derive(Debug, Default)]
pub struct Recipients {
    /// Least recently used first.
    entries: VecDeque<sakke::Recipient>,
    /// Recipients computed so far (each one a scalar multiplication; a reuse computes none).
    computed: u64,
}

impl Recipients {
    /// `f` of the recipient `id` under `z`: the cached one, or a new one (the least recently
    /// used evicted when full); either is then the most recently used.
    fn with<T>(&mut self, z: &sakke::PublicKey, id: &[u8], f: impl FnOnce(&sakke::Recipient) -> T) -> T {
        let found = self.entries.iter().position(|r| r.id() == id && r.public_key() == z);
        let recipient = match found.and_then(|i| self.entries.remove(i)) {
            Some(r) => r,
            None => {
                self.computed += 1;
                if self.entries.len() >= RECIPIENTS {
                    self.entries.pop_front();
                }
                sakke::Recipient::new(z, id)
            }
        };
        let out = f(&recipient);
        self.entries.push_back(recipient);
        out
    }

    /// Recipients held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Recipients computed so far (a cache miss each).
    pub fn computed(&self) -> u64 {
        self.computed
    }
}

/// Caller: the I_MESSAGE to `callee_uri` in an `RTP/SAVP` offer (SDP session version
/// `version`), built at `now` (Unix time) with our ECCSI key and our KMS's Z of that month,
/// to the callee's [`sakke::Recipient`] from `hs`'s [`Recipients`].
pub fn offer(hs: &mut HighSecurity, local: SocketAddr, version: u64, ssrc: u32, callee_uri: &str, now: Duration) -> Result<(String, PendingCall), Error> {
    let keys = key_at(&hs.keys, &hs.uri, now)?;
    let sakke = keys.sakke.as_ref().ok_or_else(|| Error::Negotiation("MIKEY-SAKKE needs SAKKE keys (Z, RSK) from the KMS".into()))?;
    let callee = ticket::uid_of(callee_uri)?;
    let (z, kms_uri, responder_kms_uri, callee_kpak) = callee_community(hs.kms.as_deref(), &hs.communities, callee.domain(), &sakke.z, now.as_secs())?;
    let o = Offer {
        prf: PrfFunc::MIKEY_1,
        csb_id: rand::random(),
        initiator_uri: hs.uri.clone(),
        responder_uri: format!("sip:{callee}"),
        kms_uri,
        responder_kms_uri,
        initiator_ssrc: ssrc,
        policy: srtp_policy::aes_cm_128_hmac_sha1_80(),
    };
    let t = ntp(now);
    let id = mikey_sakke::identifier(&o.responder_uri, &Timestamp { ts_type: TsType::NTP_UTC, value: t }).map_err(|e| Error::Negotiation(format!("MIKEY-SAKKE: {e}")))?;
    let built = hs.recipients.with(&z, &id, |recipient| mikey_sakke::build_for(&o, &keys.key, recipient, t, &mut random));
    let (message, keys) = built.map_err(|e| Error::Negotiation(format!("MIKEY-SAKKE: {e}")))?;
    let pending = PendingCall { keys, csb_id: o.csb_id, t, callee: o.responder_uri, callee_kpak };
    Ok((sdp_text(local, version, SAVP, &[ticket::key_mgmt_line(message), RTCP_MUX.into()]), pending))
}

/// The Z to encapsulate under for a callee of `domain`, the IDRkmsi / IDRkmsr to send
/// (module docs) and the KPAK a signed refusal of the callee is verified under ([`refusal`]):
/// without certificates, our KMS's `own_z`, no KMS URIs and our trusted KPAKs (`None`); with
/// them, the community serving `domain`, by its certificate valid at `at` (the Unix time of
/// T: docs/high-security.md §10.10) — ours (our Z of the month, no KMS URIs, as within one
/// community, our KPAKs) or an external one (its Z; IDRkmsi ours, IDRkmsr its URI; its KPAK)
/// —, an error naming the domain when none does, and the [`community::NotValid`] reason
/// (expired, revoked, not yet valid) when no certificate of it is valid at `at`.
type CalleeCommunity = (sakke::PublicKey, Option<String>, Option<String>, Option<Kpak>);
fn callee_community(own_kms: Option<&str>, communities: &[Community], domain: &str, own_z: &sakke::PublicKey, at: u64) -> Result<CalleeCommunity, Error> {
    let Some(own_kms) = own_kms.filter(|_| !communities.is_empty()) else {
        return Ok((*own_z, None, None, None));
    };
    let valid = community::at(community::of_domain(communities, domain), at).map_err(|e| Error::Negotiation(format!("MIKEY-SAKKE: {e}")))?;
    match valid {
        // Within our community the message stays as before, without IDRkms (RFC 6509 §4.1:
        // optional; the callee then tries its trusted KPAKs, our KMS's first). Also keeps
        // the I_MESSAGE — and the SIP message carrying it — as small as before.
        Some(c) if c.kms_uri().eq_ignore_ascii_case(own_kms) => Ok((*own_z, None, None, None)),
        Some(c) => Ok((*c.z(), Some(own_kms.to_owned()), Some(c.kms_uri().to_owned()), Some(*c.kpak()))),
        None => Err(Error::Negotiation(format!("MIKEY-SAKKE: the callee's domain {domain} belongs to no KMS community this UE holds a KMS certificate for (ours: {own_kms})"))),
    }
}

/// The KPAKs to verify an I_MESSAGE under (module docs), and the signer community's
/// certificates *not* valid at its T (to explain a refusal, [`retired_signer`]). With
/// certificates, the signer's community is the one IDRkmsi names, or ours without IDRkmsi,
/// and its KPAK the one of its certificate valid at the message's T (docs/high-security.md
/// §10.10); none valid there is ERR Auth failure with the [`community::NotValid`] reason
/// (expired, revoked, not yet valid); an unknown community is ERR Auth failure; IDRkmsr must
/// be our KMS (ERR Invalid ID). An external community's KPAK authenticates only users of its
/// domains, so its IDRi must be one ([`Community::vouches_for`], else ERR Invalid ID).
/// Without IDRkmsi our KMS's KPAK valid at T comes first, then the trusted KPAKs of other
/// KMSs (configuration). Without certificates, every trusted KPAK.
fn signer_kpaks(message: &[u8], own_kms: Option<&str>, communities: &[Community], kpaks: &[Kpak]) -> Result<(Vec<Kpak>, Vec<Community>), mediasec_mikey::Error> {
    let m = mediasec_mikey::Message::decode(message)?;
    let (kmsi, kmsr) = mikey_sakke::kms_uris_of(&m)?;
    let Some(own_kms) = own_kms.filter(|_| !communities.is_empty()) else {
        return Ok((kpaks.to_vec(), Vec::new()));
    };
    if let Some(r) = kmsr.as_deref().filter(|r| !r.eq_ignore_ascii_case(own_kms)) {
        return Err(mediasec_mikey::Error::Rejected { code: ErrorCode::INVALID_ID, reason: format!("I_MESSAGE encapsulated for the KMS community {r}, not ours ({own_kms})") });
    }
    let t = mediasec_mikey::ticket::t_of(&m).ok().and_then(|t| mediasec_kms::tp_data::unix_of(&t)).ok_or_else(|| mediasec_mikey::Error::Rejected { code: ErrorCode::INVALID_TS, reason: "I_MESSAGE without a usable NTP timestamp".into() })?;
    let signer = kmsi.clone().unwrap_or_else(|| own_kms.to_owned());
    let certs = community::of_uri(communities, &signer);
    let retired = certs.iter().filter(|c| !c.covers(t) || c.revoked()).map(|c| (*c).clone()).collect();
    let auth = |reason: String| mediasec_mikey::Error::Rejected { code: ErrorCode::AUTH_FAILURE, reason };
    let valid = community::at(certs, t).map_err(|e| auth(format!("I_MESSAGE of {}: {e}", community::fmt_time(t))))?;
    let own_generations: Vec<&Kpak> = community::of_uri(communities, own_kms).into_iter().map(Community::kpak).collect();
    if let (Some(c), Some(i)) = (valid, kmsi.as_deref().filter(|i| !i.eq_ignore_ascii_case(own_kms))) {
        // IDRi is read before the signature is verified; the signature covers it.
        let idri = mediasec_mikey::ticket::id_of(&m, IdRole::INITIATOR);
        if !idri.is_empty() && !std::str::from_utf8(&idri).is_ok_and(|u| c.vouches_for(u)) {
            let who = String::from_utf8_lossy(&idri);
            return Err(mediasec_mikey::Error::Rejected { code: ErrorCode::INVALID_ID, reason: format!("I_MESSAGE signed in the KMS community {i} for {who}, whose domain it does not serve") });
        }
    }
    let kpaks = match (valid, kmsi) {
        (Some(c), Some(_)) => vec![*c.kpak()],
        // Our community without IDRkmsi: our KPAK of T, then other KMSs' trusted KPAKs.
        (Some(c), None) => std::iter::once(*c.kpak()).chain(kpaks.iter().filter(|k| !own_generations.contains(k)).copied()).collect(),
        (None, None) => kpaks.to_vec(),
        (None, Some(i)) if i.eq_ignore_ascii_case(own_kms) => kpaks.iter().take(1).copied().collect(),
        (None, Some(i)) => return Err(auth(format!("I_MESSAGE signed in the KMS community {i}: no KMS certificate held for it (unknown community)"))),
    };
    Ok((kpaks, retired))
}

/// Why an I_MESSAGE that failed ERR Auth failure under the KPAK valid at its T was refused,
/// when one of `retired` (the signer community's certificates not valid at T) verifies its
/// signature: it was signed under a retired (expired or revoked) key generation — the typed
/// reason, in place of a bare signature failure.
fn retired_signer(message: &[u8], retired: &[Community]) -> Option<mediasec_mikey::Error> {
    let c = retired.iter().find(|c| mikey_sakke::signed_under(message, c.kpak()))?;
    let why = match (c.revoked(), c.valid_to()) {
        (true, _) => format!("signed under a revoked key generation of {} (KMS certificate from {})", c.kms_uri(), community::fmt_time(c.valid_from())),
        (false, Some(to)) => format!("signed under a key generation of {} that expired at {} (its KMS certificate is no longer valid)", c.kms_uri(), community::fmt_time(to)),
        (false, None) => format!("signed under a key generation of {} not yet valid at the message's T (from {})", c.kms_uri(), community::fmt_time(c.valid_from())),
    };
    Some(mediasec_mikey::Error::Rejected { code: ErrorCode::AUTH_FAILURE, reason: why })
}

/// Callee: receives the I_MESSAGE of `offer` at `now` and answers without key management
/// (module docs). The message's T selects our key period: each month we hold is tried (a
/// message for another month or user is ERR Invalid ID). A failing message is
/// [`Error::KeyRefused`] with the MIKEY Error message to return: signed with our ECCSI key of
/// the I_MESSAGE's month once the message was admitted ([`mikey_sakke::answer`]; our key and
/// RSK of that month are held together), unsigned before.
pub fn answer(hs: &mut HighSecurity, offer: &Sdp, local: SocketAddr, version: u64, ssrc: u32, now: Duration) -> Result<(String, Media), Error> {
    let _ = ssrc; // CS 2's SSRC is 0 in the I_MESSAGE: the callee has no message to name it in.
    let refused = |reason: String| Error::KeyRefused { reason, mikey_error: None };
    let stream = audio(offer).map_err(|e| refused(e.to_string()))?;
    let message = ticket::mikey_data(offer)
        .map_err(|e| refused(e.to_string()))?
        .ok_or_else(|| refused("offer without a=key-mgmt:mikey; policy requires MIKEY-SAKKE".into()))?;
    let t = ntp(now);
    let HighSecurity { keys, kpaks, replay, kms, communities, .. } = hs;
    replay.now_ntp_secs = t >> 32;
    let (kpaks, retired) = signer_kpaks(&message, kms.as_deref(), communities, kpaks)
        .map_err(|e| Error::KeyRefused { reason: format!("MIKEY-SAKKE: {e}"), mikey_error: signed_dh::error_reply(&message, &e, t) })?;
    let mut outcome = Err(mediasec_mikey::Error::Rejected { code: ErrorCode::INVALID_ID, reason: "no MIKEY-SAKKE receiver key held".into() });
    // The error message of the last attempt: signed once a key and KPAK admitted the message.
    let mut reply = None;
    for held in keys.iter() {
        let Some(s) = &held.sakke else { continue };
        outcome = under_trusted(&kpaks, |kpak| {
            mikey_sakke::answer(&message, kpak, &s.z, &s.rsk, &held.key, t, SKEW_SECS, replay, &mut random).map_err(|r| {
                reply = r.reply;
                r.error
            })
        });
        if !matches!(&outcome, Err(e) if e.err_code() == ErrorCode::INVALID_ID) {
            break;
        }
    }
    let outcome = match outcome {
        Err(e) if e.err_code() == ErrorCode::AUTH_FAILURE => Err(retired_signer(&message, &retired).unwrap_or(e)),
        other => other,
    };
    let received = outcome.map_err(|e| Error::KeyRefused { reason: format!("MIKEY-SAKKE: {e}"), mikey_error: reply.take().or_else(|| signed_dh::error_reply(&message, &e, t)) })?;
    let keys = received.keys.ok_or_else(|| refused("MIKEY-SAKKE: no two-stream SRTP-ID map (not a call message)".into()))?;
    let protection = protection(&keys, false).map_err(|e| refused(e.to_string()))?;
    let media = stream.media(stream.mux, protection);
    // The ECCSI signature authenticates IDRi (a URI; a TS 33.180 UID names no call identity).
    let media = match received.initiator {
        mikey_sakke::Identity::Uri(uri) => media.authenticated(uri),
        mikey_sakke::Identity::Uid(_) => media,
    };
    Ok((sdp_text(local, version, SAVP, &stream.answer_lines()), media))
}

/// Caller: what the MIKEY error message in the key-management attribute of a refusing answer
/// (the SDP of a 488) says, for the call's failure reason (docs/high-security.md §10.8
/// "Refusals"): its ERR codes, and who signed it — SIGNr by the callee's identity for the
/// month of our I_MESSAGE, carrying its T, under the KPAK of the callee's community (an
/// external community's from its KMS certificate, else our trusted KPAKs): that user itself
/// refused — or that nobody did (a hint only: anyone on the path could have written it,
/// RFC 3830 §9). `None` when the answer carries no MIKEY message.
pub fn refusal(hs: &HighSecurity, pending: &PendingCall, answer: &Sdp) -> Option<String> {
    let message = ticket::mikey_data(answer).ok().flatten()?;
    let read = |kpak: &Kpak| mikey_sakke::refusal(&message, pending.csb_id, pending.t, kpak);
    let read = match &pending.callee_kpak {
        Some(kpak) => read(kpak),
        None => under_trusted(&hs.kpaks, read),
    };
    Some(high_security::describe_refusal(read, &pending.callee))
}

/// Caller: the protection an answer to our I_MESSAGE will give, known before it (we chose the
/// SSV both directions derive from, RFC 6509 §2.1): what the media endpoint expects
/// ([`crate::media::RtpEndpoint::expect`]).
pub fn expected(pending: &PendingCall) -> Option<crate::offer_answer::Protection> {
    protection(&pending.keys, true).ok()
}

/// Caller: the media of an answer, which must be `RTP/SAVP` without `a=key-mgmt` (RFC 6509:
/// no response); anything else fails the call (no fallback).
pub fn process_answer(pending: &PendingCall, answer: &Sdp) -> Result<Media, Error> {
    let stream = audio(answer)?;
    if stream.proto != SAVP {
        return Err(Error::Downgrade(format!("MIKEY-SAKKE answer with {}, not {SAVP}", stream.proto)));
    }
    if ticket::mikey_data(answer)?.is_some() {
        return Err(Error::Negotiation("MIKEY-SAKKE answer carries a=key-mgmt (RFC 6509 has no response)".into()));
    }
    Ok(stream.media(stream.mux, protection(&pending.keys, true)?))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use mediasec_kms::keyprov::{Period, Provisioned, SakkeKeys};
    use mediasec_mikey::eccsi::{KmsSecret, SigningKey};
    use mediasec_mikey::sakke;
    use crate::high_security::tests::srtp_both_ways;

    const NOW: u64 = 1_798_675_200; // 2026-12-31T00:00:00Z

    fn creds(ksak: &KmsSecret, z: &sakke::KmsSecret, uri: &str) -> HighSecurity {
        creds_at(ksak, z, uri, NOW)
    }

    /// Credentials of `uri` for the month of Unix time `at`.
    fn creds_at(ksak: &KmsSecret, z: &sakke::KmsSecret, uri: &str, at: u64) -> HighSecurity {
        let p = Period::of_unix(at).unwrap();
        let id = mediasec_mikey::eccsi::identity(uri, p.year, p.month);
        let (ssk, pvt) = ksak.issue(&id, &[0x31; 32]).unwrap();
        let key = SigningKey::new(&ksak.kpak(), &id, ssk, pvt).unwrap();
        let sakke = SakkeKeys { z: z.public_key(), rsk: z.issue(&id).unwrap() };
        HighSecurity::from_provisioned(Provisioned { kms: "kms.a.example".into(), uri: uri.into(), period: p, kpak: ksak.kpak(), key, sakke: Some(sakke), communities: Vec::new() }, Vec::new())
    }

    /// Credentials of `uri` from the KMS `kms` (keys `ksak`, `z`) that handed out `communities`.
    fn creds_in(ksak: &KmsSecret, z: &sakke::KmsSecret, kms: &str, uri: &str, communities: Vec<Community>) -> HighSecurity {
        let mut hs = creds(ksak, z, uri);
        hs.kms = Some(kms.into());
        hs.communities = communities;
        hs
    }

    fn community_of(ksak: &KmsSecret, z: &sakke::KmsSecret, kms: &str, domain: &str) -> Community {
        Community::new(kms, ksak.kpak(), z.public_key(), &[domain.into()]).unwrap()
    }

    fn refused_with(e: Error, code: ErrorCode, words: &str) {
        match e {
            Error::KeyRefused { reason, mikey_error: Some(m) } => {
                assert!(reason.contains(words), "{reason}");
                let m = mediasec_mikey::Message::decode(&m).unwrap();
                assert!(m.payloads.iter().any(|p| matches!(p, mediasec_mikey::Payload::Err(e) if e.code == code)), "{m:?}");
            }
            other => panic!("{other}"),
        }
    }

    /// Across two KMS communities (docs/high-security.md §10.9): alice (KMS a) calls carol
    /// (KMS b) — encapsulated under b's Z, IDRkmsi = kms.a.example, IDRkmsr = kms.b.example,
    /// signed with alice's a key; carol verifies under a's KPAK from a's certificate and
    /// decrypts with her b RSK; SRTP both ways. Within a's community no IDRkms is sent.
    /// Refused: dave (b) who holds no certificate of a (ERR Auth failure, "unknown
    /// community"); carol given a message whose IDRkmsr is the a community (ERR Invalid ID);
    /// a callee domain of no community (the caller fails before sending).
    #[test]
    fn cross_community_call_and_refusals() {
        let (ksak_a, z_a) = (KmsSecret::from_bytes(&[0x42; 32]).unwrap(), sakke::KmsSecret::from_bytes(&[0x5a; 32]).unwrap());
        let (ksak_b, z_b) = (KmsSecret::from_bytes(&[0x43; 32]).unwrap(), sakke::KmsSecret::from_bytes(&[0x5b; 32]).unwrap());
        let (a, b) = (community_of(&ksak_a, &z_a, "kms.a.example", "a.example"), community_of(&ksak_b, &z_b, "kms.b.example", "b.example"));
        let mut alice = creds_in(&ksak_a, &z_a, "kms.a.example", "sip:alice@a.example", vec![a.clone(), b.clone()]);
        let mut carol = creds_in(&ksak_b, &z_b, "kms.b.example", "sip:carol@b.example", vec![b.clone(), a]);
        let mut dave = creds_in(&ksak_b, &z_b, "kms.b.example", "sip:dave@b.example", vec![b]);
        let local: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let now = Duration::from_secs(NOW);
        let (offer_sdp, pending) = offer(&mut alice, local, 1, 0x1111, "sip:carol@b.example", now).unwrap();
        let offered = Sdp::parse(&offer_sdp);
        let message = ticket::mikey_data(&offered).unwrap().unwrap();
        assert_eq!(mikey_sakke::kms_uris(&message).unwrap(), (Some("kms.a.example".into()), Some("kms.b.example".into())));
        let (answer_sdp, carol_media) = answer(&mut carol, &offered, local, 1, 0x2222, now).unwrap();
        srtp_both_ways(&process_answer(&pending, &Sdp::parse(&answer_sdp)).unwrap(), &carol_media);

        let (to_dave, _) = offer(&mut alice, local, 1, 0x1111, "sip:dave@b.example", now).unwrap();
        refused_with(answer(&mut dave, &Sdp::parse(&to_dave), local, 1, 0x2222, now).err().unwrap(), ErrorCode::AUTH_FAILURE, "unknown community");
        let (to_bob, _) = offer(&mut alice, local, 1, 0x1111, "sip:bob@a.example", now).unwrap();
        assert_eq!(mikey_sakke::kms_uris(&ticket::mikey_data(&Sdp::parse(&to_bob)).unwrap().unwrap()).unwrap(), (None, None), "same community: no IDRkms, as before");
        // A message that names the a community as the responder's is not for carol.
        let o = Offer { prf: PrfFunc::MIKEY_1, csb_id: 7, initiator_uri: "sip:alice@a.example".into(), responder_uri: "sip:carol@b.example".into(), kms_uri: Some("kms.a.example".into()), responder_kms_uri: None, initiator_ssrc: 1, policy: srtp_policy::aes_cm_128_hmac_sha1_80() };
        let (misdirected, _) = mikey_sakke::build(&o, &key_at(&alice.keys, &alice.uri, now).unwrap().key, &z_b.public_key(), ntp(now), &mut random).unwrap();
        let sdp = sdp_text(local, 1, SAVP, &[ticket::key_mgmt_line(misdirected), RTCP_MUX.into()]);
        refused_with(answer(&mut carol, &Sdp::parse(&sdp), local, 1, 0x2222, now).err().unwrap(), ErrorCode::INVALID_ID, "kms.a.example");
        match offer(&mut alice, local, 1, 0x1111, "sip:erin@c.example", now) {
            Err(Error::Negotiation(r)) => assert!(r.contains("c.example") && r.contains("no KMS community"), "{r}"),
            other => panic!("{:?}", other.map(|(sdp, _)| sdp)),
        }
        // Without certificates (one community): alice's message to carol is under a's Z,
        // which carol cannot open.
        let mut alone = creds(&ksak_a, &z_a, "sip:alice@a.example");
        let (legacy, _) = offer(&mut alone, local, 1, 0x1111, "sip:carol@b.example", now).unwrap();
        assert!(answer(&mut carol, &Sdp::parse(&legacy), local, 1, 0x2222, now).is_err());
    }

    /// A community key rotation (docs/high-security.md §10.10): KMS a's generation 1 (KSAK₁,
    /// z₁) is valid until 2027-01-01T00:00Z, generation 2 (KSAK₂, z₂) from then; keys of a
    /// month are of the generation valid in it, and receivers take the KPAK of the
    /// certificate valid at the I_MESSAGE's T.
    /// - Across the instant: alice, provisioned before the rotation (December keys, the
    ///   version 1 certificate of generation 1), calls bob, renewed after it (December and
    ///   January keys, both certificates), at T 5 s before the instant; bob answers 5 s after
    ///   it — generation 1 is the one valid at T —; and bob calls alice the other way. Both
    ///   with SRTP both ways.
    /// - After it: with alice renewed (January, generation 2), calls both ways under
    ///   generation 2.
    /// - Expired: mallory signs a January I_MESSAGE with a key of the retired KSAK₁ (a stolen
    ///   one): bob refuses it with ERR Auth failure naming the expiry of generation 1's
    ///   certificate; a caller holding only generation 1's certificate with its end refuses
    ///   to call after it ("expired"), before sending anything.
    /// - Revoked: bob holding generation 2's certificate revoked refuses the I_MESSAGE of T
    ///   in its window as "revoked".
    #[test]
    fn calls_across_a_community_key_rotation() {
        const JAN: u64 = 1_798_761_600; // 2027-01-01T00:00:00Z
        let (ksak1, z1) = (KmsSecret::from_bytes(&[0x42; 32]).unwrap(), sakke::KmsSecret::from_bytes(&[0x5a; 32]).unwrap());
        let (ksak2, z2) = (KmsSecret::from_bytes(&[0x44; 32]).unwrap(), sakke::KmsSecret::from_bytes(&[0x5c; 32]).unwrap());
        let domains = ["a.example".to_owned()];
        let cert = |k: &KmsSecret, z: &sakke::KmsSecret, from, to, revoked| Community::with_validity("kms.a.example", k.kpak(), z.public_key(), &domains, from, to, revoked).unwrap();
        let (g1, g2) = (cert(&ksak1, &z1, None, Some(JAN), false), cert(&ksak2, &z2, Some(JAN), None, false));
        let rotated = vec![g1.clone(), g2];
        let mut alice = creds_in(&ksak1, &z1, "kms.a.example", "sip:alice@a.example", vec![community_of(&ksak1, &z1, "kms.a.example", "a.example")]);
        let mut bob = creds_in(&ksak1, &z1, "kms.a.example", "sip:bob@a.example", rotated.clone());
        bob.keys.extend(creds_at(&ksak2, &z2, "sip:bob@a.example", JAN + 10).keys);
        let local: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let at = Duration::from_secs;
        let call = |from: &mut HighSecurity, to: &mut HighSecurity, callee: &str, sent: u64, received: u64| {
            let (sdp, pending) = offer(from, local, 1, 0x1111, callee, at(sent)).unwrap();
            let (answer_sdp, media) = answer(to, &Sdp::parse(&sdp), local, 1, 0x2222, at(received)).unwrap();
            srtp_both_ways(&process_answer(&pending, &Sdp::parse(&answer_sdp)).unwrap(), &media);
        };
        call(&mut alice, &mut bob, "sip:bob@a.example", JAN - 5, JAN + 5);
        call(&mut bob, &mut alice, "sip:alice@a.example", JAN - 3, JAN + 2);

        alice.keys.extend(creds_at(&ksak2, &z2, "sip:alice@a.example", JAN + 100).keys);
        alice.communities = rotated.clone();
        call(&mut alice, &mut bob, "sip:bob@a.example", JAN + 100, JAN + 101);
        call(&mut bob, &mut alice, "sip:alice@a.example", JAN + 102, JAN + 103);

        let mut mallory = creds_in(&ksak1, &z1, "kms.a.example", "sip:mallory@a.example", rotated);
        mallory.keys = creds_at(&ksak1, &z1, "sip:mallory@a.example", JAN + 200).keys;
        let (forged, _) = offer(&mut mallory, local, 1, 0x1111, "sip:bob@a.example", at(JAN + 200)).unwrap();
        refused_with(answer(&mut bob, &Sdp::parse(&forged), local, 1, 0x2222, at(JAN + 200)).err().unwrap(), ErrorCode::AUTH_FAILURE, "expired at 2027-01-01T00:00:00Z");
        let mut stale = creds_in(&ksak1, &z1, "kms.a.example", "sip:carol@a.example", vec![g1.clone()]);
        stale.keys.extend(creds_at(&ksak2, &z2, "sip:carol@a.example", JAN + 300).keys);
        match offer(&mut stale, local, 1, 0x1111, "sip:bob@a.example", at(JAN + 300)) {
            Err(Error::Negotiation(r)) => assert!(r.contains("kms.a.example") && r.contains("expired at 2027-01-01T00:00:00Z"), "{r}"),
            other => panic!("{:?}", other.map(|(sdp, _)| sdp)),
        }

        bob.communities = vec![g1, cert(&ksak2, &z2, Some(JAN), None, true)];
        let (sdp, _) = offer(&mut alice, local, 1, 0x1111, "sip:bob@a.example", at(JAN + 400)).unwrap();
        refused_with(answer(&mut bob, &Sdp::parse(&sdp), local, 1, 0x2222, at(JAN + 400)).err().unwrap(), ErrorCode::AUTH_FAILURE, "revoked");
    }

    /// A KMS community vouches only for the users of its `kms_domain_list`: KMS a can issue
    /// an ECCSI key for any identity string, so a message signed in a's community as
    /// carol's colleague dave@b.example, or as tel:+15551234, is refused by carol before
    /// decapsulation (ERR Invalid ID), instead of keying a call she would see as
    /// authenticated from that identity; a's own user alice still gets through.
    #[test]
    fn external_community_signs_only_for_its_own_domains() {
        let (ksak_a, z_a) = (KmsSecret::from_bytes(&[0x42; 32]).unwrap(), sakke::KmsSecret::from_bytes(&[0x5a; 32]).unwrap());
        let (ksak_b, z_b) = (KmsSecret::from_bytes(&[0x43; 32]).unwrap(), sakke::KmsSecret::from_bytes(&[0x5b; 32]).unwrap());
        let (a, b) = (community_of(&ksak_a, &z_a, "kms.a.example", "a.example"), community_of(&ksak_b, &z_b, "kms.b.example", "b.example"));
        let mut carol = creds_in(&ksak_b, &z_b, "kms.b.example", "sip:carol@b.example", vec![b.clone(), a.clone()]);
        let local: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let now = Duration::from_secs(NOW);
        for (signer, admitted) in [("sip:alice@a.example", true), ("sip:dave@b.example", false), ("tel:+15551234", false)] {
            let mut forger = creds_in(&ksak_a, &z_a, "kms.a.example", signer, vec![a.clone(), b.clone()]);
            let (offered, _) = under_z(&mut forger, "sip:carol@b.example", &z_b.public_key(), Some(("kms.a.example", "kms.b.example")), now);
            match answer(&mut carol, &offered, local, 1, 0x2222, now) {
                Ok(_) => assert!(admitted, "{signer} signed in a's community was admitted"),
                Err(e) if !admitted => refused_with(e, ErrorCode::INVALID_ID, "does not serve"),
                Err(e) => panic!("{signer}: {e}"),
            }
        }
    }

    /// alice's offer to `callee` whose I_MESSAGE is encapsulated under `z` (not the callee's
    /// KMS's Z; IDRkmsi / IDRkmsr `kms`), and the pending call [`offer`] keeps for it.
    fn under_z(alice: &mut HighSecurity, callee: &str, z: &sakke::PublicKey, kms: Option<(&str, &str)>, now: Duration) -> (Sdp, PendingCall) {
        let local: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let (_, pending) = offer(alice, local, 1, 0x1111, callee, now).unwrap();
        let o = Offer {
            prf: PrfFunc::MIKEY_1,
            csb_id: pending.csb_id,
            initiator_uri: alice.uri.clone(),
            responder_uri: pending.callee.clone(),
            kms_uri: kms.map(|k| k.0.into()),
            responder_kms_uri: kms.map(|k| k.1.into()),
            initiator_ssrc: 0x1111,
            policy: srtp_policy::aes_cm_128_hmac_sha1_80(),
        };
        let (message, _) = mikey_sakke::build(&o, &key_at(&alice.keys, &alice.uri, now).unwrap().key, z, pending.t, &mut random).unwrap();
        (Sdp::parse(&sdp_text(local, 1, SAVP, &[ticket::key_mgmt_line(message), RTCP_MUX.into()])), pending)
    }

    /// The SDP of the 488 the agent sends for `e` (offer_answer::refusal with the MIKEY error).
    fn refusing_sdp(offer: &Sdp, e: Error) -> (Sdp, Vec<u8>) {
        let Error::KeyRefused { mikey_error: Some(m), .. } = e else { panic!("a MIKEY error: {e}") };
        let refusal = crate::offer_answer::refusal(offer, "127.0.0.1:40000".parse().unwrap(), 1).unwrap();
        (Sdp::parse(&format!("{refusal}a={}\r\n", ticket::key_mgmt_line(m.clone()))), m)
    }

    /// What the caller reads from a refusing answer ([`refusal`]): bob admits alice's
    /// I_MESSAGE (for him, signed under the trusted KPAK) but cannot open it (encapsulated
    /// under another Z) and signs his refusal — read as "signed by sip:bob@a.example"; the same
    /// error altered on the path is not accepted, and stripped of its signature (what anyone
    /// on the path can write) is read as a hint; a message for bob that reached carol is
    /// refused before admission, unsigned: a hint.
    #[test]
    fn signed_refusals_are_read_as_authenticated_and_unsigned_ones_as_hints() {
        let (ksak, z) = (KmsSecret::from_bytes(&[0x42; 32]).unwrap(), sakke::KmsSecret::from_bytes(&[0x5a; 32]).unwrap());
        let other_z = sakke::KmsSecret::from_bytes(&[0x5b; 32]).unwrap().public_key();
        let (mut alice, mut bob, mut carol) = (creds(&ksak, &z, "sip:alice@a.example"), creds(&ksak, &z, "sip:bob@a.example"), creds(&ksak, &z, "sip:carol@a.example"));
        let local: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let now = Duration::from_secs(NOW);
        let (offered, pending) = under_z(&mut alice, "sip:bob@a.example", &other_z, None, now);
        let e = answer(&mut bob, &offered, local, 1, 0x2222, now + Duration::from_secs(1)).err().unwrap();
        let (refused, error) = refusing_sdp(&offered, e);
        assert_eq!(refusal(&alice, &pending, &refused).unwrap(), "MIKEY error Authentication failure (signed by sip:bob@a.example)");

        let mut altered = error.clone();
        *altered.last_mut().unwrap() ^= 1;
        let (altered, _) = refusing_sdp(&offered, Error::KeyRefused { reason: String::new(), mikey_error: Some(altered) });
        let why = refusal(&alice, &pending, &altered).unwrap();
        assert!(why.starts_with("MIKEY error message not accepted"), "{why}");
        let mut stripped = mediasec_mikey::Message::decode(&error).unwrap();
        stripped.payloads.retain(|p| matches!(p, mediasec_mikey::Payload::T(_) | mediasec_mikey::Payload::Err(_)));
        let (stripped, _) = refusing_sdp(&offered, Error::KeyRefused { reason: String::new(), mikey_error: Some(stripped.encode().unwrap()) });
        assert_eq!(refusal(&alice, &pending, &stripped).unwrap(), "MIKEY error Authentication failure (unsigned: a hint only)");

        let (offer_sdp, pending) = offer(&mut alice, local, 1, 0x1111, "sip:bob@a.example", now).unwrap();
        let offered = Sdp::parse(&offer_sdp);
        let (refused, _) = refusing_sdp(&offered, answer(&mut carol, &offered, local, 1, 0x3333, now).err().unwrap());
        assert_eq!(refusal(&alice, &pending, &refused).unwrap(), "MIKEY error ID not supported (unsigned: a hint only)");
    }

    /// Across communities: carol (KMS b) admits alice's (KMS a) I_MESSAGE — IDRkmsi a, IDRkmsr
    /// b, signed under a's KPAK from a's certificate — that is encapsulated under a's Z, not
    /// b's, and signs her refusal with her b key; alice verifies it under b's KPAK from b's
    /// certificate ("signed by sip:carol@b.example"); under a's KPAK alone (a UE that took it
    /// for its own community) it does not verify.
    #[test]
    fn cross_community_refusals_are_signed_under_the_callee_community_kpak() {
        let (ksak_a, z_a) = (KmsSecret::from_bytes(&[0x42; 32]).unwrap(), sakke::KmsSecret::from_bytes(&[0x5a; 32]).unwrap());
        let (ksak_b, z_b) = (KmsSecret::from_bytes(&[0x43; 32]).unwrap(), sakke::KmsSecret::from_bytes(&[0x5b; 32]).unwrap());
        let (a, b) = (community_of(&ksak_a, &z_a, "kms.a.example", "a.example"), community_of(&ksak_b, &z_b, "kms.b.example", "b.example"));
        let mut alice = creds_in(&ksak_a, &z_a, "kms.a.example", "sip:alice@a.example", vec![a.clone(), b.clone()]);
        let mut carol = creds_in(&ksak_b, &z_b, "kms.b.example", "sip:carol@b.example", vec![b, a]);
        let local: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let now = Duration::from_secs(NOW);
        let (offered, pending) = under_z(&mut alice, "sip:carol@b.example", &z_a.public_key(), Some(("kms.a.example", "kms.b.example")), now);
        assert_eq!(pending.callee_kpak, Some(ksak_b.kpak()), "b's KPAK from b's certificate");
        let e = answer(&mut carol, &offered, local, 1, 0x2222, now).err().unwrap();
        let (refused, _) = refusing_sdp(&offered, e);
        assert_eq!(refusal(&alice, &pending, &refused).unwrap(), "MIKEY error Authentication failure (signed by sip:carol@b.example)");
        let own_only = PendingCall { callee_kpak: None, ..pending };
        let why = refusal(&alice, &own_only, &refused).unwrap();
        assert!(why.starts_with("MIKEY error message not accepted"), "{why}");
    }

    /// A MIKEY-SAKKE call: the offer carries the I_MESSAGE, the answer has no key management,
    /// both sides end with the same SRTP keys; the same message is refused when replayed, when
    /// received by someone else (ERR Invalid ID, with the MIKEY Error message), or signed under
    /// an untrusted KPAK; an answer with key management fails the caller.
    #[test]
    fn call_keys_and_refusals() {
        let (ksak, z) = (KmsSecret::from_bytes(&[0x42; 32]).unwrap(), sakke::KmsSecret::from_bytes(&[0x5a; 32]).unwrap());
        let (mut alice, mut bob, mut carol) = (creds(&ksak, &z, "sip:alice@a.example"), creds(&ksak, &z, "sip:bob@a.example"), creds(&ksak, &z, "sip:carol@a.example"));
        let local: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let now = Duration::from_secs(NOW);
        let (offer_sdp, pending) = offer(&mut alice, local, 1, 0x1111, "sip:bob@a.example", now).unwrap();
        assert!(offer_sdp.contains("RTP/SAVP") && offer_sdp.contains("a=key-mgmt:mikey "), "{offer_sdp}");
        let offered = Sdp::parse(&offer_sdp);
        let (answer_sdp, bob_media) = answer(&mut bob, &offered, local, 1, 0x2222, now + Duration::from_secs(1)).unwrap();
        assert!(answer_sdp.contains("RTP/SAVP") && !answer_sdp.contains("key-mgmt"), "{answer_sdp}");
        let alice_media = process_answer(&pending, &Sdp::parse(&answer_sdp)).unwrap();
        srtp_both_ways(&alice_media, &bob_media);
        let replayed = answer(&mut bob, &offered, local, 1, 0x2222, now + Duration::from_secs(2)).err().unwrap();
        assert!(matches!(&replayed, Error::KeyRefused { .. }), "{replayed}");
        match answer(&mut carol, &offered, local, 1, 0x3333, now).err().unwrap() {
            Error::KeyRefused { mikey_error: Some(m), .. } => {
                let m = mediasec_mikey::Message::decode(&m).unwrap();
                assert!(m.payloads.iter().any(|p| matches!(p, mediasec_mikey::Payload::Err(e) if e.code == ErrorCode::INVALID_ID)), "{m:?}");
            }
            other => panic!("{other}"),
        }
        let mut other_kms = creds(&KmsSecret::from_bytes(&[0x43; 32]).unwrap(), &z, "sip:alice@a.example");
        let (forged, _) = offer(&mut other_kms, local, 1, 0x1111, "sip:bob@a.example", now).unwrap();
        assert!(matches!(answer(&mut bob, &Sdp::parse(&forged), local, 1, 0x2222, now), Err(Error::KeyRefused { .. })), "untrusted KPAK");
        assert!(process_answer(&pending, &offered).is_err(), "an answer with a=key-mgmt");
    }

    /// The caller keeps its callees' SAKKE points ([`Recipients`]): a second call to bob in
    /// the same month under the same Z computes none, and bob still opens it; carol, bob in
    /// the next month (another identifier) and bob under a renewed Z each need a new one.
    #[test]
    fn recipients_are_reused_per_callee_month_and_kms_key() {
        let (ksak, z) = (KmsSecret::from_bytes(&[0x42; 32]).unwrap(), sakke::KmsSecret::from_bytes(&[0x5a; 32]).unwrap());
        let january = NOW + 86_400;
        let (mut alice, mut bob) = (creds(&ksak, &z, "sip:alice@a.example"), creds(&ksak, &z, "sip:bob@a.example"));
        alice.keys.extend(creds_at(&ksak, &z, "sip:alice@a.example", january).keys);
        bob.keys.extend(creds_at(&ksak, &z, "sip:bob@a.example", january).keys);
        let local: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let call = |alice: &mut HighSecurity, bob: &mut HighSecurity, at: u64| {
            let (sdp, pending) = offer(alice, local, 1, 0x1111, "sip:bob@a.example", Duration::from_secs(at)).unwrap();
            let (answer_sdp, bob_media) = answer(bob, &Sdp::parse(&sdp), local, 1, 0x2222, Duration::from_secs(at)).unwrap();
            srtp_both_ways(&process_answer(&pending, &Sdp::parse(&answer_sdp)).unwrap(), &bob_media);
        };
        call(&mut alice, &mut bob, NOW);
        assert_eq!((alice.recipients.len(), alice.recipients.computed()), (1, 1));
        call(&mut alice, &mut bob, NOW + 1);
        assert_eq!((alice.recipients.len(), alice.recipients.computed()), (1, 1), "bob's point reused");
        offer(&mut alice, local, 1, 0x1111, "sip:carol@a.example", Duration::from_secs(NOW)).unwrap();
        assert_eq!((alice.recipients.len(), alice.recipients.computed()), (2, 2));
        call(&mut alice, &mut bob, january);
        assert_eq!((alice.recipients.len(), alice.recipients.computed()), (3, 3), "another month, another identifier");
        let renewed = sakke::KmsSecret::from_bytes(&[0x5b; 32]).unwrap().public_key();
        for k in &mut alice.keys {
            if let Some(s) = k.sakke.as_mut() {
                s.z = renewed;
            }
        }
        offer(&mut alice, local, 1, 0x1111, "sip:bob@a.example", Duration::from_secs(NOW)).unwrap();
        assert_eq!((alice.recipients.len(), alice.recipients.computed()), (4, 4), "another Z");
    }

    /// [`Recipients`] holds at most [`RECIPIENTS`]; full, a new one evicts the least recently
    /// used (a reuse counts as a use); the closure gets the recipient asked for.
    #[test]
    fn recipients_cap_evicts_the_least_recently_used() {
        let z = sakke::KmsSecret::from_bytes(&[0x5a; 32]).unwrap().public_key();
        let id = |i: usize| format!("2026-12\0sip:u{i}@a.example\0").into_bytes();
        let mut r = Recipients::default();
        for i in 0..RECIPIENTS {
            assert_eq!(r.with(&z, &id(i), |x| x.id().to_vec()), id(i));
        }
        let n = RECIPIENTS as u64;
        assert_eq!((r.len(), r.computed()), (RECIPIENTS, n));
        r.with(&z, &id(0), |_| ()); // 0 used again: 1 is now the least recently used
        assert_eq!(r.computed(), n);
        r.with(&z, &id(RECIPIENTS), |_| ());
        assert_eq!((r.len(), r.computed()), (RECIPIENTS, n + 1));
        r.with(&z, &id(0), |_| ());
        assert_eq!(r.computed(), n + 1, "0 kept");
        assert_eq!(r.with(&z, &id(1), |x| x.id().to_vec()), id(1));
        assert_eq!((r.len(), r.computed()), (RECIPIENTS, n + 2), "1 was evicted");
    }
}
