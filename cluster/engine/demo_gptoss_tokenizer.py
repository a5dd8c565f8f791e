"""The o200k/harmony tokenizer of the tiny gpt-oss demo model, built offline.

The harmony encoding that ships in the `oss-harmony` wheel (`openai_harmony`, a vLLM
dependency) carries o200k: ids 0..199997 are decoded to bytes and written as a tiktoken
ranks file (its sha256 is the published o200k_base hash), converted with transformers'
`TikTokenConverter`, and the harmony special tokens are added at their ids (199998-201087).
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

O200K_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
NUM_RANKS = 199998  # ordinary o200k tokens; the harmony specials follow
VOCAB_SIZE = 201088

# o200k_base's pre-tokenizer pattern (as in tiktoken's openai_public).
O200K_PATTERN = "|".join([
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""\p{N}{1,3}""",
    r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
    r"""\s*[\r\n]+""",
    r"""\s+(?!\S)""",
    r"""\s+""",
])

# A harmony chat template for `apply_chat_template` users (vLLM itself renders gpt-oss chat
# and responses prompts with openai_harmony, not with this template). It renders what
# openai_harmony renders for system/developer/user/assistant/tool messages and function tools.
CHAT_TEMPLATE = r"""{%- macro ts_type(p) -%}
{%- if p.enum is defined -%}{%- for v in p.enum -%}"{{ v }}"{{ " | " if not loop.last }}{%- endfor -%}
{%- elif p.type == "string" -%}string
{%- elif p.type in ["number", "integer"] -%}number
{%- elif p.type == "boolean" -%}boolean
{%- elif p.type == "array" -%}{{ ts_type(p.items) if p.items is defined else "any" }}[]
{%- else -%}any{%- endif -%}
{%- endmacro -%}
{%- macro text(c) -%}
{%- if c is string -%}{{ c }}{%- elif c -%}{%- for part in c -%}{{ part.text if part.text is defined }}{%- endfor -%}{%- endif -%}
{%- endmacro -%}
{%- set instructions = messages[0].content if messages and messages[0].role in ["system", "developer"] else none -%}
<|start|>system<|message|>{{ model_identity | default("You are ChatGPT, a large language model trained by OpenAI.") }}
Knowledge cutoff: 2024-06
Current date: {{ strftime_now("%Y-%m-%d") }}

Reasoning: {{ reasoning_effort | default("medium") }}

# Valid channels: analysis, commentary, final. Channel must be included for every message.{% if tools %}{{ "\n" }}Calls to these tools must go to the commentary channel: 'functions'.{% endif %}<|end|>
{%- if instructions or tools -%}
<|start|>developer<|message|>
{%- if instructions %}# Instructions

{{ text(instructions) }}{% if tools %}{{ "\n\n" }}{% endif %}{% endif -%}
{%- if tools %}# Tools

## functions

namespace functions {

{% for t in tools %}{% set f = t.function if t.function is defined else t %}
{%- if f.description %}// {{ f.description }}
{% endif %}type {{ f.name }} = {% if f.parameters and f.parameters.properties %}(_: {
{% for name, p in f.parameters.properties.items() %}{% if p.description %}// {{ p.description }}
{% endif %}{{ name }}{{ "?" if name not in (f.parameters.required or []) }}: {{ ts_type(p) }},
{% endfor %}}) => any;{% else %}() => any;{% endif %}{{ "\n\n" }}{% endfor %}} // namespace functions{% endif %}<|end|>
{%- endif -%}
{%- set ns = namespace(tool="") -%}
{%- for m in messages -%}
{%- if loop.first and instructions -%}
{%- elif m.role == "user" -%}<|start|>user<|message|>{{ text(m.content) }}<|end|>
{%- elif m.role == "assistant" and m.tool_calls -%}
{%- for tc in m.tool_calls %}{% set fn = tc.function if tc.function is defined else tc %}{% set ns.tool = fn.name -%}
<|start|>assistant<|channel|>commentary to=functions.{{ fn.name }} <|constrain|>json<|message|>
{{- fn.arguments if fn.arguments is string else fn.arguments | tojson }}<|call|>
{%- endfor -%}
{%- elif m.role == "assistant" -%}<|start|>assistant<|channel|>final<|message|>{{ text(m.content) }}<|end|>
{%- elif m.role == "tool" -%}<|start|>functions.{{ m.name or ns.tool }}<|channel|>commentary to=assistant<|message|>{{ text(m.content) }}<|end|>
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}<|start|>assistant{%- endif -%}"""


def harmony_encoding():
    from openai_harmony import HarmonyEncodingName, load_harmony_encoding

    return load_harmony_encoding(HarmonyEncodingName.HARMONY_GPT_OSS)


def write_ranks(path: Path) -> None:
    """The o200k tiktoken ranks file, decoded from the harmony encoding; checked by hash."""
    enc = harmony_encoding()
    lines = [base64.b64encode(bytes(enc._inner.decode_bytes([i]))) + b" %d" % i for i in range(NUM_RANKS)]
    data = b"\n".join(lines) + b"\n"
    digest = hashlib.sha256(data).hexdigest()
    if digest != O200K_SHA256:
        raise RuntimeError(f"o200k ranks from openai_harmony have sha256 {digest}, expected {O200K_SHA256}")
    path.write_bytes(data)


def special_tokens() -> list[str]:
    """The harmony special tokens, in id order from 199998 to 201087."""
    enc = harmony_encoding()
    return [bytes(enc._inner.decode_bytes([i])).decode() for i in range(NUM_RANKS, VOCAB_SIZE)]


def build_tokenizer(work_dir: Path):
    """A `PreTrainedTokenizerFast` covering the o200k/harmony id space (201088 ids)."""
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks = work_dir / "o200k.tiktoken"
    write_ranks(ranks)
    try:
        backend = TikTokenConverter(
            vocab_file=str(ranks), pattern=O200K_PATTERN, extra_special_tokens=special_tokens(),
        ).converted()
    finally:
        ranks.unlink(missing_ok=True)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|startoftext|>",
        eos_token="<|return|>",
        pad_token="<|endoftext|>",
        model_max_length=131072,
    )
    tok.chat_template = CHAT_TEMPLATE
    if len(tok) != VOCAB_SIZE or tok.convert_tokens_to_ids("<|channel|>") != 200005:
        raise RuntimeError("harmony special tokens did not land at their ids")
    return tok
