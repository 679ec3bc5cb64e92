"""Parsing of the `file.py:arg` string that config files receive.

`get_config("dataset=omniglot,head=dc,smoke")` lets one config file serve the
full run and a tiny local run; a bare word is a flag set to True.
"""

from typing import Any, Mapping


def _convert(name: str, text: str, default: Any) -> Any:
  if isinstance(default, bool):
    if text.lower() in ('1', 'true', 'yes', ''):
      return True
    if text.lower() in ('0', 'false', 'no'):
      return False
    raise ValueError(f'config arg {name}={text!r}: expected true or false.')
  if isinstance(default, int):
    try:
      return int(text)
    except ValueError:
      raise ValueError(f'config arg {name}={text!r}: expected an integer.') from None
  if isinstance(default, float):
    try:
      return float(text)
    except ValueError:
      raise ValueError(f'config arg {name}={text!r}: expected a number.') from None
  return text


def parse_args(
    arg: str | None, defaults: Mapping[str, Any], choices: Mapping[str, tuple] | None = None
) -> dict:
  """Parses 'k=v,k2=v2,flag' into a dict typed like `defaults`.

  Unknown keys and values outside `choices` raise ValueError naming the key
  and the allowed values.
  """
  out = dict(defaults)
  choices = choices or {}
  for item in filter(None, (arg or '').split(',')):
    name, sep, value = item.partition('=')
    name = name.strip()
    if name not in defaults:
      raise ValueError(f'unknown config arg {name!r}; allowed: {sorted(defaults)}.')
    if not sep and not isinstance(defaults[name], bool):
      raise ValueError(f'config arg {name!r} needs a value: {name}=...')
    out[name] = _convert(name, value.strip(), defaults[name])
  for name, allowed in choices.items():
    if out[name] not in allowed:
      raise ValueError(f'config arg {name}={out[name]!r} is not one of {list(allowed)}.')
  return out
