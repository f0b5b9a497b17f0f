//! The mailbox owner's side of deferred delivery (docs/voicemail.md): list and download its
//! messages (GBA HTTP Digest as the B-TID, [`MailboxClient`]), then for each message resolve
//! the stored TRANSFER_INIT's ticket at its KMS **as the responder** (Ticket Resolve, RFC 6043
//! §4.1.3 — the KMS authorises only the ticket's responders), verify TRANSFER_INIT's MAC with
//! MPKi, derive the caller's stream keys (CS 1) and unprotect every stored packet
//! ([`open_message`]). The TRANSFER_INIT timestamp is not checked against the clock (a stored
//! message is old by design) but the ticket must still be valid
//! ([`mediasec_kms::KmsError::TicketExpired`]). The caller shown to the owner is the one the
//! ticket names ([`Decrypted::initiator`]), not the record's network-asserted `caller`.

use std::time::Duration;

use mediasec_bsf::client::{Endpoint, HttpResponse, request};
use mediasec_kms::client::KmsClient;
use mediasec_kms::identity::KmsUid;
use mediasec_kms::ue::{Media, Ue, deferred_ticket_end};
use mediasec_srtp::{RtpHeader, Session, is_rtcp};
use mediasec_ua::tone;
use zeroize::Zeroizing;

use crate::api::{BASE, MessageDoc, Summary};
use crate::auth::authorization;
use crate::error::VoicemailError;
use crate::record::Record;

/// User-Agent of the owner's client: the GBA product token (TS 24.109 §5.2.1).
pub const USER_AGENT: &str = "mediasec-voicemail 3gpp-gba";

/// A client of the retrieval API, authenticating as a bootstrapped user.
pub struct MailboxClient {
    endpoint: Endpoint,
    naf_fqdn: String,
    btid: String,
    ks_naf: Zeroizing<Vec<u8>>,
}

impl MailboxClient {
    /// A client of the server at `endpoint`, the NAF `naf_fqdn`, for B-TID `btid` holding
    /// `ks_naf` (Ks_NAF for `naf_fqdn` and the HTTP Digest Ua protocol id).
    pub fn new(endpoint: Endpoint, naf_fqdn: impl Into<String>, btid: impl Into<String>, ks_naf: &[u8]) -> Self {
        Self { endpoint, naf_fqdn: naf_fqdn.into(), btid: btid.into(), ks_naf: Zeroizing::new(ks_naf.to_vec()) }
    }

    /// One request: unauthenticated first, then answering the 401's challenge.
    async fn send(&self, method: &str, path: &str) -> Result<HttpResponse, VoicemailError> {
        let http = |e: mediasec_bsf::BsfError| VoicemailError::Api { status: 0, reason: e.to_string() };
        let first = request(&self.endpoint, method, path, &[("User-Agent", USER_AGENT)], &[]).await.map_err(http)?;
        let r = if first.status == 401 {
            let challenge = first.header("www-authenticate").ok_or_else(|| VoicemailError::Answer("401 without WWW-Authenticate".into()))?;
            let auth = authorization(challenge, method, path, &self.naf_fqdn, &self.btid, &self.ks_naf).map_err(|e| VoicemailError::Answer(format!("challenge: {e}")))?;
            request(&self.endpoint, method, path, &[("User-Agent", USER_AGENT), ("Authorization", &auth)], &[]).await.map_err(http)?
        } else {
            first
        };
        if !(200..300).contains(&r.status) {
            return Err(VoicemailError::Api { status: r.status, reason: String::from_utf8_lossy(&r.body).trim().to_owned() });
        }
        Ok(r)
    }

    /// The messages of our mailboxes.
    pub async fn list(&self) -> Result<Vec<Summary>, VoicemailError> {
        let r = self.send("GET", BASE).await?;
        serde_json::from_slice(&r.body).map_err(|e| VoicemailError::Answer(e.to_string()))
    }

    /// Message `id`.
    pub async fn fetch(&self, id: u64) -> Result<Record, VoicemailError> {
        let r = self.send("GET", &format!("{BASE}/{id}")).await?;
        MessageDoc::parse(&r.body)
    }

    /// Deletes message `id`.
    pub async fn delete(&self, id: u64) -> Result<(), VoicemailError> {
        self.send("DELETE", &format!("{BASE}/{id}")).await.map(|_| ())
    }
}

/// What came out of a stored message.
#[derive(Clone, Debug, Default)]
pub struct Decrypted {
    /// SRTP packets authenticated and decrypted.
    pub rtp: u64,
    /// SRTCP packets authenticated.
    pub rtcp: u64,
    /// Packets that did not authenticate (or did not parse).
    pub failed: u64,
    /// The RTP payloads (PCMU), in order.
    pub payloads: Vec<Vec<u8>>,
    /// Who made the call, as its ticket names it (set by [`open_message`],
    /// [`mediasec_kms::ue::Deferred::initiator`]); the record's `caller` is only what the
    /// network asserted to the voicemail server.
    pub initiator: Option<KmsUid>,
}

impl Decrypted {
    /// Payloads that carry a `hz` tone ([`mediasec_ua::tone::is_tone`]).
    pub fn tone_packets(&self, hz: f64) -> usize {
        self.payloads.iter().filter(|p| tone::is_tone(p, hz)).count()
    }

    /// The audio as a WAV file: 8 kHz mono 16-bit linear PCM (RIFF), μ-law decoded.
    pub fn wav(&self) -> Vec<u8> {
        let samples: Vec<i16> = self.payloads.iter().flatten().map(|b| tone::ulaw_decode(*b)).collect();
        let data = u32::try_from(samples.len().saturating_mul(2)).unwrap_or(u32::MAX);
        let mut out = Vec::with_capacity(44 + samples.len() * 2);
        out.extend_from_slice(b"RIFF");
        out.extend_from_slice(&data.saturating_add(36).to_le_bytes());
        out.extend_from_slice(b"WAVEfmt ");
        out.extend_from_slice(&16u32.to_le_bytes());
        out.extend_from_slice(&1u16.to_le_bytes()); // PCM
        out.extend_from_slice(&1u16.to_le_bytes()); // mono
        out.extend_from_slice(&8000u32.to_le_bytes());
        out.extend_from_slice(&16000u32.to_le_bytes()); // byte rate
        out.extend_from_slice(&2u16.to_le_bytes()); // block align
        out.extend_from_slice(&16u16.to_le_bytes()); // bits
        out.extend_from_slice(b"data");
        out.extend_from_slice(&data.to_le_bytes());
        for s in samples {
            out.extend_from_slice(&s.to_le_bytes());
        }
        out
    }
}

/// Unprotects every stored packet with the caller's stream policy (CS 1), sans-IO.
pub fn decrypt(media: &Media, record: &Record) -> Result<Decrypted, VoicemailError> {
    let mut session = Session::new(&media.initiator_stream.to_srtp()?)?;
    let mut out = Decrypted::default();
    for p in &record.packets {
        let mut buf = p.bytes.clone();
        if is_rtcp(&buf) {
            match session.unprotect_rtcp(&mut buf) {
                Ok(_) => out.rtcp += 1,
                Err(_) => out.failed += 1,
            }
            continue;
        }
        let payload = session.unprotect_rtp(&mut buf).ok().and_then(|len| {
            let start = RtpHeader::parse(&buf).ok()?.len;
            buf.get(start..len).map(<[u8]>::to_vec)
        });
        match payload {
            Some(p) => {
                out.rtp += 1;
                out.payloads.push(p);
            }
            None => out.failed += 1,
        }
    }
    Ok(out)
}

/// Opens a stored message as its mailbox owner `ue` at time `now`: ticket still valid, Ticket
/// Resolve at the KMS (the owner must be an authorised responder of the ticket), TRANSFER_INIT
/// verified with MPKi (no timestamp window), the caller's stream decrypted, the caller the
/// ticket names in [`Decrypted::initiator`].
pub async fn open_message(ue: &mut Ue, kms: &KmsClient, record: &Record, now: Duration) -> Result<Decrypted, VoicemailError> {
    deferred_ticket_end(&record.transfer_init, now)?;
    let resolved = kms.resolve(ue, &record.transfer_init).await?;
    let opened = ue.deferred_open(&resolved, &record.transfer_init, now)?;
    Ok(Decrypted { initiator: Some(opened.initiator), ..decrypt(&opened.media, record)? })
}
