"""The package layout keeps its promises, read from the sources with `ast` (nothing imported):

* no import cycle among recsys/, streaming/ and devtools/ modules, counting imports inside
  functions too (a lazy import only hides a cycle);
* recsys/ is the library: it imports none of streaming, devtools, Kafka clients or Faust;
* only streaming/cli imports streaming.cli (jobs and tools do not reach back into the command line).
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("recsys", "streaming", "devtools")


def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the packages."""
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def imported(name: str, path: Path, known: set[str]) -> set[str]:
    """The modules `name` imports, anywhere in the file (module level or in a function), except
    under `if TYPE_CHECKING:` (never run). `from pkg import sub` names the submodule when it is one."""
    tree = ast.parse(path.read_text(), str(path))
    skip = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and _type_checking(node)
        for child in node.body
        for n in ast.walk(child)
    }
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_pkg else 0)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            for a in node.names:
                sub = f"{mod}.{a.name}"
                out.add(sub if sub in known else mod)
    return out


@functools.cache
def graph() -> dict[str, set[str]]:
    """Every module's imports of the packages' modules (parsed once per session; callers only read it)."""
    mods = modules()
    known = set(mods)
    return {m: {t for t in imported(m, p, known) if t in known and t != m} for m, p in mods.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_the_walker_sees_function_level_imports_and_cycles():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(g) == [["a", "b", "c"]]
    mods = modules()
    # streaming.cli.main imports its command modules; a command module imports the job lazily.
    g = graph()
    assert "streaming.cli.train" in g["streaming.cli.main"]
    assert "streaming.jobs.retrain" in g["streaming.cli.retrain"]  # inside cmd_retrain
    assert "recsys.config" in g["recsys.data.datasets"]  # inside data_dir
    assert set(mods) >= {"recsys.config", "streaming.cli.options", "devtools.broker"}


def test_no_import_cycle():
    found = cycles(graph())
    assert not found, "import cycles (module or function level): " + "; ".join(" <-> ".join(c) for c in found)


def test_the_library_imports_no_streaming_tooling_kafka_or_faust():
    mods = modules()
    known = set(mods)
    banned = ("streaming", "devtools", "bench", "kafka", "aiokafka", "faust", "mode")
    bad = {
        m: sorted(t for t in imported(m, p, known) if t.split(".")[0] in banned)
        for m, p in mods.items()
        if m.split(".")[0] == "recsys"
    }
    assert not {m: b for m, b in bad.items() if b}


def test_only_the_cli_imports_the_cli():
    g = graph()
    bad = {
        m: sorted(t for t in deps if t.startswith("streaming.cli"))
        for m, deps in g.items()
        if not m.startswith("streaming.cli")
    }
    assert not {m: b for m, b in bad.items() if b}


def _layout_rows(doc: Path) -> dict[str, str]:
    """`folder` -> text of the layout table's rows in a doc (the table that starts `| folder |`)."""
    import re

    rows, inside = {}, False
    for line in doc.read_text().splitlines():
        if line.startswith("| folder |"):
            inside = True
            continue
        if inside and not line.startswith("|"):
            break
        if inside and not line.startswith("|---"):
            cells = line.split("|")
            for folder in re.findall(r"`([\w/]+/)`", cells[1]):
                rows[folder] = cells[2]
    return rows


def test_the_documented_layout_is_the_tree():
    """README.md and docs/architecture.md name every package folder, and every file they name
    in a folder's row exists there."""
    import re

    folders = {
        f"{p.relative_to(ROOT)}/"
        for pkg in PACKAGES
        for p in [ROOT / pkg, *(ROOT / pkg).rglob("*")]
        if p.is_dir() and (p / "__init__.py").exists()
    }
    for doc in (ROOT / "README.md", ROOT / "docs" / "architecture.md"):
        rows = _layout_rows(doc)
        assert folders <= set(rows), f"{doc.name}: layout table lacks {sorted(folders - set(rows))}"
        for folder, text in rows.items():
            assert (ROOT / folder).is_dir(), f"{doc.name}: {folder} does not exist"
            for name in re.findall(r"`(\w+\.py)`", text):
                assert (ROOT / folder / name).is_file(), f"{doc.name}: {folder}{name} does not exist"
