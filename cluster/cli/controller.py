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
    rollout_configmap: Annotated[Optional[str], typer.Option(
        help="ConfigMap of the rollouts' state (default <rayservice>-rollouts)")] = None,
    engine_pods: Annotated[Optional[str], typer.Option(
        help="Label selector of the engine pods: the rollouts' conformance gate runs on one replica of each "
        "version found there (needs the engine credential: --engine-key-file or $OWC_ENGINE_KEY); unset: no gate, "
        "step 1 starts without it")] = None,
    engine_key_file: Annotated[Optional[Path], typer.Option(
        help="File holding the engine credential for the conformance gate (else $OWC_ENGINE_KEY)")] = None,
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
    from cluster.config.rollout import rollout_targets

    cfg = _load(config)
    try:
        targets = build_targets(cfg)
        if lease_duration is None:
            lease_duration = lease_duration_for(interval)
        check_lease_timing(lease_duration, interval)
    except ValueError as e:
        console.print(f"[red]{e}[/red]")
        raise typer.Exit(2) from None
    rolled_out = list(rollout_targets(cfg))  # a model's candidate, or an adapter's
    if not targets and not (kubernetes and rolled_out):
        console.print("[yellow]no model has autoscaling.enabled and gateway.replicas.max == min"
                      + (", and no candidate to roll out" if kubernetes else "")
                      + ": nothing to control[/yellow]")
        raise typer.Exit(2)
    if rolled_out and not kubernetes:
        console.print(f"rollouts of {', '.join(rolled_out)}: analysed by owc serve itself, not here")
    elector = rollouts = None
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
        if rolled_out:  # the rollout analysis, on Prometheus, while this pod holds the Lease (docs/rollouts.md)
            from cluster.discovery.rollout_configmap import ConfigMapRollouts
            from cluster.rollouts.leader import LeaderRollouts, configmap_name

            rollout_configmap = rollout_configmap or configmap_name(rayservice)
            store = ConfigMapRollouts(client.CoreV1Api(), namespace, rollout_configmap)
            rollouts = LeaderRollouts(cfg, store, prometheus=PrometheusSignals(prometheus), elector=elector,
                                      scale=actuator.scale, **_gate(engine_pods, engine_key_file, client.CoreV1Api(), namespace))
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
    console.print(f"capacity controller: {', '.join(ctl.models) or 'no autoscaled target'} every {interval:g}s "
                  f"(Prometheus {prometheus}{lease_note})")
    if rollouts is not None:
        gate = f"conformance gate on the engine pods {engine_pods}" if engine_pods else "no conformance gate"
        console.print(f"rollout analysis: {', '.join(rollouts.models)} every second while leading (state in "
                      f"ConfigMap {rollout_configmap}; {gate})", soft_wrap=True)
        if not once:
            rollouts.start()
    stop = threading.Event()
    try:
        if once:
            decisions = ctl.reconcile_once()  # takes (or renews) the Lease first
            if rollouts is not None and rollouts.tick():
                for model in rollouts.models:
                    st = rollouts.analysis.state(model)
                    console.print(f"rollout of {model}: {st.state}, step {st.step + 1}, weight {st.weight}%")
            for model, d in decisions.items():
                console.print(f"{model}: {d.target} ({d.reason})")
        else:
            ctl.run(interval, stop)
    except KeyboardInterrupt:
        stop.set()
    finally:
        if rollouts is not None:
            rollouts.stop()
        if sd_dir is not None:
            from cluster.metrics.targets import remove_targets

            remove_targets(sd_dir, f"controller-{metrics_port}")


def _gate(selector: str | None, key_file: Path | None, core: object, namespace: str) -> dict:
    """The rollouts' conformance gate on Kubernetes: engine pods by ``selector``, the cases with
    the engine credential (``key_file``, else $OWC_ENGINE_KEY; refused without one: every call
    would be a 401 on both sides, which compares equal)."""
    import os

    if not selector:
        return {}
    from cluster.engine.guard import ENGINE_KEY_ENV
    from cluster.rollouts.conformance import compare_versions
    from cluster.rollouts.engine_pods import EnginePods

    key = key_file.read_text().strip() if key_file is not None else os.environ.get(ENGINE_KEY_ENV)
    if not key:
        console.print(f"[red]--engine-pods needs the engine credential for the conformance gate: --engine-key-file "
                      f"or ${ENGINE_KEY_ENV}[/red]")
        raise typer.Exit(2)
    return {"engines": EnginePods(core, namespace, selector).replica_urls,
            "compare": lambda urls, model: compare_versions(urls, model, engine_key=key)}


def simulate(
    *,
    trace: Annotated[Path, typer.Option(help="Trace: JSON lines of t, prompt_tokens, output_tokens")],
    profile: Annotated[Optional[Path], typer.Option(
        help="Engine profile (python -m cluster.capacity.profile); default: the one owc ships "
        "(tiny-llama on CPU, loadtests/results/engine-profile.json)")] = None,
    config: Annotated[Optional[Path], typer.Option(help="owc config: the first model's autoscaling and replicas")] = None,
    slo: Annotated[float, typer.Option(help="TTFT SLO, seconds")] = 1.0,
    keda_thresholds: Annotated[str, typer.Option(help="KEDA thresholds to sweep (the best is the baseline)")] = "1,2,4,8,16,32",
    interval: Annotated[float, typer.Option(help="owc's decision interval, seconds (owc controller --interval)")] = 15.0,
    batch: Annotated[Optional[Path], typer.Option(
        help="A batch backlog to replay with the trace (same format; lowest priority, no SLO)")] = None,
    out: Annotated[Path, typer.Option(help="Directory for the JSON report and PNG")] = Path("simulation"),
) -> None:
    """Replay a trace under owc's policy, Ray Serve's default autoscaling and a KEDA-style threshold."""
    import json as _json

    from cluster.capacity.replay import Setup, compare, digest
    from cluster.capacity.simulator import EngineProfile, load_trace, plot

    cfg = _load(config)
    name, mc = next(iter(cfg.models.items()))
    if mc.replicas.max <= 1:
        console.print(f"[yellow]warning:[/yellow] model {name} can have only {mc.replicas.max} replica "
                      "(replicas.max): every policy below runs one replica; pass --config with replicas: {min, max}",
                      soft_wrap=True)
    prof_path = profile or Path(__file__).resolve().parents[1] / "capacity" / "engine-profile.json"
    setup = Setup(EngineProfile.load(prof_path), mc.autoscaling, mc.replicas, slo_s=slo, initial=mc.replicas.start,
                  owc_interval_s=interval, keda_thresholds=[float(x) for x in keda_thresholds.split(",")])
    lines = load_trace(batch) if batch else []
    c = compare(load_trace(trace), setup, batch=lines)
    out.mkdir(parents=True, exist_ok=True)
    plot(c.rows, out / f"{trace.stem}.png", trace.stem)
    s = c.settings
    (out / f"{trace.stem}.json").write_text(_json.dumps(
        {"trace": str(trace), "sha256_16": digest(trace), "profile": str(prof_path), "slo_s": slo,
         "batch": {"file": str(batch), "sha256_16": digest(batch), "lines": len(lines)} if batch else None,
         "owc_settings": s.model_dump() if s else None, "results": [r.summary() for r in c.rows],
         "events": {r.policy: r.events for r in c.rows}, "keda_sweep": [r.summary() for r in c.sweep]}, indent=1))
    for r in c.rows:
        console.print(f"{r.policy:>22}: {r.attainment * 100:6.2f}% within {slo:g}s TTFT, "
                      f"{r.replica_hours:7.3f} replica-h, {r.scale_events} scale events, peak {r.peak_replicas}")
    console.print("utilisation (busy engine slots / replica time): "
                  + ", ".join(f"{r.policy} {r.utilization * 100:.1f}%" for r in c.rows)
                  + (", batch lines done: " + ", ".join(f"{r.policy} {r.batch_done}/{r.batch_requests}" for r in c.rows)
                     if lines else ""), soft_wrap=True)
    if s is not None and s.replica_capacity_rps is not None:
        console.print(f"owc burst sizing: {s.replica_capacity_rps:.1f} req/s per replica, start-up "
                      f"{s.replica_startup_s:.1f} s, headroom {s.standing_headroom} replicas", soft_wrap=True)
    console.print(f"report: {out / (trace.stem + '.json')}, plot: {out / (trace.stem + '.png')}")
