"""`owc adapter train`: a LoRA adapter from chat examples, with peft, on the model's own chat
template. Loss on the assistant's answer only (the prompt tokens are masked), AdamW, a fixed
seed; CPU unless a GPU is there. The shortest honest path from "our data" to "our model",
not a training platform: no evaluation split, no schedules, no distributed training."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from cluster.adapters.data import DataError, TrainSettings, load_chats, target_modules

Progress = Callable[[int, int, float], None]  # (step, total steps, loss)
SMALL_MODEL_PARAMS = 100_000_000  # measured on the demo model: 1 thread steps 3-5x faster than 2


def _encode(tokenizer, chat: list[dict]) -> tuple[list[int], list[int]]:
    """Token ids of the whole chat and its labels (-100 on the prompt)."""
    prompt = tokenizer.apply_chat_template(chat[:-1], add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(chat, tokenize=False)
    if not full.startswith(prompt):
        raise DataError("the model's chat template does not render the answer after the generation prompt")
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    a_ids = tokenizer(full[len(prompt):], add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in a_ids:
        a_ids = a_ids + [tokenizer.eos_token_id]  # the answer ends: greedy decoding stops there
    return p_ids + a_ids, [-100] * len(p_ids) + a_ids


def _batches(encoded: list[tuple[list[int], list[int]]], size: int, pad: int, torch, gen):
    order = torch.randperm(len(encoded), generator=gen).tolist()
    for i in range(0, len(order), size):
        rows = [encoded[j] for j in order[i:i + size]]
        width = max(len(ids) for ids, _ in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, (x, y) in enumerate(rows):
            ids[r, :len(x)] = torch.tensor(x)
            labels[r, :len(y)] = torch.tensor(y)
            mask[r, :len(x)] = 1
        yield ids, labels, mask


def train_adapter(base: str | Path, data: str | Path, out: str | Path, settings: TrainSettings,
                  progress: Progress | None = None) -> dict:
    """Train and write the adapter to ``out`` (adapter_config.json, adapter_model.safetensors
    and owc-train.json with what it was trained on); returns that summary."""
    settings.check()
    chats = load_chats(data)
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(settings.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    if not tokenizer.chat_template:
        raise DataError(f"{base}: the tokenizer has no chat template")
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32, attn_implementation="eager").to(device)
    if device == "cpu" and sum(p.numel() for p in model.parameters()) < SMALL_MODEL_PARAMS:
        torch.set_num_threads(1)  # a tiny model's steps are too small to share: threads only contend
    targets = target_modules([n for n, _ in model.named_modules()])
    model = get_peft_model(model, LoraConfig(
        r=settings.rank, lora_alpha=2 * settings.rank, lora_dropout=0.0, bias="none",
        target_modules=targets, task_type="CAUSAL_LM",
    ))
    encoded = [_encode(tokenizer, c) for c in chats]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=settings.learning_rate)
    gen = torch.Generator().manual_seed(settings.seed)
    per_epoch = -(-len(encoded) // settings.batch_size)
    total, step, loss_v, t0 = per_epoch * settings.epochs, 0, float("nan"), time.monotonic()
    model.train()
    for _ in range(settings.epochs):
        for ids, labels, mask in _batches(encoded, settings.batch_size, pad, torch, gen):
            loss = model(input_ids=ids.to(device), attention_mask=mask.to(device), labels=labels.to(device)).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            step, loss_v = step + 1, float(loss.detach())
            if progress is not None:
                progress(step, total, loss_v)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    summary = {"base": str(base), "data": str(data), "examples": len(chats), "target_modules": targets,
               "final_loss": round(loss_v, 4), "seconds": round(time.monotonic() - t0, 2), "device": device,
               **asdict(settings)}
    (out / "owc-train.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
