//! Raw bindings to UCX, loaded at run time.
//!
//! The bottom of three layers, as for NIXL (see kvprobe's `docs/ARCHITECTURE.md`):
//! the bindgen output for `wrapper.h` (UCP plus the UCT component, memory-domain
//! and resource queries), generated from UCX 1.22 headers (the libucx-cu12
//! wheel) and committed; [`Library`], which `dlopen`s one `libucp` and checks
//! its symbols; the C macros and inline functions bindgen cannot see,
//! re-implemented below with the original `#define` beside each.
//!
//! UCX keeps its UCP ABI compatible within 1.x (every parameter struct carries
//! a field mask, and new fields are appended), so these bindings work with the
//! 1.23.0 that NIXL 1.5.1 bundles. `ucs_*` and `uct_*` symbols are resolved
//! through the `libucp` handle: `dlsym` searches a library's dependencies too.

#![allow(non_camel_case_types, non_upper_case_globals, non_snake_case)]
#![allow(clippy::all)]
#![warn(unsafe_op_in_unsafe_fn)]

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};

#[allow(missing_docs, missing_debug_implementations, unused_qualifications)]
mod bindings {
    include!("bindings.rs");
}
pub use bindings::*;

/// Symbols kvprobe's safe layer calls; every UCX >= 1.20 exports them.
pub const REQUIRED_SYMBOLS: &[&str] = &[
    "ucp_get_version",
    "ucp_get_version_string",
    "ucp_config_read",
    "ucp_config_release",
    "ucp_config_modify",
    "ucp_init_version",
    "ucp_cleanup",
    "ucp_context_query",
    "ucp_context_print_info",
    "ucp_worker_create",
    "ucp_worker_destroy",
    "ucp_worker_query",
    "ucp_worker_get_address",
    "ucp_worker_release_address",
    "ucp_worker_progress",
    "ucp_worker_print_info",
    "ucp_ep_create",
    "ucp_ep_close_nbx",
    "ucp_ep_query",
    "ucp_ep_print_info",
    "ucp_ep_flush_nbx",
    "ucp_ep_rkey_unpack",
    "ucp_mem_map",
    "ucp_mem_unmap",
    "ucp_mem_query",
    "ucp_rkey_pack",
    "ucp_rkey_buffer_release",
    "ucp_rkey_destroy",
    "ucp_put_nbx",
    "ucp_get_nbx",
    "ucp_request_check_status",
    "ucp_request_query",
    "ucp_request_free",
    "ucp_request_cancel",
    "ucs_status_string",
    "uct_query_components",
    "uct_release_component_list",
    "uct_component_query",
    "uct_md_config_read",
    "uct_config_release",
    "uct_md_open",
    "uct_md_close",
    "uct_md_query_tl_resources",
    "uct_release_tl_resource_list",
];

/// Symbols used when present.
pub const OPTIONAL_SYMBOLS: &[&str] = &["ucp_ep_evaluate_perf"];

// #define UCS_PTR_IS_ERR(_ptr)  (((uintptr_t)(_ptr)) >= ((uintptr_t)UCS_ERR_LAST))
/// `UCS_PTR_IS_ERR`: the pointer encodes an error status.
#[inline]
pub fn UCS_PTR_IS_ERR(p: ucs_status_ptr_t) -> bool {
    (p as usize) >= (UCS_ERR_LAST as isize as usize)
}

// #define UCS_PTR_IS_PTR(_ptr)  (((uintptr_t)(_ptr) - 1) < ((uintptr_t)UCS_ERR_LAST - 1))
/// `UCS_PTR_IS_PTR`: the pointer is a request handle.
#[inline]
pub fn UCS_PTR_IS_PTR(p: ucs_status_ptr_t) -> bool {
    (p as usize).wrapping_sub(1) < (UCS_ERR_LAST as isize as usize).wrapping_sub(1)
}

// #define UCS_PTR_RAW_STATUS(_ptr)  ((ucs_status_t)(intptr_t)(_ptr))
/// `UCS_PTR_RAW_STATUS`.
#[inline]
pub fn UCS_PTR_RAW_STATUS(p: ucs_status_ptr_t) -> ucs_status_t {
    p as isize as ucs_status_t
}

// #define UCS_PTR_STATUS(_ptr)  (UCS_PTR_IS_PTR(_ptr) ? UCS_INPROGRESS : UCS_PTR_RAW_STATUS(_ptr))
/// `UCS_PTR_STATUS`: `UCS_INPROGRESS` for a request handle, else the status.
#[inline]
pub fn UCS_PTR_STATUS(p: ucs_status_ptr_t) -> ucs_status_t {
    if UCS_PTR_IS_PTR(p) { UCS_INPROGRESS } else { UCS_PTR_RAW_STATUS(p) }
}

/// Why a UCX library could not be used.
#[derive(Debug)]
pub enum LoadError {
    /// `dlopen` failed.
    Open {
        /// The file.
        path: PathBuf,
        /// The loader's message.
        reason: String,
    },
    /// Required symbols are missing (not a UCP library, or one older than 1.20).
    MissingSymbols {
        /// The file.
        path: PathBuf,
        /// Every missing required symbol.
        missing: Vec<&'static str>,
    },
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Open { path, reason } => write!(f, "cannot load {}: {reason}", path.display()),
            LoadError::MissingSymbols { path, missing } => write!(
                f,
                "{} is not a usable UCX (UCP >= 1.20 needed): {} missing symbol(s): {}",
                path.display(),
                missing.len(),
                missing.join(", ")
            ),
        }
    }
}

impl std::error::Error for LoadError {}

/// A loaded `libucp` and its function table.
pub struct Library {
    /// The bindgen function table (required symbols guaranteed present).
    pub api: UcxApi,
    /// The file that was loaded.
    pub path: PathBuf,
}

impl fmt::Debug for Library {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Library").field("path", &self.path).finish_non_exhaustive()
    }
}

impl Library {
    /// Opens `path` (`RTLD_NOW | RTLD_LOCAL`; if the same file is already
    /// loaded, as NIXL's UCX plugin loads it, the existing copy is reused) and
    /// checks [`REQUIRED_SYMBOLS`].
    ///
    /// # Safety
    /// Loading runs the library's initialisers; the caller must believe `path`
    /// is UCX's libucp.
    pub unsafe fn open(path: &Path) -> Result<Library, LoadError> {
        let flags = libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_LOCAL;
        // SAFETY: the caller accepts running the library's initialisers.
        let lib = unsafe { libloading::os::unix::Library::open(Some(OsString::from(path)), flags) }
            .map_err(|e| LoadError::Open { path: path.to_path_buf(), reason: e.to_string() })?;
        let mut missing = Vec::new();
        for name in REQUIRED_SYMBOLS {
            // SAFETY: presence check only; nothing is called.
            if unsafe { lib.get::<*const ()>(name.as_bytes()) }.is_err() {
                missing.push(*name);
            }
        }
        if !missing.is_empty() {
            return Err(LoadError::MissingSymbols { path: path.to_path_buf(), missing });
        }
        // SAFETY: symbols are only resolved, each typed by UCX's own header.
        let api = unsafe { UcxApi::from_library(libloading::Library::from(lib)) }
            .map_err(|e| LoadError::Open { path: path.to_path_buf(), reason: e.to_string() })?;
        Ok(Library { api, path: path.to_path_buf() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointer_status_macros_match_the_c_definitions() {
        let err = UCS_ERR_NO_MEMORY as isize as ucs_status_ptr_t;
        assert!(UCS_PTR_IS_ERR(err));
        assert!(!UCS_PTR_IS_PTR(err));
        assert_eq!(UCS_PTR_STATUS(err), UCS_ERR_NO_MEMORY);
        let ok: ucs_status_ptr_t = std::ptr::null_mut();
        assert!(!UCS_PTR_IS_ERR(ok));
        assert!(!UCS_PTR_IS_PTR(ok));
        assert_eq!(UCS_PTR_STATUS(ok), UCS_OK);
        let req = 0x7f00_1000usize as ucs_status_ptr_t;
        assert!(UCS_PTR_IS_PTR(req));
        assert!(!UCS_PTR_IS_ERR(req));
        assert_eq!(UCS_PTR_STATUS(req), UCS_INPROGRESS);
    }

    #[test]
    fn symbol_lists_cover_the_bindings() {
        let generated = include_str!("bindings.rs");
        let mut in_bindings: Vec<&str> = generated
            .split("pub unsafe fn ")
            .skip(1)
            .filter_map(|s| s.split('(').next())
            .filter(|s| s.starts_with("ucp_") || s.starts_with("ucs_") || s.starts_with("uct_"))
            .collect();
        in_bindings.sort_unstable();
        let mut listed: Vec<&str> = REQUIRED_SYMBOLS.iter().chain(OPTIONAL_SYMBOLS).copied().collect();
        listed.sort_unstable();
        assert_eq!(in_bindings, listed);
    }

    #[test]
    fn a_library_that_is_not_ucx_is_refused_with_every_missing_symbol() {
        // SAFETY: libc is already loaded; nothing new runs.
        match unsafe { Library::open(Path::new("libc.so.6")) } {
            Err(LoadError::MissingSymbols { missing, .. }) => assert_eq!(missing.len(), REQUIRED_SYMBOLS.len()),
            other => panic!("unexpected {other:?}"),
        }
        // SAFETY: the file does not exist.
        assert!(matches!(unsafe { Library::open(Path::new("/nonexistent/libucp.so")) }, Err(LoadError::Open { .. })));
    }
}
