"""Every option checked once, by its declared type and range (dabnet.util.options): the same rules for YAML, --set and
the command line, before any work; one-line errors that show at most 80 characters of a value; YAML read with its
alias expansion bounded; dataset.yaml held to the same checks in `data check` and in training (issue 50, section 2)."""

from __future__ import annotations

import dataclasses
import time

import pytest
import yaml

from dabnet.cli import main
from dabnet.config import ConfigError, EvalConfig, TrainConfig, build_config
from dabnet.data.registry import DatasetError

SHOWN_CHARS = 80  # the most of a value an error shows (util.options.SHOWN_CHARS; these cases run on code without it)


def _one_line_error(capsys, argv, seconds: float = 5.0) -> str:
    """main(argv) refuses with exit 2, promptly, one short line on stderr and no traceback; returns that line."""
    t0 = time.perf_counter()
    rc = main(argv)
    elapsed = time.perf_counter() - t0
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err, err[:2000]
    assert elapsed < seconds and len(err) < 2000, (elapsed, len(err))
    return err


def _train(tmp_path, *sets: str, config: str = "camvid") -> list:
    """A train command whose data root does not exist: an option's error must come first, and alone."""
    argv = ["train", "--config", config, "--set", f"data_root={tmp_path / 'nowhere'}"]
    return argv + [a for s in sets for a in ("--set", s)]


# ----------------------------------------------------------------------------- numbers (case 13)

NUMERIC = [  # --set value, the start of its one-line error
    ("poly_power=nan", "poly_power=nan is not valid: a finite number in (0, 100]"),  # trained to NaN weights, exit 0
    ("poly_power=-1", "poly_power=-1 is not valid"),  # ZeroDivisionError
    ("poly_power=0", "poly_power=0 is not valid"),
    ("scales=[.inf]", "scales=[inf] is not valid: a list of 1 to 64 finite numbers in (0, 8]"),  # OverflowError
    ("scales=[9]", "scales=[9] is not valid"),
    ("distill_scales=[.inf]", "distill_scales=[inf] is not valid: a list of 1 to 16 finite numbers in (0, 8]"),
    ("lr=inf", "lr=inf is not valid: a finite number in (0, 10]"),  # passed, then trained to a stop
    ("lr=.inf", "lr=inf is not valid"),
    ("lr=nan", "lr=nan is not valid"),
    ("lr=1e400", "lr=inf is not valid"),
    ("momentum=nan", "momentum=nan is not valid"),
    ("weight_decay=.nan", "weight_decay=nan is not valid"),
    ("grad_clip=inf", "grad_clip=inf is not valid: a finite number >= 0"),
    ("betas=[0.9, .nan]", "betas=[0.9, nan] is not valid"),
    ("crop_size=[360, 99999999]", "crop_size=[360, 99999999] is not valid"),
    ("mean=[1, 2]", "mean=[1, 2] is not valid: null or three numbers in [0, 255]"),
    ("std=[1, 0, 1]", "std=[1, 0, 1] is not valid"),
    ("distill_weight=inf", "distill_weight=inf is not valid"),
    ("distill_temperature=nan", "distill_temperature=nan is not valid"),
    ("ohem_min_kept=-5", "ohem_min_kept=-5 is not valid"),
    ("seed=-1", "seed=-1 is not valid"),
    ("model_kwargs={width: .nan}", "model_kwargs={'width': nan} is not valid"),
]


@pytest.mark.parametrize("setting,message", NUMERIC, ids=[s for s, _ in NUMERIC])
def test_numeric_options_are_finite_and_in_their_declared_range(setting, message, tmp_path, capsys):
    err = _one_line_error(capsys, _train(tmp_path, setting))
    assert message in err, err


@pytest.mark.parametrize("kwargs,message", [("{block_1: 1000000000}", "numbers in [0, 4096]"), ("{block_2: -3}", "numbers in [0, 4096]"),
                                            ("{block_1: 4096}", "more than 5,000 modules")])  # fmt: skip
def test_model_kwargs_that_would_build_for_ever_are_refused_promptly(kwargs, message, tmp_path, capsys):
    """model_kwargs are checked by building the network on the meta device: block_1: 1000000000 never ended."""
    from fuzz import time_bound

    with time_bound(30):
        err = _one_line_error(capsys, _train(tmp_path, f"model_kwargs={kwargs}"), seconds=30)
    assert "model_kwargs=" in err and message in err, err


@pytest.mark.parametrize("key,yaml_text,set_text", [("lr", ".inf", "inf"), ("poly_power", ".nan", "nan"), ("scales", "[.inf]", "[.inf]"),
                                                    ("distill_scales", "[.inf]", "[.inf]"), ("lr", "-1", "-1")])  # fmt: skip
def test_yaml_and_set_obey_the_same_rules(key, yaml_text, set_text, tmp_path):
    """`--set lr=inf` passed while YAML's `.inf` was refused: one check now answers both, with the same words."""
    config = tmp_path / "c.yaml"
    config.write_text(f"{key}: {yaml_text}\n")
    with pytest.raises(ConfigError) as from_yaml:
        build_config(TrainConfig, str(config))
    with pytest.raises(ConfigError) as from_set:
        build_config(TrainConfig, "camvid", [f"{key}={set_text}"])
    assert str(from_yaml.value) == str(from_set.value) and str(from_yaml.value).startswith(f"{key}=")


def test_numbers_read_the_same_from_yaml_and_set(tmp_path):
    """YAML 1.1 reads `1e-3` as a string while --set read it as a number; both read a number now."""
    config = tmp_path / "c.yaml"
    config.write_text("lr: 1e-3\nweight_decay: 2E-4\npoly_power: 1e+0\n")
    from_yaml = build_config(TrainConfig, str(config))
    from_set = build_config(TrainConfig, "camvid", ["lr=1e-3", "weight_decay=2E-4", "poly_power=1e+0"])
    assert (from_yaml.lr, from_yaml.weight_decay, from_yaml.poly_power) == (from_set.lr, from_set.weight_decay, from_set.poly_power) == (1e-3, 2e-4, 1.0)


@pytest.mark.parametrize("scales", ["inf", "60", "0", "nan"])
def test_eval_scales_are_refused_by_range_before_any_model_or_data(scales, ckpt, tmp_path, capsys, monkeypatch):
    """`eval --scales 60` allocated 7.46 GB, `--scales inf` overflowed: (0, 8] is checked before any work."""
    import dabnet.inference.segmenter

    def no_model(*a, **k):
        raise AssertionError("a model was prepared before the scales were checked")

    monkeypatch.setattr(dabnet.inference.segmenter.Segmenter, "from_checkpoint", no_model)
    err = _one_line_error(capsys, ["eval", "--checkpoint", str(ckpt), "--data-root", str(tmp_path / "nowhere"), "--scales", "1", scales])
    assert f"scales=[1.0, {float(scales)}] is not valid: a list of 1 to 16 finite numbers in (0, 8]" in err, err


def test_a_listed_choice_is_never_read_as_null():
    """`--set class_weights=none` read as null; `none` is one of its choices. An option that may be null still reads it."""
    cfg = build_config(TrainConfig, "camvid", ["class_weights=none", "val_split=none", "mean=null", "init_from=None"])
    assert cfg.class_weights == "none" and cfg.val_split is None and cfg.mean is None and cfg.init_from is None
    with pytest.raises(ConfigError, match="class_weights='nope' is not valid: one of enet, median, none"):
        build_config(TrainConfig, "camvid", ["class_weights=nope"])


def test_strings_stay_strings_and_bools_read_as_words():
    cfg = build_config(TrainConfig, "camvid", ["train_split=2007", "holdout=[0006R0]", "flip=off", "check_data=1"])
    assert cfg.train_split == "2007" and cfg.holdout == ["0006R0"] and cfg.flip is False and cfg.check_data is True


# ----------------------------------------------------------------------------- YAML bounds and the length of errors (case 7)


def _laughs(levels: int) -> str:
    """A mapping whose last key expands to 9**levels strings, in a few hundred bytes."""
    names = "abcdefghijklmnop"
    parts = [f"a: &a [{','.join(['lol'] * 9)}]"]
    parts += [f"{names[i]}: &{names[i]} [{','.join([f'*{names[i - 1]}'] * 9)}]" for i in range(1, levels)]
    return "{" + ",".join(parts) + "}"


def test_a_billion_laughs_config_is_refused_at_once_in_one_line(tmp_path, capsys):
    config = tmp_path / "laughs.yaml"
    config.write_text(f"model_kwargs: {_laughs(9)}\n")
    assert len(config.read_bytes()) < 400  # 9**9 strings once expanded
    err = _one_line_error(capsys, ["train", "--config", str(config)], seconds=2)
    assert str(config) in err and "aliases" in err, err


def test_an_alias_bomb_in_set_prints_one_short_line(tmp_path, capsys):
    """An 8-level alias in --set model_kwargs printed an error line of 360 million characters."""
    err = _one_line_error(capsys, _train(tmp_path, f"model_kwargs={_laughs(8)}"), seconds=2)
    assert "model_kwargs=" in err and len(err) < 400, err


def test_a_value_in_an_error_is_cut_to_80_characters(tmp_path, capsys):
    long_list = "[" + ", ".join(["1.5"] * 5000) + "]"
    err = _one_line_error(capsys, _train(tmp_path, f"lr={long_list}"))
    value = err.split("lr=", 1)[1].split(" is not valid")[0]
    assert len(value) <= SHOWN_CHARS and "a finite number in (0, 10]" in err, err
    err = _one_line_error(capsys, _train(tmp_path, "x" * 10_000 + "=1"))
    assert "unknown option" in err and len(err) < 1500, len(err)


@pytest.mark.parametrize("text,message", [
    ("[" * 5000 + "]" * 5000, "nested"),
    ("{a: &a [*a]}", "contains itself"),
    ("9" * 5000, "not valid YAML"),
    ("{a: [1, 2", "not valid YAML"),
    ("x" * (2 << 20), "bytes"),
], ids=["deep", "recursive", "huge-int", "broken", "2MB"])  # fmt: skip
def test_yaml_is_read_within_bounds(text, message):
    from dabnet.util.options import load_yaml

    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=message) as e:
        load_yaml(text, "--set x")
    assert time.perf_counter() - t0 < 2 and "\n" not in str(e.value) and len(str(e.value)) < 400


def test_shown_values_are_bounded_while_they_are_built():
    from dabnet.util.options import shown

    nested = [[["x" * 1000] * 1000] * 1000] * 1000  # a billion items by reference: its repr would never end
    t0 = time.perf_counter()
    text = shown(nested)
    assert len(text) <= SHOWN_CHARS and time.perf_counter() - t0 < 0.5
    assert shown("abc") == "'abc'" and shown(-1.0) == "-1.0" and shown(float("nan")) == "nan"


def test_ranges_read_as_written():
    from dabnet.util.options import Range

    r = Range.parse("(0, 8]")
    assert 8 in r and 0 not in r and 1e-9 in r and float("inf") not in r and float("nan") not in r
    assert Range.parse("[1, inf)").describe(integer=True) == "an integer >= 1"
    assert Range.parse("(0, inf)").describe(integer=False) == "a positive finite number"
    assert 10**400 not in Range.parse("[0, 255]") and 10**400 in Range.parse("[0, inf)")
    with pytest.raises(ValueError):
        Range.parse("0 to 8")


def test_every_numeric_option_declares_its_range():
    """Every int or float option of every command, and of TrainConfig, says what its meaning allows."""
    import typing

    from dabnet.cli import COMMANDS, DATA_COMMANDS
    from dabnet.data.datasets import FolderSpec

    def numeric(hint):
        return hint in (int, float) or any(numeric(a) for a in typing.get_args(hint))

    classes = [cls for cls, _ in list(COMMANDS.values()) + list(DATA_COMMANDS.values())] + [TrainConfig, FolderSpec]
    missing = [f"{cls.__name__}.{f.name}" for cls in classes for f in dataclasses.fields(cls)
               if numeric(typing.get_type_hints(cls)[f.name]) and "range" not in f.metadata and f.name != "classes" and f.name != "name"]  # fmt: skip
    assert missing == []


def test_the_check_runs_when_any_config_is_made():
    """The same check for the command line, YAML, --set and a saved config (from_saved), since it runs on construction."""
    from dabnet.config import from_saved

    with pytest.raises(ConfigError, match="poly_power=-1 is not valid"):
        from_saved(TrainConfig, {**dataclasses.asdict(TrainConfig()), "poly_power": -1})
    with pytest.raises(ConfigError, match="batch_size=0 is not valid"):
        EvalConfig(checkpoint="x", batch_size=0)


# ----------------------------------------------------------------------------- the stop message (case 13)


def test_lr_inf_is_refused_before_training_and_never_reaches_the_stop_message(make_camvid, tmp_path, capsys):
    """`--set lr=inf` trained until the loss was NaN, then named an OUT/last.pth that did not exist."""
    root, out = make_camvid(tmp_path / "cv", n=2), tmp_path / "run"
    sets = [f"data_root={root}", "lr=inf", "epochs=1", "batch_size=2", "crop_size=[32,48]", "workers=0", "fused=false",
            "check_data=false", "val_split=none", "warmup_iters=0"]  # fmt: skip
    err = _one_line_error(capsys, ["train", "--config", "camvid", "--out", str(out)] + [a for s in sets for a in ("--set", s)], seconds=60)
    assert "lr=inf is not valid" in err and "last.pth" not in err and not out.exists(), err


# ----------------------------------------------------------------------------- dataset.yaml (case 10)

BAD_SPECS = [  # a change to a valid dataset.yaml, the words its one-line error holds
    (dict(palette=[[1, 2], [3, 4, 5]]), "palette=[[1, 2], [3, 4, 5]] is not valid"),  # passed `data check` as clean
    (dict(palette=[[0, 0, 0], [255, 0, 300]]), "palette="),
    (dict(mean=[1, 2]), "mean=[1, 2] is not valid: three numbers in [0, 255]"),  # passed `data check` as clean
    (dict(std=[1, 0, 1]), "std=[1, 0, 1] is not valid"),
    (dict(mean=[1, 2, float("nan")]), "mean=[1, 2, nan] is not valid"),
    (dict(ignore_index=999), "ignore_index=999 is not valid: a mask value in [0, 255]"),  # IndexError traceback
    (dict(ignore_index=1), "ignore_index=1 is also a class id"),
    (dict(ignore_index="x"), "ignore_index='x' is not valid"),
    (dict(splits={"train": {"images": "images/train"}}), "split 'train'="),  # KeyError traceback
    (dict(splits={"train": ["images/train", "masks/train"]}), "split 'train'="),  # TypeError traceback
    (dict(splits={"train": {"images": "images/train", "masks": None}}), "split 'train'="),
    (dict(splits=["train", "val"]), "'splits' is required"),
    (dict(id_map={999: 0}), "id_map={999: 0} is not valid"),
    (dict(id_map={"a": 0}), "id_map={'a': 0} is not valid"),
    (dict(classes=[True, False]), "classes=[True, False] is not valid"),
    (dict(classes=[[1], [2]]), "classes=[[1], [2]] is not valid"),
    (dict(mask_suffix=5), "mask_suffix=5 is not valid"),
    (dict(name=None), "name=None is not valid"),
]


def _write_spec(path, change):
    spec = yaml.safe_load(path.read_text())
    spec.update(change)
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.parametrize("change,message", BAD_SPECS, ids=[str(c) for c, _ in BAD_SPECS])
def test_every_dataset_yaml_field_is_checked_by_data_check_and_training(change, message, make_folder, tmp_path, capsys):
    from dabnet.data.datasets import build_dataset

    spec = _write_spec(make_folder(tmp_path / "d"), change)
    err = _one_line_error(capsys, ["data", "check", "folder", str(spec)])
    assert str(spec) in err and message in err, err
    with pytest.raises(DatasetError) as e:  # what training and evaluation read
        build_dataset("folder", spec, "train")
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("text,message", [("5\n", "must hold a mapping"), ("[a, b]\n", "must hold a mapping"),
                                          ("classes: [a]\nsplits: " + _laughs(9) + "\n", "aliases"),
                                          ("classes: [a\n", "not valid YAML")])  # fmt: skip
def test_a_dataset_yaml_that_is_not_a_mapping_is_one_line(text, message, tmp_path, capsys):
    spec = tmp_path / "dataset.yaml"
    spec.write_text(text)
    err = _one_line_error(capsys, ["data", "check", "folder", str(spec)], seconds=2)
    assert str(spec) in err and message in err, err


def test_training_refuses_a_bad_dataset_yaml_in_one_line(make_folder, tmp_path, capsys):
    spec = _write_spec(make_folder(tmp_path / "d"), dict(mean=[1, 2]))
    err = _one_line_error(capsys, ["train", "--config", "folder_example", "--set", f"data_root={spec}", "--out", str(tmp_path / "run")])
    assert "mean=[1, 2] is not valid" in err and str(spec) in err
