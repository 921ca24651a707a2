"""Face-finding recall on UTKFace's chips: the share of one split's chips in which ``FaceAligner`` finds a
face, how many needed the Haar second chance, and how well the chips it cuts line up with the originals.

Every UTKFace chip holds one face, already aligned the way ``FaceAligner`` aligns: the affine it finds for a
chip should be close to the identity. The alignment columns give how far it is (median and 90th percentile
of the scale's ``|log|`` and of the chip centre's shift in pixels), for faces found by HOG and by the second
chance.

    python scripts/detection_recall.py --data work/utk128.h5 --split test
    python scripts/detection_recall.py --data work/utk128.h5 --split val --list-missed
    python scripts/detection_recall.py --data work/utk128.h5 --split test --ages   # + the bundled model's MAE
    python scripts/detection_recall.py --data work/utk128.h5 --split test --detector dlib   # HOG looks alone

``--ages`` also runs the bundled model through ``Predictor`` (faces found and aligned as above, 2 worker
processes) on the same chips and prints its MAE against the age in each file name, over the chips with a
face: what the face finder does to the answers.
"""

from __future__ import annotations

import argparse
import tarfile
import time
from pathlib import Path

import h5py
import numpy as np

from deepage.data.split import SPLIT_NAMES
from deepage.faces import FaceAligner
from deepage.imageio import decode_image

ARCHIVE = Path(__file__).resolve().parents[2] / "shared" / "data" / "UTKFace.tar.gz"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archive", default=str(ARCHIVE), help="UTKFace.tar.gz (default: ../shared/data)")
    parser.add_argument("--data", required=True, help="ingested and split HDF5 (names which chips are in --split)")
    parser.add_argument("--split", default="test", choices=list(SPLIT_NAMES), help="default: test")
    parser.add_argument("--list-missed", action="store_true", help="print the names of the chips with no face")
    parser.add_argument("--ages", action="store_true", help="also the bundled model's MAE on these chips")
    parser.add_argument("--detector", default="auto", choices=["auto", "dlib"],
                        help="FaceAligner's detector: auto (BlazeFace, then the HOG looks; default) or dlib "
                        "(the HOG looks alone)")
    args = parser.parse_args(argv)

    with h5py.File(args.data, "r") as f:
        names = f["filename"].asstr()[:]
        wanted = {Path(x).name for x in names[f["split"][:] == SPLIT_NAMES.index(args.split)]}
    aligner = FaceAligner(detector=args.detector)
    second: list[bool] = []
    first_chance = aligner._second_chance

    def second_chance(rgb):  # counts the faces only the second chance found
        boxes = first_chance(rgb)
        second.append(bool(boxes))
        return boxes

    aligner._second_chance = second_chance
    missed, rows, seconds, chips = [], [], 0.0, []
    with tarfile.open(args.archive) as tar:
        for member in tar:
            name = Path(member.name).name
            if not (member.isfile() and name in wanted):
                continue
            data = tar.extractfile(member).read()
            if args.ages:
                chips.append((name, data))
            rgb = decode_image(data, name)
            before = len(second)
            t = time.process_time()
            faces = aligner.detect(rgb)
            seconds += time.process_time() - t
            if not faces:
                missed.append(name)
                continue
            m = faces[0].matrix
            centre = (rgb.shape[1] - 1) / 2  # the chip's centre should map onto the new chip's centre
            shift = m[:, :2] @ [centre, centre] + m[:, 2] - (aligner.output_size - 1) / 2
            rows.append((len(second) > before and second[-1], abs(np.log(np.hypot(*m[0, :2]) * rgb.shape[1]
                                                                          / aligner.output_size)),
                         float(np.hypot(*shift))))
    n = len(rows) + len(missed)
    by_second = sum(r[0] for r in rows)
    print(f"{args.split}, detector {aligner.method}: {n} chips, face found in {len(rows)} "
          f"({100 * len(rows) / n:.2f} %), missed "
          f"{len(missed)}; {by_second} found by the Haar second chance; {1000 * seconds / n:.1f} ms of CPU per chip")
    table = np.array(rows, float)
    for flag, label in ((0, "first looks"), (1, "second chance")):
        part = table[table[:, 0] == flag] if len(table) else table
        if len(part):
            print(f"  {label:<14} n={len(part):<5} |log scale| median {np.median(part[:, 1]):.3f} (90 %: "
                  f"{np.percentile(part[:, 1], 90):.3f}); centre shift median {np.median(part[:, 2]):.1f} px "
                  f"(90 %: {np.percentile(part[:, 2], 90):.1f})")
    if args.ages:
        from deepage.inference.predictor import Predictor

        with Predictor.default(workers=2, aligner=FaceAligner(output_size=200, detector=args.detector)) as predictor:
            results = predictor.predict([data for _, data in chips])
        errors = [abs(r.faces[0].age - int(name.split("_")[0])) for (name, _), r in zip(chips, results, strict=True)
                  if r.faces]
        print(f"  bundled model through Predictor: MAE {np.mean(errors):.3f} over the {len(errors)} chips with a face")
    if args.list_missed:
        print("\n".join(missed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
