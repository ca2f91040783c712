"""doctor: every check is one line, and what is missing says what to do."""
from __future__ import annotations

import argparse

from stream.commands import doctor as doctor_command
from stream.doctor import check_insightface, run_checks


def test_checks_name_what_is_missing(tmp_path):
    checks = {check.name: check for check in run_checks(None, tmp_path)}
    assert checks["torch"].ok and checks["dlib"].ok and checks["dlib models"].ok  # both are dependencies
    assert not checks["demo pack"].ok and "pack.json" in checks["demo pack"].detail
    assert all("\n" not in check.detail for check in checks.values())
    pack = check_insightface(tmp_path)
    assert pack.name in ("insightface", "insightface pack")
    if pack.name == "insightface pack":
        assert not pack.ok and "det_*.onnx" in pack.detail


def test_command_prints_a_table_and_the_auto_backend(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    doctor_command.add_arguments(parser)
    assert doctor_command.run(parser.parse_args(["--pack", str(tmp_path)])) == 0
    out = capsys.readouterr().out
    assert "no  demo pack" in out and "--backend auto picks:" in out
