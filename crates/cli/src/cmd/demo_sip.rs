//! The SIP call scenarios of the demo: the two-domain lab (P-CSCF and S-CSCF per domain) on
//! loopback, UEs registered through it, calls placed with each key-management mode, media
//! checked by content (each UE sends its own tone and counts the peer's). Also measures the
//! call set-up time per mode (INVITE sent → 2xx processed at the caller).

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use mediasec_cscf::lab::TwoDomains;
use mediasec_sdp::SdesPolicy;
use mediasec_sip::core::Timers;
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
        timers: Timers::default(),
    }
}

async fn registered(config: UeConfig) -> anyhow::Result<Ue> {
    let ue = Ue::start(config).await?;
    let r = tokio::time::timeout(Duration::from_secs(5), ue.register(600)).await.context("REGISTER timed out")??;
    anyhow::ensure!(r.status == 200, "REGISTER answered {}", r.status);
    Ok(ue)
}

/// One call alice@a → bob@b with `security` at both ends (`forks` contacts registered for bob,
/// the later ones answering later); media runs for `talk`.
/// Each scenario uses its own users (`n`), so no registration of an earlier one is forked to.
async fn one_call(lab: &TwoDomains, n: usize, name: &'static str, security: Security, forks: usize, early: bool, talk: Duration) -> anyhow::Result<Scenario> {
    let alice = registered(ue(&format!("sip:alice{n}@a.example"), lab.pcscf_a.local_addr(), security, CALLER_HZ, CALLEE_HZ)).await?;
    let bob = format!("sip:bob{n}@b.example");
    let mut bobs = Vec::new();
    for i in 0..forks {
        let mut c = ue(&bob, lab.pcscf_b.local_addr(), security, CALLEE_HZ, CALLER_HZ);
        c.answering = Answering { auto: true, delay: Duration::from_millis(if early { 400 } else { 300 * i as u64 }), early_media: early };
        bobs.push(registered(c).await?);
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
        Security::Off => "rtp".to_owned(),
        Security::Sdes { .. } => "srtp AEAD_AES_256_GCM".to_owned(),
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
        detail.push_str(&format!(", {offer_key_seen}/{forks} forks saw the offer key (SDES, TS 33.328 §5.4.2)"));
        ok &= matches!(security, Security::Off) || offer_key_seen == forks;
    }
    Ok(Scenario { name, ok, setup: a.setup, detail })
}

/// Runs the SIP scenarios on a fresh lab.
pub(crate) async fn run() -> anyhow::Result<Vec<Scenario>> {
    let lab = TwoDomains::start(HashMap::new(), None).await?;
    let talk = Duration::from_millis(600);
    Ok(vec![
        one_call(&lab, 1, "call, no key management (RTP)", Security::Off, 1, false, talk).await?,
        one_call(&lab, 2, "call, SDES e2e (SRTP)", Security::Sdes { fallback: false }, 1, false, talk).await?,
        one_call(&lab, 3, "forked call, SDES e2e, 2 contacts", Security::Sdes { fallback: false }, 2, false, talk).await?,
        one_call(&lab, 4, "early media, SDES e2e", Security::Sdes { fallback: false }, 1, true, talk).await?,
    ])
}

/// Median set-up latency of `calls` calls per key-management mode through the lab.
pub(crate) async fn setup_latency(calls: usize) -> anyhow::Result<Vec<(&'static str, Duration, Duration)>> {
    let lab = TwoDomains::start(HashMap::new(), None).await?;
    let mut out = Vec::new();
    for (n, (name, security)) in [("none (RTP)", Security::Off), ("SDES e2e", Security::Sdes { fallback: false })].into_iter().enumerate() {
        let alice = registered(ue(&format!("sip:alice{n}@a.example"), lab.pcscf_a.local_addr(), security, CALLER_HZ, CALLEE_HZ)).await?;
        let target = format!("sip:bob{n}@b.example");
        let bob = registered(ue(&target, lab.pcscf_b.local_addr(), security, CALLEE_HZ, CALLER_HZ)).await?;
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
