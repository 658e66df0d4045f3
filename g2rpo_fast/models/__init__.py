"""The policy: model loading (`loading.py`: the built-in model or any Hugging Face causal LM),
the built-in tiny policy (`tokenizer.py` char tokenizer, `tiny.py` tiny Qwen3, `warmstart.py`
its cached warm start) and runtime patches (`liger.py`)."""
