# lorarank: the Streamlit app in a container (Docker behind a reverse proxy, Hugging Face Spaces).
#   docker build -t lorarank . && docker run --rm -p 8501:8501 --shm-size=1g lorarank
# Uploads stay in the server's memory; temporary files (if any library makes one) go to /dev/shm,
# which is memory, so nothing uploaded reaches the container's disk.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TMPDIR=/dev/shm \
    HOME=/home/app \
    HF_HOME=/home/app/.cache/huggingface \
    LORARANK_HF_CACHE=/home/app/.cache/lorarank-hub \
    STREAMLIT_BROWSER_GATHER_USAGE_STATS=false

# Hugging Face Spaces runs containers as uid 1000; so does everyone else here.
RUN useradd --create-home --uid 1000 --shell /usr/sbin/nologin app

WORKDIR /home/app/lorarank
COPY requirements.txt ./
RUN pip install --no-compile -r requirements.txt
COPY --chown=app:app . .

USER app
EXPOSE 8501

HEALTHCHECK --interval=30s --timeout=5s --start-period=40s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; r = urllib.request.urlopen('http://127.0.0.1:8501/_stcore/health', timeout=4); sys.exit(0 if r.read().strip() == b'ok' else 1)"]

CMD ["streamlit", "run", "app.py", "--server.address=0.0.0.0", "--server.port=8501", "--server.headless=true"]
