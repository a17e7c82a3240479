"""The layers hold: every import inside the package (lazy ones included) points at its own layer or one the
architecture guide lets it use (docs/architecture.md), and each folder's `__init__` says what it may import."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import dabnet

PACKAGE = Path(dabnet.__file__).parent

# layer -> the layers it may import (besides itself); the order is docs/architecture.md's
ALLOWED = {
    "util": set(),
    "models": {"util"},
    "io": {"models", "util"},
    "data": {"io", "util"},
    "runtimes": {"io", "models", "util"},
    "inference": {"runtimes", "data", "io", "models", "util"},
    "training": {"runtimes", "data", "io", "models", "util"},
    "config": {"inference", "runtimes", "data", "io", "models", "util"},
    "commands": {"config", "training", "inference", "runtimes", "data", "io", "models", "util"},
    "cli": {"commands", "config", "training", "inference", "runtimes", "data", "io", "models", "util", "__init__"},  # __version__
    "__init__": {"training", "inference", "io", "models"},
    "__main__": {"cli"},
}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path):
    """(line, imported dabnet module) of every import in `path`, relative ones resolved."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    package = package.removesuffix(".__init__")
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == "dabnet":  # `from dabnet import x` / `from .. import x`: x is a module or a name of the face
                for alias in node.names:
                    yield node.lineno, f"dabnet.{alias.name}" if (PACKAGE / alias.name).exists() or (PACKAGE / f"{alias.name}.py").exists() else "dabnet"
            elif target.startswith("dabnet."):
                yield node.lineno, target
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("dabnet."):
                    yield node.lineno, alias.name


def test_every_import_points_down_or_sideways():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        layer = rel.parts[0].removesuffix(".py") if len(rel.parts) > 1 or rel.name not in ("__init__.py",) else "__init__"
        for line, target in _imports(path):
            other = _layer(target)
            if other != layer and other not in ALLOWED[layer]:
                wrong.append(f"{rel}:{line} ({layer}) imports {target} ({other})")
    assert wrong == []


def test_each_layer_says_what_it_is_and_what_it_may_import():
    """Each folder's docstring names, as whole words, exactly the layers it may import (`may import a, b and c`),
    or says that it imports nothing."""
    for folder in sorted(p for p in PACKAGE.iterdir() if (p / "__init__.py").exists()):
        doc = ast.get_docstring(ast.parse((folder / "__init__.py").read_text())) or ""
        assert folder.name in ALLOWED and doc, folder
        clause = re.search(r"\bmay\s+import\s+([^.(;]*)", doc)
        if clause is None:
            assert re.search(r"\bimports\s+nothing\b", doc) and not ALLOWED[folder.name], (folder.name, doc)
            continue
        named = set(re.findall(r"[A-Za-z_]+", clause.group(1))) - {"and"}
        assert named == ALLOWED[folder.name], (folder.name, sorted(named), sorted(ALLOWED[folder.name]))
