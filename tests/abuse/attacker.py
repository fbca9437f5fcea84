"""An unprivileged local user attacking the agent (tests/abuse.rs runs it as uid 65534).

Usage: attacker.py SOCKET MODE [ARGS]. Each mode prints one JSON line when its attack is in place,
then holds it until stdin closes (so the test can measure the agent and run a victim meanwhile).

  idle N              N connections that send the HTTP/2 preface and then nothing
  served N            N connections (one grpcio channel each) that make one FetchJWTSVID call each
                      (the same audience: one credential) and then hold the connection, idle
  streams CH PER      CH channels, PER FetchX509SVID streams each, never read
  jwt N               N FetchJWTSVID calls, each for a new audience (new credentials); reports how
                      long they took (seconds)
  audiences           oversized audience requests (1 MiB audience, 17 audiences, 64 KiB JWT)
  late S              not an attack: a default grpcio client connects, idles S seconds (past the
                      agent's connection_idle), then calls FetchJWTSVID on the same channel
  stalled N           one raw HTTP/2 connection that opens N FetchX509SVID streams with every
                      flow-control window at its maximum, then never reads (the agent's socket
                      fills). On a line "drain K" from stdin it reports how many bytes were waiting
                      in the socket, reads until every stream has K messages (or 30 s pass) and
                      reports again
  churn P             P forked processes that connect and close in a loop, as fast as they can
                      (non-blocking connects; a full listen queue is simply tried again); each dies
                      with the attacker (PR_SET_PDEATHSIG), and they are killed when stdin closes
"""

import json
import resource
import socket
import sys
import time

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
HEADER = [("workload.spiffe.io", "true")]


def hold(report):
    print(json.dumps(report), flush=True)
    sys.stdin.read()


def varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def strings(field, values):
    """Protobuf encoding of a repeated (or single) string field."""
    out = b""
    for v in values:
        data = v.encode()
        out += bytes([(field << 3) | 2]) + varint(len(data)) + data
    return out


class Api:
    """The Workload API over grpcio with hand-encoded requests (no generated code: the SPIFFE
    library's package pulls in modules the system interpreter cannot load)."""

    def __init__(self, path):
        import grpc

        self.grpc = grpc
        # A connection of its own per channel (grpcio shares connections between channels otherwise).
        self.channel = grpc.insecure_channel(
            "unix://" + path, options=[("grpc.use_local_subchannel_pool", 1)])
        ident = lambda b: b
        self.x509 = self.channel.unary_stream(
            "/SpiffeWorkloadAPI/FetchX509SVID", request_serializer=ident, response_deserializer=ident)
        self.jwt = self.channel.unary_unary(
            "/SpiffeWorkloadAPI/FetchJWTSVID", request_serializer=ident, response_deserializer=ident)
        self.validate = self.channel.unary_unary(
            "/SpiffeWorkloadAPI/ValidateJWTSVID", request_serializer=ident, response_deserializer=ident)


def idle(path, n):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    socks, failed = [], 0
    for _ in range(n):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
            s.sendall(PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")  # preface + empty SETTINGS
            socks.append(s)
        except OSError:
            failed += 1
            s.close()
    hold({"opened": len(socks), "failed": failed})


class Outcomes:
    """The status codes of unary calls, counted, with the message of one ResourceExhausted kept."""

    def __init__(self):
        self.codes, self.sample = {}, ""

    def call(self, api, request):
        try:
            request()
            code = "OK"
        except api.grpc.RpcError as e:
            code = e.code().name
            if code == "RESOURCE_EXHAUSTED":
                self.sample = e.details()
        self.codes[code] = self.codes.get(code, 0) + 1

    def report(self):
        return {"codes": self.codes, "sample": self.sample}


def served(path, n):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    apis, outcomes = [], Outcomes()
    for _ in range(n):
        api = Api(path)
        apis.append(api)
        outcomes.call(api, lambda: api.jwt(
            strings(1, ["served-then-idle"]), metadata=HEADER, timeout=10))
    hold(outcomes.report())


def streams(path, channels, per):
    calls = []
    apis = []
    for _ in range(channels):
        api = Api(path)
        apis.append(api)
        for _ in range(per):
            calls.append(api.x509(b"", metadata=HEADER))
    time.sleep(3)
    refused = [c for c in calls if c.done()]
    codes = {}
    sample = ""
    for c in refused:
        code = c.code().name
        codes[code] = codes.get(code, 0) + 1
        if code == "RESOURCE_EXHAUSTED":
            sample = c.details()
    hold({"started": len(calls), "ended": len(refused), "codes": codes, "sample": sample})


def jwt(path, n):
    api = Api(path)
    api.grpc.channel_ready_future(api.channel).result(timeout=10)
    outcomes = Outcomes()
    start = time.monotonic()
    for i in range(n):
        outcomes.call(api, lambda: api.jwt(
            strings(1, [f"aud-{i}-{time.time_ns()}"]), metadata=HEADER))
    hold({**outcomes.report(), "seconds": time.monotonic() - start})


def audiences(path):
    api = Api(path)
    out = {}
    cases = {
        "one_mib": strings(1, ["a" * (1 << 20)]),
        "seventeen": strings(1, [f"a{i}" for i in range(17)]),
    }
    for name, req in cases.items():
        for _ in range(20):
            try:
                api.jwt(req, metadata=HEADER)
                out[name] = "OK"
            except api.grpc.RpcError as e:
                out[name] = e.code().name
                out[name + "_details"] = e.details()[:200]
    try:
        api.validate(strings(1, ["a"]) + strings(2, ["x" * (64 << 10)]), metadata=HEADER)
        out["big_jwt"] = "OK"
    except api.grpc.RpcError as e:
        out["big_jwt"] = e.code().name
    hold(out)


def late(path, seconds):
    api = Api(path)
    api.grpc.channel_ready_future(api.channel).result(timeout=10)
    time.sleep(seconds)
    try:
        api.jwt(strings(1, ["late"]), metadata=HEADER, timeout=10)
        code = "OK"
    except api.grpc.RpcError as e:
        code = e.code().name
    hold({"code": code})


def frame(kind, flags, stream, payload):
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


def literal(name, value):
    """An HPACK literal header field without indexing, new name, no Huffman coding."""
    return b"\x00" + varint_hpack(len(name)) + name + varint_hpack(len(value)) + value


def varint_hpack(n):
    """An HPACK integer with a 7-bit prefix (the H bit clear)."""
    if n < 127:
        return bytes([n])
    out, n = bytes([127]), n - 127
    while n >= 128:
        out += bytes([(n & 0x7F) | 0x80])
        n >>= 7
    return out + bytes([n])


def read_exactly(sock, n):
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise ConnectionError("the agent closed the connection")
        out += chunk
    return out


def read_frame(sock):
    head = read_exactly(sock, 9)
    payload = read_exactly(sock, int.from_bytes(head[:3], "big"))
    return head[3], head[4], int.from_bytes(head[5:9], "big") & 0x7FFFFFFF, payload


def stalled(path, n):
    import fcntl
    import termios

    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    biggest = (1 << 31) - 1
    # SETTINGS_INITIAL_WINDOW_SIZE at its maximum, and the connection window opened as far.
    s.sendall(PREFACE + frame(4, 0, 0, (4).to_bytes(2, "big") + biggest.to_bytes(4, "big"))
              + frame(8, 0, 0, (biggest - 65535).to_bytes(4, "big")))
    # The agent's SETTINGS comes first: acknowledged, and then nothing is read.
    kind, flags, _, _ = read_frame(s)
    assert kind == 4 and not flags & 1, (kind, flags)
    s.sendall(frame(4, 1, 0, b""))
    block = (b"\x83\x86" + b"\x04" + varint_hpack(len(b"/SpiffeWorkloadAPI/FetchX509SVID"))
             + b"/SpiffeWorkloadAPI/FetchX509SVID" + b"\x01\x09localhost"
             + b"\x0f\x10" + varint_hpack(16) + b"application/grpc"
             + literal(b"te", b"trailers") + literal(b"workload.spiffe.io", b"true"))
    ids = [2 * i + 1 for i in range(n)]
    for sid in ids:
        # HEADERS (END_HEADERS), then the empty request message with END_STREAM.
        s.sendall(frame(1, 4, sid, block) + frame(0, 1, sid, b"\x00\x00\x00\x00\x00"))
    print(json.dumps({"streams": n}), flush=True)
    line = sys.stdin.readline().split()
    want = int(line[1]) if len(line) == 2 and line[0] == "drain" else 1
    queued = fcntl.ioctl(s, termios.FIONREAD, b"\0\0\0\0")
    queued = int.from_bytes(queued, sys.byteorder)
    data = {sid: b"" for sid in ids}
    ended, total, deadline = {}, 0, time.time() + 30
    s.settimeout(1)

    def messages(buf):
        count, at = 0, 0
        while len(buf) - at >= 5:
            size = int.from_bytes(buf[at + 1:at + 5], "big")
            if len(buf) - at - 5 < size:
                break
            count, at = count + 1, at + 5 + size
        return count

    closed, buf = False, b""
    while time.time() < deadline and any(messages(d) < want for d in data.values()):
        try:
            chunk = s.recv(1 << 16)
        except socket.timeout:
            continue
        if not chunk:
            closed = True
            break
        total, buf = total + len(chunk), buf + chunk
        while len(buf) >= 9 and len(buf) >= 9 + int.from_bytes(buf[:3], "big"):
            end = 9 + int.from_bytes(buf[:3], "big")
            kind, flags, sid = buf[3], buf[4], int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
            payload, buf = buf[9:end], buf[end:]
            if kind == 0 and sid in data:
                data[sid] += payload
            elif kind in (3, 7):  # RST_STREAM, GOAWAY
                ended[sid] = kind
            elif kind == 6 and not flags & 1:  # PING: answered
                s.sendall(frame(6, 1, 0, payload))
    counts = [messages(d) for d in data.values()]
    hold({"queued": queued, "read": total, "min_messages": min(counts),
          "max_messages": max(counts), "ended": len(ended), "closed": closed})


def churn(path, procs):
    import ctypes
    import os
    import signal

    libc = ctypes.CDLL(None, use_errno=True)
    parent, children = os.getpid(), []
    for _ in range(procs):
        pid = os.fork()
        if pid == 0:
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: killed when the attacker dies
            if os.getppid() != parent:  # it died before the line above
                os._exit(0)
            while True:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.setblocking(False)
                try:
                    s.connect(path)
                except OSError:
                    pass
                s.close()
        children.append(pid)
    time.sleep(1)
    print(json.dumps({"churners": procs}), flush=True)
    sys.stdin.read()
    for pid in children:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def main():
    path, mode, args = sys.argv[1], sys.argv[2], [int(a) for a in sys.argv[3:]]
    {"idle": idle, "served": served, "streams": streams, "jwt": jwt, "audiences": audiences, "late": late,
     "stalled": stalled, "churn": churn}[mode](path, *args)


if __name__ == "__main__":
    main()
