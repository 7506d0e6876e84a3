"""The modules of nngk_jax.data import each other one way.

Each module's imports are read with ``ast`` (nothing is executed): the graph
of ``nngk_jax.data.*`` modules must have no cycle, no module may import a
sibling inside a function (the usual way to hide a cycle), and no module may
import the package itself (its ``__init__`` imports them all).
"""

from __future__ import annotations

import ast
import pathlib
import textwrap

import pytest

import nngk_jax.data

PACKAGE = "nngk_jax.data"
PACKAGE_DIR = pathlib.Path(nngk_jax.data.__file__).parent
INIT = "__init__"


def _targets(node: ast.AST, package: str, modules: set[str]) -> list[str]:
  """The modules of ``package`` that an import statement imports.

  Args:
    node: an ``ast.Import`` or ``ast.ImportFrom``.
    package: the package's dotted name, e.g. ``"nngk_jax.data"``.
    modules: its module names (``"splits"``, ...), without ``__init__``.

  Returns:
    Module names, ``"__init__"`` for the package itself (or a name taken
    from it); empty for imports from elsewhere.
  """
  parent, _, leaf = package.rpartition(".")

  def resolve(dotted: str) -> str | None:
    if dotted == package:
      return INIT
    if dotted.startswith(package + "."):
      first = dotted[len(package) + 1:].split(".")[0]
      return first if first in modules else INIT
    return None

  found = []
  if isinstance(node, ast.Import):
    for alias in node.names:
      target = resolve(alias.name)
      if target is not None:
        found.append(target)
    return found
  if node.level:  # Relative: level 1 is the package itself.
    base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
    source = f"{base}.{node.module}" if node.module else base
  else:
    source = node.module or ""
  if source == parent:  # from nngk_jax import data
    if any(alias.name == leaf for alias in node.names):
      found.append(INIT)
    return found
  target = resolve(source)
  if target == INIT and source == package:
    # from nngk_jax.data import splits (a module) or DataError (a name of
    # the package's __init__).
    for alias in node.names:
      found.append(alias.name if alias.name in modules else INIT)
  elif target is not None:
    found.append(target)
  return found


def import_graph(package_dir: pathlib.Path, package: str
                 ) -> tuple[dict[str, set[str]], list[str]]:
  """The import graph of a package's modules, and its imports in functions.

  Returns:
    ``(graph, in_functions)``: ``graph[m]`` is the set of the package's
    modules that module ``m`` imports, anywhere in it; ``in_functions``
    describes each import of a package module inside a function, as
    ``"module.py:line imports target"``.
  """
  files = {p.stem: p for p in sorted(package_dir.glob("*.py"))}
  modules = set(files) - {INIT}
  graph: dict[str, set[str]] = {name: set() for name in files}
  in_functions = []

  def visit(node: ast.AST, name: str, in_function: bool) -> None:
    if isinstance(node, (ast.Import, ast.ImportFrom)):
      for target in _targets(node, package, modules):
        if target != name:
          graph[name].add(target)
        if in_function:
          in_functions.append(f"{files[name].name}:{node.lineno} imports "
                              f"{target}")
    inside = in_function or isinstance(
        node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
    for child in ast.iter_child_nodes(node):
      visit(child, name, inside)

  for name, path in files.items():
    visit(ast.parse(path.read_text(), str(path)), name, False)
  return graph, in_functions


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """A cycle ``[a, b, ..., a]`` of ``graph``, or None when it is acyclic."""
  state: dict[str, str] = {}  # "open" while on the path, then "done"
  path: list[str] = []

  def visit(node: str) -> list[str] | None:
    state[node] = "open"
    path.append(node)
    for nxt in sorted(graph.get(node, ())):
      if state.get(nxt) == "open":
        return path[path.index(nxt):] + [nxt]
      if nxt not in state:
        cycle = visit(nxt)
        if cycle:
          return cycle
    path.pop()
    state[node] = "done"
    return None

  for node in sorted(graph):
    if node not in state:
      cycle = visit(node)
      if cycle:
        return cycle
  return None


# ----------------------------------------------------------------------------
# nngk_jax.data.


def test_data_modules_import_one_way():
  graph, _ = import_graph(PACKAGE_DIR, PACKAGE)
  assert {"splits", "samplers", "pipeline", "registry"} <= set(graph)
  assert find_cycle(graph) is None, find_cycle(graph)
  # The bottom of the package imports none of it.
  assert graph["splits"] == set()
  assert graph["benchmarks"] == set()


def test_no_data_module_imports_a_sibling_inside_a_function():
  _, in_functions = import_graph(PACKAGE_DIR, PACKAGE)
  assert in_functions == []


def test_no_data_module_imports_the_package_itself():
  graph, _ = import_graph(PACKAGE_DIR, PACKAGE)
  importers = sorted(m for m, targets in graph.items()
                     if m != INIT and INIT in targets)
  assert importers == []


@pytest.mark.parametrize("old", ["data", "glyphs", "pipeline", "prepare",
                                 "tfds_data"])
def test_old_top_level_modules_are_gone(old):
  assert not (PACKAGE_DIR.parent / f"{old}.py").exists()


# ----------------------------------------------------------------------------
# The checks themselves, on a package laid out as nngk_jax's data modules
# were before nngk_jax/data/ (their import statements, shortened).

_OLD_LAYOUT = {
    "__init__": "",
    "data": """
        def _glyphs(**options):
          from pkg import glyphs
          return glyphs.load_glyphs(**options)
        """,
    "glyphs": "from pkg import data\n",
    "pipeline": """
        def decode_image(record):
          from pkg.data import DataError
        """,
    "tfds_data": """
        from pkg.data import DatasetNotAvailableError

        def load_benchmark(name):
          from pkg import prepare
        """,
    "prepare": "from pkg import tfds_data\n",
}


def _write_package(root: pathlib.Path, sources: dict[str, str]
                   ) -> pathlib.Path:
  package_dir = root / "pkg"
  package_dir.mkdir()
  for name, source in sources.items():
    (package_dir / f"{name}.py").write_text(textwrap.dedent(source))
  return package_dir


def test_checks_fail_on_the_old_layout(tmp_path):
  graph, in_functions = import_graph(_write_package(tmp_path, _OLD_LAYOUT),
                                     "pkg")
  assert graph["data"] == {"glyphs"} and graph["glyphs"] == {"data"}
  assert graph["tfds_data"] == {"data", "prepare"}
  cycle = find_cycle(graph)
  assert cycle is not None and cycle[0] == cycle[-1]
  assert sorted(in_functions) == [
      "data.py:3 imports glyphs", "pipeline.py:3 imports data",
      "tfds_data.py:5 imports prepare"]


def test_import_forms_are_resolved(tmp_path):
  package_dir = _write_package(tmp_path, {
      "__init__": "from pkg.low import thing\nfrom . import mid\n",
      "low": "import numpy as np\nimport pkg\n",
      "mid": "from .low import thing\nimport pkg.low as low\n",
      "top": ("from pkg import low, mid, thing\nfrom pkg.mid import *\n"
              "from . import low as again\n"),
  })
  graph, in_functions = import_graph(package_dir, "pkg")
  assert graph == {"__init__": {"low", "mid"}, "low": {"__init__"},
                   "mid": {"low"}, "top": {"low", "mid", "__init__"}}
  assert in_functions == []
  assert find_cycle(graph) == ["__init__", "low", "__init__"]
  assert find_cycle({"a": {"b"}, "b": set()}) is None
