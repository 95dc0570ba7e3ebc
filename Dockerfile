FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY . .
RUN DJANGO_SECRET_KEY=build-only DJANGO_DEBUG=true python manage.py collectstatic --noinput
EXPOSE 8000
CMD ["gunicorn", "rlv3site.wsgi:application", "-c", "gunicorn.conf.py", "--bind", "0.0.0.0:8000"]
