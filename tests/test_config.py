"""Options you can find: `dabnet train --help` lists every training option (every TrainConfig field `--set` takes),
each in exactly one of its groups, with its default and what it accepts, generated from the dataclass; the
options live in one module per command under dabnet.config and keep every name importable from dabnet.config;
cli.py dispatches each command to its function in dabnet.commands."""

from __future__ import annotations

import dataclasses
import importlib
import re
from typing import Dict, List

import pytest

from dabnet.cli import SETTABLE_TITLE, main
from dabnet.config import TRAIN_GROUPS, TrainConfig
from dabnet.util.options import UNGROUPED, grouped_fields, option, options_help, shown_default


def _listed(text: str) -> Dict[str, List[str]]:
    """{group heading: [option names]} of a generated listing: headings at the margin end in ':', an option's
    line starts with two spaces and its name, its help's wrapped lines are indented further."""
    groups: Dict[str, List[str]] = {}
    current = None
    for line in text.splitlines():
        heading = re.fullmatch(r"(\S.*):", line)
        entry = re.match(r"  ([a-z_]\w*)(?: {2,}|$)", line)
        if heading:
            current = heading.group(1)
            assert current not in groups, f"group {current} listed twice"
            groups[current] = []
        elif entry:
            assert current is not None, line
            groups[current].append(entry.group(1))
    return groups


def _train_help(capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main(["train", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert SETTABLE_TITLE in out
    return out.split(SETTABLE_TITLE, 1)[1]


def test_train_help_lists_every_training_option_once_in_its_group(capsys):
    listed = _train_help(capsys)
    groups = _listed(listed)
    assert list(groups) == list(TRAIN_GROUPS)  # the seven groups, in order; no 'ungrouped'
    names = [n for members in groups.values() for n in members]
    fields = [f.name for f in dataclasses.fields(TrainConfig)]
    assert sorted(names) == sorted(fields) and len(names) == len(set(names)) == len(fields)
    for f in dataclasses.fields(TrainConfig):
        assert f.name in groups[f.metadata["group"]], f.name


def test_every_training_option_declares_one_of_the_groups():
    """A field added without `group` (or with one `train --help` does not list) fails here."""
    ungrouped = [f.name for f in dataclasses.fields(TrainConfig) if f.metadata.get("group") not in TRAIN_GROUPS]
    assert ungrouped == []


def test_train_help_gives_defaults_choices_and_ranges(capsys):
    text = " ".join(_train_help(capsys).split())  # unwrapped
    assert "optimizer optimizer (default: adam; one of adam, adamw, sgd)" in text
    assert "lr peak learning rate (default: 0.001; a finite number in (0, 10])" in text
    assert "crop_size [HEIGHT, WIDTH] of the random training crops (default: [360, 480]; [HEIGHT, WIDTH], two integers in [1, 16384])" in text
    assert "flip random horizontal flips (default: true; true or false)" in text
    assert "val_split split validated on each val_every epochs; None: no in-sequence validation (default: val; a string or null)" in text
    models = re.search(r"model network \(dabnet models lists them\) \(default: dabnet; one of ([^)]*)\)", text)
    assert models and "enet" in models.group(1).split(", ")  # from the model registry, when the parser is built


def test_a_field_without_a_group_is_listed_apart_so_the_test_above_fails():
    @dataclasses.dataclass
    class Grown(TrainConfig):
        shiny_new_option: int = option(3, "added without a group", range="[0, 9]")

    groups = _listed(options_help(Grown, TRAIN_GROUPS, width=100))
    assert list(groups) == [*TRAIN_GROUPS, UNGROUPED] and groups[UNGROUPED] == ["shiny_new_option"]
    assert [f.name for f in grouped_fields(Grown, TRAIN_GROUPS)[UNGROUPED]] == ["shiny_new_option"]

    @dataclasses.dataclass
    class Misnamed(TrainConfig):
        other: int = option(3, "a group no listing has", range="[0, 9]", group="optimization")

    assert grouped_fields(Misnamed, TRAIN_GROUPS)[UNGROUPED][0].name == "other"


def test_the_listing_wraps_to_the_width_and_starts_long_names_on_their_own_line():
    @dataclasses.dataclass
    class Opts:
        a: int = option(1, "word " * 40, group="g")
        a_name_longer_than_the_column_is: str = option("x", "short", group="g")

    text = options_help(Opts, ["g"], width=60)
    assert all(len(line) <= 60 for line in text.splitlines())
    lines = text.splitlines()
    assert lines[0] == "g:" and lines[1].startswith("  a ") and lines[2].startswith(" " * 26 + "word")  # the column: at most 26
    i = lines.index("  a_name_longer_than_the_column_is")
    assert lines[i + 1].strip().startswith("short (default: x; a string)")


@pytest.mark.parametrize("value,shown", [(True, "true"), (None, "null"), (1e-3, "0.001"), (1.0 / 3.0, "0.333333"),
                                         ([360, 480], "[360, 480]"), ({}, "{}"), ({"block_1": 3}, "{block_1: 3}"),
                                         ("", '""'), ("camvid", "camvid"), ((512, 1024), "[512, 1024]")])  # fmt: skip
def test_defaults_are_shown_as_they_are_written_in_yaml(value, shown):
    assert shown_default(value) == shown


def test_every_name_imported_from_dabnet_config_still_is():
    import dabnet.config as C

    for name in ["AverageConfig", "BenchConfig", "ConfigError", "DataCheckConfig", "DataImportConfig", "DataPackConfig",
                 "DataStatsConfig", "DemoConfig", "DescribeConfig", "EvalConfig", "ExportConfig", "IO_ROLES",
                 "ModelsConfig", "PredictConfig", "RuntimesConfig", "ServeConfig", "TrainCommand", "TrainConfig",
                 "build_config", "check_io", "config_names", "find_config", "from_saved", "option", "parse_size",
                 "save_config", "require", "check_device", "DEVICE_HELP", "RENAMED", "MAX_MODULES"]:  # fmt: skip
        assert hasattr(C, name), name
    assert C.TrainConfig.__module__ == "dabnet.config.train" and C.EvalConfig.__module__ == "dabnet.config.evaluate"


def test_each_command_dispatches_to_a_function_of_dabnet_commands():
    """cli.py holds no command body: each command's function lives in a module of dabnet.commands."""
    from dabnet.cli import COMMANDS, DATA_COMMANDS

    for name, (cls, fn) in [*COMMANDS.items(), *DATA_COMMANDS.items()]:
        module, function = fn.target.split(":")
        target = getattr(importlib.import_module(f"dabnet.commands.{module}"), function)
        assert callable(target), name


def test_a_command_returning_a_result_exits_0_and_one_returning_a_status_exits_with_it(monkeypatch, capsys):
    import dabnet.commands.info as info

    monkeypatch.setattr(info, "runtimes_command", lambda cfg: 3)
    assert main(["runtimes"]) == 3
    monkeypatch.setattr(info, "runtimes_command", lambda cfg: {"a": "result"})
    assert main(["runtimes"]) == 0
    monkeypatch.setattr(info, "runtimes_command", lambda cfg: True)  # a bool is no exit status
    assert main(["runtimes"]) == 0


def test_an_option_that_may_be_null_says_so_once():
    from dabnet.config import ConfigError

    with pytest.raises(ConfigError) as e:
        TrainConfig(val_split=3)
    assert str(e.value) == "val_split=3 is not valid: a string or null"
    with pytest.raises(ConfigError) as e:
        TrainConfig(ohem_min_kept=-1)
    assert str(e.value) == "ohem_min_kept=-1 is not valid: an integer >= 0 or null"
