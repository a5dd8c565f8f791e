"""Adapter candidates through a gateway process with fake engines (docs/rollouts.md, "Adapter
candidates"): a retrained adapter (`adapters.<name>.candidate`) is loaded on the model's own
replicas as `<name>@candidate` (here on demand, by the gateway), gets the weight's share of
the requests that name the adapter, answers under the name the client asked for, and is
analysed against the current adapter on those requests only: the model's other requests are
version `other`, outside the window. One candidate promoted, a slower one rolled back while
the base model's even slower traffic would have hidden it had it been counted as stable."""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import yaml

from cluster.config.loader import parse_config
from cluster.gateway.auth.keys import hash_key
from cluster.rollouts.analysis import LocalAnalysis, http_scrape as scrape
from tests.unit.rollout_helpers import Ticker, rollout_stack
from tests.conftest import fake_engine_argv, metric, wait_for

ENGINE_KEY = "engine-secret-for-adapter-rollout-tests"
TENANT, ADMIN = "Bearer sk-t", "Bearer sk-admin"
ROLLOUT = {"steps": [20, 50], "step_s": 5, "conformance": True, "gates": {"min_requests": 5}}
LENIENT = {**ROLLOUT, "gates": {"min_requests": 5, "min_delta_s": 1.0}}  # a shared CI machine's noise


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    d = tmp_path_factory.mktemp("adapter-rollout")
    (d / "keys.yaml").write_text(yaml.safe_dump({hash_key("sk-t"): "t"}))
    (d / "admin.yaml").write_text(yaml.safe_dump({hash_key("sk-admin"): "ops"}))
    cfg = {"models": {
        "m": {"source": "external", "rollout": LENIENT,
              "adapters": {"support": {"source": "/adapters/support-v1", "candidate": {"source": "/adapters/support-v2"}},
                           "legal": {"source": "/adapters/legal"}}},
        "n": {"source": "external", "rollout": ROLLOUT,
              "adapters": {"fr": {"source": "/adapters/fr-v1", "candidate": {"source": "/adapters/fr-v2"}}}},
        # A retrained adapter the engine refuses to load (the fake engine fails a path with "fail").
        "k": {"source": "external", "rollout": ROLLOUT,
              "adapters": {"ops": {"source": "/adapters/ops-v1", "candidate": {"source": "/adapters/fail-ops-v2"}}}}},
        "model_cache_dir": str(d),
        "gateway": {"api_keys_env": None, "admin_keys_env": None, "api_keys_file": str(d / "keys.yaml"),
                    "admin_keys_file": str(d / "admin.yaml"), "access_log": {"path": str(d / "access.log")},
                    "routing_stats": {"period_s": 0.2}}}
    env = {"OWC_ENGINE_KEY": ENGINE_KEY, "OWC_ROLLOUT_DIR": str(d / "rollouts")}
    # Stable adapters loaded at the engine's start; the candidates are not: the gateway loads
    # each on demand. n's retrained fr is 400 ms slower to its first token, n's base model 600 ms.
    engines = {("m", "stable"): [*fake_engine_argv("m"), "--lora", "support", "--lora", "legal"],
               ("n", "stable"): [*fake_engine_argv("n"), "--lora", "fr",
                                 "--lora-ttft-ms", "fr@candidate=400", "--lora-ttft-ms", "n=600"],
               ("k", "stable"): [*fake_engine_argv("k"), "--lora", "ops"]}
    with rollout_stack(d, cfg, engines, env) as stack:
        yield stack


@pytest.fixture(scope="module")
def analysis(stack):
    _, _, files, cfg = stack
    # conformance: true in the config; an adapter's rollout has none to run (one engine), so
    # no gate is given here and none is needed for step 1 to start.
    with Ticker(LocalAnalysis(cfg, files, scrape=scrape)) as a:
        yield a


@pytest.mark.parametrize(("model", "adapter", "session", "weight", "draw", "expect"), [
    ("m", "support", None, 20, 0.1, "candidate"),
    ("m", "support", None, 20, 0.3, "stable"),
    ("m", "support", None, 0, 0.0, "stable"),  # rolled back
    ("m", "support", None, 100, 0.99, "candidate"),  # promoted
    ("m", None, None, 100, 0.0, "other"),  # the base model during the adapter's rollout
    ("m", "legal", None, 100, 0.0, "other"),  # another adapter of the model
    ("n", "fr", None, 100, 0.0, None),  # a model without an adapter rollout: not versioned here
    ("n", None, None, 100, 0.0, None),
])
def test_the_version_of_a_request_during_an_adapter_rollout(tmp_path, model, adapter, session, weight, draw, expect):
    from cluster.config.loader import parse_config
    from cluster.discovery.rollouts import RolloutFiles
    from cluster.gateway.rollout.view import RolloutView

    cfg = parse_config({"models": {
        "m": {"source": "x", "adapters": {"support": {"source": "/s1", "candidate": {"source": "/s2"}}, "legal": {"source": "/l"}}},
        "n": {"source": "y", "adapters": {"fr": {"source": "/f"}}}}})
    files = RolloutFiles(tmp_path)
    files.write("support", {"state": "analysing", "weight": weight})
    view = RolloutView(cfg, files, draw=lambda: draw)
    view.reload()
    assert view.adapter_version(model, adapter, session) == expect
    assert view.weight("m") is None and view.pick("m", None, []) is None  # the model's own routing is not split


def test_a_candidate_request_names_the_candidates_lora_and_its_answer_the_adapter():
    from cluster.gateway.context import Job
    from cluster.gateway.rollout.version import candidate_job
    from cluster.gateway.stream.relay import renamed

    data = {"model": "support", "messages": [{"role": "user", "content": "support@candidate?"}]}
    job = Job(request_id="r", route="/v1/chat/completions", model="m", tenant="t", data=data, body=b"{}", stream=True,
              headers={}, adapter="support")
    c = candidate_job(job)
    assert (c.adapter, c.data["model"], json.loads(c.body)["model"]) == ("support@candidate",) * 3
    assert data["model"] == "support" and job.rename == ()  # the client's request is left as it was
    engine = b'data: {"model":"support@candidate","choices":[{"delta":{"content":"support@candidate"}}]}\n\n'
    assert renamed(engine, c.rename) == b'data: {"model":"support","choices":[{"delta":{"content":"support@candidate"}}]}\n\n'
    assert renamed(b'{"model": "support@candidate"}', c.rename) == b'{"model": "support"}'  # a spaced writer too


def chat(url: str, model: str, *, stream: bool = True) -> tuple[int, str | None, set[str]]:
    """(status, x-owc-version, the `model` names in the answer)."""
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "stream": stream}
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, headers={"Authorization": TENANT}, timeout=30) as r:
        text = r.read().decode()
    docs = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")] if stream else \
        [json.loads(text)] if r.status_code == 200 else []
    return r.status_code, r.headers.get("x-owc-version"), {d["model"] for d in docs if "model" in d}


def load(url: str, mix: dict[str, int], until, timeout_s: float = 40) -> list[tuple[str, int, str | None, set[str]]]:
    """Streamed requests from ``mix[name]`` clients per requested name until ``until()``."""
    out: list = []
    deadline = time.monotonic() + timeout_s

    def client(name: str, i: int) -> None:
        while not until() and time.monotonic() < deadline:
            out.append((name, *chat(url, name, stream=i % 2 == 0)))

    with ThreadPoolExecutor(sum(mix.values())) as pool:
        for f in [pool.submit(client, n, i) for n, k in mix.items() for i in range(k)]:
            f.result()
    return out


def ended(files, key):
    return lambda: (files.read(key) or {}).get("state") in ("promoted", "rolled_back", "aborted")


@pytest.fixture(scope="module")
def loads(stack, analysis):
    """The three rollouts driven at once (each until its own end): the requests of each."""
    gw, _, files, _ = stack
    mixes = {"support": {"support": 4, "m": 1, "legal": 1}, "fr": {"fr": 4, "n": 4}, "ops": {"ops": 4}}
    with ThreadPoolExecutor(len(mixes)) as pool:
        running = {key: pool.submit(load, gw.url, mix, ended(files, key)) for key, mix in mixes.items()}
        return {key: f.result() for key, f in running.items()}


def test_the_admin_api_knows_an_adapter_rollout_by_the_adapters_name(stack, analysis):
    gw, _, _, _ = stack
    url = gw.url + "/admin/v1/models/support/rollout"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"Authorization": TENANT}).status_code == 403
    doc = wait_for(lambda: (r := httpx.get(url, headers={"Authorization": ADMIN}).json())["state"] != "pending" and r,
                   10, "the analysis to start support's step 1 (no conformance gate for an adapter)")
    assert (doc["model"], doc["step"], doc["weight"], doc["steps"]) == ("support", 0, 20, [20, 50])
    r = httpx.get(gw.url + "/admin/v1/models/m/rollout", headers={"Authorization": ADMIN})
    assert r.status_code == 404 and "/admin/v1/models/support/rollout" in r.json()["error"]["message"]
    r = httpx.get(gw.url + "/admin/v1/models/legal/rollout", headers={"Authorization": ADMIN})
    assert r.status_code == 404 and r.json()["error"]["code"] == "no_rollout"


def test_an_adapter_candidate_is_promoted_on_its_own_requests(stack, loads):
    gw, procs, files, _ = stack
    answers = loads["support"]
    doc = files.read("support")
    assert doc["state"] == "promoted", doc
    assert all(status == 200 for _, status, _, _ in answers)
    support = [(v, names) for name, _, v, names in answers if name == "support"]
    assert {v for v, _ in support} == {"stable", "candidate"}
    assert all(names == {"support"} for _, names in support)  # never the candidate's LoRA name
    assert all(v is None for name, _, v, _ in answers if name != "support")  # not in the rollout: no header
    assert all(names == ({"m"} if name == "m" else {name}) for name, _, _, names in answers)
    # The gateway loaded the candidate's LoRA on the replica when its first request came.
    assert metric(gw.metrics_url, "owc_adapter_loads_total", model="m", result="ok") >= 1
    served = {v: metric(gw.metrics_url, "owc_requests_total", model="m", version=v) for v in ("stable", "candidate", "other")}
    assert served["stable"] + served["candidate"] == len(support)
    assert served["other"] == len(answers) - len(support)
    time.sleep(0.6)  # the gateway's next read of the state
    assert all(chat(gw.url, "support", stream=s)[1:] == ("candidate", {"support"}) for s in (True, False) * 3)
    assert metric(gw.metrics_url, "owc_rollout_candidate_weight", model="support") == 100
    from typer.testing import CliRunner

    from cluster.cli import app

    r = CliRunner().invoke(app, ["rollout", "status", "support", "--json", "--url", gw.url, "--api-key", "sk-admin"])
    assert r.exit_code == 0 and (json.loads(r.output)["state"], json.loads(r.output)["weight"]) == ("promoted", 100), r.output


def test_a_slower_adapter_candidate_is_rolled_back_though_the_base_model_is_slower_still(stack, loads):
    """n's base requests (600 ms) would raise stable's p95 over the slow candidate's (400 ms) if
    they were counted: the rollback shows the window holds the adapter's requests only."""
    gw, _, files, _ = stack
    answers = loads["fr"]
    doc = files.read("fr")
    assert doc["state"] == "rolled_back" and doc["weight"] == 0, doc
    assert "TTFT p95" in doc["reason"]
    assert all(status == 200 for _, status, _, _ in answers)
    assert all(names == {"fr"} for name, _, _, names in answers if name == "fr")
    time.sleep(0.6)
    assert {chat(gw.url, "fr")[1] for _ in range(10)} == {"stable"}  # the model keeps serving the old adapter
    assert metric(gw.metrics_url, "owc_rollout_state", model="fr", state="rolled_back") == 1
    base = sum(name == "n" for name, _, _, _ in answers)
    assert base >= 5 and metric(gw.metrics_url, "owc_requests_total", model="n", version="other") == base


def test_a_candidate_the_engine_cannot_load_is_rolled_back_on_its_errors(stack, loads):
    """Its requests fail (502, the load refused) and stream no token: the error gate rolls it
    back instead of the step pausing on latency measured for stable only; stable's answers
    never fail, and afterwards every `ops` answer is stable's."""
    gw, _, files, _ = stack
    answers = loads["ops"]
    doc = files.read("ops")
    assert doc["state"] == "rolled_back" and doc["weight"] == 0, doc
    assert "5xx share 100.0%" in doc["reason"], doc["reason"]
    assert {(v, status) for _, status, v, _ in answers} == {("stable", 200), ("candidate", 502)}
    time.sleep(0.6)
    assert {chat(gw.url, "ops")[:2] for _ in range(6)} == {(200, "stable")}
    assert metric(gw.metrics_url, "owc_adapter_loads_total", model="k", result="failed") >= 5


def test_owc_controller_analyses_an_adapter_rollout_on_the_models_series():
    """On Kubernetes (the in-test API server and Prometheus of test_rollout_controller): the
    leader analyses the adapter's rollout under the adapter's name, reading the model's
    stable/candidate series (the model's other requests are `other`), promotes it, and scales
    no deployment (the LoRA runs on the model's engines)."""
    from cluster.capacity.rollout import RolloutState
    from cluster.discovery.rollout_configmap import key_of
    from cluster.rollouts.leader import configmap_name
    from tests.unit.test_capacity_kubernetes import NAME, NS, FakeApi
    from tests.unit.test_rollout_controller import FakePrometheus, Pod

    owc = {"models": {"tiny": {"source": "demo:tiny-llama", "adapters": {
        "support": {"source": "/models/support-v1", "candidate": {"source": "/models/support-v2"}}},
        "rollout": {"steps": [20, 50], "step_s": 60, "gates": {"min_requests": 5}}}}}
    api = FakeApi(owc)
    try:
        queries: list[str] = []

        class Recording(FakePrometheus):
            def __call__(self, request):
                queries.append(request.url.params["query"])
                return super().__call__(request)

        now, prom = [0.0], Recording()
        pod = Pod(api, "pod-a", now, prom, config=parse_config(owc))
        before = yaml.safe_load(api.rayservice()["spec"]["serveConfigV2"])
        seen = []
        for t in (0, 30, 60, 90, 120):
            now[0] = t
            assert pod.round() is True
            cm = api.objects[f"/api/v1/namespaces/{NS}/configmaps/{configmap_name(NAME)}"]
            st = RolloutState.from_dict(yaml.safe_load(cm["data"][key_of("support")]))
            seen.append((st.state, st.weight))
        assert seen == [("analysing", 20), ("analysing", 20), ("analysing", 50), ("analysing", 50), ("promoted", 100)]
        assert queries and all('model="tiny"' in q and re.search(r'version="(stable|candidate)"', q) for q in queries)
        assert yaml.safe_load(api.rayservice()["spec"]["serveConfigV2"]) == before  # nothing drained or scaled
    finally:
        api.server.shutdown()
