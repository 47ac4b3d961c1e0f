#!/usr/bin/python3
"""mkseeds.py - write the seed corpora of tests/fuzz/corpus/<target>/.

The seeds are committed; run this again only to change them:
    /usr/bin/python3 tests/fuzz/mkseeds.py
Protobuf seeds are encoded from text format by protoc (protobuf-compiler,
a test dependency); snapshot files are built here with their CRC-64/XZ.
Everything is deterministic: the same script writes the same files.
"""
import os
import random
import struct
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PROTO = os.path.join(ROOT, "proto")
GRPC_PROTO = "/usr/share/grpc-proto"


def out(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def encode(msg_type, text, proto, paths=(PROTO,)):
    args = ["protoc", "--encode=" + msg_type]
    args += ["--proto_path=" + p for p in paths]
    args.append(proto)
    return subprocess.run(args, input=text.encode(), check=True,
                          capture_output=True).stdout


# --- http_parse -------------------------------------------------------------
def _txn_request():
    body = ('{"compare":[{"key":"a","target":"mod_revision","result":"<",'
            '"value":5},{"key_b64":"AP8=","target":"value","result":"!=",'
            '"value":"x"}],"success":[{"put":{"key":"a","value":"1"}},'
            '{"delete":{"key":"b"}},{"delete_range":{"from":"c","to":"d"}}],'
            '"failure":[{"get":{"key":"a"}},{"range":{"prefix":"a",'
            '"limit":3,"keys_only":true,"count_only":false}}]}')
    return "POST /txn HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (
        len(body), body)


def http_seeds():
    crlf = "\r\n"
    reqs = {
        "get": "GET /get?key=greeting HTTP/1.1\r\nHost: x\r\n\r\n",
        "get-stale": "GET /get?key=a%20b+c&consistency=stale HTTP/1.1\r\n\r\n",
        "set": 'POST /set HTTP/1.1\r\nContent-Length: 31\r\n\r\n'
               '{"key":"greeting","value":"hi"}',
        "delete-post": 'POST /delete HTTP/1.1\r\nContent-Length: 11\r\n\r\n'
                       '{"key":"k"}',
        "delete": "DELETE /delete?key=k HTTP/1.1\r\nConnection: close\r\n\r\n",
        "chunked": "POST /set HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                   '5\r\n{"key\r\n12\r\n":"k","value":"v"}\r\n0\r\n\r\n',
        "pipelined": "GET /health HTTP/1.1\r\n\r\nGET /status HTTP/1.1\r\n\r\n"
                     "GET /cluster HTTP/1.1\r\n\r\n",
        "members": "DELETE /cluster/members/node2 HTTP/1.1\r\n"
                   "Authorization: Bearer t\r\n\r\n",
        "transfer": "POST /cluster/transfer?to=node3 HTTP/1.1\r\n"
                    "Content-Length: 0\r\n\r\n",
        "snapshot": "POST /admin/snapshot HTTP/1.0\r\n\r\n",
        "upgrade": "GET /get?key=k HTTP/1.1\r\nConnection: Upgrade\r\n"
                   "Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
        "bad-both": "POST /set HTTP/1.1\r\nContent-Length: 2\r\n"
                    "Transfer-Encoding: chunked\r\n\r\n{}",
        "http10-keepalive": "GET /get?key=%ff%00 HTTP/1.0\r\n"
                            "Connection: keep-alive\r\n\r\n",
        "range": "GET /range?prefix=svc%2F&limit=2&keys_only=true HTTP/1.1"
                 "\r\n\r\n",
        "range-from-to": "GET /range?from=a&to=%ff%00&count_only=1&"
                         "consistency=stale HTTP/1.1\r\n\r\n",
        "set-cas": 'POST /set HTTP/1.1\r\nContent-Length: 57\r\n\r\n'
                   '{"key":"k","value":"v","prev_revision":0,"prev_value":""}',
        "delete-prefix": 'POST /delete HTTP/1.1\r\nContent-Length: 17\r\n'
                         '\r\n{"prefix_b64":""}',
        "txn": _txn_request(),
        "big-header": "GET /get?key=" + "k" * 180 + " HTTP/1.1\r\n" +
                      "".join("X-H%d: %s\r\n" % (i, "v" * 20) for i in range(8))
                      + crlf,
    }
    for name, r in reqs.items():
        out("http_parse", name, r)


# --- JSON: http_json and mandi_json -----------------------------------------
def json_seeds():
    docs = {
        "set": '{"key":"greeting","value":"hello"}',
        "escapes": '{"key":"a\\"b\\\\c\\/d\\b\\f\\n\\r\\t","value":"\\u0000x"}',
        "surrogates": '{"key":"\\ud83d\\ude00","value":"\\u00e9\\u4e2d"}',
        "nested": '{"key":"k","x":{"a":[1,2,{"b":null}]},"value":"v"}',
        "numbers": '{"key":"k","n":-0.5e+10,"m":0,"value":"v"}',
        "repeated": '{"key":"a","key":"b","value":1}',
        "removed": '{"id":"node2","leader":"node1","term":"7"}',
        "literals": ' { "key" : true , "value" : false , "z" : null } ',
        "empty": "{}",
        "deep": "[" * 70 + "]" * 70,
        "leader": '{"id":"node1","addr":"127.0.0.1:12000","http_addr":'
                  '"127.0.0.1:8080","grpc_addr":"127.0.0.1:9090","term":3,'
                  '"updated_at":"2026-01-03T10:00:00.000Z"}',
        "leader-bigterm": '{"id":"n","addr":"a","term":18446744073709551615}',
        "leader-overflow": '{"id":"n","term":18446744073709551616}',
        "join": '{"id":"node2","addr":"127.0.0.1:12001","http_addr":"",'
                '"grpc_addr":null,"started_at":"x"}',
        "join-nul": '{"id":"a\\u0000b","addr":"x"}',
        "joins": '[{"id":"node2","addr":"127.0.0.1:12001"},7,"s",[],null,'
                 '{"id":"n3","addr":"h:1","x":[{}]}]',
        "cluster": '{"leader":"node1","term":3,"members":[{"id":"node1",'
                   '"raft_addr":"127.0.0.1:12000","voter":true,"leader":true,'
                   '"match_index":18446744073709551615}]}',
    }
    for name, d in docs.items():
        out("http_json", name, d)
        out("mandi_json", name, d)


# --- gRPC framing --------------------------------------------------------------
def grpc_frame_seeds():
    def frame(payload, flag=0):
        return bytes([flag]) + struct.pack(">I", len(payload)) + payload
    get = encode("kv.GetRequest", 'key: "k"', "kv.proto")
    setm = encode("kv.SetRequest", 'key: "k" value: "v"', "kv.proto")
    seeds = {
        # byte 0: the limit (0: 0, 1: 16, 2: 1024, 3: 4 MiB), then the stream
        "one": b"\x02" + frame(get),
        "two": b"\x02" + frame(get) + frame(setm),
        "empty-msg": b"\x02" + frame(b""),
        "compressed": b"\x02" + frame(get, 1),
        "too-big": b"\x01" + frame(b"x" * 40),
        "truncated": b"\x03" + frame(setm)[:-2],
        "prefix-only": b"\x03\x00\x00\x00",
        "timeouts": b"\x02" + b"100m5S1H99999999n",
        "message": b"\x03" + "caf\u00e9 %41 \x01\xff".encode("utf-8", "replace"),
        "content-type": b"\x02application/grpc+proto;x",
        "status": b"\x0214",
    }
    for name, d in seeds.items():
        out("grpc_frame", name, d)


# --- gRPC messages ---------------------------------------------------------------
def grpc_pb_seeds():
    kv = "kv.proto"
    etcd = "etcd_rpc.proto"
    refl = "grpc/reflection/v1/reflection.proto"
    rt = "grpc.reflection.v1.ServerReflectionRequest"
    seeds = {
        "get": encode("kv.GetRequest", 'key: "greeting"', kv),
        "get-stale": encode("kv.GetRequest", 'key: "k" stale: true', kv),
        "set": encode("kv.SetRequest", 'key: "k" value: "v\\000w"', kv),
        "delete": encode("kv.DeleteRequest", 'key: "k"', kv),
        "get-response": encode("kv.GetResponse", 'value: "v" found: true',
                               kv),
        "status-response": encode(
            "pyazdb.StatusResponse", 'id: "node1" role: "leader" term: 3 '
            'members { id: "node2" voter: true }', "cluster.proto"),
        "health": encode("grpc.health.v1.HealthCheckRequest",
                         'service: "kv.KVService"',
                         "grpc/health/v1/health.proto", (GRPC_PROTO,)),
        "refl-list": encode(rt, 'host: "h" list_services: ""', refl,
                            (GRPC_PROTO,)),
        "refl-file": encode(rt, 'file_by_filename: "kv.proto"', refl,
                            (GRPC_PROTO,)),
        "refl-symbol": encode(rt, 'file_containing_symbol: '
                              '"kv.KVService.Get"', refl, (GRPC_PROTO,)),
        "refl-ext": encode(rt, 'all_extension_numbers_of_type: '
                           '"kv.GetRequest"', refl, (GRPC_PROTO,)),
        "refl-ext2": encode(rt, 'file_containing_extension { containing_type:'
                            ' "kv.GetRequest" extension_number: 5 }', refl,
                            (GRPC_PROTO,)),
        "unknown-fields": bytes([0x0a, 1, ord("k"), 0x18, 0x05, 0x25, 0, 0, 0,
                                 0, 0x29] + [0] * 8),
        "etcd-watch-create-prefix": encode(
            "etcdserverpb.WatchRequest", 'create_request { key: "p/" '
            'range_end: "p0" start_revision: 3 progress_notify: true '
            'filters: NOPUT filters: NODELETE prev_kv: true watch_id: 7 '
            'fragment: true }', etcd),
        "etcd-watch-create-all": encode(
            "etcdserverpb.WatchRequest",
            'create_request { key: "" range_end: "\\000" }', etcd),
        "etcd-watch-cancel": encode("etcdserverpb.WatchRequest",
                                    "cancel_request { watch_id: 3 }", etcd),
        "etcd-watch-progress": encode("etcdserverpb.WatchRequest",
                                      "progress_request { }", etcd),
        "etcd-lease-grant": encode("etcdserverpb.LeaseGrantRequest",
                                   "TTL: 10 ID: 99", etcd),
        "etcd-lease-ttl": encode("etcdserverpb.LeaseTimeToLiveRequest",
                                 "ID: 99 keys: true", etcd),
    }
    for name, d in seeds.items():
        out("grpc_pb", name, d)


# --- Raft peer codec -----------------------------------------------------------------
def raft_codec_seeds():
    def framed(text):
        body = encode("pyazdb.raft.Frame", text, "raft.proto")
        return struct.pack(">I", len(body)) + body
    hs = framed('handshake { version: 1 cluster_id: 42 node_id: 2 '
                'name: "node2" token: "t" target_id: 1 http_addr: ":8080" '
                'grpc_addr: ":9090" raft_addr: "127.0.0.1:12001" }')
    msgs = {
        "append": 'message { type: 1 from: 2 to: 1 term: 3 log_term: 2 '
                  'index: 7 commit: 6 entries { term: 3 index: 8 type: 0 '
                  'data: "abc" } entries { term: 3 index: 9 type: 2 } }',
        "append-resp": 'message { type: 2 from: 2 to: 1 term: 3 reject: true '
                       'index: 7 log_term: 1 reject_hint: 4 }',
        "heartbeat": 'message { type: 3 from: 2 to: 1 term: 3 commit: 5 '
                     'context: 9 }',
        "vote": 'message { type: 7 from: 2 to: 1 term: 4 index: 9 '
                'log_term: 3 transfer: true }',
        "read-index": 'message { type: 10 from: 2 to: 1 context: 77 }',
        "snapshot": 'message { type: 12 from: 2 to: 1 term: 3 snap_index: 50 '
                    'snap_term: 2 entries { term: 2 index: 50 type: 1 data: '
                    '"\\001\\000\\000\\000\\001\\000\\000\\000\\000\\000\\000'
                    '\\000\\001\\001\\000\\000\\000\\000" } }',
        "chunk": 'chunk { term: 3 snap_index: 50 snap_term: 2 offset: 0 '
                 'total: 4 data: "PYAZ" }',
        "reply": 'handshake_reply { status: OK version: 1 node_id: 1 '
                 'name: "node1" http_addr: ":8080" grpc_addr: ":9090" }',
    }
    # byte 0: bits 0-1 the link's frame limit, bit 2 allocation failure
    for name, text in msgs.items():
        out("raft_codec", name, b"\x03" + hs + framed(text))
    out("raft_codec", "oom", b"\x07\x03" + hs + framed(msgs["append"]))
    out("raft_codec", "too-big", b"\x00" + hs + framed(msgs["append"]))
    out("raft_codec", "garbage", b"\x03\x00\x00\x00\x03\xff\xff\xff")
    # bit 3: the frames after the handshake carry a CRC-32C of prefix+body
    hs_crc = framed('handshake { version: 1 cluster_id: 42 node_id: 2 '
                    'name: "node2" frame_crc: true }')
    def sealed(text):
        f = framed(text)
        return f + struct.pack(">I", crc32c(f))
    both = sealed(msgs["append"]) + sealed(msgs["heartbeat"])
    out("raft_codec", "crc", b"\x0b" + hs_crc + both)
    damaged = bytearray(both)
    damaged[9] ^= 0x10
    out("raft_codec", "crc-damaged", b"\x0b" + hs_crc + bytes(damaged))


def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


# --- snapshot files ---------------------------------------------------------------
def crc64_xz(data):
    poly = 0xC96C5795D7870F42
    crc = 0xFFFFFFFFFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (poly if crc & 1 else 0)
    return crc ^ 0xFFFFFFFFFFFFFFFF


def conf_blob(ids):
    b = struct.pack(">BI", 1, len(ids))
    for i, meta in ids:
        m = meta.encode()
        b += struct.pack(">QBI", i, 1, len(m)) + m
    return b


def snapshot_file(index, term, records, conf):
    body = b"PYAZSNAP" + struct.pack(">IQQQQI", 1, index, term,
                                     1767434400000, len(records), len(conf))
    body += conf
    for k, v in records:
        body += struct.pack(">II", len(k), len(v)) + k + v
    body += b"PYAZEND\n"
    return body + struct.pack(">Q", crc64_xz(body))


def snapshot_seeds():
    conf = conf_blob([(1, "127.0.0.1:12000"), (2, "127.0.0.1:12001")])
    files = {
        "empty": snapshot_file(1, 1, [], b""),
        "one": snapshot_file(10, 2, [(b"k", b"v")], conf),
        "several": snapshot_file(500, 7, [(b"a", b""), (b"b\x00c", b"x" * 40),
                                          (b"", b"empty key")], conf),
        "repeat": snapshot_file(3, 1, [(b"k", b"1"), (b"k", b"2")], b""),
        "bad-conf": snapshot_file(3, 1, [(b"k", b"1")], b"\x01\xff"),
    }
    for name, f in files.items():
        # byte 0, bit 0: recompute the checksum before reading
        out("snapshot", name, b"\x00" + f)
        out("snapshot", name + "-fixcrc", b"\x01" + f[:-1] + b"\x00")
    out("snapshot", "truncated", b"\x01" + files["one"][:40])
    out("snapshot", "bad-magic", b"\x01" + b"PYAZSNAQ" + files["one"][8:])


# --- configuration ------------------------------------------------------------------
def config_seeds():
    with open(os.path.join(ROOT, "pyazdb.conf"), "rb") as f:
        out("config", "pyazdb.conf", f.read())
    files = {
        "quoted": 'node-id "node2"\nlog-file ""\nraft-data "/var/lib/p q"\n'
                  'cluster-token "a\\"b\\\\c"\n',
        "sizes": "max-key-size 1kb\nmax-value-size 2MB\nhttp-max-body 3g\n"
                 "heartbeat-interval 50ms\nelection-timeout 2s\n"
                 "request-timeout 1m\n",
        "cluster": "initial-cluster node1=127.0.0.1:12000, node2=[::1]:12001"
                   ",node3=h:12002\nmandi-addr http://127.0.0.1:7000/\n",
        "errors": "# comment\r\n   \nmax-clients 0\n",
        "mandi": "mode mandi\nmandi-addr http://0.0.0.0:7000\n",
        "limits": "max-clients 1000000\nclient-idle-timeout 0\n"
                  "conn-high-water 1kb\nconn-hard-limit 16gb\n"
                  "http-max-headers 10000\ngrpc-max-message 1024\n",
        "clash": "raft-addr :9090\ngrpc-addr 0.0.0.0:9090\n"
                 "http-addr [::]:8080\n",
        "duplicate": "node-id a\nNODE-ID b\n",
        "unterminated": 'log-file "/tmp/x\nlog-level debug\n',
    }
    for name, text in files.items():
        out("config", name, text)
    # parts: file 0xff argv (NUL-separated) 0xff environment 0xff value
    out("config", "cmdline",
        b"node-id a\n\xff@\x00--node-id\x00node2\x00--http-addr=:8081\x00"
        b"--mandi\x00--test-config\x00x\xffNODE_ID=n3\x00RAFT_LEADER=true"
        b"\x00MANDI_ADDR=http://h:1\xffn1=h:1,n2=h:2")
    out("config", "value", b"\xff\xff\xffhttp://[::1]:65535/")


# --- Raft core: operation sequences ------------------------------------------------
def raft_core_seeds():
    rng = random.Random(20261202)
    # byte 0: bit 0 five voters, 1 pre-vote, 2 check-quorum, 3 elect,
    # 4 restore from a generated log, 5 non-voter, 6-7 inflight limit
    setups = [0x00, 0x08, 0x0f, 0x2e, 0x18, 0x1d, 0x4a, 0x88, 0xd9, 0x3b,
              0x16, 0x0c]
    for i, s0 in enumerate(setups):
        n = 200 + 150 * (i % 4)
        ops = bytes(rng.randrange(256) for _ in range(n))
        out("raft_core", "ops-%02d" % i, bytes([s0, rng.randrange(256),
                                                rng.randrange(256)]) + ops)
    # a leader taking proposals and cycling Readys with cooperative peers
    cyc = bytearray([0x08, 0x05, 0x01])
    for k in range(60):
        cyc += bytes([8, 3, k, k + 1, 23, 20, 0, 16, 17, 2, 1])
    out("raft_core", "leader-cycles", bytes(cyc))


def raft_chunk_seeds():
    # byte 0: junk length, then junk; then events (fuzz_raft_chunk.c):
    # 0 leader, 1 term, 2 commit, 3 link closed, 4-7 a chunk: from,
    # valid file?, our term?, (term), total = file size?, (total), offset
    # = next?, (offset), bytes wanted
    def chunk(frm=2, take=255):
        return bytes([4, frm, 1, 1, 1, 1, take])
    out("raft_chunk", "whole-transfer", bytes([0]) + chunk() * 12)
    out("raft_chunk", "leader-changes-midway",
        bytes([0]) + chunk(take=200) * 2 + bytes([0, 3]) + chunk(take=200))
    out("raft_chunk", "link-closes-midway",
        bytes([0]) + chunk() * 3 + bytes([3, 2]) + chunk() * 3)
    out("raft_chunk", "stranger-sends", bytes([0]) + chunk(frm=3) * 5)
    rng = random.Random(20261203)
    junk = bytes(rng.randrange(256) for _ in range(40))
    out("raft_chunk", "junk-file", bytes([40]) + junk +
        bytes([4, 2, 0, 1, 1, 1, 255]) * 3)
    for i in range(6):
        n = rng.randrange(20, 300)
        out("raft_chunk", "random-%02d" % i,
            bytes(rng.randrange(256) for _ in range(n)))


def kv_cmd_seeds():
    # commands as kv_encode_set / kv_encode_del write them (src/kv.c):
    # byte 0 = version 1 << 4 | op, a varint key length, the key, and for
    # a set a varint value length and the value; each framed for the
    # harness by a 2-byte little-endian length
    def varint(n):
        b = bytearray()
        while True:
            if n < 0x80:
                b.append(n)
                return bytes(b)
            b.append((n & 0x7F) | 0x80)
            n >>= 7

    def cmd_set(k, v):
        return bytes([0x11]) + varint(len(k)) + k + varint(len(v)) + v

    def cmd_del(k):
        return bytes([0x12]) + varint(len(k)) + k

    def framed(*cmds):
        return b"".join(len(c).to_bytes(2, "little") + c for c in cmds)

    out("kv_cmd", "set-get-del",
        framed(cmd_set(b"k", b"v"), cmd_set(b"k", b"w"), cmd_del(b"k")))
    out("kv_cmd", "many-keys",
        framed(*[cmd_set(b"key%d" % i, b"x" * i) for i in range(40)]))
    out("kv_cmd", "nul-and-empty",
        framed(cmd_set(b"\0", b""), cmd_set(b"", b"e"), cmd_del(b"\0")))
    out("kv_cmd", "long-value", framed(cmd_set(b"big", b"y" * 300)))
    out("kv_cmd", "bad-ops", framed(bytes([0x13, 1, 65]), bytes([0x21, 0]),
                                    bytes([0x11, 0x80]), b""))

    # version 2 (0x21): transactions, as kv_encode_txn writes them
    def field(b):
        return varint(len(b)) + b

    def cmp(target, result, key, val):
        tail = field(val) if target == 0 else varint(val)
        return bytes([target, result]) + field(key) + tail

    def op(kind, key, extra=b""):
        return bytes([kind]) + field(key) + extra

    def txn(cmps, succ, fail):
        return (bytes([0x21]) + varint(len(cmps)) + b"".join(cmps) +
                varint(len(succ)) + b"".join(succ) +
                varint(len(fail)) + b"".join(fail))

    put_a = op(1, b"a", field(b"1") + varint(0))
    out("kv_cmd", "txn-cas",
        framed(cmd_set(b"a", b"0"), cmd_set(b"b", b"x"),
               txn([cmp(3, 0, b"a", 1)], [put_a, op(2, b"b")],
                   [op(4, b"a")]),
               txn([cmp(2, 0, b"a", 0), cmp(0, 1, b"a", b"1")], [put_a],
                   [op(5, b"a", bytes([2]) + field(b"b") + varint(10))])))
    out("kv_cmd", "txn-ranges",
        framed(*[cmd_set(b"k%d" % i, b"v") for i in range(10)],
               txn([], [op(3, b"k3", bytes([0]) + field(b"k6")),
                        op(5, b"", bytes([1]) + field(b"") + varint(0))],
                   []),
               txn([], [op(3, b"k8", bytes([1]) + field(b""))], [])))


def txn_json_seeds():
    # byte 0 picks the path: 0 /txn, 1 /set, 2 /delete
    seeds = {
        "txn": b"\x00" + _txn_request().split("\r\n\r\n", 1)[1].encode(),
        "txn-empty": b"\x00{}",
        "set-cas": b'\x01{"key":"a","value":"2","prev_revision":1}',
        "set-create": b'\x01{"key_b64":"AP8=","value":"x","prev_revision":0,'
                      b'"prev_value_b64":"eA=="}',
        "delete-cas": b'\x02{"key":"a","prev_value":"v"}',
        "delete-prefix": b'\x02{"prefix":"a"}',
        "delete-all": b'\x02{"prefix_b64":"/w=="}',
    }
    for name, data in seeds.items():
        out("txn_json", name, data)


def main():
    txn_json_seeds()
    kv_cmd_seeds()
    raft_chunk_seeds()
    http_seeds()
    json_seeds()
    grpc_frame_seeds()
    grpc_pb_seeds()
    raft_codec_seeds()
    snapshot_seeds()
    config_seeds()
    raft_core_seeds()
    return 0


if __name__ == "__main__":
    sys.exit(main())
