"""Render job scripts from the Jinja templates in templates/ (StrictUndefined: a missing value
is an error, never an empty string; `q` shell-quotes every value that reaches the shell)."""

from __future__ import annotations

import re
import shlex
from functools import lru_cache

from kit.errors import KitError
from kit.resources import bundled_dir

# What an #SBATCH value may hold: no shell variables, quotes, spaces or newlines.
SBATCH_VALUE = re.compile(r"^[A-Za-z0-9_.,:=/@%+\-]+$")


def quote(value) -> str:
    return shlex.quote(str(value))


def comment(value) -> str:
    """A value shown in a `#` comment line: control characters (a newline would end the comment
    and start a command) are written as escapes."""
    return re.sub(r"[\x00-\x1f\x7f]", lambda m: f"\\x{ord(m.group(0)):02x}", str(value))


@lru_cache(maxsize=1)
def environment():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(bundled_dir("templates"))),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["q"] = quote
    env.filters["comment"] = comment
    return env


def render(template: str, **context) -> str:
    import jinja2

    try:
        return environment().get_template(template).render(**context)
    except jinja2.TemplateNotFound:
        raise KitError(f"template {template} not found in {bundled_dir('templates')}") from None
    except jinja2.UndefinedError as e:
        raise KitError(f"template {template}: {e.message}") from None


def directive(option: str, value=None) -> str:
    """One #SBATCH directive, refusing values Slurm would mangle or a shell would expand."""
    if value is None:
        return option
    text = str(value)
    if not SBATCH_VALUE.match(text):
        raise KitError(f"{option} {text!r}: #SBATCH values may hold only letters, digits and _.,:=/@%+- "
                       f"(no spaces, quotes or shell variables)")
    return f"{option}={text}"


def apply_site_directives(directives: list[str], sbatch_site) -> list[str]:
    """The site file can drop directives (by option name) and add its own."""
    dropped = set(sbatch_site.drop)
    kept = [d for d in directives if d.split("=", 1)[0] not in dropped]
    for extra in sbatch_site.extra:
        option, _, value = extra.partition("=")
        kept.append(directive(option, value or None))
    return kept
