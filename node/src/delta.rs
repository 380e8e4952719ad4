//! Delta transfer of signed events over HTTP sync: a `publish` event carries the whole
//! manifest (every package with three hashes: ≈ 180 bytes per package), and consecutive
//! manifests differ in a few entries. A follower that holds an earlier `publish` names it
//! (`x-pacmesh-delta-bases: ID,ID…` on `POST /api/v1/sync`); the node then sends such events
//! as a byte delta of the **payload** against that base plus the signer and signature. The
//! follower rebuilds the payload bytes and the envelope, and the rebuilt event goes through
//! the ordinary ingest (signature over those bytes, policy, chain): a wrong delta or base gives
//! bytes that do not verify, never an accepted event.
//!
//! # Delta encoding
//!
//! A sequence of records, each a tag byte and LEB128 numbers:
//! `0x00 len bytes…` (insert `len` bytes), `0x01 offset len` (copy `len` bytes of the base
//! from `offset`).
//!
//! # Response framing (`content-type: application/x-pacmesh-sync-delta`)
//!
//! ```text
//! "PMSD" ‖ version u8 (1) ‖ complete u8 ‖ count u32 BE ‖ count × event
//! event: 0x00 ‖ len u32 BE ‖ Signed<Event> envelope bytes              (sent whole)
//!      | 0x01 ‖ base id [32] ‖ signer [32] ‖ sig [64] ‖ len u32 BE ‖ delta   (payload delta)
//! ```
//!
//! Limits: the body is at most `max_sync_bytes`, at most `max_sync_events` events, and a
//! rebuilt payload at most `max_manifest_bytes` (checked while applying, before allocation
//! grows past it).

use std::collections::HashMap;

use pacmesh_protocol::{Event, Hash, Limits, PublicKey, SYNC_VERSION, Signed, SyncResponse};

/// Content type of a delta sync response.
pub const CONTENT_TYPE: &str = "application/x-pacmesh-sync-delta";
/// Request header naming the bases the follower holds.
pub const BASES_HEADER: &str = "x-pacmesh-delta-bases";
/// Most bases a request may name.
pub const MAX_BASES: usize = 64;

const W: usize = 16;
const STEP: usize = 8;

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(b: &[u8], at: &mut usize) -> Result<u64, String> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*at).ok_or("delta truncated")?;
        *at += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("delta: varint too long".into())
}

fn literal(out: &mut Vec<u8>, bytes: &[u8]) {
    if !bytes.is_empty() {
        out.push(0);
        put_varint(out, bytes.len() as u64);
        out.extend_from_slice(bytes);
    }
}

/// A delta that turns `base` into `target`.
pub fn diff(base: &[u8], target: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    if base.len() < W || target.len() < W {
        literal(&mut out, target);
        return out;
    }
    let mut index: HashMap<&[u8], usize> = HashMap::with_capacity(base.len() / STEP + 1);
    for p in (0..=base.len() - W).step_by(STEP) {
        index.entry(&base[p..p + W]).or_insert(p);
    }
    let (mut i, mut lit) = (0usize, 0usize);
    while i + W <= target.len() {
        let Some(&p) = index.get(&target[i..i + W]) else {
            i += 1;
            continue;
        };
        let mut len = W;
        while p + len < base.len() && i + len < target.len() && base[p + len] == target[i + len] {
            len += 1;
        }
        let mut back = 0;
        while back < i - lit && back < p && base[p - 1 - back] == target[i - 1 - back] {
            back += 1;
        }
        literal(&mut out, &target[lit..i - back]);
        out.push(1);
        put_varint(&mut out, (p - back) as u64);
        put_varint(&mut out, (len + back) as u64);
        i += len;
        lit = i;
    }
    literal(&mut out, &target[lit..]);
    out
}

/// Applies `delta` to `base`; fails on malformed input or a result longer than `max`.
pub fn apply(base: &[u8], delta: &[u8], max: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < delta.len() {
        let tag = delta[at];
        at += 1;
        match tag {
            0 => {
                let n = get_varint(delta, &mut at)? as usize;
                let end = at.checked_add(n).filter(|&e| e <= delta.len());
                let end = end.ok_or("delta: insert past the end")?;
                if out.len() + n > max {
                    return Err(format!("delta result over {max} bytes"));
                }
                out.extend_from_slice(&delta[at..end]);
                at = end;
            }
            1 => {
                let off = get_varint(delta, &mut at)? as usize;
                let n = get_varint(delta, &mut at)? as usize;
                let end = off.checked_add(n).filter(|&e| e <= base.len());
                let end = end.ok_or("delta: copy past the end of the base")?;
                if out.len() + n > max {
                    return Err(format!("delta result over {max} bytes"));
                }
                out.extend_from_slice(&base[off..end]);
            }
            t => return Err(format!("delta: unknown record {t}")),
        }
    }
    Ok(out)
}

/// Parses the bases header: up to [`MAX_BASES`] comma-separated event ids.
pub fn parse_bases(v: &str) -> Vec<Hash> {
    v.split(',')
        .filter_map(|s| s.trim().parse().ok())
        .take(MAX_BASES)
        .collect()
}

/// Encodes `resp` for a follower that holds the events `bases` (whose stored bytes `load`
/// returns): events over 4 KiB whose delta against a base is under half their size go as
/// deltas.
pub fn encode_response(
    resp: &SyncResponse,
    bases: &[Hash],
    load: impl Fn(&Hash) -> Option<Vec<u8>>,
    limits: &Limits,
) -> Vec<u8> {
    let base_payloads: Vec<(Hash, Vec<u8>)> = bases
        .iter()
        .filter_map(|b| {
            let bytes = load(b)?;
            let s = Signed::<Event>::from_bytes(&bytes, limits).ok()?;
            Some((*b, s.payload))
        })
        .collect();
    let mut out = b"PMSD".to_vec();
    out.push(1);
    out.push(resp.complete as u8);
    out.extend_from_slice(&(resp.events.len() as u32).to_be_bytes());
    for e in &resp.events {
        let best = (e.payload.len() > 4096)
            .then(|| {
                base_payloads
                    .iter()
                    .map(|(id, p)| (id, diff(p, &e.payload)))
                    .min_by_key(|(_, d)| d.len())
            })
            .flatten()
            .filter(|(_, d)| d.len() < e.payload.len() / 2);
        match best {
            Some((id, d)) => {
                out.push(1);
                out.extend_from_slice(id.as_bytes());
                out.extend_from_slice(e.signer.as_bytes());
                out.extend_from_slice(&e.sig);
                out.extend_from_slice(&(d.len() as u32).to_be_bytes());
                out.extend_from_slice(&d);
            }
            None => {
                let b = e.to_bytes();
                out.push(0);
                out.extend_from_slice(&(b.len() as u32).to_be_bytes());
                out.extend_from_slice(&b);
            }
        }
    }
    out
}

/// Decodes a delta response, rebuilding every event from its base (`load` returns the stored
/// bytes of an event id). The events are not verified here: ingest them as usual.
pub fn decode_response(
    body: &[u8],
    load: impl Fn(&Hash) -> Option<Vec<u8>>,
    limits: &Limits,
) -> Result<SyncResponse, String> {
    if body.len() > limits.max_sync_bytes {
        return Err(format!(
            "sync response over {} bytes",
            limits.max_sync_bytes
        ));
    }
    let take = |at: &mut usize, n: usize| -> Result<&[u8], String> {
        let end = at
            .checked_add(n)
            .filter(|&e| e <= body.len())
            .ok_or("sync delta truncated")?;
        let s = &body[*at..end];
        *at = end;
        Ok(s)
    };
    let mut at = 0;
    if take(&mut at, 4)? != b"PMSD" {
        return Err("not a delta sync response".into());
    }
    let version = take(&mut at, 1)?[0];
    if version != 1 {
        return Err(format!(
            "delta sync version {version} is newer than this node understands"
        ));
    }
    let complete = take(&mut at, 1)?[0] == 1;
    let count = u32::from_be_bytes(take(&mut at, 4)?.try_into().expect("4")) as usize;
    if count > limits.max_sync_events {
        return Err(format!(
            "{count} events, more than {}",
            limits.max_sync_events
        ));
    }
    let max_event = limits.max_event_bytes.max(limits.max_manifest_bytes);
    let mut events = Vec::with_capacity(count);
    for _ in 0..count {
        let kind = take(&mut at, 1)?[0];
        match kind {
            0 => {
                let n = u32::from_be_bytes(take(&mut at, 4)?.try_into().expect("4")) as usize;
                let b = take(&mut at, n)?;
                events.push(Signed::<Event>::from_bytes(b, limits).map_err(|e| e.to_string())?);
            }
            1 => {
                let base: Hash = Hash::from_bytes(take(&mut at, 32)?.try_into().expect("32"));
                let signer = PublicKey::from_slice(take(&mut at, 32)?)
                    .map_err(|e| format!("delta signer: {e}"))?;
                let sig: [u8; 64] = take(&mut at, 64)?.try_into().expect("64");
                let n = u32::from_be_bytes(take(&mut at, 4)?.try_into().expect("4")) as usize;
                let d = take(&mut at, n)?;
                let base_bytes =
                    load(&base).ok_or_else(|| format!("delta base {base} is not here"))?;
                let base_payload = Signed::<Event>::from_bytes(&base_bytes, limits)
                    .map_err(|e| e.to_string())?
                    .payload;
                let payload = apply(&base_payload, d, max_event)?;
                events.push(Signed::from_parts(payload, signer, sig));
            }
            k => return Err(format!("delta sync: unknown event kind {k}")),
        }
    }
    if at != body.len() {
        return Err("delta sync: trailing bytes".into());
    }
    Ok(SyncResponse {
        version: SYNC_VERSION,
        events,
        complete,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn diff_apply_round_trip() {
        let base = noise(100_000, 1);
        let mut target = base.clone();
        target[10..20].copy_from_slice(b"0123456789");
        target.splice(50_000..50_100, noise(300, 2));
        target.truncate(90_000);
        target.extend_from_slice(b"tail");
        let d = diff(&base, &target);
        assert!(d.len() < 1000, "{}", d.len());
        assert_eq!(apply(&base, &d, 1 << 20).unwrap(), target);
        for (b, t) in [
            (&b""[..], &b"abc"[..]),
            (b"abc", b""),
            (b"short", b"shorter still"),
        ] {
            assert_eq!(apply(b, &diff(b, t), 1 << 20).unwrap(), t);
        }
        let other = noise(5000, 9);
        assert_eq!(apply(&base, &diff(&base, &other), 1 << 20).unwrap(), other);
    }

    #[test]
    fn hostile_deltas_fail_cleanly() {
        let base = b"0123456789abcdef0123456789abcdef";
        assert!(apply(base, &[1, 30, 10], 100).is_err(), "copy past the end");
        assert!(
            apply(base, &[0, 5, b'a'], 100).is_err(),
            "insert past the end"
        );
        assert!(apply(base, &[7], 100).is_err());
        assert!(
            apply(
                base,
                &[
                    0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1
                ],
                100
            )
            .is_err()
        );
        // A small delta cannot blow up past the limit.
        let mut d = Vec::new();
        for _ in 0..1000 {
            d.extend_from_slice(&[1, 0, 32]);
        }
        assert!(apply(base, &d, 1000).unwrap_err().contains("over"));
        assert!(
            decode_response(
                b"PMSD\x01\x01\xff\xff\xff\xff",
                |_| None,
                &Limits::default()
            )
            .is_err()
        );
        assert!(decode_response(b"XXXX", |_| None, &Limits::default()).is_err());
    }
}
