//! UCP contexts, workers, endpoints, memory maps, remote keys and requests.

use std::ffi::{CStr, CString, c_void};
use std::ptr::{self, NonNull};
use std::rc::Rc;
use std::time::{Duration, Instant};

use ucx_sys as sys;

use super::error::{UcxError, record_drop_error, ucx_call};
use super::{Lib, Ucx};
use crate::mem::Region;

/// The UCX settings NIXL's UCX backend applies unless the user set them
/// (`src/plugins/ucx/ucx_utils.cpp`, ../shared/reference/nixl.md 3.3), as
/// (name without `UCX_`, value, first UCX minor version that has it).
/// `RC_GDA_NUM_CHANNELS` (1.21) is left out: its value depends on the GPU
/// setup NIXL detects. The EFA-only ones apply only where EFA devices exist.
pub const NIXL_UCX_DEFAULTS: &[(&str, &str, u32)] = &[
    ("RNDV_THRESH", "inf", 0),
    ("MAX_RMA_RAILS", "2", 0),
    ("IB_PCI_RELAXED_ORDERING", "try", 0),
    ("RC_FENCE", "none", 0),
    ("MAX_HCA_PER_GPU", "auto", 21),
    ("RNDV_PIPELINE_ERROR_HANDLING", "y", 22),
];

/// NIXL's extra defaults on hosts with EFA devices.
pub const NIXL_UCX_EFA_DEFAULTS: &[(&str, &str, u32)] =
    &[("ADDRESS_VERSION", "v2", 0), ("MAX_COMPONENT_MDS", "32", 19)];

/// NIXL's UCX defaults, with the EFA-only ones when `efa`: (name, value,
/// first UCX 1.x minor version); [`crate::peer::UcxSetup::settings_for`]
/// picks those the loaded UCX has.
pub fn nixl_defaults(efa: bool) -> Vec<(String, String, u32)> {
    NIXL_UCX_DEFAULTS
        .iter()
        .chain(if efa { NIXL_UCX_EFA_DEFAULTS } else { &[] })
        .map(|(k, v, m)| (k.to_string(), v.to_string(), *m))
        .collect()
}

pub(crate) struct ContextInner {
    raw: NonNull<sys::ucp_context>,
    ucx: Ucx,
}

impl Drop for ContextInner {
    fn drop(&mut self) {
        // SAFETY: the context was created by ucp_init; workers hold an Rc of
        // this struct, so none is left.
        unsafe { self.ucx.0.raw.api.ucp_cleanup(self.raw.as_ptr()) };
    }
}

/// A UCP context with the settings kvprobe applied.
pub struct Context {
    inner: Rc<ContextInner>,
    /// Settings applied on top of the environment (name, value).
    pub applied: Vec<(String, String)>,
    /// Settings that could not be applied (name, reason).
    pub not_applied: Vec<(String, String)>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").field("applied", &self.applied).finish_non_exhaustive()
    }
}

impl Context {
    /// Creates a context for RMA and active messages named `name` (the name
    /// UCX prints in its protocol tables). `settings` are applied with
    /// `ucp_config_modify` unless `UCX_<name>` is set in the environment.
    pub fn new(ucx: &Ucx, name: &str, settings: &[(String, String)]) -> Result<Context, UcxError> {
        let lib = &ucx.0;
        let mut config: *mut sys::ucp_config_t = ptr::null_mut();
        // SAFETY: null env prefix and file name mean the defaults; valid out-pointer.
        unsafe { ucx_call!(lib, ucp_config_read(ptr::null(), ptr::null(), &mut config)) }?;
        let config = ConfigGuard { raw: config, lib };
        let mut applied = Vec::new();
        let mut not_applied = Vec::new();
        for (k, v) in settings {
            if std::env::var_os(format!("UCX_{k}")).is_some() {
                not_applied.push((k.clone(), "set in the environment; the user's value stands".into()));
                continue;
            }
            let (ck, cv) = (cstr(k)?, cstr(v)?);
            // SAFETY: live config and valid C strings (copied by UCX).
            match unsafe { ucx_call!(lib, ucp_config_modify(config.raw, ck.as_ptr(), cv.as_ptr())) } {
                Ok(()) => applied.push((k.clone(), v.clone())),
                Err(e) => not_applied.push((k.clone(), e.to_string())),
            }
        }
        let cname = cstr(name)?;
        let params = sys::ucp_params_t {
            field_mask: (sys::UCP_PARAM_FIELD_FEATURES | sys::UCP_PARAM_FIELD_NAME) as u64,
            features: (sys::UCP_FEATURE_RMA | sys::UCP_FEATURE_AM) as u64,
            name: cname.as_ptr(),
            ..Default::default()
        };
        let mut ctx: sys::ucp_context_h = ptr::null_mut();
        // SAFETY: params and config are valid for the call (UCX copies the name).
        unsafe {
            ucx_call!(lib, ucp_init_version(sys::UCP_API_MAJOR, sys::UCP_API_MINOR, &params, config.raw, &mut ctx))
        }?;
        let raw = NonNull::new(ctx).ok_or(UcxError::NullHandle("ucp_init_version"))?;
        Ok(Context { inner: Rc::new(ContextInner { raw, ucx: ucx.clone() }), applied, not_applied })
    }

    /// UCP's own description of the context (components, memory domains,
    /// transport resources), as `ucp_context_print_info` writes it.
    pub fn print_info(&self) -> String {
        capture(|f| {
            // SAFETY: live context and an open FILE*.
            unsafe { self.inner.ucx.0.raw.api.ucp_context_print_info(self.inner.raw.as_ptr(), f.cast()) }
        })
    }
}

struct ConfigGuard<'a> {
    raw: *mut sys::ucp_config_t,
    lib: &'a Lib,
}

impl Drop for ConfigGuard<'_> {
    fn drop(&mut self) {
        // SAFETY: read by ucp_config_read, released once.
        unsafe { self.lib.raw.api.ucp_config_release(self.raw) };
    }
}

fn cstr(s: &str) -> Result<CString, UcxError> {
    CString::new(s).map_err(|_| UcxError::Invalid(format!("NUL byte in {s:?}")))
}

/// Runs `f` with a memory-backed `FILE*` and returns what it wrote.
fn capture(f: impl FnOnce(*mut libc::FILE)) -> String {
    let mut buf: *mut libc::c_char = ptr::null_mut();
    let mut len: libc::size_t = 0;
    // SAFETY: open_memstream allocates buf/len, updated on fflush/fclose.
    let file = unsafe { libc::open_memstream(&mut buf, &mut len) };
    if file.is_null() {
        return String::new();
    }
    f(file);
    // SAFETY: closes the stream opened above; buf then holds len bytes.
    unsafe { libc::fclose(file) };
    if buf.is_null() {
        return String::new();
    }
    // SAFETY: buf holds len valid bytes (open_memstream's contract).
    let s = String::from_utf8_lossy(unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), len) }).into_owned();
    // SAFETY: allocated by open_memstream with malloc.
    unsafe { libc::free(buf.cast()) };
    s
}

pub(crate) struct WorkerInner {
    raw: NonNull<sys::ucp_worker>,
    ctx: Rc<ContextInner>,
}

impl WorkerInner {
    fn lib(&self) -> &Lib {
        &self.ctx.ucx.0
    }
}

impl Drop for WorkerInner {
    fn drop(&mut self) {
        // SAFETY: created by ucp_worker_create; endpoints, maps and requests hold
        // an Rc of this struct, so none is left.
        unsafe { self.lib().raw.api.ucp_worker_destroy(self.raw.as_ptr()) };
    }
}

/// A UCP worker (single-threaded).
#[derive(Clone)]
pub struct Worker {
    inner: Rc<WorkerInner>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker").finish_non_exhaustive()
    }
}

impl Worker {
    /// Creates a worker on `ctx`.
    pub fn new(ctx: &Context) -> Result<Worker, UcxError> {
        let lib = &ctx.inner.ucx.0;
        let params = sys::ucp_worker_params_t {
            field_mask: sys::UCP_WORKER_PARAM_FIELD_THREAD_MODE as u64,
            thread_mode: sys::UCS_THREAD_MODE_SINGLE,
            ..Default::default()
        };
        let mut w: sys::ucp_worker_h = ptr::null_mut();
        // SAFETY: live context, valid params and out-pointer.
        unsafe { ucx_call!(lib, ucp_worker_create(ctx.inner.raw.as_ptr(), &params, &mut w)) }?;
        let raw = NonNull::new(w).ok_or(UcxError::NullHandle("ucp_worker_create"))?;
        Ok(Worker { inner: Rc::new(WorkerInner { raw, ctx: Rc::clone(&ctx.inner) }) })
    }

    /// This worker's address, for a peer's `ucp_ep_create`.
    pub fn address(&self) -> Result<Vec<u8>, UcxError> {
        let lib = self.inner.lib();
        let mut addr: *mut sys::ucp_address_t = ptr::null_mut();
        let mut len: usize = 0;
        // SAFETY: live worker, valid out-pointers.
        unsafe { ucx_call!(lib, ucp_worker_get_address(self.inner.raw.as_ptr(), &mut addr, &mut len)) }?;
        if addr.is_null() {
            return Err(UcxError::NullHandle("ucp_worker_get_address"));
        }
        // SAFETY: UCX returned len bytes at addr; copied, then released once.
        let v = unsafe { std::slice::from_raw_parts(addr.cast::<u8>(), len) }.to_vec();
        // SAFETY: as above.
        unsafe { lib.raw.api.ucp_worker_release_address(self.inner.raw.as_ptr(), addr) };
        Ok(v)
    }

    /// Progresses communication once; returns the number of events.
    #[inline]
    pub fn progress(&self) -> u32 {
        // SAFETY: live worker, used from its one thread.
        unsafe { self.inner.lib().raw.api.ucp_worker_progress(self.inner.raw.as_ptr()) }
    }

    /// UCP's description of the worker.
    pub fn print_info(&self) -> String {
        capture(|f| {
            // SAFETY: live worker and an open FILE*.
            unsafe { self.inner.lib().raw.api.ucp_worker_print_info(self.inner.raw.as_ptr(), f.cast()) }
        })
    }
}

pub(crate) struct EndpointInner {
    raw: NonNull<sys::ucp_ep>,
    worker: Rc<WorkerInner>,
}

impl Drop for EndpointInner {
    fn drop(&mut self) {
        let lib = self.worker.lib();
        // Abortive close: a graceful flush could wait forever on a dead peer.
        let param = sys::ucp_request_param_t {
            op_attr_mask: sys::UCP_OP_ATTR_FIELD_FLAGS,
            flags: sys::UCP_EP_CLOSE_FLAG_FORCE,
            ..Default::default()
        };
        // SAFETY: live endpoint and worker; remote keys and requests hold an Rc
        // of this struct, so none is left.
        let p = unsafe { lib.raw.api.ucp_ep_close_nbx(self.raw.as_ptr(), &param) };
        if sys::UCS_PTR_IS_PTR(p) {
            let start = Instant::now();
            // SAFETY: p is a live request of this worker until freed below.
            while unsafe { lib.raw.api.ucp_request_check_status(p) } == sys::UCS_INPROGRESS
                && start.elapsed() < Duration::from_secs(2)
            {
                // SAFETY: live worker on its own thread.
                unsafe { lib.raw.api.ucp_worker_progress(self.worker.raw.as_ptr()) };
            }
            // SAFETY: frees the close request (released later by UCX if still running).
            unsafe { lib.raw.api.ucp_request_free(p) };
        } else if sys::UCS_PTR_IS_ERR(p) {
            let code = sys::UCS_PTR_STATUS(p);
            record_drop_error(
                "close endpoint",
                &UcxError::Call { call: "ucp_ep_close_nbx", code: i32::from(code), message: lib.status_string(code) },
            );
        }
    }
}

/// A connection to a remote worker.
#[derive(Clone)]
pub struct Endpoint {
    inner: Rc<EndpointInner>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint").finish_non_exhaustive()
    }
}

/// A transport and device an endpoint uses (`ucp_ep_query`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Lane {
    /// Transport (`cma`, `tcp`, `rc_mlx5`, `srd`, `cuda_ipc`...).
    pub transport: String,
    /// Device (`memory`, `lo`, `mlx5_0:1`...).
    pub device: String,
}

impl Endpoint {
    /// Connects to the worker whose address is `remote`. `peer_errors` asks
    /// for UCP_ERR_HANDLING_MODE_PEER (NIXL's default).
    pub fn connect(worker: &Worker, remote: &[u8], peer_errors: bool) -> Result<Endpoint, UcxError> {
        if remote.is_empty() {
            return Err(UcxError::Invalid("empty remote worker address".into()));
        }
        let lib = worker.inner.lib();
        let params = sys::ucp_ep_params_t {
            field_mask: (sys::UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | sys::UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE) as u64,
            address: remote.as_ptr().cast(),
            err_mode: if peer_errors { sys::UCP_ERR_HANDLING_MODE_PEER } else { sys::UCP_ERR_HANDLING_MODE_NONE },
            ..Default::default()
        };
        let mut ep: sys::ucp_ep_h = ptr::null_mut();
        // SAFETY: live worker; params point at `remote`, valid for the call
        // (UCX unpacks the address during it).
        unsafe { ucx_call!(lib, ucp_ep_create(worker.inner.raw.as_ptr(), &params, &mut ep)) }?;
        let raw = NonNull::new(ep).ok_or(UcxError::NullHandle("ucp_ep_create"))?;
        Ok(Endpoint { inner: Rc::new(EndpointInner { raw, worker: Rc::clone(&worker.inner) }) })
    }

    /// The transports and devices of the endpoint's lanes.
    pub fn lanes(&self) -> Result<Vec<Lane>, UcxError> {
        let lib = self.inner.worker.lib();
        let mut entries =
            vec![sys::ucp_transport_entry_t { transport_name: ptr::null(), device_name: ptr::null() }; 32];
        let mut attr =
            sys::ucp_ep_attr_t { field_mask: sys::UCP_EP_ATTR_FIELD_TRANSPORTS as u64, ..Default::default() };
        attr.transports.entries = entries.as_mut_ptr();
        attr.transports.num_entries = entries.len() as u32;
        attr.transports.entry_size = std::mem::size_of::<sys::ucp_transport_entry_t>();
        // SAFETY: live endpoint; entries has num_entries slots of entry_size bytes.
        unsafe { ucx_call!(lib, ucp_ep_query(self.inner.raw.as_ptr(), &mut attr)) }?;
        let n = (attr.transports.num_entries as usize).min(entries.len());
        let mut out = Vec::new();
        for e in &entries[..n] {
            // SAFETY: UCX filled these with strings valid while the endpoint lives.
            let (t, d) = unsafe { (opt_cstr(e.transport_name), opt_cstr(e.device_name)) };
            let lane = Lane { transport: t, device: d };
            if !out.contains(&lane) {
                out.push(lane);
            }
        }
        Ok(out)
    }

    /// UCP's description of the endpoint's lanes and protocol thresholds.
    pub fn print_info(&self) -> String {
        capture(|f| {
            // SAFETY: live endpoint and an open FILE*.
            unsafe { self.inner.worker.lib().raw.api.ucp_ep_print_info(self.inner.raw.as_ptr(), f.cast()) }
        })
    }

    /// Reads `len` bytes at `remote_addr` (described by `rkey`) into `local`
    /// at `offset`. `force_request` makes UCX return a request even when the
    /// operation completes at once, so that it can be queried.
    pub fn get(
        &self,
        local: &MemHandle,
        offset: usize,
        len: usize,
        remote_addr: u64,
        rkey: &RemoteKey,
        force_request: bool,
    ) -> Result<Option<Request>, UcxError> {
        self.rma(true, local, offset, len, remote_addr, rkey, force_request)
    }

    /// Writes `len` bytes of `local` at `offset` to `remote_addr`. Local
    /// completion only: [`Endpoint::flush`] for remote completion.
    pub fn put(
        &self,
        local: &MemHandle,
        offset: usize,
        len: usize,
        remote_addr: u64,
        rkey: &RemoteKey,
        force_request: bool,
    ) -> Result<Option<Request>, UcxError> {
        self.rma(false, local, offset, len, remote_addr, rkey, force_request)
    }

    #[allow(clippy::too_many_arguments)]
    fn rma(
        &self,
        get: bool,
        local: &MemHandle,
        offset: usize,
        len: usize,
        remote_addr: u64,
        rkey: &RemoteKey,
        force_request: bool,
    ) -> Result<Option<Request>, UcxError> {
        let end = offset.checked_add(len).filter(|&e| e <= local.inner.len && len > 0);
        if end.is_none() {
            return Err(UcxError::Invalid(format!("{offset}+{len} is outside the {}-byte local map", local.inner.len)));
        }
        if !Rc::ptr_eq(&rkey.inner.ep, &self.inner) || !Rc::ptr_eq(&local.inner.ctx, &self.inner.worker.ctx) {
            return Err(UcxError::Invalid(
                "the remote key or memory map belongs to another endpoint or context".into(),
            ));
        }
        let lib = self.inner.worker.lib();
        let param = sys::ucp_request_param_t {
            op_attr_mask: sys::UCP_OP_ATTR_FIELD_MEMH
                | if force_request { sys::UCP_OP_ATTR_FLAG_NO_IMM_CMPL } else { 0 },
            memh: local.inner.raw.as_ptr(),
            ..Default::default()
        };
        let buf = (local.inner.addr + offset) as *mut c_void;
        // SAFETY: live endpoint and rkey; buf..buf+len lies in the mapped local
        // memory (checked), which the returned Request keeps mapped and alive.
        let p = unsafe {
            if get {
                lib.raw.api.ucp_get_nbx(self.inner.raw.as_ptr(), buf, len, remote_addr, rkey.inner.raw.as_ptr(), &param)
            } else {
                lib.raw.api.ucp_put_nbx(self.inner.raw.as_ptr(), buf, len, remote_addr, rkey.inner.raw.as_ptr(), &param)
            }
        };
        self.request_from(p, if get { "ucp_get_nbx" } else { "ucp_put_nbx" }, Some(local.clone()))
    }

    /// Flushes the endpoint: every put issued before is complete at the target
    /// once this finishes.
    pub fn flush(&self) -> Result<Option<Request>, UcxError> {
        let param = sys::ucp_request_param_t::default();
        // SAFETY: live endpoint, empty params.
        let p = unsafe { self.inner.worker.lib().raw.api.ucp_ep_flush_nbx(self.inner.raw.as_ptr(), &param) };
        self.request_from(p, "ucp_ep_flush_nbx", None)
    }

    fn request_from(
        &self,
        p: sys::ucs_status_ptr_t,
        call: &'static str,
        keep: Option<MemHandle>,
    ) -> Result<Option<Request>, UcxError> {
        let lib = self.inner.worker.lib();
        if sys::UCS_PTR_IS_ERR(p) {
            let code = sys::UCS_PTR_STATUS(p);
            return Err(UcxError::Call { call, code: i32::from(code), message: lib.status_string(code) });
        }
        match NonNull::new(p) {
            None => Ok(None), // completed immediately
            Some(raw) => Ok(Some(Request { raw, ep: Rc::clone(&self.inner), _keep: keep, call })),
        }
    }
}

/// # Safety
/// `p` must be null or a valid C string.
unsafe fn opt_cstr(p: *const std::os::raw::c_char) -> String {
    if p.is_null() {
        String::new()
    } else {
        // SAFETY: caller guarantees a valid C string.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }
}

/// An outstanding UCP operation; freed on drop (UCX releases it when it ends).
pub struct Request {
    raw: NonNull<c_void>,
    ep: Rc<EndpointInner>,
    _keep: Option<MemHandle>,
    call: &'static str,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request").field("call", &self.call).finish_non_exhaustive()
    }
}

impl Request {
    /// Whether the request has ended (successfully: an error is returned);
    /// does not progress anything.
    pub fn is_done(&self) -> Result<bool, UcxError> {
        let lib = self.ep.worker.lib();
        // SAFETY: live request of this worker.
        let st = unsafe { lib.raw.api.ucp_request_check_status(self.raw.as_ptr()) };
        if st == sys::UCS_INPROGRESS { Ok(false) } else { lib.check(self.call, st).map(|()| true) }
    }

    /// Progresses the worker until the request ends, or `limit` after `start`.
    #[inline]
    pub fn wait_since(&self, start: Instant, limit: Duration) -> Result<(), UcxError> {
        let lib = self.ep.worker.lib();
        let mut spins: u32 = 0;
        loop {
            // SAFETY: live request of this worker.
            let st = unsafe { lib.raw.api.ucp_request_check_status(self.raw.as_ptr()) };
            if st != sys::UCS_INPROGRESS {
                return lib.check(self.call, st);
            }
            // SAFETY: live worker on its own thread.
            unsafe { lib.raw.api.ucp_worker_progress(self.ep.worker.raw.as_ptr()) };
            spins = spins.wrapping_add(1);
            if spins % 4096 == 0 && start.elapsed() > limit {
                return Err(UcxError::Timeout { what: self.call.to_string(), limit });
            }
        }
    }

    /// UCX's description of how it carries this request: the protocol and
    /// lane (`ucp_request_query`, the string `ucx_perftest -X` prints).
    pub fn info(&self) -> Result<String, UcxError> {
        let lib = self.ep.worker.lib();
        let mut buf = vec![0u8; 1024];
        let mut attr = sys::ucp_request_attr_t {
            field_mask: (sys::UCP_REQUEST_ATTR_FIELD_INFO_STRING | sys::UCP_REQUEST_ATTR_FIELD_INFO_STRING_SIZE) as u64,
            debug_string: buf.as_mut_ptr().cast(),
            debug_string_size: buf.len(),
            ..Default::default()
        };
        // SAFETY: live request; debug_string has debug_string_size bytes.
        unsafe { ucx_call!(lib, ucp_request_query(self.raw.as_ptr(), &mut attr)) }?;
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        Ok(String::from_utf8_lossy(&buf[..end]).into_owned())
    }
}

impl Drop for Request {
    fn drop(&mut self) {
        // SAFETY: a request this endpoint's worker returned, freed once; UCX
        // releases a still-running request when it ends.
        unsafe { self.ep.worker.lib().raw.api.ucp_request_free(self.raw.as_ptr()) };
    }
}

pub(crate) struct MemInner {
    raw: NonNull<sys::ucp_mem>,
    ctx: Rc<ContextInner>,
    addr: usize,
    len: usize,
    _keep: Rc<dyn std::any::Any>,
}

impl Drop for MemInner {
    fn drop(&mut self) {
        // SAFETY: mapped by ucp_mem_map on this context; requests that use it
        // hold an Rc of this struct.
        let code = unsafe { self.ctx.ucx.0.raw.api.ucp_mem_unmap(self.ctx.raw.as_ptr(), self.raw.as_ptr()) };
        if let Err(e) = self.ctx.ucx.0.check("ucp_mem_unmap", code) {
            record_drop_error("unmap memory", &e);
        }
    }
}

/// Memory registered with a context (`ucp_mem_map`), keeping its buffer alive.
#[derive(Clone)]
pub struct MemHandle {
    pub(crate) inner: Rc<MemInner>,
}

impl std::fmt::Debug for MemHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemHandle").field("addr", &self.inner.addr).field("len", &self.inner.len).finish()
    }
}

impl MemHandle {
    /// Maps all of `buf` (host or GPU memory, as its `kind` says) into `ctx`.
    pub fn map<T: Region + 'static>(ctx: &Context, buf: Rc<T>) -> Result<MemHandle, UcxError> {
        let lib = &ctx.inner.ucx.0;
        let (addr, len) = (buf.addr(), buf.len());
        let params = sys::ucp_mem_map_params_t {
            field_mask: (sys::UCP_MEM_MAP_PARAM_FIELD_ADDRESS
                | sys::UCP_MEM_MAP_PARAM_FIELD_LENGTH
                | sys::UCP_MEM_MAP_PARAM_FIELD_MEMORY_TYPE) as u64,
            address: addr as *mut c_void,
            length: len,
            memory_type: match buf.kind() {
                crate::mem::MemKind::Dram => sys::UCS_MEMORY_TYPE_HOST,
                crate::mem::MemKind::Vram => sys::UCS_MEMORY_TYPE_CUDA,
            },
            ..Default::default()
        };
        let mut m: sys::ucp_mem_h = ptr::null_mut();
        // SAFETY: addr..addr+len is valid memory owned by `buf` (Region's
        // contract), which the handle keeps alive.
        unsafe { ucx_call!(lib, ucp_mem_map(ctx.inner.raw.as_ptr(), &params, &mut m)) }.map_err(|e| {
            if buf.kind() == crate::mem::MemKind::Vram {
                UcxError::Invalid(format!(
                    "{e}: this UCX cannot map GPU memory ({}): its CUDA module (ucx/libuct_cuda.so) did not load, usually because libcudart or libcuda is not found; `kvprobe doctor` lists the modules that load (UCX_LOG_LEVEL=debug says why one does not)",
                    lib.raw.path.display()
                ))
            } else {
                e
            }
        })?;
        let raw = NonNull::new(m).ok_or(UcxError::NullHandle("ucp_mem_map"))?;
        Ok(MemHandle { inner: Rc::new(MemInner { raw, ctx: Rc::clone(&ctx.inner), addr, len, _keep: buf }) })
    }

    /// The packed remote key a peer needs to access this memory.
    pub fn pack_rkey(&self) -> Result<Vec<u8>, UcxError> {
        let lib = &self.inner.ctx.ucx.0;
        let mut p: *mut c_void = ptr::null_mut();
        let mut n: usize = 0;
        // SAFETY: live context and map, valid out-pointers.
        unsafe { ucx_call!(lib, ucp_rkey_pack(self.inner.ctx.raw.as_ptr(), self.inner.raw.as_ptr(), &mut p, &mut n)) }?;
        if p.is_null() {
            return Err(UcxError::NullHandle("ucp_rkey_pack"));
        }
        // SAFETY: UCX returned n bytes at p; copied, then released once.
        let v = unsafe { std::slice::from_raw_parts(p.cast::<u8>(), n) }.to_vec();
        // SAFETY: as above.
        unsafe { lib.raw.api.ucp_rkey_buffer_release(p) };
        Ok(v)
    }

    /// Start address of the mapped memory.
    pub fn addr(&self) -> usize {
        self.inner.addr
    }
}

pub(crate) struct RkeyInner {
    raw: NonNull<sys::ucp_rkey>,
    ep: Rc<EndpointInner>,
}

impl Drop for RkeyInner {
    fn drop(&mut self) {
        // SAFETY: unpacked on this endpoint, destroyed once before it closes.
        unsafe { self.ep.worker.lib().raw.api.ucp_rkey_destroy(self.raw.as_ptr()) };
    }
}

/// A peer's remote key, unpacked on an endpoint (clones share it).
#[derive(Clone)]
pub struct RemoteKey {
    inner: Rc<RkeyInner>,
}

impl std::fmt::Debug for RemoteKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteKey").finish_non_exhaustive()
    }
}

impl RemoteKey {
    /// Unpacks `packed` (from the peer's [`MemHandle::pack_rkey`]) for `ep`.
    pub fn unpack(ep: &Endpoint, packed: &[u8]) -> Result<RemoteKey, UcxError> {
        if packed.is_empty() {
            return Err(UcxError::Invalid("empty remote key".into()));
        }
        let lib = ep.inner.worker.lib();
        let mut k: sys::ucp_rkey_h = ptr::null_mut();
        // SAFETY: live endpoint; packed is a buffer UCX reads during the call.
        unsafe { ucx_call!(lib, ucp_ep_rkey_unpack(ep.inner.raw.as_ptr(), packed.as_ptr().cast(), &mut k)) }?;
        let raw = NonNull::new(k).ok_or(UcxError::NullHandle("ucp_ep_rkey_unpack"))?;
        Ok(RemoteKey { inner: Rc::new(RkeyInner { raw, ep: Rc::clone(&ep.inner) }) })
    }
}
