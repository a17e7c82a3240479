"""`dabnet serve`'s options."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List

from ..runtimes import backend_help, backend_names
from ..util.options import Options, option
from .validate import DEVICE_HELP, NOT_A_PATH, SCALE, check_device, host_names


@dataclass
class ServeConfig(Options):
    """HTTP API and web page for segmentation."""

    checkpoint: str = option("dabnet-camvid", "checkpoint, .onnx file or bundled name", io="in")
    backend: str = option("auto", backend_help, choices=backend_names, **NOT_A_PATH)
    device: str = option("auto", DEVICE_HELP, check=check_device, **NOT_A_PATH)
    host: str = option("127.0.0.1", "address to bind (default: this machine only)", **NOT_A_PATH)
    port: int = option(8000, "TCP port", range="[0, 65535]", valid="a TCP port, 0-65535")
    max_queue: int = option(16, "waiting requests before 503", range="[1, inf)")
    max_mb: float = option(20.0, "request body limit in MiB (413 beyond)", range="(0, 1e5]")
    max_pixels: int = option(4096 * 4096, "decoded image limit in pixels (413 beyond)", range="[1, 1e12]")
    timeout_s: float = option(30.0, "seconds per request before 504", flag="--timeout", metavar="SECONDS", range="(0, 86400]")
    max_batch: int = option(4, "same-size requests run together", range="[1, 1024]")
    batch_wait_ms: float = option(2.0, "how long the worker waits to fill a batch", range="[0, 60000]")
    scale: float = option(1.0, "resize images by this factor before the network (labels at the image's size); "
                          "above 1 is more accurate and slower, e.g. 1.5", **SCALE)  # fmt: skip
    header_timeout_s: float = option(10.0, "seconds a connection may take to send a request's headers (and to start "
                                     "the next one) before it is closed", range="(0, 3600]")  # fmt: skip
    max_connections: int = option(256, "open connections at most; more are closed at once (keep it under the "
                                  "process's open-file limit)", range="[1, 1e6]")  # fmt: skip
    max_inflight_mb: float = option(512.0, "MiB of bodies and decoded images held by all requests in flight (503 beyond)", range="(0, 1e6]")
    max_per_client: int = option(8, "requests one client address may have in flight at once (429 beyond; behind a "
                                 "proxy all its clients share its address)", range="[1, inf)")  # fmt: skip
    allowed_hosts: List[str] = option(help="host names this server answers to besides localhost, --host and IP "
                                      "addresses; a request whose Host or Origin names another is refused (403: DNS "
                                      "rebinding); * for any", factory=list, nargs="*", check=host_names, **NOT_A_PATH)  # fmt: skip

    @property
    def max_inflight_bytes(self) -> int:
        return int(self.max_inflight_mb * 2**20)

    @property
    def max_bytes(self) -> int:
        return int(self.max_mb * 2**20)
