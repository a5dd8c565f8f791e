"""The strict base every config section uses: unknown keys are errors that name their path."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")  # served model, alias and adapter names
DEMO_SCHEME = "demo:"
DEMO_MODELS = ("tiny-llama", "tiny-gpt-oss")  # what `source: demo:NAME` builds (cluster/engine/demo_model.py)


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)
