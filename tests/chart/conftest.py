import helm_python as helm
import pytest

from test_chart import CHART


@pytest.fixture(scope="session")
def chart():
    """The chart, loaded once by the Helm v4 SDK (helm-python-sdk)."""
    with helm.Chart.load(CHART) as c:
        yield c
