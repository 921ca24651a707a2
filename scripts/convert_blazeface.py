"""Make ``deepage/assets/blazeface_short_range.onnx`` from MediaPipe's wheel (how the bundled file was made).

MediaPipe 0.10.14 (Apache-2.0) ships ``mediapipe/modules/face_detection/face_detection_short_range.tflite``
in its wheel; ``tflite2onnx`` 0.4.1 converts it (it warns that float16 weights are "not tested": the
converted graph's boxes were checked against known face positions, see ``deepage/blazeface.py``). Run it in
a scratch environment, not deepage's own:

    python -m venv /tmp/conv && /tmp/conv/bin/pip install tflite2onnx onnxruntime
    /tmp/conv/bin/pip download mediapipe==0.10.14 --no-deps -d /tmp/mp
    /tmp/conv/bin/python scripts/convert_blazeface.py /tmp/mp/mediapipe-0.10.14-*.whl

(The full-range model of the same wheel is stored sparse, which ``tflite2onnx`` cannot convert.)
"""

from __future__ import annotations

import argparse
import tempfile
import zipfile
from pathlib import Path

MEMBER = "mediapipe/modules/face_detection/face_detection_short_range.tflite"
OUT = Path(__file__).resolve().parents[1] / "deepage" / "assets" / "blazeface_short_range.onnx"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("wheel", help="mediapipe-0.10.14-*.whl")
    parser.add_argument("-o", "--output", default=str(OUT))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tflite = Path(tmp) / "model.tflite"
        tflite.write_bytes(zipfile.ZipFile(args.wheel).read(MEMBER))
        import tflite2onnx

        tflite2onnx.convert(str(tflite), args.output)
    import onnxruntime as ort

    session = ort.InferenceSession(args.output, providers=["CPUExecutionProvider"])
    shapes = {o.name: o.shape for o in session.get_outputs()}
    assert session.get_inputs()[0].shape == [1, 3, 128, 128], session.get_inputs()[0].shape
    assert shapes == {"regressors": [1, 896, 16], "classificators": [1, 896, 1]}, shapes
    print(f"wrote {args.output} ({Path(args.output).stat().st_size / 1e3:.0f} kB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
