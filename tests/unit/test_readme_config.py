"""The config reference (docs/configuration.md) is a config owc accepts, and names every gateway limit."""

from __future__ import annotations

import re

import yaml

from cluster.config.schema import Limits, OwcConfig
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
