//! The emulator's timing model (docs/EMULATOR.md): how long a request waits,
//! prefills, moves its KV cache and decodes, in real time, on engine
//! threads that sleep instead of computing.
//!
//! - **fixed**: every request on its own: the first token after `ttft_ms`,
//!   then one every `tpot_ms`; no batching, no queueing. For checking a load
//!   generator against known numbers.
//! - **collocated**: `replicas` engines; each runs steps like vLLM's
//!   scheduler with chunked prefill: a step decodes one token for every
//!   running sequence and prefills up to `max_batched_tokens` prompt tokens
//!   (decode tokens count against that budget), at most `max_num_seqs`
//!   sequences. Step time = decode part (if any sequence decodes)
//!   `decode_base_ms + decode_per_seq_us x running` plus prefill part (if
//!   any prompt tokens) `prefill_base_ms + prefill_per_token_us x tokens`. A
//!   sequence whose prompt completes in a step emits its first token at the
//!   end of that step. Prefill and decode interfere, as in a real engine.
//! - **pd**: `p_num` prefill engines (prefill steps only) and `d_num`
//!   decode engines (decode steps only). After its prefill a request's KV
//!   cache moves to the least-loaded decode engine over that engine's
//!   inbound link, one transfer at a time in FIFO order: time = latency +
//!   bytes / bandwidth, bytes from the model's KV geometry, bandwidth fixed
//!   or read off a kvprobe sweep's GB/s-vs-size curve at that size. The
//!   request joins the decode batch when its KV has arrived; its first
//!   token comes at the end of the first decode step it is in (the prefill
//!   engine's token is not streamed, as with vLLM's NixlConnector behind a
//!   PD proxy).
//!
//! Tensor parallelism scales step time only when asked ([`TpScaling`]):
//! every step cost of an engine of TP `tp` is multiplied by Amdahl's
//! `(1 - alpha) + alpha x tp_ref / tp`, with `alpha` 0 (the default) leaving
//! every step as given.
//!
//! Engines are OS threads with precise sleeps (`recv_timeout`), so step
//! times are honoured to well under a millisecond; tokens go to the HTTP
//! side through channels.

use std::collections::{BinaryHeap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

/// What the engine tells the HTTP side about a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Token number `n` (1-based) was generated.
    Token(u64),
}

/// A request handed to the engines.
#[derive(Debug)]
pub struct Job {
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Tokens to generate (at least 1).
    pub max_tokens: u64,
    /// Where tokens go; a closed channel (client gone) cancels the job.
    pub tx: tokio::sync::mpsc::UnboundedSender<Event>,
}

/// Batch timing of one engine.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct StepTiming {
    /// Fixed cost of a step that prefills, ms.
    pub prefill_base_ms: f64,
    /// Cost per prompt token prefilled, microseconds.
    pub prefill_per_token_us: f64,
    /// Fixed cost of a step that decodes, ms.
    pub decode_base_ms: f64,
    /// Cost per sequence decoded in the step, microseconds.
    pub decode_per_seq_us: f64,
    /// Most sequences in a batch.
    pub max_num_seqs: u64,
    /// Most tokens (prompt + decode) in one step.
    pub max_batched_tokens: u64,
}

impl StepTiming {
    /// Step duration for `decoding` sequences and `prefill_tokens` prompt tokens.
    pub fn step(&self, decoding: u64, prefill_tokens: u64) -> Duration {
        let mut ms = 0.0;
        if decoding > 0 {
            ms += self.decode_base_ms + self.decode_per_seq_us * decoding as f64 / 1000.0;
        }
        if prefill_tokens > 0 {
            ms += self.prefill_base_ms + self.prefill_per_token_us * prefill_tokens as f64 / 1000.0;
        }
        // at most a day per step: the CLI bounds the costs; this keeps any input finite
        Duration::from_secs_f64((ms / 1000.0).clamp(0.0, 86_400.0))
    }
}

impl StepTiming {
    /// The same engine with every step cost (prefill and decode, base and
    /// per-token/per-sequence) multiplied by `f`; capacity is unchanged.
    pub fn scaled(&self, f: f64) -> StepTiming {
        StepTiming {
            prefill_base_ms: self.prefill_base_ms * f,
            prefill_per_token_us: self.prefill_per_token_us * f,
            decode_base_ms: self.decode_base_ms * f,
            decode_per_seq_us: self.decode_per_seq_us * f,
            ..*self
        }
    }
}

/// How tensor parallelism scales an engine's step time: Amdahl's law with
/// the parallel fraction `alpha` of a step, relative to the TP `tp_ref` at
/// which the step costs were given. A model, not a measurement.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TpScaling {
    /// Parallel fraction of a step, 0..=1 (0: TP changes no timing).
    pub alpha: f64,
    /// The TP the step costs stand for.
    pub tp_ref: u32,
}

impl TpScaling {
    /// TP changes no timing.
    pub const OFF: TpScaling = TpScaling { alpha: 0.0, tp_ref: 1 };

    /// The step-time factor of an engine of TP `tp`: `(1 - alpha) + alpha x
    /// tp_ref / tp`; exactly 1 when `alpha` is 0 or `tp` is `tp_ref`.
    pub fn factor(&self, tp: u32) -> f64 {
        if self.alpha == 0.0 || tp == self.tp_ref {
            return 1.0;
        }
        (1.0 - self.alpha) + self.alpha * f64::from(self.tp_ref) / f64::from(tp.max(1))
    }
}

/// One kind of engine's TP and step-time factor, for reporting.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TpFactor {
    /// `collocated`, `prefill` or `decode`.
    pub engines: &'static str,
    /// Their TP.
    pub tp: u32,
    /// What their step costs are multiplied by.
    pub factor: f64,
}

/// How many bytes one request's KV cache is.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KvBytes {
    /// A flat number of bytes per prompt token.
    PerToken(u64),
    /// Exact per length from the model's KV geometry (sliding-window layers
    /// move only their window's blocks; every block is whole).
    Geometry {
        /// The per-rank geometry (TP 1: the whole model's KV).
        #[serde(skip)]
        geometry: Box<crate::kv::Geometry>,
        /// Layer kinds of the model.
        #[serde(skip)]
        kinds: Vec<crate::kv::LayerKind>,
        /// Model KV bytes per token, for reading.
        bytes_per_token: u64,
    },
}

impl KvBytes {
    /// Bytes a request of `tokens` prompt tokens moves.
    pub fn of(&self, tokens: u64) -> u64 {
        match self {
            KvBytes::PerToken(b) => b * tokens,
            KvBytes::Geometry { geometry, kinds, .. } => geometry.request(kinds, tokens).bytes,
        }
    }
}

/// The KV transfer between a prefill and a decode engine.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KvLink {
    /// Where the geometry came from (model name and layout).
    pub geometry: String,
    /// Bytes per request.
    pub bytes: KvBytes,
    /// (bytes, GB/s) points, sorted by size; one point = a fixed rate.
    pub curve: Vec<(u64, f64)>,
    /// Where the rate came from (`--kv-gbps` or a results file).
    pub source: String,
    /// Fixed cost per transfer, microseconds.
    pub latency_us: f64,
}

impl KvLink {
    /// GB/s at `bytes`: linear in log(size) between measured points, flat past the ends.
    pub fn gbps_at(&self, bytes: u64) -> f64 {
        let c = &self.curve;
        if c.is_empty() {
            return 0.0;
        }
        let x = (bytes.max(1) as f64).ln();
        if bytes <= c[0].0 {
            return c[0].1;
        }
        for w in c.windows(2) {
            let ((s0, g0), (s1, g1)) = (w[0], w[1]);
            if bytes <= s1 {
                let (x0, x1) = ((s0 as f64).ln(), (s1 as f64).ln());
                let t = if x1 > x0 { (x - x0) / (x1 - x0) } else { 1.0 };
                return g0 + (g1 - g0) * t;
            }
        }
        c[c.len() - 1].1
    }

    /// How long one request's KV takes to move.
    pub fn transfer_time(&self, prompt_tokens: u64) -> Duration {
        let bytes = self.bytes.of(prompt_tokens);
        let gbps = self.gbps_at(bytes);
        let s = self.latency_us / 1e6 + if gbps > 0.0 { bytes as f64 / (gbps * 1e9) } else { 0.0 };
        Duration::from_secs_f64(s.clamp(0.0, 86_400.0))
    }
}

/// The whole emulated deployment.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "mode", rename_all = "lowercase")]
pub enum Topology {
    /// Independent requests with fixed timings.
    Fixed {
        /// Time to first token, ms.
        ttft_ms: f64,
        /// Time per later token, ms.
        tpot_ms: f64,
    },
    /// Prefill and decode share each engine's batch.
    Collocated {
        /// Engines.
        replicas: u32,
        /// TP of each engine.
        tp: u32,
        /// Their step timing at `tp_scaling.tp_ref` (as given).
        timing: StepTiming,
        /// How their TP scales it.
        tp_scaling: TpScaling,
    },
    /// Separate prefill and decode engines with a KV transfer between.
    Pd {
        /// Prefill engines.
        p_num: u32,
        /// TP of each prefill engine.
        p_tp: u32,
        /// Decode engines.
        d_num: u32,
        /// TP of each decode engine.
        d_tp: u32,
        /// Their step timing at `tp_scaling.tp_ref` (prefill engines use the
        /// prefill part, decode engines the decode part).
        timing: StepTiming,
        /// How each engine's TP scales it.
        tp_scaling: TpScaling,
        /// The KV transfer.
        kv: KvLink,
    },
}

impl Topology {
    /// Each kind of engine's TP and step-time factor (none for fixed).
    pub fn tp_factors(&self) -> Vec<TpFactor> {
        let f = |engines, tp, s: &TpScaling| TpFactor { engines, tp, factor: s.factor(tp) };
        match self {
            Topology::Fixed { .. } => Vec::new(),
            Topology::Collocated { tp, tp_scaling, .. } => vec![f("collocated", *tp, tp_scaling)],
            Topology::Pd { p_tp, d_tp, tp_scaling, .. } => {
                vec![f("prefill", *p_tp, tp_scaling), f("decode", *d_tp, tp_scaling)]
            }
        }
    }
}

/// Counters the server reports.
#[derive(Debug, Default)]
pub struct Counters {
    /// Requests accepted.
    pub accepted: AtomicU64,
    /// Requests finished (all tokens sent).
    pub finished: AtomicU64,
    /// KV transfers done (pd).
    pub kv_transfers: AtomicU64,
    /// Σ KV transfer time, microseconds (pd).
    pub kv_transfer_us: AtomicU64,
}

/// The running engines; [`Engines::submit`] routes a job.
#[derive(Debug)]
pub struct Engines {
    entry: Vec<(Sender<Job>, Arc<AtomicU64>)>,
    /// Counters for `/metrics`-like reporting.
    pub counters: Arc<Counters>,
}

impl Engines {
    /// Starts the engine threads of a topology.
    pub fn start(t: &Topology) -> std::io::Result<Engines> {
        let counters = Arc::new(Counters::default());
        let mut entry = Vec::new();
        match t {
            Topology::Fixed { ttft_ms, tpot_ms } => {
                let (tx, rx) = mpsc::channel();
                let load = Arc::new(AtomicU64::new(0));
                let (ttft, tpot) = (Duration::from_secs_f64(ttft_ms / 1e3), Duration::from_secs_f64(tpot_ms / 1e3));
                let c = counters.clone();
                let l = load.clone();
                spawn("emu-fixed", move || fixed_engine(rx, ttft, tpot, l, c))?;
                entry.push((tx, load));
            }
            Topology::Collocated { replicas, tp, timing, tp_scaling } => {
                let timing = timing.scaled(tp_scaling.factor(*tp));
                for i in 0..*replicas {
                    let (tx, rx) = mpsc::channel();
                    let load = Arc::new(AtomicU64::new(0));
                    let (c, l) = (counters.clone(), load.clone());
                    spawn(&format!("emu-engine-{i}"), move || batch_engine(rx, timing, true, true, None, l, c))?;
                    entry.push((tx, load));
                }
            }
            Topology::Pd { p_num, p_tp, d_num, d_tp, timing, tp_scaling, kv } => {
                let (prefill_timing, decode_timing) =
                    (timing.scaled(tp_scaling.factor(*p_tp)), timing.scaled(tp_scaling.factor(*d_tp)));
                let mut decode = Vec::new();
                for i in 0..*d_num {
                    let (tx, rx) = mpsc::channel::<Arrival>();
                    let load = Arc::new(AtomicU64::new(0));
                    let (c, l) = (counters.clone(), load.clone());
                    spawn(&format!("emu-decode-{i}"), move || decode_engine(rx, decode_timing, l, c))?;
                    decode.push(DecodeSink { tx: Mutex::new(tx), load, link_free: Mutex::new(Instant::now()) });
                }
                let decode = Arc::new(DecodeSinks { sinks: decode, kv: kv.clone() });
                for i in 0..*p_num {
                    let (tx, rx) = mpsc::channel();
                    let load = Arc::new(AtomicU64::new(0));
                    let (c, l, d) = (counters.clone(), load.clone(), decode.clone());
                    spawn(&format!("emu-prefill-{i}"), move || {
                        batch_engine(rx, prefill_timing, true, false, Some(d), l, c)
                    })?;
                    entry.push((tx, load));
                }
            }
        }
        Ok(Engines { entry, counters })
    }

    /// Hands a job to the least-loaded entry engine.
    pub fn submit(&self, job: Job) -> Result<(), String> {
        let (tx, load) =
            self.entry.iter().min_by_key(|(_, l)| l.load(Ordering::Relaxed)).ok_or_else(|| "no engines".to_string())?;
        load.fetch_add(1, Ordering::Relaxed);
        self.counters.accepted.fetch_add(1, Ordering::Relaxed);
        tx.send(job).map_err(|_| "the engine thread stopped".to_string())
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
    std::thread::Builder::new().name(name.to_string()).spawn(f).map(|_| ())
}

/// A sequence being served.
#[derive(Debug)]
struct Seq {
    job: Job,
    prefill_left: u64,
    emitted: u64,
}

impl Seq {
    /// Sends the next token; false when the client is gone.
    fn emit(&mut self) -> bool {
        self.emitted += 1;
        self.job.tx.send(Event::Token(self.emitted)).is_ok()
    }
}

/// The end of a decode step: every running sequence emits a token; finished
/// ones (or ones whose client is gone) leave the batch.
fn decode_step_done(running: &mut Vec<Seq>, load: &AtomicU64, c: &Counters) {
    running.retain_mut(|s| {
        let alive = s.emit();
        let done = !alive || s.emitted >= s.job.max_tokens;
        if done {
            load.fetch_sub(1, Ordering::Relaxed);
            c.finished.fetch_add(u64::from(alive), Ordering::Relaxed);
        }
        !done
    });
}

/// Sleeps until `t`, taking new jobs meanwhile. False when every sender is gone.
fn wait_until<T>(rx: &Receiver<T>, t: Instant, inbox: &mut VecDeque<T>) -> bool {
    loop {
        let now = Instant::now();
        if now >= t {
            return true;
        }
        match rx.recv_timeout(t - now) {
            Ok(j) => inbox.push_back(j),
            Err(RecvTimeoutError::Timeout) => return true,
            Err(RecvTimeoutError::Disconnected) => {
                std::thread::sleep(t.saturating_duration_since(Instant::now()));
                return false;
            }
        }
    }
}

fn fixed_engine(rx: Receiver<Job>, ttft: Duration, tpot: Duration, load: Arc<AtomicU64>, c: Arc<Counters>) {
    // (next emission time, sequence) ordered earliest first
    #[derive(Debug)]
    struct Due(Instant, u64, Seq);
    impl PartialEq for Due {
        fn eq(&self, o: &Self) -> bool {
            (self.0, self.1) == (o.0, o.1)
        }
    }
    impl Eq for Due {}
    impl PartialOrd for Due {
        fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
            Some(self.cmp(o))
        }
    }
    impl Ord for Due {
        fn cmp(&self, o: &Self) -> std::cmp::Ordering {
            (o.0, o.1).cmp(&(self.0, self.1))
        }
    }
    let mut heap: BinaryHeap<Due> = BinaryHeap::new();
    let mut serial = 0u64;
    let mut open = true;
    loop {
        let next = heap.peek().map(|d| d.0);
        let got = match next {
            None if !open => return,
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(t) => {
                let now = Instant::now();
                if t <= now {
                    Err(RecvTimeoutError::Timeout)
                } else if open {
                    rx.recv_timeout(t - now)
                } else {
                    // nothing more can arrive: just wait for the next token
                    std::thread::sleep(t - now);
                    Err(RecvTimeoutError::Timeout)
                }
            }
        };
        match got {
            Ok(job) => {
                serial += 1;
                let start = Instant::now();
                heap.push(Due(start + ttft, serial, Seq { job, prefill_left: 0, emitted: 0 }));
            }
            Err(RecvTimeoutError::Disconnected) => open = false,
            Err(RecvTimeoutError::Timeout) => {}
        }
        while heap.peek().is_some_and(|d| d.0 <= Instant::now()) {
            let Some(Due(t, id, mut s)) = heap.pop() else { break };
            let alive = s.emit();
            if !alive || s.emitted >= s.job.max_tokens {
                load.fetch_sub(1, Ordering::Relaxed);
                c.finished.fetch_add(u64::from(alive), Ordering::Relaxed);
            } else {
                heap.push(Due(t + tpot, id, s));
            }
        }
    }
}

/// A request whose KV is on its way to a decode engine.
#[derive(Debug)]
struct Arrival {
    seq: Seq,
    ready_at: Instant,
}

#[derive(Debug)]
struct DecodeSink {
    tx: Mutex<Sender<Arrival>>,
    load: Arc<AtomicU64>,
    /// When this engine's inbound link finishes its queued transfers.
    link_free: Mutex<Instant>,
}

#[derive(Debug)]
struct DecodeSinks {
    sinks: Vec<DecodeSink>,
    kv: KvLink,
}

impl DecodeSinks {
    /// Starts the KV transfer of a prefilled sequence to the least-loaded decode engine.
    fn hand_over(&self, seq: Seq, c: &Counters) {
        let Some(d) = self.sinks.iter().min_by_key(|d| d.load.load(Ordering::Relaxed)) else { return };
        d.load.fetch_add(1, Ordering::Relaxed);
        let took = self.kv.transfer_time(seq.job.prompt_tokens);
        c.kv_transfers.fetch_add(1, Ordering::Relaxed);
        c.kv_transfer_us.fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        // queue on the link and send under one lock, so a decode engine receives
        // its arrivals in the order they complete
        let mut free = d.link_free.lock().unwrap_or_else(|p| p.into_inner());
        let start = (*free).max(Instant::now());
        *free = start + took;
        let tx = d.tx.lock().unwrap_or_else(|p| p.into_inner());
        let _ = tx.send(Arrival { seq, ready_at: *free });
    }
}

/// A collocated engine (`prefill` and `decode`) or a PD prefill engine
/// (`prefill` only, handing prefilled sequences to `handoff`).
fn batch_engine(
    rx: Receiver<Job>,
    t: StepTiming,
    prefill: bool,
    decode: bool,
    handoff: Option<Arc<DecodeSinks>>,
    load: Arc<AtomicU64>,
    c: Arc<Counters>,
) {
    debug_assert!(prefill);
    let mut inbox: VecDeque<Job> = VecDeque::new();
    let mut waiting: VecDeque<Seq> = VecDeque::new();
    let mut running: Vec<Seq> = Vec::new();
    let mut open = true;
    let mut clock = Instant::now();
    loop {
        while let Ok(j) = rx.try_recv() {
            inbox.push_back(j);
        }
        for job in inbox.drain(..) {
            waiting.push_back(Seq { prefill_left: job.prompt_tokens.max(1), job, emitted: 0 });
        }
        if waiting.is_empty() && running.is_empty() {
            if !open {
                return;
            }
            match rx.recv() {
                Ok(j) => {
                    inbox.push_back(j);
                    clock = Instant::now();
                    continue;
                }
                Err(_) => return,
            }
        }
        // plan the step
        let decoding = if decode { running.len() as u64 } else { 0 };
        let mut budget = t.max_batched_tokens.saturating_sub(decoding);
        let mut prefill_tokens = 0u64;
        let mut completes = 0usize; // how many sequences at the front finish their prompt this step
        for (seqs, s) in (running.len() as u64..).zip(waiting.iter_mut()) {
            if budget == 0 || seqs >= t.max_num_seqs {
                break;
            }
            let take = s.prefill_left.min(budget);
            s.prefill_left -= take;
            budget -= take;
            prefill_tokens += take;
            if s.prefill_left == 0 {
                completes += 1;
            } else {
                break; // chunked: the rest of this prompt goes in the next step
            }
        }
        let dur = t.step(decoding, prefill_tokens);
        clock = clock.max(Instant::now()) + dur;
        if !wait_until(&rx, clock, &mut inbox) {
            open = false;
        }
        // the step is over: every decoding sequence has a new token
        if decode {
            decode_step_done(&mut running, &load, &c);
        }
        for mut s in waiting.drain(..completes) {
            match &handoff {
                Some(d) => {
                    load.fetch_sub(1, Ordering::Relaxed);
                    if !s.job.tx.is_closed() {
                        d.hand_over(s, &c);
                    }
                }
                None => {
                    let alive = s.emit();
                    if !alive || s.emitted >= s.job.max_tokens {
                        load.fetch_sub(1, Ordering::Relaxed);
                        c.finished.fetch_add(u64::from(alive), Ordering::Relaxed);
                    } else {
                        running.push(s);
                    }
                }
            }
        }
    }
}

/// A PD decode engine: sequences join when their KV has arrived.
fn decode_engine(rx: Receiver<Arrival>, t: StepTiming, load: Arc<AtomicU64>, c: Arc<Counters>) {
    let mut inbox: VecDeque<Arrival> = VecDeque::new();
    let mut pending: Vec<Arrival> = Vec::new();
    let mut running: Vec<Seq> = Vec::new();
    let mut open = true;
    let mut clock = Instant::now();
    loop {
        while let Ok(a) = rx.try_recv() {
            inbox.push_back(a);
        }
        pending.extend(inbox.drain(..));
        let now = Instant::now();
        // admit what has arrived, up to the batch limit, in arrival order
        pending.sort_by_key(|a| a.ready_at);
        while running.len() < t.max_num_seqs as usize && pending.first().is_some_and(|a| a.ready_at <= now) {
            running.push(pending.remove(0).seq);
        }
        if running.is_empty() {
            match pending.first().map(|a| a.ready_at) {
                Some(when) => {
                    if !wait_until(&rx, when, &mut inbox) {
                        open = false;
                    }
                    clock = Instant::now();
                    continue;
                }
                None if !open => return,
                None => match rx.recv() {
                    Ok(a) => {
                        inbox.push_back(a);
                        clock = Instant::now();
                        continue;
                    }
                    Err(_) => return,
                },
            }
        }
        let dur = t.step(running.len() as u64, 0);
        clock = clock.max(Instant::now()) + dur;
        if !wait_until(&rx, clock, &mut inbox) {
            open = false;
        }
        decode_step_done(&mut running, &load, &c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing() -> StepTiming {
        StepTiming {
            prefill_base_ms: 10.0,
            prefill_per_token_us: 100.0,
            decode_base_ms: 5.0,
            decode_per_seq_us: 500.0,
            max_num_seqs: 8,
            max_batched_tokens: 1000,
        }
    }

    #[test]
    fn step_time_adds_the_parts_that_run() {
        let t = timing();
        assert_eq!(t.step(0, 0), Duration::ZERO);
        assert!((t.step(4, 0).as_secs_f64() - 0.007).abs() < 1e-9);
        assert!((t.step(0, 1000).as_secs_f64() - 0.110).abs() < 1e-9);
        assert!((t.step(2, 100).as_secs_f64() - 0.026).abs() < 1e-9);
    }

    #[test]
    fn kv_rate_interpolates_in_log_size() {
        let kv = KvLink {
            geometry: "g".into(),
            bytes: KvBytes::PerToken(1000),
            curve: vec![(1_000, 1.0), (100_000, 3.0)],
            source: "s".into(),
            latency_us: 100.0,
        };
        assert_eq!(kv.gbps_at(10), 1.0);
        assert!((kv.gbps_at(10_000) - 2.0).abs() < 1e-9);
        assert_eq!(kv.gbps_at(1 << 30), 3.0);
        // 1000 tokens = 1 MB at 3 GB/s = 333 us, plus 100 us
        assert!((kv.transfer_time(1000).as_secs_f64() - (0.0001 + 1e6 / 3e9)).abs() < 1e-9);
    }

    /// Submits jobs (prompt, output tokens) 20 ms apart; the time each token arrived.
    fn run(t: &Topology, jobs: &[(u64, u64)]) -> Vec<Vec<Duration>> {
        let e = Engines::start(t).unwrap();
        let start = Instant::now();
        let mut readers = Vec::new();
        for (i, &(p, m)) in jobs.iter().enumerate() {
            std::thread::sleep(
                (start + Duration::from_millis(20 * i as u64)).saturating_duration_since(Instant::now()),
            );
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            e.submit(Job { prompt_tokens: p, max_tokens: m, tx }).unwrap();
            readers.push(std::thread::spawn(move || {
                let mut times = Vec::new();
                while let Some(Event::Token(_)) = rx.blocking_recv() {
                    times.push(start.elapsed());
                }
                times
            }));
        }
        readers.into_iter().map(|r| r.join().unwrap()).collect()
    }

    #[test]
    fn fixed_timing_is_honoured() {
        let out = run(&Topology::Fixed { ttft_ms: 30.0, tpot_ms: 5.0 }, &[(10, 4), (10, 1)]);
        assert!((out[1][0].as_secs_f64() * 1e3 - 50.0).abs() < 3.0, "{out:?}");
        assert_eq!(out[0].len(), 4);
        assert_eq!(out[1].len(), 1);
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        assert!((ms(out[0][0]) - 30.0).abs() < 3.0, "{:?}", out[0]);
        assert!((ms(out[0][3]) - 45.0).abs() < 3.0, "{:?}", out[0]);
    }

    #[test]
    fn collocated_batches_and_pd_adds_the_transfer() {
        let t = timing();
        // one engine: A prefills alone (10 + 500 x 0.1 = 60 ms); B arrives during that
        // step and prefills in the next one beside A's decode (5.5 + 60 = 65.5 ms):
        // prefill slows decode, as in a collocated engine
        let one = Topology::Collocated { replicas: 1, tp: 1, timing: t, tp_scaling: TpScaling::OFF };
        let out = run(&one, &[(500, 3), (500, 3)]);
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        assert_eq!(out[0].len(), 3);
        let near = |got: Duration, want: f64| (ms(got) - want).abs() < 5.0;
        assert!(near(out[0][0], 60.0), "{out:?}");
        assert!(near(out[0][1], 125.5) && near(out[1][0], 125.5), "{out:?}");
        // then both decode (5 + 2 x 0.5 = 6 ms), then B alone (5.5 ms)
        assert!(near(out[0][2], 131.5) && near(out[1][1], 131.5), "{out:?}");
        assert!(near(out[1][2], 137.0), "{out:?}");
        let kv = KvLink {
            geometry: "g".into(),
            bytes: KvBytes::PerToken(1_000_000),
            curve: vec![(1, 10.0)],
            source: "s".into(),
            latency_us: 0.0,
        };
        // 500 tokens = 500 MB at 10 GB/s = 50 ms after a 60 ms prefill, then a 5.5 ms decode step
        let pd = Topology::Pd { p_num: 1, p_tp: 1, d_num: 1, d_tp: 1, timing: t, tp_scaling: TpScaling::OFF, kv };
        let out = run(&pd, &[(500, 2)]);
        assert!((ms(out[0][0]) - 115.5).abs() < 5.0, "{:?}", out);
        assert!((ms(out[0][1]) - 121.0).abs() < 5.0, "{:?}", out);
    }

    #[test]
    fn tp_factor_is_amdahl_and_one_when_off() {
        for tp in [1, 2, 3, 4, 8, 64] {
            assert_eq!(TpScaling::OFF.factor(tp), 1.0);
            assert_eq!(TpScaling { alpha: 0.0, tp_ref: 4 }.factor(tp), 1.0);
            assert_eq!(TpScaling { alpha: 0.8, tp_ref: tp }.factor(tp), 1.0);
        }
        let s = TpScaling { alpha: 0.8, tp_ref: 4 };
        assert!((s.factor(2) - 1.8).abs() < 1e-12); // 0.2 + 0.8 x 4/2
        assert!((s.factor(8) - 0.6).abs() < 1e-12); // 0.2 + 0.8 x 4/8
        assert!((s.factor(1) - 3.4).abs() < 1e-12);
        let full = TpScaling { alpha: 1.0, tp_ref: 1 };
        assert!((full.factor(4) - 0.25).abs() < 1e-12); // all parallel: time / TP
        // every cost scales, capacity does not; a factor of 1 changes nothing
        let t = timing();
        let s = t.scaled(1.8);
        assert!((s.step(4, 100).as_secs_f64() - 1.8 * t.step(4, 100).as_secs_f64()).abs() < 1e-9);
        assert!((s.step(0, 1000).as_secs_f64() - 1.8 * t.step(0, 1000).as_secs_f64()).abs() < 1e-9);
        assert_eq!((s.max_num_seqs, s.max_batched_tokens), (t.max_num_seqs, t.max_batched_tokens));
        assert_eq!(t.scaled(1.0), t);
        let pd = |a| Topology::Pd {
            p_num: 1,
            p_tp: 2,
            d_num: 1,
            d_tp: 8,
            timing: t,
            tp_scaling: TpScaling { alpha: a, tp_ref: 4 },
            kv: KvLink {
                geometry: "g".into(),
                bytes: KvBytes::PerToken(1),
                curve: vec![(1, 1.0)],
                source: "s".into(),
                latency_us: 0.0,
            },
        };
        let f = pd(0.8).tp_factors();
        assert_eq!((f[0].engines, f[0].tp, f[1].engines, f[1].tp), ("prefill", 2, "decode", 8));
        assert!((f[0].factor - 1.8).abs() < 1e-12 && (f[1].factor - 0.6).abs() < 1e-12);
        assert!(pd(0.0).tp_factors().iter().all(|f| f.factor == 1.0));
    }

    #[test]
    fn an_engine_s_steps_follow_its_tp() {
        let t = timing();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let near = |got: Duration, want: f64| (ms(got) - want).abs() < 5.0;
        // collocated, all parallel, costs given at TP 1: TP 2 halves every step
        // (prefill 60 -> 30 ms, decode 5.5 -> 2.75 ms); alpha 0 keeps TP 2 at TP 1's timing
        let col =
            |tp, alpha| Topology::Collocated { replicas: 1, tp, timing: t, tp_scaling: TpScaling { alpha, tp_ref: 1 } };
        let out = run(&col(2, 1.0), &[(500, 3)]);
        assert!(near(out[0][0], 30.0) && near(out[0][2], 35.5), "{out:?}");
        let out = run(&col(2, 0.0), &[(500, 3)]);
        assert!(near(out[0][0], 60.0) && near(out[0][2], 71.0), "{out:?}");
        // PD: each side by its own TP. Costs given at TP 2, all parallel: the TP 1 prefill
        // engine takes twice as long (120 ms), the TP 4 decode engine half (decode 20 ms ->
        // 10 ms + 0.25 ms per sequence); KV 50 ms between them
        let t = StepTiming { decode_base_ms: 20.0, ..t };
        let kv = KvLink {
            geometry: "g".into(),
            bytes: KvBytes::PerToken(1_000_000),
            curve: vec![(1, 10.0)],
            source: "s".into(),
            latency_us: 0.0,
        };
        let pd = |alpha| Topology::Pd {
            p_num: 1,
            p_tp: 1,
            d_num: 1,
            d_tp: 4,
            timing: t,
            tp_scaling: TpScaling { alpha, tp_ref: 2 },
            kv: kv.clone(),
        };
        let out = run(&pd(1.0), &[(500, 3)]);
        assert!(near(out[0][0], 120.0 + 50.0 + 10.25) && near(out[0][2], 120.0 + 50.0 + 30.75), "{out:?}");
        let out = run(&pd(0.0), &[(500, 3)]);
        assert!(near(out[0][0], 60.0 + 50.0 + 20.5) && near(out[0][2], 60.0 + 50.0 + 61.5), "{out:?}");
    }
}
