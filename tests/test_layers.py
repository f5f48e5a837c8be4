"""The package's shape, read from its imports: arrows point one way (api -> services ->
storage), each module says what it is for and stays under 1,000 lines.

The layers (../shared/LAYOUT.md), from the top:
- filesd/api/: everything aiohttp serves; calls the services only, never storage;
- filesd/batches/: the Batch API's service and engine, built on the files service;
- filesd/services/: files, uploads, keys, maintenance: take streams, return records;
- filesd/storage/: the backends; no HTTP server, no fault rules but in its fault-injecting
  wrapper, nothing above it;
- the plain modules at the bottom (records, declared types, values): no I/O, nothing above.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "filesd"

# Modules at the bottom: plain records, declared types and values.
BOTTOM = (
    "filesd.clock",
    "filesd.config",
    "filesd.faultrules",
    "filesd.ids",
    "filesd.models",
    "filesd.objects",
    "filesd.retry",
    "filesd.slots",
    "filesd.values",
)
ABOVE_BOTTOM = ("filesd.api", "filesd.services", "filesd.batches", "filesd.storage", "filesd.cli")
HTTP_SERVER = ("aiohttp.web", "aiohttp.web_request", "aiohttp.web_response", "aiohttp.typedefs")


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = _modules()


def imports_of(name: str) -> set[str]:
    """Every module `name` imports (relative imports resolved; `from x import y` counts x
    and x.y, so importing a submodule by name is seen)."""
    path = MODULES[name]
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def _reaches(imported: set[str], targets: tuple[str, ...]) -> list[str]:
    return sorted(m for m in imported if any(m == t or m.startswith(t + ".") for t in targets))


def _in(name: str, *layers: str) -> bool:
    return any(name == layer or name.startswith(layer + ".") for layer in layers)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_arrows_point_one_way(name: str) -> None:
    imported = imports_of(name)
    if _in(name, "filesd.api"):
        assert _reaches(imported, ("filesd.storage",)) == [], "api/ goes through a service"
    if _in(name, "filesd.services", "filesd.batches", "filesd.storage"):
        assert _reaches(imported, ("filesd.api",)) == [], "nothing below api/ imports it"
        assert _reaches(imported, HTTP_SERVER) == [], "no HTTP server below api/"
    if _in(name, "filesd.services"):
        assert _reaches(imported, ("filesd.batches",)) == [], "the batch engine stands on them"
    if _in(name, "filesd.storage"):
        above = ("filesd.services", "filesd.batches", "filesd.cli", "filesd.testing")
        assert _reaches(imported, above) == [], "storage imports nothing above it"
        if name != "filesd.storage.faulty":
            assert _reaches(imported, ("filesd.faultrules",)) == [], "only faulty.py injects"
    if name in BOTTOM:
        assert _reaches(imported, ABOVE_BOTTOM) == [], "a plain module imports no layer"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_each_module_says_what_it_is_for_in_under_1000_lines(name: str) -> None:
    source = MODULES[name].read_text()
    assert len(source.splitlines()) <= 1000, "split it by job"
    if source.strip():
        assert ast.get_docstring(ast.parse(source)), "its opening comment says what it is for"


def test_no_circle_of_imports() -> None:
    """No modules import one another in a loop (a layer standing on a room of its own)."""
    graph = {name: {m for m in imports_of(name) if m in MODULES and m != name} for name in MODULES}
    seen: dict[str, int] = {}  # 1: on the path being walked, 2: done

    def walk(name: str, path: list[str]) -> None:
        seen[name] = 1
        for nxt in sorted(graph[name]):
            # A package importing its own submodules is its face, not a loop.
            if name == nxt.rsplit(".", 1)[0] and MODULES[name].name == "__init__.py":
                continue
            if seen.get(nxt) == 1:
                loop = [*path[path.index(nxt) :], nxt] if nxt in path else [name, nxt]
                raise AssertionError("import circle: " + " -> ".join(loop))
            if nxt not in seen:
                walk(nxt, [*path, nxt])
        seen[name] = 2

    for name in sorted(MODULES):
        if name not in seen:
            walk(name, [name])


def test_the_rules_can_fail() -> None:
    """The checks above see an arrow the wrong way (a test that cannot fail proves nothing)."""
    assert _reaches({"filesd.storage.base"}, ("filesd.storage",)) == ["filesd.storage.base"]
    assert _reaches({"aiohttp.web"}, HTTP_SERVER) == ["aiohttp.web"]
    assert "filesd.services.files" in imports_of("filesd.api.files")
    assert "filesd.storage.faulty" in imports_of("filesd.storage.opening")
