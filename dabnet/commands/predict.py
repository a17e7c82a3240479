"""`dabnet predict`: segment image files, folders, globs, videos and webcams with a `Segmenter`."""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..config import PredictConfig
from ..data.classes import CITYSCAPES_CLASSES
from ..inference.outputs import OUTPUT_KINDS, output_files, write_outputs
from ..inference.segmenter import Segmenter
from ..inference.spec import describe
from ..io.images import (
    IMAGE_SUFFIXES,
    VIDEO_SUFFIXES,
    ImageReadError,
    VideoWriteError,
    VideoWriter,
    check_video_size,
    frame_size,
    open_video,
    read_image,
    video_frames,
)
from ..io.preprocessing import to_rgb
from ..io.visualize import colorize, overlay
from ..runtimes import resolve_device
from ..util.files import atomic_output, check_output_folder, locked, printable


def expand_inputs(inputs: Sequence[str], skipped: Optional[List[str]] = None) -> Tuple[List[Path], List[Union[Path, int]], List[str]]:
    """Split command-line inputs into image files, video sources (files or webcam indices) and
    inputs that matched nothing. A path that exists is taken as it is (`img[1].png` is a name, not a glob);
    others are globs. Folders give their images and videos (sorted), leaving out hidden files (macOS's `._`
    sidecars) and, with a note in `skipped`, files of other kinds and links to nothing."""
    import glob

    images: List[Path] = []
    videos: List[Union[Path, int]] = []
    missing: List[str] = []
    notes = skipped if skipped is not None else []
    for item in inputs:
        if item.isdigit() and not Path(item).exists():
            videos.append(int(item))  # a webcam index
            continue
        literal = Path(item).exists() or Path(item).is_symlink()
        paths = [Path(item)] if literal or not any(c in item for c in "*?[") else [Path(p) for p in sorted(glob.glob(item))]
        if not paths or not all(p.exists() for p in paths):
            missing.append(item)
            continue
        for p in paths:
            if not p.is_dir():
                (videos if p.suffix.lower() in VIDEO_SUFFIXES else images).append(p)
                continue
            for q in sorted(p.iterdir()):
                kind = q.suffix.lower()
                if q.name.startswith("."):
                    continue
                if not q.exists():
                    notes.append(f"{q}: a link to nothing")
                elif q.is_dir():
                    continue
                elif kind in IMAGE_SUFFIXES:
                    images.append(q)
                elif kind in VIDEO_SUFFIXES:
                    videos.append(q)
                else:
                    notes.append(f"{q}: {'no file extension' if not kind else f'{kind} is not an image or video type predict reads'} "
                                 f"({', '.join(IMAGE_SUFFIXES + VIDEO_SUFFIXES)})")  # fmt: skip
    return images, videos, missing


OUTPUT_SUFFIXES = tuple(f"_{kind}" for kind in OUTPUT_KINDS)  # what predict writes beside NAME: never inputs again


def own_outputs(images: Sequence[Path], out: Path) -> List[Path]:
    """Inputs that are this command's outputs: NAME_label/_color/_overlay files inside `out`, or beside a
    NAME image that is an input too (a second run over a folder that holds its first run's results)."""
    out = out.resolve()
    stems = {(p.parent.resolve(), p.stem) for p in images}
    own = []
    for p in images:
        inside = out == p.parent.resolve() or out in p.parent.resolve().parents
        base = next((p.stem[: -len(sfx)] for sfx in OUTPUT_SUFFIXES if p.stem.endswith(sfx)), None)
        if base is not None and (inside or (p.parent.resolve(), base) in stems):
            own.append(p)
    return own


def output_names(paths: Sequence[Path]) -> List[str]:
    """Output stems unique by construction: the file's stem when that is unique, else its path relative to the
    inputs' common folder (a/x.jpg and b/x.png -> a/x and b/x), with the suffix kept where even that is shared
    (x.jpg and x.png in one folder -> x.jpg and x.png), and a counter where a name is still taken (x.jpg.png's
    stem is x.jpg: it becomes x.jpg~2)."""
    stems = [p.stem for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    root = Path(os.path.commonpath([str(p.absolute().parent) for p in paths]))  # links named as given, not as their targets
    names = [str(p.absolute().with_suffix("").relative_to(root)) for p in paths]
    counts = Counter(names)
    names = [n + p.suffix if counts[n] > 1 else n for n, p in zip(names, paths)]
    taken: set = set()
    unique = []
    for n in names:
        name, k = n, 1
        while name in taken:
            k += 1
            name = f"{n}~{k}"
        taken.add(name)
        unique.append(name)
    return unique


MANIFEST = ".dabnet-predict.json"  # in OUT: every file predict has written there, in this run or an earlier one
MANIFEST_LOCK = ".dabnet-predict.lock"  # in OUT: held while a run reads and rewrites MANIFEST


class OutputClaims:
    """The files predict may write in OUT: new ones, and those it wrote before (listed in OUT/MANIFEST). A file
    that exists and predict did not write (a ground truth beside its image, a user's own video) is never
    replaced: the input that would write it is refused, and said so.

    Runs into one OUT at the same time share MANIFEST: each check-and-claim reads it, adds its files and
    rewrites it (atomically) under an exclusive lock on OUT/MANIFEST_LOCK, so no run's entries are lost and no
    run takes another's fresh outputs for foreign ones. (One file and a lock rather than a fragment per run:
    readers stay one read, and there are no fragments to merge or clean up.)"""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.path = out / MANIFEST

    def _read(self) -> set:
        import json

        try:
            return set(json.loads(self.path.read_text())) if self.path.is_file() else set()
        except (ValueError, TypeError, OSError):  # unreadable: predict's earlier files count as foreign, and are kept
            return set()

    def claim(self, groups: Dict[Any, Sequence[str]]) -> Dict[Any, List[str]]:
        """Claim each group's files (relative to OUT) for predict before they are written (an interrupted run leaves
        no file unclaimed), except the groups with a file that exists and is not predict's own: those are
        returned, each with those files, and claim nothing. One locked read-check-write of MANIFEST."""
        import json

        self.out.mkdir(parents=True, exist_ok=True)
        with locked(self.out / MANIFEST_LOCK):
            ours = self._read()
            refused = {key: [f for f in files if f not in ours and (self.out / f).exists()] for key, files in groups.items()}
            refused = {key: files for key, files in refused.items() if files}
            new = {f for key, files in groups.items() if key not in refused for f in files} - ours
            if new:
                with atomic_output(self.path, fsync=False) as tmp:
                    tmp.write_text(json.dumps(sorted(ours | new), indent=0))
        return refused


def _read(path: Path) -> np.ndarray:
    return to_rgb(read_image(path))


def _waiting(items: Iterator[Any], waited: List[float]) -> Iterator[Any]:
    """`items`, adding to waited[0] the seconds spent waiting for each: decoding is not model time."""
    items = iter(items)
    while True:
        t0 = time.perf_counter()
        try:
            item = next(items)
        except StopIteration:
            return
        finally:
            waited[0] += time.perf_counter() - t0
        yield item


def _labelled(seg: Segmenter, images: Iterator[Tuple[Path, np.ndarray]], batch_size: int,
              stream: bool = True) -> Iterator[Tuple[Path, np.ndarray, np.ndarray]]:  # fmt: skip
    """(path, image, label map) in order: through the Segmenter's stream (several images in flight where the
    runtime has throughput streams) at batch size 1 when `stream`, else in batches of `batch_size`."""
    if batch_size == 1 and stream:
        yield from seg.predict_stream(images)
        return
    batch: List[Tuple[Path, np.ndarray]] = []
    for item in images:
        batch.append(item)
        if len(batch) == batch_size:
            yield from ((p, im, lab) for (p, im), lab in zip(batch, seg.predict_batch([im for _, im in batch])))
            batch = []
    if batch:
        yield from ((p, im, lab) for (p, im), lab in zip(batch, seg.predict_batch([im for _, im in batch])))


def predict_images(seg: Segmenter, paths: Sequence[Path], out: Path, fmt: str = "default", batch_size: int = 1, log=print,
                   save: Sequence[str] = OUTPUT_KINDS, workers: int = 2) -> Dict[str, Any]:  # fmt: skip
    """Segment image files; unreadable files are reported and skipped. With `workers` threads the next images
    are decoded and the last ones encoded while the network runs (PIL and zlib release the GIL), in bounded
    queues, so memory stays a few images deep; at batch size 1 a runtime with throughput streams (OpenVINO)
    has several images in the network at once. The files written are the same either way."""
    from collections import deque
    from concurrent.futures import Future, ThreadPoolExecutor

    from ..util.progress import progress_bar

    out.mkdir(parents=True, exist_ok=True)
    skip = set(own_outputs(paths, out))
    if skip:
        log(f"not segmenting {len(skip)} file(s) that are predict's own outputs (in {out}, or NAME_label/_color/_overlay)")
    paths = [p for p in paths if p not in skip]
    stems = dict(zip(paths, output_names(paths))) if paths else {}
    refused = OutputClaims(out).claim({p: output_files(stems[p], fmt, save) for p in paths})
    for p, files in refused.items():
        log(f"not segmenting {p}: {', '.join(str(out / f) for f in files)} exists and predict did not write it; "
            "it is kept. Choose another --out")  # fmt: skip
    paths = [p for p in paths if p not in refused]
    done, failed, seconds, waited = 0, [str(p) for p in refused], 0.0, [0.0]
    bar = progress_bar(total=len(paths), desc="predict", unit="img", dynamic_ncols=True)
    pool = ThreadPoolExecutor(workers) if workers else None
    ahead = max(2, 2 * workers) * batch_size  # images decoded ahead of the network

    def submit(fn, *args) -> Future:
        if pool is not None:
            return pool.submit(fn, *args)
        fut: Future = Future()
        try:
            fut.set_result(fn(*args))
        except Exception as e:
            fut.set_exception(e)
        return fut

    def decoded() -> Iterator[Tuple[Path, np.ndarray]]:
        reads = deque(submit(_read, p) for p in paths[:ahead])
        for i, path in enumerate(paths):
            if i + ahead < len(paths):
                reads.append(submit(_read, paths[i + ahead]))
            try:
                image = reads.popleft().result()
            except (ImageReadError, FileNotFoundError, ValueError) as e:
                failed.append(str(path))
                bar.write(f"skipped {path}: {e}")
                bar.update(1)
                continue
            yield path, image

    writes: "deque[Future]" = deque()
    try:
        t0, w0 = time.perf_counter(), 0.0
        # One image: the latency graph `auto` has compiled already, rather than compiling the throughput one.
        for path, image, label in _labelled(seg, _waiting(decoded(), waited), batch_size, stream=len(paths) > 1):
            seconds += time.perf_counter() - t0 - (waited[0] - w0)
            writes.append(submit(write_outputs, image, label, seg.palette, out, stems[path], fmt, save))
            while len(writes) > 2 * max(workers, 1):  # bounded: the encoders keep up, or the network waits
                writes.popleft().result()
            done += 1
            bar.update(1)
            bar.set_postfix(fps=f"{done / max(seconds, 1e-9):.1f}", refresh=False)
            t0, w0 = time.perf_counter(), waited[0]
        for w in writes:
            w.result()  # a write's error (a full disk) surfaces here
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)  # what is being written finishes whole (atomic_output)
        bar.close()
    fps = done / seconds if seconds else 0.0
    log(f"{done} image(s) segmented, {len(failed)} skipped, {fps:.3g} FPS (model time) -> {out}")
    return {"images": done, "skipped": failed, "fps": fps}


def _ahead(items: Iterator[Any], depth: int) -> Iterator[Any]:
    """`items`, produced by a thread up to `depth` ahead of the consumer (depth 0: in this thread)."""
    if depth <= 0:
        yield from items
        return
    import queue
    import threading

    q: "queue.Queue[Any]" = queue.Queue(depth)
    end, stop = object(), threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
        except BaseException as e:  # handed to the consumer
            q.put(e)
        q.put(end)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        while (item := q.get()) is not end:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


def predict_video(seg: Segmenter, source: Union[Path, int], out: Path, max_frames: int = 0, log=print,
                  name: Optional[str] = None, workers: int = 2) -> Dict[str, Any]:  # fmt: skip
    """Segment a video file or webcam stream frame by frame into OUT/NAME_overlay.mp4, written atomically (a
    webcam's stream ends with Ctrl-C and keeps what was written; a file stopped midway leaves nothing). With
    `workers`, frames are decoded, and overlays blended and encoded, in threads beside the network."""
    from concurrent.futures import Future, ThreadPoolExecutor

    from ..util.progress import progress_bar

    webcam = isinstance(source, int)
    name = name or (f"webcam{source}" if webcam else Path(source).stem)
    target = out / f"{name}_overlay.mp4"
    if OutputClaims(out).claim({target: [str(target.relative_to(out))]}):
        raise ImageReadError(f"{target} exists and predict did not write it; it is kept. Choose another --out")
    cap, fps_in, total = open_video(source)
    width, height = frame_size(cap)
    if width and height:  # a size the writer refuses fails now, before any frame is segmented for nothing
        try:
            check_video_size(width, height, target)
        except VideoWriteError:
            cap.release()
            raise
    frames, seconds = 0, 0.0
    bar = progress_bar(total=total or None, desc=printable(name), unit="frame", dynamic_ncols=True)
    encoder = ThreadPoolExecutor(1) if workers else None  # one thread: frames must reach the file in order
    pending: List[Future] = []

    def encode(writer: VideoWriter, rgb: np.ndarray, label: np.ndarray) -> None:
        writer.write(overlay(rgb, colorize(label, seg.palette)))

    decoded = _ahead(video_frames(cap, max_frames), 2 * workers)
    waited = [0.0]
    frames_in = ((None, rgb) for rgb in _waiting(decoded, waited))
    # A file runs through the Segmenter's stream (frames in flight together where the runtime has throughput
    # streams); a webcam one frame at a time, so that what is shown is the latest frame.
    labelled = ((k, rgb, seg.predict(rgb)) for k, rgb in frames_in) if webcam else seg.predict_stream(frames_in)
    try:
        with atomic_output(target, fsync=False) as tmp:
            writer = VideoWriter(tmp, fps_in, shown_as=target)
            try:
                t0, w0 = time.perf_counter(), 0.0
                for _, rgb, label in labelled:
                    seconds += time.perf_counter() - t0 - (waited[0] - w0)
                    if not writer.started:  # opened here: an unwritable folder fails at once, not in a thread
                        encode(writer, rgb, label)
                    elif encoder is None:
                        encode(writer, rgb, label)
                    else:
                        pending.append(encoder.submit(encode, writer, rgb, label))
                        while len(pending) > 2 * workers:  # bounded: a few frames in flight
                            pending.pop(0).result()
                    frames += 1
                    bar.update(1)
                    bar.set_postfix(fps=f"{frames / max(seconds, 1e-9):.1f}", refresh=False)
                    t0, w0 = time.perf_counter(), waited[0]
            except KeyboardInterrupt:  # how a webcam stream ends; a file stopped midway is not kept
                if not webcam:
                    raise
            finally:
                if encoder is not None:
                    encoder.shutdown(wait=True)
                for f in pending:
                    f.result()
                writer.close()
            if not writer.started:
                raise ImageReadError(f"{printable(str(source))}: no frame could be read")
            writer.check()  # before the rename: a video the disk could not hold is not kept as if whole
    finally:
        labelled.close()  # frames in flight finish first
        decoded.close()  # the decoding thread stops before the capture it reads is released
        bar.close()
        cap.release()
    fps = frames / seconds if seconds else 0.0
    log(f"{name}: {frames} frame(s), {fps:.1f} FPS (model time) -> {target}")
    return {"frames": frames, "fps": fps, "video": str(target)}


def run_predict(cfg: PredictConfig, log=print) -> int:
    """`dabnet predict`: every input segmented; exit code 1 when an input was missing, unreadable or could not be
    written (the others are written all the same, and a last line counts the failures)."""
    from PIL import Image

    guard = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = cfg.max_image_pixels // 2  # Pillow refuses beyond twice its limit (and warns beyond it)
    try:
        return _run_predict(cfg, lambda text: log(printable(text)))  # names that are not UTF-8 print as \xNN
    finally:  # Pillow's guard is process-wide: a caller's own reads keep theirs
        Image.MAX_IMAGE_PIXELS = guard


def _run_predict(cfg: PredictConfig, log) -> int:
    import sys

    def error(text: str) -> None:
        print(f"dabnet predict: {printable(text)}", file=sys.stderr)

    skipped: List[str] = []
    images, videos, missing = expand_inputs(cfg.inputs, skipped)
    for item in missing:
        error(f"nothing found at {item!r}")
    for note in skipped:
        error(f"skipped {note}")
    if not images and not videos:
        error("error: no input images or videos")
        return 2
    out = check_output_folder(cfg.out)  # before the model loads: a typo costs nothing
    spec = describe(cfg.checkpoint)  # the one read of the checkpoint; no backend yet
    names = spec.class_names
    if cfg.format == "cityscapes" and len(names) != len(CITYSCAPES_CLASSES):  # before int8 quantization, not after
        error(f"error: --format cityscapes writes Cityscapes labelIds, but {cfg.checkpoint} predicts {len(names)} classes "
              f"({', '.join(names[:3])}, ...), not Cityscapes' 19; use the default format")  # fmt: skip
        return 2
    device = resolve_device(cfg.device, cfg.backend, cfg.checkpoint)
    seg = Segmenter.from_checkpoint(spec, device, cfg.backend, cfg.precision, cfg.channels_last, scale=cfg.scale)
    failures = len(missing)
    if images:
        failures += len(predict_images(seg, images, out, cfg.format, cfg.batch_size, log, cfg.save, cfg.workers)["skipped"])
    files = [v for v in videos if not isinstance(v, int)]
    names = dict(zip(files, output_names(files))) if files else {}
    for video in videos:
        try:
            predict_video(seg, video, out, cfg.max_frames, log=log, name=names.get(video), workers=cfg.workers)
        except (ImageReadError, VideoWriteError) as e:  # as an unreadable image: reported, and the other inputs still run
            error(f"skipped {video}: {e}")
            failures += 1
    if failures:
        total = len(missing) + len(images) + len(videos)
        error(f"{failures} of {total} input(s) failed (see above)" + (f"; the others were written to {out}" if failures < total else ""))
    return 1 if failures else 0
