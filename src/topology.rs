//! What this host has, read from sysfs and procfs: RDMA devices (EFA,
//! InfiniBand/RoCE HCAs), network interfaces, GPUs, NUMA nodes, the kernel
//! modules GPUDirect needs. `root` is `/` on a real host; tests pass a fixture
//! tree laid out like one (docs/DEBUGGING.md lists the files read).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The sysfs root under `root` (`/sys` on a real host).
pub fn sys(root: &Path) -> PathBuf {
    root.join("sys")
}

fn read_trim(p: &Path) -> Option<String> {
    std::fs::read_to_string(p).ok().map(|s| s.trim().to_string())
}

fn numa_of(device: &Path) -> Option<i32> {
    read_trim(&device.join("numa_node")).and_then(|s| s.parse().ok()).filter(|&n: &i32| n >= 0)
}

fn list(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut v: Vec<(String, PathBuf)> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(Result::ok).map(|e| (e.file_name().to_string_lossy().into_owned(), e.path())).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// The driver bound to a device folder (the name its `driver` link points at).
pub fn driver_of(device: &Path) -> Option<String> {
    std::fs::read_link(device.join("driver")).ok()?.file_name().map(|n| n.to_string_lossy().into_owned())
}

/// An RDMA port.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RdmaPort {
    /// Port number.
    pub port: u32,
    /// `ACTIVE`, `DOWN`, `INIT`... (the text after "4: ").
    pub state: String,
    /// `100 Gb/sec (4X EDR)` as the kernel prints it.
    pub rate: String,
    /// Rate in Gb/s, parsed.
    pub rate_gbps: Option<f64>,
    /// `InfiniBand`, `Ethernet` (RoCE) or `Unspecified` (EFA).
    pub link_layer: String,
}

/// An RDMA device (`/sys/class/infiniband/*`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RdmaDevice {
    /// `mlx5_0`, `rdmap16s27`...
    pub name: String,
    /// Kernel driver (`efa`, `mlx5_core`...).
    pub driver: Option<String>,
    /// True for AWS EFA.
    pub efa: bool,
    /// NUMA node of the PCI device.
    pub numa: Option<i32>,
    /// Ports.
    pub ports: Vec<RdmaPort>,
}

/// A network interface (`/sys/class/net/*`, loopback and virtual ones skipped).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetDevice {
    /// `eth0`, `ens32`, `ib0`...
    pub name: String,
    /// `up`, `down`...
    pub operstate: String,
    /// Link speed in Mb/s (None when the driver does not report it).
    pub speed_mbps: Option<u64>,
    /// MTU.
    pub mtu: Option<u32>,
    /// ARP hardware type (1 Ethernet, 32 IP over InfiniBand).
    pub kind: u32,
    /// Driver.
    pub driver: Option<String>,
    /// NUMA node of the PCI device.
    pub numa: Option<i32>,
}

/// A GPU seen on the PCI bus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gpu {
    /// PCI address.
    pub pci: String,
    /// Vendor id (0x10de NVIDIA).
    pub vendor: String,
    /// Device id.
    pub device: String,
    /// NUMA node.
    pub numa: Option<i32>,
    /// The PCIe link, when sysfs shows it (a VM's emulated bridge may not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pcie: Option<PcieLink>,
}

/// A PCIe link as sysfs reports it (`current_link_speed`, `current_link_width`
/// and their `max_` forms).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PcieLink {
    /// `32.0 GT/s PCIe` (GPUs lower it when idle: not a fault by itself).
    pub speed: String,
    /// Lanes in use.
    pub width: Option<u32>,
    /// Fastest the device and slot support.
    pub max_speed: String,
    /// Most lanes the device supports.
    pub max_width: Option<u32>,
}

impl PcieLink {
    /// Fewer lanes than the device supports: a card in a narrower slot or a
    /// link trained down (a real loss, unlike an idle speed drop).
    pub fn narrowed(&self) -> bool {
        matches!((self.width, self.max_width), (Some(w), Some(m)) if w < m)
    }
}

/// What the host has.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Topology {
    /// RDMA devices.
    pub rdma: Vec<RdmaDevice>,
    /// Physical network interfaces.
    pub net: Vec<NetDevice>,
    /// GPUs (NVIDIA and others, by PCI class).
    pub gpus: Vec<Gpu>,
    /// NUMA node count (0 when the kernel has no NUMA view).
    pub numa_nodes: usize,
    /// Kernel release.
    pub kernel: String,
    /// Loaded modules that matter here (nvidia, nvidia_peermem, efa_nv_peermem, ...).
    pub modules: Vec<String>,
    /// First line of `/proc/driver/nvidia/version` (says whether the kernel
    /// modules are the open ones, which dma-buf GPUDirect needs).
    pub nvidia_driver: Option<String>,
}

impl Topology {
    /// Whether the host has AWS EFA devices.
    pub fn has_efa(&self) -> bool {
        self.rdma.iter().any(|d| d.efa)
    }
    /// HCAs that are not EFA.
    pub fn hcas(&self) -> impl Iterator<Item = &RdmaDevice> {
        self.rdma.iter().filter(|d| !d.efa)
    }
    /// NVIDIA GPUs.
    pub fn nvidia_gpus(&self) -> impl Iterator<Item = &Gpu> {
        self.gpus.iter().filter(|g| g.vendor == "0x10de")
    }
    /// Whether a kernel module is loaded.
    pub fn module(&self, name: &str) -> bool {
        self.modules.iter().any(|m| m == name)
    }
    /// The NUMA node of a UCX device name (`mlx5_0:1`, `rdmap0:1`, `eth0`), when known.
    pub fn numa_of_ucx_device(&self, dev: &str) -> Option<i32> {
        let base = dev.split(':').next().unwrap_or(dev);
        self.rdma
            .iter()
            .find(|d| d.name == base)
            .and_then(|d| d.numa)
            .or_else(|| self.net.iter().find(|n| n.name == base).and_then(|n| n.numa))
    }
}

/// Modules whose presence kvprobe reports.
pub const MODULES: &[&str] =
    &["nvidia", "nvidia_peermem", "nv_peer_mem", "efa_nv_peermem", "efa", "mlx5_core", "ib_core", "gdrdrv"];

/// Parses `100 Gb/sec (4X EDR)` -> 100.
fn parse_rate(s: &str) -> Option<f64> {
    s.split_whitespace().next()?.parse().ok()
}

/// Reads the topology under `root`.
pub fn discover(root: &Path) -> Topology {
    let sysfs = sys(root);
    let mut t = Topology::default();
    for (name, path) in list(&sysfs.join("class/infiniband")) {
        let device = path.join("device");
        let driver = driver_of(&device);
        let mut ports = Vec::new();
        for (pname, ppath) in list(&path.join("ports")) {
            let Ok(port) = pname.parse::<u32>() else { continue };
            let state = read_trim(&ppath.join("state")).unwrap_or_default();
            let state = state.split_once(':').map_or(state.clone(), |(_, s)| s.trim().to_string());
            let rate = read_trim(&ppath.join("rate")).unwrap_or_default();
            ports.push(RdmaPort {
                port,
                state,
                rate_gbps: parse_rate(&rate),
                rate,
                link_layer: read_trim(&ppath.join("link_layer")).unwrap_or_default(),
            });
        }
        t.rdma.push(RdmaDevice { efa: driver.as_deref() == Some("efa"), driver, numa: numa_of(&device), name, ports });
    }
    for (name, path) in list(&sysfs.join("class/net")) {
        // physical interfaces only: virtual ones (lo, docker0, veth...) have no device link
        if !path.join("device").exists() {
            continue;
        }
        t.net.push(NetDevice {
            operstate: read_trim(&path.join("operstate")).unwrap_or_default(),
            speed_mbps: read_trim(&path.join("speed"))
                .and_then(|s| s.parse::<i64>().ok())
                .filter(|&s| s > 0)
                .map(|s| s as u64),
            mtu: read_trim(&path.join("mtu")).and_then(|s| s.parse().ok()),
            kind: read_trim(&path.join("type")).and_then(|s| s.parse().ok()).unwrap_or(0),
            driver: driver_of(&path.join("device")),
            numa: numa_of(&path.join("device")),
            name,
        });
    }
    for (pci, path) in list(&sysfs.join("bus/pci/devices")) {
        let class = read_trim(&path.join("class")).unwrap_or_default();
        // 0x0300xx VGA, 0x0302xx 3D controller (data-center GPUs)
        if class.starts_with("0x0300") || class.starts_with("0x0302") {
            t.gpus.push(Gpu {
                vendor: read_trim(&path.join("vendor")).unwrap_or_default(),
                device: read_trim(&path.join("device")).unwrap_or_default(),
                numa: numa_of(&path),
                pcie: pcie_of(&path),
                pci,
            });
        }
    }
    t.numa_nodes = list(&sysfs.join("devices/system/node")).iter().filter(|(n, _)| n.starts_with("node")).count();
    t.kernel = read_trim(&root.join("proc/sys/kernel/osrelease")).unwrap_or_default();
    t.nvidia_driver = std::fs::read_to_string(root.join("proc/driver/nvidia/version"))
        .ok()
        .and_then(|s| s.lines().next().map(|l| l.trim().to_string()));
    t.modules = MODULES.iter().filter(|m| sysfs.join("module").join(m).exists()).map(|m| m.to_string()).collect();
    t
}

fn pcie_of(dev: &Path) -> Option<PcieLink> {
    let speed = read_trim(&dev.join("current_link_speed"))?;
    let width = |f: &str| read_trim(&dev.join(f)).and_then(|s| s.trim_start_matches('x').parse().ok());
    Some(PcieLink {
        speed,
        width: width("current_link_width"),
        max_speed: read_trim(&dev.join("max_link_speed")).unwrap_or_default(),
        max_width: width("max_link_width"),
    })
}

/// Whether the host has AWS EFA devices (an RDMA device bound to the `efa` driver).
pub fn has_efa(root: &Path) -> bool {
    discover(root).has_efa()
}

/// Kernel version as (major, minor), from `6.8.0-1021-aws` -> (6, 8).
pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// The network interface holding the address `ip` in this network
/// namespace (getifaddrs), e.g. the device a connection's local address is on.
pub fn iface_of_ip(ip: &str) -> Option<String> {
    let want: std::net::IpAddr = ip.parse().ok()?;
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return None;
    }
    let mut found = None;
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, valid until freeifaddrs.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() && !ifa.ifa_name.is_null() {
            // SAFETY: ifa_addr points at a sockaddr whose family says its real type.
            let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
            let addr = match family {
                libc::AF_INET => {
                    // SAFETY: an AF_INET address is a sockaddr_in.
                    let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                    Some(std::net::IpAddr::from(u32::from_be(sin.sin_addr.s_addr).to_be_bytes()))
                }
                libc::AF_INET6 => {
                    // SAFETY: an AF_INET6 address is a sockaddr_in6.
                    let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                    Some(std::net::IpAddr::from(sin6.sin6_addr.s6_addr))
                }
                _ => None,
            };
            if addr == Some(want) {
                // SAFETY: ifa_name is a NUL-terminated string owned by the list.
                found = Some(unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) }.to_string_lossy().into_owned());
                break;
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: the list getifaddrs allocated, freed once.
    unsafe { libc::freeifaddrs(head) };
    found
}

/// Rated speed of a network interface (sysfs `speed`, Mb/s); None when the
/// interface reports none (loopback, some virtual devices, link down).
pub fn nic_speed_mbps(dev: &str) -> Option<u64> {
    let s = std::fs::read_to_string(sys(Path::new("/")).join("class/net").join(dev).join("speed")).ok()?;
    s.trim().parse::<i64>().ok().filter(|&v| v > 0).map(|v| v as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_host_reads_without_errors() {
        let t = discover(Path::new("/"));
        assert!(!t.kernel.is_empty());
        assert!(t.numa_nodes >= 1);
    }

    #[test]
    fn rates_and_kernels_parse() {
        assert_eq!(parse_rate("400 Gb/sec (4X NDR)"), Some(400.0));
        assert_eq!(parse_rate("garbage"), None);
        assert_eq!(kernel_version("6.8.0-1021-aws"), Some((6, 8)));
        assert_eq!(kernel_version("5.15.0"), Some((5, 15)));
        assert_eq!(kernel_version(""), None);
    }

    #[test]
    fn an_empty_root_is_an_empty_host() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(discover(tmp.path()), Topology::default());
    }
}
