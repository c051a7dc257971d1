"""Settings for `xlgate serve`: precedence, validation messages, file format, generated docs and --help."""

from __future__ import annotations

import argparse
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import fields
from pathlib import Path

import pytest

from gateway.config import (
    DEFAULT_HOTWORD_BOOST,
    OPTION_SPECS,
    ConfigError,
    Hotword,
    Kind,
    OptionSpec,
    ServeSettings,
    add_serve_arguments,
    load_hotwords_file,
    render_markdown,
    resolve_serve_settings,
    unknown_environment_variables,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
SPECS = {spec.name: spec for spec in OPTION_SPECS}
CLI_SPECS = [spec for spec in OPTION_SPECS if not spec.file_only]


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xlgate serve")
    add_serve_arguments(parser)
    return parser


def toml_literal(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    assert isinstance(value, str)
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_config(directory: Path, text: str, name: str = "xlgate.toml") -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def resolve(argv: Sequence[str] = (), environ: Mapping[str, str] | None = None) -> ServeSettings:
    return resolve_serve_settings(make_parser().parse_args(list(argv)), environ or {})


def resolve_error(argv: Sequence[str] = (), environ: Mapping[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        resolve(argv, environ)
    return str(caught.value)


# ------------------------------------------------------------------------------------------- defaults


def test_defaults() -> None:
    assert resolve() == ServeSettings(
        host="127.0.0.1",
        ws_port=8080,
        metrics_port=9464,
        metrics_host="",
        grpc_port=50051,
        grpc_max_message_bytes=4194304,
        sip_port=5060,
        mrcp_port=1544,
        rtp_ports="20000-29999",
        advertise_address="",
        mrcp_waveform_dir="",
        mrcp_waveform_max_files=1000,
        mrcp_waveform_max_bytes=1 << 30,
        max_frame_bytes=64000,
        model="bundled",
        device="cpu",
        torch_threads=0,
        event_loop="uvloop",
        quantize="none",
        rel_attention="auto",
        final_pass="whisper",
        final_pass_budget_s=0.3,
        runner="process",
        model_step_timeout_s=1.0,
        warmup=True,
        warmup_timeout_s=60.0,
        max_streams=64,
        max_batch_size=32,
        max_wait_s=0.01,
        max_pending_chunks=8,
        endpoint_silence_s=1.0,
        max_utterance_s=20.0,
        idle_timeout_s=15.0,
        drain_timeout_s=30.0,
        decoding="greedy",
        beam_size=8,
        lm="bundled",
        hotwords=(),
        hotwords_file=None,
        log_level="info",
        log_format="text",
        log_transcripts=False,
        tls_cert=None,
        tls_key=None,
        sips_port=5061,
        mrcp_tls_port=1545,
        max_sessions_per_address=0,
        sip_max_message_bytes=65536,
        sip_max_headers=100,
        max_sdp_bytes=16384,
        mrcp_max_message_bytes=1048576,
        mrcp_max_headers=100,
        max_grammar_bytes=262144,
        max_grammar_phrases=2000,
        rtp_max_packets_per_s=200,
        auth_tokens="",
        auth_tokens_file=None,
        auth_jwt_key=None,
        auth_jwt_algorithms="",
        auth_jwt_audience="",
        auth_jwt_issuer="",
        auth_jwt_leeway_s=0.0,
        auth_query_token=True,
        sip_digest_users_file=None,
        sip_digest_realm="xlgate",
        mrcp_allowed_networks="",
    )


def test_a_hand_made_namespace_counts_as_no_flags() -> None:
    assert resolve_serve_settings(argparse.Namespace(), {}) == resolve()


def test_every_spec_has_exactly_one_settings_field() -> None:
    assert [spec.field_name for spec in OPTION_SPECS] == [field.name for field in fields(ServeSettings)]


def test_duration_options_end_in_ms_and_become_seconds() -> None:
    for spec in OPTION_SPECS:
        assert (spec.kind is Kind.DURATION_MS) == spec.name.endswith("_ms"), spec.name
        if spec.kind is Kind.DURATION_MS:
            assert spec.field_name.endswith("_s")


def test_settings_are_frozen() -> None:
    settings = resolve()
    with pytest.raises(AttributeError):
        settings.ws_port = 1  # type: ignore[misc]


# ----------------------------------------------------------------------------------------- precedence

# Per option: the values the file, the environment and the flag set, in boundary units. Successive
# values differ so every level visibly overrides the one below; none collides with another option.
PRECEDENCE_VALUES: dict[str, tuple[object, object, object]] = {
    "host": ("0.0.0.0", "::1", "10.1.2.3"),
    "ws_port": (8100, 8101, 8102),
    "metrics_port": (9100, 9101, 9102),
    "grpc_port": (50051, 50052, 50053),
    "grpc_max_message_bytes": (65536, 131072, 262144),
    "sip_port": (5070, 5071, 5072),
    "mrcp_port": (1554, 1555, 1556),
    "rtp_ports": ("30000-30999", "31000-31999", "32000-32999"),
    "advertise_address": ("192.0.2.1", "192.0.2.2", "sbc.example.net"),
    "mrcp_waveform_dir": ("/var/lib/xlgate/a", "/var/lib/xlgate/b", "/var/lib/xlgate/c"),
    "mrcp_waveform_max_files": (10, 20, 30),
    "mrcp_waveform_max_bytes": (1 << 20, 1 << 21, 1 << 22),
    "max_frame_bytes": (2048, 4096, 8192),
    "model": ("a.safetensors", "b.safetensors", "c.safetensors"),
    "device": ("cuda", "cuda:1", "cpu"),
    "torch_threads": (1, 2, 3),
    "event_loop": ("asyncio", "uvloop", "asyncio"),
    "runner": ("thread", "process", "thread"),
    "model_step_timeout_ms": (500, 600, 700),
    "quantize": ("int8", "none", "int8"),
    "rel_attention": ("reference", "triton", "auto"),
    "final_pass": ("whisper", "none", "whisper"),
    "final_pass_budget_ms": (100, 200, 300),
    "max_streams": (10, 11, 12),
    "max_batch_size": (4, 5, 6),
    "max_wait_ms": (5, 6, 7),
    "warmup": (False, True, False),
    "warmup_timeout_ms": (1000, 2000, 3000),
    "max_pending_chunks": (2, 3, 4),
    "endpoint_silence_ms": (200, 300, 400),
    "max_utterance_ms": (5000, 6000, 7000),
    "idle_timeout_ms": (2000, 3000, 4000),
    "drain_timeout_ms": (0, 10, 20),
    "decoding": ("beam", "greedy", "beam"),
    "beam_size": (2, 3, 4),
    "lm": ("none", "bundled", "none"),
    "hotwords_file": ("a.txt", "b.txt", "c.txt"),
    "log_level": ("warning", "error", "debug"),
    "log_format": ("json", "text", "json"),
    "log_transcripts": (True, False, True),
    "tls_cert": ("a.pem", "b.pem", "c.pem"),
    "tls_key": ("a.pem", "b.pem", "c.pem"),
    "sips_port": (5071, 5072, 5073),
    "mrcp_tls_port": (1555, 1556, 1557),
    "max_sessions_per_address": (1, 2, 3),
    "sip_max_message_bytes": (8192, 16384, 32768),
    "sip_max_headers": (20, 30, 40),
    "max_sdp_bytes": (2048, 4096, 8192),
    "mrcp_max_message_bytes": (8192, 16384, 32768),
    "mrcp_max_headers": (20, 30, 40),
    "max_grammar_bytes": (2048, 4096, 8192),
    "max_grammar_phrases": (10, 20, 30),
    "rtp_max_packets_per_s": (60, 70, 80),
    "metrics_host": ("0.0.0.0", "10.0.0.5", "::1"),
    "auth_tokens": ("file-token-0123456789", "env-token-0123456789", "flag-token-0123456789"),
    "auth_tokens_file": ("a.txt", "b.txt", "c.txt"),
    "auth_jwt_key": ("a.pem", "b.pem", "c.pem"),
    "auth_jwt_algorithms": ("HS256", "RS256,PS256", "ES256"),
    "auth_jwt_audience": ("aud-a", "aud-b", "aud-c"),
    "auth_jwt_issuer": ("iss-a", "iss-b", "iss-c"),
    "auth_jwt_leeway_ms": (1000, 2000, 3000),
    "auth_query_token": (False, True, False),
    "sip_digest_users_file": ("a.txt", "b.txt", "c.txt"),
    "sip_digest_realm": ("realm-a", "realm b", "realm.c"),
    "mrcp_allowed_networks": ("10.0.0.0/8", "10.0.0.0/8, 192.0.2.7", "::1/128"),
}

# Options that cannot be set alone: their partners go into the file at every level; without the option
# itself (the default level), the partners alone are the error named.
_JWT = (("auth_jwt_key", "key.pem"), ("auth_jwt_algorithms", "HS256"))
COMPANIONS: dict[str, tuple[tuple[str, str], ...]] = {
    "tls_cert": (("tls_key", "key.pem"),), "tls_key": (("tls_cert", "cert.pem"),),
    "auth_jwt_key": (("auth_jwt_algorithms", "HS256"),), "auth_jwt_algorithms": (("auth_jwt_key", "key.pem"),),
    "auth_jwt_audience": _JWT, "auth_jwt_issuer": _JWT,
}
ALONE_ERROR = {"tls_cert": "TLS needs both", "tls_key": "TLS needs both",
               "auth_jwt_key": "JWT verification needs a key", "auth_jwt_algorithms": "JWT verification needs a key"}


def test_precedence_table_covers_every_cli_option() -> None:
    assert set(PRECEDENCE_VALUES) == {spec.name for spec in CLI_SPECS}


def _make_files(directory: Path) -> None:
    for name in ("a", "b", "c"):
        (directory / f"{name}.safetensors").write_bytes(b"")
        (directory / f"{name}.pem").write_text("pem\n")
        (directory / f"{name}.txt").write_text(f"word {name}\t1.5\n")
    (directory / "key.pem").write_text("pem\n")
    (directory / "cert.pem").write_text("pem\n")


def _boundary_text(spec: OptionSpec, value: object, directory: Path) -> str:
    if spec.kind in (Kind.PATH, Kind.MODEL):
        return str(directory / str(value))
    if isinstance(value, bool):
        return "yes" if value else "off"
    return str(value)


def _expected_field(spec: OptionSpec, value: object, directory: Path) -> object:
    if spec.kind is Kind.DURATION_MS:
        assert isinstance(value, int)
        return value / 1000
    if spec.kind is Kind.PATH:
        return directory / str(value)
    if spec.kind is Kind.MODEL:
        return str(directory / str(value))
    return value


@pytest.mark.parametrize("level", ["default", "file", "env", "flag"])
@pytest.mark.parametrize("spec", CLI_SPECS, ids=lambda spec: spec.name)
def test_precedence_per_option(spec: OptionSpec, level: str, tmp_path: Path) -> None:
    _make_files(tmp_path)
    file_value, env_value, flag_value = PRECEDENCE_VALUES[spec.name]
    levels = ["default", "file", "env", "flag"]
    depth = levels.index(level)

    lines = ["[serve]"]
    for partner, partner_value in COMPANIONS.get(spec.name, ()):
        lines.append(f"{partner} = {toml_literal(partner_value)}")
    if depth >= 1:  # relative on purpose: file paths resolve against the file's directory
        lines.append(f"{spec.file_key} = {toml_literal(file_value)}")
    argv = ["--config", str(write_config(tmp_path, "\n".join(lines) + "\n"))]
    environ: dict[str, str] = {}
    if depth >= 2:
        environ[spec.env_var] = _boundary_text(spec, env_value, tmp_path)
    if depth >= 3:
        if spec.kind is Kind.BOOL:
            argv.append(spec.flag if flag_value else f"--no-{spec.flag[2:]}")
        else:
            argv += [spec.flag, _boundary_text(spec, flag_value, tmp_path)]

    if spec.name in ALONE_ERROR and depth == 0:
        with pytest.raises(ConfigError, match=ALONE_ERROR[spec.name]):
            resolve(argv, environ)
        return
    settings = resolve(argv, environ)
    actual = getattr(settings, spec.field_name)
    if depth == 0:
        expected = _expected_field(spec, spec.default, tmp_path) if spec.default is not None else None
        if spec.kind is Kind.MODEL:
            expected = spec.default
    else:
        expected = _expected_field(spec, (file_value, env_value, flag_value)[depth - 1], tmp_path)
    assert actual == expected
    # Nothing else moved.
    for other in OPTION_SPECS:
        partners = {partner for partner, _ in COMPANIONS.get(spec.name, ())}
        if other.name not in (spec.name, "hotwords") and other.name not in partners:
            assert getattr(settings, other.field_name) == getattr(resolve(), other.field_name), other.name


def test_config_file_from_environment_and_flag_wins(tmp_path: Path) -> None:
    from_env = write_config(tmp_path, "[serve]\nws_port = 1111\n", "env.toml")
    from_flag = write_config(tmp_path, "[serve]\nws_port = 2222\n", "flag.toml")
    assert resolve([], {"XLGATE_CONFIG": str(from_env)}).ws_port == 1111
    assert resolve(["--config", str(from_flag)], {"XLGATE_CONFIG": str(from_env)}).ws_port == 2222


def test_empty_environment_variable_counts_as_unset() -> None:
    assert resolve([], {"XLGATE_WS_PORT": "", "XLGATE_LOG_TRANSCRIPTS": ""}) == resolve()


def test_choices_are_case_insensitive() -> None:
    settings = resolve(["--log-level", "WARNING"], {"XLGATE_EVENT_LOOP": "AsyncIO"})
    assert (settings.log_level, settings.event_loop) == ("warning", "asyncio")


# ------------------------------------------------------------------------------------------- booleans


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1", True), ("true", True), ("yes", True), ("on", True), ("TRUE", True), ("On", True),
        ("0", False), ("false", False), ("no", False), ("off", False), ("FALSE", False), ("Off", False),
    ],
)
def test_boolean_environment_words(text: str, expected: bool) -> None:
    assert resolve([], {"XLGATE_LOG_TRANSCRIPTS": text}).log_transcripts is expected


@pytest.mark.parametrize("text", ["2", "y", "enabled", "tru"])
def test_boolean_environment_rejects_other_words(text: str) -> None:
    assert resolve_error([], {"XLGATE_LOG_TRANSCRIPTS": text}) == (
        "environment variable XLGATE_LOG_TRANSCRIPTS: expected a boolean (1/0, true/false, yes/no, "
        f"on/off), got {text!r}"
    )


def test_boolean_flags() -> None:
    assert resolve(["--log-transcripts"]).log_transcripts is True
    assert resolve(["--no-log-transcripts"], {"XLGATE_LOG_TRANSCRIPTS": "1"}).log_transcripts is False


# ------------------------------------------------------------------------------------------ validation


NUMERIC_SPECS = [spec for spec in CLI_SPECS if spec.kind in (Kind.INT, Kind.DURATION_MS)]


@pytest.mark.parametrize("spec", NUMERIC_SPECS, ids=lambda spec: spec.name)
def test_every_numeric_range_is_enforced_from_every_source(spec: OptionSpec, tmp_path: Path) -> None:
    assert spec.min_value is not None and spec.max_value is not None
    unit = " number of milliseconds" if spec.kind is Kind.DURATION_MS else ""
    expected = f"expected an integer{unit} between {spec.min_value} and {spec.max_value}"
    low, high = spec.min_value - 1, spec.max_value + 1
    assert resolve_error([spec.flag, str(low)]) == f"flag {spec.flag}: {expected}, got {low}"
    assert resolve_error([], {spec.env_var: str(high)}) == (
        f"environment variable {spec.env_var}: {expected}, got {high}"
    )
    assert resolve_error([], {spec.env_var: "twelve"}) == (
        f"environment variable {spec.env_var}: {expected}, got 'twelve'"
    )
    config = write_config(tmp_path, f"[serve]\n{spec.file_key} = 1.5\n")
    assert resolve_error(["--config", str(config)]) == (
        f"config file {config} key serve.{spec.file_key}: {expected}, got 1.5"
    )
    config = write_config(tmp_path, f'[serve]\n{spec.file_key} = "8"\n')
    assert resolve_error(["--config", str(config)]) == (
        f"config file {config} key serve.{spec.file_key}: {expected}, got '8'"
    )
    config = write_config(tmp_path, f"[serve]\n{spec.file_key} = true\n")
    assert resolve_error(["--config", str(config)]) == (
        f"config file {config} key serve.{spec.file_key}: {expected}, got True"
    )


CHOICE_SPECS = [spec for spec in CLI_SPECS if spec.choices]


@pytest.mark.parametrize("spec", CHOICE_SPECS, ids=lambda spec: spec.name)
def test_every_choice_is_enforced(spec: OptionSpec, tmp_path: Path) -> None:
    expected = "expected one of " + ", ".join(spec.choices)
    assert resolve_error([spec.flag, "bogus"]) == f"flag {spec.flag}: {expected}, got 'bogus'"
    assert resolve_error([], {spec.env_var: "bogus"}) == (
        f"environment variable {spec.env_var}: {expected}, got 'bogus'"
    )
    config = write_config(tmp_path, f"[serve]\n{spec.file_key} = 3\n")
    assert resolve_error(["--config", str(config)]) == (
        f"config file {config} key serve.{spec.file_key}: expected a string, got 3"
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--host", ""], "flag --host: expected a host name or IP address, got ''"),
        (["--host", "a b"], "flag --host: expected a host name or IP address, got 'a b'"),
        (["--device", "gpu"], "flag --device: expected cpu, cuda or cuda:N, got 'gpu'"),
        (["--device", "cuda:x"], "flag --device: expected cpu, cuda or cuda:N, got 'cuda:x'"),
        (["--model", "/nonexistent/m.safetensors"],
         "flag --model: expected 'bundled' or an existing .safetensors file, got '/nonexistent/m.safetensors'"),
        (["--tls-cert", "/nonexistent/cert.pem"],
         "flag --tls-cert: expected an existing file, got '/nonexistent/cert.pem'"),
        (["--hotwords-file", "/nonexistent/words.txt"],
         "flag --hotwords-file: expected an existing file, got '/nonexistent/words.txt'"),
        (["--metrics-port", "8080"], "flag --metrics-port: expected a port other than ws_port's, got 8080"),
        (["--ws-port", "9000", "--grpc-port", "9000"],
         "flag --grpc-port: expected a port other than ws_port's, got 9000"),
        (["--endpoint-silence-ms", "20000"],
         "flag --endpoint-silence-ms: expected less than max_utterance_ms (20000), got 20000"),
    ],
)
def test_flag_validation_messages(argv: list[str], message: str) -> None:
    assert resolve_error(argv) == message


def test_zero_ports_may_repeat() -> None:
    settings = resolve(["--ws-port", "0", "--metrics-port", "0", "--grpc-port", "0"])
    assert (settings.ws_port, settings.metrics_port, settings.grpc_port) == (0, 0, 0)


def test_model_must_be_a_safetensors_file(tmp_path: Path) -> None:
    wrong = tmp_path / "model.bin"
    wrong.write_bytes(b"")
    assert resolve_error([], {"XLGATE_MODEL": str(wrong)}) == (
        f"environment variable XLGATE_MODEL: expected 'bundled' or an existing .safetensors file, got {str(wrong)!r}"
    )
    right = tmp_path / "model.safetensors"
    right.write_bytes(b"")
    assert resolve(["--model", str(right)]).model == str(right)


def test_tls_needs_both_files(tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("pem")
    assert resolve_error(["--tls-cert", str(cert)]) == (
        "flag --tls-cert: expected tls_key to be set as well (TLS needs both tls_cert and tls_key, or "
        "neither), got tls_cert alone"
    )
    assert resolve_error([], {"XLGATE_TLS_KEY": str(cert)}) == (
        "environment variable XLGATE_TLS_KEY: expected tls_cert to be set as well (TLS needs both "
        "tls_cert and tls_key, or neither), got tls_key alone"
    )
    settings = resolve(["--tls-cert", str(cert)], {"XLGATE_TLS_KEY": str(cert)})
    assert settings.tls_cert == settings.tls_key == cert


def test_an_overridden_bad_value_is_still_an_error() -> None:
    assert resolve_error(["--ws-port", "9000"], {"XLGATE_WS_PORT": "http"}) == (
        "environment variable XLGATE_WS_PORT: expected an integer between 0 and 65535, got 'http'"
    )


def test_config_error_carries_its_parts() -> None:
    with pytest.raises(ConfigError) as caught:
        resolve(["--beam-size", "0"])
    error = caught.value
    assert isinstance(error, ValueError)
    assert (error.source, error.expected, error.actual) == (
        "flag --beam-size", "an integer between 1 and 256", "0"
    )


# ---------------------------------------------------------------------------------------- config file


def test_unknown_key_names_key_and_file(tmp_path: Path) -> None:
    config = write_config(tmp_path, "[serve]\nws_prot = 9000\n")
    assert resolve_error(["--config", str(config)]) == (
        f"config file {config}: expected a known key of [serve] (did you mean 'ws_port'?), "
        "got unknown key serve.ws_prot"
    )
    config = write_config(tmp_path, "[serve]\nzzz = 1\n")
    assert resolve_error(["--config", str(config)]) == (
        f"config file {config}: expected a known key of [serve], got unknown key serve.zzz"
    )


def test_unknown_table_is_an_error(tmp_path: Path) -> None:
    config = write_config(tmp_path, "[server]\nws_port = 9000\n")
    assert resolve_error(["--config", str(config)]) == (
        f"config file {config}: expected only a [serve] table, got key 'server'"
    )


def test_serve_must_be_a_table(tmp_path: Path) -> None:
    config = write_config(tmp_path, "serve = 3\n")
    assert resolve_error(["--config", str(config)]) == (
        f"config file {config} key serve: expected a table, got 3"
    )


def test_file_bool_must_be_a_toml_boolean(tmp_path: Path) -> None:
    config = write_config(tmp_path, '[serve]\nlog_transcripts = "yes"\n')
    assert resolve_error(["--config", str(config)]) == (
        f"config file {config} key serve.log_transcripts: expected a boolean (true or false), got 'yes'"
    )


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    assert resolve_error(["--config", str(missing)]) == (
        f"flag --config: expected a readable TOML file, got {str(missing)!r} (No such file or directory)"
    )
    assert resolve_error([], {"XLGATE_CONFIG": str(missing)}).startswith(
        "environment variable XLGATE_CONFIG: expected a readable TOML file"
    )
    broken = write_config(tmp_path, "[serve\nws_port = 1\n")
    assert resolve_error(["--config", str(broken)]).startswith(f"config file {broken}: expected valid TOML, got ")


def test_empty_file_means_defaults(tmp_path: Path) -> None:
    assert resolve(["--config", str(write_config(tmp_path, ""))]) == resolve()


def test_relative_paths_in_the_file_follow_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config_dir = tmp_path / "etc"
    config_dir.mkdir()
    (config_dir / "words.txt").write_text("refund\n")
    config = write_config(config_dir, '[serve]\nhotwords_file = "words.txt"\n')
    monkeypatch.chdir(tmp_path)
    settings = resolve(["--config", str(config)])
    assert settings.hotwords_file == config_dir / "words.txt"
    assert settings.hotwords == (Hotword("refund", DEFAULT_HOTWORD_BOOST),)
    assert resolve_error(["--hotwords-file", "words.txt"]) == (
        "flag --hotwords-file: expected an existing file, got 'words.txt'"
    )


# ------------------------------------------------------------------------------------------- hotwords


def test_inline_hotwords(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        '[serve]\n[[serve.hotwords]]\nphrase = "account number"\nboost = 3\n'
        '[[serve.hotwords]]\nphrase = " Xenon Mobile "\n',
    )
    assert resolve(["--config", str(config)]).hotwords == (
        Hotword("account number", 3.0),
        Hotword("Xenon Mobile", DEFAULT_HOTWORD_BOOST),
    )


def test_hotwords_file_format(tmp_path: Path) -> None:
    path = tmp_path / "words.txt"
    path.write_text("\ufeff# comment\n\nrefund\t4.5\r\n  balance  \n  # indented comment\nnew card\t0.5\n", encoding="utf-8")
    assert load_hotwords_file(path) == (
        Hotword("refund", 4.5), Hotword("balance", DEFAULT_HOTWORD_BOOST), Hotword("new card", 0.5)
    )


def test_hotwords_file_merges_after_inline_and_wins_on_duplicates(tmp_path: Path) -> None:
    words = tmp_path / "words.txt"
    words.write_text("refund\t5\nbalance\n")
    config = write_config(
        tmp_path,
        '[serve]\nhotwords_file = "words.txt"\n'
        '[[serve.hotwords]]\nphrase = "refund"\nboost = 1.0\n'
        '[[serve.hotwords]]\nphrase = "agent"\nboost = 1.0\n',
    )
    assert resolve(["--config", str(config)]).hotwords == (
        Hotword("refund", 5.0), Hotword("agent", 1.0), Hotword("balance", DEFAULT_HOTWORD_BOOST)
    )


@pytest.mark.parametrize(
    ("content", "line", "message"),
    [
        ("ok\nrefund\tlots\n", 2, "expected a positive finite boost, got 'lots'"),
        ("refund\t-1\n", 1, "expected a positive finite boost, got -1.0"),
        ("refund\tnan\n", 1, "expected a positive finite boost, got nan"),
        ("refund\t1\textra\n", 1, "expected 'phrase' or 'phrase<TAB>boost', got 'refund\\t1\\textra'"),
        ("\t2\n", 1, "expected a non-empty phrase without tabs or line breaks, got ''"),
    ],
)
def test_hotwords_file_errors(tmp_path: Path, content: str, line: int, message: str) -> None:
    path = tmp_path / "words.txt"
    path.write_text(content)
    with pytest.raises(ConfigError) as caught:
        load_hotwords_file(path)
    assert str(caught.value) == f"hotwords file {path} line {line}: {message}"


def test_hotwords_file_must_be_utf8(tmp_path: Path) -> None:
    path = tmp_path / "words.txt"
    path.write_bytes(b"caf\xe9\n")
    with pytest.raises(ConfigError, match=rf"^hotwords file {re.escape(str(path))}: expected a readable UTF-8 file"):
        resolve(["--hotwords-file", str(path)])


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('hotwords = "refund"', "key serve.hotwords: expected an array of tables [[serve.hotwords]] with "
         "phrase and boost, got 'refund'"),
        ('hotwords = ["refund"]', "key serve.hotwords[0]: expected an array of tables [[serve.hotwords]] with "
         "phrase and boost, got 'refund'"),
        ('[[serve.hotwords]]\nphrase = "a"\nweight = 2', "key serve.hotwords[0]: expected only the keys "
         "phrase and boost, got 'weight'"),
        ("[[serve.hotwords]]\nboost = 2", "key serve.hotwords[0]: expected a phrase key, got none"),
        ('[[serve.hotwords]]\nphrase = ""', "key serve.hotwords[0]: expected a non-empty phrase without tabs "
         "or line breaks, got ''"),
        ('[[serve.hotwords]]\nphrase = "a"\nboost = -2', "key serve.hotwords[0]: expected a positive finite "
         "boost, got -2"),
        ('[[serve.hotwords]]\nphrase = "a"\nboost = true', "key serve.hotwords[0]: expected a positive finite "
         "boost, got True"),
        ('[[serve.hotwords]]\nphrase = "a"\n[[serve.hotwords]]\nphrase = "b"\nboost = inf',
         "key serve.hotwords[1]: expected a positive finite boost, got inf"),
    ],
)
def test_inline_hotword_errors(tmp_path: Path, body: str, message: str) -> None:
    prefix = "" if body.startswith("[[") else "[serve]\n"
    config = write_config(tmp_path, prefix + body + "\n")
    assert resolve_error(["--config", str(config)]) == f"config file {config} {message}"


# ------------------------------------------------------------------------------------ environment names


def test_unknown_environment_variables() -> None:
    environ = {"XLGATE_WS_PROT": "1", "XLGATE_WS_PORT": "1", "XLGATE_CONFIG": "x", "XLGATE_HOTWORDS": "a", "HOME": "/"}
    assert unknown_environment_variables(environ) == ["XLGATE_HOTWORDS", "XLGATE_WS_PROT"]


def test_an_unknown_environment_variable_is_an_error_with_a_did_you_mean() -> None:
    assert resolve_error([], {"XLGATE_WS_PROT": "1"}) == (
        "environment variable XLGATE_WS_PROT: expected a known XLGATE_ variable (did you mean XLGATE_WS_PORT?), "
        "got an unknown name")
    assert "did you mean" not in resolve_error([], {"XLGATE_ZZZZZZZZ": "1"})


# ------------------------------------------------------------------------------------------ docs, help


def test_committed_doc_matches_generator() -> None:
    committed = (REPO_ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert committed == render_markdown(), (
        "docs/configuration.md is stale: run `python -m gateway.config > docs/configuration.md`"
    )


def test_doc_mentions_every_option() -> None:
    doc = render_markdown()
    for spec in OPTION_SPECS:
        assert f"`{spec.file_key}`" in doc
        if not spec.file_only:
            assert f"`{spec.flag}`" in doc and f"`{spec.env_var}`" in doc


def test_doc_example_file_resolves_to_the_defaults(tmp_path: Path) -> None:
    doc = render_markdown()
    example = doc.split("## Example file with every default", 1)[1].split("```toml\n", 1)[1].split("```", 1)[0]
    assert "[serve]" in example
    tomllib.loads(example)
    assert resolve(["--config", str(write_config(tmp_path, example))]) == resolve()


def test_help_lists_every_option_with_env_var_and_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    text = " ".join(make_parser().format_help().split())
    assert "--config PATH" in text and "XLGATE_CONFIG" in text and "[[serve.hotwords]]" in text
    for spec in CLI_SPECS:
        assert spec.flag in text, spec.flag
        assert f"[env {spec.env_var}; default {spec.default_text()}]" in text, spec.name
    assert "--no-log-transcripts" in text


def test_flags_default_to_none_so_absence_is_visible() -> None:
    namespace = make_parser().parse_args([])
    assert namespace.config is None
    assert all(getattr(namespace, spec.name) is None for spec in CLI_SPECS)


@pytest.mark.parametrize("value", ["20000", "30000-20000", "20001-20001", "0-10", "a-b", "20000-70000"])
def test_rtp_ports_must_be_a_range_holding_a_pair(value: str) -> None:
    assert "LOW-HIGH" in resolve_error(["--rtp-ports", value])


def test_mrcp_ports_may_not_collide_with_other_listeners() -> None:
    assert "a port other than ws_port's" in resolve_error(["--ws-port", "5060"])
