//! Safe layer over UCX (UCP for transfers, UCT queries for the device view).
//!
//! Same rules as the NIXL layer: every call goes through [`error::ucx_call`];
//! handles are `NonNull`; children hold their parent (`Rc`), so a worker
//! outlives its endpoints and memory maps and the context outlives its
//! workers; `Drop` never panics. The objects are `!Send`: workers are created
//! single-threaded and belong to one thread.
//!
//! kvprobe calls the bindgen-generated methods of `ucx_sys::UcxApi`. They
//! `expect()` a symbol internally, which cannot fire: every symbol called is in
//! `ucx_sys::REQUIRED_SYMBOLS`, checked when the library is loaded.

pub mod core;
pub mod error;
pub mod info;

use std::ffi::CStr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ucx_sys as sys;

pub use self::core::{Context, Endpoint, MemHandle, RemoteKey, Request, Worker};
pub use error::UcxError;

/// A loaded libucp.
#[derive(Debug)]
pub struct Lib {
    pub(crate) raw: sys::Library,
}

impl Lib {
    /// UCX's description of a status code.
    pub(crate) fn status_string(&self, code: sys::ucs_status_t) -> String {
        // SAFETY: ucs_status_string takes any value and returns a static string.
        let p = unsafe { self.raw.api.ucs_status_string(code) };
        if p.is_null() {
            return format!("status {code}");
        }
        // SAFETY: non-null static C string.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }

    /// Turns a status into a `Result`.
    pub(crate) fn check(&self, call: &'static str, code: sys::ucs_status_t) -> Result<(), UcxError> {
        if code == sys::UCS_OK {
            Ok(())
        } else {
            Err(UcxError::Call { call, code: i32::from(code), message: self.status_string(code) })
        }
    }
}

/// A handle to the loaded UCX, shared by everything made from it.
#[derive(Clone, Debug)]
pub struct Ucx(pub(crate) Arc<Lib>);

impl Ucx {
    /// Loads libucp from `path`, refusing to add a second UCX build to a
    /// process that already has one mapped (NIXL's, typically).
    pub fn open(path: &Path) -> Result<Ucx, UcxError> {
        let wanted = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        if let Some(loaded) = mapped_libucp() {
            if loaded != wanted {
                return Err(UcxError::TwoBuilds {
                    loaded: loaded.display().to_string(),
                    wanted: wanted.display().to_string(),
                });
            }
        }
        // SAFETY: the path was chosen as UCX's libucp (locate step or the user).
        let raw = unsafe { sys::Library::open(&wanted) }?;
        Ok(Ucx(Arc::new(Lib { raw })))
    }

    /// The file loaded.
    pub fn path(&self) -> &PathBuf {
        &self.0.raw.path
    }

    /// UCX's version (`ucp_get_version`), e.g. "1.23.0".
    pub fn version(&self) -> String {
        let (mut a, mut b, mut c) = (0u32, 0u32, 0u32);
        // SAFETY: three valid out-pointers.
        unsafe { self.0.raw.api.ucp_get_version(&mut a, &mut b, &mut c) };
        format!("{a}.{b}.{c}")
    }

    /// `(major, minor)` of the loaded UCX.
    pub fn version_tuple(&self) -> (u32, u32) {
        let (mut a, mut b, mut c) = (0u32, 0u32, 0u32);
        // SAFETY: three valid out-pointers.
        unsafe { self.0.raw.api.ucp_get_version(&mut a, &mut b, &mut c) };
        (a, b)
    }
}

/// The `./configure` flags a UCX build was made with, as libucp embeds them
/// (UCX prints them at UCX_LOG_LEVEL=debug as "Configured with: ..."; no API
/// returns them, so they are read from the file: the longest NUL-terminated
/// string whose every word is a `--option`).
pub fn configure_flags(libucp: &Path) -> Option<String> {
    let bytes = std::fs::read(libucp).ok()?;
    configure_flags_in(&bytes)
}

/// [`configure_flags`] on the bytes of a file.
pub fn configure_flags_in(bytes: &[u8]) -> Option<String> {
    bytes
        .split(|&b| b == 0)
        .filter(|s| s.len() > 16 && s.starts_with(b"--") && s.iter().all(|&b| (0x20..0x7f).contains(&b)))
        .filter_map(|s| std::str::from_utf8(s).ok())
        .filter(|s| {
            let words: Vec<&str> = s.split_whitespace().collect();
            words.len() >= 3 && words.iter().all(|w| w.starts_with("--"))
        })
        .max_by_key(|s| s.len())
        .map(str::to_string)
}

/// The libucp already mapped into this process, if any (from /proc/self/maps).
pub fn mapped_libucp() -> Option<PathBuf> {
    crate::elf::mapped(is_libucp)
}

/// Whether a file name is a libucp (`libucp.so.0`, `libucp-b39b3ed9.so.0.0.0`).
pub fn is_libucp(path: &str) -> bool {
    Path::new(path)
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| (n.starts_with("libucp.so") || n.starts_with("libucp-")) && n.contains(".so"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configure_flags_are_found_among_other_strings() {
        let blob = b"\x7fELF\0Configured with: %s\0--x\0--enable-mt --with-efa --without-dc\0--help me\0-- a b\0";
        assert_eq!(configure_flags_in(blob).as_deref(), Some("--enable-mt --with-efa --without-dc"));
        assert_eq!(configure_flags_in(b"nothing here\0"), None);
    }

    #[test]
    fn libucp_names() {
        assert!(is_libucp("/a/libucp.so.0"));
        assert!(is_libucp("/a/nixl_cu12.libs/libucp-b39b3ed9.so.0.0.0"));
        assert!(!is_libucp("/a/libucs.so.0"));
        assert!(!is_libucp("/a/libucp_helper.txt"));
    }
}
