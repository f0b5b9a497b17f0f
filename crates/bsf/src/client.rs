//! The UE's HTTP driver for Ub (TS 24.109 §4) and a Zn client for NAFs, over a minimal
//! HTTP/1.1 client (one request per connection, `Connection: close`, TCP or TLS).

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use mediasec_gba::GbaError;
use mediasec_gba::ue::{Bootstrap, GbaUBootstrap, USER_AGENT, UeAnswer, UeBootstrap, UB_URI};
use mediasec_gba::uicc::Uicc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::BsfError;

/// Largest response accepted: 4 MiB, room for the largest voicemail message a server may
/// keep (`mediasec_voicemail::deposit::MAX_MESSAGE_BYTES` of packets, base64 in JSON).
const MAX_RESPONSE: usize = 4 << 20;

/// An HTTP response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Headers (names lowercased).
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// First header value by (lowercase) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).trim().to_owned()
    }
}

/// Where the BSF is: `host:port`, and TLS (server name + connector) for https URLs.
#[derive(Clone)]
pub struct Endpoint {
    authority: String,
    tls: Option<(rustls::pki_types::ServerName<'static>, tokio_rustls::TlsConnector)>,
}

impl Endpoint {
    /// From `http://host:port` or `https://host:port` (then `tls` must be given: a connector
    /// trusting the BSF's CA, see [`crate::tls::client_connector`]).
    pub fn new(url: &str, tls: Option<tokio_rustls::TlsConnector>) -> Result<Self, BsfError> {
        let (authority, _) = split_url(url)?;
        let tls = match (url.starts_with("https://"), tls) {
            (false, _) => None,
            (true, None) => return Err(BsfError::Url(url.to_owned())),
            (true, Some(c)) => {
                let host = authority.rsplit_once(':').map_or(authority.as_str(), |(h, _)| h);
                let name = rustls::pki_types::ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
                    .map_err(|_| BsfError::Url(url.to_owned()))?;
                Some((name, c))
            }
        };
        Ok(Self { authority, tls })
    }

    /// Plain HTTP endpoint.
    pub fn http(url: &str) -> Result<Self, BsfError> {
        Self::new(url, None)
    }

    /// `host:port`.
    pub fn authority(&self) -> &str {
        &self.authority
    }
}

/// `http(s)://host:port[/path]` split into (authority, path).
pub fn split_url(url: &str) -> Result<(String, String), BsfError> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| BsfError::Url(url.to_owned()))?;
    let (auth, path) = rest.find('/').map_or((rest, "/"), |i| (rest.get(..i).unwrap_or_default(), rest.get(i..).unwrap_or("/")));
    if auth.is_empty() || !auth.contains(':') {
        return Err(BsfError::Url(url.to_owned()));
    }
    Ok((auth.to_owned(), path.to_owned()))
}

/// One HTTP/1.1 request over a fresh connection.
pub async fn request(
    ep: &Endpoint,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<HttpResponse, BsfError> {
    let tcp = TcpStream::connect(&ep.authority).await?;
    match &ep.tls {
        None => exchange(tcp, &ep.authority, method, path, headers, body).await,
        Some((name, connector)) => {
            let tls = connector.connect(name.clone(), tcp).await?;
            exchange(tls, &ep.authority, method, path, headers, body).await
        }
    }
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    authority: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<HttpResponse, BsfError> {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await?;
    stream.write_all(body).await?;
    stream.flush().await?;
    let mut raw = Vec::new();
    match (&mut stream).take(MAX_RESPONSE as u64).read_to_end(&mut raw).await {
        Ok(_) => {}
        // A TLS peer closing without close_notify after a complete response is tolerated.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
        Err(e) => return Err(e.into()),
    }
    parse_response(&raw)
}

/// Parse a complete HTTP/1.1 response (the connection was closed by the server).
pub fn parse_response(raw: &[u8]) -> Result<HttpResponse, BsfError> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or(BsfError::Http { offset: raw.len(), reason: "no end of headers" })?;
    let head = std::str::from_utf8(raw.get(..end).unwrap_or_default()).map_err(|e| BsfError::Http { offset: e.valid_up_to(), reason: "headers are not UTF-8" })?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| status_line.strip_prefix("HTTP/1.0 "))
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or(BsfError::Http { offset: 0, reason: "bad status line" })?;
    let mut headers = Vec::new();
    for l in lines {
        let (n, v) = l.split_once(':').ok_or(BsfError::Http { offset: 0, reason: "header line without ':'" })?;
        headers.push((n.trim().to_ascii_lowercase(), v.trim().to_owned()));
    }
    let mut body = raw.get(end + 4..).unwrap_or_default().to_vec();
    if headers.iter().any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked")) {
        return Err(BsfError::Http { offset: end, reason: "chunked responses are not supported" });
    }
    if let Some(len) = headers.iter().find(|(n, _)| n == "content-length").and_then(|(_, v)| v.parse::<usize>().ok()) {
        if body.len() < len {
            return Err(BsfError::Http { offset: raw.len(), reason: "body shorter than Content-Length" });
        }
        body.truncate(len);
    }
    Ok(HttpResponse { status, headers, body })
}

/// Bootstrap against the BSF at `bsf` (TS 24.109 §4.2, with resynchronisation §4.5), GBA_ME.
/// Returns the bootstrap and the highest accepted SQN (for the caller's USIM state).
pub async fn bootstrap(bsf: &Endpoint, mut ue: UeBootstrap) -> Result<(Bootstrap, u64), BsfError> {
    let boot = ub_run(bsf, &mut ue, UeBootstrap::on_success).await?;
    Ok((boot, ue.sqn_ms()))
}

/// GBA_U bootstrap (TS 33.220 §5.3.2, G.1) of a run made with [`UeBootstrap::with_uicc`]:
/// the same Ub exchange; returns what the ME keeps and the UICC, which holds Ks (NAF keys:
/// [`Uicc::naf_derivation`]) and its SQN_MS.
pub async fn bootstrap_gba_u(bsf: &Endpoint, mut ue: UeBootstrap) -> Result<(GbaUBootstrap, Uicc), BsfError> {
    let boot = ub_run(bsf, &mut ue, UeBootstrap::on_success_gba_u).await?;
    let uicc = ue.into_uicc().ok_or(GbaError::WrongGbaMode { run: "GBA_ME", called: "GBA_U" })?;
    Ok((boot, uicc))
}

/// The Ub exchange of both modes; `finish` handles the 200.
async fn ub_run<T>(
    bsf: &Endpoint,
    ue: &mut UeBootstrap,
    finish: impl FnOnce(&mut UeBootstrap, &str, &[u8]) -> Result<T, GbaError>,
) -> Result<T, BsfError> {
    let mut auth = ue.initial_authorization();
    // Initial request, at most one resync, then the response: 3 rounds suffice; allow 4.
    for _ in 0..4 {
        let r = request(bsf, "GET", UB_URI, &[("Authorization", &auth), ("User-Agent", USER_AGENT)], b"").await?;
        match r.status {
            401 => {
                let www = r.header("www-authenticate").ok_or(BsfError::Http { offset: 0, reason: "401 without WWW-Authenticate" })?;
                auth = match ue.on_challenge(www, "GET", b"", &rand::random())? {
                    UeAnswer::Response(a) | UeAnswer::Resync(a) => a,
                };
            }
            200 => {
                let info = r.header("authentication-info").ok_or(BsfError::Http { offset: 0, reason: "200 without Authentication-Info" })?;
                return Ok(finish(ue, info, &r.body)?);
            }
            status => return Err(BsfError::Status { status, body: r.body_text() }),
        }
    }
    Err(BsfError::Status { status: 401, body: "bootstrapping did not converge".into() })
}

/// What Zn returns for a B-TID.
#[derive(Debug, Clone, serde::Deserialize)]
#[non_exhaustive]
pub struct ZnKey {
    /// Ks_NAF (GBA_ME) or Ks_ext_NAF (GBA_U), base64.
    pub ks_naf: String,
    /// `"GBA_U"` for a GBA_U bootstrap; absent for GBA_ME.
    #[serde(default)]
    pub gba_type: Option<String>,
    /// Ks_int_NAF, base64: only for a GBA_U bootstrap and a NAF that asked as GBA_U aware.
    #[serde(default)]
    pub ks_int_naf: Option<String>,
    /// IMPI.
    pub impi: String,
    /// IMPUs.
    pub impus: Vec<String>,
    /// Bootstrapping time (xs:dateTime).
    pub bootstrap_time: String,
    /// Key expiry (xs:dateTime).
    pub key_expiry: String,
}

impl ZnKey {
    /// Ks_NAF / Ks_ext_NAF octets.
    pub fn key(&self) -> Result<Vec<u8>, BsfError> {
        STANDARD.decode(&self.ks_naf).map_err(|_| BsfError::Http { offset: 0, reason: "ks_naf is not base64" })
    }

    /// Ks_int_NAF octets, when the BSF sent it.
    pub fn int_key(&self) -> Result<Option<Vec<u8>>, BsfError> {
        self.ks_int_naf
            .as_ref()
            .map(|k| STANDARD.decode(k).map_err(|_| BsfError::Http { offset: 0, reason: "ks_int_naf is not base64" }))
            .transpose()
    }
}

/// NAF side: fetch Ks_NAF and the user's profile by B-TID. `Ok(None)` on 404 (unknown or
/// expired B-TID: tell the UE to bootstrap again).
pub async fn zn_lookup(
    bsf: &Endpoint,
    token: &str,
    btid: &str,
    naf_fqdn: &str,
    ua_protocol_id: &str,
) -> Result<Option<ZnKey>, BsfError> {
    zn_post(bsf, token, btid, naf_fqdn, ua_protocol_id, false).await
}

/// [`zn_lookup`] by a GBA_U aware NAF (TS 33.220 §5.3.3): for a GBA_U bootstrap the answer
/// also carries Ks_int_NAF.
pub async fn zn_lookup_gba_u_aware(
    bsf: &Endpoint,
    token: &str,
    btid: &str,
    naf_fqdn: &str,
    ua_protocol_id: &str,
) -> Result<Option<ZnKey>, BsfError> {
    zn_post(bsf, token, btid, naf_fqdn, ua_protocol_id, true).await
}

/// The Zn request of both; `gba_u_aware` is sent only when true (an unaware NAF's request is
/// the one of GBA_ME, field for field).
async fn zn_post(bsf: &Endpoint, token: &str, btid: &str, naf_fqdn: &str, ua_protocol_id: &str, gba_u_aware: bool) -> Result<Option<ZnKey>, BsfError> {
    let mut body = serde_json::json!({ "btid": btid, "naf_fqdn": naf_fqdn, "ua_protocol_id": ua_protocol_id });
    if gba_u_aware && let Some(fields) = body.as_object_mut() {
        fields.insert("gba_u_aware".into(), true.into());
    }
    let body = body.to_string();
    let bearer = format!("Bearer {token}");
    let r = request(bsf, "POST", "/zn/v1/naf-keys", &[("Authorization", &bearer), ("Content-Type", "application/json")], body.as_bytes()).await?;
    match r.status {
        200 => serde_json::from_slice(&r.body).map(Some).map_err(|_| BsfError::Http { offset: 0, reason: "Zn body is not the documented JSON" }),
        404 => Ok(None),
        status => Err(BsfError::Status { status, body: r.body_text() }),
    }
}

/// Current Unix time in seconds.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A response above the former 1 MiB limit (a voicemail message at its default caps is
    /// about 1.4 MB of JSON) is read whole.
    #[tokio::test]
    async fn responses_up_to_the_limit_are_read_whole() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let body = vec![b'x'; 3 << 20];
        let sent = body.clone();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", sent.len());
            s.write_all(head.as_bytes()).await.expect("head");
            s.write_all(&sent).await.expect("body");
        });
        let ep = Endpoint::http(&format!("http://{addr}")).expect("endpoint");
        let r = request(&ep, "GET", "/", &[], &[]).await.expect("response");
        assert_eq!((r.status, r.body.len()), (200, body.len()));
        server.await.expect("server");
    }
}
