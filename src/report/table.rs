//! The terminal table: a pure function from results to text.

use super::schema::{Flag, Row, RunStatus, SweepResults};
use super::style::{FAIL, PASS, Style};
use crate::units::{Bytes, fmt_gbps, fmt_us};

/// A short transport cell: `cma/memory zero-copy` (+ ` !` when flagged).
pub(super) fn transport_cell(r: &Row, style: Style) -> String {
    match &r.transport {
        None => style.dim("?"),
        Some(t) => {
            let mut s = format!("{} {}", t.lanes.join("+"), t.protocol);
            if !t.notif_lanes.is_empty() {
                s.push_str(&format!(" (notif {})", t.notif_lanes.join("+")));
            }
            if t.flags.is_empty() { s } else { style.warn(&format!("{s} !")) }
        }
    }
}

/// The data check of a row: ok or FAIL.
pub(super) fn data_cell(row: &Row, style: Style) -> String {
    match (row.verified, row.corrupt_blocks) {
        (true, _) => style.good(PASS),
        (false, 0) => style.bad(FAIL),
        // how much arrived wrong: blocks over transfers
        (false, b) => style.bad(&format!("{FAIL} {b} blk/{} xfer", row.corrupt_transfers)),
    }
}

/// Notifications received (NIXL rows), red when short of those sent.
pub(super) fn notifs_cell(row: &Row, style: Style) -> String {
    if row.backend == "ucx" {
        "-".to_string()
    } else if row.notifs_received == row.notifs_expected {
        row.notifs_received.to_string()
    } else {
        style.bad(&format!("{}/{}", row.notifs_received, row.notifs_expected))
    }
}

/// The NIXL row's GB/s over the raw UCX row's for the same point.
pub(super) fn ratio(r: &Row, rows: &[Row]) -> Option<f64> {
    if r.label() != "nixl-ucx" {
        return None;
    }
    let u = rows
        .iter()
        .find(|u| u.backend == "ucx" && u.op == r.op && u.size_bytes == r.size_bytes && u.descs == r.descs)?;
    (u.gbps > 0.0).then(|| r.gbps / u.gbps)
}

/// Renders the header lines, the table of rows, the findings and the legend.
pub fn render(r: &SweepResults, style: Style) -> String {
    let h = &r.header;
    let mut out = String::new();
    let nixl_version = h
        .nixl
        .library_version
        .clone()
        .or_else(|| h.nixl.location.version.clone())
        .unwrap_or_else(|| "unknown version".into());
    let backends: Vec<String> = {
        let mut v: Vec<String> = r.rows.iter().map(|x| x.label()).collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    let multi = backends.len() > 1;
    out.push_str(&format!(
        "kvprobe sweep on {} ({} CPUs) - NIXL {} [{}] - {} - UCX_TLS={}\n",
        h.host.hostname,
        h.host.cpus,
        nixl_version,
        h.nixl.location.lib.display(),
        if h.settings.backends.is_empty() {
            format!("{} backend", h.settings.backend)
        } else {
            format!(
                "backend{} {}",
                if h.settings.backends.len() > 1 { "s" } else { "" },
                h.settings.backends.join(", ")
            )
        },
        h.ucx_tls.as_deref().unwrap_or("(unset: UCX chooses)"),
    ));
    if let Some(u) = &h.ucx {
        out.push_str(&format!(
            "UCX {} [{}]",
            u.raw.as_ref().map_or("", |x| x.version.as_str()),
            u.location.lib.display()
        ));
        if let Some(raw) = &u.raw {
            out.push_str(&format!(
                "; raw UCX with NIXL's defaults ({})",
                raw.applied.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
            ));
        }
        out.push('\n');
    }
    if let Some(f) = &h.nixl.libfabric {
        out.push_str(&format!(
            "libfabric {} [{}]{}\n",
            f.version.as_deref().unwrap_or("(version unknown)"),
            f.lib.as_ref().map_or("?".to_string(), |p| p.display().to_string()),
            match &f.provider {
                Some(p) => format!("; NIXL's rule picks {p} on {}", f.domains.join(", ")),
                None => f.error.as_ref().map(|e| format!("; {e}")).unwrap_or_default(),
            }
        ));
    }
    out.push_str(&format!(
        "{} memory{}, {} path, progress thread {}, notifications on {} transfer{}\n",
        h.settings.mem,
        match (h.settings.src_mem.kind, h.settings.dst_mem.kind, h.settings.hugepages) {
            (crate::mem::MemKind::Vram, crate::mem::MemKind::Vram, _) => "",
            (_, _, true) => " (host buffers on huge pages)",
            (_, _, false) => " (host buffers on 4 KiB pages)",
        },
        h.settings.xfer_path,
        if h.settings.agent.progress_thread { "on" } else { "off" },
        if h.settings.notif_every_transfer { "every" } else { "the checked" },
        if h.settings.ucx_local_completion {
            "; raw UCX WRITEs timed to local completion, one flush per loop (ucx_perftest's meaning)"
        } else {
            ""
        },
    ));

    if h.settings.kv.is_some() {
        out.push_str(&super::kv::render_rows(r, multi, style));
    } else {
        out.push_str(&size_table(r, multi, style));
    }
    out.push_str(&findings(r, style));
    if let Some(v) = &r.verdict {
        out.push_str(&verdict_lines(v, style));
    }
    match r.status {
        RunStatus::Complete => {}
        RunStatus::Running => out.push_str(&style.warn("status: running (incomplete)\n")),
        RunStatus::Failed => out.push_str(&style.bad("status: FAILED\n")),
        RunStatus::Interrupted => out.push_str(&style.warn("status: interrupted\n")),
    }
    for e in &r.errors {
        out.push_str(&style.bad(&format!("error: {e}\n")));
    }
    for w in &r.warnings {
        out.push_str(&style.warn(&format!("warning: {w}\n")));
    }
    out
}

/// The table of size rows, with its footnotes.
fn size_table(r: &SweepResults, multi: bool, style: Style) -> String {
    let h = &r.header;
    let mut out = String::new();
    let mut t = super::style::table();
    let mut header = Vec::new();
    if multi {
        header.push("backend");
    }
    header.extend(["op", "size", "descs", "GB/s"]);
    if multi {
        header.push("nixl/ucx");
    }
    header.extend(["lat p50 us", "lat p99 us", "post p50 us", "prep+make us", "iters", "data", "notifs", "transport"]);
    t.set_header(header.clone());

    // Points in the order measured; within a point, backends side by side.
    let mut order: Vec<&Row> = r.rows.iter().collect();
    let op_rank = |x: &Row| h.settings.ops.iter().position(|o| *o == x.op).unwrap_or(usize::MAX);
    order.sort_by_key(|x| (op_rank(x), x.size_bytes, x.label()));
    for row in order {
        let (data, notifs) = (data_cell(row, style), notifs_cell(row, style));
        let mut cells = Vec::new();
        if multi {
            cells.push(row.label());
        }
        cells.extend([
            row.op.to_string(),
            Bytes(row.size_bytes).to_string(),
            row.descs.to_string(),
            fmt_gbps(row.gbps),
        ]);
        if multi {
            cells.push(ratio(row, &r.rows).map_or(String::new(), |x| format!("{x:.2}x")));
        }
        cells.extend([
            fmt_us(row.latency_us.p50),
            fmt_us(row.latency_us.p99),
            fmt_us(row.post_us.p50),
            if row.backend == "ucx" { "-".to_string() } else { fmt_us(row.prep_us + row.make_us) },
            row.iterations.to_string(),
            data,
            notifs,
            transport_cell(row, style),
        ]);
        t.add_row(cells);
    }
    super::style::align_numbers(&mut t, &header, &["backend", "op", "data", "transport"]);
    out.push_str(&t.to_string());
    out.push('\n');
    let every = r.rows.iter().any(|x| x.verify == "all");
    out.push_str(&style.dim(if every {
        "GB/s = 1e9 bytes/s over the checked transfers' own time (one in flight; fills and checks between them not counted); lat = post to observed completion; data = every transfer's bytes checked, block by block (--verify all)\n"
    } else {
        "GB/s = 1e9 bytes/s over the timed loop (one transfer in flight); lat = post to observed completion; data = pattern check of the first and last transfer\n"
    }));
    if multi {
        out.push_str(&style.dim(
            "nixl/ucx = nixl-ucx's GB/s over raw UCX's for the same point (NIXL's overhead; each backend measured alone)\n",
        ));
    }
    out
}

/// The verdict: one line per path, then its reasons.
pub fn verdict_lines(v: &crate::verdict::Verdict, style: Style) -> String {
    use crate::verdict::Grade;
    let mut out = format!("verdict: {}\n", style.grade(v.grade));
    for p in &v.paths {
        let rate = match (p.measured_gbps, &p.expected) {
            (Some(m), Some(e)) => format!("{} GB/s of {} expected", fmt_gbps(m), fmt_gbps(e.gbps)),
            (Some(m), None) => format!("{} GB/s, no yardstick", fmt_gbps(m)),
            _ => String::new(),
        };
        out.push_str(&format!(
            "  {} {:<14} {:<5} {} on {}  {}\n",
            style.grade(p.grade),
            p.backend,
            p.op,
            p.class,
            if p.lanes.is_empty() { "?".to_string() } else { p.lanes.join("+") },
            rate
        ));
        for reason in p.reasons.iter().filter(|x| x.grade != Grade::Pass || x.check == "bandwidth") {
            out.push_str(&format!("      {} {}: {}\n", style.grade(reason.grade), reason.check, reason.text));
        }
    }
    out
}

/// Every distinct flag of the rows, with the rows it concerns, its evidence and its fix.
pub fn findings(r: &SweepResults, style: Style) -> String {
    let mut seen: Vec<(&Flag, Vec<String>)> = Vec::new();
    for row in &r.rows {
        for f in row.transport.iter().flat_map(|t| &t.flags) {
            let label = format!("{} {} {}", row.label(), row.op, Bytes(row.size_bytes));
            match seen.iter_mut().find(|(g, _)| g.kind == f.kind && g.evidence == f.evidence) {
                Some((_, rows)) => rows.push(label),
                None => seen.push((f, vec![label])),
            }
        }
    }
    if seen.is_empty() {
        return String::new();
    }
    let mut out = style.warn("findings:\n");
    for (f, rows) in seen {
        let which = if rows.len() > 3 { format!("{} rows", rows.len()) } else { rows.join(", ") };
        out.push_str(&format!(
            "  ! {} ({which})\n    seen: {}\n    fix:  {}\n",
            style.warn(&f.kind),
            f.evidence,
            f.fix
        ));
    }
    out
}
