"""The command line that runs this lmscope again, for the commands lmscope prints.

`lmscope` is on PATH only inside an activated venv, so a printed `lmscope serve ...` fails when
pasted into a new shell. Printed commands start with `lmscope_command()` instead: the running
console script as a path (relative to the current folder when it lies under it, like the
relative run folders printed next to it; absolute otherwise).

    print("$ " + shell_line(["serve", "runs/smollm2-135m/atlas"]))
    # $ .venv/bin/lmscope serve runs/smollm2-135m/atlas
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

_NAMES = ("lmscope", "lmscope.exe")


def lmscope_command() -> list[str]:
    """The argv prefix that runs this lmscope from a new shell in the current folder.

    sys.argv[0] is the console script: the path as typed, or the full path when the shell found
    it on PATH. Launched another way (`python -m lmscope`, a test runner): the console script
    next to this Python, else `python -m lmscope` with this Python's full path."""
    exe = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if not (exe is not None and exe.name in _NAMES and exe.is_file()):
        exe = Path(sys.executable).parent / "lmscope"
        if not exe.is_file():
            return [sys.executable, "-m", "lmscope"]
    exe = exe.absolute()
    try:
        rel = exe.relative_to(Path.cwd())
    except ValueError:
        return [str(exe)]
    # A bare name would be looked up on PATH, not in the current folder.
    return [str(rel) if rel.parent != Path(".") else f"./{rel}"]


def shell_line(argv: list[str]) -> str:
    """`lmscope_command() + argv`, quoted for a POSIX shell."""
    return " ".join(shlex.quote(a) for a in [*lmscope_command(), *argv])
