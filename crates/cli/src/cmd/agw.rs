//! `mediasec agw`: the IMS Access Gateway (TS 33.328 e2ae) controlled over the rtpengine ng
//! protocol, and `mediasec agw load`, a load generator that measures relayed packets/s of
//! any ng-speaking relay (ours or rtpengine) in the same way.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use base64::Engine as _;
use mediasec_agw::bencode::Value;
use mediasec_agw::{ensure_open_files, ng, open_files_wanted, Agw, Config, MediaPath, ServerConfig};
use mediasec_sdp::SdesPolicy;
use mediasec_srtp::{MasterKey, Policy, Session, Suite};
use rand::RngCore;

/// Arguments of `mediasec agw`.
#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct Args {
    #[command(subcommand)]
    load: Option<Sub>,
    #[command(flatten)]
    serve: Serve,
}

#[derive(clap::Args)]
struct Serve {
    /// ng control address (bencode over UDP).
    #[arg(long, default_value = "127.0.0.1:2223")]
    listen_ng: SocketAddr,
    /// Media address: sockets bind here and SDP carries it.
    #[arg(long, default_value = "127.0.0.1")]
    interface: IpAddr,
    /// Lowest media port.
    #[arg(long, default_value_t = 30000)]
    port_min: u16,
    /// Highest media port.
    #[arg(long, default_value_t = 39999)]
    port_max: u16,
    /// Seconds without media after which a call is deleted.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    /// Serve Prometheus metrics on http://ADDR/metrics.
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// Runtime worker threads for ng, timers and metrics (1: a single-threaded runtime); media
    /// is relayed by the media threads either way.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Media threads: each relays the calls of one shard (by call-id) on an equal slice of the
    /// port range [default: the CPUs this process may run on].
    #[arg(long)]
    media_threads: Option<usize>,
    /// Relay media with epoll, recvmmsg and one sendto per packet even where io_uring works
    /// (by default: multishot receives and batched sends over io_uring).
    #[arg(long)]
    no_io_uring: bool,
}

#[derive(clap::Subcommand)]
enum Sub {
    /// Load generator: sets up calls over ng (UE SRTP ⇄ core RTP), sends packets as fast as
    /// it can for a while and reports how many the relay delivered per second.
    Load(Load),
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Direction {
    /// UE sends SRTP, the core receives RTP.
    SrtpToRtp,
    /// The core sends RTP, the UE receives SRTP.
    RtpToSrtp,
}

#[derive(clap::Args)]
struct Load {
    /// The relay's ng address.
    #[arg(long)]
    ng: SocketAddr,
    /// Direction of the relayed media.
    #[arg(long, value_enum, default_value = "srtp-to-rtp")]
    direction: Direction,
    /// Concurrent calls (one sender thread sends one packet per call per round; one receiver).
    #[arg(long, default_value_t = 100)]
    calls: usize,
    /// RTP payload octets.
    #[arg(long, default_value_t = 160)]
    payload: usize,
    /// Offered packets/s over all calls (paced); 0 = as fast as possible. A relay that sheds
    /// load under a flood (rtpengine does) must be measured at paced rates.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Seconds of load.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// SDES crypto suite of the UE leg.
    #[arg(long, default_value = "AES_CM_128_HMAC_SHA1_80")]
    suite: Suite,
    /// How the receiving side waits for relayed packets.
    #[arg(long, value_enum, default_value = "block")]
    sink: Sink,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// How the load generator's receiver waits. On loopback the relay's `sendto` runs the
/// receiver's network stack inline, including waking a receiver blocked in `recvfrom`; over a
/// real network that wake-up happens on the next hop's machine. `poll` keeps the receiver off
/// the socket's wait queue so that neither relay is charged for it, and sleeps between polls
/// (rather than spinning) so that it does not take CPU time from the paced sender it shares
/// a core with, which would change how packets arrive at the relay.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Sink {
    /// Blocking `recvfrom`: the relay's send wakes the receiver (a wake-up per packet).
    Block,
    /// Non-blocking `recvfrom` until the queue is empty, then a 50 µs sleep (a timer, not
    /// the socket, wakes it).
    Poll,
}

pub(crate) fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.load {
        Some(Sub::Load(load)) => run_load(&load),
        None => serve(args.serve),
    }
}

fn serve(a: Serve) -> anyhow::Result<ExitCode> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .try_init();
    anyhow::ensure!(a.port_min < a.port_max, "--port-min must be below --port-max");
    let ports = u64::from(a.port_max - a.port_min) + 1;
    match ensure_open_files(ports) {
        Ok(limit) if limit < open_files_wanted(ports) => tracing::warn!(
            limit,
            ports,
            wanted = open_files_wanted(ports),
            "RLIMIT_NOFILE is below two descriptors per media port + 256: fewer calls fit, some ports send without a connected twin, and below about one per port media falls back to epoll"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "RLIMIT_NOFILE could not be read or raised"),
    }
    // One thread: a current-thread runtime (no work-stealing machinery per packet).
    let runtime = if a.threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()?
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(a.threads).enable_all().build()?
    };
    runtime.block_on(async {
        let config = ServerConfig {
            listen_ng: a.listen_ng,
            interface: a.interface,
            port_min: a.port_min,
            port_max: a.port_max,
            metrics: a.metrics,
            media_threads: a.media_threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from)),
            control: Config { address: a.interface, sdes: SdesPolicy::default(), timeout: Duration::from_secs(a.timeout) },
        };
        let path = if a.no_io_uring { MediaPath::Epoll } else { MediaPath::Auto };
        let agw = Agw::start_with(config, path).await.context("starting the AGW")?;
        eprintln!("mediasec agw: ng on {}", agw.ng_addr());
        tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
        anyhow::Ok(ExitCode::SUCCESS)
    })
}

fn sdp(port: u16, proto: &str, crypto: Option<&str>) -> String {
    let mut s = format!("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {port} {proto} 0\r\na=rtpmap:0 PCMU/8000\r\n");
    if let Some(c) = crypto {
        s.push_str(&format!("a=crypto:1 {c}\r\n"));
    }
    s
}

fn call(client: &UdpSocket, ng_addr: SocketAddr, req: &Value<'_>) -> anyhow::Result<String> {
    let reply = ng::request(client, ng_addr, req).context("ng request")?;
    if reply.get("result").and_then(Value::as_str) != Some("ok") {
        bail!("ng error: {:?}", reply.get("error-reason").and_then(Value::as_str));
    }
    Ok(reply.get("sdp").and_then(Value::as_str).unwrap_or_default().to_owned())
}

fn media_port(sdp: &str) -> anyhow::Result<u16> {
    sdp.lines()
        .find_map(|l| l.strip_prefix("m=audio ")?.split(' ').next()?.parse().ok())
        .context("no m=audio port in the relay's SDP")
}

fn inline_key(sdp: &str) -> anyhow::Result<Vec<u8>> {
    let b64 = sdp.lines().find_map(|l| l.split("inline:").nth(1)).context("no a=crypto in the relay's answer")?;
    let b64 = b64.split(['|', ' ']).next().unwrap_or_default().trim_end_matches('=');
    Ok(base64::engine::general_purpose::STANDARD_NO_PAD.decode(b64)?)
}

/// One call of the load: the relay's two ports and the UE's sessions.
struct Call {
    call_id: String,
    relay_ue_port: u16,
    relay_core_port: u16,
    ue_tx: Session,
    ue_rx: Session,
}

/// Sets one call up. Every call's UE side is the `ue` socket and every core side the `core`
/// socket: the relay tells calls apart by its own ports.
fn setup(client: &UdpSocket, l: &Load, n: usize, ue: &UdpSocket, core: &UdpSocket) -> anyhow::Result<Call> {
    let mut key = vec![0u8; l.suite.inline_key_len()];
    rand::rng().fill_bytes(&mut key);
    let crypto = format!("{} inline:{}", l.suite.name(), base64::engine::general_purpose::STANDARD.encode(&key));
    let call_id = format!("load-{}-{n}", rand::random::<u32>());
    let offer = Value::dict([
        ("command", Value::str("offer")),
        ("call-id", Value::str(call_id.clone())),
        ("from-tag", Value::str("ue")),
        ("sdp", Value::str(sdp(ue.local_addr()?.port(), "RTP/SAVP", Some(&crypto)))),
        ("transport-protocol", Value::str("RTP/AVP")),
    ]);
    let core_sdp = call(client, l.ng, &offer)?;
    let answer = Value::dict([
        ("command", Value::str("answer")),
        ("call-id", Value::str(call_id.clone())),
        ("from-tag", Value::str("ue")),
        ("to-tag", Value::str("core")),
        ("sdp", Value::str(sdp(core.local_addr()?.port(), "RTP/AVP", None))),
    ]);
    let ue_sdp = call(client, l.ng, &answer)?;
    let ours = inline_key(&ue_sdp)?;
    let session = |k: &[u8]| -> anyhow::Result<Session> { Ok(Session::new(&Policy::new(l.suite, MasterKey::from_inline(l.suite, k)?))?) };
    Ok(Call { call_id, relay_ue_port: media_port(&ue_sdp)?, relay_core_port: media_port(&core_sdp)?, ue_tx: session(&key)?, ue_rx: session(&ours)? })
}

/// An RTP packet whose timestamp field carries `sent_us`, the send time in µs since the run
/// began (both relays pass the header through), so that the sink measures each packet's
/// time through the relay.
fn rtp(seq: u16, ssrc: u32, sent_us: u32, payload: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&[0x80, 0]);
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&sent_us.to_be_bytes());
    out.extend_from_slice(&ssrc.to_be_bytes());
    out.extend_from_slice(payload);
}

/// The polling sink's sleep when its socket is empty.
const POLL_SLEEP: Duration = Duration::from_micros(50);

/// Microseconds since `epoch`, as the 32-bit clock of [`rtp`]'s timestamps (wraps after 71 min).
fn micros_since(epoch: Instant) -> u32 {
    epoch.elapsed().as_micros() as u32
}

/// The `q`-quantile of sorted samples (0 when there are none).
fn quantile(sorted: &[u32], q: f64) -> u32 {
    let at = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted.get(at).copied().unwrap_or(0)
}

fn run_load(l: &Load) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(l.payload <= 1400 && l.calls >= 1, "--payload ≤ 1400 and --calls ≥ 1");
    let client = UdpSocket::bind("127.0.0.1:0")?;
    client.set_read_timeout(Some(Duration::from_secs(3)))?;
    let ping = ng::request(&client, l.ng, &Value::dict([("command", Value::str("ping"))])).context("ping")?;
    anyhow::ensure!(ping.get("result").and_then(Value::as_str) == Some("pong"), "no pong from {}", l.ng);
    let ue = UdpSocket::bind("127.0.0.1:0")?;
    let core = UdpSocket::bind("127.0.0.1:0")?;
    let calls = (0..l.calls).map(|n| setup(&client, l, n, &ue, &core)).collect::<anyhow::Result<Vec<_>>>()?;
    let (tx_sock, rx_sock) = match l.direction {
        Direction::SrtpToRtp => (ue, core),
        Direction::RtpToSrtp => (core, ue),
    };
    match l.sink {
        Sink::Block => rx_sock.set_read_timeout(Some(Duration::from_millis(200)))?,
        Sink::Poll => rx_sock.set_nonblocking(true)?,
    }
    // The sink's queue takes a whole round of every call even while the polling sink sleeps:
    // a loss must be the relay's, not an overflow of the generator's own socket (the kernel caps
    // this at net.core.rmem_max).
    nix::sys::socket::setsockopt(&rx_sock, nix::sys::socket::sockopt::RcvBuf, &(4 << 20)).context("SO_RCVBUF of the sink")?;
    let (stop, measuring) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
    let epoch = Instant::now();
    let (sent, received, verified) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut payload = vec![0u8; l.payload];
    rand::rng().fill_bytes(&mut payload);
    let direction = l.direction;
    // Receiver: by the relay's source port it knows the call (for SRTP content checks).
    let mut rx_sessions: std::collections::HashMap<u16, Session> = std::collections::HashMap::new();
    let mut senders = Vec::new();
    let mut call_ids = Vec::new();
    for c in calls {
        call_ids.push(c.call_id);
        let (dest, src) = match direction {
            Direction::SrtpToRtp => (c.relay_ue_port, c.relay_core_port),
            Direction::RtpToSrtp => (c.relay_core_port, c.relay_ue_port),
        };
        rx_sessions.insert(src, c.ue_rx);
        senders.push((SocketAddr::from(([127, 0, 0, 1], dest)), c.ue_tx));
    }
    let receiver = {
        let (stop, measuring, received, verified, expected) = (stop.clone(), measuring.clone(), received.clone(), verified.clone(), payload.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            // Time through the relay of each packet received while measuring, in µs.
            let mut latency = Vec::with_capacity(1 << 20);
            loop {
                match rx_sock.recv_from(&mut buf) {
                    Ok((len, from)) => {
                        if measuring.load(Ordering::Relaxed)
                            && let Some(sent) = buf.get(4..8).and_then(|t| t.try_into().ok()).map(u32::from_be_bytes)
                        {
                            latency.push(micros_since(epoch).wrapping_sub(sent));
                        }
                        // Check the content of a sample (every 64th packet).
                        if received.fetch_add(1, Ordering::Relaxed) % 64 == 0 {
                            let mut p = buf.get(..len).unwrap_or_default().to_vec();
                            let ok = match direction {
                                Direction::SrtpToRtp => true,
                                Direction::RtpToSrtp => rx_sessions.get_mut(&from.port()).is_some_and(|s| s.unprotect_rtp_vec(&mut p).is_ok()),
                            };
                            if ok && p.get(12..) == Some(&expected[..]) {
                                verified.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    Err(_) if stop.load(Ordering::Relaxed) => return latency,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(POLL_SLEEP),
                    Err(_) => {}
                }
            }
        })
    };
    // Sender: one packet per call per round (no per-stream bursts), paced to --rate.
    let sender = {
        let (stop, sent, body, rate) = (stop.clone(), sent.clone(), payload.clone(), l.rate as f64);
        std::thread::spawn(move || {
            let mut packet = Vec::with_capacity(1500);
            let mut seq: u16 = 0;
            let (start, mut done) = (Instant::now(), 0u64);
            while !stop.load(Ordering::Relaxed) {
                if rate > 0.0 && (start.elapsed().as_secs_f64() * rate) as u64 <= done {
                    std::thread::sleep(Duration::from_micros(200));
                    continue;
                }
                for (n, (to, tx)) in senders.iter_mut().enumerate() {
                    rtp(seq, 0x1000 + n as u32, micros_since(epoch), &body, &mut packet);
                    if direction == Direction::SrtpToRtp && tx.protect_rtp_vec(&mut packet).is_err() {
                        return;
                    }
                    if tx_sock.send_to(&packet, *to).is_ok() {
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                }
                done += senders.len() as u64;
                seq = seq.wrapping_add(1);
            }
        })
    };
    // Warm-up, then measure.
    std::thread::sleep(Duration::from_millis(300));
    measuring.store(true, Ordering::Relaxed);
    let (s0, r0, t0) = (sent.load(Ordering::Relaxed), received.load(Ordering::Relaxed), Instant::now());
    std::thread::sleep(Duration::from_secs_f64(l.seconds));
    let (s1, r1, dt) = (sent.load(Ordering::Relaxed), received.load(Ordering::Relaxed), t0.elapsed().as_secs_f64());
    measuring.store(false, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let _ = sender.join();
    let mut latency = receiver.join().unwrap_or_default();
    latency.sort_unstable();
    let (p50, p99, max) = (quantile(&latency, 0.5), quantile(&latency, 0.99), latency.last().copied().unwrap_or(0));
    for id in call_ids {
        let _ = call(&client, l.ng, &Value::dict([("command", Value::str("delete")), ("call-id", Value::str(id)), ("from-tag", Value::str("ue"))]));
    }
    let (sent_pps, relayed_pps) = ((s1 - s0) as f64 / dt, (r1 - r0) as f64 / dt);
    let loss = if s1 > s0 { 1.0 - (r1 - r0) as f64 / (s1 - s0) as f64 } else { 1.0 };
    let sampled = received.load(Ordering::Relaxed).div_ceil(64);
    let ok = verified.load(Ordering::Relaxed);
    let dir = match l.direction {
        Direction::SrtpToRtp => "srtp-to-rtp",
        Direction::RtpToSrtp => "rtp-to-srtp",
    };
    let sink = match l.sink {
        Sink::Block => "block",
        Sink::Poll => "poll",
    };
    if l.json {
        println!(
            "{}",
            serde_json::json!({"direction": dir, "suite": l.suite.name(), "payload": l.payload, "calls": l.calls, "sink": sink,
                "seconds": dt, "sent_pps": sent_pps, "relayed_pps": relayed_pps, "loss": loss,
                "sent_total": sent.load(Ordering::Relaxed), "received_total": received.load(Ordering::Relaxed), "sampled": sampled, "sampled_ok": ok,
                "latency_us": {"p50": p50, "p99": p99, "max": max}})
        );
    } else {
        println!(
            "{dir} {} {} B, {} calls, {sink} sink: offered {sent_pps:.0} pkt/s, relayed {relayed_pps:.0} pkt/s (loss {:.2} %); through the relay p50 {p50} µs, p99 {p99} µs, max {max} µs; content check {ok}/{sampled} sampled packets",
            l.suite,
            l.payload,
            l.calls,
            loss * 100.0
        );
    }
    Ok(if ok == sampled && sampled > 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The load generator against our relay, both directions, both sinks: every sampled
    /// packet's content checks out (the run's exit status) and packets were relayed.
    #[test]
    fn load_runs_against_our_relay_with_both_sinks() {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let port_min = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port().min(60000);
        let agw = rt
            .block_on(Agw::start(ServerConfig {
                listen_ng: "127.0.0.1:0".parse().unwrap(),
                interface: "127.0.0.1".parse().unwrap(),
                port_min,
                port_max: port_min + 99,
                metrics: None,
                media_threads: 2,
                control: Config { address: "127.0.0.1".parse().unwrap(), sdes: SdesPolicy::default(), timeout: Duration::from_secs(30) },
            }))
            .unwrap();
        for sink in [Sink::Block, Sink::Poll] {
            for direction in [Direction::SrtpToRtp, Direction::RtpToSrtp] {
                let load = Load {
                    ng: agw.ng_addr(),
                    direction,
                    calls: 4,
                    payload: 160,
                    rate: 2000,
                    seconds: 0.3,
                    suite: Suite::AesCm128HmacSha1_80,
                    sink,
                    json: true,
                };
                assert_eq!(run_load(&load).unwrap(), ExitCode::SUCCESS);
            }
        }
        assert_eq!(agw.call_count(), 0, "the load deletes its calls");
    }

    #[test]
    fn latency_quantiles_come_from_the_sorted_samples() {
        let samples: Vec<u32> = (1..=100).collect();
        assert_eq!((quantile(&samples, 0.5), quantile(&samples, 0.99), quantile(&samples, 1.0)), (51, 99, 100));
        assert_eq!(quantile(&[7], 0.99), 7);
        assert_eq!(quantile(&[], 0.5), 0);
    }
}
