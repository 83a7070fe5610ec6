//! KV-cache geometry: what one prefill->decode request moves.
//!
//! vLLM's NixlConnector registers every KV tensor as a region and moves one
//! descriptor per (region, block). This module turns a model (a preset or a
//! Hugging Face `config.json`), a KV dtype, an attention layout, a block size
//! in tokens and the prefill/decode tensor-parallel sizes into that shape:
//! regions, per-rank block lengths, the head slice a decode rank reads, and
//! descriptors and bytes per request. Pure arithmetic, no I/O except reading
//! a config file; docs/KV.md walks through one example.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// Geometry errors: the message says which input is wrong.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// Unknown preset name.
    #[error("unknown model '{0}' (presets: {presets}); or give a Hugging Face config.json with --model-config", presets = preset_names().join(", "))]
    UnknownModel(String),
    /// The config file could not be read or parsed.
    #[error("model config {path}: {reason}")]
    Config {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An impossible geometry.
    #[error("{0}")]
    Invalid(String),
}

/// Attention kind of a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerKind {
    /// Attends to every earlier token: its KV covers the whole prompt.
    Full,
    /// Sliding-window attention: only the last `window` tokens matter.
    Sliding,
}

/// How a model caches K and V.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Attention {
    /// Multi-head / grouped-query attention: K and V per KV head.
    Gqa {
        /// KV heads (num_key_value_heads).
        kv_heads: u32,
        /// Elements per head.
        head_dim: u32,
    },
    /// Multi-head latent attention (DeepSeek): one latent per token per layer,
    /// the same on every TP rank.
    Mla {
        /// kv_lora_rank.
        kv_lora_rank: u32,
        /// qk_rope_head_dim.
        rope_dim: u32,
    },
}

/// A model's KV-relevant facts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Model {
    /// Name (preset or the config's model type / file).
    pub name: String,
    /// Attention kind and its sizes.
    pub attention: Attention,
    /// Kind of each layer, in order (length = num_hidden_layers).
    pub layer_kinds: Vec<LayerKind>,
    /// Window of the sliding layers, tokens.
    pub sliding_window: Option<u32>,
    /// Where the facts came from.
    pub source: String,
}

/// KV cache element type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KvDtype {
    /// bfloat16 (2 bytes).
    Bf16,
    /// float16 (2 bytes).
    Fp16,
    /// fp8 (1 byte).
    Fp8,
}

impl KvDtype {
    /// Bytes per element.
    pub fn bytes(self) -> u64 {
        match self {
            KvDtype::Bf16 | KvDtype::Fp16 => 2,
            KvDtype::Fp8 => 1,
        }
    }
}

impl std::str::FromStr for KvDtype {
    type Err = KvError;
    fn from_str(s: &str) -> Result<KvDtype, KvError> {
        match s.to_ascii_lowercase().as_str() {
            "bf16" | "bfloat16" => Ok(KvDtype::Bf16),
            "fp16" | "float16" | "half" => Ok(KvDtype::Fp16),
            "fp8" | "fp8_e4m3" | "fp8_e5m2" => Ok(KvDtype::Fp8),
            other => Err(KvError::Invalid(format!("unknown KV dtype '{other}' (bf16, fp16, fp8)"))),
        }
    }
}

impl std::fmt::Display for KvDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KvDtype::Bf16 => "bf16",
            KvDtype::Fp16 => "fp16",
            KvDtype::Fp8 => "fp8",
        })
    }
}

/// How the attention backend lays out a layer's KV cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// FlashAttention: K and V are separate tensors, so separate regions.
    FlashAttn,
    /// FlashInfer: one joint K|V tensor per layer; a block holds K then V.
    FlashInfer,
    /// MLA: one latent tensor per layer.
    Mla,
}

impl std::str::FromStr for Layout {
    type Err = KvError;
    fn from_str(s: &str) -> Result<Layout, KvError> {
        match s.to_ascii_lowercase().replace('-', "_").as_str() {
            "flash_attn" | "flashattn" | "flash_attention" | "fa" => Ok(Layout::FlashAttn),
            "flashinfer" | "flash_infer" | "fi" => Ok(Layout::FlashInfer),
            "mla" => Ok(Layout::Mla),
            other => Err(KvError::Invalid(format!("unknown layout '{other}' (flash-attn, flashinfer, mla)"))),
        }
    }
}

impl std::fmt::Display for Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Layout::FlashAttn => "flash-attn",
            Layout::FlashInfer => "flashinfer",
            Layout::Mla => "mla",
        })
    }
}

/// What a request moves for sliding-window layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SlidingBlocks {
    /// Every block, as for a full layer (vLLM without the hybrid allocator).
    All,
    /// Only the blocks holding the last `sliding_window` tokens (hybrid allocator).
    Window,
}

impl std::str::FromStr for SlidingBlocks {
    type Err = KvError;
    fn from_str(s: &str) -> Result<SlidingBlocks, KvError> {
        match s {
            "all" => Ok(SlidingBlocks::All),
            "window" => Ok(SlidingBlocks::Window),
            other => Err(KvError::Invalid(format!("unknown sliding-window mode '{other}' (all, window)"))),
        }
    }
}

fn preset(name: &str) -> Option<Model> {
    let gqa =
        |layers: usize, kv_heads, head_dim| (vec![LayerKind::Full; layers], Attention::Gqa { kv_heads, head_dim });
    let alternating = |pairs: usize| {
        // gpt-oss: layer_types = ["sliding_attention", "full_attention"] x pairs
        (0..2 * pairs).map(|i| if i % 2 == 0 { LayerKind::Sliding } else { LayerKind::Full }).collect::<Vec<_>>()
    };
    let key = name.to_ascii_lowercase();
    let key = key.rsplit('/').next().unwrap_or(&key);
    let (canonical, kinds, attention, window) = match key {
        "gpt-oss-120b" => ("gpt-oss-120b", alternating(18), Attention::Gqa { kv_heads: 8, head_dim: 64 }, Some(128)),
        "gpt-oss-20b" => ("gpt-oss-20b", alternating(12), Attention::Gqa { kv_heads: 8, head_dim: 64 }, Some(128)),
        "llama-3.1-8b" | "meta-llama-3.1-8b" | "llama-3.1-8b-instruct" | "meta-llama-3.1-8b-instruct" => {
            let (k, a) = gqa(32, 8, 128);
            ("Llama-3.1-8B", k, a, None)
        }
        "llama-3.1-70b" | "meta-llama-3.1-70b" | "llama-3.1-70b-instruct" | "meta-llama-3.1-70b-instruct" => {
            let (k, a) = gqa(80, 8, 128);
            ("Llama-3.1-70B", k, a, None)
        }
        "qwen3-32b" => {
            let (k, a) = gqa(64, 8, 128);
            ("Qwen3-32B", k, a, None)
        }
        "qwen3-235b-a22b" | "qwen3-235b" => {
            let (k, a) = gqa(94, 4, 128);
            ("Qwen3-235B-A22B", k, a, None)
        }
        "deepseek-v3" | "deepseek-r1" | "deepseek-v3-0324" | "deepseek-r1-0528" => (
            if key.contains("r1") { "DeepSeek-R1" } else { "DeepSeek-V3" },
            vec![LayerKind::Full; 61],
            Attention::Mla { kv_lora_rank: 512, rope_dim: 64 },
            None,
        ),
        _ => return None,
    };
    Some(Model {
        name: canonical.to_string(),
        attention,
        layer_kinds: kinds,
        sliding_window: window,
        source: "preset (Hugging Face config.json values, docs/KV.md)".into(),
    })
}

/// Longest input length kvprobe accepts (tokens): far beyond any model's
/// context, and small enough that every size computed from it fits in u64.
pub const MAX_ISL: u64 = 1 << 24;

/// Checks input lengths: at least one token, at most [`MAX_ISL`].
pub fn check_isls(isls: &[u64]) -> Result<(), KvError> {
    match isls.iter().find(|&&n| n == 0 || n > MAX_ISL) {
        Some(n) => Err(KvError::Invalid(format!("input length {n} is outside 1..={MAX_ISL} tokens"))),
        None if isls.is_empty() => Err(KvError::Invalid("no input length given".into())),
        None => Ok(()),
    }
}

/// The preset names `--model` accepts.
pub fn preset_names() -> Vec<&'static str> {
    vec![
        "gpt-oss-120b",
        "gpt-oss-20b",
        "Llama-3.1-8B",
        "Llama-3.1-70B",
        "Qwen3-32B",
        "Qwen3-235B-A22B",
        "DeepSeek-V3",
        "DeepSeek-R1",
    ]
}

impl Model {
    /// A preset by name (case-insensitive; an `org/` prefix is ignored).
    pub fn preset(name: &str) -> Result<Model, KvError> {
        preset(name).ok_or_else(|| KvError::UnknownModel(name.to_string()))
    }

    /// Reads a Hugging Face `config.json`.
    pub fn from_config_file(path: &Path) -> Result<Model, KvError> {
        let err = |reason: String| KvError::Config { path: path.display().to_string(), reason };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| err(format!("not JSON: {e}")))?;
        let name = v
            .get("_name_or_path")
            .or_else(|| v.get("model_type"))
            .and_then(|x| x.as_str())
            .map(str::to_string)
            .unwrap_or_else(|| path.display().to_string());
        Model::from_config(&v, &name, &path.display().to_string()).map_err(|e| match e {
            KvError::Invalid(reason) => err(reason),
            other => other,
        })
    }

    /// Builds the model from a parsed `config.json` (multimodal configs: the
    /// `text_config` part).
    pub fn from_config(v: &serde_json::Value, name: &str, source: &str) -> Result<Model, KvError> {
        let v = match (v.get("num_hidden_layers"), v.get("text_config")) {
            (None, Some(t)) => t,
            _ => v,
        };
        let uint = |key: &str| -> Result<Option<u32>, KvError> {
            match v.get(key) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(x) => x
                    .as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .map(Some)
                    .ok_or_else(|| KvError::Invalid(format!("'{key}' is not a non-negative integer: {x}"))),
            }
        };
        let need = |key: &str| -> Result<u32, KvError> {
            uint(key)?.ok_or_else(|| KvError::Invalid(format!("'{key}' is missing")))
        };
        let layers = need("num_hidden_layers")?;
        if layers == 0 {
            return Err(KvError::Invalid("num_hidden_layers is 0: a model needs at least one layer".into()));
        }
        let attention = match (uint("kv_lora_rank")?, uint("qk_rope_head_dim")?) {
            (Some(r), Some(p)) if r > 0 => Attention::Mla { kv_lora_rank: r, rope_dim: p },
            (Some(_), None) => {
                return Err(KvError::Invalid("MLA config has kv_lora_rank but no qk_rope_head_dim".into()));
            }
            _ => {
                let q_heads = need("num_attention_heads")?;
                let kv_heads = uint("num_key_value_heads")?.unwrap_or(q_heads);
                let head_dim = match uint("head_dim")? {
                    Some(d) => d,
                    None => {
                        let hidden = need("hidden_size")
                            .map_err(|_| KvError::Invalid("neither 'head_dim' nor 'hidden_size' is given".into()))?;
                        if q_heads == 0 || hidden % q_heads != 0 {
                            return Err(KvError::Invalid(format!(
                                "hidden_size {hidden} is not a multiple of num_attention_heads {q_heads}"
                            )));
                        }
                        hidden / q_heads
                    }
                };
                if kv_heads == 0 || head_dim == 0 {
                    return Err(KvError::Invalid("num_key_value_heads and head_dim must be positive".into()));
                }
                Attention::Gqa { kv_heads, head_dim }
            }
        };
        // Sliding window: explicit per-layer types (gpt-oss, Gemma), else
        // one window for all layers when use_sliding_window says so.
        let window = uint("sliding_window")?;
        let use_sliding = v.get("use_sliding_window").and_then(|x| x.as_bool());
        let layer_kinds = match v.get("layer_types").and_then(|x| x.as_array()) {
            Some(types) => {
                if types.len() != layers as usize {
                    return Err(KvError::Invalid(format!(
                        "layer_types has {} entries for {layers} layers",
                        types.len()
                    )));
                }
                types
                    .iter()
                    .map(|t| match t.as_str() {
                        Some("sliding_attention") if window.is_some() => Ok(LayerKind::Sliding),
                        Some("sliding_attention") => {
                            Err(KvError::Invalid("layer_types has sliding layers but sliding_window is not set".into()))
                        }
                        Some("full_attention") | Some("attention") => Ok(LayerKind::Full),
                        other => Err(KvError::Invalid(format!("unknown layer type {other:?} in layer_types"))),
                    })
                    .collect::<Result<Vec<_>, _>>()?
            }
            // Qwen2 style: sliding from layer max_window_layers on.
            None if window.is_some() && use_sliding == Some(true) => match uint("max_window_layers")? {
                Some(m) => (0..layers).map(|i| if i >= m { LayerKind::Sliding } else { LayerKind::Full }).collect(),
                None => vec![LayerKind::Sliding; layers as usize],
            },
            // Mistral style: a window and no switch means every layer slides.
            None if window.is_some() && use_sliding.is_none() => vec![LayerKind::Sliding; layers as usize],
            None => vec![LayerKind::Full; layers as usize],
        };
        let has_sliding = layer_kinds.contains(&LayerKind::Sliding);
        Ok(Model {
            name: name.to_string(),
            attention,
            layer_kinds,
            sliding_window: if has_sliding { window } else { None },
            source: source.to_string(),
        })
    }

    /// Number of layers.
    pub fn layers(&self) -> u32 {
        self.layer_kinds.len() as u32
    }

    /// Default layout: MLA for MLA models, FlashAttention otherwise.
    pub fn default_layout(&self) -> Layout {
        match self.attention {
            Attention::Mla { .. } => Layout::Mla,
            Attention::Gqa { .. } => Layout::FlashAttn,
        }
    }

    /// KV bytes one token occupies in the whole model (all layers, all
    /// heads, K and V; MLA: the latent), before any TP split.
    pub fn bytes_per_token(&self, dtype: KvDtype) -> u64 {
        let per_layer = match self.attention {
            Attention::Gqa { kv_heads, head_dim } => 2 * u64::from(kv_heads) * u64::from(head_dim),
            Attention::Mla { kv_lora_rank, rope_dim } => u64::from(kv_lora_rank) + u64::from(rope_dim),
        };
        per_layer * dtype.bytes() * u64::from(self.layers())
    }
}

/// Everything that fixes a transfer's shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvSpec {
    /// The model.
    pub model: Model,
    /// KV dtype.
    pub dtype: KvDtype,
    /// Attention layout.
    pub layout: Layout,
    /// Tokens per block.
    pub block_tokens: u32,
    /// Prefill TP size.
    pub p_tp: u32,
    /// Decode TP size.
    pub d_tp: u32,
    /// The decode rank this process plays.
    pub d_rank: u32,
    /// Sliding-window layers: all blocks or the window's.
    pub sliding: SlidingBlocks,
}

/// The per-rank shape both sides register and move (computed from a
/// [`KvSpec`]; see [`KvSpec::geometry`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Geometry {
    /// Model name.
    pub model: String,
    /// "gqa" or "mla".
    pub attention: String,
    /// KV dtype.
    pub dtype: KvDtype,
    /// Layout.
    pub layout: Layout,
    /// Tokens per block.
    pub block_tokens: u32,
    /// Layers (full + sliding).
    pub layers: u32,
    /// Sliding-window layers among them.
    pub sliding_layers: u32,
    /// Their window, tokens.
    pub sliding_window: Option<u32>,
    /// What a request moves for them.
    pub sliding: SlidingBlocks,
    /// KV heads of the model (MLA: 1, the latent).
    pub kv_heads: u32,
    /// Elements per head (MLA: kv_lora_rank + rope dim).
    pub head_dim: u32,
    /// Model KV bytes per token (all layers, heads, K and V).
    pub bytes_per_token: u64,
    /// Prefill and decode TP sizes and the decode rank.
    pub p_tp: u32,
    /// Decode TP size.
    pub d_tp: u32,
    /// Decode rank measured.
    pub d_rank: u32,
    /// Prefill rank it reads from.
    pub p_rank: u32,
    /// KV heads held by one prefill rank (MLA: 1).
    pub p_local_heads: u32,
    /// KV heads held by one decode rank (MLA: 1).
    pub d_local_heads: u32,
    /// First global KV head of the prefill rank.
    pub p_first_head: u32,
    /// First global KV head of the decode rank.
    pub d_first_head: u32,
    /// Bytes of one head in one block (block_tokens x head_dim x dtype).
    pub head_chunk_bytes: u64,
    /// Prefill block length per descriptor region (one K or one V block).
    pub p_block_bytes: u64,
    /// Decode block length = bytes per descriptor.
    pub d_block_bytes: u64,
    /// Where in a prefill block the decode rank's head slice starts.
    pub slice_offset_bytes: u64,
    /// Regions registered per rank (vLLM: one per KV tensor).
    pub registered_regions: u32,
    /// Descriptor regions (FlashInfer splits each joint region in two).
    pub desc_regions: u32,
    /// Decode-side KV bytes per token (what the decode rank reads per token).
    pub d_bytes_per_token: u64,
}

/// Blocks and bytes of one request at one input length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestShape {
    /// Input (prompt) tokens.
    pub isl: u64,
    /// Blocks per full-attention region.
    pub blocks: u64,
    /// Blocks per sliding-window region.
    pub sliding_blocks: u64,
    /// Descriptors (region, block) in one request.
    pub descs: u64,
    /// Bytes the decode rank reads.
    pub bytes: u64,
}

/// The KV heads rank `rank` of `tp` holds: (first head, count). When there
/// are fewer heads than ranks, each head is replicated on tp/heads ranks.
fn heads_of(kv_heads: u32, tp: u32, rank: u32) -> (u32, u32) {
    if kv_heads >= tp {
        let local = kv_heads / tp;
        (rank * local, local)
    } else {
        (rank / (tp / kv_heads), 1)
    }
}

impl KvSpec {
    /// Checks the spec and computes the per-rank geometry; every refusal says why.
    pub fn geometry(&self) -> Result<Geometry, KvError> {
        let bad = |m: String| Err(KvError::Invalid(m));
        let m = &self.model;
        let layers = m.layers();
        if layers == 0 {
            return bad(format!("{}: zero layers", m.name));
        }
        if self.block_tokens == 0 {
            return bad("the block size must be at least 1 token".into());
        }
        if self.p_tp == 0 || self.d_tp == 0 {
            return bad("TP sizes must be at least 1".into());
        }
        if self.d_rank >= self.d_tp {
            return bad(format!("decode rank {} does not exist with decode TP {}", self.d_rank, self.d_tp));
        }
        let mla = matches!(m.attention, Attention::Mla { .. });
        match (self.layout, mla) {
            (Layout::Mla, false) => {
                return bad(format!("{} is not an MLA model: use flash-attn or flashinfer", m.name));
            }
            (Layout::FlashAttn | Layout::FlashInfer, true) => {
                return bad(format!("{} uses MLA: its KV cache has one latent region per layer (layout mla)", m.name));
            }
            _ => {}
        }
        let dt = self.dtype.bytes();
        let bt = u64::from(self.block_tokens);
        let (kv_heads, head_dim) = match m.attention {
            Attention::Gqa { kv_heads, head_dim } => (kv_heads, head_dim),
            Attention::Mla { kv_lora_rank, rope_dim } => (1, kv_lora_rank + rope_dim),
        };
        let head_chunk = bt * u64::from(head_dim) * dt;
        let (p_rank, p_first, p_local, d_first, d_local) = if mla {
            // Replicated on every rank: any P/D TP pair works, the decode rank
            // reads whole blocks from one prefill rank.
            (self.d_rank % self.p_tp, 0, 1, 0, 1)
        } else {
            for (side, tp) in [("prefill", self.p_tp), ("decode", self.d_tp)] {
                if kv_heads % tp != 0 && tp % kv_heads != 0 {
                    return bad(format!(
                        "{}: {kv_heads} KV heads cannot be split across {side} TP {tp} (neither divides the other)",
                        m.name
                    ));
                }
            }
            if self.p_tp > self.d_tp {
                return bad(format!(
                    "prefill TP {} > decode TP {}: each decode rank would need parts of several prefill ranks' blocks; \
                     vLLM's NixlConnector refuses this for non-MLA models (tp_ratio = D_tp / P_tp must be a whole number >= 1)",
                    self.p_tp, self.d_tp
                ));
            }
            if self.d_tp % self.p_tp != 0 {
                return bad(format!(
                    "decode TP {} is not a multiple of prefill TP {}: vLLM's NixlConnector needs tp_ratio = D_tp / P_tp to be a whole number",
                    self.d_tp, self.p_tp
                ));
            }
            let ratio = self.d_tp / self.p_tp;
            let p_rank = self.d_rank / ratio;
            let (p_first, p_local) = heads_of(kv_heads, self.p_tp, p_rank);
            let (d_first, d_local) = heads_of(kv_heads, self.d_tp, self.d_rank);
            if d_first < p_first || d_first + d_local > p_first + p_local {
                return bad(format!(
                    "decode rank {} holds KV heads {}..{} that prefill rank {p_rank} (heads {}..{}) does not have",
                    self.d_rank,
                    d_first,
                    d_first + d_local,
                    p_first,
                    p_first + p_local
                ));
            }
            (p_rank, p_first, p_local, d_first, d_local)
        };
        let p_block = head_chunk * u64::from(p_local);
        let d_block = head_chunk * u64::from(d_local);
        let (registered, desc_regions) = match self.layout {
            Layout::FlashAttn => (2 * layers, 2 * layers),
            Layout::FlashInfer => (layers, 2 * layers),
            Layout::Mla => (layers, layers),
        };
        let sliding_layers = m.layer_kinds.iter().filter(|k| **k == LayerKind::Sliding).count() as u32;
        let kv_per_layer = if mla { 1 } else { 2 };
        Ok(Geometry {
            model: m.name.clone(),
            attention: if mla { "mla" } else { "gqa" }.into(),
            dtype: self.dtype,
            layout: self.layout,
            block_tokens: self.block_tokens,
            layers,
            sliding_layers,
            sliding_window: m.sliding_window,
            sliding: self.sliding,
            kv_heads,
            head_dim,
            bytes_per_token: m.bytes_per_token(self.dtype),
            p_tp: self.p_tp,
            d_tp: self.d_tp,
            d_rank: self.d_rank,
            p_rank,
            p_local_heads: p_local,
            d_local_heads: d_local,
            p_first_head: p_first,
            d_first_head: d_first,
            head_chunk_bytes: head_chunk,
            p_block_bytes: p_block,
            d_block_bytes: d_block,
            slice_offset_bytes: u64::from(d_first - p_first) * head_chunk,
            registered_regions: registered,
            desc_regions,
            d_bytes_per_token: kv_per_layer * u64::from(layers) * u64::from(d_local) * u64::from(head_dim) * dt,
        })
    }
}

impl Geometry {
    /// Layer of descriptor region `r`, and whether it is V (FlashAttention
    /// and FlashInfer order regions layer by layer, K then V).
    pub fn region_layer(&self, r: u32) -> (u32, bool) {
        match self.layout {
            Layout::Mla => (r, false),
            Layout::FlashAttn | Layout::FlashInfer => (r / 2, r % 2 == 1),
        }
    }

    /// Whether descriptor region `r` belongs to a sliding-window layer,
    /// given the model's layer kinds.
    pub fn region_is_sliding(&self, kinds: &[LayerKind], r: u32) -> bool {
        kinds.get(self.region_layer(r).0 as usize) == Some(&LayerKind::Sliding)
    }

    /// The blocks (first, count) of a request of `isl` tokens that a region
    /// moves: every block for full layers; for sliding layers with
    /// [`SlidingBlocks::Window`], the blocks holding the last window tokens.
    pub fn blocks_of(&self, isl: u64, sliding: bool) -> (u64, u64) {
        let bt = u64::from(self.block_tokens);
        let all = isl.div_ceil(bt);
        match (sliding, self.sliding, self.sliding_window) {
            (true, SlidingBlocks::Window, Some(w)) if isl > 0 => {
                // The next token attends to the last w - 1 prompt tokens
                // (vLLM skips isl - w + 1 tokens of a sliding layer).
                let first_token = isl.saturating_sub(u64::from(w).saturating_sub(1));
                let first = first_token / bt;
                (first, all - first)
            }
            _ => (0, all),
        }
    }

    /// Blocks, descriptors and bytes of one request of `isl` tokens.
    pub fn request(&self, kinds: &[LayerKind], isl: u64) -> RequestShape {
        let (_, blocks) = self.blocks_of(isl, false);
        let (_, sliding_blocks) = self.blocks_of(isl, true);
        let descs: u64 = (0..self.desc_regions)
            .map(|r| if self.region_is_sliding(kinds, r) { sliding_blocks } else { blocks })
            .sum();
        RequestShape { isl, blocks, sliding_blocks, descs, bytes: descs * self.d_block_bytes }
    }

    /// Byte stride between blocks inside a registered region on the side
    /// whose per-descriptor block is `block` (FlashInfer: K and V blocks
    /// interleave, so the stride is twice the block).
    pub fn block_stride(&self, block: u64) -> u64 {
        match self.layout {
            Layout::FlashInfer => 2 * block,
            _ => block,
        }
    }

    /// Offset of (descriptor region `r`, block `b`) inside its registered
    /// region, and the registered region's index, for a side whose
    /// per-descriptor block is `block`.
    pub fn block_place(&self, r: u32, b: u64, block: u64) -> (u32, u64) {
        match self.layout {
            Layout::FlashInfer => (r / 2, b * 2 * block + u64::from(r % 2) * block),
            _ => (r, b * block),
        }
    }

    /// Pattern seed of one head of one block: distinct for every (row seed,
    /// layer and K/V region, block, global head), so a block from the wrong
    /// place, or the wrong head slice, fails the check.
    pub fn chunk_seed(seed: u64, region: u32, block: u64, head: u32) -> u64 {
        let mut x = seed ^ 0x9E37_79B9_7F4A_7C15;
        for v in [u64::from(region), block, u64::from(head)] {
            x = (x ^ v).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            x ^= x >> 31;
        }
        x | 1
    }
}

impl Geometry {
    /// For every descriptor region: (region, first request block, blocks)
    /// that a request of `isl` tokens moves.
    pub fn region_ranges(&self, kinds: &[LayerKind], isl: u64) -> Vec<(u32, u64, u64)> {
        (0..self.desc_regions)
            .map(|r| {
                let (first, count) = self.blocks_of(isl, self.region_is_sliding(kinds, r));
                (r, first, count)
            })
            .collect()
    }

    /// The chunks of one request on `side`: (offset in the side's buffer,
    /// length, pattern seed, inside the decode slice), for every region,
    /// request block k (stored in block `ids[k]`) and head; `only_desc` keeps
    /// the decode rank's slice. `ids` must name a block for every request
    /// block and lie in the cache.
    pub fn request_chunks(
        &self,
        kinds: &[LayerKind],
        layout: &SideLayout,
        isl: u64,
        ids: &[u64],
        only_desc: bool,
        seed: u64,
    ) -> Result<Vec<(u64, u64, u64, bool)>, KvError> {
        let blocks = self.blocks_of(isl, false).1;
        if ids.len() as u64 != blocks {
            return Err(KvError::Invalid(format!(
                "a request of {isl} tokens has {blocks} blocks, {} block ids were given",
                ids.len()
            )));
        }
        if let Some(b) = ids.iter().find(|&&b| b >= layout.pool) {
            return Err(KvError::Invalid(format!("block id {b} is outside the {}-block cache", layout.pool)));
        }
        let mut out = Vec::new();
        for (r, first, count) in self.region_ranges(kinds, isl) {
            for k in first..first + count {
                let b = ids[k as usize];
                let desc: Vec<u64> = layout.chunks(self, r, b, true).iter().map(|c| c.0).collect();
                for (off, len, head) in layout.chunks(self, r, b, only_desc) {
                    out.push((off, len, Geometry::chunk_seed(seed, r, k, head), desc.contains(&off)));
                }
            }
        }
        Ok(out)
    }
}

/// Which side of the transfer a buffer belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// The prefill rank (kvprobe's target: it holds the KV the decode side reads).
    Prefill,
    /// The decode rank (kvprobe's initiator).
    Decode,
}

/// Where every block lives in one side's KV buffer: registered regions one
/// after another, each `pool` blocks, separated by a gap so that no two
/// regions are adjacent (separate tensors are not).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SideLayout {
    /// Which side.
    pub side: Side,
    /// Bytes of one K or V block on this side.
    pub block: u64,
    /// Blocks per region.
    pub pool: u64,
    /// Bytes from one registered region to the next.
    pub region_stride: u64,
    /// Bytes of one registered region.
    pub region_bytes: u64,
    /// Registered regions.
    pub regions: u32,
    /// First global KV head this side holds, and how many.
    pub first_head: u32,
    /// Heads per block.
    pub heads: u32,
    /// Bytes per head per block.
    pub head_chunk: u64,
    /// Offset inside a block where the decode rank's data starts (the
    /// prefill side's head slice; 0 on the decode side).
    pub desc_offset: u64,
    /// Bytes per descriptor (the decode block).
    pub desc_len: u64,
}

/// Gap between regions (and their alignment).
const REGION_ALIGN: u64 = 64 << 10;

impl Geometry {
    /// The layout of `side`'s KV buffer with `pool` blocks per region.
    pub fn side(&self, side: Side, pool: u64) -> SideLayout {
        let (block, first_head, heads, desc_offset) = match side {
            Side::Prefill => (self.p_block_bytes, self.p_first_head, self.p_local_heads, self.slice_offset_bytes),
            Side::Decode => (self.d_block_bytes, self.d_first_head, self.d_local_heads, 0),
        };
        let region_bytes = pool * self.block_stride(block);
        SideLayout {
            side,
            block,
            pool,
            region_stride: region_bytes.div_ceil(REGION_ALIGN) * REGION_ALIGN + REGION_ALIGN,
            region_bytes,
            regions: self.registered_regions,
            first_head,
            heads,
            head_chunk: self.head_chunk_bytes,
            desc_offset,
            desc_len: self.d_block_bytes,
        }
    }
}

impl SideLayout {
    /// Size of the whole buffer.
    pub fn total_bytes(&self) -> u64 {
        u64::from(self.regions) * self.region_stride
    }

    /// (offset, length) of every registered region in the buffer.
    pub fn regions(&self) -> Vec<(u64, u64)> {
        (0..u64::from(self.regions)).map(|i| (i * self.region_stride, self.region_bytes)).collect()
    }

    /// Offset of the descriptor for (descriptor region `r`, block `b`).
    pub fn desc_offset(&self, g: &Geometry, r: u32, b: u64) -> u64 {
        let (reg, off) = g.block_place(r, b, self.block);
        u64::from(reg) * self.region_stride + off + self.desc_offset
    }

    /// The head chunks of (descriptor region `r`, block `b`) that this side
    /// holds: (offset, length, global head). With `only_desc`, only those
    /// inside the descriptor (the decode rank's slice).
    pub fn chunks(&self, g: &Geometry, r: u32, b: u64, only_desc: bool) -> Vec<(u64, u64, u32)> {
        let (reg, off) = g.block_place(r, b, self.block);
        let base = u64::from(reg) * self.region_stride + off;
        (0..self.heads)
            .map(|h| (base + u64::from(h) * self.head_chunk, self.head_chunk, self.first_head + h))
            .filter(|&(o, _, _)| {
                !only_desc || (o >= base + self.desc_offset && o < base + self.desc_offset + self.desc_len)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(model: &str, p_tp: u32, d_tp: u32) -> KvSpec {
        let model = Model::preset(model).unwrap();
        KvSpec {
            layout: model.default_layout(),
            model,
            dtype: KvDtype::Bf16,
            block_tokens: 16,
            p_tp,
            d_tp,
            d_rank: 0,
            sliding: SlidingBlocks::All,
        }
    }

    #[test]
    fn bytes_per_token_of_every_preset_match_hand_computed_values() {
        // layers x 2 (K,V) x kv_heads x head_dim x 2 bytes (bf16); MLA: layers x 576 x 2
        let want = [
            ("gpt-oss-120b", 36 * 2 * 8 * 64 * 2),
            ("gpt-oss-20b", 24 * 2 * 8 * 64 * 2),
            ("Llama-3.1-8B", 32 * 2 * 8 * 128 * 2),
            ("Llama-3.1-70B", 80 * 2 * 8 * 128 * 2),
            ("Qwen3-32B", 64 * 2 * 8 * 128 * 2),
            ("Qwen3-235B-A22B", 94 * 2 * 4 * 128 * 2),
            ("DeepSeek-V3", 61 * 576 * 2),
            ("DeepSeek-R1", 61 * 576 * 2),
        ];
        for (name, bytes) in want {
            assert_eq!(Model::preset(name).unwrap().bytes_per_token(KvDtype::Bf16), bytes, "{name}");
        }
        assert_eq!(want.len(), preset_names().len());
        assert_eq!(Model::preset("gpt-oss-120b").unwrap().bytes_per_token(KvDtype::Bf16), 73_728);
        assert_eq!(Model::preset("Llama-3.1-70B").unwrap().bytes_per_token(KvDtype::Bf16), 327_680);
        assert_eq!(Model::preset("DeepSeek-V3").unwrap().bytes_per_token(KvDtype::Bf16), 70_272);
        assert_eq!(Model::preset("DeepSeek-V3").unwrap().bytes_per_token(KvDtype::Fp8), 35_136);
    }

    #[test]
    fn per_rank_blocks_of_every_preset() {
        // (model, TP, block bytes per K or V region, descriptor regions)
        let want = [
            ("gpt-oss-120b", 1, 16 * 8 * 64 * 2, 72),
            ("gpt-oss-120b", 4, 16 * 2 * 64 * 2, 72),
            ("gpt-oss-20b", 1, 16 * 8 * 64 * 2, 48),
            ("Llama-3.1-8B", 1, 32 * 1024, 64),
            ("Llama-3.1-70B", 1, 32 * 1024, 160),
            ("Llama-3.1-70B", 8, 4 * 1024, 160),
            ("Qwen3-32B", 2, 16 * 4 * 128 * 2, 128),
            ("Qwen3-235B-A22B", 4, 16 * 128 * 2, 188),
            // 4 KV heads on 8 ranks: replicated, one head each
            ("Qwen3-235B-A22B", 8, 16 * 128 * 2, 188),
            ("DeepSeek-V3", 8, 16 * 576 * 2, 61),
        ];
        for (name, tp, block, regions) in want {
            let g = spec(name, tp, tp).geometry().unwrap();
            assert_eq!(g.p_block_bytes, block, "{name} TP{tp}");
            assert_eq!(g.d_block_bytes, block, "{name} TP{tp}");
            assert_eq!(g.desc_regions, regions, "{name} TP{tp}");
            assert_eq!(g.slice_offset_bytes, 0);
        }
    }

    #[test]
    fn gpt_oss_120b_tp4_isl_5000_worked_example() {
        // docs/KV.md: 313 blocks of 16 tokens (5000/16 rounded up), 72 regions,
        // 4 KiB per descriptor, 22,536 descriptors, 92,307,456 bytes per rank.
        let s = spec("gpt-oss-120b", 4, 4);
        let g = s.geometry().unwrap();
        assert_eq!(g.p_local_heads, 2);
        assert_eq!(g.d_block_bytes, 4096);
        let r = g.request(&s.model.layer_kinds, 5000);
        assert_eq!(r.blocks, 313);
        assert_eq!(r.descs, 72 * 313);
        assert_eq!(r.bytes, 72 * 313 * 4096);
        assert_eq!(g.d_bytes_per_token, 73_728 / 4);
        // with the hybrid allocator, sliding layers move only what the next
        // token attends to, the last 127 tokens: 4873..4999, blocks 304..312
        let g = KvSpec { sliding: SlidingBlocks::Window, ..s.clone() }.geometry().unwrap();
        let r = g.request(&s.model.layer_kinds, 5000);
        assert_eq!(g.blocks_of(5000, true), (304, 9));
        assert_eq!(r.descs, 36 * 313 + 36 * 9);
    }

    #[test]
    fn heterogeneous_tp_reads_a_head_slice() {
        // Llama-3.1-70B: 8 KV heads; P TP2 has 4 heads per rank, D TP8 has 1.
        let mut s = spec("Llama-3.1-70B", 2, 8);
        for d_rank in 0..8 {
            s.d_rank = d_rank;
            let g = s.geometry().unwrap();
            assert_eq!(g.p_rank, d_rank / 4);
            assert_eq!(g.p_block_bytes, 16 * 4 * 128 * 2);
            assert_eq!(g.d_block_bytes, 16 * 128 * 2);
            // vLLM: offset = (tp_rank % tp_ratio) * local_block_len
            assert_eq!(g.slice_offset_bytes, u64::from(d_rank % 4) * g.d_block_bytes);
        }
    }

    #[test]
    fn prefill_tp_above_decode_tp_is_refused_except_for_mla() {
        let e = spec("Llama-3.1-8B", 4, 2).geometry().unwrap_err().to_string();
        assert!(e.contains("prefill TP 4 > decode TP 2"), "{e}");
        let g = spec("DeepSeek-V3", 8, 2).geometry().unwrap();
        assert_eq!(g.d_block_bytes, g.p_block_bytes);
        assert_eq!(g.slice_offset_bytes, 0);
    }

    #[test]
    fn invalid_geometry_is_a_clear_error() {
        let e = spec("Llama-3.1-8B", 3, 3).geometry().unwrap_err().to_string();
        assert!(e.contains("cannot be split across prefill TP 3"), "{e}");
        let e = spec("Llama-3.1-8B", 2, 6).geometry().unwrap_err().to_string();
        assert!(e.contains("decode TP 6 is not a multiple of prefill TP") || e.contains("cannot be split"), "{e}");
        let mut s = spec("Llama-3.1-8B", 1, 1);
        s.block_tokens = 0;
        assert!(s.geometry().unwrap_err().to_string().contains("block size"));
        s.block_tokens = 16;
        s.layout = Layout::Mla;
        assert!(s.geometry().unwrap_err().to_string().contains("not an MLA model"));
        assert!("int3".parse::<KvDtype>().unwrap_err().to_string().contains("unknown KV dtype"));
        assert!(Model::preset("gpt-5").unwrap_err().to_string().contains("presets: gpt-oss-120b"));
        let zero = serde_json::json!({"num_hidden_layers": 0, "num_attention_heads": 8, "head_dim": 64});
        assert!(Model::from_config(&zero, "z", "t").unwrap_err().to_string().contains("at least one layer"));
    }

    #[test]
    fn flashinfer_interleaves_k_and_v_in_one_region() {
        let mut s = spec("Llama-3.1-8B", 1, 1);
        s.layout = Layout::FlashInfer;
        let g = s.geometry().unwrap();
        assert_eq!((g.registered_regions, g.desc_regions), (32, 64));
        let b = g.d_block_bytes;
        assert_eq!(g.block_place(0, 3, b), (0, 6 * b));
        assert_eq!(g.block_place(1, 3, b), (0, 7 * b));
        assert_eq!(g.block_place(5, 0, b), (2, b));
        s.layout = Layout::FlashAttn;
        let g = s.geometry().unwrap();
        assert_eq!(g.registered_regions, 64);
        assert_eq!(g.block_place(5, 3, b), (5, 3 * b));
    }

    #[test]
    fn hugging_face_configs_are_read() {
        // Llama-style: no head_dim, hidden_size / num_attention_heads
        let llama = serde_json::json!({
            "model_type": "llama", "num_hidden_layers": 32, "num_attention_heads": 32,
            "num_key_value_heads": 8, "hidden_size": 4096
        });
        let m = Model::from_config(&llama, "llama", "t").unwrap();
        assert_eq!(m.attention, Attention::Gqa { kv_heads: 8, head_dim: 128 });
        assert_eq!(
            m.bytes_per_token(KvDtype::Bf16),
            Model::preset("Llama-3.1-8B").unwrap().bytes_per_token(KvDtype::Bf16)
        );
        // gpt-oss style layer types
        let types: Vec<&str> =
            (0..4).map(|i| if i % 2 == 0 { "sliding_attention" } else { "full_attention" }).collect();
        let oss = serde_json::json!({
            "num_hidden_layers": 4, "num_attention_heads": 64, "num_key_value_heads": 8,
            "head_dim": 64, "sliding_window": 128, "layer_types": types
        });
        let m = Model::from_config(&oss, "oss", "t").unwrap();
        assert_eq!(m.sliding_window, Some(128));
        assert_eq!(m.layer_kinds, vec![LayerKind::Sliding, LayerKind::Full, LayerKind::Sliding, LayerKind::Full]);
        // Qwen3: sliding_window present but disabled
        let qwen = serde_json::json!({
            "num_hidden_layers": 2, "num_attention_heads": 64, "num_key_value_heads": 8, "head_dim": 128,
            "use_sliding_window": false, "sliding_window": null
        });
        assert_eq!(Model::from_config(&qwen, "q", "t").unwrap().sliding_window, None);
        // DeepSeek MLA
        let ds = serde_json::json!({
            "num_hidden_layers": 61, "num_attention_heads": 128, "num_key_value_heads": 128,
            "kv_lora_rank": 512, "qk_rope_head_dim": 64, "qk_nope_head_dim": 128
        });
        let m = Model::from_config(&ds, "ds", "t").unwrap();
        assert_eq!(m.attention, Attention::Mla { kv_lora_rank: 512, rope_dim: 64 });
        assert_eq!(m.default_layout(), Layout::Mla);
        // errors name the key
        let bad = serde_json::json!({"num_hidden_layers": 2, "num_attention_heads": 3, "hidden_size": 100});
        assert!(Model::from_config(&bad, "b", "t").unwrap_err().to_string().contains("not a multiple"));
        let bad = serde_json::json!({"num_attention_heads": 3});
        assert!(Model::from_config(&bad, "b", "t").unwrap_err().to_string().contains("num_hidden_layers"));
    }

    #[test]
    fn sliding_window_conventions_of_other_configs() {
        // Mistral 7B v0.1: a window, no switch, no layer types: every layer slides
        let mistral = serde_json::json!({
            "num_hidden_layers": 4, "num_attention_heads": 32, "num_key_value_heads": 8, "hidden_size": 4096,
            "sliding_window": 4096
        });
        let m = Model::from_config(&mistral, "m", "t").unwrap();
        assert_eq!(m.layer_kinds, vec![LayerKind::Sliding; 4]);
        // Qwen2 with the switch on: layers from max_window_layers on slide
        let qwen2 = serde_json::json!({
            "num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 64,
            "use_sliding_window": true, "sliding_window": 32, "max_window_layers": 2
        });
        let m = Model::from_config(&qwen2, "q", "t").unwrap();
        assert_eq!(m.layer_kinds, vec![LayerKind::Full, LayerKind::Full, LayerKind::Sliding, LayerKind::Sliding]);
    }

    #[test]
    fn request_chunks_need_an_id_for_every_block_inside_the_cache() {
        let s = spec("Llama-3.1-8B", 1, 1);
        let g = s.geometry().unwrap();
        let side = g.side(Side::Decode, 8);
        let kinds = &s.model.layer_kinds;
        // 100 tokens = 7 blocks
        assert!(
            g.request_chunks(kinds, &side, 100, &[0, 1, 2], false, 1).unwrap_err().to_string().contains("7 blocks")
        );
        assert!(g.request_chunks(kinds, &side, 100, &[0, 1, 2, 3, 4, 5, 8], false, 1).is_err());
        let c = g.request_chunks(kinds, &side, 100, &[0, 1, 2, 3, 4, 5, 6], false, 1).unwrap();
        assert_eq!(c.len() as u64, 64 * 7 * 8, "regions x blocks x heads");
        assert!(check_isls(&[0]).is_err() && check_isls(&[MAX_ISL + 1]).is_err() && check_isls(&[1, MAX_ISL]).is_ok());
    }

    #[test]
    fn chunk_seeds_differ_for_every_coordinate() {
        let base = Geometry::chunk_seed(7, 1, 2, 3);
        for other in [
            Geometry::chunk_seed(8, 1, 2, 3),
            Geometry::chunk_seed(7, 2, 2, 3),
            Geometry::chunk_seed(7, 1, 3, 3),
            Geometry::chunk_seed(7, 1, 2, 4),
            Geometry::chunk_seed(7, 2, 1, 3),
        ] {
            assert_ne!(base, other);
        }
    }

    #[test]
    fn side_layouts_place_the_decode_slice_inside_the_prefill_block() {
        let s = spec("Llama-3.1-70B", 2, 8);
        let s = KvSpec { d_rank: 6, ..s };
        let g = s.geometry().unwrap();
        let p = g.side(Side::Prefill, 10);
        let d = g.side(Side::Decode, 10);
        assert_eq!(p.region_bytes, 10 * g.p_block_bytes);
        assert!(p.region_stride > p.region_bytes, "regions are not adjacent");
        // decode rank 6 holds global head 6 = head 2 of prefill rank 1 (heads 4..8)
        assert_eq!((g.p_rank, p.first_head, d.first_head), (1, 4, 6));
        let want = 3 * p.region_stride + 5 * g.p_block_bytes + 2 * g.head_chunk_bytes;
        assert_eq!(p.desc_offset(&g, 3, 5), want);
        assert_eq!(d.desc_offset(&g, 3, 5), 3 * d.region_stride + 5 * g.d_block_bytes);
        // the prefill block holds 4 heads; the slice read is head 6's chunk
        assert_eq!(p.chunks(&g, 3, 5, false).len(), 4);
        assert_eq!(p.chunks(&g, 3, 5, true), vec![(want, g.head_chunk_bytes, 6)]);
        assert_eq!(d.chunks(&g, 3, 5, true), vec![(d.desc_offset(&g, 3, 5), g.head_chunk_bytes, 6)]);
    }
}
