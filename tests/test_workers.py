"""``workers="auto"``: how many processes, and when spawned processes could not start (a script without the
``__main__`` guard, a program read from stdin), said in one line; the CLI's default; the bench's options."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from deepage.cli import build_parser
from deepage.inference.workers import available_cores, resolve_workers, unguarded_line

ROOT = Path(__file__).resolve().parents[1]
WORKERS_PY = ROOT / "deepage" / "inference" / "workers.py"


def test_auto_is_the_cores_bounded_by_the_images():
    cores = available_cores()
    assert resolve_workers("auto") == cores
    assert resolve_workers("auto", n_images=1) == 1 and resolve_workers("auto", n_images=0) == 1
    assert resolve_workers("auto", n_images=10_000) == cores
    assert resolve_workers(3, n_images=1) == 3  # a number is taken as given
    for bad in (0, -1, "2", 1.5, True, "many"):
        with pytest.raises(ValueError, match="at least 1 or 'auto'"):
            resolve_workers(bad)


def test_cli_defaults_to_auto_workers():
    parser = build_parser()
    args = parser.parse_args(["predict", "x.jpg"])
    assert (args.workers, args.adult_age) == ("auto", "auto")
    args = parser.parse_args(["predict", "x.jpg", "--workers", "3", "--adult-age", "16"])
    assert (args.workers, args.adult_age) == (3, 16)
    assert parser.parse_args(["predict", "x.jpg", "--adult-age", "off"]).adult_age is None
    for bad in (["--workers", "0"], ["--workers", "two"], ["--adult-age", "0"], ["--adult-age", "old"]):
        with pytest.raises(SystemExit):
            parser.parse_args(["predict", "x.jpg", *bad])


def test_unguarded_line():
    source = textwrap.dedent("""\
        import deepage
        p = make()          # 2
        if __name__ == "__main__":
            p.predict()     # 4
        if "__main__" == __name__:
            run()           # 6
        if __name__ == "__main__" and fast:
            run()           # 8
        def f():
            pass
        """)
    assert unguarded_line(source, 2) and unguarded_line(source, 8) and unguarded_line(source, 20)
    assert not unguarded_line(source, 4) and not unguarded_line(source, 6)


def _run(code: str, tmp_path: Path, how: str) -> str:
    """What ``spawn_problem()`` says when called from a script's top level (``how``: ``file`` or ``stdin``).
    The module is loaded from its file, so the script imports no torch (a fraction of a second)."""
    script = textwrap.dedent(f"""\
        import importlib.util, sys
        spec = importlib.util.spec_from_file_location("w", {str(WORKERS_PY)!r})
        w = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(w)
        """) + textwrap.dedent(code)
    if how == "file":
        path = tmp_path / "script.py"
        path.write_text(script)
        done = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=60)
    else:
        done = subprocess.run([sys.executable, "-"], input=script, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_spawn_problem_spots_a_missing_guard_and_stdin(tmp_path):
    assert importlib.util.find_spec("deepage.inference.workers") is not None
    unguarded = _run("print(w.spawn_problem())\n", tmp_path, "file")
    assert "script.py line 5 starts them outside `if __name__ == \"__main__\":`" in unguarded
    guarded = _run('if __name__ == "__main__":\n    print(w.spawn_problem())\n', tmp_path, "file")
    assert guarded == "None"
    in_a_function = _run('def main():\n    print(w.spawn_problem())\nif __name__ == "__main__":\n    main()\n',
                         tmp_path, "file")
    assert in_a_function == "None"
    stdin = _run('if __name__ == "__main__":\n    print(w.spawn_problem())\n', tmp_path, "stdin")
    assert "the main program is '<stdin>', not a file" in stdin


def test_auto_workers_stay_in_process_in_an_unguarded_script(tiny_checkpoint, tmp_path):
    """The failure the issue reports (a BrokenProcessPool from a plain script) does not happen with "auto":
    the predictor answers in this process and says why in one line."""
    script = tmp_path / "plain.py"
    script.write_text(textwrap.dedent(f"""\
        import numpy as np
        from deepage.inference.predictor import Predictor
        p = Predictor.from_checkpoint({str(tiny_checkpoint)!r}, detect=False, workers="auto", backend="torch")
        images = [np.full((40, 40, 3), k * 20, np.uint8) for k in range(4)]
        print(len(p.predict(images)), p._pool is None)
        """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["4", "True"]
    if available_cores() > 1:
        (line,) = [x for x in done.stderr.splitlines() if "workers='auto'" in x]
        assert "answering in this process" in line and "plain.py line 5" in line


def test_bench_imports_and_parses(monkeypatch):
    spec = importlib.util.spec_from_file_location("predict_batch", ROOT / "bench" / "predict_batch.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = bench.build_parser().parse_args([])
    assert (args.workers, args.backend, args.real, args.n, args.photos) == ("auto", "auto", 300, 400, 300)
    assert bench.build_parser().parse_args(["--workers", "2", "--real", "5"]).workers == 2
    import numpy as np

    rng = np.random.default_rng(0)
    photos = [bench.real_photo(src, rng) for src in bench.real_sources() for _ in range(3)]
    sides = [max(p.shape[:2]) for p in photos]
    assert all(p.dtype == np.uint8 and p.ndim == 3 and p.shape[2] == 3 for p in photos)
    assert min(sides) >= 16 and max(sides) <= 1400 and len(set(sides)) == len(sides)
