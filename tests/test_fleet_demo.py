"""`make demo` end to end: ten virtual boards, a staged campaign, the gate, the report."""

from __future__ import annotations

import tempfile

import pytest

from host_tools.demos import fleet

pytestmark = pytest.mark.fw


def test_demo_runs_the_campaign_to_its_report(tmp_path, capsys, monkeypatch):
    scratch = tmp_path / "tmp"  # the demo's temp dir, and every temp file it or its boards make, go here
    scratch.mkdir()
    monkeypatch.delenv("FOTA_HOME", raising=False)
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    assert fleet.main([]) == 0
    out = capsys.readouterr().out
    assert list(scratch.iterdir()) == []  # nothing left behind
    frames = [f.strip() for f in out.split("\n \n") if f.strip()]
    assert all(a != b for a, b in zip(frames, frames[1:])), "the same frame printed twice in a row"
    assert "PAUSED (wave 2/3) wave 2 (canary): 1 of 3 finished devices failed" in out
    assert "resumed by operator" in out
    report = out.split("==== report ====")[1]
    assert "COMPLETED" in report
    assert "SUCCEEDED    8" in report
    assert "1 x ROLLED_BACK: SELF_TEST_FAILED: app" in report
    assert "1 x EXCLUDED: hardware revision B not in A" in report
    assert "console http://127.0.0.1:" in out and "/console/#token=" in out
    # the sensor example's readings reached the broker from every board through the whole campaign
    table = out.split("==== readings at the broker")[1].splitlines()[2:]
    rows = {line.split()[0]: line for line in table if line.startswith("  ") and line.split()[0][:4] in ("test", "cana", "fiel")}
    assert len(rows) == 10, table
    for label, line in rows.items():
        counts = [int(c) for c in line.split()[1:6]]
        assert counts[0] >= 1 and counts[1] >= 1 and counts[-1] >= 1, line  # boot, r2, after: never silent
        rebooted = label != "field-9"  # hardware revision B: excluded, never rebooted
        parts = line.split()  # label, 5 counts, the reboot gaps ("1.4 s" each, or "-"), ...
        assert (parts[7] == "s" and float(parts[6]) > 0) if rebooted else parts[6] == "-", line
    assert "out of range (2450 mV)" in rows["canary-4"]


@pytest.mark.host
def test_the_demo_keeps_its_files_under_fota_home(tmp_path, monkeypatch):
    monkeypatch.setenv("FOTA_HOME", str(tmp_path / "home"))
    assert fleet.demo_home(None) == (tmp_path / "home" / "demo", False)
    assert fleet.demo_home(tmp_path / "given") == (tmp_path / "given", False)
    monkeypatch.delenv("FOTA_HOME")
    home, scratch = fleet.demo_home(None)
    assert scratch and home.is_dir()
    home.rmdir()
