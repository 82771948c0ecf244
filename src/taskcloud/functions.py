"""``@taskcloud.function``: run a function on adaptively scaled workers of its shape."""

from __future__ import annotations

import contextlib
import functools
import weakref
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Iterator
from concurrent.futures import CancelledError
from concurrent.futures import Future
from typing import Any
from typing import Generic
from typing import TypeVar
from typing import overload

import attrs

from taskcloud.errors import InvalidOptionError
from taskcloud.errors import TaskcloudError
from taskcloud.frames import hide_internals
from taskcloud.pools import Pool
from taskcloud.pools import PoolManager
from taskcloud.pools import pools
from taskcloud.providers import kinds
from taskcloud.specs import FunctionSpec
from taskcloud.specs import unknown_option

__all__ = ["Function", "StaysInProcess", "decorated", "function"]

R = TypeVar("R")

#: The decorated functions of this process, by the plain function they wrap. pytask
#: unwraps decorators down to the plain function; this finds the decoration again.
#: A weak mapping, not an attribute, so that the plain function pickles as before.
_DECORATED: weakref.WeakKeyDictionary[Callable[..., Any], Function[Any]] = (
    weakref.WeakKeyDictionary()
)


def decorated(function: Callable[..., Any]) -> Function[Any] | None:
    """The ``Function`` that decorates ``function``, if one does."""
    try:
        return _DECORATED.get(function)
    except TypeError:  # not weakly referenceable, so never decorated
        return None


class StaysInProcess(TypeError):
    """A decorated function was to be pickled, to run in another process."""


class Function(Generic[R]):
    """A function whose calls run on a pool of workers shaped by its spec.

    It looks like the wrapped function (name, signature, annotations), so that pytask
    collects it as usual, in whichever order it is combined with ``@pytask.task``.
    """

    def __init__(
        self, function: Callable[..., R], spec: FunctionSpec, manager: PoolManager = pools
    ) -> None:
        functools.update_wrapper(self, function)
        self._name: str = getattr(function, "__name__", repr(function))
        self._function = function
        self.spec = spec
        self._manager = manager
        with contextlib.suppress(TypeError):
            _DECORATED[function] = self

    def __reduce__(self) -> tuple[Any, ...]:
        raise StaysInProcess(
            f"taskcloud.function {self._name!r} cannot be pickled: its pool belongs to "
            "the process that decorated it. Call it from that process (under pytask, a "
            "task that calls it runs in pytask's process, on a thread of its own)."
        )

    def __repr__(self) -> str:
        if self.spec.cluster is not None:
            return f"<taskcloud.Function {self._name} on cluster {self.spec.cluster!r}>"
        return f"<taskcloud.Function {self._name} on {self.spec.pool().describe()}>"

    @property
    def pool(self) -> Pool:
        """The pool behind this function, started on first use.

        With ``cluster=`` it is the named cluster's workers, attached to (or the
        cluster started) on first use, and again once that cluster is gone.
        """
        name = self.spec.cluster
        if name is None:
            return self._manager.get(self.spec.pool())
        # Deferred like every pool's start: importing taskcloud imports no dask.
        from taskcloud.clusterpool import ClusterPool

        configuration = self.spec.configuration
        return self._manager.get_or_start(
            ("cluster", name), lambda: ClusterPool.attach(name, configuration)
        )

    @property
    def cluster(self) -> Any:
        """The dask cluster of this function's pool."""
        return self.pool.cluster

    @property
    def client(self) -> Any:
        """A dask client connected to this function's pool."""
        return self.pool.client

    def __call__(self, *args: Any, **kwargs: Any) -> R:
        """Run on a worker and return the result; a remote error re-raises here.

        Its traceback goes from the caller's line to the remote frames, without the
        pool's and ``concurrent.futures``' frames in between (see :mod:`taskcloud.frames`).
        An error on the caller's side (a shape the host cannot hold, an argument that
        cannot be pickled) goes from the caller's line to its one-line reason.
        """
        __tracebackhide__ = True  # this frame raises again: pytask and pytest leave it
        _rich_traceback_omit = True  # out, and so does rich, which draws pytask's boxes
        future = None
        try:
            future = self.submit(*args, **kwargs)
            return future.result()
        except Exception as failure:
            if future is None and not isinstance(failure, TaskcloudError):
                raise  # a fault of taskcloud's own keeps its frames, for its report
            hide_internals(failure)
            raise failure

    def submit(self, *args: Any, **kwargs: Any) -> Future[R]:
        """Start a call on a worker; the future works with ``concurrent.futures.wait``."""
        __tracebackhide__ = True
        _rich_traceback_omit = True
        try:
            return self.pool.submit(
                self._name,
                self._function,
                args,
                kwargs,
                retries=self.spec.retries,
                timeout=self.spec.timeout,
            )
        except TaskcloudError as error:
            hide_internals(error)
            raise error

    def map(self, *iterables: Iterable[Any], errors: str = "raise") -> Iterator[Any]:
        """Call once per item (or per zipped items); results come in input order.

        With ``errors="raise"`` the first failure cancels the remaining calls and is
        raised; with ``errors="return"`` a failed call's exception stands in its place.
        """
        __tracebackhide__ = True
        _rich_traceback_omit = True
        if errors not in ("raise", "return"):
            raise InvalidOptionError("errors", errors, "'raise' or 'return'")
        try:
            futures = self.pool.map(
                self._name,
                self._function,
                list(zip(*iterables, strict=False)),
                retries=self.spec.retries,
                timeout=self.spec.timeout,
            )
        except TaskcloudError as error:
            hide_internals(error)
            raise error
        return _in_order(futures, raise_first=errors == "raise")

    def local(self, *args: Any, **kwargs: Any) -> R:
        """Call the function in this process, e.g. to debug it."""
        return self._function(*args, **kwargs)


def _in_order(futures: list[Future[Any]], *, raise_first: bool) -> Iterator[Any]:
    __tracebackhide__ = True
    _rich_traceback_omit = True
    try:
        yield from _results(futures, raise_first=raise_first)
    except Exception as failure:
        hide_internals(failure)
        raise failure


def _results(futures: list[Future[Any]], *, raise_first: bool) -> Iterator[Any]:
    if not raise_first:
        for future in futures:
            exc = future.exception()
            yield exc if exc is not None else future.result()
        return
    first: list[BaseException] = []

    def cancel_rest(done: Future[Any]) -> None:
        if not done.cancelled() and done.exception() is not None and not first:
            first.append(done.exception())  # type: ignore[arg-type]
            for other in futures:
                other.cancel()

    for future in futures:
        future.add_done_callback(cancel_rest)
    for future in futures:
        try:
            yield future.result()
        except CancelledError:
            if first:
                raise first[0] from None
            raise


#: The options of ``@taskcloud.function``, as ``FunctionSpec`` orders them.
_OPTIONS = tuple(option.name for option in attrs.fields(FunctionSpec))


@overload
def function(fn: Callable[..., R], /) -> Function[R]: ...


@overload
def function(
    fn: None = None,
    /,
    *,
    cpu: int = 1,
    memory: int | str | None = None,
    gpu: int = 0,
    software: str | None = None,
    n_workers: int | list[int] | tuple[int, int] | None = None,
    keepalive: float | str = "30 s",
    environ: dict[str, str] | None = None,
    threads_per_worker: int = 1,
    retries: int = 1,
    timeout: float | str | None = None,
    provider: str | None = None,
    configuration: str | None = None,
    dashboard: bool = False,
    cluster: str | None = None,
) -> Callable[[Callable[..., R]], Function[R]]: ...


def function(fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:
    """Send calls of the decorated function to workers of the given shape.

    Use it bare, ``@taskcloud.function``, or with options,
    ``@taskcloud.function(cpu=4, memory="8 GiB", n_workers=[0, 4])``. Options are
    checked here, when the decorator is applied. ``configuration="name"`` takes the
    defaults from a saved cluster configuration; options given here win.
    ``dashboard=True`` gives the pool a dask dashboard, which every local user can read.

    ``cluster="analysis"`` sends the calls to the workers of the named cluster
    ``analysis`` instead of a pool of the function's own, and starts that cluster
    when it does not run: from ``configuration=``, else from the saved configuration
    named like the cluster. Shape options cannot be combined with it.
    """
    __tracebackhide__ = True  # a bad option shows the decorated line and the reason
    _rich_traceback_omit = True
    try:
        unknown = unknown_option("@taskcloud.function", options, _OPTIONS)
        if unknown is not None:
            raise unknown
        configuration = options.get("configuration")
        # With cluster=, the configuration is the one the cluster starts from.
        if configuration is not None and options.get("cluster") is None:
            from taskcloud.configurations import function_defaults

            options = {**function_defaults(configuration), **options}
        spec = FunctionSpec(**options)
        if spec.provider is not None:  # an unknown one fails here, not at the first call
            kinds.resolve(spec.provider)
    except TaskcloudError as error:
        hide_internals(error)
        raise error
    if fn is None:
        return lambda inner: Function(inner, spec)
    if not callable(fn):
        raise InvalidOptionError("function", fn, "a callable to decorate")
    return Function(fn, spec)
