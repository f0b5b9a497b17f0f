//! `mediasec gba bootstrap`: run the UE side of GBA bootstrapping against a BSF (lab tool).

use std::process::ExitCode;

use anyhow::{Context, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use mediasec_bsf::client;
use mediasec_gba::bootstrapping_info::format_time;
use mediasec_gba::kdf::{NafId, UaProtocolId};
use mediasec_gba::milenage::Milenage;
use mediasec_gba::ue::UeBootstrap;
use mediasec_gba::uicc::Uicc;

/// Arguments of `mediasec gba`.
#[derive(clap::Args)]
pub(crate) struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(clap::Subcommand)]
enum Action {
    /// Bootstrap (TS 24.109 §4) and print the B-TID and key expiry.
    Bootstrap {
        /// BSF URL, http://host:port or https://host:port.
        #[arg(long)]
        bsf: String,
        /// PEM CA certificate(s) to trust for an https BSF URL.
        #[arg(long)]
        ca: Option<std::path::PathBuf>,
        #[command(flatten)]
        usim: super::UsimKeys,
        /// BSF FQDN (Digest realm). Default: derived from an IMPI of the form
        /// ...@ims.mncX.mccY.3gppnetwork.org as bsf.mncX.mccY.pub.3gppnetwork.org (TS 23.003).
        #[arg(long)]
        realm: Option<String>,
        /// Highest SQN the simulated USIM has accepted (printed after each run).
        #[arg(long, default_value_t = 0)]
        sqn_ms: u64,
        /// Also derive Ks_NAF for this NAF FQDN and PRINT IT (lab debugging only).
        #[arg(long)]
        naf: Option<String>,
        /// Ua security protocol id for --naf (10 hex digits; default: TS 33.328 KMS).
        #[arg(long, default_value = "0100000006")]
        ua_id: String,
        /// GBA_U: simulate a GBA_U aware UICC that keeps Ks (TS 33.220 clause 5, Annex G); --naf
        /// then prints Ks_ext_NAF, the key the UICC gives the ME (G.2).
        #[arg(long)]
        gba_u: bool,
    },
}

pub(crate) fn key16(what: &str, s: &str) -> anyhow::Result<[u8; 16]> {
    let v = hex::decode(s).with_context(|| format!("{what} is not hex"))?;
    <[u8; 16]>::try_from(v).map_err(|_| anyhow::anyhow!("{what} must be 32 hex digits"))
}

/// The simulated USIM of `keys` (K with OPc or OP).
pub(super) fn milenage(keys: &super::UsimKeys) -> anyhow::Result<Milenage> {
    let k = key16("K", &keys.k)?;
    Ok(match (&keys.opc, &keys.op) {
        (Some(opc), _) => Milenage::with_opc(&k, &key16("OPc", opc)?),
        (None, Some(op)) => Milenage::with_op(&k, &key16("OP", op)?),
        (None, None) => bail!("give --opc or --op"),
    })
}

pub(crate) fn default_realm(impi: &str) -> Option<String> {
    let domain = impi.rsplit_once('@')?.1;
    let rest = domain.strip_prefix("ims.")?.strip_suffix(".3gppnetwork.org")?;
    Some(format!("bsf.{rest}.pub.3gppnetwork.org"))
}

pub(crate) fn run(args: Args) -> anyhow::Result<ExitCode> {
    let Action::Bootstrap { bsf, ca, usim: keys, realm, sqn_ms, naf, ua_id, gba_u } = args.action;
    let usim = milenage(&keys)?;
    let impi = keys.impi;
    let Some(realm) = realm.or_else(|| default_realm(&impi)) else {
        bail!("cannot derive the BSF FQDN from the IMPI; give --realm")
    };
    let ua = UaProtocolId::from_hex(&ua_id).context("--ua-id")?;
    let connector = match ca {
        Some(p) => Some(mediasec_bsf::tls::client_connector(&std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?, None)?),
        None => None,
    };
    let endpoint = client::Endpoint::new(&bsf, connector).context("--bsf (https needs --ca)")?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    if gba_u {
        let ue = UeBootstrap::with_uicc(impi.clone(), realm, Uicc::new(usim, sqn_ms));
        let (boot, mut uicc) = rt.block_on(client::bootstrap_gba_u(&endpoint, ue))?;
        println!("GBA_U:   Ks kept in the (simulated) UICC");
        println!("B-TID:   {}", boot.btid);
        println!("expires: {}", format_time(boot.expiry));
        println!("SQN_MS:  {}", uicc.sqn_ms());
        if let Some(fqdn) = naf {
            eprintln!("WARNING: printing a NAF key (Ks_ext_NAF); use only for lab debugging");
            let key = uicc.naf_derivation(&NafId::new(fqdn.clone(), ua), &impi)?;
            println!("Ks_ext_NAF({fqdn}, {}): {} (base64 {})", ua.to_hex(), hex::encode(key.0), STANDARD.encode(key.0));
        }
        return Ok(ExitCode::SUCCESS);
    }
    let (boot, sqn_ms) = rt.block_on(client::bootstrap(&endpoint, UeBootstrap::new(impi, realm, usim, sqn_ms)))?;
    println!("B-TID:   {}", boot.btid);
    println!("expires: {}", format_time(boot.expiry));
    println!("SQN_MS:  {sqn_ms}");
    if let Some(fqdn) = naf {
        eprintln!("WARNING: printing a NAF key (Ks_NAF); use only for lab debugging");
        let key = boot.ks_naf(&NafId::new(fqdn.clone(), ua))?;
        println!("Ks_NAF({fqdn}, {}): {} (base64 {})", ua.to_hex(), hex::encode(key.0), STANDARD.encode(key.0));
    }
    Ok(ExitCode::SUCCESS)
}
