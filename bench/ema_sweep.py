"""Weight averages compared on one training run: a paired comparison without seed noise.

    .venv/bin/python bench/ema_sweep.py --dataset raccoon [--seed 0] [key=value ...]

The EMA only reads the weights the optimiser produces, so one run can keep several EMAs
(decay / ramp tau pairs, below) beside the recipe's own and score them all on the same
trajectory: the differences are those of the averaging alone, not of the seed. At the
end each average (and the raw weights) gets its batch-norm statistics recomputed as
validation does (train.precise_bn's images) and is scored on the validation and test
splits of bench/accuracy.py. The run's own results.csv (bench/out/ema_sweep/<dataset>_seed<N>)
is that of the recipe's EMA, as in any run. Results: a markdown table on stdout and
bench/out/ema_sweep/<dataset>_seed<N>.json.
"""

from __future__ import annotations

import argparse
import json

from accuracy import splits
from common import ROOT, machine
from torch.optim.swa_utils import AveragedModel

from retinanet.config import EvalConfig
from retinanet.engine import Trainer
from retinanet.evaluation import evaluate
from retinanet.optim import ema_avg_fn
from retinanet.train import run_config
from retinanet.validation import recalibrate_bn, trained_norms

OUT = ROOT / "bench" / "out" / "ema_sweep"
VARIANTS = [(0.9998, 500.0), (0.999, 100.0), (0.995, 100.0), (0.99, 50.0), (0.98, 20.0)]  # (decay, tau)
KEYS = ("AP", "AP50", "AP75")


class SweepTrainer(Trainer):
    """The recipe's Trainer, with extra EMAs updated after every optimiser step."""

    extra: list[AveragedModel]

    def _train_step(self, batch, params):
        losses = super()._train_step(batch, params)
        if losses is not None:
            for average in self.extra:
                average.update_parameters(self.model)
        return losses


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=("raccoon", "aquarium", "coco128"), required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("overrides", nargs="*", help="RunConfig overrides (e.g. model.input_size=320)")
    args = p.parse_args()
    train, val, test = splits(args.dataset)
    name = f"{args.dataset}_seed{args.seed}"
    fixed = [f"data.source=bench:{args.dataset}", f"train.seed={args.seed}", f"train.out={OUT}", f"train.name={name}"]
    cfg = run_config("default", None, fixed + args.overrides)
    print(machine(), "\noverrides:", " ".join(args.overrides) or "none", flush=True)
    trainer = SweepTrainer(cfg, progress=False, train_data=train, val_data=val)
    trainer.extra = [AveragedModel(trainer.model, multi_avg_fn=ema_avg_fn(d, tau), use_buffers=True) for d, tau in VARIANTS]
    trainer.fit()
    trainer.close()
    names = trained_norms(trainer.model.train())
    images = cfg.train.precise_bn or 32
    rows = {}
    for label, model in [("raw weights", trainer.model)] + [(f"decay {d}, tau {tau:g}", e.module) for (d, tau), e in zip(VARIANTS, trainer.extra)]:
        recalibrate_bn(model, train.records, images, EvalConfig(batch_size=cfg.train.batch_size), names)
        reports = {split: evaluate(model, ds, plots=False, progress=False) for split, ds in (("val", val), ("test", test))}
        rows[label] = {split: {k: r.metrics[k] for k in KEYS} for split, r in reports.items()}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{name}.json").write_text(json.dumps({"overrides": args.overrides, "steps": trainer.step, "results": rows}, indent=1))
    print(f"\n{args.dataset}, seed {args.seed}, {trainer.step} steps")
    print("| weights | val AP | val AP50 | test AP | test AP50 | test AP75 |\n| --- | --- | --- | --- | --- | --- |")
    for label, r in rows.items():
        print(f"| {label} | {r['val']['AP']:.3f} | {r['val']['AP50']:.3f} | {r['test']['AP']:.3f} | {r['test']['AP50']:.3f} | {r['test']['AP75']:.3f} |")


if __name__ == "__main__":
    main()
