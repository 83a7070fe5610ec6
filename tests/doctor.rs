//! `kvprobe doctor` for real: on this host, and against fixture sysfs/procfs
//! trees laid out like three kinds of node (an AWS p5.48xlarge with EFA, an
//! mlx5 InfiniBand node, a TCP-only node). NIXL and UCX are the real ones
//! debug/setup.sh installs; only the hardware comes from the fixture.
//!
//! The trees follow the kernel's documented layout
//! (Documentation/ABI/stable/sysfs-class-infiniband, sysfs-class-net,
//! sysfs-bus-pci): class entries are symlinks into /sys/devices, a device's
//! `driver` is a symlink to its driver, `numa_node` sits in the PCI device.

mod common;

use std::os::unix::fs::symlink;
use std::path::Path;

use kvprobe::topology;
use serde_json::Value;

/// Builds a fixture tree.
struct Tree {
    root: tempfile::TempDir,
}

impl Tree {
    fn new(kernel: &str, numa_nodes: usize) -> Tree {
        let t = Tree { root: tempfile::tempdir().unwrap() };
        t.file("proc/sys/kernel/osrelease", &format!("{kernel}\n"));
        for n in 0..numa_nodes {
            t.file(&format!("sys/devices/system/node/node{n}/cpulist"), "0-47\n");
        }
        t
    }

    fn path(&self) -> &Path {
        self.root.path()
    }

    fn file(&self, rel: &str, text: &str) {
        let p = self.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    fn link(&self, rel: &str, target: &str) {
        let p = self.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        symlink(target, p).unwrap();
    }

    /// A PCI device with class, ids, NUMA node and driver.
    fn pci(&self, addr: &str, class: &str, vendor: &str, device: &str, numa: i32, driver: &str) -> String {
        let bus = &addr[..7]; // 0000:10
        let dev = format!("sys/devices/pci{bus}/{addr}");
        self.file(&format!("{dev}/class"), &format!("{class}\n"));
        self.file(&format!("{dev}/vendor"), &format!("{vendor}\n"));
        self.file(&format!("{dev}/device"), &format!("{device}\n"));
        self.file(&format!("{dev}/numa_node"), &format!("{numa}\n"));
        std::fs::create_dir_all(self.path().join(format!("sys/bus/pci/drivers/{driver}"))).unwrap();
        self.link(&format!("{dev}/driver"), &format!("../../../bus/pci/drivers/{driver}"));
        self.link(&format!("sys/bus/pci/devices/{addr}"), &format!("../../../devices/pci{bus}/{addr}"));
        dev
    }

    /// An RDMA device on `addr` with one port.
    #[allow(clippy::too_many_arguments)]
    fn rdma(&self, name: &str, addr: &str, driver: &str, numa: i32, state: &str, rate: &str, link_layer: &str) {
        let dev = self.pci(addr, "0x020000", if driver == "efa" { "0x1d0f" } else { "0x15b3" }, "0xefa1", numa, driver);
        let ib = format!("{dev}/infiniband/{name}");
        self.file(&format!("{ib}/ports/1/state"), &format!("{state}\n"));
        self.file(&format!("{ib}/ports/1/rate"), &format!("{rate}\n"));
        self.file(&format!("{ib}/ports/1/link_layer"), &format!("{link_layer}\n"));
        self.link(&format!("{ib}/device"), "../../");
        self.link(&format!("sys/class/infiniband/{name}"), &format!("../../{}", &ib["sys/".len()..]));
    }

    /// A network interface on `addr`.
    #[allow(clippy::too_many_arguments)]
    fn net(&self, name: &str, addr: &str, driver: &str, numa: i32, speed: &str, mtu: u32, kind: u32) {
        let dev = self.pci(addr, "0x020000", "0x1d0f", "0xec20", numa, driver);
        let n = format!("{dev}/net/{name}");
        self.file(&format!("{n}/operstate"), "up\n");
        self.file(&format!("{n}/speed"), &format!("{speed}\n"));
        self.file(&format!("{n}/mtu"), &format!("{mtu}\n"));
        self.file(&format!("{n}/type"), &format!("{kind}\n"));
        self.link(&format!("{n}/device"), "../../");
        self.link(&format!("sys/class/net/{name}"), &format!("../../{}", &n["sys/".len()..]));
    }

    fn virtual_net(&self, name: &str) {
        let n = format!("sys/devices/virtual/net/{name}");
        self.file(&format!("{n}/operstate"), "unknown\n");
        self.file(&format!("{n}/mtu"), "65536\n");
        self.file(&format!("{n}/type"), "772\n");
        self.link(&format!("sys/class/net/{name}"), &format!("../../{}", &n["sys/".len()..]));
    }

    fn module(&self, name: &str) {
        self.file(&format!("sys/module/{name}/refcnt"), "0\n");
    }
}

/// AWS p5.48xlarge: 8 H100 SXM (two NUMA nodes), 32 EFA devices at
/// 100 Gb/s each (3200 Gb/s), one ENA interface with MTU 9001, the open
/// NVIDIA kernel modules and no peer-memory module (dma-buf).
fn p5() -> Tree {
    let t = Tree::new("6.8.0-1021-aws", 2);
    for g in 0..8 {
        let bus = [0x53, 0x64, 0x75, 0x86, 0x97, 0xa8, 0xb9, 0xca][g];
        t.pci(&format!("0000:{bus:02x}:00.0"), "0x030200", "0x10de", "0x2330", if g < 4 { 0 } else { 1 }, "nvidia");
    }
    for i in 0..32 {
        let bus = 0x50 + 4 * (i / 4) as u32 + (i % 4) as u32;
        t.rdma(
            &format!("rdmap{bus}s0"),
            &format!("0000:{bus:02x}:01.0"),
            "efa",
            if i < 16 { 0 } else { 1 },
            "4: ACTIVE",
            "100 Gb/sec (4X EDR)",
            "Unspecified",
        );
    }
    t.net("ens32", "0000:27:00.0", "ena", 0, "-1", 9001, 1);
    t.virtual_net("lo");
    for m in ["nvidia", "efa", "ib_core"] {
        t.module(m);
    }
    t.file(
        "proc/driver/nvidia/version",
        "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  570.86.15  Release Build\nGCC version: gcc 12\n",
    );
    t
}

/// An InfiniBand node: 8 H100, 8 ConnectX-7 NDR HCAs (one port down),
/// IPoIB interfaces, nvidia_peermem loaded, the proprietary driver.
fn mlx5_ib() -> Tree {
    let t = Tree::new("5.15.0-105-generic", 2);
    for g in 0..8 {
        let dev = t.pci(&format!("0000:{:02x}:00.0", 0x18 + g * 0x10), "0x030200", "0x10de", "0x2330", g / 4, "nvidia");
        // GPU 5 trained down to x8 (a bad riser); the others run x16, idle at a low speed
        t.file(&format!("{dev}/current_link_width"), if g == 5 { "8\n" } else { "16\n" });
        t.file(&format!("{dev}/max_link_width"), "16\n");
        t.file(&format!("{dev}/current_link_speed"), "2.5 GT/s PCIe\n");
        t.file(&format!("{dev}/max_link_speed"), "32.0 GT/s PCIe\n");
    }
    for i in 0..8 {
        let addr = format!("0000:{:02x}:00.0", 0x1a + i * 0x10);
        let state = if i == 3 { "1: DOWN" } else { "4: ACTIVE" };
        t.rdma(&format!("mlx5_{i}"), &addr, "mlx5_core", i / 4, state, "400 Gb/sec (4X NDR)", "InfiniBand");
    }
    for i in 0..8 {
        t.net(&format!("ib{i}"), &format!("0000:{:02x}:00.1", 0x1a + i * 0x10), "mlx5_core", i / 4, "400000", 4092, 32);
    }
    t.net("eno1", "0000:01:00.0", "igb", 0, "1000", 1500, 1);
    t.virtual_net("lo");
    for m in ["nvidia", "nvidia_peermem", "mlx5_core", "ib_core"] {
        t.module(m);
    }
    t.file(
        "proc/driver/nvidia/version",
        "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 22:23:56 UTC 2024\n",
    );
    t
}

/// A TCP-only node: one 25 GbE NIC, no GPU, no RDMA.
fn tcp_only() -> Tree {
    let t = Tree::new("6.1.0-18-amd64", 1);
    t.net("eth0", "0000:3b:00.0", "ice", 0, "25000", 9000, 1);
    t.virtual_net("lo");
    t.virtual_net("docker0");
    t
}

#[test]
fn p5_fixture_is_read_like_the_real_thing() {
    let t = p5();
    let topo = topology::discover(t.path());
    assert_eq!(topo.rdma.len(), 32);
    assert!(topo.rdma.iter().all(|d| d.efa && d.driver.as_deref() == Some("efa")));
    assert_eq!(topo.rdma.iter().filter(|d| d.numa == Some(1)).count(), 16);
    assert!(topo.rdma.iter().all(|d| d.ports[0].state == "ACTIVE" && d.ports[0].rate_gbps == Some(100.0)));
    assert_eq!(topo.rdma.iter().map(|d| d.ports[0].rate_gbps.unwrap()).sum::<f64>(), 3200.0);
    assert_eq!(topo.nvidia_gpus().count(), 8);
    assert_eq!(topo.gpus.iter().filter(|g| g.numa == Some(1)).count(), 4);
    assert_eq!(topo.net.len(), 1, "lo is virtual and skipped: {:?}", topo.net);
    let ens = &topo.net[0];
    assert_eq!(
        (ens.name.as_str(), ens.mtu, ens.speed_mbps, ens.driver.as_deref()),
        ("ens32", Some(9001), None, Some("ena"))
    );
    assert_eq!(topo.numa_nodes, 2);
    assert_eq!(topo.kernel, "6.8.0-1021-aws");
    assert!(topo.module("efa") && topo.module("nvidia") && !topo.module("efa_nv_peermem"));
    assert!(topo.nvidia_driver.as_deref().unwrap().contains("Open Kernel Module"));
    assert!(topo.has_efa());
}

#[test]
fn ib_fixture_is_read_like_the_real_thing() {
    let t = mlx5_ib();
    let topo = topology::discover(t.path());
    assert_eq!(topo.hcas().count(), 8);
    let down: Vec<_> = topo.rdma.iter().filter(|d| d.ports[0].state != "ACTIVE").map(|d| d.name.clone()).collect();
    assert_eq!(down, vec!["mlx5_3"]);
    assert!(topo.rdma.iter().all(|d| d.ports[0].link_layer == "InfiniBand" && d.ports[0].rate_gbps == Some(400.0)));
    assert_eq!(topo.net.iter().filter(|n| n.kind == 32).count(), 8, "IPoIB interfaces");
    assert_eq!(topo.numa_of_ucx_device("mlx5_5:1"), Some(1));
    assert_eq!(topo.numa_of_ucx_device("ib2"), Some(0));
    assert!(!topo.has_efa());
    assert!(topo.module("nvidia_peermem"));
}

#[test]
fn tcp_fixture_has_no_rdma_and_no_gpu() {
    let t = tcp_only();
    let topo = topology::discover(t.path());
    assert!(topo.rdma.is_empty() && topo.gpus.is_empty());
    assert_eq!(topo.net.len(), 1, "docker0 and lo are virtual: {:?}", topo.net);
    assert_eq!(topo.net[0].speed_mbps, Some(25000));
}

/// Runs doctor --json with the environment cleared of UCX_/NIXL_ settings.
fn doctor(root: Option<&Path>, envs: &[(&str, &str)]) -> (i32, Value) {
    common::require_nixl();
    let mut c = common::kvprobe();
    c.args(["doctor", "--json"]);
    if let Some(r) = root {
        c.arg("--sysfs-root").arg(r);
    }
    for (k, _) in std::env::vars() {
        if k.starts_with("UCX_") || k.starts_with("NIXL_") {
            c.env_remove(k);
        }
    }
    for (k, v) in envs {
        c.env(k, v);
    }
    let out = c.output().expect("run kvprobe doctor");
    let code = out.status.code().expect("doctor exits, not killed");
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("doctor --json prints JSON ({e}):\n{}", String::from_utf8_lossy(&out.stdout)));
    (code, v)
}

fn ids(v: &Value) -> Vec<String> {
    v["diagnosis"]["findings"].as_array().unwrap().iter().map(|f| f["id"].as_str().unwrap().to_string()).collect()
}

fn finding<'a>(v: &'a Value, id: &str) -> &'a Value {
    v["diagnosis"]["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == id)
        .unwrap_or_else(|| panic!("no {id} in {:?}", ids(v)))
}

fn carrier<'a>(v: &'a Value, path: &str) -> &'a Value {
    v["diagnosis"]["carriers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["path"] == path)
        .unwrap_or_else(|| panic!("no carrier {path}"))
}

/// The exit code is the worst severity, and every finding is complete.
fn consistent(code: i32, v: &Value) {
    let worst = v["diagnosis"]["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| match f["severity"].as_str().unwrap() {
            "error" => 2,
            "warning" => 1,
            "info" => 0,
            s => panic!("unknown severity {s}"),
        })
        .max()
        .unwrap_or(0);
    assert_eq!(code, worst, "exit code is the worst severity");
    assert_eq!(v["diagnosis"]["exit_code"], worst);
    for f in v["diagnosis"]["findings"].as_array().unwrap() {
        for k in ["title", "evidence", "fix"] {
            assert!(!f[k].as_str().unwrap().is_empty(), "{k} of {f}");
        }
    }
}

#[test]
fn doctor_on_this_host_for_real() {
    let (code, v) = doctor(None, &[]);
    consistent(code, &v);
    let f = &v["facts"];
    assert!(f["nixl"]["plugins"].as_array().unwrap().iter().any(|p| p["name"] == "UCX" && p["loads"] == true));
    let ucx = &f["ucx"];
    assert!(ucx["version"].as_str().unwrap().starts_with("1."));
    assert!(
        ucx["found_by"].as_str().unwrap().contains("NIXL"),
        "doctor inspects the UCX NIXL loads: {}",
        ucx["found_by"]
    );
    let res = ucx["resources"].as_array().unwrap();
    assert!(res.iter().any(|r| r["transport"] == "tcp" && r["device"] == "lo"));
    assert!(res.iter().any(|r| r["transport"] == "posix"), "shared memory on any Linux host");
    // what carries same-host traffic comes from a real transfer, not a guess
    let probe = &ucx["probe"];
    assert_eq!(probe["read"]["source"], "ucp_request_query");
    let read_lanes = probe["read"]["lanes"].as_array().unwrap();
    assert!(!read_lanes.is_empty(), "{probe}");
    assert!(carrier(&v, "same host, host memory")["carrier"].as_str().unwrap().contains("READ"));
    // a module whose library is absent is reported with the missing file
    if let Some(m) = ucx["modules"].as_array().unwrap().iter().find(|m| m["name"] == "uct_ib_efa") {
        if !Path::new("/usr/lib/x86_64-linux-gnu/libefa.so.1").exists() {
            assert!(m["missing_libs"].as_array().unwrap().iter().any(|l| l == "libefa.so.1"), "{m}");
        }
    }
    // this CI host has no RDMA: TCP between hosts is called out
    if f["topology"]["rdma"].as_array().unwrap().is_empty() {
        assert!(ids(&v).contains(&"tcp-only".to_string()));
    }
}

#[test]
fn doctor_human_output_is_one_report_with_the_same_exit_code() {
    common::require_nixl();
    let t = tcp_only();
    let out = common::kvprobe().args(["doctor", "--sysfs-root"]).arg(t.path()).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for part in ["NIXL", "UCX", "transports/devices", "What will carry KV traffic", "Findings:", "eth0"] {
        assert!(text.contains(part), "{part} missing from:\n{text}");
    }
    let (code, _) = doctor(Some(t.path()), &[]);
    assert_eq!(out.status.code(), Some(code));
}

#[test]
fn doctor_on_a_p5_fixture_sees_efa_and_what_ucx_lacks() {
    let t = p5();
    let (code, v) = doctor(Some(t.path()), &[]);
    consistent(code, &v);
    assert_eq!(v["facts"]["topology"]["rdma"].as_array().unwrap().len(), 32);
    let srd = v["facts"]["ucx"]["resources"].as_array().unwrap().iter().any(|r| r["transport"] == "srd");
    assert!(!srd, "no EFA device on the test host, so UCX cannot offer srd");
    // EFA hardware without srd in UCX: the transfer between hosts would be TCP
    let f = finding(&v, "ucx-no-srd-on-efa");
    assert_eq!(f["severity"], "error");
    assert_eq!(carrier(&v, "across hosts")["severity"], "error");
    // GPUs present, so the CUDA transports matter; dma-buf is the GPUDirect route here
    assert_eq!(finding(&v, "gpudirect-dmabuf")["severity"], "info");
    assert!(ids(&v).iter().any(|i| i == "no-cuda-ipc" || i == "ucx-module-unloadable"));
    assert_eq!(code, 2);
    // NVML is never asked about a fixture
    assert!(v["facts"]["nvml"].is_null());
}

#[test]
fn doctor_on_an_ib_fixture_flags_the_down_port_and_missing_rc() {
    let t = mlx5_ib();
    let (code, v) = doctor(Some(t.path()), &[]);
    consistent(code, &v);
    let down = finding(&v, "rdma-port-not-active");
    assert!(down["title"].as_str().unwrap().contains("mlx5_3"), "{down}");
    assert_eq!(finding(&v, "ucx-no-rdma-on-ib")["severity"], "error");
    // nvidia_peermem is loaded: no GPUDirect complaint
    assert!(!ids(&v).iter().any(|i| i.starts_with("gpudirect")), "{:?}", ids(&v));
    // one GPU on 8 of its 16 lanes; an idle GPU's low link speed is not a finding
    let narrow = finding(&v, "gpu-pcie-narrowed");
    let ev = narrow["evidence"].as_str().unwrap();
    assert!(ev.contains("0000:68:00.0: x8 of x16") && !ev.contains("0000:18:00.0"), "{narrow}");
    assert_eq!(code, 2);
}

#[test]
fn doctor_on_a_tcp_fixture_warns_and_env_pitfalls_are_caught() {
    let t = tcp_only();
    let (code, v) = doctor(Some(t.path()), &[]);
    consistent(code, &v);
    assert_eq!(finding(&v, "tcp-only")["severity"], "warning");
    assert!(carrier(&v, "across hosts")["carrier"].as_str().unwrap().contains("tcp/"));

    let (code, v) = doctor(
        Some(t.path()),
        &[("NIXL_LOG_LEVEL", "DEBUG"), ("UCX_TLS", "tcp,efa"), ("UCX_LOG_LEVEL", "debug"), ("UCX_RNDV_THRESH", "8k")],
    );
    consistent(code, &v);
    for id in [
        "nixl-debug-logging",
        "ucx-tls-unknown",
        "ucx-debug-logging",
        "ucx-tls-excludes-fast",
        "nixl-default-overridden",
    ] {
        assert!(ids(&v).contains(&id.to_string()), "{id} missing: {:?}", ids(&v));
    }
    assert!(finding(&v, "ucx-tls-unknown")["fix"].as_str().unwrap().contains("srd"));
    // UCX_TLS=tcp on one host: the probe went over TCP although shared memory exists
    assert!(ids(&v).contains(&"same-host-tcp-while-faster-exists".to_string()), "{:?}", ids(&v));
}

#[test]
fn doctor_flags_emulation_and_absent_devices() {
    let t = tcp_only();
    let (code, v) = doctor(Some(t.path()), &[("UCX_TLS", "posix,tcp")]);
    consistent(code, &v);
    let read = &v["facts"]["ucx"]["probe"]["read"];
    assert!(read["protocol"].as_str().unwrap().contains("emulation"), "{read}");
    assert_eq!(finding(&v, "same-host-software-emulation")["severity"], "error");
    assert_eq!(code, 2);

    let (code, v) = doctor(Some(t.path()), &[("UCX_NET_DEVICES", "mlx5_0:1")]);
    assert_eq!(code, 2);
    assert!(finding(&v, "ucx-net-devices-absent")["evidence"].as_str().unwrap().contains("mlx5_0"));
}

#[test]
fn doctor_bad_root_is_a_usage_error() {
    let out = common::kvprobe().args(["doctor", "--sysfs-root", "/nonexistent/kvprobe"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a directory"));
}
