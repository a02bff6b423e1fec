"""Hypothesis profiles: a fixed, derandomised run for ``make test`` and CI; random exploration for ``make fuzz``.

``ci`` (the default) draws the same examples on every run, so the test command cannot fail by chance;
a failure prints the blob that reproduces it (``@reproduce_failure``). ``fuzz`` (``HYPOTHESIS_PROFILE=fuzz``,
``make fuzz``) draws new examples from a random seed, thousands per test, and keeps failures in the
example database; each failure it finds becomes an explicit ``@example`` in the test.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings
from hypothesis.database import DirectoryBasedExampleDatabase

FUZZ_EXAMPLES = int(os.environ.get("APERTURE_FUZZ_EXAMPLES", "2000"))
_SLOW_OK = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large]

settings.register_profile("ci", derandomize=True, database=None, print_blob=True, deadline=None)
settings.register_profile("fuzz", derandomize=False, max_examples=FUZZ_EXAMPLES, print_blob=True, deadline=None,
                          database=DirectoryBasedExampleDatabase(".hypothesis/examples"),
                          suppress_health_check=_SLOW_OK)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
settings.load_profile(PROFILE)


def examples(n: int) -> int:
    """``n`` examples in the fixed profile (a budget that keeps the suite fast); the profile's own when fuzzing."""
    return max(n, settings.default.max_examples) if PROFILE == "fuzz" else n
