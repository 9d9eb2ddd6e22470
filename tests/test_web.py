"""The chat page (server/web.py): its routes, headers and the key guard over HTTP; then a real headless Chromium
(Debian's `chromium` and `chromium-driver`, driven by Selenium with both paths given, so that nothing is downloaded)
against a live server on loopback with a tiny model: Korean typed through real IME composition events, streaming,
stop, regenerate, edit, reload, hostile model output.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from synatra_local.runtime.engine import Engine  # noqa: E402
from synatra_local.server.app import create_app  # noqa: E402
from synatra_local.server.run import BackgroundServer  # noqa: E402
from synatra_local.server.web import CSP, WEB_ROOT, static_files  # noqa: E402

MODEL_ID = "synatra-tiny"
KEY = "sk-web-test"
ROOT = Path(__file__).resolve().parent.parent
VENDOR = WEB_ROOT / "vendor"


@pytest.fixture(scope="module")
def engine(tiny_gguf_v01: Path) -> Iterator[Engine]:
    # busy="error": a generation the page failed to cancel would make the next request fail with a 503
    engine = Engine(tiny_gguf_v01, n_ctx=4096, busy="error")
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def served(engine: Engine) -> Iterator[BackgroundServer]:
    with BackgroundServer(create_app(engine, model_id=MODEL_ID)) as server:
        yield server


@pytest.fixture(scope="module")
def guarded(engine: Engine) -> Iterator[BackgroundServer]:
    with BackgroundServer(create_app(engine, model_id=MODEL_ID, api_key=KEY)) as server:
        yield server


# -- over HTTP -------------------------------------------------------------------------------------------------


def test_the_page_and_its_files_need_no_key_the_api_does(guarded: BackgroundServer) -> None:
    page = httpx.get(f"{guarded.url}/")
    assert page.status_code == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.headers["content-security-policy"] == CSP
    assert page.headers["x-content-type-options"] == "nosniff"
    assert '<script type="module" src="/web/app.js">' in page.text
    for name, kind in [("app.js", "text/javascript"), ("vendor/purify.es.mjs", "text/javascript"),
                       ("style.css", "text/css"), ("icon.svg", "image/svg+xml")]:
        response = httpx.get(f"{guarded.url}/web/{name}")
        assert response.status_code == 200 and response.headers["content-type"].startswith(kind), name
        assert response.headers["content-security-policy"] == CSP
        assert response.content == (WEB_ROOT / name).read_bytes()
    assert httpx.get(f"{guarded.url}/v1/models").status_code == 401
    assert httpx.post(f"{guarded.url}/v1/chat/completions", json={"messages": []}).status_code == 401
    assert httpx.get(f"{guarded.url}/v1/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert httpx.get(f"{guarded.url}/docs").status_code == 401  # only the page is open, not every other path


def test_only_listed_files_are_served(served: BackgroundServer) -> None:
    for path in ["/web/nothing.js", "/web/vendor/fetch.sh", "/web/vendor/SHA256SUMS", "/web/%2e%2e/web.py",
                 "/web/..%2fweb.py", "/web/%2fetc/passwd"]:
        response = httpx.get(served.url + path)
        assert response.status_code == 404, path
        assert response.json()["error"]["message"]
    assert "web.py" not in static_files() and "vendor/fetch.sh" not in static_files()


def test_no_web(engine: Engine) -> None:
    with BackgroundServer(create_app(engine, model_id=MODEL_ID, web=False)) as server:
        assert httpx.get(f"{server.url}/").status_code == 404
        assert httpx.get(f"{server.url}/web/app.js").status_code == 404
        assert httpx.get(f"{server.url}/v1/models").status_code == 200


def test_the_policy_is_strict_and_the_page_keeps_to_it() -> None:
    directives = dict(part.strip().split(" ", 1) for part in CSP.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == "'self'" and directives["style-src"] == "'self'"
    assert directives["connect-src"] == "'self'" and directives["img-src"] == "'self' data:"
    assert directives["frame-ancestors"] == "'none'" and directives["form-action"] == "'none'"
    assert "unsafe" not in CSP and "http" not in CSP and "*" not in CSP

    class Inline(HTMLParser):
        problems: list[str] = []

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            names = {name for name, _ in attrs}
            if tag == "script" and "src" not in names or tag == "style":
                self.problems.append(f"inline <{tag}>")
            self.problems += [f"{tag} {name}=" for name in names if name == "style" or name.startswith("on")]

    parser = Inline()
    parser.feed((WEB_ROOT / "index.html").read_text(encoding="utf-8"))
    assert parser.problems == []
    ours = [path for name, path in static_files().items() if name.endswith(".js") and not name.startswith("vendor/")]
    assert {p.name for p in ours} == {"app.js", "api.js", "markdown.js", "store.js", "theme.js"}
    for path in ours:  # our own code never parses strings as HTML or code: text goes in as text
        code = path.read_text(encoding="utf-8")
        for risky in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
            assert risky not in code, f"{path.name} uses {risky}"


def test_vendored_libraries_match_their_pins() -> None:
    sums = dict(reversed(line.split("  ", 1)) for line in (VENDOR / "SHA256SUMS").read_text().splitlines())
    assert set(sums) == {"marked.esm.js", "purify.es.mjs", "LICENSE.marked", "LICENSE.dompurify",
                         "LICENSE-MPL.dompurify"}
    for name, digest in sums.items():
        assert hashlib.sha256((VENDOR / name).read_bytes()).hexdigest() == digest, name
    script = (VENDOR / "fetch.sh").read_text()
    assert re.search(r"^fetch marked 18\.3\.0 [0-9a-f]{64} ", script, re.M)
    assert re.search(r"^fetch dompurify 3\.5\.0 [0-9a-f]{64} ", script, re.M)
    assert "marked v18.3.0" in (VENDOR / "marked.esm.js").read_text()[:200]
    assert "(MIT License)" in (VENDOR / "marked.esm.js").read_text()[:300]


def test_every_file_of_the_page_is_package_data() -> None:
    tomllib = pytest.importorskip("tomllib")
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    patterns = data["synatra_local.server"]
    files = [p.relative_to(WEB_ROOT.parent).as_posix() for p in WEB_ROOT.rglob("*") if p.is_file()]
    # setuptools' `*` stays within one folder
    shipped = [f for f in files if any(fnmatch.fnmatch(f, p) and f.count("/") == p.count("/") for p in patterns)]
    assert shipped == files
    # every module the page imports is there
    for path in WEB_ROOT.glob("*.js"):
        for name in re.findall(r'from "\./([^"]+)"', path.read_text(encoding="utf-8")):
            assert name in static_files(), f"{path.name} imports a missing {name}"


def _wait_for_line(process: subprocess.Popen[str], pattern: str, timeout: float = 60) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    assert process.stderr is not None
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line and process.poll() is not None:
            break
        if found := re.search(pattern, line):
            return found
    raise AssertionError(f"no line matching {pattern!r}")


def _interrupt(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        raise


def test_chat_web_opens_the_browser_and_serve_no_web(tiny_gguf_v01: Path, tmp_path: Path) -> None:
    opened = tmp_path / "opened.txt"
    browser = tmp_path / "browser"  # what `webbrowser` runs (BROWSER): it records the URL it was given
    browser.write_text(f'#!/bin/sh\nprintf %s "$1" > {opened}\n')
    browser.chmod(0o755)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "BROWSER": str(browser)}
    argv = [sys.executable, "-m", "synatra_local", "chat", str(tiny_gguf_v01), "--ctx", "512", "--web"]
    process = subprocess.Popen(argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                               env=env, text=True)
    try:
        url = _wait_for_line(process, r"chat page: (http://127\.0\.0\.1:\d+/)").group(1)
        deadline = time.monotonic() + 20
        while not opened.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert opened.read_text() == url
        page = httpx.get(url)
        assert page.status_code == 200 and page.headers["content-security-policy"] == CSP
        assert httpx.get(f"{url}v1/models").json()["data"][0]["id"] == tiny_gguf_v01.stem
    finally:
        _interrupt(process)
    assert process.returncode in (0, 130)

    argv = [sys.executable, "-m", "synatra_local", "serve", str(tiny_gguf_v01), "--port", "0", "--ctx", "512",
            "--no-web"]
    process = subprocess.Popen(argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env, text=True)
    try:
        url = _wait_for_line(process, r"on (http://127\.0\.0\.1:\d+)").group(1)
        assert httpx.get(f"{url}/").status_code == 404
        assert httpx.get(f"{url}/v1/models").status_code == 200
    finally:
        _interrupt(process)


# -- in a real browser -----------------------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager, should anything call it, must not download
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,860",
                     "--lang=ko-KR", "--disable-gpu", "--no-first-run", "--disable-extensions"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    browser = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    browser.set_script_timeout(30)
    yield browser
    browser.quit()


def wait_for(check: Callable[[], Any], timeout: float = 30, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        time.sleep(0.02)


def console_errors(driver: Any) -> list[dict]:
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def open_page(driver: Any, url: str, settings: dict | None = None, conversations: list | None = None) -> None:
    """The page with a clean browser storage (plus the given settings and conversations), connected."""
    driver.get(f"{url}/")
    driver.execute_script("localStorage.clear()")
    if settings is not None:
        driver.execute_script("localStorage.setItem('synatra.settings', arguments[0])", json.dumps(settings))
    if conversations is not None:
        driver.execute_script("localStorage.setItem('synatra.conversations.v1', arguments[0])",
                              json.dumps(conversations))
    driver.refresh()
    wait_for(lambda: driver.find_element("id", "model").text == MODEL_ID, what="the model name")


def js(driver: Any, script: str, *args: Any) -> Any:
    return driver.execute_script(script, *args)


def stored(driver: Any) -> list[dict]:
    return json.loads(js(driver, "return localStorage.getItem('synatra.conversations.v1')") or "[]")


def texts(driver: Any, selector: str) -> list[str]:
    return js(driver, "return [...document.querySelectorAll(arguments[0])].map(e => e.textContent)", selector)


def key(driver: Any, kind: str, **fields: Any) -> None:
    enter = {"key": "Enter", "code": "Enter", "windowsVirtualKeyCode": 13, "nativeVirtualKeyCode": 13}
    driver.execute_cdp_cmd("Input.dispatchKeyEvent", {"type": kind, **enter, **fields})


def press_enter(driver: Any, modifiers: int = 0) -> None:
    key(driver, "keyDown", text="\r", unmodifiedText="\r", modifiers=modifiers)
    key(driver, "keyUp", modifiers=modifiers)


def compose(driver: Any, steps: list[str], enter_while_composing: bool = False) -> None:
    """Type as a Korean IME does: the syllable being built is a composition (ㅎ → 하 → 한), then committed."""
    for text in steps:
        driver.execute_cdp_cmd("Input.imeSetComposition", {"text": text, "selectionStart": len(text),
                                                           "selectionEnd": len(text)})
    if enter_while_composing:  # the Enter that ends the composition; the IME commits the syllable
        key(driver, "rawKeyDown")
        key(driver, "keyUp")
    driver.execute_cdp_cmd("Input.insertText", {"text": steps[-1]})


def idle(driver: Any, timeout: float = 60) -> None:
    """Until no reply streams: the stop button hidden, the send button back."""
    wait_for(lambda: js(driver, "return document.getElementById('stop').hidden && "
                                "!document.querySelector('.msg.streaming')"), timeout, "the reply to end")


def test_page_loads_clean(driver: Any, served: BackgroundServer) -> None:
    open_page(driver, served.url)
    assert console_errors(driver) == []
    assert driver.title == "synatra-local"
    assert js(driver, "return document.querySelector('.empty .hello').textContent") == "무엇이든 물어보세요."
    font = js(driver, "return getComputedStyle(document.body).fontFamily")
    assert "Apple SD Gothic Neo" in font and "Malgun Gothic" in font and "Noto Sans KR" in font


def test_korean_ime_enter_streaming_and_exact_text(driver: Any, served: BackgroundServer) -> None:
    open_page(driver, served.url, settings={"system": "", "temperature": 0, "maxTokens": 120})
    js(driver, """
        window.__keys = [];
        document.getElementById('input').addEventListener('keydown',
            e => window.__keys.push([e.key, e.isComposing, e.keyCode]), true);""")
    driver.find_element("id", "input").click()
    compose(driver, ["ㅎ", "하", "한"], enter_while_composing=True)
    compose(driver, ["ㄱ", "구", "국"], enter_while_composing=True)
    compose(driver, ["ㅇ", "어"], enter_while_composing=True)
    assert js(driver, "return window.__keys.filter(k => k[0] === 'Enter' && k[1]).length") == 3, \
        "the Enter pressed while composing reached the page as a composing keydown"
    assert texts(driver, ".msg") == [], "an Enter that ends a composition must not send"
    assert js(driver, "return document.getElementById('input').value") == "한국어"
    press_enter(driver, modifiers=8)  # Shift+Enter: a new line, nothing sent
    compose(driver, ["ㅈ", "지", "질"])
    compose(driver, ["ㅁ", "무", "문"])
    assert js(driver, "return document.getElementById('input').value") == "한국어\n질문"
    assert texts(driver, ".msg") == []
    js(driver, """
        window.__lengths = [];
        new MutationObserver(() => {
            const body = document.querySelector('.msg.assistant.streaming .body');
            if (body) window.__lengths.push(body.textContent.length);
        }).observe(document.getElementById('messages'), {childList: true, subtree: true, characterData: true});""")
    press_enter(driver)
    seen = []  # observations from here, as the reply streams
    while js(driver, "return !!document.querySelector('.msg.streaming')") or not seen:
        seen.append(len(js(driver, "return document.querySelector('.msg.assistant .body')?.textContent || ''")))
        time.sleep(0.03)
    idle(driver)
    assert texts(driver, ".msg.user .body") == ["한국어\n질문"], "sent once, whole, last syllable included"
    lengths = js(driver, "return window.__lengths")
    # (Markdown may shrink the text for a frame, as `**` becomes bold: growth overall, over several frames)
    assert len(set(lengths)) >= 3 and lengths[-1] > lengths[0], f"the reply should grow frame by frame: {lengths}"
    stats = texts(driver, ".msg.assistant .stats")[0]
    assert re.search(r"첫 토큰 \d+\.\d\d초 · \d+\.\d 토큰/초 · \d+ 토큰", stats), stats
    # what the page assembled from the stream is exactly the model's reply
    (conversation,) = stored(driver)
    user, reply = conversation["messages"]
    assert user == {"role": "user", "content": "한국어\n질문"}
    direct = httpx.post(f"{served.url}/v1/chat/completions", timeout=60, json={
        "messages": [user], "temperature": 0, "max_tokens": 120}).json()["choices"][0]["message"]["content"]
    assert reply["content"] == direct and reply["content"]
    assert console_errors(driver) == []


def test_stop_regenerate_edit_reload(driver: Any, served: BackgroundServer) -> None:
    scheduler = served.app.state.scheduler
    open_page(driver, served.url, settings={"system": "", "temperature": 0.7, "maxTokens": 2000})
    cancelled = httpx.get(f"{served.url}/health").json()["cancelled"]
    driver.find_element("id", "input").click()
    driver.execute_cdp_cmd("Input.insertText", {"text": "끝없이 이야기해 주세요"})
    press_enter(driver)
    wait_for(lambda: js(driver, "return document.querySelector('.msg.assistant.streaming .body')?.textContent"),
             what="the first text")
    driver.find_element("id", "stop").click()
    wait_for(lambda: httpx.get(f"{served.url}/health").json()["cancelled"] == cancelled + 1, 15,
             "the server to count the cancelled generation")
    assert scheduler.last_stats.stop_reason == "cancelled" and scheduler.last_stats.generated_tokens < 2000
    idle(driver)
    assert "중지됨" in texts(driver, ".msg.assistant .stats")[0]
    partial = stored(driver)[0]["messages"][1]["content"]
    assert partial and texts(driver, ".msg.assistant .body")[0]

    # max tokens from the settings panel, then regenerate: the server is free again (busy="error": no 503)
    driver.find_element("css selector", "#settings summary").click()
    field = driver.find_element("id", "max-tokens")
    field.clear()
    field.send_keys("12")
    driver.find_element("css selector", ".msg.assistant [data-action=regenerate]").click()
    idle(driver)
    (conversation,) = stored(driver)
    assert len(conversation["messages"]) == 2 and conversation["messages"][1]["content"] != partial
    assert scheduler.last_stats.generated_tokens <= 12
    assert re.search(r"\d+ 토큰", texts(driver, ".msg.assistant .stats")[0])

    # edit the question and send it again: the conversation is cut there
    driver.find_element("css selector", ".msg.user [data-action=edit]").click()
    editor = driver.find_element("css selector", ".msg.user textarea.edit")
    editor.clear()
    editor.click()
    compose(driver, ["ㄷ", "다"])
    driver.execute_cdp_cmd("Input.insertText", {"text": "시 묻습니다"})
    press_enter(driver)
    idle(driver)
    (conversation,) = stored(driver)
    assert [m["role"] for m in conversation["messages"]] == ["user", "assistant"]
    assert conversation["messages"][0]["content"] == "다시 묻습니다"

    # a second conversation, then a reload keeps both
    driver.find_element("id", "new-chat").click()
    driver.find_element("id", "input").click()
    driver.execute_cdp_cmd("Input.insertText", {"text": "두 번째 대화"})
    press_enter(driver)
    idle(driver)
    before = texts(driver, ".msg .body")
    titles = texts(driver, "#conversations .open")
    assert titles == ["두 번째 대화", "다시 묻습니다"]
    driver.refresh()
    wait_for(lambda: texts(driver, ".msg .body") == before, 10, "the conversation after a reload")
    assert texts(driver, "#conversations .open") == titles
    driver.find_element("css selector", "#conversations .open:not([aria-current])").click()
    assert texts(driver, ".msg.user .body") == ["다시 묻습니다"]
    assert console_errors(driver) == []


def test_settings_reach_the_request_and_copy_copies(driver: Any, served: BackgroundServer) -> None:
    from selenium.webdriver.common.keys import Keys

    open_page(driver, served.url)
    driver.find_element("css selector", "#settings summary").click()
    driver.find_element("id", "system").send_keys("간결하게 답해 주세요")
    temperature = driver.find_element("id", "temperature")
    temperature.click()
    temperature.send_keys(Keys.HOME)  # the range's lowest: 0, greedy
    field = driver.find_element("id", "max-tokens")
    field.clear()
    field.send_keys("6")
    driver.refresh()  # the settings are kept
    wait_for(lambda: driver.find_element("id", "model").text == MODEL_ID, what="the model name")
    assert js(driver, "return [system.value, temperature.value, document.getElementById('max-tokens').value]") == [
        "간결하게 답해 주세요", "0", "6"]
    js(driver, """
        window.__bodies = [];
        const fetch = window.fetch;
        window.fetch = (url, init) => {
            if (init && init.body) window.__bodies.push(JSON.parse(init.body));
            return fetch(url, init);
        };""")
    driver.find_element("id", "input").click()
    driver.execute_cdp_cmd("Input.insertText", {"text": "안녕하세요"})
    press_enter(driver)
    idle(driver)
    (body,) = js(driver, "return window.__bodies")
    assert body["messages"] == [{"role": "system", "content": "간결하게 답해 주세요"},
                                {"role": "user", "content": "안녕하세요"}]
    assert (body["temperature"], body["max_tokens"], body["stream"]) == (0, 6, True)
    assert body["stream_options"] == {"include_usage": True} and body["model"] == MODEL_ID
    assert re.search(r"· [1-6] 토큰", texts(driver, ".msg.assistant .stats")[0])

    driver.execute_cdp_cmd("Browser.grantPermissions", {
        "origin": served.url, "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]})
    reply = stored(driver)[0]["messages"][1]["content"]
    driver.find_element("css selector", ".msg.assistant [data-action=copy]").click()
    wait_for(lambda: texts(driver, ".msg.assistant [data-action=copy]") == ["복사됨"], 5, "the copy to be confirmed")
    assert driver.execute_async_script("navigator.clipboard.readText().then(arguments[0])") == reply
    assert console_errors(driver) == []


def test_a_refused_request_gives_the_question_back(driver: Any, served: BackgroundServer) -> None:
    open_page(driver, served.url, settings={"system": "", "temperature": 0.7, "maxTokens": 5000})
    driver.find_element("id", "input").click()
    driver.execute_cdp_cmd("Input.insertText", {"text": "너무 긴 답"})
    press_enter(driver)
    wait_for(lambda: "2048" in driver.find_element("id", "status").text, 10, "the server's reason")
    assert driver.find_element("id", "status").text.startswith("오류: max_tokens is 5000")
    assert js(driver, "return document.getElementById('input').value") == "너무 긴 답"
    assert texts(driver, ".msg") == [] and stored(driver)[0]["messages"] == []
    errors = console_errors(driver)
    assert all("400" in entry["message"] for entry in errors) and len(errors) == 1, errors


HOSTILE = [
    "<img src=x onerror=\"window.__pwned='img'\">",
    "<script>window.__pwned='script'</script>",
    "<svg onload=\"window.__pwned='svg'\"></svg><iframe src=\"http://evil.invalid/\"></iframe>",
    "<style>body{display:none}</style><form action=\"http://evil.invalid/\"><button>x</button></form>",
]


def test_hostile_history_shows_as_text_and_runs_nothing(driver: Any, served: BackgroundServer) -> None:
    reply = "\n\n".join([
        *HOSTILE,
        "**굵게** and `코드`\n\n```python\nprint('안녕')\n```",
        "[js](javascript:window.__pwned='link') [ok](https://example.com/) ![remote](http://evil.invalid/a.png)",
        "<a href=\"javascript:window.__pwned='a'\" class=\"msg\" id=\"input\" style=\"position:fixed\">a</a>",
    ])
    conversation = {"id": "c1", "title": "", "created": 1, "messages": [
        {"role": "user", "content": HOSTILE[0] + "\n" + HOSTILE[1]},
        {"role": "assistant", "content": reply},
    ]}
    open_page(driver, served.url, conversations=[conversation])
    user, answer = texts(driver, ".msg .body")
    assert user == HOSTILE[0] + "\n" + HOSTILE[1]
    for text in HOSTILE:
        assert text in answer, "raw HTML in a reply is shown as text"
    body = ".msg.assistant .body"
    assert js(driver, f"return document.querySelector('{body} strong').textContent") == "굵게"
    assert js(driver, f"return document.querySelector('{body} pre code').textContent") == "print('안녕')\n"
    assert js(driver, f"return document.querySelectorAll('{body} .code > button[data-action=copy-code]').length") == 1
    found = js(driver, """return ['img', 'script', 'svg', 'iframe', 'style', 'form', 'button:not([data-action])',
                                  '[style]', '[class="msg"]', '[id]', '[onerror]', '[onload]']
                                 .filter(s => document.querySelector('#messages ' + s))""")
    assert found == []
    links = js(driver, f"return [...document.querySelectorAll('{body} a')].map(a => [a.textContent, "
                       "a.getAttribute('href'), a.target, a.rel])")
    assert ["ok", "https://example.com/", "_blank", "noopener noreferrer nofollow"] in links
    assert all(href is None or href.startswith("https:") for _, href, _, _ in links)
    for link in driver.find_elements("css selector", f"{body} a:not([href])"):
        link.click()
    assert "[remote]" in answer
    time.sleep(0.3)
    assert js(driver, "return window.__pwned") is None
    resources = js(driver, "return performance.getEntriesByType('resource').map(e => e.name)")
    assert all(name.startswith(served.url + "/") for name in resources), resources
    assert console_errors(driver) == []  # a blocked attempt would be a CSP violation in the console


def test_a_long_reply_keeps_the_page_responsive(driver: Any) -> None:
    """The client alone, against a stand-in for the API that streams a 300,000-character Markdown reply fast.

    Rendering the whole reply takes hundreds of milliseconds; painted incrementally (finished blocks once, in
    bounded steps, the growing one each frame) no task on the page's main thread comes near that while it streams,
    and the page keeps up with a stream far faster than any model.
    """
    import asyncio

    from fastapi import FastAPI
    from fastapi.responses import StreamingResponse

    from synatra_local.server.web import add_web

    block = "## 제목\n\n서울은 **대한민국**의 수도입니다. 한강을 따라 `산책`하기 좋습니다.\n\n- 경복궁\n- 남산\n\n"
    reply = block * (300_000 // len(block))
    sent = threading.Event()
    app = FastAPI()
    add_web(app)

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": MODEL_ID, "object": "model"}]}

    @app.post("/v1/chat/completions")
    async def completions() -> StreamingResponse:
        async def events() -> Any:
            for start in range(0, len(reply), 200):
                piece = {"choices": [{"index": 0, "delta": {"content": reply[start:start + 200]}}]}
                yield f"data: {json.dumps(piece, ensure_ascii=False)}\n\n".encode()
                await asyncio.sleep(0.002)
            sent.set()
            await asyncio.sleep(4)  # time for the page to paint it all while it still streams
            yield b'data: {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}\n\n'
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    with BackgroundServer(app) as server:
        open_page(driver, server.url)
        js(driver, """
            window.__tasks = [];
            new PerformanceObserver(list => list.getEntries().forEach(e => window.__tasks.push(e.duration)))
                .observe({type: 'longtask'});""")
        driver.find_element("id", "input").click()
        driver.execute_cdp_cmd("Input.insertText", {"text": "길게 써 주세요"})
        press_enter(driver)
        assert sent.wait(120)
        time.sleep(3)
        streaming = js(driver, "return window.__tasks.slice()")
        painted = js(driver, "return document.querySelector('.msg.streaming .body').textContent.length")
        # the stream has not ended: a reload now keeps all that arrived (too long to be saved every second, it is
        # saved as the page is left)
        driver.refresh()
        count = len(reply) // len(block)
        wait_for(lambda: len(texts(driver, ".msg.assistant .body li")) == 2 * count, 30, "the whole reply")
        assert stored(driver)[0]["messages"][1]["content"] == reply
        final = js(driver, "return document.querySelector('.msg.assistant .body').textContent.length")
        whole = js(driver, """
            document.querySelector('.msg.assistant .body').replaceChildren(document.createElement('p'));
            return import('/web/markdown.js').then(m => {
                const t = performance.now(); m.renderMarkdown(arguments[0]); return performance.now() - t; });""",
                   reply)
    assert painted > 0.95 * final, "the page keeps up with the stream"
    # here: one whole render ~500 ms; long tasks while streaming at most ~80 ms (up to 1.3 s with whole re-renders)
    assert max(streaming, default=0) < max(150, whole / 3), (streaming, whole)
    assert console_errors(driver) == []


def test_api_key_is_asked_once_and_sent(driver: Any, guarded: BackgroundServer) -> None:
    driver.get(f"{guarded.url}/")
    driver.execute_script("localStorage.clear()")
    driver.refresh()
    wait_for(lambda: js(driver, "return document.getElementById('key-dialog').open"), what="the key dialog")
    driver.find_element("id", "key-input").send_keys(KEY)
    driver.find_element("css selector", "#key-form button[type=submit]").click()
    wait_for(lambda: driver.find_element("id", "model").text == MODEL_ID, what="the model list with the key")
    driver.find_element("id", "input").click()
    driver.execute_cdp_cmd("Input.insertText", {"text": "안녕"})
    press_enter(driver)
    idle(driver)
    assert texts(driver, ".msg.assistant .body")[0] and not texts(driver, ".msg .error")
    driver.refresh()  # the key is kept: no second question
    wait_for(lambda: driver.find_element("id", "model").text == MODEL_ID, what="the model list after a reload")
    assert not js(driver, "return document.getElementById('key-dialog').open")
    errors = console_errors(driver)
    assert all("401" in entry["message"] for entry in errors), errors  # only the first, refused /v1/models


def test_theme_follows_the_toggle(driver: Any, served: BackgroundServer) -> None:
    open_page(driver, served.url)
    background = "return getComputedStyle(document.body).backgroundColor"
    first = js(driver, background)
    driver.find_element("id", "theme").click()
    second = js(driver, background)
    assert second != first
    driver.refresh()
    wait_for(lambda: js(driver, background) == second, 10, "the chosen theme after a reload")
    driver.find_element("id", "theme").click()
    assert js(driver, background) == first
    assert console_errors(driver) == []


def test_screenshot_mid_reply_with_real_weights(driver: Any, smollm2_gguf: Path, tmp_path: Path) -> None:
    """Real weights, SmolLM2-135M-Instruct (greedy): a Korean conversation, photographed while a reply streams.

    It answers the first question whole; the picture is taken once the second reply is well under way. The
    model knows little Korean and answers in English. SYNATRA_LOCAL_WEB_SCREENSHOT=docs/web-chat.png keeps the
    picture (the README's).
    """
    engine = Engine(smollm2_gguf, n_ctx=2048)
    streaming = "return document.querySelector('.msg.streaming .body')?.textContent || ''"
    try:
        with BackgroundServer(create_app(engine, model_id=smollm2_gguf.stem)) as server:
            driver.get(f"{server.url}/")
            driver.execute_script("localStorage.clear()")
            driver.execute_script("localStorage.setItem('synatra.settings', arguments[0])", json.dumps(
                {"system": "", "temperature": 0, "maxTokens": 200}))
            driver.refresh()
            wait_for(lambda: driver.find_element("id", "model").text == smollm2_gguf.stem, what="the model")
            driver.find_element("id", "input").click()
            driver.execute_cdp_cmd("Input.insertText", {"text": "한국의 수도는 어디인가요? What is the capital?"})
            press_enter(driver)
            idle(driver, timeout=120)
            assert "Seoul" in texts(driver, ".msg.assistant .body")[0]
            second = "서울에 대해 더 알려 주세요. Tell me more about Seoul."
            driver.execute_cdp_cmd("Input.insertText", {"text": second})
            press_enter(driver)
            wait_for(lambda: len(js(driver, streaming)) > 120, 180, "a good part of the second reply")
            picture = tmp_path / "web-chat.png"
            driver.save_screenshot(str(picture))
            # the reply may end while the picture is taken (then Stop is hidden): stop it only if it still runs,
            # decided inside the page, where nothing can change between the check and the click
            driver.execute_script("const stop = document.getElementById('stop'); if (!stop.hidden) stop.click()")
            idle(driver)
            assert console_errors(driver) == []
    finally:
        engine.close()
    data = picture.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    if target := os.environ.get("SYNATRA_LOCAL_WEB_SCREENSHOT"):
        shutil.copyfile(picture, target)
