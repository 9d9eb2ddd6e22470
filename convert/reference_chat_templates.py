"""Jinja chat templates mirroring each built-in Synatra format, in the style of the real HF templates.

The converter writes them into the tiny demo/test checkpoints' tokenizer_config.json, where they stand for
"the checkpoint's own template"; tests render them independently to check the built-in renderers. Like the
built-ins, v0.1 and v0.2 merge an optional leading system message into the first user message with "\\n\\n".
Inside Jinja string literals a backslash must be written as ``\\\\``, hence ``'[\\\\INST]'`` below.
"""

from __future__ import annotations

_ALTERNATION_ERROR = (
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/... "
    "after an optional leading system message') }}"
)


def _inst_template(closing: str) -> str:
    """Mistral-Instruct style template; ``closing`` is the Jinja literal that ends a user turn."""
    return (
        "{% if messages and messages[0]['role'] == 'system' %}"
        "{% set system_message = messages[0]['content'] %}"
        "{% set loop_messages = messages[1:] %}"
        "{% if not loop_messages %}"
        "{{ raise_exception('A system message needs a user message to merge into') }}"
        "{% endif %}"
        "{% else %}"
        "{% set loop_messages = messages %}"
        "{% endif %}"
        "{{ bos_token }}"
        "{% for message in loop_messages %}"
        "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}" + _ALTERNATION_ERROR + "{% endif %}"
        "{% if message['role'] == 'user' %}"
        "{% if loop.first and system_message is defined %}"
        "{{ '[INST] ' + system_message + '\\n\\n' + message['content'] + " + closing + " }}"
        "{% else %}"
        "{{ '[INST] ' + message['content'] + " + closing + " }}"
        "{% endif %}"
        "{% elif message['role'] == 'assistant' %}"
        "{{ message['content'] + eos_token }}"
        "{% else %}"
        "{{ raise_exception('Only user and assistant roles are supported "
        "after an optional system message') }}"
        "{% endif %}"
        "{% endfor %}"
    )


_CHATML = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}"
    "{% if not loop.first %}"
    "{{ raise_exception('Only the first message may be a system message') }}"
    "{% endif %}"
    "{% elif message['role'] in ['user', 'assistant'] %}"
    "{% set offset = 1 if messages[0]['role'] == 'system' else 0 %}"
    "{% if (message['role'] == 'user') != ((loop.index0 - offset) % 2 == 0) %}"
    + _ALTERNATION_ERROR
    + "{% endif %}"
    "{% else %}"
    "{{ raise_exception('Unknown role: ' + message['role']) }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}"
    "{% endif %}"
)

CHAT_TEMPLATES: dict[str, str] = {
    "synatra-v0.1": _inst_template("' [\\\\INST] '"),
    "synatra-v0.2": _inst_template("' [/INST]'"),
    "chatml": _CHATML,
}
