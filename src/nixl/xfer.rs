//! Optional arguments and transfer requests (both creation paths).

use std::ptr::{self, NonNull};
use std::rc::Rc;
use std::time::{Duration, Instant};

use nixl_sys as sys;
use serde::{Deserialize, Serialize};

use super::agent::{Agent, AgentInner, Backend};
use super::dlist::{PreppedDlist, XferDescList};
use super::error::{NixlError, Status, nixl_call, record_drop_error};
use super::{Nixl, XferOp, cstring};

/// NIXL's optional arguments (backend choice, notification message, ...).
pub struct OptArgs {
    pub(crate) raw: NonNull<sys::nixl_capi_opt_args_s>,
    nixl: Nixl,
    _backends: Vec<Backend>,
}

impl std::fmt::Debug for OptArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OptArgs").field("backends", &self._backends).finish_non_exhaustive()
    }
}

impl OptArgs {
    /// Empty arguments.
    pub fn new(nixl: &Nixl) -> Result<OptArgs, NixlError> {
        let mut raw: sys::nixl_capi_opt_args_t = ptr::null_mut();
        // SAFETY: valid out-pointer.
        unsafe { nixl_call!(nixl.0, nixl_capi_create_opt_args(&mut raw)) }?;
        let raw = NonNull::new(raw).ok_or(NixlError::NullHandle("nixl_capi_create_opt_args"))?;
        Ok(OptArgs { raw, nixl: nixl.clone(), _backends: Vec::new() })
    }

    /// Arguments that select one backend.
    pub fn with_backend(nixl: &Nixl, backend: &Backend) -> Result<OptArgs, NixlError> {
        let mut a = OptArgs::new(nixl)?;
        a.add_backend(backend)?;
        Ok(a)
    }

    /// Restricts the operation to `backend` (may be called more than once).
    pub fn add_backend(&mut self, backend: &Backend) -> Result<(), NixlError> {
        if !std::sync::Arc::ptr_eq(&backend.inner.agent.nixl.0, &self.nixl.0) {
            return Err(NixlError::Invalid("backend and arguments come from different NIXL libraries".into()));
        }
        // SAFETY: live args and backend; the backend is kept alive by self.
        unsafe {
            nixl_call!(self.nixl.0, nixl_capi_opt_args_add_backend(self.raw.as_ptr(), backend.inner.raw.as_ptr()))
        }?;
        self._backends.push(backend.clone());
        Ok(())
    }

    /// Attaches a notification message (sent to the peer when a transfer completes).
    pub fn set_notification(&self, msg: &[u8]) -> Result<(), NixlError> {
        // SAFETY: live args; msg is msg.len() valid bytes, copied by NIXL.
        unsafe {
            nixl_call!(self.nixl.0, nixl_capi_opt_args_set_notif_msg(self.raw.as_ptr(), msg.as_ptr().cast(), msg.len()))
        }?;
        // SAFETY: live args.
        unsafe { nixl_call!(self.nixl.0, nixl_capi_opt_args_set_has_notif(self.raw.as_ptr(), true)) }?;
        Ok(())
    }

    /// Whether a notification is attached.
    pub fn has_notification(&self) -> Result<bool, NixlError> {
        let mut b = false;
        // SAFETY: live args, valid out-pointer.
        unsafe { nixl_call!(self.nixl.0, nixl_capi_opt_args_get_has_notif(self.raw.as_ptr(), &mut b)) }?;
        Ok(b)
    }

    /// Keeps NIXL from merging adjacent descriptors when making a request.
    pub fn set_skip_desc_merge(&self, skip: bool) -> Result<(), NixlError> {
        // SAFETY: live args.
        unsafe { nixl_call!(self.nixl.0, nixl_capi_opt_args_set_skip_desc_merge(self.raw.as_ptr(), skip)) }?;
        Ok(())
    }

    /// Peer address for metadata exchange through listen threads.
    pub fn set_ip_port(&self, ip: &str, port: u16) -> Result<(), NixlError> {
        let c = cstring("nixl_capi_opt_args_set_ip_addr", ip)?;
        // SAFETY: live args, valid C string (copied).
        unsafe { nixl_call!(self.nixl.0, nixl_capi_opt_args_set_ip_addr(self.raw.as_ptr(), c.as_ptr())) }?;
        // SAFETY: live args.
        unsafe { nixl_call!(self.nixl.0, nixl_capi_opt_args_set_port(self.raw.as_ptr(), port)) }?;
        Ok(())
    }
}

impl Drop for OptArgs {
    fn drop(&mut self) {
        // SAFETY: created by the library, destroyed once.
        if let Err(e) = unsafe { nixl_call!(self.nixl.0, nixl_capi_destroy_opt_args(self.raw.as_ptr())) } {
            record_drop_error("destroy opt args", &e);
        }
    }
}

/// NIXL's own per-request timing (when the agent captures telemetry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Telemetry {
    /// Post call duration, microseconds.
    pub post_duration_us: u64,
    /// Post to completion, microseconds.
    pub xfer_duration_us: u64,
    /// Bytes moved.
    pub total_bytes: u64,
    /// Descriptors in the request.
    pub desc_count: u64,
}

/// A transfer request; post it as often as needed, poll its status.
pub struct XferReq {
    raw: NonNull<sys::nixl_capi_xfer_req_s>,
    agent: Rc<AgentInner>,
    op: XferOp,
    bytes: u64,
    descs: usize,
    // Held so that the prepared handles, and the local memory registrations
    // the request reads or writes, outlive it (see dlist.rs).
    _prepped: Option<(PreppedDlist, PreppedDlist)>,
    _regs: Vec<crate::nixl::Registration>,
    _args: Option<Rc<OptArgs>>,
}

impl std::fmt::Debug for XferReq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XferReq")
            .field("op", &self.op)
            .field("bytes", &self.bytes)
            .field("descs", &self.descs)
            .finish_non_exhaustive()
    }
}

impl Agent {
    /// Makes a request from prepared lists by descriptor index (vLLM's path:
    /// `prep_xfer_dlist` once, `make_xfer_req` per request). `bytes` is what
    /// the selected descriptors add up to (NIXL does not report it back).
    #[allow(clippy::too_many_arguments)] // mirrors nixl_capi_make_xfer_req one to one
    pub fn make_xfer_req(
        &self,
        op: XferOp,
        local: &PreppedDlist,
        local_idx: &[i32],
        remote: &PreppedDlist,
        remote_idx: &[i32],
        bytes: u64,
        args: Option<Rc<OptArgs>>,
    ) -> Result<XferReq, NixlError> {
        if local_idx.len() != remote_idx.len() || local_idx.is_empty() {
            return Err(NixlError::Invalid(format!(
                "index lists must be non-empty and of equal length ({} local, {} remote)",
                local_idx.len(),
                remote_idx.len()
            )));
        }
        let bad = |idx: &[i32], n: usize| idx.iter().find(|&&i| i < 0 || i as usize >= n).copied();
        if let Some(i) = bad(local_idx, local.len()).or(bad(remote_idx, remote.len())) {
            return Err(NixlError::Invalid(format!("descriptor index {i} out of range")));
        }
        if local.remote().is_some() || remote.remote().is_none() {
            return Err(NixlError::Invalid("make_xfer_req needs a local prepared list then a remote one".into()));
        }
        if !Rc::ptr_eq(&local.inner.agent, &self.inner) || !Rc::ptr_eq(&remote.inner.agent, &self.inner) {
            return Err(NixlError::Invalid("the prepared lists belong to another agent".into()));
        }
        self.check_args(args.as_deref())?;
        let argp = args.as_ref().map_or(ptr::null_mut(), |a| a.raw.as_ptr());
        let mut raw: sys::nixl_capi_xfer_req_t = ptr::null_mut();
        // SAFETY: live agent and prepared handles; index slices valid for their
        // lengths and in range (checked); valid out-pointer.
        unsafe {
            nixl_call!(
                self.inner.nixl.0,
                nixl_capi_make_xfer_req(
                    self.inner.ptr(),
                    op.to_raw(),
                    local.inner.raw.as_ptr(),
                    local_idx.as_ptr(),
                    local_idx.len(),
                    remote.inner.raw.as_ptr(),
                    remote_idx.as_ptr(),
                    remote_idx.len(),
                    &mut raw,
                    argp
                )
            )
        }?;
        let raw = NonNull::new(raw).ok_or(NixlError::NullHandle("nixl_capi_make_xfer_req"))?;
        Ok(XferReq {
            raw,
            agent: Rc::clone(&self.inner),
            op,
            bytes,
            descs: local_idx.len(),
            _prepped: Some((local.clone(), remote.clone())),
            _regs: Vec::new(),
            _args: args,
        })
    }

    /// Creates a request directly from two descriptor lists (NIXL's simple path).
    pub fn create_xfer_req(
        &self,
        op: XferOp,
        local: &XferDescList,
        remote: &XferDescList,
        remote_agent: &str,
        args: Option<Rc<OptArgs>>,
    ) -> Result<XferReq, NixlError> {
        if local.len() != remote.len() || local.bytes() != remote.bytes() {
            return Err(NixlError::Invalid(format!(
                "local ({} descs, {} B) and remote ({} descs, {} B) lists differ",
                local.len(),
                local.bytes(),
                remote.len(),
                remote.bytes()
            )));
        }
        let regs = local.local_regs(&self.inner)?;
        self.check_args(args.as_deref())?;
        let name = cstring("nixl_capi_create_xfer_req", remote_agent)?;
        let argp = args.as_ref().map_or(ptr::null_mut(), |a| a.raw.as_ptr());
        let mut raw: sys::nixl_capi_xfer_req_t = ptr::null_mut();
        // SAFETY: live agent and lists, valid C string and out-pointer.
        unsafe {
            nixl_call!(
                self.inner.nixl.0,
                nixl_capi_create_xfer_req(
                    self.inner.ptr(),
                    op.to_raw(),
                    local.raw.as_ptr(),
                    remote.raw.as_ptr(),
                    name.as_ptr(),
                    &mut raw,
                    argp
                )
            )
        }?;
        let raw = NonNull::new(raw).ok_or(NixlError::NullHandle("nixl_capi_create_xfer_req"))?;
        Ok(XferReq {
            raw,
            agent: Rc::clone(&self.inner),
            op,
            bytes: local.bytes(),
            descs: local.len(),
            _prepped: None,
            _regs: regs,
            _args: args,
        })
    }
}

impl Agent {
    /// Refuses arguments whose backends belong to another agent.
    fn check_args(&self, args: Option<&OptArgs>) -> Result<(), NixlError> {
        match args {
            Some(a) => a._backends.iter().try_for_each(|b| self.check_mine(b)),
            None => Ok(()),
        }
    }
}

impl XferReq {
    /// Starts (or restarts, once complete) the transfer.
    #[inline]
    pub fn post(&self) -> Result<Status, NixlError> {
        // SAFETY: live agent and request; null opt args are allowed.
        unsafe {
            nixl_call!(self.agent.nixl.0, nixl_capi_post_xfer_req(self.agent.ptr(), self.raw.as_ptr(), ptr::null_mut()))
        }
    }

    /// Polls the request: `Done`, `InProgress`, or the error that ended it.
    #[inline]
    pub fn status(&self) -> Result<Status, NixlError> {
        // SAFETY: live agent and request.
        unsafe { nixl_call!(self.agent.nixl.0, nixl_capi_get_xfer_status(self.agent.ptr(), self.raw.as_ptr())) }
    }

    /// Polls until done, an error, or `timeout` (an error naming the wait).
    pub fn wait(&self, timeout: Duration) -> Result<(), NixlError> {
        self.wait_since(Instant::now(), timeout)
    }

    /// Polls until done, an error, or `timeout` counted from `start` (the
    /// post): the one poll loop kvprobe uses. The clock is read only every
    /// 4096 polls, so the loop itself adds nothing measurable.
    #[inline]
    pub fn wait_since(&self, start: Instant, timeout: Duration) -> Result<(), NixlError> {
        let mut spins: u32 = 0;
        while self.status()? == Status::InProgress {
            spins = spins.wrapping_add(1);
            if spins % 4096 == 0 && start.elapsed() > timeout {
                return Err(NixlError::Timeout { what: format!("{} of {} B", self.op, self.bytes), limit: timeout });
            }
        }
        Ok(())
    }

    /// NIXL's telemetry for the last completed post, `None` when the agent
    /// does not capture telemetry.
    pub fn telemetry(&self) -> Result<Option<Telemetry>, NixlError> {
        let mut t = sys::nixl_capi_xfer_telemetry_s::default();
        // SAFETY: live agent and request; t is a valid struct to fill.
        let r = unsafe {
            nixl_call!(self.agent.nixl.0, nixl_capi_get_xfer_telemetry(self.agent.ptr(), self.raw.as_ptr(), &mut t))
        };
        match r {
            Ok(_) => Ok(Some(Telemetry {
                post_duration_us: t.post_duration_us,
                xfer_duration_us: t.xfer_duration_us,
                total_bytes: t.total_bytes,
                desc_count: t.desc_count,
            })),
            Err(NixlError::Call { status, .. }) if status.0 == sys::NIXL_CAPI_ERROR_NO_TELEMETRY => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// NIXL's own estimate of the duration, when the backend offers one.
    pub fn estimated_cost_us(&self) -> Result<Option<(i64, i64)>, NixlError> {
        let (mut d, mut m) = (0i64, 0i64);
        let mut method: sys::nixl_capi_cost_t = 0;
        // SAFETY: live agent and request, valid out-pointers.
        let r = unsafe {
            nixl_call!(
                self.agent.nixl.0,
                nixl_capi_estimate_xfer_cost(
                    self.agent.ptr(),
                    self.raw.as_ptr(),
                    ptr::null_mut(),
                    &mut d,
                    &mut m,
                    &mut method
                )
            )
        };
        match r {
            Ok(_) => Ok(Some((d, m))),
            Err(NixlError::Call { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Bytes moved per post.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Descriptors per post.
    pub fn descs(&self) -> usize {
        self.descs
    }

    /// Direction.
    pub fn op(&self) -> XferOp {
        self.op
    }
}

impl Drop for XferReq {
    fn drop(&mut self) {
        let lib = &self.agent.nixl.0;
        // SAFETY: live agent and request; released once. A request still in
        // flight is cancelled by NIXL or the release fails (recorded).
        match unsafe { nixl_call!(lib, nixl_capi_release_xfer_req(self.agent.ptr(), self.raw.as_ptr())) } {
            Ok(_) => {
                // SAFETY: released above; frees the wrapper only.
                if let Err(e) = unsafe { nixl_call!(lib, nixl_capi_destroy_xfer_req(self.raw.as_ptr())) } {
                    record_drop_error("destroy xfer req", &e);
                }
            }
            // The wrapper still holds NIXL resources and cannot be freed: leak it.
            Err(e) => record_drop_error("release xfer req", &e),
        }
    }
}
