"""`owc controller` (the capacity controller) and `owc simulate` (its policy on a trace)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cluster.cli._common import _load, console


def controller(
    *,
    config: Annotated[Optional[Path], typer.Argument(help="owc config the cluster runs")] = None,
    prometheus: Annotated[str, typer.Option(help="Prometheus base URL")] = "http://127.0.0.1:9090",
    interval: Annotated[float, typer.Option(help="Seconds between reconcile rounds")] = 15.0,
    ray_address: Annotated[Optional[str], typer.Option(help="Ray cluster of a local `owc serve` (GCS address)")] = None,
    kubernetes: Annotated[bool, typer.Option("--kubernetes", help="Scale a KubeRay RayService instead of local Ray")] = False,
    namespace: Annotated[str, typer.Option(envvar="POD_NAMESPACE", help="Kubernetes namespace")] = "default",
    rayservice: Annotated[str, typer.Option(help="RayService name")] = "owc",
    lease: Annotated[str, typer.Option(help="Lease name for leader election")] = "owc-controller",
    lease_duration: Annotated[Optional[int], typer.Option(
        help="Seconds the Lease lasts unrenewed; at least 2 x --interval + 5 (the default)")] = None,
    identity: Annotated[Optional[str], typer.Option(envvar="POD_NAME", help="Leader-election identity")] = None,
    metrics_port: Annotated[int, typer.Option(help="Port of the controller's own /metrics (0: none)")] = 9500,
    once: Annotated[bool, typer.Option(help="One reconcile round, then exit")] = False,
) -> None:
    """Run the capacity controller: Prometheus signals -> policy -> replica targets (each
    model with autoscaling.enabled, and the gateway when gateway.replicas.max > min)."""
    import socket
    import threading

    from prometheus_client import CollectorRegistry, start_http_server

    from cluster.capacity.controller import CapacityController
    from cluster.capacity.election import check_lease_timing, lease_duration_for
    from cluster.capacity.signals import PrometheusSignals
    from cluster.capacity.targets import targets as build_targets

    cfg = _load(config)
    try:
        targets = build_targets(cfg)
        if lease_duration is None:
            lease_duration = lease_duration_for(interval)
        check_lease_timing(lease_duration, interval)
    except ValueError as e:
        console.print(f"[red]{e}[/red]")
        raise typer.Exit(2) from None
    if not targets:
        console.print("[yellow]no model has autoscaling.enabled and gateway.replicas.max == min: nothing to "
                      "control[/yellow]")
        raise typer.Exit(2)
    elector = None
    if kubernetes:
        from kubernetes import client
        from kubernetes import config as kconfig

        from cluster.capacity.actuators import KubernetesActuator
        from cluster.capacity.election import LeaseElector

        try:
            kconfig.load_incluster_config()
        except kconfig.ConfigException:
            kconfig.load_kube_config()
        actuator = KubernetesActuator(api=client.CustomObjectsApi(), namespace=namespace, name=rayservice)
        elector = LeaseElector(api=client.CoordinationV1Api(), namespace=namespace, name=lease,
                               identity=identity or socket.gethostname(), duration_s=lease_duration,
                               renew_interval_s=interval)
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
                             elector=elector, targets=targets, interval_s=interval)
    sd_dir = None
    if metrics_port:
        start_http_server(metrics_port, registry=registry)
        if not kubernetes and cfg.monitoring.file_sd_dir:  # local mode: `owc monitor` scrapes it
            from cluster.metrics.targets import file_sd_dir, write_targets

            sd_dir = file_sd_dir(cfg.monitoring.file_sd_dir)
            write_targets(sd_dir, f"controller-{metrics_port}", [{"targets": [f"127.0.0.1:{metrics_port}"]}])
    lease_note = f", Lease {lease} for {lease_duration}s" if kubernetes else ""
    console.print(f"capacity controller: {', '.join(ctl.models)} every {interval:g}s (Prometheus {prometheus}"
                  f"{lease_note})")
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
