"""Input validation shared by every pml_ext loss, miner, index and sampler.

Each check raises ``TypeError`` or ``ValueError`` whose message names the offending
argument, so a bad call fails at the API boundary instead of deep inside a kernel.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

__all__ = ["check_embeddings", "check_labels", "check_finite", "check_positive", "check_int",
           "check_loss_inputs", "check_miner_inputs", "check_reference", "check_indices_tuple",
           "check_state_version"]


def check_embeddings(embeddings, name: str = "embeddings", allow_empty: bool = False) -> None:
    """Require a 2-D floating-point tensor ``[N, d]`` with only finite values.

    The finiteness check is one fused reduction over ``N*d`` values: its cost at
    B=256, d=128 is measured in benchmarks/RESULTS.md (well under 5 % of a loss step).
    """
    if not torch.is_tensor(embeddings):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(embeddings).__name__}")
    if embeddings.dim() != 2:
        raise ValueError(f"{name} must be 2-D [N, d], got shape {tuple(embeddings.shape)}")
    if not embeddings.is_floating_point():
        raise TypeError(f"{name} must have a floating-point dtype, got {embeddings.dtype}")
    if not allow_empty and embeddings.shape[0] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(embeddings.shape)})")
    check_finite(embeddings, name)


def check_finite(values: torch.Tensor, name: str) -> None:
    """Raise ``ValueError`` naming ``name`` when ``values`` holds NaN or inf."""
    if values.numel() > 0 and not bool(torch.isfinite(values).all()):
        raise ValueError(f"{name} contains NaN or inf values")


def check_labels(labels, num_samples: int, name: str = "labels", embeddings_name: str = "embeddings") -> None:
    """Require a 1-D integer tensor of length ``num_samples``."""
    if not torch.is_tensor(labels):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(labels).__name__}")
    if labels.dim() != 1:
        raise ValueError(f"{name} must be 1-D [N], got shape {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"{name} must have an integer dtype, got {labels.dtype}")
    if labels.shape[0] != num_samples:
        raise ValueError(
            f"{name} has length {labels.shape[0]} but {embeddings_name} has {num_samples} rows"
        )


def check_positive(value, name: str, allow_zero: bool = False) -> None:
    """Require a real number > 0 (or >= 0 with ``allow_zero``)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}") from None
    if v != v or v in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be finite, got {value}")
    if v < 0 or (v == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound}, got {value}")


def check_int(value, name: str, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as a Python int in ``[minimum, maximum]``; bools and floats are refused.

    ``TypeError`` for a non-integer, ``ValueError`` for one out of range, both naming ``name``.
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value


def check_loss_inputs(embeddings, labels, indices_tuple, ref_emb, ref_labels, allow_empty: bool = True) -> None:
    """The checks every pml_ext loss runs before PML's ``forward``.

    ``embeddings [B, d]`` (empty allowed: the loss is then PML's zero loss, connected to the
    graph), ``labels [B]`` or None, ``ref_emb [R, d]`` with the same ``d`` and
    ``ref_labels [R]``, and ``indices_tuple`` entries in range (``check_indices_tuple``).
    """
    check_embeddings(embeddings, "embeddings", allow_empty=allow_empty)
    if labels is not None:
        check_labels(labels, embeddings.shape[0], "labels", "embeddings")
    check_reference(embeddings, labels, ref_emb, ref_labels, allow_empty=allow_empty,
                    need_ref_labels=indices_tuple is None)
    num_ref = embeddings.shape[0] if ref_emb is None else ref_emb.shape[0]
    check_indices_tuple(indices_tuple, embeddings.shape[0], num_ref, ref_emb is not None)


def check_reference(embeddings, labels, ref_emb, ref_labels, allow_empty: bool = True,
                    need_ref_labels: bool = True) -> None:
    """``ref_emb [R, d]`` matching ``embeddings [B, d]``, with ``ref_labels [R]``.

    ``ref_labels`` without ``ref_emb`` is refused (PML would silently ignore it), and so is
    ``ref_emb`` without ``ref_labels`` when labels are needed (``need_ref_labels``).
    """
    if ref_emb is None:
        if ref_labels is not None:
            raise ValueError("ref_emb and ref_labels must be given together: ref_labels was given without ref_emb")
        return
    check_embeddings(ref_emb, "ref_emb", allow_empty=allow_empty)
    if ref_emb.shape[1] != embeddings.shape[1]:
        raise ValueError(f"ref_emb has dimension {ref_emb.shape[1]} but embeddings has {embeddings.shape[1]}")
    if ref_labels is None:
        if need_ref_labels and labels is not None:
            raise ValueError("ref_emb and ref_labels must be given together: ref_emb was given without "
                             "ref_labels [R]")
        return
    check_labels(ref_labels, ref_emb.shape[0], "ref_labels", "ref_emb")


def check_indices_tuple(indices_tuple, num_queries: int, num_ref: int, has_ref: bool = False,
                        name: str = "indices_tuple") -> None:
    """Triplets ``(a, p, n)`` or pairs ``(a1, p, a2, n)`` of 1-D integer tensors, all in range.

    Anchors must lie in ``[0, num_queries)``, positives and negatives in ``[0, num_ref)``.
    PML indexes with these tensors directly, so a negative entry wraps around to the end
    of the batch and silently scores the wrong pair; pml_ext is stricter on purpose and
    raises instead. One min/max reduction per tensor: no loop over samples.
    """
    if indices_tuple is None:
        return
    if not isinstance(indices_tuple, (tuple, list)) or len(indices_tuple) not in (3, 4):
        got = len(indices_tuple) if isinstance(indices_tuple, (tuple, list)) else type(indices_tuple).__name__
        raise ValueError(f"{name} must hold 3 (triplets) or 4 (pairs) tensors, got {got}")
    anchor_slots = (0,) if len(indices_tuple) == 3 else (0, 2)
    ref_name = "ref_emb" if has_ref else "embeddings"
    for i, t in enumerate(indices_tuple):
        if not torch.is_tensor(t):
            raise TypeError(f"{name}[{i}] must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 1:
            raise ValueError(f"{name}[{i}] must be 1-D, got shape {tuple(t.shape)}")
        if t.numel() > 0 and (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool):
            raise TypeError(f"{name}[{i}] must have an integer dtype, got {t.dtype}")
        size, rows = (num_queries, "embeddings") if i in anchor_slots else (num_ref, ref_name)
        if t.numel() > 0:
            lo, hi = int(t.min()), int(t.max())
            if lo < 0 or hi >= size:
                raise ValueError(f"{name}[{i}] must lie in [0, {size}) (rows of {rows}), "
                                 f"got values in [{lo}, {hi}]")
    pairs = [(0, 1, 2)] if len(indices_tuple) == 3 else [(0, 1), (2, 3)]
    for group in pairs:
        lengths = {len(indices_tuple[j]) for j in group}
        if len(lengths) > 1:
            raise ValueError(f"{name}[{group[0]}:{group[-1] + 1}] must have equal lengths, "
                             f"got {[len(indices_tuple[j]) for j in group]}")


def check_miner_inputs(embeddings, labels, ref_emb, ref_labels) -> None:
    """The checks every pml_ext miner runs before PML's ``forward``: ``embeddings [B, d]``
    (empty allowed: the miner then returns empty tuples, like PML's), ``labels [B]``, and
    ``ref_emb [R, d]`` / ``ref_labels [R]`` given together."""
    check_embeddings(embeddings, "embeddings", allow_empty=True)
    check_labels(labels, embeddings.shape[0], "labels", "embeddings")
    check_reference(embeddings, labels, ref_emb, ref_labels, allow_empty=True)


def check_state_version(state, owner: str, current: int = 1, oldest: int = 1, required: bool = False) -> int:
    """The format version of ``state``, a ``state_dict()`` of ``owner``; refuses one ``owner`` cannot read.

    A state saved before versions were written has none and reads as ``oldest`` (unless
    ``required``). A later version (a newer pml_ext wrote it) is refused naming it: its fields
    may mean something else, and loading it field by field would resume a different run.
    """
    if not isinstance(state, Mapping):
        raise TypeError(f"state must be a dict (a {owner}.state_dict()), got {type(state).__name__}")
    if "version" not in state and not required:
        return oldest
    version = state.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or not oldest <= version <= current:
        readable = f"version {current}" if oldest == current else f"versions {oldest}-{current}"
        raise ValueError(f"state['version'] is {version!r}: this {owner} reads {readable} only (was the state "
                         f"saved by another pml_ext version?)")
    return version
