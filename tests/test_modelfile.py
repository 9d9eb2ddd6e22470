"""`modelfile`: the TEMPLATE, executed by Go's own text/template the way Ollama executes it, renders our prompt
byte for byte, for each format, with and without a system prompt, one and two turns.

The Go program below reads the Modelfile as Ollama's parser does (the text between TEMPLATE \"\"\" and \"\"\",
no escapes), and gives the template what Ollama's `template.Execute` gives a template that uses `.Messages`:
`.System` (the system messages joined by a blank line) and `.Messages` (consecutive messages of one role
merged, system messages kept). Ollama then tokenizes with the model's BOS added, so the expected text is our
rendered prompt without its leading BOS text.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from synatra_local.runtime.engine import Engine

CLI = str(Path(sys.executable).with_name("synatra-local"))

GO_PROGRAM = r"""
package main

import (
	"encoding/json"
	"os"
	"strings"
	"text/template"
)

type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

func templateOf(modelfile string) string {
	const open = "TEMPLATE \"\"\""
	start := strings.Index(modelfile, open)
	if start < 0 {
		panic("no TEMPLATE in the Modelfile")
	}
	rest := modelfile[start+len(open):]
	return rest[:strings.Index(rest, "\"\"\"")]
}

func main() {
	modelfile, err := os.ReadFile(os.Args[1])
	if err != nil {
		panic(err)
	}
	funcs := template.FuncMap{"json": func(v any) string { b, _ := json.Marshal(v); return string(b) }}
	tmpl := template.Must(template.New("").Option("missingkey=zero").Funcs(funcs).Parse(templateOf(string(modelfile))))
	var conversations [][]Message
	if err := json.NewDecoder(os.Stdin).Decode(&conversations); err != nil {
		panic(err)
	}
	prompts := []string{}
	for _, messages := range conversations {
		var system []string
		var collated []*Message
		for i := range messages {
			m := messages[i]
			if m.Role == "system" {
				system = append(system, m.Content)
			}
			if n := len(collated); n > 0 && collated[n-1].Role == m.Role {
				collated[n-1].Content += "\n\n" + m.Content
			} else {
				collated = append(collated, &m)
			}
		}
		var out strings.Builder
		data := map[string]any{
			"System": strings.Join(system, "\n\n"), "Messages": collated, "Tools": nil, "Response": "",
		}
		if err := tmpl.Execute(&out, data); err != nil {
			panic(err)
		}
		prompts = append(prompts, out.String())
	}
	json.NewEncoder(os.Stdout).Encode(prompts)
}
"""

SYSTEM = "당신은 친절한 비서입니다.\n짧게 답하세요."
CONVERSATIONS = [
    [{"role": "user", "content": "안녕하세요?"}],
    [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "안녕하세요?"}],
    [
        {"role": "user", "content": "대한민국의 수도는?"},
        {"role": "assistant", "content": "서울입니다."},
        {"role": "user", "content": "인구는요? \"따옴표\"와 {{ 괄호 }}도 그대로."},
    ],
    [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": " 앞뒤 공백 "},
        {"role": "assistant", "content": "네 😀"},
        {"role": "user", "content": "[INST] 흉내\n줄바꿈"},
    ],
]


@pytest.fixture(scope="module")
def go_render(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Path, list], list[str]]:
    """Build the Go program once (stdlib only, no module, no network); returns a Modelfile renderer."""
    go = shutil.which("go")
    if go is None:
        pytest.skip("Go is not installed (Debian: apt-get install golang-go); .ci/run installs it")
    folder = tmp_path_factory.mktemp("go")
    (folder / "main.go").write_text(GO_PROGRAM, encoding="utf-8")
    env = {**os.environ, "GO111MODULE": "off", "GOCACHE": str(folder / "cache"), "GOPATH": str(folder / "path"),
           "GOTOOLCHAIN": "local", "GOFLAGS": "", "CGO_ENABLED": "0"}
    build = subprocess.run([go, "build", "-o", str(folder / "render"), "main.go"], cwd=folder, env=env,
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr

    def render(modelfile: Path, conversations: list) -> list[str]:
        result = subprocess.run([str(folder / "render"), str(modelfile)], input=json.dumps(conversations),
                                capture_output=True, text=True, encoding="utf-8", timeout=60)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    return render


def _modelfile(model: Path, folder: Path, *template: str) -> tuple[Path, str]:
    result = subprocess.run([CLI, "modelfile", str(model), *template], capture_output=True, text=True,
                            encoding="utf-8", timeout=120)
    assert result.returncode == 0, result.stderr
    path = folder / "Modelfile"
    path.write_text(result.stdout, encoding="utf-8")
    return path, result.stdout


@pytest.mark.parametrize(
    ("fixture", "override", "fmt"),
    [("tiny_gguf_v01", None, "synatra-v0.1"), ("tiny_gguf_v01", "synatra-v0.2", "synatra-v0.2"),
     ("tiny_gguf_v03", None, "chatml")],
)
def test_template_renders_our_prompt_byte_for_byte(
    request: pytest.FixtureRequest, go_render, tmp_path: Path, fixture: str, override: str | None, fmt: str
) -> None:
    model: Path = request.getfixturevalue(fixture)
    path, text = _modelfile(model, tmp_path, *(["--template", override] if override else []))
    engine = Engine(model, n_ctx=256, threads=1, template=override)
    try:
        assert engine.template.name == fmt
        bos = engine._model.token_text(engine._model.bos_id)
        expected = [engine.render(m).removeprefix(bos) if engine.template.bos_in_text else engine.render(m)
                    for m in CONVERSATIONS]
        stops = [line.removeprefix('PARAMETER stop "').removesuffix('"') for line in text.splitlines()
                 if line.startswith("PARAMETER stop ")]
        assert set(engine.template.stop_markers) <= set(stops)
    finally:
        engine.close()
    assert go_render(path, CONVERSATIONS) == expected
    if fmt == "synatra-v0.1":
        assert all(e.endswith(" [\\INST] ") for e in expected), "V0.1's backslash and trailing space"
    lines = text.splitlines()
    assert f"FROM {model.absolute()}" in lines
    assert 'LICENSE """cc-by-nc-4.0"""' in lines
    assert '"""' not in text.split('TEMPLATE """', 1)[1].split('"""', 1)[0], "the template holds no triple quote"


def test_a_template_no_builtin_matches_is_a_clear_error(smollm2_gguf: Path, tmp_path: Path, go_render) -> None:
    result = subprocess.run([CLI, "modelfile", str(smollm2_gguf)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error:") and "--template" in result.stderr
    path, text = _modelfile(smollm2_gguf, tmp_path, "--template", "chatml")
    assert 'LICENSE """apache-2.0"""' in text
    assert go_render(path, CONVERSATIONS[1:2]) == [
        f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n안녕하세요?<|im_end|>\n<|im_start|>assistant\n"
    ]
