"""log-format json: every line a node or mandi writes is one JSON object
with time (RFC 3339, UTC, milliseconds), level, node and msg, however odd
the bytes a client put into the message."""
import json
import re

import grpc

from conftest import wait_for

TIME_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
LEVELS = {"debug", "info", "warning", "error"}


def json_lines(proc):
    """Every line of proc's log, parsed (the test fails on one that is not
    a JSON object with the four fields)."""
    out = []
    for line in proc.read_log().splitlines():
        obj = json.loads(line)
        assert isinstance(obj, dict), line
        assert set(obj) == {"time", "level", "node", "msg"}, line
        assert TIME_RE.match(obj["time"]), line
        assert obj["level"] in LEVELS, line
        out.append(obj)
    return out


def test_node_logs_json_lines(servers):
    s = servers(args=["--log-format", "json"])
    st, _, _ = s.request("POST", "/set", body=b'{"key":"k","value":"v"}')
    assert st == 204
    # a method name with a quote and a backslash: the node logs it (debug)
    weird = '/pyazdb.Nope/Q"uo\\te'
    with grpc.insecure_channel(f"127.0.0.1:{s.grpc_port}") as ch:
        call = ch.unary_unary(weird)
        try:
            call(b"", timeout=5)
            raise AssertionError("an unknown method answered")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.UNIMPLEMENTED
    wait_for(lambda: any(weird in o["msg"] for o in json_lines(s)),
             "the odd message in the log", timeout=10)
    assert s.stop() == 0
    lines = json_lines(s)
    assert len(lines) >= 5
    assert all(o["node"] == "node1" for o in lines)
    msgs = [o["msg"] for o in lines]
    assert any(m.startswith("pyazdb ") and "node node1" in m for m in msgs)
    assert any(o["level"] == "debug" for o in lines)
    assert any(o["level"] == "warning" and "cluster-token" in o["msg"]
               for o in lines)
    assert msgs[-1] == "stopped"


def test_mandi_logs_json_lines_and_text_stays_default(mandis, servers):
    m = mandis(conf={"log-format": "json"})
    st, _, _ = m.request("GET", "/leader")
    assert st == 404  # none yet
    lines = json_lines(m)
    assert lines and all(o["node"] == "mandi" for o in lines)
    # the default: text lines, "TIME NODE LETTER MESSAGE"
    s = servers(name="node7")
    assert s.stop() == 0
    for line in s.read_log().splitlines():
        assert re.match(r"^\S+Z node7 [DIWE] ", line), line


def test_log_format_is_checked(servers):
    s = servers(start=False, conf={"log-format": "xml"})
    s.start(wait=False)
    assert s.wait_exit() != 0
    assert "'log-format' must be one of" in s.read_log()
