"""commands.bench: the speed command's edge cases."""

from __future__ import annotations

from dabnet.cli import main


def test_bench_plot_without_a_suffix_says_the_file_it_writes(tmp_path, capsys):
    target = tmp_path / "edir"
    assert main(["bench", "--models", "dabnet", "--sizes", "32x32", "--backends", "eager", "--frames", "2", "--warmup", "1",
                 "--plot", str(target)]) == 0  # fmt: skip
    assert f"wrote {target}.png" in capsys.readouterr().out and (tmp_path / "edir.png").is_file()


def test_tiny_scale_in_eval_and_tiny_sizes_in_bench(ckpt, tmp_path, make_camvid, capsys):
    root = make_camvid(tmp_path / "cv", n=2)
    assert main(["eval", "--checkpoint", str(ckpt), "--data-root", str(root), "--backend", "eager", "--scales", "0.004", "1.0"]) == 0
    assert main(["bench", "--models", "dabnet", "--sizes", "2x2", "--backends", "eager"]) == 2
    assert "sizes=['2x2'] is not valid: sizes of at least 16x16" in capsys.readouterr().err
