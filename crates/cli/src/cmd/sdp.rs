//! `mediasec sdp`: SDP key-management attributes (RFC 4568 a=crypto, RFC 4567 a=key-mgmt,
//! TS 24.229 a=3ge2ae), decoded. See docs/sdp.md.

use anyhow::Context as _;
use mediasec_sdp::{CryptoAttribute, E2aeIndication, KeyMgmt, KeyParam, Level, Sdp};
use serde_json::{Value, json};

use super::mikey::{Node, message_tree, render};
use std::io::Read as _;
use std::process::ExitCode;

/// Arguments of `mediasec sdp`.
#[derive(clap::Args)]
pub(crate) struct Args {
    #[command(subcommand)]
    command: SdpCommand,
}

#[derive(clap::Subcommand)]
enum SdpCommand {
    /// Show the a=crypto, a=key-mgmt and a=3ge2ae lines of an SDP body, decoded, per level.
    /// Exit status 1 if any of those attributes is malformed or a MIKEY message does not decode.
    Inspect {
        /// SDP file, or `-` for standard input.
        file: String,
        /// Machine-readable output (see docs/sdp.md for the schema).
        #[arg(long)]
        json: bool,
        /// Print master keys, salts and key-mgmt data in hex (default: length + fingerprint).
        #[arg(long)]
        show_keys: bool,
    },
}

pub(crate) fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        SdpCommand::Inspect { file, json, show_keys } => inspect(&file, json, show_keys),
    }
}

fn inspect(file: &str, as_json: bool, show_keys: bool) -> anyhow::Result<ExitCode> {
    let mut bytes = Vec::new();
    if file == "-" {
        std::io::stdin().read_to_end(&mut bytes).context("reading standard input")?;
    } else {
        bytes = std::fs::read(file).with_context(|| format!("reading {file}"))?;
    }
    let sdp = Sdp::parse_bytes(&bytes).with_context(|| file.to_owned())?;
    let mut errors = 0usize;
    let mut trees = Vec::new();
    let report = describe(&sdp, show_keys, &mut errors, &mut trees);
    let out = if as_json { serde_json::to_string_pretty(&report)? + "\n" } else { render_text(&report, &trees) };
    std::io::Write::write_all(&mut std::io::stdout().lock(), out.as_bytes()).context("writing standard output")?;
    Ok(if errors == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn hex_or_fingerprint(bytes: &[u8], show: bool) -> Value {
    if show {
        json!({ "len": bytes.len(), "hex": hex::encode(bytes) })
    } else {
        json!({ "len": bytes.len(), "fingerprint": mediasec_sdp::fingerprint(bytes) })
    }
}

fn describe_crypto(value: &str, show_keys: bool) -> Result<Value, mediasec_sdp::Error> {
    let attr = CryptoAttribute::parse(value)?;
    let params = attr.suite.params();
    let keys: Vec<Value> = attr
        .keys
        .iter()
        .map(|k| match k {
            KeyParam::Inline(k) => {
                let (key, salt) = match k.split(&attr.suite) {
                    Some((key, salt)) => (hex_or_fingerprint(key, show_keys), hex_or_fingerprint(salt, show_keys)),
                    None => (hex_or_fingerprint(k.key_salt(), show_keys), Value::Null),
                };
                json!({
                    "method": "inline",
                    "master_key": key,
                    "master_salt": salt,
                    "fingerprint": k.fingerprint(),
                    "lifetime": k.lifetime.map(|l| l.to_string()),
                    "lifetime_packets": k.lifetime.map(|l| l.packets().to_string()),
                    "mki": k.mki.as_ref().map(|m| json!({ "value": m.decimal(), "length": m.len(), "hex": hex::encode(m.bytes()) })),
                })
            }
            KeyParam::Other { method, info } => json!({ "method": method, "info": info }),
        })
        .collect();
    Ok(json!({
        "tag": attr.tag,
        "suite": attr.suite.name(),
        "known_suite": params.is_some(),
        "iana_suite": params.map(|p| p.iana),
        "keys": keys,
        "params": attr.params.iter().map(ToString::to_string).collect::<Vec<_>>(),
    }))
}

/// The whole report; `errors` counts malformed attributes. `trees` receives, per body line,
/// the decoded MIKEY tree of each `a=key-mgmt:mikey` (the same tree as `mediasec mikey
/// decode`, key material hidden unless `show_keys`), for the wire-order text view.
fn describe(sdp: &Sdp, show_keys: bool, errors: &mut usize, trees: &mut Vec<(usize, Node)>) -> Value {
    let mut first_line = 1;
    let mut levels = Vec::new();
    for level in sdp.levels() {
        levels.push(describe_level(sdp, level, first_line, show_keys, errors, trees));
        first_line += sdp.lines(level).map(<[_]>::len).unwrap_or_default();
    }
    json!({ "levels": levels, "errors": *errors })
}

/// One level; `first_line` is the 1-based body line number of its first line.
fn describe_level(sdp: &Sdp, level: Level, first_line: usize, show_keys: bool, errors: &mut usize, trees: &mut Vec<(usize, Node)>) -> Value {
    let mut crypto = Vec::new();
    let mut key_mgmt = Vec::new();
    let mut e2ae = Vec::new();
    for (line, attr) in sdp.attributes(level).unwrap_or_default() {
        let value = attr.value.unwrap_or_default();
        let decoded = match attr.name {
            CryptoAttribute::NAME => describe_crypto(value, show_keys).map(|v| (&mut crypto, v)),
            KeyMgmt::NAME => KeyMgmt::parse(value).map(|k| {
                let mut v = json!({ "protocol": k.protocol, "data": hex_or_fingerprint(&k.data, show_keys) });
                if k.protocol == KeyMgmt::MIKEY {
                    let decoded = match message_tree(&k.data, show_keys) {
                        Ok((_, tree)) => {
                            let j = tree.to_json();
                            trees.push((first_line + line, tree));
                            j
                        }
                        Err(e) => {
                            *errors += 1;
                            json!({ "error": e.to_string() })
                        }
                    };
                    if let Some(obj) = v.as_object_mut() {
                        obj.insert("mikey".to_owned(), decoded);
                    }
                }
                (&mut key_mgmt, v)
            }),
            mediasec_sdp::e2ae::NAME => E2aeIndication::parse(value).map(|e| (&mut e2ae, json!(e.to_string()))),
            _ => continue,
        };
        let line = first_line + line;
        let entry = |v: Value| json!({ "line": line, "value": v });
        match decoded {
            Ok((list, v)) => list.push(entry(v)),
            Err(e) => {
                *errors += 1;
                let list = match attr.name {
                    CryptoAttribute::NAME => &mut crypto,
                    KeyMgmt::NAME => &mut key_mgmt,
                    _ => &mut e2ae,
                };
                list.push(json!({ "line": line, "error": e.to_string() }));
            }
        }
    }
    let (name, media) = match level {
        Level::Session => ("session".to_owned(), Value::Null),
        Level::Media(i) => (
            format!("media {i}"),
            match sdp.media_line(i) {
                Ok(m) => json!({ "media": m.media, "port": m.port, "proto": m.proto }),
                Err(e) => json!({ "error": e.to_string() }),
            },
        ),
    };
    json!({ "level": name, "m": media, "crypto": crypto, "key_mgmt": key_mgmt, "3ge2ae": e2ae })
}

/// `v[path[0]][path[1]]...`, `Null` where absent.
fn at<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    path.iter().fold(v, |v, k| v.get(k).unwrap_or(&Value::Null))
}

/// A JSON scalar as text (strings without quotes).
fn txt(v: &Value, path: &[&str]) -> String {
    match at(v, path) {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn bytes_text(v: &Value) -> String {
    match at(v, &["hex"]).as_str() {
        Some(h) => format!("{} bytes {h}", txt(v, &["len"])),
        None => format!("{} bytes (fingerprint {})", txt(v, &["len"]), txt(v, &["fingerprint"])),
    }
}

fn list<'a>(v: &'a Value, key: &str) -> impl Iterator<Item = &'a Value> {
    at(v, &[key]).as_array().into_iter().flatten()
}

fn render_text(report: &Value, trees: &[(usize, Node)]) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    for level in list(report, "levels") {
        let _ = match at(level, &["m", "media"]).as_str() {
            Some(media) => writeln!(o, "{}: m={media} {} {}", txt(level, &["level"]), txt(level, &["m", "port"]), txt(level, &["m", "proto"])),
            None => writeln!(o, "{}", txt(level, &["level"])),
        };
        for c in list(level, "crypto") {
            let line = txt(c, &["line"]);
            if c.get("error").is_some() {
                let _ = writeln!(o, "  line {line}: a=crypto INVALID: {}", txt(c, &["error"]));
                continue;
            }
            let v = at(c, &["value"]);
            let known = if at(v, &["known_suite"]) == &Value::Bool(true) { "" } else { " (unknown suite)" };
            let _ = writeln!(o, "  line {line}: a=crypto tag {} {}{known}", txt(v, &["tag"]), txt(v, &["suite"]));
            for (i, k) in list(v, "keys").enumerate() {
                let n = i + 1;
                if txt(k, &["method"]) != "inline" {
                    let _ = writeln!(o, "    key {n}: {}:{}", txt(k, &["method"]), txt(k, &["info"]));
                    continue;
                }
                let _ = if at(k, &["master_salt"]).is_null() {
                    writeln!(o, "    key {n}: key||salt {}", bytes_text(at(k, &["master_key"])))
                } else {
                    writeln!(o, "    key {n}: master key {}, master salt {}", bytes_text(at(k, &["master_key"])), bytes_text(at(k, &["master_salt"])))
                };
                if !at(k, &["lifetime"]).is_null() {
                    let _ = writeln!(o, "      lifetime {} packets", txt(k, &["lifetime"]));
                }
                if !at(k, &["mki"]).is_null() {
                    let _ = writeln!(o, "      MKI {} ({} octets, on the wire {})", txt(k, &["mki", "value"]), txt(k, &["mki", "length"]), txt(k, &["mki", "hex"]));
                }
            }
            let params: Vec<&str> = list(v, "params").filter_map(Value::as_str).collect();
            if !params.is_empty() {
                let _ = writeln!(o, "    session params: {}", params.join(" "));
            }
        }
        for k in list(level, "key_mgmt") {
            let _ = match k.get("error") {
                Some(_) => writeln!(o, "  line {}: a=key-mgmt INVALID: {}", txt(k, &["line"]), txt(k, &["error"])),
                None => writeln!(o, "  line {}: a=key-mgmt {}: {}", txt(k, &["line"]), txt(k, &["value", "protocol"]), bytes_text(at(k, &["value", "data"]))),
            };
            let m = at(k, &["value", "mikey"]);
            if m.get("error").is_some() {
                let _ = writeln!(o, "    MIKEY: does not decode: {}", txt(m, &["error"]));
            } else if let Some((_, tree)) = trees.iter().find(|(l, _)| Some(*l as u64) == at(k, &["line"]).as_u64()) {
                let _ = writeln!(o, "    MIKEY:");
                o += &render(tree, 3);
            }
        }
        for e in list(level, "3ge2ae") {
            let _ = match e.get("error") {
                Some(_) => writeln!(o, "  line {}: a=3ge2ae INVALID: {}", txt(e, &["line"]), txt(e, &["error"])),
                None => writeln!(o, "  line {}: a=3ge2ae {}", txt(e, &["line"]), txt(e, &["value"])),
            };
        }
    }
    o
}

#[cfg(test)]
mod tests {
    #![allow(clippy::indexing_slicing)]
    use super::*;

    const BODY: &str = "v=0\r\ns=-\r\na=key-mgmt:mikey AQEFgM0XflABAAAAAAAAAAAAAAYAyONQ6gAAAAAJAAAQbWlja2V5QG1vdXNlLmNvbQABn8HdGE5BMDXFIuGEga+62AgY5cc=\r\nm=audio 4 RTP/SAVP 0\r\n\
        a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|2^20|1:4 KDR=1\r\n\
        a=crypto:2 AES_CM_128_HMAC_SHA1_80 inline:AAAA\r\na=3ge2ae:applied\r\n";

    #[test]
    fn report_fields_and_key_hiding() {
        let mut errors = 0;
        let mut trees = Vec::new();
        let r = describe(&Sdp::parse(BODY), false, &mut errors, &mut trees);
        assert_eq!(errors, 1);
        assert_eq!(r["levels"][0]["key_mgmt"][0]["line"], 3);
        let km = &r["levels"][0]["key_mgmt"][0]["value"];
        assert_eq!(km["data"]["len"], 71);
        // The full `mediasec mikey decode` tree (same JSON schema, docs/mikey.md).
        assert_eq!(km["mikey"]["length"], 71);
        assert_eq!(km["mikey"]["header"]["data_type"]["name"], "PSK ver msg");
        assert_eq!(km["mikey"]["header"]["v"], true);
        assert_eq!(km["mikey"]["payloads"][0]["payload"]["name"], "T", "{km}");
        assert_eq!(km["mikey"]["payloads"][1]["id_data"]["text"], "mickey@mouse.com", "{km}");
        assert_eq!(trees.len(), 1);
        let mut bad_errors = 0;
        let bad = describe(&Sdp::parse("v=0\r\na=key-mgmt:mikey AQID\r\n"), false, &mut bad_errors, &mut Vec::new());
        assert_eq!(bad_errors, 1);
        assert!(bad["levels"][0]["key_mgmt"][0]["value"]["mikey"]["error"].as_str().unwrap_or_default().contains("byte"), "{bad}");
        let media = &r["levels"][1];
        assert_eq!(media["m"]["proto"], "RTP/SAVP");
        let c = &media["crypto"][0];
        assert_eq!(c["line"], 5);
        let k = &c["value"]["keys"][0];
        assert_eq!((k["master_key"]["len"].clone(), k["master_salt"]["len"].clone()), (json!(16), json!(14)));
        assert!(k["master_key"].get("hex").is_none());
        assert_eq!(k["lifetime_packets"], "1048576");
        assert_eq!(k["mki"]["hex"], "00000001");
        assert_eq!(c["value"]["params"][0], "KDR=1");
        assert!(media["crypto"][1]["error"].as_str().unwrap_or_default().contains("must be 30 bytes, got 3"));
        assert_eq!(media["3ge2ae"][0]["value"], "applied");
        let text = render_text(&r, &trees);
        // The MIKEY tree follows its key-mgmt line, in wire order (header before payloads,
        // version before data type).
        let at_km = text.find("line 3: a=key-mgmt mikey").expect("key-mgmt line");
        let (hdr, ver, dt, pl) = (text.find("header:"), text.find("version: 1"), text.find("data_type: PSK ver msg (1)"), text.find("[0] T"));
        assert!(matches!((hdr, ver, dt, pl), (Some(a), Some(b), Some(c), Some(d)) if at_km < a && a < b && b < c && c < d), "{text}");
        assert!(text.contains("line 5: a=crypto tag 1 AES_CM_128_HMAC_SHA1_80\n    key 1: master key 16 bytes (fingerprint "), "{text}");
        assert!(text.contains("line 6: a=crypto INVALID: key||salt for AES_CM_128_HMAC_SHA1_80 must be 30 bytes"), "{text}");
        assert!(text.contains("line 7: a=3ge2ae applied"), "{text}");
        let shown = describe(&Sdp::parse(BODY), true, &mut 0, &mut Vec::new());
        assert_eq!(shown["levels"][1]["crypto"][0]["value"]["keys"][0]["master_key"]["hex"], "3d2d6e40255e7821426a75667239293f");
    }
}
