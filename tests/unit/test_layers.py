"""The package's imports run one way (docs/layers.md): each module imports only modules of lower
layers, our own modules at module level (function-level imports are for heavy or optional
libraries), no module imports another's private names, and no import circle. Read from the source
with ``ast``: module-level and function-level imports alike."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "hub_reflow"

# The packages, lowest first, each with its layers, lowest first (docs/layers.md). A module may
# import modules of an earlier package, or of an earlier layer of its own package; nothing else. A
# subpackage's modules (and its __init__) sit in its own entry; the top-level modules sit in the base,
# the policy or the commands.
PACKAGES = [
    # hub_reflow.testing sits beside the core and imports none of it: the local Hub (its own order), the tiny worlds
    ("testing", [
        {"testing", "testing.hub_server.protocol", "testing.config_gym_robot"},
        {"testing.gym_robot", "testing.hub_server.storage", "testing.hub_server.auth", "testing.hub_server.routes"},
        {"testing.hub_server.routes_repos", "testing.hub_server.routes_uploads"},
        {"testing.hub_server.app"},
        {"testing.hub_server", "testing.hub_server.__main__"},
        {"testing.tiny_backbone"},
        {"testing.post_world"},
        {"testing.tiny_world"},
    ]),
    # the shared base: errors, maths and rules, files, quiet output; the device rule, the console, the run
    # config, Hub I/O, safe reads, NaN guards, the SmolVLA adapter; checkpoints, datasets, command-line
    # values and folders, the teacher's fast sampling path; fast inference, cached pairs
    ("base", [
        {"errors", "flow", "files", "logs", "rtc"},
        {"devices", "console", "config", "hub_io", "safeio", "finite", "smolvla"},
        {"checkpoint", "data", "validation", "fastpath"},
        {"inference", "pairs"},
    ]),
    # is a checkpoint canonical, and does it act like its teacher
    ("checks", [
        {"checks", "checks.keys", "checks.report", "checks.fidelity"},
        {"checks.inspection", "checks.compiled"},
        {"checks.structure"},
    ]),
    # hub-reflow eval: envs, rollouts, results, statistics, pictures, the command's options
    ("closed_loop", [
        {"closed_loop.stats", "closed_loop.plots", "closed_loop.envs", "closed_loop.rtc_driver"},
        {"closed_loop.results"},
        {"closed_loop.rollouts"},
        {"closed_loop", "closed_loop.command"},
    ]),
    # push and pull, the model card, its images and its closed-loop section
    ("hub", [
        {"hub", "hub.card_plots"},
        {"hub.card", "hub.card_closed_loop"},
        {"hub.push_pull"},
    ]),
    # ReflowPolicy (its push_to_hub is hub.push_pull.push_policy)
    ("policy", [{"policy"}]),
    # the training run behind train()
    ("training", [
        {"training", "training.optimizer", "training.frame_sampling", "training.teacher_batch"},
        {"training.run_folder"},
        {"training.plan", "training.command"},
        {"training.loop"},
    ]),
    # the commands (train, verify, canonicalize, the demo, the command line) and the public API
    ("commands", [
        {"train", "verify", "canonicalize"},
        {"demo"},
        {"cli"},
        {"__init__"},
    ]),
]
SUBPACKAGES = {"testing", "checks", "closed_loop", "hub", "training"}
LAYERS = [layer for _, layers in PACKAGES for layer in layers]
PACKAGE = {name: package for package, layers in PACKAGES for layer in layers for name in layer}
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}
# Our modules that may be imported inside a function: the local Hub needs the optional hub-server
# extra (FastAPI, uvicorn), which the core install does not have.
LAZY_ALLOWED = {("demo", "testing.hub_server"), ("testing.tiny_backbone", "testing.hub_server")}
MAX_LINES = 350


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(SOURCE.rglob("*.py")):
        rel = path.relative_to(SOURCE).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" and len(rel.parts) > 1 else rel.parts
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _resolve(module: str, node: ast.ImportFrom | ast.Import, is_package: bool) -> list[tuple[str, list[str]]]:
    """(imported hub_reflow module, names taken from it) for each of our modules the node imports."""
    if isinstance(node, ast.Import):
        return [(a.name.removeprefix("hub_reflow."), []) for a in node.names if a.name.startswith("hub_reflow.")]
    if node.level == 0:
        if not (node.module or "").startswith("hub_reflow"):
            return []
        base = (node.module or "").removeprefix("hub_reflow").lstrip(".")
    else:
        here = module.split(".") if module != "__init__" else []
        package = here if is_package else here[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join([*package, *([node.module] if node.module else [])])
    out = []
    for alias in node.names:
        sub = f"{base}.{alias.name}" if base else alias.name
        if sub in MODULES:  # `from . import flow`
            out.append((sub, []))
        else:
            out.append((base or "__init__", [alias.name]))
    return out


def _imports(module: str) -> list[tuple[str, list[str], bool, int]]:
    """(target module, names, at module level?, line) for every import of our own modules."""
    path = MODULES[module]
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    for n in tree.body:  # imports under `if TYPE_CHECKING:` / try at module level count as module level
        if isinstance(n, (ast.If, ast.Try)):
            top |= {id(m) for m in ast.walk(n)}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for target, names in _resolve(module, node, path.name == "__init__.py"):
                out.append((target, names, id(node) in top, node.lineno))
    return out


GRAPH = {m: _imports(m) for m in MODULES}


def test_every_module_has_a_layer():
    assert sorted(set(MODULES) - set(LAYER)) == [], "place new modules in PACKAGES (and docs/layers.md)"
    assert sorted(set(LAYER) - set(MODULES)) == []
    assert len(LAYER) == sum(len(layer) for layer in LAYERS)  # each module in one layer


def test_every_module_sits_in_its_own_package():
    """A subpackage's modules in its entry of PACKAGES; top-level modules in the base, the policy or the commands."""
    def placed_right(m: str) -> bool:
        top = m.split(".")[0]
        return PACKAGE[m] == top if top in SUBPACKAGES else PACKAGE[m] in ("base", "policy", "commands")

    assert [f"{m} is placed in {PACKAGE[m]}" for m in MODULES if not placed_right(m)] == []


def test_imports_go_to_lower_layers_only():
    wrong = [f"{m}:{line} imports {t} (layer {LAYER[t]} >= {LAYER[m]})"
             for m, imports in GRAPH.items() for t, _, _, line in imports if t != m and LAYER[t] >= LAYER[m]]
    assert wrong == []


def test_own_modules_are_imported_at_module_level():
    lazy = [f"{m}:{line} imports {t} inside a function" for m, imports in GRAPH.items()
            for t, _, top, line in imports if not top and (m, t) not in LAZY_ALLOWED]
    assert lazy == []


def test_no_module_imports_another_modules_private_names():
    private = [f"{m}:{line} takes {n} from {t}" for m, imports in GRAPH.items() for t, names, _, line in imports
               for n in names if n.startswith("_") and not n.startswith("__") and t != m]
    assert private == []


def test_no_import_circle():
    edges = {m: {t for t, _, _, _ in imports if t != m} for m, imports in GRAPH.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m: str, path: list[str]) -> list[str] | None:
        state[m] = 1
        for t in sorted(edges[m]):
            if state.get(t) == 1:
                return [*path[path.index(t):], t] if t in path else [*path, t]
            if t not in state and (cycle := visit(t, [*path, t])):
                return cycle
        state[m] = 2
        return None

    for m in sorted(edges):
        if m not in state and (cycle := visit(m, [m])):
            pytest.fail("import circle: " + " -> ".join(cycle))


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_is_over_the_size_limit(module):
    assert len(MODULES[module].read_text().splitlines()) <= MAX_LINES


def test_the_checker_sees_a_new_circle(tmp_path, monkeypatch):
    """The rules above would fail on a new upward import: checkpoint importing train."""
    fake = {**GRAPH, "checkpoint": [*GRAPH["checkpoint"], ("train", ["train"], True, 1)]}
    up = [m for m, imports in fake.items() for t, *_ in imports if t != m and LAYER[t] >= LAYER[m]]
    assert up == ["checkpoint"]
    edges = {m: {t for t, *_ in imports if t != m} for m, imports in fake.items()}
    seen, stack = set(), ["train"]
    while stack:  # train reaches checkpoint, which now reaches train: a circle
        m = stack.pop()
        seen.add(m)
        stack += [t for t in edges[m] if t not in seen]
    assert "checkpoint" in seen and "train" in edges["checkpoint"]


def test_public_api_resolves():
    import hub_reflow

    assert len(hub_reflow.__all__) == len(set(hub_reflow.__all__)) > 10
    for name in hub_reflow.__all__:
        assert getattr(hub_reflow, name) is not None, name
    # A package attribute named like a submodule is that submodule (monkeypatching hub_reflow.train.train works).
    import hub_reflow.canonicalize
    import hub_reflow.train
    import hub_reflow.verify

    assert [type(m).__name__ for m in (hub_reflow.train, hub_reflow.verify, hub_reflow.canonicalize)] == ["module"] * 3
