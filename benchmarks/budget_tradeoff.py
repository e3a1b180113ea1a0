"""How much should a decision cost? batchsage's regret against its decision budget.

    python benchmarks/budget_tradeoff.py --budgets 10,40 [--tasks linreg,charlm] [--jobs 2]
    python benchmarks/budget_tradeoff.py --render-only

``recommend(budget_seconds=...)`` sizes the pilots and lr races; the ground truths
(``benchmarks/results/<task>.json``) were decided at its default. For each task with a ground
truth and each other budget this re-decides three times on the same grid and seeds
(``groundtruth.py --redecide batchsage --repeat-decisions 2 --top-up-seeds 2
--recommend-budget-seconds B``), on copies of the result and of its sweep storage: the committed
ground truth stays as it is, and no grid trial is trained again (only new picks are, on the grid's
four seeds). Each finished run leaves ``benchmarks/results/budget/<task>_b<B>.json`` (the three
decisions, what their races saw, the best they are compared with); ``TRADEOFF.md`` beside them
has the table: per task and budget, every decision's (B, lr) and regret, the median regret, the
median decision seconds and decision cost, with the committed default-budget decisions as one row.
Interrupted, a re-run resumes (the copies live in ``--work-dir``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import inspect
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from batchsage.decide import recommend
from groundtruth import STORAGE_DIR, storage_path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
WORK_DIR = STORAGE_DIR / "budget"
DEFAULT_BUDGET = float(inspect.signature(recommend).parameters["budget_seconds"].default)


def ground_truth(task: str) -> dict[str, Any]:
    return json.loads((RESULTS / f"{task}.json").read_text())


def budget_label(budget: float) -> str:
    return f"{budget:g}"


def groundtruth_command(task: str, document: dict[str, Any], budget: float, out: Path,
                        storage_dir: Path, resume: bool) -> list[str]:
    """The ground truth's own grid (batch sizes and ceiling, from its protocol), re-decided at ``budget``."""
    protocol = document["protocol"]
    return [
        sys.executable, str(HERE / "groundtruth.py"), "--task", task,
        "--min-batch-size", str(protocol["batch_sizes"][0]), "--max-batch-size", str(protocol["ceiling"]),
        *([] if resume else ["--redecide", "batchsage"]),
        "--repeat-decisions", "2", "--top-up-seeds", "2", "--no-progress",
        "--recommend-budget-seconds", str(budget), "--storage-dir", str(storage_dir), "--out", str(out),
    ]


def redecide(task: str, budget: float, work_dir: Path) -> bool:
    """Run one (task, budget) on copies in ``work_dir``; False if it failed (its log says why)."""
    stem = f"{task}_b{budget_label(budget)}"
    out, log = work_dir / f"{stem}.json", work_dir / f"{stem}.log"
    # A copy whose first decision was made at this budget is resumed; anything else starts over.
    resume = out.exists() and decided_budget(json.loads(out.read_text())) == budget
    if not resume:
        shutil.copyfile(RESULTS / f"{task}.json", out)
        shutil.copyfile(storage_path(RESULTS / f"{task}.json"), storage_path(out, work_dir))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = groundtruth_command(task, ground_truth(task), budget, out, work_dir, resume)
    with log.open("a") as stream:
        done = subprocess.run(command, stdout=stream, stderr=subprocess.STDOUT, env=env, check=False)
    print(f"{task} budget {budget_label(budget)} s: exit {done.returncode} (log {log})", flush=True)
    return done.returncode == 0


def decided_budget(full: dict[str, Any]) -> float | None:
    """The budget_seconds the result's batchsage decision was made with (None: not recorded)."""
    return full.get("decisions", {}).get("recommendation", {}).get("budget_seconds")


def collect(tasks: Sequence[str], work_dir: Path, out_dir: Path) -> None:
    """A compact copy in ``out_dir`` of every finished re-decision in ``work_dir``."""
    for task in tasks:
        for path in sorted(work_dir.glob(f"{task}_b*.json")):
            full = json.loads(path.read_text())
            budget = float(path.stem.rsplit("_b", 1)[1])
            # A copy not yet re-decided still holds the ground truth's own decisions.
            if (full.get("status") != "complete" or not full.get("batchsage_decisions")
                    or decided_budget(full) != budget):
                continue
            finished = dt.datetime.fromtimestamp(path.stat().st_mtime, dt.UTC).isoformat(timespec="minutes")
            (out_dir / path.name).write_text(json.dumps(compact(full, budget, finished), indent=1) + "\n")


def compact(full: dict[str, Any], budget: float, finished: str) -> dict[str, Any]:
    """What the table needs and what explains it, without the grid (that is the ground truth's).

    ``finished``: when the re-decision's result was last written (the copy keeps the ground
    truth's own "date", which is when its grid ran).
    """
    return {
        "task": full["task"], "budget_seconds": budget, "finished": finished,
        "ground_truth_date": full.get("date"),
        "machine": full.get("machine"), "best": full["best"],
        "batchsage_decisions": full.get("batchsage_decisions"),
        "first_decision": {key: full["strategies"]["batchsage"].get(key)
                           for key in ("batch_size", "lr", "regret", "decision_seconds")},
        "first_decision_race": full["decisions"]["recommendation"].get("lr_race"),
        "first_decision_phases": full["decisions"]["recommendation"].get("phase_seconds"),
        "fitted_b_noise": fitted_noise(full),
        "repeat_decisions": [
            {key: decision.get(key) for key in ("batch_size", "lr", "decision_seconds", "details")}
            for decision in full.get("repeat_decisions", [])
        ],
    }


def fitted_noise(full: dict[str, Any]) -> list[float | None]:
    """The effective B_noise each decision planned with, first decision first."""
    first = full["decisions"].get("recommendation", {}).get("b_noise")
    return [first, *(d.get("details", {}).get("b_noise") for d in full.get("repeat_decisions", []))]


def rows(tasks: Sequence[str], results_dir: Path) -> list[dict[str, Any]]:
    """One row per (task, budget): the committed default-budget decisions and every budget file."""
    table = []
    for task in tasks:
        document = ground_truth(task)
        entries = [(decided_budget(document) or DEFAULT_BUDGET, document.get("batchsage_decisions"),
                    fitted_noise(document))]
        for path in sorted(results_dir.glob(f"{task}_b*.json")):
            saved = json.loads(path.read_text())
            entries.append((saved["budget_seconds"], saved.get("batchsage_decisions"),
                            saved.get("fitted_b_noise", [])))
        for budget, decisions, noise in sorted(entries, key=lambda entry: entry[0]):
            if decisions and decisions.get("decisions"):
                table.append({"task": task, "budget": budget, "b_noise": noise,
                              **summary(decisions, document["best"])})
    return table


def summary(spread: dict[str, Any], best: dict[str, Any]) -> dict[str, Any]:
    """A table row from groundtruth.py's ``batchsage_decisions`` (its medians, None: not reached)."""
    decisions = spread["decisions"]
    # A decision that did not reach the target is slower than any that did.
    worst = spread["worst_regret"]
    return {
        "picks": [(d["batch_size"], d["lr"], d.get("regret")) for d in decisions],
        "median_regret": spread["median_regret"],
        "worst_regret": math.inf if worst is None else worst,
        "unreached": sum(d.get("regret") is None for d in decisions),
        "median_decision_seconds": spread["median_decision_seconds"],
        "median_decision_cost": spread["median_decision_seconds"] / best["seconds_to_target"],
    }


def provenance(results_dir: Path) -> str:
    """When and where the re-decisions ran, from their files."""
    dates, machines = set(), set()
    for path in results_dir.glob("*_b*.json"):
        saved = json.loads(path.read_text())
        dates.add(str(saved.get("finished", "?"))[:16].replace("T", " "))
        machine = saved.get("machine") or {}
        machines.add(f"{machine.get('cpu_count', '?')} CPU ({machine.get('processor', '?')}), "
                     f"torch {machine.get('torch', '?')}, {machine.get('torch_threads', '?')} thread(s)")
    if not dates:
        return ""
    span = sorted(dates)
    return f"Re-decisions finished {span[0]} – {span[-1]} UTC on {'; '.join(sorted(machines))}."


def render(table: list[dict[str, Any]], where: str = "") -> str:
    lines = [
        "# Decision budget against regret",
        "",
        "`recommend(budget_seconds=B)` (CLI `--budget-seconds`) sizes the pilots and lr races. Each row:",
        "three decisions at that budget on the ground truth's grid and seeds (regret = median time to",
        "target over the grid's four seeds ÷ the grid's best; decision cost = decision seconds ÷ the",
        f"best's time). The {budget_label(DEFAULT_BUDGET)} s rows are the committed ground truths'. "
        "Produced by `benchmarks/budget_tradeoff.py`.",
        *(["", where] if where else []),
        "",
        "| task | budget s | each decision: (B, lr) regret | median regret | worst | median decision s "
        "| median decision cost | each decision's fitted B_noise |",
        "|---|---:|---|---:|---:|---:|---:|---|",
    ]
    for row in table:
        picks = ", ".join(f"({b}, {lr:.3g}) {_regret(r)}" for b, lr, r in row["picks"])
        lines.append(f"| {row['task']} | {budget_label(row['budget'])} | {picks} | "
                     f"{_regret(row['median_regret'])} | {_regret(row['worst_regret'])} | "
                     f"{row['median_decision_seconds']:.0f} | {row['median_decision_cost']:.2f} | "
                     f"{_noise_text(row.get('b_noise', []))} |")
    by_budget: dict[float, list[float]] = {}
    for row in table:
        regrets = (math.inf if r is None else r for _, _, r in row["picks"])
        by_budget.setdefault(row["budget"], []).extend(regrets)
    lines += ["", "Over all tasks: " + "; ".join(
        f"budget {budget_label(b)} s: median regret {_regret(statistics.median(r))} over {len(r)} decisions"
        for b, r in sorted(by_budget.items()) if r) + "."]
    return "\n".join(lines) + "\n"


def _noise_text(values: Sequence[float | None]) -> str:
    return ", ".join("–" if v is None else f"{v:.0f}" for v in values) or "–"


def _regret(value: float | None) -> str:
    return "not reached" if value is None or math.isinf(value) else f"{value:.2f}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budgets", default="10,40", help="comma-separated budget_seconds to re-decide at")
    parser.add_argument("--tasks", default="", help="comma-separated (default: every ground truth)")
    parser.add_argument("--jobs", type=int, default=2, help="(task, budget) runs at once (one core each)")
    parser.add_argument("--work-dir", type=Path, default=WORK_DIR)
    parser.add_argument("--out-dir", type=Path, default=RESULTS / "budget")
    parser.add_argument("--render-only", action="store_true",
                        help="only collect finished runs from --work-dir and render TRADEOFF.md")
    args = parser.parse_args(argv)
    every_task = sorted(p.stem for p in RESULTS.glob("*.json") if "best" in json.loads(p.read_text()))
    tasks = [t for t in args.tasks.split(",") if t] or every_task
    missing = [t for t in tasks if not (RESULTS / f"{t}.json").exists()]
    if missing:
        print(f"error: no ground truth for {', '.join(missing)} in {RESULTS}", file=sys.stderr)
        return 2
    args.out_dir.mkdir(parents=True, exist_ok=True)
    if not args.render_only:
        try:
            budgets = [float(b) for b in args.budgets.split(",") if b]
        except ValueError:
            print(f"error: --budgets must be numbers, got {args.budgets!r}", file=sys.stderr)
            return 2
        args.work_dir.mkdir(parents=True, exist_ok=True)
        runs = [(t, b) for t in tasks for b in budgets]
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            list(pool.map(lambda run: redecide(*run, args.work_dir), runs))
    collect(tasks, args.work_dir, args.out_dir)
    # The table covers every ground truth, not only the tasks re-decided now.
    text = render(rows(every_task, args.out_dir), provenance(args.out_dir))
    (args.out_dir / "TRADEOFF.md").write_text(text)
    print(text)
    print(f"written {args.out_dir / 'TRADEOFF.md'} ({dt.date.today()})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
