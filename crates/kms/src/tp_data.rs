//! TP Data of a TICKET / TP payload (RFC 6043 §6.10): `[IDRkms], [IDRi], [TRs], [TRe], ...,
//! (IDRr)`, plus, in a UE-made (mode 3) ticket, an IDRpsk naming the creator's bootstrap
//! (B-TID) whose Ks_NAF is the ticket-protection key *(ours, docs/kms.md)*.

use mediasec_mikey::Payload;
use mediasec_mikey::payload::{Idr, Timestamp, TimestampRole, decode_first_payload_chain, encode_first_payload_chain};
use mediasec_mikey::registry::{ErrorCode, IdRole, IdType, TsRole, TsType};

use crate::error::KmsError;
use crate::identity::{KmsUid, Pattern};

/// Seconds between the NTP era 0 epoch (1900) and the Unix epoch.
pub const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

/// NTP-UTC timestamp (RFC 3830 §6.6) of a Unix time with sub-second precision.
pub fn ntp(now: std::time::Duration) -> Timestamp {
    let secs = now.as_secs().saturating_add(NTP_UNIX_OFFSET);
    let frac = (u64::from(now.subsec_nanos()) << 32) / 1_000_000_000;
    Timestamp { ts_type: TsType::NTP_UTC, value: secs << 32 | frac }
}

/// Unix seconds of an NTP-UTC / NTP-UTC-32 timestamp.
pub fn unix_of(t: &Timestamp) -> Option<u64> {
    let secs = match t.ts_type {
        TsType::NTP_UTC => t.value >> 32,
        TsType::NTP_UTC_32 => t.value,
        _ => return None,
    };
    secs.checked_sub(NTP_UNIX_OFFSET)
}

/// The decoded TP Data.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TpData {
    /// IDRkms: the KMS that can resolve (issuer, or the creator's KMS for mode 3).
    pub kms: Option<String>,
    /// IDRi: the requester / creator.
    pub initiator: Option<KmsUid>,
    /// IDRpsk: the creator's B-TID (mode 3 only).
    pub psk: Option<String>,
    /// TRs (Unix seconds).
    pub start: Option<u64>,
    /// TRe (Unix seconds).
    pub end: Option<u64>,
    /// IDRr: authorised responders or groups.
    pub recipients: Vec<Pattern>,
}

fn text(i: &Idr, what: &str) -> Result<String, KmsError> {
    String::from_utf8(i.data.clone()).map_err(|_| KmsError::mikey(ErrorCode::INVALID_ID, format!("{what} is not UTF-8")))
}

fn tr(role: TsRole, unix: u64) -> Payload {
    Payload::Tr(TimestampRole { role, ts: ntp(std::time::Duration::from_secs(unix)) })
}

fn idr(role: IdRole, id_type: IdType, s: &str) -> Payload {
    Payload::Idr(Idr { role, id_type, data: s.as_bytes().to_vec() })
}

impl TpData {
    /// Decodes TP Data; `ERR 15` when malformed.
    pub fn decode(data: &[u8]) -> Result<Self, KmsError> {
        let bad = |e: mediasec_mikey::Error| KmsError::mikey(ErrorCode::INVALID_TPPAR, format!("TP Data: {e}"));
        let mut out = Self::default();
        for p in decode_first_payload_chain(data, 0).map_err(bad)? {
            match p {
                Payload::Idr(i) if i.role == IdRole::KMS => out.kms = Some(text(&i, "IDRkms")?),
                Payload::Idr(i) if i.role == IdRole::INITIATOR => out.initiator = Some(KmsUid::parse(&text(&i, "IDRi")?)?),
                Payload::Idr(i) if i.role == IdRole::PSK => out.psk = Some(text(&i, "IDRpsk")?),
                Payload::Idr(i) if i.role == IdRole::RESPONDER => out.recipients.push(Pattern::parse(&text(&i, "IDRr")?)?),
                Payload::Tr(t) if t.role == TsRole::START_OF_VALIDITY => out.start = unix_of(&t.ts),
                Payload::Tr(t) if t.role == TsRole::END_OF_VALIDITY => {
                    out.end = Some(unix_of(&t.ts).ok_or_else(|| KmsError::mikey(ErrorCode::INVALID_TPPAR, "TRe is not an NTP-UTC time"))?);
                }
                _ => {}
            }
        }
        if out.recipients.is_empty() {
            return Err(KmsError::mikey(ErrorCode::INVALID_TPPAR, "TP Data names no responder (IDRr)"));
        }
        Ok(out)
    }

    /// Encodes in the RFC 6043 §6.10 order (IDRpsk after IDRi).
    pub fn encode(&self) -> Result<Vec<u8>, KmsError> {
        let mut p = Vec::new();
        if let Some(k) = &self.kms {
            p.push(idr(IdRole::KMS, IdType::NAI, k));
        }
        if let Some(i) = &self.initiator {
            p.push(idr(IdRole::INITIATOR, IdType::NAI, i.as_str()));
        }
        if let Some(b) = &self.psk {
            p.push(idr(IdRole::PSK, IdType::BYTE_STRING, b));
        }
        if let Some(s) = self.start {
            p.push(tr(TsRole::START_OF_VALIDITY, s));
        }
        if let Some(e) = self.end {
            p.push(tr(TsRole::END_OF_VALIDITY, e));
        }
        for r in &self.recipients {
            p.push(idr(IdRole::RESPONDER, IdType::NAI, r.as_str()));
        }
        Ok(encode_first_payload_chain(&p)?)
    }

    /// The first of `uids` that an authorised responder identity or group matches.
    pub fn authorised<'a>(&self, uids: &'a [KmsUid]) -> Option<&'a KmsUid> {
        uids.iter().find(|u| self.recipients.iter().any(|p| p.matches(u)))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_times() {
        let d = TpData {
            kms: Some("kms.a.example".into()),
            initiator: Some(KmsUid::parse("alice@a.example").unwrap()),
            psk: Some("btid@bsf".into()),
            start: Some(1_700_000_000),
            end: Some(1_700_003_600),
            recipients: vec![Pattern::parse("?@b.example").unwrap(), Pattern::parse("bob@a.example").unwrap()],
        };
        assert_eq!(TpData::decode(&d.encode().unwrap()).unwrap(), d);
        let bob = KmsUid::parse("bob@a.example").unwrap();
        let x = KmsUid::parse("x@c.example").unwrap();
        assert_eq!(d.authorised(&[x.clone(), bob.clone()]), Some(&bob));
        assert_eq!(d.authorised(&[x]), None);
        let none = TpData { recipients: vec![], ..d };
        assert!(TpData::decode(&none.encode().unwrap()).is_err());
        let t = ntp(std::time::Duration::new(1_700_000_000, 500_000_000));
        assert_eq!(unix_of(&t), Some(1_700_000_000));
        assert_eq!(t.value & 0xffff_ffff, 1 << 31);
    }
}
