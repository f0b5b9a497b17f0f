//! The SIP call scenarios of the demo: the two-domain lab (P-CSCF and S-CSCF per domain) on
//! loopback, UEs registered through it, calls placed with each key-management mode, media
//! checked by content (each UE sends its own tone and counts the peer's). MIKEY-TICKET calls
//! use a real BSF and KMS (the `mediasec-kms` lab: UEs bootstrap over Ub, tickets over Ua),
//! same domain. Also measures the call set-up time per mode (dial → 2xx processed at
//! the caller; for MIKEY-TICKET this includes Ticket Request and Ticket Resolve over HTTP).

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use mediasec_cscf::lab::TwoDomains;
use mediasec_kms::lab::{DomainSpec, Lab as KmsLab};
use mediasec_sdp::SdesPolicy;
use mediasec_sip::core::Timers;
use mediasec_ua::ticket::KmsAccess;
use mediasec_ua::{Answering, CallState, Security, Ue, UeConfig};

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
    UeConfig {
        aor: aor.into(),
        sip_bind: ([127, 0, 0, 1], 0).into(),
        rtp_ip: [127, 0, 0, 1].into(),
        outbound_proxy: lab_proxy,
        security,
        sdes: SdesPolicy::default(),
        answering: Answering { auto: true, delay: Duration::ZERO, early_media: false },
        tone_hz: tone,
        expect_hz: Some(expect),
        initial_seq: 1000,
        anonymous: false,
        e2ae: false,
        timers: Timers::default(),
    }
}

/// The KMS policy of the demo domain: everyone may call everyone in a.example, keys fork.
const KMS_POLICY: &str = "[domain.\"a.example\"]\nmay_call = [\"?@a.example\"]\nforking = true\n";

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

/// A registered UE; with MIKEY-TICKET it first bootstraps with the lab BSF (GBA).
async fn registered(config: UeConfig, kms: Option<&Kms>) -> anyhow::Result<Ue> {
    let access = match (config.security, kms) {
        (Security::MikeyTicket, Some(k)) => {
            let (ue, client) = k.lab.ue(config.aor.trim_start_matches("sip:")).await?;
            Some(KmsAccess { ue, client })
        }
        _ => None,
    };
    let ue = Ue::start_with_kms(config, access).await?;
    let r = tokio::time::timeout(Duration::from_secs(5), ue.register(600)).await.context("REGISTER timed out")??;
    anyhow::ensure!(r.status == 200, "REGISTER answered {}", r.status);
    Ok(ue)
}

/// One call alice@a → bob@b with `security` at both ends (`forks` contacts registered for bob,
/// the later ones answering later); media runs for `talk`.
/// Each scenario uses its own users (`n`), so no registration of an earlier one is forked to.
/// SDES and plain calls go from a.example to b.example; MIKEY-TICKET calls stay in a.example
/// (one KMS).
#[allow(clippy::too_many_arguments)]
async fn one_call(lab: &TwoDomains, kms: Option<&Kms>, n: usize, name: &'static str, security: Security, forks: usize, early: bool, talk: Duration) -> anyhow::Result<Scenario> {
    let alice = registered(ue(&format!("sip:alice{n}@a.example"), lab.pcscf_a.local_addr(), security, CALLER_HZ, CALLEE_HZ), kms).await?;
    let (bob, proxy) = match security {
        Security::MikeyTicket => (format!("sip:bob{n}@a.example"), lab.pcscf_a.local_addr()),
        _ => (format!("sip:bob{n}@b.example"), lab.pcscf_b.local_addr()),
    };
    let mut bobs = Vec::new();
    for i in 0..forks {
        let mut c = ue(&bob, proxy, security, CALLEE_HZ, CALLER_HZ);
        c.answering = Answering { auto: true, delay: Duration::from_millis(if early { 400 } else { 300 * i as u64 }), early_media: early };
        bobs.push(registered(c, kms).await?);
    }
    let id = tokio::time::timeout(Duration::from_secs(10), alice.call(&bob)).await.context("call timed out")??;
    tokio::time::sleep(talk).await;
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
        Security::MikeyTicket => "srtp AES_CM_128_HMAC_SHA1_80",
    };
    let mut ok = a.protection == expected && b.protection == expected && a.media.verified >= 10 && b.media.verified >= 10;
    ok &= a.media.refused == 0 && b.media.refused == 0;
    if early {
        ok &= a.early_verified >= 5;
    }
    let mut detail = format!("{}, verified {}↔{}", a.protection, a.media.verified, b.media.verified);
    if early {
        detail.push_str(&format!(", {} early", a.early_verified));
    }
    if forks > 1 {
        detail.push_str(&format!(", {offer_key_seen}/{forks} forks hold the caller's key"));
        ok &= match security {
            // TS 33.328 §5.4.2: every SDES fork sees the offer key.
            Security::Sdes { .. } => offer_key_seen == forks,
            // Key forking: only the answering fork holds it.
            Security::MikeyTicket => offer_key_seen == 1,
            Security::Off => true,
        };
    }
    Ok(Scenario { name, ok, setup: a.setup, detail })
}

/// Runs the SIP scenarios on a fresh lab.
pub(crate) async fn run() -> anyhow::Result<Vec<Scenario>> {
    let lab = TwoDomains::start(HashMap::new(), None).await?;
    let kms = Kms::start(&["alice5@a.example", "bob5@a.example", "alice6@a.example", "bob6@a.example"]).await?;
    let talk = Duration::from_millis(600);
    let sdes = Security::Sdes { fallback: false };
    Ok(vec![
        one_call(&lab, None, 1, "call, no key management (RTP)", Security::Off, 1, false, talk).await?,
        one_call(&lab, None, 2, "call, SDES e2e (SRTP)", sdes, 1, false, talk).await?,
        one_call(&lab, None, 3, "forked call, SDES e2e, 2 contacts", sdes, 2, false, talk).await?,
        one_call(&lab, None, 4, "early media, SDES e2e", sdes, 1, true, talk).await?,
        one_call(&lab, Some(&kms), 5, "call, MIKEY-TICKET e2e (KMS)", Security::MikeyTicket, 1, false, talk).await?,
        one_call(&lab, Some(&kms), 6, "forked call, MIKEY-TICKET, 2 contacts", Security::MikeyTicket, 2, false, talk).await?,
    ])
}

/// Median set-up latency of `calls` calls per key-management mode through the lab.
pub(crate) async fn setup_latency(calls: usize) -> anyhow::Result<Vec<(&'static str, Duration, Duration)>> {
    let lab = TwoDomains::start(HashMap::new(), None).await?;
    let kms = Kms::start(&["alice2@a.example", "bob2@a.example"]).await?;
    let mut out = Vec::new();
    let modes = [("none (RTP)", Security::Off), ("SDES e2e", Security::Sdes { fallback: false }), ("MIKEY-TICKET e2e", Security::MikeyTicket)];
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
