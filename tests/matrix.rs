//! `kvprobe matrix` end to end on a real Ray cluster of emulated hosts
//! (debug/ray-cluster.sh: a head and three workers, each in its own network
//! namespace behind one bridge): one host's link is shaped with tc and must
//! come out as the outlier node; another node is killed mid-run and must be
//! reported as lost while the rest of the matrix completes.

mod common;

#[test]
fn a_shaped_link_is_the_outlier_and_a_dead_node_is_reported() {
    let test = "a_shaped_link_is_the_outlier_and_a_dead_node_is_reported";
    if !common::can_run_ray_cluster(test) {
        return;
    }
    common::require_nixl();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // host c's link to the switch is shaped to 100 Mbit/s; node d is killed
    // (SIGKILL to its node process: every Ray process of it dies) once the
    // first round is done; kvprobe is shipped through Ray (--ship). --line-rate-at 0: a veth's rated 10 Gbit/s is not
    // a line rate this 2-core machine's TCP can reach.
    let script = r#"
      set -u
      "$ROOT/debug/hosts.sh" shape "$KVP_HOSTS" --host c --rate 100mbit
      "$ROOT/debug/hosts.sh" exec "$KVP_HOSTS" a "$KV" matrix --ray-address "$KVP_RAY_ADDRESS" \
        --sizes 1M,8M --duration 0.3s --line-rate-at 0 --ship --out "$D/m" >"$D/out.txt" 2>"$D/err.txt" &
      m=$!
      for _ in $(seq 600); do grep -q '"event": "round"' "$D/m/events.jsonl" 2>/dev/null && break; sleep 0.2; done
      kill -9 "$(awk '$1 == "d" {print $2}' "$KVP_RAY_PIDS")"
      wait "$m"; echo $? >"$D/rc"
      echo "$KVP_A_IP $KVP_B_IP $KVP_C_IP $KVP_D_IP" >"$D/ips"
    "#;
    let run = common::on_ray_cluster("mx", 4, d, script, &[]);
    let text = |name: &str| std::fs::read_to_string(d.join(name)).unwrap_or_default();
    let logs = format!(
        "{}\n{}\nmatrix stderr:\n{}\ndriver:\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr),
        text("err.txt"),
        text("m/driver.log")
    );
    assert!(run.status.success(), "{logs}");
    let ips: Vec<String> = text("ips").split_whitespace().map(str::to_string).collect();
    assert_eq!(ips.len(), 4, "{logs}");
    let (c, dd) = (&ips[2], &ips[3]);
    // FAIL: an outlier node and a lost node
    assert_eq!(text("rc").trim(), "1", "{logs}\n{}", text("out.txt"));
    let m: serde_json::Value = serde_json::from_str(&text("m/matrix.json")).expect("matrix.json");
    assert_eq!(m["schema"], "kvprobe.matrix/2");
    assert_eq!(m["status"], "complete", "{logs}");
    let nodes: Vec<&str> = m["nodes"].as_array().unwrap().iter().map(|n| n["address"].as_str().unwrap()).collect();
    assert_eq!(nodes, ips.iter().map(String::as_str).collect::<Vec<_>>());
    let v = &m["verdict"];
    assert_eq!(v["grade"], "FAIL");
    // the dead node is reported, and only it
    let lost: Vec<String> = v["lost_nodes"].as_array().unwrap().iter().map(|x| x.to_string()).collect();
    assert_eq!(lost.len(), 1, "{lost:?}");
    assert!(lost[0].contains(dd.as_str()), "{lost:?}");
    // every pair among the three live nodes was measured
    let idx = |a: &str| nodes.iter().position(|n| *n == a).unwrap();
    let pairs = m["pairs"].as_array().unwrap();
    assert_eq!(pairs.len(), 12, "every planned pair is accounted for");
    for p in pairs {
        let (i, j) = (p["initiator"].as_u64().unwrap() as usize, p["target"].as_u64().unwrap() as usize);
        if i != 3 && j != 3 {
            assert_eq!(p["status"], "ok", "{p:#}");
            assert!(p["carried_by"].as_str().is_some_and(|l| l.contains("tcp")), "{p:#}");
        }
    }
    // the shaped host is the outlier node, all its measured links framed and explained by it
    let out_nodes: Vec<&str> =
        v["outlier_nodes"].as_array().unwrap().iter().map(|n| n["address"].as_str().unwrap()).collect();
    assert_eq!(out_nodes, vec![c.as_str()], "{:#}", v);
    let c_links: Vec<&serde_json::Value> = pairs
        .iter()
        .filter(|p| p["status"] == "ok")
        .filter(|p| p["initiator"] == idx(c) as u64 || p["target"] == idx(c) as u64)
        .collect();
    assert!(c_links.len() >= 4, "{c_links:?}");
    for p in &c_links {
        // 100 Mbit/s is 0.0125 GB/s
        assert!(p["gbps"].as_f64().unwrap() < 0.02, "{p:#}");
    }
    let framed = v["outlier_links"].as_array().unwrap().iter().filter(|l| l["explained_by"] == c.as_str()).count();
    assert_eq!(framed, c_links.len(), "{:#}", v);
    // --ship: every agent ran the copy Ray unpacked from the job's working_dir
    let agents: Vec<serde_json::Value> = text("m/events.jsonl")
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["event"] == "agent")
        .collect();
    assert_eq!(agents.len(), 4, "{logs}");
    for e in &agents {
        assert!(e["kvprobe"].as_str().is_some_and(|p| p.contains("working_dir_files")), "{e}");
    }
    // the record and the pictures
    assert!(text("m/events.jsonl").contains("\"node_lost\""));
    for f in ["heatmap.svg", "heatmap.png", "plan.json"] {
        assert!(d.join("m").join(f).is_file(), "{f}");
    }
    let svg = text("m/heatmap.svg");
    assert!(svg.contains("row: initiator (reads)") && svg.contains(&format!("{dd} (lost)")), "heatmap labels");
    assert!(text("out.txt").contains(&format!("node {c}: ")), "{}", text("out.txt"));
}

/// Bad arguments stop before any cluster is asked; no cluster is an ordinary error.
#[test]
fn bad_arguments_and_no_cluster_are_clear_errors() {
    let run = |args: &[&str]| {
        let o = common::kvprobe().arg("matrix").args(args).output().unwrap();
        (o.status.code(), String::from_utf8_lossy(&o.stderr).into_owned())
    };
    // what every pair's sweep would refuse is refused here, at once (exit 2)
    for (args, want) in [
        (&["--duration", "bogus"][..], "invalid duration 'bogus'"),
        (&["--sizes", "1Q"][..], "invalid size '1Q'"),
        (&["--outlier-at", "1.5"][..], "--outlier-at must be in (0, 1)"),
        (&["--ops", ""][..], "--ops lists nothing"),
        (&["--gpus-per-node", "2", "--ops", "read,write"][..], "per-GPU matrices take one operation"),
        (&["--gpus-per-node", "0"][..], "invalid value '0' for '--gpus-per-node <N>'"),
    ] {
        let (code, err) = run(&[args, &["--ray-address", "127.0.0.1:9"]].concat());
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    // --model replaces --sizes (the sweep refuses both): accepted, then no cluster there (exit 1)
    let (code, err) = run(&["--model", "gpt-oss-120b", "--ray-address", "127.0.0.1:9", "-q"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("nothing answers at 127.0.0.1:9") || err.contains("no Python with Ray"), "{err}");
}

/// `matrix --local` (this host's GPUs against each other, no Ray): on a host
/// without a GPU or CUDA driver, a clear refusal before anything starts;
/// its arguments checked (tests/gpu.rs runs it where there is a GPU).
#[test]
fn local_gpu_matrix_arguments_and_a_host_without_gpus() {
    let run = |args: &[&str]| {
        let o = common::kvprobe().arg("matrix").args(args).output().unwrap();
        (o.status.code(), String::from_utf8_lossy(&o.stderr).into_owned())
    };
    for (args, want) in [
        (&["--local", "--ray-address", "127.0.0.1:9"][..], "cannot be used with"),
        (&["--gpus", "0,1"][..], "--local"),
        (&["--local", "--ops", "read,write"][..], "per-GPU matrices take one operation"),
        (&["--local", "--gpus", "x"][..], "invalid value 'x'"),
    ] {
        let (code, err) = run(args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    if std::path::Path::new("/dev/nvidiactl").exists() {
        eprintln!("skipping the no-GPU refusal: this host has an NVIDIA driver");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (code, err) = run(&["--local", "--same-gpu", "--out", dir.path().join("m").to_str().unwrap()]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("matrix --local measures this host's GPUs") && err.contains("libcuda.so.1"), "{err}");
    assert!(!dir.path().join("m").exists(), "nothing started, nothing written");
}

/// `--contention`: three nodes, two shifted rounds in which every node sends
/// and receives at once; every pair measured in the round the plan gave it.
#[test]
fn contention_rounds_run_every_node_both_ways_at_once() {
    let test = "contention_rounds_run_every_node_both_ways_at_once";
    if !common::can_run_ray_cluster(test) {
        return;
    }
    common::require_nixl();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let script = r#"
      "$ROOT/debug/hosts.sh" exec "$KVP_HOSTS" a "$KV" matrix --ray-address "$KVP_RAY_ADDRESS" --contention \
        --sizes 1M --duration 0.2s --no-doctor --line-rate-at 0 --out "$D/m" >"$D/out.txt" 2>"$D/err.txt"
      echo $? >"$D/rc"
    "#;
    let run = common::on_ray_cluster("mc", 3, d, script, &[]);
    let text = |name: &str| std::fs::read_to_string(d.join(name)).unwrap_or_default();
    let logs = format!("{}\n{}", String::from_utf8_lossy(&run.stderr), text("err.txt"));
    assert!(run.status.success(), "{logs}");
    assert_eq!(text("rc").trim(), "0", "{logs}\n{}", text("out.txt"));
    let m: serde_json::Value = serde_json::from_str(&text("m/matrix.json")).expect("matrix.json");
    assert_eq!(m["contention"], true);
    let rounds = m["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 2);
    for (k, round) in rounds.iter().enumerate() {
        let ini: std::collections::BTreeSet<u64> =
            round.as_array().unwrap().iter().map(|p| p["initiator"].as_u64().unwrap()).collect();
        let tgt: std::collections::BTreeSet<u64> =
            round.as_array().unwrap().iter().map(|p| p["target"].as_u64().unwrap()).collect();
        assert_eq!((ini.len(), tgt.len()), (3, 3), "round {k}: every node sends and receives");
    }
    let pairs = m["pairs"].as_array().unwrap();
    assert_eq!(pairs.len(), 6);
    for p in pairs {
        assert_eq!(p["status"], "ok", "{p:#}");
        let planned = rounds[p["round"].as_u64().unwrap() as usize]
            .as_array()
            .unwrap()
            .iter()
            .any(|q| q["initiator"] == p["initiator"] && q["target"] == p["target"]);
        assert!(planned, "{p:#} ran outside its round");
    }
    assert_eq!(m["verdict"]["lost_nodes"].as_array().unwrap().len(), 0);
}

/// `--gpus-per-node` on nodes without GPUs (this machine): one endpoint per
/// GPU is planned and labelled, every node's doctor is asked how many GPUs
/// it has, each missing GPU is reported once with the CUDA driver's reason,
/// its pairs are skipped (no sweep is run against nothing), and the verdict
/// fails. The measuring path needs GPUs: docs/MATRIX.md says where it ran.
#[test]
fn per_gpu_endpoints_on_nodes_without_gpus_are_reported_missing() {
    let test = "per_gpu_endpoints_on_nodes_without_gpus_are_reported_missing";
    if !common::can_run_ray_cluster(test) {
        return;
    }
    common::require_nixl();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let script = r#"
      "$ROOT/debug/hosts.sh" exec "$KVP_HOSTS" a "$KV" matrix --ray-address "$KVP_RAY_ADDRESS" --gpus-per-node 2 \
        --sizes 1M --duration 0.2s --no-doctor --out "$D/m" >"$D/out.txt" 2>"$D/err.txt"
      echo $? >"$D/rc"
      echo "$KVP_A_IP $KVP_B_IP" >"$D/ips"
    "#;
    let run = common::on_ray_cluster("mg", 2, d, script, &[]);
    let text = |name: &str| std::fs::read_to_string(d.join(name)).unwrap_or_default();
    let logs =
        format!("{}\n{}\ndriver:\n{}", String::from_utf8_lossy(&run.stderr), text("err.txt"), text("m/driver.log"));
    assert!(run.status.success(), "{logs}");
    assert_eq!(text("rc").trim(), "1", "{logs}\n{}", text("out.txt"));
    let ips: Vec<String> = text("ips").split_whitespace().map(str::to_string).collect();
    let m: serde_json::Value = serde_json::from_str(&text("m/matrix.json")).expect("matrix.json");
    assert_eq!(m["status"], "complete", "{logs}");
    assert_eq!(m["gpus_per_node"], 2);
    // four endpoints, labelled by node and GPU; pairs only across nodes, each GPU once per round
    let labels: Vec<&str> = m["endpoints"].as_array().unwrap().iter().map(|e| e["label"].as_str().unwrap()).collect();
    let want: Vec<String> = ips.iter().flat_map(|ip| [format!("{ip}/gpu0"), format!("{ip}/gpu1")]).collect();
    assert_eq!(labels, want.iter().map(String::as_str).collect::<Vec<_>>());
    // the pairs' sweeps would run on GPU memory with the pair's GPUs (READ: --gpu TARGET,INITIATOR)
    assert!(m["sweep_args"].as_array().unwrap().iter().any(|a| a == "vram"), "{:#}", m["sweep_args"]);
    let plan: serde_json::Value = serde_json::from_str(&text("m/plan.json")).unwrap();
    let r0 = plan["rounds"][1].as_array().unwrap();
    assert_eq!(r0.len(), 2, "two GPU pairs at once: {r0:?}");
    for q in r0 {
        let (i, t) = (q[0].as_u64().unwrap(), q[1].as_u64().unwrap());
        let want = format!("{},{}", t % 2, i % 2);
        assert_eq!(q[2], serde_json::json!(["--gpu", want]), "{q}");
    }
    // doctor ran although --no-doctor was given (it counts the GPUs); each GPU missing, once, with the reason
    assert_eq!(m["nodes"].as_array().unwrap().iter().filter(|n| !n["doctor"].is_null()).count(), 2, "{logs}");
    let lost: Vec<&str> = m["verdict"]["lost_nodes"].as_array().unwrap().iter().map(|x| x.as_str().unwrap()).collect();
    assert_eq!(lost.len(), 4, "{lost:?}");
    for (l, label) in lost.iter().zip(&want) {
        assert!(l.starts_with(&format!("{label}: kvprobe doctor there found 0 GPU(s)")), "{l}");
        assert!(l.contains("libcuda.so.1"), "the CUDA driver's own reason: {l}");
    }
    let pairs = m["pairs"].as_array().unwrap();
    assert_eq!(pairs.len(), 8, "every cross-node ordered GPU pair accounted for");
    assert!(
        pairs.iter().all(|p| p["status"] == "skipped" && p["error"].as_str().unwrap().contains("missing")),
        "{pairs:#?}"
    );
    assert_eq!(m["verdict"]["grade"], "FAIL");
    assert!(text("out.txt").contains(&format!("{}/gpu1", ips[1])), "the table names GPUs: {}", text("out.txt"));
}
