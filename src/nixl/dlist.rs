//! Descriptor lists, memory registration and prepared (vLLM-style) lists.

use std::ptr::{self, NonNull};
use std::rc::Rc;

use nixl_sys as sys;

use super::agent::{Agent, AgentInner, Backend};
use super::error::{NixlError, nixl_call, record_drop_error};
use super::{MemType, Nixl, OptArgs, cstring};

/// A list of memory regions to register (address, length, device id).
pub struct RegDescList {
    pub(crate) raw: NonNull<sys::nixl_capi_reg_dlist_s>,
    nixl: Nixl,
    mem: MemType,
    regions: Vec<(usize, usize)>,
}

impl std::fmt::Debug for RegDescList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegDescList").field("mem", &self.mem).field("regions", &self.regions).finish()
    }
}

impl RegDescList {
    /// An empty list of `mem` regions.
    pub fn new(nixl: &Nixl, mem: MemType) -> Result<RegDescList, NixlError> {
        let mut raw: sys::nixl_capi_reg_dlist_t = ptr::null_mut();
        // SAFETY: valid out-pointer.
        unsafe { nixl_call!(nixl.0, nixl_capi_create_reg_dlist(mem.to_raw(), &mut raw)) }?;
        let raw = NonNull::new(raw).ok_or(NixlError::NullHandle("nixl_capi_create_reg_dlist"))?;
        Ok(RegDescList { raw, nixl: nixl.clone(), mem, regions: Vec::new() })
    }

    /// Adds a region. The address is only recorded here; it is read when the
    /// list is registered.
    pub fn add(&mut self, addr: usize, len: usize, dev_id: u64) -> Result<(), NixlError> {
        if len == 0 {
            return Err(NixlError::Invalid("a registered region cannot be empty".into()));
        }
        // SAFETY: live list; no metadata blob (null, 0).
        unsafe {
            nixl_call!(self.nixl.0, nixl_capi_reg_dlist_add_desc(self.raw.as_ptr(), addr, len, dev_id, ptr::null(), 0))
        }?;
        self.regions.push((addr, len));
        Ok(())
    }

    /// Number of regions.
    pub fn len(&self) -> usize {
        self.regions.len()
    }

    /// True when there are no regions.
    pub fn is_empty(&self) -> bool {
        self.regions.is_empty()
    }

    /// The regions, as (address, length).
    pub fn regions(&self) -> &[(usize, usize)] {
        &self.regions
    }

    /// Memory type of the regions.
    pub fn mem_type(&self) -> MemType {
        self.mem
    }
}

impl Drop for RegDescList {
    fn drop(&mut self) {
        // SAFETY: created by the library, destroyed once.
        if let Err(e) = unsafe { nixl_call!(self.nixl.0, nixl_capi_destroy_reg_dlist(self.raw.as_ptr())) } {
            record_drop_error("destroy reg dlist", &e);
        }
    }
}

/// Registered memory. Deregistered on drop, before its agent goes.
pub struct Registration {
    dlist: RegDescList,
    agent: Rc<AgentInner>,
    backend: Option<Backend>,
    _keep: Option<Rc<dyn std::any::Any>>,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration").field("dlist", &self.dlist).finish_non_exhaustive()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let args = match &self.backend {
            Some(b) => match OptArgs::with_backend(&self.agent.nixl, b) {
                Ok(a) => Some(a),
                Err(e) => {
                    record_drop_error("deregister: opt args", &e);
                    None
                }
            },
            None => None,
        };
        let argp = args.as_ref().map_or(ptr::null_mut(), |a| a.raw.as_ptr());
        // SAFETY: the agent is alive (held by Rc) and the list is the one that was registered.
        if let Err(e) = unsafe {
            nixl_call!(self.agent.nixl.0, nixl_capi_deregister_mem(self.agent.ptr(), self.dlist.raw.as_ptr(), argp))
        } {
            record_drop_error("deregister memory", &e);
        }
    }
}

impl Agent {
    /// Registers the regions of `dlist` with `backend` (or every backend).
    ///
    /// # Safety
    /// The memory the list describes must stay valid, and must not be freed,
    /// until the returned [`Registration`] is dropped. Prefer
    /// [`Agent::register_owned`], which keeps the memory alive itself.
    pub unsafe fn register(&self, dlist: RegDescList, backend: Option<&Backend>) -> Result<Registration, NixlError> {
        // SAFETY: forwarded to the caller's contract.
        unsafe { self.register_inner(dlist, backend, None) }
    }

    /// Registers the regions of `dlist`, which must all lie inside `owner`, and
    /// keeps `owner` alive for as long as the registration.
    pub fn register_owned<T: crate::mem::Region + 'static>(
        &self,
        owner: Rc<T>,
        dlist: RegDescList,
        backend: Option<&Backend>,
    ) -> Result<Registration, NixlError> {
        let (base, len) = (owner.addr(), owner.len());
        if let Some((a, l)) = dlist.regions().iter().find(|(a, l)| *a < base || a + l > base + len) {
            return Err(NixlError::Invalid(format!(
                "region {a:#x}+{l} lies outside the owning buffer {base:#x}+{len}"
            )));
        }
        // SAFETY: every region lies inside `owner` (checked above), and `owner`
        // is kept in the Registration, so the memory outlives it.
        unsafe { self.register_inner(dlist, backend, Some(owner as Rc<dyn std::any::Any>)) }
    }

    unsafe fn register_inner(
        &self,
        dlist: RegDescList,
        backend: Option<&Backend>,
        keep: Option<Rc<dyn std::any::Any>>,
    ) -> Result<Registration, NixlError> {
        let args = match backend {
            Some(b) => Some(OptArgs::with_backend(&self.inner.nixl, b)?),
            None => None,
        };
        let argp = args.as_ref().map_or(ptr::null_mut(), |a| a.raw.as_ptr());
        // SAFETY: live agent, list and opt args; memory validity is the caller's contract.
        unsafe { nixl_call!(self.inner.nixl.0, nixl_capi_register_mem(self.inner.ptr(), dlist.raw.as_ptr(), argp)) }?;
        Ok(Registration { dlist, agent: Rc::clone(&self.inner), backend: backend.cloned(), _keep: keep })
    }
}

/// A list of transfer descriptors (address, length, device id) on one side.
pub struct XferDescList {
    pub(crate) raw: NonNull<sys::nixl_capi_xfer_dlist_s>,
    nixl: Nixl,
    mem: MemType,
    count: usize,
    bytes: u64,
}

impl std::fmt::Debug for XferDescList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XferDescList")
            .field("mem", &self.mem)
            .field("count", &self.count)
            .field("bytes", &self.bytes)
            .finish()
    }
}

impl XferDescList {
    /// An empty list.
    pub fn new(nixl: &Nixl, mem: MemType) -> Result<XferDescList, NixlError> {
        let mut raw: sys::nixl_capi_xfer_dlist_t = ptr::null_mut();
        // SAFETY: valid out-pointer.
        unsafe { nixl_call!(nixl.0, nixl_capi_create_xfer_dlist(mem.to_raw(), &mut raw)) }?;
        let raw = NonNull::new(raw).ok_or(NixlError::NullHandle("nixl_capi_create_xfer_dlist"))?;
        Ok(XferDescList { raw, nixl: nixl.clone(), mem, count: 0, bytes: 0 })
    }

    /// Adds a descriptor.
    pub fn add(&mut self, addr: usize, len: usize, dev_id: u64) -> Result<(), NixlError> {
        if len == 0 {
            return Err(NixlError::Invalid("a transfer descriptor cannot be empty".into()));
        }
        // SAFETY: live list.
        unsafe { nixl_call!(self.nixl.0, nixl_capi_xfer_dlist_add_desc(self.raw.as_ptr(), addr, len, dev_id)) }?;
        self.count += 1;
        self.bytes += len as u64;
        Ok(())
    }

    /// Adds `n` consecutive descriptors of `len` bytes starting at `base`.
    pub fn add_strided(&mut self, base: usize, len: usize, n: usize, dev_id: u64) -> Result<(), NixlError> {
        for i in 0..n {
            self.add(base + i * len, len, dev_id)?;
        }
        Ok(())
    }

    /// Number of descriptors.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Total bytes described.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Memory type.
    pub fn mem_type(&self) -> MemType {
        self.mem
    }

    /// Number of descriptors as NIXL counts them (a cross-check of [`Self::len`]).
    pub fn library_count(&self) -> Result<usize, NixlError> {
        let mut n = 0usize;
        // SAFETY: live list, valid out-pointer.
        unsafe { nixl_call!(self.nixl.0, nixl_capi_xfer_dlist_desc_count(self.raw.as_ptr(), &mut n)) }?;
        Ok(n)
    }
}

impl Drop for XferDescList {
    fn drop(&mut self) {
        // SAFETY: created by the library, destroyed once.
        if let Err(e) = unsafe { nixl_call!(self.nixl.0, nixl_capi_destroy_xfer_dlist(self.raw.as_ptr())) } {
            record_drop_error("destroy xfer dlist", &e);
        }
    }
}

pub(crate) struct PreppedInner {
    pub(crate) raw: NonNull<sys::nixl_capi_xfer_dlist_handle_s>,
    pub(crate) agent: Rc<AgentInner>,
    pub(crate) count: usize,
    pub(crate) remote: Option<String>,
}

impl Drop for PreppedInner {
    fn drop(&mut self) {
        // SAFETY: live agent (Rc) and a handle it prepared; released once, after
        // every request made from it (requests hold an Rc of this struct).
        if let Err(e) = unsafe {
            nixl_call!(self.agent.nixl.0, nixl_capi_release_xfer_dlist_handle(self.agent.ptr(), self.raw.as_ptr()))
        } {
            record_drop_error("release xfer dlist handle", &e);
        }
    }
}

/// A descriptor list prepared once with `prep_xfer_dlist`, from which
/// requests are made by index (what vLLM's NixlConnector does).
#[derive(Clone)]
pub struct PreppedDlist {
    pub(crate) inner: Rc<PreppedInner>,
}

impl std::fmt::Debug for PreppedDlist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreppedDlist").field("count", &self.inner.count).field("remote", &self.inner.remote).finish()
    }
}

impl PreppedDlist {
    /// Number of descriptors.
    pub fn len(&self) -> usize {
        self.inner.count
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.inner.count == 0
    }
}

impl Agent {
    /// Prepares a local descriptor list (the initiator's side).
    pub fn prep_local(&self, dlist: &XferDescList, backend: Option<&Backend>) -> Result<PreppedDlist, NixlError> {
        self.prep(None, dlist, backend)
    }

    /// Prepares a descriptor list in `remote`'s memory (its metadata must be loaded).
    pub fn prep_remote(
        &self,
        remote: &str,
        dlist: &XferDescList,
        backend: Option<&Backend>,
    ) -> Result<PreppedDlist, NixlError> {
        self.prep(Some(remote), dlist, backend)
    }

    fn prep(
        &self,
        remote: Option<&str>,
        dlist: &XferDescList,
        backend: Option<&Backend>,
    ) -> Result<PreppedDlist, NixlError> {
        // NIXL_INIT_AGENT (the empty name) means "local, as initiator".
        let name = cstring("nixl_capi_prep_xfer_dlist", remote.unwrap_or(""))?;
        let args = match backend {
            Some(b) => Some(OptArgs::with_backend(&self.inner.nixl, b)?),
            None => None,
        };
        let argp = args.as_ref().map_or(ptr::null_mut(), |a| a.raw.as_ptr());
        let mut h: sys::nixl_capi_xfer_dlist_handle_t = ptr::null_mut();
        // SAFETY: live agent, list, opt args; valid C string and out-pointer.
        unsafe {
            nixl_call!(
                self.inner.nixl.0,
                nixl_capi_prep_xfer_dlist(self.inner.ptr(), name.as_ptr(), dlist.raw.as_ptr(), &mut h, argp)
            )
        }?;
        let raw = NonNull::new(h).ok_or(NixlError::NullHandle("nixl_capi_prep_xfer_dlist"))?;
        Ok(PreppedDlist {
            inner: Rc::new(PreppedInner {
                raw,
                agent: Rc::clone(&self.inner),
                count: dlist.len(),
                remote: remote.map(str::to_string),
            }),
        })
    }
}
