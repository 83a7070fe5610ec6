//! Raw bindings to NIXL's C API, `libnixl_capi.so`, loaded at run time.
//!
//! This is the bottom of three layers (see kvprobe's `docs/ARCHITECTURE.md`):
//!
//! 1. **here**: the bindgen output for `include/nixl_capi.h` (committed in
//!    `src/bindings.rs`, regenerated with the `bindgen` feature) and
//!    [`Library`], which `dlopen`s a given file, checks that every symbol kvprobe
//!    needs is present and reports all that are missing at once;
//! 2. kvprobe's `nixl::error`: one status -> `Result` helper every call goes through;
//! 3. kvprobe's `nixl::*` safe RAII types.
//!
//! Nothing is linked at build time: building needs neither NIXL nor libclang.
//! Where the library lives is decided by the caller (kvprobe's `locate` module).

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

/// Symbols kvprobe's safe layer calls. Every NIXL release from 1.0.0 through
/// 1.5.1 exports all of them; a library lacking any is refused at load time.
pub const REQUIRED_SYMBOLS: &[&str] = &[
    "nixl_capi_create_configured_agent",
    "nixl_capi_create_agent",
    "nixl_capi_destroy_agent",
    "nixl_capi_get_local_md",
    "nixl_capi_get_local_partial_md",
    "nixl_capi_load_remote_md",
    "nixl_capi_invalidate_remote_md",
    "nixl_capi_invalidate_local_md",
    "nixl_capi_check_remote_md",
    "nixl_capi_send_local_md",
    "nixl_capi_send_local_partial_md",
    "nixl_capi_fetch_remote_md",
    "nixl_capi_agent_make_connection",
    "nixl_capi_get_available_plugins",
    "nixl_capi_destroy_string_list",
    "nixl_capi_string_list_size",
    "nixl_capi_string_list_get",
    "nixl_capi_get_plugin_params",
    "nixl_capi_destroy_mem_list",
    "nixl_capi_destroy_params",
    "nixl_capi_create_backend",
    "nixl_capi_destroy_backend",
    "nixl_capi_get_backend_params",
    "nixl_capi_create_params",
    "nixl_capi_params_add",
    "nixl_capi_params_is_empty",
    "nixl_capi_params_create_iterator",
    "nixl_capi_params_iterator_next",
    "nixl_capi_params_destroy_iterator",
    "nixl_capi_mem_list_is_empty",
    "nixl_capi_mem_list_size",
    "nixl_capi_mem_list_get",
    "nixl_capi_mem_type_to_string",
    "nixl_capi_create_opt_args",
    "nixl_capi_destroy_opt_args",
    "nixl_capi_opt_args_add_backend",
    "nixl_capi_opt_args_set_notif_msg",
    "nixl_capi_opt_args_get_notif_msg",
    "nixl_capi_opt_args_set_has_notif",
    "nixl_capi_opt_args_get_has_notif",
    "nixl_capi_opt_args_set_skip_desc_merge",
    "nixl_capi_opt_args_get_skip_desc_merge",
    "nixl_capi_opt_args_set_ip_addr",
    "nixl_capi_opt_args_set_port",
    "nixl_capi_register_mem",
    "nixl_capi_deregister_mem",
    "nixl_capi_query_mem",
    "nixl_capi_prep_xfer_dlist",
    "nixl_capi_release_xfer_dlist_handle",
    "nixl_capi_make_xfer_req",
    "nixl_capi_create_xfer_req",
    "nixl_capi_estimate_xfer_cost",
    "nixl_capi_post_xfer_req",
    "nixl_capi_get_xfer_status",
    "nixl_capi_query_xfer_backend",
    "nixl_capi_release_xfer_req",
    "nixl_capi_destroy_xfer_req",
    "nixl_capi_get_xfer_telemetry",
    "nixl_capi_get_notifs",
    "nixl_capi_create_notif_map",
    "nixl_capi_destroy_notif_map",
    "nixl_capi_gen_notif",
    "nixl_capi_notif_map_size",
    "nixl_capi_notif_map_get_agent_at",
    "nixl_capi_notif_map_get_notifs_size",
    "nixl_capi_notif_map_get_notif",
    "nixl_capi_notif_map_clear",
    "nixl_capi_create_xfer_dlist",
    "nixl_capi_destroy_xfer_dlist",
    "nixl_capi_xfer_dlist_get_type",
    "nixl_capi_xfer_dlist_add_desc",
    "nixl_capi_xfer_dlist_desc_count",
    "nixl_capi_xfer_dlist_len",
    "nixl_capi_xfer_dlist_is_empty",
    "nixl_capi_xfer_dlist_trim",
    "nixl_capi_xfer_dlist_rem_desc",
    "nixl_capi_xfer_dlist_clear",
    "nixl_capi_xfer_dlist_resize",
    "nixl_capi_xfer_dlist_print",
    "nixl_capi_create_reg_dlist",
    "nixl_capi_destroy_reg_dlist",
    "nixl_capi_reg_dlist_get_type",
    "nixl_capi_reg_dlist_add_desc",
    "nixl_capi_reg_dlist_desc_count",
    "nixl_capi_reg_dlist_is_empty",
    "nixl_capi_reg_dlist_trim",
    "nixl_capi_reg_dlist_rem_desc",
    "nixl_capi_reg_dlist_clear",
    "nixl_capi_reg_dlist_resize",
    "nixl_capi_reg_dlist_print",
    "nixl_capi_create_query_resp_list",
    "nixl_capi_destroy_query_resp_list",
    "nixl_capi_query_resp_list_size",
    "nixl_capi_query_resp_list_has_value",
    "nixl_capi_query_resp_list_get_params",
    "nixl_capi_is_stub",
];

/// Symbols only some releases export (1.5 added custom parameters and memory
/// views; releases after 1.5.1 add version, status strings and `mem_free`).
pub const OPTIONAL_SYMBOLS: &[&str] = &[
    "nixl_capi_opt_args_set_custom_param",
    "nixl_capi_opt_args_get_custom_param",
    "nixl_capi_create_remote_dlist",
    "nixl_capi_destroy_remote_dlist",
    "nixl_capi_remote_dlist_add_desc",
    "nixl_capi_prep_mem_view_local",
    "nixl_capi_prep_mem_view_remote",
    "nixl_capi_release_mem_view",
    "nixl_capi_get_version",
    "nixl_capi_status_string",
    "nixl_capi_last_error_message",
    "nixl_capi_mem_free",
];

/// How the loaded library lays out `nixl_capi_agent_config_t`.
///
/// KVPROBE_NIXL_ABI_NOTE: releases 1.0 .. 1.5.1 declare `int listen_port` at
/// offset 4 (checked by disassembling 1.5.1's `nixl_capi_create_configured_agent`).
/// Upstream headers newer than 1.5.1, the same ones that add
/// `nixl_capi_get_version`, declare `uint16_t listen_port` at offset 2, which
/// moves `thread_sync` to offset 4. kvprobe picks the layout by the presence of
/// `nixl_capi_get_version`. kvprobe always passes `num_workers = 0` (no
/// release reads it); then, with the listen thread off and `thread_sync`
/// NONE, every field either layout's reader looks at holds the same value in
/// both, so the default configuration is right whichever layout the library
/// has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigAbi {
    /// `int listen_port` at offset 4 (NIXL 1.0 .. 1.5.1).
    IntPort,
    /// `uint16_t listen_port` at offset 2 (headers after 1.5.1).
    U16Port,
}

/// `nixl_capi_agent_config_t` as headers after 1.5.1 declare it (see [`ConfigAbi`]).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct nixl_capi_agent_config_u16port_t {
    pub enable_prog_thread: bool,
    pub enable_listen_thread: bool,
    pub listen_port: u16,
    pub thread_sync: nixl_capi_thread_sync_t,
    pub num_workers: std::os::raw::c_uint,
    pub pthr_delay_us: u64,
    pub lthr_delay_us: u64,
    pub capture_telemetry: bool,
}

/// Why a library could not be used.
#[derive(Debug)]
pub enum LoadError {
    /// `dlopen` failed: the file is missing, not a shared object, or one of its
    /// own dependencies (libnixl.so, libstdc++ ...) cannot be found.
    Open {
        /// The file that was opened.
        path: PathBuf,
        /// The loader's message (dlerror).
        reason: String,
    },
    /// The library opened but lacks symbols kvprobe needs (a NIXL older than 1.0,
    /// or not NIXL's C API at all).
    MissingSymbols {
        /// The file that was opened.
        path: PathBuf,
        /// Every required symbol that is absent.
        missing: Vec<&'static str>,
    },
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Open { path, reason } => {
                write!(f, "cannot load {}: {reason}", path.display())?;
                if reason.contains("cannot open shared object file") {
                    write!(
                        f,
                        " (libnixl_capi.so needs libnixl.so and NIXL's other libraries beside it, as a wheel or a \
                         NIXL install lays them out, or on LD_LIBRARY_PATH)"
                    )?;
                }
                Ok(())
            }
            LoadError::MissingSymbols { path, missing } => write!(
                f,
                "{} is not a usable NIXL C API (NIXL >= 1.0 needed): {} missing symbol(s): {}",
                path.display(),
                missing.len(),
                missing.join(", ")
            ),
        }
    }
}

impl std::error::Error for LoadError {}

/// A loaded `libnixl_capi.so`: the bindgen function table plus what the loader
/// found out about it. Kept alive (never unloaded) for as long as any NIXL
/// object exists; callers hold it in an `Arc`.
pub struct Library {
    /// The bindgen function table. Required symbols are guaranteed present;
    /// optional ones are `Err` when absent.
    pub api: NixlCapi,
    /// The file that was loaded.
    pub path: PathBuf,
    /// Layout of the agent configuration struct.
    pub config_abi: ConfigAbi,
    /// Optional symbols this library exports.
    pub optional_present: Vec<&'static str>,
}

impl fmt::Debug for Library {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Library")
            .field("path", &self.path)
            .field("config_abi", &self.config_abi)
            .field("optional_present", &self.optional_present)
            .finish_non_exhaustive()
    }
}

impl Library {
    /// Opens `path` with `RTLD_NOW | RTLD_LOCAL` (so a missing dependency is
    /// reported here, not at the first call) and checks every symbol in
    /// [`REQUIRED_SYMBOLS`].
    ///
    /// # Safety
    /// Loading a shared library runs its initialisers, which is as unsafe as
    /// calling an unknown foreign function. The caller must pass a path it
    /// believes to be NIXL's C API library.
    pub unsafe fn open(path: &Path) -> Result<Library, LoadError> {
        let flags = libc_rtld_now() | libc_rtld_local();
        // SAFETY: the caller accepts the risk of running the library's
        // initialisers (this function's contract).
        let lib = unsafe { libloading::os::unix::Library::open(Some(OsString::from(path)), flags) }
            .map_err(|e| LoadError::Open { path: path.to_path_buf(), reason: e.to_string() })?;
        let mut missing = Vec::new();
        for name in REQUIRED_SYMBOLS {
            // SAFETY: only the symbol's presence is checked; the pointer is not called.
            let sym = unsafe { lib.get::<*const ()>(name.as_bytes()) };
            if sym.is_err() {
                missing.push(*name);
            }
        }
        if !missing.is_empty() {
            return Err(LoadError::MissingSymbols { path: path.to_path_buf(), missing });
        }
        let mut optional_present = Vec::new();
        for name in OPTIONAL_SYMBOLS {
            // SAFETY: presence check only, as above.
            if unsafe { lib.get::<*const ()>(name.as_bytes()) }.is_ok() {
                optional_present.push(*name);
            }
        }
        let config_abi =
            if optional_present.contains(&"nixl_capi_get_version") { ConfigAbi::U16Port } else { ConfigAbi::IntPort };
        // SAFETY: the library is already initialised; from_library only resolves
        // symbols, each typed by the bindgen signature from our header.
        let api = unsafe { NixlCapi::from_library(libloading::Library::from(lib)) }
            .map_err(|e| LoadError::Open { path: path.to_path_buf(), reason: e.to_string() })?;
        Ok(Library { api, path: path.to_path_buf(), config_abi, optional_present })
    }

    /// Whether an optional symbol is present.
    pub fn has(&self, symbol: &str) -> bool {
        self.optional_present.iter().any(|s| *s == symbol)
    }
}

fn libc_rtld_now() -> std::os::raw::c_int {
    libloading::os::unix::RTLD_NOW
}

fn libc_rtld_local() -> std::os::raw::c_int {
    libloading::os::unix::RTLD_LOCAL
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_layouts_have_the_documented_offsets() {
        assert_eq!(std::mem::size_of::<nixl_capi_agent_config_t>(), 40);
        assert_eq!(std::mem::offset_of!(nixl_capi_agent_config_t, listen_port), 4);
        assert_eq!(std::mem::offset_of!(nixl_capi_agent_config_t, thread_sync), 8);
        assert_eq!(std::mem::offset_of!(nixl_capi_agent_config_t, pthr_delay_us), 16);
        assert_eq!(std::mem::offset_of!(nixl_capi_agent_config_t, capture_telemetry), 32);
        assert_eq!(std::mem::size_of::<nixl_capi_agent_config_u16port_t>(), 40);
        assert_eq!(std::mem::offset_of!(nixl_capi_agent_config_u16port_t, listen_port), 2);
        assert_eq!(std::mem::offset_of!(nixl_capi_agent_config_u16port_t, thread_sync), 4);
        assert_eq!(std::mem::offset_of!(nixl_capi_agent_config_u16port_t, pthr_delay_us), 16);
        assert_eq!(std::mem::offset_of!(nixl_capi_agent_config_u16port_t, capture_telemetry), 32);
    }

    #[test]
    fn required_and_optional_lists_are_disjoint_and_unique() {
        let mut all: Vec<&str> = REQUIRED_SYMBOLS.iter().chain(OPTIONAL_SYMBOLS).copied().collect();
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n, "a symbol is listed twice");
    }

    #[test]
    fn symbol_lists_cover_exactly_the_header() {
        let generated = include_str!("bindings.rs");
        let mut in_header: Vec<&str> = generated
            .split("pub unsafe fn ")
            .skip(1)
            .filter_map(|s| s.split('(').next())
            .filter(|s| s.starts_with("nixl_capi_"))
            .collect();
        in_header.sort_unstable();
        let mut listed: Vec<&str> = REQUIRED_SYMBOLS.iter().chain(OPTIONAL_SYMBOLS).copied().collect();
        listed.sort_unstable();
        assert_eq!(in_header, listed);
    }

    #[test]
    fn missing_library_is_an_error_not_a_panic() {
        // SAFETY: the path does not exist, so nothing is loaded or run.
        let err = unsafe { Library::open(Path::new("/nonexistent/libnixl_capi.so")) }.unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("/nonexistent/libnixl_capi.so"), "{msg}");
        assert!(matches!(err, LoadError::Open { .. }));
    }

    #[test]
    fn a_library_without_the_symbols_is_refused_with_all_names() {
        // libc is always loadable and has none of NIXL's symbols.
        // SAFETY: libc is already loaded in this process; opening it runs nothing new.
        let err = unsafe { Library::open(Path::new("libc.so.6")) }.unwrap_err();
        match err {
            LoadError::MissingSymbols { missing, .. } => {
                assert_eq!(missing.len(), REQUIRED_SYMBOLS.len())
            }
            other => panic!("unexpected {other}"),
        }
    }
}
