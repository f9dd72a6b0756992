"""One runner per run folder: a second one is refused, naming the first; a lock left by a dead one is
taken over, saying so."""
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.params import ParameterError
from tools import runlock

REPO = Path(__file__).resolve().parent.parent
HOLD = "import sys, time; from pathlib import Path; from tools import runlock\n" \
       "with runlock.held(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(120)"


@pytest.fixture
def holder(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    yield proc
    proc.kill()
    proc.wait()


def test_a_second_runner_on_the_folder_is_refused_before_it_writes(tmp_path, holder):
    with pytest.raises(ParameterError, match=rf"in use by another runner \(pid {holder.pid}, started .*-c"):
        with runlock.held(tmp_path):
            pass
    result = subprocess.run([sys.executable, "-m", "tools.run", "configs/smoke.yaml", "--run-dir", str(tmp_path),
                             "--only", "01"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and f"is in use by another runner (pid {holder.pid}" in result.stderr, result.stderr
    assert [p.name for p in tmp_path.iterdir()] == [runlock.NAME]  # no params.json, no notebook


def test_a_lock_left_by_a_killed_runner_is_taken_over(tmp_path, holder, capsys):
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (tmp_path / runlock.NAME).exists()
    with runlock.held(tmp_path):
        assert f"taking over the lock left by a runner that no longer runs (pid {holder.pid}" in capsys.readouterr().out
    assert not (tmp_path / runlock.NAME).exists()  # a runner that ends leaves none
