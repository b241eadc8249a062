"""The run-wide settings of a DataCollection (mixed in): what identifies a row, the default
device and the failure policy shape the plan; the engine, the progress bar and the failures'
target are :class:`~embedflow.plan.RunSettings`, which a sink resolves when it runs.

>>> import embedflow as ef
>>> ef.dc([1]).set_device("cpu").set_engine("local").settings.engine
'local'
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Self

from ..engines import ENGINES
from ..errors import ColumnError, PlanError
from ..plan import ErrorTarget, Plan, RunSettings, check_device, check_error_target


class Settings:
    """The ``safe`` and ``set_*`` calls of :class:`~embedflow.DataCollection`."""

    __slots__ = ()
    _plan: Plan
    _named: bool
    _on_error: str
    _settings: RunSettings

    def _with(self, *, plan: Plan | None = None, settings: RunSettings | None = None, on_error: str | None = None) -> Self:
        raise NotImplementedError  # DataCollection's

    def _check_inputs(self, where: str, inputs: tuple[str, ...] | None) -> None:
        raise NotImplementedError  # DataCollection's

    def safe(self, errors: ErrorTarget = None) -> Self:
        """From here on, an item that fails is skipped and recorded instead of raising (called
        before any step, this covers rows the source cannot read too).

        ``errors`` receives one record per failure (row, step, error_type, message, item, key):
        a list to append to, a callable, or a file path for JSON lines. Each failure is also
        logged, and the run ends with a warning that counts them.

        >>> import embedflow as ef
        >>> import warnings; warnings.simplefilter("ignore")
        >>> ef.dc(["1", "x", "3"]).safe().map(int).to_list()
        [1, 3]
        """
        settings = self._settings.but(errors=check_error_target(errors)) if errors is not None else self._settings
        plan = replace(self._plan, source_errors="skip") if not self._plan.steps else self._plan
        return self._with(plan=plan, settings=settings, on_error="skip")

    def cache(self, path: str | os.PathLike[str]) -> Self:
        """Keep each row's results in the result store at ``path`` (a folder): a sink then
        computes only the rows whose content, or whose steps, the store has not seen — a
        notebook rerun after editing a list of texts embeds only the new ones. The same store
        as ``embedflow run``'s (see the README's "Incremental runs").

        >>> import embedflow as ef, tempfile
        >>> store = tempfile.mkdtemp()
        >>> ef.dc(["a", "b"]).map(str.upper).cache(store).to_list()
        ['A', 'B']
        >>> ef.dc(["a", "c"]).map(str.upper).cache(store).to_list()  # "a" comes from the store
        ['A', 'C']
        """
        return self._with(settings=self._settings.but(cache=os.fspath(path)))

    def set_device(self, device: str) -> Self:
        """The device for model steps that do not name one: auto, cpu, cuda, cuda:N or mps.

        >>> import embedflow as ef
        >>> ef.dc([1]).set_device("cpu").plan.device
        'cpu'
        """
        return self._with(plan=replace(self._plan, device=check_device(device)))

    def set_engine(self, engine: str) -> Self:
        """Choose the engine that runs the plan: ``local`` (default) or ``ray``. Only the name
        is checked here; the engine is loaded when a sink runs (which may also pass its own
        ``engine=``, e.g. ``to_list(engine="ray")``).

        >>> import embedflow as ef
        >>> ef.dc([1]).set_engine("local").settings.engine
        'local'
        """
        if engine not in ENGINES:
            msg = f"set_engine({engine!r}): not an engine: use one of {', '.join(map(repr, ENGINES))}"
            raise PlanError(msg)
        return self._with(settings=self._settings.but(engine=engine))

    def set_key(self, column: str) -> Self:
        """The column that identifies a row in outputs, errors files and vector stores (default:
        the path of a ``glob`` source, else the source row number).

        >>> import embedflow as ef
        >>> ef.dc["id", "text"]([("a", "x")]).set_key("id").plan.key_column
        'id'
        """
        if not self._named:
            msg = f"set_key({column!r}): a key column needs named rows, e.g. ef.dc['id', 'text'](...)"
            raise ColumnError(msg)
        self._check_inputs("set_key", (column,))
        return self._with(plan=replace(self._plan, key=column))

    def set_progress(self, show: bool | None) -> Self:
        """Show a progress bar while a sink runs: ``True``, ``False``, or ``None`` (default:
        only when stderr is a terminal and the run takes more than a second).

        >>> import embedflow as ef
        >>> ef.dc([1]).set_progress(False).settings.progress
        False
        """
        return self._with(settings=self._settings.but(progress=show))
