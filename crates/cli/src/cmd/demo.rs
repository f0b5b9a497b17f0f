//! `mediasec demo`: what exists so far, run for real on loopback. Two endpoints exchange an
//! SRTP-protected RTP stream (a 1 kHz G.711-rate tone, 20 ms packets) and SRTCP reports over
//! UDP for every suite, starting just below a sequence-number wrap; the receiver checks every
//! payload, and forged and replayed packets are injected and must be refused.
//!
//! Then GBA (TS 33.220): a BSF with its embedded store starts on loopback, a UE bootstraps
//! over Ub (HTTP Digest AKA with Milenage), and a NAF (the future KMS) fetches Ks_NAF over Zn;
//! both keys must match.
//!
//! Then the KMS (TS 33.328 Annex B): a BSF and two KMS domains on loopback with embedded
//! stores, users provisioned, and the call scenarios of docs/kms.md, each ending with SRTP
//! media over UDP in both directions with the keys MIKEY-TICKET delivered.
//!
//! Then SIP calls through the two-domain P-CSCF/S-CSCF lab (`demo_sip`): plain, SDES and
//! MIKEY-TICKET calls (forked, early media, re-keyed), and e2ae calls through the IMS-ALG and
//! our IMS-AGW (plain, re-keyed by UPDATE, with preconditions: reliable 183 + PRACK + early
//! UPDATE, and offerless: offer in the 200, answer in the ACK), one line per scenario.

use std::net::UdpSocket;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use mediasec_srtp::{is_rtcp, Direction, MasterKey, Policy, Session, Suite};
use rand::RngCore;

/// Arguments of `mediasec demo`.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// RTP packets per suite.
    #[arg(long, default_value_t = 500)]
    packets: u16,
}

/// 8 kHz samples of a 1 kHz tone, one byte each (a stand-in for G.711 payload).
fn tone(seq: u16) -> [u8; 160] {
    let mut p = [0u8; 160];
    for (i, s) in p.iter_mut().enumerate() {
        let t = (usize::from(seq) * 160 + i) as f64 / 8000.0;
        *s = (128.0 + 100.0 * (2.0 * std::f64::consts::PI * 1000.0 * t).sin()) as u8;
    }
    p
}

struct Outcome {
    received: u32,
    verified: u32,
    rtcp: u32,
    refused: u32,
    roc: u32,
}

impl Outcome {
    /// Every tone packet verified, every report authenticated, replay and forgery refused.
    fn passed(&self, packets: u16) -> bool {
        self.verified == u32::from(packets) && self.rtcp == u32::from(packets / 100) && self.refused == 2
    }
}

fn run_suite(suite: Suite, packets: u16) -> anyhow::Result<Outcome> {
    let mut key = vec![0u8; suite.inline_key_len()];
    rand::rng().fill_bytes(&mut key);
    let policy = Policy::new(suite, MasterKey::from_inline(suite, &key)?);
    media(&policy, &policy, rand::rng().next_u32(), packets)
}

/// A tone stream over UDP on loopback, protected with `tx` and checked with `rx`, starting
/// just below a sequence-number wrap; a replayed and a forged packet must be refused.
fn media(tx: &Policy, rx: &Policy, ssrc: u32, packets: u16) -> anyhow::Result<Outcome> {
    let receiver = UdpSocket::bind("127.0.0.1:0")?;
    receiver.set_read_timeout(Some(Duration::from_secs(2)))?;
    let to = receiver.local_addr()?;
    let start = 65535 - packets / 2;

    let mut tx = Session::new(tx)?;
    let mut rx = Session::new(rx)?;
    let sender = std::thread::spawn(move || -> anyhow::Result<u32> {
        let socket = UdpSocket::bind("127.0.0.1:0")?;
        let mut last = Vec::new();
        for i in 0..packets {
            let seq = start.wrapping_add(i);
            let mut p = vec![0x80, 0];
            p.extend_from_slice(&seq.to_be_bytes());
            p.extend_from_slice(&(u32::from(i) * 160).to_be_bytes());
            p.extend_from_slice(&ssrc.to_be_bytes());
            p.extend_from_slice(&tone(seq));
            tx.protect_rtp_vec(&mut p)?;
            socket.send_to(&p, to)?;
            if i % 100 == 99 {
                let mut rr = vec![0x80, 201, 0, 1];
                rr.extend_from_slice(&ssrc.to_be_bytes());
                tx.protect_rtcp_vec(&mut rr)?;
                socket.send_to(&rr, to)?;
            }
            last = p;
            if i % 50 == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        // An attacker replays the last packet and forges one with a flipped payload bit.
        socket.send_to(&last, to)?;
        let mut forged = last;
        if let Some(b) = forged.get_mut(20) {
            *b ^= 1;
        }
        socket.send_to(&forged, to)?;
        socket.send_to(b"end", to)?;
        Ok(tx.roc(Direction::Outbound, ssrc).unwrap_or(0))
    });

    let mut out = Outcome { received: 0, verified: 0, rtcp: 0, refused: 0, roc: 0 };
    let mut buf = [0u8; 2048];
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let (n, _) = receiver.recv_from(&mut buf).context("receiving")?;
        let packet = buf.get_mut(..n).context("datagram")?;
        if packet == b"end" {
            break;
        }
        out.received += 1;
        if is_rtcp(packet) {
            match rx.unprotect_rtcp(packet) {
                Ok(_) => out.rtcp += 1,
                Err(_) => out.refused += 1,
            }
            continue;
        }
        match rx.unprotect_rtp(packet) {
            Ok(len) => {
                let seq = packet.get(2..4).and_then(|b| <[u8; 2]>::try_from(b).ok()).map(u16::from_be_bytes);
                if seq.is_some_and(|seq| packet.get(12..len) == Some(&tone(seq)[..])) {
                    out.verified += 1;
                }
            }
            Err(_) => out.refused += 1,
        }
    }
    let sent_roc = sender.join().map_err(|_| anyhow::anyhow!("sender thread panicked"))??;
    out.roc = rx.roc(Direction::Inbound, ssrc).unwrap_or(0);
    anyhow::ensure!(out.roc == sent_roc, "ROC disagrees: sender {sent_roc}, receiver {}", out.roc);
    Ok(out)
}

pub(crate) fn run(args: Args) -> anyhow::Result<ExitCode> {
    println!("mediasec demo: SRTP/SRTCP between two endpoints over UDP on 127.0.0.1");
    println!("{:<24} {:>8} {:>9} {:>5} {:>8} {:>4}  result", "suite", "received", "verified", "rtcp", "refused", "roc");
    let mut ok = true;
    for suite in Suite::ALL {
        let o = run_suite(suite, args.packets)?;
        let pass = o.passed(args.packets);
        ok &= pass;
        println!(
            "{:<24} {:>8} {:>9} {:>5} {:>8} {:>4}  {}{}",
            suite.name(),
            o.received,
            o.verified,
            o.rtcp,
            o.refused,
            o.roc,
            if pass { "ok" } else { "FAILED" },
            if suite.is_discouraged() { " (NULL cipher: TS 33.328 §5.3 says should not be used)" } else { "" }
        );
    }
    ok &= gba()?;
    ok &= kms::run(args.packets)?;
    ok &= sip()?;
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// SIP calls through the two-domain P-CSCF/S-CSCF lab on loopback (`demo_sip`).
fn sip() -> anyhow::Result<bool> {
    let runtime = super::runtime()?;
    let scenarios = runtime.block_on(super::demo_sip::run())?;
    println!();
    println!("SIP calls on 127.0.0.1: UEs -> P-CSCF -> S-CSCF (two domains), media checked by tone");
    let width = scenarios.iter().map(|s| s.name.len()).max().unwrap_or(0);
    println!("{:<width$} {:>10}  result", "scenario", "set-up");
    let mut ok = true;
    for s in scenarios {
        ok &= s.ok;
        let setup = s.setup.map_or_else(|| "-".to_owned(), |d| format!("{:.2} ms", d.as_secs_f64() * 1000.0));
        println!("{:<width$} {:>10}  {}: {}", s.name, setup, if s.ok { "ok" } else { "FAILED" }, s.detail);
    }
    Ok(ok)
}

/// GBA on loopback: BSF (embedded redb store in a temporary directory), UE bootstrap, Zn.
fn gba() -> anyhow::Result<bool> {
    use mediasec_bsf::client::{self, Endpoint};
    use mediasec_bsf::graceful::Serving;
    use mediasec_bsf::server::{Bsf, ServerConfig};
    use mediasec_bsf::store::{Store, Subscriber};
    use mediasec_gba::bsf::BsfConfig;
    use mediasec_gba::kdf::{NafId, UaProtocolId};
    use mediasec_gba::milenage::Milenage;
    use mediasec_gba::ue::UeBootstrap;

    const DOMAIN: &str = "bsf.demo.example";
    const IMPI: &str = "001010000000001@ims.demo.example";
    const IMPI_U: &str = "001010000000002@ims.demo.example";
    const NAF: &str = "kms.demo.example";
    let dir = std::env::temp_dir().join(format!("mediasec-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    // The BSF seals K, OPc and Ks under its master key: a fresh one per demo run.
    let store = Store::open(&dir.join("bsf.redb"), mediasec_kms_store::sealed::MasterKey::random()?)?;
    let runtime = super::runtime()?;
    // A subscriber with fresh random K and OPc (returned), as the BSF's store provisions it.
    let subscriber = |impi: &str, impu: &str, guss: Option<serde_json::Value>| -> anyhow::Result<([u8; 16], [u8; 16])> {
        let (k, opc): ([u8; 16], [u8; 16]) = (rand::random(), rand::random());
        let mut s = Subscriber::with_opc(impi, &k, &opc, vec![impu.into()]);
        s.guss = guss;
        runtime.block_on(store.add_subscriber(&s))?;
        Ok((k, opc))
    };
    let (k, opc) = subscriber(IMPI, "sip:alice@demo.example", None)?;
    // A GBA_U subscriber (TS 33.220 Annex G): the BSF sends AUTN*, the UICC keeps Ks.
    let (k_u, opc_u) = subscriber(IMPI_U, "sip:bob@demo.example", Some(serde_json::json!({"bsfInfo": {"uiccType": "GBA_U"}})))?;
    let zn_token = hex::encode(rand::random::<[u8; 16]>());
    let admin_token = hex::encode(rand::random::<[u8; 16]>());
    let bsf = Bsf::new(ServerConfig { bsf: BsfConfig::new(DOMAIN), zn_token: zn_token.clone(), admin_token }, store);
    let result = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let server = Serving::spawn("BSF", |until| mediasec_bsf::server::serve(listener, bsf, until));
        let endpoint = Endpoint::http(&url)?;
        let started = Instant::now();
        // The UE's USIM starts out of step (SQN_MS ahead), so the run includes a resync.
        let ue = UeBootstrap::new(IMPI, DOMAIN, Milenage::with_opc(&k, &opc), 1000);
        let (boot, _) = client::bootstrap(&endpoint, ue).await?;
        let ub_time = started.elapsed();
        let ue_key = boot.ks_naf(&NafId::new(NAF, UaProtocolId::IMS_MEDIA_PLANE))?;
        let zn = client::zn_lookup(&endpoint, &zn_token, &boot.btid.to_string(), NAF, "0100000006")
            .await?
            .context("Zn did not know the fresh B-TID")?;
        let same = zn.key()? == ue_key.0.to_vec();
        // GBA_U: the ME drives the UICC through the same Ub run; the UICC derives
        // Ks_ext_NAF (G.2), which the KMS, not GBA_U aware, gets over Zn as its Ks_NAF.
        let ue_u = UeBootstrap::with_uicc(IMPI_U, DOMAIN, mediasec_gba::uicc::Uicc::new(Milenage::with_opc(&k_u, &opc_u), 0));
        let (boot_u, mut uicc) = client::bootstrap_gba_u(&endpoint, ue_u).await?;
        let ext = uicc.naf_derivation(&NafId::new(NAF, UaProtocolId::IMS_MEDIA_PLANE), IMPI_U)?;
        let zn_u = client::zn_lookup(&endpoint, &zn_token, &boot_u.btid.to_string(), NAF, "0100000006")
            .await?
            .context("Zn did not know the fresh GBA_U B-TID")?;
        server.shutdown().await;
        let same_u = zn_u.key()? == ext.0.to_vec() && zn_u.gba_type.as_deref() == Some("GBA_U") && zn_u.int_key()?.is_none();
        anyhow::Ok((boot.btid.to_string(), ub_time, same, zn.impus, same_u))
    });
    let _ = std::fs::remove_dir_all(&dir);
    let (btid, ub_time, same, impus, same_u) = result?;
    println!();
    println!("GBA on 127.0.0.1: BSF (embedded store), UE bootstrap over Ub with resync, NAF look-up over Zn");
    println!("  B-TID {btid}  bootstrap {:.1} ms  IMPUs {impus:?}", ub_time.as_secs_f64() * 1000.0);
    println!("  Ks_NAF(UE) == Ks_NAF(Zn) for {NAF}: {}", if same { "ok" } else { "FAILED" });
    println!("  GBA_U (UICC keeps Ks): Ks_ext_NAF(UICC) == Ks_NAF(Zn), no Ks_int_NAF to an unaware NAF: {}", if same_u { "ok" } else { "FAILED" });
    Ok(same && same_u)
}

/// The KMS stage: scenarios over a loopback lab (BSF + KMS a.example + KMS b.example).
mod kms {
    use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

    use mediasec_kms::KmsError;
    use mediasec_kms::client::KmsClient;
    use mediasec_kms::identity::{KmsUid, Pattern};
    use mediasec_kms::lab::{DomainSpec, Lab};
    use mediasec_kms::ue::{Ask, HeldTicket, Media, Ue};

    const POLICY_A: &str = r#"
[domain."a.example"]
may_call = ["?@a.example", "?@b.example"]
reusable = true
group_tickets = true
ticket_lifetime = 3600
[user."alice@a.example"]
mode3 = true
forking = true
[user."mallory@a.example"]
may_call = ["alice@a.example"]
"#;
    const POLICY_B: &str = r#"
[domain."b.example"]
may_call = ["?@a.example", "?@b.example"]
"#;
    const USERS: [&str; 5] = ["alice@a.example", "bob@a.example", "dan@a.example", "mallory@a.example", "carol@b.example"];

    enum Verdict {
        Ok(String),
        Failed(String),
    }

    struct Row {
        name: &'static str,
        verdict: Verdict,
        km: Duration,
    }

    fn now() -> Duration {
        SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default()
    }

    fn ask(to: &str, reusable: bool) -> Result<Ask, KmsError> {
        Ok(Ask { recipients: vec![Pattern::parse(to)?], reusable, forking: false, lifetime: 600 })
    }

    /// Ticket Transfer with resolve at the responder's KMS; returns the authenticated
    /// responder and both sides' SRTP policies.
    async fn transfer(i: &mut Ue, held: &HeldTicket, r: &mut Ue, rk: &KmsClient) -> Result<(KmsUid, Media, Media), KmsError> {
        let to = r.uid.clone();
        let (ti, pending) = i.transfer_init(held, &to, rand::random(), rand::random(), now(), rand::random())?;
        let resolved = rk.resolve(r, &ti).await?;
        let (tr, m_r) = r.transfer_resp(&resolved, &ti, rand::random(), now())?;
        let (who, m_i) = i.on_transfer_resp(&pending, &tr, now())?;
        Ok((who, m_i, m_r))
    }

    /// SRTP both ways over UDP with the MIKEY-derived policies.
    fn media_both_ways(m_i: &Media, m_r: &Media, packets: u16) -> anyhow::Result<Result<String, String>> {
        let a = super::media(&m_i.initiator_stream.to_srtp()?, &m_r.initiator_stream.to_srtp()?, m_i.initiator_stream.ssrc, packets)?;
        let b = super::media(&m_r.responder_stream.to_srtp()?, &m_i.responder_stream.to_srtp()?, m_r.responder_stream.ssrc, packets)?;
        Ok(if a.passed(packets) && b.passed(packets) {
            Ok(format!("SRTP {}+{} packets verified", a.verified, b.verified))
        } else {
            Err(format!("SRTP: {} and {} of {packets} verified", a.verified, b.verified))
        })
    }

    /// A call: key management (timed), then media; `expect` is the responder identity the
    /// initiator must authenticate.
    async fn call(i: &mut Ue, held: &HeldTicket, r: &mut Ue, rk: &KmsClient, expect: &str, spent: Duration, packets: u16) -> anyhow::Result<(Verdict, Duration)> {
        let t = Instant::now();
        let (who, m_i, m_r) = match transfer(i, held, r, rk).await {
            Ok(x) => x,
            Err(e) => return Ok((Verdict::Failed(e.to_string()), spent + t.elapsed())),
        };
        let km = spent + t.elapsed();
        if who.as_str() != expect {
            return Ok((Verdict::Failed(format!("answered by {who}, expected {expect}")), km));
        }
        let media = tokio::task::block_in_place(|| media_both_ways(&m_i, &m_r, packets))?;
        Ok((media.map_or_else(Verdict::Failed, |m| Verdict::Ok(format!("{who} authenticated; {m}"))), km))
    }

    /// A forked call: the same TRANSFER_INIT to two responders; both answers verified, the
    /// two key sets must differ, media with each.
    async fn forked_call(i: &mut Ue, held: &HeldTicket, rs: [(&mut Ue, &KmsClient); 2], spent: Duration, packets: u16) -> anyhow::Result<(Verdict, Duration)> {
        let t = Instant::now();
        let to = rs[0].0.uid.clone();
        let (ti, pending) = i.transfer_init(held, &to, rand::random(), rand::random(), now(), rand::random())?;
        let mut legs = Vec::new();
        for (r, k) in rs {
            let leg = async {
                let resolved = k.resolve(r, &ti).await?;
                let (tr, m_r) = r.transfer_resp(&resolved, &ti, rand::random(), now())?;
                let (who, m_i) = i.on_transfer_resp(&pending, &tr, now())?;
                Ok::<_, KmsError>((who, m_i, m_r))
            };
            match leg.await {
                Ok(l) => legs.push(l),
                Err(e) => return Ok((Verdict::Failed(e.to_string()), spent + t.elapsed())),
            }
        }
        let km = spent + t.elapsed();
        let [(w1, i1, r1), (w2, i2, r2)] = <[_; 2]>::try_from(legs).map_err(|_| anyhow::anyhow!("two legs"))?;
        if *i1.initiator_stream.master_key == *i2.initiator_stream.master_key {
            return Ok((Verdict::Failed("both responders got the same key".into()), km));
        }
        let m1 = tokio::task::block_in_place(|| media_both_ways(&i1, &r1, packets))?;
        let m2 = tokio::task::block_in_place(|| media_both_ways(&i2, &r2, packets))?;
        Ok((
            match (m1, m2) {
                (Ok(a), Ok(b)) => Verdict::Ok(format!("{w1} and {w2} authenticated, different keys; {a}; {b}")),
                (Err(e), _) | (_, Err(e)) => Verdict::Failed(e),
            },
            km,
        ))
    }

    async fn requested(k: &KmsClient, u: &mut Ue, a: &Ask) -> (Result<HeldTicket, KmsError>, Duration) {
        let t = Instant::now();
        let r = k.request_ticket(u, a).await;
        (r, t.elapsed())
    }

    /// Sum of every request counter of every KMS of the lab (from /metrics over HTTP).
    async fn kms_requests(lab: &Lab) -> anyhow::Result<u64> {
        let mut n = 0;
        for d in &lab.domains {
            let r = mediasec_bsf::client::request(&mediasec_bsf::client::Endpoint::http(&d.url)?, "GET", "/metrics", &[], b"").await?;
            n += String::from_utf8_lossy(&r.body)
                .lines()
                .filter(|l| l.starts_with("mediasec_kms_requests_total{"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                .sum::<u64>();
        }
        Ok(n)
    }

    async fn scenarios(lab: &Lab, li: &mediasec_bsf::client::Endpoint, packets: u16) -> anyhow::Result<Vec<Row>> {
        let mut rows = Vec::new();
        let (mut alice, ka) = lab.ue("alice@a.example").await?;
        let (mut bob, kb) = lab.ue("bob@a.example").await?;
        let (mut dan, kd) = lab.ue("dan@a.example").await?;
        let (mut mallory, km) = lab.ue("mallory@a.example").await?;
        let (mut carol, kc) = lab.ue("carol@b.example").await?;

        // 1. Same domain.
        let (held, spent) = requested(&ka, &mut alice, &ask("bob@a.example", false)?).await;
        let (verdict, km_t) = match held {
            Ok(h) => call(&mut alice, &h, &mut bob, &kb, "bob@a.example", spent, packets).await?,
            Err(e) => (Verdict::Failed(e.to_string()), spent),
        };
        rows.push(Row { name: "same-domain call", verdict, km: km_t });

        // 2. Cross-domain via Zk: carol's KMS forwards the resolve to alice's over mutual TLS.
        let (held, spent) = requested(&ka, &mut alice, &ask("carol@b.example", false)?).await;
        let (verdict, km_t) = match held {
            Ok(h) => call(&mut alice, &h, &mut carol, &kc, "carol@b.example", spent, packets).await?,
            Err(e) => (Verdict::Failed(e.to_string()), spent),
        };
        rows.push(Row { name: "cross-domain call (Zk)", verdict, km: km_t });

        // 3. Reusable ticket: the second call contacts no KMS.
        let (held, spent) = requested(&ka, &mut alice, &ask("bob@a.example", true)?).await;
        let (verdict, km_t) = match held {
            Ok(h) if h.reusable() => {
                let (first, _) = call(&mut alice, &h, &mut bob, &kb, "bob@a.example", spent, packets).await?;
                let before = kms_requests(lab).await?;
                let bob_uid = bob.uid.clone();
                match (first, alice.cached_ticket(&bob_uid, now())) {
                    (Verdict::Ok(_), Some(cached)) => {
                        let (second, km2) = call(&mut alice, &cached, &mut bob, &kb, "bob@a.example", Duration::ZERO, packets).await?;
                        let contacted = kms_requests(lab).await? - before;
                        match second {
                            Verdict::Ok(m) if contacted == 0 => (Verdict::Ok(format!("second call: 0 KMS requests; {m}")), km2),
                            Verdict::Ok(_) => (Verdict::Failed(format!("second call made {contacted} KMS requests")), km2),
                            other => (other, km2),
                        }
                    }
                    (Verdict::Ok(_), None) => (Verdict::Failed("reusable ticket not cached".into()), spent),
                    (other, _) => (other, spent),
                }
            }
            Ok(_) => (Verdict::Failed("KMS did not grant reuse".into()), spent),
            Err(e) => (Verdict::Failed(e.to_string()), spent),
        };
        rows.push(Row { name: "reusable ticket", verdict, km: km_t });

        // 4. Group ticket: a member of ?@a.example answers and is authenticated.
        let (held, spent) = requested(&ka, &mut alice, &ask("?@a.example", false)?).await;
        let (verdict, km_t) = match held {
            Ok(h) => call(&mut alice, &h, &mut dan, &kd, "dan@a.example", spent, packets).await?,
            Err(e) => (Verdict::Failed(e.to_string()), spent),
        };
        rows.push(Row { name: "group ticket", verdict, km: km_t });

        // 5. Forked call: one TRANSFER_INIT reaches bob and dan; each resolves and gets its
        // own forked key; alice authenticates both answers.
        let forked = Ask { recipients: vec![Pattern::parse("bob@a.example")?, Pattern::parse("dan@a.example")?], reusable: false, forking: true, lifetime: 600 };
        let (held, spent) = requested(&ka, &mut alice, &forked).await;
        let (verdict, km_t) = match held {
            Ok(h) if h.forking() => forked_call(&mut alice, &h, [(&mut bob, &kb), (&mut dan, &kd)], spent, packets).await?,
            Ok(_) => (Verdict::Failed("the KMS did not grant forking".into()), spent),
            Err(e) => (Verdict::Failed(e.to_string()), spent),
        };
        rows.push(Row { name: "forked call", verdict, km: km_t });

        // 6. Mode 3: alice makes the ticket with her Ks_NAF; her KMS resolves it for bob.
        let t = Instant::now();
        let fill = |b: &mut [u8]| rand::RngCore::fill_bytes(&mut rand::rng(), b);
        let (verdict, km_t) = match alice.make_ticket(&ask("bob@a.example", false)?, now(), &fill) {
            Ok(h) => call(&mut alice, &h, &mut bob, &kb, "bob@a.example", t.elapsed(), packets).await?,
            Err(e) => (Verdict::Failed(e.to_string()), t.elapsed()),
        };
        rows.push(Row { name: "mode-3 (UE-made) ticket", verdict, km: km_t });

        // 7. Refused by policy: mallory may call alice only.
        let (held, spent) = requested(&km, &mut mallory, &ask("carol@b.example", false)?).await;
        let verdict = match held {
            Err(KmsError::Mikey { code, .. }) => Verdict::Ok(format!("refused by the KMS: ERR {code}")),
            Err(e) => Verdict::Failed(e.to_string()),
            Ok(_) => Verdict::Failed("the KMS issued a ticket".into()),
        };
        rows.push(Row { name: "refused call (policy)", verdict, km: spent });

        // 8. Tampered ticket: one bit of the ticket flipped in transit.
        let (held, spent) = requested(&ka, &mut alice, &ask("bob@a.example", false)?).await;
        let t = Instant::now();
        let verdict = match held {
            Ok(mut h) => {
                let mid = h.ticket.ticket_data.len() / 2;
                if let Some(b) = h.ticket.ticket_data.get_mut(mid) {
                    *b ^= 0x01;
                }
                match transfer(&mut alice, &h, &mut bob, &kb).await {
                    Err(KmsError::Mikey { code, .. }) => Verdict::Ok(format!("rejected by the KMS: ERR {code}")),
                    Err(e) => Verdict::Failed(e.to_string()),
                    Ok(_) => Verdict::Failed("tampered ticket accepted".into()),
                }
            }
            Err(e) => Verdict::Failed(e.to_string()),
        };
        rows.push(Row { name: "tampered ticket", verdict, km: spent + t.elapsed() });

        // 9. Lawful interception (docs/li.md): a warrant on alice releases exactly her call's
        // keys over the LI API; a warrant on dan, not a party, releases nothing.
        let t = Instant::now();
        let verdict = match intercepted_call(lab, li, &mut alice, &ka, &mut bob, &kb).await {
            Ok(v) => v,
            Err(e) => Verdict::Failed(format!("{e:#}")),
        };
        rows.push(Row { name: "lawful interception", verdict, km: t.elapsed() });
        Ok(rows)
    }

    /// An LI API call on KMS a.example's HTTPS listener `li` (LI is never served over plain
    /// HTTP) with the LI token `token`: (status, body).
    async fn li_api(li: &mediasec_bsf::client::Endpoint, token: &str, method: &str, path: &str, body: &serde_json::Value) -> anyhow::Result<(u16, String)> {
        let auth = format!("Bearer {token}");
        let headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
        let r = mediasec_bsf::client::request(li, method, path, &headers, body.to_string().as_bytes()).await?;
        Ok((r.status, String::from_utf8_lossy(&r.body).into_owned()))
    }

    /// Turns LI on at KMS a.example, puts warrants on alice (the target) and on dan, places
    /// alice → bob, and asks for the call's keys under each warrant with the intercepted
    /// TRANSFER_INIT and TRANSFER_RESP.
    async fn intercepted_call(lab: &Lab, li: &mediasec_bsf::client::Endpoint, alice: &mut Ue, ka: &KmsClient, bob: &mut Ue, kb: &KmsClient) -> anyhow::Result<Verdict> {
        use base64::Engine as _;
        let token = hex::encode(rand::random::<[u8; 16]>());
        let keys_token = hex::encode(rand::random::<[u8; 16]>());
        lab.domain("a.example")?.service.enable_li(token.clone(), keys_token.clone())?;
        let secs = now().as_secs();
        for (id, target) in [("W-alice", "alice@a.example"), ("W-dan", "dan@a.example")] {
            let w = serde_json::json!({"id": id, "target": target, "not_before": secs - 60, "not_after": secs + 600});
            let (status, body) = li_api(li, &token, "PUT", &format!("/li/v1/warrants/{id}"), &w).await?;
            anyhow::ensure!(status / 100 == 2, "warrant {id}: {status} {body}");
        }
        let held = ka.request_ticket(alice, &ask("bob@a.example", false)?).await?;
        let (ti, pending) = alice.transfer_init(&held, &bob.uid.clone(), rand::random(), rand::random(), now(), rand::random())?;
        let resolved = kb.resolve(bob, &ti).await?;
        let (tr, m_bob) = bob.transfer_resp(&resolved, &ti, rand::random(), now())?;
        let (_, m_alice) = alice.on_transfer_resp(&pending, &tr, now())?;
        let b64 = base64::engine::general_purpose::STANDARD;
        let ask_keys = |w: &str| serde_json::json!({"warrant": w, "transfer_init": b64.encode(&ti), "transfer_resp": b64.encode(&tr)});
        let (status, body) = li_api(li, &keys_token, "POST", "/li/v1/keys", &ask_keys("W-alice")).await?;
        anyhow::ensure!(status == 200, "keys under W-alice: {status} {body}");
        let released: serde_json::Value = serde_json::from_str(&body)?;
        let key_of = |cs: u64| -> Option<String> {
            let sessions = released.get("crypto_sessions")?.as_array()?;
            let session = sessions.iter().find(|s| s.get("cs_id").and_then(serde_json::Value::as_u64) == Some(cs))?;
            session.get("master_key")?.as_str().map(str::to_owned)
        };
        let same = key_of(1) == Some(hex::encode(&*m_alice.initiator_stream.master_key))
            && key_of(1) == Some(hex::encode(&*m_bob.initiator_stream.master_key))
            && key_of(2) == Some(hex::encode(&*m_bob.responder_stream.master_key))
            && key_of(2) == Some(hex::encode(&*m_alice.responder_stream.master_key));
        let (refused, reason) = li_api(li, &keys_token, "POST", "/li/v1/keys", &ask_keys("W-dan")).await?;
        Ok(match (same, refused) {
            (true, 403) => Verdict::Ok(format!("keys under alice's warrant = both UEs' keys; dan's warrant refused: 403 {}", reason.trim())),
            (false, _) => Verdict::Failed(format!("released keys differ from the call's: {body}")),
            (true, other) => Verdict::Failed(format!("warrant on a non-party answered {other} {reason}")),
        })
    }

    pub(super) fn run(packets: u16) -> anyhow::Result<bool> {
        let dir = std::env::temp_dir().join(format!("mediasec-demo-kms-{}", std::process::id()));
        let runtime = crate::cmd::runtime()?;
        let result = runtime.block_on(async {
            let domains = [DomainSpec { domain: "a.example", policy: POLICY_A }, DomainSpec { domain: "b.example", policy: POLICY_B }];
            let mut lab = Lab::start(&dir, &domains, &USERS, Some(Duration::from_secs(2))).await?;
            let kms_a = std::sync::Arc::clone(&lab.domain("a.example")?.service);
            let li = lab.serve_li(&kms_a, "a.example").await?;
            scenarios(&lab, &li, packets).await
        });
        let _ = std::fs::remove_dir_all(&dir);
        let rows = result?;
        println!();
        println!("KMS on 127.0.0.1: BSF + KMS a.example + KMS b.example (embedded stores, Zk over mutual TLS, LI over HTTPS), users bootstrapped over Ub");
        println!("{:<26} {:>10}  result", "scenario", "key mgmt");
        let mut ok = true;
        for r in rows {
            let (word, detail) = match &r.verdict {
                Verdict::Ok(d) => ("ok", d.clone()),
                Verdict::Failed(d) => ("FAILED", d.clone()),
            };
            ok &= matches!(r.verdict, Verdict::Ok(_));
            println!("{:<26} {:>7.2} ms  {word}: {detail}", r.name, r.km.as_secs_f64() * 1000.0);
        }
        Ok(ok)
    }
}
