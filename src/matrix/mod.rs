//! `kvprobe matrix`: an all-pairs transport matrix over the nodes of a Ray
//! cluster. [`plan`] says which pairs run together, `driver.py` (embedded,
//! run with the cluster's Python) places one kvprobe agent per node with
//! Ray's node affinity and runs `serve` / `sweep --peer` round by round,
//! this module holds the results (`matrix.json`, serde structs) and the
//! verdict (outlier links and nodes), [`heatmap`] draws them.

pub mod heatmap;
pub mod plan;

use serde::{Deserialize, Serialize};

pub use plan::Pair;

/// `matrix.json`'s schema name.
pub const SCHEMA: &str = "kvprobe.matrix/1";

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
    /// Node index of the initiator (reads from the target with READ).
    pub initiator: usize,
    /// Node index of the target.
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
    /// The sweep's own verdict grade.
    pub sweep_grade: Option<String>,
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
    /// Initiator address.
    pub initiator: String,
    /// Target address.
    pub target: String,
    /// Its GB/s.
    pub gbps: f64,
    /// Its share of the cluster's median.
    pub of_median: f64,
    /// Its share of the expected line rate, when known.
    pub of_expected: Option<f64>,
    /// A node of it that is an outlier on every link: the node, not this cable.
    pub explained_by: Option<String>,
}

/// An outlier node: most of its links (either direction) are outliers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OutlierNode {
    /// Its address.
    pub address: String,
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
    /// Lost nodes, with why.
    pub lost_nodes: Vec<String>,
    /// Pairs that failed (not because a node was lost).
    pub failed_pairs: Vec<String>,
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
    /// The rounds planned.
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
}

fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 })
}

/// The verdict of a matrix: links under `outlier_at` x the cluster's median
/// (or under `line_rate_at` x the line rate the NICs are rated for) are outliers; a node with at
/// least 2 links of which at least 3/4 are outliers is an outlier node (its
/// NIC, cable, switch port or UCX setup, not one cable); lost nodes, failed
/// pairs or outlier nodes FAIL, outlier links alone WARN.
pub fn verdict(r: &MatrixResult, outlier_at: f64, line_rate_at: f64) -> MatrixVerdict {
    let ok: Vec<&PairResult> = r.pairs.iter().filter(|p| p.status == "ok" && p.gbps.is_some()).collect();
    // the reference is the typical node: the median over nodes of each
    // node's median link. A plain median of links fails with few nodes (one
    // bad node of three owns 4 of the 6 links, so the median link is bad).
    let links_of = |i: usize| -> Vec<f64> {
        ok.iter().filter(|p| p.initiator == i || p.target == i).filter_map(|p| p.gbps).collect()
    };
    let mut node_meds: Vec<f64> = (0..r.nodes.len()).filter_map(|i| median(&mut links_of(i))).collect();
    let med = median(&mut node_meds).or_else(|| median(&mut ok.iter().filter_map(|p| p.gbps).collect::<Vec<_>>()));
    let expected = median(&mut ok.iter().filter_map(|p| p.expected_gbps).collect::<Vec<_>>());
    let addr = |i: usize| r.nodes.get(i).map(|n| n.address.clone()).unwrap_or_else(|| format!("#{i}"));
    let is_out =
        |g: f64| med.is_some_and(|m| g < outlier_at * m) || expected.is_some_and(|e| e > 0.0 && g < line_rate_at * e);
    let mut nodes_out = Vec::new();
    // two nodes cannot tell which end is bad: a node outlier needs three
    // nodes with measurements, and two distinct peers of its own
    let measured = (0..r.nodes.len()).filter(|i| !links_of(*i).is_empty()).count();
    let peers = |i: usize| -> usize {
        let mut v: Vec<usize> = ok
            .iter()
            .filter_map(|p| {
                if p.initiator == i {
                    Some(p.target)
                } else if p.target == i {
                    Some(p.initiator)
                } else {
                    None
                }
            })
            .collect();
        v.sort_unstable();
        v.dedup();
        v.len()
    };
    for (i, n) in r.nodes.iter().enumerate() {
        let mine = links_of(i);
        let outs = mine.iter().filter(|g| is_out(**g)).count();
        if measured >= 3 && peers(i) >= 2 && outs * 4 >= mine.len() * 3 {
            nodes_out.push(OutlierNode {
                address: n.address.clone(),
                outlier_links: outs,
                links: mine.len(),
                median_gbps: median(&mut mine.clone()).unwrap_or(0.0),
            });
        }
    }
    let mut links = Vec::new();
    for p in &ok {
        let g = p.gbps.unwrap_or(0.0);
        if !is_out(g) {
            continue;
        }
        let (a, b) = (addr(p.initiator), addr(p.target));
        let explained_by = nodes_out.iter().find(|n| n.address == a || n.address == b).map(|n| n.address.clone());
        links.push(OutlierLink {
            initiator: a,
            target: b,
            gbps: g,
            of_median: med.map(|m| g / m).unwrap_or(0.0),
            of_expected: expected.filter(|e| *e > 0.0).map(|e| g / e),
            explained_by,
        });
    }
    links.sort_by(|x, y| x.gbps.total_cmp(&y.gbps));
    let lost: Vec<String> =
        r.nodes.iter().filter_map(|n| n.lost.as_ref().map(|w| format!("{}: {w}", n.address))).collect();
    let failed: Vec<String> = r
        .pairs
        .iter()
        .filter(|p| p.status == "failed")
        .map(|p| format!("{} -> {}: {}", addr(p.initiator), addr(p.target), p.error.as_deref().unwrap_or("failed")))
        .collect();
    let mut reasons = Vec::new();
    for n in &lost {
        reasons.push(format!("node lost: {n}"));
    }
    for f in &failed {
        reasons.push(format!("pair failed: {f}"));
    }
    for n in &nodes_out {
        reasons.push(format!(
            "node {}: {} of its {} links are outliers (median {:.3} GB/s vs the cluster's {:.3}): its NIC, cable, switch port or UCX setup",
            n.address,
            n.outlier_links,
            n.links,
            n.median_gbps,
            med.unwrap_or(0.0)
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
    let grade = if !lost.is_empty() || !failed.is_empty() || !nodes_out.is_empty() || ok.is_empty() {
        "FAIL"
    } else if !links.is_empty() {
        "WARN"
    } else {
        "PASS"
    };
    if ok.is_empty() {
        reasons.push("no pair was measured".into());
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
        reasons,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(n: usize, rate: impl Fn(usize, usize) -> f64) -> MatrixResult {
        let nodes = (0..n)
            .map(|i| MatrixNode {
                address: format!("10.0.0.{}", i + 1),
                hostname: None,
                node_id: format!("n{i}"),
                doctor: None,
                lost: None,
            })
            .collect();
        let mut pairs = Vec::new();
        for i in 0..n {
            for j in 0..n {
                if i != j {
                    pairs.push(PairResult {
                        initiator: i,
                        target: j,
                        round: 0,
                        status: "ok".into(),
                        gbps_by_size: vec![],
                        gbps: Some(rate(i, j)),
                        carried_by: None,
                        sweep_grade: None,
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
            rounds: vec![],
            round_seconds: vec![],
            pairs,
            seconds: None,
            verdict: None,
            errors: vec![],
        }
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
        r.pairs[0].status = "failed".into();
        r.pairs[0].gbps = None;
        r.pairs[0].error = Some("peer closed".into());
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
}
