"""Package boundaries: only cluster/engine touches vLLM, and config validation works
where vLLM (and Ray) are not installed (chart CI, controller image)."""

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
IMPORT_VLLM = re.compile(r"^\s*(from|import)\s+(vllm|ray\.serve\.llm|ray\.llm)\b", re.M)


def test_only_the_engine_package_imports_vllm():
    offenders = [
        str(p.relative_to(REPO)) for p in (REPO / "cluster").rglob("*.py")
        if IMPORT_VLLM.search(p.read_text()) and "cluster/engine/" not in p.as_posix()
    ]
    assert offenders == []


def test_config_validate_works_without_vllm_or_ray():
    code = (
        "import sys; sys.modules['vllm'] = None; sys.modules['ray'] = None; "
        "from cluster.cli import app; app(['config', 'validate', 'deploy/gpt-oss-120b-tp2.yaml'])"
    )
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "vLLM not installed: engine_kwargs names not checked" in p.stdout


def test_config_validate_rejects_bad_engine_kwargs_with_vllm(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("models:\n  m:\n    source: x\n    engine_kwargs: {max_num_seqz: 4}\n")
    p = subprocess.run([sys.executable, "-m", "cluster.cli", "config", "validate", str(bad)],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert "models.m.engine_kwargs.max_num_seqz: not a vLLM engine argument" in p.stderr


def test_config_validate_names_unknown_key_path(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("models:\n  m:\n    source: x\n    replicas: {min: 1, maxx: 2}\n")
    p = subprocess.run([sys.executable, "-m", "cluster.cli", "config", "validate", str(bad), "--no-engine-args"],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "models.m.replicas.maxx: unknown key" in p.stderr
