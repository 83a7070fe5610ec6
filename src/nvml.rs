//! NVML (`libnvidia-ml.so.1`), loaded at run time when the driver provides
//! it: GPU names, PCI addresses and NVLink links with their peers, for
//! `kvprobe doctor`.
//!
//! Three layers, as for NIXL and UCX, in one file because kvprobe calls ten
//! functions: [`raw`] declares the C signatures (hand-written from the NVML
//! API reference: no NVML header ships in the wheels kvprobe builds against,
//! and the subset is small and stable since NVML 10), one `check` turns
//! every `nvmlReturn_t` into a `Result`, and [`Nvml`] is the safe handle
//! (`nvmlShutdown` on drop). Device handles are plain values NVML owns for
//! the life of the library, so they need no RAII of their own.

use std::ffi::{CStr, OsString};
use std::os::raw::{c_char, c_uint};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Raw declarations.
pub mod raw {
    use std::os::raw::{c_char, c_int, c_uint};

    /// `nvmlReturn_t`.
    pub type NvmlReturn = c_int;
    /// `NVML_SUCCESS`.
    pub const SUCCESS: NvmlReturn = 0;
    /// `NVML_ERROR_INVALID_ARGUMENT` (a link index past the device's links).
    pub const ERROR_INVALID_ARGUMENT: NvmlReturn = 2;
    /// `NVML_ERROR_NOT_SUPPORTED` (no NVLink on this device).
    pub const ERROR_NOT_SUPPORTED: NvmlReturn = 3;
    /// `nvmlDevice_t`: an opaque pointer NVML owns.
    pub type NvmlDevice = *mut std::ffi::c_void;
    /// `NVML_NVLINK_MAX_LINKS` in recent drivers (18 on H100).
    pub const NVLINK_MAX_LINKS: c_uint = 18;
    /// `NVML_DEVICE_NAME_V2_BUFFER_SIZE`.
    pub const DEVICE_NAME_BUFFER_SIZE: usize = 96;
    /// `NVML_SYSTEM_DRIVER_VERSION_BUFFER_SIZE`.
    pub const DRIVER_VERSION_BUFFER_SIZE: usize = 80;

    /// `nvmlPciInfo_t`.
    #[repr(C)]
    #[derive(Debug, Clone, Copy, Default)]
    pub struct NvmlPciInfo {
        /// Legacy `domain:bus:device.function` (8-digit domain truncated).
        pub bus_id_legacy: [c_char; 16],
        /// PCI domain.
        pub domain: c_uint,
        /// PCI bus.
        pub bus: c_uint,
        /// PCI device.
        pub device: c_uint,
        /// Device id << 16 | vendor id.
        pub pci_device_id: c_uint,
        /// Subsystem id.
        pub pci_sub_system_id: c_uint,
        /// `00000000:18:00.0`.
        pub bus_id: [c_char; 32],
    }

    /// The functions kvprobe calls.
    #[derive(Debug, Clone, Copy)]
    pub struct Api {
        /// `nvmlInit_v2`.
        pub init: unsafe extern "C" fn() -> NvmlReturn,
        /// `nvmlShutdown`.
        pub shutdown: unsafe extern "C" fn() -> NvmlReturn,
        /// `nvmlErrorString`.
        pub error_string: unsafe extern "C" fn(NvmlReturn) -> *const c_char,
        /// `nvmlSystemGetDriverVersion`.
        pub driver_version: unsafe extern "C" fn(*mut c_char, c_uint) -> NvmlReturn,
        /// `nvmlDeviceGetCount_v2`.
        pub device_count: unsafe extern "C" fn(*mut c_uint) -> NvmlReturn,
        /// `nvmlDeviceGetHandleByIndex_v2`.
        pub device_by_index: unsafe extern "C" fn(c_uint, *mut NvmlDevice) -> NvmlReturn,
        /// `nvmlDeviceGetName`.
        pub device_name: unsafe extern "C" fn(NvmlDevice, *mut c_char, c_uint) -> NvmlReturn,
        /// `nvmlDeviceGetPciInfo_v3`.
        pub device_pci: unsafe extern "C" fn(NvmlDevice, *mut NvmlPciInfo) -> NvmlReturn,
        /// `nvmlDeviceGetNvLinkState` (`nvmlEnableState_t` out: 0 disabled, 1 enabled).
        pub nvlink_state: unsafe extern "C" fn(NvmlDevice, c_uint, *mut c_int) -> NvmlReturn,
        /// `nvmlDeviceGetNvLinkRemotePciInfo_v2`.
        pub nvlink_remote_pci: unsafe extern "C" fn(NvmlDevice, c_uint, *mut NvmlPciInfo) -> NvmlReturn,
    }
}

/// The file kvprobe asks the dynamic loader for.
pub const LIBRARY: &str = "libnvidia-ml.so.1";

/// NVML failed.
#[derive(Debug, thiserror::Error)]
pub enum NvmlError {
    /// The library is not on the loader path (no NVIDIA driver here).
    #[error(
        "{LIBRARY} cannot be loaded ({reason}); it comes with the NVIDIA driver (searched: the dynamic loader path, LD_LIBRARY_PATH and ld.so.cache)"
    )]
    NotFound {
        /// What dlopen said.
        reason: String,
    },
    /// A symbol kvprobe needs is missing (a driver older than NVML 10).
    #[error("{LIBRARY} has no {symbol}: the NVIDIA driver is too old for kvprobe's NVML queries")]
    Symbol {
        /// The symbol.
        symbol: &'static str,
    },
    /// A call returned an error.
    #[error("{call} failed: {message} (nvmlReturn_t {code})")]
    Call {
        /// The function.
        call: &'static str,
        /// The return code.
        code: i32,
        /// `nvmlErrorString`.
        message: String,
    },
}

/// A GPU as NVML sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NvmlGpu {
    /// Index in NVML's (and CUDA's PCI-ordered) numbering.
    pub index: u32,
    /// `NVIDIA H100 80GB HBM3`.
    pub name: String,
    /// PCI address, lower case, as sysfs names it (`0000:18:00.0`).
    pub pci: String,
    /// Active NVLink links: (link, remote PCI address).
    pub nvlinks: Vec<(u32, String)>,
}

/// What NVML reports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NvmlReport {
    /// Driver version.
    pub driver: String,
    /// GPUs.
    pub gpus: Vec<NvmlGpu>,
    /// Library file the loader used.
    pub library: Option<PathBuf>,
}

/// A loaded and initialised NVML.
#[derive(Debug)]
pub struct Nvml {
    api: raw::Api,
    _lib: libloading::Library,
}

fn c_text(buf: &[c_char]) -> String {
    let bytes: Vec<u8> = buf.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// NVML writes an 8-digit domain (`00000000:18:00.0`); sysfs a 4-digit one.
pub fn sysfs_pci(bus_id: &str) -> String {
    let lower = bus_id.to_ascii_lowercase();
    match lower.split_once(':') {
        Some((dom, rest)) if dom.len() == 8 && dom.starts_with("0000") => format!("{}:{rest}", &dom[4..]),
        _ => lower,
    }
}

/// The status->Result helper every NVML call goes through.
fn check(api: &raw::Api, call: &'static str, code: raw::NvmlReturn) -> Result<(), NvmlError> {
    if code == raw::SUCCESS {
        return Ok(());
    }
    // SAFETY: nvmlErrorString accepts any code and returns a static string or null.
    let p = unsafe { (api.error_string)(code) };
    let message = if p.is_null() {
        "unknown".into()
    } else {
        // SAFETY: non-null static C string.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    };
    Err(NvmlError::Call { call, code, message })
}

impl Nvml {
    /// Loads `libnvidia-ml.so.1` and calls `nvmlInit_v2`.
    pub fn open() -> Result<Nvml, NvmlError> {
        let flags = libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_LOCAL;
        // SAFETY: loading the NVIDIA driver's NVML runs its initialisers, which
        // is what every NVML user does; nothing else is assumed.
        let lib = unsafe { libloading::os::unix::Library::open(Some(OsString::from(LIBRARY)), flags) }
            .map_err(|e| NvmlError::NotFound { reason: e.to_string() })?;
        let lib = libloading::Library::from(lib);
        macro_rules! sym {
            ($name:literal) => {
                // SAFETY: the field's type is the documented C signature of this symbol.
                *unsafe { lib.get($name.as_bytes()) }.map_err(|_| NvmlError::Symbol { symbol: $name })?
            };
        }
        let api = raw::Api {
            init: sym!("nvmlInit_v2"),
            shutdown: sym!("nvmlShutdown"),
            error_string: sym!("nvmlErrorString"),
            driver_version: sym!("nvmlSystemGetDriverVersion"),
            device_count: sym!("nvmlDeviceGetCount_v2"),
            device_by_index: sym!("nvmlDeviceGetHandleByIndex_v2"),
            device_name: sym!("nvmlDeviceGetName"),
            device_pci: sym!("nvmlDeviceGetPciInfo_v3"),
            nvlink_state: sym!("nvmlDeviceGetNvLinkState"),
            nvlink_remote_pci: sym!("nvmlDeviceGetNvLinkRemotePciInfo_v2"),
        };
        // SAFETY: no arguments; NVML counts init/shutdown pairs.
        check(&api, "nvmlInit_v2", unsafe { (api.init)() })?;
        // Only now is a shutdown owed (Drop).
        Ok(Nvml { api, _lib: lib })
    }

    fn check(&self, call: &'static str, code: raw::NvmlReturn) -> Result<(), NvmlError> {
        check(&self.api, call, code)
    }

    /// Driver version.
    pub fn driver_version(&self) -> Result<String, NvmlError> {
        let mut buf = [0 as c_char; raw::DRIVER_VERSION_BUFFER_SIZE];
        // SAFETY: buf has the stated length.
        self.check("nvmlSystemGetDriverVersion", unsafe {
            (self.api.driver_version)(buf.as_mut_ptr(), buf.len() as c_uint)
        })?;
        Ok(c_text(&buf))
    }

    /// Every GPU with its active NVLink links.
    pub fn gpus(&self) -> Result<Vec<NvmlGpu>, NvmlError> {
        let mut count: c_uint = 0;
        // SAFETY: valid out-pointer.
        self.check("nvmlDeviceGetCount_v2", unsafe { (self.api.device_count)(&mut count) })?;
        let mut out = Vec::new();
        for index in 0..count {
            let mut dev: raw::NvmlDevice = std::ptr::null_mut();
            // SAFETY: index < count, valid out-pointer.
            self.check("nvmlDeviceGetHandleByIndex_v2", unsafe { (self.api.device_by_index)(index, &mut dev) })?;
            let mut name = [0 as c_char; raw::DEVICE_NAME_BUFFER_SIZE];
            // SAFETY: handle from NVML; buf has the stated length.
            self.check("nvmlDeviceGetName", unsafe {
                (self.api.device_name)(dev, name.as_mut_ptr(), name.len() as c_uint)
            })?;
            let mut pci = raw::NvmlPciInfo::default();
            // SAFETY: handle from NVML, valid out-struct of the v3 layout.
            self.check("nvmlDeviceGetPciInfo_v3", unsafe { (self.api.device_pci)(dev, &mut pci) })?;
            let mut nvlinks = Vec::new();
            for link in 0..raw::NVLINK_MAX_LINKS {
                let mut active: std::os::raw::c_int = 0;
                // SAFETY: handle from NVML, valid out-pointer; a link past the
                // device's count returns an error code, not UB.
                let rc = unsafe { (self.api.nvlink_state)(dev, link, &mut active) };
                if rc == raw::ERROR_NOT_SUPPORTED || rc == raw::ERROR_INVALID_ARGUMENT {
                    break;
                }
                self.check("nvmlDeviceGetNvLinkState", rc)?;
                if active != 1 {
                    continue;
                }
                let mut remote = raw::NvmlPciInfo::default();
                // SAFETY: as above.
                let rc = unsafe { (self.api.nvlink_remote_pci)(dev, link, &mut remote) };
                let peer = if rc == raw::SUCCESS { sysfs_pci(&c_text(&remote.bus_id)) } else { String::new() };
                nvlinks.push((link, peer));
            }
            out.push(NvmlGpu { index, name: c_text(&name), pci: sysfs_pci(&c_text(&pci.bus_id)), nvlinks });
        }
        Ok(out)
    }

    /// Driver version and GPUs.
    pub fn report(&self) -> Result<NvmlReport, NvmlError> {
        Ok(NvmlReport {
            driver: self.driver_version()?,
            gpus: self.gpus()?,
            library: crate::elf::mapped(|p| p.contains("libnvidia-ml.so")),
        })
    }
}

impl Drop for Nvml {
    fn drop(&mut self) {
        // SAFETY: pairs the successful nvmlInit_v2 of `open`; the return code
        // is ignored (nothing useful to do with it in Drop).
        let _ = unsafe { (self.api.shutdown)() };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pci_addresses_match_sysfs_names() {
        assert_eq!(sysfs_pci("00000000:18:00.0"), "0000:18:00.0");
        assert_eq!(sysfs_pci("00000001:AB:00.0"), "0001:ab:00.0");
        assert_eq!(sysfs_pci("0000:18:00.0"), "0000:18:00.0");
    }

    #[test]
    fn pci_info_has_the_c_layout() {
        assert_eq!(std::mem::size_of::<raw::NvmlPciInfo>(), 68);
    }

    #[test]
    fn without_a_driver_nvml_is_a_clear_error() {
        // On a GPU host this loads; elsewhere it must say what was searched.
        match Nvml::open() {
            Ok(n) => assert!(!n.driver_version().unwrap().is_empty()),
            Err(e) => assert!(e.to_string().contains(LIBRARY), "{e}"),
        }
    }
}
