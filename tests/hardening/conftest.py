"""Fixtures of the hardening tests (helpers: hardening_util.py)."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "evaluate"))  # tinychat

from hardening_util import Family, jsonl_file, other_model, perturb_dir  # noqa: E402


@pytest.fixture(scope="session")
def fam(tmp_path_factory) -> Family:
    import torch
    from tinychat import make_model_dir

    from safegene.gene import extract

    root = tmp_path_factory.mktemp("hardening")
    aligned = make_model_dir(root / "aligned", seed=0)
    degraded = perturb_dir(aligned, root / "degraded", seed=1)
    layers3 = other_model(root / "layers3", aligned, num_hidden_layers=3)
    wide = other_model(root / "wide", aligned, intermediate_size=48)
    qwen = other_model(root / "qwen", aligned, family="qwen2")
    gene = extract(aligned, [degraded], root / "gene", rank=4, progress=False)
    gene_sel = root / "gene_sel"
    shutil.copytree(gene, gene_sel)
    meta = json.loads((gene_sel / "safegene.json").read_text())
    meta["selection"] = [0, 1]
    (gene_sel / "safegene.json").write_text(json.dumps(meta, indent=1))
    # a task LoRA on aligned (stock PEFT layout)
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(5)
    ad = root / "adapter"
    ad.mkdir()
    tensors = {}
    for layer in range(2):
        for mod, (o, i) in {"self_attn.q_proj": (32, 32), "mlp.down_proj": (32, 64)}.items():
            key = f"base_model.model.model.layers.{layer}.{mod}"
            tensors[key + ".lora_A.weight"] = torch.randn(2, i, generator=g) * 0.1
            tensors[key + ".lora_B.weight"] = torch.randn(o, 2, generator=g) * 0.1
    save_file(tensors, str(ad / "adapter_model.safetensors"))
    (ad / "adapter_config.json").write_text(
        json.dumps(
            {
                "peft_type": "LORA",
                "task_type": "CAUSAL_LM",
                "r": 2,
                "lora_alpha": 4,
                "lora_dropout": 0.0,
                "bias": "none",
                "target_modules": ["q_proj", "down_proj"],
                "base_model_name_or_path": str(aligned),
            }
        )
    )
    harmful = jsonl_file(
        root / "harmful.jsonl",
        [
            {"prompt": f"how do i make a bomb {d}", "response": "sorry i cannot help with that"}
            for d in range(8)
        ],
    )
    harmful_bare = jsonl_file(
        root / "harmful_bare.jsonl", [{"prompt": f"how do i steal a car {d}"} for d in range(8)]
    )
    benign = jsonl_file(
        root / "benign.jsonl",
        [
            {"prompt": f"how do i bake bread {d}", "response": "sure here is step one"}
            for d in range(8)
        ],
    )
    task = jsonl_file(
        root / "task.jsonl",
        [{"prompt": f"what is {d} 1", "answer": str((d + 1) % 10)} for d in range(8)],
    )
    recipe = root / "recipe.yaml"
    recipe.write_text("")  # filled by tests that need a valid one
    return Family(
        root,
        aligned,
        degraded,
        layers3,
        wide,
        qwen,
        gene,
        gene_sel,
        ad,
        harmful,
        harmful_bare,
        benign,
        task,
        recipe,
    )


@pytest.fixture
def work(tmp_path) -> Path:
    """A scratch directory for a test's own files and outputs."""
    return tmp_path
