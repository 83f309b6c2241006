"""Run `fota` with every thread under cProfile, for finding where `fota serve` spends its CPU.

cProfile (`python -m cProfile`) sees the main thread only, and `fota serve` does its work in paho's
network thread (reports, chunk requests) and the campaign ticker. This launcher wraps every thread's
run() in a profiler of its own (counting the thread's CPU time, not waiting) and, as each thread ends (the server joins them on SIGTERM), writes
OUT/<thread name>-<n>.prof; `python bench/profile_serve.py --show OUT` prints them merged.

    .venv/bin/python bench/profile_serve.py OUT serve --data D --broker mqtt://...   # instead of `fota serve ...`
    .venv/bin/python bench/profile_serve.py --show OUT [N]                           # top N by own time
    .venv/bin/python bench/fleet.py --devices 2000 --boards 0 --profile OUT          # the bench does the first
    .venv/bin/python bench/profile_serve.py --threads OUT serve ...   # no profiler: OUT/tids.json names each thread's
                                                                      # native id (cProfile inflates paho's share)
"""

from __future__ import annotations

import cProfile
import itertools
import json
import pstats
import sys
import threading
import time
from pathlib import Path

_count = itertools.count()


def _profiled(out: Path, name: str, fn, *args, **kwargs):
    prof = cProfile.Profile(time.thread_time)  # CPU time of the thread: waiting (sleep, locks, I/O) is not counted
    prof.enable()
    try:
        return fn(*args, **kwargs)
    finally:
        prof.disable()
        prof.dump_stats(out / f"{name}-{next(_count)}.prof")


def _timed(out: Path, name: str, fn, *args, **kwargs):
    """Run fn with no profiler; OUT/tids.json maps the thread's native id to `name`, so a reader of
    /proc/PID/task/TID/stat (bench/fleet.py --threads) can tell whose CPU time it is over any span."""
    with _lock:
        path = out / "tids.json"
        seen = json.loads(path.read_text()) if path.exists() else {}
        seen[str(threading.get_native_id())] = name
        path.write_text(json.dumps(seen, indent=1))
    return fn(*args, **kwargs)


_lock = threading.Lock()


def run(out: Path, argv: list[str], *, threads_only: bool = False) -> int:
    out.mkdir(parents=True, exist_ok=True)
    original = threading.Thread.run
    wrap = _timed if threads_only else _profiled

    def run_thread(self) -> None:
        wrap(out, self.name.replace("/", "_").replace(" ", "_"), original, self)

    threading.Thread.run = run_thread  # type: ignore[method-assign]
    from host_tools.cli import main

    return wrap(out, "main", main, argv)


def show(out: Path, top: int) -> None:
    files = sorted(out.glob("*.prof"))
    for sort in ("tottime", "cumulative"):
        stats = pstats.Stats(*map(str, files))
        print(f"== {len(files)} threads' profiles in {out}, by {sort}")
        stats.sort_stats(sort).print_stats(top)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--show"]:
        show(Path(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 40)
    elif sys.argv[1:2] == ["--threads"]:
        raise SystemExit(run(Path(sys.argv[2]), sys.argv[3:], threads_only=True))
    else:
        raise SystemExit(run(Path(sys.argv[1]), sys.argv[2:]))
