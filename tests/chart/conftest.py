from pathlib import Path

import helm_python as helm
import pytest

CHART = Path(__file__).resolve().parents[2] / "charts" / "ociregistry"


@pytest.fixture(scope="session")
def chart():
    """The chart, loaded once by the Helm v4 SDK (helm-python-sdk)."""
    with helm.Chart.load(CHART) as c:
        yield c
