//! Which pairs run together: rounds over the nodes.
//!
//! Exclusive rounds (the default) come from the circle method of a
//! round-robin tournament: n-1 rounds (n even; n with a bye when odd) of
//! disjoint unordered pairs, each run once in each direction, so every
//! ordered pair is measured exactly once and no node is in two transfers at
//! once. Contention rounds shift instead: round k runs every i -> (i+k) mod n
//! at once, so each node is initiator of one transfer and target of another
//! at the same time (its NIC carries both directions).

use serde::{Deserialize, Serialize};

/// One transfer: the sweep runs on `initiator`, which reads from (and
/// writes to) `kvprobe serve` on `target`. Indexes into the node list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Pair {
    /// Node running `kvprobe sweep --peer`.
    pub initiator: usize,
    /// Node running `kvprobe serve`.
    pub target: usize,
}

/// The rounds for `n` nodes.
pub fn rounds(n: usize, contention: bool) -> Vec<Vec<Pair>> {
    if n < 2 {
        return vec![];
    }
    if contention {
        return (1..n).map(|k| (0..n).map(|i| Pair { initiator: i, target: (i + k) % n }).collect()).collect();
    }
    // circle method: slot 0 fixed, the others rotate; None is the bye
    let m = if n % 2 == 0 { n } else { n + 1 };
    let mut ring: Vec<Option<usize>> = (0..m).map(|i| (i < n).then_some(i)).collect();
    let mut out = Vec::new();
    for _ in 0..m - 1 {
        let mut fwd = Vec::new();
        let mut back = Vec::new();
        for i in 0..m / 2 {
            if let (Some(a), Some(b)) = (ring[i], ring[m - 1 - i]) {
                fwd.push(Pair { initiator: a, target: b });
                back.push(Pair { initiator: b, target: a });
            }
        }
        out.push(fwd);
        out.push(back);
        // rotate all but the first slot
        let last = ring.pop().unwrap_or(None);
        ring.insert(1, last);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn exclusive_rounds_cover_every_ordered_pair_once_with_no_node_twice() {
        for n in 2..=9 {
            let r = rounds(n, false);
            let mut seen = HashSet::new();
            for round in &r {
                let mut busy = HashSet::new();
                for p in round {
                    assert_ne!(p.initiator, p.target);
                    assert!(busy.insert(p.initiator) && busy.insert(p.target), "n={n}: a node twice in {round:?}");
                    assert!(seen.insert(*p), "n={n}: {p:?} twice");
                }
            }
            assert_eq!(seen.len(), n * (n - 1), "n={n}");
            // the fewest rounds the exclusivity allows: 2(n-1) when even, 2n when odd
            assert_eq!(r.len(), if n % 2 == 0 { 2 * (n - 1) } else { 2 * n }, "n={n}");
        }
    }

    #[test]
    fn contention_rounds_overlap_every_node_both_ways() {
        let r = rounds(4, true);
        assert_eq!(r.len(), 3);
        let mut seen = HashSet::new();
        for round in &r {
            assert_eq!(round.len(), 4);
            let ini: HashSet<usize> = round.iter().map(|p| p.initiator).collect();
            let tgt: HashSet<usize> = round.iter().map(|p| p.target).collect();
            assert_eq!((ini.len(), tgt.len()), (4, 4), "each node sends and receives at once");
            seen.extend(round.iter().copied());
        }
        assert_eq!(seen.len(), 12);
        assert!(rounds(1, false).is_empty() && rounds(0, true).is_empty());
    }
}
