//! The SIP call scenarios of the demo: the two-domain lab (P-CSCF and S-CSCF per domain) on
//! loopback, UEs registered through it, calls placed with each key-management mode, media
//! checked by content (each UE sends its own tone and counts the peer's). MIKEY-TICKET calls
//! use a real BSF and KMS (the `mediasec-kms` lab: UEs bootstrap over Ub, tickets over Ua),
//! same domain. Also measures the call set-up time per mode (dial → 2xx processed at
//! the caller; for MIKEY-TICKET this includes Ticket Request and Ticket Resolve over HTTP).
//! Re-keyed calls renew the keys with a re-INVITE: SDES with fresh `a=crypto` keys, MIKEY-TICKET
//! with a new Ticket Transfer (a fresh ticket from the KMS, resolved by the callee). The
//! offerless MIKEY-TICKET call swaps the roles (RFC 4567 §3): the callee of an INVITE without
//! SDP requests the ticket and offers TRANSFER_INIT in its 200; the caller resolves it and
//! answers TRANSFER_RESP in the ACK.
//! The e2ae call runs through P-CSCF a as IMS-ALG driving our IMS-AGW over ng: SRTP on the
//! access leg, plain RTP in the core, checked by tone at both UEs, by the AGW's counters and
//! by the IMS-ALG's (P-CSCF a) e2ae counters. Four e2ae calls: plain; re-keyed by an UPDATE;
//! the TS 24.229 preconditions flow (reliable 183 with early media, PRACK, an early-dialog
//! UPDATE re-keying through the AGW before the 200, RFC 3262/3311); and offerless (the offer
//! in bob's 200, the answer in alice's ACK, RFC 3261 §13.2.1 without 100rel).
//! The SDES e2e and e2ae calls run their UE–P-CSCF hops over TLS (RFC 3261 §26.2; TS 33.328 §4.1.2.1:
//! SDES is only as safe as the signalling carrying its keys), with a lab CA and a P-CSCF
//! certificate for 127.0.0.1 made at start-up (rcgen); each checks that every SIP message its
//! UEs received came over TLS. The core (P-CSCF–S-CSCF) stays on UDP/TCP.
//! Deferred delivery (docs/voicemail.md): S-CSCF a diverts a MIKEY-TICKET call for an
//! unregistered user to the voicemail server, which stores the SRTP it cannot decrypt; the
//! callee later bootstraps, downloads (GBA HTTP Digest), resolves the ticket and decrypts —
//! the row fails unless the caller's tone comes out.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use mediasec_cscf::lab::{LabConfig, TwoDomains};
use mediasec_cscf::service::Cscf;
use mediasec_cscf::Stats;
use mediasec_kms::lab::{DomainSpec, Lab as KmsLab};
use mediasec_sdp::SdesPolicy;
use mediasec_ua::high_security::HighSecurity;
use mediasec_ua::ticket::KmsAccess;
use mediasec_ua::{Answering, CallReport, CallState, Security, Ue, UeConfig};

/// The outcome of one scenario.
pub(crate) struct Scenario {
    /// What ran.
    pub(crate) name: &'static str,
    /// Everything checked out.
    pub(crate) ok: bool,
    /// Caller's set-up latency.
    pub(crate) setup: Option<Duration>,
    /// Protection and media counters, for the summary line.
    pub(crate) detail: String,
}

const CALLER_HZ: f64 = 1000.0;
const CALLEE_HZ: f64 = 1500.0;

fn ue(aor: &str, lab_proxy: std::net::SocketAddr, security: Security, tone: f64, expect: f64) -> UeConfig {
    UeConfig::loopback(aor, lab_proxy, security, tone, expect)
}

/// What the UEs trust for TLS to their P-CSCF: the lab CA.
type Trust = Arc<mediasec_sip::tls::ClientConfig>;

/// A lab PKI made now (a CA, a certificate for 127.0.0.1): the P-CSCFs' TLS server
/// configuration and the UEs' trust.
fn lab_tls() -> anyhow::Result<(Arc<mediasec_sip::tls::ServerConfig>, Trust)> {
    let pki = mediasec_sip::tls::LabPki::generate(&["127.0.0.1"])?;
    let server = mediasec_sip::tls::server_config(pki.cert_pem.as_bytes(), pki.key_pem.as_bytes(), None)?;
    Ok((server, mediasec_sip::tls::client_config(pki.ca_pem.as_bytes(), None)?))
}

/// A UE of `config` behind `pcscf`: over TLS to its TLS address with `tls`, else over UDP.
fn behind(mut config: UeConfig, pcscf: &Cscf, tls: Option<&Trust>) -> anyhow::Result<UeConfig> {
    config.outbound_proxy = match tls {
        Some(trust) => {
            config.tls = Some(Arc::clone(trust));
            pcscf.tls_addr().context("the P-CSCF does not listen on TLS")?
        }
        None => pcscf.local_addr(),
    };
    Ok(config)
}

/// Whether every SIP message `ues` received came over TLS (none over UDP/TCP: no key crossed
/// the UE–P-CSCF hop in clear), and the summary line's words for it.
fn over_tls(ues: &[&Ue]) -> (bool, String) {
    let received: Vec<_> = ues.iter().map(|ue| ue.sip_received()).collect();
    let clear = received.iter().map(|r| r.udp + r.tcp).sum::<u64>();
    let ok = clear == 0 && received.iter().all(|r| r.tls > 0);
    (ok, format!(", SIP UE–P-CSCF over TLS ({} msgs to the UEs, {clear} in clear)", received.iter().map(|r| r.tls).sum::<u64>()))
}

/// The KMS policy of the demo domain: everyone may call everyone in a.example, keys fork,
/// everyone may have high-security (ECCSI) and MIKEY-SAKKE keys — except that the
/// deferred-delivery caller gets no forking (a forking ticket cannot be delivered deferred).
const KMS_POLICY: &str = "[domain.\"a.example\"]\nmay_call = [\"?@a.example\"]\nforking = true\nhigh_security = true\nmikey_sakke = true\n[user.\"alice14@a.example\"]\nforking = false\n";

/// The voicemail server's NAF FQDN in the demo.
const VM_FQDN: &str = "vm.a.example";

/// alice14 calls carol14, who is not registered: the S-CSCF diverts to the voicemail server;
/// later carol14 fetches the message, resolves the ticket at the KMS and decrypts it.
async fn deferred_delivery(lab: &TwoDomains, kms: &Kms, talk: Duration) -> anyhow::Result<Scenario> {
    use mediasec_gba::kdf::{NafId, UaProtocolId};
    use mediasec_voicemail::owner::{MailboxClient, open_message};
    let zn = mediasec_kms::bsf_zn::BsfZn::for_protocol(mediasec_bsf::client::Endpoint::http(&kms.lab.bsf_url)?, kms.lab.zn_token(), VM_FQDN, UaProtocolId::HTTP_DIGEST);
    let config = mediasec_voicemail::deposit::DepositConfig {
        aor: "sip:vm@a.example".into(),
        domain: "a.example".into(),
        sip_bind: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        rtp_ip: [127, 0, 0, 1].into(),
        registrar: Some(lab.scscf_a.local_addr()),
        expires: 600,
        caps: mediasec_voicemail::deposit::Caps::default(),
        timers: mediasec_sip::core::Timers::default(),
    };
    let zn = Arc::new(mediasec_kms::zn::ZnCache::new(Arc::new(zn)));
    let server = mediasec_voicemail::service::Server::start(mediasec_voicemail::store::Store::open(&kms.dir.join("vm.redb"))?, config, std::net::SocketAddr::from(([127, 0, 0, 1], 0)), None, VM_FQDN, zn).await?;
    let alice = registered(ue("sip:alice14@a.example", lab.pcscf_a.local_addr(), Security::MikeyTicket, CALLER_HZ, CALLEE_HZ), Some(kms)).await?;
    let id = tokio::time::timeout(Duration::from_secs(10), alice.call("sip:carol14@a.example")).await.context("call timed out")??;
    tokio::time::sleep(talk).await;
    let a = alice.report(&id).await?.context("caller report")?;
    alice.hangup(&id).await?;
    // Later: carol14 bootstraps, downloads her message, resolves the ticket, decrypts.
    let uid = mediasec_kms::identity::KmsUid::parse("carol14@a.example")?;
    let boot = kms.lab.bootstrap(&uid).await?;
    let key = boot.ks_naf(&NafId::new(VM_FQDN, UaProtocolId::HTTP_DIGEST))?;
    let mailbox = MailboxClient::new(mediasec_bsf::client::Endpoint::http(&server.api_url())?, VM_FQDN, boot.btid.to_string(), &key.0);
    let first = mailbox.list().await?.first().map(|m| m.id).context("no voicemail message")?;
    let record = mailbox.fetch(first).await?;
    let (mut carol, client) = kms.lab.ue_of(&boot, uid.as_str())?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let out = open_message(&mut carol, &client, &record, now).await?;
    server.shutdown().await;
    let tone = out.tone_packets(CALLER_HZ);
    let from = out.initiator.as_ref().map_or("nobody", |u| u.as_str());
    let ok = a.deferred_delivery && out.failed == 0 && out.rtp >= 10 && tone + 1 >= usize::try_from(out.rtp).unwrap_or(usize::MAX) && from == "alice14@a.example";
    let detail = format!(
        "{}, {} packets stored encrypted (the server holds no key); carol decrypted {} RTP + {} RTCP later, {} failed, {tone} with alice's tone; caller by the ticket: {from}",
        a.protection,
        record.packets.len(),
        out.rtp,
        out.rtcp,
        out.failed
    );
    Ok(Scenario { name: "deferred delivery: alice → carol (offline) → voicemail; carol retrieves and decrypts later", ok, setup: a.setup, detail })
}

/// The lab's BSF + KMS with the MIKEY-TICKET users, in a temporary directory removed on drop.
struct Kms {
    lab: KmsLab,
    dir: std::path::PathBuf,
}

impl Drop for Kms {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Kms {
    async fn start(users: &[&str]) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("mediasec-demo-sip-kms-{}", std::process::id()));
        let lab = KmsLab::start_local(&dir, &[DomainSpec { domain: "a.example", policy: KMS_POLICY }], users).await?;
        Ok(Self { lab, dir })
    }
}

/// A registered UE; with MIKEY-TICKET or the high-security mode it first bootstraps with the
/// lab BSF (GBA); in the high-security mode it then fetches its ECCSI key from the KMS.
async fn registered(config: UeConfig, kms: Option<&Kms>) -> anyhow::Result<Ue> {
    let access = match (config.security, kms) {
        (Security::MikeyTicket | Security::HighSecurity | Security::MikeySakke, Some(k)) => {
            let (ue, client) = k.lab.ue(config.aor.trim_start_matches("sip:")).await?;
            let mut access = KmsAccess { ue, client, high_security: None };
            if config.security == Security::HighSecurity {
                access.high_security = Some(HighSecurity::provision(&access, &config.aor, Vec::new()).await?);
            }
            if config.security == Security::MikeySakke {
                access.high_security = Some(HighSecurity::provision_sakke(&access, &config.aor, Vec::new()).await?);
            }
            Some(access)
        }
        _ => None,
    };
    let ue = Ue::start_with_kms(config, access).await?;
    let r = tokio::time::timeout(Duration::from_secs(5), ue.register(600)).await.context("REGISTER timed out")??;
    anyhow::ensure!(r.status == 200, "REGISTER answered {}", r.status);
    Ok(ue)
}

/// How a scenario's call goes.
#[derive(Clone, Copy, Default)]
struct Shape {
    /// Contacts registered for the callee beyond the first, the later ones answering later.
    extra_forks: usize,
    /// The callee sends early media (18x with the answer) before its 200.
    early: bool,
    /// The caller re-keys with a re-INVITE after `talk` and media runs `talk` again.
    rekey: bool,
    /// The caller sends an offerless INVITE (RFC 3261 §13.2.1): the callee offers in its 200,
    /// the caller answers in the ACK — with MIKEY the callee is then the MIKEY Initiator.
    offerless: bool,
}

/// One call alice@a → bob@b with `security` at both ends, shaped by `shape`; media runs for
/// `talk`. Each scenario uses its own users (`n`), so no registration of an earlier one is
/// forked to. SDES and plain calls go from a.example to b.example; MIKEY-TICKET calls stay in
/// a.example (one KMS). SDES calls run the UE–P-CSCF hops over TLS trusting `tls`.
#[allow(clippy::too_many_arguments)]
async fn one_call(lab: &TwoDomains, kms: Option<&Kms>, tls: &Trust, n: usize, name: &'static str, security: Security, shape: Shape, talk: Duration) -> anyhow::Result<Scenario> {
    let Shape { extra_forks, early, rekey, offerless } = shape;
    let forks = 1 + extra_forks;
    let tls = matches!(security, Security::Sdes { .. }).then_some(tls);
    let alice = registered(behind(ue(&format!("sip:alice{n}@a.example"), lab.pcscf_a.local_addr(), security, CALLER_HZ, CALLEE_HZ), &lab.pcscf_a, tls)?, kms).await?;
    let (bob, proxy) = match security {
        Security::MikeyTicket | Security::HighSecurity | Security::MikeySakke => (format!("sip:bob{n}@a.example"), &lab.pcscf_a),
        _ => (format!("sip:bob{n}@b.example"), &lab.pcscf_b),
    };
    let mut bobs = Vec::new();
    for i in 0..forks {
        let mut c = behind(ue(&bob, proxy.local_addr(), security, CALLEE_HZ, CALLER_HZ), proxy, tls)?;
        c.answering = Answering { auto: true, delay: Duration::from_millis(if early { 400 } else { 300 * i as u64 }), early_media: early };
        bobs.push(registered(c, kms).await?);
    }
    let placing = async { if offerless { alice.call_without_offer(&bob).await } else { alice.call(&bob).await } };
    let id = tokio::time::timeout(Duration::from_secs(10), placing).await.context("call timed out")??;
    tokio::time::sleep(talk).await;
    let before_rekey = if rekey {
        let before = alice.report(&id).await?.context("caller report")?;
        tokio::time::timeout(Duration::from_secs(10), alice.reinvite(&id)).await.context("re-INVITE timed out")??;
        tokio::time::sleep(talk).await;
        Some(before)
    } else {
        None
    };
    let a = alice.report(&id).await?.context("caller report")?;
    let mut answered = None;
    let mut offer_key_seen = 0;
    for b in &bobs {
        for r in b.reports().await? {
            offer_key_seen += usize::from(r.peer_key.is_some() && r.peer_key == a.own_key);
            if r.state == CallState::Established {
                answered = Some(r);
            }
        }
    }
    let b = answered.context("no callee established the call")?;
    alice.hangup(&id).await?;
    let expected = match security {
        Security::Off => "rtp",
        Security::Sdes { .. } => "srtp AEAD_AES_256_GCM",
        Security::MikeyTicket | Security::HighSecurity | Security::MikeySakke => "srtp AES_CM_128_HMAC_SHA1_80",
    };
    let mut ok = a.protection == expected && b.protection == expected && a.media.verified >= 10 && b.media.verified >= 10;
    // Refused packets are expected only where the protocol makes them: a fork that lost sends
    // under a key the caller never accepted, and at a re-key the answerer's first packets under
    // its new key can beat the answer to the offerer (RFC 4568 §7.1.4). They are shown.
    let tolerated = if forks > 1 || rekey { 5 } else { 0 };
    ok &= a.media.refused + b.media.refused <= tolerated;
    if early {
        ok &= a.early_verified >= 5;
    }
    let mut detail = format!("{}, verified {}↔{}", a.protection, a.media.verified, b.media.verified);
    if a.media.refused + b.media.refused > 0 {
        detail.push_str(&format!(", refused {}↔{}", a.media.refused, b.media.refused));
    }
    if early {
        detail.push_str(&format!(", {} early", a.early_verified));
    }
    if let Some(before) = before_rekey {
        // New keys both ways, taken up by both ends, and media went on under them.
        let fresh = a.own_key != before.own_key && a.peer_key != before.peer_key;
        ok &= a.rekeys == 1 && b.rekeys == 1 && fresh && a.media.verified >= before.media.verified + 10;
        detail.push_str(&format!(", re-INVITE: {}, verified {} after", if fresh { "new keys both ways" } else { "keys NOT renewed" }, a.media.verified.saturating_sub(before.media.verified)));
    }
    if tls.is_some() {
        let (on_tls, words) = over_tls(&std::iter::once(&alice).chain(&bobs).collect::<Vec<_>>());
        ok &= on_tls;
        detail.push_str(&words);
    }
    if forks > 1 {
        detail.push_str(&format!(", {offer_key_seen}/{forks} forks hold the caller's key"));
        ok &= match security {
            // TS 33.328 §5.4.2: every SDES fork sees the offer key.
            Security::Sdes { .. } => offer_key_seen == forks,
            // Key forking: only the answering fork holds it.
            Security::MikeyTicket | Security::HighSecurity | Security::MikeySakke => offer_key_seen == 1,
            Security::Off => true,
        };
    }
    if offerless {
        // The offer (with MIKEY: the callee's TRANSFER_INIT / DH_INIT / I_MESSAGE) came in the
        // 200 and both ends report the same one; each holds the other's key.
        let same_offer = a.offer_mikey == b.offer_mikey && (a.offer_mikey.is_some() || !security.is_mikey());
        ok &= same_offer && a.peer_key == b.own_key && b.peer_key == a.own_key;
        detail.push_str(if same_offer { ", offer made by the callee in its 200, answered in the ACK" } else { ", the callee's offer NOT seen at both ends" });
    }
    if security == Security::HighSecurity {
        let (held, words) = kms_cannot_release(kms, &a, &format!("alice{n}@a.example"))?;
        ok &= held && a.peer_key == b.own_key && b.peer_key == a.own_key;
        detail.push_str(&words);
    }
    if security == Security::MikeySakke {
        let (released, words) = kms_releases(kms, "a.example", &a, &b, &format!("alice{n}@a.example")).await?;
        ok &= released && a.peer_key == b.own_key && b.peer_key == a.own_key;
        detail.push_str(&words);
    }
    Ok(Scenario { name, ok, setup: a.setup, detail })
}

/// The high-security property at the KMS: its LI key release, under a valid warrant for the
/// caller, refuses the call's DH_INIT as a high-security call (there is no ticket; the DH
/// secret never reached the KMS). Whether it held, and the summary line's words.
fn kms_cannot_release(kms: Option<&Kms>, caller: &CallReport, caller_uid: &str) -> anyhow::Result<(bool, String)> {
    let kms = kms.context("the high-security mode needs the KMS")?;
    let dh_init = caller.offer_mikey.as_deref().context("no DH_INIT in the offer")?;
    let service = &kms.lab.domain("a.example")?.service;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let target = mediasec_kms::identity::KmsUid::parse(caller_uid)?;
    let warrant = mediasec_kms::li::Warrant { id: "demo".into(), target, not_before: now - 60, not_after: now + 60 };
    Ok(match service.kms().li_release(&warrant, mediasec_kms::li::LiTransferInit::read(dh_init), None, now, None) {
        Err(mediasec_kms::KmsError::LiRefused(mediasec_kms::li::Refusal::HighSecurityCall)) => (true, ", KMS LI key release: refused (no ticket, no key)".into()),
        Ok(_) => (false, ", KMS LI key release: KEYS RELEASED".into()),
        Err(e) => (false, format!(", KMS LI key release: unexpected answer ({e})")),
    })
}

/// LI without a man in the middle (MIKEY-SAKKE): under a valid warrant for a party of the
/// call (`target_uid`), the KMS of `domain` releases the keys of the call from its I_MESSAGE
/// alone; they must be the master keys the caller and the callee send with. Whether they
/// were, and the summary line's words.
async fn kms_releases(kms: Option<&Kms>, domain: &str, caller: &CallReport, callee: &CallReport, target_uid: &str) -> anyhow::Result<(bool, String)> {
    let kms = kms.context("MIKEY-SAKKE needs the KMS")?;
    let i_message = caller.offer_mikey.as_deref().context("no I_MESSAGE in the offer")?;
    let service = &kms.lab.domain(domain)?.service;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let target = mediasec_kms::identity::KmsUid::parse(target_uid)?;
    let warrant = mediasec_kms::li::Warrant { id: "demo".into(), target, not_before: now - 60, not_after: now + 60 };
    Ok(match service.li_release(&warrant, i_message, None, now).await {
        Ok(r) => {
            let same = Some(mediasec_sdp::fingerprint(&r.media.initiator_stream.master_key)) == caller.own_key && Some(mediasec_sdp::fingerprint(&r.media.responder_stream.master_key)) == callee.own_key;
            (same, if same { ", KMS LI key release under a warrant: the call's keys, both ways".into() } else { ", KMS LI key release: KEYS DIFFER from the call's".into() })
        }
        Err(e) => (false, format!(", KMS LI key release refused ({e})")),
    })
}

/// An IMS-AGW on loopback for P-CSCF a, media ports from a range of its own.
async fn agw() -> anyhow::Result<mediasec_agw::Agw> {
    let base = 20_000 + 2 * (rand::random::<u16>() % 10_000);
    let local: std::net::IpAddr = [127, 0, 0, 1].into();
    let config = mediasec_agw::ServerConfig {
        listen_ng: (local, 0).into(),
        interface: local,
        port_min: base,
        port_max: base + 99,
        metrics: None,
        // Two shards: the demo's calls exercise the routing by call-id.
        media_threads: 2,
        control: mediasec_agw::Config { address: local, sdes: SdesPolicy::default(), timeout: Duration::from_secs(30) },
    };
    Ok(mediasec_agw::Agw::start(config).await?)
}

/// One leg of an AGW call (`A` access, `B` core) by an ng `query`: its protection, RTP packets
/// received, and packets dropped for failed authentication.
async fn agw_leg(ng: std::net::SocketAddr, call_id: String, leg: &'static str) -> anyhow::Result<(String, i64, i64)> {
    use mediasec_agw::bencode::Value;
    tokio::task::spawn_blocking(move || {
        let socket = std::net::UdpSocket::bind(("127.0.0.1", 0))?;
        socket.set_read_timeout(Some(Duration::from_secs(2)))?;
        let q = mediasec_agw::ng::request(&socket, ng, &Value::dict([("command", Value::str("query")), ("call-id", Value::str(call_id.clone()))]))?;
        let l = q.get("streams").and_then(Value::as_list).and_then(|s| s.first()).and_then(|s| s.get(leg)).with_context(|| {
            let reason = q.get("error-reason").and_then(Value::as_str).unwrap_or_default();
            format!("the AGW's query of call {call_id} has no leg {leg} ({reason})")
        })?;
        let protection = l.get("protection").and_then(Value::as_str).unwrap_or_default().to_owned();
        let received = l.get("received").and_then(|r| r.get("RTP")).and_then(|r| r.get("packets")).and_then(Value::as_int).unwrap_or(0);
        let auth_failed = l.get("drops").and_then(|d| d.get("auth_failed")).and_then(Value::as_int).unwrap_or(0);
        Ok((protection, received, auth_failed))
    })
    .await?
}

/// alice@a (SDES, `a=3ge2ae:requested`) and bob@b (plain RTP, answering as `answering`),
/// registered through the lab over TLS trusting `tls`, and bob's URI.
async fn e2ae_ues(lab: &TwoDomains, tls: &Trust, n: usize, answering: Option<Answering>) -> anyhow::Result<(Ue, Ue, String)> {
    let mut caller = behind(ue(&format!("sip:alice{n}@a.example"), lab.pcscf_a.local_addr(), Security::Sdes { fallback: false }, CALLER_HZ, CALLEE_HZ), &lab.pcscf_a, Some(tls))?;
    caller.e2ae = true;
    let alice = registered(caller, None).await?;
    let target = format!("sip:bob{n}@b.example");
    let mut callee = behind(ue(&target, lab.pcscf_b.local_addr(), Security::Off, CALLEE_HZ, CALLER_HZ), &lab.pcscf_b, Some(tls))?;
    if let Some(answering) = answering {
        callee.answering = answering;
    }
    let bob = registered(callee, None).await?;
    Ok((alice, bob, target))
}

/// bob's report of his only call.
async fn callee_report(bob: &Ue) -> anyhow::Result<CallReport> {
    bob.reports().await?.into_iter().next().context("bob has no call")
}

/// What every e2ae scenario checks once media ran: alice SRTP to the AGW with
/// `a=3ge2ae:applied`, bob plain RTP, media by content both ways (bob refusing nothing); the
/// AGW call `agw_call` (TS 33.328 §7.2.1) with its `access` leg SRTP and its other leg plain,
/// both relaying, no authentication failure on the access leg; and P-CSCF a (the IMS-ALG)
/// having put `applied` offers and answers through the AGW since `alg` was read, with no ng
/// failure and no SDES refusal. Returns the verdict and the summary line's figures.
async fn e2ae_checks(lab: &TwoDomains, agw: &mediasec_agw::Agw, agw_call: String, access: &'static str, alg: &Stats, applied: u64, (a, b): (&CallReport, &CallReport)) -> anyhow::Result<(bool, String)> {
    let core = if access == "A" { "B" } else { "A" };
    let (access_protection, access_rx, access_failed) = agw_leg(agw.ng_addr(), agw_call.clone(), access).await?;
    let (core_protection, core_rx, _) = agw_leg(agw.ng_addr(), agw_call, core).await?;
    let now = lab.pcscf_a.stats();
    let (alg_applied, alg_failures, alg_refused) = (now.e2ae_applied.saturating_sub(alg.e2ae_applied), now.agw_failures.saturating_sub(alg.agw_failures), now.sdes_refused.saturating_sub(alg.sdes_refused));
    let mut ok = a.e2ae_applied && !b.e2ae_applied && a.protection == "srtp AEAD_AES_256_GCM" && b.protection == "rtp";
    ok &= a.media.verified >= 10 && b.media.verified >= 10 && b.media.refused == 0 && access_failed == 0;
    ok &= access_protection == "srtp" && core_protection == "plain" && access_rx >= 10 && core_rx >= 10;
    ok &= alg_applied == applied && alg_failures == 0 && alg_refused == 0;
    let detail = format!(
        "UE {} to the AGW (a=3ge2ae:applied), core {}; AGW legs {access_protection} {access_rx} pkts / {core_protection} {core_rx} pkts, {access_failed} auth_failed; ALG e2ae_applied {alg_applied}/{applied}, agw_failures {alg_failures}; verified {}↔{}",
        a.protection, b.protection, a.media.verified, b.media.verified
    );
    Ok((ok, detail))
}

/// The e2ae call (TS 33.328 §7.2.1): alice@a (SDES, `a=3ge2ae:requested`) → bob@b (plain
/// RTP) through P-CSCF a as IMS-ALG and the IMS-AGW. Re-keyed: alice then renews her keys
/// with an UPDATE (RFC 3311), which the ALG runs through the AGW as a re-offer; the AGW must
/// drop nothing for it (its new keys take effect at the answer, the old receive key is
/// retired, not dropped), and media must go on under the new keys.
async fn e2ae_call(lab: &TwoDomains, agw: &mediasec_agw::Agw, tls: &Trust, n: usize, talk: Duration, rekey: bool) -> anyhow::Result<Scenario> {
    let alg = lab.pcscf_a.stats();
    let (alice, bob, target) = e2ae_ues(lab, tls, n, None).await?;
    let id = tokio::time::timeout(Duration::from_secs(10), alice.call(&target)).await.context("call timed out")??;
    tokio::time::sleep(talk).await;
    let before = if rekey {
        let before = alice.report(&id).await?.context("caller report")?;
        tokio::time::timeout(Duration::from_secs(10), alice.update(&id)).await.context("UPDATE timed out")??;
        tokio::time::sleep(talk).await;
        Some(before)
    } else {
        None
    };
    let a = alice.report(&id).await?.context("caller report")?;
    let b = bob.reports().await?.into_iter().find(|r| r.state == CallState::Established).context("bob did not answer")?;
    // Offer and answer, and the UPDATE's offer and answer.
    let applied = if rekey { 4 } else { 2 };
    let (mut ok, mut detail) = e2ae_checks(lab, agw, format!("{id};orig"), "A", &alg, applied, (&a, &b)).await?;
    let (on_tls, words) = over_tls(&[&alice, &bob]);
    ok &= on_tls;
    detail.push_str(&words);
    alice.hangup(&id).await?;
    match before {
        None => ok &= a.media.refused == 0,
        Some(before) => {
            // The AGW sends under its new key from the answer on; the UE takes it up when the
            // 2xx reaches it, so a packet or two just before may be refused (RFC 4568 race).
            let fresh = a.own_key != before.own_key && a.peer_key != before.peer_key;
            ok &= fresh && a.media.refused <= 2 && a.media.verified >= before.media.verified + 10;
            detail.push_str(&format!(
                ", UPDATE: {}, verified {} after, UE refused {}",
                if fresh { "new keys both ways" } else { "keys NOT renewed" },
                a.media.verified.saturating_sub(before.media.verified),
                a.media.refused
            ));
        }
    }
    let name = if rekey { "re-keyed e2ae call (UPDATE via the AGW)" } else { "e2ae call (IMS-ALG + AGW)" };
    Ok(Scenario { name, ok, setup: a.setup, detail })
}

/// The TS 24.229 preconditions flow in an e2ae call (RFC 3262, RFC 3311): alice (e2ae,
/// `Supported: 100rel`) calls bob (plain RTP), who answers with early media in a reliable 183
/// (`Require: 100rel`, `RSeq`), put through the AGW by the ALG; alice PRACKs, and once early
/// media is verified she re-keys with an UPDATE in the early dialog, a re-offer on the same
/// AGW call. Before bob's 200 both UEs must still be early, with new keys both ways and media
/// verified under them; the 200 must keep them, and media must go on after it.
async fn e2ae_preconditions_call(lab: &TwoDomains, agw: &mediasec_agw::Agw, tls: &Trust, n: usize, talk: Duration) -> anyhow::Result<Scenario> {
    // bob rings long enough for early media, the UPDATE and more early media before his 200.
    let answering = Answering { auto: true, delay: Duration::from_millis(1300), early_media: true };
    let alg = lab.pcscf_a.stats();
    let (alice, bob, target) = e2ae_ues(lab, tls, n, Some(answering)).await?;
    let alice = Arc::new(alice);
    let calling = tokio::spawn({
        let alice = Arc::clone(&alice);
        async move { alice.call(&target).await }
    });
    let early = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Some(r) = alice.reports().await?.into_iter().find(|r| r.state == CallState::Early) {
                return anyhow::Ok(r);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .context("no early dialog from a reliable 183")??;
    let id = early.call_id;
    tokio::time::sleep(talk / 2).await;
    let before = alice.report(&id).await?.context("caller report")?;
    tokio::time::timeout(Duration::from_secs(5), alice.update(&id)).await.context("early UPDATE timed out")??;
    tokio::time::sleep(talk / 2).await;
    let (a1, b1) = (alice.report(&id).await?.context("caller report")?, callee_report(&bob).await?);
    let established = tokio::time::timeout(Duration::from_secs(10), calling).await.context("bob's 200 timed out")???;
    anyhow::ensure!(established == id, "the call established is {established}, not the early dialog {id}");
    tokio::time::sleep(talk).await;
    let (a, b) = (alice.report(&id).await?.context("caller report")?, callee_report(&bob).await?);
    // Offer and answer (in the reliable 183), the UPDATE's offer and answer.
    let (mut ok, mut detail) = e2ae_checks(lab, agw, format!("{id};orig"), "A", &alg, 4, (&a, &b)).await?;
    let (on_tls, words) = over_tls(&[&alice, &bob]);
    ok &= on_tls;
    detail.push_str(&words);
    alice.hangup(&id).await?;
    let early_then = a1.state == CallState::Early && b1.state == CallState::Early;
    let fresh = a1.rekeys == 1 && a1.own_key != before.own_key && a1.peer_key != before.peer_key;
    ok &= early_then && fresh && before.media.verified >= 10 && a1.media.verified >= before.media.verified + 10 && b1.rekeys == 1;
    // The 200 carries no SDP: the UPDATE's keys stay; media verified before and after it.
    ok &= a.state == CallState::Established && b.state == CallState::Established && a.rekeys == 1 && a.own_key == a1.own_key && a.peer_key == a1.peer_key;
    ok &= a.early_verified >= a1.media.verified && a.media.verified >= a.early_verified + 10 && b.media.verified >= b1.media.verified + 10 && a.media.refused <= 2;
    detail.push_str(&format!(
        "; before the 200: {} early, early UPDATE {}, {} verified after it{}; {} verified after the 200, UE refused {}",
        before.media.verified,
        if fresh { "new keys both ways" } else { "keys NOT renewed" },
        a1.media.verified.saturating_sub(before.media.verified),
        if early_then { "" } else { " (NOT still early)" },
        a.media.verified.saturating_sub(a.early_verified),
        a.media.refused
    ));
    Ok(Scenario { name: "e2ae call with preconditions (reliable 183, PRACK, early UPDATE via the AGW)", ok, setup: a.setup, detail })
}

/// Delayed offer without 100rel in an e2ae call (RFC 3261 §13.2.1, §13.3.1.4): alice (e2ae)
/// sends an offerless INVITE; bob (plain RTP, no early media, so no reliable 18x) offers in
/// his 200, which the ALG secures towards alice on a new AGW call (`<Call-ID>;d;0`, its access
/// leg `B`); alice's SDES answer in the ACK goes through the AGW and reaches bob plain. No
/// media before the ACK. The ALG numbers that AGW call by its count of ng requests, so the
/// scenario runs on a lab of its own, where it is the first: `<Call-ID>;d;0`.
async fn e2ae_offerless_call(agw: &mediasec_agw::Agw, (pcscf_tls, tls): (&Arc<mediasec_sip::tls::ServerConfig>, &Trust), n: usize, talk: Duration) -> anyhow::Result<Scenario> {
    let lab = &TwoDomains::start_config(LabConfig { agw_ng_a: Some(agw.ng_addr()), pcscf_tls: Some(Arc::clone(pcscf_tls)), ..LabConfig::default() }).await?;
    let answering = Answering { auto: true, delay: Duration::from_millis(200), early_media: false };
    let alg = lab.pcscf_a.stats();
    let (alice, bob, target) = e2ae_ues(lab, tls, n, Some(answering)).await?;
    let id = tokio::time::timeout(Duration::from_secs(10), alice.call_without_offer(&target)).await.context("call timed out")??;
    tokio::time::sleep(talk).await;
    let (a, b) = (alice.report(&id).await?.context("caller report")?, callee_report(&bob).await?);
    // bob's offer in the 200, alice's answer in the ACK.
    let (mut ok, mut detail) = e2ae_checks(lab, agw, format!("{id};d;0"), "B", &alg, 2, (&a, &b)).await?;
    let (on_tls, words) = over_tls(&[&alice, &bob]);
    ok &= on_tls;
    detail.push_str(&words);
    alice.hangup(&id).await?;
    ok &= a.state == CallState::Established && b.state == CallState::Established && a.early_verified == 0 && b.early_verified == 0 && a.media.refused == 0;
    detail.push_str(&format!("; offer from bob in the 200, answer in the ACK, {} early", a.early_verified + b.early_verified));
    Ok(Scenario { name: "offerless e2ae call (offer in the 200, answer in the ACK)", ok, setup: a.setup, detail })
}

/// MIKEY-SAKKE across two communities (high-security.md §10.9): KMS a and KMS b (a BSF and
/// Zk over mutual TLS of their own) learn each other's KMS certificate over Zk; erin17@a.example
/// (P-CSCF a) calls carol17@b.example (P-CSCF b) and encapsulates under KMS b's Z, naming both
/// KMSs. Media verified both ways; under a warrant for carol KMS b releases the call's keys
/// (it holds carol's RSK), while KMS a refuses for erin: not its community's z.
async fn cross_community_sakke(lab: &TwoDomains, talk: Duration) -> anyhow::Result<Scenario> {
    let dir = std::env::temp_dir().join(format!("mediasec-demo-sip-communities-{}", std::process::id()));
    let domains = [
        DomainSpec { domain: "a.example", policy: "[domain.\"a.example\"]\nmikey_sakke = true\n" },
        DomainSpec { domain: "b.example", policy: "[domain.\"b.example\"]\nmikey_sakke = true\n" },
    ];
    let kms = Kms { lab: KmsLab::start(&dir, &domains, &["erin17@a.example", "carol17@b.example"], Some(Duration::from_secs(5))).await?, dir };
    for d in &kms.lab.domains {
        for (peer, learned) in d.service.refresh_communities().await {
            learned.with_context(|| format!("KMS {} learning the certificate of {peer}", d.domain))?;
        }
    }
    let sakke = Security::MikeySakke;
    let erin = registered(ue("sip:erin17@a.example", lab.pcscf_a.local_addr(), sakke, CALLER_HZ, CALLEE_HZ), Some(&kms)).await?;
    let carol = registered(ue("sip:carol17@b.example", lab.pcscf_b.local_addr(), sakke, CALLEE_HZ, CALLER_HZ), Some(&kms)).await?;
    let id = tokio::time::timeout(Duration::from_secs(10), erin.call("sip:carol17@b.example")).await.context("call timed out")??;
    tokio::time::sleep(talk).await;
    let (a, c) = (erin.report(&id).await?.context("caller report")?, callee_report(&carol).await?);
    erin.hangup(&id).await?;
    let expected = "srtp AES_CM_128_HMAC_SHA1_80";
    let kmss = a.offer_mikey.as_deref().map(mediasec_mikey::mikey_sakke::kms_uris).transpose()?;
    let named = kmss == Some((Some("kms.a.example".into()), Some("kms.b.example".into())));
    let mut ok = a.protection == expected && c.protection == expected && a.media.verified >= 10 && c.media.verified >= 10 && a.media.refused + c.media.refused == 0;
    ok &= named && a.peer_key == c.own_key && c.peer_key == a.own_key;
    let mut detail = format!("{}, verified {}↔{}, I_MESSAGE {}", a.protection, a.media.verified, c.media.verified, if named { "names KMS a (signer) and KMS b (Z)" } else { "does NOT name both KMSs" });
    let (released, words) = kms_releases(Some(&kms), "b.example", &a, &c, "carol17@b.example").await?;
    ok &= released;
    detail.push_str(&words.replace("KMS LI", "callee's KMS LI"));
    let i_message = a.offer_mikey.as_deref().context("no I_MESSAGE in the offer")?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let warrant = mediasec_kms::li::Warrant { id: "demo-a".into(), target: mediasec_kms::identity::KmsUid::parse("erin17@a.example")?, not_before: now - 60, not_after: now + 60 };
    match kms.lab.domain("a.example")?.service.li_release(&warrant, i_message, None, now).await {
        Err(mediasec_kms::KmsError::LiRefused(mediasec_kms::li::Refusal::OtherCommunity(k))) => detail.push_str(&format!("; caller's KMS: refused, encapsulated under {k}")),
        Ok(_) => {
            ok = false;
            detail.push_str("; caller's KMS: KEYS RELEASED");
        }
        Err(e) => {
            ok = false;
            detail.push_str(&format!("; caller's KMS: unexpected answer ({e})"));
        }
    }
    Ok(Scenario { name: "MIKEY-SAKKE across two communities (KMS certificates learned over Zk)", ok, setup: a.setup, detail })
}

/// Runs the SIP scenarios on a fresh lab.
pub(crate) async fn run() -> anyhow::Result<Vec<Scenario>> {
    let agw = agw().await?;
    let (pcscf_tls, trust) = lab_tls()?;
    let lab = TwoDomains::start_config(LabConfig {
        agw_ng_a: Some(agw.ng_addr()),
        pcscf_tls: Some(Arc::clone(&pcscf_tls)),
        voicemail_a: Some("sip:vm@a.example".into()),
        ..LabConfig::default()
    })
    .await?;
    let users = ["alice5@a.example", "bob5@a.example", "alice6@a.example", "bob6@a.example", "alice9@a.example", "bob9@a.example", "alice13@a.example", "bob13@a.example", "alice14@a.example", "carol14@a.example", "alice15@a.example", "bob15@a.example", "alice16@a.example", "bob16@a.example"];
    let kms = Kms::start(&users).await?;
    let talk = Duration::from_millis(600);
    let sdes = Security::Sdes { fallback: false };
    let ticket = Security::MikeyTicket;
    let plain = Shape::default();
    let forked = Shape { extra_forks: 1, ..plain };
    let rekeyed = Shape { rekey: true, ..plain };
    Ok(vec![
        one_call(&lab, None, &trust, 1, "call, no key management (RTP)", Security::Off, plain, talk).await?,
        one_call(&lab, None, &trust, 2, "call, SDES e2e (SRTP), SIP over TLS", sdes, plain, talk).await?,
        one_call(&lab, None, &trust, 3, "forked call, SDES e2e, 2 contacts", sdes, forked, talk).await?,
        one_call(&lab, None, &trust, 4, "early media, SDES e2e", sdes, Shape { early: true, ..plain }, talk).await?,
        one_call(&lab, None, &trust, 8, "re-keyed call, SDES e2e", sdes, rekeyed, talk).await?,
        one_call(&lab, Some(&kms), &trust, 5, "call, MIKEY-TICKET e2e (KMS)", ticket, plain, talk).await?,
        one_call(&lab, Some(&kms), &trust, 6, "forked call, MIKEY-TICKET, 2 contacts", ticket, forked, talk).await?,
        one_call(&lab, Some(&kms), &trust, 9, "re-keyed call, MIKEY-TICKET", ticket, rekeyed, talk).await?,
        one_call(&lab, Some(&kms), &trust, 16, "offerless call, MIKEY-TICKET (the callee requests the ticket)", ticket, Shape { offerless: true, ..plain }, talk).await?,
        one_call(&lab, Some(&kms), &trust, 13, "high-security call (ECCSI-signed MIKEY-DH): media verified both ways; KMS cannot derive the keys", Security::HighSecurity, plain, talk).await?,
        one_call(&lab, Some(&kms), &trust, 15, "MIKEY-SAKKE call (TS 33.180-style identity-based keys): media verified both ways; the KMS releases its keys under a warrant", Security::MikeySakke, plain, talk).await?,
        cross_community_sakke(&lab, talk).await?,
        e2ae_call(&lab, &agw, &trust, 7, talk, false).await?,
        e2ae_call(&lab, &agw, &trust, 10, talk, true).await?,
        e2ae_preconditions_call(&lab, &agw, &trust, 11, talk).await?,
        e2ae_offerless_call(&agw, (&pcscf_tls, &trust), 12, talk).await?,
        deferred_delivery(&lab, &kms, talk).await?,
    ])
}

/// Median set-up latency of `calls` calls per key-management mode through the lab.
pub(crate) async fn setup_latency(calls: usize) -> anyhow::Result<Vec<(&'static str, Duration, Duration)>> {
    let lab = TwoDomains::start(HashMap::new(), None).await?;
    let kms = Kms::start(&["alice2@a.example", "bob2@a.example", "alice3@a.example", "bob3@a.example"]).await?;
    let mut out = Vec::new();
    let modes = [
        ("none (RTP)", Security::Off),
        ("SDES e2e", Security::Sdes { fallback: false }),
        ("MIKEY-TICKET e2e", Security::MikeyTicket),
        ("high-security (MIKEY-DH)", Security::HighSecurity),
    ];
    for (n, (name, security)) in modes.into_iter().enumerate() {
        // Every mode calls within a.example, so only the key management differs.
        let p = lab.pcscf_a.local_addr();
        let alice = registered(ue(&format!("sip:alice{n}@a.example"), p, security, CALLER_HZ, CALLEE_HZ), Some(&kms)).await?;
        let target = format!("sip:bob{n}@a.example");
        let bob = registered(ue(&target, p, security, CALLEE_HZ, CALLER_HZ), Some(&kms)).await?;
        let mut times = Vec::new();
        for _ in 0..calls {
            let id = tokio::time::timeout(Duration::from_secs(10), alice.call(&target)).await.context("call timed out")??;
            times.extend(alice.report(&id).await?.and_then(|r| r.setup));
            alice.hangup(&id).await?;
        }
        drop(bob);
        times.sort();
        let median = times.get(times.len() / 2).copied().context("no call")?;
        let p90 = times.get(times.len() * 9 / 10).copied().unwrap_or(median);
        out.push((name, median, p90));
    }
    Ok(out)
}
