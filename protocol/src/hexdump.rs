//! An annotated hexdump of CBOR bytes (one item per line, indented by nesting,
//! a comment saying what each header means). Used by the wire-format tests and
//! the README's examples; safe on untrusted input (malformed bytes end the
//! dump with a `malformed` line, nesting is capped).
//!
//! ```
//! let dump = pacmesh_protocol::hexdump::annotate(&[0x82, 0x01, 0x61, b'a']);
//! assert_eq!(dump, "\
//! 82                                              # array(2)
//!   01                                            #   unsigned(1)
//!   61 61                                         #   text(1) \"a\"
//! ");
//! ```
//!
//! [`parse_hex`] reads such a dump back into bytes (everything after `#` on a
//! line is a comment).

use std::fmt::Write;

const COMMENT_COLUMN: usize = 48;
const MAX_DEPTH: usize = 64;
const BYTES_PER_LINE: usize = 16;

/// Annotates every CBOR item in `bytes`.
pub fn annotate(bytes: &[u8]) -> String {
    let mut out = String::new();
    let mut pos = 0;
    while pos < bytes.len() {
        if let Err(msg) = item(bytes, &mut pos, 0, &mut out) {
            let rest = &bytes[pos.min(bytes.len())..];
            let shown = &rest[..rest.len().min(BYTES_PER_LINE)];
            line(
                &mut out,
                0,
                &hex::encode(shown),
                &format!("malformed: {msg}"),
            );
            break;
        }
    }
    out
}

/// Reads an annotated dump (or plain hex with whitespace) back into bytes.
/// Text after `#` on each line is ignored.
pub fn parse_hex(dump: &str) -> Result<Vec<u8>, hex::FromHexError> {
    let digits: String = dump
        .lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .flat_map(|l| l.chars().filter(|c| !c.is_whitespace()))
        .collect();
    hex::decode(digits)
}

fn line(out: &mut String, depth: usize, hex: &str, comment: &str) {
    let mut s = String::new();
    for _ in 0..depth {
        s.push_str("  ");
    }
    s.push_str(hex);
    if comment.is_empty() {
        out.push_str(&s);
        out.push('\n');
        return;
    }
    if s.len() < COMMENT_COLUMN {
        s.extend(std::iter::repeat_n(' ', COMMENT_COLUMN - s.len()));
    } else {
        s.push(' ');
    }
    let _ = write!(out, "{s}# ");
    for _ in 0..depth {
        out.push_str("  ");
    }
    out.push_str(comment);
    out.push('\n');
}

struct Head {
    major: u8,
    info: u8,
    arg: u64,
    len: usize,
}

fn head(bytes: &[u8], pos: usize) -> Result<Head, &'static str> {
    let b = *bytes.get(pos).ok_or("truncated")?;
    let major = b >> 5;
    let info = b & 0x1f;
    let (arg, extra) = match info {
        0..=23 => (u64::from(info), 0),
        24..=27 => {
            let n = 1usize << (info - 24);
            let s = bytes.get(pos + 1..pos + 1 + n).ok_or("truncated")?;
            (s.iter().fold(0u64, |a, &x| (a << 8) | u64::from(x)), n)
        }
        31 => (0, 0),
        _ => return Err("reserved additional information"),
    };
    Ok(Head {
        major,
        info,
        arg,
        len: 1 + extra,
    })
}

fn item(bytes: &[u8], pos: &mut usize, depth: usize, out: &mut String) -> Result<(), &'static str> {
    if depth > MAX_DEPTH {
        return Err("nested too deep to annotate");
    }
    let h = head(bytes, *pos)?;
    let head_hex = hex::encode(&bytes[*pos..*pos + h.len]);
    let indefinite = h.info == 31;
    *pos += h.len;
    match h.major {
        0 => line(out, depth, &head_hex, &format!("unsigned({})", h.arg)),
        1 => line(
            out,
            depth,
            &head_hex,
            &format!("negative(-{})", u128::from(h.arg) + 1),
        ),
        2 | 3 if indefinite => {
            let what = if h.major == 2 { "bytes" } else { "text" };
            line(out, depth, &head_hex, &format!("{what}(indefinite)"));
            loop {
                if bytes.get(*pos) == Some(&0xff) {
                    line(out, depth + 1, "ff", "break");
                    *pos += 1;
                    break;
                }
                item(bytes, pos, depth + 1, out)?;
            }
        }
        2 => {
            let n = usize::try_from(h.arg).map_err(|_| "length too large")?;
            let end = pos.checked_add(n).ok_or("length too large")?;
            let data = bytes.get(*pos..end).ok_or("truncated byte string")?;
            line(out, depth, &head_hex, &format!("bytes({n})"));
            for chunk in data.chunks(BYTES_PER_LINE) {
                line(out, depth + 1, &hex::encode(chunk), "");
            }
            *pos = end;
        }
        3 => {
            let n = usize::try_from(h.arg).map_err(|_| "length too large")?;
            let end = pos.checked_add(n).ok_or("length too large")?;
            let data = bytes.get(*pos..end).ok_or("truncated text string")?;
            let text = String::from_utf8_lossy(data);
            let shown: String = text.chars().take(48).collect();
            let ell = if text.chars().count() > 48 { "…" } else { "" };
            let comment = format!("text({n}) {shown:?}{ell}");
            if n <= 16 {
                line(
                    out,
                    depth,
                    &format!("{head_hex} {}", hex::encode(data)),
                    &comment,
                );
            } else {
                line(out, depth, &head_hex, &comment);
                for chunk in data.chunks(BYTES_PER_LINE) {
                    line(out, depth + 1, &hex::encode(chunk), "");
                }
            }
            *pos = end;
        }
        4 | 5 => {
            let what = if h.major == 4 { "array" } else { "map" };
            let per = if h.major == 4 { 1 } else { 2 };
            if indefinite {
                line(out, depth, &head_hex, &format!("{what}(indefinite)"));
                loop {
                    if bytes.get(*pos) == Some(&0xff) {
                        line(out, depth + 1, "ff", "break");
                        *pos += 1;
                        break;
                    }
                    for _ in 0..per {
                        item(bytes, pos, depth + 1, out)?;
                    }
                }
            } else {
                line(out, depth, &head_hex, &format!("{what}({})", h.arg));
                for _ in 0..h.arg {
                    for _ in 0..per {
                        item(bytes, pos, depth + 1, out)?;
                    }
                }
            }
        }
        6 => {
            line(out, depth, &head_hex, &format!("tag({})", h.arg));
            item(bytes, pos, depth + 1, out)?;
        }
        _ => {
            let c = match (h.info, h.arg) {
                (20, _) => "false".to_string(),
                (21, _) => "true".to_string(),
                (22, _) => "null".to_string(),
                (23, _) => "undefined".to_string(),
                (25..=27, _) => "float".to_string(),
                (31, _) => return Err("unexpected break"),
                (_, v) => format!("simple({v})"),
            };
            line(out, depth, &head_hex, &c);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_parse_hex() {
        let bytes = crate::encode(&("hello", vec![1u64, 1000, u64::MAX], Some(-5i64))).unwrap();
        let dump = annotate(&bytes);
        assert_eq!(parse_hex(&dump).unwrap(), bytes);
        assert!(!dump.contains("malformed"), "{dump}");
    }

    #[test]
    fn survives_garbage() {
        for input in [
            &[0x5b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff][..],
            &[0x9f; 200],
            &[0x1c],
            &[0xff],
        ] {
            let dump = annotate(input);
            assert!(dump.contains("malformed"), "{dump}");
        }
    }
}
