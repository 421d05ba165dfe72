"""Bad input to `safegene eval`: one line on stderr, exit code 2, nothing written."""

import json

import pytest
from tinychat import make_model_dir

from safegene.cli import main


@pytest.fixture(scope="module")
def bare_model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("bare") / "model", chat_template=None)


def run(capsys, argv):
    rc = main(argv)
    err = capsys.readouterr().err
    return rc, err


@pytest.mark.parametrize(
    "case",
    [
        "empty",
        "malformed",
        "unknown_judge",
        "missing_column",
        "no_answers",
        "missing_model",
        "guard_without_model",
        "no_data",
        "bad_processes",
        "bad_template_file",
        "unknown_zoo_split",
        "not_utf8",
    ],
)
def test_bad_input_is_one_line_exit_2(case, tiny_model_dir, tiny_data, tmp_path, capsys):
    harmful = str(tiny_data / "harmful.jsonl")
    args = [
        "eval",
        "--model",
        str(tiny_model_dir),
        "--device",
        "cpu",
        "--no-progress",
        "--out",
        str(tmp_path / "out"),
    ]
    if case == "empty":
        (tmp_path / "e.jsonl").write_text("")
        args += ["--harmful", str(tmp_path / "e.jsonl")]
        expect = "empty"
    elif case == "malformed":
        (tmp_path / "m.jsonl").write_text('{"prompt": "a"}\n{oops}\n')
        args += ["--harmful", str(tmp_path / "m.jsonl")]
        expect = "m.jsonl:2: malformed JSON"
    elif case == "unknown_judge":
        args += ["--harmful", harmful, "--judge", "keyword", "llm-as-judge"]
        expect = "unknown judge 'llm-as-judge'"
    elif case == "missing_column":
        args += ["--harmful", harmful, "--prompt-column", "question"]
        expect = "no 'question' column"
    elif case == "no_answers":
        args += ["--task", harmful]
        expect = 'needs an "answer"'
    elif case == "missing_model":
        args[2] = str(tmp_path / "nope")
        args += ["--harmful", harmful]
        expect = "model directory not found"
    elif case == "guard_without_model":
        args += ["--harmful", harmful, "--judge", "guard"]
        expect = "--guard-model"
    elif case == "no_data":
        expect = "nothing to evaluate"
    elif case == "bad_processes":
        args += ["--harmful", harmful, "--num-processes", "0"]
        expect = "at least 1"
    elif case == "bad_template_file":
        args += ["--harmful", harmful, "--template", str(tmp_path / "none.jinja")]
        expect = "chat template file not found"
    elif case == "unknown_zoo_split":
        (tmp_path / "zoo").mkdir()
        (tmp_path / "zoo" / "zoo.json").write_text(
            json.dumps({"models": {}, "data": {"tasks": {}}})
        )
        args += ["--zoo", str(tmp_path / "zoo"), "--task", "task:sql"]
        expect = "no task 'sql'"
    elif case == "not_utf8":
        (tmp_path / "b.txt").write_bytes(b"caf\xe9 au lait\n")
        args += ["--harmful", str(tmp_path / "b.txt")]
        expect = "not UTF-8"
    rc, err = run(capsys, args)
    assert rc == 2, err
    assert err.count("\n") == 1 and err.startswith("safegene: error: ") and expect in err, err
    assert not (tmp_path / "out").exists()


def test_model_without_chat_template(bare_model_dir, tiny_data, tmp_path, capsys):
    base = [
        "eval",
        "--model",
        str(bare_model_dir),
        "--harmful",
        str(tiny_data / "harmful.jsonl"),
        "--device",
        "cpu",
        "--no-progress",
        "--max-new-tokens",
        "3",
        "--bootstrap",
        "100",
    ]
    rc, err = run(capsys, base + ["--out", str(tmp_path / "a")])
    assert rc == 2 and "no chat template" in err and "--template" in err and err.count("\n") == 1
    tpl = tmp_path / "chat.jinja"
    tpl.write_text("{% for m in messages %}<|user|> {{ m['content'] }} {% endfor %}<|assistant|> ")
    rc, err = run(capsys, base + ["--template", str(tpl), "--out", str(tmp_path / "b")])
    assert rc == 0, err
    rep = json.loads((tmp_path / "b" / "report.json").read_text())
    assert rep["settings"]["template"] == str(tpl) and rep["generation"]["template"] == "custom"


def test_existing_out_needs_force(tiny_model_dir, tiny_data, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    rc, err = run(
        capsys,
        [
            "eval",
            "--model",
            str(tiny_model_dir),
            "--harmful",
            str(tiny_data / "harmful.jsonl"),
            "--out",
            str(tmp_path / "out"),
        ],
    )
    assert rc == 2 and "--force" in err


def test_usage_error_is_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--harmful", "x"])
    assert exc.value.code == 2
