"""A client that reads no responses, on a raw HTTP/2 connection (Debian python3-h2).

Every gRPC library reads what the server sends, so only a hand-driven connection can
do what a hostile or stuck client does: announce a flow-control window of 0 for its
streams and never open it. The server then cannot send a single response byte, and
gRPC keeps every answer in memory until the client reads it. clip_server counts such
answers against --max_request_memory_mb until they are read (see
clipserve_request_memory_bytes in docs/METRICS.md); these tests check, on a real
server, that:
- unary calls whose responses are never read fill the budget and then are refused
  with RESOURCE_EXHAUSTED, and the memory comes back once the client reads;
- an EmbedStream whose answers are never read holds at most the budget, its items
  waiting rather than refused, and every answer arrives once the client reads.

Usage: /usr/bin/python3 slow_reader_test.py --server PATH --proto_dir DIR
           --googleapis_dir DIR
"""

import argparse
import re
import socket
import struct
import sys
import threading
import time
import unittest
import urllib.request

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings

import clipserve_testlib as lib

ARGS = None
LIMIT_MB = 2
TEXT = "a photo of a cat sitting on a mat"
TEXTS_PER_CALL = 32
OPEN_WINDOW = 16 << 20


def grpc_frame(message):
    """A gRPC length-prefixed message: not compressed, 4-byte big-endian length."""
    body = message.SerializeToString()
    return struct.pack(">BI", 0, len(body)) + body


def grpc_messages(data):
    """The messages in a stream's DATA bytes (all of them, complete)."""
    messages, at = [], 0
    while at < len(data):
        compressed, length = struct.unpack(">BI", data[at:at + 5])
        assert compressed == 0, "compressed response"
        messages.append(data[at + 5:at + 5 + length])
        at += 5 + length
    assert at == len(data), "a truncated gRPC message"
    return messages


class Stream:
    def __init__(self):
        self.headers = {}
        self.data = bytearray()
        self.ended = False

    @property
    def grpc_status(self):
        status = self.headers.get("grpc-status")
        return None if status is None else int(status)


class RawConnection:
    """One HTTP/2 connection that announces a window of 0 for every stream.

    A thread reads the socket and answers the server's pings and settings (h2 queues
    those answers); nothing else goes back until open_windows().
    """

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.conn.local_settings = h2.settings.Settings(
            client=True,
            initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
        self.lock = threading.Condition()
        self.streams = {}
        self.closed = False
        self.window_open = False
        self.sent = 0  # messages sent by send(), all calls together
        with self.lock:
            self.conn.initiate_connection()
            self._flush()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _flush(self):
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def _read(self):
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                data = b""
            with self.lock:
                try:
                    if not data:
                        raise ConnectionError("closed")
                    for event in self.conn.receive_data(data):
                        self._on(event)
                    self._flush()
                except (ConnectionError, OSError, h2.exceptions.ProtocolError):
                    self.closed = True  # by the server, or by close()
                    return
                finally:
                    self.lock.notify_all()

    def _on(self, event):
        if isinstance(event, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
            self.streams[event.stream_id].headers.update(dict(event.headers))
        elif isinstance(event, h2.events.DataReceived):
            self.streams[event.stream_id].data += event.data
            if self.window_open:
                self.conn.acknowledge_received_data(event.flow_controlled_length,
                                                    event.stream_id)
        elif isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
            self.streams[event.stream_id].ended = True

    def start_call(self, method):
        """Opens a call; returns its stream id."""
        with self.lock:
            stream_id = self.conn.get_next_available_stream_id()
            self.streams[stream_id] = Stream()
            self.conn.send_headers(stream_id, [
                (":method", "POST"), (":scheme", "http"), (":path", method),
                (":authority", "127.0.0.1"), ("content-type", "application/grpc"),
                ("te", "trailers"),
            ])
            self._flush()
            return stream_id

    def send(self, stream_id, messages, end=True):
        """Sends `messages` on a call as fast as the server's window lets them go (it
        stops reading when its budget is full: then this waits), then half-closes it
        when `end`."""
        with self.lock:
            for message in messages:
                frame = grpc_frame(message)
                while self.conn.local_flow_control_window(stream_id) < len(frame):
                    if self.closed:
                        raise ConnectionError("the server closed the connection")
                    self.lock.wait()
                self.conn.send_data(stream_id, frame)
                self.sent += 1
                self._flush()
            if end:
                self.conn.end_stream(stream_id)
                self._flush()

    def wait(self, predicate, timeout_s):
        deadline = time.monotonic() + timeout_s
        with self.lock:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0 or self.closed:
                    return predicate()
                self.lock.wait(left)
            return True

    def ended(self):
        with self.lock:
            return [s for s in self.streams.values() if s.ended]

    def open_windows(self):
        """Starts reading: a large window for every stream and for the connection."""
        with self.lock:
            self.window_open = True
            self.conn.update_settings(
                {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: OPEN_WINDOW})
            self.conn.increment_flow_control_window(OPEN_WINDOW * 8)
            self._flush()

    def close(self):
        try:
            with self.lock:
                self.conn.close_connection()
                self._flush()
            self.sock.shutdown(socket.SHUT_RDWR)
        except (OSError, h2.exceptions.ProtocolError):
            pass
        self.sock.close()
        self.reader.join(timeout=10)


def metric(port, name):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    m = re.search(rf"^{name} ([0-9.e+]+)$", text, re.M)
    if m is None:
        raise AssertionError(f"no {name} in /metrics")
    return float(m.group(1))


def metric_sum(port, name):
    """The sum of a metric's series, whatever their labels (0 when it has none)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+]+)$",
                                            text, re.M))


def wait_for_metric(port, name, predicate, timeout_s=30):
    deadline = time.monotonic() + timeout_s
    while True:
        value = metric(port, name)
        if predicate(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def settled_memory(port, quiet_s=1.0, timeout_s=60):
    """clipserve_request_memory_bytes once it has not changed for `quiet_s`."""
    deadline = time.monotonic() + timeout_s
    last, since = metric(port, "clipserve_request_memory_bytes"), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        value = metric(port, "clipserve_request_memory_bytes")
        if value != last:
            last, since = value, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return value
    raise AssertionError(f"clipserve_request_memory_bytes still moving: {last}")


class SlowReaderTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        lib.set_up_stubs(cls, ARGS)
        # A small budget, so that a few hundred KiB of unread answers fill it: the
        # messages must fit in it (--max_message_bytes is at most the budget).
        cls.server = lib.Server(ARGS.server, "--model=demo:ViT-B-32",
                                f"--max_request_memory_mb={LIMIT_MB}",
                                "--max_message_bytes=1048576")
        cls.server.wait_ready(cls.health_pb, cls.health_grpc, timeout_s=120)
        cls.metrics = cls.server.metrics_port()
        cls.limit = metric(cls.metrics, "clipserve_request_memory_limit_bytes")
        assert cls.limit == LIMIT_MB << 20, cls.limit

    @classmethod
    def tearDownClass(cls):
        cls.server.kill()

    def setUp(self):
        self.assertEqual(
            wait_for_metric(self.metrics, "clipserve_request_memory_bytes",
                            lambda v: v == 0), 0)

    def test_unread_unary_responses_fill_the_budget_then_calls_are_refused(self):
        request = self.pb.EmbedTextRequest(texts=[TEXT] * TEXTS_PER_CALL)
        conn = RawConnection(self.server.port)
        try:
            calls = 60
            for _ in range(calls):
                conn.send(conn.start_call("/clipserve.v1.ClipService/EmbedText"),
                          [request])
            # Refused calls end at once (trailers only, no DATA needed); the others
            # answer into a window of 0 and stay open.
            held = settled_memory(self.metrics)
            ended = conn.ended()
            refused = [s for s in ended if s.grpc_status == 8]
            self.assertEqual(len(ended), len(refused),
                             [s.headers for s in ended if s.grpc_status != 8])
            self.assertGreater(len(refused), 0, f"held {held} bytes")
            answered = calls - len(refused)
            self.assertGreater(answered, 0)
            # Each held call counts its unread response (32 x 512 floats), not just
            # its few hundred bytes of request.
            self.assertGreaterEqual(held, answered * TEXTS_PER_CALL * 512 * 4)
            self.assertLessEqual(held, self.limit)
            self.assertGreater(held, self.limit / 2)

            conn.open_windows()
            self.assertTrue(conn.wait(lambda: all(s.ended for s in conn.streams.values()),
                                      timeout_s=60))
            ok = [s for s in conn.streams.values() if s.grpc_status == 0]
            self.assertEqual(len(ok), answered)
            for stream in ok:
                (body,) = grpc_messages(stream.data)
                response = self.pb.EmbedTextResponse.FromString(body)
                self.assertEqual(len(response.embeddings), TEXTS_PER_CALL)
                self.assertEqual(len(response.embeddings[0].values), 512)
            self.assertEqual(
                wait_for_metric(self.metrics, "clipserve_request_memory_bytes",
                                lambda v: v == 0), 0)
        finally:
            conn.close()

    def test_an_unread_stream_keeps_its_answers_counted_until_they_are_written(self):
        items = [self.pb.EmbedStreamRequest(id=str(i), text=TEXT) for i in range(200)]
        failures_before = metric_sum(self.metrics, "clipserve_stream_item_failures_total")
        conn = RawConnection(self.server.port)
        try:
            stream_id = conn.start_call("/clipserve.v1.ClipService/EmbedStream")
            conn.send(stream_id, items)
            # The answers are computed (one text, from the cache after the first) but
            # none can be written; each item keeps its share, answer included, until
            # then, so the stream reaches its items-in-flight limit (64) and stops.
            held = settled_memory(self.metrics)
            self.assertGreaterEqual(held, 48 * 512 * 4)
            self.assertLessEqual(held, 64 * (512 * 4 + 512))
            self.assertFalse(conn.streams[stream_id].ended)
            # Waiting items are not failed ones.
            self.assertEqual(
                metric_sum(self.metrics, "clipserve_stream_item_failures_total"),
                failures_before)

            conn.open_windows()
            self.assertTrue(conn.wait(lambda: conn.streams[stream_id].ended, 120))
            stream = conn.streams[stream_id]
            self.assertEqual(stream.grpc_status, 0, stream.headers)
            answers = [self.pb.EmbedStreamResponse.FromString(m)
                       for m in grpc_messages(stream.data)]
            self.assertEqual(sorted(int(a.id) for a in answers), list(range(len(items))))
            self.assertTrue(all(len(a.embedding.values) == 512 for a in answers))
            self.assertEqual(
                wait_for_metric(self.metrics, "clipserve_request_memory_bytes",
                                lambda v: v == 0), 0)
        finally:
            conn.close()


def main():
    global ARGS
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", required=True)
    parser.add_argument("--proto_dir", required=True)
    parser.add_argument("--googleapis_dir", required=True)
    ARGS, rest = parser.parse_known_args()
    unittest.main(argv=[sys.argv[0], *rest])


if __name__ == "__main__":
    main()
