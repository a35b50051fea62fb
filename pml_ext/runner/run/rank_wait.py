"""Distributed runs: the other ranks wait for rank 0's evaluation without tripping the collective timeout.

Only rank 0 evaluates, saves and records; the others would wait for it in the next collective
(the keep-training broadcast, or the first gradient all-reduce after the untrained check), whose
deadline is ``distributed_timeout_seconds``: a healthy run died whenever an evaluation took longer.
So every rank first meets at a ``monitored_barrier`` of a separate gloo group whose deadline is
``distributed_eval_timeout_seconds`` (default a day). A monitored barrier names the ranks that
did not arrive, and a peer that exited breaks the connection at once, so the errors below tell a
dead rank from a slow one. gloo words both the same way ("Rank 1 failed to pass monitoredBarrier"),
so the barrier tells them apart by when it failed: long before its deadline, the rank exited.
"""
from __future__ import annotations

import datetime
import re
import time

__all__ = ["RankZeroWait", "describe_collective_failure"]

DEAD = ("connection closed", "connection reset", "broken pipe", "connection refused", "end of file")


EXITED = "a collective with the other ranks failed because another rank exited (it died or raised an error; " \
         "see its traceback)"
# A barrier failing before this share of its deadline did not time out: a rank it waited for exited.
EARLY = 0.9


def describe_collective_failure(exc: BaseException, rank: int, timeout: float, eval_timeout: float,
                                waited: float | None = None) -> str | None:
    """A message for a failed collective (``None`` when ``exc`` is not one); ``waited``: the seconds
    the end-of-epoch barrier had waited when it failed (``None``: another collective)."""
    text = str(exc)
    lower = text.lower()
    if "monitoredbarrier" in lower.replace(" ", "") and "failed to pass" in lower:
        if waited is not None and waited < EARLY * eval_timeout:
            ranks = re.search(r"ranks? ([\d, ]+) failed to pass", lower)
            who = f"rank {ranks.group(1).strip()}" if ranks else "a rank"
            return (f"rank {rank}: {EXITED}: {who} left the end-of-epoch barrier after {waited:.1f} s, before its "
                    f"{eval_timeout:g} s deadline (distributed_eval_timeout_seconds)")
        return (f"rank {rank}: other ranks did not reach the end-of-epoch barrier within {eval_timeout:g} s "
                f"(distributed_eval_timeout_seconds); they are dead or hung: {text}")
    if any(word in lower for word in DEAD):
        return f"rank {rank}: {EXITED}: {text}"
    if "timed out" in lower or "timeout" in lower:
        return (f"rank {rank}: a collective with the other ranks failed: no answer within {timeout:g} s "
                f"(distributed_timeout_seconds), so another rank is alive but slow or hung: {text}")
    if "gloo" in lower or "nccl" in lower:
        return f"rank {rank}: a collective with the other ranks failed: {text}"
    return None


class RankZeroWait:
    """``wait()``: every rank meets here, waiting up to ``eval_timeout_seconds`` for rank 0."""

    def __init__(self, timeout_seconds: float, eval_timeout_seconds: float):
        import torch.distributed as dist

        from ...utils.distributed import is_distributed

        self.timeout, self.eval_timeout = timeout_seconds, eval_timeout_seconds
        self.group = None
        if is_distributed():
            self.group = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=eval_timeout_seconds))

    def wait(self) -> None:
        if self.group is None:
            return
        import torch.distributed as dist

        start = time.monotonic()
        try:
            dist.monitored_barrier(group=self.group, timeout=datetime.timedelta(seconds=self.eval_timeout),
                                   wait_all_ranks=True)
        except RuntimeError as exc:
            message = describe_collective_failure(exc, dist.get_rank(), self.timeout, self.eval_timeout,
                                                  waited=time.monotonic() - start)
            raise RuntimeError(message or str(exc)) from exc
