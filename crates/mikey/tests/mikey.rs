//! Vectors, round trips, property tests and corpus replay for the MIKEY codec and KDFs.
#![allow(clippy::indexing_slicing)] // tests index known-shape test data

use mediasec_mikey::kemac_crypto;
use mediasec_mikey::keys::{self, Direction, MessageKeys};
use mediasec_mikey::payload::{self, Payload};
use mediasec_mikey::prf::prf;
use mediasec_mikey::registry::*;
use mediasec_mikey::{CsIdMap, Message};
use serde_json::Value;

/// `MEDIASEC_MIKEY_DUMP=dir` writes messages the builders produce (used to seed the fuzz
/// corpus `fuzz/corpus/mikey_decode` and the CLI tests).
fn dump(name: &str, bytes: &[u8]) {
    if let Ok(dir) = std::env::var("MEDIASEC_MIKEY_DUMP") {
        std::fs::write(format!("{dir}/{name}.bin"), bytes).expect("dump");
    }
}

fn vectors(name: &str) -> Value {
    let path = format!("{}/../../tests/vectors/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).expect("vector file")).expect("json")
}

fn h(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().expect("hex string")).expect("hex")
}

fn u(v: &Value) -> u64 {
    v.as_u64().expect("number")
}

/// Checks one `expected_parse` entry against the decoded payload.
fn check_payload(p: &Payload, e: &Value) {
    let name = e["payload"].as_str().expect("payload name");
    match (name, p) {
        ("T", Payload::T(t)) => {
            assert_eq!(u64::from(t.ts_type.0), u(&e["ts_type"]));
            assert_eq!(t.value.to_be_bytes().to_vec(), h(&e["ts_value"]));
        }
        ("RAND", Payload::Rand(r)) => assert_eq!(r.rand, h(&e["rand"])),
        ("ID", Payload::Id(i)) => {
            assert_eq!(u64::from(i.id_type.0), u(&e["type"]));
            assert_eq!(i.data, e["data"].as_str().expect("data").as_bytes());
        }
        ("IDR", Payload::Idr(i)) => {
            assert_eq!(u64::from(i.role.0), u(&e["role"]));
            assert_eq!(u64::from(i.id_type.0), u(&e["type"]));
            let data = if e["data_is_hex"].as_bool() == Some(true) {
                h(&e["data"])
            } else {
                e["data"].as_str().expect("data").as_bytes().to_vec()
            };
            assert_eq!(i.data, data);
        }
        ("SP", Payload::Sp(sp)) => {
            assert_eq!(u64::from(sp.policy_no), u(&e["policy_no"]));
            assert_eq!(u64::from(sp.prot_type.0), u(&e["prot_type"]));
            let params = e["params"].as_array().expect("params");
            assert_eq!(sp.params.len(), params.len());
            for (a, b) in sp.params.iter().zip(params) {
                assert_eq!(u64::from(a.param_type.0), u(&b["type"]));
                assert_eq!(a.value, h(&b["value"]));
            }
        }
        ("KEMAC", Payload::Kemac(k)) => {
            assert_eq!(u64::from(k.encr_alg.0), u(&e["encr_alg"]));
            assert_eq!(k.encr_data, h(&e["encr_data"]));
            assert_eq!(u64::from(k.mac_alg.0), u(&e["mac_alg"]));
            assert_eq!(k.mac, h(&e["mac"]));
        }
        ("V", Payload::V(v)) => {
            assert_eq!(u64::from(v.auth_alg.0), u(&e["auth_alg"]));
            assert_eq!(v.mac, h(&e["ver_data"]));
        }
        ("SAKKE", Payload::Sakke(s)) => {
            assert_eq!(u64::from(s.params.0), u(&e["sakke_params"]));
            assert_eq!(u64::from(s.id_scheme.0), u(&e["id_scheme"]));
            assert_eq!(s.data, h(&e["sakke_data"]));
        }
        ("GENEXT", Payload::GeneralExt(g)) => {
            assert_eq!(u64::from(g.ext_type.0), u(&e["type"]));
            assert_eq!(g.data, h(&e["data"]));
        }
        ("SIGN", Payload::Sign(s)) => {
            assert_eq!(u64::from(s.sig_type.0), u(&e["s_type"]));
            assert_eq!(s.signature.len() as u64, u(&e["sig_len"]));
            assert_eq!(s.signature, h(&e["signature"]));
        }
        _ => panic!("payload {name} decoded as {:?}", p.payload_type()),
    }
}

#[test]
fn published_messages_decode_to_listed_fields_and_reencode_exactly() {
    let v = vectors("mikey_messages_and_prf.json");
    let mut checked = 0;
    for vec in v["vectors"].as_array().expect("vectors") {
        let Some(expected) = vec["expected_parse"].as_array() else { continue };
        let bytes = h(&vec["hex"]);
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD
            .decode(vec["base64"].as_str().expect("b64"))
            .expect("base64");
        assert_eq!(b64, bytes);
        let (msg, header_len, spans) = Message::decode_with_spans(&bytes).expect("decode");
        let hdr = &expected[0];
        assert_eq!(u64::from(msg.header.version), u(&hdr["version"]));
        assert_eq!(u64::from(msg.header.data_type.0), u(&hdr["data_type"]));
        assert_eq!(u64::from(msg.header.v_flag), u(&hdr["V"]));
        assert_eq!(u64::from(msg.header.prf.0), u(&hdr["prf_func"]));
        assert_eq!(msg.header.csb_id.to_be_bytes().to_vec(), h(&hdr["csb_id"]));
        assert_eq!(msg.header.cs_map.n_cs() as u64, u(&hdr["n_cs"]));
        assert_eq!(u64::from(msg.header.cs_map.map_type().0), u(&hdr["cs_id_map_type"]));
        assert_eq!(header_len as u64, u(&hdr["length"]));
        assert_eq!(u64::from(bytes[2]), u(&hdr["next_payload"]));
        if let CsIdMap::SrtpId(cs) = &msg.header.cs_map {
            let info = hdr["cs_id_map_info"].as_array().expect("map info");
            for (a, b) in cs.iter().zip(info) {
                assert_eq!(u64::from(a.policy_no), u(&b["policy_no"]));
                assert_eq!(a.ssrc.to_be_bytes().to_vec(), h(&b["ssrc"]));
                assert_eq!(a.roc.to_be_bytes().to_vec(), h(&b["roc"]));
            }
        }
        let payload_exp = &expected[1..];
        assert_eq!(msg.payloads.len(), payload_exp.len(), "{}", vec["id"]);
        for ((p, span), e) in msg.payloads.iter().zip(&spans).zip(payload_exp) {
            assert_eq!(span.start as u64, u(&e["offset"]), "{} {}", vec["id"], e["payload"]);
            if let Some(len) = e["length"].as_u64() {
                assert_eq!((span.end - span.start) as u64, len, "{} {}", vec["id"], e["payload"]);
            }
            if let Some(np) = e["next_payload"].as_u64() {
                assert_eq!(u64::from(bytes[span.start]), np);
            }
            check_payload(p, e);
        }
        assert_eq!(msg.encode().expect("encode"), bytes, "{}", vec["id"]);
        checked += 1;
    }
    assert_eq!(checked, 3);
}

#[test]
fn prf_hmac_sha256_vendor_vectors() {
    let v = vectors("mikey_messages_and_prf.json");
    let mut n = 0;
    for vec in v["vectors"].as_array().expect("vectors") {
        if vec.get("inkey_tgk").is_none() {
            continue;
        }
        let tgk = h(&vec["inkey_tgk"]);
        let csb = u32::from_be_bytes(h(&vec["csb_id"]).try_into().expect("4"));
        let cs = u8::try_from(u(&vec["cs_id"])).expect("u8");
        let rand = h(&vec["rand"]);
        let c1 = u32::from_be_bytes(h(&vec["label_constant_first_key"]).try_into().expect("4"));
        let label = keys::label_tgk(c1, cs, csb, &rand);
        assert_eq!(label, h(&vec["label_first_key"]));
        assert_eq!(prf(PrfFunc::HMAC_SHA_256, &tgk, &label, 16).expect("prf").as_slice(), h(&vec["out_first_key_16"]));
        let salt_label = keys::label_tgk(keys::SALT_FROM_TGK, cs, csb, &rand);
        assert_eq!(prf(PrfFunc::HMAC_SHA_256, &tgk, &salt_label, 12).expect("prf").as_slice(), h(&vec["out_salt_12"]));
        n += 1;
    }
    assert_eq!(n, 3);
}

#[test]
fn prf_mikey1_computed_examples() {
    let v = vectors("mikey_messages_and_prf.json");
    let vec = v["vectors"]
        .as_array()
        .expect("vectors")
        .iter()
        .find(|x| x["id"] == "computed-mikey1-prf-examples")
        .expect("vector");
    let csb = u32::from_be_bytes(h(&vec["csb_id"]).try_into().expect("4"));
    let rand = h(&vec["rand"]);
    let tgk = h(&vec["tgk"]);
    let label = keys::label_tgk(keys::TEK, 1, csb, &rand);
    assert_eq!(label, h(&vec["labels"]["tek"]));
    let p0 = PrfFunc::MIKEY_1;
    assert_eq!(prf(p0, &tgk, &label, 16).expect("prf").as_slice(), h(&vec["tek_16"]));
    let salt = keys::label_tgk(keys::SALT_FROM_TGK, 1, csb, &rand);
    assert_eq!(prf(p0, &tgk, &salt, 14).expect("prf").as_slice(), h(&vec["salt_14"]));
    assert_eq!(keys::label_message(keys::MSG_ENCR, csb, &rand), h(&vec["labels"]["msg_encr"]));
    let mk = MessageKeys::rfc3830(p0, &h(&vec["psk"]), csb, &rand, EncrAlg::AES_CM_128, MacAlg::HMAC_SHA_1_160)
        .expect("keys");
    assert_eq!(mk.encr_key.as_slice(), h(&vec["msg_encr_key_16"]));
    assert_eq!(mk.auth_key.as_slice(), h(&vec["msg_auth_key_20"]));
    assert_eq!(mk.salt_key.as_slice(), h(&vec["msg_salt_14"]));
    let long = &vec["long_inkey_example"];
    assert_eq!(
        prf(p0, &h(&long["inkey_40_octets"]), &h(&long["label"]), 16).expect("prf").as_slice(),
        h(&long["tek_16"])
    );
}

#[test]
fn mikey_ticket_computed_regression() {
    let v = vectors("mikey_ticket_computed.json");
    for vec in v["vectors"].as_array().expect("vectors") {
        let p = if vec["prf"].as_str().expect("prf").contains("SHA-256") { PrfFunc::HMAC_SHA_256 } else { PrfFunc::MIKEY_1 };
        let i = &vec["inputs"];
        let l = &vec["labels"];
        let o = &vec["outputs"];
        let (mpk, trand, randri, randrr, randrkms) =
            (h(&i["mpk"]), h(&i["ticket_rand"]), h(&i["randri"]), h(&i["randrr"]), h(&i["randrkms"]));
        let csb = u32::from_be_bytes(h(&i["csb_id"]).try_into().expect("4"));
        let idr = h(&i["idr_r_id_data"]);
        let f = |k: &[u8], label: &[u8], n: usize| prf(p, k, label, n).expect("prf").to_vec();

        let mpki_l = keys::label_base_ticket(keys::MPKI, 0x06, &trand);
        assert_eq!(mpki_l, h(&l["mpki_A.2.2"]));
        let mpki = f(&mpk, &mpki_l, 16);
        assert_eq!(mpki, h(&o["mpki"]));
        let mpkr = f(&mpk, &keys::label_base_ticket(keys::MPKR, 0x06, &trand), 16);
        assert_eq!(mpkr, h(&o["mpkr"]));

        let tpk_l = keys::label_base_ticket(keys::MSG_ENCR, 0x05, &trand);
        assert_eq!(tpk_l, h(&l["tpk_encr_A.2.1"]));
        let tpk = h(&i["tpk"]);
        let tk = MessageKeys::derive(p, &tpk, EncrAlg::AES_CM_128, MacAlg::HMAC_SHA_1_160, |c| {
            keys::label_base_ticket(c, 0x05, &trand)
        })
        .expect("tpk keys");
        assert_eq!(tk.encr_key.as_slice(), h(&o["tpk_encr_key_16"]));
        assert_eq!(tk.auth_key.as_slice(), h(&o["tpk_auth_key_20"]));
        assert_eq!(tk.salt_key.as_slice(), h(&o["tpk_salt_14"]));

        let ti_l = keys::label_ticket_message(keys::MSG_AUTH, csb, Direction::Initial, Some(&randri), None);
        assert_eq!(ti_l, h(&l["transfer_init_auth_5.1.2"]));
        assert_eq!(f(&mpki, &ti_l, 20), h(&o["transfer_init_auth_key_20_from_mpki"]));

        let fork_l = keys::label_fork(keys::FORK_MPKR, &idr, Some(&randrkms));
        assert_eq!(fork_l, h(&l["fork_mpkr_5.1.1"]));
        let mpkr_f = f(&mpkr, &fork_l, 16);
        assert_eq!(mpkr_f, h(&o["mpkr_forked"]));
        assert_eq!(f(&h(&i["tgk"]), &keys::label_fork(keys::FORK_TGK, &idr, Some(&randrkms)), 16), h(&o["tgk_forked"]));

        let tr_l = keys::label_ticket_message(keys::MSG_AUTH, csb, Direction::Response, Some(&randri), Some(&randrr));
        assert_eq!(tr_l, h(&l["transfer_resp_auth_5.1.2_with_randrr"]));
        assert_eq!(f(&mpkr_f, &tr_l, 20), h(&o["transfer_resp_auth_key_20_from_forked_mpkr_with_randrr"]));

        let tek_l = keys::label_ticket_tgk(keys::TEK, 1, Some(&randri), None);
        assert_eq!(tek_l, h(&l["tek_5.1.3_csid1"]));
        assert_eq!(f(&h(&i["tgk"]), &tek_l, 16), h(&o["tek_16_csid1_no_randrr"]));

        let vr_l = keys::label_initiator_data(keys::MSG_AUTH);
        assert_eq!(vr_l, h(&l["initiator_data_vr_auth_6.10"]));
        assert_eq!(f(&mpkr, &vr_l, 20), h(&o["vr_auth_key_20_from_mpkr"]));
    }
}

#[test]
fn unknown_payload_is_a_hard_error_with_offset() {
    let v = vectors("mikey_messages_and_prf.json");
    let mut bytes = h(&v["vectors"][0]["hex"]);
    // The T payload at offset 19 names RAND (11) as next; make it name 18 (unassigned).
    bytes[19] = 18;
    let err = Message::decode(&bytes).expect_err("must fail");
    assert_eq!(err, mediasec_mikey::Error::UnknownPayload { offset: 29, payload_type: 18 });
    assert_eq!(err.to_string(), "unknown payload type 18 at byte 29");
    let short = &h(&v["vectors"][0]["hex"])[..40];
    let err = Message::decode(short).expect_err("truncated");
    assert!(matches!(err, mediasec_mikey::Error::Truncated { offset: 31, .. }), "{err}");
}

#[test]
fn kemac_psk_round_trip_every_algorithm() {
    let psk = [7u8; 16];
    let rand = [9u8; 16];
    for encr in [EncrAlg::NULL, EncrAlg::AES_CM_128, EncrAlg::AES_KW_128, EncrAlg::AES_CM_256] {
        for mac in [MacAlg::HMAC_SHA_1_160, MacAlg::HMAC_SHA_256_256] {
            for prf_func in [PrfFunc::MIKEY_1, PrfFunc::HMAC_SHA_256] {
                let keys = MessageKeys::rfc3830(prf_func, &psk, 0x1234, &rand, encr, mac).expect("keys");
                let kd = payload::KeyData {
                    key_type: KeyType::TGK_SALT,
                    key: vec![0x42; 16],
                    salt: Some(vec![0x24; 14]),
                    // 40 octets in total: AES-KW needs a multiple of 8.
                    validity: payload::KeyValidity::Spi(vec![1, 2, 3]),
                };
                let plain = payload::encode_payloads(&[Payload::KeyData(kd.clone())]).expect("enc");
                let ct = kemac_crypto::encrypt(encr, &keys, 0x1234, 99, &plain).expect("encrypt");
                if encr != EncrAlg::NULL {
                    assert_ne!(ct, plain);
                }
                let pt = kemac_crypto::decrypt(encr, &keys, 0x1234, 99, &ct).expect("decrypt");
                let back = payload::decode_payloads(&pt, PayloadType::KEY_DATA, 0).expect("chain");
                assert_eq!(back, vec![Payload::KeyData(kd)]);
                let tag = kemac_crypto::mac(mac, &keys.auth_key, &[&ct]).expect("mac");
                assert_eq!(Some(tag.len()), mac.mac_len());
                kemac_crypto::verify_mac(mac, &keys.auth_key, &[&ct], &tag).expect("verify");
                let mut bad = tag.clone();
                bad[0] ^= 1;
                let err = kemac_crypto::verify_mac(mac, &keys.auth_key, &[&ct], &bad).expect_err("tamper");
                assert_eq!(err.err_code(), ErrorCode::AUTH_FAILURE);
            }
        }
    }
}

#[test]
fn fuzz_corpus_replays() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/corpus/mikey_decode");
    let mut n = 0;
    let mut decoded = 0;
    for entry in std::fs::read_dir(dir).expect("corpus dir") {
        let data = std::fs::read(entry.expect("entry").path()).expect("read");
        if mediasec_mikey::fuzzing::decode_round_trip(&data) {
            decoded += 1;
        }
        n += 1;
    }
    assert!(n >= 5, "corpus has {n} files");
    assert!(decoded >= 3, "only {decoded} corpus files decode");
}

/// Replays `fuzz/corpus/mikey_signed_dh` through the fuzz target's function; the seeds
/// include the fixed keys' valid DH_INIT and DH_RESP, which must be accepted (so the replay
/// reaches the key derivation, not only the decoder).
#[test]
fn signed_dh_fuzz_corpus_replays() {
    let (init, resp) = mediasec_mikey::fuzzing::signed_dh_seeds().expect("fixture");
    dump("signed_dh_valid_init", &init);
    dump("signed_dh_valid_resp", &resp);
    assert_eq!(mediasec_mikey::fuzzing::signed_dh(&init), (true, false));
    assert_eq!(mediasec_mikey::fuzzing::signed_dh(&resp), (false, true));
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/corpus/mikey_signed_dh");
    let (mut n, mut answered, mut finished) = (0, 0, 0);
    for entry in std::fs::read_dir(dir).expect("corpus dir") {
        let data = std::fs::read(entry.expect("entry").path()).expect("read");
        let (a, f) = mediasec_mikey::fuzzing::signed_dh(&data);
        answered += usize::from(a);
        finished += usize::from(f);
        n += 1;
    }
    assert!(n >= 5, "corpus has {n} files");
    assert_eq!((answered, finished), (1, 1), "the corpus's valid DH_INIT and DH_RESP (regenerate with MEDIASEC_MIKEY_DUMP if the fixture changed)");
}

/// Replays `fuzz/corpus/mikey_sakke` through the fuzz target's function; the corpus holds
/// the fixed keys' valid I_MESSAGE, which must be accepted (the replay reaches the
/// decapsulation and key derivation, not only the decoder).
#[test]
fn mikey_sakke_fuzz_corpus_replays() {
    let seed = mediasec_mikey::fuzzing::mikey_sakke_seed().expect("fixture");
    dump("mikey_sakke_valid", &seed);
    assert!(mediasec_mikey::fuzzing::mikey_sakke(&seed));
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/corpus/mikey_sakke");
    let (mut n, mut accepted) = (0, 0);
    for entry in std::fs::read_dir(dir).expect("corpus dir") {
        let data = std::fs::read(entry.expect("entry").path()).expect("read");
        accepted += usize::from(mediasec_mikey::fuzzing::mikey_sakke(&data));
        n += 1;
    }
    assert!(n >= 4, "corpus has {n} files");
    assert_eq!(accepted, 1, "the corpus's valid I_MESSAGE (regenerate with MEDIASEC_MIKEY_DUMP if the fixture changed)");
}

mod props {
    use super::*;
    use mediasec_mikey::payload::*;
    use mediasec_mikey::{CommonHeader, GenericCs, SrtpCs};
    use proptest::collection::vec as pvec;
    use proptest::prelude::*;

    fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
        pvec(any::<u8>(), 0..max)
    }

    fn validity() -> impl Strategy<Value = KeyValidity> {
        prop_oneof![
            Just(KeyValidity::Null),
            bytes(8).prop_map(KeyValidity::Spi),
            (bytes(8), bytes(8)).prop_map(|(from, to)| KeyValidity::Interval { from, to }),
        ]
    }

    fn ts() -> impl Strategy<Value = Timestamp> {
        (0u8..4, any::<u64>()).prop_map(|(t, v)| {
            let ts_type = TsType(t);
            let value = if ts_type.value_len() == Some(4) { v & 0xffff_ffff } else { v };
            Timestamp { ts_type, value }
        })
    }

    fn mac() -> impl Strategy<Value = (MacAlg, Vec<u8>)> {
        (0u8..3).prop_flat_map(|a| {
            let alg = MacAlg(a);
            let n = alg.mac_len().unwrap_or(0);
            pvec(any::<u8>(), n..=n).prop_map(move |m| (alg, m))
        })
    }

    fn policy() -> impl Strategy<Value = TicketPolicy> {
        (any::<u16>(), any::<u8>(), any::<u8>(), 0u8..128, 0u16..4096, 0u8..32, bytes(20)).prop_map(
            |(t, s, v, p, f, r, data)| TicketPolicy {
                ticket_type: TicketType(t),
                subtype: s,
                version: v,
                prf: PrfFunc(p),
                flags: TicketFlags(f),
                reserved: r,
                data,
            },
        )
    }

    fn payload_no_sign() -> impl Strategy<Value = Payload> {
        prop_oneof![
            (any::<u8>(), bytes(40), mac()).prop_map(|(e, d, (a, m))| Payload::Kemac(Kemac {
                encr_alg: EncrAlg(e),
                encr_data: d,
                mac_alg: a,
                mac: m
            })),
            (0u8..4, bytes(40)).prop_map(|(c, d)| Payload::Pke(Pke { cache: PkeCache(c), data: d })),
            (0u8..3, 0u8..16, validity()).prop_map(|(g, r, v)| {
                let group = DhGroup(g);
                Payload::Dh(Dh { group, value: vec![g; group.value_len().unwrap_or(0)], reserved: r, validity: v })
            }),
            ts().prop_map(Payload::T),
            (any::<u8>(), bytes(30)).prop_map(|(t, d)| Payload::Id(Id { id_type: IdType(t), data: d })),
            (any::<u8>(), bytes(30)).prop_map(|(t, d)| Payload::Cert(Cert { cert_type: CertType(t), data: d })),
            (0u8..3).prop_map(|f| {
                let hash_func = HashFunc(f);
                Payload::Chash(Chash { hash_func, hash: vec![f; hash_func.hash_len().unwrap_or(0)] })
            }),
            mac().prop_map(|(a, m)| Payload::V(Verification { auth_alg: a, mac: m })),
            (any::<u8>(), any::<u8>(), pvec((any::<u8>(), bytes(4)), 0..6)).prop_map(|(n, p, ps)| {
                Payload::Sp(SecurityPolicy {
                    policy_no: n,
                    prot_type: ProtType(p),
                    params: ps.into_iter().map(|(t, value)| PolicyParam { param_type: SrtpParam(t), value }).collect(),
                })
            }),
            bytes(32).prop_map(|rand| Payload::Rand(Rand { rand })),
            (any::<u8>(), any::<u16>()).prop_map(|(c, r)| Payload::Err(ErrPayload { code: ErrorCode(c), reserved: r })),
            (any::<u8>(), ts()).prop_map(|(r, ts)| Payload::Tr(TimestampRole { role: TsRole(r), ts })),
            (any::<u8>(), any::<u8>(), bytes(30)).prop_map(|(r, t, d)| Payload::Idr(Idr {
                role: IdRole(r),
                id_type: IdType(t),
                data: d
            })),
            (any::<u8>(), bytes(30)).prop_map(|(r, d)| Payload::Randr(Randr { role: RandRole(r), rand: d })),
            policy().prop_map(Payload::Tp),
            (policy(), bytes(40), bytes(20)).prop_map(|(policy, t, i)| Payload::Ticket(Ticket {
                policy,
                ticket_data: t,
                initiator_data: i
            })),
            (0u8..16, bytes(32), bytes(16), validity()).prop_map(|(t, k, s, v)| {
                let key_type = KeyType(t);
                Payload::KeyData(KeyData { key_type, key: k, salt: key_type.has_salt().then_some(s), validity: v })
            }),
            (any::<u8>(), bytes(30)).prop_map(|(t, d)| Payload::GeneralExt(GeneralExt { ext_type: GeneralExtType(t), data: d })),
            (any::<u8>(), any::<u8>(), bytes(60)).prop_map(|(p, s, d)| Payload::Sakke(Sakke {
                params: SakkeParams(p),
                id_scheme: SakkeIdScheme(s),
                data: d
            })),
        ]
    }

    fn cs_map() -> impl Strategy<Value = CsIdMap> {
        prop_oneof![
            pvec((any::<u8>(), any::<u32>(), any::<u32>()), 0..4)
                .prop_map(|v| CsIdMap::SrtpId(v.into_iter().map(|(policy_no, ssrc, roc)| SrtpCs { policy_no, ssrc, roc }).collect())),
            any::<u8>().prop_map(|n_cs| CsIdMap::Empty { n_cs }),
            pvec((any::<u8>(), any::<u8>(), any::<bool>(), bytes(4), bytes(10), bytes(5)), 0..3).prop_map(|v| {
                CsIdMap::GenericId(
                    v.into_iter()
                        .map(|(cs_id, p, s_flag, policies, session_data, spi)| GenericCs {
                            cs_id,
                            prot_type: ProtType(p),
                            s_flag,
                            policies,
                            session_data,
                            spi,
                        })
                        .collect(),
                )
            }),
        ]
    }

    fn message() -> impl Strategy<Value = Message> {
        (
            any::<u8>(),
            any::<bool>(),
            0u8..128,
            any::<u32>(),
            cs_map(),
            pvec(payload_no_sign(), 0..8),
            proptest::option::of((0u8..16, bytes(40))),
        )
            .prop_map(|(dt, v, prf, csb, map, mut payloads, sign)| {
                if let Some((t, s)) = sign {
                    payloads.push(Payload::Sign(Sign { sig_type: SignatureType(t), signature: s }));
                }
                Message {
                    header: CommonHeader { version: 1, data_type: DataType(dt), v_flag: v, prf: PrfFunc(prf), csb_id: csb, cs_map: map },
                    payloads,
                }
            })
    }

    proptest! {
        #[test]
        fn encode_decode_round_trip(m in message()) {
            let bytes = m.encode().expect("encode");
            let back = Message::decode(&bytes).expect("decode");
            prop_assert_eq!(&back, &m);
            prop_assert_eq!(back.encode().expect("re-encode"), bytes);
        }

        /// `prf` (keyed once, stack blocks, no XOR for one chunk) equals RFC 3830 §4.1.2 read
        /// literally: HMAC re-keyed for every A_i and block, m blocks, every 256-bit chunk of
        /// the inkey XORed — for both PRF functions, inkeys of 0 to 3 chunks and any length.
        #[test]
        fn prf_equals_the_rfc_3830_definition(inkey in bytes(100), label in bytes(60), out_len in 0usize..100, sha256 in any::<bool>()) {
            use hmac::{Hmac, Mac};
            fn p<M: Mac + hmac::digest::KeyInit>(s: &[u8], label: &[u8], out_len: usize) -> Vec<u8> {
                let mac = |data: &[&[u8]]| {
                    let mut m = <M as hmac::digest::KeyInit>::new_from_slice(s).expect("any key length");
                    data.iter().for_each(|d| m.update(d));
                    m.finalize().into_bytes().to_vec()
                };
                let (mut a, mut out) = (label.to_vec(), Vec::new());
                while out.len() < out_len {
                    a = mac(&[&a]);
                    out.extend(mac(&[&a, label]));
                }
                out.truncate(out_len);
                out
            }
            let chunks: Vec<&[u8]> = if inkey.is_empty() { vec![&[]] } else { inkey.chunks(32).collect() };
            let mut expect = vec![0u8; out_len];
            for s in chunks {
                let block = if sha256 { p::<Hmac<sha2::Sha256>>(s, &label, out_len) } else { p::<Hmac<sha1::Sha1>>(s, &label, out_len) };
                expect.iter_mut().zip(block).for_each(|(e, b)| *e ^= b);
            }
            let func = if sha256 { PrfFunc::HMAC_SHA_256 } else { PrfFunc::MIKEY_1 };
            let got = prf(func, &inkey, &label, out_len).expect("prf");
            prop_assert_eq!(got.as_slice(), expect.as_slice());
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in bytes(300)) {
            mediasec_mikey::fuzzing::decode_round_trip(&data);
        }

        /// The verifiers added for errors, R_MESSAGE, forking and the CS map rule reject
        /// arbitrary input with an error, never a panic (and never an authenticated result).
        #[test]
        fn verifiers_never_panic_on_arbitrary_input(data in bytes(300), other in bytes(120)) {
            let key = mediasec_mikey::error_message::ErrorKey { mac: MacAlg::HMAC_SHA_256_256, auth_key: &[1; 32] };
            if let Ok(r) = mediasec_mikey::error_message::verify(&data, Some(key)) {
                prop_assert!(!r.is_authenticated());
            }
            prop_assert!(mediasec_mikey::psk::verify_response(&[1; 16], &other, &data).is_err());
            let t = Ticket { policy: TicketPolicy { ticket_type: TicketType::THREE_GPP, subtype: 0, version: 0, prf: PrfFunc::HMAC_SHA_256, flags: TicketFlags::I, reserved: 0, data: Vec::new() }, ticket_data: other, initiator_data: data.clone() };
            prop_assert!(mediasec_mikey::forking::verify_initiator_data(&t, &[2; 16]).is_err());
            let _ = mediasec_mikey::forking::ticket_rand(&t);
            if let Ok(m) = Message::decode(&data) {
                let _ = mediasec_mikey::ticket::check_cs_map(&m.header);
                let _ = mediasec_mikey::forking::ForkModifier::of(&m);
                let _ = mediasec_mikey::forking::check_vi(&m);
            }
        }

        #[test]
        fn mutated_messages_never_panic(m in message(), pos in any::<usize>(), val in any::<u8>()) {
            let mut bytes = m.encode().expect("encode");
            if !bytes.is_empty() {
                let i = pos % bytes.len();
                bytes[i] = val;
            }
            mediasec_mikey::fuzzing::decode_round_trip(&bytes);
            let _ = decode_first_payload_chain(&bytes, 0);
        }
    }
}

mod psk_exchange {
    use super::*;
    use mediasec_mikey::payload::*;
    use mediasec_mikey::psk::{self, PskInit, ReplayCache};
    use mediasec_mikey::srtp_policy::{self, CryptoSession};
    use mediasec_mikey::SrtpCs;
    use std::collections::HashSet;

    #[derive(Default)]
    struct Cache(HashSet<(u32, u64, Vec<u8>)>);
    impl ReplayCache for Cache {
        fn insert(&mut self, csb: u32, ts: u64, mac: &[u8]) -> bool {
            self.0.insert((csb, ts, mac.to_vec()))
        }
    }

    const NOW: u64 = 3_900_000_000;

    pub(super) fn sp() -> SecurityPolicy {
        srtp_policy::aes_cm_128_hmac_sha1_80()
    }

    pub(super) fn init(encr: EncrAlg) -> PskInit {
        PskInit {
            prf: PrfFunc::MIKEY_1,
            csb_id: 0x1122_3344,
            sessions: vec![SrtpCs { policy_no: 0, ssrc: 0xcafe_babe, roc: 7 }],
            v_flag: true,
            timestamp: Timestamp { ts_type: TsType::NTP_UTC, value: NOW << 32 },
            rand: vec![0x5a; 16],
            id_i: Some(Id { id_type: IdType::URI, data: b"sip:alice@ims.example.org".to_vec() }),
            id_r: None,
            policies: vec![sp()],
            keys: vec![KeyData { key_type: KeyType::TGK, key: vec![0x33; 16], salt: None, validity: KeyValidity::Spi(vec![0, 0, 0, 1]) }],
            encr,
            mac: MacAlg::HMAC_SHA_1_160,
        }
    }

    #[test]
    fn psk_init_builds_verifies_and_both_sides_derive_the_same_srtp_policy() {
        let psk = [0x11u8; 16];
        let p = init(EncrAlg::AES_CM_128);
        let bytes = psk::build_init(&psk, &p).expect("build");
        let mut cache = Cache::default();
        let v = psk::verify_init(&psk, &bytes, NOW + 3, 60, &mut cache).expect("verify");
        assert_eq!(v.keys, p.keys);
        let cs = CryptoSession { ssrc: 0xcafe_babe, roc: 7, mki: vec![0, 0, 0, 1] };
        let label = |c| keys::label_tgk(c, 1, p.csb_id, &p.rand);
        let mine = srtp_policy::derive(p.prf, &p.keys[0].key, label, None, &sp(), &cs).expect("initiator");
        let theirs = srtp_policy::derive(v.message.header.prf, &v.keys[0].key, label, None, &sp(), &cs).expect("responder");
        assert_eq!(mine, theirs);
        assert_eq!(mine.suite, "AES_CM_128_HMAC_SHA1_80");
        // Both policies drive real SRTP sessions: the initiator's packets open at the responder,
        // with the ROC from the CS ID map.
        let mut tx = mediasec_srtp::Session::new(&mine.to_srtp().expect("srtp policy")).expect("session");
        let mut rx = mediasec_srtp::Session::new(&theirs.to_srtp().expect("srtp policy")).expect("session");
        tx.set_roc(mediasec_srtp::Direction::Outbound, mine.ssrc, mine.roc).expect("roc");
        rx.set_roc(mediasec_srtp::Direction::Inbound, theirs.ssrc, theirs.roc).expect("roc");
        let mut rtp = vec![0x80, 0, 0, 9, 0, 0, 0, 0];
        rtp.extend_from_slice(&mine.ssrc.to_be_bytes());
        rtp.extend_from_slice(b"mikey-keyed media");
        let plain = rtp.clone();
        tx.protect_rtp_vec(&mut rtp).expect("protect");
        assert_eq!(rtp.len(), plain.len() + 4 + 10, "MKI and tag appended");
        rx.unprotect_rtp_vec(&mut rtp).expect("unprotect");
        assert_eq!(rtp, plain);
        assert_eq!(mine.master_key.as_slice(), prf(PrfFunc::MIKEY_1, &[0x33; 16], &label(keys::TEK), 16).expect("prf").as_slice());
        // Replay is rejected with "Invalid TS".
        let err = psk::verify_init(&psk, &bytes, NOW, 60, &mut cache).expect_err("replay");
        assert_eq!(err.err_code(), ErrorCode::INVALID_TS);
        // Stale timestamp.
        let err = psk::verify_init(&psk, &bytes, NOW + 3600, 60, &mut Cache::default()).expect_err("stale");
        assert_eq!(err.err_code(), ErrorCode::INVALID_TS);
        // Wrong key: authentication failure.
        let err = psk::verify_init(&[0u8; 16], &bytes, NOW, 60, &mut Cache::default()).expect_err("key");
        assert_eq!(err.err_code(), ErrorCode::AUTH_FAILURE);
        // Tampering with any byte is detected, before any key is released.
        for i in 0..bytes.len() {
            let mut t = bytes.clone();
            t[i] ^= 0x01;
            let err = psk::verify_init(&psk, &t, NOW, 60, &mut Cache::default()).expect_err("tamper");
            assert!(
                matches!(err.err_code(), ErrorCode::AUTH_FAILURE | ErrorCode::UNSUPPORTED_MESSAGE | ErrorCode::INVALID_DT | ErrorCode::INVALID_TS | ErrorCode::INVALID_MAC | ErrorCode::INVALID_EA | ErrorCode::INVALID_PRF | ErrorCode::UNSPECIFIED),
                "byte {i}: {err}"
            );
        }
        // The error answer copies the header.
        let hdr = Message::decode(&bytes).expect("decode").header;
        let e = psk::build_error(&hdr, Timestamp { ts_type: TsType::NTP_UTC, value: NOW << 32 }, ErrorCode::AUTH_FAILURE).expect("err");
        let em = Message::decode(&e).expect("decode err");
        assert_eq!(em.header.data_type, DataType::ERROR);
        assert_eq!(em.header.csb_id, hdr.csb_id);
        assert!(matches!(em.payloads[1], Payload::Err(ErrPayload { code: ErrorCode::AUTH_FAILURE, .. })));
    }
}

mod psk_response {
    use super::psk_exchange::init;
    use super::*;
    use mediasec_mikey::error_message::{self, ErrorKey};
    use mediasec_mikey::payload::*;
    use mediasec_mikey::psk::{self, ReplayCache};

    struct NoReplay;
    impl ReplayCache for NoReplay {
        fn insert(&mut self, _: u32, _: u64, _: &[u8]) -> bool {
            true
        }
    }

    const NOW: u64 = 3_900_000_000;

    #[test]
    fn psk_r_message_verifies_against_its_i_message_and_detects_tampering() {
        let psk = [0x11u8; 16];
        let mut p = init(EncrAlg::AES_CM_128);
        p.id_r = Some(Id { id_type: IdType::URI, data: b"sip:bob@ims.example.org".to_vec() });
        let i_msg = psk::build_init(&psk, &p).expect("I_MESSAGE");
        let v = psk::verify_init(&psk, &i_msg, NOW, 60, &mut NoReplay).expect("verify I");
        let r_msg = psk::build_response(&psk, &v, p.id_r.clone()).expect("R_MESSAGE");
        let rm = psk::verify_response(&psk, &i_msg, &r_msg).expect("verify R");
        dump("psk-r-message", &r_msg);
        assert_eq!(rm.header.data_type, DataType::PSK_RESP);
        assert_eq!(rm.header.csb_id, p.csb_id);
        assert!(!rm.header.v_flag);
        assert!(matches!(rm.payloads.as_slice(), [Payload::T(t), Payload::Id(_), Payload::V(_)] if *t == p.timestamp));
        assert_eq!(rm.encode().expect("encode"), r_msg);
        // The MAC is HMAC-SHA-1 with the I_MESSAGE's auth_key over R_MESSAGE (minus MAC) ||
        // IDi || IDr || the I_MESSAGE's 64-bit timestamp (RFC 3830 §5.2).
        let k = MessageKeys::rfc3830(p.prf, &psk, p.csb_id, &p.rand, p.encr, p.mac).expect("keys");
        let (body, tag) = r_msg.split_at(r_msg.len() - 20);
        let ts = (NOW << 32).to_be_bytes();
        let expect = kemac_crypto::mac(MacAlg::HMAC_SHA_1_160, &k.auth_key, &[body, b"sip:alice@ims.example.org", b"sip:bob@ims.example.org", &ts]).expect("mac");
        assert_eq!(tag, expect.as_slice());
        // Wrong PSK, another I_MESSAGE, any flipped byte: rejected.
        assert_eq!(psk::verify_response(&[0u8; 16], &i_msg, &r_msg).expect_err("psk").err_code(), ErrorCode::AUTH_FAILURE);
        let mut p2 = p.clone();
        p2.timestamp.value += 1 << 32;
        let other = psk::build_init(&psk, &p2).expect("I2");
        assert!(psk::verify_response(&psk, &other, &r_msg).is_err());
        for i in 0..r_msg.len() {
            let mut t = r_msg.clone();
            t[i] ^= 0x01;
            assert!(psk::verify_response(&psk, &i_msg, &t).is_err(), "tampered byte {i} accepted");
        }
        // Without the V flag there is no R_MESSAGE.
        p2.v_flag = false;
        let quiet = psk::build_init(&psk, &p2).expect("I3");
        let vq = psk::verify_init(&psk, &quiet, NOW + 1, 60, &mut NoReplay).expect("verify");
        assert!(psk::build_response(&psk, &vq, None).is_err());
        // A failure after the I_MESSAGE verified (say its SP is refused) is answered with a
        // MACed error the initiator authenticates with the same keys.
        let (keys, mac) = psk::init_keys(&psk, &v.message).expect("keys");
        let e = mediasec_mikey::Error::Rejected { code: ErrorCode::INVALID_SPPAR, reason: "SRTP policy refused".into() };
        let key = ErrorKey { mac, auth_key: &keys.auth_key };
        let err = error_message::reply(&v.message.header, p.timestamp, &e, Some(key)).expect("error");
        let report = error_message::verify(&err, Some(key)).expect("verify error");
        assert!(report.is_authenticated());
        assert_eq!(report.codes(), [ErrorCode::INVALID_SPPAR]);
    }
}

mod tshark_oracle {
    use super::*;
    use mediasec_mikey::payload::*;
    use mediasec_mikey::{CommonHeader, SrtpCs};
    use std::process::Command;


    /// Runs `tshark -V` on the message sent to UDP 2269; returns the MIKEY part of the output.
    fn dissect(bytes: &[u8], tag: &str) -> String {
        let dir = std::env::temp_dir().join(format!("mediasec-mikey-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp");
        let txt: String = bytes
            .chunks(16)
            .enumerate()
            .map(|(i, c)| format!("{:06x} {}\n", i * 16, c.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ")))
            .collect();
        std::fs::write(dir.join("m.txt"), txt).expect("write");
        let st = Command::new("text2pcap")
            .args(["-q", "-u", "2269,2269"])
            .arg(dir.join("m.txt"))
            .arg(dir.join("m.pcap"))
            .status()
            .expect("text2pcap");
        assert!(st.success());
        let out = Command::new("tshark").arg("-V").arg("-r").arg(dir.join("m.pcap")).output().expect("tshark");
        let s = String::from_utf8_lossy(&out.stdout).to_string();
        let _ = std::fs::remove_dir_all(&dir);
        s.split_once("Multimedia Internet KEYing").map(|x| x.1.to_string()).expect("MIKEY dissected")
    }

    /// The Next Payload values tshark reports, in order.
    fn next_payloads(s: &str) -> Vec<u8> {
        s.lines()
            .filter(|l| l.trim_start().starts_with("Next Payload:"))
            .filter_map(|l| l.rsplit_once('(').and_then(|x| x.1.trim_end_matches(')').parse().ok()))
            .collect()
    }

    fn check(bytes: &[u8], data_type: &str, tag: &str) {
        let msg = Message::decode(bytes).expect("our decode");
        let s = dissect(bytes, tag);
        assert!(s.contains(&format!("Data Type: {data_type} ({})", msg.header.data_type.0)), "{s}");
        for bad in ["Malformed", "Unknown", "Expert Info", "[Error"] {
            assert!(!s.contains(bad), "tshark reports {bad}:\n{s}");
        }
        let mut expected = vec![bytes[2]];
        for (i, p) in msg.payloads.iter().enumerate() {
            if !matches!(p, Payload::Sign(_)) {
                expected.push(msg.payloads.get(i + 1).map_or(0, |n| n.payload_type().0));
            }
        }
        // NULL-encrypted KEMACs show their Key data sub-payload chain too; compare the prefix.
        let seen = next_payloads(&s);
        assert!(seen.len() >= expected.len() && seen[..expected.len()] == expected[..], "{seen:?} vs {expected:?}\n{s}");
    }

    fn hdr(dt: DataType) -> CommonHeader {
        CommonHeader {
            version: 1,
            data_type: dt,
            v_flag: true,
            prf: PrfFunc::MIKEY_1,
            csb_id: 0x0102_0304,
            cs_map: CsIdMap::SrtpId(vec![SrtpCs { policy_no: 0, ssrc: 0x1234_5678, roc: 0 }]),
        }
    }

    fn t() -> Payload {
        Payload::T(Timestamp { ts_type: TsType::NTP_UTC, value: 0xe8a0_0000_0000_0000 })
    }

    #[test]
    fn tshark_decodes_our_messages_cleanly() {
        let usable = |tool: &str| mediasec_testkit::tool_usable(tool, Command::new(tool).arg("--version"));
        if !usable("tshark") || !usable("text2pcap") {
            return;
        }
        // PSK I_MESSAGE (AES-CM and NULL encryption) from the builder.
        for encr in [EncrAlg::AES_CM_128, EncrAlg::NULL] {
            let m = mediasec_mikey::psk::build_init(&[7; 16], &psk_exchange::init(encr)).expect("build");
            check(&m, "Pre-shared", "psk");
        }
        // PSK verification message.
        let v = Message {
            header: CommonHeader { data_type: DataType::PSK_RESP, v_flag: false, ..hdr(DataType::PSK_RESP) },
            payloads: vec![
                t(),
                Payload::Id(Id { id_type: IdType::URI, data: b"sip:bob@ims.example.org".to_vec() }),
                Payload::V(Verification { auth_alg: MacAlg::HMAC_SHA_1_160, mac: vec![0xab; 20] }),
            ],
        };
        check(&v.encode().expect("enc"), "PSK ver msg", "ver");
        // The R_MESSAGE and a MACed error message from our builders.
        let mut p = psk_exchange::init(EncrAlg::AES_CM_128);
        p.id_r = Some(Id { id_type: IdType::URI, data: b"sip:bob@ims.example.org".to_vec() });
        let i_msg = mediasec_mikey::psk::build_init(&[7; 16], &p).expect("build");
        let ts = p.timestamp.value >> 32;
        struct Fresh;
        impl mediasec_mikey::psk::ReplayCache for Fresh {
            fn insert(&mut self, _: u32, _: u64, _: &[u8]) -> bool {
                true
            }
        }
        let vi = mediasec_mikey::psk::verify_init(&[7; 16], &i_msg, ts, 1, &mut Fresh).expect("verify");
        let r_msg = mediasec_mikey::psk::build_response(&[7; 16], &vi, p.id_r.clone()).expect("R_MESSAGE");
        check(&r_msg, "PSK ver msg", "rmsg");
        let (keys, mac) = mediasec_mikey::psk::init_keys(&[7; 16], &vi.message).expect("keys");
        let key = mediasec_mikey::error_message::ErrorKey { mac, auth_key: &keys.auth_key };
        let err = mediasec_mikey::error_message::build(&vi.message.header, p.timestamp, &[ErrorCode::INVALID_SPPAR], Some(key)).expect("error");
        check(&err, "Error", "err");
        // DHHMAC I_MESSAGE: HDR, T, RAND, IDi, SP, DH, KEMAC (RFC 4650).
        let dh = Message {
            header: hdr(DataType::DHHMAC_INIT),
            payloads: vec![
                t(),
                Payload::Rand(Rand { rand: vec![1; 16] }),
                Payload::Id(Id { id_type: IdType::NAI, data: b"alice@example.org".to_vec() }),
                Payload::Sp(psk_exchange::sp()),
                Payload::Dh(Dh { group: DhGroup::OAKLEY_5, value: vec![0x77; 192], reserved: 0, validity: KeyValidity::Null }),
                Payload::Kemac(Kemac { encr_alg: EncrAlg::NULL, encr_data: vec![], mac_alg: MacAlg::HMAC_SHA_1_160, mac: vec![3; 20] }),
            ],
        };
        check(&dh.encode().expect("enc"), "DHHMAC init", "dh");
        // RSA-R I_MESSAGE: HDR, T, RAND, IDi, IDr, SP, SIGN (RFC 4738).
        let rsar = Message {
            header: hdr(DataType::RSA_R_INIT),
            payloads: vec![
                t(),
                Payload::Rand(Rand { rand: vec![2; 16] }),
                Payload::Id(Id { id_type: IdType::URI, data: b"sip:alice@example.org".to_vec() }),
                Payload::Id(Id { id_type: IdType::URI, data: b"sip:bob@example.org".to_vec() }),
                Payload::Sp(psk_exchange::sp()),
                Payload::Sign(Sign { sig_type: SignatureType::RSA_PKCS1_V1_5, signature: vec![9; 128] }),
            ],
        };
        check(&rsar.encode().expect("enc"), "RSA-R I_MSG", "rsar");
        // MIKEY-SAKKE I_MESSAGE structure (RFC 6509): HDR, T, RAND, IDRi, IDRr, SAKKE, SIGN.
        // (tshark 4.0 does not know PRF 1, the Empty map or the TS 33.180 roles of the
        // published vector, so the oracle uses RFC 6509 values only.)
        let sakke = Message {
            header: CommonHeader { v_flag: false, ..hdr(DataType::SAKKE) },
            payloads: vec![
                t(),
                Payload::Rand(Rand { rand: vec![4; 16] }),
                Payload::Idr(Idr { role: IdRole::INITIATOR, id_type: IdType::URI, data: b"tel:+447700900123".to_vec() }),
                Payload::Idr(Idr { role: IdRole::RESPONDER, id_type: IdType::URI, data: b"tel:+447700900456".to_vec() }),
                Payload::Sakke(Sakke { params: SakkeParams::PARAM_SET_1, id_scheme: SakkeIdScheme::TEL_URI_MONTHLY, data: vec![4; 273] }),
                Payload::Sign(Sign { sig_type: SignatureType::ECCSI, signature: vec![5; 129] }),
            ],
        }
        .encode()
        .expect("enc");
        check(&sakke, "SAKKE", "sakke");
    }

    /// The high-security mode's DH_INIT and DH_RESP (`signed_dh`), real signatures and DH
    /// values: tshark 4.0 names the data types, the DH group, the IDR roles and ECCSI.
    #[test]
    fn tshark_decodes_signed_dh_messages() {
        use super::signed_dh_exchange::{ALICE, BOB, CAROL, Cache, Kms, NOW, os_random, start};
        let usable = |tool: &str| mediasec_testkit::tool_usable(tool, Command::new(tool).arg("--version"));
        if !usable("tshark") || !usable("text2pcap") {
            return;
        }
        let kms = Kms::new();
        let (alice, bob) = (kms.key(ALICE, NOW), kms.key(BOB, NOW));
        let (init, _pending) = start(&alice, BOB);
        let resp = mediasec_mikey::signed_dh::answer(&init, &kms.kpak, &bob, BOB, 7, NOW, 30, &mut Cache::default(), &mut os_random)
            .expect("answer")
            .response;
        dump("signed_dh_init", &init);
        dump("signed_dh_resp", &resp);
        for (bytes, dt, tag, dh_count) in [(&init, "D-H init", "dhi", 1), (&resp, "D-H resp", "dhr", 2)] {
            check(bytes, dt, tag);
            let s = dissect(bytes, tag);
            assert_eq!(s.matches("DH-Group: OAKLEY 5 (0)").count(), dh_count, "{s}");
            assert!(s.contains("Signature type: ECCSI (2)"), "{s}");
            assert!(s.contains("Signature len: 129"), "{s}");
            assert!(s.contains("Initiator (IDRi)") && s.contains("Responder (IDRr)"), "{s}");
            assert!(s.contains(ALICE) && s.contains(BOB), "{s}");
            assert!(!s.contains("Expert Info (Error"), "{s}");
        }
        // A DH_INIT for bob that reached carol: her signed error message (HDR, T, IDRr, ERR,
        // SIGNr).
        let (init, _pending) = start(&alice, BOB);
        let carol = kms.key(CAROL, NOW);
        let refused = mediasec_mikey::signed_dh::answer(&init, &kms.kpak, &carol, CAROL, 7, NOW, 30, &mut Cache::default(), &mut os_random).expect_err("refused");
        let error = refused.reply.expect("the error message");
        dump("signed_dh_error", &error);
        check(&error, "Error", "dherr");
        let s = dissect(&error, "dherr");
        assert!(s.contains("Signature type: ECCSI (2)") && s.contains("Responder (IDRr)") && s.contains(CAROL), "{s}");
    }

    /// Our MIKEY-SAKKE I_MESSAGE (`mikey_sakke::build`, real SAKKE data and signature):
    /// tshark 4.0 names data type 26, the SAKKE payload and its fields, the IDR roles
    /// (including the KMS roles 6 and 7) and ECCSI, with no Malformed/Unknown/Error line.
    #[test]
    fn tshark_decodes_mikey_sakke_messages() {
        use super::mikey_sakke_exchange::{ALICE, BOB, NOW, Parties};
        let usable = |tool: &str| mediasec_testkit::tool_usable(tool, Command::new(tool).arg("--version"));
        if !usable("tshark") || !usable("text2pcap") {
            return;
        }
        let parties = Parties::new();
        let (msg, _keys) = parties.build(BOB, NOW);
        dump("mikey_sakke_i_message", &msg);
        check(&msg, "SAKKE", "mikeysakke");
        let s = dissect(&msg, "mikeysakke");
        assert!(s.contains("Data Type: SAKKE (26)"), "{s}");
        assert!(s.contains("SAKKE Encapsulated Data (SAKKE)"), "{s}");
        assert!(s.contains("SAKKE params: 1") && s.contains("ID scheme: 1"), "{s}");
        assert!(s.contains("SAKKE data length: 273"), "{s}");
        assert!(s.contains("Signature type: ECCSI (2)"), "{s}");
        assert!(s.contains("Initiator (IDRi)") && s.contains("Responder (IDRr)"), "{s}");
        assert!(s.contains("IDRkmsi") && s.contains("IDRkmsr"), "{s}");
        assert!(s.contains(ALICE) && s.contains(BOB), "{s}");
        // Bob's signed refusal of an I_MESSAGE he admitted but cannot open (encapsulated
        // under another KMS's Z): HDR, T, IDRr, ERR, SIGNr.
        let (unopenable, _keys) = parties.build_under(BOB, NOW, &Parties::new().z);
        let refused = parties.answer_as_bob(&unopenable, NOW).expect_err("refused");
        let error = refused.reply.expect("the error message");
        dump("mikey_sakke_error", &error);
        check(&error, "Error", "sakkeerr");
        let s = dissect(&error, "sakkeerr");
        assert!(s.contains("Signature type: ECCSI (2)") && s.contains("Responder (IDRr)") && s.contains(BOB), "{s}");
        assert!(s.contains("Authentication failure"), "{s}");
    }
}


/// In-process MIKEY-TICKET exchange: initiator, KMS logic stub (test only), responder.
mod ticket_exchange {
    use super::*;
    use mediasec_mikey::error_message::{self, ErrorReport};
    use mediasec_mikey::forking::{self, ForkModifier};
    use mediasec_mikey::payload::*;
    use mediasec_mikey::psk::{ReplayCache, build_error};
    use mediasec_mikey::srtp_policy::{self, CryptoSession, SrtpPolicy};
    use mediasec_mikey::ticket::{self as tk, TicketContent};
    use mediasec_mikey::{CommonHeader, Error, GenericCs};
    use std::collections::HashSet;

    const NOW: u64 = 3_950_000_000;
    const SKEW: u64 = 30;
    const PSK_I: [u8; 16] = [0xA1; 16];
    const TPK: [u8; 16] = [0xC3; 16];
    const TPK_ID: u32 = 7;
    const ID_I: &[u8] = b"alice@ims.example.org";
    const ID_KMS: &[u8] = b"kms.ims.example.org";
    const RANDRI: [u8; 16] = [0x11; 16];
    const RANDRI2: [u8; 16] = [0x12; 16];
    const MKI: [u8; 4] = [0, 0, 0, 1];
    const SSRC: u32 = 0xdead_beef;

    /// A responder: identity, PSK with the KMS, RANDRr, and the RANDRkms the KMS picks for it.
    #[derive(Clone, Copy)]
    struct Responder {
        id: &'static [u8],
        psk: [u8; 16],
        randrr: [u8; 16],
        randrkms: [u8; 16],
    }
    const BOB: Responder = Responder { id: b"bob@ims.example.org", psk: [0xB2; 16], randrr: [0x21; 16], randrkms: [0x31; 16] };
    const CAROL: Responder = Responder { id: b"carol@ims.example.org", psk: [0xB3; 16], randrr: [0x22; 16], randrkms: [0x32; 16] };

    #[derive(Default)]
    struct Cache(HashSet<(u32, u64, Vec<u8>)>);
    impl ReplayCache for Cache {
        fn insert(&mut self, csb: u32, ts: u64, mac: &[u8]) -> bool {
            self.0.insert((csb, ts, mac.to_vec()))
        }
    }

    fn ts(offset: u64) -> Timestamp {
        Timestamp { ts_type: TsType::NTP_UTC, value: (NOW + offset) << 32 }
    }

    fn flags() -> TicketFlags {
        TicketFlags::D.with(TicketFlags::E).with(TicketFlags::F).with(TicketFlags::H).with(TicketFlags::N).with(TicketFlags::O)
    }

    fn psk_for(id: &[u8]) -> Result<[u8; 16], Error> {
        match id {
            ID_I => Ok(PSK_I),
            i if i == BOB.id => Ok(BOB.psk),
            i if i == CAROL.id => Ok(CAROL.psk),
            _ => Err(Error::Rejected { code: ErrorCode::INVALID_ID, reason: "unknown IDRpsk".into() }),
        }
    }

    // ---- initiator -------------------------------------------------------------------
    fn request_init_with(flags: TicketFlags, responders: &[&[u8]]) -> Vec<u8> {
        let ids: Vec<Payload> = responders.iter().map(|r| tk::idr(IdRole::RESPONDER, IdType::NAI, r)).collect();
        let tp_data = encode_first_payload_chain(&ids).expect("tp");
        let tp = TicketPolicy { ticket_type: TicketType::THREE_GPP, subtype: 0, version: 0, prf: tk::PRF, flags, reserved: 0, data: tp_data };
        let m = Message {
            header: tk::header(DataType::REQUEST_INIT_PSK, true, 0x0a0b_0c0d, CsIdMap::Empty { n_cs: 0 }),
            payloads: vec![
                Payload::T(ts(0)),
                tk::randr(RandRole::INITIATOR, &RANDRI),
                tk::idr(IdRole::INITIATOR, IdType::NAI, ID_I),
                tk::idr(IdRole::KMS, IdType::NAI, ID_KMS),
                Payload::Tp(tp),
                tk::idr(IdRole::PSK, IdType::BYTE_STRING, ID_I),
            ],
        };
        let k = tk::message_keys(&PSK_I, 0x0a0b_0c0d, Direction::Initial, Some(&RANDRI), None).expect("keys");
        tk::seal(m, &k.auth_key, &[ID_I, ID_KMS]).expect("seal")
    }

    fn request_init() -> Vec<u8> {
        request_init_with(flags(), &[BOB.id])
    }

    /// What the initiator holds after REQUEST_RESP.
    struct Granted {
        mpki: Vec<u8>,
        mpkr: Option<Vec<u8>>,
        tgk: KeyData,
        ticket: Ticket,
    }

    fn handle_request_resp(req: &[u8], resp: &[u8]) -> Result<Granted, Error> {
        handle_request_resp_with(&PSK_I, req, resp)
    }

    /// `inkey`: the PSK, or the env_key of a REQUEST_INIT_PK.
    fn handle_request_resp_with(inkey: &[u8], req: &[u8], resp: &[u8]) -> Result<Granted, Error> {
        let m = tk::decode_expect(resp, DataType::REQUEST_RESP)?;
        let k = tk::message_keys(inkey, m.header.csb_id, Direction::Response, Some(&RANDRI), None)?;
        tk::verify_v(resp, &k.auth_key, &[req])?;
        tk::check_fresh(&m, NOW, SKEW, &mut Cache::default())?;
        let ticket = tk::ticket_of(&m)?;
        let keys = tk::open_kemac(&m, &k, m.header.csb_id)?;
        let bad = || Error::Rejected { code: ErrorCode::UNSPECIFIED, reason: "KEMAC".into() };
        match (forking::is_forking(&ticket), keys.as_slice()) {
            (false, [mpki, tgk]) => Ok(Granted { mpki: mpki.key.clone(), mpkr: None, tgk: tgk.clone(), ticket }),
            (true, [mpki, mpkr, tgk]) => Ok(Granted { mpki: mpki.key.clone(), mpkr: Some(mpkr.key.clone()), tgk: tgk.clone(), ticket }),
            _ => Err(bad()),
        }
    }

    fn transfer_init(g: &Granted) -> Vec<u8> {
        let cs = GenericCs { cs_id: 1, prot_type: ProtType::SRTP, s_flag: false, policies: vec![0], session_data: SSRC.to_be_bytes().to_vec(), spi: MKI.to_vec() };
        let m = Message {
            header: tk::header(DataType::TRANSFER_INIT, true, 0x5555_0001, CsIdMap::GenericId(vec![cs])),
            payloads: vec![
                Payload::T(ts(1)),
                tk::randr(RandRole::INITIATOR, &RANDRI2),
                tk::idr(IdRole::INITIATOR, IdType::NAI, ID_I),
                tk::idr(IdRole::RESPONDER, IdType::NAI, BOB.id),
                Payload::Sp(psk_exchange::sp()),
                Payload::Ticket(g.ticket.clone()),
            ],
        };
        let k = tk::message_keys(&g.mpki, 0x5555_0001, Direction::Initial, Some(&RANDRI2), None).expect("keys");
        let ti = tk::seal(m, &k.auth_key, &[ID_I, BOB.id]).expect("seal");
        match &g.mpkr {
            Some(mpkr) => forking::attach_initiator_data(&ti, mpkr).expect("initiator data"),
            None => ti,
        }
    }

    /// Verifies TRANSFER_RESP; returns the TGK the SRTP keys derive from (TGK' when forking).
    fn handle_transfer_resp(ti: &[u8], g: &Granted, tr: &[u8]) -> Result<KeyData, Error> {
        let m = tk::decode_expect(tr, DataType::TRANSFER_RESP)?;
        let (key, tgk) = match &g.mpkr {
            Some(mpkr) => {
                let f = ForkModifier::of(&m)?;
                if ![BOB.id, CAROL.id].contains(&f.id_r.as_slice()) {
                    return Err(Error::Rejected { code: ErrorCode::INVALID_ID, reason: "responder".into() });
                }
                (f.mpkr(mpkr)?.to_vec(), f.key(&g.tgk)?)
            }
            None => {
                if tk::id_of(&m, IdRole::RESPONDER) != BOB.id {
                    return Err(Error::Rejected { code: ErrorCode::INVALID_ID, reason: "responder".into() });
                }
                (g.mpki.clone(), g.tgk.clone())
            }
        };
        let k = tk::message_keys(&key, m.header.csb_id, Direction::Response, Some(&RANDRI2), None)?;
        tk::verify_v(tr, &k.auth_key, &[ti])?;
        tk::check_fresh(&m, NOW, SKEW, &mut Cache::default())?;
        Ok(tgk)
    }

    // ---- KMS logic stub --------------------------------------------------------------
    fn kms_request(req: &[u8]) -> Result<Vec<u8>, Error> {
        kms_request_keyed(req, &mut None)
    }

    /// The KMS answer to a REQUEST_INIT: REQUEST_RESP, or an error message, MACed with the
    /// response key once the request's MAC verified (`error_message::reply`).
    fn kms_answer(req: &[u8]) -> Vec<u8> {
        let mut verified = None;
        kms_request_keyed(req, &mut verified).unwrap_or_else(|e| {
            let hdr = Message::decode(req).expect("the tests only send decodable requests").header;
            let key = verified.as_ref().map(|k: &Vec<u8>| error_message::ErrorKey { mac: tk::MAC, auth_key: k });
            error_message::reply(&hdr, ts(1), &e, key).expect("error message")
        })
    }

    /// `verified` receives the response auth_key as soon as the request's MAC verified.
    fn kms_request_keyed(req: &[u8], verified: &mut Option<Vec<u8>>) -> Result<Vec<u8>, Error> {
        let m = tk::decode_expect(req, DataType::REQUEST_INIT_PSK)?;
        let psk = psk_for(&tk::id_of(&m, IdRole::PSK))?;
        let randri = tk::rand_of(&m, RandRole::INITIATOR).ok_or(Error::Rejected { code: ErrorCode::UNSPECIFIED, reason: "RANDRi".into() })?;
        let k = tk::message_keys(&psk, m.header.csb_id, Direction::Initial, Some(&randri), None)?;
        tk::verify_v(req, &k.auth_key, &[&tk::id_of(&m, IdRole::INITIATOR), &tk::id_of(&m, IdRole::KMS)])?;
        *verified = Some(tk::message_keys(&psk, m.header.csb_id, Direction::Response, Some(&randri), None)?.auth_key.to_vec());
        tk::check_fresh(&m, NOW, SKEW, &mut Cache::default())?;
        kms_issue(&m, &psk, req)
    }

    /// Checks the TP, issues the ticket and builds REQUEST_RESP keyed from `inkey` (PSK or env_key).
    fn kms_issue(m: &Message, inkey: &[u8], req: &[u8]) -> Result<Vec<u8>, Error> {
        let randri = tk::rand_of(m, RandRole::INITIATOR).ok_or(Error::Rejected { code: ErrorCode::UNSPECIFIED, reason: "RANDRi".into() })?;
        let tp = m.find(|p| if let Payload::Tp(t) = p { Some(t.clone()) } else { None }).ok_or(Error::Rejected { code: ErrorCode::INVALID_TPPAR, reason: "no TP".into() })?;
        tp.flags.check().map_err(|e| Error::Rejected { code: ErrorCode::INVALID_TPPAR, reason: e.into() })?;
        let content = TicketContent { mpk: vec![0x4d; 16], keys: vec![tk::key(KeyType::TGK, &[0x7b; 16], &MKI)] };
        let ticket = tk::issue_ticket(tp, &TPK, TPK_ID, ts(0), &[0x99; 16], &content)?;
        let rk = tk::message_keys(inkey, m.header.csb_id, Direction::Response, Some(&randri), None)?;
        let t = ts(0);
        let keys = forking::request_resp_keys(&content, &[0x99; 16], &TPK_ID.to_be_bytes(), forking::is_forking(&ticket))?;
        let kem = tk::kemac(&rk, m.header.csb_id, &t, &keys)?;
        let resp = Message {
            header: CommonHeader { data_type: DataType::REQUEST_RESP, v_flag: false, ..m.header.clone() },
            payloads: vec![Payload::T(t), tk::idr(IdRole::KMS, IdType::NAI, ID_KMS), Payload::Ticket(ticket), kem],
        };
        tk::seal(resp, &rk.auth_key, &[req])
    }

    /// `randrkms` is the fresh RANDRkms this resolution uses when the ticket forks.
    fn kms_resolve(ri: &[u8], randrkms: &[u8]) -> Result<Vec<u8>, Error> {
        let m = tk::decode_expect(ri, DataType::RESOLVE_INIT_PSK)?;
        let psk = psk_for(&tk::id_of(&m, IdRole::PSK))?;
        let randrr = tk::rand_of(&m, RandRole::RESPONDER).ok_or(Error::Rejected { code: ErrorCode::UNSPECIFIED, reason: "RANDRr".into() })?;
        let k = tk::message_keys(&psk, m.header.csb_id, Direction::Initial, None, Some(&randrr))?;
        let id_r = tk::id_of(&m, IdRole::RESPONDER);
        tk::verify_v(ri, &k.auth_key, &[&id_r, &tk::id_of(&m, IdRole::KMS)])?;
        tk::check_fresh(&m, NOW, SKEW, &mut Cache::default())?;
        kms_resolve_verified(&m, &psk, ri, randrkms)
    }

    /// Opens and authorises the ticket of a verified RESOLVE_INIT; RESOLVE_RESP keyed from `inkey`.
    fn kms_resolve_verified(m: &Message, inkey: &[u8], ri: &[u8], randrkms: &[u8]) -> Result<Vec<u8>, Error> {
        let randrr = tk::rand_of(m, RandRole::RESPONDER).ok_or(Error::Rejected { code: ErrorCode::UNSPECIFIED, reason: "RANDRr".into() })?;
        let id_r = tk::id_of(m, IdRole::RESPONDER);
        let ticket = tk::ticket_of(m)?;
        let content = tk::open_ticket(&ticket, |id| (id == TPK_ID).then(|| TPK.to_vec()))?;
        let allowed = decode_first_payload_chain(&ticket.policy.data, 0)?
            .iter()
            .any(|p| matches!(p, Payload::Idr(i) if i.role == IdRole::RESPONDER && i.data == id_r));
        if !allowed {
            return Err(Error::Rejected { code: ErrorCode::INVALID_ID, reason: "responder not authorised by the ticket".into() });
        }
        let rand = forking::ticket_rand(&ticket)?;
        let forks = forking::is_forking(&ticket);
        if forks {
            let (_, mpkr) = tk::mpk_i_r(&content.mpk, &rand)?;
            forking::verify_initiator_data(&ticket, &mpkr)?;
        }
        let fork = ForkModifier { id_r, id_type: IdType::NAI, randrkms: forks.then(|| randrkms.to_vec()) };
        let keys = forking::resolve_resp_keys(&content, &rand, &TPK_ID.to_be_bytes(), forks.then_some(&fork))?;
        let rk = tk::message_keys(inkey, m.header.csb_id, Direction::Response, None, Some(&randrr))?;
        let t = ts(2);
        let kem = tk::kemac(&rk, m.header.csb_id, &t, &keys)?;
        let mut payloads = vec![Payload::T(t), tk::idr(IdRole::KMS, IdType::NAI, ID_KMS), kem];
        payloads.extend(fork.payloads());
        let resp = Message { header: CommonHeader { data_type: DataType::RESOLVE_RESP, v_flag: false, ..m.header.clone() }, payloads };
        tk::seal(resp, &rk.auth_key, &[ri])
    }

    // ---- responder -------------------------------------------------------------------
    fn resolve_init(ti: &[u8], r: Responder) -> Result<Vec<u8>, Error> {
        let m = tk::decode_expect(ti, DataType::TRANSFER_INIT)?;
        let ticket = tk::ticket_of(&m)?;
        if ticket.policy.ticket_type != TicketType::THREE_GPP {
            return Err(Error::Rejected { code: ErrorCode::INVALID_TICKET, reason: "type".into() });
        }
        let msg = Message {
            header: tk::header(DataType::RESOLVE_INIT_PSK, true, 0x7777_0001, CsIdMap::Empty { n_cs: 0 }),
            payloads: vec![
                Payload::T(ts(2)),
                tk::randr(RandRole::RESPONDER, &r.randrr),
                tk::idr(IdRole::RESPONDER, IdType::NAI, r.id),
                tk::idr(IdRole::KMS, IdType::NAI, ID_KMS),
                Payload::Ticket(ticket),
                tk::idr(IdRole::PSK, IdType::BYTE_STRING, r.id),
            ],
        };
        let k = tk::message_keys(&r.psk, 0x7777_0001, Direction::Initial, None, Some(&r.randrr))?;
        tk::seal(msg, &k.auth_key, &[r.id, ID_KMS])
    }

    /// What a responder holds after RESOLVE_RESP.
    struct Resolved {
        /// Key of TRANSFER_RESP's V: MPKi, or MPKr' when forking.
        resp_key: Vec<u8>,
        tgk: KeyData,
        fork: ForkModifier,
    }

    fn responder_resolve(ti: &[u8], ri: &[u8], rr: &[u8], r: Responder) -> Result<(Resolved, Message), Error> {
        responder_resolve_with(&r.psk, ti, ri, rr, r)
    }

    /// `inkey`: the responder's PSK, or the env_key of its RESOLVE_INIT_PK.
    fn responder_resolve_with(inkey: &[u8], ti: &[u8], ri: &[u8], rr: &[u8], r: Responder) -> Result<(Resolved, Message), Error> {
        let m = tk::decode_expect(rr, DataType::RESOLVE_RESP)?;
        let k = tk::message_keys(inkey, m.header.csb_id, Direction::Response, None, Some(&r.randrr))?;
        tk::verify_v(rr, &k.auth_key, &[ri])?;
        tk::check_fresh(&m, NOW, SKEW, &mut Cache::default())?;
        let keys = tk::open_kemac(&m, &k, m.header.csb_id)?;
        let tim = tk::decode_expect(ti, DataType::TRANSFER_INIT)?;
        let forks = forking::is_forking(&tk::ticket_of(&tim)?);
        let bad = || Error::Rejected { code: ErrorCode::UNSPECIFIED, reason: "KEMAC".into() };
        let (mpki, resp_key, tgk) = match (forks, keys.as_slice()) {
            (false, [a, b]) => (a.key.clone(), a.key.clone(), b.clone()),
            (true, [a, r2, b]) => (a.key.clone(), r2.key.clone(), b.clone()),
            _ => return Err(bad()),
        };
        let randri = tk::rand_of(&tim, RandRole::INITIATOR).unwrap_or_default();
        let ik = tk::message_keys(&mpki, tim.header.csb_id, Direction::Initial, Some(&randri), None)?;
        tk::verify_v(ti, &ik.auth_key, &[&tk::id_of(&tim, IdRole::INITIATOR), &tk::id_of(&tim, IdRole::RESPONDER)])?;
        if forks {
            forking::check_vi(&tim)?;
        }
        tk::check_fresh(&tim, NOW, SKEW, &mut Cache::default())?;
        Ok((Resolved { resp_key, tgk, fork: ForkModifier::of(&m)? }, tim))
    }

    /// TRANSFER_RESP `HDR, T, IDRr, [RANDRkms], V` keyed with `key`, claiming `fork`'s identity.
    fn transfer_resp(ti: &[u8], tim: &Message, key: &[u8], fork: &ForkModifier) -> Result<Vec<u8>, Error> {
        let randri = tk::rand_of(tim, RandRole::INITIATOR).unwrap_or_default();
        let mut payloads = vec![Payload::T(ts(3))];
        payloads.extend(fork.payloads());
        let resp = Message { header: CommonHeader { data_type: DataType::TRANSFER_RESP, v_flag: false, ..tim.header.clone() }, payloads };
        let rk = tk::message_keys(key, tim.header.csb_id, Direction::Response, Some(&randri), None)?;
        tk::seal(resp, &rk.auth_key, &[ti])
    }

    /// Verifies RESOLVE_RESP and TRANSFER_INIT; returns (TRANSFER_RESP, responder policy).
    fn responder_finish(ti: &[u8], ri: &[u8], rr: &[u8], r: Responder) -> Result<(Vec<u8>, SrtpPolicy), Error> {
        let (res, tim) = responder_resolve(ti, ri, rr, r)?;
        let randri = tk::rand_of(&tim, RandRole::INITIATOR).unwrap_or_default();
        let sp = tim.find(|p| if let Payload::Sp(s) = p { Some(s.clone()) } else { None }).ok_or(Error::Rejected { code: ErrorCode::INVALID_SP, reason: "no SP".into() })?;
        let policy = derive(&res.tgk, &randri, &sp)?;
        Ok((transfer_resp(ti, &tim, &res.resp_key, &res.fork)?, policy))
    }

    /// TEK/salt for CS 1 from the TGK, RANDRi only (flags H = 1, G = 0; RFC 6043 §5.1.3).
    fn derive(tgk: &KeyData, randri: &[u8], sp: &SecurityPolicy) -> Result<SrtpPolicy, Error> {
        let mki = match &tgk.validity {
            KeyValidity::Spi(s) => s.clone(),
            _ => Vec::new(),
        };
        let cs = CryptoSession { ssrc: SSRC, roc: 0, mki };
        srtp_policy::derive(tk::PRF, &tgk.key, |c| keys::label_ticket_tgk(c, 1, Some(randri), None), tgk.salt.as_deref(), sp, &cs)
    }

    fn ok_code(e: &Error) -> bool {
        matches!(
            e.err_code(),
            ErrorCode::AUTH_FAILURE
                | ErrorCode::UNSUPPORTED_MESSAGE
                | ErrorCode::INVALID_DT
                | ErrorCode::INVALID_PRF
                | ErrorCode::INVALID_MAC
                | ErrorCode::INVALID_EA
                | ErrorCode::INVALID_TS
                | ErrorCode::INVALID_ID
                | ErrorCode::INVALID_CERT
                | ErrorCode::INVALID_TICKET
                | ErrorCode::INVALID_TPPAR
                | ErrorCode::INVALID_SP
                | ErrorCode::UNSPECIFIED
        )
    }

    fn tamper_all(bytes: &[u8], what: &str, step: impl Fn(&[u8]) -> Result<(), Error>) -> usize {
        let mut auth = 0;
        for i in 0..bytes.len() {
            let mut t = bytes.to_vec();
            t[i] ^= 0x01;
            let e = step(&t).expect_err(&format!("{what}: tampered byte {i} accepted"));
            assert!(ok_code(&e), "{what} byte {i}: {e}");
            if e.err_code() == ErrorCode::AUTH_FAILURE {
                auth += 1;
            }
            // Every failure is answered with an error message carrying its ERR code (HDR
            // copied when it decodes; unprotected, the receiver could not authenticate it).
            if let Ok(m) = Message::decode(&t) {
                let err = error_message::reply(&m.header, ts(5), &e, None).expect("error message");
                let report = error_message::verify(&err, None).expect("err decodes");
                assert_eq!(report.codes(), [e.err_code()], "{what} byte {i}");
                assert!(!report.is_authenticated());
            }
        }
        auth
    }

    #[test]
    fn full_exchange_gives_identical_srtp_policies_and_detects_tampering() {
        let req = request_init();
        let resp = kms_request(&req).expect("KMS request");
        let g = handle_request_resp(&req, &resp).expect("I: REQUEST_RESP");
        let ti = transfer_init(&g);
        let ri = resolve_init(&ti, BOB).expect("R: RESOLVE_INIT");
        let rr = kms_resolve(&ri, &BOB.randrkms).expect("KMS resolve");
        let (tr, r_policy) = responder_finish(&ti, &ri, &rr, BOB).expect("R: finish");
        let tgk = handle_transfer_resp(&ti, &g, &tr).expect("I: TRANSFER_RESP");
        let i_policy = derive(&tgk, &RANDRI2, &psk_exchange::sp()).expect("I: policy");
        assert_eq!(i_policy, r_policy);
        assert_eq!(i_policy.suite, "AES_CM_128_HMAC_SHA1_80");
        assert_eq!(i_policy.mki, MKI);
        assert_eq!(i_policy.master_key.as_slice(), prf(PrfFunc::HMAC_SHA_256, &[0x7b; 16], &keys::label_ticket_tgk(keys::TEK, 1, Some(&RANDRI2), None), 16).expect("prf").as_slice());

        for (name, m) in [("request_init", &req), ("request_resp", &resp), ("transfer_init", &ti), ("resolve_init", &ri), ("resolve_resp", &rr), ("transfer_resp", &tr)] {
            dump(&format!("ticket-{name}"), m);
        }
        // Every message decodes and re-encodes exactly; the ticket opens only with its key.
        for m in [&req, &resp, &ti, &ri, &rr, &tr] {
            assert_eq!(&Message::decode(m).expect("decode").encode().expect("encode"), m);
        }
        let t = tk::ticket_of(&Message::decode(&ti).expect("ti")).expect("ticket");
        assert_eq!(tk::open_ticket(&t, |_| Some(vec![0; 16])).expect_err("wrong TPK").err_code(), ErrorCode::AUTH_FAILURE);
        assert_eq!(tk::open_ticket(&t, |_| None).expect_err("unknown key id").err_code(), ErrorCode::INVALID_TICKET);

        // Replays are refused by a shared cache.
        let mut cache = Cache::default();
        let m = Message::decode(&req).expect("req");
        tk::check_fresh(&m, NOW, SKEW, &mut cache).expect("first");
        assert_eq!(tk::check_fresh(&m, NOW, SKEW, &mut cache).expect_err("replay").err_code(), ErrorCode::INVALID_TS);
        assert_eq!(tk::check_fresh(&m, NOW + 600, SKEW, &mut Cache::default()).expect_err("skew").err_code(), ErrorCode::INVALID_TS);

        // Tampering with any byte of any message is detected by its receiver.
        let mut auth = 0;
        auth += tamper_all(&req, "REQUEST_INIT", |b| kms_request(b).map(drop));
        auth += tamper_all(&resp, "REQUEST_RESP", |b| handle_request_resp(&req, b).map(drop));
        auth += tamper_all(&ti, "TRANSFER_INIT", |b| {
            let ri = resolve_init(b, BOB)?;
            let rr = kms_resolve(&ri, &BOB.randrkms)?;
            responder_finish(b, &ri, &rr, BOB).map(drop)
        });
        auth += tamper_all(&ri, "RESOLVE_INIT", |b| kms_resolve(b, &BOB.randrkms).map(drop));
        auth += tamper_all(&rr, "RESOLVE_RESP", |b| responder_finish(&ti, &ri, b, BOB).map(drop));
        auth += tamper_all(&tr, "TRANSFER_RESP", |b| handle_transfer_resp(&ti, &g, b).map(drop));
        let total = req.len() + resp.len() + ti.len() + ri.len() + rr.len() + tr.len();
        assert!(auth * 2 > total, "most tampering must be an authentication failure ({auth}/{total})");
    }

    #[test]
    fn forking_gives_each_responder_its_own_key_and_detects_tampering() {
        let req = request_init_with(flags().with(TicketFlags::I), &[BOB.id, CAROL.id]);
        let resp = kms_request(&req).expect("KMS request");
        let g = handle_request_resp(&req, &resp).expect("I: REQUEST_RESP");
        assert!(g.mpkr.is_some(), "REQUEST_RESP carries MPKr when forking");
        let ti = transfer_init(&g);
        let t = tk::ticket_of(&Message::decode(&ti).expect("ti")).expect("ticket");
        assert!(forking::is_forking(&t) && !t.initiator_data.is_empty());

        // Both responders resolve the same TRANSFER_INIT (a forked SIP INVITE).
        let mut results = Vec::new();
        for r in [BOB, CAROL] {
            let ri = resolve_init(&ti, r).expect("RESOLVE_INIT");
            let rr = kms_resolve(&ri, &r.randrkms).expect("KMS resolve");
            let (res, _) = responder_resolve(&ti, &ri, &rr, r).expect("resolve");
            assert_eq!(res.fork.id_r, r.id);
            let (tr, r_policy) = responder_finish(&ti, &ri, &rr, r).expect("finish");
            // The initiator derives exactly this responder's key from its TRANSFER_RESP.
            let tgk = handle_transfer_resp(&ti, &g, &tr).expect("I: TRANSFER_RESP");
            assert_eq!(tgk, res.tgk);
            assert_eq!(derive(&tgk, &RANDRI2, &psk_exchange::sp()).expect("policy"), r_policy);
            // TGK' and MPKr' are the RFC 6043 §5.1.1 PRF outputs.
            let expect_tgk = prf(tk::PRF, &[0x7b; 16], &keys::label_fork(keys::FORK_TGK, r.id, Some(&r.randrkms)), 16).expect("prf");
            assert_eq!(tgk.key.as_slice(), expect_tgk.as_slice());
            let (_, mpkr) = tk::mpk_i_r(&[0x4d; 16], &[0x99; 16]).expect("mpk");
            let expect_mpkr = prf(tk::PRF, &mpkr, &keys::label_fork(keys::FORK_MPKR, r.id, Some(&r.randrkms)), 16).expect("prf");
            assert_eq!(res.resp_key.as_slice(), expect_mpkr.as_slice());
            results.push((ri, rr, tr, res, r_policy));
        }
        let [(ri_b, rr_b, tr_b, res_b, pol_b), (_, _, tr_c, res_c, pol_c)] = <[_; 2]>::try_from(results).ok().expect("two");
        assert_ne!(res_b.tgk.key, res_c.tgk.key, "forked TGKs differ");
        assert_ne!(res_b.resp_key, res_c.resp_key, "forked MPKr' differ");
        assert_ne!(pol_b.master_key, pol_c.master_key, "SRTP master keys differ");
        assert_ne!(tr_b, tr_c);

        // Carol cannot answer in Bob's name: claiming Bob's modifier with her MPKr' fails.
        let tim = Message::decode(&ti).expect("ti");
        let forged = transfer_resp(&ti, &tim, &res_c.resp_key, &res_b.fork).expect("forge");
        assert_eq!(handle_transfer_resp(&ti, &g, &forged).expect_err("forged").err_code(), ErrorCode::AUTH_FAILURE);
        // Nor with the unforked MPKi (what a non-forking responder would use).
        let forged = transfer_resp(&ti, &tim, &g.mpki, &res_c.fork).expect("forge");
        assert_eq!(handle_transfer_resp(&ti, &g, &forged).expect_err("mpki").err_code(), ErrorCode::AUTH_FAILURE);
        // A forking TRANSFER_INIT stripped of its Initiator Data is refused by the KMS.
        let mut stripped = tim;
        for p in &mut stripped.payloads {
            if let Payload::Ticket(t) = p {
                t.initiator_data.clear();
            }
        }
        let stripped = stripped.encode().expect("encode");
        let ri = resolve_init(&stripped, BOB).expect("ri");
        assert_eq!(kms_resolve(&ri, &BOB.randrkms).expect_err("no initiator data").err_code(), ErrorCode::INVALID_TICKET);

        for (name, m) in [("request_init", &req), ("request_resp", &resp), ("transfer_init", &ti), ("resolve_init", &ri_b), ("resolve_resp", &rr_b), ("transfer_resp", &tr_b)] {
            dump(&format!("ticket-fork-{name}"), m);
        }
        // Every message of the forking exchange decodes and re-encodes exactly.
        for m in [&req, &resp, &ti, &ri_b, &rr_b, &tr_b] {
            assert_eq!(&Message::decode(m).expect("decode").encode().expect("encode"), m);
        }
        // Flip any byte of any forking message: detected.
        tamper_all(&resp, "REQUEST_RESP(I)", |b| handle_request_resp(&req, b).map(drop));
        tamper_all(&ti, "TRANSFER_INIT(I)", |b| {
            let ri = resolve_init(b, BOB)?;
            let rr = kms_resolve(&ri, &BOB.randrkms)?;
            responder_finish(b, &ri, &rr, BOB).map(drop)
        });
        tamper_all(&rr_b, "RESOLVE_RESP(I)", |b| responder_finish(&ti, &ri_b, b, BOB).map(drop));
        tamper_all(&tr_b, "TRANSFER_RESP(I)", |b| handle_transfer_resp(&ti, &g, b).map(drop));
    }

    #[test]
    fn errors_after_the_mac_verified_are_macd_and_tell_authenticated_from_not() {
        // I without E violates RFC 6043 §6.10; the KMS finds it after the MAC verified.
        let bad = TicketFlags(flags().0 & !TicketFlags::E.0).with(TicketFlags::I);
        let req = request_init_with(bad, &[BOB.id]);
        let err = kms_answer(&req);
        let rk = tk::message_keys(&PSK_I, 0x0a0b_0c0d, Direction::Response, Some(&RANDRI), None).expect("keys");
        let key = error_message::ErrorKey { mac: tk::MAC, auth_key: &rk.auth_key };
        dump("ticket-error-macd", &err);
        let report = error_message::verify(&err, Some(key)).expect("authenticated error");
        assert!(report.is_authenticated());
        assert_eq!(report.codes(), [ErrorCode::INVALID_TPPAR]);
        let m = Message::decode(&err).expect("decode");
        assert_eq!(m.header.data_type, DataType::ERROR);
        assert_eq!(m.header.csb_id, 0x0a0b_0c0d);
        assert!(!m.header.v_flag);
        assert!(matches!(m.payloads.as_slice(), [Payload::T(_), Payload::Err(_), Payload::V(_)]));
        // Without the key the same message is only a hint.
        assert!(!error_message::verify(&err, None).expect("unchecked").is_authenticated());
        // A wrong key, or any flipped byte, never yields an authenticated report.
        let wrong = error_message::ErrorKey { mac: tk::MAC, auth_key: &[0u8; 32] };
        assert_eq!(error_message::verify(&err, Some(wrong)).expect_err("wrong key").err_code(), ErrorCode::AUTH_FAILURE);
        for i in 0..err.len() {
            let mut t = err.clone();
            t[i] ^= 0x01;
            match error_message::verify(&t, Some(key)) {
                Err(_) | Ok(ErrorReport::Unauthenticated { .. }) => {}
                Ok(r) => panic!("tampered byte {i} gave an authenticated report {r:?}"),
            }
        }
        // An authentication failure is answered unprotected, and the client can tell.
        let mut tampered = request_init();
        let last = tampered.len() - 1;
        tampered[last] ^= 0x80;
        let err = kms_answer(&tampered);
        let report = error_message::verify(&err, Some(key)).expect("unprotected error");
        assert!(matches!(&report, ErrorReport::Unauthenticated { codes, .. } if codes == &[ErrorCode::AUTH_FAILURE]));
        // An error message is never answered with an error message.
        let hdr = Message::decode(&err).expect("err").header;
        assert!(build_error(&hdr, ts(2), ErrorCode::UNSPECIFIED).is_err());
    }

    #[test]
    fn srtp_id_map_in_a_ticket_transfer_is_refused() {
        let req = request_init();
        let g = handle_request_resp(&req, &kms_request(&req).expect("KMS")).expect("I");
        let ti = Message::decode(&transfer_init(&g)).expect("ti");
        let mut m = ti.clone();
        m.payloads.pop(); // V, re-sealed below
        m.header.cs_map = CsIdMap::SrtpId(vec![mediasec_mikey::SrtpCs { policy_no: 0, ssrc: SSRC, roc: 0 }]);
        let k = tk::message_keys(&g.mpki, m.header.csb_id, Direction::Initial, Some(&RANDRI2), None).expect("keys");
        let srtp_id = tk::seal(m, &k.auth_key, &[ID_I, BOB.id]).expect("seal");
        // Refused by the responder before it contacts the KMS, with ERR 13.
        let e = resolve_init(&srtp_id, BOB).expect_err("SRTP-ID map");
        assert_eq!(e.err_code(), ErrorCode::UNSUPPORTED_MESSAGE);
        assert!(e.to_string().contains("SRTP-ID"), "{e}");
        // The same rule for TRANSFER_RESP, and the Empty map is for KMS exchanges only.
        let mut h = ti.header.clone();
        h.data_type = DataType::TRANSFER_RESP;
        h.cs_map = CsIdMap::SrtpId(Vec::new());
        assert_eq!(tk::check_cs_map(&h).expect_err("resp").err_code(), ErrorCode::UNSUPPORTED_MESSAGE);
        h.cs_map = CsIdMap::Empty { n_cs: 0 };
        assert!(tk::check_cs_map(&h).is_err());
        h.data_type = DataType::RESOLVE_INIT_PSK;
        tk::check_cs_map(&h).expect("Empty map in a KMS exchange");
        h.cs_map = ti.header.cs_map;
        assert!(tk::check_cs_map(&h).is_err());
    }

    mod pk {
        use super::*;
        use aws_lc_rs::encoding::AsDer;
        use aws_lc_rs::rsa::{KeyPair, KeySize, PrivateDecryptingKey};
        use mediasec_mikey::pk;

        const KMS_CERT: &[u8] = b"DER of the KMS encryption certificate";

        struct Keys {
            kms_pkcs8: Vec<u8>,
            kms_spki: Vec<u8>,
            alice: KeyPair,
            bob: KeyPair,
        }

        fn keys() -> Keys {
            let kms = PrivateDecryptingKey::generate(KeySize::Rsa2048).expect("kms key");
            Keys {
                kms_pkcs8: kms.as_der().expect("pkcs8").as_ref().to_vec(),
                kms_spki: kms.public_key().as_der().expect("spki").as_ref().to_vec(),
                alice: KeyPair::generate(KeySize::Rsa2048).expect("alice"),
                bob: KeyPair::generate(KeySize::Rsa2048).expect("bob"),
            }
        }

        fn request_init_pk(k: &Keys, env_key: &[u8], sig: SignatureType) -> Vec<u8> {
            let psk_form = Message::decode(&request_init()).expect("psk form");
            let mut payloads: Vec<Payload> = psk_form.payloads.into_iter().filter(|p| !matches!(p, Payload::V(_) | Payload::Idr(Idr { role: IdRole::PSK, .. }))).collect();
            payloads.insert(3, pk::cert(b"DER of alice's certificate"));
            payloads.push(pk::chash(KMS_CERT));
            let m = Message { header: tk::header(DataType::REQUEST_INIT_PK, true, 0x0a0b_0c0d, CsIdMap::Empty { n_cs: 0 }), payloads };
            pk::seal_pk(m, env_key, &k.kms_spki, &k.alice, sig, &[ID_I, ID_KMS]).expect("seal")
        }

        /// KMS: signer keys by identity (the test's PKI), CHASH must name our certificate.
        fn kms_open(k: &Keys, bytes: &[u8], dt: DataType, role: IdRole) -> Result<pk::OpenedPk, Error> {
            let registered = |m: &Message| match tk::id_of(m, role).as_slice() {
                ID_I => Some(pk::public_key_der(&k.alice)),
                id if id == BOB.id => Some(pk::public_key_der(&k.bob)),
                _ => None,
            };
            let o = pk::open_pk(bytes, dt, &k.kms_pkcs8, registered, |m| vec![tk::id_of(m, role), tk::id_of(m, IdRole::KMS)])?;
            if o.message.find(|p| if let Payload::Chash(c) = p { Some(c.clone()) } else { None }) != Some(match pk::chash(KMS_CERT) {
                Payload::Chash(c) => c,
                _ => unreachable!(),
            }) {
                return Err(Error::Rejected { code: ErrorCode::INVALID_CERT, reason: "CHASH names another KMS certificate".into() });
            }
            tk::check_fresh(&o.message, NOW, SKEW, &mut Cache::default())?;
            Ok(o)
        }

        #[test]
        fn pk_request_and_resolve_sign_encrypt_and_reject_tampering() {
            let k = keys();
            let env_i = [0xE1u8; 16];
            for sig in [SignatureType::RSA_PKCS1_V1_5, SignatureType::RSA_PSS] {
                let req = request_init_pk(&k, &env_i, sig);
                let m = Message::decode(&req).expect("decode");
                assert_eq!(m.encode().expect("encode"), req);
                assert!(matches!(m.payloads.as_slice(), [Payload::T(_), Payload::Randr(_), Payload::Idr(_), Payload::Cert(_), Payload::Idr(_), Payload::Tp(_), Payload::Chash(_), Payload::Pke(_), Payload::Sign(s)] if s.sig_type == sig && s.signature.len() == 256));
                let o = kms_open(&k, &req, DataType::REQUEST_INIT_PK, IdRole::INITIATOR).expect("KMS opens");
                assert_eq!(o.env_key.as_slice(), env_i);
                // REQUEST_RESP keyed from the env_key: the initiator gets its ticket and keys.
                let resp = kms_issue(&o.message, &o.env_key, &req).expect("issue");
                let g = handle_request_resp_with(&env_i, &req, &resp).expect("I: REQUEST_RESP");
                assert_eq!(g.tgk.key, [0x7b; 16]);
            }
            let req = request_init_pk(&k, &env_i, SignatureType::RSA_PKCS1_V1_5);
            dump("ticket-pk-request_init", &req);
            // Wrong KMS key: the PKE does not decrypt (signature still fine) → Auth failure.
            let other = PrivateDecryptingKey::generate(KeySize::Rsa2048).expect("other");
            let wrong = Keys { kms_pkcs8: other.as_der().expect("der").as_ref().to_vec(), kms_spki: k.kms_spki.clone(), alice: KeyPair::generate(KeySize::Rsa2048).expect("a"), bob: KeyPair::generate(KeySize::Rsa2048).expect("b") };
            let e = pk::open_pk(&req, DataType::REQUEST_INIT_PK, &wrong.kms_pkcs8, |_| Some(pk::public_key_der(&k.alice)), |m| vec![tk::id_of(m, IdRole::INITIATOR), tk::id_of(m, IdRole::KMS)]).expect_err("wrong KMS key");
            assert_eq!(e.err_code(), ErrorCode::AUTH_FAILURE);
            // Signed by someone else than the registered key → Auth failure; unknown signer → Invalid Cert.
            let e = pk::open_pk(&req, DataType::REQUEST_INIT_PK, &k.kms_pkcs8, |_| Some(pk::public_key_der(&k.bob)), |_| Vec::new()).expect_err("wrong signer");
            assert_eq!(e.err_code(), ErrorCode::AUTH_FAILURE);
            let e = pk::open_pk(&req, DataType::REQUEST_INIT_PK, &k.kms_pkcs8, |_| None, |_| Vec::new()).expect_err("unknown signer");
            assert_eq!(e.err_code(), ErrorCode::INVALID_CERT);
            // The identities are signed too (Table 5.2).
            let e = pk::open_pk(&req, DataType::REQUEST_INIT_PK, &k.kms_pkcs8, |_| Some(pk::public_key_der(&k.alice)), |_| vec![b"mallory@x".to_vec()]).expect_err("identities");
            assert_eq!(e.err_code(), ErrorCode::AUTH_FAILURE);
            // ECCSI cannot be produced here.
            let m = Message::decode(&req).expect("decode");
            let mut unsigned = m;
            unsigned.payloads.truncate(unsigned.payloads.len() - 2);
            assert!(matches!(pk::seal_pk(unsigned, &env_i, &k.kms_spki, &k.alice, SignatureType::ECCSI, &[]), Err(Error::Unsupported { .. })));
            // Tampered signature, and any flipped byte of the message: rejected with an ERR code.
            let mut sig = req.clone();
            let last = sig.len() - 1;
            sig[last] ^= 0x01;
            assert_eq!(kms_open(&k, &sig, DataType::REQUEST_INIT_PK, IdRole::INITIATOR).expect_err("signature").err_code(), ErrorCode::AUTH_FAILURE);
            tamper_all(&req, "REQUEST_INIT_PK", |b| kms_open(&k, b, DataType::REQUEST_INIT_PK, IdRole::INITIATOR).map(drop));

            // RESOLVE_INIT_PK: Bob resolves the (PSK-requested) ticket with a signature.
            let req = request_init();
            let g = handle_request_resp(&req, &kms_request(&req).expect("KMS")).expect("I");
            let ti = transfer_init(&g);
            let psk_form = Message::decode(&resolve_init(&ti, BOB).expect("ri")).expect("decode");
            let payloads: Vec<Payload> = psk_form.payloads.into_iter().filter(|p| !matches!(p, Payload::V(_) | Payload::Idr(Idr { role: IdRole::PSK, .. }))).chain([pk::chash(KMS_CERT)]).collect();
            let env_r = [0xE2u8; 16];
            let m = Message { header: tk::header(DataType::RESOLVE_INIT_PK, true, 0x7777_0001, CsIdMap::Empty { n_cs: 0 }), payloads };
            let ri = pk::seal_pk(m, &env_r, &k.kms_spki, &k.bob, SignatureType::RSA_PSS, &[BOB.id, ID_KMS]).expect("seal");
            dump("ticket-pk-resolve_init", &ri);
            let o = kms_open(&k, &ri, DataType::RESOLVE_INIT_PK, IdRole::RESPONDER).expect("KMS opens");
            assert_eq!(o.env_key.as_slice(), env_r);
            let rr = kms_resolve_verified(&o.message, &o.env_key, &ri, &BOB.randrkms).expect("resolve");
            let (res, _) = responder_resolve_with(&env_r, &ti, &ri, &rr, BOB).expect("R: RESOLVE_RESP");
            assert_eq!(res.tgk.key, [0x7b; 16]);
            // Alice's key cannot sign for Bob; the data type must match.
            assert_eq!(kms_open(&k, &ri, DataType::REQUEST_INIT_PK, IdRole::RESPONDER).expect_err("dt").err_code(), ErrorCode::INVALID_DT);
            tamper_all(&ri, "RESOLVE_INIT_PK", |b| kms_open(&k, b, DataType::RESOLVE_INIT_PK, IdRole::RESPONDER).map(drop));
        }
    }
}

/// The wolfSSL peer harnesses (`tests/peers/*.c`, Debian `libwolfssl-dev`): compiled here
/// with `cc … -lwolfssl`, run with hex arguments.
mod wolfssl_peer {
    use std::io::Read;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    /// N random octets from `/dev/urandom`.
    pub(super) fn random<const N: usize>(f: &mut std::fs::File) -> [u8; N] {
        let mut b = [0u8; N];
        f.read_exact(&mut b).expect("urandom");
        b
    }

    /// Compiles `tests/peers/<name>.c`; `None` (skip, or panic under
    /// MEDIASEC_REQUIRE_PEERS=1) when `cc` or libwolfssl (`what`) is missing.
    pub(super) fn harness(name: &str, what: &str) -> Option<PathBuf> {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers").join(format!("{name}.c"));
        let dir = std::env::temp_dir().join(format!("mediasec-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp");
        let bin = dir.join(name);
        match Command::new("cc").arg("-o").arg(&bin).arg(src).arg("-lwolfssl").output() {
            Ok(o) if o.status.success() => Some(bin),
            Ok(o) => {
                mediasec_testkit::peer_unavailable(what, &String::from_utf8_lossy(&o.stderr));
                None
            }
            Err(e) => {
                mediasec_testkit::peer_unavailable("cc", &e.to_string());
                None
            }
        }
    }

    /// Runs the harness: (exit 0, trimmed stdout); exit 1 (a harness failure) panics.
    pub(super) fn run(bin: &Path, args: &[&str]) -> (bool, String) {
        let o = Command::new(bin).args(args).output().expect("run harness");
        assert!(o.status.code() != Some(1), "harness failed: {}", String::from_utf8_lossy(&o.stderr));
        (o.status.success(), String::from_utf8_lossy(&o.stdout).trim().to_string())
    }
}

/// ECCSI (RFC 6507) against an independent implementation: wolfSSL's wolfcrypt ECCSI, through
/// the tiny C harness `tests/peers/eccsi_wolfssl.c` compiled here with `cc … -lwolfssl`
/// (Debian `libwolfssl-dev`). Fresh random KMS keys, identities and messages every run.
mod eccsi_wolfssl {
    use super::wolfssl_peer::{harness, random, run};
    use mediasec_mikey::eccsi::{self, KmsSecret, SigningKey};

    /// 32 random octets (outside [1, q−1] with probability < 2⁻³²; the KMS loop retries).
    fn random32(f: &mut std::fs::File) -> [u8; 32] {
        random(f)
    }

    #[test]
    fn wolfssl_verifies_ours_and_we_verify_wolfssl() {
        let Some(bin) = harness("eccsi_wolfssl", "libwolfssl-dev (ECCSI)") else { return };
        let mut rng = std::fs::File::open("/dev/urandom").expect("urandom");
        for round in 0..4 {
            let kms = loop {
                if let Ok(k) = KmsSecret::from_bytes(&random32(&mut rng)) {
                    break k;
                }
            };
            let kpak = kms.kpak();
            let uri = format!("sip:user-{}@example.org", hex::encode(&random32(&mut rng)[..4]));
            let id = eccsi::identity(&uri, 2026 + round, 11);
            let (ssk, pvt) = kms.issue(&id, &random32(&mut rng)).expect("issue");
            let ssk_hex = hex::encode(&ssk.to_bytes()[..]);
            let key = SigningKey::new(&kpak, &id, ssk, pvt).expect("valid");
            let msg = random32(&mut rng).repeat(usize::from(round) + 1);
            let kpak_hex = hex::encode(kpak.to_uncompressed());
            let id_hex = hex::encode(&id);

            // (a) wolfSSL verifies our signature, and rejects it for another message.
            let sig = key.sign(&msg, &random32(&mut rng)).expect("sign");
            let (ok, out) = run(&bin, &["verify", &kpak_hex, &id_hex, &hex::encode(&msg), &hex::encode(sig)]);
            assert!(ok, "wolfSSL rejected our signature: {out}");
            let (ok, _) = run(&bin, &["verify", &kpak_hex, &id_hex, &hex::encode(&msg[1..]), &hex::encode(sig)]);
            assert!(!ok, "wolfSSL accepted our signature over another message");

            // (b) wolfSSL validates the SSK/PVT we issued, signs; we verify.
            let pvt_hex = hex::encode(pvt.to_uncompressed());
            let (ok, out) = run(&bin, &["sign", &kpak_hex, &id_hex, &ssk_hex, &pvt_hex, &hex::encode(&msg)]);
            assert!(ok, "wolfSSL could not sign");
            let theirs = hex::decode(out).expect("hex signature");
            assert_eq!(theirs.len(), eccsi::SIGNATURE_LEN);
            eccsi::verify(&kpak, &id, &msg, &theirs).expect("we verify wolfSSL's signature");
            assert!(eccsi::verify(&kpak, &eccsi::identity(&uri, 2026 + round, 12), &msg, &theirs).is_err());
        }
        let _ = std::fs::remove_dir_all(bin.parent().expect("dir"));
    }
}

/// SAKKE (RFC 6508, parameter set 1) against an independent implementation: wolfSSL's
/// wolfcrypt SAKKE, through the C harness `tests/peers/sakke_wolfssl.c` compiled here with
/// `cc … -lwolfssl` (Debian `libwolfssl-dev`). Fresh random KMS secret z, identity and SSVs
/// every run: wolfSSL issues the RSK from our z and it validates here (and ours there); we
/// encapsulate and wolfSSL derives the SSV; wolfSSL encapsulates and we decapsulate.
mod sakke_wolfssl {
    use super::wolfssl_peer::{harness, random, run};
    use mediasec_mikey::sakke::{self, KmsSecret, Rsk};

    #[test]
    fn wolfssl_and_we_agree_on_rsk_encapsulation_and_decapsulation() {
        let Some(bin) = harness("sakke_wolfssl", "libwolfssl-dev (SAKKE)") else { return };
        let mut rng = std::fs::File::open("/dev/urandom").expect("urandom");
        for round in 0..2u16 {
            // 127 random octets: below q (> 2^1021), at least 2 except with negligible odds.
            let z_bytes: [u8; 127] = random(&mut rng);
            let kms = KmsSecret::from_bytes(&z_bytes).expect("z in range");
            let zpub = kms.public_key();
            let z_hex = hex::encode(zpub.to_uncompressed());
            let uri = format!("tel:+4477009{:05}", u32::from_be_bytes(random(&mut rng)) % 100_000);
            let id = mediasec_mikey::eccsi::identity(&uri, 2026 + round, 11);
            let id_hex = hex::encode(&id);

            // The RSK wolfSSL issues from our z is the one we issue, and validates here.
            let (ok, theirs) = run(&bin, &["rsk", &hex::encode(z_bytes), &z_hex, &id_hex]);
            assert!(ok);
            let ours = kms.issue(&id).expect("issue");
            assert_eq!(theirs, hex::encode(&ours.to_uncompressed()[..]));
            let rsk = Rsk::new(&zpub, &id, &hex::decode(&theirs).expect("hex")).expect("wolfSSL RSK validates");
            // wolfSSL validates ours, and refuses it for another identifier.
            assert_eq!(run(&bin, &["validate", &z_hex, &id_hex, &theirs]), (true, "valid".into()));
            let other = hex::encode(mediasec_mikey::eccsi::identity(&uri, 2026 + round, 12));
            assert_eq!(run(&bin, &["validate", &z_hex, &other, &theirs]), (false, "invalid".into()));

            // We encapsulate, wolfSSL derives the same SSV; a tampered H is refused there.
            let ssv: [u8; 16] = random(&mut rng);
            let data = sakke::encapsulate(&zpub, &id, &ssv).expect("encapsulate");
            let (ok, out) = run(&bin, &["decap", &z_hex, &id_hex, &theirs, &hex::encode(data)]);
            assert!(ok, "wolfSSL refused our encapsulation: {out}");
            assert_eq!(out, hex::encode(ssv));
            let mut bad = data;
            bad[260] ^= 4;
            assert_eq!(run(&bin, &["decap", &z_hex, &id_hex, &theirs, &hex::encode(bad)]), (false, "refused".into()));

            // wolfSSL encapsulates (same SSV in, so the same deterministic output), we decapsulate.
            let ssv2: [u8; 16] = random(&mut rng);
            let (ok, out) = run(&bin, &["encap", &z_hex, &id_hex, &hex::encode(ssv2)]);
            assert!(ok);
            let theirs_data = hex::decode(out).expect("hex");
            assert_eq!(theirs_data, sakke::encapsulate(&zpub, &id, &ssv2).expect("encapsulate").to_vec());
            assert_eq!(sakke::decapsulate(&zpub, &rsk, &theirs_data).expect("decapsulate")[..], ssv2[..]);
        }
        let _ = std::fs::remove_dir_all(bin.parent().expect("dir"));
    }
}

/// MIKEY-SAKKE (`mikey_sakke`, RFC 6509) between identities of one KMS (ECCSI KSAK + SAKKE
/// master secret), with fresh OS randomness.
mod mikey_sakke_exchange {
    use mediasec_mikey::eccsi::{self, Kpak, SigningKey};
    use mediasec_mikey::mikey_sakke::{self, Identity, Offer};
    use mediasec_mikey::payload::{Payload, Timestamp};
    use mediasec_mikey::psk::ReplayCache;
    use mediasec_mikey::registry::*;
    use mediasec_mikey::sakke::{self, Rsk};
    use mediasec_mikey::signed_dh::Keys;
    use mediasec_mikey::srtp_policy::{self, SrtpPolicy};
    use mediasec_mikey::{Error, Message};
    use proptest::prelude::*;
    use std::collections::HashSet;
    use std::io::Read;

    /// 2026-11-24 10:00:00 UTC as a 64-bit NTP-UTC timestamp.
    pub(super) const NOW: u64 = 0xeeaf_dea0_0000_0000;
    const SEC: u64 = 1 << 32;
    /// 2026-12-01 00:00:00 UTC: the next key period.
    const DECEMBER: u64 = (0xeeaf_dea0 + 6 * 86_400 + 14 * 3_600) << 32;
    pub(super) const ALICE: &str = "sip:alice@sakke.example.org";
    pub(super) const BOB: &str = "sip:bob@sakke.example.org";
    const CAROL: &str = "sip:carol@sakke.example.org";
    const KMS: &str = "kms.sakke.example.org";

    #[derive(Default)]
    struct Cache(HashSet<(u32, u64, Vec<u8>)>);

    impl ReplayCache for Cache {
        fn insert(&mut self, csb: u32, ts: u64, sig: &[u8]) -> bool {
            self.0.insert((csb, ts, sig.to_vec()))
        }
    }

    fn os_random(buf: &mut [u8]) {
        std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(buf)).expect("urandom");
    }

    /// A KMS (ECCSI KSAK, SAKKE z) and Alice's signing key for November 2026.
    pub(super) struct Parties {
        ksak: eccsi::KmsSecret,
        pub(super) kpak: Kpak,
        master: sakke::KmsSecret,
        pub(super) z: sakke::PublicKey,
        alice: SigningKey,
    }

    impl Parties {
        pub(super) fn new() -> Self {
            let ksak = loop {
                let mut b = [0u8; 32];
                os_random(&mut b);
                if let Ok(k) = eccsi::KmsSecret::from_bytes(&b) {
                    break k;
                }
            };
            let mut zb = [0u8; 127];
            os_random(&mut zb);
            let master = sakke::KmsSecret::from_bytes(&zb).expect("z");
            let (kpak, z) = (ksak.kpak(), master.public_key());
            let alice = signing_key(&ksak, ALICE, NOW);
            Self { ksak, kpak, master, z, alice }
        }

        /// The receiver key of `uri` for the month of `ntp`, validated as a client would.
        fn rsk(&self, uri: &str, ntp: u64) -> Rsk {
            let id = mikey_sakke::identifier(uri, &t(ntp)).expect("id");
            let issued = self.master.issue(&id).expect("issue");
            Rsk::new(&self.z, &id, &issued.to_uncompressed()[..]).expect("valid RSK")
        }

        pub(super) fn build(&self, to: &str, now: u64) -> (Vec<u8>, Keys) {
            self.build_under(to, now, &self.z)
        }

        /// An I_MESSAGE from Alice to `to` with the SSV encapsulated under `z`.
        pub(super) fn build_under(&self, to: &str, now: u64, z: &sakke::PublicKey) -> (Vec<u8>, Keys) {
            mikey_sakke::build(&offer(to), &self.alice, z, now, &mut os_random).expect("build")
        }

        /// Bob, holding his RSK and ECCSI key of the month of `now`, answers `msg` at `now`.
        pub(super) fn answer_as_bob(&self, msg: &[u8], now: u64) -> Result<mikey_sakke::Received, mediasec_mikey::signed_dh::Refused> {
            let bob = signing_key(&self.ksak, BOB, now);
            mikey_sakke::answer(msg, &self.kpak, &self.z, &self.rsk(BOB, now), &bob, now, 30, &mut Cache::default(), &mut os_random)
        }
    }

    fn t(ntp: u64) -> Timestamp {
        Timestamp { ts_type: TsType::NTP_UTC, value: ntp }
    }

    fn signing_key(ksak: &eccsi::KmsSecret, uri: &str, ntp: u64) -> SigningKey {
        let id = mikey_sakke::identifier(uri, &t(ntp)).expect("id");
        let mut v = [0u8; 32];
        os_random(&mut v);
        let (ssk, pvt) = ksak.issue(&id, &v).expect("issue");
        SigningKey::new(&ksak.kpak(), &id, ssk, pvt).expect("valid")
    }

    fn offer(to: &str) -> Offer {
        let mut csb = [0u8; 4];
        os_random(&mut csb);
        Offer {
            prf: PrfFunc::MIKEY_1,
            csb_id: u32::from_be_bytes(csb),
            initiator_uri: ALICE.into(),
            responder_uri: to.into(),
            kms_uri: Some(KMS.into()),
            responder_kms_uri: None,
            initiator_ssrc: 0x5555_6666,
            policy: srtp_policy::aes_cm_128_hmac_sha1_80(),
        }
    }

    fn srtp_flows(tx: &SrtpPolicy, rx: &SrtpPolicy, ssrc: u32) {
        let mut out = mediasec_srtp::Session::new(&tx.to_srtp().expect("policy")).expect("session");
        let mut inp = mediasec_srtp::Session::new(&rx.to_srtp().expect("policy")).expect("session");
        let mut rtp = vec![0x80, 0, 0, 1, 0, 0, 0, 0];
        rtp.extend_from_slice(&ssrc.to_be_bytes());
        rtp.extend_from_slice(b"mission-critical media");
        let plain = rtp.clone();
        out.protect_rtp_vec(&mut rtp).expect("protect");
        assert_ne!(rtp[12..rtp.len() - 10], plain[12..]);
        inp.unprotect_rtp_vec(&mut rtp).expect("unprotect");
        assert_eq!(rtp, plain);
    }

    fn receive(p: &Parties, msg: &[u8], rsk: &Rsk, now: u64, cache: &mut Cache) -> Result<mikey_sakke::Received, Error> {
        mikey_sakke::receive(msg, &p.kpak, &p.z, rsk, now, 30, cache)
    }

    #[test]
    fn round_trip_gives_both_sides_the_same_keys_and_srtp_works() {
        let p = Parties::new();
        let bob = p.rsk(BOB, NOW);
        let (msg, keys) = p.build(BOB, NOW);
        let m = Message::decode(&msg).expect("decode");
        assert_eq!(m.header.data_type, DataType::SAKKE);
        assert_eq!(m.encode().expect("encode"), msg);
        let types: Vec<_> = m.payloads.iter().map(Payload::payload_type).collect();
        assert_eq!(
            types,
            [PayloadType::T, PayloadType::RAND, PayloadType::IDR, PayloadType::IDR, PayloadType::IDR, PayloadType::IDR, PayloadType::SP, PayloadType::SAKKE, PayloadType::SIGN]
        );
        let Some(Payload::Sakke(s)) = m.payloads.get(7) else { panic!("SAKKE") };
        assert_eq!((s.params, s.id_scheme, s.data.len()), (SakkeParams::PARAM_SET_1, SakkeIdScheme::TEL_URI_MONTHLY, 273));
        let r = receive(&p, &msg, &bob, NOW + 2 * SEC, &mut Cache::default()).expect("receive");
        assert_eq!(r.initiator, Identity::Uri(ALICE.into()));
        assert_eq!(r.ssv[..], keys.tgk[..]);
        let theirs = r.keys.expect("SRTP keys");
        assert_eq!(theirs.initiator_stream, keys.initiator_stream);
        assert_eq!(theirs.responder_stream, keys.responder_stream);
        assert_ne!(keys.initiator_stream.master_key, keys.responder_stream.master_key);
        // Media both ways with mediasec-srtp (CS 1 Alice → Bob, CS 2 Bob → Alice).
        srtp_flows(&keys.initiator_stream, &theirs.initiator_stream, 0x5555_6666);
        srtp_flows(&theirs.responder_stream, &keys.responder_stream, 0x7777_8888);
        // Two messages carry different SSVs.
        let (msg2, keys2) = p.build(BOB, NOW);
        assert_ne!(keys2.tgk[..], keys.tgk[..]);
        let r2 = receive(&p, &msg2, &bob, NOW, &mut Cache::default()).expect("receive");
        assert_eq!(r2.ssv[..], keys2.tgk[..]);
    }

    /// Two KMS communities (RFC 6509 §4.1 IDRkmsi / IDRkmsr): Alice of KMS A encapsulates to
    /// Bob of KMS B under B's Z and signs with her A key; `kms_uris` names both KMSs before
    /// verification (the responder picks the KPAK by IDRkmsi); Bob opens it with A's KPAK and
    /// his B RSK, not with B's KPAK (ERR Auth failure); one KMS URI is sent as both.
    #[test]
    fn cross_community_message_names_both_kmss() {
        let (a, b) = (Parties::new(), Parties::new());
        let (same, _) = a.build(BOB, NOW);
        assert_eq!(mikey_sakke::kms_uris(&same).expect("uris"), (Some(KMS.into()), Some(KMS.into())));
        let o = Offer { responder_kms_uri: Some("kms.b.example".into()), ..offer(BOB) };
        let (msg, keys) = mikey_sakke::build(&o, &a.alice, &b.z, NOW, &mut os_random).expect("build");
        assert_eq!(mikey_sakke::kms_uris(&msg).expect("uris"), (Some(KMS.into()), Some("kms.b.example".into())));
        let bob = b.rsk(BOB, NOW);
        let r = mikey_sakke::receive(&msg, &a.kpak, &b.z, &bob, NOW, 30, &mut Cache::default()).expect("A's KPAK, B's RSK");
        assert_eq!(r.ssv[..], keys.tgk[..]);
        let e = mikey_sakke::receive(&msg, &b.kpak, &b.z, &bob, NOW, 30, &mut Cache::default()).expect_err("B's KPAK");
        assert_eq!(e.err_code(), ErrorCode::AUTH_FAILURE);
        let none = Offer { kms_uri: None, ..o };
        let (bare, _) = mikey_sakke::build(&none, &a.alice, &b.z, NOW, &mut os_random).expect("build");
        assert_eq!(mikey_sakke::kms_uris(&bare).expect("uris"), (None, None));
        assert!(mikey_sakke::kms_uris(b"\x01\x04").is_err(), "not a message");
    }

    #[test]
    fn every_tampered_byte_is_refused() {
        let p = Parties::new();
        let bob = p.rsk(BOB, NOW);
        let (msg, _) = p.build(BOB, NOW);
        for i in 0..msg.len() {
            for bit in [0x01, 0x80] {
                let mut m = msg.clone();
                m[i] ^= bit;
                let e = receive(&p, &m, &bob, NOW, &mut Cache::default()).expect_err("tampered I_MESSAGE accepted");
                assert!(
                    matches!(e.err_code(), ErrorCode::AUTH_FAILURE | ErrorCode::UNSUPPORTED_MESSAGE | ErrorCode::INVALID_DT | ErrorCode::INVALID_ID | ErrorCode::INVALID_TS | ErrorCode::UNSPECIFIED),
                    "byte {i}: {e}"
                );
            }
        }
        for n in [0, 1, 10, msg.len() - 1] {
            assert!(receive(&p, &msg[..n], &bob, NOW, &mut Cache::default()).is_err());
        }
        let mut long = msg.clone();
        long.push(0);
        assert!(receive(&p, &long, &bob, NOW, &mut Cache::default()).is_err());
        receive(&p, &msg, &bob, NOW, &mut Cache::default()).expect("the genuine message still passes");
    }

    #[test]
    fn wrong_month_rsk_kpak_time_and_replay_are_refused() {
        let p = Parties::new();
        let (msg, _) = p.build(BOB, NOW);
        // Bob's key for another month, Carol's key: the message is not for them.
        let e = receive(&p, &msg, &p.rsk(BOB, DECEMBER), NOW, &mut Cache::default()).expect_err("December key");
        assert_eq!(e.err_code(), ErrorCode::INVALID_ID, "{e}");
        let e = receive(&p, &msg, &p.rsk(CAROL, NOW), NOW, &mut Cache::default()).expect_err("Carol");
        assert_eq!(e.err_code(), ErrorCode::INVALID_ID, "{e}");
        // Bob's identifier under another KMS master secret: decapsulation fails its re-check.
        let other = Parties::new();
        let foreign = other.rsk(BOB, NOW);
        let e = receive(&p, &msg, &foreign, NOW, &mut Cache::default()).expect_err("foreign RSK");
        assert_eq!(e.err_code(), ErrorCode::AUTH_FAILURE, "{e}");
        // Another KMS's KPAK: the signature does not verify.
        let e = mikey_sakke::receive(&msg, &other.kpak, &p.z, &p.rsk(BOB, NOW), NOW, 30, &mut Cache::default()).expect_err("KPAK");
        assert_eq!(e.err_code(), ErrorCode::AUTH_FAILURE, "{e}");
        // Outside the window, and replayed.
        let bob = p.rsk(BOB, NOW);
        let e = receive(&p, &msg, &bob, NOW + 31 * SEC, &mut Cache::default()).expect_err("late");
        assert_eq!(e.err_code(), ErrorCode::INVALID_TS, "{e}");
        let mut cache = Cache::default();
        receive(&p, &msg, &bob, NOW, &mut cache).expect("first");
        let e = receive(&p, &msg, &bob, NOW, &mut cache).expect_err("replay");
        assert_eq!(e.err_code(), ErrorCode::INVALID_TS, "{e}");
        // The builder refuses a signing key of another month or identity.
        let late = mikey_sakke::build(&offer(BOB), &p.alice, &p.z, DECEMBER, &mut os_random).expect_err("November key in December");
        assert!(matches!(late, Error::Encode { .. }), "{late}");
        let carol = signing_key(&p.ksak, CAROL, NOW);
        assert!(mikey_sakke::build(&offer(BOB), &carol, &p.z, NOW, &mut os_random).is_err());
        // A kept Recipient: Bob's for this month serves two messages he opens; Bob's of another
        // month, or Carol's, is refused for a message to Bob now.
        let kept = sakke::Recipient::new(&p.z, &mikey_sakke::identifier(BOB, &t(NOW)).expect("id"));
        for _ in 0..2 {
            let (msg, keys) = mikey_sakke::build_for(&offer(BOB), &p.alice, &kept, NOW, &mut os_random).expect("build_for");
            let got = receive(&p, &msg, &bob, NOW, &mut Cache::default()).expect("Bob opens it");
            assert_eq!(got.ssv[..], keys.tgk[..]);
        }
        for id in [mikey_sakke::identifier(BOB, &t(DECEMBER)), mikey_sakke::identifier(CAROL, &t(NOW))] {
            let stale = sakke::Recipient::new(&p.z, &id.expect("id"));
            let e = mikey_sakke::build_for(&offer(BOB), &p.alice, &stale, NOW, &mut os_random).expect_err("not Bob now");
            assert!(matches!(e, Error::Encode { .. }), "{e}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..800)) {
            prop_assert!(!mediasec_mikey::fuzzing::mikey_sakke(&data));
        }
    }
}

/// The high-security mode: ECCSI-signed MIKEY-DH (`signed_dh`) between two identities of one
/// KMS, with fresh OS randomness.
mod signed_dh_exchange {
    use mediasec_mikey::eccsi::{self, Kpak, KmsSecret, SigningKey};
    use mediasec_mikey::payload::{Payload, Sign};
    use mediasec_mikey::psk::ReplayCache;
    use mediasec_mikey::registry::*;
    use mediasec_mikey::signed_dh::{self, Keys, Offer, Pending};
    use mediasec_mikey::srtp_policy::{self, SrtpPolicy};
    use mediasec_mikey::{Error, Message};
    use std::collections::HashSet;
    use std::io::Read;

    /// 2026-11-24 10:00:00 UTC as a 64-bit NTP-UTC timestamp.
    pub(super) const NOW: u64 = 0xeeaf_dea0_0000_0000;
    const SEC: u64 = 1 << 32;
    pub(super) const ALICE: &str = "sip:alice@hs.example.org";
    pub(super) const BOB: &str = "sip:bob@hs.example.org";
    pub(super) const CAROL: &str = "sip:carol@hs.example.org";

    #[derive(Default)]
    pub(super) struct Cache(HashSet<(u32, u64, Vec<u8>)>);

    impl ReplayCache for Cache {
        fn insert(&mut self, csb: u32, ts: u64, sig: &[u8]) -> bool {
            self.0.insert((csb, ts, sig.to_vec()))
        }
    }

    pub(super) fn os_random(buf: &mut [u8]) {
        std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(buf)).expect("urandom");
    }

    pub(super) struct Kms {
        secret: KmsSecret,
        pub(super) kpak: Kpak,
    }

    impl Kms {
        pub(super) fn new() -> Self {
            let mut b = [0u8; 32];
            loop {
                os_random(&mut b);
                if let Ok(secret) = KmsSecret::from_bytes(&b) {
                    let kpak = secret.kpak();
                    return Self { secret, kpak };
                }
            }
        }

        /// The user's key for the month of `ntp`, validated as a client would (RFC 6507 §5.1.2).
        pub(super) fn key(&self, uri: &str, ntp: u64) -> SigningKey {
            let t = Timestamp { ts_type: TsType::NTP_UTC, value: ntp };
            let id = signed_dh::signer_identity(uri, &t).expect("period");
            let mut v = [0u8; 32];
            os_random(&mut v);
            let (ssk, pvt) = self.secret.issue(&id, &v).expect("issue");
            SigningKey::new(&self.kpak, &id, ssk, pvt).expect("valid key")
        }
    }

    use mediasec_mikey::payload::Timestamp;

    pub(super) fn offer_to(responder: &str) -> Offer {
        let mut csb = [0u8; 4];
        os_random(&mut csb);
        Offer {
            prf: PrfFunc::MIKEY_1,
            csb_id: u32::from_be_bytes(csb),
            initiator_uri: ALICE.into(),
            responder_uri: responder.into(),
            initiator_ssrc: 0x1111_2222,
            policy: srtp_policy::aes_cm_128_hmac_sha1_80(),
        }
    }

    pub(super) fn start(alice: &SigningKey, to: &str) -> (Vec<u8>, Pending) {
        signed_dh::offer(&offer_to(to), alice, NOW, &mut os_random).expect("offer")
    }

    fn answer_with(kms: &Kpak, bob: &SigningKey, init: &[u8], now: u64, cache: &mut Cache) -> Result<signed_dh::Answered, Error> {
        Ok(signed_dh::answer(init, kms, bob, BOB, 0x3333_4444, now, 30, cache, &mut os_random)?)
    }

    fn same(a: &SrtpPolicy, b: &SrtpPolicy) {
        assert_eq!(a, b);
        assert_eq!(a.master_key.len(), 16);
        assert_eq!(a.master_salt.len(), 14);
    }

    fn srtp_flows(tx: &SrtpPolicy, rx: &SrtpPolicy) {
        let mut out = mediasec_srtp::Session::new(&tx.to_srtp().expect("policy")).expect("session");
        let mut inp = mediasec_srtp::Session::new(&rx.to_srtp().expect("policy")).expect("session");
        let mut rtp = vec![0x80, 0, 0, 1, 0, 0, 0, 0];
        rtp.extend_from_slice(&tx.ssrc.to_be_bytes());
        rtp.extend_from_slice(b"high-security media");
        let plain = rtp.clone();
        out.protect_rtp_vec(&mut rtp).expect("protect");
        assert_ne!(rtp[12..rtp.len() - 10], plain[12..]);
        inp.unprotect_rtp_vec(&mut rtp).expect("unprotect");
        assert_eq!(rtp, plain);
    }

    fn code(e: &Error) -> ErrorCode {
        e.err_code()
    }

    #[test]
    fn round_trip_gives_both_sides_the_same_keys_and_srtp_works() {
        let kms = Kms::new();
        let (alice, bob) = (kms.key(ALICE, NOW), kms.key(BOB, NOW));
        let (init, pending) = start(&alice, BOB);
        let m = Message::decode(&init).expect("decode");
        assert_eq!(m.header.data_type, DataType::DH_INIT);
        let types: Vec<_> = m.payloads.iter().map(Payload::payload_type).collect();
        assert_eq!(types, [PayloadType::T, PayloadType::RAND, PayloadType::IDR, PayloadType::IDR, PayloadType::SP, PayloadType::DH, PayloadType::SIGN]);
        let answered = answer_with(&kms.kpak, &bob, &init, NOW + 2 * SEC, &mut Cache::default()).expect("answer");
        assert_eq!(answered.initiator_uri, ALICE);
        let r = Message::decode(&answered.response).expect("decode");
        assert_eq!(r.header.data_type, DataType::DH_RESP);
        let types: Vec<_> = r.payloads.iter().map(Payload::payload_type).collect();
        assert_eq!(types, [PayloadType::T, PayloadType::IDR, PayloadType::IDR, PayloadType::DH, PayloadType::DH, PayloadType::SIGN]);
        let done = pending.finish(&answered.response, &kms.kpak, NOW + 3 * SEC, 30).expect("finish");
        assert_eq!(done.responder_uri, BOB);
        assert!(!done.redirected);
        let (a, b): (&Keys, &Keys) = (&done.keys, &answered.keys);
        assert_eq!(a.tgk[..], b.tgk[..]);
        same(&a.initiator_stream, &b.initiator_stream);
        same(&a.responder_stream, &b.responder_stream);
        assert_ne!(a.initiator_stream.master_key, a.responder_stream.master_key);
        assert_eq!((a.initiator_stream.ssrc, a.responder_stream.ssrc), (0x1111_2222, 0x3333_4444));
        // The keys are the RFC 3830 §4.1.3 derivation from the TGK with CS ID, CSB ID, RAND.
        let rand = m.find(|p| if let Payload::Rand(r) = p { Some(r.rand.clone()) } else { None }).expect("rand");
        let label = mediasec_mikey::keys::label_tgk(mediasec_mikey::keys::TEK, 2, m.header.csb_id, &rand);
        let tek = mediasec_mikey::prf::prf(PrfFunc::MIKEY_1, &a.tgk[..], &label, 16).expect("prf");
        assert_eq!(tek.as_slice(), a.responder_stream.master_key.as_slice());
        // Media flows both ways with mediasec-srtp.
        srtp_flows(&a.initiator_stream, &b.initiator_stream);
        srtp_flows(&b.responder_stream, &a.responder_stream);
        // PRF-HMAC-SHA-256 works too.
        let o = Offer { prf: PrfFunc::HMAC_SHA_256, ..offer_to(BOB) };
        let (init, pending) = signed_dh::offer(&o, &alice, NOW, &mut os_random).expect("offer");
        let ans = answer_with(&kms.kpak, &bob, &init, NOW, &mut Cache::default()).expect("answer");
        let done = pending.finish(&ans.response, &kms.kpak, NOW, 30).expect("finish");
        same(&done.keys.initiator_stream, &ans.keys.initiator_stream);
    }

    #[test]
    fn two_sessions_with_the_same_long_term_keys_have_different_tgks() {
        let kms = Kms::new();
        let (alice, bob) = (kms.key(ALICE, NOW), kms.key(BOB, NOW));
        let mut tgks = Vec::new();
        for _ in 0..2 {
            let (init, pending) = start(&alice, BOB);
            let ans = answer_with(&kms.kpak, &bob, &init, NOW, &mut Cache::default()).expect("answer");
            tgks.push(pending.finish(&ans.response, &kms.kpak, NOW, 30).expect("finish").keys.tgk.to_vec());
        }
        assert_ne!(tgks[0], tgks[1]);
    }

    #[test]
    fn every_tampered_byte_of_dh_init_and_dh_resp_is_refused() {
        let kms = Kms::new();
        let (alice, bob) = (kms.key(ALICE, NOW), kms.key(BOB, NOW));
        let (init, pending) = start(&alice, BOB);
        for i in 0..init.len() {
            let mut t = init.clone();
            t[i] ^= 0x01;
            let e = answer_with(&kms.kpak, &bob, &t, NOW, &mut Cache::default()).expect_err("tampered DH_INIT accepted");
            assert!(matches!(code(&e), ErrorCode::AUTH_FAILURE | ErrorCode::UNSUPPORTED_MESSAGE | ErrorCode::INVALID_DT | ErrorCode::INVALID_ID | ErrorCode::INVALID_TS), "byte {i}: {e}");
        }
        let ans = answer_with(&kms.kpak, &bob, &init, NOW, &mut Cache::default()).expect("answer");
        let resp = ans.response;
        for i in 0..resp.len() {
            let mut t = resp.clone();
            t[i] ^= 0x80;
            let e = pending.finish(&t, &kms.kpak, NOW, 30).expect_err("tampered DH_RESP accepted");
            assert!(matches!(code(&e), ErrorCode::AUTH_FAILURE | ErrorCode::UNSUPPORTED_MESSAGE | ErrorCode::INVALID_DT | ErrorCode::INVALID_ID | ErrorCode::INVALID_TS), "byte {i}: {e}");
        }
        // The genuine response is still accepted after the forged ones.
        pending.finish(&resp, &kms.kpak, NOW, 30).expect("genuine DH_RESP");
        // Truncations and extensions.
        for n in [0, 1, 10, init.len() - 1] {
            assert!(answer_with(&kms.kpak, &bob, &init[..n], NOW, &mut Cache::default()).is_err());
        }
        let mut long = init;
        long.push(0);
        assert!(answer_with(&kms.kpak, &bob, &long, NOW, &mut Cache::default()).is_err());
    }

    #[test]
    fn wrong_kpak_identity_time_replay_and_echo_are_refused_with_the_right_error() {
        let kms = Kms::new();
        let (alice, bob) = (kms.key(ALICE, NOW), kms.key(BOB, NOW));
        let (init, pending) = start(&alice, BOB);
        // Another KMS's KPAK: the signature does not verify.
        let other = Kms::new();
        let e = answer_with(&other.kpak, &bob, &init, NOW, &mut Cache::default()).expect_err("other KMS");
        assert_eq!(code(&e), ErrorCode::AUTH_FAILURE, "{e}");
        // A DH_INIT addressed to someone else.
        let carol = kms.key(CAROL, NOW);
        let e = signed_dh::answer(&init, &kms.kpak, &carol, CAROL, 1, NOW, 30, &mut Cache::default(), &mut os_random).expect_err("not carol's").error;
        assert_eq!(code(&e), ErrorCode::INVALID_ID, "{e}");
        // Keys are per month: October's key does not sign November's messages (refused
        // locally), but October's keys run an October exchange.
        let last_month = NOW - 30 * 86_400 * SEC;
        let old = kms.key(ALICE, last_month);
        assert!(matches!(signed_dh::offer(&offer_to(BOB), &old, NOW, &mut os_random), Err(Error::Encode { .. })));
        let (old_init, _) = signed_dh::offer(&offer_to(BOB), &old, last_month, &mut os_random).expect("offer last month");
        answer_with(&kms.kpak, &kms.key(BOB, last_month), &old_init, last_month, &mut Cache::default()).expect("October exchange");
        assert!(matches!(answer_with(&kms.kpak, &bob, &old_init, last_month, &mut Cache::default()), Err(Error::Encode { .. })));
        // Stale and future timestamps.
        for now in [NOW + 31 * SEC, NOW - 31 * SEC] {
            let e = answer_with(&kms.kpak, &bob, &init, now, &mut Cache::default()).expect_err("stale");
            assert_eq!(code(&e), ErrorCode::INVALID_TS, "{e}");
        }
        // Replay of an accepted DH_INIT.
        let mut cache = Cache::default();
        let ans = answer_with(&kms.kpak, &bob, &init, NOW, &mut cache).expect("first");
        let e = answer_with(&kms.kpak, &bob, &init, NOW, &mut cache).expect_err("replay");
        assert_eq!(code(&e), ErrorCode::INVALID_TS, "{e}");
        // A stale DH_RESP.
        let e = pending.finish(&ans.response, &kms.kpak, NOW + 60 * SEC, 30).expect_err("stale resp");
        assert_eq!(code(&e), ErrorCode::INVALID_TS, "{e}");
        // DH_RESP of another DH_INIT of the same offer (wrong DHi echo), verified but refused.
        let (init2, _pending2) = signed_dh::offer(pending.offer(), &alice, NOW, &mut os_random).expect("offer again");
        let ans2 = answer_with(&kms.kpak, &bob, &init2, NOW, &mut Cache::default()).expect("second");
        let e = pending.finish(&ans2.response, &kms.kpak, NOW, 30).expect_err("echo");
        assert_eq!(code(&e), ErrorCode::AUTH_FAILURE, "{e}");
        assert!(e.to_string().contains("echo"), "{e}");
        // A DH_RESP under another KMS's KPAK.
        let e = pending.finish(&ans.response, &other.kpak, NOW, 30).expect_err("kpak");
        assert_eq!(code(&e), ErrorCode::AUTH_FAILURE, "{e}");
        // A DH_INIT given to the initiator's finish, and vice versa: wrong data type.
        assert_eq!(code(&pending.finish(&init, &kms.kpak, NOW, 30).expect_err("dt")), ErrorCode::INVALID_DT);
        assert_eq!(code(&answer_with(&kms.kpak, &bob, &ans.response, NOW, &mut Cache::default()).expect_err("dt")), ErrorCode::INVALID_DT);
        // The responder can send the RFC 3830 §5.1.2 error message for each failure.
        let e = answer_with(&other.kpak, &bob, &init, NOW, &mut Cache::default()).expect_err("auth");
        let err_msg = signed_dh::error_reply(&init, &e, NOW).expect("error message");
        let report = mediasec_mikey::error_message::verify(&err_msg, None).expect("error message decodes");
        assert_eq!(report.codes(), [ErrorCode::AUTH_FAILURE]);
        assert_eq!(Message::decode(&err_msg).expect("decode").header.csb_id, Message::decode(&init).expect("decode").header.csb_id);
        assert!(signed_dh::error_reply(&[1, 4], &e, NOW).is_none());
    }

    /// ECCSI signatures are malleable: (r, q − s, PVT) verifies whenever (r, s, PVT) does
    /// (J becomes −J, same x). A replayed DH_INIT with s negated must still be a replay.
    #[test]
    fn a_replayed_dh_init_with_its_signature_negated_is_still_a_replay() {
        use p256::Scalar;
        use p256::elliptic_curve::PrimeField;
        let kms = Kms::new();
        let (alice, bob) = (kms.key(ALICE, NOW), kms.key(BOB, NOW));
        let (init, _pending) = start(&alice, BOB);
        let mut cache = Cache::default();
        answer_with(&kms.kpak, &bob, &init, NOW, &mut cache).expect("first");
        let mut twin = init.clone();
        let at = twin.len() - eccsi::SIGNATURE_LEN + 32;
        let s: [u8; 32] = twin[at..at + 32].try_into().expect("s");
        let s = Option::<Scalar>::from(Scalar::from_repr(s.into())).expect("s in range");
        twin[at..at + 32].copy_from_slice(&(-s).to_repr());
        assert_ne!(twin, init);
        let sig = twin[twin.len() - eccsi::SIGNATURE_LEN..].to_vec();
        let signed = &twin[..twin.len() - eccsi::SIGNATURE_LEN];
        eccsi::verify(&kms.kpak, &signer_id(ALICE), signed, &sig).expect("the negated signature verifies too");
        let e = answer_with(&kms.kpak, &bob, &twin, NOW, &mut cache).expect_err("replay with s negated");
        assert_eq!(code(&e), ErrorCode::INVALID_TS, "{e}");
    }

    fn signer_id(uri: &str) -> Vec<u8> {
        signed_dh::signer_identity(uri, &Timestamp { ts_type: TsType::NTP_UTC, value: NOW }).expect("period")
    }

    #[test]
    fn a_responder_other_than_the_one_called_is_refused_unless_forwarding_is_accepted() {
        // Carol answers a call to Bob (e.g. a forwarded call, or anyone of the KMS's users in
        // the signalling path): she signs her DH_RESP with her own identity in IDRr.
        let kms = Kms::new();
        let (alice, bob, carol) = (kms.key(ALICE, NOW), kms.key(BOB, NOW), kms.key(CAROL, NOW));
        let (init, pending) = start(&alice, BOB);
        let ans = answer_with(&kms.kpak, &bob, &init, NOW, &mut Cache::default()).expect("answer");
        let mut m = Message::decode(&ans.response).expect("decode");
        for p in &mut m.payloads {
            if let Payload::Idr(i) = p
                && i.role == IdRole::RESPONDER
            {
                i.data = CAROL.as_bytes().to_vec();
            }
        }
        m.payloads.pop();
        m.payloads.push(Payload::Sign(Sign { sig_type: SignatureType::ECCSI, signature: vec![0; eccsi::SIGNATURE_LEN] }));
        let mut bytes = m.encode().expect("encode");
        bytes.truncate(bytes.len() - eccsi::SIGNATURE_LEN);
        let mut j = [0u8; 32];
        os_random(&mut j);
        bytes.extend_from_slice(&carol.sign(&bytes, &j).expect("sign"));
        // By default the keys are only ever shared with the party called.
        let e = pending.finish(&bytes, &kms.kpak, NOW, 30).expect_err("not the party called");
        assert_eq!(code(&e), ErrorCode::INVALID_ID, "{e}");
        assert!(e.to_string().contains(CAROL), "{e}");
        // A caller that accepts forwarded calls asks for it, and is told who answered.
        let done = pending.finish_forwarded(&bytes, &kms.kpak, NOW, 30).expect("carol's answer verifies");
        assert_eq!(done.responder_uri, CAROL);
        assert!(done.redirected);
        assert!(!pending.finish_forwarded(&ans.response, &kms.kpak, NOW, 30).expect("bob's").redirected);
        // Carol cannot pass her answer off as Bob's: Bob's IDRr with Carol's signature fails.
        let covered = &ans.response[..ans.response.len() - eccsi::SIGNATURE_LEN];
        let forged = [covered, &carol.sign(covered, &j).expect("sign")[..]].concat();
        let e = pending.finish(&forged, &kms.kpak, NOW, 30).expect_err("carol as bob");
        assert_eq!(code(&e), ErrorCode::AUTH_FAILURE);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;
        use std::sync::OnceLock;

        struct Fixture {
            kms: Kms,
            bob: SigningKey,
            init: Vec<u8>,
            pending: Pending,
            resp: Vec<u8>,
        }

        fn fixture() -> &'static Fixture {
            static F: OnceLock<Fixture> = OnceLock::new();
            F.get_or_init(|| {
                let kms = Kms::new();
                let (alice, bob) = (kms.key(ALICE, NOW), kms.key(BOB, NOW));
                let (init, pending) = start(&alice, BOB);
                let resp = answer_with(&kms.kpak, &bob, &init, NOW, &mut Cache::default()).expect("answer").response;
                Fixture { kms, bob, init, pending, resp }
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]
            #[test]
            fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..600)) {
                let f = fixture();
                prop_assert!(answer_with(&f.kms.kpak, &f.bob, &data, NOW, &mut Cache::default()).is_err());
                prop_assert!(f.pending.finish(&data, &f.kms.kpak, NOW, 30).is_err());
            }

            #[test]
            fn mutated_messages_never_panic_and_are_refused(pos in any::<usize>(), val in 1u8.., cut in any::<bool>()) {
                let f = fixture();
                for msg in [&f.init, &f.resp] {
                    let mut m = msg.clone();
                    let i = pos % m.len();
                    if cut { m.truncate(i) } else { m[i] ^= val }
                    prop_assert!(answer_with(&f.kms.kpak, &f.bob, &m, NOW, &mut Cache::default()).is_err());
                    prop_assert!(f.pending.finish(&m, &f.kms.kpak, NOW, 30).is_err());
                }
            }
        }
    }
}

/// Every label builder allocates its label at its exact length (no regrowth: each ticket
/// exchange builds dozens of labels), for short, long and absent RANDs and ID data.
#[test]
fn labels_are_allocated_at_their_exact_length() {
    for n in [0usize, 1, 16, 255, 300] {
        let r = vec![7u8; n];
        let labels = [
            keys::label_tgk(keys::TEK, 1, 2, &r),
            keys::label_message(keys::MSG_AUTH, 2, &r),
            keys::label_ticket_message(keys::MSG_AUTH, 2, Direction::Initial, Some(&r), None),
            keys::label_ticket_message(keys::MSG_AUTH, 2, Direction::Response, Some(&r), Some(&r)),
            keys::label_ticket_tgk(keys::TEK, 1, None, Some(&r)),
            keys::label_fork(keys::FORK_TGK, &r, Some(&r)),
            keys::label_fork(keys::FORK_TGK, &r, None),
            keys::label_initiator_data(keys::MSG_AUTH),
            keys::label_base_ticket(keys::MPKI, 6, &r),
        ];
        for l in labels {
            assert_eq!(l.capacity(), l.len(), "label of {} octets", l.len());
        }
    }
}

/// `encode_key_data` (a KEMAC's plaintext without wrapping each key) is the chain
/// `encode_payloads` makes of the same keys as payloads, and decodes back to them.
#[test]
fn key_data_chain_encodes_as_the_payload_chain() {
    let kd = |t: KeyType, n: u8, salt: bool, validity: payload::KeyValidity| payload::KeyData { key_type: t, key: vec![n; 16], salt: salt.then(|| vec![n; 14]), validity };
    let chains = [
        vec![],
        vec![kd(KeyType::TGK, 1, false, payload::KeyValidity::Null)],
        vec![kd(KeyType::TGK_SALT, 2, true, payload::KeyValidity::Spi(vec![1, 2])), kd(KeyType::TEK, 3, false, payload::KeyValidity::Null), kd(KeyType::TGK, 4, false, payload::KeyValidity::Spi(vec![9]))],
    ];
    for keys in chains {
        let wrapped: Vec<Payload> = keys.iter().cloned().map(Payload::KeyData).collect();
        let plain = payload::encode_key_data(&keys).expect("key data");
        assert_eq!(plain, payload::encode_payloads(&wrapped).expect("payloads"));
        if !keys.is_empty() {
            assert_eq!(payload::decode_payloads(&plain, PayloadType::KEY_DATA, 0).expect("decode"), wrapped);
        }
    }
}
