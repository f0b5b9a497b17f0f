//! `mediasec bench sakke`: our SAKKE (RFC 6508) and ECCSI (RFC 6507) against wolfSSL's in
//! the same run, on the same keys and data. The wolfSSL side is a small C harness
//! (`bench_sakke_wolfssl.c`, embedded here) built at run time with `cc -O2 … -lwolfssl`
//! (Debian `libwolfssl-dev`), so nothing C is built unless someone asks for the numbers.
//! Every figure is the median of `--iters` runs of one operation.

use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::{Context, bail, ensure};
use mediasec_mikey::eccsi::{self, SigningKey};
use mediasec_mikey::sakke::{self, KmsSecret, Recipient, Rsk};
use rand::RngCore;

const HARNESS: &str = include_str!("bench_sakke_wolfssl.c");
/// `CHECK` and `unhex`, the helpers the wolfSSL peer tests use too.
const HARNESS_H: &str = include_str!("../../../mikey/tests/peers/harness.h");

/// Arguments of `mediasec bench sakke`.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Runs per operation (the median is reported).
    #[arg(long, default_value_t = 15)]
    iters: u32,
}

/// Median of `iters` runs of `op`, in microseconds.
fn median_us(iters: u32, mut op: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    let mut t = Vec::new();
    for _ in 0..iters.max(1) {
        let t0 = Instant::now();
        op()?;
        t.push(t0.elapsed().as_secs_f64() * 1e6);
    }
    t.sort_by(f64::total_cmp);
    let n = t.len();
    Ok(match (t.get(n / 2), t.get(n.saturating_sub(1) / 2)) {
        (Some(a), Some(b)) => (a + b) / 2.0,
        _ => 0.0,
    })
}

/// Writes the C harness to a temporary directory and builds it against libwolfssl.
fn build_harness() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("mediasec-bench-sakke-{}", std::process::id()));
    std::fs::create_dir_all(&dir).context("temporary directory")?;
    let src = dir.join("bench_sakke_wolfssl.c");
    std::fs::write(&src, HARNESS).context("writing the C harness")?;
    std::fs::write(dir.join("harness.h"), HARNESS_H).context("writing the C harness")?;
    let bin = dir.join("bench_sakke_wolfssl");
    let out = Command::new("cc").arg("-O2").arg("-o").arg(&bin).arg(&src).arg("-lwolfssl").output().context("running cc (needs a C compiler)")?;
    if !out.status.success() {
        bail!("building the wolfSSL harness failed (needs libwolfssl-dev): {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(bin)
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    rand::rng().fill_bytes(&mut b);
    b
}

/// One row: operation, ours (µs), wolfSSL (µs), wolfSSL's precomputation.
struct Row {
    op: &'static str,
    ours: f64,
    theirs: f64,
    precomputation: String,
}

pub(crate) fn run(args: Args) -> anyhow::Result<ExitCode> {
    let iters = args.iters.max(1);
    // SAKKE: a fresh KMS (127 random octets: in [2, q − 1] but for negligible odds), one
    // identifier, its RSK, one encapsulation.
    let kms = KmsSecret::from_bytes(&random::<127>()).context("z")?;
    // The first [z]P also builds the fixed-base table of P (once per process): reported.
    let t0 = Instant::now();
    let z = kms.public_key();
    let first_use_ms = t0.elapsed().as_secs_f64() * 1e3;
    let id = eccsi::identity("tel:+447700900123", 2026, 11);
    let rsk_bytes = kms.issue(&id).context("RSK")?.to_uncompressed();
    let ssv = random::<16>();
    // The first encapsulation also builds the fixed-base table of g (once per process).
    let t0 = Instant::now();
    let data = sakke::encapsulate(&z, &id, &ssv)?;
    let first_encapsulation_ms = t0.elapsed().as_secs_f64() * 1e3;
    // ECCSI: a fresh KMS and signing key (fresh v; out-of-range draws are retried).
    let ksak = loop {
        if let Ok(k) = eccsi::KmsSecret::from_bytes(&random()) {
            break k;
        }
    };
    let kpak = ksak.kpak();
    let eid = eccsi::identity("sip:alice@example.org", 2026, 11);
    let (ssk, pvt) = loop {
        if let Ok(pair) = ksak.issue(&eid, &random()) {
            break pair;
        }
    };
    let ssk_bytes = ssk.to_bytes();
    let key = SigningKey::new(&kpak, &eid, ssk, pvt)?;
    let msg = random::<200>();

    let bin = build_harness()?;
    let hex_args = [
        hex::encode(z.to_uncompressed()),
        hex::encode(&id),
        hex::encode(&rsk_bytes[..]),
        hex::encode(ssv),
        hex::encode(data),
        hex::encode(kpak.to_uncompressed()),
        hex::encode(&eid),
        hex::encode(&ssk_bytes[..]),
        hex::encode(pvt.to_uncompressed()),
        hex::encode(msg),
    ];
    let out = Command::new(&bin).arg(iters.to_string()).args(&hex_args).output().context("running the wolfSSL harness")?;
    let _ = std::fs::remove_dir_all(bin.parent().unwrap_or(&bin));
    ensure!(out.status.success(), "wolfSSL harness failed: {}", String::from_utf8_lossy(&out.stderr));
    let theirs = String::from_utf8_lossy(&out.stdout).into_owned();
    let wolf = |op: &str| -> anyhow::Result<(f64, String)> {
        let line = theirs.lines().find(|l| l.split_whitespace().next() == Some(op)).with_context(|| format!("no {op} line from the harness"))?;
        let mut f = line.splitn(3, ' ').skip(1);
        let us = f.next().context("time")?.parse::<f64>().context("time")?;
        Ok((us, f.next().unwrap_or("none").to_string()))
    };

    // Ours, on the same inputs; each result checked once.
    let rsk = Rsk::new(&z, &id, &rsk_bytes[..])?;
    let recipient = Recipient::new(&z, &id);
    ensure!(recipient.encapsulate(&ssv)? == data, "cached encapsulation differs");
    ensure!(sakke::decapsulate(&z, &rsk, &data)?[..] == ssv[..], "decapsulation gave another SSV");
    let sig = key.sign(&msg, &random())?;
    eccsi::verify(&kpak, &eid, &msg, &sig)?;
    let mut rows = Vec::new();
    let mut row = |op: &'static str, ours: f64| -> anyhow::Result<()> {
        let (t, precomputation) = wolf(op)?;
        rows.push(Row { op, ours, theirs: t, precomputation });
        Ok(())
    };
    row(
        "rsk_validate",
        median_us(iters, || {
            Rsk::new(&z, &id, &rsk_bytes[..])?;
            Ok(())
        })?,
    )?;
    row(
        "encapsulate",
        median_us(iters, || {
            sakke::encapsulate(&z, &id, &ssv)?;
            Ok(())
        })?,
    )?;
    row(
        "encapsulate_cached",
        median_us(iters, || {
            recipient.encapsulate(&ssv)?;
            Ok(())
        })?,
    )?;
    row(
        "decapsulate",
        median_us(iters, || {
            sakke::decapsulate(&z, &rsk, &data)?;
            Ok(())
        })?,
    )?;
    let js: Vec<[u8; 32]> = (0..iters).map(|_| random()).collect();
    let mut js = js.iter();
    row(
        "eccsi_sign",
        median_us(iters, || {
            key.sign(&msg, js.next().context("j")?)?;
            Ok(())
        })?,
    )?;
    row(
        "eccsi_verify",
        median_us(iters, || {
            eccsi::verify(&kpak, &eid, &msg, &sig)?;
            Ok(())
        })?,
    )?;

    println!("{:<20} {:>10} {:>10} {:>7}  wolfSSL precomputation", "operation", "ours ms", "wolfSSL ms", "ratio");
    for r in &rows {
        println!("{:<20} {:>10.3} {:>10.3} {:>7.2}  {}", r.op, r.ours / 1e3, r.theirs / 1e3, r.ours / r.theirs, r.precomputation);
    }
    println!("(median of {iters} runs each; ratio = ours / wolfSSL, below 1 = we are faster)");
    println!("ours, once per process: first [z]P including the build of the fixed-base table of P: {first_use_ms:.1} ms;");
    println!("  first encapsulation including the build of the fixed-base table of g: {first_encapsulation_ms:.1} ms");
    Ok(ExitCode::SUCCESS)
}
