"""The baselines' per-tensor arithmetic against hand-computed tiny examples."""

import pytest
import torch

from safegene.baselines.interpolate import interpolate_tensor
from safegene.baselines.resta import resta_tensor
from safegene.baselines.safelora import modules_to_project, project, safelora_tensor, similarity
from safegene.baselines.safemerge import safemerge_tensor
from safegene.baselines.sparsify import dare, ties_trim


def t(rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_resta_adds_beta_times_safety_vector():
    task, aligned, degraded = t([[1.0, 2.0]]), t([[3.0, 3.0]]), t([[1.0, 4.0]])
    # safety vector = [2, -1]; θ = task + 0.5 * [2, -1] = [2, 1.5]
    assert torch.equal(resta_tensor(task, aligned, degraded, 0.5), t([[2.0, 1.5]]))


def test_resta_keeps_task_dtype_and_computes_in_float32():
    task = torch.full((2, 2), 1.0, dtype=torch.bfloat16)
    out = resta_tensor(task, torch.full((2, 2), 1.5), torch.ones(2, 2), 1.0)
    assert out.dtype == torch.bfloat16 and torch.equal(out.float(), torch.full((2, 2), 1.5))


def test_ties_trim_keeps_largest_magnitudes():
    delta = t([[0.1, -3.0], [2.0, -0.5]])
    assert torch.equal(ties_trim(delta, 0.5), t([[0.0, -3.0], [2.0, 0.0]]))
    assert torch.equal(ties_trim(delta, 1.0), delta)


def test_dare_drops_and_rescales():
    delta = torch.ones(1000)
    out = dare(delta, 0.75, torch.Generator().manual_seed(0))
    kept = out[out != 0]
    assert torch.allclose(kept, torch.full_like(kept, 4.0))  # 1 / (1 - 0.75)
    assert 150 < kept.numel() < 350  # about a quarter survives
    assert torch.equal(dare(delta, 0.0, torch.Generator()), delta)
    with pytest.raises(ValueError):
        dare(delta, 1.0, torch.Generator())


def test_resta_with_dare_is_seeded():
    args = (torch.zeros(50, 50), torch.ones(50, 50), torch.zeros(50, 50), 1.0)
    a = resta_tensor(*args, dare_rate=0.5, generator=torch.Generator().manual_seed(3))
    b = resta_tensor(*args, dare_rate=0.5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and set(a.unique().tolist()) == {0.0, 2.0}


def test_interpolate_endpoints_and_midpoint():
    task, aligned = t([[0.0, 4.0]]), t([[2.0, 0.0]])
    assert torch.equal(interpolate_tensor(task, aligned, 0.0), task)
    assert torch.equal(interpolate_tensor(task, aligned, 1.0), aligned)
    assert torch.equal(interpolate_tensor(task, aligned, 0.25), t([[0.5, 3.0]]))


def test_safelora_projection_matches_explicit_matrix():
    g = torch.Generator().manual_seed(0)
    v, delta = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    c = v @ v.T / torch.linalg.matrix_norm(v)
    assert torch.allclose(project(v, delta), c @ delta, atol=1e-6)


def test_safelora_hand_example():
    # V = [[2, 0], [0, 0]] → ‖V‖_F = 2, C = [[2, 0], [0, 0]].
    v = t([[2.0, 0.0], [0.0, 0.0]])
    assert torch.equal(project(v, t([[1.0, 1.0], [1.0, 1.0]])), t([[2.0, 2.0], [0.0, 0.0]]))
    # ΔW inside the subspace: C·ΔW = 2·ΔW, cos = 1. Orthogonal to it: C·ΔW = 0, cos = 0.
    assert similarity(v, t([[1.0, 3.0], [0.0, 0.0]])) == pytest.approx(1.0)
    assert similarity(v, t([[0.0, 0.0], [1.0, 1.0]])) == pytest.approx(0.0)
    # Full fine-tune: W_aligned + C·(W_task − W_aligned).
    base, aligned = t([[0.0, 0.0], [0.0, 0.0]]), v
    task = aligned + t([[1.0, 0.0], [5.0, 0.0]])
    assert torch.equal(safelora_tensor(aligned, base, task), aligned + t([[2.0, 0.0], [0.0, 0.0]]))


def test_safelora_selection_modes():
    sims = {"a": 0.9, "b": 0.2, "c": 0.5}
    assert modules_to_project(sims, threshold=0.6) == {"b", "c"}
    assert modules_to_project(sims, number=1) == {"b"}
    with pytest.raises(ValueError):
        modules_to_project(sims)


def test_safemerge_linear_and_dare():
    task, aligned = t([[4.0, 0.0]]), t([[0.0, 2.0]])
    # 0.8·task + 0.2·aligned
    assert torch.allclose(safemerge_tensor(task, aligned, 0.8), t([[3.2, 0.4]]))
    merged = safemerge_tensor(
        torch.ones(100, 100),
        torch.zeros(100, 100),
        0.8,
        dare_rate=0.5,
        generator=torch.Generator().manual_seed(0),
    )
    values = sorted(merged.unique().tolist())
    assert len(values) == 2 and values[0] == 0.0 and values[1] == pytest.approx(1.6)
