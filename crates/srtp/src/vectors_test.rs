//! The published vectors: RFC 3711 Appendix B, RFC 6188 §7, RFC 7714 §16–17
//! (`tests/vectors/*.json`, transcribed from the RFC texts).

use serde_json::Value;

use crate::crypto::Aes;
use crate::kdf::{Kdf, Label};
use crate::{MasterKey, Policy, Session, Suite};

fn load(name: &str) -> Vec<Value> {
    let path = format!("{}/../../tests/vectors/{name}.json", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let doc: Value = serde_json::from_str(&text).expect("vector file is JSON");
    doc["vectors"].as_array().expect("vectors array").clone()
}

fn hex(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().expect("hex string")).expect("valid hex")
}

fn vector<'a>(all: &'a [Value], id: &str) -> &'a Value {
    all.iter().find(|v| v["id"] == id).unwrap_or_else(|| panic!("vector {id} missing"))
}

fn check_keystream(v: &Value) {
    let aes = Aes::new(&hex(&v["session_key"])).expect("key");
    let blocks = v["blocks"].as_array().expect("blocks");
    assert!(!blocks.is_empty());
    for b in blocks {
        let iv: [u8; 16] = hex(&b["counter"]).try_into().expect("16-octet counter");
        let mut out = [0u8; 16];
        aes.ctr_xor(&iv, &mut out);
        assert_eq!(out.to_vec(), hex(&b["keystream"]), "{} block {}", v["id"], b["counter"]);
    }
    // The first listed counter is the IV of the RFC 3711 §4.1.1 formula with SSRC 0, index 0;
    // a continuous run must agree with the block-by-block values.
    let iv: [u8; 16] = hex(&v["session_salt_shifted"]).try_into().expect("16-octet IV");
    let mut run = [0u8; 48];
    aes.ctr_xor(&iv, &mut run);
    for (i, b) in blocks.iter().take(3).enumerate() {
        assert_eq!(run[16 * i..16 * i + 16].to_vec(), hex(&b["keystream"]));
    }
}

fn check_prf(v: &Value, key_field: &str, auth_field: &str) {
    let kdf = Kdf::new(&hex(&v["master_key"]), &hex(&v["master_salt"])).expect("kdf");
    let expect_key = hex(&v[key_field]);
    let mut key = vec![0u8; expect_key.len()];
    kdf.derive(Label::SrtpEncryption, 0, &mut key);
    assert_eq!(key, expect_key, "{} cipher key", v["id"]);
    let expect_salt = hex(&v["cipher_salt_label_02"]);
    let mut salt = vec![0u8; expect_salt.len()];
    kdf.derive(Label::SrtpSalt, 0, &mut salt);
    assert_eq!(salt, expect_salt, "{} salt", v["id"]);
    let expect_auth = hex(&v[auth_field]);
    let mut auth = vec![0u8; expect_auth.len()];
    kdf.derive(Label::SrtpAuth, 0, &mut auth);
    assert_eq!(auth, expect_auth, "{} auth key", v["id"]);
}

#[test]
fn rfc3711_b2_aes_cm_keystream() {
    check_keystream(vector(&load("rfc3711_srtp"), "rfc3711-B.2-aes-cm-keystream"));
}

#[test]
fn rfc3711_b3_key_derivation() {
    check_prf(vector(&load("rfc3711_srtp"), "rfc3711-B.3-key-derivation"), "cipher_key_label_00", "auth_key_label_01_94_octets");
}

#[test]
fn rfc6188_keystreams_and_prfs() {
    let all = load("rfc6188_srtp_aes256");
    check_keystream(vector(&all, "rfc6188-7.1-aes-256-cm-keystream"));
    check_keystream(vector(&all, "rfc6188-7.3-aes-192-cm-keystream"));
    check_prf(vector(&all, "rfc6188-7.2-aes-256-cm-prf"), "cipher_key_label_00_32_octets", "auth_key_label_01_20_octets");
    check_prf(vector(&all, "rfc6188-7.4-aes-192-cm-prf"), "cipher_key_label_00_24_octets", "auth_key_label_01_20_octets");
}

fn gcm_session(v: &Value, encrypt_srtcp: bool) -> Session {
    let key = hex(&v["key"]);
    let salt = hex(&v["salt"]);
    let suite = if key.len() == 16 { Suite::AeadAes128Gcm } else { Suite::AeadAes256Gcm };
    let mut policy = Policy::new(suite, MasterKey::new(&key, &salt));
    policy.unencrypted_srtcp = !encrypt_srtcp;
    Session::from_session_keys(&policy, (&key, &[], &salt), (&key, &[], &salt)).expect("session")
}

#[test]
fn rfc7714_srtp_packets() {
    let all = load("rfc7714_srtp_gcm");
    for id in ["rfc7714-16.1.1-srtp-aead-aes-128-gcm", "rfc7714-16.2.1-srtp-aead-aes-256-gcm"] {
        let v = vector(&all, id);
        let plain = hex(&v["plaintext_rtp_packet"]);
        let protected = hex(&v["protected_srtp_packet"]);
        let mut packet = plain.clone();
        gcm_session(v, true).protect_rtp_vec(&mut packet).expect("protect");
        assert_eq!(packet, protected, "{id} protect");
        assert!(protected.ends_with(&hex(&v["tag"])));
        gcm_session(v, true).unprotect_rtp_vec(&mut packet).expect("unprotect");
        assert_eq!(packet, plain, "{id} unprotect");
    }
}

#[test]
fn rfc7714_srtcp_packets() {
    let all = load("rfc7714_srtp_gcm");
    for id in [
        "rfc7714-17.1-srtcp-aes-128-gcm-encrypt",
        "rfc7714-17.2-srtcp-aes-256-gcm-decrypt",
        "rfc7714-17.3-srtcp-aes-128-gcm-tag-only",
        "rfc7714-17.4-srtcp-aes-256-gcm-tag-only",
    ] {
        let v = vector(&all, id);
        let encrypt = v["e_flag"] == 1 || v["e_flag"] == "1";
        let plain = hex(&v["plaintext_rtcp_packet"]);
        let protected = hex(&v["protected_srtcp_packet"]);
        let index = u32::from_str_radix(v["srtcp_index"].as_str().expect("index"), 16).expect("hex index");
        let ssrc = crate::rtcp_ssrc(&plain).expect("ssrc");

        let mut tx = gcm_session(v, encrypt);
        tx.set_srtcp_index(ssrc, index).expect("stream");
        let mut packet = plain.clone();
        tx.protect_rtcp_vec(&mut packet).expect("protect");
        assert_eq!(packet, protected, "{id} protect");

        let mut rx = gcm_session(v, encrypt);
        rx.unprotect_rtcp_vec(&mut packet).expect("unprotect");
        assert_eq!(packet, plain, "{id} unprotect");
    }
}
