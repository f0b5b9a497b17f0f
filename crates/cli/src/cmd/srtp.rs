//! `mediasec srtp encrypt|decrypt`: protect or unprotect the RTP and RTCP packets of a pcap
//! or pcapng capture, writing a pcap with every other packet unchanged.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{BufReader, BufWriter, IsTerminal, Read};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use mediasec_srtp::{is_rtcp, rtcp_ssrc, Direction, MasterKey, Policy, RtpHeader, Session, Suite};
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapReader, PcapWriter};
use pcap_file::pcapng::{Block, PcapNgReader};
use pcap_file::DataLink;

use crate::udp_frame::UdpFrame;

/// Arguments of `mediasec srtp`.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// `encrypt` (RTP → SRTP) or `decrypt` (SRTP → RTP).
    #[arg(value_enum)]
    action: Action,
    /// Crypto suite, as named in SDES (e.g. AES_CM_128_HMAC_SHA1_80, AEAD_AES_128_GCM).
    #[arg(long)]
    suite: Suite,
    /// RFC 4568 inline key: base64 of master key || master salt (with or without `=` padding).
    #[arg(long)]
    key: String,
    /// MKI (hex) carried in every packet, if the key was negotiated with one.
    #[arg(long)]
    mki: Option<String>,
    /// Only packets from or to these UDP ports (repeatable).
    #[arg(long = "udp-port")]
    udp_ports: Vec<u16>,
    /// Only these SSRCs (decimal or 0x-hex, repeatable).
    #[arg(long = "ssrc", value_parser = parse_u32)]
    ssrcs: Vec<u32>,
    /// Replay window in packets (64..=32768).
    #[arg(long, default_value_t = mediasec_srtp::DEFAULT_REPLAY_WINDOW)]
    replay_window: usize,
    /// Initial ROC of every stream (e.g. signalled by MIKEY).
    #[arg(long, default_value_t = 0)]
    roc: u32,
    /// Input capture (pcap or pcapng).
    input: PathBuf,
    /// Output capture (pcap).
    output: PathBuf,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Action {
    Encrypt,
    Decrypt,
}

fn parse_u32(s: &str) -> Result<u32, String> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => s.parse(),
    };
    r.map_err(|e| format!("{s:?}: {e}"))
}

/// Decodes an RFC 4568 inline key, accepting padded and unpadded base64.
pub(crate) fn decode_inline_key(text: &str) -> anyhow::Result<Vec<u8>> {
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    LENIENT.decode(text.trim()).context("--key is not valid base64")
}

/// Packets of a capture, whatever its format, with one link type.
enum Capture {
    Pcap(PcapReader<BufReader<File>>),
    /// The reader and the link type of each interface seen so far.
    PcapNg(PcapNgReader<BufReader<File>>, Vec<DataLink>),
}

struct Frame {
    timestamp: Duration,
    orig_len: u32,
    data: Vec<u8>,
    link: DataLink,
}

impl Capture {
    fn open(path: &PathBuf) -> anyhow::Result<Self> {
        let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let mut magic = [0u8; 4];
        file.read_exact(&mut magic).with_context(|| format!("{} is empty", path.display()))?;
        let file = BufReader::new(File::open(path)?);
        Ok(if magic == [0x0a, 0x0d, 0x0d, 0x0a] {
            Self::PcapNg(PcapNgReader::new(file).context("reading pcapng header")?, Vec::new())
        } else {
            Self::Pcap(PcapReader::new(file).context("reading pcap header")?)
        })
    }

    fn next(&mut self) -> Option<anyhow::Result<Frame>> {
        match self {
            Self::Pcap(r) => {
                let link = r.header().datalink;
                r.next_packet().map(|p| {
                    let p = p.context("reading pcap packet")?;
                    Ok(Frame { timestamp: p.timestamp, orig_len: p.orig_len, data: p.data.into_owned(), link })
                })
            }
            Self::PcapNg(r, links) => loop {
                let (timestamp, orig_len, data, interface) = match r.next_block()? {
                    Err(e) => return Some(Err(anyhow::Error::new(e).context("reading pcapng block"))),
                    Ok(Block::InterfaceDescription(i)) => {
                        links.push(i.linktype);
                        continue;
                    }
                    Ok(Block::EnhancedPacket(p)) => (p.timestamp, p.original_len, p.data.into_owned(), p.interface_id as usize),
                    Ok(Block::SimplePacket(p)) => (Duration::ZERO, p.original_len, p.data.into_owned(), 0),
                    Ok(_) => continue,
                };
                let Some(&link) = links.get(interface) else {
                    return Some(Err(anyhow::anyhow!("pcapng packet names interface {interface}, which was not described")));
                };
                return Some(Ok(Frame { timestamp, orig_len, data, link }));
            },
        }
    }
}

/// What happened to the packets, by outcome.
#[derive(Default)]
struct Tally {
    rtp: u64,
    rtcp: u64,
    passed: u64,
    failed: BTreeMap<&'static str, u64>,
}

pub(crate) fn run(args: Args) -> anyhow::Result<ExitCode> {
    let key = decode_inline_key(&args.key)?;
    let mut master = MasterKey::from_inline(args.suite, &key)
        .with_context(|| format!("{} needs a {}-octet inline key, got {}", args.suite, args.suite.inline_key_len(), key.len()))?;
    if let Some(mki) = &args.mki {
        master = master.with_mki(&hex::decode(mki).context("--mki is not hex")?);
    }
    let mut policy = Policy::new(args.suite, master);
    policy.replay_window = args.replay_window;
    policy.allow_repeat_tx = true; // re-encrypting a capture may meet retransmissions
    let mut session = Session::new(&policy).context("SRTP policy")?;
    if args.suite.is_discouraged() {
        eprintln!("warning: {} has no encryption (TS 33.328 §5.3: should not be used)", args.suite);
    }
    let direction = match args.action {
        Action::Encrypt => Direction::Outbound,
        Action::Decrypt => Direction::Inbound,
    };

    let mut capture = Capture::open(&args.input)?;
    let first = capture.next().with_context(|| format!("{} holds no packets", args.input.display()))??;
    let link = first.link;
    let header = PcapHeader { datalink: link, ts_resolution: pcap_file::TsResolution::NanoSecond, ..PcapHeader::default() };
    let file = File::create(&args.output).with_context(|| format!("creating {}", args.output.display()))?;
    let mut out = PcapWriter::with_header(BufWriter::new(file), header).context("writing pcap header")?;
    let progress = indicatif::ProgressBar::new_spinner();
    if !std::io::stderr().is_terminal() {
        progress.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut seen: HashSet<u32> = HashSet::new();
    let mut tally = Tally::default();
    let mut buf = Vec::with_capacity(65_600);
    let mut count = 0u64;
    let mut pending = Some(first);

    loop {
        let frame = match pending.take() {
            Some(frame) => frame,
            None => match capture.next() {
                Some(frame) => frame?,
                None => break,
            },
        };
        if frame.link != link {
            bail!("the capture mixes link types ({:?} and {:?}); a pcap output holds one", link, frame.link);
        }
        count += 1;
        if count.is_multiple_of(4096) {
            progress.set_message(format!("{count} packets"));
            progress.tick();
        }
        let transformed = transform(&args, &mut session, direction, &mut seen, &mut tally, &mut buf, &frame)?;
        let (data, orig_len) = match transformed {
            Transformed::Unchanged => (frame.data, frame.orig_len),
            // A rewritten frame is complete, whatever the capture's snap length was.
            Transformed::Replaced(data) => {
                let len = data.len() as u32;
                (data, len)
            }
            Transformed::Dropped => continue,
        };
        out.write_packet(&PcapPacket { timestamp: frame.timestamp, orig_len, data: data.into() })
            .context("writing pcap packet")?;
    }
    progress.finish_and_clear();
    out.into_writer().into_inner().context("flushing the output")?;
    let failed: u64 = tally.failed.values().sum();
    println!(
        "{}: {} RTP and {} RTCP packets {}, {} other packets passed unchanged, {} dropped",
        args.output.display(),
        tally.rtp,
        tally.rtcp,
        if args.action == Action::Encrypt { "protected" } else { "unprotected" },
        tally.passed,
        failed
    );
    for (reason, n) in &tally.failed {
        println!("  dropped {n} packets: {reason}");
    }
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

enum Transformed {
    Unchanged,
    Replaced(Vec<u8>),
    Dropped,
}

fn transform(
    args: &Args,
    session: &mut Session,
    direction: Direction,
    seen: &mut HashSet<u32>,
    tally: &mut Tally,
    buf: &mut Vec<u8>,
    frame: &Frame,
) -> anyhow::Result<Transformed> {
    let Some(udp) = UdpFrame::locate(frame.link, &frame.data) else { return Ok(Transformed::Unchanged) };
    if !args.udp_ports.is_empty() && !args.udp_ports.iter().any(|p| *p == udp.src_port || *p == udp.dst_port) {
        return Ok(Transformed::Unchanged);
    }
    let payload = udp.payload(&frame.data);
    let rtcp = is_rtcp(payload);
    let ssrc = if rtcp { rtcp_ssrc(payload).ok() } else { RtpHeader::parse(payload).ok().map(|h| h.ssrc) };
    let Some(ssrc) = ssrc else {
        tally.passed += 1;
        return Ok(Transformed::Unchanged);
    };
    if !args.ssrcs.is_empty() && !args.ssrcs.contains(&ssrc) {
        tally.passed += 1;
        return Ok(Transformed::Unchanged);
    }
    if !rtcp && seen.insert(ssrc) && args.roc != 0 {
        session.set_roc(direction, ssrc, args.roc).context("setting the ROC")?;
    }
    buf.clear();
    buf.extend_from_slice(payload);
    let result = match (direction, rtcp) {
        (Direction::Outbound, false) => session.protect_rtp_vec(buf),
        (Direction::Outbound, true) => session.protect_rtcp_vec(buf),
        (Direction::Inbound, false) => session.unprotect_rtp_vec(buf),
        (Direction::Inbound, true) => session.unprotect_rtcp_vec(buf),
    };
    match result {
        Ok(()) => {
            if rtcp { tally.rtcp += 1 } else { tally.rtp += 1 }
            Ok(Transformed::Replaced(udp.rebuild(&frame.data, buf)))
        }
        Err(e) => {
            *tally.failed.entry(e.reason()).or_default() += 1;
            Ok(Transformed::Dropped)
        }
    }
}
