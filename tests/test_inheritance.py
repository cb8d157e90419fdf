"""Mapped class hierarchies: joined-table and single-table inheritance, several levels deep."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncAttrs, AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, selectinload

from sqlalchemy_history_async import (
    Operation,
    changes_in,
    parent_class,
    select_as_of,
    select_changes,
    version_class,
)

from .conftest import Run, versioned_models
from .models import runtime_version_class


@dataclass
class Zoo:
    Base: type[DeclarativeBase]
    Animal: type[Any]
    Dog: type[Any]
    Puppy: type[Any]
    Cat: type[Any]


def define_zoo() -> Zoo:
    """Animal (base) → Dog (joined table) → Puppy (single table under Dog); Cat (single table)."""

    class Base(AsyncAttrs, DeclarativeBase):
        pass

    class Animal(Base):
        __tablename__ = "animal"
        __versioned__: dict[str, Any] = {}
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str] = mapped_column(sa.String(50))
        kind: Mapped[str] = mapped_column(sa.String(20))
        __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "animal"}

    class Dog(Animal):
        __tablename__ = "dog"
        id: Mapped[int] = mapped_column(sa.ForeignKey("animal.id"), primary_key=True)
        breed: Mapped[str | None] = mapped_column(sa.String(50))
        __mapper_args__ = {"polymorphic_identity": "dog"}

    class Puppy(Dog):
        age_weeks: Mapped[int | None]
        __mapper_args__ = {"polymorphic_identity": "puppy"}

    class Cat(Animal):
        whiskers: Mapped[int | None]
        __mapper_args__ = {"polymorphic_identity": "cat"}

    return Zoo(Base, Animal, Dog, Puppy, Cat)


models = versioned_models(define_zoo)


def test_version_classes_mirror_the_hierarchy(models: Zoo) -> None:
    AV, DV, PV, CV = (
        version_class(m) for m in (models.Animal, models.Dog, models.Puppy, models.Cat)
    )
    assert issubclass(DV, AV)
    assert issubclass(PV, DV)
    assert issubclass(CV, AV)
    assert not issubclass(CV, DV)
    assert parent_class(PV) is models.Puppy
    tables = models.Base.metadata.tables
    assert set(tables["animal_version"].c.keys()) >= {"id", "name", "kind", "whiskers"}
    assert set(tables["dog_version"].c.keys()) >= {"id", "breed", "age_weeks", "transaction_id"}
    assert [c.name for c in tables["dog_version"].primary_key] == ["id", "transaction_id"]


async def zoo_history(models: Zoo, session: AsyncSession) -> dict[str, Any]:
    dog = models.Dog(name="rex", breed="lab")
    cat = models.Cat(name="tom", whiskers=12)
    puppy = models.Puppy(name="bit", breed="pug", age_weeks=8)
    session.add_all([dog, cat, puppy])
    await session.commit()
    dog.breed = "husky"  # a column of the subclass table only
    await session.commit()
    cat.whiskers = 13
    await session.commit()
    await session.delete(puppy)
    await session.commit()
    return {"dog": dog.id, "cat": cat.id, "puppy": puppy.id}


async def test_polymorphic_history(models: Zoo, session: AsyncSession) -> None:
    ids = await zoo_history(models, session)
    AV = runtime_version_class(models.Animal)
    versions = (await session.scalars(sa.select(AV).order_by(AV.transaction_id, AV.id))).all()
    # subclass columns are loaded up front: plain attribute access does no I/O
    summary = [
        (
            type(v).__name__,
            v.id,
            v.name,
            getattr(v, "breed", None),
            getattr(v, "whiskers", None),
            getattr(v, "age_weeks", None),
            v.operation_type,
        )
        for v in versions
    ]
    assert summary == [
        ("DogVersion", ids["dog"], "rex", "lab", None, None, Operation.INSERT),
        ("CatVersion", ids["cat"], "tom", None, 12, None, Operation.INSERT),
        ("PuppyVersion", ids["puppy"], "bit", "pug", None, 8, Operation.INSERT),
        ("DogVersion", ids["dog"], "rex", "husky", None, None, Operation.UPDATE),
        ("CatVersion", ids["cat"], "tom", None, 13, None, Operation.UPDATE),
        ("PuppyVersion", ids["puppy"], "bit", "pug", None, 8, Operation.DELETE),
    ]


async def test_every_table_gets_a_version_row_per_change(
    models: Zoo, session: AsyncSession
) -> None:
    """A change to a subclass column alone still versions the base row, so versions join."""
    ids = await zoo_history(models, session)
    rows = (
        await session.execute(
            sa.text(
                "SELECT id, transaction_id, operation_type, end_transaction_id "
                "FROM dog_version ORDER BY transaction_id, id"
            )
        )
    ).all()
    base_rows = (
        await session.execute(
            sa.text(
                "SELECT id, transaction_id, operation_type, end_transaction_id "
                "FROM animal_version WHERE id IN (:d, :p) ORDER BY transaction_id, id"
            ),
            {"d": ids["dog"], "p": ids["puppy"]},
        )
    ).all()
    assert [tuple(r) for r in rows] == [tuple(r) for r in base_rows]
    assert len(rows) == 4  # dog insert + update, puppy insert + delete


async def test_changeset_previous_and_versions_relationship(
    models: Zoo, session: AsyncSession
) -> None:
    ids = await zoo_history(models, session)
    dog = await session.get(models.Dog, ids["dog"])
    assert dog is not None
    AV = runtime_version_class(models.Animal)
    first, second = (
        await session.scalars(dog.versions.select().options(selectinload(AV.previous)))
    ).all()
    assert first.changeset == {
        "id": [None, ids["dog"]],
        "name": [None, "rex"],
        "kind": [None, "dog"],
        "breed": [None, "lab"],
    }
    assert second.changeset == {"breed": ["lab", "husky"]}
    assert second.previous is first


async def test_revert_in_a_hierarchy(models: Zoo, session: AsyncSession) -> None:
    ids = await zoo_history(models, session)
    PV = runtime_version_class(models.Puppy)
    session.expunge_all()
    inserted = await session.scalar(
        sa.select(PV).where(PV.id == ids["puppy"]).order_by(PV.transaction_id).limit(1)
    )
    assert inserted is not None
    restored = await inserted.revert()
    await session.commit()
    assert restored is not None
    assert type(restored) is models.Puppy
    assert (restored.id, restored.breed, restored.age_weeks) == (ids["puppy"], "pug", 8)
    DV = runtime_version_class(models.Dog)
    first_dog = await session.scalar(
        sa.select(DV).where(DV.id == ids["dog"]).order_by(DV.transaction_id).limit(1)
    )
    assert first_dog is not None
    dog = await first_dog.revert()
    await session.commit()
    assert dog is not None
    assert dog.breed == "lab"


async def test_queries_over_a_hierarchy(models: Zoo, session: AsyncSession) -> None:
    ids = await zoo_history(models, session)
    AV = runtime_version_class(models.Animal)
    at_start = (await session.scalars(select_as_of(models.Animal, 1).order_by(AV.id))).all()
    assert [type(v).__name__ for v in at_start] == ["DogVersion", "CatVersion", "PuppyVersion"]
    latest = (await session.scalars(select_as_of(models.Animal, 4).order_by(AV.id))).all()
    assert [v.id for v in latest] == [ids["dog"], ids["cat"]]  # the puppy was deleted

    first = await changes_in(session, 1)
    assert [type(v).__name__ for v in first] == ["DogVersion", "CatVersion", "PuppyVersion"]

    feed = (await session.execute(select_changes(since=4))).all()
    assert [(r.table, r.primary_key, r.operation) for r in feed] == [
        ("animal", {"id": ids["puppy"]}, Operation.DELETE),
        ("dog", {"id": ids["puppy"]}, Operation.DELETE),
    ]


async def test_subclass_history_and_revert_sync(models: Zoo, run: Run) -> None:
    def behaviour(s: Session) -> None:
        cat = models.Cat(name="felix", whiskers=3)
        s.add(cat)
        s.commit()
        cat.name = "felix II"
        s.commit()
        versions = s.scalars(cat.versions.select()).all()
        assert [(type(v).__name__, v.name, v.whiskers) for v in versions] == [
            ("CatVersion", "felix", 3),
            ("CatVersion", "felix II", 3),
        ]
        versions[0].revert_sync()
        s.commit()
        assert cat.name == "felix"

    await run(behaviour)
