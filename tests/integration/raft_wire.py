"""A hand-driven client of the Raft peer protocol, for tests that attack a
node's Raft port the way a stranger (or a broken peer) would.

The message classes come from proto/raft.proto through `protoc
--python_out` at test time. Frames are a 4-byte big-endian length and one
pyazdb.raft.Frame. Snapshot files are built here from their documented
format (src/snapshot.h), CRC-64/XZ included, so a test can send one whose
contents are wrong in a precise way.
"""
import importlib
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

_pb = None

# enum raft_msg_type and raft_entry_type (src/raft.h)
APPEND, APPEND_RESP, HEARTBEAT = 1, 2, 3
PREVOTE, VOTE, VOTE_RESP = 5, 7, 8
INSTALL_SNAPSHOT = 12
NORMAL, CONF, NOOP = 0, 1, 2
# HandshakeReply.Status
OK, BAD_VERSION, CLUSTER_MISMATCH, DUPLICATE_ID, BAD_TOKEN = 1, 2, 3, 4, 5
WRONG_NODE, BAD_HANDSHAKE, NOT_MEMBER, REMOVED = 6, 7, 8, 9


def pb():
    """The generated raft_pb2 module (generated once per process)."""
    global _pb
    if _pb is None:
        out = tempfile.mkdtemp(prefix="pz-raft-pb-")
        shutil.copy(os.path.join(ROOT, "proto", "raft.proto"), out)
        subprocess.run(["protoc", "--proto_path=" + out,
                        "--python_out=" + out, "raft.proto"], check=True)
        sys.path.insert(0, out)
        _pb = importlib.import_module("raft_pb2")
    return _pb


def identity(server):
    """(node id, cluster id) of a running server, from its log line
    'raft: listening on ... (node ID 'name', cluster HEX)'."""
    m = re.search(r"raft: listening on .* \(node (\d+) '[^']*', cluster "
                  r"([0-9a-f]{16})\)", server.read_log())
    assert m, server.read_log()
    return int(m.group(1)), int(m.group(2), 16)


def node_id(name):
    """A node's id from its name, as the server derives it
    (members_name_to_id: pz_hash of the name with the names' seed)."""
    m64 = (1 << 64) - 1

    def mix(a, b):
        r = a * b
        return (r ^ (r >> 64)) & m64

    k0, k1, seed = 0xa0761d6478bd642f, 0xe7037ed1a0b428db, 0x7079617a6462
    p = name.encode()
    n = len(p)
    h = seed ^ mix(seed ^ k0, k1) ^ n
    while len(p) >= 8:
        h = mix(h ^ int.from_bytes(p[:8], "little"), k1)
        p = p[8:]
    if p:
        h = mix(h ^ int.from_bytes(p, "little"), k0)
    h = mix(h, h ^ k1)
    return h or 1


def frame(msg):
    body = msg.SerializeToString()
    return struct.pack(">I", len(body)) + body


def crc32c(data):
    """CRC-32C (Castagnoli), as frames on a link with checksums carry."""
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


class Peer:
    """One TCP connection to a node's Raft port."""

    def __init__(self, port, timeout=5):
        self.sock = socket.create_connection(("127.0.0.1", port),
                                             timeout=timeout)
        self.sock.settimeout(timeout)
        self.crc = False  # frames after the handshake carry a CRC-32C
        self.damage = None  # a bit of the next frame's body to flip

    def close(self):
        self.sock.close()

    def send(self, data):
        self.sock.sendall(data)

    def handshake(self, node_id, cluster_id, token="", name="mallory",
                  http_addr="", grpc_addr="", raft_addr="", version=1,
                  frame_crc=False):
        """Sends a Handshake and returns the decoded HandshakeReply (or None
        if the connection closed without one). With frame_crc, later frames
        carry their checksum if the node agrees."""
        f = pb().Frame()
        h = f.handshake
        h.version = version
        h.cluster_id = cluster_id
        h.node_id = node_id
        h.name = name
        h.token = token
        h.http_addr = http_addr
        h.grpc_addr = grpc_addr
        h.raft_addr = raft_addr
        h.frame_crc = frame_crc
        self.send(frame(f))
        r = self.read_reply()
        self.crc = bool(r is not None and r.frame_crc)
        return r

    def send_frame(self, f):
        """One frame after the handshake: sealed when the link has
        checksums, with one bit flipped if self.damage says so."""
        data = bytearray(frame(f))
        if self.crc:
            data += struct.pack(">I", crc32c(bytes(data)))
        if self.damage is not None:
            data[4 + self.damage // 8] ^= 1 << (self.damage % 8)
            self.damage = None
        self.send(bytes(data))

    def read_reply(self):
        hdr = self._read(4)
        if hdr is None:
            return None
        (n,) = struct.unpack(">I", hdr)
        body = self._read(n)
        if body is None:
            return None
        self.last_reply_bytes = hdr + body
        f = pb().Frame()
        f.ParseFromString(body)
        return f.handshake_reply

    def _read(self, n):
        buf = b""
        while len(buf) < n:
            try:
                chunk = self.sock.recv(n - len(buf))
            except (ConnectionResetError, socket.timeout):
                return None
            if not chunk:
                return None
            buf += chunk
        return buf

    def message(self, **fields):
        """Sends one RaftMessage; entries as a list of dicts."""
        f = pb().Frame()
        m = f.message
        for e in fields.pop("entries", []):
            pe = m.entries.add()
            for k, v in e.items():
                setattr(pe, k, v)
        for k, v in fields.items():
            setattr(m, k, v)
        self.send_frame(f)

    def chunk(self, term, snap_index, snap_term, offset, total, data):
        f = pb().Frame()
        c = f.chunk
        c.term = term
        c.snap_index = snap_index
        c.snap_term = snap_term
        c.offset = offset
        c.total = total
        c.data = data
        self.send_frame(f)

    def closed_by_peer(self, timeout=5):
        """True once the node closes the connection (EOF or reset)."""
        self.sock.settimeout(timeout)
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return True
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False


class Member:
    """Listens on a (never started) member's Raft port and answers the
    node's dial as that member: the node's Handshake names the member's
    node id (target_id), its own and the cluster's."""

    def __init__(self, port):
        self.lsock = socket.create_server(("127.0.0.1", port))
        self.lsock.settimeout(15)
        self.conn = None

    def accept(self, answer_as=None):
        """Take the node's next dial, answer it as the member it wants (or
        as node answer_as); returns its Handshake."""
        if self.conn:
            self.conn.close()
        self.conn, _ = self.lsock.accept()
        self.conn.settimeout(15)
        hs = self.frame().handshake
        f = pb().Frame()
        r = f.handshake_reply
        r.status = OK
        r.version = hs.version
        r.node_id = answer_as if answer_as is not None else hs.target_id
        r.name = "fake"
        self.conn.sendall(frame(f))
        self.id = hs.target_id
        return hs

    def frame(self):
        hdr = self._read(4)
        (n,) = struct.unpack(">I", hdr)
        f = pb().Frame()
        f.ParseFromString(self._read(n))
        return f

    def _read(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.conn.recv(n - len(buf))
            if not chunk:
                raise EOFError("the node closed its link to us")
            buf += chunk
        return buf

    def message(self, type):
        """The next RaftMessage of this type the node sends us."""
        while True:
            f = self.frame()
            if f.WhichOneof("body") == "message" and f.message.type == type:
                return f.message

    def close(self):
        if self.conn:
            self.conn.close()
        self.lsock.close()


# --- snapshot files (format of src/snapshot.h) ------------------------------

_CRC_TABLE = None


def crc64(data, crc=0):
    """CRC-64/XZ."""
    global _CRC_TABLE
    if _CRC_TABLE is None:
        poly = 0xC96C5795D7870F42
        _CRC_TABLE = []
        for i in range(256):
            c = i
            for _ in range(8):
                c = (c >> 1) ^ poly if c & 1 else c >> 1
            _CRC_TABLE.append(c)
    crc ^= 0xFFFFFFFFFFFFFFFF
    for b in data:
        crc = _CRC_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFFFFFFFFFF


def conf_bytes(members):
    """raft_conf_encode of [(id, voter, meta)], sorted by id."""
    out = struct.pack(">BI", 1, len(members))
    for nid, voter, meta in sorted(members):
        m = meta.encode()
        out += struct.pack(">QBI", nid, 1 if voter else 0, len(m)) + m
    return out


def snapshot_file(index, term, conf, records):
    """A snapshot file holding records [(key, value)] as given (a key may
    repeat: the file is then well-formed but invalid)."""
    body = b"PYAZSNAP" + struct.pack(">IQQqQI", 1, index, term, 0,
                                     len(records), len(conf)) + conf
    for k, v in records:
        body += struct.pack(">II", len(k), len(v)) + k + v
    body += b"PYAZEND\n"
    return body + struct.pack(">Q", crc64(body))
