"""Train the bundled default model on HER2ST sections C2-C4 (C5 validates) and write it into the package.

Recipe (reproduces ``src/bitro/models/default``): sections C2-C5 of Andersson et al. 2021
(CC BY 4.0), each preprocessed with bitro's offline defaults (U-Net nuclei, morphology features,
assignment within 1.5 x spot radius, kNN graph k=8; cached by ``her2st_prepare.py``); BiTro
trained on spots with the 50 most variable genes, validation on section C5 (early stopping and the
choice of weights), seed 0. Accuracy on held-out sections is measured by ``benchmarks/her2st_cv.py``
(the shipped model has seen all four sections, so it has no held-out score of its own).

    python scripts/train_default_model.py --data ../shared/data/her2st
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from her2st_prepare import SECTIONS, prepare

OUT = Path(__file__).parents[1] / "src" / "bitro" / "models" / "default"
ATTRIBUTION = """Weights trained on the HER2+ breast cancer legacy ST sections C2-C5 of
Andersson A. et al., "Spatial deconvolution of HER2-positive breast cancer delineates
tumor-associated cell type interactions", Nature Communications 12, 6012 (2021),
data licensed CC BY 4.0 (https://creativecommons.org/licenses/by/4.0/), Zenodo record 3957257,
github.com/almaan/her2st. Reproduce with scripts/train_default_model.py.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).parents[2] / "shared" / "data" / "her2st")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "bitro" / "her2st_prepared")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--max-epochs", type=int, default=60)
    args = parser.parse_args()

    import bitro as bt

    args.cache.mkdir(parents=True, exist_ok=True)
    sections = [prepare(s, args.data, args.cache) for s in SECTIONS]
    model = bt.tl.fit(sections, n_genes=50, val=["C5"], max_epochs=args.max_epochs, seed=0, progress=False)
    from bitro._store import replace_folder

    with replace_folder(args.out, overwrite=True) as folder:  # model and attribution swapped in together
        model.save(folder, overwrite=True)
        (folder / "ATTRIBUTION.txt").write_text(ATTRIBUTION)
    print(model)
    print(model.history.to_string())
    sizes = {p.name: p.stat().st_size for p in args.out.iterdir()}
    print({k: f"{v / 1e6:.2f} MB" for k, v in sizes.items()})


if __name__ == "__main__":
    main()
