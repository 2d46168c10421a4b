"""The layering of docs/ARCHITECTURE.md, read from the source with `ast`:

- `protocols/`, outside `protocols/bus/`, does no I/O: it imports no trio, socket, sqlite3,
  sqlite_utils, paho (nor another module whose purpose is I/O), and calls nothing that
  opens, reads, writes or looks at a file, except in the few functions listed below,
  each with its reason;
- `protocols/` imports neither `ledgers` nor `engine`;
- `ledgers/` and `engine/` import each other only in the composition roots, which start
  whole worlds.

Every import counts, a function's own included. A failure names each module, line and
import or call."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Modules whose purpose is I/O: the network, a database, processes, the file system.
IO_MODULES = frozenset(
    {
        "trio",
        "socket",
        "sqlite3",
        "sqlite_utils",
        "paho",
        "asyncio",
        "selectors",
        "ssl",
        "subprocess",
        "multiprocessing",
        "http",
        "urllib",
        "shutil",
        "tempfile",
        "glob",
    }
)
# Methods that touch the file system (pathlib.Path's, lxml's and the file-object readers').
FILE_METHODS = frozenset(
    {
        "open",
        "read_text",
        "write_text",
        "read_bytes",
        "write_bytes",
        "touch",
        "unlink",
        "mkdir",
        "rmdir",
        "rename",
        "iterdir",
        "glob",
        "rglob",
        "stat",
        "lstat",
        "exists",
        "is_file",
        "is_dir",
        "chmod",
        "symlink_to",
        "hardlink_to",
        "samefile",
    }
)
FILE_READERS = {
    "etree": {"parse", "iterparse"},
    "json": {"load", "dump"},
    "tomllib": {"load"},
    "pickle": {"load", "dump"},
    "io": {"open", "FileIO"},
}
# os functions that compute with names only; every other os.* call is I/O (files, the
# environment, processes).
OS_PURE = frozenset(
    {
        "fspath",
        "fsencode",
        "fsdecode",
        "path.join",
        "path.basename",
        "path.dirname",
        "path.splitext",
        "path.split",
        "path.normpath",
        "path.isabs",
    }
)
# Whole-package names from which `from X import name` brings in I/O by a bare name.
FILE_PACKAGES = frozenset({"os", "io", "pathlib", "shutil"})

# The file I/O protocols/ does today, where it is: (module, function) -> why it is there.
FILE_IO_ALLOWED = {
    (
        "protocols/iso20022/xml.py",
        "_schema",
    ): "the ISO 20022 profile schemas (.xsd) are package data, read once per thread and cached",
    ("protocols/iso20022/xml.py", "codes"): "the code lists of a profile, read from its .xsd (package data), cached",
    ("protocols/signing.py", "PrivateKey.load"): "a service's own key file, read at start",
    ("protocols/signing.py", "PrivateKey.save"): "a key file written by `lockstep init` (mode 0600)",
    ("protocols/signing.py", "load_public_key"): "a public key file, read at start",
    ("protocols/registry.py", "Registry.save"): "the registry file written by `lockstep init`",
    ("protocols/registry.py", "_party"): "a party's public_key_file, read with the registry at start",
    ("protocols/failures.py", "read_bytes"): "reads a config or registry file naming it in the failure",
}

# The composition roots (docs/ARCHITECTURE.md, "Where things live").
ROOTS = frozenset({"engine/cli.py", "engine/world/local.py", "engine/world/demo.py"})


def modules(package: str) -> Iterator[tuple[str, ast.Module]]:
    for path in sorted((ROOT / package).rglob("*.py")):
        name = path.relative_to(ROOT).as_posix()
        yield name, ast.parse(path.read_text(), filename=name)


def imports(module: str, tree: ast.Module) -> Iterator[tuple[int, str]]:
    """Every module imported, absolute, with its line: `from ..x import y` in
    protocols/bus/mqtt.py is protocols.x."""
    package = module.removesuffix(".py").split("/")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            yield node.lineno, ".".join([*base, *([node.module] if node.module else [])])


def top(name: str) -> str:
    return name.split(".")[0]


def dotted(node: ast.AST) -> str | None:
    """`os.path.exists` for the expression os.path.exists; None for anything not a plain name path."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return ".".join([node.id, *reversed(parts)])


def file_calls(tree: ast.Module) -> Iterator[tuple[int, str, str]]:
    """(line, function it is in, the call) for each call that touches a file."""
    bare = {"open"} | {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module in FILE_PACKAGES
        for alias in node.names
        if alias.name[0].islower()
    }

    def visit(node: ast.AST, where: list[str]) -> Iterator[tuple[int, str, str]]:
        for child in ast.iter_child_nodes(node):
            inside = (
                where + [child.name]
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                else where
            )
            if isinstance(child, ast.Call) and touches_a_file(child.func, bare):
                yield child.lineno, ".".join(where) or "<module>", ast.unparse(child.func)
            yield from visit(child, inside)

    yield from visit(tree, [])


def touches_a_file(func: ast.AST, bare: set[str]) -> bool:
    if isinstance(func, ast.Name):
        return func.id in bare
    if not isinstance(func, ast.Attribute):
        return False
    name = dotted(func)
    if name is not None and name.startswith("os."):
        return name.removeprefix("os.") not in OS_PURE
    if isinstance(func.value, ast.Name) and func.attr in FILE_READERS.get(func.value.id, ()):
        return True
    return func.attr in FILE_METHODS


def pure_protocol_modules() -> Iterator[tuple[str, ast.Module]]:
    return ((name, tree) for name, tree in modules("protocols") if not name.startswith("protocols/bus/"))


def test_the_protocol_core_imports_no_io_module():
    found = [
        f"{module}:{line} imports {name}"
        for module, tree in pure_protocol_modules()
        for line, name in imports(module, tree)
        if top(name) in IO_MODULES
    ]
    assert found == [], "protocols/ outside protocols/bus/ does no I/O (docs/ARCHITECTURE.md):\n" + "\n".join(found)


def test_the_protocol_core_touches_no_file_except_where_listed_with_its_reason():
    found, used = [], set()
    for module, tree in pure_protocol_modules():
        for line, function, call in file_calls(tree):
            if (module, function) in FILE_IO_ALLOWED:
                used.add((module, function))
            else:
                found.append(f"{module}:{line} in {function}: {call}(...)")
    assert found == [], (
        "protocols/ outside protocols/bus/ touches no file (docs/ARCHITECTURE.md); do it in the "
        "service, or list the function in FILE_IO_ALLOWED with why:\n" + "\n".join(found)
    )
    stale = sorted(set(FILE_IO_ALLOWED) - used)
    assert stale == [], f"listed as doing file I/O but no longer do (remove them from FILE_IO_ALLOWED): {stale}"


def test_the_protocols_import_neither_ledgers_nor_engine():
    found = [
        f"{module}:{line} imports {name}"
        for module, tree in modules("protocols")
        for line, name in imports(module, tree)
        if top(name) in ("ledgers", "engine")
    ]
    assert found == [], "protocols/ depends on no service (docs/ARCHITECTURE.md):\n" + "\n".join(found)


def test_ledgers_and_engine_import_each_other_only_in_the_composition_roots():
    found = [
        f"{module}:{line} imports {name}"
        for package, other in (("ledgers", "engine"), ("engine", "ledgers"))
        for module, tree in modules(package)
        if module not in ROOTS
        for line, name in imports(module, tree)
        if top(name) == other
    ]
    assert found == [], (
        f"ledgers/ and engine/ never depend on each other; only {', '.join(sorted(ROOTS))} "
        "import both (docs/ARCHITECTURE.md):\n" + "\n".join(found)
    )


# -- the checks themselves catch what they are for --------------------------------------------------


def test_the_checks_name_the_module_and_line_of_a_violating_import_or_call():
    source = (
        "import os\nfrom pathlib import Path\n\n"
        "def load(path):\n    import trio\n    with open(path) as f:\n        return f.read()\n\n"
        "class Store:\n    def save(self, path):\n        Path(path).write_text('x')\n        os.replace(path, path)\n"
        "        os.path.join(path, 'x')\n        'a'.replace('a', 'b')\n"
    )
    tree = ast.parse(source)
    assert [(line, name) for line, name in imports("protocols/x.py", tree)] == [(1, "os"), (2, "pathlib"), (5, "trio")]
    assert list(file_calls(tree)) == [
        (6, "load", "open"),
        (11, "Store.save", "Path(path).write_text"),
        (12, "Store.save", "os.replace"),
    ]
    relative = ast.parse("from ..ledgers import store\nfrom . import canonical\nfrom .bus import memory\n")
    assert [name for _, name in imports("protocols/bus/mqtt.py", relative)] == [
        "protocols.ledgers",
        "protocols.bus",
        "protocols.bus.bus",
    ]
    assert [name for _, name in imports("engine/coordinator.py", ast.parse("from ledgers.store import Store"))] == [
        "ledgers.store"
    ]
