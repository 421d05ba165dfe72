"""Model cards: genes (extracted, selected, calibrated), apply's three forms and baselines carry a
README.md that huggingface_hub reads back (metadata, sources, hashes, selection, coefficients);
a broken card template is one line, exit 2, nothing written."""

import engine_models as em
import pytest
from huggingface_hub import ModelCard

from safegene.apply import apply_gene
from safegene.card import gene_card, render
from safegene.cli import main
from safegene.errors import SafeGeneError
from safegene.gene import extract, load_gene, save_gene


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    from peft import LoraConfig, get_peft_model

    root = tmp_path_factory.mktemp("card")
    aligned, degraded = em.family_pair(root, "llama")
    gene = extract(aligned, [degraded], root / "gene", rank=2, progress=False)
    task = get_peft_model(
        em.build_model("llama"), LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False)
    )
    task.save_pretrained(root / "task")
    return {"root": root, "aligned": aligned, "degraded": degraded, "gene": gene}


def test_gene_card_has_metadata_sources_and_hashes(made):
    card = ModelCard.load(made["gene"] / "README.md")
    assert card.data.library_name == "peft" and "safegene" in card.data.tags
    assert card.data.base_model is None  # a local aligned model: named in the text only
    meta = load_gene(made["gene"]).meta
    assert meta["sources"]["aligned"]["hash"] in card.text
    assert meta["sources"]["degraded"][0]["hash"] in card.text
    assert "## Selection" in card.text and "every layer" in card.text
    hub = ModelCard(render(gene_card(meta, "acme/chat")))
    assert hub.data.base_model == "acme/chat"


def test_calibrated_gene_card_shows_selection_and_coefficients(made, tmp_path):
    g2 = save_gene(
        made["gene"],
        tmp_path / "g2",
        selection=[1],
        coefficients={"1": 0.625},
        calibration={
            "groups": {"1": 0.625},
            "target": {"path": "/m/task", "adapter": None},
            "fit": {"steps_run": 7, "loss_initial": 2.0, "loss_final": 1.0},
            "data": {"harmful": {"path": "h.jsonl", "n": 8, "sha256": "f00d"}},
        },
    )
    text = (g2 / "README.md").read_text()
    assert "Selected: `[1]`" in text and "0.625" in text and "f00d" in text and "7 steps" in text


@pytest.mark.parametrize(
    "form, library", [("merged", "transformers"), ("adapter", "peft"), ("combined", "peft")]
)
def test_apply_outputs_carry_a_card(made, tmp_path, form, library):
    out = apply_gene(
        made["gene"],
        made["aligned"],
        tmp_path / form,
        form=form,
        adapter=made["root"] / "task" if form == "combined" else None,
        coefficients=0.5,
        progress=False,
    )
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == library and "safegene" in card.data.tags
    assert load_gene(made["gene"]).meta["sources"]["aligned"]["hash"] in card.text
    assert "## Coefficients" in card.text and "0.5" in card.text


@pytest.mark.parametrize(
    "template, message",
    [
        ("{% for x in %}", "card template .*line 1"),  # a syntax error: found before any work
        ("{{ nothing.here.at_all }}", "card template error"),  # fails while rendering
    ],
)
def test_bad_card_template_is_one_line_and_writes_nothing(
    made, tmp_path, capsys, template, message
):
    file = tmp_path / "card.j2"
    file.write_text(template)
    out = tmp_path / "out"
    with pytest.raises(SafeGeneError, match=message):
        apply_gene(made["gene"], made["aligned"], out, card_template=file, progress=False)
    assert not out.exists()
    argv = ["apply", "--gene", str(made["gene"]), "--model", str(made["aligned"])]
    assert main([*argv, "--out", str(out), "--card-template", str(file)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "card template" in err and not out.exists()
