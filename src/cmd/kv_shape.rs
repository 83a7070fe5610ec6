//! `kvprobe kv-shape`: what one prefill->decode request moves for a model.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use serde::Serialize;

use super::CliError;
use crate::kv::{Geometry, KvDtype, KvSpec, Layout, Model, RequestShape, SlidingBlocks};
use crate::report::style::Style;

/// Which model and how its KV cache is laid out (shared by `kv-shape` and `sweep`).
#[derive(Debug, Clone, clap::Args)]
pub struct ModelArgs {
    /// Model preset: gpt-oss-120b, gpt-oss-20b, Llama-3.1-8B, Llama-3.1-70B, Qwen3-32B, Qwen3-235B-A22B, DeepSeek-V3, DeepSeek-R1
    #[arg(long, value_name = "NAME", conflicts_with = "model_config")]
    pub model: Option<String>,
    /// A Hugging Face config.json instead of a preset
    #[arg(long, value_name = "PATH")]
    pub model_config: Option<PathBuf>,
    /// KV cache dtype: bf16, fp16, fp8
    #[arg(long, default_value = "bf16", value_name = "DTYPE")]
    pub kv_dtype: String,
    /// Attention layout: flash-attn (K and V regions per layer), flashinfer (one K|V region per layer), mla [default: mla for MLA models, else flash-attn]
    #[arg(long, value_name = "LAYOUT")]
    pub layout: Option<String>,
    /// Sliding-window layers move all blocks (vLLM without the hybrid allocator) or only the window's
    #[arg(long, default_value = "all", value_name = "all|window")]
    pub sliding: String,
    /// The decode rank this measurement plays (it reads its head slice from prefill rank d_rank / (D_tp / P_tp))
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub d_rank: u32,
}

impl ModelArgs {
    /// Whether a model was given.
    pub fn given(&self) -> bool {
        self.model.is_some() || self.model_config.is_some()
    }

    /// The spec for these TP sizes and block size.
    pub fn spec(&self, p_tp: u32, d_tp: u32, block_tokens: u32) -> Result<KvSpec, CliError> {
        let model = match (&self.model, &self.model_config) {
            (Some(m), _) => Model::preset(m),
            (None, Some(p)) => Model::from_config_file(p),
            (None, None) => {
                return Err(CliError::usage(anyhow::anyhow!("give a model: --model NAME or --model-config PATH")));
            }
        }
        .map_err(CliError::usage)?;
        let dtype: KvDtype = self.kv_dtype.parse().map_err(CliError::usage)?;
        let layout: Layout = match &self.layout {
            Some(l) => l.parse().map_err(CliError::usage)?,
            None => model.default_layout(),
        };
        let sliding: SlidingBlocks = self.sliding.parse().map_err(CliError::usage)?;
        Ok(KvSpec { model, dtype, layout, block_tokens, p_tp, d_tp, d_rank: self.d_rank, sliding })
    }
}

/// Arguments of `kvprobe kv-shape`.
#[derive(Debug, clap::Args)]
pub struct KvShapeArgs {
    /// The model and its KV layout.
    #[command(flatten)]
    pub model: ModelArgs,
    /// TP size of both prefill and decode
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub tp: u32,
    /// Prefill TP size [default: --tp]
    #[arg(long, value_name = "N")]
    pub p_tp: Option<u32>,
    /// Decode TP size [default: --tp]
    #[arg(long, value_name = "N")]
    pub d_tp: Option<u32>,
    /// Tokens per KV block (vLLM --block-size)
    #[arg(long, default_value_t = 16, value_name = "TOKENS")]
    pub block_size: u32,
    /// Input lengths (tokens), comma-separated
    #[arg(long, default_value = "1000,5000,20000", value_delimiter = ',', value_name = "N,...")]
    pub isl: Vec<u64>,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

/// What `kv-shape` reports (`--json`).
#[derive(Debug, Serialize)]
pub struct KvShape {
    /// The model as read.
    pub model: Model,
    /// The per-rank geometry.
    pub geometry: Geometry,
    /// One entry per input length.
    pub requests: Vec<RequestShape>,
}

/// Runs `kv-shape`.
pub fn run(a: KvShapeArgs) -> Result<ExitCode, CliError> {
    let spec = a.model.spec(a.p_tp.unwrap_or(a.tp), a.d_tp.unwrap_or(a.tp), a.block_size)?;
    let geometry = spec.geometry().map_err(CliError::usage)?;
    crate::kv::check_isls(&a.isl).map_err(CliError::usage)?;
    let requests = a.isl.iter().map(|&n| geometry.request(&spec.model.layer_kinds, n)).collect();
    let shape = KvShape { model: spec.model, geometry, requests };
    let text = if a.json {
        serde_json::to_string_pretty(&shape).map_err(|e| CliError::failed(anyhow::anyhow!(e)))? + "\n"
    } else {
        crate::report::kv::render_shape(&shape.model, &shape.geometry, &shape.requests, Style::for_stdout())
    };
    std::io::stdout().write_all(text.as_bytes()).map_err(|e| CliError::failed(anyhow::anyhow!(e)))?;
    Ok(ExitCode::SUCCESS)
}
