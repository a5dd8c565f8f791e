import subprocess
import time

import psutil

from cluster import reaper


def test_reaper_kills_what_outlives_its_timeout_and_skips_reused_pids():
    stubborn = subprocess.Popen(["sleep", "60"])
    quick = subprocess.Popen(["sleep", "0.2"])
    p = psutil.Process(stubborn.pid)
    ids = [f"{stubborn.pid}:{p.create_time()}", f"{quick.pid}:{psutil.Process(quick.pid).create_time()}", "999999:1.0"]
    t0 = time.monotonic()
    killed = reaper.reap(ids + [f"{stubborn.pid}:{p.create_time() - 100}"], timeout_s=1.0)
    # One killed (the stubborn one); the quick one had exited; the bogus ids were skipped.
    assert killed == 1 and not p.is_running() and time.monotonic() - t0 < 5


def test_spawned_reaper_is_detached():
    victim = subprocess.Popen(["sleep", "60"])
    r = reaper.spawn([psutil.Process(victim.pid)], timeout_s=0.5)
    assert r is not None and r.wait(timeout=15) == 0
    assert victim.wait(timeout=5) != 0
    assert reaper.spawn([], timeout_s=1) is None
