"""The package's shape: the sans-I/O layer imports no I/O library, the import
graph has no cycle, no module reaches into another object's private members,
and the public names of nbchat, nbchat.clients and nbchat.server are the ones
documented (a change to them is a decision, not an accident).

Type-only imports (``if TYPE_CHECKING:``) count as edges of the import graph.
They never run, so a cycle through one cannot fail at import time; but the
graph is the layering, and a module that names a type of the module that
imports it depends on it all the same. So there are two assertions: no cycle
among the imports that run (a cycle there is a bug), and none once type-only
imports are added (a cycle there is a layering to straighten out).
"""

from __future__ import annotations

import ast
import functools
import json
import subprocess
import sys
from pathlib import Path

import nbchat
import nbchat.clients
import nbchat.server

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "nbchat"
IO_LIBRARIES = ["httpx", "websockets", "starlette", "uvicorn", "IPython", "ipywidgets", "anywidget", "llama_cpp"]


def test_the_wire_layer_imports_no_io_library() -> None:
    modules = sorted(f"nbchat.wire.{p.stem}" for p in (PACKAGE / "wire").glob("*.py") if p.stem != "__init__")
    assert "nbchat.wire.openai" in modules and "nbchat.wire.decoders" in modules
    code = (f"import importlib, json, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
            f"print(json.dumps([m for m in {IO_LIBRARIES!r} if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert json.loads(out.stdout) == []


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return isinstance(test, ast.Name) and test.id == "TYPE_CHECKING"


def _imports(tree: ast.Module, *, type_only: bool) -> list[ast.Import | ast.ImportFrom]:
    """Every import that runs (at module level or inside functions), and with ``type_only``
    those in ``if TYPE_CHECKING:`` blocks too."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if not type_only and isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


@functools.cache
def parsed(path: Path) -> ast.Module:
    """A module's tree, parsed once for all the tests that read the package."""
    return ast.parse(path.read_text())


def import_graph(*, type_only: bool = False) -> dict[str, set[str]]:
    """nbchat's modules and the nbchat modules each imports (function-level imports included;
    with ``type_only``, the imports made for annotations only as well)."""
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps: set[str] = set()
        for node in _imports(parsed(path), type_only=type_only):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = package
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                module = (f"{base}.{node.module}" if node.module else base) if node.level else (node.module or "")
                targets = [module, *(f"{module}.{alias.name}" for alias in node.names)]
            deps.update(t for t in targets if t in paths and t != name)
        graph[name] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a path that returns to its start, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return [*path[path.index(dep):], dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_import_graph_has_no_cycle() -> None:
    graph = import_graph()
    assert {"nbchat.server.app", "nbchat.server.openai_routes", "nbchat.bench.report"} <= set(graph)
    assert "nbchat.server.openai_routes" in graph["nbchat.server.app"]  # the graph sees real edges
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_type_only_imports_make_no_cycle_either() -> None:
    graph = import_graph(type_only=True)
    # the graph sees an edge made only for annotations
    assert "nbchat.notebook.render" in graph["nbchat.notebook.provenance"]
    assert "nbchat.notebook.render" not in import_graph()["nbchat.notebook.provenance"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


# Standard-library names that begin with an underscore and are used as documented.
PRIVATE_BY_NAME_ONLY = {"os._exit", "argparse._SubParsersAction"}
# anywidget's documented class attributes for a widget's front end.
PUBLIC_BY_CONVENTION = {"_esm", "_css"}


def foreign_private_members(source: str | ast.Module) -> list[str]:
    """``obj._name`` where ``obj`` is not ``self``, ``cls`` or ``super()``: reaching into
    another object's private members (dunders are public protocol)."""
    found = []
    for node in ast.walk(ast.parse(source) if isinstance(source, str) else source):
        if not (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")):
            continue
        if node.attr in PUBLIC_BY_CONVENTION:
            continue
        owner = node.value
        if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
            continue
        if isinstance(owner, ast.Call) and isinstance(owner.func, ast.Name) and owner.func.id == "super":
            continue
        if ast.unparse(node) not in PRIVATE_BY_NAME_ONLY:
            found.append(f"{node.lineno}: {ast.unparse(node)}")
    return found


def test_the_private_member_finder_finds_one() -> None:
    assert foreign_private_members("self.turn._attach()\nself._ok = 1\nsuper()._x()\nos._exit(0)\n") == [
        "1: self.turn._attach"]


def test_no_module_reaches_into_another_objects_private_members() -> None:
    found = {str(path.relative_to(ROOT)): hits for path in [*PACKAGE.rglob("*.py"), *(ROOT / "tests").rglob("*.py")]
             if (hits := foreign_private_members(parsed(path)))}
    assert found == {}


def test_exported_names() -> None:
    assert sorted(nbchat.__all__) == sorted([
        "AuthError", "BackendError", "ChatWidget", "Chunk", "End", "ErrorInfo", "Event", "Message",
        "NBChatConnectionError", "NBChatError", "PayloadTooLarge", "ProtocolError", "QueueFull", "RequestError",
        "ResumeError", "ServerStartError", "Status", "StreamTimeout", "TurnError", "TurnRequest", "__version__",
    ])
    assert sorted(nbchat.clients.__all__) == sorted([
        "DEFAULT_TIMEOUT", "TRANSPORTS", "AsyncChatClient", "AsyncNDJSONClient", "AsyncOpenAIClient",
        "AsyncSSEClient", "AsyncTurnOpener", "AsyncTurnStream", "AsyncWebSocketClient", "ChatClient",
        "NDJSONClient", "OpenAIClient", "SSEClient", "Transport", "TurnStream", "WebSocketClient", "acollect",
        "aconnect", "collect", "connect",
    ])
    assert sorted(nbchat.server.__all__) == sorted([
        "ServerHandle", "Settings", "create_app", "make_server", "start_server_thread",
    ])
    for module in (nbchat, nbchat.clients, nbchat.server):
        missing = [name for name in module.__all__ if not hasattr(module, name)]
        assert not missing, f"{module.__name__}.__all__ names what it does not have: {missing}"
