"""torch.compile's cache folder, made usable before anything compiles.

Importing torch._dynamo (which torch.compile does, and so do PyTorch's optimizers on construction) creates the
folder TORCHINDUCTOR_CACHE_DIR names and fails, with only `[Errno 2] ... PATH`, where it cannot. A cache is an
optimisation: where the folder named cannot be written, kernels are cached in a temporary folder for this run,
with one warning that names the variable. Called wherever dabnet starts to compile or to train.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Optional

from .files import OutputError, check_output_folder

VARIABLE = "TORCHINDUCTOR_CACHE_DIR"
_replaced: Optional[str] = None  # the folder this process caches in instead of the one named, once replaced


def usable_compile_cache() -> Optional[str]:
    """None where TORCHINDUCTOR_CACHE_DIR is unset (torch's default, in the temp folder) or writable; else point it
    at a temporary folder for this process, removed at exit, warn once naming the variable, and return that folder."""
    global _replaced
    wanted = os.environ.get(VARIABLE)
    if not wanted or wanted == _replaced:
        return _replaced
    try:
        check_output_folder(os.path.abspath(wanted), VARIABLE)  # a real write, as torch's makedirs and its cache do
        return None
    except OutputError as e:
        import atexit
        import warnings

        _replaced = tempfile.mkdtemp(prefix="dabnet-inductor-")
        atexit.register(shutil.rmtree, _replaced, True)
        os.environ[VARIABLE] = _replaced
        warnings.warn(f"{e}. Until then, torch.compile's kernels (fused, compile) are cached in {_replaced} for this run "
                      "only", stacklevel=2)  # fmt: skip
        return _replaced
