"""The rollout admin API (admin keys only, audited by the route table; docs/rollouts.md):

- ``GET /admin/v1/models/{model}/rollout``: the state document — ``state`` (pending,
  analysing, paused, promoted, rolled_back, aborted), ``step`` (index), ``weight`` (the
  candidate's %), ``reason``, ``gates`` (each gate's figures in the last window), ...
- ``POST /admin/v1/models/{model}/rollout/{promote|abort|pause|resume}``: handed to the
  analysis (cluster.discovery.rollouts); 200 with the new state, 409 where the command does
  not apply to the state, 503 when no analysis answers within ``ANSWER_TIMEOUT_S``."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from cluster.config.schema import OwcConfig
from cluster.gateway.errors import OpenAIError
from cluster.gateway.rollout.view import RolloutView
from cluster.gateway.routes import RouteTable

ACTIONS = ("promote", "abort", "pause", "resume")
ANSWER_TIMEOUT_S = 5.0


def not_started(config: OwcConfig, model: str, served: str | None = None) -> dict[str, Any]:
    """What GET answers before the analysis wrote anything: pending, all traffic on stable.
    ``served``: the model whose `rollout:` it is (an adapter's rollout: the adapter's model)."""
    return {"model": model, "state": "pending", "step": 0, "weight": 0, "reason": "the analysis has not started",
            "gates": {}, "steps": config.models[served or model].rollout.steps}


def add_rollout_routes(table: RouteTable, *, config: OwcConfig, view: RolloutView) -> None:
    def rolled_out(model: str) -> str:
        """``model``: a served model's name or alias, or an adapter's (an adapter's rollout is known by it)."""
        served = config.resolve(model)
        if served is None:
            raise OpenAIError(404, f"The model '{model}' is not served here", param="model", code="model_not_found")
        if model in config.models[served].aliases:
            model = served  # an alias names its model's rollout, as it names the model on every other route
        if model not in view.rolled_out:
            rolled = view.adapter_of.get(model)
            also = f"; its adapter '{rolled}' is rolled out: /admin/v1/models/{rolled}/rollout" if rolled else ""
            raise OpenAIError(404, f"'{model}' has no candidate to roll out (no `candidate:` in its config){also}",
                              param="model", code="no_rollout")
        return model

    @table.add("GET", "/admin/v1/models/{model:path}/rollout", "admin")
    async def get_rollout(request: Request, model: str) -> Response:
        model = rolled_out(model)
        try:
            doc = await asyncio.to_thread(view.files.read, model)  # an API call on Kubernetes
        except OSError as e:  # the ConfigMap (Kubernetes API) cannot be read
            raise OpenAIError(503, f"the rollout state cannot be read: {e}", code="rollout_analysis_unavailable",
                              type="server_error") from None
        return JSONResponse(doc or not_started(config, model, view.targets[model][0]))

    @table.add("POST", "/admin/v1/models/{model:path}/rollout/{action}", "admin")
    async def act(request: Request, model: str, action: str) -> Response:
        if action not in ACTIONS:
            raise OpenAIError(404, f"unknown rollout action '{action}'; one of {', '.join(ACTIONS)}", param="action")
        model = rolled_out(model)
        request.state.audit = {"model": model, "action": f"rollout.{action}"}
        try:
            cid = await asyncio.to_thread(view.files.submit, model, action, getattr(request.state, "admin", None))
        except OSError as e:  # the state's directory or ConfigMap (Kubernetes API) cannot be written
            raise OpenAIError(503, f"the rollout command could not be handed to the analysis: {e}",
                              code="rollout_analysis_unavailable", type="server_error") from None
        deadline = time.monotonic() + ANSWER_TIMEOUT_S
        while (answer := await asyncio.to_thread(view.files.take_answer, cid)) is None:
            if time.monotonic() > deadline:
                await asyncio.to_thread(view.files.withdraw, cid)
                raise OpenAIError(503, "the rollout analysis did not answer; is `owc serve` (or `owc controller`) "
                                  "running it?", code="rollout_analysis_unavailable", type="server_error")
            await asyncio.sleep(0.05)
        if answer.get("error"):
            raise OpenAIError(409, str(answer["error"]), param="action", code="rollout_command_refused")
        await asyncio.to_thread(view.reload)  # this process routes by the new weight at once
        return JSONResponse(answer.get("state") or {})
