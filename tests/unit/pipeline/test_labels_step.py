from __future__ import annotations

import pytest

from cardiofm.contracts.site import SiteConfig
from cardiofm.errors import InputDataError
from cardiofm.pipeline.labels_step import _match_key

SITE = SiteConfig(site_id="site-01")


def test_match_key_is_the_configured_attribute() -> None:
    assert _match_key(SITE, {"match": {"PatientID": "P0001", "AccessionNumber": "A9"}}) == "P0001"


@pytest.mark.parametrize(
    "key", ["../../etc/passwd", "a/b", "a\\b", "..", ""], ids=["dotdot", "slash", "bs", "up", "empty"]
)
def test_a_key_that_cannot_name_a_file_is_refused(key: str) -> None:
    with pytest.raises(InputDataError, match="PatientID"):
        _match_key(SITE, {"match": {"PatientID": key}})
