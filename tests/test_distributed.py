"""Processes of one torchrun group: rank 0's work reported to every rank (rank0_first), one writer, and an
evaluation sharded over the ranks that equals the single-process one. Gloo on the CPU, each run under a hard timeout."""

from __future__ import annotations

import datetime
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any, Callable, Dict, List

import pytest
import torch

from dabnet.util import distributed as D

# ----------------------------------------------------------------------------- harness


def _record_writes(into: List[str], under: str) -> None:
    """Append to `into` every file under `under` this process opens for writing, whatever opens it (an audit hook)."""
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def hook(event: str, args: Any) -> None:
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
    import dabnet.commands.train as train_mod
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
    from dabnet.commands.train import _same_resume_point
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
