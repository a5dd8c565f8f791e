"""Package boundaries, read from the source (imports inside functions count too):
- only cluster/engine touches vLLM; routing is pure (no Ray, no HTTP);
- the product never imports its benchmarks (loadtests); cluster.tenancy never imports the gateway;
- no import cycle among cluster's top-level folders and modules, nor among the gateway's
  sub-packages and top modules; the gateway never imports what is built on it (the control
  path with its rollout analysis, the CLI), and the packages it uses (tenancy, the batch
  runner) never import the gateway: the gateway's wiring hands them what they call back;
- no folder holds more than 15 modules, the gateway's top at most 8; the gateway's policy
  sub-packages (flowcontrol) reach no HTTP server or client library;
- files stay small and functions take few positional parameters;
- config validation works where vLLM (and Ray) are not installed (chart CI, controller image)."""

import ast
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PKG = REPO / "cluster"
MAX_LINES = 350
MAX_POSITIONAL = 6
ROUTING_MAY_NOT_IMPORT = ("ray", "httpx", "aiohttp", "fastapi", "starlette", "uvicorn", "vllm")
HTTP_LIBRARIES = ("httpx", "aiohttp", "fastapi", "starlette", "uvicorn", "requests", "urllib3", "h11", "httptools")
MAX_MODULES_PER_FOLDER = 15
MAX_GATEWAY_TOP_MODULES = 8
# Gateway sub-packages declared pure policy: no HTTP library, even through what they import.
PURE_GATEWAY_PACKAGES = ("cluster.gateway.flowcontrol",)
# Built on the gateway (the capacity controller and rollout analysis, the CLI): the gateway
# never imports them. Used by the gateway (tenancy; the Batch API's store and runner, which
# gets admission handed to it as a callable): they never import the gateway.
BUILT_ON_THE_GATEWAY = ("cluster.capacity", "cluster.cli")
USED_BY_THE_GATEWAY = ("cluster.tenancy", "cluster.batch")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@lru_cache(maxsize=None)
def _sources() -> dict[str, tuple[Path, ast.Module]]:
    return {_module_name(p): (p, ast.parse(p.read_text(), str(p))) for p in sorted(PKG.rglob("*.py"))}


def _imports(module: str, tree: ast.Module, is_package: bool) -> set[str]:
    """Every module this one imports, at any depth of its code."""
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            out.add(target)
            out.update(f"{target}.{a.name}" for a in node.names)  # `from pkg import module`
    return out


@lru_cache(maxsize=None)
def _graph() -> dict[str, set[str]]:
    """cluster module -> the cluster modules and external top-level packages it imports."""
    mods = _sources()
    graph: dict[str, set[str]] = {}
    for name, (path, tree) in mods.items():
        deps = set()
        for imp in _imports(name, tree, path.name == "__init__.py"):
            if imp.split(".")[0] == "cluster":
                while imp and imp not in mods:  # `from cluster.x import name` -> cluster.x
                    imp = imp.rpartition(".")[0]
                if imp and imp != name:
                    deps.add(imp)
            else:
                deps.add(imp.split(".")[0])
        graph[name] = deps
    return graph


def _reachable(start: str) -> set[str]:
    graph, seen, todo = _graph(), set(), [start]
    while todo:
        m = todo.pop()
        for d in graph.get(m, ()):
            if d not in seen:
                seen.add(d)
                todo.append(d)
    return seen


def _unit(module: str) -> str:
    """The top-level folder or module of cluster a module belongs to."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "cluster"


def test_only_the_engine_package_imports_vllm():
    offenders = sorted(m for m, deps in _graph().items()
                       if "vllm" in deps and not m.startswith("cluster.engine."))
    assert offenders == []
    for name, (_, tree) in _sources().items():  # ray.serve.llm / ray.llm pull vLLM in too
        if not name.startswith("cluster.engine."):
            assert not {i for i in _imports(name, tree, False) if i.startswith(("ray.serve.llm", "ray.llm"))}, name


def test_routing_is_pure_even_through_what_it_imports():
    offenders = {}
    for m in _graph():
        if m.startswith("cluster.routing"):
            bad = sorted(d for d in _reachable(m) | _graph()[m] if d in ROUTING_MAY_NOT_IMPORT)
            if bad:
                offenders[m] = bad
    assert offenders == {}


def test_tenancy_and_the_batch_runner_never_import_the_gateway():
    """cluster.tenancy (limits, quotas, usage) and cluster.batch (the Batch API) are used by
    the gateway, never the reverse."""
    assert sorted(m for m in _graph() if m.startswith(USED_BY_THE_GATEWAY)
                  and any(d.startswith("cluster.gateway") for d in _reachable(m))) == []


def test_the_product_never_imports_its_benchmarks():
    assert sorted(m for m, deps in _graph().items() if "loadtests" in deps) == []


def _cycles(edges: dict[str, set[str]]) -> list[str]:
    cycles: list[str] = []

    def visit(node: str, path: list[str]) -> None:
        for nxt in sorted(edges.get(node, ())):
            if nxt in path:
                cycles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif len(path) < 12:
                visit(nxt, [*path, nxt])

    for unit in sorted(edges):
        visit(unit, [unit])
    return cycles


def test_no_import_cycle_between_top_level_folders_and_modules():
    edges: dict[str, set[str]] = {}
    for m, deps in _graph().items():
        for d in deps:
            if d.startswith("cluster") and _unit(d) != _unit(m):
                edges.setdefault(_unit(m), set()).add(_unit(d))
    assert _cycles(edges) == []


@pytest.mark.parametrize("edges, found", [
    ({"a": {"b"}, "b": {"c"}}, []),
    ({"config": {"routing"}, "routing": {"config"}}, ["config -> routing -> config", "routing -> config -> routing"]),
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a -> b -> c -> a", "b -> c -> a -> b", "c -> a -> b -> c"]),
])
def test_the_cycle_check_finds_cycles(edges, found):
    assert _cycles(edges) == found


def _gateway_unit(module: str) -> str | None:
    """The gateway sub-package or top module a module belongs to (None: outside the gateway)."""
    parts = module.split(".")
    if parts[:2] != ["cluster", "gateway"] or len(parts) < 3:
        return None
    return parts[2]


def test_no_import_cycle_between_the_gateways_sub_packages():
    edges: dict[str, set[str]] = {}
    for m, deps in _graph().items():
        for d in deps:
            a, b = _gateway_unit(m), _gateway_unit(d)
            if a and b and a != b:
                edges.setdefault(a, set()).add(b)
    assert _cycles(edges) == []


def test_no_folder_holds_more_than_15_modules_and_the_gateway_top_at_most_8():
    counts = {str(d.relative_to(REPO)): len(list(d.glob("*.py"))) for d in [PKG, *PKG.rglob("*")] if d.is_dir()}
    assert {d: n for d, n in counts.items() if n > MAX_MODULES_PER_FOLDER} == {}
    assert counts["cluster/gateway"] <= MAX_GATEWAY_TOP_MODULES, sorted(p.name for p in (PKG / "gateway").glob("*.py"))


@pytest.mark.parametrize("package", PURE_GATEWAY_PACKAGES)
def test_the_gateways_policy_packages_reach_no_http_library(package):
    modules = [m for m in _graph() if m == package or m.startswith(package + ".")]
    assert modules, f"{package} is declared pure but does not exist"
    offenders = {m: bad for m in modules if (bad := sorted(d for d in _reachable(m) | _graph()[m] if d in HTTP_LIBRARIES))}
    assert offenders == {}


def test_the_gateway_never_imports_what_is_built_on_it():
    offenders = {m: sorted(d for d in _reachable(m) if d.startswith(BUILT_ON_THE_GATEWAY))
                 for m in _graph() if m.startswith("cluster.gateway")}
    assert {m: d for m, d in offenders.items() if d} == {}


def test_no_file_over_the_size_limit():
    big = {str(p.relative_to(REPO)): n for p, _ in _sources().values() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert big == {}


def test_no_function_with_many_positional_parameters():
    offenders = []
    for path, tree in _sources().values():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = len(node.args.posonlyargs) + len(node.args.args)
                if n > MAX_POSITIONAL:
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}() takes {n} positional")
    assert offenders == []


@pytest.mark.parametrize("source, problem", [
    ("import ray\n", "ray"),
    ("def f():\n    import httpx\n", "httpx"),
    ("from starlette.responses import Response\n", "starlette"),
])
def test_the_purity_check_sees_module_and_function_level_imports(source, problem):
    tree = ast.parse(source)
    assert problem in {i.split(".")[0] for i in _imports("cluster.routing.x", tree, False)}


def test_config_validate_works_without_vllm_or_ray():
    code = (
        "import sys; sys.modules['vllm'] = None; sys.modules['ray'] = None; "
        "from cluster.cli import app; app(['config', 'validate', 'deploy/gpt-oss-120b-tp2.yaml'])"
    )
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "vLLM not installed: engine_kwargs names not checked" in p.stdout


def test_config_validate_rejects_bad_engine_kwargs_with_vllm(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("models:\n  m:\n    source: x\n    engine_kwargs: {max_num_seqz: 4}\n")
    from typer.testing import CliRunner

    from cluster.cli import app  # in this process: vLLM's parsers imported once for the session
    r = CliRunner().invoke(app, ["config", "validate", str(bad)])
    assert r.exit_code == 2
    assert "models.m.engine_kwargs.max_num_seqz: not a vLLM engine argument" in r.output


def test_config_validate_names_unknown_key_path(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("models:\n  m:\n    source: x\n    replicas: {min: 1, maxx: 2}\n")
    p = subprocess.run([sys.executable, "-m", "cluster.cli", "config", "validate", str(bad), "--no-engine-args"],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "models.m.replicas.maxx: unknown key" in p.stderr
