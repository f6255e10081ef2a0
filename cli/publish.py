"""``affinity models push``: publish a model repository to a remote store.

The docker-compose cluster's one-shot job runs ``affinity models make`` and then
this, to fill MinIO with the demo zoo; anyone can push their own repository the
same way (``s3://bucket/prefix`` with ``--remote-endpoint`` for MinIO and the
like, credentials from boto3's usual ``AWS_*`` environment, or ``file:///dir``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cli.flags import Flags


def add_parser(models_sub: argparse._SubParsersAction) -> None:
    p = models_sub.add_parser(
        "push",
        help="publish a repository to a remote store (manifests written last; unchanged versions skipped)",
    )
    f = Flags(p, "models")
    f.add("--models", "repository directory to publish (<root>/<name>/<version>/)", type=Path, required=True)
    f.add("--remote-store", "where to: s3://bucket/prefix (the bucket is created if missing) or file:///dir",
          required=True)  # fmt: skip
    f.add("--remote-endpoint", "S3-compatible endpoint URL (MinIO, ...); credentials from AWS_* as boto3 reads them")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from common.units import format_size
    from worker.publish import PublishError, open_writer, publish

    try:
        store = open_writer(args.remote_store, args.remote_endpoint)
        done = publish(args.models, store)
    except PublishError as exc:
        print(f"affinity models push: {exc}", file=sys.stderr)
        return 1
    for item in done:
        state = "uploaded" if item.uploaded else "unchanged"
        print(f"{item.name:20s} {item.version:>4s} {format_size(item.bytes):>10s}  {state}")
    uploaded = sum(item.uploaded for item in done)
    print(f"{len(done)} versions in {store.url}: {uploaded} uploaded, {len(done) - uploaded} unchanged")
    return 0
