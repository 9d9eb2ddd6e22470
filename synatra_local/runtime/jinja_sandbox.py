"""A Jinja sandbox with bounds: a model's chat template can neither hang the runtime nor exhaust its memory.

A GGUF's chat template is code from whoever made the file. Jinja's sandbox keeps it from files and Python
internals but not from work: `{% for a in range(99999) %}{% for b in range(99999) %}` never ends, and
`'x' * 300000000` takes 300 MB at once. Like minijinja's fuel and llama.cpp's capped `range()`, this bounds
every render, the load-time probe and each request alike:

* time: every loop iteration, call, attribute lookup, operator and output piece checks a deadline;
* iterations: `range()` draws on a budget for the whole render;
* size: strings and lists the template builds (`*`, `+`, `~`, `%`, filters, method calls, captured blocks, the
  output) stay under a cap, and arguments that say how big a result will be (widths, counts, `replace` and
  `indent` blow-ups, powers) are checked before the work is done, so the cap holds for memory too.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes as nodes
import jinja2.sandbox
from jinja2.compiler import CodeGenerator, Frame

RENDER_SECONDS = 5.0
MAX_CHARS = 32 << 20  # the longest string a template may build (its output included)
MAX_ITEMS = 1 << 20  # the longest list
MAX_BUILT = 256 << 20  # characters and items built in one render, all together: what bounds its memory
MAX_SOURCE_CHARS = 1 << 20  # real chat templates are a few kB
MAX_RANGE = 100_000  # one range() (Jinja's own sandbox limit, which transformers renders under)
RANGE_BUDGET = 1_000_000  # all range() calls of one render together
MAX_POWER_BITS = 1 << 16
MAX_JSON_INDENT = 64
_DIGITS = re.compile(r"\d+")


class RenderLimit(Exception):
    """A template that went past a bound; the message says which."""


@dataclass
class _Budget:
    deadline: float
    seconds: float
    range_left: int = RANGE_BUDGET
    built: int = 0


_budget: ContextVar[_Budget | None] = ContextVar("synatra_template_budget", default=None)


def render(template: jinja2.Template, variables: dict[str, Any], *, seconds: float | None = None) -> str:
    """`template.render(**variables)` within the bounds (RENDER_SECONDS unless `seconds`); RenderLimit past them."""
    seconds = RENDER_SECONDS if seconds is None else seconds
    token = _budget.set(_Budget(time.monotonic() + seconds, seconds))
    try:
        return template.render(**variables)
    finally:
        _budget.reset(token)


def _tick() -> bool:
    budget = _budget.get()
    if budget is not None and time.monotonic() > budget.deadline:
        raise RenderLimit(f"it did not finish within {budget.seconds:g} s")
    return True


def _check_size(size: int, what: str, *, items: bool = False) -> None:
    """A string (or list) about to be built: refused if it would be longer than one may be."""
    limit = MAX_ITEMS if items else MAX_CHARS
    if size > limit:
        raise RenderLimit(f"{what} would be {size:,} {'items' if items else 'characters'} long; the limit is {limit:,}")


def _built(value: Any, what: str) -> Any:
    """A value just built: its length counts against the one-object cap and the render's whole budget."""
    if isinstance(value, str | list | tuple):
        _check_size(len(value), what, items=not isinstance(value, str))
        budget = _budget.get()
        if budget is not None:
            budget.built += len(value)
            if budget.built > MAX_BUILT:
                raise RenderLimit(f"it built more than {MAX_BUILT:,} characters and items in all")
    return value


def _length(value: Any) -> int:
    return len(value) if isinstance(value, str | list | tuple | dict) else 0


def _check_format(spec: str) -> None:
    """Widths and precisions in a `%` or `format` string (`%0999999999d`) say how long the result is."""
    for digits in _DIGITS.findall(spec):
        if len(digits) > 9 or int(digits) > MAX_CHARS:
            raise RenderLimit(f"a format width of {digits} is past the limit of {MAX_CHARS:,}")


def _check_int_arguments(args: Iterable[Any]) -> None:
    for value in args:
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_CHARS:
            raise RenderLimit(f"an argument of {value:,} is past the limit of {MAX_CHARS:,}")


def _check_str_method(receiver: str, name: str, args: tuple[Any, ...]) -> None:
    """What a string method would make, before it makes it (the ones whose output can outgrow their input)."""
    if name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
        old, new = args[0], args[1]
        count = receiver.count(old) if old else len(receiver) + 1
        _check_size(len(receiver) + count * max(len(new) - len(old), 0), "the replaced text")
    elif name == "expandtabs" and args and isinstance(args[0], int):
        _check_size(len(receiver) + receiver.count("\t") * args[0], "the expanded text")
    elif name == "join" and args and isinstance(args[0], list | tuple):
        parts = args[0]
        _check_size(sum(len(str(p)) for p in parts) + len(receiver) * len(parts), "the joined text")
    elif name in ("format", "format_map"):
        _check_format(receiver)


_PASSED = (jinja2.runtime.Context, jinja2.Environment, nodes.EvalContext)


def _checked_filter(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """A filter that checks its arguments first (where they say how big the result is) and its result after."""

    @functools.wraps(function)
    def bounded(*args: Any, **kwargs: Any) -> Any:
        _tick()
        values = [a for a in args if not isinstance(a, _PASSED)]
        options = [*values[1:], *kwargs.values()]
        _check_int_arguments(options)
        value = values[0] if values else None
        if name == "replace" and isinstance(value, str):
            _check_str_method(value, "replace", tuple(values[1:3]))
        elif name == "indent" and isinstance(value, str):
            width = kwargs.get("width", values[1] if len(values) > 1 else 4)
            per_line = len(width) if isinstance(width, str) else int(width)
            _check_size(len(value) + (value.count("\n") + 1) * per_line, "the indented text")
        elif name == "format" and isinstance(value, str):
            _check_format(value)
        elif name == "join" and isinstance(value, list | tuple):
            _check_size(sum(len(str(v)) for v in value), "the joined text")
        elif name == "slice" and any(isinstance(v, int) and v > MAX_RANGE for v in options):
            raise RenderLimit(f"|slice of more than {MAX_RANGE:,} slices")
        elif name == "tojson" and any(isinstance(v, int) and v > MAX_JSON_INDENT for v in options):
            raise RenderLimit(f"|tojson with an indent past {MAX_JSON_INDENT}")
        return _built(function(*args, **kwargs), f"the result of |{name}")

    return bounded


def _bounded_range(*args: int) -> range:
    numbers = range(*args)
    try:
        count = len(numbers)
    except OverflowError:
        count = MAX_RANGE + 1
    if count > MAX_RANGE:
        raise RenderLimit(f"range() of {count:,} numbers is past the limit of {MAX_RANGE:,}")
    budget = _budget.get()
    if budget is not None:
        budget.range_left -= count
        if budget.range_left < 0:
            raise RenderLimit(f"its loops went past {RANGE_BUDGET:,} numbers from range() in all")
    return numbers


def _bounded_concat(parts: Iterable[str]) -> str:
    """Environment.concat: how Jinja joins a block's output (captured blocks, macros, the whole render)."""
    total = 0
    kept = []
    for part in parts:
        _tick()
        total += len(part)
        _check_size(total, "the rendered text")
        kept.append(part)
    return _built("".join(kept), "the rendered text")


def _bounded_join(parts: Iterable[Any]) -> str:
    """The `~` operator."""
    texts = [str(p) for p in parts]
    _check_size(sum(map(len, texts)), "the joined text")
    return _built("".join(texts), "the joined text")


class _BoundedCode(CodeGenerator):
    """Jinja's code generator with a deadline check at the top of every loop iteration, and `~` bounded."""

    def visit_For(self, node: nodes.For, frame: Frame) -> None:
        tick = nodes.Call(nodes.EnvironmentAttribute("tick"), [], [], None, None, lineno=node.lineno)
        test = node.test if node.test is None else nodes.And(tick, node.test, lineno=node.lineno)
        body = [nodes.ExprStmt(tick, lineno=node.lineno), *node.body]
        bounded = nodes.For(node.target, node.iter, body, node.else_, test, node.recursive, lineno=node.lineno)
        super().visit_For(bounded, frame)

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        if frame.eval_ctx.volatile or frame.eval_ctx.autoescape:
            super().visit_Concat(node, frame)
            return
        self.write("environment.join((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class BoundedEnvironment(jinja2.sandbox.ImmutableSandboxedEnvironment):
    """transformers' sandbox (immutable, no files, `loopcontrols`), with the bounds of this module."""

    code_generator_class = _BoundedCode
    intercepted_binops = frozenset({"+", "*", "**", "%"})
    concat = staticmethod(_bounded_concat)  # type: ignore[assignment]
    join = staticmethod(_bounded_join)
    tick = staticmethod(_tick)

    def __init__(self) -> None:
        super().__init__(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
        self.filters = {name: _checked_filter(name, f) for name, f in self.filters.items()}
        self.globals["range"] = _bounded_range
        del self.globals["lipsum"]  # paragraphs of lorem ipsum by the million, in pure Python: no template needs it

    def add_filter(self, name: str, function: Callable[..., Any]) -> None:
        self.filters[name] = _checked_filter(name, function)

    def compile_source(self, source: str) -> jinja2.Template:
        """`from_string` for a template of bounded size."""
        if len(source) > MAX_SOURCE_CHARS:
            raise RenderLimit(f"the template is {len(source):,} characters long; the limit is {MAX_SOURCE_CHARS:,}")
        return self.from_string(source)

    def call_binop(self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any) -> Any:
        _tick()
        if operator == "*":
            for sequence, times in ((left, right), (right, left)):
                if isinstance(sequence, str | list | tuple) and isinstance(times, int):
                    _check_size(len(sequence) * times, "the repeated text", items=not isinstance(sequence, str))
            if isinstance(left, int) and isinstance(right, int):
                _check_bits(left.bit_length() + right.bit_length())
        elif operator == "**" and isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and right > 0:
            _check_bits(right * abs(left).bit_length())
        elif operator == "+":
            _check_size(_length(left) + _length(right), "the joined text", items=not isinstance(left, str))
        elif operator == "%" and isinstance(left, str):
            _check_format(left)
        return _built(super().call_binop(context, operator, left, right), f"the result of {operator}")

    def call(__self, __context: jinja2.runtime.Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        _tick()
        _check_int_arguments([*args, *kwargs.values()])
        method = getattr(__obj, "__wrapped__", __obj)  # the sandbox wraps str.format in a function
        receiver = getattr(method, "__self__", None)
        if isinstance(receiver, str):
            _check_str_method(receiver, getattr(method, "__name__", ""), args)
        return _built(super().call(__context, __obj, *args, **kwargs), "a call's result")

    def getattr(self, obj: Any, attribute: str) -> Any:
        _tick()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        _tick()
        return super().getitem(obj, argument)


def _check_bits(bits: int) -> None:
    if bits > MAX_POWER_BITS:
        raise RenderLimit(f"a number of {bits:,} bits is past the limit of {MAX_POWER_BITS:,}")
