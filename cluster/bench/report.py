"""Benchmark reports: JSON (raw), Markdown (summary) and PNG (plots) side by side."""

from __future__ import annotations

import json
from pathlib import Path


def _ms(s: dict | None) -> str:
    return "—" if not s else f"{s['median'] * 1000:.1f} ({s['min'] * 1000:.1f}–{s['max'] * 1000:.1f})"


def _num(s: dict | None, fmt: str = "{:.0f}") -> str:
    return "—" if not s else f"{fmt.format(s['median'])} ({fmt.format(s['min'])}–{fmt.format(s['max'])})"


def _pct(s: dict | None) -> str:
    return "—" if not s else f"{s['median'] * 100:.0f}%"


def _single_s(summary: dict, key: str) -> dict | None:
    v = summary.get(key)
    return None if v is None else {"median": v, "min": v, "max": v}


def markdown(doc: dict) -> str:
    sc = doc["scenario"]
    lines = [f"# {sc['name']}", "", sc["description"].strip(), "", f"Command: `{doc['command']}`", ""]
    slo = sc["slo"]
    lines.append(f"Goodput: share of requests with TTFT ≤ {slo['ttft_s']} s and mean ITL ≤ {slo['itl_s']} s.")
    res = doc["result"]
    if res["mode"] == "compare":
        lines.append(f"Median of {res['runs']} interleaved runs (min–max); ratios paired per run against `{res['baseline']}`.")
    lines.append("")
    load_name = "concurrency" if sc["arrival"]["kind"] == "closed" else "rate (conv/s)"
    for point in res["points"]:
        if point["load"] is not None:
            lines += [f"## {load_name} = {point['load']:g}", ""]
        lines += [
            "| target | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | e2e p99 ms | output tok/s | goodput | errors | TTFT ratio | tok/s ratio |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        if res["mode"] == "compare":
            for name, st in point["stats"].items():
                lines.append(
                    f"| {name} | {_ms(st['ttft_p50_s'])} | {_ms(st['ttft_p99_s'])} | {_ms(st['itl_p50_s'])} | "
                    f"{_ms(st['e2e_p99_s'])} | {_num(st['output_tokens_per_s'])} | {_pct(st['goodput'])} | {st['errors']} | "
                    f"{_num(st.get('ttft_p50_s_ratio'), '{:.2f}×')} | {_num(st.get('output_tokens_per_s_ratio'), '{:.2f}×')} |"
                )
        else:
            s = point["summary"]
            lines.append(
                f"| {res['target']} | {_ms(_single_s(s, 'ttft_p50_s'))} | {_ms(_single_s(s, 'ttft_p99_s'))} | "
                f"{_ms(_single_s(s, 'itl_p50_s'))} | {_ms(_single_s(s, 'e2e_p99_s'))} | "
                f"{_num(_single_s(s, 'output_tokens_per_s'))} | {_pct(_single_s(s, 'goodput'))} | {s['errors']} | — | — |"
            )
            if s["errors_by_type"]:
                lines.append(f"\nErrors by type: {s['errors_by_type']}")
        lines.append("")
    return "\n".join(lines)


def _series(doc: dict) -> dict[str, dict[str, list[float]]]:
    """Latency samples per target at the first load point."""
    res = doc["result"]
    point = res["points"][0]
    if res["mode"] == "compare":
        return point["samples"]
    return {res["target"]: {"ttft_s": point["ttft_s"], "itl_s": point["itl_s"]}}


def plot(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = doc["result"]
    sweep = len(res["points"]) > 1
    fig, axes = plt.subplots(1, 3 if sweep else 2, figsize=(15 if sweep else 10, 4))
    for ax, key, title in ((axes[0], "ttft_s", "TTFT CDF"), (axes[1], "itl_s", "inter-token latency CDF")):
        for name, samples in _series(doc).items():
            xs = sorted(x * 1000 for x in samples[key])
            if xs:
                ax.plot(xs, [(i + 1) / len(xs) for i in range(len(xs))], label=name)
        ax.set_xlabel("ms")
        ax.set_ylabel("fraction of requests" if key == "ttft_s" else "fraction of gaps")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    if sweep:
        ax = axes[2]
        loads = [p["load"] for p in res["points"]]
        names = list(res["targets"]) if res["mode"] == "compare" else [res["target"]]
        for name in names:
            if res["mode"] == "compare":
                ys = [p["stats"][name]["ttft_p99_s"]["median"] * 1000 if p["stats"][name]["ttft_p99_s"] else None for p in res["points"]]
            else:
                ys = [(p["summary"]["ttft_p99_s"] or 0) * 1000 for p in res["points"]]
            ax.plot(loads, ys, marker="o", label=name)
        ax.set_xlabel("concurrency" if doc["scenario"]["arrival"]["kind"] == "closed" else "rate (conv/s)")
        ax.set_ylabel("TTFT p99 (ms)")
        ax.set_title("latency vs load")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(doc["scenario"]["name"])
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_report(doc: dict, out_dir: Path, stem: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.json", out_dir / f"{stem}.md", out_dir / f"{stem}.png"]
    paths[0].write_text(json.dumps(doc, indent=1) + "\n")
    paths[1].write_text(markdown(doc) + "\n")
    plot(doc, paths[2])
    return paths


def main(argv: list[str] | None = None) -> int:
    """Re-render the Markdown and PNG of saved reports from their JSON."""
    import argparse

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("json", nargs="+", type=Path)
    for path in p.parse_args(argv).json:
        doc = json.loads(path.read_text())
        path.with_suffix(".md").write_text(markdown(doc) + "\n")
        plot(doc, path.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
