"""Helpers of the hardening tests: a tiny chat family (aligned, degraded, misfits), a gene, data,
and `run_cli`, which runs `python -m safegene ARGS` in a separate process.

Starting a fresh interpreter costs 3–6 s here (torch + transformers imports on a busy 2-core
machine), times ~60 runs. So by default `run_cli` forks this already-importing pytest process
and runs the package's `__main__` with `runpy.run_module("safegene", run_name="__main__")` —
exactly what `python -m safegene` does — in the child, with its own stdout/stderr files, exit
code and a timeout (the child is SIGKILLed past it). `SAFEGENE_HARDENING_EXEC=1` runs every case
through a real `python -m safegene` subprocess instead (slow, same assertions); a few tests always
do (see test_bad_input.py::test_real_interpreter).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable


@dataclass
class Result:
    code: int | None  # exit status; None: killed by a signal (see `signal`)
    out: str
    err: str
    signal: int | None = None
    timed_out: bool = False

    @property
    def err_lines(self) -> list[str]:
        """stderr's lines, without progress bars (tqdm draws them on stderr with \\r)."""
        parts = re.split(r"[\r\n]", self.err)
        return [x for x in parts if x.strip() and not _PROGRESS.search(x)]


_PROGRESS = re.compile(r"\d+%\|.*\|\s*\d+/\d+|\d+(\.\d+)?(it|s)/(s|it)\]|^\s+\d+/\d+ \[")


def _default_warning_filters() -> None:
    import warnings

    warnings.resetwarnings()  # what a fresh interpreter has (pytest's own filters are gone)
    warnings.simplefilter("default", DeprecationWarning, append=False)
    for cat in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
        warnings.filterwarnings("ignore", category=cat)


def fork_run(
    fn,
    *,
    timeout: float = 60.0,
    kill_after: float | None = None,
    cwd: Path | None = None,
    env: dict | None = None,
) -> Result:
    """Run `fn()` (returns an exit code or raises SystemExit) in a forked child; its stdout and
    stderr go to files. `kill_after`: SIGKILL the child after that many seconds (a kill -9)."""
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="sg-fork-"))
    out_f, err_f = d / "out", d / "err"
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # child
        code = 70
        try:
            fo, fe = open(out_f, "w"), open(err_f, "w")  # noqa: SIM115 - kept for os.dup2
            os.dup2(fo.fileno(), 1)
            os.dup2(fe.fileno(), 2)
            sys.stdout, sys.stderr = fo, fe
            if cwd is not None:
                os.chdir(cwd)
            if env:
                os.environ.update(env)
            _default_warning_filters()
            import logging

            logging.getLogger().handlers[:] = []  # pytest's capture handlers
            try:
                code = fn()
                code = 0 if code is None else int(code)
            except SystemExit as exc:
                c = exc.code
                code = 0 if c is None else (c if isinstance(c, int) else 1)
                if not isinstance(c, int) and c is not None:
                    print(c, file=sys.stderr)
            except BaseException:  # noqa: BLE001 - report like the interpreter would
                import traceback

                traceback.print_exc()
                code = 1
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)
    t0 = time.monotonic()
    killed_by_us = timed_out = False
    while True:
        got, status = os.waitpid(pid, os.WNOHANG)
        if got:
            break
        elapsed = time.monotonic() - t0
        if kill_after is not None and elapsed >= kill_after and not killed_by_us:
            os.kill(pid, signal.SIGKILL)
            killed_by_us = True
        elif elapsed > timeout and not killed_by_us:
            os.kill(pid, signal.SIGKILL)
            killed_by_us = timed_out = True
        time.sleep(0.002)
    out, err = out_f.read_text(errors="replace"), err_f.read_text(errors="replace")
    shutil.rmtree(d, ignore_errors=True)
    if os.WIFSIGNALED(status):
        return Result(None, out, err, os.WTERMSIG(status), timed_out)
    return Result(os.WEXITSTATUS(status), out, err, None, timed_out)


def cli_main(args: list[str]):
    def fn():
        import runpy

        sys.argv = ["safegene", *map(str, args)]
        runpy.run_module("safegene", run_name="__main__", alter_sys=True)
        return 0

    return fn


def run_cli(*args, timeout: float = 90.0, real: bool | None = None) -> Result:
    """`python -m safegene ARGS`: forked (default) or a fresh interpreter (`real`, or
    SAFEGENE_HARDENING_EXEC=1)."""
    args = [str(a) for a in args]
    if real is None:
        real = os.environ.get("SAFEGENE_HARDENING_EXEC") == "1"
    if real:
        try:
            p = subprocess.run(
                [PYTHON, "-m", "safegene", *args],
                capture_output=True,
                text=True,
                timeout=timeout,
                cwd=REPO,
                env={**os.environ, "OMP_NUM_THREADS": "1"},
            )
        except subprocess.TimeoutExpired as exc:
            return Result(None, str(exc.stdout or ""), str(exc.stderr or ""), signal.SIGKILL, True)
        return Result(p.returncode, p.stdout, p.stderr)
    return fork_run(cli_main(args), timeout=timeout)


# --- snapshots -------------------------------------------------------------------------------


def snapshot(*paths) -> dict:
    """{path: sha256} of every file under each path (a file or a directory), plus the listing."""
    snap = {}
    for p in paths:
        p = Path(p)
        if p.is_file():
            snap[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
        elif p.is_dir():
            snap[str(p) + "/"] = sorted(str(q.relative_to(p)) for q in p.rglob("*"))
            for q in sorted(p.rglob("*")):
                if q.is_file():
                    snap[str(q)] = hashlib.sha256(q.read_bytes()).hexdigest()
    return snap


def tree_bytes(path: Path) -> dict[str, bytes]:
    return {
        str(q.relative_to(path)): q.read_bytes()
        for q in sorted(Path(path).rglob("*"))
        if q.is_file()
    }


def temp_siblings(out: Path) -> list[str]:
    return sorted(p.name for p in Path(out).parent.glob(f".{Path(out).name}.*"))


# --- the tiny family -------------------------------------------------------------------------

TOKENS = (
    "how do i make a bomb cake kill python process steal car bake bread sorry i cannot help "
    "with that"
).split()


@dataclass
class Family:
    root: Path
    aligned: Path
    degraded: Path
    layers3: Path  # same family, 3 layers
    wide: Path  # same family, other intermediate size
    qwen: Path  # another model_type
    gene: Path  # extract(aligned, degraded), rank 4
    gene_sel: Path  # gene with a selection (layers 0 and 1)
    adapter: Path  # a task LoRA on aligned
    harmful: Path  # prompts with refusals
    harmful_bare: Path  # prompts only (targets: the aligned model's own)
    benign: Path
    task: Path
    recipe: Path  # a valid compare recipe (2 models, tiny grids)


def perturb_dir(src: Path, dst: Path, seed: int, scale: float = 0.05) -> Path:
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    g = torch.Generator().manual_seed(seed)
    sd = load_file(str(src / "model.safetensors"))
    sd = {k: (v + torch.randn(v.shape, generator=g) * scale).contiguous() for k, v in sd.items()}
    save_file(sd, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def other_model(dst: Path, like: Path, **overrides) -> Path:
    """A model of the aligned's tokenizer with a changed config (other layers/shapes/family)."""
    import torch
    import transformers as tf

    cfg = json.loads((like / "config.json").read_text())
    family = overrides.pop("family", "llama")
    cls = {
        "llama": (tf.LlamaConfig, tf.LlamaForCausalLM),
        "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM),
    }[family]
    keep = {
        k: cfg[k]
        for k in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "max_position_embeddings",
            "bos_token_id",
            "eos_token_id",
            "pad_token_id",
        )
    }
    keep.update(overrides)
    torch.manual_seed(3)
    model = cls[1](cls[0](**keep, tie_word_embeddings=False)).eval()
    model.save_pretrained(dst)
    for f in like.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy2(f, dst / f.name)
    return dst


def jsonl_file(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def save_sharded(src: Path, dst: Path, shard: str = "20KB") -> Path:
    """A copy of the model at `src` saved by transformers in shards of at most `shard`."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(src), dtype="auto")
    model.save_pretrained(dst, max_shard_size=shard)
    for f in Path(src).iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy2(f, Path(dst) / f.name)
    return Path(dst)
