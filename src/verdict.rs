//! The verdict: PASS / WARN / FAIL per measured path, with the reason.
//!
//! Two questions per path (backend x operation):
//! (a) did the bytes take the best transport this hardware has? A TCP path
//!     where shared memory, cuda_ipc or RDMA exists fails whatever its rate;
//!     software emulation on an RDMA transport fails; notifications over TCP
//!     and a far NUMA node warn.
//! (b) is its large-transfer rate what the link should give? The yardstick
//!     per transport class: a plain TCP stream between the same two processes
//!     (the link probe) or the NIC's rated speed for TCP; this host's own
//!     memcpy, measured on the spot, for shared memory; the port rate (IB) or
//!     the instance type's EFA rate for RDMA; the NVLink generation's rate
//!     for cuda_ipc. Measured / expected >= `pass` passes, >= `warn` warns,
//!     below fails. docs/VERDICT.md lists the rates with their sources.
//!
//! A pure function of the results and a few host facts, so it is tested
//! with fixtures and can be recomputed from any results.json.

use serde::{Deserialize, Serialize};

use crate::report::schema::{Row, SweepResults};
use crate::topology::Topology;
use crate::transport::{FABRIC_RDMA, FABRIC_TCP, RDMA, SHM, lane_transport};

/// A grade; the worst grade of its parts is the whole's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Grade {
    /// As good as this hardware allows.
    Pass,
    /// Works, but something costs performance or could not be judged.
    Warn,
    /// The wrong transport, or far below the link's rate.
    Fail,
}

impl std::fmt::Display for Grade {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Grade::Pass => "PASS",
            Grade::Warn => "WARN",
            Grade::Fail => "FAIL",
        })
    }
}

/// Pass/warn thresholds on measured / expected.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Thresholds {
    /// At least this fraction of the expected rate passes (None: the
    /// class's default, [`default_fractions`]).
    pub pass: Option<f64>,
    /// At least this fraction warns; below fails (None: the class's default).
    pub warn: Option<f64>,
    /// Rows of at least this many bytes count as large transfers (the
    /// largest row counts when none is this large).
    pub large_bytes: u64,
    /// Expected rate given by the user, GB/s (overrides the table).
    #[serde(default)]
    pub expect_gbps: Option<f64>,
}

impl Default for Thresholds {
    fn default() -> Thresholds {
        Thresholds { pass: None, warn: None, large_bytes: 16 << 20, expect_gbps: None }
    }
}

/// Default (pass, warn) fractions per transport class. Shared memory is held
/// to less than memcpy: `cma` pins every page of both buffers per copy
/// (docs/VERDICT.md); networks to the nccl-tests habit of a high bar against
/// line rate or a measured stream.
pub fn default_fractions(class: &str) -> (f64, f64) {
    match class {
        "shm" => (0.5, 0.25),
        _ => (0.7, 0.4),
    }
}

impl Thresholds {
    /// (pass, warn) for a transport class.
    pub fn fractions(&self, class: &str) -> (f64, f64) {
        let (p, w) = default_fractions(class);
        (self.pass.unwrap_or(p), self.warn.unwrap_or(w))
    }
}

/// One reason behind a grade.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reason {
    /// Its grade.
    pub grade: Grade,
    /// `transport`, `bandwidth`, `link`, `notifications`, `numa`...
    pub check: String,
    /// What was found.
    pub text: String,
}

/// The rate a path should reach, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Expected {
    /// GB/s (1e9 bytes/s).
    pub gbps: f64,
    /// What it is: "TCP stream between the two processes (link probe)",
    /// "eth0 rated 100000 Mb/s", "memcpy on this host", ...
    pub basis: String,
}

/// The verdict on one path.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PathVerdict {
    /// Backend (`nixl-ucx`, `nixl-libfabric`, `ucx`).
    pub backend: String,
    /// `READ` or `WRITE`.
    pub op: String,
    /// Worst of the reasons.
    pub grade: Grade,
    /// Transport class of the data lanes: `tcp`, `shm`, `rdma`, `cuda_ipc`, `other`.
    pub class: String,
    /// The data lanes seen.
    pub lanes: Vec<String>,
    /// Best large-transfer rate, GB/s, and the size it was measured at.
    pub measured_gbps: Option<f64>,
    /// Bytes of that row.
    pub measured_bytes: Option<u64>,
    /// The yardstick.
    pub expected: Option<Expected>,
    /// Why.
    pub reasons: Vec<Reason>,
}

/// The whole run's verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// Worst path grade.
    pub grade: Grade,
    /// Per path.
    pub paths: Vec<PathVerdict>,
    /// Thresholds used.
    pub thresholds: Thresholds,
}

/// Host facts the verdict needs beyond the results.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// This host's hardware.
    pub topology: Topology,
    /// EC2 instance type (DMI product name), when on EC2.
    pub instance_type: Option<String>,
    /// Rated speed of a network interface, Mb/s.
    pub nic_mbps: std::collections::BTreeMap<String, u64>,
    /// GPUs as NVML names them, with their active NVLink count.
    pub gpus: Vec<(String, usize)>,
}

impl Facts {
    /// Reads them from this host.
    pub fn of_this_host() -> Facts {
        let topology = crate::topology::discover(std::path::Path::new("/"));
        let mut nic_mbps = std::collections::BTreeMap::new();
        if let Ok(d) = std::fs::read_dir("/sys/class/net") {
            for e in d.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(s) = crate::topology::nic_speed_mbps(&name) {
                    nic_mbps.insert(name, s);
                }
            }
        }
        let instance_type = std::fs::read_to_string("/sys/devices/virtual/dmi/id/product_name")
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| s.contains('.'));
        let gpus = crate::nvml::Nvml::open()
            .and_then(|n| n.gpus())
            .map(|g| g.into_iter().map(|x| (x.name, x.nvlinks.len())).collect())
            .unwrap_or_default();
        Facts { topology, instance_type, nic_mbps, gpus }
    }
}

/// EFA bandwidth per instance type: (instance type prefix, total Gb/s, EFA
/// devices). Sources in docs/VERDICT.md.
pub const EFA_RATES: &[(&str, f64, u32)] = &[
    ("p4d.24xlarge", 400.0, 4),
    ("p5.48xlarge", 3200.0, 32),
    ("p5e.48xlarge", 3200.0, 32),
    ("p5en.48xlarge", 3200.0, 16),
];

/// NVLink bandwidth per direction per GPU, GB/s, by GPU name fragment
/// (sources in docs/VERDICT.md).
pub const NVLINK_RATES: &[(&str, f64)] = &[("A100", 300.0), ("H100", 450.0), ("H200", 450.0), ("B200", 900.0)];

fn class_of(lanes: &[String]) -> &'static str {
    let names: Vec<&str> = lanes.iter().map(|l| lane_transport(l)).collect();
    if names.is_empty() {
        "other"
    } else if names.iter().any(|n| FABRIC_TCP.contains(n)) {
        "tcp"
    } else if names.iter().all(|n| SHM.contains(n)) {
        "shm"
    } else if names.iter().any(|n| RDMA.contains(n) || FABRIC_RDMA.contains(n)) {
        "rdma"
    } else if names.contains(&"cuda_ipc") {
        "cuda_ipc"
    } else if names.contains(&"cuda_copy") {
        "cuda_copy"
    } else {
        "other"
    }
}

/// The device part of a lane (`tcp/eth0` -> `eth0`, `rc_mlx5/mlx5_0:1` -> `mlx5_0:1`).
fn lane_device(lane: &str) -> &str {
    let l = lane.rsplit(" on ").next().unwrap_or(lane);
    l.split_once('/').map_or("", |(_, d)| d.trim())
}

/// A path's large-transfer rate: the best rate of its rows of at least
/// `large_bytes` (KV rows contribute their contiguous reference). None when
/// no row is that large: small transfers measure per-transfer overheads, not
/// the link.
fn large_rate(rows: &[&Row], th: &Thresholds) -> Option<(f64, u64)> {
    let rate = |r: &Row| r.kv.as_ref().map_or(r.gbps, |k| k.contiguous_gbps);
    rows.iter()
        .filter(|r| r.size_bytes >= th.large_bytes)
        .map(|r| (rate(r), r.size_bytes))
        .max_by(|a, b| a.0.total_cmp(&b.0))
}

/// Judges every path of `r`. `memcpy_gbps`: this host's memcpy rate, for
/// shared-memory paths.
pub fn judge(r: &SweepResults, facts: &Facts, th: &Thresholds, memcpy_gbps: Option<f64>) -> Verdict {
    let intra = r.header.target.as_ref().is_none_or(|t| t.host == r.header.host.hostname);
    let resources = r.header.ucx.as_ref().map_or(&[][..], |u| &u.resources[..]);
    let mut keys: Vec<(String, String)> = Vec::new();
    for row in &r.rows {
        let k = (row.label(), row.op.to_string());
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    let mut paths = Vec::new();
    for (backend, op) in keys {
        let rows: Vec<&Row> = r.rows.iter().filter(|x| x.label() == backend && x.op.to_string() == op).collect();
        let mut lanes: Vec<String> = Vec::new();
        let mut reasons: Vec<Reason> = Vec::new();
        let mut seen_flags: Vec<String> = Vec::new();
        for row in &rows {
            if let Some(t) = &row.transport {
                for l in &t.lanes {
                    if !lanes.contains(l) {
                        lanes.push(l.clone());
                    }
                }
                for f in &t.flags {
                    if seen_flags.contains(&f.kind) {
                        continue;
                    }
                    seen_flags.push(f.kind.clone());
                    let grade = match f.kind.as_str() {
                        "tcp-while-faster-exists"
                        | "cuda-ipc-get-disabled"
                        | "gpu-not-on-cuda-ipc"
                        | "host-gpu-rma-emulated" => Grade::Fail,
                        "software-emulation" if !t.lanes.iter().any(|l| lane_transport(l) == "tcp") => Grade::Fail,
                        "software-emulation" => continue, // TCP has no native RMA: emulation is its normal path
                        _ => Grade::Warn,
                    };
                    reasons.push(Reason { grade, check: f.kind.clone(), text: f.evidence.clone() });
                }
            }
        }
        // Bytes that arrived wrong fail the path whatever its rate: a fast
        // transfer of zeros is worse than a slow one (vLLM issue 27055).
        let corrupt: Vec<&&Row> = rows.iter().filter(|x| !x.verified && x.corrupt_transfers > 0).collect();
        if !corrupt.is_empty() {
            let transfers: u64 = corrupt.iter().map(|x| x.corrupt_transfers).sum();
            let checked: u64 = corrupt.iter().map(|x| x.checked_transfers).sum();
            let blocks: u64 = corrupt.iter().map(|x| x.corrupt_blocks).sum();
            reasons.push(Reason {
                grade: Grade::Fail,
                check: "corruption".into(),
                text: format!(
                    "{transfers} of {checked} checked transfers delivered wrong bytes ({blocks} corrupt block(s)), first in the {} row: its rate means nothing",
                    crate::units::Bytes(corrupt[0].size_bytes)
                ),
            });
        }
        let class = class_of(&lanes);
        // RDMA hardware that UCX did not use (and may not even offer).
        let rdma_hw: Vec<String> = facts
            .topology
            .rdma
            .iter()
            .filter(|d| d.ports.iter().any(|p| p.state.contains("ACTIVE")))
            .map(|d| d.name.clone())
            .collect();
        if !intra && class == "tcp" && !rdma_hw.is_empty() && !seen_flags.iter().any(|k| k == "tcp-while-faster-exists")
        {
            let ucx_rdma = resources.iter().any(|x| RDMA.contains(&x.transport.as_str()));
            reasons.push(Reason {
                grade: Grade::Fail,
                check: "transport".into(),
                text: format!(
                    "the data went over TCP although this host has RDMA devices ({}){}",
                    rdma_hw.join(", "),
                    if ucx_rdma {
                        ""
                    } else {
                        " that this UCX cannot use (no RDMA transport built in: kvprobe doctor)"
                    }
                ),
            });
        }
        if rows.iter().any(|x| x.transport.is_none()) {
            reasons.push(Reason {
                grade: Grade::Warn,
                check: "transport".into(),
                text: "what carried some rows is unknown (UCX's protocol table, or the LIBFABRIC plugin's log, said nothing)"
                    .into(),
            });
        }
        let measured = large_rate(&rows, th);
        let read = op == "READ";
        let (pass_at, warn_at) = th.fractions(class);
        let expected = th
            .expect_gbps
            .map(|g| Expected { gbps: g, basis: "given with --expect-gbps".into() })
            .or_else(|| expected_rate(class, &lanes, read, r, facts, memcpy_gbps));
        match (&measured, &expected) {
            (Some((m, bytes)), Some(e)) if e.gbps > 0.0 => {
                let ratio = m / e.gbps;
                let mut grade = if ratio >= pass_at {
                    Grade::Pass
                } else if ratio >= warn_at {
                    Grade::Warn
                } else {
                    Grade::Fail
                };
                // GET over TCP is always emulated (TCP has no RDMA READ): a
                // protocol limit, not a broken link; it warns, with the way out.
                let emulated = seen_flags.iter().any(|k| k == "software-emulation");
                if class == "tcp" && emulated && grade == Grade::Fail {
                    grade = Grade::Warn;
                    reasons.push(Reason {
                        grade,
                        check: "emulation".into(),
                        text: "UCX emulates this operation over TCP with messages (no RDMA READ on TCP), so it cannot reach a plain stream's rate: WRITE (push) or an RDMA transport avoids it".into(),
                    });
                }
                reasons.push(Reason {
                    grade,
                    check: "bandwidth".into(),
                    text: format!(
                        "{m:.3} GB/s at {} is {:.0}% of {:.3} GB/s ({}); pass at {:.0}%, warn at {:.0}%",
                        crate::units::Bytes(*bytes),
                        100.0 * ratio,
                        e.gbps,
                        e.basis,
                        100.0 * pass_at,
                        100.0 * warn_at
                    ),
                });
            }
            (Some(_), _) => reasons.push(Reason {
                grade: Grade::Warn,
                check: "bandwidth".into(),
                text: format!(
                    "no expected rate for a {class} path here (give one with --expect-gbps{})",
                    if class == "tcp" { ", or run the link probe: --link-probe 1s" } else { "" }
                ),
            }),
            (None, _) => reasons.push(Reason {
                grade: Grade::Warn,
                check: "bandwidth".into(),
                text: format!(
                    "not judged: no transfer of at least {} was measured (largest {}); small transfers measure per-transfer costs, not the link",
                    crate::units::Bytes(th.large_bytes),
                    crate::units::Bytes(rows.iter().map(|r| r.size_bytes).max().unwrap_or(0))
                ),
            }),
        }
        // A TCP link far below its NIC's rating: shaping, a slow hop, congestion.
        if class == "tcp" {
            if let Some(l) = &r.header.link {
                if let Some(mbps) = l.local_dev_mbps {
                    let rated = mbps as f64 * 1e6 / 8.0 / 1e9;
                    let got = if read { l.from_target_gbps } else { l.to_target_gbps };
                    if got < warn_at * rated {
                        reasons.push(Reason {
                            grade: Grade::Warn,
                            check: "link".into(),
                            text: format!(
                                "one TCP stream gets {got:.3} GB/s ({:.2} Gbit/s), {:.0}% of {} rated {} Mb/s: a shaped, slow or congested hop",
                                got * 8.0,
                                100.0 * got / rated,
                                l.local_dev.as_deref().unwrap_or("the interface"),
                                mbps
                            ),
                        });
                    }
                }
            }
        }
        let grade = reasons.iter().map(|x| x.grade).max().unwrap_or(Grade::Pass);
        paths.push(PathVerdict {
            backend,
            op,
            grade,
            class: class.into(),
            lanes,
            measured_gbps: measured.map(|m| m.0),
            measured_bytes: measured.map(|m| m.1),
            expected,
            reasons,
        });
    }
    Verdict { grade: paths.iter().map(|p| p.grade).max().unwrap_or(Grade::Pass), paths, thresholds: *th }
}

/// Both ends in GPU memory of one GPU of this host.
fn same_gpu(r: &SweepResults) -> bool {
    let (s, d) = (&r.header.settings.src_mem, &r.header.settings.dst_mem);
    let intra = r.header.target.as_ref().is_none_or(|t| t.host == r.header.host.hostname);
    intra && s.kind == crate::mem::MemKind::Vram && d.kind == crate::mem::MemKind::Vram && s.gpu == d.gpu
}

fn expected_rate(
    class: &str,
    lanes: &[String],
    read: bool,
    r: &SweepResults,
    facts: &Facts,
    memcpy_gbps: Option<f64>,
) -> Option<Expected> {
    match class {
        "tcp" => {
            if let Some(l) = r.header.link.as_ref().filter(|l| l.from_target_gbps > 0.0 && l.to_target_gbps > 0.0) {
                let g = if read { l.from_target_gbps } else { l.to_target_gbps };
                return Some(Expected {
                    gbps: g,
                    basis: format!(
                        "one plain TCP stream {} between the same two processes (link probe)",
                        if read { "target -> initiator" } else { "initiator -> target" }
                    ),
                });
            }
            let devs: Vec<&str> = lanes.iter().map(|l| lane_device(l)).collect();
            let mbps: u64 = devs.iter().filter_map(|d| facts.nic_mbps.get(*d)).max().copied()?;
            Some(Expected {
                gbps: mbps as f64 * 1e6 / 8.0 / 1e9,
                basis: format!("{} rated {mbps} Mb/s (sysfs)", devs.join("+")),
            })
        }
        "shm" => {
            memcpy_gbps.map(|g| Expected { gbps: g, basis: "memcpy on this host, measured before the run".into() })
        }
        "rdma" => {
            // Distinct RDMA devices used, each at its port rate (sysfs) or
            // the instance type's per-device EFA rate.
            let mut devs: Vec<(&str, Option<u32>)> = lanes
                .iter()
                .filter(|l| RDMA.contains(&lane_transport(l)) || FABRIC_RDMA.contains(&lane_transport(l)))
                .map(|l| {
                    let d = lane_device(l);
                    let (name, port) = d.split_once(':').unwrap_or((d, ""));
                    (name, port.parse().ok())
                })
                .collect();
            devs.sort_unstable();
            devs.dedup();
            let mut total = 0.0;
            let mut basis = Vec::new();
            for &(d, port) in &devs {
                let dev = facts.topology.rdma.iter().find(|x| x.name == d);
                // the lane's own port, when it is up
                let port_rate = dev.and_then(|x| {
                    x.ports
                        .iter()
                        .filter(|p| port.is_none_or(|n| p.port == n) && p.state.contains("ACTIVE"))
                        .find_map(|p| p.rate_gbps)
                });
                let efa_rate = facts.instance_type.as_deref().and_then(|it| {
                    EFA_RATES.iter().find(|(t, _, _)| it.starts_with(t)).map(|(_, g, n)| g / f64::from(*n))
                });
                match (dev.is_some_and(|x| x.efa), efa_rate, port_rate) {
                    (true, Some(g), _) => {
                        total += g;
                        basis.push(format!("{d} {g:.0} Gb/s ({} EFA)", facts.instance_type.as_deref().unwrap_or("")));
                    }
                    (_, _, Some(g)) => {
                        total += g;
                        basis.push(format!("{d} port rate {g:.0} Gb/s (sysfs)"));
                    }
                    _ => return None,
                }
            }
            (total > 0.0).then(|| Expected { gbps: total / 8.0, basis: basis.join(" + ") })
        }
        "cuda_ipc" if same_gpu(r) => r.header.gpu_copy.filter(|c| c.dtod_gbps > 0.0).map(|c| Expected {
            gbps: c.dtod_gbps,
            basis: format!("device-to-device copy on GPU {}, measured before the run", c.gpu),
        }),
        "cuda_copy" => r.header.gpu_copy.filter(|c| c.htod_gbps > 0.0).map(|c| Expected {
            gbps: c.htod_gbps,
            basis: format!("page-locked host-to-device copy on GPU {}, measured before the run", c.gpu),
        }),
        "cuda_ipc" => {
            // NVLink between GPUs: the generation's rate per direction, for
            // GPUs with active links. Without NVLink there is no table rate
            // (same-GPU or PCIe peer copies): --expect-gbps gives one.
            let (name, _) = facts.gpus.iter().find(|(_, links)| *links > 0)?;
            let (family, rate) = NVLINK_RATES.iter().find(|(n, _)| name.contains(n))?;
            Some(Expected { gbps: *rate, basis: format!("{family} NVLink, per direction ({name})") })
        }
        _ => None,
    }
}

/// This host's single-thread memcpy rate, GB/s: the best of a few copies of
/// `bytes` between two fresh buffers (the shared-memory yardstick).
pub fn memcpy_gbps(bytes: usize) -> f64 {
    let src = vec![1u8; bytes];
    let mut dst = vec![0u8; bytes];
    dst.copy_from_slice(&src); // fault the pages in first
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = std::time::Instant::now();
        dst.copy_from_slice(std::hint::black_box(&src));
        std::hint::black_box(&dst);
        best = best.min(t.elapsed().as_secs_f64());
    }
    crate::units::gbps(bytes as f64, best)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::schema::Flag;
    use crate::topology::{RdmaDevice, RdmaPort};

    /// A real local run (NIXL and raw UCX READ, 16 MiB, cma) as the base.
    fn base() -> SweepResults {
        serde_json::from_str(include_str!("../tests/fixtures/results-shm-16m.json")).unwrap()
    }

    fn set_lanes(r: &mut SweepResults, lanes: &[&str], flags: &[&str]) {
        for row in &mut r.rows {
            let t = row.transport.as_mut().unwrap();
            t.lanes = lanes.iter().map(|s| s.to_string()).collect();
            t.notif_lanes.clear();
            t.flags = flags
                .iter()
                .map(|k| Flag { kind: k.to_string(), evidence: format!("{k} seen"), fix: String::new() })
                .collect();
        }
    }

    fn rows_at(r: &mut SweepResults, gbps: f64) {
        for row in &mut r.rows {
            row.gbps = gbps;
        }
    }

    fn other_host(r: &mut SweepResults) {
        r.header.target.as_mut().unwrap().host = "prefill-node".into();
    }

    fn efa_host(instance: &str) -> Facts {
        let port = RdmaPort {
            port: 1,
            state: "4: ACTIVE".into(),
            rate: "100 Gb/sec".into(),
            rate_gbps: Some(100.0),
            link_layer: "Unspecified".into(),
        };
        let dev = |n: &str| RdmaDevice {
            name: n.into(),
            driver: Some("efa".into()),
            efa: true,
            numa: Some(0),
            ports: vec![port.clone()],
        };
        Facts {
            topology: Topology { rdma: vec![dev("rdmap79s0"), dev("rdmap80s0")], ..Topology::default() },
            instance_type: Some(instance.into()),
            ..Facts::default()
        }
    }

    #[test]
    fn libfabric_rows_are_judged_by_their_provider() {
        // rows as a nixl-libfabric sweep writes them: engine nixl, plugin LIBFABRIC
        let mut r = base();
        for row in &mut r.rows {
            row.plugin = "LIBFABRIC".into();
        }
        // the efa provider across hosts: RDMA, judged against the EFA devices' rate
        set_lanes(&mut r, &["efa/rdmap79s0"], &[]);
        other_host(&mut r);
        rows_at(&mut r, 10.0);
        let v = judge(&r, &efa_host("p5.48xlarge"), &Thresholds::default(), None);
        let p = &v.paths[0];
        assert_eq!((p.backend.as_str(), p.class.as_str()), ("nixl-libfabric", "rdma"), "{v:#?}");
        assert!(p.expected.as_ref().is_some_and(|e| e.basis.contains("rdmap79s0")), "{p:#?}");
        // the tcp provider on an EFA host: TCP although RDMA hardware exists fails, as for UCX
        set_lanes(&mut r, &["tcp/eth0"], &["libfabric-tcp"]);
        let v = judge(&r, &efa_host("p5.48xlarge"), &Thresholds::default(), None);
        assert_eq!(v.paths[0].class, "tcp");
        assert_eq!(v.grade, Grade::Fail, "{v:#?}");
        assert!(v.paths[0].reasons.iter().any(|x| x.check == "libfabric-tcp" && x.grade == Grade::Warn));
        // sockets counts as TCP too
        set_lanes(&mut r, &["sockets/eth0"], &[]);
        assert_eq!(judge(&r, &Facts::default(), &Thresholds::default(), None).paths[0].class, "tcp");
    }

    #[test]
    fn shared_memory_is_judged_against_memcpy_with_its_own_thresholds() {
        let mut r = base();
        set_lanes(&mut r, &["cma/memory"], &[]);
        rows_at(&mut r, 6.0);
        let v = judge(&r, &Facts::default(), &Thresholds::default(), Some(10.0));
        assert_eq!(v.grade, Grade::Pass, "{v:#?}"); // 60% >= 50%
        let p = &v.paths[0];
        assert_eq!(p.class, "shm");
        assert!(p.expected.as_ref().unwrap().basis.contains("memcpy"));
        rows_at(&mut r, 3.0); // 30%: warn
        assert_eq!(judge(&r, &Facts::default(), &Thresholds::default(), Some(10.0)).grade, Grade::Warn);
        rows_at(&mut r, 2.0); // 20%: fail
        assert_eq!(judge(&r, &Facts::default(), &Thresholds::default(), Some(10.0)).grade, Grade::Fail);
        // user thresholds and expectation override the table
        let th = Thresholds { pass: Some(0.1), warn: Some(0.05), expect_gbps: Some(4.0), ..Thresholds::default() };
        let v = judge(&r, &Facts::default(), &th, Some(10.0));
        assert_eq!(v.grade, Grade::Pass);
        assert!(v.paths[0].expected.as_ref().unwrap().basis.contains("--expect-gbps"));
    }

    fn on_gpu(r: &mut SweepResults, src_gpu: u32, dst_gpu: u32) {
        use crate::mem::{MemKind, MemSpec};
        r.header.settings.src_mem = MemSpec { kind: MemKind::Vram, gpu: src_gpu, pin: false };
        r.header.settings.dst_mem = MemSpec { kind: MemKind::Vram, gpu: dst_gpu, pin: false };
        r.header.gpu_copy = Some(crate::report::schema::GpuCopy { gpu: src_gpu, dtod_gbps: 1400.0, htod_gbps: 55.0 });
    }

    #[test]
    fn cuda_ipc_on_one_gpu_is_judged_against_its_device_copy() {
        let mut r = base();
        on_gpu(&mut r, 0, 0);
        set_lanes(&mut r, &["cuda_ipc/cuda"], &[]);
        rows_at(&mut r, 1350.0);
        let v = judge(&r, &Facts::default(), &Thresholds::default(), Some(10.0));
        assert_eq!(v.grade, Grade::Pass, "{v:#?}");
        assert_eq!(v.paths[0].class, "cuda_ipc");
        assert!(v.paths[0].expected.as_ref().unwrap().basis.contains("device-to-device"));
        rows_at(&mut r, 800.0); // 57%: warn
        assert_eq!(judge(&r, &Facts::default(), &Thresholds::default(), None).grade, Grade::Warn);
        // two GPUs without NVLink: no table rate, so not judged (a warning that says so)
        on_gpu(&mut r, 0, 1);
        let v = judge(&r, &Facts::default(), &Thresholds::default(), None);
        assert!(v.paths[0].expected.is_none(), "{v:#?}");
        // staging through cuda_copy is judged against the host-to-device copy
        set_lanes(&mut r, &["cuda_copy/cuda"], &[]);
        rows_at(&mut r, 50.0);
        let v = judge(&r, &Facts::default(), &Thresholds::default(), None);
        assert_eq!(v.paths[0].class, "cuda_copy");
        assert!(v.paths[0].expected.as_ref().unwrap().basis.contains("host-to-device"), "{v:#?}");
    }

    #[test]
    fn a_gpu_read_that_left_cuda_ipc_fails() {
        let mut r = base();
        on_gpu(&mut r, 0, 0);
        set_lanes(&mut r, &["tcp/lo"], &["software-emulation", "cuda-ipc-get-disabled"]);
        rows_at(&mut r, 0.45);
        let v = judge(&r, &Facts::default(), &Thresholds::default(), None);
        assert_eq!(v.grade, Grade::Fail, "emulation on TCP alone only warns; a GPU READ off cuda_ipc fails");
        assert!(v.paths[0].reasons.iter().any(|x| x.check == "cuda-ipc-get-disabled" && x.grade == Grade::Fail));
    }

    #[test]
    fn tcp_between_hosts_with_efa_fails_whatever_the_rate() {
        let mut r = base();
        other_host(&mut r);
        set_lanes(&mut r, &["tcp/ens32"], &[]);
        rows_at(&mut r, 100.0);
        let facts = efa_host("p5.48xlarge");
        let v = judge(&r, &facts, &Thresholds::default(), None);
        assert_eq!(v.grade, Grade::Fail);
        let text = serde_json::to_string(&v).unwrap();
        assert!(text.contains("RDMA devices (rdmap79s0, rdmap80s0)"), "{text}");
        assert!(text.contains("cannot use"), "the fixture's UCX has no RDMA transport: {text}");
    }

    #[test]
    fn efa_paths_are_judged_against_the_instance_rate_per_device() {
        let mut r = base();
        other_host(&mut r);
        set_lanes(&mut r, &["srd/rdmap79s0:1", "srd/rdmap80s0:1"], &[]);
        // p5.48xlarge: 3200 Gb/s over 32 devices = 100 Gb/s each; 2 devices = 25 GB/s
        rows_at(&mut r, 20.0);
        let v = judge(&r, &efa_host("p5.48xlarge"), &Thresholds::default(), None);
        let p = &v.paths[0];
        assert_eq!(p.class, "rdma");
        assert!((p.expected.as_ref().unwrap().gbps - 25.0).abs() < 1e-9, "{p:#?}");
        assert_eq!(v.grade, Grade::Pass); // 80%
        // p5en: 16 devices of 200 Gb/s: 2 devices = 50 GB/s, 20 is 40%: warn
        let v = judge(&r, &efa_host("p5en.48xlarge"), &Thresholds::default(), None);
        assert!((v.paths[0].expected.as_ref().unwrap().gbps - 50.0).abs() < 1e-9);
        assert_eq!(v.grade, Grade::Warn);
        // emulation on an RDMA transport fails
        set_lanes(&mut r, &["srd/rdmap79s0:1"], &["software-emulation"]);
        assert_eq!(judge(&r, &efa_host("p5.48xlarge"), &Thresholds::default(), None).grade, Grade::Fail);
    }

    #[test]
    fn tcp_is_judged_against_the_link_probe_and_a_slow_link_is_flagged() {
        let mut r = base();
        other_host(&mut r);
        set_lanes(&mut r, &["tcp/eth0"], &[]);
        rows_at(&mut r, 0.11);
        r.header.link = Some(crate::report::schema::LinkProbe {
            local_addr: "10.0.0.1:1".into(),
            target_addr: "10.0.0.2:2".into(),
            to_target_gbps: 0.12,
            from_target_gbps: 0.12,
            duration_s: 1.0,
            local_dev: Some("eth0".into()),
            local_dev_mbps: Some(10_000),
        });
        let v = judge(&r, &Facts::default(), &Thresholds::default(), None);
        let p = &v.paths[0];
        assert!(p.expected.as_ref().unwrap().basis.contains("link probe"));
        // 92% of the probe passes the rate; the link itself is 10% of its NIC: warn
        assert_eq!(p.grade, Grade::Warn, "{p:#?}");
        assert!(p.reasons.iter().any(|x| x.check == "link" && x.text.contains("rated 10000 Mb/s")));
        // GET over TCP is emulated: capped at warn, with the way out
        set_lanes(&mut r, &["tcp/eth0"], &["software-emulation"]);
        rows_at(&mut r, 0.01);
        let v = judge(&r, &Facts::default(), &Thresholds::default(), None);
        assert_eq!(v.grade, Grade::Warn, "{v:#?}");
        assert!(serde_json::to_string(&v).unwrap().contains("WRITE (push)"));
    }

    #[test]
    fn cuda_ipc_over_nvlink_is_judged_against_the_generation_rate() {
        let mut r = base();
        set_lanes(&mut r, &["cuda_ipc/cuda"], &[]);
        rows_at(&mut r, 400.0);
        let facts = Facts { gpus: vec![("NVIDIA H100 80GB HBM3".into(), 18)], ..Facts::default() };
        let v = judge(&r, &facts, &Thresholds::default(), None);
        assert!((v.paths[0].expected.as_ref().unwrap().gbps - 450.0).abs() < 1e-9);
        assert_eq!(v.grade, Grade::Pass);
        // no NVLink: no table rate, a warning that says how to give one
        let facts = Facts { gpus: vec![("NVIDIA H100 80GB HBM3".into(), 0)], ..Facts::default() };
        let v = judge(&r, &facts, &Thresholds::default(), None);
        assert!(v.paths[0].expected.is_none());
        assert_eq!(v.grade, Grade::Warn);
    }

    #[test]
    fn small_transfers_are_not_judged_on_bandwidth() {
        let mut r = base();
        set_lanes(&mut r, &["cma/memory"], &[]);
        for row in &mut r.rows {
            row.size_bytes = 1 << 20;
            row.gbps = 0.001;
        }
        let v = judge(&r, &Facts::default(), &Thresholds::default(), Some(10.0));
        assert_eq!(v.grade, Grade::Warn);
        assert!(v.paths[0].reasons.iter().any(|x| x.text.starts_with("not judged")));
    }
}
