"""Package exports loaded on first use, so that importing a light module of a package (a
config's `parse_args`, the augmentation table) does not load JAX, Flax and Orbax with it."""

import importlib
from collections.abc import Callable, Mapping, Sequence


def lazy_exports(
    package: str, exports: Mapping[str, Sequence[str]]
) -> tuple[list[str], Callable[[str], object], Callable[[], list[str]]]:
  """`(__all__, __getattr__, __dir__)` for `package`, whose names `exports` maps by module.

  Submodules (`from package import module`) are found by the import system itself.
  """
  module_of = {name: module for module, names in exports.items() for name in names}
  namespace = importlib.import_module(package).__dict__

  def getattr_(name: str):
    if name not in module_of:
      raise AttributeError(f'module {package!r} has no attribute {name!r}')
    value = getattr(importlib.import_module(module_of[name]), name)
    namespace[name] = value  # Later look-ups no longer come here.
    return value

  def dir_() -> list[str]:
    return sorted(set(namespace) | set(module_of))

  return sorted(module_of), getattr_, dir_
