//! `mediasec bench` (being written in this session).

/// Arguments of `mediasec bench`.
#[derive(clap::Args)]
pub(crate) struct Args {}

pub(crate) fn run(_args: Args) -> anyhow::Result<std::process::ExitCode> {
    anyhow::bail!("mediasec bench is not implemented yet")
}
