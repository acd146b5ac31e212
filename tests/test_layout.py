"""The package's module graph has no import cycle, counting the imports made inside functions too
(they keep `import fl_smpc` light, but a cycle through them is still a tangle)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "fl_smpc"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, name: str):
    """The fl_smpc modules a module imports, at its top or inside its functions."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("fl_smpc"):
                yield target
                for alias in node.names:  # "from . import x" may import a submodule
                    yield f"{target}.{alias.name}"
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith("fl_smpc"))


def graph():
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: sorted({t for t in imports(path, name) if t in modules and t != name})
            for name, path in modules.items()}


def find_cycle(edges):
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in edges.get(node, ()):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(edges):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_cycle_among_the_package_modules():
    edges = graph()
    assert "fl_smpc.cli.train" in edges and "fl_smpc.data_owner.server" in edges  # the walk sees the subpackages
    assert find_cycle(edges) is None, " -> ".join(find_cycle(edges))


def test_the_cycle_check_finds_a_cycle():
    assert find_cycle({"a": ["b"], "b": ["c"], "c": ["a"]}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": ["b"], "b": []}) is None


def test_every_public_name_is_what_it_says_not_a_submodule():
    """A public name equal to a submodule's name would be shadowed by the submodule once it is imported."""
    import subprocess
    import sys

    import fl_smpc

    probe = ("import types, fl_smpc; from fl_smpc import *; import fl_smpc.runner, fl_smpc.reference; "
             "print([n for n in fl_smpc.__all__ if isinstance(getattr(fl_smpc, n), types.ModuleType)])")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    assert "run" in fl_smpc.__all__
