"""Write the members of an ensemble checkpoint as checkpoints of their own (a fresh machine has no runs/).

    python scripts/unpack_ensemble.py deepage/assets/default_model.pt -o runs/shipped
    # -> runs/shipped/member0.pt (the distilled dlib_resnet), runs/shipped/member1.pt (MobileNetV2, photo)
"""

from __future__ import annotations

import argparse

from deepage.checkpoint import load_checkpoint
from deepage.models.ensemble import unpack_ensemble_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("-o", "--out-dir", required=True)
    args = parser.parse_args()
    for path in unpack_ensemble_checkpoint(args.checkpoint, args.out_dir):
        ckpt = load_checkpoint(path)
        print(f"{path}: {ckpt['spec']['name']}, {ckpt['unpacked_from']['trained_as']}, "
              f"val MAE {ckpt['metrics'].get('age', {}).get('mae')}")


if __name__ == "__main__":
    main()
