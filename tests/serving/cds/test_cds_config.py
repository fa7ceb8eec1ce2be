"""The ``cds`` section: validated at load, and reaching the ingress in Ray's workers."""
from __future__ import annotations

import pytest

from serving.cds.api import CDS_SECTION_ENV, configured_section
from serving.config import CdsConfig, ConfigError, load_config


def test_an_issuer_needs_exactly_one_key_source():
    with pytest.raises(ConfigError, match="cds.issuers.0: .*needs exactly one of jwks_url, jwks_file, "
                                          "public_key_file; \\['jwks_url', 'jwks_file'\\] given"):
        load_config(cds={"issuers": [{"iss": "https://ehr", "jwks_url": "https://ehr/jwks", "jwks_file": "/k"}]})
    with pytest.raises(ConfigError, match="cds.issuers.0.jwks_url: .*must be an http\\(s\\) URL"):
        load_config(cds={"issuers": [{"iss": "https://ehr", "jwks_url": "file:///etc/passwd"}]})


def test_the_section_medgate_serve_passes_is_the_one_the_routes_use(monkeypatch, tmp_path):
    config = tmp_path / "medgate.yaml"
    config.write_text("cds:\n  smart_app_url: https://file.example/launch\n")
    monkeypatch.setenv("MEDGATE_CONFIG", str(config))
    monkeypatch.delenv(CDS_SECTION_ENV, raising=False)
    assert configured_section().smart_app_url == "https://file.example/launch"
    passed = CdsConfig(smart_app_url="https://serve.example/launch", issuers=[
        {"iss": "https://ehr", "public_key_file": str(tmp_path / "ehr.pem")}])
    monkeypatch.setenv(CDS_SECTION_ENV, passed.model_dump_json())
    assert configured_section() == passed
    assert load_config().cds.smart_app_url == "https://file.example/launch"  # not a settings key
