"""`synatra-local COMMAND ...`: a lazy dispatcher; each command's module is imported only when it runs."""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "convert": "Convert a Hugging Face checkpoint (folder or repo id) to one GGUF file.",
    "quantize": "Quantize a checkpoint or unquantized GGUF (default Q4_K_M and Q8_0).",
    "eval": "Perplexity and KL-divergence from a reference on Korean text (as llama-perplexity).",
    "imatrix": "Compute an importance matrix on Korean calibration text (for IQ quantizations).",
    "inspect": "Describe a GGUF file: architecture, size, tensor types, template, license.",
    "run": "Answer one prompt, streamed to stdout.",
    "chat": "Chat with a model in the terminal.",
    "serve": "Serve a model over an OpenAI-compatible HTTP API.",
    "pull": "Download a GGUF from the Hugging Face hub (owner/repo:QUANT) into the models folder.",
    "modelfile": "Print an Ollama Modelfile that prompts a GGUF exactly as synatra-local does.",
    "list": "List the models in the models folder, their prompt format and origin.",
    "rm": "Remove a model from the models folder.",
    "doctor": "Show what this machine and build can do (CPU, CUDA offload, VRAM).",
    "demo": "Build a tiny random Synatra-shaped checkpoint, convert, quantize and chat with it.",
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: synatra-local COMMAND [ARGS]...", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, text in COMMANDS.items()]
    lines += ["", "Run `synatra-local COMMAND --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in {"-h", "--help", "help"}:
        print(usage())
        return 0
    if args[0] == "--version":
        from importlib.metadata import version

        print(f"synatra-local {version('synatra-local')}")
        return 0
    name = args[0]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"synatra_local.commands.{name}_cmd")
    return int(module.main(args[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
