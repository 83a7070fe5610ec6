# kvprobe matrix: the Ray driver (embedded in kvprobe, run with the
# cluster's Python as `python -c <this> PLAN.json`).
#
# It places one agent actor on each node of the plan with Ray's node
# affinity (no CPU or GPU asked for), and through them: `kvprobe doctor` on
# every node, one `kvprobe serve` per endpoint (per node, or per GPU: a serve
# takes one sweep at a time), then the plan's rounds of `kvprobe sweep
# --peer` (each pair on its initiator's node against its target's serve, with
# the pair's own arguments, e.g. --gpu). Per GPU, the doctor's CUDA device
# count says which GPUs a node really has; a missing one is reported once
# and its pairs skipped. Each finished step is one JSON line on stdout, which
# kvprobe turns into matrix.json as it goes. A node whose agent dies (or
# stops answering) is reported once as lost; its later pairs are skipped and
# the rest of the matrix goes on. Every process an agent starts dies with it
# (PR_SET_PDEATHSIG), so nothing outlives the driver.
import json
import os
import signal
import subprocess
import sys
import tempfile
import time


def emit(**ev):
    sys.stdout.write(json.dumps(ev) + "\n")
    sys.stdout.flush()


def _die_with_parent():
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def tail(s, n=1500):
    s = s or ""
    return s[-n:]


class Agent:
    def __init__(self, kvprobe, env):
        self.kv = kvprobe if os.path.isabs(kvprobe) else os.path.join(os.getcwd(), kvprobe)
        self.env = dict(os.environ, **env)
        self.tmp = tempfile.mkdtemp(prefix="kvprobe-matrix-")
        if os.path.isfile(self.kv) and not os.access(self.kv, os.X_OK):
            # a shipped binary may arrive without its mode bits: run a private copy
            import shutil
            own = os.path.join(self.tmp, "kvprobe")
            shutil.copy(self.kv, own)
            os.chmod(own, 0o755)
            self.kv = own
        self.serves = {}

    def hello(self):
        import socket
        r = subprocess.run([self.kv, "--version"], capture_output=True, text=True, timeout=60, env=self.env)
        return {"hostname": socket.gethostname(), "pid": os.getpid(), "kvprobe": self.kv,
                "version": r.stdout.strip(), "exit_code": r.returncode, "stderr": tail(r.stderr, 300)}

    def doctor(self, timeout):
        try:
            r = subprocess.run([self.kv, "doctor", "--json"], capture_output=True, text=True, timeout=timeout,
                               env=self.env, preexec_fn=_die_with_parent)
        except subprocess.TimeoutExpired:
            return {"exit_code": None, "report": None, "error": "doctor took over %.0f s" % timeout}
        try:
            report = json.loads(r.stdout)
        except ValueError:
            report = None
        return {"exit_code": r.returncode, "report": report, "error": None if report else tail(r.stderr, 500)}

    def serve_start(self, ip, timeout, key="node"):
        # one serve per endpoint: `key` is "node" or the GPU's ordinal
        err = os.path.join(self.tmp, "serve-%s.err" % key)
        log = open(err, "w")
        serve = subprocess.Popen(
            [self.kv, "serve", "--listen", "%s:0" % ip, "--json", "--log-dir",
             os.path.join(self.tmp, "serve-logs-%s" % key)],
            stdout=subprocess.PIPE, stderr=log, text=True, env=self.env, preexec_fn=_die_with_parent)
        self.serves[key] = serve
        import select
        deadline = time.time() + timeout
        while time.time() < deadline:
            r, _, _ = select.select([serve.stdout], [], [], 0.5)
            if r:
                line = serve.stdout.readline()
                if not line:
                    break
                try:
                    ev = json.loads(line)
                except ValueError:
                    continue
                if ev.get("event") == "listening":
                    # keep reading its later events, or a full pipe would block it
                    import threading
                    threading.Thread(target=lambda f=serve.stdout: [None for _ in f], daemon=True).start()
                    return {"addr": ev["addr"], "token": ev["token"], "pid": serve.pid}
            if serve.poll() is not None:
                break
        serve.kill()
        return {"error": "kvprobe serve did not start: " + tail(open(err).read(), 500)}

    def sweep(self, peer, token, args, timeout, tag):
        out = os.path.join(self.tmp, tag)
        t0 = time.time()
        argv = [self.kv, "sweep", "--peer", peer, "--token", token] + list(args) + ["--out", out, "--no-fail", "-q"]
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=self.env,
                               preexec_fn=_die_with_parent)
            code, err = r.returncode, tail(r.stderr)
        except subprocess.TimeoutExpired as e:
            code, err = None, "no result within %.0f s; %s" % (timeout, tail(str(e.stderr or ""), 500))
        results = None
        try:
            with open(os.path.join(out, "results.json")) as f:
                results = json.load(f)
        except (OSError, ValueError):
            pass
        return {"exit_code": code, "results": results, "stderr": err, "seconds": round(time.time() - t0, 3)}

    def serve_alive(self, key="node"):
        s = self.serves.get(key)
        return s is not None and s.poll() is None

    def stop(self):
        for s in self.serves.values():
            if s.poll() is None:
                s.terminate()
        for s in self.serves.values():
            try:
                s.wait(10)
            except subprocess.TimeoutExpired:
                s.kill()
        return True


def gpu_count(report):
    # CUDA devices the node's doctor saw, and why none when it saw none
    facts = (report or {}).get("facts") or {}
    cuda = facts.get("cuda") or {}
    return len(cuda.get("devices") or []), facts.get("cuda_error")


def main():
    plan = json.load(open(sys.argv[1]))
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    # --ship: the binary's folder as the job's working_dir (Ray uploads it
    # once and unpacks it on every node; only a job may give a local path)
    job_env = {"working_dir": plan["ship_dir"]} if plan.get("ship_dir") else None
    ray.init(address=plan["address"], logging_level="ERROR", log_to_driver=False, namespace="kvprobe",
             runtime_env=job_env)
    nodes = plan["nodes"]
    # endpoints: [node, gpu or None]; one per node unless per GPU
    endpoints = [tuple(e) for e in plan["endpoints"]]
    per_gpu = plan.get("gpus_per_node") is not None
    key = lambda e: "node" if endpoints[e][1] is None else str(endpoints[e][1])
    # a node runs one sweep per GPU at once, and answers serve_alive beside them
    opts = {"num_cpus": 0, "max_restarts": 0, "max_concurrency": 4 + (plan.get("gpus_per_node") or 0)}
    remote = ray.remote(**opts)(Agent)
    agents, lost = {}, {}

    def lose(i, why):
        if i not in lost:
            lost[i] = why
            emit(event="node_lost", node=i, error=why)
            # a half-alive agent must not keep a sweep running against someone's serve
            try:
                ray.kill(agents[i], no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass

    for i, n in enumerate(nodes):
        agents[i] = remote.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=n["node_id"], soft=False)
                                   ).remote(plan["kvprobe"], plan.get("env", {}))

    def gather(refs, timeout, what, node_of=lambda k: k):
        # {key: result}; the node (node_of(key)) whose call raised or did not answer is lost
        out = {}
        pending = dict(refs)
        deadline = time.time() + timeout
        while pending:
            ready, _ = ray.wait(list(pending.values()), num_returns=len(pending), timeout=max(0.0, deadline - time.time()))
            for ref in ready:
                i = next(k for k, v in pending.items() if v == ref)
                del pending[i]
                try:
                    out[i] = ray.get(ref)
                except Exception as e:  # noqa: BLE001 - a dead actor, reported per node
                    lose(node_of(i), "%s during %s: %s" % (type(e).__name__, what, str(e).strip().splitlines()[0][:300] if str(e).strip() else ""))
            if time.time() >= deadline:
                break
        for i in pending:
            lose(node_of(i), "no answer to %s within %.0f s" % (what, timeout))
        return out

    hello = gather({i: a.hello.remote() for i, a in agents.items()}, plan["start_timeout"], "start")
    for i, h in hello.items():
        if h["exit_code"] != 0:
            lose(i, "kvprobe does not run there (%s): %s" % (h["kvprobe"], h["stderr"]))
        else:
            emit(event="agent", node=i, **h)
    missing = {}  # endpoint -> why: a GPU its node does not have

    def miss(e, why):
        if e not in missing:
            missing[e] = why
            emit(event="endpoint_lost", endpoint=e, error=why)

    if plan.get("doctor", True):
        live = {i: agents[i].doctor.remote(plan["doctor_timeout"]) for i in agents if i not in lost}
        for i, d in gather(live, plan["doctor_timeout"] + 30, "doctor").items():
            emit(event="doctor", node=i, **d)
            if per_gpu:
                have, why = gpu_count(d.get("report"))
                for e, (n, g) in enumerate(endpoints):
                    if n == i and g >= have:
                        miss(e, "kvprobe doctor there found %d GPU(s), so no GPU %d%s" % (
                            have, g, (": " + why[:300]) if (have == 0 and why) else
                            ("" if d.get("report") else " (no doctor report: %s)" % (d.get("error") or "")[:300])))
    serves = {}  # endpoint -> its serve
    live = {e: agents[n].serve_start.remote(nodes[n]["address"], 60, key(e))
            for e, (n, g) in enumerate(endpoints) if n not in lost and e not in missing}
    for e, s in gather(live, 90, "serve start", node_of=lambda e: endpoints[e][0]).items():
        n = endpoints[e][0]
        if "error" in s:
            if per_gpu:
                miss(e, s["error"])
            else:
                lose(n, s["error"])
        else:
            serves[e] = s
            emit(event="serve", node=n, endpoint=e, **s)

    def gone(e):
        # why endpoint e cannot take part, or None
        n = endpoints[e][0]
        if n in lost:
            return "node %d was lost" % n
        if e in missing:
            return "endpoint %d is missing: %s" % (e, missing[e])
        if e not in serves:
            return "endpoint %d has no serve" % e
        return None

    for r, rnd in enumerate(plan["rounds"]):
        t0 = time.time()
        refs = {}
        for (a, b, extra) in rnd:
            why = gone(a) or gone(b)
            if why:
                emit(event="pair", round=r, initiator=a, target=b, status="skipped", error=why)
                continue
            refs[(a, b)] = agents[endpoints[a][0]].sweep.remote(
                serves[b]["addr"], serves[b]["token"], plan["sweep_args"] + list(extra),
                plan["pair_timeout"], "r%d-%d-%d" % (r, a, b))
        pending = dict(refs)
        deadline = time.time() + plan["pair_timeout"] + 60
        while pending:
            ready, _ = ray.wait(list(pending.values()), num_returns=1, timeout=max(0.0, deadline - time.time()))
            if not ready:
                break
            key = next(k for k, v in pending.items() if v == ready[0])
            del pending[key]
            a, b = key
            na, nb = endpoints[a][0], endpoints[b][0]
            try:
                res = ray.get(ready[0])
            except Exception as e:  # noqa: BLE001 - the initiator's agent died
                lose(na, "%s in round %d: %s" % (type(e).__name__, r, str(e).strip().splitlines()[0][:300] if str(e).strip() else ""))
                emit(event="pair", round=r, initiator=a, target=b, status="skipped", error="node %d was lost" % na)
                continue
            ok = res["results"] is not None and res["exit_code"] == 0
            if not ok and nb not in lost:
                # the target's node, or its serve, may be gone: ask its agent
                try:
                    if not ray.get(agents[nb].serve_alive.remote(key(b)), timeout=20):
                        if per_gpu:
                            miss(b, "its kvprobe serve ended (round %d)" % r)
                        else:
                            lose(nb, "its kvprobe serve ended (round %d)" % r)
                except Exception as e:  # noqa: BLE001
                    lose(nb, "%s in round %d (its agent stopped answering)" % (type(e).__name__, r))
            emit(event="pair", round=r, initiator=a, target=b,
                 status="ok" if ok else ("skipped" if gone(b) else "failed"),
                 seconds=res["seconds"], exit_code=res["exit_code"], results=res["results"],
                 error=None if ok else res["stderr"][-600:])
        for (a, b) in pending:
            lose(endpoints[a][0], "no result for round %d within %.0f s" % (r, plan["pair_timeout"] + 60))
            emit(event="pair", round=r, initiator=a, target=b, status="skipped", error="no answer")
        emit(event="round", round=r, seconds=round(time.time() - t0, 3))
    gather({i: agents[i].stop.remote() for i in agents if i not in lost}, 30, "stop")
    emit(event="done")


main()
