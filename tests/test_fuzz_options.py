"""Property-based tests of the option check (issue 50, section 6): values for every option of every command, drawn
from the config dataclasses' declared types together with nan, inf, huge, negative and wrong-typed values, through
the dataclass, `--set` and the command line; and dataset.yaml documents. The property: a result, or one line of
ConfigError (DatasetError for a dataset.yaml, argparse's own refusal for the command line), within a time bound;
never another exception, a traceback or a hang. DABNET_FUZZ=deep runs the deep profile (tests/fuzz.py)."""

from __future__ import annotations

import dataclasses
import math
import os
import typing
from pathlib import Path
from typing import Any, Union

import pytest
import yaml
from fuzz import fuzz, time_bound
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from dabnet.config import ConfigError, TrainConfig, build_config
from dabnet.data.registry import DatasetError

SECONDS = 5.0  # for one example: the check answers in milliseconds, a model_kwargs network builds on the meta device
MAX_MESSAGE = 1500  # characters: a few values of at most 80 each, the option's name and what it accepts


def _classes():
    from dabnet.cli import COMMANDS, DATA_COMMANDS

    found = {**{k: v[0] for k, v in COMMANDS.items()}, **{f"data {k}": v[0] for k, v in DATA_COMMANDS.items()}}
    return {**found, "train config": TrainConfig}


CLASSES = _classes()

# ----------------------------------------------------------------------------- values from the declarations

HUGE = st.sampled_from([10**6, 2**31, 2**63, 10**30, 10**400, -(10**30), 1e308, -1e308, 1e-320, -0.0])
SPECIAL = st.sampled_from([math.nan, math.inf, -math.inf, -1, -1.5, 0, 0.0])
WRONG = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12), st.binary(max_size=6),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
    st.tuples(st.floats(), st.text(max_size=3)), st.just(object()),
)  # fmt: skip


def _number(meta: dict, integer: bool):
    """Numbers around the declared range, its bounds, and beyond them."""
    rng = meta.get("range")
    bounds = [v for v in (rng.low, rng.high) if math.isfinite(v)] if rng else []
    near = st.sampled_from(bounds + [b + d for b in bounds for d in (-1, 1, -1e-9, 1e-9)]) if bounds else st.nothing()
    plain = st.integers(-(2**40), 2**40) if integer else st.floats(allow_nan=True, allow_infinity=True)
    return st.one_of(plain, near.map(lambda v: int(v) if integer and float(v).is_integer() else v), HUGE, SPECIAL,
                     st.integers(-100, 100), st.floats(-100, 100))  # fmt: skip


def values_for(hint: Any, meta: dict, depth: int = 0):
    """Values of a declared type, the numbers and strings it is hurt by, and values of every other type."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Union:
        return st.one_of(*[values_for(a, meta, depth) for a in args])
    if hint is type(None):
        return st.none()
    if hint is bool:
        return st.one_of(st.booleans(), WRONG)
    if hint in (int, float):
        return st.one_of(_number(meta, hint is int), WRONG)
    if hint is str:
        choices = meta.get("choices")
        listed = (choices() if callable(choices) else choices) or []
        odd = st.sampled_from(["", " ", "none", "null", "~", "\x00", "a" * 5000, "../" * 50, "cuda:99999999999999999999", "nan",
                               "-1", "*", "[", "{a: 1}", "é\u202e", "auto", "cpu"])  # fmt: skip
        return st.one_of(st.sampled_from(listed) if listed else st.nothing(), st.text(max_size=40), odd, WRONG)
    if origin in (list, typing.List, typing.Sequence):
        item = values_for(args[0], meta, depth + 1) if args else WRONG
        return st.one_of(st.lists(item, max_size=6), st.lists(item, min_size=60, max_size=80), WRONG)
    if origin in (tuple, typing.Tuple):
        items = [values_for(a, meta, depth + 1) for a in args if a is not Ellipsis]
        return st.one_of(st.tuples(*items), st.lists(items[0], max_size=4), WRONG)
    if origin in (dict, typing.Dict):
        leaf = st.one_of(st.integers(), st.floats(), st.text(max_size=8), st.booleans(), st.none())
        nested = st.recursive(leaf, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                              max_leaves=12)  # fmt: skip
        return st.one_of(st.dictionaries(st.text(max_size=10), nested, max_size=4), WRONG)
    return WRONG


def _draw_options(draw, cls) -> dict:
    """A few of `cls`'s options, each given a drawn value (the others keep their defaults)."""
    hints, fields = typing.get_type_hints(cls), {f.name: f for f in dataclasses.fields(cls)}
    chosen = draw(st.lists(st.sampled_from(sorted(fields)), min_size=1, max_size=4, unique=True), label="options")
    return {name: draw(values_for(hints[name], dict(fields[name].metadata)), label=name) for name in chosen}


def _assert_one_line(error: BaseException) -> None:
    text = str(error)
    assert "\n" not in text and len(text) < MAX_MESSAGE and "Traceback" not in text, text[:3000]


# ----------------------------------------------------------------------------- properties


@pytest.mark.parametrize("name", list(CLASSES))
@pytest.mark.filterwarnings("ignore")
@fuzz(max_examples=40)
@given(data=st.data())
def test_any_values_for_a_commands_options_make_a_config_or_one_line_of_error(name, data):
    """Every option of every command, through its dataclass: the same check the command line, YAML and --set reach."""
    cls = CLASSES[name]
    values = _draw_options(data.draw, cls)
    with time_bound(SECONDS):
        try:
            cfg = cls(**values)
        except ConfigError as e:
            _assert_one_line(e)
            return
    for key, value in values.items():  # what was accepted is what the command gets, and fits its declaration
        assert getattr(cfg, key) is value


def _set_text():
    """What a user types after --set key=: numbers as Python and YAML spell them, YAML of every shape, and junk."""
    yamlish = st.sampled_from([".inf", "-.inf", ".nan", "inf", "nan", "1e-3", "1E400", "-1", "0", "1_000", "0x10", "0o7", "1:30",
                               "[1, 2]", "[.inf]", "[[1, 2], [3]]", "{a: 1}", "{a: &a [1, *a]}", "&a [*a]", "!!python/object:os.system",
                               "[" * 300 + "]" * 300, "9" * 5000, "'x'", '"none"', "none", "NULL", "~", "yes", "off", "", " ",
                               "{" + ", ".join(f"k{i}: {i}" for i in range(2000)) + "}"])  # fmt: skip
    return st.one_of(yamlish, st.text(max_size=30), st.text(alphabet="[]{},:&*!.-+0123456789eE naif'\"#|>\n", max_size=40),
                     st.floats().map(repr), st.integers().map(str))  # fmt: skip


@fuzz(max_examples=150)
@given(data=st.data())
def test_any_set_text_makes_a_config_or_one_line_of_error(data):
    """`--set key=value` for every option of TrainConfig: the same reading and check as a YAML file."""
    fields = [f.name for f in dataclasses.fields(TrainConfig)] + ["amp", "no_such_option"]
    sets = [f"{data.draw(st.sampled_from(fields))}={data.draw(_set_text())}" for _ in range(data.draw(st.integers(1, 3)))]
    with time_bound(SECONDS):
        try:
            build_config(TrainConfig, "camvid", sets)
        except ConfigError as e:
            _assert_one_line(e)


def _cli_words(draw, words, cls) -> list:
    """A command line for `cls`: a few of its flags, each with one or more drawn words."""
    hints, fields = typing.get_type_hints(cls), {f.name: f for f in dataclasses.fields(cls)}
    argv = list(words)
    for f in [fields[n] for n in draw(st.lists(st.sampled_from(sorted(fields)), max_size=4, unique=True), label="options")]:
        if f.metadata.get("hidden"):
            continue
        text = draw(st.one_of(_set_text(), st.sampled_from(["0", "1", "-1", "inf", "nan", "1e30", "60", "0.5", "64x64", "0x0", "9999999x2"])))
        if f.metadata.get("positional"):
            argv.append(text)
        elif hints[f.name] is bool or f.metadata.get("flag_only"):
            argv.append(f.metadata.get("flag", "--" + f.name.replace("_", "-")))
        else:
            argv += [f.metadata.get("flag", "--" + f.name.replace("_", "-")), text]
    return argv


@pytest.mark.parametrize("name", [n for n in CLASSES if n != "train config"])
@pytest.mark.filterwarnings("ignore")
@fuzz(max_examples=15)
@given(data=st.data())
def test_any_command_line_makes_a_config_or_one_line_of_error(name, data, capsys):
    """The command line of every command: argparse's refusal (exit 2, its usage and one error line), or the config the
    command would run with, or one line of ConfigError. The command itself is not run."""
    from dabnet.cli import build_parser, config_from

    cls = CLASSES[name]
    argv = _cli_words(data.draw, name.split(), cls)
    with time_bound(SECONDS):
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as e:
            err = capsys.readouterr().err.strip().splitlines()
            assert e.code == 2 and err and ": error: " in err[-1], err
            return
        try:
            config_from(args.config_cls, args)
        except ConfigError as e:
            _assert_one_line(e)


# ----------------------------------------------------------------------------- dataset.yaml documents


def _spec_values():
    from dabnet.data.datasets import FolderSpec

    hints = typing.get_type_hints(FolderSpec)
    valid = {  # values that pass, so that the rest of a document is reached
        "classes": st.lists(st.sampled_from(["road", "car", "sky", "person", "1", "no"]), min_size=1, max_size=5, unique=True),
        "splits": st.dictionaries(st.sampled_from(["train", "val", "test"]), st.fixed_dictionaries(
            {"images": st.sampled_from(["images/train", "nowhere", ""]), "masks": st.sampled_from(["masks/train", "x"])}), max_size=3),
        "palette": st.lists(st.lists(st.integers(0, 255), min_size=3, max_size=3), max_size=5),
        "ignore_index": st.integers(0, 255),
        "id_map": st.dictionaries(st.integers(0, 255), st.integers(0, 255), max_size=5),
        "mean": st.lists(st.floats(0, 255), min_size=3, max_size=3),
        "std": st.lists(st.floats(0.5, 255), min_size=3, max_size=3),
    }  # fmt: skip
    return {f.name: st.one_of(valid.get(f.name, st.nothing()), values_for(hints[f.name], dict(f.metadata))) for f in dataclasses.fields(FolderSpec)}


def _yamlable(value: Any) -> bool:
    try:
        yaml.safe_dump(value)
        return True
    except (yaml.YAMLError, ValueError, TypeError):
        return False


@st.composite
def dataset_yaml(draw) -> str:
    """A dataset.yaml: a mapping of its keys (some missing, some unknown) to drawn values, or YAML text of any shape."""
    fields = _spec_values()
    doc = {k: draw(v, label=k) for k, v in fields.items() if draw(st.booleans())}
    if draw(st.booleans()):
        doc[draw(st.text(max_size=8))] = draw(WRONG)
    assume(_yamlable(doc))
    raw = st.one_of(st.text(alphabet="[]{},:&*!.-+0123456789 abcdefgimnprst'\"#|>\n", max_size=80), st.sampled_from(["5", "[a]", "", "~", "!!binary aGk="]))
    return draw(st.one_of(st.just(yaml.safe_dump(doc)), raw))


@fuzz(max_examples=150)
@given(data=st.data())
def test_any_dataset_yaml_makes_a_dataset_or_one_line_of_error(tmp_path_factory, data):
    """dataset.yaml as `data check` and training read it: the spec, then the split's dataset, or one DatasetError line."""
    from dabnet.data.check import dataset_splits
    from dabnet.data.datasets import build_dataset

    folder = tmp_path_factory.getbasetemp() / "fuzz_dataset"
    for sub in ("images/train", "masks/train"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    spec = folder / "dataset.yaml"
    spec.write_text(data.draw(dataset_yaml()))
    with time_bound(SECONDS):
        try:
            splits = dataset_splits("folder", str(spec))
            for split in splits[:2]:
                build_dataset("folder", spec, split)
        except DatasetError as e:
            _assert_one_line(e)
            assert str(spec) in str(e) or "no (image, mask) pairs" in str(e) or "not found" in str(e), str(e)


@fuzz(max_examples=150)
@given(data=st.data())
def test_any_yaml_text_reads_or_is_one_line(data):
    """The bounded YAML reader on arbitrary text: a value, or one line of ConfigError, promptly."""
    from dabnet.util.options import load_yaml

    text = data.draw(st.one_of(_set_text(), st.text(max_size=200)))
    with time_bound(SECONDS):
        try:
            load_yaml(text, "x.yaml")
        except ConfigError as e:
            _assert_one_line(e)


def test_the_fuzz_budget_and_seed_are_set(monkeypatch):
    """CI runs each fuzz test's own small budget from a fixed seed (the same inputs every run); the deep profile
    runs DEEP_FACTOR times as many from a fresh seed; neither keeps an example database in the tree."""
    import fuzz as F

    assert settings.get_profile("dabnet-ci").database is None and settings.get_profile("dabnet-ci").print_blob
    assert 0 <= F.SEED < 2**32 and Path(F.__file__).name == "fuzz.py"
    if F.PROFILE == "ci":
        assert F.examples(40) == 40 and (F.SEED == int(os.environ.get("DABNET_FUZZ_SEED") or 0))
    monkeypatch.setattr(F, "PROFILE", "deep")
    assert F.examples(40) == 40 * F.DEEP_FACTOR > 40
