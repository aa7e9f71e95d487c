"""Fine-tuning: ``loop`` (the run on the transformers Trainer), ``config``, ``data`` (the JSONL format) and
``synth`` (synthetic video QA)."""
