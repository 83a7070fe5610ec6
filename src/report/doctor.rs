//! The doctor's screen: a pure function of [`Facts`] and [`Diagnosis`].

use std::fmt::Write;

use super::style::Style;
use crate::doctor::{Diagnosis, Facts, Severity};

fn sev(style: &Style, s: Severity) -> String {
    match s {
        Severity::Info => style.dim("info "),
        Severity::Warning => style.warn("WARN "),
        Severity::Error => style.bad("ERROR"),
    }
}

/// Renders the report (one screen when things are healthy).
pub fn render(f: &Facts, d: &Diagnosis, style: &Style) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "kvprobe doctor {} on {}", f.kvprobe, f.host);
    if f.root != std::path::Path::new("/") {
        let _ = writeln!(s, "{}", style.warn(&format!("hardware read from {} (not this host)", f.root.display())));
    }
    // NIXL
    match &f.nixl {
        Some(n) => {
            let _ = writeln!(
                s,
                "\nNIXL  {}  {}  ({})",
                n.version.as_deref().unwrap_or("version unknown"),
                n.location.lib.display(),
                n.location.found_by
            );
            let ok: Vec<&str> = n.plugins.iter().filter(|p| p.loads).map(|p| p.name.as_str()).collect();
            let _ =
                writeln!(s, "      plugins that load: {}", if ok.is_empty() { "none".into() } else { ok.join(", ") });
            for p in n.plugins.iter().filter(|p| !p.loads) {
                let why = if p.missing_libs.is_empty() {
                    "NIXL refused it (NIXL_LOG_LEVEL=DEBUG says why)".to_string()
                } else {
                    format!("missing {}", p.missing_libs.join(", "))
                };
                let _ = writeln!(s, "      {} {:<11} {}", style.dim("does not load:"), p.name, why);
            }
        }
        None => {
            let _ = writeln!(s, "\nNIXL  {}", style.bad("not usable (see findings)"));
        }
    }
    if let Some(lf) = &f.libfabric {
        libfabric(&mut s, f, lf, style);
    }
    // UCX
    match &f.ucx {
        Some(u) => {
            let _ = writeln!(s, "\nUCX   {}  {}  ({})", u.version, u.lib.display(), u.found_by);
            let mods: Vec<String> = u
                .modules
                .iter()
                .map(|m| {
                    if m.missing_libs.is_empty() {
                        m.name.clone()
                    } else {
                        style.warn(&format!("{} (needs {})", m.name, m.missing_libs.join(", ")))
                    }
                })
                .collect();
            if let Some(c) = &u.configure_flags {
                let _ = writeln!(s, "      configured with: {c}");
            }
            let _ =
                writeln!(s, "      modules built: {}", if mods.is_empty() { "none".into() } else { mods.join(", ") });
            let efa = u.modules.iter().find(|m| m.name == "uct_ib_efa");
            let srd_here = u.resources.iter().any(|r| r.transport == "srd");
            let _ = writeln!(
                s,
                "      srd (EFA) built in: {}",
                match (efa, srd_here) {
                    (None, _) => format!("no (no uct_ib_efa module in {})", u.modules_dir.display()),
                    (Some(_), true) => "yes, and UCX sees an EFA device".to_string(),
                    (Some(m), false) if !m.missing_libs.is_empty() =>
                        format!("yes, but the module cannot load here (needs {})", m.missing_libs.join(", ")),
                    (Some(_), false) => "yes (no EFA device here)".to_string(),
                }
            );
            let _ = writeln!(s, "      transports/devices (ucx_info -d):");
            let mut last = String::new();
            for r in &u.resources {
                let line = format!("{:<10} {:<14} {:<12} {}", r.component, r.transport, r.device, r.kind);
                if line != last {
                    let enabled = u.enabled.iter().any(|e| *e == format!("{}/{}", r.transport, r.device));
                    let mark = if enabled { "  " } else { "x " };
                    let _ = writeln!(s, "        {}{}", mark, if enabled { line.clone() } else { style.dim(&line) });
                    last = line;
                }
            }
            if u.resources.iter().any(|r| !u.enabled.iter().any(|e| *e == format!("{}/{}", r.transport, r.device))) {
                let _ = writeln!(
                    s,
                    "        {}",
                    style.dim("(x: not enabled under this environment's UCX_TLS / UCX_NET_DEVICES)")
                );
            }
        }
        None => {
            let _ = writeln!(s, "\nUCX   {}", style.bad("not usable (see findings)"));
        }
    }
    // hardware
    let t = &f.topology;
    let _ = writeln!(
        s,
        "\nHost  kernel {}  NUMA nodes {}",
        if t.kernel.is_empty() { "?" } else { &t.kernel },
        t.numa_nodes
    );
    if t.rdma.is_empty() {
        let _ = writeln!(s, "      RDMA: none (no /sys/class/infiniband devices)");
    }
    for d in &t.rdma {
        let ports: Vec<String> =
            d.ports.iter().map(|p| format!("port {} {} {} {}", p.port, p.state, p.rate, p.link_layer)).collect();
        let _ = writeln!(
            s,
            "      RDMA {:<12} {:<10} NUMA {:<3} {}",
            d.name,
            d.driver.as_deref().unwrap_or("?"),
            d.numa.map_or("-".into(), |n| n.to_string()),
            ports.join("; ")
        );
    }
    for n in &t.net {
        let _ = writeln!(
            s,
            "      NIC  {:<12} {:<5} {:>9}  MTU {:<5} NUMA {:<3} {}",
            n.name,
            n.operstate,
            n.speed_mbps.map_or("speed ?".into(), |v| format!("{} Gb/s", v as f64 / 1000.0)),
            n.mtu.map_or("?".into(), |m| m.to_string()),
            n.numa.map_or("-".into(), |v| v.to_string()),
            n.driver.as_deref().unwrap_or("")
        );
    }
    if t.gpus.is_empty() {
        let _ = writeln!(s, "      GPUs: none on the PCI bus");
    }
    for g in &t.gpus {
        let nv = f.nvml.as_ref().and_then(|n| n.gpus.iter().find(|x| x.pci == g.pci));
        let _ = writeln!(
            s,
            "      GPU  {:<12} {}:{}  NUMA {:<3} {}{}",
            g.pci,
            g.vendor,
            g.device,
            g.numa.map_or("-".into(), |v| v.to_string()),
            match &g.pcie {
                Some(l) => format!(
                    "PCIe x{} {} (max x{} {})  ",
                    l.width.map_or("?".into(), |w| w.to_string()),
                    l.speed,
                    l.max_width.map_or("?".into(), |w| w.to_string()),
                    l.max_speed
                ),
                None => String::new(),
            },
            match nv {
                Some(x) if x.nvlinks.is_empty() => format!("{}  NVLink: none active", x.name),
                Some(x) => format!("{}  NVLink: {} active link(s)", x.name, x.nvlinks.len()),
                None if g.vendor == "0x10de" => "NVLink: unknown (no NVML)".into(),
                None => String::new(),
            }
        );
    }
    if let Some(c) = &f.cuda {
        for d in &c.devices {
            let yn = |v: Option<bool>| match v {
                Some(true) => "yes",
                Some(false) => "no",
                None => "?",
            };
            let _ = writeln!(
                s,
                "      CUDA {} {}  {}  GPUDirect RDMA: {}  dma-buf: {}  (driver CUDA {})",
                d.index,
                d.pci,
                crate::units::Bytes(d.memory_bytes),
                yn(d.gpudirect_rdma),
                yn(d.dma_buf),
                c.driver
            );
        }
    }
    let _ = writeln!(
        s,
        "      modules: {}",
        if t.modules.is_empty() { "none of interest".into() } else { t.modules.join(", ") }
    );
    // carriers
    let _ = writeln!(s, "\nWhat will carry KV traffic");
    for c in &d.carriers {
        let _ = writeln!(s, "  {} {:<24} {}", sev(style, c.severity), c.path, c.carrier);
    }
    // findings
    let count = |x: Severity| d.findings.iter().filter(|f| f.severity == x).count();
    let _ = writeln!(
        s,
        "\nFindings: {} error(s), {} warning(s), {} note(s)",
        count(Severity::Error),
        count(Severity::Warning),
        count(Severity::Info)
    );
    for x in &d.findings {
        let _ = writeln!(s, "  {} {}  {}", sev(style, x.severity), x.title, style.dim(&format!("[{}]", x.id)));
        let _ = writeln!(s, "        evidence: {}", x.evidence);
        let _ = writeln!(s, "        fix: {}", x.fix);
    }
    let verdict = match d.exit_code {
        0 => style.good("healthy (exit 0)"),
        1 => style.warn("works, with warnings (exit 1)"),
        _ => style.bad("errors (exit 2)"),
    };
    let _ = writeln!(s, "\n{verdict}");
    s
}

/// The LIBFABRIC plugin's block: loads or why not, its libfabric, the
/// providers there and what NIXL's rule picks.
fn libfabric(s: &mut String, f: &Facts, lf: &crate::doctor::LibfabricFacts, style: &Style) {
    let loads = f.nixl.as_ref().is_some_and(|n| n.plugins.iter().any(|p| p.name == "LIBFABRIC" && p.loads));
    let _ =
        writeln!(s, "\nLIBFABRIC plugin  {}", if loads { "loads".to_string() } else { style.warn("cannot load here") });
    for r in lf.check.reasons() {
        let _ = writeln!(s, "      {} {r}", style.dim("-"));
    }
    let c = &lf.check.libfabric;
    match (&c.path, &lf.report) {
        (Some(_), Some(r)) => {
            let _ = writeln!(
                s,
                "      libfabric {}  {}  ({}{})",
                r.version,
                r.library.display(),
                c.how,
                if c.preload { ", loaded before the plugin" } else { "" }
            );
        }
        (Some(p), None) => {
            let _ = writeln!(
                s,
                "      libfabric  {}  ({}){}",
                p.display(),
                c.how,
                lf.load_error.as_ref().map(|e| format!(": {}", style.warn(e))).unwrap_or_default()
            );
        }
        (None, _) => {
            let _ = writeln!(s, "      libfabric  {}  (searched: {})", style.warn("not found"), c.searched.join("; "));
        }
    }
    if let Some(r) = &lf.report {
        // one line per provider: its endpoint types and domains
        let mut names: Vec<&str> = r.providers.iter().map(|p| p.provider.as_str()).collect();
        names.dedup();
        let mut seen = Vec::new();
        for n in names {
            if seen.contains(&n) {
                continue;
            }
            seen.push(n);
            let of: Vec<&crate::fabric::FabricInfo> = r.providers.iter().filter(|p| p.provider == n).collect();
            let mut eps: Vec<&str> = of.iter().map(|p| p.ep_type.as_str()).collect();
            eps.sort_unstable();
            eps.dedup();
            let mut doms: Vec<&str> = Vec::new();
            for d in of.iter().filter_map(|p| p.domain.as_deref()) {
                if !doms.contains(&d) {
                    doms.push(d);
                }
            }
            let rma = of.iter().any(|p| p.rma);
            let hmem = of.iter().any(|p| p.hmem);
            let _ = writeln!(
                s,
                "          {:<14} {:<12} {}{}{}",
                n,
                eps.join(","),
                doms.join(", "),
                if rma { "  rma" } else { "" },
                if hmem { "  hmem" } else { "" }
            );
        }
        if let Some(e) = &r.providers_error {
            let _ = writeln!(s, "          {}", style.warn(&format!("listing failed: {e}")));
        }
        let _ = match (&r.nixl_pick, &r.nixl_pick_error) {
            (Some(p), _) => writeln!(
                s,
                "      NIXL 1.5's rule (cxi, efa, tcp, sockets) picks: {} on {}{}",
                p.provider,
                p.domains.join(", "),
                if p.hmem { " (FI_HMEM)" } else { " (no FI_HMEM)" }
            ),
            (None, Some(e)) => writeln!(
                s,
                "      NIXL's provider query: {}{}",
                style.warn(e),
                if version_lt(&r.version, 1, 18) {
                    format!(" (the plugin asks for API 1.18; this libfabric implements {})", r.version)
                } else {
                    String::new()
                }
            ),
            (None, None) => writeln!(
                s,
                "      NIXL's rule picks: {}",
                style.warn("nothing (no cxi, efa, tcp or sockets RDM provider)")
            ),
        };
    }
    if !lf.env.is_empty() {
        let env: Vec<String> = lf.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(s, "      environment: {}", env.join(" "));
    }
}

/// `major.minor` below (major, minor).
fn version_lt(v: &str, major: u32, minor: u32) -> bool {
    let mut it = v.split('.').map(|x| x.parse::<u32>().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0)) < (major, minor)
}
