"""Each rollout step's share of the candidate, judged the way the gateway routed it
(loadtests.rollout_real): a request belongs to a step when it STARTED while every gateway
process routed by that step's weight (their `owc_rollout_candidate_weight` gauge, polled),
whenever it ended. Cutting by the end time against the analysis's state file instead counts
requests routed at the previous weight (the gateway reads the file up to 0.5 s late; a request
ending in the step may have started before it) and leaves out the step's last, slowest ones.

Also each step's figures from the gateway processes' own counters (`owc_requests_total` by
version, `owc_rollout_version_fallbacks_total`) between the first and last poll of the step."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

VERSIONS = ("stable", "candidate")


def gateway_sample(text: str, model: str) -> dict:
    """One gateway process's /metrics text: the weight it routes ``model`` by, the requests
    it finished by version, and its fallbacks by the version picked."""
    out: dict = {"weight": None, "requests": dict.fromkeys(VERSIONS, 0.0), "fallbacks": dict.fromkeys(VERSIONS, 0.0)}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            lab = s.labels
            if lab.get("model") != model:
                continue
            if s.name == "owc_rollout_candidate_weight":
                out["weight"] = s.value
            elif s.name == "owc_requests_total" and lab.get("version") in VERSIONS:
                out["requests"][lab["version"]] += s.value
            elif s.name == "owc_rollout_version_fallbacks_total" and lab.get("version") in VERSIONS:
                out["fallbacks"][lab["version"]] += s.value
    return out


def weight_spans(polls: list[tuple[float, list[dict]]]) -> list[tuple[float, float, float, int, int]]:
    """``polls``: (time the poll began, each gateway process's sample). Each run of polls in
    which every process reported the same weight: (weight, first poll's time, last poll's
    time, first index, last index)."""
    spans: list[list] = []
    for i, (t, samples) in enumerate(polls):
        ws = {s["weight"] for s in samples}
        w = ws.pop() if len(ws) == 1 and samples else None
        if w is not None and spans and spans[-1][0] == w and spans[-1][4] == i - 1:
            spans[-1][2], spans[-1][4] = t, i
        elif w is not None:
            spans.append([w, t, t, i, i])
    return [tuple(s) for s in spans]


def _counted(samples: list[dict], key: str) -> dict[str, float]:
    return {v: sum(s[key][v] for s in samples) for v in VERSIONS}


def step_shares(rows: list[dict], polls: list[tuple[float, list[dict]]], weights=(20, 50), *, lag_s: float = 0.2,
                bin_s: float = 10.0) -> list[dict]:
    """Each step (a span of ``weights``): the client's answers (200) that started in
    [first poll showing the weight, last poll showing it - ``lag_s``] (``lag_s``: a request
    reaches the gateway's pick a little after the client starts it), their candidate share,
    the same per ``bin_s`` of start time, and the gateway's own counters over the span."""
    steps = []
    for w, t0, t1, i0, i1 in weight_spans(polls):
        if w not in weights:
            continue
        sel = [r for r in rows if t0 <= r["start"] <= t1 - lag_s and r["status"] == 200]
        cand = sum(r["version"] == "candidate" for r in sel)
        bins = []
        for k in range(int((t1 - t0) // bin_s) + 1):
            b = [r for r in sel if t0 + k * bin_s <= r["start"] < t0 + (k + 1) * bin_s]
            bins.append([len(b), round(100 * sum(r["version"] == "candidate" for r in b) / max(len(b), 1), 1)])
        before, after = polls[i0][1], polls[i1][1]
        if len(before) == len(after):  # the same processes: the gateway's own counts over the span
            req0, req1 = _counted(before, "requests"), _counted(after, "requests")
            fb0, fb1 = _counted(before, "fallbacks"), _counted(after, "fallbacks")
            served = {v: req1[v] - req0[v] for v in VERSIONS}
            gateway = {"requests": served, "fallbacks": {v: fb1[v] - fb0[v] for v in VERSIONS},
                       "candidate_pct": round(100 * served["candidate"] / max(sum(served.values()), 1), 1)}
        else:
            gateway = None
        steps.append({"weight": w, "seconds": round(t1 - t0, 1), "requests": len(sel),
                      "candidate_pct": round(100 * cand / max(len(sel), 1), 1),
                      "off_by_points": round(100 * cand / max(len(sel), 1) - w, 1),
                      "by_start_bins": {"bin_s": bin_s, "requests_and_pct": bins}, "gateway_counters": gateway})
    return steps


def steps_by_end(rows: list[dict], state_weights: list[tuple[float, int]], weights=(20, 50), margin_s: float = 0.6):
    """The earlier measurement, kept for comparison: answers that ENDED between the analysis
    file's weight change (+ ``margin_s``) and the next change."""
    out = []
    for (t0, w), (t1, _) in zip(state_weights, state_weights[1:]):
        if w in weights:
            sel = [r for r in rows if t0 + margin_s < r["end"] < t1 and r["status"] == 200]
            out.append({"weight": w, "requests": len(sel),
                        "candidate_pct": round(100 * sum(r["version"] == "candidate" for r in sel) / max(len(sel), 1), 1)})
    return out
