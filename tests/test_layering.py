"""The import graph: the package's module-level imports form a DAG; the checkpoint and model packages (and the
checkpoint commands) import the project's modules at module level only; whichever of their modules a fresh
interpreter imports first loads, with every task registered."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "itnet_scale"
#: Where no function may import a project module (the checkpoint package, the models, their commands).
MODULE_LEVEL_ONLY = [PACKAGE / "checkpoint", PACKAGE / "models", REPO / "tools" / "convert_checkpoint.py",
                     REPO / "tools" / "inspect_checkpoint.py"]


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imported_modules(node: ast.Import | ast.ImportFrom) -> list[str]:
    """The project modules an import statement loads: ``from a.b import c`` is ``a.b.c`` when that is a module,
    else ``a.b``."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
    return sorted({name for name in names if name == "itnet_scale" or name.startswith("itnet_scale.")})


def module_level_imports(tree: ast.Module) -> list[str]:
    """Project modules imported when the module runs: module level and class bodies, not function bodies nor
    ``if TYPE_CHECKING:`` blocks."""
    found: list[str] = []
    pending: list[ast.AST] = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            found += imported_modules(node)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            continue
        elif isinstance(node, ast.If) and is_type_checking(node):
            pending += node.orelse
        else:
            pending += list(ast.iter_child_nodes(node))
    return sorted(set(found))


def function_level_imports(tree: ast.Module) -> list[tuple[int, str]]:
    """``(line, module)`` of every project module imported inside a function."""
    found = []
    for function in ast.walk(tree):
        if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
            for node in ast.walk(function):
                if isinstance(node, ast.Import | ast.ImportFrom):
                    found += [(node.lineno, name) for name in imported_modules(node)]
    return sorted(set(found))


def find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """A cycle of ``graph`` as a path ``[a, b, …, a]``, or ``None`` when it is a DAG."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for target in graph.get(node, []):
            if state.get(target) == "open":
                return [*stack[stack.index(target):], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": ["b"], "b": ["c"], "c": []}) is None
    assert find_cycle({"a": ["b"], "b": ["c"], "c": ["a"]}) == ["a", "b", "c", "a"]


def test_module_level_imports_form_a_dag():
    graph = {name: module_level_imports(ast.parse(path.read_text(encoding="utf-8"))) for name, path in MODULES.items()}
    assert graph["itnet_scale.models.itnet"] and "itnet_scale.checkpoint.library" in graph["itnet_scale.models.itnet"]
    assert not [name for name in graph["itnet_scale.models.registry"] if name.startswith("itnet_scale.models.itnet")]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " → ".join(cycle)


def test_checkpoint_and_model_code_imports_project_modules_at_module_level_only():
    files = [file for place in MODULE_LEVEL_ONLY for file in ([place] if place.is_file() else place.rglob("*.py"))]
    assert len(files) >= 12
    late = {str(file.relative_to(REPO)): found for file in files
            if (found := function_level_imports(ast.parse(file.read_text(encoding="utf-8"))))}
    assert not late, f"imports inside functions: {late}"


FIRST_IMPORTS = sorted(name for name in MODULES if name.startswith(("itnet_scale.checkpoint", "itnet_scale.models")))


@pytest.mark.slow
def test_any_checkpoint_or_model_module_imports_first_in_a_fresh_interpreter():
    """Each module alone in a fresh interpreter (all at once, one process each): it loads, and every task model
    has registered itself."""
    assert "itnet_scale.checkpoint.library" in FIRST_IMPORTS and "itnet_scale.models.registry" in FIRST_IMPORTS
    check = ("import importlib, sys; importlib.import_module(sys.argv[1]); "
             "from itnet_scale.models.registry import TASKS; print(sorted(TASKS))")
    processes = {name: subprocess.Popen([sys.executable, "-c", check, name], cwd=REPO, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True) for name in FIRST_IMPORTS}
    for name, process in processes.items():
        output, _ = process.communicate(timeout=300)
        assert process.returncode == 0, f"import {name} first: {output[-3000:]}"
        assert output.strip().splitlines()[-1] == ("['backbone', 'classification', 'nlvr2', 'pretraining', "
                                                   "'regression', 'vqa']")


#: Each part's layer (DESIGN §5: ops ← nn ← models/data ← train ← launch/tools; the kernel atlas between the checkpoint
#: package and train; the fine-tuning benchmarks beside the checkpoint package): a module imports its own layer and
#: those below it, never one above — at module level or inside a function. The longest matching prefix decides.
#: The library format is the one part of the checkpoint package below the model classes (they inherit from it).
LAYERS = {
    "itnet_scale": 0, "itnet_scale.config": 0, "itnet_scale.checkpoint.atomic_writes": 0,
    "itnet_scale.ops": 1,
    "itnet_scale.nn": 2,
    "itnet_scale.models": 3, "itnet_scale.data": 3, "itnet_scale.parallel": 3, "itnet_scale.checkpoint.library": 3,
    "itnet_scale.checkpoint": 4, "itnet_scale.tasks": 4,
    "itnet_scale.atlas": 5,
    "itnet_scale.train": 6,
}


def layer_of(module: str) -> int:
    prefix = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[prefix]


def test_imports_point_down_the_layers():
    assert layer_of("itnet_scale.ops.lowrank.chunk") == 1 and layer_of("itnet_scale.checkpoint.library") == 3
    upward = []
    for name, path in MODULES.items():
        if name == "itnet_scale.checkpoint":  # the package's __init__ only fixes the load order (see its doc)
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        targets = module_level_imports(tree) + [target for _, target in function_level_imports(tree)]
        upward += [f"{name} → {target}" for target in targets if layer_of(target) > layer_of(name)]
    assert not upward, "imports against the layering: " + "; ".join(sorted(upward))


def test_no_project_module_is_imported_inside_a_library_function():
    """A late import hides a cycle or a layering break; the library has none (the launcher's lazy import of the
    training loop, which keeps config errors fast, is outside the package)."""
    late = {name: found for name, path in MODULES.items()
            if (found := function_level_imports(ast.parse(path.read_text(encoding="utf-8"))))}
    assert not late, f"imports inside functions: {late}"
