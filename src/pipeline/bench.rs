//! The load generator behind `kvprobe bench`: streamed `/v1/completions`
//! requests timed the way vLLM's bench times them
//! (`../shared/reference/pipeline.md` section 3), at a fixed concurrency
//! (closed loop) or at a request rate (open loop, optionally capped).
//!
//! Prompts are arrays of random token ids of exactly the asked length (the
//! OpenAI completions API and vLLM accept token ids), so the prompt length
//! needs no tokenizer and the server's `usage` confirms it. Output length is
//! `max_tokens` with `ignore_eos`; the server's `usage.completion_tokens`
//! is the count used.
//!
//! Timing of one request: `start` just before the request is written; TTFT
//! at the first SSE event carrying `choices`; every later such event adds a
//! gap to ITL; latency at the last one. A request fails, and is counted as
//! failed with its reason, on a non-200 status, an `error` event, a stream
//! cut before `[DONE]`, no token at all, or the per-request timeout.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::http::{BaseUrl, Conn, HttpError, SseParser, secs};
use super::metrics::RequestRecord;
use super::result::Mode;
use crate::rng::SplitMix64;

/// The first token id used in random prompts: ids below are often special tokens.
pub const VOCAB_LO: u32 = 1000;

/// What each request asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    /// Model name sent.
    pub model: String,
    /// Shape.
    pub mode: Mode,
    /// Prompt tokens.
    pub itl: u64,
    /// Output tokens (`max_tokens`).
    pub otl: u64,
    /// Seed of the prompts.
    pub seed: u64,
    /// Token ids are drawn from [VOCAB_LO, vocab).
    pub vocab: u32,
}

impl Workload {
    /// Output tokens per request after the mode: prefill-only asks for one.
    pub fn output_len(&self) -> u64 {
        if self.mode == Mode::PrefillOnly { 1 } else { self.otl }
    }

    /// The token ids of request `i` of point `point`: random per request, or
    /// one shared prompt for decode-only.
    pub fn prompt(&self, point: u64, i: u64) -> Vec<u32> {
        let key = if self.mode == Mode::DecodeOnly { 0 } else { (point << 40) ^ (i + 1) };
        let mut r = SplitMix64::new(self.seed ^ key.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let span = u64::from(self.vocab.saturating_sub(VOCAB_LO).max(1));
        (0..self.itl).map(|_| VOCAB_LO + (r.next_u64() % span) as u32).collect()
    }

    /// The JSON body of request `i`, with `max_tokens` output tokens.
    pub fn body(&self, point: u64, i: u64, max_tokens: u64) -> Vec<u8> {
        serde_json::json!({
            "model": self.model,
            "prompt": self.prompt(point, i),
            "max_tokens": max_tokens,
            "ignore_eos": true,
            "stream": true,
            "stream_options": {"include_usage": true},
        })
        .to_string()
        .into_bytes()
    }
}

/// One request's outcome.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    /// Its number in the point (send order).
    pub index: u64,
    /// What vLLM's metrics need.
    pub record: RequestRecord,
    /// The stream had no `usage`: output tokens counted as chunks.
    pub usage_missing: bool,
}

/// Connections to one endpoint, kept alive between requests.
#[derive(Debug)]
pub struct Client {
    /// Where requests go.
    pub base: BaseUrl,
    /// Per-request limit.
    pub timeout: Duration,
    pool: Mutex<Vec<Conn>>,
    /// Connections opened (for the record).
    pub opened: AtomicU64,
}

impl Client {
    /// A client with an empty pool.
    pub fn new(base: BaseUrl, timeout: Duration) -> Client {
        Client { base, timeout, pool: Mutex::new(Vec::new()), opened: AtomicU64::new(0) }
    }

    fn take(&self) -> Option<Conn> {
        self.pool.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }

    fn give(&self, c: Conn) {
        self.pool.lock().unwrap_or_else(|p| p.into_inner()).push(c);
    }

    async fn open(&self) -> Result<Conn, HttpError> {
        self.opened.fetch_add(1, Ordering::Relaxed);
        Conn::open(&self.base).await
    }

    /// Sends one streamed completion of `prompt_len` tokens; `t0` is the
    /// start of the point (for `start_time_s`). The prompt length stays the
    /// asked one unless the server's usage says otherwise (as vLLM, which
    /// takes it from its dataset).
    pub async fn complete(&self, body: &[u8], prompt_len: u64, t0: Instant) -> Outcome {
        let start = Instant::now();
        let mut out = Outcome::default();
        out.record.start_time_s = secs(t0, start);
        out.record.prompt_len = prompt_len;
        match tokio::time::timeout(self.timeout, self.stream(body, start, &mut out)).await {
            Ok(Ok(())) => out.record.success = true,
            Ok(Err(e)) => {
                out.record.success = false;
                out.record.error = e;
            }
            Err(_) => {
                out.record.success = false;
                out.record.error = format!("timed out after {:.0} s (--timeout)", self.timeout.as_secs_f64());
            }
        }
        out
    }

    async fn stream(&self, body: &[u8], start: Instant, out: &mut Outcome) -> Result<(), String> {
        // a kept-alive connection the server closed meanwhile fails on the write
        // or before any response byte: retry once on a fresh one (nothing else
        // is retried: the request may have reached the server)
        let (mut conn, mut resp) = match self.take() {
            Some(mut c) => match c.send(&self.base, "POST", "/v1/completions", Some(body)).await {
                Ok(r) => (c, r),
                Err(e) if !stale(&e) => return Err(format!("{e}")),
                Err(_) => {
                    let mut c = self.open().await.map_err(|e| format!("cannot connect: {e}"))?;
                    let r =
                        c.send(&self.base, "POST", "/v1/completions", Some(body)).await.map_err(|e| format!("{e}"))?;
                    (c, r)
                }
            },
            None => {
                let mut c = self.open().await.map_err(|e| format!("cannot connect: {e}"))?;
                let r = c.send(&self.base, "POST", "/v1/completions", Some(body)).await.map_err(|e| format!("{e}"))?;
                (c, r)
            }
        };
        if resp.status != 200 {
            let b = resp.read_all(&mut conn.io, 64 * 1024).await.unwrap_or_default();
            if resp.reusable() {
                self.give(conn);
            }
            return Err(format!("HTTP {}: {}", resp.status, error_message(&b)));
        }
        let mut sse = SseParser::default();
        let mut chunks = 0u64;
        let mut last = start;
        let mut done = false;
        let mut usage: Option<(u64, u64)> = None;
        loop {
            let piece = match resp.next_piece(&mut conn.io).await {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(e) => return Err(format!("{e} after {chunks} chunks")),
            };
            let now = Instant::now();
            for data in sse.feed(&piece).map_err(|e| format!("{e} after {chunks} chunks"))? {
                if data.trim() == "[DONE]" {
                    done = true;
                    continue;
                }
                let v: StreamChunk =
                    serde_json::from_str(&data).map_err(|e| format!("bad JSON in the stream ({e}): {data:.120}"))?;
                if let Some(err) = v.error {
                    return Err(format!("error in the stream: {}", error_message(err.to_string().as_bytes())));
                }
                if v.choices.is_some_and(|c| !c.is_empty()) {
                    if chunks == 0 {
                        out.record.ttft_s = secs(start, now);
                    } else {
                        out.record.itl_s.push(secs(last, now));
                    }
                    last = now;
                    chunks += 1;
                }
                if let Some(Usage { prompt_tokens: Some(p), completion_tokens: Some(c) }) = v.usage {
                    usage = Some((p, c));
                }
            }
        }
        if !done {
            return Err(format!("the stream ended without [DONE] after {chunks} chunks"));
        }
        if chunks == 0 {
            return Err("the stream carried no token".into());
        }
        out.record.latency_s = secs(start, last);
        match usage {
            Some((p, c)) => {
                out.record.prompt_len = p;
                out.record.output_tokens = c;
            }
            None => {
                out.usage_missing = true;
                out.record.output_tokens = chunks;
            }
        }
        if resp.reusable() {
            self.give(conn);
        }
        Ok(())
    }
}

/// Whether an error on a reused connection means the server had closed it
/// (nothing of a response was read).
fn stale(e: &HttpError) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset};
    match e {
        HttpError::Closed(what) => what.starts_with("before the response"),
        HttpError::Io(io) => matches!(io.kind(), BrokenPipe | ConnectionReset | ConnectionAborted),
        _ => false,
    }
}

/// What the client reads of a stream event; everything else (the text
/// included) is skipped without being stored.
#[derive(Debug, serde::Deserialize)]
struct StreamChunk {
    #[serde(default)]
    choices: Option<Vec<serde::de::IgnoredAny>>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Debug, serde::Deserialize)]
struct Usage {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
}

/// The message of an OpenAI/vLLM error body, or the body itself (shortened).
pub fn error_message(b: &[u8]) -> String {
    let text = String::from_utf8_lossy(b);
    let v: Option<Value> = serde_json::from_slice(b).ok();
    let msg = v.as_ref().and_then(|v| {
        v.get("message")
            .or_else(|| v.pointer("/error/message"))
            .or_else(|| v.get("detail"))
            .and_then(Value::as_str)
            .map(str::to_string)
    });
    let m = msg.unwrap_or_else(|| text.trim().to_string());
    let m = if m.is_empty() { "(empty body)".to_string() } else { m };
    if m.chars().count() > 300 { format!("{}...", m.chars().take(300).collect::<String>()) } else { m }
}

/// How a point loads the server.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Load {
    /// `n` requests in flight at all times.
    Concurrency(u64),
    /// Requests at `rate`/s with Gamma(burstiness) gaps, at most `cap` in flight.
    Rate {
        /// Requests per second.
        rate: f64,
        /// Gamma shape (1 = Poisson).
        burstiness: f64,
        /// Most requests in flight.
        cap: Option<u64>,
    },
}

/// How long a point runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Length {
    /// This many requests.
    Prompts(u64),
    /// Send for this long (a rate point sends ceil(rate x seconds) requests).
    Seconds(f64),
}

/// A finished (or interrupted) point.
#[derive(Debug, Clone)]
pub struct PointRun {
    /// Every request sent, in completion order.
    pub outcomes: Vec<Outcome>,
    /// Wall time from the first send to the last completion, seconds.
    pub duration_s: f64,
    /// Requests sent.
    pub sent: u64,
    /// Stopped early by an interrupt.
    pub interrupted: bool,
}

/// Runs one point. `on_done` is called after each request (progress);
/// `stop` is polled every 50 ms and abandons in-flight requests when true.
pub async fn run_point(
    client: Arc<Client>,
    w: Arc<Workload>,
    point: u64,
    load: Load,
    length: Length,
    on_done: &(dyn Fn(&Outcome) + Sync),
    stop: &(dyn Fn() -> bool + Sync),
) -> Result<PointRun, String> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Outcome>();
    let max_tokens = w.output_len();
    let t0 = Instant::now();
    let sent = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    let expected: Option<u64>;
    match load {
        Load::Concurrency(n) => {
            let (limit, until) = match length {
                Length::Prompts(p) => (p, None),
                Length::Seconds(s) => (u64::MAX, Some(t0 + Duration::from_secs_f64(s))),
            };
            expected = (limit != u64::MAX).then_some(limit);
            for _ in 0..n.min(limit) {
                let (client, w, tx, sent) = (client.clone(), w.clone(), tx.clone(), sent.clone());
                tasks.push(tokio::spawn(async move {
                    loop {
                        if until.is_some_and(|u| Instant::now() >= u) {
                            break;
                        }
                        let i = sent.fetch_add(1, Ordering::SeqCst);
                        if i >= limit {
                            sent.fetch_sub(1, Ordering::SeqCst);
                            break;
                        }
                        let body = w.body(point, i, max_tokens);
                        let mut o = client.complete(&body, w.itl, t0).await;
                        o.index = i;
                        if tx.send(o).is_err() {
                            break;
                        }
                    }
                }));
            }
        }
        Load::Rate { rate, burstiness, cap } => {
            let n = match length {
                Length::Prompts(p) => p,
                Length::Seconds(s) => (rate * s).ceil().max(1.0) as u64,
            };
            expected = Some(n);
            let times = super::arrivals::schedule(n as usize, rate, burstiness, w.seed ^ (point + 1))?;
            let sem = cap.map(|c| Arc::new(tokio::sync::Semaphore::new(c.min(1 << 20) as usize)));
            let (client, w, tx, sent) = (client.clone(), w.clone(), tx.clone(), sent.clone());
            tasks.push(tokio::spawn(async move {
                // the requests belong to this task: aborting it (stop) drops the set,
                // which aborts every request still running
                let mut running = tokio::task::JoinSet::new();
                for (i, t) in times.into_iter().enumerate() {
                    tokio::time::sleep_until((t0 + Duration::from_secs_f64(t)).into()).await;
                    let (client, w, tx, sem) = (client.clone(), w.clone(), tx.clone(), sem.clone());
                    sent.fetch_add(1, Ordering::SeqCst);
                    running.spawn(async move {
                        let _permit = match &sem {
                            Some(s) => s.clone().acquire_owned().await.ok(),
                            None => None,
                        };
                        let body = w.body(point, i as u64, max_tokens);
                        let mut o = client.complete(&body, w.itl, t0).await;
                        o.index = i as u64;
                        let _ = tx.send(o);
                    });
                    while running.try_join_next().is_some() {}
                }
                while running.join_next().await.is_some() {}
            }));
        }
    }
    drop(tx);
    let mut outcomes = Vec::new();
    let mut interrupted = false;
    loop {
        if let Some(n) = expected {
            if outcomes.len() as u64 >= n {
                break;
            }
        }
        // checked on every pass: at load, completions arrive more often than the timeout
        if stop() {
            interrupted = true;
            break;
        }
        match tokio::time::timeout(Duration::from_millis(50), rx.recv()).await {
            Ok(Some(o)) => {
                on_done(&o);
                outcomes.push(o);
            }
            Ok(None) => break, // every sender is gone: all requests are in
            Err(_) => {}
        }
    }
    outcomes.sort_by_key(|o| o.index);
    let duration_s = secs(t0, Instant::now());
    for t in &tasks {
        t.abort();
    }
    Ok(PointRun { outcomes, duration_s, sent: sent.load(Ordering::SeqCst), interrupted })
}

/// Failure reasons with counts (the reason's variable tail, such as a chunk count, trimmed).
pub fn error_counts(outcomes: &[Outcome]) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for o in outcomes.iter().filter(|o| !o.record.success) {
        *m.entry(error_kind(&o.record.error)).or_insert(0) += 1;
    }
    m
}

/// A failure reason without its variable parts: numbers become `N`
/// (except an `HTTP 500` status), a trailing ` after N chunks` is dropped.
pub fn error_kind(e: &str) -> String {
    let e = e.split(" after ").next().unwrap_or(e);
    let (head, rest) = match e.strip_prefix("HTTP ") {
        Some(r) if r.len() >= 4 && r.as_bytes()[..3].iter().all(u8::is_ascii_digit) => e.split_at(8),
        _ => ("", e),
    };
    let mut out = head.to_string();
    // None: not in a number; Some(keep): inside one, kept when it is part of
    // a word or flag (`--fault-500-every`)
    let (mut run, mut prev): (Option<bool>, char) = (None, ' ');
    for c in rest.chars() {
        if c.is_ascii_digit() {
            let keep = *run.get_or_insert(prev.is_ascii_alphabetic() || prev == '-' || prev == '_');
            if keep {
                out.push(c);
            } else if prev.is_ascii_digit() {
                // the rest of a replaced number
            } else {
                out.push('N');
            }
        } else {
            run = None;
            out.push(c);
        }
        prev = c;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_kinds_merge_numbers_but_keep_the_status() {
        assert_eq!(
            error_kind("HTTP 500: injected fault: request 15 (--fault-500-every 5)"),
            "HTTP 500: injected fault: request N (--fault-500-every N)"
        );
        assert_eq!(error_kind("connection closed inside a chunk after 1 chunks"), "connection closed inside a chunk");
        assert_eq!(error_kind("timed out after 600 s (--timeout)"), "timed out");
    }

    fn w(mode: Mode) -> Workload {
        Workload { model: "m".into(), mode, itl: 50, otl: 7, seed: 3, vocab: 32000 }
    }

    #[test]
    fn prompts_have_exact_lengths_and_the_modes_differ() {
        let m = w(Mode::Mixed);
        let (a, b) = (m.prompt(0, 0), m.prompt(0, 1));
        assert_eq!(a.len(), 50);
        assert_ne!(a, b);
        assert_eq!(a, m.prompt(0, 0));
        assert_ne!(a, m.prompt(1, 0));
        assert!(a.iter().all(|t| (VOCAB_LO..32000).contains(t)));
        let d = w(Mode::DecodeOnly);
        assert_eq!(d.prompt(0, 0), d.prompt(3, 9));
        assert_eq!(w(Mode::PrefillOnly).output_len(), 1);
        let v: Value = serde_json::from_slice(&m.body(0, 0, 7)).unwrap();
        assert_eq!(v["prompt"].as_array().unwrap().len(), 50);
        assert_eq!(v["max_tokens"], 7);
        assert_eq!(v["ignore_eos"], true);
        assert_eq!(v["stream_options"]["include_usage"], true);
    }

    #[test]
    fn error_messages_are_read_out_of_bodies() {
        assert_eq!(error_message(br#"{"object":"error","message":"boom","code":500}"#), "boom");
        assert_eq!(error_message(br#"{"error":{"message":"nope"}}"#), "nope");
        assert_eq!(error_message(b"plain"), "plain");
        assert_eq!(error_message(b""), "(empty body)");
    }
}
