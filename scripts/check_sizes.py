"""Small modules with one job: every module of the package is at most 400 lines and every
function in it at most 60 (`make lint`). Prints each offender; exits 1 if there is one."""

import ast
import sys
from pathlib import Path

MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
PACKAGE = Path(__file__).resolve().parents[1] / "spacy_segment_influence"


def offenders(package: Path = PACKAGE) -> list:
    found = []
    for path in sorted(package.rglob("*.py")):
        text = path.read_text(encoding="utf8")
        name = path.relative_to(package.parent)
        n_lines = len(text.splitlines())
        if n_lines > MAX_MODULE_LINES:
            found.append(f"{name}: {n_lines} lines (at most {MAX_MODULE_LINES})")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                if length > MAX_FUNCTION_LINES:
                    found.append(f"{name}:{node.lineno}: {node.name} is {length} lines (at most {MAX_FUNCTION_LINES})")
    return found


if __name__ == "__main__":
    problems = offenders()
    print("\n".join(problems) or "Module and function sizes: all within bounds")
    sys.exit(1 if problems else 0)
