//! `kvprobe launch --dry-run`: the Serve config of each mode against a
//! reviewed golden file, and the layouts it must refuse.

mod common;

use common::kvprobe;

const NODES: &str = "10.0.0.1=8,10.0.0.2=8";

fn launch(args: &[&str]) -> (Option<i32>, String, String) {
    let out = kvprobe().arg("launch").args(args).output().expect("run kvprobe launch");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn each_mode_matches_its_golden_config() {
    for mode in ["collocated", "pd-pack", "pd-spread"] {
        let (code, out, err) = launch(&[
            "--mode",
            mode,
            "--model",
            "openai/gpt-oss-120b",
            "--served-model-name",
            "gptoss",
            "--tp",
            "4",
            "--num-replicas",
            "2",
            "--p-tp",
            "4",
            "--d-tp",
            "4",
            "--nodes",
            NODES,
            "--dry-run",
        ]);
        assert_eq!(code, Some(0), "{mode}: {err}");
        // the first line names the kvprobe version; the rest is the config
        let body: String = out.lines().skip(1).map(|l| format!("{l}\n")).collect();
        let golden = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/launch/");
        let want = std::fs::read_to_string(format!("{golden}{mode}.yaml")).unwrap();
        assert_eq!(body, want, "{mode}: the config changed; review it and update tests/fixtures/launch/{mode}.yaml");
    }
}

#[test]
fn out_writes_the_config_and_a_record() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = launch(
        &[
            "--mode",
            "pd-pack",
            "--model",
            "llama-3.1-8b",
            "--p-tp",
            "2",
            "--d-tp",
            "2",
            "--d-num",
            "2",
            "--nodes",
            NODES,
            "--dry-run",
            "--out",
        ]
        .iter()
        .copied()
        .chain([dir.path().to_str().unwrap()])
        .collect::<Vec<_>>(),
    );
    assert_eq!(code, Some(0), "{err}");
    let rec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("launch.json")).unwrap()).unwrap();
    assert_eq!(rec["placement"]["prefill"], "10.0.0.1");
    assert_eq!(rec["placement"]["decode"], "10.0.0.1");
    assert_eq!(rec["spec"]["kv_heads"], 8);
    let yaml = std::fs::read_to_string(dir.path().join("serve-config.yaml")).unwrap();
    assert!(yaml.contains("min_replicas: 2") && yaml.contains("build_pd_openai_app"), "{yaml}");
}

#[test]
fn impossible_layouts_are_refused_before_anything_starts() {
    let cases: &[(&[&str], &str)] = &[
        (&["--mode", "pd-pack", "--p-tp", "4", "--d-tp", "4", "--d-num", "2"], "12 GPUs on one node"),
        (&["--mode", "pd-spread", "--p-tp", "8", "--d-tp", "4"], "P_tp <= D_tp"),
        (&["--mode", "collocated", "--tp", "3"], "does not divide the model's 8 KV heads"),
        (&["--mode", "collocated", "--tp", "16"], "largest node has 8"),
    ];
    for (args, want) in cases {
        let (code, _, err) =
            launch(&[*args, &["--model", "openai/gpt-oss-120b", "--nodes", NODES, "--dry-run"]].concat());
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    let (code, _, err) = launch(&["--mode", "pd-spread", "--model", "m", "--nodes", "10.0.0.1=8", "--dry-run"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("needs two GPU nodes"), "{err}");
    let (code, _, err) = launch(&["--mode", "collocated", "--model", "m", "--nodes", "10.0.0.1", "--dry-run"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("ADDRESS=GPUS"), "{err}");
    let (code, _, err) =
        launch(&["--mode", "collocated", "--model", "m", "--nodes", NODES, "--env", "novalue", "--dry-run"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("KEY=VALUE"), "{err}");
    // without --dry-run nothing pretends to start
    let (code, _, err) = launch(&["--mode", "collocated", "--model", "m", "--nodes", NODES]);
    assert_eq!(code, Some(2));
    assert!(err.contains("only --dry-run"), "{err}");
}

/// The project venv's python when Ray Serve imports there (debug/setup.sh installs it).
fn ray_python() -> Option<std::path::PathBuf> {
    let venv = std::env::var_os("KVPROBE_VENV")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv"));
    let py = venv.join("bin/python");
    let ok = std::process::Command::new(&py)
        .args(["-c", "import ray.serve.schema, pyarrow, httpx"])
        .output()
        .is_ok_and(|o| o.status.success());
    ok.then_some(py)
}

fn validate(py: &std::path::Path, files: &[std::path::PathBuf]) -> std::process::Output {
    std::process::Command::new(py)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/debug/validate-serve-config.py"))
        .args(files)
        .output()
        .expect("run the validator")
}

#[test]
fn ray_s_own_schema_classes_accept_every_generated_config() {
    let Some(py) = ray_python() else {
        eprintln!(
            "SKIPPED ray_s_own_schema_classes_accept_every_generated_config: ray[serve] is not in the venv (debug/setup.sh installs it unless KVPROBE_NO_RAY=1)"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut files: Vec<std::path::PathBuf> = ["collocated", "pd-pack", "pd-spread"]
        .iter()
        .map(|m| std::path::PathBuf::from(format!("{}/tests/fixtures/launch/{m}.yaml", env!("CARGO_MANIFEST_DIR"))))
        .collect();
    let layouts: &[&[&str]] = &[
        &["--mode", "pd-pack", "--p-num", "2", "--p-tp", "1", "--d-num", "3", "--d-tp", "2", "--backend", "libfabric"],
        &[
            "--mode",
            "pd-spread",
            "--p-tp",
            "2",
            "--d-tp",
            "8",
            "--ucx-tls",
            "rc,cuda_ipc",
            "--env",
            "NIXL_LOG_LEVEL=DEBUG",
        ],
        &["--mode", "collocated", "--tp", "2", "--num-replicas", "4", "--max-model-len", "32768"],
        &["--mode", "collocated", "--tp", "8", "--num-replicas", "2"], // spans both nodes: no pinning
    ];
    for (i, args) in layouts.iter().enumerate() {
        let out_dir = dir.path().join(format!("l{i}"));
        let (code, _, err) = launch(
            &[
                *args,
                &[
                    "--model",
                    "meta-llama/Llama-3.1-8B-Instruct",
                    "--nodes",
                    NODES,
                    "--dry-run",
                    "--out",
                    out_dir.to_str().unwrap(),
                ],
            ]
            .concat(),
        );
        assert_eq!(code, Some(0), "{args:?}: {err}");
        files.push(out_dir.join("serve-config.yaml"));
    }
    let out = validate(&py, &files);
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).matches(": ok (ray ").count(), files.len());
    // the check can fail: a broken strategy and a missing connector are refused
    let text = std::fs::read_to_string(&files[1]).unwrap();
    for (bad, why) in [
        (text.replace("strategy: STRICT_PACK", "strategy: STRICT_PAK"), "STRICT_PAK"),
        (text.replace("kv_transfer_config:", "kv_transfer_configs:"), "kv_transfer_config"),
    ] {
        let f = dir.path().join("broken.yaml");
        std::fs::write(&f, bad).unwrap();
        let out = validate(&py, &[f]);
        assert_eq!(out.status.code(), Some(1), "{why}: {}", String::from_utf8_lossy(&out.stdout));
        assert!(String::from_utf8_lossy(&out.stderr).contains("INVALID"), "{why}");
    }
}

#[test]
fn engine_emulate_serves_the_layout_until_interrupted() {
    // --dry-run prints the emulator command for the layout
    let (code, out, err) = launch(&[
        "--engine",
        "emulate",
        "--mode",
        "pd-spread",
        "--model",
        "gpt-oss-120b",
        "--served-model-name",
        "gptoss",
        "--p-tp",
        "4",
        "--d-tp",
        "4",
        "--kv-gbps",
        "2",
        "--dry-run",
        "--",
        "--decode-base-ms",
        "12",
    ]);
    assert_eq!(code, Some(0), "{err}");
    for part in [
        "emulate",
        "--model gptoss",
        "--kv-model gpt-oss-120b",
        "--mode pd",
        "--p-tp 4",
        "--kv-gbps 2",
        "--decode-base-ms 12",
    ] {
        assert!(out.contains(part), "{part} missing from {out}");
    }
    // a PD layout without a KV rate is refused
    let (code, _, err) = launch(&["--engine", "emulate", "--mode", "pd-pack", "--model", "gpt-oss-120b", "--dry-run"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--kv-from"), "{err}");
    // for real: ready, answers as the layout, stops on SIGINT and takes the emulator with it
    let dir = tempfile::tempdir().unwrap();
    let mut child = kvprobe()
        .args([
            "launch",
            "--engine",
            "emulate",
            "--mode",
            "collocated",
            "--model",
            "llama-3.1-8b",
            "--tp",
            "2",
            "--num-replicas",
            "3",
        ])
        .args(["--port", "0", "--out"])
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    use std::io::BufRead;
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let url = line
        .strip_prefix("ready: ")
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("{line}"))
        .to_string();
    let rec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("launch.json")).unwrap()).unwrap();
    let emu_pid = rec["emulator"]["pid"].as_u64().unwrap() as u32;
    assert!(common::alive(emu_pid));
    let out = kvprobe()
        .args(["bench", "--url", &url, "--model", "llama-3.1-8b", "--smoke", "--itl", "16", "--otl", "3"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    common::signal(child.id(), libc::SIGINT);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(
        common::wait_for(std::time::Duration::from_secs(5), || (!common::alive(emu_pid)).then_some(())).is_some(),
        "the emulator outlived launch"
    );
    // the record holds the layout
    assert_eq!(rec["spec"]["collocated"]["num"], 3);
}

#[test]
fn yaml_reads_back_as_the_json_it_was_made_from() {
    let Some(py) = ray_python() else {
        eprintln!("SKIPPED yaml_reads_back_as_the_json_it_was_made_from: no PyYAML (ray[serve] is not in the venv)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut args =
        vec!["--mode", "pd-spread", "--model", "2024-01-01", "--served-model-name", "0x10", "--ucx-tls", "1_000"];
    let envs =
        ["A=null", "B=1e3", "C=a: b #c", "D= lead", "E=", "F=é\u{7f}\u{85}x", "G=multi\nline", "H=\"q\" \\ back"];
    for e in &envs {
        args.extend(["--env", e]);
    }
    args.extend(["--nodes", NODES, "--dry-run", "--out", dir.path().to_str().unwrap()]);
    let (code, _, err) = launch(&args);
    assert_eq!(code, Some(0), "{err}");
    let script = "import json,sys,yaml\ny=yaml.safe_load(open(sys.argv[1]))\nj=json.load(open(sys.argv[2]))['serve_config']\nprint('same' if y==j else 'DIFFERENT')";
    let out = std::process::Command::new(py)
        .args(["-c", script])
        .arg(dir.path().join("serve-config.yaml"))
        .arg(dir.path().join("launch.json"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "same", "{}", String::from_utf8_lossy(&out.stderr));
}
