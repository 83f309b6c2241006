"""The server's chunk lookup alone, beside the path it replaced (issue 18): CPU per chunk, no network.

Old path, rebuilt here as the baseline: an SQL query for the offer and a file open + seek + read per
chunk. Now: the offer from MqttService's cache, the bytes from the package's payload mapped once
(PackageStore.payload). Both return the same bytes (checked). Prints the median of 5 runs of this
thread's CPU time per chunk; bench/mqtt.py prints the whole serving cost (with the MQTT publish).

    .venv/bin/python bench/serve_chunk.py
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from host_tools.server.mqtt_service import MqttService  # noqa: E402
from host_tools.server.packages import PackageStore  # noqa: E402
from host_tools.server.registry import Registry  # noqa: E402
from simkit import fw_image, fw_package  # noqa: E402


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        registry, store = Registry(home / "registry.sqlite"), PackageStore(home / "packages")
        pid, package = store.add(fw_package(fw_image("2.0.0", pad=400_000), version="2.0.0", sequence=2))
        registry.add_package(pid, str(store.path(pid)), package.manifest)
        offer_id = registry.create_offer("dev1", pid, chunk=4096, policy=0)
        _, start = store.load(pid)
        service = MqttService(registry, store, "mqtt://127.0.0.1:1")  # never started: only its offer cache is used

        def old(offset: int) -> bytes:
            registry.offer(offer_id)
            with open(store.path(pid), "rb") as f:
                f.seek(start + offset)
                return f.read(4096)

        def new(offset: int) -> bytes:
            service._cached_offer(offer_id)
            return store.chunk(pid, offset, 4096)

        offsets = list(range(0, package.manifest.encoded_size - 4096, 4096))
        if any(old(o) != new(o) for o in offsets):
            raise SystemExit("the two paths returned different bytes")
        results = {}
        for name, path in (("SQL query + file open per chunk (before)", old), ("cached offer + mapped payload (now)", new)):
            runs = []
            for _ in range(5):
                started = time.thread_time()
                for _ in range(10):
                    for o in offsets:
                        path(o)
                runs.append((time.thread_time() - started) / (10 * len(offsets)))
            results[name] = statistics.median(runs)
        registry.close()
    print(f"chunk lookup, {len(offsets)} chunks of 4 KiB x 10, median of 5 runs, this thread's CPU time "
          "(shared 2-core host under load: +-30 %)")
    for name, s in results.items():
        print(f"  {name:<42} {s * 1e6:7.2f} us per chunk")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
