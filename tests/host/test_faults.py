"""A fast subset of benchmarks/faults.py against the real server: faults never corrupt a run.

Interrupts inside the first full step and inside a selective step, a user preset replaced or deleted
while a run using it is queued, two schedules on one MODEL queued back to back (shared session
server); the read-only preset folder and a SIGKILL during saves with a restart (own server, started
without the root capabilities that ignore file modes). After each fault the next run equals a fresh
run bitwise and nothing is lost or left half-written. The full counts are in
benchmarks/results/faults_cpu.md (`make bench-faults`).
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import faults  # noqa: E402
from comfy_client import ComfyServer  # noqa: E402

pytestmark = pytest.mark.host


def _assert_clean(t: faults.Tally) -> None:
    assert t.injected > 0, t.row()
    assert t.recovered == t.injected and t.lost == 0, t.row()


def test_interrupts_in_the_first_full_step_and_in_a_selective_step(comfy_server):
    t = faults.interrupts(comfy_server, 2)   # targets 0 and 1 are those two, by construction
    _assert_clean(t)
    assert not t.notes, t.notes
    log = comfy_server.server.log()
    assert log.count("ProCache [flux] interrupted after") >= 2


def test_preset_replaced_or_deleted_while_queued(comfy_server):
    t = faults.queued_preset_changes(comfy_server, comfy_server.server)
    _assert_clean(t)


def test_two_schedules_on_one_model_queued(comfy_server):
    _assert_clean(faults.two_schedules(comfy_server))


@pytest.fixture(scope="module")
def own_server(tmp_path_factory):
    srv = ComfyServer(workdir=tmp_path_factory.mktemp("faults"), launcher=faults.no_dac_launcher()).start()
    box = {"srv": srv}
    try:
        yield box
    finally:
        box["srv"].stop()


def test_read_only_preset_folder(own_server):
    _assert_clean(faults.read_only_folder(own_server["srv"]))


def test_killed_while_saving_then_restarted(own_server):
    t, own_server["srv"] = faults.restarts(own_server["srv"], 1)
    _assert_clean(t)
