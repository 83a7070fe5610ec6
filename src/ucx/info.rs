//! The device view (`ucx_info -d`): UCT components, their memory domains and
//! the transport resources each offers, from UCX's own API.

use std::ptr;

use serde::{Deserialize, Serialize};
use ucx_sys as sys;

use super::Ucx;
use super::error::{UcxError, ucx_call};

/// One transport resource: a transport on a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resource {
    /// UCT component (`tcp`, `posix`, `ib`, `cuda_ipc`...).
    pub component: String,
    /// Memory domain (`tcp`, `mlx5_0`, `rdmap0s6`...).
    pub md: String,
    /// Transport (`tcp`, `rc_mlx5`, `srd`, `cma`, `cuda_ipc`...).
    pub transport: String,
    /// Device (`lo`, `eth0`, `mlx5_0:1`, `memory`, `cuda`...).
    pub device: String,
    /// `network`, `intra-node`, `accelerator` or `self`.
    pub kind: String,
}

/// A UCT component and how many memory domains it found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Component {
    /// Name.
    pub name: String,
    /// Memory domains found (0: the component loaded but found no device).
    pub mds: Vec<String>,
}

/// Everything the UCT queries report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceView {
    /// Components in the order UCX lists them.
    pub components: Vec<Component>,
    /// Transport resources.
    pub resources: Vec<Resource>,
    /// Memory domains that could not be opened, with the reason.
    pub md_errors: Vec<(String, String)>,
}

fn name(buf: &[std::os::raw::c_char]) -> String {
    // SAFETY: UCX fills fixed-size name arrays with NUL-terminated strings; the
    // slice bounds the read even if the terminator were missing.
    let bytes: Vec<u8> = buf.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

fn kind(t: sys::uct_device_type_t) -> &'static str {
    match t {
        sys::UCT_DEVICE_TYPE_NET => "network",
        sys::UCT_DEVICE_TYPE_SHM => "intra-node",
        sys::UCT_DEVICE_TYPE_ACC => "accelerator",
        sys::UCT_DEVICE_TYPE_SELF => "self",
        _ => "other",
    }
}

/// Lists components, memory domains and transport resources.
pub fn device_view(ucx: &Ucx) -> Result<DeviceView, UcxError> {
    let lib = &ucx.0;
    let api = &lib.raw.api;
    let mut comps: *mut sys::uct_component_h = ptr::null_mut();
    let mut n: u32 = 0;
    // SAFETY: valid out-pointers.
    unsafe { ucx_call!(lib, uct_query_components(&mut comps, &mut n)) }?;
    let mut view = DeviceView::default();
    for i in 0..n as usize {
        // SAFETY: i < n entries returned by uct_query_components.
        let comp = unsafe { *comps.add(i) };
        let mut attr = sys::uct_component_attr_t {
            field_mask: (sys::UCT_COMPONENT_ATTR_FIELD_NAME | sys::UCT_COMPONENT_ATTR_FIELD_MD_RESOURCE_COUNT) as u64,
            ..Default::default()
        };
        // SAFETY: live component, valid attr.
        if unsafe { ucx_call!(lib, uct_component_query(comp, &mut attr)) }.is_err() {
            continue;
        }
        let cname = name(&attr.name);
        let mut mds = vec![sys::uct_md_resource_desc_t::default(); attr.md_resource_count as usize];
        attr.field_mask = sys::UCT_COMPONENT_ATTR_FIELD_MD_RESOURCES as u64;
        attr.md_resources = mds.as_mut_ptr();
        // SAFETY: md_resources has md_resource_count slots.
        if !mds.is_empty() && unsafe { ucx_call!(lib, uct_component_query(comp, &mut attr)) }.is_err() {
            mds.clear();
        }
        let md_names: Vec<String> = mds.iter().map(|m| name(&m.md_name)).collect();
        for md_name in &md_names {
            match md_resources(ucx, comp, md_name) {
                Ok(rs) => view.resources.extend(rs.into_iter().map(|(t, d, k)| Resource {
                    component: cname.clone(),
                    md: md_name.clone(),
                    transport: t,
                    device: d,
                    kind: k.to_string(),
                })),
                Err(e) => view.md_errors.push((md_name.clone(), e.to_string())),
            }
        }
        view.components.push(Component { name: cname, mds: md_names });
    }
    // SAFETY: releases the list uct_query_components returned.
    unsafe { api.uct_release_component_list(comps) };
    Ok(view)
}

fn md_resources(
    ucx: &Ucx,
    comp: sys::uct_component_h,
    md_name: &str,
) -> Result<Vec<(String, String, &'static str)>, UcxError> {
    let lib = &ucx.0;
    let api = &lib.raw.api;
    let mut config: *mut sys::uct_md_config_t = ptr::null_mut();
    // SAFETY: live component, defaults (null prefix and file), valid out-pointer.
    unsafe { ucx_call!(lib, uct_md_config_read(comp, ptr::null(), ptr::null(), &mut config)) }?;
    let cname = std::ffi::CString::new(md_name).map_err(|_| UcxError::Invalid(md_name.into()))?;
    let mut md: sys::uct_md_h = ptr::null_mut();
    // SAFETY: live component and config, valid name and out-pointer.
    let opened = unsafe { ucx_call!(lib, uct_md_open(comp, cname.as_ptr(), config.cast(), &mut md)) };
    // SAFETY: read above, released once (the open md keeps what it needs).
    unsafe { api.uct_config_release(config.cast()) };
    opened?;
    let mut res: *mut sys::uct_tl_resource_desc_t = ptr::null_mut();
    let mut n: u32 = 0;
    // SAFETY: live md, valid out-pointers.
    let q = unsafe { ucx_call!(lib, uct_md_query_tl_resources(md, &mut res, &mut n)) };
    let mut out = Vec::new();
    if q.is_ok() {
        for i in 0..n as usize {
            // SAFETY: i < n descriptors returned above.
            let r = unsafe { &*res.add(i) };
            out.push((name(&r.tl_name), name(&r.dev_name), kind(r.dev_type)));
        }
        // SAFETY: releases the list returned above.
        unsafe { api.uct_release_tl_resource_list(res) };
    }
    // SAFETY: opened above, closed once.
    unsafe { api.uct_md_close(md) };
    q.map(|()| out)
}
