//! Deferred delivery end to end on loopback (docs/voicemail.md): a real BSF and KMS (the
//! mediasec-kms lab), the two-domain CSCF lab with S-CSCF a diverting to the voicemail server,
//! UEs bootstrapped over Ub, SRTP over UDP, the retrieval API over HTTP with GBA Digest.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mediasec_bsf::client::{Endpoint, request};
use mediasec_cscf::lab::{LabConfig, TwoDomains};
use mediasec_gba::kdf::{NafId, UaProtocolId};
use mediasec_kms::bsf_zn::BsfZn;
use mediasec_kms::identity::KmsUid;
use mediasec_kms::lab::{DomainSpec, Lab as KmsLab};
use mediasec_kms::zn::{Zn, ZnCache};
use mediasec_sip::core::Timers;
use mediasec_srtp::{MasterKey, Policy, Session, Suite};
use mediasec_ua::ticket::KmsAccess;
use mediasec_ua::{Security, Ue, UeConfig, tone};
use mediasec_voicemail::VoicemailError;
use mediasec_voicemail::deposit::{Caps, DepositConfig};
use mediasec_voicemail::owner::{MailboxClient, open_message};
use mediasec_voicemail::record::Record;
use mediasec_voicemail::service::Server;

const ALICE_HZ: f64 = 1000.0;
const VM_FQDN: &str = "vm.a.example";
/// Everyone of a.example may call everyone there; only eve's tickets fork.
const POLICY: &str = "[domain.\"a.example\"]\nmay_call = [\"?@a.example\"]\n[user.\"eve@a.example\"]\nforking = true\n";

struct Dir(std::path::PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn now() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default()
}

fn zn(kms: &KmsLab) -> Arc<dyn Zn> {
    let bsf = BsfZn::for_protocol(Endpoint::http(&kms.bsf_url).expect("BSF URL"), kms.zn_token(), VM_FQDN, UaProtocolId::HTTP_DIGEST);
    Arc::new(ZnCache::new(Arc::new(bsf)))
}

/// The lab PKI of the retrieval API (a CA and a certificate for 127.0.0.1).
fn pki() -> mediasec_sip::tls::LabPki {
    mediasec_sip::tls::LabPki::generate(&["127.0.0.1"]).expect("lab PKI")
}

/// An HTTPS endpoint of `server`'s API trusting the lab CA.
fn api_endpoint(server: &Server, pki: &mediasec_sip::tls::LabPki) -> Endpoint {
    let connector = mediasec_bsf::tls::client_connector(pki.ca_pem.as_bytes(), None).expect("connector");
    Endpoint::new(&server.api_url(), Some(connector)).expect("API URL")
}

async fn voicemail(kms: &KmsLab, lab: &TwoDomains, path: &std::path::Path, pki: &mediasec_sip::tls::LabPki) -> Server {
    let config = DepositConfig {
        aor: "sip:vm@a.example".into(),
        domain: "a.example".into(),
        sip_bind: SocketAddr::from(([127, 0, 0, 1], 0)),
        rtp_ip: [127, 0, 0, 1].into(),
        registrar: Some(lab.scscf_a.local_addr()),
        expires: 600,
        caps: Caps::default(),
        timers: Timers::default(),
    };
    let tls = (pki.cert_pem.as_bytes(), pki.key_pem.as_bytes());
    Server::start(mediasec_voicemail::store::Store::open(path).expect("voicemail store"), config, SocketAddr::from(([127, 0, 0, 1], 0)), Some(tls), VM_FQDN, zn(kms)).await.expect("voicemail server")
}

async fn caller(kms: &KmsLab, lab: &TwoDomains, user: &str, deferred: bool) -> Ue {
    let (mut ue, client) = kms.ue(&format!("{user}@a.example")).await.expect("GBA bootstrap");
    ue.set_deferred_delivery(deferred);
    let config = UeConfig::loopback(&format!("sip:{user}@a.example"), lab.pcscf_a.local_addr(), Security::MikeyTicket, ALICE_HZ, 1500.0);
    let ue = Ue::start_with_kms(config, Some(KmsAccess { ue, client, high_security: None })).await.expect("UE");
    assert_eq!(ue.register(600).await.expect("REGISTER").status, 200);
    ue
}

/// A mailbox client and the KMS side of `user`, from one bootstrap.
async fn owner(kms: &KmsLab, server: &Server, pki: &mediasec_sip::tls::LabPki, user: &str) -> (MailboxClient, mediasec_kms::ue::Ue, mediasec_kms::client::KmsClient) {
    let uid = format!("{user}@a.example");
    let boot = kms.bootstrap(&KmsUid::parse(&uid).expect("uid")).await.expect("bootstrap");
    let key = boot.ks_naf(&NafId::new(VM_FQDN, UaProtocolId::HTTP_DIGEST)).expect("Ks_NAF");
    let client = MailboxClient::new(api_endpoint(server, pki), VM_FQDN, boot.btid.to_string(), &key.0);
    let (ue, kms_client) = kms.ue_of(&boot, &uid).expect("KMS UE");
    (client, ue, kms_client)
}

/// The stored packets reveal nothing: no audio payload is the tone in clear, and an SRTP
/// context with any key the server could make up authenticates none of them. The tone test
/// looks at packets long enough to carry a 20 ms frame (RTP): on the 16 to 20 octets after
/// the first 12 of an SRTCP packet, random bytes pass a Goertzel share above one half about
/// once in 500 to 2 500 packets, which made this check fail now and then on encrypted data.
fn assert_still_encrypted(r: &Record) {
    let audio: Vec<&[u8]> = r.packets.iter().filter_map(|p| p.bytes.get(12..).filter(|b| b.len() >= tone::SAMPLES_PER_PACKET)).collect();
    assert!(audio.len() >= 40, "{} audio packets", audio.len());
    assert!(audio.iter().all(|b| tone::tone_share(b, ALICE_HZ) <= 0.5), "a stored payload is in clear");
    let policy = Policy::new(Suite::AesCm128HmacSha1_80, MasterKey::new(&[7; 16], &[9; 14]));
    let mut s = Session::new(&policy).expect("session");
    assert!(r.packets.iter().all(|p| s.unprotect_rtp(&mut p.bytes.clone()).is_err()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_to_an_offline_user_is_stored_encrypted_and_decrypted_by_its_owner_later() {
    let dir = Dir(std::env::temp_dir().join(format!("mediasec-vm-{}", std::process::id())));
    let users = ["alice@a.example", "carol@a.example", "dan@a.example", "eve@a.example"];
    let kms = KmsLab::start_local(&dir.0, &[DomainSpec { domain: "a.example", policy: POLICY }], &users).await.expect("KMS lab");
    let lab = TwoDomains::start_config(LabConfig { voicemail_a: Some("sip:vm@a.example".into()), ..LabConfig::default() }).await.expect("CSCFs");
    let vm_path = dir.0.join("vm.redb");
    let pki = pki();
    let server = voicemail(&kms, &lab, &vm_path, &pki).await;
    assert!(server.api_url().starts_with("https://"));

    // alice calls carol, who is not registered: S-CSCF a diverts to the voicemail server,
    // whose answer announces deferred delivery; alice sends SRTP keyed from her TRANSFER_INIT.
    let alice = caller(&kms, &lab, "alice", true).await;
    let id = tokio::time::timeout(Duration::from_secs(10), alice.call("sip:carol@a.example")).await.expect("in time").expect("established");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let report = alice.report(&id).await.expect("report").expect("call");
    assert!(report.deferred_delivery, "{report:?}");
    assert_eq!(report.protection, "srtp AES_CM_128_HMAC_SHA1_80");
    assert!(report.peer_key.is_some() && report.media.sent >= 40, "{report:?}");
    alice.hangup(&id).await.expect("BYE");
    assert_eq!(lab.scscf_a.stats().diverted, 1);

    // What the server holds: carol's mailbox, alice as caller, the TRANSFER_INIT, encrypted packets.
    let stored = server.store.all().await.expect("store");
    let [record] = stored.as_slice() else { panic!("one message: {stored:?}") };
    assert_eq!((record.mailbox.as_str(), record.caller.as_str()), ("sip:carol@a.example", "sip:alice@a.example"));
    assert!(record.packets.len() >= 40 && !record.transfer_init.is_empty(), "{} packets", record.packets.len());
    assert!(record.offer.contains("a=key-mgmt:mikey "));
    assert_still_encrypted(record);

    // Unauthenticated (over TLS, TS 33.222 §5.3): 401 with the GBA Digest challenge.
    let api = api_endpoint(&server, &pki);
    let r = request(&api, "GET", "/voicemail/v1/messages", &[], &[]).await.expect("HTTP");
    assert_eq!(r.status, 401);
    let challenge = r.header("www-authenticate").expect("challenge");
    assert!(challenge.contains("realm=\"3GPP-bootstrapping@vm.a.example\"") && challenge.contains("algorithm=MD5"), "{challenge}");
    // A wrong Ks_NAF does not authenticate.
    let boot = kms.bootstrap(&KmsUid::parse("carol@a.example").expect("uid")).await.expect("bootstrap");
    let wrong = MailboxClient::new(api.clone(), VM_FQDN, boot.btid.to_string(), &[0; 32]);
    assert!(matches!(wrong.list().await, Err(VoicemailError::Api { status: 401, .. })));

    // carol bootstraps, lists, downloads, resolves as the responder and decrypts.
    let (carol, mut carol_ue, carol_kms) = owner(&kms, &server, &pki, "carol").await;
    let list = carol.list().await.expect("list");
    assert_eq!(list.len(), 1);
    let fetched = carol.fetch(record.id).await.expect("fetch");
    assert_eq!(&fetched, record);
    let out = open_message(&mut carol_ue, &carol_kms, &fetched, now()).await.expect("decrypted");
    assert_eq!(out.failed, 0, "every stored packet authenticates: {out:?}");
    assert_eq!(out.initiator.as_ref().map(|u| u.as_str()), Some("alice@a.example"), "the caller the ticket names");
    assert_eq!(out.rtp + out.rtcp, fetched.packets.len() as u64);
    assert!(out.tone_packets(ALICE_HZ) as u64 >= out.rtp - 1, "alice's tone comes out: {} of {}", out.tone_packets(ALICE_HZ), out.rtp);
    let wav = out.wav();
    assert!(wav.starts_with(b"RIFF") && wav.len() == 44 + 2 * 160 * out.payloads.len());
    assert!(matches!(carol.fetch(record.id + 100).await, Err(VoicemailError::Api { status: 404, .. })));

    // A message whose ticket has expired (checked at now + the ticket lifetime) fails clearly.
    let later = now() + Duration::from_secs(mediasec_ua::ticket::TICKET_LIFETIME_SECS + 60);
    let err = open_message(&mut carol_ue, &carol_kms, &fetched, later).await.expect_err("expired");
    assert!(err.to_string().contains("ticket expired"), "{err}");

    // dan sees nothing of carol's, and even given the record cannot resolve the ticket.
    let (dan, mut dan_ue, dan_kms) = owner(&kms, &server, &pki, "dan").await;
    assert!(dan.list().await.expect("list").is_empty());
    assert!(matches!(dan.fetch(record.id).await, Err(VoicemailError::Api { status: 403, .. })));
    assert!(matches!(dan.delete(record.id).await, Err(VoicemailError::Api { status: 403, .. })));
    // The server's metrics (Prometheus text on the API listener): the deposited call, the
    // API's refusals and answers so far.
    let m = request(&api, "GET", "/metrics", &[], &[]).await.expect("metrics");
    let text = String::from_utf8_lossy(&m.body);
    assert_eq!(m.status, 200);
    for line in ["mediasec_voicemail_invites_total{status=\"200\"} 1\n", "mediasec_voicemail_messages_stored_total 1\n", "mediasec_voicemail_api_responses_total{status=\"403\"} 2\n", "mediasec_voicemail_api_responses_total{status=\"404\"} 1\n"] {
        assert!(text.contains(line), "{line} in {text}");
    }
    let err = open_message(&mut dan_ue, &dan_kms, record, now()).await.expect_err("not a responder");
    assert!(err.to_string().contains("MIKEY ERR"), "{err}");

    // A caller whose policy refuses deferred delivery fails the call (no downgrade).
    let dan_caller = caller(&kms, &lab, "dan", false).await;
    let err = tokio::time::timeout(Duration::from_secs(10), dan_caller.call("sip:carol@a.example")).await.expect("in time").expect_err("refused");
    assert!(err.to_string().contains("does not allow"), "{err}");
    // A forking ticket cannot be delivered deferred: explicit refusal.
    let eve = caller(&kms, &lab, "eve", true).await;
    let err = tokio::time::timeout(Duration::from_secs(10), eve.call("sip:carol@a.example")).await.expect("in time").expect_err("refused");
    assert!(err.to_string().contains("deferred delivery refused") && err.to_string().contains("forks keys"), "{err}");

    // The server restarts: the message is still there and carol still reads it.
    server.shutdown().await;
    let server = voicemail(&kms, &lab, &vm_path, &pki).await;
    let (carol, mut carol_ue, carol_kms) = owner(&kms, &server, &pki, "carol").await;
    let ids: Vec<u64> = carol.list().await.expect("list").iter().map(|s| s.id).collect();
    assert!(ids.contains(&record.id), "{ids:?}");
    let again = carol.fetch(record.id).await.expect("fetch after restart");
    assert_eq!(open_message(&mut carol_ue, &carol_kms, &again, now()).await.expect("decrypted").failed, 0);
    carol.delete(record.id).await.expect("DELETE");
    assert!(matches!(carol.fetch(record.id).await, Err(VoicemailError::Api { status: 404, .. })));
}

/// The `voicemail_record` fuzz corpus replays through the fuzz target's function.
#[test]
fn fuzz_corpus_replays() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/corpus/voicemail_record");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).expect("corpus") {
        let bytes = std::fs::read(entry.expect("entry").path()).expect("read");
        mediasec_voicemail::fuzz_inputs(&bytes);
        n += 1;
    }
    assert!(n >= 3, "corpus has {n} files");
}
