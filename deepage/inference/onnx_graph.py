"""An exported ``.onnx`` file read for answering, without PyTorch: its ONNX Runtime session, its spec and its
record (the metadata ``deepage export`` writes).

:mod:`deepage.inference.export` writes these files and re-exports what is here; this module is the part that
``deepage predict`` needs to answer with a graph, so it imports neither torch nor the ``onnx`` package
(together about 5 s of a fresh process on a 2-core host).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from ..readout import out_features, reader_for
from ..spec import ModelSpec
from .workers import available_cores

__all__ = ["OnnxGraph", "read_onnx_graph", "onnx_session", "check_onnx_io", "cpu_threads", "file_sha256",
           "SPEC_KEY", "FORMAT_KEY", "AGE_GATES_KEY", "WEIGHTS_KEY", "FINGERPRINT_KEY", "SOURCE_SHA256_KEY",
           "WEIGHT_STORAGE_KEY", "ONNX_FORMAT", "INPUT_NAME", "OUTPUT_NAME"]

SPEC_KEY = "deepage_spec"
FORMAT_KEY = "deepage_format"
AGE_GATES_KEY = "deepage_age_gates"
WEIGHTS_KEY = "deepage_weights"  # checkpoint.weights_digest of the weights the graph was exported from
WEIGHT_STORAGE_KEY = "deepage_weight_storage"
"""``"int8"`` in a float graph written by ``deepage export --weights int8`` (its weights stored as int8, turned
back into float32 when the session starts); absent otherwise. Informative: such a graph runs as any other."""
FINGERPRINT_KEY = "deepage_split_fingerprint"
SOURCE_SHA256_KEY = "deepage_checkpoint_sha256"
"""SHA-256 of the ``.pt`` file the graph was exported from: a file with that hash holds the same weights, so
comparing it is a check that needs no torch (:meth:`deepage.inference.predictor.Predictor.default`)."""
ONNX_FORMAT = "deepage-onnx/1"
INPUT_NAME, OUTPUT_NAME = "input", "outputs"


def cpu_threads() -> int:
    """The intra-op threads a model gets by default: PyTorch's count where torch is loaded (so both backends
    use the same cores), else ``OMP_NUM_THREADS``, else the cores this process may run on."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return torch.get_num_threads()
    env = os.environ.get("OMP_NUM_THREADS", "")
    return int(env) if env.isdigit() and int(env) > 0 else available_cores()


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes (about 30 ms for the bundled 16 MB model)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def onnx_session(model: bytes | str | Path, threads: int | None = None):
    """An ONNX Runtime CPU ``InferenceSession`` on a file or bytes; ``threads`` intra-op threads
    (default: :func:`cpu_threads`)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or cpu_threads()
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # No busy-waiting between ops: spinning threads took twice the CPU per image (3.2 s against 1.8 s per
    # 1,000 images of the bundled model, batch 32) and were slower when the cores are shared, as they are
    # with the Predictor's face-finding worker processes.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    source = str(model) if isinstance(model, Path) else model
    return ort.InferenceSession(source, sess_options=opts, providers=["CPUExecutionProvider"])


def check_onnx_io(session, input_size: int, out_features: int, name: str | Path) -> None:
    """Refuse (``ValueError`` naming ``name``) an ONNX session whose graph is not what its spec describes:
    input :data:`INPUT_NAME` ``(B, 3, S, S)`` with ``S = input_size``, output :data:`OUTPUT_NAME` ``(B, K)``
    with ``K = out_features``. A dimension the graph leaves symbolic is not held against it."""
    inputs, outputs = session.get_inputs(), session.get_outputs()

    def fits(shape, expected: list[int | None]) -> bool:
        return len(shape) == len(expected) and all(e is None or not isinstance(d, int) or d == e
                                                   for d, e in zip(shape, expected, strict=True))

    def shown(args) -> str:
        return ", ".join(f"{a.name} {list(a.shape)}" for a in args) or "none"

    if len(inputs) != 1 or inputs[0].name != INPUT_NAME or not fits(inputs[0].shape, [None, 3, input_size,
                                                                                       input_size]):
        raise ValueError(f"{name}: the ONNX graph's input ({shown(inputs)}) does not fit its deepage spec, which "
                         f"needs {INPUT_NAME} [B, 3, {input_size}, {input_size}]")
    if not outputs or outputs[0].name != OUTPUT_NAME or not fits(outputs[0].shape, [None, out_features]):
        raise ValueError(f"{name}: the ONNX graph's output ({shown(outputs)}) does not fit its deepage spec, "
                         f"which needs {OUTPUT_NAME} [B, {out_features}]")


@dataclass(frozen=True)
class OnnxGraph:
    """An ``.onnx`` file from ``deepage export``, opened: ``session`` (ONNX Runtime), ``spec`` and ``record``,
    a checkpoint-like dict of its metadata (``spec``, ``split_fingerprint``, ``metrics``, ``age_gates``,
    ``weights_digest``, ``checkpoint_sha256``; the last two ``None`` for files written before they were
    stored)."""

    session: object
    spec: ModelSpec
    record: dict

    def run(self, x):
        """``x (B, 3, S, S)`` float32 NumPy → ``(B, K)`` float32 outputs."""
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]


def read_onnx_graph(path: str | Path, threads: int | None = None) -> OnnxGraph:
    """Open an ``.onnx`` file written by ``deepage export`` (``threads`` intra-op threads). A file that is not
    one, or whose metadata is malformed, raises ``ValueError`` naming it; its input and output shapes are
    checked against its spec before any prediction."""
    path = Path(path)
    try:
        session = onnx_session(path, threads)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise ValueError(f"{path} is not a readable ONNX model ({exc})") from exc
    meta = session.get_modelmeta().custom_metadata_map
    if SPEC_KEY not in meta:
        raise ValueError(f"{path} has no {SPEC_KEY!r} metadata: export it with `deepage export`")
    try:
        spec = ModelSpec.from_dict(json.loads(meta[SPEC_KEY]))
        width = out_features(spec.head, spec.scheme)
        reader_for(spec.head, spec.scheme, **spec.head_kwargs)  # an estimate or temperature it cannot answer by
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: its {SPEC_KEY!r} metadata is not a valid model spec "
                         f"({type(exc).__name__}: {exc})") from exc
    check_onnx_io(session, spec.preprocessing.input_size, width, path)
    try:
        gates = json.loads(meta.get(AGE_GATES_KEY) or "{}")
        if not isinstance(gates, dict):
            raise TypeError(f"a {type(gates).__name__}, not a table")
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path}: its {AGE_GATES_KEY!r} metadata is not a set of operating points "
                         f"({type(exc).__name__}: {exc})") from exc
    try:
        metrics = json.loads(meta.get("deepage_metrics") or "{}")
    except ValueError:
        metrics = {}  # informative only: a file whose metrics do not parse still answers
    record = {"spec": spec.to_dict(), "split_fingerprint": meta.get(FINGERPRINT_KEY, "unknown"),
              "metrics": metrics, "age_gates": gates, "weights_digest": meta.get(WEIGHTS_KEY),
              "checkpoint_sha256": meta.get(SOURCE_SHA256_KEY),
              "weight_storage": meta.get(WEIGHT_STORAGE_KEY, "float32")}
    return OnnxGraph(session, spec, record)
