"""benchmarks/bench_split_shift.py: the prompt sets are the parts they name, and a run on the
micro zoo measures every task model under both core schemes."""

import importlib.util
import json
from pathlib import Path

from safegene.zoo import concepts as C
from safegene.zoo import data as D

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_split_shift.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_split_shift", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_prompt_sets_ask_for_their_concepts_in_their_cores():
    bench = _bench()
    for concepts, cores in (("calib", ("test",)), ("test", ("calib", "test"))):
        prompts = bench.prompt_set(concepts, cores, 50)
        allowed = C.templates_of([c for p in cores for c in C.split_part(C.REQUEST_CORES, p)])
        actions = D.harmful_actions(concepts)
        for prompt in prompts:  # exactly one of those templates around one of those actions
            assert any(prompt == t.format(a=a) for t in allowed for a in actions), prompt


def test_a_run_measures_every_task_model_under_both_schemes(micro_zoo, tmp_path):
    out = tmp_path / "shift.json"
    assert _bench().main([str(micro_zoo), "--prompts", "4", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    zoo = json.loads((micro_zoo / "zoo.json").read_text())
    tasks = {n for n, e in zoo["models"].items() if e["role"] == "task"}
    assert {r["model"] for r in result["rows"]} == tasks
    for r in result["rows"]:
        assert len(r["rates"]) == 4 and all(0 <= v <= 1 for v in r["rates"].values())
    assert set(result["summary"]) == set(_bench().SCHEMES)
