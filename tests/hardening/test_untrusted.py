"""Untrusted files: pickle refused unless asked for and then never executed, no remote code from a
config's auto_map, lying or truncated safetensors are clear errors within a time limit."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import corrupt as C
import pytest
import torch
from hardening_util import fork_run, run_cli, snapshot


class _Evil:
    """Unpickling this creates the marker file (a stand-in for arbitrary code)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _malicious_pickle_model(fam, root: Path) -> tuple[Path, Path]:
    from safetensors.torch import load_file

    d = root / "evil"
    d.mkdir()
    for f in fam.aligned.iterdir():
        if f.suffix != ".safetensors":
            shutil.copy2(f, d / f.name)
    marker = root / "PWNED"
    sd = load_file(str(fam.aligned / "model.safetensors"))
    sd["model.norm.weight"] = _Evil(str(marker))  # type: ignore[assignment]
    torch.save(sd, d / "pytorch_model.bin")
    return d, marker


def test_pickle_refused_without_flag_names_it(fam, tmp_path):
    d, marker = _malicious_pickle_model(fam, tmp_path)
    r = run_cli(
        "eval", "--model", d, "--harmful", fam.harmful, "--out", tmp_path / "rep", "--device", "cpu"
    )
    assert r.code == 2 and "--allow-pickle" in r.err, r.err
    assert not marker.exists() and not (tmp_path / "rep").exists()


def test_pickle_with_flag_never_runs_code(fam, tmp_path):
    """--allow-pickle loads with weights_only=True: the __reduce__ payload is refused, not run."""
    d, marker = _malicious_pickle_model(fam, tmp_path)
    before = snapshot(d)
    r = run_cli(
        "eval",
        "--model",
        d,
        "--allow-pickle",
        "--harmful",
        fam.harmful,
        "--out",
        tmp_path / "rep",
        "--device",
        "cpu",
        "--max-new-tokens",
        "2",
    )
    assert not marker.exists(), "unpickling ran code"
    assert r.code == 2, r.err
    assert "Traceback" not in r.err and len(r.err_lines) == 1 and "unpickle" in r.err, r.err
    assert snapshot(d) == before and not (tmp_path / "rep").exists()


def test_pickle_with_flag_api_uses_weights_only(fam, tmp_path):
    from safegene.errors import SafeGeneError
    from safegene.models import load_model

    d, marker = _malicious_pickle_model(fam, tmp_path)
    with pytest.raises(SafeGeneError):
        load_model(d, allow_pickle=True)
    assert not marker.exists()


def test_clean_pickle_with_flag_loads(fam, tmp_path):
    """The flag does work for an honest pickle checkpoint (same weights as the safetensors one)."""
    from safetensors.torch import load_file

    from safegene.models import load_model

    d = tmp_path / "pick"
    d.mkdir()
    for f in fam.aligned.iterdir():
        if f.suffix != ".safetensors":
            shutil.copy2(f, d / f.name)
    sd = load_file(str(fam.aligned / "model.safetensors"))
    torch.save(sd, d / "pytorch_model.bin")
    model, _ = load_model(d, allow_pickle=True)
    assert torch.equal(model.state_dict()["model.norm.weight"], sd["model.norm.weight"])


def test_extract_and_apply_refuse_pickle(fam, tmp_path):
    d, marker = _malicious_pickle_model(fam, tmp_path)
    for argv in (
        ["extract", "--aligned", d, "--degraded", fam.degraded, "--out", tmp_path / "g"],
        ["apply", "--gene", fam.gene, "--target", d, "--out", tmp_path / "m"],
    ):
        r = run_cli(*argv)
        assert r.code == 2 and "--allow-pickle" in r.err, r.err
        r = run_cli(*argv, "--allow-pickle")  # with the flag: weights_only=True refuses the payload
        assert r.code == 2 and len(r.err_lines) == 1 and "weights_only" in r.err, r.err
    assert not marker.exists() and not (tmp_path / "g").exists() and not (tmp_path / "m").exists()


REMOTE_CODE = """
import pathlib
pathlib.Path({marker!r}).write_text("remote code ran")
from transformers import LlamaForCausalLM, LlamaConfig
class EvilConfig(LlamaConfig):
    pass
class EvilModel(LlamaForCausalLM):
    config_class = EvilConfig
"""


@pytest.mark.parametrize("where", ["model", "tokenizer"])
def test_auto_map_is_never_executed(fam, tmp_path, where):
    """A config whose auto_map points at a module in the directory: loading never imports it
    (trust_remote_code is never implied); the stock class is used or the load fails clearly."""
    d = shutil.copytree(fam.aligned, tmp_path / "remote")
    marker = tmp_path / "REMOTE_RAN"
    (d / "evil.py").write_text(REMOTE_CODE.format(marker=str(marker)))
    if where == "model":
        cfg = json.loads((d / "config.json").read_text())
        cfg["auto_map"] = {
            "AutoConfig": "evil.EvilConfig",
            "AutoModelForCausalLM": "evil.EvilModel",
        }
        (d / "config.json").write_text(json.dumps(cfg))
    else:
        tc = json.loads((d / "tokenizer_config.json").read_text())
        tc["auto_map"] = {"AutoTokenizer": ["evil.EvilTokenizer", None]}
        (d / "tokenizer_config.json").write_text(json.dumps(tc))
    r = run_cli(
        "eval",
        "--model",
        d,
        "--harmful",
        fam.harmful,
        "--limit",
        "2",
        "--max-new-tokens",
        "2",
        "--out",
        tmp_path / "rep",
        "--device",
        "cpu",
    )
    assert not marker.exists(), "remote code from the checkpoint ran"
    assert r.code in (0, 2), r.err
    assert "Traceback" not in r.err
    if r.code == 0:  # loaded with the stock class
        rep = json.loads((tmp_path / "rep" / "report.json").read_text())
        assert rep
    # and the API, in this process
    from safegene.errors import SafeGeneError
    from safegene.models import load_model

    try:
        model, _ = load_model(d)
        assert type(model).__name__ == "LlamaForCausalLM"
    except SafeGeneError:
        pass
    assert not marker.exists()


@pytest.mark.parametrize(
    "how", ["truncate", "lie_offsets", "lie_shape", "huge_header_length", "header_not_object"]
)
def test_lying_safetensors_clear_error_no_hang(fam, tmp_path, how):
    """The reader on a broken file, in a child with a 20 s limit: a SafeGeneError, no crash, no
    hang."""
    d = shutil.copytree(fam.aligned, tmp_path / "m")
    getattr(C, how)(d / "model.safetensors")

    def read_all():
        from safegene.errors import SafeGeneError
        from safegene.io import ModelReader

        try:
            with ModelReader(d) as r:
                for n in r.names():
                    r.get(n)
        except SafeGeneError as exc:
            print(exc)
            return 2
        return 0

    r = fork_run(read_all, timeout=20)
    assert not r.timed_out and r.signal is None, "crashed or hung"
    assert r.code == 2, (r.out, r.err)


def test_truncated_shard_of_a_sharded_model(fam, tmp_path):
    """A sharded model whose last shard lost its tail is refused before any output."""
    from hardening_util import save_sharded, temp_siblings

    d = save_sharded(fam.degraded, tmp_path / "sharded")
    last = sorted(d.glob("model-*.safetensors"))[-1]
    C.truncate(last, 0.9)
    out = tmp_path / "out"
    r = run_cli("apply", "--gene", fam.gene, "--target", d, "--out", out, "--shard-size", "20KB")
    assert r.code == 2 and "truncated" in r.err, r.err
    assert not out.exists() and temp_siblings(out) == []
