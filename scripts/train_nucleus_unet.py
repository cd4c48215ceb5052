"""Train bitro's nucleus U-Net on the labelled H&E nuclei in ../shared/data/nuclei and bundle it.

Recipe (reproduces ``src/bitro/pp/nuclei_unet``):

- data: TNBC (Naylor et al. 2019, CC BY 4.0; 50 tiles, 0.25 µm/px, 11 patients) and the colour
  tissue tiles of DSB2018 (BBBC038, CC0; taken as 0.25 µm/px: their nuclei are as large as TNBC's);
- split by patient: TNBC patients 01-06 and the DSB ``train_*`` tiles train, patients 07-08 validate
  (the weights of the best validation F1 and the post-processing thresholds are chosen on them),
  patients 09-11 and the DSB ``test_*`` tiles are never used here (``benchmarks/nucleus_segmentation.py``
  scores them);
- U-Net (16-256 channels, 2.0 M parameters) at 0.5 µm/px predicting three maps (inside a nucleus,
  distance to its boundary, its rim; the post-processing also cuts the watershed's markers along
  likely rims), random zoom x0.75-1.33, flips / quarter turns, H&E stain and colour jitter; 7000
  iterations of 8 crops of 160 px, AdamW, one-cycle lr 2e-3, seed 0. ~2.7 h on 2 idle CPU cores
  here (1.4 s per iteration; the run behind the bundled weights was resumed twice from its
  checkpoint and shared the machine: its recorded 317 minutes are wall time). Best validation F1
  0.825 at iteration 6500; thresholds chosen on validation (foreground, marker, rim): F1 0.830.
  The weights before them (``--no-boundary``: two maps, otherwise the same recipe) reached 0.814;
  ``--channels 8 16 32 64 128`` (half the width, 3.5x faster to run, 59 minutes to train here) 0.798.

    python scripts/train_nucleus_unet.py --data ../shared/data/nuclei --checkpoint state.pt

``--checkpoint FILE`` writes the training state at every validation (every 250 iterations) and
resumes from it when the file exists: a run stopped (killed, out of time) and started again with
the same arguments gives the same weights as one that was never stopped. Give ``--out`` outside
``src/`` for an experiment: the default replaces the bundled weights.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

OUT = Path(__file__).parents[1] / "src" / "bitro" / "pp" / "nuclei_unet"
ATTRIBUTION = """bitro nucleus U-Net, trained by scripts/train_nucleus_unet.py on:
- TNBC nuclei dataset: Naylor P., Lae M., Reyal F., Walter T. "Segmentation of Nuclei in Histopathology
  Images by Deep Regression of the Distance Map", IEEE Transactions on Medical Imaging 38(2), 2019.
  Zenodo record 1175282, licence CC BY 4.0 (https://creativecommons.org/licenses/by/4.0/).
  Patients 01-06 trained, 07-08 validated.
- 2018 Data Science Bowl, BBBC038 (Caicedo et al., Nature Methods 16, 2019), colour tissue tiles,
  licence CC0.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).parents[2] / "shared" / "data" / "nuclei")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--iterations", type=int, default=7000)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--boundary",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also predict each nucleus's rim (a third map; the bundled weights do; --no-boundary: two maps)",
    )
    parser.add_argument(
        "--channels",
        type=int,
        nargs="+",
        default=[16, 32, 64, 128, 256],
        help="widths of the U-Net's levels (the bundled weights: 16 32 64 128 256)",
    )
    parser.add_argument("--checkpoint", type=Path, default=None, help="training state file: written, resumed from")
    args = parser.parse_args()

    import bitro as bt
    from bitro.pp._unet import save_unet
    from bitro.pp._unet_train import TNBC_PATIENTS, nuclei_splits, train_unet

    bt.settings.verbosity = 2
    train, val, _ = nuclei_splits(args.data)
    print(f"training tiles {len(train)}, validation tiles {len(val)}")
    net, config, history = train_unet(
        train,
        val,
        iterations=args.iterations,
        batch_size=args.batch_size,
        seed=args.seed,
        threads=args.threads,
        boundary=args.boundary,
        channels=args.channels,
        checkpoint=args.checkpoint,
    )
    minutes = history[-1]["seconds"] / 60  # the training's time, a resumed run's earlier parts included
    config["training"] = {
        "recipe": "scripts/train_nucleus_unet.py",
        "train": f"TNBC patients {', '.join(TNBC_PATIENTS['train'])} + DSB2018 colour train tiles ({len(train)} tiles)",
        "validation": f"TNBC patients {', '.join(TNBC_PATIENTS['val'])} ({len(val)} tiles)",
        "iterations": args.iterations,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "minutes": round(minutes, 1),
        "history": history,
    }
    save_unet(net, config, args.out, overwrite=True)
    (args.out / "ATTRIBUTION.txt").write_text(ATTRIBUTION)
    print(json.dumps({k: v for k, v in config.items() if k != "training"}, indent=1))
    print(f"{minutes:.1f} min; best validation F1 {max(h['val_f1'] for h in history):.3f}")


if __name__ == "__main__":
    main()
