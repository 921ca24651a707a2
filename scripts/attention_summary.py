"""Where an AL model looks: its attended regions over a split, summarised, and drawn on a public photo.

    python scripts/attention_summary.py runs/study/al_mobilenet_v2-600/best.pt --data work/utk128.h5 \
        --split test --out docs/results/attention

UTKFace images may not be copied into the repository, so the regions are *summarised* over the split
(mean and spread of each LSTM step's box centre and side, in the model's input frame: 0 = left/top edge,
1 = right/bottom edge, UTKFace's chip framing). To see them on a face, draw them on the bundled
public-domain photo: ``deepage predict deepage/assets/astronaut.jpg --model CKPT --explain --annotate DIR``.
Writes ``summary.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from deepage.checkpoint import load_checkpoint
from deepage.data.loader import FaceBatches, load_split
from deepage.models.registry import ModelSpec, build_from_spec


def region_statistics(checkpoint: Path, data: Path, split: str) -> dict:
    """Per LSTM step: mean and standard deviation of the box centre (x, y) and side, as fractions of the input;
    for a residual fusion also ``local_to_global_norm`` (mean, std over the images)."""
    ckpt = load_checkpoint(checkpoint)
    model = build_from_spec(ModelSpec.from_dict(ckpt["spec"]))
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    pre = model.spec.preprocessing
    boxes, shares = [], []
    # Residual fusion (al_dlib_resnet: features = g + local_proj(...)): how large the local term is beside
    # the global one, per image, ||local term|| / ||g||.
    fusion = getattr(model.backbone, "local_proj", None)
    local_terms: list[torch.Tensor] = []
    if fusion is not None:
        fusion.register_forward_hook(lambda _module, _inputs, output: local_terms.append(output))
    with torch.no_grad():
        for batch in FaceBatches(load_split(data, split), pre, batch_size=128):
            details = model.backbone.forward_details(batch.x)
            boxes.append(details.boxes / pre.input_size)  # (B, T, 4) in [0, 1]
            if fusion is not None:
                local = local_terms.pop()
                shares.append(local.norm(dim=1) / (details.features - local).norm(dim=1))
    b = torch.cat(boxes).numpy()
    centre_x, centre_y, side = (b[..., 0] + b[..., 2]) / 2, (b[..., 1] + b[..., 3]) / 2, b[..., 2] - b[..., 0]
    extra = {}
    if shares:
        share = torch.cat(shares)
        extra = {"local_to_global_norm": [round(float(share.mean()), 3), round(float(share.std()), 3)]}
    return {"images": int(len(b)), **extra, "steps": [
        {"step": t + 1, "centre_x": [round(float(centre_x[:, t].mean()), 3), round(float(centre_x[:, t].std()), 3)],
         "centre_y": [round(float(centre_y[:, t].mean()), 3), round(float(centre_y[:, t].std()), 3)],
         "side": [round(float(side[:, t].mean()), 3), round(float(side[:, t].std()), 3)]}
        for t in range(b.shape[1])]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    stats = region_statistics(args.checkpoint, args.data, args.split)
    (args.out / "summary.json").write_text(json.dumps(stats, indent=1))
    print(json.dumps(stats, indent=1))


if __name__ == "__main__":
    main()
