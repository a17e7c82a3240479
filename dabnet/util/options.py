"""Options declared once and checked once: every field of an options dataclass (a command's config, a dataset.yaml)
declares its type, choices, range and length, and `check_options` holds every value to those declarations, the
same way for YAML, `--set`, the command line and saved configs, before any work. YAML is read by `load_yaml`,
with its alias expansion, size and depth bounded. Errors are one line; a value shown in one is cut to 80 characters.

A leaf module (it imports nothing of dabnet's), so the data layer checks dataset.yaml with it too.
"""

from __future__ import annotations

import dataclasses
import math
import re
import reprlib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Type, Union

import yaml

SHOWN_CHARS = 80  # the most of a value an error message shows
MAX_YAML_BYTES = 1 << 20  # a config or dataset.yaml is a few KB; a larger document is not one
MAX_YAML_NODES = 100_000  # values in a document with every alias expanded (a "billion laughs" holds 10^9)
MAX_YAML_DEPTH = 64  # nesting of lists and mappings


class ConfigError(ValueError):
    """A config file, override or option that does not fit its declaration."""


_repr = reprlib.Repr()
_repr.maxlevel, _repr.maxlist, _repr.maxtuple, _repr.maxdict, _repr.maxset = 3, 8, 8, 6, 6
_repr.maxstring, _repr.maxother, _repr.maxlong = SHOWN_CHARS, SHOWN_CHARS, 40


def shown(value: Any) -> str:
    """A value as an error message shows it: its repr, bounded while it is built (a value with a billion elements
    is never printed whole) and cut to 80 characters, on one line."""
    text = _repr.repr(value).replace("\n", "\\n")
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."


def one_line(text: str, limit: int = 300) -> str:
    """A message from elsewhere (a library's exception) as one line of at most `limit` characters."""
    text = " ".join(line.strip() for line in str(text).splitlines() if line.strip())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ----------------------------------------------------------------------------- ranges


@dataclass(frozen=True)
class Range:
    """An interval, written as in mathematics: "(0, 8]", "[1, inf)". Every number in it is finite."""

    low: float
    high: float
    low_open: bool
    high_open: bool
    text: str

    @classmethod
    def parse(cls, text: str) -> "Range":
        m = re.fullmatch(r"\s*([\[(])\s*([^,\s]+)\s*,\s*([^,\s]+)\s*([\])])\s*", text)
        if not m:
            raise ValueError(f"a range is written like '(0, 8]' or '[1, inf)', got {text!r}")
        return cls(float(m.group(2)), float(m.group(3)), m.group(1) == "(", m.group(4) == ")", text.strip())

    def __contains__(self, v: Any) -> bool:
        if isinstance(v, float) and not math.isfinite(v):
            return False
        above = v > self.low if self.low_open else v >= self.low
        below = v < self.high if self.high_open else v <= self.high
        return above and below

    def describe(self, integer: bool, plural: bool = False) -> str:
        """'a finite number in (0, 8]', 'an integer >= 1', 'integers in [0, 255]'..."""
        kind = ("integers" if plural else "an integer") if integer else ("finite numbers" if plural else "a finite number")
        low = _num(self.low)
        if math.isinf(self.high) and self.low == 0 and self.low_open and not integer:
            return ("positive finite numbers" if plural else "a positive finite number")
        if math.isinf(self.high):
            return f"{kind} {'>' if self.low_open else '>='} {low}"
        if math.isinf(self.low):
            return f"{kind} {'<' if self.high_open else '<='} {_num(self.high)}"
        return f"{kind} in {self.text}"


def _num(v: float) -> str:
    return str(int(v)) if v == int(v) and abs(v) < 1e15 else f"{v:g}"


# ----------------------------------------------------------------------------- declarations


def option(default: Any = dataclasses.MISSING, help: Any = "", *, factory: Any = None, range: Optional[str] = None,
           length: Optional[Tuple[int, Optional[int]]] = None, item_length: Optional[int] = None,
           valid: Optional[str] = None, check: Any = None, **cli: Any) -> Any:  # fmt: skip
    """A field with its declaration in the metadata: `help`; `range` ("(0, 8]": every number in the value, in lists
    and mappings too, lies in it; every number of every option is finite); `length` ((least, most) items of a list;
    most None: no bound); `item_length` (each item of a list is a sequence of that many); `choices` (a list, or a
    function called when needed: registries grow at run time; for a list option each item is one); `valid` (what the
    error says is valid, where the words made from the rest would say less); `check` (a function of the value that
    raises ConfigError, for a rule no declaration states). `cli` holds argparse details (positional, required,
    nargs, type, metavar, flag, hidden, flag_only, action), `io` (the option's role with files; `config.check_io`) and
    `group` (the heading `options_help` lists it under)."""
    meta = {"help": help, **cli}
    for key, value in (("range", Range.parse(range) if range else None), ("length", length), ("item_length", item_length),
                       ("valid", valid), ("check", check)):  # fmt: skip
        if value is not None:
            meta[key] = value
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


class Options:
    """Base of every options dataclass: constructing one checks each field against its declaration
    (`check_options`), then the rules between fields (`check`), so no command starts on a value it cannot use."""

    def __post_init__(self) -> None:
        check_options(self)
        self.check()

    def check(self) -> None:
        """Rules between options that no single declaration states (none by default)."""


_HINTS: Dict[type, Dict[str, Any]] = {}


def hints_of(cls: type) -> Dict[str, Any]:
    """The resolved type hints of an options class (resolved once: they never change)."""
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def matches(value: Any, hint: Any) -> bool:
    """Whether a value is of a declared type (ints count as floats; bools as neither)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin is Union:
        return any(matches(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (list, List, Sequence):
        return isinstance(value, (list, tuple)) and (not args or all(matches(v, args[0]) for v in value))
    if origin in (tuple, Tuple):
        if not isinstance(value, (list, tuple)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(matches(v, args[0]) for v in value)
        return not args or (len(value) == len(args) and all(matches(v, a) for v, a in zip(value, args)))
    if origin in (dict, Dict):
        key, val = args or (str, Any)
        return isinstance(value, dict) and all(matches(k, key) and matches(v, val) for k, v in value.items())
    return isinstance(value, hint) if isinstance(hint, type) else True


def type_name(hint: Any, plural: bool = False) -> str:
    """How an error names a declared type: 'a list of numbers', 'an integer or null'."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Union:
        return " or ".join(type_name(a, plural) for a in args)
    if origin in (list, List, Sequence):
        return f"a list of {type_name(args[0], True) if args else 'values'}"
    if origin in (tuple, Tuple):
        return f"a list of {len(args)} {type_name(args[0], True)}" if args and args[-1] is not Ellipsis else "a list"
    if origin in (dict, Dict):
        return "a mapping of names to values" if not args or args[0] is str else f"a mapping of {type_name(args[0], True)} to {type_name(args[1], True)}"
    names = {int: ("an integer", "integers"), float: ("a number", "numbers"), str: ("a string", "strings"),
             bool: ("true or false", "true/false values"), type(None): ("null", "nulls")}  # fmt: skip
    return names[hint][plural] if hint in names else ("values" if plural else "a value")


def _numbers(value: Any, depth: int = 0) -> Iterator[Union[int, float]]:
    """The numbers inside a value: itself, items of lists, keys and values of mappings."""
    if isinstance(value, bool) or depth > MAX_YAML_DEPTH:
        return
    if isinstance(value, (int, float)):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _numbers(v, depth + 1)
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _numbers(k, depth + 1)
            yield from _numbers(v, depth + 1)


def _integer_only(hint: Any) -> bool:
    """Whether every number a hint admits is an int."""
    found = set()

    def walk(h: Any) -> None:
        if h in (int, float):
            found.add(h)
        for a in typing.get_args(h):
            walk(a)

    walk(hint)
    return found == {int}


def _is_list(hint: Any) -> bool:
    args = [a for a in typing.get_args(hint) if a is not type(None)] if typing.get_origin(hint) is Union else [hint]
    return any(typing.get_origin(a) in (list, List, Sequence) for a in args)


def describe(f: dataclasses.Field, hint: Any) -> str:
    """What a field accepts, in the words its errors use."""
    meta = f.metadata
    if meta.get("valid"):
        return meta["valid"]
    choices = meta.get("choices")
    if choices is not None:
        listed = choices() if callable(choices) else choices
        words = "one of " + ", ".join(map(str, listed))
        return ("a list, each item " + words) if _is_list(hint) else words
    rng, length, integer = meta.get("range"), meta.get("length"), _integer_only(hint)
    if rng is None:
        words = type_name(hint)
    elif _is_list(hint):
        least, most = length or (0, None)
        count = f"{least}" if least == most else f"{least} to {most}" if most is not None else f"at least {least}" if least else ""
        items = rng.describe(integer, plural=True)
        words = f"a list of {count + ' ' if count else ''}{items}"
        if meta.get("item_length"):
            words = f"a list of {count + ' ' if count else ''}[{', '.join('N' * meta['item_length'])}] with {items}"
    else:
        words = rng.describe(integer)
    if rng is not None and type(None) in typing.get_args(hint):  # type_name says "or null" itself
        words += " or null"
    return words


def check_options(obj: Any, error: Type[Exception] = ConfigError, where: str = "") -> None:
    """Every field of an options dataclass holds a value of its declared type, choices, length and range, with every
    number finite; else `error` (one line: `where`, the option, its value cut to 80 characters, what is valid)."""
    hints = hints_of(type(obj))
    for f in dataclasses.fields(obj):
        value, hint, meta = getattr(obj, f.name), hints[f.name], f.metadata

        def refuse() -> None:
            raise error(f"{where}{f.name}={shown(value)} is not valid: {describe(f, hint)}")

        if not matches(value, hint):
            refuse()
        if value is None:
            continue
        choices = meta.get("choices")
        if choices is not None:
            listed = choices() if callable(choices) else choices
            if any(v not in listed for v in (value if isinstance(value, (list, tuple)) else [value])):
                refuse()
        length = meta.get("length")
        if length is not None and isinstance(value, (list, tuple)):
            least, most = length
            if len(value) < least or (most is not None and len(value) > most):
                refuse()
        if meta.get("item_length") and any(len(v) != meta["item_length"] for v in value if isinstance(v, (list, tuple))):
            refuse()
        rng = meta.get("range")
        for v in _numbers(value):
            if (isinstance(v, float) and not math.isfinite(v)) or (rng is not None and v not in rng):
                refuse()
        if meta.get("check") is not None:
            meta["check"](value)


def declared_range(f: dataclasses.Field) -> Optional[str]:
    """The range a field declares, as written ('(0, 8]'), or None."""
    rng = f.metadata.get("range")
    return rng.text if rng is not None else None


# ----------------------------------------------------------------------------- listing


UNGROUPED = "ungrouped"  # where a field that names no group (or an unknown one) is listed: a test refuses it


def grouped_fields(cls: type, groups: Sequence[str]) -> Dict[str, List[dataclasses.Field]]:
    """The fields of an options class by the `group` each declares, in the order of `groups`, each field in its
    declaration order; fields naming no group, or one not in `groups`, under UNGROUPED (last)."""
    found: Dict[str, List[dataclasses.Field]] = {g: [] for g in groups}
    for f in dataclasses.fields(cls):
        group = f.metadata.get("group")
        found.setdefault(group if group in groups else UNGROUPED, []).append(f)
    return {g: fs for g, fs in found.items() if fs}


def shown_default(value: Any) -> str:
    """A default as it is written in YAML or after --set KEY=: true, null, 0.001, [360, 480], {}."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(shown_default(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {shown_default(v)}" for k, v in value.items()) + "}"
    return str(value) if value != "" else '""'


def option_line(f: dataclasses.Field, hint: Any) -> str:
    """A field's help with its default and what it accepts (choices, range, length: the words its errors use)."""
    help = f.metadata.get("help", "")
    help = help() if callable(help) else help
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
    return f"{help} (default: {shown_default(default)}; {describe(f, hint)})".strip()


def options_help(cls: type, groups: Sequence[str], width: int = 100, title: str = "") -> str:
    """Every field of an options class, group by group (`grouped_fields`): its name, then its help, default and
    what it accepts, wrapped to `width` columns; made from the declarations, so it lists every option there is."""
    import textwrap

    hints = hints_of(cls)
    fields = [f for fs in grouped_fields(cls, groups).values() for f in fs]
    column = min(max((len(f.name) for f in fields), default=0) + 4, 26)
    lines = [title] if title else []
    for group, members in grouped_fields(cls, groups).items():
        lines += ["", f"{group}:"]
        for f in members:
            head = f"  {f.name}".ljust(column)
            wrapped = textwrap.wrap(option_line(f, hints[f.name]), max(width - column, 30), break_on_hyphens=False) or [""]
            if len(head) > column:  # a name longer than the column: its help starts on the next line
                lines.append(head.rstrip())
                head = " " * column
            lines.append(head + wrapped[0])
            lines += [" " * column + w for w in wrapped[1:]]
    return "\n".join(lines).lstrip("\n")


# ----------------------------------------------------------------------------- YAML


class _BoundedLoader(yaml.SafeLoader):
    """yaml.SafeLoader that counts what a document holds with its aliases expanded before building it, and reads
    1e-3 as a number (YAML 1.1 wants 1.0e-3, while --set and Python read both)."""

    def compose_document(self) -> Any:
        node = super().compose_document()
        _check_expansion(node)
        return node


yaml.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
    Loader=_BoundedLoader,
)


def _check_expansion(root: yaml.Node) -> None:
    """Refuse a document whose values, with every alias expanded, number more than MAX_YAML_NODES or nest deeper than
    MAX_YAML_DEPTH; an alias is counted once per use, but its node only once (memoised), so this costs the
    document's own size."""
    sizes: Dict[int, int] = {}
    open_nodes: set = set()

    def size(node: yaml.Node, depth: int) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if depth > MAX_YAML_DEPTH:
            raise ConfigError(f"nested more than {MAX_YAML_DEPTH} levels deep")
        if key in open_nodes:
            raise ConfigError("an alias refers to a value that holds it (a value that contains itself)")
        open_nodes.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            children = []
        for child in children:
            total += size(child, depth + 1)
            if total > MAX_YAML_NODES:
                raise ConfigError(f"holds more than {MAX_YAML_NODES:,} values once its aliases (*name) are expanded")
        open_nodes.discard(key)
        sizes[key] = total
        return total

    if root is not None:
        size(root, 0)


def _bracket_depth(text: Union[str, bytes]) -> int:
    """The deepest nesting of [ and { in a YAML text (brackets inside quoted strings counted too: an upper bound)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    depth = deepest = 0
    for c in re.sub(r"[^\[\]{}]+", "", text):
        depth = depth + 1 if c in "[{" else max(depth - 1, 0)
        deepest = max(deepest, depth)
    return deepest


def load_yaml(text: Union[str, bytes], source: str, error: Type[Exception] = ConfigError) -> Any:
    """The value a YAML document holds, read safely (yaml.safe_load's types) with its alias expansion, size and
    nesting bounded; any problem is `error`, one line naming `source` (a file, or the option of a --set)."""
    if len(text) > MAX_YAML_BYTES:
        raise error(f"{source} is {len(text):,} bytes: more than the {MAX_YAML_BYTES:,} a config may hold")
    if _bracket_depth(text) > MAX_YAML_DEPTH:  # before the parser, whose cost grows with the square of the nesting
        raise error(f"{source} is refused: it is nested more than {MAX_YAML_DEPTH} levels deep")
    try:
        return yaml.load(text, Loader=_BoundedLoader)
    except ConfigError as e:
        raise error(f"{source} is refused: it {e}") from None
    except yaml.YAMLError as e:
        raise error(f"{source} is not valid YAML: {one_line(e)}") from None
    except RecursionError:
        raise error(f"{source} is refused: it is nested too deeply") from None
    except (ValueError, TypeError, OverflowError) as e:  # e.g. an integer of more digits than Python converts
        raise error(f"{source} is not valid YAML: {one_line(e)}") from None


# ----------------------------------------------------------------------------- --set


NULL_WORDS = ("none", "null", "~")
TRUE_WORDS, FALSE_WORDS = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def save_config(cfg: Any, path: Union[str, Path]) -> None:
    """Write a resolved config (a dataclass) as YAML, as `dabnet.config.from_saved` reads it back (config.yaml
    beside a run's checkpoints)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))


def parse_value(name: str, text: str, hint: Any, choices: Sequence[str] = ()) -> Any:
    """A `--set name=text` string read as the option's declared type: a string option takes the text as it is (so
    a listed choice such as `none` is that choice, never null); a bool reads true/false/yes/no/on/off/1/0; an int
    or float reads as Python reads it ('1e-3', 'inf'); anything else (lists, mappings) is read as YAML, as a config
    file is, with the same bounds. 'none'/'null' is null where the option may be null and has no such choice."""
    optional = type(None) in typing.get_args(hint)
    base = [a for a in (typing.get_args(hint) if typing.get_origin(hint) is Union else (hint,)) if a is not type(None)]
    word = text.strip().lower()
    if optional and word in NULL_WORDS and text.strip() not in choices:
        return None
    if base == [str] and not text.lstrip().startswith(("[", "{")):
        return text  # a list or mapping is read as YAML below, and refused as the wrong type, as in a config file
    if base == [bool]:
        if word in TRUE_WORDS or word in FALSE_WORDS:
            return word in TRUE_WORDS
        raise ConfigError(f"{name}={shown(text)} is not valid: true or false")
    if base in ([int], [float]):
        for read in (int, float) if base == [float] else (int,):  # '-1' stays an int, as YAML reads it
            try:
                return read(text)
            except ValueError:
                pass  # e.g. a list where a number belongs: read as YAML, and the check names the type
    return load_yaml(text, f"{name}={shown(text)}")
