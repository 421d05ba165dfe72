"""The streaming reader: same tensors as safetensors' own loader, single and sharded, no mmap."""

from pathlib import Path

import engine_models as em
import pytest
import torch
from safetensors.torch import load_file

from safegene.errors import SafeGeneError
from safegene.io import ModelReader, find_weight_files


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("reader")
    model = em.build_model("qwen2")
    return em.save(model, root / "single"), em.save(model, root / "sharded", shard="40KB")


def _reference(path):
    out = {}
    for f in find_weight_files(path):
        out.update(load_file(f))
    return out


@pytest.mark.parametrize("which", [0, 1])
def test_reader_matches_safetensors(dirs, which):
    path = dirs[which]
    ref = _reference(path)
    with ModelReader(path) as r:
        assert sorted(r.names()) == sorted(ref)
        for name, t in r.iter_tensors():
            assert t.dtype == ref[name].dtype and torch.equal(t, ref[name]), name
    assert (len(find_weight_files(path)) > 1) == (which == 1)


def test_reader_casts_and_reports_sizes(dirs):
    with ModelReader(dirs[1]) as r:
        name = r.names()[0]
        assert r.get(name, torch.bfloat16).dtype == torch.bfloat16
        assert r.total_bytes() == sum(t.numel() * 4 for t in _reference(dirs[1]).values())


def test_reader_does_not_mmap(dirs):
    """Mapped file pages count in RSS: the reader must read, not map."""
    with ModelReader(dirs[0]) as r:
        tensors = [r.get(n) for n in r.names()]
        maps = Path("/proc/self/maps").read_text()
    assert tensors and str(dirs[0]) not in maps


def test_reader_bad_inputs(tmp_path, dirs):
    with pytest.raises(SafeGeneError, match="not found"):
        ModelReader(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SafeGeneError, match="config.json"):
        ModelReader(tmp_path / "empty")
    pk = tmp_path / "pickle"
    pk.mkdir()
    (pk / "config.json").write_text("{}")
    (pk / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(SafeGeneError, match="pickle"):
        ModelReader(pk)
    bad = tmp_path / "truncated"
    bad.mkdir()
    (bad / "config.json").write_text("{}")
    (bad / "model.safetensors").write_bytes((dirs[0] / "model.safetensors").read_bytes()[:5000])
    with pytest.raises(SafeGeneError, match="outside the file|truncated"):
        ModelReader(bad)
