//! `mediasec bench srtp`: protect and unprotect packets in-process and report packets/s for
//! each direction (the equivalent of libsrtp's timing driver), so anyone can compare on
//! their own machine.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use mediasec_srtp::{MasterKey, Policy, Session, Suite};
use rand::RngCore;

/// Arguments of `mediasec bench`.
#[derive(clap::Args)]
pub(crate) struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(clap::Subcommand)]
enum What {
    /// SRTP protect/unprotect throughput of one suite and payload size.
    Srtp {
        /// Crypto suite (SDES name).
        #[arg(long, default_value = "AES_CM_128_HMAC_SHA1_80")]
        suite: Suite,
        /// RTP payload size in octets (the 12-octet header comes on top).
        #[arg(long, default_value_t = 160)]
        size: usize,
        /// Packets per repetition.
        #[arg(long, default_value_t = 200_000)]
        packets: u64,
        /// Repetitions; the best one is reported.
        #[arg(long, default_value_t = 5)]
        reps: u32,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// KMS request+resolve pairs/s and p50/p99 over HTTP on loopback, against a bare echo
    /// server in the same run; or, with --tickets, the flat-memory check.
    Kms(super::kms::BenchArgs),
    /// SAKKE (RFC 6508) and ECCSI (RFC 6507) against wolfSSL in the same run (builds a C
    /// harness with `cc … -lwolfssl`).
    Sakke(super::bench_sakke::Args),
}

/// Packets built per batch: the plaintext batch is rebuilt outside the timed region.
const BATCH: usize = 512;

pub(crate) fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (suite, size, packets, reps, json) = match args.what {
        What::Srtp { suite, size, packets, reps, json } => (suite, size, packets, reps, json),
        What::Kms(a) => return super::kms::bench(a),
        What::Sakke(a) => return super::bench_sakke::run(a),
    };
    anyhow::ensure!(size <= 1400, "--size must be at most 1400 octets");
    let mut key = vec![0u8; suite.inline_key_len()];
    rand::rng().fill_bytes(&mut key);
    let policy = Policy::new(suite, MasterKey::from_inline(suite, &key).context("key")?);
    let (mut tx, mut rx) = (Session::new(&policy)?, Session::new(&policy)?);
    let mut payload = vec![0u8; size];
    rand::rng().fill_bytes(&mut payload);
    let slot = 12 + size + tx.rtp_overhead();
    let mut buf = vec![0u8; slot * BATCH];
    let mut lens = [0usize; BATCH];
    let mut seq: u32 = 0;
    let (mut best_p, mut best_u) = (0f64, 0f64);
    for _ in 0..reps.max(1) {
        let (mut tp, mut tu, mut done) = (0f64, 0f64, 0u64);
        while done < packets {
            for (chunk, len) in buf.chunks_mut(slot).zip(lens.iter_mut()) {
                // RTP header (V=2, PT 0, SSRC 0xcafebabe), then the payload.
                let mut header = [0x80, 0, 0, 0, 0, 0, 0, 0, 0xca, 0xfe, 0xba, 0xbe];
                header[2..4].copy_from_slice(&(seq as u16).to_be_bytes());
                header[4..8].copy_from_slice(&seq.wrapping_mul(160).to_be_bytes());
                chunk.iter_mut().zip(header.iter().chain(&payload)).for_each(|(d, s)| *d = *s);
                *len = 12 + size;
                seq = seq.wrapping_add(1);
            }
            let t0 = Instant::now();
            for (chunk, len) in buf.chunks_mut(slot).zip(lens.iter_mut()) {
                *len = tx.protect_rtp(chunk, *len)?;
            }
            let t1 = Instant::now();
            for (chunk, len) in buf.chunks_mut(slot).zip(lens.iter()) {
                let packet = chunk.get_mut(..*len).context("protected packet outgrew its slot")?;
                let n = rx.unprotect_rtp(packet)?;
                anyhow::ensure!(chunk.get(12..n) == Some(&payload[..]), "unprotected payload differs");
            }
            let t2 = Instant::now();
            tp += (t1 - t0).as_secs_f64();
            tu += (t2 - t1).as_secs_f64();
            done += BATCH as u64;
        }
        best_p = best_p.max(done as f64 / tp);
        best_u = best_u.max(done as f64 / tu);
    }
    if json {
        println!(
            "{}",
            serde_json::json!({"suite": suite.name(), "payload": size, "protect_pps": best_p.round(), "unprotect_pps": best_u.round()})
        );
    } else {
        println!("{:<24} {:>5} B  protect {:>10.0} pkt/s  unprotect {:>10.0} pkt/s", suite.name(), size, best_p, best_u);
    }
    Ok(ExitCode::SUCCESS)
}
