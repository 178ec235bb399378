"""Shared pytest configuration: hypothesis profiles.

Profiles (select with ``pytest --hypothesis-profile=NAME``; the default is ``ci``):

* ``ci``   -- bounded and reproducible: 25 examples per test that does not set its own
  ``max_examples`` (the fuzz tests in tests/test_fuzz.py run 25 examples per quantizer family),
  no deadline, derandomized (the same examples on every run, so a failure is never flaky);
* ``long`` -- for local fuzzing: 1000 examples per such test, no deadline, random seeds and the
  example database, so repeated runs explore new inputs and replay old failures.

Tests with an explicit ``@settings(max_examples=...)`` keep their own count in both profiles.
This file is loaded before hypothesis's pytest plugin reads ``--hypothesis-profile``, so the
option overrides the default loaded here.
"""

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=25,
    deadline=None,
    derandomize=True,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "long",
    max_examples=1000,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("ci")
