"""Export a checkpoint to ONNX, with its spec in the file, checked against PyTorch before it is written.

The ONNX graph maps ``input (B, 3, H, W) float32`` (normalised, as :func:`deepage.preprocessing.prepare_batch`
makes it) to ``outputs (B, K)`` (the head's logits); ``B`` is dynamic. The model's :class:`ModelSpec`
travels as JSON in the file's ``metadata_props`` (key :data:`SPEC_KEY`), so
:meth:`deepage.inference.predictor.Predictor.from_checkpoint` can rebuild the same preprocessing and the
head's ``predict`` for an ``.onnx`` file alone. The minor/adult operating points stored in the checkpoint
(``deepage calibrate``) travel the same way, as JSON under :data:`AGE_GATES_KEY`.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..checkpoint import load_checkpoint, model_from_checkpoint, read_age_gates
from ..models.registry import AgeModel

__all__ = ["export_onnx", "check_onnx", "check_onnx_io", "model_to_onnx_bytes", "onnx_session", "SPEC_KEY",
           "FORMAT_KEY", "ONNX_FORMAT",
           "OPSET", "INPUT_NAME", "OUTPUT_NAME", "AGE_GATES_KEY"]

OPSET = 17
SPEC_KEY = "deepage_spec"
FORMAT_KEY = "deepage_format"
AGE_GATES_KEY = "deepage_age_gates"
ONNX_FORMAT = "deepage-onnx/1"
INPUT_NAME, OUTPUT_NAME = "input", "outputs"


def model_to_onnx_bytes(model: AgeModel, metadata: dict[str, str] | None = None, opset: int = OPSET) -> bytes:
    """The ONNX model (``input (B, 3, S, S)`` → ``outputs (B, K)``, dynamic ``B``) as bytes, with ``metadata``
    plus the model's spec (JSON under :data:`SPEC_KEY`) in its ``metadata_props``."""
    import onnx

    model = model.eval()
    size = model.spec.preprocessing.input_size
    dummy = torch.zeros(2, 3, size, size)
    buf = io.BytesIO()
    # The TorchScript exporter (dynamo=False) is deprecated but needs no extra package; the dynamo one needs
    # onnxscript. Its deprecation warning is silenced here rather than shown on every export.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        # Shape checks read as constants by the tracer: harmless for a fixed input size, and every export
        # is compared with PyTorch (check_onnx) before it is used.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(model, (dummy,), buf, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                          opset_version=opset, dynamo=False)
    proto = onnx.load_from_string(buf.getvalue())
    props = {FORMAT_KEY: ONNX_FORMAT, SPEC_KEY: json.dumps(model.spec.to_dict()),
             "deepage_version": __version__, **(metadata or {})}
    del proto.metadata_props[:]
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    return proto.SerializeToString()


def onnx_session(model: bytes | str | Path, threads: int | None = None):
    """An ONNX Runtime CPU ``InferenceSession`` on a file or bytes; ``threads`` intra-op threads
    (default: PyTorch's thread count, so both backends use the same cores)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or torch.get_num_threads()
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


def _max_difference(model: AgeModel, data: bytes, batch: int, seed: int = 0) -> float:
    size = model.spec.preprocessing.input_size
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        expected = model(x).numpy()
    got = onnx_session(data).run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
    if got.shape != expected.shape:
        raise RuntimeError(f"ONNX output shape {got.shape} differs from PyTorch's {expected.shape}")
    return float(np.abs(got - expected).max())


def check_onnx(model: AgeModel, data: bytes, name: str | Path, atol: float = 1e-4) -> None:
    """Run the exported graph ``data`` with ONNX Runtime on a random batch of 3 and compare with PyTorch: a
    largest absolute difference in the outputs above ``atol`` raises ``RuntimeError``."""
    diff = _max_difference(model, data, batch=3)
    if not diff <= atol:
        raise RuntimeError(f"ONNX export of {name} does not match PyTorch: largest output difference "
                           f"{diff:.3g} > {atol:g}")


def export_onnx(checkpoint: str | Path, output: str | Path, opset: int = OPSET, atol: float = 1e-4) -> Path:
    """Export ``checkpoint`` (a DeepAge ``.pt``) to ``output`` (``.onnx``) and return its path.

    Before writing, the exported graph is run with ONNX Runtime on a random batch of 3 and compared with
    PyTorch; a largest absolute difference in the outputs above ``atol`` raises ``RuntimeError`` (nothing is
    written). The file is written atomically.
    """
    checkpoint, output = Path(checkpoint), Path(output)
    ckpt = load_checkpoint(checkpoint)
    model = model_from_checkpoint(ckpt, name=checkpoint)
    metadata = {"deepage_checkpoint": checkpoint.name,
                "deepage_metrics": json.dumps(ckpt.get("metrics") or {}, default=float)}
    gates = read_age_gates(ckpt, checkpoint)  # only those chosen for these weights
    if gates:
        metadata[AGE_GATES_KEY] = json.dumps({str(age): g.to_dict() for age, g in gates.items()})
    data = model_to_onnx_bytes(model, metadata, opset=opset)
    check_onnx(model, data, checkpoint, atol)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, output)
    return output
