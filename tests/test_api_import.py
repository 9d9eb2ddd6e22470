"""The public API imports lazily and the runtime never pulls in the converter, torch or transformers."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import textwrap

HEAVY = ("torch", "transformers", "synatra_local.convert")


def _probe(code: str) -> dict[str, object]:
    # run outside the checkout, whose source tree would shadow an installed (non-editable) package
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120,
        cwd=tempfile.gettempdir(),
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_import_is_light_and_engine_resolves_without_the_converter() -> None:
    found = _probe(
        """
        import json, sys
        import synatra_local
        bare = sorted(m for m in sys.modules if m.startswith("synatra_local."))
        engine = synatra_local.Engine
        names = [synatra_local.GenerationOptions.__name__, synatra_local.Conversation.__name__,
                 synatra_local.SynatraError.__name__, synatra_local.Reply.__name__,
                 synatra_local.GenerationStats.__name__]
        heavy = [m for m in sys.modules if m.split(".")[0] in ("torch", "transformers")
                 or m == "synatra_local.convert" or m.startswith("synatra_local.convert.")]
        print(json.dumps({"engine": engine.__module__ + "." + engine.__qualname__, "bare": bare,
                          "names": names, "heavy": heavy, "llama": "llama_cpp" in sys.modules}))
        """
    )
    assert found["engine"] == "synatra_local.runtime.engine.Engine"
    assert found["names"] == ["GenerationOptions", "Conversation", "SynatraError", "Reply", "GenerationStats"]
    assert found["heavy"] == [], f"the runtime imported {found['heavy']}"
    assert found["bare"] == [], "`import synatra_local` alone imports nothing else"
    assert found["llama"] is True, "resolving Engine loads the runtime"


def test_loading_a_model_does_not_import_the_converter(tiny_gguf_v01) -> None:  # type: ignore[no-untyped-def]
    found = _probe(
        f"""
        import json, sys
        from synatra_local import Engine, GenerationOptions, Conversation
        engine = Engine({str(tiny_gguf_v01)!r}, n_ctx=256)
        text = "".join(Conversation(engine, options=GenerationOptions(max_tokens=3, seed=1)).send("안녕"))
        heavy = [m for m in sys.modules if m.split(".")[0] in ("torch", "transformers")
                 or m == "synatra_local.convert" or m.startswith("synatra_local.convert.")]
        print(json.dumps({{"heavy": heavy, "text": bool(text)}}))
        """
    )
    assert found["heavy"] == []


def test_unknown_attribute() -> None:
    found = _probe(
        """
        import json, synatra_local
        try:
            synatra_local.NoSuchThing
            ok = False
        except AttributeError:
            ok = True
        print(json.dumps({"ok": ok, "all": sorted(synatra_local.__all__)}))
        """
    )
    assert found["ok"] is True
    assert found["all"] == ["Conversation", "Engine", "GenerationOptions", "GenerationStats", "Reply", "SynatraError"]
