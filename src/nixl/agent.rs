//! Agents, backends and plugin parameters.

use std::collections::BTreeMap;
use std::ffi::c_void;
use std::ptr::{self, NonNull};
use std::rc::Rc;

use nixl_sys as sys;
use serde::{Deserialize, Serialize};

use super::error::{NixlError, nixl_call, record_drop_error};
use super::{MemType, Nixl, copy_cstr, cstring};

/// NIXL's thread-safety mode for an agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ThreadSync {
    /// No locking: one thread uses the agent (kvprobe's mode).
    #[default]
    None,
    /// Every call takes a lock.
    Strict,
    /// Reader/writer locking.
    Rw,
}

/// Agent settings (NIXL's `nixlAgentConfig`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentConfig {
    /// NIXL's progress thread (on in NIXL's Python API and in vLLM).
    pub progress_thread: bool,
    /// NIXL's metadata listen thread.
    pub listen_thread: bool,
    /// Port of the listen thread.
    pub listen_port: u16,
    /// Locking mode.
    pub thread_sync: ThreadSync,
    /// Progress thread delay, microseconds.
    pub pthr_delay_us: u64,
    /// Listen thread delay, microseconds.
    pub lthr_delay_us: u64,
    /// Record per-request telemetry (vLLM turns this on).
    pub capture_telemetry: bool,
}

impl Default for AgentConfig {
    /// The settings of NIXL's Python `nixl_agent_config()` with telemetry on,
    /// which is what vLLM's NixlConnector creates.
    fn default() -> Self {
        AgentConfig {
            progress_thread: true,
            listen_thread: false,
            listen_port: 0,
            thread_sync: ThreadSync::None,
            pthr_delay_us: 0,
            lthr_delay_us: 100_000,
            capture_telemetry: true,
        }
    }
}

pub(crate) struct AgentInner {
    pub(crate) raw: NonNull<sys::nixl_capi_agent_s>,
    pub(crate) nixl: Nixl,
    pub(crate) name: String,
}

impl AgentInner {
    pub(crate) fn ptr(&self) -> sys::nixl_capi_agent_t {
        self.raw.as_ptr()
    }
}

impl Drop for AgentInner {
    fn drop(&mut self) {
        // SAFETY: raw is the live agent created in Agent::new; every child holds
        // an Rc to this struct, so none is left when this runs.
        let r = unsafe { nixl_call!(self.nixl.0, nixl_capi_destroy_agent(self.raw.as_ptr())) };
        if let Err(e) = r {
            record_drop_error("destroy agent", &e);
        }
    }
}

/// A NIXL agent: the unit that owns backends, registrations and transfers.
/// Clones are handles to the same agent.
#[derive(Clone)]
pub struct Agent {
    pub(crate) inner: Rc<AgentInner>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent").field("name", &self.inner.name).finish_non_exhaustive()
    }
}

/// What a plugin or backend supports and its parameters.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PluginInfo {
    /// Memory types it can move.
    pub mem_types: Vec<MemType>,
    /// Parameters with their (default or effective) values.
    pub params: BTreeMap<String, String>,
}

impl Agent {
    /// Creates an agent.
    pub fn new(nixl: &Nixl, name: &str, cfg: &AgentConfig) -> Result<Agent, NixlError> {
        let cname = cstring("nixl_capi_create_configured_agent", name)?;
        // The listen thread works on the agent concurrently with its owner, so
        // NIXL's Python API locks strictly whenever it is on; do the same.
        let mode =
            if cfg.listen_thread && cfg.thread_sync == ThreadSync::None { ThreadSync::Strict } else { cfg.thread_sync };
        let sync = match mode {
            ThreadSync::None => sys::NIXL_CAPI_THREAD_SYNC_NONE,
            ThreadSync::Strict => sys::NIXL_CAPI_THREAD_SYNC_STRICT,
            ThreadSync::Rw => sys::NIXL_CAPI_THREAD_SYNC_RW,
        };
        let mut raw: sys::nixl_capi_agent_t = ptr::null_mut();
        match nixl.config_abi() {
            sys::ConfigAbi::IntPort => {
                let c = sys::nixl_capi_agent_config_t {
                    enable_prog_thread: cfg.progress_thread,
                    enable_listen_thread: cfg.listen_thread,
                    listen_port: i32::from(cfg.listen_port),
                    thread_sync: sync,
                    num_workers: 0, // read by no release; 0 keeps both layouts alike (nixl_sys::ConfigAbi)
                    pthr_delay_us: cfg.pthr_delay_us,
                    lthr_delay_us: cfg.lthr_delay_us,
                    capture_telemetry: cfg.capture_telemetry,
                };
                // SAFETY: valid C string, a config laid out as this library
                // expects (ConfigAbi), and a valid out-pointer.
                unsafe { nixl_call!(nixl.0, nixl_capi_create_configured_agent(cname.as_ptr(), &c, &mut raw)) }?;
            }
            sys::ConfigAbi::U16Port => {
                let c = sys::nixl_capi_agent_config_u16port_t {
                    enable_prog_thread: cfg.progress_thread,
                    enable_listen_thread: cfg.listen_thread,
                    listen_port: cfg.listen_port,
                    thread_sync: sync,
                    num_workers: 0, // read by no release; 0 keeps both layouts alike (nixl_sys::ConfigAbi)
                    pthr_delay_us: cfg.pthr_delay_us,
                    lthr_delay_us: cfg.lthr_delay_us,
                    capture_telemetry: cfg.capture_telemetry,
                };
                // SAFETY: as above; the pointer cast only renames the type, the
                // library reads this layout (see nixl_sys::ConfigAbi).
                unsafe {
                    nixl_call!(
                        nixl.0,
                        nixl_capi_create_configured_agent(
                            cname.as_ptr(),
                            (&raw const c).cast::<sys::nixl_capi_agent_config_t>(),
                            &mut raw
                        )
                    )
                }?;
            }
        }
        let raw = NonNull::new(raw).ok_or(NixlError::NullHandle("nixl_capi_create_configured_agent"))?;
        Ok(Agent { inner: Rc::new(AgentInner { raw, nixl: nixl.clone(), name: name.to_string() }) })
    }

    /// The agent's name, which peers use to address it.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The library this agent came from.
    pub fn nixl(&self) -> &Nixl {
        &self.inner.nixl
    }

    /// Backend plugins NIXL can load (from its plugin directory).
    pub fn available_plugins(&self) -> Result<Vec<String>, NixlError> {
        let lib = &self.inner.nixl.0;
        let mut list: sys::nixl_capi_string_list_t = ptr::null_mut();
        // SAFETY: live agent, valid out-pointer.
        unsafe { nixl_call!(lib, nixl_capi_get_available_plugins(self.inner.ptr(), &mut list)) }?;
        let list = StringList { raw: list, nixl: &self.inner.nixl };
        list.to_vec()
    }

    /// Supported memory types and default parameters of a plugin.
    pub fn plugin_params(&self, plugin: &str) -> Result<PluginInfo, NixlError> {
        let lib = &self.inner.nixl.0;
        let name = cstring("nixl_capi_get_plugin_params", plugin)?;
        let mut mems: sys::nixl_capi_mem_list_t = ptr::null_mut();
        let mut params: sys::nixl_capi_params_t = ptr::null_mut();
        // SAFETY: live agent, valid C string and out-pointers.
        unsafe {
            nixl_call!(lib, nixl_capi_get_plugin_params(self.inner.ptr(), name.as_ptr(), &mut mems, &mut params))
        }?;
        let mems = MemList { raw: mems, nixl: &self.inner.nixl };
        let params = Params { raw: params, nixl: &self.inner.nixl };
        Ok(PluginInfo { mem_types: mems.to_vec()?, params: params.to_map()? })
    }

    /// Creates a backend from a plugin, with parameters (NIXL fills in defaults
    /// for the ones not given).
    pub fn create_backend(&self, plugin: &str, params: &BTreeMap<String, String>) -> Result<Backend, NixlError> {
        let lib = &self.inner.nixl.0;
        let name = cstring("nixl_capi_create_backend", plugin)?;
        let p = Params::new(&self.inner.nixl)?;
        for (k, v) in params {
            let ck = cstring("nixl_capi_params_add", k)?;
            let cv = cstring("nixl_capi_params_add", v)?;
            // SAFETY: live params object and valid C strings (copied by NIXL).
            unsafe { nixl_call!(lib, nixl_capi_params_add(p.raw, ck.as_ptr(), cv.as_ptr())) }?;
        }
        let mut raw: sys::nixl_capi_backend_t = ptr::null_mut();
        // SAFETY: live agent, params and a valid out-pointer.
        unsafe { nixl_call!(lib, nixl_capi_create_backend(self.inner.ptr(), name.as_ptr(), p.raw, &mut raw)) }?;
        let raw = NonNull::new(raw).ok_or(NixlError::NullHandle("nixl_capi_create_backend"))?;
        Ok(Backend { inner: Rc::new(BackendInner { raw, agent: Rc::clone(&self.inner), plugin: plugin.to_string() }) })
    }

    /// Effective parameters and memory types of a created backend.
    pub fn backend_params(&self, backend: &Backend) -> Result<PluginInfo, NixlError> {
        let lib = &self.inner.nixl.0;
        let mut mems: sys::nixl_capi_mem_list_t = ptr::null_mut();
        let mut params: sys::nixl_capi_params_t = ptr::null_mut();
        // SAFETY: live agent and backend, valid out-pointers.
        unsafe {
            nixl_call!(
                lib,
                nixl_capi_get_backend_params(self.inner.ptr(), backend.inner.raw.as_ptr(), &mut mems, &mut params)
            )
        }?;
        let mems = MemList { raw: mems, nixl: &self.inner.nixl };
        let params = Params { raw: params, nixl: &self.inner.nixl };
        Ok(PluginInfo { mem_types: mems.to_vec()?, params: params.to_map()? })
    }

    /// This agent's metadata (connection info and registered memory), to be
    /// loaded by peers.
    pub fn local_metadata(&self) -> Result<Vec<u8>, NixlError> {
        let lib = &self.inner.nixl.0;
        let mut data: *mut c_void = ptr::null_mut();
        let mut len: usize = 0;
        // SAFETY: live agent, valid out-pointers.
        unsafe { nixl_call!(lib, nixl_capi_get_local_md(self.inner.ptr(), &mut data, &mut len)) }?;
        if data.is_null() {
            return Ok(Vec::new());
        }
        // SAFETY: the library returned a buffer of len bytes, which we own.
        let v = unsafe { std::slice::from_raw_parts(data.cast::<u8>(), len) }.to_vec();
        // SAFETY: data came from this library and is not used again.
        unsafe { lib.free(data) };
        Ok(v)
    }

    /// Loads a peer's metadata; returns the peer agent's name.
    pub fn load_remote_metadata(&self, md: &[u8]) -> Result<String, NixlError> {
        if md.is_empty() {
            return Err(NixlError::Invalid("empty remote metadata".into()));
        }
        let lib = &self.inner.nixl.0;
        let mut name: *mut std::os::raw::c_char = ptr::null_mut();
        // SAFETY: live agent; md is a valid buffer of md.len() bytes; valid out-pointer.
        unsafe {
            nixl_call!(lib, nixl_capi_load_remote_md(self.inner.ptr(), md.as_ptr().cast(), md.len(), &mut name))
        }?;
        // SAFETY: name is null or a string the library allocated for us.
        let s = unsafe { copy_cstr(name) };
        // SAFETY: allocated by the library (strdup), released once.
        unsafe { lib.free(name.cast()) };
        Ok(s)
    }

    /// Forgets a peer's metadata (and connections).
    pub fn invalidate_remote(&self, remote: &str) -> Result<(), NixlError> {
        let c = cstring("nixl_capi_invalidate_remote_md", remote)?;
        // SAFETY: live agent and valid C string.
        unsafe { nixl_call!(self.inner.nixl.0, nixl_capi_invalidate_remote_md(self.inner.ptr(), c.as_ptr())) }?;
        Ok(())
    }

    /// Sends this agent's metadata to a peer's listen thread at `ip:port`.
    pub fn send_metadata_to(&self, ip: &str, port: u16) -> Result<(), NixlError> {
        let args = super::OptArgs::new(&self.inner.nixl)?;
        args.set_ip_port(ip, port)?;
        // SAFETY: live agent and opt args.
        unsafe { nixl_call!(self.inner.nixl.0, nixl_capi_send_local_md(self.inner.ptr(), args.raw.as_ptr())) }?;
        Ok(())
    }

    /// Asks the listen thread at `ip:port` for agent `remote`'s metadata. The
    /// answer arrives asynchronously; poll [`Agent::has_remote_metadata`].
    /// This agent needs its own listen thread: it carries the exchange.
    pub fn fetch_metadata_from(&self, remote: &str, ip: &str, port: u16) -> Result<(), NixlError> {
        let c = cstring("nixl_capi_fetch_remote_md", remote)?;
        let args = super::OptArgs::new(&self.inner.nixl)?;
        args.set_ip_port(ip, port)?;
        // SAFETY: live agent, valid C string and opt args.
        unsafe {
            nixl_call!(self.inner.nixl.0, nixl_capi_fetch_remote_md(self.inner.ptr(), c.as_ptr(), args.raw.as_ptr()))
        }?;
        Ok(())
    }

    /// True once metadata for `remote` is loaded.
    pub fn has_remote_metadata(&self, remote: &str) -> Result<bool, NixlError> {
        let c = cstring("nixl_capi_check_remote_md", remote)?;
        // SAFETY: live agent, valid C string; a null descriptor list asks only
        // whether the agent is known.
        let r = unsafe {
            nixl_call!(self.inner.nixl.0, nixl_capi_check_remote_md(self.inner.ptr(), c.as_ptr(), ptr::null_mut()))
        };
        match r {
            Ok(_) => Ok(true),
            Err(NixlError::Call { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Opens the backend connection to `remote` now rather than at the first transfer.
    pub fn make_connection(&self, remote: &str) -> Result<(), NixlError> {
        let c = cstring("nixl_capi_agent_make_connection", remote)?;
        // SAFETY: live agent, valid C string, null opt args are allowed.
        unsafe {
            nixl_call!(
                self.inner.nixl.0,
                nixl_capi_agent_make_connection(self.inner.ptr(), c.as_ptr(), ptr::null_mut())
            )
        }?;
        Ok(())
    }

    /// Sends a notification message to `remote`.
    pub fn send_notification(&self, remote: &str, msg: &[u8]) -> Result<(), NixlError> {
        let c = cstring("nixl_capi_gen_notif", remote)?;
        // SAFETY: live agent, valid C string, msg is msg.len() valid bytes.
        unsafe {
            nixl_call!(
                self.inner.nixl.0,
                nixl_capi_gen_notif(self.inner.ptr(), c.as_ptr(), msg.as_ptr().cast(), msg.len(), ptr::null_mut())
            )
        }?;
        Ok(())
    }
}

pub(crate) struct BackendInner {
    pub(crate) raw: NonNull<sys::nixl_capi_backend_s>,
    pub(crate) agent: Rc<AgentInner>,
    pub(crate) plugin: String,
}

impl Drop for BackendInner {
    fn drop(&mut self) {
        // SAFETY: raw is the live backend wrapper; the engine it names belongs to
        // the agent, which this struct keeps alive.
        if let Err(e) = unsafe { nixl_call!(self.agent.nixl.0, nixl_capi_destroy_backend(self.raw.as_ptr())) } {
            record_drop_error("destroy backend", &e);
        }
    }
}

/// A backend (UCX, LIBFABRIC, ...) created on an agent.
#[derive(Clone)]
pub struct Backend {
    pub(crate) inner: Rc<BackendInner>,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend").field("plugin", &self.inner.plugin).finish_non_exhaustive()
    }
}

impl Backend {
    /// The plugin name.
    pub fn plugin(&self) -> &str {
        &self.inner.plugin
    }
}

/// Borrowed list of strings from the library.
struct StringList<'a> {
    raw: sys::nixl_capi_string_list_t,
    nixl: &'a Nixl,
}

impl StringList<'_> {
    fn to_vec(&self) -> Result<Vec<String>, NixlError> {
        let lib = &self.nixl.0;
        let mut n = 0usize;
        // SAFETY: live list, valid out-pointer.
        unsafe { nixl_call!(lib, nixl_capi_string_list_size(self.raw, &mut n)) }?;
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let mut s: *const std::os::raw::c_char = ptr::null();
            // SAFETY: i < size; the string stays valid while the list lives.
            unsafe { nixl_call!(lib, nixl_capi_string_list_get(self.raw, i, &mut s)) }?;
            // SAFETY: valid C string owned by the list.
            out.push(unsafe { copy_cstr(s) });
        }
        Ok(out)
    }
}

impl Drop for StringList<'_> {
    fn drop(&mut self) {
        if self.raw.is_null() {
            return;
        }
        // SAFETY: the list came from the library and is destroyed once.
        if let Err(e) = unsafe { nixl_call!(self.nixl.0, nixl_capi_destroy_string_list(self.raw)) } {
            record_drop_error("destroy string list", &e);
        }
    }
}

struct MemList<'a> {
    raw: sys::nixl_capi_mem_list_t,
    nixl: &'a Nixl,
}

impl MemList<'_> {
    fn to_vec(&self) -> Result<Vec<MemType>, NixlError> {
        if self.raw.is_null() {
            return Ok(Vec::new());
        }
        let lib = &self.nixl.0;
        let mut n = 0usize;
        // SAFETY: live list, valid out-pointer.
        unsafe { nixl_call!(lib, nixl_capi_mem_list_size(self.raw, &mut n)) }?;
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let mut t: sys::nixl_capi_mem_type_t = 0;
            // SAFETY: i < size, valid out-pointer.
            unsafe { nixl_call!(lib, nixl_capi_mem_list_get(self.raw, i, &mut t)) }?;
            out.push(MemType::from_raw(t));
        }
        Ok(out)
    }
}

impl Drop for MemList<'_> {
    fn drop(&mut self) {
        if self.raw.is_null() {
            return;
        }
        // SAFETY: the list came from the library and is destroyed once.
        if let Err(e) = unsafe { nixl_call!(self.nixl.0, nixl_capi_destroy_mem_list(self.raw)) } {
            record_drop_error("destroy mem list", &e);
        }
    }
}

struct Params<'a> {
    raw: sys::nixl_capi_params_t,
    nixl: &'a Nixl,
}

impl<'a> Params<'a> {
    fn new(nixl: &'a Nixl) -> Result<Params<'a>, NixlError> {
        let mut raw: sys::nixl_capi_params_t = ptr::null_mut();
        // SAFETY: valid out-pointer.
        unsafe { nixl_call!(nixl.0, nixl_capi_create_params(&mut raw)) }?;
        if raw.is_null() {
            return Err(NixlError::NullHandle("nixl_capi_create_params"));
        }
        Ok(Params { raw, nixl })
    }

    fn to_map(&self) -> Result<BTreeMap<String, String>, NixlError> {
        let mut out = BTreeMap::new();
        if self.raw.is_null() {
            return Ok(out);
        }
        let lib = &self.nixl.0;
        let mut empty = true;
        // SAFETY: live params, valid out-pointer.
        unsafe { nixl_call!(lib, nixl_capi_params_is_empty(self.raw, &mut empty)) }?;
        if empty {
            return Ok(out);
        }
        let mut it: sys::nixl_capi_param_iter_t = ptr::null_mut();
        // SAFETY: live params, valid out-pointer.
        unsafe { nixl_call!(lib, nixl_capi_params_create_iterator(self.raw, &mut it)) }?;
        let result = (|| {
            loop {
                let (mut k, mut v) = (ptr::null(), ptr::null());
                let mut has_next = false;
                // SAFETY: live iterator and valid out-pointers; the strings belong
                // to the iterator and stay valid until its next call.
                unsafe { nixl_call!(lib, nixl_capi_params_iterator_next(it, &mut k, &mut v, &mut has_next)) }?;
                // SAFETY: valid C strings (or null) owned by the iterator until its next call.
                let (ks, vs) = unsafe { (copy_cstr(k), copy_cstr(v)) };
                if !ks.is_empty() {
                    out.insert(ks, vs);
                }
                if !has_next {
                    return Ok::<(), NixlError>(());
                }
            }
        })();
        // SAFETY: the iterator came from the library and is destroyed once.
        if let Err(e) = unsafe { nixl_call!(lib, nixl_capi_params_destroy_iterator(it)) } {
            record_drop_error("destroy params iterator", &e);
        }
        result.map(|()| out)
    }
}

impl Drop for Params<'_> {
    fn drop(&mut self) {
        if self.raw.is_null() {
            return;
        }
        // SAFETY: created or returned by the library; destroyed once.
        if let Err(e) = unsafe { nixl_call!(self.nixl.0, nixl_capi_destroy_params(self.raw)) } {
            record_drop_error("destroy params", &e);
        }
    }
}
