"""The import rules of docs/architecture.md, read from the code: no import crosses a forbidden arrow,
no import cycle, no file over 400 lines; and the checker itself finds a planted
forbidden import."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("headq_spec", "headq_jobs", "headq_core", "workers", "app", "headq_cli")
HEAVY = ("torch", "transformers", "triton", "safetensors")
WEB_DB = ("fastapi", "dash", "sqlalchemy", "alembic", "celery", "uvicorn", "starlette")
# (importer prefix, forbidden prefixes): the arrows of docs/architecture.md, most specific first
RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("app.client", (*HEAVY, *WEB_DB, "headq_core", "headq_jobs", "workers", "headq_cli", "app.")),
    ("app", (*HEAVY, "headq_core", "workers", "headq_cli")),
    ("workers", ("app", "headq_cli")),
    ("headq_jobs", (*HEAVY, "headq_core", "workers", "app", "headq_cli")),
    ("headq_spec", (*HEAVY, *WEB_DB, "headq_core", "headq_jobs", "workers", "app", "headq_cli")),
    ("headq_core.method", ("headq_core.evaluation", "headq_core.runtime", "headq_core.models")),
    ("headq_core.models", ("headq_core.evaluation", "headq_core.runtime")),
    ("headq_core.runtime", ("headq_core.evaluation",)),
    ("headq_core", (*WEB_DB, "headq_jobs", "workers", "app", "headq_cli")),
)
MAX_LINES = 400


def _module_name(root: Path, path: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(tree: ast.AST, module: str) -> list[tuple[int, str]]:
    """(line, imported module) of every import in ``tree``, inside functions too."""
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.extend((child.lineno, alias.name) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module:
                base = child.module
                if child.level:  # relative import
                    base = ".".join(module.split(".")[: -child.level] + [child.module])
                found.append((child.lineno, base))
                found.extend((child.lineno, f"{base}.{alias.name}") for alias in child.names)
            visit(child)

    visit(tree)
    return found


def _sources(root: Path) -> dict[str, tuple[Path, ast.AST]]:
    out = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")) if (root / package).is_dir() else []:
            out[_module_name(root, path)] = (path, ast.parse(path.read_text(), str(path)))
    return out


def _matches(name: str, prefix: str) -> bool:
    return name == prefix.rstrip(".") or name.startswith(prefix if prefix.endswith(".") else prefix + ".")


def violations(root: Path) -> list[str]:
    """Every import under ``root`` that crosses a forbidden arrow, as ``file:line: a -> b``."""
    problems = []
    for module, (path, tree) in _sources(root).items():
        rule = next((forbidden for prefix, forbidden in RULES if _matches(module, prefix)), ())
        for line, name in _imports(tree, module):
            if any(_matches(name, bad) for bad in rule):
                problems.append(f"{path.relative_to(root)}:{line}: {module} -> {name}")
    return sorted(set(problems))


def cycles(root: Path) -> list[list[str]]:
    """Import cycles among the project's modules (strongly connected components), counting imports
    inside functions too: a lazy import that only hides a cycle (as ``models.adapter`` and
    ``models.probe`` once did) is still one."""
    sources = _sources(root)
    graph = {m: sorted({n for _, n in _imports(t, m) if n in sources and n != m})
             for m, (_, t) in sources.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def connect(node: str) -> None:  # Tarjan
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            connect(node)
    return found


def test_no_import_crosses_a_forbidden_arrow():
    assert violations(ROOT) == []


def test_no_import_cycle():
    assert cycles(ROOT) == []


def test_no_file_over_400_lines():
    tracked = [p for d in (*PACKAGES, "tests", "testkit", "benchmarks", "studies", "scripts")
               for p in (ROOT / d).rglob("*.py")]
    assert [str(p) for p in tracked if len(p.read_text().splitlines()) > MAX_LINES] == []


def test_the_checker_finds_planted_violations(tmp_path):
    """A planted forbidden import and a planted cycle are found (the rules are not vacuous)."""
    for package, body in {
        "app": "import torch\nfrom headq_core.method import quant\n",
        "headq_core/method": "from headq_core.evaluation import evaluate\n",
        "headq_jobs": "from app.main import create_app\n",
        "headq_spec": "def f():\n    import sqlalchemy\n",
    }.items():
        (tmp_path / package).mkdir(parents=True)
        (tmp_path / package / "__init__.py").write_text("")
        (tmp_path / package / "planted.py").write_text(body)
    (tmp_path / "workers").mkdir()
    (tmp_path / "workers" / "a.py").write_text("import workers.b\n")
    (tmp_path / "workers" / "b.py").write_text("from workers import a\n")
    found = violations(tmp_path)
    assert sorted(v.split(": ", 1)[1] for v in found) == [
        "app.planted -> headq_core.method",
        "app.planted -> headq_core.method.quant",
        "app.planted -> torch",
        "headq_core.method.planted -> headq_core.evaluation",
        "headq_core.method.planted -> headq_core.evaluation.evaluate",
        "headq_jobs.planted -> app.main",
        "headq_jobs.planted -> app.main.create_app",
        "headq_spec.planted -> sqlalchemy",
    ]
    assert cycles(tmp_path) == [["workers.a", "workers.b"]]
