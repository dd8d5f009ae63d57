"""Shared fixtures. Heavy ones (S3 servers, corpora, Ray) are session-scoped plugins."""

pytest_plugins = ["fixtures.s3", "fixtures.corpus", "fixtures.ray_cluster", "fixtures.ray_head"]
