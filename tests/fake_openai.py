"""A scripted OpenAI-compatible chat-completions server on 127.0.0.1 (stdlib only), for tests that
run the real ``openai`` client: every request is recorded, and a ``respond`` function decides each
answer -- a reply text, an HTTP error, a delay, or a malformed body."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Answer:
    text: str | None = None  # the assistant message
    status: int = 200
    error: str = "error"  # message of an error body
    delay: float = 0.0  # seconds before answering
    raw: bytes | None = None  # a body sent as is (malformed answers)
    headers: dict = field(default_factory=dict)


def user_text(body: dict) -> str:
    return "\n".join(m["content"] for m in body["messages"] if m["role"] == "user")


class FakeOpenAI:
    """``respond(n, body) -> Answer``: n is the 0-based index of the request."""

    def __init__(self, respond):
        self.respond = respond
        self.requests: list[dict] = []  # {"body", "headers", "path"} per request, in arrival order
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
                with server.lock:
                    n = len(server.requests)
                    server.requests.append({"body": body, "headers": {k.lower(): v for k, v in self.headers.items()},
                                            "path": self.path})
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    answer = server.respond(n, body)
                    if answer.delay:
                        time.sleep(answer.delay)
                finally:
                    # done before the reply leaves: a client that sends its next request as soon
                    # as it reads this one must not find it still counted (a race on busy machines)
                    with server.lock:
                        server.in_flight -= 1
                try:
                    self._send(answer, body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test)

            def _send(self, answer: Answer, body: dict):
                if answer.raw is not None:
                    payload = answer.raw
                elif answer.status != 200:
                    payload = json.dumps({"error": {"message": answer.error}}).encode()
                else:
                    payload = json.dumps({
                        "id": "chatcmpl-test", "object": "chat.completion", "created": 0,
                        "model": body["model"] + "-served",
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": answer.text}}],
                        "usage": {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14},
                    }).encode()
                self.send_response(answer.status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                for key, value in answer.headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    @property
    def hits(self) -> int:
        return len(self.requests)

    def asked(self) -> list[str]:
        return [user_text(r["body"]) for r in self.requests]
