"""Chat templates rendered under limits: a template comes with the model's files, and it is code.

`render_chat(tokenizer, messages, add_generation_prompt=...)` gives what
`tokenizer.apply_chat_template(messages, tokenize=False, ...)` gives: the same template,
variables and renderer (transformers' `render_jinja_template`, a jinja2
ImmutableSandboxedEnvironment). It runs in a child process of the calling thread's own, so
a template cannot run unbounded:
- time: a render not answered within `LIMITS.seconds` is killed (the child with it; the
  next render starts a new one) and raises `ChatTemplateError`;
- output: a rendered text over `LIMITS.output_chars` characters is refused;
- memory: the child's address space is limited (`LIMITS.memory_bytes` over what it holds
  after start-up), so `'x' * 10**10` or a filter blowing a string up fails in the child.
`ChatTemplateError` names the chat template and the limit. `set_limits`
sets the limits for the process (the worker does so from its settings).
"""

from __future__ import annotations

import atexit
import json
import os
import selectors
import subprocess
import sys
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TemplateLimits:
    seconds: float = 10.0
    output_chars: int = 1_000_000
    memory_bytes: int = 1 << 30


LIMITS = TemplateLimits()
STARTUP_SECONDS = 120.0  # importing transformers' renderer; not part of a render's limit


class ChatTemplateError(Exception):
    """The tokenizer's chat template failed, or ran past a limit. Not a ValueError on
    purpose: the callers that skip one item that does not fit (a ValueError) must not go
    on to render the same template for every other item."""


def set_limits(limits: TemplateLimits) -> None:
    global LIMITS
    LIMITS = limits


def render_chat(tokenizer: Any, messages: list[dict[str, Any]], *,
                add_generation_prompt: bool = False) -> str:
    """The tokenizer's chat template rendered for one conversation, within `LIMITS`."""
    template = tokenizer.get_chat_template()
    variables = {k: v if isinstance(v, (str, list)) else str(v)
                 for k, v in tokenizer.special_tokens_map.items()}
    request = {"template": template, "messages": messages, "variables": variables,
               "add_generation_prompt": add_generation_prompt}
    return _renderer().render(request, LIMITS)


# The child: imports the renderer, limits its own memory, then answers one JSON line per
# request. It exits when its stdin closes (the parent went away).
_CHILD = r"""
import json, os, resource, sys
from transformers.utils.chat_template_utils import render_jinja_template

def vm_bytes():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0

memory, output = int(sys.argv[1]), int(sys.argv[2])
try:
    limit = vm_bytes() + memory
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
except (OSError, ValueError):
    pass
out = os.fdopen(os.dup(1), "w")  # the answers; anything else printed goes to stderr
os.dup2(2, 1)
out.write('{"ready": true}\n'); out.flush()
for line in sys.stdin:
    try:
        req = json.loads(line)
        (text,), _ = render_jinja_template(
            conversations=[req["messages"]], chat_template=req["template"],
            add_generation_prompt=req["add_generation_prompt"], **req["variables"])
        if len(text) > output:
            answer = {"error": "output", "detail": len(text)}
        else:
            answer = {"text": text}
    except MemoryError:
        answer = {"error": "memory"}
    except RecursionError:
        answer = {"error": "failed", "detail": "RecursionError"}
    except Exception as exc:
        answer = {"error": "failed", "detail": str(exc)[:300] or type(exc).__name__}
    out.write(json.dumps(answer) + "\n"); out.flush()
"""


class _Renderer:
    """One child process, used by one thread at a time."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_with: TemplateLimits | None = None
        self.buffer = b""

    def render(self, request: dict[str, Any], limits: TemplateLimits) -> str:
        if self.proc is None or self.proc.poll() is not None or self.started_with != limits:
            self._start(limits)
        assert self.proc is not None and self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(request).encode() + b"\n")
            self.proc.stdin.flush()
        except OSError:
            self.close()
            raise ChatTemplateError("the chat template renderer stopped") from None
        answer = self._answer(limits.seconds)
        if answer is None:
            self.close()
            raise ChatTemplateError(f"the chat template ran longer than its limit of "
                                    f"{limits.seconds:g} s and was stopped")
        if "text" in answer:
            return str(answer["text"])
        if answer["error"] == "output":
            raise ChatTemplateError(f"the chat template's output ({answer['detail']} "
                                    f"characters) exceeds its limit of {limits.output_chars}")
        if answer["error"] == "memory":
            self.close()  # a child that ran out of memory is not trusted again
            raise ChatTemplateError(f"the chat template needed more than its memory limit "
                                    f"of {limits.memory_bytes} bytes")
        raise ChatTemplateError(f"the chat template failed: {answer.get('detail')}")

    def _start(self, limits: TemplateLimits) -> None:
        self.close()
        self.proc = subprocess.Popen(
            # -P: the working directory is not put on the child's import path
            [sys.executable, "-P", "-c", _CHILD, str(limits.memory_bytes),
             str(limits.output_chars)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            close_fds=True, env=_child_env())
        self.started_with = limits
        if self._answer(STARTUP_SECONDS) != {"ready": True}:
            self.close()
            raise ChatTemplateError("the chat template renderer did not start")

    def _answer(self, seconds: float) -> dict[str, Any] | None:
        """The child's next line, or None when it gives none within `seconds`."""
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + seconds
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in self.buffer:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    return None
                chunk = os.read(fd, 1 << 20)
                if not chunk:  # the child died (killed for memory, or crashed)
                    self.close()
                    raise ChatTemplateError("the chat template renderer died while rendering")
                self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def __del__(self) -> None:
        self.close()

    def close(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            for stream in (self.proc.stdin, self.proc.stdout):
                if stream is not None:
                    stream.close()
        self.proc = None
        self.buffer = b""


def _child_env() -> dict[str, str]:
    """What the child needs to import transformers and tell the time: none of the service's
    settings or credentials are in its memory."""
    keep = ("PATH", "PYTHONPATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "HOME")
    return {k: os.environ[k] for k in keep if k in os.environ} | {"HF_HUB_OFFLINE": "1"}


_local = threading.local()
_all: weakref.WeakSet[_Renderer] = weakref.WeakSet()  # a finished thread's renderer goes
_all_lock = threading.Lock()


def _renderer() -> _Renderer:
    renderer: _Renderer | None = getattr(_local, "renderer", None)
    if renderer is None:
        renderer = _local.renderer = _Renderer()
        with _all_lock:
            _all.add(renderer)
    return renderer


@atexit.register
def _close_all() -> None:
    with _all_lock:
        for r in list(_all):
            r.close()
