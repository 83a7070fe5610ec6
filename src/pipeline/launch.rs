//! `kvprobe launch`, the pure part: a deployment asked for (collocated,
//! PD packed on one node, PD spread over two) checked against the cluster's
//! nodes and the model, placed, and written as a Ray Serve config for
//! `serve run` / `serve deploy` (facts: `../shared/reference/pipeline.md`
//! section 1).
//!
//! Placement is forced the way the seeds' launcher does it, but checked:
//! every placement-group bundle of a deployment carries Ray's implicit
//! per-node resource `node:<address>` (0.001 of it), so all of that
//! deployment's replicas land on that node; PD pack puts prefill and decode
//! on the same node, PD spread on two different ones. Each replica's bundles
//! are `STRICT_PACK` (a TP group never straddles nodes). A deployment too
//! big for one node is refused with the numbers.

use serde::Serialize;
use serde_json::{Value, json};

/// What went wrong with a layout.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LaunchError {
    /// The layout cannot run on this cluster or this model.
    #[error("{0}")]
    Invalid(String),
}

fn bad<T>(m: String) -> Result<T, LaunchError> {
    Err(LaunchError::Invalid(m))
}

/// Deployment shape (`--mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum LaunchMode {
    /// Prefill and decode in the same engines (`build_openai_app`).
    Collocated,
    /// PD with prefill and decode on the same node (KV over NVLink / cuda_ipc).
    PdPack,
    /// PD with prefill on one node and decode on another (KV over the network).
    PdSpread,
}

/// NIXL backend of vLLM's NixlConnector (`--backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum NixlBackend {
    /// UCX (NIXL's default).
    Ucx,
    /// libfabric (EFA).
    Libfabric,
}

impl NixlBackend {
    /// The name vLLM's `kv_connector_extra_config.backends` takes.
    pub fn vllm_name(self) -> &'static str {
        match self {
            NixlBackend::Ucx => "UCX",
            NixlBackend::Libfabric => "LIBFABRIC",
        }
    }
}

/// One node of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Node {
    /// Its address as Ray names it (`node:<address>` is its implicit resource).
    pub address: String,
    /// GPUs Ray sees on it.
    pub gpus: u32,
}

/// Parses `--nodes 10.0.0.1=8,10.0.0.2=8`.
pub fn parse_nodes(s: &str) -> Result<Vec<Node>, LaunchError> {
    let mut out: Vec<Node> = Vec::new();
    for item in s.split(',').map(str::trim).filter(|x| !x.is_empty()) {
        let Some((addr, gpus)) = item.rsplit_once('=') else {
            return bad(format!("--nodes item {item:?} is not ADDRESS=GPUS (example: 10.0.0.1=8)"));
        };
        let gpus: u32 = gpus
            .trim()
            .parse()
            .map_err(|_| LaunchError::Invalid(format!("--nodes {item:?}: {gpus:?} is not a GPU count")))?;
        let address = addr.trim().to_string();
        if address.is_empty() {
            return bad(format!("--nodes item {item:?} has no address"));
        }
        if out.iter().any(|n| n.address == address) {
            return bad(format!("--nodes names {address} twice"));
        }
        out.push(Node { address, gpus });
    }
    if out.is_empty() {
        return bad("--nodes lists no node".into());
    }
    Ok(out)
}

/// One engine deployment: `num` replicas of `tp` GPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Engines {
    /// Replicas.
    pub num: u32,
    /// GPUs per replica (tensor parallel size).
    pub tp: u32,
}

impl Engines {
    /// GPUs the deployment needs.
    pub fn gpus(self) -> u64 {
        u64::from(self.num) * u64::from(self.tp)
    }
}

/// What to launch.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LaunchSpec {
    /// Deployment shape.
    pub mode: LaunchMode,
    /// Name the endpoint serves (`model_id`).
    pub model_id: String,
    /// Where the weights come from (`model_source`: a Hugging Face id or a path).
    pub model_source: String,
    /// KV heads of the model, when known (TP must divide them, or be a multiple).
    pub kv_heads: Option<u32>,
    /// Collocated engines.
    pub collocated: Engines,
    /// Prefill engines (PD).
    pub prefill: Engines,
    /// Decode engines (PD).
    pub decode: Engines,
    /// NIXL backend.
    pub backend: NixlBackend,
    /// `UCX_TLS` for the engines (None: `all` with UCX, unset with libfabric).
    pub ucx_tls: Option<String>,
    /// Extra environment for the engines, in order.
    pub env: Vec<(String, String)>,
    /// vLLM `max_model_len`.
    pub max_model_len: u64,
    /// Ingress replicas (the seeds fix 16 to keep comparisons fair).
    pub ingress_replicas: u32,
    /// Allow prefill TP above decode TP (newer NixlConnectors support it; the seeds' did not).
    pub allow_p_tp_above_d_tp: bool,
}

/// Where each deployment goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Placement {
    /// Node of the collocated engines (None: spread by Ray, each replica packed).
    pub collocated: Option<String>,
    /// Node of the prefill engines.
    pub prefill: Option<String>,
    /// Node of the decode engines.
    pub decode: Option<String>,
}

fn check_tp(what: &str, e: Engines, kv_heads: Option<u32>) -> Result<(), LaunchError> {
    if e.num == 0 || e.tp == 0 {
        return bad(format!("{what}: replicas and TP must be at least 1 (got {} x TP{})", e.num, e.tp));
    }
    if let Some(h) = kv_heads {
        if h % e.tp != 0 && e.tp % h != 0 {
            return bad(format!(
                "{what}: TP{} does not divide the model's {h} KV heads (and is not a multiple of them): vLLM cannot shard its KV cache; use a TP that divides {h}",
                e.tp
            ));
        }
    }
    Ok(())
}

/// The first node (in the given order) with room for `need` GPUs, other than `not`.
fn node_for<'a>(nodes: &'a [Node], need: u64, not: Option<&str>) -> Option<&'a Node> {
    nodes.iter().find(|n| u64::from(n.gpus) >= need && Some(n.address.as_str()) != not)
}

fn inventory(nodes: &[Node]) -> String {
    nodes.iter().map(|n| format!("{} ({} GPUs)", n.address, n.gpus)).collect::<Vec<_>>().join(", ")
}

/// Checks a layout against the model and the nodes and places it.
pub fn place(s: &LaunchSpec, nodes: &[Node]) -> Result<Placement, LaunchError> {
    if nodes.is_empty() {
        return bad("no GPU node in the cluster".into());
    }
    if s.max_model_len == 0 {
        return bad("--max-model-len must be at least 1".into());
    }
    match s.mode {
        LaunchMode::Collocated => {
            check_tp("collocated", s.collocated, s.kv_heads)?;
            let e = s.collocated;
            let biggest = nodes.iter().map(|n| n.gpus).max().unwrap_or(0);
            if e.tp > biggest {
                return bad(format!(
                    "collocated: TP{} needs {} GPUs on one node; the largest node has {biggest} ({})",
                    e.tp,
                    e.tp,
                    inventory(nodes)
                ));
            }
            // replicas per node if every replica must fit whole on a node
            let fits: u64 = nodes.iter().map(|n| u64::from(n.gpus / e.tp)).sum();
            if fits < u64::from(e.num) {
                return bad(format!(
                    "collocated: {} replicas of TP{} need {} GPUs in whole-replica pieces; the nodes hold {fits} such replicas ({})",
                    e.num,
                    e.tp,
                    e.gpus(),
                    inventory(nodes)
                ));
            }
            // pinned to one node when they all fit there (the seeds' launcher), else Ray spreads them
            let node = node_for(nodes, e.gpus(), None).map(|n| n.address.clone());
            Ok(Placement { collocated: node, prefill: None, decode: None })
        }
        LaunchMode::PdPack | LaunchMode::PdSpread => {
            check_tp("prefill", s.prefill, s.kv_heads)?;
            check_tp("decode", s.decode, s.kv_heads)?;
            if s.prefill.tp > s.decode.tp && !s.allow_p_tp_above_d_tp {
                return bad(format!(
                    "prefill TP{} is above decode TP{}: the NixlConnector of vLLM 0.11 (the seeds' stack) requires P_tp <= D_tp; pass --allow-p-tp-above-d-tp if your vLLM supports it",
                    s.prefill.tp, s.decode.tp
                ));
            }
            if s.mode == LaunchMode::PdPack {
                let need = s.prefill.gpus() + s.decode.gpus();
                let Some(n) = node_for(nodes, need, None) else {
                    return bad(format!(
                        "pd-pack: {}P x TP{} + {}D x TP{} = {need} GPUs on one node; no node has that many ({})",
                        s.prefill.num,
                        s.prefill.tp,
                        s.decode.num,
                        s.decode.tp,
                        inventory(nodes)
                    ));
                };
                Ok(Placement { collocated: None, prefill: Some(n.address.clone()), decode: Some(n.address.clone()) })
            } else {
                if nodes.len() < 2 {
                    return bad(format!("pd-spread needs two GPU nodes; the cluster has one ({})", inventory(nodes)));
                }
                // try every ordered pair, first fit in the nodes' order
                for p in nodes.iter().filter(|n| u64::from(n.gpus) >= s.prefill.gpus()) {
                    if let Some(d) = node_for(nodes, s.decode.gpus(), Some(&p.address)) {
                        return Ok(Placement {
                            collocated: None,
                            prefill: Some(p.address.clone()),
                            decode: Some(d.address.clone()),
                        });
                    }
                }
                bad(format!(
                    "pd-spread: prefill needs {} GPUs on one node and decode {} on another; no two nodes fit ({})",
                    s.prefill.gpus(),
                    s.decode.gpus(),
                    inventory(nodes)
                ))
            }
        }
    }
}

/// The environment the engines get: `UCX_TLS` (`all` with UCX unless
/// given, as the seeds' launcher) then `--env` in order (later wins).
pub fn engine_env(s: &LaunchSpec) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = Vec::new();
    match (&s.ucx_tls, s.backend) {
        (Some(t), _) => env.push(("UCX_TLS".into(), t.clone())),
        (None, NixlBackend::Ucx) => env.push(("UCX_TLS".into(), "all".into())),
        (None, NixlBackend::Libfabric) => {}
    }
    for (k, v) in &s.env {
        env.retain(|(x, _)| x != k);
        env.push((k.clone(), v.clone()));
    }
    env
}

/// One LLMConfig (a dict in the Serve config).
fn llm_config(s: &LaunchSpec, e: Engines, node: Option<&str>, pd: bool, env: &Value) -> Value {
    let mut bundle = json!({"GPU": 1});
    if let Some(n) = node {
        bundle[format!("node:{n}")] = json!(0.001);
    }
    let mut engine = json!({
        "tensor_parallel_size": e.tp,
        "max_model_len": s.max_model_len,
    });
    if pd {
        engine["kv_transfer_config"] = json!({
            "kv_connector": "NixlConnector",
            "kv_role": "kv_both",
            "kv_connector_extra_config": {"backends": [s.backend.vllm_name()]},
        });
    }
    let deployment = if pd {
        json!({"autoscaling_config": {"min_replicas": e.num, "max_replicas": e.num}})
    } else {
        json!({"num_replicas": e.num})
    };
    json!({
        "model_loading_config": {"model_id": s.model_id, "model_source": s.model_source},
        "engine_kwargs": engine,
        "deployment_config": deployment,
        "placement_group_config": {"bundles": vec![bundle; e.tp as usize], "strategy": "STRICT_PACK"},
        "runtime_env": {"env_vars": env},
        "experimental_configs": {"stream_batching_interval_ms": 0},
    })
}

/// The Serve config (`serve run config.yaml` / `serve deploy`).
pub fn serve_config(s: &LaunchSpec, p: &Placement, port: u16) -> Value {
    let env: serde_json::Map<String, Value> = engine_env(s).into_iter().map(|(k, v)| (k, Value::String(v))).collect();
    let env = Value::Object(env);
    let (import_path, args) = match s.mode {
        LaunchMode::Collocated => (
            "ray.serve.llm:build_openai_app",
            json!({
                "llm_configs": [llm_config(s, s.collocated, p.collocated.as_deref(), false, &env)],
                "ingress_deployment_config": {"num_replicas": s.ingress_replicas},
            }),
        ),
        LaunchMode::PdPack | LaunchMode::PdSpread => (
            "ray.serve.llm:build_pd_openai_app",
            json!({
                "prefill_config": llm_config(s, s.prefill, p.prefill.as_deref(), true, &env),
                "decode_config": llm_config(s, s.decode, p.decode.as_deref(), true, &env),
                "ingress_deployment_config": {"num_replicas": s.ingress_replicas},
            }),
        ),
    };
    let name = match s.mode {
        LaunchMode::Collocated => format!("kvprobe-collocated-{}xtp{}", s.collocated.num, s.collocated.tp),
        LaunchMode::PdPack | LaunchMode::PdSpread => format!(
            "kvprobe-{}-{}xtp{}-{}xtp{}",
            if s.mode == LaunchMode::PdPack { "pd-pack" } else { "pd-spread" },
            s.prefill.num,
            s.prefill.tp,
            s.decode.num,
            s.decode.tp
        ),
    };
    json!({
        "http_options": {"host": "0.0.0.0", "port": port},
        "applications": [{
            "name": name,
            "route_prefix": "/",
            "import_path": import_path,
            "runtime_env": {"env_vars": env},
            "args": args,
        }],
    })
}

/// YAML text of a JSON value: block style, keys in the map's (sorted) order,
/// strings quoted whenever YAML could read them as something else.
pub fn to_yaml(v: &Value) -> String {
    let mut out = String::new();
    yaml_value(v, 0, &mut out);
    out
}

fn scalar(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => {
            // YAML 1.1 (PyYAML) reads `1e-7` as a string: give every exponent a mantissa dot
            let t = n.to_string();
            match t.find(['e', 'E']) {
                Some(i) if n.is_f64() && !t[..i].contains('.') => format!("{}.0{}", &t[..i], &t[i..]),
                _ => t,
            }
        }
        Value::String(s) => yaml_string(s),
        Value::Array(a) if a.is_empty() => "[]".into(),
        Value::Object(o) if o.is_empty() => "{}".into(),
        _ => String::new(),
    }
}

/// A string as YAML reads it back unchanged: plain only when it starts with
/// a letter, holds only letters, digits and `-._/`, and is no YAML 1.1
/// keyword; otherwise double-quoted with every control character (C0, DEL,
/// C1, line and paragraph separators, BOM) escaped.
fn yaml_string(s: &str) -> String {
    let plain = s.starts_with(|c: char| c.is_ascii_alphabetic())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || "-._/".contains(c))
        && !matches!(
            s.to_ascii_lowercase().as_str(),
            "true" | "false" | "yes" | "no" | "on" | "off" | "null" | "y" | "n"
        );
    if plain {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20
                || (0x7f..=0x9f).contains(&(c as u32))
                || matches!(c, '\u{2028}' | '\u{2029}' | '\u{feff}') =>
            {
                out.push_str(&format!("\\u{:04x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn is_block(v: &Value) -> bool {
    matches!(v, Value::Array(a) if !a.is_empty()) || matches!(v, Value::Object(o) if !o.is_empty())
}

fn yaml_value(v: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match v {
        Value::Object(o) if !o.is_empty() => {
            for (k, x) in o {
                if is_block(x) {
                    out.push_str(&format!("{pad}{}:\n", yaml_string(k)));
                    yaml_value(x, indent + 2, out);
                } else {
                    out.push_str(&format!("{pad}{}: {}\n", yaml_string(k), scalar(x)));
                }
            }
        }
        Value::Array(a) if !a.is_empty() => {
            for x in a {
                if is_block(x) {
                    // "- " then the first line of the item on the same line
                    let mut inner = String::new();
                    yaml_value(x, indent + 2, &mut inner);
                    let body = inner.strip_prefix(&format!("{pad}  ")).unwrap_or(&inner);
                    out.push_str(&format!("{pad}- {body}"));
                } else {
                    out.push_str(&format!("{pad}- {}\n", scalar(x)));
                }
            }
        }
        _ => out.push_str(&format!("{pad}{}\n", scalar(v))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(mode: LaunchMode) -> LaunchSpec {
        LaunchSpec {
            mode,
            model_id: "gptoss".into(),
            model_source: "openai/gpt-oss-120b".into(),
            kv_heads: Some(8),
            collocated: Engines { num: 2, tp: 4 },
            prefill: Engines { num: 1, tp: 4 },
            decode: Engines { num: 1, tp: 4 },
            backend: NixlBackend::Ucx,
            ucx_tls: None,
            env: vec![],
            max_model_len: 16000,
            ingress_replicas: 16,
            allow_p_tp_above_d_tp: false,
        }
    }

    fn two_nodes() -> Vec<Node> {
        parse_nodes("10.0.0.1=8,10.0.0.2=8").unwrap()
    }

    #[test]
    fn pack_and_spread_place_prefill_and_decode() {
        let p = place(&spec(LaunchMode::PdPack), &two_nodes()).unwrap();
        assert_eq!((p.prefill.as_deref(), p.decode.as_deref()), (Some("10.0.0.1"), Some("10.0.0.1")));
        let p = place(&spec(LaunchMode::PdSpread), &two_nodes()).unwrap();
        assert_eq!((p.prefill.as_deref(), p.decode.as_deref()), (Some("10.0.0.1"), Some("10.0.0.2")));
        let p = place(&spec(LaunchMode::Collocated), &two_nodes()).unwrap();
        assert_eq!(p.collocated.as_deref(), Some("10.0.0.1"));
    }

    #[test]
    fn impossible_layouts_are_refused_with_the_numbers() {
        let err = |s: &LaunchSpec, n: &[Node]| place(s, n).unwrap_err().to_string();
        let mut s = spec(LaunchMode::PdPack);
        s.decode = Engines { num: 2, tp: 4 };
        assert!(err(&s, &two_nodes()).contains("12 GPUs on one node"), "{}", err(&s, &two_nodes()));
        let s = spec(LaunchMode::PdSpread);
        assert!(err(&s, &parse_nodes("a=8").unwrap()).contains("needs two GPU nodes"));
        let mut s = spec(LaunchMode::PdSpread);
        s.prefill = Engines { num: 1, tp: 8 };
        s.decode = Engines { num: 1, tp: 4 };
        assert!(err(&s, &two_nodes()).contains("P_tp <= D_tp"));
        s.allow_p_tp_above_d_tp = true;
        assert!(place(&s, &two_nodes()).is_ok());
        let mut s = spec(LaunchMode::Collocated);
        s.collocated = Engines { num: 1, tp: 3 };
        assert!(err(&s, &two_nodes()).contains("does not divide the model's 8 KV heads"));
        s.collocated = Engines { num: 5, tp: 4 };
        assert!(err(&s, &two_nodes()).contains("hold 4 such replicas"));
        s.collocated = Engines { num: 1, tp: 16 };
        assert!(err(&s, &two_nodes()).contains("largest node has 8"));
        assert!(parse_nodes("a=8,a=8").is_err());
        assert!(parse_nodes("a").is_err());
        assert!(parse_nodes("a=x").is_err());
        // TP above the KV heads is fine when it is a multiple (heads are replicated)
        let mut s = spec(LaunchMode::Collocated);
        s.kv_heads = Some(2);
        s.collocated = Engines { num: 1, tp: 4 };
        assert!(place(&s, &two_nodes()).is_ok());
    }

    #[test]
    fn pd_config_has_the_connector_placement_and_env() {
        let mut s = spec(LaunchMode::PdSpread);
        s.ucx_tls = Some("tcp".into());
        s.env = vec![("NIXL_LOG_LEVEL".into(), "DEBUG".into()), ("UCX_TLS".into(), "rc,cuda_ipc".into())];
        let p = place(&s, &two_nodes()).unwrap();
        let c = serve_config(&s, &p, 8000);
        let app = &c["applications"][0];
        assert_eq!(app["import_path"], "ray.serve.llm:build_pd_openai_app");
        let pre = &app["args"]["prefill_config"];
        let dec = &app["args"]["decode_config"];
        assert_eq!(pre["engine_kwargs"]["kv_transfer_config"]["kv_connector"], "NixlConnector");
        assert_eq!(pre["engine_kwargs"]["kv_transfer_config"]["kv_connector_extra_config"]["backends"][0], "UCX");
        assert_eq!(pre["placement_group_config"]["bundles"].as_array().unwrap().len(), 4);
        assert_eq!(pre["placement_group_config"]["bundles"][0]["node:10.0.0.1"], 0.001);
        assert_eq!(dec["placement_group_config"]["bundles"][3]["node:10.0.0.2"], 0.001);
        assert_eq!(pre["experimental_configs"]["stream_batching_interval_ms"], 0);
        assert_eq!(dec["deployment_config"]["autoscaling_config"]["min_replicas"], 1);
        // --env wins over --ucx-tls, in order
        assert_eq!(pre["runtime_env"]["env_vars"]["UCX_TLS"], "rc,cuda_ipc");
        assert_eq!(pre["runtime_env"]["env_vars"]["NIXL_LOG_LEVEL"], "DEBUG");
    }

    #[test]
    fn yaml_is_block_style_and_quotes_what_yaml_would_misread() {
        let s = spec(LaunchMode::Collocated);
        let c = serve_config(&s, &place(&s, &two_nodes()).unwrap(), 8000);
        let y = to_yaml(&c);
        assert!(y.contains("import_path: \"ray.serve.llm:build_openai_app\""), "{y}");
        // keys come sorted (serde_json's map); list items open on the dash line
        assert!(
            y.starts_with("applications:\n  - args:\n      ingress_deployment_config:\n        num_replicas: 16\n      llm_configs:\n        - deployment_config:\n"),
            "{y}"
        );
        assert!(y.contains("    name: kvprobe-collocated-2xtp4\n"), "{y}");
        assert!(y.contains("UCX_TLS: all\n"), "{y}");
        assert_eq!(yaml_string("yes"), "\"yes\"");
        assert_eq!(yaml_string("8000"), "\"8000\"");
        for tricky in ["0x10", "1_000", "2024-01-01", "1e3", "", " lead", "a: b", "#c", "Null", "ON"] {
            assert!(yaml_string(tricky).starts_with('"'), "{tricky} must be quoted");
        }
        assert_eq!(yaml_string("a\u{7f}b\u{85}\n\"\\"), "\"a\\u007fb\\u0085\\u000a\\\"\\\\\"");
        assert_eq!(scalar(&json!(1e-7)), "1.0e-7");
        assert_eq!(scalar(&json!(0.001)), "0.001");
        assert_eq!(yaml_string("node:10.0.0.1"), "\"node:10.0.0.1\"");
        assert_eq!(yaml_string("openai/gpt-oss-120b"), "openai/gpt-oss-120b");
    }
}
