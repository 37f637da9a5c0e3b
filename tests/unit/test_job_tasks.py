"""scripts/job_tasks.py: the task count for a bucket size and a deadline, from measured rates."""

from __future__ import annotations

import pytest

from scripts.job_tasks import MAX_TASKS, Measured, duration_s, main, measured, plan

RATES = Measured(photos_per_s=25.0, planning_s_per_million=20.0, start_s=3.0)


@pytest.mark.parametrize("photos", [1, 999, 90_000, 2_000_000, 30_000_000])
@pytest.mark.parametrize("deadline_h", [1, 4, 24])
def test_the_fewest_tasks_that_meet_the_deadline(photos, deadline_h):
    deadline = deadline_h * 3600
    result = plan(photos, deadline, RATES)
    assert result.task_s <= deadline  # each task, running side by side, finishes in time
    if result.tasks > 1:  # and one task fewer would not
        fewer = RATES.start_s + photos / 1e6 * 20 + photos / (result.tasks - 1) / 25
        assert fewer > deadline
    assert result.task_timeout_s >= result.task_s  # the timeout never cuts a task short


def test_a_deadline_no_task_count_can_meet_is_refused():
    with pytest.raises(ValueError, match="start and list"):
        plan(100_000_000, 1800, RATES)  # listing 100 M names alone takes longer
    with pytest.raises(ValueError, match="split the prefix"):
        plan(10**9, 7 * 86400, Measured(0.001, 0.0, 0.0))
    assert MAX_TASKS == 10_000


def test_the_defaults_are_the_committed_measurements():
    rates = measured()
    assert 1 < rates.photos_per_s < 1000 and rates.planning_s_per_million > 0
    assert rates.start_s > 0


def test_the_command_line(capsys):
    assert main(["--photos", "2000000", "--deadline", "4h", "--photos-per-s", "50"]) == 0
    assert capsys.readouterr().out.startswith("tasks=3 task_timeout=")
    assert main(["--photos", "100000000", "--deadline", "10m"]) == 2
    assert duration_s("90") == 90 and duration_s("1.5h") == 5400
    with pytest.raises(SystemExit):
        main(["--photos", "5", "--deadline", "soon"])
