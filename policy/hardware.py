"""The machine: which dtype its matrix units compute fast, and a one-line description for logs and benchmarks.

`--dtype auto` picks bfloat16 only where the hardware computes it natively, because elsewhere it is emulated
and slow: on a CPU without avx512_bf16 / AMX a bf16 matmul runs about 3x slower than fp32 (torch 2.13, measured
21 vs 65 GFLOP/s per thread on an AVX-512 Xeon). So:

    CUDA, compute capability >= 8.0 (Ampere, Hopper)   bfloat16   tensor cores compute bf16
    CUDA, compute capability <  8.0 (V100, T4)         float16    fp16 tensor cores; bf16 is emulated
    CPU with avx512_bf16, amx_bf16 (Cooper Lake, SPR)  bfloat16   native bf16 dot products
    any other CPU                                      float32    bf16 would be converted in software

The choice applies to training (autocast over fp32 master weights) and to the generation engines, except that
an engine samples a model under 1B parameters in float32 (`engine_dtype`): the trainer writes fp32 weights, and
in bf16 the engine would act with them rounded to 8 bits of mantissa, where an update of 1e-5 to a weight of
0.02 (a tenth of its bf16 step) vanishes, so the policy that samples would still be the old one.
"""
from __future__ import annotations

import logging
import platform
from functools import lru_cache

log = logging.getLogger(__name__)
DTYPES = ("auto", "float32", "bfloat16", "float16")
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
# Flags worth naming next to a CPU timing: what decides the speed of its matmuls.
SPEED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
SMALL_MODEL_PARAMS = 1_000_000_000  # below this an engine samples in fp32 (`engine_dtype`)


@lru_cache(maxsize=1)
def cpu_info() -> tuple[str, frozenset[str]]:
    """(model name, flags) of this machine's CPU, from /proc/cpuinfo (Linux); ("", {}) where it is absent."""
    name, flags = platform.processor(), frozenset()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name":
                    name = value.strip()
                elif key == "flags":
                    flags = frozenset(value.split())
                if name and flags:
                    break
    except OSError:
        pass
    return name, flags


def device_type() -> str:
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def describe_machine(device: str | None = None) -> str:
    """One line naming what a timing ran on: the GPU, or the CPU model, its cores and its speed flags."""
    import os

    import torch
    if (device or device_type()) == "cuda":
        major, minor = torch.cuda.get_device_capability()
        return f"{torch.cuda.get_device_name()} (compute capability {major}.{minor})"
    name, flags = cpu_info()
    present = [f for f in SPEED_FLAGS if f in flags]
    native = "native bf16" if any(f in flags for f in BF16_CPU_FLAGS) else "no native bf16"
    return f"{name or 'unknown CPU'}, {os.cpu_count()} cores, {native} (flags: {' '.join(present) or 'none'})"


def auto_dtype(device: str | None = None, capability: tuple[int, int] | None = None,
               cpu_flags: frozenset[str] | None = None) -> tuple[str, str]:
    """(dtype, why) for `--dtype auto` on this machine (or on a GPU of `capability` / a CPU with `cpu_flags`)."""
    if (device or device_type()) == "cuda":
        if capability is None:
            import torch
            capability = torch.cuda.get_device_capability()
        major, minor = capability
        if major >= 8:
            return "bfloat16", f"CUDA compute capability {major}.{minor} >= 8.0 computes bf16 natively"
        return "float16", f"CUDA compute capability {major}.{minor} < 8.0: fp16 tensor cores, bf16 is emulated"
    flags = [f for f in BF16_CPU_FLAGS if f in (cpu_info()[1] if cpu_flags is None else cpu_flags)]
    if flags:
        return "bfloat16", f"CPU has {', '.join(flags)}: native bf16"
    return "float32", f"CPU lacks {' and '.join(BF16_CPU_FLAGS)}: bf16 would be emulated (about 3x slower than fp32)"


def resolve_dtype(dtype: str, device: str | None = None) -> str:
    """The concrete dtype for a requested one (`auto` decided by the hardware; the choice is logged once)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    if dtype != "auto":
        return dtype
    chosen, why = auto_dtype(device)
    _log_choice(chosen, why)
    return chosen


def checkpoint_params(checkpoint) -> int | None:
    """Parameters stored in a checkpoint folder's safetensors files (headers only; tied embeddings count once);
    None without any."""
    from math import prod
    from pathlib import Path

    from safetensors import safe_open
    files = sorted(Path(checkpoint).glob("*.safetensors"))
    total = 0
    for path in files:
        with safe_open(path, "pt") as f:
            total += sum(prod(f.get_slice(name).get_shape()) for name in f.keys())
    return total if files else None


def engine_dtype(dtype: str, checkpoint, device: str | None = None, small: int = SMALL_MODEL_PARAMS) -> str:
    """An engine's dtype for `checkpoint`: `auto` is float32 for a model under `small` parameters (the engine
    then samples from exactly the weights the trainer wrote; see the top of this module), else `resolve_dtype`."""
    if dtype == "auto":
        params = checkpoint_params(checkpoint)
        if params is not None and params < small:
            _log_choice("float32", f"engine: {params / 1e6:.0f}M parameters < {small / 1e9:g}B: it samples from "
                                   "the trainer's fp32 weights unrounded")
            return "float32"
    return resolve_dtype(dtype, device)


@lru_cache(maxsize=None)
def _log_choice(dtype: str, why: str) -> None:
    log.info("dtype auto -> %s (%s)", dtype, why)


def torch_dtype(dtype: str):
    import torch
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[resolve_dtype(dtype)]
