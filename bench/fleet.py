"""One campaign over 1,000 protocol-level devices and 10 virtual boards: time, server CPU per device.

`fota serve` runs as its own process(es) against mosquitto (logins and ACLs from the registry, as
`fota broker-files` writes them), so CPU time can be read from /proc at the end; virtual boards
(the real agent under micropython) are the test wave, ProtoDevices (docs/PROTOCOL.md spoken from
CPython, no flash) the field wave. Prints the time from start to COMPLETED, the server's CPU per
device and per chunk, the broker's bytes (read + written, /proc/PID/io) and the outcomes.

    .venv/bin/python bench/fleet.py [--devices 1000] [--boards 10]          # one fota serve, SQLite
    .venv/bin/python bench/fleet.py --devices 10000 --boards 1 --workers 1,3
        # a throwaway PostgreSQL; a run with 1 worker (the baseline), then a fresh fleet with 3 workers;
        # ratios against the baseline, never asserted (docs/DEPLOY.md has the numbers of this machine)
    .venv/bin/python bench/fleet.py --devices 2000 --boards 0 --profile /tmp/prof   # where the server's CPU goes:
    .venv/bin/python bench/profile_serve.py --show /tmp/prof/run0-w0                #   every thread under cProfile
    .venv/bin/python bench/fleet.py --devices 2000 --boards 0 --threads /tmp/cpu    # each thread's CPU, no profiler
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from esp32model import stat_cpu_s, task_cpu_s  # noqa: E402

from brokers import start_mosquitto  # noqa: E402
from host_tools.fleet.campaign import COMPLETED, CampaignRunner, CampaignSpec  # noqa: E402
from host_tools.fleet.protodevice import DeviceSpec, enroll  # noqa: E402
from host_tools.fleet.protofleet import ProtoFleet  # noqa: E402
from host_tools.server.identity import Identities  # noqa: E402
from host_tools.server.registry import Registry  # noqa: E402
from host_tools.server.workers import SharedPackageStore  # noqa: E402
from host_tools.sim.runtime import BoardRun  # noqa: E402
from mqttkit import device_id, mqtt_board  # noqa: E402
from simkit import fw_image, fw_package, session_signer  # noqa: E402


def io_bytes(pid: int) -> int:
    """Bytes a process read and wrote through system calls (its sockets, for a broker without persistence)."""
    fields = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    return int(fields["rchar"]) + int(fields["wchar"])


def thread_seconds(pid: int, names: Path) -> dict[str, float]:
    """CPU seconds of each named thread of a process (bench/profile_serve.py --threads wrote the names)."""
    tids = json.loads(names.read_text()) if names.exists() else {}
    out: dict[str, float] = {}
    for tid, name in tids.items():
        with contextlib.suppress(OSError):
            out[name] = task_cpu_s(pid, tid)
    return out


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) clock ticks of all cores since boot (/proc/stat): how busy the machine was between two reads."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return sum(fields) - idle, sum(fields)


def wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    raise SystemExit(f"timed out waiting for {what}")


def run(home: Path, args, workers: int, database: str | None) -> dict:
    """One campaign: mosquitto, `workers` fota serve processes (0: one plain fota serve on SQLite), a fresh fleet."""
    home.mkdir()
    package = fw_package(fw_image("2.0.0"), version="2.0.0", sequence=2)
    broker = start_mosquitto(home, auth=True)
    # no connection cap; the workers get every report, and a burst must not overflow their queue (docs/DEPLOY.md)
    broker.conf.write_text(broker.conf.read_text() + "max_connections -1\nmax_queued_messages 1000000\n")
    broker.stop()
    broker.start()
    registry = Registry(database or home / "w0" / "registry.sqlite")
    ids = Identities(registry)
    ids.server_credentials()
    specs = enroll([DeviceSpec(f"proto{i:05d}", keys=(session_signer().public_key,)) for i in range(args.devices)], ids)
    boards = [mqtt_board(home, f"b{i}", host=broker.host, port=broker.port, ids=ids) for i in range(args.boards)]
    broker.sync(ids)
    serves = []
    for i in range(max(workers, 1)):
        data = home / f"w{i}"
        data.mkdir(exist_ok=True)
        launcher = ["-m", "host_tools.cli"]
        if args.profile or args.threads:
            mode = [] if args.profile else ["--threads"]
            launcher = [str(ROOT / "bench" / "profile_serve.py"), *mode, str((args.profile or args.threads) / f"run{workers}-w{i}")]
        cmd = [sys.executable, *launcher, "serve", "--data", str(data), "--no-coap", "--no-api", "--broker", broker.server_url]
        if workers:
            cmd += ["--worker", f"w{i}", "--database", database]
        with open(data / "serve.log", "w") as log:
            serves.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT))
    runs, fleet = [], None
    try:
        wait(lambda: all((home / f"w{i}" / "serve.json").exists() for i in range(len(serves))), 30, "fota serve")
        runs = [BoardRun(b, repl_pty=False) for b in boards]
        for r in runs:
            r.start()
        fleet = ProtoFleet(broker.url, specs, connect_rate=400)
        fleet.start()
        fleet.wait_connected(300)
        total = args.devices + args.boards
        wait(lambda: len([d for d in registry.devices() if d["version"]]) >= total, 300 + total / 10, "every device's state")
        for b in boards:
            registry.set_groups(device_id(b), ["test"])
        store = SharedPackageStore(home / "w0" / "packages", registry.db)  # w0's own store; other workers: the database
        pid, parsed = store.add(package)
        registry.add_package(pid, str(store.path(pid)), parsed.manifest)
        spec = CampaignSpec(name="scale", package=pid, waves=["test", "100%"] if boards else ["100%"],
                            max_in_flight=args.in_flight, error_threshold=0.5, min_sample=10, device_timeout_s=300)
        runner = CampaignRunner(registry, offer=lambda *a, **k: 0, withdraw=lambda d: None)
        runner.create(spec)
        stats_before = fleet.stats()
        cpu_before = [stat_cpu_s(p.pid) for p in serves]
        tids = (args.threads / f"run{workers}-w0" / "tids.json") if args.threads else None
        threads_before = thread_seconds(serves[0].pid, tids) if tids else {}
        machine_before = machine_jiffies()
        io_before = io_bytes(broker.pid)
        started = time.monotonic()
        runner.start("scale")  # the serving processes pick it up on their next tick
        wait(lambda: registry.campaign("scale")["status"] == COMPLETED, 3600, "the campaign")
        elapsed = time.monotonic() - started
        per_worker = [stat_cpu_s(p.pid) - before for p, before in zip(serves, cpu_before)]
        threads = {k: v - threads_before.get(k, 0.0) for k, v in thread_seconds(serves[0].pid, tids).items()} if tids else {}
        cpu = sum(per_worker)
        machine = [b - a for a, b in zip(machine_before, machine_jiffies())]
        broker_bytes = io_bytes(broker.pid) - io_before
        outcome: dict[str, int] = {}
        for row in registry.campaign_devices("scale"):
            outcome[row["status"]] = outcome.get(row["status"], 0) + 1
        stats = fleet.stats()
    finally:
        if fleet:
            fleet.stop()
        for r in runs:
            r.stop()
        for p in serves:
            p.send_signal(signal.SIGTERM)
            p.wait(timeout=60)
        registry.close()
        broker.stop()
    chunks = max(stats.chunks - stats_before.chunks, 1)
    return {"workers": workers, "devices": total, "package": len(package), "time_s": elapsed, "cpu_s": cpu,
            "cpu_ms_per_device": 1000 * cpu / total, "cpu_us_per_chunk": 1e6 * cpu / chunks, "chunks": chunks,
            "broker_bytes": broker_bytes, "outcome": outcome, "per_worker_s": per_worker, "threads": threads,
            "machine_busy": machine[0] / max(machine[1], 1), "cores": os.cpu_count()}


def show(r: dict, first: dict, args) -> None:
    who = f"{r['workers']} worker(s), PostgreSQL" if r["workers"] else "one fota serve, SQLite"
    print(f"campaign over {r['devices']} devices ({args.boards} virtual boards; package {r['package']} B, in-flight cap "
          f"{args.in_flight}, mosquitto): {who}")
    print(f"  time to complete   {r['time_s']:8.1f} s    x{r['time_s'] / first['time_s']:.2f}")
    print(f"  server CPU         {r['cpu_s']:8.2f} s    = {r['cpu_ms_per_device']:.2f} ms per device, "
          f"{r['cpu_us_per_chunk']:.0f} us per chunk ({r['chunks']} chunks)    x{r['cpu_s'] / first['cpu_s']:.2f}")
    print(f"  broker bytes       {r['broker_bytes'] / 1e6:8.1f} MB   x{r['broker_bytes'] / first['broker_bytes']:.2f}")
    print(f"  outcomes           {json.dumps(r['outcome'])}")
    # why more workers need not be faster here: every worker checks every report (only one takes it), and
    # the cores are shared with PostgreSQL, mosquitto and the simulated fleet
    print(f"  machine            {r['cores']} cores, {r['machine_busy']:.0%} busy during the campaign (every process); "
          f"the workers used {r['cpu_s'] / r['time_s'] / r['cores']:.0%} of it"
          + (f" (each: {', '.join(f'{c:.1f}' for c in r['per_worker_s'])} s)" if len(r["per_worker_s"]) > 1 else ""), flush=True)
    if r["threads"]:  # --threads: the first worker's CPU by thread over the campaign
        print("  worker 0 by thread " + ", ".join(f"{name} {s:.2f} s ({1000 * s / r['devices']:.2f} ms/device)"
                                                  for name, s in sorted(r["threads"].items(), key=lambda kv: -kv[1])), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--boards", type=int, default=10)
    parser.add_argument("--in-flight", type=int, default=200)
    parser.add_argument("--workers", default="0",
                        help="comma-separated runs: 0 = one fota serve on SQLite; N = N workers on PostgreSQL (default: 0)")
    parser.add_argument("--profile", type=Path, help="run each fota serve under bench/profile_serve.py, profiles into this directory")
    parser.add_argument("--threads", type=Path, help="each fota serve's CPU time per thread (no profiler) into DIR/runN-wI/threads.json")
    args = parser.parse_args()
    plan = [int(w) for w in args.workers.split(",")]
    results = []
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        base = None
        if any(plan):
            from pgcluster import fresh_database, postgres_bindir, throwaway_postgres

            bindir = postgres_bindir()
            if bindir is None:
                raise SystemExit("--workers N needs PostgreSQL (make system-deps installs it)")
            base = stack.enter_context(throwaway_postgres(bindir))
        for n, workers in enumerate(plan):
            database = fresh_database(base) if workers else None
            results.append(run(Path(tmp) / f"run{n}", args, workers, database))
            show(results[-1], results[0], args)  # at once: a later run may fail or take long
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
