"""Test and benchmark helpers that ship with the package (never imported by the method).

* :mod:`frameexit.testing.s3` — a loopback S3-compatible server (moto) and how to reach it;
* :mod:`frameexit.testing.clips` — small encoded clips whose every frame is different,
  in the encodings the exactness tests run on, and a reference sequential decode.
"""
