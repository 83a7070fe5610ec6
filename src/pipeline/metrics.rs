//! Serving metrics exactly as vLLM's `vllm bench serve` defines them
//! (`vllm/benchmarks/serve.py`, `calculate_metrics`; `../shared/reference/pipeline.md` section 3),
//! so a `kvprobe bench` result reads like vLLM's and existing tooling reads it.
//!
//! Per request (successful ones only):
//! - TTFT: request start to the first chunk that carries text;
//! - TPOT = (E2EL - TTFT) / (output tokens - 1), for requests with more than one output token
//!   (goodput counts a one-token request as TPOT 0);
//! - ITL: every gap between later chunks, all requests pooled (a chunk of several tokens is one gap);
//! - E2EL: request start to the last chunk.
//!
//! Run totals: throughputs divide by the wall time of the whole run (ramp-up and drain
//! included); `request_goodput` counts requests meeting every given SLO. Summary statistics are
//! NumPy's: mean, median, population standard deviation, percentiles with linear interpolation;
//! an empty list gives 0, as vLLM's `np.mean(x or 0)` does. Times in the JSON are milliseconds.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What the client saw of one request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// The request completed with a well-formed stream.
    pub success: bool,
    /// Why it failed (empty on success).
    #[serde(default)]
    pub error: String,
    /// Prompt tokens (the server's `usage.prompt_tokens`).
    pub prompt_len: u64,
    /// Output tokens (the server's `usage.completion_tokens`).
    pub output_tokens: u64,
    /// Time to first token, seconds.
    pub ttft_s: f64,
    /// Gaps between later chunks, seconds.
    #[serde(default)]
    pub itl_s: Vec<f64>,
    /// Request start to the last chunk, seconds.
    pub latency_s: f64,
    /// Start, seconds since the run began.
    pub start_time_s: f64,
}

/// Service-level objectives for goodput (`--goodput ttft:MS tpot:MS e2el:MS`), milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Slo {
    /// TTFT at most this.
    pub ttft_ms: Option<f64>,
    /// TPOT at most this.
    pub tpot_ms: Option<f64>,
    /// E2EL at most this.
    pub e2el_ms: Option<f64>,
}

impl Slo {
    /// Parses `ttft:500 tpot:50` (also comma-separated); unknown keys and bad numbers are errors.
    pub fn parse(s: &str) -> Result<Slo, String> {
        let mut slo = Slo::default();
        for item in s.split([' ', ',']).filter(|x| !x.is_empty()) {
            let (k, v) = item.split_once(':').ok_or_else(|| format!("goodput item {item:?} is not METRIC:MS"))?;
            let ms: f64 = v
                .parse()
                .ok()
                .filter(|x: &f64| x.is_finite() && *x >= 0.0)
                .ok_or_else(|| format!("goodput {k}: {v:?} is not a number of milliseconds"))?;
            match k {
                "ttft" => slo.ttft_ms = Some(ms),
                "tpot" => slo.tpot_ms = Some(ms),
                "e2el" => slo.e2el_ms = Some(ms),
                _ => return Err(format!("goodput metric {k:?}: use ttft, tpot or e2el")),
            }
        }
        if slo == Slo::default() {
            return Err("goodput needs at least one of ttft:MS, tpot:MS, e2el:MS".into());
        }
        Ok(slo)
    }
}

/// The latency metrics a result can summarise.
pub const METRICS: &[&str] = &["ttft", "tpot", "itl", "e2el"];

/// One sweep point's results, with vLLM's key names.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BenchMetrics {
    /// Wall time of the run, seconds.
    pub duration: f64,
    /// Successful requests.
    pub completed: u64,
    /// Failed requests (never dropped silently).
    pub failed: u64,
    /// Σ prompt tokens of successful requests.
    pub total_input_tokens: u64,
    /// Σ output tokens of successful requests.
    pub total_output_tokens: u64,
    /// completed / duration.
    pub request_throughput: f64,
    /// Requests meeting every SLO / duration (null without `--goodput`).
    pub request_goodput: Option<f64>,
    /// Σ output tokens / duration.
    pub output_throughput: f64,
    /// (Σ input + Σ output tokens) / duration.
    pub total_token_throughput: f64,
    /// Most chunks (token arrivals) in any one-second bucket of the run.
    pub max_output_tokens_per_s: f64,
    /// Most requests in flight at one moment.
    pub max_concurrent_requests: u64,
    /// `mean_ttft_ms`, `median_ttft_ms`, `std_ttft_ms`, `p99_ttft_ms`, ... for the chosen metrics.
    #[serde(flatten)]
    pub latency_ms: BTreeMap<String, f64>,
}

/// NumPy's `percentile` (linear interpolation) of sorted values; 0 when empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p / 100.0).clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
}

/// vLLM's key for a percentile: `p99`, `p99.9`.
pub fn percentile_key(p: f64) -> String {
    if p.fract() == 0.0 { format!("p{}", p as i64) } else { format!("p{p}") }
}

fn summary(name: &str, values_s: &[f64], percentiles: &[f64], out: &mut BTreeMap<String, f64>) {
    let mut v: Vec<f64> = values_s.iter().map(|x| x * 1000.0).collect();
    v.sort_by(f64::total_cmp);
    let n = v.len() as f64;
    let mean = if v.is_empty() { 0.0 } else { v.iter().sum::<f64>() / n };
    let std = if v.is_empty() { 0.0 } else { (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt() };
    out.insert(format!("mean_{name}_ms"), mean);
    out.insert(format!("median_{name}_ms"), percentile(&v, 50.0));
    out.insert(format!("std_{name}_ms"), std);
    for &p in percentiles {
        out.insert(format!("{}_{name}_ms", percentile_key(p)), percentile(&v, p));
    }
}

/// The metrics of one run. `metrics` names the latency metrics to summarise
/// (vLLM's default: ttft, tpot, itl); `percentiles` (default 99).
pub fn calculate(
    records: &[RequestRecord],
    duration_s: f64,
    metrics: &[&str],
    percentiles: &[f64],
    goodput: Option<&Slo>,
) -> BenchMetrics {
    let ok: Vec<&RequestRecord> = records.iter().filter(|r| r.success).collect();
    let per = |x: f64| if duration_s > 0.0 { x / duration_s } else { 0.0 };
    let ttft: Vec<f64> = ok.iter().map(|r| r.ttft_s).collect();
    let tpot_of =
        |r: &RequestRecord| (r.output_tokens > 1).then(|| (r.latency_s - r.ttft_s) / (r.output_tokens - 1) as f64);
    let tpot: Vec<f64> = ok.iter().filter_map(|r| tpot_of(r)).collect();
    let itl: Vec<f64> = ok.iter().flat_map(|r| r.itl_s.iter().copied()).collect();
    let e2el: Vec<f64> = ok.iter().map(|r| r.latency_s).collect();
    let total_in: u64 = ok.iter().map(|r| r.prompt_len).sum();
    let total_out: u64 = ok.iter().map(|r| r.output_tokens).sum();
    let good = goodput.map(|slo| {
        let meets = |r: &&&RequestRecord| {
            slo.ttft_ms.is_none_or(|m| r.ttft_s * 1000.0 <= m)
                && slo.tpot_ms.is_none_or(|m| tpot_of(r).unwrap_or(0.0) * 1000.0 <= m)
                && slo.e2el_ms.is_none_or(|m| r.latency_s * 1000.0 <= m)
        };
        per(ok.iter().filter(|r| meets(r)).count() as f64)
    });
    let mut latency_ms = BTreeMap::new();
    for &m in metrics {
        let values = match m {
            "ttft" => &ttft,
            "tpot" => &tpot,
            "itl" => &itl,
            "e2el" => &e2el,
            _ => continue,
        };
        summary(m, values, percentiles, &mut latency_ms);
    }
    BenchMetrics {
        duration: duration_s,
        completed: ok.len() as u64,
        failed: (records.len() - ok.len()) as u64,
        total_input_tokens: total_in,
        total_output_tokens: total_out,
        request_throughput: per(ok.len() as f64),
        request_goodput: good,
        output_throughput: per(total_out as f64),
        total_token_throughput: per((total_in + total_out) as f64),
        max_output_tokens_per_s: peak_chunks_per_second(&ok),
        max_concurrent_requests: peak_concurrency(&ok),
        latency_ms,
    }
}

/// Most chunk arrivals in one one-second bucket (buckets counted from the
/// first request's start).
fn peak_chunks_per_second(ok: &[&RequestRecord]) -> f64 {
    let Some(t0) = ok.iter().map(|r| r.start_time_s).min_by(f64::total_cmp) else { return 0.0 };
    let mut buckets: BTreeMap<u64, u64> = BTreeMap::new();
    for r in ok {
        let mut t = r.start_time_s + r.ttft_s;
        *buckets.entry(((t - t0).max(0.0)) as u64).or_default() += 1;
        for gap in &r.itl_s {
            t += gap;
            *buckets.entry(((t - t0).max(0.0)) as u64).or_default() += 1;
        }
    }
    buckets.values().copied().max().unwrap_or(0) as f64
}

/// vLLM's `max_concurrent_requests`: the most requests active in any
/// one-second bucket (buckets counted from the first start; a request counts
/// in every bucket from the one it started in to the one it ended in). Not
/// the instantaneous peak: two requests that never overlap but share a
/// second count as 2. See [`peak_in_flight`] for the instantaneous one.
fn peak_concurrency(ok: &[&RequestRecord]) -> u64 {
    let Some(t0) = ok.iter().map(|r| r.start_time_s).min_by(f64::total_cmp) else { return 0 };
    let end = ok.iter().map(|r| r.start_time_s + r.latency_s).fold(t0, f64::max);
    let buckets = ((end - t0).ceil().max(0.0) as usize).saturating_add(1).min(1 << 24);
    let mut count = vec![0u64; buckets];
    for r in ok {
        let first = (r.start_time_s - t0).max(0.0) as usize;
        let last = (r.start_time_s + r.latency_s - t0).max(0.0) as usize;
        for c in count.iter_mut().take(last.saturating_add(1)).skip(first) {
            *c += 1;
        }
    }
    count.into_iter().max().unwrap_or(0)
}

/// Most requests in flight at one instant (successful ones): a sweep over
/// start (+1) and end (-1) events, ends before starts at the same instant.
pub fn peak_in_flight(records: &[RequestRecord]) -> u64 {
    let mut ev: Vec<(f64, i64)> = records
        .iter()
        .filter(|r| r.success)
        .flat_map(|r| [(r.start_time_s, 1), (r.start_time_s + r.latency_s, -1)])
        .collect();
    ev.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let (mut now, mut peak) = (0i64, 0i64);
    for (_, d) in ev {
        now += d;
        peak = peak.max(now);
    }
    peak as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(start: f64, ttft: f64, itl: &[f64], out: u64) -> RequestRecord {
        RequestRecord {
            success: true,
            error: String::new(),
            prompt_len: 100,
            output_tokens: out,
            ttft_s: ttft,
            itl_s: itl.to_vec(),
            latency_s: ttft + itl.iter().sum::<f64>(),
            start_time_s: start,
        }
    }

    #[test]
    fn percentiles_match_numpy() {
        let v = [1.0, 2.0, 3.0, 4.0];
        // numpy.percentile([1,2,3,4], [50, 99, 0, 100]) = 2.5, 3.97, 1, 4
        assert_eq!(percentile(&v, 50.0), 2.5);
        assert!((percentile(&v, 99.0) - 3.97).abs() < 1e-12);
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&v, 100.0), 4.0);
        assert_eq!(percentile(&[], 99.0), 0.0);
        assert_eq!(percentile_key(99.0), "p99");
        assert_eq!(percentile_key(99.9), "p99.9");
    }

    #[test]
    fn vllm_definitions_on_a_hand_computed_run() {
        // two requests of 5 output tokens (4 gaps) and a failure
        let a = req(0.0, 0.100, &[0.010, 0.010, 0.010, 0.010], 5); // e2el 0.140, tpot 0.010
        let b = req(0.5, 0.200, &[0.020, 0.020, 0.020, 0.020], 5); // e2el 0.280, tpot 0.020
        let bad = RequestRecord { success: false, error: "HTTP 500".into(), ..RequestRecord::default() };
        let rs = [a, b, bad];
        let m = calculate(
            &rs,
            2.0,
            &["ttft", "tpot", "itl", "e2el"],
            &[99.0],
            Some(&Slo::parse("ttft:150 tpot:15").unwrap()),
        );
        assert_eq!((m.completed, m.failed), (2, 1), "the failure is counted, not dropped");
        assert_eq!((m.total_input_tokens, m.total_output_tokens), (200, 10));
        assert_eq!(m.request_throughput, 1.0);
        assert_eq!(m.output_throughput, 5.0);
        assert_eq!(m.total_token_throughput, 105.0);
        assert_eq!(m.request_goodput, Some(0.5), "only the first meets both SLOs");
        let k = |s: &str| m.latency_ms[s];
        assert!((k("mean_ttft_ms") - 150.0).abs() < 1e-9);
        assert!((k("median_ttft_ms") - 150.0).abs() < 1e-9);
        assert!((k("std_ttft_ms") - 50.0).abs() < 1e-9, "population std");
        assert!((k("p99_ttft_ms") - 199.0).abs() < 1e-9);
        assert!((k("mean_tpot_ms") - 15.0).abs() < 1e-9);
        assert!((k("mean_itl_ms") - 15.0).abs() < 1e-9, "8 gaps pooled");
        assert!((k("mean_e2el_ms") - 210.0).abs() < 1e-9);
        // vLLM counts requests per one-second bucket: 0-0.14 s and 0.5-0.78 s share second 0
        assert_eq!(m.max_concurrent_requests, 2, "vLLM's bucketed definition");
        assert_eq!(peak_in_flight(&rs), 1, "0-0.14 s and 0.5-0.78 s never overlap");
        assert_eq!(m.max_output_tokens_per_s, 10.0, "all 10 chunks land in the first second");
        // JSON keys are vLLM's
        let j = serde_json::to_value(&m).unwrap();
        for key in ["completed", "failed", "request_goodput", "p99_ttft_ms", "median_tpot_ms", "std_itl_ms"] {
            assert!(j.get(key).is_some(), "{key} in {j}");
        }
    }

    #[test]
    fn concurrency_buckets_follow_vllm() {
        // 3 s of back-to-back requests of 0.9 s: never two at once, but seconds 0..2
        // each hold two (vLLM's bucketed max_concurrent_requests)
        let rs: Vec<RequestRecord> = (0..3).map(|i| req(i as f64 * 0.9, 0.1, &[0.8], 2)).collect();
        let m = calculate(&rs, 2.7, &["ttft"], &[99.0], None);
        assert_eq!(m.max_concurrent_requests, 2);
        assert_eq!(peak_in_flight(&rs), 1);
        let overlap = [req(0.0, 0.1, &[0.5], 2), req(0.2, 0.1, &[0.5], 2), req(0.3, 0.1, &[0.5], 2)];
        assert_eq!(peak_in_flight(&overlap), 3);
    }

    #[test]
    fn one_token_requests_have_no_tpot_but_count_as_zero_for_goodput() {
        let one = req(0.0, 0.050, &[], 1);
        let m = calculate(&[one], 1.0, &["tpot"], &[99.0], Some(&Slo { tpot_ms: Some(1.0), ..Slo::default() }));
        assert_eq!(m.latency_ms["mean_tpot_ms"], 0.0, "no TPOT samples: 0, as vLLM");
        assert_eq!(m.request_goodput, Some(1.0));
    }

    #[test]
    fn overlapping_requests_and_bad_slos() {
        let a = req(0.0, 1.0, &[1.0], 2);
        let b = req(0.5, 1.0, &[1.0], 2);
        let c = req(2.0, 0.1, &[], 1); // starts exactly when a ends: not overlapping
        let rs = [a, b, c];
        let m = calculate(&rs, 3.0, METRICS, &[50.0, 99.9], None);
        // second 2 holds a's and b's ends and c's start: 3 in vLLM's buckets
        assert_eq!(m.max_concurrent_requests, 3);
        assert_eq!(peak_in_flight(&rs), 2, "c starts exactly when a ends");
        assert_eq!(m.request_goodput, None);
        assert!(m.latency_ms.contains_key("p99.9_e2el_ms"));
        assert!(Slo::parse("ttft").is_err());
        assert!(Slo::parse("latency:5").is_err());
        assert!(Slo::parse("ttft:-1").is_err());
        assert!(Slo::parse("").is_err());
        assert_eq!(Slo::parse("ttft:500,e2el:2000").unwrap().e2el_ms, Some(2000.0));
    }
}
