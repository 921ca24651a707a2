"""Distillation: an ensemble's averaged age distributions as the DEX head's soft targets (issue 15, item 4)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from deepage.checkpoint import model_from_checkpoint
from deepage.config import TrainConfig, apply_overrides
from deepage.data.loader import FaceBatches, load_split
from deepage.evaluation.predictions import collect_predictions
from deepage.models.heads import DexHead, gaussian_age_targets
from deepage.training.engine import online_teachers, teacher_distributions, train


def test_dex_loss_mixes_the_teacher_into_the_target():
    head = DexHead(8, l1_weight=0.0)
    outputs = torch.randn(3, 101, generator=torch.Generator().manual_seed(0))
    ages = torch.tensor([5.0, 30.0, 70.0])
    teacher = torch.softmax(torch.randn(3, 101, generator=torch.Generator().manual_seed(1)), dim=1)
    log_probs = outputs.log_softmax(dim=1)
    for weight in (0.0, 0.3, 1.0):
        target = (1 - weight) * gaussian_age_targets(ages, head.sigma) + weight * teacher
        expected = F.kl_div(log_probs, target, reduction="batchmean")
        assert head.loss(outputs, ages, teacher_probs=teacher, teacher_weight=weight) == pytest.approx(
            float(expected), abs=1e-6)
    assert head.loss(outputs, ages) == head.loss(outputs, ages, teacher_probs=teacher, teacher_weight=0.0)


def test_teachers_config_is_checked():
    config = apply_overrides(TrainConfig(), ["teachers=[a.pt, b.pt]", "teacher_weight=0.7"])
    assert config.teachers == ["a.pt", "b.pt"] and config.teacher_weight == 0.7
    with pytest.raises(ValueError, match="distillation needs head 'dex'"):
        TrainConfig(head="coral", teachers=["a.pt"])
    with pytest.raises(ValueError, match="teacher_weight"):
        TrainConfig(teacher_weight=1.5)
    with pytest.raises(ValueError, match="expected a list"):
        apply_overrides(TrainConfig(), ["teachers=a.pt"])


def test_student_trains_on_the_teachers_distributions(tiny_checkpoint, tiny_h5, tmp_path):
    config = TrainConfig(data=str(tiny_h5), model="mobilenet_v2_tiny", head="dex", input_size=32, epochs=1,
                         batch_size=16, out_dir=str(tmp_path), name="student", progress=False, num_threads=1,
                         teachers=[str(tiny_checkpoint), str(tiny_checkpoint)], teacher_weight=1.0)
    result = train(config)
    assert result.steps > 0
    train_data = load_split(tiny_h5, "train")
    probs = teacher_distributions(config, train_data, result.run_dir, torch.device("cpu"))  # from the cache
    assert (result.run_dir / "teachers.pt").is_file() and probs.shape == (len(train_data), 101)
    teacher = model_from_checkpoint(tiny_checkpoint)
    direct = collect_predictions(teacher, FaceBatches(train_data, teacher.spec.preprocessing, 64))
    # the mean of two copies of one teacher is that teacher, image by image
    assert torch.allclose(probs, torch.from_numpy(direct.age_probs).float(), atol=1e-6)


def test_online_teachers_see_the_students_batch(tiny_checkpoint, tiny_h5, tmp_path):
    config = TrainConfig(data=str(tiny_h5), model="mobilenet_v2_tiny", head="dex", input_size=32, epochs=1,
                         batch_size=16, out_dir=str(tmp_path), name="online", progress=False, num_threads=1,
                         teachers=[str(tiny_checkpoint)], teacher_online=True, teacher_weight=1.0)
    result = train(config)
    assert result.steps > 0 and (result.run_dir / "best.pt").is_file()
    assert not (result.run_dir / "teachers.pt").exists()  # nothing precomputed: each batch is taught afresh
    teacher = model_from_checkpoint(tiny_checkpoint)
    [online] = online_teachers(config, teacher.spec.preprocessing, torch.device("cpu"))
    assert not online.training and not any(p.requires_grad for p in online.parameters())
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(online(x), teacher(x))


def test_online_teachers_must_take_the_students_input(tiny_checkpoint):
    with pytest.raises(ValueError, match="teacher_online.: needs teachers"):
        TrainConfig(teacher_online=True)
    config = TrainConfig(model="mobilenet_v2_tiny", head="dex", teachers=[str(tiny_checkpoint)],
                         teacher_online=True)
    student = model_from_checkpoint(tiny_checkpoint).spec.preprocessing
    wider = type(student)(**{**student.to_dict(), "input_size": 48})
    with pytest.raises(ValueError, match=r"best\.pt takes .* teacher_online feeds both the same batch"):
        online_teachers(config, wider, torch.device("cpu"))
