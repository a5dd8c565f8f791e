"""A copy of the source tree with the gateway's own modules compiled by Cython, as they are
(no types added), to measure what compiling the Python that runs per request and per token
buys: ``python -m loadtests.per_request --old-tree DIR --only owc`` then runs it beside the
tree as it is, interleaved (docs/benchmarks.md, "What a request costs the gateway").

    pip install cython          # not a project dependency: only this measurement uses it
    python -m loadtests.compiled_tree DIR [--rev HEAD]

Compiled: every module of cluster/gateway, cluster/routing and cluster/tenancy but the
packages' __init__, the gateway's entry point (``python -m`` needs its source) and the two
that define pydantic models (pydantic reads their classes' annotations). Python imports a
compiled module before its source, so the copy runs the compiled code. Cython is told not to
enforce annotations as types (``annotation_typing``: the gateway passes os.environ where a
dict is annotated). Not for serving: some unit tests fail on the compiled copy (rollouts,
stream resume); the overhead benchmark's default path runs.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PACKAGES = ("cluster/gateway", "cluster/routing", "cluster/tenancy")
LEFT_AS_SOURCE = {"cluster/gateway/main.py", "cluster/gateway/anthropic/requests.py",
                  "cluster/gateway/admission/validation.py"}

_SETUP = """
import sys
from Cython.Build import cythonize
from setuptools import Extension, setup
files = sys.argv[1:]
exts = [Extension(f[:-3].replace("/", "."), [f]) for f in files]
setup(script_args=["build_ext", "--inplace", "-j", "2"], ext_modules=cythonize(
    exts, nthreads=2, quiet=True, compiler_directives={"language_level": 3, "annotation_typing": False}))
"""


def modules(tree: Path) -> list[str]:
    out = []
    for package in PACKAGES:
        for path in sorted((tree / package).rglob("*.py")):
            rel = path.relative_to(tree).as_posix()
            if path.name not in ("__init__.py", "__main__.py") and rel not in LEFT_AS_SOURCE:
                out.append(rel)
    return out


def main() -> None:
    p = argparse.ArgumentParser(prog="loadtests.compiled_tree", description=__doc__.split("\n\n")[0])
    p.add_argument("dir", help="where the copy goes (must not exist or be empty)")
    p.add_argument("--rev", default="HEAD", help="the commit copied (git archive)")
    args = p.parse_args()
    try:
        import Cython  # noqa: F401
    except ImportError:
        sys.exit("Cython is not installed: pip install cython")
    tree = Path(args.dir).resolve()
    tree.mkdir(parents=True, exist_ok=True)
    if any(tree.iterdir()):
        sys.exit(f"{tree} is not empty")
    archive = subprocess.run(["git", "archive", args.rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    files = modules(tree)
    t0 = time.monotonic()
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(_SETUP)
    subprocess.run([sys.executable, f.name, *files], cwd=tree, check=True, stdout=subprocess.DEVNULL)
    built = sorted(tree.glob("cluster/**/*.so"))
    if len(built) != len(files):
        sys.exit(f"built {len(built)} of {len(files)} modules")
    print(f"{len(built)} modules of {args.rev} compiled in {time.monotonic() - t0:.0f} s into {tree}")


if __name__ == "__main__":
    main()
