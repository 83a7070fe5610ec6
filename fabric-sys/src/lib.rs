//! Raw bindings to libfabric's discovery calls, loaded at run time.
//!
//! The bottom of three layers, as for NIXL and UCX (see kvprobe's
//! `docs/ARCHITECTURE.md`): the bindgen output for `wrapper.h` (`struct fi_info`
//! and the attribute structures it points to, the caps, mode and `mr_mode` bits
//! kvprobe uses, and the types of the five functions), generated from Debian
//! bookworm's libfabric 1.17 headers and committed; [`Library`], which opens one
//! `libfabric.so.1` and resolves its functions; the C macros bindgen cannot see
//! (`FI_VERSION`, `FI_MAJOR`, `FI_MINOR`), re-implemented below with the original
//! `#define` beside each.
//!
//! # Why the functions are resolved at a symbol version
//!
//! libfabric versions its symbols and changes `struct fi_info` (and the
//! attribute structures) from one ABI version to the next, keeping the old
//! entry points as compat symbols: 1.17 exports `fi_getinfo@@FABRIC_1.3`,
//! 2.1 `fi_getinfo@@FABRIC_1.8`, 2.5 `fi_getinfo@@FABRIC_1.9`, each with every
//! older version beside it. A plain `dlsym` returns the default (newest)
//! version, whose structures need not match the headers these bindings come
//! from. So [`Library::open`] resolves `fi_getinfo`, `fi_freeinfo` and
//! `fi_dupinfo` with `dlvsym(.., "FABRIC_1.3")`, the ABI of the 1.17 headers,
//! and `fi_version`, `fi_strerror` (unchanged since) at `FABRIC_1.0`. Every
//! libfabric with the FABRIC_1.3 ABI has them (1.17 as its default, 2.1 and
//! 2.5 as compat symbols), and the layout always matches. The
//! `FABRIC_1.3` compat functions of newer libraries return their own, larger
//! structures cast to the 1.3 ones (libfabric only ever appends fields), which
//! is why reading them through the 1.3 layout is sound.
//!
//! libloading has no `dlvsym`, so the file is opened with libloading (for its
//! error messages and its `dlclose` on drop), and its raw handle is lent to
//! `libc::dlvsym` for the lookups (`into_raw` / `from_raw`). `dlvsym` is a GNU
//! extension: on other C libraries [`Library::open`] returns
//! [`LoadError::NoSymbolVersions`].

#![allow(non_camel_case_types, non_upper_case_globals, non_snake_case)]

use std::ffi::{CString, OsString};
use std::fmt;
use std::path::{Path, PathBuf};

#[allow(
    missing_docs,
    missing_debug_implementations,
    unused_qualifications,
    clippy::all,
    clippy::undocumented_unsafe_blocks,
    clippy::ptr_as_ptr
)]
mod bindings {
    include!("bindings.rs");
}
pub use bindings::*;

/// The symbol version of `struct fi_info` in the headers the bindings come from.
pub const ABI: &str = "FABRIC_1.3";

/// Every function [`Library`] resolves, with the symbol version it asks for.
pub const REQUIRED_SYMBOLS: &[(&str, &str)] = &[
    ("fi_getinfo", ABI),
    ("fi_freeinfo", ABI),
    ("fi_dupinfo", ABI),
    ("fi_version", "FABRIC_1.0"),
    ("fi_strerror", "FABRIC_1.0"),
];

// #define FI_VERSION(major, minor) (((major) << 16) | (minor))
/// `FI_VERSION`: the version number `fi_getinfo` takes and `fi_version` returns.
#[inline]
pub const fn FI_VERSION(major: u32, minor: u32) -> u32 {
    (major << 16) | minor
}

// #define FI_MAJOR(version)	(version >> 16)
/// `FI_MAJOR`.
#[inline]
pub const fn FI_MAJOR(version: u32) -> u32 {
    version >> 16
}

// #define FI_MINOR(version)	(version & 0xFFFF)
/// `FI_MINOR`.
#[inline]
pub const fn FI_MINOR(version: u32) -> u32 {
    version & 0xFFFF
}

/// The plain function-pointer type inside a bindgen `Option<fn>` typedef.
pub trait FnPointer {
    /// The function pointer.
    type Fn: Copy;
}
impl<F: Copy> FnPointer for Option<F> {
    type Fn = F;
}

/// `fi_getinfo` at [`ABI`].
pub type fi_getinfo_fn = <kvprobe_fi_getinfo_t as FnPointer>::Fn;
/// `fi_freeinfo` at [`ABI`].
pub type fi_freeinfo_fn = <kvprobe_fi_freeinfo_t as FnPointer>::Fn;
/// `fi_dupinfo` at [`ABI`] (`fi_allocinfo()` is `fi_dupinfo(NULL)`).
pub type fi_dupinfo_fn = <kvprobe_fi_dupinfo_t as FnPointer>::Fn;
/// `fi_version`.
pub type fi_version_fn = <kvprobe_fi_version_t as FnPointer>::Fn;
/// `fi_strerror` (takes a positive error number).
pub type fi_strerror_fn = <kvprobe_fi_strerror_t as FnPointer>::Fn;

/// Why a libfabric could not be used.
#[derive(Debug)]
pub enum LoadError {
    /// `dlopen` failed (no such file, a missing dependency, a C library too old).
    Open {
        /// The file.
        path: PathBuf,
        /// The loader's message.
        reason: String,
    },
    /// Required versioned symbols are missing: not a libfabric, or one too
    /// old to have the `FABRIC_1.3` ABI.
    MissingSymbols {
        /// The file.
        path: PathBuf,
        /// Every missing symbol, as `name@VERSION`.
        missing: Vec<String>,
    },
    /// This C library has no `dlvsym`, so symbol versions cannot be chosen.
    NoSymbolVersions,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Open { path, reason } => write!(f, "cannot load {}: {reason}", path.display()),
            LoadError::MissingSymbols { path, missing } => write!(
                f,
                "{} is not a usable libfabric (one with the {ABI} ABI is needed): {} missing symbol(s): {}",
                path.display(),
                missing.len(),
                missing.join(", ")
            ),
            LoadError::NoSymbolVersions => {
                write!(f, "libfabric is only loaded with glibc (dlvsym picks the {ABI} functions)")
            }
        }
    }
}

impl std::error::Error for LoadError {}

/// A loaded libfabric and its functions, each at the version in
/// [`REQUIRED_SYMBOLS`].
pub struct Library {
    /// `fi_getinfo@FABRIC_1.3`.
    pub fi_getinfo: fi_getinfo_fn,
    /// `fi_freeinfo@FABRIC_1.3`.
    pub fi_freeinfo: fi_freeinfo_fn,
    /// `fi_dupinfo@FABRIC_1.3`.
    pub fi_dupinfo: fi_dupinfo_fn,
    /// `fi_version@FABRIC_1.0`.
    pub fi_version: fi_version_fn,
    /// `fi_strerror@FABRIC_1.0`.
    pub fi_strerror: fi_strerror_fn,
    /// The file that was loaded.
    pub path: PathBuf,
    /// Keeps the functions above mapped; `dlclose` on drop.
    _lib: libloading::os::unix::Library,
}

impl fmt::Debug for Library {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Library").field("path", &self.path).finish_non_exhaustive()
    }
}

/// `dlvsym(handle, name, version)`, or null.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn versioned_symbol(handle: *mut std::ffi::c_void, name: &str, version: &str) -> *mut std::ffi::c_void {
    let (Ok(name), Ok(version)) = (CString::new(name), CString::new(version)) else {
        return std::ptr::null_mut();
    };
    // SAFETY: `handle` is a live dlopen handle (the caller's libloading
    // Library, not closed while this runs); both strings are NUL-terminated.
    // Only an address is looked up; nothing is called.
    unsafe { libc::dlvsym(handle, name.as_ptr(), version.as_ptr()) }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn versioned_symbol(_handle: *mut std::ffi::c_void, _name: &str, _version: &str) -> *mut std::ffi::c_void {
    std::ptr::null_mut()
}

impl Library {
    /// Opens `path` (`RTLD_NOW | RTLD_LOCAL`; if the same file is already
    /// loaded, as NIXL's LIBFABRIC plugin loads it, the existing copy is
    /// reused) and resolves every function of [`REQUIRED_SYMBOLS`] at its
    /// version, naming all the missing ones if any is.
    ///
    /// # Safety
    /// Loading runs the library's initialisers; the caller must believe `path`
    /// is libfabric.
    pub unsafe fn open(path: &Path) -> Result<Library, LoadError> {
        if !cfg!(all(target_os = "linux", target_env = "gnu")) {
            return Err(LoadError::NoSymbolVersions);
        }
        let flags = libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_LOCAL;
        // SAFETY: the caller accepts running the library's initialisers.
        let lib = unsafe { libloading::os::unix::Library::open(Some(OsString::from(path)), flags) }
            .map_err(|e| LoadError::Open { path: path.to_path_buf(), reason: e.to_string() })?;
        let handle = lib.into_raw();
        let found: Vec<*mut std::ffi::c_void> =
            REQUIRED_SYMBOLS.iter().map(|(name, version)| versioned_symbol(handle, name, version)).collect();
        // SAFETY: `handle` came from `into_raw` just above and is given back
        // exactly once, so the Library owns (and will close) it again.
        let lib = unsafe { libloading::os::unix::Library::from_raw(handle) };
        let missing: Vec<String> = REQUIRED_SYMBOLS
            .iter()
            .zip(&found)
            .filter(|(_, p)| p.is_null())
            .map(|((name, version), _)| format!("{name}@{version}"))
            .collect();
        if !missing.is_empty() {
            return Err(LoadError::MissingSymbols { path: path.to_path_buf(), missing });
        }
        // SAFETY: each pointer below is non-null (checked above) and is
        // the address of the function named in REQUIRED_SYMBOLS at that
        // version, whose C signature is the one bindgen took from the
        // FABRIC_1.3 headers (wrapper.h); a non-null data pointer and a
        // function pointer have the same size and representation on the
        // platforms dlvsym exists on. `lib` keeps the code mapped for as long
        // as the pointers live in the returned Library.
        let api = unsafe {
            Library {
                fi_getinfo: std::mem::transmute::<*mut std::ffi::c_void, fi_getinfo_fn>(found[0]),
                fi_freeinfo: std::mem::transmute::<*mut std::ffi::c_void, fi_freeinfo_fn>(found[1]),
                fi_dupinfo: std::mem::transmute::<*mut std::ffi::c_void, fi_dupinfo_fn>(found[2]),
                fi_version: std::mem::transmute::<*mut std::ffi::c_void, fi_version_fn>(found[3]),
                fi_strerror: std::mem::transmute::<*mut std::ffi::c_void, fi_strerror_fn>(found[4]),
                path: path.to_path_buf(),
                _lib: lib,
            }
        };
        Ok(api)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_macros_match_the_c_definitions() {
        assert_eq!(FI_VERSION(1, 18), 0x0001_0012);
        assert_eq!(FI_MAJOR(FI_VERSION(2, 5)), 2);
        assert_eq!(FI_MINOR(FI_VERSION(2, 5)), 5);
        assert_eq!(FI_VERSION(FI_MAJOR_VERSION, FI_MINOR_VERSION), FI_VERSION(1, 17));
    }

    #[test]
    fn caps_are_the_header_bits() {
        // #define FI_MSG (1ULL << 1) ... FI_CONTEXT (1ULL << 59)
        assert_eq!(FI_MSG, 1 << 1);
        assert_eq!(FI_RMA, 1 << 2);
        assert_eq!(FI_TAGGED, 1 << 3);
        assert_eq!(FI_HMEM, 1 << 47);
        assert_eq!(FI_LOCAL_COMM, 1 << 51);
        assert_eq!(FI_REMOTE_COMM, 1 << 52);
        assert_eq!(FI_CONTEXT, 1 << 59);
        assert_eq!(FI_EP_RDM, 3);
    }

    #[test]
    fn symbol_list_covers_the_function_types() {
        let generated = include_str!("bindings.rs");
        let mut in_bindings: Vec<&str> =
            generated.split("pub type kvprobe_").skip(1).filter_map(|s| s.split("_t ").next()).collect();
        in_bindings.sort_unstable();
        let mut listed: Vec<&str> = REQUIRED_SYMBOLS.iter().map(|(n, _)| *n).collect();
        listed.sort_unstable();
        assert_eq!(in_bindings, listed);
    }

    #[test]
    fn a_library_that_is_not_libfabric_is_refused_with_every_missing_symbol() {
        // SAFETY: libc is already loaded; nothing new runs.
        match unsafe { Library::open(Path::new("libc.so.6")) } {
            Err(LoadError::MissingSymbols { missing, .. }) => {
                assert_eq!(missing.len(), REQUIRED_SYMBOLS.len());
                assert!(missing.contains(&"fi_getinfo@FABRIC_1.3".to_string()), "{missing:?}");
            }
            other => panic!("unexpected {other:?}"),
        }
        // SAFETY: the file does not exist.
        let err = unsafe { Library::open(Path::new("/nonexistent/libfabric.so.1")) }.unwrap_err();
        assert!(matches!(err, LoadError::Open { .. }), "{err}");
        assert!(err.to_string().contains("/nonexistent/libfabric.so.1"), "{err}");
    }
}
