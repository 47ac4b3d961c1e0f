"""README examples, pasted into a shell as a user would: the "A cluster"
block and the mandi PUT /leader example. Only the ports and paths change
(free ones, a temporary directory), nothing else."""
import os
import re
import signal
import subprocess
import time

from conftest import ROOT, free_port

README = os.path.join(ROOT, "README.md")


def readme():
    with open(README) as f:
        return f.read()


def section(text, heading):
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else len(text)]


def remap(script, mapping):
    """Replace whole numbers (ports) by mapping."""
    return re.sub(r"\b(\d{4,5})\b",
                  lambda m: str(mapping.get(int(m.group(1)),
                                            int(m.group(1)))), script)


def run_pasted(script, tmp_path, env=None):
    """Run script in bash from the repository root, then stop what it left
    in the background (by PID); returns (bash's result with its output in
    .stdout, the PIDs)."""
    script += '\necho PIDS: $(jobs -p) END\n'
    # Output to a file: the servers left running keep it open, and a pipe
    # would not end until they do.
    out_path = tmp_path / "pasted.out"
    with open(out_path, "w") as out:
        r = subprocess.run(["bash", "-c", script], cwd=ROOT, stdout=out,
                           stderr=subprocess.STDOUT, text=True, timeout=120,
                           env={**os.environ, **(env or {})})
    r.stdout = out_path.read_text(errors="replace")
    r.stderr = ""
    m = re.search(r"PIDS: ([\d ]*) END", r.stdout)
    pids = [int(p) for p in m.group(1).split()] if m else []
    for p in pids:
        try:
            os.kill(p, signal.SIGTERM)
        except ProcessLookupError:
            pass
    for p in pids:
        deadline = time.time() + 15
        while time.time() < deadline:
            try:
                os.kill(p, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            os.kill(p, signal.SIGKILL)
            raise AssertionError(f"pid {p} did not stop on SIGTERM")
    return r, pids


def test_readme_cluster_block(tmp_path):
    text = section(readme(), "A cluster")
    block = re.search(r"```sh\n(.*?)```", text, re.S).group(1)
    assert "until curl" in block  # waits before the first write
    http = [free_port() for _ in range(3)]
    grpc = [free_port() for _ in range(3)]
    raft = [free_port() for _ in range(3)]
    mapping = {}
    for i in range(3):
        mapping[8080 + i] = http[i]
        mapping[9090 + i] = grpc[i]
        mapping[12000 + i] = raft[i]
    # the loop computes ports as base + i
    mapping[8079], mapping[9089], mapping[11999] = None, None, None
    script = remap(block, {k: v for k, v in mapping.items() if v})
    script = script.replace("$((8079 + i))", "${HTTP[$i]}")
    script = script.replace("$((9089 + i))", "${GRPC[$i]}")
    script = script.replace("$((11999 + i))", "${RAFT[$i]}")
    assert "$((" not in script, script
    script = script.replace("./cluster/", str(tmp_path) + "/")
    arrays = "".join(
        f"{name}=(x {' '.join(map(str, ports))})\n"
        for name, ports in (("HTTP", http), ("GRPC", grpc), ("RAFT", raft)))
    r, pids = run_pasted(arrays + script, tmp_path)
    assert len(pids) == 3, r.stdout + r.stderr
    assert r.returncode == 0, r.stdout + r.stderr
    assert '"id":"node3"' in r.stdout, r.stdout + r.stderr
    # the write went through node2 and reached node3
    assert '"keys":1' in r.stdout, r.stdout


def test_readme_mandi_put_example(tmp_path):
    text = section(readme(), "Mandi, the discovery service")
    start = text.index("To try the endpoints")
    lines = []
    for line in text[start:].splitlines()[1:]:
        if line.startswith("    "):
            lines.append(line[4:])
        elif lines and line.strip() == "":
            break
    script = "\n".join(lines)
    assert "7000" not in script  # not make run's mandi
    assert "kill %%" in script
    port = free_port()
    script = remap(script, {7100: port})
    script = script.replace("/tmp/mandi-try.conf",
                            str(tmp_path / "mandi-try.conf"))
    # wait for mandi as a user would by eye: the README runs the PUT right
    # after starting it in the background
    script = script.replace(
        "curl -X PUT",
        f"until curl -s -o /dev/null 127.0.0.1:{port}/leader; do sleep 0.1;"
        " done\ncurl -X PUT", 1)
    r, pids = run_pasted(script + "\nwait", tmp_path,
                         env={"TOKEN": "t0ken-for-the-test"})
    assert r.returncode == 0, r.stdout + r.stderr
    assert pids == []  # kill %% stopped it
    assert '"id":"node1"' in r.stdout and '"term":3' in r.stdout, r.stdout
