//! The terminal table: a pure function from results to text.

use comfy_table::presets::UTF8_HORIZONTAL_ONLY;
use comfy_table::{CellAlignment, ContentArrangement, Table, TableComponent};

use super::schema::{RunStatus, SweepResults};
use super::style::{FAIL, PASS, Style};
use crate::units::{Bytes, fmt_gbps, fmt_us};

/// Renders the header lines, the table of rows and the legend.
pub fn render(r: &SweepResults, style: Style) -> String {
    let h = &r.header;
    let mut out = String::new();
    let nixl_version = h
        .nixl
        .library_version
        .clone()
        .or_else(|| h.nixl.location.version.clone())
        .unwrap_or_else(|| "unknown version".into());
    out.push_str(&format!(
        "kvprobe sweep on {} ({} CPUs) - NIXL {} [{}] - {} backend - UCX_TLS={}\n",
        h.host.hostname,
        h.host.cpus,
        nixl_version,
        h.nixl.location.lib.display(),
        h.settings.backend,
        h.ucx_tls.as_deref().unwrap_or("(unset: UCX chooses)"),
    ));
    out.push_str(&format!(
        "{} memory, {} path, progress thread {}, notifications on {} transfer\n",
        h.settings.mem,
        h.settings.xfer_path,
        if h.settings.agent.progress_thread { "on" } else { "off" },
        if h.settings.notif_every_transfer { "every" } else { "the checked" },
    ));

    let mut t = Table::new();
    t.load_preset(UTF8_HORIZONTAL_ONLY).set_content_arrangement(ContentArrangement::Disabled);
    // rule lines above, below and under the header only; none between rows
    for c in [
        TableComponent::HorizontalLines,
        TableComponent::MiddleIntersections,
        TableComponent::LeftBorderIntersections,
        TableComponent::RightBorderIntersections,
    ] {
        t.remove_style(c);
    }
    t.set_header(vec![
        "op",
        "size",
        "descs",
        "GB/s",
        "lat p50 us",
        "lat p99 us",
        "post p50 us",
        "prep+make us",
        "iters",
        "data",
        "notifs",
    ]);
    for row in &r.rows {
        let data = if row.verified { style.good(PASS) } else { style.bad(FAIL) };
        let notifs = if row.notifs_received == row.notifs_expected {
            format!("{}", row.notifs_received)
        } else {
            style.bad(&format!("{}/{}", row.notifs_received, row.notifs_expected))
        };
        t.add_row(vec![
            row.op.to_string(),
            Bytes(row.size_bytes).to_string(),
            row.descs.to_string(),
            fmt_gbps(row.gbps),
            fmt_us(row.latency_us.p50),
            fmt_us(row.latency_us.p99),
            fmt_us(row.post_us.p50),
            fmt_us(row.prep_us + row.make_us),
            row.iterations.to_string(),
            data,
            notifs,
        ]);
    }
    for i in [1, 2, 3, 4, 5, 6, 7, 8, 10] {
        if let Some(c) = t.column_mut(i) {
            c.set_cell_alignment(CellAlignment::Right);
        }
    }
    out.push_str(&t.to_string());
    out.push('\n');
    out.push_str(&style.dim(
        "GB/s = 1e9 bytes/s over the timed loop (one transfer in flight); lat = post to observed completion; data = pattern check of the first and last transfer\n",
    ));
    match r.status {
        RunStatus::Complete => {}
        RunStatus::Running => out.push_str(&style.warn("status: running (incomplete)\n")),
        RunStatus::Failed => out.push_str(&style.bad("status: FAILED\n")),
        RunStatus::Interrupted => out.push_str(&style.warn("status: interrupted\n")),
    }
    for e in &r.errors {
        out.push_str(&style.bad(&format!("error: {e}\n")));
    }
    out
}
