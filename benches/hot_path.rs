//! The per-transfer hot path, against the real NIXL and a real target process:
//!
//! - `desc_list/build/N`: build (and free) a transfer descriptor list of N
//!   descriptors, as done for every request on NIXL's create path;
//! - `request/make/N`: `make_xfer_req` from prepared lists by N indices, then
//!   release: vLLM's per-request cost;
//! - `transfer/post_poll/4KiB_shm`: post one 4 KiB READ to another process and
//!   poll it to completion, over shared memory only (UCX_TLS=shm with
//!   ucx_error_handling_mode=none, which UCX needs for shared-memory AM lanes).
//!
//! Needs NIXL (debug/setup.sh). Run: cargo bench --bench hot_path

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::mpsc::RecvTimeoutError;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use kvprobe::engine::initiator::Connection;
use kvprobe::locate::{Inputs, locate};
use kvprobe::mem::Region;
use kvprobe::nixl::{AgentConfig, MemType, Nixl, Status, XferDescList, XferOp};
use kvprobe::peer::{BackendKind, TargetSetup};

const BUF: u64 = 64 << 20;

struct Rig {
    conn: Connection,
    nixl: Nixl,
    _target: kvprobe::child::Child,
}

fn rig() -> Rig {
    let loc = locate(&Inputs::from_env(None)).unwrap_or_else(|e| panic!("{e}"));
    let mut env = vec![
        ("UCX_TLS".to_string(), "shm".to_string()),
        ("UCX_NET_DEVICES".to_string(), "lo".to_string()),
        ("KVPROBE_TOKEN".to_string(), "bench".to_string()),
    ];
    if let Some(d) = &loc.plugin_dir {
        env.push(("NIXL_PLUGIN_DIR".to_string(), d.display().to_string()));
    }
    for (k, v) in &env {
        // SAFETY: set once, before NIXL or UCX is loaded in this process and
        // before any thread that reads the environment exists.
        unsafe { std::env::set_var(k, v) };
    }
    let lib = loc.lib.display().to_string();
    let args: Vec<String> =
        ["__target", "--listen", "127.0.0.1:0", "--nixl-lib", &lib].iter().map(|s| s.to_string()).collect();
    let mut target = kvprobe::child::spawn_exe(
        std::path::Path::new(env!("CARGO_BIN_EXE_kvprobe")),
        "target",
        &args,
        &env,
        false,
        None,
        None,
    )
    .expect("start target");
    let lines = target.stdout_lines().expect("target stdout");
    let addr = loop {
        match lines.recv_timeout(Duration::from_secs(30)) {
            Ok(l) => {
                let v: serde_json::Value = serde_json::from_str(&l).unwrap_or_default();
                if v["event"] == "listening" {
                    break v["addr"].as_str().unwrap().to_string();
                }
            }
            Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => panic!("target did not start"),
        }
    };
    let nixl = Nixl::open(&loc.lib).expect("NIXL loads");
    let setup = TargetSetup {
        agent: AgentConfig::default(),
        backend: "UCX".into(),
        backend_params: BTreeMap::from([("ucx_error_handling_mode".to_string(), "none".to_string())]),
        buffer_bytes: BUF,
        backends: vec![BackendKind::NixlUcx],
        ucx: None,
        hugepages: true,
        kv: None,
        target_mem: Default::default(),
        initiator_mem: Default::default(),
        initiator_agent: None,
    };
    let conn =
        Connection::open(Some(&nixl), &addr, "bench", &setup, Duration::from_secs(30)).expect("connect to target");
    Rig { conn, nixl, _target: target }
}

fn benches(c: &mut Criterion) {
    let rig = rig();
    let conn = &rig.conn;
    let link = conn.nixl.as_ref().expect("NIXL side");

    let mut g = c.benchmark_group("desc_list/build");
    for n in [1usize, 10_000] {
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, &n| {
            b.iter(|| {
                let mut l = XferDescList::new(&rig.nixl, MemType::Dram).unwrap();
                l.add_local_strided(&link.reg, conn.buf.addr(), 4096, n, 0).unwrap();
                black_box(l)
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("request/make");
    for n in [1usize, 10_000] {
        let (local, remote) = conn.desc_lists(n as u64 * 4096, 4096).unwrap();
        let lp = link.agent.prep_local(&local, Some(&link.backend)).unwrap();
        let rp = link.agent.prep_remote(&link.remote_name, &remote, Some(&link.backend)).unwrap();
        let idx: Vec<i32> = (0..n as i32).collect();
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, &n| {
            b.iter(|| {
                black_box(link.agent.make_xfer_req(XferOp::Read, &lp, &idx, &rp, &idx, n as u64 * 4096, None).unwrap())
            })
        });
    }
    g.finish();

    let (local, remote) = conn.desc_lists(4096, 4096).unwrap();
    let req = link.agent.create_xfer_req(XferOp::Read, &local, &remote, &link.remote_name, None).unwrap();
    let mut g = c.benchmark_group("transfer/post_poll");
    g.bench_function("4KiB_shm", |b| {
        b.iter(|| {
            if req.post().unwrap() == Status::InProgress {
                while req.status().unwrap() == Status::InProgress {}
            }
        })
    });
    g.finish();
    drop(req);
}

criterion_group! {
    name = hot_path;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = benches
}
criterion_main!(hot_path);
