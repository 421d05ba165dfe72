"""The sharded writer: byte budget, valid index, strict plan, NaN refused."""

import json

import pytest
import torch
from safetensors.torch import load_file

from safegene.errors import SafeGeneError
from safegene.io import ModelReader, ShardWriter, SpooledWriter, parse_size, plan_shards


def _tensors():
    g = torch.Generator().manual_seed(0)
    return {
        f"layers.{i}.w": torch.randn(16, 8 + i, generator=g).to(
            torch.bfloat16 if i % 2 else torch.float32
        )
        for i in range(6)
    }


def test_plan_respects_budget():
    items = [(n, t.dtype, tuple(t.shape)) for n, t in _tensors().items()]
    shards = plan_shards(items, 1200)
    assert [i for s in shards for i in s] == items
    for s in shards:
        size = sum(torch.empty(sh, dtype=dt).nbytes for _, dt, sh in s)
        assert size <= 1200 or len(s) == 1


def test_sharded_write_roundtrip(tmp_path):
    tensors = _tensors()
    w = ShardWriter(tmp_path, [(n, t.dtype, tuple(t.shape)) for n, t in tensors.items()], 1200)
    for n, t in tensors.items():
        w.write(n, t)
    w.close()
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    files = set(index["weight_map"].values())
    assert len(files) > 1 and all((tmp_path / f).is_file() for f in files)
    assert index["metadata"]["total_size"] == sum(t.nbytes for t in tensors.values())
    for f in files:  # each shard is a valid safetensors file for the library itself
        for n, t in load_file(tmp_path / f).items():
            assert index["weight_map"][n] == f and torch.equal(t, tensors[n])
    (tmp_path / "config.json").write_text("{}")
    with ModelReader(tmp_path) as r:
        assert r.names() == list(tensors)


def test_single_shard_has_no_index(tmp_path):
    t = _tensors()
    w = ShardWriter(tmp_path, [(n, x.dtype, tuple(x.shape)) for n, x in t.items()])
    for n, x in t.items():
        w.write(n, x)
    w.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


def test_writer_refuses_nan_and_off_plan(tmp_path):
    w = ShardWriter(tmp_path, [("a", torch.float32, (2,)), ("b", torch.float32, (2,))])
    with pytest.raises(RuntimeError):
        w.write("b", torch.zeros(2))
    with pytest.raises(SafeGeneError, match="NaN"):
        w.write("a", torch.tensor([1.0, float("nan")]))
    s = SpooledWriter(tmp_path / "x.safetensors")
    with pytest.raises(SafeGeneError, match="NaN"):
        s.write("a", torch.tensor([float("inf")]))
    s.abort()
    assert not list(tmp_path.glob("x.safetensors*"))


def test_spooled_writer_roundtrip(tmp_path):
    s = SpooledWriter(tmp_path / "adapter_model.safetensors")
    tensors = _tensors()
    for n, t in tensors.items():
        s.write(n, t)
    s.close()
    got = load_file(tmp_path / "adapter_model.safetensors")
    assert all(torch.equal(got[n], t) for n, t in tensors.items())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter_model.safetensors"]


def test_parse_size():
    assert parse_size("2GB") == 2 * 1024**3 and parse_size("500MB") == 500 * 1024**2
    assert parse_size("1.5GiB") == int(1.5 * 1024**3) and parse_size(123) == 123
    with pytest.raises(SafeGeneError):
        parse_size("lots")


def test_all_finite_fast_path_and_fallback():
    from safegene.io import all_finite

    assert all_finite(torch.ones(10, dtype=torch.bfloat16)) and all_finite(torch.arange(3))
    assert not all_finite(torch.tensor([1.0, float("nan")]))
    assert not all_finite(torch.tensor([float("inf"), float("-inf")]))  # sum is NaN
    assert not all_finite(torch.tensor([1.0, float("-inf")], dtype=torch.float16))
    assert all_finite(torch.full((4,), 3e38))  # the sum overflows, the values do not
