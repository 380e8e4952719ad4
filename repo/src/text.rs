//! Shared input handling of the line-based metadata parsers (`.SRCINFO`, `.BUILDINFO`).

use std::io::Read;

/// Reads at most `max + 1` bytes, so an oversized or endless input is refused without
/// buffering it: `Ok(Err(size))` when it is larger than `max`.
pub(crate) fn read_capped(
    reader: impl Read,
    max: usize,
) -> std::io::Result<Result<Vec<u8>, usize>> {
    let mut bytes = Vec::new();
    reader.take(max as u64 + 1).read_to_end(&mut bytes)?;
    Ok(if bytes.len() > max {
        Err(bytes.len())
    } else {
        Ok(bytes)
    })
}

/// The text, or the 1-based line of the first invalid UTF-8 byte.
pub(crate) fn utf8_or_line(bytes: &[u8]) -> Result<&str, usize> {
    std::str::from_utf8(bytes).map_err(|e| {
        1 + bytes[..e.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
    })
}
