"""How many face-finding processes a :class:`~deepage.inference.predictor.Predictor` may start, and whether
it can start them at all.

Worker processes are *spawned* (a fork of a process running PyTorch's or ONNX Runtime's thread pools is not
safe), and a spawned process first re-runs the parent's main script as ``__mp_main__``: code that starts the
workers from a script's top level, outside ``if __name__ == "__main__":``, runs again in every worker and
breaks the pool; a main program read from ``<stdin>`` cannot be re-run at all. :func:`spawn_problem` spots
both before anything is started, so ``workers="auto"`` can stay in this process instead (and say why).

>>> resolve_workers(4, n_images=1), resolve_workers(4, n_images=100)
(1, 4)
"""

from __future__ import annotations

import ast
import inspect
import multiprocessing as mp
import os
import sys
from pathlib import Path

__all__ = ["resolve_workers", "available_cores", "spawn_problem", "unguarded_line", "AUTO"]

AUTO = "auto"


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS tells it, else the CPU count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def resolve_workers(workers: int | str, n_images: int | None = None) -> int:
    """``workers`` as a number of processes: ``"auto"`` → :func:`available_cores`, at most ``n_images``
    (1 for a single image: starting processes would cost more than it saves); an int ≥ 1 as it is."""
    if workers == AUTO:
        cores = available_cores()
        return max(1, min(cores, n_images)) if n_images is not None else cores
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a whole number of at least 1 or 'auto', got {workers!r}")
    return workers


def _is_main_guard(node: ast.stmt) -> bool:
    """Whether ``node`` is ``if __name__ == "__main__":`` (either way round)."""
    if not isinstance(node, ast.If) or not isinstance(node.test, ast.Compare) or len(node.test.ops) != 1:
        return False
    sides = [node.test.left, *node.test.comparators]
    names = {s.id for s in sides if isinstance(s, ast.Name)}
    values = {s.value for s in sides if isinstance(s, ast.Constant)}
    return isinstance(node.test.ops[0], ast.Eq) and names == {"__name__"} and values == {"__main__"}


def unguarded_line(source: str, line: int) -> bool:
    """Whether line ``line`` of a script's ``source`` runs at its top level outside every
    ``if __name__ == "__main__":`` block (so a spawned process, re-running the script, runs it too)."""
    tree = ast.parse(source)
    for node in tree.body:
        if node.lineno <= line <= (node.end_lineno or node.lineno):
            return not _is_main_guard(node)
    return True


def _main_script_line() -> tuple[Path, int] | None:
    """The main script and the line of its top level that this call comes from, or ``None`` (the call
    comes from elsewhere: a thread, an interactive session)."""
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    if main_file is None:
        return None
    main_file = os.path.abspath(main_file)
    frame = inspect.currentframe()
    while frame is not None:
        if frame.f_code.co_name == "<module>" and os.path.abspath(frame.f_code.co_filename) == main_file:
            return Path(main_file), frame.f_lineno
        frame = frame.f_back
    return None


def spawn_problem() -> str | None:
    """Why spawned worker processes would fail if started now, in a few words, or ``None`` when they can
    start: a daemonic process (a ``multiprocessing.Pool`` worker) may not have children; a main program
    read from ``<stdin>`` cannot be re-run; a call from a script's top level outside its
    ``if __name__ == "__main__":`` block would be repeated in every worker."""
    if mp.current_process().daemon:
        return "this is a daemonic process (a multiprocessing.Pool worker), which may not start processes"
    main = sys.modules.get("__main__")
    spec_name = getattr(getattr(main, "__spec__", None), "name", None) or ""
    if spec_name == "__main__" or spec_name.endswith(".__main__"):
        return None  # `python -m package`: workers do not re-run package/__main__.py
    main_file = getattr(main, "__file__", None)
    if main_file is None:
        return None  # an interactive session or `python -c`: nothing to re-run
    if not os.path.isfile(main_file):
        return (f"the main program is {main_file!r}, not a file: the worker processes, which re-run it first, "
                "cannot")
    where = _main_script_line()
    if where is None:
        return None
    script, line = where
    try:
        unguarded = unguarded_line(script.read_text(encoding="utf-8"), line)
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return None  # cannot tell: let the pool try
    if unguarded:
        return (f"{script.name} line {line} starts them outside `if __name__ == \"__main__\":`, and each worker "
                f"process re-runs {script.name}'s top level first")
    return None
