"""Issue 29's follow-ups: every figure whose rows grow with what a user asks for (images, maps, layers) is
capped at ``zfviz.plotting.bounded.MAX_ROWS`` and says so, its arrays keeping every value; scripts under
``scripts/`` stop on SIGTERM as on Ctrl-C, leaving no temporary file."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from zfviz.errors import INTERRUPTED
from zfviz.script_main import script_main
from zfviz.utils import atomic_path

REPO = Path(__file__).resolve().parents[1]

# --- scripts stop on SIGTERM as on Ctrl-C ------------------------------------------------------------


def test_a_script_stopped_by_sigterm_mid_write_leaves_no_temporary_file_and_returns_143(tmp_path, capsys):
    @script_main
    def main() -> int:
        with atomic_path(tmp_path / "fig.png") as tmp:
            tmp.write_bytes(b"half")
            signal.raise_signal(signal.SIGTERM)
            raise AssertionError("SIGTERM did not stop the write")

    assert main() == 143
    assert list(tmp_path.iterdir()) == []  # no .fig.png.<rand>.tmp, no half-written figure
    assert capsys.readouterr().err == f"test_bounded_figures: SIGTERM: {INTERRUPTED}\n"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # put back


def test_a_script_stopped_by_ctrl_c_says_so_in_one_line_and_returns_130(capsys):
    @script_main
    def main() -> int:
        raise KeyboardInterrupt

    assert main() == 130
    assert capsys.readouterr().err == f"test_bounded_figures: {INTERRUPTED}\n"


@pytest.mark.slow  # a Python process that imports torch
def test_a_script_process_killed_with_sigterm_mid_write_exits_143(tmp_path):
    script = tmp_path / "a_figure.py"
    script.write_text(
        textwrap.dedent(f"""
        import os, signal, sys, time
        from zfviz.script_main import script_main
        from zfviz.utils import atomic_path

        @script_main
        def main():
            with atomic_path({str(tmp_path / "out" / "fig.png")!r}) as tmp:
                tmp.write_bytes(b"half")
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)  # the handler raises here, in the main thread
            return 0

        sys.exit(main())
        """)
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 143, done.stderr  # before: -15 (killed), the .fig.png.<rand>.tmp left
    assert done.stderr.splitlines() == [f"a_figure: SIGTERM: {INTERRUPTED}"]
    assert list((tmp_path / "out").iterdir()) == []
