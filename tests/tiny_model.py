"""A tiny Llama-architecture refining model, trained at test time with the real Llama-2 vocabulary.

It learns the doc-level task on a toy rule (documents with spam lines -> drop_doc()), which is
enough for its greedy outputs to be real programs, so the one-pass scorer can be compared with
generation, and the model loads through the same code path as a released checkpoint.
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


def build_tiny_model(folder: Path, tokenizer_dir: Path, steps: int = 120, seed: int = 0) -> Path:
    import torch

    from proxkit.prompts import doc_prompts
    from proxkit.testing import random_llama, save
    from proxkit.tokenizer import load_tokenizer

    model = random_llama(folder, tokenizer_dir, seed)
    tokenizer = load_tokenizer(str(tokenizer_dir))
    documents = make_documents(64, seed)
    prompts = doc_prompts([text for text, _ in documents], tokenizer)
    examples = []
    for prompt, (_, keep) in zip(prompts, documents):
        answer = tokenizer.backend.encode(
            prompt.text + (" keep_doc()" if keep else " drop_doc()"), add_special_tokens=False
        ).ids
        answer = [*answer[len(prompt.token_ids) :], 2]
        examples.append((list(prompt.token_ids), answer))
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
