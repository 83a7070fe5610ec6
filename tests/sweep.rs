//! The sweep end to end: two real processes, real NIXL and UCX, DRAM.

mod common;

use std::time::Duration;

use common::*;

fn assert_complete(v: &serde_json::Value, rows: usize) {
    assert_eq!(v["status"], "complete", "{v:#}");
    let r = v["rows"].as_array().unwrap();
    assert_eq!(r.len(), rows);
    for row in r {
        assert_eq!(row["verified"], true, "{row:#}");
        assert_eq!(row["checks"].as_array().unwrap().len(), 2);
        assert!(row["iterations"].as_u64().unwrap() >= 3);
        assert!(row["gbps"].as_f64().unwrap() > 0.0);
        assert_eq!(row["notifs_received"], row["notifs_expected"], "{row:#}");
        // every timed transfer plus warm-up plus the two checked ones carried a notification
        let expected = row["iterations"].as_u64().unwrap() + row["warmup_iterations"].as_u64().unwrap() + 2;
        assert_eq!(row["notifs_expected"].as_u64().unwrap(), expected);
    }
}

/// Runs READ and WRITE with `tls`, checks the data and which UCX transports
/// carried the bytes and the notifications (from UCX's own protocol table).
fn run_with_tls(tls: &str, params: &[&str], want_rma: &str, want_am: &str) {
    require_nixl();
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec!["--sizes", "4K,1M", "--ucx-tls", tls];
    args.extend_from_slice(params);
    let out = sweep(dir.path(), &args, &[("UCX_PROTO_INFO", "y")]);
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let v = results(dir.path());
    assert_complete(&v, 4);
    assert_eq!(v["header"]["ucx_tls"], tls);
    assert_eq!(v["header"]["env"]["UCX_NET_DEVICES"], "lo");
    assert_eq!(v["header"]["target"]["ucx_tls"], tls, "the target ran with the same UCX_TLS");
    for row in v["rows"].as_array().unwrap() {
        assert_eq!(row["ucx_tls"], tls);
    }
    let (rma, am) = ucx_lanes(&read(&dir.path().join("initiator.log")));
    assert!(!rma.is_empty() && rma.iter().all(|l| l.starts_with(want_rma)), "RMA lanes {rma:?}, expected {want_rma}");
    assert!(!am.is_empty() && am.iter().all(|l| l.starts_with(want_am)), "AM lanes {am:?}, expected {want_am}");
    // the table is on stdout
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("READ") && table.contains("WRITE") && table.contains("1 MiB"), "{table}");
}

#[test]
fn shared_memory_read_write_verified() {
    // Data over cross-memory attach; NIXL's default UCX error handling (peer)
    // rules posix/sysv out for active messages, so notifications use TCP.
    run_with_tls("shm,tcp", &[], "cma/", "tcp/");
}

#[test]
fn shared_memory_only_read_write_verified() {
    // Without peer error handling, notifications move to shared memory too.
    run_with_tls("shm", &["--backend-param", "ucx_error_handling_mode=none"], "cma/", "sysv/");
}

#[test]
fn tcp_read_write_verified() {
    // a local sweep pins UCX's network devices to loopback
    run_with_tls("tcp", &[], "tcp/lo", "tcp/lo");
}

#[test]
fn create_path_with_many_descriptors() {
    require_nixl();
    let dir = tempfile::tempdir().unwrap();
    let out = sweep(dir.path(), &["--sizes", "64K,256K", "--block-size", "4K", "--xfer-path", "create"], &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v = results(dir.path());
    assert_complete(&v, 4);
    let descs: Vec<u64> = v["rows"].as_array().unwrap().iter().map(|r| r["descs"].as_u64().unwrap()).collect();
    assert_eq!(descs, vec![16, 64, 16, 64]);
    assert!(v["rows"].as_array().unwrap().iter().all(|r| r["xfer_path"] == "create" && r["block_bytes"] == 4096));
    let csv = read(&dir.path().join("results.csv"));
    assert_eq!(csv.lines().count(), 5, "{csv}");
    assert!(csv.starts_with("backend,plugin,op,size_bytes"));
}

#[test]
fn notifications_only_on_checked_transfers() {
    require_nixl();
    let dir = tempfile::tempdir().unwrap();
    let out = sweep(dir.path(), &["--sizes", "16K", "--ops", "WRITE", "--no-notif"], &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v = results(dir.path());
    assert_eq!(v["status"], "complete");
    assert_eq!(v["rows"][0]["notifs_expected"], 2);
    assert_eq!(v["rows"][0]["notifs_received"], 2);
}

/// A byte of the target's buffer is flipped in the `which` checked transfer of
/// the first point; the run must stop there with the byte found.
fn corruption_is_caught(op: &str, side: &str, which: &str) {
    require_nixl();
    let dir = tempfile::tempdir().unwrap();
    let inject = format!("corrupt-{which}");
    let out = sweep(dir.path(), &["--sizes", "64K,1M", "--ops", op, "--inject", &inject], &[]);
    assert_eq!(out.status.code(), Some(1), "a corrupted byte must fail the run");
    let v = results(dir.path());
    assert_eq!(v["status"], "failed");
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "the run stops at the corrupted row");
    let row = &rows[0];
    assert_eq!(row["verified"], false);
    let checks = row["checks"].as_array().unwrap();
    let (bad, good) = if which == "first" { (&checks[0], None) } else { (&checks[1], Some(&checks[0])) };
    assert_eq!(bad["when"], which);
    assert_eq!(bad["ok"], false);
    assert_eq!(bad["side"], side);
    assert_eq!(bad["mismatched_bytes"], 1);
    assert_eq!(bad["first_bad_offset"], 32 * 1024);
    if let Some(g) = good {
        assert_eq!(g["ok"], true, "the first check of the row was clean");
        assert!(row["iterations"].as_u64().unwrap() >= 3, "the row was measured before its last check failed");
    }
    let errors = v["errors"].to_string();
    assert!(errors.contains("verification failed"), "{errors}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("FAIL"), "{stdout}");
}

#[test]
fn corrupted_target_byte_is_caught_on_read() {
    corruption_is_caught("READ", "initiator", "first");
}

#[test]
fn corrupted_target_byte_is_caught_on_write() {
    corruption_is_caught("WRITE", "target", "first");
}

#[test]
fn corruption_in_the_last_transfer_is_caught_on_read() {
    corruption_is_caught("READ", "initiator", "last");
}

#[test]
fn corruption_in_the_last_transfer_is_caught_on_write() {
    corruption_is_caught("WRITE", "target", "last");
}

#[test]
fn a_missing_notification_fails_the_run() {
    require_nixl();
    let dir = tempfile::tempdir().unwrap();
    // one real warm-up transfer is posted without its notification
    let out = sweep(
        dir.path(),
        &["--sizes", "16K,64K", "--ops", "READ", "--inject", "missing-notif", "--xfer-timeout", "2s"],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    let v = results(dir.path());
    assert_eq!(v["status"], "failed");
    let row = &v["rows"][0];
    assert_eq!(row["verified"], true, "the data was fine");
    assert_eq!(row["notifs_received"].as_u64().unwrap() + 1, row["notifs_expected"].as_u64().unwrap(), "{row:#}");
    let errors = v["errors"].to_string();
    assert!(errors.contains("notifications"), "{errors}");
}

#[test]
fn keep_alives_carry_the_target_through_a_long_point() {
    require_nixl();
    let dir = tempfile::tempdir().unwrap();
    // the point lasts 4 s; the target would give up after 1.5 s of silence
    let out = kvprobe()
        .args(["sweep", "-q", "--sizes", "4K", "--ops", "READ", "--duration", "4s", "--target-idle-timeout", "1500ms"])
        .arg("--out")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_complete(&results(dir.path()), 1);
}

#[test]
fn repeated_ops_are_measured_once_in_the_order_given() {
    require_nixl();
    let dir = tempfile::tempdir().unwrap();
    let out = sweep(dir.path(), &["--sizes", "4K", "--ops", "WRITE,READ,WRITE"], &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v = results(dir.path());
    assert_eq!(v["header"]["settings"]["ops"], serde_json::json!(["WRITE", "READ"]));
    assert_complete(&v, 2);
}

#[test]
fn killing_the_sweep_leaves_no_orphan() {
    require_nixl();
    let dir = tempfile::tempdir().unwrap();
    let mut child = kvprobe()
        .args(["sweep", "-q", "--sizes", "4K", "--duration", "60s", "--out"])
        .arg(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pids = wait_for(Duration::from_secs(60), || {
        let v = try_results(dir.path())?;
        Some((v["header"]["initiator_pid"].as_u64()? as u32, v["header"]["target"]["pid"].as_u64()? as u32))
    })
    .expect("the sweep started both processes");
    assert!(alive(pids.0) && alive(pids.1));
    child.kill().unwrap(); // SIGKILL: no chance to clean up
    child.wait().unwrap();
    let gone = wait_for(Duration::from_secs(10), || (!alive(pids.0) && !alive(pids.1)).then_some(()));
    assert!(gone.is_some(), "initiator {} or target {} outlived the sweep", pids.0, pids.1);
}

/// Starts a slow sweep (2 s points) and waits until its first row is on
/// disk; returns the sweep process and the initiator's and target's PIDs.
fn start_and_wait_for_a_row(dir: &std::path::Path, ops: &str) -> (std::process::Child, u32, u32) {
    let child = kvprobe()
        .args(["sweep", "-q", "--sizes", "4K,8K,16K", "--ops", ops, "--duration", "2s", "--out"])
        .arg(dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (ipid, tpid) = wait_for(Duration::from_secs(60), || {
        let v = try_results(dir)?;
        if v["rows"].as_array()?.is_empty() {
            return None;
        }
        Some((v["header"]["initiator_pid"].as_u64()? as u32, v["header"]["target"]["pid"].as_u64()? as u32))
    })
    .expect("a first row was measured");
    (child, ipid, tpid)
}

#[test]
fn a_dead_initiator_is_reported_and_rows_are_kept() {
    require_nixl();
    let dir = tempfile::tempdir().unwrap();
    let (child, ipid, tpid) = start_and_wait_for_a_row(dir.path(), "READ");
    signal(ipid, libc::SIGKILL);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v = results(dir.path());
    assert_eq!(v["status"], "failed");
    assert!(!v["rows"].as_array().unwrap().is_empty(), "rows measured before the crash are kept");
    let errors = v["errors"].to_string();
    assert!(errors.contains("initiator") && errors.contains("SIGKILL"), "{errors}");
    assert!(
        wait_for(Duration::from_secs(10), || (!alive(tpid)).then_some(())).is_some(),
        "target {tpid} outlived the initiator"
    );
}

#[test]
fn ctrl_c_stops_cleanly_and_keeps_rows() {
    require_nixl();
    let dir = tempfile::tempdir().unwrap();
    let (child, ipid, tpid) = start_and_wait_for_a_row(dir.path(), "READ,WRITE");
    signal(child.id(), libc::SIGINT);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130));
    let v = results(dir.path());
    assert_eq!(v["status"], "interrupted");
    assert!(!v["rows"].as_array().unwrap().is_empty());
    assert!(wait_for(Duration::from_secs(10), || (!alive(ipid) && !alive(tpid)).then_some(())).is_some());
}
