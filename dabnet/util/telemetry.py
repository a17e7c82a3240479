"""No usage statistics leave the machine from dabnet's calls into OpenVINO's converter and NNCF.

Both report through the `openvino-telemetry` package (installed with them): each `openvino.convert_model` sends
a session, the OpenVINO version, the conversion's non-default options and its result, and each NNCF import and
`nncf.quantize` its own events, to Google Analytics (www.google-analytics.com), each from a forked process. The
package asks no one: with no consent file (~/intel/openvino_telemetry) it counts as consent, writes a client id
and a usage count under ~/intel, and sends; it declines only when that file holds "0" or `CI=true` is set (NNCF
also when NNCF_CI or NNCF_DEV is set, or pytest is imported). `telemetry_off` makes it decline for the calls it
wraps, whatever those files and variables say, and touches no file. docs/deploying.md says the same for users.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator

_LOCK = threading.Lock()
_ACTIVE = {"depth": 0, "saved": None}  # nested and concurrent uses: the first in patches, the last out restores


@contextlib.contextmanager
def telemetry_off() -> Iterator[None]:
    """Within it, openvino-telemetry sends nothing and writes nothing: its consent check declines (so a telemetry
    object made or re-made here has no consent, no client id and no usage count) and its sender drops what an
    object made earlier with consent would send. Both are put back when the last user leaves."""
    try:
        from openvino_telemetry.utils import opt_in_checker, sender
    except ImportError:  # not installed: nothing can send
        yield
        return
    checker, send = opt_in_checker.OptInChecker, sender.TelemetrySender
    with _LOCK:
        if _ACTIVE["depth"] == 0:
            _ACTIVE["saved"] = checker.__dict__["check"], send.__dict__["send"]
            checker.check = lambda self, *args, **kwargs: opt_in_checker.ConsentCheckResult.DECLINED
            send.send = lambda self, backend, message: None
        _ACTIVE["depth"] += 1
    try:
        yield
    finally:
        with _LOCK:
            _ACTIVE["depth"] -= 1
            if _ACTIVE["depth"] == 0:
                checker.check, send.send = _ACTIVE["saved"]
