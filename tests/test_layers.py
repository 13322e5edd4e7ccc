"""The package's layers point one way (issue 24): the commands (``zfviz/commands/``, ``zfviz/cli.py``, the entry
point ``zfviz/__main__.py``) use the library; no library module imports them, and the viz commands' old grab
bag (``zfviz.vizio``) is gone."""

from __future__ import annotations

import ast
from pathlib import Path

import zfviz

PACKAGE = Path(zfviz.__file__).parent
COMMANDS = ("zfviz.commands", "zfviz.cli", "zfviz.vizio")


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth (a function-level import counts too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}  # from zfviz import commands
    return found


def test_no_library_module_imports_the_commands():
    library = [p for p in PACKAGE.rglob("*.py") if "commands" not in p.relative_to(PACKAGE).parts[:1]]
    library = [p for p in library if p.parent != PACKAGE or p.name not in ("cli.py", "__main__.py")]  # the entry
    assert len(library) > 50  # the walk found the package
    upward = {str(p.relative_to(PACKAGE)): sorted(m for m in _imports(p) if m.startswith(COMMANDS)) for p in library}
    assert not {name: mods for name, mods in upward.items() if mods}


def test_the_grab_bag_is_gone():
    assert not (PACKAGE / "vizio.py").exists()
