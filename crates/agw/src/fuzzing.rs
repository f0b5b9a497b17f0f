//! Entry points shared by the cargo-fuzz targets (`fuzz/fuzz_targets/agw_*.rs`) and the
//! corpus replay test, so CI exercises the same code without cargo-fuzz.

use std::time::{Duration, Instant};

use crate::bencode::Value;
use crate::control::{Config, Controller, PortSource};
use crate::Error;

struct Ports(u16);

impl PortSource for Ports {
    fn allocate_pair(&mut self) -> Result<u16, Error> {
        self.0 = self.0.checked_add(2).ok_or(Error::NoPorts)?;
        Ok(self.0)
    }
    fn release_pair(&mut self, _: u16) {}
}

/// An ng datagram: bencode decode/re-encode identity, then the whole command path
/// (offer/answer SDP rewriting included) on a fresh controller; a second datagram built
/// from the same bytes with the command replaced by `answer` follows an `offer`.
pub fn ng(data: &[u8]) {
    if let Ok((_, message)) = crate::ng::split_cookie(data)
        && let Ok(v) = Value::decode(message)
    {
        // Encoding sorts dictionary keys (input order is kept on decode), so the encoding
        // of a decoded value is a fixed point.
        let again = v.to_vec();
        assert_eq!(Value::decode(&again).map(|w| w.to_vec()).ok(), Some(again.clone()), "bencode encoding must be a fixed point");
    }
    let mut ctl = Controller::new(Config {
        address: [192, 0, 2, 1].into(),
        sdes: mediasec_sdp::SdesPolicy::default(),
        timeout: Duration::from_secs(60),
    });
    let mut ports = Ports(30000);
    let mut keys = |b: &mut [u8]| b.fill(0x42);
    let now = Instant::now();
    let _ = ctl.handle_datagram(data, now, &mut ports, &mut keys, &[]);
    if let Ok((_, message)) = crate::ng::split_cookie(data)
        && let Ok(Value::Dict(mut entries)) = Value::decode(message)
    {
        for (k, v) in &mut entries {
            if k.as_ref() == b"command" {
                *v = Value::str("answer");
            }
        }
        let second = crate::ng::frame(b"second", &Value::Dict(entries));
        let _ = ctl.handle_datagram(&second, now, &mut ports, &mut keys, &[]);
    }
    let _ = ctl.expire(now + Duration::from_secs(61), &mut ports);
}
