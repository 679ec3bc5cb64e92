"""Reading the Python 2 pickles that CIFAR and miniImageNet are published as.

Python 2 `str` objects (dict keys, numpy buffers) must be decoded as latin1 to
come back byte for byte. Pickles can run code: read only files you trust.
"""

from __future__ import annotations

import pickle
from typing import IO


def read_legacy_pickle(source: str, file: IO[bytes]) -> object:
  """Unpickles `file`, reporting `source` and the cause if it is unreadable."""
  try:
    return pickle.load(file, encoding='latin1')
  except pickle.UnpicklingError as e:
    if 'truncated' not in str(e):
      raise ValueError(
          f'{source}: not a readable pickle ({e}); the file is corrupt or '
          f'not in the published format.'
      ) from None
    raise ValueError(
        f'{source}: the pickle ends early; the file is truncated. ' f'Download or copy it again.'
    ) from None
  except EOFError:
    raise ValueError(
        f'{source}: the pickle ends early; the file is truncated. ' f'Download or copy it again.'
    ) from None
  except (
      AttributeError,
      ImportError,
      IndexError,
      TypeError,
      ValueError,
      UnicodeDecodeError,
      MemoryError,
  ) as e:
    raise ValueError(
        f'{source}: not a readable pickle ({type(e).__name__}: {e}); the '
        f'file is corrupt or not in the published format.'
    ) from None


def str_keys(mapping: object, source: str, required: tuple[str, ...]) -> dict:
  """The dict with bytes keys decoded, checked to hold `required`."""
  if not isinstance(mapping, dict):
    raise ValueError(
        f'{source}: expected a pickled dict with keys {list(required)}, '
        f'found {type(mapping).__name__}.'
    )
  out = {(k.decode('latin1') if isinstance(k, bytes) else k): v for k, v in mapping.items()}
  missing = [k for k in required if k not in out]
  if missing:
    raise ValueError(
        f'{source}: the pickled dict lacks keys {missing}; it has '
        f'{sorted(map(str, out))}. The file is not in the published format.'
    )
  return out


def as_text(value: object) -> str:
  return value.decode('latin1') if isinstance(value, bytes) else str(value)
