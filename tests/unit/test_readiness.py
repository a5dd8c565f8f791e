"""`owc serve` is ready once every gateway process sharing the port has answered /ready 200
(cluster.readiness): one process's 200 while the other still answers 503 is not ready."""

from __future__ import annotations

import httpx
import pytest

from cluster.readiness import wait_gateways_ready


class Answers:
    """/ready as the kernel spreads fresh connections over the processes: a scripted sequence
    of (status, process), then the last one again."""

    def __init__(self, script: list[tuple[int, str]]):
        self.script = script
        self.calls = 0
        self.now = 0.0

    def get(self, url: str, timeout: float) -> httpx.Response:
        status, process = self.script[min(self.calls, len(self.script) - 1)]
        self.calls += 1
        return httpx.Response(status, json={"ready": status == 200, "models": {}, "process": process})

    def clock(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s


@pytest.mark.parametrize("processes, script, calls", [
    (1, [(200, "a")], 1),
    (2, [(200, "a"), (503, "b"), (200, "a"), (200, "b")], 4),
    (2, [(503, "a"), (503, "b"), (200, "b"), (200, "b"), (200, "a")], 5),
    (3, [(200, "a"), (200, "b"), (200, "a"), (200, "c")], 4),
])
def test_ready_once_every_process_has_answered_200(processes, script, calls):
    a = Answers(script)
    wait_gateways_ready("http://gw", processes, 10, get=a.get, clock=a.clock, sleep=a.sleep)
    assert a.calls == calls


@pytest.mark.parametrize("script, says", [
    ([(200, "a"), (503, "b")], '"ready":false'),  # b never routes: its 503 body is shown
    ([(200, "a")], "1 of 2 gateway processes ready"),  # only one process ever answers
])
def test_not_ready_while_one_process_never_answers_200(script, says):
    a = Answers(script)
    with pytest.raises(TimeoutError) as e:
        wait_gateways_ready("http://gw", 2, 5, get=a.get, clock=a.clock, sleep=a.sleep)
    assert "not ready after 5s" in str(e.value) and says in str(e.value).replace(" ", "" if '"' in says else " ")


def test_connection_errors_are_waited_out():
    a = Answers([(200, "a"), (200, "b")])
    real = a.get
    fails = iter([True, True, False, False])

    def get(url, timeout):
        if next(fails):
            raise httpx.ConnectError("refused")
        return real(url, timeout)

    wait_gateways_ready("http://gw", 2, 10, get=get, clock=a.clock, sleep=a.sleep)
    assert a.calls == 2


def test_something_else_answering_200_is_not_a_ready_gateway():
    now = [0.0]

    def get(url, timeout):
        return httpx.Response(200, text="<html>hello</html>")

    with pytest.raises(TimeoutError) as e:
        wait_gateways_ready("http://gw", 1, 3, get=get, clock=lambda: now[0],
                            sleep=lambda s: now.__setitem__(0, now[0] + s))
    assert "not an owc gateway's /ready" in str(e.value)
