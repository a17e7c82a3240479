"""`dabnet export`'s options."""

from __future__ import annotations

from dataclasses import dataclass

from ..runtimes import export_formats
from ..util.options import Options, option
from .validate import NOT_A_PATH


@dataclass
class ExportConfig(Options):
    """Export to ONNX or OpenVINO IR (dynamic H, W) or TorchScript, checked against PyTorch."""

    checkpoint: str = option("", "checkpoint or bundled name", required=True, io="in")
    format: str = option("onnx", "file format", choices=export_formats, required=True, **NOT_A_PATH)
    out: str = option("", "output file (openvino: NAME.xml, written with NAME.bin)", required=True, io="out")
