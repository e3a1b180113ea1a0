"""Races between forks of a live run: equal samples, judged by the time saved to the same loss.

At a decision point the live run (the incumbent) and its challengers (forks of it with another lr
or batch size) continue from the same state on the same data stream: the same samples in the same
order, whatever their batch size. After the stretch, each branch is copied and its copy's lr is
annealed to zero over a short cooldown, and the copy is scored by :class:`Judge`: its loss on a
fixed subset of the validation data, minibatch by minibatch.

Why the cooldown: on a short stretch a smaller lr always looks better, because its lower noise
floor shows at once and its slower progress only later (the short-horizon bias; Wu et al. 2018).
Annealing sheds every branch's noise floor, so what is compared is the progress each kept. Why
validation data: after an epoch the training samples have been seen, and their loss rewards
memorising them (more, smaller steps) over what the target measures.

The judgement: a challenger's advantage is the training time it saves to reach the same loss: the
seconds it took less for the stretch, plus its validation-loss lead converted into seconds at the
rate the live run's validation loss has been falling. It wins when the advantage is more than
``Z_CLEAR`` standard errors, measured over the judge's minibatches pair by pair (the same samples
for every branch, so what differs is the models); a tie keeps the incumbent. A larger lr is the
exception: even after the cooldown a short race sees the transient of an lr raise and not yet what
it buys (measured on digits-mlp at B=64: lr ×2 behind after 2,048 samples, level after 6,144), so
it wins unless it is clearly behind. Only the losers' stretches and the cooldowns are wasted: the
winner's state (not its cooled copy) becomes the live run.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from batchsage.data import BatchStream, move_to
from batchsage.engine import Run
from batchsage.task import Task

#: Standard errors by which a challenger must be ahead to win.
Z_CLEAR = 2.0
#: The cooldown runs this share of the stretch's samples, the lr falling linearly to zero.
COOLDOWN_FRACTION = 0.2
#: Validation samples the judge scores a model on (all of them where there are fewer), and the
#: minibatches they are scored in (the pairs whose differences give the standard error).
JUDGE_SAMPLES = 2048
JUDGE_MIN_SAMPLES = 256
JUDGE_MINIBATCHES = 16


class Judge:
    """Scores a model by its loss on a fixed subset of the validation data, minibatch by minibatch.

    Falls back to a fixed subset of the training data where the task's loss does not accept
    validation batches.
    """

    def __init__(self, task: Task, model: torch.nn.Module, device: torch.device, seed: int = 0,
                 max_seconds: float | None = None) -> None:
        self.task = task
        self.seconds = 0.0
        self.source = "validation"
        count = JUDGE_SAMPLES
        try:
            self.batches = self._batches(task.val_data, device, seed, count)
            self.losses(model)
        except Exception:  # the loss needs something only training batches have
            self.source = "training"
            self.batches = self._batches(task.train_data, device, seed, count)
            self.losses(model)
        # A pass costs at most ``max_seconds`` (a few training steps): fewer samples where it would
        # cost more, so that judging stays a small part of a race.
        if max_seconds is not None and self.seconds > max_seconds:
            count = max(JUDGE_MIN_SAMPLES, round(self.samples * max_seconds / self.seconds))
            data = task.val_data if self.source == "validation" else task.train_data
            self.batches = self._batches(data, device, seed, count)
        self.seconds = 0.0

    @property
    def samples(self) -> int:
        from batchsage.data import batch_len

        return sum(batch_len(batch) for batch in self.batches)

    @staticmethod
    def _batches(data: Any, device: torch.device, seed: int, count: int) -> list[Any]:
        count = min(len(data), count)
        per_batch = max(1, count // JUDGE_MINIBATCHES)
        stream = BatchStream(data, seed=seed)
        return [move_to(stream.next_batch(per_batch), device) for _ in range(max(1, count // per_batch))]

    def losses(self, model: torch.nn.Module) -> np.ndarray:
        """The loss on each minibatch of the subset (eval mode, no gradients)."""
        started = time.perf_counter()
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                return np.array([float(self.task.loss_fn(model, batch)) for batch in self.batches])
        finally:
            model.train(was_training)
            self.seconds += time.perf_counter() - started


@dataclass
class Branch:
    """One contender: the configuration a fork continues with."""

    role: str
    batch_size: int
    lr: float
    accumulation_steps: int = 1
    #: The race is biased against this branch (a larger lr: on a short stretch its faster progress
    #: shows only later), so it wins unless it is clearly behind, instead of only when clearly ahead.
    favoured: bool = False


@dataclass
class BranchOutcome:
    """How a branch did over the race's stretch."""

    role: str
    batch_size: int
    lr: float
    accumulation_steps: int
    steps: int
    samples: int
    train_seconds: float
    cooled_loss: float
    diverged: bool
    #: The task's metric of the cooled copy (a validation after the cooldown).
    cooled_metric: float = math.nan
    #: Training seconds the branch saves over the incumbent to the same loss (+: faster), ± its
    #: standard error.
    advantage_seconds: float = 0.0
    advantage_se: float = 0.0
    won: bool = False


@dataclass
class RaceRecord:
    """One race: where it started, how far it ran, what it measured, and what won."""

    kind: str
    step: int
    samples: int
    train_seconds: float
    stretch_samples: int
    #: Stretches run (the race goes on while a challenger is ahead but not yet clearly).
    stretches: int = 0
    #: How fast the incumbent's training loss was falling (per training second) around the fork.
    loss_rate: float = 0.0
    outcomes: list[BranchOutcome] = field(default_factory=list)
    winner: str = "incumbent"
    #: A branch's cooled copy reached the target: it is the run's end.
    finished: bool = False
    #: Training seconds thrown away: the losing branches' stretches and every cooldown.
    discarded_seconds: float = 0.0
    #: The steps behind ``discarded_seconds``, by batch size (losing stretches and cooldowns): with
    #: a table of step times they give the waste in the same units as a fixed run's steps × t(B).
    discarded_steps: dict[str, int] = field(default_factory=dict)
    cooldown_seconds: float = 0.0
    judge_seconds: float = 0.0
    fork_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Contender:
    branch: Branch
    run: Run
    start_step: int
    start_samples: int
    outcome: BranchOutcome | None = None
    #: The judge's minibatch losses of the branch's cooled copy (None: diverged or not scored).
    scores: np.ndarray | None = None
    #: The cooled copy of the latest look, and the same copy when it reached the task's target (the
    #: race ends and the run is done).
    cooled: Run | None = None
    finished: Run | None = None
    #: (training seconds, steps) of each cooldown: discarded, but for a finished copy's last.
    cooldowns: list[tuple[float, int]] = field(default_factory=list)


def race(
    live: Run,
    challengers: list[Branch],
    stretch_samples: int,
    kind: str,
    *,
    configure: Callable[[Run, Branch], None],
    judge: Judge,
    loss_rate: float,
    max_stretches: int = 1,
    may_finish: Callable[[float], bool] = lambda loss: True,
) -> tuple[Run, RaceRecord]:
    """Race ``challengers`` (forks of ``live``) against it; return the winning run and the record.

    Every branch trains ``stretch_samples``, then is judged; while a challenger is neither clearly
    ahead nor clearly behind, the race goes on for another stretch, up to ``max_stretches``.
    ``loss_rate``: how fast the live run's validation loss (the judge's) has been falling, per
    training second. The live run keeps its hooks and its validation schedule; forks have neither.
    If the live run reaches the target during the race, the race ends there and it wins.
    ``may_finish(cooled loss)``: whether a cooled copy with that validation loss may reach the
    target (only then is it validated).
    """
    largest = max([live.batch_size, *(b.batch_size for b in challengers)])
    stretch = max(stretch_samples, 2 * largest)
    stretch -= stretch % largest  # every branch ends on a step boundary
    record = RaceRecord(kind, live.state.step, live.state.samples, live.state.train_seconds, stretch)
    record.loss_rate = loss_rate
    judged_before = judge.seconds
    incumbent = Branch("incumbent", live.batch_size, live.peak_lr, live.state.accumulation_steps)
    contenders = [_Contender(incumbent, live, live.state.step, live.state.samples)]
    for branch in challengers:
        started = time.perf_counter()
        fork = live.fork()
        configure(fork, branch)
        record.fork_seconds += time.perf_counter() - started
        contenders.append(_Contender(branch, fork, fork.state.step, fork.state.samples))
    cooldown = max(largest, round(COOLDOWN_FRACTION * stretch / largest) * largest)
    while True:
        record.stretches += 1
        for contender in contenders:
            _run_branch(contender, record.stretches * stretch, cooldown, record, judge,
                        is_live=contender.run is live)
            if contender.run is live and live.reached_at is not None:
                break
        if live.reached_at is not None:
            contenders = contenders[:1]  # the target: nothing can beat it
            break
        _try_to_finish(contenders, judge, may_finish)
        if any(c.finished is not None for c in contenders):
            break
        _judge_all(record, contenders)
        undecided = [c for c in contenders[1:] if c.outcome is not None and not c.branch.favoured
                     and abs(c.outcome.advantage_seconds) <= Z_CLEAR * c.outcome.advantage_se]
        if not undecided or record.stretches >= max_stretches:
            break
    record.judge_seconds = judge.seconds - judged_before
    return _conclude(record, contenders)


def _run_branch(contender: _Contender, samples: int, cooldown: int, record: RaceRecord, judge: Judge, *,
                is_live: bool) -> None:
    """Train the branch to ``samples`` since the fork, then score a cooled copy of it."""
    run, branch = contender.run, contender.branch
    if run.diverged:
        return
    run.train_until(max_steps=contender.start_step + samples // run.batch_size, validate=is_live)
    times = [seconds for _b, seconds, _l in run.step_log[contender.start_step:]]
    contender.outcome = BranchOutcome(
        role=branch.role, batch_size=branch.batch_size, lr=branch.lr,
        accumulation_steps=branch.accumulation_steps, steps=run.state.step - contender.start_step,
        samples=run.state.samples - contender.start_samples,
        train_seconds=len(times) * statistics.median(times) if times else 0.0,
        cooled_loss=math.nan, diverged=run.diverged,
    )
    contender.scores, contender.cooled = None, None
    if run.diverged or (is_live and run.reached_at is not None):
        return
    copy = run.fork()
    steps = max(1, cooldown // run.batch_size)
    peak, before = run.peak_lr, copy.state.train_seconds
    for index in range(steps):
        copy.set_lr(max(peak * (1.0 - index / steps), peak * 1e-6))
        copy.step()
        if copy.diverged:
            contender.outcome.diverged = True
            break
    contender.cooldowns.append((copy.state.train_seconds - before, copy.state.step - run.state.step))
    record.cooldown_seconds += contender.cooldowns[-1][0]
    if contender.outcome.diverged:
        return
    contender.scores = judge.losses(copy.model)
    contender.outcome.cooled_loss = float(np.mean(contender.scores))
    if not math.isfinite(contender.outcome.cooled_loss):
        contender.outcome.diverged = True
        contender.scores = None
        return
    contender.cooled = copy


def _try_to_finish(contenders: list[_Contender], judge: Judge, may_finish: Callable[[float], bool]) -> None:
    """Validate the cooled copy with the lowest validation loss, where that loss may reach the
    target: it is what annealing now would give, and where it reaches the target the run is done
    (at most one validation a look, not one a branch)."""
    scored = [c for c in contenders if c.cooled is not None and c.outcome is not None
              and math.isfinite(c.outcome.cooled_loss)]
    if not scored:
        return
    best = min(scored, key=lambda c: c.outcome.cooled_loss)  # type: ignore[union-attr]
    assert best.cooled is not None and best.outcome is not None
    if not may_finish(best.outcome.cooled_loss):
        return
    started = time.perf_counter()
    best.outcome.cooled_metric = best.cooled.validate().metric
    judge.seconds += time.perf_counter() - started
    if best.cooled.reached_at is not None:
        best.finished = best.cooled


def _judge_all(record: RaceRecord, contenders: list[_Contender]) -> None:
    """Each challenger's advantage over the incumbent, in training seconds, and its standard error."""
    incumbent = contenders[0]
    assert incumbent.outcome is not None
    for contender in contenders[1:]:
        outcome = contender.outcome
        assert outcome is not None
        if contender.scores is None or incumbent.scores is None:
            outcome.advantage_seconds, outcome.advantage_se = (-math.inf if outcome.diverged else 0.0), 0.0
            continue
        differences = incumbent.scores - contender.scores  # > 0: the challenger's loss is lower
        lead = float(np.mean(differences))
        count = len(differences)
        se = float(np.std(differences, ddof=1)) / math.sqrt(count) if count > 1 else math.inf
        saved = incumbent.outcome.train_seconds - outcome.train_seconds
        if record.loss_rate > 0:
            outcome.advantage_seconds = saved + lead / record.loss_rate
            outcome.advantage_se = se / record.loss_rate
        else:  # no measurable progress to convert: a lead counts only if it costs no more time
            outcome.advantage_seconds, outcome.advantage_se = (lead if saved >= 0 else -math.inf), se


def _conclude(record: RaceRecord, contenders: list[_Contender]) -> tuple[Run, RaceRecord]:
    finisher = next((c for c in contenders if c.finished is not None), None)
    best, best_advantage = contenders[0], -math.inf
    for contender in contenders[1:]:
        outcome = contender.outcome
        if finisher is not None or outcome is None or outcome.diverged:
            continue
        if not math.isfinite(outcome.advantage_seconds):
            continue
        margin = Z_CLEAR * outcome.advantage_se
        # A larger lr gets the benefit of the doubt only where progress is measurable: on a plateau
        # nothing says its lead will come, and it must be clearly ahead like any other branch.
        favoured = contender.branch.favoured and record.loss_rate > 0
        qualifies = outcome.advantage_seconds >= -margin if favoured else outcome.advantage_seconds > margin
        if qualifies and outcome.advantage_seconds > best_advantage:
            best, best_advantage = contender, outcome.advantage_seconds
    if finisher is not None:
        best = finisher
    record.outcomes = [c.outcome for c in contenders if c.outcome is not None]
    for contender in contenders:
        if contender.outcome is not None:
            contender.outcome.won = contender is best
    record.winner = best.branch.role
    record.finished = finisher is not None
    kept_cooldown = finisher.cooldowns[-1][0] if finisher is not None else 0.0
    record.discarded_seconds = (sum(o.train_seconds for o in record.outcomes if not o.won)
                                + record.cooldown_seconds - kept_cooldown)
    for contender in contenders:
        if contender.outcome is None:
            continue
        if not contender.outcome.won:
            _count(record, contender.outcome.batch_size, contender.outcome.steps)
        discarded = contender.cooldowns[:-1] if contender is finisher else contender.cooldowns
        for _seconds, steps in discarded:
            _count(record, contender.branch.batch_size, steps)
    return (finisher.finished if finisher is not None and finisher.finished is not None else best.run), record


def _count(record: RaceRecord, batch_size: int, steps: int) -> None:
    key = str(batch_size)
    record.discarded_steps[key] = record.discarded_steps.get(key, 0) + steps
