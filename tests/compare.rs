//! `kvprobe compare`: one sweep per setting in fresh processes, one table,
//! one plot, exit 3 when a setting's verdict fails.

mod common;

use common::*;

#[test]
fn compare_runs_each_setting_and_gates_on_the_verdict() {
    require_nixl();
    let dir = tempfile::tempdir().unwrap();
    let out = kvprobe()
        .args(["compare", "--tls", "default", "--tls", "tcp", "--out"])
        .arg(dir.path())
        .args([
            "--",
            "--sizes",
            "4K,64K",
            "--backend",
            "ucx",
            "--duration",
            "50ms",
            "--warmup",
            "10ms",
            "--min-iters",
            "3",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(3),
        "forcing TCP on one host fails its verdict: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in ["pack/default", "pack/tcp", "cma", "tcp", "FAIL (tcp-while-faster-exists)"] {
        assert!(stdout.contains(want), "{want} in\n{stdout}");
    }
    let cr: serde_json::Value = serde_json::from_str(&read(&dir.path().join("compare.json"))).unwrap();
    let settings = cr["settings"].as_array().unwrap();
    assert_eq!(settings.len(), 2);
    assert_eq!(settings[0]["tls"], serde_json::Value::Null);
    assert_eq!(settings[1]["tls"], "tcp");
    assert_eq!(settings[1]["grade"], "FAIL");
    for s in settings {
        assert_eq!(s["status"], "complete");
        // each setting ran in processes of its own with its own UCX_TLS
        let r = results(std::path::Path::new(s["dir"].as_str().unwrap()));
        assert_eq!(r["header"]["ucx_tls"], s["tls"]);
        assert_eq!(r["rows"].as_array().unwrap().len(), 4);
    }
    for f in ["compare.svg", "compare.png"] {
        assert!(dir.path().join(f).metadata().map(|m| m.len() > 1000).unwrap_or(false), "{f} written");
    }

    // --no-fail: the same verdicts, exit 0
    let dir2 = tempfile::tempdir().unwrap();
    let out = kvprobe()
        .args(["compare", "--no-fail", "--tls", "tcp", "--out"])
        .arg(dir2.path())
        .args(["--", "--sizes", "4K", "--backend", "ucx", "--ops", "WRITE", "--duration", "50ms", "--min-iters", "3"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn compare_input_errors_are_clear() {
    for (args, want) in [
        (vec!["compare", "--placement", "spread"], "--placement spread needs --peer"),
        (vec!["compare", "--placement", "sideways"], "unknown placement"),
        (vec!["compare", "--", "--ucx-tls", "tcp"], "--ucx-tls is set by compare itself"),
    ] {
        let out = kvprobe().args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(want),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
