"""Files a run writes into its workdir: config.json and results.json."""

import json
import os
from typing import Any

import numpy as np


def plain(obj: Any) -> Any:
  """`obj` with arrays and numpy scalars as Python lists and numbers, keys as strings."""
  if isinstance(obj, dict):
    return {str(k): plain(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [plain(v) for v in obj]
  if isinstance(obj, (np.generic, np.ndarray)) or hasattr(obj, '__array__'):
    value = np.asarray(obj)
    return value.item() if value.ndim == 0 else value.tolist()
  return obj


def write_json(path: str, obj: Any) -> None:
  """Writes JSON atomically, so a killed run never leaves half a file."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f'{path}.tmp'
  with open(tmp, 'w') as f:
    json.dump(plain(obj), f, indent=2, sort_keys=True)
    f.write('\n')
  os.replace(tmp, path)


def read_json(path: str) -> Any:
  with open(path) as f:
    return json.load(f)


def save_config(workdir: str, config) -> None:
  write_json(os.path.join(workdir, 'config.json'), config.to_dict())
