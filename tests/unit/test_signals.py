"""`owc serve`'s signal handling: SIGTERM and SIGINT take the same path, an Interrupted
(KeyboardInterrupt) that unwinds the main thread into the teardown. The integration test
(tests/integration/test_shutdown.py) sends SIGTERM mid-stream and SIGINT during engine
start-up to a real `owc serve`; this table shows both signals reach that one path, so
neither needs its own real cluster for the other state."""

from __future__ import annotations

import os
import signal

import pytest

from cluster.signals import Interrupted, install_signal_handlers, ray_signals_as_interrupt


@pytest.fixture
def restored():
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for s, h in saved.items():
        signal.signal(s, h)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_both_signals_unwind_into_the_teardown_path(restored, sig):
    install_signal_handlers()
    assert signal.getsignal(signal.SIGINT) is signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted) as e:
        os.kill(os.getpid(), sig)
        signal.sigtimedwait([], 1)  # the handler runs on the main thread at the next bytecode; wait for it
    assert isinstance(e.value, KeyboardInterrupt) and str(e.value) == signal.Signals(sig).name


@pytest.mark.parametrize("code, raised", [
    (signal.SIGTERM, Interrupted),  # Ray's own handler during ray.init: sys.exit(signum)
    (signal.SIGINT, Interrupted),
    (1, SystemExit),  # any other exit is not a signal: left as it is
    (None, SystemExit),
])
def test_rays_exit_on_a_signal_during_its_start_unwinds_into_the_teardown(code, raised):
    with pytest.raises(raised) as e:
        with ray_signals_as_interrupt():
            raise SystemExit(code)
    assert type(e.value) is raised
    if raised is Interrupted:
        assert str(e.value) == signal.Signals(code).name
