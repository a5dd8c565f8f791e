"""Keys files reloaded without a restart: on change (also a Kubernetes Secret's symlink
swap), on SIGHUP; a file that no longer loads keeps the keys in force."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import yaml

from cluster.gateway.auth.key_reload import KeyReloader, Watched, key_table_reload
from cluster.gateway.auth.keys import KeyTable, hash_key


def write(path, keys):
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump({hash_key(k): v for k, v in keys.items()}))
    os.replace(tmp, path)


def reloader(path, period_s=3600.0):
    table = KeyTable.load(files=[str(path)], env_var=None)
    results = []
    r = KeyReloader([Watched("api_keys", [str(path)], key_table_reload(table, files=[str(path)], env_var=None))],
                    period_s=period_s, on_result=lambda name, result: results.append(result))
    return table, r, results


def test_added_and_revoked_keys_after_a_change(tmp_path):
    f = tmp_path / "keys.yaml"
    write(f, {"a": "A", "b": "B"})
    table, r, results = reloader(f)
    assert r.check() == []  # unchanged: nothing read
    write(f, {"a": "A", "c": "C"})
    assert r.check() == ["api_keys"] and results == ["ok"]
    assert (table.lookup("a"), table.lookup("b"), table.lookup("c")) == ("A", None, "C")


def test_a_file_that_no_longer_loads_keeps_the_keys_in_force(tmp_path):
    f = tmp_path / "keys.yaml"
    write(f, {"a": "A"})
    table, r, results = reloader(f)
    f.write_text("[not: a mapping")
    assert r.check() == [] and results == ["failed"] and table.lookup("a") == "A"
    assert r.check() == [] and results == ["failed", "failed"]  # retried until it loads
    write(f, {"b": "B"})
    assert r.check() == ["api_keys"] and table.lookup("a") is None and table.lookup("b") == "B"


def test_a_kubernetes_secret_update_is_seen(tmp_path):
    """kubelet writes a new timestamped directory and swaps the `..data` link; the file's
    own path (keys.yaml -> ..data/keys.yaml) never changes."""
    mount = tmp_path / "secret"
    mount.mkdir()
    (mount / "..v1").mkdir()
    write(mount / "..v1" / "keys.yaml", {"a": "A"})
    (mount / "..data").symlink_to("..v1")
    (mount / "keys.yaml").symlink_to("..data/keys.yaml")
    table, r, _ = reloader(mount / "keys.yaml")
    (mount / "..v2").mkdir()
    write(mount / "..v2" / "keys.yaml", {"b": "B"})
    (mount / "..data.tmp").symlink_to("..v2")
    os.replace(mount / "..data.tmp", mount / "..data")
    assert r.check() == ["api_keys"] and table.lookup("b") == "B" and table.lookup("a") is None


def test_sighup_reloads_at_once(tmp_path):
    f = tmp_path / "keys.yaml"
    write(f, {"a": "A"})
    table, r, _ = reloader(f, period_s=3600)

    async def run():
        await r.start()
        try:
            write(f, {"z": "Z"})
            os.kill(os.getpid(), signal.SIGHUP)
            deadline = time.monotonic() + 5
            while table.lookup("z") is None and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
        finally:
            await r.stop()

    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # without the reloader's handler: ignored, not fatal
    try:
        asyncio.run(run())
    finally:
        signal.signal(signal.SIGHUP, previous)
    assert table.lookup("z") == "Z"
