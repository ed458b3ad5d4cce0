"""The ``raylab`` command's operations side: the MLflow UI binds to loopback by default, and
``raylab report`` names what it could not find."""

from __future__ import annotations

import pytest

from raylab.cli import main, ui_command


def test_ui_binds_to_loopback_unless_asked():
    command = ui_command("sqlite:///x.db", 5000)
    assert command[1:3] == ["ui", "--backend-store-uri"]
    assert command[command.index("--host") + 1] == "127.0.0.1"
    assert ui_command("sqlite:///x.db", 5001, host="0.0.0.0")[-3:] == ["0.0.0.0", "--port", "5001"]


def test_report_of_an_unknown_experiment_is_a_clear_error(isolated_outputs, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["report", "no_such_job", "-o", str(isolated_outputs / "r.html")])
    assert exit_info.value.code == 2
    assert "no MLflow experiment 'raylab/no_such_job'" in capsys.readouterr().err
