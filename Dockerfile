FROM python:3.11-slim
WORKDIR /app
# Exactly the locked runtime versions (`make lock`), every file hash-checked; pip and the build
# backend are pinned there too. This layer stays cached until the lock changes.
COPY requirements-runtime.lock ./
RUN pip install --no-cache-dir --require-hashes -r requirements-runtime.lock
COPY pyproject.toml README.md ./
COPY shared shared
COPY services services
COPY schemas schemas
# The project itself, built with the locked setuptools; --no-index: its dependencies can only come
# from the lock installed above, so a stale lock fails the build instead of pulling unpinned versions.
RUN pip install --no-cache-dir --no-index --no-build-isolation .
