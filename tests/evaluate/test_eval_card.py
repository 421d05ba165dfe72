"""`safegene eval --card`: the evaluation summary goes into the evaluated SafeGene output's model
card (replacing an earlier one, keeping the rest); a model without a SafeGene card is refused
before any work (one line, exit 2, nothing written)."""

import json
import shutil

from huggingface_hub import ModelCard

from safegene.card import TAGS, Card, with_evaluation, write_card
from safegene.cli import main


def _args(model, data, out):
    return [
        "eval",
        "--model",
        str(model),
        "--harmful",
        str(data / "harmful.jsonl"),
        "--benign",
        str(data / "benign.jsonl"),
        "--task",
        str(data / "task.jsonl"),
        "--device",
        "cpu",
        "--no-progress",
        "--max-new-tokens",
        "4",
        "--out",
        str(out),
    ]


def test_eval_writes_its_summary_into_the_card(tiny_model_dir, tiny_data, tmp_path, capsys):
    model = tmp_path / "restored"
    shutil.copytree(tiny_model_dir, model)
    card = Card("Safety-restored model (SafeGene)", "summary", "transformers", tags=TAGS)
    card.add("Coefficients", "Applied: `0.5`")
    write_card(model, card)
    for run in ("first", "second"):
        assert main([*_args(model, tiny_data, tmp_path / run), "--card"]) == 0
    capsys.readouterr()
    report = json.loads((tmp_path / "second" / "report.json").read_text())
    s = report["models"][0]["summary"]
    text = (model / "README.md").read_text()
    assert text.count("## Evaluation") == 1  # the second run replaced the first's section
    assert "## Coefficients" in text and "Applied: `0.5`" in text  # the rest is kept
    assert f"{100 * s['harmful_rate']:.1f}% [" in text and f"(n={s['harmful_rate_n']})" in text
    assert "accuracy: task" in text and "harmful (keyword)" in text
    assert "safegene" in ModelCard.load(model / "README.md").data.tags


def test_card_of_another_writer_is_refused_before_any_work(
    tiny_model_dir, tiny_data, tmp_path, capsys
):
    model = tmp_path / "plain"
    shutil.copytree(tiny_model_dir, model)
    (model / "README.md").write_text("---\nlicense: mit\n---\n# someone's model\n")
    before = (model / "README.md").read_text()
    assert main([*_args(model, tiny_data, tmp_path / "out"), "--card"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a card SafeGene wrote" in err[0]
    assert not (tmp_path / "out").exists() and (model / "README.md").read_text() == before
    (model / "README.md").unlink()
    assert main([*_args(model, tiny_data, tmp_path / "out"), "--card"]) == 2
    assert "has no model card" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_with_evaluation_replaces_only_its_section():
    text = "---\ntags: [safegene]\n---\n# T\n\n## Evaluation\n\nold\n\n## Notes\n\nkeep\n"
    out = with_evaluation(text, "new")
    assert "old" not in out and "new" in out and out.endswith("## Notes\n\nkeep\n")
    assert with_evaluation("# T\n", "x").endswith("## Evaluation\n\nx\n")
