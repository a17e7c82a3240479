"""Shared fixtures: tiny synthetic datasets (CamVid, Cityscapes, folder layouts) built on demand, and
the shared data and official reference, skipping when absent."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import sharing
import torch
import yaml
from cpu_kinds import KINDS, emulate
from PIL import Image

from dabnet.data.classes import CAMVID_PALETTE, CITYSCAPES_TRAIN_TO_LABEL_ID
from dabnet.util.telemetry import telemetry_off
from heavy_calls import install as _record_heavy_calls
from heavy_calls import pytest_fixture_setup, pytest_runtest_call  # noqa: F401  (hooks: unmarked heavy tests fail)

_record_heavy_calls()

# Hypothesis keeps its own caches (constants, unicode tables) in ./.hypothesis even without an example database:
# tests write nothing into the working folder, so they go to a temporary one.
import atexit  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

from hypothesis.configuration import set_hypothesis_home_dir  # noqa: E402

_HYPOTHESIS_HOME = tempfile.mkdtemp(prefix="dabnet-hypothesis-")
set_hypothesis_home_dir(_HYPOTHESIS_HOME)
atexit.register(shutil.rmtree, _HYPOTHESIS_HOME, ignore_errors=True)

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
REFERENCE_NPZ = SHARED / "reference" / "official_dabnet_19cls.npz"
CAMVID_ROOT = SHARED / "data" / "camvid"
SIZE = H, W = 48, 64  # every synthetic image


def _label_blocks(rng: np.random.Generator, num_classes: int, ignore: int) -> np.ndarray:
    """A mask of 8x8 blocks of random classes, with some ignored blocks."""
    blocks = rng.integers(0, num_classes, size=(H // 8, W // 8))
    blocks[0, 0] = ignore
    return np.kron(blocks, np.ones((8, 8), dtype=np.int64)).astype(np.uint8)


def _colour_image(mask: np.ndarray) -> np.ndarray:
    """An image whose colour encodes its label: alignment can be read back from the pixels."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: len(CAMVID_PALETTE)] = CAMVID_PALETTE
    lut[255] = lut[11] = (255, 255, 255)
    return lut[mask]


def build_camvid(root: Path, splits=("train", "val"), n: int = 4, seed: int = 0, sequences=None) -> Path:
    """A tiny CamVid tree; with `sequences` ({split: [prefix, ...]}) frame i of a split is named
    after drive i % len(prefixes), as CamVid names frames ('0016E5_00002.png')."""
    rng = np.random.default_rng(seed)
    for split in splits:
        (root / split).mkdir(parents=True)
        (root / f"{split}annot").mkdir()
        for i in range(n):
            mask = _label_blocks(rng, 11, 11)
            seqs = (sequences or {}).get(split)
            name = f"{seqs[i % len(seqs)]}_{i:05d}.png" if seqs else f"f{i:03d}.png"
            Image.fromarray(_colour_image(mask)).save(root / split / name)
            Image.fromarray(mask).save(root / f"{split}annot" / name)
    return root


def build_cityscapes(root: Path, train_ids: bool = False) -> Path:
    for split in ("train", "val"):
        for city in ("aachen", "bonn"):
            img_dir = root / "leftImg8bit" / split / city
            gt_dir = root / "gtFine" / split / city
            img_dir.mkdir(parents=True)
            gt_dir.mkdir(parents=True)
            for k in range(2):
                base = f"{city}_{k:06d}_000019"
                Image.fromarray(np.full((H, W, 3), 100, np.uint8)).save(img_dir / f"{base}_leftImg8bit.png")
                ids = np.zeros((H, W), np.uint8)
                ids[:, :16] = 7  # road
                ids[:, 16:32] = 26  # car
                ids[:, 32:48] = 33  # bicycle
                ids[:, 48:] = 4  # static -> ignore
                Image.fromarray(ids).save(gt_dir / f"{base}_gtFine_labelIds.png")
                if train_ids:
                    lut = np.full(256, 255, np.uint8)
                    lut[CITYSCAPES_TRAIN_TO_LABEL_ID] = np.arange(19)
                    Image.fromarray(lut[ids]).save(gt_dir / f"{base}_gtFine_labelTrainIds.png")
    return root


def build_folder(root: Path, id_map=None) -> Path:
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "masks" / split).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((H, W, 3), 50 * i, np.uint8)).save(root / "images" / split / f"img{i}.jpg")
            m = np.zeros((H, W), np.uint8)
            m[: H // 2] = 10 if id_map else 1
            m[-4:] = 255
            Image.fromarray(m).save(root / "masks" / split / f"img{i}.png")
    spec = {
        "name": "toy",
        "classes": ["background", "thing"],
        "palette": [[0, 0, 0], [255, 0, 0]],
        "ignore_index": 255,
        "splits": {s: {"images": f"images/{s}", "masks": f"masks/{s}"} for s in ("train", "val")},
    }
    if id_map:
        spec["id_map"] = id_map
    (root / "dataset.yaml").write_text(yaml.safe_dump(spec))
    return root / "dataset.yaml"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A self-describing checkpoint of an untrained 11-class DABNet (test files may define their own)."""
    import dabnet
    from dabnet.io.checkpoint import make_checkpoint

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ck") / "m.pth"
    dabnet.save_checkpoint(make_checkpoint(dabnet.create_model("dabnet", 11).eval()), path)
    return path


@pytest.fixture(scope="session")
def make_camvid():
    """`make_camvid(root, splits=("train", "val"), n=4, seed=0, sequences=None)`: a tiny CamVid tree."""
    return build_camvid


def train_holdout_run(tmp_path: Path, out: str = "run", config: str = "camvid_holdout", **overrides):
    """A tiny CamVid (train: drives 0001TP and 0006R0; val: 0016E5) and a 2-epoch `camvid_holdout` run on it
    that holds 0006R0 out (or a run of another shipped `config`); returns (data root, run folder, config)."""
    from dabnet.commands import train as train_mod
    from dabnet.config import TrainConfig, build_config

    root = tmp_path / "cv"
    if not root.exists():
        build_camvid(root, n=8, sequences={"train": ["0001TP", "0006R0"], "val": ["0016E5"]})
    settings = dict(data_root=str(root), out=str(tmp_path / out), epochs=2, batch_size=2, crop_size=[32, 48], workers=0,
                    warmup_iters=2, val_batch_size=4, check_data=False, fused=False)  # fmt: skip
    cfg = build_config(TrainConfig, config, **{**settings, **overrides})
    train_mod.train(cfg, log=lambda *a: None)
    return root, Path(cfg.out), cfg


def load_repo_script(path: str):
    """A script of the repository (scripts/, benchmarks/: folders that are not packages) as a module."""
    spec = importlib.util.spec_from_file_location(Path(path).stem, ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def repo_script():
    """`repo_script("benchmarks/speed.py")`: that script as a module, to test its functions."""
    return load_repo_script


def sigterm_at_step(real, epoch: int, step: int):
    """`train_one_epoch` that delivers a real SIGTERM to this process after `step` steps of its `epoch`-th call."""
    calls = {"n": 0}

    def wrapped(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == epoch:
            should_stop, steps = kwargs["should_stop"], {"k": 0}

            def stop_after():
                steps["k"] += 1
                if steps["k"] == step:
                    os.kill(os.getpid(), signal.SIGTERM)
                return should_stop()

            kwargs["should_stop"] = stop_after
        return real(*args, **kwargs)

    return wrapped


OV_HINTS = {"fp32": "f32", "bf16": "bf16"}  # dabnet's precision names -> OpenVINO's INFERENCE_PRECISION_HINT


def run_exported(path: Path, x: torch.Tensor, precision: str) -> torch.Tensor:
    """Logits of an exported file on `x` in `precision`, through its runtime's own API (not dabnet's runners). The
    precision is always set: OpenVINO's CPU plugin would otherwise pick its own (bf16 on CPUs with native bf16)."""
    if path.suffix == ".xml":
        import openvino

        compiled = openvino.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": OV_HINTS[precision]})
        assert compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name() == OV_HINTS[precision]
        return torch.from_numpy(compiled(x.numpy())[0].copy())
    assert precision == "fp32", f"{path.suffix} files run in fp32 only"
    if path.suffix == ".onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    return torch.jit.load(str(path))(x).detach()


def check_export_parity(model, path: Path, precision: str, sizes=((64, 96), (72, 104))) -> None:
    """An exported file run in `precision` agrees with PyTorch on images made here: logits to float rounding
    (relative to their size), or for networks that route by arg-max (max-unpooling: ties flip between runtimes)
    labels on 99% of pixels."""
    from dabnet.commands.export import routes_by_argmax

    g = torch.Generator().manual_seed(1)
    for h, w in sizes:
        x = torch.rand(1, 3, h, w, generator=g) * 4 - 2
        with torch.inference_mode():
            ref = model.eval()(x)
        out = run_exported(Path(path), x, precision)
        assert out.shape == ref.shape, (out.shape, ref.shape)
        if routes_by_argmax(model):
            assert (out.argmax(1) == ref.argmax(1)).float().mean() >= 0.99
        else:
            assert (out - ref).abs().max() <= 1e-4 * max(1.0, float(ref.abs().max())), float((out - ref).abs().max())


@pytest.fixture(scope="session")
def export_parity():
    """`export_parity(model, path, precision)`: the exported file, run in `precision`, checked against PyTorch
    independently of export's own check."""
    return check_export_parity


@pytest.fixture(scope="session")
def sigterm_at():
    """`sigterm_at(train_one_epoch, epoch, step)`: a train_one_epoch that SIGTERMs this process mid-epoch."""
    return sigterm_at_step


@pytest.fixture(scope="session")
def holdout_run():
    """`holdout_run(tmp_path, out="run", **config overrides)`: (root, run folder, config) of a tiny held-out-drive run."""
    return train_holdout_run


@pytest.fixture(scope="session")
def make_cityscapes():
    """`make_cityscapes(root, train_ids=False)`: a tiny Cityscapes tree (labelIds or labelTrainIds)."""
    return build_cityscapes


@pytest.fixture(scope="session")
def make_folder():
    """`make_folder(root, id_map=None)`: a tiny folder dataset; returns its dataset.yaml."""
    return build_folder


def pytest_addoption(parser):
    parser.addoption("--cpu-kind", choices=sorted(KINDS), default=None,
                     help="run as on that kind of CPU (tests/cpu_kinds.py): oneDNN capped, OpenVINO's default precision "
                          "and the CPU flags dabnet reads set as there")  # fmt: skip


def pytest_configure(config):
    # The suite sends no usage statistics either: test code imports OpenVINO directly (dabnet.util.telemetry).
    config._dabnet_quiet = telemetry_off()
    config._dabnet_quiet.__enter__()
    # matplotlib builds its font list (running fc-list) the first time it is imported on a machine: done here, before
    # any test, it is not counted against whichever test happens to plot first (a fresh CI clone's first run).
    with contextlib.suppress(ImportError):
        import matplotlib.font_manager  # noqa: F401
    kind = config.getoption("--cpu-kind")
    if kind:
        os.environ.update(KINDS[kind].env)  # oneDNN and ATen read these on first use, after this
        expected = KINDS[kind].aten.upper()
        capability = torch.backends.cpu.get_cpu_capability()
        if capability != expected and expected == "AVX2":  # read before this hook: the cap came too late
            raise pytest.UsageError(f"--cpu-kind {kind}: PyTorch chose its {capability} kernels before the cap; "
                                    f"start pytest with {' '.join(f'{k}={v}' for k, v in KINDS[kind].env.items())} set")  # fmt: skip


def pytest_unconfigure(config):
    quiet = getattr(config, "_dabnet_quiet", None)
    if quiet is not None:
        quiet.__exit__(None, None, None)


def pytest_report_header(config):
    kind = config.getoption("--cpu-kind")
    return f"cpu kind: {kind}, emulated ({KINDS[kind].model})" if kind else None


def pytest_generate_tests(metafunc):
    # A test that takes `cpu_kind` runs once per kind, or only as the session's kind under --cpu-kind.
    if "cpu_kind" in metafunc.fixturenames:
        kind = metafunc.config.getoption("--cpu-kind")
        metafunc.parametrize("cpu_kind", [kind] if kind else list(KINDS), indirect=True)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "cpu_kind" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.cpu_kind)
    workers = int(getattr(config, "workerinput", {}).get("workercount", 1))
    if workers > 1:
        items[:] = sharing.longest_first(items, workers)


@pytest.fixture
def cpu_kind(request, monkeypatch):
    """The kind of CPU (tests/cpu_kinds.py) this test runs as: OpenVINO's default precision and the CPU flags dabnet
    reads are that kind's here, in this process; oneDNN's kernels are the machine's unless the session runs with
    --cpu-kind (the caps are read once per process)."""
    kind = KINDS[request.param]
    if request.config.getoption("--cpu-kind") is None:
        emulate(kind, monkeypatch)
    return kind


@pytest.fixture(autouse=True, scope="session")
def _cpu_kind(request):
    """With --cpu-kind, the whole session runs as on that kind of CPU (tests/cpu_kinds.py)."""
    kind = request.config.getoption("--cpu-kind")
    if not kind:
        yield None
        return
    mp = pytest.MonkeyPatch()
    emulate(KINDS[kind], mp)
    yield KINDS[kind]
    mp.undo()


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Statistics and OpenVINO IR caches go to a temporary folder of this run, never the user's ~/.cache; the xdist
    workers share it, and one of them builds each entry (the others wait and read it)."""
    from dabnet.util.store import Store

    run = sharing.session_folder(tmp_path_factory)
    cache = run / "dabnet-cache"
    cache.mkdir(exist_ok=True)
    mp = pytest.MonkeyPatch()
    mp.setenv("DABNET_CACHE", str(cache))
    if importlib.util.find_spec("fcntl") is not None:  # POSIX; elsewhere each worker builds its own copy, as before
        mp.setattr(Store, "get", sharing.one_builder_per_entry(Store.get, cache.resolve(), run / "dabnet-cache-locks"))
    yield
    mp.undo()


if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two workers on 2 cores: one thread each, so that they do not fight over the cores.
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _small_torch():
    # Tests run on 2 cores; fixed seeds keep them reproducible.
    torch.manual_seed(0)
    np.random.seed(0)
    yield


@pytest.fixture(scope="session")
def official_reference():
    """(state_dict with official keys, input, output) from the shared npz."""
    if not REFERENCE_NPZ.exists():
        pytest.skip(f"{REFERENCE_NPZ} not present")
    data = np.load(REFERENCE_NPZ)
    sd = {k[len("state_dict/") :]: torch.from_numpy(np.array(data[k])) for k in data.files if k.startswith("state_dict/")}
    return sd, torch.from_numpy(data["input"]), torch.from_numpy(data["output"])


@pytest.fixture(scope="session")
def camvid_root() -> Path:
    """The shared CamVid folder, or a skip."""
    if not (CAMVID_ROOT / "train").is_dir():
        pytest.skip(f"{CAMVID_ROOT} not present")
    return CAMVID_ROOT


@pytest.fixture
def unwritable(tmp_path) -> Path:
    """A folder no file can be written into, for whoever runs the tests (root ignores permission bits)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        (folder / "probe").write_bytes(b"")
    except OSError:
        yield folder
        folder.chmod(0o755)
        return
    (folder / "probe").unlink()
    folder.chmod(0o755)
    sysfs = Path("/sys/kernel")  # root: sysfs refuses new files to everyone
    try:
        (sysfs / "dabnet-probe").write_bytes(b"")
    except OSError:
        yield sysfs
        return
    pytest.skip("no folder here refuses writes to this user")
