"""The configuration file (S3_SYNC_CONFIG): several mirrors read by the environment's
reader, every problem named by its TOML path, all at once."""

from __future__ import annotations

import textwrap

import pytest

from replicator import config, config_file
from replicator.errors import ConfigError

GOOD = """
[source]
endpoint = "http://minio:9000"
access_key = "${MINIO_ACCESS_KEY}"
secret_key = "${MINIO_SECRET_KEY}"

[service]
http_port = 9090

[defaults]
workers = 16
delete_max_percent = 20

[[mirrors]]
name = "photos"
source_bucket = "photos"
delete = false

  [[mirrors.destinations]]
  name = "aws"
  endpoint = "https://s3.eu-central-1.amazonaws.com"
  bucket = "photos-backup"
  region = "eu-central-1"
  access_key = "${AWS_ACCESS_KEY_ID}"
  secret_key = "${AWS_SECRET_ACCESS_KEY}"

  [[mirrors.destinations]]
  endpoint = "http://backup-minio:9000"
  bucket = "photos"
  access_key = "backup"
  secret_key = "backup-secret"
  workers = 4

[[mirrors]]
source_bucket = "docs"

  [[mirrors.destinations]]
  endpoint = "https://s3.us-west-004.backblazeb2.com"
  bucket = "docs-mirror"
"""

ENV = {"MINIO_ACCESS_KEY": "minio-user", "MINIO_SECRET_KEY": "minio-secret-value",
       "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": "aws-secret-value"}


def load(tmp_path, text: str, **env: str) -> tuple[config.Settings, ...]:
    path = tmp_path / "replicator.toml"
    path.write_text(textwrap.dedent(text))
    return config.load_all({**ENV, **env, "S3_SYNC_CONFIG": str(path)})


def problems(tmp_path, text: str, **env: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text, **env)
    message = str(caught.value)
    assert message.startswith((f"Invalid configuration in {tmp_path / 'replicator.toml'}: ", "S3_SYNC_CONFIG="))
    return message


def test_every_pair_of_the_file_in_file_order(tmp_path):
    pairs = load(tmp_path, GOOD)
    assert [(s.mirror, s.destination, s.source_bucket, s.dest_bucket) for s in pairs] == [
        ("photos", "aws", "photos", "photos-backup"),
        ("photos", "photos", "photos", "photos"),
        ("docs", "docs-mirror", "docs", "docs-mirror"),
    ]


def test_settings_come_from_the_destination_then_its_mirror_then_defaults(tmp_path):
    aws, backup, docs = load(tmp_path, GOOD)
    assert (aws.workers, backup.workers, docs.workers) == (16, 4, 16)
    assert (aws.delete, backup.delete, docs.delete) == (False, False, True)
    assert {s.delete_max_percent for s in (aws, backup, docs)} == {20}
    assert aws.dest_region == "eu-central-1" and backup.dest_region is None


def test_references_are_resolved_from_the_environment_and_stay_secret(tmp_path):
    aws, backup, _ = load(tmp_path, GOOD)
    assert aws.dest_access_key.reveal() == "AKIAEXAMPLE" and aws.dest_secret_key.reveal() == "aws-secret-value"
    assert backup.dest_secret_key.reveal() == "backup-secret"
    assert aws.source_access_key.reveal() == "minio-user"
    assert "aws-secret-value" in aws.secrets() and "aws-secret-value" not in repr(aws)


def test_the_source_and_the_service_come_from_the_file_else_the_environment(tmp_path):
    pairs = load(tmp_path, GOOD, S3_SYNC_LOG_LEVEL="debug", MINIO_VERIFY_TLS="false")
    assert {(s.http_port, s.log_level, s.source_verify_tls, s.source_endpoint.url) for s in pairs} == {
        (9090, "DEBUG", False, "http://minio:9000")}


def test_a_literal_dollar_brace_is_written_twice(tmp_path):
    [pair] = load(tmp_path, """
        [[mirrors]]
        source_bucket = "photos"
        [[mirrors.destinations]]
        bucket = "photos-backup"
        access_key = "key"
        secret_key = "$${not-a-reference}"
    """)
    assert pair.dest_secret_key.reveal() == "${not-a-reference}"


def test_the_unnamed_single_pair_of_the_environment_is_unchanged():
    [pair] = config.load_all({"S3_SYNC_BUCKET": "relics-backup"})
    assert pair == config.load({"S3_SYNC_BUCKET": "relics-backup"})
    assert (pair.mirror, pair.destination) == ("relics", "relics-backup")


def test_the_file_can_set_every_per_destination_setting():
    """Each variable a destination may hold has a name in the file: a setting added to
    config.py is at once a setting of the file."""
    behaviour = config_file.per_destination()
    assert behaviour["delete"] == "S3_SYNC_DELETE" and behaviour["interval"] == "S3_SYNC_INTERVAL"
    everything = {*behaviour.values(), *config_file.SOURCE.values(), *config_file.SERVICE.values(),
                  *config_file.DESTINATION.values(), *config_file.PER_MIRROR.values(), "MINIO_BUCKET",
                  config.CONFIG_FILE}
    spelled_by_proxies = {n for n in config.known_variables() if n.lower().endswith("_proxy")}
    assert everything == config.known_variables() - spelled_by_proxies


# Each bad file, and what its one message must say: every problem, by its TOML path.
M = """
[[mirrors]]
source_bucket = "photos"
[[mirrors.destinations]]
bucket = "photos-backup"
"""
BAD = {
    "not TOML": ("[[mirrors]\nsource_bucket = ", {}, ["not valid TOML", "line 1"]),
    "no mirrors": ("[source]\nendpoint = \"http://minio:9000\"\n", {}, ["mirrors: expected one or more [[mirrors]]"]),
    "mirrors not an array of tables": ("mirrors = \"photos\"\n", {}, ["mirrors: expected one or more"]),
    "mirror without destinations": ("[[mirrors]]\nsource_bucket = \"photos\"\n", {},
                                    ["mirrors[0].destinations: expected one or more"]),
    "missing source bucket": ("[[mirrors]]\n[[mirrors.destinations]]\nbucket = \"b-1\"\n", {},
                              ["mirrors[0].source_bucket: missing"]),
    "missing destination bucket": ("[[mirrors]]\nsource_bucket = \"photos\"\n[[mirrors.destinations]]\n"
                                   "region = \"eu-central-1\"\n", {}, ["mirrors[0].destinations[0].bucket: missing"]),
    "typo in a destination": (M + "regoin = \"eu-central-1\"\n", {},
                              ["mirrors[0].destinations[0].regoin: not a setting here (did you mean region?)"]),
    "destination setting in a mirror": (M.replace("source_bucket = \"photos\"",
                                                  "source_bucket = \"photos\"\nregion = \"x\""), {},
                                        ["mirrors[0].region: not a setting here (region belongs in a "
                                         "[[mirrors.destinations]] table)"]),
    "unknown top-level table": (M + "[servce]\nhttp_port = 1\n", {},
                                ["servce: not a setting here (did you mean service?)"]),
    "bad value with its path": (M + "region = \"not a region!\"\n", {},
                                ["mirrors[0].destinations[0].region='not a region!': not a valid region name"]),
    "out of range in defaults, said once": ("[defaults]\nworkers = 0\n" + M + M, {},
                                            ["defaults.workers='0': must be at least 1"]),
    "wrong type": (M + "delete = [\"yes\"]\n", {}, ["mirrors[0].destinations[0].delete: expected a string, a "
                                                    "number or true/false, not an array"]),
    "bad boolean": (M + "delete = \"maybe\"\n", {}, ["mirrors[0].destinations[0].delete='maybe': expected true or "
                                                     "false"]),
    "unset reference": (M + "access_key = \"${NO_SUCH_VARIABLE}\"\nsecret_key = \"s\"\n", {},
                        ["mirrors[0].destinations[0].access_key: ${NO_SUCH_VARIABLE} refers to NO_SUCH_VARIABLE, "
                         "which is not set"]),
    "malformed reference": (M + "access_key = \"${not valid}\"\nsecret_key = \"s\"\n", {},
                            ["${not valid} is not a variable reference"]),
    "one key of a pair": (M + "access_key = \"key\"\n", {}, ["mirrors[0].destinations[0].secret_key: missing: "
                                                             "access_key is given"]),
    "duplicate mirror names": (M + M, {}, ["mirrors[1].name: 'photos' again: mirrors[0] has that name"]),
    "duplicate destination names": (M + "[[mirrors.destinations]]\nbucket = \"photos-backup\"\nendpoint = "
                                    "\"http://other:9000\"\n", {},
                                    ["mirrors[0].destinations[1].name: 'photos-backup' again"]),
    "one destination bucket for two mirrors": (
        M + "[[mirrors]]\nname = \"other\"\nsource_bucket = \"docs\"\n[[mirrors.destinations]]\n"
            "bucket = \"photos-backup\"\n", {},
        ["mirrors[1].destinations[0].bucket: https://s3.amazonaws.com/photos-backup is also "
         "mirrors[0].destinations[0]'s destination"]),
    "bad name": (M.replace("bucket = \"photos-backup\"", "bucket = \"photos-backup\"\nname = \"a b\""), {},
                 ["mirrors[0].destinations[0].name: 'a b': a name is"]),
    "the destination is the source": (
        "[source]\nendpoint = \"http://minio:9000\"\n" + M.replace("photos-backup", "photos")
        + "endpoint = \"http://minio:9000\"\n", {},
        ["the destination is the source: mirrors[0].source_bucket on the same endpoint (source.endpoint"]),
    "destination variables left in the environment": (M, {"S3_SYNC_DELETE": "false", "S3_SYNC_BUCKET": "x-1"},
                                                      ["S3_SYNC_BUCKET, S3_SYNC_DELETE set in the environment beside "
                                                       "S3_SYNC_CONFIG"]),
    "contradiction named by paths": (M + "multipart_threshold = \"8MiB\"\nmultipart_chunk_size = \"16MiB\"\n", {},
                                     ["mirrors[0].destinations[0].multipart_chunk_size='16MiB': must be at most "
                                      "mirrors[0].destinations[0].multipart_threshold"]),
    "a table where a value goes": ("[source]\nendpoint = { host = \"minio\" }\n" + M, {},
                                   ["source.endpoint: expected a string, a number or true/false, not a table"]),
    "service not a table": ("service = 3\n" + M, {}, ["service: expected a table ([service]), not int"]),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_file_is_refused_with_the_path_of_each_problem(tmp_path, case):
    text, env, expected = BAD[case]
    message = problems(tmp_path, text, **env)
    for part in expected:
        assert part in message


def test_every_problem_of_a_file_is_reported_at_once(tmp_path):
    message = problems(tmp_path, """
        [defaults]
        interval = 5
        [[mirrors]]
        source_bucket = "photos"
        [[mirrors.destinations]]
        bucket = "photos-backup"
        region = "bad region!"
        [[mirrors.destinations]]
        bucket = "UPPER"
        workers = 1000
    """)
    for part in ("defaults.interval='5'", "mirrors[0].destinations[0].region", "mirrors[0].destinations[1].bucket",
                 "mirrors[0].destinations[1].workers='1000'"):
        assert part in message


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"S3_SYNC_CONFIG='.*nowhere.toml': can't read it \(No such file"):
        config.load_all({"S3_SYNC_CONFIG": str(tmp_path / "nowhere.toml")})


def test_a_secret_never_appears_in_a_problem(tmp_path):
    message = problems(tmp_path, M + "access_key = \"${AWS_ACCESS_KEY_ID}\"\nsecret_key = "
                                     "\"${AWS_SECRET_ACCESS_KEY}\"\nsession_token = \"tok-secret\"\nregion = \"?\"\n",
                       AWS_ACCESS_KEY_ID="", AWS_SECRET_ACCESS_KEY="aws-secret-value")
    assert "aws-secret-value" not in message and "tok-secret" not in message


def test_filters_encryption_and_limits_are_settings_of_the_file_too(tmp_path):
    from replicator.filters import KeyFilter, Rule

    [pair] = load(tmp_path, """
        [defaults]
        max_requests_per_second = 200
        [[mirrors]]
        source_bucket = "photos"
        prefix = "albums/"
        filter = ["- *.tmp", "+ /albums/2024/**", "- **"]
        [[mirrors.destinations]]
        endpoint = "https://s3.eu-central-1.amazonaws.com"
        bucket = "photos-backup"
        sse = "aws:kms"
        sse_kms_key_id = "alias/backup"
        storage_class = "STANDARD_IA"
        max_bandwidth = "50MiB"
    """)
    assert pair.key_filter == KeyFilter("albums/", (Rule(False, "*.tmp"), Rule(True, "/albums/2024/**"),
                                                    Rule(False, "**")))
    assert (pair.sse, pair.sse_kms_key_id, pair.storage_class) == ("aws:kms", "alias/backup", "STANDARD_IA")
    assert (pair.max_bandwidth, pair.max_requests_per_second) == (50 * 1024 * 1024, 200)


def test_a_filter_belongs_to_a_mirror_not_to_one_of_its_destinations(tmp_path):
    message = problems(tmp_path, M + "filter = [\"- *.tmp\"]\n")
    assert ("mirrors[0].destinations[0].filter: not a setting here (filter belongs in a [[mirrors]] table or "
            "[defaults])") in message


def test_a_bad_rule_and_a_bad_customer_key_are_named_by_path_and_the_key_is_not_shown(tmp_path):
    message = problems(tmp_path, """
        [[mirrors]]
        source_bucket = "photos"
        filter = ["* no sign"]
        [[mirrors.destinations]]
        endpoint = "https://s3.amazonaws.com"
        bucket = "photos-backup"
        sse_c_key = "not-a-32-byte-key-at-all"
    """)
    assert "mirrors[0].filter=" in message and "mirrors[0].destinations[0].sse_c_key=" in message
    assert "not-a-32-byte-key-at-all" not in message


def test_the_example_file_is_valid(tmp_path):
    """replicator.example.toml, as shipped, with the variables it refers to set."""
    from pathlib import Path

    example = Path(__file__).resolve().parents[2] / "replicator.example.toml"
    pairs = config.load_all({**ENV, "B2_KEY_ID": "k", "B2_APPLICATION_KEY": "s", "BACKUP_MINIO_SECRET": "x",
                             "S3_SYNC_CONFIG": str(example)})
    assert len(pairs) >= 3


def _readme_section() -> str:
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    return readme[readme.index("## Several mirrors: one sidecar"):]


README_ENV = {**ENV, "OFFSITE_SECRET": "offsite-secret", "B2_KEY_ID": "k", "B2_APPLICATION_KEY": "s"}


def test_the_readme_example_file_is_valid_and_says_what_it_shows(tmp_path):
    import re

    text = re.search(r"```toml\n(.*?)```", _readme_section(), re.S).group(1)
    path = tmp_path / "replicator.toml"
    path.write_text(text)
    pairs = config.load_all({**README_ENV, "S3_SYNC_CONFIG": str(path)})
    assert [(s.mirror, s.destination) for s in pairs] == [("photos", "aws"), ("photos", "offsite"),
                                                          ("documents", "documents-mirror")]
    aws, offsite, documents = pairs
    assert (aws.delete, offsite.delete, offsite.workers, documents.delete_max_percent) == (True, False, 16, 20)


def test_the_readme_error_example_is_what_such_a_file_gets(tmp_path):
    import re

    section = _readme_section()
    text = re.search(r"```toml\n(.*?)```", section, re.S).group(1)
    shown = re.search(r"```\n(Invalid configuration in \S+: .*?)\n```", section, re.S).group(1)
    bad = (text.replace("interval = 1800", "interval = 1800\nworkers = 0")
           .replace("  workers = 16", "  workers = 16\n  regoin = \"eu-west-1\"")
           .replace("  bucket = \"documents-mirror\"\n", ""))
    path = tmp_path / "replicator.toml"
    path.write_text(bad)
    with pytest.raises(ConfigError) as caught:
        config.load_all({**README_ENV, "S3_SYNC_CONFIG": str(path)})
    assert str(caught.value).replace(str(path), "/etc/replicator/replicator.toml") == shown
