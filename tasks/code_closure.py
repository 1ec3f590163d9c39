"""The code a stage runs, found from its source: the project's modules its module reaches by imports, and the data
files those modules read. It is what a stage's cache key hashes besides its inputs (tasks/common.py).

The source is parsed rather than the import system asked, because stages import much of their code inside functions
(heavy libraries load only when used); an import that has not run yet is still code the stage runs. Only the
project's own packages are followed: third-party code is pinned by the installed versions, not by the key.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, distribution
from importlib.util import find_spec
from pathlib import Path

from ftcore.hashing import hash_bytes

DISTRIBUTION = "ftflow"  # the distribution that ships this package (pyproject.toml's project name)


@functools.cache
def project_packages() -> dict[str, Path]:
    """Top-level package name -> its folder, for the packages of the distribution that ships this one (ftflow's
    ftcore, tasks, flows, data_recipes); in a source tree that was never installed, the packages beside this one.
    Read from the distribution's own top_level.txt: `packages_distributions()` scans every installed distribution's
    file list, about 0.3 s of each run."""
    this = Path(__file__).resolve().parent
    try:
        declared = distribution(DISTRIBUTION).read_text("top_level.txt")
    except PackageNotFoundError:
        declared = None
    names = declared.split() if declared else [p.name for p in this.parent.iterdir() if (p / "__init__.py").is_file()]
    return {name: Path(find_spec(name).origin).resolve().parent for name in names}


def module_file(name: str) -> Path | None:
    """The source file of a project module (`ftcore.models.load`), or None for any other module or attribute."""
    top, *rest = name.split(".")
    root = project_packages().get(top)
    if root is None:
        return None
    path = root.joinpath(*rest)
    return next((p for p in (path / "__init__.py", path.parent / f"{path.name}.py") if p.is_file()), None)


def project_path(path: Path) -> tuple[str, ...]:
    """A project file's place: its top-level package and its path inside (`ftcore`, `models`, `load.py`)."""
    for top, root in project_packages().items():
        if path.is_relative_to(root):
            return top, *path.relative_to(root).parts
    raise ValueError(f"{path} is not in one of the project's packages")


def module_name(path: Path) -> str:
    """The dotted name of a project module's source file (the inverse of module_file)."""
    parts = [*project_path(path.with_suffix(""))]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def with_parents(name: str) -> Iterator[str]:
    # Importing a.b.c runs a/__init__.py and a/b/__init__.py too.
    parts = name.split(".")
    yield from (".".join(parts[:i]) for i in range(1, len(parts) + 1))


def imported_names(tree: ast.AST, package: str) -> Iterator[str]:
    """Every module an import statement anywhere in the tree (functions included) may load; `from a import b`
    yields a.b as well, since b may be a submodule. Relative imports are resolved against `package`."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield from with_parents(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # one dot: `package` itself; each further dot: one package up
                anchor = package.rsplit(".", node.level - 1)[0]
                base = f"{anchor}.{base}" if base else anchor
            yield from with_parents(base)
            yield from (f"{base}.{alias.name}" for alias in node.names)


def referenced_paths(tree: ast.AST, path: Path) -> Iterator[Path]:
    """What the module reaches by name rather than by import: a project module named in a string
    (`importlib.resources.files("ftcore.data")`, `import_module(...)`), and a file or folder beside the module named
    in an expression built on `__file__` (`Path(__file__).with_name("metric_modules")`)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and "." in node.value.strip("."):
            if all(part.isidentifier() for part in node.value.split(".")) and (found := module_file(node.value)):
                yield found
        elif isinstance(node, ast.Call) and any(isinstance(n, ast.Name) and n.id == "__file__" for n in ast.walk(node)):
            yield from (path.parent / n.value for n in ast.walk(node)
                        if isinstance(n, ast.Constant) and n.value in entries(path.parent))


@functools.cache
def entries(folder: Path) -> frozenset[str]:
    return frozenset(p.name for p in folder.iterdir())


def package_data(init: Path) -> Iterator[Path]:
    """A package's data files: its non-Python files, and everything in its plain (non-package) sub-folders."""
    for entry in init.parent.iterdir():
        if entry.is_file() and entry.suffix != ".py":
            yield entry
        elif entry.is_dir() and entry.name != "__pycache__" and not (entry / "__init__.py").exists():
            yield from files_under(entry)


def files_under(path: Path) -> Iterator[Path]:
    """The file itself, or every file in the folder (bytecode caches left out)."""
    if path.is_dir():
        yield from (p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    else:
        yield path


@functools.cache
def reached_from(path: Path) -> tuple[Path, ...]:
    """The files one module reaches directly: the modules it imports or names, and the data files it may read."""
    tree = ast.parse(path.read_bytes(), filename=str(path))
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = {f for f in map(module_file, imported_names(tree, package)) if f is not None}
    found.update(f for ref in referenced_paths(tree, path) for f in files_under(ref))
    if path.name == "__init__.py":
        found.update(package_data(path))
    return tuple(sorted(found))


def code_closure(module: str) -> list[Path]:
    """Every project file the module reaches by imports (transitively), and the data files of those modules."""
    start = module_file(module)
    if start is None:
        raise ValueError(f"{module} is not a module of the project's packages")
    seen, todo = {start}, [start]
    while todo:
        for found in reached_from(todo.pop()):
            if found not in seen:
                seen.add(found)
                if found.suffix == ".py":
                    todo.append(found)
    return sorted(seen)


def code_hash(module: str) -> str:
    """Hash of the module's code closure: each file's place in the project and its bytes."""
    return hash_bytes(b"".join("/".join(project_path(f)).encode() + b"\0" + f.read_bytes() + b"\0"
                               for f in code_closure(module)))
