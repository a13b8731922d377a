"""The package's folders import one way: each only from the folders listed below it in
`addons/__init__.py` (and the leaf modules any folder may use); the shell imports them all."""

from __future__ import annotations

import ast
import re

from tests.conftest import ROOT

PACKAGE = ROOT / "addons"
LEAVES = {"metrics", "printable", "listening", "json_logs"}


def _folders() -> list[str]:
    doc = ast.get_docstring(ast.parse((PACKAGE / "__init__.py").read_text())) or ""
    return re.findall(r"^- `(\w+)/`", doc, re.M)


def test_every_folder_is_in_the_documented_order() -> None:
    folders = _folders()
    on_disk = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert set(folders) == on_disk - {"schema"}, "addons/__init__.py lists every folder"


def test_folders_import_only_folders_below_them() -> None:
    folders = _folders()
    upward = []
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).parts
        if len(parts) < 2 or parts[0] not in folders:
            continue  # the shell (gateway.py, cli.py, ...) may import anything
        folder = parts[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                if not name.startswith("holdgate."):
                    continue
                target = name.split(".")[1]
                if target in (folder, *LEAVES):
                    continue
                if target not in folders or folders.index(target) <= folders.index(folder):
                    upward.append(f"{path.relative_to(ROOT)} imports {name}")
    assert upward == []
