//! Bad input: a clear message and a non-zero exit, never a panic or a hang.

mod common;

use common::*;

fn fails_with(args: &[&str], code: i32, needles: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let out = kvprobe().args(args).current_dir(dir.path()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "args {args:?}\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    for n in needles {
        assert!(stderr.contains(n), "missing {n:?} in:\n{stderr}");
    }
}

#[test]
fn zero_size_is_refused() {
    fails_with(&["sweep", "--sizes", "0"], 2, &["'0'", "greater than zero"]);
}

#[test]
fn unknown_unit_is_refused() {
    fails_with(&["sweep", "--sizes", "1X"], 2, &["'1X'", "unknown unit"]);
}

#[test]
fn unknown_op_is_refused() {
    fails_with(&["sweep", "--ops", "READ,FOO"], 2, &["FOO", "READ or WRITE"]);
}

#[test]
fn sizes_that_do_not_split_into_blocks_are_refused() {
    fails_with(&["sweep", "--sizes", "10K", "--block-size", "4K"], 2, &["not a multiple", "--block-size"]);
}

#[test]
fn more_memory_than_the_host_has_is_refused() {
    fails_with(&["sweep", "--sizes", "1T"], 2, &["needs", "available"]);
    // twice this size overflows 64 bits: still a clear refusal, not a panic
    fails_with(&["sweep", "--sizes", "8388608T"], 2, &["needs", "available"]);
}

#[test]
fn absurd_durations_are_refused() {
    fails_with(&["sweep", "--duration", "1e30"], 2, &["'1e30'", "one day"]);
    fails_with(&["sweep", "--xfer-timeout", "1e19", "--peer-timeout", "1e19"], 2, &["one day"]);
    fails_with(&["sweep", "--min-iters", "10", "--max-iters", "5"], 2, &["--min-iters", "--max-iters"]);
}

#[test]
fn missing_nixl_lists_what_was_searched_and_how_to_fix_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = kvprobe().args(["sweep", "--nixl-lib", "/nonexistent", "--out"]).arg(dir.path()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for n in ["/nonexistent", "Searched", "--nixl-lib", "pip install --no-deps nixl-cu12", "debug/setup.sh"] {
        assert!(stderr.contains(n), "missing {n:?} in:\n{stderr}");
    }
    assert!(!stderr.contains("panicked"));
    // and the environment variable behaves the same way
    let out = kvprobe().args(["info"]).env("KVPROBE_NIXL_LIB", "/nonexistent/libnixl_capi.so").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("KVPROBE_NIXL_LIB"));
}

#[test]
fn a_file_that_is_not_nixl_is_refused_with_the_missing_symbols() {
    let out = kvprobe().args(["info", "--nixl-lib", "/lib/x86_64-linux-gnu/libc.so.6"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("not a usable NIXL C API") && stderr.contains("nixl_capi_create_agent"), "{stderr}");
}

#[test]
fn an_output_folder_that_cannot_be_created_is_refused() {
    require_nixl();
    fails_with(
        &["sweep", "--sizes", "4K", "--out", "/proc/kvprobe-cannot-create"],
        2,
        &["cannot create the output folder"],
    );
}

#[test]
fn a_nixl_that_cannot_load_is_a_setup_error_with_the_reason() {
    require_nixl();
    // libnixl_capi.so alone, without the libraries it needs beside it
    let info: serde_json::Value =
        serde_json::from_slice(&kvprobe().args(["info", "--json"]).output().unwrap().stdout).unwrap();
    let lib = std::path::PathBuf::from(info["location"]["lib"].as_str().unwrap());
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(&lib, dir.path().join("libnixl_capi.so")).unwrap();
    let out_dir = dir.path().join("run");
    let out = kvprobe()
        .args(["sweep", "-q", "--sizes", "4K", "--nixl-lib"])
        .arg(dir.path())
        .arg("--out")
        .arg(&out_dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for n in ["setup failed", "cannot load", "libnixl.so", "target.log"] {
        assert!(stderr.contains(n), "missing {n:?} in:\n{stderr}");
    }
    let v = results(&out_dir);
    assert_eq!(v["status"], "failed");
    assert!(v["rows"].as_array().unwrap().is_empty());
}
