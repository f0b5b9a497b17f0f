//! The P-CSCF's IMS-ALG for end-to-access-edge media security (TS 33.328 §4.1.2.1, §5.4.1,
//! §7.2.1 e2ae with SDES; specs.md §4.1), sans-IO: it decides which SDP gets the e2ae
//! treatment, builds the rtpengine *ng* commands (`offer`/`answer`/`delete`, the subset
//! `docs/agw.md` lists) that make the IMS-AGW terminate SRTP towards the UE and relay plain RTP
//! (or re-protected SRTP) towards the core, and post-processes the SDP the AGW returns.
//!
//! - Originating (UE → core): the UE offers `RTP/SAVP` + `a=crypto` + `a=3ge2ae:requested`.
//!   The AGW answers the UE's crypto and offers plain `RTP/AVP` towards the core — or, with
//!   the operator's `core_srtp` ([`crate::proxy::ProxyConfig::core_srtp`]), `RTP/SAVP` with
//!   its own `a=crypto` (SRTP re-protected with other keys, §4.1.2.1), the far end's SDES
//!   answer keying the core leg; in the answer back to the UE the AGW's `a=crypto` (UE's tag
//!   and suite, AGW's key) stands and `a=3ge2ae:applied` is added to every secured stream.
//! - Terminating (core → UE): a plain offer to a UE that registered e2ae support is turned
//!   into `RTP/SAVP` with the AGW's `a=crypto` and `a=3ge2ae:applied`; the UE's answered
//!   crypto is terminated in the AGW and a plain answer goes to the core. An `RTP/SAVP` offer
//!   from the far end (e2e SDES) is left end to end.
//! - The same applies to an offer wherever it travels (RFC 3264 offer/answer in SIP): an
//!   offer in a 2xx to an offerless INVITE with its answer in the ACK (RFC 3261 §13.2.1), an
//!   UPDATE offer with its answer in the 2xx (RFC 3311); the proxy (`crate::proxy`) decides
//!   which message carries what, this module builds the commands and edits the SDP.
//! - Every `a=3ge2ae` that passes the P-CSCF is removed; only the one this ALG inserts stays
//!   (TS 33.328 §7.1: the indication cannot be spoofed by anyone else).
//! - Operator extension beyond TS 33.328 ([`Provisioned`]): UEs the operator provisioned as
//!   e2ae UEs although they cannot signal it (legacy SDES clients) count as e2ae-capable when
//!   they register, and their SDES offer is treated as if it carried `a=3ge2ae:requested`.

use std::borrow::Cow;
use std::collections::HashSet;

use mediasec_agw::bencode::Value;
use mediasec_sdp::e2ae::{self, E2aeIndication};
use mediasec_sdp::{CryptoAttribute, Level, Sdp};

/// Which side of the P-CSCF the e2ae UE is on for this call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The UE placed the call (its INVITE came from the access side).
    Originating,
    /// The UE is called (the INVITE came from the S-CSCF).
    Terminating,
}

impl Side {
    /// The ng `transport-protocol` for the offer's receiver: towards the core (originating)
    /// plain, or SRTP re-protected with the AGW's own keys when `core_srtp` (TS 33.328
    /// §4.1.2.1: "plain RTP, or SRTP re-protected with other keys"); SRTP towards the UE
    /// (terminating).
    fn transport(self, core_srtp: bool) -> &'static str {
        match self {
            Self::Originating if core_srtp => "RTP/SAVP",
            Self::Originating => "RTP/AVP",
            Self::Terminating => "RTP/SAVP",
        }
    }
}

/// How the P-CSCF knows that a registered UE is an e2ae UE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Support {
    /// It registered `Security-Client: sdes-srtp;mediasec` (TS 33.328 §7.1, TS 24.229
    /// §5.2.2) and asks per call with `a=3ge2ae:requested` (§7.2.1).
    Indicated,
    /// The operator provisioned it ([`Provisioned`]): a legacy SDES UE that signals nothing.
    Provisioned,
}

/// UEs the operator provisioned as e2ae UEs although they cannot indicate it (legacy SDES
/// clients without `Security-Client: …mediasec` or `a=3ge2ae:requested`). This is an operator
/// extension beyond TS 33.328, which relies on the UE's indication: such a UE cannot tell that
/// its SDES ends at the IMS-AGW rather than at the far UE (it ignores `a=3ge2ae:applied`), and
/// its media crosses the core as plain RTP (SRTP under the AGW's keys with
/// [`crate::proxy::ProxyConfig::core_srtp`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Provisioned {
    /// Exact AORs (`sip:alice@a.example`, canonical per [`crate::registrar::aor`]).
    aors: HashSet<String>,
    /// Whole domains (`sip:*@a.example`), lower case.
    domains: HashSet<String>,
}

impl Provisioned {
    /// Adds one entry: an AOR (`sip:alice@a.example`) or a whole domain (`sip:*@a.example`).
    pub fn add(&mut self, entry: &str) -> Result<(), crate::Error> {
        let bad = |reason: &str| crate::Error::Provisioning { entry: entry.to_owned(), reason: reason.to_owned() };
        let canonical = crate::registrar::aor(entry);
        let (user, host) = canonical
            .strip_prefix("sip:")
            .ok_or_else(|| bad("not a sip: URI"))?
            .rsplit_once('@')
            .ok_or_else(|| bad("no user@host"))?;
        if user.is_empty() || host.is_empty() || host.contains(['<', '>', ' ', '*']) {
            return Err(bad("empty or invalid user or host"));
        }
        if user == "*" {
            self.domains.insert(host.to_owned());
        } else {
            self.aors.insert(canonical);
        }
        Ok(())
    }

    /// The provisioning of every entry.
    pub fn parse<'a>(entries: impl IntoIterator<Item = &'a str>) -> Result<Self, crate::Error> {
        let mut p = Self::default();
        for e in entries {
            p.add(e)?;
        }
        Ok(p)
    }

    /// Whether the canonical AOR `aor` is provisioned (exactly, or by its domain).
    pub fn contains(&self, aor: &str) -> bool {
        self.aors.contains(aor)
            || aor
                .strip_prefix("sip:")
                .and_then(|a| a.rsplit_once('@'))
                .is_some_and(|(_, host)| self.domains.contains(host))
    }

    /// Nothing provisioned.
    pub fn is_empty(&self) -> bool {
        self.aors.is_empty() && self.domains.is_empty()
    }
}

/// Which side, if any, the IMS-ALG secures for an initial INVITE offer (TS 33.328 §7.2.1):
/// from the access side (`from_core` false) when the calling UE registered as an e2ae UE
/// (`caller`) and asked with `a=3ge2ae:requested` — or, [`Support::Provisioned`], made an
/// SDES offer ([`sdes_offer`]); from the core when the called contact registered as an e2ae
/// UE (`callee`) and every live stream is plain ([`plain_offer`]). Otherwise `None`: the
/// offer passes (end to end), minus any `a=3ge2ae`.
pub fn decide(sdp: &Sdp, from_core: bool, caller: Option<Support>, callee: bool) -> Option<Side> {
    if from_core {
        return (callee && plain_offer(sdp)).then_some(Side::Terminating);
    }
    let secure = match caller? {
        Support::Indicated => requested(sdp),
        Support::Provisioned => requested(sdp) || sdes_offer(sdp),
    };
    secure.then_some(Side::Originating)
}

/// Every live stream of an offer is `RTP/SAVP`/`RTP/SAVPF` with at least one `a=crypto`
/// (RFC 4568 SDES) — what a provisioned legacy UE offers.
pub fn sdes_offer(sdp: &Sdp) -> bool {
    let live: Vec<usize> = (0..sdp.media_count()).filter(|&i| sdp.media_line(i).is_ok_and(|m| m.port != 0)).collect();
    !live.is_empty()
        && live.iter().all(|&i| {
            sdp.media_line(i).is_ok_and(|m| matches!(m.proto, "RTP/SAVP" | "RTP/SAVPF"))
                && sdp.attribute_values(Level::Media(i), CryptoAttribute::NAME).is_ok_and(|v| !v.is_empty())
        })
}

/// The UE asked for e2ae on at least one stream (`a=3ge2ae:requested`, media level).
pub fn requested(sdp: &Sdp) -> bool {
    (0..sdp.media_count()).any(|i| {
        e2ae::find(sdp, Level::Media(i))
            .is_ok_and(|v| v.iter().any(|x| x == &Ok(E2aeIndication::Requested)))
    })
}

/// Every live stream of an offer is plain `RTP/AVP` (what a terminating ALG secures towards
/// the UE; a secured offer is end-to-end SDES and passes).
pub fn plain_offer(sdp: &Sdp) -> bool {
    let live: Vec<_> = (0..sdp.media_count())
        .filter_map(|i| sdp.media_line(i).ok())
        .filter(|m| m.port != 0)
        .collect();
    !live.is_empty() && live.iter().all(|m| m.proto == "RTP/AVP")
}

fn s(v: &str) -> Value<'static> {
    Value::str(v.to_owned())
}

fn list(items: &[&str]) -> Value<'static> {
    Value::List(items.iter().map(|i| s(i)).collect())
}

/// The ng `offer` (docs/agw.md): the offer with every `a=3ge2ae` removed, the profile the
/// other side is to see ([`Side`]; with `core_srtp` an originating offer goes to the core as
/// `RTP/SAVP` with the AGW's own `a=crypto`), origin and session connection replaced, ICE
/// removed.
pub fn offer(ng_call_id: &str, from_tag: &str, sdp: &Sdp, side: Side, core_srtp: bool) -> Value<'static> {
    let mut sdp = sdp.clone();
    e2ae::remove_all(&mut sdp);
    Value::dict([
        ("command", s("offer")),
        ("call-id", s(ng_call_id)),
        ("from-tag", s(from_tag)),
        ("sdp", s(&sdp.to_string())),
        ("transport-protocol", s(side.transport(core_srtp))),
        ("replace", list(&["origin", "session-connection"])),
        ("ICE", s("remove")),
    ])
}

/// The ng `answer` for the answer carrying `to_tag`.
pub fn answer(ng_call_id: &str, from_tag: &str, to_tag: &str, sdp: &Sdp) -> Value<'static> {
    let mut sdp = sdp.clone();
    e2ae::remove_all(&mut sdp);
    Value::dict([
        ("command", s("answer")),
        ("call-id", s(ng_call_id)),
        ("from-tag", s(from_tag)),
        ("to-tag", s(to_tag)),
        ("sdp", s(&sdp.to_string())),
        ("replace", list(&["origin", "session-connection"])),
        ("ICE", s("remove")),
    ])
}

/// The ng `delete` of a whole call.
pub fn delete(ng_call_id: &str) -> Value<'static> {
    Value::dict([("command", s("delete")), ("call-id", s(ng_call_id))])
}

/// The rewritten SDP of an ng reply, or the reason it has none.
pub fn reply_sdp(reply: &[u8]) -> Result<Sdp, String> {
    let value = Value::decode(reply).map_err(|e| format!("undecodable ng reply: {e}"))?;
    match value.get("result").and_then(Value::as_str) {
        Some("ok") => {}
        Some("error") => {
            let reason = value
                .get("error-reason")
                .and_then(Value::as_bytes)
                .map(String::from_utf8_lossy)
                .unwrap_or(Cow::Borrowed("?"));
            return Err(format!("IMS-AGW refused: {reason}"));
        }
        other => return Err(format!("ng reply result {other:?}")),
    }
    let sdp = value
        .get("sdp")
        .and_then(Value::as_bytes)
        .ok_or("ng reply without sdp")?;
    Sdp::parse_bytes(sdp).map_err(|e| format!("ng reply sdp: {e}"))
}

/// What goes towards the UE: no foreign indication, and `a=3ge2ae:applied` on every live
/// stream the AGW secures (an `a=crypto` line present). Returns how many were marked.
pub fn towards_ue(sdp: &mut Sdp) -> usize {
    e2ae::remove_all(sdp);
    let secured: Vec<usize> = (0..sdp.media_count())
        .filter(|&i| sdp.media_line(i).is_ok_and(|m| m.port != 0))
        .filter(|&i| {
            sdp.attribute_values(Level::Media(i), CryptoAttribute::NAME)
                .is_ok_and(|v| !v.is_empty())
        })
        .collect();
    secured
        .iter()
        .filter(|&&i| e2ae::add(sdp, i, &E2aeIndication::Applied).is_ok())
        .count()
}

/// What goes towards the core (or any SDP the ALG does not secure): no `a=3ge2ae` at all.
/// Returns how many were removed.
pub fn strip(sdp: &mut Sdp) -> usize {
    e2ae::remove_all(sdp)
}

/// Which of the two an e2ae call's message gets: an offer travels the way the call's first
/// offer did (to the core for an originating call, to the UE for a terminating one), an answer
/// the other way; towards the UE [`towards_ue`], towards the core [`strip`].
pub fn for_receiver(sdp: &mut Sdp, side: Side, answer: bool) {
    match (side, answer) {
        (Side::Originating, false) | (Side::Terminating, true) => {
            strip(sdp);
        }
        (Side::Originating, true) | (Side::Terminating, false) => {
            towards_ue(sdp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UE_OFFER: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
m=audio 4000 RTP/SAVP 0\r\na=rtpmap:0 PCMU/8000\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\na=3ge2ae:requested\r\n";

    #[test]
    fn requested_and_plain_offers_are_recognised() {
        let sdp = Sdp::parse(UE_OFFER);
        assert!(requested(&sdp));
        assert!(!plain_offer(&sdp));
        let plain = Sdp::parse(
            "v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 4000 RTP/AVP 0\r\na=3ge2ae:applied\r\n",
        );
        assert!(!requested(&plain), "applied is not a request");
        assert!(plain_offer(&plain));
    }

    /// TS 33.328 §7.2.1 unchanged for indicated UEs (`requested` needed); a provisioned UE's
    /// SDES offer is secured without it; plain, mixed and MIKEY-only offers never are; from
    /// the core only a plain offer to an e2ae contact.
    #[test]
    fn decision_by_support_and_offer() {
        let sdes = Sdp::parse(&UE_OFFER.replace("a=3ge2ae:requested\r\n", ""));
        let requested_offer = Sdp::parse(UE_OFFER);
        let plain = Sdp::parse("v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 4000 RTP/AVP 0\r\n");
        let mixed = Sdp::parse(&format!("{}m=video 4002 RTP/AVP 96\r\n", UE_OFFER.replace("a=3ge2ae:requested\r\n", "")));
        let mikey = Sdp::parse("v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 4000 RTP/SAVP 0\r\na=key-mgmt:mikey AQ==\r\n");
        let (ind, prov) = (Some(Support::Indicated), Some(Support::Provisioned));
        let orig = Some(Side::Originating);
        assert_eq!(decide(&requested_offer, false, ind, false), orig);
        assert_eq!(decide(&sdes, false, ind, false), None, "indicated UE without requested: e2e");
        assert_eq!(decide(&sdes, false, None, true), None, "not an e2ae UE");
        assert_eq!(decide(&requested_offer, false, None, false), None, "requested from a UE that is not e2ae");
        assert_eq!(decide(&sdes, false, prov, false), orig, "provisioned legacy UE");
        assert_eq!(decide(&requested_offer, false, prov, false), orig);
        for other in [&plain, &mixed, &mikey] {
            assert_eq!(decide(other, false, prov, false), None, "{other}");
        }
        assert!(sdes_offer(&sdes) && !sdes_offer(&mixed) && !sdes_offer(&mikey) && !sdes_offer(&plain));
        assert_eq!(decide(&plain, true, None, true), Some(Side::Terminating));
        assert_eq!(decide(&plain, true, prov, false), None, "the callee is not e2ae");
        assert_eq!(decide(&sdes, true, None, true), None, "SDES from the far end stays end to end");
    }

    #[test]
    fn provisioning_entries() {
        let p = Provisioned::parse(["sip:Alice@A.example;transport=udp", "<sip:*@B.Example>"]).expect("valid");
        assert!(p.contains("sip:Alice@a.example") && p.contains("sip:anyone@b.example"));
        assert!(!p.contains("sip:alice@a.example"), "the user part is case-sensitive (RFC 3261 §19.1.4)");
        assert!(!p.contains("sip:bob@a.example") && !p.contains("sip:x@sub.b.example") && !p.contains("sip:b.example"));
        assert!(!p.is_empty() && Provisioned::default().is_empty());
        for bad in ["alice@a.example", "sip:a.example", "sip:@a.example", "sip:alice@", "tel:+123", "sip:a@*"] {
            let e = Provisioned::parse([bad]).expect_err(bad);
            assert!(e.to_string().contains(bad), "{e}");
        }
    }

    #[test]
    fn ng_offer_carries_no_indication_and_the_core_profile() {
        let v = offer("c1;orig", "ft", &Sdp::parse(UE_OFFER), Side::Originating, false);
        let bytes = v.to_vec();
        let d = Value::decode(&bytes).expect("decodes");
        assert_eq!(d.get("command").and_then(Value::as_str), Some("offer"));
        assert_eq!(
            d.get("transport-protocol").and_then(Value::as_str),
            Some("RTP/AVP")
        );
        let sdp = d.get("sdp").and_then(Value::as_str).expect("sdp");
        assert!(
            !sdp.contains("3ge2ae") && sdp.contains("a=crypto:1 AES_CM_128_HMAC_SHA1_80"),
            "{sdp}"
        );
        let transport = |side, core_srtp| {
            let v = offer("c1", "ft", &Sdp::parse(UE_OFFER), side, core_srtp).to_vec();
            Value::decode(&v).expect("decodes").get("transport-protocol").and_then(Value::as_str).map(str::to_owned)
        };
        assert_eq!(transport(Side::Terminating, false).as_deref(), Some("RTP/SAVP"));
        // TS 33.328 §4.1.2.1: "or SRTP re-protected with other keys" towards the core.
        assert_eq!(transport(Side::Originating, true).as_deref(), Some("RTP/SAVP"));
        assert_eq!(transport(Side::Terminating, true).as_deref(), Some("RTP/SAVP"), "towards the UE it is SRTP either way");
    }

    #[test]
    fn towards_ue_replaces_foreign_indications_by_applied_on_secured_streams() {
        let mut sdp = Sdp::parse(
            "v=0\r\na=3ge2ae:applied\r\nm=audio 4000 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\na=3ge2ae:requested\r\nm=video 0 RTP/SAVP 96\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\n",
        );
        assert_eq!(towards_ue(&mut sdp), 1);
        let text = sdp.to_string();
        assert_eq!(text.matches("a=3ge2ae").count(), 1, "{text}");
        assert!(
            text.contains("VubGVz\r\na=3ge2ae:applied\r\nm=video"),
            "{text}"
        );
        assert_eq!(strip(&mut sdp), 1);
        assert!(!sdp.to_string().contains("3ge2ae"));
    }

    #[test]
    fn ng_replies_are_checked() {
        let ok = Value::dict([
            ("result", s("ok")),
            ("sdp", s("v=0\r\nm=audio 1 RTP/AVP 0\r\n")),
        ])
        .to_vec();
        assert_eq!(reply_sdp(&ok).expect("sdp").media_count(), 1);
        let err = Value::dict([
            ("result", s("error")),
            ("error-reason", s("unsupported key \"x\"")),
        ])
        .to_vec();
        assert!(reply_sdp(&err).is_err_and(|e| e.contains("unsupported key")));
        assert!(reply_sdp(b"d6:result2:oke").is_err_and(|e| e.contains("without sdp")));
        assert!(reply_sdp(b"garbage").is_err());
    }
}
