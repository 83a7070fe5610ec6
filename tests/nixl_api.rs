//! The safe NIXL layer against the real library: two agents in one process,
//! real registrations and transfers, both request paths, notifications,
//! telemetry, metadata exchange through NIXL's own listen thread, and the
//! ownership rules that keep local memory sound.
//!
//! SAFETY (every `unsafe` block below touches a HostBuffer): each test posts
//! one transfer at a time and waits for it before looking at or changing a
//! buffer, so no transfer is in flight during those accesses.

mod common;

use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kvprobe::locate::{Inputs, locate};
use kvprobe::mem::{HostBuffer, POISON, Region};
use kvprobe::nixl::{
    Agent, AgentConfig, Backend, MemType, Nixl, NotifMap, OptArgs, RegDescList, Registration, XferDescList, XferOp,
    error,
};

/// Serialises the tests of this file: `error::take_drop_errors` is process-wide.
static SERIAL: Mutex<()> = Mutex::new(());

fn nixl() -> Nixl {
    common::require_nixl();
    let loc = locate(&Inputs::from_env(None)).expect("NIXL located");
    Nixl::open(&loc.lib).expect("NIXL loads")
}

struct Side {
    buf: Rc<HostBuffer>,
    reg: Registration,
    backend: Backend,
    agent: Agent,
}

fn side(nixl: &Nixl, name: &str, cfg: &AgentConfig, len: usize) -> Side {
    let agent = Agent::new(nixl, name, cfg).unwrap();
    assert!(agent.available_plugins().unwrap().iter().any(|p| p == "UCX"));
    let backend = agent.create_backend("UCX", &BTreeMap::new()).unwrap();
    let params = agent.backend_params(&backend).unwrap();
    assert!(params.mem_types.contains(&MemType::Dram), "{params:?}");
    let buf = Rc::new(HostBuffer::new(len).unwrap());
    let mut dl = RegDescList::new(nixl, MemType::Dram).unwrap();
    dl.add(buf.addr(), buf.len(), 0).unwrap();
    let reg = agent.register_owned(Rc::clone(&buf), dl, Some(&backend)).unwrap();
    Side { buf, reg, backend, agent }
}

fn wait_notifs(map: &mut NotifMap, agent: &Agent, from: &str, want: &[u8], count: usize) -> usize {
    let start = Instant::now();
    let mut seen = 0;
    while start.elapsed() < Duration::from_secs(10) {
        for (who, msgs) in map.fetch(agent).unwrap() {
            assert_eq!(who, from);
            seen += msgs.iter().filter(|m| m.as_slice() == want).count();
        }
        if seen >= count {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    seen
}

#[test]
fn both_request_paths_move_and_notify_correctly() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let _ = error::take_drop_errors();
    let nixl = nixl();
    let cfg = AgentConfig::default();
    let len = 1 << 20;
    let init = side(&nixl, "api-test-initiator", &cfg, len);
    let targ = side(&nixl, "api-test-target", &cfg, len);
    let md = targ.agent.local_metadata().unwrap();
    assert!(!md.is_empty());
    let remote = init.agent.load_remote_metadata(&md).unwrap();
    assert_eq!(remote, "api-test-target");
    assert!(init.agent.has_remote_metadata("api-test-target").unwrap());
    assert!(!init.agent.has_remote_metadata("nobody").unwrap());

    let block = 4096;
    let n = len / block;
    let mut local = XferDescList::new(&nixl, MemType::Dram).unwrap();
    local.add_local_strided(&init.reg, init.buf.addr(), block, n, 0).unwrap();
    let mut far = XferDescList::new(&nixl, MemType::Dram).unwrap();
    far.add_strided(targ.buf.addr(), block, n, 0).unwrap();
    assert_eq!(local.library_count().unwrap(), n);
    assert_eq!(far.bytes(), len as u64);

    let mut notifs = NotifMap::new(&nixl).unwrap();
    for (i, prepped) in [true, false].into_iter().enumerate() {
        for op in [XferOp::Read, XferOp::Write] {
            let tag = format!("api:{i}:{op}");
            let args = Rc::new(OptArgs::with_backend(&nixl, &init.backend).unwrap());
            args.set_notification(tag.as_bytes()).unwrap();
            assert!(args.has_notification().unwrap());
            let req = if prepped {
                let lp = init.agent.prep_local(&local, Some(&init.backend)).unwrap();
                let rp = init.agent.prep_remote(&remote, &far, Some(&init.backend)).unwrap();
                // every other block, in reverse order on the far side: indices matter
                let li: Vec<i32> = (0..n as i32).step_by(2).collect();
                let ri: Vec<i32> = li.iter().rev().copied().collect();
                init.agent.make_xfer_req(op, &lp, &li, &rp, &ri, (li.len() * block) as u64, Some(args)).unwrap()
            } else {
                init.agent.create_xfer_req(op, &local, &far, &remote, Some(args)).unwrap()
            };
            let seed = 1000 + i as u64 * 10 + op as u64;
            let (src, dst) = if op == XferOp::Read { (&targ.buf, &init.buf) } else { (&init.buf, &targ.buf) };
            // SAFETY: see the file comment.
            unsafe { src.fill(0, len, seed) }.unwrap();
            // SAFETY: see the file comment.
            unsafe { dst.poison(0, len) }.unwrap();
            req.post().unwrap();
            req.wait(Duration::from_secs(30)).unwrap();
            assert_eq!(wait_notifs(&mut notifs, &targ.agent, "api-test-initiator", tag.as_bytes(), 1), 1);
            if prepped {
                // local block k (k even) pairs with far block n-2-k
                for k in (0..n).step_by(2) {
                    let (lo, fo) = (k * block, (n - 2 - k) * block);
                    let (s_off, d_off) = if op == XferOp::Read { (fo, lo) } else { (lo, fo) };
                    let mut want = vec![0u8; block];
                    kvprobe::mem::fill_pattern(&mut want, s_off as u64, seed);
                    // SAFETY: see the file comment.
                    assert_eq!(unsafe { dst.read(d_off, block) }.unwrap(), want, "{op}: block {k} landed wrong");
                }
                // odd blocks were not in the request, on either side: still poisoned
                for k in (1..n).step_by(2) {
                    // SAFETY: see the file comment.
                    let got = unsafe { dst.read(k * block, block) }.unwrap();
                    assert!(got.iter().all(|&b| b == POISON), "{op}: block {k} was written");
                }
            } else {
                // SAFETY: see the file comment.
                assert!(unsafe { dst.verify(0, len, seed) }.unwrap().ok(), "{op} via create_xfer_req");
            }
            let t = req.telemetry().unwrap().expect("telemetry is captured");
            assert_eq!(t.total_bytes, req.bytes());
            assert!(t.desc_count >= 1);
        }
    }

    // a notification without a transfer
    init.agent.send_notification(&remote, b"hello").unwrap();
    assert_eq!(wait_notifs(&mut notifs, &targ.agent, "api-test-initiator", b"hello", 1), 1);

    init.agent.invalidate_remote(&remote).unwrap();
    assert!(!init.agent.has_remote_metadata(&remote).unwrap());
    drop((local, far, notifs, init, targ));
    assert_eq!(error::take_drop_errors(), Vec::<String>::new());
}

#[test]
fn a_request_keeps_its_local_memory_registered_and_mapped() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let nixl = nixl();
    let len = 1 << 20;
    let init = side(&nixl, "api-uaf-initiator", &AgentConfig::default(), len);
    let targ = side(&nixl, "api-uaf-target", &AgentConfig::default(), len);
    let remote = init.agent.load_remote_metadata(&targ.agent.local_metadata().unwrap()).unwrap();
    let mut l = XferDescList::new(&nixl, MemType::Dram).unwrap();
    l.add_local(&init.reg, init.buf.addr(), len, 0).unwrap();
    let mut r = XferDescList::new(&nixl, MemType::Dram).unwrap();
    r.add(targ.buf.addr(), len, 0).unwrap();
    let lp = init.agent.prep_local(&l, None).unwrap();
    let rp = init.agent.prep_remote(&remote, &r, None).unwrap();
    let req = init.agent.make_xfer_req(XferOp::Read, &lp, &[0], &rp, &[0], len as u64, None).unwrap();
    let old = init.buf.addr();
    // Drop every handle the test holds on the initiator's memory.
    let Side { buf, reg, backend, agent } = init;
    drop((buf, reg, l, lp));
    // A new buffer must not land on the old one: the request still holds it.
    let fresh = HostBuffer::new(len).unwrap();
    assert_ne!(fresh.addr(), old, "the request's destination was unmapped while the request lived");
    // SAFETY: see the file comment.
    unsafe { targ.buf.fill(0, len, 5) }.unwrap();
    req.post().unwrap();
    req.wait(Duration::from_secs(30)).unwrap();
    // SAFETY: see the file comment (fresh was never registered).
    assert!(unsafe { fresh.read(0, len) }.unwrap().iter().all(|&b| b == 0), "an unrelated buffer was written");
    drop((req, rp, r, backend, agent, targ));
}

#[test]
fn metadata_travels_through_the_listen_thread() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let nixl = nixl();
    let free_port = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (port, port2) = (free_port(), free_port());
    let listening = |p| AgentConfig { listen_thread: true, listen_port: p, ..AgentConfig::default() };
    let targ = side(&nixl, "api-listen-target", &listening(port), 1 << 16);
    // the fetching agent needs a listen thread too: it carries the exchange
    let init = side(&nixl, "api-listen-initiator", &listening(port2), 1 << 16);
    init.agent.fetch_metadata_from("api-listen-target", "127.0.0.1", port).unwrap();
    let start = Instant::now();
    while !init.agent.has_remote_metadata("api-listen-target").unwrap() {
        assert!(start.elapsed() < Duration::from_secs(15), "metadata never arrived through the listen thread");
        std::thread::sleep(Duration::from_millis(20));
    }
    // and it is usable: one checked READ
    let mut l = XferDescList::new(&nixl, MemType::Dram).unwrap();
    l.add_local(&init.reg, init.buf.addr(), 1 << 16, 0).unwrap();
    let mut r = XferDescList::new(&nixl, MemType::Dram).unwrap();
    r.add(targ.buf.addr(), 1 << 16, 0).unwrap();
    // SAFETY: see the file comment.
    unsafe { targ.buf.fill(0, 1 << 16, 77) }.unwrap();
    let req = init.agent.create_xfer_req(XferOp::Read, &l, &r, "api-listen-target", None).unwrap();
    req.post().unwrap();
    req.wait(Duration::from_secs(30)).unwrap();
    // SAFETY: see the file comment.
    assert!(unsafe { init.buf.verify(0, 1 << 16, 77) }.unwrap().ok());
}

#[test]
fn bad_requests_are_errors_not_crashes() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let nixl = nixl();
    let a = side(&nixl, "api-bad", &AgentConfig::default(), 1 << 16);
    let b = side(&nixl, "api-bad-other", &AgentConfig::default(), 1 << 16);
    let mut l = XferDescList::new(&nixl, MemType::Dram).unwrap();
    l.add_local(&a.reg, a.buf.addr(), 4096, 0).unwrap();
    let mut r = XferDescList::new(&nixl, MemType::Dram).unwrap();
    r.add(a.buf.addr(), 4096, 0).unwrap();
    // unknown remote agent
    let e = a.agent.create_xfer_req(XferOp::Read, &l, &r, "nobody", None).unwrap_err();
    assert!(e.to_string().contains("nixl_capi_create_xfer_req"), "{e}");
    // garbage metadata
    let e = a.agent.load_remote_metadata(b"not metadata").unwrap_err();
    assert!(e.to_string().contains("nixl_capi_load_remote_md"), "{e}");
    // an unknown plugin
    let e = a.agent.create_backend("NO_SUCH_PLUGIN", &BTreeMap::new()).unwrap_err();
    assert!(e.to_string().contains("nixl_capi_create_backend"), "{e}");
    // a region outside the buffer that owns it, and one whose end overflows
    let mut dl = RegDescList::new(&nixl, MemType::Dram).unwrap();
    dl.add(a.buf.addr() + 4096, 1 << 16, 0).unwrap();
    assert!(a.agent.register_owned(Rc::clone(&a.buf), dl, None).is_err());
    let mut dl = RegDescList::new(&nixl, MemType::Dram).unwrap();
    assert!(dl.add(a.buf.addr(), usize::MAX, 0).is_err());
    // local descriptors outside the registration, or not registered at all
    let mut bad = XferDescList::new(&nixl, MemType::Dram).unwrap();
    assert!(bad.add_local(&a.reg, a.buf.addr() + (1 << 16) - 100, 4096, 0).is_err());
    let e = a.agent.prep_local(&r, None).unwrap_err();
    assert!(e.to_string().contains("add_local"), "{e}");
    let e = a.agent.create_xfer_req(XferOp::Read, &r, &r, "nobody", None).unwrap_err();
    assert!(e.to_string().contains("add_local"), "{e}");
    // handles of another agent
    let mut other = XferDescList::new(&nixl, MemType::Dram).unwrap();
    other.add_local(&b.reg, b.buf.addr(), 4096, 0).unwrap();
    let e = a.agent.prep_local(&other, None).unwrap_err();
    assert!(e.to_string().contains("another agent"), "{e}");
    let e = a.agent.prep_local(&l, Some(&b.backend)).unwrap_err();
    assert!(e.to_string().contains("another agent"), "{e}");
    // index lists of different lengths, out of range, or sides swapped
    let lp = a.agent.prep_local(&l, None).unwrap();
    let e = a.agent.make_xfer_req(XferOp::Read, &lp, &[0], &lp, &[0, 0], 4096, None).unwrap_err();
    assert!(e.to_string().contains("equal length"), "{e}");
    let e = a.agent.make_xfer_req(XferOp::Read, &lp, &[5], &lp, &[0], 4096, None).unwrap_err();
    assert!(e.to_string().contains("out of range"), "{e}");
    let e = a.agent.make_xfer_req(XferOp::Read, &lp, &[0], &lp, &[0], 4096, None).unwrap_err();
    assert!(e.to_string().contains("local prepared list then a remote one"), "{e}");
}
