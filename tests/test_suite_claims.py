"""What the README says of the suite holds: `pytest -m "not slow"` leaves out every test that runs a subprocess,
compiles kernels or starts processes."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

HEAVY = ("subprocess.", "Popen(", "torch.compile", "torch.distributed.run", "mp.start_processes", "run_compiled", "fused=True", "fused=true")


def _is_slow(decorators) -> bool:
    return any("slow" in ast.unparse(d) for d in decorators)


def test_every_subprocess_compile_or_multiprocess_test_is_marked_slow():
    unmarked = []
    for path in sorted(Path(__file__).parent.glob("test_*.py")):
        src = path.read_text()
        tree = ast.parse(src)
        module_slow = any(isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "pytestmark" for t in n.targets)
                          and "slow" in ast.unparse(n.value) for n in tree.body)  # fmt: skip
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test") and node.name != "test_every_subprocess_compile_or_multiprocess_test_is_marked_slow":
                body = ast.get_source_segment(src, node) or ""
                if not module_slow and not _is_slow(node.decorator_list) and any(k in body for k in HEAVY):
                    unmarked.append(f"{path.name}::{node.name}")
    assert unmarked == []


def test_no_generated_files_in_the_repository_root():  # row 16
    debris = [p.name for p in ROOT.iterdir() if p.suffix in (".onnx", ".data", ".xml", ".bin") or p.name.startswith("sym_shape_infer")]
    assert debris == []
