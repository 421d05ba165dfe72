"""A gene attached to a frozen model as trainable per-layer coefficients.

Every Linear the gene targets gets `+ α_g · (x Aᵀ) Bᵀ` added to its output (a forward hook), where
`δ = B·A` is that module's low-rank gene factor and `α_g` the coefficient of the module's group: one
group per layer, or per (layer, module kind) — `attn` for `self_attn.*`, `mlp` for `mlp.*`. Because
δ is low rank this is exact and cheap, and it works the same on a full checkpoint and on a PeftModel
(aligned + task LoRA, not merged): the hook sits on the outermost module of that name, so the task
LoRA's own contribution is already in the output it adds to.

The model's own parameters stay frozen; `α` is the only tensor with a gradient. This one mechanism
serves attribution (∂L/∂α at α=0 equals ⟨∇_W L, δ⟩), exact ablation (α=1 on one group), calibration
(Adam on α) and evaluation (generate with α fixed).

The δs come from `Gene.linear_deltas()`; `check_attachable` checks a model directory against them
before it is loaded; `encode_chat_pairs` and `pairs_loss` are the losses select and calibrate
take on (prompt, target) pairs (`pad_batch`: one padded batch of them).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch

from safegene.errors import SafeGeneError
from safegene.family import check_compatible
from safegene.gene import Gene, LinearDelta
from safegene.groups import group_key
from safegene.io import ModelReader


def check_attachable(gene: Gene, deltas: list[LinearDelta], model: str | Path) -> None:
    """The model directory holds the gene's family (its fingerprint, where recorded) and every δ's
    tensor at its shape, or a SafeGeneError naming the first mismatch. Names are matched as the
    hooks match modules: exactly, else by their `layers.N....` suffix (a checkpoint without the
    "model." prefix, or a wrapper's)."""
    with ModelReader(model) as reader:
        shapes = reader.shapes()
        need = {}
        for d in deltas:
            name = d.name + ".weight"
            if name not in shapes:
                hits = [n for n in shapes if n.endswith(name[name.find("layers.") :])]
                name = hits[0] if hits else name
            need[name] = d.shape
        check_compatible(gene.fingerprint, reader.config(), shapes, tensors=need or None)


def _linear_shape(mod) -> tuple[int, int] | None:
    base = getattr(mod, "base_layer", mod)
    w = getattr(base, "weight", None)
    if w is None or w.dim() != 2:
        return None
    return tuple(w.shape)  # (out, in)


def resolve_modules(model, modules: list[LinearDelta]) -> dict[str, torch.nn.Module]:
    """Each gene module's outermost namesake in `model`, shapes checked; a clear error otherwise."""
    by_suffix: dict[str, tuple[str, torch.nn.Module]] = {}
    for full, mod in model.named_modules():
        i = full.find("layers.")
        if i < 0 or full.endswith("base_layer") or ".lora_" in full:
            continue
        suffix = full[i:]
        # the outermost module of a name wins (a lora.Linear over its base Linear)
        if suffix not in by_suffix or len(full) < len(by_suffix[suffix][0]):
            by_suffix[suffix] = (full, mod)
    found = {}
    for g in modules:
        suffix = g.name[g.name.find("layers.") :]
        if suffix not in by_suffix:
            raise SafeGeneError(
                f"the model has no module {g.name} that the gene targets: "
                "is it a model of the gene's family?"
            )
        full, mod = by_suffix[suffix]
        shape = _linear_shape(mod)
        want = g.shape
        if shape != want:
            raise SafeGeneError(
                f"family mismatch at {g.name}: the model's weight is {shape}, "
                f"the gene's δ is {want}"
            )
        found[g.name] = mod
    return found


class GeneAttachment:
    """Hooks that add Σ α_g δ_g to a frozen model; `alpha` is a float32 leaf tensor.

    Use as a context manager (hooks removed on exit). `groups` lists the coefficient groups in the
    order of `alpha`; modules whose group is not in `groups` are left out (α fixed at 0).
    """

    def __init__(
        self,
        model,
        modules: list[LinearDelta],
        *,
        per_module_kind: bool = False,
        groups: list[str] | None = None,
        alpha: torch.Tensor | None = None,
    ):
        self.model = model
        self.per_module_kind = per_module_kind
        all_groups = []
        for g in modules:
            k = group_key(g.layer, g.kind, per_module_kind, g.rollback)
            if k not in all_groups:
                all_groups.append(k)
        self.groups = list(groups) if groups is not None else all_groups
        index = {k: i for i, k in enumerate(self.groups)}
        targets = resolve_modules(model, modules)
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        for p in model.parameters():
            p.requires_grad_(False)
        self.alpha = (
            torch.zeros(len(self.groups), dtype=torch.float32, device=self.device)
            if alpha is None
            else alpha.detach().to(self.device, torch.float32).clone()
        )
        self.alpha.requires_grad_(True)
        self._nonzero = (self.alpha.detach() != 0).tolist()
        self.n_params = torch.zeros(len(self.groups), dtype=torch.long)
        self._bound = []
        for g in modules:
            gi = index.get(group_key(g.layer, g.kind, per_module_kind, g.rollback))
            if gi is None:
                continue
            self.n_params[gi] += g.n_params
            mod = targets[g.name]
            w = getattr(mod, "base_layer", mod).weight
            self._bound.append(
                (
                    mod,
                    gi,
                    g.A.to(w.device, w.dtype),
                    None if g.B is None else g.B.to(w.device, w.dtype),
                )
            )
        self._handles = []

    def set(self, values) -> None:
        with torch.no_grad():
            self.alpha.copy_(torch.as_tensor(values, dtype=torch.float32, device=self.device))
        self._nonzero = (self.alpha.detach() != 0).tolist()

    def _hook(self, gi, A, B):
        def hook(_mod, inputs, output):
            if not self.alpha.requires_grad and not self._nonzero[gi]:
                return None
            a = self.alpha[gi]
            x = inputs[0]
            delta = torch.nn.functional.linear(x.to(A.dtype), A)
            if B is not None:
                delta = torch.nn.functional.linear(delta, B)
            return output + (a.to(delta.dtype) * delta).to(output.dtype)

        return hook

    def attach(self):
        if not self._handles:
            self._handles = [
                mod.register_forward_hook(self._hook(gi, A, B)) for mod, gi, A, B in self._bound
            ]
        return self

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self):
        return self.attach()

    def __exit__(self, *exc):
        self.detach()

    @contextmanager
    def fixed(self, values=None):
        """α fixed (no grad) for evaluation or generation, restored afterwards."""
        saved = self.alpha.detach().clone()
        if values is not None:
            self.set(values)
        self.alpha.requires_grad_(False)
        try:
            yield self
        finally:
            self.set(saved)
            self.alpha.requires_grad_(True)


# --- losses on (prompt, target) pairs ------------------------------------------------------------


def encode_chat_pairs(
    tokenizer, prompts: list[str], targets: list[str], template: str | None = None
):
    """Token ids of chat(prompt) + target (+ end of turn), and how many leading tokens are the
    prompt."""
    from safegene.evaluate.chat import render_chat
    from safegene.evaluate.generate import chat_texts

    heads = chat_texts(tokenizer, prompts, template)
    out = []
    for prompt, head, target in zip(prompts, heads, targets, strict=True):
        try:
            full = render_chat(
                tokenizer,
                [{"role": "user", "content": prompt}, {"role": "assistant", "content": target}],
                template,
            )
        except SafeGeneError:  # a template without an assistant turn (or one that fails)
            full = None
        if not full or not full.startswith(head):
            full = head + target + (tokenizer.eos_token or "")
        head_ids = tokenizer(head, add_special_tokens=False)["input_ids"]
        full_ids = tokenizer(full, add_special_tokens=False)["input_ids"]
        n = len(head_ids)
        if full_ids[:n] != head_ids:  # a merge across the boundary: fall back to separate pieces
            full_ids = (
                head_ids + tokenizer(full[len(head) :], add_special_tokens=False)["input_ids"]
            )
        if len(full_ids) <= n:
            raise SafeGeneError(f"empty target for prompt {prompt[:60]!r}")
        out.append((full_ids, n))
    return out


def pad_batch(chunk, pad_id: int = 0):
    """(input ids, attention mask, labels) of encoded pairs, right-padded to the longest; the
    labels are -100 except on each pair's target tokens."""
    width = max(len(ids) for ids, _ in chunk)
    ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(chunk), width), dtype=torch.long)
    labels = torch.full((len(chunk), width), -100, dtype=torch.long)
    for i, (row, n) in enumerate(chunk):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
        labels[i, n : len(row)] = torch.tensor(row[n:])
    return ids, mask, labels


# The causal LMs whose logits are `post(lm_head(decoder(x)))` with a `post` known here (the model
# types of family.py's table): their loss is computed from the decoder's hidden states at the
# target tokens only, the LM head in chunks. Any other model gets its full logits.
_HEAD_POST = {
    "gemma2": "softcap",
    "gemma3_text": "softcap",
    "granite": "divide",
}
LOSS_CHUNK_BYTES = 256 << 20  # the float32 logits of one chunk of target tokens


def _split_head(model):
    """(decoder, lm_head, post) of a causal LM (or a PeftModel over one), else None."""
    from safegene.family import FAMILIES

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in FAMILIES:
        return None
    get_decoder = getattr(base, "get_decoder", None)
    decoder = get_decoder() if get_decoder is not None else None
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if decoder is None or head is None or decoder is base:
        return None
    kind = _HEAD_POST.get(model_type)
    cap = getattr(config, "final_logit_softcapping", None)
    scale = getattr(config, "logits_scaling", None)

    def post(logits):
        if kind == "softcap" and cap is not None:
            return torch.tanh(logits / cap) * cap
        if kind == "divide" and scale is not None:
            return logits / scale
        return logits

    return decoder, head, post


def _target_nll(split, ids, mask, labels, chunk_bytes: int):
    """Per-example mean NLL of the target tokens: the decoder once, then the LM head and the
    cross-entropy on the target positions only, `chunk_bytes` of float32 logits at a time (each
    chunk recomputed in backward, so only one chunk's logits ever exist)."""
    decoder, head, post = split
    hidden = decoder(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    tgt = labels[:, 1:]
    valid = tgt != -100
    h = hidden[:, :-1][valid]  # (N, hidden): the states that predict each target token
    targets = tgt[valid]
    rows = torch.arange(ids.shape[0], device=ids.device)[:, None].expand_as(tgt)[valid]
    vocab = head.weight.shape[0]
    step = max(1, chunk_bytes // (4 * vocab))

    def chunk_nll(h_part, t_part):
        logits = post(head(h_part)).float()
        return torch.nn.functional.cross_entropy(logits, t_part, reduction="none")

    parts = []
    for start in range(0, h.shape[0], step):
        args = (h[start : start + step], targets[start : start + step])
        if torch.is_grad_enabled() and h.requires_grad:
            from torch.utils.checkpoint import checkpoint

            parts.append(checkpoint(chunk_nll, *args, use_reentrant=False))
        else:
            parts.append(chunk_nll(*args))
    nll = torch.cat(parts) if parts else h.new_zeros(0, dtype=torch.float32)
    sums = torch.zeros(ids.shape[0], device=ids.device, dtype=torch.float32).index_add(0, rows, nll)
    return sums / valid.sum(1).clamp(min=1)


def _full_nll(model, ids, mask, labels):
    """The same from the model's full logits (every position): the reference, and the path of
    model types whose head is not known here."""
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1].float()
    tgt = labels[:, 1:]
    nll = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        tgt.reshape(-1),
        ignore_index=-100,
        reduction="none",
    ).view(tgt.shape)
    valid = (tgt != -100).float()
    return (nll * valid).sum(1) / valid.sum(1).clamp(min=1)


def pairs_loss(
    model,
    encoded,
    *,
    batch_size: int = 16,
    pad_id: int = 0,
    reduce: bool = True,
    max_length: int | None = None,
    chunk_bytes: int | None = LOSS_CHUNK_BYTES,
):
    """Mean over examples of each example's mean NLL on its target tokens (differentiable).

    With reduce=False, the per-example losses (a 1-D tensor). The logits of prompt tokens are
    never computed and those of target tokens in chunks of `chunk_bytes` (None: the model's full
    logits, the reference), so memory does not grow with vocabulary × sequence length.
    """
    device = next(model.parameters()).device
    split = _split_head(model) if chunk_bytes else None
    losses = []
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start : start + batch_size]
        if max_length:
            chunk = [(ids[:max_length], min(n, max_length - 1)) for ids, n in chunk]
        ids, mask, labels = (t.to(device) for t in pad_batch(chunk, pad_id))
        if split is not None:
            losses.append(_target_nll(split, ids, mask, labels, chunk_bytes))
        else:
            losses.append(_full_nll(model, ids, mask, labels))
    per = torch.cat(losses)
    return per.mean() if reduce else per
