//! `kvprobe matrix`: an all-pairs transport matrix over the nodes of a Ray
//! cluster. [`plan`] says which pairs run together, `driver.py` (embedded,
//! run with the cluster's Python) places one kvprobe agent per node with
//! Ray's node affinity and runs `serve` / `sweep --peer` round by round,
//! this module holds the results (`matrix.json`, serde structs) and the
//! verdict (outlier links and nodes), [`heatmap`] draws them.

pub mod heatmap;
pub mod plan;

use serde::{Deserialize, Serialize};

pub use plan::{Endpoint, Pair};

/// `matrix.json`'s schema name (2: pairs index `endpoints`, one per node or per GPU).
pub const SCHEMA: &str = "kvprobe.matrix/2";

/// One end of the matrix's transfers: a node (host memory) or one GPU of it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MatrixEndpoint {
    /// Index into `nodes`.
    pub node: usize,
    /// CUDA ordinal on that node, for per-GPU endpoints (`--gpus-per-node`).
    pub gpu: Option<u32>,
    /// How tables, the heatmap and the verdict name it: the node's address, or `ADDRESS/gpuN`.
    pub label: String,
    /// Set when this GPU is missing on its node (its node being lost is `nodes[].lost`).
    pub lost: Option<String>,
}

/// One node of the matrix.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MatrixNode {
    /// Ray's node address (the one transfers use).
    pub address: String,
    /// Hostname.
    pub hostname: Option<String>,
    /// Ray's node id.
    pub node_id: String,
    /// `kvprobe doctor` there: its exit code (0 healthy, 1 warnings, 2 errors) and findings.
    pub doctor: Option<DoctorSummary>,
    /// Set when the node was lost: when and why.
    pub lost: Option<String>,
}

/// What `kvprobe doctor` said on a node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DoctorSummary {
    /// 0 healthy, 1 warnings, 2 errors.
    pub exit_code: Option<i32>,
    /// What carries traffic across hosts, as doctor reads it.
    pub across_hosts: Option<String>,
    /// `severity id` per finding.
    pub findings: Vec<String>,
    /// Why there is no report, when there is none.
    pub error: Option<String>,
}

/// One ordered pair's measurement.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PairResult {
    /// Endpoint index of the initiator (reads from the target with READ).
    pub initiator: usize,
    /// Endpoint index of the target.
    pub target: usize,
    /// Round it ran in (0-based).
    pub round: usize,
    /// `ok`, `failed` (the sweep failed) or `skipped` (a node of it was lost).
    pub status: String,
    /// GB/s (1e9 B/s) per size of the headline operation, in size order.
    pub gbps_by_size: Vec<(u64, f64)>,
    /// GB/s at the largest size: the number the matrix compares.
    pub gbps: Option<f64>,
    /// Transport lanes UCX used at the largest size (e.g. `tcp`), when known.
    pub carried_by: Option<String>,
    /// The sweep's own verdict grade (its absolute checks: transport, emulation, the link probe).
    pub sweep_grade: Option<String>,
    /// The checks that failed the sweep's own verdict (e.g. `cuda-ipc-get-disabled`).
    #[serde(default)]
    pub sweep_failed: Vec<String>,
    /// The initiator NIC's rated line rate, GB/s, when known (sysfs speed).
    pub expected_gbps: Option<f64>,
    /// Wall time of the pair, seconds.
    pub seconds: Option<f64>,
    /// What went wrong.
    pub error: Option<String>,
}

/// An outlier link.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OutlierLink {
    /// Initiator endpoint's label.
    pub initiator: String,
    /// Target endpoint's label.
    pub target: String,
    /// Its GB/s.
    pub gbps: f64,
    /// Its share of the cluster's median.
    pub of_median: f64,
    /// Its share of the expected line rate, when known.
    pub of_expected: Option<f64>,
    /// The label of an outlier node (or GPU) at one of its ends: that end, not this cable.
    pub explained_by: Option<String>,
}

/// An outlier node (or, per GPU, one GPU of a node): most of its links
/// (either direction) are outliers. Per GPU, a node all of whose measured
/// GPUs are outliers is named once, as the node.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OutlierNode {
    /// Its label: the node's address, or `ADDRESS/gpuN` for one GPU.
    pub address: String,
    /// The GPU, when one GPU of the node is the outlier.
    #[serde(default)]
    pub gpu: Option<u32>,
    /// Outlier links among its measured ones.
    pub outlier_links: usize,
    /// Its measured links.
    pub links: usize,
    /// Median GB/s of its links.
    pub median_gbps: f64,
}

/// The matrix's verdict.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MatrixVerdict {
    /// PASS, WARN or FAIL.
    pub grade: String,
    /// The cluster's reference GB/s: the median over nodes of each node's
    /// median link (the typical node), which one bad node cannot drag down.
    pub median_gbps: Option<f64>,
    /// The fraction of the median under which a link is an outlier.
    pub outlier_at: f64,
    /// The fraction of the line rate under which a link is an outlier.
    pub line_rate_at: f64,
    /// The line rate of the initiators' NICs (their median), GB/s.
    pub expected_gbps: Option<f64>,
    /// Outlier links, slowest first.
    pub outlier_links: Vec<OutlierLink>,
    /// Outlier nodes.
    pub outlier_nodes: Vec<OutlierNode>,
    /// Lost nodes (and missing GPUs), with why.
    pub lost_nodes: Vec<String>,
    /// Pairs that failed (not because a node was lost).
    pub failed_pairs: Vec<String>,
    /// Measured pairs whose own sweep verdict was FAIL (the path is wrong
    /// whatever the other pairs do: TCP where cuda_ipc or RDMA should carry
    /// it, software emulation), as `check: count`.
    #[serde(default)]
    pub sweep_failures: Vec<String>,
    /// One line per reason.
    pub reasons: Vec<String>,
}

/// `matrix.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MatrixResult {
    /// [`SCHEMA`].
    pub schema: String,
    /// kvprobe's version.
    pub kvprobe_version: String,
    /// kvprobe's command line.
    pub command_line: Vec<String>,
    /// `running`, `complete`, `interrupted`, `failed`.
    pub status: String,
    /// Started, UTC.
    pub started_at: String,
    /// Last written, UTC.
    pub updated_at: String,
    /// The Ray cluster's GCS address.
    pub ray_address: String,
    /// Exclusive rounds or deliberately overlapping ones.
    pub contention: bool,
    /// The sweep arguments every pair ran with.
    pub sweep_args: Vec<String>,
    /// The nodes, in index order.
    pub nodes: Vec<MatrixNode>,
    /// Per-GPU endpoints: GPUs per node (`--gpus-per-node`), or None (one endpoint per node).
    #[serde(default)]
    pub gpus_per_node: Option<u32>,
    /// The ends of the transfers, in index order: one per node, or one per GPU.
    pub endpoints: Vec<MatrixEndpoint>,
    /// The rounds planned (pairs of endpoint indexes).
    pub rounds: Vec<Vec<Pair>>,
    /// Seconds per round as it ran.
    pub round_seconds: Vec<f64>,
    /// Every pair measured so far.
    pub pairs: Vec<PairResult>,
    /// Total seconds.
    pub seconds: Option<f64>,
    /// Set at the end.
    pub verdict: Option<MatrixVerdict>,
    /// Errors of the run itself.
    pub errors: Vec<String>,
    /// `matrix --local`: this host's GPUs against each other, no Ray
    /// (endpoints are GPUs of `nodes[0]`; a pair of one GPU with itself is
    /// its baseline and stays out of the outlier statistics).
    #[serde(default)]
    pub local: bool,
    /// NVLink between the endpoints' GPUs, as NVML reports it (`--local`).
    #[serde(default)]
    pub gpu_links: Vec<GpuLink>,
}

/// NVLink between two GPUs of the host (endpoint indexes), from NVML.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuLink {
    /// Endpoint index of one GPU.
    pub a: usize,
    /// Endpoint index of the other.
    pub b: usize,
    /// Active links from `a` straight to `b`.
    pub direct: u32,
    /// Both have active links to NVSwitches (a path through the switch fabric).
    pub via_switch: bool,
}

impl MatrixResult {
    /// Whether (i, j) is a pair this matrix measures: endpoints on different
    /// nodes, or, with `--local`, any two GPUs of the host (and a GPU with
    /// itself, its baseline).
    pub fn is_link(&self, i: usize, j: usize) -> bool {
        match (self.endpoints.get(i), self.endpoints.get(j)) {
            (Some(a), Some(b)) => self.local || a.node != b.node,
            _ => false,
        }
    }

    /// The NVLink between endpoints i and j as a short cell text (`NV18`,
    /// `NVSwitch`), None without one.
    pub fn nvlink(&self, i: usize, j: usize) -> Option<String> {
        let l = self.gpu_links.iter().find(|l| (l.a == i && l.b == j) || (l.a == j && l.b == i))?;
        match (l.direct, l.via_switch) {
            (0, true) => Some("NVSwitch".into()),
            (0, false) => None,
            (d, _) => Some(format!("NV{d}")),
        }
    }
}

/// NVLink between the GPUs at `pcis` (endpoint order, sysfs PCI addresses),
/// from NVML's per-GPU active links: direct links count where a link's
/// remote end is the other GPU; two GPUs whose links end on anything that is
/// not a GPU of the host (NVSwitches) are connected through the switches.
pub fn gpu_links(pcis: &[String], nvml: &crate::nvml::NvmlReport) -> Vec<GpuLink> {
    let norm = |p: &str| crate::nvml::sysfs_pci(p);
    let all_gpus: Vec<String> = nvml.gpus.iter().map(|g| norm(&g.pci)).collect();
    let of = |pci: &str| nvml.gpus.iter().find(|g| norm(&g.pci) == norm(pci));
    let mut out = Vec::new();
    for (a, pa) in pcis.iter().enumerate() {
        for (b, pb) in pcis.iter().enumerate().skip(a + 1) {
            let (Some(ga), Some(gb)) = (of(pa), of(pb)) else { continue };
            let direct = ga.nvlinks.iter().filter(|(_, r)| norm(r) == norm(pb)).count() as u32;
            let to_switch = |g: &crate::nvml::NvmlGpu| g.nvlinks.iter().any(|(_, r)| !all_gpus.contains(&norm(r)));
            let via_switch = to_switch(ga) && to_switch(gb);
            if direct > 0 || via_switch {
                out.push(GpuLink { a, b, direct, via_switch });
            }
        }
    }
    out
}

fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 })
}

/// The endpoints' labels: the node's address, or `ADDRESS/gpuN`.
pub fn endpoint_label(nodes: &[MatrixNode], e: &Endpoint) -> String {
    let a = nodes.get(e.node).map(|n| n.address.clone()).unwrap_or_else(|| format!("#{}", e.node));
    match e.gpu {
        Some(g) => format!("{a}/gpu{g}"),
        None => a,
    }
}

/// The verdict of a matrix: links under `outlier_at` x the cluster's median
/// (or under `line_rate_at` x the line rate the NICs are rated for) are
/// outliers; an endpoint (node, or GPU) whose links reach at least two other
/// nodes, of which at least 3/4 are outliers, is an outlier (its NIC, cable,
/// switch port or UCX setup, not one cable), and per GPU a node all of whose
/// measured GPUs are outliers is named as the node; lost nodes or GPUs,
/// failed pairs or outlier nodes FAIL, outlier links alone WARN.
pub fn verdict(r: &MatrixResult, outlier_at: f64, line_rate_at: f64) -> MatrixVerdict {
    let measured_ok: Vec<&PairResult> = r.pairs.iter().filter(|p| p.status == "ok" && p.gbps.is_some()).collect();
    // a GPU with itself (--local --same-gpu) is its baseline, not a link
    let ok: Vec<&PairResult> = measured_ok.iter().copied().filter(|p| p.initiator != p.target).collect();
    let eps = &r.endpoints;
    // the unit an outlier is blamed on: the node, or, on one host (--local), the GPU
    let node_of = |i: usize| {
        if r.local { i } else { eps.get(i).map(|e| e.node).unwrap_or(usize::MAX) }
    };
    let label = |i: usize| eps.get(i).map(|e| e.label.clone()).unwrap_or_else(|| format!("#{i}"));
    // the reference is the typical endpoint: the median over endpoints of
    // each one's median link. A plain median of links fails with few nodes
    // (one bad node of three owns 4 of the 6 links, so the median link is bad).
    let links_of = |i: usize| -> Vec<f64> {
        ok.iter().filter(|p| p.initiator == i || p.target == i).filter_map(|p| p.gbps).collect()
    };
    let mut ep_meds: Vec<f64> = (0..eps.len()).filter_map(|i| median(&mut links_of(i))).collect();
    let med = median(&mut ep_meds).or_else(|| median(&mut ok.iter().filter_map(|p| p.gbps).collect::<Vec<_>>()));
    let expected = median(&mut ok.iter().filter_map(|p| p.expected_gbps).collect::<Vec<_>>());
    let is_out =
        |g: f64| med.is_some_and(|m| g < outlier_at * m) || expected.is_some_and(|e| e > 0.0 && g < line_rate_at * e);
    // two nodes cannot tell which end is bad: an outlier needs three nodes
    // with measurements, and peers on two other nodes of its own
    let mut measured: Vec<usize> = (0..eps.len()).filter(|i| !links_of(*i).is_empty()).map(node_of).collect();
    measured.sort_unstable();
    measured.dedup();
    let peer_nodes = |i: usize| -> usize {
        let mut v: Vec<usize> = ok
            .iter()
            .filter_map(|p| {
                if p.initiator == i {
                    Some(node_of(p.target))
                } else if p.target == i {
                    Some(node_of(p.initiator))
                } else {
                    None
                }
            })
            .collect();
        v.sort_unstable();
        v.dedup();
        v.len()
    };
    // outlier endpoints, as (endpoint, outlier links, links, median)
    let mut out_eps: Vec<(usize, usize, Vec<f64>)> = Vec::new();
    for i in 0..eps.len() {
        let mine = links_of(i);
        let outs = mine.iter().filter(|g| is_out(**g)).count();
        if measured.len() >= 3 && peer_nodes(i) >= 2 && outs * 4 >= mine.len() * 3 {
            out_eps.push((i, outs, mine));
        }
    }
    // per GPU: a node whose every measured GPU is an outlier is the node
    // (on one host every GPU stands for itself)
    let host_of = |i: usize| eps.get(i).map(|e| e.node).unwrap_or(usize::MAX);
    let mut nodes_out: Vec<OutlierNode> = Vec::new();
    for (ni, n) in r.nodes.iter().enumerate() {
        let mine: Vec<&(usize, usize, Vec<f64>)> = out_eps.iter().filter(|o| host_of(o.0) == ni).collect();
        if mine.is_empty() {
            continue;
        }
        let measured_gpus = (0..eps.len()).filter(|i| host_of(*i) == ni && !links_of(*i).is_empty()).count();
        let whole = !r.local && (eps.get(mine[0].0).is_some_and(|e| e.gpu.is_none()) || mine.len() == measured_gpus);
        if whole {
            let mut all: Vec<f64> = mine.iter().flat_map(|o| o.2.iter().copied()).collect();
            nodes_out.push(OutlierNode {
                address: n.address.clone(),
                gpu: None,
                outlier_links: mine.iter().map(|o| o.1).sum(),
                links: all.len(),
                median_gbps: median(&mut all).unwrap_or(0.0),
            });
        } else {
            for (i, outs, links) in mine {
                nodes_out.push(OutlierNode {
                    address: label(*i),
                    gpu: eps[*i].gpu,
                    outlier_links: *outs,
                    links: links.len(),
                    median_gbps: median(&mut links.clone()).unwrap_or(0.0),
                });
            }
        }
    }
    // the outlier (node or GPU) that explains an endpoint's links
    let explains = |i: usize| -> Option<String> {
        let e = eps.get(i)?;
        let addr = r.nodes.get(e.node).map(|n| n.address.as_str())?;
        nodes_out
            .iter()
            .find(|o| if o.gpu.is_some() { o.address == label(i) } else { o.address == addr })
            .map(|o| o.address.clone())
    };
    let mut links = Vec::new();
    for p in &ok {
        let g = p.gbps.unwrap_or(0.0);
        if !is_out(g) {
            continue;
        }
        links.push(OutlierLink {
            initiator: label(p.initiator),
            target: label(p.target),
            gbps: g,
            of_median: med.map(|m| g / m).unwrap_or(0.0),
            of_expected: expected.filter(|e| *e > 0.0).map(|e| g / e),
            explained_by: explains(p.initiator).or_else(|| explains(p.target)),
        });
    }
    links.sort_by(|x, y| x.gbps.total_cmp(&y.gbps));
    let mut lost: Vec<String> =
        r.nodes.iter().filter_map(|n| n.lost.as_ref().map(|w| format!("{}: {w}", n.address))).collect();
    lost.extend(
        eps.iter()
            .filter(|e| r.nodes.get(e.node).is_some_and(|n| n.lost.is_none()))
            .filter_map(|e| e.lost.as_ref().map(|w| format!("{}: {w}", e.label))),
    );
    let failed: Vec<String> = r
        .pairs
        .iter()
        .filter(|p| p.status == "failed")
        .map(|p| format!("{} -> {}: {}", label(p.initiator), label(p.target), p.error.as_deref().unwrap_or("failed")))
        .collect();
    // the pairs' own verdicts: a cluster where every pair is equally wrong has no outlier
    let mut checks: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    let sweep_failed: Vec<&&PairResult> =
        measured_ok.iter().filter(|p| p.sweep_grade.as_deref() == Some("FAIL")).collect();
    for p in &sweep_failed {
        if p.sweep_failed.is_empty() {
            *checks.entry("unnamed").or_default() += 1;
        }
        for c in &p.sweep_failed {
            *checks.entry(c.as_str()).or_default() += 1;
        }
    }
    let sweep_failures: Vec<String> = checks.iter().map(|(c, n)| format!("{c}: {n}")).collect();
    let mut reasons = Vec::new();
    for n in &lost {
        reasons.push(format!("lost: {n}"));
    }
    if !sweep_failed.is_empty() {
        let first = sweep_failed[0];
        reasons.push(format!(
            "{} of {} measured pairs failed their own sweep verdict ({}); e.g. {} -> {}: pairs/{}-{}.json",
            sweep_failed.len(),
            measured_ok.len(),
            sweep_failures.join(", "),
            label(first.initiator),
            label(first.target),
            first.initiator,
            first.target
        ));
    }
    for f in &failed {
        reasons.push(format!("pair failed: {f}"));
    }
    for n in &nodes_out {
        reasons.push(format!(
            "{} {}: {} of its {} links are outliers (median {:.3} GB/s vs the cluster's {:.3}): {}",
            if n.gpu.is_some() { "GPU" } else { "node" },
            n.address,
            n.outlier_links,
            n.links,
            n.median_gbps,
            med.unwrap_or(0.0),
            if r.local {
                "its NVLink or PCIe links (nvidia-smi topo -m, nvidia-smi nvlink -s), or what else runs on it"
            } else if n.gpu.is_some() {
                "the NIC this GPU uses (its NUMA / PCIe placement, UCX_NET_DEVICES), its cable or switch port"
            } else {
                "its NIC, cable, switch port or UCX setup"
            }
        ));
    }
    for l in links.iter().filter(|l| l.explained_by.is_none()) {
        reasons.push(format!(
            "link {} -> {}: {:.3} GB/s, {:.0}% of the cluster's median{}",
            l.initiator,
            l.target,
            l.gbps,
            100.0 * l.of_median,
            l.of_expected.map(|e| format!(", {:.0}% of the expected line rate", 100.0 * e)).unwrap_or_default()
        ));
    }
    let grade = if !lost.is_empty() || !failed.is_empty() || !nodes_out.is_empty() || measured_ok.is_empty() {
        "FAIL"
    } else if !links.is_empty() || !sweep_failed.is_empty() {
        "WARN"
    } else {
        "PASS"
    };
    if measured_ok.is_empty() {
        reasons.push("no pair was measured".into());
    } else if ok.is_empty() {
        reasons.push(format!(
            "only each GPU with itself was measured ({} baseline pair(s)): no two GPUs to compare, so no outliers",
            measured_ok.len()
        ));
    }
    MatrixVerdict {
        grade: grade.into(),
        median_gbps: med,
        outlier_at,
        line_rate_at,
        expected_gbps: expected,
        outlier_links: links,
        outlier_nodes: nodes_out,
        lost_nodes: lost,
        failed_pairs: failed,
        sweep_failures,
        reasons,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(n: usize, rate: impl Fn(usize, usize) -> f64) -> MatrixResult {
        result_gpus(n, None, rate)
    }

    /// `n` nodes (per GPU: `g` GPUs each), every planned pair measured at `rate(initiator, target)` (endpoint indexes).
    fn result_gpus(n: usize, g: Option<u32>, rate: impl Fn(usize, usize) -> f64) -> MatrixResult {
        let nodes: Vec<MatrixNode> = (0..n)
            .map(|i| MatrixNode {
                address: format!("10.0.0.{}", i + 1),
                hostname: None,
                node_id: format!("n{i}"),
                doctor: None,
                lost: None,
            })
            .collect();
        let (eps, rounds) = plan::endpoint_rounds(n, g, false);
        let endpoints: Vec<MatrixEndpoint> = eps
            .iter()
            .map(|e| MatrixEndpoint { node: e.node, gpu: e.gpu, label: endpoint_label(&nodes, e), lost: None })
            .collect();
        let mut pairs = Vec::new();
        for (k, round) in rounds.iter().enumerate() {
            for p in round {
                let (i, j) = (p.initiator, p.target);
                {
                    pairs.push(PairResult {
                        initiator: i,
                        target: j,
                        round: k,
                        status: "ok".into(),
                        gbps_by_size: vec![],
                        gbps: Some(rate(i, j)),
                        carried_by: None,
                        sweep_grade: None,
                        sweep_failed: vec![],
                        expected_gbps: None,
                        seconds: None,
                        error: None,
                    });
                }
            }
        }
        MatrixResult {
            schema: SCHEMA.into(),
            kvprobe_version: String::new(),
            command_line: vec![],
            status: "complete".into(),
            started_at: String::new(),
            updated_at: String::new(),
            ray_address: String::new(),
            contention: false,
            sweep_args: vec![],
            nodes,
            gpus_per_node: g,
            endpoints,
            rounds,
            round_seconds: vec![],
            pairs,
            seconds: None,
            verdict: None,
            errors: vec![],
            local: false,
            gpu_links: vec![],
        }
    }

    /// `matrix --local` over `n` GPUs of one host (with each GPU's baseline
    /// pair), pair GB/s from `rate`.
    fn local_result(n: u32, rate: impl Fn(usize, usize) -> f64) -> MatrixResult {
        let gpus: Vec<u32> = (0..n).collect();
        let (eps, rounds) = plan::local_rounds(&gpus, true, false);
        let mut r = result(2, |_, _| 0.0);
        r.nodes.truncate(1);
        r.local = true;
        r.endpoints = eps
            .iter()
            .map(|e| MatrixEndpoint { node: 0, gpu: e.gpu, label: format!("gpu{}", e.gpu.unwrap_or(0)), lost: None })
            .collect();
        r.pairs = rounds
            .iter()
            .enumerate()
            .flat_map(|(k, round)| round.iter().map(move |p| (k, *p)))
            .map(|(k, p)| PairResult {
                initiator: p.initiator,
                target: p.target,
                round: k,
                status: "ok".into(),
                gbps_by_size: vec![],
                gbps: Some(rate(p.initiator, p.target)),
                carried_by: Some("cuda_ipc/cuda".into()),
                sweep_grade: Some("PASS".into()),
                sweep_failed: vec![],
                expected_gbps: None,
                seconds: None,
                error: None,
            })
            .collect();
        r.rounds = rounds;
        r
    }

    #[test]
    fn on_one_host_a_slow_gpu_is_the_outlier_and_baselines_stay_out() {
        // 4 GPUs at 300 GB/s, GPU 2 at 40 on every link; each GPU with itself at 1,400 (its own copy)
        let rate = |i: usize, j: usize| {
            if i == j {
                1400.0
            } else if i == 2 || j == 2 {
                40.0
            } else {
                300.0
            }
        };
        let r = local_result(4, rate);
        assert!(r.is_link(0, 1) && r.is_link(1, 1), "one host: every pair of GPUs is a link");
        let v = verdict(&r, 0.5, 0.25);
        assert_eq!(v.median_gbps, Some(300.0), "the baselines are not links: {v:?}");
        assert_eq!(v.grade, "FAIL", "{:?}", v.reasons);
        assert_eq!(v.outlier_nodes.len(), 1, "{:?}", v.outlier_nodes);
        assert_eq!((v.outlier_nodes[0].address.as_str(), v.outlier_nodes[0].gpu), ("gpu2", Some(2)));
        assert!(v.reasons.iter().any(|x| x.contains("NVLink")), "{:?}", v.reasons);
        // all alike: PASS; one GPU alone (its baseline only) is measured, not failed
        assert_eq!(verdict(&local_result(4, |i, j| if i == j { 1400.0 } else { 300.0 }), 0.5, 0.25).grade, "PASS");
        let one = verdict(&local_result(1, |_, _| 1400.0), 0.5, 0.25);
        assert_eq!(one.grade, "PASS", "{:?}", one.reasons);
        assert!(one.reasons.iter().any(|x| x.contains("only each GPU with itself")), "{:?}", one.reasons);
    }

    #[test]
    fn nvlink_topology_comes_from_nvml_links() {
        use crate::nvml::{NvmlGpu, NvmlReport};
        let gpu = |i: u32, pci: &str, links: &[&str]| NvmlGpu {
            index: i,
            name: "NVIDIA H100 80GB HBM3".into(),
            pci: pci.into(),
            nvlinks: links.iter().enumerate().map(|(k, r)| (k as u32, r.to_string())).collect(),
        };
        // GPUs 0 and 1 joined by two direct links; 2 and 3 both on an NVSwitch; 4 has none
        let rep = NvmlReport {
            driver: "580".into(),
            gpus: vec![
                gpu(0, "0000:18:00.0", &["0000:2a:00.0", "0000:2a:00.0"]),
                gpu(1, "0000:2a:00.0", &["0000:18:00.0", "0000:18:00.0"]),
                gpu(2, "0000:3a:00.0", &["0000:c0:00.0"]),
                gpu(3, "0000:5d:00.0", &["0000:c1:00.0"]),
                gpu(4, "0000:9a:00.0", &[]),
            ],
            library: None,
        };
        let pcis: Vec<String> = rep.gpus.iter().map(|g| g.pci.clone()).collect();
        let links = gpu_links(&pcis, &rep);
        assert!(links.contains(&GpuLink { a: 0, b: 1, direct: 2, via_switch: false }), "{links:?}");
        assert!(links.contains(&GpuLink { a: 2, b: 3, direct: 0, via_switch: true }), "{links:?}");
        assert!(!links.iter().any(|l| l.a == 4 || l.b == 4), "{links:?}");
        let mut r = local_result(5, |_, _| 1.0);
        r.gpu_links = links;
        assert_eq!(r.nvlink(1, 0).as_deref(), Some("NV2"));
        assert_eq!(r.nvlink(2, 3).as_deref(), Some("NVSwitch"));
        assert_eq!(r.nvlink(0, 4), None);
    }

    #[test]
    fn a_uniform_cluster_passes() {
        let v = verdict(&result(4, |i, j| 10.0 + (i + j) as f64 * 0.1), 0.5, 0.25);
        assert_eq!(v.grade, "PASS", "{:?}", v.reasons);
        assert!(v.outlier_links.is_empty() && v.outlier_nodes.is_empty());
    }

    #[test]
    fn one_slow_cable_is_a_link_one_slow_node_is_a_node() {
        // one direction of one pair is slow: that link, no node
        let v = verdict(&result(4, |i, j| if (i, j) == (1, 2) { 1.0 } else { 10.0 }), 0.5, 0.25);
        assert_eq!(v.grade, "WARN", "{:?}", v.reasons);
        assert_eq!(v.outlier_links.len(), 1);
        assert_eq!(
            (v.outlier_links[0].initiator.as_str(), v.outlier_links[0].target.as_str()),
            ("10.0.0.2", "10.0.0.3")
        );
        assert!(v.outlier_nodes.is_empty());
        // every link of node 3 (index 2) is slow: the node, and its links are explained by it
        let v = verdict(&result(4, |i, j| if i == 2 || j == 2 { 0.8 } else { 10.0 }), 0.5, 0.25);
        assert_eq!(v.grade, "FAIL");
        assert_eq!(v.outlier_nodes.len(), 1, "{:?}", v.outlier_nodes);
        assert_eq!(v.outlier_nodes[0].address, "10.0.0.3");
        assert_eq!(v.outlier_links.len(), 6);
        assert!(v.outlier_links.iter().all(|l| l.explained_by.as_deref() == Some("10.0.0.3")));
        assert!(v.reasons.iter().any(|r| r.starts_with("node 10.0.0.3: 6 of its 6 links")), "{:?}", v.reasons);
    }

    #[test]
    fn one_bad_node_of_three_is_found_although_it_owns_most_links() {
        // node 3 is on 4 of the 6 links: the median link is slow, the median node is not
        let v = verdict(&result(3, |i, j| if i == 2 || j == 2 { 0.02 } else { 0.5 }), 0.5, 0.0);
        assert_eq!(v.outlier_nodes.len(), 1, "{:?}", v.reasons);
        assert_eq!(v.outlier_nodes[0].address, "10.0.0.3");
        assert_eq!(v.outlier_links.len(), 4);
        assert!(v.outlier_links.iter().all(|l| l.explained_by.is_some()));
        // two nodes: a slow pair is reported as links, no node is blamed
        let v = verdict(&result(2, |_, _| 0.02), 0.5, 0.0);
        assert!(v.outlier_nodes.is_empty());
        // three planned, one lost before measuring: the two left are still only two
        let mut r = result(3, |_, _| 1.0);
        r.pairs.retain(|p| p.initiator != 2 && p.target != 2);
        for p in &mut r.pairs {
            p.expected_gbps = Some(10.0);
        }
        let v = verdict(&r, 0.5, 0.25);
        assert!(v.outlier_nodes.is_empty(), "{:?}", v.outlier_nodes);
        assert_eq!(v.outlier_links.len(), 2);
    }

    #[test]
    fn lost_nodes_and_failed_pairs_fail_and_are_named() {
        let mut r = result(3, |_, _| 10.0);
        r.nodes[2].lost = Some("died in round 2".into());
        let k = r.pairs.iter().position(|p| (p.initiator, p.target) == (0, 1)).unwrap();
        r.pairs[k].status = "failed".into();
        r.pairs[k].gbps = None;
        r.pairs[k].error = Some("peer closed".into());
        let v = verdict(&r, 0.5, 0.25);
        assert_eq!(v.grade, "FAIL");
        assert_eq!(v.lost_nodes, vec!["10.0.0.3: died in round 2".to_string()]);
        assert_eq!(v.failed_pairs, vec!["10.0.0.1 -> 10.0.0.2: peer closed".to_string()]);
        // an expected line rate flags links even when all are equally slow
        let mut r = result(3, |_, _| 1.0);
        for p in &mut r.pairs {
            p.expected_gbps = Some(10.0);
        }
        let v = verdict(&r, 0.5, 0.25);
        assert_eq!(v.outlier_links.len(), 6);
        assert!(v.outlier_links[0].of_expected.is_some_and(|e| (e - 0.1).abs() < 1e-9));
    }

    #[test]
    fn per_gpu_one_slow_gpu_is_that_gpu_a_slow_node_is_the_node() {
        // 3 nodes x 2 GPUs; GPU 1 of node 2 (endpoint 3) reaches 10% on every link
        let v = verdict(&result_gpus(3, Some(2), |i, j| if i == 3 || j == 3 { 1.0 } else { 10.0 }), 0.5, 0.0);
        assert_eq!(v.grade, "FAIL", "{:?}", v.reasons);
        assert_eq!(v.outlier_nodes.len(), 1, "{:?}", v.outlier_nodes);
        assert_eq!((v.outlier_nodes[0].address.as_str(), v.outlier_nodes[0].gpu), ("10.0.0.2/gpu1", Some(1)));
        // its 8 links (4 peers, both ways), all explained by it; the other GPU of its node is fine
        assert_eq!(v.outlier_links.len(), 8);
        assert!(v.outlier_links.iter().all(|l| l.explained_by.as_deref() == Some("10.0.0.2/gpu1")));
        assert!(v.reasons.iter().any(|r| r.starts_with("GPU 10.0.0.2/gpu1: 8 of its 8 links")), "{:?}", v.reasons);
        // every GPU of node 2 slow: named once, as the node
        let v = verdict(&result_gpus(3, Some(2), |i, j| if i / 2 == 1 || j / 2 == 1 { 1.0 } else { 10.0 }), 0.5, 0.0);
        assert_eq!(v.outlier_nodes.len(), 1, "{:?}", v.outlier_nodes);
        assert_eq!((v.outlier_nodes[0].address.as_str(), v.outlier_nodes[0].gpu), ("10.0.0.2", None));
        assert!(v.outlier_links.iter().all(|l| l.explained_by.as_deref() == Some("10.0.0.2")));
        // two nodes of GPUs: the two GPUs of the other node are not two other nodes, nobody is blamed
        let v = verdict(&result_gpus(2, Some(2), |i, j| if i == 3 || j == 3 { 1.0 } else { 10.0 }), 0.5, 0.0);
        assert!(v.outlier_nodes.is_empty(), "{:?}", v.outlier_nodes);
        assert_eq!(v.outlier_links.len(), 4);
        // a missing GPU is lost by its label, a lost node once by its address
        let mut r = result_gpus(3, Some(2), |_, _| 10.0);
        r.endpoints[5].lost = Some("doctor found 1 GPU".into());
        r.nodes[0].lost = Some("died".into());
        r.endpoints[0].lost = Some("its node was lost".into());
        let v = verdict(&r, 0.5, 0.0);
        assert_eq!(v.lost_nodes, vec!["10.0.0.1: died".to_string(), "10.0.0.3/gpu1: doctor found 1 GPU".to_string()]);
        assert_eq!(v.grade, "FAIL");
    }

    #[test]
    fn per_gpu_heatmap_names_gpus_and_stays_drawable_at_hundreds_of_endpoints() {
        let mut r = result_gpus(3, Some(2), |i, j| if i == 3 || j == 3 { 1.0 } else { 10.0 });
        r.verdict = Some(verdict(&r, 0.5, 0.0));
        let svg = match heatmap::svg(&r) {
            Ok(s) => s,
            Err(e) if e.contains("no TrueType font") => return, // debug/setup.sh installs one
            Err(e) => panic!("{e}"),
        };
        assert!(svg.contains("3 nodes x 2 GPUs"), "title");
        assert!(svg.contains("10.0.0.2/gpu1") && svg.contains("10.0.0.3/gpu0"), "GPU labels");
        // 64 nodes x 8 GPUs: 512 endpoints, cells shrink so the picture stays about 3000 px
        assert_eq!(heatmap::cell(512), 6);
        assert!(heatmap::size(512).0 <= 4000, "{:?}", heatmap::size(512));
        assert_eq!(heatmap::cell(4), 72);
    }

    #[test]
    fn pairs_failing_their_own_sweep_verdict_warn_even_when_all_alike() {
        // every pair equally slow and equally wrong (READ of GPU memory emulated over tcp): no outlier, but not a PASS
        let mut r = result(3, |_, _| 0.47);
        for p in &mut r.pairs {
            p.sweep_grade = Some("FAIL".into());
            p.sweep_failed = vec!["cuda-ipc-get-disabled".into()];
        }
        r.pairs[0].sweep_failed.push("bandwidth".into());
        let v = verdict(&r, 0.5, 0.0);
        assert_eq!(v.grade, "WARN", "{:?}", v.reasons);
        assert!(v.outlier_links.is_empty());
        assert_eq!(v.sweep_failures, vec!["bandwidth: 1".to_string(), "cuda-ipc-get-disabled: 6".to_string()]);
        assert!(
            v.reasons.iter().any(|x| x.starts_with("6 of 6 measured pairs failed their own sweep verdict")),
            "{:?}",
            v.reasons
        );
        assert_eq!(verdict(&result(3, |_, _| 0.47), 0.5, 0.0).grade, "PASS");
    }
}
