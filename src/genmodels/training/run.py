"""What every task's training loop shares, as one object the loop calls (no callbacks):

    run = Run(cfg, config_text)
    run.track(modules={"model": model}, state={"opt": opt_step, "ema": ema})
    run.resume()                         # newest intact checkpoint, if any
    with run:                            # lock held, Ctrl-C / SIGTERM caught, logger open
        while run.step < cfg.steps and not run.stopping:
            metrics = ...one explicit step...
            run.end_step(metrics)        # step += 1; NaN check; log window; checkpoint if due
        run.finish()                     # the final checkpoint

The run folder is locked by rank 0 (``run_dir.RunLock``), refused when it holds another run
(unless resuming or overwriting), and cleared of temporaries left by killed writers. A
checkpoint holds the tracked modules' weights and the ``state_dict()`` of every tracked object,
plus the step, the log window and the RNG (``checkpoint.py``). A resumed run whose config
differs from the checkpoint's in anything but the bookkeeping keys (``RESUMABLE_CHANGES``) is
refused with the keys named; allowed changes are applied and printed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from .checkpoint import (
    CheckpointDamaged,
    capture_rng,
    checkpoint_dirs,
    load_state,
    restore_rng,
    verify_checkpoint,
    write_checkpoint,
)
from .config import RunConfig
from .distributed import DistInfo, all_reduce_mean, init_distributed
from .log_window import LogWindow
from .logging import RunLogger
from .run_dir import RunLock, StopSignal, check_fresh, clean_temporaries

__all__ = ["RESUMABLE_CHANGES", "Run", "TrainingDiverged", "TrainingStopped"]

# keys a resumed run may change: they steer the bookkeeping, not the optimisation so far
RESUMABLE_CHANGES = (
    "steps", "log_every", "ckpt_every", "ckpt_minutes", "keep_last", "sample_every",
    "progress", "device", "out_dir", "data.num_workers", "data.path", "latent.cache_path",
    "latent.vae_path", "text.path", "vqgan_dir", "cond_vqgan_dir",
    "cache.dir", "output.format", "output.weights", "output.fp16", "sample_prompts",
)  # fmt: skip


class TrainingStopped(Exception):
    """A stop signal ended the run after its checkpoint was written (``Run.finish``)."""


class TrainingDiverged(ValueError):
    """The loss or the weights became NaN / infinite (a ValueError: the CLI reports it in one
    line, like bad input)."""


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out |= _flatten(v, key + ".")
        else:
            out[key] = v
    return out


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Dotted keys whose values differ between two config mappings: key -> (old, new)."""
    a, b = _flatten(old), _flatten(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


class Run:
    """Folder, lock, logging, checkpoints, resume and stop signals of one training run."""

    def __init__(
        self,
        cfg: RunConfig,
        config_text: str,
        *,
        overwrite: bool = False,
        dist: DistInfo | None = None,
        ckpt_dir: str = "checkpoints",
        log_name: str = "log",
        fields: tuple[str, ...] = ("step", "loss"),
        owned: tuple[str, ...] | None = None,
    ) -> None:
        """``config_text``: the YAML of ``cfg`` stored with each checkpoint; ``ckpt_dir`` /
        ``log_name``: where under ``out_dir`` (tasks sharing a folder use their own);
        ``owned``: name prefixes of the files this task writes in ``out_dir`` (None: all)."""
        self.cfg = cfg
        self.config_text = config_text
        self.dist = dist or init_distributed(cfg.device)
        self.device = self.dist.device
        self.out_dir = Path(cfg.out_dir)
        self.ckpt_root = self.out_dir / ckpt_dir
        self.resuming, self.overwrite = False, overwrite
        self.log_name, self.fields, self.owned = log_name, fields, owned
        self.step = 0
        self.window = LogWindow()
        self.modules: dict[str, nn.Module] = {}
        self.stateful: dict[str, Any] = {}
        # functions (window sums, count) -> extra log fields, e.g. codebook usage
        self.summaries: list[Callable[[dict[str, Any], int], dict[str, float]]] = []
        self.lock: RunLock | None = None
        self.logger: RunLogger | None = None
        self.signal = StopSignal()
        self.last_record: dict[str, float] = {}
        self._last_save = time.monotonic()
        self._saved_step = -1
        self._t0, self._n0 = time.perf_counter(), 0

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    @property
    def stopping(self) -> bool:
        """A stop signal arrived: the loop ends after the current step (and checkpoints)."""
        return self.signal.requested is not None

    def track(self, modules: dict[str, nn.Module], state: dict[str, Any] | None = None) -> None:
        """Checkpoint ``modules``' weights (by name) and the ``state_dict()`` of each of
        ``state``'s objects (optimiser steps, EMA counters, generators need ``get_state``)."""
        self.modules |= modules
        self.stateful |= state or {}

    # ---- checkpoints -----------------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"step": self.step, "rng": capture_rng(),
                                 "window": self.window.state_dict()}  # fmt: skip
        for name, obj in self.stateful.items():
            state[name] = obj.get_state() if isinstance(obj, torch.Generator) else obj.state_dict()
        return state

    def save(self) -> Path | None:
        """Write a checkpoint of the current step (rank 0)."""
        self._last_save = time.monotonic()
        self._saved_step = self.step
        if not self.is_main:
            return None
        return write_checkpoint(self.ckpt_root, self.step, self.modules, self._state(),
                               self.config_text, keep_last=self.cfg.keep_last)  # fmt: skip

    def _check_config(self, path: Path) -> None:
        old = yaml.safe_load((path / "config.yaml").read_text()) or {}
        new = yaml.safe_load(self.config_text) or {}
        changes = config_changes(old, new)
        refused = {k: v for k, v in changes.items() if k not in RESUMABLE_CHANGES}
        if refused:
            listed = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in list(refused.items())[:8])
            raise ValueError(
                f"--resume: the config differs from the one {path} was trained with ({listed}); "
                "resume with the same settings, or start a new run (--overwrite or another "
                "out_dir)"
            )
        if self.is_main:
            for k, (a, b) in changes.items():
                print(f"resume: {k} changed {a!r} -> {b!r}", flush=True)

    def resume(self, path: str | Path | None = None) -> bool:
        """Continue from the newest intact checkpoint (damaged ones are skipped and named), or
        from checkpoint ``path``; False when there is none (a fresh run). Call after ``track``,
        before ``with run``."""
        self.resuming = True  # asked for: a folder holding this run is then expected
        found = checkpoint_dirs(self.ckpt_root) if path is None else [Path(path)]
        problems = []
        for path in reversed(found):
            try:
                verify_checkpoint(path)
            except CheckpointDamaged as exc:
                problems.append(str(exc))
                if self.is_main:
                    print(f"resume: skipping {exc}", flush=True)
                continue
            self._check_config(path)
            state = load_state(path, self.modules)
            self._load(state, path)
            if self.is_main:
                print(f"resumed at step {self.step} from {path}", flush=True)
            return True
        if found:
            raise CheckpointDamaged(
                f"--resume: no intact checkpoint under {self.ckpt_root}: " + "; ".join(problems)
            )
        return False

    def _load(self, state: dict[str, Any], path: Path) -> None:
        for name, obj in self.stateful.items():
            if name not in state:
                raise CheckpointDamaged(f"{path}/state.pt: has no {name!r} state")
            if isinstance(obj, torch.Generator):
                obj.set_state(state[name])
            else:
                obj.load_state_dict(state[name])
        self.window.load_state_dict(state["window"])
        restore_rng(state["rng"])
        self.step = int(state["step"])
        for name, module in self.modules.items():
            if not all(bool(torch.isfinite(p).all()) for p in module.state_dict().values()
                       if p.is_floating_point()):  # fmt: skip
                raise TrainingDiverged(f"{path}/{name}.safetensors holds NaN / infinite weights")

    # ---- the loop's bookkeeping ------------------------------------------------------------

    def __enter__(self) -> Run:
        """Start training: lock the folder (rank 0), refuse one holding another run unless this
        run resumed or overwrites it, drop temporaries of killed writers, catch Ctrl-C."""
        if self.is_main:
            self.lock = RunLock(self.out_dir).acquire()
            try:
                check_fresh(self.out_dir, self.resuming, self.overwrite, self.owned)
                clean_temporaries(self.ckpt_root)
                clean_temporaries(self.out_dir)
            except BaseException:
                self.lock.release()
                raise
        self.signal.__enter__()
        self.logger = RunLogger(self.out_dir, self.cfg.steps, self.step, self.is_main,
                                bar=self.cfg.progress, fields=self.fields,
                                name=self.log_name)  # fmt: skip
        self._t0, self._n0 = time.perf_counter(), self.step
        self._last_save = time.monotonic()
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self.signal.__exit__()
        if self.logger is not None:
            self.logger.close()
            self.logger = None
        if self.lock is not None:
            self.lock.release()

    def due(self, every: int) -> bool:
        """Whether the step just finished is a multiple of ``every`` (0: never)."""
        return bool(every) and self.step % every == 0

    def end_step(
        self, metrics: dict[str, Any], loss: torch.Tensor | float | None = None
    ) -> dict[str, Any]:
        """Close a step: stop on a non-finite ``loss`` (its mean over ranks is logged as
        ``loss``), count the step, add ``metrics`` to the log window, log it when due and, inside
        ``with run``, checkpoint when due. Returns ``metrics``."""
        if loss is not None:
            value = loss if isinstance(loss, torch.Tensor) else torch.tensor(float(loss))
            value = float(all_reduce_mean(value.float().to(self.device), self.dist))
            if not math.isfinite(value):
                kept = checkpoint_dirs(self.ckpt_root)
                raise TrainingDiverged(
                    f"step {self.step + 1}: the loss is {value}; training stopped without "
                    f"writing a checkpoint (newest kept: {kept[-1] if kept else 'none'}). "
                    "Lower optim.lr, enable optim.grad_clip or use fp32."
                )
            metrics = {"loss": value} | metrics
        self.step += 1
        self.window.add(metrics)
        if self.logger is None:  # a step taken outside ``with run`` (tests): no bookkeeping
            return metrics
        self.logger.advance()
        done = self.step == self.cfg.steps
        if self.due(self.cfg.log_every) or done:
            self.log()
        minutes = self.cfg.ckpt_minutes
        by_time = minutes > 0 and time.monotonic() - self._last_save > 60 * minutes
        if not done and (self.due(self.cfg.ckpt_every) or by_time or self.stopping):
            self.save()
            if self.stopping and self.is_main:
                print(f"stopped at step {self.step}, checkpoint written; continue with --resume",
                      flush=True)  # fmt: skip
        return metrics

    def log(self, extra: dict[str, float] | None = None) -> dict[str, float]:
        """Average the window into a record (plus ``extra``), write it and open a new window."""
        seconds = time.perf_counter() - self._t0
        record = {"step": self.step} | self.window.mean()
        for summary in self.summaries:
            record |= summary(self.window.sums, self.window.count)
        record |= extra or {}
        steps = self.step - self._n0
        record["images_per_s"] = steps * self.cfg.data.batch_size / max(seconds, 1e-9)
        self.window.reset()
        self.last_record = record
        if self.logger is not None:
            self.logger.log(self.step, record)
        return record

    def finish(self) -> Path | None:
        """The final checkpoint; a run stopped by a signal (its checkpoint already written)
        raises ``TrainingStopped`` instead."""
        if not self.stopping:
            return self.save()
        if self._saved_step != self.step:  # the signal came during the last step
            self.save()
        raise TrainingStopped(f"stopped at step {self.step} by {self.signal.requested}")
