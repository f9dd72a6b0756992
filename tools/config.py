"""A config file: a flat YAML mapping of parameter names to values, as `papermill -f` reads it, checked
before any notebook runs (a key given twice, bytes that are not UTF-8, an unknown name or a wrong value
are named with the file and the line)."""
from __future__ import annotations

from pathlib import Path

from helpers.params import ParameterError, check


class DuplicateKey(ValueError):
    pass


def _unique_key_loader():
    import yaml

    class Loader(yaml.SafeLoader):
        """safe_load, except that a key given twice is an error (YAML would keep the last silently)."""

        def construct_mapping(self, node, deep=False):
            seen = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if not isinstance(key, (str, int, float, bool)):
                    continue  # SafeLoader itself refuses keys that cannot be looked up
                if key in seen:
                    raise DuplicateKey(f"line {key_node.start_mark.line + 1}: '{key}' is given twice (lines "
                                       f"{seen[key] + 1} and {key_node.start_mark.line + 1}); keep one")
                seen[key] = key_node.start_mark.line
            return super().construct_mapping(node, deep)

    return Loader


def load(path: str | Path) -> dict:
    """The parameters `path` sets, each checked."""
    import yaml

    from helpers.data.reading import encoding_hint

    path = Path(path)
    if not path.is_file():
        raise ParameterError(f"Config file {path} does not exist" + (" (it is a folder)." if path.is_dir() else "."))
    try:
        raw = path.read_bytes()
        data = yaml.load(raw.decode("utf-8"), Loader=_unique_key_loader()) or {}
    except OSError as e:
        raise ParameterError(f"Config file {path} cannot be read: {e.strerror}.") from None
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ParameterError(f"Config file {path}, line {line}: byte 0x{raw[e.start]:02x} is not UTF-8"
                             f"{encoding_hint(raw, e.start)}.") from None
    except DuplicateKey as e:
        raise ParameterError(f"Config file {path}, {e}.") from None
    except yaml.YAMLError as e:
        raise ParameterError(f"Config file {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ParameterError(f"Config file {path} must be a mapping of parameter names to values, "
                             f"got {type(data).__name__}.")
    try:
        return check(data)
    except ParameterError as e:
        raise ParameterError(f"{path}: {e}") from None
