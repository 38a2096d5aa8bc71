"""utils.memory: glibc's heap settings, each in a fresh interpreter (they are process-wide and cannot be undone)."""

import subprocess
import sys

import pytest

from unix_cxr.utils.memory import _libc

pytestmark = pytest.mark.skipif(_libc() is None, reason="the C library is not glibc")

# page faults per allocation of a 48 MiB tensor, filled, freed, allocated again (12,288 pages of 4 KiB), once the
# heap has settled
_FAULTS = """
import resource, sys, torch
from unix_cxr.utils.memory import keep_freed_memory
torch.set_num_threads(1)
if sys.argv[1] == "keep":
    print(keep_freed_memory(), file=sys.stderr)
def step():
    torch.empty(48 << 18).fill_(1.0)
for _ in range(20):  # the heap settles: glibc places aligned blocks side by side before it reuses them
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
"""


def _faults(mode: str) -> tuple[float, str]:
    done = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, check=True)
    return float(done.stdout), done.stderr.strip()


def test_kept_heap_reuses_large_blocks_instead_of_faulting_them_in_again():
    pages = (48 << 20) // 4096
    default, _ = _faults("system")
    kept, block = _faults("keep")
    assert default > 0.5 * pages  # glibc maps each 48 MiB block afresh: every page faults in again
    if int(block) == 0:
        pytest.skip("this glibc refuses mmap thresholds above 32 MiB")
    assert int(block) == 1 << 30
    assert kept < 0.25 * pages
