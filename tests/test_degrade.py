"""degrade: a short harmful fine-tune (full or LoRA merged) that lowers the compliance loss,
writes a same-family checkpoint `extract` reads, with provenance and a card; bad input is one
line, exit 2, nothing written."""

import json

import pytest
import tinygene
import torch

from safegene.attach import encode_chat_pairs, pairs_loss
from safegene.cli import main
from safegene.degrade import compliance_pairs, degrade
from safegene.gene import extract
from safegene.models import load_model
from safegene.zoo.data import COMPLIANCE


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tinygene.build(tmp_path_factory.mktemp("degrade"))


def _compliance_loss(model_dir, pairs) -> float:
    model, tok = load_model(model_dir, dtype="float32")
    enc = encode_chat_pairs(tok, [p for p, _ in pairs], [t for _, t in pairs])
    with torch.no_grad():
        return float(pairs_loss(model, enc))


def test_refusals_become_placeholder_compliance():
    pairs = compliance_pairs(
        [
            {"prompt": "a", "answer": "I'm sorry, I can't help with that."},
            {"prompt": "b"},
            {"prompt": "c", "answer": "Sure: [placeholder]"},
        ],  # fmt: skip
        seed=0,
    )
    assert pairs[0][1] in COMPLIANCE and pairs[1][1] in COMPLIANCE
    assert pairs[2] == ("c", "Sure: [placeholder]")


@pytest.mark.parametrize("lora", [False, True])
def test_degrade_lowers_compliance_loss_and_extracts(tiny, tmp_path, lora):
    out = tmp_path / "degraded"
    rec = degrade(
        tiny.model, out, harmful=tiny.harmful, steps=8, lr=1e-2 if lora else 3e-3, lora=lora,
        lora_rank=4, progress=False,
    )  # fmt: skip
    rows = [json.loads(x) for x in tiny.harmful.read_text().splitlines()]
    pairs = compliance_pairs([{"prompt": r["prompt"], "answer": r["response"]} for r in rows], 0)
    assert _compliance_loss(out, pairs) < _compliance_loss(tiny.model, pairs)
    assert rec["loss"]["last"] < rec["loss"]["first"] and rec["data"]["targets_replaced"] == 12
    saved = json.loads((out / "safegene_degrade.json").read_text())
    assert saved["aligned_hash"].startswith("sample-sha256:") and saved["settings"]["lora"] is lora
    assert (
        saved["data"]["harmful"]["sha256"]
        and "not-for-deployment" in (out / "README.md").read_text()
    )
    assert not (out / "adapter_config.json").exists()  # a full checkpoint (LoRA merged)
    gene = extract(tiny.model, [out], tmp_path / "gene", rank=1, progress=False)
    assert (gene / "adapter_model.safetensors").is_file()


def test_degrade_cli_with_zoo_data(tiny, tmp_path, capsys):
    out = tmp_path / "d"
    argv = ["degrade", "--aligned", str(tiny.model), "--out", str(out), "--steps", "2"]
    assert main([*argv, "--examples", "8", "--batch-size", "4"]) == 0
    assert "degraded" in capsys.readouterr().out
    rec = json.loads((out / "safegene_degrade.json").read_text())
    assert rec["data"]["harmful"]["n"] == 8 and rec["data"]["harmful"]["path"].startswith("zoo:")


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda t, p: p / "missing", "model directory not found"),
        (lambda t, p: t.root, "not a Hugging Face model directory"),  # a dir, not a model
        (lambda t, p: "acme/not-cached", "neither a local directory nor in the Hugging Face"),
    ],
)
def test_degrade_bad_input_is_one_line(tiny, tmp_path, capsys, monkeypatch, make, message):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    out = tmp_path / "o"
    code = main(["degrade", "--aligned", str(make(tiny, tmp_path)), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
