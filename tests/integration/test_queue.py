"""mailapi.queue on a real WAL SQLite file: idempotent enqueue, fenced leases, housekeeping."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from mailapi import queue as outbound
from mailapi.db import open_engine, read_transaction, write_transaction
from mailapi.models import delivery_events, idempotency_keys, outbound_queue
from mailapi.queue import ClaimedMessage, Enqueued, NewMessage, QueueRow

NOW = 1_800_000_000.0
HOUR = 3600.0
DAY = 86_400.0
LEASE = 60.0


def new_message(name: str, *, expires_in: float = HOUR, keep_for: float = 2 * HOUR
                ) -> NewMessage:
    return NewMessage(
        digest=hashlib.sha256(name.encode()).hexdigest(), message_type="email_verification",
        recipient=f"{name}@example.com", envelope_sender="no-reply@example.org",
        subject=f"Subject {name}", message_id=f"<{name}@example.org>",
        message=f"Subject: {name}\r\n\r\nbody\r\n".encode(), expires_at=NOW + expires_in,
        keep_key_until=NOW + keep_for,
    )


def enqueue(engine: Engine, *messages: NewMessage, now: float = NOW) -> list[Enqueued]:
    with write_transaction(engine) as connection:
        return outbound.enqueue_many(connection, list(messages), now)


def claim(engine: Engine, *, now: float = NOW, limit: int = 10,
          max_age: float = DAY) -> list[ClaimedMessage]:
    return outbound.claim_batch(engine, now=now, limit=limit, lease_seconds=LEASE,
                                max_age_seconds=max_age)


def get(engine: Engine, queue_id: int) -> QueueRow | None:
    with read_transaction(engine) as connection:
        return outbound.get_message(connection, queue_id)


def row_count(engine: Engine) -> int:
    with read_transaction(engine) as connection:
        return int(connection.execute(select(func.count()).select_from(outbound_queue))
                   .scalar_one())


def lease_of(engine: Engine, queue_id: int) -> tuple[int | None, float | None]:
    with read_transaction(engine) as connection:
        row = connection.execute(
            select(outbound_queue.c.lease_token, outbound_queue.c.lease_expires_at)
            .where(outbound_queue.c.id == queue_id)).one()
    return row.lease_token, row.lease_expires_at


def test_enqueue_assigns_increasing_ids_and_stores_every_column(engine: Engine) -> None:
    results = enqueue(engine, new_message("a"), new_message("b"))
    results += enqueue(engine, new_message("c"), now=NOW + 5)
    ids = [result.queue_id for result in results]
    assert ids == sorted(ids) and len(set(ids)) == 3
    assert [r.duplicate for r in results] == [False, False, False]
    assert [r.queued_at for r in results] == [NOW, NOW, NOW + 5]
    row = get(engine, ids[2])
    assert row is not None
    assert (row.state, row.recipient, row.subject, row.message_id) == (
        "queued", "c@example.com", "Subject c", "<c@example.org>")
    assert (row.created_at, row.next_attempt_at, row.expires_at) == (NOW + 5, NOW + 5,
                                                                    NOW + HOUR)
    assert (row.attempts, row.reclaims, row.last_error, row.failed_reason) == (0, 0, None, None)


def test_duplicate_digest_in_a_later_call_answers_the_original(engine: Engine) -> None:
    [first] = enqueue(engine, new_message("a"))
    [again, other] = enqueue(engine, new_message("a"), new_message("b"), now=NOW + 30)
    assert again == Enqueued(first.queue_id, NOW, duplicate=True)
    assert other.duplicate is False and other.queue_id > first.queue_id
    assert row_count(engine) == 2


def test_duplicate_digest_within_one_batch_is_inserted_once(engine: Engine) -> None:
    results = enqueue(engine, new_message("a"), new_message("b"), new_message("a"))
    assert results[0].duplicate is False
    assert results[2] == Enqueued(results[0].queue_id, NOW, duplicate=True)
    assert row_count(engine) == 2


def test_replay_after_delivery_answers_the_original_id_and_inserts_nothing(
        engine: Engine) -> None:
    [first] = enqueue(engine, new_message("a"))
    [leased] = claim(engine)
    with write_transaction(engine) as connection:
        assert outbound.mark_delivered(connection, leased.queue_id, leased.lease_token)
    assert row_count(engine) == 0
    [replay] = enqueue(engine, new_message("a"), now=NOW + 60)
    assert replay == Enqueued(first.queue_id, NOW, duplicate=True)
    assert row_count(engine) == 0
    [fresh] = enqueue(engine, new_message("b"), now=NOW + 60)
    assert fresh.queue_id > first.queue_id  # AUTOINCREMENT: a deleted id is never reused


def test_enqueue_rolled_back_with_its_transaction_leaves_no_key(engine: Engine) -> None:
    with pytest.raises(RuntimeError), write_transaction(engine) as connection:
        outbound.enqueue_many(connection, [new_message("a")], NOW)
        raise RuntimeError("caller failed after enqueue")
    assert row_count(engine) == 0
    [result] = enqueue(engine, new_message("a"))
    assert result.duplicate is False


def test_claim_takes_only_due_rows_in_due_order(engine: Engine) -> None:
    [early] = enqueue(engine, new_message("early"), now=NOW - 10)
    [now_row] = enqueue(engine, new_message("now"))
    [later] = enqueue(engine, new_message("later"), now=NOW + 100)
    claimed = claim(engine)
    assert [m.queue_id for m in claimed] == [early.queue_id, now_row.queue_id]
    assert all(m.attempts == 1 for m in claimed)
    row = get(engine, later.queue_id)
    assert row is not None and row.state == "queued"
    assert [m.queue_id for m in claim(engine, now=NOW + 100)] == [later.queue_id]


def test_claim_respects_the_limit(engine: Engine) -> None:
    enqueue(engine, *(new_message(f"m{index}") for index in range(5)))
    assert len(claim(engine, limit=2)) == 2
    assert len(claim(engine, limit=2)) == 2
    assert len(claim(engine, limit=2)) == 1
    assert claim(engine, limit=2) == []


def test_claim_never_takes_expired_or_too_old_rows(engine: Engine) -> None:
    [expired] = enqueue(engine, new_message("expired", expires_in=50))
    [old] = enqueue(engine, new_message("old", expires_in=DAY), now=NOW - 2 * HOUR)
    [fresh] = enqueue(engine, new_message("fresh"))
    claimed = claim(engine, now=NOW + 50, max_age=2 * HOUR)
    assert [m.queue_id for m in claimed] == [fresh.queue_id]
    for queue_id in (expired.queue_id, old.queue_id):
        row = get(engine, queue_id)
        assert row is not None and (row.state, row.attempts) == ("queued", 0)


def test_each_claim_gets_a_larger_fencing_token_stored_on_its_rows(engine: Engine) -> None:
    enqueue(engine, new_message("a"), new_message("b"))
    [first] = claim(engine, limit=1)
    [second] = claim(engine, limit=1)
    assert second.lease_token > first.lease_token
    assert claim(engine) == []
    assert lease_of(engine, first.queue_id) == (first.lease_token, NOW + LEASE)
    assert lease_of(engine, second.queue_id) == (second.lease_token, NOW + LEASE)
    row = get(engine, first.queue_id)
    assert row is not None and row.state == "leased"


def test_concurrent_claims_from_two_engines_get_disjoint_rows(engine: Engine,
                                                              db_path: Path) -> None:
    ids = {r.queue_id for r in enqueue(engine, *(new_message(f"m{i}") for i in range(60)))}
    engines = [open_engine(db_path, durability="NORMAL", busy_timeout_ms=10_000)
               for _ in range(2)]
    barrier = threading.Barrier(2)
    taken: list[list[ClaimedMessage]] = [[], []]
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        try:
            for _ in range(10):  # both engines race for the write lock in every round
                barrier.wait(timeout=10)
                taken[index].extend(claim(engines[index], limit=3))
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(index,)) for index in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for other in engines:
        other.dispose()
    assert errors == []
    first, second = ({m.queue_id for m in batch} for batch in taken)
    assert len(first) == len(second) == 30
    assert first.isdisjoint(second) and first | second == ids
    tokens = [{m.lease_token for m in batch} for batch in taken]
    assert tokens[0].isdisjoint(tokens[1])


def _stale_and_current_lease(engine: Engine) -> tuple[ClaimedMessage, ClaimedMessage]:
    """A lease that expired and was reclaimed, and the newer lease on the same row."""
    enqueue(engine, new_message("a"))
    [stale] = claim(engine)
    with write_transaction(engine) as connection:
        assert outbound.release_expired_leases(connection, now=NOW + LEASE + 1,
                                               max_reclaims=5) == 1
    [current] = claim(engine, now=NOW + LEASE + 1)
    assert current.queue_id == stale.queue_id
    return stale, current


FENCED: dict[str, Callable[..., bool]] = {
    "mark_delivered": outbound.mark_delivered,
    "defer": lambda c, i, t: outbound.defer(c, i, t, next_attempt_at=NOW + 500,
                                            error="451 later", now=NOW + 70),
    "fail": lambda c, i, t: outbound.fail(c, i, t, reason="rejected", error="550 no",
                                          now=NOW + 70),
    "release": lambda c, i, t: outbound.release(c, i, t, now=NOW + 70),
}


@pytest.mark.parametrize("operation", sorted(FENCED))
def test_a_stale_fencing_token_changes_nothing(engine: Engine, operation: str) -> None:
    stale, current = _stale_and_current_lease(engine)
    before = get(engine, stale.queue_id)
    with write_transaction(engine) as connection:
        assert FENCED[operation](connection, stale.queue_id, stale.lease_token) is False
    assert get(engine, stale.queue_id) == before
    assert lease_of(engine, stale.queue_id)[0] == current.lease_token
    with write_transaction(engine) as connection:
        assert FENCED[operation](connection, current.queue_id, current.lease_token) is True
        assert FENCED[operation](connection, current.queue_id, current.lease_token) is False


def test_defer_requeues_with_the_error_and_keeps_the_attempt(engine: Engine) -> None:
    enqueue(engine, new_message("a"))
    [leased] = claim(engine)
    with write_transaction(engine) as connection:
        assert outbound.defer(connection, leased.queue_id, leased.lease_token,
                              next_attempt_at=NOW + 300, error="x" * 5000, now=NOW + 1)
    row = get(engine, leased.queue_id)
    assert row is not None
    assert (row.state, row.attempts, row.next_attempt_at) == ("queued", 1, NOW + 300)
    assert row.last_error == "x" * 2000
    assert lease_of(engine, leased.queue_id) == (None, None)
    assert claim(engine, now=NOW + 299) == []
    [again] = claim(engine, now=NOW + 300)
    assert again.attempts == 2


def test_fail_keeps_the_row_with_its_reason(engine: Engine) -> None:
    enqueue(engine, new_message("a"))
    [leased] = claim(engine)
    with write_transaction(engine) as connection:
        assert outbound.fail(connection, leased.queue_id, leased.lease_token,
                             reason="rejected", error="550 5.1.1 unknown user", now=NOW + 1)
    row = get(engine, leased.queue_id)
    assert row is not None
    assert (row.state, row.failed_reason, row.last_error) == (
        "failed", "rejected", "550 5.1.1 unknown user")
    assert claim(engine, now=NOW + 2) == []


def test_release_gives_the_message_back_without_counting_the_attempt(engine: Engine) -> None:
    enqueue(engine, new_message("a"))
    [leased] = claim(engine)
    assert leased.attempts == 1
    with write_transaction(engine) as connection:
        assert outbound.release(connection, leased.queue_id, leased.lease_token, now=NOW + 1,
                                error="queue paused")
    row = get(engine, leased.queue_id)
    assert row is not None
    assert (row.state, row.attempts, row.last_error) == ("queued", 0, "queue paused")
    [again] = claim(engine, now=NOW + 1)
    assert again.attempts == 1


def test_expired_leases_are_requeued_then_failed_as_poison(engine: Engine) -> None:
    [entry] = enqueue(engine, new_message("a", expires_in=DAY))
    [live] = enqueue(engine, new_message("live", expires_in=DAY), now=NOW + 1000)
    moment = NOW
    for reclaim in (1, 2):
        claimed = claim(engine, now=moment, limit=1)
        assert [m.queue_id for m in claimed] == [entry.queue_id]
        moment += LEASE + 1
        with write_transaction(engine) as connection:
            # The lease is not yet expired one second before its deadline.
            assert outbound.release_expired_leases(connection, now=moment - 2,
                                                   max_reclaims=2) == 0
            assert outbound.release_expired_leases(connection, now=moment,
                                                   max_reclaims=2) == 1
        row = get(engine, entry.queue_id)
        assert row is not None
        assert (row.state, row.reclaims, row.attempts) == ("queued", reclaim, reclaim)
        assert row.next_attempt_at == moment
    claim(engine, now=moment, limit=1)
    with write_transaction(engine) as connection:
        assert outbound.release_expired_leases(connection, now=moment + LEASE + 1,
                                               max_reclaims=2) == 1
    row = get(engine, entry.queue_id)
    assert row is not None
    assert (row.state, row.failed_reason, row.reclaims) == ("failed", "poison", 3)
    assert row.last_error is not None and "lease expired" in row.last_error
    untouched = get(engine, live.queue_id)
    assert untouched is not None and untouched.state == "queued"


def test_expire_overdue_fails_only_queued_rows_past_expiry_or_age(engine: Engine) -> None:
    [leased] = enqueue(engine, new_message("leased", expires_in=100), now=NOW - 1)
    assert [m.queue_id for m in claim(engine, now=NOW - 1)] == [leased.queue_id]
    [expired] = enqueue(engine, new_message("expired", expires_in=100))
    [old] = enqueue(engine, new_message("old", expires_in=DAY), now=NOW - DAY)
    [fresh] = enqueue(engine, new_message("fresh", expires_in=DAY))
    with write_transaction(engine) as connection:
        assert outbound.expire_overdue(connection, now=NOW + 100, max_age_seconds=DAY) == 2
    states = {queue_id: get(engine, queue_id) for queue_id in
              (expired.queue_id, old.queue_id, fresh.queue_id, leased.queue_id)}
    assert {k: (v.state, v.failed_reason) for k, v in states.items() if v} == {
        expired.queue_id: ("failed", "expired"), old.queue_id: ("failed", "expired"),
        fresh.queue_id: ("queued", None), leased.queue_id: ("leased", None)}


def _failed(engine: Engine, name: str, expires_in: float) -> int:
    [entry] = enqueue(engine, new_message(name, expires_in=expires_in))
    [leased] = claim(engine, limit=1)
    assert leased.queue_id == entry.queue_id
    with write_transaction(engine) as connection:
        outbound.fail(connection, leased.queue_id, leased.lease_token, reason="rejected",
                      error="550", now=NOW)
    return entry.queue_id


def test_retry_requeues_a_failed_message_unless_its_token_expired(engine: Engine) -> None:
    valid = _failed(engine, "valid", HOUR)
    expired = _failed(engine, "expired", 10)
    with write_transaction(engine) as connection:
        assert outbound.retry(connection, expired, now=NOW + 20, max_age_seconds=DAY) is False
        assert outbound.retry(connection, valid, now=NOW + 20, max_age_seconds=DAY) is True
        # a second retry finds it no longer failed
        assert outbound.retry(connection, valid, now=NOW + 20, max_age_seconds=DAY) is False
    row = get(engine, valid)
    assert row is not None
    assert (row.state, row.attempts, row.reclaims, row.failed_reason) == ("queued", 0, 0, None)
    assert row.next_attempt_at == NOW + 20
    still = get(engine, expired)
    assert still is not None and still.state == "failed"


def test_retry_refuses_messages_past_the_maximum_age(engine: Engine) -> None:
    old = _failed(engine, "old", HOUR)
    with write_transaction(engine) as connection:
        assert outbound.retry(connection, old, now=NOW + 120, max_age_seconds=60) is False
        assert outbound.retry_all_failed(connection, now=NOW + 120, max_age_seconds=60) == 0
        assert outbound.retry(connection, old, now=NOW + 30, max_age_seconds=60) is True


def test_retry_all_failed_skips_expired_tokens(engine: Engine) -> None:
    valid = [_failed(engine, f"valid{i}", HOUR) for i in range(2)]
    expired = _failed(engine, "expired", 10)
    with write_transaction(engine) as connection:
        assert outbound.retry_all_failed(connection, now=NOW + 20, max_age_seconds=DAY) == 2
        assert outbound.counts_by_state(connection) == {"queued": 2, "leased": 0, "failed": 1}
    assert {m.queue_id for m in claim(engine, now=NOW + 20)} == set(valid)
    row = get(engine, expired)
    assert row is not None and row.state == "failed"


def test_purge_deletes_only_failed_messages(engine: Engine) -> None:
    failed = [_failed(engine, f"failed{i}", HOUR) for i in range(3)]
    [queued] = enqueue(engine, new_message("queued"))
    with write_transaction(engine) as connection:
        assert outbound.purge(connection, queued.queue_id) is False
        assert outbound.purge(connection, failed[0]) is True
        assert outbound.purge(connection, failed[0]) is False
        assert outbound.purge_all_failed(connection) == 2
    assert [r.queue_id for r in _list(engine)] == [queued.queue_id]


def _list(engine: Engine) -> list[QueueRow]:
    with read_transaction(engine) as connection:
        return outbound.list_messages(connection)


def test_counts_by_state_and_next_due_at(engine: Engine) -> None:
    with read_transaction(engine) as connection:
        assert outbound.counts_by_state(connection) == {"queued": 0, "leased": 0, "failed": 0}
        assert outbound.next_due_at(connection) is None
    _failed(engine, "failed", HOUR)
    enqueue(engine, new_message("leased"), now=NOW - 50)
    claim(engine, limit=1)
    enqueue(engine, new_message("soon"), now=NOW + 30)
    enqueue(engine, new_message("later"), now=NOW + 90)
    with read_transaction(engine) as connection:
        assert outbound.counts_by_state(connection) == {"queued": 2, "leased": 1, "failed": 1}
        assert outbound.next_due_at(connection) == NOW + 30


def test_prune_forgets_old_keys_and_events_only(engine: Engine) -> None:
    [short] = enqueue(engine, new_message("short", keep_for=100))
    enqueue(engine, new_message("long", keep_for=DAY))
    with write_transaction(engine) as connection:
        for at in (NOW - 2 * DAY, NOW):
            connection.execute(delivery_events.insert().values(
                queue_id=short.queue_id, message_id="<m@x>", recipient="a@example.com",
                outcome="delivered", at=at))
        outbound.prune(connection, now=NOW + 200, keep_events_seconds=DAY)
    with read_transaction(engine) as connection:
        keys = connection.execute(select(idempotency_keys.c.digest)).scalars().all()
        events = connection.execute(select(delivery_events.c.at)).scalars().all()
    assert keys == [new_message("long").digest]
    assert events == [NOW]
    [again] = enqueue(engine, new_message("short"), now=NOW + 200)
    assert again.duplicate is False and again.queue_id != short.queue_id
