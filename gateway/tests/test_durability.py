"""No call reaches the provider before its admission is on disk (issue 10).

Admission reserves the call's worst case and opens its pending ledger row; if a
database crash could lose that after the call went upstream, the provider would
bill a call we have no trace of. So at the moment the provider sees a call, the
commit record of the transaction that opened its ledger row must be in the WAL
that PostgreSQL has flushed: pg_walinspect reads only flushed WAL, so the record
is found there exactly when it is durable. (A settlement lost in a crash leaves
the row pending, and the sweeper charges it in full: test_gateway.)
"""

from __future__ import annotations

import psycopg
import pytest
from django.db import connection

from gateway.models import UsageRecord
from gateway.tests.helpers import MESSAGES, openai_client, wait_for_settlement

pytestmark = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="durability of commits is PostgreSQL's"
)

RECORDS = UsageRecord._meta.db_table
PENDING = f"SELECT count(*) FROM {RECORDS} WHERE status = 'pending'"  # noqa: S608
FLUSHED_COMMIT = f"""
SELECT count(*) FROM pg_get_wal_records_info_till_end_of_wal(%(start)s::pg_lsn)
WHERE resource_manager = 'Transaction' AND record_type = 'COMMIT' AND xid::text = (
    SELECT xmin::text FROM {RECORDS} WHERE status = 'pending')"""  # noqa: S608


def observer() -> psycopg.Connection:
    params = connection.settings_dict
    conn = psycopg.connect(
        dbname=params["NAME"],
        user=params["USER"],
        password=params["PASSWORD"] or None,
        host=params["HOST"] or None,
        port=params["PORT"] or None,
        autocommit=True,
    )
    conn.execute("CREATE EXTENSION IF NOT EXISTS pg_walinspect")
    return conn


def flush_lsn(conn: psycopg.Connection) -> str:
    return conn.execute("SELECT pg_current_wal_flush_lsn()::text").fetchone()[0]


@pytest.mark.parametrize("stream", [False, True])
def test_a_call_is_forwarded_only_once_its_admission_is_on_disk(
    gateway, fake_providers, make_agent, stream
):
    bot = make_agent()
    client = openai_client(gateway, bot.token)
    seen: list[tuple[int, int]] = []  # (pending rows, their commit records found flushed)
    with observer() as conn:

        def look(request) -> None:
            pending = conn.execute(PENDING).fetchone()[0]
            # Nothing flushed since the call began: its commit cannot be on disk.
            unmoved = flush_lsn(conn) == start
            flushed = 0 if unmoved else conn.execute(FLUSHED_COMMIT, {"start": start}).fetchone()[0]
            seen.append((pending, flushed))

        fake_providers.on_request = look
        for round_ in range(5):
            start = flush_lsn(conn)
            answer = client.chat.completions.create(
                model="gpt-test", messages=MESSAGES, stream=stream
            )
            list(answer) if stream else answer
            wait_for_settlement(bot.agent, count=round_ + 1)
    assert seen == [(1, 1)] * 5
