"""Configs, the training engine (budgets, checkpoints, exact resume after SIGKILL) and 2-process DDP."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest
import torch
import yaml

from deepage.checkpoint import load_checkpoint, model_from_checkpoint
from deepage.cli import main as cli
from deepage.config import TrainConfig, apply_overrides, load_config
from deepage.training.engine import lr_at, train

REPO = Path(__file__).resolve().parents[1]


def test_config_layers_and_errors(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: cnn\nlr: 0.01\nhead: classes\nscheme: utk8\n")
    config = load_config(path, ["lr=0.5", "augment=false", "max_minutes=2.5", "input_size=none",
                                "head_kwargs={dropout: 0.2}"])
    assert (config.model, config.lr, config.augment, config.max_minutes) == ("cnn", 0.5, False, 2.5)
    assert config.input_size is None and config.head_kwargs == {"dropout": 0.2}
    assert config.epochs == TrainConfig().epochs  # untouched default
    with pytest.raises(ValueError, match=r"unknown config key\(s\) \['lrr'\]"):
        load_config(path, ["lrr=1"])
    path.write_text("epochz: 3\n")
    with pytest.raises(ValueError, match="epochz"):
        load_config(path)
    with pytest.raises(ValueError, match="expected an integer"):
        apply_overrides(TrainConfig(), ["epochs=2.5"])
    with pytest.raises(ValueError, match="expected true/false"):
        apply_overrides(TrainConfig(), ["augment=maybe"])
    with pytest.raises(ValueError, match="not one of"):
        apply_overrides(TrainConfig(), ["optimizer=lbfgs"])
    with pytest.raises(ValueError, match="needs scheme"):
        TrainConfig(head="classes")
    with pytest.raises(ValueError, match=r"'val' is part of train_split 'train\+val'"):
        TrainConfig(train_split="train+val")
    assert TrainConfig(train_split="train+val", val_split="").val_split == ""


def test_config_names_come_from_the_registries():
    with pytest.raises(ValueError, match=r"config field 'model': 'nope' is not one of .*'mobilenet_v2'"):
        TrainConfig(model="nope")
    with pytest.raises(ValueError, match=r"config field 'head': 'dexx' is not one of \('classes', 'dex', 'coral'\)"):
        TrainConfig(head="dexx")
    with pytest.raises(ValueError, match=r"no option\(s\) \['sigmaa'\]; valid: "
                                         r"\['dropout', 'estimate', 'l1_weight', 'sigma', 'temperature'\]"):
        TrainConfig(head_kwargs={"sigmaa": 9})
    with pytest.raises(ValueError, match="'scheme' applies to head 'classes' only"):
        TrainConfig(head="dex", scheme="utk14")
    with pytest.raises(ValueError, match="'label_smoothing' applies to head 'classes' only"):
        TrainConfig(head="coral", label_smoothing=0.1)
    with pytest.raises(ValueError, match="set 'class_weights' as its own config field"):
        TrainConfig(head="classes", scheme="utk8", head_kwargs={"class_weights": [1.0] * 8})


def test_lr_schedule_warmup_and_cosine():
    config = TrainConfig(lr=1.0, epochs=10, warmup_epochs=1)
    assert lr_at(config, 0, 10, 0) == pytest.approx(0.1)
    assert lr_at(config, 9, 10, 0) == pytest.approx(1.0)
    assert lr_at(config, 99, 10, 0) == pytest.approx(0.01, abs=1e-3)
    timed = TrainConfig(lr=1.0, epochs=1000, warmup_epochs=0, max_minutes=1)
    assert lr_at(timed, 5, 10, 30.0) == pytest.approx(0.505, abs=0.01)  # half the time budget: half-way down


def _config(tiny_h5, out, **kw) -> TrainConfig:
    base = dict(data=str(tiny_h5), model="mobilenet_v2_tiny", head="dex", input_size=32, epochs=3,
                batch_size=16, out_dir=str(out), name="run", progress=False, num_threads=1, seed=1,
                deterministic=True, ema_decay=0.9)
    base.update(kw)
    return TrainConfig(**base)


def test_train_writes_a_self_describing_run(tiny_h5, tmp_path):
    result = train(_config(tiny_h5, tmp_path, head="classes", scheme="utk8", class_weights=True,
                           label_smoothing=0.1, epochs=2))
    run = result.run_dir
    for name in ("config.yaml", "metrics.csv", "history.json", "last.pt", "best.pt", "summary.json"):
        assert (run / name).is_file(), name
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["scheme"] == "utk8" and saved["epochs"] == 2
    best = load_checkpoint(run / "best.pt")
    assert best["spec"]["name"] == "mobilenet_v2_tiny" and best["spec"]["scheme"] == "utk8"
    assert best["spec"]["preprocessing"]["input_size"] == 32 and best["spec"]["preprocessing"]["stored_size"] == 32
    assert len(best["split_fingerprint"]) == 16 and "utk8" in best["metrics"]
    assert {"deepage", "torch", "timm"} <= set(best["versions"])
    # label smoothing and class weights are part of the head's spec, not patched onto the built model
    head_kwargs = best["spec"]["head_kwargs"]
    assert head_kwargs["label_smoothing"] == 0.1 and len(head_kwargs["class_weights"]) == 8
    assert max(head_kwargs["class_weights"]) > 1 > min(head_kwargs["class_weights"])  # rare classes weigh more
    rebuilt = model_from_checkpoint(run / "best.pt").head
    assert rebuilt.label_smoothing == 0.1
    assert rebuilt.class_weights.tolist() == pytest.approx(head_kwargs["class_weights"])
    history = json.loads((run / "history.json").read_text())
    assert [round(h["epoch"]) for h in history] == [1, 2]
    model = model_from_checkpoint(run / "best.pt")
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 8)
    assert result.stopped_by == "epochs"


def test_init_from_starts_from_a_checkpoint_at_another_input_size(tiny_h5, tmp_path):
    first = train(_config(tiny_h5, tmp_path, epochs=1, name="first"))
    start = load_checkpoint(first.run_dir / "best.pt")["state_dict"]
    # lr 0 and no EMA: the weights must come out exactly as they went in, at a new input size.
    second = train(_config(tiny_h5, tmp_path, epochs=1, name="second", input_size=40, lr=0.0, ema_decay=0.0,
                           init_from=str(first.run_dir / "best.pt")))
    tuned = load_checkpoint(second.run_dir / "best.pt")
    assert tuned["spec"]["preprocessing"]["input_size"] == 40
    for key, value in start.items():
        if value.dtype.is_floating_point and "running" not in key:
            assert torch.equal(value, tuned["state_dict"][key]), key
    with pytest.raises(ValueError, match="init_from.*head"):
        train(_config(tiny_h5, tmp_path, epochs=1, name="third", head="coral",
                      init_from=str(first.run_dir / "best.pt")))


def test_budgets_stop_training(tiny_h5, tmp_path):
    result = train(_config(tiny_h5, tmp_path, max_steps=3, name="steps"))
    assert result.steps == 3 and result.stopped_by == "max_steps"
    result = train(_config(tiny_h5, tmp_path, max_minutes=0.0001, name="time"))
    assert result.steps == 1 and result.stopped_by == "max_minutes"
    assert (result.run_dir / "last.pt").is_file()


def test_resume_after_sigkill_matches_uninterrupted_run(tiny_h5, tmp_path):
    """A run killed (SIGKILL) after its first epoch and resumed ends with the same weights as a run
    that was never interrupted."""
    reference = train(_config(tiny_h5, tmp_path / "a"))
    config_path = tmp_path / "cfg.yaml"
    config_path.write_text(yaml.safe_dump({k: v for k, v in vars(_config(tiny_h5, tmp_path / "b")).items()}))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "deepage", "train", "--config", str(config_path)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    last = tmp_path / "b" / "run" / "last.pt"  # written atomically after each epoch
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not last.exists():
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = load_checkpoint(tmp_path / "b" / "run" / "last.pt")["train_state"]
    assert state["epoch"] < 3, "the run finished before it could be killed"
    assert cli(["train", "--resume", str(tmp_path / "b" / "run")]) == 0
    a = load_checkpoint(reference.run_dir / "last.pt")
    b = load_checkpoint(tmp_path / "b" / "run" / "last.pt")
    assert b["train_state"]["step"] == a["train_state"]["step"]
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, rtol=0, atol=0, msg=key)
    assert [h["train_loss"] for h in b["train_state"]["history"]] == \
        [h["train_loss"] for h in a["train_state"]["history"]]


# The keys of last.pt as the engine wrote them before TrainState existed (runs in progress must resume).
OLD_LAST_KEYS = {"format", "versions", "spec", "state_dict", "split_fingerprint", "metrics", "config", "optimizer",
                 "ema_state", "rng", "train_state"}
OLD_TRAIN_STATE_KEYS = {"epoch", "step", "batch_in_epoch", "train_seconds", "images_seen", "best_score",
                        "bad_epochs", "history"}


def test_a_last_pt_in_the_old_layout_resumes_mid_epoch(tiny_h5, tmp_path):
    """A run cut after 2 steps (mid-epoch), its last.pt reduced to the old layout and resumed, ends with the
    weights of an uninterrupted run. A constant schedule keeps max_steps out of the learning rate."""
    reference = train(_config(tiny_h5, tmp_path / "a", schedule="constant", epochs=2))
    cut = train(_config(tiny_h5, tmp_path / "b", schedule="constant", epochs=2, max_steps=2))
    assert cut.stopped_by == "max_steps"
    last = cut.run_dir / "last.pt"
    ckpt = load_checkpoint(last)
    assert set(ckpt) == OLD_LAST_KEYS and set(ckpt["train_state"]) == OLD_TRAIN_STATE_KEYS
    assert ckpt["train_state"]["batch_in_epoch"] == 2 and ckpt["train_state"]["epoch"] == 0
    old = {k: ckpt[k] for k in OLD_LAST_KEYS}
    old["train_state"] = {k: ckpt["train_state"][k] for k in OLD_TRAIN_STATE_KEYS}
    torch.save(old, last)  # exactly the old layout, nothing this version adds
    resumed = train(resume=cut.run_dir, overrides=("max_steps=null",))
    assert resumed.stopped_by == "epochs" and resumed.steps == reference.steps
    a, b = load_checkpoint(reference.run_dir / "last.pt"), load_checkpoint(last)
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, rtol=0, atol=0, msg=key)


def test_train_one_epoch_and_validate_are_importable_steps(tiny_h5, tmp_path, monkeypatch):
    from deepage.data.loader import FaceBatches, load_split
    from deepage.training import engine

    config = _config(tiny_h5, tmp_path, ema_decay=0.0, max_steps=2, augment=False)
    data = load_split(tiny_h5, "train")
    model = engine.build_model(config, data.stored_size)
    ctx = engine.TrainContext(config=config, model=model, train_model=model, ema=None, device=torch.device("cpu"),
                              optimizer=engine.make_optimizer(config, model), run_dir=tmp_path,
                              split_fingerprint=data.fingerprint)
    state = engine.TrainState()
    batches = FaceBatches(data, model.spec.preprocessing, 16, shuffle=True)
    row, stopped_by = engine.train_one_epoch(ctx, batches, state)
    assert stopped_by == "max_steps" and (state.step, state.batch_in_epoch, state.epoch) == (2, 2, 0)
    assert row["step"] == 2 and row["train_loss"] > 0 and not (tmp_path / "last.pt").exists()
    assert set(row) == {"epoch", "step", "train_loss", "lr", "train_seconds", "train_img_per_s"}
    # Inside an epoch, last.pt is written every CHECKPOINT_MINUTES (here: after every step but the last,
    # where the budget stops the epoch first).
    monkeypatch.setattr(engine, "CHECKPOINT_MINUTES", 0.0)
    ctx.config = dataclasses.replace(config, max_steps=4)
    engine.train_one_epoch(ctx, batches, state)
    assert load_checkpoint(tmp_path / "last.pt")["train_state"]["step"] == 3
    metrics = engine.validate(model, load_split(tiny_h5, "val"), config, torch.device("cpu"))
    assert metrics["n"] == len(load_split(tiny_h5, "val")) and metrics["age"]["mae"] > 0


def test_resume_needs_a_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="no last.pt"):
        train(resume=tmp_path)


def test_torchrun_two_processes(tiny_h5, tmp_path):
    """DistributedDataParallel with gloo: 2 CPU ranks, each on its shard, only rank 0 writes."""
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [str(torchrun), "--nproc_per_node=2", "--master_port=29517", "-m", "deepage", "train",
           f"data={tiny_h5}", "model=mobilenet_v2_tiny", "input_size=32", "epochs=2", "batch_size=8",
           f"out_dir={tmp_path}", "name=ddp", "progress=false", "num_threads=1"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["world_size"] == 2
    with h5py.File(tiny_h5) as f:
        n_train, n_val = int((f["split"][:] == 0).sum()), int((f["split"][:] == 1).sum())
    assert summary["steps"] == 2 * ((n_train // 2) // 8)  # each rank walks its half of the data
    best = load_checkpoint(tmp_path / "ddp" / "best.pt")
    assert best["metrics"]["n"] == n_val  # the whole validation split, gathered from both ranks


def test_swa_schedule_holds_its_rate_after_the_cosine():
    config = TrainConfig(lr=1.0, epochs=10, warmup_epochs=0, swa_epochs=4, swa_lr=0.3)
    assert lr_at(config, 0, 10, 0) == pytest.approx(1.0)
    assert lr_at(config, 59, 10, 0) == pytest.approx(0.01, abs=2e-3)  # the cosine ends where SWA begins
    assert lr_at(config, 60, 10, 0) == lr_at(config, 99, 10, 0) == 0.3
    assert lr_at(dataclasses.replace(config, swa_lr=None), 70, 10, 0) == 1.0
    with pytest.raises(ValueError, match="swa_epochs"):
        TrainConfig(epochs=3, swa_epochs=4)


def test_swa_averages_the_ends_of_its_epochs_across_a_resume(tiny_h5, tmp_path):
    # 3 epochs, the last 2 averaged; stopped by a step budget at the end of epoch 2, then resumed
    from deepage.data.loader import load_split

    run = _config(tiny_h5, tmp_path, epochs=3, swa_epochs=2, ema_decay=0.0, name="swa")
    steps_per_epoch = len(load_split(tiny_h5, "train")) // run.batch_size  # drop_last
    stopped = train(dataclasses.replace(run, max_steps=2 * steps_per_epoch))
    assert stopped.stopped_by == "max_steps"
    at_epoch_2 = load_checkpoint(stopped.run_dir / "last.pt")
    assert at_epoch_2["swa_state"]["n_averaged"] == 1
    result = train(resume=stopped.run_dir, overrides=("max_steps=null",))
    assert result.stopped_by == "epochs"
    last = load_checkpoint(result.run_dir / "last.pt")
    swa = last["swa_state"]
    assert swa["n_averaged"] == 2
    for key, value in last["state_dict"].items():
        if value.dtype.is_floating_point:
            expected = (at_epoch_2["state_dict"][key] + value) / 2
            assert torch.allclose(swa[f"module.{key}"], expected, atol=1e-6), key
    history = json.loads((result.run_dir / "history.json").read_text())
    assert [h["swa_epochs_averaged"] for h in history] == [0, 1, 2]


def test_mixup_blends_images_and_the_two_labels_losses():
    from deepage.models.heads import DexHead
    from deepage.training.engine import Mixup

    head = DexHead(4)
    outputs, ages = torch.randn(3, 101), torch.tensor([5.0, 30.0, 70.0])
    teacher = torch.softmax(torch.randn(3, 101), dim=1)
    partner = torch.tensor([2, 0, 1])
    x = torch.arange(3.0).view(3, 1, 1, 1).expand(3, 3, 2, 2)
    mix = Mixup(lam=0.25, partner=partner)
    blended = 0.25 * torch.tensor([0.0, 1, 2]) + 0.75 * torch.tensor([2.0, 0, 1])
    assert torch.allclose(mix.images(x)[:, 0, 0, 0], blended)

    def loss(a, **t):
        return head.loss(outputs, a, **t)

    targets = {"teacher_probs": teacher, "teacher_weight": 0.5}
    expected = 0.25 * head.loss(outputs, ages, **targets) + 0.75 * head.loss(
        outputs, ages[partner], teacher_probs=teacher[partner], teacher_weight=0.5)
    assert torch.allclose(mix.loss(loss, ages, {"teacher_probs": teacher}, teacher_weight=0.5), expected)
    # a teacher that saw the blended images is not permuted
    online = 0.25 * head.loss(outputs, ages, **targets) + 0.75 * head.loss(outputs, ages[partner], **targets)
    assert torch.allclose(mix.loss(loss, ages, **targets), online)
    assert torch.allclose(Mixup(lam=1.0, partner=partner).loss(loss, ages), head.loss(outputs, ages))
    drawn = Mixup.draw(0.4, 8)
    assert 0 <= drawn.lam <= 1 and sorted(drawn.partner.tolist()) == list(range(8))
    off = Mixup.draw(0.0, 3)  # mixup off: the batch and the loss as they are
    assert off.images(x) is x and torch.equal(off.loss(loss, ages, **targets), head.loss(outputs, ages, **targets))


def test_mixup_trains_and_is_checked(tiny_h5, tmp_path):
    plain = train(_config(tiny_h5, tmp_path, epochs=1, name="plain", ema_decay=0.0))
    mixed = train(_config(tiny_h5, tmp_path, epochs=1, name="mixed", ema_decay=0.0, mixup_alpha=0.4, aux_weight=0.1))
    loss_plain = json.loads((plain.run_dir / "history.json").read_text())[0]["train_loss"]
    loss_mixed = json.loads((mixed.run_dir / "history.json").read_text())[0]["train_loss"]
    assert loss_mixed != loss_plain and loss_mixed == loss_mixed  # trained on other targets, and not NaN
    with pytest.raises(ValueError, match="mixup_alpha"):
        TrainConfig(mixup_alpha=-1)


@pytest.mark.slow
def test_compiled_training_matches_the_plain_run_and_saves_plain_names(tiny_h5, tmp_path):
    """``compile: true`` compiles the training forward pass only: the same loss as the plain run (to float
    tolerance: the fused kernels round differently), and checkpoints whose names are the module's own."""
    # One step: its loss is the first batch's, from the same weights, so only the kernels' rounding differs.
    # Over three steps the optimizer compounds it (0.4 % on an AVX-512 EPYC against 1e-3 on an AMX Xeon).
    same = dict(max_steps=1, ema_decay=0.0)
    plain = train(_config(tiny_h5, tmp_path, name="plain", **same))
    compiled = train(_config(tiny_h5, tmp_path, name="compiled", compile=True, **same))
    losses = [json.loads((r.run_dir / "history.json").read_text())[-1]["train_loss"] for r in (plain, compiled)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-3)
    for name in ("best.pt", "last.pt"):
        weights = load_checkpoint(compiled.run_dir / name)["state_dict"]
        assert not any("_orig_mod" in key for key in weights), name
        assert weights.keys() == load_checkpoint(plain.run_dir / name)["state_dict"].keys()
    assert model_from_checkpoint(compiled.run_dir / "best.pt")(torch.zeros(2, 3, 32, 32)).shape[0] == 2
