//! Descriptor lists, memory registration and prepared (vLLM-style) lists.
//!
//! Ownership that keeps local memory sound:
//! - a [`Registration`] keeps its agent alive, and with
//!   [`Agent::register_owned`] the memory it covers;
//! - the local side of a transfer can only be built from registered memory
//!   ([`XferDescList::add_local`]), and the list keeps those registrations;
//! - a prepared list and a request keep the registrations of their local side,
//!   so memory a request can write into is never deregistered or freed while
//!   the request exists.
//!
//! Remote descriptors ([`XferDescList::add`]) are addresses in the peer's
//! memory: they are never dereferenced here, and a list that holds any cannot
//! be the local side of a transfer.

use std::ptr::{self, NonNull};
use std::rc::Rc;

use nixl_sys as sys;

use super::agent::{Agent, AgentInner, Backend};
use super::error::{NixlError, nixl_call, record_drop_error};
use super::{MemType, Nixl, OptArgs, cstring};

/// Whether `[addr, addr+len)` lies inside `[base, base+size)`, without overflow.
fn within(addr: usize, len: usize, base: usize, size: usize) -> bool {
    match (addr.checked_add(len), base.checked_add(size)) {
        (Some(end), Some(limit)) => addr >= base && end <= limit,
        _ => false,
    }
}

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
        if len == 0 || addr.checked_add(len).is_none() {
            return Err(NixlError::Invalid(format!("invalid region {addr:#x}+{len}")));
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

pub(crate) struct RegistrationInner {
    dlist: RegDescList,
    pub(crate) agent: Rc<AgentInner>,
    backend: Option<Backend>,
    _keep: Option<Rc<dyn std::any::Any>>,
}

impl Drop for RegistrationInner {
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
        // SAFETY: the agent is alive (held by Rc), the list is the one that was
        // registered, and no request over this memory exists any more (requests
        // and prepared lists hold a Registration).
        if let Err(e) = unsafe {
            nixl_call!(self.agent.nixl.0, nixl_capi_deregister_mem(self.agent.ptr(), self.dlist.raw.as_ptr(), argp))
        } {
            record_drop_error("deregister memory", &e);
        }
    }
}

/// Registered memory; a cheap handle (clones share one registration).
/// Deregistered when the last handle goes, before its agent.
#[derive(Clone)]
pub struct Registration {
    pub(crate) inner: Rc<RegistrationInner>,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration").field("dlist", &self.inner.dlist).finish_non_exhaustive()
    }
}

impl Registration {
    /// Whether `[addr, addr+len)` lies inside one registered region.
    pub fn covers(&self, addr: usize, len: usize) -> bool {
        self.inner.dlist.regions().iter().any(|&(base, size)| within(addr, len, base, size))
    }

    /// Memory type.
    pub fn mem_type(&self) -> MemType {
        self.inner.dlist.mem_type()
    }
}

impl Agent {
    /// Registers the regions of `dlist` with `backend` (or every backend).
    ///
    /// # Safety
    /// The memory the list describes must stay valid, and must not be freed,
    /// until the returned [`Registration`] (every clone of it, and every list,
    /// prepared list and request built over it) is dropped. Prefer
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
        if let Some((a, l)) = dlist.regions().iter().find(|&&(a, l)| !within(a, l, base, len)) {
            return Err(NixlError::Invalid(format!(
                "region {a:#x}+{l} lies outside the owning buffer {base:#x}+{len}"
            )));
        }
        // SAFETY: every region lies inside `owner` (checked above without
        // overflow), `Region` implementations guarantee that range is memory the
        // owner keeps valid, and `owner` lives in the Registration.
        unsafe { self.register_inner(dlist, backend, Some(owner as Rc<dyn std::any::Any>)) }
    }

    /// # Safety
    /// As [`Agent::register`]: the memory must outlive the registration, or be
    /// kept alive by `keep`.
    unsafe fn register_inner(
        &self,
        dlist: RegDescList,
        backend: Option<&Backend>,
        keep: Option<Rc<dyn std::any::Any>>,
    ) -> Result<Registration, NixlError> {
        if let Some(b) = backend {
            self.check_mine(b)?;
        }
        let args = match backend {
            Some(b) => Some(OptArgs::with_backend(&self.inner.nixl, b)?),
            None => None,
        };
        let argp = args.as_ref().map_or(ptr::null_mut(), |a| a.raw.as_ptr());
        // SAFETY: live agent, list and opt args; memory validity is the caller's contract.
        unsafe { nixl_call!(self.inner.nixl.0, nixl_capi_register_mem(self.inner.ptr(), dlist.raw.as_ptr(), argp)) }?;
        Ok(Registration {
            inner: Rc::new(RegistrationInner {
                dlist,
                agent: Rc::clone(&self.inner),
                backend: backend.cloned(),
                _keep: keep,
            }),
        })
    }

    /// Refuses a backend of another agent.
    pub(crate) fn check_mine(&self, backend: &Backend) -> Result<(), NixlError> {
        if Rc::ptr_eq(&backend.inner.agent, &self.inner) {
            Ok(())
        } else {
            Err(NixlError::Invalid(format!("backend {} belongs to another agent", backend.plugin())))
        }
    }
}

/// A list of transfer descriptors (address, length, device id) on one side.
pub struct XferDescList {
    pub(crate) raw: NonNull<sys::nixl_capi_xfer_dlist_s>,
    nixl: Nixl,
    mem: MemType,
    count: usize,
    bytes: u64,
    /// Registrations the local descriptors lie in.
    regs: Vec<Registration>,
    /// Descriptors added with `add` (remote memory, not checked).
    unchecked: usize,
}

impl std::fmt::Debug for XferDescList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XferDescList")
            .field("mem", &self.mem)
            .field("count", &self.count)
            .field("bytes", &self.bytes)
            .field("unchecked", &self.unchecked)
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
        Ok(XferDescList { raw, nixl: nixl.clone(), mem, count: 0, bytes: 0, regs: Vec::new(), unchecked: 0 })
    }

    fn push(&mut self, addr: usize, len: usize, dev_id: u64) -> Result<(), NixlError> {
        if len == 0 || addr.checked_add(len).is_none() {
            return Err(NixlError::Invalid(format!("invalid descriptor {addr:#x}+{len}")));
        }
        // SAFETY: live list; the address is only recorded.
        unsafe { nixl_call!(self.nixl.0, nixl_capi_xfer_dlist_add_desc(self.raw.as_ptr(), addr, len, dev_id)) }?;
        self.count += 1;
        self.bytes += len as u64;
        Ok(())
    }

    /// Adds a descriptor of local memory, which must lie inside `reg`; the list
    /// keeps the registration alive (and so will everything built from it).
    pub fn add_local(&mut self, reg: &Registration, addr: usize, len: usize, dev_id: u64) -> Result<(), NixlError> {
        if reg.mem_type() != self.mem {
            return Err(NixlError::Invalid(format!("a {} registration in a {} list", reg.mem_type(), self.mem)));
        }
        if !reg.covers(addr, len) {
            return Err(NixlError::Invalid(format!("descriptor {addr:#x}+{len} is not inside the registered memory")));
        }
        self.push(addr, len, dev_id)?;
        if !self.regs.iter().any(|r| Rc::ptr_eq(&r.inner, &reg.inner)) {
            self.regs.push(reg.clone());
        }
        Ok(())
    }

    /// Adds `n` consecutive local descriptors of `len` bytes from `base`.
    pub fn add_local_strided(
        &mut self,
        reg: &Registration,
        base: usize,
        len: usize,
        n: usize,
        dev_id: u64,
    ) -> Result<(), NixlError> {
        if reg.mem_type() != self.mem {
            return Err(NixlError::Invalid(format!("a {} registration in a {} list", reg.mem_type(), self.mem)));
        }
        let total = len.checked_mul(n).ok_or_else(|| NixlError::Invalid("descriptor range overflows".into()))?;
        if !reg.covers(base, total) {
            return Err(NixlError::Invalid(format!(
                "{n} x {len} B from {base:#x} is not inside the registered memory"
            )));
        }
        // The whole range is checked once above; each descriptor lies inside it.
        for i in 0..n {
            self.push(base + i * len, len, dev_id)?;
        }
        if !self.regs.iter().any(|r| Rc::ptr_eq(&r.inner, &reg.inner)) {
            self.regs.push(reg.clone());
        }
        Ok(())
    }

    /// Adds a descriptor of the peer's memory (never dereferenced here). A
    /// list holding any cannot be the local side of a transfer.
    pub fn add(&mut self, addr: usize, len: usize, dev_id: u64) -> Result<(), NixlError> {
        self.push(addr, len, dev_id)?;
        self.unchecked += 1;
        Ok(())
    }

    /// Adds `n` consecutive remote descriptors of `len` bytes from `base`.
    pub fn add_strided(&mut self, base: usize, len: usize, n: usize, dev_id: u64) -> Result<(), NixlError> {
        for i in 0..n {
            let addr = len.checked_mul(i).and_then(|o| base.checked_add(o));
            self.add(addr.ok_or_else(|| NixlError::Invalid("descriptor range overflows".into()))?, len, dev_id)?;
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

    /// The registrations of a list used as the local side of a transfer by
    /// `agent`, or why it cannot be used that way.
    pub(crate) fn local_regs(&self, agent: &Rc<AgentInner>) -> Result<Vec<Registration>, NixlError> {
        if self.unchecked > 0 || self.regs.is_empty() {
            return Err(NixlError::Invalid(
                "the local side of a transfer must be built with add_local (descriptors in registered memory)".into(),
            ));
        }
        if self.regs.iter().any(|r| !Rc::ptr_eq(&r.inner.agent, agent)) {
            return Err(NixlError::Invalid("the local descriptors are registered with another agent".into()));
        }
        Ok(self.regs.clone())
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
    /// Local memory this handle points into (empty for a remote list).
    pub(crate) _regs: Vec<Registration>,
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

    /// The remote agent, or None for a local (initiator-side) list.
    pub fn remote(&self) -> Option<&str> {
        self.inner.remote.as_deref()
    }
}

impl Agent {
    /// Prepares a local descriptor list (the initiator's side). The list must
    /// be built with [`XferDescList::add_local`] over this agent's registrations.
    pub fn prep_local(&self, dlist: &XferDescList, backend: Option<&Backend>) -> Result<PreppedDlist, NixlError> {
        let regs = dlist.local_regs(&self.inner)?;
        self.prep(None, dlist, backend, regs)
    }

    /// Prepares a descriptor list in `remote`'s memory (its metadata must be loaded).
    pub fn prep_remote(
        &self,
        remote: &str,
        dlist: &XferDescList,
        backend: Option<&Backend>,
    ) -> Result<PreppedDlist, NixlError> {
        self.prep(Some(remote), dlist, backend, Vec::new())
    }

    fn prep(
        &self,
        remote: Option<&str>,
        dlist: &XferDescList,
        backend: Option<&Backend>,
        regs: Vec<Registration>,
    ) -> Result<PreppedDlist, NixlError> {
        if let Some(b) = backend {
            self.check_mine(b)?;
        }
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
                _regs: regs,
            }),
        })
    }
}
