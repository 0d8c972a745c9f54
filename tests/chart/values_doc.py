"""The "Values" table of charts/ociregistry/README.md, generated from the `# --`
comments of charts/ociregistry/values.yaml (helm-docs' convention, without helm-docs).

    .venv/bin/python tests/chart/values_doc.py           # rewrite the table in README.md
    .venv/bin/python tests/chart/values_doc.py --check   # exit 1 when README.md is stale

A `# --` comment, with the `#` lines after it up to the key, documents the key
below it. A documented key is one row; its default is its value, or "(keys
below)" when keys inside it are documented too, each then a row of its own.
Every value must be documented, by its own comment or by an enclosing key's
that documents nothing else inside it: an undocumented one is an error that
names it. Keys inside lists are part of the
list's value. The table sits between the two marker lines in README.md;
nothing else there is touched.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

CHART = Path(__file__).resolve().parents[2] / "charts" / "ociregistry"
VALUES = CHART / "values.yaml"
README = CHART / "README.md"
COMMAND = ".venv/bin/python tests/chart/values_doc.py"
BEGIN = f"<!-- values table: generated from values.yaml by `{COMMAND}`; edit values.yaml, not this table -->"
END = "<!-- end of the values table -->"

KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_.\-/]+):(?: |$)")


def documented_keys(text: str) -> list[tuple[str, str]]:
    """(dotted path, description) of every key with a `# --` comment, in file order."""
    out: list[tuple[str, str]] = []
    stack: list[tuple[int, str, bool]] = []  # (indent, key, holds a list)
    comment: list[str] | None = None
    for line in text.splitlines():
        stripped = line.strip()
        indent = len(line) - len(line.lstrip(" "))
        if not stripped:
            comment = None
            continue
        if stripped.startswith("#"):
            if stripped.startswith("# --"):
                comment = [stripped[4:].strip()]
            elif comment is not None:
                comment.append(stripped[1:].strip())
            continue
        if stripped.startswith("- "):
            # A list item: everything in it belongs to the key that holds the list.
            while stack and stack[-1][0] > indent:
                stack.pop()
            if stack and not stack[-1][2]:
                stack[-1] = (stack[-1][0], stack[-1][1], True)
            comment = None
            continue
        m = KEY.match(line)
        if not m:
            comment = None
            continue
        while stack and stack[-1][0] >= indent:
            stack.pop()
        if any(in_list for _, _, in_list in stack):
            comment = None
            continue
        stack.append((indent, m["key"], False))
        if comment is not None:
            out.append((".".join(k for _, k, _ in stack), " ".join(c for c in comment if c)))
        comment = None
    return out


def leaves(d, prefix=()):
    """Dotted paths of the leaves (scalars, lists, empty maps)."""
    if isinstance(d, dict) and d:
        for k, v in d.items():
            yield from leaves(v, prefix + (str(k),))
    else:
        yield ".".join(prefix)


def lookup(values: dict, path: str):
    for k in path.split("."):
        values = values[k]
    return values


def shown(value) -> str:
    if isinstance(value, str):
        return f"`{value}`" if value else '`""`'
    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10**9).strip()
    return f"`{text.removesuffix('...').strip()}`"


def cell(text: str) -> str:
    return text.replace("|", "\\|")


def table() -> tuple[str, list[str]]:
    """The Markdown table, and the values no comment documents."""
    text = VALUES.read_text()
    values = yaml.safe_load(text)
    docs = documented_keys(text)
    paths = [p for p, _ in docs]
    # A row documents what is inside it only when nothing inside it has a row of its own.
    units = [p for p in paths if not any(q.startswith(p + ".") for q in paths)]
    undocumented = [leaf for leaf in leaves(values)
                    if not any(leaf == p or leaf.startswith(p + ".") for p in units)]
    rows = ["| value | default | meaning |", "|---|---|---|"]
    for path, description in docs:
        has_rows_below = any(p.startswith(path + ".") for p in paths)
        default = "(keys below)" if has_rows_below else cell(shown(lookup(values, path)))
        rows.append(f"| `{path}` | {default} | {cell(description)} |")
    return "\n".join(rows) + "\n", undocumented


def render_readme(readme: str, tbl: str) -> str:
    if readme.count(BEGIN) != 1 or readme.count(END) != 1:
        raise SystemExit(f"{README}: put the two marker lines where the table goes:\n{BEGIN}\n{END}")
    head, rest = readme.split(BEGIN)
    _, tail = rest.split(END)
    return f"{head}{BEGIN}\n{tbl}{END}{tail}"


def main(argv: list[str]) -> int:
    tbl, undocumented = table()
    if undocumented:
        print(f"{VALUES}: document these values with a `# --` comment (on them or an enclosing key): "
              f"{', '.join(undocumented)}", file=sys.stderr)
        return 1
    readme = README.read_text()
    wanted = render_readme(readme, tbl)
    if "--check" in argv:
        if wanted != readme:
            print(f"{README} is not current with values.yaml: run `{COMMAND}`", file=sys.stderr)
            return 1
        return 0
    if wanted != readme:
        README.write_text(wanted)
        print(f"wrote the values table of {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
