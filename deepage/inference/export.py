"""Export a checkpoint to ONNX, with its spec in the file, checked against PyTorch before it is written.

The ONNX graph maps ``input (B, 3, H, W) float32`` (normalised, as :func:`deepage.preprocessing.prepare_batch`
makes it) to ``outputs (B, K)`` (the head's logits); ``B`` is dynamic. The model's :class:`ModelSpec`
travels as JSON in the file's ``metadata_props`` (key :data:`SPEC_KEY`), so
:meth:`deepage.inference.predictor.Predictor.from_checkpoint` can rebuild the same preprocessing and the
head's ``predict`` for an ``.onnx`` file alone. The minor/adult operating points stored in the checkpoint
(``deepage calibrate``) travel the same way, as JSON under :data:`AGE_GATES_KEY`.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..cache import cache_dir
from ..checkpoint import int8_per_channel, load_checkpoint, model_from_checkpoint, read_age_gates, weights_digest
from ..models.registry import AgeModel
from .onnx_graph import (
    AGE_GATES_KEY,
    FINGERPRINT_KEY,
    FORMAT_KEY,
    INPUT_NAME,
    ONNX_FORMAT,
    OUTPUT_NAME,
    SOURCE_SHA256_KEY,
    SPEC_KEY,
    WEIGHT_STORAGE_KEY,
    WEIGHTS_KEY,
    OnnxGraph,
    check_onnx_io,
    file_sha256,
    onnx_session,
    read_onnx_graph,
)

__all__ = ["export_onnx", "check_onnx", "check_onnx_io", "model_to_onnx_bytes", "onnx_session", "SPEC_KEY",
           "checked_onnx_bytes", "onnx_cache_dir", "quantize_int8", "WEIGHTS_KEY", "FINGERPRINT_KEY",
           "INT8_MAX_AGE_CHANGE", "OnnxAgeModel", "onnx_model_and_record", "write_onnx_metadata",
           "FORMAT_KEY", "ONNX_FORMAT", "SOURCE_SHA256_KEY",
           "OPSET", "GRAPH_VERSION", "PReLUAsConvs", "export_form", "INPUT_NAME", "OUTPUT_NAME", "AGE_GATES_KEY",
           "store_weights_int8", "ONNX_WEIGHT_STORAGES", "WEIGHT_STORAGE_KEY"]

log = logging.getLogger(__name__)

OPSET = 17
ONNX_WEIGHT_STORAGES = ("float32", "int8")
"""How ``deepage export --weights`` may store a float graph's weights (:func:`store_weights_int8`)."""
INT8_MAX_AGE_CHANGE = 0.5
"""An int8 graph whose ages differ from the float graph's by more than this (mean over the calibration
images, in years) is refused."""


GRAPH_VERSION = 2
"""Bumped when the exported graph's form changes (2: PReLU as depthwise convolutions), so that cached
exports of an unchanged checkpoint are rebuilt."""


class PReLUAsConvs(torch.nn.Module):
    """``PReLU(x) = a·x + (1 - a)·relu(x)`` on ``(B, C, H, W)``, written as two depthwise 1x1 convolutions
    and an add, for ONNX export only (exact: the same function).

    Why: ONNX Runtime's CPU layout pass (NCHWc, on AVX-512 hosts) keeps Conv, Relu and Add in its blocked
    layout but not PRelu, so every PReLU between two convolutions costs a reorder out of that layout and
    back. On ``arcface_mbf`` (a PReLU after most convolutions) the float graph took 13.7 against 18.1 ms a
    face on one thread (batch 32; docs/RESULTS.md). A per-channel PReLU only; other inputs use ``F.prelu``."""

    def __init__(self, prelu: torch.nn.PReLU) -> None:
        super().__init__()
        slope = prelu.weight.detach().float().reshape(-1, 1, 1, 1)  # (C, 1, 1, 1): one filter per channel
        self.register_buffer("slope", slope)
        self.register_buffer("rest", 1.0 - slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.slope.shape[0]:
            return torch.nn.functional.prelu(x, self.slope.flatten())
        conv = torch.nn.functional.conv2d
        return conv(x, self.slope, groups=x.shape[1]) + conv(torch.relu(x), self.rest, groups=x.shape[1])


def export_form(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` itself when it has no per-channel ``nn.PReLU``, else a copy whose PReLUs are
    :class:`PReLUAsConvs`: the form :func:`model_to_onnx_bytes` exports."""
    import copy

    if not any(isinstance(m, torch.nn.PReLU) and m.num_parameters > 1 for m in model.modules()):
        return model
    model = copy.deepcopy(model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.PReLU) and child.num_parameters > 1:
                setattr(parent, name, PReLUAsConvs(child))
    return model


def model_to_onnx_bytes(model: AgeModel, metadata: dict[str, str] | None = None, opset: int = OPSET) -> bytes:
    """The ONNX model (``input (B, 3, S, S)`` → ``outputs (B, K)``, dynamic ``B``) as bytes, with ``metadata``
    plus the model's spec (JSON under :data:`SPEC_KEY`) in its ``metadata_props``. Per-channel PReLUs are
    exported as depthwise convolutions (:class:`PReLUAsConvs`)."""
    import onnx

    spec = model.spec
    model = export_form(model.eval())
    size = spec.preprocessing.input_size
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
    props = {FORMAT_KEY: ONNX_FORMAT, SPEC_KEY: json.dumps(spec.to_dict()),
             "deepage_version": __version__, **(metadata or {})}
    del proto.metadata_props[:]
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    return proto.SerializeToString()


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


def quantize_int8(data: bytes, calibration: np.ndarray, name: str | Path = "model") -> tuple[bytes, float]:
    """The float ONNX graph ``data`` quantised to int8 by ONNX Runtime (static, QDQ: per-channel int8 weights,
    uint8 activations whose ranges are calibrated on ``calibration``, ``(N, 3, S, S)`` float32 inputs as
    :func:`~deepage.preprocessing.prepare_batch` makes them, a few hundred training images), and the mean
    absolute change of the expected age (DEX and CORAL heads: the head's ``predict``) on those images, in
    years. A change above :data:`INT8_MAX_AGE_CHANGE` raises ``RuntimeError``. The metadata is kept.

    On this project's 2-core host the bundled ensemble ran in 0.42x the float graph's time per face
    (1.72 ms against 4.11, batch 32, one thread) with a validation MAE 0.011 years higher
    (``scripts/int8_probe.py``)."""
    import tempfile

    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from ..models.registry import ModelSpec

    calibration = np.ascontiguousarray(calibration, np.float32)

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{INPUT_NAME: calibration[i:i + 16]} for i in range(0, len(calibration), 16)])

        def get_next(self):
            return next(self.batches, None)

    with tempfile.TemporaryDirectory() as tmp:
        fp32, prepared, int8 = (Path(tmp) / f for f in ("fp32.onnx", "prepared.onnx", "int8.onnx"))
        fp32.write_bytes(data)
        quant_pre_process(str(fp32), str(prepared))  # shape inference and graph clean-up, as ORT advises
        # reduce_range: 7-bit weights. On x86 CPUs without VNNI (AVX2 only, e.g. AMD EPYC before Zen 4) ONNX
        # Runtime multiplies uint8 by int8 in pairs summed into int16, which saturates with full-range
        # weights: the bundled ensemble's test MAE was 4.62 there against 4.52 in float (4.56 against
        # 4.58 on a VNNI Xeon, where 8 bits were fine).
        quantize_static(str(prepared), str(int8), Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
                        reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        proto = onnx.load(str(int8))
    # quant_pre_process keeps the metadata on some versions and not on others: set it from the source
    source = onnx.load_from_string(data)
    del proto.metadata_props[:]
    proto.metadata_props.extend(source.metadata_props)
    out = proto.SerializeToString()

    spec = ModelSpec.from_dict(json.loads({p.key: p.value for p in source.metadata_props}[SPEC_KEY]))

    def ages(graph: bytes) -> np.ndarray:
        model = OnnxAgeModel(onnx_session(graph), spec)
        logits = torch.cat([model(torch.from_numpy(calibration[i:i + 64])) for i in range(0, len(calibration), 64)])
        answer = model.predict(logits)
        return answer.age.numpy() if answer.age is not None else answer.class_probs[spec.scheme].argmax(1)

    change = float(np.abs(ages(out) - ages(data)).mean())
    if not change <= INT8_MAX_AGE_CHANGE:
        raise RuntimeError(f"int8 quantisation of {name} changes its answers too much: mean age change "
                           f"{change:.2f} years on {len(calibration)} calibration images "
                           f"(> {INT8_MAX_AGE_CHANGE})")
    return out, change


_WEIGHT_INPUTS = {"Conv": 1, "Gemm": 1, "MatMul": 1}
"""Node types whose weight (input at this position) :func:`store_weights_int8` stores as int8."""


def _output_axis(node, weight: np.ndarray) -> int:
    """The axis of ``weight`` that runs over ``node``'s output channels: 0 for Conv and Gemm with
    ``transB=1`` (``(out, in, ...)``, as PyTorch's Linear exports), 1 for MatMul and Gemm without it."""
    if node.op_type == "Conv":
        return 0
    trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
    return 0 if node.op_type == "Gemm" and trans_b else 1


def store_weights_int8(data: bytes) -> bytes:
    """The ONNX graph ``data`` with its convolution and linear weights stored as int8
    (:func:`~deepage.checkpoint.int8_per_channel`, as ``deepage ensemble --weights int8`` stores them) and
    turned back into float32 by a ``Cast`` and a ``Mul`` in the graph: about a quarter of the file, the same
    float arithmetic.

    Why not ``DequantizeLinear``: ONNX Runtime's constant folding leaves that op alone (it keeps QDQ
    patterns for its int8 kernels), so the weights were dequantised on every call and the convolutions kept
    out of its fused, blocked forms; ``Cast`` and ``Mul`` on initializers are folded once, when the session
    starts, into a plain float graph. Weights with one value per output channel (PReLU slopes written as
    convolutions) stay float: int8 would not make them smaller. Metadata is kept."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    proto = onnx.load_from_string(data)
    graph = proto.graph
    initializers = {init.name: init for init in graph.initializer}
    done: set[str] = set()
    dequantise = []
    for node in graph.node:
        position = _WEIGHT_INPUTS.get(node.op_type)
        if position is None or len(node.input) <= position:
            continue
        name = node.input[position]
        init = initializers.get(name)
        if init is None or name in done or init.data_type != TensorProto.FLOAT or len(init.dims) < 2:
            continue
        weight = numpy_helper.to_array(init)
        axis = _output_axis(node, weight)
        if weight.size < 2 * weight.shape[axis]:
            continue
        q, scale = int8_per_channel(torch.from_numpy(np.moveaxis(weight, axis, 0).copy()))
        q = np.moveaxis(q.numpy(), 0, axis)
        shape = [1] * weight.ndim
        shape[axis] = -1
        scale = scale.numpy().reshape(shape)
        graph.initializer.remove(init)
        graph.initializer.extend([numpy_helper.from_array(q, f"{name}.int8"),
                                  numpy_helper.from_array(scale, f"{name}.scale")])
        dequantise += [helper.make_node("Cast", [f"{name}.int8"], [f"{name}.float"], to=TensorProto.FLOAT),
                       helper.make_node("Mul", [f"{name}.float", f"{name}.scale"], [name])]
        done.add(name)
    nodes = [*dequantise, *graph.node]  # initializers only: ahead of every node keeps the order topological
    del graph.node[:]
    graph.node.extend(nodes)
    return proto.SerializeToString()


def _int8_weights_model(model: AgeModel) -> AgeModel:
    """A copy of ``model`` whose convolution and linear weights are rounded as int8 storage rounds them
    (:func:`~deepage.checkpoint.int8_round_trip`; the other tensors as they were): what a graph written by
    :func:`store_weights_int8` computes, up to float rounding (per-channel scales are unchanged by the
    BatchNorm folding of the export: it scales whole output channels)."""
    import copy

    from ..checkpoint import int8_round_trip

    rounded = copy.deepcopy(model)
    state = rounded.state_dict()
    # int8_round_trip hands the other tensors back as float16: those keep their own values here
    rounded.load_state_dict({**state, **{k: v for k, v in int8_round_trip(state).items()
                                         if v.dtype == state[k].dtype}})
    return rounded.eval()


def export_onnx(checkpoint: str | Path, output: str | Path, opset: int = OPSET, atol: float = 1e-4,
                int8_calibration: np.ndarray | None = None, weights: str = "float32") -> Path:
    """Export ``checkpoint`` (a DeepAge ``.pt``) to ``output`` (``.onnx``) and return its path.

    Before writing, the exported graph is run with ONNX Runtime on a random batch of 3 and compared with
    PyTorch; a largest absolute difference in the outputs above ``atol`` raises ``RuntimeError`` (nothing is
    written). ``int8_calibration``: ``(N, 3, S, S)`` preprocessed training images; the float graph is then
    quantised to int8 on them (:func:`quantize_int8`, checked there) and that is written. ``weights``:
    ``"float32"``, or ``"int8"``: a float graph whose convolution and linear weights are stored as int8
    (:func:`store_weights_int8`; checked against PyTorch with the weights rounded the same way); an int8
    graph has int8 weights already, so it takes only ``"float32"``. The file carries
    the spec, the stored operating points, the weights' digest, the checkpoint file's SHA-256 and the split
    fingerprint. Written atomically.
    """
    if weights not in ONNX_WEIGHT_STORAGES:
        raise ValueError(f"weights must be one of {ONNX_WEIGHT_STORAGES}, got {weights!r}")
    if weights == "int8" and int8_calibration is not None:
        raise ValueError("an int8 graph stores its weights as int8 already: give weights='int8' or an int8 "
                         "calibration, not both")
    checkpoint, output = Path(checkpoint), Path(output)
    ckpt = load_checkpoint(checkpoint)
    model = model_from_checkpoint(ckpt, name=checkpoint)
    metadata = {"deepage_checkpoint": checkpoint.name, SOURCE_SHA256_KEY: file_sha256(checkpoint),
                "deepage_metrics": json.dumps(ckpt.get("metrics") or {}, default=float),
                WEIGHTS_KEY: weights_digest(ckpt["state_dict"]),
                FINGERPRINT_KEY: str(ckpt.get("split_fingerprint", "unknown"))}
    gates = read_age_gates(ckpt, checkpoint)  # only those chosen for these weights
    if gates:
        metadata[AGE_GATES_KEY] = json.dumps({str(age): g.to_dict() for age, g in gates.items()})
    if weights == "int8":
        metadata[WEIGHT_STORAGE_KEY] = "int8"
    data = model_to_onnx_bytes(model, metadata, opset=opset)
    check_onnx(model, data, checkpoint, atol)
    if weights == "int8":
        data = store_weights_int8(data)
        check_onnx(_int8_weights_model(model), data, f"{checkpoint} (int8 weights)", atol)
    if int8_calibration is not None:
        data, _ = quantize_int8(data, int8_calibration, checkpoint)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, output)
    return output


def onnx_cache_dir() -> Path:
    """Where :func:`checked_onnx_bytes` keeps exported graphs: ``$DEEPAGE_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/deepage/onnx``, else ``~/.cache/deepage/onnx``."""
    return cache_dir("onnx")


def _cache_key(checkpoint: Path, opset: int) -> str:
    """The checkpoint file's SHA-256 with the versions that shape the graph: the same key, the same graph."""
    import onnx

    key = (f"{file_sha256(checkpoint)}|{__version__}|torch {torch.__version__}|onnx {onnx.__version__}"
           f"|opset {opset}|graph {GRAPH_VERSION}")
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def checked_onnx_bytes(model: AgeModel, checkpoint: str | Path, opset: int = OPSET) -> bytes:
    """``model`` (loaded from ``checkpoint``) as ONNX bytes, checked against PyTorch (:func:`check_onnx`).

    The checked graph is kept in :func:`onnx_cache_dir` under the checkpoint's hash, so the next process
    that loads the same file skips the export and the check (about 2 s of a fresh ``deepage predict``
    for the bundled model). A cache that cannot be read or written is passed over (logged at debug level);
    a cached file ONNX Runtime cannot open is exported again."""
    checkpoint = Path(checkpoint)
    try:
        cached = onnx_cache_dir() / f"{_cache_key(checkpoint, opset)}.onnx"
    except OSError as exc:
        log.debug("ONNX cache: cannot hash %s (%s)", checkpoint, exc)
        cached = None
    if cached is not None and cached.is_file():
        try:
            data = cached.read_bytes()
            onnx_session(data, threads=1)  # a truncated or foreign file fails here, not in the caller
            return data
        except Exception as exc:  # noqa: BLE001 - any unreadable cache entry is simply rebuilt
            log.debug("ONNX cache: %s is unusable (%s); exporting again", cached, exc)
    data = model_to_onnx_bytes(model.cpu(), opset=opset)
    check_onnx(model, data, checkpoint)
    if cached is not None:
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_name(f".{cached.name}.tmp{os.getpid()}")
            tmp.write_bytes(data)
            os.replace(tmp, cached)
        except OSError as exc:
            log.debug("ONNX cache: cannot write %s (%s)", cached, exc)
    return data


class OnnxAgeModel(torch.nn.Module):
    """An exported ``.onnx`` file (float or int8) behind the interface evaluation uses: ``spec``,
    ``forward`` ``(B, 3, S, S)`` → ``(B, K)`` logits (run by ONNX Runtime), ``predict`` and ``read`` (the
    head's, rebuilt from the spec: it has no weights that answering uses). So ``deepage evaluate`` scores
    what ships."""

    def __init__(self, session, spec) -> None:
        from ..models.heads import create_head

        super().__init__()
        self.session, self.spec = session, spec
        self.head = create_head(spec.head, 1, scheme=spec.scheme, **spec.head_kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = np.ascontiguousarray(x.detach().float().cpu().numpy())
        return torch.from_numpy(self.session.run([OUTPUT_NAME], {INPUT_NAME: x})[0])

    def predict(self, outputs: torch.Tensor):
        return self.head.predict(outputs)

    def read(self, outputs: np.ndarray):
        return self.head.read(outputs)


def onnx_model_and_record(path: str | Path, threads: int | None = None) -> tuple[OnnxAgeModel, dict]:
    """An ``.onnx`` file written by ``deepage export`` as an :class:`OnnxAgeModel` (``threads`` intra-op
    threads) and its record (:class:`~deepage.inference.onnx_graph.OnnxGraph`'s: ``spec``,
    ``split_fingerprint``, ``metrics``, ``age_gates``, ``weights_digest``, ...), so
    :func:`~deepage.checkpoint.read_age_gates` checks its operating points as it checks a checkpoint's.
    A file that is not one, or whose metadata is malformed, raises ``ValueError`` naming it."""
    graph: OnnxGraph = read_onnx_graph(path, threads)
    try:
        model = OnnxAgeModel(graph.session, graph.spec)
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: its {SPEC_KEY!r} metadata is not a valid model spec "
                         f"({type(exc).__name__}: {exc})") from exc
    return model, graph.record


def write_onnx_metadata(source: str | Path, output: str | Path, entries: dict[str, str]) -> Path:
    """``source`` (an ``.onnx`` file) with ``entries`` set in its metadata, written atomically to ``output``
    (may be ``source``): how ``deepage calibrate`` stores an exported graph's own operating points."""
    import onnx

    proto = onnx.load(str(source))
    kept = [(p.key, p.value) for p in proto.metadata_props if p.key not in entries]
    del proto.metadata_props[:]
    for key, value in [*kept, *entries.items()]:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    output = Path(output)
    tmp = output.with_name(f".{output.name}.tmp{os.getpid()}")
    tmp.write_bytes(proto.SerializeToString())
    os.replace(tmp, output)
    return output
