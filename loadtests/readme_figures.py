"""README and docs figures, generated from committed raw results (JSON) — never typed by hand.

    python -m loadtests.readme_figures --write   # rewrite the blocks in README.md and docs/*.md
    python -m loadtests.readme_figures --check   # exit 1 when any page and the JSON disagree

Each block sits between `<!-- figures:NAME -->` and `<!-- /figures:NAME -->` on the page where
its section lives (README.md or a page under docs/); a block may sit on several pages (the
README's headline figures repeat a few). Every block must sit on at least one page. Links in a
block are written relative to the repository root and rewritten for the page that holds it.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"
RESULTS = REPO / "loadtests" / "results"


def pages() -> list[Path]:
    """Every page that may hold a figures block: the README and each Markdown page under docs/."""
    return [README, *sorted(DOCS.rglob("*.md"))]


def _ms(x: float) -> str:
    return f"{x * 1000:.1f}"


def _spread(s: dict, fmt: Callable[[float], str]) -> str:
    return f"{fmt(s['median'])} ({fmt(s['min'])}–{fmt(s['max'])})"


def _ratio(x: float) -> str:
    return f"{x:.2f}×"


def _table(doc: dict) -> list[str]:
    s = doc["summary"]
    rows = [
        "| path | TTFT p50, c=1 (ms) | TTFT ratio | output tok/s, c=16 | throughput ratio | CPU s / 1k tokens |",
        "|---|---|---|---|---|---|",
    ]
    labels = {
        "bare-vllm": "bare vLLM OpenAI server",
        "owc-gateway": "**owc gateway** → vLLM",
        "owc-gateway-2proc": "**owc gateway, 2 processes** (owc serve's default) → vLLM",
        "vllm-router": "vllm-router (Rust) → vLLM",
        "ray-serve-llm": "`ray.serve.llm` OpenAI app (own engine, same settings)",
    }
    for name, label in labels.items():
        if name not in s:
            continue
        e = s[name]
        rows.append(
            f"| {label} | {_spread(e['ttft_p50_s'], _ms)} | "
            f"{_spread(e['ttft_ratio'], _ratio) if 'ttft_ratio' in e else '1'} | "
            f"{_spread(e['output_tokens_per_s'], lambda x: f'{x:.0f}')} | "
            f"{_spread(e['tput_ratio'], _ratio) if 'tput_ratio' in e else '1'} | "
            f"{_spread(e['cpu_s_per_1k_tokens'], lambda x: f'{x:.3f}') if 'cpu_s_per_1k_tokens' in e else '—'} |"
        )
    return rows


def _settings(doc: dict, file: str) -> str:
    st = doc["settings"]
    return (
        f"Median of {st['runs']} interleaved runs, (min–max) in brackets; ratios are paired per run against bare vLLM "
        f"on the same engine. {st['max_tokens']} output tokens per request, streaming; c=1: {st['ttft_requests']} requests, "
        f"c=16: {st['tput_requests']} requests per run. Raw results: `loadtests/results/{file}` (`{doc['command']}`)."
    )


def candidates_block(doc: dict) -> str:
    return "\n".join([_settings(doc, "candidates.json"), "", *_table(doc)])


def overhead_block(doc: dict) -> str:
    s = doc["summary"]
    t = doc["targets"]
    rows = _table(doc)
    v = s["verdict"]
    gw, router = s["owc-gateway"], s.get("vllm-router")
    verdict = [
        f"- TTFT ratio ≤ {t['ttft_ratio_max']:.2f}: **{'met' if v['ttft_ok'] else 'not met'}** "
        f"(median {gw['ttft_ratio']['median']:.3f}×).",
        f"- Throughput ratio ≥ {t['tput_ratio_min']:.2f}: **{'met' if v['tput_ok'] else 'not met'}** "
        f"(median {gw['tput_ratio']['median']:.3f}×).",
    ]
    if router:
        verdict.append(
            f"- No worse than vllm-router's ratio − {t['router_slack']:.2f}: **{'met' if v['vs_router_ok'] else 'not met'}** "
            f"(vllm-router {router['tput_ratio']['median']:.2f}×, TTFT {router['ttft_ratio']['median']:.2f}×)."
        )
    return "\n".join([_settings(doc, "overhead.json"), "", *rows, "", *verdict, *_cpu_block(doc)])


def _cpu_block(doc: dict) -> list[str]:
    """CPU per 1k output tokens at both response lengths, owc against vllm-router (issue 34)."""
    s, st = doc["summary"], doc["settings"]
    if not st.get("long_tokens") or "vllm-router" not in s:
        return []
    rows = ["", f"CPU seconds per 1k output tokens of each front's processes over the c=16 phases "
            f"({st['max_tokens']} tokens: {st['tput_requests']} requests, {st['long_tokens']} tokens: "
            f"{st['long_requests']} requests):", "",
            f"| front | {st['max_tokens']} tokens | {st['long_tokens']} tokens | ÷ vllm-router, paired per run "
            f"({st['max_tokens']} / {st['long_tokens']} tokens) | throughput ratio, {st['long_tokens']} tokens |",
            "|---|---|---|---|---|"]
    for name, label in (("owc-gateway", "owc gateway, 1 process"), ("owc-gateway-2proc", "owc gateway, 2 processes"),
                        ("vllm-router", "vllm-router")):
        if name in s and "cpu_s_per_1k_tokens_long" in s[name]:
            e = s[name]
            paired = "1" if name == "vllm-router" else " / ".join(
                _spread(e[key], _ratio) for key in ("cpu_vs_router", "cpu_vs_router_long"))
            rows.append(f"| {label} | {_spread(e['cpu_s_per_1k_tokens'], lambda x: f'{x:.3f}')} | "
                        f"{_spread(e['cpu_s_per_1k_tokens_long'], lambda x: f'{x:.3f}')} | "
                        f"{paired} | {_spread(e['tput_ratio_long'], _ratio)} |")
    rows.append("")
    v = s["verdict"]
    for key, what in (("cpu_vs_router_ok", f"{st['max_tokens']} tokens, 1 process"),
                      ("cpu_vs_router_ok_long", f"{st['long_tokens']} tokens, 1 process"),
                      ("cpu_vs_router_ok_2proc", f"{st['max_tokens']} tokens, 2 processes"),
                      ("cpu_vs_router_ok_long_2proc", f"{st['long_tokens']} tokens, 2 processes")):
        if key in v:
            rows.append(f"- CPU per 1k tokens ≤ vllm-router's, {what}: **{'met' if v[key] else 'not met'}**.")
    return rows


def loadtests_block(_: dict) -> str:
    rows = [
        "| report | target | TTFT p50 ms | TTFT ratio | output tok/s | tok/s ratio | goodput |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in COMPARE_REPORTS:
        doc = json.loads((RESULTS / f"{name}-compare.json").read_text())
        stats = doc["result"]["points"][0]["stats"]
        for target, st in stats.items():
            def ratio(k: str, st: dict = st) -> str:
                return _spread(st[k], _ratio) if st.get(k) else "1"

            rows.append(
                f"| [`{name}`](loadtests/results/{name}-compare.md) | {target} | {_spread(st['ttft_p50_s'], _ms)} | "
                f"{ratio('ttft_p50_s_ratio')} | {_spread(st['output_tokens_per_s'], lambda x: f'{x:.0f}')} | "
                f"{ratio('output_tokens_per_s_ratio')} | {st['goodput']['median'] * 100:.0f}% |"
            )
    cap = json.loads((RESULTS / "capacity.json").read_text())
    c = cap["capacity_rps"]
    s = cap["settings"]
    fmt = lambda v: f"{v:g} req/s" if v is not None else "below the lowest step"  # noqa: E731
    return "\n".join([
        *rows,
        "",
        f"[Gateway capacity](loadtests/results/capacity.md) on {s['engines']} fake engines, stepped Poisson rates "
        f"{', '.join(f'{r:g}' for r in cap['rates'])} req/s: the highest rate whose p99 stays within "
        f"{s['budget_ms']:g} ms of going direct is **{fmt(c['owc-gateway'])} through the owc gateway** and "
        f"{fmt(c['vllm-router'])} through vllm-router, in the same run.",
    ])


ROUTING_LABELS = {
    "owc-prefix_affinity": "**owc `prefix_affinity`**",
    "owc-round_robin": "owc `round_robin`",
    "owc-least_load": "owc `least_load` (P2C)",
    "vllm-router-cache_aware": "vllm-router `cache_aware`",
    "vllm-router-round_robin": "vllm-router `round_robin`",
}


def routing_block(doc: dict) -> str:
    st, w, e = doc["stats"], doc["workload"], doc["engines"]
    pct = lambda x: f"{x * 100:.1f}%"  # noqa: E731
    rows = [
        "| router | prefix-cache hit rate | of ideal | TTFT p50 (ms) | TTFT p90 (ms) | p90 vs owc round-robin | "
        "decision p99 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, label in ROUTING_LABELS.items():
        x = st[name]
        p99 = x.get("decision_p99_le_s")
        rows.append(
            f"| {label} | {_spread(x['hit_rate'], pct)} | {_spread(x['hit_rate_of_ideal'], _ratio)} | "
            f"{_spread(x['ttft_p50_s'], _ms)} | {_spread(x['ttft_p90_s'], _ms)} | "
            f"{_spread(x['ttft_p90_vs_owc_round_robin'], _ratio)} | "
            f"{'≤ ' + f'{p99 * 1e6:g} µs' if p99 is not None else '—'} |"
        )
    pa = st["owc-prefix_affinity"]
    p99 = pa["decision_p99_le_s"]
    verdict = [
        f"- Hit rate ≥ 0.9 of ideal: **{'met' if pa['hit_rate_of_ideal']['median'] >= 0.9 else 'not met'}** "
        f"({pa['hit_rate_of_ideal']['median']:.2f}).",
        f"- TTFT p90 ≥ 2× better than round-robin: "
        f"**{'met' if pa['ttft_p90_vs_owc_round_robin']['median'] >= 2 else 'not met'}** "
        f"({pa['ttft_p90_vs_owc_round_robin']['median']:.2f}×).",
        f"- Routing decision p99 < 1 ms (gateway histogram, {pa['decisions']:.0f} decisions): "
        f"**{'met' if p99 is not None and p99 <= 1e-3 else 'not met'}** (bucket ≤ {p99 * 1e6:g} µs).",
    ]
    return "\n".join([
        f"Two vLLM-CPU replicas, each KV cache {e['kv_cache_tokens']} tokens ({e['kv_blocks']} blocks of "
        f"{e['block_size']}) = {e['documents_per_cache']:.1f} of the {w['documents']} documents "
        f"(~{w['shared_prefix_tokens_median']:.0f} shared tokens each); {w['requests']} streamed chat requests per run "
        f"({w['per_doc']} questions per document, seed {w['seed']}), closed loop at concurrency {w['concurrency']}, "
        f"caches reset before each"
        + (f"; every router front-end (owc and vllm-router alike) runs under `{w['front_end_priority']}`, "
           f"precedence over the engines standing in for the CPUs of its own it has when deployed"
           if w.get("front_end_priority", "none") != "none" else "")
        + f". Ideal hit rate (every request but a document's first reuses its whole-block "
        f"prefix): **{pct(doc['ideal_hit_rate'])}**. Median of {doc['runs']} interleaved runs (min–max). "
        f"Raw results: `loadtests/results/prefix-routing.json` (`python -m loadtests.prefix_routing`).",
        "",
        *rows,
        "",
        *verdict,
    ])


AUTOSCALING = "autoscaling-bursts.json"  # python -m loadtests.autoscaling (make bench)


def _pct(x: float) -> str:
    return f"{x * 100:.2f}%"


def _owc_bold(policy: str) -> str:
    return f"**{policy}**" if policy == "owc" else policy


def autoscaling_block(doc: dict) -> str:
    """The traces owc was not tuned on: every policy per trace, then owc against the better baseline."""
    prof = json.loads((RESULTS.parents[1] / doc["profile"]).read_text())  # a repo-relative path
    s, b = doc["owc_settings"], doc["bounds"]
    after = set(doc["held_out_generated_after_tuning"])
    caps = [t["owc_burst_sizing"]["replica_capacity_rps"] for t in doc["traces"].values()]
    rows = [
        "| trace (sha256, first 16 hex) | policy | within TTFT SLO | replica-hours | scale events | peak | utilisation |",
        "|---|---|---|---|---|---|---|",
    ]
    verdict = [
        "| trace | owc within SLO | owc replica-hours | better baseline (≥ 97 %) | its SLO, replica-hours | owc / it | "
        "≥ 99 % at ≤ 0.75× |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, t in doc["traces"].items():
        label = f"{name}{' †' if name in after else ''} (`{t['sha256_16']}`, {t['requests']} requests)"
        for r in t["results"]:
            rows.append(f"| {label} | {_owc_bold(r['policy'])} | {_pct(r['attainment'])} | {r['replica_hours']:.2f} | "
                        f"{r['scale_events']} | {r['peak_replicas']} | {r['utilization'] * 100:.1f}% |")
        owc = t["results"][0]
        better = next((r for r in t["results"] if r["policy"] == t["better_baseline"]), None)
        its = f"{_pct(better['attainment'])}, {better['replica_hours']:.2f}" if better else "—"
        ratio = t["owc_replica_hours_ratio"]
        verdict.append(f"| {name} | {_pct(owc['attainment'])} | {owc['replica_hours']:.2f} | "
                       f"{t['better_baseline'] or 'none'} | {its} | {_ratio(ratio) if ratio is not None else '—'} | "
                       f"**{'met' if t['met'] else 'not met'}** |")
    met = sum(bool(t["met"]) for t in doc["traces"].values())
    tuning = "; ".join(f"{k} (`{v['sha256_16']}`) {_pct(v['owc']['attainment'])}, {v['owc']['replica_hours']:.2f} "
                       "replica-h" for k, v in doc["tuning_seeds"].items())
    r15 = doc["replay_15min"]
    return "\n".join([
        f"TTFT SLO {doc['slo_s']:g} s; replicas {b['min']}–{b['max']}, every policy starting at {b['min']}; "
        f"{doc['duration_s'] / 60:.0f}-minute traces. Engine profile (measured, `loadtests/results/engine-profile.json`): "
        f"{prof['max_num_seqs']} sequences, prefill {prof['prefill_tokens_per_s'] / 1000:.0f}k tokens/s, decode step "
        f"{prof['decode_step_base_s'] * 1000:.2f} ms + {prof['decode_step_per_seq_s'] * 1e6:.0f} µs per sequence, "
        f"start-up {prof['startup_s']:.1f} s. One owc setting, chosen by hand on {', '.join(doc['tuned_on'])} and "
        f"reported on traces it was not tuned on († generated only after it was fixed): burst sizing at "
        f"{min(caps):.1f}–{max(caps):.1f} req/s per replica (the profile at each trace's request mix), "
        f"`target_utilization` {s['target_utilization']:g}, `standing_headroom` {s['standing_headroom']}; "
        f"{s['target_ongoing_per_replica']:g} in flight per replica, queue {s['target_queue_per_replica']:g}, "
        f"TTFT p95 {s['ttft_slo_s']:g} s; up by ≤ {s['max_step_up']} every {s['up_cooldown_s']:g} s, down after "
        f"{s['down_stabilization_s']:g} s low by ≤ {s['max_step_down']}, {s['down_cooldown_s']:g} s after any change; "
        f"a decision every {doc['owc_interval_s']:g} s. Ray Serve's default untuned; KEDA: on each trace itself, the "
        "cheapest threshold of the sweep reaching 99 %, else the one with the best attainment. "
        f"owc on the tuning traces: {tuning}. A 15-minute trace ({r15['trace']}, {r15['requests']} requests) "
        f"replays under all policies in {r15['seconds_all_policies']:.1f} s. Raw results: "
        "`loadtests/results/autoscaling-bursts.json` (`python -m loadtests.autoscaling`); plots "
        + ", ".join(f"[{k}](loadtests/results/{t['plot']})" for k, t in doc["traces"].items()) + ".",
        "",
        *rows,
        "",
        "owc against the baseline with fewer replica-hours among those within the SLO for ≥ 97 % of requests "
        f"(target: ≥ 99 % within the SLO at ≤ 0.75× its replica-hours; met on {met} of {len(doc['traces'])} traces):",
        "",
        *verdict,
    ])


def autoscaling_mixed_block(doc: dict) -> str:
    """The mixed replay: interactive requests alone, with a batch backlog, with a batch budget."""
    m = doc["mixed"]
    budget = m["with_batch_budget"]
    runs = [("interactive only", m["interactive_only"]),
            ("+ batch backlog, no budget (`batch_max_replicas` 0)", m["with_batch_no_budget"]),
            (f"+ batch backlog, `batch_max_replicas` {budget['batch_max_replicas']}", budget)]
    rows = ["| owc on the same trace | within TTFT SLO | replica-hours | scale events | peak | utilisation | "
            "batch lines done |", "|---|---|---|---|---|---|---|"]
    for label, r in runs:
        done = f"{r['batch_done']} of {r['batch_requests']}" if r["batch_requests"] else "—"
        rows.append(f"| {label} | {_pct(r['attainment'])} | {r['replica_hours']:.2f} | {r['scale_events']} | "
                    f"{r['peak_replicas']} | {r['utilization'] * 100:.1f}% | {done} |")
    alone, batch = m["interactive_only"], m["with_batch_no_budget"]
    return "\n".join([
        f"{m['trace']} (`{m['sha256_16']}`) with {m['batch_lines']} batch lines waiting from the start (a steady "
        "trace's sizes), under the owc setting above.",
        "",
        *rows,
        "",
        "- Without a budget the backlog changes no scaling decision (the same scale events at the same times): "
        f"**{'yes' if m['same_decisions_without_budget'] else 'no'}**; it raises utilisation: "
        f"**{'yes' if m['utilisation_raised'] else 'no'}** ({alone['utilization'] * 100:.1f}% → "
        f"{batch['utilization'] * 100:.1f}%).",
    ])


def autoscaling_startup_block(doc: dict) -> str:
    """Start-up sensitivity: the standing headroom owc needs for 99 % at GPU-scale start-ups, and its cost."""
    rows = ["| trace | start-up | standing headroom for ≥ 99 % | owc with it: within SLO, replica-hours | "
            "headroom 0: within SLO, replica-hours | better baseline (≥ 97 %) | owc / it | ≤ 0.75× |",
            "|---|---|---|---|---|---|---|---|"]
    startups, warm = set(), set()
    for name, runs in doc["sensitivity"].items():
        for x in runs:
            startups.add(x["startup_s"])
            warm.add(x["initial_replicas"])
            tried, better, need = x["owc_by_headroom"], x["better_baseline"], x["needed_headroom"]
            last, zero = tried[-1], tried[0]
            ratio = last["replica_hours"] / better["replica_hours"] if better and need is not None else None
            base = f"{better['policy']}: {_pct(better['attainment'])}, {better['replica_hours']:.2f}" if better else "none"
            ok = "—" if ratio is None else ("yes" if ratio <= 0.75 else "**no**")
            rows.append(f"| {name} | {x['startup_s']:g} s | "
                        f"{need if need is not None else 'none up to ' + str(last['standing_headroom'])} | "
                        f"{_pct(last['attainment'])}, {last['replica_hours']:.2f} | "
                        f"{_pct(zero['attainment'])}, {zero['replica_hours']:.2f} | {base} | "
                        f"{f'{ratio:.3f}×' if ratio is not None else '—'} | {ok} |")
    return "\n".join([
        f"The engine profile's start-up set to {', '.join(f'{s:g}' for s in sorted(startups))} s (GPU scale: "
        "weights loading, CUDA graphs), all else as above; every policy starts warm at "
        f"{', '.join(str(w) for w in sorted(warm))} replicas (from one, the traces' opening ramp outruns any "
        "start-up of 60 s or more whatever the headroom); owc's `standing_headroom` is raised from 0 until ≥ 99 % "
        "of requests are within the SLO.",
        "",
        *rows,
    ])


AUTOSCALING_REAL = "autoscaling-real.json"  # python -m loadtests.autoscaling --real bursty --seed 3


def _events(events: list[dict]) -> str:
    return ", ".join(f"{e['from']}→{e['to']} at {e['t']:.0f} s" for e in events) or "none"


def autoscaling_real_block(doc: dict) -> str:
    """One trace on a real local Ray cluster (owc's controller, real Prometheus) next to the simulator's replay."""
    t, e, real, sim = doc["trace"], doc["engine"], doc["real"], doc["simulated"]
    s, b, m = doc["owc_settings"], doc["bounds"], doc["machine"]
    prof = e["dilated_profile"]
    # one replica's capacity at the generator's mean request (cluster.capacity.traces: 512 prompt, 128 output tokens)
    unit = 1 / (512 / prof["prefill_tokens_per_s"] + 128 * (prof["decode_step_base_s"] + prof["decode_step_per_seq_s"]
                                                           * prof["max_num_seqs"]) / prof["max_num_seqs"])
    measured = sim.get("owc_measured_startup")
    runs = [("**owc, real** (Ray Serve, gateway, controller, Prometheus)", real),
            (f"owc, simulator (the profile's start-up, {e['startup_s']:.1f} s)", sim["owc"])]
    if measured:
        runs.append((f"owc, simulator (start-up as measured in the real run, {measured['startup_s']:.1f} s)", measured))
    runs += [("Ray Serve default, simulator", sim["ray-serve-default"]), (f"{sim['keda']['policy']}, simulator", sim["keda"])]
    rows = ["| run | within TTFT SLO | TTFT p95 | replica-hours | scale events | peak |", "|---|---|---|---|---|---|"]
    for label, r in runs:
        p95 = f"{r['ttft_p95_s']:.2f} s" if r.get("ttft_p95_s") is not None else "—"
        rows.append(f"| {label} | {_pct(r['attainment'])} | {p95} | {r['replica_hours']:.3f} | {r['scale_events']} | "
                    f"{r['peak_replicas']} |")
    owc = sim["owc"]
    ups = ", ".join(f"{x:.0f}" for x in real["startups_s"]) or "none"
    return "\n".join([
        f"{t['kind']} seed {t['seed']} (`{t['sha256_16']}`, {t['requests']} requests over {t['duration_s'] / 60:.0f} "
        f"minutes plus a {t['tail_s']:g}-s tail; not time-compressed), TTFT SLO {doc['slo_s']:g} s, replicas "
        f"{b['min']}–{b['max']} starting at {b['min']}. The owc setting above with burst sizing at "
        f"{s['replica_capacity_rps']:.2f} req/s per replica and a {s['replica_startup_s']:.1f}-s start-up, a decision "
        f"every {doc['interval_s']:g} s, Prometheus scraping every {doc['scrape_interval_s']:g} s. **The engines are not "
        f"vLLM**: each Serve replica runs `loadtests/profiled_engine.py`, the simulator's replica model of the committed "
        f"engine profile with its per-token times {e['dilation']:g}× longer ({prof['max_num_seqs']} sequences, prefill "
        f"{prof['prefill_tokens_per_s'] / 1000:.1f}k tokens/s, decode step {prof['decode_step_base_s'] * 1000:.0f} ms + "
        f"{prof['decode_step_per_seq_s'] * 1000:.1f} ms per sequence), answering only {e['startup_s']:.1f} s after its "
        f"replica launched it; so the bursts (4 replicas' worth) arrive at ~{4 * unit:.0f} req/s, not the "
        f"~{4 * unit * e['dilation']:.0f} of the undilated profile. The real TTFT is the client's, from each request's "
        "scheduled time.",
        "",
        *rows,
        "",
        f"- Real: {real['failed']} requests failed; the load generator sent p99 {real['send_lag_p99_s'] * 1000:.0f} ms "
        f"late; replica start-ups (scale-up to all running) {ups} s (median "
        f"{real['startup_median_s'] if real['startup_median_s'] is not None else '—'} s); scale events "
        f"{_events(real['events'])}.",
        f"- Simulator (profile start-up): scale events {_events(owc['events'])}.",
        f"- Real against the simulator's prediction: {(real['attainment'] - owc['attainment']) * 100:+.2f} points "
        f"within the SLO, {real['replica_hours'] / owc['replica_hours']:.2f}× the replica-hours, "
        f"{real['scale_events']} scale events against {owc['scale_events']}, peak {real['peak_replicas']} against "
        f"{owc['peak_replicas']}.",
        f"- Machine: {m['cpus']} cores shared with other work (load average over 1 and 5 minutes "
        f"{m['load_average_before'][0]:.1f}/{m['load_average_before'][1]:.1f} before, "
        f"{m['load_average_after'][0]:.1f}/{m['load_average_after'][1]:.1f} after); one run. Raw results: `loadtests/results/autoscaling-real.json` "
        f"(`{doc['command']}`, {doc['wall_s'] / 60:.0f} minutes).",
    ])


BATCH_CAPACITY = "batch-capacity.json"  # python -m loadtests.batch_capacity


def batch_capacity_block(doc: dict) -> str:
    """Issue 29's must-show 5 on a real local Ray cluster: a batch backlog alone scales nothing; a
    scale-down while batch lines run loses none."""
    real, e, b, m, lines = doc["real"], doc["engine"], doc["bounds"], doc["machine"], doc["batch_lines"]
    a, it, bt, v = real["batch_alone"], real["interactive"], real["batch"], doc["verdict"]
    reasons = ", ".join(f"{k} ×{n}" for k, n in sorted(a["decision_reasons"].items()))
    ups = [x for x in real["scale_events"] if x["to"] > x["from"] and x["t"] >= a["seconds"]]  # the load's
    downs = [x for x in real["scale_events"] if x["to"] < x["from"]]
    drains = ", ".join(f"`{rid}` from {d['first_seen_t']:.0f} s: {d['batch_lines_running_first']} running "
                       f"(at most {d['batch_lines_running_max']})" for rid, d in real["drained_replicas"].items()) or "none"
    twice, missing = bt["custom_ids_twice"], bt["custom_ids_missing"]
    yes = lambda ok: "**yes**" if ok else "**no**"  # noqa: E731
    out = re.search(r"--out (\S+)", doc["command"])
    phase = {}  # the batch lines answered when each phase began
    for x in real["timeline"]:
        phase.setdefault(x["phase"], x["lines_done"])
    during = (phase.get("load ended") or 0) - (phase.get("interactive load") or 0)
    n = lines.get("gateway_processes", 1)
    procs = "one process" if n == 1 else f"{n} processes, as `owc serve` runs them"
    backlog = ", ".join(f"{x['batch_queue']:g}" for x in downs if x["batch_queue"] is not None) or "—"
    return "\n".join([
        f"One run (`{doc['command']}`, {doc['wall_s'] / 60:.0f} minutes) on a real local Ray Serve cluster: owc's "
        f"gateway ({procs}, batch runners on, `lines_in_flight` {lines['lines_in_flight']} per process), the capacity "
        f"controller deciding every {doc['interval_s']:g} s from `owc monitor`'s Prometheus ({doc['scrape_interval_s']:g}-s "
        f"scrapes), a local Redis for batch records, leases and usage; replicas {b['min']}–{b['max']}, "
        f"`batch_max_replicas` {doc['batch_max_replicas']}. **The engines are not vLLM**: `loadtests/profiled_engine.py`, "
        f"the simulator's replica model of the committed profile with per-token times {e['dilation']:g}× longer "
        f"({e['max_num_seqs']} sequences; {e['replica_capacity_rps']:.2f} req/s per replica at 100 + 100 tokens). "
        f"The batch: {lines['lines']} `/v1/completions` lines of {lines['max_tokens']} tokens.",
        "",
        "| phase | result |",
        "|---|---|",
        f"| batch alone, first {a['seconds']:.0f} s ({a['samples']} samples of the replicas, {a['decisions']} decisions) "
        f"| replicas {a['replicas_min']}–{a['replicas_max']}; decisions {reasons}; backlog read by the controller up to "
        f"{a['batch_queue_read_max']:g} lines; {a['lines_done_at_end']} lines answered meanwhile |",
        f"| interactive load, {it['rate_rps']:.1f} req/s for {it['seconds']:.0f} s (streamed, {it['requests']} requests, "
        f"{it['failed']} failed) | scaled up: {_events(ups)} (peak {real['peak_replicas']}); batch lines answered "
        f"while it ran: {during} (interactive requests first) |",
        f"| load ended | scaled down: {_events(downs)}, the controller reading a backlog of "
        f"{backlog} lines at those decisions; batch lines "
        f"running on each drained replica (its engine's own gauges): {drains} |",
        f"| the batch | {bt['status']} at {bt['completed_at_t']:.0f} s: {bt['output_lines']} output lines for "
        f"{bt['distinct_custom_ids']} custom_ids of {bt['lines']} ({len(twice)} twice, {len(missing)} missing), "
        f"{bt['output_not_200']} not 200; {bt['error_lines']} error lines; usage records: {bt['usage_requests']} "
        f"requests under `batch:<model>` |",
        "",
        f"- The backlog alone held the minimum (or its budget): {yes(v['batch_alone_held_the_minimum_or_its_budget'])}; "
        f"it progressed meanwhile: {yes(v['batch_progressed_alone'])}; the controller read it: "
        f"{yes(v['controller_saw_the_backlog'])}. A drain began with batch lines running: "
        f"{yes(v['a_drain_ran_batch_lines'])}. One output line per custom_id: {yes(v['one_output_line_per_custom_id'])}; "
        f"none in the error file: {yes(v['no_error_lines'])}; each line charged once: {yes(v['charged_once'])}.",
        f"- Machine: {m['cpus']} cores shared with other work (load average {m['load_average_before'][0]:.1f} before, "
        f"{m['load_average_after'][0]:.1f} after); one run. Raw results: `{out.group(1) if out else BATCH_CAPACITY}`.",
    ])


def gateway_ab_block(doc: dict, file: str = "gateway-ab.json") -> str:
    s, st, old, new = doc["summary"], doc["settings"], doc["old"], doc["new"]
    ab = s["new_vs_old"]
    new_rev = f"`{new['head'][:7]}`" + (" + uncommitted changes" if new["dirty"] else "")
    cpu = lambda x: f"{x:.3f}"  # noqa: E731
    tok = lambda x: f"{x:.0f}"  # noqa: E731

    def cell(v: dict | None, fmt: Callable[[float], str]) -> str:
        return _spread(v, fmt) if v else "—"

    return "\n".join([
        f"The gateway at `{old['rev'][:7]}` (old) and at {new_rev} (new), each its own process in front of the "
        f"same vLLM-CPU engine ({doc['model']}). Median of {st['rounds']} rounds, (min–max) in brackets, the order "
        f"alternating per round; ratios are new/old, paired per round. {st['max_tokens']} output tokens per request, "
        f"streaming; c=1: {st['ttft_requests']} requests, c={st['tput_concurrency']}: {st['tput_requests']} requests "
        f"per round. Raw results: `loadtests/results/{file}` (`{doc['command']}`).",
        "",
        f"| gateway | TTFT p50, c=1 (ms) | output tok/s, c={st['tput_concurrency']} | gateway CPU s / 1k tokens | errors |",
        "|---|---|---|---|---|",
        *(f"| {label} | {cell(s[side]['ttft_p50_s'], _ms)} | {cell(s[side]['output_tokens_per_s'], tok)} | "
          f"{cell(s[side]['cpu_s_per_1k_tokens'], cpu)} | {s[side]['errors']} |"
          for side, label in (("old", f"old (`{old['rev'][:7]}`)"), ("new", f"new ({new_rev})"))),
        f"| **new / old** | {cell(ab['ttft_p50_ratio'], _ratio)} | {cell(ab['tput_ratio'], _ratio)} | "
        f"{cell(ab['cpu_per_token_ratio'], _ratio)} | |",
    ])


def gateway_profile_block(doc: dict) -> str:
    """The gateway's top functions by own py-spy samples, at the old and the new tree."""
    profs = doc["profiles"]
    sides = [n for n in ("old", "new") if n in profs]
    head = " | ".join(f"{n}: {profs[n]['cpu_s_per_1k_tokens']:.3f} CPU s / 1k tokens, {profs[n]['output_tokens_per_s']} tok/s"
                      for n in sides)
    rows = [f"py-spy, 200 Hz, {doc['seconds']} s of one gateway process in front of the fake engine, {doc['max_tokens']} "
            f"output tokens per request at c=16 (`{doc['command']}`; raw: `loadtests/results/gateway-profile.json`). "
            "Shares of the process's samples; `Runner.run` is time in the event loop's own C code (uvloop: "
            "socket reads and writes, callbacks, task steps).", "",
            "| rank | " + " | ".join(sides) + " |", "|---|" + "---|" * len(sides)]
    for i in range(min(len(profs[n]["own"]) for n in sides)):
        rows.append(f"| {i + 1} | " + " | ".join(f"{profs[n]['own'][i][1] * 100:.1f}% `{profs[n]['own'][i][0]}`"
                                                    for n in sides) + " |")
    return "\n".join([head, "", *rows])


def per_request_block(doc: dict) -> str:
    """Gateway CPU per request: owc with its default features off in turn, the HTTP floor, vllm-router."""
    s = doc["summary"]
    def off(name: str) -> str:
        return ", ".join(doc["variants"].get(name, [])) or "—"

    rows = [f"CPU microseconds per request of the target's process, {doc['max_tokens']}-token streams at c=16 in front "
            f"of the fake engine, {doc['requests_per_round']} requests per target per round, median of "
            f"{len(doc['rounds'])} interleaved rounds (min–max); ratios to vllm-router paired per round; "
            f"{doc['errors']} errors. Raw results: `loadtests/results/per-request.json` (`{doc['command']}`).", "",
            "| target | features off | CPU µs / request | / vllm-router |", "|---|---|---|---|"]
    for name, v in s.items():
        label = f"**{name}**" if name in ("owc", "vllm-router") else name
        rows.append(f"| {label} | {off(name)} | "
                    f"{_spread(v['cpu_us_per_request'], lambda x: f'{x:.0f}')} | {_spread(v['vs_router'], _ratio)} |")
    return "\n".join(rows)


def _batch_settings(s: dict) -> str:
    """The run's batch settings beyond keep_free: the TTFT pacer's (absent: a run before it)."""
    extra = dict(s.get("batch_settings") or {})
    if "batch_settings" not in s:
        return ", no TTFT pacing (before it was built)"
    tol = extra.pop("ttft_tolerance", 0.2)
    pacing = "no TTFT pacing" if tol is None else f"TTFT pacing at `ttft_tolerance` {tol}"
    return ", " + ", ".join([pacing, *(f"`{k}` {v}" for k, v in extra.items())])


def batch_idle_block(doc: dict, file: str = "batch-idle.json") -> str:
    """Interactive TTFT with and without a batch on the same engine (loadtests/batch_idle.py)."""
    s, runs = doc["summary"], doc["runs"]
    engine = "the fake engine" if doc.get("fake_engine") else f"one vLLM-CPU engine ({s['slots']} slots)"
    rows = [f"{engine}, two gateway processes on one local Redis; interactive Poisson arrivals at "
            f"{s['rate_rps']:.1f} req/s ({s['rate_rps'] / s['capacity_rps']:.1f} of the {s['capacity_rps']:.1f} req/s "
            "measured in a closed loop), with "
            f"and without a {s['lines']}-line batch created just before, `keep_free` {s['keep_free']}"
            f"{_batch_settings(s)}; {len(runs)} runs, interleaved. Raw results: `loadtests/results/{file}`.", "",
            "| run | TTFT p95 alone (s) | TTFT p95 with the batch (s) | ratio | busy alone | busy with the batch "
            "| batch lines done in the phase | batch done after the phase (s) |",
            "|---|---|---|---|---|---|---|---|"]
    paced = all("batch_lines_allowed_mean" in r["batch"] for r in runs)
    if paced:  # the pacer's limit, summed over the gateway processes, averaged over the phase
        rows[-2] += " lines allowed (mean) |"
        rows[-1] += "---|"
    for i, r in enumerate(runs):
        a, b = r["alone"], r["batch"]
        rows.append(f"| {i + 1} | {a['ttft_p95_s']:.3f} | {b['ttft_p95_s']:.3f} | {r['ratio_p95']:.2f}× | "
                    f"{a['engine']['busy_fraction']:.2f} | {b['engine']['busy_fraction']:.2f} | "
                    f"{b['batch_lines_done_in_phase']} | {b['batch_rest_s']:.1f} |"
                    + (f" {b['batch_lines_allowed_mean']:.1f} |" if paced else ""))
    met = s["ratio_p95_median"] <= s["target"]
    rows += ["", f"- TTFT p95 with the batch ≤ {s['target']}× without: **{'met' if met else 'not met'}** (median "
             f"{s['ratio_p95_median']:.2f}×, {s['ratio_p95_min']:.2f}–{s['ratio_p95_max']:.2f}); batches completed: "
             f"{s['batches_completed']} of {len(runs)}; busy fraction {s['busy_alone_median']:.2f} alone, "
             f"{s['busy_batch_median']:.2f} with the batch (medians)."]
    return "\n".join(rows)


def tenancy_block(doc: dict) -> str:
    runs = {(r["kind"], r["gateways"]): r for r in doc["runs"]}
    req, tok = runs[("requests", 1)], runs[("tokens", 1)]
    lines = [
        f"{req['seconds']:g} s of over-limit traffic per run (one Redis, gateways on separate ports, the client "
        f"round-robin; {doc['host_cpus']} CPUs). Requests: `requests_per_minute: "
        f"{req['limits']['requests_per_minute']}`, `burst: {req['limits']['burst']}`, expected "
        f"{req['expected']:.0f}; tokens: `tokens_per_minute: {tok['limits']['tokens_per_minute']}`, expected "
        f"{tok['expected']:.0f} (engine-counted tokens of the accepted requests).",
        "",
        "| gateways | requests accepted | vs 1 gateway | tokens accepted | vs 1 gateway | answers |",
        "|---|---|---|---|---|---|",
    ]
    for n in sorted({g for _, g in runs}):
        r, t = runs[("requests", n)], runs[("tokens", n)]
        answers = ", ".join(f"{k}: {v}" for k, v in sorted({**{k: 0 for k in r["statuses"]}, **{
            k: r["statuses"].get(k, 0) + t["statuses"].get(k, 0) for k in {*r["statuses"], *t["statuses"]}}}.items()))
        lines.append(f"| {n} | {r['count']} | {r['count'] / req['count']:.2f}× | {t['count']} | "
                     f"{t['count'] / tok['count']:.2f}× | {answers} |")
    return "\n".join(lines)


FAIR_FRONTS = {"fair": "1", "fair-2gw": "2 (`owc serve`'s default)", "fair-3gw": "3"}


def fairness_block(doc: dict) -> str:
    st, sm = doc["settings"], doc["summary"]
    labels = {"fair": "fair queueing (1 gateway)", "fifo": "first come, first served (fair_sharing off)",
              "fair-2gw": "fair queueing, 2 gateways (client round-robin)",
              "fair-3gw": "fair queueing, 3 gateways (client round-robin)",
              "vllm-priority": f"vLLM priority scheduling (A at priority {st.get('a_priority_vllm')}, fair_sharing off)"}
    lines = [
        f"Real vLLM-CPU ({st['model']}, max_num_seqs {st['max_num_seqs']}, {st['max_tokens']} tokens per request, "
        f"ignore_eos), {len(doc['runs'])} interleaved runs of {st['seconds']:g} s phases on {doc['host']['cpus']} CPUs. "
        f"Capacity {st['capacity_req_per_s']:.1f} req/s; tenant A sends {st['rate_a']:.2f} req/s (streamed, Poisson), "
        f"tenant B {st['rate_b']:.2f} req/s (10×, non-streamed); the engine on cores "
        f"`{st.get('engine_cores', 'all')}`, the gateways, redis-server and clients on cores "
        f"`{st.get('front_cores', 'all')}`, gateways and clients with CPU precedence over "
        f"the engine: `{st.get('front_priority', 'none')}`. Median (min–max) over runs; pooled: the p95 of every "
        f"run's A requests together against the same of A alone.",
        "",
        "| with B flooding | A's TTFT p95 / A alone | pooled | A's answers | B's completions / with FCFS | "
        f"B's completions / capacity left by A | engine slots in use (of {st['max_num_seqs']}) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in [n for n in labels if n in sm]:
        r = sm[name]
        answers: dict[str, int] = {}
        for run in doc["runs"]:
            for code, n in run[name]["a"]["statuses"].items():
                answers[code] = answers.get(code, 0) + n
        pooled = _ratio(r["a_ttft_p95_ratio_pooled"]) if "a_ttft_p95_ratio_pooled" in r else "—"
        lines.append(f"| {labels[name]} | {_spread(r['a_ttft_p95_ratio'], _ratio)} | {pooled} | "
                     f"{', '.join(f'{k}: {v}' for k, v in sorted(answers.items()))} | "
                     f"{_spread(r['b_vs_fcfs'], lambda x: f'{x:.2f}')} | "
                     f"{_spread(r['b_share_of_remaining'], lambda x: f'{x:.2f}')} | "
                     f"{_spread(r['engine_running_mean'], lambda x: f'{x:.1f}') if 'engine_running_mean' in r else '—'} |")
    fronts = {"alone": "1 gateway", "alone-2gw": "2 gateways", "alone-3gw": "3 gateways"}
    alone = "; ".join(
        f"{label} {_ms(min(ts))}–{_ms(max(ts))} ms"
        for key, label in fronts.items() if (ts := [r[key]["a"]["ttft_p95_s"] for r in doc["runs"] if key in r]))
    v = sm["verdict"]
    met = lambda ok: "met" if ok else "not met"  # noqa: E731
    lines += [
        "",
        f"A alone, through the same front as each phase: TTFT p95 {alone}. One tenant in a closed loop at "
        f"2 × max_num_seqs, fair queueing on / off: {_spread(sm['solo_throughput_ratio'], _ratio)} requests/s.",
    ]
    if "solo_shared_ratio" in sm:
        lines.append(f"One tenant through a gateway sharing its counts in Redis / one that does not: "
                     f"{_spread(sm['solo_shared_ratio'], _ratio)} requests/s.")
    lines.append(f"A's TTFT p95 ≤ 1.5× alone with fair queueing: **{met(v['fair_ttft_ok'])}**; "
                 f"B completes ≥ 80 % of what it does first come, first served: "
                 f"**{met(v['fair_b_gets_remaining_ok'])}**.")
    for n, key in (("2", "fair_2gw"), ("3", "fair_3gw")):
        if f"{key}_ttft_ok" in v:
            lines.append(f"With {n} gateway processes: A's TTFT p95 ≤ 1.5× alone **{met(v[f'{key}_ttft_ok'])}**; "
                         f"B ≥ 80 % of FCFS **{met(v[f'{key}_b_ok'])}**.")
    return "\n".join(lines)


def gateway_faults_block(doc: dict) -> str:
    ramp, kill = doc["ramp"], doc["sigkill"]
    moves = ", ".join(f"{d['from']}→{d['to']} at {d['at_s']:g} s ({d['reason']})" for d in ramp["decisions"])
    return "\n".join([
        f"Local Ray, {doc['engine']} engine, {doc['host_cpus']} CPUs.",
        "",
        "| scenario | streams completed / cut | requests ok / failed (retried once) | |",
        "|---|---|---|---|",
        f"| ramp: gateways {moves} | {ramp['streams']['ok']} / {ramp['streams']['cut']} | "
        f"{ramp['requests']['ok']} / {ramp['requests']['failed']} ({ramp['requests']['retried']}) | "
        f"{ramp['streams_in_flight_at_scale_down']} streams of ≥ 10 s in flight through the scale-down |",
        f"| SIGKILL one of 2 gateway processes | — | {kill['requests']['ok']} / {kill['requests']['failed']} "
        f"({kill['requests']['retried']}) | two processes again after {kill['seconds_to_two_processes']:g} s |",
    ])


FAULTS = {  # scenario record name -> what it is, and what its recovery time measures
    "engine_sigkill": ("SIGKILL an engine's vLLM process (≥ 4 running, ≥ 4 queued on it), 2 engine processes",
                       "until every request in flight at the kill finished"),
    "engine_sigkill_ray": ("The same on a local Ray: Serve replaces the engine replica",
                           "until both replicas were routable again"),
    "engine SIGKILL, gpt-oss chat streams (reasoning, tools)": (
        "SIGKILL one of 2 vLLM engines of the tiny gpt-oss under chat streams with reasoning and tool calls "
        "(greedy; each client read the uninterrupted run)", "until every stream in flight at the kill finished"),
    "engine SIGKILL, gpt-oss responses streams (reasoning, function calls)": (
        "The same kill under Responses streams (reasoning, output text, function calls)",
        "until every stream in flight at the kill finished"),
    "gateway_sigkill": ("SIGKILL one of 2 gateway processes, closed loop of short requests",
                        "until Serve had 2 processes again"),
    "ray_node_killed": ("Ray worker node holding one engine replica killed, then added back",
                        "from the node's return to 2 routable replicas"),
    "prometheus_down": ("Prometheus down for 60 s under the capacity controller",
                        "from Prometheus's restart to the controller's first decision on data"),
    "controller_leader_killed": ("Controller leader killed mid scale-down window (in-test API server)",
                                 "until the new leader led"),
    "gateway_scale_down": ("Gateways scaled 2 → 1 with ≥ 10 s streams in flight",
                           "from the decision until one process listened; the other drained its streams"),
    "engine_scale_down": ("Engines scaled 2 → 1 with ≥ 10 s streams in flight",
                          "until Serve counted one running replica; the other drained its streams"),
    "streams_2000": ("2,000 concurrent streams through one gateway (fake engine)", "—"),
    "soak": ("Soak: 30 min of steady mixed load, one gateway", "—"),
    "soak_60s": ("Soak, CI form: 60 s of steady mixed load, one gateway", "—"),
}


def faults_block(doc: dict) -> str:
    rows = ["| scenario | sent | lost | failed (retryable, before any byte) | resumed | recovery |",
            "|---|---|---|---|---|---|"]
    for r in sorted(doc["scenarios"], key=lambda r: list(FAULTS).index(r["name"]) if r["name"] in FAULTS else 99):
        what, recovery = FAULTS.get(r["name"], (r["name"], ""))
        rec = "—" if r["recovery_s"] is None else f"{r['recovery_s']:g} s ({recovery})"
        rows.append(f"| {what} | {r['sent']} | **{r['lost']}** | {r['failed']} | {r['resumed']} | {rec} |")
    return "\n".join([f"{doc['host_cpus']} CPUs. Raw records: `loadtests/results/faults.json` (`make faults`, "
                      "`make soak`).", "", *rows])


def resume_cost_block(doc: dict) -> str:
    c = doc["summary"]["resume_cost"]
    return (f"Stream resume on vs off, the same gateway and engine, paired per run ({doc['settings']['runs']} "
            f"interleaved runs, median (min–max)): gateway CPU s per 1k output tokens "
            f"{_spread(c['cpu_s_per_1k_tokens_ratio'], _ratio)}, output tok/s at c=16 {_spread(c['tput_ratio'], _ratio)}, "
            f"TTFT p50 at c=1 {_spread(c['ttft_ratio'], _ratio)}. The ledger itself (reading each event's ids and "
            f"removing them) costs {_spread(c['ledger_us_per_event'], lambda x: f'{x:.1f}')} µs per event "
            f"(a chat stream recorded from vLLM, in-process). Raw results: `loadtests/results/resume-overhead.json` "
            f"(`{doc['command']}`).")


def headline_block(overhead: dict) -> str:
    """The README's headline figures: one line per measurement, each linking to its page."""
    from datetime import datetime, timezone

    def load(name: str) -> dict:
        return json.loads((RESULTS / name).read_text())

    gw = overhead["summary"]["owc-gateway"]
    day = datetime.fromtimestamp(overhead["created_unix"], tz=timezone.utc).strftime("%Y-%m-%d")
    pa = load("prefix-routing.json")["stats"]["owc-prefix_affinity"]
    fair_doc = load("fairness.json")
    fair, fst = fair_doc["summary"], fair_doc["settings"]
    auto = load(AUTOSCALING)
    faults = load("faults.json")["scenarios"]
    tenancy = load("tenancy-limits.json")["runs"]
    req = {r["gateways"]: r["count"] for r in tenancy if r["kind"] == "requests"}
    held = auto["traces"].values()
    owc_att = [t["results"][0]["attainment"] for t in held]
    owc_ratio = [t["owc_replica_hours_ratio"] for t in held if t["owc_replica_hours_ratio"] is not None]
    bases = sorted({t["better_baseline"] for t in held if t["better_baseline"]})
    gpu = [x for runs in auto.get("sensitivity", {}).values() for x in runs]
    needs = [x["needed_headroom"] for x in gpu if x["needed_headroom"] is not None]
    cheap = [x for x in gpu if x["needed_headroom"] is not None and x["better_baseline"]
             and x["owc_by_headroom"][-1]["replica_hours"] <= 0.75 * x["better_baseline"]["replica_hours"]]
    startups = sorted({x["startup_s"] for x in gpu})
    rows = [
        "| measured | figure | page |",
        "|---|---|---|",
        f"| gateway overhead vs bare vLLM (run of {day}) | throughput {gw['tput_ratio']['median']:.2f}×, "
        f"TTFT p50 {gw['ttft_ratio']['median']:.2f}×, {gw['cpu_s_per_1k_tokens']['median']:.3f} CPU s / 1k tokens"
        + (f" (vllm-router {overhead['summary']['vllm-router']['cpu_s_per_1k_tokens']['median']:.3f} in the same run)"
           if "cpu_s_per_1k_tokens" in overhead["summary"].get("vllm-router", {}) else "") + " | "
        "[benchmarks](docs/benchmarks.md#why-this-token-path-measured-make-bench) |",
        f"| prefix routing vs round-robin, shared-prefix chat | hit rate {pa['hit_rate_of_ideal']['median']:.2f}× of "
        f"ideal, TTFT p90 {pa['ttft_p90_vs_owc_round_robin']['median']:.2f}× better | "
        "[benchmarks](docs/benchmarks.md#routing-on-a-shared-prefix-workload-make-bench) |",
        f"| fair sharing: a light tenant's TTFT p95, another flooding at {fst['rate_b'] / fst['rate_a']:.0f}× its rate, "
        "vs alone | "
        + " / ".join(f"{fair[k]['a_ttft_p95_ratio']['median']:.2f}×" for k in FAIR_FRONTS if k in fair)
        + " with the fair queue in " + " / ".join(label for k, label in FAIR_FRONTS.items() if k in fair)
        + " gateway processes, "
        f"{fair['fifo']['a_ttft_p95_ratio']['median']:.1f}× first come, first served | "
        "[tenancy](docs/tenancy.md#fair-sharing-under-saturation) |",
        f"| tenant limits across 1–{max(req)} gateway processes on one Redis | "
        f"{', '.join(str(req[n]) for n in sorted(req))} requests accepted (expected "
        f"{next(r['expected'] for r in tenancy if r['kind'] == 'requests'):.0f}) | "
        "[tenancy](docs/tenancy.md#limits-across-gateway-replicas-redis) |",
        f"| autoscaling, {len(held)} traces owc was not tuned on (simulator; target: ≥ 99 % within the SLO at "
        "≤ 0.75× the better baseline's replica-hours) | "
        f"owc {min(owc_att) * 100:.2f}–{max(owc_att) * 100:.2f}% within the SLO at "
        f"{min(owc_ratio):.2f}–{max(owc_ratio):.2f}× {', '.join(bases)}'s replica-hours: "
        f"met on {sum(bool(t['met']) for t in held)} of {len(held)} | "
        "[capacity](docs/capacity.md#the-policy-in-a-simulator-owc-simulate-make-bench) |",
        *([f"| autoscaling at GPU-scale replica start-ups ({startups[0]:g}–{startups[-1]:g} s, simulator) | "
           f"standing headroom for 99 %: {min(needs)}–{max(needs)} replicas; ≤ 0.75× the better "
           f"baseline's replica-hours on {len(cheap)} of {len(gpu)} trace × start-up runs | "
           "[capacity](docs/capacity.md#replica-start-up-at-gpu-scale) |"] if gpu and needs else []),
        f"| fault suite ({len(faults)} scenarios: engine, gateway, node, Prometheus, controller, scale-downs, soak) | "
        f"{sum(r['lost'] for r in faults)} of {sum(r['sent'] for r in faults):,} requests lost, "
        f"{sum(r['resumed'] for r in faults)} streams resumed | [faults](docs/faults.md#faults-survived) |",
    ]
    return "\n".join(rows)


COMPARE_REPORTS = ("chat-multilingual", "shared-prefix")

BLOCKS: dict[str, tuple[str, Callable[[dict], str]]] = {
    "overhead": ("overhead.json", overhead_block),
    "candidates": ("candidates.json", candidates_block),
    "loadtests": ("capacity.json", loadtests_block),
    "routing": ("prefix-routing.json", routing_block),
    "autoscaling": (AUTOSCALING, autoscaling_block),
    "autoscaling-mixed": (AUTOSCALING, autoscaling_mixed_block),
    "autoscaling-startup": (AUTOSCALING, autoscaling_startup_block),
    "autoscaling-real": (AUTOSCALING_REAL, autoscaling_real_block),
    "batch-capacity": (BATCH_CAPACITY, batch_capacity_block),
    "batch-capacity-budget": ("batch-capacity-budget.json", batch_capacity_block),
    "batch-capacity-2gw": ("batch-capacity-2gw.json", batch_capacity_block),
    "gateway-ab": ("gateway-ab.json", gateway_ab_block),
    "gateway-ab-cpu": ("gateway-ab-cpu.json", lambda doc: gateway_ab_block(doc, "gateway-ab-cpu.json")),
    "gateway-profile": ("gateway-profile.json", gateway_profile_block),
    "per-request": ("per-request.json", per_request_block),
    "batch-idle": ("batch-idle.json", batch_idle_block),
    "batch-idle-load50": ("batch-idle-load50.json", lambda doc: batch_idle_block(doc, "batch-idle-load50.json")),
    "batch-idle-paced": ("batch-idle-paced.json", lambda doc: batch_idle_block(doc, "batch-idle-paced.json")),
    "tenancy": ("tenancy-limits.json", tenancy_block),
    "fairness": ("fairness.json", fairness_block),
    "gateway-faults": ("gateway-faults.json", gateway_faults_block),
    "faults": ("faults.json", faults_block),
    "resume-cost": ("resume-overhead.json", resume_cost_block),
    "headline": ("overhead.json", headline_block),
}
# Blocks whose results may not exist yet: skipped while neither the JSON nor the README
# block does (a block without its JSON, or a JSON without its block, still fails).
OPTIONAL = {"gateway-ab"}


def _pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- figures:{name} -->\n)(?:.*?\n)?(<!-- /figures:{name} -->)", re.S)


def _relink(block: str, page: Path) -> str:
    """Rewrite a block's repo-relative Markdown links for a page below the repository root."""
    up = "../" * (len(page.relative_to(REPO).parts) - 1)
    return re.sub(r"\]\((?![a-z]+:|#|/)", "](" + up, block) if up else block


def render(text: str, page: Path = README) -> str:
    """The page's text with every figures block it holds rendered from the JSON."""
    for name, (file, fn) in BLOCKS.items():
        pattern = _pattern(name)
        if not pattern.search(text):
            continue
        block = _relink(fn(json.loads((RESULTS / file).read_text())), page)
        text = pattern.sub(lambda m, block=block: m.group(1) + block + "\n" + m.group(2), text)
    return text


def render_all(paths: list[Path] | None = None) -> dict[Path, tuple[str, str]]:
    """{page: (current, wanted)} for every page; SystemExit when a block is on no page."""
    out = {p: (p.read_text(), "") for p in (paths if paths is not None else pages())}
    for name, (file, _) in BLOCKS.items():
        held = any(_pattern(name).search(cur) for cur, _ in out.values())
        if name in OPTIONAL and not (RESULTS / file).exists() and not held:
            continue
        if not held:
            raise SystemExit(f"no page (README.md, docs/*.md) has a figures:{name} block")
    return {p: (cur, render(cur, p)) for p, (cur, _) in out.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--write", action="store_true")
    g.add_argument("--check", action="store_true")
    a = p.parse_args(argv)
    pages_ = render_all()
    if a.write:
        for page, (current, wanted) in pages_.items():
            if wanted != current:
                page.write_text(wanted)
        return 0
    stale = [str(page.relative_to(REPO)) for page, (current, wanted) in pages_.items() if wanted != current]
    if stale:
        print(f"{', '.join(stale)}: figures disagree with loadtests/results/*.json: run `make readme-figures`",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
