"""A reaper that outlives `owc serve`: given the processes of the local Ray node, it waits
for them to exit and kills what is left. Run detached, because Ray's core worker may end
the driver abruptly while the node shuts down (seen: the driver gone 0.1 s after
`ray.shutdown()` began, Ray's dashboard and runtime-env agents still alive 30 s later).

    python -m cluster.reaper --timeout 8 PID:CREATE_TIME ...
"""

from __future__ import annotations

import argparse
import subprocess
import sys

import psutil


def spawn(procs: list[psutil.Process], timeout_s: float) -> subprocess.Popen | None:
    """Start a detached reaper for ``procs`` (identified by pid and start time)."""
    ids = []
    for p in procs:
        try:
            ids.append(f"{p.pid}:{p.create_time()}")
        except psutil.Error:
            continue
    if not ids:
        return None
    return subprocess.Popen(
        [sys.executable, "-m", "cluster.reaper", "--timeout", str(timeout_s), *ids],
        start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def reap(ids: list[str], timeout_s: float) -> int:
    procs = []
    for item in ids:
        pid, _, created = item.partition(":")
        try:
            p = psutil.Process(int(pid))
            if abs(p.create_time() - float(created)) < 0.01:  # the same process, not a reused pid
                procs.append(p)
        except (psutil.Error, ValueError):
            continue
    _, alive = psutil.wait_procs(procs, timeout=timeout_s)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=5)
    return len(alive)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="cluster.reaper")
    p.add_argument("--timeout", type=float, default=8.0)
    p.add_argument("ids", nargs="*")
    a = p.parse_args(argv)
    reap(a.ids, a.timeout)


if __name__ == "__main__":
    main()
