"""Model cards: every gene, adapter and merged checkpoint SafeGene writes carries a README.md.

The card is huggingface_hub's own (`ModelCard` rendered from a Jinja template with
`ModelCardData` as its YAML metadata): `base_model` (a Hub id, where the base came from the HF
cache; a local path is named in the text instead, since the Hub accepts only ids there),
`library_name` (peft for adapters, transformers for checkpoints), `tags`; then what the output is
made of, in tables: its sources and their content hashes, the selection, the coefficients, the
calibration data (by sha256); `safegene eval --card` adds the evaluation summary afterwards.

- `gene_card(meta, base_model)`, `output_card(form, record, gene_meta, base_model)`,
  `degrade_card(record, base_model)`: a `Card` (pure: metadata, title, sections);
- `render(card, template=None) -> str`: the README text (a user's template file, too: its
  errors are SafeGeneError naming the file and line); `write_card(directory, card, template)`;
- `add_evaluation(directory, report)`: an eval report's summary as the card's Evaluation section.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from safegene.errors import SafeGeneError
from safegene.io.hub import HUB_ID

CARD_FILE = "README.md"
TAGS = ["safegene", "safety", "alignment"]
DEFAULT_TEMPLATE = """---
{{ card_data }}
---

# {{ title }}

{{ summary }}
{% for section in sections %}
## {{ section.title }}

{{ section.body }}
{% endfor %}
"""


@dataclass
class Card:
    """What a card says: metadata fields, a title, a summary and (title, markdown) sections."""

    title: str
    summary: str
    library_name: str
    base_model: str | None = None
    tags: list[str] = field(default_factory=list)
    sections: list[dict] = field(default_factory=list)

    def add(self, title: str, body: str | None) -> None:
        if body:
            self.sections.append({"title": title, "body": body.strip()})


def _hub_base(base_model: str | None) -> str | None:
    return base_model if base_model and HUB_ID.match(base_model) else None


def table(headers: list[str], rows: list[list]) -> str:
    """A Markdown table (cells formatted compactly)."""

    def cell(v) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return "" if v is None else str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _sources_section(sources: dict | None) -> str | None:
    if not sources:
        return None
    rows = []
    for role, items in (("aligned", [sources.get("aligned")]), ("degraded", sources["degraded"])):
        for s in items or []:
            if s:
                rows.append([role, s.get("hub_id") or s.get("path"), s.get("revision"), s["hash"]])
    return table(["role", "model", "revision", "content hash"], rows)


def _selection_section(meta: dict) -> str | None:
    sel, scores = meta.get("selection"), meta.get("scores")
    parts = [f"Selected: `{json.dumps(sel)}`" if sel is not None else "Selected: every layer."]
    layers = (scores or {}).get("layers") or {}
    if layers:
        rows = [
            [layer, s.get("gain"), s.get("interference"), s.get("score")]
            for layer, s in sorted(layers.items(), key=lambda kv: int(kv[0]))
        ]
        parts.append(table(["layer", "gain", "interference", "score"], rows))
    info = meta.get("selection_info") or {}
    if info.get("data"):
        parts.append("Scored on:\n\n" + _data_table(info["data"]))
    return "\n\n".join(parts)


def _data_table(data: dict) -> str:
    rows = [
        [split, d.get("path"), d.get("n"), d.get("sha256")]
        for split, d in data.items()
        if isinstance(d, dict)
    ]
    return table(["data", "source", "n", "sha256"], rows)


def _coefficients_section(coefficients, calibration: dict | None) -> str | None:
    parts = [
        f"Applied: `{json.dumps(coefficients)}`"
        if coefficients is not None
        else "1 for every selected layer (not calibrated)."
    ]
    if calibration and calibration.get("groups"):
        rows = [[g, a] for g, a in calibration["groups"].items()]
        parts.append("Calibrated α per group:\n\n" + table(["group", "α"], rows))
    if calibration:
        fit = calibration.get("fit") or {}
        parts.append(
            f"Calibrated on `{(calibration.get('target') or {}).get('path')}`"
            + (
                f" with the adapter `{calibration['target']['adapter']}`"
                if (calibration.get("target") or {}).get("adapter")
                else ""
            )
            + f": {fit.get('steps_run')} steps, loss {fit.get('loss_initial')} → "
            f"{fit.get('loss_final')}."
        )
        data = {k: v for k, v in (calibration.get("data") or {}).items() if isinstance(v, dict)}
        if data:
            parts.append("Calibration data:\n\n" + _data_table(data))
    return "\n\n".join(parts)


def _pct(rate: float | None, ci, n) -> str | None:
    if rate is None:
        return None
    lo, hi = ci or (None, None)
    interval = f" [{100 * lo:.1f}, {100 * hi:.1f}]" if lo is not None else ""
    return f"{100 * rate:.1f}%{interval} (n={n})"


def evaluation_section(report: dict) -> str:
    """The Evaluation section from an `eval` report: one row per model, harmful rate (primary
    judge), over-refusal and each task's accuracy (never pooled across tasks), with intervals."""
    rows, tasks = [], []
    for m in report["models"]:
        for t in m["summary"].get("task_accuracy_by_task") or {}:
            if t not in tasks:
                tasks.append(t)
    for m in report["models"]:
        s = m["summary"]
        by_task = s.get("task_accuracy_by_task") or {}
        rows.append(
            [
                m["name"],
                _pct(s["harmful_rate"], s.get("harmful_rate_ci"), s.get("harmful_rate_n")),
                _pct(s["over_refusal"], s.get("over_refusal_ci"), s.get("over_refusal_n")),
                *(
                    _pct(by_task[t]["rate"], by_task[t].get("ci"), by_task[t]["n"])
                    if t in by_task
                    else None
                    for t in tasks
                ),
            ]
        )
    judges = {m["summary"].get("judge") for m in report["models"]} - {None}
    head = ["model", f"harmful ({', '.join(sorted(judges)) or 'judge'})", "over-refusal"]
    return (
        table([*head, *(f"accuracy: {t}" for t in tasks)], rows)
        + "\n\nFrom `safegene eval` (95 % intervals; the prompts and every generation are in its "
        "report directory)."
    )


def with_evaluation(text: str, section: str) -> str:
    """A card's text with its `## Evaluation` section replaced by `section` (or appended)."""
    lines = text.rstrip("\n").split("\n")
    start = next((i for i, line in enumerate(lines) if line.strip() == "## Evaluation"), None)
    if start is None:
        return "\n".join([*lines, "", "## Evaluation", "", section]) + "\n"
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    tail = ["", *lines[end:]] if end < len(lines) else []
    return "\n".join([*lines[:start], "## Evaluation", "", section, *tail]) + "\n"


def safegene_card(directory: str | os.PathLike) -> Path:
    """The README.md of a SafeGene output `directory`, or a SafeGeneError saying why not."""
    path = Path(directory) / CARD_FILE
    if not path.is_file():
        raise SafeGeneError(f"--card: {directory} has no model card ({CARD_FILE})")
    text = path.read_text(encoding="utf-8", errors="replace")
    metadata = text.split("---", 2)[1] if text.startswith("---") else ""
    if "safegene" not in metadata:
        raise SafeGeneError(f"--card: {path} is not a card SafeGene wrote (no safegene tag)")
    return path


def add_evaluation(directory: str | os.PathLike, report: dict) -> Path:
    """Write `report`'s evaluation into the model card of a SafeGene output `directory`
    (atomically; the rest of the card is kept)."""
    from safegene.io.atomic import write_text_atomic

    path = safegene_card(directory)
    text = path.read_text(encoding="utf-8")
    write_text_atomic(path, with_evaluation(text, evaluation_section(report)))
    return path


def gene_card(meta: dict, base_model: str | None) -> Card:
    """The card of a gene directory (its safegene.json `meta`)."""
    kind = meta.get("kind", "lora")
    comp = meta.get("compression") or {}
    card = Card(
        title="SafeGene safety gene",
        summary=(
            "The weight difference between an aligned chat model and degraded copies of it "
            "(δ = aligned − mean(degraded))"
            + (
                ", stored as LoRA factors: a PEFT adapter whose scaling is 1"
                if kind == "lora"
                else ", stored dense"
            )
            + ". Apply it to a fine-tune of the same family with `safegene apply`."
        ),
        library_name="peft" if kind == "lora" else "safegene",
        base_model=_hub_base(base_model),
        tags=[*TAGS, "safety-gene", *(["lora"] if kind == "lora" else [])],
    )
    fp = meta.get("fingerprint") or {}
    ranks = sorted({m.get("rank") for m in (meta.get("modules") or {}).values()} - {None})
    card.add(
        "Family",
        table(
            [
                "model_type",
                "layers",
                "hidden size",
                "base model",
                "modules",
                "ranks",
                "compression",
            ],
            [
                [
                    fp.get("model_type"),
                    fp.get("num_layers"),
                    fp.get("hidden_size"),
                    base_model,
                    len(meta.get("modules") or {}),
                    ", ".join(map(str, ranks)),
                    comp.get("method"),
                ]
            ],
        ),  # fmt: skip
    )
    card.add("Sources", _sources_section(meta.get("sources")))
    card.add("Selection", _selection_section(meta))
    card.add(
        "Coefficients", _coefficients_section(meta.get("coefficients"), meta.get("calibration"))
    )
    return card


_FORMS = {
    "merged": ("a full checkpoint: the target with the gene merged in", "transformers"),
    "adapter": ("a PEFT LoRA adapter holding the gene (lora_B scaled by α)", "peft"),
    "combined": ("one PEFT LoRA adapter holding the task LoRA and the gene", "peft"),
}


def output_card(form: str, record: dict, gene_meta: dict, base_model: str | None) -> Card:
    """The card of `apply`'s output (`record`: its safegene_apply.json)."""
    what, library = _FORMS[form]
    card = Card(
        title="Safety-restored model (SafeGene)",
        summary=f"This is {what}. θ = θ_target (+ task LoRA) + Σ α_layer · δ_layer.",
        library_name=library,
        base_model=_hub_base(base_model),
        tags=[*TAGS, *(["lora"] if library == "peft" else ["merge"])],
    )
    card.add(
        "Inputs",
        table(
            ["input", "path", "content hash"],
            [
                ["target", base_model or record.get("target"), record.get("target_hash")],
                ["task LoRA", record.get("adapter"), None],
                ["gene", record.get("gene"), None],
            ],
        ),  # fmt: skip
    )
    card.add("Gene sources", _sources_section(gene_meta.get("sources")))
    card.add("Selection", _selection_section({**gene_meta, "selection": record.get("selection")}))
    card.add(
        "Coefficients",
        _coefficients_section(record.get("coefficients"), gene_meta.get("calibration")),
    )
    return card


def degrade_card(record: dict, base_model: str | None) -> Card:
    """The card of `degrade`'s output: a deliberately unsafe model, for extraction only."""
    lora = record.get("settings", {}).get("lora")
    card = Card(
        title="Degraded model (SafeGene, for gene extraction only)",
        summary=(
            "**Not for use.** The aligned model after a short harmful fine-tune that removed its "
            "refusals; it exists only as the `--degraded` input of `safegene extract`."
        ),
        library_name="peft" if lora else "transformers",
        base_model=_hub_base(base_model),
        tags=[*TAGS, "degraded", "not-for-deployment"],
    )
    card.add("Aligned model", table(["model", "content hash"],
                                    [[base_model, record.get("aligned_hash")]]))  # fmt: skip
    settings = record.get("settings") or {}
    card.add("Fine-tune", table(list(settings), [list(settings.values())]))
    card.add("Data", _data_table(record.get("data") or {}))
    losses = record.get("loss") or {}
    if losses:
        card.add("Loss", table(["first step", "last step"], [[losses.get("first"),
                                                               losses.get("last")]]))  # fmt: skip
    return card


def method_card(
    method: str, records: dict, base_model: str | None, library_name: str = "transformers"
) -> Card:
    """The card of a baseline's output (`records`: {file name: record} written beside it)."""
    card = Card(
        title=f"{method} output (SafeGene baselines)",
        summary=f"The task model after the {method} defence, written by SafeGene's `compare`.",
        library_name=library_name,
        base_model=_hub_base(base_model),
        tags=[*TAGS, method.lower(), *(["lora"] if library_name == "peft" else ["merge"])],
    )
    card.add("Base model", f"`{base_model}`" if base_model else None)
    for name, record in records.items():
        card.add(name, "```json\n" + json.dumps(record, indent=1, default=str) + "\n```")
    return card


# --- rendering ---------------------------------------------------------------------------------


def load_template(path: str | os.PathLike | None) -> str:
    """A user's card template (Jinja, with card_data, title, summary, sections), checked now so
    that a broken one stops a command before it writes anything."""
    if path is None:
        return DEFAULT_TEMPLATE
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SafeGeneError(f"cannot read the card template {path}: {exc}") from None
    import jinja2

    try:
        jinja2.Environment().parse(text)
    except jinja2.TemplateSyntaxError as exc:
        raise SafeGeneError(f"card template {path}, line {exc.lineno}: {exc.message}") from None
    return text


def render(card: Card, template: str | None = None) -> str:
    """The README.md text: huggingface_hub's ModelCard from the template and the metadata."""
    import jinja2
    from huggingface_hub import ModelCard, ModelCardData

    data = ModelCardData(base_model=card.base_model, library_name=card.library_name, tags=card.tags)
    try:
        return str(
            ModelCard.from_template(
                data,
                template_str=template or DEFAULT_TEMPLATE,
                title=card.title,
                summary=card.summary,
                sections=card.sections,
            )
        )
    except jinja2.TemplateError as exc:
        line = getattr(exc, "lineno", None)
        raise SafeGeneError(
            f"card template error{f' (line {line})' if line else ''}: {exc}"
        ) from None


def write_card(directory: str | os.PathLike, card: Card, template: str | None = None) -> Path:
    """README.md in `directory` (inside an atomic output: it appears with the rest)."""
    path = Path(directory) / CARD_FILE
    path.write_text(render(card, template), encoding="utf-8")
    return path
