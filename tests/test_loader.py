"""Preprocessing and batch loading: shapes, normalisation, eval exactness, determinism, sharding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from deepage.data.loader import FaceBatches, load_split
from deepage.preprocessing import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TRAIN_AUGMENTATION,
    Preprocessing,
    images_to_batch,
    prepare_batch,
)


def _images(n=4, size=32, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8))


def test_eval_transform_is_crop_resize_and_normalise():
    imgs = _images(3, 40)
    pre = Preprocessing(input_size=36, stored_size=40, crop_pct=0.9)
    x = imgs.permute(0, 3, 1, 2).float() / 255
    theta = torch.tensor([[0.9, 0, 0], [0, 0.9, 0]]).expand(3, 2, 3)
    ref = F.grid_sample(x, F.affine_grid(theta, [3, 3, 36, 36], align_corners=False), padding_mode="reflection",
                        align_corners=False)
    ref = (ref - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(prepare_batch(imgs, pre), ref, atol=1e-4, rtol=0)


def test_unit_normalisation_and_identity_crop():
    imgs = _images(2, 16)
    out = prepare_batch(imgs, Preprocessing(input_size=16, stored_size=16, crop_pct=1.0, normalization="unit"))
    torch.testing.assert_close(out, imgs.permute(0, 3, 1, 2).float() / 255, atol=1e-5, rtol=0)


def test_rgb_order_is_kept():
    red = torch.zeros(1, 8, 8, 3, dtype=torch.uint8)
    red[..., 0] = 255
    out = prepare_batch(red, Preprocessing(input_size=8, stored_size=8, crop_pct=1.0, normalization="unit"))
    assert out[0, 0].min() > 0.99 and out[0, 1:].max() < 0.01


def test_augmentation_is_random_but_seeded():
    imgs = _images(4, 32)
    pre = Preprocessing(input_size=24, stored_size=32)
    a = prepare_batch(imgs, pre, TRAIN_AUGMENTATION, torch.Generator().manual_seed(1))
    b = prepare_batch(imgs, pre, TRAIN_AUGMENTATION, torch.Generator().manual_seed(1))
    c = prepare_batch(imgs, pre, TRAIN_AUGMENTATION, torch.Generator().manual_seed(2))
    assert a.shape == (4, 3, 24, 24)
    torch.testing.assert_close(a, b)
    assert (a - c).abs().mean() > 0.05
    assert (a - prepare_batch(imgs, pre)).abs().mean() > 0.05


def test_small_inputs_are_antialiased():
    """A fine checkerboard shrunk 8x must come out near mid-grey, not aliased to black or white."""
    board = torch.zeros(1, 128, 128, 3, dtype=torch.uint8)
    board[:, ::2, ::2] = 255
    board[:, 1::2, 1::2] = 255
    out = prepare_batch(board, Preprocessing(input_size=16, stored_size=128, crop_pct=1.0, normalization="unit"))
    assert out.std() < 0.05 and abs(out.mean() - 0.5) < 0.05


def test_bad_batches_are_refused():
    with pytest.raises(ValueError, match="uint8 RGB"):
        prepare_batch(torch.zeros(2, 8, 8, 3), Preprocessing())
    with pytest.raises(ValueError, match="normalization"):
        Preprocessing(normalization="zscore")


def test_images_to_batch_matches_stored_path():
    rgb = np.random.default_rng(0).integers(0, 256, (50, 50, 3), dtype=np.uint8)
    pre = Preprocessing(input_size=28, stored_size=32)
    from deepage.imageio import square_resize

    stored = torch.from_numpy(square_resize(rgb, 32)[None])
    torch.testing.assert_close(images_to_batch([rgb], pre), prepare_batch(stored, pre))


def test_loader_visits_every_image_once_in_eval(tiny_h5):
    data = load_split(tiny_h5, "test")
    batches = list(FaceBatches(data, Preprocessing(input_size=32, stored_size=32), batch_size=7))
    seen = torch.cat([b.index for b in batches])
    assert sorted(seen.tolist()) == list(range(len(data)))
    assert batches[0].x.shape == (7, 3, 32, 32)
    torch.testing.assert_close(torch.cat([b.age for b in batches]), data.age)


def test_loader_shuffles_per_epoch_and_shards(tiny_h5):
    data = load_split(tiny_h5, "train")
    pre = Preprocessing(input_size=32, stored_size=32)

    def order(epoch, rank=0, world=1):
        fb = FaceBatches(data, pre, 8, shuffle=True, augment=TRAIN_AUGMENTATION, drop_last=True, seed=5,
                         rank=rank, world_size=world)
        fb.set_epoch(epoch)
        return torch.cat([b.index for b in fb]).tolist()

    assert order(0) == order(0) and order(0) != order(1)
    r0, r1 = order(0, 0, 2), order(0, 1, 2)
    assert not set(r0) & set(r1) and len(r0) == len(r1)
    fb = FaceBatches(data, pre, 8, shuffle=True, augment=TRAIN_AUGMENTATION, drop_last=True, seed=5)
    full = list(fb)
    resumed = list(fb.iter_from(2))
    torch.testing.assert_close(resumed[0].x, full[2].x)  # skipping batches changes nothing after them


def test_split_loading_and_lazy_mode(tiny_h5):
    lazy = load_split(tiny_h5, "val", max_memory_gb=0)
    eager = load_split(tiny_h5, "val")
    assert lazy.images is None and eager.images is not None
    idx = np.array([3, 0, 2])
    torch.testing.assert_close(lazy.read_images(idx), eager.read_images(idx))
    assert len(load_split(tiny_h5, "all")) == 120
    both = load_split(tiny_h5, "train+val")  # the final model's data: every image not in test
    assert len(both) == len(load_split(tiny_h5, "train")) + len(eager) == 120 - len(load_split(tiny_h5, "test"))
    with pytest.raises(ValueError, match="unknown split"):
        load_split(tiny_h5, "holdout")


def test_a_pixel_aligned_evaluation_crop_is_grid_samples_own_answer():
    import torch.nn.functional as F

    from deepage.preprocessing import Preprocessing, _affine, _sampling_grid, prepare_batch

    images = torch.randint(0, 256, (3, 160, 160, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    for pre in (Preprocessing(input_size=150, stored_size=160, crop_pct=0.9375, normalization="imagenet"),
                Preprocessing(input_size=112, stored_size=160, crop_pct=0.7, normalization="unit")):
        x = images.permute(0, 3, 1, 2).float()
        grid = _sampling_grid(_affine(3, pre, None, None), pre.input_size)
        sampled = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        mean, std = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)) if pre.normalization == "imagenet" else \
            ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
        expected = (sampled / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
        out = prepare_batch(images, pre)
        assert out.shape == (3, 3, pre.input_size, pre.input_size) and out.is_contiguous()
        torch.testing.assert_close(out, expected, atol=1e-4, rtol=0)
