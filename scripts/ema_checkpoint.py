"""Write the weights a run ended with (its EMA weights, as ``best.pt`` holds them) as a checkpoint.

``best.pt`` keeps the epoch with the best *clean* validation MAE. A run trained for something that metric
does not see (robustness to old photos, ``photo_augment``) may be worth taking at its end instead; this
turns ``last.pt``'s EMA state (or its raw weights, for a run without EMA) into a checkpoint that
``deepage evaluate`` / ``predict`` / ``calibrate`` read like any other.

    python scripts/ema_checkpoint.py runs/dlib_resnet_dex_photo -o runs/dlib_resnet_dex_photo/final.pt
"""

from __future__ import annotations

import argparse
from pathlib import Path

from deepage.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="run folder with last.pt")
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args()
    last = load_checkpoint(args.run / "last.pt")
    ema = last.get("ema_state")
    if ema is not None:  # AveragedModel: the model's keys under "module.", plus its step counter
        weights = {k.removeprefix("module."): v for k, v in ema.items() if k.startswith("module.")}
    else:
        weights = last["state_dict"]
    state = last["train_state"]
    payload = {"spec": last["spec"], "state_dict": weights, "split_fingerprint": last["split_fingerprint"],
               "config": last["config"],
               "metrics": {"note": f"weights at the end of the run (epoch {state['epoch']}, step {state['step']}), "
                                   "not the best validation epoch"}}
    model_from_checkpoint(payload, args.output)  # the weights must rebuild the model before anything is written
    save_checkpoint(args.output, payload)
    print(f"wrote {args.output}: {'EMA' if ema is not None else 'raw'} weights after {state['epoch']} epochs")


if __name__ == "__main__":
    main()
