//! `mediasec demo` (being written in this session).

/// Arguments of `mediasec demo`.
#[derive(clap::Args)]
pub(crate) struct Args {}

pub(crate) fn run(_args: Args) -> anyhow::Result<std::process::ExitCode> {
    anyhow::bail!("mediasec demo is not implemented yet")
}
