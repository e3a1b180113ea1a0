"""Lightning's BatchSizeFinder against batchsage's callback, time to target, in one run.

    python benchmarks/lightning_finder.py [--hidden 3072] [--seeds 0] [--budget 20] [--max-seconds 240] \
        [--out benchmarks/results/lightning_finder]

A Lightning version of the built-in ``digits-mlp`` task (the same data, model, SGD with momentum,
base batch 32 and lr 0.01, validation accuracy target 0.975), trained by ``lightning.Trainer``
three ways, side by side for each seed (the order rotates from seed to seed):

- ``bsf_power``: Lightning's ``BatchSizeFinder(mode="power")`` at the start of fit, the module's lr;
- ``batchsage``: ``BatchsageFinder(monitor="val_acc", target=0.975)`` (batch, lr, accumulation,
  warmup from ``batchsage.recommend`` at the start of fit);
- ``default``: the module's batch 32 and lr 0.01.

Each fit validates every 2,048 training samples (``val_check_interval`` set from the batch the
finder chose) and stops at the first validation at the target, or after ``--max-seconds`` of
training (Lightning's ``max_time``), or after the task's 800,000 samples. Measured per fit:

- ``decision_seconds``: from the start of ``trainer.fit`` to the first training batch (the
  finder's trial runs, or batchsage's probes and pilots; nothing for ``default``);
- ``train_seconds``: from then to the validation that reached the target, validation excluded;
- ``total_seconds`` = decision + train: what the user waits for (validation excluded);

and the ratio of each strategy's total to ``default``'s and to the best of the three. One torch
thread (shared cores). Writes ``OUT.json`` (every fit) and ``OUT.md`` (the table).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import BatchSizeFinder
from torch.utils.data import DataLoader

from batchsage.integrations.lightning import BatchsageFinder
from batchsage.tasks import digits

TARGET = 0.975
BASE_BATCH = 32
BASE_LR = 0.01
EVAL_EVERY_SAMPLES = 2_048
MAX_SAMPLES = 800_000
STRATEGIES = ("bsf_power", "batchsage", "default")


class DigitsData(pl.LightningDataModule):
    def __init__(self, batch_size: int = BASE_BATCH) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.train_set, self.val_set = digits.load()

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=1024)


class DigitsMLP(pl.LightningModule):
    def __init__(self, hidden: int, lr: float = BASE_LR) -> None:
        super().__init__()
        self.lr = lr
        self.net = digits.make_model(hidden)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_acc", (self.net(x).argmax(dim=1) == y).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


class Clock(pl.Callback):
    """Decision and training seconds, validation excluded; stops at the target; validates every
    EVAL_EVERY_SAMPLES samples of whatever batch the finder chose. Runs after the finders."""

    def __init__(self, fit_started: float) -> None:
        self.fit_started = fit_started
        self.train_started: float | None = None
        self.validation_seconds = 0.0
        self.reached_at: float | None = None
        self.history: list[dict[str, float]] = []
        self._validation_started = 0.0

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        micro = trainer.datamodule.batch_size
        trainer.val_check_interval = trainer.val_check_batch = max(1, round(EVAL_EVERY_SAMPLES / micro))
        batch = micro * trainer.accumulate_grad_batches
        trainer.fit_loop.epoch_loop.max_steps = max(1, MAX_SAMPLES // batch)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.train_started = time.perf_counter()

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._validation_started = time.perf_counter()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        now = time.perf_counter()
        self.validation_seconds += now - self._validation_started
        accuracy = float(trainer.callback_metrics["val_acc"])
        self.history.append({"step": trainer.global_step, "val_acc": accuracy,
                             "train_seconds": self.train_seconds(now)})
        if self.reached_at is None and accuracy >= TARGET:
            self.reached_at = now
            trainer.should_stop = True

    def train_seconds(self, now: float) -> float:
        assert self.train_started is not None
        return now - self.train_started - self.validation_seconds


def run_strategy(strategy: str, hidden: int, seed: int, budget: float, max_seconds: float,
                 root: Path) -> dict[str, Any]:
    pl.seed_everything(seed, verbose=False)
    data, module = DigitsData(), DigitsMLP(hidden)
    finder: list[pl.Callback] = []
    if strategy == "bsf_power":
        finder = [BatchSizeFinder(mode="power")]
    elif strategy == "batchsage":
        finder = [BatchsageFinder(monitor="val_acc", target=TARGET, budget_seconds=budget)]
    started = time.perf_counter()
    clock = Clock(started)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         max_epochs=-1, check_val_every_n_epoch=None, max_time={"seconds": max_seconds},
                         default_root_dir=str(root), callbacks=[*finder, clock])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, data)
    assert clock.train_started is not None
    decision = clock.train_started - started
    reached = clock.reached_at is not None
    train = clock.train_seconds(clock.reached_at) if reached else clock.history[-1]["train_seconds"]
    chosen = finder[0] if finder else None
    return {
        "strategy": strategy, "seed": seed, "reached_target": reached,
        "batch_size": data.batch_size * trainer.accumulate_grad_batches, "micro_batch_size": data.batch_size,
        "accumulation_steps": trainer.accumulate_grad_batches,
        "lr": trainer.optimizers[0].param_groups[0]["lr"],
        "warmup_steps": (chosen.recommendation.warmup_steps
                         if isinstance(chosen, BatchsageFinder) and chosen.recommendation else 0),
        "steps": trainer.global_step, "decision_seconds": decision, "train_seconds": train,
        "total_seconds": decision + train if reached else math.inf,
        "final_val_acc": clock.history[-1]["val_acc"] if clock.history else math.nan,
        "validations": len(clock.history), "validation_seconds": clock.validation_seconds,
    }


def machine_info() -> dict[str, Any]:
    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"platform": platform.platform(), "processor": model, "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "lightning": pl.__version__, "torch_threads": torch.get_num_threads(),
            "python": platform.python_version()}


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per strategy: median decision/train/total seconds over seeds, and the total's ratio to
    default's and to the best strategy's (per seed, then the median)."""
    rows = []
    seeds = sorted({r["seed"] for r in runs})
    by = {(r["strategy"], r["seed"]): r for r in runs}
    for strategy in STRATEGIES:
        mine = [by[(strategy, s)] for s in seeds if (strategy, s) in by]
        # A fit cut before the target took at least its decision + training seconds: a lower bound.
        total = {s: by[(strategy, s)]["decision_seconds"] + by[(strategy, s)]["train_seconds"] for s in seeds}
        to_default = [total[s] / by[("default", s)]["total_seconds"] for s in seeds]
        to_best = [total[s] / min(by[(k, s)]["total_seconds"] for k in STRATEGIES) for s in seeds]
        rows.append({
            "strategy": strategy,
            "batch_sizes": [r["batch_size"] for r in mine], "lrs": [r["lr"] for r in mine],
            "accumulation": [r["accumulation_steps"] for r in mine],
            "reached": sum(r["reached_target"] for r in mine), "seeds": len(mine),
            "decision_seconds": statistics.median(r["decision_seconds"] for r in mine),
            "train_seconds": statistics.median(r["train_seconds"] for r in mine),
            "total_seconds": statistics.median(r["total_seconds"] for r in mine),
            "ratio_to_default": statistics.median(to_default), "ratio_to_best": statistics.median(to_best),
            "ratios_are_lower_bounds": not all(r["reached_target"] for r in mine),
        })
    return rows


def markdown(document: dict[str, Any]) -> str:
    config = document["config"]
    lines = [
        "# Lightning: BatchSizeFinder vs batchsage's BatchsageFinder vs the default batch",
        "",
        f"{document['date']}, {document['machine']['cpu_count']} CPU ({document['machine']['processor']}, "
        f"shared: load average {document['load_average']['start']} at the start, "
        f"{document['load_average']['end']} at the end), "
        f"torch {document['machine']['torch']}, Lightning {document['machine']['lightning']}, "
        f"one torch thread. Task: digits-mlp as a LightningModule "
        f"(MLP 64-{config['hidden']}-{config['hidden']}-10, SGD momentum 0.9, base batch {BASE_BATCH}, "
        f"lr {BASE_LR}), target val_acc ≥ {TARGET}, validation every "
        f"{EVAL_EVERY_SAMPLES} samples, training cut at {config['max_seconds']:.0f} s. Seeds: "
        f"{', '.join(map(str, config['seeds']))}; medians over seeds. Seconds exclude validation; decision = "
        "from trainer.fit to the first training batch. Ratio = total ÷ the default's (or the best's) total, "
        "per seed (≥: the fit was cut before the target, its seconds so far are a lower bound). "
        "Made by `python benchmarks/lightning_finder.py` (protocol in its docstring).",
        "",
        "| strategy | batch (× accumulation) | lr | reached | decision s | train s | total s "
        "| ÷ default | ÷ best |",
        "|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in document["summary"]:
        batches = ", ".join(f"{b}" + (f" ({b // a}×{a})" if a > 1 else "")
                            for b, a in zip(row["batch_sizes"], row["accumulation"], strict=True))
        lrs = ", ".join(f"{lr:.3g}" for lr in row["lrs"])
        lines.append(f"| {row['strategy']} | {batches} | {lrs} | {row['reached']}/{row['seeds']} | "
                     f"{row['decision_seconds']:.1f} | {_seconds(row['train_seconds'])} | "
                     f"{_seconds(row['total_seconds'])} | {_ratio(row, 'ratio_to_default')} | "
                     f"{_ratio(row, 'ratio_to_best')} |")
    lines += ["", "Every fit (in the order run):", "",
              "| seed | strategy | B | lr | steps | reached | decision s | train s | final val_acc |",
              "|---:|---|---:|---:|---:|---|---:|---:|---:|"]
    for run in document["runs"]:
        lines.append(f"| {run['seed']} | {run['strategy']} | {run['batch_size']} | {run['lr']:.3g} | "
                     f"{run['steps']} | {'yes' if run['reached_target'] else 'no'} | "
                     f"{run['decision_seconds']:.1f} | {run['train_seconds']:.1f} | "
                     f"{run['final_val_acc']:.4f} |")
    return "\n".join(lines) + "\n"


def _load_average() -> list[float] | None:
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:
        return None


def _seconds(value: float) -> str:
    return "not reached" if not math.isfinite(value) else f"{value:.1f}"


def _ratio(row: dict[str, Any], key: str) -> str:
    """The ratio; "≥ x" where a fit was cut before the target (its seconds so far are a lower bound)."""
    return f"≥ {row[key]:.1f}" if row.get("ratios_are_lower_bounds") else f"{row[key]:.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=int, default=digits.HIDDEN, help="width of the hidden layers")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--budget", type=float, default=20.0, help="batchsage's budget_seconds")
    parser.add_argument("--max-seconds", type=float, default=240.0, help="wall limit of one fit")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/lightning_finder"))
    parser.add_argument("--render", type=Path, help="only rewrite OUT.md from this JSON document")
    args = parser.parse_args(argv)
    if args.render is not None:
        document = json.loads(args.render.read_text())
        document["summary"] = summarize(document["runs"])
        args.render.write_text(json.dumps(document, indent=2, allow_nan=True) + "\n")
        args.render.with_suffix(".md").write_text(markdown(document))
        print(markdown(document))
        return 0
    torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp(prefix="lightning_finder_"))  # BatchSizeFinder's checkpoint
    load_start = _load_average()
    runs = []
    for index, seed in enumerate(args.seeds):
        order = STRATEGIES[index % 3:] + STRATEGIES[: index % 3]
        for strategy in order:
            run = run_strategy(strategy, args.hidden, seed, args.budget, args.max_seconds, root)
            runs.append(run)
            print(json.dumps(run), file=sys.stderr, flush=True)
    document = {
        "date": dt.date.today().isoformat(), "machine": machine_info(),
        "config": {"hidden": args.hidden, "seeds": args.seeds, "budget_seconds": args.budget,
                   "max_seconds": args.max_seconds, "target": TARGET, "base_batch_size": BASE_BATCH,
                   "base_lr": BASE_LR, "eval_every_samples": EVAL_EVERY_SAMPLES, "max_samples": MAX_SAMPLES},
        "load_average": {"start": load_start, "end": _load_average()},
        "runs": runs,
    }
    document["summary"] = summarize(runs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(document, indent=2, allow_nan=True) + "\n")
    args.out.with_suffix(".md").write_text(markdown(document))
    print(markdown(document))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
