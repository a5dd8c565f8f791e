"""The tiny gpt-oss demo model: a `GptOssForCausalLM` (hidden 128, 2 layers, 4 experts, 2 per
token, the o200k/harmony vocabulary) whose weights are shaped, not trained, so that greedy
decoding follows the harmony frame:

    <|start|>assistant<|channel|>analysis<|message|>Thinking briefly<|end|>
    <|start|>assistant<|channel|>final<|message|>Hello from a tiny model.<|return|>

and, under vLLM's grammars (tool_choice required/named, json_schema), picks harmony's special
tokens and closes its JSON at once:

    ...<|channel|>final to=functions.NAME <|constrain|>json<|message|>{"city":""}<|call|>

How: every expert's down projection and layer 0's attention output are zero, so the residual
stream carries the current token's embedding and the model is a lookup table through
`lm_head`. Dimension 0 of every embedding is a constant: its `lm_head` column is a global
preference order over tokens (what wins when a grammar masks the lookup's choice: `"`, `}`,
`]`, `,` and the stop tokens first, whitespace last). Frame tokens get one dimension each,
whose `lm_head` column says which token follows them (a bigram table). Layer 1 has two
key-matched attention heads whose sinks absorb the attention when their key is absent:
at `<|channel|>` and `<|message|>` one looks for the first reasoning token (an analysis block
was already written: go to `final`, write the answer), at `}` the other looks for `functions`
(a tool call: end with `<|call|>` rather than `<|return|>`). Queries and keys use the
lowest-frequency rotary pair, so matching does not depend on distance.
"""

from __future__ import annotations

import json
from pathlib import Path

from cluster.engine.demo_gptoss_tokenizer import NUM_RANKS, VOCAB_SIZE, build_tokenizer, harmony_encoding

BUILD_VERSION = 1
HIDDEN = 128
HEAD_DIM = 64
HEADS, KV_HEADS = 4, 2
REASONING = "Thinking briefly"
ANSWER = "Hello from a tiny model."
_LOW_FREQ = HEAD_DIM // 2 - 1  # the rotary pair that barely turns over the context
_M_DIM, _F_DIM = HIDDEN - 2, HIDDEN - 1  # residual bits written by the two layer-1 heads
_SINK, _MATCH = 12.0, 1.7  # sink logit; query/key weight (score ~ 40 on a match)

# What wins when the lookup's choice is masked by a grammar, highest first, 10 logits apart
# (so that sampling at temperature 1 still takes it). Inside a JSON string any token is text,
# so nothing but the stop tokens may rank above `"`; whitespace-only tokens other than " "
# rank below every ordinary token, so JSON never pads itself with blanks.
_PREFERENCE = [
    "<|return|>", "<|call|>", '"', "}", "]", "{", "[", ",", ":", "0", "true", "false", "null",
    "<|end|>", "<|constrain|>", " to", " ", "json", " json", "=", "functions",
]
_STEP, _BLANK = 10.0, -10.0
_BIGRAM, _SECOND, _SWITCH, _CALL = 300.0, 260.0, 60.0, 20.0


def _ids(text: str) -> list[int]:
    return harmony_encoding().encode(text, allowed_special="all")


def _one(text: str) -> int:
    ids = _ids(text)
    if len(ids) != 1:
        raise RuntimeError(f"{text!r} is not a single o200k token: {ids}")
    return ids[0]


def _chain(words: list[int], end: int) -> list[tuple[int, int, float]]:
    seq = [*words, end]
    return [(a, b, _BIGRAM) for a, b in zip(seq, seq[1:])]


def frame_tables() -> dict:
    """Token ids of the frame and the bigram table (prev, next, score)."""
    t = {s: _one(s) for s in ("<|start|>", "assistant", "<|channel|>", "analysis", "final",
                              "<|message|>", "<|end|>", "<|return|>", "<|call|>", "<|constrain|>",
                              "json", " json", "}", "functions")}
    reasoning, answer = _ids(REASONING), _ids(ANSWER)
    bigram = [
        (t["<|start|>"], t["assistant"], _BIGRAM),
        (t["assistant"], t["<|channel|>"], _BIGRAM),
        (t["<|channel|>"], t["analysis"], _BIGRAM),
        (t["<|channel|>"], t["final"], _SECOND),
        (t["analysis"], t["<|message|>"], _BIGRAM),
        (t["final"], t["<|message|>"], _BIGRAM),
        (t["<|message|>"], reasoning[0], _BIGRAM),
        (t["<|message|>"], answer[0], _SECOND),
        (t["<|end|>"], t["<|start|>"], _BIGRAM),
        (t["<|constrain|>"], t["json"], _BIGRAM),
        (t["json"], t["<|message|>"], _BIGRAM),
        (t[" json"], t["<|message|>"], _BIGRAM),
        *_chain(reasoning, t["<|end|>"]),
        *_chain(answer, t["<|return|>"]),
    ]
    # After the first reasoning token is in the context: `final` over `analysis`, the answer
    # over the reasoning.
    switch = [(t["final"], _SWITCH), (t["analysis"], -_SWITCH), (answer[0], _SWITCH), (reasoning[0], -_SWITCH)]
    return {"tokens": t, "reasoning": reasoning, "answer": answer, "bigram": bigram, "switch": switch}


def _blank_tokens() -> list[int]:
    """Ordinary tokens made of whitespace only."""
    enc = harmony_encoding()
    return [i for i in range(NUM_RANKS) if not bytes(enc._inner.decode_bytes([i])).strip()]


def _dims(tables: dict) -> dict[int, int]:
    """One residual dimension per token that the lookup or the heads read (0 is the constant)."""
    ids = [*tables["tokens"].values(), *tables["reasoning"], *tables["answer"]]
    dims: dict[int, int] = {}
    for i in ids:
        dims.setdefault(i, len(dims) + 1)
    if len(dims) + 1 > _M_DIM:
        raise RuntimeError("too many frame tokens for the hidden size")
    return dims


def gptoss_config(tokenizer):
    from transformers import GptOssConfig

    return GptOssConfig(
        vocab_size=VOCAB_SIZE, hidden_size=HIDDEN, intermediate_size=HIDDEN, num_hidden_layers=2,
        num_local_experts=4, num_experts_per_tok=2, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
        head_dim=HEAD_DIM, sliding_window=128, layer_types=["sliding_attention", "full_attention"],
        max_position_embeddings=131072, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, dtype="bfloat16",
    )


def _head_match(p: dict, head: int, query_dims: list[int], key_dim: int, out_dim: int) -> None:
    """Layer-1 head ``head``: from positions whose token has a ``query_dims`` dimension, attend
    to tokens with ``key_dim`` (else to the sink) and write 1 into residual ``out_dim``."""
    pre = "model.layers.1.self_attn."
    kv = head // (HEADS // KV_HEADS)
    for d in query_dims:
        p[pre + "q_proj.weight"][head * HEAD_DIM + _LOW_FREQ, d] = _MATCH
    p[pre + "k_proj.weight"][kv * HEAD_DIM + _LOW_FREQ, key_dim] = _MATCH
    # the input norm scales a token with one frame dimension by sqrt(HIDDEN / 2) = 8
    p[pre + "v_proj.weight"][kv * HEAD_DIM, key_dim] = 1 / 8
    p[pre + "o_proj.weight"][out_dim, head * HEAD_DIM] = 1.0
    p[pre + "sinks"][head] = _SINK


def shaped_state(model, tables: dict) -> dict:
    """The shaped parameters (float32), keyed like ``model.state_dict()``."""
    import torch

    p = {k: torch.zeros_like(v, dtype=torch.float32) for k, v in model.state_dict().items()}
    sd = model.state_dict()
    for layer in range(2):  # experts and routers keep their random init: their output is zeroed
        pre = f"model.layers.{layer}."
        for name in ("mlp.experts.gate_up_proj", "mlp.experts.gate_up_proj_bias", "mlp.router.weight"):
            p[pre + name] = sd[pre + name].float().clone()
        p[pre + "input_layernorm.weight"].fill_(1.0)
        p[pre + "post_attention_layernorm.weight"].fill_(1.0)
    p["model.norm.weight"].fill_(1.0)
    dims, tok = _dims(tables), tables["tokens"]
    emb, lm = p["model.embed_tokens.weight"], p["lm_head.weight"]
    emb[:, 0] = 1.0
    for token, d in dims.items():
        emb[token, d] = 1.0
    # a frame token's residual is (1, ..., 1, ...), normalised to 8 per unit: scores / 8
    for token in _blank_tokens():
        lm[token, 0] = _BLANK / 8
    for rank, text in enumerate(_PREFERENCE):
        lm[_one(text), 0] = _STEP * (len(_PREFERENCE) - rank) / 8
    for prev, nxt, score in tables["bigram"]:
        lm[nxt, dims[prev]] = score / 8
    for token, score in tables["switch"]:
        lm[token, _M_DIM] = score / 8
    lm[tok["<|call|>"], _F_DIM] = _CALL / 8
    _head_match(p, 0, [dims[tok["<|channel|>"]], dims[tok["<|message|>"]]], dims[tables["reasoning"][0]], _M_DIM)
    _head_match(p, 2, [dims[tok["}"]]], dims[tok["functions"]], _F_DIM)
    return p


def write_tiny_gptoss(out: Path, seed: int) -> None:
    """Write the tokenizer, config, generation config and shaped weights into ``out``."""
    import torch
    from transformers import GptOssForCausalLM

    tokenizer = build_tokenizer(out)
    tokenizer.save_pretrained(out)
    torch.manual_seed(seed)
    config = gptoss_config(tokenizer)
    with torch.device("cpu"):
        model = GptOssForCausalLM(config)
    model.load_state_dict(shaped_state(model, frame_tables()))
    model = model.to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    stops = [tokenizer.convert_tokens_to_ids(t) for t in ("<|return|>", "<|endoftext|>", "<|call|>")]
    gen = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": stops, "pad_token_id": tokenizer.pad_token_id}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=1) + "\n")
    meta = {"reasoning": REASONING, "answer": ANSWER, "frame": "harmony"}
    (out / "owc-frame.json").write_text(json.dumps(meta, indent=1) + "\n")
