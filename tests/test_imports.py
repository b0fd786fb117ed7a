"""The import-direction rule stated in vlastack/__init__.py, checked on the source."""
import ast
import pathlib

import vlastack

SRC = pathlib.Path(vlastack.__file__).parent
FORBIDDEN = {
    "types": {"datasets", "policies", "envs", "rollout", "real_robot", "train", "cli"},
    "fsutil": {"types", "datasets", "policies", "envs", "rollout", "real_robot", "train", "cli"},
    "datasets": {"policies", "envs", "rollout", "real_robot", "train", "cli"},
    "policies": {"envs", "rollout", "real_robot", "train", "cli"},
    "envs": {"policies", "rollout", "real_robot", "train", "cli"},
    "real_robot": {"policies", "envs", "rollout", "train", "cli"},
    "rollout": {"train", "cli"},
}


def _imports(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:  # relative: resolve against the file's package
                pkg = path.relative_to(SRC).parts[:-1]
                base = list(pkg[: len(pkg) - node.level + 1])
                mod = ".".join(base + ([mod] if mod else []))
                out.add(mod.split(".")[0] if mod else "")
                for alias in node.names:
                    if not node.module:
                        out.add(alias.name)
            elif mod.startswith("vlastack."):
                out.add(mod.split(".")[1])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("vlastack."):
                    out.add(alias.name.split(".")[1])
    return out


def test_import_direction():
    bad = []
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC)
        top = rel.parts[0].removesuffix(".py")
        for dep in _imports(path) & FORBIDDEN.get(top, set()):
            bad.append(f"{rel} imports vlastack.{dep}")
    assert not bad, "import direction broken:\n" + "\n".join(bad)
