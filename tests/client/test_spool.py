"""The spool on its own: append, mark, reopen after a restart, torn last lines, locking."""

import json
from pathlib import Path

import pytest

from trainer_client.errors import SpoolError
from trainer_client.spool import Spool, SpooledReport


def report(n: int) -> SpooledReport:
    return SpooledReport("run", f"r{n}", n, [{"prompt_id": f"p{n}", "samples": 4, "accepted": 1}])


def test_pending_reports_survive_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "reports.spool.jsonl"
    spool = Spool(path)
    for n in range(3):
        spool.append(report(n))
    spool.mark("r1", "applied")
    spool.close()

    again = Spool(path)
    assert [r.report_id for r in again] == ["r0", "r2"]
    assert again.oldest() == report(0)
    again.close()


def test_appending_the_same_report_twice_keeps_one(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.jsonl")
    spool.append(report(0))
    spool.append(report(0))
    assert len(spool) == 1
    spool.close()


def test_the_file_is_emptied_when_nothing_is_pending(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    spool = Spool(path)
    spool.append(report(0))
    spool.append(report(1))
    assert path.stat().st_size > 0
    spool.mark("r0", "duplicate")
    assert path.stat().st_size > 0
    spool.mark("r1", "applied")
    assert path.stat().st_size == 0
    spool.close()


@pytest.mark.parametrize("tail", [b'{"kind": "report", "run_id": "run", "rep', b"\x00\x00\x00"])
def test_a_torn_last_line_is_dropped_and_appends_stay_readable(tmp_path: Path, tail: bytes) -> None:
    path = tmp_path / "s.jsonl"
    spool = Spool(path)
    spool.append(report(0))
    spool.close()
    with path.open("ab") as f:  # a process killed in the middle of a write
        f.write(tail)

    spool = Spool(path)
    assert [r.report_id for r in spool] == ["r0"]
    spool.append(report(1))
    spool.close()

    lines = path.read_bytes().splitlines()
    assert [json.loads(line)["report_id"] for line in lines] == ["r0", "r1"]
    again = Spool(path)
    assert [r.report_id for r in again] == ["r0", "r1"]
    again.close()


def test_a_torn_done_record_means_one_more_replay(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    spool = Spool(path)
    spool.append(report(0))
    spool.append(report(1))
    spool.close()
    with path.open("ab") as f:
        f.write(b'{"kind":"done","report_id":"r0"')  # no closing brace, no newline
    spool = Spool(path)
    assert [r.report_id for r in spool] == ["r0", "r1"]
    spool.close()


def test_a_corrupt_line_in_the_middle_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    line = json.dumps(
        {"kind": "report", "run_id": "run", "report_id": "a", "step": 0, "observations": []}
    )
    path.write_text(f"{line}\nnot json\n{line}\n")
    with pytest.raises(SpoolError, match="line 2"):
        Spool(path)


def test_one_file_one_client(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    first = Spool(path)
    with pytest.raises(SpoolError, match="in use"):
        Spool(path)
    first.close()
    Spool(path).close()  # free again once closed


def test_rejected_reports_are_kept_aside(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    spool = Spool(path)
    spool.append(report(0))
    spool.append(report(1))
    spool.mark("r0", "rejected")
    assert len(spool) == 1
    assert spool.rejected_path is not None
    kept = [json.loads(line) for line in spool.rejected_path.read_text().splitlines()]
    assert kept == [
        {
            "run_id": "run",
            "report_id": "r0",
            "step": 0,
            "observations": [{"prompt_id": "p0", "samples": 4, "accepted": 1}],
        }
    ]
    spool.close()


def test_in_memory_spool_works_without_a_file() -> None:
    spool = Spool()
    spool.append(report(0))
    assert spool.path is None
    assert len(spool) == 1
    spool.mark("r0", "applied")
    assert not spool
    spool.close()
