"""``deepage predict --ray`` and ``predict_on_ray`` on a local Ray (2 CPUs): the local run's rows, in its order."""

from __future__ import annotations

import csv
import io
import logging
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from deepage.cli import main as cli
from deepage.inference.predict_cli import CSV_COLUMNS, run_predict

REPO = Path(__file__).resolve().parents[1]
ASTRONAUT = REPO / "deepage" / "assets" / "astronaut.jpg"

# Ray Data's own deprecated DataContext fields, read when it ships the context to the actors (Ray 2.60).
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module: 2 CPUs, no dashboard, its files in a short temporary folder (Ray's
    socket paths must stay under 108 characters, which pytest's own temporary folders can pass)."""
    ray = pytest.importorskip("ray", reason="needs the 'ray' extra")
    folder = tempfile.mkdtemp(prefix="ray-")
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=folder, object_store_memory=200 * 2**20,
             logging_level=logging.WARNING)
    yield ray
    ray.shutdown()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory) -> Path:
    """33 files: 28 copies of the bundled photo, scaled (0.55-1.0) and shifted on a grey canvas (two in a
    subfolder, one a PNG), 3 with no face (noise, a flat colour, the sky of the photo), one corrupt JPEG and
    one text file that is not an image."""
    folder = tmp_path_factory.mktemp("ray_photos")
    (folder / "sub").mkdir()
    bgr = cv2.imread(str(ASTRONAUT))
    rng = np.random.default_rng(0)
    for k, scale in enumerate(np.linspace(0.55, 1.0, 28)):
        side = int(512 * scale)
        canvas = np.full((560, 560, 3), 90 + 4 * k, np.uint8)
        y, x = (int(v) for v in rng.integers(0, 560 - side + 1, size=2))
        canvas[y:y + side, x:x + side] = cv2.resize(bgr, (side, side), interpolation=cv2.INTER_AREA)
        name = f"sub/photo{k:02d}.png" if k == 5 else f"sub/photo{k:02d}.jpg" if k == 9 else f"photo{k:02d}.jpg"
        cv2.imwrite(str(folder / name), canvas)
    cv2.imwrite(str(folder / "noise.jpg"), rng.integers(0, 256, (300, 400, 3), dtype=np.uint8))
    cv2.imwrite(str(folder / "flat.png"), np.full((200, 300, 3), 128, np.uint8))
    cv2.imwrite(str(folder / "sky.jpg"), bgr[:60, 300:])
    (folder / "corrupt.jpg").write_bytes(ASTRONAUT.read_bytes()[:2000])
    (folder / "notes.jpg").write_text("not a photo")
    return folder


def _local_csv(paths: list[str], out: Path) -> str:
    assert run_predict(paths, fmt="csv", output=out, progress=False) == 1  # the corrupt files fail
    return out.read_text()


@pytest.mark.slow  # a local Ray and a local run: 10-25 s each on 2 shared cores
def test_cli_ray_rows_equal_the_local_rows(local_ray, photo_folder, tmp_path, capsys):
    missing = str(tmp_path / "gone.jpg")
    args = [str(photo_folder), missing]
    local = _local_csv(args, tmp_path / "local.csv")
    rc = cli(["predict", *args, "--format", "csv", "-o", str(tmp_path / "ray.csv"), "--quiet", "--ray"])
    assert rc == 1
    assert (tmp_path / "ray.csv").read_text() == local
    lines = local.splitlines()
    rows = list(csv.DictReader(io.StringIO(local)))
    by_source: dict[str, list[dict]] = {}
    for row in rows:
        by_source.setdefault(Path(row["source"]).name, []).append(row)
    copies = [name for name in by_source if name.startswith("photo")]
    # her face in every copy (a detector may box something else too: one row per face)
    assert len(copies) == 28 and all(any(r["face"] and not r["error"] for r in by_source[c]) for c in copies)
    # one row each, without a face, for the 5 faceless or broken files and the missing one
    others = [name for name in by_source if name not in copies]
    assert len(others) == 6 and all(len(by_source[n]) == 1 and not by_source[n][0]["face"] for n in others)
    assert lines[-1] == ",".join([missing] + [""] * (len(CSV_COLUMNS) - 2) + ["file not found"])
    assert "corrupt.jpg: truncated" in capsys.readouterr().err


@pytest.mark.slow  # a local Ray and a local run: 10-25 s each on 2 shared cores
def test_api_reads_uris_in_the_actors_in_input_order(local_ray, photo_folder, tmp_path):
    from deepage import predict_on_ray
    from deepage.inference.predictor import Predictor

    uri = photo_folder.as_uri()  # file:///...: listed and read through pyarrow.fs, as s3:// would be
    results = list(predict_on_ray([uri], batch_size=4, num_actors=2))
    with Predictor.default() as predictor:
        local = predictor.predict(sorted(p for p in photo_folder.rglob("*") if p.is_file()))
    assert [r.source for r in results] == [p.source.replace(str(photo_folder), uri, 1) for p in local]
    for ours, theirs in zip(results, local, strict=True):
        expected = theirs.to_dict() | {"source": ours.source}
        assert ours.to_dict() == expected


def test_bad_address_annotate_and_model_are_refused_up_front(photo_folder, tmp_path, capsys):
    assert cli(["predict", "--ray", str(photo_folder), str(tmp_path)]) == 2  # the folder taken as the address
    assert "put --ray after the paths" in capsys.readouterr().err
    assert cli(["predict", str(photo_folder), "--ray", "--annotate", str(tmp_path / "a")]) == 2
    assert "--annotate is not available with --ray" in capsys.readouterr().err
    (tmp_path / "bad.pt").write_text("not a checkpoint")
    assert cli(["predict", str(photo_folder), "--ray", "--model", str(tmp_path / "bad.pt"), "-o",
                str(tmp_path / "out.csv"), "--format", "csv"]) == 2  # by the driver, not by each actor
    err = capsys.readouterr().err
    assert err.startswith(f"deepage predict: error: {tmp_path / 'bad.pt'} is not a readable") and err.count("\n") == 1


def test_without_the_extra_the_error_names_it(monkeypatch, photo_folder, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.delitem(sys.modules, "deepage.inference.ray_batch", raising=False)
    assert cli(["predict", str(photo_folder), "--ray"]) == 1
    assert capsys.readouterr().err == ("deepage predict: error: this needs the 'ray' extra (ray is not "
                                       "installed): pip install 'deepage[ray]'\n")


def test_ray_is_imported_only_when_asked_for():
    code = ("import sys, deepage, deepage.cli, deepage.inference.predict_cli; "
            "deepage.cli.build_parser().format_help(); print('ray' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert done.stdout.strip() == "False"
