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
