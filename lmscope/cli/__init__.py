"""The `lmscope` command line.

Each module in this package defines `register(subparsers)` adding one or more
subcommands, each with `set_defaults(func=...)`; they are discovered here so
that a stage adds its commands without touching a central file. A `UserError`
anywhere prints one line and exits 2 (no traceback for a user mistake).
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys

from ..errors import UserError

# Order in --help: the data flow (capture -> dictionaries -> atlas -> read/trace/steer/probe ->
# viewer).
_ORDER = [
    "run",
    "models",
    "capture",
    "train",
    "pretrained",
    "atlas",
    "explain",
    "read",
    "trace",
    "probe",
    "correct",
    "viewer",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lmscope",
        description=(
            "An MRI scanner for language models. Capture activations at named hook points, "
            "learn sparse dictionaries whose latents are the model's features, profile them in "
            "an atlas, and read prompts through it.\n\n"
            "Start with:  lmscope run            (the whole pipeline on the embedded default "
            "model)\n"
            "             lmscope models         (what can be loaded offline)\n"
            "             lmscope hooks --model smollm2-135m"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"lmscope {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    names = [m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")]
    names.sort(key=lambda n: (_ORDER.index(n) if n in _ORDER else len(_ORDER), n))
    for name in names:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def _version() -> str:
    from .. import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UserError as e:  # a flag's value failed its converter (e.g. --tokens lots)
        print(f"lmscope: error: {e}", file=sys.stderr)
        return e.exit_code
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        rc = args.func(args)
    except UserError as e:
        print(f"lmscope: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("\nlmscope: interrupted; run the same command again to resume.", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `lmscope ... | head`: quietly stop.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as e:  # a full disk or a forbidden folder is the machine, not a bug: one line
        from ._common import environment_error

        msg = environment_error(e)
        if msg is None:
            raise
        print(f"lmscope: error: {msg}", file=sys.stderr)
        return 2
    finally:
        # A torchrun job leaves its process group to the interpreter's exit otherwise, where
        # gloo can abort one rank (SIGABRT) as its peer's connections close first.
        dist = sys.modules.get("lmscope.dist")  # only a command that used it pays for torch
        if dist is not None:
            dist.teardown()
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
