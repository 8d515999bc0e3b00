"""Scheduled sweeps on real SQLite and PostgreSQL stores: one sweep per cron tick, exactly once, linked, with drift
flags."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError
from scipy import stats
from sqlalchemy import update

from services import scheduler
from services.results import sweep_results
from services.store import Run, Schedule, Sweep, connect
from services.sweeps import list_sweeps

TEMPLATE = {"name": "nightly", "sizes": ["14m"], "seeds": [0, 1], "run": {"train": {"steps": 5}}}
T0 = datetime(2026, 11, 22, 3, 0, 30, tzinfo=UTC)


@pytest.fixture
def db(database_url):
    return connect(database_url)


def add(db, cron="0 * * * *"):
    schedule = scheduler.add_schedule(db, scheduler.ScheduleRequest(name="n", cron=cron, template=TEMPLATE))
    with db.begin() as s:  # created before T0's tick
        s.get(type(schedule), schedule.id).created_at = T0 - timedelta(hours=1, minutes=30)
    return schedule


def test_each_tick_fires_exactly_once_and_links_the_sweeps(db):
    add(db)
    first = scheduler.tick(db, T0)
    assert len(first) == 1
    assert scheduler.tick(db, T0 + timedelta(minutes=20)) == []  # same tick (03:00): nothing new
    second = scheduler.tick(db, T0 + timedelta(hours=1))  # 04:00
    assert len(second) == 1
    sweeps = {i["sweep"].id: i["sweep"] for i in list_sweeps(db)[0]}
    assert len(sweeps) == 2 and sweeps[second[0]].previous_sweep_id == first[0]
    assert sweeps[first[0]].schedule_id == sweeps[second[0]].schedule_id is not None


def test_a_tick_repeated_after_a_crash_makes_no_second_sweep(db):
    schedule = add(db)
    scheduler.tick(db, T0)
    with db.begin() as s:  # as if the process died after creating the sweep, before recording the tick
        # (a plain UPDATE: an ORM update is an edit, which bumps the revision)
        s.execute(update(Schedule).where(Schedule.id == schedule.id).values(last_fired_at=None, last_sweep_id=None))
    again = scheduler.tick(db, T0 + timedelta(seconds=5))  # a restarted control plane, same tick
    assert len(list_sweeps(db)[0]) == 1 and len(again) == 1


def test_missed_ticks_collapse_into_one(db):
    add(db)
    created = scheduler.tick(db, T0 + timedelta(hours=5))  # down for five ticks
    assert len(created) == 1 and len(list_sweeps(db)[0]) == 1


def test_deleted_schedules_stop_and_bad_cron_is_named(db):
    schedule = add(db)
    scheduler.delete_schedule(db, schedule.id)
    assert scheduler.tick(db, T0) == []
    with pytest.raises(ValidationError, match="cron"):
        scheduler.ScheduleRequest(name="x", cron="61 * * * *", template=TEMPLATE)


def finish(db, sweep_id: str, gaps: list[float]) -> None:
    with db.begin() as s:
        for run in s.query(Run).filter(Run.sweep_id == sweep_id):
            seed = run.spec["seed"]
            loss = 4.0 + (gaps[seed] if run.arm == "myopic" else 0.0)
            run.result = {"eval": {"loss": loss, "per_position": []}}
            run.set_status("succeeded")
        s.get(Sweep, sweep_id).status = "succeeded"


def test_a_paused_schedule_skips_its_ticks_and_resumes_at_the_next_one(db, tmp_path):
    schedule = add(db)
    assert len(scheduler.tick(db, T0)) == 1  # 03:00
    edit = scheduler.ScheduleEdit
    assert scheduler.edit_schedule(db, schedule.id, edit(paused=True)).paused
    assert scheduler.tick(db, T0 + timedelta(hours=2)) == []  # 04:00 and 05:00 pass while paused
    scheduler.edit_schedule(db, schedule.id, edit(paused=False), now=T0 + timedelta(hours=2, minutes=10))
    assert scheduler.tick(db, T0 + timedelta(hours=2, minutes=20)) == []  # no catching up on 05:00
    assert len(scheduler.tick(db, T0 + timedelta(hours=3))) == 1  # 06:00 fires
    now = scheduler.run_now(db, schedule.id)  # between ticks, linked after the last sweep
    last = scheduler.list_schedules(db)[0][0]
    assert last.last_sweep_id == now.id and len(list_sweeps(db)[0]) == 3
    assert scheduler.tick(db, T0 + timedelta(hours=3, minutes=5)) == []  # its cron goes on as before
    # a new cron fires from its next tick; a template that does not plan changes nothing
    scheduler.edit_schedule(db, schedule.id, edit(cron="30 * * * *", name="half past"), now=T0 + timedelta(hours=3))
    assert scheduler.tick(db, T0 + timedelta(hours=3, minutes=1)) == []
    assert len(scheduler.tick(db, T0 + timedelta(hours=3, minutes=31))) == 1
    outside = edit(template={**TEMPLATE, "run": {"data": {"kind": "text", "corpus": "/etc"}}})
    with pytest.raises(scheduler.InvalidRequest, match="template.run.data.corpus"):
        scheduler.edit_schedule(db, schedule.id, outside, allowed_roots=[tmp_path])
    kept = scheduler.list_schedules(db)[0][0]
    assert (kept.name, kept.cron, kept.template["sizes"]) == ("half past", "30 * * * *", ["14m"])
    with pytest.raises(ValidationError, match="never fires"):
        edit(cron="0 0 30 2 *")


def test_a_pause_or_edit_that_lands_mid_tick_wins(db):
    """The tick read the schedule, then a pause (or an edit) landed before it recorded itself: the tick records
    nothing and cancels the sweep it made; the next tick after resuming fires from the resume on."""
    schedule = add(db)
    stale = scheduler.list_schedules(db)[0][0]  # as tick() read it
    scheduler.edit_schedule(db, schedule.id, scheduler.ScheduleEdit(paused=True))
    assert scheduler._fire(db, stale, T0) is None
    (made,) = [i["sweep"] for i in list_sweeps(db)[0]]
    assert made.status == "cancelled" and made.schedule_id is None
    assert scheduler.list_schedules(db)[0][0].last_sweep_id is None
    run_now = scheduler.run_now(db, schedule.id)  # while paused: still linked, after whatever is latest
    assert scheduler.list_schedules(db)[0][0].last_sweep_id == run_now.id


def test_drift_is_a_paired_test_against_the_previous_sweep(db):
    """A rerun reuses its seeds: its gaps are compared seed by seed with the previous sweep's (Holm across sizes)."""
    add(db)
    (first,) = scheduler.tick(db, T0)
    finish(db, first, [0.10, 0.12])
    (second,) = scheduler.tick(db, T0 + timedelta(hours=1))
    finish(db, second, [0.40, 0.41])
    res = sweep_results(db, second)["sizes"][0]
    paired = stats.ttest_rel([0.40, 0.41], [0.10, 0.12]).pvalue
    assert sweep_results(db, second)["previous_sweep_id"] == first
    assert (res["test"], res["drift"], res["p_value"]) == ("paired t", True, pytest.approx(paired))
    assert res["p_holm"] == pytest.approx(paired)  # one size: nothing to adjust for
    (third,) = scheduler.tick(db, T0 + timedelta(hours=2))
    finish(db, third, [0.41, 0.44])
    assert sweep_results(db, third)["sizes"][0]["drift"] is False


def test_a_failing_schedule_does_not_stop_the_others(db):
    """A schedule whose stored template no longer plans (written by an older version, say) is skipped and logged;
    the good one beside it fires."""
    bad = add(db)
    with db.begin() as s:
        s.get(type(bad), bad.id).template = {**TEMPLATE, "run": {"train": {"steps": 0}}}
    good = add(db)
    (created,) = scheduler.tick(db, T0)
    assert {i["sweep"].schedule_id for i in list_sweeps(db)[0]} == {good.id}
    assert created
