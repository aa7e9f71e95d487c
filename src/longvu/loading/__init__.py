"""A checkpoint folder becomes a loaded model: ``checkpoint`` (config and weight index, no torch),
``load`` (the model), ``towers`` (find and strict-load the vision towers), ``adapter`` (LoRA and
connector adapters), ``quantize``, ``presets`` (the released models' shapes) and ``plan`` (memory)."""
