//! `mediasec demo`: what exists so far, run for real on loopback. Two endpoints exchange an
//! SRTP-protected RTP stream (a 1 kHz G.711-rate tone, 20 ms packets) and SRTCP reports over
//! UDP for every suite, starting just below a sequence-number wrap; the receiver checks every
//! payload, and forged and replayed packets are injected and must be refused.
//!
//! Then GBA (TS 33.220): a BSF with its embedded store starts on loopback, a UE bootstraps
//! over Ub (HTTP Digest AKA with Milenage), and a NAF (the future KMS) fetches Ks_NAF over Zn;
//! both keys must match. The KMS and call scenarios join this demo as their issues land.

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

fn run_suite(suite: Suite, packets: u16) -> anyhow::Result<Outcome> {
    let mut key = vec![0u8; suite.inline_key_len()];
    rand::rng().fill_bytes(&mut key);
    let policy = Policy::new(suite, MasterKey::from_inline(suite, &key)?);
    let receiver = UdpSocket::bind("127.0.0.1:0")?;
    receiver.set_read_timeout(Some(Duration::from_secs(2)))?;
    let to = receiver.local_addr()?;
    let ssrc = rand::rng().next_u32();
    let start = 65535 - packets / 2;

    let mut tx = Session::new(&policy)?;
    let mut rx = Session::new(&policy)?;
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
                let seq = u16::from_be_bytes([packet[2], packet[3]]);
                if packet.get(12..len) == Some(&tone(seq)[..]) {
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
        let expected_rtcp = u32::from(args.packets / 100);
        // Every tone packet verified, every report authenticated, replay and forgery refused.
        let pass = o.verified == u32::from(args.packets) && o.rtcp == expected_rtcp && o.refused == 2;
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
    println!("Not in this demo yet: MIKEY-TICKET/KMS and SIP call scenarios (see the issue tracker).");
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// GBA on loopback: BSF (embedded redb store in a temporary directory), UE bootstrap, Zn.
fn gba() -> anyhow::Result<bool> {
    use mediasec_bsf::client::{self, Endpoint};
    use mediasec_bsf::server::{Bsf, ServerConfig};
    use mediasec_bsf::store::{Store, Subscriber};
    use mediasec_gba::bsf::BsfConfig;
    use mediasec_gba::kdf::{NafId, UaProtocolId};
    use mediasec_gba::milenage::Milenage;
    use mediasec_gba::ue::UeBootstrap;

    const DOMAIN: &str = "bsf.demo.example";
    const IMPI: &str = "001010000000001@ims.demo.example";
    const NAF: &str = "kms.demo.example";
    let dir = std::env::temp_dir().join(format!("mediasec-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let store = Store::open(&dir.join("bsf.redb"))?;
    let (k, opc): ([u8; 16], [u8; 16]) = (rand::random(), rand::random());
    store.add_subscriber(&Subscriber {
        impi: IMPI.into(),
        k: hex::encode(k),
        opc: Some(hex::encode(opc)),
        op: None,
        amf: "8000".into(),
        sqn: 0,
        impus: vec!["sip:alice@demo.example".into()],
        guss: None,
    })?;
    let zn_token = hex::encode(rand::random::<[u8; 16]>());
    let admin_token = hex::encode(rand::random::<[u8; 16]>());
    let bsf = Bsf::new(ServerConfig { bsf: BsfConfig::new(DOMAIN), zn_token: zn_token.clone(), admin_token }, store);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let result = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let server = tokio::spawn(mediasec_bsf::server::serve(listener, bsf));
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
        server.abort();
        let same = zn.key()? == ue_key.0.to_vec();
        anyhow::Ok((boot.btid.to_string(), ub_time, same, zn.impus))
    });
    let _ = std::fs::remove_dir_all(&dir);
    let (btid, ub_time, same, impus) = result?;
    println!();
    println!("GBA on 127.0.0.1: BSF (embedded store), UE bootstrap over Ub with resync, NAF look-up over Zn");
    println!("  B-TID {btid}  bootstrap {:.1} ms  IMPUs {impus:?}", ub_time.as_secs_f64() * 1000.0);
    println!("  Ks_NAF(UE) == Ks_NAF(Zn) for {NAF}: {}", if same { "ok" } else { "FAILED" });
    Ok(same)
}
