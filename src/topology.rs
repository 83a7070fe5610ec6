//! What this host has, read from sysfs: RDMA devices (EFA, InfiniBand),
//! network interfaces, GPUs, NUMA nodes. `root` is `/` normally; tests pass a
//! fixture tree laid out like a real host's `/sys`.

use std::path::{Path, PathBuf};

/// The sysfs root under `root` (`/sys` on a real host).
pub fn sys(root: &Path) -> PathBuf {
    root.join("sys")
}

/// Whether the host has AWS EFA devices (an RDMA device bound to the `efa` driver).
pub fn has_efa(root: &Path) -> bool {
    let Ok(rd) = std::fs::read_dir(sys(root).join("class/infiniband")) else { return false };
    rd.filter_map(Result::ok).any(|e| driver_of(&e.path().join("device")).as_deref() == Some("efa"))
}

/// The driver bound to a device folder (the name its `driver` link points at).
pub fn driver_of(device: &Path) -> Option<String> {
    std::fs::read_link(device.join("driver")).ok()?.file_name().map(|n| n.to_string_lossy().into_owned())
}
