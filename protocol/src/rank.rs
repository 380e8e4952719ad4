//! Rendezvous (highest-random-weight) ranking of builders for a queue entry.
//!
//! Every node must compute the same order from the same inputs, so the
//! function is part of the protocol: changing it is a protocol change (it is
//! pinned by a test). For entry `e` and builder key `k`:
//!
//! ```text
//! score(e, k) = BLAKE3("pacmesh/v1/rank" ‖ 0x00 ‖ e (32 bytes) ‖ k (32 bytes))
//! ```
//!
//! Builders are ordered by ascending score (as big-endian bytes). The first
//! eligible live builder claims at once; the one at position `i` waits
//! `i × step` and claims only if no valid claim has appeared; two claims that
//! crossed are settled in favour of the better-ranked builder. Adding or
//! removing one builder moves only the entries whose first choice it was.

use crate::{Hash, PublicKey};

const RANK_CONTEXT: &[u8] = b"pacmesh/v1/rank\0";

/// The rendezvous score of `builder` for `entry` (lower ranks first).
pub fn rendezvous_score(entry: &Hash, builder: &PublicKey) -> Hash {
    let mut h = blake3::Hasher::new();
    h.update(RANK_CONTEXT);
    h.update(entry.as_bytes());
    h.update(builder.as_bytes());
    Hash::from(h.finalize())
}

/// Orders `builders` for `entry`, best first; duplicates are removed.
/// The caller passes only eligible, live builders (capabilities matched,
/// announcement not expired, role allowed by the policy).
pub fn rendezvous_rank(
    entry: &Hash,
    builders: impl IntoIterator<Item = PublicKey>,
) -> Vec<PublicKey> {
    let mut scored: Vec<(Hash, PublicKey)> = builders
        .into_iter()
        .map(|k| (rendezvous_score(entry, &k), k))
        .collect();
    scored.sort();
    scored.dedup_by(|a, b| a.1 == b.1);
    scored.into_iter().map(|(_, k)| k).collect()
}

/// Of two builders that both claimed `entry`, the one whose claim stands.
pub fn claim_winner(entry: &Hash, a: &PublicKey, b: &PublicKey) -> PublicKey {
    if rendezvous_score(entry, a) <= rendezvous_score(entry, b) {
        *a
    } else {
        *b
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SigningKey;

    fn key(n: u8) -> PublicKey {
        PublicKey::from(&SigningKey::from_bytes(&[n; 32]))
    }

    #[test]
    fn ranking_is_pinned() {
        // If this changes, nodes of different versions disagree on who builds:
        // that needs a protocol version bump.
        let entry = Hash::new(b"enqueue event");
        let ranked = rendezvous_rank(&entry, (1..=6).map(key));
        let order: Vec<String> = ranked.iter().map(|k| k.fmt_short()).collect();
        assert_eq!(order.len(), 6);
        let score = rendezvous_score(&entry, &key(1));
        assert_eq!(score.to_hex(), PINNED_SCORE);
        assert_eq!(order.join(" "), PINNED_ORDER);
    }

    const PINNED_SCORE: &str = "879f5bd1abf37d5fc97752507245a048e963aa38e9fa88aaf970be86f5d7a4de";
    const PINNED_ORDER: &str = "8a875fff1e ca93ac1705 6e7a1cdd29 ed4928c628 8a88e3dd74 8139770ea8";

    #[test]
    fn order_independent_and_deduplicated() {
        let entry = Hash::new(b"x");
        let a = rendezvous_rank(&entry, [key(1), key(2), key(3), key(2)]);
        let b = rendezvous_rank(&entry, [key(3), key(2), key(1)]);
        assert_eq!(a, b);
        assert_eq!(a.len(), 3);
        assert_eq!(claim_winner(&entry, &a[2], &a[0]), a[0]);
        assert_eq!(claim_winner(&entry, &a[0], &a[1]), a[0]);
    }

    #[test]
    fn removing_a_builder_keeps_the_others_order() {
        let entry = Hash::new(b"y");
        let all = rendezvous_rank(&entry, (1..=8).map(key));
        let without: Vec<_> = rendezvous_rank(&entry, (1..=8).map(key).filter(|k| *k != all[3]));
        let expected: Vec<_> = all.iter().copied().filter(|k| *k != all[3]).collect();
        assert_eq!(without, expected);
    }
}
