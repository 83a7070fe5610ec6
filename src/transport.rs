//! Transport truth: what carried a row's bytes, in UCX's own words, and
//! what is wrong with it.
//!
//! Two sources, both exact for the UCX version in use:
//! - raw UCX rows: `ucp_request_query`'s info string for the first checked
//!   transfer (the string `ucx_perftest -X` prints), e.g.
//!   `get into host memory length 1048576 zero-copy cma/memory 11063.6 MB/s 90.39 us`;
//! - NIXL rows: the protocol tables UCX prints with `UCX_PROTO_INFO=used` when
//!   NIXL releases its worker: every protocol the worker used, per operation
//!   and size range, with a count. kvprobe sets that variable for its helper
//!   processes (unless the user set it) and reads the tables from the log.
//!
//! Everything here is a pure function of text and facts, so it is tested on
//! real UCX output without UCX.

use crate::report::schema::{Flag, Transport};
use crate::ucx::info::Resource;

/// A row of a UCX protocol table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtoRow {
    /// Times used (`UCX_PROTO_INFO=used`); None in the `y` format.
    pub count: Option<u64>,
    /// Lowest size of the range, bytes.
    pub lo: u64,
    /// Highest size (inclusive); None for `inf`.
    pub hi: Option<u64>,
    /// Protocol description (`zero-copy`, `software emulation`...).
    pub description: String,
    /// Lanes (`cma/memory`, `50% on rc_mlx5/mlx5_0:1 and 50% on ...`).
    pub config: String,
}

/// One table: a UCP context's endpoint configuration and one operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtoTable {
    /// The UCP context name (NIXL names it after its agent).
    pub context: String,
    /// `intra-node`, `inter-node` or `self`.
    pub placement: String,
    /// The operation line (`remote memory read by ucp_get*(multi) into host memory from host`).
    pub operation: String,
    /// Its rows.
    pub rows: Vec<ProtoRow>,
}

impl ProtoTable {
    /// An RMA read (GET) table.
    pub fn is_read(&self) -> bool {
        self.operation.starts_with("remote memory read")
    }
    /// An RMA write (PUT) table.
    pub fn is_write(&self) -> bool {
        self.operation.starts_with("remote memory write")
    }
    /// An active-message table (NIXL's notifications travel as AMs).
    pub fn is_am(&self) -> bool {
        self.operation.starts_with("active message")
    }
}

/// The cells of a `| a | b | c |` line, trimmed, after any log prefix.
fn cells(line: &str) -> Option<Vec<String>> {
    let start = line.find('|')?;
    let inner = line[start..].trim_end();
    let inner = inner.strip_prefix('|')?.strip_suffix('|')?;
    Some(inner.split('|').map(|c| c.trim().to_string()).collect())
}

fn parse_range(s: &str) -> Option<(u64, Option<u64>)> {
    match s.split_once("..") {
        Some((lo, hi)) => {
            let lo = lo.trim().parse().ok()?;
            let hi = if hi.trim() == "inf" { None } else { Some(hi.trim().parse().ok()?) };
            Some((lo, hi))
        }
        None => {
            let v: u64 = s.trim().parse().ok()?;
            Some((v, Some(v)))
        }
    }
}

/// Parses every protocol table in a log (both the `used` format, with a
/// Count column, and the `y` format without).
pub fn parse_proto_tables(log: &str) -> Vec<ProtoTable> {
    let mut out = Vec::new();
    let mut cur: Option<ProtoTable> = None;
    let mut header_lines: Vec<String> = Vec::new();
    let mut count_col = false;
    for line in log.lines() {
        if line.contains("+---") || line.contains("+===") {
            continue;
        }
        let Some(c) = cells(line) else {
            if let Some(t) = cur.take() {
                out.push(t);
            }
            header_lines.clear();
            continue;
        };
        if c.len() == 1 {
            // a title line: "<ctx> <placement> cfg#N" then the operation
            if header_lines.is_empty() {
                if let Some(t) = cur.take() {
                    out.push(t);
                }
            }
            header_lines.push(c[0].clone());
            if header_lines.len() == 2 {
                let title = &header_lines[0];
                let mut words = title.split_whitespace();
                let context = words.next().unwrap_or_default().to_string();
                let placement = words.next().unwrap_or_default().to_string();
                cur = Some(ProtoTable { context, placement, operation: header_lines[1].clone(), rows: Vec::new() });
            }
            continue;
        }
        header_lines.clear();
        let Some(t) = cur.as_mut() else { continue };
        if c.first().is_some_and(|h| h == "Count" || h == "Range") {
            count_col = c[0] == "Count";
            continue;
        }
        let (count, rest) = if count_col && c.len() >= 4 { (c[0].parse().ok(), &c[1..]) } else { (None, &c[..]) };
        if rest.len() < 3 {
            continue;
        }
        if let Some((lo, hi)) = parse_range(&rest[0]) {
            t.rows.push(ProtoRow { count, lo, hi, description: rest[1].clone(), config: rest[2].clone() });
        }
    }
    if let Some(t) = cur.take() {
        out.push(t);
    }
    out
}

/// Splits a lane cell into lanes: `50% on a/b and 50% on c/d` -> two lanes.
pub fn split_lanes(config: &str) -> Vec<String> {
    config.split(" and ").map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()
}

/// The transport a NIXL row used, from the tables of NIXL's UCP context
/// (`context` is the NIXL agent's name, or a prefix of it). `sizes` are tried
/// in order (the per-descriptor size first: UCX sees one operation per
/// descriptor unless NIXL merged them); a range UCX used (count > 0) wins.
pub fn from_proto_tables(tables: &[ProtoTable], context: &str, read: bool, sizes: &[u64]) -> Option<Transport> {
    let mine: Vec<&ProtoTable> =
        tables.iter().filter(|t| t.context.starts_with(context) && t.placement != "self").collect();
    let rma: Vec<&ProtoTable> =
        mine.iter().copied().filter(|t| if read { t.is_read() } else { t.is_write() }).collect();
    let in_range = |r: &ProtoRow, s: u64| r.lo <= s && r.hi.is_none_or(|h| s <= h);
    let mut best: Option<(&ProtoTable, &ProtoRow)> = None;
    'sizes: for &s in sizes {
        for t in &rma {
            for r in &t.rows {
                if in_range(r, s) && r.count != Some(0) {
                    best = Some((t, r));
                    break 'sizes;
                }
            }
        }
    }
    let (t, r) = best?;
    let notif_lanes: Vec<String> = {
        let mut v: Vec<String> = mine
            .iter()
            .filter(|t| t.is_am())
            .flat_map(|t| t.rows.iter().filter(|r| r.count.is_none_or(|c| c > 0)))
            .flat_map(|r| split_lanes(&r.config))
            .collect();
        v.sort();
        v.dedup();
        v
    };
    Some(Transport {
        source: "UCX_PROTO_INFO".into(),
        protocol: r.description.trim_start_matches("(?) ").to_string(),
        lanes: split_lanes(&r.config),
        notif_lanes,
        endpoint_lanes: Vec::new(),
        count: r.count,
        detail: format!(
            "{} {} | {}..{} | {} | {}",
            t.context,
            t.operation,
            r.lo,
            r.hi.map_or("inf".into(), |h| h.to_string()),
            r.description,
            r.config
        ),
        flags: Vec::new(),
    })
}

/// The transport of a raw UCX row, from `ucp_request_query`'s string.
pub fn from_request_info(info: &str, endpoint_lanes: Vec<String>) -> Transport {
    // "{proto|init} get into host memory length 1048576 zero-copy cma/memory 11063.6 MB/s 90.39 us"
    let body = info.trim();
    let body = match body.find('}') {
        Some(i) if body.starts_with('{') => body[i + 1..].trim(),
        _ => body,
    };
    let words: Vec<&str> = body.split_whitespace().collect();
    let after_len = words.iter().position(|w| *w == "length").map_or(0, |i| (i + 2).min(words.len()));
    let is_lane = |w: &str| w.contains('/') && !w.starts_with("MB/");
    let first_lane = words[after_len..].iter().position(|w| is_lane(w)).map(|i| i + after_len);
    let protocol = match first_lane {
        Some(i) => words[after_len..i].join(" ").trim_end_matches(" on").to_string(),
        None => words[after_len..].join(" "),
    };
    let protocol = protocol.trim_end_matches(|c: char| c == '%' || c.is_ascii_digit()).trim().to_string();
    let lanes: Vec<String> = words.iter().filter(|w| is_lane(w)).map(|w| w.trim_end_matches(',').to_string()).collect();
    Transport {
        source: "ucp_request_query".into(),
        protocol,
        lanes,
        notif_lanes: Vec::new(),
        endpoint_lanes,
        count: None,
        detail: info.trim().to_string(),
        flags: Vec::new(),
    }
}

/// The transport name of a lane (`52% on tcp/lo` -> `tcp`).
pub fn lane_transport(lane: &str) -> &str {
    let l = lane.rsplit(" on ").next().unwrap_or(lane);
    l.split('/').next().unwrap_or(l).trim()
}

/// Shared-memory transports of UCX.
pub const SHM: &[&str] = &["posix", "sysv", "xpmem", "knem", "cma"];
/// RDMA transports of UCX.
pub const RDMA: &[&str] = &["rc_mlx5", "rc_verbs", "dc_mlx5", "ud_mlx5", "ud_verbs", "srd", "gga_mlx5", "rc_gda"];
/// RDMA providers of libfabric (the lanes of LIBFABRIC rows are `provider/device`).
pub const FABRIC_RDMA: &[&str] = &["efa", "verbs", "cxi", "psm3", "opx"];
/// TCP providers of libfabric.
pub const FABRIC_TCP: &[&str] = &["tcp", "sockets"];

/// What kvprobe finds wrong with a path. `intra_node`: both ends on one
/// host. `resources`: what this host's UCX offers (its device view).
pub fn flags(t: &Transport, intra_node: bool, resources: &[Resource]) -> Vec<Flag> {
    let mut out = Vec::new();
    let has = |names: &[&str]| resources.iter().any(|r| names.contains(&r.transport.as_str()));
    let lane_names: Vec<&str> = t.lanes.iter().map(|l| lane_transport(l)).collect();
    if t.protocol.contains("emulation") {
        out.push(Flag {
            kind: "software-emulation".into(),
            evidence: format!("UCX: '{}' on {}", t.protocol, t.lanes.join(", ")),
            fix: "the transport has no native RMA for this memory pair, so UCX emulates it with messages. On EFA use UCX >= 1.20 with srd, or NIXL's LIBFABRIC backend; GPU memory over RDMA needs GPUDirect (nvidia_peermem / dma-buf). UCX_PROTO_EMULATION_ENABLE=n (UCX >= 1.21) makes this fail instead of crawl".into(),
        });
    }
    if lane_names.contains(&"tcp") {
        let faster: Vec<&str> = if intra_node {
            [SHM, &["cuda_ipc"][..]].concat().into_iter().filter(|n| has(&[n])).collect()
        } else {
            RDMA.iter().copied().filter(|n| has(&[n])).collect()
        };
        if !faster.is_empty() {
            out.push(Flag {
                kind: "tcp-while-faster-exists".into(),
                evidence: format!("the data went over {} although this host's UCX offers {}", t.lanes.join(", "), faster.join(", ")),
                fix: "check UCX_TLS (it must include the fast transport, e.g. shm or cuda_ipc on one node, rc/srd across nodes) and UCX_NET_DEVICES; `kvprobe doctor` shows what UCX sees".into(),
            });
        }
    }
    if intra_node && t.notif_lanes.iter().any(|l| lane_transport(l) == "tcp") && has(&["posix", "sysv"]) {
        out.push(Flag {
            kind: "notifications-over-tcp".into(),
            evidence: format!(
                "NIXL's notifications (UCX active messages) went over {} between two processes of one host",
                t.notif_lanes.join(", ")
            ),
            fix: "NIXL's UCX backend defaults to ucx_error_handling_mode=peer, and UCX's posix/sysv transports have no peer failure handler, so active messages fall back to TCP. The backend parameter ucx_error_handling_mode=none keeps them in shared memory (kvprobe: --backend-param ucx_error_handling_mode=none); see docs/DEBUGGING.md".into(),
        });
    }
    if t.lanes.is_empty() {
        out.push(Flag {
            kind: "unknown-transport".into(),
            evidence: format!("UCX named no lane: '{}'", t.detail),
            fix: "rerun with UCX_LOG_LEVEL=info and read the helper logs".into(),
        });
    }
    out
}

/// Which ends of a transfer are GPU memory, and whether cuda_ipc GET was
/// forced on (`UCX_CUDA_IPC_ENABLE_GET_ZCOPY=y`).
#[derive(Debug, Clone, Copy, Default)]
pub struct GpuEnds {
    /// The bytes are read from GPU memory.
    pub src_vram: bool,
    /// The bytes land in GPU memory.
    pub dst_vram: bool,
    /// cuda_ipc GET zero-copy forced on.
    pub get_forced: bool,
}

/// What is wrong with a GPU path on one host: GPU memory on both ends that
/// did not go over cuda_ipc although UCX offers it (READ without NVLink,
/// where UCX turns cuda_ipc GET off; or staging through host memory).
pub fn gpu_flags(t: &Transport, read: bool, intra_node: bool, resources: &[Resource], g: &GpuEnds) -> Vec<Flag> {
    let lanes: Vec<&str> = t.lanes.iter().map(|l| lane_transport(l)).collect();
    if intra_node && g.src_vram != g.dst_vram && lanes.contains(&"tcp") {
        return vec![Flag {
            kind: "host-gpu-rma-emulated".into(),
            evidence: format!(
                "host memory on one end and GPU memory on the other, between two processes of one host: UCX found no zero-copy RMA for that pair (cuda_ipc needs GPU memory on both ends, cma/posix cannot reach GPU memory) and went over {} ({})",
                t.lanes.join(", "),
                t.protocol
            ),
            fix: "keep the KV cache in GPU memory on both sides (vLLM's layout), so cuda_ipc carries it; host<->GPU staging belongs inside one process (cudaMemcpy), not in a remote READ/WRITE".into(),
        }];
    }
    let ipc_offered = resources.iter().any(|r| r.transport == "cuda_ipc");
    let gpu_both_ends = intra_node && g.src_vram && g.dst_vram;
    if !gpu_both_ends || lanes.is_empty() || lanes.contains(&"cuda_ipc") || !ipc_offered {
        return Vec::new();
    }
    if read && !g.get_forced {
        return vec![Flag {
            kind: "cuda-ipc-get-disabled".into(),
            evidence: format!(
                "a READ of GPU memory between two processes of one host went over {} although UCX offers cuda_ipc: UCX turns cuda_ipc GET zero-copy off when it finds no NVLink",
                t.lanes.join(", ")
            ),
            fix: "set UCX_CUDA_IPC_ENABLE_GET_ZCOPY=y in both processes (vLLM's NixlConnector READs), or move the KV cache with WRITE; kvprobe doctor shows the NVLink state".into(),
        }];
    }
    vec![Flag {
        kind: "gpu-not-on-cuda-ipc".into(),
        evidence: format!(
            "GPU memory on both ends on one host went over {} ({}) although UCX offers cuda_ipc",
            t.lanes.join(", "),
            t.protocol
        ),
        fix: "check UCX_TLS includes cuda_ipc (or `cuda`), that both processes see the GPU (CUDA_VISIBLE_DEVICES) and, in containers, that they share the IPC namespace (--ipc=host)".into(),
    }]
}

/// Flags a lane whose network device sits on another NUMA node than the
/// buffer (`buffer_node`): every byte then crosses the CPU interconnect.
pub fn numa_flags(t: &Transport, buffer_node: Option<i32>, topo: &crate::topology::Topology) -> Vec<Flag> {
    let Some(b) = buffer_node else { return Vec::new() };
    let far: Vec<String> = t
        .lanes
        .iter()
        .filter_map(|l| {
            let lane = l.rsplit(" on ").next().unwrap_or(l).trim();
            let dev = lane.split_once('/').map(|(_, d)| d)?;
            let n = topo.numa_of_ucx_device(dev)?;
            (n != b).then(|| format!("{lane} (NUMA {n})"))
        })
        .collect();
    if far.is_empty() {
        return Vec::new();
    }
    vec![Flag {
        kind: "numa-mismatch".into(),
        evidence: format!("the buffer is on NUMA node {b}; the data went over {}", far.join(", ")),
        fix: "allocate the KV cache on the NIC's node (numactl --membind / --cpunodebind, or the GPU next to the NIC) or pick the NIC on the buffer's node with UCX_NET_DEVICES".into(),
    }]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Real output of UCX 1.23.0 (NIXL 1.5.1 wheel) with UCX_PROTO_INFO=used,
    /// as the initiator's log holds it.
    const USED: &str = "\
[1795532409.209636] [vm:32267:0]   +-------+------------+--------------------+------------+
[1795532409.209636] [vm:32267:0]   | kvprobe-initiator-32267 intra-node cfg#1             |
[1795532409.209636] [vm:32267:0]   | active message by ucp_am_send*(egr) from host memory |
[1795532409.209636] [vm:32267:0]   +-------+------------+--------------------+------------+
[1795532409.209636] [vm:32267:0]   | Count |   Range    |    Description     |   Config   |
[1795532409.209636] [vm:32267:0]   +-------+------------+--------------------+------------+
[1795532409.209636] [vm:32267:0]   |     0 |          0 | short              | tcp/lo     |
[1795532409.209636] [vm:32267:0]   |  5910 |   1..16515 | zero-copy          | tcp/lo     |
[1795532409.209636] [vm:32267:0]   |     0 | 16516..inf | multi-frag copy-in | tcp/lo     |
[1795532409.209636] [vm:32267:0]   +-------+------------+--------------------+------------+
[1795532409.209675] [vm:32267:0]   +-------+--------+-------------+-----------------------------------+
[1795532409.209675] [vm:32267:0]   | kvprobe-initiator-32267 intra-node cfg#1                         |
[1795532409.209675] [vm:32267:0]   | remote memory read by ucp_get*(multi) into host memory from host |
[1795532409.209675] [vm:32267:0]   +-------+--------+-------------+-----------------------------------+
[1795532409.209675] [vm:32267:0]   | Count | Range  | Description |              Config               |
[1795532409.209675] [vm:32267:0]   +-------+--------+-------------+-----------------------------------+
[1795532409.209675] [vm:32267:0]   |  2407 | 0..inf | zero-copy   | cma/memory                        |
[1795532409.209675] [vm:32267:0]   +-------+--------+-------------+-----------------------------------+
[1795532409.209688] [vm:32267:0]   +-------+--------+-------------+----------------------------------+
[1795532409.209688] [vm:32267:0]   | kvprobe-initiator-32267 intra-node cfg#1                        |
[1795532409.209688] [vm:32267:0]   | remote memory write by ucp_put*(multi) from host memory to host |
[1795532409.209688] [vm:32267:0]   +-------+--------+-------------+----------------------------------+
[1795532409.209688] [vm:32267:0]   | Count | Range  | Description |              Config              |
[1795532409.209688] [vm:32267:0]   +-------+--------+-------------+----------------------------------+
[1795532409.209688] [vm:32267:0]   |  3503 | 0..inf | zero-copy   | cma/memory                       |
[1795532409.209688] [vm:32267:0]   +-------+--------+-------------+----------------------------------+
";

    /// Real UCX 1.23.0 output with UCX_TLS=posix (`used` format): NIXL's
    /// context and kvprobe's raw UCX context, both emulating RMA.
    const EMULATED: &str = "\
[1795533485.372291] [vm:11248:0]   +-------+--------+--------------------+----------------------------+
[1795533485.372291] [vm:11248:0]   | kvprobe-initiator-11248 intra-node cfg#1                         |
[1795533485.372291] [vm:11248:0]   | remote memory read by ucp_get*(multi) into host memory from host |
[1795533485.372291] [vm:11248:0]   +-------+--------+--------------------+----------------------------+
[1795533485.372291] [vm:11248:0]   | Count | Range  |    Description     |           Config           |
[1795533485.372291] [vm:11248:0]   +-------+--------+--------------------+----------------------------+
[1795533485.372291] [vm:11248:0]   | 34745 | 0..inf | software emulation | posix/memory               |
[1795533485.372291] [vm:11248:0]   +-------+--------+--------------------+----------------------------+
[1795533486.615788] [vm:11248:0]   +-------+--------+--------------------+---------------------+
[1795533486.615788] [vm:11248:0]   | kvprobe-ucx-initiator-11248 intra-node cfg#0              |
[1795533486.615788] [vm:11248:0]   | remote memory read by ucp_get* into host memory from host |
[1795533486.615788] [vm:11248:0]   +-------+--------+--------------------+---------------------+
[1795533486.615788] [vm:11248:0]   | Count | Range  |    Description     |       Config        |
[1795533486.615788] [vm:11248:0]   +-------+--------+--------------------+---------------------+
[1795533486.615788] [vm:11248:0]   | 85273 | 0..inf | software emulation | posix/memory        |
[1795533486.615788] [vm:11248:0]   +-------+--------+--------------------+---------------------+
";

    /// The EFA case of openucx/ucx#10950 in UCX's `y` layout (no Count column).
    const EFA_Y: &str = "\
+--------+--------------------+------------------+
| ucp_context_0 inter-node cfg#3                                          |
| remote memory write by ucp_put* from host memory to cuda                |
+--------+--------------------+------------------+
| Range  |    Description     |      Config      |
+--------+--------------------+------------------+
| 0..inf | software emulation | srd/rdmap135s0:1 |
+--------+--------------------+------------------+
";

    fn res(t: &str, d: &str) -> Resource {
        Resource {
            component: String::new(),
            md: String::new(),
            transport: t.into(),
            device: d.into(),
            kind: String::new(),
        }
    }

    fn lanes_of(lanes: &[&str], protocol: &str) -> Transport {
        let mut t =
            from_request_info("get into cuda memory length 1048576 zero-copy cuda_ipc/cuda 1 MB/s 1 us", vec![]);
        t.lanes = lanes.iter().map(|s| s.to_string()).collect();
        t.protocol = protocol.into();
        t
    }

    #[test]
    fn gpu_paths_off_cuda_ipc_are_explained() {
        let offered = [res("cuda_ipc", "cuda"), res("cuda_copy", "cuda"), res("tcp", "lo")];
        let both = GpuEnds { src_vram: true, dst_vram: true, get_forced: false };
        let tcp = lanes_of(&["cuda/GPU0", "tcp/lo"], "software emulation");
        // READ without NVLink: cuda_ipc GET is off
        let f = gpu_flags(&tcp, true, true, &offered, &both);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].kind, "cuda-ipc-get-disabled");
        assert!(f[0].fix.contains("UCX_CUDA_IPC_ENABLE_GET_ZCOPY=y"));
        // forced on but still not cuda_ipc, or a WRITE: the generic GPU finding
        let forced = GpuEnds { get_forced: true, ..both };
        assert_eq!(gpu_flags(&tcp, true, true, &offered, &forced)[0].kind, "gpu-not-on-cuda-ipc");
        assert_eq!(gpu_flags(&tcp, false, true, &offered, &both)[0].kind, "gpu-not-on-cuda-ipc");
        // on cuda_ipc, across hosts, or a UCX without cuda_ipc: nothing to say
        let ipc = lanes_of(&["cuda/GPU0", "cuda_ipc/cuda"], "zero-copy");
        assert!(gpu_flags(&ipc, true, true, &offered, &both).is_empty());
        assert!(gpu_flags(&tcp, true, false, &offered, &both).is_empty());
        assert!(gpu_flags(&tcp, true, true, &[res("tcp", "lo")], &both).is_empty());
        // host memory on one end: UCX emulates, and says so
        let mixed = GpuEnds { src_vram: false, dst_vram: true, get_forced: false };
        let f = gpu_flags(&lanes_of(&["tcp/lo"], "software emulation"), false, true, &offered, &mixed);
        assert_eq!(f[0].kind, "host-gpu-rma-emulated");
        assert!(f[0].evidence.contains("tcp/lo"));
    }

    #[test]
    fn used_tables_parse_with_counts() {
        let t = parse_proto_tables(USED);
        assert_eq!(t.len(), 3, "{t:#?}");
        assert!(t[0].is_am() && t[1].is_read() && t[2].is_write());
        assert_eq!(t[0].context, "kvprobe-initiator-32267");
        assert_eq!(t[0].placement, "intra-node");
        assert_eq!(t[0].rows.len(), 3);
        assert_eq!(
            t[0].rows[1],
            ProtoRow {
                count: Some(5910),
                lo: 1,
                hi: Some(16515),
                description: "zero-copy".into(),
                config: "tcp/lo".into()
            }
        );
        assert_eq!(t[1].rows[0].hi, None);
    }

    #[test]
    fn a_nixl_row_gets_its_data_and_notification_lanes() {
        let t = parse_proto_tables(USED);
        let tr = from_proto_tables(&t, "kvprobe-initiator-", true, &[4096]).unwrap();
        assert_eq!(tr.protocol, "zero-copy");
        assert_eq!(tr.lanes, vec!["cma/memory"]);
        assert_eq!(tr.notif_lanes, vec!["tcp/lo"], "only lanes with a non-zero count");
        assert_eq!(tr.count, Some(2407));
        let w = from_proto_tables(&t, "kvprobe-initiator-", false, &[1 << 20]).unwrap();
        assert_eq!(w.count, Some(3503));
        assert!(from_proto_tables(&t, "somebody-else", true, &[4096]).is_none());
        // on this host: shm exists, so TCP notifications are flagged, the data is not
        let f = flags(&tr, true, &[res("posix", "memory"), res("cma", "memory"), res("tcp", "lo")]);
        assert_eq!(f.iter().map(|f| f.kind.as_str()).collect::<Vec<_>>(), vec!["notifications-over-tcp"]);
    }

    #[test]
    fn software_emulation_is_found_and_flagged() {
        let t = parse_proto_tables(EMULATED);
        assert_eq!(t.len(), 2);
        // NIXL's context only, not kvprobe's raw UCX one
        let tr = from_proto_tables(&t, "kvprobe-initiator-11248", true, &[4096]).unwrap();
        assert_eq!((tr.protocol.as_str(), tr.count), ("software emulation", Some(34745)));
        assert_eq!(tr.lanes, vec!["posix/memory"]);
        let f = flags(&tr, true, &[res("posix", "memory")]);
        assert_eq!(f.iter().map(|f| f.kind.as_str()).collect::<Vec<_>>(), vec!["software-emulation"]);

        let t = parse_proto_tables(EFA_Y);
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].placement, "inter-node");
        let tr = from_proto_tables(&t, "ucp_context_0", false, &[65536]).unwrap();
        assert_eq!(tr.protocol, "software emulation");
        assert_eq!(tr.lanes, vec!["srd/rdmap135s0:1"]);
        assert_eq!(tr.count, None);
        assert!(flags(&tr, false, &[res("srd", "rdmap135s0:1")]).iter().any(|f| f.kind == "software-emulation"));
    }

    #[test]
    fn request_strings_parse() {
        let t = from_request_info(
            "{proto|init} get into host memory length 1048576 zero-copy cma/memory 11063.6 MB/s 90.39 us",
            vec!["cma/memory".into()],
        );
        assert_eq!(t.protocol, "zero-copy");
        assert_eq!(t.lanes, vec!["cma/memory"]);
        assert_eq!(t.source, "ucp_request_query");
        let t = from_request_info(
            "put from host memory length 65536 zero-copy 50% on rc_mlx5/mlx5_0:1 and 50% on rc_mlx5/mlx5_1:1 24000 MB/s 2.7 us",
            vec![],
        );
        assert_eq!(t.lanes, vec!["rc_mlx5/mlx5_0:1", "rc_mlx5/mlx5_1:1"]);
        assert_eq!(t.protocol, "zero-copy");
        let t = from_request_info("", vec![]);
        assert!(t.lanes.is_empty());
        assert!(flags(&t, true, &[]).iter().any(|f| f.kind == "unknown-transport"));
    }

    #[test]
    fn tcp_data_is_flagged_only_when_something_faster_exists() {
        let t = Transport { protocol: "zero-copy".into(), lanes: vec!["tcp/lo".into()], ..Transport::default() };
        assert!(flags(&t, true, &[res("tcp", "lo")]).is_empty(), "a TCP-only host has nothing better");
        assert_eq!(flags(&t, true, &[res("tcp", "lo"), res("sysv", "memory")])[0].kind, "tcp-while-faster-exists");
        assert!(
            flags(&t, false, &[res("tcp", "eth0"), res("sysv", "memory")]).is_empty(),
            "shm does not help across hosts"
        );
        assert_eq!(
            flags(&t, false, &[res("tcp", "eth0"), res("rc_mlx5", "mlx5_0:1")])[0].kind,
            "tcp-while-faster-exists"
        );
        assert_eq!(lane_transport("52% on tcp/lo"), "tcp");
    }

    #[test]
    fn a_nic_on_another_numa_node_is_flagged() {
        use crate::topology::{RdmaDevice, RdmaPort, Topology};
        let dev = |name: &str, numa: i32| RdmaDevice {
            name: name.into(),
            driver: Some("mlx5_core".into()),
            efa: false,
            numa: Some(numa),
            ports: vec![RdmaPort {
                port: 1,
                state: "ACTIVE".into(),
                rate: String::new(),
                rate_gbps: None,
                link_layer: "InfiniBand".into(),
            }],
        };
        let topo = Topology { rdma: vec![dev("mlx5_0", 0), dev("mlx5_1", 1)], ..Topology::default() };
        let mut t = from_request_info("{proto} get into host memory length 1048576 zero-copy rc_mlx5/mlx5_1:1", vec![]);
        let f = numa_flags(&t, Some(0), &topo);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].kind, "numa-mismatch");
        assert!(f[0].evidence.contains("mlx5_1:1 (NUMA 1)"), "{}", f[0].evidence);
        assert!(numa_flags(&t, Some(1), &topo).is_empty());
        assert!(numa_flags(&t, None, &topo).is_empty(), "unknown buffer node: no claim");
        t.lanes = vec!["cma/memory".into()];
        assert!(numa_flags(&t, Some(0), &topo).is_empty(), "shared memory has no NIC");
    }

    #[test]
    fn this_process_memory_has_a_numa_node() {
        let v = vec![1u8; 4096];
        let n = crate::mem::numa_node_of(v.as_ptr() as usize);
        // kernels without NUMA support answer ENOSYS: None, never a bogus node
        if std::path::Path::new("/sys/devices/system/node/node0").exists() {
            assert!(n.is_some_and(|n| n >= 0), "{n:?}");
        }
    }
}
