"""``logging.getLogger("sqlalchemy_history_async")``: DEBUG lines say what each history write
and each recorded statement does, never a row's values."""

from __future__ import annotations

import logging

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from .conftest import Run
from .models import Models


async def test_debug_lines_count_keys_and_show_no_values(
    models: Models, run: Run, caplog: pytest.LogCaptureFixture
) -> None:
    A = models.Article

    def behaviour(session: Session) -> None:
        session.add_all([A(id=i, title=f"secret-{i}") for i in (1, 2, 3)])
        session.commit()
        session.execute(sa.update(A).where(A.id <= 2).values(title="secret-new"))
        session.commit()

    with caplog.at_level(logging.DEBUG, logger="sqlalchemy_history_async"):
        await run(behaviour)
    lines = [r.getMessage() for r in caplog.records if r.name == "sqlalchemy_history_async"]
    assert "writing history: article_version: close 3, copy_insert 3" in lines
    assert "UPDATE on article: 2 rows found, 2 with history to write at commit" in lines
    assert "writing history: article_version: close 2, copy_update 2" in lines
    assert not [line for line in lines if "secret" in line]


async def test_nothing_is_logged_above_debug(
    models: Models, run: Run, caplog: pytest.LogCaptureFixture
) -> None:
    def behaviour(session: Session) -> None:
        session.add(models.Article(id=1, title="t"))
        session.commit()

    with caplog.at_level(logging.INFO, logger="sqlalchemy_history_async"):
        await run(behaviour)
    assert [r for r in caplog.records if r.name == "sqlalchemy_history_async"] == []
