"""The destination's credentials without keys: botocore's chain, renewed as they expire.

A local HTTP server of the test's own plays the ECS container-credentials endpoint
(AWS_CONTAINER_CREDENTIALS_FULL_URI on 127.0.0.1). It hands out temporary credentials
that real MinIO issued (STS AssumeRole, session token and all) for one MinIO user, and
after the first renewal those of another. Then the first user is disabled, which kills
its temporary credentials: a ``run`` that still replicates has renewed them on every
path it uses (raw PUTs and listings, boto3's control calls).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import threading
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3
import pytest
from botocore.exceptions import ClientError

from tests.conftest import DEST_PASSWORD, DEST_USER, run_cli
from tests.servers import HOST, find_tool
from tests.sidecar import wait_for

minio_only = pytest.mark.parametrize("pair", ["minio"], indirect=True)

# botocore renews credentials that expire within 15 minutes (its advisory refresh).
RENEWAL_WINDOW = timedelta(minutes=15)


def mc(server, *args: str) -> None:
    env = {**os.environ, "MC_HOST_dst": f"http://{DEST_USER}:{DEST_PASSWORD}@{server.host}"}
    subprocess.run([find_tool("mc"), "--quiet", *args], env=env, check=True, capture_output=True, timeout=30)


def minio_user(server, name: str) -> tuple[str, str]:
    password = f"{name}-secret-Kq73"
    mc(server, "admin", "user", "add", "dst", name, password)
    mc(server, "admin", "policy", "attach", "dst", "readwrite", "--user", name)
    return name, password


def temporary_credentials(server, user: tuple[str, str]) -> dict:
    """Real STS credentials from MinIO for ``user`` (AssumeRole: MinIO ignores the ARN)."""
    sts = boto3.client("sts", endpoint_url=server.endpoint, region_name="us-east-1",
                       aws_access_key_id=user[0], aws_secret_access_key=user[1])
    return sts.assume_role(RoleArn="arn:xxx:xxx:xxx:xxxx", RoleSessionName="replicator-test",
                           DurationSeconds=3600)["Credentials"]


class ContainerCredentials:
    """The container-credentials endpoint: serves ``first`` until it has been asked
    ``switch_after`` times, then ``second``. The first set claims to expire just past
    botocore's renewal window, so the process asks again seconds later."""

    def __init__(self, first: dict, second: dict, *, first_lifetime: timedelta):
        self.sets = [first, second]
        self.first_lifetime = first_lifetime
        self.hits = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # http.server's name
                owner.hits += 1
                chosen = owner.sets[0] if owner.hits == 1 else owner.sets[1]
                expires = (datetime.now(timezone.utc) + owner.first_lifetime if owner.hits == 1
                           else chosen["Expiration"])
                body = json.dumps({"AccessKeyId": chosen["AccessKeyId"], "SecretAccessKey": chosen["SecretAccessKey"],
                                   "Token": chosen["SessionToken"],
                                   "Expiration": expires.strftime("%Y-%m-%dT%H:%M:%SZ")}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer((HOST, 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.server.server_address[1]}/v2/credentials/replicator"

    def close(self) -> None:
        self.server.shutdown()


def chain_env(pair, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in pair.env.items() if k not in ("S3_SYNC_ACCESS_KEY", "S3_SYNC_SECRET_KEY")}
    # No instance metadata service here: botocore mustn't spend its timeouts looking for one.
    return {**env, "AWS_EC2_METADATA_DISABLED": "true", **extra}


def put(pair, key: str, data: bytes) -> None:
    pair.source.put_object(pair.source_bucket, key, io.BytesIO(data), len(data))


@minio_only
def test_a_run_keeps_replicating_across_a_credential_rotation(pair, sidecars):
    server = pair.servers["dest"]
    first_user, second_user = minio_user(server, "rotate-a"), minio_user(server, "rotate-b")
    first = temporary_credentials(server, first_user)
    endpoint = ContainerCredentials(first, temporary_credentials(server, second_user),
                                    first_lifetime=RENEWAL_WINDOW + timedelta(seconds=6))
    try:
        put(pair, "before.txt", b"copied with the first credentials")
        sidecar = sidecars(chain_env(pair, AWS_CONTAINER_CREDENTIALS_FULL_URI=endpoint.url))
        wait_for(sidecar.ready, what="readiness")
        wait_for(lambda: "before.txt" in pair.dest_keys(), what="the initial reconcile")
        assert "destination credentials: the AWS credential chain (container-role)" in sidecar.log()

        time.sleep(7)  # the first set is inside the renewal window now
        put(pair, "renewing.txt", b"the copy that renews them")
        wait_for(lambda: "renewing.txt" in pair.dest_keys(), what="the copy after the renewal window")
        assert endpoint.hits >= 2, "the credentials were never renewed"

        mc(server, "admin", "user", "disable", "dst", first_user[0])
        with pytest.raises(ClientError):  # the first set is dead from here on
            boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1",
                         aws_access_key_id=first["AccessKeyId"], aws_secret_access_key=first["SecretAccessKey"],
                         aws_session_token=first["SessionToken"]).head_bucket(Bucket=pair.dest_bucket)
        for n in range(3):
            put(pair, f"after/{n}.txt", b"copied with the second credentials")
        wait_for(lambda: all(f"after/{n}.txt" in pair.dest_keys() for n in range(3)), what="copies after rotation")
        result = run_cli(chain_env(pair, AWS_CONTAINER_CREDENTIALS_FULL_URI=endpoint.url), "reconcile")
        assert result.code == 0 and "0 failed" in result.stderr, result.output
        log = sidecar.log()
        for secret in (*first_user, *second_user):
            assert secret not in log
    finally:
        endpoint.close()


@minio_only
def test_session_token_with_static_temporary_keys(pair):
    credentials = temporary_credentials(pair.servers["dest"], (DEST_USER, DEST_PASSWORD))
    put(pair, "k.txt", b"temporary keys")
    env = {**pair.env, "S3_SYNC_ACCESS_KEY": credentials["AccessKeyId"],
           "S3_SYNC_SECRET_KEY": credentials["SecretAccessKey"], "S3_SYNC_SESSION_TOKEN": credentials["SessionToken"]}
    result = run_cli(env, "reconcile")
    assert result.code == 0, result.output
    assert pair.dest_body("k.txt") == b"temporary keys"
    assert credentials["SessionToken"] not in result.output

    without = run_cli({**env, "S3_SYNC_SESSION_TOKEN": ""}, "check")
    assert without.code != 0  # MinIO refuses temporary keys without their token


@minio_only
def test_no_keys_and_nothing_in_the_chain_is_the_old_sidecars_message(pair):
    result = run_cli(chain_env(pair), "check")
    assert result.code == 2, result.output
    assert "Missing required environment variables: S3_SYNC_ACCESS_KEY, S3_SYNC_SECRET_KEY" in result.stderr
    assert "AWS_ACCESS_KEY_ID" in result.stderr and "web identity" in result.stderr


@minio_only
def test_keys_from_aws_variables_are_used(pair):
    put(pair, "env.txt", b"from AWS_ACCESS_KEY_ID")
    result = run_cli(chain_env(pair, AWS_ACCESS_KEY_ID=DEST_USER, AWS_SECRET_ACCESS_KEY=DEST_PASSWORD), "reconcile")
    assert result.code == 0, result.output
    assert "the AWS credential chain (env)" in result.stderr
    assert pair.dest_body("env.txt") == b"from AWS_ACCESS_KEY_ID"


@pytest.mark.parametrize("pair", ["moto"], indirect=True)
def test_web_identity_as_eks_sets_it_up(pair, tmp_path):
    """EKS's IRSA: a token file and a role ARN; botocore trades them at STS (moto's,
    here) for temporary credentials, which moto's S3 takes."""
    token = tmp_path / "token"
    token.write_text("eyJhbGciOiJub25lIn0.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6cmVwbGljYXRvciJ9.")
    put(pair, "irsa.txt", b"via web identity")
    env = chain_env(pair, AWS_WEB_IDENTITY_TOKEN_FILE=str(token),
                    AWS_ROLE_ARN="arn:aws:iam::123456789012:role/replicator",
                    AWS_ENDPOINT_URL_STS=pair.servers["dest"].endpoint)
    result = run_cli(env, "reconcile")
    assert result.code == 0, result.output
    assert "the AWS credential chain (assume-role-with-web-identity)" in result.stderr
    assert pair.dest_body("irsa.txt") == b"via web identity"
