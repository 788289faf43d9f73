"""A tiny Llama-architecture refining model, trained at test time with the real Llama-2 vocabulary.

It learns the doc-level task on a toy rule (documents with spam lines -> drop_doc()), which is
enough for its greedy outputs to be real programs, so the one-pass scorer can be compared with
generation, and the model loads through the same code path as a released checkpoint. With
`chunk_level`, it also learns chunk programs (spam lines -> remove_lines, else keep_doc()), so
its outputs differ in length like a real refiner's.
"""

from __future__ import annotations

import random
from pathlib import Path

GOOD = [
    "The committee met on Tuesday to review the budget for the coming year.",
    "Rainfall in the valley was higher than usual, which helped the farmers.",
    "The library extended its opening hours during the exam period.",
    "Researchers published a study on the migration of birds across the sea.",
    "The bridge will be closed for repairs until the end of the month.",
    "A new bus line connects the university with the central station.",
]
SPAM = [
    "BUY CHEAP PILLS NOW!!! CLICK HERE",
    "WIN A FREE PRIZE $$$ CLICK HERE NOW",
    "CHEAP LOANS CHEAP LOANS CLICK",
]


def make_documents(count: int, seed: int) -> list[tuple[str, bool]]:
    """(text, keep) pairs: prose is kept, anything with spam lines is dropped."""
    rng = random.Random(seed)
    documents = []
    for i in range(count):
        lines = rng.sample(GOOD, rng.randint(2, 4))
        keep = i % 2 == 0
        if not keep:
            for _ in range(rng.randint(1, 2)):
                lines.insert(rng.randint(0, len(lines)), rng.choice(SPAM))
        documents.append(("\n".join(lines), keep))
    return documents


def chunk_program(text: str) -> str:
    """The toy chunk-level rule: remove each spam line, else keep the chunk."""
    spam = [i for i, line in enumerate(text.split("\n")) if line in SPAM]
    return "\n".join(f"remove_lines(line_start={i}, line_end={i})" for i in spam) or "keep_doc()"


def build_tiny_model(
    folder: Path,
    tokenizer_dir: Path,
    steps: int = 120,
    seed: int = 0,
    chunk_level: bool = False,
    shape: dict | None = None,
) -> Path:
    import torch

    from proxkit.chunking import Chunker
    from proxkit.prompts import answer_ids, chunk_prompts, doc_prompts
    from proxkit.testing import random_llama, save
    from proxkit.tokenizer import load_tokenizer

    model = random_llama(folder, tokenizer_dir, seed, **(shape or {}))
    tokenizer = load_tokenizer(str(tokenizer_dir))
    documents = make_documents(64, seed)
    texts = [text for text, _ in documents]
    pairs = [
        (prompt, "keep_doc()" if keep else "drop_doc()")
        for prompt, (_, keep) in zip(doc_prompts(texts, tokenizer), documents)
    ]
    if chunk_level:
        chunks = [c for doc in Chunker(tokenizer.backend)(texts) for c in doc]
        pairs += [
            (prompt, chunk_program(text))
            for prompt, text in zip(chunk_prompts(chunks, tokenizer), texts)
        ]
    examples = [
        (list(prompt.token_ids), list(answer_ids(tokenizer, prompt, answer)))
        for prompt, answer in pairs
    ]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    rng = random.Random(seed)
    for _ in range(steps):
        batch = rng.sample(examples, 8)
        longest = max(len(p) + len(a) for p, a in batch)
        ids = torch.full((len(batch), longest), 2)
        labels = torch.full((len(batch), longest), -100)
        for row, (prompt, answer) in enumerate(batch):
            sequence = prompt + answer
            ids[row, : len(sequence)] = torch.tensor(sequence)
            labels[row, len(prompt) : len(sequence)] = torch.tensor(answer)
        # Logits only where there are labels: the 32k-vocabulary head dominates the cost.
        hidden = model.model(input_ids=ids).last_hidden_state[:, :-1]
        targets = labels[:, 1:]
        picked = targets != -100
        logits = model.lm_head(hidden[picked])
        loss = torch.nn.functional.cross_entropy(logits, targets[picked])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    save(model, folder, tokenizer_dir)
    return folder
