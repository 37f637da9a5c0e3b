"""common/threads.py's BoundedSubmitter: what a bucket task queues for its writing threads stays
bounded however many photos it classifies, keeps no finished future, and loses no error."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from common.threads import BoundedSubmitter


def test_submissions_wait_for_a_slot_and_all_run():
    done, log = [], logging.getLogger("test.threads")
    with ThreadPoolExecutor(2) as pool:
        writes = BoundedSubmitter(pool, 4, log)
        for n in range(60):
            writes.submit(lambda n=n: (time.sleep(0.002), done.append(n)))
    assert sorted(done) == list(range(60))  # the pool's exit waited for the last ones
    assert writes.peak <= 4 and writes.unfinished == 0
    assert writes.slots.acquire(blocking=False)  # every slot given back


def test_what_the_work_raises_is_logged_not_lost(caplog):
    with ThreadPoolExecutor(1) as pool:
        writes = BoundedSubmitter(pool, 2, logging.getLogger("test.threads"))
        writes.submit(lambda: 1 / 0)
        writes.submit(threading.Event().set)
    failed = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(failed) == 1 and failed[0].exc_info[0] is ZeroDivisionError
    assert failed[0].code == "internal"
