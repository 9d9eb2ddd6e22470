"""Hostile chat templates end within seconds with a clear error; ordinary ones render exactly as before."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from synatra_local.runtime import jinja_sandbox
from synatra_local.runtime.templates import ChatTemplateError, ChatTemplateLimitError, jinja_template

CLI = str(Path(sys.executable).with_name("synatra-local"))
ONE = [{"role": "user", "content": "hi"}]

# what each one would do unbounded: never end, or take gigabytes (each ends here in well under a second, or at the
# deadline, which the fixture below sets to 1 s)
HOSTILE = {
    "nested range loops": "{% for a in range(99999) %}{% for b in range(99999) %}{% endfor %}{% endfor %}x",
    "range past the limit": "{% for a in range(10**9) %}{% endfor %}",
    "nested loops over a long string": "{% set s = 'x' * 100000 %}{% for a in s %}{% for b in s %}{% endfor %}"
                                       "{% endfor %}",
    "a 300 MB string": "{{ 'x' * 300000000 }}",
    "a list of 300 million": "{{ ([0] * 300000000)|length }}",
    "doubling with ~": "{% set ns = namespace(s='x') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}"
                       "{% endfor %}{{ ns.s|length }}",
    "doubling with +": "{% set ns = namespace(s='x') %}{% for i in range(60) %}{% set ns.s = ns.s + ns.s %}"
                       "{% endfor %}",
    "doubling a list": "{% set ns = namespace(s=[1]) %}{% for i in range(60) %}{% set ns.s = ns.s + ns.s %}"
                       "{% endfor %}",
    "a power of millions of digits": "{{ 9 ** (9 ** 9) }}",
    "squaring in a loop": "{% set ns = namespace(n=3) %}{% for i in range(40) %}{% set ns.n = ns.n * ns.n %}"
                          "{% endfor %}",
    "|center of a billion": "{{ 'x'|center(1000000000) }}",
    "str.ljust of a billion": "{{ 'x'.ljust(1000000000) }}",
    "replace('', s)": "{% set s = 'x' * 10000 %}{{ s.replace('', s) }}",
    "|replace('', s)": "{% set s = 'x' * 10000 %}{{ s|replace('', s) }}",
    "|indent of a million lines": "{% set s = '\n' * 1000000 %}{{ s|indent(1000) }}",
    "expandtabs": "{% set s = '\t' * 1000000 %}{{ s.expandtabs(1000) }}",
    "%-format width": "{{ '%0999999999d' % 1 }}",
    "str.format width": "{{ '{:>999999999}'.format(1) }}",
    "|format width": "{{ '%999999999s'|format('x') }}",
    "|slice into 10^8": "{{ [1]|slice(100000000)|list }}",
    "|tojson indent": "{{ messages|tojson(indent=100000) }}",
    "|join of 60 MB": "{% set s = 'x' * 20000000 %}{{ [s, s, s]|join }}",
    "macro call bomb": "{% macro f(n) %}{% if n %}{{ f(n-1) }}{{ f(n-1) }}{% endif %}x{% endmacro %}{{ f(40) }}",
    "endless recursion": "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
    "a captured block without end": "{% set x %}{% for i in range(100000) %}{% for j in range(100000) %}"
                                    "{{ 'abc' * 100 }}{% endfor %}{% endfor %}{% endset %}",
    "many 30 MB strings kept": "{% set ns = namespace(l=[]) %}{% for i in range(1000) %}"
                               "{% set ns.l = ns.l + ['x' * 30000000] %}{% endfor %}",
    "loop filters that never match": "{% set s = 'x' * 30000000 %}{% for c in s if false %}{% endfor %}"
                                     "{% for c in s if false %}{% endfor %}{% for c in s if false %}{% endfor %}",
    "recursive loop": "{% for m in [1] recursive %}{{ loop([1, 1]) }}{% endfor %}",
    "loops over the messages": "{% for k in range(100000) %}{% for j in messages * 1000 %}{{ j.content }}"
                               "{% endfor %}{% endfor %}",
}


@pytest.fixture
def quick_deadline(monkeypatch: pytest.MonkeyPatch) -> float:
    monkeypatch.setattr(jinja_sandbox, "RENDER_SECONDS", 1.0)
    return 1.0


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_template_is_stopped(name: str, quick_deadline: float) -> None:
    started = time.monotonic()
    with pytest.raises(ChatTemplateLimitError) as raised:
        jinja_template(HOSTILE[name], bos_token="<s>", eos_token="</s>", origin="the chat template of evil.gguf")
    elapsed = time.monotonic() - started
    assert elapsed < quick_deadline + 3, f"{name} took {elapsed:.1f} s"
    error = raised.value
    assert error.message.startswith("the chat template of evil.gguf ")
    assert "--template" in (error.fix or "")


def test_hostile_template_is_stopped_at_request_time_too(quick_deadline: float) -> None:
    """A template that renders the load-time probe but not a longer conversation is stopped per request."""
    source = "{% for m in messages %}{% for n in messages %}{% for o in messages %}{% for p in messages %}" \
             "{{ m.content }}{% endfor %}{% endfor %}{% endfor %}{% endfor %}"
    template = jinja_template(source, bos_token="<s>", eos_token="</s>")
    assert template.render(ONE) == "hi"
    long = [{"role": "user", "content": str(i)} for i in range(200)]
    with pytest.raises(ChatTemplateLimitError, match="did not finish within 1 s|built more than"):
        template.render(long)
    assert template.render(ONE) == "hi", "the next request renders again"


def test_template_too_large_or_too_deep_to_compile() -> None:
    with pytest.raises(ChatTemplateLimitError, match="is 2,000,001 characters long; the limit is 1,048,576"):
        jinja_template("x" * 2_000_001, bos_token="<s>", eos_token="</s>")
    with pytest.raises(ChatTemplateLimitError, match="too deeply nested"):
        jinja_template("{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}", bos_token="<s>", eos_token="</s>")


def test_ordinary_template_work_is_not_refused() -> None:
    """Loops over the messages, ranges, joins, formatting and tojson of a real conversation stay well inside."""
    source = (
        "{% for m in messages %}{{ loop.index }}. {{ m.role|upper }}: {{ m.content|trim }}"
        "{% for i in range(3) %}{{ '%02d' % i }}{% endfor %}{{ '{:>4}'.format('|') }}\n{% endfor %}"
        "{{ messages|map(attribute='content')|join(' / ') }} {{ messages|tojson(indent=2)|length }}"
        "{{ ('-' * 80)|center(100) }}{{ 'a b'.replace(' ', '_') }}{{ ('x\ny')|indent(2) }}"
    )
    messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": f" 안녕 {i} " * 200} for i in range(400)]
    template = jinja_template(source, bos_token="<s>", eos_token="</s>")
    started = time.monotonic()
    text = template.render(messages)
    assert time.monotonic() - started < jinja_sandbox.RENDER_SECONDS
    assert text.startswith("1. USER: 안녕 0") and "400. ASSISTANT:" in text


def test_lipsum_is_not_offered() -> None:
    template = jinja_template("{{ lipsum(1000000) }}", bos_token="<s>", eos_token="</s>")  # the probe fails: kept
    with pytest.raises(ChatTemplateError, match="'lipsum' is undefined"):
        template.render(ONE)


def test_a_sandbox_escape_is_still_refused() -> None:
    template = jinja_template("{{ ''.__class__.__mro__[1].__subclasses__() }}", bos_token="<s>", eos_token="</s>")
    with pytest.raises(ChatTemplateError):
        template.render(ONE)


# --- a GGUF carrying a hostile template: refused at load, with the file and the way out -------------------


@pytest.fixture(scope="module")
def hostile_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from synatra_local.convert import convert
    from synatra_local.convert.tiny import build_checkpoint

    root = tmp_path_factory.mktemp("hostile")
    folder = build_checkpoint(root / "Synatra-hostile", version="v0.1", tokenizer_model=None)
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    config["chat_template"] = HOSTILE["nested range loops"]
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return convert(folder, root / "hostile.gguf", outtype="q8_0")


def test_engine_refuses_a_hostile_gguf_template(hostile_gguf: Path, quick_deadline: float) -> None:
    from synatra_local.runtime.engine import Engine

    with pytest.raises(ChatTemplateLimitError) as raised:
        Engine(hostile_gguf, n_ctx=256)
    message = raised.value.message
    assert message.startswith("hostile.gguf: the model's chat template was stopped: ")
    assert "did not finish within 1 s" in message or "loops went past 1,000,000 numbers from range()" in message
    engine = Engine(hostile_gguf, n_ctx=256, template="synatra-v0.1")  # the fix it names works
    assert engine.prompt_tokens(ONE)[0] == 1
    engine.close()


def test_cli_refuses_a_hostile_gguf_template_within_seconds(hostile_gguf: Path) -> None:
    started = time.monotonic()
    done = subprocess.run([CLI, "run", str(hostile_gguf), "hi", "-n", "2"], capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - started
    assert done.returncode == 1 and "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert lines[0].startswith("error: hostile.gguf: the model's chat template was stopped: "), lines
    assert "did not finish within 5 s" in lines[0] or "loops went past 1,000,000 numbers from range()" in lines[0]
    assert lines[1].startswith("fix: prompt with a built-in format instead: --template synatra-v0.1")
    assert elapsed < jinja_sandbox.RENDER_SECONDS + 30, "the default deadline, plus loading the model"


def test_a_template_that_hangs_on_a_longer_probe_is_refused_at_load(quick_deadline: float) -> None:
    """The load-time probes that look for a built-in stand-in are bounded too, and a limit there refuses the
    template instead of leaving every longer request to run into it."""
    from synatra_local.runtime.templates import builtin_stand_in

    source = ("{% if messages|length > 1 %}{% for a in 'x' * 100000 %}{% for b in 'x' * 100000 %}{% endfor %}"
              "{% endfor %}{% endif %}{% for m in messages %}{{ m.content }}{% endfor %}")
    template = jinja_template(source, bos_token="<s>", eos_token="</s>")  # one message renders at once
    started = time.monotonic()
    with pytest.raises(ChatTemplateLimitError, match="did not finish within 1 s"):
        builtin_stand_in(template, bos_token="<s>", eos_token="</s>")
    assert time.monotonic() - started < quick_deadline + 3
