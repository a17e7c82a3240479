"""Nothing phones home: the default path, from a cold start, makes no connection and no name lookup.

It runs in a process of its own, as a user's first run does: NNCF turns its telemetry off whenever pytest is
imported, and openvino-telemetry sends from forked processes, whose attempts a guard in this process would
not see. The guard is installed in every Python process of the run (sitecustomize) and records to a file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

GUARD = '''
import os, socket

def _forbidden(what):
    def refuse(*args, **kwargs):
        with open(os.environ["DABNET_NET_LOG"], "a") as log:
            log.write(f"{os.getpid()} {what} {args[1:] if what.startswith('socket.') else args}\\n")
        raise OSError(f"no network in this test: {what}")
    return refuse

socket.socket.connect = _forbidden("socket.connect")
socket.socket.connect_ex = _forbidden("socket.connect_ex")
socket.create_connection = _forbidden("create_connection")
socket.getaddrinfo = _forbidden("getaddrinfo")
'''

RUN = '''
import numpy as np
from dabnet import Segmenter
from dabnet.commands.demo import sample_frames
from dabnet.io.images import read_image

seg = Segmenter.from_checkpoint("dabnet-camvid")  # the default backend, from a cold cache
print("labels", seg.predict(read_image(sample_frames()[0])).shape)
from openvino_telemetry.utils.opt_in_checker import ConsentCheckResult, OptInChecker
print("telemetry put back:", OptInChecker().check(False, False) != ConsentCheckResult.DECLINED)
'''


@pytest.mark.slow  # quantizes (NNCF), in a subprocess
def test_the_default_path_from_a_cold_start_tries_no_connection(tmp_path):
    pytest.importorskip("openvino_telemetry")
    (tmp_path / "guard").mkdir()
    (tmp_path / "guard" / "sitecustomize.py").write_text(GUARD)
    (tmp_path / "home").mkdir()
    log = tmp_path / "net.log"
    env = {k: v for k, v in os.environ.items()
           if k not in ("CI", "TF_BUILD", "JENKINS_URL", "NNCF_CI", "NNCF_DEV") and not k.startswith("PYTEST_")}  # fmt: skip
    env.update(HOME=str(tmp_path / "home"), DABNET_CACHE=str(tmp_path / "cache"), DABNET_NET_LOG=str(log),
               PYTHONPATH=os.pathsep.join([str(tmp_path / "guard"), str(ROOT)]))  # a new user: no consent file, no cache
    proc = subprocess.run([sys.executable, "-c", RUN], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "backend auto -> openvino int8" in proc.stdout and "labels (360, 480)" in proc.stdout, proc.stdout
    assert not log.exists(), log.read_text()  # no connection, no name lookup, in any process of the run
    assert not any((tmp_path / "home").rglob("*")), sorted((tmp_path / "home").rglob("*"))  # no client id, no usage count
    assert "telemetry put back: True" in proc.stdout  # dabnet's switch is off again after its calls
