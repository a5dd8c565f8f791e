"""`owc rollout status|promote|abort|pause|resume MODEL [--json]`: a model's (or an adapter's) rollout over the
gateway's admin API (docs/rollouts.md; an admin key from --api-key or OWC_ADMIN_KEY)."""

from __future__ import annotations

import json
from typing import Annotated, Optional
from urllib.parse import quote

import typer

from cluster.cli._common import out
from cluster.cli.adapter import KEY, URL, _call, _fail

MODEL = typer.Argument(help="Served model with a candidate, or an adapter with one (adapters.<name>.candidate)")
JSON = typer.Option("--json", help="JSON output")


def _show(data: dict, as_json: bool) -> None:
    if as_json:
        out.print_json(json.dumps(data))
        return
    steps = data.get("steps") or []
    step = data.get("step", 0)
    where = f"step {step + 1} of {len(steps)}" if steps else f"step {step + 1}"
    out.print(f"{data.get('model')}: [bold]{data.get('state')}[/bold], candidate at {data.get('weight')}% ({where})")
    if data.get("reason"):
        out.print(f"  reason: {data['reason']}", markup=False, highlight=False)
    for g in data.get("gates") or []:
        verdict = {True: "pass", False: "FAIL", None: "not measured"}[g.get("passed")]
        figs = ", ".join(f"{k} {_num(g.get(k))}" for k in ("stable", "candidate", "limit"))
        out.print(f"  {g['name']}: {verdict} ({figs})", markup=False, highlight=False)


def _num(v: object) -> str:
    return "-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


def _run(method: str, action: str | None, model: str, url: str, api_key: str | None, as_json: bool) -> None:
    path = f"/admin/v1/models/{quote(model, safe='/')}/rollout" + (f"/{action}" if action else "")
    status, data = _call(method, url, path, api_key)
    if status != 200:
        _fail(status, data)
    _show(data, as_json)


def status(model: Annotated[str, MODEL], *, url: Annotated[str, URL] = "http://127.0.0.1:8000",
           api_key: Annotated[Optional[str], KEY] = None, as_json: Annotated[bool, JSON] = False) -> None:
    """The rollout's state, step, candidate weight, reason and each gate's figures in the last window."""
    _run("GET", None, model, url, api_key, as_json)


def promote(model: Annotated[str, MODEL], *, url: Annotated[str, URL] = "http://127.0.0.1:8000",
            api_key: Annotated[Optional[str], KEY] = None, as_json: Annotated[bool, JSON] = False) -> None:
    """Promote the candidate now: it serves 100 %, stable drains."""
    _run("POST", "promote", model, url, api_key, as_json)


def abort(model: Annotated[str, MODEL], *, url: Annotated[str, URL] = "http://127.0.0.1:8000",
          api_key: Annotated[Optional[str], KEY] = None, as_json: Annotated[bool, JSON] = False) -> None:
    """Abort the rollout: the candidate's weight drops to 0, stable serves everything."""
    _run("POST", "abort", model, url, api_key, as_json)


def pause(model: Annotated[str, MODEL], *, url: Annotated[str, URL] = "http://127.0.0.1:8000",
          api_key: Annotated[Optional[str], KEY] = None, as_json: Annotated[bool, JSON] = False) -> None:
    """Hold the current step (its weight stays) until resume."""
    _run("POST", "pause", model, url, api_key, as_json)


def resume(model: Annotated[str, MODEL], *, url: Annotated[str, URL] = "http://127.0.0.1:8000",
           api_key: Annotated[Optional[str], KEY] = None, as_json: Annotated[bool, JSON] = False) -> None:
    """Resume a paused rollout: the current step's window starts again."""
    _run("POST", "resume", model, url, api_key, as_json)
