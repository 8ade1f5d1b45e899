"""The allocator setting of training: freed memory is reused, not faulted in afresh (probed in fresh
processes, so that the test session keeps its own allocator settings)."""
import subprocess
import sys
import textwrap

import pytest

# Allocates, touches and frees a 64 MB tensor (as a training iteration does with its largest ones) ten
# times, then prints the minor page faults of four more. (The heap settles within the first ten: glibc
# leaves a few blocks aside before it reuses one for an aligned request.)
PROBE = textwrap.dedent("""
    import resource, sys, torch
    from excel.utils.allocator import retain_freed_memory
    if sys.argv[1] == "retain" and not retain_freed_memory():
        print("unavailable")
        sys.exit()
    for _ in range(10):
        torch.ones(16 * 2**20)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(4):
        torch.ones(16 * 2**20)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")
PAGES_PER_TENSOR = 16 * 2**20 * 4 // 4096


def page_faults(mode: str) -> int | None:
    """Faults of the probe in a fresh process (None: the setting is not available there)."""
    result = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    last = result.stdout.split()[-1]
    return None if last == "unavailable" else int(last)


def test_retained_memory_is_reused_without_page_faults():
    retained = page_faults("retain")
    if retained is None:
        pytest.skip("needs glibc's mallopt (Linux)")
    # glibc's default maps a block this large afresh for every allocation: one fault per page each time.
    assert page_faults("default") >= 4 * PAGES_PER_TENSOR * 0.9
    assert retained < 0.05 * PAGES_PER_TENSOR
