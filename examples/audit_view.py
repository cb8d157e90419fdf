"""An audit view — who changed what, and when — over a small shop database, on SQLite.

Run with ``python examples/audit_view.py``. It records a few days of edits to products and
orders by different users, then answers the questions an auditor asks, using only the history
the library already keeps (no hand-written audit table):

* the change feed, newest first, with user, operation and the changed values;
* what one transaction did, across tables;
* what a product looked like on a given day, and what changed its price;
* a JSON Patch between two versions.

Exits non-zero if an answer is not what the edits above it should give.
"""

from __future__ import annotations

import asyncio
import tempfile
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from sqlalchemy_history_async import (
    Operation,
    changes_in,
    json_patch,
    make_versioned,
    select_changed,
    select_changes,
    version_at,
    version_class,
    versioning_context,
)

make_versioned(user_cls="User")


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "user_account"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(50))


class Product(Base):
    __tablename__ = "product"
    __versioned__: dict[str, Any] = {}
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(100))
    price: Mapped[Decimal] = mapped_column(sa.Numeric(10, 2))


class Order(Base):
    __tablename__ = "shop_order"
    __versioned__: dict[str, Any] = {}
    id: Mapped[int] = mapped_column(primary_key=True)
    product_id: Mapped[int] = mapped_column(sa.ForeignKey("product.id"))
    quantity: Mapped[int]
    status: Mapped[str] = mapped_column(sa.String(20), default="open")


# Any: the model's columns on its version class (ProductVersion.id) are typed by the mypy
# plugin sqlalchemy_history_async.mypy; without it they are not known statically.
ProductVersion: Any = version_class(Product)


async def record_edits(session: AsyncSession) -> dict[str, Any]:
    session.add_all([User(id=1, name="alice"), User(id=2, name="bob")])
    await session.commit()
    with versioning_context(user_id=1, remote_addr="198.51.100.4", ticket="SHOP-1"):
        lamp, desk = Product(name="Lamp", price=Decimal("19.90")), Product(name="Desk", price=150)
        session.add_all([lamp, desk])
        await session.commit()
    before_sale = datetime.now(timezone.utc)
    with versioning_context(user_id=2, reason="winter sale"):
        lamp.price = Decimal("14.90")
        session.add(Order(product_id=lamp.id, quantity=3))
        await session.commit()
    with versioning_context(user_id=1, reason="typo"):
        lamp.name = "Desk lamp"
        await session.commit()
    with versioning_context(user_id=2, reason="discontinued"):
        await session.delete(desk)
        await session.commit()
    return {"lamp": lamp.id, "desk": desk.id, "before_sale": before_sale}


async def audit(session: AsyncSession, facts: dict[str, Any]) -> None:
    users = {u.id: u.name for u in (await session.scalars(sa.select(User))).all()}

    print("Change feed, newest first:")
    feed = select_changes().order_by(None).order_by(sa.desc("transaction_id"), "table")
    rows = (await session.execute(feed)).all()
    for row in rows:
        who = users.get(row.user_id, "?")
        when = row.issued_at.strftime("%H:%M:%S")
        print(
            f"  tx {row.transaction_id} {when} {who:<6} {row.operation.name:<6} "
            f"{row.table}{row.primary_key}  {row.meta or ''}"
        )
    assert [(r.table, r.operation) for r in rows][:2] == [
        ("product", Operation.DELETE),
        ("product", Operation.UPDATE),
    ]

    sale_tx = next(r.transaction_id for r in rows if (r.meta or {}).get("reason") == "winter sale")
    print(f"\nTransaction {sale_tx} changed:")
    changed = await changes_in(session, sale_tx)
    for version in changed:
        print(f"  {type(version).__name__} {await version.awaitable_attrs.changeset}")
    assert {type(v).__name__ for v in changed} == {"ProductVersion", "OrderVersion"}

    then = await version_at(session, Product, facts["lamp"], facts["before_sale"])
    assert then is not None
    print(f"\nThe lamp before the sale: {then.name} at {then.price}")
    assert then.price == Decimal("19.90")

    price_changes = (
        await session.scalars(
            select_changed(Product, "price")
            .where(ProductVersion.id == facts["lamp"])
            .order_by(ProductVersion.transaction_id)
        )
    ).all()
    print("Lamp price history:", [str(v.price) for v in price_changes])
    assert [v.price for v in price_changes] == [Decimal("19.90"), Decimal("14.90")]

    first = price_changes[0]
    latest = await session.scalar(
        sa.select(ProductVersion).where(
            ProductVersion.id == facts["lamp"], ProductVersion.is_current
        )
    )
    assert latest is not None
    patch = json_patch(first, latest)
    print("JSON Patch from the first version to now:", patch)
    assert {p["path"] for p in patch} == {"/name", "/price"}


async def main(url: str) -> None:
    engine = create_async_engine(url)
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    async with async_sessionmaker(engine, expire_on_commit=False)() as session:
        facts = await record_edits(session)
        await audit(session, facts)
    await engine.dispose()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(main(f"sqlite+aiosqlite:///{Path(tmp) / 'shop.db'}"))
