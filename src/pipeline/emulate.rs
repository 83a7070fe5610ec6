//! `kvprobe emulate`: an OpenAI-compatible server in front of the timing
//! model of [`super::model`]. It says it is an emulator everywhere: the
//! `server` header and `x-kvprobe-emulator` on every response,
//! `owned_by: kvprobe-emulator` and the whole timing model in
//! `/v1/models`, `system_fingerprint` in every completion, `/version`.
//!
//! Endpoints: `GET /health`, `GET /v1/models`, `GET /version`,
//! `GET /metrics` (counters, Prometheus text), `POST /v1/completions`
//! (streaming SSE with `stream_options.include_usage`, or one JSON).
//! Prompts are counted exactly when they are token-id arrays (what
//! `kvprobe bench` sends); a text prompt counts one token per
//! whitespace-separated word (the emulator has no tokenizer). Output is
//! always `max_tokens` tokens: there is no EOS to ignore.
//!
//! Faults for testing clients (off unless asked): every Nth completion
//! answered with HTTP 500, or cut after its first token.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Value, json};
use tokio::io::BufReader;
use tokio::net::{TcpListener, TcpStream};

use super::http::{self, Request};
use super::model::{Engines, Event, Job, Topology};

/// Faults injected on purpose, for testing clients.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Faults {
    /// Answer every Nth completion request with HTTP 500 (0: never).
    pub error_500_every: u64,
    /// Cut every Nth completion stream after its first token (0: never).
    pub drop_every: u64,
}

/// What the emulator serves.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EmulatorConfig {
    /// The model name clients must send.
    pub model: String,
    /// The timing model.
    pub topology: Topology,
    /// Prompt + output tokens allowed per request.
    pub max_model_len: u64,
    /// GPUs the emulated deployment stands for (reported, for normalising plots).
    pub gpus: u32,
    /// Injected faults.
    pub faults: Faults,
}

/// The server's shared state.
#[derive(Debug)]
pub struct Emulator {
    cfg: EmulatorConfig,
    engines: Engines,
    serial: AtomicU64,
    created: u64,
}

/// How long a connection may sit without a complete request.
const IDLE: std::time::Duration = std::time::Duration::from_secs(300);

fn server_headers() -> String {
    format!("server: kvprobe-emulate/{} (emulator; no model runs)\r\nx-kvprobe-emulator: 1\r\n", crate::version())
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// An OpenAI/vLLM-style error body.
fn error_body(code: u16, kind: &str, msg: &str) -> Vec<u8> {
    json!({"object": "error", "message": msg, "type": kind, "param": null, "code": code}).to_string().into_bytes()
}

impl Emulator {
    /// Starts the engines.
    pub fn new(cfg: EmulatorConfig) -> std::io::Result<Emulator> {
        let engines = Engines::start(&cfg.topology)?;
        Ok(Emulator { cfg, engines, serial: AtomicU64::new(0), created: unix_now() })
    }

    /// The `/v1/models` answer.
    pub fn models(&self) -> Value {
        json!({
            "object": "list",
            "data": [{
                "id": self.cfg.model,
                "object": "model",
                "created": self.created,
                "owned_by": "kvprobe-emulator",
                "root": self.cfg.model,
                "max_model_len": self.cfg.max_model_len,
                "kvprobe_emulator": {
                    "note": "kvprobe emulate: an EMULATOR, no model runs; latencies follow the timing model below (docs/EMULATOR.md)",
                    "version": crate::version(),
                    "gpus": self.cfg.gpus,
                    "tp_factors": self.cfg.topology.tp_factors(),
                    "config": self.cfg,
                }
            }]
        })
    }

    fn metrics_text(&self) -> String {
        let c = &self.engines.counters;
        format!(
            "# kvprobe emulator counters (an emulator: no model runs)\n\
             kvprobe_emulator_requests_accepted {}\n\
             kvprobe_emulator_requests_finished {}\n\
             kvprobe_emulator_kv_transfers {}\n\
             kvprobe_emulator_kv_transfer_seconds_total {:.6}\n",
            c.accepted.load(Ordering::Relaxed),
            c.finished.load(Ordering::Relaxed),
            c.kv_transfers.load(Ordering::Relaxed),
            c.kv_transfer_us.load(Ordering::Relaxed) as f64 / 1e6
        )
    }
}

/// A completion request, checked.
#[derive(Debug)]
struct Completion {
    prompt_tokens: u64,
    max_tokens: u64,
    stream: bool,
    include_usage: bool,
}

fn parse_completion(e: &Emulator, body: &[u8]) -> Result<Completion, (u16, String, String)> {
    let bad = |m: String| (400u16, "BadRequestError".to_string(), m);
    let v: Value = serde_json::from_slice(body).map_err(|x| bad(format!("the body is not JSON: {x}")))?;
    let model = v.get("model").and_then(Value::as_str).unwrap_or("");
    if model != e.cfg.model {
        return Err((
            404,
            "NotFoundError".into(),
            format!("The model `{model}` does not exist (this emulator serves `{}`).", e.cfg.model),
        ));
    }
    let count_text = |s: &str| s.split_whitespace().count() as u64;
    let prompt_tokens = match v.get("prompt") {
        Some(Value::String(s)) => count_text(s),
        Some(Value::Array(a)) if a.iter().all(Value::is_u64) => a.len() as u64,
        Some(Value::Array(a)) if a.len() == 1 => match &a[0] {
            Value::String(s) => count_text(s),
            Value::Array(ids) if ids.iter().all(Value::is_u64) => ids.len() as u64,
            _ => return Err(bad("prompt must be a string or an array of token ids".into())),
        },
        Some(Value::Array(_)) => return Err(bad("the emulator takes one prompt per request".into())),
        _ => return Err(bad("prompt is missing (a string or an array of token ids)".into())),
    };
    if prompt_tokens == 0 {
        return Err(bad("the prompt is empty".into()));
    }
    let max_tokens = match v.get("max_tokens") {
        None | Some(Value::Null) => 16,
        Some(x) => x
            .as_u64()
            .filter(|n| *n >= 1)
            .ok_or_else(|| bad(format!("max_tokens must be a positive integer (got {x})")))?,
    };
    if prompt_tokens.checked_add(max_tokens).is_none_or(|n| n > e.cfg.max_model_len) {
        return Err(bad(format!(
            "This model's maximum context length is {} tokens. However, you requested {} tokens ({prompt_tokens} in the prompt, {max_tokens} for the completion).",
            e.cfg.max_model_len,
            prompt_tokens.saturating_add(max_tokens)
        )));
    }
    let stream = v.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let include_usage = v.pointer("/stream_options/include_usage").and_then(Value::as_bool).unwrap_or(false);
    Ok(Completion { prompt_tokens, max_tokens, stream, include_usage })
}

/// Serves connections until the listener is dropped with the task.
pub async fn serve(listener: TcpListener, emu: Arc<Emulator>) {
    loop {
        let sock = match listener.accept().await {
            Ok((sock, _)) => sock,
            Err(_) => {
                // out of descriptors or the like: back off instead of spinning
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = sock.set_nodelay(true);
        let emu = emu.clone();
        tokio::spawn(async move {
            let _ = connection(sock, emu).await;
        });
    }
}

async fn connection(sock: TcpStream, emu: Arc<Emulator>) -> Result<(), http::HttpError> {
    let mut io = BufReader::new(sock);
    let hdrs = server_headers();
    loop {
        // an idle kept-alive connection (or one that never finishes its header) is closed
        let Ok(next) = tokio::time::timeout(IDLE, http::read_request(&mut io)).await else { return Ok(()) };
        let req = match next {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(()),
            Err(e) => {
                let body = error_body(400, "BadRequestError", &e.to_string());
                let _ = http::write_response(
                    io.get_mut(),
                    400,
                    "application/json",
                    &format!("{hdrs}connection: close\r\n"),
                    &body,
                )
                .await;
                return Err(e);
            }
        };
        let close = req.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let keep = handle(&mut io, &emu, &req, &hdrs).await?;
        if close || !keep {
            return Ok(());
        }
    }
}

/// Answers one request; false when the connection must close (a cut stream).
async fn handle(
    io: &mut BufReader<TcpStream>,
    emu: &Emulator,
    req: &Request,
    hdrs: &str,
) -> Result<bool, http::HttpError> {
    let w = io.get_mut();
    let json_ok = |v: Value| v.to_string().into_bytes();
    match (req.method.as_str(), req.path.as_str()) {
        ("GET", "/health") => http::write_response(w, 200, "application/json", hdrs, b"").await?,
        ("GET", "/v1/models") => http::write_response(w, 200, "application/json", hdrs, &json_ok(emu.models())).await?,
        ("GET", "/version") => {
            let v = json!({"version": format!("kvprobe-emulate {}", crate::version()), "emulator": true});
            http::write_response(w, 200, "application/json", hdrs, &json_ok(v)).await?
        }
        ("GET", "/metrics") => {
            http::write_response(w, 200, "text/plain; version=0.0.4", hdrs, emu.metrics_text().as_bytes()).await?
        }
        ("POST", "/v1/completions") => return completion(w, emu, req, hdrs).await,
        (_, "/v1/completions" | "/v1/models" | "/health" | "/version" | "/metrics") => {
            let body = error_body(405, "MethodNotAllowed", &format!("{} is not allowed on {}", req.method, req.path));
            http::write_response(w, 405, "application/json", hdrs, &body).await?
        }
        _ => {
            let body = error_body(
                404,
                "NotFoundError",
                &format!(
                    "{} is not served by the kvprobe emulator (it serves /v1/completions, /v1/models, /health, /version, /metrics)",
                    req.path
                ),
            );
            http::write_response(w, 404, "application/json", hdrs, &body).await?
        }
    }
    Ok(true)
}

async fn completion(w: &mut TcpStream, emu: &Emulator, req: &Request, hdrs: &str) -> Result<bool, http::HttpError> {
    let n = emu.serial.fetch_add(1, Ordering::Relaxed) + 1;
    let f = emu.cfg.faults;
    if f.error_500_every > 0 && n % f.error_500_every == 0 {
        let body = error_body(
            500,
            "InternalServerError",
            &format!("injected fault: request {n} (--fault-500-every {})", f.error_500_every),
        );
        http::write_response(w, 500, "application/json", hdrs, &body).await?;
        return Ok(true);
    }
    let c = match parse_completion(emu, &req.body) {
        Ok(c) => c,
        Err((code, kind, msg)) => {
            http::write_response(w, code, "application/json", hdrs, &error_body(code, &kind, &msg)).await?;
            return Ok(true);
        }
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    if let Err(e) = emu.engines.submit(Job { prompt_tokens: c.prompt_tokens, max_tokens: c.max_tokens, tx }) {
        http::write_response(w, 503, "application/json", hdrs, &error_body(503, "ServiceUnavailable", &e)).await?;
        return Ok(true);
    }
    let id = format!("cmpl-kvprobe-emu-{n}");
    let created = unix_now();
    let model = &emu.cfg.model;
    let text = |k: u64| format!(" tok{k}");
    let usage = json!({"prompt_tokens": c.prompt_tokens, "completion_tokens": c.max_tokens, "total_tokens": c.prompt_tokens + c.max_tokens});
    if !c.stream {
        let mut out = String::new();
        let mut got = 0u64;
        while let Some(Event::Token(k)) = rx.recv().await {
            out.push_str(&text(k));
            got = k;
        }
        if got < c.max_tokens {
            let msg = format!("the engine stopped after {got} of {} tokens", c.max_tokens);
            http::write_response(w, 500, "application/json", hdrs, &error_body(500, "InternalServerError", &msg))
                .await?;
            return Ok(true);
        }
        let v = json!({
            "id": id, "object": "text_completion", "created": created, "model": model,
            "system_fingerprint": "kvprobe-emulator",
            "choices": [{"index": 0, "text": out, "logprobs": null, "finish_reason": "length"}],
            "usage": usage,
        });
        http::write_response(w, 200, "application/json", hdrs, v.to_string().as_bytes()).await?;
        return Ok(true);
    }
    http::start_chunked(w, "text/event-stream; charset=utf-8", hdrs).await?;
    let cut = f.drop_every > 0 && n % f.drop_every == 0;
    // every event is this prefix, the token's text and finish reason, and "}]}":
    // formatted once per request, not per token
    let prefix = format!(
        "data: {{\"id\":{},\"object\":\"text_completion\",\"created\":{created},\"model\":{},\"system_fingerprint\":\"kvprobe-emulator\",\"choices\":[{{\"index\":0,\"logprobs\":null,\"stop_reason\":null,",
        Value::from(id.as_str()),
        Value::from(model.as_str())
    );
    let mut event = String::with_capacity(prefix.len() + 64);
    let mut got = 0u64;
    while let Some(Event::Token(k)) = rx.recv().await {
        got = k;
        let finish = if k >= c.max_tokens { "\"length\"" } else { "null" };
        event.clear();
        event.push_str(&prefix);
        event.push_str(&format!("\"text\":\"{}\",\"finish_reason\":{finish}}}]}}\n\n", text(k)));
        http::write_chunk(w, event.as_bytes()).await?;
        if cut {
            // injected fault: the connection goes away mid-stream, without the last chunk
            let _ = tokio::io::AsyncWriteExt::shutdown(w).await;
            return Ok(false);
        }
    }
    if got < c.max_tokens {
        // the engine dropped the request: say so and end without [DONE], never a
        // usage that claims tokens that were not sent
        let msg = format!("the engine stopped after {got} of {} tokens", c.max_tokens);
        let e = json!({"error": {"object": "error", "message": msg, "type": "InternalServerError", "code": 500}});
        http::write_chunk(w, format!("data: {e}\n\n").as_bytes()).await?;
        http::end_chunks(w).await?;
        return Ok(true);
    }
    if c.include_usage {
        let u = json!({"id": id, "object": "text_completion", "created": created, "model": model, "choices": [], "usage": usage});
        http::write_chunk(w, format!("data: {u}\n\n").as_bytes()).await?;
    }
    http::write_chunk(w, b"data: [DONE]\n\n").await?;
    http::end_chunks(w).await?;
    Ok(true)
}
