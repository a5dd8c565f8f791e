"""A seeded shared-document workload for prefix-cache routing: ``n_docs`` documents, each
asked ``per_doc`` different questions; every request carries its whole document in the
system message, so requests about one document share a long prompt prefix. Requests come
in rounds, each round asking about every document once in a seeded random order: two
requests about the same document are rarely adjacent, so at moderate concurrency the later
one finds the earlier one's prefix cached — on the replica that served it. (The order must
not be a fixed cycle: round-robin over a cycle whose length is a multiple of the replica
count would be perfect affinity by accident.)"""

from __future__ import annotations

import random
from dataclasses import dataclass

WORDS = (
    "cluster replica engine gateway tensor pipeline cache prefix token stream latency budget "
    "tenant adapter routing policy scaling queue batch model weights memory throughput request "
    "serveur modèle requête latence mémoire débit file attente réplique passerelle politique "
    "manual section chapter figure table appendix summary report quarterly revenue customer "
    "translate summarise generate optimise explain compare verify measure deploy monitor"
).split()


@dataclass(frozen=True)
class PrefixRequest:
    doc: int
    messages: list[dict]


def documents(n_docs: int, chars: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    docs = []
    for d in range(n_docs):
        words = [f"Document {d}."]
        size = len(words[0])
        while size < chars:
            w = rng.choice(WORDS)
            words.append(w)
            size += len(w) + 1
        docs.append(" ".join(words)[:chars])
    return docs


def workload(n_docs: int, per_doc: int, doc_chars: int, seed: int) -> list[PrefixRequest]:
    docs = documents(n_docs, doc_chars, seed)
    rng = random.Random(seed + 1)
    out = []
    for q in range(per_doc):
        order = list(range(n_docs))
        rng.shuffle(order)
        for d in order:
            question = f"Question {q}: what does the document say about {rng.choice(WORDS)} and {rng.choice(WORDS)}?"
            out.append(PrefixRequest(doc=d, messages=[
                {"role": "system", "content": f"Answer questions about the document below.\n\n{docs[d]}"},
                {"role": "user", "content": question},
            ]))
    return out
