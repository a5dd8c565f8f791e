"""A correction to vLLM-CPU's LoRA ops (vLLM 0.32), installed in the engine processes owc
starts (cluster.engine.launch: the API server's and the engine core's). The PyTorch ops the CPU
platform's PunicaWrapperCPU uses (vllm.lora.ops.torch_ops) pick each token's adapter by
indexing the stacked LoRA weights with the token's slot; a base-model token has slot -1, which
PyTorch reads as the last slot. So a base-model request batched with adapter requests, once
every slot held an adapter, was computed with the adapter in the last slot (review 10: under
mixed load nearly every base-model answer was an adapter's text). GPU kernels skip slot -1.

The shrink op (x·A) now leaves zeros in the rows of tokens without an adapter, so the expand op
adds B·0 to them: the base model's output. Only on the CPU platform; a no-op elsewhere."""

from __future__ import annotations


def masked_shrink(shrink):
    """``bgmv_shrink`` that zeroes the output rows of tokens whose slot is negative (no LoRA)."""
    def bgmv_shrink(inputs, lora_a_weights, output_tensor, lora_indices_tensor, scaling: float = 1.0):
        shrink(inputs, lora_a_weights, output_tensor, lora_indices_tensor, scaling)
        none = lora_indices_tensor < 0
        if none.shape[0] == output_tensor.shape[0] and bool(none.any()):
            output_tensor[none] = 0

    bgmv_shrink.owc_masked = True
    return bgmv_shrink


def patch_cpu_lora() -> bool:
    """Install the correction when vLLM runs on the CPU platform; True when it is installed."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return False
    from vllm.lora.ops.torch_ops import lora_ops
    from vllm.lora.punica_wrapper import punica_cpu

    if not getattr(lora_ops.bgmv_shrink, "owc_masked", False):
        lora_ops.bgmv_shrink = masked_shrink(lora_ops.bgmv_shrink)  # sgmv_shrink calls it too
    punica_cpu.bgmv_shrink = lora_ops.bgmv_shrink
    return True
