FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY . .
RUN DJANGO_SECRET_KEY=build-only DJANGO_DEBUG=true python manage.py collectstatic --noinput
# The processes run as rlv3, not root; docker-entrypoint.sh drops to it after handing it the
# writable volumes (which an earlier image, running as root, left owned by root).
RUN useradd --system --create-home --home-dir /home/rlv3 --shell /usr/sbin/nologin rlv3 \
    && mkdir -p /app/data /run/rlv3-metrics && chown rlv3:rlv3 /app/data /run/rlv3-metrics \
    && command -v setpriv >/dev/null
ENTRYPOINT ["/app/docker-entrypoint.sh"]
EXPOSE 8000
CMD ["gunicorn", "rlv3site.wsgi:application", "-c", "gunicorn.conf.py", "--bind", "0.0.0.0:8000"]
