"""One-way layers (bertjax/__init__.py): a module imports only from lower layers, never in a circle
inside its own, and bertjax modules are imported at the top of a file, never inside a function."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "bertjax"
LAYERS = [
    {"errors", "leaving", "domains", "config_schema", "config_yaml", "config", "config_changes",
     "config_help", "files", "output_dirs"},
    {"ops", "attention", "layers", "model", "precision"},
    {"loss", "masking", "optim", "step", "tokenizer", "source_files", "sources", "hub_models",
     "prepared", "token_files", "prepare", "data", "glue_tasks", "glue", "glue_metrics",
     "glue_batches", "sharding", "processes", "checkpoint", "orbax_quiet", "metrics", "step_trace",
     "weights", "bundle", "runlock", "sweep_state", "divergence", "xla_options"},
    {"hf_config", "hf_tokenizer", "hf_checks", "hf", "pretrained", "starting_points", "export",
     "predict", "plot", "glue_eval", "glue_submission", "glue_score", "pretrain_run"},
    {"pretrain_loop", "pretrain", "seed_run", "finetune", "glue_sweep"},
    {"train"},
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def bertjax_imports(source: str) -> list[tuple[str, bool]]:
    """(imported bertjax module, whether the import sits inside a function) for one file."""
    found = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.ImportFrom) and child.module and \
                    child.module.split(".")[0] == "bertjax":
                parts = child.module.split(".")
                names = [parts[1]] if len(parts) > 1 else [a.name for a in child.names]
                found.extend((n, inner) for n in names if n in LAYER or len(parts) > 1)
            elif isinstance(child, ast.Import):
                found.extend((a.name.split(".")[1], inner) for a in child.names
                             if a.name.startswith("bertjax."))
            visit(child, inner)

    visit(ast.parse(source), False)
    return found


def import_graph(package: Path) -> dict[str, list[tuple[str, bool]]]:
    return {p.stem: bertjax_imports(p.read_text()) for p in sorted(package.glob("*.py"))
            if p.stem != "__init__"}


def layer_violations(graph: dict[str, list[tuple[str, bool]]]) -> list[str]:
    problems = [f"{m} is in no layer; add it to LAYERS" for m in graph if m not in LAYER]
    for module, imports in graph.items():
        for target, in_function in imports:
            if target not in LAYER:
                problems.append(f"{module} imports {target}, which is in no layer")
            elif LAYER[target] > LAYER.get(module, -1):
                problems.append(f"{module} (L{LAYER.get(module)}) imports {target} "
                                f"(L{LAYER[target]}) from a higher layer")
            elif in_function:
                problems.append(f"{module} imports {target} inside a function")
    return problems + [f"cycle: {' -> '.join(c)}" for c in cycles(graph)]


def cycles(graph: dict[str, list[tuple[str, bool]]]) -> list[list[str]]:
    """One cycle through each module that can reach itself (depth-first search)."""
    edges = {m: {t for t, _ in imports if t != m} for m, imports in graph.items()}
    found = []

    def reach(path):
        for nxt in sorted(edges.get(path[-1], ())):
            if nxt == path[0]:
                return path + [nxt]
            if nxt not in path and (cycle := reach(path + [nxt])):
                return cycle
        return None

    for module in graph:
        if (cycle := reach([module])) and not any(set(cycle) == set(c) for c in found):
            found.append(cycle)
    return found


def test_the_package_keeps_its_layers():
    assert layer_violations(import_graph(PACKAGE)) == []


@pytest.mark.parametrize("module, extra, expected", [
    ("model", "from bertjax.pretrain import pretrain\n", "from a higher layer"),
    ("config", "def f():\n    from bertjax import errors\n", "inside a function"),
    ("glue_tasks", "from bertjax.glue_batches import encode\n", "cycle: "),
])
def test_an_upward_import_a_local_import_or_a_cycle_fails(tmp_path, module, extra, expected):
    for path in PACKAGE.glob("*.py"):
        text = path.read_text() + (extra if path.stem == module else "")
        (tmp_path / path.name).write_text(text)
    problems = layer_violations(import_graph(tmp_path))
    assert any(expected in p for p in problems), problems
