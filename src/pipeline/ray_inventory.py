# kvprobe launch --engine ray: the cluster's inventory, as JSON on stdout.
#
# Run by kvprobe (embedded in the binary) with the Python that has Ray:
#   python -c <this> ADDRESS TIMEOUT_S
# It joins the cluster as a driver, lists its nodes (ray.nodes()), and runs
# one probe task pinned to each alive node (NodeAffinitySchedulingStrategy,
# no CPU or GPU asked for, so it runs even on a full node) that reports what
# that node really has: the versions of Ray, vLLM, NIXL, UCX and torch there,
# and its GPUs as nvidia-smi lists them. A node whose probe fails or times
# out is reported with the reason; the rest of the inventory still comes.
import json
import sys
import time


def probe():
    import ctypes
    import ctypes.util
    import importlib.metadata as md
    import importlib.util
    import os
    import platform
    import shutil
    import socket
    import subprocess

    out = {"hostname": socket.gethostname(), "python": platform.python_version(), "dists": {}}
    for d in md.distributions():
        name = (d.metadata["Name"] or "").lower()
        if name in ("ray", "vllm", "torch", "sglang") or name.startswith(("nixl", "libucx", "ucx-py")):
            out["dists"][name] = d.version
    # UCX: the library NIXL's wheel bundles (libucx-cuXX), else the system's
    ucx = {"version": None, "library": None, "error": None}
    cands = []
    spec = importlib.util.find_spec("libucx")
    if spec and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            cands.append(os.path.join(loc, "lib", "libucp.so.0"))
    sysucp = ctypes.util.find_library("ucp")
    if sysucp:
        cands.append(sysucp)
    for c in cands:
        if os.path.sep in c and not os.path.exists(c):
            continue
        try:
            lib = ctypes.CDLL(c)
            lib.ucp_get_version_string.restype = ctypes.c_char_p
            ucx["version"] = lib.ucp_get_version_string().decode()
            ucx["library"] = c
            break
        except OSError as e:
            ucx["error"] = str(e)
    if ucx["version"] is None and ucx["error"] is None:
        ucx["error"] = "no libucp found (searched the libucx wheel and the system library path)"
    out["ucx"] = ucx
    smi = shutil.which("nvidia-smi")
    gpus = {"gpus": [], "error": None, "driver": None}
    if smi is None:
        gpus["error"] = "nvidia-smi not found on this node"
    else:
        try:
            r = subprocess.run(
                [smi, "--query-gpu=index,name,memory.total,pci.bus_id,driver_version", "--format=csv,noheader,nounits"],
                capture_output=True, text=True, timeout=30)
            if r.returncode != 0:
                gpus["error"] = "nvidia-smi exit %d: %s" % (r.returncode, (r.stderr or r.stdout).strip()[-300:])
            for line in r.stdout.splitlines():
                f = [x.strip() for x in line.split(",")]
                if len(f) >= 5:
                    gpus["gpus"].append({"index": int(f[0]), "name": f[1], "memory_mib": int(float(f[2])), "pci_bus_id": f[3]})
                    gpus["driver"] = f[4]
        except Exception as e:  # noqa: BLE001 - reported, not raised
            gpus["error"] = "nvidia-smi failed: %s" % e
    out["gpu_query"] = gpus
    return out


def main():
    address, timeout = sys.argv[1], float(sys.argv[2])
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    t0 = time.time()
    ctx = ray.init(address=address, logging_level="ERROR", log_to_driver=False, namespace="kvprobe")
    nodes = []
    refs = {}
    remote = ray.remote(num_cpus=0)(probe)
    for n in ray.nodes():
        res = n.get("Resources", {})
        node = {
            "node_id": n["NodeID"],
            "address": n["NodeManagerAddress"],
            "hostname": n.get("NodeManagerHostname"),
            "alive": bool(n["Alive"]),
            "is_head": "node:__internal_head__" in res,
            "gpus": res.get("GPU", 0.0),
            "cpus": res.get("CPU", 0.0),
            "labels": n.get("Labels", {}),
            "probe": None,
            "probe_error": None,
        }
        nodes.append(node)
        if node["alive"]:
            refs[node["node_id"]] = remote.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=n["NodeID"], soft=False)).remote()
        else:
            node["probe_error"] = "node is not alive"
    deadline = time.time() + timeout
    for node in nodes:
        ref = refs.get(node["node_id"])
        if ref is None:
            continue
        try:
            node["probe"] = ray.get(ref, timeout=max(0.1, deadline - time.time()))
        except Exception as e:  # noqa: BLE001 - reported per node
            node["probe_error"] = "%s: %s" % (type(e).__name__, str(e).strip().splitlines()[-1][:300] if str(e).strip() else "")
    import importlib.metadata as md
    driver = {"ray": ray.__version__, "python": sys.version.split()[0]}
    for name in ("vllm", "nixl", "nixl-cu12", "nixl-cu13"):
        try:
            driver[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    print(json.dumps({
        "address": address,
        "gcs_address": ctx.address_info.get("gcs_address"),
        "dashboard_url": ctx.dashboard_url,
        "driver": driver,
        "nodes": nodes,
        "seconds": round(time.time() - t0, 3),
    }))


main()
