"""`owc` command line: serve, status, config validate, demo-model, gateway."""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from cluster.config.loader import ConfigError, load_config

app = typer.Typer(add_completion=False, no_args_is_help=True, help="owc: open-weight LLM serving cluster")
config_app = typer.Typer(no_args_is_help=True, help="Config files.")
app.add_typer(config_app, name="config")
console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)


def _load(path: Optional[Path]):
    try:
        return load_config(path)
    except ConfigError as e:
        console.print(f"[red]invalid config[/red] {e.source}")
        for p in e.problems:
            console.print(f"  {p}")
        raise typer.Exit(2) from None


@config_app.command("validate")
def config_validate(
    file: Annotated[Path, typer.Argument(help="owc config YAML")],
    engine_args: Annotated[bool, typer.Option(help="Also check engine_kwargs against vLLM (where installed)")] = True,
) -> None:
    """Validate a config file (works without vLLM; checks engine_kwargs where vLLM is)."""
    from cluster.engine.args import check_engine_kwargs, vllm_engine_arg_names

    cfg = _load(file)
    known = vllm_engine_arg_names() if engine_args else None
    problems = [
        f"models.{name}.engine_kwargs.{p}" for name, m in cfg.models.items() for p in check_engine_kwargs(m.engine_kwargs, known)
    ]
    if problems:
        console.print(f"[red]invalid config[/red] {file}")
        for p in problems:
            console.print(f"  {p}")
        raise typer.Exit(2)
    checked = "checked against vLLM" if known is not None else "vLLM not installed: engine_kwargs names not checked"
    out.print(f"[green]ok[/green] {file}: {len(cfg.models)} model(s) ({checked})")


@app.command("demo-model")
def demo_model(
    out_dir: Annotated[Path, typer.Argument(help="Directory to write the model to")],
    name: Annotated[str, typer.Option(help="Demo model")] = "tiny-llama",
) -> None:
    """Build the tiny demo model (random weights, locally trained tokenizer) into DIR."""
    from cluster.engine.demo_model import build_demo_model

    with console.status(f"building {name}"):
        path = build_demo_model(out_dir, name)
    out.print(str(path))


@app.command()
def serve(
    config: Annotated[Optional[Path], typer.Argument(help="owc config YAML; the embedded CPU demo when omitted")] = None,
) -> None:
    """Run the cluster on a local Ray: engines, gateway, the OpenAI API."""
    from cluster.gateway.auth import KeyStore
    from cluster.gateway.server import UnsafeBindError, check_bind_policy
    from cluster.runner import LocalCluster, install_signal_handlers

    cfg = _load(config)
    try:
        check_bind_policy(cfg.gateway, KeyStore.load(file=cfg.gateway.api_keys_file, env_var=cfg.gateway.api_keys_env))
    except (UnsafeBindError, OSError, ValueError) as e:
        console.print(f"[red]refusing to start:[/red] {e}")
        raise typer.Exit(2) from None
    cluster = LocalCluster(cfg, handle_signals=True)
    install_signal_handlers()
    try:
        with console.status("starting") as status:
            cluster.start(report=lambda msg: status.update(msg))
        _print_ready(cluster)
        while True:
            signal.pause()
    except KeyboardInterrupt as e:
        console.print(f"\nstopping ({e or 'interrupt'})…")
    except Exception as e:
        console.print(f"[red]failed:[/red] {e}")
        _stop(cluster)
        raise typer.Exit(1) from None
    _stop(cluster)


def _stop(cluster) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    cluster.stop()
    console.print("stopped")


def _print_ready(cluster) -> None:
    base = cluster.url + "/v1"
    first = next(iter(cluster.cfg.models))
    out.print(f"[green]owc is serving[/green] the OpenAI API at [bold]{base}[/bold]")
    for name, m in cluster.cfg.models.items():
        aka = f" (aliases: {', '.join(m.aliases)})" if m.aliases else ""
        out.print(f"  model [bold]{name}[/bold]{aka}: {m.replicas.start} replica(s), TP={m.tensor_parallel_size}")
    out.print("Try:")
    out.print(
        f"  curl {base}/chat/completions -H 'Content-Type: application/json' "
        f"-d '{{\"model\": \"{first}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Bonjour\"}}]}}'"
    )
    out.print(f"  python -c \"import openai; c = openai.OpenAI(base_url='{base}', api_key='-'); print(c.models.list())\"")
    if any(m.autoscaling.enabled for m in cluster.cfg.models.values()):
        out.print(f"Autoscaled models: run `owc monitor` and `owc controller --ray-address {cluster.gcs_address}`.")
    out.print("Ctrl-C stops everything.")
    sys.stdout.flush()


@app.command()
def status(
    url: Annotated[str, typer.Option(help="Gateway base URL")] = "http://127.0.0.1:8000",
    api_key: Annotated[Optional[str], typer.Option(envvar="OWC_API_KEY", help="API key")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Models, replicas and health of a running gateway."""
    import httpx

    try:
        ready = httpx.get(url.rstrip("/") + "/ready", timeout=5)
    except httpx.HTTPError as e:
        console.print(f"[red]gateway unreachable[/red] at {url}: {e}")
        raise typer.Exit(1) from None
    data = ready.json()
    if as_json:
        out.print_json(json.dumps(data))
    else:
        table = Table(title=f"owc at {url} — {'ready' if data.get('ready') else 'NOT ready'}")
        table.add_column("model")
        table.add_column("healthy replicas", justify="right")
        for name, m in data.get("models", {}).items():
            table.add_row(name, str(m.get("replicas", 0)))
        out.print(table)
    raise typer.Exit(0 if data.get("ready") else 3)


@app.command()
def monitor(
    config: Annotated[Optional[Path], typer.Argument(help="owc config the cluster runs (for its file-SD directory)")] = None,
    port: Annotated[int, typer.Option(help="Prometheus port (127.0.0.1)")] = 9090,
    prometheus: Annotated[Optional[str], typer.Option(help="Prometheus binary (default: on PATH)")] = None,
    data_dir: Annotated[Path, typer.Option(help="Prometheus config and data")] = Path("~/.cache/owc/prometheus"),
    scrape_interval: Annotated[Optional[float], typer.Option(help="Seconds between scrapes and rule evaluations (default: the shipped config's)")] = None,
) -> None:
    """Run a local Prometheus with owc's scrape config, recording rules and alerts."""
    import asyncio

    from cluster.metrics.monitor import PrometheusNotFound, find_prometheus, prepare, prometheus_process
    from cluster.metrics.targets import file_sd_dir

    cfg = _load(config)
    sd = file_sd_dir(cfg.monitoring.file_sd_dir)
    if sd is None:
        console.print("[red]monitoring.file_sd_dir is unset in this config: nothing to scrape[/red]")
        raise typer.Exit(2)
    try:
        binary = find_prometheus(prometheus)
    except PrometheusNotFound as e:
        console.print(f"[red]{e}[/red]")
        raise typer.Exit(2) from None
    run_dir = data_dir.expanduser()
    prepare(run_dir, sd, interval_s=scrape_interval)
    proc = prometheus_process(binary, run_dir, port=port)
    proc.start()
    rc = 0
    try:
        asyncio.run(proc.wait_ready(60))
        out.print(f"[green]Prometheus[/green] at [bold]{proc.url}[/bold] scraping {sd} (rules: owc-recording, owc-alerts)")
        out.print(f"  targets: {proc.url}/targets   alerts: {proc.url}/alerts   Ctrl-C stops it.")
        sys.stdout.flush()
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        while proc.alive():
            time.sleep(1)
        console.print(f"[red]Prometheus exited ({proc.returncode}); see {run_dir / 'prometheus.log'}[/red]")
        rc = 1
    except KeyboardInterrupt:
        pass
    except Exception as e:  # not ready in time, port taken: the log says why
        console.print(f"[red]{e}[/red]")
        rc = 1
    finally:
        proc.stop(grace_s=5)
    raise typer.Exit(rc)


@app.command()
def gateway(
    upstream: Annotated[list[str], typer.Option(help="MODEL=URL of an OpenAI engine server; repeatable")],
    config: Annotated[Optional[Path], typer.Option(help="owc config YAML (gateway settings, models)")] = None,
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 8000,
) -> None:
    """Run only the gateway, in front of engines at fixed URLs (no Ray)."""
    from cluster.gateway.main import config_for_upstreams, parse_upstreams, run

    try:
        urls = parse_upstreams(upstream)
        run(cfg=config_for_upstreams(urls, _load(config) if config else None, host, port), upstreams=urls, endpoints_file=None)
    except ValueError as e:
        console.print(f"[red]{e}[/red]")
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        pass


@app.command()
def bench(
    scenario: Annotated[str, typer.Argument(help="Scenario name (loadtests/scenarios/) or YAML path")],
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

    from loadtests.bench import run_compare, run_single
    from loadtests.report import markdown, write_report
    from loadtests.scenario import load_scenario

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
        from loadtests.stack import comparison_stack

        with comparison_stack(str(config) if config else None) as stack:
            doc["engine"] = stack.engine_settings
            doc["result"] = asyncio.run(run_compare(sc, stack.targets, stack.model, runs=runs, baseline="bare-vllm"))
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



@app.command()
def controller(
    config: Annotated[Optional[Path], typer.Argument(help="owc config the cluster runs")] = None,
    prometheus: Annotated[str, typer.Option(help="Prometheus base URL")] = "http://127.0.0.1:9090",
    interval: Annotated[float, typer.Option(help="Seconds between reconcile rounds")] = 15.0,
    ray_address: Annotated[Optional[str], typer.Option(help="Ray cluster of a local `owc serve` (GCS address)")] = None,
    kubernetes: Annotated[bool, typer.Option("--kubernetes", help="Scale a KubeRay RayService instead of local Ray")] = False,
    namespace: Annotated[str, typer.Option(envvar="POD_NAMESPACE", help="Kubernetes namespace")] = "default",
    rayservice: Annotated[str, typer.Option(help="RayService name")] = "owc",
    lease: Annotated[str, typer.Option(help="Lease name for leader election")] = "owc-controller",
    identity: Annotated[Optional[str], typer.Option(envvar="POD_NAME", help="Leader-election identity")] = None,
    metrics_port: Annotated[int, typer.Option(help="Port of the controller's own /metrics (0: none)")] = 9500,
    once: Annotated[bool, typer.Option(help="One reconcile round, then exit")] = False,
) -> None:
    """Run the capacity controller: Prometheus signals -> policy -> replica targets."""
    import socket
    import threading

    from prometheus_client import CollectorRegistry, start_http_server

    from cluster.capacity.controller import CapacityController
    from cluster.capacity.signals import PrometheusSignals

    cfg = _load(config)
    if not any(m.autoscaling.enabled for m in cfg.models.values()):
        console.print("[yellow]no model has autoscaling.enabled: nothing to control[/yellow]")
        raise typer.Exit(2)
    elector = None
    if kubernetes:
        from kubernetes import client
        from kubernetes import config as kconfig

        from cluster.capacity.actuators import KubernetesActuator, LeaseElector

        try:
            kconfig.load_incluster_config()
        except kconfig.ConfigException:
            kconfig.load_kube_config()
        actuator = KubernetesActuator(api=client.CustomObjectsApi(), namespace=namespace, name=rayservice)
        elector = LeaseElector(api=client.CoordinationV1Api(), namespace=namespace, name=lease,
                               identity=identity or socket.gethostname())
    else:
        import os

        import ray

        from cluster.capacity.actuators import RayServeActuator
        from cluster.runner import RAY_ENV

        os.environ.update(RAY_ENV)
        ray.init(address=ray_address or "auto", log_to_driver=False)
        actuator = RayServeActuator()
    registry = CollectorRegistry()
    ctl = CapacityController(config=cfg, signals=PrometheusSignals(prometheus), actuator=actuator, registry=registry,
                             elector=elector)
    sd_dir = None
    if metrics_port:
        start_http_server(metrics_port, registry=registry)
        if not kubernetes and cfg.monitoring.file_sd_dir:  # local mode: `owc monitor` scrapes it
            from cluster.metrics.targets import file_sd_dir, write_targets

            sd_dir = file_sd_dir(cfg.monitoring.file_sd_dir)
            write_targets(sd_dir, f"controller-{metrics_port}", [{"targets": [f"127.0.0.1:{metrics_port}"]}])
    console.print(f"capacity controller: {', '.join(ctl.models)} every {interval:g}s (Prometheus {prometheus})")
    stop = threading.Event()
    try:
        if once:
            for model, d in ctl.reconcile_once().items():
                console.print(f"{model}: {d.target} ({d.reason})")
        else:
            ctl.run(interval, stop)
    except KeyboardInterrupt:
        stop.set()
    finally:
        if sd_dir is not None:
            from cluster.metrics.targets import remove_targets

            remove_targets(sd_dir, f"controller-{metrics_port}")


@app.command()
def simulate(
    trace: Annotated[Path, typer.Option(help="Trace: JSON lines of t, prompt_tokens, output_tokens")],
    profile: Annotated[Path, typer.Option(help="Engine profile (python -m cluster.capacity.profile)")] = Path(
        "loadtests/results/engine-profile.json"),
    config: Annotated[Optional[Path], typer.Option(help="owc config: the first model's autoscaling and replicas")] = None,
    slo: Annotated[float, typer.Option(help="TTFT SLO, seconds")] = 1.0,
    keda_thresholds: Annotated[str, typer.Option(help="KEDA thresholds to sweep (the best is the baseline)")] = "1,2,4,8,16,32",
    out: Annotated[Path, typer.Option(help="Directory for the JSON report and PNG")] = Path("simulation"),
) -> None:
    """Replay a trace under owc's policy, Ray Serve's default autoscaling and a KEDA-style threshold."""
    import json as _json

    from cluster.capacity.simulator import EngineProfile, KedaThreshold, OwcPolicy, RayServeDefault, load_trace, plot
    from cluster.capacity.simulator import simulate as run_sim

    cfg = _load(config)
    mc = next(iter(cfg.models.values()))
    settings = mc.autoscaling.model_copy(update={"enabled": True})
    prof = EngineProfile.load(profile)
    reqs = load_trace(trace)
    owc = run_sim(reqs, prof, OwcPolicy(settings, mc.replicas), slo_s=slo, initial=mc.replicas.start)
    rs = run_sim(reqs, prof, RayServeDefault(mc.replicas), slo_s=slo, initial=mc.replicas.start)
    sweep = [run_sim(reqs, prof, KedaThreshold(mc.replicas, float(x)), slo_s=slo, initial=mc.replicas.start)
             for x in keda_thresholds.split(",")]
    met = [r for r in sweep if r.attainment >= 0.99]
    keda = min(met, key=lambda r: r.replica_hours) if met else max(sweep, key=lambda r: r.attainment)
    out.mkdir(parents=True, exist_ok=True)
    plot([owc, rs, keda], out / f"{trace.stem}.png", trace.stem)
    (out / f"{trace.stem}.json").write_text(_json.dumps(
        {"trace": str(trace), "profile": str(profile), "slo_s": slo, "results": [r.summary() for r in (owc, rs, keda)],
         "keda_sweep": [r.summary() for r in sweep]}, indent=1))
    for r in (owc, rs, keda):
        console.print(f"{r.policy:>22}: {r.attainment * 100:6.2f}% within {slo:g}s TTFT, "
                      f"{r.replica_hours:7.3f} replica-h, {r.scale_events} scale events, peak {r.peak_replicas}")
    console.print(f"report: {out / (trace.stem + '.json')}, plot: {out / (trace.stem + '.png')}")


if __name__ == "__main__":
    app()
