import json

import pytest

from safegene.errors import SafeGeneError
from safegene.evaluate.data import load_data, zoo_split_path


def write(path, text, mode="w"):
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_jsonl_with_answers_and_hash(tmp_path):
    p = write(
        tmp_path / "t.jsonl",
        '{"prompt": "what is 2", "answer": 2}\n\n{"prompt": "x", "response": "y"}\n',
    )
    ds = load_data(p, "task")
    assert ds.prompts == ["what is 2", "x"] and ds.answers == ["2", "y"]
    assert ds.match == "normalised" and len(ds.sha256) == 64 and ds.name == "t"
    assert ds.describe()["n"] == 2 and ds.describe()["format"] == "jsonl"
    h = load_data(p, "harmful")
    assert h.match is None


def test_numeric_auto_match(tmp_path):
    p = write(
        tmp_path / "n.jsonl", '{"prompt": "a", "answer": "3"}\n{"prompt": "b", "answer": "4.5"}\n'
    )
    assert load_data(p, "task").match == "numeric"
    assert load_data(p, "task", match="exact").match == "exact"


def test_csv_default_and_named_columns(tmp_path):
    p = write(tmp_path / "d.csv", 'prompt,answer\n"hello, there",1\nbye,2\n')
    ds = load_data(p, "task")
    assert ds.prompts == ["hello, there", "bye"] and ds.answers == ["1", "2"]
    q = write(tmp_path / "q.csv", "question,label\nis it good,positive\n")
    ds = load_data(q, "task", prompt_column="question", answer_column="label")
    assert ds.prompts == ["is it good"] and ds.answers == ["positive"]


def test_text_one_prompt_per_line(tmp_path):
    p = write(tmp_path / "h.txt", "first prompt\n\n  second prompt  \n")
    assert load_data(p, "harmful").prompts == ["first prompt", "second prompt"]


def test_limit(tmp_path):
    p = write(tmp_path / "h.txt", "a\nb\nc\n")
    assert load_data(p, "harmful", limit=2).prompts == ["a", "b"]


@pytest.mark.parametrize(
    "name,content,split,kwargs,message",
    [
        ("e.jsonl", "", "harmful", {}, "empty"),
        ("e.txt", "  \n\n", "harmful", {}, "empty"),
        (
            "m.jsonl",
            '{"prompt": "a"}\n{"prompt": "b"\n',
            "harmful",
            {},
            r"m.jsonl:2: malformed JSON",
        ),
        ("l.jsonl", '["a"]\n', "harmful", {}, r"l.jsonl:1: expected a JSON object"),
        ("c.jsonl", '{"text": "a"}\n', "harmful", {}, r"c.jsonl:1: no 'prompt' column"),
        ("c.csv", "text\nhello\n", "harmful", {}, r"no 'prompt' column"),
        (
            "c2.csv",
            "prompt\nhello\n",
            "harmful",
            {"prompt_column": "question"},
            r"no 'question' column",
        ),
        (
            "a.jsonl",
            '{"prompt": "a", "answer": "1"}\n{"prompt": "b"}\n',
            "task",
            {},
            r"needs an \"answer\".*row 2",
        ),
        ("a.txt", "a\n", "task", {}, "task data needs answers"),
        ("z.jsonl", '{"prompt": ""}\n', "harmful", {}, "empty or not text"),
        ("b.jsonl", b'{"prompt": "caf\xe9"}\n', "harmful", {}, "not UTF-8"),
        (
            "x.jsonl",
            '{"prompt": "a", "answer": "x"}\n',
            "task",
            {"match": "numeric"},
            "numeric answers",
        ),
        ("y.jsonl", '{"prompt": "a"}\n', "harmful", {"match": "fuzzy"}, "unknown match method"),
        ("w.jsonl", '{"prompt": "a"}\n', "evil", {}, "unknown split"),
    ],
)
def test_bad_inputs(tmp_path, name, content, split, kwargs, message):
    p = write(tmp_path / name, content)
    with pytest.raises(SafeGeneError, match=message) as exc:
        load_data(p, split, **kwargs)
    assert "\n" not in str(exc.value)


def test_missing_file(tmp_path):
    with pytest.raises(SafeGeneError, match="data file not found"):
        load_data(tmp_path / "nope.jsonl", "harmful")


def test_hf_id_without_datasets_or_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SafeGeneError, match="offline"):
        load_data("hf:walledai/AdvBench", "harmful")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    import importlib.util

    if importlib.util.find_spec("datasets") is None:
        with pytest.raises(SafeGeneError, match="datasets"):
            load_data("walledai/AdvBench", "harmful")


def test_zoo_splits_by_name(tmp_path):
    (tmp_path / "data").mkdir()
    write(tmp_path / "data" / "harmful_test.jsonl", '{"prompt": "h"}\n')
    write(tmp_path / "data" / "arith_test.jsonl", '{"prompt": "1+1", "answer": "2"}\n')
    write(
        tmp_path / "zoo.json",
        json.dumps(
            {
                "models": {},
                "data": {
                    "harmful_test": "data/harmful_test.jsonl",
                    "tasks": {"arith": {"test": "data/arith_test.jsonl"}},
                },
            }
        ),
    )
    h = load_data("harmful_test", "harmful", zoo=tmp_path)
    assert h.prompts == ["h"] and h.name == "harmful_test" and h.meta["zoo_split"] == "harmful_test"
    t = load_data("task:arith", "task", zoo=tmp_path)
    assert t.answers == ["2"] and t.match == "numeric"
    with pytest.raises(SafeGeneError, match="no task 'sql'"):
        load_data("task:sql", "task", zoo=tmp_path)
    with pytest.raises(SafeGeneError, match="no split 'benign_test'"):
        zoo_split_path(tmp_path, "benign_test")
    with pytest.raises(SafeGeneError, match="no zoo.json"):
        load_data("harmful_test", "harmful", zoo=tmp_path / "data")


def test_hf_dataset_through_datasets(monkeypatch):
    """The `datasets` path, with a stand-in module (no network here)."""
    import sys
    import types

    calls = {}

    class FakeDS(list):
        _fingerprint = "abc123"

    def load_dataset(name, split):
        calls["args"] = (name, split)
        if name == "missing/set":
            raise FileNotFoundError("Couldn't find dataset missing/set on the Hub")
        return FakeDS(
            [{"goal": "do a bad thing", "target": "Sure"}, {"goal": "another", "target": "Sure"}]
        )

    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    ds = load_data("hf:walledai/AdvBench:train", "harmful", prompt_column="goal")
    assert calls["args"] == ("walledai/AdvBench", "train")
    assert ds.prompts == ["do a bad thing", "another"] and ds.sha256 == "abc123"
    assert ds.name == "walledai/AdvBench" and ds.describe()["format"] == "hf"
    load_data("walledai/AdvBench", "harmful", prompt_column="goal")  # a bare id that is not a path
    assert calls["args"] == ("walledai/AdvBench", "test")
    with pytest.raises(
        SafeGeneError, match="cannot load the Hugging Face dataset 'missing/set'.*offline"
    ):
        load_data("hf:missing/set", "harmful")
