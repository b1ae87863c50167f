"""Reading kit's YAML files (site configs, the image lock): strict, with one-line errors.

A key given twice is an error (YAML would keep the last), and so is a file that is not a
mapping; errors name the file, line and column.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from kit.errors import KitError


class UniqueKeyLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
    """A safe loader that refuses a key given twice in one mapping (YAML would keep the last)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                mark = key_node.start_mark
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} appears twice", mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path) -> dict:
    try:
        text = path.read_text()
    except OSError as e:
        raise KitError(f"{path}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError:
        raise KitError(f"{path}: not a UTF-8 text file") from None
    try:
        data = yaml.load(text, Loader=UniqueKeyLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise KitError(f"{path}{where}: YAML syntax error: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise KitError(f"{path}: must be a mapping of keys, got {type(data).__name__}")
    return data

