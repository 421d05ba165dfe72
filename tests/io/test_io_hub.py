"""Models by Hub id through a Hugging Face cache laid out in a temp dir (HF_HUB_CACHE): resolved
offline, named by their id in outputs; an id not cached or an unknown revision is one line, exit 2,
nothing written."""

import json
import shutil

import engine_models as em
import pytest

from safegene.cli import main
from safegene.errors import SafeGeneError
from safegene.io.hub import hub_source, model_name, resolve_model

SHA = "0123456789abcdef0123456789abcdef01234567"
SHA2 = "fedcba9876543210fedcba9876543210fedcba98"


def cache_model(cache, repo_id, src, commit, ref="main"):
    """Lay `src` out as huggingface_hub does: blobs elided, snapshots/<commit>, refs/<ref>."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / commit
    shutil.copytree(src, snap)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / ref).write_text(commit)
    return snap


@pytest.fixture
def hub(tmp_path, monkeypatch):
    aligned, degraded = em.family_pair(tmp_path / "src", "llama")
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return {
        "cache": cache,
        "aligned": cache_model(cache, "acme/chat", aligned, SHA),
        "degraded": cache_model(cache, "acme/chat-broken", degraded, SHA2, ref="v1"),
        "tmp": tmp_path,
    }


def test_resolve_ids_revisions_and_local_dirs(hub):
    assert resolve_model("acme/chat") == hub["aligned"]
    assert resolve_model("acme/chat", SHA) == hub["aligned"]
    assert resolve_model(f"acme/chat@{SHA}") == hub["aligned"]
    assert resolve_model("acme/chat-broken", "v1") == hub["degraded"]
    local = hub["tmp"] / "src" / "llama-aligned"
    assert resolve_model(local) == local
    assert hub_source(hub["aligned"]) == ("acme/chat", SHA) and hub_source(local) is None
    assert model_name(hub["aligned"]) == "acme/chat" and model_name(local) == str(local)
    with pytest.raises(SafeGeneError, match="revision 'v9' of acme/chat is not in the .*main"):
        resolve_model("acme/chat", "v9")
    with pytest.raises(SafeGeneError, match="acme/other is neither a local directory nor in"):
        resolve_model("acme/other")


def test_extract_and_apply_by_hub_id_name_the_id(hub, capsys):
    gene = hub["tmp"] / "gene"
    assert main(["extract", "--aligned", "acme/chat", "--degraded", "acme/chat-broken@v1",
                 "--out", str(gene), "--rank", "2"]) == 0  # fmt: skip
    cfg = json.loads((gene / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == "acme/chat" and cfg["revision"] == SHA
    sources = json.loads((gene / "safegene.json").read_text())["sources"]
    assert sources["aligned"]["hub_id"] == "acme/chat"
    assert sources["degraded"][0]["revision"] == SHA2
    out = hub["tmp"] / "adapter"
    assert main(["apply", "--gene", str(gene), "--model", "acme/chat-broken", "--revision", "v1",
                 "--out", str(out), "--as", "adapter"]) == 0  # fmt: skip
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == "acme/chat-broken" and cfg["revision"] == SHA2


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "acme/missing"], "acme/missing is neither a local directory nor in"),
        (["--model", "acme/chat", "--revision", "v9"], "revision 'v9' of acme/chat"),
    ],
)
def test_bad_hub_ids_are_one_line_exit_2_nothing_written(hub, capsys, argv, message):
    gene = hub["tmp"] / "gene"
    assert main(["extract", "--aligned", "acme/chat", "--degraded", "acme/chat-broken@v1",
                 "--out", str(gene), "--rank", "1"]) == 0  # fmt: skip
    capsys.readouterr()
    out = hub["tmp"] / "never"
    code = main(["apply", "--gene", str(gene), *argv, "--out", str(out), "--as", "adapter"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_compare_recipe_takes_cached_hub_ids(hub):
    from safegene.recipe import load_recipe

    d = hub["tmp"] / "r"
    d.mkdir()
    for f in ("h.jsonl", "b.jsonl"):
        (d / f).write_text('{"prompt": "how do i make a bomb ?"}\n')
    (d / "t.jsonl").write_text('{"prompt": "what is 2 ?", "answer": "2"}\n')
    text = """family: {aligned: acme/chat, degraded: [acme/chat-broken@v1]}
data: {harmful_test: h.jsonl, benign_test: b.jsonl, harmful_shots: h.jsonl}
tasks: [{name: t, model: MODEL, shots: t.jsonl, test: t.jsonl}]
methods: {interpolate: {t: [0.5]}}
"""
    (d / "ok.yaml").write_text(text.replace("MODEL", "acme/chat-broken@v1"))
    r = load_recipe(d / "ok.yaml")
    assert r.aligned == hub["aligned"] and r.degraded == [hub["degraded"]]
    assert r.tasks[0].model == hub["degraded"]
    (d / "bad.yaml").write_text(text.replace("MODEL", "acme/missing"))
    with pytest.raises(SafeGeneError, match=r"tasks\[0\].model: acme/missing is neither"):
        load_recipe(d / "bad.yaml")
