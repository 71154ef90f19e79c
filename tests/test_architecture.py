"""The package layout rules: components never import stages, a stage never imports another, no
import cycles (lazy ones included), modules of a readable size, MLflow in its places, and
`lora-study --help` without MLflow."""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lora_study"
STAGES = PACKAGE / "stages"
CLI = PACKAGE / "cli.py"
# Where MLflow is called: the run context (`tracking`), a study's parent run, the registry, the
# adapter as an MLflow model and the served one, and the study's parent run's contents (read
# back for the report, and written by the sweep); besides them, only stages.
MLFLOW_CALLERS = {
    PACKAGE / "tracking.py",
    PACKAGE / "tracking_outages.py",
    PACKAGE / "parent_runs.py",
    PACKAGE / "adapters.py",
    PACKAGE / "logged_models.py",
    PACKAGE / "registry",
    PACKAGE / "serving",
    PACKAGE / "report" / "read.py",
    PACKAGE / "report" / "publish.py",
    PACKAGE / "sweep" / "summary.py",
}
# The one module that may run long: the training loop, which reads in order.
LONGEST_LINES = 400
LONG_ALLOWED = {PACKAGE / "training.py"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


SOURCES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def import_nodes(tree: ast.Module):
    """Every import statement, at the top or inside functions (a lazy import is a dependency too)."""
    yield from (node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom)))


def imported_modules(name: str) -> set[str]:
    """The lora_study modules `name` imports, at the top or inside functions."""
    path = SOURCES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in import_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x, from ..stages import y
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            candidates = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in SOURCES else base for alias in node.names]
        else:
            continue
        for candidate in candidates:
            while candidate and candidate not in SOURCES:  # `import lora_study.x.y` names a module or a package
                candidate = candidate.rpartition(".")[0]
            if candidate:
                found.add(candidate)
    return found - {name}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the modules along it (the first repeated at the end), or None."""
    done, path = set(), []

    def visit(module):
        if module in path:
            return path[path.index(module) :] + [module]
        if module in done:
            return None
        path.append(module)
        for target in sorted(graph[module]):
            cycle = visit(target)
            if cycle:
                return cycle
        path.pop()
        done.add(module)
        return None

    for module in sorted(graph):
        cycle = visit(module)
        if cycle:
            return cycle
    return None


def test_the_places_these_rules_name_exist():
    assert all(path.exists() for path in MLFLOW_CALLERS | LONG_ALLOWED | {CLI, STAGES})


def test_no_component_imports_a_stage():
    offenders = {
        name: sorted(target for target in imported_modules(name) if target.startswith("lora_study.stages"))
        for name, path in SOURCES.items()
        if STAGES not in path.parents and path != CLI
    }
    assert {name: targets for name, targets in offenders.items() if targets} == {}


def test_no_stage_imports_another_stage():
    offenders = {
        name: sorted(target for target in imported_modules(name) if target.startswith("lora_study.stages."))
        for name, path in SOURCES.items()
        if STAGES in path.parents
    }
    assert {name: targets for name, targets in offenders.items() if targets} == {}


def test_no_module_resolves_names_lazily():
    """A module-level `__getattr__` (PEP 562) hides an import from the graph: none."""
    lazy = [
        name
        for name, path in SOURCES.items()
        for node in ast.parse(path.read_text()).body
        if isinstance(node, ast.FunctionDef) and node.name == "__getattr__"
    ]
    assert lazy == []


def test_modules_stay_readable_in_size():
    long = {
        str(path.relative_to(PACKAGE.parent)): lines
        for path in SOURCES.values()
        if path not in LONG_ALLOWED and (lines := len(path.read_text().splitlines())) > LONGEST_LINES
    }
    assert long == {}


def with_packages(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The graph with what Python runs besides: importing `a.b.c` runs the `__init__` of `a.b` first
    (unless the importer is inside `a.b`, whose `__init__` has run already)."""
    full = {}
    for name, targets in graph.items():
        full[name] = set(targets)
        for target in targets:
            parts = target.split(".")
            for k in range(2, len(parts)):  # lora_study.x, lora_study.x.y: not the root package
                ancestor = ".".join(parts[:k])
                if ancestor in graph and name != ancestor and not name.startswith(ancestor + "."):
                    full[name].add(ancestor)
    return full


def test_a_package_import_reaches_every_submodule_without_a_cycle():
    """An `__init__` that imports a module which imports a submodule of that package is a cycle
    the plain import graph does not show, and that breaks when another module is imported first."""
    graph = with_packages({name: imported_modules(name) for name in SOURCES})
    assert "lora_study.data" in graph["lora_study.sweep.search_space"]  # via lora_study.data.text_files
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle through a package: " + " -> ".join(cycle)


def test_a_package_cycle_is_seen():
    """The check above sees a module that imports into a package whose `__init__` imports it back."""
    graph = {
        "lora_study.tracking": {"lora_study.registry.servability"},
        "lora_study.registry": {"lora_study.registry.versions"},
        "lora_study.registry.versions": {"lora_study.tracking"},
        "lora_study.registry.servability": set(),
    }
    assert find_cycle({name: targets for name, targets in graph.items()}) is None  # the plain graph hides it
    assert find_cycle(with_packages(graph)) is not None


def test_help_and_an_argument_error_answer_without_mlflow():
    """`lora-study --help` and a bad flag import neither MLflow nor torch (a names module of
    plain strings, and the experiment chosen only once the arguments are good)."""
    probe = (
        "import sys\n"
        "from lora_study import cli\n"
        "for argv in (['--help'], ['train', '--help'], ['train', '--rank', 'many']):\n"
        "    try:\n"
        "        cli.main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(sorted(m for m in ('mlflow', 'torch', 'transformers') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stderr[-2000:]


def test_the_import_graph_of_lora_study_has_no_cycle():
    graph = {name: imported_modules(name) for name in SOURCES}
    assert graph["lora_study.stages.train"] >= {"lora_study.config", "lora_study.training"}  # the graph sees imports
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def mlflow_imports(path: Path) -> list[str]:
    """The module's imports of MLflow, at the top or inside functions, as `file:line`."""
    found = []
    for node in import_nodes(ast.parse(path.read_text(), str(path))):
        names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module or ""]
        if any(name == "mlflow" or name.startswith("mlflow.") for name in names):
            found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    return found


def test_only_stages_and_the_mlflow_modules_call_mlflow():
    offenders = [
        where
        for path in SOURCES.values()
        if STAGES not in path.parents and not ({path, *path.parents} & MLFLOW_CALLERS)
        for where in mlflow_imports(path)
    ]
    assert mlflow_imports(PACKAGE / "tracking.py")  # the check sees imports
    assert offenders == []


def test_every_stage_is_the_command_of_its_name():
    from lora_study.cli import COMMANDS

    stages = sorted(path.stem for path in STAGES.glob("*.py") if path.stem != "__init__")
    for stage in stages:
        tree = ast.parse((STAGES / f"{stage}.py").read_text())
        functions = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
        assert f"run_{stage}" in functions, f"lora_study/stages/{stage}.py defines no run_{stage}"
        assert getattr(COMMANDS.get(stage), "stage", None) == stage, f"command {stage}"
    assert sorted(COMMANDS) == stages


def test_no_utils_or_helpers_modules():
    assert [path for path in PACKAGE.rglob("*.py") if path.name in ("utils.py", "helpers.py")] == []
