"""A thin Hydra sweeper on Optuna's ask/tell API, with a persistent, resumable study.

Why not hydra-optuna-sweeper: its 1.3.0 release pins optuna<3. With it pip resolves optuna
2.10 with SQLAlchemy 2, whose RDB storage fails with an AssertionError, so a study cannot be
kept in SQLite and an interrupted search cannot continue (pinning SQLAlchemy<2 breaks alembic).
This sweeper keeps its search-space syntax (Hydra's `interval`, `tag(log, ...)`, `choice`,
`range`) on current Optuna:

- the study lives in `storage` (SQLite in the sweep directory by default): running the same
  command again continues it up to `n_trials` finished trials; trials left RUNNING by a killed
  sweep are marked failed (and not counted);
- a job that fails (an exception, OOM, a non-finite metric) is told to Optuna as FAIL, never
  stops the search;
- hyperparameters are sampled here, in the launching process only: jobs (and the DDP ranks
  they start) receive concrete values.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from xtune.errors import XtuneConfigError

log = logging.getLogger("xtune")


def distribution(key: str, sweep):
    """An Optuna distribution from a parsed Hydra sweep value."""
    import optuna.distributions as D

    if isinstance(sweep, ChoiceSweep):
        return D.CategoricalDistribution([c.value() if hasattr(c, "value") else c for c in sweep.list])
    if isinstance(sweep, RangeSweep):
        values = list(range(int(sweep.start), int(sweep.stop), int(sweep.step or 1))) \
            if all(float(v).is_integer() for v in (sweep.start, sweep.stop, sweep.step or 1)) else None
        if values is None:
            raise XtuneConfigError(f"hydra.sweeper.params.{key}: range() needs integers; use interval() for floats")
        return D.CategoricalDistribution(values)
    if isinstance(sweep, IntervalSweep):
        log_scale = "log" in (sweep.tags or set())
        if isinstance(sweep.start, int) and isinstance(sweep.end, int):
            return D.IntDistribution(sweep.start, sweep.end, log=log_scale)
        return D.FloatDistribution(float(sweep.start), float(sweep.end), log=log_scale)
    raise XtuneConfigError(
        f"hydra.sweeper.params.{key}={sweep}: expected interval(a,b), tag(log,interval(a,b)), choice(...) or range(...)"
    )


class OptunaSweeper(Sweeper):
    def __init__(
        self,
        params: dict | None = None,
        n_trials: int = 20,
        n_jobs: int = 1,
        direction: str = "maximize",
        study_name: str = "xtune",
        storage: str | None = None,
        sampler: Any = None,
    ):
        self.params = dict(params or {})
        self.n_trials, self.n_jobs = int(n_trials), max(int(n_jobs), 1)
        self.direction, self.study_name, self.storage = direction, study_name, storage
        self.sampler_config = sampler
        self.config: DictConfig | None = None
        self.launcher = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def _search_space(self, arguments: list[str]) -> tuple[dict, list[str]]:
        parser = OverridesParser.create()
        space, fixed = {}, []
        for override in parser.parse_overrides([f"{k}={v}" for k, v in self.params.items()]):
            space[override.get_key_element()] = distribution(override.get_key_element(), override.value())
        for override in parser.parse_overrides(arguments):
            if override.is_sweep_override():  # a sweep given on the command line joins the space
                space[override.get_key_element()] = distribution(override.get_key_element(), override.value())
            else:
                fixed.append(override.input_line)
        if not space:
            raise XtuneConfigError("hparams_search: no parameters to search; set hydra.sweeper.params")
        return space, fixed

    def _study(self):
        import optuna
        from hydra.utils import instantiate

        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        sampler = self.sampler_config  # Hydra has usually built it already from its _target_
        if isinstance(sampler, (dict, DictConfig)):
            sampler = instantiate(sampler)
        return optuna.create_study(study_name=self.study_name, storage=self.storage, sampler=sampler,
                                   direction=self.direction, load_if_exists=True)

    def sweep(self, arguments: list[str]) -> None:
        import optuna
        from hydra.core.utils import JobStatus

        space, fixed = self._search_space(arguments)
        study = self._study()
        # trials a killed sweep left RUNNING: failed, listed as interrupted, and not counted as done
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        interrupted = list(study.user_attrs.get("interrupted_trials", []))
        for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
            interrupted.append(trial.number)
            study.set_user_attr("interrupted_trials", interrupted)
            if (sweep_dir / str(trial.number)).is_dir():  # what the sweep summary will show for it
                from xtune.report import write_json

                write_json(sweep_dir / str(trial.number) / "summary.json",
                           {"status": "interrupted", "error": "the search was killed during this trial"})
        finished = [t for t in study.get_trials(deepcopy=False)
                    if t.state.is_finished() and t.number not in interrupted]
        log.info("study %s: %d of %d trials done (%s)", self.study_name, len(finished), self.n_trials,
                 self.storage or "in memory")
        done = len(finished)
        while done < self.n_trials:
            trials = [study.ask(space) for _ in range(min(self.n_jobs, self.n_trials - done))]
            batch = [fixed + [f"{key}={value}" for key, value in trial.params.items()] for trial in trials]
            returns = self.launcher.launch(batch, initial_job_idx=trials[0].number)
            exhausted = False
            for trial, result in zip(trials, returns):
                value = result.return_value if result.status == JobStatus.COMPLETED else None
                try:
                    if isinstance(value, (int, float)) and math.isfinite(float(value)):
                        study.tell(trial, float(value))
                    else:
                        trial.set_user_attr("error", "failed" if result.status != JobStatus.COMPLETED else "no metric")
                        study.tell(trial, state=optuna.trial.TrialState.FAIL)
                except RuntimeError as error:  # a grid or brute-force sampler that has tried everything
                    if "stop" not in str(error):  # asks the study to stop, which only optimize() allows
                        raise
                    exhausted = True
            done += len(trials)
            if exhausted:
                log.info("the sampler has tried every point of the search space: the search ends after %d trials", done)
                break
            self._stop_if_nothing_works(study, done, sweep_dir)
        self._write_results(study)

    def _stop_if_nothing_works(self, study, done: int, sweep_dir: Path) -> None:
        """The first trials all failed: the cause is the config, not the sampled values (an offline
        model, a missing data folder). Stop with one line instead of failing n_trials times."""
        import optuna

        first = min(3, self.n_trials)
        if done < first or study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            return
        from xtune.launch.sweep import collect, write

        rows = collect(sweep_dir, self.config.get("optimized_metric"))
        if rows:
            write(sweep_dir, rows, self.config.get("optimized_metric"))
        self._write_results(study)
        reason = next((row["error"] for row in rows if row.get("error")), "no metric was returned")
        raise XtuneConfigError(
            f"the first {done} trials of study {self.study_name} all failed (first: {reason}); fix that, then run "
            f"the same command to continue the search ({sweep_dir}/sweep_summary.md)")

    def _write_results(self, study) -> None:
        import optuna

        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        results = {
            "study_name": self.study_name,
            "direction": self.direction,
            "n_trials": len(study.trials),
            "n_complete": len(complete),
            "n_failed": sum(1 for t in study.trials if t.state == optuna.trial.TrialState.FAIL),
        }
        if complete:
            results["best_value"] = study.best_value
            results["best_params"] = study.best_params
            results["best_trial"] = study.best_trial.number
        (sweep_dir / "optimization_results.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(results)))
        log.info("best %s", results.get("best_params"))
