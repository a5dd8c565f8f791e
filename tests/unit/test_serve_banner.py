"""What `owc serve` prints once it serves: the models, a candidate's rollout, and examples that
work as printed — with the tenant key they need when the gateway wants one."""

from __future__ import annotations

import importlib
import types

import pytest

from cluster.config.loader import parse_config

serve = importlib.import_module("cluster.cli.serve")  # the module (cluster.cli's `serve` is the command)


@pytest.mark.parametrize("keyed", [False, True])
def test_the_banners_examples_send_a_key_when_one_is_needed(keyed, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")
    cfg = parse_config({"models": {"m": {"source": "x", "aliases": ["demo"],
                                         "candidate": {"engine_kwargs": {"max_num_seqs": 4}}}}})
    serve._print_ready(types.SimpleNamespace(cfg=cfg, url="http://127.0.0.1:8123"), keyed=keyed)
    text = capsys.readouterr().out
    assert "model m (aliases: demo)" in text and "candidate rolled out in steps [10, 50] %" in text
    assert "owc rollout status m" in text and '"max_tokens": 32' in text
    assert ('Authorization: Bearer $OWC_API_KEY' in text) is keyed
    assert ("api_key=os.environ['OWC_API_KEY']" in text) is keyed and ("api_key='-'" in text) is not keyed
