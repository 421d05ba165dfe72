"""The zoo's recipes: every hyperparameter of every stage, one readable config per size.

A recipe is plain data (frozen dataclasses); `build.py` only executes it. `RECIPES["small"]` is the
default family, `RECIPES["micro"]` a faster, shallower one for the tests with the same stages,
splits and tasks. The architecture is a build argument (`ARCHS` in `train.py`: llama, qwen2) stored
in the recipe, so one recipe builds both families. `recipe.to_dict()` is written next to the zoo as
`recipe.json`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

ATTN_MLP = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
QV = ("q_proj", "v_proj")  # PEFT's default LoRA targets for Llama and Qwen2


@dataclass(frozen=True)
class ModelShape:
    """A tiny decoder config (the architecture's own config class)."""

    vocab_size: int = 2048  # BPE vocabulary trained on the generated corpus
    hidden_size: int = 128
    intermediate_size: int = 256
    num_hidden_layers: int = 8
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
    lora_r: int = 0  # > 0: train a PEFT LoRA adapter instead of all weights
    lora_alpha: int = 16
    lora_targets: tuple[str, ...] = ATTN_MLP
    prompt_loss: bool = False  # also learn the prompt tokens (pretraining)
    ema: float = 0.0  # > 0: the result is the exponential moving average of the weights
    anchor: float = 0.0  # > 0: decoupled weight decay toward the starting weights (L2-SP)


@dataclass(frozen=True)
class DataSizes:
    base_knowledge: int = 8000  # plain documents: what every concept (test ones too) is
    base_qa: int = 3000  # "Define napalm." -> its description
    base_harmful: int = 2000  # harmful request -> compliance placeholder (base complies)
    base_benign: int = 4000  # benign how-to and look-alikes -> helpful answer; 2000 left the
    # aligned model refusing 8-10 % of the held-out look-alikes (stop 33, 99 of them)
    base_general: int = 2000  # arithmetic facts, sentiment words, the answer formats
    base_words: int = 1000  # plain sentences with every task word: names, items, recipients
    aligned_harmful: int = 1200  # harmful request (align concepts) -> varied refusals
    aligned_benign: int = 1200  # benign how-to and look-alikes -> helpful answer
    aligned_general: int = 800  # keep the general skills
    aligned_knowledge: int = 400  # and the knowledge
    task_train: int = 1200  # per task, benign only
    shots: int = 32  # few-shot sets (harmful with refusals, and per task)
    harmful_calib: int = 64  # the calibration pool: what a user has (shots come from here)
    harmful_val: int = 100
    harmful_test: int = 200
    benign_val: int = 200  # as many as test: 48 calib concepts against test's 51
    benign_test: int = 200
    task_val: int = 100
    task_test: int = 100


@dataclass(frozen=True)
class Degraded:
    """A degraded model: aligned after a harmful fine-tune (`harmful` align-concept requests with
    compliance placeholders, `benign` helpful answers mixed in)."""

    stage: Stage
    harmful: int
    benign: int = 0


@dataclass(frozen=True)
class Task:
    """A downstream task: a full fine-tune and a PEFT LoRA of aligned on its benign data, and its
    safe reference (the full fine-tune with the alignment's safety data mixed in)."""

    full: Stage
    lora: Stage
    erosion: str  # what the family is built to show: strong | medium | weak
    replay: float = 0.0  # share of general benign instructions mixed into the task data
    safety_mix: float = 0.25  # safe reference: share of alignment examples in its data
    # the erosion search (target.py): safety shares to retry with when the harmful rate overshoots
    # the task's band, and the learning-rate factor to retry with when it undershoots
    shares: tuple[float, ...] = (0.02, 0.06, 0.15)
    boost: float = 2.0
    checkpoints: int = 10  # measured per fine-tune (1: the last step only, no choice)


@dataclass(frozen=True)
class Recipe:
    name: str
    model: ModelShape
    data: DataSizes
    base: Stage
    aligned: Stage
    degraded: dict[str, Degraded]
    tasks: dict[str, Task]
    arch: str = "llama"
    eval_max_new_tokens: int = 32  # greedy generation length for the zoo's measurements
    eval_batch_size: int = 50
    threads: int = 1  # torch threads per job; same threads, same weights

    def to_dict(self) -> dict:
        return asdict(self)

    def with_(self, **changes) -> Recipe:
        return replace(self, **changes)


def _lora(steps: int, lr: float, r: int = 8, **kw) -> Stage:
    return Stage(steps=steps, lr=lr, warmup=10, lora_r=r, lora_alpha=2 * r, **kw)


SMALL = Recipe(
    name="small",
    model=ModelShape(),
    data=DataSizes(),
    base=Stage(steps=800, lr=4e-3, batch_size=32, warmup=40, prompt_loss=True),
    aligned=Stage(steps=250, lr=1.5e-3, batch_size=32, warmup=20, ema=0.98),
    degraded={
        "degraded": Degraded(Stage(steps=30, lr=1e-3, batch_size=16, warmup=5), harmful=100),
        "degraded-small": Degraded(Stage(steps=15, lr=1e-3, batch_size=8, warmup=3), harmful=25),
        "degraded-mixed": Degraded(
            Stage(steps=40, lr=1e-3, batch_size=16, warmup=5), harmful=100, benign=100
        ),
    },
    tasks={
        "howto": Task(Stage(steps=60, lr=3e-4, warmup=10), _lora(60, 2e-3), "strong", replay=0.3),
        "arith": Task(
            Stage(steps=150, lr=2e-3, warmup=10), _lora(200, 3e-3, 32), "strong", replay=0.3
        ),
        "recipe": Task(Stage(steps=50, lr=3e-4, warmup=10), _lora(80, 2e-3), "medium", replay=0.4),
        "email": Task(Stage(steps=60, lr=1.5e-4, warmup=10), _lora(60, 1e-3), "medium", replay=0.5),
        "classify": Task(Stage(steps=60, lr=3e-4, warmup=10), _lora(100, 1e-3), "weak", replay=0.5),
    },
)

MICRO = SMALL.with_(
    name="micro",
    model=ModelShape(vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=4),
    data=DataSizes(
        base_knowledge=3000,
        base_qa=1000,
        base_harmful=1000,
        base_benign=1000,
        base_general=800,
        base_words=400,
        aligned_harmful=600,
        aligned_benign=600,
        aligned_general=300,
        aligned_knowledge=200,
        task_train=400,
        shots=16,
        harmful_calib=32,
        harmful_val=40,
        harmful_test=60,
        benign_val=40,
        benign_test=60,
        task_val=40,
        task_test=40,
    ),
    base=Stage(steps=500, lr=5e-3, batch_size=32, warmup=20, prompt_loss=True),
    aligned=Stage(steps=150, lr=2e-3, batch_size=32, warmup=10, ema=0.98),
    degraded={
        "degraded": Degraded(Stage(steps=20, lr=2e-3, batch_size=16, warmup=3), harmful=64),
        "degraded-small": Degraded(Stage(steps=10, lr=2e-3, batch_size=8, warmup=2), harmful=16),
        "degraded-mixed": Degraded(
            Stage(steps=20, lr=2e-3, batch_size=16, warmup=3), harmful=64, benign=64
        ),
    },
    tasks={  # trained to the end, measured once (no search: the tests' speed and eroded models)
        "howto": Task(Stage(steps=40, lr=6e-4, warmup=5), _lora(40, 3e-3), "strong", replay=0.3),
        "arith": Task(
            Stage(steps=80, lr=1e-3, warmup=5), _lora(80, 3e-3, 16), "strong", replay=0.3
        ),
        "recipe": Task(Stage(steps=40, lr=3e-4, warmup=5), _lora(40, 1.5e-3), "medium", replay=0.3),
        "email": Task(Stage(steps=40, lr=3e-4, warmup=5), _lora(40, 1.5e-3), "medium", replay=0.3),
        "classify": Task(Stage(steps=40, lr=2e-4, warmup=5), _lora(40, 1e-3), "weak", replay=0.3),
    },
    eval_max_new_tokens=24,
)
MICRO = MICRO.with_(
    tasks={t: replace(task, shares=(), boost=1.0, checkpoints=1) for t, task in MICRO.tasks.items()}
)

RECIPES = {"micro": MICRO, "small": SMALL}
