"""Distributed helpers that also work in a single plain process (no process group)."""

from __future__ import annotations

import datetime
import os
import pickle
from typing import Any, Callable, Iterable, List, Optional, Tuple, TypeVar

import torch
import torch.distributed as dist

_CREATED = False  # whether init_distributed made the process group (and so cleanup ends it)
_THREADS_BEFORE: Optional[int] = None  # the thread count init_distributed replaced (cleanup puts it back)
T = TypeVar("T")

# How long a rank waits for the others at one collective before the group fails. The longest wait is a rank-0
# section (the data check, the teacher maps), which the other ranks sit out at its broadcast: the default leaves
# room for those on a large dataset while a rank that is truly gone still ends the run. DABNET_DIST_TIMEOUT sets it.
DEFAULT_TIMEOUT_S = 3600


def is_dist() -> bool:
    """True inside an initialised process group."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_dist() else 0


def world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main() -> bool:
    """Only rank 0 writes files and prints progress."""
    return rank() == 0


def group_cpu_threads() -> int:
    """The CPU threads of each process of a torchrun group: OMP_NUM_THREADS where set, else 1. torchrun sets 1
    itself only for a launcher that starts several processes, and a CPU kernel's sums depend on how many threads
    share them: without this, 2 machines x 1 process would train other weights than 1 machine x 2 processes."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else 1


def group_timeout() -> datetime.timedelta:
    """The process group's timeout: $DABNET_DIST_TIMEOUT seconds, else DEFAULT_TIMEOUT_S."""
    raw = os.environ.get("DABNET_DIST_TIMEOUT", "").strip()
    if not raw:
        return datetime.timedelta(seconds=DEFAULT_TIMEOUT_S)
    try:
        seconds = float(raw)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise ValueError(f"DABNET_DIST_TIMEOUT={raw!r} is not a number of seconds above 0; unset it for the default "
                         f"({DEFAULT_TIMEOUT_S} s) or give e.g. DABNET_DIST_TIMEOUT=7200")  # fmt: skip
    return datetime.timedelta(seconds=seconds)


def init_distributed(device: str = "auto") -> Tuple[torch.device, bool]:
    """Join the process group that `torchrun` describes (NCCL on GPU, gloo on CPU), if any; on the CPU each
    process runs `group_cpu_threads()` threads, whatever the number of processes per machine."""
    want_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        local = int(os.environ.get("LOCAL_RANK", 0))
        if want_cuda:
            torch.cuda.set_device(local)
        elif torch.get_num_threads() != group_cpu_threads():
            global _THREADS_BEFORE
            if _THREADS_BEFORE is None:
                _THREADS_BEFORE = torch.get_num_threads()
            torch.set_num_threads(group_cpu_threads())
        if not is_dist():
            global _CREATED
            dist.init_process_group("nccl" if want_cuda else "gloo", timeout=group_timeout())
            _CREATED = True
        return (torch.device("cuda", local) if want_cuda else torch.device("cpu")), True
    if want_cuda:
        return torch.device(device if device.startswith("cuda") else "cuda"), False
    return torch.device("cpu"), False


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all ranks (a no-op outside DDP)."""
    if is_dist():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def agree(*flags: bool) -> Tuple[bool, ...]:
    """Each flag true on every rank where it is true on any, in one all-reduce (outside DDP: as given). Every exit
    from a loop of collectives goes through one: a rank that decides alone to stop, or to raise, leaves the others
    blocked in the next collective until the group's timeout."""
    if not is_dist():
        return tuple(bool(f) for f in flags)
    t = torch.tensor([1 if f else 0 for f in flags], dtype=torch.int32, device=_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return tuple(bool(v) for v in t.tolist())


def every_rank(value: torch.Tensor) -> List[float]:
    """Every rank's scalar `value`, indexed by rank, on every rank (one all-reduce; outside DDP: [value])."""
    v = value.detach().reshape(()).float()
    if not is_dist():
        return [float(v)]
    t = torch.zeros(world_size(), dtype=torch.float32, device=_device())
    t[rank()] = v.to(t.device)  # the other slots stay 0, so the sum is each rank's own value (NaN and inf kept)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def raise_together(error: Optional[BaseException]) -> None:
    """Called by every rank at the same point with its own failure or None: where any rank failed, every rank
    raises the failure of the lowest such rank (same type and message; see _portable), so that all end with one
    error line; else each goes on. Outside DDP: raises `error` if there is one."""
    if not is_dist():
        if error is not None:
            raise error
        return
    gathered = gather_object(None if error is None else pickle.dumps(_portable(error)))
    first = next((r for r, e in enumerate(gathered) if e is not None), None)
    if first is None:
        return
    if first == rank() and error is not None:
        raise error
    raise pickle.loads(gathered[first]) from None


def _device() -> torch.device:
    """Where the group's collectives take their tensors: this rank's GPU under NCCL, else the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def shard(n: int) -> List[int]:
    """This rank's share of `n` items to evaluate: every world_size-th from its rank, none repeated or padded (a
    DistributedSampler pads the shares to one length, which counts some images twice); all of them outside DDP."""
    return list(range(rank(), n, world_size()))


def gather_object(value: T) -> List[T]:
    """Every rank's `value` (it must pickle), by rank, on every rank; outside DDP: [value]."""
    if not is_dist():
        return [value]
    values: List[Any] = [None] * world_size()
    dist.all_gather_object(values, value)
    return values


def _portable(error: BaseException) -> BaseException:
    """`error` if every rank can rebuild it (same type and message after a pickle), else a RuntimeError with its message."""
    try:
        copy = pickle.loads(pickle.dumps(error))
        if type(copy) is type(error) and str(copy) == str(error):
            return error
    except Exception:  # an exception whose constructor takes other arguments than its message
        pass
    return RuntimeError(str(error))


def rank0_first(fn: Callable[[], T], share: bool = False) -> Optional[T]:
    """Run `fn` on rank 0 alone while the other ranks wait, then tell them how it went: where it raised, every rank
    raises the same error (type and message), so that none is left blocked on a rank that gave up; else each goes
    on, with `fn`'s result where `share` (it must pickle) or None on the ranks other than 0. Outside DDP: `fn()`."""
    if not is_dist():
        return fn()
    result: Optional[T] = None
    failure: Optional[BaseException] = None
    payload = b""
    if is_main():
        try:
            result = fn()
            payload = pickle.dumps((None, result if share else None))
        except BaseException as e:  # Ctrl-C too: the others must not wait for a rank 0 that is gone
            failure = e
            payload = pickle.dumps((_portable(e), None))
    message = [payload]
    dist.broadcast_object_list(message, src=0)
    if failure is not None:
        raise failure
    error, shared = pickle.loads(message[0])
    if error is not None:
        raise error from None
    return result if is_main() else shared


def barrier() -> None:
    if is_dist():
        dist.barrier()


def cleanup() -> None:
    """Tear down the process group init_distributed made (one the caller made is the caller's to end), and give
    back the thread count it replaced."""
    global _CREATED, _THREADS_BEFORE
    if _CREATED and is_dist():
        dist.destroy_process_group()
    _CREATED = False
    if _THREADS_BEFORE is not None:
        torch.set_num_threads(_THREADS_BEFORE)
        _THREADS_BEFORE = None


def broadcast_from_rank0(tensors: Iterable[torch.Tensor]) -> None:
    """Overwrite `tensors`, in place and in order, with rank 0's (every rank passes the same ones; outside DDP: nothing)."""
    if not is_dist():
        return
    for t in tensors:
        if t.is_contiguous():
            dist.broadcast(t, src=0)
        else:  # channels_last weights: the backends take dense row-major buffers
            buf = t.contiguous()
            dist.broadcast(buf, src=0)
            t.copy_(buf)
