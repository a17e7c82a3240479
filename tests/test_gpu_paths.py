"""The GPU paths, right by construction and checked on a CPU: the device `auto` of Segmenter, and the process-wide
switches (cuDNN's autotuner, inductor's freezing, thread counts) that commands set for their own scope only."""

from __future__ import annotations

import threading
import types

import pytest
import torch

import dabnet.inference.segmenter as segmenter_module
import dabnet.training.run as train_mod
from dabnet.config import BenchConfig, EvalConfig, TrainConfig, build_config
from dabnet.inference.segmenter import Segmenter
from dabnet.runtimes import FunctionRunner
from dabnet.util.state import KEEP, scoped, setting, shared_setting

# ----------------------------------------------------------------------------- Segmenter's device


def test_segmenter_device_defaults_to_auto(ckpt, monkeypatch):
    assert Segmenter.from_checkpoint(ckpt, backend="eager", log=None).device == torch.device("cpu")  # no GPU here
    chosen = []

    def prepared(spec, device, *args):  # where the network would be built and prepared: nothing touches CUDA
        chosen.append(device)
        return types.SimpleNamespace(), FunctionRunner(lambda x: x)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(segmenter_module, "_prepared", prepared)
    monkeypatch.setattr(segmenter_module, "Normalize", lambda mean, std, device: types.SimpleNamespace(mean=mean, std=std))
    seg = Segmenter.from_checkpoint(ckpt, log=None)
    assert chosen == ["cuda"] and seg._recipe[1]["device"] == "cuda"  # a pickled copy is rebuilt on the same device
    Segmenter.from_checkpoint(ckpt, backend="fold", log=None)
    Segmenter.from_checkpoint(ckpt, backend="openvino", log=None)  # a CPU-only runtime stays on the CPU
    Segmenter.from_checkpoint(ckpt, device="cpu", log=None)  # as given
    assert chosen[1:] == ["cuda", "cpu", "cpu"]


# ----------------------------------------------------------------------------- the scope helpers


def test_setting_and_scoped_restore_what_they_found_also_on_an_error():
    owner = types.SimpleNamespace(flag=False)
    with setting(owner, "flag", True):
        assert owner.flag is True
    assert owner.flag is False
    with pytest.raises(KeyError), setting(owner, "flag", True):
        raise KeyError("x")
    assert owner.flag is False
    with setting(owner, "flag"):  # KEEP: restores what the block changes
        owner.flag = "changed"
    assert owner.flag is False
    box = [3]
    with scoped(lambda: box[0], lambda v: box.__setitem__(0, v), 1):
        assert box == [1]
    with scoped(lambda: box[0], lambda v: box.__setitem__(0, v), KEEP):
        assert box == [3]
    assert box == [3]


def test_shared_setting_holds_while_any_thread_is_inside_and_restores_after_the_last():
    owner = types.SimpleNamespace(freezing=False)
    a_inside, b_inside, a_left = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def a():
        with shared_setting(owner, "freezing", True):
            a_inside.set()
            b_inside.wait(5)
        a_left.set()

    def b():
        a_inside.wait(5)
        with shared_setting(owner, "freezing", True):
            b_inside.set()
            a_left.wait(5)
            seen["b after a left"] = owner.freezing  # a plain setting per thread would have restored False here

    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert seen == {"b after a left": True} and owner.freezing is False


# ----------------------------------------------------------------------------- commands leave the switches as found


def _switches():
    import torch._inductor.config as inductor_config

    return {"cudnn.benchmark": torch.backends.cudnn.benchmark, "inductor freezing": inductor_config.freezing,
            "threads": torch.get_num_threads()}  # fmt: skip


@pytest.fixture
def found():
    """The switches as a caller had them (the autotuner and freezing off, two threads), checked after the test."""
    import torch._inductor.config as inductor_config

    with setting(torch.backends.cudnn, "benchmark", False), setting(inductor_config, "freezing", False), \
            scoped(torch.get_num_threads, torch.set_num_threads, 2):  # fmt: skip
        before = _switches()
        yield before
        assert _switches() == before


def test_train_leaves_cudnn_benchmark_as_found_also_when_it_fails_on_cuda(make_camvid, tmp_path, monkeypatch, found):
    """The trainer turns cuDNN's autotuner on for CUDA (fixed crops); it must be off again after the run, here one
    that fails building its model on a GPU that this machine does not have."""
    root = make_camvid(tmp_path / "cv", n=2)
    cfg = build_config(TrainConfig, "camvid", data_root=str(root), out=str(tmp_path / "run"), epochs=1,
                       batch_size=2, crop_size=[32, 48], workers=0, check_data=False, fused=False, class_weights="none")  # fmt: skip
    turned_on = []

    def cuda_device(device="auto"):  # what torchrun on a GPU machine gives; building on it fails here
        return torch.device("cuda"), False

    monkeypatch.setattr(train_mod.D, "init_distributed", cuda_device)
    real_build = train_mod.build_run
    monkeypatch.setattr(train_mod, "build_run", lambda *a, **k: turned_on.append(torch.backends.cudnn.benchmark) or real_build(*a, **k))
    with pytest.raises((AssertionError, RuntimeError)):  # "Torch not compiled with CUDA enabled" / no GPU
        train_mod.train(cfg, log=lambda *a: None)
    assert turned_on == [True]  # on during the run


def test_matmul_peak_on_cuda_leaves_cudnn_benchmark_as_found(found):
    from dabnet.commands.bench import measure_matmul_peak

    if torch.cuda.is_available():
        measure_matmul_peak(0.01, 8, "cuda")
    else:
        with pytest.raises((AssertionError, RuntimeError)):  # after the switch was turned on
            measure_matmul_peak(0.01, 8, "cuda")


def test_bench_threads_are_for_the_bench_only(found):
    from dabnet.commands.bench import run_bench

    threads = []
    import dabnet.commands.bench as bench

    real = bench.benchmark
    bench_threads = lambda *a, **k: threads.append(torch.get_num_threads()) or real(*a, **k)  # noqa: E731
    try:
        bench.benchmark = bench_threads
        run_bench(BenchConfig(models=["dabnet"], sizes=[(32, 32)], backends=["eager"], frames=1, warmup=0, threads=1,
                              device="cpu", no_paper_protocol=True), log=lambda *a: None)  # fmt: skip
    finally:
        bench.benchmark = real
    assert threads == [1]


@pytest.mark.slow
def test_train_eval_and_predict_on_cpu_leave_the_switches_as_found(make_camvid, tmp_path, found):
    from dabnet.commands.evaluate import run_evaluation
    from dabnet.commands.predict import run_predict
    from dabnet.config import PredictConfig

    root = make_camvid(tmp_path / "cv", n=2)
    cfg = build_config(TrainConfig, "camvid", data_root=str(root), out=str(tmp_path / "run"), epochs=1, batch_size=2,
                       crop_size=[32, 48], workers=0, check_data=False, fused=False)  # fmt: skip
    train_mod.train(cfg, log=lambda *a: None)
    run_evaluation(EvalConfig(checkpoint=str(tmp_path / "run" / "last.pth"), data_root=str(root), workers=0, device="cpu",
                              backend="fold"), log=lambda *a: None)  # fmt: skip
    run_predict(PredictConfig(inputs=[str(next((root / "val").iterdir()))], checkpoint=str(tmp_path / "run" / "last.pth"),
                              out=str(tmp_path / "pred"), backend="fold", device="cpu"), log=lambda *a: None)  # fmt: skip


@pytest.mark.slow
def test_compile_backend_freezes_inside_its_calls_only(found):
    """The compiled runner still freezes its weights (the graph takes the image as its only input), and inductor's
    freezing is off again after each call."""
    import torch._inductor.freezing as freezing

    from dabnet.runtimes import prepare

    graph_inputs = []
    real = freezing.freeze

    def spy(dynamo_gm, aot_gm, example_inputs):
        frozen = real(dynamo_gm, aot_gm, example_inputs)
        graph_inputs.append(sum(n.op == "placeholder" for n in frozen[0].graph.nodes))
        return frozen

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1))
    net.num_classes = 4
    runner = prepare(net.eval(), "compile", "fp32", "cpu")
    torch._dynamo.reset()
    freezing.freeze = spy
    try:
        x = torch.randn(1, 3, 16, 16)
        out = runner(x)
        assert _switches()["inductor freezing"] is False
        torch.testing.assert_close(out, net(x), rtol=1e-4, atol=1e-4)
    finally:
        freezing.freeze = real
    assert graph_inputs == [1]  # the weights are constants: frozen
