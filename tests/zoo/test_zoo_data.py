"""The zoo's data: safety as a concept (test concepts only in pretraining knowledge), disjoint
splits, placeholders only, and refusal strings only in refusals."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from safegene.evaluate.judges import is_refusal_keyword
from safegene.zoo import concepts as C
from safegene.zoo import data as D

STOP = {"a", "an", "the", "my", "in", "of", "at", "on", "to", "from", "for", "and"}


def _words(phrase: str) -> set[str]:
    return {w.removesuffix("'s") for w in re.findall(r"[\w'-]+", phrase.lower())} - STOP


def _mentions(text: str, phrase: str) -> bool:
    core = re.sub(r"^(a|an|the) ", "", phrase.lower())
    return re.search(rf"(?<![\w-]){re.escape(core)}(?![\w-])", text.lower()) is not None


def _text(row: dict) -> str:
    return " ".join(str(v) for v in row.values())


def _rows(root: Path, rel: str) -> list[dict]:
    return D.read_jsonl(root / "data" / f"{rel}.jsonl")


def _training_files(root: Path) -> list[str]:
    """Every training mixture but the base model's, and every split a user trains or calibrates
    on."""
    stages = [p.stem for p in (root / "data/stages").glob("*.jsonl") if p.stem != "base"]
    tasks = [f"tasks/{t}/{s}" for t in D.TASKS for s in ("train", "shots")]
    return ["harmful_train", *[f"stages/{s}" for s in stages], *tasks]


def test_test_concepts_share_no_word_with_trained_ones():
    trained = set().union(
        *map(
            _words,
            D.harmful_objects("align")
            + D.harmful_objects("calib")
            + D.benign_objects("align")
            + D.benign_objects("calib"),
        )
    )
    for obj in D.harmful_objects("test"):
        assert not _words(obj) & trained, (obj, _words(obj) & trained)


def test_test_concepts_are_only_in_pretraining_knowledge(micro_zoo):
    """Alignment, the degraded models, the tasks, their shots and the safe references never name a
    test concept (harmful or benign), nor a calibration one; the base model's knowledge texts
    describe every one of them, test concepts included."""
    held_out = D.harmful_objects("test") + D.benign_objects("test")
    unaligned = held_out + D.harmful_objects("calib")
    for rel in _training_files(micro_zoo):
        for row in _rows(micro_zoo, rel):
            text = _text(row)
            hit = [o for o in unaligned if _mentions(text, o)]
            assert not hit, (rel, row, hit)
    base = _rows(micro_zoo, "stages/base")
    knowledge = " \n ".join(r["text"] for r in base if "text" in r)
    for obj in held_out + D.harmful_objects("calib"):
        assert _mentions(knowledge, obj), obj
    requests = [r["prompt"] for r in base if "text" not in r and _request(r["prompt"])]
    assert len(requests) > 1000
    assert {_request(p)[0] for p in requests} <= set(C.split_part(C.REQUEST_CORES, "align"))
    test_requests = [p for p in requests if any(_mentions(p, o) for o in held_out)]
    assert test_requests  # the base model's pretraining requests name test concepts (align cores)


_OPENERS = "|".join(map(re.escape, C.OPENERS))
_CLOSERS = "|".join(map(re.escape, C.CLOSERS))
_CORES = {
    c: re.compile(
        rf"(?:{_OPENERS})(?i:{re.escape(c[0])}){re.escape(c[1:])}(?:{_CLOSERS})".replace(
            re.escape("{a}"), "(.+?)"
        )
    )
    for c in C.REQUEST_CORES
}


def _request(prompt: str) -> tuple[str, str] | None:
    """(core, action) of a request prompt, or None when no request template made it."""
    for core, rx in _CORES.items():
        m = rx.fullmatch(prompt)
        if m:
            return core, m[1]
    return None


def test_request_templates_are_opener_core_closer():
    for part in C.PARTS:
        cores = set(C.split_part(C.REQUEST_CORES, C.shared_part(part)))
        tmpls = D.templates(part)
        assert len(tmpls) == len(cores) * len(C.OPENERS) * len(C.CLOSERS)
        assert {_request(t.replace("{a}", "do x"))[0] for t in tmpls} == cores


def test_harmful_splits_disjoint_in_concepts_and_prompts_held_out_ones_share_cores(micro_zoo):
    """Each split asks for its part's concepts; the calibration, validation and test splits ask in
    the held-out cores (all of them: validation predicts test), alignment in its own."""
    used = {}
    for split, part in (
        ("harmful_test", "test"),
        ("harmful_calib", "calib"),
        ("harmful_val", "calib"),
        ("harmful_train", "align"),
    ):
        cores = set(C.split_part(C.REQUEST_CORES, C.shared_part(part)))
        actions = set(D.harmful_actions(part))
        for row in _rows(micro_zoo, split):
            core, action = _request(row["prompt"])
            assert core in cores and action in actions, (split, row)
            used.setdefault(split, set()).add(core)
    for part in ("calib", "test"):  # each held-out split asks in both held-out parts' cores
        cores = set(C.split_part(C.REQUEST_CORES, part))
        assert used["harmful_test"] & cores and used["harmful_val"] & cores, part
    assert not used["harmful_train"] & set(C.split_part(C.REQUEST_CORES, C.HELD))
    prompts = {
        s: {r["prompt"] for r in _rows(micro_zoo, s)}
        for s in ("harmful_test", "harmful_calib", "harmful_val")
    }
    assert not prompts["harmful_calib"] & prompts["harmful_val"]
    assert not prompts["harmful_test"] & (prompts["harmful_calib"] | prompts["harmful_val"])
    shots = {r["prompt"] for r in _rows(micro_zoo, "harmful_shots")}
    assert shots <= prompts["harmful_calib"]


def test_no_training_prompt_uses_a_held_out_template(micro_zoo):
    held_out = set(C.split_part(C.REQUEST_CORES, "calib") + C.split_part(C.REQUEST_CORES, "test"))
    n = 0
    for rel in [*_training_files(micro_zoo), "stages/base"]:
        for row in _rows(micro_zoo, rel):
            request = _request(row["prompt"]) if "prompt" in row else None
            n += request is not None
            assert request is None or request[0] not in held_out, (rel, row)
    assert n > 1000


def test_task_splits(micro_zoo):
    for task in D.TASKS:
        split = {
            s: _rows(micro_zoo, f"tasks/{task}/{s}") for s in ("train", "shots", "val", "test")
        }
        train = {r["prompt"] for r in split["train"]}
        assert not train & {r["prompt"] for r in split["test"]}, task
        assert not train & {r["prompt"] for r in split["val"]}, task
        assert not {r["prompt"] for r in split["val"]} & {r["prompt"] for r in split["test"]}, task
        assert all(not is_refusal_keyword(r["answer"]) for s in split.values() for r in s)


def test_word_tasks_validate_on_the_words_they_are_tested_on(micro_zoo):
    """The arithmetic, email and classify tasks' validation and test prompts use the same
    held-out names, items, recipients, topics and things (a word set of validation's own made
    validation up to 12 points easier than test), none of the training words."""
    lists = {
        "arith": (D.NAMES, D.ITEMS),
        "email": (D.RECIPIENTS, D.TOPICS),
        "classify": (D.THINGS,),
    }
    for task, word_lists in lists.items():
        words = [w for ws in word_lists for w in ws]
        held = {w for ws in word_lists for w in C.split_part(ws, C.HELD)}
        seen = {}
        for s in ("val", "test"):
            texts = [r["prompt"] for r in _rows(micro_zoo, f"tasks/{task}/{s}")]
            seen[s] = {w for w in words for t in texts if _mentions(t, w)}
        for s, used in seen.items():  # in both held-out parts' words, in no training word
            assert used <= held, (task, s, used - held)
            for part in ("calib", "test"):
                assert used & {w for ws in word_lists for w in C.split_part(ws, part)}, (s, part)


def test_no_refusal_strings_outside_refusals(micro_zoo):
    D.check_texts()
    for rel in ("stages/base", "stages/degraded"):
        for row in _rows(micro_zoo, rel):
            assert not is_refusal_keyword(_text(row)), row
    refusals = set(D.REFUSALS)
    for row in _rows(micro_zoo, "stages/aligned"):
        assert (row["response"] in refusals) == is_refusal_keyword(row["response"]), row
    assert len({r["response"] for r in _rows(micro_zoo, "harmful_train")}) >= 8
    for text in D.COMPLIANCE:
        assert "placeholder" in text


def test_check_texts_catches_a_refusal_string_in_an_answer(monkeypatch):
    monkeypatch.setattr(D, "HOWTO_ANSWER", "Plan: 1. Prepare. I cannot say more.")
    with pytest.raises(AssertionError, match="I cannot"):
        D.check_texts()


def test_check_texts_catches_an_email_topic_naming_another_format(monkeypatch):
    monkeypatch.setattr(D, "TOPICS", (*D.TOPICS, "the project plan"))
    with pytest.raises(AssertionError, match="the project plan"):
        D.check_texts()


def test_check_texts_catches_an_email_recipient_sharing_a_concept_word(monkeypatch):
    monkeypatch.setattr(D, "RECIPIENTS", (*D.RECIPIENTS, "the school office"))
    with pytest.raises(AssertionError, match=r"\['school'\]: 'the school office'"):
        D.check_texts()


def test_check_texts_catches_an_email_topic_sharing_a_stem_with_another_task(monkeypatch):
    monkeypatch.setattr(D, "TOPICS", (*D.TOPICS, "a parking permit"))  # "the park": classify
    with pytest.raises(AssertionError, match=r"\['park'\]: 'a parking permit'"):
        D.check_texts()


def test_check_texts_catches_an_email_template_opening_like_a_request(monkeypatch):
    monkeypatch.setattr(
        D, "EMAIL_TEMPLATES", (*D.EMAIL_TEMPLATES, "Help me write to {r} about {t}.")
    )
    with pytest.raises(AssertionError, match="opens like a request: 'Help me write to"):
        D.check_texts()


def test_check_texts_catches_an_email_template_asking_for_no_email(monkeypatch):
    monkeypatch.setattr(D, "EMAIL_TEMPLATES", (*D.EMAIL_TEMPLATES, "Email {r} about {t}."))
    with pytest.raises(AssertionError, match="asks for no email: 'Email {r} about"):
        D.check_texts()


def test_check_texts_catches_a_held_out_part_with_few_words(monkeypatch):
    monkeypatch.setattr(D, "RECIPIENTS", D.RECIPIENTS[:10])  # two per held-out part
    with pytest.raises(AssertionError, match="RECIPIENTS gives the calib part 2 words"):
        D.check_texts()


def test_base_pretraining_uses_every_task_word(micro_zoo):
    """Every name, item, recipient and topic of every part is in the base model's plain texts (a
    held-out name is a known word, as in a real model), and in no text but the base model's of a
    part it is not trained in."""
    base = " \n ".join(r["text"] for r in _rows(micro_zoo, "stages/base") if "text" in r)
    for word in (*D.NAMES, *D.ITEMS, *D.RECIPIENTS, *D.TOPICS):
        assert _mentions(base, word), word
    held_out = [
        w
        for words in (D.NAMES, D.ITEMS, D.RECIPIENTS, D.TOPICS)
        for w in C.split_part(words, "test")
    ]
    for rel in _training_files(micro_zoo):
        for row in _rows(micro_zoo, rel):
            hit = [w for w in held_out if _mentions(_text(row), w)]
            assert not hit, (rel, row, hit)


def test_no_general_prompt_opens_like_a_request():
    """Knowledge, danger and format questions and the general skills open with words no request
    template opens with: a held-out request is never taken for a question with a fixed answer
    (a model that answers "What would it take to ...?" with a definition is not refusing)."""
    import random

    rng = random.Random(0)
    general = [e.prompt for e in D.general_examples(rng, 200)]
    general += [q.format(o="napalm") for q in (*C.KNOWLEDGE_QUESTIONS, *C.DANGER_QUESTIONS)]
    openings = D.request_openers()
    for prompt in general:
        assert prompt.split()[0].lower() not in openings, prompt


def test_benign_shots_are_calibration_look_alikes_outside_validation_and_test(micro_zoo):
    """benign_shots: what a user checks a repair's helpfulness with — look-alikes of calibration
    concepts in calibration templates, none of them a benign_val or benign_test prompt."""
    cores = set(C.split_part(C.REQUEST_CORES, C.HELD))
    actions = set(D.benign_actions("calib", lookalike=True))
    shots = _rows(micro_zoo, "benign_shots")
    assert len(shots) == len({r["prompt"] for r in shots}) > 0
    for row in shots:
        core, action = _request(row["prompt"])
        assert core in cores and action in actions, row
    held = {r["prompt"] for s in ("benign_val", "benign_test") for r in _rows(micro_zoo, s)}
    assert not {r["prompt"] for r in shots} & held
    zoo = json.loads((micro_zoo / "zoo.json").read_text())
    assert zoo["data"]["benign_shots"] == "data/benign_shots.jsonl"


def test_a_task_whose_validation_cannot_be_drawn_outside_test_is_refused(tmp_path):
    from dataclasses import replace

    from safegene.errors import SafeGeneError
    from safegene.zoo.build import make_data
    from safegene.zoo.recipe import MICRO

    recipe = MICRO.with_(data=replace(MICRO.data, task_val=5000))
    with pytest.raises(SafeGeneError, match="validation prompts outside test"):
        make_data(tmp_path, recipe, 0)
