"""The config reference (docs/configuration.md) is a config owc accepts, and names every gateway limit."""

from __future__ import annotations

import re

import yaml

from cluster.config.gateway import GatewayConfig
from cluster.config.schema import Limits, ModelConfig, OwcConfig
from tests.conftest import REPO


def readme_config() -> dict:
    text = (REPO / "docs" / "configuration.md").read_text()
    section = text[text.index("# Configuration reference"):text.index("## Examples")]
    return yaml.safe_load(re.search(r"```yaml\n(.*?)```", section, re.S).group(1))


def test_the_readme_config_validates():
    OwcConfig.model_validate(readme_config())


def test_the_readme_lists_every_limit_with_its_default():
    shown = readme_config()["gateway"]["limits"]
    assert set(shown) == set(Limits.model_fields)
    assert shown == Limits().model_dump()


def test_the_reference_shows_every_key_it_says_it_does():
    """"shown here with every key": the top level, a model's and the gateway's."""
    cfg = readme_config()
    assert set(cfg) == set(OwcConfig.model_fields)
    assert set(cfg["models"]["tiny-llama"]) == set(ModelConfig.model_fields)
    assert set(cfg["gateway"]) == set(GatewayConfig.model_fields)


def test_the_reference_shows_the_defaults_of_what_it_adds():
    from cluster.config.loader import parse_config

    cfg = parse_config(readme_config())
    model, default = cfg.models["tiny-llama"], ModelConfig(source="x")
    for key in ("startup_timeout_s", "resume_streams", "candidate", "rollout"):
        assert getattr(model, key) == getattr(default, key), key
    for key in ("autoscaling", "cpus", "ray_resources", "output_allowance", "fair_sharing"):
        assert getattr(cfg.gateway, key) == getattr(GatewayConfig(), key), key
    assert cfg.ray == OwcConfig.model_fields["ray"].get_default(call_default_factory=True)
