"""The systemd units in scripts/systemd pass systemd-analyze verify."""
import os
import shutil
import subprocess

import pytest

from conftest import ROOT, SERVER

UNITS = os.path.join(ROOT, "scripts", "systemd")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed")
def test_units_verify(tmp_path):
    names = []
    for unit, as_name in (("pyazdb@.service", "pyazdb@node1.service"),
                          ("pyazdb-mandi.service", "pyazdb-mandi.service")):
        with open(os.path.join(UNITS, unit)) as f:
            text = f.read()
        assert "/usr/local/bin/pyazdb-server" in text
        assert "Restart=on-failure" in text and "LimitNOFILE=" in text
        assert "User=pyazdb" in text and "NoNewPrivileges=yes" in text
        # verify needs the binary to exist: point at the one just built
        (tmp_path / as_name).write_text(
            text.replace("/usr/local/bin/pyazdb-server", SERVER))
        names.append(str(tmp_path / as_name))
    r = subprocess.run(["systemd-analyze", "verify", *names],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "pyazdb" not in r.stderr, r.stderr
    assert "StateDirectory=pyazdb/%i" in open(os.path.join(UNITS, "pyazdb@.service")).read()
