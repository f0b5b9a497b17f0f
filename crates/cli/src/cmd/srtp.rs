//! `mediasec srtp` (being written in this session).

/// Arguments of `mediasec srtp`.
#[derive(clap::Args)]
pub(crate) struct Args {}

pub(crate) fn run(_args: Args) -> anyhow::Result<std::process::ExitCode> {
    anyhow::bail!("mediasec srtp is not implemented yet")
}
