"""Fine-tune a refining model on `prox sft-data` examples (`prox train`, extra `[train]`)."""
