"""Adapters applied to a loaded model at generation time: the LoRA family (``lora``, file
formats in ``lora_file``, weight deltas in ``deltas``, module names in ``kohya_names``),
textual-inversion embeddings and A1111's short hashes of these files (``hashes``)."""
