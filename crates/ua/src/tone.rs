//! The test signal: a sine tone at 8 kHz in G.711 µ-law (ITU-T G.711, RTP payload type 0,
//! RFC 3551 §4.5.14), 20 ms (160 samples) per packet, and its detector (Goertzel filter), so a
//! receiver checks media *by content*: a relay that forwards garbage or the wrong stream fails.

use std::f64::consts::PI;

/// Samples per 20 ms packet at 8 kHz.
pub const SAMPLES_PER_PACKET: usize = 160;
const RATE: f64 = 8000.0;

/// µ-law encoding of one 16-bit linear sample (G.711 §A, the classic segment encoder).
pub fn ulaw_encode(sample: i16) -> u8 {
    const BIAS: i32 = 0x84;
    const CLIP: i32 = 32_635;
    let mut s = i32::from(sample);
    let sign = if s < 0 { 0x80 } else { 0 };
    if s < 0 {
        s = -s;
    }
    s = s.min(CLIP) + BIAS;
    let mut exponent = 7u8;
    let mut mask = 0x4000;
    while exponent > 0 && s & mask == 0 {
        exponent -= 1;
        mask >>= 1;
    }
    let mantissa = ((s >> (i32::from(exponent) + 3)) & 0x0F) as u8;
    !(sign | (exponent << 4) | mantissa)
}

/// µ-law decoding to a 16-bit linear sample.
pub fn ulaw_decode(byte: u8) -> i16 {
    let u = !byte;
    let sign = u & 0x80;
    let exponent = (u >> 4) & 0x07;
    let mantissa = i32::from(u & 0x0F);
    let magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84;
    let value = if sign != 0 { -magnitude } else { magnitude };
    i16::try_from(value).unwrap_or(if sign != 0 { i16::MIN } else { i16::MAX })
}

/// The µ-law payload of packet number `index` of a continuous tone at `hz`.
pub fn packet(hz: f64, index: u64) -> [u8; SAMPLES_PER_PACKET] {
    let mut out = [0u8; SAMPLES_PER_PACKET];
    for (i, byte) in out.iter_mut().enumerate() {
        let n = index as f64 * SAMPLES_PER_PACKET as f64 + i as f64;
        let v = (2.0 * PI * hz * n / RATE).sin() * 12_000.0;
        *byte = ulaw_encode(v as i16);
    }
    out
}

/// Share of the signal power of a µ-law payload that lies at `hz` (see [`linear_share`]).
pub fn tone_share(payload: &[u8], hz: f64) -> f64 {
    let samples: Vec<i16> = payload.iter().map(|&b| ulaw_decode(b)).collect();
    linear_share(&samples, hz)
}

/// Share of the power of 8-kHz linear samples that lies at `hz` (Goertzel, normalised by the
/// total power): close to 1 for a clean tone at `hz`, near 0 for another tone or noise.
pub fn linear_share(samples: &[i16], hz: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let n = samples.len() as f64;
    let coeff = 2.0 * (2.0 * PI * hz / RATE).cos();
    let (mut s1, mut s2) = (0.0, 0.0);
    for &x in samples {
        let s0 = f64::from(x) + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
    let energy: f64 = samples.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
    if energy == 0.0 { 0.0 } else { (2.0 * power / n / energy).min(1.0) }
}

/// Whether a payload carries the tone at `hz` (more than half of its power there).
pub fn is_tone(payload: &[u8], hz: f64) -> bool {
    tone_share(payload, hz) > 0.5
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulaw_round_trips_within_a_step_and_matches_g711_codes() {
        // G.711 code points: 0 → 0xFF, the most positive → 0x80, the most negative → 0x00.
        assert_eq!(ulaw_encode(0), 0xFF);
        assert_eq!(ulaw_encode(i16::MAX), 0x80);
        assert_eq!(ulaw_encode(i16::MIN), 0x00);
        for s in (-32_000i16..32_000).step_by(97) {
            let back = ulaw_decode(ulaw_encode(s));
            let step = (i32::from(s).abs() / 16).max(8);
            assert!((i32::from(back) - i32::from(s)).abs() <= step, "{s} -> {back}");
        }
    }

    #[test]
    fn the_detector_tells_tones_apart() {
        for index in [0, 1, 77] {
            let a = packet(1000.0, index);
            assert!(is_tone(&a, 1000.0));
            assert!(!is_tone(&a, 1500.0));
            assert!(is_tone(&packet(1500.0, index), 1500.0));
        }
        assert!(!is_tone(&[0xFF; SAMPLES_PER_PACKET], 1000.0));
    }
}
