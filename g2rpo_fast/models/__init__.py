"""The policy: model loading (`loading.py`: the built-in model or any Hugging Face causal LM),
the built-in tiny policy (`builtin.py` loads the weights shipped in `builtin/`; `tokenizer.py`
char tokenizer, `tiny.py` tiny Qwen3, `warmstart.py` how the shipped weights were made) and
runtime patches (`liger.py`)."""
