"""Gender and race as extra training targets (issue 15, item 4: ``aux_weight``)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from deepage.checkpoint import load_checkpoint
from deepage.config import TrainConfig
from deepage.training.engine import train
from deepage.training.multitask import NUM_GENDERS, aux_loss


def test_aux_loss_is_the_two_cross_entropies_and_skips_unknown_labels():
    logits = torch.randn(4, 7, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([[0, 2], [1, -1], [-1, 4], [1, 0]])
    expected = (F.cross_entropy(logits[[0, 1, 3], :NUM_GENDERS], labels[[0, 1, 3], 0])
                + F.cross_entropy(logits[[0, 2, 3], NUM_GENDERS:], labels[[0, 2, 3], 1]))
    assert float(aux_loss(logits, labels)) == pytest.approx(float(expected), abs=1e-6)
    # a batch with no known label adds nothing instead of NaN
    assert float(aux_loss(logits, torch.full((4, 2), -1))) == 0.0


def test_aux_weight_is_checked():
    with pytest.raises(ValueError, match="aux_weight"):
        TrainConfig(aux_weight=-0.1)


def _config(tiny_h5, tmp_path, name: str, **kw) -> TrainConfig:
    return TrainConfig(data=str(tiny_h5), model="mobilenet_v2_tiny", head="dex", input_size=32, epochs=1,
                       batch_size=16, out_dir=str(tmp_path), name=name, progress=False, num_threads=1, seed=3,
                       **kw)


def test_multitask_run_changes_the_trunk_and_saves_an_age_only_model(tiny_h5, tmp_path):
    plain = train(_config(tiny_h5, tmp_path, "plain"))
    multi = train(_config(tiny_h5, tmp_path, "multi", aux_weight=1.0))
    best_plain = load_checkpoint(plain.run_dir / "best.pt")["state_dict"]
    best_multi = load_checkpoint(multi.run_dir / "best.pt")["state_dict"]
    # the saved model is the age model alone: the same keys as a run without the extra heads
    assert set(best_multi) == set(best_plain)
    # same seed and data: only the gender/race gradients can make the trunks differ
    trunk = [k for k in best_plain if k.startswith("backbone.") and best_plain[k].is_floating_point()]
    assert any(not torch.equal(best_plain[k], best_multi[k]) for k in trunk)
    last = load_checkpoint(multi.run_dir / "last.pt")
    assert last["aux_state"]["fc.weight"].shape[0] == 7
    assert "aux_state" not in load_checkpoint(plain.run_dir / "last.pt")


def test_multitask_run_resumes(tiny_h5, tmp_path):
    first = train(_config(tiny_h5, tmp_path, "resumed", aux_weight=0.5, max_steps=2, deterministic=True))
    assert first.steps == 2 and first.stopped_by == "max_steps"
    resumed = train(resume=first.run_dir, overrides=("max_steps=4",))
    assert resumed.steps == 4
    whole = train(_config(tiny_h5, tmp_path, "whole", aux_weight=0.5, max_steps=4, deterministic=True))
    a = load_checkpoint(resumed.run_dir / "last.pt")
    b = load_checkpoint(whole.run_dir / "last.pt")
    for key in ("state_dict", "aux_state"):
        for name, value in b[key].items():
            assert torch.allclose(a[key][name].float(), value.float(), atol=1e-5), (key, name)
