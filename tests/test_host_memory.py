"""The launcher's allocator choice: when it re-executes, with what, and that it stops the faults."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from groundwork import host_memory

# Re-executes (counting its starts on stderr), then allocates and frees a 64 MiB block five
# times, touching every page, and reports the page faults that took: 16,384 per round with
# fresh 4 KiB pages, ~32 with huge pages, none when the allocator keeps the block.
PROBE = textwrap.dedent('''
    import ctypes, json, os, resource, sys
    from groundwork import host_memory
    print('start', file=sys.stderr, flush=True)
    host_memory.reexec_with_fast_allocator()
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):  # Plain malloc: numpy asks for huge pages on its own.
        block = libc.malloc(64 << 20)
        ctypes.memset(block, 1, 64 << 20)
        libc.free(block)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    print(json.dumps([os.environ.get(host_memory.DONE, 'system'), faults]))
''')
ROUND = 16384  # 4 KiB pages in 64 MiB


def _probe(**env):
  environ = {k: v for k, v in os.environ.items()
             if k not in ('GLIBC_TUNABLES', 'LD_PRELOAD', 'MALLOC_CONF', host_memory.CHOICE,
                          host_memory.DONE)}
  done = subprocess.run([sys.executable, '-c', PROBE], env={**environ, **env}, text=True,
                        capture_output=True, check=True, timeout=120)
  allocator, faults = json.loads(done.stdout.strip().splitlines()[-1])
  return done.stderr.count('start'), allocator, faults


def _available(choice):
  try:
    return host_memory.allocator_settings({'JAX_PLATFORMS': 'cpu', host_memory.CHOICE: choice})[0]
  except ValueError:
    return None


def test_choices_and_their_errors(monkeypatch):
  cpu = {'JAX_PLATFORMS': 'cpu'}
  assert host_memory.allocator_settings({**cpu, host_memory.CHOICE: 'system'}) == ('system', {})
  assert host_memory.allocator_settings({**cpu, host_memory.DONE: 'jemalloc'}) == ('system', {})
  assert host_memory.allocator_settings({'JAX_PLATFORMS': 'cuda,cpu'}) == ('system', {})
  with pytest.raises(ValueError, match='GROUNDWORK_ALLOCATOR=.tcmalloc.: choose one of'):
    host_memory.allocator_settings({**cpu, host_memory.CHOICE: 'tcmalloc'})
  monkeypatch.setattr(host_memory, 'JEMALLOC_PATHS', ())
  with pytest.raises(ValueError, match='apt-get install libjemalloc2'):
    host_memory.allocator_settings({**cpu, host_memory.CHOICE: 'jemalloc'})
  monkeypatch.setattr(host_memory, 'transparent_huge_page_mode', lambda: 'never')
  with pytest.raises(ValueError, match="found 'never'"):
    host_memory.allocator_settings({**cpu, host_memory.CHOICE: 'hugepages'})
  assert host_memory.allocator_settings(cpu) == ('system', {})  # auto, nothing applies


def test_settings_keep_what_the_user_set(monkeypatch, tmp_path):
  library = tmp_path / 'libjemalloc.so.2'
  library.touch()
  monkeypatch.setattr(host_memory, 'JEMALLOC_PATHS', (str(library),))
  name, settings = host_memory.allocator_settings(
      {'JAX_PLATFORMS': 'cpu', 'LD_PRELOAD': 'libmine.so', 'MALLOC_CONF': 'narenas:1'})
  assert name == 'jemalloc'
  assert settings == {'LD_PRELOAD': f'{library} libmine.so', 'MALLOC_CONF': 'narenas:1'}
  monkeypatch.setattr(host_memory, 'transparent_huge_page_mode', lambda: 'madvise')
  monkeypatch.setattr(host_memory, 'glibc_version', lambda: (2, 36))
  name, settings = host_memory.allocator_settings(
      {'JAX_PLATFORMS': 'cpu', host_memory.CHOICE: 'hugepages',
       'GLIBC_TUNABLES': 'glibc.malloc.check=0'})
  assert (name, settings) == ('hugepages', {
      'GLIBC_TUNABLES': f'glibc.malloc.check=0:{host_memory.HUGETLB_TUNABLE}'})


def test_reads_the_kernel_mode(tmp_path):
  mode_file = tmp_path / 'enabled'
  mode_file.write_text('always [madvise] never\n')
  assert host_memory.transparent_huge_page_mode(str(mode_file)) == 'madvise'
  assert host_memory.transparent_huge_page_mode(str(tmp_path / 'absent')) is None


def test_system_allocator_faults_every_round():
  starts, allocator, faults = _probe(JAX_PLATFORMS='cpu', GROUNDWORK_ALLOCATOR='system')
  assert (starts, allocator) == (1, 'system')
  assert faults >= 5 * ROUND
  assert _probe(JAX_PLATFORMS='cuda')[:2] == (1, 'system')


@pytest.mark.skipif(_available('jemalloc') != 'jemalloc', reason='libjemalloc2 not installed')
def test_jemalloc_reexecs_once_and_keeps_freed_blocks():
  starts, allocator, faults = _probe(JAX_PLATFORMS='cpu')  # auto picks it first
  assert (starts, allocator) == (2, 'jemalloc')
  assert faults < 2 * ROUND, faults  # the first round only


@pytest.mark.skipif(_available('hugepages') != 'hugepages', reason='no glibc huge pages here')
def test_huge_pages_reexec_once_and_take_fewer_faults():
  starts, allocator, faults = _probe(JAX_PLATFORMS='cpu', GROUNDWORK_ALLOCATOR='hugepages')
  assert (starts, allocator) == (2, 'hugepages')
  assert faults < 5 * ROUND // 8, faults
