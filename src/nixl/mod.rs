//! Safe layer over NIXL's C API.
//!
//! Ownership mirrors NIXL's rules: every child object (backend, registration,
//! prepared descriptor list, transfer request) holds an `Rc` of its agent, so
//! the agent is destroyed last; a transfer request also holds the prepared
//! lists it was made from. `Drop` never panics: failures are recorded (see
//! [`error::take_drop_errors`]). Objects are `!Send`: an agent created with
//! `thread_sync = NONE` must be used from one thread, and kvprobe runs one
//! agent per process.

pub mod agent;
pub mod dlist;
pub mod error;
pub mod notif;
pub mod xfer;

use std::ffi::{CStr, c_void};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nixl_sys as sys;
use serde::{Deserialize, Serialize};

pub use agent::{Agent, AgentConfig, Backend, PluginInfo, ThreadSync};
pub use dlist::{PreppedDlist, RegDescList, Registration, XferDescList};
pub use error::{NixlError, Status, StatusCode};
pub use notif::NotifMap;
pub use xfer::{OptArgs, Telemetry, XferReq};

/// A loaded `libnixl_capi.so` and what it offers.
pub struct Lib {
    pub(crate) raw: sys::Library,
}

impl fmt::Debug for Lib {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.raw.fmt(f)
    }
}

impl Lib {
    /// The library's own message for the last failure on this thread, when the
    /// release exports `nixl_capi_last_error_message` (after 1.5.1).
    pub(crate) fn last_error_message(&self) -> Option<String> {
        let f = self.raw.api.nixl_capi_last_error_message.as_ref().ok()?;
        // SAFETY: the function takes no arguments and returns a pointer to a
        // thread-local string (or null), valid until the next failing call.
        let p = unsafe { f() };
        if p.is_null() {
            return None;
        }
        // SAFETY: non-null, NUL-terminated per the API contract.
        let s = unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned();
        if s.is_empty() { None } else { Some(s) }
    }

    /// Frees a buffer the library returned through an out-pointer.
    ///
    /// # Safety
    /// `ptr` must come from this library (metadata, agent name, message copy)
    /// and not be used afterwards.
    pub(crate) unsafe fn free(&self, ptr: *mut c_void) {
        if ptr.is_null() {
            return;
        }
        match self.raw.api.nixl_capi_mem_free.as_ref() {
            // SAFETY: ptr came from this library, which asks for mem_free.
            Ok(f) => unsafe { f(ptr) },
            // SAFETY: releases up to 1.5.1 allocate these with malloc/strdup
            // (checked by disassembly), so libc's free is the matching release.
            Err(_) => unsafe { libc::free(ptr) },
        }
    }
}

/// A handle to the loaded library, shared by everything made from it. The
/// library is never unloaded while a handle exists.
#[derive(Clone, Debug)]
pub struct Nixl(pub(crate) Arc<Lib>);

impl Nixl {
    /// Loads the library at `path`.
    pub fn open(path: &Path) -> Result<Nixl, NixlError> {
        // SAFETY: the path was chosen by the locate step (or the user) as NIXL's
        // C API library; running its initialisers is what using NIXL means.
        let raw = unsafe { sys::Library::open(path) }?;
        Ok(Nixl(Arc::new(Lib { raw })))
    }

    /// The file that was loaded.
    pub fn path(&self) -> &PathBuf {
        &self.0.raw.path
    }

    /// The library's own version, when it exports `nixl_capi_get_version`
    /// (releases after 1.5.1); otherwise the locate step's answer stands.
    pub fn version(&self) -> Option<String> {
        let f = self.0.raw.api.nixl_capi_get_version.as_ref().ok()?;
        let (mut a, mut b, mut c) = (0, 0, 0);
        // SAFETY: three valid out-pointers, as the function expects.
        unsafe { f(&mut a, &mut b, &mut c) };
        Some(format!("{a}.{b}.{c}"))
    }

    /// True when the library is a stub build with no real NIXL behind it.
    pub fn is_stub(&self) -> bool {
        match self.0.raw.api.nixl_capi_is_stub.as_ref() {
            // SAFETY: no arguments.
            Ok(f) => unsafe { f() },
            Err(_) => false,
        }
    }

    /// Optional symbols the library exports.
    pub fn optional_symbols(&self) -> &[&'static str] {
        &self.0.raw.optional_present
    }

    /// Agent-config layout in use.
    pub fn config_abi(&self) -> sys::ConfigAbi {
        self.0.raw.config_abi
    }
}

/// NIXL memory segment types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum MemType {
    /// Host memory.
    Dram,
    /// GPU memory.
    Vram,
    /// Block device.
    Block,
    /// Object store.
    Object,
    /// File.
    File,
    /// Anything else the library reports.
    Unknown,
}

impl From<crate::mem::MemKind> for MemType {
    fn from(k: crate::mem::MemKind) -> MemType {
        match k {
            crate::mem::MemKind::Dram => MemType::Dram,
            crate::mem::MemKind::Vram => MemType::Vram,
        }
    }
}

impl MemType {
    pub(crate) fn to_raw(self) -> sys::nixl_capi_mem_type_t {
        match self {
            MemType::Dram => sys::NIXL_CAPI_MEM_DRAM,
            MemType::Vram => sys::NIXL_CAPI_MEM_VRAM,
            MemType::Block => sys::NIXL_CAPI_MEM_BLOCK,
            MemType::Object => sys::NIXL_CAPI_MEM_OBJECT,
            MemType::File => sys::NIXL_CAPI_MEM_FILE,
            MemType::Unknown => sys::NIXL_CAPI_MEM_UNKNOWN,
        }
    }

    pub(crate) fn from_raw(v: sys::nixl_capi_mem_type_t) -> MemType {
        match v {
            sys::NIXL_CAPI_MEM_DRAM => MemType::Dram,
            sys::NIXL_CAPI_MEM_VRAM => MemType::Vram,
            sys::NIXL_CAPI_MEM_BLOCK => MemType::Block,
            sys::NIXL_CAPI_MEM_OBJECT => MemType::Object,
            sys::NIXL_CAPI_MEM_FILE => MemType::File,
            _ => MemType::Unknown,
        }
    }
}

impl fmt::Display for MemType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            MemType::Dram => "DRAM",
            MemType::Vram => "VRAM",
            MemType::Block => "BLOCK",
            MemType::Object => "OBJECT",
            MemType::File => "FILE",
            MemType::Unknown => "UNKNOWN",
        };
        f.write_str(s)
    }
}

/// Direction of a transfer, from the initiator's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord, Default)]
#[serde(rename_all = "UPPERCASE")]
pub enum XferOp {
    /// Pull remote memory into local memory (what vLLM's decode side does).
    #[default]
    Read,
    /// Push local memory into remote memory.
    Write,
}

impl XferOp {
    pub(crate) fn to_raw(self) -> sys::nixl_capi_xfer_op_t {
        match self {
            XferOp::Read => sys::NIXL_CAPI_XFER_OP_READ,
            XferOp::Write => sys::NIXL_CAPI_XFER_OP_WRITE,
        }
    }
}

impl fmt::Display for XferOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            XferOp::Read => "READ",
            XferOp::Write => "WRITE",
        })
    }
}

impl std::str::FromStr for XferOp {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_uppercase().as_str() {
            "READ" | "GET" => Ok(XferOp::Read),
            "WRITE" | "PUT" => Ok(XferOp::Write),
            _ => Err(format!("unknown op '{s}' (expected READ or WRITE)")),
        }
    }
}

/// Converts a Rust string to a C string for `call`, refusing interior NULs.
pub(crate) fn cstring(call: &'static str, s: &str) -> Result<std::ffi::CString, NixlError> {
    std::ffi::CString::new(s).map_err(|_| NixlError::Nul { call, value: s.to_string() })
}

/// Copies a C string the library owns.
///
/// # Safety
/// `p` must be null or a valid NUL-terminated string.
pub(crate) unsafe fn copy_cstr(p: *const std::os::raw::c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: caller guarantees a valid C string.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}
