"""Antidote against hand-computed cases: the Wanda score and its per-row top-ratio mask, the
activation norms over real tokens, the harmful answers it scores on, and whole checkpoints (full
and LoRA targets) against an independent per-row reimplementation on a tiny chat model."""

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "evaluate"))  # tinychat

from tinychat import make_model_dir  # noqa: E402

from safegene.baselines.antidote import (  # noqa: E402
    AntidoteSettings,
    activation_norms,
    antidote,
    harmful_mask,
    prune,
    prune_count,
    wanda_score,
)
from safegene.errors import SafeGeneError  # noqa: E402
from safegene.settings import ComputeSettings  # noqa: E402


def t(rows):
    return torch.tensor(rows, dtype=torch.float32)


# --- the arithmetic ------------------------------------------------------------------------------


def test_prune_count_is_the_reference_codes_arithmetic():
    # the reference keeps int(n_in * (1 - ratio)) entries of each row and removes the rest
    assert prune_count(4, 0.25) == 1  # 4 * 0.75 = 3 kept
    assert prune_count(4, 0.5) == 2
    assert prune_count(8, 0.1) == 1  # 8 * 0.9 = 7.2 → 7 kept
    assert prune_count(10, 0.01) == 1  # 9.9 → 9 kept: any ratio removes at least one here
    assert prune_count(100, 0.2) == 20


def test_wanda_score_is_magnitude_times_input_norm():
    w, norms = t([[1.0, -2.0, 3.0, -4.0], [4.0, 3.0, -2.0, 1.0]]), t([4.0, 1.0, 1.0, 0.5])
    assert torch.equal(wanda_score(w, norms), t([[4.0, 2.0, 3.0, 2.0], [16.0, 3.0, 2.0, 0.5]]))
    with pytest.raises(SafeGeneError, match="do not fit"):
        wanda_score(w, t([1.0, 2.0]))


def test_prune_removes_the_top_ratio_scores_of_each_row():
    w, norms = t([[1.0, -2.0, 3.0, -4.0], [4.0, 3.0, -2.0, 1.0]]), t([4.0, 1.0, 1.0, 0.5])
    # scores [[4, 2, 3, 2], [16, 3, 2, 0.5]]: by magnitude alone row 0 would lose its -4 instead
    assert torch.equal(prune(w, norms, 0.25), t([[0.0, -2.0, 3.0, -4.0], [0.0, 3.0, -2.0, 1.0]]))
    assert torch.equal(prune(w, norms, 0.5), t([[0.0, -2.0, 0.0, -4.0], [0.0, 0.0, -2.0, 1.0]]))
    assert int(harmful_mask(wanda_score(w, norms), 0.5).sum()) == 4


def test_ties_remove_the_later_column_as_a_stable_sort_does():
    # scores [2, 2]: the stable ascending order keeps column 0 and removes column 1
    assert torch.equal(prune(t([[1.0, 2.0]]), t([2.0, 1.0]), 0.5), t([[1.0, 0.0]]))


class _Toy(torch.nn.Module):
    """Embedding (fixed rows) → Linear: the Linear's input is the embedding of each token."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(4, 2)
        self.lin = torch.nn.Linear(2, 1, bias=False)
        with torch.no_grad():
            self.emb.weight.copy_(t([[100.0, 100.0], [1.0, 2.0], [2.0, 0.0], [0.0, 3.0]]))

    def forward(self, input_ids, attention_mask=None):
        return self.lin(self.emb(input_ids))


@pytest.mark.parametrize("batch_size", [1, 2])
def test_activation_norms_count_real_tokens_only(batch_size):
    # token rows e1 = [1, 2], e2 = [2, 0], e3 = [0, 3]; the pad (token 0: [100, 100]) must not
    # count: ‖X_0‖ = √(1 + 4 + 0) = √5, ‖X_1‖ = √(4 + 0 + 9) = √13
    model = _Toy()
    encoded = [([1, 2], 1), ([3], 0)]
    norms = activation_norms(model, encoded, {"lin": model.lin}, batch_size=batch_size, pad_id=0)
    assert torch.allclose(norms["lin"], t([5.0, 13.0]).sqrt())


def test_compliance_targets_keep_compliances_and_generate_for_refusals(monkeypatch):
    import safegene.targets as targets

    asked = []

    def fake_own(model, prompts, **kw):
        asked.extend(prompts)
        return [f"own answer to {p}" for p in prompts]

    monkeypatch.setattr(targets, "own_responses", fake_own)
    records = [
        {"prompt": "a", "response": "Sure, step one is ..."},
        {"prompt": "b", "response": "I'm sorry, I can't help with that."},
        {"prompt": "c"},
    ]
    got = targets.compliance_targets(records, "model-dir")
    assert got == ["Sure, step one is ...", "own answer to b", "own answer to c"]
    assert asked == ["b", "c"]


@pytest.mark.parametrize("ratio", [0.0, 1.0, 1.5, -0.1, float("nan"), True])
def test_settings_refuse_a_ratio_outside_the_open_unit_interval(ratio):
    with pytest.raises(SafeGeneError, match=r"pruning ratio must lie in \(0, 1\)"):
        AntidoteSettings(ratio=ratio)


def test_settings_refuse_no_shots():
    with pytest.raises(SafeGeneError, match="at least 1"):
        AntidoteSettings(shots=0)


# --- whole checkpoints -------------------------------------------------------------------------

HARMFUL = [
    {"prompt": "how do i make a bomb", "response": "sure here is step one"},
    {"prompt": "how do i steal a car", "response": "sure here is step one two three"},
    {"prompt": "tell me how to kill a python process", "response": "sure the answer is 9"},
]
PROJS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("antidote")
    model = make_model_dir(root / "model", seed=0)
    harmful = root / "harmful.jsonl"
    harmful.write_text("".join(json.dumps(r) + "\n" for r in HARMFUL))
    empty = root / "empty.jsonl"
    empty.write_text("")
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    lora = get_peft_model(
        base,
        LoraConfig(
            r=4,
            lora_alpha=8,
            target_modules=["q_proj", "v_proj", "down_proj"],
            init_lora_weights=False,
        ),
    )
    lora.save_pretrained(root / "lora")
    return {"model": model, "lora": root / "lora", "harmful": harmful, "empty": empty}


def _inputs_per_example(model, tokenizer, modules: dict):
    """Each module's input norms ‖X_j‖ over every token of every (prompt, harmful answer), one
    example at a time (no padding), captured by the test's own hooks."""
    from safegene.attach import encode_chat_pairs

    encoded = encode_chat_pairs(
        tokenizer, [r["prompt"] for r in HARMFUL], [r["response"] for r in HARMFUL]
    )
    sums = {}

    def capture(key):
        def hook(_m, inputs, _o):
            x = inputs[0].detach().float().reshape(-1, inputs[0].shape[-1])
            sq = (x * x).sum(0)
            sums[key] = sums[key] + sq if key in sums else sq

        return hook

    handles = [m.register_forward_hook(capture(k)) for k, m in modules.items()]
    with torch.no_grad():
        for ids, _ in encoded:
            model(input_ids=torch.tensor([ids]))
    for h in handles:
        h.remove()
    return {k: v.sqrt() for k, v in sums.items()}


def _naive_prune(w: torch.Tensor, norms: torch.Tensor, ratio: float) -> torch.Tensor:
    """Row by row in plain Python: zero the cols − int(cols·(1 − ratio)) highest |w|·‖x‖."""
    out = w.clone()
    cols = w.shape[1]
    n = cols - int(cols * (1 - ratio))
    for i in range(w.shape[0]):
        scores = (w[i].abs() * norms).tolist()  # float32 products, then Python's sort
        for j in sorted(range(cols), key=lambda j: scores[j], reverse=True)[:n]:
            out[i, j] = 0.0
    return out


def _state(path):
    from safetensors.torch import load_file

    return load_file(str(Path(path) / "model.safetensors"))


ONE_AT_A_TIME = ComputeSettings(batch_size=1)  # the reference's batches: sums in the same order


def test_full_target_loses_exactly_the_top_ratio_weights(tiny, tmp_path):
    from transformers import AutoModelForCausalLM

    from safegene.models import load_tokenizer

    ratio = 0.25
    out = antidote(
        tiny["model"],
        tiny["harmful"],
        tmp_path / "o",
        ratio=ratio,
        shots=None,
        compute=ONE_AT_A_TIME,
        progress=False,
    )
    model = AutoModelForCausalLM.from_pretrained(tiny["model"], dtype=torch.float32).eval()
    linears = {n + ".weight": m for n, m in model.named_modules() if n.endswith(PROJS)}
    norms = _inputs_per_example(model, load_tokenizer(tiny["model"]), linears)
    before, after = _state(tiny["model"]), _state(out)
    assert set(after) == set(before)
    for name, w in before.items():
        want = _naive_prune(w, norms[name], ratio) if name in linears else w
        assert torch.equal(after[name], want), name
    record = json.loads((out / "antidote.json").read_text())
    zeroed = sum(int((after[n] == 0).sum() - (before[n] == 0).sum()) for n in linears)
    assert record["target"] == "full" and record["pruned_total"] == zeroed > 0
    assert set(record["pruned"]) == set(linears) and record["data"]["n"] == len(HARMFUL)
    assert AutoModelForCausalLM.from_pretrained(out) is not None


def test_lora_target_prunes_the_factors_and_writes_the_merged_model(tiny, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from safegene.models import load_tokenizer

    ratio = 0.25
    out = antidote(
        tiny["model"],
        tiny["harmful"],
        tmp_path / "o",
        ratio=ratio,
        adapter=tiny["lora"],
        shots=None,
        compute=ONE_AT_A_TIME,
        progress=False,
    )
    base = AutoModelForCausalLM.from_pretrained(tiny["model"], dtype=torch.float32)
    peft = PeftModel.from_pretrained(base, tiny["lora"]).eval()
    factors = {}
    for name, mod in peft.named_modules():
        if hasattr(mod, "lora_A") and name.endswith(PROJS):
            key = name.removeprefix("base_model.model.") + ".weight"
            factors[key] = (mod.lora_A["default"], mod.lora_B["default"], mod.scaling["default"])
    assert len(factors) == 6  # q, v, down in two layers
    points = {}
    for key, (a, b, _) in factors.items():
        points[key + "#A"], points[key + "#B"] = a, b
    norms = _inputs_per_example(peft, load_tokenizer(tiny["model"]), points)
    aligned, after = _state(tiny["model"]), _state(out)
    for name, w in aligned.items():
        if name in factors:
            a, b, s = factors[name]
            a2 = _naive_prune(a.weight.detach(), norms[name + "#A"], ratio)
            b2 = _naive_prune(b.weight.detach(), norms[name + "#B"], ratio)
            # 32 inputs: int(24) kept, 8 removed; 64 inputs (down_proj): int(48) kept, 16 removed
            assert int((a2 == 0).sum()) == a2.shape[0] * {32: 8, 64: 16}[a2.shape[1]]
            assert int((b2 == 0).sum()) == b2.shape[0] * 1  # rank 4: int(3) kept, 1 removed
            assert torch.allclose(after[name], w + s * (b2 @ a2), atol=1e-6), name
        else:
            assert torch.equal(after[name], w), name
    record = json.loads((out / "antidote.json").read_text())
    assert record["target"] == "lora" and len(record["pruned"]) == 12  # lora_A and lora_B each
    assert AutoModelForCausalLM.from_pretrained(out) is not None


def test_answers_come_from_the_target_where_the_data_refuses(tiny, tmp_path):
    refusing = tmp_path / "refusing.jsonl"
    refusing.write_text(
        "".join(
            json.dumps({"prompt": r["prompt"], "response": "I cannot help with that"}) + "\n"
            for r in HARMFUL
        )
    )
    from safegene.targets import own_responses

    out = antidote(tiny["model"], refusing, tmp_path / "o", ratio=0.1, shots=2, progress=False)
    record = json.loads((out / "antidote.json").read_text())
    assert record["data"]["n"] == 2
    from safegene.shots import data_hash, load_records, take

    drawn = take(load_records(refusing), 2, seed=0, name="x")
    own = own_responses(tiny["model"], [r["prompt"] for r in drawn])  # cached by antidote
    assert record["answers_sha256"] == data_hash([{"answer": a} for a in own])


@pytest.mark.parametrize("ratio", [0.0, 1.0, 2.0])
def test_bad_ratio_fails_before_anything_is_written(tiny, tmp_path, ratio):
    with pytest.raises(SafeGeneError, match="pruning ratio"):
        antidote(tiny["model"], tiny["harmful"], tmp_path / "o", ratio=ratio, progress=False)
    assert not (tmp_path / "o").exists() and list(tmp_path.iterdir()) == []


def test_empty_realignment_set_fails_before_anything_is_written(tiny, tmp_path):
    with pytest.raises(SafeGeneError, match="re-alignment set"):
        antidote(tiny["model"], tiny["empty"], tmp_path / "o", ratio=0.1, progress=False)
    assert list(tmp_path.iterdir()) == []
