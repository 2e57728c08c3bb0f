# rnnlm-service: the numpy LSTM language model behind FastAPI, shipped weights baked in.
#   docker build -t rnnlm-service .
#   docker run --rm -p 8000:8000 rnnlm-service
# tests/test_deploy.py lints this file, stages exactly what it COPYs and runs its CMD and
# HEALTHCHECK against the staged tree; keep COPY, ENV, CMD and HEALTHCHECK parseable
# (one instruction each, exec-form JSON arrays).

# An exact tag, not a digest: the digest could not be looked up where this file was written
# (no registry access). To pin harder, append the digest that
# `docker buildx imagetools inspect python:3.11.11-slim-bookworm` prints (@sha256:...).
FROM python:3.11.11-slim-bookworm

# BLAS threads per process: a build arg for the image's default, an ENV so that
# `docker run -e OPENBLAS_NUM_THREADS=4` (or compose's environment) overrides it at run time.
ARG BLAS_THREADS=2

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    OPENBLAS_NUM_THREADS=${BLAS_THREADS} \
    OMP_NUM_THREADS=${BLAS_THREADS} \
    MKL_NUM_THREADS=${BLAS_THREADS} \
    RNNLM_BLAS_THREADS=${BLAS_THREADS} \
    RNNLM_WEIGHTS=/srv/rnnlm/weights/ptb-650-awd

# A numeric, unprivileged user (no home, no shell); the code and weights stay root-owned.
RUN groupadd --system --gid 10001 rnnlm \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin rnnlm

WORKDIR /srv/rnnlm

# Dependencies in their own layer, rebuilt only when pyproject.toml or constraints.txt change:
# the runtime dependencies of pyproject.toml (no test extra), pinned by the constraints.txt
# that `make test` installs with.
COPY pyproject.toml constraints.txt ./
RUN python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" > /tmp/requirements.txt \
    && pip install -c constraints.txt -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The shipped models, before the code, as they change less: ptb-650-awd is the default
# (RNNLM_WEIGHTS above points at it); ptb-650 is the book's recipe at the same size and speed
# (RNNLM_WEIGHTS=/srv/rnnlm/weights/ptb-650), ptb-small is 3x faster per token and 14 points
# of perplexity worse (RNNLM_WEIGHTS=/srv/rnnlm/weights/ptb-small).
COPY weights/ptb-650-awd/ weights/ptb-650-awd/
COPY weights/ptb-650/ weights/ptb-650/
COPY weights/ptb-small/ weights/ptb-small/

# The code, installed without touching the dependency layer. RNNLM_WEIGHTS is set explicitly
# (ENV above) because the app's default is relative to the installed package, which lives in
# site-packages, away from /srv/rnnlm/weights.
COPY model/ model/
COPY app/ app/
RUN pip install --no-deps . \
    && rm -rf build ./*.egg-info

USER 10001:10001
EXPOSE 8000

# Slim images have no curl: urlopen raises on anything but a 2xx, so 503 (loading,
# draining) and a refused connection both exit non-zero.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]

# Exec form: rnnlm-serve is PID 1 and gets SIGTERM itself, so uvicorn stops accepting and
# drains in-flight requests (give it time: compose sets stop_grace_period).
STOPSIGNAL SIGTERM
CMD ["rnnlm-serve", "--host", "0.0.0.0", "--port", "8000"]
