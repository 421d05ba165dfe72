"""`safegene extract` / `safegene apply` end to end, and every bad input: exit 2, one line,
no traceback, nothing written."""

import json
import subprocess
import sys

import engine_models as em
import pytest
import torch

from safegene.cli import main


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    aligned, degraded = em.family_pair(root, "phi3", shard="40KB")
    gene = root / "gene"
    assert (
        main(
            [
                "extract",
                "--aligned",
                str(aligned),
                "--degraded",
                str(degraded),
                "--out",
                str(gene),
                "--rank",
                "4",
            ]
        )
        == 0
    )
    return aligned, degraded, gene


def _tree(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def test_extract_and_apply_commands(pair, tmp_path):
    aligned, degraded, gene = pair
    assert json.loads((gene / "safegene.json").read_text())["compression"]["rank"] == 4
    coefs = tmp_path / "coefs.json"
    coefs.write_text("[1.0, 0.5]")
    out = tmp_path / "merged"
    assert (
        main(
            [
                "apply",
                "--gene",
                str(gene),
                "--target",
                str(degraded),
                "--out",
                str(out),
                "--coefs",
                str(coefs),
                "--shard-size",
                "40KB",
            ]
        )
        == 0
    )
    assert (out / "model.safetensors.index.json").is_file()
    assert json.loads((out / "safegene_apply.json").read_text())["coefficients"] == {
        "0": 1.0,
        "1": 0.5,
    }
    assert (
        main(
            [
                "apply",
                "--gene",
                str(gene),
                "--target",
                str(degraded),
                "--out",
                str(out),
                "--as",
                "adapter",
                "--coef",
                "2",
                "--force",
            ]
        )
        == 0
    )
    assert (out / "adapter_config.json").is_file() and not (out / "config.json").exists()
    dense = tmp_path / "dense"
    assert (
        main(
            [
                "extract",
                "--aligned",
                str(aligned),
                "--degraded",
                str(degraded),
                "--out",
                str(dense),
                "--dense",
            ]
        )
        == 0
    )
    assert (dense / "deltas.safetensors").is_file()


def _exit_code(argv) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse usage errors exit from inside the parser
        return exc.code


def _bad_inputs(pair, tmp_path):
    aligned, degraded, gene = pair
    other = em.save(em.build_model("llama"), tmp_path / "llama")
    nan_model = em.build_model("phi3")
    with torch.no_grad():
        nan_model.model.layers[0].self_attn.qkv_proj.weight[0, 0] = float("nan")
    nan_dir = em.save(nan_model, tmp_path / "nan")
    notmodel = tmp_path / "notmodel"
    notmodel.mkdir()
    (notmodel / "readme.txt").write_text("hi")
    existing = tmp_path / "existing"
    existing.mkdir()
    out = str(tmp_path / "out")
    ex = ["extract", "--aligned", str(aligned), "--out"]
    ap = ["apply", "--gene", str(gene), "--out"]
    return {
        "missing path": ex + [out, "--degraded", str(tmp_path / "nope")],
        "non-model dir": ex + [out, "--degraded", str(notmodel)],
        "mismatched family (extract)": ex + [out, "--degraded", str(other)],
        "mismatched family (apply)": ap + [out, "--target", str(other)],
        "NaN input": ex + [out, "--degraded", str(nan_dir)],
        "NaN target": ap + [out, "--target", str(nan_dir)],
        "existing output": ex + [str(existing), "--degraded", str(degraded)],
        "not a gene": ap[:1] + ["--gene", str(notmodel), "--out", out, "--target", str(degraded)],
        "missing coefs file": ap + [out, "--target", str(degraded), "--coefs", str(tmp_path / "c")],
        "bad option": ex + [out, "--degraded", str(degraded), "--rank", "4", "--energy", "0.5"],
    }


def test_bad_inputs_exit_2_one_line_nothing_written(pair, tmp_path, capsys):
    cases = _bad_inputs(pair, tmp_path)
    before = _tree(tmp_path)
    capsys.readouterr()  # drop the fixtures' own output
    for what, argv in cases.items():
        assert _exit_code(argv) == 2, what
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err, (what, err)
        assert err.startswith("safegene"), (what, err)
        assert _tree(tmp_path) == before, what  # nothing written, no temp dir left
    assert _tree(tmp_path / "existing") == []


@pytest.mark.parametrize("what", ["mismatched family (apply)", "NaN input"])
def test_bad_input_as_a_process(pair, tmp_path, what):
    """The real `python -m safegene` process: exit 2, one stderr line, no traceback."""
    argv = _bad_inputs(pair, tmp_path)[what]
    before = _tree(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "safegene", *argv],
        capture_output=True,
        text=True,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    err = proc.stderr.strip()
    assert proc.returncode == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert _tree(tmp_path) == before
