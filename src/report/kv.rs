//! KV-shape screens: pure functions of the geometry (and, for sweeps, rows).

use super::schema::{Row, SweepResults};
use super::style::Style;
use super::table::{data_cell, notifs_cell, transport_cell};
use crate::kv::{Attention, Geometry, Layout, Model, RequestShape, SlidingBlocks};
use crate::units::{Bytes, fmt_gbps, fmt_us};

/// One line that names the shape: model, dtype, layout, TP, block size.
pub fn shape_line(g: &Geometry) -> String {
    format!(
        "{} - {} KV - {} layout - P TP{} -> D TP{} (decode rank {} reads prefill rank {}) - {} tokens per block",
        g.model, g.dtype, g.layout, g.p_tp, g.d_tp, g.d_rank, g.p_rank, g.block_tokens
    )
}

/// The `kv-shape` screen.
pub fn render_shape(m: &Model, g: &Geometry, reqs: &[RequestShape], style: Style) -> String {
    let mut out = String::new();
    out.push_str(&shape_line(g));
    out.push('\n');
    let heads = match m.attention {
        Attention::Gqa { kv_heads, head_dim } => format!("{kv_heads} KV heads x {head_dim}"),
        Attention::Mla { kv_lora_rank, rope_dim } => {
            format!("MLA latent {kv_lora_rank} + rope {rope_dim} = {} per token per layer", kv_lora_rank + rope_dim)
        }
    };
    let sliding = match (g.sliding_layers, g.sliding_window) {
        (0, _) => String::new(),
        (n, Some(w)) => format!(
            ", {n} sliding-window layers (window {w}; requests move {})",
            match g.sliding {
                SlidingBlocks::All => "all their blocks: --sliding window for the hybrid allocator's",
                SlidingBlocks::Window => "only the window's blocks",
            }
        ),
        (n, None) => format!(", {n} sliding-window layers"),
    };
    out.push_str(&format!("  model:      {} layers, {heads}{sliding}  [{}]\n", g.layers, m.source));
    out.push_str(&format!(
        "  per token:  {} for the whole model, {} on one decode rank\n",
        Bytes(g.bytes_per_token),
        Bytes(g.d_bytes_per_token)
    ));
    let head_split = if g.attention == "mla" {
        "replicated on every rank (MLA)".to_string()
    } else {
        format!(
            "prefill rank holds {} head(s) from #{}, decode rank {} head(s) from #{}",
            g.p_local_heads, g.p_first_head, g.d_local_heads, g.d_first_head
        )
    };
    out.push_str(&format!("  heads:      {head_split}\n"));
    out.push_str(&format!(
        "  regions:    {} registered per rank, {} in descriptor lists{}\n",
        g.registered_regions,
        g.desc_regions,
        if g.layout == Layout::FlashInfer { " (each joint K|V block split in two)" } else { "" }
    ));
    let slice = if g.d_block_bytes == g.p_block_bytes {
        "whole blocks".to_string()
    } else {
        format!("a {} slice at offset {} of each prefill block", Bytes(g.d_block_bytes), Bytes(g.slice_offset_bytes))
    };
    out.push_str(&format!(
        "  block:      prefill {} per region, decode reads {} per descriptor ({slice})\n",
        Bytes(g.p_block_bytes),
        Bytes(g.d_block_bytes)
    ));
    let mut t = super::style::table();
    t.set_header(vec!["ISL (tokens)", "blocks", "descriptors", "bytes per request", "per descriptor"]);
    for r in reqs {
        let blocks = if g.sliding_layers > 0 && r.sliding_blocks != r.blocks {
            format!("{} (+{} sliding)", r.blocks, r.sliding_blocks)
        } else {
            r.blocks.to_string()
        };
        t.add_row(vec![
            r.isl.to_string(),
            blocks,
            r.descs.to_string(),
            format!("{} ({} B)", Bytes(r.bytes), r.bytes),
            Bytes(g.d_block_bytes).to_string(),
        ]);
    }
    super::style::align_numbers(&mut t, &["ISL", "blocks", "descriptors", "bytes", "per descriptor"], &[]);
    out.push_str(&t.to_string());
    out.push('\n');
    out.push_str(&style.dim(
        "  one request = one descriptor per (region, block) of the request, each read by the decode rank (vLLM NixlConnector)\n",
    ));
    out
}

/// The table of KV-shaped sweep rows (one per backend, block size, op and
/// ISL), with its footnotes.
pub fn render_rows(r: &SweepResults, multi: bool, style: Style) -> String {
    let mut out = String::new();
    let kv_rows: Vec<&Row> = r.rows.iter().filter(|x| x.kv.is_some()).collect();
    if let Some(k) = r.header.settings.kv.as_ref() {
        for g in &k.geometries {
            out.push_str(&shape_line(g));
            out.push('\n');
        }
        out.push_str(&format!(
            "block ids {}, {} request{} in flight, one notification per request{}\n",
            k.pattern,
            k.inflight,
            if k.inflight == 1 { "" } else { "s" },
            if k.no_desc_merge { ", NIXL descriptor merging off" } else { "" }
        ));
    }
    let mut t = super::style::table();
    let mut header = Vec::new();
    if multi {
        header.push("backend");
    }
    header.extend([
        "op",
        "block",
        "ISL",
        "descs",
        "bytes",
        "req p50 ms",
        "req p99 ms",
        "eff GB/s",
        "contig GB/s",
        "layout eff",
        "make p50 us",
        "reqs",
        "data",
        "notifs",
        "transport",
    ]);
    t.set_header(header.clone());
    let mut order = kv_rows.clone();
    let op_rank = |x: &Row| r.header.settings.ops.iter().position(|o| *o == x.op).unwrap_or(usize::MAX);
    order.sort_by_key(|x| {
        let k = x.kv.as_ref().map_or((0, 0), |k| (k.geometry.block_tokens, k.isl));
        (k.0, op_rank(x), k.1, x.label())
    });
    for row in order {
        let Some(k) = row.kv.as_ref() else { continue };
        let (data, notifs) = (data_cell(row, style), notifs_cell(row, style));
        let eff = format!("{:.1}%", 100.0 * k.layout_efficiency);
        let eff = if k.layout_efficiency < 0.25 { style.warn(&eff) } else { eff };
        let mut cells = Vec::new();
        if multi {
            cells.push(row.label());
        }
        cells.extend([
            row.op.to_string(),
            format!("{}t {}", k.geometry.block_tokens, Bytes(row.block_bytes)),
            k.isl.to_string(),
            row.descs.to_string(),
            Bytes(row.size_bytes).to_string(),
            fmt_ms(k.ttft_added_ms_p50),
            fmt_ms(k.ttft_added_ms_p99),
            fmt_gbps(k.effective_gbps),
            fmt_gbps(k.contiguous_gbps),
            eff,
            if row.backend == "ucx" { "-".into() } else { fmt_us(k.make_us.p50) },
            k.requests.to_string(),
            data,
            notifs,
            transport_cell(row, style),
        ]);
        t.add_row(cells);
    }
    super::style::align_numbers(&mut t, &header, &["backend", "op", "data", "transport"]);
    out.push_str(&t.to_string());
    out.push('\n');
    out.push_str(&style.dim(
        "req = one request: make_xfer_req + post + completion of every (region, block) descriptor (what it adds to TTFT at that ISL)\n",
    ));
    out.push_str(&style.dim(
        "eff GB/s = request bytes / req p50; contig GB/s = the same bytes as one descriptor, same processes, same run; layout eff = eff / contig; GB/s = 1e9 bytes/s\n",
    ));
    out
}

fn fmt_ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}
