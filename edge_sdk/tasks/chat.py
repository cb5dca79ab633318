"""Chat templates on the device: the model's own Jinja template, rendered as transformers renders it
(sandboxed, ``trim_blocks``/``lstrip_blocks``, ``raise_exception``, ``tojson``, ``strftime_now``), so a
prompt on the device is tokenized exactly as the model was trained to read it."""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from typing import Any

from edge_sdk.errors import BundleError, DataError


@lru_cache(maxsize=4)
def _compiled(template: str):
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None,
               sort_keys: bool = False) -> str:
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                extensions=["jinja2.ext.loopcontrols"])
    environment.filters["tojson"] = tojson
    environment.globals["raise_exception"] = raise_exception
    environment.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return environment.from_string(template)
    except jinja2.exceptions.TemplateSyntaxError as exc:
        raise BundleError(f"the bundle's chat template does not parse (line {exc.lineno}: {exc.message}); "
                          "rebuild the bundle from a tokenizer with a valid chat_template") from exc


def render_chat(template: str, messages: list[dict[str, str]], add_generation_prompt: bool,
                special_tokens: dict[str, str | None]) -> str:
    """The conversation ``messages`` as the model's prompt text."""
    import jinja2

    try:
        return _compiled(template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                          **{k: v for k, v in special_tokens.items() if v is not None})
    except jinja2.exceptions.TemplateError as exc:
        raise DataError(f"the bundle's chat template refused the conversation: {exc}") from exc
