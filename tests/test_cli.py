"""The ``genmodels`` command line: help, the samplers table, errors."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from genmodels.cli.main import main
from genmodels.diffusion.samplers.registry import SAMPLERS
from genmodels.diffusion.schedules import SCHEDULERS


def test_help_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    assert "samplers" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0


def test_samplers_table_lists_everything(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["samplers"]) == 0
    out = capsys.readouterr().out
    for name in [*SAMPLERS, *SCHEDULERS]:
        assert f"\n{name} " in out, name
    assert "DPM++ 2M" in out and "Euler a" in out
    # what each A1111 name runs
    assert re.search(r"\nDDIM +ddim_a1111 +ddim_uniform \(always, as A1111\)", out)
    assert re.search(r"\nDPM\+\+ 2M Karras +dpmpp_2m +karras ", out)
    assert main(["samplers", "--markdown"]) == 0
    assert "| dpmpp_2m |" in capsys.readouterr().out


def test_readme_tables_are_what_the_command_prints(capsys: pytest.CaptureFixture[str]) -> None:
    """The README's samplers and schedulers tables are ``genmodels samplers --markdown``."""
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    assert main(["samplers", "--markdown"]) == 0
    tables = capsys.readouterr().out.replace("Samplers\n", "").strip()
    assert tables in readme, "regenerate the README tables with `genmodels samplers --markdown`"


def test_console_script_runs() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "genmodels.cli.main", "samplers"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert "euler_ancestral" in proc.stdout


def test_unknown_command_fails(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["nope"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
