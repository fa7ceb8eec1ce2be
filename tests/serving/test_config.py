"""Configuration: YAML file, environment overrides with `__`, clear errors and exit code 2."""
from __future__ import annotations

import ast
import importlib
import inspect
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from serving.config import ConfigError, load_config

EXAMPLE = Path(__file__).resolve().parents[2] / "medgate.example.yaml"


def test_defaults_without_a_file(monkeypatch):
    monkeypatch.delenv("MEDGATE_CONFIG", raising=False)
    s = load_config()
    assert (s.dicom.ae_title, s.dicom.port, s.http.port) == ("MEDGATE", 11112, 8000)
    assert s.mqtt.url is None and s.mqtt.embedded_port == 1883 and s.mqtt.topic_prefix == "medgate"
    assert s.destinations.pacs is None and s.fhir.base_url is None


def test_example_file_is_valid_and_names_the_contract_keys():
    s = load_config(EXAMPLE)
    assert s.destinations.pacs.ae_title == "PACS" and s.destinations.pacs.port == 11113
    assert str(s.state_dir) == "var"


def test_environment_overrides_nested_keys(monkeypatch):
    monkeypatch.setenv("MEDGATE_CONFIG", str(EXAMPLE))
    monkeypatch.setenv("MEDGATE_DICOM__PORT", "2104")
    monkeypatch.setenv("MEDGATE_DESTINATIONS__PACS__HOST", "10.1.2.3")
    monkeypatch.setenv("MEDGATE_MQTT__URL", "mqtt://broker.example:1884")
    s = load_config()
    assert s.dicom.port == 2104 and s.dicom.ae_title == "MEDGATE"
    assert s.destinations.pacs.host == "10.1.2.3" and s.destinations.pacs.ae_title == "PACS"
    assert s.mqtt.url == "mqtt://broker.example:1884"


@pytest.mark.parametrize("yaml_text, key", [
    ("dicom: {port: 99999}", "dicom.port"),
    ("dicom: {ae_title: 'THIS-TITLE-IS-TOO-LONG'}", "dicom.ae_title"),
    ("mqtt: {url: 'http://x'}", "mqtt.url"),
    ("mqtt: {topic_prefix: 'a/#'}", "mqtt.topic_prefix"),
    ("destinations: {pacs: {host: x}}", "destinations.pacs.ae_title"),
    ("dicom: {prot: 1}", "dicom.prot"),
])
def test_bad_values_name_the_key(tmp_path, yaml_text, key):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(path)


def test_cli_exits_2_with_the_key_on_bad_config(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("http: {port: -1}\n")
    result = subprocess.run([sys.executable, "-m", "serving.cli", "--config", str(path), "check-config"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "http.port" in result.stderr


def test_missing_file_and_bad_yaml_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "x.yaml").write_text("dicom: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "x.yaml")


ROOT = Path(__file__).resolve().parents[2]
#: Product code: every package medgate ships, and the benchmarks.
PRODUCT = ("kernel", "serving", "dicom_gateway", "iomt", "models", "training", "benchmarks")
#: A default (or name) written in the source -> the one module allowed to write it.
DEFINED_ONCE = {
    '"medgate.sqlite3"': "kernel/database.py",
    "8 * 3600": "serving/config.py",  # auth.cookie_max_age_s
    "64 * 1024 * 1024": "serving/config.py",  # http.max_upload_bytes
    "http://fhir.hl7.org.vn/core/sid/cccd": "iomt/config.py",  # iomt.identifiers.citizen_id
    "urn:medgate:device-serial": "iomt/config.py",  # iomt.identifiers.device
    '"medgate-bridge"': "iomt/config.py",  # mqtt.client_id
    "7 * 24 * 3600": "iomt/config.py",  # mqtt.session_expiry_s
    'body_part=["CHEST", "LUNG"]': "dicom_gateway/config.py",  # dicom.routes: chest CT -> nodule
}


@pytest.mark.parametrize("text", DEFINED_ONCE)
def test_each_default_is_written_in_one_module(text):
    """Defaults live in the config model alone (and the database file name in the store): a second copy drifts."""
    found = sorted(str(path.relative_to(ROOT)) for package in PRODUCT for path in (ROOT / package).rglob("*.py")
                   if text in path.read_text(encoding="utf-8"))
    assert found == [DEFINED_ONCE[text]]


def test_each_layer_reads_its_own_typed_section():
    """iomt and dicom_gateway own their sections (they import no serving); serving composes them."""
    from dicom_gateway.config import DicomConfig
    from dicom_gateway.routing import DEFAULT_RULES, rules_from_config
    from iomt.bridge import DEFAULT_SYSTEMS
    from iomt.config import IdentifierSystems, IomtConfig
    from iomt.identity import IdentifierSystems as used_by_identity
    from serving.config import Settings

    settings = Settings()
    assert used_by_identity is IdentifierSystems and DEFAULT_SYSTEMS == IdentifierSystems()
    assert isinstance(settings.iomt, IomtConfig) and isinstance(settings.dicom, DicomConfig)
    assert DEFAULT_RULES == rules_from_config([r.model_dump(exclude_none=True) for r in DicomConfig().routes])


def test_the_database_path_is_the_store_s():
    from kernel.database import DATABASE_FILE, database_path

    assert database_path(Path("var")) == Path("var") / DATABASE_FILE == load_config(state_dir="var").db_path


#: The classes and functions of the middle layers whose defaults are configuration keys: each such
#: default is read from the layer's own section (a module-level ``_DICOM = DicomConfig()``, ``_MQTT``,
#: ``_IOMT``), never written again beside it.
SECTION_READERS = (
    "dicom_gateway.scp:StorageScp", "dicom_gateway.completion:StudyAssembler", "dicom_gateway.acceptor:Acceptor",
    "dicom_gateway.intake:Intake",
    "iomt.bridge:VitalsBridge", "iomt.bridge:broker_address", "iomt.pipeline:VitalsPipeline",
    "iomt.risk:RiskScorer", "iomt.alerts:AlertPolicy", "iomt.sink:ResourceSink", "iomt.workers:WorkerSpec",
    "iomt.mqtt_client:MqttOptions", "iomt.state:StateTable",
    "iomt.hl7.listener:MllpListener", "iomt.hl7.intake:Intake",
)


def _layer_keys(layer: str) -> dict[str, list]:
    """Every key of ``layer``'s sections that holds a value (not a sub-section) -> its defaults."""
    from dicom_gateway.config import DicomConfig
    from iomt.config import Hl7Config, IomtConfig, MqttConfig
    from kernel.config import Section

    keys: dict[str, list] = {}
    pending = list({"dicom_gateway": [DicomConfig()], "iomt": [MqttConfig(), IomtConfig(), Hl7Config()]}[layer])
    while pending:
        section = pending.pop()
        for name in type(section).model_fields:
            value = getattr(section, name)
            if isinstance(value, Section):
                pending.append(value)
            else:
                keys.setdefault(name, []).append(value)
    return keys


def _written_defaults(obj) -> dict[str, ast.expr]:
    """Parameter (or dataclass field) -> the default expression in ``obj``'s source."""
    node = ast.parse(textwrap.dedent(inspect.getsource(obj))).body[0]
    if isinstance(node, ast.ClassDef):
        fields = {s.target.id: s.value for s in node.body
                  if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name) and s.value is not None}
        init = next((s for s in node.body if isinstance(s, ast.FunctionDef) and s.name == "__init__"), None)
        return fields if init is None else _written_defaults_of(init)
    return _written_defaults_of(node)


def _written_defaults_of(function: ast.FunctionDef) -> dict[str, ast.expr]:
    args = function.args
    positional = args.posonlyargs + args.args
    pairs = list(zip(positional[len(positional) - len(args.defaults):], args.defaults))
    pairs += [(arg, default) for arg, default in zip(args.kwonlyargs, args.kw_defaults) if default is not None]
    return {arg.arg: default for arg, default in pairs}


@pytest.mark.parametrize("target", SECTION_READERS)
def test_defaults_that_are_settings_are_read_from_the_layer_s_section(target):
    """A constructor default equal to a config key's default, written again, drifts: it is read."""
    from kernel.config import Section

    module_name, name = target.split(":")
    module = importlib.import_module(module_name)
    obj = getattr(module, name)
    keys = _layer_keys(module_name.split(".")[0])
    parameters = inspect.signature(obj).parameters
    checked = {param: node for param, node in _written_defaults(obj).items()
               if param in keys and not (isinstance(node, ast.Constant) and node.value is None)}
    assert checked, f"{target} has no default named like a key of its layer's sections"
    for param, node in checked.items():
        root = node
        while isinstance(root, ast.Attribute):
            root = root.value
        written = f"{target}({param}={ast.unparse(node)})"
        assert isinstance(node, ast.Attribute) and isinstance(root, ast.Name) \
            and isinstance(getattr(module, root.id, None), Section), f"{written}: not read from a section"
        assert parameters[param].default in keys[param], f"{written}: not the section's default {keys[param]}"
