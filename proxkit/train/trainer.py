"""`prox train`: fine-tune a causal LM on `prox sft-data` examples with the transformers Trainer.

Full fine-tuning, or LoRA (`lora_rank` > 0) merged into the weights at the end, so the result
is always a standard checkpoint folder that `--doc-programmer PATH` loads. The loss covers the
answer tokens only, and the LM head runs only there: a program is a few dozen tokens after a
prompt of up to two thousand, so full-vocabulary logits at every position would be nearly all
of the head's work (and memory) for nothing. Sequences are the stored token ids, so the base model's tokenizer must be
the one the examples were made with (checked by fingerprint). Validation loss is measured
before and after training and written to `training.json` with the run's settings.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proxkit.config import ConfigError, to_plain
from proxkit.io.writers import fresh_folder
from proxkit.options import TRAINING, option
from proxkit.tokenizer import TOKENIZER_FILES, TokenizerInfo, load_tokenizer, resolve_folder

IGNORE = -100  # label of a position the loss skips


@dataclass(frozen=True)
class TrainConfig:
    data: str = option("", "A prox sft-data folder.", argument=True)
    base_model: str = option("", "Hub id or checkpoint folder to fine-tune.")
    output: str = option("", "Checkpoint folder.", short="-o")
    lora_rank: int = option(0, "LoRA rank; 0: full fine-tuning.")
    lora_alpha: int | None = option(None, "LoRA alpha; unset: 2 x rank.", TRAINING)
    learning_rate: float | None = option(
        None, "Peak learning rate; unset: 1e-5 full fine-tuning, 2e-4 LoRA.", TRAINING
    )
    epochs: float = option(3.0, "Passes over the training examples.", TRAINING)
    max_steps: int = option(-1, "Stop after this many optimizer steps (-1: no limit).", TRAINING)
    batch_size: int = option(16, "Examples per device and step.", TRAINING)
    gradient_accumulation: int = option(1, "Batches per optimizer step.", TRAINING)
    max_length: int = option(
        2048, "Longest example in tokens; longer ones are left out (and counted).", TRAINING
    )
    warmup_fraction: float = option(0.03, "Share of the steps warming up.", TRAINING)
    weight_decay: float = option(0.0, "AdamW weight decay.", TRAINING)
    scheduler: str = option("cosine", "Learning-rate schedule (transformers' names).", TRAINING)
    dtype: str = option(
        "auto",
        "Training precision: auto (bfloat16 where the GPU supports it, else float32), float32 "
        "or bfloat16.",
        TRAINING,
    )
    seed: int = option(0, "Seed of initialisation and data order.", TRAINING)
    logging_steps: int = option(10, "Log the loss every this many steps.", TRAINING)
    overwrite: bool = option(False, "Replace the output.")

    def __post_init__(self) -> None:
        if not self.data or not self.base_model or not self.output:
            raise ConfigError("train needs sft data, a base model and an output folder")
        if self.lora_rank < 0 or self.batch_size < 1 or self.gradient_accumulation < 1:
            raise ConfigError("lora_rank >= 0, batch_size >= 1, gradient_accumulation >= 1")


class TokenizerMismatch(ValueError):
    """The base model's tokenizer is not the one the examples were tokenized with."""


def read_examples(path: Path, max_length: int) -> tuple[list[dict[str, list[int]]], int]:
    """Input ids and answer-only labels of every example that fits; and how many did not."""
    examples, too_long = [], 0
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            example = json.loads(line)
            prompt, answer = example["prompt_ids"], example["completion_ids"]
            if len(prompt) + len(answer) > max_length:
                too_long += 1
                continue
            examples.append(
                {"input_ids": prompt + answer, "labels": [IGNORE] * len(prompt) + answer}
            )
    return examples, too_long


def collate(pad_id: int):
    """Right-pad a batch; padding is masked from attention and loss."""
    import torch

    def batch(examples: list[dict[str, list[int]]]) -> dict[str, Any]:
        longest = max(len(e["input_ids"]) for e in examples)
        ids = torch.full((len(examples), longest), pad_id)
        labels = torch.full((len(examples), longest), IGNORE)
        mask = torch.zeros((len(examples), longest), dtype=torch.long)
        for row, example in enumerate(examples):
            n = len(example["input_ids"])
            ids[row, :n] = torch.tensor(example["input_ids"])
            labels[row, :n] = torch.tensor(example["labels"])
            mask[row, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    return batch


def answer_loss(model: Any, inputs: dict[str, Any]) -> Any:
    """Mean next-token cross-entropy over the answer tokens, logits computed only there."""
    import torch

    hidden = model.get_decoder()(
        input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]
    ).last_hidden_state[:, :-1]
    targets = inputs["labels"][:, 1:]
    scored = targets != IGNORE
    logits = model.get_output_embeddings()(hidden[scored]).float()
    return torch.nn.functional.cross_entropy(logits, targets[scored])


def _check_tokenizer(tokenizer: TokenizerInfo, manifest: dict[str, Any], base_model: str) -> None:
    expected = manifest.get("tokenizer_fingerprint")
    if expected and tokenizer.fingerprint() != expected:
        raise TokenizerMismatch(
            f"{base_model}'s tokenizer differs from the one the examples were made with "
            f"({manifest.get('tokenizer')}); rebuild them with prox sft-data --tokenizer {base_model}"
        )


def _copy_tokenizer(base_model: str, output: Path) -> None:
    folder = resolve_folder(base_model)
    for name in (*TOKENIZER_FILES, "tokenizer.model"):
        if (folder / name).is_file() and not (output / name).exists():
            shutil.copy(folder / name, output / name)


def train(config: TrainConfig, progress: bool = True) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    data = Path(config.data)
    manifest = json.loads((data / "manifest.json").read_text(encoding="utf-8"))
    tokenizer = load_tokenizer(config.base_model)
    _check_tokenizer(tokenizer, manifest, config.base_model)
    train_set, too_long = read_examples(data / "train.jsonl", config.max_length)
    validation_set, too_long_validation = read_examples(
        data / "validation.jsonl", config.max_length
    )
    if not train_set:
        raise ConfigError(f"{data / 'train.jsonl'} holds no example that fits max_length")
    out = fresh_folder(config.output, config.overwrite)

    on_gpu = torch.cuda.is_available()
    dtype = config.dtype
    if dtype == "auto":
        dtype = "bfloat16" if on_gpu and torch.cuda.is_bf16_supported() else "float32"
    model = AutoModelForCausalLM.from_pretrained(config.base_model, dtype=torch.float32)
    if config.lora_rank:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model,
            LoraConfig(
                r=config.lora_rank,
                lora_alpha=config.lora_alpha or 2 * config.lora_rank,
                target_modules="all-linear",
                task_type="CAUSAL_LM",
            ),
        )
    learning_rate = config.learning_rate or (2e-4 if config.lora_rank else 1e-5)
    steps_per_epoch = math.ceil(len(train_set) / (config.batch_size * config.gradient_accumulation))
    total_steps = (
        config.max_steps if config.max_steps > 0 else math.ceil(steps_per_epoch * config.epochs)
    )
    eos = tokenizer.backend.token_to_id(tokenizer.eos_token) if tokenizer.eos_token else None
    arguments = TrainingArguments(
        output_dir=str(out / "trainer"),
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation,
        learning_rate=learning_rate,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        warmup_steps=int(total_steps * config.warmup_fraction),
        weight_decay=config.weight_decay,
        lr_scheduler_type=config.scheduler,
        bf16=dtype == "bfloat16",
        logging_steps=config.logging_steps,
        eval_strategy="no",
        save_strategy="no",
        report_to=[],
        remove_unused_columns=False,
        seed=config.seed,
        use_cpu=not on_gpu,
        disable_tqdm=not progress,
    )

    class AnswerTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, **kwargs):  # type: ignore[override]
            loss = answer_loss(model, inputs)
            return (loss, {"loss": loss}) if return_outputs else loss

    trainer = AnswerTrainer(
        model=model,
        args=arguments,
        data_collator=collate(eos if eos is not None else 0),
        train_dataset=train_set,
        eval_dataset=validation_set or None,
    )
    before = trainer.evaluate()["eval_loss"] if validation_set else None
    result = trainer.train()
    after = trainer.evaluate()["eval_loss"] if validation_set else None
    if config.lora_rank:
        model = model.merge_and_unload()
    model.save_pretrained(out)
    _copy_tokenizer(config.base_model, out)
    shutil.rmtree(out / "trainer", ignore_errors=True)
    report = {
        "base_model": config.base_model,
        "method": f"lora (rank {config.lora_rank})" if config.lora_rank else "full fine-tuning",
        "device": str(arguments.device),
        "precision": dtype,
        "train_examples": len(train_set),
        "validation_examples": len(validation_set),
        "left_out_too_long": too_long + too_long_validation,
        "steps": result.global_step,
        "learning_rate": learning_rate,
        "train_loss": result.training_loss,
        "train_seconds": result.metrics.get("train_runtime"),
        "validation_loss_before": before,
        "validation_loss_after": after,
        "config": to_plain(config),
    }
    (out / "training.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report
