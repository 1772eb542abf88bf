"""The public API: every name in pfgdf_plugin.__all__ imports, is documented, and the package has no cycles."""

import ast
import importlib
import inspect
from pathlib import Path

import pfgdf_plugin

PACKAGE = Path(pfgdf_plugin.__file__).parent


def test_every_public_name_imports_and_has_a_docstring():
    expected = {"CHIPImportance", "FinetuneConfig", "PFGDFImportance", "PruneResult", "__version__",
                "benchmark_latency", "create_model", "evaluate", "export_onnx", "export_ort", "find_classifier",
                "finetune", "load_pruned", "prune", "quantize_int8", "recalibrate_bn", "save_pruned"}
    assert set(pfgdf_plugin.__all__) == expected
    for name in pfgdf_plugin.__all__:
        value = getattr(pfgdf_plugin, name)
        if name != "__version__":
            assert inspect.getdoc(value), f"{name} has no docstring"


def _runtime_nodes(tree: ast.AST):
    """Every node except those under ``if TYPE_CHECKING:`` (imports for type hints only never run)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            continue
        yield node
        yield from _runtime_nodes(node)


def _imports(path: Path) -> set[str]:
    found = set()
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pfgdf_plugin"):
            found.add(node.module)
            for alias in node.names:  # "from pfgdf_plugin.x import y" may import the module x.y
                if importlib.util.find_spec(f"{node.module}.{alias.name}") if _is_package(node.module) else False:
                    found.add(f"{node.module}.{alias.name}")
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("pfgdf_plugin")}
    return found


def _is_package(module: str) -> bool:
    spec = importlib.util.find_spec(module)
    return spec is not None and spec.submodule_search_locations is not None


def _module_name(path: Path) -> str:
    parts = ["pfgdf_plugin", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_module_imports_a_private_name_of_another_package():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pfgdf_plugin"):
                owner = node.module.split(".")[1] if "." in node.module else ""
                mine = _module_name(path).split(".")[1] if _module_name(path).count(".") else ""
                for alias in node.names:
                    private = alias.name.startswith("_") and not alias.name.startswith("__")
                    if private and owner != mine and not node.module.startswith(("pfgdf_plugin._util",
                                                                                 "pfgdf_plugin._compat")):
                        offenders.append(f"{path.relative_to(PACKAGE)}: {node.module}.{alias.name}")
    assert not offenders, offenders


def test_the_package_has_no_import_cycles():
    graph = {_module_name(p): _imports(p) for p in PACKAGE.rglob("*.py")}
    graph = {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}
    # A package __init__ re-exporting its own modules is not a cycle with them.
    for module, deps in graph.items():
        graph[module] = {d for d in deps if not (module.startswith(d + ".") and _is_package(d))}
    state: dict[str, int] = {}
    cycles = []

    def visit(node, stack):
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append([*stack[stack.index(dep):], dep])
            elif dep not in state:
                visit(dep, [*stack, dep])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, cycles
