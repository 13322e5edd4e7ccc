"""scripts/*.py report a user's mistake as the zfviz commands do: one line naming the script, status 2."""

from __future__ import annotations

import pytest

from zfviz.errors import UserError
from zfviz.script_main import script_main


@script_main
def main(fail: bool) -> int:
    if fail:
        raise UserError("--runs: no such folder")
    return 0


def test_a_user_error_is_one_line_named_by_the_scripts_file_and_status_2(capsys):
    assert main(True) == 2
    assert capsys.readouterr().err == "test_script_main: error: --runs: no such folder\n"
    assert main(False) == 0 and capsys.readouterr().err == ""


def test_any_other_error_is_not_swallowed():
    @script_main
    def broken() -> int:
        raise KeyError("a bug, not a mistake")

    with pytest.raises(KeyError):
        broken()
