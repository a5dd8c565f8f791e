"""Usage records as `owc usage` prints them: a table, CSV or JSON, with a total row."""

from __future__ import annotations

import csv
import io
import json

from cluster.tenancy.redis_store import USAGE_FIELDS

COLUMNS = ("day", "tenant", "model", *USAGE_FIELDS)


def render(rows: list[dict], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(rows, indent=2)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        return buf.getvalue().rstrip("\n")
    total = {"day": "total", "tenant": "", "model": "", **{f: sum(r[f] for r in rows) for f in USAGE_FIELDS}}
    cells = [[str(r[c]) for c in COLUMNS] for r in [*rows, total]]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(COLUMNS)]
    line = lambda vals: "  ".join(v.ljust(w) if i < 3 else v.rjust(w) for i, (v, w) in enumerate(zip(vals, widths)))  # noqa: E731
    return "\n".join([line(COLUMNS), *(line(c) for c in cells)])
