"""The Slurm provider against a real single-node Slurm (the ``slurm`` fixture)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from pytask import ExitCode
from pytask import build

import taskcloud
from taskcloud.errors import ClusterStartError
from taskcloud.errors import JobFailedError
from taskcloud.errors import JobPendingError
from taskcloud.errors import ResourceUnavailableError
from taskcloud.errors import SlurmUnreachableError
from taskcloud.errors import WorkerLostError
from taskcloud.pools import pools
from tests.conftest import wait_for
from tests.helpers import toml_value
from tests.test_docs import DOCS_SRC

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(240)]

PROFILE = """
[tool.taskcloud.providers.{name}]
kind = "slurm"
python = "{python}"
pending_timeout = {pending_timeout}
death_timeout = 5
{extra}
"""


@pytest.fixture
def profile(slurm, tmp_path, monkeypatch):
    """Write a Slurm profile into the project of tmp_path (the working directory) and
    return its name; every job of ours is gone from squeue after the test."""
    monkeypatch.chdir(tmp_path)
    written: list[str] = []

    def _profile(name: str = "hpc", *, pending_timeout: float = 60, **extra: object) -> str:
        lines = "\n".join(f"{key} = {toml_value(value)}" for key, value in extra.items())
        written.append(
            PROFILE.format(
                name=name, python=sys.executable, pending_timeout=pending_timeout, extra=lines
            )
        )
        (tmp_path / "pyproject.toml").write_text("\n".join(written))
        return name

    yield _profile
    pools.close_all(kill=True)
    try:
        wait_for(lambda: not slurm.jobs(), 60, "every job leaving squeue")
    finally:
        slurm.cancel_all()


def where_am_i() -> dict[str, str | None]:
    """What a worker's job says about itself."""
    return {
        key: os.environ.get(key)
        for key in ("SLURM_JOB_ID", "SLURM_CPUS_PER_TASK", "SLURM_MEM_PER_NODE", "SLURM_STEP_ID")
    }


def test_pytask_run_sends_two_shapes_to_two_kinds_of_jobs(slurm, profile, tmp_path) -> None:
    """With -n 2, two decorated shapes run in jobs of their own shape; a plain task stays."""
    profile("hpc")
    (tmp_path / "task_shapes.py").write_text(
        textwrap.dedent(
            """
            import json, os
            from pathlib import Path
            from typing import Annotated
            from pytask import Product
            import taskcloud

            def job():
                return {k: os.environ.get(k) for k in
                        ("SLURM_JOB_ID", "SLURM_CPUS_PER_TASK", "SLURM_MEM_PER_NODE")}

            @taskcloud.function(provider="hpc", cpu=1, memory="600 MiB", keepalive="2 s")
            def task_small(path: Annotated[Path, Product] = Path("small.json")):
                path.write_text(json.dumps(job()))

            @taskcloud.function(provider="hpc", cpu=2, memory="1 GiB", keepalive="2 s")
            def task_big(path: Annotated[Path, Product] = Path("big.json")):
                path.write_text(json.dumps(job()))

            def task_plain(path: Annotated[Path, Product] = Path("plain.json")):
                path.write_text(json.dumps(job()))
            """
        )
    )

    session = build(paths=tmp_path, n_workers=2)

    assert session.exit_code == ExitCode.OK
    small = json.loads((tmp_path / "small.json").read_text())
    big = json.loads((tmp_path / "big.json").read_text())
    plain = json.loads((tmp_path / "plain.json").read_text())
    assert small["SLURM_JOB_ID"]
    assert big["SLURM_JOB_ID"]
    assert small["SLURM_JOB_ID"] != big["SLURM_JOB_ID"]
    assert (small["SLURM_CPUS_PER_TASK"], small["SLURM_MEM_PER_NODE"]) == ("1", "600")
    assert (big["SLURM_CPUS_PER_TASK"], big["SLURM_MEM_PER_NODE"]) == ("2", "1024")
    assert plain["SLURM_JOB_ID"] is None


def test_decorator_outside_pytask_keeps_credentials_private(slurm, profile, taskcloud_home) -> None:
    """A call runs in a job; the job's script, squeue and ps show no key; the private
    files are 0600 in a 0700 directory, removed on close, and the job leaves squeue.
    Its worker retires before the walltime, staggered."""
    profile("hpc", walltime="10:00")
    located = taskcloud.function(provider="hpc", cpu=1, memory="500 MiB")(where_am_i)

    seen = located()

    job = seen["SLURM_JOB_ID"]
    assert job in slurm.jobs()
    key_files = list((taskcloud_home / "slurm").glob("*/tls-key.pem"))
    assert len(key_files) == 1
    key = key_files[0].read_text()
    assert key_files[0].stat().st_mode & 0o777 == 0o600
    assert key_files[0].parent.stat().st_mode & 0o777 == 0o700
    secret = key.splitlines()[1]
    script = slurm.run("scontrol", "write", "batch_script", job, "-").stdout
    shown = slurm.run("scontrol", "show", "job", job).stdout + slurm.run("squeue", "-l").stdout
    processes = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert "--tls-key" in script
    assert "#SBATCH -t 10:00" in script
    assert "--lifetime 480s --lifetime-stagger 60s" in script
    for text in (script, shown, processes):
        assert secret not in text
        assert "PRIVATE KEY" not in text

    pools.close_all()

    wait_for(lambda: job not in slurm.jobs(), 60, f"job {job} leaving squeue")
    assert not list((taskcloud_home / "slurm").glob("*/tls-key.pem"))


def test_shape_no_node_holds_names_the_largest_node(slurm, profile) -> None:
    """cpu beyond any node of the partition fails at the first call, naming the node."""
    profile("hpc")
    huge = taskcloud.function(provider="hpc", cpu=slurm.cpus + 1)(where_am_i)

    with pytest.raises(ResourceUnavailableError, match=r"partition 'debug', whose largest node "
                       rf"is tcnode \({slurm.cpus} cores"):  # fmt: skip
        huge()


def test_a_shape_without_memory_names_its_memory_as_the_default() -> None:
    """cpu beyond every node, memory not given: the error names the memory as the
    default it is, not as if the user had asked for it."""
    from taskcloud.capacity import Shape
    from taskcloud.providers.slurm import Node
    from taskcloud.providers.slurm import SlurmCapacity
    from taskcloud.providers.slurm import SlurmOptions

    node = Node("tcnode", 2, 22 * 2**30)
    capacity = SlurmCapacity("hpc", "partition 'debug'", [node], SlurmOptions())
    with pytest.raises(
        ResourceUnavailableError,
        match=r"^cpu=8 \(memory defaults to 88 GiB\) cannot be satisfied: the hpc provider "
        r"has partition 'debug'",
    ):
        capacity.check(Shape.of(capacity, cpu=8, memory=None))
    with pytest.raises(ResourceUnavailableError, match=r"^cpu=8, memory=1 GiB cannot be"):
        capacity.check(Shape.of(capacity, cpu=8, memory=2**30))


def test_slurm_capacity_queues_rather_than_holds() -> None:
    """Slurm's queue does the waiting: a grant is capped only at max_jobs jobs of
    ``processes`` workers, nothing waits or is held, and fit is that cap (else what
    the nodes hold, at least one)."""
    from taskcloud.capacity import Shape
    from taskcloud.providers.slurm import Node
    from taskcloud.providers.slurm import SlurmCapacity
    from taskcloud.providers.slurm import SlurmOptions

    nodes = [Node("n1", 2, 4 * 2**30), Node("n2", 4, 8 * 2**30, gpus=("0",))]
    shape = Shape(cpu=2, memory=2**30)
    capped = SlurmCapacity("hpc", "partition 'debug'", nodes, SlurmOptions(max_jobs=2, processes=3))
    pool = object()
    assert capped.grant(pool, shape, 10, 0) == 6
    assert capped.grant(pool, shape, 4, 0) == 4
    assert not capped.waiting(pool)
    assert not capped.others_waiting(pool)
    assert capped.waited(pool) == 0.0
    assert capped.fit(shape) == 6
    capped.release(pool)
    free = SlurmCapacity("hpc", "partition 'debug'", nodes, SlurmOptions())
    assert free.grant(pool, shape, 100, 0) == 100
    assert free.fit(shape) == 3
    assert free.fit(Shape(cpu=4, memory=2**30, gpu=1)) == 1
    assert free.default_memory(2) == 4 * 2**30  # the smallest share among nodes of 2 cores
    assert "whose largest node is n2 (4 cores, 8 GiB, 1 GPUs)" in free.describe()


def test_provider_check_reports_the_versions_of_the_nodes_python(slurm, profile) -> None:
    """``taskcloud provider check`` on a healthy Slurm: each node of the partition with
    the Python, distributed and taskcloud versions that the profile's python reports in
    a job step there, and exit 0."""
    import platform

    import distributed
    from click.testing import CliRunner

    from taskcloud.cli import main

    profile("hpc")
    result = CliRunner().invoke(main, ["provider", "check", "hpc", "--json"])

    assert result.exit_code == 0, result.output
    listing = json.loads(result.output)
    assert listing["ok"] is True
    (node,) = listing["hosts"]
    assert node["host"] == "partition 'debug': tcnode"
    assert node["reachable"] is True
    assert node["python"] == platform.python_version()
    assert (node["distributed"], node["taskcloud"]) == (
        distributed.__version__,
        taskcloud.__version__,
    )
    assert node["versions_match"] is True
    assert node["cores"] == slurm.cpus

    table = CliRunner().invoke(main, ["provider", "check", "hpc"], env={"COLUMNS": "80"})
    assert table.exit_code == 0, table.output
    row = next(line for line in table.output.splitlines() if "tcnode" in line)
    assert " ok " in row
    assert platform.python_version() in row
    assert "versions differ" not in table.output
    wait_for(lambda: not slurm.jobs(), 60, "the check's job step leaving squeue")


def test_provider_check_says_why_a_python_could_not_report(slurm, profile, tmp_path) -> None:
    """A ``python`` the nodes lack: the node is reachable, its versions unknown, the
    reason shown instead of "versions differ", and exit 1."""
    from click.testing import CliRunner

    from taskcloud.cli import main

    profile("hpc")
    project = tmp_path / "pyproject.toml"
    project.write_text(project.read_text().replace(sys.executable, "/no/such/python3"))

    result = CliRunner().invoke(main, ["provider", "check", "hpc", "--json"])
    assert result.exit_code == 1, result.output
    (node,) = json.loads(result.output)["hosts"]
    assert node["reachable"] is True
    assert node["versions_match"] is False
    assert "/no/such/python3" in node["reason"]

    table = CliRunner().invoke(main, ["provider", "check", "hpc"], env={"COLUMNS": "80"})
    assert table.exit_code == 1
    assert "versions differ" not in table.output
    assert "/no/such/python3" in " ".join(table.output.split())


def test_provider_check_inside_an_allocation_reports_from_a_step_of_it(
    slurm, profile, monkeypatch
) -> None:
    """allocation = "current": the report runs as a step of the allocation, which is
    the one node listed, and no job of its own is submitted."""
    from click.testing import CliRunner

    from taskcloud.cli import main

    granted = slurm.run("salloc", "-N1", "-n1", "-c1", "--mem=800M", "--no-shell")
    allocation = re.search(r"Granted job allocation (\d+)", granted.stderr).group(1)
    try:
        monkeypatch.setenv("SLURM_JOB_ID", allocation)
        profile("inside", allocation="current")
        result = CliRunner().invoke(main, ["provider", "check", "inside", "--json"])

        assert result.exit_code == 0, result.output
        (node,) = json.loads(result.output)["hosts"]
        assert node["host"] == f"allocation {allocation}: tcnode"
        assert node["versions_match"] is True
        assert slurm.jobs() == [allocation]
    finally:
        slurm.run("scancel", allocation)


def test_job_pending_in_a_down_partition_fails_after_pending_timeout(slurm, profile) -> None:
    """A job its partition never schedules is cancelled after pending_timeout; the
    error names the job, its state and Slurm's reason."""
    profile("down", pending_timeout=2, queue="down")
    stuck = taskcloud.function(provider="down", cpu=1, memory="300 MiB")(where_am_i)

    with pytest.raises(JobPendingError, match=r"Slurm job \d+ was still PENDING \(reason: "
                       r"PartitionDown\) after pending_timeout=2 s"):  # fmt: skip
        stuck.submit().result(timeout=60)
    wait_for(lambda: not slurm.jobs(), 30, "the pending job's cancellation")


def test_held_job_fails_after_pending_timeout(slurm, profile) -> None:
    """A held job (here --hold) pends with JobHeldUser, and is cancelled the same way."""
    profile("held", pending_timeout=2, job_extra_directives=["--hold"])
    held = taskcloud.function(provider="held", cpu=1, memory="300 MiB")(where_am_i)

    with pytest.raises(JobPendingError, match=r"reason: JobHeldUser"):
        held.submit().result(timeout=60)


def test_failing_job_script_carries_its_stderr(slurm, profile) -> None:
    """A prologue that fails ends the job before its worker connects; the call's error
    carries the job's stderr."""
    profile("broken", job_script_prologue=["echo no-such-module-python/9 >&2", "exit 3"])
    broken = taskcloud.function(provider="broken", cpu=1, memory="300 MiB")(where_am_i)

    with pytest.raises(JobFailedError, match=r"(?s)ended \(FAILED\).*no-such-module-python/9"):
        broken.submit().result(timeout=60)


def test_unreachable_slurm_is_a_clear_error_in_seconds(slurm, profile, tmp_path, monkeypatch):
    """With no slurmctld at the configured address, the first call says Slurm could
    not be reached, within seconds."""
    profile("nowhere")
    conf = tmp_path / "elsewhere.conf"
    port = re.search(r"SlurmctldPort=(\d+)", slurm.conf.read_text()).group(1)
    conf.write_text(slurm.conf.read_text().replace(f"SlurmctldPort={port}", "SlurmctldPort=9"))
    monkeypatch.setenv("SLURM_CONF", str(conf))
    nowhere = taskcloud.function(provider="nowhere", cpu=1)(where_am_i)

    started = time.monotonic()
    with pytest.raises(SlurmUnreachableError, match="Slurm could not be reached"):
        nowhere()
    assert time.monotonic() - started < 30


NAP = """
import os, time
from pathlib import Path

def nap(marker):
    Path(marker).write_text(os.environ["SLURM_JOB_ID"])
    time.sleep(120)
"""


def _load_nap(tmp_path):
    (tmp_path / "naps.py").write_text(NAP)
    sys.path.insert(0, str(tmp_path))
    try:
        import naps
    finally:
        sys.path.remove(str(tmp_path))
    sys.modules.pop("naps", None)
    return naps.nap


def test_scancel_mid_task_reruns_then_names_the_job(slurm, profile, tmp_path) -> None:
    """A worker's job cancelled mid-task: the call runs again in another job; cancelled
    again, past its retries, it fails naming the task and the job."""
    profile("hpc")
    nap = taskcloud.function(provider="hpc", cpu=1, memory="300 MiB", retries=1)(
        _load_nap(tmp_path)
    )
    marker = tmp_path / "started"
    future = nap.submit(str(marker))
    jobs = []
    for _ in range(2):
        wait_for(marker.exists, 60, "the call starting in a job")
        job = marker.read_text()
        marker.unlink()
        jobs.append(job)
        slurm.run("scancel", job)

    with pytest.raises(WorkerLostError, match=rf"'nap'.*Slurm job {jobs[-1]}"):
        future.result(timeout=90)
    assert jobs[0] != jobs[1]


def test_inside_an_allocation_workers_are_steps(slurm, profile, monkeypatch) -> None:
    """allocation = "current" under salloc: the call runs as a step of that job."""
    granted = slurm.run("salloc", "-N1", "-n1", "-c1", "--mem=800M", "--no-shell")
    allocation = re.search(r"Granted job allocation (\d+)", granted.stderr).group(1)
    try:
        monkeypatch.setenv("SLURM_JOB_ID", allocation)
        profile("inside", allocation="current")
        stepped = taskcloud.function(provider="inside", cpu=1, memory="300 MiB")(where_am_i)

        seen = stepped()

        assert seen["SLURM_JOB_ID"] == allocation
        assert seen["SLURM_STEP_ID"] is not None
        assert slurm.jobs() == [allocation]  # no job of its own
        too_big = taskcloud.function(provider="inside", cpu=1, memory="2 GiB")(where_am_i)
        with pytest.raises(ResourceUnavailableError, match=f"allocation {allocation}"):
            too_big()
    finally:
        pools.close_all()
        slurm.run("scancel", allocation)


def test_named_cluster_workers_are_jobs_listed_and_cancelled_on_delete(
    slurm, profile, tmp_path, taskcloud_home
) -> None:
    """Cluster(name=..., provider="hpc"): its workers are jobs that list_clusters()
    names, and delete_cluster cancels its jobs. (Another process finding it by name:
    tests/test_contract.py.)"""
    # The user's profiles: the cluster's process runs outside the project.
    profile("hpc")
    user_profiles = (tmp_path / "pyproject.toml").read_text().replace("tool.taskcloud.", "")
    (taskcloud_home / "providers.toml").write_text(user_profiles)
    cluster = taskcloud.Cluster(
        name="on-slurm", provider="hpc", n_workers=1, worker_cpu=1, worker_memory="500 MiB"
    )
    try:
        client = cluster.get_client()
        in_job = lambda: __import__("os").environ.get("SLURM_JOB_ID")  # noqa: E731  # by value
        job = client.submit(in_job, pure=False).result(timeout=90)
        assert job in slurm.jobs()
        listed = taskcloud.list_clusters()["on-slurm"]
        assert listed["provider"] == "hpc"
        assert f"jobs {job}" in listed["where"]
    finally:
        taskcloud.delete_cluster("on-slurm")

    wait_for(lambda: job not in slurm.jobs(), 60, f"job {job} leaving squeue")


def test_named_cluster_from_the_projects_profile_cancels_its_jobs_when_idle(slurm, profile) -> None:
    """A named cluster whose provider is a profile of the project's pyproject.toml
    starts (its process runs elsewhere, with the resolved options), and after its
    idle_timeout every one of its jobs leaves squeue."""
    profile("hpc")
    cluster = taskcloud.Cluster(
        name="idle-slurm",
        provider="hpc",
        n_workers=1,
        worker_cpu=1,
        worker_memory="500 MiB",
        idle_timeout="10 s",
        shutdown_on_close=False,
    )
    try:
        client = cluster.get_client()
        in_job = lambda: __import__("os").environ.get("SLURM_JOB_ID")  # noqa: E731  # by value
        job = client.submit(in_job, pure=False).result(timeout=90)
        assert job in slurm.jobs()
        client.close()
        wait_for(lambda: "idle-slurm" not in taskcloud.list_clusters(), 90, "the idle stop")
        wait_for(lambda: job not in slurm.jobs(), 60, f"job {job} leaving squeue")
    finally:
        cluster.close()
        with contextlib.suppress(Exception):
            taskcloud.delete_cluster("idle-slurm")


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"queues": "short"}, r"provider_options=\{'queues': 'short'\}.*Slurm options among"),
        ({"walltime": "two hours"}, r"walltime='two hours'.*'02:00:00'"),
        ({"processes": 0}, r"processes=0.*a positive integer"),
        ({"processes": 2}, r"processes=2 is invalid\. Expected 1: one worker per job"),
        ({"pending_timeout": "soon"}, r"pending_timeout='soon'"),
        (
            {"job_extra_directives": "--foo"},
            r"^job_extra_directives='--foo' is invalid\. Expected a list of strings",
        ),
        (
            {"job_script_prologue": "module load python"},
            r"^job_script_prologue='module load python' is invalid\. Expected a list of strings",
        ),
        ({"job_script_prologue": [1]}, r"job_script_prologue=\[1\].*a list of strings"),
        ({"allocation": "mine"}, r"allocation='mine'.*'current'"),
    ],
)
def test_options_are_checked_when_the_provider_is_built(options, match) -> None:
    """Each option is validated with the value and its accepted form; unknown keys are
    listed; a lone string where a list belongs is refused."""
    from taskcloud.errors import InvalidOptionError
    from taskcloud.providers.slurm import SlurmProvider

    with pytest.raises(InvalidOptionError, match=match):
        SlurmProvider("hpc", options)


def test_docs_example_runs_on_slurm(slurm, tmp_path, monkeypatch) -> None:
    """docs_src/slurm: its decorated task runs in a job of the profile, the other here."""
    import shutil

    project = tmp_path / "slurm"
    shutil.copytree(DOCS_SRC / "slurm", project)
    monkeypatch.chdir(project)
    try:
        session = build(paths=project, n_workers=2)
    finally:
        pools.close_all()

    assert session.exit_code == ExitCode.OK
    report = (project / "bld" / "report.txt").read_text()
    assert re.fullmatch(r"pi is about 3\.1\d\d from Slurm job \d+\n", report)
    wait_for(lambda: not slurm.jobs(), 60, "every job leaving squeue")


def test_ctrl_c_of_a_pytask_run_cancels_its_jobs(slurm, profile, tmp_path) -> None:
    """Ctrl-C while a decorated task runs in a job: pytask ends and so does the job."""
    from tests.conftest import run_subprocess

    profile("hpc")
    marker = tmp_path / "running"
    (tmp_path / "task_hold.py").write_text(
        textwrap.dedent(
            f"""
            import os, time
            from pathlib import Path
            import taskcloud

            @taskcloud.function(provider="hpc", cpu=1, memory="300 MiB")
            def task_hold():
                Path({str(marker)!r}).write_text(os.environ["SLURM_JOB_ID"])
                time.sleep(300)
            """
        )
    )
    run = run_subprocess(tmp_path, "-n", "2")
    try:
        wait_for(marker.exists, 90, "the task running in a job")
        job = marker.read_text()
        os.killpg(run.pid, signal.SIGINT)
        run.communicate(timeout=60)
    finally:
        run.kill()
        run.wait()

    wait_for(lambda: job not in slurm.jobs(), 60, f"job {job} leaving squeue")


def test_a_named_clusters_worker_options_are_refused_not_dropped(slurm, profile) -> None:
    """dask-jobqueue starts the jobs' workers, so worker_options cannot reach them: the
    cluster does not start, and the error names the option and where job options go."""
    profile("hpc")
    with pytest.raises(ClusterStartError, match=r"worker_options=.*job_extra_directives"):
        taskcloud.Cluster(
            name="opts-slurm",
            provider="hpc",
            n_workers=1,
            worker_memory="500 MiB",
            worker_options={"nthreads": 2},
        )
    assert "opts-slurm" not in taskcloud.list_clusters()
    assert not slurm.jobs()
