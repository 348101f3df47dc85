"""The in-process engine keeps freed tensor memory for reuse (glibc malloc).

What that saves (page faults per steady round, ~10 ms a round) is machine-dependent and
is measured in ``docs/simulation.md``, not asserted here: a page-fault threshold failed
on a clean CI machine (2,313 faults by default against the 6,000 seen on another).
"""

from __future__ import annotations

import platform
import sys

from simulation.allocator import keep_freed_memory


def test_it_reports_whether_it_applied() -> None:
    applied = keep_freed_memory()
    assert applied == (sys.platform == "linux" and platform.libc_ver()[0] == "glibc")
