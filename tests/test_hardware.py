"""`--dtype auto`: bf16 only where the hardware computes it natively; the choice is logged with its reason."""
from __future__ import annotations

import logging
from dataclasses import replace

import pytest

from policy.hardware import (BF16_CPU_FLAGS, auto_dtype, checkpoint_params, cpu_info, describe_machine, engine_dtype,
                             resolve_dtype)
from stages.config import Config


@pytest.mark.parametrize("flags, want", [
    ({"avx2", "avx512f"}, "float32"),               # AVX-512 Xeon without bf16: emulated, ~3x slower
    ({"avx2"}, "float32"),                          # AVX2-only EPYC / laptop
    ({"avx512f", "avx512_bf16"}, "bfloat16"),       # Cooper Lake, Zen 4
    ({"amx_tile", "amx_bf16"}, "bfloat16"),         # Sapphire Rapids
])
def test_cpu_choice_follows_the_bf16_flags(flags, want):
    dtype, why = auto_dtype("cpu", cpu_flags=frozenset(flags))
    assert dtype == want
    assert ("native bf16" in why) == (want == "bfloat16") and why


@pytest.mark.parametrize("capability, want", [((9, 0), "bfloat16"), ((8, 0), "bfloat16"), ((7, 5), "float16"),
                                              ((7, 0), "float16")])
def test_gpu_choice_follows_the_compute_capability(capability, want):
    dtype, why = auto_dtype("cuda", capability=capability)
    assert dtype == want and f"{capability[0]}.{capability[1]}" in why


def test_this_machine(caplog):
    native = any(f in cpu_info()[1] for f in BF16_CPU_FLAGS)
    with caplog.at_level(logging.INFO, logger="policy.hardware"):
        chosen = resolve_dtype("auto", "cpu")
    assert chosen == ("bfloat16" if native else "float32")
    assert resolve_dtype("float16", "cpu") == "float16"  # an explicit dtype is taken as given
    line = describe_machine("cpu")
    assert ("no native bf16" in line) != native and "cores" in line


def test_an_engine_samples_a_small_model_in_fp32(tiny_model, embedded_model, tmp_path):
    """The trainer writes fp32 weights; an engine of a model under 1B parameters samples in fp32 whatever the
    hardware (in bf16 a 1e-5 update would mostly round away); a larger one takes the hardware's choice."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert checkpoint_params(tiny_model) == sum(p.numel() for p in model.parameters())
    assert 134e6 < checkpoint_params(embedded_model) < 135e6  # SmolLM2-135M (tied embeddings stored once)
    assert engine_dtype("auto", tiny_model) == engine_dtype("auto", embedded_model) == "float32"
    assert engine_dtype("bfloat16", tiny_model) == "bfloat16"  # an explicit dtype is taken as given
    assert engine_dtype("auto", tiny_model, "cpu", small=1000) == resolve_dtype("auto", "cpu")  # "large"
    assert checkpoint_params(tmp_path) is None and engine_dtype("auto", tmp_path, "cpu") == resolve_dtype("auto", "cpu")


def test_unknown_dtype_is_one_line():
    with pytest.raises(ValueError, match="dtype 'fp8' is not one of auto, float32, bfloat16, float16"):
        resolve_dtype("fp8")
    with pytest.raises(ValueError, match="dtype 'half'"):
        Config(dtype="half").check()


def test_config_builds_the_stage_params_from_one_definition():
    config = Config(temperature=0.5, beta=0.3, learning_rate=1e-5, dtype="float32", seed=3, sft_learning_rate=2e-4)
    assert config.rollout_params().temperature == 0.5 and config.rollout_params().seed == 3
    assert config.weights_params().beta == 0.3
    train = config.train_params()
    assert (train.learning_rate, train.dtype, train.seed) == (1e-5, "float32", 3)
    sft = config.sft_params()
    assert (sft.learning_rate, sft.kl_coef, sft.epochs, sft.objective) == (2e-4, 0.0, config.sft_epochs,
                                                                           "weighted-sft")
    # a demonstration's reply is the oracle's label (a relabelled turn's action is the policy's): never skipped
    assert replace(config, skip_noop_turns=True).train_params().skip_noop_turns
    assert not replace(config, skip_noop_turns=True).sft_params().skip_noop_turns
