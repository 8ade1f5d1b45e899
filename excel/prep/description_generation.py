"""Writing a TSE attribute-description file with an OpenAI-compatible chat-completions endpoint
(the command line of tools/generate_descriptions.py).

For every class the prompt template (``prompts/describe_class.txt`` by default; placeholders
``{class}``, ``{n}`` and optionally ``{others}``) is sent to ``POST {base_url}/chat/completions``.
The reply is parsed, prefixed with the template sentence, lower-cased and de-duplicated;
sentences that name another class of the list are dropped. Failed or short replies are retried
with exponential backoff; so are replies that take longer than ``--timeout`` seconds in all (a
server trickling bytes included) or exceed ``--max-reply-bytes``. The output file is rewritten
atomically after every class, and classes that are already complete in it are skipped, so an
interrupted run resumes.

Examples:
    python tools/generate_descriptions.py --dataset voc --out prompts/voc_descriptions.json
    python tools/generate_descriptions.py --classes "cat,dog" --out work_dirs/pets.json \\
        --base-url http://localhost:8000/v1 --model my-model

Settings: ``--base-url`` or OPENAI_BASE_URL (default https://api.openai.com/v1), ``--model``
or EXCEL_LLM_MODEL (default gpt-4o), ``--api-key`` or OPENAI_API_KEY (required; servers that
ignore keys accept any value).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from tqdm import tqdm

from excel.cli import run_command
from excel.modeling.description_file import read_description_file
from excel.prep.description_authoring import (
    DATASET_CLASS_KEYS,
    DEFAULT_PREFIX_TEMPLATE,
    DESCRIPTIONS_PER_CLASS,
    clean_descriptions,
    description_prefix,
    parse_description_list,
    save_descriptions,
    validate_descriptions,
)
from excel.resources import locate

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_MODEL = "gpt-4o"
DEFAULT_PROMPT_FILE = Path("prompts/describe_class.txt")     # found in the package when not in the current folder
SYSTEM_MESSAGE = (
    "You write short, concrete, visual descriptions of object classes for an image "
    "recognition knowledge base. You follow the requested output format exactly."
)
RETRYABLE_HTTP_STATUS = {408, 409, 425, 429}
DEFAULT_TIMEOUT_S = 120.0               # whole request: connection, headers and the complete body
DEFAULT_MAX_REPLY_BYTES = 2 * 2**20     # a chat completion of a few sentences is a few kB
READ_CHUNK_BYTES = 2**16
ERROR_DETAIL_BYTES = 500                # of an HTTP error body, quoted in the error message


class GenerationError(RuntimeError):
    """Generation cannot go on (bad settings, a refused request, retries exhausted)."""


class RetryableReplyError(RuntimeError):
    """The endpoint failed or answered unusably, but asking again may succeed."""


@dataclass(frozen=True)
class Endpoint:
    """Where and how to reach the chat-completions endpoint."""

    base_url: str
    model: str
    api_key: str
    temperature: float
    timeout_s: float
    max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES


def read_within(stream, deadline: float, limit: int) -> tuple[bytes, str]:
    """Read ``stream`` (anything with ``read1``) in chunks until EOF, ``deadline`` (time.monotonic) or more
    than ``limit`` bytes. Returns the bytes read (at most ``limit``) and why it stopped: "", "deadline"
    or "size". The socket timeout alone would restart with every byte a slow server trickles."""
    body = bytearray()
    while True:
        if time.monotonic() > deadline:
            return bytes(body), "deadline"
        chunk = stream.read1(READ_CHUNK_BYTES)
        if not chunk:
            return bytes(body), ""
        body += chunk
        if len(body) > limit:
            return bytes(body[:limit]), "size"


def read_reply(response: http.client.HTTPResponse, url: str, deadline: float, endpoint: Endpoint) -> bytes:
    """The reply body; RetryableReplyError once the request's deadline passes or the body (announced or
    received) exceeds ``endpoint.max_reply_bytes``."""
    limit = endpoint.max_reply_bytes
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > limit:
        raise RetryableReplyError(f"{url} announced a {int(declared)}-byte reply, more than the limit of {limit} "
                                  f"bytes (--max-reply-bytes)")
    body, stopped = read_within(response, deadline, limit)
    if stopped == "deadline":
        raise RetryableReplyError(f"{url} did not complete its reply within {endpoint.timeout_s:g} s "
                                  f"({len(body)} bytes so far; --timeout)")
    if stopped == "size":
        raise RetryableReplyError(f"{url} sent more than the limit of {limit} bytes (--max-reply-bytes)")
    return body


def request_completion(endpoint: Endpoint, prompt: str) -> str:
    """Send one chat-completions request; return ``choices[0].message.content``.

    The whole request must finish within ``endpoint.timeout_s`` and the reply may hold at most
    ``endpoint.max_reply_bytes``. Raises RetryableReplyError for HTTP 5xx/429, timeouts, oversized
    replies, connection errors and replies without that field, GenerationError for other HTTP errors
    (bad key, unknown model, ...).
    """
    url = endpoint.base_url.rstrip("/") + "/chat/completions"
    body = {
        "model": endpoint.model,
        "messages": [{"role": "system", "content": SYSTEM_MESSAGE},
                     {"role": "user", "content": prompt}],
        "temperature": endpoint.temperature,
    }
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode("utf-8"),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {endpoint.api_key}"},
        method="POST",
    )
    deadline = time.monotonic() + endpoint.timeout_s
    try:
        with urllib.request.build_opener().open(request, timeout=endpoint.timeout_s) as response:
            raw = read_reply(response, url, deadline, endpoint)
    except urllib.error.HTTPError as error:
        detail = read_within(error, deadline, ERROR_DETAIL_BYTES)[0].decode("utf-8", "replace").strip()
        message = f"{url} answered HTTP {error.code}: {detail or error.reason}"
        if error.code >= 500 or error.code in RETRYABLE_HTTP_STATUS:
            raise RetryableReplyError(message) from error
        raise GenerationError(
            f"{message}; check --api-key/OPENAI_API_KEY, --model/EXCEL_LLM_MODEL and "
            f"--base-url/OPENAI_BASE_URL"
        ) from error
    except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as error:
        reason = getattr(error, "reason", error)
        raise RetryableReplyError(
            f"cannot reach {url}: {reason} (check the network connection and --base-url/OPENAI_BASE_URL)"
        ) from error
    try:
        content = json.loads(raw)["choices"][0]["message"]["content"]
    except (ValueError, LookupError, TypeError) as error:
        raise RetryableReplyError(f"{url} sent a reply that is not a chat completion: {raw[:200]!r}") from error
    if not isinstance(content, str):
        raise RetryableReplyError(f"{url} sent a chat completion without text content")
    return content


def render_prompt(template: str, class_key: str, n: int, other_classes: Sequence[str]) -> str:
    """Fill the ``{class}``, ``{n}`` and ``{others}`` placeholders of the prompt template."""
    others = ", ".join(other_classes) if other_classes else "(none)"
    return template.replace("{class}", class_key).replace("{n}", str(n)).replace("{others}", others)


def generate_class(
    endpoint: Endpoint,
    prompt: str,
    class_key: str,
    class_keys: Sequence[str],
    n: int,
    prefix_template: str,
    max_retries: int,
    retry_delay_s: float,
    sleep: Callable[[float], None] = time.sleep,
) -> list[str]:
    """Ask for descriptions of one class until ``n`` usable ones are collected.

    Usable sentences from short replies are kept and topped up by later attempts. Waits
    ``retry_delay_s · 2^attempt`` between attempts; at most ``max_retries`` retries.
    """
    collected: list[str] = []
    problem = ""
    for attempt in range(max_retries + 1):
        if attempt:
            tqdm.write(f"{class_key}: {problem}; retry {attempt}/{max_retries}", file=sys.stderr)
            sleep(retry_delay_s * 2 ** (attempt - 1))
        try:
            candidates = parse_description_list(request_completion(endpoint, prompt))
        except RetryableReplyError as error:
            problem = str(error)
            continue
        collected = clean_descriptions(collected + candidates, class_key, class_keys, prefix_template)
        if len(collected) >= n:
            return collected[:n]
        problem = f"only {len(collected)} of {n} usable descriptions so far"
    raise GenerationError(f"class {class_key!r}: gave up after {max_retries + 1} attempts; last problem: {problem}")


def is_complete(entries: Sequence[str], class_key: str, n: int, prefix_template: str) -> bool:
    """Whether a class of an existing output file already has ``n`` unique prefixed entries."""
    prefix = description_prefix(class_key, prefix_template)
    unique = {" ".join(entry.split()) for entry in entries}
    return len(entries) >= n and len(unique) == len(entries) and all(e.startswith(prefix) for e in entries)


def read_class_list(classes: str | None, class_file: str | None, dataset: str | None) -> list[str]:
    """Class keys from ``--classes a,b``, ``--class-file`` (one per line) or ``--dataset``."""
    if dataset is not None:
        keys = list(DATASET_CLASS_KEYS[dataset])
    elif classes is not None:
        keys = [key.strip() for key in classes.split(",") if key.strip()]
    else:
        path = Path(class_file)
        if not path.is_file():
            raise GenerationError(f"class file {path} does not exist; give a text file with one class per line")
        lines = path.read_text(encoding="utf-8").splitlines()
        keys = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not keys:
        raise GenerationError("the class list is empty; pass --classes, --class-file or --dataset")
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        raise GenerationError(f"the class list names {repeated} more than once")
    return keys


def read_prompt_template(path: Path) -> str:
    """The prompt template; it must contain the ``{class}`` and ``{n}`` placeholders."""
    if not path.is_file():
        raise GenerationError(f"prompt template {path} does not exist; pass --prompt with a text file")
    template = path.read_text(encoding="utf-8")
    missing = [mark for mark in ("{class}", "{n}") if mark not in template]
    if missing:
        raise GenerationError(f"prompt template {path} lacks the placeholder(s) {missing}")
    return template


def endpoint_from_args(args: argparse.Namespace) -> Endpoint:
    """Resolve flags and environment variables; fail early with what to set."""
    api_key = args.api_key or os.environ.get("OPENAI_API_KEY", "")
    if not api_key:
        raise GenerationError(
            "no API key: set the OPENAI_API_KEY environment variable or pass --api-key "
            "(servers that do not check keys accept any value); the endpoint is set with "
            "--base-url or OPENAI_BASE_URL and the model with --model or EXCEL_LLM_MODEL"
        )
    base_url = args.base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
    if not base_url.startswith(("http://", "https://")):
        raise GenerationError(f"base URL {base_url!r} must start with http:// or https://")
    model = args.model or os.environ.get("EXCEL_LLM_MODEL") or DEFAULT_MODEL
    return Endpoint(base_url, model, api_key, args.temperature, args.timeout, args.max_reply_bytes)


def ordered_output(
    class_keys: Sequence[str], done: dict[str, list[str]], existing: dict[str, list[str]]
) -> dict[str, list[str]]:
    """Finished classes in class-list order, then the file's other classes unchanged."""
    output = {key: done[key] for key in class_keys if key in done}
    output.update({key: entries for key, entries in existing.items() if key not in class_keys})
    return output


def generate_file(
    endpoint: Endpoint,
    template: str,
    class_keys: Sequence[str],
    out: Path,
    n: int,
    prefix_template: str,
    max_retries: int,
    retry_delay_s: float,
) -> dict[str, list[str]]:
    """Generate the missing classes of ``out``, saving after each; return the final content."""
    existing = read_description_file(out) if out.exists() else {}
    done = {key: existing[key] for key in class_keys
            if key in existing and is_complete(existing[key], key, n, prefix_template)}
    todo = [key for key in class_keys if key not in done]
    if done:
        tqdm.write(f"{out}: {len(done)} classes already complete, {len(todo)} to generate", file=sys.stderr)
    for key in tqdm(todo, desc="classes", unit="class"):
        others = [other for other in class_keys if other != key]
        prompt = render_prompt(template, key, n, others)
        done[key] = generate_class(endpoint, prompt, key, class_keys, n, prefix_template, max_retries, retry_delay_s)
        save_descriptions(ordered_output(class_keys, done, existing), out)
    return ordered_output(class_keys, done, existing)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--classes", help="comma-separated class keys, e.g. 'cat,dog'")
    source.add_argument("--class-file", help="text file with one class key per line ('#' comments allowed)")
    source.add_argument("--dataset", choices=sorted(DATASET_CLASS_KEYS), help="use the class keys of a dataset")
    parser.add_argument("--out", type=Path, required=True, help="description JSON file to write or resume")
    parser.add_argument("--n", type=int, default=DESCRIPTIONS_PER_CLASS, help="descriptions per class")
    parser.add_argument("--prompt", type=Path, default=DEFAULT_PROMPT_FILE, help="prompt template file")
    parser.add_argument("--prefix-template", default=DEFAULT_PREFIX_TEMPLATE, help="sentence every description starts with")
    parser.add_argument("--base-url", help=f"endpoint base URL (env OPENAI_BASE_URL, default {DEFAULT_BASE_URL})")
    parser.add_argument("--model", help=f"model name (env EXCEL_LLM_MODEL, default {DEFAULT_MODEL})")
    parser.add_argument("--api-key", help="API key (env OPENAI_API_KEY)")
    parser.add_argument("--temperature", type=float, default=0.7, help="sampling temperature")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                        help="seconds one request may take in all, reply body included (retried when exceeded)")
    parser.add_argument("--max-reply-bytes", type=int, default=DEFAULT_MAX_REPLY_BYTES,
                        help="largest reply accepted, in bytes (larger ones are retried)")
    parser.add_argument("--max-retries", type=int, default=5, help="retries per class after a failed attempt")
    parser.add_argument("--retry-delay", type=float, default=2.0, help="first backoff delay in seconds (doubles)")
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error("--n must be at least 1")
    if args.max_retries < 0:
        parser.error("--max-retries must be 0 or more")
    if not args.timeout > 0:
        parser.error("--timeout must be more than 0 seconds")
    if args.max_reply_bytes < 1:
        parser.error("--max-reply-bytes must be at least 1")
    if not args.retry_delay >= 0:
        parser.error("--retry-delay must be 0 or more seconds")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """The command line of ``excel-generate-descriptions`` and tools/generate_descriptions.py; returns the exit
    code (0). Errors end as one line (:func:`excel.cli.run_command`)."""
    args = parse_args(argv)
    return run_command(lambda: generate(args), lambda: args.out.parent,
                       user_errors=(GenerationError, ValueError, OSError))


def generate(args: argparse.Namespace) -> int:
    """Write (or resume) the description file of ``args``; warn about descriptions that break the rules."""
    endpoint = endpoint_from_args(args)
    template = read_prompt_template(locate(args.prompt))
    class_keys = read_class_list(args.classes, args.class_file, args.dataset)
    try:
        descriptions = generate_file(endpoint, template, class_keys, args.out, args.n,
                                     args.prefix_template, args.max_retries, args.retry_delay)
    except KeyboardInterrupt:
        print(f"generate_descriptions: interrupted; the classes finished so far are saved in {args.out}; "
              f"run the same command again to resume", file=sys.stderr)
        raise
    selected = {key: descriptions[key] for key in class_keys}
    for problem in validate_descriptions(selected, class_keys, args.prefix_template, per_class=args.n):
        print(f"warning: {problem}", file=sys.stderr)
    print(f"wrote {len(class_keys)} classes x {args.n} descriptions to {args.out}")
    return 0
