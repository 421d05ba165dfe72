import json
import sys

import pytest

from safegene.errors import SafeGeneError
from safegene.evaluate.data import load_data, parse_hf_source, zoo_split_path


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


def test_hf_dataset_saved_to_disk(tmp_path):
    """`hf:DIR[:split]` of a `save_to_disk` DatasetDict: the split asked for, "test" by
    default, and a missing split named with the ones that exist."""
    import datasets

    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list([{"goal": f"bad {i}"} for i in range(3)]),
            "test": datasets.Dataset.from_list([{"goal": "worse"}, {"goal": "worst"}]),
        }
    ).save_to_disk(str(tmp_path / "advbench"))
    src = f"hf:{tmp_path / 'advbench'}"
    ds = load_data(src, "harmful", prompt_column="goal")
    assert ds.prompts == ["worse", "worst"] and ds.name == "advbench"
    assert ds.describe()["format"] == "hf" and ds.meta["hf_split"] == "test" and ds.sha256
    assert load_data(src + ":train", "harmful", prompt_column="goal").prompts[0] == "bad 0"
    with pytest.raises(SafeGeneError, match=r"no split 'validation' \(it has train, test\)"):
        load_data(src + ":validation", "harmful", prompt_column="goal")


def test_hf_dataset_of_local_data_files(tmp_path):
    """`load_dataset` on a directory of data files; its only split is the default."""
    (tmp_path / "arith").mkdir()
    write(
        tmp_path / "arith" / "train.jsonl",
        "".join(json.dumps({"prompt": f"{i}+1", "answer": str(i + 1)}) + "\n" for i in range(4)),
    )
    ds = load_data(f"hf:{tmp_path / 'arith'}", "task")
    assert ds.answers == ["1", "2", "3", "4"] and ds.match == "numeric"
    assert ds.meta["hf_split"] == "train"
    with pytest.raises(SafeGeneError, match="no split 'test'"):
        load_data(f"hf:{tmp_path / 'arith'}:test", "task")


def test_hf_source_syntax_and_missing_package(monkeypatch):
    assert parse_hf_source("org/set") == ("org/set", None, None)
    assert parse_hf_source("org/set:train") == ("org/set", None, "train")
    assert parse_hf_source("org/set:main:train") == ("org/set", "main", "train")
    with pytest.raises(SafeGeneError, match="hf:NAME"):
        load_data("hf:org/set::", "harmful")
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if not installed
    with pytest.raises(SafeGeneError, match=r"safegene\[hf\]"):
        load_data("hf:walledai/AdvBench", "harmful")


def test_hf_id_offline_and_not_cached(monkeypatch, tmp_path):
    import datasets
    import huggingface_hub.constants

    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(var, "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "ds-cache")
    with pytest.raises(SafeGeneError, match="cannot load hf:walledai/AdvBench.*offline"):
        load_data("hf:walledai/AdvBench", "harmful")
