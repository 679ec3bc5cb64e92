"""Huge pages for training on the CPU: when the launcher re-executes itself, and that it helps."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from groundwork import host_memory

# Re-executes (counting its starts on stderr), then first-touches a 64 MiB allocation and
# reports the page faults that took: 16,384 with 4 KiB pages, ~32 with 2 MiB ones.
PROBE = textwrap.dedent('''
    import ctypes, json, os, resource, sys
    from groundwork import host_memory
    print('start', file=sys.stderr, flush=True)
    host_memory.reexec_with_huge_pages()
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    buffer = libc.malloc(64 << 20)  # Plain malloc: numpy asks for huge pages on its own.
    ctypes.memset(buffer, 1, 64 << 20)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    print(json.dumps([os.environ.get('GLIBC_TUNABLES', ''), faults]))
''')


def _probe(**env):
  environ = {k: v for k, v in os.environ.items()
             if k not in ('GLIBC_TUNABLES', host_memory.OPT_OUT)}
  done = subprocess.run([sys.executable, '-c', PROBE], env={**environ, **env}, text=True,
                        capture_output=True, check=True, timeout=120)
  tunables, faults = json.loads(done.stdout.strip().splitlines()[-1])
  return done.stderr.count('start'), tunables, faults


def test_reasons_not_to_reexec():
  assert host_memory.huge_pages_would_help({host_memory.OPT_OUT: '0'}) == 'GROUNDWORK_HUGE_PAGES=0'
  assert host_memory.huge_pages_would_help(
      {'GLIBC_TUNABLES': f'glibc.malloc.check=0:{host_memory.TUNABLE}'}) == 'already set'
  assert not host_memory.jax_computes_on_cpu({'JAX_PLATFORMS': 'cuda,cpu'})
  assert host_memory.jax_computes_on_cpu({'JAX_PLATFORMS': 'cpu'})


def test_reads_the_kernel_mode(tmp_path):
  mode_file = tmp_path / 'enabled'
  mode_file.write_text('always [madvise] never\n')
  assert host_memory.transparent_huge_page_mode(str(mode_file)) == 'madvise'
  assert host_memory.transparent_huge_page_mode(str(tmp_path / 'absent')) is None


@pytest.mark.skipif(host_memory.huge_pages_would_help({'JAX_PLATFORMS': 'cpu'}) is not None,
                    reason=f"{host_memory.huge_pages_would_help({'JAX_PLATFORMS': 'cpu'})}")
def test_reexec_once_and_large_allocations_get_huge_pages():
  starts, tunables, faults = _probe(JAX_PLATFORMS='cpu')
  assert starts == 2 and tunables == host_memory.TUNABLE
  starts_off, tunables_off, faults_off = _probe(JAX_PLATFORMS='cpu', GROUNDWORK_HUGE_PAGES='0')
  assert starts_off == 1 and tunables_off == ''
  assert faults_off >= 16384 and faults < faults_off // 8, (faults, faults_off)


def test_keeps_existing_tunables_and_leaves_accelerator_runs_alone():
  starts, _, _ = _probe(JAX_PLATFORMS='cuda')
  assert starts == 1
  if host_memory.huge_pages_would_help({'JAX_PLATFORMS': 'cpu'}) is None:
    starts, tunables, _ = _probe(JAX_PLATFORMS='cpu', GLIBC_TUNABLES='glibc.malloc.check=0')
    assert starts == 2 and tunables == f'glibc.malloc.check=0:{host_memory.TUNABLE}'
