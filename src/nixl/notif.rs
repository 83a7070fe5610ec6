//! Notifications: short messages a transfer (or `gen_notif`) delivers to the peer.

use std::ptr::{self, NonNull};

use nixl_sys as sys;

use super::agent::Agent;
use super::error::{NixlError, nixl_call, record_drop_error};
use super::{Nixl, copy_cstr, cstring};

/// Notifications as (sending agent, messages in arrival order).
pub type Notifications = Vec<(String, Vec<Vec<u8>>)>;

/// A reusable map that receives notifications.
pub struct NotifMap {
    raw: NonNull<sys::nixl_capi_notif_map_s>,
    nixl: Nixl,
}

impl std::fmt::Debug for NotifMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotifMap").finish_non_exhaustive()
    }
}

impl NotifMap {
    /// An empty map.
    pub fn new(nixl: &Nixl) -> Result<NotifMap, NixlError> {
        let mut raw: sys::nixl_capi_notif_map_t = ptr::null_mut();
        // SAFETY: valid out-pointer.
        unsafe { nixl_call!(nixl.0, nixl_capi_create_notif_map(&mut raw)) }?;
        let raw = NonNull::new(raw).ok_or(NixlError::NullHandle("nixl_capi_create_notif_map"))?;
        Ok(NotifMap { raw, nixl: nixl.clone() })
    }

    /// Fetches the notifications that arrived since the last call, as
    /// (sending agent, messages) in arrival order per agent.
    pub fn fetch(&mut self, agent: &Agent) -> Result<Notifications, NixlError> {
        if !std::sync::Arc::ptr_eq(&agent.inner.nixl.0, &self.nixl.0) {
            return Err(NixlError::Invalid(
                "the agent and the notification map come from different NIXL libraries".into(),
            ));
        }
        let lib = &self.nixl.0;
        // SAFETY: live map.
        unsafe { nixl_call!(lib, nixl_capi_notif_map_clear(self.raw.as_ptr())) }?;
        // SAFETY: live agent and map; null opt args are allowed.
        unsafe { nixl_call!(lib, nixl_capi_get_notifs(agent.inner.ptr(), self.raw.as_ptr(), ptr::null_mut())) }?;
        let mut n = 0usize;
        // SAFETY: live map, valid out-pointer.
        unsafe { nixl_call!(lib, nixl_capi_notif_map_size(self.raw.as_ptr(), &mut n)) }?;
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let mut name_p: *const std::os::raw::c_char = ptr::null();
            // SAFETY: i < size; the name stays valid while the map is unchanged.
            unsafe { nixl_call!(lib, nixl_capi_notif_map_get_agent_at(self.raw.as_ptr(), i, &mut name_p)) }?;
            // SAFETY: valid C string owned by the map.
            let name = unsafe { copy_cstr(name_p) };
            let cname = cstring("nixl_capi_notif_map_get_notifs_size", &name)?;
            let mut m = 0usize;
            // SAFETY: live map, valid C string and out-pointer.
            unsafe { nixl_call!(lib, nixl_capi_notif_map_get_notifs_size(self.raw.as_ptr(), cname.as_ptr(), &mut m)) }?;
            let mut msgs = Vec::with_capacity(m);
            for j in 0..m {
                let mut data: *const std::ffi::c_void = ptr::null();
                let mut len = 0usize;
                // SAFETY: j < count for this agent; data stays valid while the map is unchanged.
                unsafe {
                    nixl_call!(
                        lib,
                        nixl_capi_notif_map_get_notif(self.raw.as_ptr(), cname.as_ptr(), j, &mut data, &mut len)
                    )
                }?;
                let msg = if data.is_null() || len == 0 {
                    Vec::new()
                } else {
                    // SAFETY: the library points at len valid bytes it owns; copied now.
                    unsafe { std::slice::from_raw_parts(data.cast::<u8>(), len) }.to_vec()
                };
                msgs.push(msg);
            }
            out.push((name, msgs));
        }
        Ok(out)
    }
}

impl Drop for NotifMap {
    fn drop(&mut self) {
        // SAFETY: created by the library, destroyed once.
        if let Err(e) = unsafe { nixl_call!(self.nixl.0, nixl_capi_destroy_notif_map(self.raw.as_ptr())) } {
            record_drop_error("destroy notif map", &e);
        }
    }
}
