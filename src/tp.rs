//! TP-sharded KV transfers (`kvprobe tp`, docs/TP.md): a P_tp -> D_tp
//! layout run as the concurrent rank pairs vLLM's NixlConnector uses. Every
//! decode rank d reads its head slice from prefill rank d / (D_tp / P_tp);
//! one process per rank (a shared `__target` per prefill rank, a `sweep
//! --peer --sync` per decode rank); every timed loop starts on one barrier.
//!
//! This module is the pure part: which rank reads from which ([`rank_map`]),
//! the result structs (`tp.json`, schema [`SCHEMA`]), lining up the ranks'
//! rows into points with aggregate and per-pair figures ([`points`]), the
//! verdict and the table. `cmd/tp.rs` runs the processes.

use serde::{Deserialize, Serialize};

use crate::kv::{Geometry, KvError, KvSpec};
use crate::nixl::XferOp;
use crate::report::schema::{Row, SweepResults};
use crate::report::style::{self, Style};
use crate::verdict::Grade;

/// `tp.json`'s schema id.
pub const SCHEMA: &str = "kvprobe.tp/1";

/// One decode rank and the prefill rank it reads from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RankPair {
    /// Decode rank.
    pub d_rank: u32,
    /// Prefill rank it reads (d_rank / (D_tp / P_tp); MLA: d_rank % P_tp).
    pub p_rank: u32,
    /// Global KV heads it reads: first, count.
    pub heads: (u32, u32),
    /// Bytes of one block's slice it reads per region.
    pub slice_bytes: u64,
    /// Where in the prefill block the slice starts.
    pub slice_offset_bytes: u64,
}

/// Every decode rank's geometry for `spec` (its `d_rank` is ignored), and
/// the pairs. Decode ranks may read the same bytes of a prefill rank
/// (replicated heads; MLA with D_tp > P_tp): their timed requests do so, as
/// in vLLM, and their checked requests use an area of the cache each.
pub fn rank_map(spec: &KvSpec) -> Result<(Vec<Geometry>, Vec<RankPair>), KvError> {
    let mut geos = Vec::new();
    let mut pairs = Vec::new();
    for d in 0..spec.d_tp {
        let g = KvSpec { d_rank: d, ..spec.clone() }.geometry()?;
        pairs.push(RankPair {
            d_rank: d,
            p_rank: g.p_rank,
            heads: (g.d_first_head, g.d_local_heads),
            slice_bytes: g.d_block_bytes,
            slice_offset_bytes: g.slice_offset_bytes,
        });
        geos.push(g);
    }
    Ok((geos, pairs))
}

/// Decode ranks per prefill rank (0 for a prefill rank nobody reads).
pub fn sessions_per_prefill(p_tp: u32, pairs: &[RankPair]) -> Vec<u32> {
    (0..p_tp).map(|p| pairs.iter().filter(|x| x.p_rank == p).count() as u32).collect()
}

/// The whole run (`tp.json`, rewritten as it goes).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TpResult {
    /// Always [`SCHEMA`].
    pub schema: String,
    /// kvprobe version.
    pub kvprobe_version: String,
    /// The command line (tokens redacted).
    pub command_line: Vec<String>,
    /// `running`, `complete`, `failed`, `interrupted`.
    pub status: String,
    /// UTC, RFC 3339.
    pub started_at: String,
    /// UTC, RFC 3339 (last rewrite).
    pub updated_at: String,
    /// Host name.
    pub host: String,
    /// Model name.
    pub model: String,
    /// Prefill TP size.
    pub p_tp: u32,
    /// Decode TP size.
    pub d_tp: u32,
    /// Prefill rank -> GPU (None: host memory).
    pub prefill_gpus: Vec<Option<u32>>,
    /// Decode rank -> GPU (None: host memory).
    pub decode_gpus: Vec<Option<u32>>,
    /// Who reads from whom (at the first block size; each round has its own).
    pub pairs: Vec<RankPair>,
    /// The arguments every rank's sweep got (besides its own rank, GPUs, peer and folder).
    pub sweep_args: Vec<String>,
    /// One round per (backend, block size): every rank at once.
    pub rounds: Vec<TpRound>,
    /// Set at the end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<TpVerdict>,
    /// What went wrong.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

/// All ranks of one backend and block size, run together.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TpRound {
    /// Backend (CLI name).
    pub backend: String,
    /// Tokens per KV block.
    pub block_tokens: u32,
    /// Who reads from whom at this block size.
    pub pairs: Vec<RankPair>,
    /// Folder of this round, relative to tp.json.
    pub dir: String,
    /// Per decode rank.
    pub ranks: Vec<TpRank>,
    /// Per (operation, ISL): the ranks lined up.
    pub points: Vec<TpPoint>,
    /// Timed loops the barrier started (every rank at once).
    pub barriers: u64,
    /// Wall time of the round, seconds.
    pub seconds: f64,
    /// Why the round stopped early.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One decode rank's sweep.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TpRank {
    /// Decode rank.
    pub d_rank: u32,
    /// Prefill rank it read.
    pub p_rank: u32,
    /// Its sweep's folder, relative to tp.json.
    pub results: String,
    /// How its sweep ended (`exit status 0`, `killed by signal 9`...).
    pub exit: String,
    /// Its sweep's status (complete, failed...), when results.json was read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Its sweep's verdict without the bandwidth check: transport,
    /// notifications, NUMA, data (each sweep judges its rate as if it had
    /// the path alone, which a TP run's pairs do not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grade: Option<Grade>,
    /// Its sweep's own grade, bandwidth check included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sweep_grade: Option<Grade>,
    /// The WARN/FAIL reasons behind `grade`, and the bandwidth check's words.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub findings: Vec<String>,
    /// What one pair alone should reach (its sweep's yardstick), GB/s, and its basis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_gbps: Option<f64>,
    /// Where that figure comes from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_basis: Option<String>,
    /// What carried its rows (transport lanes, distinct).
    #[serde(default)]
    pub lanes: Vec<String>,
    /// Its rows failing a data check or missing notifications.
    pub bad_rows: u64,
    /// Its sweep's errors.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

/// One (operation, ISL) with every rank's row.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TpPoint {
    /// Operation.
    pub op: XferOp,
    /// Input length, tokens.
    pub isl: u64,
    /// Per rank.
    pub pairs: Vec<TpPair>,
    /// Ranks that measured it (a point misses ranks when a run stopped).
    pub ranks: u32,
    /// Bytes of one request, all ranks together.
    pub request_bytes: u64,
    /// All ranks' bytes over the union of their timed loops, GB/s (1e9 B/s).
    pub aggregate_gbps: f64,
    /// The sum of the pairs' own rates, GB/s.
    pub sum_gbps: f64,
    /// The slowest pair, GB/s.
    pub min_gbps: f64,
    /// The fastest pair, GB/s.
    pub max_gbps: f64,
    /// Time all loops ran together / time any ran (1: perfectly concurrent).
    pub overlap: f64,
    /// A TP request is in once its slowest rank's part is: the largest
    /// per-rank median request time, ms.
    pub slowest_p50_ms: f64,
}

/// One rank's row of a point.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TpPair {
    /// Decode rank.
    pub d_rank: u32,
    /// Prefill rank.
    pub p_rank: u32,
    /// Its rate over its timed loop, GB/s.
    pub gbps: f64,
    /// Bytes of its part of one request.
    pub request_bytes: u64,
    /// Requests timed.
    pub requests: u64,
    /// Median request time, ms.
    pub p50_ms: f64,
    /// Its loop's start and end, CLOCK_MONOTONIC ns.
    pub window_ns: [u64; 2],
    /// The row passed its data checks and notification count.
    pub verified: bool,
}

/// The run's verdict.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TpVerdict {
    /// Worst grade.
    pub grade: Grade,
    /// Why, one line each.
    pub reasons: Vec<String>,
}

/// Lines up the ranks' KV rows (same operation and ISL) into points. Rows
/// without a timed loop's window (not a TP run) are left out.
pub fn points(ranks: &[(RankPair, Vec<Row>)]) -> Vec<TpPoint> {
    let mut keys: Vec<(XferOp, u64)> = Vec::new();
    for (_, rows) in ranks {
        for r in rows {
            if let Some(kv) = &r.kv {
                if r.window_ns.is_some() && !keys.contains(&(r.op, kv.isl)) {
                    keys.push((r.op, kv.isl));
                }
            }
        }
    }
    keys.into_iter()
        .map(|(op, isl)| {
            let pairs: Vec<TpPair> = ranks
                .iter()
                .filter_map(|(p, rows)| {
                    let r = rows.iter().find(|r| r.op == op && r.kv.as_ref().is_some_and(|k| k.isl == isl))?;
                    let kv = r.kv.as_ref()?;
                    Some(TpPair {
                        d_rank: p.d_rank,
                        p_rank: p.p_rank,
                        gbps: r.gbps,
                        request_bytes: r.size_bytes,
                        requests: r.iterations,
                        p50_ms: kv.ttft_added_ms_p50,
                        window_ns: r.window_ns?,
                        verified: r.verified && r.notifs_received == r.notifs_expected,
                    })
                })
                .collect();
            point_of(op, isl, pairs)
        })
        .collect()
}

/// A point's aggregate figures from its pairs.
pub fn point_of(op: XferOp, isl: u64, pairs: Vec<TpPair>) -> TpPoint {
    let start = pairs.iter().map(|p| p.window_ns[0]).min().unwrap_or(0);
    let end = pairs.iter().map(|p| p.window_ns[1]).max().unwrap_or(0);
    let all_in = pairs.iter().map(|p| p.window_ns[0]).max().unwrap_or(0);
    let first_out = pairs.iter().map(|p| p.window_ns[1]).min().unwrap_or(0);
    let span = end.saturating_sub(start);
    let bytes: f64 = pairs.iter().map(|p| p.request_bytes as f64 * p.requests as f64).sum();
    let gb = |f: fn(f64, f64) -> f64, init: f64| pairs.iter().map(|p| p.gbps).fold(init, f);
    TpPoint {
        op,
        isl,
        ranks: pairs.len() as u32,
        request_bytes: pairs.iter().map(|p| p.request_bytes).sum(),
        aggregate_gbps: if span > 0 { bytes / span as f64 } else { 0.0 },
        sum_gbps: pairs.iter().map(|p| p.gbps).sum(),
        min_gbps: if pairs.is_empty() { 0.0 } else { gb(f64::min, f64::INFINITY) },
        max_gbps: gb(f64::max, 0.0),
        overlap: if span > 0 { first_out.saturating_sub(all_in) as f64 / span as f64 } else { 0.0 },
        slowest_p50_ms: pairs.iter().map(|p| p.p50_ms).fold(0.0, f64::max),
        pairs,
    }
}

/// Thresholds of the TP verdict.
pub const MIN_OVERLAP: f64 = 0.8;
/// The slowest pair below this fraction of the fastest is an imbalance.
pub const MIN_BALANCE: f64 = 0.7;

/// FAIL: a rank's sweep failed, a row failed its checks, or its own verdict
/// is FAIL; WARN: the loops did not run together (overlap), one pair is much
/// slower than the others, or a rank's verdict warns; else PASS.
pub fn judge(r: &TpResult) -> TpVerdict {
    let mut grade = Grade::Pass;
    let mut reasons = Vec::new();
    let mut worse = |g: Grade, why: String, grade: &mut Grade| {
        if g > *grade {
            *grade = g;
        }
        reasons.push(format!("{g}: {why}"));
    };
    if r.rounds.is_empty() {
        worse(Grade::Fail, "nothing was measured".into(), &mut grade);
    }
    if let Some(why) = shared_gpus(r) {
        worse(Grade::Warn, why, &mut grade);
    }
    for round in &r.rounds {
        let what = format!("{} block {}", round.backend, round.block_tokens);
        let mut shared: Vec<(String, Grade, Vec<u32>)> = Vec::new();
        if let Some(e) = &round.error {
            worse(Grade::Fail, format!("{what}: {e}"), &mut grade);
        }
        for k in &round.ranks {
            if k.status.as_deref() != Some("complete") {
                worse(
                    Grade::Fail,
                    format!(
                        "{what}: decode rank {} {} ({})",
                        k.d_rank,
                        match k.status.as_deref() {
                            None => "left no results".to_string(),
                            Some("running") => "died mid-run (its results.json still says running)".to_string(),
                            Some(s) => format!("ended {s}"),
                        },
                        k.exit
                    ),
                    &mut grade,
                );
            }
            if k.bad_rows > 0 {
                worse(
                    Grade::Fail,
                    format!("{what}: decode rank {}: {} rows failed their data checks", k.d_rank, k.bad_rows),
                    &mut grade,
                );
            }
            for f in &k.findings {
                let g = if f.starts_with("FAIL") {
                    Grade::Fail
                } else if f.starts_with("WARN") {
                    Grade::Warn
                } else {
                    continue;
                };
                match shared.iter_mut().find(|(x, _, _)| x == f) {
                    Some((_, _, ranks)) => ranks.push(k.d_rank),
                    None => shared.push((f.clone(), g, vec![k.d_rank])),
                }
            }
        }
        // the same finding on several ranks is said once
        for (f, g, ranks) in shared.drain(..) {
            let text = f.split_once(": ").map_or(f.as_str(), |x| x.1);
            let list = ranks.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
            let who = if ranks.len() > 1 { format!("decode ranks {list}") } else { format!("decode rank {list}") };
            worse(g, format!("{what}: {who}: {text}"), &mut grade);
        }
        for p in &round.points {
            let at = format!("{what} {} ISL {}", p.op, p.isl);
            if (p.ranks as usize) < round.ranks.len() {
                worse(Grade::Fail, format!("{at}: {} of {} ranks measured it", p.ranks, round.ranks.len()), &mut grade);
            }
            if p.overlap < MIN_OVERLAP {
                worse(
                    Grade::Warn,
                    format!(
                        "{at}: the ranks' timed loops overlapped for {:.0}% of the span (under {:.0}%): the aggregate is not of concurrent transfers; longer --duration",
                        p.overlap * 100.0,
                        MIN_OVERLAP * 100.0
                    ),
                    &mut grade,
                );
            }
            if p.max_gbps > 0.0 && p.min_gbps < MIN_BALANCE * p.max_gbps {
                let slow = p.pairs.iter().min_by(|a, b| a.gbps.total_cmp(&b.gbps));
                worse(
                    Grade::Warn,
                    format!(
                        "{at}: pair d{}<-p{} ran at {:.2} GB/s, under {:.0}% of the fastest pair's {:.2}: the TP request waits for it",
                        slow.map_or(0, |s| s.d_rank),
                        slow.map_or(0, |s| s.p_rank),
                        p.min_gbps,
                        MIN_BALANCE * 100.0,
                        p.max_gbps
                    ),
                    &mut grade,
                );
            }
        }
    }
    if reasons.is_empty() {
        reasons.push("PASS: every rank pair measured, checked and concurrent, none far behind the others".into());
    }
    TpVerdict { grade, reasons }
}

/// Ranks that share a GPU, said as a finding: the GPU time-slices the
/// processes' copies, so the figures are not those of a layout with a GPU
/// per rank (vLLM's). None when every rank has a GPU of its own (or host memory).
pub fn shared_gpus(r: &TpResult) -> Option<String> {
    let mut count: std::collections::BTreeMap<u32, u32> = std::collections::BTreeMap::new();
    let used: Vec<u32> = r.pairs.iter().map(|p| p.p_rank).collect();
    for (p, g) in r.prefill_gpus.iter().enumerate() {
        if let Some(g) = g.filter(|_| used.contains(&(p as u32))) {
            *count.entry(g).or_default() += 1;
        }
    }
    for g in r.decode_gpus.iter().flatten() {
        *count.entry(*g).or_default() += 1;
    }
    let shared: Vec<String> =
        count.iter().filter(|(_, n)| **n > 1).map(|(g, n)| format!("GPU {g} holds {n} ranks")).collect();
    (!shared.is_empty()).then(|| {
        format!(
            "{}: a GPU time-slices the copies of the processes sharing it, so these figures are not those of a layout with a GPU per rank (vLLM's); they show function and per-descriptor costs",
            shared.join(", ")
        )
    })
}

/// A rank's summary from its sweep's results.
pub fn rank_of(pair: &RankPair, results: &str, exit: String, r: Option<&SweepResults>) -> TpRank {
    let mut lanes: Vec<String> = Vec::new();
    let mut bad_rows = 0;
    let mut grade = None;
    let mut findings: Vec<String> = Vec::new();
    let mut expected: Option<(f64, String)> = None;
    if let Some(v) = r.and_then(|r| r.verdict.as_ref()) {
        let mut g = Grade::Pass;
        for p in &v.paths {
            for why in p.reasons.iter().filter(|x| x.grade > Grade::Pass) {
                let line = if why.check == "bandwidth" {
                    format!("(alone-pair yardstick, not graded) {}", why.text)
                } else {
                    g = g.max(why.grade);
                    format!("{}: {}", why.grade, why.text)
                };
                if !findings.contains(&line) {
                    findings.push(line);
                }
            }
            if let Some(e) = &p.expected {
                if expected.as_ref().is_none_or(|x| e.gbps > x.0) {
                    expected = Some((e.gbps, e.basis.clone()));
                }
            }
        }
        grade = Some(g);
    }
    if let Some(r) = r {
        for row in &r.rows {
            if !row.verified || row.notifs_received != row.notifs_expected {
                bad_rows += 1;
            }
            for l in row.transport.iter().flat_map(|t| t.lanes.iter()) {
                if !lanes.contains(l) {
                    lanes.push(l.clone());
                }
            }
        }
    }
    TpRank {
        d_rank: pair.d_rank,
        p_rank: pair.p_rank,
        results: results.to_string(),
        exit,
        status: r.map(|r| format!("{:?}", r.status).to_ascii_lowercase()),
        grade,
        sweep_grade: r.and_then(|r| r.verdict.as_ref()).map(|v| v.grade),
        findings,
        expected_gbps: expected.as_ref().map(|e| e.0),
        expected_basis: expected.map(|e| e.1),
        lanes,
        bad_rows,
        errors: r.map(|r| r.errors.clone()).unwrap_or_default(),
    }
}

/// The run as tables: per round, the points (aggregate and per-pair
/// figures) and the ranks; then the verdict.
pub fn render(r: &TpResult, s: Style) -> String {
    let gpu = |g: &Option<u32>| g.map_or("host".to_string(), |g| format!("gpu{g}"));
    let mut out = format!(
        "kvprobe tp on {} - {} P_tp {} -> D_tp {} - prefill ranks on {} - decode ranks on {}\n",
        r.host,
        r.model,
        r.p_tp,
        r.d_tp,
        r.prefill_gpus.iter().map(gpu).collect::<Vec<_>>().join(","),
        r.decode_gpus.iter().map(gpu).collect::<Vec<_>>().join(","),
    );
    out.push_str(&s.dim("GB/s = 1e9 bytes/s; aggregate = every rank's bytes / the span of their timed loops\n"));
    for round in &r.rounds {
        out.push_str(&format!(
            "\n{} - block {} tokens - {} barriers\n",
            round.backend, round.block_tokens, round.barriers
        ));
        let header = [
            "op",
            "ISL",
            "request",
            "aggregate GB/s",
            "sum of pairs",
            "slowest pair",
            "fastest pair",
            "overlap",
            "slowest p50 ms",
        ];
        let mut t = style::table();
        t.set_header(header);
        for p in &round.points {
            t.add_row(vec![
                p.op.to_string(),
                p.isl.to_string(),
                crate::units::Bytes(p.request_bytes).to_string(),
                format!("{:.2}", p.aggregate_gbps),
                format!("{:.2}", p.sum_gbps),
                format!("{:.2}", p.min_gbps),
                format!("{:.2}", p.max_gbps),
                format!("{:.0}%", p.overlap * 100.0),
                format!("{:.3}", p.slowest_p50_ms),
            ]);
        }
        style::align_numbers(&mut t, &header, &["op"]);
        out.push_str(&t.to_string());
        out.push('\n');
        let header = ["pair", "GPUs", "GB/s per point", "carried by", "checks", "sweep"];
        let mut t = style::table();
        t.set_header(header);
        for k in &round.ranks {
            let rates: Vec<String> = round
                .points
                .iter()
                .filter_map(|p| p.pairs.iter().find(|x| x.d_rank == k.d_rank).map(|x| format!("{:.2}", x.gbps)))
                .collect();
            let gpus = format!(
                "{} <- {}",
                r.decode_gpus.get(k.d_rank as usize).map_or("?".into(), gpu),
                r.prefill_gpus.get(k.p_rank as usize).map_or("?".into(), gpu)
            );
            t.add_row(vec![
                format!("d{} <- p{}", k.d_rank, k.p_rank),
                gpus,
                rates.join(" "),
                k.lanes.join(" "),
                if k.bad_rows == 0 { s.good("ok") } else { s.bad(&format!("{} bad rows", k.bad_rows)) },
                match k.grade {
                    Some(g) => s.grade(g),
                    None => s.bad(k.status.as_deref().unwrap_or("no results")),
                },
            ]);
        }
        style::align_numbers(&mut t, &header, &["pair", "GPUs", "GB/s per point", "carried by", "checks", "sweep"]);
        out.push_str(&t.to_string());
        out.push('\n');
        if let Some(e) = &round.error {
            out.push_str(&s.bad(&format!("stopped: {e}\n")));
        }
    }
    if let Some(v) = &r.verdict {
        out.push_str(&format!("\nverdict: {}\n", s.grade(v.grade)));
        for why in &v.reasons {
            out.push_str(&format!("  {why}\n"));
        }
    }
    for e in &r.errors {
        out.push_str(&s.bad(&format!("error: {e}\n")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::{KvDtype, Model, SlidingBlocks};

    fn spec(model: &str, p: u32, d: u32) -> KvSpec {
        let model = Model::preset(model).unwrap();
        let layout = model.default_layout();
        KvSpec {
            model,
            dtype: KvDtype::Bf16,
            layout,
            block_tokens: 16,
            p_tp: p,
            d_tp: d,
            d_rank: 0,
            sliding: SlidingBlocks::All,
        }
    }

    #[test]
    fn decode_ranks_read_their_own_slices_of_their_prefill_rank() {
        // Llama-3.1-8B: 8 KV heads; 2 -> 4: d0,d1 <- p0 (heads 0-1, 2-3), d2,d3 <- p1
        let (geos, pairs) = rank_map(&spec("Llama-3.1-8B", 2, 4)).unwrap();
        assert_eq!(geos.len(), 4);
        let got: Vec<(u32, u32, (u32, u32))> = pairs.iter().map(|p| (p.d_rank, p.p_rank, p.heads)).collect();
        assert_eq!(got, vec![(0, 0, (0, 2)), (1, 0, (2, 2)), (2, 1, (4, 2)), (3, 1, (6, 2))]);
        assert_eq!(pairs[1].slice_offset_bytes, pairs[1].slice_bytes, "the second half of p0's block");
        assert_eq!(pairs[0].slice_offset_bytes, 0);
        // 4 -> 4: rank i reads all of rank i
        let (_, pairs) = rank_map(&spec("Llama-3.1-8B", 4, 4)).unwrap();
        assert!(pairs.iter().all(|p| p.p_rank == p.d_rank && p.slice_offset_bytes == 0));
    }

    #[test]
    fn ranks_that_share_bytes_are_mapped_as_vllm_maps_them() {
        // 8 KV heads over 16 decode ranks: each head read by two decode ranks
        let (_, pairs) = rank_map(&spec("Llama-3.1-8B", 8, 16)).unwrap();
        assert_eq!(pairs[0].heads, pairs[1].heads);
        assert_eq!(sessions_per_prefill(8, &pairs), vec![2; 8]);
        // MLA, D_tp > P_tp: decode rank d reads prefill rank d % P_tp, the whole latent
        let (_, pairs) = rank_map(&spec("DeepSeek-V3", 2, 4)).unwrap();
        let got: Vec<u32> = pairs.iter().map(|p| p.p_rank).collect();
        assert_eq!(got, vec![0, 1, 0, 1]);
        // MLA, P_tp > D_tp: prefill ranks nobody reads
        let (_, pairs) = rank_map(&spec("DeepSeek-V3", 4, 2)).unwrap();
        assert_eq!(sessions_per_prefill(4, &pairs), vec![1, 1, 0, 0]);
        // and what vLLM refuses is refused
        assert!(rank_map(&spec("Llama-3.1-8B", 4, 2)).is_err());
    }

    fn pair(d: u32, gbps: f64, w: [u64; 2]) -> TpPair {
        TpPair {
            d_rank: d,
            p_rank: d / 2,
            gbps,
            request_bytes: 1_000_000,
            requests: 100,
            p50_ms: 1.0 + f64::from(d),
            window_ns: w,
            verified: true,
        }
    }

    #[test]
    fn aggregate_is_every_ranks_bytes_over_the_span_of_their_loops() {
        // two ranks, 100 x 1 MB each; loops 0..1 s and 0.5..1.5 s
        let p = point_of(
            XferOp::Read,
            1000,
            vec![pair(0, 0.1, [0, 1_000_000_000]), pair(1, 0.1, [500_000_000, 1_500_000_000])],
        );
        assert!((p.aggregate_gbps - 0.2 / 1.5).abs() < 1e-12, "{}", p.aggregate_gbps);
        assert!((p.overlap - 0.5 / 1.5).abs() < 1e-12);
        assert_eq!(p.request_bytes, 2_000_000);
        assert!((p.sum_gbps - 0.2).abs() < 1e-12);
        assert_eq!(p.slowest_p50_ms, 2.0);
        // loops that never met
        let p = point_of(XferOp::Read, 1, vec![pair(0, 1.0, [0, 10]), pair(1, 1.0, [20, 30])]);
        assert_eq!(p.overlap, 0.0);
    }

    fn result(points: Vec<TpPoint>) -> TpResult {
        let rank = |d: u32| TpRank {
            d_rank: d,
            p_rank: d / 2,
            results: String::new(),
            exit: "exit status 0".into(),
            status: Some("complete".into()),
            grade: Some(Grade::Pass),
            sweep_grade: Some(Grade::Pass),
            findings: vec![],
            expected_gbps: None,
            expected_basis: None,
            lanes: vec![],
            bad_rows: 0,
            errors: vec![],
        };
        TpResult {
            schema: SCHEMA.into(),
            kvprobe_version: String::new(),
            command_line: vec![],
            status: "complete".into(),
            started_at: String::new(),
            updated_at: String::new(),
            host: "h".into(),
            model: "m".into(),
            p_tp: 1,
            d_tp: 2,
            prefill_gpus: vec![None],
            decode_gpus: vec![None, None],
            pairs: vec![],
            sweep_args: vec![],
            rounds: vec![TpRound {
                backend: "nixl-ucx".into(),
                block_tokens: 16,
                pairs: vec![],
                dir: String::new(),
                ranks: vec![rank(0), rank(1)],
                points,
                barriers: 2,
                seconds: 1.0,
                error: None,
            }],
            verdict: None,
            errors: vec![],
        }
    }

    #[test]
    fn the_verdict_names_a_slow_pair_loops_apart_and_a_failed_rank() {
        let together = [0, 1_000_000_000];
        let ok = point_of(XferOp::Read, 1000, vec![pair(0, 1.0, together), pair(1, 0.9, together)]);
        assert_eq!(judge(&result(vec![ok.clone()])).grade, Grade::Pass);
        let slow = point_of(XferOp::Read, 1000, vec![pair(0, 1.0, together), pair(1, 0.5, together)]);
        let v = judge(&result(vec![slow]));
        assert_eq!(v.grade, Grade::Warn);
        assert!(v.reasons.iter().any(|r| r.contains("pair d1<-p0 ran at 0.50")), "{:?}", v.reasons);
        let apart = point_of(XferOp::Read, 1000, vec![pair(0, 1.0, [0, 10]), pair(1, 1.0, [5, 15])]);
        let v = judge(&result(vec![apart]));
        assert!(v.reasons.iter().any(|r| r.contains("overlapped for 33%")), "{:?}", v.reasons);
        let mut r = result(vec![ok]);
        r.rounds[0].ranks[1].status = Some("failed".into());
        r.rounds[0].ranks[1].bad_rows = 1;
        let v = judge(&r);
        assert_eq!(v.grade, Grade::Fail);
        assert!(v.reasons.iter().any(|x| x.contains("decode rank 1 ended failed")), "{:?}", v.reasons);
        assert!(v.reasons.iter().any(|x| x.contains("1 rows failed their data checks")));
        // ranks sharing a GPU are said (WARN), ranks on GPUs of their own are not
        let mut g = result(vec![point_of(XferOp::Read, 1000, vec![pair(0, 1.0, together), pair(1, 0.9, together)])]);
        g.pairs = vec![
            RankPair { d_rank: 0, p_rank: 0, heads: (0, 4), slice_bytes: 1, slice_offset_bytes: 0 },
            RankPair { d_rank: 1, p_rank: 0, heads: (4, 4), slice_bytes: 1, slice_offset_bytes: 1 },
        ];
        g.prefill_gpus = vec![Some(0)];
        g.decode_gpus = vec![Some(1), Some(2)];
        assert_eq!(judge(&g).grade, Grade::Pass);
        g.decode_gpus = vec![Some(0), Some(0)];
        let v = judge(&g);
        assert_eq!(v.grade, Grade::Warn);
        assert!(v.reasons.iter().any(|x| x.contains("GPU 0 holds 3 ranks")), "{:?}", v.reasons);
        // a point only one rank reached
        let half = point_of(XferOp::Read, 1000, vec![pair(0, 1.0, together)]);
        assert_eq!(judge(&result(vec![half])).grade, Grade::Fail);
        assert!(render(&r, Style::plain()).contains("d1 <- p0"));
    }
}
