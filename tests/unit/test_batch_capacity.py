"""The capacity controller's batch backlog signal (cluster.capacity.signals: batch_queue) from the
gateways' owc_batch_lines_waiting, evaluated by promtool on synthetic series: the lines of every
gateway process for the model, 0 while none wait. (Its use, a budget never load, is
test_capacity_burst's table.)"""

from __future__ import annotations

from cluster.capacity.signals import queries
from tests.unit.test_capacity_signals import promtool_test


def test_the_batch_backlog_is_every_gateway_process_lines_of_the_model(tmp_path):
    series = [('owc_batch_lines_waiting{instance="a:1", model="m"}', "3 3 3"),
              ('owc_batch_lines_waiting{instance="b:1", model="m"}', "2 2 2"),
              ('owc_batch_lines_waiting{instance="a:1", model="other"}', "7 7 7"),
              ('owc_batch_lines_waiting{instance="a:1", model="idle"}', "0 0 0")]
    promtool_test(tmp_path, series, [(queries("m")["batch_queue"], "30s", 5), (queries("idle")["batch_queue"], "30s", 0)])
