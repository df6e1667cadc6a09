"""verify_window: missing, corrupt and unverified (no checksum) entries are told apart."""

from __future__ import annotations

import hashlib
import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

from deswm._archive import Archive
from deswm._container import ShardWriter, make_meta
from deswm._model import SourceRecord, Window
from deswm._routing import DesRouter
from deswm._verify import verify_window
from deswm.testing import MemorySourceProvider

DAY = datetime(2024, 5, 17, tzinfo=UTC)
ROUTER = DesRouter(4)


def test_deep_verify_reports_unverified_entries_apart(tmp_path: Path) -> None:
    good, foreign, tampered = b"verified", b"foreign bytes", b"tampered"
    buffer = io.BytesIO()
    writer = ShardWriter(buffer)
    writer.add("16", good, codec="none", size=len(good), meta=make_meta(_sha(good), DAY))
    writer.add("32", foreign, codec="none", size=len(foreign))  # another DES writer
    bad_meta = make_meta(_sha(tampered), DAY).replace(b'"sha256"', b'"sHa256"')
    writer.add("48", tampered, codec="none", size=len(tampered), meta=bad_meta)
    writer.finish()
    (tmp_path / "20240517_0_0000.des").write_bytes(buffer.getvalue())
    records = [SourceRecord(uid, DAY, f"/src/{uid}") for uid in ("16", "32", "48", "64")]
    window = Window(DAY, DAY + timedelta(days=1))
    archive = Archive(str(tmp_path), ROUTER)

    report = verify_window(MemorySourceProvider(records), archive, window, deep=True)

    assert (report.checked, report.missing_count, report.corrupt_count) == (4, 1, 1)
    assert report.unverified_count == 1
    assert [r.uid for r in report.unverified] == ["32"]
    assert [r.uid for r, _ in report.corrupt] == ["48"]
    assert "no valid sha256" in report.corrupt[0][1]
    assert not report.ok
    shallow = verify_window(MemorySourceProvider(records), archive, window)
    assert (shallow.missing_count, shallow.corrupt_count, shallow.unverified_count) == (1, 0, 0)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
