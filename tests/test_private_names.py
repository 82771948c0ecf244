"""Other libraries' private names that taskcloud still uses: each still has its shape.

Every name here is listed, with why and its fallback, in docs/architecture.md
("Private names of other libraries"). A library release that changes one fails here,
loudly, rather than in a user's run.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import multiprocessing.resource_tracker
import warnings
from concurrent.futures import ProcessPoolExecutor

import pytest


def test_a_dask_future_can_be_awaited_through_its_state():
    """``Future._state.wait()`` (providers.until_done) is a coroutine function."""
    from distributed.client import FutureState

    assert inspect.iscoroutinefunction(FutureState.wait)
    assert "_state" in inspect.getsource(__import__("distributed").Future.__init__)


def test_spec_cluster_correct_state_is_what_scaling_awaits():
    """``SpecCluster._correct_state`` (the cluster base quiets failed starts through it)."""
    from distributed import SpecCluster

    assert callable(SpecCluster._correct_state)
    assert "self._correct_state" in inspect.getsource(SpecCluster.scale)


def test_a_cluster_learns_of_workers_through_update_worker_status():
    """``Cluster._update_worker_status`` (the cluster base records which workers
    connected and the names of those gone): ``add`` with the workers, ``remove`` with
    an address."""
    from distributed.deploy.cluster import Cluster

    source = inspect.getsource(Cluster._watch_worker_status)
    assert "self._update_worker_status(op, msg)" in source
    assert list(inspect.signature(Cluster._update_worker_status).parameters) == [
        "self",
        "op",
        "msg",
    ]


def test_a_scheduler_registers_plugins_on_request():
    """The scheduler's ``register_scheduler_plugin`` request, as ``Client.register_plugin``
    sends it (providers.events.install sends it through a cluster's rpc): a pickled
    plugin, its name and ``idempotent``."""
    from distributed import Scheduler

    parameters = inspect.signature(Scheduler.register_scheduler_plugin).parameters
    assert list(parameters) == ["self", "plugin", "name", "idempotent"]
    assert '"register_scheduler_plugin": self.register_scheduler_plugin' in inspect.getsource(
        Scheduler.__init__
    )


def test_a_spec_clusters_adaptive_is_kept_on_it():
    """``Cluster._adaptive`` (Pool.close stops a pool's adaptive scaling before closing)."""
    from distributed.deploy.cluster import Cluster

    assert "self._adaptive" in inspect.getsource(Cluster.adapt)


def test_a_nanny_says_when_its_worker_exits():
    """``Nanny._on_worker_exit(exitcode)`` (PoolNanny reports exits through it)."""
    from distributed import Nanny

    assert inspect.iscoroutinefunction(Nanny._on_worker_exit)
    assert list(inspect.signature(Nanny._on_worker_exit).parameters) == ["self", "exitcode"]


def test_pytask_builds_a_capture_that_does_nothing():
    """``_pytask.capture._get_multicapture`` and ``CaptureManager._capturing``."""
    from _pytask.capture import CaptureManager
    from _pytask.capture import CaptureMethod
    from _pytask.capture import _get_multicapture

    idle = _get_multicapture(CaptureMethod.NO)
    idle.start_capturing()
    idle.stop_capturing()
    assert "_capturing" in inspect.getsource(CaptureManager.__init__)


def test_pytask_reads_its_configuration_file():
    """``_pytask.config_utils`` (the early start reads pytask's configuration with it)."""
    from _pytask.config_utils import find_project_root_and_config
    from _pytask.config_utils import read_config

    assert list(inspect.signature(find_project_root_and_config).parameters) == ["paths"]
    assert callable(read_config)


def test_pytask_live_display_takes_initial_status_and_update_task():
    """``LiveExecution.initial_status`` and ``update_task(signature, status=)``."""
    from _pytask.live import LiveExecution

    fields = {field.name for field in dataclasses.fields(LiveExecution)}
    assert "initial_status" in fields
    assert "status" in inspect.signature(LiveExecution.update_task).parameters


def test_a_process_pool_holds_its_processes():
    """``ProcessPoolExecutor._processes`` (interrupt kills them before shutting down)."""
    with ProcessPoolExecutor(max_workers=1) as executor:
        executor.submit(abs, -1).result(timeout=60)
        processes = executor._processes
        assert isinstance(processes, dict)
        assert all(hasattr(process, "kill") for process in processes.values())


@pytest.mark.parametrize("module", ["standard", "loky"])
def test_resource_trackers_know_their_pid(module):
    """``resource_tracker._resource_tracker._pid`` (loky's trackers are reniced)."""
    from loky.backend import resource_tracker as loky

    tracker = {"standard": multiprocessing.resource_tracker, "loky": loky}[module]
    tracker.ensure_running()
    assert isinstance(tracker._resource_tracker._pid, int)


def test_warnings_caches_can_be_reset():
    """``warnings._filters_mutated`` and ``_showwarning_orig`` (per-thread warning capture)."""
    warnings._filters_mutated()  # type: ignore[attr-defined]
    assert callable(warnings._showwarning_orig)  # type: ignore[attr-defined]


def test_until_done_falls_back_to_polling_without_the_state():
    """Without ``_state``, ``until_done`` still returns once the status is done."""
    from taskcloud.providers import until_done

    class Done:
        status = "finished"

    asyncio.run(asyncio.wait_for(until_done(Done()), 5))


def test_a_jobqueue_job_keeps_its_worker_command():
    """``dask_jobqueue.core.Job._command_template`` (allocation steps run it with srun)
    and a job's ``close`` that leaves its status alone (TaskcloudSlurmJob sets it)."""
    from dask_jobqueue.core import Job

    assert "self._command_template" in inspect.getsource(Job.__init__)
    assert "self.status" not in inspect.getsource(Job.close)
