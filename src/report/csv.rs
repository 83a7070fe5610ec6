//! `results.csv`: one line per row, flat columns. Written by hand (no crate):
//! every field is a number or a simple token; the one free-text field
//! (UCX_TLS) is quoted.

use super::schema::SweepResults;

/// Column names, in order.
pub const COLUMNS: &[&str] = &[
    "backend",
    "plugin",
    "op",
    "size_bytes",
    "descs",
    "block_bytes",
    "xfer_path",
    "iterations",
    "warmup_iterations",
    "elapsed_s",
    "gbps",
    "lat_p50_us",
    "lat_p99_us",
    "lat_min_us",
    "lat_max_us",
    "lat_mean_us",
    "post_p50_us",
    "post_p99_us",
    "prep_us",
    "make_us",
    "nixl_xfer_us",
    "ucx_tls",
    "verified",
    "notifs_expected",
    "notifs_received",
    "kv_model",
    "kv_block_tokens",
    "kv_isl",
    "kv_effective_gbps",
    "kv_contiguous_gbps",
    "kv_layout_efficiency",
    "kv_ttft_added_ms_p50",
    "kv_ttft_added_ms_p99",
];

/// Renders the rows as CSV with a header line.
pub fn to_csv(r: &SweepResults) -> String {
    let mut out = COLUMNS.join(",");
    out.push('\n');
    for row in &r.rows {
        let fields: Vec<String> = vec![
            row.backend.clone(),
            row.plugin.clone(),
            row.op.to_string(),
            row.size_bytes.to_string(),
            row.descs.to_string(),
            row.block_bytes.to_string(),
            row.xfer_path.to_string(),
            row.iterations.to_string(),
            row.warmup_iterations.to_string(),
            format!("{:.6}", row.elapsed_s),
            format!("{:.6}", row.gbps),
            format!("{:.3}", row.latency_us.p50),
            format!("{:.3}", row.latency_us.p99),
            format!("{:.3}", row.latency_us.min),
            format!("{:.3}", row.latency_us.max),
            format!("{:.3}", row.latency_us.mean),
            format!("{:.3}", row.post_us.p50),
            format!("{:.3}", row.post_us.p99),
            format!("{:.3}", row.prep_us),
            format!("{:.3}", row.make_us),
            row.telemetry.map(|t| t.xfer_duration_us.to_string()).unwrap_or_default(),
            format!("\"{}\"", row.ucx_tls.as_deref().unwrap_or("").replace('"', "\"\"")),
            row.verified.to_string(),
            row.notifs_expected.to_string(),
            row.notifs_received.to_string(),
        ];
        let mut fields = fields;
        match &row.kv {
            Some(k) => fields.extend([
                format!("\"{}\"", k.geometry.model.replace('"', "\"\"")),
                k.geometry.block_tokens.to_string(),
                k.isl.to_string(),
                format!("{:.6}", k.effective_gbps),
                format!("{:.6}", k.contiguous_gbps),
                format!("{:.6}", k.layout_efficiency),
                format!("{:.6}", k.ttft_added_ms_p50),
                format!("{:.6}", k.ttft_added_ms_p99),
            ]),
            None => fields.extend(std::iter::repeat_n(String::new(), 8)),
        }
        debug_assert_eq!(fields.len(), COLUMNS.len());
        out.push_str(&fields.join(","));
        out.push('\n');
    }
    out
}
