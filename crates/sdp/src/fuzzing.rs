//! Entry points shared by the fuzz targets (`fuzz/fuzz_targets/sdp_*.rs`) and the corpus
//! replay test, so CI exercises the same code without cargo-fuzz. Each panics only when an
//! invariant is broken (that is the finding).

use crate::{CryptoAttribute, E2aeIndication, KeyMgmt, Sdp};

/// `a=crypto` value: parse; on success the canonical form must parse to the same value and
/// be a fixed point of format(parse(..)).
pub fn crypto(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(attr) = CryptoAttribute::parse(text) {
        let canonical = attr.to_string();
        let again = CryptoAttribute::parse(&canonical).expect("canonical a=crypto must parse");
        assert_eq!(again, attr, "canonical a=crypto parses to another value");
        assert_eq!(again.to_string(), canonical, "canonical form is not a fixed point");
    }
}

/// Whole body: parse -> serialise is the identity; every attribute parser of this crate
/// is run on the matching lines and must not panic; key-mgmt and 3ge2ae round-trip.
pub fn body(data: &[u8]) {
    let Ok(sdp) = Sdp::parse_bytes(data) else { return };
    assert_eq!(sdp.to_string().as_bytes(), data, "SDP body round trip lost bytes");
    for level in sdp.levels() {
        for (_, attr) in sdp.attributes(level).unwrap_or_default() {
            let value = attr.value.unwrap_or_default();
            match attr.name {
                CryptoAttribute::NAME => crypto(value.as_bytes()),
                KeyMgmt::NAME => {
                    if let Ok(k) = KeyMgmt::parse(value) {
                        assert_eq!(KeyMgmt::parse(&k.to_string()).ok(), Some(k));
                    }
                }
                crate::e2ae::NAME => {
                    if let Ok(e) = E2aeIndication::parse(value) {
                        assert_eq!(E2aeIndication::parse(&e.to_string()).ok(), Some(e));
                    }
                }
                _ => {}
            }
        }
    }
}
