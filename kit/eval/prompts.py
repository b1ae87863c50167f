"""The prompts file and the template that turns each of its records into a prompt.

A prompts file is JSONL: ``{"id": ..., "text": "...", ...}``, any other keys allowed. A template
is Jinja (``--template FILE``); it sees each record's keys as variables (``{{ text }}``), the
whole record as ``record``, and the field names asked for as ``field_names``. A variable the
record lacks is an error naming the line. The default template asks for one JSON object with
the ``--fields`` names and needs ``text``. Every prompt is rendered before anything is sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kit.errors import KitError
from kit.eval.records import Id, read_records

SHAPE = '{"id": ..., "text": "...", ...}'

DEFAULT_TEMPLATE = """\
Extract these fields from the text below: {{ field_names | join(", ") }}.
Answer with one JSON object and nothing else, with exactly these keys: {{ field_names | tojson }}.
Each value is a string, a list of strings when the text gives several, or null when the text does not say.

Text:
{{ text }}"""


@dataclass(frozen=True)
class Prompt:
    id: Id
    line: int
    text: str


def load_template(path: Path | None):
    import jinja2

    env = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=False)
    if path is None:
        return env.from_string(DEFAULT_TEMPLATE)
    try:
        source = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise KitError(f"--template {path}: cannot read it ({getattr(e, 'strerror', None) or 'not UTF-8 text'})") from None
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise KitError(f"{path}:{e.lineno}: template syntax error: {e.message}") from None


def build_prompts(prompts_path: Path, template_path: Path | None, field_names: list[str]) -> list[Prompt]:
    """Every record of the prompts file rendered through the template, in file order."""
    import jinja2

    if template_path is None and not field_names:
        raise KitError("--fields: name the fields to extract (e.g. --fields name,date), or give --template")
    template = load_template(template_path)
    shown = template_path or "the default prompt"
    out = []
    for record in read_records(prompts_path, "--prompts", SHAPE):
        if template_path is None and not isinstance(record.data.get("text"), str):
            raise KitError(f"{prompts_path}:{record.line}: the default prompt needs \"text\" (a string); "
                           f"each line is {SHAPE}, or give --template")
        try:
            text = template.render({**record.data, "record": record.data, "field_names": list(field_names)})
        except jinja2.UndefinedError as e:
            raise KitError(f"{prompts_path}:{record.line}: {shown}: {e.message} (the record's keys: "
                           f"{', '.join(record.data)})") from None
        except jinja2.TemplateError as e:
            raise KitError(f"{prompts_path}:{record.line}: {shown}: {e}") from None
        out.append(Prompt(record.id, record.line, text))
    return out


def messages(prompt: Prompt, system: str | None) -> list[dict]:
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt.text}]
