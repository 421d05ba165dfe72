"""Coefficient groups, the unit that select scores and calibrate fits one α for: "3" (every module
of layer 3) or "3.attn" (layer 3's modules of one kind), and their conversion to and from the
gene's `selection` and `coefficients` schema (safegene.gene). A group of the target's own
rollback (safegene.rollback) is its layer group with the prefix "r": "r3", "r3.attn"."""

from __future__ import annotations

ROLLBACK = "r"  # the prefix of a rollback group


def group_key(layer: int, kind: str, per_module_kind: bool, rollback: bool = False) -> str:
    """ "3" per layer, "3.attn" / "3.mlp" per module kind; "r3", "r3.attn" for a rollback."""
    key = f"{layer}.{kind}" if per_module_kind else str(layer)
    return ROLLBACK + key if rollback else key


def is_rollback(key: str) -> bool:
    return str(key).startswith(ROLLBACK)


def parse_group(key: str) -> tuple[int, str | None]:
    """ "3.attn" → (3, "attn"); "3" and "r3" → (3, None)."""
    layer, _, kind = str(key).removeprefix(ROLLBACK).partition(".")
    return int(layer), (kind or None)


def group_order(key: str) -> tuple[int, str]:
    """Sort key: by layer, then by the key (so "3" < "3.attn" < "3.mlp" < "10")."""
    return parse_group(key)[0], key


def is_per_kind(groups) -> bool:
    """Are these (layer, module kind) groups rather than whole layers?"""
    return any(parse_group(g)[1] is not None for g in groups)


def groups_to_selection(groups: list[str]):
    """Groups ("3", or "3.attn") → the gene's selection schema ([3] or {"attn": [3]})."""
    if not is_per_kind(groups):
        return sorted(parse_group(g)[0] for g in groups)
    selection: dict[str, list[int]] = {}
    for g in groups:
        layer, kind = parse_group(g)
        selection.setdefault(kind, []).append(layer)
    return {k: sorted(v) for k, v in sorted(selection.items())}


def selection_to_groups(selection) -> list[str] | None:
    """The gene's selection schema → groups; None when the gene has no selection."""
    if selection is None:
        return None
    if isinstance(selection, dict):
        return sorted(
            (
                group_key(int(layer), kind, True)
                for kind, layers in selection.items()
                for layer in layers
            ),
            key=group_order,
        )
    return [str(int(layer)) for layer in sorted(selection)]


def groups_to_coefficients(alpha: dict[str, float]) -> dict:
    """α per group → the gene's coefficients schema ({"3": a} or {"attn": {"3": a}, ...})."""
    if not is_per_kind(alpha):
        return dict(alpha)
    out: dict[str, dict[str, float]] = {}
    for g, a in alpha.items():
        layer, kind = parse_group(g)
        out.setdefault(kind, {})[str(layer)] = a
    return dict(sorted(out.items()))
