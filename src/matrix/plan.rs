//! Which pairs run together: rounds over the nodes (or their GPUs).
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

/// One end of a transfer: a node, or one GPU of a node (`--gpus-per-node`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Endpoint {
    /// Index into the node list.
    pub node: usize,
    /// CUDA ordinal on that node (per-GPU endpoints), or None (the node, host memory).
    pub gpu: Option<u32>,
}

/// The endpoints and their rounds: one endpoint per node (`gpus` None,
/// exactly [`rounds`]), or one per GPU. Per GPU, each round of the nodes
/// becomes `gpus` rounds: in sub-round `s` GPU `g` of the initiating node
/// reads from GPU `(g + s) mod gpus` of its target, so every GPU is in one
/// transfer at a time (a node's GPUs transfer at once, as TP ranks do), and
/// every ordered pair of GPUs on different nodes is measured once. Pairs
/// index the endpoints. GPUs of one node are not paired (that is NVLink,
/// `kvprobe sweep --gpu A,B`, not the network).
pub fn endpoint_rounds(nodes: usize, gpus: Option<u32>, contention: bool) -> (Vec<Endpoint>, Vec<Vec<Pair>>) {
    let by_node = rounds(nodes, contention);
    let Some(g) = gpus.filter(|g| *g > 0) else {
        return ((0..nodes).map(|node| Endpoint { node, gpu: None }).collect(), by_node);
    };
    let g = g as usize;
    let eps = (0..nodes).flat_map(|node| (0..g).map(move |k| Endpoint { node, gpu: Some(k as u32) })).collect();
    let mut out = Vec::new();
    for round in &by_node {
        for s in 0..g {
            out.push(
                round
                    .iter()
                    .flat_map(|p| {
                        (0..g).map(move |k| Pair { initiator: p.initiator * g + k, target: p.target * g + (k + s) % g })
                    })
                    .collect(),
            );
        }
    }
    (eps, out)
}

/// The endpoints and rounds of one host's GPUs against each other
/// (`matrix --local`): every ordered pair of distinct GPUs once, in [`rounds`]
/// (each GPU in one transfer at a time, or the contention shifts), then,
/// with `same_gpu`, one round in which every GPU reads from itself (two
/// processes on one GPU: the device's own copy path, the baseline).
pub fn local_rounds(gpus: &[u32], same_gpu: bool, contention: bool) -> (Vec<Endpoint>, Vec<Vec<Pair>>) {
    let eps = gpus.iter().map(|&g| Endpoint { node: 0, gpu: Some(g) }).collect();
    let mut out = rounds(gpus.len(), contention);
    if same_gpu && !gpus.is_empty() {
        out.push((0..gpus.len()).map(|i| Pair { initiator: i, target: i }).collect());
    }
    (eps, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn local_rounds_pair_every_gpu_of_the_host() {
        let (eps, r) = local_rounds(&[0, 1, 2, 3], false, false);
        assert_eq!(eps.len(), 4);
        assert!(eps.iter().all(|e| e.node == 0));
        let pairs: HashSet<Pair> = r.iter().flatten().copied().collect();
        assert_eq!(pairs.len(), 12, "every ordered pair of distinct GPUs");
        assert!(pairs.iter().all(|p| p.initiator != p.target));
        // the baseline round: each GPU with itself, all at once
        let (_, r) = local_rounds(&[0, 1, 2, 3], true, false);
        assert_eq!(r.last().unwrap().len(), 4);
        assert!(r.last().unwrap().iter().all(|p| p.initiator == p.target));
        // one GPU: only its baseline
        let (eps, r) = local_rounds(&[5], true, false);
        assert_eq!((eps[0].gpu, r.len(), r[0][0]), (Some(5), 1, Pair { initiator: 0, target: 0 }));
        assert!(local_rounds(&[5], false, false).1.is_empty());
    }

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

    #[test]
    fn per_gpu_rounds_cover_every_cross_node_gpu_pair_once_with_no_gpu_twice() {
        for (n, g) in [(2, 1), (2, 2), (3, 2), (4, 3), (5, 8)] {
            let (eps, r) = endpoint_rounds(n, Some(g), false);
            assert_eq!(eps.len(), n * g as usize);
            assert!(eps.iter().enumerate().all(|(i, e)| e.node == i / g as usize && e.gpu == Some(i as u32 % g)));
            let mut seen = HashSet::new();
            for round in &r {
                let mut busy = HashSet::new();
                for p in round {
                    assert_ne!(eps[p.initiator].node, eps[p.target].node, "no pair inside one node");
                    assert!(busy.insert(p.initiator) && busy.insert(p.target), "n={n} g={g}: a GPU twice");
                    assert!(seen.insert(*p));
                }
            }
            let e = n * g as usize;
            assert_eq!(seen.len(), e * (e - g as usize), "n={n} g={g}: every cross-node ordered GPU pair");
            assert_eq!(r.len(), rounds(n, false).len() * g as usize);
        }
        // contention per GPU: every GPU sends and receives at once, in every round
        let (eps, r) = endpoint_rounds(3, Some(2), true);
        for round in &r {
            let ini: HashSet<usize> = round.iter().map(|p| p.initiator).collect();
            let tgt: HashSet<usize> = round.iter().map(|p| p.target).collect();
            assert_eq!((ini.len(), tgt.len()), (eps.len(), eps.len()));
        }
        // per node: exactly the node rounds
        let (eps, r) = endpoint_rounds(4, None, false);
        assert_eq!(eps.len(), 4);
        assert!(eps.iter().all(|e| e.gpu.is_none()));
        assert_eq!(r, rounds(4, false));
    }
}
