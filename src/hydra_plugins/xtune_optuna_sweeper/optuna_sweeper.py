"""Hydra finds sweepers only under hydra_plugins; the implementation is xtune.launch.optuna_sweeper."""

from xtune.launch.optuna_sweeper import OptunaSweeper as _OptunaSweeper


class OptunaSweeper(_OptunaSweeper):
    __doc__ = _OptunaSweeper.__doc__
