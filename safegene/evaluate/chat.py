"""Chat templates are untrusted code-like data (a model directory's tokenizer config, a
`--template` file): `render_chat` is the one way they are rendered, in jinja's sandbox with two
bounds the sandbox lacks. Sizes: `*`, `**` and `+` on strings and lists refuse results above
MAX_RENDER_CHARS, and the rendered text is refused above it too. Time: a render that runs longer
than RENDER_SECONDS (nested loops) is stopped. Either is a SafeGeneError naming the template.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

from safegene.errors import SafeGeneError

MAX_RENDER_CHARS = 4_000_000
RENDER_SECONDS = 10.0


class _TooSlow(Exception):
    pass


def _sized(value) -> int | None:
    return len(value) if isinstance(value, (str, bytes, list, tuple)) else None


def _bounded_sandbox():
    """jinja's ImmutableSandboxedEnvironment with size-checked `*`, `**` and `+`."""
    from jinja2.exceptions import SecurityError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class BoundedSandbox(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"*", "**", "+"})

        def call_binop(self, context, operator, left, right):
            if operator == "*":
                for seq, n in ((left, right), (right, left)):
                    size = _sized(seq)
                    if size is not None and isinstance(n, int) and size * n > MAX_RENDER_CHARS:
                        raise SecurityError("a repetition in the chat template is too large")
            elif operator == "**":
                if isinstance(right, int) and abs(right) > 1024:
                    raise SecurityError("a power in the chat template is too large")
            elif operator == "+":
                a, b = _sized(left), _sized(right)
                if a is not None and b is not None and a + b > MAX_RENDER_CHARS:
                    raise SecurityError("a concatenation in the chat template is too large")
            return super().call_binop(context, operator, left, right)

    return BoundedSandbox


def _install_sandbox() -> None:
    """transformers compiles chat templates in `ImmutableSandboxedEnvironment` (a module global
    of transformers.utils.chat_template_utils): the bounded subclass takes its place once."""
    from transformers.utils import chat_template_utils as ctu

    if getattr(ctu, "_safegene_bounded", False):
        return
    if hasattr(ctu, "ImmutableSandboxedEnvironment"):
        ctu.ImmutableSandboxedEnvironment = _bounded_sandbox()
        ctu._compile_jinja_template.cache_clear()
    ctu._safegene_bounded = True


@contextlib.contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    """Raise _TooSlow in the block after `seconds` (main thread only; elsewhere no limit)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise _TooSlow

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def render_chat(tokenizer, messages: list[dict], template: str | None = None, **kw) -> str:
    """`tokenizer.apply_chat_template(messages, tokenize=False, chat_template=template, **kw)`,
    bounded in size and time (see module doc); a template error is a SafeGeneError."""
    _install_sandbox()
    try:
        with _time_limit(RENDER_SECONDS):
            text = tokenizer.apply_chat_template(
                messages, tokenize=False, chat_template=template, **kw
            )
    except _TooSlow:
        raise SafeGeneError(
            f"the chat template took more than {RENDER_SECONDS:g} s to render one prompt"
        ) from None
    except MemoryError:
        raise SafeGeneError("the chat template ran out of memory rendering one prompt") from None
    except SafeGeneError:
        raise
    except Exception as exc:  # jinja2 TemplateError, SecurityError and friends
        raise SafeGeneError(
            f"the chat template failed to render: {type(exc).__name__}: {exc}"
        ) from None
    if not isinstance(text, str) or len(text) > MAX_RENDER_CHARS:
        raise SafeGeneError(f"the chat template rendered more than {MAX_RENDER_CHARS} characters")
    return text
