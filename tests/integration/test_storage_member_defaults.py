"""MemberDefaultsStore: a member's own defaults, kept across restarts, gone when reset."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from storage.database import Database
from storage.member_defaults import MemberDefaults, MemberDefaultsStore

ALICE, BOB = 11, 12


async def test_defaults_are_kept_across_a_restart_and_each_members_own(tmp_path: Path) -> None:
    path = tmp_path / "bot.sqlite3"
    async with await Database.open(path) as db:
        store = MemberDefaultsStore(db)
        assert await store.get(ALICE) == MemberDefaults(ALICE)
        await store.update(ALICE, format="gif", fps=12)
        now = await store.update(ALICE, preset="subtle")  # the others stay
        assert now == MemberDefaults(ALICE, preset="subtle", format="gif", fps=12)
        await store.update(BOB, quality="draft")
    async with await Database.open(path) as db:
        store = MemberDefaultsStore(db)
        assert (await store.get(ALICE)).chosen() == {"preset": "subtle", "format": "gif", "fps": 12}
        assert (await store.get(BOB)).chosen() == {"quality": "draft"}
        # Reset, then set: only what was given now.
        assert (await store.update(ALICE, reset=True, motion_bucket_id=30)).chosen() == {
            "motion_bucket_id": 30
        }
        # Nothing of their own left: no row kept for them.
        assert (await store.update(ALICE, reset=True)).chosen() == {}
        rows = await db.fetch("SELECT user_id FROM member_defaults")
        assert [row[0] for row in rows] == [BOB]


async def test_the_table_refuses_what_animate_could_not_use(tmp_path: Path) -> None:
    # The service checks first with the member's message; the schema is the last word.
    async with await Database.open(tmp_path / "bot.sqlite3") as db:
        store = MemberDefaultsStore(db)
        with pytest.raises(sqlite3.IntegrityError):
            await store.update(ALICE, fps=31)
        with pytest.raises(TypeError):
            await store.update(ALICE, seed=1)
        assert await store.get(ALICE) == MemberDefaults(ALICE)


async def test_bounce_and_smooth_are_defaults_only_when_on(tmp_path: Path) -> None:
    path = tmp_path / "bot.sqlite3"
    async with await Database.open(path) as db:
        store = MemberDefaultsStore(db)
        await store.update(ALICE, ping_pong=True, interpolate=True, fps=12, fit="whole")
    async with await Database.open(path) as db:
        store = MemberDefaultsStore(db)
        mine = await store.get(ALICE)
        assert (mine.ping_pong, mine.interpolate, mine.fit) == (True, True, "whole")
        await store.update(ALICE, fit=None)
        # Off is no default of their own, as if never set: the clip then has neither.
        assert (await store.update(ALICE, ping_pong=False)).chosen() == {
            "fps": 12,
            "interpolate": True,
        }
        # What every clip gets anyway is no default of theirs either.
        assert (await store.update(ALICE, fit="crop")).fit is None
        await store.update(ALICE, fps=None, interpolate=False)
        assert await store.get(ALICE) == MemberDefaults(ALICE)
        assert await db.fetch("SELECT user_id FROM member_defaults") == []
