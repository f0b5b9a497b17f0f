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

/// A decoded-message tree whose objects keep their entries in wire order. The text view
/// prints that order (like Wireshark's MIKEY tree); [`Node::to_json`] gives the documented
/// JSON, whose object keys serde_json sorts.
#[derive(Debug, Clone)]
pub(crate) enum Node {
    /// A JSON scalar (or small fixed object).
    Leaf(Value),
    /// Named entries in wire order.
    Obj(Vec<(String, Self)>),
    /// A list (payload chains, CS maps, parameters).
    Arr(Vec<Self>),
}

impl From<Value> for Node {
    fn from(v: Value) -> Self {
        Self::Leaf(v)
    }
}

impl Node {
    fn put(&mut self, k: &str, v: impl Into<Self>) {
        if let Self::Obj(o) = self {
            o.push((k.to_owned(), v.into()));
        }
    }

    fn get(&self, k: &str) -> Option<&Self> {
        match self {
            Self::Obj(o) => o.iter().find_map(|(name, v)| (name == k).then_some(v)),
            _ => None,
        }
    }

    /// The JSON form (docs/mikey.md).
    pub(crate) fn to_json(&self) -> Value {
        match self {
            Self::Leaf(v) => v.clone(),
            Self::Obj(o) => Value::Object(o.iter().map(|(k, v)| (k.clone(), v.to_json())).collect::<Map<_, _>>()),
            Self::Arr(a) => Value::Array(a.iter().map(Self::to_json).collect()),
        }
    }
}

/// `obj![k => v, ...]`: an ordered [`Node::Obj`].
macro_rules! obj {
    ($($k:literal => $v:expr),* $(,)?) => {
        Node::Obj(vec![$(($k.to_owned(), Node::from($v))),*])
    };
}

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

fn reg<T: core::fmt::Debug>(value: impl Into<u64>, r: T) -> Node {
    let name = format!("{r:?}");
    let name = if name.starts_with("0x") { Value::Null } else { Value::String(name) };
    obj!["value" => json!(value.into()), "name" => name]
}

fn text_or_hex(b: &[u8]) -> Node {
    match std::str::from_utf8(b) {
        Ok(s) if !s.is_empty() && s.chars().all(|c| !c.is_control()) => obj!["text" => json!(s), "hex" => json!(hex::encode(b))],
        _ => obj!["hex" => json!(hex::encode(b))],
    }
}

/// Key material: hex, or only its length when keys are hidden (`mediasec sdp inspect`).
fn secret(b: &[u8], show_keys: bool) -> Node {
    if show_keys { json!(hex::encode(b)).into() } else { json!(format!("<{} octets hidden, --show-keys>", b.len())).into() }
}

fn validity(v: &KeyValidity) -> Node {
    match v {
        KeyValidity::Null => obj!["kv" => reg(0u8, v.kv_type())],
        KeyValidity::Spi(s) => obj!["kv" => reg(1u8, v.kv_type()), "spi" => json!(hex::encode(s))],
        KeyValidity::Interval { from, to } => {
            obj!["kv" => reg(2u8, v.kv_type()), "valid_from" => json!(hex::encode(from)), "valid_to" => json!(hex::encode(to))]
        }
    }
}

/// Describes a chain; `spans` give absolute offsets, `next` the Next Payload of each.
fn chain(payloads: &[Payload], spans: &[Span], base: usize, show_keys: bool) -> Vec<Node> {
    payloads
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut m = obj!["payload" => reg(p.payload_type().0, p.payload_type())];
            if let Some(s) = spans.get(i) {
                m.put("offset", json!(s.start + base));
                m.put("length", json!(s.end - s.start));
            }
            if !matches!(p, Payload::Sign(_)) {
                let next = payloads.get(i + 1).map_or(PayloadType::LAST, Payload::payload_type);
                m.put("next_payload", reg(next.0, next));
            }
            let start = spans.get(i).map_or(base, |s| s.start + base);
            fields(p, start, show_keys, &mut m);
            m
        })
        .collect()
}

fn sub_chain(result: mediasec_mikey::Result<Vec<Payload>>, bytes: &[u8], lead: usize, base: usize, show_keys: bool) -> Node {
    match result {
        Ok(p) => {
            // Re-encode to get spans relative to the chain start.
            let spans = spans_of(&p);
            Node::Arr(chain(&p, &spans, base + lead, show_keys))
        }
        Err(e) => obj!["error" => json!(e.to_string()), "hex" => json!(hex::encode(bytes))],
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

fn fields(p: &Payload, start: usize, show_keys: bool, m: &mut Node) {
    let mut put = |k: &str, v: Node| m.put(k, v);
    match p {
        Payload::Kemac(k) => {
            put("encr_alg", reg(k.encr_alg.0, k.encr_alg));
            put("encr_data_len", json!(k.encr_data.len()).into());
            put("encr_data", json!(hex::encode(&k.encr_data)).into());
            if k.encr_alg == mediasec_mikey::registry::EncrAlg::NULL {
                let body = payload::decode_payloads(&k.encr_data, PayloadType::KEY_DATA, start + 4);
                put("key_data", sub_chain(body, &k.encr_data, 0, start + 4, show_keys));
            }
            put("mac_alg", reg(k.mac_alg.0, k.mac_alg));
            put("mac", json!(hex::encode(&k.mac)).into());
        }
        Payload::Pke(x) => {
            put("cache", reg(x.cache.0, x.cache));
            put("data_len", json!(x.data.len()).into());
            put("data", json!(hex::encode(&x.data)).into());
        }
        Payload::Dh(x) => {
            put("dh_group", reg(x.group.0, x.group));
            put("dh_value", json!(hex::encode(&x.value)).into());
            put("reserved", json!(x.reserved).into());
            put("key_validity", validity(&x.validity));
        }
        Payload::Sign(x) => {
            put("signature_type", reg(x.sig_type.0, x.sig_type));
            put("signature_len", json!(x.signature.len()).into());
            put("signature", json!(hex::encode(&x.signature)).into());
        }
        Payload::T(t) => {
            put("ts_type", reg(t.ts_type.0, t.ts_type));
            put("ts_value", json!(format!("{:0w$x}", t.value, w = t.ts_type.value_len().unwrap_or(8) * 2)).into());
        }
        Payload::Tr(t) => {
            put("ts_role", reg(t.role.0, t.role));
            put("ts_type", reg(t.ts.ts_type.0, t.ts.ts_type));
            put("ts_value", json!(format!("{:0w$x}", t.ts.value, w = t.ts.ts_type.value_len().unwrap_or(8) * 2)).into());
        }
        Payload::Id(x) => {
            put("id_type", reg(x.id_type.0, x.id_type));
            put("id_len", json!(x.data.len()).into());
            put("id_data", text_or_hex(&x.data));
        }
        Payload::Idr(x) => {
            put("id_role", reg(x.role.0, x.role));
            put("id_type", reg(x.id_type.0, x.id_type));
            put("id_len", json!(x.data.len()).into());
            put("id_data", text_or_hex(&x.data));
        }
        Payload::Cert(x) => {
            put("cert_type", reg(x.cert_type.0, x.cert_type));
            put("cert_len", json!(x.data.len()).into());
            put("cert_data", json!(hex::encode(&x.data)).into());
        }
        Payload::Chash(x) => {
            put("hash_func", reg(x.hash_func.0, x.hash_func));
            put("hash", json!(hex::encode(&x.hash)).into());
        }
        Payload::V(x) => {
            put("auth_alg", reg(x.auth_alg.0, x.auth_alg));
            put("ver_data", json!(hex::encode(&x.mac)).into());
        }
        Payload::Sp(x) => {
            put("policy_no", json!(x.policy_no).into());
            put("prot_type", reg(x.prot_type.0, x.prot_type));
            let params = x.params.iter().map(|pp| obj!["type" => reg(pp.param_type.0, pp.param_type), "value" => json!(hex::encode(&pp.value))]);
            put("params", Node::Arr(params.collect()));
        }
        Payload::Rand(x) => {
            put("rand_len", json!(x.rand.len()).into());
            put("rand", json!(hex::encode(&x.rand)).into());
        }
        Payload::Randr(x) => {
            put("rand_role", reg(x.role.0, x.role));
            put("rand_len", json!(x.rand.len()).into());
            put("rand", json!(hex::encode(&x.rand)).into());
        }
        Payload::Err(x) => {
            put("error_no", reg(x.code.0, x.code));
            put("reserved", json!(x.reserved).into());
        }
        Payload::Tp(tp) => policy(tp, start, show_keys, m),
        Payload::Ticket(t) => {
            policy(&t.policy, start, show_keys, m);
            let td_off = start + 11 + t.policy.data.len();
            m.put("ticket_data_len", json!(t.ticket_data.len()));
            let td = match BaseTicketData::decode(&t.ticket_data, td_off) {
                Ok(b) => {
                    let spans = spans_of(&b.payloads);
                    obj![
                        "thdr_data" => json!(hex::encode(&b.thdr_data)),
                        "payloads" => Node::Arr(chain(&b.payloads, &spans, td_off + 3 + b.thdr_data.len(), show_keys)),
                    ]
                }
                Err(e) => obj!["error" => json!(e.to_string()), "hex" => json!(hex::encode(&t.ticket_data))],
            };
            m.put("ticket_data", td);
            let id_off = td_off + t.ticket_data.len() + 2;
            m.put("initiator_data_len", json!(t.initiator_data.len()));
            if !t.initiator_data.is_empty() {
                let d = decode_first_payload_chain(&t.initiator_data, id_off);
                m.put("initiator_data", sub_chain(d, &t.initiator_data, 1, id_off, show_keys));
            }
        }
        Payload::KeyData(k) => {
            put("key_type", reg(k.key_type.0, k.key_type));
            put("key_len", json!(k.key.len()).into());
            put("key", secret(&k.key, show_keys));
            if let Some(s) = &k.salt {
                put("salt_len", json!(s.len()).into());
                put("salt", secret(s, show_keys));
            }
            put("key_validity", validity(&k.validity));
        }
        Payload::GeneralExt(g) => {
            put("ext_type", reg(g.ext_type.0, g.ext_type));
            put("ext_len", json!(g.data.len()).into());
            put("ext_data", text_or_hex(&g.data));
        }
        Payload::Sakke(s) => {
            put("sakke_params", reg(s.params.0, s.params));
            put("id_scheme", reg(s.id_scheme.0, s.id_scheme));
            put("sakke_data_len", json!(s.data.len()).into());
            put("sakke_data", json!(hex::encode(&s.data)).into());
        }
        // Payload is non-exhaustive only across crate versions; every variant is listed.
    }
}

fn policy(tp: &payload::TicketPolicy, start: usize, show_keys: bool, m: &mut Node) {
    m.put("ticket_type", reg(tp.ticket_type.0, tp.ticket_type));
    m.put("subtype", json!(tp.subtype));
    m.put("version", json!(tp.version));
    m.put("prf_func", reg(tp.prf.0, tp.prf));
    m.put("flags", json!(tp.flags.letters()));
    m.put("reserved", json!(tp.reserved));
    m.put("tp_data_len", json!(tp.data.len()));
    let off = start + 9;
    if !tp.data.is_empty() {
        m.put("tp_data", sub_chain(decode_first_payload_chain(&tp.data, off), &tp.data, 1, off, show_keys));
    }
}

fn header(msg: &Message, bytes: &[u8], header_len: usize) -> Node {
    let h = &msg.header;
    let next = PayloadType(bytes.get(2).copied().unwrap_or(0));
    let map = match &h.cs_map {
        CsIdMap::SrtpId(v) => v
            .iter()
            .map(|c| obj!["policy_no" => json!(c.policy_no), "ssrc" => json!(format!("{:08x}", c.ssrc)), "roc" => json!(format!("{:08x}", c.roc))])
            .collect(),
        CsIdMap::Empty { .. } => Vec::new(),
        CsIdMap::GenericId(v) => v
            .iter()
            .map(|c| {
                obj![
                    "cs_id" => json!(c.cs_id),
                    "prot_type" => reg(c.prot_type.0, c.prot_type),
                    "s" => json!(c.s_flag),
                    "policies" => json!(c.policies),
                    "session_data" => json!(hex::encode(&c.session_data)),
                    "spi" => json!(hex::encode(&c.spi)),
                ]
            })
            .collect(),
    };
    obj![
        "version" => json!(h.version),
        "data_type" => reg(h.data_type.0, h.data_type),
        "next_payload" => reg(next.0, next),
        "v" => json!(h.v_flag),
        "prf_func" => reg(h.prf.0, h.prf),
        "csb_id" => json!(format!("{:08x}", h.csb_id)),
        "n_cs" => json!(h.cs_map.n_cs()),
        "cs_id_map_type" => reg(h.cs_map.map_type().0, h.cs_map.map_type()),
        "cs_id_map" => Node::Arr(map),
        "length" => json!(header_len),
    ]
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
fn verify(msg: &Message, bytes: &[u8], key: &[u8]) -> Node {
    let h = &msg.header;
    let t = msg.find(|p| if let Payload::T(t) = p { Some(t.as_u64()) } else { None }).unwrap_or(0);
    let kemac = msg.find(|p| if let Payload::Kemac(k) = p { Some(k.clone()) } else { None });
    let v = msg.find(|p| if let Payload::V(v) = p { Some(v.clone()) } else { None });
    let (encr, mac_alg) = match (&kemac, &v) {
        (Some(k), None) => (k.encr_alg, k.mac_alg),
        (Some(k), Some(v)) => (k.encr_alg, v.auth_alg),
        (None, Some(v)) => (mediasec_mikey::registry::EncrAlg::NULL, v.auth_alg),
        (None, None) => return obj!["error" => json!("no KEMAC or V payload")],
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
            return obj!["error" => json!(format!("{other:?}: the MAC also covers the initiating message (RFC 6043 Table 5.2); verify with the exchange API"))];
        }
    };
    let keys = match keys {
        Ok(k) => k,
        Err(e) => return obj!["error" => json!(e.to_string())],
    };
    let (covered, tag) = if h.data_type == DataType::PSK_INIT {
        let end = bytes.len().saturating_sub(mac_alg.mac_len().unwrap_or(0));
        (bytes.get(..end).unwrap_or_default().to_vec(), bytes.get(end..).unwrap_or_default().to_vec())
    } else {
        match mediasec_mikey::ticket::covered_by_v(bytes) {
            Ok((c, v)) => (c, v.mac),
            Err(e) => return obj!["error" => json!(e.to_string())],
        }
    };
    let mut parts: Vec<&[u8]> = vec![&covered];
    parts.extend(ids.iter().map(Vec::as_slice));
    let mac_ok = kemac_crypto::verify_mac(mac_alg, &keys.auth_key, &parts, &tag).is_ok();
    let mut out = obj!["mac_alg" => reg(mac_alg.0, mac_alg), "mac_valid" => json!(mac_ok)];
    if let Some(k) = kemac {
        match kemac_crypto::decrypt(k.encr_alg, &keys, h.csb_id, t, &k.encr_data) {
            Ok(plain) => {
                let first = if h.data_type == DataType::PSK_INIT || h.data_type.0 >= 11 { PayloadType::KEY_DATA } else { PayloadType::ID };
                let p = payload::decode_payloads(&plain, first, 0);
                out.put("key_data", sub_chain(p, &plain, 0, 0, true));
            }
            Err(e) => out.put("key_data", obj!["error" => json!(e.to_string())]),
        }
    }
    out
}

/// The decoded tree of a MIKEY message (`length`, `header`, `payloads`), shared with
/// `mediasec sdp inspect`; key material is hidden unless `show_keys`.
pub(crate) fn message_tree(bytes: &[u8], show_keys: bool) -> mediasec_mikey::Result<(Message, Node)> {
    let (msg, header_len, spans) = Message::decode_with_spans(bytes)?;
    let tree = obj![
        "length" => json!(bytes.len()),
        "header" => header(&msg, bytes, header_len),
        "payloads" => Node::Arr(chain(&msg.payloads, &spans, 0, show_keys)),
    ];
    Ok((msg, tree))
}

fn decode(a: DecodeArgs) -> anyhow::Result<ExitCode> {
    let bytes = read_input(&a)?;
    let (msg, mut out) = match message_tree(&bytes, true) {
        Ok(x) => x,
        Err(e) => bail!("MIKEY decode error: {e}"),
    };
    let mut ok = true;
    if let Some(k) = &a.key {
        let key = hex::decode(k.trim()).context("--key is not hex")?;
        let v = verify(&msg, &bytes, &key);
        ok = matches!(v.get("mac_valid"), Some(Node::Leaf(Value::Bool(true))));
        out.put("verification", v);
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&out.to_json())?);
    } else {
        print!("{}", render(&out, 0));
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(2) })
}

/// Text tree in wire order: `{value, name}` pairs print as `Name (value)`, list items as
/// `[i]`, or `[i] <payload name>` for payloads.
pub(crate) fn render(v: &Node, depth: usize) -> String {
    use std::fmt::Write as _;
    let pad = "  ".repeat(depth);
    let mut s = String::new();
    match v {
        Node::Obj(entries) => {
            for (k, val) in entries {
                let _ = match val {
                    Node::Obj(o) if matches!(o.as_slice(), [(a, _), (b, _)] if a == "value" && b == "name") => {
                        let (value, name) = (val.get("value").map(Node::to_json), val.get("name").map(Node::to_json));
                        let name = name.as_ref().and_then(Value::as_str).unwrap_or("Unknown").to_owned();
                        writeln!(s, "{pad}{k}: {name} ({})", value.unwrap_or_default())
                    }
                    Node::Obj(_) | Node::Arr(_) => {
                        let _ = writeln!(s, "{pad}{k}:");
                        write!(s, "{}", render(val, depth + 1))
                    }
                    Node::Leaf(Value::String(x)) => writeln!(s, "{pad}{k}: {x}"),
                    Node::Leaf(other) => writeln!(s, "{pad}{k}: {other}"),
                };
            }
        }
        Node::Arr(items) => {
            for (i, item) in items.iter().enumerate() {
                let title = match item.get("payload").map(Node::to_json) {
                    Some(p) => format!(" {}", p.get("name").and_then(Value::as_str).unwrap_or("Unknown")),
                    None => String::new(),
                };
                let _ = writeln!(s, "{pad}[{i}]{title}");
                s += &render(item, depth + 1);
            }
        }
        Node::Leaf(other) => {
            let _ = writeln!(s, "{pad}{other}");
        }
    }
    s
}
