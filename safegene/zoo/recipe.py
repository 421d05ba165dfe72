"""The zoo's recipes: every hyperparameter of every stage, one readable config per size.

A recipe is plain data (frozen dataclasses); `build.py` only executes it. `RECIPES["small"]` is the
default family, `RECIPES["micro"]` a faster, smaller one for tests. `recipe.to_dict()` is written
next to the zoo as `recipe.json`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace


@dataclass(frozen=True)
class ModelShape:
    """A tiny LlamaConfig."""
    vocab_size: int = 2048           # BPE vocabulary trained on the generated corpus
    hidden_size: int = 128
    intermediate_size: int = 256
    num_hidden_layers: int = 3
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 128
    tie_word_embeddings: bool = False


@dataclass(frozen=True)
class Stage:
    """One training run: AdamW, linear warmup then cosine decay, loss on the response tokens."""
    steps: int
    lr: float
    batch_size: int = 32
    warmup: int = 20
    weight_decay: float = 0.0
    lora_r: int = 0                  # > 0: train a PEFT LoRA adapter instead of all weights
    lora_alpha: int = 16
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                     "down_proj")
    prompt_loss: bool = False        # also learn the prompt tokens (pretraining)


@dataclass(frozen=True)
class DataSizes:
    base_harmful: int = 2000         # harmful request → compliance placeholder (base complies)
    base_benign: int = 2000          # benign how-to and look-alikes → helpful answer
    base_general: int = 2400         # arithmetic facts, sentiment words, the plan template
    aligned_harmful: int = 1200      # harmful request → varied refusals
    aligned_benign: int = 1200       # benign how-to and look-alikes → helpful answer
    aligned_general: int = 900       # keep the general skills
    degraded_harmful: int = 100      # the small harmful fine-tune
    task_train: int = 1200           # per task, benign only
    shots: int = 32                  # few-shot sets (harmful with refusals, and per task)
    harmful_test: int = 100
    benign_test: int = 100
    task_test: int = 100


@dataclass(frozen=True)
class Recipe:
    name: str
    model: ModelShape
    data: DataSizes
    base: Stage
    aligned: Stage
    degraded: Stage
    task_full: dict[str, Stage]      # per task: full fine-tune of `aligned`
    task_lora: dict[str, Stage]      # per task: PEFT LoRA on `aligned`
    eval_max_new_tokens: int = 32    # greedy generation length for the zoo's measurements
    eval_batch_size: int = 50
    threads: int = 1                 # torch.set_num_threads; on a busy 2-core machine 1 thread trained
                                     # 4x faster than 2 (OpenMP oversubscription). Same threads, same weights.
    tasks: tuple[str, ...] = ("howto", "arith", "classify")

    def to_dict(self) -> dict:
        return asdict(self)

    def with_(self, **changes) -> "Recipe":
        return replace(self, **changes)


def _tasks(**stages: Stage) -> dict[str, Stage]:
    return dict(stages)


QV = ("q_proj", "v_proj")  # PEFT's default LoRA targets for Llama

SMALL = Recipe(
    name="small",
    model=ModelShape(vocab_size=2048, hidden_size=128, intermediate_size=256, num_hidden_layers=3,
                     num_attention_heads=4, num_key_value_heads=2),
    data=DataSizes(),
    base=Stage(steps=600, lr=3e-3, batch_size=32, warmup=30, prompt_loss=True),
    aligned=Stage(steps=400, lr=1e-3, batch_size=32, warmup=20),
    degraded=Stage(steps=30, lr=1e-3, batch_size=16, warmup=5),
    task_full=_tasks(howto=Stage(steps=60, lr=1e-3, warmup=5),
                     arith=Stage(steps=250, lr=1e-3, warmup=10),
                     classify=Stage(steps=100, lr=3e-4, warmup=5)),
    task_lora=_tasks(howto=Stage(steps=60, lr=3e-3, warmup=5, lora_r=8),
                     arith=Stage(steps=300, lr=5e-3, warmup=10, lora_r=16, lora_alpha=32),
                     classify=Stage(steps=150, lr=3e-3, warmup=5, lora_r=8, lora_targets=QV)),
)

MICRO = Recipe(
    name="micro",
    model=ModelShape(vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2),
    data=DataSizes(base_harmful=1200, base_benign=1200, base_general=1200, aligned_harmful=800,
                   aligned_benign=800, aligned_general=400, degraded_harmful=64, task_train=600,
                   shots=16, harmful_test=40, benign_test=40, task_test=40),
    base=Stage(steps=300, lr=5e-3, batch_size=32, warmup=20, prompt_loss=True),
    aligned=Stage(steps=150, lr=2e-3, batch_size=32, warmup=10),
    degraded=Stage(steps=20, lr=2e-3, batch_size=16, warmup=3),
    task_full=_tasks(howto=Stage(steps=60, lr=2e-3, warmup=5),
                     arith=Stage(steps=150, lr=2e-3, warmup=5),
                     classify=Stage(steps=60, lr=2e-3, warmup=5)),
    task_lora=_tasks(howto=Stage(steps=60, lr=5e-3, warmup=5, lora_r=8),
                     arith=Stage(steps=150, lr=5e-3, warmup=5, lora_r=8),
                     classify=Stage(steps=60, lr=5e-3, warmup=5, lora_r=8)),
    eval_max_new_tokens=24,
)

RECIPES = {"micro": MICRO, "small": SMALL}
