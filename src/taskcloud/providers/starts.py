"""What a pool's workers say when a timed call starts running."""

from __future__ import annotations

import time
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

from taskcloud.providers import CALL_STARTED
from taskcloud.providers import TIMED

__all__ = ["CallStarts"]


class CallStarts(WorkerPlugin):
    """On a pool's workers: says when a call with a timeout starts running.

    The scheduler sees a task go to a worker, which may still be busy with another;
    a timeout counts from the moment the worker's thread takes the call. Only keys
    that end in :data:`TIMED` are reported.
    """

    name = "taskcloud-call-starts"
    idempotent = True

    def setup(self, worker: Any) -> None:
        self.worker = worker

    def transition(self, key: Any, start: str, finish: str, **kwargs: Any) -> None:
        if finish == "executing" and str(key).endswith(TIMED):
            self.worker.log_event(CALL_STARTED, {"key": str(key), "since": time.time()})
