"""A fake OpenAI-compatible chat server on 127.0.0.1 (no network) for the judge tests."""
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from dlm_bench.judge.client import PREFLIGHT_PROMPT


class FakeServer:
    """OpenAI-compatible /v1/chat/completions on 127.0.0.1. `reply(body)` returns
    (http_status, assistant_text); every request body is recorded. The judge's preflight request
    is answered apart: recorded in `preflights`, answered with `preflight_status` ("OK" on 200)."""

    def __init__(self, reply, preflight_status: int = 200):
        self.reply, self.requests, self.preflights = reply, [], []
        self.preflight_status = preflight_status
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if body["messages"][-1]["content"] == PREFLIGHT_PROMPT:
                    outer.preflights.append(body)
                    status, text = outer.preflight_status, "OK"
                else:
                    outer.requests.append(body)
                    status, text = outer.reply(body)
                if status == 200:
                    payload = {"id": "x", "object": "chat.completion", "created": 0,
                               "model": body["model"], "choices": [{
                                   "index": 0, "finish_reason": "stop",
                                   "message": {"role": "assistant", "content": text}}],
                               "usage": {"prompt_tokens": 1, "completion_tokens": 1,
                                         "total_tokens": 2}}
                else:
                    payload = {"error": {"message": text, "type": "invalid_request_error"}}
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                try:
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test): nothing to answer

            def log_message(self, *args):  # keep pytest output clean
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads, self.httpd.block_on_close = True, False  # slow replies don't block teardown
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
