"""``harness doctor``: run the checks of :mod:`harness.doctor`, print one screen, exit 0 when none failed."""
from __future__ import annotations

import argparse
import time


def doctor(args: argparse.Namespace) -> int:
    """``harness doctor [--study S [--profile P]] [--address A] [--ray]``: 0 when no FAIL, else 1."""
    from harness.doctor import report, run_checks

    start = time.perf_counter()
    checks = run_checks(args.study, args.profile, args.address, start_ray=args.ray)
    print(report(checks, time.perf_counter() - start))
    return 1 if any(c.level == "fail" for c in checks) else 0
