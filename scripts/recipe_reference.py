"""Write docs/recipe.md, the reference of every recipe key, from compress/config.py.

Each key's type and default come from the dataclasses themselves, its text from the docstring under the field (read
with `ast`: Python keeps no attribute docstrings at run time). A field without one stops the script: every key a user
can set is documented. `--check` compares instead of writing (the test suite runs it).

    python scripts/recipe_reference.py          # rewrite docs/recipe.md
    python scripts/recipe_reference.py --check  # exit 1 when docs/recipe.md is not what the code says
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import re
import sys
import textwrap
import types
import typing
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from compress import config  # noqa: E402

OUT = ROOT / "docs" / "recipe.md"
HEADER = """# Recipe reference

Every key a recipe can hold, section by section, with its type, default and meaning. Generated from
`compress/config.py` by `python scripts/recipe_reference.py` (`make recipe-docs`); the test suite fails when this
page and the code disagree, so do not edit it by hand.

A recipe is a YAML file (`pipelines/*.yaml` are complete, commented examples). Unknown keys, wrong types and values
out of range are refused by name before anything runs (`compress validate RECIPE`); `--set KEY=VALUE` changes one key
from the command line (`--set students.0.train.epochs=1`, `--set 'quantize.modes=[dynamic]'`). The teacher stage
always runs; every other stage runs when its section is in the recipe (`students` for distill; `quantize: {}` runs
quantize with the defaults below); `search` configures `compress search`, not a stage. "required" keys have no
default.
"""
# keys the loader fills when a recipe leaves them out (no dataclass default to read)
FILLED = {("Recipe", "name"): "the recipe file's name without .yaml"}


def docstrings() -> dict[str, tuple[str, dict[str, str]]]:
    """Per dataclass of config.py: its docstring and its fields' (the string literal after each annotated field)."""
    tree = ast.parse((ROOT / "compress" / "config.py").read_text(encoding="utf-8"))
    out = {}
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        fields = {}
        for here, after in zip(node.body, node.body[1:] + [None]):
            if isinstance(here, ast.AnnAssign) and isinstance(after, ast.Expr) and \
                    isinstance(after.value, ast.Constant) and isinstance(after.value.value, str):
                fields[here.target.id] = after.value.value
        out[node.name] = (ast.get_docstring(node) or "", fields)
    return out


def prose(text: str) -> str:
    """A docstring as Markdown: paragraphs joined into lines, ``code`` as `code`; outside code, ``<name>`` and ``*``
    escaped (Markdown reads the one as an HTML tag, dropping it, and a pair of the other as emphasis)."""
    text = textwrap.dedent(text).strip()
    paragraphs = [" ".join(line.strip() for line in p.splitlines()) for p in re.split(r"\n\s*\n", text)]
    out = []
    for p in paragraphs:
        pieces = re.split(r"(``.+?``|`[^`]+`)", p)  # odd pieces: code spans
        out.append("".join(f"`{piece.strip('`')}`" if i % 2 else
                           piece.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("*", "\\*")
                           for i, piece in enumerate(pieces)))
    return "\n\n".join(p for p in out if p)


def yaml_value(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(yaml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {yaml_value(v)}" for k, v in value.items()) + "}"
    return str(value)


SCALARS = {int: "integer", float: "number", str: "string", bool: "boolean"}


def type_text(tp) -> tuple[str, list]:
    """How a field's type reads, and the dataclasses it nests (with the key suffix each is reached by); a type it
    cannot write stops the script (a new kind of field: teach it here rather than print Python's repr)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return "mapping", [("", tp)]
    if origin is typing.Literal:
        return "one of " + ", ".join(f"`{yaml_value(a)}`" for a in args), []
    if origin is list and len(args) == 1:
        inner, nested = type_text(args[0])
        return f"list of {inner}", [("[]" + suffix, cls) for suffix, cls in nested]
    if origin is dict and len(args) == 2 and args[0] is str:
        inner, nested = type_text(args[1])
        return f"mapping of names to {inner}", [(".<name>" + suffix, cls) for suffix, cls in nested]
    if origin in (typing.Union, types.UnionType):  # Optional[X], X | Y
        members = [type_text(a) for a in args if a is not type(None)]
        text = " or ".join(t for t, _ in members) + (" or null" if type(None) in args else "")
        return text, [n for _, nested in members for n in nested]
    if tp in SCALARS:
        return SCALARS[tp], []
    raise SystemExit(f"scripts/recipe_reference.py: cannot write the type {tp!r}: teach type_text")


def default_text(cls, f: dataclasses.Field) -> str:
    if (cls.__name__, f.name) in FILLED:
        return FILLED[cls.__name__, f.name]
    if f.default is not dataclasses.MISSING:
        return f"`{yaml_value(f.default)}`"
    if f.default_factory is dataclasses.MISSING:
        return "required"
    value = f.default_factory()
    if dataclasses.is_dataclass(value):  # a section's own defaults, or some of them set otherwise
        try:
            plain = type(value)()
        except TypeError:  # a section with a required key
            raise SystemExit(f"scripts/recipe_reference.py: {cls.__name__}.{f.name}: the default of a section that "
                             f"has required keys: teach default_text") from None
        changed = {g.name: getattr(value, g.name) for g in dataclasses.fields(value)
                   if getattr(value, g.name) != getattr(plain, g.name)}
        return f"`{yaml_value(changed)}` and the defaults below" if changed else "the defaults below"
    return f"`{yaml_value(value)}`"


def sections() -> list[tuple[str, type]]:
    """(key path, dataclass) of every section, depth first from the recipe's top level."""
    out = []

    def walk(path: str, cls) -> None:
        out.append((path, cls))
        hints = typing.get_type_hints(cls, vars(config))
        for f in dataclasses.fields(cls):
            if f.metadata.get("internal"):
                continue
            for suffix, nested in type_text(hints[f.name])[1]:
                walk(f"{path}.{f.name}{suffix}" if path else f"{f.name}{suffix}", nested)

    walk("", config.Recipe)
    return out


def render() -> str:
    docs = docstrings()
    parts = [HEADER]
    for path, cls in sections():
        hints = typing.get_type_hints(cls, vars(config))
        parts.append(f"\n## `{path}`\n" if path else "\n## Top level\n")
        class_doc = docs[cls.__name__][0]
        if class_doc and path:
            parts.append(prose(class_doc) + "\n")
        for f in dataclasses.fields(cls):
            if f.metadata.get("internal"):
                continue
            doc = next((docs[c.__name__][1][f.name] for c in cls.__mro__  # a TrainConfig field: TrainConfig's
                        if f.name in docs.get(c.__name__, ("", {}))[1]), None)
            if doc is None:
                raise SystemExit(f"compress/config.py: {cls.__name__}.{f.name}: no docstring under the field (every "
                                 f"recipe key is documented)")
            kind = type_text(hints[f.name])[0]
            text = prose(doc).replace("\n\n", " ")
            parts.append(f"- **`{f.name}`** ({kind}; default {default_text(cls, f)}): {text}")
        parts.append("")
    return "\n".join(parts).rstrip() + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 when docs/recipe.md differs from what it would write")
    args = ap.parse_args(argv)
    text = render()
    if args.check:
        if not OUT.is_file() or OUT.read_text(encoding="utf-8") != text:
            print(f"{OUT.relative_to(ROOT)}: out of date with compress/config.py; run python "
                  f"scripts/recipe_reference.py", file=sys.stderr)
            return 1
        return 0
    tmp = OUT.with_suffix(".md.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(OUT)
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
