"""The unit tier: synthetic safetensors and JSON (tests/synthetic.py), no training, no trained teacher.
The session fixtures that build the tiny world and train students are refused here."""

from __future__ import annotations

import pytest


def _refuse(request):
    raise pytest.UsageError("unit tests use synthetic files (tests/synthetic.py), not the trained tiny world; "
                            "put this test in tests/ (the integration tier)")


@pytest.fixture(scope="session")
def world(request):
    _refuse(request)


@pytest.fixture(scope="session")
def student_bf16(request):
    _refuse(request)


@pytest.fixture(scope="session")
def student_fp32(request):
    _refuse(request)
