//! libsrtp 2.7 as an independent SRTP peer: `tests/interop/libsrtp_peer.c`, built once per
//! test process by `tests/interop/build_libsrtp_peer.sh` against the libsrtp inside the PyPI
//! wheel `pylibsrtp` (headers from Debian's `libsrtp2-dev`).
//!
//! Wire protocol of the peer: stdin carries `[u32 len][packet]` frames, stdout answers each
//! with `[i32 srtp_err_status_t][u32 len][packet]`.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// libsrtp's `srtp_err_status_ok`.
pub const OK: i32 = 0;
/// libsrtp's `srtp_err_status_auth_fail`.
pub const AUTH_FAIL: i32 = 7;
/// libsrtp's `srtp_err_status_replay_fail`.
pub const REPLAY_FAIL: i32 = 9;
/// libsrtp's `srtp_err_status_bad_mki`.
pub const BAD_MKI: i32 = 25;

/// What the peer does with each packet.
#[derive(Clone, Copy, Debug)]
pub enum Op {
    /// `srtp_protect` / `srtp_protect_rtcp`.
    Protect,
    /// `srtp_unprotect` / `srtp_unprotect_rtcp`.
    Unprotect,
}

/// Which packets the peer handles.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    /// RTP.
    Rtp,
    /// RTCP.
    Rtcp,
}

/// One session of the peer: suite (RFC 4568 name), master key‖salt, MKI (may be empty).
#[derive(Clone, Copy, Debug)]
pub struct Params<'a> {
    /// RFC 4568 crypto-suite name, e.g. `AES_CM_128_HMAC_SHA1_80`.
    pub suite: &'a str,
    /// Master key followed by master salt.
    pub key: &'a [u8],
    /// MKI carried in every packet (empty: none).
    pub mki: &'a [u8],
    /// Replay window size.
    pub window: u32,
}

/// The built peer binary.
#[derive(Debug)]
pub struct Peer {
    bin: PathBuf,
}

impl Peer {
    /// The peer, built on first use; `None` (after a skip line) when it cannot be built here,
    /// a panic instead when `MEDIASEC_REQUIRE_PEERS=1`.
    pub fn get() -> Option<&'static Self> {
        static PEER: OnceLock<Option<Peer>> = OnceLock::new();
        PEER.get_or_init(|| {
            let bin = std::env::temp_dir().join(format!("mediasec-libsrtp-peer-{}", std::process::id()));
            let built = Command::new("bash")
                .arg(crate::repo_root().join("tests/interop/build_libsrtp_peer.sh"))
                .arg(&bin)
                .output();
            match built {
                Ok(o) if o.status.success() => Some(Self { bin }),
                Ok(o) => {
                    crate::peer_unavailable("libsrtp peer", &String::from_utf8_lossy(&o.stderr));
                    None
                }
                Err(e) => {
                    crate::peer_unavailable("libsrtp peer", &e.to_string());
                    None
                }
            }
        })
        .as_ref()
    }

    /// Runs `packets` through one libsrtp session; returns libsrtp's status and output per
    /// packet, in order.
    pub fn run(&self, op: Op, kind: Kind, params: Params<'_>, packets: &[Vec<u8>]) -> Vec<(i32, Vec<u8>)> {
        let mki = if params.mki.is_empty() { "-".to_owned() } else { hex::encode(params.mki) };
        let mut child = Command::new(&self.bin)
            .args([
                match op {
                    Op::Protect => "protect",
                    Op::Unprotect => "unprotect",
                },
                match kind {
                    Kind::Rtp => "rtp",
                    Kind::Rtcp => "rtcp",
                },
                params.suite,
                &hex::encode(params.key),
                &mki,
                &params.window.to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start libsrtp peer");
        let mut input = Vec::new();
        for p in packets {
            input.extend_from_slice(&u32::try_from(p.len()).expect("packet length").to_be_bytes());
            input.extend_from_slice(p);
        }
        // Write from a thread: the peer answers while it reads, and both pipes are bounded.
        let mut stdin = child.stdin.take().expect("stdin");
        let writer = std::thread::spawn(move || stdin.write_all(&input));
        let mut out = Vec::new();
        child.stdout.take().expect("stdout").read_to_end(&mut out).expect("read peer output");
        writer.join().expect("writer thread").expect("write peer input");
        assert!(child.wait().expect("peer exit").success(), "libsrtp peer failed");
        let mut results = Vec::new();
        let mut rest = &out[..];
        while let Some((head, tail)) = rest.split_first_chunk::<8>() {
            let status = i32::from_be_bytes(head[..4].try_into().expect("4 octets"));
            let len = u32::from_be_bytes(head[4..].try_into().expect("4 octets")) as usize;
            results.push((status, tail[..len].to_vec()));
            rest = &tail[len..];
        }
        assert_eq!(results.len(), packets.len(), "one result per packet");
        results
    }
}
