"""The built-in model, shipped with the package: a tiny Qwen3 warm-started on the built-in task.

The weights (0.6 M parameters, ~2.4 MB of safetensors) lie in ``g2rpo_fast/models/builtin/``
beside the character tokenizer and ``builtin.json``: the warm-start recipe and its fingerprint,
the weights' digest, how they were built, and the greedy accuracy per digit count that they
give on a fixed held-out set. So every machine trains from the same start, and the numbers in
the README reproduce; nothing is trained on first use.

``python -m g2rpo_fast.models.warmstart --rebuild`` retrains them from the recipe (one thread,
deterministic algorithms) and says whether the result matches the shipped digest; see
``warmstart.py``.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

BUILTIN_DIR = Path(__file__).resolve().parent / "builtin"
RECORD_FILE = "builtin.json"
WEIGHTS_FILE = "model.safetensors"


def weights_digest(path) -> str:
    """sha256 over the tensors of a safetensors file: names, dtypes, shapes and bytes in name
    order, so that it depends on the weights only, never on how the file was serialised."""
    import torch
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def builtin_record(directory=BUILTIN_DIR) -> dict:
    """``builtin.json``: recipe, fingerprint, digest, build facts and the recorded accuracies."""
    return json.loads((Path(directory) / RECORD_FILE).read_text())


def load_builtin_model(directory=BUILTIN_DIR):
    """``(model, tokenizer)`` of the shipped built-in policy, fp32, in eval mode."""
    from transformers import AutoTokenizer, Qwen3ForCausalLM

    directory = Path(directory)
    if not (directory / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"the built-in model's weights are missing: {directory / WEIGHTS_FILE} "
                                f"(a broken install? `python -m g2rpo_fast.models.warmstart --rebuild --write` "
                                f"rebuilds them)")
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = Qwen3ForCausalLM.from_pretrained(directory, **dtype_kwarg("float32"))
    return model.eval(), tokenizer


def dtype_kwarg(dtype) -> dict:
    """`from_pretrained`'s dtype argument under the name the installed transformers uses
    (`dtype` since 4.56; `torch_dtype` before, now deprecated)."""
    import transformers
    from packaging.version import Version

    return {"dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype": dtype}
