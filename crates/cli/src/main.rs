//! `mediasec`: the command-line front end. Each subcommand lives in `cmd/<name>.rs`.

mod cmd;
mod udp_frame;

/// mimalloc instead of the system allocator: the servers' request paths (HTTP, MIKEY encoding,
/// key derivation) allocate per request, and mimalloc makes the KMS 1.1–1.8× faster in pairs/s
/// and 1.27× cheaper in CPU per ticket than glibc malloc (BENCHMARKS.md § KMS, "mimalloc").
/// Secrets are zeroized by their owners before they are freed, whatever the allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};

/// IMS media plane security (3GPP TS 33.328).
#[derive(Parser)]
#[command(name = "mediasec", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole system on loopback and print a summary.
    Demo(cmd::demo::Args),
    /// Protect or unprotect RTP/RTCP packets in a pcap file.
    Srtp(cmd::srtp::Args),
    /// Decode the key-management attributes of an SDP body (a=crypto, a=key-mgmt, a=3ge2ae).
    Sdp(cmd::sdp::Args),
    /// Decode MIKEY / MIKEY-TICKET messages.
    Mikey(cmd::mikey::Args),
    /// GBA BSF: serve Ub/Zn/admin, manage subscribers, benchmark.
    Bsf(cmd::bsf::Args),
    /// GBA UE: bootstrap against a BSF.
    Gba(cmd::gba::Args),
    /// KMS (TS 33.328 MIKEY-TICKET over Ua, Zk): serve, lab PKI.
    Kms(cmd::kms::Args),
    /// Lawful interception at the KMS: warrants, key release, LI audit trail (client).
    Li(cmd::li::Args),
    /// IMS Access Gateway (e2ae SRTP termination) driven by the rtpengine ng protocol; `agw load` measures a relay.
    Agw(cmd::agw::Args),
    /// UE: register, place and answer calls with per-call media security; `ua lab` runs the SIP scenarios.
    Ua(cmd::ua::Args),
    /// P-CSCF / S-CSCF: registrar, routing between domains, forking, retargeting.
    Cscf(cmd::cscf::Args),
    /// Benchmarks that anyone can run on their own machine.
    Bench(cmd::bench::Args),
    /// Voicemail for MIKEY-TICKET calls (deferred delivery): serve, or fetch and decrypt as the mailbox owner.
    Voicemail(cmd::voicemail::Args),
}

fn main() -> anyhow::Result<std::process::ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::Demo(args) => cmd::demo::run(args),
        Command::Srtp(args) => cmd::srtp::run(args),
        Command::Sdp(args) => cmd::sdp::run(args),
        Command::Mikey(args) => cmd::mikey::run(args),
        Command::Bsf(args) => cmd::bsf::run(args),
        Command::Gba(args) => cmd::gba::run(args),
        Command::Kms(args) => cmd::kms::run(args),
        Command::Li(args) => cmd::li::run(args),
        Command::Agw(args) => cmd::agw::run(args),
        Command::Ua(args) => cmd::ua::run(args),
        Command::Cscf(args) => cmd::cscf::run(args),
        Command::Bench(args) => cmd::bench::run(args),
        Command::Voicemail(args) => cmd::voicemail::run(args),
    }
}
