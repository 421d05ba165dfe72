"""Atomic outputs, --force, inputs never overlapped, side files and content hashes."""

import engine_models as em
import pytest

from safegene.errors import SafeGeneError
from safegene.io import atomic_output_dir, check_output_path, copy_side_files, hash_model_dir


def test_atomic_success_and_failure(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ValueError), atomic_output_dir(out) as tmp:
        (tmp / "half").write_text("x")
        raise ValueError("boom")
    assert list(tmp_path.iterdir()) == []  # neither the output nor the temp dir remain
    with atomic_output_dir(out) as tmp:
        assert tmp.parent == tmp_path and tmp != out and not out.exists()
        (tmp / "done").write_text("x")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_existing_output_needs_force(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old").write_text("old")
    with pytest.raises(SafeGeneError, match="--force"), atomic_output_dir(out):
        pass
    with pytest.raises(RuntimeError), atomic_output_dir(out, force=True):
        raise RuntimeError  # a failing forced run keeps the old output
    assert (out / "old").is_file()
    with atomic_output_dir(out, force=True) as tmp:
        (tmp / "new").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_output_may_not_overlap_inputs(tmp_path):
    src = tmp_path / "model"
    src.mkdir()
    for out in (src, src / "sub", tmp_path):
        with pytest.raises(SafeGeneError, match="overlaps"):
            check_output_path(out, force=True, inputs=(src,))
    with pytest.raises(SafeGeneError, match="parent"):
        check_output_path(tmp_path / "a" / "b")


def test_side_files_and_hash(tmp_path):
    model = em.build_model("llama")
    a = em.save(model, tmp_path / "a")
    b = em.save(model, tmp_path / "b")
    c = em.save(em.perturbed(model, 1), tmp_path / "c")
    assert hash_model_dir(a) == hash_model_dir(b) != hash_model_dir(c)
    assert hash_model_dir(a, full=True).startswith("sha256:")
    assert (
        hash_model_dir(a, full=True) == hash_model_dir(b, full=True) != hash_model_dir(c, full=True)
    )
    out = tmp_path / "out"
    out.mkdir()
    assert "config.json" in copy_side_files(a, out)
    assert (out / "config.json").read_bytes() == (a / "config.json").read_bytes()
