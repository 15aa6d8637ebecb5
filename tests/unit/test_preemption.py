"""GracefulStop: each preemption signal sets Lightning's stop-at-the-batch-boundary flag.

One end-to-end resume per path runs in tests/integration/test_resume.py (SIGTERM, SIGKILL) and
tests/cluster (SLURM's USR2); here each signal is checked on its own, in this process.
"""

import os
import signal
from types import SimpleNamespace

import pytest

from xtune.launch.preemption import GracefulStop


@pytest.mark.parametrize("signum", [signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT], ids=lambda s: s.name)
def test_each_preemption_signal_asks_lightning_to_stop_after_the_batch(tmp_path, signum):
    connector = SimpleNamespace(received_sigterm=False)
    trainer = SimpleNamespace(_signal_connector=connector)
    stop = GracefulStop(str(tmp_path))
    before = signal.getsignal(signum)
    stop.on_train_start(trainer, None)
    try:
        os.kill(os.getpid(), signum)
        assert connector.received_sigterm is True  # Lightning raises SIGTERMException at the boundary
        assert stop.received == signum
        if signum == signal.SIGINT:  # Ctrl-C twice: stop at once
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signum)
    finally:
        stop.teardown(trainer, None, "fit")
    assert signal.getsignal(signum) == before  # handlers restored after the run


def test_slurm_signals_requeue_through_the_previous_handler(tmp_path):
    """Under submitit the previous USR2 handler requeues the job: it must be called."""
    calls = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: calls.append(signum))
    try:
        stop = GracefulStop(str(tmp_path))
        trainer = SimpleNamespace(_signal_connector=SimpleNamespace(received_sigterm=False))
        stop.on_train_start(trainer, None)
        os.kill(os.getpid(), signal.SIGUSR2)
        stop._requeue()
        assert calls == [signal.SIGUSR2]
        stop.teardown(trainer, None, "fit")
    finally:
        signal.signal(signal.SIGUSR2, previous)
