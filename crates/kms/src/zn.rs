//! Zn as the KMS sees it (TS 33.328 Annex B: the KMS, a NAF, fetches the NAF key and the
//! user's IMPUs from the BSF by B-TID), behind a trait so that the KMS core owns no socket;
//! and a cache that keeps each answer until the key expires.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use zeroize::Zeroizing;

use crate::error::KmsError;
use crate::identity::KmsUid;

/// What Zn returns for a B-TID.
pub struct NafKey {
    /// Ks_NAF (or Ks_ext_NAF) for this KMS.
    pub ks_naf: Zeroizing<Vec<u8>>,
    /// The user's public identities (IMPUs).
    pub impus: Vec<String>,
    /// Key expiry, Unix seconds.
    pub expiry: u64,
}

impl NafKey {
    /// A NAF key (copied into zeroized storage).
    pub fn new(ks_naf: &[u8], impus: Vec<String>, expiry: u64) -> Self {
        Self { ks_naf: Zeroizing::new(ks_naf.to_vec()), impus, expiry }
    }

    /// The KMS UIDs of the IMPUs (IMPUs that are no SIP/TEL URI are skipped).
    pub fn uids(&self, home_domain: &str) -> Vec<KmsUid> {
        self.impus.iter().filter_map(|u| KmsUid::from_uri(u, home_domain).ok()).collect()
    }
}

impl core::fmt::Debug for NafKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("NafKey").field("impus", &self.impus).field("expiry", &self.expiry).finish_non_exhaustive()
    }
}

/// Future of a Zn look-up: `Ok(None)` when the B-TID is unknown or expired.
pub type ZnFuture<'a> = Pin<Box<dyn Future<Output = Result<Option<Arc<NafKey>>, KmsError>> + Send + 'a>>;

/// A source of NAF keys.
pub trait Zn: Send + Sync {
    /// Looks up `btid` at Unix time `now`.
    fn naf_key<'a>(&'a self, btid: &'a str, now: u64) -> ZnFuture<'a>;
}

/// Caches Zn answers until their key expiry (entries are dropped when expired).
pub struct ZnCache {
    inner: Arc<dyn Zn>,
    cache: Mutex<Cache>,
}

/// Entries and the size at which expired ones are next swept (amortised O(1) per insert).
#[derive(Default)]
struct Cache {
    entries: HashMap<String, Arc<NafKey>>,
    sweep_at: usize,
}

impl ZnCache {
    /// Wraps a Zn source.
    pub fn new(inner: Arc<dyn Zn>) -> Self {
        Self { inner, cache: Mutex::new(Cache::default()) }
    }

    fn cached(&self, btid: &str, now: u64) -> Option<Arc<NafKey>> {
        let mut c = self.cache.lock().ok()?;
        match c.entries.get(btid) {
            Some(k) if now < k.expiry => Some(Arc::clone(k)),
            Some(_) => {
                c.entries.remove(btid);
                None
            }
            None => None,
        }
    }
}

impl Zn for ZnCache {
    fn naf_key<'a>(&'a self, btid: &'a str, now: u64) -> ZnFuture<'a> {
        Box::pin(async move {
            if let Some(k) = self.cached(btid, now) {
                return Ok(Some(k));
            }
            let got = self.inner.naf_key(btid, now).await?;
            if let (Some(k), Ok(mut c)) = (&got, self.cache.lock())
                && now < k.expiry
            {
                if c.entries.len() >= c.sweep_at.max(4096) {
                    c.entries.retain(|_, v| now < v.expiry);
                    c.sweep_at = c.entries.len() * 2;
                }
                c.entries.insert(btid.to_owned(), Arc::clone(k));
            }
            Ok(got)
        })
    }
}

/// A fixed table of NAF keys by B-TID (tests, benchmarks, lab setups without a BSF).
#[derive(Default)]
pub struct StaticZn(HashMap<String, Arc<NafKey>>);

impl StaticZn {
    /// Adds the NAF key of `btid`.
    pub fn insert(&mut self, btid: impl Into<String>, key: NafKey) {
        self.0.insert(btid.into(), Arc::new(key));
    }
}

impl Zn for StaticZn {
    fn naf_key<'a>(&'a self, btid: &'a str, now: u64) -> ZnFuture<'a> {
        let got = self.0.get(btid).filter(|k| now < k.expiry).cloned();
        Box::pin(async move { Ok(got) })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Counting(AtomicUsize);
    impl Zn for Counting {
        fn naf_key<'a>(&'a self, btid: &'a str, _now: u64) -> ZnFuture<'a> {
            self.0.fetch_add(1, Ordering::SeqCst);
            let known = btid == "b1";
            Box::pin(async move {
                Ok(known.then(|| Arc::new(NafKey { ks_naf: Zeroizing::new(vec![1; 32]), impus: vec!["sip:a@x.example".into(), "tel:+1".into()], expiry: 100 })))
            })
        }
    }

    #[tokio::test]
    async fn cached_until_expiry() {
        let inner = Arc::new(Counting(AtomicUsize::new(0)));
        let c = ZnCache::new(inner.clone());
        assert!(c.naf_key("b1", 10).await.unwrap().is_some());
        assert!(c.naf_key("b1", 99).await.unwrap().is_some());
        assert_eq!(inner.0.load(Ordering::SeqCst), 1);
        assert!(c.naf_key("b1", 100).await.unwrap().is_some(), "expired: asked again (the source decides)");
        assert_eq!(inner.0.load(Ordering::SeqCst), 2);
        assert!(c.naf_key("b2", 10).await.unwrap().is_none());
        assert!(c.naf_key("b2", 10).await.unwrap().is_none());
        assert_eq!(inner.0.load(Ordering::SeqCst), 4, "misses are not cached");
        let k = c.naf_key("b1", 1).await.unwrap().unwrap();
        assert_eq!(k.uids("h.example").iter().map(KmsUid::as_str).collect::<Vec<_>>(), ["a@x.example", "+1@h.example"]);
    }
}
