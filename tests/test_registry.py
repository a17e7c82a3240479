"""One registry kind (`dabnet.util.registry.Registry`): register as a decorator or a call, a taken name refused in one
line, an unknown name answered with the closest ones, one-line help per entry; and the six registries of the
package (models, bundled weights, datasets, runtimes, training callbacks, importers) are all of it."""

from __future__ import annotations

import pytest

from dabnet.util.registry import Registry


class RegistryError(ValueError):
    pass


def _colours() -> Registry:
    reg: Registry = Registry("colour", error=RegistryError)

    @reg.register("crimson")
    def crimson():
        """A deep red.

        More words that are not the help."""

    reg.register("cyan", lambda: None, help="green and blue")
    reg.register("amber", object(), help="  yellow   and\n orange ")
    return reg


def test_register_as_decorator_and_as_call_returns_the_entry():
    reg = _colours()
    entry = object()
    assert reg.register("teal", entry) is entry

    def f():
        """doc"""

    assert reg.register("olive")(f) is f
    assert reg.get("teal") is entry and reg["olive"] is f


def test_names_in_registration_order_or_sorted():
    assert _colours().names() == ["crimson", "cyan", "amber"]
    assert list(_colours()) == ["crimson", "cyan", "amber"]
    reg: Registry = Registry("colour", sort=True)
    for name in ("b", "c", "a"):
        reg.register(name, name)
    assert reg.names() == ["a", "b", "c"] and list(reg) == ["a", "b", "c"] and reg.values() == ["a", "b", "c"]
    assert reg.items() == [("a", "a"), ("b", "b"), ("c", "c")]


def test_in_len_and_unhashable_names():
    reg = _colours()
    assert "cyan" in reg and "magenta" not in reg and ["cyan"] not in reg and len(reg) == 3


def test_a_taken_name_is_refused_in_one_line_and_the_first_entry_stays():
    reg = _colours()
    first = reg.get("cyan")
    with pytest.raises(RegistryError) as e:
        reg.register("cyan", lambda: None)
    assert "colour name 'cyan' is registered already" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(RegistryError):

        @reg.register("crimson")
        def other():
            pass

    assert reg.get("cyan") is first and len(reg) == 3


def test_reserved_and_empty_names_are_refused():
    reg: Registry = Registry("backend", reserved=("auto",))
    with pytest.raises(ValueError, match="'auto' is reserved"):
        reg.register("auto", 1)
    with pytest.raises(ValueError, match="non-empty string"):
        reg.register("", 1)
    assert len(reg) == 0


def test_check_runs_after_the_name_and_keeps_a_refused_entry_out():
    def even_only(name, value):
        if value % 2:
            raise ValueError(f"{name}: {value} is odd")

    reg: Registry = Registry("number", check=even_only)
    reg.register("two", 2)
    with pytest.raises(ValueError, match="three: 3 is odd"):
        reg.register("three", 3)
    with pytest.raises(ValueError, match="registered already"):  # the name first, whatever the value
        reg.register("two", 3)
    assert reg.names() == ["two"]


def test_an_unknown_name_is_answered_with_the_closest_names_in_one_line():
    reg = _colours()
    with pytest.raises(RegistryError) as e:
        reg.get("crimsn")
    message = str(e.value)
    assert message.startswith("unknown colour 'crimsn'; did you mean 'crimson'?") and "\n" not in message
    assert "(registered: crimson, cyan, amber)" in message
    assert reg.closest("CYAN") == ["cyan"]  # case ignored
    assert reg.closest("zzzzzz") == []
    with pytest.raises(RegistryError, match=r"^unknown colour 'zzzzzz' \(registered: crimson, cyan, amber\)$"):
        reg["zzzzzz"]
    with pytest.raises(RegistryError, match="unknown colour"):
        reg.get(["a", "list"])
    with pytest.raises(ValueError, match="none is registered"):
        Registry("colour").get("red")


def test_get_with_a_default_answers_the_default():
    reg = _colours()
    assert reg.get("magenta", None) is None and reg.get("cyan", None) is reg.get("cyan")


def test_help_is_given_or_the_first_docstring_line_or_the_summary():
    reg = _colours()
    assert reg.help("crimson") == "A deep red."
    assert reg.help("cyan") == "green and blue"
    assert reg.help("amber") == "yellow and orange"  # one line, whatever was given
    assert reg.listing() == [("crimson", "A deep red."), ("cyan", "green and blue"), ("amber", "yellow and orange")]
    assert reg.format_listing().splitlines() == ["  crimson  A deep red.", "  cyan     green and blue", "  amber    yellow and orange"]
    with pytest.raises(RegistryError, match="did you mean 'amber'"):
        reg.help("ambr")
    summarised: Registry = Registry("thing", summary=lambda t: t["summary"])
    summarised.register("x", {"summary": "from the entry"})
    assert summarised.help("x") == "from the entry"


def test_item_assignment_replaces_on_purpose_and_deletion_removes():
    """What monkeypatch.setitem does in tests: replace an entry for a while, then put the old one back."""
    reg = _colours()
    old = reg["cyan"]
    reg["cyan"] = "new"
    assert reg["cyan"] == "new" and reg.names() == ["crimson", "cyan", "amber"]
    reg["cyan"] = old
    del reg["amber"]
    assert "amber" not in reg and reg.unregister("amber") is None
    with pytest.raises(KeyError):
        del reg["amber"]


def test_monkeypatch_setitem_on_a_registry_is_undone(monkeypatch):
    reg = _colours()
    with monkeypatch.context() as m:
        m.setitem(reg, "violet", "v")
        m.setitem(reg, "cyan", "c")
        assert reg["violet"] == "v" and reg["cyan"] == "c"
    assert "violet" not in reg and reg["cyan"] != "c"


# ----------------------------------------------------------------------------- the package's registries


def _package_registries():
    from dabnet.data import DATASETS
    from dabnet.data.importers import IMPORTERS
    from dabnet.models import MODELS, PRETRAINED
    from dabnet.runtimes import RUNTIMES
    from dabnet.training import CALLBACKS

    return {"models": MODELS, "pretrained": PRETRAINED, "datasets": DATASETS, "runtimes": RUNTIMES,
            "callbacks": CALLBACKS, "importers": IMPORTERS}  # fmt: skip


def test_the_six_registries_are_one_kind_and_each_entry_has_one_line_of_help():
    registries = _package_registries()
    assert all(isinstance(r, Registry) for r in registries.values())
    for kind, reg in registries.items():
        assert len(reg) >= 1, kind
        for name, help in reg.listing():
            assert help and "\n" not in help, (kind, name)


@pytest.mark.parametrize("call,closest", [
    ("dabnet.create_model('dabnett', 11)", "'dabnet'"),
    ("dabnet.models.model_description('enett')", "'enet'"),
    ("dabnet.data.get_dataset('camvd')", "'camvid'"),
    ("dabnet.runtimes.get_runtime('eagr')", "'eager'"),
    ("dabnet.data.importers.IMPORTERS.get('labelm')", "'labelme'"),
    ("dabnet.training.CALLBACKS.get('em')", "'ema'"),
    ("dabnet.models.PRETRAINED.get('dabnet-camvd')", "'dabnet-camvid'"),
])  # fmt: skip
def test_each_public_lookup_names_the_closest_entry(call, closest):
    import dabnet  # noqa: F401
    import dabnet.data.importers  # noqa: F401
    import dabnet.runtimes  # noqa: F401
    import dabnet.training  # noqa: F401

    with pytest.raises(ValueError) as e:
        eval(call)
    assert f"did you mean {closest}" in str(e.value) and "\n" not in str(e.value)


def test_the_public_register_functions_add_to_their_registry_and_refuse_a_taken_name(monkeypatch):
    from torch import nn

    from dabnet.data import DatasetError, DatasetKind, register_dataset
    from dabnet.data.importers import register_importer
    from dabnet.models import PretrainedConfig, register_model, register_pretrained
    from dabnet.training import register_callback

    regs = _package_registries()
    for reg in regs.values():  # whatever is added below is gone after the test
        monkeypatch.setattr(reg, "_entries", dict(reg._entries))
        monkeypatch.setattr(reg, "_help", dict(reg._help))

    @register_model("probe_net", "a probe")
    def probe_net(num_classes=19):
        return nn.Conv2d(3, num_classes, 1)

    register_pretrained(PretrainedConfig("probe-weights", "probe_net", 2, "weights/none", "camvid", "probe weights"))
    register_dataset(DatasetKind("probe_data", lambda *a, **k: None, "a probe dataset"))
    register_callback("probe_cb", "a probe callback")(lambda cfg, device, log: None)
    register_importer("probe_fmt")(lambda source, images, classes=None: None)
    assert regs["models"].help("probe_net") == "a probe" and regs["pretrained"].help("probe-weights") == "probe weights"
    assert regs["datasets"].help("probe_data") == "a probe dataset" and regs["callbacks"].help("probe_cb") == "a probe callback"
    assert "probe_fmt" in regs["importers"]
    with pytest.raises(ValueError, match="model name 'probe_net' is registered already"):
        register_model("probe_net")(probe_net)
    with pytest.raises(ValueError, match="registered already"):
        register_pretrained(PretrainedConfig("probe-weights", "probe_net", 2, "weights/none", "camvid"))
    with pytest.raises(ValueError, match="unknown model 'probe_nett'"):
        register_pretrained(PretrainedConfig("probe-2", "probe_nett", 2, "weights/none", "camvid"))
    with pytest.raises(DatasetError, match="registered already"):
        register_dataset(DatasetKind("probe_data", lambda *a, **k: None, "again"))
    with pytest.raises(ValueError, match="training callback name 'probe_cb' is registered already"):
        register_callback("probe_cb")(lambda cfg, device, log: None)
    with pytest.raises(ValueError, match="annotation format name 'coco' is registered already"):
        register_importer("coco")(lambda source, images, classes=None: None)
