"""``marketsignals stop``: ask the streaming job running on a checkpoint to stop cleanly.

Writes the stop request (marketsignals/stop_request.py) to the profile's ``stream.checkpoint``; the job's
driver finds it within ``stream.stop_check``, lets the batch in flight commit (``stream.stop_grace``),
removes the request and exits 0. For a job on EMR, ``marketsignals emr stop`` finds the checkpoint from
the deployment profile.
"""

from __future__ import annotations

import argparse
from urllib.parse import urlparse

from marketsignals import stop_request
from marketsignals.cli import UserError
from marketsignals.settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--endpoint-url", help="S3 endpoint, for a checkpoint on S3 (e.g. a moto server in tests)")
    parser.add_argument("--region", help="AWS region of the S3 client (default: the AWS configuration's)")


def run(args: argparse.Namespace, settings: Settings) -> int:
    checkpoint = settings.stream.checkpoint
    s3 = None
    if urlparse(checkpoint).scheme in stop_request.S3_SCHEMES:
        import boto3

        s3 = boto3.session.Session().client("s3", region_name=args.region, endpoint_url=args.endpoint_url)
    try:
        written = stop_request.write(checkpoint, s3)
    except stop_request.StopRequestError as exc:
        raise UserError(str(exc)) from exc
    print(f"marketsignals stop: requested at {written}; the job stops within {settings.stream.stop_check} "
          f"(stream.stop_check), once its batch in flight is committed (at most {settings.stream.stop_grace}: "
          f"stream.stop_grace), removes the request and exits")
    return 0
