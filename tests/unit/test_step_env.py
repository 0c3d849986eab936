"""``cardiofm step``'s environment handling: install-time defaults and TLS material given as env secrets."""

from __future__ import annotations

import stat
from pathlib import Path

from cardiofm.cli.step import TLS_ENV, _tls_from_env, with_defaults
from cardiofm.contracts.coordinator import SiteJoinParams

JOIN = {"DATASET": "/data", "WORK_DIR": "/work", "INSECURE_DEV": "False"}


def test_install_time_defaults_fill_only_empty_fields() -> None:
    env = {**JOIN, "SUPERLINK": "", "CARDIOFM_DEFAULT_SUPERLINK": "coordinator.example.org:9443"}
    env["CARDIOFM_DEFAULT_PINNED_FAB_SHA256"] = str(["ab" * 32])
    params = SiteJoinParams.from_env(with_defaults("site-join", env))
    assert params.superlink == "coordinator.example.org:9443"
    assert params.pinned_fab_sha256 == ["ab" * 32]
    # the run's form wins over the install-time setting
    form = {**env, "SUPERLINK": "other.example.org:443"}
    assert SiteJoinParams.from_env(with_defaults("site-join", form)).superlink == "other.example.org:443"
    # a default for a variable the step does not read is not applied
    assert "MARGIN_MM" not in with_defaults("site-join", {**env, "CARDIOFM_DEFAULT_MARGIN_MM": "5"})


def test_tls_secrets_from_env_become_private_files(tmp_path: Path) -> None:
    params = SiteJoinParams.from_env(
        {**JOIN, "SUPERLINK": "c.example.org:9443", "PINNED_FAB_SHA256": "['" + "a" * 64 + "']"}
    )
    env = {
        TLS_ENV["ca_cert"]: "-----BEGIN CERTIFICATE-----\nMII\n-----END CERTIFICATE-----",
        TLS_ENV["private_key"]: "KEY\n",
    }
    paths = _tls_from_env(params, env, tmp_path)
    assert set(paths) == {"ca_cert", "private_key"}
    for path in paths.values():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert path.read_text().endswith("\n")
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert paths["private_key"].read_text() == "KEY\n"
    # files given as paths are kept; nothing is written
    given = params.model_copy(update={"ca_cert": paths["ca_cert"], "private_key": paths["private_key"]})
    assert _tls_from_env(given, env, tmp_path / "unused") == {}


def test_one_pinned_hash_as_text_as_an_install_dialog_gives_it() -> None:
    one = SiteJoinParams.from_env({**JOIN, "SUPERLINK": "c.example.org:9443", "PINNED_FAB_SHA256": "AB" * 32})
    assert one.pinned_fab_sha256 == ["ab" * 32]
    two = SiteJoinParams.from_env(
        {**JOIN, "SUPERLINK": "c.example.org:9443", "PINNED_FAB_SHA256": f"{'a' * 64}, {'b' * 64}"}
    )
    assert two.pinned_fab_sha256 == ["a" * 64, "b" * 64]
