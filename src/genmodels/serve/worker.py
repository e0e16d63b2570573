"""One model, one worker thread, one FIFO queue of tasks; progress and interruption.

Generation on a CPU takes seconds to minutes, and the model must not run two requests at once,
so the HTTP handlers only validate a request and put a ``Task`` on the queue; the single worker
thread runs the tasks in arrival order against the one loaded model and completes each task's
``Future``, which the handler awaits. The event loop stays free for ``/progress`` and
``/interrupt`` (torch releases the GIL while it computes). Switching the checkpoint is a task
too, so it never happens in the middle of a generation.

Interruption (A1111's ``/interrupt``): a flag of the running task that the sampler callback
checks at every step; it raises ``Interrupted`` carrying the last x0 estimate, which the task
decodes and returns, as A1111 returns the images of an interrupted job. Queued tasks still run.
``/skip`` does the same for the current batch only; the task goes on with its next batch.

Progress follows A1111's ``progressapi``: ``progress = (job_no + step / steps) / job_count``
over the ``n_iter`` batches of the running task, ``eta_relative = elapsed / progress - elapsed``;
``state.job_count`` is 0 when idle (what webuiapi's ``util_wait_for_ready`` waits for).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from genmodels.pipelines.latent_diffusion import LatentDiffusionPipeline
from genmodels.serve.catalog import CheckpointEntry

__all__ = ["Interrupted", "LoadedModel", "QueueFull", "ShuttingDown", "Task", "TaskContext",
           "Worker"]  # fmt: skip


class Interrupted(Exception):  # noqa: N818 (a signal, not an error)
    """Raised from the sampler callback when the running task is interrupted."""

    def __init__(self, latents: Tensor | None) -> None:
        super().__init__("interrupted")
        self.latents = latents


class QueueFull(Exception):  # noqa: N818
    """More tasks are waiting than the server accepts (HTTP 429)."""


class ShuttingDown(Exception):  # noqa: N818
    """The server stops; queued tasks are not run (HTTP 503)."""


@dataclass
class LoadedModel:
    pipe: LatentDiffusionPipeline
    entry: CheckpointEntry  # with its sha256 (None for a folder)


@dataclass
class Task:
    """A unit of work for the worker: ``fn(context)`` returns the result of ``future``."""

    kind: str  # "txt2img" | "img2img" | "inpaint" | "load"
    fn: Callable[[TaskContext], Any]
    steps: int = 0  # sampling steps of one batch
    n_iter: int = 1  # batches
    future: Future = field(default_factory=Future)
    interrupted: threading.Event = field(default_factory=threading.Event)
    skipped: threading.Event = field(default_factory=threading.Event)  # the current batch only


class TaskContext:
    """What a running task sees: the model, and the callbacks that report its progress."""

    def __init__(self, worker: Worker, task: Task) -> None:
        self.worker, self.task = worker, task

    @property
    def model(self) -> LoadedModel:
        assert self.worker.model is not None, "no model loaded"
        return self.worker.model

    @property
    def interrupted(self) -> bool:
        return self.task.interrupted.is_set()

    def set_model(self, model: LoadedModel | None) -> None:
        self.worker.model = model

    def start_batch(self, job_no: int) -> None:
        self.task.skipped.clear()
        with self.worker._lock:
            self.worker._job_no, self.worker._step = job_no, 0
            self.worker._preview = None

    def sampler_callback(self, info: dict) -> None:
        """The sampler's per-step callback: record the step and x0 estimate; stop when asked."""
        denoised = info.get("denoised")
        latents = denoised.detach() if isinstance(denoised, Tensor) else None
        with self.worker._lock:
            self.worker._step = int(info.get("i", 0)) + 1
            if latents is not None:
                self.worker._preview = (self.worker._step, latents)
        if self.interrupted or self.task.skipped.is_set():
            raise Interrupted(latents)


class Worker:
    """The worker thread and its queue. ``submit`` from any thread; ``snapshot`` for progress."""

    def __init__(self, max_queue: int = 64) -> None:
        self.model: LoadedModel | None = None
        self.max_queue = max_queue
        self._queue: queue.Queue[Task | None] = queue.Queue()
        self._lock = threading.Lock()
        self._closed = False
        self._current: Task | None = None
        self._job_no = self._step = 0
        self._started = 0.0
        self._timestamp = ""
        self._preview: tuple[int, Tensor] | None = None
        self._thread = threading.Thread(target=self._loop, name="genmodels-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, task: Task) -> Future:
        with self._lock:
            if self._closed:
                raise ShuttingDown("the server is shutting down")
            if self._queue.qsize() >= self.max_queue:
                raise QueueFull(f"{self.max_queue} requests are already waiting; retry later")
            self._queue.put(task)
        return task.future

    def interrupt(self, skip: bool = False) -> bool:
        """Interrupt the running generation, or with ``skip`` only its current batch (A1111's
        ``/skip``: the next batch still runs). True when a generation was running."""
        with self._lock:
            task = self._current
        if task is None or task.kind == "load":
            return False
        (task.skipped if skip else task.interrupted).set()
        return True

    def shutdown(self, timeout: float = 30.0) -> None:
        """Refuse new tasks, interrupt the running one, fail the queued ones, stop the thread."""
        with self._lock:
            self._closed = True
        self.interrupt()
        while True:
            try:
                task = self._queue.get_nowait()
            except queue.Empty:
                break
            if task is not None and task.future.set_running_or_notify_cancel():
                task.future.set_exception(ShuttingDown("the server is shutting down"))
        self._queue.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _loop(self) -> None:
        while (task := self._queue.get()) is not None:
            if not task.future.set_running_or_notify_cancel():
                continue
            with self._lock:
                self._current, self._job_no, self._step = task, 0, 0
                self._started = time.monotonic()
                self._timestamp = time.strftime("%Y%m%d%H%M%S")
                self._preview = None
            result: Any = None
            error: BaseException | None = None
            try:
                result = task.fn(TaskContext(self, task))
            except BaseException as exc:  # noqa: BLE001 (every failure goes to its request)
                error = exc
            with self._lock:  # idle before the answer goes out: /progress then says so
                self._current, self._preview = None, None
            if error is None:
                task.future.set_result(result)
            else:
                task.future.set_exception(error)

    def snapshot(self) -> dict[str, Any]:
        """Progress of the running task, A1111's ``ProgressResponse`` fields (no image) plus
        ``preview``: (step, latest x0 estimate) or None."""
        with self._lock:
            task, job_no, step = self._current, self._job_no, self._step
            pending, preview = self._queue.qsize(), self._preview
            started, timestamp = self._started, self._timestamp
        busy = task is not None and task.kind != "load"
        if not busy:
            job_no = step = 0
        job_count = task.n_iter if busy else 0
        steps = task.steps if busy else 0
        state = dict(
            skipped=bool(task and task.skipped.is_set()),
            interrupted=bool(task and task.interrupted.is_set()),
            stopping_generation=False, job=task.kind if task else "", job_count=job_count,
            job_timestamp=timestamp if task else "0", job_no=job_no, sampling_step=step,
            sampling_steps=steps, queue_pending=pending,
        )  # fmt: skip
        progress = eta = 0.0
        if busy and job_count:
            progress = min(1.0, 0.01 + (job_no + (step / steps if steps else 0)) / job_count)
            elapsed = time.monotonic() - started
            eta = max(0.0, elapsed / progress - elapsed)
        text = None
        if task is not None:
            text = f"{task.kind}: batch {job_no + 1}/{job_count}, step {step}/{steps}"
            if task.kind == "load":
                text = "loading the checkpoint"
            if pending:
                text += f"; {pending} waiting"
        return dict(progress=progress, eta_relative=eta, state=state, textinfo=text,
                    preview=preview if busy else None)  # fmt: skip
