"""The training data of `owc adapter train`: JSONL, one chat per line in the shape the
gateway takes (`{"messages": [{"role", "content"}, ...]}`), the last message the
assistant's answer the adapter learns. Checked whole before any training starts."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from cluster.config.adapters import VLLM_LORA_RANKS

ROLES = frozenset({"system", "user", "assistant", "developer"})
# Projections vLLM can load LoRA weights for (Llama-style names): attention and MLP only,
# never embeddings, lm_head or modules_to_save.
TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class DataError(ValueError):
    """A training file or setting that cannot train an adapter; the message says where."""


@dataclass(frozen=True)
class TrainSettings:
    rank: int = 8
    epochs: int = 3
    learning_rate: float = 5e-3
    batch_size: int = 8
    max_rank: int = 16  # the model's lora.max_rank: an adapter above it would not load
    seed: int = 0

    def check(self) -> None:
        if self.rank < 1:
            raise DataError(f"--rank must be ≥ 1, got {self.rank}")
        if self.rank > self.max_rank:
            raise DataError(f"--rank {self.rank} exceeds the model's lora.max_rank {self.max_rank}: "
                            "vLLM would refuse to load the adapter")
        if self.max_rank not in VLLM_LORA_RANKS:
            raise DataError(f"max rank {self.max_rank} is not one of vLLM's ranks {list(VLLM_LORA_RANKS)}")
        if self.epochs < 1 or self.batch_size < 1:
            raise DataError("--epochs and --batch-size must be ≥ 1")
        if not 0 < self.learning_rate < 1:
            raise DataError(f"--lr must lie in (0, 1), got {self.learning_rate}")


def _check_chat(n: int, row: object) -> list[dict]:
    where = f"line {n}"
    if not isinstance(row, dict) or not isinstance(row.get("messages"), list) or not row["messages"]:
        raise DataError(f"{where}: expected an object with a non-empty \"messages\" list")
    msgs = row["messages"]
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise DataError(f"{where}: messages[{i}] needs a role ({', '.join(sorted(ROLES))}) and a string content")
    if msgs[-1]["role"] != "assistant":
        raise DataError(f"{where}: the last message must be the assistant's answer to learn")
    if len(msgs) < 2:
        raise DataError(f"{where}: an answer needs a message before it")
    if not msgs[-1]["content"].strip():
        raise DataError(f"{where}: the assistant's answer is empty")
    return msgs


def load_chats(path: str | Path) -> list[list[dict]]:
    """Every chat of a JSONL file, or DataError naming the first bad line."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: no such file")
    chats = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"line {n}: not JSON ({e.msg})") from None
        chats.append(_check_chat(n, row))
    if not chats:
        raise DataError(f"{p}: no examples")
    return chats


def target_modules(module_names: list[str]) -> list[str]:
    """The LoRA targets present in a model (by the last part of each module's name)."""
    present = {n.rsplit(".", 1)[-1] for n in module_names}
    found = [t for t in TARGET_MODULES if t in present]
    if not found:
        raise DataError("the model has none of the projections vLLM loads LoRA weights for "
                        f"({', '.join(TARGET_MODULES)})")
    return found
