"""The systemd units in scripts/systemd: systemd-analyze verify and
security accept them, and they say what the node needs (notify, reload by
SIGHUP, restart on failure, the sandbox). systemd cannot run as the
service manager in a test container, so the units are checked by systemd's
own analyzer and by parsing them here; the behaviour they rely on (sd_notify,
SIGHUP) is tested against the server in test_reload.py."""
import os
import re
import subprocess

import pytest

from conftest import ROOT, SERVER

UNITS = os.path.join(ROOT, "scripts", "systemd")
NODE = "pyazdb@.service"
MANDI = "pyazdb-mandi.service"


def parse(name):
    """{section: {key: [values in order]}}; an empty assignment resets the
    list, as systemd does, and is kept as ''."""
    units = {}
    section = None
    with open(os.path.join(UNITS, name)) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith(("#", ";")):
                continue
            m = re.fullmatch(r"\[(\w+)\]", line)
            if m:
                section = units.setdefault(m.group(1), {})
                continue
            key, eq, value = line.partition("=")
            assert eq and section is not None, line
            if value == "":
                section[key] = [""]
            else:
                section.setdefault(key, []).append(value)
    return units


def installed_copies(tmp_path):
    """The units as installed, pointing at the binary just built (verify
    checks that ExecStart's binary exists)."""
    paths = []
    for unit, as_name in ((NODE, "pyazdb@node1.service"), (MANDI, MANDI)):
        with open(os.path.join(UNITS, unit)) as f:
            text = f.read()
        assert "/usr/local/bin/pyazdb-server" in text
        (tmp_path / as_name).write_text(
            text.replace("/usr/local/bin/pyazdb-server", SERVER))
        paths.append(str(tmp_path / as_name))
    return paths


def test_units_verify(tmp_path):
    r = subprocess.run(["systemd-analyze", "verify",
                        *installed_copies(tmp_path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "pyazdb" not in r.stderr, r.stderr


@pytest.mark.parametrize("unit", ["pyazdb@node1.service", MANDI])
def test_units_security_exposure(tmp_path, unit):
    """systemd's own score of the sandbox (0 best, 10 worst); a unit with
    only User=, Type=notify and limits, as etcd ships, scores 9.2."""
    installed_copies(tmp_path)
    r = subprocess.run(["systemd-analyze", "security", "--offline=yes",
                        str(tmp_path / unit)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", r.stdout)
    assert m, r.stdout
    assert float(m.group(1)) <= 1.5, r.stdout


HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "PrivateUsers": "yes",
    "PrivateMounts": "yes",
    "ProtectHostname": "yes",
    "ProtectClock": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "ProtectProc": "invisible",
    "ProcSubset": "pid",
    "RestrictNamespaces": "yes",
    "RestrictRealtime": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "RemoveIPC": "yes",
    "SystemCallArchitectures": "native",
    "UMask": "0077",
}


@pytest.mark.parametrize("name", [NODE, MANDI])
def test_units_say_what_the_node_needs(name):
    u = parse(name)
    svc = u["Service"]
    # notify: READY=1 when listening, reload by SIGHUP, never by a stop
    assert svc["Type"] == ["notify"]
    assert svc["ExecReload"][-1] == "/bin/kill -HUP $MAINPID"
    assert not any("TERM" in v for v in svc["ExecReload"])
    # a file that does not load fails the reload (and the start) visibly
    assert "--test-config" in svc["ExecReload"][0]
    assert "--test-config" in svc["ExecStartPre"][0]
    assert svc["Restart"] == ["on-failure"]
    assert svc["RestartSec"] == ["2"]
    assert u["Unit"]["StartLimitBurst"] == ["5"]
    assert svc["User"] == ["pyazdb"] and svc["Group"] == ["pyazdb"]
    assert svc["KillSignal"] == ["SIGTERM"]
    assert int(svc["LimitNOFILE"][0]) >= 65536
    for key, value in HARDENING.items():
        assert svc.get(key) == [value], (name, key, svc.get(key))
    # no capability at all, in the bounding set or ambient
    assert svc["CapabilityBoundingSet"] == [""]
    assert svc["AmbientCapabilities"] == [""]
    assert svc["RestrictAddressFamilies"] == ["AF_INET AF_INET6 AF_UNIX"]
    assert svc["SystemCallFilter"][0] == "@system-service"
    assert "~@privileged @resources" in svc["SystemCallFilter"]
    assert svc["SystemCallErrorNumber"] == ["EPERM"]
    assert u["Install"]["WantedBy"] == ["multi-user.target"]


def test_node_unit_state_directory():
    svc = parse(NODE)["Service"]
    assert svc["StateDirectory"] == ["pyazdb/%i"]
    assert svc["StateDirectoryMode"] == ["0700"]
    assert svc["ReadWritePaths"] == ["/var/lib/pyazdb/%i"]
    assert svc["ExecStart"] == ["/usr/local/bin/pyazdb-server "
                                "/etc/pyazdb/%i.conf"]
    # SIGTERM to the node alone: a snapshot child is the node's to end
    assert svc["KillMode"] == ["mixed"]
