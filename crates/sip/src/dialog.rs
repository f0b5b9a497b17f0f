//! Dialogs (RFC 3261 §12), sans-IO.
//!
//! A dialog is created by a 2xx or a tag-carrying 1xx to an INVITE (§12.1): the UAC takes the
//! route set from the response's `Record-Route` in reverse order (§12.1.2), the UAS from the
//! request's `Record-Route` in order (§12.1.1); the remote target is the peer's `Contact`.
//! In-dialog requests (§12.2.1.1) carry the local and remote `From`/`To` values with their
//! tags, the dialog's `Call-ID`, a local CSeq that increases by one per request, and the route
//! set as `Route` headers (loose routing: the Request-URI is the remote target). A received
//! in-dialog request must have a higher CSeq than the last one (§12.2.2), and a re-INVITE
//! with a `Contact` refreshes the remote target.

use std::net::SocketAddr;

use bytes::Bytes;
use sipx_sip::headers::{Contact, RecordRoute};
use sipx_sip::{Header, HeaderName, Host, Method, Request, RequestBuilder, Response, TypedHeader as _, Uri};

use crate::Error;

/// What identifies a dialog at one end (§12): Call-ID, local tag, remote tag.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DialogId {
    /// `Call-ID`.
    pub call_id: Bytes,
    /// Our tag.
    pub local_tag: Bytes,
    /// The peer's tag.
    pub remote_tag: Bytes,
}

impl DialogId {
    /// The id of the dialog a request belongs to, seen by its receiver: local tag from `To`,
    /// remote tag from `From`. `None` when a tag or `Call-ID` is missing (not in a dialog).
    pub fn of_received_request(request: &Request) -> Option<Self> {
        Some(Self {
            call_id: call_id(&request.headers)?,
            local_tag: tag(&request.headers, &HeaderName::To)?,
            remote_tag: tag(&request.headers, &HeaderName::From)?,
        })
    }

    /// The id of the dialog a response belongs to, seen by the UAC: local tag from `From`,
    /// remote tag from `To`.
    pub fn of_received_response(response: &Response) -> Option<Self> {
        Some(Self {
            call_id: call_id(&response.headers)?,
            local_tag: tag(&response.headers, &HeaderName::From)?,
            remote_tag: tag(&response.headers, &HeaderName::To)?,
        })
    }
}

/// The state of one dialog at one end.
#[derive(Clone, Debug)]
pub struct Dialog {
    id: DialogId,
    /// Our `From` (UAC) / `To` (UAS) value, with our tag, as written in our requests' `From`.
    local: Bytes,
    /// The peer's value, with its tag, as written in our requests' `To`.
    remote: Bytes,
    local_seq: u32,
    remote_seq: Option<u32>,
    remote_target: Uri,
    /// Route set entries as written (`<sip:...;lr>`), with their URIs.
    route_set: Vec<(Bytes, Uri)>,
}

impl Dialog {
    /// The UAC side, from the INVITE we sent and a 2xx or 1xx-with-tag response (§12.1.2).
    pub fn uac(request: &Request, response: &Response) -> Result<Self, Error> {
        let id = DialogId::of_received_response(response).ok_or(Error::NotADialog("response without tags or Call-ID"))?;
        let mut route_set = route_set(&response.headers)?;
        route_set.reverse();
        Ok(Self {
            id,
            local: header(&request.headers, &HeaderName::From)?,
            remote: header(&response.headers, &HeaderName::To)?,
            local_seq: cseq(&request.headers)?,
            remote_seq: None,
            remote_target: contact(&response.headers)?,
            route_set,
        })
    }

    /// The UAS side, from the INVITE received and the local tag we put in our `To` (§12.1.1).
    pub fn uas(request: &Request, local_tag: &str) -> Result<Self, Error> {
        let remote_tag = tag(&request.headers, &HeaderName::From).ok_or(Error::NotADialog("request without From tag"))?;
        let call_id = call_id(&request.headers).ok_or(Error::NotADialog("request without Call-ID"))?;
        let to = header(&request.headers, &HeaderName::To)?;
        let mut local = to.to_vec();
        local.extend_from_slice(b";tag=");
        local.extend_from_slice(local_tag.as_bytes());
        Ok(Self {
            id: DialogId { call_id, local_tag: Bytes::copy_from_slice(local_tag.as_bytes()), remote_tag },
            local: Bytes::from(local),
            remote: header(&request.headers, &HeaderName::From)?,
            local_seq: 0,
            remote_seq: Some(cseq(&request.headers)?),
            remote_target: contact(&request.headers)?,
            route_set: route_set(&request.headers)?,
        })
    }

    /// The dialog id.
    pub fn id(&self) -> &DialogId {
        &self.id
    }

    /// Our `To` header value for responses in this dialog (UAS: the request's `To` + our tag).
    pub fn local_header(&self) -> &Bytes {
        &self.local
    }

    /// The peer's current target (its `Contact`).
    pub fn remote_target(&self) -> &Uri {
        &self.remote_target
    }

    /// The route set, first hop first.
    pub fn route_set(&self) -> impl Iterator<Item = &Uri> {
        self.route_set.iter().map(|(_, uri)| uri)
    }

    /// The CSeq number of our last request.
    pub fn local_seq(&self) -> u32 {
        self.local_seq
    }

    /// Where an in-dialog request goes first: the first route, else the remote target (§12.2.1.1
    /// with §8.1.2). `None` when that URI has a host name: [`Self::next_hop_uri`] is then the
    /// URI to locate by DNS ([`crate::locate`], `Command::RequestUri`).
    pub fn next_hop(&self) -> Option<SocketAddr> {
        socket_addr(self.next_hop_uri())
    }

    /// The URI of [`Self::next_hop`]: the first route, else the remote target.
    pub fn next_hop_uri(&self) -> &Uri {
        self.route_set.first().map_or(&self.remote_target, |(_, uri)| uri)
    }

    /// A new in-dialog request (§12.2.1.1): the next local CSeq, `Route` from the route set,
    /// the Request-URI = remote target. `via` is the whole `Via` value this hop writes
    /// (`SIP/2.0/UDP host:port;branch=z9hG4bK...;rport`). ACK is built with [`Self::ack`].
    pub fn request(&mut self, method: Method, via: &str) -> Result<Request, Error> {
        self.local_seq = self.local_seq.checked_add(1).ok_or(Error::NotADialog("CSeq exhausted"))?;
        self.build(method, via, self.local_seq)
    }

    /// The ACK for a 2xx to the INVITE with CSeq number `invite_seq` (§13.2.2.4): same CSeq
    /// number, method ACK, a new branch.
    pub fn ack(&self, invite_seq: u32, via: &str) -> Result<Request, Error> {
        self.build(Method::Ack, via, invite_seq)
    }

    fn build(&self, method: Method, via: &str, seq: u32) -> Result<Request, Error> {
        let mut b = RequestBuilder::new(method.clone(), self.remote_target.clone())
            .header(HeaderName::Via, via.to_owned())?
            .max_forwards(70);
        for (raw, _) in &self.route_set {
            b = b.header(HeaderName::Route, raw.clone())?;
        }
        Ok(b.header(HeaderName::From, self.local.clone())?
            .header(HeaderName::To, self.remote.clone())?
            .header(HeaderName::CallId, self.id.call_id.clone())?
            .cseq(seq, &method)?
            .build())
    }

    /// Checks and records a request received in this dialog (§12.2.2): the CSeq must be higher
    /// than the last one (ACK and CANCEL reuse the INVITE's number and are exempt); a request
    /// with a `Contact` (a re-INVITE) refreshes the remote target.
    pub fn receive_request(&mut self, request: &Request) -> Result<(), Error> {
        let seq = cseq(&request.headers)?;
        if matches!(request.method, Method::Ack | Method::Cancel) {
            return Ok(());
        }
        if let Some(last) = self.remote_seq
            && seq <= last
        {
            return Err(Error::CSeqOrder { last, got: seq });
        }
        self.remote_seq = Some(seq);
        if request.method == Method::Invite && request.headers.get(&HeaderName::Contact).is_some() {
            self.remote_target = contact(&request.headers)?;
        }
        Ok(())
    }

    /// UAC: confirms the early dialog a tagged 1xx created (§12.1.2, e.g. a reliable 18x,
    /// RFC 3262) with the 2xx of the same dialog: the route set is recomputed from the 2xx's
    /// `Record-Route` and its `Contact` becomes the remote target (§12.2.1.2), while the local
    /// CSeq goes on from the requests sent in the early dialog (PRACK, UPDATE).
    pub fn confirm(&mut self, response: &Response) -> Result<(), Error> {
        let mut route_set = route_set(&response.headers)?;
        route_set.reverse();
        self.route_set = route_set;
        self.remote_target = contact(&response.headers)?;
        Ok(())
    }

    /// Records a 2xx to our re-INVITE: its `Contact` refreshes the remote target (§12.2.1.2).
    pub fn receive_target_refresh(&mut self, response: &Response) -> Result<(), Error> {
        if response.headers.get(&HeaderName::Contact).is_some() {
            self.remote_target = contact(&response.headers)?;
        }
        Ok(())
    }
}

/// The address a URI names: an IP-literal host and the port (when absent, 5061 for a `sips:`
/// or `;transport=tls` URI, else 5060). `None` for a host name: names are located by DNS at the
/// endpoint ([`crate::locate`], `Command::RequestUri`), never here.
pub fn socket_addr(uri: &Uri) -> Option<SocketAddr> {
    match uri.host()? {
        // Without a port, the transport's default (RFC 3261 §19.1.2): 5061 for TLS.
        Host::Ip(ip) => Some(SocketAddr::new(*ip, uri.port().unwrap_or_else(|| uri.selected_transport().map_or(5060, sipx_sip::UriTransport::default_port)))),
        Host::Name(_) => None,
    }
}

fn call_id(headers: &sipx_sip::Headers) -> Option<Bytes> {
    headers.get(&HeaderName::CallId).map(|h| Bytes::copy_from_slice(trim(&h.value())))
}

fn tag(headers: &sipx_sip::Headers, name: &HeaderName) -> Option<Bytes> {
    let value = headers.get(name)?.value();
    let address = sipx_sip::Address::parse(&value, "From/To").ok()?;
    address.tag().map(Bytes::copy_from_slice)
}

fn header(headers: &sipx_sip::Headers, name: &HeaderName) -> Result<Bytes, Error> {
    headers
        .get(name)
        .map(|h| Bytes::copy_from_slice(trim(&h.value())))
        .ok_or(Error::MissingHeader(String::from_utf8_lossy(name.canonical()).into_owned()))
}

fn cseq(headers: &sipx_sip::Headers) -> Result<u32, Error> {
    match headers.typed::<sipx_sip::CSeq>() {
        Some(Ok(c)) => Ok(c.sequence),
        Some(Err(e)) => Err(Error::BadHeader(e.to_string())),
        None => Err(Error::MissingHeader("CSeq".into())),
    }
}

fn contact(headers: &sipx_sip::Headers) -> Result<Uri, Error> {
    match headers.typed::<Contact>() {
        Some(Ok(c)) => Ok(c.0.uri),
        Some(Err(e)) => Err(Error::BadHeader(e.to_string())),
        None => Err(Error::MissingHeader("Contact".into())),
    }
}

/// Every `Record-Route` entry in order, each kept as written and with its URI.
fn route_set(headers: &sipx_sip::Headers) -> Result<Vec<(Bytes, Uri)>, Error> {
    let mut out = Vec::new();
    for h in headers.get_all(&HeaderName::RecordRoute) {
        let value = h.value();
        for part in split_addresses(&value) {
            let rr = RecordRoute::decode(part).map_err(|e| Error::BadHeader(e.to_string()))?;
            out.push((Bytes::copy_from_slice(trim(part)), rr.0.uri));
        }
    }
    Ok(out)
}

/// Splits a comma-separated address list (`Route`, `Record-Route`, `Path`, RFC 3261 §7.3.1)
/// at commas outside `<...>` and quotes, keeping each entry as written.
pub fn split_addresses(value: &[u8]) -> Vec<&[u8]> {
    let mut parts = Vec::new();
    let (mut depth, mut quoted, mut start) = (0u32, false, 0usize);
    for (i, b) in value.iter().enumerate() {
        match b {
            b'"' => quoted = !quoted,
            b'<' if !quoted => depth += 1,
            b'>' if !quoted => depth = depth.saturating_sub(1),
            b',' if !quoted && depth == 0 => {
                parts.extend(value.get(start..i));
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.extend(value.get(start..));
    parts.into_iter().filter(|p| !trim(p).is_empty()).collect()
}

fn trim(b: &[u8]) -> &[u8] {
    b.trim_ascii()
}

/// The CANCEL of `request` (RFC 3261 §9.1): its Request-URI, Call-ID, To, From and Route
/// header fields, a single Via equal to its top Via (so that it matches the request's
/// transaction at the next hop), and its CSeq number with the method CANCEL. `None` when the
/// request lacks one of them.
pub fn cancel_for(request: &Request) -> Option<Request> {
    let cseq = request.headers.typed::<sipx_sip::CSeq>()?.ok()?;
    let mut b = RequestBuilder::new(Method::Cancel, request.uri.clone());
    b = b.header(HeaderName::Via, request.headers.get(&HeaderName::Via)?.value().into_owned()).ok()?.max_forwards(70);
    for route in request.headers.get_all(&HeaderName::Route) {
        b = b.header(HeaderName::Route, route.value().into_owned()).ok()?;
    }
    for name in [HeaderName::From, HeaderName::To, HeaderName::CallId] {
        b = b.header(name.clone(), request.headers.get(&name)?.value().into_owned()).ok()?;
    }
    Some(b.cseq(cseq.sequence, &Method::Cancel).ok()?.build())
}

/// Writes a header with the given name onto a request (helper for callers adding `Contact`,
/// `Content-Type` and the like after [`Dialog::request`]).
pub fn push_header(request: &mut Request, name: HeaderName, value: &str) -> Result<(), Error> {
    request.headers.push(Header::build(name, value.to_owned())?);
    Ok(())
}
