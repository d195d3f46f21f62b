"""``python -m bench`` lists the benchmarks; ``python -m bench NAME [ARGS]`` runs one (docs/performance.md);
``python -m bench all`` runs every one several times and writes a table and a plot (bench/run_all.py).

Equivalent to ``python -m bench.NAME [ARGS]``. Run from the repository root: benchmarks use the test
support code (``tests/support``) to start daemons, private pcscd instances and private PostgreSQL
clusters. The list is every module here with a ``main`` (``tap_latency``, ``plugin_pipeline``, ``bus``,
``plugins_db``, ``startup``, ``fleet``, ...), found at run time.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import sys
from pathlib import Path

HERE = Path(__file__).parent


def benches() -> dict[str, str]:
    """Every module of this package with a ``main``: name -> the first line of its docstring."""
    found: dict[str, str] = {}
    for info in pkgutil.iter_modules([str(HERE)]):
        if info.name.startswith("_"):
            continue
        tree = ast.parse((HERE / f"{info.name}.py").read_text(encoding="utf-8"))
        if any(isinstance(node, ast.FunctionDef) and node.name == "main" for node in tree.body):
            found[info.name] = (ast.get_docstring(tree) or "").splitlines()[0]
    return dict(sorted(found.items()))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    available = benches()
    if args and args[0] == "all":
        args = ["run_all", *args[1:]]
    if not args or args[0] in ("-h", "--help"):
        sys.stdout.write("usage: python -m bench NAME [ARGS]   (NAME --help for its options)\n\n")
        for name, summary in available.items():
            sys.stdout.write(f"  {name:<18} {summary}\n")
        return 0
    if args[0] not in available:
        sys.stderr.write(f"no benchmark {args[0]!r}; choose from {', '.join(available)}\n")
        return 64  # EX_USAGE
    module = importlib.import_module(f"bench.{args[0]}")
    sys.argv = [f"python -m bench {args[0]}", *args[1:]]
    result: int = module.main(args[1:])
    return result


if __name__ == "__main__":
    sys.exit(main())
