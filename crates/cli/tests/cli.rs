//! The `mediasec` binary end to end: `mediasec demo` passes, and `mediasec srtp decrypt` turns
//! a capture protected by libsrtp 2.7 back into the original capture byte for byte (`encrypt`
//! reproduces libsrtp's capture; other packets pass unchanged).
#![allow(clippy::indexing_slicing)] // test code indexes the frames and JSON it built

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
use pcap_file::TsResolution;

const SUITE: &str = "AES_CM_128_HMAC_SHA1_80";

fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header.chunks(2).map(|w| u32::from(u16::from_be_bytes([w[0], w[1]]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Ethernet / IPv4 / UDP (checksum 0, allowed for IPv4 by RFC 768) around `payload`.
fn frame(src: u16, dst: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00];
    let total = (20 + 8 + payload.len()) as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0, 127, 0, 0, 1, 127, 0, 0, 1]);
    let c = ipv4_checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&src.to_be_bytes());
    f.extend_from_slice(&dst.to_be_bytes());
    f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

fn write_pcap(path: &Path, frames: &[Vec<u8>]) {
    let header = PcapHeader { ts_resolution: TsResolution::NanoSecond, ..PcapHeader::default() };
    let mut w = PcapWriter::with_header(std::fs::File::create(path).expect("create"), header).expect("header");
    for (i, f) in frames.iter().enumerate() {
        let ts = Duration::from_millis(20 * i as u64);
        w.write_packet(&PcapPacket::new(ts, f.len() as u32, f)).expect("write");
    }
}

fn rtp(seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x80, 0];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    p.extend_from_slice(&0x1122_3344u32.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// Protects `packets` with libsrtp 2.7; `None` if the peer cannot be built here (a hard
/// failure when MEDIASEC_REQUIRE_PEERS=1).
fn libsrtp_protect(key: &[u8], packets: &[Vec<u8>]) -> Option<Vec<Vec<u8>>> {
    use mediasec_testkit::libsrtp::{Kind, Op, Params, Peer, OK};
    let peer = Peer::get()?;
    let params = Params { suite: SUITE, key, mki: &[], window: 128 };
    let out = peer.run(Op::Protect, Kind::Rtp, params, packets);
    Some(out.into_iter().map(|(status, p)| {
        assert_eq!(status, OK, "libsrtp protect failed");
        p
    }).collect())
}

/// The BSF master key of the processes these tests start (`--master-key`).
const BSF_MASTER: &str = "4242424242424242424242424242424242424242424242424242424242424242";

fn mediasec(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mediasec")).args(args).output().expect("run mediasec")
}

#[test]
fn decrypts_a_libsrtp_capture_exactly_and_round_trips() {
    let dir = std::env::temp_dir().join(format!("mediasec-pcap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let key: Vec<u8> = (0..30u8).map(|i| i.wrapping_mul(37).wrapping_add(11)).collect();
    // Unpadded base64, as rtpengine writes it.
    let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD_NO_PAD, &key);
    // 3000 packets crossing the sequence wrap (ROC 0 -> 1).
    let plain: Vec<Vec<u8>> = (0..3000u32).map(|i| rtp((64000 + i) as u16, &[(i % 251) as u8; 160])).collect();
    let Some(protected) = libsrtp_protect(&key, &plain) else { return };
    let other = frame(53, 53, b"not media at all");
    let mut original: Vec<Vec<u8>> = plain.iter().map(|p| frame(4000, 5000, p)).collect();
    original.insert(100, other.clone());
    let mut srtp: Vec<Vec<u8>> = protected.iter().map(|p| frame(4000, 5000, p)).collect();
    srtp.insert(100, other);
    let (orig_path, srtp_path, out_path) = (dir.join("plain.pcap"), dir.join("srtp.pcap"), dir.join("out.pcap"));
    write_pcap(&orig_path, &original);
    write_pcap(&srtp_path, &srtp);

    let out = mediasec(&["srtp", "decrypt", "--suite", SUITE, "--key", &b64, srtp_path.to_str().expect("utf8"), out_path.to_str().expect("utf8")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(std::fs::read(&out_path).expect("out"), std::fs::read(&orig_path).expect("orig"), "decrypted capture differs");

    // Our encrypt gives libsrtp's bytes back.
    let re = dir.join("re.pcap");
    let out = mediasec(&["srtp", "encrypt", "--suite", SUITE, "--key", &b64, orig_path.to_str().expect("utf8"), re.to_str().expect("utf8")]);
    assert!(out.status.success());
    assert_eq!(std::fs::read(&re).expect("re"), std::fs::read(&srtp_path).expect("srtp"));

    // A wrong key: every media packet is dropped and counted, the exit status says so.
    let bad = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [0u8; 30]);
    let out = mediasec(&["srtp", "decrypt", "--suite", SUITE, "--key", &bad, srtp_path.to_str().expect("utf8"), out_path.to_str().expect("utf8")]);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("dropped 3000 packets: auth_failed"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn demo_passes_every_scenario() {
    let out = mediasec(&["demo", "--packets", "300"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!text.contains("FAILED"), "{text}\n{err}");
    assert!(out.status.success(), "{text}\n{err}");
    // The SRTP stage: one line per suite, each "ok".
    for suite in ["AES_CM_128_HMAC_SHA1_80", "AEAD_AES_256_GCM", "NULL_HMAC_SHA1_32"] {
        let line = text.lines().find(|l| l.starts_with(suite)).unwrap_or_else(|| panic!("no {suite} line in\n{text}"));
        assert!(line.contains(" ok"), "{line}");
    }
    // The KMS scenarios (SRTP verified both ways, or the refusal seen), then the SIP calls
    // (media checked by tone); each line ends "ok: <detail>".
    let kms = [
        "same-domain call",
        "cross-domain call (Zk)",
        "reusable ticket",
        "group ticket",
        "forked call ",
        "mode-3 (UE-made) ticket",
        "refused call (policy)",
        "tampered ticket",
    ];
    let sip = [
        "call, no key management (RTP)",
        "call, SDES e2e (SRTP)",
        "forked call, SDES e2e, 2 contacts",
        "early media, SDES e2e",
        "re-keyed call, SDES e2e",
        "call, MIKEY-TICKET e2e (KMS)",
        "forked call, MIKEY-TICKET, 2 contacts",
        "re-keyed call, MIKEY-TICKET",
        "offerless call, MIKEY-TICKET (the callee requests the ticket)",
        "high-security call (ECCSI-signed MIKEY-DH): media verified both ways; KMS cannot derive the keys",
        "MIKEY-SAKKE call (TS 33.180-style identity-based keys): media verified both ways; the KMS releases its keys under a warrant",
        "MIKEY-SAKKE across two communities (KMS certificates learned over Zk)",
        "e2ae call (IMS-ALG + AGW)",
        "re-keyed e2ae call (UPDATE via the AGW)",
        "e2ae call with preconditions (reliable 183, PRACK, early UPDATE via the AGW)",
        "offerless e2ae call (offer in the 200, answer in the ACK)",
    ];
    for name in kms.iter().chain(&sip) {
        let line = text.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no {name} line in\n{text}"));
        assert!(line.contains(" ms  ok: "), "{line}");
    }
    assert!(text.contains("second call: 0 KMS requests"), "{text}");
    assert!(text.contains("KMS LI key release: refused (no ticket, no key)"), "{text}");
    assert!(text.contains("KMS LI key release under a warrant: the call's keys, both ways"), "{text}");
    assert!(text.contains("I_MESSAGE names KMS a (signer) and KMS b (Z), callee's KMS LI key release under a warrant: the call's keys, both ways; caller's KMS: refused, encapsulated under kms.b.example"), "{text}");
}

/// Every published MIKEY vector and every message the MIKEY / MIKEY-TICKET builders produce
/// (the seeded corpus) is printed as a full tree: header, then every payload in wire order
/// with contiguous offsets; `--json` follows the schema of docs/mikey.md.
#[test]
fn mikey_decode_prints_the_full_tree_of_every_vector_and_builder_message() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let vectors: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(root.join("tests/vectors/mikey_messages_and_prf.json")).expect("vectors")).expect("json");
    let mut inputs: Vec<(String, Vec<u8>)> = Vec::new();
    for v in vectors["vectors"].as_array().expect("vectors") {
        if let Some(b64) = v["base64"].as_str() {
            let bytes = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b64).expect("base64");
            inputs.push((v["id"].as_str().expect("id").to_owned(), bytes));
        }
    }
    let corpus = root.join("fuzz/corpus/mikey_decode");
    let mut built = 0;
    for e in std::fs::read_dir(&corpus).expect("corpus") {
        let path = e.expect("entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
        if name.starts_with("ticket-") || name.starts_with("psk-") {
            built += 1;
            inputs.push((name, std::fs::read(&path).expect("read")));
        }
    }
    assert!(inputs.len() >= 19 && built >= 16, "{} inputs", inputs.len());
    let dir = std::env::temp_dir().join(format!("mediasec-mikey-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    for (name, bytes) in &inputs {
        let file = dir.join("m.bin");
        std::fs::write(&file, bytes).expect("write");
        let f = file.to_str().expect("utf8");
        let out = mediasec(&["mikey", "decode", "--raw", f, "--json"]);
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        let j: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        assert_eq!(j["length"], bytes.len(), "{name}");
        let payloads = j["payloads"].as_array().expect("payloads");
        let mut pos = j["header"]["length"].as_u64().expect("header length");
        for p in payloads {
            assert_eq!(p["offset"], pos, "{name}: payloads are contiguous");
            assert!(p["payload"]["name"].is_string(), "{name}: {p}");
            pos += p["length"].as_u64().expect("length");
        }
        assert_eq!(pos as usize, bytes.len(), "{name}: the payloads cover the message");
        // The text tree: the same payloads in wire order, header fields in header order.
        let text = String::from_utf8(mediasec(&["mikey", "decode", "--raw", f]).stdout).expect("utf8");
        let titles: Vec<&str> = text.lines().filter(|l| l.starts_with("  [")).collect();
        assert_eq!(titles.len(), payloads.len(), "{name}:\n{text}");
        for (i, (t, p)) in titles.iter().zip(payloads).enumerate() {
            assert_eq!(*t, format!("  [{i}] {}", p["payload"]["name"].as_str().expect("name")), "{name}");
        }
        let order: Vec<usize> = ["version:", "data_type:", "next_payload:", "v:", "prf_func:", "csb_id:", "n_cs:", "cs_id_map_type:", "payloads:"]
            .iter()
            .map(|k| text.find(k).unwrap_or_else(|| panic!("{name}: no {k}")))
            .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{name}: not in wire order:\n{text}");
    }
    // MIKEY-TICKET content Wireshark cannot show: ticket policy, ticket data, Initiator Data.
    let ti = std::fs::read(corpus.join("ticket-fork-transfer_init.bin")).expect("ti");
    let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &ti);
    let text = String::from_utf8(mediasec(&["mikey", "decode", &b64]).stdout).expect("utf8");
    for needle in ["data_type: TRANSFER_INIT (14)", "flags: DEFHINO", "thdr_data: 00000007", "initiator_data:", "[0] V", "[1] V"] {
        assert!(text.contains(needle), "{needle} missing:\n{text}");
    }
    // Bad input: precise error with the byte offset.
    let out = mediasec(&["mikey", "decode", &b64[..40]]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("at byte"), "{}", String::from_utf8_lossy(&out.stderr));
    let _ = std::fs::remove_dir_all(&dir);
}

/// `mediasec sdp inspect` prints the full MIKEY tree of each `a=key-mgmt:mikey` (the tree
/// of `mediasec mikey decode`), key material hidden unless --show-keys.
#[test]
fn sdp_inspect_prints_the_mikey_tree_of_each_key_mgmt() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let ti = std::fs::read(root.join("fuzz/corpus/mikey_decode/ticket-transfer_init.bin")).expect("ti");
    let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &ti);
    let body = format!("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\na=key-mgmt:mikey {b64}\r\nm=audio 4000 RTP/SAVP 0\r\n");
    let dir = std::env::temp_dir().join(format!("mediasec-sdp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("offer.sdp");
    std::fs::write(&file, body).expect("write");
    let f = file.to_str().expect("utf8");
    let out = mediasec(&["sdp", "inspect", f]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).expect("utf8");
    let decode = String::from_utf8(mediasec(&["mikey", "decode", &b64]).stdout).expect("utf8");
    // Same tree, indented under the key-mgmt line.
    for line in decode.lines().filter(|l| !l.contains("key:") && !l.contains("salt:")) {
        assert!(text.contains(&format!("      {line}\n")), "missing {line:?} in\n{text}");
    }
    assert!(text.find("line 6: a=key-mgmt mikey").expect("key-mgmt") < text.find("data_type: TRANSFER_INIT (14)").expect("tree"), "{text}");
    let out = mediasec(&["sdp", "inspect", "--json", f]);
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let m = &j["levels"][0]["key_mgmt"][0]["value"]["mikey"];
    assert_eq!(m["header"]["data_type"]["name"], "TRANSFER_INIT");
    assert_eq!(m["length"], ti.len());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A `mediasec` server as a real process (killed on drop), at the address it printed.
struct ServerProcess {
    child: std::process::Child,
    addr: String,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const KMS_MASTER: &str = "3c5f0e9d8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d";

/// Starts `kms serve` on `store` and waits for its listening line; `None` with the reason on
/// stderr when it exits first.
fn kms_serve(store: &str, extra: &[&str]) -> Result<ServerProcess, String> {
    kms_serve_as("kms.a.example", store, extra)
}

/// [`kms_serve`] of the KMS `fqdn`.
fn kms_serve_as(fqdn: &str, store: &str, extra: &[&str]) -> Result<ServerProcess, String> {
    use std::io::BufRead as _;
    let mut args = vec![
        "kms", "serve", "--fqdn", fqdn, "--store", store, "--bsf", "http://127.0.0.1:9", "--zn-token", "zn",
        "--admin-token", "adm", "--listen", "127.0.0.1:0", "--reload", "1",
    ];
    args.extend_from_slice(extra);
    let mut child = Command::new(env!("CARGO_BIN_EXE_mediasec"))
        .args(&args)
        .env("MEDIASEC_KMS_MASTER_KEY", KMS_MASTER)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn mediasec kms serve");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    let mut reader = std::io::BufReader::new(stdout);
    let _ = reader.read_line(&mut line);
    // Kept open: with Zk, `kms serve` prints a second line ("Zk listening …"), and a closed
    // pipe would make that print fail and the process exit.
    child.stdout = Some(reader.into_inner());
    match line.rsplit_once("://") {
        Some((_, addr)) => Ok(ServerProcess { child, addr: addr.trim().to_owned() }),
        None => {
            let out = child.wait_with_output().expect("wait");
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

/// One HTTP/1.1 request (`Connection: close`, with the KMS admin bearer token, which other
/// servers ignore); (status, body).
fn http_request(addr: &str, method: &str, path: &str, body: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer adm\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}", body.len())?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let status = raw.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((status, raw.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default()))
}

/// Admin writes (per-user policies, key rotations) until the server is killed; returns the
/// ones acknowledged with 200 before the kill.
fn kms_load_then_kill(p: ServerProcess) -> (Vec<usize>, usize) {
    let addr = p.addr.clone();
    let writer = std::thread::spawn(move || {
        let (mut users, mut rotations) = (Vec::new(), 0);
        for i in 0.. {
            let ok = if i % 5 == 4 {
                http_request(&addr, "POST", "/admin/v1/keys/rotate", "").map(|(s, _)| s == 200)
            } else {
                http_request(&addr, "PUT", &format!("/admin/v1/policies/users/u{i}@a.example"), "reusable = true\n").map(|(s, _)| s == 200)
            };
            match ok {
                Ok(true) if i % 5 == 4 => rotations += 1,
                Ok(true) => users.push(i),
                _ => break,
            }
        }
        (users, rotations)
    });
    std::thread::sleep(Duration::from_millis(700));
    let mut p = p;
    let _ = p.child.kill(); // SIGKILL
    let _ = p.child.wait();
    writer.join().expect("writer")
}

fn kms_check_durable(p: &ServerProcess, users: &[usize], rotations: usize) {
    let (s, doc) = http_request(&p.addr, "GET", "/admin/v1/policies", "").expect("policies");
    assert_eq!(s, 200);
    for i in users {
        assert!(doc.contains(&format!("\"u{i}@a.example\"")), "acknowledged policy of u{i} lost");
    }
    let (_, keys) = http_request(&p.addr, "GET", "/admin/v1/keys", "").expect("keys");
    let n = keys.matches("\"id\"").count();
    assert!(n > rotations, "{rotations} acknowledged rotations, {n} keys after restart: {keys}");
}

/// `mediasec cscf --metrics`: an S-CSCF as a real process answers an OPTIONS over UDP, and its
/// Prometheus endpoint then counts that request, with the SIP endpoint's bounds at 0.
#[test]
fn cscf_serves_prometheus_metrics() {
    use std::io::BufRead as _;
    let mut child = Command::new(env!("CARGO_BIN_EXE_mediasec"))
        .args(["cscf", "--role", "scscf", "--domain", "b.example", "--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn mediasec cscf");
    let mut lines = std::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut printed = |prefix: &str| lines.next().and_then(Result::ok).and_then(|l| l.strip_prefix(prefix).map(str::to_owned)).expect(prefix);
    let sip = printed("listening on ");
    let metrics = printed("metrics on http://").trim_end_matches("/metrics").to_owned();
    let cscf = ServerProcess { child, addr: metrics };

    let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    udp.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let me = udp.local_addr().expect("addr");
    let options = format!(
        "OPTIONS sip:b.example SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKmetrics\r\nMax-Forwards: 70\r\n\
From: <sip:alice@a.example>;tag=1\r\nTo: <sip:b.example>\r\nCall-ID: metrics\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    );
    udp.send_to(options.as_bytes(), sip.as_str()).expect("send");
    let mut buf = [0u8; 4096];
    let (n, _) = udp.recv_from(&mut buf).expect("a response");
    assert!(buf.get(..n).expect("datagram").starts_with(b"SIP/2.0 "), "{}", String::from_utf8_lossy(&buf));

    let (status, body) = http_request(&cscf.addr, "GET", "/metrics", "").expect("GET /metrics");
    assert_eq!(status, 200, "{body}");
    for line in ["mediasec_cscf_requests_total 1", "mediasec_sip_overload_refused_total 0", "mediasec_sip_udp_queue_refused_total 0", "mediasec_sip_tcp_accepts_refused_total 0", "mediasec_sip_dns_lookups_refused_total 0", "mediasec_sip_dns_failovers_total 0", "# TYPE mediasec_sip_dns_lookups_running gauge", "# TYPE mediasec_cscf_requests_in_flight gauge"] {
        assert!(body.lines().any(|l| l == line), "{line} in\n{body}");
    }
    assert_eq!(http_request(&cscf.addr, "GET", "/other", "").expect("GET").0, 404);
}

/// A `mediasec` process whose first stdout lines are read as they come (killed on drop).
fn spawn_reading(args: &[&str]) -> (ServerProcess, std::io::Lines<std::io::BufReader<std::process::ChildStdout>>) {
    use std::io::BufRead as _;
    let mut child = Command::new(env!("CARGO_BIN_EXE_mediasec"))
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn mediasec");
    let lines = std::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    (ServerProcess { child, addr: String::new() }, lines)
}

/// SIP over TLS between UE and P-CSCF with the CLI (`mediasec cscf --tls-cert/--tls-key`,
/// `mediasec ua run --tls-ca`): an S-CSCF; a P-CSCF on TLS with a lab certificate for 127.0.0.1
/// written to files here; bob answering and alice calling him, each reaching the P-CSCF's TLS
/// port: both register over TLS, the SDES call verifies media both ways under the keys each
/// side offered, and the P-CSCF's metrics count the two UEs' TLS connections, no failed
/// handshake.
#[test]
fn sdes_call_between_two_ua_processes_over_tls_to_the_pcscf() {
    let dir = std::env::temp_dir().join(format!("mediasec-cli-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let pki = mediasec_sip::tls::LabPki::generate(&["127.0.0.1"]).expect("lab PKI");
    let file = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write PEM");
        path.to_string_lossy().into_owned()
    };
    let (ca, cert, key) = (file("ca.pem", &pki.ca_pem), file("pcscf.pem", &pki.cert_pem), file("pcscf.key.pem", &pki.key_pem));
    let printed = |lines: &mut std::io::Lines<std::io::BufReader<std::process::ChildStdout>>, prefix: &str| {
        lines.next().and_then(Result::ok).and_then(|l| l.strip_prefix(prefix).map(str::to_owned)).unwrap_or_else(|| panic!("{prefix}"))
    };
    let (_scscf, mut lines) = spawn_reading(&["cscf", "--role", "scscf", "--domain", "a.example", "--listen", "127.0.0.1:0"]);
    let scscf = printed(&mut lines, "listening on ");
    let pcscf_args = [
        "cscf", "--role", "pcscf", "--domain", "a.example", "--scscf", &scscf, "--listen", "127.0.0.1:0", "--mediasec", "--tls-cert", &cert, "--tls-key", &key,
        "--tls-port", "0", "--metrics", "127.0.0.1:0",
    ];
    let (_pcscf, mut lines) = spawn_reading(&pcscf_args);
    printed(&mut lines, "listening on ");
    let tls = printed(&mut lines, "TLS on ");
    let metrics = printed(&mut lines, "metrics on http://").trim_end_matches("/metrics").to_owned();

    let ua = |aor: &str, extra: &[&str]| {
        let mut args = vec!["ua", "run", "--aor", aor, "--proxy", tls.as_str(), "--tls-ca", ca.as_str()];
        args.extend_from_slice(extra);
        spawn_reading(&args)
    };
    let (mut bob, mut bob_lines) = ua("sip:bob@a.example", &["--duration", "6", "--tone", "1500", "--expect", "1000", "--min-verified", "20"]);
    let registered = bob_lines.next().and_then(Result::ok).expect("bob registered");
    assert!(registered.contains("\"registered\":200") && registered.contains("\"tls\":true"), "{registered}");
    let (mut alice, alice_lines) = ua("sip:alice@a.example", &["--call", "sip:bob@a.example", "--duration", "1.5", "--min-verified", "20"]);
    let alice_out: Vec<String> = alice_lines.map_while(Result::ok).collect();
    assert!(alice.child.wait().expect("alice").success(), "{alice_out:?}");
    let bob_out: Vec<String> = bob_lines.map_while(Result::ok).collect();
    assert!(bob.child.wait().expect("bob").success(), "{bob_out:?}");
    let call = |out: &[String]| -> serde_json::Value { out.iter().find(|l| l.contains("call_id")).map(|l| serde_json::from_str(l).expect("JSON")).expect("a call report") };
    let (a, b) = (call(&alice_out), call(&bob_out));
    for r in [&a, &b] {
        assert_eq!(r["protection"], "srtp AEAD_AES_256_GCM", "{r}");
        assert!(r["verified"].as_u64().is_some_and(|v| v >= 20), "{r}");
    }
    assert_eq!((&a["peer_key"], &b["peer_key"]), (&b["own_key"], &a["own_key"]));

    let (status, body) = http_request(&metrics, "GET", "/metrics", "").expect("GET /metrics");
    assert_eq!(status, 200, "{body}");
    for line in ["mediasec_sip_tls_connections_total 2", "mediasec_sip_tls_handshakes_failed_total 0"] {
        assert!(body.lines().any(|l| l == line), "{line} in\n{body}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// RFC 3263 with the CLI (`mediasec ua run --proxy-uri URI --dns ADDR`, `mediasec cscf
/// --hostname NAME`): a DNS responder here (`mediasec_testkit::dns`) has SRV
/// `_sip._udp.pcscf.a.example` → the P-CSCF's port and A 127.0.0.1; alice names her P-CSCF
/// only as `sip:pcscf.a.example;lr` (her `--proxy` is a dead address) and calls bob, who
/// reaches the P-CSCF by address: the SDES call verifies media both ways, and DNS was asked.
#[test]
fn ua_process_locates_its_pcscf_by_dns() {
    use mediasec_testkit::dns::{DnsServer, Zone};
    let printed = |lines: &mut std::io::Lines<std::io::BufReader<std::process::ChildStdout>>, prefix: &str| {
        lines.next().and_then(Result::ok).and_then(|l| l.strip_prefix(prefix).map(str::to_owned)).unwrap_or_else(|| panic!("{prefix}"))
    };
    let (_scscf, mut lines) = spawn_reading(&["cscf", "--role", "scscf", "--domain", "a.example", "--listen", "127.0.0.1:0"]);
    let scscf = printed(&mut lines, "listening on ");
    let (_pcscf, mut lines) = spawn_reading(&["cscf", "--role", "pcscf", "--domain", "a.example", "--scscf", &scscf, "--listen", "127.0.0.1:0", "--mediasec", "--hostname", "pcscf.a.example"]);
    let pcscf = printed(&mut lines, "listening on ");
    let port: u16 = pcscf.rsplit(':').next().and_then(|p| p.parse().ok()).expect("P-CSCF port");
    let dns = DnsServer::start(Zone::new().srv("_sip._udp.pcscf.a.example", 10, 1, port, "pcscf.a.example").a("pcscf.a.example", std::net::Ipv4Addr::LOCALHOST));
    let dns_addr = dns.addr().to_string();

    let bob_args = ["ua", "run", "--aor", "sip:bob@a.example", "--proxy", &pcscf, "--duration", "6", "--tone", "1500", "--expect", "1000", "--min-verified", "20"];
    let (mut bob, mut bob_lines) = spawn_reading(&bob_args);
    let registered = bob_lines.next().and_then(Result::ok).expect("bob registered");
    assert!(registered.contains("\"registered\":200"), "{registered}");
    let alice_args = [
        "ua", "run", "--aor", "sip:alice@a.example", "--proxy", "127.0.0.1:9", "--proxy-uri", "sip:pcscf.a.example;lr", "--dns", &dns_addr, "--call", "sip:bob@a.example",
        "--duration", "1.5", "--min-verified", "20",
    ];
    let (mut alice, alice_lines) = spawn_reading(&alice_args);
    let alice_out: Vec<String> = alice_lines.map_while(Result::ok).collect();
    assert!(alice.child.wait().expect("alice").success(), "{alice_out:?}");
    let bob_out: Vec<String> = bob_lines.map_while(Result::ok).collect();
    assert!(bob.child.wait().expect("bob").success(), "{bob_out:?}");
    let call = |out: &[String]| -> serde_json::Value { out.iter().find(|l| l.contains("call_id")).map(|l| serde_json::from_str(l).expect("JSON")).expect("a call report") };
    let (a, b) = (call(&alice_out), call(&bob_out));
    for r in [&a, &b] {
        assert_eq!(r["protection"], "srtp AEAD_AES_256_GCM", "{r}");
        assert!(r["verified"].as_u64().is_some_and(|v| v >= 20), "{r}");
    }
    assert!(dns.queries() >= 2, "SRV and A asked: {}", dns.queries());
}

/// The high-security mode with the CLI (`mediasec ua run --security high-security`): a BSF
/// holding alice's and bob's (simulated) USIMs, a KMS whose policy allows the mode, an
/// S-CSCF and a P-CSCF, each a process; each UE bootstraps over Ub, fetches its ECCSI key
/// from the KMS (Ua keyprovision, counted in its metrics), and the call's SRTP keys come from
/// the signed DH exchange: media verified both ways, each side's send key the other's receive
/// key. Then the same with `--security mikey-sakke` (keys with Z and the RSK; the I_MESSAGE
/// in the INVITE).
#[test]
fn high_security_call_between_two_ua_processes() {
    let dir = std::env::temp_dir().join(format!("mediasec-cli-hs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let (db, store, policy) = (path("bsf.redb"), path("kms.redb"), path("policy.toml"));
    std::fs::write(&policy, "[domain.\"a.example\"]\nhigh_security = true\nmikey_sakke = true\n").expect("policy");
    let usim = |user: &str| (format!("{user}@ims.a.example"), if user == "alice" { "000102030405060708090a0b0c0d0e0f" } else { "0f0e0d0c0b0a09080706050403020100" }, "cd63cb71954a9f4e48a5994e37a02baf");
    for user in ["alice", "bob"] {
        let (impi, k, opc) = usim(user);
        let impu = format!("sip:{user}@a.example");
        let out = mediasec(&["bsf", "subscriber", "add", "--db", &db, "--master-key", BSF_MASTER, "--impi", &impi, "--k", k, "--opc", opc, "--impu", &impu]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let listening = |lines: &mut std::io::Lines<std::io::BufReader<std::process::ChildStdout>>| {
        lines.map_while(Result::ok).find_map(|l| l.split_once("listening on ").map(|(_, a)| a.trim().trim_start_matches("http://").to_owned())).expect("listening line")
    };
    let (_bsf, mut lines) = spawn_reading(&["bsf", "--db", &db, "--master-key", BSF_MASTER, "--listen", "127.0.0.1:0", "--domain", "bsf.a.example", "--zn-token", "zn", "--admin-token", "adm"]);
    let bsf = format!("http://{}", listening(&mut lines));
    let kms_args = [
        "kms", "serve", "--fqdn", "kms.a.example", "--store", &store, "--bsf", &bsf, "--zn-token", "zn", "--admin-token", "adm", "--master-key", KMS_MASTER,
        "--policy", &policy, "--user", "alice@a.example", "--user", "bob@a.example", "--listen", "127.0.0.1:0",
    ];
    let (_kms, mut lines) = spawn_reading(&kms_args);
    let kms = listening(&mut lines);
    let kms_url = format!("http://{kms}");
    let (_scscf, mut lines) = spawn_reading(&["cscf", "--role", "scscf", "--domain", "a.example", "--listen", "127.0.0.1:0"]);
    let scscf = listening(&mut lines);
    let (_pcscf, mut lines) = spawn_reading(&["cscf", "--role", "pcscf", "--domain", "a.example", "--scscf", &scscf, "--listen", "127.0.0.1:0", "--mediasec"]);
    let pcscf = listening(&mut lines);

    let ua = |mode: &str, user: &str, extra: &[&str]| {
        let (impi, k, opc) = usim(user);
        let aor = format!("sip:{user}@a.example");
        let mut args = vec!["ua", "run", "--aor", &aor, "--proxy", &pcscf, "--security", mode, "--bsf", &bsf, "--bsf-realm", "bsf.a.example"];
        args.extend_from_slice(&["--impi", &impi, "--k", k, "--opc", opc, "--kms", &kms_url, "--kms-fqdn", "kms.a.example"]);
        args.extend_from_slice(extra);
        spawn_reading(&args)
    };
    for (round, mode) in ["high-security", "mikey-sakke"].into_iter().enumerate() {
        let (mut bob, mut bob_lines) = ua(mode, "bob", &["--duration", "6", "--tone", "1500", "--expect", "1000", "--min-verified", "20"]);
        let registered = bob_lines.next().and_then(Result::ok).expect("bob registered");
        assert!(registered.contains("\"registered\":200"), "{mode}: {registered}");
        let (mut alice, alice_lines) = ua(mode, "alice", &["--call", "sip:bob@a.example", "--duration", "1.5", "--min-verified", "20"]);
        let alice_out: Vec<String> = alice_lines.map_while(Result::ok).collect();
        assert!(alice.child.wait().expect("alice").success(), "{mode}: {alice_out:?}");
        let bob_out: Vec<String> = bob_lines.map_while(Result::ok).collect();
        assert!(bob.child.wait().expect("bob").success(), "{mode}: {bob_out:?}");
        let call = |out: &[String]| -> serde_json::Value { out.iter().find(|l| l.contains("call_id")).map(|l| serde_json::from_str(l).expect("JSON")).expect("a call report") };
        let (a, b) = (call(&alice_out), call(&bob_out));
        for r in [&a, &b] {
            assert_eq!(r["protection"], "srtp AES_CM_128_HMAC_SHA1_80", "{mode}: {r}");
            assert!(r["verified"].as_u64().is_some_and(|v| v >= 20), "{mode}: {r}");
        }
        assert_eq!((&a["peer_key"], &b["peer_key"]), (&b["own_key"], &a["own_key"]), "{mode}");
        let (status, body) = http_request(&kms, "GET", "/metrics", "").expect("GET /metrics");
        assert_eq!(status, 200, "{body}");
        let provisioned = format!("mediasec_kms_requests_total{{type=\"keyprovision\",outcome=\"ok\"}} {}", 2 * (round + 1));
        assert!(body.lines().any(|l| l == provisioned), "{mode}: {body}");
        assert!(body.lines().any(|l| l == "mediasec_kms_requests_total{type=\"ticketrequest\",outcome=\"ok\"} 0"), "no ticket: {body}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn kms_serve_keeps_every_committed_policy_and_key_across_kill_9() {
    let dir = std::env::temp_dir().join(format!("mediasec-cli-kms-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let store = dir.join("kms.redb");
    let store = store.to_str().expect("path");
    let p = kms_serve(store, &["--user", "alice@a.example"]).expect("kms serve");
    let (users, rotations) = kms_load_then_kill(p);
    assert!(users.len() > 5 && rotations > 0, "load too small: {} policies, {rotations} rotations", users.len());
    let p = kms_serve(store, &[]).expect("restart");
    kms_check_durable(&p, &users, rotations);
    let (_, u) = http_request(&p.addr, "GET", "/admin/v1/users", "").expect("users");
    assert!(u.contains("alice@a.example"), "{u}");
    drop(p);
    // The ring is encrypted under the master key: another key cannot open it.
    let err = match Command::new(env!("CARGO_BIN_EXE_mediasec"))
        .args(["kms", "serve", "--fqdn", "kms.a.example", "--store", store, "--bsf", "http://127.0.0.1:9", "--zn-token", "z", "--admin-token", "a", "--listen", "127.0.0.1:0"])
        .env("MEDIASEC_KMS_MASTER_KEY", "00".repeat(32))
        .output()
    {
        Ok(o) => (o.status.success(), String::from_utf8_lossy(&o.stderr).into_owned()),
        Err(e) => panic!("{e}"),
    };
    assert!(!err.0 && err.1.contains("wrong master key"), "{}", err.1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn kms_replicas_share_postgresql_and_survive_kill_9() {
    let pg = match mediasec_kms_store::pg_lab::PgLab::start() {
        Ok(Some(pg)) => pg,
        Ok(None) => return, // skip line printed by PgLab (MEDIASEC_REQUIRE_PEERS=1 makes it fail)
        Err(e) => panic!("PostgreSQL lab: {e}"),
    };
    let url = pg.create_database("kms_cli").expect("database");
    let one = kms_serve(&url, &[]).expect("replica 1");
    let two = kms_serve(&url, &[]).expect("replica 2");
    // A rotation on replica 1 reaches replica 2 through the database (reload every second).
    let (s, _) = http_request(&one.addr, "POST", "/admin/v1/keys/rotate", "").expect("rotate");
    assert_eq!(s, 200);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, keys) = http_request(&two.addr, "GET", "/admin/v1/keys", "").expect("keys");
        if keys.matches("\"id\"").count() >= 2 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "replica 2 never saw the rotation: {keys}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (users, rotations) = kms_load_then_kill(one);
    assert!(users.len() > 5, "load too small");
    std::thread::sleep(Duration::from_millis(2500)); // replica 2 re-reads the database
    kms_check_durable(&two, &users, rotations);
}

#[test]
fn kms_pki_then_serve_ua_over_https() {
    let dir = std::env::temp_dir().join(format!("mediasec-cli-kms-pki-{}", std::process::id()));
    let out = mediasec(&["kms", "pki", "--out", dir.to_str().expect("path"), "--domain", "a.example", "--domain", "b.example"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for f in ["ca.pem", "kms.a.example.pem", "kms.a.example.key.pem", "kms.b.example.pem", "kms.b.example.key.pem"] {
        assert!(dir.join(f).exists(), "{f} missing");
    }
    let cert = dir.join("kms.a.example.pem");
    let key = dir.join("kms.a.example.key.pem");
    let store = dir.join("kms.redb");
    let p = kms_serve(
        store.to_str().expect("path"),
        &["--tls-cert", cert.to_str().expect("path"), "--tls-key", key.to_str().expect("path")],
    )
    .expect("kms serve over https");
    // A plain-HTTP client gets no HTTP answer from the TLS port.
    let plain = http_request(&p.addr, "GET", "/admin/v1/users", "");
    assert!(plain.map_or(true, |(status, _)| status == 0), "plain HTTP answered on the TLS port");
    drop(p);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Cross-community MIKEY-SAKKE at the CLI (docs/high-security.md §10.9): two `kms serve`
/// processes peered over Zk (lab PKI; Zk ports from `free_ports`); KMS a also configures a
/// third community's certificate (`--community-cert`). An on-demand refresh at a learns b's
/// certificate over Zk — the one b publishes at `/keymanagement/certificate` —, and the
/// admin list shows both with their source. `kms community-keys rotate` on b's store makes a
/// second generation, which b then publishes as a certificate set. A malformed certificate
/// file stops `kms serve` with the reason.
#[test]
fn kms_serve_learns_a_zk_peers_certificate_and_takes_configured_ones() {
    let dir = std::env::temp_dir().join(format!("mediasec-cli-communities-{}", std::process::id()));
    let pki = dir.join("pki");
    let out = mediasec(&["kms", "pki", "--out", pki.to_str().expect("path"), "--domain", "a.example", "--domain", "b.example"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let base = mediasec_testkit::free_ports(2);
    let (zk_a, zk_b) = (format!("127.0.0.1:{base}"), format!("127.0.0.1:{}", base + 1));
    let pki_s = pki.to_str().expect("path");
    let store = |d: &str| dir.join(format!("kms-{d}.redb")).to_str().expect("path").to_owned();
    let b = kms_serve_as("kms.b.example", &store("b"), &["--zk-listen", &zk_b, "--zk-pki", pki_s, "--zk-peer", &format!("a.example={zk_a}")]).expect("kms b");
    let (status, published) = http_request(&b.addr, "GET", "/keymanagement/certificate", "").expect("b's certificate");
    assert_eq!(status, 200, "{published}");
    let mut c: serde_json::Value = serde_json::from_str(&published).expect("JSON");
    c["kms_uri"] = "kms.c.example".into();
    c["kms_domain_list"] = serde_json::json!(["c.example"]);
    let c_file = dir.join("kms.c.example.json");
    std::fs::write(&c_file, serde_json::to_vec(&c).expect("json")).expect("write");
    let a = kms_serve_as("kms.a.example", &store("a"), &["--zk-listen", &zk_a, "--zk-pki", pki_s, "--zk-peer", &format!("b.example={zk_b}"), "--community-cert", c_file.to_str().expect("path")]).expect("kms a");
    let (status, refreshed) = match http_request(&a.addr, "POST", "/admin/v1/communities/refresh", "") {
        Ok(r) => r,
        Err(e) => {
            let mut a = a;
            let _ = a.child.kill();
            let mut err = String::new();
            let _ = std::io::Read::read_to_string(&mut a.child.stderr.take().expect("stderr"), &mut err);
            panic!("refresh: {e}; kms a's stderr: {err}");
        }
    };
    assert_eq!(status, 200, "{refreshed}");
    assert!(refreshed.contains(r#""kms":"kms.b.example""#), "{refreshed}");
    let (_, listed) = http_request(&a.addr, "GET", "/admin/v1/communities", "").expect("list");
    let listed: serde_json::Value = serde_json::from_str(&listed).expect("JSON");
    let list = listed["communities"].as_array().expect("list");
    let of = |uri: &str| list.iter().find(|e| e["certificate"]["kms_uri"] == uri).unwrap_or_else(|| panic!("{uri} in {listed}"));
    assert_eq!(of("kms.b.example")["source"]["zk_peer"], "b.example");
    assert_eq!(of("kms.b.example")["certificate"], serde_json::from_str::<serde_json::Value>(&published).expect("JSON"), "what b publishes");
    assert_eq!(of("kms.c.example")["source"]["configured"], true);
    drop((a, b));
    // Community key rotation on b's store (docs/kms.md "Community key rotation"): a start
    // inside the issuable months is refused; the default start makes generation 2; b then
    // publishes a set of two version 2 certificates, the first ending where the second begins.
    let b_store = store("b");
    let rotate = |extra: &[&str]| {
        let mut args = vec!["kms", "community-keys", "rotate", "--store", b_store.as_str(), "--master-key", KMS_MASTER];
        args.extend_from_slice(extra);
        mediasec(&args)
    };
    let refused = rotate(&["--valid-from", "2020-01-01T00:00:00Z"]);
    assert!(!refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains("earlier than"), "{}", String::from_utf8_lossy(&refused.stderr));
    let rotated = rotate(&[]);
    assert!(rotated.status.success(), "{}", String::from_utf8_lossy(&rotated.stderr));
    let listed = String::from_utf8_lossy(&rotated.stdout).into_owned();
    assert!(listed.lines().count() == 2 && listed.contains("generation 1 from - to ") && listed.contains("generation 2 from "), "{listed}");
    let b = kms_serve_as("kms.b.example", &store("b"), &[]).expect("kms b again");
    let (status, published) = http_request(&b.addr, "GET", "/keymanagement/certificate", "").expect("b's certificate set");
    assert_eq!(status, 200, "{published}");
    let set: serde_json::Value = serde_json::from_str(&published).expect("JSON");
    let set = set.as_array().expect("an array of two certificates");
    assert_eq!((set.len(), &set[0]["version"], &set[1]["version"]), (2, &serde_json::json!(2), &serde_json::json!(2)));
    assert_eq!(set[0]["valid_to"], set[1]["valid_from"]);
    drop(b);
    let bad = dir.join("bad.json");
    std::fs::write(&bad, br#"{"version":1}"#).expect("write");
    let err = kms_serve_as("kms.a.example", &store("a2"), &["--community-cert", bad.to_str().expect("path")]).err().expect("refused");
    assert!(err.contains("KMS certificate"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `mediasec li` against `mediasec kms serve --li-token-file --li-keys-token-file` over HTTPS
/// (`--ca`): LI on a plain-HTTP listener is refused at start with the fix named; warrants
/// survive a restart of the KMS process; key requests (key-retrieval token) print the KMS's
/// reason; the admin token, the key-retrieval token for a warrant, and a KMS without LI are
/// refused.
#[test]
fn li_warrants_survive_a_kms_restart_and_keys_are_refused_with_reasons() {
    let dir = std::env::temp_dir().join(format!("mediasec-cli-li-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let (store, token, admin) = (dir.join("kms.redb"), dir.join("li.token"), dir.join("adm.token"));
    std::fs::write(&token, "li-cli-token\n").expect("token");
    let keys_token = dir.join("li-keys.token");
    std::fs::write(&keys_token, "li-cli-keys\n").expect("token");
    let keys_s = keys_token.to_str().expect("path");
    std::fs::write(&admin, "adm\n").expect("token");
    let pki = mediasec_sip::tls::LabPki::generate(&["127.0.0.1"]).expect("lab PKI");
    let (ca, cert, key) = (dir.join("ca.pem"), dir.join("kms.pem"), dir.join("kms.key.pem"));
    for (path, pem) in [(&ca, pki.ca_pem.as_str()), (&cert, pki.cert_pem.as_str()), (&key, pki.key_pem.as_str())] {
        std::fs::write(path, pem).expect("write PEM");
    }
    let (store, token_s, admin_s) = (store.to_str().expect("path"), token.to_str().expect("path"), admin.to_str().expect("path"));
    let (ca_s, cert_s, key_s) = (ca.to_str().expect("path"), cert.to_str().expect("path"), key.to_str().expect("path"));
    // LI over plain HTTP: refused at start, the error naming the fix.
    let err = kms_serve(store, &["--li-token-file", token_s, "--li-keys-token-file", keys_s]).err().expect("LI without TLS refused");
    assert!(err.contains("HTTPS only") && err.contains("--tls-cert"), "{err}");
    let tls = ["--tls-cert", cert_s, "--tls-key", key_s];
    let with_li = ["--li-token-file", token_s, "--li-keys-token-file", keys_s, "--tls-cert", cert_s, "--tls-key", key_s];
    let li = |p: &ServerProcess, tok: &str, args: &[&str]| {
        let url = format!("https://{}", p.addr);
        let mut all = vec!["li", "--kms", url.as_str(), "--ca", ca_s, "--token-file", tok];
        all.extend_from_slice(args);
        let o = mediasec(&all);
        (o.status.success(), String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
    };
    let p = kms_serve(store, &with_li).expect("kms serve");
    let add = li(&p, token_s, &["warrant", "add", "--id", "W-1", "--target", "alice@a.example", "--not-before", "1", "--not-after", "4000000000"]);
    assert!(add.0 && add.1.contains("\"target\":\"alice@a.example\""), "{add:?}");
    let refused = li(&p, admin_s, &["warrant", "list"]);
    assert!(!refused.0 && refused.2.contains("401"), "{refused:?}");
    let refused = li(&p, keys_s, &["warrant", "add", "--id", "W-3", "--target", "bob@a.example", "--not-before", "1", "--not-after", "2"]);
    assert!(!refused.0 && refused.2.contains("403"), "the key-retrieval token makes no warrant: {refused:?}");
    drop(p);
    let p = kms_serve(store, &with_li).expect("restart");
    let list = li(&p, token_s, &["warrant", "list"]);
    assert!(list.0 && list.1.contains("\"id\":\"W-1\""), "{list:?}");
    let keys = li(&p, keys_s, &["keys", "--warrant", "W-2", "--transfer-init", "AAAA"]);
    assert!(!keys.0 && keys.2.contains("403 no such warrant"), "{keys:?}");
    let keys = li(&p, keys_s, &["keys", "--warrant", "W-1", "--transfer-init", "AAAA"]);
    assert!(!keys.0 && keys.2.contains("400 transfer_init"), "{keys:?}");
    let audit = li(&p, token_s, &["audit"]);
    assert!(audit.0 && audit.1.contains("keys.refuse") && audit.1.contains("warrant.put"), "{audit:?}");
    drop(p);
    let p = kms_serve(store, &tls).expect("restart without LI");
    let off = li(&p, token_s, &["warrant", "list"]);
    assert!(!off.0 && off.2.contains("not enabled"), "{off:?}");
    drop(p);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `mediasec voicemail serve` and `mediasec voicemail fetch` as processes against a real
/// `mediasec bsf` (docs/voicemail.md): the owner bootstraps over Ub and authenticates to the
/// retrieval API with GBA HTTP Digest (the server gets Ks_NAF over Zn from the BSF) inside
/// TLS (`--tls-cert/--tls-key`, `--ca`); an empty mailbox lists "0 message(s)". A wrong K
/// cannot bootstrap; a client without the CA does not reach the API.
#[test]
fn voicemail_serve_and_fetch_processes_authenticate_through_the_bsf() {
    const IMPI: &str = "001010000000042@ims.mnc001.mcc001.3gppnetwork.org";
    const K: &str = "465b5ce8b199b49faa5f0a2ee238a6bc";
    const OPC: &str = "cd63cb71954a9f4e48a5994e37a02baf";
    let dir = std::env::temp_dir().join(format!("mediasec-cli-vm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let db = dir.join("bsf.redb");
    let add = mediasec(&["bsf", "subscriber", "add", "--db", db.to_str().expect("path"), "--master-key", BSF_MASTER, "--impi", IMPI, "--k", K, "--opc", OPC, "--impu", "sip:carol@a.example"]);
    assert!(add.status.success(), "{}", String::from_utf8_lossy(&add.stderr));
    let (_bsf, mut bsf_lines) = spawn_reading(&["bsf", "--db", db.to_str().expect("path"), "--master-key", BSF_MASTER, "--listen", "127.0.0.1:0", "--domain", "bsf.mnc001.mcc001.pub.3gppnetwork.org", "--zn-token", "z", "--admin-token", "a"]);
    let line = bsf_lines.next().expect("BSF line").expect("read");
    let bsf = line.trim().strip_prefix("listening on ").expect("BSF listening line").to_owned();
    let store = dir.join("vm.redb");
    let pki = mediasec_sip::tls::LabPki::generate(&["127.0.0.1"]).expect("lab PKI");
    let (ca, cert, key) = (dir.join("ca.pem"), dir.join("vm.pem"), dir.join("vm.key.pem"));
    for (path, pem) in [(&ca, pki.ca_pem.as_str()), (&cert, pki.cert_pem.as_str()), (&key, pki.key_pem.as_str())] {
        std::fs::write(path, pem).expect("write PEM");
    }
    let path = |p: &Path| p.to_str().expect("path").to_owned();
    let (_vm, mut vm_lines) = spawn_reading(&[
        "voicemail", "serve", "--aor", "sip:vm@a.example", "--domain", "a.example", "--store", &path(&store), "--sip", "127.0.0.1:0",
        "--api", "127.0.0.1:0", "--tls-cert", &path(&cert), "--tls-key", &path(&key), "--naf-fqdn", "vm.a.example", "--bsf", &bsf, "--zn-token", "z",
    ]);
    let line = vm_lines.next().expect("voicemail line").expect("read");
    let api = line.split_whitespace().last().filter(|u| u.starts_with("https://")).expect("voicemail serve line").to_owned();
    let fetch = |k: &str, ca: &[&str]| {
        let mut args = vec!["voicemail", "fetch", "--server", &api, "--naf-fqdn", "vm.a.example", "--kms", "http://127.0.0.1:9", "--bsf", &bsf];
        args.extend_from_slice(ca);
        args.extend_from_slice(&["--impi", IMPI, "--k", k, "--opc", OPC, "--impu", "sip:carol@a.example"]);
        mediasec(&args)
    };
    let with_ca = ["--ca", &path(&ca)];
    let out = fetch(K, &with_ca);
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0 message(s)");
    let out = fetch("00000000000000000000000000000000", &with_ca);
    assert!(!out.status.success(), "a wrong K cannot bootstrap");
    let out = fetch(K, &[]);
    assert!(!out.status.success(), "an https server needs --ca");
    let _ = std::fs::remove_dir_all(&dir);
}
