//! `mediasec mikey decode`: print every field of a MIKEY / MIKEY-TICKET message, in the
//! spirit of Wireshark's MIKEY tree, as text or as stable JSON (docs/mikey.md).

use std::io::Read as _;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use base64::Engine as _;
use mediasec_mikey::keys::{Direction, MessageKeys};
use mediasec_mikey::payload::{self, BaseTicketData, KeyValidity, Payload, Span, decode_first_payload_chain};
use mediasec_mikey::registry::{DataType, IdRole, PayloadType, RandRole};
use mediasec_mikey::{CsIdMap, Message, kemac_crypto};
use serde_json::{Map, Value, json};

/// Arguments of `mediasec mikey`.
#[derive(clap::Args)]
pub(crate) struct Args {
    #[command(subcommand)]
    command: Sub,
}

#[derive(clap::Subcommand)]
enum Sub {
    /// Decode a MIKEY message (base64 as in SDP a=key-mgmt or the Ua body, or raw bytes).
    Decode(DecodeArgs),
}

#[derive(clap::Args)]
struct DecodeArgs {
    /// Base64 message, `-` (or nothing) for stdin; with --raw, a file path or `-`.
    input: Option<String>,
    /// Input is raw binary instead of base64.
    #[arg(long)]
    raw: bool,
    /// Print JSON (format documented in docs/mikey.md).
    #[arg(long)]
    json: bool,
    /// Hex key (PSK, or MPKi for TRANSFER_INIT): verify the MAC and decrypt the KEMAC.
    #[arg(long)]
    key: Option<String>,
}

pub(crate) fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Sub::Decode(a) => decode(a),
    }
}

fn read_input(a: &DecodeArgs) -> anyhow::Result<Vec<u8>> {
    let mut raw = Vec::new();
    match a.input.as_deref() {
        None | Some("-") => {
            std::io::stdin().read_to_end(&mut raw).context("reading stdin")?;
        }
        Some(x) if a.raw => raw = std::fs::read(x).with_context(|| format!("reading {x}"))?,
        Some(x) => raw = x.as_bytes().to_vec(),
    }
    if a.raw {
        return Ok(raw);
    }
    let text = String::from_utf8(raw).context("base64 input is not UTF-8")?;
    let text = text.trim();
    let text = text.strip_prefix("a=key-mgmt:").unwrap_or(text);
    let text = text.strip_prefix("mikey ").unwrap_or(text);
    let clean: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    let trimmed = clean.trim_end_matches('=');
    base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(trimmed)
        .context("input is not valid base64")
}

fn reg<T: core::fmt::Debug>(value: impl Into<u64>, r: T) -> Value {
    let name = format!("{r:?}");
    let name = if name.starts_with("0x") { Value::Null } else { Value::String(name) };
    json!({ "value": value.into(), "name": name })
}

fn text_or_hex(b: &[u8]) -> Value {
    match std::str::from_utf8(b) {
        Ok(s) if !s.is_empty() && s.chars().all(|c| !c.is_control()) => json!({ "text": s, "hex": hex::encode(b) }),
        _ => json!({ "hex": hex::encode(b) }),
    }
}

fn validity(v: &KeyValidity) -> Value {
    match v {
        KeyValidity::Null => json!({ "kv": reg(0u8, v.kv_type()) }),
        KeyValidity::Spi(s) => json!({ "kv": reg(1u8, v.kv_type()), "spi": hex::encode(s) }),
        KeyValidity::Interval { from, to } => {
            json!({ "kv": reg(2u8, v.kv_type()), "valid_from": hex::encode(from), "valid_to": hex::encode(to) })
        }
    }
}

/// Describes a chain; `spans` give absolute offsets, `next` the Next Payload of each.
fn chain(payloads: &[Payload], spans: &[Span], base: usize) -> Vec<Value> {
    payloads
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut m = Map::new();
            m.insert("payload".into(), reg(p.payload_type().0, p.payload_type()));
            if let Some(s) = spans.get(i) {
                m.insert("offset".into(), json!(s.start + base));
                m.insert("length".into(), json!(s.end - s.start));
            }
            if !matches!(p, Payload::Sign(_)) {
                let next = payloads.get(i + 1).map_or(PayloadType::LAST, Payload::payload_type);
                m.insert("next_payload".into(), reg(next.0, next));
            }
            let start = spans.get(i).map_or(base, |s| s.start + base);
            fields(p, start, &mut m);
            Value::Object(m)
        })
        .collect()
}

fn sub_chain(result: mediasec_mikey::Result<Vec<Payload>>, bytes: &[u8], lead: usize, base: usize) -> Value {
    match result {
        Ok(p) => {
            // Re-encode to get spans relative to the chain start.
            let spans = spans_of(&p);
            Value::Array(chain(&p, &spans, base + lead))
        }
        Err(e) => json!({ "error": e.to_string(), "hex": hex::encode(bytes) }),
    }
}

fn spans_of(p: &[Payload]) -> Vec<Span> {
    let mut out = Vec::new();
    let mut pos = 0;
    for one in p {
        let len = payload::encode_payloads(std::slice::from_ref(one)).map(|b| b.len()).unwrap_or(0);
        out.push(Span { start: pos, end: pos + len });
        pos += len;
    }
    out
}

fn fields(p: &Payload, start: usize, m: &mut Map<String, Value>) {
    let mut put = |k: &str, v: Value| {
        m.insert(k.into(), v);
    };
    match p {
        Payload::Kemac(k) => {
            put("encr_alg", reg(k.encr_alg.0, k.encr_alg));
            put("encr_data_len", json!(k.encr_data.len()));
            put("encr_data", json!(hex::encode(&k.encr_data)));
            if k.encr_alg == mediasec_mikey::registry::EncrAlg::NULL {
                let body = payload::decode_payloads(&k.encr_data, PayloadType::KEY_DATA, start + 4);
                put("key_data", sub_chain(body, &k.encr_data, 0, start + 4));
            }
            put("mac_alg", reg(k.mac_alg.0, k.mac_alg));
            put("mac", json!(hex::encode(&k.mac)));
        }
        Payload::Pke(x) => {
            put("cache", reg(x.cache.0, x.cache));
            put("data_len", json!(x.data.len()));
            put("data", json!(hex::encode(&x.data)));
        }
        Payload::Dh(x) => {
            put("dh_group", reg(x.group.0, x.group));
            put("dh_value", json!(hex::encode(&x.value)));
            put("reserved", json!(x.reserved));
            put("key_validity", validity(&x.validity));
        }
        Payload::Sign(x) => {
            put("signature_type", reg(x.sig_type.0, x.sig_type));
            put("signature_len", json!(x.signature.len()));
            put("signature", json!(hex::encode(&x.signature)));
        }
        Payload::T(t) => {
            put("ts_type", reg(t.ts_type.0, t.ts_type));
            put("ts_value", json!(format!("{:0w$x}", t.value, w = t.ts_type.value_len().unwrap_or(8) * 2)));
        }
        Payload::Tr(t) => {
            put("ts_role", reg(t.role.0, t.role));
            put("ts_type", reg(t.ts.ts_type.0, t.ts.ts_type));
            put("ts_value", json!(format!("{:0w$x}", t.ts.value, w = t.ts.ts_type.value_len().unwrap_or(8) * 2)));
        }
        Payload::Id(x) => {
            put("id_type", reg(x.id_type.0, x.id_type));
            put("id_len", json!(x.data.len()));
            put("id_data", text_or_hex(&x.data));
        }
        Payload::Idr(x) => {
            put("id_role", reg(x.role.0, x.role));
            put("id_type", reg(x.id_type.0, x.id_type));
            put("id_len", json!(x.data.len()));
            put("id_data", text_or_hex(&x.data));
        }
        Payload::Cert(x) => {
            put("cert_type", reg(x.cert_type.0, x.cert_type));
            put("cert_len", json!(x.data.len()));
            put("cert_data", json!(hex::encode(&x.data)));
        }
        Payload::Chash(x) => {
            put("hash_func", reg(x.hash_func.0, x.hash_func));
            put("hash", json!(hex::encode(&x.hash)));
        }
        Payload::V(x) => {
            put("auth_alg", reg(x.auth_alg.0, x.auth_alg));
            put("ver_data", json!(hex::encode(&x.mac)));
        }
        Payload::Sp(x) => {
            put("policy_no", json!(x.policy_no));
            put("prot_type", reg(x.prot_type.0, x.prot_type));
            let params: Vec<Value> = x
                .params
                .iter()
                .map(|pp| json!({ "type": reg(pp.param_type.0, pp.param_type), "value": hex::encode(&pp.value) }))
                .collect();
            put("params", Value::Array(params));
        }
        Payload::Rand(x) => {
            put("rand_len", json!(x.rand.len()));
            put("rand", json!(hex::encode(&x.rand)));
        }
        Payload::Randr(x) => {
            put("rand_role", reg(x.role.0, x.role));
            put("rand_len", json!(x.rand.len()));
            put("rand", json!(hex::encode(&x.rand)));
        }
        Payload::Err(x) => {
            put("error_no", reg(x.code.0, x.code));
            put("reserved", json!(x.reserved));
        }
        Payload::Tp(tp) => policy(tp, start, m),
        Payload::Ticket(t) => {
            policy(&t.policy, start, m);
            let td_off = start + 11 + t.policy.data.len();
            m.insert("ticket_data_len".into(), json!(t.ticket_data.len()));
            let td = match BaseTicketData::decode(&t.ticket_data, td_off) {
                Ok(b) => {
                    let spans = spans_of(&b.payloads);
                    json!({
                        "thdr_data": hex::encode(&b.thdr_data),
                        "payloads": chain(&b.payloads, &spans, td_off + 3 + b.thdr_data.len()),
                    })
                }
                Err(e) => json!({ "error": e.to_string(), "hex": hex::encode(&t.ticket_data) }),
            };
            m.insert("ticket_data".into(), td);
            let id_off = td_off + t.ticket_data.len() + 2;
            m.insert("initiator_data_len".into(), json!(t.initiator_data.len()));
            if !t.initiator_data.is_empty() {
                let d = decode_first_payload_chain(&t.initiator_data, id_off);
                m.insert("initiator_data".into(), sub_chain(d, &t.initiator_data, 1, id_off));
            }
        }
        Payload::KeyData(k) => {
            put("key_type", reg(k.key_type.0, k.key_type));
            put("key_len", json!(k.key.len()));
            put("key", json!(hex::encode(&k.key)));
            if let Some(s) = &k.salt {
                put("salt_len", json!(s.len()));
                put("salt", json!(hex::encode(s)));
            }
            put("key_validity", validity(&k.validity));
        }
        Payload::GeneralExt(g) => {
            put("ext_type", reg(g.ext_type.0, g.ext_type));
            put("ext_len", json!(g.data.len()));
            put("ext_data", text_or_hex(&g.data));
        }
        Payload::Sakke(s) => {
            put("sakke_params", reg(s.params.0, s.params));
            put("id_scheme", reg(s.id_scheme.0, s.id_scheme));
            put("sakke_data_len", json!(s.data.len()));
            put("sakke_data", json!(hex::encode(&s.data)));
        }
        // Payload is non-exhaustive only across crate versions; every variant is listed.
    }
}

fn policy(tp: &payload::TicketPolicy, start: usize, m: &mut Map<String, Value>) {
    m.insert("ticket_type".into(), reg(tp.ticket_type.0, tp.ticket_type));
    m.insert("subtype".into(), json!(tp.subtype));
    m.insert("version".into(), json!(tp.version));
    m.insert("prf_func".into(), reg(tp.prf.0, tp.prf));
    m.insert("flags".into(), json!(tp.flags.letters()));
    m.insert("reserved".into(), json!(tp.reserved));
    m.insert("tp_data_len".into(), json!(tp.data.len()));
    let off = start + 9;
    if !tp.data.is_empty() {
        m.insert("tp_data".into(), sub_chain(decode_first_payload_chain(&tp.data, off), &tp.data, 1, off));
    }
}

fn header(msg: &Message, bytes: &[u8], header_len: usize) -> Value {
    let h = &msg.header;
    let next = PayloadType(bytes.get(2).copied().unwrap_or(0));
    let map = match &h.cs_map {
        CsIdMap::SrtpId(v) => v
            .iter()
            .map(|c| json!({ "policy_no": c.policy_no, "ssrc": format!("{:08x}", c.ssrc), "roc": format!("{:08x}", c.roc) }))
            .collect(),
        CsIdMap::Empty { .. } => Vec::new(),
        CsIdMap::GenericId(v) => v
            .iter()
            .map(|c| {
                json!({ "cs_id": c.cs_id, "prot_type": reg(c.prot_type.0, c.prot_type), "s": c.s_flag,
                        "policies": c.policies, "session_data": hex::encode(&c.session_data), "spi": hex::encode(&c.spi) })
            })
            .collect(),
    };
    json!({
        "version": h.version,
        "data_type": reg(h.data_type.0, h.data_type),
        "next_payload": reg(next.0, next),
        "v": h.v_flag,
        "prf_func": reg(h.prf.0, h.prf),
        "csb_id": format!("{:08x}", h.csb_id),
        "n_cs": h.cs_map.n_cs(),
        "cs_id_map_type": reg(h.cs_map.map_type().0, h.cs_map.map_type()),
        "cs_id_map": map,
        "length": header_len,
    })
}

fn idr(msg: &Message, role: IdRole) -> Vec<u8> {
    msg.find(|p| match p {
        Payload::Idr(i) if i.role == role => Some(i.data.clone()),
        _ => None,
    })
    .unwrap_or_default()
}

fn randr(msg: &Message, role: RandRole) -> Option<Vec<u8>> {
    msg.find(|p| match p {
        Payload::Randr(r) if r.role == role => Some(r.rand.clone()),
        _ => None,
    })
}

/// MAC verification and KEMAC decryption with a key (RFC 3830 §5.1, RFC 6043 §5.5).
fn verify(msg: &Message, bytes: &[u8], key: &[u8]) -> Value {
    let h = &msg.header;
    let t = msg.find(|p| if let Payload::T(t) = p { Some(t.as_u64()) } else { None }).unwrap_or(0);
    let kemac = msg.find(|p| if let Payload::Kemac(k) = p { Some(k.clone()) } else { None });
    let v = msg.find(|p| if let Payload::V(v) = p { Some(v.clone()) } else { None });
    let (encr, mac_alg) = match (&kemac, &v) {
        (Some(k), None) => (k.encr_alg, k.mac_alg),
        (Some(k), Some(v)) => (k.encr_alg, v.auth_alg),
        (None, Some(v)) => (mediasec_mikey::registry::EncrAlg::NULL, v.auth_alg),
        (None, None) => return json!({ "error": "no KEMAC or V payload" }),
    };
    let ri = randr(msg, RandRole::INITIATOR);
    let rr = randr(msg, RandRole::RESPONDER);
    let (keys, ids): (mediasec_mikey::Result<MessageKeys>, Vec<Vec<u8>>) = match h.data_type {
        DataType::PSK_INIT => {
            let rand = msg.find(|p| if let Payload::Rand(r) = p { Some(r.rand.clone()) } else { None }).unwrap_or_default();
            (MessageKeys::rfc3830(h.prf, key, h.csb_id, &rand, encr, mac_alg), Vec::new())
        }
        DataType::REQUEST_INIT_PSK => (
            MessageKeys::ticket(h.prf, key, h.csb_id, Direction::Initial, ri.as_deref(), None, encr, mac_alg),
            vec![idr(msg, IdRole::INITIATOR), idr(msg, IdRole::KMS)],
        ),
        DataType::RESOLVE_INIT_PSK => (
            MessageKeys::ticket(h.prf, key, h.csb_id, Direction::Initial, None, rr.as_deref(), encr, mac_alg),
            vec![idr(msg, IdRole::RESPONDER), idr(msg, IdRole::KMS)],
        ),
        DataType::TRANSFER_INIT => (
            MessageKeys::ticket(h.prf, key, h.csb_id, Direction::Initial, ri.as_deref(), None, encr, mac_alg),
            vec![idr(msg, IdRole::INITIATOR), idr(msg, IdRole::RESPONDER)],
        ),
        other => {
            return json!({ "error": format!("{other:?}: the MAC also covers the initiating message (RFC 6043 Table 5.2); verify with the exchange API") });
        }
    };
    let keys = match keys {
        Ok(k) => k,
        Err(e) => return json!({ "error": e.to_string() }),
    };
    let (covered, tag) = if h.data_type == DataType::PSK_INIT {
        let end = bytes.len().saturating_sub(mac_alg.mac_len().unwrap_or(0));
        (bytes.get(..end).unwrap_or_default().to_vec(), bytes.get(end..).unwrap_or_default().to_vec())
    } else {
        match mediasec_mikey::ticket::covered_by_v(bytes) {
            Ok((c, v)) => (c, v.mac),
            Err(e) => return json!({ "error": e.to_string() }),
        }
    };
    let mut parts: Vec<&[u8]> = vec![&covered];
    parts.extend(ids.iter().map(Vec::as_slice));
    let mac_ok = kemac_crypto::verify_mac(mac_alg, &keys.auth_key, &parts, &tag).is_ok();
    let mut out = json!({ "mac_alg": reg(mac_alg.0, mac_alg), "mac_valid": mac_ok });
    if let Some(k) = kemac {
        match kemac_crypto::decrypt(k.encr_alg, &keys, h.csb_id, t, &k.encr_data) {
            Ok(plain) => {
                let first = if h.data_type == DataType::PSK_INIT || h.data_type.0 >= 11 { PayloadType::KEY_DATA } else { PayloadType::ID };
                let p = payload::decode_payloads(&plain, first, 0);
                out["key_data"] = sub_chain(p, &plain, 0, 0);
            }
            Err(e) => out["key_data"] = json!({ "error": e.to_string() }),
        }
    }
    out
}

fn decode(a: DecodeArgs) -> anyhow::Result<ExitCode> {
    let bytes = read_input(&a)?;
    let (msg, header_len, spans) = match Message::decode_with_spans(&bytes) {
        Ok(x) => x,
        Err(e) => bail!("MIKEY decode error: {e}"),
    };
    let mut out = json!({
        "length": bytes.len(),
        "header": header(&msg, &bytes, header_len),
        "payloads": chain(&msg.payloads, &spans, 0),
    });
    let mut ok = true;
    if let Some(k) = &a.key {
        let key = hex::decode(k.trim()).context("--key is not hex")?;
        let v = verify(&msg, &bytes, &key);
        ok = v["mac_valid"].as_bool() == Some(true);
        out["verification"] = v;
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print!("{}", render(&out, 0));
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(2) })
}

/// Text tree: `{value, name}` pairs print as `Name (value)`.
fn render(v: &Value, depth: usize) -> String {
    let pad = "  ".repeat(depth);
    let mut s = String::new();
    match v {
        Value::Object(m) => {
            for (k, val) in m {
                match val {
                    Value::Object(o) if o.contains_key("value") && o.contains_key("name") && o.len() == 2 => {
                        let name = o["name"].as_str().unwrap_or("Unknown");
                        s += &format!("{pad}{k}: {name} ({})\n", o["value"]);
                    }
                    Value::Object(_) | Value::Array(_) => {
                        s += &format!("{pad}{k}:\n");
                        s += &render(val, depth + 1);
                    }
                    Value::String(x) => s += &format!("{pad}{k}: {x}\n"),
                    other => s += &format!("{pad}{k}: {other}\n"),
                }
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                s += &format!("{pad}[{i}]\n");
                s += &render(item, depth + 1);
            }
        }
        other => s += &format!("{pad}{other}\n"),
    }
    s
}
