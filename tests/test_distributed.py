"""Processes of one torchrun group: rank 0's work reported to every rank (rank0_first), one writer, and an
evaluation sharded over the ranks that equals the single-process one. Gloo on the CPU, each run under a hard timeout."""

from __future__ import annotations

import datetime
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from contextlib import ExitStack, redirect_stdout
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import pytest
import torch

from dabnet.util import distributed as D

# ----------------------------------------------------------------------------- harness


def _record_writes(into: List[str], under: str) -> None:
    """Append to `into` every file under `under` this process opens for writing or renames into place, whatever
    does it (an audit hook: it sees files that C++ code writes, as torch.save's, where they are renamed)."""
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def hook(event: str, args: Any) -> None:
        if event == "os.rename" and isinstance(args[1], (str, os.PathLike)):  # os.replace's event too
            if os.path.abspath(args[1]).startswith(under):
                into.append(os.path.abspath(args[1]))
            return
        if event != "open" or not isinstance(args[0], (str, os.PathLike)):
            return
        path, mode, flags = os.fspath(args[0]), args[1], args[2]
        writes = any(c in mode for c in "wax+") if isinstance(mode, str) else bool((flags or 0) & write_flags)
        if writes and os.path.abspath(path).startswith(under):
            into.append(os.path.abspath(path))

    sys.addaudithook(hook)


def _rank_main(rank: int, world: int, folder: str, target: Callable, args: tuple) -> None:
    """One process of the group: join it (file rendezvous), run `target(rank, *args)` with its writes and prints
    recorded, write what it returned to rank{rank}.json."""
    import torch.distributed as dist

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    # A short timeout: a rank left waiting fails the test in seconds instead of hanging it.
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=20))  # fmt: skip
    writes: List[str] = []
    _record_writes(writes, str(Path(folder).resolve().parent))  # the test's folder: outputs, caches
    printed = io.StringIO()
    try:
        with redirect_stdout(printed):
            out = target(rank, *args)
    except Exception as e:  # what each rank raised is the outcome some tests look at
        out = {"raised": type(e).__name__, "message": str(e)}
    out = dict(out, writes=[w for w in writes if not w.endswith(f"rank{rank}.json")], stdout=printed.getvalue())
    Path(folder, f"rank{rank}.json").write_text(json.dumps(out))
    dist.destroy_process_group()


def run_group(world: int, folder: Path, target: Callable, *args: Any, timeout: float = 90.0) -> List[Dict[str, Any]]:
    """Run `target` in `world` spawned gloo processes; their outcomes by rank. Fails (and kills them) past `timeout`.
    Each records the files it writes anywhere under `folder`'s parent."""
    import torch.multiprocessing as mp

    folder.mkdir(parents=True, exist_ok=True)
    ctx = mp.start_processes(_rank_main, args=(world, str(folder), target, args), nprocs=world, join=False,
                             start_method="spawn")  # fmt: skip
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=1.0):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
            pytest.fail(f"{world} processes still running after {timeout:.0f} s: a rank is blocked")
    return [json.loads((folder / f"rank{r}.json").read_text()) for r in range(world)]


# ----------------------------------------------------------------------------- rank0_first and shard


def test_rank0_first_and_shard_outside_a_process_group():
    assert D.rank0_first(lambda: 42) == 42 and D.rank0_first(lambda: 42, share=True) == 42
    with pytest.raises(KeyError):
        D.rank0_first(lambda: {}["x"])
    assert D.shard(7) == list(range(7))


@pytest.mark.parametrize("world", [2, 3])
def test_shard_counts_every_item_once(monkeypatch, world):
    shares = []
    for r in range(world):
        monkeypatch.setattr(D, "rank", lambda r=r: r)
        monkeypatch.setattr(D, "world_size", lambda: world)
        shares.append(D.shard(7))
    assert sorted(sum(shares, [])) == list(range(7))  # each once: no padding to equal shares


class _TwoArgs(Exception):
    """An exception whose constructor takes more than its message (it cannot be rebuilt from a pickle)."""

    def __init__(self, path: str, why: str) -> None:
        super().__init__(f"{path}: {why}")


RANK0_CASES = ("error", "odd error", "share", "no share")


def _rank0_first_cases(rank: int) -> Dict[str, Any]:
    """Each case of rank0_first in turn, in one group: what this rank got, raised, and whether it ran the work."""
    outcomes = {}
    for case in RANK0_CASES:
        ran = []

        def work():
            ran.append(rank)
            if case == "error":
                raise ValueError("stats of /data/x failed: image 3 unreadable; fix or remove it")
            if case == "odd error":
                raise _TwoArgs("/data/x", "broken")
            return {"answer": 42}

        try:
            outcomes[case] = {"got": D.rank0_first(work, share=case == "share"), "ran": ran}
        except Exception as e:
            outcomes[case] = {"raised": type(e).__name__, "message": str(e), "ran": ran}
    return outcomes


@pytest.mark.slow
def test_rank0_first_gives_every_rank_rank0s_outcome(tmp_path):
    ranks = run_group(3, tmp_path, _rank0_first_cases)
    # Had the others waited for rank 0 until the group's timeout (20 s), they would raise that timeout instead.
    error, odd, share, no_share = ([o[case] for o in ranks] for case in RANK0_CASES)
    assert [(o["raised"], o["message"]) for o in error] == [  # every rank raises rank 0's error: same type, same line
        ("ValueError", "stats of /data/x failed: image 3 unreadable; fix or remove it")] * 3
    # One that cannot be rebuilt elsewhere: its message, as a RuntimeError.
    assert [(o["raised"], o["message"]) for o in odd] == [("_TwoArgs", "/data/x: broken")] + [("RuntimeError", "/data/x: broken")] * 2
    for outcomes in (error, odd, share, no_share):
        assert [o["ran"] for o in outcomes] == [[0], [], []]  # rank 0 alone did the work
    assert [o["got"] for o in share] == [{"answer": 42}] * 3
    assert [o["got"] for o in no_share] == [{"answer": 42}, None, None]


# ----------------------------------------------------------------------------- sharded evaluation, one writer


@pytest.fixture(scope="module")
def seven_val(tmp_path_factory, make_camvid) -> Path:
    """A val split of 7 images: a multiple of neither 2 nor 3 processes."""
    return make_camvid(tmp_path_factory.mktemp("data") / "camvid", splits=("val",), n=7)


def _threads(n: int):
    """torch's thread count set to `n` for a block (the ranks run one thread each)."""
    from dabnet.util.state import scoped

    return scoped(torch.get_num_threads, torch.set_num_threads, n)


def _eval_config(root: Path, ckpt: Path, out: Path):
    from dabnet.config import EvalConfig

    return EvalConfig(checkpoint=str(ckpt), data_root=str(root), workers=0, device="cpu", backend="eager",
                      json=str(out / "result.json"), confusion_png=str(out / "confusion.png"))  # fmt: skip


def _evaluated(cfg, log: Callable) -> Dict[str, Any]:
    """run_evaluation's result, with the summed confusion matrix it computed from."""
    import dabnet.commands.evaluate as ev

    seen: Dict[str, Any] = {}
    real = ev.evaluate

    def spy(*a, **k):
        cm = real(*a, **k)
        seen["matrix"] = cm.mat.tolist()
        return cm

    ev.evaluate = spy
    try:
        return {"result": ev.run_evaluation(cfg, log=log), "matrix": seen["matrix"]}
    finally:
        ev.evaluate = real


def _eval_rank(rank: int, root: str, ckpt: str, out: str) -> Dict[str, Any]:
    logs: List[str] = []
    got = _evaluated(_eval_config(Path(root), Path(ckpt), Path(out)), logs.append)
    return dict(got, logs=logs)


@pytest.mark.slow
@pytest.mark.parametrize("world", [2, 3])
def test_eval_under_ddp_counts_each_image_once_and_rank0_alone_writes(seven_val, ckpt, tmp_path, world):
    single_out = tmp_path / "single"
    with _threads(1):  # as each rank runs
        single = _evaluated(_eval_config(seven_val, ckpt, single_out), lambda *a: None)
    out = tmp_path / "group" / "out"
    ranks = run_group(world, tmp_path / "group", _eval_rank, str(seven_val), str(ckpt), str(out))
    for o in ranks:  # to the last digit, on every rank
        assert "raised" not in o, o
        assert o["matrix"] == single["matrix"] and o["result"] == single["result"]
    assert json.loads((out / "result.json").read_text()) == single["result"]
    assert (out / "confusion.png").read_bytes() == (single_out / "confusion.png").read_bytes()
    # One writer: rank 0 writes the outputs (each through a temporary file beside it) and speaks; the others do neither.
    assert {Path(w).parent for w in ranks[0]["writes"]} == {out.resolve()}
    assert any(".result." in w for w in ranks[0]["writes"]) and any(".confusion." in w for w in ranks[0]["writes"])
    assert all(o["writes"] == [] and o["logs"] == [] and o["stdout"] == "" for o in ranks[1:])
    assert sum("mIoU" in line for line in ranks[0]["logs"]) == 1


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs torchrun")
def test_torchrun_eval_prints_once_and_equals_one_process(seven_val, ckpt, tmp_path):
    from dabnet.commands.evaluate import run_evaluation
    from dabnet.config import EvalConfig

    args = ["eval", "--checkpoint", str(ckpt), "--data-root", str(seven_val), "--workers", "0", "--device", "cpu",
            "--backend", "eager"]  # fmt: skip
    with _threads(1):
        single = run_evaluation(EvalConfig(checkpoint=str(ckpt), data_root=str(seven_val), workers=0, device="cpu",
                                           backend="eager"), log=lambda *a: None)  # fmt: skip
    js = tmp_path / "ddp.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=3", "-m", "dabnet"] + args + ["--json", str(js)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert res.stdout.count("mIoU") == 1, res.stdout  # printed by rank 0 only
    assert json.loads(js.read_text()) == single


# ----------------------------------------------------------------------------- the statistics cache: one writer


def _stats_rank(rank: int, root: str) -> Dict[str, Any]:
    import dabnet.training.run as train_mod
    from dabnet.config import TrainConfig, build_config
    from dabnet.data.datasets import build_dataset

    cfg = build_config(TrainConfig, "camvid", data_root=root, class_weights="enet")
    ds = build_dataset(cfg.dataset, cfg.data_root, cfg.train_split)
    if rank == 0:
        time.sleep(1.0)  # a rank 0 that comes late: the others must not compute and cache the statistics themselves
    weights = train_mod._class_weights(cfg, ds, torch.device("cpu"), lambda *a: None)
    return {"weights": weights.tolist()}


@pytest.mark.slow
def test_only_rank0_writes_the_statistics_cache(make_camvid, tmp_path, monkeypatch):
    root = make_camvid(tmp_path / "camvid", splits=("train",), n=7)
    cache = tmp_path / "cache"
    monkeypatch.setenv("DABNET_CACHE", str(cache))  # the spawned ranks inherit it
    ranks = run_group(3, tmp_path / "group", _stats_rank, str(root))
    assert all("raised" not in o for o in ranks), ranks
    assert ranks[0]["weights"] == ranks[1]["weights"] == ranks[2]["weights"]
    assert ranks[1]["writes"] == ranks[2]["writes"] == []
    assert ranks[0]["writes"] and all(cache.resolve() in Path(w).parents for w in ranks[0]["writes"])
    assert len(list(cache.glob("stats/*/entry.json"))) == 1  # one entry, in the content-checked store


# ----------------------------------------------------------------------------- several machines


def _group_settings(rank: int, saved: Dict[str, Any]) -> Dict[str, Any]:
    """The thread count init_distributed gives a CPU process of a group (OMP_NUM_THREADS unset, then 3) and after
    cleanup; then _same_resume_point on ranks that find the same checkpoint, and on ranks that do not."""
    from dabnet.training.resume import same_resume_point as _same_resume_point
    from dabnet.config import TrainConfig

    out: Dict[str, Any] = {"threads": []}
    for omp in (None, "3"):
        os.environ.pop("OMP_NUM_THREADS", None)
        if omp:
            os.environ["OMP_NUM_THREADS"] = omp
        torch.set_num_threads(2)  # as a launcher of one process leaves it on a machine of 2 cores
        D.init_distributed("cpu")
        inside = torch.get_num_threads()
        D.cleanup()  # the group is the harness's: it stays; the thread count goes back
        out["threads"].append([inside, torch.get_num_threads(), D.is_dist()])
    cfg = TrainConfig(out=f"/runs/r{rank}")
    _same_resume_point(cfg, saved, None)  # the same checkpoint on every rank: nothing to say
    try:
        _same_resume_point(cfg, saved if rank == 0 else None, None)  # rank 1's machine holds no run folder
    except Exception as e:
        out.update(raised=type(e).__name__, message=str(e))
    return out


@pytest.mark.slow  # spawns 2 gloo processes
def test_group_threads_and_resume_point_agree_on_every_rank(tmp_path):
    ranks = run_group(2, tmp_path / "group", _group_settings, {"epoch": 1, "iteration": 4})
    for o in ranks:
        # OMP_NUM_THREADS unset: 1 thread (torchrun's own choice for several processes on one machine), then as set;
        # the count the process had is back after cleanup, and the caller's group still up
        assert o["threads"] == [[1, 2, True], [3, 2, True]], o
        assert o["raised"] == "CheckpointError", o
    host = socket.gethostname()
    assert ranks[0]["message"] == ranks[1]["message"] == (  # the same line on every rank, naming both
        f"cannot resume: rank 0 (on {host}) finds one at epoch 1, iteration 4 in /runs/r0/last.pth, rank 1 (on {host}) "
        "finds no checkpoint in /runs/r1/last.pth; every machine must see the same run folder: put --out on a filesystem "
        "they all share")


# One tiny CPU run, as a user would launch it: no OMP_NUM_THREADS set (torchrun sets 1 itself only for a launcher
# of several processes).
NODE_SETTINGS = ["epochs=2", "batch_size=2", "crop_size=[32,48]", "workers=0", "check_data=false", "warmup_iters=1",
                 "fused=false", "val_batch_size=4", "log_every=1"]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(torchrun: List[str], root: Path, out: Path, log: Path) -> subprocess.Popen:
    """One `torchrun ... -m dabnet train` launcher (its own process group, for the kill on timeout), output to `log`."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env["PYTHONUNBUFFERED"] = "1"  # rank 0's lines reach the log as printed: the test waits for one
    cmd = [sys.executable, "-m", "torch.distributed.run", *torchrun, "-m", "dabnet", "train", "--config", "camvid",
           "--out", str(out)] + sum((["--set", s] for s in [f"data_root={root}", *NODE_SETTINGS]), [])  # fmt: skip
    with log.open("w") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _two_machines(root: Path, out: Path, log: Path, run_id: str) -> List[subprocess.Popen]:
    """Two launchers of one process each, as on two machines: the c10d rendezvous on 127.0.0.1, which gives the
    global ranks in its own order (not by --node_rank)."""
    rdzv = ["--nnodes", "2", "--nproc_per_node", "1", "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{_free_port()}",
            "--rdzv_id", run_id]  # fmt: skip
    return [_launch(rdzv + ["--node_rank", str(n)], root, out, log.with_name(f"{log.stem}-node{n}.log")) for n in (0, 1)]


def _wait(procs: List[subprocess.Popen], deadline: float, logs: List[Path]) -> List[int]:
    """The launchers' exit codes; all of them (launchers and ranks) killed, and the test failed, past `deadline`."""
    try:
        return [p.wait(timeout=max(deadline - time.monotonic(), 0.1)) for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
        pytest.fail("torchrun still running at the deadline:\n" + "\n".join(log.read_text()[-3000:] for log in logs))


def _tensors(obj: Any, where: str = "") -> Dict[str, torch.Tensor]:
    """Every tensor in a checkpoint, by its path in the nested dicts and lists."""
    if isinstance(obj, torch.Tensor):
        return {where: obj}
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    return {k: v for key, value in items for k, v in _tensors(value, f"{where}/{key}").items()}


def _bits(t: torch.Tensor) -> bytes:
    return t.detach().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes()


def _stopped_and_resumed(root: Path, one: Path, two: Path, tmp_path: Path, deadline: float, started: List[subprocess.Popen]) -> None:
    """One launcher of 2 processes trains into `one`; meanwhile two launchers of 1 process each train into `two`,
    are stopped by a SIGTERM, and resume. Each launcher is added to `started` as it starts."""
    single_log = tmp_path / "one.log"
    started.append(_launch(["--standalone", "--nproc_per_node", "2"], root, one, single_log))
    first = _two_machines(root, two, tmp_path / "first.log", "first")
    started += first
    logs = [tmp_path / f"first-node{n}.log" for n in (0, 1)]
    # Stop the two-machine run as a scheduler would stop one of its processes: SIGTERM to rank 0 (whose pid is in
    # OUT/.lock) once it trains; every rank stops at the same step, and rank 0 saves where they stand.
    while not any("training dabnet on" in log.read_text() for log in logs):
        if all(p.poll() is not None for p in first) or time.monotonic() > deadline:
            pytest.fail("the two-machine run ended before it trained:\n" + "\n".join(log.read_text()[-3000:] for log in logs))
        time.sleep(0.02)
    os.kill(int((two / ".lock").read_text().split()[1]), signal.SIGTERM)
    _wait(first, deadline, logs)
    said = "".join(log.read_text() for log in logs)
    stopped = torch.load(two / "last.pth", weights_only=True)
    assert "SIGTERM: saved" in said and stopped["iteration"] < 4, said[-3000:]  # 2 epochs of 8 images / (2 x 2)
    second = _two_machines(root, two, tmp_path / "second.log", "second")
    started += second
    logs = [tmp_path / f"second-node{n}.log" for n in (0, 1)]
    assert _wait(second + started[:1], deadline, logs + [single_log]) == [0, 0, 0], "\n".join(
        p.read_text()[-3000:] for p in logs + [single_log])
    said = "".join(log.read_text() for log in logs)
    assert "resuming" in said and "done" in said, said[-3000:]


@pytest.mark.slow  # three torchrun launchers, twice
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs torchrun")
def test_two_machines_stopped_and_resumed_equal_one_machine_bit_for_bit(make_camvid, tmp_path):
    root = make_camvid(tmp_path / "camvid", n=8)
    deadline = time.monotonic() + 300  # against a hang; generous, for a machine shared with other work
    one, two = tmp_path / "one", tmp_path / "two"
    started: List[subprocess.Popen] = []
    try:
        _stopped_and_resumed(root, one, two, tmp_path, deadline, started)
    finally:
        for p in started:  # whatever a failed assertion left running: the launchers and their ranks
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)

    a, b = (torch.load(folder / "last.pth", weights_only=True) for folder in (one, two))
    ta, tb = _tensors(a), _tensors(b)
    assert sorted(ta) == sorted(tb) and any(k.startswith("/model/") for k in ta) and any(k.startswith("/optimizer/") for k in ta)
    differ = [k for k in ta if ta[k].dtype != tb[k].dtype or ta[k].shape != tb[k].shape or _bits(ta[k]) != _bits(tb[k])]
    assert not differ, f"{len(differ)} of {len(ta)} tensors differ, e.g. {differ[:5]}"
    keys = ("epoch", "iteration", "lr", "train_loss", "val_miou")
    assert [[h[k] for k in keys] for h in a["history"]] == [[h[k] for k in keys] for h in b["history"]]
    assert (a["epoch"], a["iteration"], a["finished"]) == (b["epoch"], b["iteration"], b["finished"]) == (2, 4, True)


# ----------------------------------------------------------------------------- faults: no rank hangs the others


def _dabnet(argv: List[str]) -> Dict[str, Any]:
    """`python -m dabnet ARGV` in this process: its exit status, what it printed, and how long it took."""
    from contextlib import redirect_stderr

    from dabnet.cli import main

    out, err = io.StringIO(), io.StringIO()
    t0 = time.monotonic()
    with redirect_stdout(out), redirect_stderr(err):
        rc = main(argv)
    errors = [line for line in err.getvalue().splitlines() if line.startswith(f"dabnet {argv[0]}: ")]  # not warnings
    return {"rc": rc, "stdout": out.getvalue(), "stderr": err.getvalue(), "errors": errors, "seconds": time.monotonic() - t0}


def _train_argv(root: str, out: str, *settings: str) -> List[str]:
    base = ["epochs=1", "batch_size=2", "crop_size=[32, 48]", "workers=0", "val_batch_size=4", "check_data=false",
            "fused=false", "class_weights=none", "warmup_iters=0", "device=cpu", f"data_root={root}"]  # fmt: skip
    return ["train", "--config", "camvid", "--out", out] + [a for s in base + list(settings) for a in ("--set", s)]


class _Patched:
    """`setattr(obj, name, value)` for a block, undone after it."""

    def __init__(self, obj: Any, name: str, value: Any) -> None:
        self.obj, self.name, self.value = obj, name, value

    def __enter__(self) -> None:
        self.old = getattr(self.obj, self.name)
        setattr(self.obj, self.name, self.value)

    def __exit__(self, *exc: Any) -> None:
        setattr(self.obj, self.name, self.old)


def _on_item(rank: int, only: int, at: int, act: Callable[[], None]) -> Callable:
    """SegmentationDataset.__getitem__ that runs `act` in process `only` when it reads its `at`-th item."""
    from dabnet.data.datasets import SegmentationDataset
    from dabnet.data.transforms import TrainTransform

    real, calls = SegmentationDataset.__getitem__, {"n": 0}

    def getitem(self, index):
        if rank == only and isinstance(self.transform, TrainTransform):  # a training image, not a validation one
            calls["n"] += 1
            if calls["n"] == at:
                act()
        return real(self, index)

    return getitem


def _nan_loss(rank: int, only: int, at: int) -> Callable:
    """train.build_loss whose loss turns NaN in process `only` at its `at`-th step."""
    import dabnet.training.run as train_mod

    real = train_mod.build_loss

    def build(*a: Any, **k: Any) -> torch.nn.Module:
        inner, calls = real(*a, **k), {"n": 0}

        class NanAt(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, logits, target):
                calls["n"] += 1
                loss = self.inner(logits, target)
                return loss * float("nan") if rank == only and calls["n"] == at else loss

        return NanAt()

    return build


def _fault_ranks(rank: int, root: str, bad_root: str, teacher: str, work: str) -> Dict[str, Any]:
    """Every fault scenario in turn, in one group of processes (each scenario a `dabnet train` or `eval`): what
    each ended with, and the files this rank wrote in it."""
    import errno
    import signal

    import dabnet.training.run as train_mod
    import dabnet.training.distill as distill_mod
    import dabnet.training.outputs as outputs_mod
    from dabnet.data.datasets import DatasetError, SegmentationDataset
    from dabnet.training.distill import DistillError

    writes: List[str] = []
    _record_writes(writes, work)

    def fail(error: BaseException) -> Callable:
        def raiser(*a: Any, **k: Any) -> Any:
            raise error

        return raiser

    def sigterm() -> None:
        os.kill(os.getpid(), signal.SIGTERM)

    def train(name: str, *settings: str, data: str = root) -> List[str]:
        return _train_argv(data, f"{work}/{name}", *settings)

    ckpt = f"{work}/trained/last.pth"
    scenarios = {
        "check_data": (train("check_data", "check_data=true", data=bad_root), []),
        "stats": (train("stats", "class_weights=enet"), [(train_mod, "compute_stats", fail(DatasetError("statistics of f002.png failed (injected)")))]),
        "teacher": (train("teacher", f"distill_from={teacher}"),
                    [(distill_mod, "teacher_probabilities", fail(DistillError("teacher map of f001.png failed (injected)")))]),
        "save": (train("save"), [(outputs_mod, "save_checkpoint", fail(OSError(errno.ENOSPC, "No space left on device", f"{work}/save/last.pth")))]),
        "loader": (train("loader"), [(SegmentationDataset, "__getitem__", _on_item(rank, 1, 3, fail(DatasetError("f005.png: cannot read (injected)"))))]),
        "nan": (train("nan"), [(train_mod, "build_loss", _nan_loss(rank, 2, 2))]),
        "stop": (train("stop"), [(SegmentationDataset, "__getitem__", _on_item(rank, 1, 3, sigterm))]),
        "refuse": (train("refuse"), []),
        "boundary": (train("boundary", "epochs=2"), []),
        "trained": (train("trained", "class_weights=enet"), []),  # then evaluated
        "eval": (["eval", "--checkpoint", ckpt, "--data-root", root, "--workers", "0", "--device", "cpu", "--backend", "eager",
                  "--json", f"{work}/eval/result.json", "--confusion-png", f"{work}/eval/confusion.png"], []),  # fmt: skip
    }
    outcomes = {}
    for name, (argv, patches) in scenarios.items():
        del writes[:]
        with ExitStack() as stack:
            for obj, attr, value in patches:
                stack.enter_context(_Patched(obj, attr, value))
            outcomes[name] = dict(_dabnet(argv), writes=list(writes))
    return outcomes


@pytest.fixture(scope="module")
def faults(tmp_path_factory, make_camvid, ckpt, sigterm_at) -> Dict[str, Any]:
    """The fault scenarios run once by 3 gloo processes (_fault_ranks), between the single-process runs that some
    of them resume or that resume them; the outcomes by scenario and rank, and the folders."""
    import dabnet.training.run as train_mod

    base = tmp_path_factory.mktemp("faults").resolve()
    root, bad, work = make_camvid(base / "camvid", n=12), make_camvid(base / "bad", n=12), base / "work"
    (bad / "trainannot" / "f002.png").write_bytes(b"not a png")  # what the data check finds
    work.mkdir()
    cache = os.environ.get("DABNET_CACHE")
    os.environ["DABNET_CACHE"] = str(work / "cache")  # the ranks inherit it: the statistics cache is theirs to write
    steps: List[int] = []
    real = train_mod.train_one_epoch

    def counted(*a: Any, **k: Any) -> Dict[str, Any]:
        result = real(*a, **k)
        steps.append(result["steps"])
        return result

    try:
        with _threads(1):
            with _Patched(train_mod, "train_one_epoch", sigterm_at(real, 1, 1)):
                stopped = _dabnet(_train_argv(str(root), f"{work}/refuse"))  # 1 process, stopped after step 1
            finished = _dabnet(_train_argv(str(root), f"{work}/boundary"))  # 1 process, 1 epoch
            assert (stopped["rc"], finished["rc"]) == (143, 0), (stopped, finished)
            ranks = run_group(3, base / "group", _fault_ranks, str(root), str(bad), str(ckpt), str(work), timeout=300)
            with _Patched(train_mod, "train_one_epoch", counted):  # the 3 processes' "stop" run, resumed by 1
                mapped = _dabnet(_train_argv(str(root), f"{work}/stop"))
    finally:
        if cache is None:
            os.environ.pop("DABNET_CACHE", None)
        else:
            os.environ["DABNET_CACHE"] = cache
    return {"ranks": ranks, "root": root, "work": work, "mapped": dict(mapped, steps=steps)}


FAILURES = {  # scenario -> what its one error line says
    "check_data": r"1 problem\(s\) in camvid:train, found before training: .*f002\.png",
    "stats": r"statistics of f002\.png failed \(injected\)",
    "teacher": r"teacher map of f001\.png failed \(injected\)",
    "save": r"disk full writing \S+/save/last\.pth",
    "loader": r"f005\.png: cannot read \(injected\)",
    "nan": r"loss is nan in process 2 after 1 step\(s\) of this epoch \(epoch 1\)\. Training stopped; no epoch finished",
    "refuse": r"cannot resume \S+/refuse/last\.pth mid-epoch \(epoch 1, step 1\) with 3 process\(es\): it was trained with 1, "
              r"and its 1 step\(s\) of 1 process\(es\) do not divide among 3; resume with 1",
}


def _scenario(faults: Dict[str, Any], name: str) -> List[Dict[str, Any]]:
    return [o[name] for o in faults["ranks"]]


@pytest.mark.slow  # 3 spawned processes
@pytest.mark.parametrize("scenario", sorted(FAILURES))
def test_a_failure_in_one_process_ends_every_process_with_the_same_line(faults, scenario):
    # rank 0's sections (data check, statistics, teacher maps, checkpoint), one rank's loader or NaN, a refused resume
    ranks = _scenario(faults, scenario)
    lines = [tuple(o["errors"]) for o in ranks]
    assert [o["rc"] for o in ranks] == [2, 2, 2], [o["stderr"] for o in ranks]
    assert len(set(lines)) == 1 and len(lines[0]) == 1, lines  # a rank left waiting would fail later, with the group's timeout
    (line,) = lines[0]
    assert re.search(FAILURES[scenario], line), line
    assert all(o["seconds"] < 30 for o in ranks), [o["seconds"] for o in ranks]


@pytest.mark.slow  # 3 spawned processes
def test_a_stop_signal_to_one_process_stops_every_process_at_the_same_step(faults):
    ranks = _scenario(faults, "stop")
    assert [o["rc"] for o in ranks] == [128 + 15] * 3, [o["stderr"] for o in ranks]  # SIGTERM's status, on each
    assert re.search(r"SIGTERM: saved \S+/stop/last\.pth at epoch 1, iteration 1;", ranks[0]["stdout"]), ranks[0]["stdout"]
    assert all(o["seconds"] < 30 for o in ranks)


@pytest.mark.slow  # 3 spawned processes
def test_only_rank0_writes_in_a_training_run_and_an_evaluation(faults):
    work = faults["work"]
    for name in ("trained", "eval"):
        ranks = _scenario(faults, name)
        assert [o["rc"] for o in ranks] == [0] * 3, [o["stderr"] for o in ranks]
        assert ranks[1]["writes"] == ranks[2]["writes"] == [], (ranks[1]["writes"], ranks[2]["writes"])
        assert ranks[1]["stdout"] == ranks[2]["stdout"] == ""
    written = {Path(w).relative_to(work).as_posix() for w in _scenario(faults, "trained")[0]["writes"]}
    wanted = {"trained/last.pth", "trained/best.pth", "trained/config.yaml", "trained/metrics.jsonl", "trained/metrics.csv"}
    wanted |= {"trained/loss.png", "trained/miou.png"} if _importable("matplotlib") else set()
    assert wanted <= written, sorted(written)
    assert any(w.startswith("cache/stats/") for w in written), sorted(written)  # the class weights' statistics
    if _importable("tensorboard"):
        assert any(w.startswith("trained/tb/") for w in written), sorted(written)
    evaluated = {Path(w).relative_to(work).as_posix() for w in _scenario(faults, "eval")[0]["writes"]}
    assert {"eval/result.json", "eval/confusion.png"} <= evaluated, sorted(evaluated)


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


@pytest.mark.slow  # 3 spawned processes
def test_the_logged_validation_miou_is_that_of_the_saved_checkpoint(faults):
    # Each process's BatchNorm statistics come from its own batches; the validation, sharded over the processes,
    # must measure the statistics last.pth holds (rank 0's).
    from dabnet.commands.evaluate import run_evaluation
    from dabnet.config import EvalConfig

    work = faults["work"]
    logged = [json.loads(line) for line in (work / "trained" / "metrics.jsonl").read_text().splitlines()][-1]["val_miou"]
    with _threads(1):
        result = run_evaluation(EvalConfig(checkpoint=str(work / "trained" / "last.pth"), data_root=str(faults["root"]), workers=0,
                                           device="cpu", backend="eager"), log=lambda *a: None)  # fmt: skip
    assert round(result["miou"], 6) == logged
    assert json.loads((work / "eval" / "result.json").read_text())["miou"] == result["miou"]  # the 3 processes' eval


@pytest.mark.slow  # 3 spawned processes
def test_a_resume_with_more_processes_at_an_epoch_boundary_recomputes_the_schedule(faults):
    from dabnet.io.checkpoint import read_checkpoint

    ranks = _scenario(faults, "boundary")
    assert [o["rc"] for o in ranks] == [0] * 3, [o["stderr"] for o in ranks]
    assert ("resuming with 3 process(es) a run trained with 1: 2 steps per epoch now; epoch 2 goes on at step 0, "
            "the schedule at step 2 (was 6)") in ranks[0]["stdout"]  # fmt: skip
    ck = read_checkpoint(faults["work"] / "boundary" / "last.pth")
    # 6 steps of 1 process (12 images, batch 2), then 2 of 3 processes; the poly schedule over 2 epochs of 2 steps.
    assert (ck["epoch"], ck["iteration"], ck["world_size"]) == (2, 4, 3)
    assert ck["history"][-1]["lr"] == 0.0  # the schedule's end, reached at the run's end


@pytest.mark.slow  # 3 spawned processes
def test_a_resume_with_fewer_processes_mid_epoch_goes_on_from_the_same_image(faults):
    mapped = faults["mapped"]
    assert mapped["rc"] == 0, mapped["stderr"]
    assert ("resuming with 1 process(es) a run trained with 3: 6 steps per epoch now; epoch 1 goes on at step 3, "
            "the schedule at step 3 (was 1)") in mapped["stdout"]  # fmt: skip
    assert mapped["steps"] == [3]  # 1 step of 3 processes = 3 steps of 1: the other half of the epoch's 12 images


@pytest.mark.parametrize("saved,world,step", [(3, 1, 1), (2, 1, 1), (2, 3, 3), (1, 2, 4), (3, 2, 2)])
def test_resume_step_goes_on_at_the_first_image_not_trained(monkeypatch, saved, world, step):
    from dabnet.training.sampling import ResumableSampler
    from dabnet.training.reshard import resume_step

    batch, n = 2, 13

    def drawn(processes: int, skip: int, take: Optional[int] = None) -> List[int]:
        """The images `processes` processes train in an epoch, from step `skip` on (`take` steps, else all)."""
        out: List[int] = []
        for r in range(processes):
            monkeypatch.setattr(D, "rank", lambda r=r: r)
            monkeypatch.setattr(D, "world_size", lambda: processes)
            sampler = ResumableSampler(list(range(n)), seed=3, batch_size=batch)
            sampler.set_epoch(4, skip)
            order = list(sampler)
            order = order[: len(order) // batch * batch]  # the loader's drop_last
            out += order[: take * batch] if take is not None else order
        return out

    before = drawn(saved, 0, take=step)
    after = drawn(world, resume_step(saved, world, step, False, "last.pth", 0))
    assert not set(before) & set(after)
    assert sorted(before + after) == sorted(drawn(world, 0))  # the whole epoch of `world` processes, once


def test_resume_step_refuses_what_it_cannot_map_in_one_line_naming_both_sizes():
    from dabnet.io.checkpoint import CheckpointError
    from dabnet.training.reshard import resume_step, saved_world_size

    with pytest.raises(CheckpointError, match=r"mid-epoch \(epoch 2, step 1\) with 3 process\(es\): it was trained with 2, .*"
                                              r"resume with 2 \(torchrun --nproc_per_node=2\)"):  # fmt: skip
        resume_step(2, 3, 1, False, "last.pth", 1)
    with pytest.raises(CheckpointError, match="data_on_device gives each process a fixed share"):
        resume_step(2, 1, 2, True, "last.pth", 0)
    assert resume_step(2, 3, 0, True, "last.pth", 0) == 0  # at an epoch's start any number goes on
    assert saved_world_size({"world_size": 4}) == 4
    assert saved_world_size({"hardware": "Xeon (avx2 amx_bf16), 2 threads x3, capped by ONEDNN_MAX_CPU_ISA=AVX2"}) == 3
    assert saved_world_size({"hardware": "NVIDIA H100 x2"}) == 2 and saved_world_size({}) is None


def test_group_timeout_reads_dabnet_dist_timeout(monkeypatch):
    import torch.distributed as dist

    monkeypatch.delenv("DABNET_DIST_TIMEOUT", raising=False)
    assert D.group_timeout() == datetime.timedelta(seconds=D.DEFAULT_TIMEOUT_S)
    monkeypatch.setenv("DABNET_DIST_TIMEOUT", "90")
    got = {}
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **k: got.update(k, backend=backend))
    monkeypatch.setattr(D, "is_dist", lambda: False)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(D, "_CREATED", False)
    D.init_distributed("cpu")
    assert got == {"backend": "gloo", "timeout": datetime.timedelta(seconds=90)}
    for bad in ("abc", "0", "-5"):
        monkeypatch.setenv("DABNET_DIST_TIMEOUT", bad)
        with pytest.raises(ValueError, match=rf"DABNET_DIST_TIMEOUT='{bad}' is not a number of seconds above 0"):
            D.group_timeout()
