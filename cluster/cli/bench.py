"""`owc bench`: a load scenario against a target, or the comparison stack."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from cluster.cli._common import console


def bench(
    *,
    scenario: Annotated[str, typer.Argument(help="Scenario name (cluster/bench/scenarios/) or YAML path")],
    target: Annotated[Optional[str], typer.Option(help="Base URL of an OpenAI server to load")] = None,
    model: Annotated[Optional[str], typer.Option(help="Model to request (default: the target's first)")] = None,
    api_key: Annotated[Optional[str], typer.Option(envvar="OWC_API_KEY", help="API key for the target")] = None,
    compare: Annotated[bool, typer.Option(help="Start bare vLLM, the owc gateway and vllm-router on one engine and compare them")] = False,
    runs: Annotated[int, typer.Option(help="Interleaved runs per target (--compare)")] = 5,
    config: Annotated[Optional[Path], typer.Option(help="owc config whose first model the comparison serves")] = None,
    out: Annotated[Path, typer.Option(help="Directory for the JSON, Markdown and PNG report")] = Path("loadtests/results"),
) -> None:
    """Run a load scenario against a target, or compare targets side by side (--compare)."""
    import asyncio
    import platform
    import time

    from cluster.bench.runner import run_compare, run_single
    from cluster.bench.report import markdown, write_report
    from cluster.bench.scenario import load_scenario

    try:
        sc = load_scenario(scenario)
    except (FileNotFoundError, ValueError) as e:
        console.print(f"[red]{e}[/red]")
        raise typer.Exit(2) from None
    doc: dict = {
        "command": "owc bench " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["bench"] else f"owc bench {scenario}",
        "created_unix": int(time.time()),
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "scenario": sc.model_dump(mode="json"),
    }
    if compare:
        from cluster.bench.stack import comparison_stack

        with comparison_stack(str(config) if config else None) as stack:
            doc["engine"] = stack.engine_settings
            doc["result"] = asyncio.run(run_compare(sc, stack.targets, stack.model, runs=runs, baseline="bare-vllm",
                                                       headers=stack.headers))
        stem = f"{sc.name}-compare"
    else:
        if not target:
            console.print("[red]--target URL or --compare is required[/red]")
            raise typer.Exit(2)
        import httpx

        headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
        base = target.rstrip("/")
        if model is None:
            model = httpx.get(base + "/v1/models", headers=headers, timeout=10).json()["data"][0]["id"]
        doc["result"] = asyncio.run(run_single(sc, base, model, headers=headers))
        stem = sc.name
    paths = write_report(doc, out, stem)
    out.mkdir(parents=True, exist_ok=True)
    console.print(markdown(doc))
    console.print("wrote " + ", ".join(str(p) for p in paths))
