"""Telling a full disk from other failures, however it surfaces."""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path

import pytest

from generation.errors import DISK_FULL_MESSAGE, DiskFull, GenerationFailed, is_disk_full
from generation.front import GENERIC_ERROR, failure_of


def test_a_full_disk_is_told_by_its_errno_or_its_words() -> None:
    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert is_disk_full(DiskFull("DATA_DIR"))
    assert not is_disk_full(GenerationFailed("Something went wrong", reason="encode"))
    # ffmpeg's exit, which carries only its error output
    assert is_disk_full(RuntimeError("av_interleaved_write_frame(): No space left on device"))
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not is_disk_full(FileNotFoundError("clip.mp4"))
    assert not is_disk_full(None)


def test_a_full_disk_under_another_error_is_found() -> None:
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as exc:
            raise GenerationFailed("Something went wrong", reason="encode") from exc
    except GenerationFailed as wrapped:
        assert is_disk_full(wrapped)
        assert failure_of(wrapped) == ("disk", DISK_FULL_MESSAGE)


def test_sqlites_full_database_is_a_full_disk(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "small.sqlite3")
    db.execute("PRAGMA max_page_count = 2")  # as if the disk had no room for a third page
    db.execute("CREATE TABLE t (x TEXT)")
    with pytest.raises(sqlite3.OperationalError) as full:
        for _ in range(100):
            db.execute("INSERT INTO t VALUES (?)", ("x" * 1000,))
    db.close()
    assert is_disk_full(full.value)


def test_other_failures_keep_their_messages() -> None:
    assert failure_of(RuntimeError("boom")) == ("error", GENERIC_ERROR)
    assert failure_of(OSError(errno.ENOSPC, "full"))[1] == DISK_FULL_MESSAGE
    assert "not charged" in DISK_FULL_MESSAGE and "try again later" in DISK_FULL_MESSAGE
