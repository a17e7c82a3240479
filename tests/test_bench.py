"""commands.bench: the speed command's edge cases."""

from __future__ import annotations

import pytest

from dabnet.cli import main


def test_bench_plot_without_a_suffix_says_the_file_it_writes(tmp_path, capsys):
    target = tmp_path / "edir"
    assert main(["bench", "--models", "dabnet", "--sizes", "32x32", "--backends", "eager", "--frames", "2", "--warmup", "1",
                 "--plot", str(target)]) == 0  # fmt: skip
    assert f"wrote {target}.png" in capsys.readouterr().out and (tmp_path / "edir.png").is_file()


@pytest.mark.slow  # eval's loader workers
def test_tiny_scale_in_eval_and_tiny_sizes_in_bench(ckpt, tmp_path, make_camvid, capsys):
    root = make_camvid(tmp_path / "cv", n=2)
    assert main(["eval", "--checkpoint", str(ckpt), "--data-root", str(root), "--backend", "eager", "--scales", "0.004", "1.0"]) == 0
    assert main(["bench", "--models", "dabnet", "--sizes", "2x2", "--backends", "eager"]) == 2
    assert "sizes=['2x2'] is not valid: sizes of at least 16x16" in capsys.readouterr().err


def test_bench_auto_goes_through_the_same_policy_check_and_fallback_as_predict(monkeypatch):
    """`auto` in bench is runtimes.auto's: an int8 runner that disagrees with fp32 is replaced, as predict's is."""
    import dabnet
    import dabnet.runtimes.auto as auto
    from dabnet.commands.bench import _runner
    from dabnet.io.preprocessing import Normalize

    calls = []
    real = auto.prepare

    def prepared(model, backend, precision, *a, **k):
        calls.append((backend, precision))
        runner = real(model, "fold", "fp32", *a[:1])  # stands in for the chosen runtime, which quantized badly
        if precision == "int8":
            runner.info = {"agreement": 0.5}
        return runner

    monkeypatch.setattr(auto, "choose_auto", lambda device: ("openvino", "int8", "test"))
    monkeypatch.setattr(auto, "prepare", prepared)
    model = dabnet.create_model("dabnet", 11, block_1=1, block_2=2).eval()
    (label, precision, protocol), runner = _runner(model, "auto", "fp32", "cpu", None, Normalize((0, 0, 0)))
    assert calls[0] == ("openvino", "int8") and calls[1][1] != "int8" and precision != "int8"
    assert "int8 agreed with fp32 on only 50.0%" in runner.reason and label.startswith("auto (")
