"""Upstream S3 stores: S3 via aiobotocore, and a local directory."""
