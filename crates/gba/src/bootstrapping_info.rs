//! The `application/vnd.3gpp.bsf+xml` body of the BSF's 200 OK (TS 24.109 §4.2, Annex C):
//! `<BootstrappingInfo xmlns="uri:3gpp-gba"><btid/><lifetime/></BootstrappingInfo>`, and the
//! xs:dateTime (UTC, `YYYY-MM-DDTHH:MM:SSZ`) of the key lifetime.
//!
//! The reader is deliberately small: it accepts exactly the schema of Annex C (a
//! `BootstrappingInfo` root with `btid` and `lifetime` children, optional XML declaration,
//! optional namespace prefix), unescapes the five predefined entities, and rejects anything
//! else; it is not a general XML parser.

use crate::GbaError;

/// Media type of the body (TS 24.109 §4.2).
pub const CONTENT_TYPE: &str = "application/vnd.3gpp.bsf+xml";

/// The parsed body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrappingInfo {
    /// The B-TID, as text.
    pub btid: String,
    /// Key expiry, Unix seconds (UTC).
    pub lifetime: u64,
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn unescape(s: &str, offset: usize) -> Result<String, GbaError> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find('&') {
        out.push_str(rest.get(..pos).unwrap_or_default());
        let tail = rest.get(pos..).unwrap_or_default();
        let (rep, len) = [("&amp;", '&'), ("&lt;", '<'), ("&gt;", '>'), ("&quot;", '"'), ("&apos;", '\'')]
            .iter()
            .find(|(e, _)| tail.starts_with(e))
            .map(|(e, c)| (*c, e.len()))
            .ok_or(GbaError::Parse { what: "BootstrappingInfo", offset: offset + pos, reason: "unknown entity" })?;
        out.push(rep);
        rest = tail.get(len..).unwrap_or_default();
    }
    out.push_str(rest);
    Ok(out)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Inverse of [`days_from_civil`].
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Format Unix seconds as an xs:dateTime in UTC (`2020-10-28T23:36:26Z`).
pub fn format_time(unix: u64) -> String {
    let secs = i64::try_from(unix).unwrap_or(i64::MAX);
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", sod / 3600, sod % 3600 / 60, sod % 60)
}

/// Parse `YYYY-MM-DDTHH:MM:SS[.fff]Z` into Unix seconds (fraction dropped).
pub fn parse_time(s: &str) -> Result<u64, GbaError> {
    let bad = |offset, reason| GbaError::Parse { what: "xs:dateTime", offset, reason };
    let b = s.as_bytes();
    let num = |from: usize, len: usize| -> Result<i64, GbaError> {
        let t = s.get(from..from + len).ok_or(bad(from, "truncated"))?;
        if !t.bytes().all(|c| c.is_ascii_digit()) {
            return Err(bad(from, "expected digits"));
        }
        t.parse::<i64>().map_err(|_| bad(from, "expected digits"))
    };
    for (pos, sep) in [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')] {
        if b.get(pos) != Some(&sep) {
            return Err(bad(pos, "unexpected separator"));
        }
    }
    let (y, mo, d, h, mi, se) = (num(0, 4)?, num(5, 2)?, num(8, 2)?, num(11, 2)?, num(14, 2)?, num(17, 2)?);
    let mut i = 19;
    if b.get(i) == Some(&b'.') {
        i += 1;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
    }
    if b.get(i) != Some(&b'Z') || i + 1 != b.len() {
        return Err(bad(i, "expected 'Z' (UTC) at the end"));
    }
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 || y < 1970 {
        return Err(bad(0, "field out of range"));
    }
    let t = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + se;
    u64::try_from(t).map_err(|_| bad(0, "before 1970"))
}

impl BootstrappingInfo {
    /// Serialise (TS 24.109 Annex C).
    pub fn to_xml(&self) -> String {
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<BootstrappingInfo xmlns=\"uri:3gpp-gba\">\n<btid>{}</btid>\n<lifetime>{}</lifetime>\n</BootstrappingInfo>\n",
            escape(&self.btid),
            format_time(self.lifetime)
        )
    }

    /// Parse the body.
    pub fn parse(xml: &str) -> Result<Self, GbaError> {
        let bad = |offset, reason| GbaError::Parse { what: "BootstrappingInfo", offset, reason };
        let mut rest = xml.trim_start();
        let mut off = xml.len() - rest.len();
        if rest.starts_with("<?xml") {
            let end = rest.find("?>").ok_or(bad(off, "unterminated XML declaration"))? + 2;
            off += end;
            let t = rest.get(end..).unwrap_or_default();
            off += t.len() - t.trim_start().len();
            rest = t.trim_start();
        }
        // Root start tag, optionally prefixed, with attributes.
        let tag_end = rest.find('>').ok_or(bad(off, "unterminated start tag"))?;
        let start_tag = rest.get(1..tag_end).unwrap_or_default();
        let name = start_tag.split_whitespace().next().unwrap_or_default();
        let (prefix, local) = name.split_once(':').map_or(("", name), |(p, l)| (p, l));
        if !rest.starts_with('<') || local != "BootstrappingInfo" {
            return Err(bad(off, "root element is not BootstrappingInfo"));
        }
        let q = |n: &str| if prefix.is_empty() { n.to_owned() } else { format!("{prefix}:{n}") };
        let body_off = off + tag_end + 1;
        let body = rest.get(tag_end + 1..).unwrap_or_default();
        let close = format!("</{}>", q("BootstrappingInfo"));
        let body_end = body.find(&close).ok_or(bad(body_off, "missing </BootstrappingInfo>"))?;
        if !body.get(body_end + close.len()..).unwrap_or_default().trim().is_empty() {
            return Err(bad(body_off + body_end + close.len(), "content after the root element"));
        }
        let inner = body.get(..body_end).unwrap_or_default();
        let child = |n: &'static str| -> Result<String, GbaError> {
            let (open, close) = (format!("<{}>", q(n)), format!("</{}>", q(n)));
            let s = inner.find(&open).ok_or(bad(body_off, "missing child element"))? + open.len();
            let len = inner.get(s..).unwrap_or_default().find(&close).ok_or(bad(body_off + s, "unclosed child element"))?;
            let text = inner.get(s..s + len).unwrap_or_default();
            if text.contains('<') {
                return Err(bad(body_off + s, "unexpected markup in text"));
            }
            unescape(text.trim(), body_off + s)
        };
        let btid = child("btid")?;
        let lifetime = parse_time(&child("lifetime")?)?;
        Ok(Self { btid, lifetime })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_round_trip_and_known_dates() {
        assert_eq!(parse_time("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse_time("2000-03-01T00:00:00Z"), Ok(951_868_800));
        assert_eq!(format_time(951_868_800), "2000-03-01T00:00:00Z");
        for t in [0u64, 86_399, 1_603_928_186, 4_102_444_800] {
            assert_eq!(parse_time(&format_time(t)), Ok(t));
        }
        assert!(parse_time("2020-10-28T23:36:26+01:00").is_err());
    }
}
