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
    // without --dry-run it needs a cluster: none there is an ordinary error, at once
    let t0 = std::time::Instant::now();
    let (code, _, err) =
        launch(&["--mode", "collocated", "--model", "m", "--nodes", NODES, "--ray-address", "127.0.0.1:9"]);
    assert_eq!(code, Some(1), "{err}");
    if err.contains("no Python with Ray") {
        eprintln!("(no Ray in the venv: the refusal names that instead) {err}");
    } else {
        assert!(err.contains("nothing answers at 127.0.0.1:9"), "{err}");
        assert!(t0.elapsed().as_secs() < 60, "took {:?}", t0.elapsed());
    }
    let (code, _, err) = launch(&["--mode", "collocated", "--model", "m", "--python", "/nonexistent/python"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("no Python with Ray found") && err.contains("/nonexistent/python"), "{err}");
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
        // runtime_env: a misspelt key (RuntimeEnv takes any key as a plugin) and a non-string value
        (text.replacen("env_vars:", "env_var:", 1), "env_var"),
        (text.replacen("UCX_TLS: all", "UCX_TLS: 1", 1), "env_vars"),
    ] {
        let f = dir.path().join("broken.yaml");
        std::fs::write(&f, bad).unwrap();
        let out = validate(&py, &[f]);
        assert_eq!(out.status.code(), Some(1), "{why}: {}", String::from_utf8_lossy(&out.stdout));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("INVALID") && err.contains(why), "{why}: {err}");
    }
    // and it accepts what Serve accepts: deployment options of an LLM config beyond DeploymentConfig's
    let good = text.replacen(
        "        deployment_config:\n",
        "        deployment_config:\n          name: decode-engines\n          ray_actor_options:\n            num_cpus: 1\n",
        1,
    );
    assert_ne!(good, text);
    let f = dir.path().join("options.yaml");
    std::fs::write(&f, good).unwrap();
    let out = validate(&py, &[f]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
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

/// `launch --engine ray` against a real two-node Ray cluster of emulated
/// hosts (debug/ray-cluster.sh: Ray 2.60 head in host a, worker in host b,
/// 8 declared GPUs each). There is no vLLM here, so the deployment itself
/// must fail: the test checks everything up to and around that, for real:
/// the inventory (nodes, addresses, per-node versions), `--nodes` taken
/// from the cluster and checked against it, layouts refused against the
/// cluster's GPUs before anything is deployed, `serve deploy` run, Serve's
/// own failure read back (vLLM's import error) with a hint from the
/// inventory, the manifest, the shutdown, and the refusal to replace
/// another application.
#[test]
fn on_a_real_ray_cluster_launch_inventories_deploys_and_reports_the_failure() {
    let test = "on_a_real_ray_cluster_launch_inventories_deploys_and_reports_the_failure";
    if !common::can_run_ray_cluster(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // every step runs inside host a (the head's host); results go to files
    let script = r#"
      set -u
      in_a() { "$ROOT/debug/hosts.sh" exec "$KVP_HOSTS" a "$@"; }
      L() { in_a "$KV" launch --model gpt-oss-120b --ray-address "$KVP_RAY_ADDRESS" "$@"; }
      L --mode pd-spread --p-tp 2 --d-tp 4 --dry-run >"$D/dry.yaml" 2>"$D/dry.err"; echo $? >"$D/dry.rc"
      L --mode pd-pack --p-tp 8 --d-tp 8 --out "$D/big" >"$D/big.out" 2>"$D/big.err"; echo $? >"$D/big.rc"
      L --mode pd-pack --nodes 10.9.9.9=8 --out "$D/bogus" >"$D/bogus.out" 2>"$D/bogus.err"; echo $? >"$D/bogus.rc"
      L --mode pd-spread --p-tp 2 --d-tp 4 --ready-timeout 240 --out "$D/run" >"$D/run.out" 2>"$D/run.err"; echo $? >"$D/run.rc"
      in_a "$PY" -c "import json,urllib.request as u; print(json.dumps(json.load(u.urlopen('$KVP_RAY_DASHBOARD/api/serve/applications/'))['applications']))" >"$D/apps-after.json"
      # someone else's application: launch must not replace it unasked
      in_a "$SERVE" deploy "$D/run/serve-config.yaml" --address "$KVP_RAY_DASHBOARD" >"$D/other.out" 2>&1
      L --mode collocated --tp 4 --out "$D/other" >"$D/refuse.out" 2>"$D/refuse.err"; echo $? >"$D/refuse.rc"
      echo "$KVP_A_IP $KVP_B_IP" >"$D/ips"
    "#;
    let py = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    let serve = py.parent().unwrap().join("serve");
    let run = common::on_ray_cluster("rct", 2, d, script, &[("PY", py.as_os_str()), ("SERVE", serve.as_os_str())]);
    let text = |name: &str| std::fs::read_to_string(d.join(name)).unwrap_or_default();
    let logs = format!(
        "{}\n{}\nhead log:\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr),
        text("ray-a.log")
    );
    assert!(run.status.success(), "{logs}");
    let ips = text("ips");
    let (a_ip, b_ip) = ips.trim().split_once(' ').expect("the hosts' addresses");
    let rc = |name: &str| text(&format!("{name}.rc")).trim().to_string();

    // a dry run takes its nodes from the cluster: prefill on one, decode on the other
    assert_eq!(rc("dry"), "0", "{}", text("dry.err"));
    let yaml = text("dry.yaml");
    assert!(
        yaml.contains(&format!("\"node:{a_ip}\": 0.001")) && yaml.contains(&format!("\"node:{b_ip}\": 0.001")),
        "{yaml}"
    );
    assert!(
        text("dry.err").contains("rct") && text("dry.err").contains("no vllm"),
        "inventory lines: {}",
        text("dry.err")
    );
    // too big for the cluster's nodes: refused with the cluster's own inventory, nothing deployed
    assert_eq!(rc("big"), "2", "{}", text("big.err"));
    assert!(
        text("big.err").contains("16 GPUs on one node") && text("big.err").contains(&format!("{a_ip} (8 GPUs)")),
        "{}",
        text("big.err")
    );
    assert!(!d.join("big/serve-config.yaml").exists());
    assert_eq!(rc("bogus"), "2", "{}", text("bogus.err"));
    assert!(text("bogus.err").contains("10.9.9.9 is not an alive node of the cluster"), "{}", text("bogus.err"));

    // the real deployment fails (no vLLM): Serve's reason, the hint, the record, the shutdown
    assert_eq!(rc("run"), "1", "{}\n{logs}", text("run.err"));
    let err = text("run.err");
    assert!(err.contains("DEPLOY_FAILED") && err.contains("Neither vLLM nor SGLang is installed"), "{err}");
    assert!(err.contains(&format!("vLLM is not installed on {a_ip}, {b_ip}")), "{err}");
    let rec: serde_json::Value = serde_json::from_str(&text("run/launch.json")).expect("launch.json");
    assert_eq!(rec["schema"], "kvprobe.launch/1");
    assert_eq!(rec["status"], "failed");
    assert_eq!(rec["nodes_from"], "cluster");
    assert_eq!(rec["placement"]["prefill"], a_ip);
    assert_eq!(rec["placement"]["decode"], b_ip);
    let nodes = rec["cluster"]["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 2);
    for n in nodes {
        assert_eq!(n["gpus"], 8.0);
        assert_eq!(n["probe"]["dists"]["ray"], "2.60.0", "{n}");
        assert!(n["probe"]["ucx"]["version"].as_str().is_some_and(|v| v.starts_with("1.")), "{n}");
    }
    assert!(nodes.iter().any(|n| n["is_head"] == true && n["address"] == a_ip));
    let cmds: Vec<String> =
        rec["commands"].as_array().unwrap().iter().map(|c| c["argv"][1].as_str().unwrap_or("").to_string()).collect();
    assert_eq!(cmds, ["-c", "deploy", "status", "-c"], "{:#}", rec["commands"]);
    // the teardown deletes this application only
    assert!(rec["commands"][3]["argv"][2].as_str().unwrap().contains("serve.delete"), "{:#}", rec["commands"][3]);
    assert_eq!(rec["commands"][3]["argv"][4], "kvprobe-pd-spread-1xtp2-1xtp4");
    assert!(rec["commands"].as_array().unwrap().iter().all(|c| c["exit_code"] == 0), "{:#}", rec["commands"]);
    assert!(rec["failure"].as_str().unwrap().contains("ImportError"));
    assert!(text("run/serve-status.txt").contains("DEPLOY_FAILED"), "{}", text("run/serve-status.txt"));
    assert_eq!(text("apps-after.json").trim(), "{}", "the failed application was left deployed");

    // another application runs: refused, not replaced
    assert_eq!(rc("refuse"), "2", "{}\n{}", text("refuse.err"), text("other.out"));
    assert!(text("refuse.err").contains("already runs kvprobe-pd-spread-1xtp2-1xtp4"), "{}", text("refuse.err"));
    assert!(text("refuse.err").contains("--replace-apps"));
}
