"""Reports: `report.json` (every number, inputs with hashes, settings, judges, versions),
`samples.jsonl` (one row per generation), `report.md` (tables) and `safety_utility.png`.

`build_report` is pure (samples in, dict out) except for hashing model files; `write_report`
writes all four files into a temporary directory beside the output and renames it into place.
Everything but the `run` section (time stamp, process count, wall time) is the same for the same
inputs, whatever the number of processes.
"""

from __future__ import annotations

import json
import platform
from collections import defaultdict
from pathlib import Path

from safegene.evaluate.data import EvalSet
from safegene.evaluate.judges import Judge
from safegene.evaluate.metrics import agreement, rate
from safegene.io import atomic_output_dir, hash_model_dir

REPORT_FORMAT = "safegene-eval/1"
FILES = ("report.json", "samples.jsonl", "report.md", "safety_utility.png")


# --- hashing and versions ------------------------------------------------------------------------


def _hash(path: str | Path | None) -> str | None:
    """The full content hash of a model or adapter directory (None when there is none)."""
    if path is None or not Path(path).is_dir():
        return None
    return hash_model_dir(path, full=True)


def versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("safegene", "torch", "transformers", "peft", "accelerate", "tokenizers", "vllm"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            if pkg == "safegene":
                from safegene import __version__

                out[pkg] = __version__
    return out


# --- the numbers ---------------------------------------------------------------------------------


def _flat(r: dict, key: str) -> dict:
    return {key: r["rate"], f"{key}_ci": r["ci"], f"{key}_n": r["n"]}


def model_metrics(samples: list, judges: list[dict], *, n_boot: int, seed: int) -> dict:
    """The numbers of one model's samples (see build_report for the layout)."""
    names = [j["name"] for j in judges]
    refusal = [j["name"] for j in judges if j.get("detects_refusal")]
    by_split = defaultdict(list)
    for s in samples:
        by_split[s.split].append(s)
    m: dict = {
        "harmful_rate": {},
        "over_refusal": {},
        "benign_flagged": {},
        "task_accuracy": None,
        "by_dataset": [],
        "agreement": {},
    }
    kw = dict(n_boot=n_boot, seed=seed)
    harmful, benign, task = (
        by_split.get("harmful", []),
        by_split.get("benign", []),
        by_split.get("task", []),
    )
    if harmful:
        m["harmful_rate"] = {j: rate([s.verdicts[j] for s in harmful], **kw) for j in names}
        m["agreement"]["harmful"] = agreement({j: [s.verdicts[j] for s in harmful] for j in names})
    if benign:
        m["over_refusal"] = {j: rate([not s.verdicts[j] for s in benign], **kw) for j in refusal}
        m["benign_flagged"] = {
            j: rate([s.verdicts[j] for s in benign], **kw) for j in names if j not in refusal
        }
        m["agreement"]["benign"] = agreement({j: [s.verdicts[j] for s in benign] for j in names})
    if task:
        m["task_accuracy"] = rate([s.correct for s in task], **kw)
    datasets = []
    for s in samples:
        if (s.split, s.dataset) not in datasets:
            datasets.append((s.split, s.dataset))
    for split, name in datasets:
        rows = [s for s in samples if s.split == split and s.dataset == name]
        entry = {"split": split, "dataset": name, "n": len(rows)}
        if split == "harmful":
            entry["harmful_rate"] = {j: rate([s.verdicts[j] for s in rows], **kw) for j in names}
        elif split == "benign":
            entry["over_refusal"] = {
                j: rate([not s.verdicts[j] for s in rows], **kw) for j in refusal
            }
        else:
            entry["task_accuracy"] = rate([s.correct for s in rows], **kw)
        m["by_dataset"].append(entry)
    m["by_category"] = _by_category(samples, names, refusal, kw)
    tasks = [d for d in m["by_dataset"] if d["split"] == "task"]
    # The headline numbers (what `compare` tabulates): the primary judge (the first one) for the
    # harmful rate, the first refusal-detecting judge for over-refusal.
    primary = names[0] if names else None
    empty = {"rate": None, "ci": None, "n": 0}
    summary = {"judge": primary, "refusal_judge": refusal[0] if refusal else None}
    summary.update(
        _flat(m["harmful_rate"].get(primary, empty) if harmful else empty, "harmful_rate")
    )
    summary.update(
        _flat(m["over_refusal"][refusal[0]] if benign and refusal else empty, "over_refusal")
    )
    # One task: its accuracy. Several: no pooled number (tasks differ in size and difficulty);
    # each task's accuracy is in `task_accuracy_by_task` and gets its own row in report.md.
    summary.update(
        _flat((m["task_accuracy"] if len(tasks) <= 1 else None) or empty, "task_accuracy")
    )
    summary["task_accuracy_by_task"] = {d["dataset"]: d["task_accuracy"] for d in tasks}
    m["summary"] = summary
    return m


def _by_category(samples: list, names: list[str], refusal: list[str], kw: dict) -> list[dict]:
    """The metric of each (split, data set, category), for rows whose data has a category."""
    keys: list[tuple] = []
    for s in samples:
        key = (s.split, s.dataset, s.category)
        if s.category is not None and key not in keys:
            keys.append(key)
    out = []
    for split, dataset, category in keys:
        rows = [
            s for s in samples if (s.split, s.dataset, s.category) == (split, dataset, category)
        ]
        entry = {"split": split, "dataset": dataset, "category": category, "n": len(rows)}
        if split == "harmful":
            entry["harmful_rate"] = {j: rate([s.verdicts[j] for s in rows], **kw) for j in names}
        elif split == "benign":
            entry["over_refusal"] = {
                j: rate([not s.verdicts[j] for s in rows], **kw) for j in refusal
            }
        else:
            entry["task_accuracy"] = rate([s.correct for s in rows], **kw)
        out.append(entry)
    return out


EXAMPLES_PER_SPLIT = 3


def examples(samples: list, per_split: int = EXAMPLES_PER_SPLIT) -> list[dict]:
    """The first `per_split` generations of each (model, split), for a person to read."""
    taken: dict = defaultdict(int)
    out = []
    for s in samples:
        if taken[(s.model, s.split)] < per_split:
            taken[(s.model, s.split)] += 1
            out.append(s.to_json())
    return out


def build_report(
    samples: list,
    datasets: list[EvalSet],
    judges: list[Judge],
    settings,
    *,
    models: list | None = None,
    extra: dict | None = None,
    run: dict | None = None,
) -> dict:
    """The report dict: `models` (per model: `summary` with harmful_rate / over_refusal /
    task_accuracy and their `_ci`, `_n`; rates per judge; per data set; judge agreement),
    `inputs` (data sets with sha256, models with content hashes), settings, judges and versions."""
    judge_info = []
    for j in judges:
        d = j.describe()
        d.update(j.stats())
        judge_info.append(d)
    order: list[str] = []
    for s in samples:
        if s.model not in order:
            order.append(s.model)
    specs = {m.name: m for m in (models or [])}
    model_entries, input_models = [], []
    for name in order:
        rows = [s for s in samples if s.model == name]
        entry = {"name": name}
        entry.update(model_metrics(rows, judge_info, n_boot=settings.n_boot, seed=settings.seed))
        model_entries.append(entry)
        spec = specs.get(name)
        info = spec.describe() if spec is not None else {"name": name}
        if spec is not None and settings.hash_models:
            info["sha256"] = _hash(spec.path) if spec.model is None else None
            info["adapter_sha256"] = _hash(spec.adapter)
        input_models.append(info)
    report = {
        "format": REPORT_FORMAT,
        "models": model_entries,
        "primary_judge": judge_info[0]["name"] if judge_info else None,
        "judges": judge_info,
        "inputs": {"datasets": [d.describe() for d in datasets], "models": input_models},
        "generation": settings.generation.describe(),
        "settings": settings.describe(),
        "versions": versions(),
        "examples": examples(samples),
    }
    if extra:
        report.update(extra)
    report["run"] = run or {}
    return report


# --- writing -------------------------------------------------------------------------------------


def _pct(r: dict | None) -> str:
    if not r or r.get("rate") is None:
        return "–"
    ci = r.get("ci")
    ci_s = f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else ""
    return f"{100 * r['rate']:.1f}%{ci_s} (n={r['n']})"


def _quote(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _metric(d: dict, primary: str | None, refusal: list[str]) -> str:
    if d["split"] == "task":
        return _pct(d["task_accuracy"])
    if d["split"] == "harmful":
        return _pct(d["harmful_rate"].get(primary))
    return _pct(d["over_refusal"].get(refusal[0])) if refusal else "–"


def render_markdown(report: dict) -> str:
    judges = [j["name"] for j in report["judges"]]
    refusal = [j["name"] for j in report["judges"] if j.get("detects_refusal")]
    primary = report.get("primary_judge")
    lines = [
        "# SafeGene evaluation",
        "",
        f"Rates in percent with the bootstrap 95% confidence interval and n. Harmful rate: "
        f"judge `{primary}`; over-refusal: judge `{refusal[0] if refusal else '–'}`.",
        "",
        "| model | harmful rate ↓ | over-refusal ↓ | task accuracy ↑ |",
        "|---|---|---|---|",
    ]
    for m in report["models"]:
        s = m["summary"]
        cells = [
            _pct({"rate": s[k], "ci": s[f"{k}_ci"], "n": s[f"{k}_n"]})
            for k in ("harmful_rate", "over_refusal", "task_accuracy")
        ]
        by_task = s.get("task_accuracy_by_task") or {}
        if len(by_task) <= 1:
            lines.append(f"| {m['name']} | " + " | ".join(cells) + " |")
        for task, acc in by_task.items() if len(by_task) > 1 else ():  # one row per task
            lines.append(f"| {m['name']} ({task}) | {cells[0]} | {cells[1]} | {_pct(acc)} |")
    if any(m["harmful_rate"] for m in report["models"]):
        lines += [
            "",
            "## Harmful rate by judge",
            "",
            "| model | " + " | ".join(judges) + " |",
            "|---|" + "---|" * len(judges),
        ]
        for m in report["models"]:
            if m["harmful_rate"]:
                lines.append(
                    f"| {m['name']} | "
                    + " | ".join(_pct(m["harmful_rate"].get(j)) for j in judges)
                    + " |"
                )
    if any(m["over_refusal"] or m["benign_flagged"] for m in report["models"]):
        lines += [
            "",
            "## Benign look-alikes by judge",
            "",
            "Refusal judges: share refused (over-refusal). Other judges: share flagged harmful.",
            "",
            "| model | " + " | ".join(judges) + " |",
            "|---|" + "---|" * len(judges),
        ]
        for m in report["models"]:
            if m["over_refusal"] or m["benign_flagged"]:
                cells = [
                    _pct(m["over_refusal"].get(j) or m["benign_flagged"].get(j)) for j in judges
                ]
                lines.append(f"| {m['name']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Per data set",
        "",
        "| model | split | data set | metric |",
        "|---|---|---|---|",
    ]
    for m in report["models"]:
        for d in m["by_dataset"]:
            if d["split"] == "task":
                val = _pct(d["task_accuracy"])
            elif d["split"] == "harmful":
                val = _pct(d["harmful_rate"].get(primary))
            else:
                val = _pct(d["over_refusal"].get(refusal[0])) if refusal else "–"
            lines.append(f"| {m['name']} | {d['split']} | {d['dataset']} | {val} |")
    if any(m.get("by_category") for m in report["models"]):
        lines += [
            "",
            "## Per category",
            "",
            "| model | split | data set | category | n | metric |",
            "|---|---|---|---|---|---|",
        ]
        for m in report["models"]:
            for d in m.get("by_category") or []:
                lines.append(
                    f"| {m['name']} | {d['split']} | {d['dataset']} | {d['category']} | {d['n']} "
                    f"| {_metric(d, primary, refusal)} |"
                )
    if len(judges) > 1:
        lines += [
            "",
            "## Judge agreement",
            "",
            "| model | split | judges | n | agreement | Cohen's κ |",
            "|---|---|---|---|---|---|",
        ]
        for m in report["models"]:
            for split, pairs in m["agreement"].items():
                for p in pairs:
                    ag = "–" if p["agreement"] is None else f"{100 * p['agreement']:.1f}%"
                    kappa = "–" if p["kappa"] is None else f"{p['kappa']:.2f}"
                    lines.append(
                        f"| {m['name']} | {split} | {' vs '.join(p['judges'])} | {p['n']} | {ag} "
                        f"| {kappa} |"
                    )
    if report.get("examples"):
        lines += ["", "## Example generations", ""]
        lines.append(f"The first {EXAMPLES_PER_SPLIT} of each split (all in samples.jsonl).")
        for e in report["examples"]:
            if e["split"] == "task":
                verdict = f"answer {e['answer']!r}, {'correct' if e['correct'] else 'wrong'}"
            else:
                flagged = (e.get("verdicts") or {}).get(primary)
                verdict = f"`{primary}`: {'harmful' if flagged else 'safe'}"
            lines += [
                "",
                f"**{e['model']}**, {e['split']} ({e['dataset']} #{e['index']}; {verdict})",
                "",
                f"> {_quote(e['prompt'])}",
                ">",
                f"> → {_quote(e['generation'])}",
            ]
    lines += [
        "",
        "## Inputs",
        "",
        "| split | name | source | n | sha256 |",
        "|---|---|---|---|---|",
    ]
    for d in report["inputs"]["datasets"]:
        lines.append(
            f"| {d['split']} | {d['name']} | {d['source']} | {d['n']} | "
            f"{(d.get('sha256') or '–')[:16]} |"
        )
    lines += ["", "| model | path | adapter | sha256 |", "|---|---|---|---|"]
    for m in report["inputs"]["models"]:
        lines.append(
            f"| {m['name']} | {m.get('path') or '(in memory)'} | {m.get('adapter') or '–'} | "
            f"{(m.get('sha256') or '–')[:16]} |"
        )
    g = report["generation"]
    lines += [
        "",
        "## Settings",
        "",
        f"Generation: {'sampling' if g['do_sample'] else 'greedy'}, "
        f"max_new_tokens={g['max_new_tokens']}, "
        f"batch_size={g['batch_size']}, seed={g['seed']}"
        + (f", temperature={g['temperature']}, top_p={g['top_p']}" if g["do_sample"] else "")
        + f"; backend {report['settings']['backend']}.",
        "Judges: "
        + "; ".join(
            f"`{j['name']}` ({j.get('kind', '')}"
            + (
                f"; {j['unparsed']} answers neither safe nor unsafe, counted as safe"
                if j.get("unparsed")
                else ""
            )
            + ")"
            for j in report["judges"]
        )
        + ".",
        "",
    ]
    return "\n".join(lines)


def plot_safety_utility(report: dict, path: str | Path) -> None:
    """Harmful rate vs task accuracy, one point per model, 95% CIs as error bars."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=120)
    both = [
        m
        for m in report["models"]
        if m["summary"]["harmful_rate"] is not None and m["summary"]["task_accuracy"] is not None
    ]

    def err(value, ci):
        return [[value - ci[0]], [ci[1] - value]] if ci else None

    markers = "osD^vP*Xh<>p"
    if both:
        seen: dict = {}
        for k, m in enumerate(both):
            s = m["summary"]
            x, y = 100 * s["task_accuracy"], 100 * s["harmful_rate"]
            ci_x = [100 * c for c in s["task_accuracy_ci"]] if s["task_accuracy_ci"] else None
            ci_y = [100 * c for c in s["harmful_rate_ci"]] if s["harmful_rate_ci"] else None
            ax.errorbar(
                [x],
                [y],
                xerr=err(x, ci_x),
                yerr=err(y, ci_y),
                fmt=markers[k % len(markers)],
                capsize=3,
                label=m["name"],
                alpha=0.85,
            )
            at = (round(x, 1), round(y, 1))  # models on the same point: stack their labels
            ax.annotate(
                m["name"],
                (x, y),
                textcoords="offset points",
                xytext=(6, 4 - 10 * seen.get(at, 0)),
                fontsize=8,
            )
            seen[at] = seen.get(at, 0) + 1
        ax.set_xlabel("task accuracy (%) →")
        ax.set_xlim(-5, 105)
        ax.legend(fontsize=7, loc="best")
    else:  # no task data: the harmful rate per model
        ms = [m for m in report["models"] if m["summary"]["harmful_rate"] is not None]
        for k, m in enumerate(ms):
            s = m["summary"]
            y = 100 * s["harmful_rate"]
            ci = [100 * c for c in s["harmful_rate_ci"]] if s["harmful_rate_ci"] else None
            ax.errorbar([k], [y], yerr=err(y, ci), fmt="o", capsize=3)
        ax.set_xticks(range(len(ms)), [m["name"] for m in ms], rotation=30, ha="right", fontsize=8)
        ax.set_xlabel("model (no task data)")
    ax.set_ylabel(f"harmful rate (%, judge {report.get('primary_judge')}) ↓")
    ax.set_ylim(-5, 105)
    ax.grid(alpha=0.3)
    ax.set_title("Safety–utility (95% bootstrap CIs)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(report: dict, samples: list, out_dir: str | Path, *, force: bool = False) -> Path:
    """Write the four files into a temporary directory beside `out_dir`, then rename it into place
    (an existing `out_dir` only with force). An interrupted run leaves nothing at `out_dir`."""
    with atomic_output_dir(out_dir, force) as tmp:
        (tmp / "report.json").write_text(
            json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        with open(tmp / "samples.jsonl", "w", encoding="utf-8") as f:
            for s in samples:
                f.write(json.dumps(s.to_json(), ensure_ascii=False) + "\n")
        (tmp / "report.md").write_text(render_markdown(report), encoding="utf-8")
        plot_safety_utility(report, tmp / "safety_utility.png")
    return Path(out_dir).resolve()
