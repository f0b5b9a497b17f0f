//! `mediasec li`: client of the KMS's lawful-interception API (docs/li.md,
//! docs/openapi/kms-li.yaml): manage warrants (X1-like) and ask for a call's keys (X2-like).
//! Prints the KMS's JSON answers; exits 1 on a refusal or error, with the KMS's reason.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use super::runtime;
use mediasec_bsf::client::{Endpoint, request};

/// Arguments of `mediasec li`.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// KMS base URL (https://: the KMS serves LI over HTTPS only).
    #[arg(long)]
    kms: String,
    /// File holding the LI bearer token (first line): the warrant-provisioning token for
    /// `warrant` and `audit`, the key-retrieval token for `keys`.
    #[arg(long)]
    token_file: PathBuf,
    /// PEM CA certificate to trust for an https:// KMS.
    #[arg(long)]
    ca: Option<PathBuf>,
    #[command(subcommand)]
    action: Action,
}

#[derive(clap::Subcommand)]
enum Action {
    /// Manage warrants.
    Warrant {
        #[command(subcommand)]
        action: WarrantAction,
    },
    /// Release the SRTP keys of an intercepted call under a warrant.
    Keys {
        /// Warrant id.
        #[arg(long)]
        warrant: String,
        /// base64 TRANSFER_INIT (the `a=key-mgmt:mikey` value of the offer).
        #[arg(long)]
        transfer_init: String,
        /// base64 TRANSFER_RESP (of the answer; needed when the ticket forks).
        #[arg(long)]
        transfer_resp: Option<String>,
    },
    /// Show the LI audit trail and its hash-chain verification (exits 1 with the breaks on
    /// stderr when the chain is broken: HTTP 409).
    Audit {
        /// Only entries from this time on (UNIX milliseconds).
        #[arg(long, default_value_t = 0)]
        since_ms: u64,
    },
}

#[derive(clap::Subcommand)]
enum WarrantAction {
    /// Add or replace a warrant.
    Add {
        /// Warrant id (A-Z a-z 0-9 . _ -, at most 64).
        #[arg(long)]
        id: String,
        /// Target KMS UID (`user@domain`, exact).
        #[arg(long)]
        target: String,
        /// Start of the window, UNIX seconds.
        #[arg(long)]
        not_before: u64,
        /// End of the window (inclusive), UNIX seconds.
        #[arg(long)]
        not_after: u64,
    },
    /// List the warrants.
    List,
    /// Show one warrant.
    Show {
        /// Warrant id.
        id: String,
    },
    /// Remove a warrant.
    Remove {
        /// Warrant id.
        id: String,
    },
}

pub(crate) fn run(a: Args) -> anyhow::Result<ExitCode> {
    let token = std::fs::read_to_string(&a.token_file).with_context(|| format!("reading {}", a.token_file.display()))?;
    let auth = format!("Bearer {}", token.lines().next().unwrap_or_default().trim());
    let tls = match &a.ca {
        Some(ca) => Some(mediasec_bsf::tls::client_connector(&std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?, None)?),
        None => None,
    };
    let ep = Endpoint::new(&a.kms, tls)?;
    let (method, path, body) = match a.action {
        Action::Warrant { action: WarrantAction::Add { id, target, not_before, not_after } } => {
            let body = serde_json::json!({ "id": id, "target": target, "not_before": not_before, "not_after": not_after });
            ("PUT", format!("/li/v1/warrants/{id}"), body.to_string())
        }
        Action::Warrant { action: WarrantAction::List } => ("GET", "/li/v1/warrants".to_owned(), String::new()),
        Action::Warrant { action: WarrantAction::Show { id } } => ("GET", format!("/li/v1/warrants/{id}"), String::new()),
        Action::Warrant { action: WarrantAction::Remove { id } } => ("DELETE", format!("/li/v1/warrants/{id}"), String::new()),
        Action::Keys { warrant, transfer_init, transfer_resp } => {
            for (what, v) in [("--transfer-init", Some(&transfer_init)), ("--transfer-resp", transfer_resp.as_ref())] {
                if let Some(v) = v {
                    STANDARD.decode(v.trim()).with_context(|| format!("{what} is not base64"))?;
                }
            }
            let body = serde_json::json!({ "warrant": warrant, "transfer_init": transfer_init.trim(), "transfer_resp": transfer_resp.as_deref().map(str::trim) });
            ("POST", "/li/v1/keys".to_owned(), body.to_string())
        }
        Action::Audit { since_ms } => ("GET", format!("/li/v1/audit?since_ms={since_ms}&limit=1000"), String::new()),
    };
    let r = runtime()?.block_on(async {
        let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
        request(&ep, method, &path, &headers, body.as_bytes()).await
    })?;
    let text = String::from_utf8_lossy(&r.body);
    match r.status {
        200 => {
            println!("{}", text.trim_end());
            Ok(ExitCode::SUCCESS)
        }
        404 if text.trim().is_empty() => bail!("{} {path}: 404 (the LI API is not enabled on this KMS)", a.kms),
        s => {
            eprintln!("{method} {path}: {s} {}", text.trim());
            Ok(ExitCode::FAILURE)
        }
    }
}
