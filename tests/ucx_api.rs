//! The safe UCX layer against the UCX NIXL bundles: located through NIXL's UCX
//! plugin, two workers in one process, real get and put with remote keys,
//! the request's protocol string and the endpoint's lanes, the device view.
//!
//! SAFETY (every `unsafe` block below touches a HostBuffer): each transfer is
//! waited for before the buffers are looked at or changed.

mod common;

use std::rc::Rc;
use std::time::{Duration, Instant};

use kvprobe::locate::{Inputs, locate, locate_ucx};
use kvprobe::mem::{HostBuffer, Region};
use kvprobe::ucx::{Context, Endpoint, MemHandle, RemoteKey, Request, Ucx, Worker, info};

fn ucx() -> Ucx {
    common::require_nixl();
    let nixl = locate(&Inputs::from_env(None)).expect("NIXL located");
    let loc = locate_ucx(None, Some(&nixl)).expect("UCX located");
    assert!(loc.found_by.contains("NIXL"), "kvprobe must pick the UCX NIXL links: {loc:?}");
    Ucx::open(&loc.lib).expect("UCX loads")
}

/// Progresses both workers until the request ends.
fn finish(req: Option<Request>, a: &Worker, b: &Worker) {
    let Some(req) = req else { return };
    let start = Instant::now();
    while !req.is_done().unwrap() {
        a.progress();
        b.progress();
        assert!(start.elapsed() < Duration::from_secs(20), "request stuck");
    }
}

#[test]
fn get_and_put_move_the_right_bytes_and_say_how() {
    let ucx = ucx();
    assert!(ucx.version().starts_with("1."), "{}", ucx.version());
    let settings = vec![("RNDV_THRESH".to_string(), "inf".to_string())];
    let (ca, cb) =
        (Context::new(&ucx, "kvprobe-test-a", &settings).unwrap(), Context::new(&ucx, "kvprobe-test-b", &[]).unwrap());
    assert!(
        ca.applied.iter().any(|(k, _)| k == "RNDV_THRESH") || ca.not_applied.iter().any(|(k, _)| k == "RNDV_THRESH")
    );
    assert!(ca.print_info().contains("UCP context"));
    let (wa, wb) = (Worker::new(&ca).unwrap(), Worker::new(&cb).unwrap());
    let len = 1 << 20;
    let (ba, bb) = (Rc::new(HostBuffer::new(len).unwrap()), Rc::new(HostBuffer::new(len).unwrap()));
    let (ma, mb) = (MemHandle::map(&ca, Rc::clone(&ba)).unwrap(), MemHandle::map(&cb, Rc::clone(&bb)).unwrap());
    let ep = Endpoint::connect(&wa, &wb.address().unwrap(), false).unwrap();
    let rkey = RemoteKey::unpack(&ep, &mb.pack_rkey().unwrap()).unwrap();
    let lanes = ep.lanes().unwrap();
    assert!(!lanes.is_empty(), "the endpoint has lanes");

    // GET: b -> a
    // SAFETY: see the file comment.
    unsafe { bb.fill(0, len, 11) }.unwrap();
    // SAFETY: see the file comment.
    unsafe { ba.poison(0, len) }.unwrap();
    let req = ep.get(&ma, 0, len, bb.addr() as u64, &rkey, true).unwrap().expect("a request was forced");
    let how = req.info().unwrap();
    eprintln!("request info: {how}\nlanes: {lanes:?}");
    assert!(!how.is_empty());
    finish(Some(req), &wa, &wb);
    // SAFETY: see the file comment.
    assert!(unsafe { ba.verify(0, len, 11) }.unwrap().ok(), "GET moved the wrong bytes (protocol: {how})");

    // PUT: a -> b, at an offset, then flush for remote completion
    // SAFETY: see the file comment.
    unsafe { ba.fill(0, len, 12) }.unwrap();
    // SAFETY: see the file comment.
    unsafe { bb.poison(0, len) }.unwrap();
    finish(ep.put(&ma, 4096, 8192, bb.addr() as u64 + 4096, &rkey, false).unwrap(), &wa, &wb);
    finish(ep.flush().unwrap(), &wa, &wb);
    // SAFETY: see the file comment.
    assert!(unsafe { bb.verify(4096, 8192, 12) }.unwrap().ok());
    // SAFETY: see the file comment.
    assert!(unsafe { bb.read(0, 4096) }.unwrap().iter().all(|&x| x == kvprobe::mem::POISON));

    // refused before UCX sees them
    assert!(ep.get(&ma, len - 10, 100, bb.addr() as u64, &rkey, false).is_err());
    assert!(ep.get(&mb, 0, 100, bb.addr() as u64, &rkey, false).is_err(), "a map of another context");
}

#[test]
fn the_device_view_lists_this_hosts_transports() {
    let ucx = ucx();
    let v = info::device_view(&ucx).unwrap();
    let has = |t: &str, d: &str| v.resources.iter().any(|r| r.transport == t && r.device == d);
    assert!(has("tcp", "lo"), "{v:#?}");
    assert!(has("posix", "memory") || has("sysv", "memory"), "{v:#?}");
    assert!(v.components.iter().any(|c| c.name == "tcp"));
    assert!(v.resources.iter().all(|r| ["network", "intra-node", "accelerator", "self"].contains(&r.kind.as_str())));
}

#[test]
fn a_second_ucx_build_is_refused() {
    let ucx = ucx();
    let _keep = ucx.clone();
    // any other file standing in for "a different libucp": refused before loading
    let e = Ucx::open(std::path::Path::new("/lib/x86_64-linux-gnu/libc.so.6")).unwrap_err();
    assert!(e.to_string().contains("Two UCX builds"), "{e}");
}
