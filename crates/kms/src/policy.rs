//! KMS policy (TS 33.328 Annex B.1 step "the KMS applies policy and may modify the TP"):
//! per-domain and per-user rules, resolved user → domain → defaults field by field, and the
//! narrowing of a requested ticket policy into the granted one.
//!
//! TOML form:
//! ```toml
//! [defaults]
//! ticket_lifetime = 3600
//! [domain."a.example"]
//! may_call = ["?@a.example", "?@b.example"]
//! reusable = true
//! [user."alice@a.example"]
//! group_tickets = true
//! end_to_middle = ["mgw@a.example"]
//! high_security = true
//! ```

use std::collections::BTreeMap;

use crate::error::KmsError;
use crate::identity::{KmsUid, Pattern};

/// One rule set; unset fields fall through to the next level.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rules {
    /// Recipients (identities or groups) this user may call with secured media.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub may_call: Option<Vec<Pattern>>,
    /// Longest ticket validity granted, in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ticket_lifetime: Option<u64>,
    /// Reusable tickets (J flag) may be granted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reusable: Option<bool>,
    /// Tickets for group identities may be granted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_tickets: Option<bool>,
    /// The user may make tickets itself (mode 3, D = 0) and the KMS resolves them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode3: Option<bool>,
    /// Key forking (I flag) may be granted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forking: Option<bool>,
    /// Identities (MGW/AS) added as allowed resolvers of every ticket (end-to-middle).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_to_middle: Option<Vec<KmsUid>>,
    /// The user may obtain ECCSI signing keys for the high-security mode (Ua `keyprovision`,
    /// docs/kms.md; ECCSI-signed MIKEY-DH calls, whose keys the KMS cannot derive — no LI
    /// key release for them). Off unless a level sets it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub high_security: Option<bool>,
    /// The user may obtain MIKEY-SAKKE keys (Ua `keyprovision` with `sakke`: its SAKKE RSK
    /// and the KMS's Z, beside the ECCSI key; docs/high-security.md §10). A rule of its own:
    /// MIKEY-SAKKE is the opposite trade-off of the high-security mode (the KMS can derive
    /// every call key — LI without a man in the middle — and there is no PFS). Off unless a
    /// level sets it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mikey_sakke: Option<bool>,
}

/// The policy document.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policies {
    /// Rules for everyone.
    #[serde(default)]
    pub defaults: Rules,
    /// Rules per domain.
    #[serde(default)]
    pub domain: BTreeMap<String, Rules>,
    /// Rules per KMS UID.
    #[serde(default)]
    pub user: BTreeMap<String, Rules>,
}

/// Default ticket lifetime when no level sets one (seconds).
pub const DEFAULT_LIFETIME: u64 = 3600;

/// The rules in force for one user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Effective {
    /// See [`Rules::may_call`] (empty: may call nobody).
    pub may_call: Vec<Pattern>,
    /// See [`Rules::ticket_lifetime`].
    pub ticket_lifetime: u64,
    /// See [`Rules::reusable`].
    pub reusable: bool,
    /// See [`Rules::group_tickets`].
    pub group_tickets: bool,
    /// See [`Rules::mode3`].
    pub mode3: bool,
    /// See [`Rules::forking`].
    pub forking: bool,
    /// See [`Rules::end_to_middle`].
    pub end_to_middle: Vec<KmsUid>,
    /// See [`Rules::high_security`].
    pub high_security: bool,
    /// See [`Rules::mikey_sakke`].
    pub mikey_sakke: bool,
}

impl Policies {
    /// Parses the TOML form.
    pub fn from_toml(s: &str) -> Result<Self, KmsError> {
        let p: Self = toml::from_str(s).map_err(|e| KmsError::Policy(e.to_string()))?;
        for u in p.user.keys() {
            KmsUid::parse(u)?;
        }
        Ok(p)
    }

    /// The TOML form.
    pub fn to_toml(&self) -> Result<String, KmsError> {
        toml::to_string(self).map_err(|e| KmsError::Policy(e.to_string()))
    }

    /// The longest ticket lifetime any rule set grants (how long a retired ring key must stay).
    pub fn max_lifetime(&self) -> u64 {
        let all = std::iter::once(&self.defaults).chain(self.domain.values()).chain(self.user.values());
        all.filter_map(|r| r.ticket_lifetime).chain([DEFAULT_LIFETIME]).max().unwrap_or(DEFAULT_LIFETIME)
    }

    /// The rules in force for `uid`: user rules, then its domain's, then the defaults.
    pub fn effective(&self, uid: &KmsUid) -> Effective {
        let levels = [self.user.get(uid.as_str()), self.domain.get(uid.domain()), Some(&self.defaults)];
        macro_rules! pick {
            ($f:ident) => {
                levels.iter().flatten().find_map(|r| r.$f.clone())
            };
        }
        Effective {
            may_call: pick!(may_call).unwrap_or_default(),
            ticket_lifetime: pick!(ticket_lifetime).unwrap_or(DEFAULT_LIFETIME),
            reusable: pick!(reusable).unwrap_or(false),
            group_tickets: pick!(group_tickets).unwrap_or(false),
            mode3: pick!(mode3).unwrap_or(false),
            forking: pick!(forking).unwrap_or(false),
            end_to_middle: pick!(end_to_middle).unwrap_or_default(),
            high_security: pick!(high_security).unwrap_or(false),
            mikey_sakke: pick!(mikey_sakke).unwrap_or(false),
        }
    }
}

/// What the requester asked for (decoded from its TP payload).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requested {
    /// Responders (identities or groups), IDRr of the TP Data.
    pub recipients: Vec<Pattern>,
    /// J flag.
    pub reusable: bool,
    /// I flag.
    pub forking: bool,
    /// Requested end of validity (Unix seconds), TRe of the TP Data.
    pub end: Option<u64>,
}

/// What the KMS grants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Granted {
    /// Authorised responders: the requested ones the policy allows, plus end-to-middle
    /// identities.
    pub recipients: Vec<Pattern>,
    /// J flag granted.
    pub reusable: bool,
    /// I flag granted.
    pub forking: bool,
    /// End of validity (Unix seconds).
    pub end: u64,
    /// Whether anything was changed from the request (the K flag, RFC 6043 §6.10).
    pub changed: bool,
    /// Human-readable list of the changes.
    pub notes: Vec<String>,
}

impl Effective {
    /// Whether the user may call `who` (an identity or a group identity): one of its
    /// `may_call` patterns covers `who`, and groups need `group_tickets`.
    pub fn may_call(&self, who: &Pattern) -> bool {
        (!who.is_group() || self.group_tickets) && self.may_call.iter().any(|p| p.covers(who))
    }

    /// Narrows `req` (TS 33.328 Annex B.1: the KMS may modify the requested policy).
    /// `forking_supported` is false while this KMS cannot fork keys on the wire.
    /// Refuses (ERR 15 "TP parameters not supported") when no requested recipient is allowed.
    pub fn grant(&self, req: &Requested, now: u64, forking_supported: bool) -> Result<Granted, KmsError> {
        let mut notes = Vec::new();
        let mut recipients = Vec::new();
        for r in &req.recipients {
            if self.may_call(r) {
                recipients.push(r.clone());
            } else if r.is_group() && !self.group_tickets {
                notes.push(format!("group {r} removed: group tickets not allowed"));
            } else {
                notes.push(format!("{r} removed: not allowed to call"));
            }
        }
        if recipients.is_empty() {
            return Err(KmsError::mikey(
                mediasec_mikey::registry::ErrorCode::INVALID_TPPAR,
                format!("policy refuses every requested responder ({})", notes.join("; ")),
            ));
        }
        for m in &self.end_to_middle {
            let p = Pattern::from(m.clone());
            if !recipients.contains(&p) {
                notes.push(format!("{m} added: end-to-middle"));
                recipients.push(p);
            }
        }
        let reusable = req.reusable && self.reusable;
        if req.reusable && !reusable {
            notes.push("reusable (J) not allowed".into());
        }
        let forking = req.forking && self.forking && forking_supported;
        if req.forking && !forking {
            notes.push(if self.forking { "forking (I) not supported by this KMS" } else { "forking (I) not allowed" }.into());
        }
        let limit = now.saturating_add(self.ticket_lifetime);
        let end = req.end.map_or(limit, |e| e.min(limit));
        if req.end.is_some_and(|e| e > limit) {
            notes.push(format!("validity shortened to {} s", self.ticket_lifetime));
        }
        Ok(Granted { recipients, reusable, forking, end, changed: !notes.is_empty(), notes })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const DOC: &str = r#"
[defaults]
ticket_lifetime = 600
[domain."a.example"]
may_call = ["?@a.example", "?@b.example"]
reusable = true
[user."alice@a.example"]
group_tickets = true
mode3 = true
end_to_middle = ["mgw@a.example"]
high_security = true
[user."mallory@a.example"]
may_call = []
"#;

    fn p(s: &str) -> Pattern {
        Pattern::parse(s).unwrap()
    }

    #[test]
    fn levels_resolve_field_by_field() {
        let pol = Policies::from_toml(DOC).unwrap();
        let alice = pol.effective(&KmsUid::parse("alice@a.example").unwrap());
        assert_eq!(alice.may_call, vec![p("?@a.example"), p("?@b.example")]);
        assert!(alice.reusable && alice.group_tickets && alice.mode3 && !alice.forking);
        assert_eq!(alice.ticket_lifetime, 600);
        let bob = pol.effective(&KmsUid::parse("bob@a.example").unwrap());
        assert!(!bob.group_tickets && !bob.mode3 && bob.end_to_middle.is_empty());
        assert!(alice.high_security && !bob.high_security, "high-security keys only where a level allows them");
        let carol = pol.effective(&KmsUid::parse("carol@c.example").unwrap());
        assert!(carol.may_call.is_empty() && !carol.reusable);
        assert!(pol.effective(&KmsUid::parse("mallory@a.example").unwrap()).may_call.is_empty());
        assert_eq!(Policies::from_toml(&pol.to_toml().unwrap()).unwrap(), pol);
        assert!(Policies::from_toml("[defaults]\nbogus = 1").is_err());
        assert!(Policies::from_toml("[user.\"no-at\"]\nmode3 = true").is_err());
    }

    #[test]
    fn grant_narrows_and_reports() {
        let pol = Policies::from_toml(DOC).unwrap();
        let alice = pol.effective(&KmsUid::parse("alice@a.example").unwrap());
        let req = Requested {
            recipients: vec![p("bob@a.example"), p("eve@c.example"), p("?.sales@b.example")],
            reusable: true,
            forking: true,
            end: Some(10_000),
        };
        let g = alice.grant(&req, 1000, false).unwrap();
        assert_eq!(g.recipients, vec![p("bob@a.example"), p("?.sales@b.example"), p("mgw@a.example")]);
        assert!(g.reusable && !g.forking && g.changed);
        assert_eq!(g.end, 1600);
        assert_eq!(g.notes.len(), 4, "{:?}", g.notes);
        let bob = pol.effective(&KmsUid::parse("bob@a.example").unwrap());
        let only_group = Requested { recipients: vec![p("?@a.example")], reusable: false, forking: false, end: None };
        assert!(matches!(bob.grant(&only_group, 0, true), Err(KmsError::Mikey { code, .. }) if code == mediasec_mikey::registry::ErrorCode::INVALID_TPPAR));
        let plain = Requested { recipients: vec![p("carol@b.example")], reusable: false, forking: false, end: Some(100) };
        let g = bob.grant(&plain, 0, true).unwrap();
        assert!(!g.changed && g.end == 100);
    }
}
