//! A loopback lab: one BSF and one KMS per domain, each on 127.0.0.1 with an embedded store
//! in a directory, users provisioned in the BSF (USIM keys) and in their KMS; UEs bootstrap
//! over Ub for real. Used by `mediasec demo`, `mediasec bench kms` and the whole-system
//! tests, so that all three exercise the same wiring as `mediasec kms serve`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mediasec_bsf::client::{self, Endpoint};
use mediasec_bsf::server::{Bsf, ServerConfig};
use mediasec_bsf::store::{Store as BsfStore, Subscriber};
use mediasec_gba::bsf::BsfConfig;
use mediasec_gba::kdf::{NafId, UaProtocolId};
use mediasec_gba::milenage::Milenage;
use mediasec_gba::ue::{Bootstrap, UeBootstrap};
use mediasec_gba::uicc::Uicc;
use mediasec_kms_store::RedbStore;
use mediasec_kms_zk::{ZkClient, ZkTls};
use tokio::task::JoinHandle;

use crate::bsf_zn::BsfZn;
use crate::client::KmsClient;
use crate::error::KmsError;
use crate::identity::KmsUid;
use crate::keyring::MasterKey;
use crate::kms::{KmsConfig, NoPeers, Peers, os_random};
use crate::persist::Persist;
use crate::policy::Policies;
use crate::server::{Service, serve, serve_tls};
use crate::ue::Ue;
use crate::users::User;
use crate::zk::{ZkPeers, ZkServer};

/// The BSF's realm in the lab.
pub const BSF_REALM: &str = "bsf.lab.example";

/// One KMS domain of the lab.
pub struct Domain {
    /// User domain (`a.example`).
    pub domain: String,
    /// KMS FQDN (`kms.a.example`).
    pub fqdn: String,
    /// Ua base URL.
    pub url: String,
    /// Admin bearer token.
    pub admin_token: String,
    /// The service.
    pub service: Arc<Service>,
    /// Zk listen address, when the lab runs Zk.
    pub zk_addr: Option<String>,
    /// The Zk server task (abort it to take this KMS off Zk).
    pub zk_task: Option<JoinHandle<()>>,
    store: Arc<dyn mediasec_kms_store::Store>,
    master: zeroize::Zeroizing<[u8; 32]>,
}

/// The running lab; servers stop when it is dropped.
pub struct Lab {
    /// Working directory (stores).
    pub dir: PathBuf,
    /// BSF base URL.
    pub bsf_url: String,
    /// The KMS domains.
    pub domains: Vec<Domain>,
    usim: BTreeMap<String, ([u8; 16], [u8; 16])>,
    bsf: Arc<Bsf>,
    zn_token: String,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for t in self.tasks.iter().chain(self.domains.iter().filter_map(|d| d.zk_task.as_ref())) {
            t.abort();
        }
    }
}

fn impi_of(uid: &KmsUid) -> String {
    format!("{}@ims.{}", uid.as_str().replace('@', "."), uid.domain())
}

/// The BSF subscription of lab user `uid` (GBA_ME: no GUSS).
fn lab_subscriber(uid: &KmsUid, k: &[u8; 16], opc: &[u8; 16]) -> Subscriber {
    Subscriber::with_opc(impi_of(uid), k, opc, vec![format!("sip:{uid}")])
}

fn io(e: impl std::fmt::Display) -> KmsError {
    KmsError::Config(e.to_string())
}

/// What a lab domain is made of.
pub struct DomainSpec<'a> {
    /// User domain.
    pub domain: &'a str,
    /// Policy document (TOML).
    pub policy: &'a str,
}

impl Lab {
    /// Starts the BSF with `users` (KMS UIDs) as subscribers and one KMS per domain, each
    /// provisioning the users of its domain. With `zk` (the bound of one Zk resolve) every
    /// KMS also serves Zk with a lab PKI in `dir/pki` and has every other domain as its peer.
    pub async fn start(dir: &Path, domains: &[DomainSpec<'_>], users: &[&str], zk: Option<Duration>) -> Result<Self, KmsError> {
        std::fs::create_dir_all(dir).map_err(io)?;
        let bsf_store = BsfStore::open(&dir.join("bsf.redb"), MasterKey::random()?).map_err(io)?;
        let mut usim = BTreeMap::new();
        let mut uids = Vec::new();
        for u in users {
            let uid = KmsUid::parse(u)?;
            let (k, opc): ([u8; 16], [u8; 16]) = (rand::random(), rand::random());
            bsf_store.add_subscriber(&lab_subscriber(&uid, &k, &opc)).await.map_err(io)?;
            usim.insert(uid.to_string(), (k, opc));
            uids.push(uid);
        }
        let zn_token = hex::encode(rand::random::<[u8; 16]>());
        let bsf = Bsf::new(ServerConfig { bsf: BsfConfig::new(BSF_REALM), zn_token: zn_token.clone(), admin_token: hex::encode(rand::random::<[u8; 16]>()) }, bsf_store);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(io)?;
        let bsf_url = format!("http://{}", listener.local_addr().map_err(io)?);
        let served = Arc::clone(&bsf);
        let mut tasks = vec![tokio::spawn(async move {
            let _ = mediasec_bsf::server::serve(listener, served, std::future::pending()).await;
        })];
        let pki_dir = dir.join("pki");
        let mut zk_listeners = BTreeMap::new();
        if zk.is_some() {
            let names: Vec<String> = domains.iter().map(|d| d.domain.to_owned()).collect();
            mediasec_kms_zk::pki::generate(&pki_dir, &names).map_err(io)?;
            for d in &names {
                let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(io)?;
                zk_listeners.insert(d.clone(), (l.local_addr().map_err(io)?.to_string(), l));
            }
        }
        let zk_addrs: BTreeMap<String, String> = zk_listeners.iter().map(|(d, (a, _))| (d.clone(), a.clone())).collect();
        let mut out = Vec::new();
        for spec in domains {
            let fqdn = format!("kms.{}", spec.domain);
            let store: Arc<dyn mediasec_kms_store::Store> = Arc::new(RedbStore::open(&dir.join(format!("kms-{}.redb", spec.domain)))?);
            let master = zeroize::Zeroizing::new(rand::random::<[u8; 32]>());
            let persist = Persist::new(Arc::clone(&store), MasterKey::new(&*master)?);
            persist.put_document(&Policies::from_toml(spec.policy)?, "lab", 0).await?;
            for u in uids.iter().filter(|u| u.domain() == spec.domain) {
                persist.put_user(&User { uid: u.clone(), enabled: true }, "lab", 0).await?;
            }
            let zn = Arc::new(BsfZn::new(Endpoint::http(&bsf_url).map_err(io)?, zn_token.clone(), fqdn.clone()));
            let admin_token = hex::encode(rand::random::<[u8; 16]>());
            let cfg = KmsConfig { fqdn: fqdn.clone(), domain: spec.domain.to_owned(), skew: 30 };
            let others: BTreeMap<String, String> = zk_addrs.iter().filter(|(d, _)| d.as_str() != spec.domain).map(|(d, a)| (d.clone(), a.clone())).collect();
            let (peers, tls): (Arc<dyn Peers>, _) = match zk {
                Some(timeout) => {
                    let tls = ZkTls::load(&pki_dir, spec.domain).map_err(io)?;
                    let client = ZkClient::new(&tls, others.clone(), timeout);
                    (Arc::new(ZkPeers::new(client, others.keys().cloned().collect())), Some(tls))
                }
                None => (Arc::new(NoPeers), None),
            };
            let service = Service::start(cfg, persist, zn, peers, admin_token.clone(), os_random()).await?;
            let (zk_addr, zk_task) = match (tls, zk_listeners.remove(spec.domain)) {
                (Some(tls), Some((addr, listener))) => {
                    let serve = mediasec_kms_zk::serve(listener, &tls, others.keys().cloned().collect(), Arc::new(ZkServer(Arc::clone(&service))));
                    (Some(addr), Some(tokio::spawn(async move {
                        let _ = serve.await;
                    })))
                }
                _ => (None, None),
            };
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(io)?;
            let url = format!("http://{}", listener.local_addr().map_err(io)?);
            let s = Arc::clone(&service);
            tasks.push(tokio::spawn(async move {
                let _ = serve(listener, s, std::future::pending()).await;
            }));
            out.push(Domain { domain: spec.domain.to_owned(), fqdn, url, admin_token, service, zk_addr, zk_task, store, master });
        }
        Ok(Self { dir: dir.to_owned(), bsf_url, domains: out, usim, bsf, zn_token, tasks })
    }

    /// Starts a lab without Zk.
    pub async fn start_local(dir: &Path, domains: &[DomainSpec<'_>], users: &[&str]) -> Result<Self, KmsError> {
        Self::start(dir, domains, users, None).await
    }

    /// Starts another KMS replica of `domain` on the same store (and master key), without Zk;
    /// returns its Ua URL and service. Any replica resolves any ticket of the domain.
    pub async fn replica(&mut self, domain: &str) -> Result<(String, Arc<Service>), KmsError> {
        let d = self.domain(domain)?;
        let persist = Persist::new(Arc::clone(&d.store), MasterKey::new(&*d.master)?);
        let zn = Arc::new(BsfZn::new(Endpoint::http(&self.bsf_url).map_err(io)?, self.zn_token.clone(), d.fqdn.clone()));
        let cfg = KmsConfig { fqdn: d.fqdn.clone(), domain: d.domain.clone(), skew: 30 };
        let service = Service::start(cfg, persist, zn, Arc::new(NoPeers), d.admin_token.clone(), os_random()).await?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(io)?;
        let url = format!("http://{}", listener.local_addr().map_err(io)?);
        let s = Arc::clone(&service);
        self.tasks.push(tokio::spawn(async move {
            let _ = serve(listener, s, std::future::pending()).await;
        }));
        Ok((url, service))
    }

    /// Serves `service` (a KMS of `domain`) over HTTPS too, the one transport of the LI API
    /// (docs/li.md: [`crate::server::LI_NEEDS_TLS`]), with a certificate for `kms.<domain>`
    /// from a lab CA made once in `dir/li-pki`; returns an endpoint trusting that CA. LI is
    /// still off until [`Service::enable_li`].
    pub async fn serve_li(&mut self, service: &Arc<Service>, domain: &str) -> Result<Endpoint, KmsError> {
        let pki = self.dir.join("li-pki");
        let cert_file = mediasec_kms_zk::pki::cert_file(&pki, domain);
        if !cert_file.exists() {
            mediasec_kms_zk::pki::generate(&pki, &[domain.to_owned()]).map_err(io)?;
        }
        let read = |p: &Path| std::fs::read(p).map_err(io);
        let server = mediasec_bsf::tls::server_config(&read(&cert_file)?, &read(&mediasec_kms_zk::pki::key_file(&pki, domain))?, None).map_err(io)?;
        let connector = mediasec_bsf::tls::client_connector(&read(&pki.join(mediasec_kms_zk::pki::CA_FILE))?, None).map_err(io)?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(io)?;
        let addr = listener.local_addr().map_err(io)?.to_string();
        let listener = mediasec_bsf::tls::TlsListener::new(listener, server).map_err(io)?;
        let s = Arc::clone(service);
        self.tasks.push(tokio::spawn(async move {
            let _ = serve_tls(listener, s, std::future::pending()).await;
        }));
        Ok(Endpoint::tls(addr, mediasec_kms_zk::pki::kms_name(domain).try_into().map_err(io)?, connector))
    }

    /// The BSF's Zn bearer token, for another NAF of the lab (the voicemail server).
    pub fn zn_token(&self) -> &str {
        &self.zn_token
    }

    /// Keeps a task running for the lab's life.
    pub fn adopt(&mut self, task: JoinHandle<()>) {
        self.tasks.push(task);
    }

    /// The domain record of `domain`.
    pub fn domain(&self, domain: &str) -> Result<&Domain, KmsError> {
        self.domains.iter().find(|d| d.domain == domain).ok_or_else(|| KmsError::Config(format!("no lab domain {domain}")))
    }

    /// Starts a bare HTTP echo server on the same stack (axum on tokio, loopback): `POST
    /// /keymanagement` answers 200 with the request body. The reference of `mediasec bench kms`.
    pub async fn start_echo(&mut self) -> Result<String, KmsError> {
        use axum::body::Bytes;
        use axum::http::header;
        let app = axum::Router::new().route(
            "/keymanagement",
            axum::routing::post(|body: Bytes| async move { ([(header::CONTENT_TYPE, crate::server::CONTENT_TYPE)], body) }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(io)?;
        let url = format!("http://{}", listener.local_addr().map_err(io)?);
        self.tasks.push(tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        }));
        Ok(url)
    }

    /// Like [`Lab::ue`], with GBA_U (TS 33.220 Annex G): `uid`'s BSF subscription becomes
    /// `uiccType: GBA_U` (same K and OPc), its ME runs Ub with a simulated UICC that keeps Ks,
    /// and the UICC derives Ks_ext_NAF for the KMS (G.2) — the key the KMS gets over Zn, as a
    /// NAF that is not GBA_U aware (TS 33.328 keys MIKEY with "Ks_NAF or Ks_ext_NAF").
    pub async fn ue_gba_u(&self, uid: &str) -> Result<(Ue, KmsClient), KmsError> {
        let uid = KmsUid::parse(uid)?;
        let (k, opc) = self.usim.get(uid.as_str()).ok_or_else(|| KmsError::Config(format!("{uid} is not a lab user")))?;
        let d = self.domain(uid.domain())?;
        let store = self.bsf.store();
        store.remove_subscriber(&impi_of(&uid)).await.map_err(io)?;
        let mut subscriber = lab_subscriber(&uid, k, opc);
        subscriber.guss = Some(serde_json::json!({"bsfInfo": {"uiccType": "GBA_U"}}));
        store.add_subscriber(&subscriber).await.map_err(io)?;
        let bsf = Endpoint::http(&self.bsf_url).map_err(io)?;
        let me = UeBootstrap::with_uicc(impi_of(&uid), BSF_REALM, Uicc::new(Milenage::with_opc(k, opc), 0));
        let (boot, mut uicc) = client::bootstrap_gba_u(&bsf, me).await.map_err(io)?;
        let ks_ext_naf = uicc.naf_derivation(&NafId::new(d.fqdn.clone(), UaProtocolId::IMS_MEDIA_PLANE), &impi_of(&uid)).map_err(io)?;
        let ue = Ue::new(uid, d.fqdn.clone(), boot.btid.to_string(), &ks_ext_naf.0, 30);
        Ok((ue, KmsClient::new(Endpoint::http(&d.url).map_err(io)?)))
    }

    /// Bootstraps `uid` over Ub and returns its UE (Ks_NAF for its domain's KMS) and a Ua
    /// client of that KMS.
    pub async fn ue(&self, uid: &str) -> Result<(Ue, KmsClient), KmsError> {
        let uid = KmsUid::parse(uid)?;
        let boot = self.bootstrap(&uid).await?;
        self.ue_of(&boot, uid.as_str())
    }

    /// Bootstraps lab user `uid` over Ub (GBA_ME): the B-TID and Ks, from which a UE derives
    /// the key of any NAF (its KMS, [`Lab::ue_of`]; the voicemail server, docs/voicemail.md).
    pub async fn bootstrap(&self, uid: &KmsUid) -> Result<Bootstrap, KmsError> {
        let (k, opc) = self.usim.get(uid.as_str()).ok_or_else(|| KmsError::Config(format!("{uid} is not a lab user")))?;
        let bsf = Endpoint::http(&self.bsf_url).map_err(io)?;
        let (boot, _) = client::bootstrap(&bsf, UeBootstrap::new(impi_of(uid), BSF_REALM, Milenage::with_opc(k, opc), 0)).await.map_err(io)?;
        Ok(boot)
    }

    /// The KMS side of lab user `uid` from its bootstrap `boot` (Ks_NAF for its domain's KMS)
    /// and a Ua client of that KMS.
    pub fn ue_of(&self, boot: &Bootstrap, uid: &str) -> Result<(Ue, KmsClient), KmsError> {
        let uid = KmsUid::parse(uid)?;
        let d = self.domain(uid.domain())?;
        let ks_naf = boot.ks_naf(&NafId::new(d.fqdn.clone(), UaProtocolId::IMS_MEDIA_PLANE)).map_err(io)?;
        let ue = Ue::new(uid, d.fqdn.clone(), boot.btid.to_string(), &ks_naf.0, 30);
        Ok((ue, KmsClient::new(Endpoint::http(&d.url).map_err(io)?)))
    }
}
