"""Build the embedded demo models. Nothing is downloaded; the same seed gives the same files.

- `tiny-llama`: a tiny Llama with random weights and a locally trained byte-level BPE tokenizer.
- `tiny-gpt-oss`: a tiny `GptOssForCausalLM` with the o200k/harmony tokenizer and weights shaped
  so that greedy decoding follows the harmony frame (see `cluster.engine.demo_gptoss`).

Used by `owc demo-model [--name NAME] DIR` and by `source: demo:NAME` in a config.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from cluster.config.base import DEMO_MODELS, DEMO_SCHEME
_MARKER = "owc-demo.json"
_BUILD_VERSION = 1

_CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "<|{{ m['role'] }}|>\n{{ m['content'] if m['content'] is string else '' }}</s>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

# Training text for the tokenizer: several languages and some code, so the vocabulary
# covers what the demos send (French as well as English).
_CORPUS = [
    "The quick brown fox jumps over the lazy dog. Open-weight models serve chat and code.",
    "Bonjour, comment allez-vous ? Je voudrais traduire ce texte en anglais, s'il vous plaît.",
    "Hola, ¿cómo estás? Resume este documento en tres frases.",
    "Guten Tag! Bitte übersetze diesen Satz ins Französische.",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    "for (int i = 0; i < n; ++i) { sum += a[i] * b[i]; }",
    "SELECT id, name FROM users WHERE created_at > now() - interval '1 day';",
    "Summarise the following report. Translate it into French. Fix the bug in this code.",
    "0123456789 + - * / = < > ( ) [ ] { } , . ; : ! ? ' \" # @ $ % ^ & | ~ `",
]


def is_demo_source(source: str) -> bool:
    return source.startswith(DEMO_SCHEME)


def demo_name(source: str) -> str:
    name = source[len(DEMO_SCHEME):]
    if name not in DEMO_MODELS:
        raise ValueError(f"unknown demo model {name!r}; known: {', '.join(DEMO_MODELS)}")
    return name


def _train_tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<s>", "</s>", "<unk>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 20, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
    )
    fast.chat_template = _CHAT_TEMPLATE
    return fast


def build_demo_model(out_dir: str | Path, name: str = "tiny-llama", *, seed: int = 0) -> Path:
    """Build (or reuse) the demo model in ``out_dir``; returns the directory."""
    out = Path(out_dir).expanduser()
    marker = out / _MARKER
    if marker.exists():
        try:
            meta = json.loads(marker.read_text())
            if meta.get("name") == name and meta.get("version") == _build_version(name):
                return out
        except ValueError:
            pass
    if name not in DEMO_MODELS:
        raise ValueError(f"unknown demo model {name!r}")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        if name == "tiny-gpt-oss":
            from cluster.engine.demo_gptoss import write_tiny_gptoss

            write_tiny_gptoss(tmp, seed)
        else:
            _write_tiny_llama(tmp, seed)
        meta = {"name": name, "version": _build_version(name), "seed": seed}
        (tmp / _MARKER).write_text(json.dumps(meta))
        if out.exists():
            shutil.rmtree(out)
        tmp.chmod(0o755)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _build_version(name: str) -> int:
    if name == "tiny-gpt-oss":
        from cluster.engine.demo_gptoss import BUILD_VERSION

        return BUILD_VERSION
    return _BUILD_VERSION


def _write_tiny_llama(tmp: Path, seed: int) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _train_tokenizer(vocab_size=2048)
    tokenizer.save_pretrained(tmp)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(tmp, safe_serialization=True)


def resolve_source(source: str, cache_dir: str | Path) -> str:
    """The path or hub id the engine loads; builds demo models on first use."""
    if is_demo_source(source):
        name = demo_name(source)
        return str(build_demo_model(Path(cache_dir).expanduser() / name, name))
    return source
