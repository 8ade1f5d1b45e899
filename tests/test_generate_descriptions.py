import json
import re
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from excel.modeling.description_file import load_descriptions
from excel.prep import description_generation as tool
from excel.prep.description_authoring import save_descriptions, validate_descriptions

N = 3


def expected_descriptions(class_key: str, n: int = N) -> list[str]:
    return [f"a clean origami {class_key}. it has visible trait number {index}." for index in range(n)]


class FakeChatServer(ThreadingHTTPServer):
    """Chat-completions endpoint that plays a script of reply kinds, then answers well."""

    daemon_threads = True

    def __init__(self, script):
        super().__init__(("127.0.0.1", 0), FakeChatHandler)
        self.script = list(script)
        self.requests = []
        self.lock = threading.Lock()

    def next_action(self, record):
        with self.lock:
            self.requests.append(record)
            return self.script.pop(0) if self.script else "ok"


class FakeChatHandler(BaseHTTPRequestHandler):
    def log_message(self, format, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body["messages"][-1]["content"]
        class_key = re.search(r"<<(.+?)>>", prompt).group(1)
        n = int(re.search(r"n=(\d+)", prompt).group(1))
        record = {"path": self.path, "auth": self.headers.get("Authorization"), "body": body, "class": class_key}
        action = self.server.next_action(record)
        if action == "slow":
            time.sleep(0.5)
        if action in ("500", "401"):
            self.reply(int(action), b'{"error": {"message": "scripted failure"}}')
        elif action in ("trickle", "trickle_error"):
            message = {"role": "assistant", "content": self.content("ok", class_key, n)}
            payload = json.dumps({"choices": [{"message": message}]}).encode()
            self.reply(200 if action == "trickle" else 503, payload, byte_delay_s=0.02)
        elif action in ("huge", "huge_unannounced"):
            self.reply(200, b" " * (3 * 2**20), announce_length=action == "huge")
        elif action == "malformed":
            self.reply(200, b'{"choices": [{"message": {"no_content": true}}]')
        else:
            message = {"role": "assistant", "content": self.content(action, class_key, n)}
            self.reply(200, json.dumps({"choices": [{"message": message}]}).encode())

    @staticmethod
    def content(action: str, class_key: str, n: int) -> str:
        bodies = [f"It has visible trait number {index}" for index in range(n)]
        if action == "short":
            return f"1. {bodies[0]}."
        if action == "json":
            return "```json\n" + json.dumps(bodies) + "\n```"
        other = "dog" if class_key != "dog" else "cat"
        lines = [*bodies, f"it sleeps next to a {other}.", bodies[0]]
        return "Here they are:\n" + "\n".join(f"{index + 1}. {line}" for index, line in enumerate(lines))

    def reply(self, status: int, payload: bytes, byte_delay_s: float = 0.0, announce_length: bool = True):
        """Send ``payload``; one byte every ``byte_delay_s`` seconds when that is set (a trickling server)."""
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            if announce_length:
                self.send_header("Content-Length", str(len(payload)))
            else:
                self.close_connection = True
            self.end_headers()
            if not byte_delay_s:
                self.wfile.write(payload)
            for index in range(len(payload) if byte_delay_s else 0):
                self.wfile.write(payload[index:index + 1])
                self.wfile.flush()
                time.sleep(byte_delay_s)
        except (BrokenPipeError, ConnectionResetError):
            pass


@pytest.fixture
def start_server(monkeypatch):
    for variable in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    servers = []

    def start(script=()):
        server = FakeChatServer(script)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        servers.append((server, thread))
        return server

    yield start
    for server, thread in servers:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def prompt_file(tmp_path):
    path = tmp_path / "prompt.txt"
    path.write_text("Describe <<{class}>> in n={n} sentences; avoid: {others}.", encoding="utf-8")
    return path


def error_of(call, capsys) -> str:
    """The one stderr line a failing command ends with (exit code 1)."""
    with pytest.raises(SystemExit) as info:
        call()
    assert info.value.code == 1
    return capsys.readouterr().err.strip().splitlines()[-1]


def run_tool(server, prompt_file, out, classes="cat,dog", *extra):
    base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    return tool.main(["--classes", classes, "--out", str(out), "--n", str(N), "--prompt", str(prompt_file),
                      "--base-url", base_url, "--model", "fake-model", "--api-key", "secret",
                      "--retry-delay", "0", "--max-retries", "3", *extra])


def test_retries_server_error_and_malformed_reply_then_writes_valid_file(start_server, prompt_file, tmp_path):
    server = start_server(["500", "malformed"])
    out = tmp_path / "kb" / "descriptions.json"
    assert run_tool(server, prompt_file, out) == 0
    assert [request["class"] for request in server.requests] == ["cat", "cat", "cat", "dog"]
    loaded = load_descriptions(out, ["cat", "dog"], per_class=N)
    assert loaded == {"cat": expected_descriptions("cat"), "dog": expected_descriptions("dog")}
    assert validate_descriptions(loaded, ["cat", "dog"], per_class=N) == []
    assert sorted(path.name for path in out.parent.iterdir()) == ["descriptions.json"]


def test_request_follows_chat_completions_protocol(start_server, prompt_file, tmp_path):
    server = start_server()
    run_tool(server, prompt_file, tmp_path / "out.json", "cat", "--temperature", "0.25")
    (request,) = server.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["auth"] == "Bearer secret"
    assert request["body"]["model"] == "fake-model" and request["body"]["temperature"] == 0.25
    assert request["body"]["messages"][0]["role"] == "system"
    assert request["body"]["messages"][-1] == {"role": "user",
                                               "content": "Describe <<cat>> in n=3 sentences; avoid: (none)."}


def test_prompt_lists_the_other_classes(start_server, prompt_file, tmp_path):
    server = start_server()
    run_tool(server, prompt_file, tmp_path / "out.json", "cat,dog,cow")
    prompts = [request["body"]["messages"][-1]["content"] for request in server.requests]
    assert prompts[1] == "Describe <<dog>> in n=3 sentences; avoid: cat, cow."


def test_timeout_is_retried(start_server, prompt_file, tmp_path):
    server = start_server(["slow"])
    out = tmp_path / "out.json"
    run_tool(server, prompt_file, out, "cat", "--timeout", "0.2")
    assert len(server.requests) == 2
    assert load_descriptions(out, ["cat"], per_class=N)["cat"] == expected_descriptions("cat")


@pytest.mark.parametrize("action,problem", [("trickle", "did not complete its reply within 0.5 s"),
                                            ("trickle_error", "answered HTTP 503: {")])
def test_trickled_reply_hits_the_total_deadline_and_is_retried(start_server, prompt_file, tmp_path, capsys, action,
                                                               problem):
    """A body sent one byte every 20 ms (a few seconds in all) never trips the per-read socket timeout."""
    server = start_server([action])
    out = tmp_path / "out.json"
    start = time.monotonic()
    assert run_tool(server, prompt_file, out, "cat", "--timeout", "0.5") == 0
    assert time.monotonic() - start < 2.5
    assert problem in capsys.readouterr().err
    assert len(server.requests) == 2
    assert load_descriptions(out, ["cat"], per_class=N)["cat"] == expected_descriptions("cat")


@pytest.mark.parametrize("action,problem", [("huge", "announced a 3145728-byte reply, more than the limit"),
                                            ("huge_unannounced", "sent more than the limit of 1048576 bytes")])
def test_oversized_reply_is_refused_and_retried(start_server, prompt_file, tmp_path, capsys, action, problem):
    server = start_server([action])
    out = tmp_path / "out.json"
    assert run_tool(server, prompt_file, out, "cat", "--max-reply-bytes", str(2**20)) == 0
    assert problem in capsys.readouterr().err
    assert len(server.requests) == 2
    assert load_descriptions(out, ["cat"], per_class=N)["cat"] == expected_descriptions("cat")


def test_short_reply_is_topped_up_and_json_reply_parsed(start_server, prompt_file, tmp_path):
    server = start_server(["short", "json"])
    out = tmp_path / "out.json"
    run_tool(server, prompt_file, out, "cat")
    assert len(server.requests) == 2
    assert json.loads(out.read_text(encoding="utf-8")) == {"cat": expected_descriptions("cat")}


def test_resume_skips_complete_classes(start_server, prompt_file, tmp_path):
    out = tmp_path / "out.json"
    kept_cat = [f"a clean origami cat. it has hand-written trait {index}." for index in range(N)]
    save_descriptions({"extra": ["kept as is"], "dog": ["a clean origami dog. only one."], "cat": kept_cat}, out)
    server = start_server()
    run_tool(server, prompt_file, out)
    assert [request["class"] for request in server.requests] == ["dog"]
    content = json.loads(out.read_text(encoding="utf-8"))
    assert list(content) == ["cat", "dog", "extra"]
    assert content == {"cat": kept_cat, "dog": expected_descriptions("dog"), "extra": ["kept as is"]}
    run_tool(server, prompt_file, out)
    assert len(server.requests) == 1


def test_output_is_saved_after_each_class(start_server, prompt_file, tmp_path, capsys):
    server = start_server(["ok", "500", "500", "500", "500"])
    out = tmp_path / "out.json"
    assert re.match(r"error: class 'dog': gave up after 4 attempts.*HTTP 500",
                    error_of(lambda: run_tool(server, prompt_file, out), capsys))
    assert len(server.requests) == 5
    assert json.loads(out.read_text(encoding="utf-8")) == {"cat": expected_descriptions("cat")}


def test_client_error_is_not_retried(start_server, prompt_file, tmp_path, capsys):
    server = start_server(["401"])
    out = tmp_path / "out.json"
    assert re.match(r"error: .*HTTP 401.*OPENAI_API_KEY", error_of(lambda: run_tool(server, prompt_file, out, "cat"), capsys))
    assert len(server.requests) == 1
    assert not out.exists()


def test_missing_api_key_stops_before_any_request(start_server, prompt_file, tmp_path, capsys):
    server = start_server()
    out = tmp_path / "out.json"
    base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    line = error_of(lambda: tool.main(["--dataset", "voc", "--out", str(out), "--prompt", str(prompt_file),
                                       "--base-url", base_url]), capsys)
    assert line.startswith("error: ") and "OPENAI_API_KEY" in line and "--api-key" in line
    assert server.requests == [] and not out.exists()


def test_unreachable_endpoint_gives_clear_error(start_server, prompt_file, tmp_path, capsys):
    server = start_server()
    port = server.server_address[1]
    server.shutdown()
    server.server_close()
    line = error_of(lambda: tool.main(["--classes", "cat", "--out", str(tmp_path / "out.json"), "--prompt",
                                       str(prompt_file), "--base-url", f"http://127.0.0.1:{port}/v1", "--api-key",
                                       "secret", "--max-retries", "1", "--retry-delay", "0", "--timeout", "1"]), capsys)
    assert re.match(r"error: .*cannot reach .*OPENAI_BASE_URL", line)


def test_class_file_and_dataset_lists(tmp_path):
    class_file = tmp_path / "classes.txt"
    class_file.write_text("# pets\ncat\n\ndog\n", encoding="utf-8")
    assert tool.read_class_list(None, str(class_file), None) == ["cat", "dog"]
    assert tool.read_class_list("cat, dog", None, None) == ["cat", "dog"]
    assert tool.read_class_list(None, None, "coco")[:3] == ["person", "bicycle", "car"]
    with pytest.raises(tool.GenerationError, match="more than once"):
        tool.read_class_list("cat,cat", None, None)
    with pytest.raises(tool.GenerationError, match="missing.txt"):
        tool.read_class_list(None, str(tmp_path / "missing.txt"), None)


def test_prompt_template_needs_placeholders(tmp_path):
    path = tmp_path / "prompt.txt"
    path.write_text("Describe {class}.", encoding="utf-8")
    with pytest.raises(tool.GenerationError, match=r"\{n\}"):
        tool.read_prompt_template(path)
    shipped = tool.read_prompt_template(tool.DEFAULT_PROMPT_FILE)
    assert "{others}" in shipped


def test_backoff_doubles_between_attempts(monkeypatch):
    replies = iter(["nothing useful", "still nothing", "1. it has fur.\n2. it has a tail."])
    monkeypatch.setattr(tool, "request_completion", lambda endpoint, prompt: next(replies))
    waits = []
    result = tool.generate_class(None, "prompt", "cat", ["cat"], 2, "a clean origami {}.", 3, 0.5, waits.append)
    assert result == ["a clean origami cat. it has fur.", "a clean origami cat. it has a tail."]
    assert waits == [0.5, 1.0]


def test_ctrl_c_keeps_finished_classes_and_says_how_to_resume(start_server, prompt_file, tmp_path, monkeypatch, capsys):
    server = start_server()
    out = tmp_path / "out.json"
    real_request = tool.request_completion

    def interrupt_on_dog(endpoint, prompt):
        if "<<dog>>" in prompt:
            raise KeyboardInterrupt
        return real_request(endpoint, prompt)

    monkeypatch.setattr(tool, "request_completion", interrupt_on_dog)
    with pytest.raises(SystemExit) as info:
        run_tool(server, prompt_file, out)
    assert info.value.code == 130
    err = capsys.readouterr().err
    assert "interrupted; the classes finished so far are saved in" in err and "error: interrupted (Ctrl-C)" in err
    assert list(load_descriptions(out, ["cat"], per_class=N)) == ["cat"]


def test_negative_retry_delay_is_refused(tmp_path):
    with pytest.raises(SystemExit) as info:
        tool.main(["--classes", "cat", "--out", str(tmp_path / "o.json"), "--retry-delay", "-1"])
    assert info.value.code == 2


def test_the_tool_script_runs_the_package_command_line():
    """tools/generate_descriptions.py is a thin entry point over excel.prep.description_generation."""
    result = subprocess.run([sys.executable, "tools/generate_descriptions.py", "--help"], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert result.returncode == 0 and "--max-reply-bytes" in result.stdout
