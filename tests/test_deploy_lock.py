"""The deploy lock: one holder per deploy identity and per database, a lease the holder keeps
alive itself, a fencing check that says whether a run that lost it may still undo its changes,
and a dead holder that blocks the next run only until its lease runs out."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from tasks.core.errors import DeployError, DeployLocked, LockLost, PermanentError
from tasks.release.identity import DeployIdentity, database_identity
from tasks.release.lock import LEASE_S, DeployLock, deploy_lock, lock_names
from tests.support.deploy_locks import (
    active_slots,
    forget,
    hold_in_subprocess,
    lease_in_redis,
    new_identity,
    revoke,
    same_database,
)

# -- names ------------------------------------------------------------------------------------


@pytest.mark.unit
def test_two_spellings_of_one_host_are_one_lock():
    one = DeployIdentity(database=database_identity("localhost", 55432, "architect"), target="t")
    two = DeployIdentity(database=database_identity("127.0.0.1", 55432, "architect"), target="t")
    assert lock_names(one) == lock_names(two)


@pytest.mark.unit
def test_two_targets_on_one_database_share_the_database_lock_only():
    db = database_identity("localhost", 55432, "architect")
    one, two = DeployIdentity(database=db, target="a"), DeployIdentity(database=db, target="b")
    assert lock_names(one)[0] == lock_names(two)[0]
    assert lock_names(one)[1] != lock_names(two)[1]


@pytest.mark.unit
def test_lock_lost_is_a_deploy_error_that_says_whether_the_run_may_undo():
    lost = LockLost("gone", may_undo=True)
    assert isinstance(lost, PermanentError) and isinstance(lost, DeployError)
    assert lost.may_undo is True
    assert LockLost("gone", may_undo=False).may_undo is False


# -- against the sandbox's Prefect server ------------------------------------------------------


@pytest.fixture
def identity(sandbox_up) -> Iterator[DeployIdentity]:
    made = new_identity()
    yield made
    forget(made)


@pytest.mark.sandbox
def test_taken_checked_and_released(identity):
    with deploy_lock(identity, wait=False) as lock:
        assert lock.lease_id is not None and lease_in_redis(lock.lease_id)
        assert [active_slots(name) for name in lock.names] == [1, 1]
        lock.check()
        lease = lock.lease_id
    assert not lease_in_redis(lease)
    assert [active_slots(name) for name in lock.names] == [0, 0]
    with deploy_lock(identity, wait=False) as again:  # free at once: nothing left over
        again.check()


@pytest.mark.sandbox
def test_a_second_taker_is_refused_without_waiting(identity):
    with deploy_lock(identity, wait=False), pytest.raises(DeployLocked), deploy_lock(identity, wait=False):
        pytest.fail("took a lock that is held")


@pytest.mark.sandbox
def test_localhost_and_127_0_0_1_are_one_database(sandbox_up):
    by_name = new_identity("localhost")
    by_address = same_database(by_name, "127.0.0.1")
    other_target = DeployIdentity(database=by_name.database, target="another-target")
    try:
        with deploy_lock(by_name, wait=False):
            for rival in (by_address, other_target):  # the same database either way
                with pytest.raises(DeployLocked), deploy_lock(rival, wait=False):
                    pytest.fail(f"{rival} took a database that is held")
    finally:
        for made in (by_name, other_target):
            forget(made)


@pytest.mark.sandbox
def test_a_waiting_taker_gets_the_lock_once_the_holder_releases_it(identity):
    first = DeployLock(identity)
    first.acquire(wait=False)
    got: list[tuple[DeployLock, bool]] = []
    released = threading.Event()

    def take() -> None:
        second = DeployLock(identity)
        second.acquire(wait=True)
        got.append((second, released.is_set()))

    taker = threading.Thread(target=take)
    taker.start()
    taker.join(5)  # it is waiting, not refused
    assert taker.is_alive() and not got
    released.set()
    first.release()
    taker.join(60)
    assert got, "the waiting taker never got the lock"
    second, after_release = got[0]
    assert after_release, "the second taker got the lock while the first held it"
    second.check()
    second.release()


@pytest.mark.sandbox
def test_a_lease_revoked_behind_the_holders_back_is_lost_and_taken_back(identity):
    with deploy_lock(identity, wait=False) as lock:
        old = lock.lease_id
        revoke(old)
        with pytest.raises(LockLost) as lost:
            lock.check()
        assert lost.value.may_undo, "nobody held the lock in between: the run may undo its own changes"
        assert lock.lease_id not in (None, old)  # held again, under a new lease
        lock.check()
        with pytest.raises(DeployLocked), deploy_lock(identity, wait=False):
            pytest.fail("took a lock that was taken back")


@pytest.mark.sandbox
def test_a_run_that_lost_the_lock_to_another_may_not_undo(identity):
    with deploy_lock(identity, wait=False) as lock:
        revoke(lock.lease_id)
        with deploy_lock(identity, wait=False) as intruder:  # another run held it in between...
            intruder.check()
        with pytest.raises(LockLost) as lost:  # ...and released it: ours to retake, not to undo with
            lock.check()
        assert not lost.value.may_undo
        assert lock.lease_id is None
    with deploy_lock(identity, wait=False) as next_run:  # and the retaken lease was given back
        next_run.check()


@pytest.mark.sandbox
def test_a_run_that_lost_the_lock_to_a_holder_may_not_undo(identity):
    with deploy_lock(identity, wait=False) as lock:
        revoke(lock.lease_id)
        with deploy_lock(identity, wait=False) as holder:
            with pytest.raises(LockLost) as lost:
                lock.check()
            assert not lost.value.may_undo
            holder.check()  # the holder keeps it


@pytest.mark.sandbox
@pytest.mark.timeout(300)
def test_a_killed_holder_frees_the_lock_within_its_lease_and_a_live_holder_keeps_its_own(identity):
    dead = hold_in_subprocess(identity)
    live_identity = new_identity()
    try:
        with deploy_lock(live_identity, wait=False) as live:  # held, never checked, for over a lease
            live_lease = live.lease_id
            dead.kill()  # SIGKILL: no release, no renewal
            with pytest.raises(DeployLocked), deploy_lock(identity, wait=False):
                pytest.fail("the dead holder's lease went before it expired")
            with deploy_lock(identity, wait=True) as next_run:
                # The lease (60 s) plus the server's repossessor pass (5 s): bounded, no manual step.
                assert next_run.waited_s < 2 * LEASE_S, f"waited {next_run.waited_s:.0f} s for a dead holder"
                next_run.check()
                print(f"a killed holder blocked the next taker for {next_run.waited_s:.1f} s")
            assert not lease_in_redis(dead.lease)
            live.check()  # its own renewals kept it past its first lease
            assert live.lease_id == live_lease
    finally:
        if dead.proc.poll() is None:
            dead.kill()
        forget(live_identity)
