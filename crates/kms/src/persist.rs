//! The KMS's durable state in a [`Store`] (embedded redb or PostgreSQL): users (JSON per
//! KMS UID), policies (one TOML rule set per row: `defaults`, `domain:<d>`, `user:<uid>`),
//! the key ring (AES-256-GCM at rest under the master key, see [`crate::keyring`]) and the
//! audit log. Nothing per ticket is stored.

use std::sync::Arc;

use mediasec_kms_store::{AuditEntry, Store, Table};

use crate::error::KmsError;
use crate::identity::KmsUid;
use crate::keyring::{KeyRing, MasterKey, MasterKeys, TPK_LEN};
use crate::policy::{Policies, Rules};
use crate::users::{User, Users};

/// The store plus the master keys: the one values are sealed with, and any previous ones
/// they are also opened with (during a master-key rotation, [`crate::rekey`]).
pub struct Persist {
    store: Arc<dyn Store>,
    keys: MasterKeys,
}

/// Which rule set a policy row holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Everyone.
    Defaults,
    /// One domain.
    Domain(String),
    /// One KMS UID.
    User(KmsUid),
}

impl Scope {
    fn row(&self) -> String {
        match self {
            Self::Defaults => "defaults".into(),
            Self::Domain(d) => format!("domain:{}", d.to_ascii_lowercase()),
            Self::User(u) => format!("user:{u}"),
        }
    }
}

impl Persist {
    /// Wraps a store; `keys` is a [`MasterKey`] alone, or [`MasterKeys`] with previous keys.
    pub fn new(store: Arc<dyn Store>, keys: impl Into<MasterKeys>) -> Self {
        Self { store, keys: keys.into() }
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The key values are sealed with.
    pub(crate) fn master(&self) -> &MasterKey {
        self.keys.sealing()
    }

    /// The master keys (the sealing one, and those values are also opened with).
    pub fn keys(&self) -> &MasterKeys {
        &self.keys
    }

    /// Encrypts a value for row `row` of `table` under the sealing key (AES-256-GCM, a fresh
    /// random nonce, AAD = `table:row`, see [`MasterKey::seal`]): for rows whose plain content
    /// must not be readable by whoever reads the store (LI warrants).
    pub(crate) fn seal(&self, table: Table, row: &str, plain: &[u8]) -> Result<Vec<u8>, KmsError> {
        Ok(self.keys.seal(table, row, plain)?)
    }

    /// Decrypts what [`Persist::seal`] stored in row `row` of `table`, under any of the keys
    /// ([`MasterKeys::open`]).
    pub(crate) fn open(&self, table: Table, row: &str, sealed: &[u8]) -> Result<zeroize::Zeroizing<Vec<u8>>, KmsError> {
        Ok(self.keys.open(table, row, sealed)?)
    }

    async fn audit(&self, now_ms: u64, actor: &str, action: &str, detail: String) -> Result<(), KmsError> {
        self.store.append_audit(&AuditEntry { at_unix_ms: now_ms, actor: actor.into(), action: action.into(), detail }).await?;
        Ok(())
    }

    /// Every policy row assembled into one document.
    pub async fn policies(&self) -> Result<Policies, KmsError> {
        let mut p = Policies::default();
        for (row, value) in self.store.list(Table::Policies).await? {
            let text = String::from_utf8(value).map_err(|_| KmsError::Policy(format!("row {row} is not UTF-8")))?;
            let rules: Rules = toml::from_str(&text).map_err(|e| KmsError::Policy(format!("row {row}: {e}")))?;
            if row == "defaults" {
                p.defaults = rules;
            } else if let Some(d) = row.strip_prefix("domain:") {
                p.domain.insert(d.to_owned(), rules);
            } else if let Some(u) = row.strip_prefix("user:") {
                p.user.insert(u.to_owned(), rules);
            } else {
                return Err(KmsError::Policy(format!("unknown policy row {row}")));
            }
        }
        Ok(p)
    }

    /// Sets (or with `None` removes) one rule set.
    pub async fn put_rules(&self, scope: &Scope, rules: Option<&Rules>, actor: &str, now_ms: u64) -> Result<bool, KmsError> {
        let row = scope.row();
        let existed = match rules {
            Some(r) => {
                let text = toml::to_string(r).map_err(|e| KmsError::Policy(e.to_string()))?;
                self.store.put(Table::Policies, &row, text.as_bytes()).await?;
                true
            }
            None => self.store.delete(Table::Policies, &row).await?,
        };
        self.audit(now_ms, actor, if rules.is_some() { "policy.put" } else { "policy.delete" }, row).await?;
        Ok(existed)
    }

    /// Replaces every rule set by those of `doc`.
    pub async fn put_document(&self, doc: &Policies, actor: &str, now_ms: u64) -> Result<(), KmsError> {
        let mut keep = vec![Scope::Defaults.row()];
        self.put_rules(&Scope::Defaults, Some(&doc.defaults), actor, now_ms).await?;
        for (d, r) in &doc.domain {
            let s = Scope::Domain(d.clone());
            keep.push(s.row());
            self.put_rules(&s, Some(r), actor, now_ms).await?;
        }
        for (u, r) in &doc.user {
            let s = Scope::User(KmsUid::parse(u)?);
            keep.push(s.row());
            self.put_rules(&s, Some(r), actor, now_ms).await?;
        }
        for (row, _) in self.store.list(Table::Policies).await? {
            if !keep.contains(&row) {
                self.store.delete(Table::Policies, &row).await?;
            }
        }
        Ok(())
    }

    /// The provisioned users.
    pub async fn users(&self) -> Result<Users, KmsError> {
        let rows = self.store.list(Table::Users).await?;
        let mut out = Vec::with_capacity(rows.len());
        for (row, v) in rows {
            out.push(serde_json::from_slice::<User>(&v).map_err(|e| KmsError::Config(format!("user row {row}: {e}")))?);
        }
        Ok(Users::new(out))
    }

    /// Adds or replaces a user.
    pub async fn put_user(&self, user: &User, actor: &str, now_ms: u64) -> Result<(), KmsError> {
        let v = serde_json::to_vec(user).map_err(|e| KmsError::Config(e.to_string()))?;
        self.store.put(Table::Users, user.uid.as_str(), &v).await?;
        self.audit(now_ms, actor, "user.put", format!("{} enabled={}", user.uid, user.enabled)).await
    }

    /// Removes a user.
    pub async fn delete_user(&self, uid: &KmsUid, actor: &str, now_ms: u64) -> Result<bool, KmsError> {
        let existed = self.store.delete(Table::Users, uid.as_str()).await?;
        self.audit(now_ms, actor, "user.delete", uid.to_string()).await?;
        Ok(existed)
    }

    /// The key ring, decrypted.
    pub async fn ring(&self) -> Result<KeyRing, KmsError> {
        let mut ring = KeyRing::default();
        for (row, sealed) in self.store.list(Table::KeyRing).await? {
            ring.insert(KeyRing::open(&self.keys, &row, &sealed)?);
        }
        Ok(ring)
    }

    /// Rotates: a new newest key, the previous one retired; both committed before return.
    /// `random` supplies the new key and the two GCM nonces.
    pub async fn rotate(&self, now: u64, random: &(dyn Fn(&mut [u8]) + Sync), actor: &str) -> Result<KeyRing, KmsError> {
        let mut ring = self.ring().await?;
        let mut key = zeroize::Zeroizing::new([0u8; TPK_LEN]);
        random(&mut *key);
        let (new, retired) = ring.rotate(now, *key)?;
        for k in retired.iter().chain([&new]) {
            let mut nonce = [0u8; 12];
            random(&mut nonce);
            self.store.put(Table::KeyRing, &KeyRing::row(k.id), &KeyRing::seal(self.keys.sealing(), k, nonce)?).await?;
        }
        self.audit(now.saturating_mul(1000), actor, "key.rotate", format!("new key id {}", new.id)).await?;
        Ok(ring)
    }

    /// Deletes keys whose tickets have all expired; returns the remaining ring.
    pub async fn prune(&self, now: u64, max_lifetime: u64, actor: &str) -> Result<KeyRing, KmsError> {
        let mut ring = self.ring().await?;
        for id in ring.prune(now, max_lifetime) {
            self.store.delete(Table::KeyRing, &KeyRing::row(id)).await?;
            self.audit(now.saturating_mul(1000), actor, "key.prune", format!("key id {id}")).await?;
        }
        Ok(ring)
    }

    /// The ring, with a first key made if it is empty. The first key's row is created only if
    /// absent ([`mediasec_kms_store::Store::put_if_absent`]): replicas starting together on an
    /// empty shared store each draw a first key with the same id, exactly one is stored, and
    /// every replica returns the ring holding that one (only the winner audits `key.rotate`).
    pub async fn ring_or_init(&self, now: u64, random: &(dyn Fn(&mut [u8]) + Sync)) -> Result<KeyRing, KmsError> {
        let mut ring = self.ring().await?;
        if ring.newest().is_some() {
            return Ok(ring);
        }
        let mut key = zeroize::Zeroizing::new([0u8; TPK_LEN]);
        random(&mut *key);
        let (first, _) = ring.rotate(now, *key)?;
        let mut nonce = [0u8; 12];
        random(&mut nonce);
        let sealed = KeyRing::seal(self.keys.sealing(), &first, nonce)?;
        if self.store.put_if_absent(Table::KeyRing, &KeyRing::row(first.id), &sealed).await? != sealed {
            return self.ring().await;
        }
        self.audit(now.saturating_mul(1000), "kms", "key.rotate", format!("new key id {}", first.id)).await?;
        Ok(ring)
    }

    /// Up to `limit` audit entries after sequence number `after`.
    pub async fn audit_log(&self, after: u64, limit: usize) -> Result<Vec<(u64, AuditEntry)>, KmsError> {
        Ok(self.store.audit(after, limit).await?)
    }
}
