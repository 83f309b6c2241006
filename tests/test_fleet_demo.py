"""`make demo` end to end: ten virtual boards, a staged campaign, the gate, the report."""

from __future__ import annotations

import pytest

from host_tools.demos import fleet

pytestmark = pytest.mark.fw


def test_demo_runs_the_campaign_to_its_report(tmp_path, capsys):
    assert fleet.main(["--home", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "PAUSED (wave 2/3) wave 2 (canary): 1 of 3 finished devices failed" in out
    assert "resumed by operator" in out
    report = out.split("==== report ====")[1]
    assert "COMPLETED" in report
    assert "SUCCEEDED    8" in report
    assert "1 x ROLLED_BACK: SELF_TEST_FAILED: app" in report
    assert "1 x EXCLUDED: hardware revision B not in A" in report
    assert "console http://127.0.0.1:" in out and "/console/#token=" in out
