"""The sans-IO boundary (style rule 1), checked over whole import closures, statically.

:func:`violations` parses a core module and every meshnet module it loads, transitively:
``import meshnet.a.b`` (and the packages ``meshnet`` and ``meshnet.a``, whose
``__init__`` runs first), ``from meshnet.a import b`` (``meshnet.a.b`` too when ``b`` is a
submodule), relative imports, and imports inside functions (they run when called).
Imports under ``if TYPE_CHECKING:`` are left out: they never run. Every import of a
forbidden module anywhere in the closure is reported with the chain that reached it.
Dynamic imports (``importlib.import_module``) are not seen; meshnet's cores have none.
"""

from __future__ import annotations

import ast
from collections import deque
from collections.abc import Iterator, Mapping
from pathlib import Path

import meshnet

#: I/O, clocks, threads, processes, the kernel: never in a core. ``random`` is checked
#: apart: only ``random.Random`` (an injected, seedable generator) may be used.
FORBIDDEN = frozenset({
    "asyncio", "socket", "time", "selectors", "threading", "subprocess", "pyroute2", "os",
    "ctypes", "fcntl", "signal", "shutil", "tempfile", "multiprocessing", "concurrent",
    "ssl", "http", "urllib", "aiohttp", "secrets",
})


def _path(root: Path, module: str) -> Path | None:
    base = root.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _type_checking_only(tree: ast.AST) -> set[int]:
    return {id(n) for node in ast.walk(tree)
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for stmt in node.body for n in ast.walk(stmt)}


def _global_random_uses(tree: ast.AST, alias: str) -> list[int]:
    """Lines using module ``random`` (bound to ``alias``) for anything but ``.Random``."""
    ok = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Attribute)
          and isinstance(n.value, ast.Name) and n.value.id == alias and n.attr == "Random"}
    return [n.lineno for n in ast.walk(tree)
            if isinstance(n, ast.Name) and n.id == alias and id(n) not in ok]


def _imports(root: Path, module: str) -> Iterator[tuple[int, str, list[str], list[str]]]:
    """(line, imported module, names taken from it, meshnet modules it loads)."""
    path = _path(root, module)
    assert path is not None, module
    tree = ast.parse(path.read_text(), str(path))
    skip = _type_checking_only(tree)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    top = module.split(".")[0]

    def loads(name: str, names: list[str]) -> list[str]:
        if name.split(".")[0] != top:
            return []
        parts = name.split(".")
        mods = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
        mods += [f"{name}.{n}" for n in names]
        return [m for m in mods if _path(root, m) is not None]

    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == "random" and not _global_random_uses(tree, a.asname or "random"):
                    continue  # only random.Random is used
                yield node.lineno, a.name, [], loads(a.name, [])
        elif isinstance(node, ast.ImportFrom):
            name = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                name = ".".join(parts + ([node.module] if node.module else []))
            names = [a.name for a in node.names]
            yield node.lineno, name, names, loads(name, names)


def _parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def closure(module: str, root: Path | None = None) -> dict[str, list[str]]:
    """Every module ``module`` loads -> the chain of imports from ``module`` to it."""
    root = root if root is not None else Path(meshnet.__file__).parent.parent
    chains = {module: [module]}
    todo = deque([module])  # breadth first: each chain is a shortest one
    for parent in _parents(module):  # importing a.b.c runs a and a.b first
        chains[parent] = [module, parent]
        todo.append(parent)
    while todo:
        mod = todo.popleft()
        for _line, _name, _names, loaded in _imports(root, mod):
            for dep in loaded:
                if dep not in chains:
                    chains[dep] = [*chains[mod], dep]
                    todo.append(dep)
    return chains


def violations(module: str, allow: Mapping[tuple[str, str], str] | None = None,
               forbid: frozenset[str] = frozenset(), root: Path | None = None) -> list[str]:
    """Forbidden imports in ``module``'s closure, one line each ("" = clean).

    ``allow`` maps (module, forbidden top-level name) to the reason that importer may have
    it; ``forbid`` adds names for this check."""
    root = root if root is not None else Path(meshnet.__file__).parent.parent
    allow = allow or {}
    banned = FORBIDDEN | forbid
    out = []
    for mod, chain in sorted(closure(module, root).items()):
        for line, name, names, _ in _imports(root, mod):
            top = name.split(".")[0]
            if top == "random":
                bad = not names or set(names) - {"Random"}
            else:
                bad = top in banned
            if bad and (mod, top) not in allow:
                what = f"from {name} import {', '.join(names)}" if names else f"import {name}"
                out.append(f"{mod}:{line}: {what}  (via {' -> '.join(chain)})")
    return out
